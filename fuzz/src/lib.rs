//! Drivers shared by the fuzz targets (and copied into the regression test).
pub mod image_driver;
pub mod ops_driver;

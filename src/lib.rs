//! cachem
pub use cachem_core::*;

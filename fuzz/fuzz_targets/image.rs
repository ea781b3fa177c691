#![no_main]
//! Arbitrary bytes as a region image (or as patches over a valid one):
//! see `cachem_fuzz::image_driver`.
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| cachem_fuzz::image_driver::fuzz_image(data));

#![no_main]
//! Arbitrary operation sequences against a model: see `cachem_fuzz::ops_driver`.
use libfuzzer_sys::fuzz_target;

fuzz_target!(|input: cachem_fuzz::ops_driver::Input| cachem_fuzz::ops_driver::run(input));

//! What the criterion benches share: the record, its owner, a xorshift
//! generator (so the benchmarks do not measure a RNG crate), the directory
//! of their regions and the criterion settings.
// Each bench uses part of this module.
#![allow(dead_code)]

use cachem_core::OwnerId;

pub const OWNER: OwnerId = OwnerId(1);
pub const REC: [u8; 64] = [0x5a; 64];

/// xorshift64.
pub fn rng(seed: &mut u64) -> u64 {
    *seed ^= *seed << 13;
    *seed ^= *seed >> 7;
    *seed ^= *seed << 17;
    *seed
}

/// A fresh directory in /dev/shm for this bench process's regions.
pub fn bench_dir(what: &str) -> std::path::PathBuf {
    let d = std::path::PathBuf::from(format!("/dev/shm/cachem-bench-{what}{}", std::process::id()));
    std::fs::create_dir_all(&d).unwrap();
    d
}

/// The criterion settings of the region benches (short runs, 20 samples).
pub fn criterion() -> criterion::Criterion {
    criterion::Criterion::default()
        .warm_up_time(std::time::Duration::from_millis(500))
        .measurement_time(std::time::Duration::from_secs(2))
        .sample_size(20)
        .configure_from_args()
}

//! What the criterion benches share: the record, its owner, and a xorshift
//! generator (so the benchmarks do not measure a RNG crate).

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

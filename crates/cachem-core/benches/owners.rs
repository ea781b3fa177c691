//! Iterating one owner's records through the owner index (issue 15): an
//! owner with 10 records in a 1M-record region, and the per-record cost of
//! a 1,000-record owner among 10 interleaved owners. Run with `make bench`;
//! figures go to docs/benchmarks.md ("Owner iteration").

use cachem_core::{Compaction, OwnerId, RecordId, Region, RegionOptions};
use criterion::Throughput;
use std::hint::black_box;
mod common;

/// The owner iterated: bucket 3. The other records are spread over owners
/// of the other buckets (4..=21), so the walk meets only its own.
const MINE: OwnerId = OwnerId(3);

fn walk_ids(r: &Region, owner: OwnerId) -> usize {
    let g = r.lock().unwrap();
    let (mut n, mut cur) = (0, None);
    while let Some(id) = g.next_of_owner(owner, cur) {
        n += 1;
        cur = Some(id);
    }
    n
}

fn walk_bytes(r: &Region, owner: OwnerId) -> u64 {
    let g = r.lock().unwrap();
    g.iter_owner(owner).map(|(_, d)| d[0] as u64 + d.len() as u64).sum()
}

fn main() {
    let dir = common::bench_dir("owners-");
    let mut c = common::criterion();
    let mut g = c.benchmark_group("owners");

    // 1M records of 64 B, 10 of them MINE, inserted every 100,000th.
    let o = RegionOptions {
        size: Some(160 << 20),
        dir: Some(dir.clone()),
        compaction: Compaction::Deferred,
        ..Default::default()
    };
    let big = Region::open("big", &o).unwrap();
    {
        let mut l = big.lock().unwrap();
        for i in 0..1_000_000u32 {
            let owner = if i % 100_000 == 50_000 { MINE } else { OwnerId(4 + i % 18) };
            l.insert(owner, &[i as u8; 64]).unwrap();
        }
    }
    assert_eq!(walk_ids(&big, MINE), 10);
    g.bench_function("lock_walk_ids_owner_10_of_1M", |b| {
        b.iter(|| black_box(walk_ids(&big, black_box(MINE))))
    });
    g.bench_function("lock_iter_bytes_owner_10_of_1M", |b| {
        b.iter(|| black_box(walk_bytes(&big, black_box(MINE))))
    });
    drop(big);
    Region::destroy_path(dir.join("big"), &RegionOptions { dir: Some(dir.clone()), ..Default::default() })
        .unwrap();

    // 10 owners x 1,000 records, interleaved (cachem-bench's "iterate"
    // workload): per-record cost of a walk with the bytes.
    let r = Region::open("ten", &RegionOptions { size: Some(8 << 20), ..o.clone() }).unwrap();
    let ids: Vec<RecordId> = {
        let mut l = r.lock().unwrap();
        (0..10_000u32).map(|i| l.insert(OwnerId(1 + i % 10), &[i as u8; 64]).unwrap()).collect()
    };
    assert_eq!(ids.len(), 10_000);
    assert_eq!(walk_ids(&r, MINE), 1000);
    g.throughput(Throughput::Elements(1000));
    g.bench_function("lock_iter_bytes_owner_1000_of_10k", |b| {
        b.iter(|| black_box(walk_bytes(&r, black_box(MINE))))
    });
    g.finish();
    c.final_summary();
    drop(r);
    let _ = std::fs::remove_dir_all(&dir);
}

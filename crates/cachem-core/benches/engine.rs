//! Layout-engine benchmarks on a heap buffer (no mapping, no lock).
//! Run with `make bench`; figures go to docs/benchmarks.md.

use cachem_core::layout::{format, FormatOptions, Layout, ProcTag};
use cachem_core::{Compaction, RecordId};
use criterion::{criterion_group, criterion_main, BatchSize, Criterion, Throughput};
mod common;

use common::{rng, OWNER, REC};
use std::hint::black_box;
use std::time::{Duration, Instant};

const TAG: ProcTag = ProcTag { pid: 1, start_time: 1 };

/// An `Eager` image: the figures in docs/benchmarks.md for these benches
/// are those of format v1, which always compacted. `Deferred` variants are
/// named as such.
fn image(size: usize) -> Vec<u64> {
    image_with(size, Compaction::Eager)
}

fn image_with(size: usize, compaction: Compaction) -> Vec<u64> {
    let mut v = vec![0u64; size / 8];
    let o = FormatOptions { generation: 7, compaction, ..Default::default() };
    format(bytemuck::cast_slice_mut(&mut v), &o).unwrap();
    v
}

fn layout(v: &mut [u64]) -> Layout<'_> {
    Layout::open(bytemuck::cast_slice_mut(v)).unwrap()
}

fn ops(c: &mut Criterion) {
    let mut g = c.benchmark_group("engine");
    g.throughput(Throughput::Elements(1));

    g.bench_function("insert_64B", |b| {
        let mut img = image(16 << 20);
        b.iter_custom(|iters| {
            let mut total = Duration::ZERO;
            let mut left = iters;
            while left > 0 {
                let n = left.min(100_000);
                img.fill(0);
                format(
                    bytemuck::cast_slice_mut(&mut img),
                    &FormatOptions { generation: 7, compaction: Compaction::Eager, ..Default::default() },
                )
                .unwrap();
                let mut l = layout(&mut img);
                let t = Instant::now();
                for _ in 0..n {
                    black_box(l.insert(OWNER, TAG, black_box(&REC)).unwrap());
                }
                total += t.elapsed();
                left -= n;
            }
            total
        })
    });

    let mut img = image(4 << 20);
    let mut l = layout(&mut img);
    let ids: Vec<RecordId> = (0..10_000).map(|_| l.insert(OWNER, TAG, &REC).unwrap()).collect();
    g.bench_function("get_64B_of_10k", |b| {
        let mut s = 88172645463325252u64;
        b.iter(|| {
            let id = ids[(rng(&mut s) % ids.len() as u64) as usize];
            black_box(l.get(black_box(id)).unwrap()[0])
        })
    });
    g.bench_function("get_mut_64B_of_10k", |b| {
        let mut s = 88172645463325252u64;
        b.iter(|| {
            let id = ids[(rng(&mut s) % ids.len() as u64) as usize];
            l.get_mut(black_box(id)).unwrap()[0] += 1;
        })
    });

    // Remove a random record of 1,000 live 64-byte records (~70 KiB), then
    // put one back (untimed) so the live set stays the same.
    // Deferred: amortised over the compactions the removes cause.
    for (policy, suffix) in [(Compaction::Eager, ""), (Compaction::Deferred, "_deferred")] {
        g.bench_function(format!("remove_random_64B_of_1k{suffix}"), |b| {
            let mut img = image_with(1 << 20, policy);
            let mut l = layout(&mut img);
            let mut live: Vec<RecordId> = (0..1000).map(|_| l.insert(OWNER, TAG, &REC).unwrap()).collect();
            let mut s = 88172645463325252u64;
            b.iter_custom(|iters| {
                let mut total = Duration::ZERO;
                for _ in 0..iters {
                    let k = (rng(&mut s) % live.len() as u64) as usize;
                    let t = Instant::now();
                    l.remove(black_box(live[k])).unwrap();
                    total += t.elapsed();
                    live[k] = l.insert(OWNER, TAG, &REC).unwrap();
                }
                total
            })
        });
    }
    g.finish();
}

/// Remove the first record of `live` bytes of 64-byte records, next to a raw
/// `copy_within` of the same tail.
fn remove_vs_memmove(c: &mut Criterion) {
    let mut g = c.benchmark_group("remove_front");
    for (name, live) in [("64KiB", 64usize << 10), ("1MiB", 1 << 20), ("16MiB", 16 << 20)] {
        let n = live / 72;
        let tail = ((n - 1) * 72) as u64;
        g.throughput(Throughput::Bytes(tail));
        g.bench_function(format!("cachem_remove/{name}"), |b| {
            let mut img = image(live + n * 32 + (1 << 16));
            let mut l = layout(&mut img);
            // Blocks lie in insertion order: the queue's front is the first block.
            let mut fifo: std::collections::VecDeque<RecordId> =
                (0..n).map(|_| l.insert(OWNER, TAG, &REC).unwrap()).collect();
            b.iter_custom(|iters| {
                let mut total = Duration::ZERO;
                for _ in 0..iters {
                    let first = fifo.pop_front().unwrap();
                    let t = Instant::now();
                    l.remove(black_box(first)).unwrap();
                    total += t.elapsed();
                    fifo.push_back(l.insert(OWNER, TAG, &REC).unwrap());
                }
                total
            })
        });
        g.bench_function(format!("raw_memmove/{name}"), |b| {
            let mut buf = vec![1u8; live];
            b.iter_batched(|| (), |_| buf.copy_within(72.., 0), BatchSize::SmallInput)
        });
    }
    g.finish();
}

fn config() -> Criterion {
    Criterion::default()
        .warm_up_time(Duration::from_millis(500))
        .measurement_time(Duration::from_secs(2))
        .sample_size(20)
}

criterion_group! { name = benches; config = config(); targets = ops, remove_vs_memmove }
criterion_main!(benches);

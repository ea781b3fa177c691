//! Locked operations on a mapped region (/dev/shm), next to a bare
//! lock+unlock of the same kind of mutex, plus two processes contending.
//! Run with `make bench`; figures go to docs/benchmarks.md.

use cachem_core::sys::{map::Mapping, mutex};
use cachem_core::{Compaction, OwnerId, RecordId, Region, RegionOptions};
use criterion::{Criterion, Throughput};
mod common;

use common::{rng, OWNER, REC};
use std::hint::black_box;
use std::time::{Duration, Instant};

/// An `Eager` region: the figures in docs/benchmarks.md for these benches
/// are those of format v1, which always compacted. `Deferred` variants are
/// named as such.
fn open(dir: &std::path::Path, name: &str, size: u64) -> Region {
    open_with(dir, name, size, Compaction::Eager)
}

fn open_with(dir: &std::path::Path, name: &str, size: u64, compaction: Compaction) -> Region {
    let o = RegionOptions { size: Some(size), dir: Some(dir.into()), compaction, ..Default::default() };
    Region::open(name, &o).unwrap()
}

fn locked(c: &mut Criterion, dir: &std::path::Path) {
    let mut g = c.benchmark_group("region");
    g.throughput(Throughput::Elements(1));

    // The floor: a bare process-shared robust mutex, lock + unlock.
    let map = Mapping::anonymous(4096).unwrap();
    let m = map.as_ptr().cast::<libc::pthread_mutex_t>();
    // SAFETY: fresh anonymous memory, page-aligned, used by nobody else.
    unsafe { mutex::init(m) }.unwrap();
    g.bench_function("bare_mutex_lock_unlock", |b| {
        b.iter(|| {
            // SAFETY: m is an initialised mutex in a live mapping; this thread
            // unlocks what it locked.
            unsafe {
                mutex::lock(black_box(m)).unwrap();
                mutex::unlock(m).unwrap();
            }
        })
    });

    // The region lock itself: lock (with its checks) + unlock, uncontended.
    let lu = open(dir, "lock_unlock", 64 << 10);
    g.bench_function("lock_unlock", |b| b.iter(|| drop(black_box(lu.lock().unwrap()))));

    let r = open(dir, "get", 4 << 20);
    let ids: Vec<RecordId> = {
        let mut l = r.lock().unwrap();
        (0..10_000).map(|_| l.insert(OWNER, &REC).unwrap()).collect()
    };
    g.bench_function("lock_get_64B_of_10k", |b| {
        let mut s = 88172645463325252u64;
        b.iter(|| {
            let id = ids[(rng(&mut s) % ids.len() as u64) as usize];
            let l = r.lock().unwrap();
            black_box(l.get(id).unwrap()[0])
        })
    });

    // The optimistic read (no lock: the version word, a validated copy).
    g.bench_function("optimistic_get_64B_of_10k", |b| {
        let mut s = 88172645463325252u64;
        let mut buf = [0u8; 64];
        b.iter(|| {
            let id = ids[(rng(&mut s) % ids.len() as u64) as usize];
            black_box(r.get_into(id, &mut buf).unwrap());
            black_box(buf[0])
        })
    });
    // The same with one record (cache-hot): the fixed cost of each path.
    g.bench_function("optimistic_get_64B_hot", |b| {
        let mut buf = [0u8; 64];
        b.iter(|| {
            black_box(r.get_into(black_box(ids[7]), &mut buf).unwrap());
            black_box(buf[0])
        })
    });
    g.bench_function("lock_get_64B_hot", |b| {
        b.iter(|| {
            let l = r.lock().unwrap();
            black_box(l.get(black_box(ids[7])).unwrap()[0])
        })
    });
    g.bench_function("lock_get_copy_64B_of_10k", |b| {
        let mut s = 88172645463325252u64;
        let mut buf = [0u8; 64];
        b.iter(|| {
            let id = ids[(rng(&mut s) % ids.len() as u64) as usize];
            black_box(r.get_locked(id, &mut buf).unwrap());
            black_box(buf[0])
        })
    });

    let ri = open(dir, "insert", 16 << 20);
    g.bench_function("lock_insert_64B", |b| {
        b.iter_custom(|iters| {
            let mut total = Duration::ZERO;
            let mut left = iters;
            while left > 0 {
                let n = left.min(100_000);
                ri.lock().unwrap().retain(|_, _| false).unwrap();
                let t = Instant::now();
                for _ in 0..n {
                    let mut l = ri.lock().unwrap();
                    black_box(l.insert(OWNER, black_box(&REC)).unwrap());
                }
                total += t.elapsed();
                left -= n;
            }
            total
        })
    });

    for (policy, suffix) in [(Compaction::Eager, ""), (Compaction::Deferred, "_deferred")] {
        let rr = open_with(dir, &format!("remove{suffix}"), 1 << 20, policy);
        let mut live: Vec<RecordId> = {
            let mut l = rr.lock().unwrap();
            (0..1000).map(|_| l.insert(OWNER, &REC).unwrap()).collect()
        };
        g.bench_function(format!("lock_remove_random_64B_of_1k{suffix}"), |b| {
            let mut s = 88172645463325252u64;
            b.iter_custom(|iters| {
                let mut total = Duration::ZERO;
                for _ in 0..iters {
                    let k = (rng(&mut s) % live.len() as u64) as usize;
                    let t = Instant::now();
                    rr.lock().unwrap().remove(black_box(live[k])).unwrap();
                    total += t.elapsed();
                    live[k] = rr.lock().unwrap().insert(OWNER, &REC).unwrap();
                }
                total
            })
        });
    }
    g.finish();
}

/// What a process does in the contention figures.
#[derive(Clone, Copy, PartialEq, Eq)]
enum Mode {
    /// lock + get + unlock.
    LockGet,
    /// lock + insert + unlock, then lock + remove + unlock (other records).
    Churn,
    /// Optimistic get (no lock).
    Optimistic,
}

impl Mode {
    fn name(self) -> &'static str {
        match self {
            Mode::LockGet => "lockget",
            Mode::Churn => "churn",
            Mode::Optimistic => "optimistic",
        }
    }
    fn parse(s: &str) -> Mode {
        match s {
            "churn" => Mode::Churn,
            "optimistic" => Mode::Optimistic,
            _ => Mode::LockGet,
        }
    }
}

/// One process's loop for the contention figures: `secs` seconds of `mode`.
fn contend(r: &Region, mode: Mode, secs: f64) -> f64 {
    let churn = mode == Mode::Churn;
    let mut buf = [0u8; 64];
    let ids: Vec<RecordId> = r.lock().unwrap().iter_owner(OWNER).map(|(id, _)| id).take(1000).collect();
    let mut s = 88172645463325252u64 ^ std::process::id() as u64;
    let end = Instant::now() + Duration::from_secs_f64(secs);
    let mut ops = 0u64;
    let t = Instant::now();
    while Instant::now() < end {
        for _ in 0..256 {
            if churn {
                let id = r.lock().unwrap().insert(OwnerId(2), &REC).unwrap();
                r.lock().unwrap().remove(id).unwrap();
                ops += 2;
            } else if mode == Mode::Optimistic {
                let id = ids[(rng(&mut s) % ids.len() as u64) as usize];
                black_box(r.get_into(id, &mut buf).unwrap());
                ops += 1;
            } else {
                let id = ids[(rng(&mut s) % ids.len() as u64) as usize];
                black_box(r.lock().unwrap().get(id).map(|d| d[0]));
                ops += 1;
            }
        }
    }
    ops as f64 / t.elapsed().as_secs_f64()
}

fn two_processes(dir: &std::path::Path) {
    let r = open(dir, "contend", 4 << 20);
    let rd = open_with(dir, "contend_deferred", 4 << 20, Compaction::Deferred);
    for r in [&r, &rd] {
        let mut l = r.lock().unwrap();
        for _ in 0..1000 {
            l.insert(OWNER, &REC).unwrap();
        }
    }
    let secs = 3.0;
    let solo = contend(&r, Mode::Optimistic, secs);
    println!(
        "one process alone, optimistic get of 64 B: {:.2} M ops/s ({:.1} ns/op)",
        solo / 1e6,
        1e9 / solo
    );
    for (mine, theirs, name) in [
        (Mode::LockGet, Mode::LockGet, "contend"),
        (Mode::Churn, Mode::Churn, "contend"),
        (Mode::Optimistic, Mode::Optimistic, "contend"),
        (Mode::Optimistic, Mode::Churn, "contend"),
        (Mode::LockGet, Mode::Churn, "contend_deferred"),
        (Mode::Optimistic, Mode::Churn, "contend_deferred"),
    ] {
        let r = if name == "contend" { &r } else { &rd };
        let exe = std::env::current_exe().unwrap();
        let child = std::process::Command::new(exe)
            .env("CACHEM_BENCH_CHILD", dir)
            .env("CACHEM_BENCH_REGION", name)
            .env("CACHEM_BENCH_MODE", theirs.name())
            .stdout(std::process::Stdio::piped())
            .spawn()
            .unwrap();
        let a = contend(r, mine, secs);
        let out = child.wait_with_output().unwrap();
        let b: f64 = String::from_utf8_lossy(&out.stdout).trim().parse().unwrap_or(0.0);
        let what = |m: Mode| match m {
            Mode::LockGet => "lock+get of 64 B",
            Mode::Churn => "lock+insert / lock+remove of 64 B",
            Mode::Optimistic => "optimistic get of 64 B",
        };
        println!(
            "two processes ({}), {} | {}: {:.2} M ops/s and {:.2} M ops/s ({:.0} ns/op for the first)",
            if name == "contend" { "eager" } else { "deferred" },
            what(mine),
            what(theirs),
            a / 1e6,
            b / 1e6,
            1e9 / a
        );
    }
}

/// reap() over 100,000 records of 50 dead and 50 live processes, next to
/// one scan of the table plus one /proc read per distinct process.
fn reap(c: &mut Criterion, dir: &std::path::Path) {
    use cachem_core::layout::ProcTag;
    use cachem_core::sys::process;
    let mut sleepers: Vec<std::process::Child> =
        (0..50).map(|_| std::process::Command::new("sleep").arg("600").spawn().unwrap()).collect();
    let live: Vec<ProcTag> = sleepers
        .iter()
        .map(|c| ProcTag { pid: c.id(), start_time: process::start_time(c.id()).unwrap() })
        .collect();
    // Dead: the same pids with another start time (a recycled pid).
    let dead: Vec<ProcTag> =
        live.iter().map(|t| ProcTag { pid: t.pid, start_time: t.start_time + 1 }).collect();
    let r = open(dir, "reap", 16 << 20);
    let fill = |r: &Region| {
        let mut g = r.lock().unwrap();
        g.retain(|_, _| false).unwrap();
        let mut l = g.layout();
        for i in 0..100_000usize {
            let tag = if i % 2 == 0 { live[i / 2 % 50] } else { dead[i / 2 % 50] };
            l.insert(OwnerId::PROCESS, tag, &REC).unwrap();
        }
    };
    let mut g = c.benchmark_group("reap");
    g.sample_size(10);
    g.bench_function("reap_100k_records_50_dead_50_live", |b| {
        b.iter_custom(|iters| {
            let mut total = Duration::ZERO;
            for _ in 0..iters {
                fill(&r);
                let t = Instant::now();
                let rep = r.lock().unwrap().reap().unwrap();
                total += t.elapsed();
                assert_eq!(rep.records, 50_000);
            }
            total
        })
    });
    fill(&r);
    g.bench_function("baseline_scan_table_plus_100_proc_reads", |b| {
        b.iter(|| {
            let l = r.lock().unwrap();
            let n = l.iter().filter(|(m, _)| m.owner.is_process()).count();
            let alive = live.iter().chain(&dead).filter(|t| process::is_alive(t.pid, t.start_time)).count();
            black_box((n, alive))
        })
    });
    g.finish();
    for s in &mut sleepers {
        let _ = s.kill();
        let _ = s.wait();
    }
}

fn main() {
    if let Some(dir) = std::env::var_os("CACHEM_BENCH_CHILD") {
        let name = std::env::var("CACHEM_BENCH_REGION").unwrap_or_else(|_| "contend".into());
        let r = Region::open(
            &name,
            &RegionOptions { dir: Some(std::path::PathBuf::from(&dir)), ..Default::default() },
        )
        .unwrap();
        let mode = Mode::parse(&std::env::var("CACHEM_BENCH_MODE").unwrap_or_default());
        println!("{}", contend(&r, mode, 3.0));
        return;
    }
    let dir = common::bench_dir("");
    let mut c = common::criterion();
    locked(&mut c, &dir);
    reap(&mut c, &dir);
    c.final_summary();
    two_processes(&dir);
    let _ = std::fs::remove_dir_all(&dir);
}

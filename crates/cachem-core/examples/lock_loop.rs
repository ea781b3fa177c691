//! N uncontended lock+unlock pairs of an anonymous region's lock (default
//! 1M): the workload for counting the lock's fast-path instructions with
//! `valgrind --tool=callgrind` (docs/benchmarks.md), which is repeatable
//! whatever the load of the machine.

fn main() {
    let n: u64 = std::env::args().nth(1).and_then(|a| a.parse().ok()).unwrap_or(1_000_000);
    let r = cachem_core::Region::anonymous(64 << 10).expect("anonymous region");
    for _ in 0..n {
        drop(std::hint::black_box(r.lock().expect("lock")));
    }
}

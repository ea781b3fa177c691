//! Owner-id costs (docs/ids.md): a name already in the region's table but
//! not in this handle's memo, a new name, a memoised name; with 10, 100 and
//! 1,000 names registered, in a process with 8 busy threads.
//! `cargo run --release --example ids_bench`
use cachem::{Cache, Config};
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::Instant;

fn per_call(n: u32, mut f: impl FnMut(u32)) -> f64 {
    let t = Instant::now();
    for i in 0..n {
        f(i);
    }
    t.elapsed().as_nanos() as f64 / n as f64
}

fn main() -> cachem::Result<()> {
    let stop = std::sync::Arc::new(AtomicBool::new(false));
    let busy: Vec<_> = (0..8)
        .map(|_| {
            let stop = stop.clone();
            std::thread::spawn(move || {
                let mut x = 0u64;
                while !stop.load(Ordering::Relaxed) {
                    x = std::hint::black_box(x.wrapping_mul(31).wrapping_add(7));
                }
            })
        })
        .collect();
    let dir = std::env::temp_dir().join(format!("cachem-ids-bench-{}", std::process::id()));
    println!("| names in the table | known name, not memoised | new name | memoised |");
    println!("|---:|---:|---:|---:|");
    for names in [10u32, 100, 1000] {
        let cfg = Config::named(format!("b{names}")).dir(&dir).size(16 << 20);
        let writer = Cache::open(&cfg)?;
        for i in 0..names {
            writer.id(&format!("module_{i}"))?;
        }
        let reader = Cache::open(&cfg)?;
        let rounds = 20_000;
        let known = per_call(rounds, |i| {
            let name = format!("module_{}", i % names);
            let g = reader.lock().unwrap();
            std::hint::black_box(g.name_lookup(name.as_bytes()).unwrap());
        });
        let fresh = per_call(200, |i| {
            std::hint::black_box(writer.id(&format!("new_{names}_{i}")).unwrap());
        });
        let memo = per_call(rounds, |i| {
            std::hint::black_box(writer.id(if i % 2 == 0 { "module_0" } else { "module_5" }).unwrap());
        });
        println!("| {names} | {:.0} ns | {:.1} µs | {:.0} ns |", known, fresh / 1000.0, memo);
        writer.destroy()?;
    }
    stop.store(true, Ordering::Relaxed);
    for b in busy {
        let _ = b.join();
    }
    let _ = std::fs::remove_dir_all(&dir);
    Ok(())
}

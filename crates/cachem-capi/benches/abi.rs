//! The C ABI next to the Rust API: lock + get + unlock, and lock + add +
//! delete + unlock of a 64-byte record in an anonymous region, median of 7
//! rounds of 1,000,000 iterations (`CACHEM_ABI_ITERS` to change).
//!
//! The Rust loops run here; the C loops in `benches/abi.c`, compiled with
//! `cc -O2` against the release `libcachem.a` (built by asking cargo, as
//! the C tests do). Every call's result is checked on both sides, as a
//! careful caller would. Run by `make bench`; prints a Markdown table.

use cachem_rs::{Cache, Config, OwnerId};
use std::hint::black_box;
use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::Instant;

const CRATE: &str = env!("CARGO_MANIFEST_DIR");
const ROUNDS: usize = 7;

fn median(mut v: Vec<f64>) -> f64 {
    v.sort_by(|a, b| a.total_cmp(b));
    v[v.len() / 2]
}

fn rust(iters: u64) -> (f64, f64) {
    let cache = Cache::open(&Config::anonymous(1 << 20)).expect("open");
    let rec = [b'r'; 64];
    let r = cache.lock().unwrap().insert(OwnerId(1), &rec).unwrap();
    let (mut get, mut add) = (vec![], vec![]);
    for _ in 0..ROUNDS {
        let t = Instant::now();
        for _ in 0..iters {
            let g = cache.lock().unwrap();
            let b = g.get(r).unwrap();
            black_box(b[b.len() - 1]);
            drop(g);
        }
        get.push(t.elapsed().as_nanos() as f64 / iters as f64);
        let t = Instant::now();
        for _ in 0..iters {
            let mut g = cache.lock().unwrap();
            let x = g.insert(OwnerId(1), black_box(&rec)).unwrap();
            g.remove(x).unwrap();
            drop(g);
        }
        add.push(t.elapsed().as_nanos() as f64 / iters as f64);
    }
    (median(get), median(add))
}

fn c(iters: u64) -> (f64, f64) {
    let exe = std::env::current_exe().unwrap();
    let profile = exe.parent().and_then(Path::parent).unwrap().to_path_buf();
    let status = Command::new(std::env::var("CARGO").unwrap_or_else(|_| "cargo".into()))
        .args(["build", "--quiet", "--release", "-p", "cachem-capi"])
        .current_dir(CRATE)
        .status()
        .unwrap();
    assert!(status.success(), "cargo build --release -p cachem-capi failed");
    let lib = profile.join("libcachem.a");
    let bin: PathBuf = std::env::temp_dir().join(format!("cachem-abi-bench-{}", std::process::id()));
    let st = Command::new(std::env::var("CC").unwrap_or_else(|_| "cc".into()))
        .args(["-O2", "-Wall", "-Werror"])
        .arg(format!("-I{CRATE}/include"))
        .arg(format!("{CRATE}/benches/abi.c"))
        .arg(&lib)
        .args(["-lgcc_s", "-lutil", "-lrt", "-lpthread", "-lm", "-ldl", "-lc", "-o"])
        .arg(&bin)
        .status()
        .unwrap();
    assert!(st.success(), "compiling benches/abi.c failed");
    let out = Command::new(&bin).arg(iters.to_string()).arg(ROUNDS.to_string()).output().unwrap();
    let _ = std::fs::remove_file(&bin);
    assert!(out.status.success(), "abi.c failed: {}", String::from_utf8_lossy(&out.stderr));
    let text = String::from_utf8_lossy(&out.stdout);
    let val = |key: &str| -> f64 {
        text.lines()
            .find_map(|l| l.strip_prefix(key).map(|v| v.trim().parse().unwrap()))
            .unwrap_or_else(|| panic!("no {key} in {text}"))
    };
    (val("get "), val("add "))
}

fn main() {
    // `cargo bench` passes --bench; a plain `cargo test --benches` run
    // passes nothing and should stay quick.
    let bench = std::env::args().any(|a| a == "--bench");
    let iters: u64 = std::env::var("CACHEM_ABI_ITERS")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(if bench { 1_000_000 } else { 1_000 });
    let (rg, ra) = rust(iters);
    let (cg, ca) = c(iters);
    println!("| operation ({iters} iterations, median of {ROUNDS}) | Rust API | C ABI | C / Rust |");
    println!("|---|---:|---:|---:|");
    println!("| lock + get + unlock | {rg:.1} ns | {cg:.1} ns | {:.2} |", cg / rg);
    println!("| lock + add + delete + unlock (64 B) | {ra:.1} ns | {ca:.1} ns | {:.2} |", ca / ra);
}

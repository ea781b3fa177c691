//! cachem next to what users would pick instead: LMDB (heed), Redis and
//! memcached on loopback, and a bare process-shared robust mutex (the floor),
//! measured in one run.
//!
//! ```text
//! cargo run --release -p cachem-bench -- [--quick] [--no-write | --write]
//!     [--systems mutex,cachem,cachem-eager,lmdb1,lmdb100,redis,redis16,memcached]
//!     [--workloads insert,get,remove,remove1k,remove100k,remove1m,churn1k,churn100k,churn1m,
//!                  iterate,orders,churn-lifo1k,..,churn-random1m,access,latency,remove-cost,two-proc]
//!     [--remove-sizes 64K,1M,16M,256M] [--docs DIR]
//! ```
//!
//! Prints a markdown report and (full runs only, unless `--no-write`)
//! rewrites the section of docs/benchmarks.md between
//! `<!-- cachem-bench:begin -->` and `<!-- cachem-bench:end -->` and draws
//! docs/remove_cost.svg. Redis and memcached must be installed
//! (`crates/cachem-bench/setup.sh`, run by `make bench`); without them their
//! rows are skipped. The bench starts and stops its own servers.

mod access;
mod harness;
mod remove_cost;
mod report;
mod servers;
mod stores;

use harness::{median, run_once, timed, Budget, Gen, Order};
use std::io::{BufRead, BufReader, Write};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};
use stores::{Spec, Store, ITER_PER_OWNER};

const USAGE: &str = "usage: cachem-bench [--quick] [--no-write | --write]
    [--systems mutex,cachem,cachem-eager,lmdb1,lmdb100,redis,redis16,memcached]
    [--workloads insert,get,remove,remove1k,remove100k,remove1m,churn1k,churn100k,churn1m,
                 iterate,orders,churn-lifo1k,..,churn-random1m,access,latency,remove-cost,two-proc]
(orders: churn-{lifo,fifo,random}{1k,100k,1m})
    [--remove-sizes 64K,1M,16M,256M] [--docs DIR]
A full run (no --quick, no filter) rewrites the cachem-bench section of
DIR/benchmarks.md and DIR/remove_cost.svg (DIR: the repository's docs/)
unless --no-write.";

/// Live records for the insert, get and remove workloads.
pub const BASIC_N: usize = 10_000;
/// Region size for cachem's workloads (1M live 64-byte records need ~104 MB).
const CACHEM_REGION: u64 = 256 << 20;

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Workload {
    Insert,
    Get,
    /// Remove all of N live records in random order (per remove, amortised
    /// over the compactions they cause).
    Remove(usize),
    Churn(usize),
    Iterate,
    /// (insert, remove) pairs in one order at N live; per op.
    Order(Order, usize),
}

impl Workload {
    pub fn key(self) -> String {
        match self {
            Workload::Insert => "insert".into(),
            Workload::Get => "get".into(),
            Workload::Remove(BASIC_N) => "remove".into(),
            Workload::Remove(n) => format!("remove{}", report::short_count(n).to_lowercase()),
            Workload::Churn(n) => format!("churn{}", report::short_count(n).to_lowercase()),
            Workload::Iterate => "iterate".into(),
            Workload::Order(o, n) => {
                format!("churn-{}{}", o.key(), report::short_count(n).to_lowercase())
            }
        }
    }

    /// The group a `--workloads` name selects at once ("orders").
    fn group(self) -> Option<&'static str> {
        matches!(self, Workload::Order(..)).then_some("orders")
    }
}

/// One row of the tables.
pub struct System {
    pub key: &'static str,
    pub label: &'static str,
    pub spec: Spec,
}

struct Args {
    quick: bool,
    write: Option<bool>,
    systems: Option<Vec<String>>,
    workloads: Option<Vec<String>>,
    docs: Option<PathBuf>,
    remove_sizes: Option<Vec<u64>>,
}

impl Args {
    fn parse() -> Args {
        let mut a = Args {
            quick: false,
            write: None,
            systems: None,
            workloads: None,
            docs: None,
            remove_sizes: None,
        };
        let mut it = std::env::args().skip(1);
        while let Some(s) = it.next() {
            let list = |v: Option<String>| -> Option<Vec<String>> {
                Some(v.unwrap_or_default().split(',').map(|s| s.trim().to_lowercase()).collect())
            };
            match s.as_str() {
                "--quick" => a.quick = true,
                "--write" => a.write = Some(true),
                "--no-write" => a.write = Some(false),
                "--systems" => a.systems = list(it.next()),
                "--workloads" => a.workloads = list(it.next()),
                "--docs" => a.docs = it.next().map(PathBuf::from),
                "--remove-sizes" => {
                    let v = it.next().unwrap_or_default();
                    let parsed: Option<Vec<u64>> = v.split(',').map(parse_size).collect();
                    match parsed {
                        Some(v) if !v.is_empty() => a.remove_sizes = Some(v),
                        _ => {
                            eprintln!("--remove-sizes: expected e.g. 64K,1M,16M,256M, got {v:?}");
                            std::process::exit(2);
                        }
                    }
                }
                "-h" | "--help" => {
                    println!("{USAGE}");
                    std::process::exit(0);
                }
                other => {
                    eprintln!("unknown argument {other:?} (try --help)");
                    std::process::exit(2);
                }
            }
        }
        a
    }

    fn filtered(&self) -> bool {
        self.systems.is_some() || self.workloads.is_some() || self.remove_sizes.is_some()
    }

    fn wants_system(&self, key: &str) -> bool {
        self.systems.as_ref().is_none_or(|v| v.iter().any(|s| s == key))
    }

    fn wants(&self, key: &str) -> bool {
        self.workloads.as_ref().is_none_or(|v| v.iter().any(|s| s == key))
    }

    fn wants_workload(&self, w: Workload) -> bool {
        self.wants(&w.key()) || w.group().is_some_and(|g| self.wants(g))
    }
}

/// "64K", "1M", "256M" or a byte count.
fn parse_size(s: &str) -> Option<u64> {
    let s = s.trim().to_uppercase();
    let (num, mul) = match s.as_bytes().last()? {
        b'K' => (&s[..s.len() - 1], 1 << 10),
        b'M' => (&s[..s.len() - 1], 1 << 20),
        b'G' => (&s[..s.len() - 1], 1 << 30),
        _ => (&s[..], 1),
    };
    num.parse::<u64>().ok().map(|n| n * mul).filter(|&n| n >= 4096)
}

/// /dev/shm/cachem-compare-<pid>: regions, LMDB envs, the mutex file,
/// server logs. Removed on drop; left-overs of killed runs (whose pid is
/// gone) are removed at the next start.
struct BenchDir(PathBuf);

const DIR_PREFIX: &str = "cachem-compare-";

impl BenchDir {
    fn new() -> BenchDir {
        let base =
            if Path::new("/dev/shm").is_dir() { PathBuf::from("/dev/shm") } else { std::env::temp_dir() };
        if let Ok(entries) = std::fs::read_dir(&base) {
            for e in entries.flatten() {
                let name = e.file_name();
                let pid = name
                    .to_str()
                    .and_then(|n| n.strip_prefix(DIR_PREFIX))
                    .and_then(|p| p.parse::<u32>().ok());
                if let Some(pid) = pid {
                    if !Path::new(&format!("/proc/{pid}")).exists() {
                        let _ = std::fs::remove_dir_all(e.path());
                    }
                }
            }
        }
        let d = base.join(format!("{DIR_PREFIX}{}", std::process::id()));
        std::fs::create_dir_all(&d).expect("create bench dir");
        BenchDir(d)
    }
}

impl Drop for BenchDir {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.0);
    }
}

/// Kills the second process (by pid) if the first one unwinds.
struct ChildGuard(Child);

impl Drop for ChildGuard {
    fn drop(&mut self) {
        if let Ok(None) = self.0.try_wait() {
            let _ = self.0.kill();
        }
        let _ = self.0.wait();
    }
}

fn seed(w: Workload) -> u64 {
    0x5eed_0000 ^ w.key().bytes().fold(0u64, |h, b| h.wrapping_mul(31).wrapping_add(b as u64))
}

/// One timed step of a run: (ops done, time timed).
type Step = dyn FnMut(&mut dyn Store) -> (u64, Duration);

/// Median ns per op over `budget.runs` runs (after one warm-up run).
fn measure(store: &mut dyn Store, w: Workload, b: &Budget) -> Option<f64> {
    let mut gen = Gen::new(seed(w));
    store.clear();
    let chunk = b.chunk;
    let mut step: Box<Step> = match w {
        Workload::Insert => Box::new(move |s| {
            s.clear();
            gen.reset();
            let ops = gen.inserts(BASIC_N);
            (BASIC_N as u64, timed(|| s.exec(&ops)))
        }),
        Workload::Get => {
            store.fill(&gen.fill_to(BASIC_N));
            Box::new(move |s| {
                let ops = gen.gets(chunk * 4);
                (ops.len() as u64, timed(|| s.exec(&ops)))
            })
        }
        Workload::Remove(n) => Box::new(move |s| {
            s.clear();
            gen.reset();
            s.fill(&gen.fill_to(n));
            let ops = gen.remove_all();
            (ops.len() as u64, timed(|| s.exec(&ops)))
        }),
        Workload::Churn(n) => {
            store.fill(&gen.fill_to(n));
            Box::new(move |s| {
                let ops = gen.churn(n, chunk);
                (ops.len() as u64, timed(|| s.exec(&ops)))
            })
        }
        Workload::Order(o, n) => {
            store.fill(&gen.fill_to(n));
            // Keys freed n pairs ago are reused (see `Gen::spare`).
            gen.spare(n);
            Box::new(move |s| {
                let ops = gen.order(o, chunk);
                (ops.len() as u64, timed(|| s.exec(&ops)))
            })
        }
        Workload::Iterate => {
            if !store.setup_owners() {
                return None;
            }
            Box::new(|s| {
                let t = Instant::now();
                let n = s.iterate_owner();
                let d = t.elapsed();
                assert_eq!(n, ITER_PER_OWNER as usize);
                (n as u64, d)
            })
        }
    };
    step(store); // warm-up
    let runs: Vec<f64> = (0..b.runs).map(|_| run_once(b.run_time, || step(store))).collect();
    drop(step);
    store.clear();
    Some(median(&runs))
}

/// How long the latency run of one system lasts: at least `min_ops` ops
/// and (for a store that counts them) `min_compactions` compactions, at
/// most `max_ops` ops or `max_secs` seconds, whichever comes first.
#[derive(Clone, Copy, Debug)]
pub struct LatencyRun {
    pub min_ops: usize,
    pub min_compactions: u64,
    pub max_ops: usize,
    pub max_secs: f64,
}

/// Per-op latency of the churn mix at `live` records: each op timed alone,
/// for as long as `run` says. Returns the sorted ns per op and the
/// compactions run during the timed window (None: the store has none).
fn latency(store: &mut dyn Store, live: usize, run: LatencyRun) -> (Vec<f64>, Option<u64>) {
    store.clear();
    let mut gen = Gen::new(0x1a7e);
    store.fill(&gen.fill_to(live));
    let c0 = store.compactions();
    let end = Instant::now() + Duration::from_secs_f64(run.max_secs);
    let mut v: Vec<f64> = Vec::with_capacity(run.min_ops);
    let mut done = 0;
    while v.len() < run.max_ops && Instant::now() < end {
        for op in gen.churn(live, 4096) {
            let t = Instant::now();
            store.exec(std::slice::from_ref(&op));
            v.push(t.elapsed().as_nanos() as f64);
        }
        // The counter is read under the lock: between chunks, untimed.
        done = match (c0, store.compactions()) {
            (Some(a), Some(b)) => b - a,
            _ => 0,
        };
        if v.len() >= run.min_ops && (c0.is_none() || done >= run.min_compactions) {
            break;
        }
    }
    store.clear();
    v.sort_by(f64::total_cmp);
    (v, c0.map(|_| done))
}

/// Churn for `secs` seconds; ops per second of time spent in the store.
fn churn_for(store: &mut dyn Store, gen: &mut Gen, target: usize, secs: f64) -> f64 {
    let end = Instant::now() + Duration::from_secs_f64(secs);
    let (mut ops, mut t) = (0u64, Duration::ZERO);
    while Instant::now() < end {
        let v = gen.churn(target, 256);
        t += timed(|| store.exec(&v));
        ops += v.len() as u64;
    }
    ops as f64 / t.as_secs_f64()
}

/// The same churn in this process and a second one at once, `live` records
/// in all (half each, each process working on its own half). Returns the
/// ops/s of each process.
fn two_proc(store: &mut dyn Store, spec: &Spec, live: usize, secs: f64) -> std::io::Result<(f64, f64)> {
    store.clear();
    let exe = std::env::current_exe()?;
    let mut child = ChildGuard(
        Command::new(exe)
            .env("CACHEM_BENCH_CHILD", spec.encode())
            .env("CACHEM_BENCH_LIVE", (live / 2).to_string())
            .env("CACHEM_BENCH_SECS", secs.to_string())
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .spawn()?,
    );
    let mut gen = Gen::new(0xa11ce);
    store.fill(&gen.fill_to(live / 2));
    let mut out = BufReader::new(child.0.stdout.take().ok_or_else(|| std::io::Error::other("no stdout"))?);
    let mut line = String::new();
    out.read_line(&mut line)?;
    if line.trim() != "ready" {
        return Err(std::io::Error::other(format!("second process: {line:?}")));
    }
    // The barrier: both start churning as soon as the child reads "go".
    let mut stdin = child.0.stdin.take().ok_or_else(|| std::io::Error::other("no stdin"))?;
    stdin.write_all(b"go\n")?;
    stdin.flush()?;
    let mine = churn_for(store, &mut gen, live / 2, secs);
    line.clear();
    out.read_line(&mut line)?;
    let theirs: f64 = line
        .trim()
        .strip_prefix("ops ")
        .and_then(|s| s.parse().ok())
        .ok_or_else(|| std::io::Error::other(format!("second process said {line:?}")))?;
    let st = child.0.wait()?;
    if !st.success() {
        return Err(std::io::Error::other(format!("second process exited with {st}")));
    }
    store.clear();
    Ok((mine, theirs))
}

/// The second process of [`two_proc`].
fn child_main(spec: &str) {
    let spec = Spec::decode(spec).expect("CACHEM_BENCH_CHILD");
    let var = |k: &str| std::env::var(k).ok().and_then(|v| v.parse::<f64>().ok()).expect(k);
    let live = var("CACHEM_BENCH_LIVE") as usize;
    let secs = var("CACHEM_BENCH_SECS");
    let mut store = spec.open(1).expect("open store in the second process");
    let mut gen = Gen::new(0xb0b);
    store.fill(&gen.fill_to(live));
    println!("ready");
    std::io::stdout().flush().expect("stdout");
    let mut line = String::new();
    std::io::stdin().read_line(&mut line).expect("stdin");
    let r = churn_for(store.as_mut(), &mut gen, live, secs);
    println!("ops {r}");
}

/// The latency run of `system`: cachem deferred runs until it has
/// compacted several times (a compaction every ~N removes, i.e. every ~4N
/// ops of the mix: 16 M ops for 4 at 1M live); the others as long as before
/// (under Eager every remove compacts; LMDB has no compaction).
fn latency_run(quick: bool, system: &str) -> LatencyRun {
    let deferred = system == "cachem";
    match (quick, deferred) {
        (true, true) => {
            LatencyRun { min_ops: 300_000, min_compactions: 4, max_ops: 4_000_000, max_secs: 10.0 }
        }
        (true, false) => LatencyRun { min_ops: 300_000, min_compactions: 0, max_ops: 300_000, max_secs: 1.0 },
        (false, true) => {
            LatencyRun { min_ops: 3_000_000, min_compactions: 4, max_ops: 24_000_000, max_secs: 60.0 }
        }
        (false, false) => {
            LatencyRun { min_ops: 3_000_000, min_compactions: 0, max_ops: 3_000_000, max_secs: 4.0 }
        }
    }
}

fn main() {
    if let Ok(spec) = std::env::var("CACHEM_BENCH_CHILD") {
        child_main(&spec);
        return;
    }
    let args = Args::parse();
    let quick = args.quick;
    let write = args.write.unwrap_or(!quick && !args.filtered());
    let budget = if quick {
        Budget {
            runs: 2,
            run_time: Duration::from_millis(30),
            chunk: 256,
            two_proc_secs: 0.3,
            two_proc_runs: 1,
            quick,
        }
    } else {
        Budget {
            runs: 5,
            run_time: Duration::from_millis(250),
            chunk: 256,
            two_proc_secs: 1.0,
            two_proc_runs: 3,
            quick,
        }
    };
    let started = Instant::now();
    let mut info = report::Machine::collect();
    let dir = BenchDir::new();

    // Servers (skipped, with a note, when not installed).
    let mut notes = Vec::new();
    let start = |name: &str, bin: &str, f: &dyn Fn(&Path) -> std::io::Result<servers::Server>| {
        if !Path::new(bin).exists() {
            eprintln!(
                "{bin} is missing: run crates/cachem-bench/setup.sh (make bench does); skipping {name}"
            );
            return None;
        }
        match f(&dir.0) {
            Ok(s) => {
                eprintln!("started {name} (pid {}) on 127.0.0.1:{}", s.pid(), s.port);
                Some(s)
            }
            Err(e) => {
                eprintln!("could not start {name}: {e}; skipping it");
                None
            }
        }
    };
    let redis = if args.wants_system("redis") || args.wants_system("redis16") {
        start("redis-server", servers::REDIS, &servers::Server::redis)
    } else {
        None
    };
    let memcached = if args.wants_system("memcached") {
        start("memcached", servers::MEMCACHED, &servers::Server::memcached)
    } else {
        None
    };
    for (s, what, client) in [
        (&redis, "Redis", format!("redis crate {}", stores::REDIS_CRATE)),
        (&memcached, "memcached", format!("memcache crate {}", stores::MEMCACHE_CRATE)),
    ] {
        match s {
            Some(s) => info.versions.push(format!("{} ({client})", s.version)),
            None => notes.push(format!("{what} was not measured (not installed or not started).")),
        }
    }
    info.versions.push(format!("LMDB {} (heed 0.22)", report::lmdb_version()));

    let d = &dir.0;
    let mut systems = vec![
        System {
            key: "mutex",
            label: "bare robust mutex lock+unlock (floor)",
            spec: Spec::Mutex { path: d.join("mutex") },
        },
        System {
            key: "cachem",
            label: "cachem deferred (lock + op + unlock)",
            spec: Spec::Cachem { dir: d.clone(), name: "bench".into(), size: CACHEM_REGION, eager: false },
        },
        System {
            key: "cachem-eager",
            label: "cachem eager (lock + op + unlock)",
            spec: Spec::Cachem {
                dir: d.clone(),
                name: "bench-eager".into(),
                size: CACHEM_REGION,
                eager: true,
            },
        },
        System {
            key: "lmdb1",
            label: "LMDB, 1 op per txn",
            spec: Spec::Lmdb { path: d.join("lmdb1"), per_txn: 1 },
        },
        System {
            key: "lmdb100",
            label: "LMDB, 100 ops per txn",
            spec: Spec::Lmdb { path: d.join("lmdb100"), per_txn: 100 },
        },
    ];
    if let Some(r) = &redis {
        systems.push(System {
            key: "redis",
            label: "Redis, 1 request at a time",
            spec: Spec::Redis { port: r.port, pipeline: 1 },
        });
        systems.push(System {
            key: "redis16",
            label: "Redis, pipelined by 16",
            spec: Spec::Redis { port: r.port, pipeline: 16 },
        });
    }
    if let Some(m) = &memcached {
        systems.push(System {
            key: "memcached",
            label: "memcached, 1 request at a time",
            spec: Spec::Memcached { port: m.port },
        });
    }
    systems.retain(|s| args.wants_system(s.key));
    let mut stores: Vec<Box<dyn Store>> =
        systems.iter().map(|s| s.spec.open(0).unwrap_or_else(|e| panic!("open {}: {e}", s.label))).collect();

    let churn_sizes: &[usize] = if quick { &[1_000, 100_000] } else { &[1_000, 100_000, 1_000_000] };
    let remove_sizes: &[usize] =
        if quick { &[1_000, BASIC_N, 100_000] } else { &[1_000, BASIC_N, 100_000, 1_000_000] };
    let mut workloads = vec![Workload::Insert, Workload::Get];
    workloads.extend(remove_sizes.iter().map(|&n| Workload::Remove(n)));
    workloads.extend(churn_sizes.iter().map(|&n| Workload::Churn(n)));
    workloads.push(Workload::Iterate);
    for o in Order::ALL {
        workloads.extend(churn_sizes.iter().map(|&n| Workload::Order(o, n)));
    }
    workloads.retain(|&w| args.wants_workload(w));

    // Single process.
    let mut results = report::Results::new(&systems, &workloads);
    for (wi, &w) in workloads.iter().enumerate() {
        for (si, sys) in systems.iter().enumerate() {
            if sys.key == "cachem-eager" && matches!(w, Workload::Remove(n) if n > BASIC_N) {
                // Quadratic under Eager: removing 100,000 records takes ~27 s.
                eprintln!("{:<16} {:<40} {:>12}", w.key(), sys.label, "skipped");
                continue;
            }
            if sys.key == "cachem-eager"
                && matches!(w, Workload::Order(o, n) if o != Order::Lifo && n > 1_000)
            {
                // O(tail) per remove under Eager: the region is compacted at
                // all times, so removing the oldest (or a random) record
                // moves every block after it (~70 MB at 1M live).
                eprintln!("{:<16} {:<40} {:>12}", w.key(), sys.label, "skipped");
                continue;
            }
            let t = Instant::now();
            let r = measure(stores[si].as_mut(), w, &budget);
            eprintln!(
                "{:<16} {:<40} {:>12}   ({:.1} s)",
                w.key(),
                sys.label,
                r.map(report::fmt_ns).unwrap_or_else(|| "n/a".into()),
                t.elapsed().as_secs_f64()
            );
            results.ns[wi][si] = r;
        }
    }

    // Latency per op, churn at 1M live (100k in quick runs).
    let mut lat = Vec::new();
    if args.wants("latency") {
        let live = if quick { 100_000 } else { 1_000_000 };
        for (si, sys) in systems.iter().enumerate() {
            if !matches!(sys.key, "cachem" | "cachem-eager" | "lmdb1") {
                continue;
            }
            let run = latency_run(quick, sys.key);
            let t = Instant::now();
            let (v, compactions) = latency(stores[si].as_mut(), live, run);
            let row = report::Latency::of(si, live, &v, compactions);
            eprintln!(
                "latency {:>5} {:<40} p50 {} p99 {} p99.9 {} max {} ({} over 1 ms; {} ops, {} compactions, {:.1} s)",
                report::short_count(live),
                sys.label,
                report::fmt_ns(row.p50),
                report::fmt_ns(row.p99),
                report::fmt_ns(row.p999),
                report::fmt_ns(row.max),
                row.over_1ms,
                row.ops,
                row.compactions.map_or("no".into(), |c| c.to_string()),
                t.elapsed().as_secs_f64()
            );
            lat.push(row);
        }
    }

    // The limit of a random access, next to the reads, at 1M live (100k
    // in quick runs).
    let mut acc = None;
    if args.wants("access") {
        let live = if quick { 100_000 } else { 1_000_000 };
        let t = Instant::now();
        let a = access::measure(d, live, budget.runs, budget.run_time);
        eprintln!(
            "access {:>5}: {} ({:.1} s)",
            report::short_count(live),
            a.summary(),
            t.elapsed().as_secs_f64()
        );
        acc = Some(a);
    }

    // Remove cost against region size.
    let mut points = Vec::new();
    if args.wants("remove-cost") {
        let default: &[u64] =
            if quick { &[64 << 10, 1 << 20] } else { &[64 << 10, 1 << 20, 16 << 20, 256 << 20] };
        let sizes = args.remove_sizes.clone().unwrap_or_else(|| default.to_vec());
        for live in sizes {
            let t = Instant::now();
            let p = remove_cost::measure(d, live, budget.runs, budget.run_time, if quick { 3 } else { 10 });
            eprintln!(
                "remove-cost {:>8}: eager {:.2} µs, memmove {:.2} µs, {:.2}x ({} removes); \
                 deferred {:.3} µs ({} removes); LMDB {:.2} µs ({:.1} s)",
                remove_cost::human_bytes(live as f64),
                p.cachem_us,
                p.memmove_us,
                p.ratio,
                p.removes,
                p.deferred_us,
                p.deferred_removes,
                p.lmdb_us,
                t.elapsed().as_secs_f64()
            );
            points.push(p);
        }
    }

    // Two processes at once.
    let mut two = Vec::new();
    if args.wants("two-proc") {
        let sizes: &[usize] = if quick { &[1_000] } else { churn_sizes };
        for &live in sizes {
            for (si, sys) in systems.iter().enumerate() {
                let t = Instant::now();
                let mut a = Vec::new();
                let mut b = Vec::new();
                let mut err = None;
                for _ in 0..budget.two_proc_runs {
                    match two_proc(stores[si].as_mut(), &sys.spec, live, budget.two_proc_secs) {
                        Ok((x, y)) => {
                            a.push(x);
                            b.push(y);
                        }
                        Err(e) => {
                            err = Some(e.to_string());
                            break;
                        }
                    }
                }
                let row = report::TwoProc { system: si, live, a: median(&a), b: median(&b), error: err };
                eprintln!(
                    "two-proc {:>5} {:<40} {:>10.0} {:>10.0} ops/s   ({:.1} s){}",
                    report::short_count(live),
                    sys.label,
                    row.a,
                    row.b,
                    t.elapsed().as_secs_f64(),
                    row.error.as_deref().map(|e| format!(" error: {e}")).unwrap_or_default()
                );
                two.push(row);
            }
        }
    }
    drop(stores);
    drop(redis);
    drop(memcached);

    info.finish(started.elapsed());
    let svg_name = "remove_cost.svg";
    let lat_svg = "latency.svg";
    let md = report::markdown(
        &info,
        &budget,
        &systems,
        &results,
        &points,
        &two,
        &lat,
        acc.as_ref(),
        &notes,
        (svg_name, lat_svg),
    );
    println!("{md}");
    if write {
        let docs =
            args.docs.clone().unwrap_or_else(|| Path::new(env!("CARGO_MANIFEST_DIR")).join("../../docs"));
        if !points.is_empty() {
            let sub = format!(
                "64-byte records, random positions; labels: eager / memmove; median of {} runs; {}; {}",
                budget.runs, info.cpu, info.date
            );
            match remove_cost::plot(&points, &docs.join(svg_name), &sub) {
                Ok(()) => eprintln!("wrote {}", docs.join(svg_name).display()),
                Err(e) => eprintln!("could not draw {svg_name}: {e}"),
            }
        }
        if !lat.is_empty() {
            let sub = format!("churn mix, each op timed alone; {}; {}", info.cpu, info.date);
            let labels: Vec<&str> = lat.iter().map(|l| systems[l.system].label).collect();
            match report::plot_latency(&lat, &labels, &docs.join(lat_svg), &sub) {
                Ok(()) => eprintln!("wrote {}", docs.join(lat_svg).display()),
                Err(e) => eprintln!("could not draw {lat_svg}: {e}"),
            }
        }
        match report::write_section(&docs.join("benchmarks.md"), &md) {
            Ok(()) => eprintln!("wrote the cachem-bench section of {}", docs.join("benchmarks.md").display()),
            Err(e) => eprintln!("could not update docs/benchmarks.md: {e}"),
        }
    }
    eprintln!("done in {:.0} s", started.elapsed().as_secs_f64());
}

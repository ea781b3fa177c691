//! The markdown report: machine, method, tables, ratios, targets; and the
//! marked section of docs/benchmarks.md it replaces.

use crate::access::Access;
use crate::harness::{Budget, Order};
use crate::remove_cost::{human_bytes, Point};
use crate::{System, Workload, BASIC_N};
use std::fmt::Write as _;
use std::path::Path;
use std::time::Duration;

pub const BEGIN: &str = "<!-- cachem-bench:begin -->";

pub const END: &str = "<!-- cachem-bench:end -->";

pub struct Machine {
    pub cores: usize,
    pub cpu: String,
    pub kernel: String,
    pub mem: String,
    pub rustc: String,
    pub date: String,
    pub command: String,
    pub load_start: String,
    pub load_end: String,
    pub total: Duration,
    pub versions: Vec<String>,
}

fn read(p: &str) -> String {
    std::fs::read_to_string(p).unwrap_or_default()
}

fn loadavg() -> String {
    read("/proc/loadavg").split_whitespace().take(3).collect::<Vec<_>>().join(" ")
}

pub fn lmdb_version() -> String {
    let v = heed::lmdb_version();
    format!("{}.{}.{}", v.major, v.minor, v.patch)
}

/// `YYYY-MM-DD HH:MM UTC` from the system clock.
fn utc_now() -> String {
    let secs =
        std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).map(|d| d.as_secs()).unwrap_or(0);
    let (days, rem) = ((secs / 86_400) as i64, secs % 86_400);
    // Howard Hinnant's civil_from_days.
    let z = days + 719_468;
    let era = z.div_euclid(146_097);
    let doe = z - era * 146_097;
    let yoe = (doe - doe / 1460 + doe / 36_524 - doe / 146_096) / 365;
    let doy = doe - (365 * yoe + yoe / 4 - yoe / 100);
    let mp = (5 * doy + 2) / 153;
    let d = doy - (153 * mp + 2) / 5 + 1;
    let m = if mp < 10 { mp + 3 } else { mp - 9 };
    let y = yoe + era * 400 + i64::from(m <= 2);
    format!("{y:04}-{m:02}-{d:02} {:02}:{:02} UTC", rem / 3600, rem % 3600 / 60)
}

impl Machine {
    pub fn collect() -> Machine {
        let cpuinfo = read("/proc/cpuinfo");
        let cpu = cpuinfo
            .lines()
            .find(|l| l.starts_with("model name"))
            .and_then(|l| l.split_once(':'))
            .map(|(_, v)| v.trim().to_string())
            .unwrap_or_else(|| "unknown CPU".into());
        let mem = read("/proc/meminfo")
            .lines()
            .find(|l| l.starts_with("MemTotal:"))
            .and_then(|l| l.split_whitespace().nth(1)?.parse::<f64>().ok())
            .map(|kb| format!("{:.0} GiB", kb / (1 << 20) as f64))
            .unwrap_or_default();
        let rustc = std::process::Command::new("rustc")
            .arg("--version")
            .output()
            .ok()
            .map(|o| String::from_utf8_lossy(&o.stdout).trim().to_string())
            .filter(|s| !s.is_empty())
            .unwrap_or_else(|| "rustc (unknown version)".into());
        let args: Vec<String> = std::env::args().skip(1).collect();
        let command = std::env::var("CACHEM_BENCH_CMD").ok().filter(|s| !s.is_empty()).unwrap_or_else(|| {
            if args.is_empty() {
                "cargo run --release -p cachem-bench".into()
            } else {
                format!("cargo run --release -p cachem-bench -- {}", args.join(" "))
            }
        });
        Machine {
            cores: std::thread::available_parallelism().map(|n| n.get()).unwrap_or(1),
            cpu,
            kernel: read("/proc/sys/kernel/osrelease").trim().to_string(),
            mem,
            rustc,
            date: utc_now(),
            command,
            load_start: loadavg(),
            load_end: String::new(),
            total: Duration::ZERO,
            versions: Vec::new(),
        }
    }

    pub fn finish(&mut self, total: Duration) {
        self.load_end = loadavg();
        self.total = total;
    }
}

pub struct Results {
    pub workloads: Vec<Workload>,
    pub keys: Vec<&'static str>,
    /// `ns[workload][system]`: median ns per op (None: not supported).
    pub ns: Vec<Vec<Option<f64>>>,
}

impl Results {
    pub fn new(systems: &[System], workloads: &[Workload]) -> Results {
        Results {
            workloads: workloads.to_vec(),
            keys: systems.iter().map(|s| s.key).collect(),
            ns: vec![vec![None; systems.len()]; workloads.len()],
        }
    }

    pub fn get(&self, w: Workload, key: &str) -> Option<f64> {
        let wi = self.workloads.iter().position(|&x| x == w)?;
        let si = self.keys.iter().position(|&k| k == key)?;
        self.ns[wi][si]
    }
}

/// Per-op latency percentiles of one system (churn at `live`).
pub struct Latency {
    pub system: usize,
    pub live: usize,
    pub ops: usize,
    pub p50: f64,
    pub p99: f64,
    pub p999: f64,
    pub max: f64,
    /// Compactions during the timed window (None: the store has none).
    pub compactions: Option<u64>,
    /// Ops that took over 1 ms (a compaction step, or the machine).
    pub over_1ms: usize,
    /// Sorted samples, thinned for the plot (quantile, ns).
    pub curve: Vec<(f64, f64)>,
}

impl Latency {
    /// From sorted ns per op.
    pub fn of(system: usize, live: usize, sorted: &[f64], compactions: Option<u64>) -> Latency {
        let q = |p: f64| -> f64 {
            if sorted.is_empty() {
                f64::NAN
            } else {
                sorted[((sorted.len() as f64 * p) as usize).min(sorted.len() - 1)]
            }
        };
        // Quantiles 1 - 10^-k from 0.5 to the max, for a log-tail plot.
        let mut curve = Vec::new();
        let mut k = 0.3f64;
        while k <= 7.0 {
            let p = 1.0 - 10f64.powf(-k);
            if (sorted.len() as f64) * (1.0 - p) >= 1.0 {
                curve.push((p, q(p)));
            }
            k += 0.1;
        }
        if let Some(&m) = sorted.last() {
            curve.push((1.0 - 1.0 / sorted.len() as f64, m));
        }
        Latency {
            system,
            live,
            ops: sorted.len(),
            p50: q(0.5),
            p99: q(0.99),
            p999: q(0.999),
            max: sorted.last().copied().unwrap_or(f64::NAN),
            compactions,
            over_1ms: sorted.len() - sorted.partition_point(|&x| x <= 1e6),
            curve,
        }
    }
}

/// The latency tails (ns against quantile, log-log) as SVG.
pub fn plot_latency(
    lat: &[Latency],
    labels: &[&str],
    path: &Path,
    subtitle: &str,
) -> Result<(), Box<dyn std::error::Error>> {
    use plotters::prelude::*;
    let root = SVGBackend::new(path, (820, 520)).into_drawing_area();
    root.fill(&WHITE)?;
    let (title, body) = root.split_vertically(56);
    let live = lat.first().map_or(0, |l| l.live);
    title.draw(&Text::new(
        format!("latency per op, churn at {} live records", short_count(live)),
        (20, 10),
        ("sans-serif", 20).into_font().color(&BLACK),
    ))?;
    title.draw(&Text::new(
        subtitle.to_string(),
        (20, 34),
        ("sans-serif", 13).into_font().color(&BLACK.mix(0.7)),
    ))?;
    // x: -log10(1 - quantile) (0.5 -> 0.3, 0.99 -> 2, 0.999 -> 3).
    let xs = |p: f64| -(1.0 - p).log10();
    let xmax = lat.iter().flat_map(|l| l.curve.iter().map(|&(p, _)| xs(p))).fold(3.0, f64::max) + 0.3;
    let ymin = lat.iter().flat_map(|l| l.curve.iter().map(|&(_, y)| y)).fold(f64::INFINITY, f64::min) / 2.0;
    let ymax = lat.iter().flat_map(|l| l.curve.iter().map(|&(_, y)| y)).fold(1.0, f64::max) * 3.0;
    let ykeys: Vec<f64> = (0..=10).map(|e| 10f64.powi(e)).filter(|&y| y >= ymin && y <= ymax).collect();
    let mut chart = ChartBuilder::on(&body)
        .margin(16)
        .x_label_area_size(44)
        .y_label_area_size(70)
        .build_cartesian_2d(0.0..xmax, (ymin.max(1.0)..ymax).log_scale().with_key_points(ykeys))?;
    chart
        .configure_mesh()
        .x_desc("quantile")
        .y_desc("time per op (log)")
        .x_label_formatter(&|x| {
            let p = 1.0 - 10f64.powf(-*x);
            if *x < 0.5 {
                "p50".into()
            } else {
                format!("p{}", trim_q(p * 100.0))
            }
        })
        .y_label_formatter(&|y| fmt_ns(*y))
        .light_line_style(TRANSPARENT)
        .bold_line_style(BLACK.mix(0.12))
        .label_style(("sans-serif", 13))
        .draw()?;
    let colors = [RGBColor(0, 140, 60), RED, MAGENTA, BLUE];
    for (i, l) in lat.iter().enumerate() {
        let color = colors[i % colors.len()];
        let pts: Vec<(f64, f64)> = l.curve.iter().map(|&(p, y)| (xs(p), y.max(1.0))).collect();
        chart
            .draw_series(LineSeries::new(pts, color.stroke_width(2)))?
            .label(format!("{} (max {})", labels.get(i).copied().unwrap_or("?"), fmt_ns(l.max)))
            .legend(move |(x, y)| PathElement::new(vec![(x, y), (x + 20, y)], color.stroke_width(2)));
    }
    chart
        .configure_series_labels()
        .position(SeriesLabelPosition::UpperLeft)
        .background_style(WHITE.mix(0.9))
        .border_style(BLACK.mix(0.4))
        .label_font(("sans-serif", 13))
        .draw()?;
    root.present()?;
    Ok(())
}

fn trim_q(x: f64) -> String {
    let s = format!("{x:.4}");
    s.trim_end_matches('0').trim_end_matches('.').to_string()
}

pub struct TwoProc {
    pub system: usize,
    pub live: usize,
    pub a: f64,
    pub b: f64,
    pub error: Option<String>,
}

/// 10000 -> "10,000".
pub fn thousands(n: usize) -> String {
    let s = n.to_string();
    let mut out = String::new();
    for (i, c) in s.chars().enumerate() {
        if i > 0 && (s.len() - i).is_multiple_of(3) {
            out.push(',');
        }
        out.push(c);
    }
    out
}

fn thousands_u64(n: u64) -> String {
    thousands(n as usize)
}

pub fn short_count(n: usize) -> String {
    if n >= 1_000_000 && n.is_multiple_of(1_000_000) {
        format!("{}M", n / 1_000_000)
    } else if n >= 1000 && n.is_multiple_of(1000) {
        format!("{}k", n / 1000)
    } else {
        n.to_string()
    }
}

fn sig3(x: f64) -> String {
    if x >= 100.0 {
        format!("{x:.0}")
    } else if x >= 10.0 {
        format!("{x:.1}")
    } else {
        format!("{x:.2}")
    }
}

pub fn fmt_ns(ns: f64) -> String {
    if !ns.is_finite() {
        "n/a".into()
    } else if ns < 1e3 {
        format!("{} ns", sig3(ns))
    } else if ns < 1e6 {
        format!("{} µs", sig3(ns / 1e3))
    } else if ns < 1e9 {
        format!("{} ms", sig3(ns / 1e6))
    } else {
        format!("{} s", sig3(ns / 1e9))
    }
}

fn fmt_ratio(r: f64) -> String {
    if !r.is_finite() {
        "n/a".into()
    } else if r >= 100.0 {
        format!("{r:.0}x")
    } else if r >= 10.0 {
        format!("{r:.1}x")
    } else if r >= 1.0 {
        format!("{r:.2}x")
    } else if r > 0.1 {
        format!("1/{:.1}", 1.0 / r)
    } else {
        format!("1/{:.0}", 1.0 / r)
    }
}

pub fn fmt_ops(x: f64) -> String {
    if !x.is_finite() {
        "n/a".into()
    } else if x >= 1e6 {
        format!("{:.2} M", x / 1e6)
    } else if x >= 1e3 {
        format!("{:.1} k", x / 1e3)
    } else {
        format!("{x:.0}")
    }
}

fn workload_title(w: Workload) -> String {
    match w {
        Workload::Insert => "insert".into(),
        Workload::Get => "get".into(),
        Workload::Remove(BASIC_N) => format!("remove ({})", short_count(BASIC_N)),
        Workload::Remove(n) => format!("remove {}", short_count(n)),
        Workload::Churn(n) => format!("churn {}", short_count(n)),
        Workload::Iterate => "iterate (per record)".into(),
        Workload::Order(o, n) => format!("churn-{} {}", o.key(), short_count(n)),
    }
}

fn is_order(w: Workload) -> bool {
    matches!(w, Workload::Order(..))
}

const PEERS: [(&str, &str); 6] = [
    ("cachem-eager", "cachem eager"),
    ("lmdb1", "LMDB 1/txn"),
    ("lmdb100", "LMDB 100/txn"),
    ("redis", "Redis"),
    ("redis16", "Redis x16"),
    ("memcached", "memcached"),
];

#[allow(clippy::too_many_arguments)]
pub fn markdown(
    m: &Machine,
    b: &Budget,
    systems: &[System],
    r: &Results,
    points: &[Point],
    two: &[TwoProc],
    lat: &[Latency],
    acc: Option<&Access>,
    notes: &[String],
    (svg, lat_svg): (&str, &str),
) -> String {
    let mut s = String::new();
    let w = &mut s;
    let _ = writeln!(w, "## cachem next to LMDB, Redis, memcached and a bare mutex\n");
    let _ = writeln!(
        w,
        "Generated by `crates/cachem-bench` (part of `make bench`); everything between the\n\
         `cachem-bench` markers is rewritten by each full run."
    );
    let _ = writeln!(w);
    let _ = writeln!(w, "- Command: `{}`", m.command);
    let _ = writeln!(w, "- Date: {}; the whole bench took {:.0} s.", m.date, m.total.as_secs_f64());
    let _ = writeln!(
        w,
        "- Machine: {} cores (nproc), {}, {} RAM, Linux {}; {}; {}.",
        m.cores,
        m.cpu,
        m.mem,
        m.kernel,
        m.rustc,
        m.versions.join(", ")
    );
    let _ = writeln!(
        w,
        "- Load average (1, 5, 15 min): {} at the start, {} at the end. The cores are shared \
         with other work, so compare figures within one run.",
        m.load_start, m.load_end
    );
    let _ = writeln!(
        w,
        "- Method: each cell is the median over {} runs of ns per operation; a run repeats chunks \
         of ops until {} ms were timed, after one untimed warm-up chunk. Ops are drawn (untimed) \
         before each chunk. Records are 64 bytes.",
        b.runs,
        b.run_time.as_millis()
    );
    let n = thousands(BASIC_N);
    let _ = writeln!(
        w,
        "  - insert: {n} records into an empty store; get: a random one of {n} live; remove N: all N \
         in random order (live shrinks from N to 0; per remove, compactions included); churn N: 50% get, 25% insert, 25% remove of \
         random records at N live (kept within N ± N/16); churn-lifo/fifo/random N: see \
         \"Churn orders\" below; iterate: all records of one owner of {} \
         ({} records each, inserted interleaved), per record visited.",
        crate::stores::ITER_OWNERS,
        thousands(crate::stores::ITER_PER_OWNER as usize)
    );
    let _ = writeln!(
        w,
        "  - cachem: `Cache::lock()` + op + unlock for every op, on a 256 MiB region in /dev/shm, \
         format v3. \"deferred\" (the default policy): a remove marks its block dead, one compaction \
         closes every hole when an insert does not fit or dead bytes pass half of the block \
         section. \"eager\": every remove compacts at once (format v1's only behaviour); its \
         remove 100k and remove 1M are skipped (quadratic: ~27 s and hours), and so are its FIFO and \
         random churn orders beyond 1k (O(tail) per remove). \
         The floor: lock + unlock of a process-shared, robust, error-checking pthread mutex in a \
         /dev/shm mapping (`cachem::sys::mutex`), once per op whatever the op."
    );
    let _ = writeln!(
        w,
        "  - LMDB: heed, env in /dev/shm with `NO_SYNC | WRITE_MAP`, 8-byte big-endian keys. \
         \"1 op per txn\": every write in its own write transaction, every get in its own read \
         transaction; \"100 ops per txn\": 100 ops per transaction (a read transaction when all \
         100 are gets). Iterate: a prefix scan over (owner, seq) keys."
    );
    let _ = writeln!(
        w,
        "  - Redis and memcached: started by the bench on 127.0.0.1 with a free port \
         (`redis-server --save '' --appendonly no`, `memcached -U 0 -m 1024`) and measured through \
         the client crates a Rust user would pick, default features off (no async runtime, no TLS), \
         one TCP connection each with TCP_NODELAY, one request at a time. Redis: the `redis` crate \
         {}, a synchronous `redis::Connection` (TCP_NODELAY through its `TcpSettings`): SET/GET/DEL; \
         \"pipelined by 16\": 16 commands sent as one `redis::Pipeline`, then their 16 replies read. \
         memcached: the `memcache` crate {}, text protocol (`protocol=ascii`; the crate's default is \
         the binary protocol, which memcached deprecates), a `memcache::Client` over an r2d2 pool of \
         one connection with `test_on_check_out` off (on, as `Client::connect` builds it, every op \
         would first send a `version` request): set/get/delete. The crate writes a request to the \
         socket in pieces (a get in 4 send calls, a set in 12), which TCP_NODELAY lets leave as \
         separate segments. The crate has no multi-set: memcached's untimed fills write `noreply` \
         sets of the text protocol on a second connection (batches of 4,096, each closed by a \
         `version` round trip); Redis's are pipelines of 256 SETs. Iterate: \
         Redis HGETALL of one hash per owner (into `Vec<(Vec<u8>, Vec<u8>)>`); memcached cannot \
         enumerate its keys (n/a).",
        crate::stores::REDIS_CRATE,
        crate::stores::MEMCACHE_CRATE
    );
    for note in notes {
        let _ = writeln!(w, "- {note}");
    }
    let _ = writeln!(w);

    // Main table (the orders have their own, below).
    let main_wl: Vec<(usize, Workload)> =
        r.workloads.iter().copied().enumerate().filter(|&(_, wl)| !is_order(wl)).collect();
    if !main_wl.is_empty() {
        let _ = writeln!(w, "### One process: median time per operation\n");
        let _ = write!(w, "| system |");
        for &(_, wl) in &main_wl {
            let _ = write!(w, " {} |", workload_title(wl));
        }
        let _ = write!(w, "\n|---|");
        for _ in &main_wl {
            let _ = write!(w, "---:|");
        }
        let _ = writeln!(w);
        for (si, sys) in systems.iter().enumerate() {
            let _ = write!(w, "| {} |", sys.label);
            for &(wi, wl) in &main_wl {
                let cell = match r.ns[wi][si] {
                    Some(x) => fmt_ns(x),
                    None if sys.key == "mutex" && wl == Workload::Iterate => "".into(),
                    None => "n/a".into(),
                };
                let _ = write!(w, " {cell} |");
            }
            let _ = writeln!(w);
        }
        let _ = writeln!(w);
    }

    // Ratios.
    let peers: Vec<(&str, &str)> = PEERS.iter().copied().filter(|(k, _)| r.keys.contains(k)).collect();
    if r.keys.contains(&"cachem") && !main_wl.is_empty() {
        let _ = writeln!(w, "### cachem against the floor and each peer\n");
        let _ = writeln!(
            w,
            "\"vs floor\" is cachem's time / the bare mutex's (1x would be free). The peer columns \
             are the peer's time / cachem's: above 1, cachem is that many times faster; below 1 \
             (written 1/k), the peer is k times faster.\n"
        );
        let _ = write!(w, "| workload | cachem deferred | vs floor |");
        for (_, t) in &peers {
            let _ = write!(w, " {t} |");
        }
        let _ = write!(w, "\n|---|---:|---:|");
        for _ in &peers {
            let _ = write!(w, "---:|");
        }
        let _ = writeln!(w);
        for &(_, wl) in &main_wl {
            let Some(c) = r.get(wl, "cachem") else { continue };
            let floor = if wl == Workload::Iterate { None } else { r.get(wl, "mutex") };
            let _ = write!(
                w,
                "| {} | {} | {} |",
                workload_title(wl),
                fmt_ns(c),
                floor.map(|f| fmt_ratio(c / f)).unwrap_or_default()
            );
            for (k, _) in &peers {
                let _ = write!(
                    w,
                    " {} |",
                    r.get(wl, k).map(|p| fmt_ratio(p / c)).unwrap_or_else(|| "n/a".into())
                );
            }
            let _ = writeln!(w);
        }
        let _ = writeln!(w);
    }

    // Churn orders.
    let order_wl: Vec<Workload> = r.workloads.iter().copied().filter(|&wl| is_order(wl)).collect();
    // lock + insert of 64 B in this run: the insert workload, else the
    // access table's.
    let lock_insert = r.get(Workload::Insert, "cachem").or(acc.map(|a| a.insert));
    let order_peers: Vec<&System> = systems.iter().filter(|s| s.key != "mutex").collect();
    if !order_wl.is_empty() {
        let _ = writeln!(w, "### Churn orders: time per operation (an insert or a remove)\n");
        let _ = writeln!(
            w,
            "N records live (filled untimed), then (insert, remove) pairs, each op its own lock + op + \
             unlock (LMDB: transactions of 1 or 100 ops; Redis/memcached: one request each): \
             **LIFO** inserts a record and removes it (a request handler's pattern); **FIFO** \
             removes the oldest record and inserts a new one (a queue); **random** removes a \
             random record and inserts a new one. Live stays at N. Keys (LMDB's 8-byte \
             big-endian keys, Redis/memcached's `k<n>`) are reused N pairs after they were \
             freed, so FIFO's keys advance like a queue's in LMDB's B-tree. cachem eager: LIFO \
             only beyond 1k, because an `Eager` region is compacted at all times: removing the \
             oldest or a random record moves every block after it (O(tail), ~70 MB at 1M live, \
             milliseconds per remove). \"vs 1k\" is deferred's time / the same order's at 1k; \
             \"vs insert\" is deferred's time / cachem's lock + insert of 64 B in this run.\n"
        );
        let _ = write!(w, "| order | live |");
        for sys in &order_peers {
            let _ = write!(w, " {} |", sys.label);
        }
        let _ = write!(w, " deferred vs 1k | deferred vs insert |\n|---|---:|");
        for _ in &order_peers {
            let _ = write!(w, "---:|");
        }
        let _ = writeln!(w, "---:|---:|");
        for &wl in &order_wl {
            let Workload::Order(o, n) = wl else { continue };
            let _ = write!(w, "| {} | {} |", o.key(), short_count(n));
            for sys in &order_peers {
                let cell = match r.get(wl, sys.key) {
                    Some(x) => fmt_ns(x),
                    None if sys.key == "cachem-eager" => "skipped (O(tail))".into(),
                    None => "n/a".into(),
                };
                let _ = write!(w, " {cell} |");
            }
            let c = r.get(wl, "cachem");
            let at1k = r.get(Workload::Order(o, 1_000), "cachem");
            let ratio = |x: Option<f64>, y: Option<f64>| match (x, y) {
                (Some(x), Some(y)) => fmt_ratio(x / y),
                _ => String::new(),
            };
            let _ = writeln!(w, " {} | {} |", ratio(c, at1k), ratio(c, lock_insert));
        }
        let _ = writeln!(w);
    }

    // The limit of a random access.
    if let Some(a) = acc {
        let _ = writeln!(w, "### The limit of a random access ({} live)\n", short_count(a.live));
        let _ = writeln!(
            w,
            "A cachem (deferred) region of {} live 64-byte records and, next to it, the limit of a \
             random access: a plain buffer of the region's footprint ({}: a table of 32-byte \
             entries, each holding the offset of a 72-byte block, the blocks in a random \
             permutation), where one access reads a random entry, then (a load that depends on \
             it) the block it names, and copies the block's 64 bytes out. \"The limit\" chains the \
             accesses (each table index is xor-ed with a byte of the previous copy and a zero the \
             compiler cannot see: a pointer chase), so one access's two misses are not overlapped \
             with the next access's; cachem's lock (a locked instruction, a full barrier on x86) \
             keeps its accesses from overlapping likewise. The unchained row shows what overlap \
             would buy. Each op draws its \
             record (or entry) at random, from indices drawn untimed before each chunk of 256. \
             The six are measured interleaved, one after the other in each of {} runs, \
             medians reported, so the ratios compare costs taken under the same load. The \
             insert's records are removed again untimed; each removed record is re-inserted \
             untimed (live stays N), at least N removes per run so the removes include \
             compactions ({} in {} removes).\n",
            thousands(a.live),
            human_bytes(a.footprint as f64),
            b.runs,
            a.compactions,
            thousands(a.removes)
        );
        let _ = writeln!(w, "| operation | per op | / limit | / bare pair |\n|---|---:|---:|---:|");
        for (_, what, x) in a.rows() {
            let _ = writeln!(
                w,
                "| {what} | {} | {} | {} |",
                fmt_ns(x),
                fmt_ratio(x / a.limit),
                fmt_ratio(x / a.pair)
            );
        }
        let _ = writeln!(w);
    }

    // Targets.
    let mut targets: Vec<(String, String, bool)> = Vec::new();
    let c = |wl| r.get(wl, "cachem");
    if let (Some(g), Some(f)) = (c(Workload::Get), r.get(Workload::Get, "mutex")) {
        targets.push(("cachem get within 2x the bare mutex pair".into(), fmt_ratio(g / f), g / f <= 2.0));
    }
    if let (Some(i), Some(f)) = (c(Workload::Insert), r.get(Workload::Insert, "mutex")) {
        targets.push(("cachem insert within 3x the bare mutex pair".into(), fmt_ratio(i / f), i / f <= 3.0));
    }
    if let (Some(i), Some(l)) = (c(Workload::Insert), r.get(Workload::Insert, "lmdb1")) {
        targets.push((
            "cachem insert at least 20x faster than LMDB put (1 per txn)".into(),
            fmt_ratio(l / i),
            l / i >= 20.0,
        ));
    }
    if let (Some(i), Some(l)) = (c(Workload::Insert), r.get(Workload::Insert, "redis")) {
        targets.push((
            "cachem insert at least 300x faster than Redis SET".into(),
            fmt_ratio(l / i),
            l / i >= 300.0,
        ));
    }
    // Issue 14 (deferred compaction).
    for n in [100_000, 1_000_000] {
        if let (Some(c), Some(l)) = (c(Workload::Churn(n)), r.get(Workload::Churn(n), "lmdb100")) {
            targets.push((
                format!("churn {}: cachem deferred at least 5x faster than LMDB 100/txn", short_count(n)),
                fmt_ratio(l / c),
                l / c >= 5.0,
            ));
        }
    }
    for n in [1_000, 100_000, 1_000_000] {
        if let (Some(c), Some(f)) = (c(Workload::Remove(n)), r.get(Workload::Remove(n), "mutex")) {
            targets.push((
                format!("remove at {} live (amortised) within 5x of the bare mutex pair", short_count(n)),
                fmt_ratio(c / f),
                c / f <= 5.0,
            ));
        }
    }
    if let Some(c) = c(Workload::Remove(100_000)) {
        let total = c * 100_000.0;
        targets.push((
            "removing 100,000 records in random order under 50 ms".into(),
            fmt_ns(total),
            total < 50e6,
        ));
    }
    // (Format v1 against v2 needs a run of the v1 tree on the same machine:
    // see the hand-written notes below the generated section.)
    for (wl, name) in [(Workload::Insert, "insert"), (Workload::Get, "get")] {
        if let (Some(x), Some(e)) = (c(wl), r.get(wl, "cachem-eager")) {
            targets.push((
                format!("deferred {name} within 10% of eager {name} (same run)"),
                fmt_ratio(x / e),
                x <= e * 1.1,
            ));
        }
    }
    // Issue 24: the orders, the limit of a random access, the pauses.
    for o in Order::ALL {
        let Some(base) = c(Workload::Order(o, 1_000)) else { continue };
        for n in [100_000, 1_000_000] {
            let Some(x) = c(Workload::Order(o, n)) else { continue };
            if o == Order::Random && n == 1_000_000 {
                if let Some(a) = acc.filter(|a| a.live == n) {
                    targets.push((
                        "churn-random 1M within 1.5x of the limit of a random access".into(),
                        fmt_ratio(x / a.limit),
                        x <= 1.5 * a.limit,
                    ));
                }
                continue;
            }
            targets.push((
                format!("churn-{} {} within 1.5x of churn-{} 1k", o.key(), short_count(n), o.key()),
                fmt_ratio(x / base),
                x <= 1.5 * base,
            ));
        }
    }
    for o in [Order::Lifo, Order::Fifo] {
        for n in [1_000, 100_000, 1_000_000] {
            if let (Some(x), Some(i)) = (c(Workload::Order(o, n)), lock_insert) {
                targets.push((
                    format!("churn-{} {} within 2x of lock + insert 64 B", o.key(), short_count(n)),
                    fmt_ratio(x / i),
                    x <= 2.0 * i,
                ));
            }
        }
    }
    for n in [100_000, 1_000_000] {
        let wl = Workload::Order(Order::Random, n);
        if let (Some(x), Some(l)) = (c(wl), r.get(wl, "lmdb100")) {
            targets.push((
                format!("churn-random {}: at least 5x faster than LMDB 100/txn", short_count(n)),
                fmt_ratio(l / x),
                l / x >= 5.0,
            ));
        }
    }
    if let Some(a) = acc {
        let at = short_count(a.live);
        targets.push((
            format!("optimistic get at {at} within 1.5x of the limit of a random access"),
            fmt_ratio(a.optimistic_get / a.limit),
            a.optimistic_get <= 1.5 * a.limit,
        ));
        targets.push((
            format!("locked get at {at} within the bare pair + the limit"),
            format!("{} vs {}", fmt_ns(a.locked_get), fmt_ns(a.pair + a.limit)),
            a.locked_get <= a.pair + a.limit,
        ));
        targets.push((
            format!("random remove at {at} within 2x of the limit"),
            fmt_ratio(a.remove / a.limit),
            a.remove <= 2.0 * a.limit,
        ));
    }
    for l in lat {
        if systems[l.system].key == "cachem" {
            targets.push((
                format!(
                    "deferred churn at {} live: max per op under 1 ms, over {} compactions",
                    short_count(l.live),
                    l.compactions.unwrap_or(0)
                ),
                fmt_ns(l.max),
                l.max < 1e6,
            ));
        }
    }
    if let Some(ci) = systems.iter().position(|s| s.key == "cachem") {
        let best_lmdb = two
            .iter()
            .filter(|t| t.live == 1_000_000 && t.error.is_none())
            .filter(|t| matches!(systems[t.system].key, "lmdb1" | "lmdb100"))
            .map(|t| t.a.min(t.b))
            .fold(f64::NAN, f64::max);
        if let Some(t) = two.iter().find(|t| t.system == ci && t.live == 1_000_000 && t.error.is_none()) {
            let worst = t.a.min(t.b);
            targets.push((
                "two processes churning at 1M live: each faster than the best LMDB row's slower process"
                    .into(),
                format!("{} vs {} ops/s", fmt_ops(worst), fmt_ops(best_lmdb)),
                worst > best_lmdb,
            ));
        }
    }
    for p in points {
        targets.push((
            format!(
                "eager remove within 1.3x of memmove of the same tail, {} live",
                human_bytes(p.live_bytes as f64)
            ),
            fmt_ratio(p.ratio),
            p.ratio <= 1.3,
        ));
    }
    if !targets.is_empty() {
        let _ = writeln!(w, "### Targets\n");
        let _ = writeln!(w, "| target | measured | |\n|---|---:|---|");
        for (t, m, ok) in &targets {
            let _ = writeln!(w, "| {t} | {m} | {} |", if *ok { "met" } else { "**missed**" });
        }
        let _ = writeln!(w);
    }

    // Remove cost.
    if !points.is_empty() {
        let _ = writeln!(w, "### Remove cost against region size\n");
        let _ = writeln!(
            w,
            "An `Eager` region is filled with 64-byte records (72 bytes each in the block section) up to \
             the live size; then, per timed op, `lock()` + `remove` of a record at a random \
             position + unlock (the record is re-inserted untimed, so the size stays). Next to it, \
             a raw `copy_within` (memmove) on a plain `Vec` of the same size, moving the same \
             tail bytes (everything after the removed block) by the same 72 bytes, for the same \
             sequence of positions. The same loop on a `Deferred` region (room for a third more \
             records than live; at least as many removes per run as records, so each run spans \
             several compactions: the figure is amortised), and on LMDB (one delete per write \
             transaction, the re-insert untimed). Times are medians over {} runs of the mean per \
             remove; each has the cost of an empty timer read subtracted. The ratio is the median \
             of the per-run ratios (eager / memmove).\n",
            b.runs
        );
        let _ = writeln!(w, "![remove cost against live data, log-log]({svg})\n");
        let _ = writeln!(
            w,
            "| live data | records | eager removes timed | mean tail moved | cachem eager | raw memmove | memmove speed | ratio | cachem deferred | deferred removes (compactions) | LMDB 1/txn |\n\
             |---|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|"
        );
        for p in points {
            let _ = writeln!(
                w,
                "| {} | {} | {} | {} | {} | {} | {:.1} GB/s | {} | {} | {} ({}) | {} |",
                human_bytes(p.live_bytes as f64),
                thousands(p.records),
                thousands(p.removes),
                human_bytes(p.mean_tail),
                fmt_ns(p.cachem_us * 1e3),
                fmt_ns(p.memmove_us * 1e3),
                p.mean_tail / (p.memmove_us * 1e3),
                fmt_ratio(p.ratio),
                fmt_ns(p.deferred_us * 1e3),
                thousands(p.deferred_removes),
                p.deferred_compactions,
                fmt_ns(p.lmdb_us * 1e3)
            );
        }
        let _ = writeln!(w);
    }

    // Latency.
    if !lat.is_empty() {
        let _ = writeln!(w, "### Latency per operation\n");
        let (dl, ol) = (crate::latency_run(b.quick, "cachem"), crate::latency_run(b.quick, "lmdb1"));
        let _ = writeln!(
            w,
            "The churn mix at {} live records, each op timed alone (`Instant` around one \
             lock + op + unlock, or one LMDB transaction). cachem deferred runs until at least \
             {} ops were timed and {} compactions ran in the timed window (at most {} ops or \
             {:.0} s); cachem eager (every remove compacts) and LMDB run {} ops or {:.0} s. \
             Under `Deferred` the tail is the compactions: one starts when the dead bytes pass \
             half of the block section (~N removes, ~4N ops of the mix) and, since format 4, \
             runs in steps of at most 256 KiB moved (16,384 blocks examined) per lock hold, \
             resumed by the next mutations (docs/design.md); the count is of compactions \
             completed in the window.\n",
            short_count(lat[0].live),
            thousands(dl.min_ops),
            dl.min_compactions,
            thousands(dl.max_ops),
            dl.max_secs,
            thousands(ol.min_ops),
            ol.max_secs
        );
        let _ = writeln!(w, "![latency per op, log]({lat_svg})\n");
        let _ = writeln!(
            w,
            "| system | ops timed | p50 | p99 | p99.9 | max | ops over 1 ms | compactions in the window |\n|---|---:|---:|---:|---:|---:|---:|---:|"
        );
        for l in lat {
            let _ = writeln!(
                w,
                "| {} | {} | {} | {} | {} | {} | {} | {} |",
                systems[l.system].label,
                thousands(l.ops),
                fmt_ns(l.p50),
                fmt_ns(l.p99),
                fmt_ns(l.p999),
                fmt_ns(l.max),
                thousands(l.over_1ms),
                l.compactions.map_or("n/a".into(), thousands_u64)
            );
        }
        let _ = writeln!(w);
    }

    // Two processes.
    if !two.is_empty() {
        let _ = writeln!(w, "### Two processes at once\n");
        let _ = writeln!(
            w,
            "The churn mix in two processes at the same time on one store: `live` records in all, \
             each process working on its own half (its own records, or its own keys). A second \
             process is the bench binary re-executed; both start at a barrier and run {:.1} s; \
             ops/s per process (ops over the time spent in the store's calls), median of {} runs. \
             The floor row is lock + unlock pairs.\n",
            b.two_proc_secs, b.two_proc_runs
        );
        let _ = writeln!(
            w,
            "| system | live | process A | process B | per op, A | per op, B |\n|---|---:|---:|---:|---:|---:|"
        );
        for t in two {
            let label = systems[t.system].label;
            if let Some(e) = &t.error {
                let _ = writeln!(w, "| {label} | {} | failed: {e} | | | |", short_count(t.live));
                continue;
            }
            let _ = writeln!(
                w,
                "| {label} | {} | {} ops/s | {} ops/s | {} | {} |",
                short_count(t.live),
                fmt_ops(t.a),
                fmt_ops(t.b),
                fmt_ns(1e9 / t.a),
                fmt_ns(1e9 / t.b)
            );
        }
        let _ = writeln!(w);
    }
    s.trim_end().to_string()
}

/// Replaces the marked section of `path` (or appends it, with its
/// markers, at the end).
pub fn write_section(path: &Path, body: &str) -> std::io::Result<()> {
    let old = std::fs::read_to_string(path)?;
    let section = format!("{BEGIN}\n{body}\n{END}");
    let new = match (old.find(BEGIN), old.find(END)) {
        (Some(b), Some(e)) if e > b => format!("{}{section}{}", &old[..b], &old[e + END.len()..]),
        _ => format!("{}\n\n{section}\n", old.trim_end()),
    };
    std::fs::write(path, new)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn section_is_appended_then_replaced() {
        let p = std::env::temp_dir().join(format!("cachem-bench-report-{}.md", std::process::id()));
        std::fs::write(&p, "# B\n\ntext\n").unwrap();
        write_section(&p, "one").unwrap();
        let a = std::fs::read_to_string(&p).unwrap();
        assert_eq!(a, format!("# B\n\ntext\n\n{BEGIN}\none\n{END}\n"));
        std::fs::write(&p, format!("{a}\nafter\n")).unwrap();
        write_section(&p, "two").unwrap();
        let b = std::fs::read_to_string(&p).unwrap();
        assert_eq!(b, format!("# B\n\ntext\n\n{BEGIN}\ntwo\n{END}\n\nafter\n"));
        let _ = std::fs::remove_file(&p);
    }

    #[test]
    fn formats() {
        assert_eq!(fmt_ns(21.74), "21.7 ns");
        assert_eq!(fmt_ns(1530.0), "1.53 µs");
        assert_eq!(fmt_ns(2.5e6), "2.50 ms");
        assert_eq!(fmt_ratio(0.01), "1/100");
        assert_eq!(fmt_ratio(0.5), "1/2.0");
        assert_eq!(thousands(1_234_567), "1,234,567");
        assert_eq!(thousands(910), "910");
        assert_eq!(short_count(1_000_000), "1M");
        assert!(utc_now().ends_with(" UTC"));
    }
}

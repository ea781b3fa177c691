//! Helpers shared by the multi-process tests: temporary directories,
//! re-running the test binary as a worker process, bounded waits.
#![allow(dead_code)]

use std::path::{Path, PathBuf};
use std::process::{Child, Command, ExitStatus, Stdio};
use std::time::{Duration, Instant};

/// The workspace root (README.md, docs/, apache/, packaging/, target/):
/// the nearest directory at or above this package's whose Cargo.toml has a
/// `[workspace]` table. These helpers serve the root package's tests and,
/// through a `#[path]` module, crates/cachem-cli's.
pub fn workspace_root() -> PathBuf {
    let here = Path::new(env!("CARGO_MANIFEST_DIR"));
    here.ancestors()
        .find(|d| {
            std::fs::read_to_string(d.join("Cargo.toml"))
                .is_ok_and(|t| t.lines().any(|l| l.trim() == "[workspace]"))
        })
        .unwrap_or_else(|| panic!("no workspace Cargo.toml at or above {}", here.display()))
        .to_path_buf()
}

/// A temporary directory removed on drop.
pub struct TempDir(pub PathBuf);

impl TempDir {
    pub fn new(tag: &str) -> TempDir {
        static N: std::sync::atomic::AtomicU32 = std::sync::atomic::AtomicU32::new(0);
        let n = N.fetch_add(1, std::sync::atomic::Ordering::SeqCst);
        let base =
            std::env::var_os("CACHEM_TEST_TMP").map(PathBuf::from).unwrap_or_else(|| "/dev/shm".into());
        let p = base.join(format!("cachem-test-{tag}-{}-{n}", std::process::id()));
        let _ = std::fs::remove_dir_all(&p);
        std::fs::create_dir_all(&p).unwrap();
        TempDir(p)
    }
    pub fn path(&self) -> &Path {
        &self.0
    }
}

impl Drop for TempDir {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.0);
    }
}

/// Runs this test binary again as a worker: the test named `entry` (which
/// must return at once unless `CACHEM_TEST_WORKER` is set) with `env`.
pub fn spawn_worker(entry: &str, env: &[(&str, String)]) -> Child {
    worker_command(entry, env).spawn().unwrap()
}

/// The command [`spawn_worker`] runs (to change its stdin, say).
pub fn worker_command(entry: &str, env: &[(&str, String)]) -> Command {
    let exe = std::env::current_exe().unwrap();
    let mut c = Command::new(exe);
    c.args([entry, "--exact", "--nocapture", "--test-threads=1", "-q"])
        .env("CACHEM_TEST_WORKER", "1")
        .env("RUST_BACKTRACE", "0")
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::inherit());
    for (k, v) in env {
        c.env(k, v);
    }
    c
}

/// True in a worker process.
pub fn is_worker() -> bool {
    std::env::var_os("CACHEM_TEST_WORKER").is_some()
}

/// Waits for `child` at most `limit`; kills it and panics on timeout.
pub fn wait_timeout(child: &mut Child, limit: Duration) -> ExitStatus {
    let end = Instant::now() + limit;
    loop {
        if let Some(st) = child.try_wait().unwrap() {
            return st;
        }
        if Instant::now() > end {
            let _ = child.kill();
            let _ = child.wait();
            panic!("process {} did not finish within {limit:?}", child.id());
        }
        std::thread::sleep(Duration::from_millis(2));
    }
}

/// Prefix of the lines a worker reports on (libtest prints its own lines).
pub const SAY: &str = "@@ ";

/// Prints a report line from a worker.
pub fn say(s: impl std::fmt::Display) {
    use std::io::Write;
    let mut o = std::io::stdout().lock();
    let _ = writeln!(o, "{SAY}{s}");
    let _ = o.flush();
}

/// The report lines of the child's stdout, read to the end (after it exited).
pub fn stdout_of(child: &mut Child) -> String {
    use std::io::Read;
    let mut s = String::new();
    if let Some(mut o) = child.stdout.take() {
        let _ = o.read_to_string(&mut s);
    }
    s.lines().filter_map(|l| l.strip_prefix(SAY)).collect::<Vec<_>>().join("\n")
}

/// Reads the next report line from the child's stdout, waiting at most
/// `limit`. Takes the child's stdout.
pub fn read_line_timeout(child: &mut Child, limit: Duration) -> String {
    use std::io::BufRead;
    let out = child.stdout.take().unwrap();
    let (tx, rx) = std::sync::mpsc::channel();
    std::thread::spawn(move || {
        let r = std::io::BufReader::new(out);
        for line in r.lines() {
            let Ok(line) = line else { break };
            if let Some(l) = line.strip_prefix(SAY) {
                let _ = tx.send(l.to_string());
            }
        }
    });
    rx.recv_timeout(limit).unwrap_or_else(|_| panic!("no line from process {} within {limit:?}", child.id()))
}

/// SIGKILL.
pub fn sigkill(child: &mut Child) {
    let _ = child.kill();
}

/// xorshift64* for test randomness without a crate.
pub struct Rng(pub u64);

impl Rng {
    pub fn seeded() -> Rng {
        let t = std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).unwrap().as_nanos() as u64;
        Rng(t ^ ((std::process::id() as u64) << 32) | 1)
    }
    pub fn next(&mut self) -> u64 {
        self.0 ^= self.0 >> 12;
        self.0 ^= self.0 << 25;
        self.0 ^= self.0 >> 27;
        self.0.wrapping_mul(0x2545_F491_4F6C_DD1D)
    }
    pub fn below(&mut self, n: u64) -> u64 {
        self.next() % n.max(1)
    }
}

/// FNV-1a, for self-checking records.
pub fn checksum(b: &[u8]) -> u64 {
    let mut h = 0xcbf2_9ce4_8422_2325u64;
    for &x in b {
        h ^= x as u64;
        h = h.wrapping_mul(0x0100_0000_01b3);
    }
    h
}

/// A self-checking record: `pid u32 | seq u32 | payload | fnv64 of the rest`.
pub fn make_record(pid: u32, seq: u32, len: usize, rng: &mut Rng) -> Vec<u8> {
    let len = len.max(16);
    let mut v = Vec::with_capacity(len);
    v.extend_from_slice(&pid.to_ne_bytes());
    v.extend_from_slice(&seq.to_ne_bytes());
    while v.len() < len - 8 {
        v.push(rng.next() as u8);
    }
    let c = checksum(&v);
    v.extend_from_slice(&c.to_ne_bytes());
    v
}

/// Checks a record made by [`make_record`].
pub fn record_ok(v: &[u8]) -> bool {
    v.len() >= 16 && checksum(&v[..v.len() - 8]).to_ne_bytes() == v[v.len() - 8..]
}

/// Path of the single-threaded `prefork` example (built on demand).
pub fn prefork_helper() -> PathBuf {
    let exe = std::env::current_exe().unwrap();
    let helper = exe.parent().unwrap().parent().unwrap().join("examples").join("prefork");
    if !helper.exists() {
        let cargo = std::env::var("CARGO").unwrap_or_else(|_| "cargo".into());
        let mut c = Command::new(cargo);
        c.args(["build", "--quiet", "--example", "prefork"]);
        if exe.to_string_lossy().contains("/release/") {
            c.arg("--release");
        }
        assert!(c.status().unwrap().success(), "building the prefork example failed");
    }
    helper
}

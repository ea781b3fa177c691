//! The region lock never waits without bound: a lock word naming a thread
//! that does not exist is recovered from (the dead-tid rule), a live holder
//! that does not let go (SIGSTOP) makes a lock with a timeout fail naming
//! it, and a damaged mutex is refused at attach. Real processes, real lock
//! words.

// The root package's test helpers (tests/common), shared with its tests.
#[path = "../../../tests/common/mod.rs"]
mod common;

use cachem::format::TRAILER_SIZE;
use cachem::{Error, OwnerId, Region, RegionOptions};
use common::*;
use std::io::{Read, Seek, SeekFrom, Write};
use std::path::Path;
use std::process::Stdio;
use std::time::Duration;

const BIN: &str = env!("CARGO_BIN_EXE_cachem");
const WAITERS: u32 = 0x8000_0000;

fn opts(dir: &Path) -> RegionOptions {
    RegionOptions { size: Some(65536), dir: Some(dir.to_path_buf()), ..Default::default() }
}

/// A tid that no thread has: the highest below pid_max without a /proc entry.
fn free_tid() -> u32 {
    let max: u32 = std::fs::read_to_string("/proc/sys/kernel/pid_max").unwrap().trim().parse().unwrap();
    (max / 2..max).rev().find(|t| !Path::new(&format!("/proc/{t}")).exists()).unwrap()
}

/// The trailer's first 4 bytes (glibc's lock word) of the region file.
fn word_at(path: &Path) -> (std::fs::File, u64) {
    let f = std::fs::OpenOptions::new().read(true).write(true).open(path).unwrap();
    let off = f.metadata().unwrap().len() - TRAILER_SIZE as u64;
    (f, off)
}

fn read_word(path: &Path) -> u32 {
    let (mut f, off) = word_at(path);
    let mut b = [0u8; 4];
    f.seek(SeekFrom::Start(off)).unwrap();
    f.read_exact(&mut b).unwrap();
    u32::from_ne_bytes(b)
}

fn write_word(path: &Path, w: u32) {
    let (mut f, off) = word_at(path);
    f.seek(SeekFrom::Start(off)).unwrap();
    f.write_all(&w.to_ne_bytes()).unwrap();
}

/// Waits (at most 10 s) until a thread sleeps on the region's lock word (a
/// waiter sets the waiters bit); false if none did.
fn someone_sleeps_on(path: &Path) -> bool {
    for _ in 0..2000 {
        if read_word(path) & WAITERS != 0 {
            return true;
        }
        std::thread::sleep(Duration::from_millis(5));
    }
    false
}

fn signal(pid: u32, sig: libc::c_int) {
    // SAFETY: kill(2) on a child this test started.
    assert_eq!(unsafe { libc::kill(pid as libc::pid_t, sig) }, 0);
}

#[test]
fn a_lock_word_naming_a_missing_thread_is_recovered() {
    let d = TempDir::new("deadtid");
    let r = Region::open("r", &opts(d.path())).unwrap();
    let keep = r.lock().unwrap().insert(OwnerId(1), b"keep").unwrap();
    let path = r.path().unwrap().to_path_buf();
    drop(r);
    // An unlocked region whose lock word names a thread nobody has (a
    // region from a pid namespace that is gone, bytes written by hand).
    let tid = free_tid();
    write_word(&path, tid);
    // Another process (the CLI) gets through, and counts a recovery.
    let mut c = std::process::Command::new(BIN)
        .args(["--dir", d.path().to_str().unwrap(), "stat", "r", "--json"])
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    let st = wait_timeout(&mut c, Duration::from_secs(30));
    let mut out = String::new();
    c.stdout.take().unwrap().read_to_string(&mut out).unwrap();
    assert!(st.success(), "{out}");
    assert!(out.contains("\"recoveries\": 1") || out.contains("\"recoveries\":1"), "{out}");
    // And the record is intact, the lock is free again.
    let r = Region::open("r", &opts(d.path())).unwrap();
    let g = r.lock().unwrap();
    assert_eq!(g.get(keep).unwrap(), b"keep");
    assert_eq!(g.status().unwrap().counters.recoveries, 1);
    g.verify().unwrap();
    drop(g);
    assert_eq!(read_word(&path), 0);
}

/// Worker: lock the region, say "locked", then release it when a line
/// arrives on stdin and say "released"; then wait to be killed.
#[test]
fn worker_hold_until_told() {
    if !is_worker() {
        return;
    }
    let dir = std::env::var("CACHEM_TEST_DIR").unwrap();
    let r = Region::open("r", &opts(Path::new(&dir))).unwrap();
    let mut g = r.lock().unwrap();
    g.insert(OwnerId(5), b"from the holder").unwrap();
    // SAFETY: gettid has no preconditions.
    let tid = unsafe { libc::gettid() };
    say(format!("locked {tid}"));
    let mut line = String::new();
    std::io::stdin().read_line(&mut line).unwrap();
    drop(g);
    say("released");
    std::thread::sleep(Duration::from_secs(60));
}

/// Worker: lock the region (no timeout) and report whether it recovered.
#[test]
fn worker_lock_once() {
    if !is_worker() {
        return;
    }
    let dir = std::env::var("CACHEM_TEST_DIR").unwrap();
    say("waiting");
    // Attaching takes the lock (it checks the region under it).
    let r = Region::open("r", &RegionOptions { dir: Some(dir.into()), ..Default::default() }).unwrap();
    let g = r.lock().unwrap();
    say(format!(
        "recovered={} recoveries={}",
        r.open_report().recovered,
        g.status().unwrap().counters.recoveries
    ));
}

/// A child killed (SIGKILL works on a stopped process too) and waited for
/// when dropped, so that a failing test leaves no stopped holder behind.
struct Reaped(std::process::Child);

impl Drop for Reaped {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

impl std::ops::Deref for Reaped {
    type Target = std::process::Child;
    fn deref(&self) -> &std::process::Child {
        &self.0
    }
}

impl std::ops::DerefMut for Reaped {
    fn deref_mut(&mut self) -> &mut std::process::Child {
        &mut self.0
    }
}

/// The report lines of a child, as they come.
fn lines(child: &mut std::process::Child) -> std::sync::mpsc::Receiver<String> {
    let (tx, rx) = std::sync::mpsc::channel();
    let out = child.stdout.take().unwrap();
    std::thread::spawn(move || {
        use std::io::BufRead;
        for l in std::io::BufReader::new(out).lines().map_while(|l| l.ok()) {
            if let Some(l) = l.strip_prefix(SAY) {
                let _ = tx.send(l.to_string());
            }
        }
    });
    rx
}

const LIMIT: Duration = Duration::from_secs(20);

fn spawn_holder(d: &TempDir) -> (Reaped, u32, std::sync::mpsc::Receiver<String>) {
    let mut h =
        worker_command("worker_hold_until_told", &[("CACHEM_TEST_DIR", d.path().display().to_string())])
            .stdin(Stdio::piped())
            .spawn()
            .unwrap();
    let rx = lines(&mut h);
    let line = rx.recv_timeout(LIMIT).expect("the holder did not lock");
    let tid = line.strip_prefix("locked ").unwrap_or_else(|| panic!("{line}")).parse().unwrap();
    (Reaped(h), tid, rx)
}

#[test]
fn a_waiter_already_sleeping_when_the_word_turns_dead_gets_the_lock() {
    let d = TempDir::new("sleeper");
    let r = Region::open("r", &opts(d.path())).unwrap();
    let path = r.path().unwrap().to_path_buf();
    let (holder, holder_tid, _) = spawn_holder(&d);
    let mut waiter =
        Reaped(spawn_worker("worker_lock_once", &[("CACHEM_TEST_DIR", d.path().display().to_string())]));
    let rx = lines(&mut waiter);
    assert_eq!(rx.recv_timeout(LIMIT).unwrap(), "waiting");
    assert!(someone_sleeps_on(&path), "the waiter never slept on the lock");
    assert_eq!(read_word(&path), holder_tid | WAITERS);
    // The holder vanishes from the word: it names a thread nobody has.
    write_word(&path, free_tid() | WAITERS);
    let line = rx.recv_timeout(Duration::from_secs(20)).expect("the sleeping waiter never got the lock");
    assert_eq!(line, "recovered=true recoveries=1");
    wait_timeout(&mut waiter, Duration::from_secs(20));
    // The old holder (alive, no longer named by the word) is killed: its
    // exit does not touch the word, which is free.
    drop(holder);
    let g = r.lock().unwrap();
    g.verify().unwrap();
    assert_eq!(g.iter_owner(OwnerId(5)).count(), 1, "the holder's completed insert stays");
}

#[test]
fn a_stopped_holder_makes_a_lock_with_a_timeout_fail_naming_it() {
    let d = TempDir::new("stopped");
    // Attached before the holder takes the lock (attaching takes it too).
    let r = Region::open("r", &opts(d.path())).unwrap();
    let (mut holder, holder_tid, said) = spawn_holder(&d);
    let pid = holder.id();
    signal(pid, libc::SIGSTOP);
    r.set_lock_timeout(Some(Duration::from_millis(300)));
    match r.lock() {
        Err(e @ Error::LockTimeout { .. }) => {
            let Error::LockTimeout { holder_pid, holder_tid: t, waited, .. } = &e else { unreachable!() };
            assert_eq!(*holder_pid, Some(pid));
            assert_eq!(*t, holder_tid);
            assert!(*waited >= Duration::from_millis(300));
            let msg = e.to_string();
            assert!(msg.contains(&format!("process {pid}")) && msg.contains("SIGSTOP"), "{msg}");
        }
        Err(e) => panic!("{e}"),
        Ok(_) => panic!("locked a region a stopped process holds"),
    }
    assert_eq!(r.lock_holder().map(|h| (h.tid, h.pid)), Some((holder_tid, Some(pid))));
    // The CLI, an operator's tool, never waits without bound either.
    let o = std::process::Command::new(BIN)
        .args(["--dir", d.path().to_str().unwrap(), "--lock-timeout", "0.3", "ls", "r"])
        .output()
        .unwrap();
    assert_eq!(o.status.code(), Some(1), "{o:?}");
    let err = String::from_utf8_lossy(&o.stderr);
    assert!(err.contains(&format!("process {pid}")), "{err}");
    // Continued and told to let go: the lock works again.
    signal(pid, libc::SIGCONT);
    holder.stdin.take().unwrap().write_all(b"go\n").unwrap();
    assert_eq!(said.recv_timeout(LIMIT).unwrap(), "released");
    let g = r.lock().unwrap();
    assert!(!g.recovered());
    assert_eq!(g.iter_owner(OwnerId(5)).count(), 1);
    drop(g);
    assert_eq!(r.lock_holder(), None);
}

#[test]
fn a_damaged_mutex_kind_is_refused_at_attach() {
    let d = TempDir::new("kind");
    let path = Region::open("r", &opts(d.path())).unwrap().path().unwrap().to_path_buf();
    let (mut f, off) = word_at(&path);
    // A zeroed mutex (lost its robust and process-shared attributes).
    f.seek(SeekFrom::Start(off)).unwrap();
    f.write_all(&[0u8; 40]).unwrap();
    drop(f);
    match Region::open("r", &opts(d.path())) {
        Err(e @ Error::Corrupt { field: "trailer mutex kind", .. }) => {
            let msg = e.to_string();
            assert!(msg.contains("trailer mutex kind: 0, expected "), "{msg}");
            assert!(msg.contains("destroy"), "{msg}");
        }
        other => panic!("{other:?}"),
    }
    // The CLI says the same, and does not hang.
    let o = std::process::Command::new(BIN)
        .args(["--dir", d.path().to_str().unwrap(), "stat", "r"])
        .output()
        .unwrap();
    assert!(!o.status.success());
    assert!(String::from_utf8_lossy(&o.stderr).contains("trailer mutex kind"), "{o:?}");
}

/// `cachem stat` waits for a held lock (up to its timeout) and reports who
/// held it and how long it waited, in the picture, `--json` and the
/// Prometheus text.
#[test]
fn stat_shows_who_holds_the_lock_and_how_long_it_waited() {
    let d = TempDir::new("statholder");
    let r = Region::open("r", &opts(d.path())).unwrap();
    let path = r.path().unwrap().to_path_buf();
    let (mut holder, holder_tid, said) = spawn_holder(&d);
    let pid = holder.id();
    let stat = |args: &[&str]| {
        std::process::Command::new(BIN)
            .args(["--dir", d.path().to_str().unwrap(), "stat", "r"])
            .args(args)
            .stdout(Stdio::piped())
            .spawn()
            .unwrap()
    };
    let mut s = Reaped(stat(&["--json"]));
    // Until stat sleeps on the word, then let go.
    assert!(someone_sleeps_on(&path), "stat never waited for the lock");
    holder.stdin.take().unwrap().write_all(b"go\n").unwrap();
    assert_eq!(said.recv_timeout(LIMIT).unwrap(), "released");
    assert!(wait_timeout(&mut s, LIMIT).success());
    let mut out = String::new();
    s.stdout.take().unwrap().read_to_string(&mut out).unwrap();
    let v: serde_json::Value = serde_json::from_str(&out).unwrap();
    assert_eq!(v["lock_wait"]["holder_pid"], pid, "{out}");
    assert_eq!(v["lock_wait"]["holder_tid"], holder_tid, "{out}");
    assert!(v["lock_wait"]["waited_ms"].as_f64().unwrap() > 0.0, "{out}");
    // Free now: the picture and the Prometheus text say so.
    let mut s = Reaped(stat(&[]));
    assert!(wait_timeout(&mut s, LIMIT).success());
    let mut out = String::new();
    s.stdout.take().unwrap().read_to_string(&mut out).unwrap();
    assert!(out.lines().any(|l| l.starts_with("lock      free")), "{out}");
    let mut s = Reaped(stat(&["--format", "prometheus"]));
    assert!(wait_timeout(&mut s, LIMIT).success());
    let mut out = String::new();
    s.stdout.take().unwrap().read_to_string(&mut out).unwrap();
    assert!(out.contains("cachem_lock_waited_microseconds{"), "{out}");
    assert!(!out.contains("cachem_lock_holder{"), "{out}");
}

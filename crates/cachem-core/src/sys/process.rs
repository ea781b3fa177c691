//! Facts about processes, read from /proc: the boot id, pid namespaces,
//! process start times, and whether a (pid, start time) is still alive.

use std::sync::atomic::{AtomicU64, Ordering};

/// `/proc/sys/kernel/random/boot_id` as 16 bytes, or zeros if unreadable.
pub fn boot_id() -> [u8; 16] {
    let mut out = [0u8; 16];
    if let Ok(s) = std::fs::read_to_string("/proc/sys/kernel/random/boot_id") {
        let hex: Vec<u8> = s.trim().bytes().filter(|b| *b != b'-').collect();
        if hex.len() == 32 {
            for (i, pair) in hex.chunks(2).enumerate() {
                let v = std::str::from_utf8(pair).ok().and_then(|p| u8::from_str_radix(p, 16).ok());
                out[i] = v.unwrap_or(0);
            }
        }
    }
    out
}

/// Inode of `/proc/<pid>/ns/pid` (`self` for this process), 0 if unknown.
pub fn pid_namespace(pid: Option<u32>) -> u64 {
    use std::os::unix::fs::MetadataExt;
    let p = match pid {
        Some(p) => format!("/proc/{p}/ns/pid"),
        None => "/proc/self/ns/pid".to_string(),
    };
    std::fs::metadata(p).map(|m| m.ino()).unwrap_or(0)
}

/// The process (thread group id, `Tgid` of `/proc/<tid>/status`) of thread
/// `tid`, None if no such thread is visible.
pub fn thread_group(tid: u32) -> Option<u32> {
    let status = std::fs::read_to_string(format!("/proc/{tid}/status")).ok()?;
    status.lines().find_map(|l| l.strip_prefix("Tgid:")).and_then(|v| v.trim().parse().ok())
}

/// Whether thread `tid` exists (in the pid namespace of /proc): its
/// `/proc/<tid>` (which any thread id resolves, not only a process's)
/// exists and it has not ended (a zombie or dead task released its robust
/// locks already). When in doubt (an error other than "not found"),
/// it exists.
pub fn thread_exists(tid: u32) -> bool {
    if tid == 0 || tid > i32::MAX as u32 {
        return false;
    }
    match std::fs::read(format!("/proc/{tid}/stat")) {
        Ok(stat) => parse_stat(&stat).is_none_or(|s| s.state != b'Z' && s.state != b'X'),
        Err(e) => e.kind() != std::io::ErrorKind::NotFound,
    }
}

/// Whether /proc is the procfs of this process's pid namespace (its
/// `/proc/self` names our pid): only then does it tell which tids exist.
pub fn proc_is_ours() -> bool {
    std::fs::read_link("/proc/self").ok().and_then(|p| p.to_str()?.parse::<u32>().ok())
        == Some(std::process::id())
}

/// Start time (field 22 of `/proc/<pid>/stat`, clock ticks since boot) of
/// `pid`, or None if there is no such process.
pub fn start_time(pid: u32) -> Option<u64> {
    let stat = std::fs::read(format!("/proc/{pid}/stat")).ok()?;
    parse_start_time(&stat)
}

/// Parses field 22 out of a `/proc/<pid>/stat` line. The command name (field
/// 2) may contain spaces and parentheses, so fields are counted from after
/// the last `)`.
pub fn parse_start_time(stat: &[u8]) -> Option<u64> {
    parse_state_and_start(stat).map(|(_, t)| t)
}

/// Parses the state (field 3) and start time (field 22) out of a
/// `/proc/<pid>/stat` line.
pub fn parse_state_and_start(stat: &[u8]) -> Option<(u8, u64)> {
    parse_stat(stat).map(|s| (s.state, s.start_time))
}

/// The fields of `/proc/<pid>/stat` that liveness needs.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Stat {
    /// Field 3: `R`, `S`, `Z`, `X`, ...
    pub state: u8,
    /// Field 9: the kernel's `PF_*` task flags.
    pub flags: u64,
    /// Field 22: start time in clock ticks since boot.
    pub start_time: u64,
}

/// The kernel's `PF_EXITING` task flag: the task has started to exit
/// (a fatal signal such as SIGKILL, or `exit`). A task sets it before its
/// robust futexes are released, so when the lock holder is the main thread
/// (whose flags `/proc/<pid>/stat` shows) the next locker, woken with
/// `EOWNERDEAD`, always sees it. When another thread held the lock, it may
/// release it before the main thread sets the flag: the process then still
/// looks alive, and its records wait for a later reap (never the other way
/// round: a live process is never judged dead by this flag, since a live
/// main thread does not have it).
pub const PF_EXITING: u64 = 0x4;

/// Parses a `/proc/<pid>/stat` line. The command name (field 2) may contain
/// spaces and parentheses, so fields are counted from after the last `)`.
pub fn parse_stat(stat: &[u8]) -> Option<Stat> {
    let close = stat.iter().rposition(|&b| b == b')')?;
    let rest = std::str::from_utf8(&stat[close + 1..]).ok()?;
    let mut fields = rest.split_ascii_whitespace();
    let state = *fields.next()?.as_bytes().first()?;
    // Fields 4..8 (ppid, pgrp, session, tty, tpgid), then 9 (flags).
    let flags = fields.nth(5)?.parse().ok()?;
    // Field 22 is 13 fields after field 9.
    let start_time = fields.nth(12)?.parse().ok()?;
    Some(Stat { state, flags, start_time })
}

/// A task that has ended or is ending.
fn ending(s: &Stat) -> bool {
    s.state == b'Z' || s.state == b'X' || s.flags & PF_EXITING != 0
}

/// Liveness of a (pid, start time) pair.
///
/// With /proc: alive iff `/proc/<pid>/stat` exists, its start time matches
/// (a recycled pid has another start time; 0 = unknown matches any), and the
/// process is not ending: not a zombie (`Z`) or dead (`X`), and not exiting
/// (`PF_EXITING`). A process killed by SIGKILL is dead for cachem from the
/// moment it starts to exit — the kernel releases its robust mutex while
/// /proc still shows it running, and a waiter that takes the lock at that
/// instant must purge its records. A killed child whose parent has not
/// waited for it yet is dead too. If the main thread has ended while other
/// threads run on (`pthread_exit` in `main`), the other threads decide.
///
/// When `/proc/<pid>` cannot be read (no /proc, or `hidepid` hides other
/// users' processes), `kill(pid, 0)` decides: ESRCH is dead, success or
/// EPERM is alive; that fallback cannot tell a recycled pid apart.
///
/// Start times are per time namespace (the kernel shows a task's start time
/// shifted by the reader's boot-time offset): a start time that does not
/// match means a recycled pid only when the process at `pid` is in this
/// process's time namespace. Otherwise (or when its time namespace cannot
/// be read) it is not judged dead: see [`liveness`].
pub fn is_alive(pid: u32, start: u64) -> bool {
    liveness(pid, start) != Liveness::Dead
}

/// What [`liveness`] found.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Liveness {
    Alive,
    Dead,
    /// Cannot tell: the start time does not match, but the process at the
    /// pid may have recorded it in another time namespace. Never reaped.
    Unknown(Unsure),
}

/// Why [`liveness`] cannot tell.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Unsure {
    /// The process at the pid is in another time namespace than this one
    /// (start times are per time namespace).
    OtherTimeNamespace,
    /// Its `/proc/<pid>/ns/time` cannot be read (another user's process,
    /// and this process is not root).
    TimeNamespaceUnreadable,
}

impl std::fmt::Display for Unsure {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(match self {
            Unsure::OtherTimeNamespace => {
                "it runs in another time namespace, where start times differ: reap from its time namespace"
            }
            Unsure::TimeNamespaceUnreadable => {
                "its time namespace cannot be read (/proc/<pid>/ns/time): reap as its user or as root"
            }
        })
    }
}

/// Liveness of a (pid, start time) pair: [`is_alive`], telling apart a
/// process that cannot be judged from here (another time namespace).
pub fn liveness(pid: u32, start: u64) -> Liveness {
    if pid == 0 || pid > i32::MAX as u32 {
        return Liveness::Dead;
    }
    let alive = |a: bool| if a { Liveness::Alive } else { Liveness::Dead };
    match std::fs::read(format!("/proc/{pid}/stat")) {
        Ok(stat) => match parse_stat(&stat) {
            Some(s) if start != 0 && s.start_time != start => other_time_namespace(pid),
            Some(s) if ending(&s) => alive(other_thread_runs(pid)),
            _ => Liveness::Alive,
        },
        Err(_) => alive(kill_probe(pid)),
    }
}

/// Inode of `/proc/<pid>/ns/time` (`self` for this process): Ok(None) if
/// the kernel has no time namespaces (or no such process), Err if it
/// cannot be read.
pub fn time_namespace(pid: Option<u32>) -> std::io::Result<Option<u64>> {
    use std::os::unix::fs::MetadataExt;
    let p = match pid {
        Some(p) => format!("/proc/{p}/ns/time"),
        None => "/proc/self/ns/time".to_string(),
    };
    match std::fs::metadata(p) {
        Ok(m) => Ok(Some(m.ino())),
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(None),
        Err(e) => Err(e),
    }
}

/// The start time recorded for `pid` does not match the one this process
/// reads: a recycled pid (dead) if the process at `pid` is in our time
/// namespace (or the kernel has none), else [`Liveness::Unknown`].
#[cold]
fn other_time_namespace(pid: u32) -> Liveness {
    match (time_namespace(None), time_namespace(Some(pid))) {
        // No time namespaces here, or the process ended meanwhile.
        (Ok(None), _) | (_, Ok(None)) => Liveness::Dead,
        (Ok(Some(ours)), Ok(Some(theirs))) if ours == theirs => Liveness::Dead,
        (Ok(Some(_)), Ok(Some(_))) => Liveness::Unknown(Unsure::OtherTimeNamespace),
        _ => Liveness::Unknown(Unsure::TimeNamespaceUnreadable),
    }
}

/// Whether process `pid` is being killed: `SIGKILL` is pending for the
/// whole process (`ShdPnd` of `/proc/<pid>/status`, set by `kill(pid,
/// SIGKILL)` before any of its threads starts to exit and kept until the
/// last one is gone) or for its main thread (`SigPnd`: every thread gets
/// it in a group exit, e.g. after a fatal signal sent to one thread).
///
/// [`is_alive`] reads the main thread's state only: when another thread
/// held the region lock, it released it (the kernel's robust-list cleanup)
/// possibly before the main thread showed `PF_EXITING`, so the reap after
/// `EOWNERDEAD` asks this too.
pub fn being_killed(pid: u32) -> bool {
    const SIGKILL_BIT: u64 = 1 << (libc::SIGKILL - 1);
    let Ok(status) = std::fs::read_to_string(format!("/proc/{pid}/status")) else {
        return false;
    };
    status.lines().any(|l| {
        let mask = l.strip_prefix("ShdPnd:").or_else(|| l.strip_prefix("SigPnd:"));
        mask.and_then(|m| u64::from_str_radix(m.trim(), 16).ok()).is_some_and(|m| m & SIGKILL_BIT != 0)
    })
}

/// Whether a thread other than the main one of `pid` is running and not
/// exiting (the main thread has ended or is ending).
fn other_thread_runs(pid: u32) -> bool {
    // When in doubt, alive: judging a live process dead loses its records.
    let rd = match std::fs::read_dir(format!("/proc/{pid}/task")) {
        Ok(rd) => rd,
        Err(e) => return e.kind() != std::io::ErrorKind::NotFound,
    };
    rd.flatten().any(|e| {
        let tid = e.file_name();
        if tid.to_str() == Some(&pid.to_string()) {
            return false;
        }
        match std::fs::read(e.path().join("stat")) {
            Ok(b) => parse_stat(&b).is_none_or(|s| !ending(&s)),
            // A thread that ended between the listing and the read.
            Err(e) => e.kind() != std::io::ErrorKind::NotFound,
        }
    })
}

fn kill_probe(pid: u32) -> bool {
    // SAFETY: kill with signal 0 sends nothing; it only checks existence.
    let r = unsafe { libc::kill(pid as libc::pid_t, 0) };
    r == 0 || std::io::Error::last_os_error().raw_os_error() == Some(libc::EPERM)
}

static PID: AtomicU64 = AtomicU64::new(0);
static START: AtomicU64 = AtomicU64::new(0);
/// 0: the fork handler of [`me`] is not registered, 1: a thread is
/// registering it, 2: registered. Not a `Once`: a child forked while
/// another thread ran a `Once` initialiser would wait for it forever.
static ATFORK: std::sync::atomic::AtomicU8 = std::sync::atomic::AtomicU8::new(0);

/// The pid [`my_pid_namespace`] last read the namespace for, and that
/// namespace (`NS` is stored before `NS_PID`, Release).
static NS_PID: AtomicU64 = AtomicU64::new(0);
static NS: AtomicU64 = AtomicU64::new(0);

/// This process's pid namespace (the inode of `/proc/self/ns/pid`, 0 if
/// unknown), read once per pid: a child forked into another namespace
/// (`unshare(CLONE_NEWPID)` then `fork`) has another pid, so it reads its
/// own. No lock: a child forked at any moment finds a consistent pair.
pub fn my_pid_namespace() -> u64 {
    let pid = me().0 as u64;
    if NS_PID.load(Ordering::Acquire) == pid {
        return NS.load(Ordering::Relaxed);
    }
    let ns = pid_namespace(None);
    NS_PID.store(0, Ordering::Relaxed);
    NS.store(ns, Ordering::Relaxed);
    NS_PID.store(pid, Ordering::Release);
    ns
}

extern "C" fn forget_after_fork() {
    PID.store(0, Ordering::Relaxed);
}

/// This process's pid and start time, cached (and refreshed in a child
/// after `fork`, through a `pthread_atfork` handler).
pub fn me() -> (u32, u64) {
    // START is stored before PID (Release) and read after it (Acquire), so
    // a thread that sees the pid also sees its start time.
    let pid = PID.load(Ordering::Acquire);
    if pid != 0 {
        return (pid as u32, START.load(Ordering::Relaxed));
    }
    match ATFORK.compare_exchange(0, 1, Ordering::AcqRel, Ordering::Acquire) {
        Ok(_) => {
            // SAFETY: registers a handler that only stores to an atomic,
            // which is async-signal-safe and valid in the child after fork.
            unsafe {
                libc::pthread_atfork(None, None, Some(forget_after_fork));
            }
            ATFORK.store(2, Ordering::Release);
        }
        Err(2) => {}
        Err(_) => {
            // Another thread is registering (or was, in the parent this
            // child was forked from): answer without caching, since no
            // handler would forget the cache in a child forked now.
            let pid = std::process::id();
            return (pid, start_time(pid).unwrap_or(0));
        }
    }
    let pid = std::process::id();
    let start = start_time(pid).unwrap_or(0);
    START.store(start, Ordering::Relaxed);
    PID.store(pid as u64, Ordering::Release);
    (pid, start)
}

/// The effective user and group ids of this process.
pub fn effective_ids() -> (u32, u32) {
    // SAFETY: geteuid and getegid have no preconditions and cannot fail.
    unsafe { (libc::geteuid(), libc::getegid()) }
}

/// Per-process counts of open handles per region generation, so the last
/// handle a process drops can purge its process-scoped records.
///
/// The counts belong to a pid: a child forked while its parent had handles
/// open starts with none (it did not open them). They are kept under a
/// pthread mutex that a `pthread_atfork` handler takes before `fork` and
/// releases after it in both processes, clearing the child's table — so a
/// fork at any moment, from any thread, never leaves the child with a
/// half-updated table or a lock held by a thread that no longer exists.
pub mod handles {
    use std::cell::UnsafeCell;
    use std::collections::HashMap;
    use std::sync::atomic::{AtomicU8, Ordering};

    struct Table {
        lock: UnsafeCell<libc::pthread_mutex_t>,
        counts: UnsafeCell<Option<HashMap<u64, usize>>>,
    }

    // SAFETY: `counts` is only touched with `lock` held (see `with`), and
    // the mutex itself is made for sharing between threads.
    unsafe impl Sync for Table {}

    static TABLE: Table =
        Table { lock: UnsafeCell::new(libc::PTHREAD_MUTEX_INITIALIZER), counts: UnsafeCell::new(None) };
    /// 0: handlers not registered, 1: being registered, 2: registered (not
    /// a `Once`, for the reason given at `process::me`).
    static ATFORK: AtomicU8 = AtomicU8::new(0);

    extern "C" fn prepare() {
        // SAFETY: the static mutex is initialised; this thread does not hold
        // it (no code forks while inside `with`).
        unsafe { libc::pthread_mutex_lock(TABLE.lock.get()) };
    }

    extern "C" fn parent() {
        // SAFETY: `prepare` took the lock in this thread.
        unsafe { libc::pthread_mutex_unlock(TABLE.lock.get()) };
    }

    extern "C" fn child() {
        // SAFETY: `prepare` took the lock before fork, in the thread that is
        // now the child's only thread, so nobody else can touch the table.
        // The table is consistent (no one was inside `with`); the child's
        // counts start empty. Clearing keeps the allocation: no malloc.
        unsafe {
            if let Some(m) = (*TABLE.counts.get()).as_mut() {
                m.clear();
            }
            libc::pthread_mutex_unlock(TABLE.lock.get());
        }
    }

    fn with<R>(f: impl FnOnce(&mut HashMap<u64, usize>) -> R) -> R {
        match ATFORK.compare_exchange(0, 1, Ordering::AcqRel, Ordering::Acquire) {
            Ok(_) => {
                // SAFETY: registers handlers that only lock, unlock and
                // clear the table, as argued at each of them.
                unsafe { libc::pthread_atfork(Some(prepare), Some(parent), Some(child)) };
                ATFORK.store(2, Ordering::Release);
            }
            Err(2) => {}
            Err(_) => {
                // Another thread is registering: wait a little for it. In a
                // child forked meanwhile it never finishes; the registering
                // thread did not hold the table lock, so go on without.
                let end = std::time::Instant::now() + std::time::Duration::from_millis(100);
                while ATFORK.load(Ordering::Acquire) != 2 && std::time::Instant::now() < end {
                    std::thread::yield_now();
                }
            }
        }
        // SAFETY: the mutex is a static, initialised, never moved. Unlocked
        // below on every path (f cannot unwind out: the closures used here
        // only do map arithmetic; a panic would poison nothing but leave
        // the mutex held, so `f` is run under catch_unwind).
        unsafe { libc::pthread_mutex_lock(TABLE.lock.get()) };
        // SAFETY: we hold the lock, so this is the only reference.
        let counts = unsafe { &mut *TABLE.counts.get() };
        let r = std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| {
            f(counts.get_or_insert_with(HashMap::new))
        }));
        // SAFETY: we hold the lock.
        unsafe { libc::pthread_mutex_unlock(TABLE.lock.get()) };
        match r {
            Ok(r) => r,
            Err(p) => std::panic::resume_unwind(p),
        }
    }

    /// Counts one more open handle of region `generation` in this process.
    pub fn opened(generation: u64) {
        with(|m| *m.entry(generation).or_default() += 1);
    }

    /// Counts one handle less; returns how many stay open in this process.
    /// Only for a handle this process opened (one inherited through `fork`
    /// was never counted in this process).
    pub fn closed(generation: u64) -> usize {
        with(|m| match m.get_mut(&generation) {
            Some(n) if *n > 1 => {
                *n -= 1;
                *n
            }
            _ => {
                m.remove(&generation);
                0
            }
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn start_time_survives_odd_command_names() {
        let line = b"1234 (a) b (c) d) S 1 1234 1234 0 -1 4194560 100 0 0 0 1 2 0 0 20 0 1 0 987654 1000 10";
        assert_eq!(parse_start_time(line), Some(987654));
        assert_eq!(parse_start_time(b"garbage"), None);
        assert_eq!(parse_start_time(b"1 (x) S 1"), None);
        assert_eq!(parse_state_and_start(line), Some((b'S', 987654)));
        assert_eq!(parse_stat(line), Some(Stat { state: b'S', flags: 4194560, start_time: 987654 }));
        let exiting = b"77 (x y) R 1 77 77 0 -1 4194564 0 0 0 0 0 0 0 0 20 0 1 0 5555 0 0";
        let s = parse_stat(exiting).unwrap();
        assert!(ending(&s) && s.start_time == 5555);
    }

    #[test]
    fn a_zombie_is_dead() {
        // SAFETY: fork in a test process: the child only calls _exit.
        let pid = unsafe { libc::fork() };
        if pid == 0 {
            // SAFETY: _exit is async-signal-safe and ends the child at once.
            unsafe { libc::_exit(0) };
        }
        let start = start_time(pid as u32).unwrap_or(0);
        // Not waited for yet: a zombie, which is dead for cachem.
        let deadline = std::time::Instant::now() + std::time::Duration::from_secs(10);
        while is_alive(pid as u32, start) {
            assert!(std::time::Instant::now() < deadline, "the exited child still looks alive");
            std::thread::sleep(std::time::Duration::from_millis(1));
        }
        let mut status = 0;
        // SAFETY: reaps our own child; writes into a local.
        unsafe { libc::waitpid(pid, &mut status, 0) };
    }

    #[test]
    fn this_process_is_alive_and_a_forged_start_is_not() {
        let (pid, start) = me();
        assert_eq!(pid, std::process::id());
        assert!(start > 0);
        assert!(is_alive(pid, start));
        assert!(!is_alive(pid, start + 1));
        assert!(!is_alive(0, 0));
        assert_ne!(boot_id(), [0u8; 16]);
        assert_ne!(pid_namespace(None), 0);
    }
}

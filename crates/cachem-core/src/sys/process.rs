//! Facts about processes, read from /proc: the boot id, pid namespaces,
//! process start times, and whether a (pid, start time) is still alive.

use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Once;

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
    let close = stat.iter().rposition(|&b| b == b')')?;
    let rest = std::str::from_utf8(&stat[close + 1..]).ok()?;
    let mut fields = rest.split_ascii_whitespace();
    let state = *fields.next()?.as_bytes().first()?;
    let start = fields.nth(18)?.parse().ok()?;
    Some((state, start))
}

/// Liveness of a (pid, start time) pair.
///
/// With /proc: alive iff `/proc/<pid>/stat` exists, its start time matches
/// (a recycled pid has another start time; 0 = unknown matches any), and the
/// process is not a zombie (`Z`) or dead (`X`): a killed child whose parent
/// has not waited for it yet is dead for cachem. When `/proc/<pid>` cannot be
/// read (no /proc, or `hidepid` hides other users' processes), `kill(pid, 0)`
/// decides: ESRCH is dead, success or EPERM is alive; that fallback cannot
/// tell a recycled pid apart.
pub fn is_alive(pid: u32, start: u64) -> bool {
    if pid == 0 || pid > i32::MAX as u32 {
        return false;
    }
    match std::fs::read(format!("/proc/{pid}/stat")) {
        Ok(stat) => match parse_state_and_start(&stat) {
            Some((state, t)) => (start == 0 || t == start) && state != b'Z' && state != b'X',
            None => true,
        },
        Err(_) => kill_probe(pid),
    }
}

fn kill_probe(pid: u32) -> bool {
    // SAFETY: kill with signal 0 sends nothing; it only checks existence.
    let r = unsafe { libc::kill(pid as libc::pid_t, 0) };
    r == 0 || std::io::Error::last_os_error().raw_os_error() == Some(libc::EPERM)
}

static PID: AtomicU64 = AtomicU64::new(0);
static START: AtomicU64 = AtomicU64::new(0);
static ATFORK: Once = Once::new();

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
    ATFORK.call_once(|| {
        // SAFETY: registers a handler that only stores to an atomic, which
        // is async-signal-safe and valid in the child after fork.
        unsafe {
            libc::pthread_atfork(None, None, Some(forget_after_fork));
        }
    });
    let pid = std::process::id();
    let start = start_time(pid).unwrap_or(0);
    START.store(start, Ordering::Relaxed);
    PID.store(pid as u64, Ordering::Release);
    (pid, start)
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

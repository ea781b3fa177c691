//! Running one piece of work in a short-lived forked child.
//!
//! The id registry (sled) keeps process-global state — a thread pool whose
//! counters are statics, a process-wide lock — that a forked child inherits
//! in a state it cannot use (threads do not survive `fork`). So no process
//! that may fork ever runs sled itself: each registry cycle runs here, in a
//! child that does the work, writes its answer into a pipe and `_exit`s.
//! The caller's memory, threads and statics are never touched by sled.
//!
//! After `fork` in a multi-threaded caller, the child holds copies of locks
//! other threads held at that instant. The child therefore:
//! - never touches stdout/stderr, the environment, loggers or the panic
//!   hook (the work closure must not either);
//! - restores default signal dispositions and an empty signal mask, asks the
//!   kernel to SIGKILL it when the forking thread dies
//!   (`PR_SET_PDEATHSIG`), and ends with `_exit` (no atexit handlers, no
//!   flushing of the caller's buffered stdout);
//! - catches panics (`catch_unwind`) so nothing unwinds into the caller's
//!   code.
//!
//! The answer is a fixed header (magic, kind, length) and a payload, read
//! until complete rather than until EOF: a sibling thread forking at the
//! same moment may hold the pipe's write end open. Every wait is bounded:
//! after `timeout` the child is killed and reaped, and `ECHILD` (a host
//! that reaps children itself) is accepted.

use std::io;
use std::os::fd::{AsRawFd, FromRawFd, OwnedFd};
use std::panic::{catch_unwind, AssertUnwindSafe};
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::{Duration, Instant};

const MAGIC: u32 = 0x4341_4348; // "CACH"
const KIND_OK: u32 = 0;
const KIND_PANIC: u32 = 1;
const HEADER: usize = 16;
/// Larger answers are refused (the registry's are a few KiB at most).
const MAX_ANSWER: u64 = 256 << 20;

/// Set once a thread has been spawned in this process (see below). Not a
/// `Once`: a child forked while another thread ran a `Once` initialiser
/// would wait for it forever; doing the spawn twice is harmless.
static PREPARED: AtomicBool = AtomicBool::new(false);

/// Runs `work` in a forked child and returns the bytes it produced.
///
/// # Errors
///
/// `TimedOut` if the child did not answer within `timeout` (it is killed),
/// `Other` if the child panicked (with the panic message) or died without a
/// complete answer, and the OS error if `pipe2` or `fork` failed.
pub fn run_in_child<F: FnOnce() -> Vec<u8>>(work: F, timeout: Duration) -> io::Result<Vec<u8>> {
    if !PREPARED.load(Ordering::Acquire) {
        // Spawning (and joining) one thread makes std read and cache
        // RUST_MIN_STACK now, in the caller, so a thread spawned in a child
        // never needs std's environment lock, which another thread of the
        // caller may hold at fork time. A failed spawn (no threads left)
        // only loses that precaution.
        if let Ok(t) = std::thread::Builder::new().spawn(|| {}) {
            let _ = t.join();
        }
        PREPARED.store(true, Ordering::Release);
    }
    let mut fds = [0 as libc::c_int; 2];
    // SAFETY: pipe2 writes two descriptors into the 2-element array.
    if unsafe { libc::pipe2(fds.as_mut_ptr(), libc::O_CLOEXEC) } != 0 {
        return Err(io::Error::last_os_error());
    }
    // SAFETY: both descriptors were just returned by pipe2 and are owned
    // by nothing else.
    let (rd, wr) = unsafe { (OwnedFd::from_raw_fd(fds[0]), OwnedFd::from_raw_fd(fds[1])) };
    // SAFETY: getpid has no preconditions.
    let parent = unsafe { libc::getpid() };
    // SAFETY: fork has no memory-safety preconditions; the child below only
    // runs code that is safe after fork in a multi-threaded process (see the
    // module docs) and always ends in _exit.
    let pid = unsafe { libc::fork() };
    if pid < 0 {
        return Err(io::Error::last_os_error());
    }
    if pid == 0 {
        drop(rd);
        child_main(parent, wr.as_raw_fd(), work);
    }
    drop(wr);
    // A pidfd names this child even if a host that reaps its children
    // itself (a SIGCHLD handler, SIG_IGN) has reaped it and its pid was
    // reused: a signal through it never reaches another process.
    let pidfd = PidFd::open(pid);
    let answer = read_answer(rd.as_raw_fd(), Instant::now() + timeout);
    if matches!(&answer, Err(e) if e.kind() == io::ErrorKind::TimedOut) {
        pidfd.kill(pid);
    }
    let status = reap(pid, &pidfd, Duration::from_secs(5));
    match (answer, status) {
        (Err(e), Some(st)) if e.kind() != io::ErrorKind::TimedOut && libc::WIFSIGNALED(st) => {
            Err(io::Error::other(format!(
                "{e}: it died of signal {} (SIGABRT: a panic in a build with panic=abort)",
                libc::WTERMSIG(st)
            )))
        }
        (answer, _) => answer,
    }
}

/// A pidfd of our child, if the kernel has them (Linux 5.3+).
struct PidFd(Option<OwnedFd>);

impl PidFd {
    fn open(pid: libc::pid_t) -> PidFd {
        // SAFETY: pidfd_open takes a pid and flags, no pointers.
        let fd = unsafe { libc::syscall(libc::SYS_pidfd_open, pid, 0) };
        // SAFETY: a non-negative result is a new descriptor we own.
        PidFd((fd >= 0).then(|| unsafe { OwnedFd::from_raw_fd(fd as libc::c_int) }))
    }

    fn kill(&self, pid: libc::pid_t) {
        match &self.0 {
            // SAFETY: a valid pidfd, a signal number, no siginfo, no flags.
            Some(fd) => unsafe {
                libc::syscall(
                    libc::SYS_pidfd_send_signal,
                    fd.as_raw_fd(),
                    libc::SIGKILL,
                    std::ptr::null::<u8>(),
                    0,
                );
            },
            // SAFETY: kill takes no pointers; pid is our child (without
            // pidfds, a host that reaps it itself could let it be reused).
            None => unsafe {
                libc::kill(pid, libc::SIGKILL);
            },
        }
    }
}

/// The child's side: never returns.
fn child_main<F: FnOnce() -> Vec<u8>>(parent: libc::pid_t, fd: libc::c_int, work: F) -> ! {
    // SAFETY: prctl/getppid/sigaction/sigprocmask take valid arguments
    // (a zeroed sigaction with SIG_DFL, an empty set); all are
    // async-signal-safe.
    unsafe {
        libc::prctl(libc::PR_SET_PDEATHSIG, libc::SIGKILL as libc::c_ulong, 0, 0, 0);
        let ppid = libc::getppid();
        if ppid != parent && ppid != 0 {
            // The caller died before the death signal was armed (0: the
            // caller is outside our pid namespace, after unshare).
            libc::_exit(3);
        }
        // No core dump of a copy of the caller's memory if the work aborts.
        let none = libc::rlimit { rlim_cur: 0, rlim_max: 0 };
        libc::setrlimit(libc::RLIMIT_CORE, &none);
        let mut dfl: libc::sigaction = std::mem::zeroed();
        dfl.sa_sigaction = libc::SIG_DFL;
        for sig in 1..=libc::SIGRTMAX() {
            if sig != libc::SIGKILL && sig != libc::SIGSTOP {
                libc::sigaction(sig, &dfl, std::ptr::null_mut());
            }
        }
        let mut empty: libc::sigset_t = std::mem::zeroed();
        libc::sigemptyset(&mut empty);
        libc::sigprocmask(libc::SIG_SETMASK, &empty, std::ptr::null_mut());
    }
    // The panic hook is left alone: setting one takes std's hook lock for
    // writing, which a thread of the caller that was panicking at fork time
    // holds for reading forever in this child. A panic here (sled on a
    // corrupt store) runs the caller's hook, which writes to the unbuffered
    // stderr; it can block only if a thread of the caller was printing a
    // panic at fork time, and the caller's timeout bounds even that.
    let (kind, payload) = match catch_unwind(AssertUnwindSafe(work)) {
        Ok(bytes) => (KIND_OK, bytes),
        Err(p) => {
            let msg = p
                .downcast_ref::<&str>()
                .map(|s| (*s).to_owned())
                .or_else(|| p.downcast_ref::<String>().cloned())
                .unwrap_or_else(|| "unknown panic".to_owned());
            (KIND_PANIC, msg.into_bytes())
        }
    };
    let mut frame = Vec::with_capacity(HEADER + payload.len());
    frame.extend_from_slice(&MAGIC.to_le_bytes());
    frame.extend_from_slice(&kind.to_le_bytes());
    frame.extend_from_slice(&(payload.len() as u64).to_le_bytes());
    frame.extend_from_slice(&payload);
    let mut off = 0;
    while off < frame.len() {
        // SAFETY: writes from inside `frame`, whose length bounds the count.
        let n = unsafe { libc::write(fd, frame[off..].as_ptr().cast(), frame.len() - off) };
        if n > 0 {
            off += n as usize;
        } else if n < 0 && io::Error::last_os_error().raw_os_error() == Some(libc::EINTR) {
            continue;
        } else {
            break;
        }
    }
    // SAFETY: _exit ends the process at once, without running the caller's
    // atexit handlers or destructors.
    unsafe { libc::_exit(0) }
}

/// Reads exactly `buf.len()` bytes before `deadline`.
fn read_exact_by(fd: libc::c_int, buf: &mut [u8], deadline: Instant) -> io::Result<()> {
    let mut off = 0;
    while off < buf.len() {
        let left = deadline.saturating_duration_since(Instant::now());
        if left.is_zero() {
            return Err(io::Error::new(io::ErrorKind::TimedOut, "no answer in time"));
        }
        let mut p = libc::pollfd { fd, events: libc::POLLIN, revents: 0 };
        let ms = left.as_millis().clamp(1, i32::MAX as u128) as libc::c_int;
        // SAFETY: one valid pollfd.
        let r = unsafe { libc::poll(&mut p, 1, ms) };
        if r < 0 {
            let e = io::Error::last_os_error();
            if e.raw_os_error() == Some(libc::EINTR) {
                continue;
            }
            return Err(e);
        }
        if r == 0 {
            continue;
        }
        // SAFETY: reads into the unfilled tail of `buf`.
        let n = unsafe { libc::read(fd, buf[off..].as_mut_ptr().cast(), buf.len() - off) };
        if n > 0 {
            off += n as usize;
        } else if n == 0 {
            return Err(io::Error::other("the helper process ended without a complete answer"));
        } else {
            let e = io::Error::last_os_error();
            if e.raw_os_error() != Some(libc::EINTR) {
                return Err(e);
            }
        }
    }
    Ok(())
}

fn read_answer(fd: libc::c_int, deadline: Instant) -> io::Result<Vec<u8>> {
    let mut h = [0u8; HEADER];
    read_exact_by(fd, &mut h, deadline)?;
    let word = |i: usize| u32::from_le_bytes([h[i], h[i + 1], h[i + 2], h[i + 3]]);
    let mut len8 = [0u8; 8];
    len8.copy_from_slice(&h[8..16]);
    let len = u64::from_le_bytes(len8);
    if word(0) != MAGIC || len > MAX_ANSWER {
        return Err(io::Error::other("the helper process sent a malformed answer"));
    }
    let mut payload = vec![0u8; len as usize];
    read_exact_by(fd, &mut payload, deadline)?;
    match word(4) {
        KIND_OK => Ok(payload),
        KIND_PANIC => Err(io::Error::other(format!(
            "the helper process panicked: {}",
            String::from_utf8_lossy(&payload)
        ))),
        _ => Err(io::Error::other("the helper process sent a malformed answer")),
    }
}

/// Waits for `pid` to end, at most `limit`, then kills it and waits as long
/// again; a host that reaps its children itself (ECHILD) is fine. Returns
/// the wait status when we reaped it.
fn reap(pid: libc::pid_t, pidfd: &PidFd, limit: Duration) -> Option<libc::c_int> {
    let mut end = Instant::now() + limit;
    let mut killed = false;
    loop {
        let mut status = 0;
        // SAFETY: waits for our own child; writes into a local.
        let r = unsafe { libc::waitpid(pid, &mut status, libc::WNOHANG) };
        if r == pid {
            return Some(status);
        }
        if r < 0 && io::Error::last_os_error().raw_os_error() != Some(libc::EINTR) {
            return None;
        }
        if r == 0 {
            if Instant::now() >= end {
                if killed {
                    return None;
                }
                pidfd.kill(pid);
                killed = true;
                end = Instant::now() + limit;
            }
            std::thread::sleep(Duration::from_micros(50));
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn answers_come_back() {
        let out = run_in_child(|| b"hello".to_vec(), Duration::from_secs(10)).unwrap();
        assert_eq!(out, b"hello");
        let big = run_in_child(|| vec![7u8; 1 << 20], Duration::from_secs(10)).unwrap();
        assert_eq!(big.len(), 1 << 20);
        assert!(big.iter().all(|b| *b == 7));
    }

    #[test]
    fn a_panic_is_an_error_not_an_unwind() {
        let e = run_in_child(|| panic!("boom"), Duration::from_secs(10)).unwrap_err();
        assert!(e.to_string().contains("boom"), "{e}");
    }

    #[test]
    fn a_hanging_child_is_killed_after_the_timeout() {
        let t = Instant::now();
        let e = run_in_child(
            || {
                std::thread::sleep(Duration::from_secs(60));
                Vec::new()
            },
            Duration::from_millis(200),
        )
        .unwrap_err();
        assert_eq!(e.kind(), io::ErrorKind::TimedOut);
        assert!(t.elapsed() < Duration::from_secs(30));
    }

    #[test]
    fn a_fork_while_another_thread_is_panicking_still_answers() {
        // A thread of the caller that is inside the panic hook when the
        // child is forked holds std's hook lock in the child forever: the
        // child must never need it.
        let prev = std::sync::Arc::new(std::panic::take_hook());
        let chained = prev.clone();
        std::panic::set_hook(Box::new(move |info| {
            if info.payload().downcast_ref::<&str>() == Some(&"slow panic") {
                std::thread::sleep(Duration::from_millis(800));
            } else {
                chained(info);
            }
        }));
        let t = std::thread::spawn(|| std::panic::panic_any("slow panic"));
        std::thread::sleep(Duration::from_millis(100));
        let out = run_in_child(|| b"still here".to_vec(), Duration::from_secs(10));
        let _ = t.join();
        assert_eq!(out.unwrap(), b"still here");
    }

    #[test]
    fn the_child_is_another_process() {
        let me = std::process::id();
        let out =
            run_in_child(|| std::process::id().to_le_bytes().to_vec(), Duration::from_secs(10)).unwrap();
        assert_ne!(out, me.to_le_bytes());
    }
}

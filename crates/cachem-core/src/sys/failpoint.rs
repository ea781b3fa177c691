//! Fault points: with the `failpoints` feature, a process whose
//! `CACHEM_FAILPOINT` names a point (`name` or `name:N` for the Nth hit,
//! counting from 1) sends itself SIGKILL when it reaches that point: a real
//! kill, not a panic, so nothing unwinds and no destructor runs. Without the
//! feature every point compiles to nothing.
//!
//! The points, in the order a mutation reaches them, are listed in
//! [`POINTS`].

/// Every fault point, for tests that iterate over all of them.
pub const POINTS: &[&str] = &[
    "insert.after_take",
    "insert.after_block",
    "insert.after_publish",
    "insert.mid_link",
    "insert.after_link",
    "chain.mid_unlink",
    "chain.after_unlink",
    "remove.after_journal",
    "remove.after_clear",
    "defer.after_mark",
    "defer.after_clear",
    "defer.after_count",
    "compact.after_journal",
    "compact.mid_move",
    "compact.after_move",
    "compact.mid_fixup",
    "compact.mid_advance",
    "compact.before_clear",
];

#[cfg(feature = "failpoints")]
mod imp {
    use std::sync::atomic::{AtomicU64, Ordering};
    use std::sync::OnceLock;

    static TARGET: OnceLock<Option<(String, u64)>> = OnceLock::new();
    static HITS: AtomicU64 = AtomicU64::new(0);

    fn target() -> &'static Option<(String, u64)> {
        TARGET.get_or_init(|| {
            let v = std::env::var("CACHEM_FAILPOINT").ok()?;
            match v.split_once(':') {
                Some((name, n)) => Some((name.to_string(), n.parse().unwrap_or(1).max(1))),
                None => Some((v, 1)),
            }
        })
    }

    #[inline(never)]
    pub fn hit(name: &str) {
        if let Some((t, nth)) = target() {
            if t == name && HITS.fetch_add(1, Ordering::SeqCst) + 1 == *nth {
                // SAFETY: getpid and kill take no pointers; sending SIGKILL to
                // ourselves ends the process at this point, which is the intent.
                unsafe {
                    libc::kill(libc::getpid(), libc::SIGKILL);
                }
            }
        }
    }
}

#[cfg(not(feature = "failpoints"))]
mod imp {
    #[inline(always)]
    pub fn hit(_name: &str) {}
}

/// Reach the fault point `name` (see the module docs).
#[inline(always)]
pub fn hit(name: &'static str) {
    #[cfg(test)]
    sim::hit(name);
    imp::hit(name)
}

/// In-process crash simulation for the engine's unit tests: a thread that
/// armed a point panics there, leaving the buffer exactly as a kill would.
#[cfg(test)]
pub(crate) mod sim {
    use std::cell::RefCell;

    thread_local! {
        static ARMED: RefCell<Option<(&'static str, u32)>> = const { RefCell::new(None) };
    }

    /// Panic at the `nth` hit (from 1) of `name` on this thread.
    pub fn arm(name: &'static str, nth: u32) {
        ARMED.with(|a| *a.borrow_mut() = Some((name, nth)));
    }

    /// Disarm; returns true if the armed point was not reached.
    pub fn disarm() -> bool {
        ARMED.with(|a| a.borrow_mut().take().is_some())
    }

    pub fn hit(name: &str) {
        ARMED.with(|a| {
            let mut a = a.borrow_mut();
            if let Some((n, k)) = a.as_mut() {
                if *n == name {
                    *k -= 1;
                    if *k == 0 {
                        *a = None;
                        drop(a);
                        std::panic::panic_any(SimulatedCrash);
                    }
                }
            }
        })
    }

    /// The panic payload of a simulated crash.
    pub struct SimulatedCrash;
}

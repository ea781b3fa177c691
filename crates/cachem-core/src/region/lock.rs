//! The region lock: `lock` takes the robust process-shared mutex in the
//! trailer; the common case (clean lock, no journal) stays inline, and
//! `lock_slow` handles a dead owner (consistent, recover, reap), a pending
//! journal and errors. Crash argument: the recovery flag is set before the
//! mutex is made consistent, so a recovery killed midway is redone by the
//! next locker; see `docs/design.md` ("The lock").

use super::*;
use crate::format::mutex_offset;
use std::marker::PhantomData;

/// The longest single wait for the region lock: after it, the waiter checks
/// that the holder named by the lock word exists (the dead-tid rule) and
/// whether its timeout passed. A dead tid is found within one slice.
pub(crate) const SLICE: std::time::Duration = std::time::Duration::from_millis(200);

impl Region {
    #[inline(always)]
    pub(super) fn mutex_ptr(&self) -> *mut libc::pthread_mutex_t {
        // The mutex is the trailer, the last bytes of the mapping.
        self.map.as_ptr().wrapping_add(mutex_offset(self.map.len() as u64) as usize).cast()
    }

    /// Takes the region lock. If its previous owner died holding it, or a
    /// journal is pending, the region is recovered first (counted in the
    /// header's recoveries counter and logged).
    #[inline(always)]
    pub fn lock(&self) -> Result<Guard<'_>> {
        self.lock_inner()
    }

    /// The lock, split so the common case (a clean lock, no journal
    /// pending) is a few inlined instructions around the mutex calls, and
    /// everything else (errors, recovery, logging) is out of line in
    /// [`Region::lock_slow`]. The checks are the same on both paths. The
    /// guard is built in one place only: a guard that came back from a
    /// call through memory cost more than all the checks (the result is
    /// written as small stores and read back as wide loads, which the CPU
    /// cannot forward).
    #[inline(always)]
    pub(super) fn lock_inner(&self) -> Result<Guard<'_>> {
        let m = self.mutex_ptr();
        // SAFETY: the mutex was initialised at creation (or re-armed on
        // attach) and stays mapped as long as `self`.
        let mut state = unsafe { mutex::try_lock(m) };
        if matches!(state, Err(mutex::LockError::Busy)) {
            state = self.lock_wait(m)?;
        }
        let clean = matches!(state, Ok(mutex::Locked::Clean)) && {
            // SAFETY: `mutex::lock` succeeded, so this thread holds the
            // lock; the view ends with this block.
            let view = unsafe { self.view() };
            Layout::reopen(view).is_ok_and(|l| !l.recovery_required())
        };
        let recovered = if clean { false } else { self.lock_slow(m, state)? };
        // SAFETY: we hold the lock (the slow path returns `Ok` only with it
        // held); the view lives in the guard, which unlocks when dropped.
        let layout = match Layout::reopen(unsafe { self.view() }) {
            Ok(l) => l,
            // The slow path checked the same view (its length is the
            // mapping's, which never changes): not reached.
            Err(e) => return Err(self.unlock_after(m, false, e)),
        };
        // An odd version (left by recovery in the slow path, or by a writer
        // that died mid-change, or bytes from elsewhere) is made even by
        // this guard when it unlocks.
        let dirty = seqlock::load(&self.map) & 1 != 0;
        Ok(Guard { region: self, layout, recovered, dirty, _not_send: PhantomData })
    }

    // `&mut` from `&self`: the lock, not `&mut self`, makes it exclusive.
    #[allow(clippy::mut_from_ref)]
    #[inline(always)]
    /// The engine's view of the mapping: everything but the trailer (the
    /// mutex, which waiting threads write; the mapping is longer than it,
    /// checked at attach/create).
    ///
    /// # Safety
    /// The calling thread must hold the region lock; the slice must not
    /// outlive it nor overlap another live reference into the mapping.
    unsafe fn view(&self) -> &mut [u8] {
        // SAFETY: the caller holds the lock; the mapping outlives `self`'s
        // borrow; the length stays inside the mapping.
        unsafe { std::slice::from_raw_parts_mut(self.map.as_ptr(), self.map.len() - TRAILER_SIZE) }
    }

    /// The contended part of the lock: waits in slices of at most
    /// [`SLICE`] until the lock is taken or the timeout passes. After each
    /// slice, the dead-tid rule: a lock word naming a thread that does not
    /// exist (a holder the kernel's robust-futex cleanup never knew, e.g.
    /// from a pid namespace that is gone, or bytes written by hand) is
    /// marked owner-died, so the next `lock` gets `EOWNERDEAD` and
    /// recovers. Returns what the mutex call returned (with the lock held
    /// on `Ok`), or `LockTimeout` naming the holder.
    #[cold]
    #[inline(never)]
    fn lock_wait(
        &self,
        m: *mut libc::pthread_mutex_t,
    ) -> Result<std::result::Result<mutex::Locked, mutex::LockError>> {
        let start = std::time::Instant::now();
        // Read once: a wait keeps the timeout it started with (a later
        // `set_lock_timeout` applies to later locks).
        let timeout = self.lock_timeout();
        loop {
            let left = timeout.map(|t| t.saturating_sub(start.elapsed()));
            if left == Some(std::time::Duration::ZERO) {
                // SAFETY: as in lock_inner.
                let last = unsafe { mutex::try_lock(m) };
                if !matches!(last, Err(mutex::LockError::Busy)) {
                    return Ok(last);
                }
                let holder = self.lock_holder();
                return Err(Error::LockTimeout {
                    path: self.display_path(),
                    holder_pid: holder.and_then(|h| h.pid),
                    holder_tid: holder.map_or(0, |h| h.tid),
                    waited: start.elapsed(),
                });
            }
            // SAFETY: as in lock_inner.
            match unsafe { mutex::lock_for(m, left.map_or(SLICE, |l| l.min(SLICE))) } {
                Err(mutex::LockError::Busy) => {}
                other => return Ok(other),
            }
            // SAFETY: the mutex bytes are the trailer of the live mapping.
            let word = unsafe { mutex::owner_word(m) };
            let tid = word & mutex::FUTEX_TID_MASK;
            // A word with the waiters bit but no tid names no holder at all
            // (glibc's unlock and the kernel's cleanup never leave it):
            // nobody would ever release it, whatever the namespace.
            let no_holder = tid == 0 && word != 0 && mutex::layout_ok().is_some();
            let missing = no_holder
                || (self.judge_tids
                    && tid != 0
                    && word & mutex::FUTEX_OWNER_DIED == 0
                    && !process::thread_exists(tid));
            // SAFETY: as above; the CAS changes the word only if it still
            // names the missing thread (or no thread).
            if missing && unsafe { mutex::mark_owner_died(m, word) } {
                tracing::warn!(
                    path = %self.display_path().display(),
                    tid,
                    "the region lock named thread {tid}, which does not exist: marked its owner dead, \
                     the next locker recovers"
                );
            }
        }
    }

    /// Releases the lock after a failure under it (making it consistent
    /// first if it came back owner-dead) and returns the error.
    #[cold]
    #[inline(never)]
    fn unlock_after(&self, m: *mut libc::pthread_mutex_t, owner_died: bool, e: Error) -> Error {
        // SAFETY: the callers hold the lock.
        unsafe {
            if owner_died {
                let _ = mutex::make_consistent(m);
            }
            let _ = mutex::unlock(m);
        }
        e
    }

    /// The rest of [`Region::lock_inner`]: a lock that failed, a dead
    /// owner, a view that does not check, a journal pending. `state` is
    /// what `mutex::lock` returned; when it is `Ok` this thread holds the
    /// lock. Returns `Ok(recovered)` with the lock held and the region
    /// recovered (the caller builds the guard), or an error with the lock
    /// released.
    #[cold]
    #[inline(never)]
    fn lock_slow(
        &self,
        m: *mut libc::pthread_mutex_t,
        state: std::result::Result<mutex::Locked, mutex::LockError>,
    ) -> Result<bool> {
        let owner_died = match state {
            Ok(mutex::Locked::Clean) => false,
            Ok(mutex::Locked::OwnerDied) => true,
            Err(mutex::LockError::NotRecoverable) => {
                return Err(Error::LockUnrecoverable { path: self.display_path() })
            }
            Err(mutex::LockError::Deadlock) => {
                return Err(Error::AlreadyLocked { path: self.display_path() })
            }
            // lock_inner waits out a busy lock (or returns LockTimeout).
            Err(mutex::LockError::Busy) => {
                return Err(Error::Io {
                    op: "lock",
                    path: self.display_path(),
                    source: io::Error::from_raw_os_error(libc::EBUSY),
                })
            }
            Err(mutex::LockError::Other(e)) => {
                return Err(Error::Io { op: "lock", path: self.display_path(), source: e })
            }
        };
        // SAFETY: we hold the region lock (taken above).
        let layout = match Layout::reopen(unsafe { self.view() }) {
            Ok(l) => l,
            Err(e) => return Err(self.unlock_after(m, owner_died, e)),
        };
        // An odd version here means the last writer died mid-change (its
        // lock came back with EOWNERDEAD) or the image is from another boot:
        // this guard makes it even again when it unlocks.
        let dirty = seqlock::load(&self.map) & 1 != 0;
        let mut g = Guard { region: self, layout, recovered: false, dirty, _not_send: PhantomData };
        if owner_died || g.layout.recovery_required() {
            let trigger = if owner_died { "owner died" } else { g.layout.recovery_trigger() };
            g.begin_write();
            if owner_died {
                // The flag first: once the lock is consistent again, a
                // recovery that panics or is killed must still be redone by
                // the next locker (which then gets a clean lock). Consistent
                // before recovering, so that a panic in the recovery unlocks
                // a usable mutex, not one that is unrecoverable for good.
                g.layout.mark_recovery_required();
                std::sync::atomic::fence(std::sync::atomic::Ordering::SeqCst);
                // SAFETY: we hold the lock, obtained with EOWNERDEAD.
                unsafe { mutex::make_consistent(m) }
                    .map_err(io_err("mark lock consistent", &self.display_path()))?;
                g.layout.count_recovery();
            }
            let r = g.layout.recover();
            match &r {
                Ok(rep) => tracing::warn!(
                    path = %self.display_path().display(),
                    trigger,
                    finished_compaction = rep.finished_compaction,
                    rolled_back_inserts = rep.rolled_back_inserts,
                    finished_removes = rep.finished_removes,
                    "recovered region ({trigger})"
                ),
                // Returned to the caller below, who reports it: not logged
                // as an error here, or it would be printed twice.
                Err(e) => {
                    tracing::debug!(path = %self.display_path().display(), trigger, "recovery failed: {e}")
                }
            }
            r?;
            g.recovered = true;
            if owner_died && self.reap {
                // The dead owner is likely not the only dead process.
                if let Err(e) = g.reap_judging(true) {
                    tracing::error!("reaping after recovery failed: {e}");
                }
            }
        }
        // Keep the lock for the caller's guard. Whether it must make the
        // version even again is read back from the version word: it is odd
        // exactly when this guard is dirty (it started odd, or this guard
        // made it odd).
        let recovered = g.recovered;
        std::mem::forget(g);
        Ok(recovered)
    }
}

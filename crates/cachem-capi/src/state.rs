//! The C ABI's own state: the registry of open handles and, per thread, the
//! region locks that thread holds and its last error message.
//!
//! ## Handles are tokens, not pointers
//!
//! A `cachem_t *` handed to C is never dereferenced. It is a 64-bit token,
//! `TAG << 48 | slot << 32 | generation`, looked up in [`HANDLES`]. Closing a
//! handle empties its slot and bumps the slot's generation, so a closed
//! handle, a handle from before a slot was reused, a pointer that never was a
//! handle (wrong tag) or a NULL are all reported as errors, never followed.
//! The tag makes the value a non-canonical address on x86-64 and AArch64, so
//! C code that dereferences the opaque handle crashes at once instead of
//! reading something. The one limit: a token forged with the right tag, slot
//! and generation is indistinguishable from the real handle (it *is* the
//! handle), which is harmless.
//!
//! ## The lock is held through thread-local guards
//!
//! `cachem_lock` stores the region's [`Guard`] in this thread's [`HELD`] list
//! together with an `Arc` of the handle the guard borrows; `cachem_unlock`
//! (or the thread's exit) drops it. The guard's lifetime is extended to
//! `'static` in exactly one place ([`lock`]), argued there.

use crate::Fail;
use cachem_rs::{Cache, Guard};
use std::cell::RefCell;
use std::ffi::CString;
use std::mem::ManuallyDrop;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, RwLock};

/// High 16 bits of every handle token.
const TAG: u64 = 0xCAC0;
/// At most this many handles open at once in a process.
pub(crate) const MAX_HANDLES: usize = 0xFFFF;

/// One open `cachem_t`.
pub(crate) struct Handle {
    pub cache: Cache,
    pub token: u64,
    /// The region's generation: two handles of one region share it, and so
    /// share the lock a thread holds.
    pub generation: u64,
    pub max_record_len: u64,
    /// Threads holding the lock through this handle (`cachem_close` refuses
    /// while it is not zero).
    pub holders: AtomicUsize,
}

#[derive(Default)]
struct Slot {
    gen: u32,
    handle: Option<Arc<Handle>>,
}

static HANDLES: RwLock<Vec<Slot>> = RwLock::new(Vec::new());

fn split(token: u64) -> Option<(usize, u32)> {
    (token >> 48 == TAG).then_some((((token >> 32) & 0xFFFF) as usize, token as u32))
}

/// Whether `token` looks like a handle at all (tag check only).
pub(crate) fn well_formed(token: u64) -> bool {
    split(token).is_some()
}

/// The open handle behind `token`.
pub(crate) fn lookup(token: u64) -> Result<Arc<Handle>, Fail> {
    if token == 0 {
        return Err(Fail::invalid("the handle is NULL"));
    }
    let bad = || Fail::misuse(format!("{token:#x} is not an open cachem handle (closed, or never opened)"));
    let (slot, gen) = split(token).ok_or_else(bad)?;
    let h = HANDLES.read().unwrap_or_else(|p| p.into_inner());
    match h.get(slot) {
        Some(Slot { gen: g, handle: Some(handle) }) if *g == gen => Ok(handle.clone()),
        _ => Err(bad()),
    }
}

/// Registers a freshly opened cache and returns its token.
pub(crate) fn register(cache: Cache, max_record_len: u64) -> Result<u64, Fail> {
    let generation = cache.region().generation();
    let mut h = HANDLES.write().unwrap_or_else(|p| p.into_inner());
    let slot = match h.iter().position(|s| s.handle.is_none()) {
        Some(i) => i,
        None if h.len() < MAX_HANDLES => {
            h.push(Slot::default());
            h.len() - 1
        }
        None => return Err(Fail::invalid(format!("more than {MAX_HANDLES} handles open in this process"))),
    };
    let s = &mut h[slot];
    s.gen = s.gen.wrapping_add(1).max(1);
    let token = TAG << 48 | (slot as u64) << 32 | s.gen as u64;
    s.handle =
        Some(Arc::new(Handle { cache, token, generation, max_record_len, holders: AtomicUsize::new(0) }));
    Ok(token)
}

/// Closes `token`: refuses while a thread holds the lock through it.
/// Returns the registry's reference, to be dropped by the caller outside
/// the registry lock (dropping the last one purges process-scoped records,
/// which takes the region lock).
pub(crate) fn unregister(token: u64) -> Result<Arc<Handle>, Fail> {
    let handle = lookup(token)?;
    let (slot, _) = split(token).ok_or_else(|| Fail::internal("token checked by lookup"))?;
    let mut h = HANDLES.write().unwrap_or_else(|p| p.into_inner());
    let s = h.get_mut(slot).ok_or_else(|| Fail::internal("slot checked by lookup"))?;
    match &s.handle {
        Some(cur) if Arc::ptr_eq(cur, &handle) => {}
        // Closed by another thread since our lookup.
        _ => {
            return Err(Fail::misuse(format!(
                "{token:#x} is not an open cachem handle (closed, or never opened)"
            )))
        }
    }
    let n = handle.holders.load(Ordering::Acquire);
    if n != 0 {
        return Err(Fail::busy(format!(
            "{n} thread(s) hold the region lock through this handle; cachem_unlock in each first"
        )));
    }
    s.gen = s.gen.wrapping_add(1).max(1);
    s.handle.take().ok_or_else(|| Fail::internal("slot emptied under the write lock"))
}

/// A lock held by this thread.
struct Held {
    /// Dropped first (by `Drop for Held`): it borrows `handle.cache`.
    guard: ManuallyDrop<Guard<'static>>,
    handle: Arc<Handle>,
}

impl Drop for Held {
    fn drop(&mut self) {
        // SAFETY: the guard is dropped exactly once, here, while `handle`
        // (which owns the Cache it borrows) is still alive; the field is
        // never used again.
        unsafe { ManuallyDrop::drop(&mut self.guard) };
        self.handle.holders.fetch_sub(1, Ordering::Release);
    }
}

thread_local! {
    /// The region locks this thread holds (usually zero or one).
    static HELD: RefCell<Vec<Held>> = const { RefCell::new(Vec::new()) };
    /// Detail of this thread's last failed call.
    static LAST_ERROR: RefCell<CString> = RefCell::new(CString::default());
}

fn with_held<T>(f: impl FnOnce(&mut Vec<Held>) -> Result<T, Fail>) -> Result<T, Fail> {
    HELD.try_with(|held| match held.try_borrow_mut() {
        Ok(mut held) => f(&mut held),
        Err(_) => Err(Fail::internal("re-entered the C ABI from inside a call")),
    })
    .unwrap_or_else(|_| Err(Fail::misuse("called during thread exit")))
}

/// Takes the region lock for this thread and keeps it until [`unlock`].
pub(crate) fn lock(handle: Arc<Handle>) -> Result<(), Fail> {
    with_held(|held| {
        if let Some(h) = held.iter().find(|h| h.handle.generation == handle.generation) {
            return Err(Fail::already_locked(if h.handle.token == handle.token {
                "this thread already holds the lock of this handle".to_string()
            } else {
                "this thread already holds this region's lock through another handle".to_string()
            }));
        }
        let guard = handle.cache.lock()?;
        // SAFETY: the guard borrows `handle.cache`, which lives inside the
        // `Arc<Handle>` allocation: it never moves and is not dropped while
        // any `Arc` clone lives. The `Held` built here owns such a clone and
        // drops the guard before it (`Drop for Held`). The `'static` guard
        // never leaves `Held`: callers only see it through `&mut` borrows
        // no longer than a borrow of the list, and nothing derived from it
        // with the `'static` lifetime (`Guard::region`, `Guard::layout`) is
        // kept. The guard is `!Send`, and the list is thread-local, so it is
        // unlocked by the thread that locked it.
        let guard: Guard<'static> = unsafe { std::mem::transmute::<Guard<'_>, Guard<'static>>(guard) };
        handle.holders.fetch_add(1, Ordering::AcqRel);
        held.push(Held { guard: ManuallyDrop::new(guard), handle });
        Ok(())
    })
}

/// Releases the lock this thread holds through `token`.
pub(crate) fn unlock(token: u64) -> Result<(), Fail> {
    let found =
        with_held(|held| Ok(held.iter().position(|h| h.handle.token == token).map(|i| held.swap_remove(i))))?;
    match found {
        Some(h) => {
            // Unlocks (and may drop the last reference to a handle closed
            // by a racing thread) outside the RefCell borrow.
            drop(h);
            Ok(())
        }
        None => {
            // A precise message: bad handle, or just not locked.
            let handle = lookup(token)?;
            let other = with_held(|held| Ok(held.iter().any(|h| h.handle.generation == handle.generation)))?;
            Err(Fail::not_locked(if other {
                "this thread holds this region's lock through another handle; unlock that one"
            } else {
                "this thread does not hold the lock of this handle"
            }))
        }
    }
}

/// Runs `f` with this thread's guard of the handle's region, if it holds
/// one; returns `None` without calling `f` otherwise.
pub(crate) fn with_held_guard<T>(
    handle: &Handle,
    f: impl FnOnce(&mut Guard<'_>) -> Result<T, Fail>,
) -> Result<Option<T>, Fail> {
    with_held(|held| match held.iter_mut().find(|h| h.handle.generation == handle.generation) {
        Some(h) => f(&mut h.guard).map(Some),
        None => Ok(None),
    })
}

/// Whether this thread holds the lock of the handle's region.
pub(crate) fn holds(handle: &Handle) -> Result<bool, Fail> {
    with_held(|held| Ok(held.iter().any(|h| h.handle.generation == handle.generation)))
}

/// Runs `f` under the region lock: this thread's held guard, or a lock
/// taken and released around the call.
pub(crate) fn with_guard<T>(
    handle: &Handle,
    f: impl FnOnce(&mut Guard<'_>) -> Result<T, Fail>,
) -> Result<T, Fail> {
    let mut f = Some(f);
    let held = with_held_guard(handle, |g| match f.take() {
        Some(f) => f(g),
        None => Err(Fail::internal("closure used twice")),
    })?;
    match held {
        Some(v) => Ok(v),
        None => {
            let mut g = handle.cache.lock()?;
            match f.take() {
                Some(f) => f(&mut g),
                None => Err(Fail::internal("closure used twice")),
            }
        }
    }
}

/// After a caught panic: every lock this thread holds may guard a half-done
/// mutation. Mark each region for recovery and release it.
pub(crate) fn abandon_locks_after_panic() {
    let _ = HELD.try_with(|held| {
        if let Ok(mut held) = held.try_borrow_mut() {
            for mut h in held.drain(..) {
                h.guard.layout().mark_recovery_required();
            }
        }
    });
}

/// Records the detail of a failed call for `cachem_last_error_message`.
pub(crate) fn set_last_error(msg: &str) {
    let c = CString::new(msg.replace('\0', "\\0")).unwrap_or_default();
    let _ = LAST_ERROR.try_with(|e| {
        if let Ok(mut e) = e.try_borrow_mut() {
            *e = c;
        }
    });
}

/// This thread's last error detail; valid until this thread's next failed
/// call (or its exit).
pub(crate) fn last_error_ptr() -> *const std::ffi::c_char {
    static EMPTY: [u8; 1] = [0];
    LAST_ERROR.try_with(|e| e.borrow().as_ptr()).unwrap_or(EMPTY.as_ptr().cast())
}

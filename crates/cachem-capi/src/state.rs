//! The C ABI's own state: the registry of open handles and, per thread, the
//! region locks that thread holds and its last error message.
//!
//! ## Handles are tokens, not pointers
//!
//! A `cachem_t *` handed to C is never dereferenced. It is a 64-bit token,
//! `TAG << 48 | slot << 32 | generation`, naming one of [`MAX_HANDLES`]
//! slots of the static table [`SLOTS`]. Closing a handle bumps its slot's
//! generation and frees the handle, so a closed handle, a handle from before
//! a slot was reused, a value that never was a handle (wrong tag, slot out
//! of range) or a NULL are all reported as errors, never followed. The tag
//! makes the value a non-canonical address on x86-64 and AArch64, so C code
//! that dereferences the opaque handle crashes at once instead of reading
//! something. The one limit: a value with the right tag, slot and generation
//! *is* that handle.
//!
//! ## Users keep a handle alive, without a lock on the table
//!
//! Every call "uses" its handle for its duration ([`Use`]), and a thread
//! holding the region lock uses it until `cachem_unlock`: the slot's `users`
//! counter. A lookup increments `users`, then checks the generation; a close
//! (serialised by [`WRITER`]) bumps the generation, then checks `users`,
//! restoring the generation and answering `CACHEM_E_BUSY` if it is not zero.
//! Both sides use sequentially consistent operations, so at least one of
//! them sees the other: either the lookup sees the new generation and backs
//! off, or the close sees the user and refuses. Hence a handle's memory is
//! freed only when nobody uses it, and a lookup costs one atomic increment
//! and one load, not a lock.
//!
//! ## The lock is held through thread-local guards
//!
//! `cachem_lock` stores the region's [`Guard`] in this thread's [`HELD`] list
//! together with the [`Use`] that keeps its handle alive; `cachem_unlock`
//! (or the thread's exit) drops it. Calls made while holding the lock find
//! the guard there by token without touching [`SLOTS`]. The guard's lifetime
//! is extended to `'static` in exactly one place ([`lock`]), argued there.

use crate::fail::Fail;
use cachem_rs::{Cache, Guard};
use std::cell::{Cell, RefCell};
use std::ffi::CString;
use std::mem::ManuallyDrop;
use std::ptr::NonNull;
use std::sync::atomic::{AtomicPtr, AtomicU32, AtomicUsize, Ordering::*};
use std::sync::Mutex;

/// High 16 bits of every handle token.
const TAG: u64 = 0xCAC0;
/// At most this many handles open at once in a process.
pub(crate) const MAX_HANDLES: usize = 4096;

/// One open `cachem_t`.
pub(crate) struct Handle {
    pub cache: Cache,
    pub token: u64,
    /// The region's generation: two handles of one region share it, and so
    /// share the lock a thread holds.
    pub generation: u64,
    pub max_record_len: u64,
}

/// One entry of the handle table. Lives for the whole process.
struct Slot {
    /// Generation of the handle in this slot (0: never used). Bumped when
    /// the handle is closed, and again when the slot is reused.
    gen: AtomicU32,
    /// Calls in flight and locks held through this slot's handle.
    users: AtomicUsize,
    /// The handle (a leaked `Box`), or null when the slot is free.
    ptr: AtomicPtr<Handle>,
}

#[allow(clippy::declare_interior_mutable_const)] // only used to build SLOTS
const FREE: Slot =
    Slot { gen: AtomicU32::new(0), users: AtomicUsize::new(0), ptr: AtomicPtr::new(std::ptr::null_mut()) };
static SLOTS: [Slot; MAX_HANDLES] = [FREE; MAX_HANDLES];
/// Serialises `cachem_open` and `cachem_close` (never held during a lookup).
static WRITER: Mutex<()> = Mutex::new(());

#[inline]
fn split(token: u64) -> Option<(usize, u32)> {
    let slot = ((token >> 32) & 0xFFFF) as usize;
    (token >> 48 == TAG && slot < MAX_HANDLES).then_some((slot, token as u32))
}

/// Whether `token` looks like a handle at all (tag and range only).
pub(crate) fn well_formed(token: u64) -> bool {
    split(token).is_some()
}

fn not_open(token: u64) -> Fail {
    Fail::misuse(format!("{token:#x} is not an open cachem handle (closed, or never opened)"))
}

/// A handle in use by the current call (or by a held lock): its memory is
/// not freed while this exists.
pub(crate) struct Use {
    slot: &'static Slot,
    handle: NonNull<Handle>,
}

impl std::ops::Deref for Use {
    type Target = Handle;
    #[inline]
    fn deref(&self) -> &Handle {
        // The box stays allocated, read only through shared references,
        // while this `Use` is counted in `users` (module docs).
        // SAFETY: `lookup` counted this `Use` after checking the generation;
        // `unregister` frees only at `users == 0` with the generation bumped.
        unsafe { self.handle.as_ref() }
    }
}

impl Drop for Use {
    #[inline]
    fn drop(&mut self) {
        self.slot.users.fetch_sub(1, Release);
    }
}

/// The open handle behind `token`, in use until the returned value drops.
#[inline]
pub(crate) fn lookup(token: u64) -> Result<Use, Fail> {
    if token == 0 {
        return Err(Fail::invalid("the handle is NULL"));
    }
    let (slot, gen) = split(token).ok_or_else(|| not_open(token))?;
    let s = &SLOTS[slot];
    s.users.fetch_add(1, SeqCst);
    // The generation first: once it matches, a close cannot free the handle
    // (it would see our user), so the pointer read next is the live one.
    let p = if s.gen.load(SeqCst) == gen { s.ptr.load(SeqCst) } else { std::ptr::null_mut() };
    match NonNull::new(p) {
        Some(handle) => Ok(Use { slot: s, handle }),
        None => {
            s.users.fetch_sub(1, Release);
            Err(not_open(token))
        }
    }
}

/// Set once [`forget_users_after_fork`] is registered (under [`WRITER`]).
static ATFORK: std::sync::atomic::AtomicBool = std::sync::atomic::AtomicBool::new(false);

/// In a forked child, only the forking thread exists: calls that other
/// threads had in flight at fork time never end there, so their `users`
/// counts would keep the child from ever closing those handles. The forking
/// thread itself is in no call (the only fork inside a call is the id
/// registry's helper, whose child `_exit`s), and must not fork while holding
/// a lock (documented), so every count starts at zero in the child.
extern "C" fn forget_users_after_fork() {
    for s in &SLOTS {
        s.users.store(0, SeqCst);
    }
}

/// Registers a freshly opened cache and returns its token.
pub(crate) fn register(cache: Cache, max_record_len: u64) -> Result<u64, Fail> {
    let _w = WRITER.lock().unwrap_or_else(|p| p.into_inner());
    if !ATFORK.load(SeqCst) {
        // SAFETY: registers a child handler that only stores to atomics
        // (async-signal-safe); once, under WRITER.
        unsafe { libc::pthread_atfork(None, None, Some(forget_users_after_fork)) };
        ATFORK.store(true, SeqCst);
    }
    let slot = SLOTS.iter().position(|s| s.ptr.load(SeqCst).is_null()).ok_or_else(|| {
        Fail::new(
            crate::cachem_error_t::CACHEM_E_TOO_MANY_HANDLES,
            format!("{MAX_HANDLES} handles are open in this process already: close one first"),
        )
    })?;
    let s = &SLOTS[slot];
    let gen = s.gen.load(SeqCst).wrapping_add(1).max(1);
    let token = TAG << 48 | (slot as u64) << 32 | gen as u64;
    let generation = cache.region().generation();
    let handle = Box::new(Handle { cache, token, generation, max_record_len });
    s.ptr.store(Box::into_raw(handle), SeqCst);
    // Published last: a lookup that sees this generation sees the pointer.
    s.gen.store(gen, SeqCst);
    Ok(token)
}

/// Closes `token`: refuses with `CACHEM_E_BUSY` while a thread holds the
/// lock through it or another call is using it. Returns the handle, to be
/// dropped by the caller after this returns (dropping the process's last
/// handle purges its process-scoped records, which takes the region lock).
pub(crate) fn unregister(token: u64) -> Result<Box<Handle>, Fail> {
    if token == 0 {
        return Err(Fail::invalid("the handle is NULL"));
    }
    let (slot, gen) = split(token).ok_or_else(|| not_open(token))?;
    let s = &SLOTS[slot];
    let _w = WRITER.lock().unwrap_or_else(|p| p.into_inner());
    if s.gen.load(SeqCst) != gen || s.ptr.load(SeqCst).is_null() {
        return Err(not_open(token));
    }
    s.gen.store(gen.wrapping_add(1).max(1), SeqCst);
    let n = s.users.load(SeqCst);
    if n != 0 {
        s.gen.store(gen, SeqCst);
        return Err(Fail::busy(format!(
            "{n} user(s) of this handle: a thread holds the region lock through it (cachem_unlock in \
             each first) or a call on another thread is in progress"
        )));
    }
    let p = s.ptr.swap(std::ptr::null_mut(), SeqCst);
    // SAFETY: `p` came from `Box::into_raw` in `register`; it is taken out
    // of the slot under WRITER, so only this call frees it; no `Use` exists
    // (users was zero after the generation was bumped, and every later
    // lookup sees the new generation and backs off).
    NonNull::new(p).map(|p| unsafe { Box::from_raw(p.as_ptr()) }).ok_or_else(|| not_open(token))
}

/// A lock held by this thread.
struct Held {
    /// Dropped first (by `Drop for Held`): it borrows `user.cache`.
    guard: ManuallyDrop<Guard<'static>>,
    /// Keeps the handle alive while the guard lives.
    user: Use,
}

impl Drop for Held {
    fn drop(&mut self) {
        // SAFETY: the guard is dropped exactly once, here, while `user`
        // (which keeps the Cache it borrows allocated) is still alive; the
        // field is never used again.
        unsafe { ManuallyDrop::drop(&mut self.guard) };
    }
}

thread_local! {
    /// How deep this thread is in entry points: 1 inside a call, 2 when a
    /// signal handler (or a status callback) interrupted one and called in
    /// again. Plain memory, no lazy initialisation: safe to touch from a
    /// signal handler.
    static DEPTH: Cell<u32> = const { Cell::new(0) };
    /// A `cachem_purge_process` asked for while this thread was inside a
    /// call: the handle's token, run when the outermost call returns.
    static PENDING_PURGE: Cell<u64> = const { Cell::new(0) };
    /// The region locks this thread holds (usually zero or one).
    static HELD: RefCell<Vec<Held>> = const { RefCell::new(Vec::new()) };
    /// Detail of this thread's last failed call.
    static LAST_ERROR: RefCell<CString> = RefCell::new(CString::default());
}

/// Marks this thread as inside an entry point until the value drops; the
/// outermost one then runs a purge deferred by [`defer_purge`].
pub(crate) struct InCall(());

impl InCall {
    #[inline]
    pub(crate) fn enter() -> InCall {
        let _ = DEPTH.try_with(|d| d.set(d.get() + 1));
        std::sync::atomic::compiler_fence(SeqCst);
        InCall(())
    }
}

impl Drop for InCall {
    #[inline]
    fn drop(&mut self) {
        std::sync::atomic::compiler_fence(SeqCst);
        let _ = DEPTH.try_with(|d| {
            if d.get() == 1 {
                // Still counted as inside a call: a signal arriving during
                // the purge defers again, and the loop picks it up.
                while let Ok(t) = PENDING_PURGE.try_with(|p| p.replace(0)) {
                    if t == 0 {
                        break;
                    }
                    run_deferred_purge(t);
                }
            }
            d.set(d.get().saturating_sub(1));
        });
    }
}

#[cold]
fn run_deferred_purge(token: u64) {
    let r = std::panic::catch_unwind(|| locked(token, |_, g| Ok(g.purge_process()?)));
    if !matches!(r, Ok(Ok(_))) {
        // Nobody to tell but the last-error slot; the records go when this
        // process exits (reaped as a dead process's).
        set_last_error(
            "cachem_purge_process (deferred): failed; the records are reaped when this process exits",
        );
    }
}

/// Whether this thread is inside an entry point (a signal handler that
/// interrupted a call, or a status callback, is calling in again).
#[inline]
pub(crate) fn in_call() -> bool {
    DEPTH.try_with(|d| d.get() > 0).unwrap_or(true)
}

/// Asks the outermost running call of this thread to purge the process's
/// process-scoped records through `token` when it returns. Touches only
/// one thread-local word: safe in a signal handler.
pub(crate) fn defer_purge(token: u64) {
    let _ = PENDING_PURGE.try_with(|p| p.set(token));
}

#[inline]
fn with_held<T>(f: impl FnOnce(&mut Vec<Held>) -> Result<T, Fail>) -> Result<T, Fail> {
    HELD.try_with(|held| match held.try_borrow_mut() {
        Ok(mut held) => f(&mut held),
        Err(_) => Err(Fail::internal("re-entered the C ABI from inside a call")),
    })
    .unwrap_or_else(|_| Err(Fail::misuse("called during thread exit")))
}

/// Takes the region lock for this thread and keeps it until [`unlock`].
pub(crate) fn lock(user: Use) -> Result<(), Fail> {
    with_held(|held| {
        if let Some(h) = held.iter().find(|h| h.user.generation == user.generation) {
            return Err(Fail::already_locked(if h.user.token == user.token {
                "this thread already holds the lock of this handle".to_string()
            } else {
                "this thread already holds this region's lock through another handle".to_string()
            }));
        }
        let guard = user.cache.lock()?;
        // SAFETY: the guard borrows `user.cache`, which lives in the handle's
        // box; the box never moves, and is not freed while `user` lives (see
        // `Use`). The `Held` built here owns `user` and drops the guard
        // before it (`Drop for Held`). The guard is `!Send` and the list
        // thread-local, so the thread that locked is the one that unlocks.
        // SAFETY: the `'static` guard never leaves `Held`: callers see it only
        // through `&mut` borrows no longer than a borrow of the list, and
        // nothing `'static` derived from it (`region`, `layout`) is kept.
        let guard: Guard<'static> = unsafe { std::mem::transmute::<Guard<'_>, Guard<'static>>(guard) };
        held.push(Held { guard: ManuallyDrop::new(guard), user });
        Ok(())
    })
}

/// Releases the lock this thread holds on the region of `token`, whichever
/// handle of that region it was taken through: the lock belongs to the
/// region and the thread, not to one handle.
pub(crate) fn unlock(token: u64) -> Result<(), Fail> {
    // Fast path: the lock was taken through this very handle (no lookup).
    if release_first(|h| h.user.token == token)? {
        return Ok(());
    }
    // Another handle of the same region, or a precise message: bad handle,
    // or just not locked.
    let handle = lookup(token)?;
    if release_first(|h| h.user.generation == handle.generation)? {
        Ok(())
    } else {
        Err(Fail::not_locked("this thread does not hold this region's lock"))
    }
}

/// Drops this thread's first held lock that `which` picks; whether one was.
/// Dropping the `Held` unlocks and ends the handle's use; neither touches
/// this thread's list again, so it may happen under the borrow.
fn release_first(which: impl Fn(&Held) -> bool) -> Result<bool, Fail> {
    with_held(|held| match held.iter().position(which) {
        Some(i) => {
            drop(held.swap_remove(i));
            Ok(true)
        }
        None => Ok(false),
    })
}

/// Runs `f` with this thread's guard of the handle's region, if it holds
/// one; returns `None` without calling `f` otherwise.
pub(crate) fn with_held_guard<T>(
    handle: &Handle,
    f: impl FnOnce(&mut Guard<'_>) -> Result<T, Fail>,
) -> Result<Option<T>, Fail> {
    with_held(|held| match held.iter_mut().find(|h| h.user.generation == handle.generation) {
        Some(h) => f(&mut h.guard).map(Some),
        None => Ok(None),
    })
}

/// Whether this thread holds the lock of the handle's region.
pub(crate) fn holds(handle: &Handle) -> Result<bool, Fail> {
    with_held(|held| Ok(held.iter().any(|h| h.user.generation == handle.generation)))
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

/// Runs `f` under the region lock of the handle `token`. Fast path: this
/// thread holds the lock through this very handle, so neither the registry
/// nor any atomic operation is needed. Otherwise the handle is looked up and
/// [`with_guard`] locks as needed.
#[inline]
pub(crate) fn locked<T>(
    token: u64,
    f: impl FnOnce(&Handle, &mut Guard<'_>) -> Result<T, Fail>,
) -> Result<T, Fail> {
    let mut f = Some(f);
    let fast = with_held(|held| match held.iter_mut().find(|h| h.user.token == token) {
        Some(h) => match f.take() {
            Some(f) => f(&h.user, &mut h.guard).map(Some),
            None => Err(Fail::internal("closure used twice")),
        },
        None => Ok(None),
    })?;
    if let Some(v) = fast {
        return Ok(v);
    }
    let handle = lookup(token)?;
    with_guard(&handle, |g| match f.take() {
        Some(f) => f(&handle, g),
        None => Err(Fail::internal("closure used twice")),
    })
}

/// As [`locked`], but only if this thread holds the lock (through this
/// handle or another of the same region): `None` otherwise, `f` not called.
#[inline]
pub(crate) fn held_only<T>(
    token: u64,
    f: impl FnOnce(&mut Guard<'_>) -> Result<T, Fail>,
) -> Result<Option<T>, Fail> {
    let mut f = Some(f);
    let fast = with_held(|held| match held.iter_mut().find(|h| h.user.token == token) {
        Some(h) => match f.take() {
            Some(f) => f(&mut h.guard).map(Some),
            None => Err(Fail::internal("closure used twice")),
        },
        None => Ok(None),
    })?;
    if fast.is_some() {
        return Ok(fast);
    }
    let handle = lookup(token)?;
    with_held_guard(&handle, |g| match f.take() {
        Some(f) => f(g),
        None => Err(Fail::internal("closure used twice")),
    })
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
    LAST_ERROR
        .try_with(|e| e.try_borrow().map(|e| e.as_ptr()).unwrap_or(EMPTY.as_ptr().cast()))
        .unwrap_or(EMPTY.as_ptr().cast())
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::cachem_error_t::*;
    use cachem_rs::Config;

    fn open() -> u64 {
        let cache = Cache::open(&Config::anonymous(1 << 16)).unwrap();
        register(cache, 100).unwrap()
    }

    #[test]
    fn null_forged_and_closed_tokens_are_errors() {
        assert_eq!(lookup(0).err().unwrap().code, CACHEM_E_INVALID_ARGUMENT);
        assert_eq!(lookup(0x1234).err().unwrap().code, CACHEM_E_MISUSE);
        assert_eq!(lookup(TAG << 48 | 0xFFFF << 32 | 1).err().unwrap().code, CACHEM_E_MISUSE);
        let t = open();
        assert_eq!(lookup(t).unwrap().token, t);
        drop(unregister(t).unwrap());
        assert_eq!(lookup(t).err().unwrap().code, CACHEM_E_MISUSE);
        assert_eq!(unregister(t).err().unwrap().code, CACHEM_E_MISUSE);
        // A reused slot gets another generation: the old token stays dead.
        let t2 = open();
        assert_ne!(t2, t);
        assert_eq!(lookup(t).err().unwrap().code, CACHEM_E_MISUSE);
        drop(unregister(t2).unwrap());
    }

    #[test]
    fn a_handle_in_use_or_locked_cannot_be_closed() {
        let t = open();
        let u = lookup(t).unwrap();
        assert_eq!(unregister(t).err().unwrap().code, CACHEM_E_BUSY);
        assert_eq!(lookup(t).unwrap().token, t, "a refused close leaves the handle usable");
        drop(u);
        lock(lookup(t).unwrap()).unwrap();
        assert_eq!(unregister(t).err().unwrap().code, CACHEM_E_BUSY);
        assert_eq!(lock(lookup(t).unwrap()).err().unwrap().code, CACHEM_E_ALREADY_LOCKED);
        // Another thread neither unlocks nor sees the lock as its own.
        std::thread::spawn(move || {
            assert_eq!(unlock(t).err().unwrap().code, CACHEM_E_NOT_LOCKED);
            assert_eq!(held_only(t, |_| Ok(())).unwrap(), None);
        })
        .join()
        .unwrap();
        assert_eq!(held_only(t, |_| Ok(7)).unwrap(), Some(7));
        unlock(t).unwrap();
        assert_eq!(unlock(t).err().unwrap().code, CACHEM_E_NOT_LOCKED);
        drop(unregister(t).unwrap());
    }

    #[test]
    fn a_caught_panic_is_internal_and_releases_this_threads_locks_for_recovery() {
        let t = open();
        lock(lookup(t).unwrap()).unwrap();
        let code = crate::fail::ffi("cachem_test", || {
            locked(t, |_, g| {
                g.insert(cachem_rs::OwnerId(3), b"half done").unwrap();
                panic!("a bug in the middle of a mutation");
            })
        });
        assert_eq!(code, CACHEM_E_INTERNAL);
        // SAFETY: last_error_ptr gives a NUL-terminated string that stays
        // valid until this thread's next failure (none before the copy).
        let msg = unsafe { std::ffi::CStr::from_ptr(last_error_ptr()) }.to_string_lossy().into_owned();
        assert!(msg.contains("cachem_test") && msg.contains("a bug in the middle"), "{msg}");
        // The lock was released, and the next locker recovers the region.
        assert_eq!(held_only(t, |_| Ok(())).unwrap(), None);
        let u = lookup(t).unwrap();
        let g = u.cache.lock().unwrap();
        assert!(g.recovered(), "the region was marked for recovery");
        g.verify().unwrap();
        drop(g);
        drop(u);
        drop(unregister(t).unwrap());
    }

    #[test]
    fn lookups_racing_a_close_see_the_live_handle_or_an_error() {
        for _ in 0..10 {
            let t = open();
            let stop = std::sync::Arc::new(std::sync::atomic::AtomicBool::new(false));
            let readers: Vec<_> = (0..3)
                .map(|_| {
                    let stop = stop.clone();
                    std::thread::spawn(move || {
                        let mut ok = 0u64;
                        while !stop.load(Relaxed) {
                            match lookup(t) {
                                Ok(u) => {
                                    assert_eq!((u.token, u.max_record_len), (t, 100));
                                    ok += 1;
                                }
                                Err(e) => assert_eq!(e.code, CACHEM_E_MISUSE),
                            }
                        }
                        ok
                    })
                })
                .collect();
            std::thread::sleep(std::time::Duration::from_millis(2));
            let closed = loop {
                match unregister(t) {
                    Ok(h) => break h,
                    Err(e) => assert_eq!(e.code, CACHEM_E_BUSY),
                }
            };
            // Freed while the readers still run: none of them may hold it.
            drop(closed);
            stop.store(true, Relaxed);
            for r in readers {
                r.join().unwrap();
            }
            assert!(lookup(t).is_err());
        }
    }
}

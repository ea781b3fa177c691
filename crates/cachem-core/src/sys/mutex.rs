//! The process-shared, robust pthread mutex that lives in the region's
//! trailer (its last 64 bytes).
//!
//! A pthread mutex must never move after initialisation: this one lives in
//! the trailer of a mapping, which nothing moves or copies while it is in
//! use. All functions take the raw address of the mutex bytes.
//!
//! ## What this module assumes of glibc's `pthread_mutex_t`
//!
//! Besides the pthread calls, two functions read the mutex's bytes: the
//! lock word ([`owner_word`], for the dead-tid rule) and the kind
//! ([`kind`], checked at attach). They rely on glibc's layout on x86_64 and
//! aarch64 (`struct __pthread_mutex_s`): the futex word `__lock` at byte 0
//! (for a robust mutex: the owner's tid in the low 30 bits,
//! [`FUTEX_OWNER_DIED`] and [`FUTEX_WAITERS`] above it, the kernel's robust
//! futex ABI) and `__kind` at byte 16. [`layout_ok`] checks both on a
//! scratch mutex (its kind is the one `init` gives, its lock word is 0
//! unlocked and our tid locked) before attach trusts them; if the check
//! fails (another libc), the dead-tid rule is off and attach does not
//! check the kind, and the lock still waits with a bound (the timeout).

use std::io;
use std::sync::atomic::{AtomicI32, AtomicU32, Ordering};
use std::sync::OnceLock;
use std::time::Duration;

/// The owner's tid in a robust futex word.
pub const FUTEX_TID_MASK: u32 = 0x3fff_ffff;
/// Set in a robust futex word when its owner died holding it.
pub const FUTEX_OWNER_DIED: u32 = 0x4000_0000;
/// Set in a futex word when a thread sleeps on it.
pub const FUTEX_WAITERS: u32 = 0x8000_0000;
/// Byte offset of glibc's `__kind` in `pthread_mutex_t` (x86_64, aarch64).
const KIND_OFFSET: usize = 16;

/// What `lock` found.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Locked {
    /// The lock was free or released normally.
    Clean,
    /// The previous owner died holding it (`EOWNERDEAD`): the data it
    /// protects may be half-modified. Recover, then call [`make_consistent`].
    OwnerDied,
}

/// Why `lock` failed.
#[derive(Debug)]
pub enum LockError {
    /// `ENOTRECOVERABLE`: a previous owner-died lock was released without
    /// being made consistent.
    NotRecoverable,
    /// `EDEADLK`: this thread already holds the lock.
    Deadlock,
    /// `EBUSY` from [`try_lock`], `ETIMEDOUT` from [`lock_for`]: another
    /// thread holds the lock.
    Busy,
    /// Anything else.
    Other(io::Error),
}

/// Initialises a process-shared, robust, error-checking mutex at `m`.
///
/// # Safety
/// `m` must point to at least `size_of::<pthread_mutex_t>()` writable bytes,
/// 8-aligned, that no process uses as a mutex right now.
pub unsafe fn init(m: *mut libc::pthread_mutex_t) -> io::Result<()> {
    // SAFETY: attr is a local, initialised by pthread_mutexattr_init before
    // any other use and destroyed before return; `m` is valid per the
    // caller's contract.
    unsafe {
        let mut attr = std::mem::MaybeUninit::<libc::pthread_mutexattr_t>::uninit();
        check(libc::pthread_mutexattr_init(attr.as_mut_ptr()))?;
        let a = attr.as_mut_ptr();
        let r = (|| {
            check(libc::pthread_mutexattr_setpshared(a, libc::PTHREAD_PROCESS_SHARED))?;
            check(libc::pthread_mutexattr_setrobust(a, libc::PTHREAD_MUTEX_ROBUST))?;
            check(libc::pthread_mutexattr_settype(a, libc::PTHREAD_MUTEX_ERRORCHECK))?;
            check(libc::pthread_mutex_init(m, a))
        })();
        libc::pthread_mutexattr_destroy(a);
        r
    }
}

/// Takes the mutex at `m` if it is free (or its owner died); never waits.
///
/// # Safety
/// `m` must point to a mutex initialised by [`init`] in memory that stays
/// mapped until the matching [`unlock`].
#[inline(always)]
pub unsafe fn try_lock(m: *mut libc::pthread_mutex_t) -> Result<Locked, LockError> {
    // SAFETY: per the caller's contract.
    result(unsafe { libc::pthread_mutex_trylock(m) })
}

/// Locks the mutex at `m`, waiting at most about `slice` (a deadline on
/// `CLOCK_REALTIME`, which `pthread_mutex_timedlock` uses: a clock step
/// lengthens or shortens one slice, never the caller's overall bound, which
/// it measures on the monotonic clock).
///
/// # Safety
/// `m` must point to a mutex initialised by [`init`] in memory that stays
/// mapped until the matching [`unlock`].
pub unsafe fn lock_for(m: *mut libc::pthread_mutex_t, slice: Duration) -> Result<Locked, LockError> {
    let mut now = libc::timespec { tv_sec: 0, tv_nsec: 0 };
    // SAFETY: `now` is a valid out-pointer.
    unsafe { libc::clock_gettime(libc::CLOCK_REALTIME, &mut now) };
    let ns = now.tv_nsec as u64 + u64::from(slice.subsec_nanos());
    let deadline = libc::timespec {
        tv_sec: now.tv_sec.saturating_add(
            slice.as_secs().min(1 << 30) as libc::time_t + (ns / 1_000_000_000) as libc::time_t,
        ),
        tv_nsec: (ns % 1_000_000_000) as _,
    };
    // SAFETY: per the caller's contract; `deadline` is a valid timespec.
    result(unsafe { libc::pthread_mutex_timedlock(m, &deadline) })
}

#[inline(always)]
fn result(rc: libc::c_int) -> Result<Locked, LockError> {
    match rc {
        0 => Ok(Locked::Clean),
        libc::EOWNERDEAD => Ok(Locked::OwnerDied),
        libc::ENOTRECOVERABLE => Err(LockError::NotRecoverable),
        libc::EDEADLK => Err(LockError::Deadlock),
        libc::EBUSY | libc::ETIMEDOUT => Err(LockError::Busy),
        e => Err(LockError::Other(io::Error::from_raw_os_error(e))),
    }
}

/// The mutex's futex word (glibc's `__lock`), read atomically: the
/// holder's tid (`& FUTEX_TID_MASK`, 0 when free) and the
/// [`FUTEX_OWNER_DIED`] and [`FUTEX_WAITERS`] bits.
///
/// # Safety
/// `m` must point to the mutex bytes, 8-aligned, in memory that stays
/// mapped during the call.
pub unsafe fn owner_word(m: *mut libc::pthread_mutex_t) -> u32 {
    // SAFETY: the word is 4-aligned (the mutex is 8-aligned) and inside the
    // mapping; other threads change it only through atomic operations
    // (glibc's CAS, the kernel's futex code), so an atomic load is the
    // right way to read it.
    unsafe { AtomicU32::from_ptr(m.cast::<u32>()) }.load(Ordering::Acquire)
}

/// The mutex's kind (glibc's `__kind`: type, robust and process-shared
/// bits), read atomically (glibc reads it with relaxed atomic loads).
///
/// # Safety
/// As for [`owner_word`].
pub unsafe fn kind(m: *mut libc::pthread_mutex_t) -> u32 {
    // SAFETY: 4-aligned, inside the mutex bytes (KIND_OFFSET + 4 <= SIZE,
    // asserted below) and the mapping.
    unsafe { AtomicI32::from_ptr(m.cast::<u8>().add(KIND_OFFSET).cast::<i32>()) }.load(Ordering::Relaxed)
        as u32
}

/// The kind [`init`] gives a mutex here, if this libc lays the mutex out
/// as this module assumes (see the module's documentation); `None` if not,
/// and then the dead-tid rule and the kind check are off.
pub fn layout_ok() -> Option<u32> {
    static KIND: OnceLock<Option<u32>> = OnceLock::new();
    *KIND.get_or_init(|| {
        let mut scratch = Box::new(std::mem::MaybeUninit::<libc::pthread_mutex_t>::zeroed());
        let m = scratch.as_mut_ptr();
        // SAFETY: a private, zeroed, 8-aligned heap mutex that no other
        // thread knows; it is locked and unlocked by this thread only and
        // never moved while initialised.
        unsafe {
            init(m).ok()?;
            let k = kind(m);
            let free = owner_word(m);
            try_lock(m).ok()?;
            let held = owner_word(m);
            unlock(m).ok()?;
            libc::pthread_mutex_destroy(m);
            let tid = libc::gettid() as u32;
            (k != 0 && free == 0 && held & FUTEX_TID_MASK == tid).then_some(k)
        }
    })
}

/// Makes the transition the kernel makes for a robust futex whose owner
/// exits (its `handle_futex_death`): if the lock word still equals `seen`
/// (naming a holder the caller has found not to exist), it becomes
/// `FUTEX_OWNER_DIED` (keeping `FUTEX_WAITERS`), and one sleeping waiter is
/// woken. The next locker then gets `EOWNERDEAD` and recovers. Returns
/// whether the word was changed. The compare-and-swap makes it safe against
/// the real owner releasing it (or the kernel doing the same) meanwhile:
/// then the word differs and nothing is written.
///
/// # Safety
/// As for [`owner_word`].
pub unsafe fn mark_owner_died(m: *mut libc::pthread_mutex_t, seen: u32) -> bool {
    // SAFETY: as in `owner_word`: an aligned atomic word in the mapping.
    let word = unsafe { AtomicU32::from_ptr(m.cast::<u32>()) };
    let new = (seen & FUTEX_WAITERS) | FUTEX_OWNER_DIED;
    if word.compare_exchange(seen, new, Ordering::AcqRel, Ordering::Relaxed).is_err() {
        return false;
    }
    if seen & FUTEX_WAITERS != 0 {
        // SAFETY: FUTEX_WAKE on a valid, mapped futex word; it wakes at
        // most one thread and touches no memory. Not FUTEX_PRIVATE: the
        // mutex is process-shared.
        unsafe { libc::syscall(libc::SYS_futex, m.cast::<u32>(), libc::FUTEX_WAKE, 1, 0, 0, 0) };
    }
    true
}

/// Locks the mutex at `m`, waiting as long as it takes (benchmarks and
/// tests; the region lock waits in slices, see `region/lock.rs`).
///
/// # Safety
/// `m` must point to a mutex initialised by [`init`] in memory that stays
/// mapped until the matching [`unlock`].
#[inline]
pub unsafe fn lock(m: *mut libc::pthread_mutex_t) -> Result<Locked, LockError> {
    // SAFETY: per the caller's contract.
    result(unsafe { libc::pthread_mutex_lock(m) })
}

/// Marks a mutex obtained with [`Locked::OwnerDied`] consistent again.
///
/// # Safety
/// The calling thread must hold the mutex at `m`.
pub unsafe fn make_consistent(m: *mut libc::pthread_mutex_t) -> io::Result<()> {
    // SAFETY: per the caller's contract.
    check(unsafe { libc::pthread_mutex_consistent(m) })
}

/// Unlocks the mutex at `m`.
///
/// # Safety
/// The calling thread must hold the mutex at `m`.
#[inline]
pub unsafe fn unlock(m: *mut libc::pthread_mutex_t) -> io::Result<()> {
    // SAFETY: per the caller's contract.
    check(unsafe { libc::pthread_mutex_unlock(m) })
}

#[inline]
fn check(rc: libc::c_int) -> io::Result<()> {
    if rc == 0 {
        Ok(())
    } else {
        Err(io::Error::from_raw_os_error(rc))
    }
}

/// `size_of::<pthread_mutex_t>()` on this platform (recorded in the header).
pub const SIZE: usize = std::mem::size_of::<libc::pthread_mutex_t>();
const _: () = assert!(SIZE <= crate::format::MUTEX_BYTES);
const _: () = assert!(std::mem::align_of::<libc::pthread_mutex_t>() <= 8);
const _: () = assert!(KIND_OFFSET + 4 <= SIZE);

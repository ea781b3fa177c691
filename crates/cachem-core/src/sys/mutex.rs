//! The process-shared, robust pthread mutex that lives in the region header.
//!
//! A pthread mutex must never move after initialisation: this one lives in
//! the header of a mapping, which nothing moves or copies while it is in use.
//! All functions take the raw address of the mutex bytes.

use std::io;

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

/// Locks the mutex at `m`, waiting as long as it takes.
///
/// # Safety
/// `m` must point to a mutex initialised by [`init`] in memory that stays
/// mapped until the matching [`unlock`].
#[inline]
pub unsafe fn lock(m: *mut libc::pthread_mutex_t) -> Result<Locked, LockError> {
    // SAFETY: per the caller's contract.
    match unsafe { libc::pthread_mutex_lock(m) } {
        0 => Ok(Locked::Clean),
        libc::EOWNERDEAD => Ok(Locked::OwnerDied),
        libc::ENOTRECOVERABLE => Err(LockError::NotRecoverable),
        libc::EDEADLK => Err(LockError::Deadlock),
        e => Err(LockError::Other(io::Error::from_raw_os_error(e))),
    }
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

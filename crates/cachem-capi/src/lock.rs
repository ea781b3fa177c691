//! Owner ids and the region lock: `cachem_id` (a name's id, or a fresh
//! one), `cachem_lock` and `cachem_unlock` (the per-thread region lock held
//! across calls).

use crate::args::{handle, need, opt_str, put, token};
use crate::fail::{ffi, Fail};
use crate::state;
use crate::{cachem_error_t, cachem_id_t, cachem_t};
use std::ffi::c_char;

/// The owner id of `name`: the same in every process for the life of the
/// region (mod_cachem's cachem_id). NULL `name`: a fresh id never returned
/// before. Answered from the region's own name table (no helper process, no
/// file): a name resolved before by this handle costs no lock; any other
/// takes the region lock for about a microsecond (or uses the lock this
/// thread holds: it may be called holding it).
///
/// Returns `CACHEM_OK` with `*out` set, or:
/// - `CACHEM_E_INVALID_ARGUMENT`: `out` NULL; a name that is empty, longer
///   than 4096 bytes, or not UTF-8;
/// - `CACHEM_E_MISUSE`: bad handle;
/// - `CACHEM_E_NO_ROOM`: a new name's record does not fit in the region
///   (names live in it: each takes a table entry and a block);
/// - `CACHEM_E_REGISTRY`: every id has been handed out;
/// - lock errors, when the name is not memoised by this handle and the
///   thread does not hold the lock: `CACHEM_E_LOCK_TIMEOUT`,
///   `CACHEM_E_LOCK_UNRECOVERABLE`, `CACHEM_E_CORRUPT`, `CACHEM_E_IO` (as
///   for `cachem_lock`).
///
/// # Safety
/// `name` is NULL or NUL-terminated; `out` is NULL or writable.
#[no_mangle]
pub unsafe extern "C" fn cachem_id(
    c: *mut cachem_t,
    name: *const c_char,
    out: *mut cachem_id_t,
) -> cachem_error_t {
    ffi("cachem_id", || {
        need(out, "out")?;
        let h = handle(c)?;
        // SAFETY: per this function's contract.
        let id = match unsafe { opt_str(name, "the owner name") }? {
            Some(n) => match h.cache.memoised(n) {
                Some(id) => id,
                None => state::with_guard(&h, |g| Ok(h.cache.id_in(g, n)?))?,
            },
            None => state::with_guard(&h, |g| Ok(h.cache.unique_id_in(g)?))?,
        };
        // SAFETY: checked non-NULL above; writable per the contract.
        unsafe { put(out, id.get()) };
        Ok(())
    })
}

/// Takes the region lock for the calling thread (recovering the region
/// first if a holder died). The lock is per thread: other threads sharing
/// the handle wait. Hold it briefly: every process of the region waits.
///
/// The lock belongs to the region and the thread, not to the handle: a
/// thread that took it through one handle holds it for every handle it
/// has of that region. Calls through any of them run under it
/// (`cachem_get` works), `cachem_lock` through any of them is
/// `CACHEM_E_ALREADY_LOCKED`, and `cachem_unlock` through any of them
/// releases it. Until then the handle it was taken through is in use
/// (`cachem_close` on it is `CACHEM_E_BUSY`).
///
/// Returns `CACHEM_OK`, or:
/// - `CACHEM_E_ALREADY_LOCKED`: this thread holds it already (through this
///   or another handle of the region): an error, never a hang;
/// - `CACHEM_E_MISUSE`: bad handle;
/// - `CACHEM_E_LOCK_TIMEOUT`: a live process held the lock past
///   `opts->lock_timeout_ms` (the detail names its pid);
/// - `CACHEM_E_LOCK_UNRECOVERABLE`, `CACHEM_E_CORRUPT` (recovery failed),
///   `CACHEM_E_IO`.
///
/// # Safety
/// None (any handle value is checked).
#[no_mangle]
pub unsafe extern "C" fn cachem_lock(c: *mut cachem_t) -> cachem_error_t {
    ffi("cachem_lock", || state::lock(handle(c)?))
}

/// Releases the lock the calling thread took with `cachem_lock`, through
/// this handle or another handle of the same region. Pointers from
/// `cachem_get` are invalid afterwards.
///
/// Returns `CACHEM_OK`, or `CACHEM_E_NOT_LOCKED` (this thread does not hold
/// this region's lock: unlock by a thread that did not lock, a second
/// unlock), `CACHEM_E_MISUSE` (bad handle).
///
/// # Safety
/// None (any handle value is checked).
#[no_mangle]
pub unsafe extern "C" fn cachem_unlock(c: *mut cachem_t) -> cachem_error_t {
    ffi("cachem_unlock", || {
        if c.is_null() {
            return Err(Fail::invalid("the handle is NULL"));
        }
        if !state::well_formed(token(c)) {
            return Err(Fail::misuse(format!("{:#x} is not a cachem handle", token(c))));
        }
        state::unlock(token(c))
    })
}

/// Sets how long this handle's locks wait for a live holder that does not
/// let go before failing with `CACHEM_E_LOCK_TIMEOUT`, in milliseconds; 0:
/// wait as long as it takes (the library default). What
/// `cachem_options_t.lock_timeout_ms` sets at open; this changes it on an
/// open handle (a server whose configuration changed at a reload). Locks
/// already waiting keep the timeout they started with.
///
/// Returns `CACHEM_OK`, or `CACHEM_E_MISUSE` (bad handle).
///
/// # Safety
/// None (any handle value is checked).
#[no_mangle]
pub unsafe extern "C" fn cachem_set_lock_timeout(c: *mut cachem_t, ms: u64) -> cachem_error_t {
    ffi("cachem_set_lock_timeout", || {
        let t = (ms != 0).then(|| std::time::Duration::from_millis(ms));
        handle(c)?.cache.region().set_lock_timeout(t);
        Ok(())
    })
}

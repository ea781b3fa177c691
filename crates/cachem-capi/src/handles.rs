//! Opening and closing: the options' defaults, `cachem_open` (create or
//! attach, register the handle), `cachem_close` (unregister; the last
//! handle purges the process's process-scoped records) and
//! `cachem_destroy` (remove a named region's files without attaching).

use crate::args::{config, need, put, read_options, token};
use crate::cachem_error_t::*;
use crate::fail::ffi;
use crate::state;
use crate::{cachem_error_t, cachem_options_t, cachem_t};
use cachem_rs::Cache;
use std::ffi::c_char;

/// Fills `*opts` with the defaults (what `CACHEM_OPTIONS_INIT` gives).
/// Does nothing if `opts` is NULL.
///
/// # Safety
/// `opts` is NULL or points to a writable `cachem_options_t`.
#[no_mangle]
pub unsafe extern "C" fn cachem_options_init(opts: *mut cachem_options_t) {
    // SAFETY: per the contract above.
    unsafe { put(opts, cachem_options_t::default()) }
}

/// Creates or attaches a region and returns its handle (mod_cachem's
/// cachem_handler_init).
///
/// `name`: an absolute path, a plain file name in the runtime directory, or
/// NULL for an anonymous region shared with children forked after this call.
/// `size`: bytes, a multiple of 8 and at least one page, to create with (and
/// to expect when attaching, unless `opts->attach_any_size`); 0 attaches to
/// an existing named region at whatever size it has. `opts`: NULL for the
/// defaults. Dead processes' records are reaped on attach.
///
/// Returns the handle, or NULL with `*err` set (if `err` is not NULL) to:
/// - `CACHEM_E_INVALID_ARGUMENT`: bad name, size, mode, reap value, owner
///   id, an unknown `opts->struct_size`, anonymous with size 0, an option
///   the existing region cannot honour (e.g. `CACHEM_REAP_ALL` on a region
///   created without it);
/// - `CACHEM_E_NOT_FOUND`: `attach_only` (or size 0) and no such region;
/// - `CACHEM_E_SIZE_MISMATCH`: the region exists with another size;
/// - `CACHEM_E_CORRUPT`, `CACHEM_E_VERSION`: the file is not a usable region;
/// - `CACHEM_E_PERMISSION`, `CACHEM_E_IO`: the files could not be made,
///   opened or given to `owner_uid` / `owner_gid` (root only), or the
///   runtime directory is not safe to use (a symlink, another user's,
///   writable by everyone without the sticky bit: the message says how to
///   fix it; see docs/operations.md);
/// - `CACHEM_E_LOCK_UNRECOVERABLE`, `CACHEM_E_PID_NAMESPACE`,
///   `CACHEM_E_ALREADY_LOCKED` (this thread holds the region's lock through
///   another handle), `CACHEM_E_INTERNAL`;
/// - `CACHEM_E_TOO_MANY_HANDLES`: 4096 handles are open in this process.
///
/// # Safety
/// `name` is NULL or a NUL-terminated string; `opts` is NULL or a
/// `cachem_options_t` whose strings are NULL or NUL-terminated; `err` is
/// NULL or writable.
#[no_mangle]
pub unsafe extern "C" fn cachem_open(
    name: *const c_char,
    size: u64,
    opts: *const cachem_options_t,
    err: *mut cachem_error_t,
) -> *mut cachem_t {
    let mut out = 0u64;
    let code = ffi("cachem_open", || {
        // SAFETY: per this function's contract.
        let o = unsafe { read_options(opts) }?;
        // SAFETY: per this function's contract.
        let cfg = unsafe { config(name, size, &o) }?;
        let cache = Cache::open(&cfg)?;
        let max = cache.max_record_len();
        out = state::register(cache, max)?;
        Ok(())
    });
    // SAFETY: per this function's contract.
    unsafe { put(err, code) };
    if code == CACHEM_OK {
        out as usize as *mut cachem_t
    } else {
        std::ptr::null_mut()
    }
}

/// Closes a handle. The process's process-scoped records in the region are
/// deleted when its last handle (Rust or C) of the region is closed. The
/// region itself stays (see `cachem_destroy`). The handle is invalid
/// afterwards: using it again returns `CACHEM_E_MISUSE`.
///
/// Returns `CACHEM_OK` (also for NULL), or:
/// - `CACHEM_E_BUSY`: a thread (this one included) holds the lock through
///   this handle, or a call through it is running on another thread;
///   nothing was closed;
/// - `CACHEM_E_MISUSE`: not an open handle (already closed?).
///
/// # Safety
/// None beyond passing a value `cachem_open` returned (any value is checked).
#[no_mangle]
pub unsafe extern "C" fn cachem_close(c: *mut cachem_t) -> cachem_error_t {
    if c.is_null() {
        return CACHEM_OK;
    }
    ffi("cachem_close", || {
        let h = state::unregister(token(c))?;
        // Dropped outside the registry lock: the last reference purges this
        // process's process-scoped records, which takes the region lock.
        drop(h);
        Ok(())
    })
}

/// Removes a named region's file, its lockfile and its id store without
/// attaching. Processes still attached keep their mapping; the next
/// `cachem_open` creates a new region (new generation, new ids).
///
/// Returns `CACHEM_OK`, or `CACHEM_E_INVALID_ARGUMENT` (NULL or bad name,
/// bad options), `CACHEM_E_NOT_FOUND`, `CACHEM_E_PERMISSION`, `CACHEM_E_IO`.
///
/// # Safety
/// `name` is NULL or NUL-terminated; `opts` as for `cachem_open`.
#[no_mangle]
pub unsafe extern "C" fn cachem_destroy(
    name: *const c_char,
    opts: *const cachem_options_t,
) -> cachem_error_t {
    ffi("cachem_destroy", || {
        need(name, "name")?;
        // SAFETY: per this function's contract.
        let o = unsafe { read_options(opts) }?;
        // SAFETY: per this function's contract.
        let cfg = unsafe { config(name, 0, &o) }?;
        cachem_rs::destroy(&cfg)?;
        Ok(())
    })
}

/// Checks that `size` can be the size of a new region (a multiple of 8, at
/// least one page, below 4 GiB), without touching any file: what
/// `cachem_open` would refuse with `CACHEM_E_INVALID_ARGUMENT`. For
/// configuration checks (mod_cachem's `CACHEM` directive at `apache2 -t`).
///
/// Returns `CACHEM_OK`, or `CACHEM_E_INVALID_ARGUMENT` with the reason in
/// `cachem_last_error_message`.
///
/// # Safety
/// None.
#[no_mangle]
pub unsafe extern "C" fn cachem_check_size(size: u64) -> cachem_error_t {
    ffi("cachem_check_size", || Ok(cachem_rs::region::check_create_size(size)?))
}

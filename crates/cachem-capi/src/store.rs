//! Snapshots of the owned records (`cachem_save`, `cachem_restore`), and
//! `cachem_max_record_len` (kept after them so that the generated header's
//! order of functions does not change).

use crate::args::{handle, opt_path};
use crate::fail::{ffi, Fail};
use crate::state;
use crate::{cachem_error_t, cachem_t};
use std::ffi::c_char;

/// Writes the region's records (all but process-scoped ones) with their
/// owners' names to the file `path`, atomically (a temporary file beside it,
/// synced, then renamed): the path holds the old snapshot or the new one.
/// Call without holding the lock.
///
/// Returns `CACHEM_OK`, or `CACHEM_E_ALREADY_LOCKED` (this thread holds the
/// lock), `CACHEM_E_INVALID_ARGUMENT` (`path` NULL, empty, or naming no
/// file: `"/"`, `"."`, `".."`, a path ending in `/`, `.` or `..`, an
/// existing directory), `CACHEM_E_PERMISSION`, `CACHEM_E_IO` (nothing
/// replaced; e.g. the directory does not exist), `CACHEM_E_REGISTRY`,
/// `CACHEM_E_MISUSE`.
///
/// # Safety
/// `path` is NULL or NUL-terminated.
#[no_mangle]
pub unsafe extern "C" fn cachem_save(c: *mut cachem_t, path: *const c_char) -> cachem_error_t {
    ffi("cachem_save", || {
        let h = handle(c)?;
        // SAFETY: per this function's contract.
        let p = unsafe { opt_path(path) }.ok_or_else(|| Fail::invalid("path is NULL"))?;
        file_path(&p)?;
        if state::holds(&h)? {
            return Err(Fail::already_locked("cachem_unlock first: saving takes the lock itself"));
        }
        h.cache.save(p)?;
        Ok(())
    })
}

/// Refuses a snapshot path that names no file to write.
fn file_path(p: &std::path::Path) -> Result<(), Fail> {
    let b = p.as_os_str().as_encoded_bytes();
    let last = b.rsplit(|&c| c == b'/').next().unwrap_or(b);
    if b.is_empty() || b.ends_with(b"/") || last == b"." || last == b".." || p.is_dir() {
        return Err(Fail::invalid(format!("{:?} names no file to write the snapshot to", p)));
    }
    Ok(())
}

/// Adds the records of the snapshot `path` to the region, owner ids
/// resolved again from the saved names (an unnamed owner gets a fresh
/// unique id); the records carry this process's pid. All or nothing: on
/// any error the region's records are as they were. Call without holding
/// the lock. Restoring twice adds the records twice.
///
/// Returns `CACHEM_OK`, or:
/// - `CACHEM_E_SNAPSHOT`: damaged (checksum, truncation), foreign (not a
///   cachem snapshot, other version), or a record too large for this region;
/// - `CACHEM_E_NO_ROOM`: the records do not all fit now;
/// - `CACHEM_E_ALREADY_LOCKED` (this thread holds the lock),
///   `CACHEM_E_INVALID_ARGUMENT` (`path` NULL), `CACHEM_E_IO` (cannot read
///   it), `CACHEM_E_PERMISSION`, `CACHEM_E_REGISTRY`, `CACHEM_E_MISUSE`.
///
/// # Safety
/// `path` is NULL or NUL-terminated.
#[no_mangle]
pub unsafe extern "C" fn cachem_restore(c: *mut cachem_t, path: *const c_char) -> cachem_error_t {
    ffi("cachem_restore", || {
        let h = handle(c)?;
        // SAFETY: per this function's contract.
        let p = unsafe { opt_path(path) }.ok_or_else(|| Fail::invalid("path is NULL"))?;
        if state::holds(&h)? {
            return Err(Fail::already_locked("cachem_unlock first: restoring takes the lock itself"));
        }
        h.cache.restore(p)?;
        Ok(())
    })
}

/// The largest record this region can hold (0 for a bad handle, with the
/// detail in `cachem_last_error_message`).
///
/// # Safety
/// None (the handle is checked).
#[no_mangle]
pub unsafe extern "C" fn cachem_max_record_len(c: *mut cachem_t) -> u64 {
    let mut v = 0;
    ffi("cachem_max_record_len", || {
        v = handle(c)?.max_record_len;
        Ok(())
    });
    v
}

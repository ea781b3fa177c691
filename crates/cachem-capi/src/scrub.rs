//! Maintenance of a region: reaping dead processes' records now
//! (`cachem_reap`) and checking every invariant (`cachem_verify`).

use crate::args::{put, token};
use crate::fail::ffi;
use crate::state;
use crate::{cachem_error_t, cachem_reap_report_t, cachem_t};

/// Deletes the records of dead processes now (their process-scoped
/// records, or all of them in a region created with `CACHEM_REAP_ALL`).
/// Fills `*report` if not NULL. Without the lock, takes and releases it.
///
/// Returns `CACHEM_OK`, or `CACHEM_E_MISUSE`, `CACHEM_E_CORRUPT`, lock errors.
///
/// # Safety
/// `report` is NULL or writable.
#[no_mangle]
pub unsafe extern "C" fn cachem_reap(c: *mut cachem_t, report: *mut cachem_reap_report_t) -> cachem_error_t {
    ffi("cachem_reap", || {
        let r = state::locked(token(c), |_, g| Ok(g.reap()?))?;
        let rep = cachem_reap_report_t {
            processes: r.dead.len() as u64,
            records: r.records as u64,
            bytes: r.bytes,
        };
        // SAFETY: per this function's contract.
        unsafe { put(report, rep) };
        Ok(())
    })
}

/// Checks every invariant of the region. Without the lock, takes and
/// releases it.
///
/// Returns `CACHEM_OK`, or `CACHEM_E_CORRUPT` (the detail names the field
/// and value), `CACHEM_E_MISUSE`, lock errors.
///
/// # Safety
/// None (all arguments are checked).
#[no_mangle]
pub unsafe extern "C" fn cachem_verify(c: *mut cachem_t) -> cachem_error_t {
    ffi("cachem_verify", || {
        state::locked(token(c), |_, g| {
            g.verify()?;
            Ok(())
        })
    })
}

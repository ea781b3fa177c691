//! The region's figures: `cachem_stat` (the scalar figures in one struct)
//! and `cachem_status_json` (the report of `cachem stat --json`, for
//! scripts).

use crate::args::{handle, need, put, token};
use crate::cachem_error_t::*;
use crate::fail::{ffi, Fail};
use crate::state;
use crate::{cachem_compaction_t, cachem_error_t, cachem_stat_t, cachem_t};
use std::ffi::c_char;

/// Fills `*out` with the region's figures. Without the lock, takes and
/// releases it (process liveness is read from /proc).
///
/// Returns `CACHEM_OK`, or `CACHEM_E_INVALID_ARGUMENT` (`out` NULL),
/// `CACHEM_E_MISUSE`, `CACHEM_E_CORRUPT`, lock errors.
///
/// # Safety
/// `out` is NULL or writable.
#[no_mangle]
pub unsafe extern "C" fn cachem_stat(c: *mut cachem_t, out: *mut cachem_stat_t) -> cachem_error_t {
    ffi("cachem_stat", || {
        need(out, "out")?;
        let (st, max) = state::locked(token(c), |h, g| Ok((g.status()?, h.max_record_len)))?;
        let dead = st
            .pids
            .iter()
            .filter(|p| !cachem_rs::sys::process::is_alive(p.pid, p.start_time))
            .map(|p| p.pid)
            .collect::<std::collections::BTreeSet<_>>()
            .len();
        let pids = st.pids.iter().map(|p| p.pid).collect::<std::collections::BTreeSet<_>>().len();
        let s = cachem_stat_t {
            size: st.size,
            used_bytes: st.used_bytes,
            free_bytes: st.free_bytes,
            records: st.records as u64,
            slots: st.slots as u64,
            max_record_len: max,
            owners: st.owners.len() as u64,
            processes: pids as u64,
            dead_processes: dead as u64,
            inserts: st.counters.inserts,
            removes: st.counters.removes,
            bytes_moved: st.counters.bytes_moved,
            reaps: st.counters.reaped_records,
            recoveries: st.counters.recoveries,
            free_slots: st.free_slots as u64,
            table_bytes: st.table_bytes,
            header_bytes: st.header_size,
            generation: st.generation,
            dead_bytes: st.dead_bytes,
            dead_blocks: st.dead_blocks as u64,
            compaction: match st.compaction {
                cachem_rs::Compaction::Eager => cachem_compaction_t::CACHEM_COMPACTION_EAGER as u64,
                _ => cachem_compaction_t::CACHEM_COMPACTION_DEFERRED as u64,
            },
        };
        // SAFETY: checked non-NULL, writable per the contract.
        unsafe { put(out, s) };
        Ok(())
    })
}

/// Writes the status report as JSON (the text of `cachem stat --json`:
/// geometry, usage per owner with names and per process with liveness,
/// counters), NUL-terminated, into `buf` of `len` bytes. `*needed` (if not
/// NULL) gets the size including the NUL. Works with or without the lock.
///
/// Returns `CACHEM_OK`, or `CACHEM_E_BUFFER_TOO_SMALL` (nothing written but
/// `*needed`), `CACHEM_E_INVALID_ARGUMENT` (`buf` NULL with `len` > 0),
/// `CACHEM_E_MISUSE`, `CACHEM_E_REGISTRY`, `CACHEM_E_CORRUPT`, lock errors.
///
/// # Safety
/// `buf` is NULL or writable for `len` bytes; `needed` is NULL or writable.
#[no_mangle]
pub unsafe extern "C" fn cachem_status_json(
    c: *mut cachem_t,
    buf: *mut c_char,
    len: usize,
    needed: *mut usize,
) -> cachem_error_t {
    ffi("cachem_status_json", || {
        if buf.is_null() && len > 0 {
            return Err(Fail::invalid("buf is NULL"));
        }
        let h = handle(c)?;
        let st = match state::with_held_guard(&h, |g| Ok(h.cache.status_locked(g)?))? {
            Some(st) => st,
            None => h.cache.status()?,
        };
        let text = st.to_json().to_string();
        // SAFETY: per this function's contract.
        unsafe { put(needed, text.len() + 1) };
        if text.len() + 1 > len {
            return Err(Fail::new(
                CACHEM_E_BUFFER_TOO_SMALL,
                format!("the report needs {} bytes, the buffer has {len}", text.len() + 1),
            ));
        }
        // SAFETY: buf is writable for len > text.len() bytes per the contract.
        unsafe {
            std::ptr::copy_nonoverlapping(text.as_ptr(), buf.cast::<u8>(), text.len());
            buf.add(text.len()).write(0);
        }
        Ok(())
    })
}

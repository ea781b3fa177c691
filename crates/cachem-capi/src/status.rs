//! The region's figures: `cachem_stat` (the scalar figures in one struct),
//! `cachem_status_json` (the report of `cachem stat --json`, for scripts),
//! and the same report without JSON: `cachem_status` (its numbers) and
//! `cachem_status_owners` / `cachem_status_pids` (its rows, through
//! callbacks run with no lock held).

use crate::args::{handle, need, put, token};
use crate::cachem_error_t::*;
use crate::fail::{ffi, Fail};
use crate::state;
use crate::{cachem_compaction_t, cachem_error_t, cachem_id_t, cachem_stat_t, cachem_t};
use std::collections::BTreeSet;
use std::ffi::{c_char, c_int, c_void};

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
        // Dead processes with records a reap removes (the alert figure).
        let dead = st
            .pids
            .iter()
            .filter(|p| p.reapable > 0 && !cachem_rs::sys::process::is_alive(p.pid, p.start_time))
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
/// A length query: `buf` NULL and `len` 0 writes nothing and returns
/// `CACHEM_OK` with `*needed` set (`needed` must not be NULL then).
///
/// Returns `CACHEM_OK`, or `CACHEM_E_BUFFER_TOO_SMALL` (a non-NULL `buf`
/// too small: nothing written but `*needed`), `CACHEM_E_INVALID_ARGUMENT`
/// (`buf` NULL with `len` > 0, a length query with `needed` NULL),
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
        if buf.is_null() && needed.is_null() {
            return Err(Fail::invalid("a length query (buf NULL, len 0) needs needed"));
        }
        let (st, _) = snapshot(c)?;
        let text = st.to_json().to_string();
        // SAFETY: per this function's contract.
        unsafe { put(needed, text.len() + 1) };
        if buf.is_null() {
            return Ok(());
        }
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

// ----- the structured status (no JSON) ---------------------------------------

/// The report of `cachem_status_json` as one snapshot, under the lock this
/// thread holds (else a lock taken and released); with the handle's record
/// limit. No lock and no use of the handle outlive it.
fn snapshot(c: *mut cachem_t) -> Result<(cachem_rs::CacheStatus, u64), Fail> {
    let h = handle(c)?;
    let st = match state::with_held_guard(&h, |g| Ok(h.cache.status_locked(g)?))? {
        Some(st) => st,
        None => h.cache.status()?,
    };
    Ok((st, h.max_record_len))
}

/// The scalar figures of a region, as `cachem_status_json` reports them
/// (`cachem_status`). The first field is the struct's size: set it to
/// `sizeof(cachem_status_t)` (or start from `CACHEM_STATUS_INIT`), so the
/// struct can grow in later versions without breaking programs built
/// against this one. The region's path is not here: the caller named it.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default)]
pub struct cachem_status_t {
    /// `sizeof(cachem_status_t)`, set by the caller.
    pub struct_size: u32,
    /// The region's `cachem_compaction_t`.
    pub compaction: u32,
    /// Region size in bytes.
    pub size: u64,
    /// Bytes of the header.
    pub header_bytes: u64,
    /// Bytes of the block section (records, their headers and padding).
    pub used_bytes: u64,
    /// Bytes of the free gap.
    pub free_bytes: u64,
    /// Bytes of the block-pointer table.
    pub table_bytes: u64,
    /// Bytes of the lock at the end of the region.
    pub lock_bytes: u64,
    /// Bytes of deleted records' blocks waiting for a compaction (part of
    /// `used_bytes`).
    pub dead_bytes: u64,
    /// Deleted records' blocks waiting for a compaction.
    pub dead_blocks: u64,
    /// Live records (the owner-name table's records not counted).
    pub records: u64,
    /// Entries of the block-pointer table (live and free; the owner-name
    /// table's records hold entries too, so `slots - free_slots` can exceed
    /// `records`).
    pub slots: u64,
    /// Free entries of the block-pointer table.
    pub free_slots: u64,
    /// Largest record this region can hold.
    pub max_record_len: u64,
    /// Owners with records (the rows `cachem_status_owners` gives).
    pub owners: u64,
    /// Distinct inserting processes with records.
    pub processes: u64,
    /// Of those, dead processes with records a reap removes (their
    /// process-scoped records; all of them in a `CACHEM_REAP_ALL` region):
    /// above 0 for more than a few reap intervals, reaping is off or
    /// failing. Dead processes whose records are all kept are in
    /// `dead_pids_kept`, not here.
    pub dead_processes: u64,
    /// Rows `cachem_status_pids` gives: one per (pid, start time), so a
    /// reused pid has two.
    pub pid_rows: u64,
    /// Random id of this incarnation of the region.
    pub generation: u64,
    /// Records inserted since creation (the region's owner-name table's
    /// records included: `cachem_id` of a new name inserts one).
    pub inserts: u64,
    /// Records removed since creation.
    pub removes: u64,
    /// Bytes moved by compaction since creation.
    pub bytes_moved: u64,
    /// Records removed by reaping since creation.
    pub reaped_records: u64,
    /// Lock recoveries after a holder died, since creation.
    pub recoveries: u64,
    /// Compactions run since creation.
    pub compactions: u64,
    /// Bytes moved by the largest single compaction step (one lock hold:
    /// the longest pause a compaction caused).
    pub largest_compaction: u64,
    /// Non-zero: a holder died mid-change and the next lock recovers.
    pub recovery_required: u64,
    /// The boot id of the machine that created the region.
    pub boot_id: [u8; 16],
    /// Dead processes whose records are all kept (owned records outlive
    /// the process that inserted them; reaping leaves them): information,
    /// not a fault. Added after the first version of this struct.
    pub dead_pids_kept: u64,
}

/// One owner's usage, given to a `cachem_owner_cb`.
#[repr(C)]
#[derive(Clone, Copy, Debug)]
pub struct cachem_owner_usage_t {
    /// The owner id (`CACHEM_INVALID_ID`: the process-scoped records).
    pub id: cachem_id_t,
    /// Live records of the owner.
    pub records: u64,
    /// Their data bytes (without block headers and padding).
    pub bytes: u64,
    /// The owner's registered name, NUL-terminated; NULL for the
    /// process-scoped owner and for an owner without a name (a
    /// `cachem_id(c, NULL, ...)` id). Valid only during the callback:
    /// copy it to keep it.
    pub name: *const c_char,
    /// Bytes of `name` without the NUL (0 when `name` is NULL).
    pub name_len: usize,
}

/// One inserting process's usage, given to a `cachem_pid_cb`.
#[repr(C)]
#[derive(Clone, Copy, Debug)]
pub struct cachem_pid_usage_t {
    /// The process id.
    pub pid: u32,
    /// Non-zero: the process (this pid with this start time) is alive.
    pub alive: u32,
    /// The process's start time (clock ticks since boot), telling a reused
    /// pid from the process that inserted the records.
    pub start_time: u64,
    /// Live records the process inserted.
    pub records: u64,
    /// Their data bytes.
    pub bytes: u64,
    /// Of `records`, those a reap removes once the process is dead (its
    /// process-scoped records; all of them in a `CACHEM_REAP_ALL` region).
    pub reapable: u64,
}

/// Called once per owner by `cachem_status_owners`, with the caller's
/// `arg`. Return 0 to go on, non-zero to stop. `usage` is valid only during
/// the call. No cachem lock is held: the callback may call any cachem
/// function, on this handle too.
pub type cachem_owner_cb =
    Option<unsafe extern "C" fn(usage: *const cachem_owner_usage_t, arg: *mut c_void) -> c_int>;

/// Called once per process row by `cachem_status_pids`; as `cachem_owner_cb`.
pub type cachem_pid_cb =
    Option<unsafe extern "C" fn(usage: *const cachem_pid_usage_t, arg: *mut c_void) -> c_int>;

/// Fills `*out` with the region's scalar figures: every number of
/// `cachem_status_json` (geometry, usage, counters) plus the record limit
/// and the process counts of `cachem_stat`, from one snapshot. Set
/// `out->struct_size` first (`CACHEM_STATUS_INIT`); only that many bytes
/// are written. Works with or without the lock (without it, takes and
/// releases it; process liveness is read from /proc).
///
/// Returns `CACHEM_OK`, or `CACHEM_E_INVALID_ARGUMENT` (`out` NULL, or
/// `out->struct_size` not a size of any published `cachem_status_t`),
/// `CACHEM_E_MISUSE`, `CACHEM_E_REGISTRY`, `CACHEM_E_CORRUPT`, lock errors.
///
/// # Safety
/// `out` is NULL or points to at least `out->struct_size` writable bytes.
#[no_mangle]
pub unsafe extern "C" fn cachem_status(c: *mut cachem_t, out: *mut cachem_status_t) -> cachem_error_t {
    ffi("cachem_status", || {
        need(out, "out")?;
        // SAFETY: non-NULL; the first field of every version is the u32 size.
        let size = unsafe { std::ptr::read_unaligned(out.cast::<u32>()) } as usize;
        // Sizes of every published version of the struct, oldest first.
        const KNOWN: [usize; 2] =
            [std::mem::offset_of!(cachem_status_t, dead_pids_kept), std::mem::size_of::<cachem_status_t>()];
        if !KNOWN.contains(&size) {
            return Err(Fail::invalid(format!(
                "out->struct_size is {size}; this library knows {KNOWN:?} (start from CACHEM_STATUS_INIT)"
            )));
        }
        let (st, max) = snapshot(c)?;
        let r = &st.region;
        let processes = st.pids.iter().map(|p| p.pid).collect::<BTreeSet<_>>().len() as u64;
        let s = cachem_status_t {
            struct_size: size as u32,
            compaction: match r.compaction {
                cachem_rs::Compaction::Eager => cachem_compaction_t::CACHEM_COMPACTION_EAGER as u32,
                _ => cachem_compaction_t::CACHEM_COMPACTION_DEFERRED as u32,
            },
            size: r.size,
            header_bytes: r.header_size,
            used_bytes: r.used_bytes,
            free_bytes: r.free_bytes,
            table_bytes: r.table_bytes,
            lock_bytes: r.trailer_bytes,
            dead_bytes: r.dead_bytes,
            dead_blocks: r.dead_blocks as u64,
            records: r.records as u64,
            slots: r.slots as u64,
            free_slots: r.free_slots as u64,
            max_record_len: max,
            owners: r.owners.len() as u64,
            processes,
            dead_processes: st.dead_reapable_processes() as u64,
            pid_rows: st.pids.len() as u64,
            generation: r.generation,
            inserts: r.counters.inserts,
            removes: r.counters.removes,
            bytes_moved: r.counters.bytes_moved,
            reaped_records: r.counters.reaped_records,
            recoveries: r.counters.recoveries,
            compactions: r.counters.compactions,
            largest_compaction: r.counters.largest_compaction,
            recovery_required: r.recovery_required as u64,
            boot_id: r.boot_id,
            dead_pids_kept: st.dead_pids_with_kept_records() as u64,
        };
        // SAFETY: `out` has `size` writable bytes per the contract, and
        // `size` is at most ours; plain integers, any bit pattern is valid.
        unsafe {
            std::ptr::copy_nonoverlapping((&s as *const cachem_status_t).cast::<u8>(), out.cast::<u8>(), size)
        };
        Ok(())
    })
}

/// Calls `cb(usage, arg)` for each owner with records, in the order of
/// `cachem_status_json`'s "owners" (ascending id), from one snapshot taken
/// under the lock (this thread's, else one taken for the copy) and
/// released before the first call: the callback runs with no cachem lock
/// held, may call any cachem function (this handle included, even
/// `cachem_lock`), and sees figures that may since have changed. A non-zero
/// return stops the walk (still `CACHEM_OK`). `usage->name` is valid only
/// during its call.
///
/// Returns `CACHEM_OK`, or `CACHEM_E_INVALID_ARGUMENT` (`cb` NULL),
/// `CACHEM_E_MISUSE`, `CACHEM_E_REGISTRY`, `CACHEM_E_CORRUPT`, lock errors
/// (all before the first call).
///
/// # Safety
/// `cb` is NULL or a function safe to call with `arg`.
#[no_mangle]
pub unsafe extern "C" fn cachem_status_owners(
    c: *mut cachem_t,
    cb: cachem_owner_cb,
    arg: *mut c_void,
) -> cachem_error_t {
    ffi("cachem_status_owners", || {
        let cb = cb.ok_or_else(|| Fail::invalid("cb is NULL"))?;
        let (st, _) = snapshot(c)?;
        for o in &st.region.owners {
            let name = if o.owner.is_process() { None } else { st.owner_name(o.owner) };
            // NUL-terminated copy, alive until the callback returns.
            let z = name.map(|n| [n.as_bytes(), b"\0"].concat());
            let usage = cachem_owner_usage_t {
                id: o.owner.get(),
                records: o.records as u64,
                bytes: o.bytes,
                name: z.as_ref().map_or(std::ptr::null(), |z| z.as_ptr().cast()),
                name_len: name.map_or(0, str::len),
            };
            // SAFETY: per this function's contract; `usage` and its name
            // outlive the call.
            if unsafe { cb(&usage, arg) } != 0 {
                break;
            }
        }
        Ok(())
    })
}

/// Calls `cb(usage, arg)` for each inserting process with records: one row
/// per (pid, start time), in the order of `cachem_status_json`'s "pids",
/// with its liveness, from one snapshot; the lock, re-entry and stop rules
/// of `cachem_status_owners`.
///
/// Returns as `cachem_status_owners`.
///
/// # Safety
/// `cb` is NULL or a function safe to call with `arg`.
#[no_mangle]
pub unsafe extern "C" fn cachem_status_pids(
    c: *mut cachem_t,
    cb: cachem_pid_cb,
    arg: *mut c_void,
) -> cachem_error_t {
    ffi("cachem_status_pids", || {
        let cb = cb.ok_or_else(|| Fail::invalid("cb is NULL"))?;
        let (st, _) = snapshot(c)?;
        for p in &st.pids {
            let usage = cachem_pid_usage_t {
                pid: p.pid,
                alive: p.alive as u32,
                start_time: p.start_time,
                records: p.records as u64,
                bytes: p.bytes,
                reapable: p.reapable as u64,
            };
            // SAFETY: per this function's contract; `usage` outlives the call.
            if unsafe { cb(&usage, arg) } != 0 {
                break;
            }
        }
        Ok(())
    })
}

//! Records: insert (`cachem_add`), in-place access under the lock
//! (`cachem_get`), copying out with or without the lock (`cachem_read`),
//! walking an owner's records (`cachem_get_id`, `cachem_get_pid`) and
//! deleting them (`cachem_delete`, `cachem_delete_pid`,
//! `cachem_purge_process`).

use crate::args::{index, me, need, out_index, put, token};
use crate::cachem_error_t::*;
use crate::fail::{ffi, Fail};
use crate::state;
use crate::{cachem_error_t, cachem_id_t, cachem_index_t, cachem_t};
use cachem_rs::OwnerId;
use std::ffi::c_void;

/// Inserts a record of `len` bytes copied from `data`, owned by `owner`
/// (`CACHEM_INVALID_ID`: process-scoped, deleted when this process exits or
/// dies) and stamped with this process's pid (mod_cachem's cachem_add).
/// Without the lock, takes and releases it around the call. Compaction may
/// move records: pointers from `cachem_get` are invalid afterwards.
///
/// Returns `CACHEM_OK` with `*out` set (if `out` is not NULL), or:
/// - `CACHEM_E_TOO_LARGE`: `len` > `cachem_max_record_len`;
/// - `CACHEM_E_NO_ROOM`: not enough free space now (after reaping);
/// - `CACHEM_E_INVALID_ARGUMENT`: `data` NULL with `len` > 0;
/// - `CACHEM_E_PID_NAMESPACE`: process-scoped record from another pid namespace;
/// - `CACHEM_E_MISUSE`, `CACHEM_E_CORRUPT`, lock errors as `cachem_lock`.
///
/// # Safety
/// `data` is NULL or readable for `len` bytes; `out` is NULL or writable.
#[no_mangle]
pub unsafe extern "C" fn cachem_add(
    c: *mut cachem_t,
    data: *const c_void,
    len: usize,
    owner: cachem_id_t,
    out: *mut cachem_index_t,
) -> cachem_error_t {
    ffi("cachem_add", || {
        if data.is_null() && len > 0 {
            return Err(Fail::invalid("data is NULL"));
        }
        let r = state::locked(token(c), |h, g| {
            if len as u64 > h.max_record_len {
                return Err(Fail::new(
                    CACHEM_E_TOO_LARGE,
                    format!(
                        "record of {len} bytes is too large: this region holds at most {} bytes per record",
                        h.max_record_len
                    ),
                ));
            }
            if g.region().overlaps(data as usize, len) {
                // The source lies in the region itself (say, a pointer from
                // cachem_get): the insert may move it (a compaction after a
                // reap) while copying from it. Copy it out first, under the
                // lock we hold.
                let mut copy = vec![0u8; len];
                // SAFETY: `data` is readable for `len` bytes (inside the
                // mapping, which we have locked); `copy` is a fresh buffer
                // of `len` bytes.
                unsafe { std::ptr::copy_nonoverlapping(data.cast::<u8>(), copy.as_mut_ptr(), len) };
                return Ok(g.insert(OwnerId(owner), &copy)?);
            }
            let bytes: &[u8] = if len == 0 {
                &[]
            } else {
                // SAFETY: non-NULL, readable for `len` bytes per the
                // contract, `len` is at most the region's record limit
                // (< isize::MAX), and outside the region (checked above), so
                // the insert does not write it.
                unsafe { std::slice::from_raw_parts(data.cast::<u8>(), len) }
            };
            Ok(g.insert(OwnerId(owner), bytes)?)
        })?;
        // SAFETY: per this function's contract.
        unsafe { put(out, r.to_u64()) };
        Ok(())
    })
}

/// Points `*ptr` at the record's bytes and sets `*len` to its length
/// (mod_cachem's cachem_get). The bytes may be read and written in place
/// (8-byte aligned) until this thread calls `cachem_unlock`,
/// `cachem_add`, `cachem_delete`, `cachem_delete_pid`, `cachem_purge_process`,
/// `cachem_reap` or `cachem_restore`; after that the pointer is invalid.
/// Needs the lock: there is no implicit locking here (the pointer would be
/// useless after an implicit unlock).
///
/// Returns `CACHEM_OK`, or:
/// - `CACHEM_E_NOT_LOCKED`: this thread does not hold the lock;
/// - `CACHEM_E_STALE`: the record was deleted, or the index is from another region;
/// - `CACHEM_E_INVALID_ARGUMENT`: `ptr` or `len` NULL, `i` is `CACHEM_INVALID_INDEX`;
/// - `CACHEM_E_MISUSE`: bad handle; `CACHEM_E_CORRUPT`.
///
/// # Safety
/// `ptr` and `len` are NULL or writable.
#[no_mangle]
pub unsafe extern "C" fn cachem_get(
    c: *mut cachem_t,
    i: cachem_index_t,
    ptr: *mut *mut c_void,
    len: *mut usize,
) -> cachem_error_t {
    ffi("cachem_get", || {
        need(ptr, "ptr")?;
        need(len, "len")?;
        let id = index(i).ok_or_else(|| Fail::invalid("CACHEM_INVALID_INDEX names no record"))?;
        let got = state::held_only(token(c), |g| match g.get_mut(id) {
            Some(b) => Ok((b.as_mut_ptr(), b.len())),
            None => Err(match g.try_get(id) {
                Err(e) => e.into(),
                Ok(_) => Fail::internal("record vanished between two lookups under the lock"),
            }),
        })?;
        let (p, n) = got
            .ok_or_else(|| Fail::not_locked("cachem_lock first: the pointer is valid only under the lock"))?;
        // SAFETY: both checked non-NULL above, writable per the contract.
        unsafe {
            put(ptr, p.cast::<c_void>());
            put(len, n);
        }
        Ok(())
    })
}

/// Copies a record out: up to `len` bytes into `buf`, its full length into
/// `*out_len` (if not NULL). If this thread holds the lock, reads under it;
/// otherwise reads optimistically, without the lock, falling back to taking
/// it when writers keep changing the region (see docs/design.md). Pass
/// `buf` NULL and `len` 0 to learn the length.
///
/// Returns `CACHEM_OK`, or `CACHEM_E_BUFFER_TOO_SMALL` (nothing copied,
/// `*out_len` set), `CACHEM_E_STALE`, `CACHEM_E_INVALID_ARGUMENT` (`buf` NULL
/// with `len` > 0, invalid index), `CACHEM_E_MISUSE`, lock errors.
///
/// # Safety
/// `buf` is NULL or writable for `len` bytes; `out_len` is NULL or writable.
#[no_mangle]
pub unsafe extern "C" fn cachem_read(
    c: *mut cachem_t,
    i: cachem_index_t,
    buf: *mut c_void,
    len: usize,
    out_len: *mut usize,
) -> cachem_error_t {
    ffi("cachem_read", || {
        if buf.is_null() && len > 0 {
            return Err(Fail::invalid("buf is NULL"));
        }
        let query = buf.is_null();
        if query && out_len.is_null() {
            return Err(Fail::invalid("a length query (buf NULL, len 0) needs out_len"));
        }
        let id = index(i).ok_or_else(|| Fail::invalid("CACHEM_INVALID_INDEX names no record"))?;
        // The bytes go out through `ptr::copy`, never through a reference
        // to `buf`: it may lie in the region (a pointer from cachem_get),
        // even over the record itself.
        let give = |b: &[u8]| -> Result<(), Fail> {
            // SAFETY: per this function's contract.
            unsafe { put(out_len, b.len()) };
            if query {
                return Ok(());
            }
            if b.len() > len {
                return Err(Fail::new(
                    CACHEM_E_BUFFER_TOO_SMALL,
                    format!("the record has {} bytes, the buffer {len}", b.len()),
                ));
            }
            if !b.is_empty() {
                // SAFETY: buf is writable for len >= b.len() bytes per the
                // contract; `copy` allows overlap.
                unsafe { std::ptr::copy(b.as_ptr(), buf.cast::<u8>(), b.len()) };
            }
            Ok(())
        };
        let handle = state::lookup(token(c))?;
        if state::with_held_guard(&handle, |g| give(g.try_get(id)?))?.is_some() {
            return Ok(());
        }
        // Not holding the lock: an optimistic read (a validated copy, see
        // docs/design.md), then out.
        handle.cache.read(id, give)?
    })
}

/// The next record of `owner` after `after` (`CACHEM_INVALID_INDEX`: from
/// the start), in insertion order; `*out` = `CACHEM_INVALID_INDEX` when there is
/// none (mod_cachem's cachem_get_id). Follows the owner index: costs time
/// in proportion to the owner's records, not to the region's. If `after`
/// was deleted since it was returned, the walk goes on where it stood, so
/// "delete, then ask for the next after the deleted index" works as well as
/// "ask, then delete" (the delete leaves a note; if a new record took its
/// slot and another delete came since, the walk starts over from the
/// first, which may visit a record again). Without the lock, takes and releases it around the
/// call (iterate under `cachem_lock` to see a consistent set).
///
/// Which `after` values start over from the owner's first record: an index
/// that names no live record of this region and whose removal left no note
/// (a record removed long ago, an index from another region or from before
/// the region was re-created, a made-up value with a plausible slot). An
/// `after` that can never continue this walk is an error instead: a live
/// record of another owner, or a slot beyond any table this region can
/// hold.
///
/// Returns `CACHEM_OK`, or `CACHEM_E_INVALID_ARGUMENT` (`out` NULL, `after`
/// a live record of another owner, `after`'s slot out of range),
/// `CACHEM_E_MISUSE`, lock errors.
///
/// # Safety
/// `out` is NULL or writable.
#[no_mangle]
pub unsafe extern "C" fn cachem_get_id(
    c: *mut cachem_t,
    owner: cachem_id_t,
    after: cachem_index_t,
    out: *mut cachem_index_t,
) -> cachem_error_t {
    ffi("cachem_get_id", || {
        need(out, "out")?;
        let r = state::locked(token(c), |_, g| {
            check_after(g, owner, None, after)?;
            Ok(g.next_of_owner(OwnerId(owner), index(after)))
        })?;
        // SAFETY: checked non-NULL, writable per the contract.
        unsafe { put(out, out_index(r)) };
        Ok(())
    })
}

/// Refuses an `after` that can never continue a walk of `owner` (of `pid`'s
/// records): a live record of another owner or process, or a slot no table
/// of this region can reach (each table entry takes at least 8 bytes).
fn check_after(
    g: &cachem_rs::Guard<'_>,
    owner: cachem_id_t,
    pid: Option<u32>,
    after: cachem_index_t,
) -> Result<(), Fail> {
    let Some(id) = index(after) else { return Ok(()) };
    if u64::from(id.slot()) >= g.region().size() / 8 {
        return Err(Fail::invalid(format!(
            "after {after:#x} names slot {}, beyond this region's table",
            id.slot()
        )));
    }
    if let Ok(m) = g.meta(id) {
        if m.owner.0 != owner {
            return Err(Fail::invalid(format!(
                "after {after:#x} is a record of owner {}, not of {owner}",
                m.owner.0
            )));
        }
        if let Some(p) = pid.filter(|&p| p != m.pid) {
            return Err(Fail::invalid(format!(
                "after {after:#x} was inserted by pid {}, not by this process ({p})",
                m.pid
            )));
        }
    }
    Ok(())
}

/// As `cachem_get_id`, for records of `owner` inserted by the calling
/// process (mod_cachem's cachem_get_pid).
///
/// Returns as `cachem_get_id`; an `after` that is a live record of
/// `owner` inserted by another process is `CACHEM_E_INVALID_ARGUMENT` too.
///
/// # Safety
/// `out` is NULL or writable.
#[no_mangle]
pub unsafe extern "C" fn cachem_get_pid(
    c: *mut cachem_t,
    owner: cachem_id_t,
    after: cachem_index_t,
    out: *mut cachem_index_t,
) -> cachem_error_t {
    ffi("cachem_get_pid", || {
        need(out, "out")?;
        let pid = me();
        let r = state::locked(token(c), |_, g| {
            check_after(g, owner, Some(pid), after)?;
            Ok(g.next_of_owner_pid(OwnerId(owner), pid, index(after)))
        })?;
        // SAFETY: checked non-NULL, writable per the contract.
        unsafe { put(out, out_index(r)) };
        Ok(())
    })
}

/// Deletes a record: under `CACHEM_COMPACTION_EAGER` the block section is
/// compacted at once; under the default deferred policy the block is marked
/// dead and a later insert may compact. Either way pointers from
/// `cachem_get` are invalid afterwards (mod_cachem's cachem_delete). Without
/// the lock, takes and releases it around the call.
///
/// Returns `CACHEM_OK`, or `CACHEM_E_STALE` (already deleted, or from
/// another region), `CACHEM_E_INVALID_ARGUMENT` (`CACHEM_INVALID_INDEX`),
/// `CACHEM_E_MISUSE`, `CACHEM_E_CORRUPT`, lock errors.
///
/// # Safety
/// None (all arguments are checked).
#[no_mangle]
pub unsafe extern "C" fn cachem_delete(c: *mut cachem_t, i: cachem_index_t) -> cachem_error_t {
    ffi("cachem_delete", || {
        let id = index(i).ok_or_else(|| Fail::invalid("CACHEM_INVALID_INDEX names no record"))?;
        state::locked(token(c), |_, g| Ok(g.remove(id)?))
    })
}

/// Deletes every record of `owner` inserted by the calling process, in one
/// pass (mod_cachem's cachem_delete_pid: a child's cleanup). `*removed`
/// (if not NULL) gets the count. Without the lock, takes and releases it.
///
/// Returns `CACHEM_OK`, or `CACHEM_E_MISUSE`, `CACHEM_E_CORRUPT`, lock errors.
///
/// # Safety
/// `removed` is NULL or writable.
#[no_mangle]
pub unsafe extern "C" fn cachem_delete_pid(
    c: *mut cachem_t,
    owner: cachem_id_t,
    removed: *mut usize,
) -> cachem_error_t {
    ffi("cachem_delete_pid", || {
        let pid = me();
        let n = state::locked(token(c), |_, g| Ok(g.purge(OwnerId(owner), pid)?))?;
        // SAFETY: per this function's contract.
        unsafe { put(removed, n) };
        Ok(())
    })
}

/// Deletes the calling process's process-scoped records now (closing its
/// last handle does it too). `*removed` (if not NULL) gets the count.
///
/// Called while this thread is inside another cachem call (a signal
/// handler that interrupted one, as prefork's child cleanups at `-k
/// restart`; or a status callback), it only notes the purge, which that
/// call runs as it returns: `CACHEM_OK` with `*removed` 0. If the process
/// exits first (a handler that calls `exit`), nothing half-done is left:
/// its records are reaped as a dead process's.
///
/// Returns `CACHEM_OK`, or `CACHEM_E_MISUSE`, `CACHEM_E_CORRUPT`, lock errors.
///
/// # Safety
/// `removed` is NULL or writable.
#[no_mangle]
pub unsafe extern "C" fn cachem_purge_process(c: *mut cachem_t, removed: *mut usize) -> cachem_error_t {
    if state::in_call() && state::well_formed(token(c)) {
        // Possibly in a signal handler: touch nothing but two words.
        state::defer_purge(token(c));
        // SAFETY: per this function's contract.
        unsafe { put(removed, 0) };
        return CACHEM_OK;
    }
    ffi("cachem_purge_process", || {
        let r = state::locked(token(c), |_, g| Ok(g.purge_process()?))?;
        // SAFETY: per this function's contract.
        unsafe { put(removed, r.records) };
        Ok(())
    })
}

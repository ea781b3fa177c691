//! Argument handling shared by every entry point: handle tokens, C strings
//! and paths, the versioned options struct and the `Config` built from it,
//! record indices, and writes through optional out-pointers. Nothing here
//! is exported to C.

use crate::fail::Fail;
use crate::state;
use crate::{cachem_index_t, cachem_options_t, cachem_t, CACHEM_INVALID_INDEX};
use cachem_rs::{Config, RecordId};
use std::ffi::{c_char, CStr, OsStr};
use std::os::unix::ffi::OsStrExt;
use std::path::PathBuf;

pub(crate) fn token(c: *const cachem_t) -> u64 {
    c as usize as u64
}

pub(crate) fn handle(c: *const cachem_t) -> Result<state::Use, Fail> {
    state::lookup(token(c))
}

/// # Safety
/// `p` is NULL or a NUL-terminated string.
pub(crate) unsafe fn opt_bytes<'a>(p: *const c_char) -> Option<&'a [u8]> {
    // SAFETY: per the contract above; the bytes are only read.
    (!p.is_null()).then(|| unsafe { CStr::from_ptr(p) }.to_bytes())
}

/// # Safety
/// `p` is NULL or a NUL-terminated string.
pub(crate) unsafe fn opt_str<'a>(p: *const c_char, what: &str) -> Result<Option<&'a str>, Fail> {
    // SAFETY: per the contract above.
    match unsafe { opt_bytes(p) } {
        None => Ok(None),
        Some(b) => {
            std::str::from_utf8(b).map(Some).map_err(|_| Fail::invalid(format!("{what} is not UTF-8")))
        }
    }
}

/// # Safety
/// `p` is NULL or a NUL-terminated string.
pub(crate) unsafe fn opt_path(p: *const c_char) -> Option<PathBuf> {
    // SAFETY: per the contract above.
    unsafe { opt_bytes(p) }.map(|b| PathBuf::from(OsStr::from_bytes(b)))
}

/// Copies the caller's options, honouring its `struct_size`.
///
/// # Safety
/// `p` is NULL or points to at least `p->struct_size` readable bytes.
pub(crate) unsafe fn read_options(p: *const cachem_options_t) -> Result<cachem_options_t, Fail> {
    let mut o = cachem_options_t::default();
    if p.is_null() {
        return Ok(o);
    }
    // SAFETY: the first field of every version is the u32 size.
    let size = unsafe { std::ptr::read_unaligned(p.cast::<u32>()) } as usize;
    // Sizes of every published version of the struct, oldest first.
    // 64: without `lock_timeout_ms` (the first field added, at byte 64).
    const _: () = assert!(std::mem::offset_of!(cachem_options_t, lock_timeout_ms) == 64);
    const KNOWN: [usize; 2] = [64, std::mem::size_of::<cachem_options_t>()];
    if !KNOWN.contains(&size) {
        return Err(Fail::invalid(format!(
            "opts->struct_size is {size}; this library knows {KNOWN:?} (start from CACHEM_OPTIONS_INIT)"
        )));
    }
    // SAFETY: the caller's struct has `size` bytes, and `size` is at most
    // ours; plain integers and pointers, any bit pattern is valid.
    unsafe {
        std::ptr::copy_nonoverlapping(p.cast::<u8>(), (&mut o as *mut cachem_options_t).cast::<u8>(), size)
    };
    o.struct_size = size as u32;
    Ok(o)
}

/// Builds a `Config` from C arguments.
///
/// # Safety
/// `name` is NULL or a NUL-terminated string; `o`'s strings likewise.
pub(crate) unsafe fn config(name: *const c_char, size: u64, o: &cachem_options_t) -> Result<Config, Fail> {
    // SAFETY: per the contract above.
    let name = unsafe { opt_str(name, "the region name") }?;
    let mut c = match name {
        None if size == 0 => return Err(Fail::invalid("an anonymous region (NULL name) needs a size")),
        None => Config::anonymous(size),
        Some(n) if size == 0 => Config::named(n).attach_any_size(),
        Some(n) => Config::named(n).size(size),
    };
    if o.mode > 0o777 || o.mode & 0o600 != 0o600 {
        return Err(Fail::invalid(format!("mode {:#o} must be at most 0777 and include 0600", o.mode)));
    }
    c = c.mode(o.mode);
    // SAFETY: the option strings follow the contract above.
    unsafe {
        if let Some(d) = opt_path(o.dir) {
            c = c.dir(d);
        }
        if let Some(d) = opt_path(o.lock_file) {
            c = c.lock_file(d);
        }
        if let Some(d) = opt_path(o.id_store) {
            c = c.id_store(d);
        }
    }
    if o.attach_any_size != 0 {
        c = c.attach_any_size();
    }
    if o.lock_timeout_ms != 0 {
        c = c.lock_timeout(Some(std::time::Duration::from_millis(o.lock_timeout_ms)));
    }
    if o.attach_only != 0 {
        if name.is_none() {
            return Err(Fail::invalid("attach_only needs a region name"));
        }
        c = c.attach_only();
    }
    c = match o.reap {
        0 => c,
        1 => c.reap_all_records_of_dead_processes(),
        2 => c.no_reap(),
        r => return Err(Fail::invalid(format!("reap is {r}; use a cachem_reap_t"))),
    };
    c = match o.compaction {
        0 => c.compaction(cachem_rs::Compaction::Deferred),
        1 => c.compaction(cachem_rs::Compaction::Eager),
        p => return Err(Fail::invalid(format!("compaction is {p}; use a cachem_compaction_t"))),
    };
    if o.owner_uid != -1 || o.owner_gid != -1 {
        let id = |v: i64, what: &str, current: u32| -> Result<u32, Fail> {
            match v {
                -1 => Ok(current),
                0..=0xFFFF_FFFE => Ok(v as u32),
                _ => Err(Fail::invalid(format!("{what} {v} is not a valid id (-1: unchanged)"))),
            }
        };
        // SAFETY: geteuid and getegid have no preconditions and cannot fail.
        let (euid, egid) = unsafe { (libc::geteuid(), libc::getegid()) };
        c = c.owner(id(o.owner_uid, "owner_uid", euid)?, id(o.owner_gid, "owner_gid", egid)?);
    }
    Ok(c)
}

pub(crate) fn index(i: cachem_index_t) -> Option<RecordId> {
    (i != CACHEM_INVALID_INDEX).then(|| RecordId::from_u64(i))
}

pub(crate) fn out_index(r: Option<RecordId>) -> cachem_index_t {
    r.map_or(CACHEM_INVALID_INDEX, RecordId::to_u64)
}

/// # Safety
/// `p` is NULL or valid for a write of `T`.
pub(crate) unsafe fn put<T>(p: *mut T, v: T) {
    if !p.is_null() {
        // SAFETY: per the contract above.
        unsafe { p.write(v) }
    }
}

pub(crate) fn need<T>(p: *const T, what: &str) -> Result<(), Fail> {
    if p.is_null() {
        Err(Fail::invalid(format!("{what} is NULL")))
    } else {
        Ok(())
    }
}

pub(crate) fn me() -> u32 {
    cachem_rs::sys::process::me().0
}

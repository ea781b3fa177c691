//! # libcachem: the C ABI of cachem
//!
//! `cachem.h` is generated from this file by cbindgen: the doc comments
//! below are the header's manual. docs/c-api.md has the guide (lifetime and
//! thread rules, linking, a complete example).
//!
//! Every entry point runs inside [`fail::ffi`], which turns a Rust panic into
//! `CACHEM_E_INTERNAL` instead of unwinding into C; the distributed libraries
//! are also built with `panic = "abort"` (`make capi`). Handles are tokens
//! checked against a registry, never dereferenced ([`state`]).
#![allow(non_camel_case_types)]

mod fail;
mod state;

use cachem_rs::{Cache, Config, OwnerId, RecordId};
use fail::{ffi, Fail};
use std::ffi::{c_char, c_int, c_void, CStr, OsStr};
use std::os::unix::ffi::OsStrExt;
use std::path::PathBuf;

/// An open cache: a region and its owner-id registry. Opaque; shareable by
/// the threads of a process and inherited by children forked after
/// `cachem_open`. Never dereference it: it is a checked token.
pub struct cachem_t {
    _opaque: [u8; 0],
}

/// A record index: the record's table slot and that slot's generation, so an
/// index kept after its record was deleted is reported as `CACHEM_E_STALE`
/// and never reaches another record. Valid in every process attached to the
/// region.
pub type cachem_index_t = u64;

/// An owner id, from `cachem_id`. The same name gives the same id in every
/// process for the life of the region.
pub type cachem_id_t = u32;

/// "No record": the start of an iteration, and its end.
pub const CACHEM_INVALID_INDEX: cachem_index_t = u64::MAX;

/// The owner of process-scoped records: deleted when the inserting process
/// exits or dies (mod_cachem's CACHEM_INVALID_ID).
pub const CACHEM_INVALID_ID: cachem_id_t = 0;

/// Every function that can fail returns one of these. `cachem_strerror`
/// gives a fixed text, `cachem_last_error_message` the detail (with paths
/// and sizes) of the calling thread's last failure.
#[repr(C)]
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum cachem_error_t {
    /// Success.
    CACHEM_OK = 0,
    /// The free gap cannot hold the record now (dead processes' records were
    /// reaped first): delete records or use a larger region.
    CACHEM_E_NO_ROOM = 1,
    /// The record is longer than `cachem_max_record_len`: it can never fit.
    CACHEM_E_TOO_LARGE = 2,
    /// The index names a deleted record, or comes from another region.
    CACHEM_E_STALE = 3,
    /// The region breaks an invariant (the detail names the field).
    CACHEM_E_CORRUPT = 4,
    /// The region was made by another format version or machine ABI.
    CACHEM_E_VERSION = 5,
    /// The named region exists with another size than the one asked for.
    CACHEM_E_SIZE_MISMATCH = 6,
    /// The region lock is unrecoverable: destroy and re-create the region.
    CACHEM_E_LOCK_UNRECOVERABLE = 7,
    /// The operating system refused access (file modes, owners).
    CACHEM_E_PERMISSION = 8,
    /// Another operating-system error (the detail names the call and path).
    CACHEM_E_IO = 9,
    /// The named region does not exist (attach only, or `cachem_destroy`).
    CACHEM_E_NOT_FOUND = 10,
    /// The owner-id registry failed.
    CACHEM_E_REGISTRY = 11,
    /// A snapshot file is damaged, foreign, or does not fit the region.
    CACHEM_E_SNAPSHOT = 12,
    /// A NULL or out-of-range argument, a bad name or size, bad options.
    CACHEM_E_INVALID_ARGUMENT = 13,
    /// The call needs the lock and this thread does not hold it.
    CACHEM_E_NOT_LOCKED = 14,
    /// This thread already holds this region's lock.
    CACHEM_E_ALREADY_LOCKED = 15,
    /// A closed or unknown handle, or a call at a moment it is not allowed.
    CACHEM_E_MISUSE = 16,
    /// The output buffer is too small (the needed size was returned).
    CACHEM_E_BUFFER_TOO_SMALL = 17,
    /// A bug in cachem was caught (no panic crosses into C); the detail
    /// says where. Locks this thread held were released.
    CACHEM_E_INTERNAL = 18,
    /// `cachem_close` while a thread holds the lock through the handle.
    CACHEM_E_BUSY = 19,
    /// The region was created in another pid namespace: open it with
    /// `CACHEM_REAP_OFF`.
    CACHEM_E_PID_NAMESPACE = 20,
}
use cachem_error_t::*;

/// What reaping removes from processes found dead (`cachem_options_t.reap`,
/// applied when the region is created; `CACHEM_REAP_OFF` when attaching
/// turns reaping off for this process only).
#[repr(C)]
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum cachem_reap_t {
    /// Their process-scoped records (owner `CACHEM_INVALID_ID`). Default.
    CACHEM_REAP_PROCESS = 0,
    /// All their records, whatever the owner.
    CACHEM_REAP_ALL = 1,
    /// Never reap.
    CACHEM_REAP_OFF = 2,
}

/// How removed records' space is reclaimed (`cachem_options_t.compaction`,
/// fixed when the region is created and stored in it, so every process
/// agrees; ignored when attaching to an existing region).
#[repr(C)]
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum cachem_compaction_t {
    /// A delete marks the block dead; one compaction closes every hole when
    /// an insert needs the room, when dead bytes pass half of the block
    /// section, or on demand. Default: deletes cost a few record-sizes of
    /// copying, amortised.
    CACHEM_COMPACTION_DEFERRED = 0,
    /// mod_cachem's "compacted at all times": a delete moves every block
    /// after the record down at once.
    CACHEM_COMPACTION_EAGER = 1,
}

/// Options of `cachem_open` and `cachem_destroy`. Start from
/// `CACHEM_OPTIONS_INIT` (or `cachem_options_init`), then set fields: the
/// first field is the struct's size, so the struct can grow in later
/// versions without breaking programs built against this one.
#[repr(C)]
#[derive(Clone, Copy, Debug)]
pub struct cachem_options_t {
    /// `sizeof(cachem_options_t)`.
    pub struct_size: u32,
    /// Permission bits of the files created (region, lockfile, id store);
    /// must include 0600 and be at most 0777. Default 0600.
    pub mode: u32,
    /// -1: unchanged. Else give everything cachem makes for the region
    /// (region file, lockfile, id store and its files, the runtime
    /// directory when cachem made it) to this user: a server started as
    /// root whose workers run as another user. Only root may; for others
    /// `cachem_open` fails.
    pub owner_uid: i64,
    /// -1: unchanged (with `owner_uid` set: this process's group). Else the
    /// group, as `owner_uid`.
    pub owner_gid: i64,
    /// Runtime directory for relative names. NULL: `$CACHEM_DIR`, else
    /// `/dev/shm/cachem`.
    pub dir: *const c_char,
    /// Global lockfile. NULL: `<region>.lock`.
    pub lock_file: *const c_char,
    /// Id-registry directory. NULL: `<region>.ids`.
    pub id_store: *const c_char,
    /// Non-zero: attach to an existing region whatever its size.
    pub attach_any_size: u32,
    /// Non-zero: never create; `CACHEM_E_NOT_FOUND` if missing.
    pub attach_only: u32,
    /// A `cachem_reap_t`.
    pub reap: u32,
    /// A `cachem_compaction_t` (used when this call creates the region).
    pub compaction: u32,
}

impl Default for cachem_options_t {
    fn default() -> Self {
        cachem_options_t {
            struct_size: std::mem::size_of::<cachem_options_t>() as u32,
            mode: 0o600,
            owner_uid: -1,
            owner_gid: -1,
            dir: std::ptr::null(),
            lock_file: std::ptr::null(),
            id_store: std::ptr::null(),
            attach_any_size: 0,
            attach_only: 0,
            reap: cachem_reap_t::CACHEM_REAP_PROCESS as u32,
            compaction: cachem_compaction_t::CACHEM_COMPACTION_DEFERRED as u32,
        }
    }
}

/// What `cachem_reap` removed.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default)]
pub struct cachem_reap_report_t {
    /// Dead processes that had reapable records.
    pub processes: u64,
    /// Records removed.
    pub records: u64,
    /// Bytes given back to the free gap.
    pub bytes: u64,
}

/// Figures of a region (`cachem_stat`). Fields may be added at the end.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default)]
pub struct cachem_stat_t {
    /// Region size in bytes.
    pub size: u64,
    /// Bytes of the block section (records, their headers and padding).
    pub used_bytes: u64,
    /// Bytes of the free gap.
    pub free_bytes: u64,
    /// Live records.
    pub records: u64,
    /// Entries of the block-pointer table (live and free).
    pub slots: u64,
    /// Largest record this region can hold.
    pub max_record_len: u64,
    /// Distinct owners with records (the process owner included).
    pub owners: u64,
    /// Distinct inserting processes with records.
    pub processes: u64,
    /// Of those, processes that are dead (their records await a reap).
    pub dead_processes: u64,
    /// Records inserted since creation.
    pub inserts: u64,
    /// Records removed since creation.
    pub removes: u64,
    /// Bytes moved by compaction since creation.
    pub bytes_moved: u64,
    /// Records removed by reaping since creation.
    pub reaps: u64,
    /// Lock recoveries after a holder died, since creation.
    pub recoveries: u64,
    /// Free entries of the block-pointer table.
    pub free_slots: u64,
    /// Bytes of the block-pointer table.
    pub table_bytes: u64,
    /// Bytes of the header.
    pub header_bytes: u64,
    /// Random id of this incarnation of the region.
    pub generation: u64,
    /// Bytes of deleted records' blocks waiting for a compaction (part of
    /// `used_bytes`; always 0 under `CACHEM_COMPACTION_EAGER`).
    pub dead_bytes: u64,
    /// Deleted records' blocks waiting for a compaction.
    pub dead_blocks: u64,
    /// The region's `cachem_compaction_t`.
    pub compaction: u64,
}

// ----- helpers ---------------------------------------------------------------

fn token(c: *const cachem_t) -> u64 {
    c as usize as u64
}

fn handle(c: *const cachem_t) -> Result<state::Use, Fail> {
    state::lookup(token(c))
}

/// # Safety
/// `p` is NULL or a NUL-terminated string.
unsafe fn opt_bytes<'a>(p: *const c_char) -> Option<&'a [u8]> {
    // SAFETY: per the contract above; the bytes are only read.
    (!p.is_null()).then(|| unsafe { CStr::from_ptr(p) }.to_bytes())
}

/// # Safety
/// `p` is NULL or a NUL-terminated string.
unsafe fn opt_str<'a>(p: *const c_char, what: &str) -> Result<Option<&'a str>, Fail> {
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
unsafe fn opt_path(p: *const c_char) -> Option<PathBuf> {
    // SAFETY: per the contract above.
    unsafe { opt_bytes(p) }.map(|b| PathBuf::from(OsStr::from_bytes(b)))
}

/// Copies the caller's options, honouring its `struct_size`.
///
/// # Safety
/// `p` is NULL or points to at least `p->struct_size` readable bytes.
unsafe fn read_options(p: *const cachem_options_t) -> Result<cachem_options_t, Fail> {
    let mut o = cachem_options_t::default();
    if p.is_null() {
        return Ok(o);
    }
    // SAFETY: the first field of every version is the u32 size.
    let size = unsafe { std::ptr::read_unaligned(p.cast::<u32>()) } as usize;
    // Sizes of every published version of the struct, oldest first.
    const KNOWN: [usize; 1] = [std::mem::size_of::<cachem_options_t>()];
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
unsafe fn config(name: *const c_char, size: u64, o: &cachem_options_t) -> Result<Config, Fail> {
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

fn index(i: cachem_index_t) -> Option<RecordId> {
    (i != CACHEM_INVALID_INDEX).then(|| RecordId::from_u64(i))
}

fn out_index(r: Option<RecordId>) -> cachem_index_t {
    r.map_or(CACHEM_INVALID_INDEX, RecordId::to_u64)
}

/// # Safety
/// `p` is NULL or valid for a write of `T`.
unsafe fn put<T>(p: *mut T, v: T) {
    if !p.is_null() {
        // SAFETY: per the contract above.
        unsafe { p.write(v) }
    }
}

fn need<T>(p: *const T, what: &str) -> Result<(), Fail> {
    if p.is_null() {
        Err(Fail::invalid(format!("{what} is NULL")))
    } else {
        Ok(())
    }
}

fn me() -> u32 {
    cachem_rs::sys::process::me().0
}

// ----- open / close ----------------------------------------------------------

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
///   opened or given to `owner_uid` / `owner_gid` (root only);
/// - `CACHEM_E_LOCK_UNRECOVERABLE`, `CACHEM_E_PID_NAMESPACE`,
///   `CACHEM_E_ALREADY_LOCKED` (this thread holds the region's lock through
///   another handle), `CACHEM_E_INTERNAL`.
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

// ----- ids and the lock ------------------------------------------------------

/// The owner id of `name`: the same in every process for the life of the
/// region (mod_cachem's cachem_id). NULL `name`: a fresh id never returned
/// before. The answer is memoised per process. Needs no lock (and may be
/// called holding it).
///
/// Returns `CACHEM_OK` with `*out` set, or `CACHEM_E_INVALID_ARGUMENT` (`out`
/// NULL, name not UTF-8), `CACHEM_E_MISUSE` (bad handle),
/// `CACHEM_E_REGISTRY`, `CACHEM_E_PERMISSION`, `CACHEM_E_IO`.
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
            Some(n) => h.cache.id(n)?,
            None => h.cache.unique_id()?,
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
/// Returns `CACHEM_OK`, or:
/// - `CACHEM_E_ALREADY_LOCKED`: this thread holds it already (through this
///   or another handle of the region): an error, never a hang;
/// - `CACHEM_E_MISUSE`: bad handle;
/// - `CACHEM_E_LOCK_UNRECOVERABLE`, `CACHEM_E_CORRUPT` (recovery failed),
///   `CACHEM_E_IO`.
///
/// # Safety
/// None (any handle value is checked).
#[no_mangle]
pub unsafe extern "C" fn cachem_lock(c: *mut cachem_t) -> cachem_error_t {
    ffi("cachem_lock", || state::lock(handle(c)?))
}

/// Releases the lock the calling thread took with `cachem_lock`. Pointers
/// from `cachem_get` are invalid afterwards.
///
/// Returns `CACHEM_OK`, or `CACHEM_E_NOT_LOCKED` (this thread does not hold
/// it through this handle: unlock by a thread that did not lock, a second
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

// ----- records -----------------------------------------------------------

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
        let id = index(i).ok_or_else(|| Fail::invalid("CACHEM_INVALID_INDEX names no record"))?;
        // The bytes go out through `ptr::copy`, never through a reference
        // to `buf`: it may lie in the region (a pointer from cachem_get),
        // even over the record itself.
        let give = |b: &[u8]| -> Result<(), Fail> {
            // SAFETY: per this function's contract.
            unsafe { put(out_len, b.len()) };
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
/// Returns `CACHEM_OK`, or `CACHEM_E_INVALID_ARGUMENT` (`out` NULL),
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
        let r = state::locked(token(c), |_, g| Ok(g.next_of_owner(OwnerId(owner), index(after))))?;
        // SAFETY: checked non-NULL, writable per the contract.
        unsafe { put(out, out_index(r)) };
        Ok(())
    })
}

/// As `cachem_get_id`, for records of `owner` inserted by the calling
/// process (mod_cachem's cachem_get_pid).
///
/// Returns as `cachem_get_id`.
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
        let r = state::locked(token(c), |_, g| Ok(g.next_of_owner_pid(OwnerId(owner), pid, index(after))))?;
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
/// Returns `CACHEM_OK`, or `CACHEM_E_MISUSE`, `CACHEM_E_CORRUPT`, lock errors.
///
/// # Safety
/// `removed` is NULL or writable.
#[no_mangle]
pub unsafe extern "C" fn cachem_purge_process(c: *mut cachem_t, removed: *mut usize) -> cachem_error_t {
    ffi("cachem_purge_process", || {
        let r = state::locked(token(c), |_, g| Ok(g.purge_process()?))?;
        // SAFETY: per this function's contract.
        unsafe { put(removed, r.records) };
        Ok(())
    })
}

// ----- maintenance -------------------------------------------------------

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

/// Writes the region's records (all but process-scoped ones) with their
/// owners' names to the file `path`, atomically (a temporary file beside it,
/// synced, then renamed): the path holds the old snapshot or the new one.
/// Call without holding the lock.
///
/// Returns `CACHEM_OK`, or `CACHEM_E_ALREADY_LOCKED` (this thread holds the
/// lock), `CACHEM_E_INVALID_ARGUMENT` (`path` NULL), `CACHEM_E_PERMISSION`,
/// `CACHEM_E_IO` (nothing replaced), `CACHEM_E_REGISTRY`, `CACHEM_E_MISUSE`.
///
/// # Safety
/// `path` is NULL or NUL-terminated.
#[no_mangle]
pub unsafe extern "C" fn cachem_save(c: *mut cachem_t, path: *const c_char) -> cachem_error_t {
    ffi("cachem_save", || {
        let h = handle(c)?;
        // SAFETY: per this function's contract.
        let p = unsafe { opt_path(path) }.ok_or_else(|| Fail::invalid("path is NULL"))?;
        if state::holds(&h)? {
            return Err(Fail::already_locked("cachem_unlock first: saving takes the lock itself"));
        }
        h.cache.save(p)?;
        Ok(())
    })
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

// ----- errors ------------------------------------------------------------

/// A fixed English text for an error code (static storage; never NULL).
/// Takes an `int` so that any value, even one not in `cachem_error_t`, is
/// safe to pass.
#[no_mangle]
pub extern "C" fn cachem_strerror(code: c_int) -> *const c_char {
    let s: &'static [u8] = match code {
        0 => b"success\0",
        1 => b"no room in the region\0",
        2 => b"record too large for this region\0",
        3 => b"stale record index (deleted, or from another region)\0",
        4 => b"region corrupt\0",
        5 => b"region format version or ABI not supported\0",
        6 => b"region exists with another size\0",
        7 => b"region lock unrecoverable\0",
        8 => b"permission denied\0",
        9 => b"I/O error\0",
        10 => b"region not found\0",
        11 => b"owner-id registry error\0",
        12 => b"snapshot damaged, foreign or not fitting\0",
        13 => b"invalid argument\0",
        14 => b"this thread does not hold the lock\0",
        15 => b"this thread already holds the lock\0",
        16 => b"misuse (closed or unknown handle)\0",
        17 => b"buffer too small\0",
        18 => b"internal error\0",
        19 => b"handle busy (a thread holds its lock)\0",
        20 => b"region from another pid namespace\0",
        _ => b"unknown cachem error code\0",
    };
    s.as_ptr().cast()
}

/// The detail of the calling thread's last failed cachem call ("" if none),
/// with the function name, paths and sizes. Valid until this thread's next
/// failed call. `c` is unused (the detail is per thread); it may be NULL.
#[no_mangle]
pub extern "C" fn cachem_last_error_message(c: *const cachem_t) -> *const c_char {
    let _ = c;
    state::last_error_ptr()
}

//! # libcachem: the C ABI of cachem
//!
//! `cachem.h` is generated from this crate by cbindgen: the doc comments
//! are the header's manual. This file holds the types; the functions are in
//! one module per concern (see the `mod` lines), argument handling in
//! `args`. docs/c-api.md has the guide (lifetime and thread rules, linking,
//! a complete example).
//!
//! Every entry point runs inside [`fail::ffi`], which turns a Rust panic into
//! `CACHEM_E_INTERNAL` instead of unwinding into C; the distributed libraries
//! are also built with `panic = "abort"` (`make capi`). Handles are tokens
//! checked against a registry, never dereferenced ([`state`]).
#![allow(non_camel_case_types)]

mod args;
mod fail;
mod state;

// cbindgen lists the functions in the order of these declarations, which
// rustfmt sorts by name: the names sort in the header's order.
mod handles; // open, close
mod lock; // owner ids and the lock
mod records;
mod scrub; // reap, verify
mod status;
mod store; // snapshots
mod strerror; // error texts

use std::ffi::c_char;

/// An open cache: a region (with its owner-name table). Opaque; shareable by
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
    /// The operating system refused access (file modes, owners), or the
    /// runtime directory is not safe to use (a symlink, another user's,
    /// writable by everyone without the sticky bit).
    CACHEM_E_PERMISSION = 8,
    /// Another operating-system error (the detail names the call and path).
    CACHEM_E_IO = 9,
    /// The named region does not exist (attach only, or `cachem_destroy`).
    CACHEM_E_NOT_FOUND = 10,
    /// Every owner id has been handed out (`cachem_id`).
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
    /// `cachem_open` with 4096 handles open in this process already: close
    /// one first.
    CACHEM_E_TOO_MANY_HANDLES = 21,
    /// A live process held the region lock longer than the lock timeout
    /// (`cachem_options_t.lock_timeout_ms`); the detail names its pid and
    /// thread. Nothing was changed; try again later (a server answers 503).
    CACHEM_E_LOCK_TIMEOUT = 22,
}

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
    /// Accepted for compatibility: owner names live in the region itself
    /// (since format 5), so nothing is made here; `cachem_destroy` removes
    /// a directory at this path with the region. NULL: `<region>.ids`.
    /// Refused (`CACHEM_E_INVALID_ARGUMENT`) for an anonymous region.
    pub id_store: *const c_char,
    /// Non-zero: attach to an existing region whatever its size.
    pub attach_any_size: u32,
    /// Non-zero: never create; `CACHEM_E_NOT_FOUND` if missing.
    pub attach_only: u32,
    /// A `cachem_reap_t`.
    pub reap: u32,
    /// A `cachem_compaction_t` (used when this call creates the region).
    pub compaction: u32,
    /// How long a lock may wait for a live holder that does not let go
    /// (stopped, in a debugger, looping), in milliseconds, before the call
    /// fails with `CACHEM_E_LOCK_TIMEOUT`. 0: the library default, wait as
    /// long as it takes (a lock word naming a thread that no longer exists
    /// is recovered from either way). Added in 0.2: a struct of the old
    /// size (without it) is still accepted and gets 0.
    pub lock_timeout_ms: u64,
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
            lock_timeout_ms: 0,
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
    /// Entries of the block-pointer table (live and free; the owner-name
    /// table's records hold entries too, so `slots - free_slots` can exceed
    /// `records`).
    pub slots: u64,
    /// Largest record this region can hold.
    pub max_record_len: u64,
    /// Distinct owners with records (the process owner included).
    pub owners: u64,
    /// Distinct inserting processes with records.
    pub processes: u64,
    /// Of those, dead processes with records a reap removes (their
    /// process-scoped records; all of them in a `CACHEM_REAP_ALL` region):
    /// above 0 for more than a few reap intervals, reaping is off or
    /// failing. Dead pids that only tag kept (owned) records are not
    /// counted (`cachem_status_t.dead_pids_kept` has them).
    pub dead_processes: u64,
    /// Records inserted since creation (the region's owner-name table's
    /// records included: `cachem_id` of a new name inserts one).
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

//! The byte layout of a region: header, block header, block pointer.
//!
//! ```text
//! offset 0                                                     size-64      size
//! | header (384 B) | block section -> | free gap | <- bptr table | trailer (64 B) |
//!                  ^ o_st            ^ o_fr      ^ o_bptop      ^ table end
//! ```
//!
//! The process-shared mutex and the readers' version word live in the
//! **trailer**, the last [`TRAILER_SIZE`] bytes of the region, outside the
//! engine's view: threads waiting for the lock write the mutex while the
//! holder works, and optimistic readers load the version while it changes,
//! so no `&mut [u8]` of the engine may cover them. The engine's view is the region
//! without its trailer (`layout::Layout::reopen`).
//!
//! Every struct here is `#[repr(C)]`, `bytemuck::Pod`, made of fixed-width
//! integers only, and its size and field offsets are asserted at compile
//! time below, so this file and `docs/format.md` cannot drift apart. Byte
//! order is the host's; [`ENDIAN_TAG`] detects an image from a machine of
//! the other byte order.
//!
//! This module owns the constants and structs; it has no logic beyond
//! small pure helpers. The engine (`layout`) is the only code that reads or
//! writes them in a region.

use bytemuck::{Pod, Zeroable};
use std::mem::{offset_of, size_of};

/// First 8 bytes of every region. Written last at creation.
pub const MAGIC: [u8; 8] = *b"CACHEM\x00\x01";
/// Read back as `0x0403_0201` on a machine of the other byte order.
pub const ENDIAN_TAG: u32 = 0x0102_0304;
/// Version of this layout. Bumped on any incompatible change. Version 2
/// added the compaction policy, dead blocks and the lock trailer; version 3
/// the owner index (per-bucket chains through the table entries); version 4
/// incremental compaction (a paused compaction's journal); version 5 the
/// owner-name table (records of [`crate::OwnerId::NAMES`] on a chain of
/// their own, its hash index, and the id counter `next_owner` in the
/// header).
pub const FORMAT_VERSION: u32 = 5;
/// Owner buckets of the owner index: a record of user owner `o` is on the
/// chain of bucket `o % (OWNER_BUCKETS - 2)`; the last bucket,
/// [`NAMES_BUCKET`], holds only the name table ([`crate::OwnerId::NAMES`]),
/// the one before, [`NAMES_INDEX_BUCKET`], only its hash index. Owner ids
/// from the registry are small consecutive numbers, so up to 20 owners
/// never share a chain.
pub const OWNER_BUCKETS: usize = 22;
/// The owner bucket of the name table's records ([`crate::OwnerId::NAMES`])
/// and of nothing else, so a name lookup walks names only.
pub const NAMES_BUCKET: usize = OWNER_BUCKETS - 1;
/// The owner bucket of the name table's hash index (records of
/// [`crate::OwnerId::NAMES_INDEX`], one but for a moment) and of nothing
/// else, so the index is found in one step.
pub const NAMES_INDEX_BUCKET: usize = OWNER_BUCKETS - 2;
/// The buckets user owners share: owner `o` is on bucket `o % USER_BUCKETS`,
/// so owners `o` and `o + USER_BUCKETS` share a chain.
pub const USER_BUCKETS: usize = OWNER_BUCKETS - 2;
/// `Bptr::prev` of an unused entry whose `pid` and `start_time` hold a
/// removal note (the removed record's generation and the record that
/// followed it on its chain): lets `next_of_owner` continue after a record
/// removed mid-iteration. Never a valid `prev` of a used entry (slot + 1 is
/// below 2^27).
pub const REMOVED_NOTE: u32 = u32::MAX;
/// Size of [`Header`] in bytes; also where the block section starts.
pub const HEADER_SIZE: usize = 384;
/// Size of [`Bptr`] (one block-pointer table entry).
pub const BPTR_SIZE: usize = 32;
/// Size of [`BlockHeader`].
pub const BLOCK_HEADER_SIZE: usize = 8;
/// Every offset in the region is a multiple of this.
pub const ALIGN: usize = 8;
/// Bytes reserved for the process-shared mutex (the start of the trailer).
pub const MUTEX_BYTES: usize = 48;
/// Size of the trailer at the end of the region: the mutex and the version
/// word, outside the engine's view.
pub const TRAILER_SIZE: usize = 64;
/// Offset of the version word (the readers' seqlock) inside the trailer:
/// its last 8 bytes. Odd while a writer changes anything a reader may
/// follow; see `docs/design.md` ("Optimistic reads").
pub const TRAILER_VERSION: usize = 56;
/// `BlockHeader::slot` of a dead block (a record removed under the
/// `Deferred` policy whose bytes wait for the next compaction). No table
/// slot can have this number (a region holds fewer than 2^27 entries).
pub const DEAD_SLOT: u32 = u32::MAX;
// No region has that many table entries, so no real slot is DEAD_SLOT.
const _: () = assert!(MAX_REGION_SIZE / BPTR_SIZE as u64 <= DEAD_SLOT as u64);
/// `Header::compaction` value of the `Eager` policy.
pub const COMPACTION_EAGER: u32 = 1;
/// `Header::compaction` value of the `Deferred` policy.
pub const COMPACTION_DEFERRED: u32 = 2;
/// Smallest region (one page on the platforms we support).
pub const MIN_REGION_SIZE: u64 = 4096;
/// Largest region: block offsets in a table entry are `u32`.
pub const MAX_REGION_SIZE: u64 = (u32::MAX as u64) & !(ALIGN as u64 - 1);

/// `Header::flags` bit: the region must be recovered before any other
/// operation. Set while a compaction journal is active, during every
/// recovery (until `verify` passes), and by a holder that abandoned a
/// mutation; set alone, it triggers a recovery at the next lock.
pub const FLAG_RECOVERY_REQUIRED: u32 = 1;

/// `Header::options` bit: reaping purges every record of a dead process,
/// not only its process-scoped ones.
pub const OPT_REAP_ALL: u32 = 1;
/// `Header::options` bit: never reap (pids are not meaningful here).
pub const OPT_NO_REAP: u32 = 2;

/// `Journal::op` value: no operation in progress.
pub const JOURNAL_NONE: u32 = 0;
/// `Journal::op` value: a compaction is in progress.
pub const JOURNAL_COMPACT: u32 = 1;
/// `Journal::mv_src` value when no move is in progress.
pub const NO_MOVE: u64 = u64::MAX;

/// The compaction journal: enough to finish an interrupted compaction.
///
/// All offsets are from the region start. Between `dst` and `src` lies the
/// hole collected so far; blocks at or after `src` have not been touched.
/// A move of the live run `[mv_src, mv_src + mv_len)` down to `mv_dst` is in
/// progress iff `mv_src == src`; `mv_done` bytes of it have been copied.
#[derive(Clone, Copy, Debug, Pod, Zeroable, PartialEq, Eq)]
#[repr(C)]
pub struct Journal {
    /// [`JOURNAL_NONE`] or [`JOURNAL_COMPACT`]. Written last when starting.
    pub op: u32,
    pub _pad: u32,
    /// Where the compaction began (first dead block).
    pub start: u64,
    /// Next block to examine (old position).
    pub src: u64,
    /// Where the next live block goes.
    pub dst: u64,
    /// End of the block section when the compaction began (old `o_fr`).
    pub end: u64,
    /// Every block at or after this offset is live.
    pub live_from: u64,
    /// Source of the run being moved; equals `src` while a move is active.
    pub mv_src: u64,
    /// Destination of the run being moved.
    pub mv_dst: u64,
    /// Length of the run being moved.
    pub mv_len: u64,
    /// Bytes of the run copied so far.
    pub mv_done: u64,
}

/// Statistics. Not authoritative: an interrupted operation may leave them
/// off by one; recovery does not rebuild them.
#[derive(Clone, Copy, Debug, Pod, Zeroable, PartialEq, Eq, Default)]
#[repr(C)]
pub struct Counters {
    pub inserts: u64,
    pub removes: u64,
    pub bytes_moved: u64,
    pub reaped_records: u64,
    pub recoveries: u64,
    /// Compactions run (each closes every hole of the block section).
    pub compactions: u64,
    /// Bytes moved by the largest single compaction (the longest pause a
    /// compaction caused, in bytes).
    pub largest_compaction: u64,
}

/// The region header. See `docs/format.md` for each field.
#[derive(Clone, Copy, Pod, Zeroable)]
#[repr(C)]
pub struct Header {
    // --- immutable after creation ---
    pub magic: [u8; 8],
    pub endian: u32,
    pub format_version: u32,
    pub header_size: u32,
    pub bptr_size: u32,
    pub region_size: u64,
    pub generation: u64,
    pub o_st: u64,
    pub pid_ns: u64,
    pub options: u32,
    pub mutex_size: u32,
    /// [`COMPACTION_EAGER`] or [`COMPACTION_DEFERRED`].
    pub compaction: u32,
    /// [`TRAILER_SIZE`]: bytes at the end of the region holding the mutex.
    pub trailer_size: u32,
    // --- mutable ---
    pub boot_id: [u8; 16],
    pub o_fr: u64,
    pub o_bptop: u64,
    pub n_bptr: u32,
    pub u_blks: u32,
    pub free_head: u32,
    pub flags: u32,
    pub journal: Journal,
    pub counters: Counters,
    /// The last generation handed to a table entry. Every new or deleted
    /// entry takes the next value, so a `(slot, gen)` pair is never reissued
    /// (until 2^32 deletes wrap it).
    pub last_gen: u32,
    /// The next owner id the name table hands out (0 means 1: a fresh
    /// region). Bumped with one aligned 4-byte store *before* the name
    /// record that uses the id is inserted, so a process killed between the
    /// two wastes an id but never hands one out twice. `u32::MAX`
    /// ([`crate::OwnerId::NAMES`]) is never handed out: reaching it means
    /// every id is used.
    pub next_owner: u32,
    /// Bytes of dead blocks in the block section (derived: recovery
    /// rebuilds it by walking the blocks).
    pub dead_bytes: u64,
    /// Offset of the lowest dead block, 0 when there is none (derived). A
    /// compaction starts there.
    pub dead_lo: u64,
    /// The owner index: head of each owner bucket's chain (slot + 1 of its
    /// first entry, 0 = empty). Derived: recovery rebuilds the chains.
    pub owner_heads: [u32; OWNER_BUCKETS],
    /// The last record removed (`RecordId` as u64, 0 = none) and the record
    /// that followed it on its chain (0 = it was the last): the removal
    /// note of the latest remove, kept here too because a remove of the
    /// top table entry drops the entry and its note. Derived (a hint:
    /// checked before use, cleared by recovery).
    pub last_removed: u64,
    pub last_removed_next: u64,
}

/// One block-pointer table entry. Slot `i` lives at
/// `region_size - trailer_size - (i + 1) * BPTR_SIZE` (see `bptr_offset`).
#[derive(Clone, Copy, Debug, Pod, Zeroable, PartialEq, Eq)]
#[repr(C)]
pub struct Bptr {
    /// Offset of the block; 0 = entry unused. Shares one aligned 8-byte word
    /// with `gen`, so a delete clears it and bumps `gen` in one store.
    pub o_beg: u32,
    /// Bumped on every delete; part of every `RecordId`.
    pub gen: u32,
    pub owner: u32,
    pub pid: u32,
    /// Start time of `pid` (clock ticks since boot), 0 if unknown.
    pub start_time: u64,
    /// An unused entry: the free-list link (next free slot + 1, 0 = end).
    /// A used entry: the next (newer) entry of its owner bucket's chain
    /// (slot + 1, 0 = it is the tail). Derived.
    pub next: u32,
    /// A used entry: the previous (older) entry of its chain, slot + 1; the
    /// head's names the tail (itself when alone). An unused entry:
    /// [`REMOVED_NOTE`] if it holds a removal note. Derived.
    pub prev: u32,
}

/// The 8 bytes in front of every record's data.
#[derive(Clone, Copy, Debug, Pod, Zeroable, PartialEq, Eq)]
#[repr(C)]
pub struct BlockHeader {
    /// Back-pointer: the slot of the table entry that owns this block, or
    /// [`DEAD_SLOT`] for a dead block.
    pub slot: u32,
    /// Length of the record data (without padding).
    pub len: u32,
}

const _: () = {
    assert!(size_of::<Journal>() == 80);
    assert!(size_of::<Counters>() == 56);
    assert!(size_of::<Header>() == HEADER_SIZE);
    assert!(size_of::<Bptr>() == BPTR_SIZE);
    assert!(size_of::<BlockHeader>() == BLOCK_HEADER_SIZE);
    assert!(offset_of!(Header, magic) == 0);
    assert!(offset_of!(Header, endian) == 8);
    assert!(offset_of!(Header, format_version) == 12);
    // The values docs/format.md gives, not only the offsets: its title and
    // header table say version 3, the journal table `NO_MOVE = u64::MAX`.
    assert!(FORMAT_VERSION == 5);
    assert!(ENDIAN_TAG == 0x0102_0304);
    assert!(FLAG_RECOVERY_REQUIRED == 1 && OPT_REAP_ALL == 1 && OPT_NO_REAP == 2);
    assert!(COMPACTION_EAGER == 1 && COMPACTION_DEFERRED == 2);
    assert!(JOURNAL_NONE == 0 && JOURNAL_COMPACT == 1 && NO_MOVE == u64::MAX);
    assert!(DEAD_SLOT == 0xFFFF_FFFF && REMOVED_NOTE == 0xFFFF_FFFF);
    assert!(offset_of!(Header, header_size) == 16);
    assert!(offset_of!(Header, bptr_size) == 20);
    assert!(offset_of!(Header, region_size) == 24);
    assert!(offset_of!(Header, generation) == 32);
    assert!(offset_of!(Header, o_st) == 40);
    assert!(offset_of!(Header, pid_ns) == 48);
    assert!(offset_of!(Header, options) == 56);
    assert!(offset_of!(Header, mutex_size) == 60);
    assert!(offset_of!(Header, compaction) == 64);
    assert!(offset_of!(Header, trailer_size) == 68);
    assert!(offset_of!(Header, boot_id) == 72);
    assert!(offset_of!(Header, o_fr) == 88);
    assert!(offset_of!(Header, o_bptop) == 96);
    assert!(offset_of!(Header, n_bptr) == 104);
    assert!(offset_of!(Header, u_blks) == 108);
    assert!(offset_of!(Header, free_head) == 112);
    assert!(offset_of!(Header, flags) == 116);
    assert!(offset_of!(Header, journal) == 120);
    assert!(offset_of!(Header, counters) == 200);
    assert!(offset_of!(Header, last_gen) == 256);
    assert!(offset_of!(Header, dead_bytes) == 264);
    assert!(offset_of!(Header, dead_lo) == 272);
    assert!(offset_of!(Header, owner_heads) == 280);
    assert!(offset_of!(Header, last_removed) == 368);
    assert!(offset_of!(Header, last_removed_next) == 376);
    assert!(offset_of!(Journal, start) == 8);
    assert!(offset_of!(Journal, mv_done) == 72);
    assert!(offset_of!(Counters, compactions) == 40);
    assert!(offset_of!(Counters, largest_compaction) == 48);
    assert!(offset_of!(Bptr, o_beg) == 0);
    assert!(offset_of!(Bptr, gen) == 4);
    assert!(offset_of!(Bptr, owner) == 8);
    assert!(offset_of!(Bptr, pid) == 12);
    assert!(offset_of!(Bptr, start_time) == 16);
    assert!(offset_of!(Bptr, next) == 24);
    assert!(offset_of!(Bptr, prev) == 28);
    assert!(offset_of!(BlockHeader, slot) == 0);
    assert!(offset_of!(BlockHeader, len) == 4);
    assert!(HEADER_SIZE % ALIGN == 0 && BPTR_SIZE % ALIGN == 0 && TRAILER_SIZE % ALIGN == 0);
    // The trailer: the mutex, then reserved bytes, then the version word.
    assert!(MUTEX_BYTES <= TRAILER_VERSION && TRAILER_VERSION % 8 == 0);
    assert!(TRAILER_VERSION + 8 == TRAILER_SIZE);
    // The trailer (mutex) must leave room for the header and one page of use.
    assert!((HEADER_SIZE + TRAILER_SIZE) as u64 <= MIN_REGION_SIZE);
};

/// Bytes a record of `len` data bytes occupies in the block section.
pub const fn block_size(len: u64) -> u64 {
    BLOCK_HEADER_SIZE as u64 + pad8(len)
}

/// `n` rounded up to a multiple of 8 (saturating, never wraps).
pub const fn pad8(n: u64) -> u64 {
    match n.checked_add(7) {
        Some(v) => v & !7,
        None => !7,
    }
}

/// Offset of table entry `slot` in a region of `size` bytes (the table ends
/// where the trailer begins).
pub const fn bptr_offset(size: u64, slot: u32) -> u64 {
    size - TRAILER_SIZE as u64 - (slot as u64 + 1) * BPTR_SIZE as u64
}

/// Offset of the mutex in a region of `size` bytes: the trailer.
pub const fn mutex_offset(size: u64) -> u64 {
    size - TRAILER_SIZE as u64
}

/// Offset of the version word in a region of `size` bytes (8-aligned: the
/// size is a multiple of 8).
pub const fn version_offset(size: u64) -> u64 {
    size - TRAILER_SIZE as u64 + TRAILER_VERSION as u64
}

/// The compaction policy of a region, fixed at creation (header field
/// `compaction`).
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Hash)]
pub enum Compaction {
    /// mod_cachem's "compacted at all times": a remove moves every block
    /// after the record down at once.
    Eager,
    /// A remove marks the block dead; one compaction closes every hole when
    /// an insert needs the room, when dead bytes pass half of the block
    /// section, or on demand.
    #[default]
    Deferred,
}

impl Compaction {
    /// The header value.
    pub const fn to_raw(self) -> u32 {
        match self {
            Compaction::Eager => COMPACTION_EAGER,
            Compaction::Deferred => COMPACTION_DEFERRED,
        }
    }

    /// From the header value; `None` for an unknown one.
    pub const fn from_raw(v: u32) -> Option<Compaction> {
        match v {
            COMPACTION_EAGER => Some(Compaction::Eager),
            COMPACTION_DEFERRED => Some(Compaction::Deferred),
            _ => None,
        }
    }

    /// `"eager"` or `"deferred"` (CLI and status spelling).
    pub const fn as_str(self) -> &'static str {
        match self {
            Compaction::Eager => "eager",
            Compaction::Deferred => "deferred",
        }
    }
}

impl std::fmt::Display for Compaction {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.as_str())
    }
}

impl std::str::FromStr for Compaction {
    type Err = String;
    fn from_str(s: &str) -> Result<Compaction, String> {
        match s {
            "eager" => Ok(Compaction::Eager),
            "deferred" => Ok(Compaction::Deferred),
            other => Err(format!("unknown compaction policy {other:?} (eager or deferred)")),
        }
    }
}

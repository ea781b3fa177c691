//! The byte layout of a region: header, block header, block pointer.
//!
//! ```text
//! offset 0                                                        size
//! | header (384 B) | block section -> | free gap | <- bptr table |
//!                  ^ o_st            ^ o_fr      ^ o_bptop
//! ```
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
/// Version of this layout. Bumped on any incompatible change.
pub const FORMAT_VERSION: u32 = 1;
/// Size of [`Header`] in bytes; also where the block section starts.
pub const HEADER_SIZE: usize = 384;
/// Size of [`Bptr`] (one block-pointer table entry).
pub const BPTR_SIZE: usize = 32;
/// Size of [`BlockHeader`].
pub const BLOCK_HEADER_SIZE: usize = 8;
/// Every offset in the region is a multiple of this.
pub const ALIGN: usize = 8;
/// Bytes reserved in the header for the process-shared mutex.
pub const MUTEX_BYTES: usize = 64;
/// Smallest region (one page on the platforms we support).
pub const MIN_REGION_SIZE: u64 = 4096;
/// Largest region: block offsets in a table entry are `u32`.
pub const MAX_REGION_SIZE: u64 = (u32::MAX as u64) & !(ALIGN as u64 - 1);

/// `Header::flags` bit: a compaction journal is active; the region must be
/// recovered before any other operation.
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
    pub _reserved0: u32,
    pub mutex: [u8; MUTEX_BYTES],
    pub _reserved1: [u64; 10],
}

/// One block-pointer table entry. Slot `i` lives at
/// `region_size - (i + 1) * BPTR_SIZE`.
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
    /// Free-list link of an unused entry: next free slot + 1, 0 = end.
    pub next_free: u32,
    pub flags: u32,
}

/// The 8 bytes in front of every record's data.
#[derive(Clone, Copy, Debug, Pod, Zeroable, PartialEq, Eq)]
#[repr(C)]
pub struct BlockHeader {
    /// Back-pointer: the slot of the table entry that owns this block.
    pub slot: u32,
    /// Length of the record data (without padding).
    pub len: u32,
}

const _: () = {
    assert!(size_of::<Journal>() == 80);
    assert!(size_of::<Counters>() == 40);
    assert!(size_of::<Header>() == HEADER_SIZE);
    assert!(size_of::<Bptr>() == BPTR_SIZE);
    assert!(size_of::<BlockHeader>() == BLOCK_HEADER_SIZE);
    assert!(offset_of!(Header, magic) == 0);
    assert!(offset_of!(Header, endian) == 8);
    assert!(offset_of!(Header, format_version) == 12);
    assert!(offset_of!(Header, header_size) == 16);
    assert!(offset_of!(Header, bptr_size) == 20);
    assert!(offset_of!(Header, region_size) == 24);
    assert!(offset_of!(Header, generation) == 32);
    assert!(offset_of!(Header, o_st) == 40);
    assert!(offset_of!(Header, pid_ns) == 48);
    assert!(offset_of!(Header, options) == 56);
    assert!(offset_of!(Header, mutex_size) == 60);
    assert!(offset_of!(Header, boot_id) == 64);
    assert!(offset_of!(Header, o_fr) == 80);
    assert!(offset_of!(Header, o_bptop) == 88);
    assert!(offset_of!(Header, n_bptr) == 96);
    assert!(offset_of!(Header, u_blks) == 100);
    assert!(offset_of!(Header, free_head) == 104);
    assert!(offset_of!(Header, flags) == 108);
    assert!(offset_of!(Header, journal) == 112);
    assert!(offset_of!(Header, counters) == 192);
    assert!(offset_of!(Header, last_gen) == 232);
    assert!(offset_of!(Header, mutex) == 240);
    assert!(offset_of!(Header, _reserved1) == 304);
    assert!(offset_of!(Journal, start) == 8);
    assert!(offset_of!(Journal, mv_done) == 72);
    assert!(offset_of!(Bptr, o_beg) == 0);
    assert!(offset_of!(Bptr, gen) == 4);
    assert!(offset_of!(Bptr, owner) == 8);
    assert!(offset_of!(Bptr, pid) == 12);
    assert!(offset_of!(Bptr, start_time) == 16);
    assert!(offset_of!(Bptr, next_free) == 24);
    assert!(offset_of!(Bptr, flags) == 28);
    assert!(HEADER_SIZE % ALIGN == 0 && BPTR_SIZE % ALIGN == 0);
    assert!(offset_of!(Header, mutex) % 8 == 0);
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

/// Offset of table entry `slot` in a region of `size` bytes.
pub const fn bptr_offset(size: u64, slot: u32) -> u64 {
    size - (slot as u64 + 1) * BPTR_SIZE as u64
}

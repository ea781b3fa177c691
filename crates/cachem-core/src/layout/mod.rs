//! The layout engine: every region operation as pure code over a byte slice.
//!
//! [`Layout`] wraps `&mut [u8]` holding a region image without its trailer
//! (the mutex; see `format` and `docs/format.md`), so the engine's view
//! never covers bytes that waiting threads write. It performs no system
//! calls and contains no `unsafe`;
//! mapping and locking (module `region`) wrap it. Unit tests, property
//! tests and the fuzzer drive it over plain heap buffers.
//!
//! Nothing read from the image is trusted. Each operation reads the mutable
//! header fields it needs and checks them (offsets in range, ordered,
//! aligned) before they become slice indices, and every block and table
//! entry is checked before use. A corrupt image gives [`Error::Corrupt`]
//! naming the field, never a panic or an out-of-bounds access.
//!
//! Crash consistency: every mutation is a sequence of stores ordered so that
//! a process killed between any two of them leaves an image that
//! [`Layout::recover`] turns into exactly "before" or "after" the operation.
//! The publishing stores are single aligned 8-byte (or 4-byte) writes,
//! separated by compiler fences so the compiler cannot reorder them; a
//! killed process cannot stop in the middle of one instruction. See
//! `docs/design.md` for the orderings.
//!
//! The engine is split by concern, one `impl Layout` block per file:
//! `mod.rs` (this file) holds the [`Layout`] type, its constructors and the
//! raw, checked accessors every operation uses (`st`, `block`, `resolve`);
//! `format_image.rs` formats a new image and checks an image's immutable
//! header; `records.rs` reads, inserts and removes single records;
//! `batch.rs` removes many records in one pass (`retain`,
//! `remove_of_owner`, `purge`); `compaction.rs` holds the journaled
//! compaction, the deferred remove and the journal; `recovery.rs` brings an
//! image left by a killed process back to a consistent state;
//! `verify.rs` checks every invariant; `status.rs` reports usage and
//! counters; `owner_index.rs` keeps the per-owner chains.

use crate::error::{Error, Result};
use crate::format::*;
use crate::ids::{OwnerId, RecordId, RecordMeta};
use crate::sys::failpoint::hit;
use std::collections::BTreeMap;
use std::sync::atomic::{compiler_fence, Ordering};

const H: u64 = HEADER_SIZE as u64;
const B: u64 = BPTR_SIZE as u64;
const BH: u64 = BLOCK_HEADER_SIZE as u64;
/// A compaction runs when dead bytes pass `1 / DEAD_BOUND_DIV` of the block section.
const DEAD_BOUND_DIV: u64 = 2;

mod batch;
mod compaction;
pub use compaction::set_compaction_step;
use compaction::Budget;
mod format_image;
mod journal_check;
mod names;
mod owner_index;
mod records;
mod recovery;
mod status;
mod verify;

pub use batch::Removed;
use format_image::check_align;
pub use format_image::{
    check_header, check_immutable, check_size, format, max_record_len_for, FormatOptions,
};
use owner_index::bucket_of;
pub use recovery::RecoveryReport;
pub use status::{OwnerUsage, PidUsage, Status};
pub use verify::VerifyReport;

/// Pid and process start time stamped on every record.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Default)]
pub struct ProcTag {
    pub pid: u32,
    /// Process start time in clock ticks since boot (`/proc/<pid>/stat`
    /// field 22); 0 when unknown.
    pub start_time: u64,
}

/// Orders the engine's stores: for crash consistency (a kill stops the
/// process between instructions, so the compiler must not reorder stores
/// across this), and for optimistic readers of other processes during the
/// "light" mutations (see `Layout::insert_would_compact`): a release fence
/// also orders the stores in hardware (free on x86, a `dmb` on ARM).
#[inline(always)]
fn fence() {
    std::sync::atomic::fence(Ordering::Release);
    compiler_fence(Ordering::SeqCst);
}

/// Work done by the engine, counted for the cost tests
/// (`tests/cost.rs`): table entries and block headers read or written,
/// table entries scanned, 8-byte words moved. Counted only in unit tests;
/// elsewhere this is nothing.
#[inline(always)]
fn work(n: u64) {
    #[cfg(test)]
    work_count::add(n);
    #[cfg(not(test))]
    let _ = n;
}

#[cfg(test)]
pub(crate) mod work_count {
    use std::cell::Cell;
    thread_local! { static N: Cell<u64> = const { Cell::new(0) }; }
    pub fn add(n: u64) {
        N.with(|c| c.set(c.get() + n));
    }
    pub fn get() -> u64 {
        N.with(Cell::get)
    }
}

/// The mutable geometry, read and checked at the start of each operation.
#[derive(Clone, Copy, Debug)]
struct St {
    o_fr: u64,
    o_bptop: u64,
    n_bptr: u32,
}

/// A block as found in the block section.
#[derive(Clone, Copy, Debug)]
struct Blk {
    slot: u32,
    len: u32,
    /// Total bytes including header and padding.
    size: u64,
}

/// The layout engine over one region image. See the module docs.
pub struct Layout<'a> {
    buf: &'a mut [u8],
}

impl<'a> Layout<'a> {
    /// Wraps an image after validating its immutable header fields. The
    /// mutable ones are checked by each operation (and all of them by
    /// [`Layout::verify`]).
    ///
    /// `buf` is the whole image, trailer included; the engine keeps a view
    /// of everything but the trailer.
    pub fn open(buf: &'a mut [u8]) -> Result<Self> {
        check_immutable(buf)?;
        let n = buf.len() - TRAILER_SIZE;
        Ok(Layout { buf: &mut buf[..n] })
    }

    /// Wraps the engine's view of an image (the region without its
    /// trailer: `region_size - TRAILER_SIZE` bytes from the start) whose
    /// immutable fields were validated before (by [`Layout::open`] or
    /// [`check_immutable`]) and that nobody may have rewritten since.
    /// Operations read only the compaction policy among the immutable fields
    /// (sizes come from the buffer's length), so a lie here costs
    /// correctness of results, not memory safety.
    #[inline]
    pub fn reopen(view: &'a mut [u8]) -> Result<Self> {
        let full = view.len() as u64 + TRAILER_SIZE as u64;
        if view.len() < HEADER_SIZE
            || full > MAX_REGION_SIZE
            || view.len() % ALIGN != 0
            || view.as_ptr() as usize % ALIGN != 0
        {
            return Err(bad_view(view));
        }
        Ok(Layout { buf: view })
    }

    /// The same engine over the same bytes, borrowed from this one (so it
    /// cannot outlive it).
    pub fn reborrow(&mut self) -> Layout<'_> {
        Layout { buf: &mut *self.buf }
    }

    // ----- raw access ---------------------------------------------------

    /// End of the engine's view: where the table ends and the trailer
    /// begins (`region_size - TRAILER_SIZE`).
    #[inline(always)]
    fn size(&self) -> u64 {
        self.buf.len() as u64
    }

    /// Size of the whole region, trailer included.
    #[inline(always)]
    fn region_size(&self) -> u64 {
        self.size() + TRAILER_SIZE as u64
    }

    /// The region's compaction policy (an unknown value, which `verify`
    /// reports, is treated as `Deferred`).
    #[inline(always)]
    pub fn compaction(&self) -> Compaction {
        Compaction::from_raw(self.hdr().compaction).unwrap_or(Compaction::Deferred)
    }

    #[inline(always)]
    fn hdr(&self) -> &Header {
        bytemuck::from_bytes(&self.buf[..HEADER_SIZE])
    }

    #[inline(always)]
    fn hdr_mut(&mut self) -> &mut Header {
        bytemuck::from_bytes_mut(&mut self.buf[..HEADER_SIZE])
    }

    /// Table entry `slot`. The caller has checked `slot < st.n_bptr`.
    #[inline(always)]
    fn bptr(&self, slot: u32) -> &Bptr {
        work(1);
        let off = bptr_offset(self.region_size(), slot) as usize;
        bytemuck::from_bytes(&self.buf[off..off + BPTR_SIZE])
    }

    #[inline(always)]
    fn bptr_mut(&mut self, slot: u32) -> &mut Bptr {
        work(1);
        let off = bptr_offset(self.region_size(), slot) as usize;
        bytemuck::from_bytes_mut(&mut self.buf[off..off + BPTR_SIZE])
    }

    /// Writes `o_beg` and `gen` of entry `slot` in one aligned 8-byte store.
    #[inline(always)]
    fn set_loc(&mut self, slot: u32, o_beg: u32, gen: u32) {
        work(1);
        let off = bptr_offset(self.region_size(), slot) as usize;
        let word: &mut u64 = bytemuck::from_bytes_mut(&mut self.buf[off..off + 8]);
        *word = bytemuck::cast::<[u32; 2], u64>([o_beg, gen]);
    }

    /// Reads and checks the mutable geometry. Every call re-reads and
    /// re-checks it: these fields change without the version word changing
    /// (light inserts and removes), so nothing about them is remembered
    /// between operations. The checks are a handful of compares; building
    /// the error is kept out of line (`bad_geometry`).
    #[inline(always)]
    fn st(&self) -> Result<St> {
        let h = self.hdr();
        let size = self.size();
        let (o_fr, o_bptop, n_bptr) = (h.o_fr, h.o_bptop, h.n_bptr);
        if o_fr < H
            || o_fr > size
            || o_fr % 8 != 0
            || o_bptop < o_fr
            || o_bptop > size
            || (size - o_bptop) != n_bptr as u64 * B
        {
            return Err(bad_geometry(o_fr, o_bptop, n_bptr, size));
        }
        Ok(St { o_fr, o_bptop, n_bptr })
    }

    /// Reads and checks the block at `o`, which must lie within `[H, limit)`.
    #[inline(always)]
    fn block(&self, o: u64, limit: u64) -> Result<Blk> {
        work(1);
        if o < H || o % 8 != 0 || o > limit || limit - o < BH {
            return Err(bad_block_offset(o, limit));
        }
        let bh: &BlockHeader = bytemuck::from_bytes(&self.buf[o as usize..(o + BH) as usize]);
        let size = block_size(bh.len as u64);
        if size > limit - o {
            return Err(bad_block_len(o, bh.len, limit));
        }
        Ok(Blk { slot: bh.slot, len: bh.len, size })
    }

    /// Resolves a record id to (entry, block offset, block), or `Stale`.
    #[inline(always)]
    fn resolve(&self, st: &St, id: RecordId) -> Result<(Bptr, u64, Blk)> {
        let slot = id.slot();
        if slot >= st.n_bptr {
            return Err(Error::Stale(id));
        }
        let e = *self.bptr(slot);
        if e.o_beg == 0 || e.gen != id.generation() {
            return Err(Error::Stale(id));
        }
        let o = e.o_beg as u64;
        let b = match self.block(o, st.o_fr) {
            Ok(b) => b,
            Err(e) => return Err(self.bad_entry(slot, o, st, e)),
        };
        if b.slot != slot {
            return Err(bad_back_pointer(slot, o, b.slot));
        }
        Ok((e, o, b))
    }

    /// The error for used entry `slot` whose `o_beg` (`o`) does not lead
    /// to a block below `o_fr`: names the entry and the field at fault
    /// (`bptr.o_beg`, or the header's `o_fr` when it looks lowered), else
    /// `err` (the block's own damage).
    #[cold]
    #[inline(never)]
    fn bad_entry(&self, slot: u32, o: u64, st: &St, err: Error) -> Error {
        if o < H {
            return Error::corrupt(
                "bptr.o_beg",
                format!("slot {slot}: bptr.o_beg {o} is inside the header (below {H})"),
            );
        }
        if o >= st.o_fr {
            return self.past_o_fr(slot, o, st.o_fr, st.o_bptop);
        }
        err
    }

    /// The error for used entry `slot` pointing at `o` at or past `o_fr`:
    /// when a block naming that slot lies there (below the table), the
    /// header's `o_fr` is the likelier fault (lowered); else the entry's.
    #[cold]
    #[inline(never)]
    fn past_o_fr(&self, slot: u32, o: u64, o_fr: u64, o_bptop: u64) -> Error {
        if self.block(o, o_bptop).is_ok_and(|b| b.slot == slot) {
            return Error::corrupt(
                "o_fr",
                format!(
                    "header o_fr {o_fr} is not past the block of slot {slot} at {o} (entry and back-pointer agree): o_fr was lowered"
                ),
            );
        }
        Error::corrupt("bptr.o_beg", format!("slot {slot}: bptr.o_beg {o} is at or past o_fr {o_fr}"))
    }

    /// Takes the next generation from the header's counter. The counter is
    /// stored before the generation is used, so a crash can only skip a value.
    fn take_gen(&mut self) -> u32 {
        let h = self.hdr_mut();
        let g = h.last_gen.wrapping_add(1).max(1);
        h.last_gen = g;
        fence();
        g
    }
}

#[cold]
#[inline(never)]
fn bad_view(view: &[u8]) -> Error {
    let full = view.len() as u64 + TRAILER_SIZE as u64;
    if view.len() < HEADER_SIZE || full > MAX_REGION_SIZE || view.len() % ALIGN != 0 {
        return Error::corrupt("region_size", format!("{full} bytes"));
    }
    Error::corrupt("buffer", "region buffer is not 8-byte aligned")
}

#[cold]
#[inline(never)]
fn bad_geometry(o_fr: u64, o_bptop: u64, n_bptr: u32, size: u64) -> Error {
    if o_fr < H || o_fr > size || o_fr % 8 != 0 {
        Error::corrupt("o_fr", format!("{o_fr} is outside [{H}, {size}] or unaligned"))
    } else if o_bptop < o_fr || o_bptop > size {
        Error::corrupt("o_bptop", format!("{o_bptop} is outside [o_fr={o_fr}, {size}]"))
    } else {
        Error::corrupt(
            "n_bptr",
            format!("{n_bptr} entries do not fill the table from o_bptop={o_bptop} to {size}"),
        )
    }
}

#[cold]
#[inline(never)]
fn bad_back_pointer(slot: u32, o: u64, back: u32) -> Error {
    Error::corrupt("block.slot", format!("entry {slot} points to block at {o} whose back-pointer is {back}"))
}

#[cold]
fn bad_block_offset(o: u64, limit: u64) -> Error {
    Error::corrupt("block", format!("block offset {o} is outside [{H}, {limit})"))
}

#[cold]
fn bad_block_len(o: u64, len: u32, limit: u64) -> Error {
    Error::corrupt("block.len", format!("block at {o} has length {len} which runs past {limit}"))
}

fn meta_of(id: RecordId, e: &Bptr, len: u32) -> RecordMeta {
    RecordMeta { id, owner: OwnerId(e.owner), pid: e.pid, start_time: e.start_time, len }
}

fn pod_err<T>(id: RecordId, actual: usize) -> Error {
    Error::PodMismatch {
        id,
        expected: std::mem::size_of::<T>(),
        actual,
        align_ok: std::mem::align_of::<T>() <= ALIGN,
    }
}

#[cfg(test)]
mod tests;

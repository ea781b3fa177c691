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

/// Pid and process start time stamped on every record.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Default)]
pub struct ProcTag {
    pub pid: u32,
    /// Process start time in clock ticks since boot (`/proc/<pid>/stat`
    /// field 22); 0 when unknown.
    pub start_time: u64,
}

/// What [`format`](fn@format) writes into the immutable part of a new header.
#[derive(Clone, Copy, Debug, Default)]
pub struct FormatOptions {
    /// Random id of this incarnation of the region.
    pub generation: u64,
    /// `/proc/sys/kernel/random/boot_id` of the creating boot.
    pub boot_id: [u8; 16],
    /// Inode of the creator's pid namespace, 0 if unknown.
    pub pid_ns: u64,
    /// `OPT_*` bits.
    pub options: u32,
    /// `size_of::<pthread_mutex_t>()` of the creator (part of the ABI tag).
    pub mutex_size: u32,
    /// The compaction policy, fixed for the region's life.
    pub compaction: Compaction,
}

/// Largest record a region of `size` bytes (trailer included) could ever
/// hold (when empty).
pub fn max_record_len_for(size: u64) -> u64 {
    size.saturating_sub(TRAILER_SIZE as u64).saturating_sub(H).saturating_sub(BH + B) & !7
}

/// Checks that `size` can be a region size.
pub fn check_size(size: u64) -> Result<()> {
    if size % ALIGN as u64 != 0 {
        return Err(Error::BadSize { size, reason: "must be a multiple of 8" });
    }
    if size < MIN_REGION_SIZE {
        return Err(Error::BadSize { size, reason: "must be at least one page (4096 bytes)" });
    }
    if size > MAX_REGION_SIZE {
        return Err(Error::BadSize { size, reason: "must be below 4 GiB (block offsets are 32-bit)" });
    }
    Ok(())
}

/// Initialises a region image in `buf`: header, empty block section, empty
/// table. The magic is written last, so a reader never accepts a half-made
/// header. Every byte of `buf` is overwritten.
pub fn format(buf: &mut [u8], opts: &FormatOptions) -> Result<()> {
    check_size(buf.len() as u64)?;
    check_align(buf)?;
    buf.fill(0);
    let size = buf.len() as u64;
    let h: &mut Header = bytemuck::from_bytes_mut(&mut buf[..HEADER_SIZE]);
    h.endian = ENDIAN_TAG;
    h.format_version = FORMAT_VERSION;
    h.header_size = HEADER_SIZE as u32;
    h.bptr_size = BPTR_SIZE as u32;
    h.region_size = size;
    h.generation = opts.generation;
    h.o_st = H;
    h.pid_ns = opts.pid_ns;
    h.options = opts.options;
    h.mutex_size = opts.mutex_size;
    h.compaction = opts.compaction.to_raw();
    h.trailer_size = TRAILER_SIZE as u32;
    h.boot_id = opts.boot_id;
    h.o_fr = H;
    h.o_bptop = size - TRAILER_SIZE as u64;
    h.journal.mv_src = NO_MOVE;
    // Start the generations at a per-region value, so an id from another
    // region is almost surely stale here.
    h.last_gen = (opts.generation ^ (opts.generation >> 32)) as u32;
    fence();
    h.magic = MAGIC;
    Ok(())
}

fn check_align(buf: &[u8]) -> Result<()> {
    if buf.as_ptr() as usize % ALIGN != 0 {
        return Err(Error::corrupt("buffer", "region buffer is not 8-byte aligned"));
    }
    Ok(())
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

/// Validates the immutable header fields of an image against its length.
/// Used by [`Layout::open`] and by attach before a mapping is trusted.
pub fn check_immutable(buf: &[u8]) -> Result<()> {
    check_align(buf)?;
    if buf.len() < HEADER_SIZE {
        return Err(Error::corrupt(
            "region_size",
            format!("image of {} bytes is smaller than the {HEADER_SIZE}-byte header", buf.len()),
        ));
    }
    check_header(bytemuck::from_bytes(&buf[..HEADER_SIZE]), buf.len() as u64)
}

/// Validates the immutable fields of header `h` of an image of `len` bytes.
pub fn check_header(h: &Header, len: u64) -> Result<()> {
    if h.magic != MAGIC {
        return Err(Error::corrupt("magic", format!("{:02x?} is not a cachem region", h.magic)));
    }
    if h.endian != ENDIAN_TAG {
        let what = if h.endian == ENDIAN_TAG.swap_bytes() {
            "other byte order".to_string()
        } else {
            format!("unknown ABI tag {:#010x}", h.endian)
        };
        return Err(Error::ForeignAbi { what });
    }
    if h.format_version != FORMAT_VERSION {
        return Err(Error::Version { found: h.format_version, supported: FORMAT_VERSION });
    }
    if h.header_size as usize != HEADER_SIZE {
        return Err(Error::corrupt("header_size", format!("{} (expected {HEADER_SIZE})", h.header_size)));
    }
    if h.bptr_size as usize != BPTR_SIZE {
        return Err(Error::corrupt("bptr_size", format!("{} (expected {BPTR_SIZE})", h.bptr_size)));
    }
    if h.region_size != len {
        return Err(Error::corrupt(
            "region_size",
            format!("header says {} bytes, the image has {len}", h.region_size),
        ));
    }
    if let Err(e) = check_size(h.region_size) {
        return Err(Error::corrupt("region_size", e.to_string()));
    }
    if h.o_st != H {
        return Err(Error::corrupt("o_st", format!("{} (expected {H})", h.o_st)));
    }
    if h.options & !(OPT_REAP_ALL | OPT_NO_REAP) != 0 {
        return Err(Error::corrupt("options", format!("unknown bits {:#x}", h.options)));
    }
    if Compaction::from_raw(h.compaction).is_none() {
        return Err(Error::corrupt("compaction", format!("unknown policy {}", h.compaction)));
    }
    if h.trailer_size as usize != TRAILER_SIZE {
        return Err(Error::corrupt("trailer_size", format!("{} (expected {TRAILER_SIZE})", h.trailer_size)));
    }
    Ok(())
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

/// What a batch removal took out.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct Removed {
    pub records: usize,
    /// Bytes given back to the free gap (block headers and padding included).
    pub bytes: u64,
}

/// What [`Layout::recover`] found and did.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct RecoveryReport {
    /// An interrupted compaction was finished.
    pub finished_compaction: bool,
    /// Table entries of interrupted inserts that were rolled back.
    pub rolled_back_inserts: u32,
    /// Deferred removes killed between marking the block dead and clearing
    /// the entry, finished.
    pub finished_removes: u32,
}

/// What [`Layout::verify`] checked.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct VerifyReport {
    pub records: u32,
    pub slots: u32,
    pub free_slots: u32,
    pub used_bytes: u64,
    pub free_bytes: u64,
    /// Bytes of dead blocks (included in `used_bytes`).
    pub dead_bytes: u64,
    pub dead_blocks: u32,
}

/// Records and bytes of one owner.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct OwnerUsage {
    pub owner: OwnerId,
    pub records: u32,
    /// Data bytes (without block headers and padding).
    pub bytes: u64,
}

/// Records of one inserting process.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct PidUsage {
    pub pid: u32,
    pub start_time: u64,
    pub records: u32,
    pub bytes: u64,
}

/// A snapshot of a region's state for status output.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Status {
    pub size: u64,
    pub header_size: u64,
    pub o_fr: u64,
    pub o_bptop: u64,
    /// Bytes of the block section (`o_fr - o_st`).
    pub used_bytes: u64,
    /// Bytes of the free gap.
    pub free_bytes: u64,
    /// Bytes of the block-pointer table.
    pub table_bytes: u64,
    pub records: u32,
    pub slots: u32,
    pub free_slots: u32,
    pub owners: Vec<OwnerUsage>,
    /// One row per (pid, start time).
    pub pids: Vec<PidUsage>,
    pub counters: Counters,
    /// Bytes of the trailer (the lock) at the end of the region.
    pub trailer_bytes: u64,
    /// Bytes of dead blocks waiting for a compaction (part of `used_bytes`).
    pub dead_bytes: u64,
    /// Dead blocks waiting for a compaction.
    pub dead_blocks: u32,
    /// The region's compaction policy.
    pub compaction: Compaction,
    pub generation: u64,
    pub boot_id: [u8; 16],
    pub pid_ns: u64,
    pub options: u32,
    pub recovery_required: bool,
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
        let off = bptr_offset(self.region_size(), slot) as usize;
        bytemuck::from_bytes(&self.buf[off..off + BPTR_SIZE])
    }

    #[inline(always)]
    fn bptr_mut(&mut self, slot: u32) -> &mut Bptr {
        let off = bptr_offset(self.region_size(), slot) as usize;
        bytemuck::from_bytes_mut(&mut self.buf[off..off + BPTR_SIZE])
    }

    /// Writes `o_beg` and `gen` of entry `slot` in one aligned 8-byte store.
    #[inline(always)]
    fn set_loc(&mut self, slot: u32, o_beg: u32, gen: u32) {
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
        let b = self.block(o, st.o_fr)?;
        if b.slot != slot {
            return Err(bad_back_pointer(slot, o, b.slot));
        }
        Ok((e, o, b))
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

    // ----- reads ----------------------------------------------------------

    /// The record's bytes, or `Stale` / `Corrupt`.
    #[inline(always)]
    pub fn try_get(&self, id: RecordId) -> Result<&[u8]> {
        let st = self.st()?;
        let (_, o, b) = self.resolve(&st, id)?;
        let d = (o + BH) as usize;
        Ok(&self.buf[d..d + b.len as usize])
    }

    /// The record's bytes, or `None` if the id is stale (or the region corrupt).
    #[inline]
    pub fn get(&self, id: RecordId) -> Option<&[u8]> {
        self.try_get(id).ok()
    }

    /// The record's bytes for writing, or `Stale` / `Corrupt`.
    pub fn try_get_mut(&mut self, id: RecordId) -> Result<&mut [u8]> {
        let st = self.st()?;
        self.check_no_journal()?;
        let (_, o, b) = self.resolve(&st, id)?;
        let d = (o + BH) as usize;
        Ok(&mut self.buf[d..d + b.len as usize])
    }

    /// The record's bytes for writing, or `None`.
    #[inline]
    pub fn get_mut(&mut self, id: RecordId) -> Option<&mut [u8]> {
        self.try_get_mut(id).ok()
    }

    /// Owner, pid, start time and length of a record.
    pub fn meta(&self, id: RecordId) -> Result<RecordMeta> {
        let st = self.st()?;
        let (e, _, b) = self.resolve(&st, id)?;
        Ok(meta_of(id, &e, b.len))
    }

    /// The record as a `T`. Errors if the length differs from
    /// `size_of::<T>()` or `T` needs alignment above 8.
    pub fn get_pod<T: bytemuck::Pod>(&self, id: RecordId) -> Result<&T> {
        let bytes = self.try_get(id)?;
        bytemuck::try_from_bytes(bytes).map_err(|_| pod_err::<T>(id, bytes.len()))
    }

    /// The record as a mutable `T`.
    pub fn get_pod_mut<T: bytemuck::Pod>(&mut self, id: RecordId) -> Result<&mut T> {
        let bytes = self.try_get_mut(id)?;
        let len = bytes.len();
        bytemuck::try_from_bytes_mut(bytes).map_err(|_| pod_err::<T>(id, len))
    }

    /// The next record of `owner` after `after`, or the first one when
    /// `after` is `None`. mod_cachem's `cachem_get_id`. Follows the owner
    /// index, so it costs time in proportion to the records of the owner
    /// (and of owners sharing its bucket), not to the table.
    ///
    /// Order: insertion order, oldest first (a recovery keeps it), which
    /// is the table's slot order as long as nothing was removed. `after` is
    /// normally the id the previous call returned; records inserted
    /// meanwhile join the end and are visited too (a loop that replaces
    /// each record it visits must stop at its first replacement). If
    /// `after` was removed since, the iteration goes on with the record
    /// that followed it (the remove left a note), so both of the seed's
    /// loops work: fetch the next id and then remove the current one, or
    /// remove it and then ask for the next after it. A record of another
    /// owner in the same owner bucket (see `docs/format.md`) also gives its
    /// place in the bucket's chain.
    ///
    /// It starts over from the first (and may then visit a record again)
    /// when the removed `after`'s note is gone: a new record took its slot
    /// *and* another remove came since (the header keeps only the latest
    /// note), or it held the table's top entry (dropped with its note) and
    /// another remove came since, or a recovery ran and its entry was reused
    /// or dropped; and for an `after` of an owner in another bucket or a
    /// made-up id. A loop that starts from `None` and passes back what it
    /// got ends on any image; after a removal on a corrupt image (a chain
    /// that `verify` rejects) it may not.
    pub fn next_of_owner(&self, owner: OwnerId, after: Option<RecordId>) -> Option<RecordId> {
        self.next_where(owner, after, |_| true)
    }

    /// The next record of `owner` inserted by `pid`, in the order of
    /// [`Layout::next_of_owner`]. mod_cachem's `cachem_get_pid`.
    pub fn next_of_owner_pid(&self, owner: OwnerId, pid: u32, after: Option<RecordId>) -> Option<RecordId> {
        self.next_where(owner, after, |e| e.pid == pid)
    }

    fn next_where(
        &self,
        owner: OwnerId,
        after: Option<RecordId>,
        f: impl FnMut(&Bptr) -> bool,
    ) -> Option<RecordId> {
        let st = self.st().ok()?;
        let b = bucket_of(owner.0);
        let at = self.resume(st.n_bptr, b, after);
        let found = self.chain_find(st.n_bptr, b, at, owner.0, f).ok()??;
        Some(RecordId::new(found.0, found.1.gen))
    }

    /// Every record, in slot order, with its metadata and bytes. Entries that
    /// fail their checks are skipped (`verify` reports them).
    pub fn iter(&self) -> impl Iterator<Item = (RecordMeta, &[u8])> + '_ {
        let st = self.st().ok();
        let n = st.map_or(0, |st| st.n_bptr);
        (0..n).filter_map(move |slot| {
            let e = self.bptr(slot);
            if e.o_beg == 0 {
                return None;
            }
            let id = RecordId::new(slot, e.gen);
            let (e, o, b) = self.resolve(st.as_ref()?, id).ok()?;
            let d = (o + BH) as usize;
            Some((meta_of(id, &e, b.len), &self.buf[d..d + b.len as usize]))
        })
    }

    /// The records of one owner, in the order of
    /// [`Layout::next_of_owner`], through the owner index. Stops early at an
    /// entry that fails its checks (`verify` reports it).
    pub fn iter_owner(&self, owner: OwnerId) -> impl Iterator<Item = (RecordId, &[u8])> + '_ {
        self.iter_owner_meta(owner).map(|(m, d)| (m.id, d))
    }

    /// [`Layout::iter_owner`] with each record's metadata.
    pub fn iter_owner_meta(&self, owner: OwnerId) -> impl Iterator<Item = (RecordMeta, &[u8])> + '_ {
        let st = self.st().ok();
        let b = bucket_of(owner.0);
        let mut at = st.as_ref().map(|st| self.resume(st.n_bptr, b, None));
        std::iter::from_fn(move || {
            let st = st.as_ref()?;
            let (slot, _, next) = self.chain_find(st.n_bptr, b, at?, owner.0, |_| true).ok()??;
            at = Some(next);
            let id = RecordId::new(slot, self.bptr(slot).gen);
            let Ok((e, o, bl)) = self.resolve(st, id) else {
                at = None;
                return None;
            };
            let d = (o + BH) as usize;
            Some((meta_of(id, &e, bl.len), &self.buf[d..d + bl.len as usize]))
        })
    }

    // ----- insert ---------------------------------------------------------

    /// Largest record this region could ever hold (when empty).
    pub fn max_record_len(&self) -> u64 {
        max_record_len_for(self.region_size())
    }

    /// Inserts a record and returns its id. `Full` if the free gap is too
    /// small now, `TooLarge` if the record could never fit.
    pub fn insert(&mut self, owner: OwnerId, tag: ProcTag, data: &[u8]) -> Result<RecordId> {
        let len = data.len() as u64;
        if len > self.max_record_len() {
            return Err(Error::TooLarge { len, max: self.max_record_len() });
        }
        let mut st = self.st()?;
        self.check_no_journal()?;
        let need = block_size(len);
        let head = self.hdr().free_head;
        let want = need + if head == 0 { B } else { 0 };
        if want > st.o_bptop - st.o_fr && self.hdr().dead_bytes != 0 {
            // Dead blocks hold the room: close every hole, then try.
            self.compact_now()?;
            st = self.st()?;
        }
        let free = st.o_bptop - st.o_fr;
        let bucket = bucket_of(owner.0);
        let tail = self.check_ends(st.n_bptr, bucket)?;

        // 1. Take a table entry: the free list first, else grow the table.
        let (slot, gen, o_bptop) = if head != 0 {
            let slot = head - 1;
            if slot >= st.n_bptr {
                return Err(Error::corrupt(
                    "free_head",
                    format!("{head} is beyond the {} table entries", st.n_bptr),
                ));
            }
            let e = *self.bptr(slot);
            if e.o_beg != 0 {
                return Err(Error::corrupt(
                    "free_head",
                    format!("entry {slot} is on the free list but in use"),
                ));
            }
            if e.next > st.n_bptr {
                return Err(Error::corrupt("bptr.next", format!("free entry {slot} links to {}", e.next)));
            }
            if need > free {
                return Err(Error::Full { needed: need, free });
            }
            self.hdr_mut().free_head = e.next;
            (slot, e.gen, st.o_bptop)
        } else {
            if need + B > free {
                return Err(Error::Full { needed: need + B, free });
            }
            let slot = st.n_bptr;
            let gen = self.take_gen();
            let o_bptop = st.o_bptop - B;
            let off = o_bptop as usize;
            let e: &mut Bptr = bytemuck::from_bytes_mut(&mut self.buf[off..off + BPTR_SIZE]);
            *e = Bptr { o_beg: 0, gen, owner: 0, pid: 0, start_time: 0, next: 0, prev: 0 };
            fence();
            let h = self.hdr_mut();
            h.o_bptop = o_bptop;
            h.n_bptr = slot + 1;
            (slot, gen, o_bptop)
        };
        fence();
        hit("insert.after_take");

        // 2. Write the block past o_fr (invisible until o_fr moves).
        let o = st.o_fr as usize;
        debug_assert!(st.o_fr + need <= o_bptop);
        let bh: &mut BlockHeader = bytemuck::from_bytes_mut(&mut self.buf[o..o + BLOCK_HEADER_SIZE]);
        *bh = BlockHeader { slot, len: len as u32 };
        let d = o + BLOCK_HEADER_SIZE;
        self.buf[d..d + data.len()].copy_from_slice(data);
        self.buf[d + data.len()..o + need as usize].fill(0);
        fence();
        hit("insert.after_block");

        // 3. Publish the entry: metadata first, then offset + gen in one
        // store; then append it to its owner chain.
        let e = self.bptr_mut(slot);
        e.owner = owner.0;
        e.pid = tag.pid;
        e.start_time = tag.start_time;
        e.next = 0;
        e.prev = if tail == 0 { slot + 1 } else { tail };
        fence();
        self.set_loc(slot, st.o_fr as u32, gen);
        fence();
        hit("insert.after_publish");
        self.link_back(slot, bucket, tail);

        // 4. Advance o_fr: the insert is done.
        self.hdr_mut().o_fr = st.o_fr + need;
        fence();
        let h = self.hdr_mut();
        h.u_blks = h.u_blks.wrapping_add(1);
        h.counters.inserts = h.counters.inserts.wrapping_add(1);
        Ok(RecordId::new(slot, gen))
    }

    /// Whether an insert of `len` bytes may move or rewrite a live
    /// record's block or table entry (it compacts first when dead blocks
    /// hold the room it needs). When it does not, the insert only writes the
    /// free gap, an unused table entry and header fields, none of which an
    /// optimistic reader of a live record copies: the guard then leaves the
    /// version even (a "light" mutation; see `docs/design.md`). True when
    /// in doubt.
    pub fn insert_would_compact(&self, len: usize) -> bool {
        let Ok(st) = self.st() else { return true };
        let h = self.hdr();
        let want = block_size(len as u64) + if h.free_head == 0 { B } else { 0 };
        h.dead_bytes != 0 && want > st.o_bptop - st.o_fr
    }

    /// Whether removing `id` may move or rewrite another live record's
    /// block or entry: always under `Eager` (it compacts); under `Deferred`
    /// only if it passes the dead-byte bound and compacts. A Deferred remove
    /// that does not compact marks the block dead and clears the entry (one
    /// store each): a reader of the removed record gets its last value or
    /// `Stale`, readers of other records are untouched. True when in doubt.
    pub fn remove_would_compact(&self, id: RecordId) -> bool {
        if self.compaction() != Compaction::Deferred {
            return true;
        }
        let Ok(st) = self.st() else { return true };
        let Ok((_, _, b)) = self.resolve(&st, id) else { return true };
        let h = self.hdr();
        let dead = h.dead_bytes.saturating_add(b.size);
        dead.saturating_mul(DEAD_BOUND_DIV) > h.o_fr.saturating_sub(H)
    }

    /// Inserts `value`'s bytes.
    pub fn insert_pod<T: bytemuck::Pod>(
        &mut self,
        owner: OwnerId,
        tag: ProcTag,
        value: &T,
    ) -> Result<RecordId> {
        self.insert(owner, tag, bytemuck::bytes_of(value))
    }

    // ----- remove ---------------------------------------------------------

    /// Removes a record. Under `Eager`, the block section behind it is
    /// compacted at once; under `Deferred`, the block is marked dead and a
    /// compaction runs only when dead bytes pass half of the block
    /// section (see [`Layout::compact_now`]).
    pub fn remove(&mut self, id: RecordId) -> Result<()> {
        let st = self.st()?;
        self.check_no_journal()?;
        let (_, o, b) = self.resolve(&st, id)?;
        self.check_links(st.n_bptr, id.slot())?;
        let succ = self.unlink(id.slot());
        if self.compaction() == Compaction::Deferred {
            self.kill_block(id.slot(), o, b.size);
            self.note_removed(id, succ, true);
            self.release_slot(id.slot())?;
            return self.compact_if_due();
        }
        self.start_journal(o, st.o_fr, o + b.size);
        hit("remove.after_journal");
        let gen = self.take_gen();
        self.set_loc(id.slot(), 0, gen);
        fence();
        hit("remove.after_clear");
        self.note_removed(id, succ, true);
        let moved = self.compact(false)?;
        self.count_compaction(moved);
        let h = self.hdr_mut();
        h.u_blks = h.u_blks.wrapping_sub(1);
        h.counters.removes = h.counters.removes.wrapping_add(1);
        self.release_slot(id.slot())
    }

    /// Removes every record for which `keep` returns false, in one
    /// compaction pass. Each record is removed entirely or not at all even
    /// if the process dies midway (a batch can be cut short by a crash).
    pub fn retain(&mut self, keep: impl FnMut(&RecordMeta, &[u8]) -> bool) -> Result<Removed> {
        self.retain_then(keep, || {})
    }

    /// [`Layout::retain`], calling `before` once before the first change
    /// (not at all when nothing is removed): the guard makes the readers'
    /// version odd there, so a pass that removes nothing leaves readers
    /// alone.
    pub fn retain_then(
        &mut self,
        mut keep: impl FnMut(&RecordMeta, &[u8]) -> bool,
        before: impl FnOnce(),
    ) -> Result<Removed> {
        let st = self.st()?;
        self.check_no_journal()?;
        let mut victims: Vec<(RecordId, u64, u64)> = Vec::new();
        for slot in 0..st.n_bptr {
            let e = *self.bptr(slot);
            if e.o_beg == 0 {
                continue;
            }
            let id = RecordId::new(slot, e.gen);
            let (e, o, b) = self.resolve(&st, id)?;
            let d = (o + BH) as usize;
            if !keep(&meta_of(id, &e, b.len), &self.buf[d..d + b.len as usize]) {
                victims.push((id, o, b.size));
            }
        }
        if !victims.is_empty() {
            before();
        }
        self.remove_batch(&st, &victims)
    }

    /// Removes the records of `owner` for which `pick` returns true, in one
    /// pass like [`Layout::retain`], visiting only that owner's chain.
    pub fn remove_of_owner(
        &mut self,
        owner: OwnerId,
        pick: impl FnMut(&RecordMeta, &[u8]) -> bool,
    ) -> Result<Removed> {
        self.remove_of_owner_then(owner, pick, || {})
    }

    /// [`Layout::remove_of_owner`], calling `before` once before the first
    /// change (see [`Layout::retain_then`]).
    pub fn remove_of_owner_then(
        &mut self,
        owner: OwnerId,
        mut pick: impl FnMut(&RecordMeta, &[u8]) -> bool,
        before: impl FnOnce(),
    ) -> Result<Removed> {
        let st = self.st()?;
        self.check_no_journal()?;
        let b = bucket_of(owner.0);
        let mut at = self.resume(st.n_bptr, b, None);
        let mut victims: Vec<(RecordId, u64, u64)> = Vec::new();
        while let Some((slot, e, next)) = self.chain_find(st.n_bptr, b, at, owner.0, |_| true)? {
            at = next;
            let id = RecordId::new(slot, e.gen);
            let (e, o, bl) = self.resolve(&st, id)?;
            let d = (o + BH) as usize;
            if pick(&meta_of(id, &e, bl.len), &self.buf[d..d + bl.len as usize]) {
                victims.push((id, o, bl.size));
            }
        }
        if !victims.is_empty() {
            before();
        }
        self.remove_batch(&st, &victims)
    }

    /// Removes the resolved records `victims` (id, block offset, block
    /// size; each once) in one compaction pass.
    fn remove_batch(&mut self, st: &St, victims: &[(RecordId, u64, u64)]) -> Result<Removed> {
        if victims.is_empty() {
            return Ok(Removed::default());
        }
        let (mut lo, mut hi, mut bytes) = (u64::MAX, 0u64, 0u64);
        for &(id, o, size) in victims {
            self.check_links(st.n_bptr, id.slot())?;
            lo = lo.min(o);
            hi = hi.max(o + size);
            bytes += size;
        }
        // Unlinking one victim keeps its neighbours' links consistent, so
        // the checks above still hold for the next one. Each victim is
        // unlinked just before it is cleared: a kill leaves at most one
        // live entry off its chain, which recovery puts back in place.
        if self.compaction() == Compaction::Deferred {
            for (i, &(id, o, size)) in victims.iter().enumerate() {
                let succ = self.unlink(id.slot());
                self.kill_block(id.slot(), o, size);
                self.note_removed(id, succ, i + 1 == victims.len());
            }
            self.rebuild_derived()?;
            self.compact_if_due()?;
            return Ok(Removed { records: victims.len(), bytes });
        }
        self.start_journal(lo, st.o_fr, hi);
        hit("remove.after_journal");
        for (i, &(id, _, _)) in victims.iter().enumerate() {
            let succ = self.unlink(id.slot());
            let gen = self.take_gen();
            self.set_loc(id.slot(), 0, gen);
            fence();
            self.note_removed(id, succ, i + 1 == victims.len());
        }
        fence();
        hit("remove.after_clear");
        let moved = self.compact(false)?;
        self.count_compaction(moved);
        let h = self.hdr_mut();
        h.counters.removes = h.counters.removes.wrapping_add(victims.len() as u64);
        self.rebuild_derived()?;
        Ok(Removed { records: victims.len(), bytes })
    }

    /// Removes every record of `owner` inserted by `pid` and returns how
    /// many. mod_cachem's `cachem_delete_pid`.
    pub fn purge(&mut self, owner: OwnerId, pid: u32) -> Result<usize> {
        Ok(self.remove_of_owner(owner, |m, _| m.pid == pid)?.records)
    }

    /// Adds `n` to the reaped-records counter (the reaper's bookkeeping).
    pub fn count_reaped(&mut self, n: u64) {
        let c = &mut self.hdr_mut().counters;
        c.reaped_records = c.reaped_records.wrapping_add(n);
    }

    /// Adds one to the lock-recoveries counter.
    pub fn count_recovery(&mut self) {
        let c = &mut self.hdr_mut().counters;
        c.recoveries = c.recoveries.wrapping_add(1);
    }

    /// The deferred remove of the block of `slot` at `o` (`size` bytes):
    /// mark the block dead, clear the entry, count the dead bytes. The
    /// caller releases the slot. Killed after the mark, the entry points at
    /// a dead block, which recovery recognises and finishes (the record is
    /// removed); the dead-byte count and the free list are derived state,
    /// rebuilt by recovery.
    fn kill_block(&mut self, slot: u32, o: u64, size: u64) {
        let at = o as usize;
        *bytemuck::from_bytes_mut::<u32>(&mut self.buf[at..at + 4]) = DEAD_SLOT;
        fence();
        hit("defer.after_mark");
        let gen = self.take_gen();
        self.set_loc(slot, 0, gen);
        fence();
        hit("defer.after_clear");
        let h = self.hdr_mut();
        h.dead_bytes = h.dead_bytes.wrapping_add(size);
        if h.dead_lo == 0 || o < h.dead_lo {
            h.dead_lo = o;
        }
        h.u_blks = h.u_blks.wrapping_sub(1);
        h.counters.removes = h.counters.removes.wrapping_add(1);
        fence();
        hit("defer.after_count");
    }

    /// Compacts if dead bytes are more than half of the block section: the
    /// compaction then moves at most one live byte per dead byte, so the
    /// amortised cost of a remove is a few record-sizes of memmove.
    fn compact_if_due(&mut self) -> Result<()> {
        let h = self.hdr();
        if h.dead_bytes != 0 && h.dead_bytes.saturating_mul(DEAD_BOUND_DIV) > h.o_fr.saturating_sub(H) {
            self.compact_now()?;
        }
        Ok(())
    }

    /// Closes every hole of the block section in one compaction (journaled:
    /// a process killed midway leaves a journal that the next locker
    /// finishes). Returns the bytes moved. Does nothing if there is no dead
    /// block (always so under `Eager`).
    pub fn compact_now(&mut self) -> Result<u64> {
        let st = self.st()?;
        self.check_no_journal()?;
        let h = self.hdr();
        if h.dead_bytes == 0 {
            return Ok(0);
        }
        let start = h.dead_lo;
        if start < H || start >= st.o_fr || start % 8 != 0 {
            return Err(Error::corrupt("dead_lo", format!("{start} is outside [{H}, o_fr={})", st.o_fr)));
        }
        if self.block(start, st.o_fr)?.slot != DEAD_SLOT {
            return Err(Error::corrupt("dead_lo", format!("{start} is not the start of a dead block")));
        }
        self.start_journal(start, st.o_fr, st.o_fr);
        hit("compact.after_journal");
        let moved = self.compact(false)?;
        self.count_compaction(moved);
        Ok(moved)
    }

    /// The journal, read one word at a time: `black_box` keeps the compiler
    /// from merging the loads of words the compaction loop has just stored
    /// into one wide load, which would wait for those stores to retire
    /// (a store-forwarding stall on every step of the loop).
    #[inline(always)]
    fn journal_fields(&self) -> Journal {
        let h = self.hdr();
        let j = &h.journal;
        Journal {
            op: j.op,
            _pad: 0,
            start: std::hint::black_box(j.start),
            src: std::hint::black_box(j.src),
            dst: std::hint::black_box(j.dst),
            end: j.end,
            live_from: j.live_from,
            mv_src: std::hint::black_box(j.mv_src),
            mv_dst: j.mv_dst,
            mv_len: j.mv_len,
            mv_done: j.mv_done,
        }
    }

    fn count_compaction(&mut self, moved: u64) {
        let c = &mut self.hdr_mut().counters;
        c.bytes_moved = c.bytes_moved.wrapping_add(moved);
        c.compactions = c.compactions.wrapping_add(1);
        c.largest_compaction = c.largest_compaction.max(moved);
    }

    /// Bytes of dead blocks waiting for a compaction (from the header).
    pub fn dead_bytes(&self) -> u64 {
        self.hdr().dead_bytes
    }

    fn check_no_journal(&self) -> Result<()> {
        let h = self.hdr();
        if h.journal.op != JOURNAL_NONE || h.flags & FLAG_RECOVERY_REQUIRED != 0 {
            return Err(Error::RecoveryRequired);
        }
        Ok(())
    }

    fn start_journal(&mut self, start: u64, end: u64, live_from: u64) {
        let h = self.hdr_mut();
        h.journal = Journal {
            op: JOURNAL_NONE,
            _pad: 0,
            start,
            src: start,
            dst: start,
            end,
            live_from,
            mv_src: NO_MOVE,
            mv_dst: 0,
            mv_len: 0,
            mv_done: 0,
        };
        fence();
        h.journal.op = JOURNAL_COMPACT;
        fence();
        h.flags |= FLAG_RECOVERY_REQUIRED;
        fence();
    }

    /// Returns a just-freed slot: shrinks the table if it was the top entry,
    /// else pushes it on the free list.
    fn release_slot(&mut self, slot: u32) -> Result<()> {
        let h = self.hdr();
        if slot + 1 == h.n_bptr {
            // Shrinking may drop other free entries from the top too; the
            // free list is rebuilt then (it is derived state).
            return self.rebuild_derived();
        }
        let head = h.free_head;
        self.bptr_mut(slot).next = head;
        fence();
        self.hdr_mut().free_head = slot + 1;
        Ok(())
    }

    /// Runs (or resumes) the compaction described by the journal, then sets
    /// `o_fr` and clears the journal. Returns the bytes moved. The same code
    /// serves a fresh remove and recovery: every step is idempotent.
    fn compact(&mut self, recovering: bool) -> Result<u64> {
        let size = self.size();
        let mut moved = 0u64;
        let n_bptr = self.hdr().n_bptr;
        // Average block size, for choosing the fixup (computed once).
        let avg = {
            let h = self.hdr();
            ((h.o_fr.saturating_sub(H)) / (h.u_blks.max(1) as u64)).max(BH)
        };
        loop {
            // Field by field (not a struct copy): the loop has just stored
            // some of these words, and one wide load over them would stall
            // on store forwarding at every step.
            let j = self.journal_fields();
            let end = j.end;
            // Killed between the two advancing stores of a finished move
            // (dst already moved, src not): finish the advance.
            if j.mv_src == j.src
                && j.mv_len != 0
                && j.mv_dst.checked_add(j.mv_len) == Some(j.dst)
                && j.mv_src.checked_add(j.mv_len).is_some_and(|e| e <= end)
            {
                self.hdr_mut().journal.src = j.mv_src + j.mv_len;
                fence();
                continue;
            }
            // The journal of a fresh compaction holds only values this loop
            // derived from checked ones (and bounds-checked slicing backs
            // them up); one found by recovery is checked on every step.
            if recovering
                && (!(H <= j.start
                    && j.start <= j.dst
                    && j.dst <= j.src
                    && j.src <= end
                    && j.start <= j.live_from
                    && j.live_from <= end
                    && end <= self.hdr().o_bptop.min(size))
                    || (j.start | j.src | j.dst | end) % 8 != 0)
            {
                return Err(Error::corrupt(
                    "journal",
                    format!("impossible state start={} dst={} src={} end={end}", j.start, j.dst, j.src),
                ));
            }
            if j.mv_src == j.src && j.src != end {
                // A run move is in progress (or about to start).
                let (src, dst, len) = (j.mv_src, j.mv_dst, j.mv_len);
                if recovering
                    && (dst != j.dst
                        || len == 0
                        || len % 8 != 0
                        || src.checked_add(len).is_none_or(|e| e > end)
                        || j.mv_done > len
                        || j.mv_done % 8 != 0)
                {
                    return Err(Error::corrupt(
                        "journal.mv",
                        format!("impossible move src={src} dst={dst} len={len} done={}", j.mv_done),
                    ));
                }
                let gap = src - dst;
                let mut done = j.mv_done;
                if gap == 0 {
                    done = len;
                }
                if done < len {
                    move_run(self.buf, src, dst, len, done);
                }
                hit("compact.after_move");
                // Fix the moved blocks' entries.
                if gap != 0 {
                    if !recovering && (n_bptr as u64) <= 4 * (len / avg) {
                        self.fixup_by_table(src, len, gap);
                    } else {
                        self.fixup_by_walk(dst, len)?;
                    }
                    moved += len;
                }
                fence();
                self.hdr_mut().journal.dst = dst + len;
                fence();
                hit("compact.mid_advance");
                self.hdr_mut().journal.src = src + len;
                fence();
                continue;
            }
            if j.src == end {
                break;
            }
            // Decide what lies at src: dead blocks to skip (all of them up
            // to the next live block, in one store: they stay dead), or a
            // live run.
            let live = |l: &Self, at: u64, b: &Blk| b.slot < n_bptr && l.bptr(b.slot).o_beg as u64 == at;
            let deferred = self.compaction() == Compaction::Deferred;
            let b = self.block(j.src, end)?;
            if !live(self, j.src, &b) {
                if deferred && b.slot != DEAD_SLOT {
                    return Err(Error::corrupt(
                        "bptr.o_beg",
                        format!("the block at {} is neither referenced nor marked dead", j.src),
                    ));
                }
                let mut p = j.src + b.size;
                while p < end {
                    let b = self.block(p, end)?;
                    if live(self, p, &b) {
                        break;
                    }
                    if deferred && b.slot != DEAD_SLOT {
                        return Err(Error::corrupt(
                            "bptr.o_beg",
                            format!("the block at {p} is neither referenced nor marked dead"),
                        ));
                    }
                    p += b.size;
                }
                self.hdr_mut().journal.src = p;
                fence();
                continue;
            }
            // Extend the run over live blocks; past live_from all are live.
            let mut p = j.src + b.size;
            while p < end && p < j.live_from {
                let b = self.block(p, end)?;
                if !live(self, p, &b) {
                    break;
                }
                p += b.size;
            }
            let run_end = if p >= j.live_from { end } else { p };
            // (Walking blocks is a chain of dependent loads; scanning the
            // table is not: the fixup scans the table when it is not much
            // longer than the run.)
            let h = self.hdr_mut();
            h.journal.mv_dst = j.dst;
            h.journal.mv_len = run_end - j.src;
            h.journal.mv_done = 0;
            fence();
            h.journal.mv_src = j.src;
            fence();
        }
        let dst = self.hdr().journal.dst;
        let h = self.hdr_mut();
        h.o_fr = dst;
        // Every compaction starts at or below the lowest dead block, so no
        // dead block is left (derived state; recovery recounts anyway).
        h.dead_bytes = 0;
        h.dead_lo = 0;
        fence();
        hit("compact.before_clear");
        h.journal.op = JOURNAL_NONE;
        fence();
        h.flags &= !FLAG_RECOVERY_REQUIRED;
        fence();
        Ok(moved)
    }

    /// Fixes the entries of the blocks now in `[dst, dst + len)` by walking
    /// the blocks and following their back-pointers. Sets absolute values,
    /// so it is idempotent: recovery always uses it.
    fn fixup_by_walk(&mut self, dst: u64, len: u64) -> Result<()> {
        let n_bptr = self.hdr().n_bptr;
        let mut p = dst;
        let mut k = 0u32;
        while p < dst + len {
            let b = self.block(p, dst + len)?;
            if b.slot == DEAD_SLOT {
                // A dead block inside a run moved as a whole (past
                // `live_from`) stays dead at its new place.
                p += b.size;
                continue;
            }
            if b.slot >= n_bptr {
                return Err(Error::corrupt("block.slot", format!("block at {p} names slot {}", b.slot)));
            }
            self.bptr_mut(b.slot).o_beg = p as u32;
            p += b.size;
            k += 1;
            if k == 1 {
                fence();
                hit("compact.mid_fixup");
            }
        }
        Ok(())
    }

    /// Fixes the entries of the blocks moved from `[src, src + len)` by `gap`
    /// bytes, scanning the table. Not idempotent (it subtracts), so only a
    /// fresh compaction uses it; if the process dies midway, recovery redoes
    /// the fixup with [`Layout::fixup_by_walk`], which sets absolute values.
    fn fixup_by_table(&mut self, src: u64, len: u64, gap: u64) {
        let size = self.size() as usize;
        let o_bptop = self.hdr().o_bptop as usize;
        let table: &mut [Bptr] = bytemuck::cast_slice_mut(&mut self.buf[o_bptop..size]);
        let (lo, hi, gap) = (src as u32, (src + len) as u32, gap as u32);
        let half = table.len() / 2;
        for (i, e) in table.iter_mut().enumerate() {
            if e.o_beg >= lo && e.o_beg < hi {
                e.o_beg -= gap;
            }
            if i == half {
                fence();
                hit("compact.mid_fixup");
            }
        }
    }

    /// Rebuilds the derived state from the table: the table top (dropping
    /// unused entries from the top), the free list and the record count.
    fn rebuild_derived(&mut self) -> Result<()> {
        let st = self.st()?;
        let mut n = st.n_bptr;
        while n > 0 && self.bptr(n - 1).o_beg == 0 {
            n -= 1;
        }
        if n != st.n_bptr {
            let h = self.hdr_mut();
            h.o_bptop = st.o_bptop + (st.n_bptr - n) as u64 * B;
            fence();
            h.n_bptr = n;
        }
        let mut head = 0u32;
        let mut used = 0u32;
        let size = self.size() as usize;
        let table: &mut [Bptr] = bytemuck::cast_slice_mut(&mut self.buf[size - n as usize * BPTR_SIZE..size]);
        // table[0] is the entry with the highest slot (n - 1).
        for (i, e) in table.iter_mut().enumerate() {
            let slot = n - 1 - i as u32;
            if e.o_beg == 0 {
                e.next = head;
                head = slot + 1;
            } else {
                used += 1;
            }
        }
        let h = self.hdr_mut();
        h.free_head = head;
        h.u_blks = used;
        Ok(())
    }

    // ----- recovery and checks ---------------------------------------------

    /// Brings an image left by a killed process back to a consistent state:
    /// finishes an interrupted compaction, rolls back an interrupted insert,
    /// rebuilds the derived state (free list, counts, table top) and checks
    /// every invariant. Idempotent; cheap to run on a consistent image.
    pub fn recover(&mut self) -> Result<RecoveryReport> {
        // The flag stays set until every invariant is checked, so a recovery
        // that fails (or is killed) is run again by the next locker.
        self.hdr_mut().flags |= FLAG_RECOVERY_REQUIRED;
        fence();
        let rep = self.recover_inner()?;
        self.hdr_mut().flags &= !FLAG_RECOVERY_REQUIRED;
        if let Err(e) = self.verify() {
            self.hdr_mut().flags |= FLAG_RECOVERY_REQUIRED;
            return Err(e);
        }
        Ok(rep)
    }

    fn recover_inner(&mut self) -> Result<RecoveryReport> {
        let mut rep = RecoveryReport::default();
        // n_bptr follows o_bptop (the table grows by moving o_bptop first).
        let size = self.size();
        let o_bptop = self.hdr().o_bptop;
        if o_bptop < H || o_bptop > size || (size - o_bptop) % B != 0 {
            return Err(Error::corrupt(
                "o_bptop",
                format!("{o_bptop} is not a table boundary in [{H}, {size}]"),
            ));
        }
        self.hdr_mut().n_bptr = ((size - o_bptop) / B) as u32;
        let st = self.st()?;
        let h = self.hdr();
        if h.journal.op == JOURNAL_COMPACT {
            self.compact(true)?;
            rep.finished_compaction = true;
            self.hdr_mut().flags |= FLAG_RECOVERY_REQUIRED;
        } else if h.journal.op != JOURNAL_NONE {
            return Err(Error::corrupt("journal.op", format!("unknown operation {}", h.journal.op)));
        }
        let orders = self.chain_orders(st.n_bptr);
        let o_fr = self.hdr().o_fr;
        for slot in 0..st.n_bptr {
            let e = *self.bptr(slot);
            if e.o_beg == 0 {
                continue;
            }
            if e.o_beg as u64 >= o_fr {
                // Published by an insert that did not advance o_fr.
                self.set_loc(slot, 0, e.gen);
                rep.rolled_back_inserts += 1;
            } else if self.compaction() == Compaction::Deferred
                && self.block(e.o_beg as u64, o_fr).is_ok_and(|b| b.slot == DEAD_SLOT)
            {
                // A deferred remove killed after marking the block dead:
                // finish it (the record was being removed).
                let gen = self.take_gen();
                self.set_loc(slot, 0, gen);
                rep.finished_removes += 1;
            }
        }
        self.rebuild_derived()?;
        self.rebuild_chains(&orders)?;
        self.rebuild_dead()?;
        Ok(rep)
    }

    /// Recounts the dead blocks (derived state) by walking the block
    /// section: `dead_bytes` and `dead_lo`.
    fn rebuild_dead(&mut self) -> Result<()> {
        let st = self.st()?;
        let (mut p, mut dead, mut lo) = (H, 0u64, 0u64);
        while p < st.o_fr {
            let b = self.block(p, st.o_fr)?;
            if b.slot == DEAD_SLOT {
                dead += b.size;
                if lo == 0 {
                    lo = p;
                }
            }
            p += b.size;
        }
        let h = self.hdr_mut();
        h.dead_bytes = dead;
        h.dead_lo = lo;
        Ok(())
    }

    /// Marks the image as needing recovery (a mutation was abandoned, e.g.
    /// by a panic while the lock was held).
    pub fn mark_recovery_required(&mut self) {
        self.hdr_mut().flags |= FLAG_RECOVERY_REQUIRED;
    }

    /// Checks every invariant of the image without changing it: geometry,
    /// blocks contiguous from the header to `o_fr`, each block's back-pointer
    /// and its entry agreeing, counts, an acyclic free list of exactly the
    /// unused entries, the top entry in use, no journal pending.
    pub fn verify(&self) -> Result<VerifyReport> {
        check_align(self.buf)?;
        check_header(self.hdr(), self.region_size())?;
        let st = self.st()?;
        let h = self.hdr();
        if h.journal.op != JOURNAL_NONE || h.flags & FLAG_RECOVERY_REQUIRED != 0 {
            return Err(Error::RecoveryRequired);
        }
        if h.flags & !FLAG_RECOVERY_REQUIRED != 0 {
            return Err(Error::corrupt("flags", format!("unknown bits {:#x}", h.flags)));
        }
        // Blocks, walked from the header to o_fr.
        let mut p = H;
        let mut records = 0u32;
        let (mut dead_bytes, mut dead_blocks, mut dead_lo) = (0u64, 0u32, 0u64);
        let eager = h.compaction == COMPACTION_EAGER;
        while p < st.o_fr {
            let b = self.block(p, st.o_fr)?;
            if b.slot == DEAD_SLOT && !eager {
                dead_bytes += b.size;
                dead_blocks += 1;
                if dead_lo == 0 {
                    dead_lo = p;
                }
                p += b.size;
                continue;
            }
            if b.slot >= st.n_bptr {
                return Err(Error::corrupt(
                    "block.slot",
                    format!("block at {p} names slot {} of {}", b.slot, st.n_bptr),
                ));
            }
            let e = self.bptr(b.slot);
            if e.o_beg as u64 != p {
                return Err(Error::corrupt(
                    "bptr.o_beg",
                    format!("block at {p} names slot {} which points to {}", b.slot, e.o_beg),
                ));
            }
            records += 1;
            p += b.size;
        }
        // Entries: every used one points at a block whose back-pointer is it
        // (the walk above found each block once, so counting suffices).
        let mut used = 0u32;
        for slot in 0..st.n_bptr {
            let e = self.bptr(slot);
            if e.o_beg != 0 {
                used += 1;
                let o = e.o_beg as u64;
                let b = self.block(o, st.o_fr)?;
                if b.slot != slot {
                    return Err(Error::corrupt(
                        "bptr.o_beg",
                        format!("entry {slot} points to {o} whose block names slot {}", b.slot),
                    ));
                }
            } else if e.next > st.n_bptr {
                return Err(Error::corrupt("bptr.next", format!("free entry {slot} links to {}", e.next)));
            }
        }
        if used != records {
            return Err(Error::corrupt("bptr", format!("{used} entries in use but {records} blocks")));
        }
        if h.u_blks != records {
            return Err(Error::corrupt("u_blks", format!("{} but {records} records found", h.u_blks)));
        }
        if h.dead_bytes != dead_bytes {
            return Err(Error::corrupt(
                "dead_bytes",
                format!("{} but {dead_bytes} bytes of dead blocks found", h.dead_bytes),
            ));
        }
        if h.dead_lo != dead_lo {
            return Err(Error::corrupt(
                "dead_lo",
                format!("{} but the lowest dead block is at {dead_lo}", h.dead_lo),
            ));
        }
        if st.n_bptr > 0 && self.bptr(st.n_bptr - 1).o_beg == 0 {
            return Err(Error::corrupt("o_bptop", format!("the top entry {} is unused", st.n_bptr - 1)));
        }
        // Free list: acyclic, only unused entries, all of them.
        let free_slots = st.n_bptr - used;
        let mut link = h.free_head;
        let mut seen = 0u32;
        while link != 0 {
            if link > st.n_bptr {
                return Err(Error::corrupt("free_head", format!("link {link} beyond {} entries", st.n_bptr)));
            }
            let e = self.bptr(link - 1);
            if e.o_beg != 0 {
                return Err(Error::corrupt(
                    "free_head",
                    format!("entry {} is on the free list but in use", link - 1),
                ));
            }
            seen += 1;
            if seen > free_slots {
                return Err(Error::corrupt("free_head", "the free list has a cycle or too many entries"));
            }
            link = e.next;
        }
        if seen != free_slots {
            return Err(Error::corrupt(
                "free_head",
                format!("{seen} entries on the free list, {free_slots} unused"),
            ));
        }
        self.verify_chains(st.n_bptr, used)?;
        Ok(VerifyReport {
            records,
            slots: st.n_bptr,
            free_slots,
            used_bytes: st.o_fr - H,
            free_bytes: st.o_bptop - st.o_fr,
            dead_bytes,
            dead_blocks,
        })
    }

    /// True if an interrupted compaction is recorded.
    #[inline]
    pub fn recovery_required(&self) -> bool {
        let h = self.hdr();
        h.journal.op != JOURNAL_NONE || h.flags & FLAG_RECOVERY_REQUIRED != 0
    }

    /// The region's generation (random id of this incarnation).
    pub fn generation(&self) -> u64 {
        self.hdr().generation
    }

    /// The boot id recorded in the header.
    pub fn boot_id(&self) -> [u8; 16] {
        self.hdr().boot_id
    }

    /// Records a new boot id (after the region was re-armed on a new boot).
    pub fn set_boot_id(&mut self, id: [u8; 16]) {
        self.hdr_mut().boot_id = id;
    }

    /// The creator's pid namespace inode (0 if unknown).
    pub fn pid_ns(&self) -> u64 {
        self.hdr().pid_ns
    }

    /// The region's `OPT_*` bits.
    pub fn options(&self) -> u32 {
        self.hdr().options
    }

    /// The header's counters (cheap; [`Layout::status`] walks the region).
    pub fn counters(&self) -> Counters {
        self.hdr().counters
    }

    /// Number of records (from the header's count).
    pub fn records(&self) -> u32 {
        self.hdr().u_blks
    }

    /// Bytes of the free gap.
    pub fn free_bytes(&self) -> Result<u64> {
        let st = self.st()?;
        Ok(st.o_bptop - st.o_fr)
    }

    /// Geometry, usage per owner and per pid, and counters.
    pub fn status(&self) -> Result<Status> {
        let st = self.st()?;
        let h = *self.hdr();
        let mut owners: BTreeMap<u32, OwnerUsage> = BTreeMap::new();
        let mut pids: BTreeMap<(u32, u64), PidUsage> = BTreeMap::new();
        let mut records = 0u32;
        for (m, _) in self.iter() {
            records += 1;
            let o = owners.entry(m.owner.0).or_insert(OwnerUsage { owner: m.owner, records: 0, bytes: 0 });
            o.records += 1;
            o.bytes += m.len as u64;
            let p = pids.entry((m.pid, m.start_time)).or_insert(PidUsage {
                pid: m.pid,
                start_time: m.start_time,
                records: 0,
                bytes: 0,
            });
            p.records += 1;
            p.bytes += m.len as u64;
        }
        let (mut dead_bytes, mut dead_blocks) = (0u64, 0u32);
        let mut p = H;
        while p < st.o_fr {
            let Ok(b) = self.block(p, st.o_fr) else { break };
            if b.slot == DEAD_SLOT {
                dead_bytes += b.size;
                dead_blocks += 1;
            }
            p += b.size;
        }
        Ok(Status {
            size: self.region_size(),
            header_size: H,
            o_fr: st.o_fr,
            o_bptop: st.o_bptop,
            used_bytes: st.o_fr - H,
            free_bytes: st.o_bptop - st.o_fr,
            table_bytes: self.size() - st.o_bptop,
            records,
            slots: st.n_bptr,
            free_slots: st.n_bptr - records.min(st.n_bptr),
            owners: owners.into_values().collect(),
            pids: pids.into_values().collect(),
            counters: h.counters,
            trailer_bytes: TRAILER_SIZE as u64,
            dead_bytes,
            dead_blocks,
            compaction: self.compaction(),
            generation: h.generation,
            boot_id: h.boot_id,
            pid_ns: h.pid_ns,
            options: h.options,
            recovery_required: self.recovery_required(),
        })
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

/// Byte offset of `Journal::mv_done` in the region.
const MV_DONE_AT: usize = std::mem::offset_of!(Header, journal) + std::mem::offset_of!(Journal, mv_done);

/// Copies the run `[src, src + len)` down to `dst`, resuming after `done`
/// bytes, in chunks no larger than the gap `src - dst`. Such chunks never
/// overlap, so a chunk interrupted midway can simply be copied again; the
/// progress is stored in the journal after each chunk. The caller has
/// checked `dst < src` and `src + len <= buf.len()`.
fn move_run(buf: &mut [u8], src: u64, dst: u64, len: u64, mut done: u64) {
    let gap = src - dst;
    let mut half = false;
    while done < len {
        let c = gap.min(len - done);
        let (s, d) = ((src + done) as usize, (dst + done) as usize);
        let (lo, hi) = buf.split_at_mut(s);
        copy_chunk(&mut lo[d..d + c as usize], &hi[..c as usize]);
        fence();
        done += c;
        *bytemuck::from_bytes_mut::<u64>(&mut buf[MV_DONE_AT..MV_DONE_AT + 8]) = done;
        fence();
        if !half && done * 2 >= len {
            half = true;
            hit("compact.mid_move");
        }
    }
}

/// Copies one chunk (the two sides never overlap). Small chunks are copied
/// inline, since a `memcpy` call costs more than the copy itself.
#[inline(always)]
fn copy_chunk(dst: &mut [u8], src: &[u8]) {
    if dst.len() <= 256 {
        for (d, s) in dst.chunks_exact_mut(8).zip(src.chunks_exact(8)) {
            d.copy_from_slice(s);
        }
    } else {
        dst.copy_from_slice(src);
    }
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

#[path = "owner_index.rs"]
mod owner_index;
use owner_index::bucket_of;

#[cfg(test)]
#[path = "layout_tests.rs"]
mod tests;

//! Compaction and its journal: the deferred remove (`kill_block`), the
//! policy's trigger (`compact_if_due`, `compact_now`), the journal's
//! start and check, the resumable compaction loop (`compact`, shared by a
//! fresh remove and by recovery), the chunked run copy (`move_run`) and the
//! two fixups of moved blocks' entries. Crash argument: every step of the
//! loop is idempotent and its progress is in the journal; see
//! `docs/design.md` ("Eager remove", "Deferred compaction") and
//! `docs/format.md` ("Journal").

use super::*;

impl<'a> Layout<'a> {
    /// The deferred remove of the block of `slot` at `o` (`size` bytes):
    /// mark the block dead, clear the entry, count the dead bytes. The
    /// caller releases the slot. Killed after the mark, the entry points at
    /// a dead block, which recovery recognises and finishes (the record is
    /// removed); the dead-byte count and the free list are derived state,
    /// rebuilt by recovery.
    pub(super) fn kill_block(&mut self, slot: u32, o: u64, size: u64) {
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
    pub(super) fn compact_if_due(&mut self) -> Result<()> {
        let h = self.hdr();
        if h.dead_bytes != 0 && h.dead_bytes.saturating_mul(DEAD_BOUND_DIV) > h.o_fr.saturating_sub(H) {
            self.compact_now()?;
        }
        Ok(())
    }

    /// Closes every hole of the block section in one compaction (journaled:
    /// a process killed midway leaves a journal that the next locker
    /// finishes), then drops the unused entries at the table's top. Returns
    /// the bytes moved. Moves nothing if there is no dead block (always so
    /// under `Eager`).
    pub fn compact_now(&mut self) -> Result<u64> {
        let st = self.st()?;
        self.check_no_journal()?;
        let h = self.hdr();
        if h.dead_bytes == 0 {
            self.shrink_table()?;
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
        // The table's unused top entries go too (an O(table) scan, within
        // the O(block section) a compaction costs; removes leave them).
        self.shrink_table()?;
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

    pub(super) fn count_compaction(&mut self, moved: u64) {
        let c = &mut self.hdr_mut().counters;
        c.bytes_moved = c.bytes_moved.wrapping_add(moved);
        c.compactions = c.compactions.wrapping_add(1);
        c.largest_compaction = c.largest_compaction.max(moved);
    }

    /// Bytes of dead blocks waiting for a compaction (from the header).
    pub fn dead_bytes(&self) -> u64 {
        self.hdr().dead_bytes
    }

    pub(super) fn check_no_journal(&self) -> Result<()> {
        let h = self.hdr();
        if h.journal.op != JOURNAL_NONE || h.flags & FLAG_RECOVERY_REQUIRED != 0 {
            return Err(Error::RecoveryRequired);
        }
        Ok(())
    }

    pub(super) fn start_journal(&mut self, start: u64, end: u64, live_from: u64) {
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

    /// Runs (or resumes) the compaction described by the journal, then sets
    /// `o_fr` and clears the journal. Returns the bytes moved. The same code
    /// serves a fresh remove and recovery: every step is idempotent.
    pub(super) fn compact(&mut self, recovering: bool) -> Result<u64> {
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
        work(table.len() as u64);
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
        work(c / 8);
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

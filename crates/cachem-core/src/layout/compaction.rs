//! Compaction and its journal: the deferred remove (`kill_block`), the
//! policy's trigger (`compact_if_due`, `compact_now`), the journal's
//! start and check, the resumable compaction loop (`compact`, shared by a
//! fresh remove and by recovery), the chunked run copy (`move_run`) and the
//! two fixups of moved blocks' entries. Crash argument: every step of the
//! loop is idempotent and its progress is in the journal; see
//! `docs/design.md` ("Eager remove", "Deferred compaction") and
//! `docs/format.md` ("Journal").

use super::*;

/// How much one lock hold may do of a Deferred compaction before it
/// pauses: bytes moved (a few hundred microseconds of memmove) and blocks
/// examined.
const STEP_BYTES: u64 = 256 << 10;
const STEP_BLOCKS: u64 = 16 << 10;

thread_local! {
    /// The step's byte budget if a test set one on this thread (0:
    /// [`STEP_BYTES`]).
    static STEP_OVERRIDE: std::cell::Cell<u64> = const { std::cell::Cell::new(0) };
}

/// Sets the byte budget of a compaction step for the calling thread (0:
/// the default, 256 KiB; the block budget scales with it). For tests,
/// which make every compaction pause many times on small regions.
pub fn set_compaction_step(bytes: u64) {
    STEP_OVERRIDE.with(|s| s.set(bytes));
}

/// How far [`Layout::compact`] may go in one call.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(super) enum Budget {
    /// To the end (an Eager remove, an explicit compaction, recovery).
    Whole,
    /// One step, then pause (a Deferred compaction under mutations).
    Step,
}

impl Budget {
    fn limits(self) -> (u64, u64) {
        match self {
            Budget::Whole => (u64::MAX, u64::MAX),
            Budget::Step => match STEP_OVERRIDE.with(std::cell::Cell::get) {
                0 => (STEP_BYTES, STEP_BLOCKS),
                b => (b, (b / 16).max(1)),
            },
        }
    }
}

/// What a call of [`Layout::compact`] did.
#[derive(Clone, Copy, Debug)]
pub(super) struct Pass {
    pub(super) moved: u64,
    pub(super) done: bool,
}

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
        // While a compaction is paused, `dead_lo` names the lowest dead
        // block below the compacted part's end (`journal.dst`) only: the
        // compaction takes the ones at or past `journal.src` itself.
        let paused = h.journal.op == JOURNAL_COMPACT;
        if (!paused || o < h.journal.dst) && (h.dead_lo == 0 || o < h.dead_lo) {
            h.dead_lo = o;
        }
        h.u_blks = h.u_blks.wrapping_sub(1);
        h.counters.removes = h.counters.removes.wrapping_add(1);
        fence();
        hit("defer.after_count");
    }

    /// Advances the compaction after a mutation (Deferred): one bounded
    /// step of a paused one, or, when dead bytes are more than half of the
    /// block section, a new one's first step. The compaction then moves at
    /// most one live byte per dead byte, so the amortised cost of a remove
    /// is a few record-sizes of memmove, and no lock hold moves more than
    /// a step's budget (see [`Layout::compaction_paused`]).
    pub(super) fn compact_if_due(&mut self) -> Result<()> {
        if self.compaction_paused() {
            self.resume_compaction(Budget::Step)?;
            return Ok(());
        }
        let h = self.hdr();
        if h.dead_bytes != 0 && h.dead_bytes.saturating_mul(DEAD_BOUND_DIV) > h.o_fr.saturating_sub(H) {
            self.start_compaction(Budget::Step)?;
        }
        Ok(())
    }

    /// Closes every hole of the block section (journaled: a process killed
    /// midway leaves a journal that the next locker finishes): finishes a
    /// paused compaction, then compacts whatever dead blocks are left in
    /// one pass, then drops the unused entries at the table's top. Returns
    /// the bytes moved. Moves nothing if there is no dead block (always so
    /// under `Eager`). Unbounded: the explicit compaction, and an insert
    /// that does not fit otherwise.
    pub fn compact_now(&mut self) -> Result<u64> {
        let mut moved = 0;
        if self.compaction_paused() {
            moved += self.resume_compaction(Budget::Whole)?.moved;
        }
        self.st()?;
        self.check_no_journal()?;
        if self.hdr().dead_bytes != 0 {
            moved += self.start_compaction(Budget::Whole)?.moved;
        }
        // The table's unused top entries go too (an O(table) scan, within
        // the O(block section) a whole compaction costs; removes leave
        // them).
        self.shrink_table()?;
        Ok(moved)
    }

    /// Whether a Deferred compaction is paused between two lock holds: its
    /// journal is active (`op` is `JOURNAL_COMPACT`) but no holder is
    /// inside it (the recovery flag is clear). The block section is then
    /// `[o_st, journal.dst)` compacted, the hole `[journal.dst,
    /// journal.src)` that no entry points into, and `[journal.src, o_fr)`
    /// still to do (blocks inserted meanwhile included). Readers and
    /// writers carry on; the next mutation does the next step.
    #[inline]
    pub fn compaction_paused(&self) -> bool {
        let h = self.hdr();
        h.journal.op == JOURNAL_COMPACT
            && h.flags & FLAG_RECOVERY_REQUIRED == 0
            && h.compaction == COMPACTION_DEFERRED
    }

    /// Starts a Deferred compaction at the lowest dead block and runs it
    /// within `budget`.
    fn start_compaction(&mut self, budget: Budget) -> Result<Pass> {
        let st = self.st()?;
        let start = self.hdr().dead_lo;
        if start < H || start >= st.o_fr || start % 8 != 0 {
            return Err(Error::corrupt("dead_lo", format!("{start} is outside [{H}, o_fr={})", st.o_fr)));
        }
        if self.block(start, st.o_fr)?.slot != DEAD_SLOT {
            return Err(Error::corrupt("dead_lo", format!("{start} is not the start of a dead block")));
        }
        self.start_journal(start, st.o_fr, st.o_fr);
        hit("compact.after_journal");
        // Every dead block lies at or past `start`: none below `dst` yet.
        self.hdr_mut().dead_lo = 0;
        let pass = self.compact(false, budget)?;
        self.count_compaction(&pass);
        Ok(pass)
    }

    /// Resumes a paused compaction (the caller checked
    /// [`Layout::compaction_paused`]) and runs it within `budget`. Blocks
    /// inserted since it paused lie past `journal.end`: the compaction
    /// takes them in (`end` and `live_from` move up to `o_fr`, under the
    /// recovery flag). The journal was read from the shared region, so the
    /// loop checks it as recovery does.
    pub(super) fn resume_compaction(&mut self, budget: Budget) -> Result<Pass> {
        self.hdr_mut().flags |= FLAG_RECOVERY_REQUIRED;
        fence();
        self.extend_paused_journal()?;
        let pass = self.compact(true, budget)?;
        self.count_compaction(&pass);
        Ok(pass)
    }

    /// Moves a paused Deferred compaction's `end` (and `live_from`, which a
    /// Deferred compaction keeps equal to it) up to `o_fr`: the blocks
    /// past `end` were inserted (committed) while it was paused. Also run
    /// by recovery before it finishes a journal. An Eager compaction never
    /// pauses, so `o_fr` past its `end` is damage.
    pub(super) fn extend_paused_journal(&mut self) -> Result<()> {
        let h = self.hdr();
        let (end, o_fr) = (h.journal.end, h.o_fr);
        // (`o_fr` below `end`: the compaction is done moving and `o_fr` is
        // its `dst` already.)
        if o_fr <= end {
            return Ok(());
        }
        if h.compaction != COMPACTION_DEFERRED || h.journal.live_from != end {
            return Err(Error::corrupt(
                "journal.end",
                format!(
                    "{end} with o_fr {o_fr} and live_from {} (a compaction takes in blocks past its end only when Deferred and paused)",
                    h.journal.live_from
                ),
            ));
        }
        let h = self.hdr_mut();
        h.journal.live_from = o_fr;
        fence();
        h.journal.end = o_fr;
        fence();
        Ok(())
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

    /// Counts a pass: its bytes, the largest pause (bytes one lock hold
    /// moved), and a compaction when it finished.
    pub(super) fn count_compaction(&mut self, pass: &Pass) {
        let c = &mut self.hdr_mut().counters;
        c.bytes_moved = c.bytes_moved.wrapping_add(pass.moved);
        if pass.done {
            c.compactions = c.compactions.wrapping_add(1);
        }
        c.largest_compaction = c.largest_compaction.max(pass.moved);
    }

    /// Bytes of dead blocks waiting for a compaction (from the header).
    pub fn dead_bytes(&self) -> u64 {
        self.hdr().dead_bytes
    }

    /// Errors if the image needs recovery first: the recovery flag, or a
    /// journal that is not a paused Deferred compaction (which mutations
    /// carry on with; see [`Layout::compaction_paused`]).
    pub(super) fn check_no_journal(&self) -> Result<()> {
        let h = self.hdr();
        if h.flags & FLAG_RECOVERY_REQUIRED != 0
            || (h.journal.op != JOURNAL_NONE && !self.compaction_paused())
        {
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
    /// `o_fr` and clears the journal; or, under [`Budget::Step`], pauses it
    /// once a step's budget is spent (between two runs: the journal then
    /// describes a consistent paused state, and the recovery flag is
    /// cleared). Returns the bytes moved and whether it finished. The same
    /// code serves a fresh remove, a resumed compaction and recovery: every
    /// step is idempotent. `checked`: the journal was read from the region
    /// (recovery, a resumed compaction), so every step checks it.
    pub(super) fn compact(&mut self, checked: bool, budget: Budget) -> Result<Pass> {
        let size = self.size();
        let mut moved = 0u64;
        let (max_bytes, max_blocks) = budget.limits();
        let mut examined = 0u64;
        // Recovery finishes whatever it finds, and only it must not use the
        // table fixup (not idempotent).
        let recovering = checked && budget == Budget::Whole;
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
            // Pause between two runs once the step's budget is spent.
            if (moved >= max_bytes || examined >= max_blocks) && j.mv_src != j.src && j.src != end {
                fence();
                self.hdr_mut().flags &= !FLAG_RECOVERY_REQUIRED;
                fence();
                return Ok(Pass { moved, done: false });
            }
            // The journal of a fresh compaction holds only values this loop
            // derived from checked ones (and bounds-checked slicing backs
            // them up); one found by recovery, or resumed after a pause, is
            // checked on every step.
            if checked
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
                if checked
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
            examined += 1;
            if !live(self, j.src, &b) {
                if deferred && b.slot != DEAD_SLOT {
                    return Err(Error::corrupt(
                        "bptr.o_beg",
                        format!("the block at {} is neither referenced nor marked dead", j.src),
                    ));
                }
                let mut p = j.src + b.size;
                while p < end && examined < max_blocks {
                    let b = self.block(p, end)?;
                    examined += 1;
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
            // Under a step's budget a run stops after the bytes and blocks
            // left in it (a live block at a time: at least one).
            let room = max_bytes.saturating_sub(moved);
            let mut p = j.src + b.size;
            while p < end && p < j.live_from && p - j.src < room && examined < max_blocks {
                let b = self.block(p, end)?;
                examined += 1;
                if !live(self, p, &b) {
                    break;
                }
                p += b.size;
            }
            let run_end = if p >= j.live_from && max_bytes == u64::MAX { end } else { p };
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
        let (dst, end) = (self.hdr().journal.dst, self.hdr().journal.end);
        let deferred = self.compaction() == Compaction::Deferred;
        let h = self.hdr_mut();
        h.o_fr = dst;
        // The hole [dst, end) is gone. Under Deferred, `dead_bytes` counted
        // it (every dead block the compaction passed became hole); what is
        // left are blocks removed below `dst` while it was paused, the
        // lowest of which `dead_lo` names. Eager keeps no dead bytes.
        // (Derived state; recovery recounts anyway.)
        h.dead_bytes = if deferred { h.dead_bytes.saturating_sub(end - dst) } else { 0 };
        if h.dead_bytes == 0 {
            h.dead_lo = 0;
        }
        fence();
        hit("compact.before_clear");
        h.journal.op = JOURNAL_NONE;
        fence();
        h.flags &= !FLAG_RECOVERY_REQUIRED;
        fence();
        Ok(Pass { moved, done: true })
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

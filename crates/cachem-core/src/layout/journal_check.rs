//! The journal's fit: `check_journal` decides, reading only, whether a
//! compaction journal found by recovery describes a state a real
//! compaction can be in, *before* recovery moves a byte. A false journal
//! (damage, a hostile image) would otherwise make the resumed compaction
//! copy blocks over live records before `verify` reports anything, and
//! destroy the evidence an operator keeps.
//!
//! What a true journal guarantees at every step of a compaction (see
//! `compaction.rs` and `docs/design.md`, "What recovery checks before it
//! writes"), all of which is checked here:
//!
//! - `H <= start <= dst <= src <= end <= o_bptop`, all 8-aligned,
//!   `start <= live_from <= end` (a Deferred compaction sets `end`), and
//!   `o_fr == end`, or `o_fr == dst` once `src == end` (killed after
//!   setting `o_fr`, before clearing the journal).
//! - `[H, dst)` is settled: blocks back to back, each live (its entry
//!   points at it) or, under Deferred, marked dead (a compaction starts at
//!   the lowest dead block, but a dead block left below it is harmless:
//!   recovery recounts them). `[src, end)` is untouched: blocks back to back to
//!   `end`; a block there is live, or (Deferred) marked dead, or (Eager,
//!   below `live_from`) a removed block whose entry is cleared; at or past
//!   `live_from` every block is live. `[dst, src)` is the hole: no entry
//!   points into it.
//! - A run move in progress (`mv_src == src`): `mv_dst == dst`, the run
//!   `[src, src + mv_len)` inside `[src, end)`, `mv_done <= mv_len`. Its
//!   first `mv_done` bytes are already at `dst`, the rest still at `src`;
//!   read that way the run is blocks back to back, each live (or dead,
//!   under Deferred: a run past `live_from` is moved whole), and each
//!   entry points at its block's old place (or, once the copy is done and
//!   the fixup may have begun, at the old or the new place).
//! - Every used entry is accounted for: it points at exactly one of the
//!   blocks above, which names it; or, one at most, at `o_fr` itself: an
//!   insert cut short while a Deferred compaction was paused.
//! - A Deferred compaction paused between two lock holds (see
//!   `Layout::compaction_paused`) may find `o_fr` past its `end`: the
//!   blocks inserted meanwhile, which recovery takes in by moving `end`
//!   and `live_from` up to `o_fr` before it resumes; they are checked as
//!   untouched blocks.

use super::*;

impl<'a> Layout<'a> {
    /// Checks, without writing, that a pending compaction journal fits the
    /// table and the blocks (see the module docs): `Ok` when there is no
    /// journal or when resuming it cannot overwrite a live record, else
    /// `Corrupt` naming the field and value. [`Layout::recover`] calls it
    /// before its first write.
    pub fn check_journal(&self) -> Result<()> {
        let h = self.hdr();
        match h.journal.op {
            JOURNAL_NONE => return Ok(()),
            JOURNAL_COMPACT => {}
            op => return Err(Error::corrupt("journal.op", format!("unknown operation {op}"))),
        }
        let size = self.size();
        let o_bptop = h.o_bptop;
        if o_bptop < H || o_bptop > size || (size - o_bptop) % B != 0 {
            return Err(Error::corrupt(
                "o_bptop",
                format!("{o_bptop} is not a table boundary in [{H}, {size}]"),
            ));
        }
        let n_bptr = ((size - o_bptop) / B) as u32;
        let mut j = h.journal;
        // Killed between the two advancing stores of a finished move: the
        // compaction loop finishes the advance first.
        if j.mv_src == j.src
            && j.mv_len != 0
            && j.mv_dst.checked_add(j.mv_len) == Some(j.dst)
            && j.mv_src.checked_add(j.mv_len).is_some_and(|e| e <= j.end)
        {
            j.src = j.mv_src + j.mv_len;
        }
        let deferred = self.compaction() == Compaction::Deferred;
        let o_fr = h.o_fr;
        // A Deferred compaction paused between two lock holds takes in the
        // blocks inserted since it paused: recovery moves its end (and
        // live_from, which Deferred keeps equal) up to o_fr before resuming
        // it (`extend_paused_journal`), so check it as extended.
        if deferred && j.live_from == j.end && o_fr > j.end && o_fr <= o_bptop {
            j.end = o_fr;
            j.live_from = o_fr;
        }
        let end = j.end;
        if !(H <= j.start
            && j.start <= j.dst
            && j.dst <= j.src
            && j.src <= end
            && j.start <= j.live_from
            && j.live_from <= end
            && end <= o_bptop)
            || (j.start | j.src | j.dst | end) % 8 != 0
        {
            return Err(Error::corrupt(
                "journal",
                format!(
                    "impossible state start={} dst={} src={} end={end} live_from={} (o_bptop={o_bptop})",
                    j.start, j.dst, j.src, j.live_from
                ),
            ));
        }
        if o_fr != end && !(j.src == end && o_fr == j.dst) {
            return Err(Error::corrupt(
                "o_fr",
                format!("header o_fr {o_fr} is neither the journal's end {end} nor, the compaction done, its dst {}", j.dst),
            ));
        }
        // The run move in progress, if any: (len, done).
        let mv = if j.mv_src == j.src && j.src != end {
            let (len, done) = (j.mv_len, j.mv_done);
            if j.mv_dst != j.dst
                || len == 0
                || len % 8 != 0
                || j.src.checked_add(len).is_none_or(|e| e > end)
                || done > len
                || done % 8 != 0
            {
                return Err(Error::corrupt(
                    "journal.mv",
                    format!("impossible move src={} dst={} len={len} done={done}", j.mv_src, j.mv_dst),
                ));
            }
            Some((len, done))
        } else {
            None
        };
        let (len, done) = mv.unwrap_or((0, 0));
        let gap = j.src - j.dst;
        // Where the entries of the run's blocks may point besides their old
        // place: their new one, once the copy is done (the fixup follows).
        let fixing = mv.is_some() && done == len;

        // Every used entry points into a part of the section a true journal
        // leaves entries in, never into the hole the compaction overwrites.
        // One may point at o_fr (= end): an insert cut short after it
        // published its entry, while the compaction was paused (recovery
        // rolls it back).
        let mut cut_short: Option<u32> = None;
        for slot in 0..n_bptr {
            let o = self.bptr(slot).o_beg as u64;
            if o == 0 {
                continue;
            }
            if deferred && o == end && o_fr == end && cut_short.is_none() {
                cut_short = Some(slot);
                continue;
            }
            let in_run_new = fixing && o >= j.dst && o < j.dst + len;
            if o >= j.dst && o < j.src && !in_run_new {
                return Err(Error::corrupt(
                    "journal",
                    format!(
                        "slot {slot}: bptr.o_beg {o} lies in [dst {}, src {}), the hole the compaction overwrites",
                        j.dst, j.src
                    ),
                ));
            }
            if o < H || o >= end {
                return Err(Error::corrupt(
                    "journal",
                    format!("slot {slot}: bptr.o_beg {o} is outside the compacted section [{H}, end {end})"),
                ));
            }
        }

        let mut seen = vec![false; n_bptr as usize];
        // The block at `at` (read from `from`) names `slot`: take it as that
        // entry's block if the entry points at one of `places`.
        let claim = |seen: &mut Vec<bool>, slot: u32, places: &[u64]| -> bool {
            if slot >= n_bptr || seen[slot as usize] {
                return false;
            }
            let o = self.bptr(slot).o_beg as u64;
            if o != 0 && places.contains(&o) {
                seen[slot as usize] = true;
                true
            } else {
                false
            }
        };
        let not_live = |p: u64, slot: u32, part: &str| {
            let at = if slot < n_bptr { format!("{}", self.bptr(slot).o_beg) } else { "no entry".into() };
            Error::corrupt(
                "journal",
                format!("the block at {p} ({part}) names slot {slot} whose bptr.o_beg is {at}: it is not live there"),
            )
        };

        // Settled: [H, dst).
        let mut p = H;
        while p < j.dst {
            let b = self.block(p, j.dst)?;
            let dead = deferred && b.slot == DEAD_SLOT;
            if !dead && !claim(&mut seen, b.slot, &[p]) {
                return Err(not_live(p, b.slot, "settled, below dst"));
            }
            p += b.size;
        }
        // The run in progress: its first `done` bytes already at dst.
        let mut i = 0u64;
        while i < len {
            let from = if i < done { j.dst } else { j.src };
            let b = self.block(from + i, from + len)?;
            let places = if fixing { vec![j.src + i, j.dst + i] } else { vec![j.src + i] };
            let dead = deferred && b.slot == DEAD_SLOT;
            if !dead && !claim(&mut seen, b.slot, &places) {
                return Err(not_live(j.src + i, b.slot, "in the run being moved"));
            }
            i += b.size;
        }
        // Untouched: [src + len, end).
        let mut p = j.src + len;
        while p < end {
            let b = self.block(p, end)?;
            if !claim(&mut seen, b.slot, &[p]) {
                if deferred && b.slot != DEAD_SLOT {
                    return Err(not_live(p, b.slot, "neither live nor marked dead"));
                }
                if p >= j.live_from && b.slot != DEAD_SLOT {
                    return Err(not_live(p, b.slot, "at or past live_from"));
                }
            }
            p += b.size;
        }
        // Every used entry was claimed by exactly one block.
        for slot in 0..n_bptr {
            let o = self.bptr(slot).o_beg;
            if o != 0 && !seen[slot as usize] && cut_short != Some(slot) {
                return Err(Error::corrupt(
                    "journal",
                    format!("slot {slot}: bptr.o_beg {o} is not a block the journal's compaction would keep (gap {gap})"),
                ));
            }
        }
        Ok(())
    }
}

//! Recovery: `recover` finishes an interrupted compaction, rolls back an
//! interrupted insert, finishes a deferred remove killed midway, and
//! rebuilds the derived state (table top, free list, counts, owner chains,
//! dead-byte count) before checking every invariant. Crash argument:
//! recovery is idempotent and keeps the recovery flag set until `verify`
//! passes, so a recovery that is itself killed is run again; see
//! `docs/design.md` ("Recovery") and `docs/format.md` ("What recovery
//! trusts and what it rebuilds").

use super::*;

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

impl<'a> Layout<'a> {
    /// Rebuilds the derived state from the table: the table top (dropping
    /// unused entries from the top), the free list and the record count.
    pub(super) fn rebuild_derived(&mut self) -> Result<()> {
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
        work(n as u64);
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
        // Read-only checks first: a journal or an entry past `o_fr` that no
        // interrupted operation can have left is refused before anything is
        // written (a compaction resumed from a false journal would move
        // blocks over live records; a lowered `o_fr` would roll back every
        // record above it).
        self.check_journal()?;
        self.check_rollback()?;
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

    /// Read-only: the entries at or past `o_fr`, which recovery rolls
    /// back as inserts cut short. An insert publishes its entry pointing
    /// exactly at `o_fr` (its block written there) and then advances
    /// `o_fr`, and inserts run one at a time: at most one entry can point
    /// at `o_fr`, none past it. Anything else is damage (a lowered `o_fr`
    /// or an entry's `o_beg`), refused before a record is rolled back. With
    /// a journal pending, [`Layout::check_journal`] has already placed every
    /// entry below the journal's end.
    fn check_rollback(&self) -> Result<()> {
        let h = self.hdr();
        if h.journal.op != JOURNAL_NONE {
            return Ok(());
        }
        let size = self.size();
        let (o_fr, o_bptop) = (h.o_fr, h.o_bptop);
        if o_bptop < H || o_bptop > size || (size - o_bptop) % B != 0 || o_fr < H || o_fr > o_bptop {
            // recover_inner reports the geometry before writing anything.
            return Ok(());
        }
        let n = ((size - o_bptop) / B) as u32;
        let mut at_fr: Option<u32> = None;
        for slot in 0..n {
            let o = self.bptr(slot).o_beg as u64;
            if o > o_fr {
                return Err(self.past_o_fr(slot, o, o_fr, o_bptop));
            }
            if o != o_fr {
                continue;
            }
            if let Some(first) = at_fr {
                return Err(Error::corrupt(
                    "bptr.o_beg",
                    format!("slots {first} and {slot} both point at o_fr {o_fr}: one insert can be cut short, not two"),
                ));
            }
            at_fr = Some(slot);
        }
        Ok(())
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
            // A compaction paused between holds took in the blocks inserted
            // since; a holder killed after such an insert left o_fr past
            // the journal's end.
            self.extend_paused_journal()?;
            self.compact(true, Budget::Whole)?;
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

    /// What makes [`Layout::recovery_required`] true, for the log:
    /// `"journal pending"` (an interrupted compaction) or `"recovery flag
    /// set"` (flags bit 0 alone: a recovery or a mutation that did not
    /// finish).
    pub fn recovery_trigger(&self) -> &'static str {
        if self.hdr().journal.op != JOURNAL_NONE {
            "journal pending"
        } else {
            "recovery flag set"
        }
    }

    /// True if the recovery flag is set, or a journal is active that is not
    /// a compaction paused between two lock holds (which the next mutation
    /// carries on: [`Layout::compaction_paused`]).
    #[inline]
    pub fn recovery_required(&self) -> bool {
        let h = self.hdr();
        h.flags & FLAG_RECOVERY_REQUIRED != 0 || (h.journal.op != JOURNAL_NONE && !self.compaction_paused())
    }
}

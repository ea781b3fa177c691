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

    /// True if an interrupted compaction is recorded.
    #[inline]
    pub fn recovery_required(&self) -> bool {
        let h = self.hdr();
        h.journal.op != JOURNAL_NONE || h.flags & FLAG_RECOVERY_REQUIRED != 0
    }
}

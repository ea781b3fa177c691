//! Batch removal: `retain`, `remove_of_owner` and `purge` collect their
//! victims first, then take them all out in one compaction pass
//! (`remove_batch`). Crash argument: each victim is unlinked just before it
//! is cleared, so a kill leaves whole records removed or kept; see
//! `docs/design.md` ("Eager remove (and Eager batch removal)", "Deferred
//! remove (and Deferred batch removal)").

use super::*;

/// What a batch removal took out.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct Removed {
    pub records: usize,
    /// Bytes given back to the free gap (block headers and padding included).
    pub bytes: u64,
}

impl<'a> Layout<'a> {
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
                self.release_slot(id.slot());
            }
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
        let pass = self.compact(false, Budget::Whole)?;
        self.count_compaction(&pass);
        let h = self.hdr_mut();
        h.u_blks = h.u_blks.wrapping_sub(victims.len() as u32);
        h.counters.removes = h.counters.removes.wrapping_add(victims.len() as u64);
        for &(id, _, _) in victims {
            self.release_slot(id.slot());
        }
        Ok(Removed { records: victims.len(), bytes })
    }

    /// Removes every record of `owner` inserted by `pid` and returns how
    /// many. mod_cachem's `cachem_delete_pid`.
    pub fn purge(&mut self, owner: OwnerId, pid: u32) -> Result<usize> {
        Ok(self.remove_of_owner(owner, |m, _| m.pid == pid)?.records)
    }
}

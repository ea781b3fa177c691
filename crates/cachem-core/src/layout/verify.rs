//! `verify`: checks every invariant of an image without changing it
//! (geometry, the block walk against the table, counts, the free list, the
//! dead-block bookkeeping and the owner chains); the list is in
//! `docs/format.md` ("Invariants").

use super::*;

/// What [`Layout::verify`] checked.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct VerifyReport {
    /// Live records of users (the name table's are in `names`).
    pub records: u32,
    /// Records of the name table and its index ([`crate::OwnerId::is_names`]).
    pub names: u32,
    pub slots: u32,
    pub free_slots: u32,
    pub used_bytes: u64,
    pub free_bytes: u64,
    /// Bytes of dead blocks (included in `used_bytes`).
    pub dead_bytes: u64,
    pub dead_blocks: u32,
}

impl<'a> Layout<'a> {
    /// Checks every invariant of the image without changing it: geometry,
    /// blocks contiguous from the header to `o_fr`, each block's back-pointer
    /// and its entry agreeing, counts, an acyclic free list of exactly the
    /// unused entries (the top entry may be one: removes do not shrink the
    /// table), no journal pending.
    pub fn verify(&self) -> Result<VerifyReport> {
        check_align(self.buf)?;
        check_header(self.hdr(), self.region_size())?;
        let st = self.st()?;
        let h = self.hdr();
        let paused = self.compaction_paused();
        if h.flags & FLAG_RECOVERY_REQUIRED != 0 || (h.journal.op != JOURNAL_NONE && !paused) {
            return Err(Error::RecoveryRequired);
        }
        // A compaction paused between two holds: its hole [dst, src) holds
        // no block (the walk jumps it) and counts as dead bytes.
        let (hole_lo, hole_hi) = if paused { self.check_paused_journal(&st)? } else { (st.o_fr, st.o_fr) };
        if h.flags & !FLAG_RECOVERY_REQUIRED != 0 {
            return Err(Error::corrupt("flags", format!("unknown bits {:#x}", h.flags)));
        }
        // Blocks, walked from the header to o_fr.
        let mut p = H;
        let mut records = 0u32;
        let mut names = 0u32;
        let (mut dead_bytes, mut dead_blocks, mut dead_lo) = (0u64, 0u32, 0u64);
        let eager = h.compaction == COMPACTION_EAGER;
        while p < st.o_fr {
            if p == hole_lo && hole_hi > hole_lo {
                dead_bytes += hole_hi - hole_lo;
                p = hole_hi;
                continue;
            }
            // Below the hole, blocks end at its start exactly.
            let b = self.block(p, if p < hole_lo { hole_lo } else { st.o_fr })?;
            if b.slot == DEAD_SLOT && !eager {
                self.check_padding(p, &b)?;
                dead_bytes += b.size;
                dead_blocks += 1;
                // While a compaction is paused, `dead_lo` names the lowest
                // dead block below its hole only.
                if dead_lo == 0 && (!paused || p < hole_lo) {
                    dead_lo = p;
                }
                p += b.size;
                continue;
            }
            self.check_padding(p, &b)?;
            if b.slot >= st.n_bptr {
                return Err(Error::corrupt(
                    "block.slot",
                    format!("block at {p} names slot {} of {}", b.slot, st.n_bptr),
                ));
            }
            let e = self.bptr(b.slot);
            if e.o_beg as u64 >= st.o_fr {
                return Err(self.past_o_fr(b.slot, e.o_beg as u64, st.o_fr, st.o_bptop));
            }
            if e.o_beg as u64 != p {
                return Err(Error::corrupt(
                    "bptr.o_beg",
                    format!("block at {p} names slot {} which points to {}", b.slot, e.o_beg),
                ));
            }
            records += 1;
            names += u32::from(crate::ids::OwnerId(e.owner).is_names());
            p += b.size;
        }
        // Entries: every used one points at a block whose back-pointer is it
        // (the walk above found each block once, so counting suffices).
        let mut used = 0u32;
        for slot in 0..st.n_bptr {
            let e = self.bptr(slot);
            if e.gen == 0 {
                // take_gen never hands out 0, and an id of generation 0
                // would end the "remove, then ask for the next" loop early.
                return Err(Error::corrupt(
                    "bptr.gen",
                    format!("slot {slot}: generation 0, which no remove or insert hands out"),
                ));
            }
            if e.o_beg != 0 {
                used += 1;
                let o = e.o_beg as u64;
                if o >= hole_lo && o < hole_hi {
                    return Err(Error::corrupt(
                        "bptr.o_beg",
                        format!("entry {slot} points to {o}, inside the paused compaction's hole [{hole_lo}, {hole_hi})"),
                    ));
                }
                let b = match self.block(o, st.o_fr) {
                    Ok(b) => b,
                    Err(err) => return Err(self.bad_entry(slot, o, &st, err)),
                };
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
            records: records - names,
            names,
            slots: st.n_bptr,
            free_slots,
            used_bytes: st.o_fr - H,
            free_bytes: st.o_bptop - st.o_fr,
            dead_bytes,
            dead_blocks,
        })
    }

    /// The padding after a block's data (up to the next 8-byte boundary)
    /// is zero: every writer zeroes it (insert writes it, compaction copies
    /// whole blocks, removes leave it), so a non-zero byte there means the
    /// block's `len` was shortened (`get` would return the record short).
    fn check_padding(&self, p: u64, b: &Blk) -> Result<()> {
        let from = (p + BH) as usize + b.len as usize;
        let to = (p + b.size) as usize;
        if let Some(i) = self.buf[from..to].iter().position(|&x| x != 0) {
            return Err(Error::corrupt(
                "block.len",
                format!(
                    "block at {p} (slot {}) has len {} but padding byte {} is not zero: the length was shortened",
                    b.slot,
                    b.len,
                    from + i
                ),
            ));
        }
        Ok(())
    }
}

impl Layout<'_> {
    /// The journal of a paused compaction, checked: `start <= dst <= src <=
    /// end <= o_fr` inside the block section, 8-aligned, `live_from ==
    /// end` (Deferred examines every block), no run move in progress.
    /// Returns its hole `[dst, src)`.
    fn check_paused_journal(&self, st: &St) -> Result<(u64, u64)> {
        let j = self.hdr().journal;
        let ordered =
            H <= j.start && j.start <= j.dst && j.dst <= j.src && j.src <= j.end && j.end <= st.o_fr;
        if !ordered || (j.start | j.dst | j.src | j.end) % 8 != 0 || j.live_from != j.end {
            return Err(Error::corrupt(
                "journal",
                format!(
                    "paused compaction start={} dst={} src={} end={} live_from={} with o_fr={}",
                    j.start, j.dst, j.src, j.end, j.live_from, st.o_fr
                ),
            ));
        }
        if j.mv_src == j.src {
            return Err(Error::corrupt(
                "journal.mv_src",
                format!("a run move at {} in a paused compaction", j.src),
            ));
        }
        Ok((j.dst, j.src))
    }
}

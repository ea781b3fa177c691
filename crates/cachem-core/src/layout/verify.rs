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
        if h.journal.op != JOURNAL_NONE || h.flags & FLAG_RECOVERY_REQUIRED != 0 {
            return Err(Error::RecoveryRequired);
        }
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
            names += u32::from(crate::ids::OwnerId(e.owner).is_names());
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
}

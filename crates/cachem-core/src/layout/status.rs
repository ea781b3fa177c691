//! Status and counters: the header's identity fields (generation, boot id,
//! pid namespace, options), the counters and their bumps by the reaper and
//! the lock, and `status`, the snapshot of usage per owner and per pid.

use super::*;

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
    /// Of `records`, those a reap removes once the process is dead: its
    /// process-scoped records, or all of them in a region created with
    /// reap-all. Counted whether or not anyone reaps (`no_reap`), so a dead
    /// process with some left means reaping is off or failing.
    pub reapable: u32,
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
    /// Records of users (the name table's are not counted here).
    pub records: u32,
    pub slots: u32,
    /// Registered owner names (records of [`OwnerId::NAMES`]; their bytes
    /// are part of `used_bytes`).
    pub names: u32,
    /// The next owner id the name table hands out.
    pub next_owner: u32,
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

impl<'a> Layout<'a> {
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
        let (mut records, mut names) = (0u32, 0u32);
        let reap_all = h.options & OPT_REAP_ALL != 0;
        for (m, _) in self.iter() {
            if m.owner.is_names() {
                // The name table (and its index): counted apart, not a
                // user's record.
                names += u32::from(m.owner == OwnerId::NAMES);
                continue;
            }
            records += 1;
            let o = owners.entry(m.owner.0).or_insert(OwnerUsage { owner: m.owner, records: 0, bytes: 0 });
            o.records += 1;
            o.bytes += m.len as u64;
            let p = pids.entry((m.pid, m.start_time)).or_insert(PidUsage {
                pid: m.pid,
                start_time: m.start_time,
                records: 0,
                bytes: 0,
                reapable: 0,
            });
            p.records += 1;
            p.bytes += m.len as u64;
            if reap_all || m.owner.is_process() {
                p.reapable += 1;
            }
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
            free_slots: st.n_bptr - (records + names).min(st.n_bptr),
            names,
            next_owner: self.next_owner(),
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

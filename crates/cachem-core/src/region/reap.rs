//! Reaping: `Guard::reap` removes the records of dead processes (one pass
//! over the table, one /proc read per distinct process, one batch removal)
//! and `Guard::purge_process` those of this process. The batch removal's
//! crash argument is in `layout/batch.rs`; see `docs/design.md` ("Process
//! life-cycle and reaping").

use super::*;
use crate::format::OPT_REAP_ALL;
use crate::ids::OwnerId;
use crate::layout::Removed;
use std::collections::HashMap;

/// One dead process whose records a reap removed.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct DeadProcess {
    pub pid: u32,
    pub start_time: u64,
    pub records: usize,
    pub bytes: u64,
}

/// What a reap found and reclaimed.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct ReapReport {
    /// Processes found dead that had reapable records.
    pub dead: Vec<DeadProcess>,
    /// Records removed.
    pub records: usize,
    /// Bytes given back to the free gap (block headers and padding included).
    pub bytes: u64,
}

/// A multiply-xor hasher for small integer keys (the reaper's per-record
/// lookups; SipHash costs more than the rest of the pass).
#[derive(Default, Clone, Copy)]
struct FastHash;

struct FastHasher(u64);

impl std::hash::BuildHasher for FastHash {
    type Hasher = FastHasher;
    fn build_hasher(&self) -> FastHasher {
        FastHasher(0)
    }
}

impl std::hash::Hasher for FastHasher {
    fn finish(&self) -> u64 {
        self.0
    }
    fn write(&mut self, bytes: &[u8]) {
        for &b in bytes {
            self.write_u64(b as u64);
        }
    }
    fn write_u32(&mut self, v: u32) {
        self.write_u64(v as u64);
    }
    fn write_u64(&mut self, v: u64) {
        self.0 = (self.0.rotate_left(5) ^ v).wrapping_mul(0x51_7c_c1_b7_27_22_0a_95);
    }
}

impl Guard<'_> {
    /// Removes the records of dead processes: their process-scoped records,
    /// or all their records if the region was created with
    /// `reap_all_records_of_dead_processes`. One pass over the table, one
    /// /proc read per distinct process, one compaction. Does nothing (an
    /// empty report) if reaping is disabled for this region or process.
    pub fn reap(&mut self) -> Result<ReapReport> {
        if !self.region.reap {
            return Ok(ReapReport::default());
        }
        let all = self.region.options & OPT_REAP_ALL != 0;
        let me = process::me();
        // One pass: the liveness of each distinct (pid, start time) is read
        // from /proc the first time it is met, then remembered.
        let mut procs: HashMap<(u32, u64), Option<DeadProcess>, FastHash> = HashMap::default();
        // The scan only reads: the version turns odd only if a record goes
        // (attach reaps, so a reap that finds nothing must not disturb the
        // readers).
        let (region, dirty) = (self.region, &mut self.dirty);
        let removed = self.layout.retain_then(
            |m, _| {
                if !(all || m.owner.is_process()) || m.owner.is_names() || (m.pid, m.start_time) == me {
                    return true;
                }
                let dead = procs.entry((m.pid, m.start_time)).or_insert_with(|| {
                    (!process::is_alive(m.pid, m.start_time)).then_some(DeadProcess {
                        pid: m.pid,
                        start_time: m.start_time,
                        records: 0,
                        bytes: 0,
                    })
                });
                match dead {
                    None => true,
                    Some(d) => {
                        d.records += 1;
                        d.bytes += crate::format::block_size(m.len as u64);
                        false
                    }
                }
            },
            || mark_dirty(region, dirty),
        )?;
        if removed.records > 0 {
            self.layout.count_reaped(removed.records as u64);
        }
        let mut dead: Vec<DeadProcess> = procs.into_values().flatten().collect();
        dead.sort_by_key(|d| (d.pid, d.start_time));
        Ok(ReapReport { dead, records: removed.records, bytes: removed.bytes })
    }

    /// Removes this process's process-scoped records (what happens when the
    /// process's last `Cache` handle is dropped).
    pub fn purge_process(&mut self) -> Result<Removed> {
        let me = process::me();
        let (region, dirty) = (self.region, &mut self.dirty);
        self.layout.remove_of_owner_then(
            OwnerId::PROCESS,
            |m, _| (m.pid, m.start_time) == me,
            || mark_dirty(region, dirty),
        )
    }
}

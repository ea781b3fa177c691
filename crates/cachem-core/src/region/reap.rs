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

/// A process whose records a reap left because it cannot judge it from
/// here (see [`process::Unsure`]).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct UnjudgedProcess {
    pub pid: u32,
    pub start_time: u64,
    pub records: usize,
    pub reason: process::Unsure,
}

/// What a reap found and reclaimed.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct ReapReport {
    /// Processes found dead that had reapable records.
    pub dead: Vec<DeadProcess>,
    /// Processes with reapable records that could not be judged (their
    /// start time does not match, but they run in another time namespace):
    /// their records stay.
    pub unjudged: Vec<UnjudgedProcess>,
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
        self.reap_judging(false)
    }

    /// [`Guard::reap`]; `after_owner_died`: the lock came back with
    /// `EOWNERDEAD`, so a process may be dying whose main thread does not
    /// show it yet (another thread held the lock): a process being killed
    /// ([`process::being_killed`]) is dead too.
    pub(crate) fn reap_judging(&mut self, after_owner_died: bool) -> Result<ReapReport> {
        if !self.region.reap {
            return Ok(ReapReport::default());
        }
        let all = self.region.options & OPT_REAP_ALL != 0;
        let me = process::me();
        // One pass: the liveness of each distinct (pid, start time) is read
        // from /proc the first time it is met, then remembered (with the
        // count of its records, for the report).
        let mut procs: HashMap<(u32, u64), (process::Liveness, usize, u64), FastHash> = HashMap::default();
        // The scan only reads: the version turns odd only if a record goes
        // (attach reaps, so a reap that finds nothing must not disturb the
        // readers).
        let (region, dirty) = (self.region, &mut self.dirty);
        let removed = self.layout.retain_then(
            |m, _| {
                if !(all || m.owner.is_process()) || m.owner.is_names() || (m.pid, m.start_time) == me {
                    return true;
                }
                let p = procs.entry((m.pid, m.start_time)).or_insert_with(|| {
                    let l = match process::liveness(m.pid, m.start_time) {
                        process::Liveness::Alive if after_owner_died && process::being_killed(m.pid) => {
                            process::Liveness::Dead
                        }
                        l => l,
                    };
                    (l, 0, 0)
                });
                p.1 += 1;
                p.2 += crate::format::block_size(m.len as u64);
                p.0 != process::Liveness::Dead
            },
            || mark_dirty(region, dirty),
        )?;
        if removed.records > 0 {
            self.layout.count_reaped(removed.records as u64);
        }
        let (mut dead, mut unjudged) = (Vec::new(), Vec::new());
        for ((pid, start_time), (l, records, bytes)) in procs {
            match l {
                process::Liveness::Dead => dead.push(DeadProcess { pid, start_time, records, bytes }),
                process::Liveness::Unknown(reason) => {
                    unjudged.push(UnjudgedProcess { pid, start_time, records, reason })
                }
                process::Liveness::Alive => {}
            }
        }
        dead.sort_by_key(|d| (d.pid, d.start_time));
        unjudged.sort_by_key(|d| (d.pid, d.start_time));
        for u in &unjudged {
            tracing::warn!(
                pid = u.pid,
                records = u.records,
                "not reaping the records of pid {}: its start time does not match, but {}",
                u.pid,
                u.reason
            );
        }
        Ok(ReapReport { dead, unjudged, records: removed.records, bytes: removed.bytes })
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

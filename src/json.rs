//! The status report as JSON: the text of `cachem stat --json` and of the C
//! ABI's `cachem_status_json`. The keys are stable.

use crate::OwnerId;
use crate::{sys, Cache, CacheStatus, Guard, PidStatus, Result, Status};
use serde_json::{json, Value};
use std::collections::BTreeMap;
use std::path::Path;

impl CacheStatus {
    /// The status as JSON (stable keys; see docs/design.md).
    pub fn to_json(&self) -> Value {
        let r = &self.region;
        let hex = |b: &[u8]| b.iter().map(|x| format!("{x:02x}")).collect::<String>();
        json!({
            "path": self.path.as_ref().map(|p| p.display().to_string()),
            "size": r.size,
            "header_bytes": r.header_size,
            "used_bytes": r.used_bytes,
            "free_bytes": r.free_bytes,
            "table_bytes": r.table_bytes,
            "lock_bytes": r.trailer_bytes,
            "dead_bytes": r.dead_bytes,
            "dead_blocks": r.dead_blocks,
            "compaction": r.compaction.as_str(),
            "records": r.records,
            "slots": r.slots,
            "free_slots": r.free_slots,
            "generation": format!("{:016x}", r.generation),
            "boot_id": hex(&r.boot_id),
            "recovery_required": r.recovery_required,
            "owners": r.owners.iter().map(|o| json!({
                "id": o.owner.get(),
                "name": if o.owner.is_process() { None } else { self.owner_name(o.owner) },
                "records": o.records,
                "bytes": o.bytes,
            })).collect::<Vec<_>>(),
            "pids": self.pids.iter().map(|p| json!({
                "pid": p.pid,
                "alive": p.alive,
                "records": p.records,
                "bytes": p.bytes,
                "reapable": p.reapable,
                "start_time": p.start_time,
            })).collect::<Vec<_>>(),
            "lock_wait": {
                "holder_pid": self.lock_holder.and_then(|h| h.pid),
                "holder_tid": self.lock_holder.map(|h| h.tid),
                "waited_ms": self.lock_waited.as_secs_f64() * 1e3,
            },
            "dead_reapable_processes": self.dead_reapable_processes(),
            "dead_pids_with_kept_records": self.dead_pids_with_kept_records(),
            "counters": {
                "inserts": r.counters.inserts,
                "removes": r.counters.removes,
                "bytes_moved": r.counters.bytes_moved,
                "reaped_records": r.counters.reaped_records,
                "recoveries": r.counters.recoveries,
                "compactions": r.counters.compactions,
                "largest_compaction": r.counters.largest_compaction,
            },
        })
    }
}

impl Cache {
    /// [`Cache::status`] through a guard this thread already holds (taking
    /// the lock again would be an error).
    pub fn status_locked(&self, g: &Guard<'_>) -> Result<CacheStatus> {
        Ok(self.status_of(g.status()?, crate::names_of(g)))
    }

    /// Adds owner names and process liveness to an engine status.
    pub(crate) fn status_of(&self, region: Status, names: Vec<(String, OwnerId)>) -> CacheStatus {
        let owner_names: BTreeMap<_, String> = names.into_iter().map(|(n, id)| (id, n)).collect();
        let pids = region
            .pids
            .iter()
            .map(|p| PidStatus {
                pid: p.pid,
                start_time: p.start_time,
                alive: sys::process::is_alive(p.pid, p.start_time),
                records: p.records,
                bytes: p.bytes,
                reapable: p.reapable,
            })
            .collect();
        CacheStatus {
            path: self.region.path().map(Path::to_path_buf),
            region,
            owner_names,
            pids,
            lock_holder: None,
            lock_waited: std::time::Duration::ZERO,
        }
    }
}

//! `cachem stat --format prometheus`: the status as Prometheus text
//! exposition (format 0.0.4), for the node exporter's textfile collector.
//!
//! Every series carries a `region` label (the name given on the command
//! line), so one collector directory can hold several regions' files. Each
//! family has one `# HELP` and one `# TYPE` line before its samples; counter
//! names end in `_total`; label values are escaped (`\\`, `\"`, `\n`).

use cachem::CacheStatus;
use std::collections::BTreeMap;
use std::fmt::Write as _;

/// Escapes a label value as the text format requires.
pub fn escape_label(v: &str) -> String {
    let mut s = String::with_capacity(v.len());
    for c in v.chars() {
        match c {
            '\\' => s.push_str("\\\\"),
            '"' => s.push_str("\\\""),
            '\n' => s.push_str("\\n"),
            c => s.push(c),
        }
    }
    s
}

/// Escapes a HELP text (backslash and newline only).
fn escape_help(v: &str) -> String {
    v.replace('\\', "\\\\").replace('\n', "\\n")
}

struct Exposition {
    out: String,
    region: String,
}

impl Exposition {
    fn family(&mut self, name: &str, kind: &str, help: &str) {
        let _ = writeln!(self.out, "# HELP {name} {}", escape_help(help));
        let _ = writeln!(self.out, "# TYPE {name} {kind}");
    }

    fn sample(&mut self, name: &str, labels: &[(&str, &str)], value: u64) {
        let _ = write!(self.out, "{name}{{region=\"{}\"", escape_label(&self.region));
        for (k, v) in labels {
            let _ = write!(self.out, ",{k}=\"{}\"", escape_label(v));
        }
        let _ = writeln!(self.out, "}} {value}");
    }

    fn single(&mut self, name: &str, kind: &str, help: &str, value: u64) {
        self.family(name, kind, help);
        self.sample(name, &[], value);
    }
}

/// The whole exposition for one region.
pub fn exposition(region: &str, st: &CacheStatus) -> String {
    let r = &st.region;
    let mut e = Exposition { out: String::new(), region: region.to_string() };
    e.family(
        "cachem_region_info",
        "gauge",
        "Always 1; the region's compaction policy and generation as labels.",
    );
    e.sample(
        "cachem_region_info",
        &[("compaction", r.compaction.as_str()), ("generation", &format!("{:016x}", r.generation))],
        1,
    );
    e.single("cachem_size_bytes", "gauge", "Size of the region in bytes.", r.size);
    e.single("cachem_records", "gauge", "Live records in the region.", r.records.into());
    e.single(
        "cachem_used_bytes",
        "gauge",
        "Bytes of the block section (block headers, data, padding).",
        r.used_bytes,
    );
    e.single(
        "cachem_free_bytes",
        "gauge",
        "Bytes of the free gap between the block section and the block-pointer table.",
        r.free_bytes,
    );
    e.single(
        "cachem_dead_bytes",
        "gauge",
        "Bytes of deleted blocks not yet compacted away (0 in an eagerly compacted region).",
        r.dead_bytes,
    );
    e.single("cachem_dead_blocks", "gauge", "Deleted blocks not yet compacted away.", r.dead_blocks.into());
    e.single(
        "cachem_lock_bytes",
        "gauge",
        "Bytes of the trailer at the end of the region that holds the lock.",
        r.trailer_bytes,
    );
    e.single("cachem_table_bytes", "gauge", "Bytes of the block-pointer table.", r.table_bytes);
    e.single("cachem_table_entries", "gauge", "Entries in the block-pointer table.", r.slots.into());
    e.single(
        "cachem_free_table_entries",
        "gauge",
        "Table entries free for reuse by the next insert.",
        r.free_slots.into(),
    );
    e.single(
        "cachem_recovery_required",
        "gauge",
        "1 while an interrupted operation waits for the next lock to finish it.",
        r.recovery_required.into(),
    );
    e.single(
        "cachem_lock_waited_microseconds",
        "gauge",
        "How long taking the region lock for this scrape waited (long: a process holds the lock that long).",
        st.lock_waited.as_micros() as u64,
    );
    if let Some(h) = st.lock_holder {
        e.family(
            "cachem_lock_holder",
            "gauge",
            "1 with the pid and tid of the lock holder when the scrape began.",
        );
        let pid = h.pid.map_or(String::new(), |p| p.to_string());
        e.sample("cachem_lock_holder", &[("pid", &pid), ("tid", &h.tid.to_string())], 1);
    }
    let c = &r.counters;
    e.single("cachem_inserts_total", "counter", "Records inserted since the region was created.", c.inserts);
    e.single("cachem_removes_total", "counter", "Records removed since the region was created.", c.removes);
    e.single(
        "cachem_compactions_total",
        "counter",
        "Compactions (each closes every hole in the block section) since the region was created.",
        c.compactions,
    );
    e.single(
        "cachem_largest_compaction_bytes",
        "gauge",
        "Most bytes moved by one compaction since the region was created.",
        c.largest_compaction,
    );
    e.single(
        "cachem_compaction_moved_bytes_total",
        "counter",
        "Bytes moved by compaction since the region was created.",
        c.bytes_moved,
    );
    e.single(
        "cachem_reaped_records_total",
        "counter",
        "Records of dead processes removed by reaping since the region was created.",
        c.reaped_records,
    );
    e.single(
        "cachem_recoveries_total",
        "counter",
        "Lock recoveries after a process died holding the lock.",
        c.recoveries,
    );

    let owners: Vec<(String, String, u64, u64)> = r
        .owners
        .iter()
        .map(|o| {
            let name = if o.owner.is_process() {
                "(process)".to_string()
            } else {
                st.owner_name(o.owner).unwrap_or("").to_string()
            };
            (o.owner.get().to_string(), name, o.records.into(), o.bytes)
        })
        .collect();
    e.family("cachem_owner_records", "gauge", "Records per owner id (owner 0 is process-scoped).");
    for (id, name, n, _) in &owners {
        e.sample("cachem_owner_records", &[("owner_id", id), ("owner", name)], *n);
    }
    e.family("cachem_owner_bytes", "gauge", "Data bytes per owner id (without block headers and padding).");
    for (id, name, _, b) in &owners {
        e.sample("cachem_owner_bytes", &[("owner_id", id), ("owner", name)], *b);
    }

    // A pid can appear more than once (recycled pids): one series per
    // (pid, state), summed, so no series is duplicated.
    let mut pids: BTreeMap<(u32, &str), (u64, u64)> = BTreeMap::new();
    for p in &st.pids {
        let e = pids.entry((p.pid, if p.alive { "alive" } else { "dead" })).or_default();
        e.0 += u64::from(p.records);
        e.1 += p.bytes;
    }
    e.family(
        "cachem_process_records",
        "gauge",
        "Records per inserting process, alive or dead (not yet reaped).",
    );
    for ((pid, state), (n, _)) in &pids {
        e.sample("cachem_process_records", &[("pid", &pid.to_string()), ("state", state)], *n);
    }
    e.family("cachem_process_bytes", "gauge", "Data bytes per inserting process, alive or dead.");
    for ((pid, state), (_, b)) in &pids {
        e.sample("cachem_process_bytes", &[("pid", &pid.to_string()), ("state", state)], *b);
    }
    e.single(
        "cachem_dead_processes",
        "gauge",
        "Dead processes with records a reap removes (process-scoped ones; all under reap-all): \
         above 0 for several reap intervals, reaping is off or failing.",
        st.dead_reapable_processes() as u64,
    );
    e.single(
        "cachem_dead_pids_kept",
        "gauge",
        "Dead processes whose records are all kept (owned records outlive their inserter): information.",
        st.dead_pids_with_kept_records() as u64,
    );
    e.out
}

//! Output of `stat`, `ls`, `reap` and `get --hex`, for people and (with
//! `--json`) for programs. The JSON keys are stable.

use crate::CliResult;
use cachem::{Cache, CacheStatus, OwnerId, ReapReport};
use serde_json::{json, Value};
use std::io::Write;

/// One line picturing the region: header, live blocks (`B`), dead blocks
/// waiting for a compaction (`x`), free gap (`.`), table (`T`), lock (`L`).
pub fn picture(st: &CacheStatus, width: usize) -> String {
    let r = &st.region;
    let live = r.used_bytes - r.dead_bytes.min(r.used_bytes);
    let pct =
        ((live + r.table_bytes + r.header_size + r.trailer_bytes) * 100).checked_div(r.size).unwrap_or(0);
    let suffix = format!("  {pct:>3}% used");
    let inner = width.saturating_sub(suffix.len() + 4).max(10);
    let total = r.size.max(1) as f64;
    let cells = |bytes: u64| -> usize {
        if bytes == 0 {
            0
        } else {
            ((bytes as f64 / total * inner as f64).round() as usize).max(1)
        }
    };
    let (mut b, x, t) = (cells(live), cells(r.dead_bytes), cells(r.table_bytes));
    let mut free = inner.saturating_sub(b + x + t);
    if r.free_bytes > 0 && free == 0 {
        free = 1;
        b = b.saturating_sub(1);
    }
    // Dead blocks lie among the live ones; drawn after them for a clear total.
    format!("[H|{}{}{}|{}|L]{suffix}", "B".repeat(b), "x".repeat(x), ".".repeat(free), "T".repeat(t))
}

fn owner_label(st: &CacheStatus, id: OwnerId) -> String {
    if id.is_process() {
        "(process)".into()
    } else {
        st.owner_name(id).map(str::to_string).unwrap_or_else(|| "-".into())
    }
}

pub fn status_human(out: &mut impl Write, st: &CacheStatus) -> CliResult {
    let r = &st.region;
    let width = terminal_size::terminal_size().map_or(80, |(w, _)| w.0 as usize).clamp(40, 160);
    writeln!(out, "{}", picture(st, width))?;
    let path = st.path.as_ref().map_or("<anonymous>".to_string(), |p| p.display().to_string());
    writeln!(out, "region    {path}")?;
    writeln!(
        out,
        "size      {} bytes: header {}, blocks {} (dead {}), free {}, table {}, lock {}",
        r.size, r.header_size, r.used_bytes, r.dead_bytes, r.free_bytes, r.table_bytes, r.trailer_bytes
    )?;
    writeln!(
        out,
        "policy    {} compaction; {} dead blocks, {} dead bytes",
        r.compaction, r.dead_blocks, r.dead_bytes
    )?;
    writeln!(out, "records   {} in {} table entries ({} free entries)", r.records, r.slots, r.free_slots)?;
    writeln!(out, "identity  generation {:016x}, boot {}", r.generation, hex(&r.boot_id))?;
    if r.recovery_required {
        writeln!(out, "state     an interrupted compaction is pending (the next lock finishes it)")?;
    }
    writeln!(out, "lock      {}", lock_line(st))?;
    writeln!(out)?;
    writeln!(out, "{:<10} {:<24} {:>8} {:>10}", "OWNER", "NAME", "RECORDS", "BYTES")?;
    for o in &r.owners {
        writeln!(
            out,
            "{:<10} {:<24} {:>8} {:>10}",
            o.owner.get(),
            owner_label(st, o.owner),
            o.records,
            o.bytes
        )?;
    }
    if r.owners.is_empty() {
        writeln!(out, "(no records)")?;
    }
    writeln!(out)?;
    writeln!(out, "{:<10} {:<6} {:>8} {:>10}", "PID", "STATE", "RECORDS", "BYTES")?;
    for p in &st.pids {
        writeln!(
            out,
            "{:<10} {:<6} {:>8} {:>10}",
            p.pid,
            if p.alive { "alive" } else { "dead" },
            p.records,
            p.bytes
        )?;
    }
    writeln!(
        out,
        "dead      {} with records to reap (alert if it stays above 0), {} with kept records only",
        st.dead_reapable_processes(),
        st.dead_pids_with_kept_records()
    )?;
    writeln!(out)?;
    let c = &r.counters;
    writeln!(
        out,
        "counters  inserts {}, removes {}, compactions {}, bytes moved {} (largest compaction {}), reaped {}, recoveries {}",
        c.inserts, c.removes, c.compactions, c.bytes_moved, c.largest_compaction, c.reaped_records, c.recoveries
    )?;
    Ok(())
}

pub fn list(
    out: &mut impl Write,
    cache: &Cache,
    owner: Option<OwnerId>,
    pid: Option<u32>,
    json: bool,
) -> CliResult {
    let st = cache.status()?;
    let g = cache.lock()?;
    let mut alive = std::collections::HashMap::new();
    let rows: Vec<_> = g
        .iter()
        .filter(|(m, _)| owner.is_none_or(|o| m.owner == o) && pid.is_none_or(|p| m.pid == p))
        .map(|(m, _)| {
            let a = *alive
                .entry((m.pid, m.start_time))
                .or_insert_with(|| cachem::sys::process::is_alive(m.pid, m.start_time));
            (m, a)
        })
        .collect();
    drop(g);
    if json {
        let v: Vec<Value> = rows
            .iter()
            .map(|(m, a)| {
                json!({
                    "id": m.id.to_string(),
                    "owner": m.owner.get(),
                    "owner_name": if m.owner.is_process() { None } else { st.owner_name(m.owner) },
                    "pid": m.pid,
                    "alive": a,
                    "len": m.len,
                })
            })
            .collect();
        writeln!(out, "{}", Value::Array(v))?;
        return Ok(());
    }
    writeln!(out, "{:<16} {:<24} {:>10} {:<6} {:>8}", "ID", "OWNER", "PID", "ALIVE", "LEN")?;
    for (m, a) in &rows {
        let owner = format!("{} {}", m.owner.get(), owner_label(&st, m.owner));
        writeln!(
            out,
            "{:<16} {:<24} {:>10} {:<6} {:>8}",
            m.id.to_string(),
            owner,
            m.pid,
            if *a { "yes" } else { "no" },
            m.len
        )?;
    }
    Ok(())
}

/// Who held the lock when `stat` asked and how long `stat` waited for it.
pub fn lock_line(st: &CacheStatus) -> String {
    let waited = format!("{:.1} ms", st.lock_waited.as_secs_f64() * 1e3);
    match st.lock_holder {
        None => format!("free (stat waited {waited})"),
        Some(h) => format!(
            "held by pid {} (thread {}{}); stat waited {waited} for it",
            h.pid.map_or("?".to_string(), |p| p.to_string()),
            h.tid,
            if h.owner_died { ", which died holding it" } else { "" }
        ),
    }
}

pub fn reap(out: &mut impl Write, rep: &ReapReport, json: bool) -> CliResult {
    if json {
        let v = json!({
            "records": rep.records,
            "bytes": rep.bytes,
            "dead": rep.dead.iter().map(|d| json!({
                "pid": d.pid, "start_time": d.start_time, "records": d.records, "bytes": d.bytes,
            })).collect::<Vec<_>>(),
            "unjudged": rep.unjudged.iter().map(|u| json!({
                "pid": u.pid, "start_time": u.start_time, "records": u.records, "reason": u.reason.to_string(),
            })).collect::<Vec<_>>(),
        });
        writeln!(out, "{v}")?;
        return Ok(());
    }
    for u in &rep.unjudged {
        writeln!(
            out,
            "not reaped: {} record{} of pid {} (its start time does not match, but {})",
            u.records,
            if u.records == 1 { "" } else { "s" },
            u.pid,
            u.reason
        )?;
    }
    if rep.records == 0 {
        writeln!(out, "nothing to reap: no dead process has reapable records")?;
        return Ok(());
    }
    let pids: Vec<String> = rep.dead.iter().map(|d| format!("{} ({} records)", d.pid, d.records)).collect();
    writeln!(
        out,
        "reaped {} record{} ({} bytes freed) of {} dead process{}: {}",
        rep.records,
        if rep.records == 1 { "" } else { "s" },
        rep.bytes,
        rep.dead.len(),
        if rep.dead.len() == 1 { "" } else { "es" },
        pids.join(", ")
    )?;
    Ok(())
}

pub fn hexdump(out: &mut impl Write, bytes: &[u8]) -> CliResult {
    for (i, chunk) in bytes.chunks(16).enumerate() {
        let hexes: Vec<String> = chunk.iter().map(|b| format!("{b:02x}")).collect();
        let text: String =
            chunk.iter().map(|&b| if (0x20..0x7f).contains(&b) { b as char } else { '.' }).collect();
        writeln!(out, "{:08x}  {:<47}  |{text}|", i * 16, hexes.join(" "))?;
    }
    Ok(())
}

pub fn hex(b: &[u8]) -> String {
    b.iter().map(|x| format!("{x:02x}")).collect()
}

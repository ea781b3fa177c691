//! `cachem stress`: one worker's random insert / update / remove loop over
//! self-checking records. Used by the crash tests, and by users to validate
//! a deployment: run several at once, kill some, then `cachem verify`.

use crate::{existing, CliResult, Fail};
use cachem::{Cache, Error, OwnerId, RecordId};
use std::collections::BTreeMap;
use std::io::{IsTerminal, Write};
use std::path::PathBuf;
use std::time::{Duration, Instant};

/// Self-checking record: `pid u32 | seq u32 | payload | fnv64 of the rest`.
fn make(pid: u32, seq: u32, len: usize, rng: &mut u64) -> Vec<u8> {
    let len = len.max(16);
    let mut v = Vec::with_capacity(len);
    v.extend_from_slice(&pid.to_ne_bytes());
    v.extend_from_slice(&seq.to_ne_bytes());
    while v.len() < len - 8 {
        v.push(next(rng) as u8);
    }
    let c = fnv(&v);
    v.extend_from_slice(&c.to_ne_bytes());
    v
}

/// FNV-1a.
pub fn fnv(b: &[u8]) -> u64 {
    b.iter().fold(0xcbf2_9ce4_8422_2325u64, |h, &x| (h ^ x as u64).wrapping_mul(0x0100_0000_01b3))
}

/// Whether a record made by `stress` is intact.
pub fn intact(v: &[u8]) -> bool {
    v.len() >= 16 && fnv(&v[..v.len() - 8]).to_ne_bytes() == v[v.len() - 8..]
}

fn next(s: &mut u64) -> u64 {
    *s ^= *s << 13;
    *s ^= *s >> 7;
    *s ^= *s << 17;
    *s
}

#[derive(Default)]
struct Counts {
    ops: u64,
    inserts: u64,
    updates: u64,
    removes: u64,
    full: u64,
    errors: u64,
}

pub fn run(
    dir: &Option<PathBuf>,
    name: &str,
    seconds: f64,
    seed: Option<u64>,
    record_size: usize,
    owner: Option<String>,
) -> CliResult {
    if !(seconds.is_finite() && seconds >= 0.0) {
        return Err(Fail(format!("--seconds {seconds} must be a non-negative number"), 2));
    }
    let cache = Cache::open(&existing(dir, name))?;
    let who = match &owner {
        Some(n) => cache.id(n)?,
        None => OwnerId::PROCESS,
    };
    let pid = std::process::id();
    let mut rng = seed.unwrap_or_else(|| {
        let t = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map_or(1, |d| d.as_nanos() as u64);
        t ^ ((pid as u64) << 32)
    }) | 1;
    let max = record_size.max(16);
    let mut mine: BTreeMap<RecordId, Vec<u8>> = BTreeMap::new();
    let mut c = Counts::default();
    let tty = std::io::stdout().is_terminal();
    let start = Instant::now();
    let end = start + Duration::from_secs_f64(seconds);
    let mut last_report = start;
    let mut seq = 0u32;
    let err = |c: &mut Counts, what: String| {
        c.errors += 1;
        eprintln!("cachem stress: {what}");
    };
    while Instant::now() < end {
        let mut g = cache.lock()?;
        for _ in 0..8 {
            c.ops += 1;
            seq = seq.wrapping_add(1);
            let pick = mine.keys().nth((next(&mut rng) % mine.len().max(1) as u64) as usize).copied();
            let len = 16 + (next(&mut rng) % (max - 15) as u64) as usize;
            match next(&mut rng) % 10 {
                0..=3 if mine.len() < 32 => {
                    let rec = make(pid, seq, len, &mut rng);
                    match g.insert(who, &rec) {
                        Ok(id) => {
                            mine.insert(id, rec);
                            c.inserts += 1;
                        }
                        Err(Error::Full { .. }) => c.full += 1,
                        Err(e) => err(&mut c, format!("insert: {e}")),
                    }
                }
                4..=6 => {
                    let Some(old) = pick else { continue };
                    if g.get(old) != Some(&mine[&old][..]) {
                        err(&mut c, format!("record {old} changed under us"));
                    }
                    let rec = make(pid, seq, len, &mut rng);
                    match g.insert(who, &rec) {
                        Ok(id) => {
                            mine.insert(id, rec);
                            if let Err(e) = g.remove(old) {
                                err(&mut c, format!("remove {old}: {e}"));
                            }
                            mine.remove(&old);
                            c.updates += 1;
                        }
                        Err(Error::Full { .. }) => c.full += 1,
                        Err(e) => err(&mut c, format!("insert: {e}")),
                    }
                }
                _ => {
                    let Some(id) = pick else { continue };
                    match g.get(id) {
                        Some(b) if b == &mine[&id][..] && intact(b) => {}
                        _ => err(&mut c, format!("record {id} missing or changed")),
                    }
                    if let Err(e) = g.remove(id) {
                        err(&mut c, format!("remove {id}: {e}"));
                    }
                    mine.remove(&id);
                    c.removes += 1;
                }
            }
        }
        drop(g);
        if tty && last_report.elapsed() > Duration::from_millis(500) {
            last_report = Instant::now();
            print!("\r{} ops, {} errors", c.ops, c.errors);
            let _ = std::io::stdout().flush();
        }
    }
    // Final check: exactly our records, intact.
    {
        let g = cache.lock()?;
        let found: BTreeMap<RecordId, Vec<u8>> = g
            .iter()
            .filter(|(m, _)| m.owner == who && m.pid == pid)
            .map(|(m, d)| (m.id, d.to_vec()))
            .collect();
        if found != mine {
            err(
                &mut c,
                format!("final check: {} records expected, {} found or changed", mine.len(), found.len()),
            );
        }
        if let Err(e) = g.verify() {
            err(&mut c, format!("verify: {e}"));
        }
    }
    if tty {
        println!();
    }
    println!(
        "stress: ops={} inserts={} updates={} removes={} full={} errors={} seconds={:.1}",
        c.ops,
        c.inserts,
        c.updates,
        c.removes,
        c.full,
        c.errors,
        start.elapsed().as_secs_f64()
    );
    if c.errors > 0 {
        return Err(Fail(String::new(), 1));
    }
    Ok(())
}

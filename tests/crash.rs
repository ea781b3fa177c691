//! Crash tests with real processes and real SIGKILLs (needs the
//! `failpoints` feature: `cargo test --release --features failpoints --test crash`).
//!
//! - Every fault point, under both compaction policies: a child is killed
//!   there while inserting, removing, purging or compacting; the parent's
//!   next lock recovers, `verify` passes, the interrupted operation is fully
//!   done or not at all (a purge cut short: each record entirely), and every
//!   other record is byte-identical.
//! - Torture: workers do random inserts / updates / removes of
//!   self-checking records while the parent SIGKILLs random workers; half
//!   the kills in an `Eager` region, half in a `Deferred` one.
#![cfg(feature = "failpoints")]

mod common;

use cachem::sys::failpoint::POINTS;
use cachem::{Compaction, OwnerId, RecordId, Region, RegionOptions};
use common::*;
use std::collections::{BTreeMap, BTreeSet};
use std::os::unix::process::ExitStatusExt;
use std::path::Path;
use std::time::{Duration, Instant};

const SIZE: u64 = 1 << 20;

fn ropts(dir: &Path, compaction: Compaction) -> RegionOptions {
    RegionOptions { size: Some(SIZE), dir: Some(dir.to_path_buf()), compaction, ..Default::default() }
}

type Snapshot = BTreeMap<RecordId, (u32, Vec<u8>)>;

fn snapshot(r: &Region) -> Snapshot {
    let g = r.lock().unwrap();
    g.iter().map(|(m, d)| (m.id, (m.owner.0, d.to_vec()))).collect()
}

/// A worker's compaction step budget (`CACHEM_TEST_STEP` bytes; 0 or
/// unset: the default).
fn set_step_from_env() {
    if let Ok(s) = std::env::var("CACHEM_TEST_STEP") {
        cachem::layout::set_compaction_step(s.parse().unwrap());
    }
}

/// Worker: one operation on the region, with CACHEM_FAILPOINT set.
#[test]
fn worker_op() {
    if !is_worker() {
        return;
    }
    let dir = std::env::var("CACHEM_TEST_DIR").unwrap();
    set_step_from_env();
    let opts = RegionOptions { dir: Some(dir.into()), ..Default::default() };
    let r = Region::open("crash", &opts).unwrap();
    let mut g = r.lock().unwrap();
    match std::env::var("CACHEM_TEST_OP").unwrap().as_str() {
        "insert" => {
            // Owner 1 + USER_BUCKETS shares owner 1's bucket: the insert
            // links a chain.
            g.insert(OwnerId(1 + cachem::format::USER_BUCKETS as u32), &[0xEE; 300]).unwrap();
        }
        "remove" => {
            let id: RecordId = std::env::var("CACHEM_TEST_ID").unwrap().parse().unwrap();
            g.remove(id).unwrap();
        }
        "purge" => {
            let pid: u32 = std::env::var("CACHEM_TEST_PID").unwrap().parse().unwrap();
            g.purge(OwnerId(2), pid).unwrap();
        }
        "compact" => {
            g.compact().unwrap();
        }
        op => panic!("unknown op {op}"),
    }
    say("done");
}

/// The fault points an operation passes under a policy (in the setup of
/// [`fault_case`]: the purge removes two thirds of the records, which passes the
/// `Deferred` bound and compacts; the compact finds dead blocks).
fn points_of(policy: Compaction, op: &str) -> Vec<&'static str> {
    let pre = |p: &[&str]| -> Vec<&'static str> {
        POINTS.iter().copied().filter(|x| p.iter().any(|p| x.starts_with(p))).collect()
    };
    let compact = |all: bool| -> Vec<&'static str> {
        pre(&["compact."]).into_iter().filter(|p| all || *p != "compact.after_journal").collect()
    };
    match (policy, op) {
        (_, "insert") => pre(&["insert."]),
        (Compaction::Eager, "remove" | "purge") => [pre(&["chain.", "remove."]), compact(false)].concat(),
        (Compaction::Eager, _) => vec![],
        (Compaction::Deferred, "remove") => pre(&["chain.", "defer."]),
        (Compaction::Deferred, "purge") => [pre(&["chain.", "defer."]), compact(true)].concat(),
        (Compaction::Deferred, _) => compact(true),
    }
}

#[test]
fn every_fault_point_kill_recovers_to_before_or_after() {
    let mut cases = 0;
    let mut covered = BTreeSet::new();
    // Deferred also with tiny compaction steps (`CACHEM_TEST_STEP`): the
    // worker's compaction pauses between runs, so the kill lands in one
    // step of an incremental compaction.
    for (policy, step) in [(Compaction::Eager, 0), (Compaction::Deferred, 0), (Compaction::Deferred, 512)] {
        for op in ["insert", "remove", "purge", "compact"] {
            for point in points_of(policy, op) {
                // In steps, the purge's compaction pauses long before its
                // end (the explicit compact runs to the end and passes it).
                if step > 0 && op == "purge" && point == "compact.before_clear" {
                    continue;
                }
                fault_case(policy, op, point, step);
                covered.insert(point);
                cases += 1;
            }
        }
    }
    let deferred: usize = ["insert", "remove", "purge", "compact"]
        .iter()
        .map(|op| points_of(Compaction::Deferred, op).len())
        .sum();
    assert_eq!(cases, 50 + deferred - 1);
    assert_eq!(covered.len(), POINTS.len(), "every fault point is exercised");
}

fn fault_case(policy: Compaction, op: &str, point: &str, step: u64) {
    let d = TempDir::new("fault");
    let r = Region::open("crash", &ropts(d.path(), policy)).unwrap();
    let mut rng = Rng(0x1234_5678);
    let mut ids = vec![];
    {
        let mut g = r.lock().unwrap();
        for i in 0..300u32 {
            let rec = make_record(i, 0, 16 + rng.below(400) as usize, &mut rng);
            ids.push(g.insert(OwnerId(if i % 3 == 0 { 1 } else { 2 }), &rec).unwrap());
        }
        // A few holes (dead blocks under Deferred, below its bound).
        for id in ids.drain(200..230).step_by(3) {
            g.remove(id).unwrap();
        }
        if policy == Compaction::Deferred {
            assert!(g.status().unwrap().dead_bytes > 0);
        }
    }
    let before = snapshot(&r);
    let victim = ids[3];
    let me = std::process::id();
    let after: Snapshot = match op {
        "insert" | "compact" => before.clone(),
        "remove" => before.iter().filter(|(id, _)| **id != victim).map(|(k, v)| (*k, v.clone())).collect(),
        _ => before.iter().filter(|(_, (o, _))| *o != 2).map(|(k, v)| (*k, v.clone())).collect(),
    };
    let env = [
        ("CACHEM_TEST_DIR", d.path().display().to_string()),
        ("CACHEM_TEST_OP", op.to_string()),
        ("CACHEM_TEST_ID", victim.to_string()),
        ("CACHEM_TEST_PID", me.to_string()),
        ("CACHEM_FAILPOINT", point.to_string()),
        ("CACHEM_TEST_STEP", step.to_string()),
    ];
    let mut w = spawn_worker("worker_op", &env);
    let st = wait_timeout(&mut w, Duration::from_secs(30));
    assert_eq!(st.signal(), Some(9), "{op} at {point}: the worker must die by SIGKILL ({st:?})");

    let g = r.lock().unwrap();
    assert!(g.recovered(), "{policy:?} {op} at {point}: the next lock recovers");
    let v = g.verify().unwrap_or_else(|e| panic!("{policy:?} {op} at {point}: {e}"));
    if point.starts_with("compact.") {
        assert_eq!(v.dead_bytes, 0, "{policy:?} {op} at {point}: the compaction was finished");
    }
    drop(g);
    let got = snapshot(&r);
    // For an insert, "after" has one more record with the inserted bytes.
    let done = if op == "insert" {
        let extra: Vec<_> = got.iter().filter(|(id, _)| !before.contains_key(id)).collect();
        assert!(got.iter().filter(|(id, _)| before.contains_key(id)).all(|(id, v)| before[id] == *v));
        match extra.as_slice() {
            [] => false,
            [(_, (o, bytes))]
                if *o == 1 + cachem::format::USER_BUCKETS as u32 && bytes == &vec![0xEE; 300] =>
            {
                true
            }
            other => panic!("{op} at {point}: unexpected records {other:?}"),
        }
    } else if got == after {
        true
    } else if op == "purge" && policy == Compaction::Deferred && point.starts_with("defer.") {
        // A deferred purge killed after its first victim: each record is
        // removed entirely or kept, and only victims are removed.
        assert!(got.iter().all(|(k, v)| before.get(k) == Some(v)), "{op} at {point}: a record changed");
        assert!(after.iter().all(|(k, v)| got.get(k) == Some(v)), "{op} at {point}: a kept record was lost");
        assert!(got.len() < before.len(), "{op} at {point}: the first victim's remove was finished");
        return;
    } else {
        assert!(got == before, "{policy:?} {op} at {point}: neither before nor after");
        false
    };
    // Killed before `o_fr` moved (insert: while publishing or linking its
    // owner chain) or before the entry was cleared (a remove unlinking its
    // chain entry, an eager remove journaling), the operation did not
    // happen; after that it completes (a deferred remove completes once
    // its block is marked).
    let expect_done =
        !(point.starts_with("insert.") || point.starts_with("chain.") || point == "remove.after_journal");
    assert_eq!(done, expect_done, "{policy:?} {op} at {point}");
    let st = r.lock().unwrap().status().unwrap();
    assert_eq!(st.counters.recoveries, 1);
}

// ----- torture -------------------------------------------------------------

/// Worker: random insert / update / remove of its own self-checking records
/// until the stop file appears; then checks it finds exactly what it owns.
#[test]
fn worker_torture() {
    if !is_worker() {
        return;
    }
    let dir = std::env::var("CACHEM_TEST_DIR").unwrap();
    let slot: u32 = std::env::var("CACHEM_TEST_SLOT").unwrap().parse().unwrap();
    set_step_from_env();
    let stop = Path::new(&dir).join("stop");
    let r = Region::open("torture", &RegionOptions { dir: Some(dir.clone().into()), ..Default::default() })
        .unwrap();
    // Every worker's owner is in the same owner bucket: they all share
    // one chain of the owner index, which kills land in the middle of.
    let owner = OwnerId(100 + slot * cachem::format::USER_BUCKETS as u32);
    let pid = std::process::id();
    let mut rng = Rng::seeded();
    let mut mine: BTreeMap<RecordId, Vec<u8>> = BTreeMap::new();
    // Take over the slot: drop whatever a killed predecessor left.
    r.lock().unwrap().remove_of_owner(owner, |_, _| true).unwrap();
    say("ready");
    let mut seq = 0u32;
    let mut ops = 0u64;
    while !stop.exists() {
        let mut g = r.lock().unwrap();
        for _ in 0..16 {
            seq += 1;
            ops += 1;
            let pick = |m: &BTreeMap<RecordId, Vec<u8>>, k: u64| {
                m.keys().nth((k % m.len().max(1) as u64) as usize).copied()
            };
            match rng.below(10) {
                0..=3 if mine.len() < 24 => {
                    let rec = make_record(pid, seq, 16 + rng.below(1500) as usize, &mut rng);
                    match g.insert(owner, &rec) {
                        Ok(id) => {
                            mine.insert(id, rec);
                        }
                        Err(cachem::Error::Full { .. }) => {}
                        Err(e) => panic!("insert: {e}"),
                    }
                }
                4..=6 => {
                    // Update: a new version replaces the old (each step atomic).
                    if let Some(old) = pick(&mine, rng.next()) {
                        let rec = make_record(pid, seq, 16 + rng.below(1500) as usize, &mut rng);
                        if let Ok(id) = g.insert(owner, &rec) {
                            mine.insert(id, rec);
                            g.remove(old).unwrap();
                            mine.remove(&old);
                        }
                    }
                }
                7 => {
                    // The seed's loop over the owner index, removing every
                    // third record after asking for the next.
                    let before: Vec<RecordId> = mine.keys().copied().collect();
                    let (mut cur, mut seen, mut n) = (None, BTreeMap::new(), 0);
                    while let Some(id) = g.next_of_owner(owner, cur) {
                        n += 1;
                        assert!(n <= before.len(), "next_of_owner visits more than the owner's records");
                        seen.insert(id, g.get(id).unwrap().to_vec());
                        if n % 3 == 0 {
                            g.remove(id).unwrap();
                            mine.remove(&id);
                        }
                        cur = Some(id);
                    }
                    assert!(seen.iter().all(|(id, d)| mine.get(id).is_none_or(|m| m == d)));
                    assert_eq!(seen.len(), n, "each record once");
                    assert!(seen.keys().eq(before.iter()), "every record of the owner");
                }
                _ => {
                    if let Some(id) = pick(&mine, rng.next()) {
                        assert_eq!(g.get(id).unwrap(), &mine[&id][..], "own record changed");
                        g.remove(id).unwrap();
                        mine.remove(&id);
                    }
                }
            }
        }
        drop(g);
        std::thread::yield_now();
    }
    let g = r.lock().unwrap();
    let found: BTreeMap<RecordId, Vec<u8>> = g.iter_owner(owner).map(|(id, d)| (id, d.to_vec())).collect();
    if found != mine {
        say(format!("MISMATCH owned={} found={}", mine.len(), found.len()));
        std::process::exit(1);
    }
    say(format!("ok ops={ops} records={}", mine.len()));
}

fn torture(kills: u32, workers: u32) {
    torture_policy(Compaction::Eager, kills / 2, workers);
    torture_policy(Compaction::Deferred, kills - kills / 2, workers);
}

fn torture_policy(compaction: Compaction, kills: u32, workers: u32) {
    let d = TempDir::new("torture");
    let r = Region::open(
        "torture",
        &RegionOptions { size: Some(4 << 20), dir: Some(d.path().into()), compaction, ..Default::default() },
    )
    .unwrap();
    // Under Deferred, every other worker compacts in tiny steps, so kills
    // land in paused and resumed incremental compactions too.
    let env_for = |slot: u32| {
        let step = if compaction == Compaction::Deferred && slot % 2 == 1 { 512 } else { 0 };
        vec![
            ("CACHEM_TEST_DIR", d.path().display().to_string()),
            ("CACHEM_TEST_SLOT", slot.to_string()),
            ("CACHEM_TEST_STEP", step.to_string()),
        ]
    };
    let start = Instant::now();
    let mut rng = Rng::seeded();
    let mut procs: Vec<std::process::Child> =
        (0..workers).map(|s| spawn_worker("worker_torture", &env_for(s))).collect();
    let mut born: Vec<Instant> = vec![Instant::now(); workers as usize];
    let mut killed = 0;
    while killed < kills {
        std::thread::sleep(Duration::from_micros(1000 + rng.below(4000)));
        // Kill a worker that has had time to start (30 ms), so kills land in
        // its working loop, often inside the lock, at a random moment.
        let s = rng.below(workers as u64) as usize;
        if born[s].elapsed() < Duration::from_millis(30) {
            continue;
        }
        sigkill(&mut procs[s]);
        let st = wait_timeout(&mut procs[s], Duration::from_secs(30));
        assert!(st.signal() == Some(9) || st.success(), "worker failed on its own: {st:?}");
        killed += 1;
        procs[s] = spawn_worker("worker_torture", &env_for(s as u32));
        born[s] = Instant::now();
        assert!(start.elapsed() < Duration::from_secs(1800), "torture took too long");
    }
    // Let the replacements settle, then stop everyone and check.
    std::thread::sleep(Duration::from_millis(300));
    std::fs::write(d.path().join("stop"), b"").unwrap();
    for (s, p) in procs.iter_mut().enumerate() {
        let st = wait_timeout(p, Duration::from_secs(60));
        let out = stdout_of(p);
        assert!(st.success(), "worker {s} failed: {st:?} {out}");
        assert!(out.contains("ok ops="), "worker {s}: {out}");
    }
    let g = r.lock().unwrap();
    let rep = g.verify().unwrap();
    let mut bad = 0;
    let mut owners = BTreeSet::new();
    for (m, data) in g.iter() {
        owners.insert(m.owner);
        if !record_ok(data) {
            bad += 1;
        }
    }
    assert_eq!(bad, 0, "records with a broken checksum");
    let st = g.status().unwrap();
    println!(
        "torture ({compaction:?}): {kills} kills of {workers} workers in {:.1}s; lock recoveries {}; \
         {} records left; {} inserts, {} removes, {} bytes moved, {} compactions",
        start.elapsed().as_secs_f64(),
        st.counters.recoveries,
        rep.records,
        st.counters.inserts,
        st.counters.removes,
        st.counters.bytes_moved,
        st.counters.compactions
    );
}

#[test]
fn torture_bounded() {
    if is_worker() {
        return;
    }
    torture(200, 4);
}

/// `make torture KILLS=5000`.
#[test]
#[ignore]
fn torture_long() {
    let kills = std::env::var("CACHEM_TORTURE_KILLS").ok().and_then(|k| k.parse().ok()).unwrap_or(5000);
    torture(kills, 4);
}

//! The optimistic read path (`get_into`, `read`, `read_pod`) with real
//! processes:
//!
//! - the API: lengths, `BufferTooSmall`, `Stale`, typed reads, a reader in
//!   the writer's own thread;
//! - a writer SIGKILLed holding the lock mid-change leaves the version odd:
//!   optimistic reads give up after a bounded number of tries, the lock
//!   recovers the region and makes the version even, and reads go
//!   optimistic again;
//! - (with `--features failpoints`) torture: 3 reader processes hammer
//!   self-checking records while 2 writer processes insert, update in
//!   place, remove and compact, and die by SIGKILL at random fault points
//!   or at random times. Every value a reader gets passes its checksum
//!   (never a torn mix), and the optimistic path is the one mostly taken.

mod common;

use cachem::{Compaction, ErrorKind, OwnerId, RecordId, Region, RegionOptions};
use common::*;
use std::os::unix::process::ExitStatusExt;
use std::path::Path;
use std::time::{Duration, Instant};

fn ropts(dir: &Path, compaction: Compaction) -> RegionOptions {
    RegionOptions { size: Some(1 << 20), dir: Some(dir.to_path_buf()), compaction, ..Default::default() }
}

fn attach(dir: &str) -> Region {
    Region::open("rp", &RegionOptions { dir: Some(dir.into()), ..Default::default() }).unwrap()
}

#[test]
fn get_into_read_and_read_pod() {
    let d = TempDir::new("rp-api");
    let r = Region::open("rp", &ropts(d.path(), Compaction::Deferred)).unwrap();
    let (a, b, gone) = {
        let mut g = r.lock().unwrap();
        let a = g.insert(OwnerId(1), b"hello, optimistic world").unwrap();
        let b = g.insert_pod(OwnerId(1), &0x1122_3344_5566_7788u64).unwrap();
        let gone = g.insert(OwnerId(1), &[7; 9]).unwrap();
        g.remove(gone).unwrap();
        (a, b, gone)
    };
    let mut buf = [0u8; 64];
    assert_eq!(r.get_into(a, &mut buf).unwrap(), 23);
    assert_eq!(&buf[..23], b"hello, optimistic world");
    // Optimistic, not through the lock: one try suffices with no writer.
    assert_eq!(r.get_optimistic(a, &mut buf, 1).unwrap().unwrap(), 23);
    let e = r.get_into(a, &mut buf[..5]).unwrap_err();
    assert!(matches!(e, cachem::Error::BufferTooSmall { len: 23, capacity: 5, .. }), "{e}");
    assert_eq!(r.get_into(gone, &mut buf).unwrap_err().kind(), ErrorKind::Stale);
    assert_eq!(r.read(a, |v| v.to_vec()).unwrap(), b"hello, optimistic world");
    let big = r.lock().unwrap().insert(OwnerId(2), &[0x5a; 1000]).unwrap();
    assert_eq!(r.read(big, |v| v.to_vec()).unwrap(), vec![0x5a; 1000]);
    assert_eq!(r.read_pod::<u64>(b).unwrap(), 0x1122_3344_5566_7788);
    assert_eq!(r.read_pod::<u32>(b).unwrap_err().kind(), ErrorKind::PodMismatch);
    assert_eq!(r.read_pod::<[u64; 2]>(b).unwrap_err().kind(), ErrorKind::PodMismatch);
    // The same through the Cache facade.
    let c = cachem::Cache::open(&cachem::Config::named("rp").dir(d.path())).unwrap();
    assert_eq!(c.read_pod::<u64>(b).unwrap(), 0x1122_3344_5566_7788);
    assert_eq!(c.get_into(a, &mut buf).unwrap(), 23);
    // A change under way in this very thread: the optimistic path gives up
    // and the lock answers AlreadyLocked instead of waiting for itself.
    {
        let mut g = r.lock().unwrap();
        g.get_mut(a).unwrap()[0] = b'H';
        assert!(r.get_optimistic(a, &mut buf, 3).is_none());
        assert_eq!(r.get_into(a, &mut buf).unwrap_err().kind(), ErrorKind::AlreadyLocked);
        // A read-only guard leaves optimistic readers alone.
    }
    {
        let g = r.lock().unwrap();
        assert_eq!(g.get(a).unwrap()[0], b'H');
        assert_eq!(r.get_optimistic(a, &mut buf, 1).unwrap().unwrap(), 23);
    }
    assert_eq!(&buf[..5], b"Hello");
    // Light changes (an insert that does not compact, a Deferred remove
    // below the dead-byte bound) leave the version even: readers of other
    // records go on optimistically while the writer still holds the lock.
    {
        let mut g = r.lock().unwrap();
        let x = g.insert(OwnerId(3), b"light").unwrap();
        assert_eq!(r.get_optimistic(a, &mut buf, 1).unwrap().unwrap(), 23);
        assert_eq!(r.get_optimistic(x, &mut buf, 1).unwrap().unwrap(), 5);
        g.remove(x).unwrap();
        assert_eq!(r.get_optimistic(a, &mut buf, 1).unwrap().unwrap(), 23);
        assert_eq!(r.get_optimistic(x, &mut buf, 1).unwrap().unwrap_err().kind(), ErrorKind::Stale);
        // A compaction moves records: readers wait for the unlock.
        g.compact().unwrap();
        assert!(r.get_optimistic(a, &mut buf, 2).is_none());
    }
    assert_eq!(r.get_optimistic(a, &mut buf, 1).unwrap().unwrap(), 23);
}

/// Worker: takes the lock, starts changing a record, says so, and waits to
/// be killed.
#[test]
fn worker_hold_dirty() {
    if !is_worker() {
        return;
    }
    let r = attach(&std::env::var("CACHEM_TEST_DIR").unwrap());
    let id: RecordId = std::env::var("CACHEM_TEST_ID").unwrap().parse().unwrap();
    let mut g = r.lock().unwrap();
    g.get_mut(id).unwrap()[..4].copy_from_slice(b"XXXX");
    say("dirty");
    std::thread::sleep(Duration::from_secs(30));
}

#[test]
fn a_writer_killed_mid_change_costs_readers_one_recovery() {
    let d = TempDir::new("rp-kill");
    let r = Region::open("rp", &ropts(d.path(), Compaction::Eager)).unwrap();
    let id = r.lock().unwrap().insert(OwnerId(1), b"abcdefgh-record").unwrap();
    let mut w = spawn_worker(
        "worker_hold_dirty",
        &[("CACHEM_TEST_DIR", d.path().display().to_string()), ("CACHEM_TEST_ID", id.to_string())],
    );
    assert_eq!(read_line_timeout(&mut w, Duration::from_secs(30)), "dirty");
    let mut buf = [0u8; 32];
    // The version is odd while the writer works: no optimistic answer.
    assert!(r.get_optimistic(id, &mut buf, 5).is_none());
    sigkill(&mut w);
    let st = wait_timeout(&mut w, Duration::from_secs(30));
    assert_eq!(st.signal(), Some(9));
    // Still odd: the writer died before making it even.
    assert!(r.get_optimistic(id, &mut buf, 5).is_none());
    // get_into falls back to the lock, which recovers (EOWNERDEAD).
    let n = r.get_into(id, &mut buf).unwrap();
    assert_eq!(&buf[..n], b"XXXXefgh-record");
    assert_eq!(r.lock().unwrap().status().unwrap().counters.recoveries, 1);
    // The version is even again: optimistic at the first try.
    assert_eq!(r.get_optimistic(id, &mut buf, 1).unwrap().unwrap(), n);
}

// ----- nothing is remembered between two locks ---------------------------

/// Worker: attaches, inserts `CACHEM_TEST_N` records of 16 bytes (light
/// inserts: the version stays even) and prints their ids, then, once the
/// file `go` exists, removes the first one (a light Deferred remove) and
/// exits.
#[test]
fn worker_grow() {
    if !is_worker() {
        return;
    }
    let r = attach(&std::env::var("CACHEM_TEST_DIR").unwrap());
    let n: u32 = std::env::var("CACHEM_TEST_N").unwrap().parse().unwrap();
    let mut g = r.lock().unwrap();
    let ids: Vec<String> =
        (0..n).map(|i| g.insert(OwnerId(9), &[i as u8; 16]).unwrap().to_string()).collect();
    drop(g);
    say(ids.join(" "));
    // The parent checks the new records, then creates `go`.
    let go = Path::new(&std::env::var("CACHEM_TEST_DIR").unwrap()).join("go");
    let end = Instant::now() + Duration::from_secs(30);
    while !go.exists() && Instant::now() < end {
        std::thread::sleep(Duration::from_millis(2));
    }
    r.lock().unwrap().remove(ids[0].parse().unwrap()).unwrap();
}

/// Another process grows the table and the block section between two locks
/// of this one (without changing the version: light inserts), then removes
/// a record: both the lock path and the optimistic path see the new
/// geometry at once (records in slots past the old table, and past the old
/// end of the block section), and the removal.
#[test]
fn a_geometry_change_by_another_process_is_seen_by_the_next_lock() {
    let d = TempDir::new("rp-geom");
    let r = Region::open("rp", &ropts(d.path(), Compaction::Deferred)).unwrap();
    let first = r.lock().unwrap().insert(OwnerId(1), b"first").unwrap();
    let before = r.lock().unwrap().status().unwrap();
    let mut buf = [0u8; 32];
    assert_eq!(r.get_into(first, &mut buf).unwrap(), 5);
    let mut w = spawn_worker(
        "worker_grow",
        &[("CACHEM_TEST_DIR", d.path().display().to_string()), ("CACHEM_TEST_N", "200".into())],
    );
    let line = read_line_timeout(&mut w, Duration::from_secs(30));
    let ids: Vec<RecordId> = line.split(' ').map(|s| s.parse().unwrap()).collect();
    assert_eq!(ids.len(), 200);
    {
        let g = r.lock().unwrap();
        let now = g.status().unwrap();
        assert!(now.slots >= before.slots + 200 && now.o_fr > before.o_fr, "{before:?} -> {now:?}");
        for (i, id) in ids.iter().enumerate() {
            assert_eq!(g.get(*id).unwrap(), &[i as u8; 16], "locked get of {id}");
        }
    }
    // The version did not change, the geometry did: the optimistic path
    // reads it afresh too.
    let last = *ids.last().unwrap();
    assert_eq!(r.get_optimistic(last, &mut buf, 1).unwrap().unwrap(), 16);
    assert_eq!(buf[..16], [199u8; 16]);
    std::fs::write(d.path().join("go"), b"").unwrap();
    assert!(wait_timeout(&mut w, Duration::from_secs(30)).success());
    assert_eq!(r.lock().unwrap().try_get(ids[0]).unwrap_err().kind(), ErrorKind::Stale);
    assert_eq!(r.get_into(ids[0], &mut buf).unwrap_err().kind(), ErrorKind::Stale);
    assert_eq!(r.get_into(ids[1], &mut buf).unwrap(), 16);
}

/// Damage written into the region file between two locks of a process
/// that already validated the region (at open and at every earlier lock)
/// is reported as `Corrupt` naming the field, by the lock path and by
/// `get_into` (whose optimistic path hands such a snapshot to the lock),
/// never read through; with the bytes restored, reads work again. A
/// recovery flag set between two locks sends the next lock through
/// recovery.
#[test]
fn damage_between_two_locks_is_reported_not_read_through() {
    use cachem::format::{bptr_offset, Header, FLAG_RECOVERY_REQUIRED};
    use std::mem::offset_of;
    use std::os::unix::fs::FileExt;
    let d = TempDir::new("rp-damage");
    let r = Region::open("rp", &ropts(d.path(), Compaction::Deferred)).unwrap();
    let ids: Vec<RecordId> = {
        let mut g = r.lock().unwrap();
        (0..10u8).map(|i| g.insert(OwnerId(1), &[i; 24]).unwrap()).collect()
    };
    let id = ids[3];
    let file = std::fs::OpenOptions::new().read(true).write(true).open(d.path().join("rp")).unwrap();
    let read_u64 = |off: u64| {
        let mut b = [0u8; 8];
        file.read_exact_at(&mut b, off).unwrap();
        u64::from_ne_bytes(b)
    };
    let size = r.size();
    let entry = bptr_offset(size, id.slot());
    let o_beg = read_u64(entry) as u32 as u64;
    let o_fr = read_u64(offset_of!(Header, o_fr) as u64);
    let o_bptop = read_u64(offset_of!(Header, o_bptop) as u64);
    let n_word = read_u64(offset_of!(Header, n_bptr) as u64);
    let flags_at = offset_of!(Header, flags) as u64;
    let flags_word = read_u64(flags_at & !7);
    let flags_shift = 8 * (flags_at % 8) as u32;
    let block = read_u64(o_beg);
    // (offset, damaged word, field named in the error)
    let damage: [(u64, u64, &str); 6] = [
        (offset_of!(Header, o_fr) as u64, size + 8, "o_fr"),
        (offset_of!(Header, o_fr) as u64, o_fr + 4, "o_fr"),
        (offset_of!(Header, o_bptop) as u64, o_fr - 8, "o_bptop"),
        (offset_of!(Header, n_bptr) as u64, n_word + 1, "n_bptr"),
        (entry, (read_u64(entry) & !0xffff_ffff) | o_fr, "bptr.o_beg"),
        (o_beg, block ^ 1, "block.slot"),
    ];
    let mut buf = [0u8; 64];
    for (off, bad, field) in damage {
        let good = read_u64(off);
        // A lock and a read just before: whatever they validated is stale.
        assert_eq!(r.lock().unwrap().get(id).unwrap(), &[3u8; 24]);
        assert_eq!(r.get_into(id, &mut buf).unwrap(), 24);
        file.write_all_at(&bad.to_ne_bytes(), off).unwrap();
        let e = r.lock().unwrap().try_get(id).unwrap_err();
        assert!(matches!(&e, cachem::Error::Corrupt { field: f, .. } if *f == field), "{field}: locked {e}");
        let e = r.get_into(id, &mut buf).unwrap_err();
        assert!(
            matches!(&e, cachem::Error::Corrupt { field: f, .. } if *f == field),
            "{field}: get_into {e}"
        );
        file.write_all_at(&good.to_ne_bytes(), off).unwrap();
        assert_eq!(r.get_into(id, &mut buf).unwrap(), 24);
        assert_eq!(&buf[..24], &[3u8; 24]);
    }
    assert_eq!(read_u64(offset_of!(Header, o_bptop) as u64), o_bptop);
    // The recovery flag set behind the process's back: the next lock
    // recovers (and clears it), reads go on.
    let flagged = flags_word | ((FLAG_RECOVERY_REQUIRED as u64) << flags_shift);
    file.write_all_at(&flagged.to_ne_bytes(), flags_at & !7).unwrap();
    assert!(r.get_optimistic(id, &mut buf, 1).is_none(), "the flag sends readers to the lock");
    let g = r.lock().unwrap();
    assert!(g.recovered());
    assert_eq!(g.get(id).unwrap(), &[3u8; 24]);
    drop(g);
    assert!(!r.lock().unwrap().recovered());
    assert_eq!(r.get_optimistic(id, &mut buf, 1).unwrap().unwrap(), 24);
    r.lock().unwrap().verify().unwrap();
}

// ----- torture (failpoints) ------------------------------------------------

/// A worker's end: the stop file exists, or its directory is gone (the
/// parent failed), or two minutes passed. Workers never outlive a failed run.
fn should_stop(dir: &str, started: Instant) -> bool {
    let d = Path::new(dir);
    d.join("stop").exists() || !d.exists() || started.elapsed() > Duration::from_secs(120)
}

/// Reader process: until `stop` exists, reads random known records
/// optimistically; refreshes the known ids under the lock now and then.
/// Reports `ok stale optimistic locked`; panics (exit code 101) on a torn
/// value.
#[test]
fn worker_reader() {
    if !is_worker() {
        return;
    }
    let dir = std::env::var("CACHEM_TEST_DIR").unwrap();
    let started = Instant::now();
    let r = attach(&dir);
    let mut rng = Rng::seeded();
    let mut ids: Vec<RecordId> = Vec::new();
    let mut buf = vec![0u8; 4096];
    let (mut ok, mut stale, mut optimistic, mut locked) = (0u64, 0u64, 0u64, 0u64);
    let mut n = 0u64;
    while n % 256 != 0 || !should_stop(&dir, started) {
        if n % 512 == 0 || ids.is_empty() {
            ids = r.lock().unwrap().iter().map(|(m, _)| m.id).collect();
            if ids.is_empty() {
                std::thread::sleep(Duration::from_millis(1));
                n += 1;
                continue;
            }
        }
        n += 1;
        let id = ids[rng.below(ids.len() as u64) as usize];
        let r = match r.get_optimistic(id, &mut buf, cachem::optimistic::TRIES) {
            Some(r) => {
                optimistic += 1;
                r
            }
            None => {
                locked += 1;
                r.get_locked(id, &mut buf)
            }
        };
        match r {
            Ok(len) => {
                assert!(record_ok(&buf[..len]), "torn or foreign value for {id}: {:?}", &buf[..len]);
                ok += 1;
            }
            Err(e) if e.kind() == ErrorKind::Stale => stale += 1,
            Err(e) => panic!("read of {id}: {e}"),
        }
    }
    say(format!("{ok} {stale} {optimistic} {locked}"));
}

/// Writer process: random inserts, in-place updates, removes and
/// compactions of self-checking records, until `stop` exists (or a fault
/// point kills it).
#[test]
fn worker_writer() {
    if !is_worker() {
        return;
    }
    let dir = std::env::var("CACHEM_TEST_DIR").unwrap();
    let started = Instant::now();
    let r = attach(&dir);
    let mut rng = Rng::seeded();
    let pid = std::process::id();
    let mut seq = 0u32;
    while !should_stop(&dir, started) {
        let mut g = r.lock().unwrap();
        let ids: Vec<(RecordId, u32)> = g.iter().map(|(m, _)| (m.id, m.len)).collect();
        for _ in 0..1 {
            seq += 1;
            // One change per lock, so readers meet light changes (which
            // leave the version even) on their own. Mostly inserts, updates
            // in place and removes; few explicit compactions, so that most
            // Deferred compactions are the ones a remove starts when it
            // passes the dead-byte bound.
            let op = rng.below(50);
            if (op < 20 && ids.len() < 1500) || ids.is_empty() {
                let rec = make_record(pid, seq, 16 + rng.below(600) as usize, &mut rng);
                match g.insert(OwnerId(1), &rec) {
                    Ok(_) => {}
                    Err(e) if e.kind() == ErrorKind::Full => {}
                    Err(e) => panic!("insert: {e}"),
                }
            } else if op < 32 {
                let (id, len) = ids[rng.below(ids.len() as u64) as usize];
                let rec = make_record(pid, seq, len as usize, &mut rng);
                if let Some(b) = g.get_mut(id) {
                    if b.len() == rec.len() {
                        b.copy_from_slice(&rec);
                    }
                }
            } else if op < 49 {
                let (id, _) = ids[rng.below(ids.len() as u64) as usize];
                match g.remove(id) {
                    Ok(()) => {}
                    Err(e) if e.kind() == ErrorKind::Stale => {}
                    Err(e) => panic!("remove: {e}"),
                }
            } else if rng.below(20) == 0 {
                g.compact().unwrap();
            }
        }
        drop(g);
        std::thread::yield_now();
    }
}

#[cfg(feature = "failpoints")]
#[test]
fn readers_never_see_torn_values_while_writers_churn_and_die() {
    use cachem::sys::failpoint::POINTS;
    let secs: u64 = std::env::var("CACHEM_READPATH_SECS").ok().and_then(|s| s.parse().ok()).unwrap_or(4);
    let mut rng = Rng::seeded();
    let (mut total_ok, mut total_opt, mut total_locked, mut kills) = (0u64, 0u64, 0u64, 0u32);
    for policy in [Compaction::Eager, Compaction::Deferred] {
        let d = TempDir::new("rp-torture");
        let dir = d.path().display().to_string();
        let r = Region::open("rp", &ropts(d.path(), policy)).unwrap();
        {
            let mut g = r.lock().unwrap();
            for i in 0..400 {
                let rec = make_record(0, i, 16 + rng.below(300) as usize, &mut rng);
                g.insert(OwnerId(1), &rec).unwrap();
            }
        }
        let env = |fp: Option<String>| {
            let mut e = vec![("CACHEM_TEST_DIR", dir.clone())];
            if let Some(fp) = fp {
                e.push(("CACHEM_FAILPOINT", fp));
            }
            e
        };
        let mut readers: Vec<_> = (0..3).map(|_| spawn_worker("worker_reader", &env(None))).collect();
        let spawn_writer = |rng: &mut Rng| {
            let p = POINTS[rng.below(POINTS.len() as u64) as usize];
            spawn_worker("worker_writer", &env(Some(format!("{p}:{}", 1 + rng.below(40)))))
        };
        let mut writers: Vec<_> = (0..2).map(|_| spawn_writer(&mut rng)).collect();
        let end = Instant::now() + Duration::from_secs(secs);
        while Instant::now() < end {
            std::thread::sleep(Duration::from_millis(20));
            for w in writers.iter_mut() {
                if rng.below(25) == 0 {
                    sigkill(w); // a kill at a random time, lock held or not
                }
                if let Some(st) = w.try_wait().unwrap() {
                    assert_eq!(st.signal(), Some(9), "a writer failed: {st:?}");
                    kills += 1;
                    *w = spawn_writer(&mut rng);
                }
            }
            for rd in readers.iter_mut() {
                if let Some(st) = rd.try_wait().unwrap() {
                    panic!("a reader exited early: {st:?}");
                }
            }
        }
        std::fs::write(d.path().join("stop"), b"").unwrap();
        for mut w in writers {
            let st = wait_timeout(&mut w, Duration::from_secs(60));
            assert!(st.success() || st.signal() == Some(9), "writer: {st:?}");
        }
        for mut rd in readers {
            let st = wait_timeout(&mut rd, Duration::from_secs(60));
            assert!(st.success(), "a reader failed (torn value?): {st:?}");
            let line = stdout_of(&mut rd);
            let v: Vec<u64> = line.split_whitespace().map(|x| x.parse().unwrap()).collect();
            assert_eq!(v.len(), 4, "reader report {line:?}");
            total_ok += v[0];
            total_opt += v[2];
            total_locked += v[3];
        }
        let g = r.lock().unwrap();
        g.verify().unwrap();
        assert!(g.iter().all(|(_, b)| record_ok(b)));
        eprintln!(
            "{policy:?}: {} records left, {} recoveries",
            g.iter().count(),
            g.status().unwrap().counters.recoveries
        );
    }
    eprintln!("reads ok {total_ok}, optimistic {total_opt}, locked {total_locked}, writer kills {kills}");
    assert!(kills >= 4, "writers must die during the run ({kills})");
    assert!(total_ok > 1000, "readers must get values ({total_ok})");
    assert!(
        total_opt > total_locked,
        "the optimistic path is the common one ({total_opt} vs {total_locked})"
    );
}

#[test]
fn a_reap_or_purge_that_removes_nothing_leaves_readers_alone() {
    // Eager: every remove compacts, so any removal makes the version odd.
    let d = TempDir::new("rp-reap");
    let r = Region::open("rp", &ropts(d.path(), Compaction::Eager)).unwrap();
    let (a, mine) = {
        let mut g = r.lock().unwrap();
        (g.insert(OwnerId(1), b"kept record").unwrap(), g.insert(OwnerId(5), b"mine").unwrap())
    };
    let mut buf = [0u8; 32];
    let me = std::process::id();
    {
        let mut g = r.lock().unwrap();
        // Nothing to remove: the guard never turns the version odd.
        assert_eq!(g.reap().unwrap().records, 0);
        assert_eq!(g.purge(OwnerId(5), me + 1).unwrap(), 0);
        assert_eq!(g.purge_process().unwrap().records, 0);
        assert_eq!(g.retain(|_, _| true).unwrap().records, 0);
        assert_eq!(g.remove_of_owner(OwnerId(9), |_, _| true).unwrap().records, 0);
        assert_eq!(r.get_optimistic(a, &mut buf, 1).unwrap().unwrap(), 11);
        // A purge that removes compacts: readers wait for the unlock.
        assert_eq!(g.purge(OwnerId(5), me).unwrap(), 1);
        assert!(r.get_optimistic(a, &mut buf, 2).is_none());
    }
    assert_eq!(r.get_optimistic(a, &mut buf, 1).unwrap().unwrap(), 11);
    assert_eq!(r.get_optimistic(mine, &mut buf, 1).unwrap().unwrap_err().kind(), ErrorKind::Stale);
}

//! The owner index reviews' reproductions: replace loops, iterations
//! across recovery and batch crashes, random link garbage and random
//! iteration with removals; none may skip, loop forever or panic.

use super::*;
use crate::sys::failpoint::{sim, POINTS};

/// "Remove, insert a replacement, ask for the next after the removed id":
/// the insert takes the freed slot (free list is LIFO / table regrows), so
/// resume() sees a live entry with another generation and restarts from the
/// front, where the replacement now is. The loop never ends.
#[test]
fn replace_loop_visits_each_original_once_then_its_replacements() {
    for policy in [Compaction::Deferred, Compaction::Eager] {
        let mut img = Img::with(1 << 16, policy);
        let mut l = img.l();
        for i in 0..5u32 {
            l.insert(A, tag(1), &i.to_ne_bytes()).unwrap();
        }
        // Something of another owner above, so the table top is not A's.
        l.insert(O, tag(1), b"other").unwrap();
        // The replacements join the end of the chain (and the insert takes
        // the removed record's slot): the loop stops at the first one.
        let (mut cur, mut steps, mut first_new) = (None, 0, None);
        while let Some(id) = l.next_of_owner(A, cur) {
            if Some(id) == first_new {
                break;
            }
            steps += 1;
            assert!(steps <= 5, "{policy:?}: replace loop visits {steps} records of 5");
            assert_ne!(l.get(id).unwrap(), b"replacement");
            l.remove(id).unwrap();
            let n = l.insert(A, tag(1), b"replacement").unwrap();
            assert_eq!(n.slot(), id.slot());
            first_new.get_or_insert(n);
            cur = Some(id);
        }
        assert_eq!(steps, 5, "{policy:?}: every original once, then the first replacement");
        l.verify().unwrap();
    }
}

/// An iteration that spans a recovery (any process died holding the lock
/// between two calls) skips records that were there throughout.
#[test]
fn iteration_across_recovery_does_not_skip_live_after() {
    let mut img = Img::new(1 << 16);
    let mut l = img.l();
    let ids: Vec<_> = (0..5u8).map(|i| l.insert(A, tag(1), &[i]).unwrap()).collect();
    l.insert(O, tag(1), b"o").unwrap();
    let first = l.next_of_owner(A, None).unwrap();
    assert_eq!(first, ids[0]);
    // Another process dies holding the lock: the next locker recovers.
    l.mark_recovery_required();
    l.recover().unwrap();
    let mut seen = vec![first];
    let mut cur = Some(first);
    while let Some(id) = l.next_of_owner(A, cur) {
        assert!(seen.len() < 10);
        seen.push(id);
        cur = Some(id);
    }
    seen.sort();
    assert_eq!(seen, ids, "every record there throughout is visited");
}

#[test]
fn iteration_across_recovery_does_not_skip_removed_after() {
    let mut img = Img::new(1 << 16);
    let mut l = img.l();
    let ids: Vec<_> = (0..5u8).map(|i| l.insert(A, tag(1), &[i]).unwrap()).collect();
    l.insert(O, tag(1), b"o").unwrap();
    // Visit 0, 1; remove 1 (note in entry 1: successor 2).
    assert_eq!(l.next_of_owner(A, None), Some(ids[0]));
    assert_eq!(l.next_of_owner(A, Some(ids[0])), Some(ids[1]));
    l.remove(ids[1]).unwrap();
    // Recovery keeps the chains' order, so entry 1's note still says where
    // the walk stood (the header's copy is cleared).
    l.mark_recovery_required();
    l.recover().unwrap();
    let mut seen = vec![ids[0], ids[1]];
    let mut cur = Some(ids[1]);
    while let Some(id) = l.next_of_owner(A, cur) {
        assert!(seen.len() < 12);
        seen.push(id);
        cur = Some(id);
    }
    assert_eq!(seen, ids, "each record there throughout, once, in order");
}

/// A record of another owner of the same bucket gives its place in the
/// shared chain (like mod_cachem's scan went on from any index).
#[test]
fn after_of_same_bucket_other_owner_gives_its_place() {
    let mut img = Img::new(8192);
    let mut l = img.l();
    let old = l.insert(A, tag(1), b"old").unwrap();
    let b = l.insert(A2, tag(1), b"b").unwrap();
    let new = l.insert(A, tag(1), b"new").unwrap();
    assert_eq!(l.next_of_owner(A, None), Some(old));
    assert_eq!(l.next_of_owner(A, Some(b)), Some(new), "the records newer than b");
}

/// Random link/note corruption: walks and removal loops never panic and end.
#[test]
fn random_link_corruption_never_panics_or_hangs() {
    let mut seed = 0x9e37_79b9_7f4a_7c15u64;
    let mut rnd = move || {
        seed ^= seed << 13;
        seed ^= seed >> 7;
        seed ^= seed << 17;
        seed
    };
    for round in 0..3000u32 {
        let policy = if round % 2 == 0 { Compaction::Eager } else { Compaction::Deferred };
        let mut img = Img::with(1 << 14, policy);
        let mut l = img.l();
        let mut ids = vec![];
        for i in 0..24u32 {
            ids.push(l.insert(OwnerId([7, 29, 8][i as usize % 3]), tag(1), &i.to_ne_bytes()).unwrap());
        }
        for k in 0..(rnd() % 6) {
            let _ = l.remove(ids[(k as usize * 5 + 3) % ids.len()]);
        }
        let n = img.l().status().unwrap().slots;
        for _ in 0..(1 + rnd() % 6) {
            let r = rnd();
            let small = |x: u64| match x % 4 {
                0 => 0,
                1 => u32::MAX,
                2 => (x >> 8) as u32,
                _ => (x >> 8) as u32 % (n + 2),
            };
            match r % 6 {
                0 => img.hdr().owner_heads[(r >> 3) as usize % OWNER_BUCKETS] = small(r >> 8),
                1 => img.bptr((r >> 3) as u32 % n.max(1)).next = small(r >> 8),
                2 => img.bptr((r >> 3) as u32 % n.max(1)).prev = small(r >> 8),
                3 => {
                    img.hdr().last_removed = RecordId::new(
                        (r >> 8) as u32 % (n + 2),
                        ids[(r >> 40) as usize % ids.len()].generation(),
                    )
                    .to_u64()
                }
                4 => img.hdr().last_removed_next = ids[(r >> 8) as usize % ids.len()].to_u64(),
                _ => {
                    let e = img.bptr((r >> 3) as u32 % n.max(1));
                    e.start_time = ids[(r >> 16) as usize % ids.len()].to_u64();
                }
            }
        }
        let mut l = img.l();
        for o in [7u32, 29, 8] {
            let v = ids_of(&l, OwnerId(o));
            let mut s = v.clone();
            s.sort();
            s.dedup();
            assert_eq!(s.len(), v.len(), "round {round}: dup in {v:?}");
            let _ = l.iter_owner_meta(OwnerId(o)).count();
        }
        // Removal loops on the corrupt image: bounded, no panic.
        for (o, ask_first) in [(7u32, false), (29, true)] {
            let mut cur = None;
            let mut k = 0;
            while let Some(id) = l.next_of_owner(OwnerId(o), cur) {
                k += 1;
                assert!(k < 200, "round {round}: removal loop does not end");
                let nx = ask_first.then(|| l.next_of_owner(OwnerId(o), Some(id)));
                let _ = l.remove(id);
                cur = match nx {
                    Some(n) => {
                        if n.is_none() {
                            break;
                        }
                        n
                    }
                    None => Some(id),
                };
            }
        }
        let _ = l.purge(OwnerId(8), 1);
        let _ = l.retain(|m, _| m.len % 2 == 0);
        let _ = l.insert(OwnerId(7), tag(1), b"x");
    }
}

/// Random iteration with removes (single, batch), inserts and compactions in
/// between: no record present throughout (and never removed) is skipped;
/// counts the restarts (duplicates).
#[test]
fn random_iteration_never_skips() {
    let mut seed = 0x1234_5678_9abc_def1u64;
    let mut rnd = move || {
        seed ^= seed << 13;
        seed ^= seed >> 7;
        seed ^= seed << 17;
        seed
    };
    let mut dups = 0;
    let mut fails = vec![];
    for round in 0..2000u32 {
        let policy = if round % 2 == 0 { Compaction::Eager } else { Compaction::Deferred };
        let mut img = Img::with(1 << 15, policy);
        let mut l = img.l();
        let mut all = vec![];
        for i in 0..30u32 {
            let owner = [A, O, A2][rnd() as usize % 3];
            let id = l.insert(owner, tag(1 + (rnd() % 3) as u32), &i.to_ne_bytes()).unwrap();
            if owner == A {
                all.push(id);
            }
            if rnd() % 4 == 0 {
                let _ = l.remove(id);
                all.retain(|x| *x != id);
            }
        }
        let mut removed: Vec<RecordId> = vec![];
        let mut seen: Vec<RecordId> = vec![];
        let mut cur = None;
        let mut k = 0;
        while let Some(id) = l.next_of_owner(A, cur) {
            k += 1;
            if k > 500 {
                fails.push(format!("round {round}: no end"));
                break;
            }
            if seen.contains(&id) {
                dups += 1;
            }
            seen.push(id);
            let mut next_pre = None;
            match rnd() % 7 {
                0 => {
                    l.remove(id).unwrap();
                    removed.push(id);
                }
                1 => {
                    next_pre = Some(l.next_of_owner(A, Some(id)));
                    l.remove(id).unwrap();
                    removed.push(id);
                }
                2 => {
                    let _ = l.compact_now();
                }
                3 => {
                    let pid = 1 + (rnd() % 3) as u32;
                    let before: Vec<_> = all.iter().filter(|x| l.get(**x).is_some()).copied().collect();
                    l.purge(A, pid).unwrap();
                    for x in before {
                        if l.get(x).is_none() {
                            removed.push(x);
                        }
                    }
                }
                4 => {
                    let o = [A, O, A2][rnd() as usize % 3];
                    let _ = l.insert(o, tag(1), b"new");
                }
                5 => {
                    let victims: Vec<_> =
                        l.iter().filter(|(m, _)| m.owner == O).map(|(m, _)| m.id).take(1).collect();
                    for v in victims {
                        l.remove(v).unwrap();
                    }
                }
                _ => {}
            }
            cur = Some(id);
            if let Some(n) = next_pre {
                if n.is_none() {
                    break;
                }
            }
        }
        for id in &all {
            if !removed.contains(id) && !seen.contains(id) {
                fails.push(format!("round {round} {policy:?}: skipped {id}"));
            }
        }
    }
    eprintln!("dups: {dups}, fails: {}", fails.len());
    assert!(fails.is_empty(), "{:?}", &fails[..fails.len().min(5)]);
}

// ----- owner index: a second review's reproductions -----------------------

/// A batch remove of two ADJACENT chain entries killed after the first
/// unlink: recovery must keep the survivors in insertion order.
#[test]
fn batch_adjacent_victims_crash_keeps_order() {
    for policy in [Compaction::Eager, Compaction::Deferred] {
        for (point, nth) in [("chain.mid_unlink", 2), ("chain.after_unlink", 1), ("chain.after_unlink", 2)] {
            let mut img = Img::with(1 << 16, policy);
            let mut l = img.l();
            let ids: Vec<_> = (0..6u8).map(|i| l.insert(A, tag(1), &[i]).unwrap()).collect();
            l.insert(O, tag(1), b"o").unwrap();
            sim::arm(point, nth);
            let res = std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| {
                l.remove_of_owner(A, |_, d| d[0] == 2 || d[0] == 3)
            }));
            assert!(!sim::disarm() && res.is_err());
            let mut l = img.l();
            l.recover().unwrap();
            l.verify().unwrap();
            // Victims removed before the kill are gone, the rest kept their
            // places.
            let want: Vec<_> = ids.iter().filter(|id| l.get(**id).is_some()).copied().collect();
            assert!(want.len() >= 5 && [0, 1, 4, 5].iter().all(|&i| want.contains(&ids[i])));
            assert_eq!(ids_of(&l, A), want, "{policy:?} {point}#{nth}: order after recovery");
        }
    }
}

/// Same, at the tail: the last two entries (slot order = chain order).
#[test]
fn batch_adjacent_tail_victims_crash_keeps_order() {
    let mut img = Img::new(1 << 16);
    let mut l = img.l();
    let ids: Vec<_> = (0..4u8).map(|i| l.insert(A, tag(1), &[i]).unwrap()).collect();
    l.insert(O, tag(1), b"o").unwrap();
    sim::arm("chain.after_unlink", 2);
    let res =
        std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| l.remove_of_owner(A, |_, d| d[0] >= 2)));
    assert!(!sim::disarm() && res.is_err());
    let mut l = img.l();
    l.recover().unwrap();
    l.verify().unwrap();
    let want: Vec<_> = ids.iter().filter(|id| l.get(**id).is_some()).copied().collect();
    assert_eq!(ids_of(&l, A), want);
}

#[test]
fn iteration_across_batch_crash_goes_on() {
    let mut img = Img::new(1 << 16);
    let mut l = img.l();
    let ids: Vec<_> = (0..6u8).map(|i| l.insert(A, tag(1), &[i]).unwrap()).collect();
    l.insert(O, tag(1), b"o").unwrap();
    sim::arm("chain.mid_unlink", 2);
    let res = std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| {
        l.remove_of_owner(A, |_, d| d[0] == 2 || d[0] == 3)
    }));
    assert!(!sim::disarm() && res.is_err());
    let mut l = img.l();
    l.recover().unwrap();
    // The kill came in the second victim's unlink: the first is removed,
    // the second kept. A reader that had reached the first goes on.
    assert!(l.get(ids[2]).is_none() && l.get(ids[3]).is_some());
    assert_eq!(l.next_of_owner(A, Some(ids[2])), Some(ids[3]), "records 3,4,5 skipped");
    assert_eq!(ids_of(&l, A), [0, 1, 3, 4, 5].map(|i| ids[i]));
}

/// Random link/note garbage: no operation panics (debug: overflow checks),
/// every walk ends.
#[test]
fn random_chain_garbage_never_panics() {
    let mut seed = 0x9E37_79B9_7F4A_7C15u64;
    let mut rnd = move || {
        seed ^= seed << 13;
        seed ^= seed >> 7;
        seed ^= seed << 17;
        seed
    };
    for round in 0..3000 {
        let policy = if round % 2 == 0 { Compaction::Eager } else { Compaction::Deferred };
        let mut img = Img::with(1 << 14, policy);
        let mut l = img.l();
        let mut ids = vec![];
        for i in 0..30u32 {
            ids.push(l.insert(OwnerId(7 + 22 * (i % 3)), tag(i % 2), &[i as u8; 5]).unwrap());
        }
        for k in 0..6 {
            let _ = l.remove(ids[(k * 5 + round) % 30]);
        }
        let n = l.status().unwrap().slots;
        // Garbage: small values mostly, sometimes anything.
        let small = |r: u64| if r % 4 == 0 { r as u32 } else { (r % (n as u64 + 3)) as u32 };
        for _ in 0..(1 + rnd() % 6) {
            let r = rnd();
            let slot = (r % n as u64) as u32;
            match (r >> 32) % 7 {
                0 => img.bptr(slot).next = small(rnd()),
                1 => img.bptr(slot).prev = small(rnd()),
                2 => img.hdr().owner_heads[bucket_of(7)] = small(rnd()),
                3 => img.bptr(slot).start_time = rnd() % 2 * (((rnd() % 40) << 32) | (rnd() % 40)),
                4 => img.bptr(slot).prev = REMOVED_NOTE,
                5 => img.hdr().last_removed_next = ((rnd() % 64) << 32) | (rnd() % 40),
                _ => img.bptr(slot).owner = 7 + 22 * (rnd() % 3) as u32,
            }
        }
        let mut l = img.l();
        for o in [7u32, 29, 51] {
            for start in ids.iter().map(|&i| Some(i)).chain([None]) {
                let mut cur = start;
                let mut k = 0;
                while let Some(id) = l.next_of_owner(OwnerId(o), cur) {
                    cur = Some(id);
                    k += 1;
                    assert!(k < 200, "round {round}: next_of_owner loop from {start:?} does not end");
                }
            }
            assert!(l.iter_owner(OwnerId(o)).take(1000).count() < 1000);
        }
        let _ = l.verify();
        let r = rnd() as usize;
        match r % 4 {
            0 => {
                let _ = l.remove(ids[r / 4 % 30]);
            }
            1 => {
                let _ = l.purge(OwnerId(7), 1);
            }
            2 => {
                let _ = l.insert(OwnerId(29), tag(1), b"x");
            }
            _ => {
                let _ = l.retain(|m, _| m.pid == 0);
            }
        }
        let _ = l.verify();
        l.mark_recovery_required();
        if l.recover().is_ok() {
            l.verify().unwrap();
        }
    }
}

/// Every fault point, every op on A's chain: after recovery the survivors
/// of A keep their order (a new record, if the insert survived, is last).
#[test]
fn every_fault_point_keeps_chain_order() {
    type Op = Box<dyn Fn(&mut Layout<'_>, &[RecordId]) -> Result<()>>;
    let ops: Vec<(&str, Op)> = vec![
        ("insert", Box::new(|l, _| l.insert(A, tag(3), &[9; 20]).map(|_| ()))),
        ("remove-head", Box::new(|l, ids| l.remove(ids[0]))),
        ("remove-tail", Box::new(|l, ids| l.remove(ids[ids.len() - 1]))),
        ("remove-mid", Box::new(|l, ids| l.remove(ids[3]))),
        (
            "purge-adjacent",
            Box::new(|l, _| l.remove_of_owner(A, |_, d| d[0] % 4 == 1 || d[0] % 4 == 2).map(|_| ())),
        ),
        ("retain-adjacent", Box::new(|l, _| l.retain(|m, d| m.owner != A || d[0] < 5).map(|_| ()))),
        ("purge-all", Box::new(|l, _| l.purge(A, 1).map(|_| ()))),
    ];
    let mut bad = vec![];
    for policy in [Compaction::Eager, Compaction::Deferred] {
        for (name, op) in &ops {
            for point in POINTS {
                for nth in 1..=4 {
                    let mut img = Img::with(1 << 16, policy);
                    let mut l = img.l();
                    let mut ids = vec![];
                    for i in 0..10u8 {
                        ids.push(l.insert(A, tag(1), &[i]).unwrap());
                        l.insert(O, tag(1), &[i]).unwrap();
                    }
                    // Break slot order: free two and refill.
                    l.remove(ids[1]).unwrap();
                    l.remove(ids[4]).unwrap();
                    ids.remove(4);
                    ids.remove(1);
                    for i in 10..12u8 {
                        ids.push(l.insert(A, tag(1), &[i]).unwrap());
                    }
                    assert_eq!(ids_of(&l, A), ids);
                    sim::arm(point, nth);
                    let res = std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| op(&mut l, &ids)));
                    if sim::disarm() {
                        continue;
                    }
                    assert!(res.is_err());
                    let mut l = img.l();
                    l.recover().unwrap();
                    l.verify().unwrap();
                    let got = ids_of(&l, A);
                    let old: Vec<_> = got.iter().filter(|id| ids.contains(id)).copied().collect();
                    let want: Vec<_> = ids.iter().filter(|id| got.contains(id)).copied().collect();
                    let new_last = got.iter().skip(old.len()).all(|id| !ids.contains(id));
                    if old != want || !new_last {
                        bad.push(format!("{policy:?} {name} {point}#{nth}: {got:?}"));
                    }
                }
            }
        }
    }
    assert!(bad.is_empty(), "{} cases out of order:\n{}", bad.len(), bad.join("\n"));
}

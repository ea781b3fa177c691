//! Tests of the `Deferred` policy: dead blocks, their count, the
//! compaction trigger and the "light" predicates of the optimistic readers.

use super::*;
use crate::sys::failpoint::sim;

#[test]
fn deferred_remove_marks_the_block_dead_and_counts_it() {
    let mut img = Img::with(65536, Compaction::Deferred);
    let mut l = img.l();
    let ids: Vec<_> = (0..20u8).map(|i| l.insert(A, tag(1), &[i; 24]).unwrap()).collect();
    let used = l.verify().unwrap().used_bytes;
    l.remove(ids[3]).unwrap();
    l.remove(ids[9]).unwrap();
    let v = l.verify().unwrap();
    // Nothing moved: the blocks are dead in place, the ids stale at once.
    assert_eq!((v.records, v.used_bytes, v.dead_bytes, v.dead_blocks), (18, used, 64, 2));
    assert_eq!(l.status().unwrap().counters.bytes_moved, 0);
    assert!(l.get(ids[3]).is_none() && matches!(l.remove(ids[9]), Err(Error::Stale(_))));
    for (i, id) in ids.iter().enumerate() {
        if i != 3 && i != 9 {
            assert_eq!(l.get(*id).unwrap(), &[i as u8; 24]);
        }
    }
    // The dead block is marked, and the lowest one is remembered.
    let o3 = H + 3 * 32;
    let h = *l.hdr();
    assert_eq!((h.dead_bytes, h.dead_lo), (64, o3));
    let bh: BlockHeader = *bytemuck::from_bytes(&l.buf[o3 as usize..o3 as usize + 8]);
    assert_eq!(bh, BlockHeader { slot: DEAD_SLOT, len: 24 });
    // A slot freed by a deferred remove is reused at once; its block is new.
    let n = l.insert(O, tag(2), b"new").unwrap();
    assert_eq!(n.slot(), 9);
    assert_eq!(l.get(n).unwrap(), b"new");
    // On demand: one compaction closes every hole.
    let moved = l.compact_now().unwrap();
    let v = l.verify().unwrap();
    assert_eq!((v.records, v.used_bytes, v.dead_bytes), (19, used - 64 + 16, 0));
    // Blocks 0..3 stay; 4..9 and 10..20 and the new block move down.
    assert_eq!(moved, (20 - 3 - 2) * 32 + 16);
    let c = l.status().unwrap().counters;
    assert_eq!((c.compactions, c.largest_compaction, c.removes), (1, moved, 2));
    assert_eq!(l.compact_now().unwrap(), 0, "nothing left to do");
}

#[test]
fn deferred_compacts_when_dead_bytes_pass_half_the_section() {
    let mut img = Img::with(65536, Compaction::Deferred);
    let mut l = img.l();
    let ids: Vec<_> = (0..100u32).map(|i| l.insert(A, tag(1), &[i as u8; 24]).unwrap()).collect();
    // 100 blocks of 32 bytes: 50 dead blocks are half, the 51st passes it.
    for (k, id) in ids.iter().step_by(2).enumerate() {
        l.remove(*id).unwrap();
        assert_eq!(l.dead_bytes(), (k as u64 + 1) * 32);
    }
    assert_eq!(l.status().unwrap().counters.compactions, 0);
    l.remove(ids[51]).unwrap();
    let v = l.verify().unwrap();
    assert_eq!((v.dead_bytes, v.records, v.used_bytes), (0, 49, 49 * 32));
    assert_eq!(l.status().unwrap().counters.compactions, 1);
}

#[test]
fn deferred_insert_that_does_not_fit_compacts_first() {
    let mut img = Img::with(8192, Compaction::Deferred);
    let mut l = img.l();
    let mut ids = vec![];
    while let Ok(id) = l.insert(A, tag(1), &[7; 40]) {
        ids.push(id);
    }
    // Few dead bytes (below the bound), but the gap is too small.
    l.remove(ids[0]).unwrap();
    l.remove(ids[5]).unwrap();
    assert_eq!(l.dead_bytes(), 96);
    let before = l.free_bytes().unwrap();
    assert!(before < 88, "{before}");
    let x = l.insert(O, tag(2), &[1; 80]).unwrap();
    assert_eq!(l.get(x).unwrap(), &[1; 80]);
    let v = l.verify().unwrap();
    assert_eq!(v.dead_bytes, 0);
    assert_eq!(v.free_bytes, before + 96 - 88);
    // Full is reported only when even a compaction cannot make room.
    assert!(matches!(l.insert(O, tag(2), &[1; 400]), Err(Error::Full { .. })));
}

#[test]
fn deferred_retain_marks_every_victim_dead() {
    let mut img = Img::with(65536, Compaction::Deferred);
    let mut l = img.l();
    let ids: Vec<_> = (0..200u32).map(|i| l.insert(A, tag(i % 10), &i.to_ne_bytes()).unwrap()).collect();
    let r = l.purge(A, 3).unwrap();
    assert_eq!(r, 20);
    let v = l.verify().unwrap();
    assert_eq!((v.records, v.dead_bytes, v.dead_blocks), (180, 20 * 16, 20));
    for (i, id) in ids.iter().enumerate() {
        assert_eq!(l.get(*id).is_some(), i % 10 != 3);
    }
    // A larger batch passes the bound and compacts in the same call.
    let r = l.retain(|m, _| m.pid < 5).unwrap();
    assert_eq!(r.records, 100);
    let v = l.verify().unwrap();
    assert_eq!((v.records, v.dead_bytes, v.used_bytes), (80, 0, 80 * 16));
}

#[test]
fn deferred_killed_between_mark_and_clear_finishes_the_remove() {
    let mut img = Img::with(65536, Compaction::Deferred);
    let mut l = img.l();
    let ids: Vec<_> = (0..10u8).map(|i| l.insert(A, tag(1), &[i; 8]).unwrap()).collect();
    sim::arm("defer.after_mark", 1);
    let r = std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| img.l().remove(ids[4])));
    assert!(r.is_err());
    // The entry points at a dead block: verify refuses, recovery finishes.
    let l = img.l();
    assert_eq!(l.verify().unwrap_err().corrupt_field(), Some("bptr.o_beg"));
    let mut l = img.l();
    let rep = l.recover().unwrap();
    assert_eq!(rep.finished_removes, 1);
    let v = l.verify().unwrap();
    assert_eq!((v.records, v.dead_bytes, v.dead_blocks), (9, 16, 1));
    assert!(l.get(ids[4]).is_none());
}

#[test]
fn corrupt_dead_byte_count_and_lowest_dead_block() {
    let mut img = Img::with(8192, Compaction::Deferred);
    let mut l = img.l();
    let ids: Vec<_> = (0..6u8).map(|i| l.insert(A, tag(1), &[i; 20]).unwrap()).collect();
    l.remove(ids[2]).unwrap();
    img.l().verify().unwrap();
    img.hdr().dead_bytes += 8;
    expect_corrupt(&mut img, "dead_bytes");
    // Derived: recovery rebuilds it.
    img.l().recover().unwrap();
    img.hdr().dead_lo = HEADER_SIZE as u64;
    expect_corrupt(&mut img, "dead_lo");
    img.l().recover().unwrap();
    assert_eq!(img.l().verify().unwrap().dead_bytes, 32);
    // A dead marker in an Eager region is corruption, not a dead block.
    let mut img = Img::new(8192);
    let mut l = img.l();
    l.insert(A, tag(1), b"x").unwrap();
    l.insert(A, tag(1), b"y").unwrap();
    let o = img.bptr(0).o_beg as usize;
    img.bytes()[o..o + 4].copy_from_slice(&DEAD_SLOT.to_ne_bytes());
    expect_corrupt(&mut img, "block.slot");
    // An unknown policy.
    let mut img = populated();
    img.hdr().compaction = 7;
    expect_corrupt(&mut img, "compaction");
}

/// The acceptance test: 100,000 records removed one by one in random
/// order under `Deferred`; the dead-byte count is exact after every remove
/// (reset by each compaction), and a final compaction reclaims every byte.
#[test]
fn deferred_100k_random_removes_count_dead_bytes_and_reclaim_everything() {
    const N: usize = 100_000;
    let mut img = Img::with(8 << 20, Compaction::Deferred);
    let mut l = img.l();
    let mut ids: Vec<(RecordId, u64)> = (0..N)
        .map(|i| {
            let len = 32 + (i % 3) * 8;
            (l.insert(A, tag(1), &vec![i as u8; len]).unwrap(), block_size(len as u64))
        })
        .collect();
    let full = l.verify().unwrap();
    assert_eq!(full.records as usize, N);
    // Fisher-Yates with a fixed xorshift seed.
    let mut x = 0x9E37_79B9_7F4A_7C15u64;
    for i in (1..N).rev() {
        x ^= x << 13;
        x ^= x >> 7;
        x ^= x << 17;
        ids.swap(i, (x % (i as u64 + 1)) as usize);
    }
    // Dead bytes (a paused compaction's hole included) grow by exactly the
    // removed block's size at every remove that finishes no compaction,
    // and drop when one finishes; verify recounts them from the blocks.
    let (mut compactions, mut live_bytes) = (0u64, full.used_bytes);
    let mut paused_seen = false;
    for (k, (id, size)) in ids.iter().enumerate() {
        let dead = l.dead_bytes();
        l.remove(*id).unwrap();
        live_bytes -= size;
        paused_seen |= l.compaction_paused();
        let c = l.counters().compactions;
        if c == compactions {
            assert_eq!(l.dead_bytes(), dead + size, "after {} removes", k + 1);
        } else {
            assert!(l.dead_bytes() < dead + size, "after {} removes", k + 1);
            compactions = c;
        }
        if k == N / 2 || k % 20_000 == 0 {
            let v = l.verify().unwrap();
            assert_eq!(v.used_bytes - v.dead_bytes, live_bytes);
            // Half of the block section, and the removes a paused
            // compaction's steps take to finish.
            assert!(v.dead_bytes * 2 <= v.used_bytes + (64 << 10), "{v:?}");
        }
        if k == N / 2 {
            // On demand, mid-way: every dead byte comes back (a paused
            // compaction is finished first).
            let free = l.free_bytes().unwrap();
            let dead = l.dead_bytes();
            let slots = l.status().unwrap().slots;
            l.compact_now().unwrap();
            compactions = l.counters().compactions;
            let v = l.verify().unwrap();
            // The unused entries at the table's top go with the holes.
            let dropped = (slots - v.slots) as u64 * 32;
            assert_eq!((v.dead_bytes, v.used_bytes, v.free_bytes), (0, live_bytes, free + dead + dropped));
        }
    }
    assert!(paused_seen, "a compaction of this size pauses between removes");
    assert!(compactions > 2, "the bound triggered compactions ({compactions})");
    l.compact_now().unwrap();
    let v = l.verify().unwrap();
    assert_eq!((v.records, v.used_bytes, v.dead_bytes, v.slots), (0, 0, 0, 0));
    assert_eq!(v.free_bytes, room(8 << 20));
    // Each bound-triggered compaction moved at most one byte per dead byte
    // it reclaimed; the on-demand one at N/2 at most the live half.
    let c = l.counters();
    assert!(c.bytes_moved <= full.used_bytes + full.used_bytes / 2 + 8 * N as u64, "{c:?}");
}

#[test]
fn an_insert_that_must_compact_killed_at_any_step_recovers_to_before_or_after() {
    for point in [
        "compact.after_journal",
        "compact.mid_move",
        "compact.after_move",
        "compact.mid_fixup",
        "compact.mid_advance",
        "compact.before_clear",
        "insert.after_take",
        "insert.after_block",
        "insert.after_publish",
    ] {
        for nth in 1..=3u32 {
            for fill_top in [false, true] {
                let mut img = Img::with(8192, Compaction::Deferred);
                let mut l = img.l();
                let mut ids = vec![];
                while let Ok(id) = l.insert(A, tag(1), &[ids.len() as u8; 40]) {
                    ids.push(id);
                }
                // A few removes, under the half bound: the next insert only
                // fits after a compaction.
                let victims = if fill_top { [ids.len() - 1, 3, 9, 20] } else { [1, 5, 11, 30] };
                for v in victims {
                    l.remove(ids[v]).unwrap();
                }
                assert!(l.dead_bytes() > 0);
                let before = snapshot(&l);
                let mut copy = Img(img.0.clone());
                copy.l().insert(O, tag(2), &[0xCD; 100]).unwrap();
                let after = snapshot(&copy.l());
                let mut l = img.l();
                sim::arm(point, nth);
                let res = std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| {
                    l.insert(O, tag(2), &[0xCD; 100])
                }));
                if sim::disarm() {
                    res.unwrap().unwrap();
                    continue;
                }
                let mut l = img.l();
                l.recover().unwrap_or_else(|e| panic!("{point}#{nth}: {e}"));
                l.verify().unwrap();
                let got = snapshot(&l);
                assert!(got == before || got == after, "{point}#{nth} fill_top={fill_top}");
            }
        }
    }
}

#[test]
fn a_dead_lo_inside_a_live_record_is_corrupt_and_destroys_nothing() {
    let mut img = Img::with(8192, Compaction::Deferred);
    let mut l = img.l();
    let a = l.insert(A, tag(1), &[0u8; 64]).unwrap();
    let b = l.insert(A, tag(1), &[2u8; 8]).unwrap();
    let _c = l.insert(A, tag(1), &[3u8; 8]).unwrap();
    l.remove(b).unwrap();
    img.l().verify().unwrap();
    let first = img.hdr().o_st;
    img.hdr().dead_lo = first + 16; // inside a's data
    let mut l = img.l();
    assert_eq!(l.compact_now().unwrap_err().corrupt_field(), Some("dead_lo"));
    assert_eq!(l.get(a), Some(&[0u8; 64][..]));
    // Derived state: recovery rebuilds it, and the compaction then works.
    l.recover().unwrap();
    l.verify().unwrap();
    l.compact_now().unwrap();
    assert_eq!(l.get(a), Some(&[0u8; 64][..]));
}

#[test]
fn an_unmarked_block_without_its_entry_is_corrupt_not_compacted_away() {
    let mut img = Img::with(8192, Compaction::Deferred);
    let mut l = img.l();
    let a = l.insert(A, tag(1), &[1u8; 16]).unwrap();
    let b = l.insert(A, tag(1), &[2u8; 16]).unwrap();
    let _c = l.insert(A, tag(1), &[3u8; 16]).unwrap();
    l.remove(a).unwrap();
    // Damage b's table entry (off by 8): its block is now referenced by
    // nothing, yet not marked dead.
    img.bptr(b.slot()).o_beg += 8;
    let mut l = img.l();
    let e = l.compact_now().unwrap_err();
    assert_eq!(e.corrupt_field(), Some("bptr.o_beg"), "{e}");
}

/// The "light" predicates the optimistic readers rely on: when they say an
/// insert or a remove will not compact, it does not (no block moves while
/// the version stays even). Random inserts and removes that fill a small
/// Deferred region, so inserts that need dead room and removes that pass
/// the dead-byte bound both happen.
#[test]
fn light_predicates_never_miss_a_compaction() {
    let mut img = Img::with(8192, Compaction::Deferred);
    let mut l = img.l();
    let mut ids: Vec<RecordId> = Vec::new();
    let mut s = 0x9e37_79b9_7f4a_7c15u64;
    let mut rnd = move || {
        s ^= s << 13;
        s ^= s >> 7;
        s ^= s << 17;
        s
    };
    let (mut light_inserts, mut light_removes, mut heavy) = (0, 0, 0);
    for _ in 0..4000 {
        let before = l.counters().compactions;
        if rnd() % 3 != 0 || ids.is_empty() {
            let len = (rnd() % 200) as usize;
            let would = l.insert_would_compact(len);
            match l.insert(A, tag(1), &vec![1u8; len]) {
                Ok(id) => ids.push(id),
                Err(e) => assert_eq!(e.kind(), crate::ErrorKind::Full),
            }
            let compacted = l.counters().compactions != before;
            assert!(would || !compacted, "an insert said light compacted");
            if would {
                heavy += 1;
            } else {
                light_inserts += 1;
            }
        } else {
            let id = ids.swap_remove((rnd() % ids.len() as u64) as usize);
            let would = l.remove_would_compact(id);
            l.remove(id).unwrap();
            let compacted = l.counters().compactions != before;
            assert!(would || !compacted, "a remove said light compacted");
            if would {
                heavy += 1;
            } else {
                light_removes += 1;
            }
        }
    }
    l.verify().unwrap();
    assert!(
        light_inserts > 100 && light_removes > 100 && heavy > 10,
        "{light_inserts} {light_removes} {heavy}"
    );
    // Eager removes always compact: never light.
    let mut img = Img::new(4096);
    let mut l = img.l();
    let id = l.insert(A, tag(1), b"x").unwrap();
    assert!(l.remove_would_compact(id));
}

/// A Deferred compaction pauses between lock holds once a step's budget
/// is spent; the paused state verifies, reads go on, inserts land past the
/// journal's end and are taken in, removes on both sides of the hole are
/// counted, and a recovery (a holder killed after an insert committed in
/// the paused state) finishes it without losing a record.
#[test]
fn a_paused_compaction_is_a_state_every_operation_understands() {
    crate::layout::set_compaction_step(256);
    let mut img = Img::with(1 << 20, Compaction::Deferred);
    let mut l = img.l();
    let ids: Vec<RecordId> =
        (0..2000u32).map(|i| l.insert(A, tag(1), &i.to_ne_bytes().repeat(6)).unwrap()).collect();
    let mut live: std::collections::BTreeMap<RecordId, Vec<u8>> =
        ids.iter().enumerate().map(|(i, id)| (*id, (i as u32).to_ne_bytes().repeat(6))).collect();
    // Remove every other record, then the odd ones from the front, until
    // dead bytes pass half of the block section and a compaction starts
    // and pauses.
    let mut order = (0..ids.len()).step_by(2).chain((1..ids.len()).step_by(2));
    while !l.compaction_paused() {
        let k = order.next().expect("no compaction paused");
        l.remove(ids[k]).unwrap();
        live.remove(&ids[k]);
    }
    let check = |l: &Layout<'_>, live: &std::collections::BTreeMap<RecordId, Vec<u8>>| {
        l.verify().unwrap();
        for (id, data) in live {
            assert_eq!(l.get(*id).unwrap(), &data[..], "{id:?}");
        }
        assert_eq!(l.iter().count(), live.len());
        assert_eq!(l.iter_owner(A).count() + l.iter_owner(O).count(), live.len());
    };
    check(&l, &live);
    assert!(!l.recovery_required(), "a paused compaction is not a recovery");
    // Removes below the compacted part's end and past the hole.
    let j = l.hdr().journal;
    let below = *live.keys().find(|id| (l.bptr(id.slot()).o_beg as u64) < j.dst).unwrap();
    let above = *live.keys().rev().find(|id| (l.bptr(id.slot()).o_beg as u64) >= j.src).unwrap();
    for id in [below, above] {
        l.remove(id).unwrap();
        live.remove(&id);
        check(&l, &live);
    }
    // Inserts while paused land past the journal's end; each carries the
    // compaction a step on.
    let mut rounds = 0;
    while l.compaction_paused() && rounds < 3 {
        let id = l.insert(O, tag(2), b"while paused").unwrap();
        live.insert(id, b"while paused".to_vec());
        rounds += 1;
        check(&l, &live);
    }
    assert!(l.compaction_paused(), "still paused after {rounds} inserts (make the region bigger)");
    // An insert killed after it published its entry, while paused: the
    // entry points at o_fr; recovery rolls it back and keeps the rest.
    for point in ["insert.after_publish", "insert.mid_link", "insert.after_link"] {
        assert!(l.compaction_paused());
        crate::sys::failpoint::sim::arm(point, 1);
        let cut = std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| {
            let _ = l.insert(O, tag(2), b"cut short");
        }));
        assert!(!crate::sys::failpoint::sim::disarm(), "{point} was hit");
        assert!(cut.is_err());
        l.mark_recovery_required();
        l.recover().unwrap_or_else(|e| panic!("{point}: {e}"));
        check(&l, &live);
        if !l.compaction_paused() {
            break;
        }
    }
    // Pause again (removes), then a holder killed after an insert
    // committed: o_fr is past the journal's end. Recovery takes those
    // blocks in and finishes the compaction.
    let more: Vec<RecordId> = live.keys().copied().filter(|id| l.meta(*id).unwrap().owner == A).collect();
    let mut more = more.into_iter();
    while !l.compaction_paused() {
        let id = more.next().expect("no compaction paused again");
        l.remove(id).unwrap();
        live.remove(&id);
    }
    let id = l.insert(O, tag(2), b"committed").unwrap();
    live.insert(id, b"committed".to_vec());
    assert!(l.compaction_paused());
    assert!(l.hdr().o_fr > l.hdr().journal.end, "inserted past the journal's end");
    l.mark_recovery_required();
    let extra = l.insert(O, tag(2), b"x");
    assert!(matches!(extra, Err(Error::RecoveryRequired)), "{extra:?}");
    l.recover().unwrap();
    assert!(!l.compaction_paused());
    check(&l, &live);
    // And an explicit compaction after it leaves no dead byte.
    l.compact_now().unwrap();
    assert_eq!(l.verify().unwrap().dead_bytes, 0);
    check(&l, &live);
    crate::layout::set_compaction_step(0);
}

//! Tests of the owner index: iteration along an owner's chain, the
//! removal notes that let an iteration go on, corrupt chains and their
//! rebuild by recovery.

use super::*;

#[test]
fn iterating_an_owner_visits_only_its_chain() {
    // 10 records of A among 3,000 of other owners (one of them in A's
    // bucket): the walk examines A's bucket only.
    let mut img = Img::new(1 << 20);
    let mut l = img.l();
    let mut mine = vec![];
    for i in 0..3010u32 {
        let owner = match i % 301 {
            0 => A,
            1 => A2,
            _ => OwnerId(110 + i % 5),
        };
        let id = l.insert(owner, tag(1), &i.to_ne_bytes()).unwrap();
        if owner == A {
            mine.push(id);
        }
    }
    let before = steps();
    let got = ids_of(&l, A);
    let walked = steps() - before;
    assert_eq!(got, mine, "in insertion order");
    assert!(walked <= 21, "walked {walked} entries for 10 records (+10 of the bucket's other owner)");
    let before = steps();
    assert_eq!(l.iter_owner(A).count(), 10);
    assert_eq!(l.next_of_owner_pid(A, 2, None), None);
    assert!(steps() - before <= 42);
    // An owner with no record walks nothing at all.
    let before = steps();
    assert_eq!(l.next_of_owner(OwnerId(3), None), None);
    assert_eq!(steps(), before);
    l.verify().unwrap();
}

#[test]
fn every_removal_loop_visits_each_record_once() {
    for policy in [Compaction::Eager, Compaction::Deferred] {
        // (remove before asking for the next one, remove every k-th)
        for (ask_first, every) in [(true, 1), (false, 1), (true, 2), (false, 2), (false, 3)] {
            let mut img = Img::with(1 << 16, policy);
            let mut l = img.l();
            for i in 0..90u32 {
                let owner = [A, O, A2][i as usize % 3];
                l.insert(owner, tag(1), &i.to_ne_bytes()).unwrap();
            }
            let all = ids_of(&l, A);
            let (mut seen, mut cur, mut removed) = (vec![], None, vec![]);
            while let Some(id) = l.next_of_owner(A, cur) {
                assert!(seen.len() < all.len(), "{policy:?} {ask_first} {every}: visits too many");
                seen.push(id);
                if seen.len() % every == 0 {
                    let next = ask_first.then(|| l.next_of_owner(A, Some(id)));
                    l.remove(id).unwrap();
                    removed.push(id);
                    if let Some(next) = next {
                        assert_eq!(
                            l.next_of_owner(A, Some(id)),
                            next,
                            "the removed id goes on where it stood"
                        );
                    }
                }
                cur = Some(id);
            }
            assert_eq!(seen, all, "{policy:?} {ask_first} {every}");
            let left: Vec<_> = all.iter().filter(|id| !removed.contains(id)).copied().collect();
            assert_eq!(ids_of(&l, A), left);
            assert_eq!(l.iter_owner(A2).count(), 30, "the bucket's other owner is untouched");
            l.verify().unwrap();
        }
    }
}

#[test]
fn removing_the_top_entry_mid_iteration_keeps_the_place() {
    // The top entry keeps its note (removes do not shrink the table); the
    // header's copy of the last note would keep the place if a shrink had
    // dropped it (see below).
    let mut img = Img::new(8192);
    let mut l = img.l();
    let ids: Vec<_> = (0..6u8).map(|i| l.insert(A, tag(1), &[i]).unwrap()).collect();
    // A newer record in a lower slot: the top entry (slot 5) is not last.
    l.remove(ids[0]).unwrap();
    let newer = l.insert(A, tag(1), b"newer").unwrap();
    assert_eq!(newer.slot(), 0);
    assert_eq!(l.next_of_owner(A, Some(ids[4])), Some(ids[5]));
    l.remove(ids[5]).unwrap();
    assert_eq!(l.status().unwrap().slots, 6, "a remove does not shrink the table");
    assert_eq!(l.next_of_owner(A, Some(ids[5])), Some(newer));
    // Dropped with its entry (a shrink): the header's copy keeps the place.
    assert!(l.shrink_table().unwrap());
    assert_eq!(l.status().unwrap().slots, 5, "the table shrank");
    assert_eq!(l.next_of_owner(A, Some(ids[5])), Some(newer));
    // Two removes on: the entry's note of the older one is used.
    l.remove(ids[2]).unwrap();
    l.remove(ids[3]).unwrap();
    assert_eq!(l.next_of_owner(A, Some(ids[2])), Some(ids[4]), "hops over the removed successor");
    assert_eq!(l.next_of_owner(A, Some(newer)), None);
    l.remove(newer).unwrap();
    assert_eq!(l.next_of_owner(A, Some(newer)), None, "it was the last");
    l.verify().unwrap();
}

#[test]
fn an_after_that_is_no_place_in_the_chain_starts_over() {
    let mut img = Img::new(8192);
    let mut l = img.l();
    let a: Vec<_> = (0..3u8).map(|i| l.insert(A, tag(1), &[i]).unwrap()).collect();
    let o = l.insert(O, tag(1), b"o").unwrap();
    // Another bucket's record, a made-up id, generation 0.
    for after in [o, RecordId::new(999, 5), RecordId::new(1, 0)] {
        assert_eq!(l.next_of_owner(A, Some(after)), Some(a[0]), "{after}");
    }
    // A removed record whose slot a new record took: its note is gone.
    l.remove(a[1]).unwrap();
    let n = l.insert(O, tag(1), b"new").unwrap();
    assert_eq!(n.slot(), a[1].slot());
    l.remove(o).unwrap(); // the header's note is o's now
    assert_eq!(l.next_of_owner(A, Some(a[1])), Some(a[0]));
}

#[test]
fn a_cycle_in_an_owner_chain_ends_every_walk_and_is_reported() {
    let mut img = Img::new(8192);
    let mut l = img.l();
    let ids: Vec<_> = (0..4u8).map(|i| l.insert(A, tag(1), &[i]).unwrap()).collect();
    // Chain: 0 -> 1 -> 2 -> 3. Link the last back to the second.
    img.bptr(ids[3].slot()).next = ids[1].slot() + 1;
    let mut l = img.l();
    let walked = ids_of(&l, A);
    assert!(walked.len() <= 4, "{walked:?}");
    assert!(l.iter_owner(A).count() <= 4);
    assert_eq!(l.verify().unwrap_err().corrupt_field(), Some("owner_heads"));
    // A remove whose neighbours disagree refuses before changing anything.
    let e = l.remove(ids[3]).unwrap_err();
    assert_eq!(e.corrupt_field(), Some("bptr.prev"), "{e}");
    assert_eq!(l.purge(A, 1).unwrap_err().corrupt_field(), Some("owner_heads"));
    assert_eq!(l.get(ids[3]).unwrap(), &[3]);
    // Recovery rebuilds the chains (derived state), keeping the order it
    // can follow from the head.
    l.mark_recovery_required();
    l.recover().unwrap();
    assert_eq!(ids_of(&l, A), ids);
    l.remove(ids[2]).unwrap();
    assert_eq!(l.purge(A, 1).unwrap(), 3);
    l.verify().unwrap();
}

#[test]
fn a_bad_chain_head_fails_an_insert_before_it_changes_anything() {
    let mut img = populated();
    let before = img.0.clone();
    img.hdr().owner_heads[bucket_of(A.0)] = 1000;
    let mut l = Layout::reopen(img.view()).unwrap();
    assert_eq!(l.insert(A, tag(1), b"x").unwrap_err().corrupt_field(), Some("owner_heads"));
    assert_eq!(l.next_of_owner(A, None), None);
    img.hdr().owner_heads[bucket_of(A.0)] = before_head(&before);
    assert_eq!(img.0, before, "nothing changed");
}

fn before_head(image: &[u64]) -> u32 {
    let h: &Header = bytemuck::from_bytes(&bytemuck::cast_slice::<u64, u8>(image)[..HEADER_SIZE]);
    h.owner_heads[bucket_of(A.0)]
}

#[test]
fn recovery_rebuilds_scrambled_chains() {
    for policy in [Compaction::Eager, Compaction::Deferred] {
        let mut img = Img::with(1 << 16, policy);
        let mut l = img.l();
        for i in 0..200u32 {
            let id = l.insert(OwnerId(i % 30), tag(1), &i.to_ne_bytes()).unwrap();
            if i % 7 == 0 {
                l.remove(id).unwrap();
            }
        }
        let want: Vec<Vec<RecordId>> = (0..30)
            .map(|o| {
                let mut v = ids_of(&l, OwnerId(o));
                v.sort();
                v
            })
            .collect();
        // Scramble every link: heads, next and prev.
        for b in 0..OWNER_BUCKETS {
            img.hdr().owner_heads[b] = (b as u32 * 7) % 50;
        }
        let n = img.l().status().unwrap().slots;
        for slot in 0..n {
            let e = img.bptr(slot);
            (e.next, e.prev) = (slot % 11, slot % 5);
        }
        let mut l = img.l();
        assert!(l.verify().is_err());
        l.mark_recovery_required();
        l.recover().unwrap();
        l.verify().unwrap();
        for o in 0..30 {
            let mut got = ids_of(&l, OwnerId(o));
            got.sort();
            assert_eq!(got, want[o as usize]);
        }
    }
}

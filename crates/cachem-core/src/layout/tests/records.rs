//! Tests of single records, batch removal, formatting and status on
//! consistent images.

use super::*;

#[test]
fn empty_region_verifies() {
    let mut img = Img::new(4096);
    let l = img.l();
    let r = l.verify().unwrap();
    assert_eq!(
        r,
        VerifyReport {
            records: 0,
            names: 0,
            slots: 0,
            free_slots: 0,
            used_bytes: 0,
            free_bytes: room(4096),
            dead_bytes: 0,
            dead_blocks: 0
        }
    );
}

#[test]
fn format_rejects_bad_sizes() {
    let mut v = vec![0u64; 1000];
    let b: &mut [u8] = bytemuck::cast_slice_mut(&mut v);
    assert!(matches!(format(&mut b[..4000], &Default::default()), Err(Error::BadSize { .. })));
    assert!(matches!(format(&mut b[..4100], &Default::default()), Err(Error::BadSize { .. }))); // not page-sized? 4100 % 8 != 0
    assert!(matches!(check_size(1 << 40), Err(Error::BadSize { .. })));
    assert!(matches!(check_size(4097), Err(Error::BadSize { .. })));
    assert!(check_size(4104).is_ok());
    // Unaligned buffer.
    assert!(format(&mut b[1..4097], &Default::default()).is_err());
}

#[test]
fn insert_get_meta_and_alignment() {
    let mut img = Img::new(8192);
    let mut l = img.l();
    let a = l.insert(A, tag(10), b"hello").unwrap();
    let z = l.insert(O, tag(11), b"").unwrap();
    let c = l.insert(A, tag(10), &[9u8; 17]).unwrap();
    assert_eq!(l.get(a).unwrap(), b"hello");
    assert_eq!(l.get(z).unwrap(), b"");
    assert_eq!(l.get(c).unwrap(), &[9u8; 17]);
    for id in [a, z, c] {
        assert_eq!(l.get(id).unwrap().as_ptr() as usize % 8, 0, "record data is 8-aligned");
    }
    let m = l.meta(a).unwrap();
    assert_eq!((m.owner, m.pid, m.start_time, m.len), (A, 10, 1010, 5));
    l.get_mut(a).unwrap()[0] = b'H';
    assert_eq!(l.get(a).unwrap(), b"Hello");
    let rep = l.verify().unwrap();
    assert_eq!(rep.records, 3);
    assert_eq!(rep.used_bytes, (8 + 8) + 8 + (8 + 24));
    assert_eq!(l.status().unwrap().counters.inserts, 3);
}

#[test]
fn full_and_too_large() {
    let mut img = Img::new(4096);
    let mut l = img.l();
    let max = l.max_record_len();
    assert_eq!(max, room(4096) - 8 - 32);
    match l.insert(A, tag(1), &vec![0; max as usize + 1]) {
        Err(Error::TooLarge { len, max: m }) => assert_eq!((len, m), (max + 1, max)),
        other => panic!("{other:?}"),
    }
    let big = l.insert(A, tag(1), &vec![1; max as usize]).unwrap();
    match l.insert(A, tag(1), b"x") {
        Err(Error::Full { needed, free }) => assert_eq!((needed, free), (16 + 32, 0)),
        other => panic!("{other:?}"),
    }
    l.remove(big).unwrap();
    // Its table entry stays (a remove does not shrink the table) and is
    // reused by the next insert.
    assert_eq!(l.verify().unwrap().free_bytes, room(4096) - 32);
    // Fill with small records until full; every one is still readable.
    let mut ids = vec![];
    loop {
        match l.insert(O, tag(2), &(ids.len() as u64).to_ne_bytes()) {
            Ok(id) => ids.push(id),
            Err(Error::Full { .. }) => break,
            Err(e) => panic!("{e}"),
        }
    }
    assert_eq!(ids.len() as u64, room(4096) / (16 + 32));
    for (i, id) in ids.iter().enumerate() {
        assert_eq!(l.get_pod::<u64>(*id).unwrap(), &(i as u64));
    }
    l.verify().unwrap();
}

#[test]
fn remove_compacts_and_keeps_ids_valid() {
    let mut img = Img::new(16384);
    let mut l = img.l();
    let ids: Vec<_> = (0..20u8).map(|i| l.insert(A, tag(1), &vec![i; i as usize * 3]).unwrap()).collect();
    // Remove from the middle, the front and the back.
    for &k in &[10usize, 0, 19, 5] {
        l.remove(ids[k]).unwrap();
        l.verify().unwrap();
    }
    for (i, id) in ids.iter().enumerate() {
        if [10, 0, 19, 5].contains(&i) {
            assert!(l.get(*id).is_none());
            assert!(matches!(l.remove(*id), Err(Error::Stale(_))));
        } else {
            assert_eq!(l.get(*id).unwrap(), &vec![i as u8; i * 3][..]);
        }
    }
    let st = l.status().unwrap();
    assert_eq!(st.records, 16);
    assert_eq!(st.counters.removes, 4);
    assert!(st.counters.bytes_moved > 0);
    // Slot 19 was the top entry: a remove does not shrink the table (that
    // waits until the room is wanted), so all four are free entries.
    assert_eq!(st.slots, 20);
    assert_eq!(st.free_slots, 4);
}

#[test]
fn stale_ids_never_reach_another_record() {
    let mut img = Img::new(8192);
    let mut l = img.l();
    let a = l.insert(A, tag(1), b"first").unwrap();
    let _keep = l.insert(A, tag(1), b"keep").unwrap();
    l.remove(a).unwrap();
    let b = l.insert(A, tag(1), b"second").unwrap();
    assert_eq!(a.slot(), b.slot(), "slot reused from the free list");
    assert_ne!(a, b);
    assert!(l.get(a).is_none());
    assert!(matches!(l.try_get(a), Err(Error::Stale(_))));
    assert_eq!(l.get(b).unwrap(), b"second");
    // Out-of-range slot and the zero id.
    assert!(l.get(RecordId::new(999, 1)).is_none());
    assert!(l.get(RecordId::from_u64(0)).is_none());
    // An id from another region (other generation) is stale here.
    let mut other = Img(vec![0u64; 1024]);
    format(other.bytes(), &FormatOptions { generation: 42, ..Default::default() }).unwrap();
    let mut lo = other.l();
    let x = lo.insert(A, tag(1), b"other").unwrap();
    assert!(l.get(x).is_none());
}

#[test]
fn the_table_top_shrinks_when_its_room_is_wanted() {
    for policy in [Compaction::Eager, Compaction::Deferred] {
        let mut img = Img::with(8192, policy);
        let mut l = img.l();
        let ids: Vec<_> = (0..4).map(|_| l.insert(A, tag(1), b"x").unwrap()).collect();
        l.remove(ids[3]).unwrap();
        // A remove only frees its entry (O(1)): entry 3 stays, unused.
        let st = l.status().unwrap();
        assert_eq!((st.slots, st.free_slots), (4, 1), "{policy:?}");
        l.verify().unwrap();
        // The insert after a remove of the newest record reuses its entry.
        let again = l.insert(A, tag(1), b"y").unwrap();
        assert_eq!(again.slot(), 3, "{policy:?}: the last freed entry first");
        l.remove(again).unwrap();
        l.remove(ids[1]).unwrap();
        l.remove(ids[2]).unwrap();
        if policy == Compaction::Eager {
            let st = l.status().unwrap();
            assert_eq!((st.slots, st.free_slots), (4, 3), "{policy:?}");
        } else {
            // A compaction (here on demand; also when dead bytes pass half
            // of the block section) drops the unused top entries with the
            // holes.
            l.compact_now().unwrap();
            let st = l.status().unwrap();
            assert_eq!((st.slots, st.free_slots, st.table_bytes), (1, 0, 32), "{policy:?}");
        }
        l.verify().unwrap();
        // Filling the region reclaims them too: as many records fit as in
        // a region that never had the extra entries.
        let mut fresh = Img::with(8192, policy);
        let mut f = fresh.l();
        f.insert(A, tag(1), b"x").unwrap();
        let mut n_fresh = 0;
        while f.insert(A, tag(1), &[7u8; 40]).is_ok() {
            n_fresh += 1;
        }
        let mut n = 0;
        while l.insert(A, tag(1), &[7u8; 40]).is_ok() {
            n += 1;
        }
        assert_eq!(n, n_fresh, "{policy:?}");
        l.verify().unwrap();
    }
}

#[test]
fn seed_access_all_records_with_a_specific_id() {
    // mod_cachem: while((index=cachem_get_id(id, index)) != INVALID) ptr = cachem_get(index);
    let mut img = Img::new(8192);
    let mut l = img.l();
    for i in 0..6u8 {
        l.insert(if i % 2 == 0 { A } else { O }, tag(1), &[i]).unwrap();
    }
    let mut seen = vec![];
    let mut index = None;
    while let Some(r) = l.next_of_owner(A, index) {
        seen.push(l.get(r).unwrap()[0]);
        index = Some(r);
    }
    assert_eq!(seen, vec![0, 2, 4], "in insertion order");
    let via_iter: Vec<u8> = l.iter_owner(A).map(|(_, d)| d[0]).collect();
    assert_eq!(via_iter, seen);
}

#[test]
fn seed_delete_all_records_with_a_specific_id() {
    // while((index=cachem_get_id(id, INVALID)) != INVALID) cachem_delete(index);
    let mut img = Img::new(8192);
    let mut l = img.l();
    for i in 0..9u8 {
        l.insert(if i % 3 == 0 { A } else { O }, tag(1), &[i; 12]).unwrap();
    }
    let mut n = 0;
    while let Some(r) = l.next_of_owner(A, None) {
        l.remove(r).unwrap();
        n += 1;
    }
    assert_eq!(n, 3);
    assert_eq!(l.iter_owner(A).count(), 0);
    assert_eq!(l.iter_owner(O).count(), 6);
    l.verify().unwrap();
}

#[test]
fn seed_delete_all_records_with_current_pid_and_specific_id() {
    // while((index=cachem_get_pid(id, INVALID)) != INVALID) cachem_delete(index);
    let mut img = Img::new(8192);
    let mut l = img.l();
    for i in 0..12u32 {
        let owner = if i % 2 == 0 { A } else { O };
        l.insert(owner, tag(100 + i % 3), &i.to_ne_bytes()).unwrap();
    }
    let me = 101;
    while let Some(r) = l.next_of_owner_pid(A, me, None) {
        l.remove(r).unwrap();
    }
    assert!(l.iter().all(|(m, _)| !(m.owner == A && m.pid == me)));
    assert_eq!(l.iter().count(), 10);
    // purge does the same in one pass.
    assert_eq!(l.purge(O, 102).unwrap(), 2);
    assert_eq!(l.iter().count(), 8);
    l.verify().unwrap();
}

#[test]
fn retain_removes_in_one_pass() {
    let mut img = Img::new(65536);
    let mut l = img.l();
    let ids: Vec<_> = (0..200u32).map(|i| l.insert(A, tag(i % 7), &i.to_ne_bytes()).unwrap()).collect();
    let r = l.retain(|m, _| m.pid != 3).unwrap();
    assert_eq!(r.records, ids.iter().enumerate().filter(|(i, _)| i % 7 == 3).count());
    assert_eq!(r.bytes, r.records as u64 * 16);
    for (i, id) in ids.iter().enumerate() {
        assert_eq!(l.get(*id).is_some(), i % 7 != 3);
        if i % 7 != 3 {
            assert_eq!(l.get_pod::<u32>(*id).unwrap(), &(i as u32));
        }
    }
    l.verify().unwrap();
    assert_eq!(l.retain(|_, _| true).unwrap(), Removed::default());
    let r = l.retain(|_, _| false).unwrap();
    assert_eq!(r.records, 200 - ids.iter().enumerate().filter(|(i, _)| i % 7 == 3).count());
    let v = l.verify().unwrap();
    // The entries stay, free, until their room is wanted.
    assert_eq!((v.records, v.slots, v.used_bytes), (0, 200, 0));
    assert!(l.shrink_table().unwrap());
    let v = l.verify().unwrap();
    assert_eq!((v.records, v.slots, v.used_bytes), (0, 0, 0));
}

#[test]
fn pod_access() {
    #[derive(Clone, Copy, bytemuck::Pod, bytemuck::Zeroable, PartialEq, Debug)]
    #[repr(C)]
    struct Score {
        hits: u64,
        worker: u32,
        busy: u32,
    }
    let mut img = Img::new(8192);
    let mut l = img.l();
    let id = l.insert_pod(A, tag(1), &Score { hits: 1, worker: 2, busy: 0 }).unwrap();
    l.get_pod_mut::<Score>(id).unwrap().hits += 41;
    assert_eq!(l.get_pod::<Score>(id).unwrap(), &Score { hits: 42, worker: 2, busy: 0 });
    match l.get_pod::<u32>(id) {
        Err(Error::PodMismatch { expected: 4, actual: 16, .. }) => {}
        other => panic!("{other:?}"),
    }
}

#[test]
fn status_counts_owners_and_pids() {
    let mut img = Img::new(8192);
    let mut l = img.l();
    l.insert(A, tag(1), b"abc").unwrap();
    l.insert(A, tag(2), b"de").unwrap();
    l.insert(OwnerId::PROCESS, tag(2), b"f").unwrap();
    let s = l.status().unwrap();
    assert_eq!(s.records, 3);
    assert_eq!(
        s.owners,
        vec![
            OwnerUsage { owner: OwnerId::PROCESS, records: 1, bytes: 1 },
            OwnerUsage { owner: A, records: 2, bytes: 5 },
        ]
    );
    assert_eq!(s.pids.iter().map(|p| (p.pid, p.records)).collect::<Vec<_>>(), vec![(1, 1), (2, 2)]);
    assert_eq!(s.used_bytes + s.free_bytes + s.table_bytes + s.header_size + s.trailer_bytes, s.size);
}

#[test]
fn the_name_table_hands_out_dense_ids_and_finds_names_again() {
    let mut img = Img::with(1 << 16, Compaction::Deferred);
    let mut l = img.l();
    let tag = tag(1);
    assert_eq!(l.next_owner(), 1);
    assert_eq!(l.register_name(b"a", tag).unwrap(), Some(OwnerId(1)));
    assert_eq!(l.unique_owner().unwrap(), Some(OwnerId(2)));
    assert_eq!(l.register_name(b"b", tag).unwrap(), Some(OwnerId(3)));
    assert_eq!(l.register_name(b"a", tag).unwrap(), Some(OwnerId(1)));
    assert_eq!(l.name_lookup(b"b"), Some(OwnerId(3)));
    assert_eq!(l.name_lookup(b"c"), None);
    assert_eq!(l.names(), vec![(b"a".to_vec(), OwnerId(1)), (b"b".to_vec(), OwnerId(3))]);
    // Hidden from users' counts, kept by the engine.
    let st = l.status().unwrap();
    assert_eq!((st.records, st.names, st.next_owner), (0, 2, 4));
    // A damaged counter below a registered id never hands that id out again.
    l.hdr_mut().next_owner = 2;
    assert_eq!(l.register_name(b"c", tag).unwrap(), Some(OwnerId(4)));
    // Exhaustion: None, never a reserved id or a wrap to 0.
    l.hdr_mut().next_owner = u32::MAX - 2;
    assert_eq!(l.unique_owner().unwrap(), Some(OwnerId(u32::MAX - 2)));
    assert_eq!(l.unique_owner().unwrap(), None);
    assert_eq!(l.register_name(b"d", tag).unwrap(), None);
    l.verify().unwrap();
}

/// A known name is found through the hash index in a bounded number of
/// steps whatever the table's size; a damaged index only costs a walk.
#[test]
fn known_names_are_found_through_the_index_not_by_a_walk() {
    let mut img = Img::with(1 << 20, Compaction::Deferred);
    let mut l = img.l();
    let tag = tag(1);
    for i in 0..1000u32 {
        assert_eq!(l.register_name(format!("module_{i}").as_bytes(), tag).unwrap(), Some(OwnerId(i + 1)));
    }
    l.verify().unwrap();
    assert_eq!(l.status().unwrap().names, 1000, "the index is not a name");
    assert_eq!(l.names().len(), 1000);
    let before = steps();
    for i in (0..1000u32).step_by(37) {
        assert_eq!(l.name_lookup(format!("module_{i}").as_bytes()), Some(OwnerId(i + 1)));
        assert_eq!(l.register_name(format!("module_{i}").as_bytes(), tag).unwrap(), Some(OwnerId(i + 1)));
    }
    let per = (steps() - before) / 28 / 2;
    assert!(per < 30, "{per} entries examined per lookup of a known name among 1,000");
    // Damage the index (its entries zeroed): answers stay right, and the
    // next lookup of a known name through registration repairs it.
    let (iid, _) = l.iter_owner(OwnerId::NAMES_INDEX).next().unwrap();
    let d = l.get_mut(iid).unwrap();
    let n = d.len();
    d[16..n].fill(0);
    assert_eq!(l.name_lookup(b"module_500"), Some(OwnerId(501)));
    assert_eq!(l.register_name(b"module_500", tag).unwrap(), Some(OwnerId(501)));
    let before = steps();
    assert_eq!(l.name_lookup(b"module_500"), Some(OwnerId(501)));
    assert!(steps() - before < 30, "the index was not repaired");
    // Garbage pointing at user records is never taken for a name.
    let user = l.insert(A, tag, b"\x05\0\0\0module_7").unwrap();
    let (iid, _) = l.iter_owner(OwnerId::NAMES_INDEX).next().unwrap();
    let d = l.get_mut(iid).unwrap();
    for e in d[16..].chunks_mut(16) {
        e[8..16].copy_from_slice(&user.to_u64().to_le_bytes());
    }
    assert_eq!(l.name_lookup(b"module_7"), Some(OwnerId(8)));
    assert_eq!(l.register_name(b"brand new", tag).unwrap(), Some(OwnerId(1001)));
    l.verify().unwrap();
}

#[test]
fn a_saved_table_is_adopted_only_by_a_table_that_handed_out_nothing() {
    let mut img = Img::with(1 << 16, Compaction::Deferred);
    let mut l = img.l();
    let tag = tag(1);
    let saved: Vec<(&[u8], OwnerId)> = vec![(b"x", OwnerId(3)), (b"y", OwnerId(2))];
    assert!(l.adopt_names(&saved, 7, tag).unwrap());
    assert_eq!(l.name_lookup(b"x"), Some(OwnerId(3)));
    assert_eq!(l.name_lookup(b"y"), Some(OwnerId(2)));
    assert_eq!(l.register_name(b"z", tag).unwrap(), Some(OwnerId(7)));
    assert!(!l.adopt_names(&saved, 9, tag).unwrap());
}

//! Unit, corruption, crash-simulation and model tests of the layout engine.

use super::*;
use crate::sys::failpoint::{sim, POINTS};
use proptest::prelude::*;
use std::collections::HashMap;

/// An 8-aligned heap image.
struct Img(Vec<u64>);

/// Bytes between the header and the trailer of a region of `size` bytes.
const fn room(size: u64) -> u64 {
    size - HEADER_SIZE as u64 - TRAILER_SIZE as u64
}

impl Img {
    /// An `Eager` image (mod_cachem's behaviour; most unit tests check the
    /// exact geometry it gives).
    fn new(size: usize) -> Img {
        Img::with(size, Compaction::Eager)
    }
    fn with(size: usize, compaction: Compaction) -> Img {
        let mut img = Img(vec![0u64; size / 8]);
        let opts = FormatOptions { generation: 0x1234_5678_9abc_def0, compaction, ..Default::default() };
        format(img.bytes(), &opts).unwrap();
        img
    }
    /// The engine's view (the image without its trailer), for `reopen`.
    fn view(&mut self) -> &mut [u8] {
        let b = self.bytes();
        let n = b.len() - TRAILER_SIZE;
        &mut b[..n]
    }
    fn bytes(&mut self) -> &mut [u8] {
        bytemuck::cast_slice_mut(&mut self.0)
    }
    fn l(&mut self) -> Layout<'_> {
        Layout::open(self.bytes()).unwrap()
    }
    fn hdr(&mut self) -> &mut Header {
        bytemuck::from_bytes_mut(&mut self.bytes()[..HEADER_SIZE])
    }
    fn bptr(&mut self, slot: u32) -> &mut Bptr {
        let size = self.bytes().len() as u64;
        let off = bptr_offset(size, slot) as usize;
        bytemuck::from_bytes_mut(&mut self.bytes()[off..off + BPTR_SIZE])
    }
}

const A: OwnerId = OwnerId(7);
const O: OwnerId = OwnerId(8);
fn tag(pid: u32) -> ProcTag {
    ProcTag { pid, start_time: 1000 + pid as u64 }
}

#[test]
fn empty_region_verifies() {
    let mut img = Img::new(4096);
    let l = img.l();
    let r = l.verify().unwrap();
    assert_eq!(
        r,
        VerifyReport {
            records: 0,
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
    assert_eq!(l.verify().unwrap().free_bytes, room(4096));
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
    // Slot 19 was the top entry: the table shrank by one.
    assert_eq!(st.slots, 19);
    assert_eq!(st.free_slots, 3);
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
fn table_top_shrinks_like_mod_cachem() {
    let mut img = Img::new(8192);
    let mut l = img.l();
    let ids: Vec<_> = (0..4).map(|_| l.insert(A, tag(1), b"x").unwrap()).collect();
    l.remove(ids[1]).unwrap();
    l.remove(ids[2]).unwrap();
    assert_eq!(l.status().unwrap().slots, 4);
    l.remove(ids[3]).unwrap();
    // Entries 3, 2 and 1 are unused: the table shrinks to entry 0 alone.
    let st = l.status().unwrap();
    assert_eq!((st.slots, st.free_slots, st.table_bytes), (1, 0, 32));
    l.verify().unwrap();
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

// ----- corruption -------------------------------------------------------

/// A small populated image: 4 records (slots 0..4), slot 1 removed.
fn populated() -> Img {
    let mut img = Img::new(8192);
    let mut l = img.l();
    let ids: Vec<_> = (0..4u8).map(|i| l.insert(A, tag(1), &[i; 20]).unwrap()).collect();
    l.remove(ids[1]).unwrap();
    img
}

fn expect_corrupt(img: &mut Img, field: &str) {
    let err = match Layout::open(img.bytes()) {
        Err(e) => e,
        Ok(l) => l.verify().expect_err("verify must fail"),
    };
    assert_eq!(err.corrupt_field(), Some(field), "expected Corrupt({field}), got {err}");
}

#[test]
fn corrupt_truncated_images() {
    for len in [0usize, 8, 200, 384] {
        let mut v = vec![0u64; 1024];
        let b: &mut [u8] = bytemuck::cast_slice_mut(&mut v);
        format(&mut b[..4096], &Default::default()).unwrap();
        let e = Layout::open(&mut b[..len]).map(|_| ()).unwrap_err();
        assert!(matches!(e, Error::Corrupt { .. }), "{len}: {e}");
    }
}

#[test]
fn corrupt_wrong_magic() {
    let mut img = populated();
    img.hdr().magic[0] = b'X';
    expect_corrupt(&mut img, "magic");
}

#[test]
fn corrupt_foreign_byte_order() {
    let mut img = populated();
    img.hdr().endian = ENDIAN_TAG.swap_bytes();
    let e = Layout::open(img.bytes()).map(|_| ()).unwrap_err();
    assert!(matches!(&e, Error::ForeignAbi { what } if what.contains("byte order")), "{e}");
}

#[test]
fn corrupt_future_version() {
    let mut img = populated();
    img.hdr().format_version = 4;
    let e = Layout::open(img.bytes()).map(|_| ()).unwrap_err();
    assert!(matches!(e, Error::Version { found: 4, supported: 3 }), "{e}");
}

#[test]
fn older_images_are_refused_with_what_to_do() {
    for old in [1, 2] {
        let mut img = populated();
        img.hdr().format_version = old;
        let e = Layout::open(img.bytes()).map(|_| ()).unwrap_err();
        assert!(matches!(e, Error::Version { found, supported: 3 } if found == old), "{e}");
        let msg = e.to_string();
        assert!(msg.contains("destroy") && msg.contains("re-create"), "{msg}");
    }
}

#[test]
fn corrupt_header_size_and_bptr_size() {
    let mut img = populated();
    img.hdr().header_size = 512;
    expect_corrupt(&mut img, "header_size");
    let mut img = populated();
    img.hdr().bptr_size = 16;
    expect_corrupt(&mut img, "bptr_size");
}

#[test]
fn corrupt_region_size_not_matching() {
    let mut img = populated();
    img.hdr().region_size = 16384;
    expect_corrupt(&mut img, "region_size");
}

#[test]
fn corrupt_o_st() {
    let mut img = populated();
    img.hdr().o_st = 0;
    expect_corrupt(&mut img, "o_st");
}

#[test]
fn corrupt_o_fr_out_of_range_or_unaligned() {
    for bad in [0u64, 100, 8193, 387, 1 << 40] {
        let mut img = populated();
        img.hdr().o_fr = bad;
        expect_corrupt(&mut img, "o_fr");
        // Operations refuse too.
        let mut l = Layout::reopen(img.view()).unwrap();
        assert!(l.insert(A, tag(1), b"x").is_err());
        assert!(l.get(RecordId::new(0, 1)).is_none());
    }
}

#[test]
fn corrupt_o_bptop_below_o_fr() {
    let mut img = populated();
    let fr = img.hdr().o_fr;
    img.hdr().o_bptop = fr - 8;
    expect_corrupt(&mut img, "o_bptop");
}

#[test]
fn corrupt_n_bptr_mismatch() {
    let mut img = populated();
    img.hdr().n_bptr = 1000;
    expect_corrupt(&mut img, "n_bptr");
}

#[test]
fn corrupt_free_list_cycle() {
    let mut img = populated();
    let mut l = img.l();
    let a = l.iter().find(|(m, _)| m.owner == A).unwrap().0.id; // slot order: the lowest
    l.remove(a).unwrap(); // two free entries now: 1 and 0
    let head = img.hdr().free_head;
    let first = head - 1;
    let second = img.bptr(first).next - 1;
    img.bptr(second).next = head; // second -> first -> second ...
    expect_corrupt(&mut img, "free_head");
}

#[test]
fn corrupt_free_list_into_used_entry() {
    let mut img = populated();
    img.hdr().free_head = 1; // slot 0 is in use
    expect_corrupt(&mut img, "free_head");
    let mut l = Layout::reopen(img.view()).unwrap();
    assert_eq!(l.insert(A, tag(1), b"x").unwrap_err().corrupt_field(), Some("free_head"));
}

#[test]
fn corrupt_entry_points_into_header_or_past_end() {
    for bad in [8u32, 200, 8192 - 8, 60000, u32::MAX - 7] {
        let mut img = populated();
        img.bptr(0).o_beg = bad;
        let e = Layout::open(img.bytes()).unwrap().verify().unwrap_err();
        assert!(matches!(e.corrupt_field(), Some("block") | Some("bptr.o_beg")), "{bad}: {e}");
        let l = Layout::reopen(img.view()).unwrap();
        let id = RecordId::new(0, l.bptr(0).gen);
        assert!(l.try_get(id).is_err());
    }
}

#[test]
fn corrupt_block_length_overflow() {
    let mut img = populated();
    let o = img.bptr(0).o_beg as usize;
    img.bytes()[o + 4..o + 8].copy_from_slice(&u32::MAX.to_ne_bytes());
    expect_corrupt(&mut img, "block.len");
    let l = Layout::reopen(img.view()).unwrap();
    let id = RecordId::new(0, l.bptr(0).gen);
    assert_eq!(l.try_get(id).unwrap_err().corrupt_field(), Some("block.len"));
}

#[test]
fn corrupt_block_back_pointer() {
    let mut img = populated();
    let o = img.bptr(2).o_beg as usize;
    img.bytes()[o..o + 4].copy_from_slice(&3u32.to_ne_bytes());
    expect_corrupt(&mut img, "bptr.o_beg");
}

#[test]
fn corrupt_record_count() {
    let mut img = populated();
    img.hdr().u_blks = 9;
    expect_corrupt(&mut img, "u_blks");
}

#[test]
fn corrupt_unknown_flags_and_options() {
    let mut img = populated();
    img.hdr().flags = 0x10;
    expect_corrupt(&mut img, "flags");
    let mut img = populated();
    img.hdr().options = 0x80;
    expect_corrupt(&mut img, "options");
}

#[test]
fn corrupt_impossible_journal() {
    let mut img = populated();
    let fr = img.hdr().o_fr;
    {
        let h = img.hdr();
        h.journal = Journal {
            op: JOURNAL_COMPACT,
            start: 384,
            src: 300,
            dst: 384,
            end: fr,
            ..bytemuck::Zeroable::zeroed()
        };
        h.flags = FLAG_RECOVERY_REQUIRED;
    }
    assert!(matches!(img.l().verify(), Err(Error::RecoveryRequired)));
    assert_eq!(img.l().recover().unwrap_err().corrupt_field(), Some("journal"));
    // A move past the end of the block section.
    let mut img = populated();
    let fr = img.hdr().o_fr;
    img.hdr().journal = Journal {
        op: JOURNAL_COMPACT,
        start: 384,
        src: 392,
        dst: 384,
        end: fr,
        live_from: fr,
        mv_src: 392,
        mv_dst: 384,
        mv_len: 1 << 20,
        ..bytemuck::Zeroable::zeroed()
    };
    assert_eq!(img.l().recover().unwrap_err().corrupt_field(), Some("journal.mv"));
    // live_from outside [start, end].
    let mut img = populated();
    let fr = img.hdr().o_fr;
    img.hdr().journal = Journal {
        op: JOURNAL_COMPACT,
        start: 392,
        src: 392,
        dst: 392,
        end: fr,
        live_from: 8,
        ..bytemuck::Zeroable::zeroed()
    };
    assert_eq!(img.l().recover().unwrap_err().corrupt_field(), Some("journal"));
    // A failed recovery leaves the region marked, so the next one runs again.
    assert!(img.l().recovery_required());
    // Unknown journal operation.
    let mut img = populated();
    img.hdr().journal.op = 9;
    assert_eq!(img.l().recover().unwrap_err().corrupt_field(), Some("journal.op"));
}

#[test]
fn corrupt_top_entry_unused() {
    let mut img = populated();
    let top = img.hdr().n_bptr - 1;
    let l = img.l();
    let id = RecordId::new(top, l.bptr(top).gen);
    assert!(l.get(id).is_some());
    // Make the top entry look unused without fixing the table.
    let o = img.bptr(top).o_beg;
    img.bptr(top).o_beg = 0;
    let e = img.l().verify().unwrap_err();
    assert!(e.corrupt_field().is_some(), "{e}");
    img.bptr(top).o_beg = o;
    img.l().verify().unwrap();
}

// ----- crash simulation ---------------------------------------------------

fn snapshot(l: &Layout<'_>) -> Vec<(RecordId, Vec<u8>)> {
    let mut v: Vec<_> = l.iter().map(|(m, d)| (m.id, d.to_vec())).collect();
    v.sort();
    v
}

/// Runs `op` with a simulated crash at the `nth` hit of `point`, recovers,
/// and checks the result is exactly `before` or exactly `after`.
type CrashOp = dyn Fn(&mut Layout<'_>) -> Result<()>;

fn crash_case(policy: Compaction, point: &'static str, nth: u32, batch: bool, op: &CrashOp) -> Option<bool> {
    let mut img = Img::with(65536, policy);
    let mut l = img.l();
    for i in 0..40u32 {
        l.insert(if i % 2 == 0 { A } else { O }, tag(i % 5), &vec![i as u8; (i as usize * 7) % 90]).unwrap();
    }
    for i in (0..40).step_by(6) {
        let id = l.next_of_owner(A, Some(RecordId::new(i, 0))).unwrap();
        l.remove(id).unwrap();
    }
    let before = snapshot(&l);
    // The same op on a copy, uninterrupted, gives "after".
    let mut copy = Img(img.0.clone());
    let mut lc = copy.l();
    op(&mut lc).unwrap();
    let after = snapshot(&lc);
    let mut l = img.l();
    sim::arm(point, nth);
    let res = std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| op(&mut l)));
    let missed = sim::disarm();
    if missed {
        res.unwrap().unwrap();
        return None;
    }
    assert!(res.is_err(), "the simulated crash happened");
    let mut l = img.l();
    l.recover().unwrap_or_else(|e| panic!("{point}#{nth}: recovery failed: {e}"));
    l.verify().unwrap();
    let got = snapshot(&l);
    if batch {
        // A batch removal cut short by a crash removed some of its victims,
        // each entirely: every record is as before or removed, and every
        // record kept by the batch is there.
        assert!(got.iter().all(|r| before.contains(r)), "{point}#{nth}: a record changed");
        assert!(after.iter().all(|r| got.contains(r)), "{point}#{nth}: a kept record was lost");
    } else {
        assert!(got == before || got == after, "{point}#{nth}: state is neither before nor after");
    }
    // The region stays usable.
    let x = l.insert(A, tag(9), b"after recovery").unwrap();
    l.remove(x).unwrap();
    l.verify().unwrap();
    Some(got == after)
}

#[test]
fn every_fault_point_recovers_to_before_or_after() {
    let ops: Vec<(&str, Box<CrashOp>)> = vec![
        ("compact", Box::new(|l: &mut Layout<'_>| l.compact_now().map(|_| ()))),
        (
            "remove-then-compact",
            Box::new(|l: &mut Layout<'_>| {
                let id = l.iter().nth(7).unwrap().0.id;
                l.remove(id)?;
                l.compact_now().map(|_| ())
            }),
        ),
        ("insert", Box::new(|l: &mut Layout<'_>| l.insert(A, tag(3), &[0xAB; 50]).map(|_| ()))),
        ("remove-front", Box::new(|l: &mut Layout<'_>| l.remove(l.next_of_owner(O, None).unwrap()))),
        (
            "remove-mid",
            Box::new(|l: &mut Layout<'_>| {
                let id = l.iter().nth(15).unwrap().0.id;
                l.remove(id)
            }),
        ),
        ("purge", Box::new(|l: &mut Layout<'_>| l.purge(O, 1).map(|_| ()))),
        ("retain", Box::new(|l: &mut Layout<'_>| l.retain(|m, _| m.len % 3 != 0).map(|_| ()))),
    ];
    for policy in [Compaction::Eager, Compaction::Deferred] {
        let mut hits = 0;
        let mut points = std::collections::BTreeSet::new();
        for (name, op) in &ops {
            for point in POINTS {
                for nth in 1..=3 {
                    let batch = matches!(*name, "purge" | "retain");
                    if let Some(done) = crash_case(policy, point, nth, batch, op.as_ref()) {
                        hits += 1;
                        points.insert(*point);
                        // A crash before the journal/publish rolls back; after, it completes.
                        let started = point.starts_with("compact") || point.starts_with("defer");
                        if started && !(batch && policy == Compaction::Deferred) {
                            assert!(
                                done,
                                "{policy:?} {name} at {point}: a started compaction/remove completes"
                            );
                        }
                    }
                }
            }
        }
        assert!(hits >= 25, "{policy:?}: only {hits} fault-point cases were reached");
        // Every point of the policy's paths is reached by some operation.
        for p in POINTS {
            let applies = match policy {
                Compaction::Eager => !p.starts_with("defer") && *p != "compact.after_journal",
                Compaction::Deferred => !p.starts_with("remove."),
            };
            assert_eq!(points.contains(p), applies, "{policy:?}: point {p}");
        }
    }
}

// ----- model test ---------------------------------------------------------

#[derive(Debug, Clone)]
enum Op {
    Insert {
        owner: u32,
        pid: u32,
        len: usize,
        byte: u8,
    },
    Remove(usize),
    GetMut(usize, u8),
    Purge {
        owner: u32,
        pid: u32,
    },
    RetainLen(usize),
    Stale(usize),
    Compact,
    /// Walks an owner with `next_of_owner`, removing every `every`-th
    /// record it visits: before asking for the next (`ask_first`) or after
    /// (asking with the removed id).
    IterRemove {
        owner: u32,
        every: usize,
        ask_first: bool,
    },
}

/// Owners of the model: 0 and 26 share owner bucket 0, 1 and 27 bucket 1.
const MODEL_OWNERS: [u32; 6] = [0, 1, 2, 3, 26, 27];

fn op_strategy() -> impl Strategy<Value = Op> {
    prop_oneof![
        5 => (0..6usize, 1..4u32, 0..120usize, any::<u8>()).prop_map(|(o, pid, len, byte)| Op::Insert { owner: MODEL_OWNERS[o], pid, len, byte }),
        3 => any::<usize>().prop_map(Op::Remove),
        2 => (any::<usize>(), any::<u8>()).prop_map(|(i, b)| Op::GetMut(i, b)),
        1 => (0..6usize, 1..4u32).prop_map(|(o, pid)| Op::Purge { owner: MODEL_OWNERS[o], pid }),
        1 => (0..6usize, 1..4usize, any::<bool>()).prop_map(|(o, every, ask_first)| Op::IterRemove { owner: MODEL_OWNERS[o], every, ask_first }),
        1 => (0..120usize).prop_map(Op::RetainLen),
        1 => any::<usize>().prop_map(Op::Stale),
        1 => Just(Op::Compact),
    ]
}

proptest! {
    #![proptest_config(ProptestConfig { cases: 256, ..ProptestConfig::default() })]

    #[test]
    fn model(deferred in any::<bool>(), ops in proptest::collection::vec(op_strategy(), 1..120)) {
        let policy = if deferred { Compaction::Deferred } else { Compaction::Eager };
        let mut img = Img::with(8192, policy);
        let mut l = img.l();
        let mut model: HashMap<RecordId, (u32, u32, Vec<u8>)> = HashMap::new();
        let mut dead: Vec<RecordId> = vec![];
        let pick = |m: &HashMap<RecordId, (u32, u32, Vec<u8>)>, i: usize| {
            let mut k: Vec<_> = m.keys().copied().collect();
            k.sort();
            (!k.is_empty()).then(|| k[i % k.len()])
        };
        for op in ops {
            match op {
                Op::Insert { owner, pid, len, byte } => {
                    let data = vec![byte; len];
                    let free = l.free_bytes().unwrap();
                    match l.insert(OwnerId(owner), ProcTag { pid, start_time: 0 }, &data) {
                        Ok(id) => { prop_assert!(model.insert(id, (owner, pid, data)).is_none()); }
                        Err(Error::Full { needed, free: f }) => {
                            // Deferred: the insert compacted first, so the
                            // gap may have grown; no dead byte is left.
                            if deferred {
                                prop_assert!(f >= free);
                            } else {
                                prop_assert_eq!(f, free);
                            }
                            prop_assert!(needed > f);
                            prop_assert_eq!(l.dead_bytes(), 0);
                        }
                        Err(e) => prop_assert!(false, "{}", e),
                    }
                }
                Op::Remove(i) => if let Some(id) = pick(&model, i) {
                    l.remove(id).unwrap();
                    model.remove(&id);
                    dead.push(id);
                },
                Op::GetMut(i, b) => if let Some(id) = pick(&model, i) {
                    let m = model.get_mut(&id).unwrap();
                    if let Some(x) = l.get_mut(id).unwrap().first_mut() { *x = b; m.2[0] = b; }
                },
                Op::Purge { owner, pid } => {
                    let n = l.purge(OwnerId(owner), pid).unwrap();
                    let before = model.len();
                    model.retain(|id, (o, p, _)| { let k = !(*o == owner && *p == pid); if !k { dead.push(*id) }; k });
                    prop_assert_eq!(n, before - model.len());
                }
                Op::RetainLen(n) => {
                    let r = l.retain(|m, _| m.len as usize != n).unwrap();
                    let before = model.len();
                    model.retain(|id, (_, _, d)| { let k = d.len() != n; if !k { dead.push(*id) }; k });
                    prop_assert_eq!(r.records, before - model.len());
                }
                Op::Compact => {
                    let used = l.verify().unwrap().used_bytes;
                    let dead_bytes = l.dead_bytes();
                    let moved = l.compact_now().unwrap();
                    let v = l.verify().unwrap();
                    prop_assert_eq!((v.dead_bytes, v.used_bytes), (0, used - dead_bytes));
                    prop_assert!(moved <= used);
                }
                Op::Stale(i) => if !dead.is_empty() {
                    let id = dead[i % dead.len()];
                    prop_assert!(l.get(id).is_none());
                    prop_assert!(matches!(l.remove(id), Err(Error::Stale(_))));
                },
                Op::IterRemove { owner, every, ask_first } => {
                    let mut want: Vec<RecordId> = model.iter().filter(|(_, r)| r.0 == owner).map(|(id, _)| *id).collect();
                    want.sort();
                    let (mut seen, mut cur) = (Vec::new(), None);
                    while let Some(id) = l.next_of_owner(OwnerId(owner), cur) {
                        prop_assert!(seen.len() < want.len(), "visits more than the owner's records");
                        seen.push(id);
                        let remove = seen.len() % every == 0;
                        if remove && ask_first {
                            let next = l.next_of_owner(OwnerId(owner), Some(id));
                            l.remove(id).unwrap();
                            model.remove(&id);
                            dead.push(id);
                            // The id asked for before the remove is the one asked after.
                            prop_assert_eq!(l.next_of_owner(OwnerId(owner), Some(id)), next);
                        } else if remove {
                            l.remove(id).unwrap();
                            model.remove(&id);
                            dead.push(id);
                        }
                        cur = Some(id);
                    }
                    seen.sort();
                    prop_assert_eq!(seen, want, "each record of the owner exactly once");
                }
            }
            for owner in MODEL_OWNERS {
                let mut want: Vec<RecordId> = model.iter().filter(|(_, r)| r.0 == owner).map(|(id, _)| *id).collect();
                want.sort();
                let mut got: Vec<RecordId> = l.iter_owner(OwnerId(owner)).map(|(id, _)| id).collect();
                got.sort();
                prop_assert_eq!(got, want, "iter_owner({})", owner);
            }
            let rep = l.verify().unwrap();
            prop_assert_eq!(rep.records as usize, model.len());
            if !deferred {
                prop_assert_eq!(rep.dead_bytes, 0);
            }
            // Dead bytes never pass half of the block section.
            prop_assert!(rep.dead_bytes * 2 <= rep.used_bytes, "{:?}", rep);
            for (id, (owner, pid, data)) in &model {
                prop_assert_eq!(l.get(*id).unwrap(), &data[..]);
                let m = l.meta(*id).unwrap();
                prop_assert_eq!((m.owner.0, m.pid), (*owner, *pid));
            }
            prop_assert_eq!(l.iter().count(), model.len());
        }
    }
}

// ----- deferred compaction -----------------------------------------------

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
    let (mut dead, mut compactions, mut live_bytes) = (0u64, 0u64, full.used_bytes);
    for (k, (id, size)) in ids.iter().enumerate() {
        l.remove(*id).unwrap();
        live_bytes -= size;
        dead += size;
        let c = l.counters().compactions;
        if c != compactions {
            compactions = c;
            dead = 0;
        }
        assert_eq!(l.dead_bytes(), dead, "after {} removes", k + 1);
        if k == N / 2 || k % 20_000 == 0 {
            let v = l.verify().unwrap();
            assert_eq!((v.dead_bytes, v.used_bytes - v.dead_bytes), (dead, live_bytes));
            assert!(v.dead_bytes * 2 <= v.used_bytes);
        }
        if k == N / 2 {
            // On demand, mid-way: every dead byte comes back.
            let free = l.free_bytes().unwrap();
            l.compact_now().unwrap();
            compactions += 1;
            let v = l.verify().unwrap();
            assert_eq!((v.dead_bytes, v.used_bytes, v.free_bytes), (0, live_bytes, free + dead));
            dead = 0;
        }
    }
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

// ----- owner index ---------------------------------------------------------

/// Owner `A` and one that shares its bucket.
const A2: OwnerId = OwnerId(A.0 + OWNER_BUCKETS as u32);

fn steps() -> u64 {
    owner_index::STEPS.with(|s| s.get())
}

fn ids_of(l: &Layout<'_>, owner: OwnerId) -> Vec<RecordId> {
    let (mut v, mut cur) = (Vec::new(), None);
    while let Some(id) = l.next_of_owner(owner, cur) {
        assert!(v.len() < 100_000, "next_of_owner does not end");
        v.push(id);
        cur = Some(id);
    }
    v
}

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
            _ => OwnerId(100 + i % 5),
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
    // The top entry is dropped with its note when the table shrinks: the
    // header's copy of the last note keeps the place.
    let mut img = Img::new(8192);
    let mut l = img.l();
    let ids: Vec<_> = (0..6u8).map(|i| l.insert(A, tag(1), &[i]).unwrap()).collect();
    // A newer record in a lower slot: the top entry (slot 5) is not last.
    l.remove(ids[0]).unwrap();
    let newer = l.insert(A, tag(1), b"newer").unwrap();
    assert_eq!(newer.slot(), 0);
    assert_eq!(l.next_of_owner(A, Some(ids[4])), Some(ids[5]));
    l.remove(ids[5]).unwrap();
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

// ----- owner index: a review's reproductions ------------------------------

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

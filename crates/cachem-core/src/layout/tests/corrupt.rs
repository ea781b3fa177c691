//! Corruption tests: every damaged header field, block, entry, free list
//! and journal is reported as `Corrupt` naming the field, never a panic.

use super::*;
use bytemuck::Zeroable;

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
    img.hdr().format_version = FORMAT_VERSION + 1;
    let e = Layout::open(img.bytes()).map(|_| ()).unwrap_err();
    assert!(
        matches!(e, Error::Version { found, supported: FORMAT_VERSION } if found == FORMAT_VERSION + 1),
        "{e}"
    );
}

#[test]
fn older_images_are_refused_with_what_to_do() {
    for old in 1..FORMAT_VERSION {
        let mut img = populated();
        img.hdr().format_version = old;
        let e = Layout::open(img.bytes()).map(|_| ()).unwrap_err();
        assert!(matches!(e, Error::Version { found, supported: FORMAT_VERSION } if found == old), "{e}");
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
        h.journal =
            Journal { op: JOURNAL_COMPACT, start: 384, src: 300, dst: 384, end: fr, ..Zeroable::zeroed() };
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
        ..Zeroable::zeroed()
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
        ..Zeroable::zeroed()
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

/// Issue 21 case 4: four records on a 64 KiB region (blocks at 384, 424,
/// 464 and 544, `o_fr` 624), then a false but well-formed journal written
/// at the offsets of docs/format.md (header 116 `flags`, 120 the journal).
fn false_journal_image(policy: Compaction) -> Img {
    let mut img = Img::with(65536, policy);
    let mut l = img.l();
    for (i, len) in [32usize, 32, 72, 72].into_iter().enumerate() {
        l.insert(A, tag(1), &vec![0x10 + i as u8; len]).unwrap();
    }
    assert_eq!(img.hdr().o_fr, 624);
    let b = img.bytes();
    let put =
        |b: &mut [u8], at: usize, v: u64, n: usize| b[at..at + n].copy_from_slice(&v.to_ne_bytes()[..n]);
    put(b, 116, 1, 4); // flags: RECOVERY_REQUIRED
    put(b, 120, 1, 4); // journal.op: compaction
    put(b, 128, 384, 8); // start
    put(b, 136, 424, 8); // src
    put(b, 144, 384, 8); // dst
    put(b, 152, 624, 8); // end
    put(b, 160, 624, 8); // live_from
    img
}

/// A compaction journal with no move in progress.
fn journal(start: u64, src: u64, dst: u64, end: u64, live_from: u64) -> Journal {
    Journal { op: JOURNAL_COMPACT, start, src, dst, end, live_from, mv_src: NO_MOVE, ..Zeroable::zeroed() }
}

#[test]
fn a_false_journal_is_refused_before_anything_is_written() {
    for policy in [Compaction::Eager, Compaction::Deferred] {
        let mut img = false_journal_image(policy);
        let found = img.bytes().to_vec();
        let e = img.l().check_journal().unwrap_err();
        assert_eq!(e.corrupt_field(), Some("journal"), "{e}");
        let e = img.l().recover().unwrap_err();
        let msg = e.to_string();
        assert_eq!(e.corrupt_field(), Some("journal"), "{policy}: {e}");
        assert!(msg.contains("slot 0") && msg.contains("bptr.o_beg 384"), "{msg}");
        assert!(img.bytes() == &found[..], "{policy}: recovery changed the image before refusing");
        // Still refused, still unchanged, every time it is tried.
        assert!(img.l().recover().is_err());
        assert!(img.bytes() == &found[..]);
    }
}

#[test]
fn journal_checks_before_moving_refuse_each_false_fact() {
    // Each case: a well-formed journal that breaks one fact a true one
    // guarantees; recovery refuses it, changing nothing.
    type Edit = fn(&mut Img);
    let cases: Vec<(&str, Edit)> = vec![
        // A hole past the first record: record 2 (at 424) lies in it.
        ("hole over a live block", |img| img.hdr().journal = journal(384, 464, 424, 624, 624)),
        // Every block past live_from must be live: slot 3's block is not.
        ("dead past live_from", |img| {
            img.hdr().journal = journal(544, 544, 544, 624, 544);
            img.bptr(3).o_beg = 0;
            img.hdr().flags = 1;
        }),
        // o_fr is neither the journal's end nor its final dst.
        ("o_fr", |img| {
            img.hdr().journal = journal(544, 544, 544, 624, 624);
            img.hdr().o_fr = 664;
        }),
        // A move whose run does not start with the entries' blocks: the
        // run [464, 624) moved to 424 claims 80 bytes already copied, but
        // 424 still holds record 2, whose entry points there.
        ("run half copied over a live block", |img| {
            img.hdr().journal = Journal {
                op: 1,
                start: 424,
                src: 464,
                dst: 424,
                end: 624,
                live_from: 624,
                mv_src: 464,
                mv_dst: 424,
                mv_len: 160,
                mv_done: 40,
                ..Zeroable::zeroed()
            }
        }),
    ];
    for policy in [Compaction::Eager, Compaction::Deferred] {
        for (what, edit) in &cases {
            let mut img = false_journal_image(policy);
            img.hdr().journal = Zeroable::zeroed();
            edit(&mut img);
            let found = img.bytes().to_vec();
            let e = img.l().recover().expect_err(what);
            assert!(matches!(e, Error::Corrupt { .. }), "{policy} {what}: {e}");
            assert!(img.bytes() == &found[..], "{policy} {what}: recovery changed the image ({e})");
        }
    }
}

#[test]
fn an_entry_past_o_fr_and_a_lowered_o_fr_name_the_field() {
    // Entry 3 damaged to point at o_fr.
    let mut img = false_journal_image(Compaction::Eager);
    img.hdr().flags = 0;
    img.hdr().journal = Zeroable::zeroed();
    img.bptr(3).o_beg = 624;
    let e = img.l().verify().unwrap_err();
    assert_eq!(e.corrupt_field(), Some("bptr.o_beg"), "{e}");
    assert!(e.to_string().contains("slot 3: bptr.o_beg 624 is at or past o_fr 624"), "{e}");
    let l = img.l();
    let e = l.try_get(RecordId::new(3, l.bptr(3).gen)).unwrap_err();
    assert!(e.to_string().contains("slot 3: bptr.o_beg 624"), "{e}");
    // o_fr lowered below the last two blocks.
    let mut img = false_journal_image(Compaction::Eager);
    img.hdr().flags = 0;
    img.hdr().journal = Zeroable::zeroed();
    img.hdr().o_fr = 464;
    let e = img.l().verify().unwrap_err();
    assert_eq!(e.corrupt_field(), Some("o_fr"), "{e}");
    assert!(e.to_string().contains("header o_fr 464"), "{e}");
    // Recovery (flag set) refuses too, instead of rolling back records 2
    // and 3 as if they were inserts cut short.
    img.hdr().flags = FLAG_RECOVERY_REQUIRED;
    let found = img.bytes().to_vec();
    let e = img.l().recover().unwrap_err();
    assert_eq!(e.corrupt_field(), Some("o_fr"), "{e}");
    assert!(img.bytes() == &found[..], "recovery rolled back records before refusing");
}

#[test]
fn generation_zero_is_refused_and_never_handed_out() {
    for policy in [Compaction::Eager, Compaction::Deferred] {
        let mut img = Img::with(65536, policy);
        let mut l = img.l();
        let ids: Vec<_> = (0..6u8).map(|i| l.insert(A, tag(1), &[i; 16]).unwrap()).collect();
        l.remove(ids[3]).unwrap();
        l.compact_now().unwrap();
        assert_eq!(img.bptr(3).o_beg, 0);
        img.bptr(3).gen = 0;
        let e = img.l().verify().unwrap_err();
        assert_eq!(e.corrupt_field(), Some("bptr.gen"), "{e}");
        assert!(e.to_string().contains("slot 3"), "{e}");
        // An insert takes the free entry but not its generation 0.
        let mut l = img.l();
        let new = l.insert(A, tag(1), b"new").unwrap();
        assert_eq!(new.slot(), 3);
        assert_ne!(new.generation(), 0);
        l.verify().unwrap();
        // The documented loop (remove, then ask for the one after it)
        // visits every record.
        let want: Vec<_> = l.iter_owner(A).map(|(id, _)| id).collect();
        assert_eq!(want.len(), 6);
        let (mut got, mut cur) = (Vec::new(), l.next_of_owner(A, None));
        while let Some(id) = cur {
            got.push(id);
            l.remove(id).unwrap();
            cur = l.next_of_owner(A, Some(id));
        }
        assert_eq!(got, want, "{policy}");
    }
}

#[test]
fn a_length_shortened_within_its_padding_is_reported() {
    let mut img = populated();
    let o = img.bptr(2).o_beg as usize;
    // 20 data bytes (all 2) padded to 24: shorten len to 19.
    img.bytes()[o + 4..o + 8].copy_from_slice(&19u32.to_ne_bytes());
    let e = img.l().verify().unwrap_err();
    assert_eq!(e.corrupt_field(), Some("block.len"), "{e}");
    assert!(e.to_string().contains("padding"), "{e}");
}

//! Corruption tests: every damaged header field, block, entry, free list
//! and journal is reported as `Corrupt` naming the field, never a panic.

use super::*;

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
    img.hdr().format_version = 5;
    let e = Layout::open(img.bytes()).map(|_| ()).unwrap_err();
    assert!(matches!(e, Error::Version { found: 5, supported: 4 }), "{e}");
}

#[test]
fn older_images_are_refused_with_what_to_do() {
    // Version 3 had no name table: its writers would treat the table's
    // records as users' (reap them, list them, purge them).
    for old in [1, 2, 3] {
        let mut img = populated();
        img.hdr().format_version = old;
        let e = Layout::open(img.bytes()).map(|_| ()).unwrap_err();
        assert!(matches!(e, Error::Version { found, supported: 4 } if found == old), "{e}");
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

//! Writes the seed inputs of tests/fuzz_corpus/ (replayed by
//! tests/fuzz_regressions.rs, copied into fuzz/corpus/image by run.sh).
//! Run from fuzz/: `cargo run --example gen_seeds`.
use cachem_core::format::*;
use cachem_core::layout::{format, FormatOptions, Layout, ProcTag};
use cachem_core::{bytemuck, Compaction, OwnerId};
use cachem_fuzz::image_driver::built_image;

/// A valid `Eager` image of `size` bytes with a few records and one free slot.
fn valid(size: usize) -> Vec<u8> {
    valid_with(size, Compaction::Eager)
}

/// The same records under `policy` (`Deferred`: one dead block).
fn valid_with(size: usize, compaction: Compaction) -> Vec<u8> {
    let mut w = vec![0u64; size / 8];
    let b: &mut [u8] = bytemuck::cast_slice_mut(&mut w);
    let opts = FormatOptions { generation: 0xc0ffee, mutex_size: 40, compaction, ..Default::default() };
    format(b, &opts).unwrap();
    let mut l = Layout::open(b).unwrap();
    let mut ids = Vec::new();
    for (i, len) in [0usize, 5, 17, 64, 100].into_iter().enumerate() {
        let tag = ProcTag { pid: 40 + i as u32 % 2, start_time: 99 };
        ids.push(l.insert(OwnerId(i as u32 % 3), tag, &vec![0x41 + i as u8; len]).unwrap());
    }
    l.remove(ids[1]).unwrap();
    l.verify().unwrap();
    b.to_vec()
}

fn hdr(b: &mut [u8]) -> &mut Header {
    bytemuck::from_bytes_mut(&mut b[..HEADER_SIZE])
}

fn main() {
    let dir = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("../tests/fuzz_corpus");
    std::fs::create_dir_all(&dir).unwrap();
    let mut seeds: Vec<(&str, Vec<u8>)> = Vec::new();
    seeds.push(("valid_4096_records", valid(4096)));
    seeds.push(("truncated_8192_to_4096", valid(8192)[..4096].to_vec()));
    seeds.push(("truncated_8192_to_4100", valid(8192)[..4100].to_vec()));
    let mut b = valid(4096);
    hdr(&mut b).o_fr += 4;
    seeds.push(("o_fr_unaligned", b));
    let mut b = valid(4096);
    let h = hdr(&mut b);
    h.o_fr = h.o_bptop + 8;
    seeds.push(("o_fr_past_o_bptop", b));
    let mut b = valid(4096);
    hdr(&mut b).o_fr -= 8;
    seeds.push(("o_fr_inside_last_block", b));
    let mut b = valid(4096);
    let h = hdr(&mut b);
    h.journal.op = JOURNAL_COMPACT;
    h.flags |= FLAG_RECOVERY_REQUIRED;
    let garbage: [u8; 72] = std::array::from_fn(|i| (i as u8).wrapping_mul(37) ^ 0x5c);
    bytemuck::bytes_of_mut(&mut h.journal)[8..].copy_from_slice(&garbage);
    seeds.push(("journal_op1_garbage", b));
    let mut b = valid(4096);
    hdr(&mut b).journal.op = 7;
    seeds.push(("journal_unknown_op", b));
    // Overlay inputs (< 4096 bytes): byte 0 size, byte 1 population/crash.
    // 0x5b: 11 records, crash inside a remove with part of the tail moved.
    seeds.push(("crash_mid_move_raw", built_image(&[0x00, 0x5b])));
    seeds.push(("overlay_crash_mid_move", vec![0x00, 0x5b]));
    seeds.push(("overlay_crash_after_clear", vec![0x01, 0x1e]));
    // o_bptop (offset 96) set to an unaligned value inside the table.
    let mut p = vec![0x02, 0x0c, 96, 0, 8];
    p.extend_from_slice(&(4096u64 + 512 * 2 - 20).to_ne_bytes());
    seeds.push(("overlay_o_bptop_unaligned", p));
    // Table entry 0's next (from the end: size-1-71 = size-64-32 + 24,
    // the table ends at the 64-byte lock trailer) pointing at itself, and
    // free_head (offset 112) = 1: a free-list cycle.
    seeds.push(("overlay_free_list_cycle", vec![0x00, 0x07, 71, 0x80, 4, 1, 0, 0, 0, 112, 0, 4, 1, 0, 0, 0]));
    // The first block's len (offset 388) = u32::MAX.
    seeds.push(("overlay_block_len_huge", vec![0x00, 0x05, 0x84, 0x01, 4, 0xff, 0xff, 0xff, 0xff]));
    // Format v2: Deferred images (byte 0 bit 7) with dead blocks.
    let mut b = valid_with(4096, Compaction::Deferred);
    seeds.push(("valid_deferred_dead_block", b.clone()));
    hdr(&mut b).dead_bytes += 8;
    seeds.push(("deferred_dead_bytes_wrong", b));
    let mut b = valid_with(4096, Compaction::Deferred);
    hdr(&mut b).dead_lo = HEADER_SIZE as u64;
    seeds.push(("deferred_dead_lo_wrong", b));
    let mut b = valid(4096);
    b[HEADER_SIZE..HEADER_SIZE + 4].copy_from_slice(&DEAD_SLOT.to_ne_bytes());
    seeds.push(("eager_dead_marker", b));
    let mut b = valid(4096);
    hdr(&mut b).compaction = 9;
    seeds.push(("compaction_unknown", b));
    let mut b = valid(4096);
    hdr(&mut b).format_version = 1;
    seeds.push(("format_version_1", b));
    let mut b = valid(4096);
    hdr(&mut b).format_version = 2;
    seeds.push(("format_version_2", b));
    // Format v3, the owner index. Bucket 0's chain is slot 0 -> slot 3;
    // entry 3's `next` (offset 24) linked back to slot 0: a cycle.
    let mut b = valid(4096);
    let at = bptr_offset(4096, 3) as usize + 24;
    b[at..at + 4].copy_from_slice(&1u32.to_ne_bytes());
    seeds.push(("owner_chain_cycle", b));
    // Bucket 1's head naming the free entry 1.
    let mut b = valid(4096);
    hdr(&mut b).owner_heads[1] = 2;
    seeds.push(("owner_head_unused_entry", b));
    // 14 records, 5 removed (dead), a remove killed after marking its block.
    seeds.push(("overlay_deferred_crash_after_mark", vec![0x80, 0x1e]));
    seeds.push(("overlay_deferred_crash_after_mark_2", vec![0x83, 0xbd]));
    // Deferred with a compaction journal killed mid-move.
    seeds.push(("overlay_deferred_crash_mid_move", vec![0x81, 0x5b]));
    // The crash seeds do describe interrupted removes.
    for d in [&[0x00, 0x5b][..], &[0x01, 0x1e], &[0x81, 0x5b]] {
        let mut w: Vec<u64> =
            built_image(d).chunks(8).map(|c| u64::from_ne_bytes(c.try_into().unwrap())).collect();
        let j = bytemuck::from_bytes::<Header>(&bytemuck::cast_slice::<u64, u8>(&w)[..HEADER_SIZE]).journal;
        let l = Layout::open(bytemuck::cast_slice_mut(&mut w)).unwrap();
        assert!(l.recovery_required(), "{d:?} is not a crash state");
        println!("{d:02x?}: journal {j:?}");
    }
    for (name, data) in &seeds {
        std::fs::write(dir.join(name), data).unwrap();
    }
    let total: usize = seeds.iter().map(|(_, d)| d.len()).sum();
    println!("wrote {} seeds ({total} bytes) to {}", seeds.len(), dir.display());
}

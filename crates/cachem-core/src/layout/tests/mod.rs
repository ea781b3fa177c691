//! Unit, corruption, crash-simulation and model tests of the layout engine,
//! one file per concern (`records`, `corrupt`, `cost`, `crash`, `model`, `deferred`,
//! `owner_index`, `owner_index_reviews`); this file holds the helpers they
//! share (heap images, owners, snapshots).

use super::*;

mod corrupt;
mod cost;
mod crash;
mod deferred;
mod model;
mod owner_index;
mod owner_index_reviews;
mod records;

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

fn snapshot(l: &Layout<'_>) -> Vec<(RecordId, Vec<u8>)> {
    let mut v: Vec<_> = l.iter().map(|(m, d)| (m.id, d.to_vec())).collect();
    v.sort();
    v
}

/// Owner `A` and one that shares its bucket.
const A2: OwnerId = OwnerId(A.0 + NAMES_INDEX_BUCKET as u32);

fn steps() -> u64 {
    super::owner_index::STEPS.with(|s| s.get())
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

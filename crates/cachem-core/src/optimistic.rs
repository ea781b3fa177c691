//! Optimistic reads: copying a record out without the lock.
//!
//! Every writer makes the region's version word (in the trailer, see
//! `format::version_offset`) odd before it changes anything a reader may
//! follow and even again when it is done (`region::Guard`). A reader loads
//! the version, copies the record out word by word, loads the version again
//! and keeps the copy only if both loads saw the same even value: then no
//! writer ran in between and the copy is what a locked get would have
//! returned. See `docs/design.md` ("Optimistic reads").
//!
//! This module is the reader's logic, free of `unsafe`: it sees the region
//! through [`Words`], which loads aligned 8-byte words (atomically, for a
//! mapping: `sys::seqlock`). Every value it loads may be torn or stale, so
//! every offset and length is bounds-checked before it is used, and a load
//! outside the image is refused by [`Words::word`] and
//! [`Words::copy_words`] themselves: whatever the
//! bytes, a reader never reads outside the region and never panics. A
//! snapshot that is not plainly good (a journal pending, any check failing)
//! is not judged here: the caller falls back to the lock, which recovers or
//! reports the corruption exactly as a locked get does.

use crate::error::{Error, Result};
use crate::format::{
    block_size, bptr_offset, Header, BLOCK_HEADER_SIZE, BPTR_SIZE, COMPACTION_DEFERRED,
    FLAG_RECOVERY_REQUIRED, HEADER_SIZE, JOURNAL_COMPACT, JOURNAL_NONE, TRAILER_SIZE,
};
use crate::ids::RecordId;
use std::mem::offset_of;

/// Attempts before a reader gives up and takes the lock. With the backoff
/// in [`read`] (1, 2, 4, 8, then 16 spin hints between attempts) a reader
/// spins about 200 `pause`s (1-10 µs depending on the CPU) before it waits
/// on the mutex instead: a writer that keeps the version odd longer (a
/// compaction, a writer looping back to back) is better waited for there.
pub const TRIES: u32 = 16;

/// A region image seen as 8-byte words, for optimistic reads.
pub trait Words {
    /// Length of the image in bytes, trailer included (the mapping's own
    /// length: trusted, never read from the region).
    fn image_len(&self) -> u64;
    /// The aligned word at `off`, or `None` if `off` is unaligned or the
    /// word is not entirely inside the image.
    fn word(&self, off: u64) -> Option<u64>;
    /// Loads the version word before a snapshot (acquire).
    fn version_begin(&self) -> u64;
    /// Loads the version word after a snapshot (after an acquire fence, so
    /// every load of the snapshot happens before it).
    fn version_end(&self) -> u64;
    /// Copies `dst.len()` bytes from the image at `off` into `dst`, loading
    /// whole aligned words (`pad8(dst.len())` bytes from `off`), or `None`
    /// (with `dst` partly written) if `off` is unaligned or those words are
    /// not all inside the image. The default loads word by word; a mapping
    /// checks the range once ([`crate::sys::seqlock::MapWords`]).
    #[inline(always)]
    fn copy_words(&self, off: u64, dst: &mut [u8]) -> Option<()> {
        if off % 8 != 0 || off > self.image_len() {
            return None;
        }
        let (whole, tail) = dst.split_at_mut(dst.len() & !7);
        // Whole words: one constant-size store each (no memcpy call per word).
        for (k, chunk) in whole.chunks_exact_mut(8).enumerate() {
            chunk.copy_from_slice(&self.word(off + 8 * k as u64)?.to_ne_bytes());
        }
        if !tail.is_empty() {
            let bytes = self.word(off + whole.len() as u64)?.to_ne_bytes();
            tail.copy_from_slice(&bytes[..tail.len()]);
        }
        Some(())
    }
}

/// What one attempt found.
#[derive(Debug)]
pub enum Outcome {
    /// A validated result: the record's length (copied into the buffer), or
    /// `Stale`, or `BufferTooSmall` (nothing useful copied).
    Done(Result<usize>),
    /// The version was odd: a writer is at work (or died at work).
    Busy,
    /// The version changed during the copy: try again.
    Changed,
    /// A consistent snapshot the optimistic path does not handle (a journal
    /// is pending, or a check failed): take the lock.
    Fallback,
}

const H: u64 = HEADER_SIZE as u64;
const BH: u64 = BLOCK_HEADER_SIZE as u64;

/// The u32 at `off` (4-aligned), from the word that holds it.
#[inline(always)]
fn u32_at<W: Words + ?Sized>(w: &W, off: usize) -> Option<u32> {
    let word = w.word((off & !7) as u64)?;
    let halves: [u32; 2] = bytemuck::cast(word);
    Some(halves[(off >> 2) & 1])
}

/// What one attempt found, small enough to travel in registers (the
/// public [`Outcome`] carries an [`Error`], which is returned through
/// memory: on the hot path that store and reload cost more than the checks).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Step {
    /// Copied, this many bytes.
    Copied(usize),
    Stale,
    /// The record has this many bytes, more than the buffer holds.
    TooSmall(usize),
    Busy,
    Changed,
    Fallback,
}

/// The result a finished step stands for (`Copied`, `Stale`, `TooSmall`).
#[inline(always)]
fn finished(s: Step, id: RecordId, cap: usize) -> Option<Result<usize>> {
    match s {
        Step::Copied(n) => Some(Ok(n)),
        Step::Stale => Some(Err(Error::Stale(id))),
        Step::TooSmall(len) => Some(Err(Error::BufferTooSmall { id, len, capacity: cap })),
        Step::Busy | Step::Changed | Step::Fallback => None,
    }
}

/// One attempt to copy record `id` into `dst`.
#[inline]
pub fn attempt<W: Words + ?Sized>(w: &W, id: RecordId, dst: &mut [u8]) -> Outcome {
    let cap = dst.len();
    match step(w, id, dst) {
        Step::Busy => Outcome::Busy,
        Step::Changed => Outcome::Changed,
        s => finished(s, id, cap).map_or(Outcome::Fallback, Outcome::Done),
    }
}

#[inline(always)]
fn step<W: Words + ?Sized>(w: &W, id: RecordId, dst: &mut [u8]) -> Step {
    let v1 = w.version_begin();
    if v1 & 1 != 0 {
        return Step::Busy;
    }
    let r = snapshot(w, id, dst);
    let v2 = w.version_end();
    if v1 != v2 {
        return Step::Changed;
    }
    r
}

/// Up to `tries` attempts; `None` when the caller must take the lock (a
/// writer kept the version odd or changing, or the snapshot needs the lock).
#[inline]
pub fn read<W: Words + ?Sized>(w: &W, id: RecordId, dst: &mut [u8], tries: u32) -> Option<Result<usize>> {
    let cap = dst.len();
    for i in 0..tries {
        match step(w, id, dst) {
            Step::Fallback => return None,
            Step::Busy | Step::Changed => {
                // Back off a little more each time; a writer holds the
                // version odd for one mutation (a compaction may take long:
                // then the lock is the better wait).
                for _ in 0..(1u32 << i.min(4)) {
                    std::hint::spin_loop();
                }
            }
            s => return finished(s, id, cap),
        }
    }
    None
}

/// Reads the record from the image as it is now. `Fallback`: not plainly
/// good, let the lock decide. Only meaningful if the version did not change.
#[inline(always)]
fn snapshot<W: Words + ?Sized>(w: &W, id: RecordId, dst: &mut [u8]) -> Step {
    snapshot_opt(w, id, dst).unwrap_or(Step::Fallback)
}

#[inline(always)]
fn snapshot_opt<W: Words + ?Sized>(w: &W, id: RecordId, dst: &mut [u8]) -> Option<Step> {
    let size = w.image_len();
    if size % 8 != 0 || size < H + TRAILER_SIZE as u64 {
        return None;
    }
    let view = size - TRAILER_SIZE as u64;
    let flags = u32_at(w, offset_of!(Header, flags))?;
    let op = u32_at(w, offset_of!(Header, journal))?;
    // A (Deferred) compaction paused between two lock holds is fine: no
    // entry points into its hole (see `Layout::compaction_paused`).
    if flags & FLAG_RECOVERY_REQUIRED != 0 || op != JOURNAL_NONE && op != JOURNAL_COMPACT {
        return None;
    }
    if op == JOURNAL_COMPACT && u32_at(w, offset_of!(Header, compaction))? != COMPACTION_DEFERRED {
        return None;
    }
    let o_fr = w.word(offset_of!(Header, o_fr) as u64)?;
    let o_bptop = w.word(offset_of!(Header, o_bptop) as u64)?;
    let n_bptr = u32_at(w, offset_of!(Header, n_bptr))?;
    if o_fr < H || o_fr % 8 != 0 || o_bptop < o_fr || o_bptop > view {
        return None;
    }
    if view - o_bptop != n_bptr as u64 * BPTR_SIZE as u64 {
        return None;
    }
    let slot = id.slot();
    if slot >= n_bptr {
        return Some(Step::Stale);
    }
    // slot < n_bptr, so the entry lies in [o_bptop, view).
    let [o_beg, gen]: [u32; 2] = bytemuck::cast(w.word(bptr_offset(size, slot))?);
    if o_beg == 0 || gen != id.generation() {
        return Some(Step::Stale);
    }
    let o = o_beg as u64;
    if o < H || o % 8 != 0 || o > o_fr || o_fr - o < BH {
        return None;
    }
    let [bslot, len]: [u32; 2] = bytemuck::cast(w.word(o)?);
    if bslot != slot || block_size(len as u64) > o_fr - o {
        return None;
    }
    let n = len as usize;
    if n > dst.len() {
        return Some(Step::TooSmall(n));
    }
    // The data is padded to 8 inside the block, which lies below o_fr.
    w.copy_words(o + BH, &mut dst[..n])?;
    Some(Step::Copied(n))
}

/// An image in plain memory (tests, tools): words read directly, the
/// version at its trailer offset.
pub struct SliceWords<'a>(pub &'a [u8]);

impl Words for SliceWords<'_> {
    fn image_len(&self) -> u64 {
        self.0.len() as u64
    }
    fn word(&self, off: u64) -> Option<u64> {
        if off % 8 != 0 || off.checked_add(8)? > self.0.len() as u64 {
            return None;
        }
        let o = off as usize;
        Some(u64::from_ne_bytes(self.0[o..o + 8].try_into().ok()?))
    }
    fn version_begin(&self) -> u64 {
        let n = self.0.len() as u64;
        if n < 8 {
            return 1;
        }
        self.word((n - 8) & !7).unwrap_or(1)
    }
    fn version_end(&self) -> u64 {
        self.version_begin()
    }
}

#[cfg(test)]
mod tests {
    //! The read path over good, torn and arbitrary images: it never panics,
    //! never asks for a word outside the image, and whatever it returns as
    //! done agrees with the engine's locked get on the same bytes.

    use super::*;
    use crate::format::{Compaction, Header, TRAILER_SIZE};
    use crate::ids::OwnerId;
    use crate::layout::{format, FormatOptions, Layout, ProcTag};
    use proptest::prelude::*;
    use std::cell::Cell;

    /// Words of a heap image that fail the test on any load outside it.
    struct Strict<'a> {
        img: &'a [u8],
        loads: Cell<u32>,
    }

    impl Words for Strict<'_> {
        fn image_len(&self) -> u64 {
            self.img.len() as u64
        }
        fn word(&self, off: u64) -> Option<u64> {
            assert!(off % 8 == 0 && off + 8 <= self.img.len() as u64, "load at {off} outside the image");
            self.loads.set(self.loads.get() + 1);
            SliceWords(self.img).word(off)
        }
        fn version_begin(&self) -> u64 {
            SliceWords(self.img).version_begin()
        }
        fn version_end(&self) -> u64 {
            SliceWords(self.img).version_begin()
        }
    }

    fn image(size: usize, compaction: Compaction) -> Vec<u64> {
        let mut img = vec![0u64; size / 8];
        let opts = FormatOptions { generation: 0x1234_5678_9abc_def0, compaction, ..Default::default() };
        format(bytemuck::cast_slice_mut(&mut img), &opts).unwrap();
        img
    }

    /// Fills an image with records of assorted lengths, removes some (dead
    /// blocks under Deferred), returns every id ever issued.
    fn populate(img: &mut [u64], n: u32, compaction: Compaction) -> Vec<RecordId> {
        let mut l = Layout::open(bytemuck::cast_slice_mut(img)).unwrap();
        let mut ids = Vec::new();
        for i in 0..n {
            let len = (i as usize * 7) % 90;
            let data: Vec<u8> = (0..len).map(|k| (i as usize * 31 + k) as u8).collect();
            match l.insert(OwnerId(1 + i % 3), ProcTag { pid: 1, start_time: 1 }, &data) {
                Ok(id) => ids.push(id),
                Err(_) => break,
            }
        }
        for (k, id) in ids.clone().iter().enumerate() {
            if k % 3 == 1 {
                l.remove(*id).unwrap();
            }
        }
        let _ = compaction;
        ids
    }

    /// Checks the optimistic read of `id` against the engine on `img`.
    fn agree(img: &mut [u8], id: RecordId, cap: usize) {
        let mut dst = vec![0u8; cap];
        let strict = Strict { img, loads: Cell::new(0) };
        let got = read(&strict, id, &mut dst, 2);
        let n = img.len() - TRAILER_SIZE;
        let engine = Layout::reopen(&mut img[..n]).ok().map(|l| l.try_get(id).map(<[u8]>::to_vec));
        match got {
            None => {}
            Some(Ok(k)) => {
                let Some(Ok(want)) = engine else { panic!("optimistic Ok({k}), engine {engine:?}") };
                assert_eq!(&dst[..k], &want[..]);
            }
            Some(Err(Error::Stale(_))) => {
                assert!(matches!(engine, Some(Err(Error::Stale(_)))), "optimistic Stale, engine {engine:?}")
            }
            Some(Err(Error::BufferTooSmall { len, capacity, .. })) => {
                assert_eq!(capacity, cap);
                let Some(Ok(want)) = engine else { panic!("optimistic too small, engine {engine:?}") };
                assert_eq!(want.len(), len);
                assert!(len > cap);
            }
            Some(Err(e)) => panic!("unexpected {e}"),
        }
    }

    #[test]
    fn good_images_read_like_the_engine() {
        for compaction in [Compaction::Eager, Compaction::Deferred] {
            let mut img = image(8192, compaction);
            let ids = populate(&mut img, 60, compaction);
            assert!(ids.len() > 20);
            let bytes: &mut [u8] = bytemuck::cast_slice_mut(&mut img);
            let mut live = 0;
            for &id in &ids {
                let mut dst = [0u8; 128];
                let r = read(&SliceWords(bytes), id, &mut dst, 1);
                let n = bytes.len() - TRAILER_SIZE;
                let l = Layout::reopen(&mut bytes[..n]).unwrap();
                match (r, l.try_get(id)) {
                    (Some(Ok(k)), Ok(want)) => {
                        assert_eq!(&dst[..k], want);
                        live += 1;
                    }
                    (Some(Err(Error::Stale(_))), Err(Error::Stale(_))) => {}
                    (r, e) => panic!("{id}: optimistic {r:?}, engine {e:?}"),
                }
                agree(bytes, id, 3);
            }
            assert!(live > 10);
        }
    }

    #[test]
    fn odd_or_changing_version_never_returns_a_copy() {
        let mut img = image(4096, Compaction::Deferred);
        let ids = populate(&mut img, 4, Compaction::Deferred);
        let bytes: &mut [u8] = bytemuck::cast_slice_mut(&mut img);
        let v = bytes.len() - 8;
        bytes[v] = 3; // odd: a writer is at work (or died at work)
        let mut dst = [0u8; 64];
        assert!(matches!(attempt(&SliceWords(bytes), ids[0], &mut dst), Outcome::Busy));
        assert!(read(&SliceWords(bytes), ids[0], &mut dst, 5).is_none());

        /// A writer that finishes a change between the two version loads.
        struct Racing<'a>(&'a [u8]);
        impl Words for Racing<'_> {
            fn image_len(&self) -> u64 {
                self.0.len() as u64
            }
            fn word(&self, off: u64) -> Option<u64> {
                SliceWords(self.0).word(off)
            }
            fn version_begin(&self) -> u64 {
                4
            }
            fn version_end(&self) -> u64 {
                6
            }
        }
        assert!(matches!(attempt(&Racing(bytes), ids[0], &mut dst), Outcome::Changed));
        assert!(read(&Racing(bytes), ids[0], &mut dst, 3).is_none());
    }

    #[test]
    fn a_pending_journal_or_recovery_flag_takes_the_lock() {
        let mut img = image(4096, Compaction::Eager);
        let ids = populate(&mut img, 4, Compaction::Eager);
        let mut dst = [0u8; 64];
        {
            let h: &mut Header =
                bytemuck::from_bytes_mut(&mut bytemuck::cast_slice_mut(&mut img)[..HEADER_SIZE]);
            h.flags |= FLAG_RECOVERY_REQUIRED;
        }
        assert!(read(&SliceWords(bytemuck::cast_slice(&img)), ids[0], &mut dst, 1).is_none());
        {
            let h: &mut Header =
                bytemuck::from_bytes_mut(&mut bytemuck::cast_slice_mut(&mut img)[..HEADER_SIZE]);
            h.flags = 0;
            h.journal.op = crate::format::JOURNAL_COMPACT;
        }
        assert!(read(&SliceWords(bytemuck::cast_slice(&img)), ids[0], &mut dst, 1).is_none());
    }

    #[test]
    fn tiny_and_odd_sized_images() {
        for len in [0usize, 1, 7, 8, 9, 64, 384, 447, 448, 456] {
            let img = vec![0xa5u8; len];
            let mut dst = [0u8; 16];
            let strict = Strict { img: &img, loads: Cell::new(0) };
            // Version words of 0xa5.. are odd: Busy; even ones read on.
            let _ = read(&strict, RecordId::new(0, 1), &mut dst, 2);
            let _ = read(&SliceWords(&img), RecordId::new(0, 0xa5a5_a5a5), &mut dst, 2);
        }
    }

    proptest! {
        #![proptest_config(ProptestConfig { cases: 400, ..ProptestConfig::default() })]

        /// A good image with words overwritten at random (biased towards
        /// the header, the table and block headers): never a panic, never a
        /// load outside the image, and every answer agrees with the engine.
        #[test]
        fn corrupt_images(
            deferred in any::<bool>(),
            size in prop_oneof![Just(4096usize), Just(4104), Just(8192)],
            hits in proptest::collection::vec((0usize..1024, any::<u64>(), 0u8..4), 1..8),
            probes in proptest::collection::vec((0u32..80, any::<u32>(), 0usize..100), 1..16),
        ) {
            let compaction = if deferred { Compaction::Deferred } else { Compaction::Eager };
            let mut img = image(size, compaction);
            let ids = populate(&mut img, 40, compaction);
            let words = img.len();
            for (pos, val, kind) in hits {
                let w = match kind {
                    0 => pos % (HEADER_SIZE / 8),                    // header
                    1 => words - 1 - pos % 64,                        // table and trailer
                    2 => (HEADER_SIZE / 8 + pos) % words,             // blocks
                    _ => pos * 7 % words,
                };
                img[w] = if kind == 3 { img[w] ^ (1 << (val % 64)) } else { val };
            }
            // An even version, so reads go ahead on the corrupt bytes.
            let last = img.len() - 1;
            img[last] &= !1;
            let bytes: &mut [u8] = bytemuck::cast_slice_mut(&mut img);
            for &id in &ids {
                agree(bytes, id, 64);
            }
            for (slot, gen, cap) in probes {
                agree(bytes, RecordId::new(slot, gen), cap);
            }
        }

        /// Arbitrary bytes of arbitrary length: never a panic, never a load
        /// outside the image.
        #[test]
        fn arbitrary_bytes(
            img in proptest::collection::vec(any::<u8>(), 0..1200),
            slot in 0u32..40,
            gen in any::<u32>(),
            cap in 0usize..64,
        ) {
            let mut dst = vec![0u8; cap];
            let mut img = img;
            let strict = Strict { img: &img, loads: Cell::new(0) };
            let _ = read(&strict, RecordId::new(slot, gen), &mut dst, 2);
            // Once more with an even version.
            if img.len() >= 8 {
                let v = (img.len() - 8) & !7;
                img[v] &= !1;
            }
            let strict = Strict { img: &img, loads: Cell::new(0) };
            let _ = read(&strict, RecordId::new(slot, gen), &mut dst, 2);
        }
    }
}

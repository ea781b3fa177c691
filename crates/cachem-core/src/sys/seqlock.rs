//! The version word (seqlock) in a region's trailer, and the atomic word
//! loads of optimistic readers.
//!
//! ## Protocol (see `docs/design.md`, "Optimistic reads")
//!
//! Only the lock holder writes the version. Before its first change to
//! anything a reader may follow it makes the version odd ([`begin_write`]);
//! before unlocking it makes it even again ([`end_write`]). A reader loads
//! the version (acquire), copies with 8-byte atomic loads, issues an acquire
//! fence and loads the version again ([`MapWords`]).
//!
//! ## Why the copy is sound
//!
//! - The reader only ever performs atomic loads on the shared bytes, at
//!   8-aligned offsets inside the mapping (checked on every load): it never
//!   forms a reference into them, and an atomic load of memory that another
//!   process writes is defined (it returns some value that was there).
//! - The writer changes record bytes through the engine's `&mut [u8]` with
//!   plain stores. For readers in other processes those stores are outside
//!   this program, like a device writing memory; what matters is that
//!   they become visible between the odd and the even version store:
//!   [`begin_write`] is the odd store followed by a release fence (a `dmb`
//!   on ARM, ordering it before every later store) and a compiler fence (no
//!   later store is moved above it); [`end_write`] is a release store
//!   (no earlier store is moved or made visible after it). On the reader
//!   side the acquire load and the acquire fence keep every data load
//!   between the two version loads. This is the Linux kernel's seqcount
//!   (`smp_wmb` after the odd store and before the even one; `smp_rmb`
//!   around the reads).
//! - Readers in the *same* process as a writer thread race, by the letter
//!   of Rust's memory model, with that thread's plain stores (as does every
//!   seqlock whose writer does not use atomic stores); the hardware-level
//!   argument above is the one that holds. The result is never used unless
//!   the version check passes, and every value loaded is bounds-checked
//!   before use, so a torn value can cost a retry, never memory safety.

use super::map::Mapping;
use crate::format::version_offset;
use crate::optimistic::Words;
use std::sync::atomic::{compiler_fence, fence, AtomicU64, Ordering};

/// The version word of `map`.
#[inline]
fn version(map: &Mapping) -> &AtomicU64 {
    let off = version_offset(map.len() as u64) as usize;
    // The mapping is page-aligned, a multiple of 8 and at least one trailer
    // long (checked at create and attach).
    // SAFETY: so the word lies inside it, 8-aligned; it is only ever accessed
    // atomically (outside the engine's view); the borrow of `map` bounds it.
    unsafe { AtomicU64::from_ptr(map.as_ptr().add(off).cast::<u64>()) }
}

/// The version now (relaxed: for the lock holder, who alone writes it).
#[inline]
pub fn load(map: &Mapping) -> u64 {
    version(map).load(Ordering::Relaxed)
}

/// Makes the version odd before the lock holder's first change. Returns
/// the value stored. Call only under the lock, with the version even.
#[inline]
pub fn begin_write(map: &Mapping) -> u64 {
    let v = version(map);
    let odd = v.load(Ordering::Relaxed) | 1;
    v.store(odd, Ordering::Relaxed);
    // Orders the odd store before every later store (hardware: a `dmb ish`
    // on ARM, nothing needed on x86; compiler: no later store moves up).
    fence(Ordering::Release);
    compiler_fence(Ordering::SeqCst);
    odd
}

/// Makes the version even (the next even value) after the lock holder's
/// last change, before it unlocks. Call only under the lock.
#[inline]
pub fn end_write(map: &Mapping) {
    let v = version(map);
    let cur = v.load(Ordering::Relaxed);
    // Every earlier store is visible before the even value is.
    v.store((cur | 1).wrapping_add(1), Ordering::Release);
}

/// A mapping seen through atomic 8-byte loads (the optimistic reader).
pub struct MapWords<'a>(pub &'a Mapping);

impl Words for MapWords<'_> {
    #[inline(always)]
    fn image_len(&self) -> u64 {
        self.0.len() as u64
    }

    #[inline(always)]
    fn word(&self, off: u64) -> Option<u64> {
        let len = self.0.len() as u64;
        if off % 8 != 0 || len < 8 || off > len - 8 {
            return None;
        }
        // Concurrent writes by other processes at worst make the value stale
        // or torn, which the version check catches.
        // SAFETY: `off + 8 <= len`, `off` 8-aligned (checked above), mapping
        // page-aligned: the word is inside and aligned; only loaded atomically.
        let w = unsafe { AtomicU64::from_ptr(self.0.as_ptr().add(off as usize).cast::<u64>()) };
        Some(w.load(Ordering::Relaxed))
    }

    #[inline(always)]
    fn copy_words(&self, off: u64, dst: &mut [u8]) -> Option<()> {
        let len = self.0.len() as u64;
        let words = dst.len().div_ceil(8);
        let bytes = 8 * words as u64;
        if off % 8 != 0 || off > len || bytes > len - off {
            return None;
        }
        // SAFETY: `off` is 8-aligned and `[off, off + bytes)` lies inside
        // the mapping (checked above; the mapping is page-aligned), so the
        // pointer stays inside it and each word below is aligned.
        let base = unsafe { self.0.as_ptr().add(off as usize) }.cast::<u64>();
        let (whole, tail) = dst.split_at_mut(dst.len() & !7);
        let load = |k: usize| {
            // SAFETY: k < words, so the word at `base + k` lies inside the
            // checked range, 8-aligned; it is only loaded atomically (a
            // concurrent writer at worst makes it stale or torn, which the
            // version check catches).
            unsafe { AtomicU64::from_ptr(base.add(k)) }.load(Ordering::Relaxed).to_ne_bytes()
        };
        // One constant-size store per word (no memcpy call per word).
        for (k, chunk) in whole.chunks_exact_mut(8).enumerate() {
            chunk.copy_from_slice(&load(k));
        }
        if !tail.is_empty() {
            tail.copy_from_slice(&load(words - 1)[..tail.len()]);
        }
        Some(())
    }

    #[inline(always)]
    fn version_begin(&self) -> u64 {
        version(self.0).load(Ordering::Acquire)
    }

    #[inline(always)]
    fn version_end(&self) -> u64 {
        fence(Ordering::Acquire);
        version(self.0).load(Ordering::Relaxed)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::optimistic::SliceWords;

    /// The mapping's one-range copy agrees with the word-by-word default
    /// (the same bytes, the same refusals) for every offset and length
    /// around the start and the end of the mapping.
    #[test]
    fn copy_words_matches_the_word_by_word_copy() {
        let map = Mapping::anonymous(4096).unwrap();
        let img: Vec<u8> = (0..4096u32).map(|i| (i * 7 + i / 256) as u8).collect();
        // SAFETY: fresh anonymous memory of 4096 bytes, used by nobody else;
        // the source is a distinct heap buffer of the same length.
        unsafe { std::ptr::copy_nonoverlapping(img.as_ptr(), map.as_ptr(), img.len()) };
        let (m, s) = (MapWords(&map), SliceWords(&img));
        let offs = (0..40u64).chain(4000..4104).chain([u64::MAX - 7, u64::MAX]);
        for off in offs {
            for len in [0usize, 1, 7, 8, 9, 15, 16, 17, 63, 64, 65, 100] {
                let (mut a, mut b) = (vec![0u8; len], vec![0u8; len]);
                let (ra, rb) = (m.copy_words(off, &mut a), s.copy_words(off, &mut b));
                assert_eq!(ra, rb, "off {off} len {len}");
                if ra.is_some() {
                    assert_eq!(a, b, "off {off} len {len}");
                    assert_eq!(a, img[off as usize..off as usize + len], "off {off} len {len}");
                }
            }
        }
    }
}

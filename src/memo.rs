//! The per-handle name memo: name -> owner id for names this process has
//! resolved, so a repeated `Cache::id` takes no lock.
//!
//! Lock-free, so it survives `fork` in any state: a child forked while
//! another thread was inside `id` finds every entry either published
//! (complete, immutable) or not, never a lock held by a thread it does not
//! have. A fixed table of [`SLOTS`] entries, open addressing; a name lives
//! inline in its entry (names of at most [`INLINE`] bytes; longer names
//! are simply not memoised and go to the region's table, which answers in
//! about a microsecond). An entry is claimed with one compare-and-swap,
//! filled, then published by storing its hash (Release); a reader that sees
//! the hash (Acquire) sees the filled entry. An entry claimed by a thread
//! that did not survive a fork stays claimed and is skipped. Ids never
//! change while the region lives, so entries never go stale.

use cachem_core::OwnerId;
use std::sync::atomic::{AtomicU32, AtomicU64, Ordering};

/// Entries in the table.
const SLOTS: usize = 256;
/// Words of name stored inline per entry.
const WORDS: usize = 7;
/// Longest memoised name, in bytes.
pub(crate) const INLINE: usize = WORDS * 8;
/// An entry being filled.
const CLAIMED: u64 = u64::MAX;

struct Slot {
    /// 0 empty, [`CLAIMED`], else the name's hash (published).
    state: AtomicU64,
    id: AtomicU32,
    len: AtomicU32,
    words: [AtomicU64; WORDS],
}

pub(crate) struct Memo {
    slots: Box<[Slot]>,
}

fn hash(name: &[u8]) -> u64 {
    let mut h: u64 = 0xcbf2_9ce4_8422_2325;
    for &b in name {
        h ^= b as u64;
        h = h.wrapping_mul(0x0000_0100_0000_01b3);
    }
    if h == 0 || h == CLAIMED {
        1
    } else {
        h
    }
}

fn words(name: &[u8]) -> [u64; WORDS] {
    let mut w = [0u64; WORDS];
    for (i, c) in name.chunks(8).enumerate() {
        let mut b = [0u8; 8];
        b[..c.len()].copy_from_slice(c);
        w[i] = u64::from_le_bytes(b);
    }
    w
}

impl Memo {
    pub(crate) fn new() -> Memo {
        let slots = (0..SLOTS)
            .map(|_| Slot {
                state: AtomicU64::new(0),
                id: AtomicU32::new(0),
                len: AtomicU32::new(0),
                words: Default::default(),
            })
            .collect();
        Memo { slots }
    }

    fn matches(s: &Slot, name: &[u8], w: &[u64; WORDS]) -> bool {
        s.len.load(Ordering::Relaxed) as usize == name.len()
            && s.words.iter().zip(w).all(|(a, b)| a.load(Ordering::Relaxed) == *b)
    }

    /// The memoised id of `name`, if any.
    #[inline]
    pub(crate) fn get(&self, name: &[u8]) -> Option<OwnerId> {
        if name.len() > INLINE {
            return None;
        }
        let h = hash(name);
        let w = words(name);
        for i in 0..SLOTS {
            let s = &self.slots[(h as usize).wrapping_add(i) % SLOTS];
            match s.state.load(Ordering::Acquire) {
                0 => return None,
                st if st == h && Self::matches(s, name, &w) => {
                    return Some(OwnerId(s.id.load(Ordering::Relaxed)))
                }
                _ => {}
            }
        }
        None
    }

    /// Remembers `name` -> `id` (nothing if the name is long or the table
    /// is full).
    pub(crate) fn put(&self, name: &[u8], id: OwnerId) {
        if name.len() > INLINE {
            return;
        }
        let h = hash(name);
        let w = words(name);
        for i in 0..SLOTS {
            let s = &self.slots[(h as usize).wrapping_add(i) % SLOTS];
            let st = s.state.load(Ordering::Acquire);
            if st == h && Self::matches(s, name, &w) {
                return;
            }
            if st == 0 && s.state.compare_exchange(0, CLAIMED, Ordering::AcqRel, Ordering::Relaxed).is_ok() {
                s.id.store(id.0, Ordering::Relaxed);
                s.len.store(name.len() as u32, Ordering::Relaxed);
                for (a, b) in s.words.iter().zip(&w) {
                    a.store(*b, Ordering::Relaxed);
                }
                s.state.store(h, Ordering::Release);
                return;
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn remembers_names_and_tells_them_apart() {
        let m = Memo::new();
        assert_eq!(m.get(b"a"), None);
        m.put(b"a", OwnerId(1));
        m.put(b"a\0", OwnerId(2));
        m.put(&[b'x'; INLINE], OwnerId(3));
        m.put(&[b'x'; INLINE + 1], OwnerId(4));
        assert_eq!(m.get(b"a"), Some(OwnerId(1)));
        assert_eq!(m.get(b"a\0"), Some(OwnerId(2)));
        assert_eq!(m.get(&[b'x'; INLINE]), Some(OwnerId(3)));
        assert_eq!(m.get(&[b'x'; INLINE + 1]), None, "long names are not memoised");
        assert_eq!(m.get(b"b"), None);
    }

    #[test]
    fn a_full_table_still_answers_what_it_holds() {
        let m = Memo::new();
        for i in 0..SLOTS as u32 + 10 {
            m.put(format!("n{i}").as_bytes(), OwnerId(i + 1));
        }
        for i in 0..SLOTS as u32 {
            assert_eq!(m.get(format!("n{i}").as_bytes()), Some(OwnerId(i + 1)));
        }
        assert_eq!(m.get(b"n300"), None);
    }

    #[test]
    fn a_claimed_entry_left_by_a_vanished_thread_is_skipped() {
        let m = Memo::new();
        let h = hash(b"k");
        m.slots[h as usize % SLOTS].state.store(CLAIMED, Ordering::Relaxed);
        assert_eq!(m.get(b"k"), None);
        m.put(b"k", OwnerId(9));
        assert_eq!(m.get(b"k"), Some(OwnerId(9)));
    }
}

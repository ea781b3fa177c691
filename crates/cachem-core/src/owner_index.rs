//! The owner index: iterating the records of one owner in time
//! proportional to that owner's records, not to the table.
//!
//! Every used table entry is on exactly one doubly-linked chain, the chain
//! of its owner's bucket (`owner % OWNER_BUCKETS`), through its `next` and
//! `prev` fields (slot + 1, 0 = none); the header's `owner_heads` holds each
//! chain's first entry. An insert pushes its entry at the front of the
//! chain, so a chain runs from the newest record to the oldest (recovery
//! rebuilds it in slot order). A remove unlinks the entry and leaves a
//! *removal note* in the freed entry: the removed record's generation and
//! the id of the record that followed it, so `next_of_owner` can go on from
//! a record removed mid-iteration.
//!
//! The chains are derived state: recovery rebuilds them from the entries'
//! `owner` fields (every lock that finds a dead holder recovers), so a
//! process killed between two link changes costs nothing but the rebuild.
//! Readers never trust them: a link is bounds-checked before use and must
//! agree with the `prev` of the entry it reaches, which makes every walk
//! from a chain's head end within the table's size even on a corrupt image
//! (a link that would revisit an entry contradicts that entry's `prev`).

use super::*;

/// The owner bucket of an owner id.
#[inline(always)]
pub(super) fn bucket_of(owner: u32) -> usize {
    owner as usize % OWNER_BUCKETS
}

// Entries examined by chain walks on this thread (tests check that an
// iteration touches only its owner's chain).
#[cfg(test)]
thread_local! {
    pub(super) static STEPS: std::cell::Cell<u64> = const { std::cell::Cell::new(0) };
}

/// Where a walk along a chain goes next: the link to examine (slot + 1,
/// 0 = the end) and the `prev` that entry must have.
#[derive(Clone, Copy)]
pub(super) struct Cursor {
    link: u32,
    prev: u32,
}

impl<'a> Layout<'a> {
    #[inline(always)]
    fn chain_head(&self, b: usize) -> Cursor {
        Cursor { link: self.hdr().owner_heads[b], prev: 0 }
    }

    /// Checks, before an insert changes anything, that the head of bucket
    /// `b` is a used entry of that bucket at the front of its chain.
    pub(super) fn check_head(&self, n_bptr: u32, b: usize) -> Result<()> {
        let head = self.hdr().owner_heads[b];
        if head == 0 {
            return Ok(());
        }
        let ok = head <= n_bptr && {
            let e = self.bptr(head - 1);
            e.o_beg != 0 && e.prev == 0 && bucket_of(e.owner) == b
        };
        if !ok {
            return Err(Error::corrupt(
                "owner_heads",
                format!("the head of owner bucket {b} ({head}) is not the front entry of its chain"),
            ));
        }
        Ok(())
    }

    /// Checks that the used entry `slot` sits consistently on its chain
    /// (its neighbours, or the bucket's head, link back to it), so that
    /// unlinking it changes only its own chain.
    pub(super) fn check_links(&self, n_bptr: u32, slot: u32) -> Result<()> {
        let e = *self.bptr(slot);
        let b = bucket_of(e.owner);
        let me = slot + 1;
        let neighbour = |link: u32| -> Option<Bptr> {
            let n = *self.bptr(link - 1);
            (n.o_beg != 0 && bucket_of(n.owner) == b).then_some(n)
        };
        let ok = e.prev <= n_bptr
            && e.next <= n_bptr
            && e.prev != me
            && e.next != me
            && match e.prev {
                0 => self.hdr().owner_heads[b] == me,
                p => neighbour(p).is_some_and(|n| n.next == me),
            }
            && match e.next {
                0 => true,
                n => neighbour(n).is_some_and(|n| n.prev == me),
            };
        if !ok {
            return Err(Error::corrupt(
                "bptr.prev",
                format!("entry {slot} (links {} / {}) is not where its owner chain says", e.prev, e.next),
            ));
        }
        Ok(())
    }

    /// Puts the just-published entry `slot` (whose `next` already names
    /// the old head and whose `prev` is 0) at the front of bucket `b`.
    pub(super) fn link_front(&mut self, slot: u32, b: usize) {
        let old = self.hdr().owner_heads[b];
        if old != 0 {
            self.bptr_mut(old - 1).prev = slot + 1;
            fence();
            hit("insert.mid_link");
        }
        self.hdr_mut().owner_heads[b] = slot + 1;
        fence();
        hit("insert.after_link");
    }

    /// Unlinks the used entry `slot` (checked by [`Layout::check_links`])
    /// from its chain. Returns the record that followed it, for its
    /// removal note.
    pub(super) fn unlink(&mut self, slot: u32) -> Option<RecordId> {
        let e = *self.bptr(slot);
        if e.prev == 0 {
            self.hdr_mut().owner_heads[bucket_of(e.owner)] = e.next;
        } else {
            self.bptr_mut(e.prev - 1).next = e.next;
        }
        fence();
        hit("chain.mid_unlink");
        if e.next == 0 {
            return None;
        }
        let n = self.bptr_mut(e.next - 1);
        n.prev = e.prev;
        let succ = RecordId::new(e.next - 1, n.gen);
        fence();
        hit("chain.after_unlink");
        Some(succ)
    }

    /// Leaves a removal note in the entry of a record just removed (its
    /// entry already cleared): its generation and the record that followed
    /// it. The marker is written last, so a half-written note is no note.
    pub(super) fn note_removed(&mut self, id: RecordId, succ: Option<RecordId>) {
        let next = succ.map_or(0, RecordId::to_u64);
        let e = self.bptr_mut(id.slot());
        e.pid = id.generation();
        e.start_time = next;
        fence();
        e.prev = REMOVED_NOTE;
        // The header's copy: cleared first, so a kill never pairs one
        // remove's id with another's successor.
        let h = self.hdr_mut();
        h.last_removed = 0;
        fence();
        h.last_removed_next = next;
        fence();
        h.last_removed = id.to_u64();
    }

    /// The removal note of `a`, if one is intact: the record that followed
    /// it (`None` inside: it was the last of its chain).
    fn note_of(&self, n_bptr: u32, b: usize, a: RecordId) -> Option<Option<RecordId>> {
        let h = self.hdr();
        let next = if h.last_removed == a.to_u64() {
            h.last_removed_next
        } else {
            if a.slot() >= n_bptr {
                return None;
            }
            let e = self.bptr(a.slot());
            if e.o_beg != 0 || e.prev != REMOVED_NOTE || e.pid != a.generation() || bucket_of(e.owner) != b {
                return None;
            }
            e.start_time
        };
        let succ = RecordId::from_u64(next);
        Some((succ.generation() != 0).then_some(succ))
    }

    /// Rebuilds every chain from the entries' owners (recovery): each chain
    /// in slot order.
    pub(super) fn rebuild_chains(&mut self) -> Result<()> {
        let st = self.st()?;
        let mut heads = [0u32; OWNER_BUCKETS];
        for slot in (0..st.n_bptr).rev() {
            let e = self.bptr_mut(slot);
            if e.o_beg == 0 {
                continue;
            }
            let b = bucket_of(e.owner);
            let next = heads[b];
            e.next = next;
            e.prev = 0;
            if next != 0 {
                self.bptr_mut(next - 1).prev = slot + 1;
            }
            heads[b] = slot + 1;
        }
        let h = self.hdr_mut();
        h.owner_heads = heads;
        // The chains' order changed: the removal notes no longer say where
        // an iteration stood. The entries' notes fail their bucket or
        // generation checks or lead to a live record, which is harmless;
        // the header's is dropped.
        h.last_removed = 0;
        h.last_removed_next = 0;
        Ok(())
    }

    /// Checks the chains (for `verify`): each walks from its head through
    /// used entries of its bucket whose `prev` names the entry before, and
    /// together they hold every one of the `used` entries.
    pub(super) fn verify_chains(&self, n_bptr: u32, used: u32) -> Result<()> {
        let mut seen = 0u32;
        for b in 0..OWNER_BUCKETS {
            let mut at = self.chain_head(b);
            while at.link != 0 {
                let bad = |what: &str| {
                    Error::corrupt(
                        "owner_heads",
                        format!("the chain of owner bucket {b} {what} (link {})", at.link),
                    )
                };
                if at.link > n_bptr {
                    return Err(bad("runs past the table"));
                }
                let e = self.bptr(at.link - 1);
                if e.o_beg == 0 {
                    return Err(bad("reaches an unused entry"));
                }
                if bucket_of(e.owner) != b {
                    return Err(bad("reaches another bucket's entry"));
                }
                if e.prev != at.prev {
                    return Err(bad("has an entry whose prev disagrees"));
                }
                seen += 1;
                if seen > used {
                    return Err(bad("holds more entries than are in use"));
                }
                at = Cursor { link: e.next, prev: at.link };
            }
        }
        if seen != used {
            return Err(Error::corrupt(
                "owner_heads",
                format!("{seen} entries on the chains, {used} in use"),
            ));
        }
        Ok(())
    }

    /// Where an iteration of bucket `b` goes on after `after`: after a live
    /// record of the bucket, its successor; after a removed one whose note
    /// is intact, the record that followed it (or, if that one was removed
    /// too, the one after it, and so on); otherwise (`None`, an id of
    /// another bucket, a note overwritten by a new record) the front.
    pub(super) fn resume(&self, n_bptr: u32, b: usize, after: Option<RecordId>) -> Cursor {
        let Some(mut a) = after else { return self.chain_head(b) };
        // Each hop follows a note to an older record (chains run newest
        // first); bounded anyway, whatever the image holds.
        for _ in 0..=n_bptr {
            let slot = a.slot();
            if a.generation() == 0 {
                break;
            }
            if slot < n_bptr {
                let e = self.bptr(slot);
                if e.o_beg != 0 {
                    if e.gen == a.generation() && bucket_of(e.owner) == b {
                        return Cursor { link: e.next, prev: slot + 1 };
                    }
                    break;
                }
            }
            match self.note_of(n_bptr, b, a) {
                None => break,
                // It was the last of its chain.
                Some(None) => return Cursor { link: 0, prev: 0 },
                Some(Some(succ)) => {
                    if succ.slot() < n_bptr {
                        let s = self.bptr(succ.slot());
                        if s.o_beg != 0 && s.gen == succ.generation() && bucket_of(s.owner) == b {
                            return Cursor { link: succ.slot() + 1, prev: s.prev };
                        }
                    }
                    a = succ;
                }
            }
        }
        self.chain_head(b)
    }

    /// Walks bucket `b` from `at` to the first entry of `owner` that `want`
    /// accepts: its slot, a copy of the entry, and the cursor after it;
    /// `None` at the end, `Corrupt` at a link that fails its checks.
    #[inline]
    pub(super) fn chain_find(
        &self,
        n_bptr: u32,
        b: usize,
        mut at: Cursor,
        owner: u32,
        mut want: impl FnMut(&Bptr) -> bool,
    ) -> Result<Option<(u32, Bptr, Cursor)>> {
        let bad = |link: u32| {
            Error::corrupt("owner_heads", format!("the chain of owner bucket {b} breaks at link {link}"))
        };
        // A chain holds at most n_bptr entries: the bound only matters on a
        // corrupt image.
        for _ in 0..=n_bptr {
            if at.link == 0 {
                return Ok(None);
            }
            if at.link > n_bptr {
                return Err(bad(at.link));
            }
            let e = *self.bptr(at.link - 1);
            #[cfg(test)]
            STEPS.with(|s| s.set(s.get() + 1));
            if e.o_beg == 0 || e.prev != at.prev || bucket_of(e.owner) != b {
                return Err(bad(at.link));
            }
            let here = Cursor { link: e.next, prev: at.link };
            if e.owner == owner && want(&e) {
                return Ok(Some((at.link - 1, e, here)));
            }
            at = here;
        }
        Err(bad(at.link))
    }
}

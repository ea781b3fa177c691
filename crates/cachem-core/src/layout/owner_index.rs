//! The owner index: iterating the records of one owner in time
//! proportional to that owner's records, not to the table.
//!
//! Every used table entry is on exactly one doubly-linked chain, the chain
//! of its owner's bucket (`owner % OWNER_BUCKETS`), through its `next` and
//! `prev` fields (slot + 1); the header's `owner_heads` holds each chain's
//! first entry (the oldest). `next` leads to the next newer entry (0 at the
//! tail); `prev` to the next older one, and the head's `prev` to the tail,
//! so an insert appends at the tail in O(1) and a chain runs in insertion
//! order (recovery rebuilds it in the same order). A remove unlinks the
//! entry and leaves a *removal note* in the freed entry: the removed
//! record's generation and the id of the record that followed it, so
//! `next_of_owner` can go on from a record removed mid-iteration.
//!
//! The chains are derived state: recovery rebuilds them from the entries'
//! `owner` fields (every lock that finds a dead holder recovers), so a
//! process killed between two link changes costs nothing but the rebuild.
//! Readers never trust them: a link is bounds-checked before use, must
//! agree with the `prev` of the entry it reaches and may not lead back to
//! the head, which makes every walk from a chain's head end within the
//! table's size even on a corrupt image (a link that would revisit an entry
//! contradicts that entry's `prev`, or is a link back to the head).

use super::*;

/// The owner bucket of an owner id.
#[inline(always)]
pub(super) fn bucket_of(owner: u32) -> usize {
    if owner == crate::ids::OwnerId::NAMES.0 {
        NAMES_BUCKET
    } else if owner == crate::ids::OwnerId::NAMES_INDEX.0 {
        NAMES_INDEX_BUCKET
    } else {
        owner as usize % USER_BUCKETS
    }
}

// Entries examined by chain walks on this thread (tests check that an
// iteration touches only its owner's chain).
#[cfg(test)]
thread_local! {
    pub(super) static STEPS: std::cell::Cell<u64> = const { std::cell::Cell::new(0) };
}

/// Where a walk along a chain goes next: the link to examine (slot + 1,
/// 0 = the end) and the `prev` that entry must have (0: not checked, for
/// the first entry of a walk).
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

    /// A used entry of bucket `b` at `link` (slot + 1, in the table).
    #[inline(always)]
    fn member(&self, n_bptr: u32, b: usize, link: u32) -> Option<Bptr> {
        if link == 0 || link > n_bptr {
            return None;
        }
        let e = *self.bptr(link - 1);
        (e.o_beg != 0 && bucket_of(e.owner) == b).then_some(e)
    }

    /// Checks, before an insert changes anything, that bucket `b`'s head
    /// and tail (the head's `prev`) are used entries of the bucket and the
    /// tail ends the chain. Returns the tail's link (0: the chain is empty).
    pub(super) fn check_ends(&self, n_bptr: u32, b: usize) -> Result<u32> {
        let head = self.hdr().owner_heads[b];
        if head == 0 {
            return Ok(0);
        }
        let tail = self.member(n_bptr, b, head).map(|h| h.prev);
        match tail.and_then(|t| self.member(n_bptr, b, t).map(|e| (t, e))) {
            Some((t, e)) if e.next == 0 => Ok(t),
            _ => Err(Error::corrupt(
                "owner_heads",
                format!("the head of owner bucket {b} ({head}) does not lead to the tail of its chain"),
            )),
        }
    }

    /// Checks that the used entry `slot` sits consistently on its chain
    /// (its neighbours, or the bucket's head, link back to it), so that
    /// unlinking it changes only its own chain.
    pub(super) fn check_links(&self, n_bptr: u32, slot: u32) -> Result<()> {
        let e = *self.bptr(slot);
        let b = bucket_of(e.owner);
        let me = slot + 1;
        let head = self.hdr().owner_heads[b];
        let at_head = head == me;
        let ok = e.next != me
            && (e.next == 0 || self.member(n_bptr, b, e.next).is_some_and(|n| n.prev == me))
            && if at_head {
                // Its prev is the tail: itself when alone.
                if e.prev == me {
                    e.next == 0
                } else {
                    e.next != 0 && self.member(n_bptr, b, e.prev).is_some_and(|t| t.next == 0)
                }
            } else {
                e.prev != me
                    && self.member(n_bptr, b, e.prev).is_some_and(|p| p.next == me)
                    // The tail: the head's prev names it.
                    && (e.next != 0 || self.member(n_bptr, b, head).is_some_and(|h| h.prev == me))
            };
        if !ok {
            return Err(Error::corrupt(
                "bptr.prev",
                format!("entry {slot} (links {} / {}) is not where its owner chain says", e.prev, e.next),
            ));
        }
        Ok(())
    }

    /// Appends the just-published entry `slot` (whose `next` is already 0
    /// and `prev` the old `tail`, or itself if the chain was empty) at the
    /// tail of bucket `b` (`tail` checked by [`Layout::check_ends`]).
    pub(super) fn link_back(&mut self, slot: u32, b: usize, tail: u32) {
        if tail == 0 {
            self.hdr_mut().owner_heads[b] = slot + 1;
        } else {
            self.bptr_mut(tail - 1).next = slot + 1;
            fence();
            hit("insert.mid_link");
            let head = self.hdr().owner_heads[b];
            self.bptr_mut(head - 1).prev = slot + 1;
        }
        fence();
        hit("insert.after_link");
    }

    /// Unlinks the used entry `slot` (checked by [`Layout::check_links`])
    /// from its chain. Returns the record that followed it, for its
    /// removal note.
    pub(super) fn unlink(&mut self, slot: u32) -> Option<RecordId> {
        let e = *self.bptr(slot);
        let b = bucket_of(e.owner);
        let head = self.hdr().owner_heads[b];
        // First store: the chain, walked from its head, no longer reaches
        // the entry (recovery puts it back in front of its `next` if the
        // remove dies here).
        if head == slot + 1 {
            self.hdr_mut().owner_heads[b] = e.next;
        } else {
            self.bptr_mut(e.prev - 1).next = e.next;
        }
        fence();
        hit("chain.mid_unlink");
        // Second: the back link (the new head's prev is the tail, which
        // was the entry's prev when it was the head).
        let back = if e.next != 0 { e.next } else { head };
        if back == slot + 1 {
            return None; // it was alone
        }
        self.bptr_mut(back - 1).prev = e.prev;
        fence();
        hit("chain.after_unlink");
        (e.next != 0).then(|| RecordId::new(e.next - 1, self.bptr(e.next - 1).gen))
    }

    /// Leaves a removal note in the entry of a record just removed (its
    /// entry already cleared): its generation and the record that followed
    /// it. The marker is written last, so a half-written note is no note.
    /// `in_header`: also as the header's copy (a batch writes it for its
    /// last victim only: the header keeps one note anyway).
    pub(super) fn note_removed(&mut self, id: RecordId, succ: Option<RecordId>, in_header: bool) {
        let next = succ.map_or(0, RecordId::to_u64);
        let e = self.bptr_mut(id.slot());
        e.pid = id.generation();
        e.start_time = next;
        fence();
        e.prev = REMOVED_NOTE;
        if !in_header {
            return;
        }
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

    /// The order of each chain as far as it can be followed from its head
    /// (taken by recovery before it changes any entry): slots, front first.
    pub(super) fn chain_orders(&self, n_bptr: u32) -> Vec<Vec<u32>> {
        let mut seen = vec![false; n_bptr as usize];
        let mut out = vec![Vec::new(); OWNER_BUCKETS];
        for (b, order) in out.iter_mut().enumerate() {
            let mut link = self.hdr().owner_heads[b];
            while link != 0 && link <= n_bptr && !seen[(link - 1) as usize] {
                let e = self.bptr(link - 1);
                if e.o_beg == 0 || bucket_of(e.owner) != b {
                    break;
                }
                seen[(link - 1) as usize] = true;
                order.push(link - 1);
                link = e.next;
            }
        }
        out
    }

    /// Rebuilds every chain from the entries' owners (recovery), keeping
    /// the order `orders` found where it can: an entry found on no chain
    /// goes back in front of its `next` (a remove killed mid-unlink), else
    /// at the end.
    pub(super) fn rebuild_chains(&mut self, orders: &[Vec<u32>]) -> Result<()> {
        let st = self.st()?;
        let n = st.n_bptr as usize;
        let mut placed = vec![false; n];
        let mut lists: Vec<Vec<u32>> = vec![Vec::new(); OWNER_BUCKETS];
        for (b, order) in orders.iter().enumerate() {
            for &slot in order {
                if (slot as usize) < n && !placed[slot as usize] {
                    let e = self.bptr(slot);
                    if e.o_beg != 0 && bucket_of(e.owner) == b {
                        placed[slot as usize] = true;
                        lists[b].push(slot);
                    }
                }
            }
        }
        // Entries on no chain: before their `next` if that one is placed.
        let mut before: std::collections::HashMap<u32, Vec<u32>> = Default::default();
        let mut tail: Vec<Vec<u32>> = vec![Vec::new(); OWNER_BUCKETS];
        for slot in (0..st.n_bptr).rev() {
            let e = *self.bptr(slot);
            if e.o_beg == 0 || placed[slot as usize] {
                continue;
            }
            let b = bucket_of(e.owner);
            let nx = e.next;
            if nx != 0 && (nx as usize) <= n && placed[(nx - 1) as usize] && {
                let ne = self.bptr(nx - 1);
                bucket_of(ne.owner) == b
            } {
                before.entry(nx - 1).or_default().push(slot);
            } else {
                tail[b].push(slot);
            }
        }
        for b in 0..OWNER_BUCKETS {
            let mut full = Vec::with_capacity(lists[b].len() + tail[b].len());
            for &slot in &lists[b] {
                if let Some(v) = before.get(&slot) {
                    full.extend_from_slice(v);
                }
                full.push(slot);
            }
            full.extend_from_slice(&tail[b]);
            // The head's prev is the tail.
            let mut prev = full.last().map_or(0, |s| s + 1);
            for (i, &slot) in full.iter().enumerate() {
                let next = full.get(i + 1).map_or(0, |s| s + 1);
                let e = self.bptr_mut(slot);
                e.prev = prev;
                e.next = next;
                prev = slot + 1;
            }
            self.hdr_mut().owner_heads[b] = full.first().map_or(0, |s| s + 1);
        }
        let h = self.hdr_mut();
        h.last_removed = 0;
        h.last_removed_next = 0;
        Ok(())
    }

    /// Checks the chains (for `verify`): each walks from its head through
    /// used entries of its bucket whose `prev` names the entry before (the
    /// head's the last one), and together they hold every one of the
    /// `used` entries.
    pub(super) fn verify_chains(&self, n_bptr: u32, used: u32) -> Result<()> {
        let mut seen = 0u32;
        for b in 0..OWNER_BUCKETS {
            let head = self.hdr().owner_heads[b];
            let mut at = self.chain_head(b);
            let mut last = 0u32;
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
                if at.prev != 0 && (e.prev != at.prev || at.link == head) {
                    return Err(bad("has an entry whose prev disagrees"));
                }
                seen += 1;
                if seen > used {
                    return Err(bad("holds more entries than are in use"));
                }
                last = at.link;
                at = Cursor { link: e.next, prev: at.link };
            }
            if head != 0 && self.bptr(head - 1).prev != last {
                return Err(Error::corrupt(
                    "owner_heads",
                    format!("the head of owner bucket {b} does not name the tail {last} as its prev"),
                ));
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
        // Each hop follows a note to a newer record; bounded anyway,
        // whatever the image holds.
        for _ in 0..=n_bptr {
            let slot = a.slot();
            if slot < n_bptr {
                let e = self.bptr(slot);
                if e.o_beg != 0 && e.gen == a.generation() && bucket_of(e.owner) == b {
                    return Cursor { link: e.next, prev: slot + 1 };
                }
            }
            if a.generation() == 0 {
                // Never issued: no note can name it.
                break;
            }
            // (A slot taken by a new record: the header's copy of the note
            // may still know where `a` stood; note_of checks the entry's
            // note only on an unused entry.)
            match self.note_of(n_bptr, b, a) {
                None => break,
                // It was the last of its chain.
                Some(None) => return Cursor { link: 0, prev: 0 },
                Some(Some(succ)) => {
                    if succ.slot() < n_bptr {
                        let s = self.bptr(succ.slot());
                        if s.o_beg != 0 && s.gen == succ.generation() && bucket_of(s.owner) == b {
                            return Cursor { link: succ.slot() + 1, prev: 0 };
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
        let head = self.hdr().owner_heads[b];
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
            if e.o_beg == 0 || bucket_of(e.owner) != b {
                return Err(bad(at.link));
            }
            // Reached through a link: the entry must name where the walk
            // came from, and a link never leads back to the head.
            if at.prev != 0 && (e.prev != at.prev || at.link == head) {
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

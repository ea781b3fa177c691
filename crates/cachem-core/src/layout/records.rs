//! Single records: reads (`get`, `meta`, iteration in slot order and
//! along an owner's chain), `insert` and `remove`, and the "light"
//! predicates the optimistic readers rely on. Crash argument: each mutation
//! is a sequence of fenced single-word stores with a fault point between
//! each pair; `docs/design.md` ("Insert", "Eager remove", "Deferred
//! remove") gives the orderings and what recovery makes of each cut.

use super::*;

impl<'a> Layout<'a> {
    // ----- reads ----------------------------------------------------------

    /// The record's bytes, or `Stale` / `Corrupt`.
    #[inline(always)]
    pub fn try_get(&self, id: RecordId) -> Result<&[u8]> {
        let st = self.st()?;
        let (_, o, b) = self.resolve(&st, id)?;
        let d = (o + BH) as usize;
        Ok(&self.buf[d..d + b.len as usize])
    }

    /// The record's bytes, or `None` if the id is stale (or the region corrupt).
    #[inline]
    pub fn get(&self, id: RecordId) -> Option<&[u8]> {
        self.try_get(id).ok()
    }

    /// The record's bytes for writing, or `Stale` / `Corrupt`.
    pub fn try_get_mut(&mut self, id: RecordId) -> Result<&mut [u8]> {
        let st = self.st()?;
        self.check_no_journal()?;
        let (_, o, b) = self.resolve(&st, id)?;
        let d = (o + BH) as usize;
        Ok(&mut self.buf[d..d + b.len as usize])
    }

    /// The record's bytes for writing, or `None`.
    #[inline]
    pub fn get_mut(&mut self, id: RecordId) -> Option<&mut [u8]> {
        self.try_get_mut(id).ok()
    }

    /// Owner, pid, start time and length of a record.
    pub fn meta(&self, id: RecordId) -> Result<RecordMeta> {
        let st = self.st()?;
        let (e, _, b) = self.resolve(&st, id)?;
        Ok(meta_of(id, &e, b.len))
    }

    /// The record as a `T`. Errors if the length differs from
    /// `size_of::<T>()` or `T` needs alignment above 8.
    pub fn get_pod<T: bytemuck::Pod>(&self, id: RecordId) -> Result<&T> {
        let bytes = self.try_get(id)?;
        bytemuck::try_from_bytes(bytes).map_err(|_| pod_err::<T>(id, bytes.len()))
    }

    /// The record as a mutable `T`.
    pub fn get_pod_mut<T: bytemuck::Pod>(&mut self, id: RecordId) -> Result<&mut T> {
        let bytes = self.try_get_mut(id)?;
        let len = bytes.len();
        bytemuck::try_from_bytes_mut(bytes).map_err(|_| pod_err::<T>(id, len))
    }

    /// The next record of `owner` after `after`, or the first one when
    /// `after` is `None`. mod_cachem's `cachem_get_id`. Follows the owner
    /// index, so it costs time in proportion to the records of the owner
    /// (and of owners sharing its bucket), not to the table.
    ///
    /// Order: insertion order, oldest first (a recovery keeps it), which
    /// is the table's slot order as long as nothing was removed. `after` is
    /// normally the id the previous call returned; records inserted
    /// meanwhile join the end and are visited too (a loop that replaces
    /// each record it visits must stop at its first replacement). If
    /// `after` was removed since, the iteration goes on with the record
    /// that followed it (the remove left a note), so both of the seed's
    /// loops work: fetch the next id and then remove the current one, or
    /// remove it and then ask for the next after it. A record of another
    /// owner in the same owner bucket (see `docs/format.md`) also gives its
    /// place in the bucket's chain.
    ///
    /// It starts over from the first (and may then visit a record again)
    /// when the removed `after`'s note is gone: a new record took its slot
    /// *and* another remove came since (the header keeps only the latest
    /// note), or a shrink of the table dropped its entry (with its note)
    /// and another remove came since, or a recovery ran and its entry was
    /// reused or dropped; and for an `after` of an owner in another bucket or a
    /// made-up id. A loop that starts from `None` and passes back what it
    /// got ends on any image; after a removal on a corrupt image (a chain
    /// that `verify` rejects) it may not.
    pub fn next_of_owner(&self, owner: OwnerId, after: Option<RecordId>) -> Option<RecordId> {
        self.next_where(owner, after, |_| true)
    }

    /// The next record of `owner` inserted by `pid`, in the order of
    /// [`Layout::next_of_owner`]. mod_cachem's `cachem_get_pid`.
    pub fn next_of_owner_pid(&self, owner: OwnerId, pid: u32, after: Option<RecordId>) -> Option<RecordId> {
        self.next_where(owner, after, |e| e.pid == pid)
    }

    fn next_where(
        &self,
        owner: OwnerId,
        after: Option<RecordId>,
        f: impl FnMut(&Bptr) -> bool,
    ) -> Option<RecordId> {
        let st = self.st().ok()?;
        let b = bucket_of(owner.0);
        let at = self.resume(st.n_bptr, b, after);
        let found = self.chain_find(st.n_bptr, b, at, owner.0, f).ok()??;
        Some(RecordId::new(found.0, found.1.gen))
    }

    /// Every record, in slot order, with its metadata and bytes. Entries that
    /// fail their checks are skipped (`verify` reports them).
    pub fn iter(&self) -> impl Iterator<Item = (RecordMeta, &[u8])> + '_ {
        let st = self.st().ok();
        let n = st.map_or(0, |st| st.n_bptr);
        (0..n).filter_map(move |slot| {
            let e = self.bptr(slot);
            if e.o_beg == 0 {
                return None;
            }
            let id = RecordId::new(slot, e.gen);
            let (e, o, b) = self.resolve(st.as_ref()?, id).ok()?;
            let d = (o + BH) as usize;
            Some((meta_of(id, &e, b.len), &self.buf[d..d + b.len as usize]))
        })
    }

    /// The records of one owner, in the order of
    /// [`Layout::next_of_owner`], through the owner index. Stops early at an
    /// entry that fails its checks (`verify` reports it).
    pub fn iter_owner(&self, owner: OwnerId) -> impl Iterator<Item = (RecordId, &[u8])> + '_ {
        self.iter_owner_meta(owner).map(|(m, d)| (m.id, d))
    }

    /// [`Layout::iter_owner`] with each record's metadata.
    pub fn iter_owner_meta(&self, owner: OwnerId) -> impl Iterator<Item = (RecordMeta, &[u8])> + '_ {
        let st = self.st().ok();
        let b = bucket_of(owner.0);
        let mut at = st.as_ref().map(|st| self.resume(st.n_bptr, b, None));
        std::iter::from_fn(move || {
            let st = st.as_ref()?;
            let (slot, _, next) = self.chain_find(st.n_bptr, b, at?, owner.0, |_| true).ok()??;
            at = Some(next);
            let id = RecordId::new(slot, self.bptr(slot).gen);
            let Ok((e, o, bl)) = self.resolve(st, id) else {
                at = None;
                return None;
            };
            let d = (o + BH) as usize;
            Some((meta_of(id, &e, bl.len), &self.buf[d..d + bl.len as usize]))
        })
    }

    // ----- insert ---------------------------------------------------------

    /// Largest record this region could ever hold (when empty).
    pub fn max_record_len(&self) -> u64 {
        max_record_len_for(self.region_size())
    }

    /// Inserts a record and returns its id. `Full` if the free gap is too
    /// small now, `TooLarge` if the record could never fit.
    pub fn insert(&mut self, owner: OwnerId, tag: ProcTag, data: &[u8]) -> Result<RecordId> {
        let len = data.len() as u64;
        if len > self.max_record_len() {
            return Err(Error::TooLarge { len, max: self.max_record_len() });
        }
        let mut st = self.st()?;
        self.check_no_journal()?;
        if self.compaction_paused() {
            // A mutation carries a paused compaction one step on.
            self.resume_compaction(Budget::Step)?;
            st = self.st()?;
        }
        let need = block_size(len);
        let mut head = self.hdr().free_head;
        let want = need + if head == 0 { B } else { 0 };
        if want > st.o_bptop - st.o_fr {
            // Dead blocks or unused entries at the table's top may hold
            // the room: close every hole (finishing a paused compaction;
            // this also shrinks the table), or shrink the table, then try.
            if self.hdr().dead_bytes != 0 || self.compaction_paused() {
                self.compact_now()?;
            } else {
                self.shrink_table()?;
            }
            st = self.st()?;
            head = self.hdr().free_head;
        }
        let free = st.o_bptop - st.o_fr;
        let bucket = bucket_of(owner.0);
        let tail = self.check_ends(st.n_bptr, bucket)?;

        // 1. Take a table entry: the free list first, else grow the table.
        let (slot, gen, o_bptop) = if head != 0 {
            let slot = head - 1;
            if slot >= st.n_bptr {
                return Err(Error::corrupt(
                    "free_head",
                    format!("{head} is beyond the {} table entries", st.n_bptr),
                ));
            }
            let e = *self.bptr(slot);
            if e.o_beg != 0 {
                return Err(Error::corrupt(
                    "free_head",
                    format!("entry {slot} is on the free list but in use"),
                ));
            }
            if e.next > st.n_bptr {
                return Err(Error::corrupt("bptr.next", format!("free entry {slot} links to {}", e.next)));
            }
            if need > free {
                return Err(Error::Full { needed: need, free });
            }
            self.hdr_mut().free_head = e.next;
            // Generation 0 is never handed out (a damaged entry may hold
            // it; verify reports it): take a fresh one instead.
            let gen = if e.gen == 0 { self.take_gen() } else { e.gen };
            (slot, gen, st.o_bptop)
        } else {
            if need + B > free {
                return Err(Error::Full { needed: need + B, free });
            }
            let slot = st.n_bptr;
            let gen = self.take_gen();
            let o_bptop = st.o_bptop - B;
            let off = o_bptop as usize;
            let e: &mut Bptr = bytemuck::from_bytes_mut(&mut self.buf[off..off + BPTR_SIZE]);
            *e = Bptr { o_beg: 0, gen, owner: 0, pid: 0, start_time: 0, next: 0, prev: 0 };
            fence();
            let h = self.hdr_mut();
            h.o_bptop = o_bptop;
            h.n_bptr = slot + 1;
            (slot, gen, o_bptop)
        };
        fence();
        hit("insert.after_take");

        // 2. Write the block past o_fr (invisible until o_fr moves).
        let o = st.o_fr as usize;
        debug_assert!(st.o_fr + need <= o_bptop);
        let bh: &mut BlockHeader = bytemuck::from_bytes_mut(&mut self.buf[o..o + BLOCK_HEADER_SIZE]);
        *bh = BlockHeader { slot, len: len as u32 };
        let d = o + BLOCK_HEADER_SIZE;
        self.buf[d..d + data.len()].copy_from_slice(data);
        self.buf[d + data.len()..o + need as usize].fill(0);
        fence();
        hit("insert.after_block");

        // 3. Publish the entry: metadata first, then offset + gen in one
        // store; then append it to its owner chain.
        let e = self.bptr_mut(slot);
        e.owner = owner.0;
        e.pid = tag.pid;
        e.start_time = tag.start_time;
        e.next = 0;
        e.prev = if tail == 0 { slot + 1 } else { tail };
        fence();
        self.set_loc(slot, st.o_fr as u32, gen);
        fence();
        hit("insert.after_publish");
        self.link_back(slot, bucket, tail);

        // 4. Advance o_fr: the insert is done.
        self.hdr_mut().o_fr = st.o_fr + need;
        fence();
        let h = self.hdr_mut();
        h.u_blks = h.u_blks.wrapping_add(1);
        h.counters.inserts = h.counters.inserts.wrapping_add(1);
        Ok(RecordId::new(slot, gen))
    }

    /// Whether an insert of `len` bytes may move or rewrite a live
    /// record's block or table entry (it compacts first when dead blocks
    /// hold the room it needs). When it does not, the insert only writes the
    /// free gap, an unused table entry and header fields, none of which an
    /// optimistic reader of a live record copies: the guard then leaves the
    /// version even (a "light" mutation; see `docs/design.md`). True when
    /// in doubt.
    pub fn insert_would_compact(&self, len: usize) -> bool {
        let Ok(st) = self.st() else { return true };
        let h = self.hdr();
        let want = block_size(len as u64) + if h.free_head == 0 { B } else { 0 };
        self.compaction_paused()
            || want > st.o_bptop - st.o_fr && (h.dead_bytes != 0 || self.top_entry_free())
    }

    /// Whether removing `id` may move or rewrite another live record's
    /// block or entry: always under `Eager` (it compacts); under `Deferred`
    /// only if it passes the dead-byte bound and compacts. A Deferred remove
    /// that does not compact marks the block dead and clears the entry (one
    /// store each): a reader of the removed record gets its last value or
    /// `Stale`, readers of other records are untouched. True when in doubt.
    pub fn remove_would_compact(&self, id: RecordId) -> bool {
        if self.compaction() != Compaction::Deferred || self.compaction_paused() {
            return true;
        }
        let Ok(st) = self.st() else { return true };
        let Ok((_, _, b)) = self.resolve(&st, id) else { return true };
        let h = self.hdr();
        let dead = h.dead_bytes.saturating_add(b.size);
        dead.saturating_mul(DEAD_BOUND_DIV) > h.o_fr.saturating_sub(H)
    }

    /// Inserts `value`'s bytes.
    pub fn insert_pod<T: bytemuck::Pod>(
        &mut self,
        owner: OwnerId,
        tag: ProcTag,
        value: &T,
    ) -> Result<RecordId> {
        self.insert(owner, tag, bytemuck::bytes_of(value))
    }

    // ----- remove ---------------------------------------------------------

    /// Removes a record. Under `Eager`, the block section behind it is
    /// compacted at once; under `Deferred`, the block is marked dead and a
    /// compaction runs only when dead bytes pass half of the block
    /// section (see [`Layout::compact_now`]).
    pub fn remove(&mut self, id: RecordId) -> Result<()> {
        let st = self.st()?;
        self.check_no_journal()?;
        let (_, o, b) = self.resolve(&st, id)?;
        self.check_links(st.n_bptr, id.slot())?;
        let succ = self.unlink(id.slot());
        if self.compaction() == Compaction::Deferred {
            self.kill_block(id.slot(), o, b.size);
            self.note_removed(id, succ, true);
            self.release_slot(id.slot());
            return self.compact_if_due();
        }
        self.start_journal(o, st.o_fr, o + b.size);
        hit("remove.after_journal");
        let gen = self.take_gen();
        self.set_loc(id.slot(), 0, gen);
        fence();
        hit("remove.after_clear");
        self.note_removed(id, succ, true);
        let pass = self.compact(false, Budget::Whole)?;
        self.count_compaction(&pass);
        let h = self.hdr_mut();
        h.u_blks = h.u_blks.wrapping_sub(1);
        h.counters.removes = h.counters.removes.wrapping_add(1);
        self.release_slot(id.slot());
        Ok(())
    }

    /// Returns a just-freed slot to the free list: O(1), whatever the
    /// slot. The top entry too: the table is not shrunk here (that needs a
    /// scan of the table to take the dropped entries off the free list;
    /// done when its room is wanted, see [`Layout::shrink_table`]), so a
    /// remove costs the same whether its record was the newest or the
    /// oldest, at 1k or 1M records.
    pub(super) fn release_slot(&mut self, slot: u32) {
        let head = self.hdr().free_head;
        self.bptr_mut(slot).next = head;
        fence();
        self.hdr_mut().free_head = slot + 1;
    }

    /// Drops the unused entries at the top of the table (and rebuilds the
    /// free list without them) when there are any: O(table), so it runs
    /// only when their room is wanted: an insert that does not fit
    /// otherwise, and after a compaction (which costs O(block section)
    /// already). Returns whether the table shrank.
    pub(super) fn shrink_table(&mut self) -> Result<bool> {
        let n = self.hdr().n_bptr;
        if n == 0 || self.bptr(n - 1).o_beg != 0 {
            return Ok(false);
        }
        self.rebuild_derived()?;
        Ok(true)
    }

    /// Whether the table's top entry is unused (so [`Layout::shrink_table`]
    /// would give room back to the free gap).
    fn top_entry_free(&self) -> bool {
        let n = self.hdr().n_bptr;
        n != 0 && self.bptr(n - 1).o_beg == 0
    }
}

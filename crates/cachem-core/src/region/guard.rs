//! [`Guard`], the held region lock: the only door to record bytes
//! (references borrow the guard, mutations take `&mut self`). It makes the
//! version word odd before its first change (`begin_write`) and even again
//! when it unlocks, and wraps the engine's record operations. See
//! `docs/design.md` ("Optimistic reads (the version word)").

use super::*;
use crate::ids::{OwnerId, RecordMeta};
use crate::layout::{ProcTag, Removed, Status, VerifyReport};
use std::marker::PhantomData;

/// Makes the version odd unless this guard already did (`Guard::begin_write`
/// for a caller that holds the guard's layout borrowed).
#[inline(always)]
pub(super) fn mark_dirty(region: &Region, dirty: &mut bool) {
    if !*dirty {
        seqlock::begin_write(&region.map);
        *dirty = true;
    }
}

/// The region lock, held. The only door to record bytes: references to
/// records borrow the guard, and mutations take `&mut self`.
pub struct Guard<'r> {
    pub(super) region: &'r Region,
    pub(super) layout: Layout<'r>,
    pub(super) recovered: bool,
    /// This guard made the version odd (it changes the region): it makes
    /// it even again before unlocking.
    pub(super) dirty: bool,
    // A pthread mutex must be unlocked by the thread that locked it.
    pub(super) _not_send: PhantomData<*mut ()>,
}

impl Drop for Guard<'_> {
    #[inline]
    fn drop(&mut self) {
        if std::thread::panicking() {
            // A panic may have abandoned a mutation midway: make the next
            // locker recover.
            self.begin_write();
            self.layout.mark_recovery_required();
        }
        if self.dirty {
            seqlock::end_write(&self.region.map);
        }
        // SAFETY: this guard's existence means this thread holds the lock.
        if let Err(e) = unsafe { mutex::unlock(self.region.mutex_ptr()) } {
            unlock_failed(e);
        }
    }
}

fn names_reserved() -> Error {
    Error::ReservedOwner(OwnerId::NAMES.0)
}

#[cold]
#[inline(never)]
fn unlock_failed(e: io::Error) {
    tracing::error!("unlocking region failed: {e}");
}

impl<'r> Guard<'r> {
    /// Makes the version odd before the first change this guard makes, so
    /// optimistic readers retry or take the lock until it unlocks. Every
    /// method that may change the region (or hands out `&mut` to its
    /// bytes) calls this first.
    #[inline(always)]
    pub(super) fn begin_write(&mut self) {
        mark_dirty(self.region, &mut self.dirty);
    }

    /// Whether taking this lock recovered the region.
    pub fn recovered(&self) -> bool {
        self.recovered
    }

    /// The region this guard locks.
    pub fn region(&self) -> &'r Region {
        self.region
    }

    /// Largest record this region could ever hold (when empty).
    pub fn max_record_len(&self) -> u64 {
        self.region.max_record_len()
    }

    /// The engine, for operations not wrapped here (tests, tools): a view
    /// that borrows this guard, so it cannot outlive the lock.
    ///
    /// It is a fresh view each time, not the guard's own engine, so nothing
    /// can be swapped out of the guard and kept after the unlock:
    ///
    /// ```compile_fail,E0505
    /// # fn keep(r: &cachem_core::Region) {
    /// let mut g = r.lock().unwrap();
    /// let l = g.layout();
    /// drop(g); // unlocks: the view may not live on
    /// l.records();
    /// # }
    /// ```
    pub fn layout(&mut self) -> Layout<'_> {
        self.begin_write();
        self.layout.reborrow()
    }

    /// Inserts a record owned by `owner`, stamped with this process's pid
    /// and start time. mod_cachem's `cachem_add`. If the region is full, dead
    /// processes' records are reaped and the insert is tried once more.
    pub fn insert(&mut self, owner: OwnerId, data: &[u8]) -> Result<RecordId> {
        if owner.is_names() {
            return Err(names_reserved());
        }
        // Light unless it compacts: it writes no byte a reader of a live
        // record copies (`Layout::insert_would_compact`).
        if self.layout.insert_would_compact(data.len()) {
            self.begin_write();
        }
        let tag = self.stamp(owner.is_process() || self.region.options & crate::format::OPT_REAP_ALL != 0)?;
        match self.layout.insert(owner, tag, data) {
            Err(Error::Full { .. }) if self.region.reap && self.reap()?.records > 0 => {
                self.layout.insert(owner, tag, data)
            }
            r => r,
        }
    }

    /// This process's pid and start time for a record. `strict`: the record
    /// will be judged by its pid (process-scoped, or a region that reaps
    /// every record of a dead process), so a process in another pid
    /// namespace than the region's is refused with `PidNamespace`, as at
    /// open — also through a handle inherited across `unshare(CLONE_NEWPID)`
    /// and `fork` (the namespace is read again whenever the pid changes).
    #[inline]
    pub(crate) fn stamp(&self, strict: bool) -> Result<ProcTag> {
        if strict && self.region.pid_ns != 0 {
            let ours = process::my_pid_namespace();
            if self.region.foreign_ns || (ours != 0 && ours != self.region.pid_ns) {
                // Our pid means another process in the creator's namespace:
                // a reaper there would judge the record by the wrong process.
                let path = self.region.display_path();
                return Err(Error::PidNamespace { path, region_ns: self.region.pid_ns, our_ns: ours });
            }
        }
        let (pid, start_time) = process::me();
        Ok(ProcTag { pid, start_time })
    }

    /// The id registered for `name` in the region's name table, if any.
    pub fn name_lookup(&self, name: &[u8]) -> Option<OwnerId> {
        self.layout.name_lookup(name)
    }

    /// The id of `name`, registered in the region's name table if new
    /// (`cachem_id(name)`); `Ok(None)` when every owner id is used. The
    /// caller checks the name. See `docs/ids.md`.
    pub fn register_name(&mut self, name: &[u8]) -> Result<Option<OwnerId>> {
        if let Some(id) = self.layout.name_lookup(name) {
            return Ok(Some(id));
        }
        let tag = self.stamp(false)?;
        self.begin_write();
        self.layout.register_name(name, tag)
    }

    /// A fresh owner id with no name (`cachem_id(NULL)`); `Ok(None)` when
    /// every owner id is used.
    pub fn unique_owner(&mut self) -> Result<Option<OwnerId>> {
        self.begin_write();
        self.layout.unique_owner()
    }

    /// Every registered name with its id, in registration order.
    pub fn names(&self) -> Vec<(Vec<u8>, OwnerId)> {
        self.layout.names()
    }

    /// The next owner id the name table would hand out.
    pub fn next_owner(&self) -> u32 {
        self.layout.next_owner()
    }

    /// Installs a saved name table (names with their ids, and the counter)
    /// into a region that has handed out no id yet; false (nothing changed)
    /// otherwise. See [`Layout::adopt_names`].
    pub fn adopt_names(&mut self, names: &[(&[u8], OwnerId)], next: u32) -> Result<bool> {
        let tag = self.stamp(false)?;
        self.begin_write();
        self.layout.adopt_names(names, next, tag)
    }

    /// Inserts `value`'s bytes.
    pub fn insert_pod<T: bytemuck::Pod>(&mut self, owner: OwnerId, value: &T) -> Result<RecordId> {
        self.insert(owner, bytemuck::bytes_of(value))
    }

    /// The record's bytes, or None if the id is stale. mod_cachem's `cachem_get`.
    #[inline]
    pub fn get(&self, id: RecordId) -> Option<&[u8]> {
        self.layout.get(id)
    }

    /// The record's bytes, or `Stale` / `Corrupt`.
    #[inline]
    pub fn try_get(&self, id: RecordId) -> Result<&[u8]> {
        self.layout.try_get(id)
    }

    /// The record's bytes for writing.
    pub fn get_mut(&mut self, id: RecordId) -> Option<&mut [u8]> {
        self.begin_write();
        self.layout.get_mut(id)
    }

    /// The record as a `T`.
    pub fn get_pod<T: bytemuck::Pod>(&self, id: RecordId) -> Result<&T> {
        self.layout.get_pod(id)
    }

    /// The record as a mutable `T`.
    pub fn get_pod_mut<T: bytemuck::Pod>(&mut self, id: RecordId) -> Result<&mut T> {
        self.begin_write();
        self.layout.get_pod_mut(id)
    }

    /// Owner, pid, start time and length of a record.
    pub fn meta(&self, id: RecordId) -> Result<RecordMeta> {
        self.layout.meta(id)
    }

    /// Removes a record (Eager: compacts at once; Deferred: marks its block
    /// dead for a later compaction). mod_cachem's `cachem_delete`. A record
    /// of the name table is `Stale` here.
    pub fn remove(&mut self, id: RecordId) -> Result<()> {
        if self.layout.meta(id).is_ok_and(|m| m.owner.is_names()) {
            return Err(Error::Stale(id));
        }
        // A Deferred remove that does not compact is light
        // (`Layout::remove_would_compact`).
        if self.layout.remove_would_compact(id) {
            self.begin_write();
        }
        self.layout.remove(id)
    }

    /// The next record of `owner` after `after` (in insertion order; see
    /// [`Layout::next_of_owner`] for a removal mid-iteration and other
    /// `after`s). mod_cachem's `cachem_get_id`. Costs time in proportion to
    /// the owner's records, through the owner index.
    pub fn next_of_owner(&self, owner: OwnerId, after: Option<RecordId>) -> Option<RecordId> {
        if owner.is_names() {
            return None;
        }
        self.layout.next_of_owner(owner, after)
    }

    /// The next record of `owner` inserted by `pid`. mod_cachem's `cachem_get_pid`.
    pub fn next_of_owner_pid(&self, owner: OwnerId, pid: u32, after: Option<RecordId>) -> Option<RecordId> {
        if owner.is_names() {
            return None;
        }
        self.layout.next_of_owner_pid(owner, pid, after)
    }

    /// Every record with its metadata and bytes (the name table's records,
    /// owner [`OwnerId::NAMES`], are not users' records and are left out).
    pub fn iter(&self) -> impl Iterator<Item = (RecordMeta, &[u8])> + '_ {
        self.layout.iter().filter(|(m, _)| !m.owner.is_names())
    }

    /// The records of one owner, in insertion order, through the owner index
    /// (none for [`OwnerId::NAMES`]).
    pub fn iter_owner(&self, owner: OwnerId) -> impl Iterator<Item = (RecordId, &[u8])> + '_ {
        self.iter_owner_meta(owner).map(|(m, d)| (m.id, d))
    }

    /// The records of one owner with their metadata, in insertion order.
    pub fn iter_owner_meta(&self, owner: OwnerId) -> impl Iterator<Item = (RecordMeta, &[u8])> + '_ {
        self.layout.iter_owner_meta(owner).filter(move |_| !owner.is_names())
    }

    /// Removes the records of `owner` for which `pick` returns true, in one
    /// pass over that owner's records only.
    pub fn remove_of_owner(
        &mut self,
        owner: OwnerId,
        pick: impl FnMut(&RecordMeta, &[u8]) -> bool,
    ) -> Result<Removed> {
        if owner.is_names() {
            return Ok(Removed::default());
        }
        let (region, dirty) = (self.region, &mut self.dirty);
        self.layout.remove_of_owner_then(owner, pick, || mark_dirty(region, dirty))
    }

    /// Removes every record of `owner` inserted by `pid`. mod_cachem's
    /// `cachem_delete_pid`.
    pub fn purge(&mut self, owner: OwnerId, pid: u32) -> Result<usize> {
        if owner.is_names() {
            return Ok(0);
        }
        let (region, dirty) = (self.region, &mut self.dirty);
        let r = self.layout.remove_of_owner_then(owner, |m, _| m.pid == pid, || mark_dirty(region, dirty));
        Ok(r?.records)
    }

    /// Removes every record for which `keep` returns false, in one pass
    /// (the name table's records are kept, and not shown to `keep`).
    pub fn retain(&mut self, mut keep: impl FnMut(&RecordMeta, &[u8]) -> bool) -> Result<Removed> {
        let (region, dirty) = (self.region, &mut self.dirty);
        self.layout.retain_then(|m, d| m.owner.is_names() || keep(m, d), || mark_dirty(region, dirty))
    }

    /// Closes every hole left by removes in one compaction (`Deferred`
    /// regions; nothing to do under `Eager`). Returns the bytes moved.
    pub fn compact(&mut self) -> Result<u64> {
        self.begin_write();
        self.layout.compact_now()
    }

    /// The region's compaction policy.
    pub fn compaction(&self) -> Compaction {
        self.layout.compaction()
    }

    /// Full invariant check.
    pub fn verify(&self) -> Result<VerifyReport> {
        self.layout.verify()
    }

    /// Geometry, usage and counters.
    pub fn status(&self) -> Result<Status> {
        self.layout.status()
    }
}

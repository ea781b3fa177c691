//! The owner-name table: `cachem_id(name)` answered from the region itself.
//!
//! Each registered name is one record of the reserved owner
//! [`OwnerId::NAMES`] (on its own owner bucket, [`NAMES_BUCKET`]): the id as
//! a little-endian u32, then the name's bytes. The next id to hand out is
//! the header's `next_owner` (0 means 1). A registration bumps the counter
//! with one aligned store and then inserts the name record (an ordinary,
//! crash-safe insert): a process killed between the two wastes an id, never
//! hands one out twice. Unique ids (`cachem_id(NULL)`) only bump the
//! counter. Nothing read here is trusted: a name record shorter than 5 bytes
//! or with an id out of range is skipped, and the counter never goes below
//! an id found in the table.
//!
//! A hash index makes a lookup of a known name constant-time: one record
//! of the reserved owner [`OwnerId::NAMES_INDEX`] (alone on its own bucket,
//! so found in one step), an open-addressing table of `(hash, RecordId)`
//! entries pointing at name records. It is only a hint: an entry is used
//! only if its record resolves, is a name record and holds the same name,
//! so a stale, torn or hostile index costs a walk of the chain, never a
//! wrong id. A name the index does not find is looked for by the walk
//! (registration always walks before handing out an id), and the index is
//! repaired or rebuilt (twice the size) under the same lock.
//!
//! The callers hold the region lock; see `docs/ids.md`.

use super::*;

/// Bytes in front of the name in a name record (the id).
const NAME_ID: usize = 4;

fn decode(bytes: &[u8]) -> Option<(OwnerId, &[u8])> {
    if bytes.len() <= NAME_ID {
        return None;
    }
    let id = u32::from_le_bytes([bytes[0], bytes[1], bytes[2], bytes[3]]);
    (id != 0 && !OwnerId(id).is_names()).then_some((OwnerId(id), &bytes[NAME_ID..]))
}

/// The index record: magic, capacity (a power of two), entries in use,
/// then `capacity` entries of `INDEX_ENTRY` bytes: the name's hash (u32),
/// 4 bytes unused, the name record's `RecordId` (u64, 0 = empty).
const INDEX_MAGIC: u32 = u32::from_le_bytes(*b"NIX1");
const INDEX_HEAD: usize = 16;
const INDEX_ENTRY: usize = 16;
/// The smallest index: 16 entries (272 bytes).
const INDEX_MIN: usize = 16;

/// FNV-1a of the name, folded to 32 bits (0 is kept for "no hash").
fn name_hash(name: &[u8]) -> u32 {
    let mut h: u64 = 0xcbf2_9ce4_8422_2325;
    for &b in name {
        h ^= u64::from(b);
        h = h.wrapping_mul(0x0000_0100_0000_01b3);
    }
    ((h >> 32) as u32 ^ h as u32).max(1)
}

fn le32(b: &[u8], at: usize) -> u32 {
    u32::from_le_bytes([b[at], b[at + 1], b[at + 2], b[at + 3]])
}

/// The capacity of an index record, if its bytes are a well-formed one.
fn index_cap(d: &[u8]) -> Option<usize> {
    if d.len() < INDEX_HEAD || le32(d, 0) != INDEX_MAGIC {
        return None;
    }
    let cap = le32(d, 4) as usize;
    (cap.is_power_of_two() && d.len() == INDEX_HEAD + cap * INDEX_ENTRY).then_some(cap)
}

/// The entry of the index at `i`: (hash, record id).
fn index_entry(d: &[u8], i: usize) -> (u32, u64) {
    let at = INDEX_HEAD + i * INDEX_ENTRY;
    let mut id = [0u8; 8];
    id.copy_from_slice(&d[at + 8..at + 16]);
    (le32(d, at), u64::from_le_bytes(id))
}

/// An index of `cap` entries holding `entries`.
fn index_build(cap: usize, entries: &[(u32, RecordId)]) -> Vec<u8> {
    let mut d = vec![0u8; INDEX_HEAD + cap * INDEX_ENTRY];
    d[0..4].copy_from_slice(&INDEX_MAGIC.to_le_bytes());
    d[4..8].copy_from_slice(&(cap as u32).to_le_bytes());
    for &(h, id) in entries {
        index_put(&mut d, cap, h, id);
    }
    d
}

/// Puts an entry into an index of capacity `cap` (which has room).
fn index_put(d: &mut [u8], cap: usize, h: u32, id: RecordId) {
    let mut i = h as usize & (cap - 1);
    for _ in 0..cap {
        if index_entry(d, i).1 == 0 {
            let at = INDEX_HEAD + i * INDEX_ENTRY;
            // The record id first, the hash last: a reader of a torn entry
            // sees a hash that does not match, or a record it checks.
            d[at + 8..at + 16].copy_from_slice(&id.to_u64().to_le_bytes());
            d[at..at + 4].copy_from_slice(&h.to_le_bytes());
            let used = le32(d, 8).saturating_add(1);
            d[8..12].copy_from_slice(&used.to_le_bytes());
            return;
        }
        i = (i + 1) & (cap - 1);
    }
}

impl<'a> Layout<'a> {
    /// The index record (the head of its bucket), if there is a valid one.
    fn name_index(&self) -> Option<(RecordId, &[u8], usize)> {
        let (id, d) = self.iter_owner(OwnerId::NAMES_INDEX).next()?;
        index_cap(d).map(|cap| (id, d, cap))
    }

    /// The name's id through the index: `None` when the index has no
    /// (valid) entry for it. Probes at most the index's capacity.
    fn name_indexed(&self, name: &[u8]) -> Option<OwnerId> {
        let (_, d, cap) = self.name_index()?;
        let h = name_hash(name);
        let mut i = h as usize & (cap - 1);
        for _ in 0..cap {
            let (eh, raw) = index_entry(d, i);
            if raw == 0 {
                return None;
            }
            if eh == h {
                let rid = RecordId::from_u64(raw);
                let found = self
                    .meta(rid)
                    .ok()
                    .filter(|m| m.owner == OwnerId::NAMES)
                    .and_then(|_| self.get(rid))
                    .and_then(decode)
                    .filter(|(_, n)| *n == name);
                if let Some((id, _)) = found {
                    return Some(id);
                }
            }
            i = (i + 1) & (cap - 1);
        }
        None
    }

    /// Adds the name record `rid` (of `name`) to the index, in place when
    /// it has room (at most half full), else by a new index of twice the
    /// names (every name record, from a walk) replacing the old one. Best
    /// effort: the index is a hint, so a full region only leaves it stale.
    fn name_index_add(&mut self, name: &[u8], rid: RecordId, tag: ProcTag) {
        let h = name_hash(name);
        if let Some((iid, d, cap)) = self.name_index() {
            if (le32(d, 8) as usize + 1) * 2 <= cap {
                if let Some(d) = self.get_mut(iid) {
                    index_put(d, cap, h, rid);
                }
                return;
            }
        }
        self.name_index_rebuild(tag);
    }

    /// Replaces the index by one of every name record, at most half full.
    fn name_index_rebuild(&mut self, tag: ProcTag) {
        let entries: Vec<(u32, RecordId)> = self
            .iter_owner(OwnerId::NAMES)
            .filter_map(|(id, d)| decode(d).map(|(_, n)| (name_hash(n), id)))
            .collect();
        let cap = ((entries.len() + 1) * 2).next_power_of_two().max(INDEX_MIN);
        let old: Vec<RecordId> = self.iter_owner(OwnerId::NAMES_INDEX).map(|(id, _)| id).collect();
        if self.insert(OwnerId::NAMES_INDEX, tag, &index_build(cap, &entries)).is_ok() {
            for id in old {
                let _ = self.remove(id);
            }
        }
    }

    /// The id registered for `name`, if any: the index, else a walk of the
    /// name chain.
    pub fn name_lookup(&self, name: &[u8]) -> Option<OwnerId> {
        if let Some(id) = self.name_indexed(name) {
            return Some(id);
        }
        let want = NAME_ID + name.len();
        self.iter_owner(OwnerId::NAMES)
            .filter(|(_, d)| d.len() == want)
            .find_map(|(_, d)| decode(d).filter(|(_, n)| *n == name).map(|(id, _)| id))
    }

    /// Every registered name with its id, in registration order.
    pub fn names(&self) -> Vec<(Vec<u8>, OwnerId)> {
        self.iter_owner(OwnerId::NAMES)
            .filter_map(|(_, d)| decode(d))
            .map(|(id, n)| (n.to_vec(), id))
            .collect()
    }

    /// The next id the table would hand out (1 on a fresh region).
    pub fn next_owner(&self) -> u32 {
        self.hdr().next_owner.max(1)
    }

    /// Takes the next id: `None` when every id is used. The counter is
    /// raised past `floor` first (the largest id found in the table, so a
    /// damaged counter never hands out an id twice).
    fn take_owner_id(&mut self, floor: u32) -> Option<OwnerId> {
        let id = self.next_owner().max(floor.saturating_add(1));
        if OwnerId(id).is_names() {
            return None;
        }
        // One aligned 4-byte store: the id is spent from here on.
        self.hdr_mut().next_owner = id + 1;
        fence();
        Some(OwnerId(id))
    }

    /// A fresh id with no name (`cachem_id(NULL)`); `None` when every id
    /// is used.
    pub fn unique_owner(&mut self) -> Result<Option<OwnerId>> {
        self.st()?;
        self.check_no_journal()?;
        let floor = self.names().iter().map(|n| n.1 .0).max().unwrap_or(0);
        Ok(self.take_owner_id(floor))
    }

    /// The id of `name`, registering it (stamped with `tag`) if it is new.
    /// `Ok(None)` when every id is used. The caller checks the name (not
    /// empty, at most 4096 bytes, no NUL).
    pub fn register_name(&mut self, name: &[u8], tag: ProcTag) -> Result<Option<OwnerId>> {
        if let Some(id) = self.name_indexed(name) {
            return Ok(Some(id));
        }
        let mut floor = 0;
        let want = NAME_ID + name.len();
        let mut found = None;
        for (rid, d) in self.iter_owner(OwnerId::NAMES) {
            if let Some((id, n)) = decode(d) {
                if d.len() == want && n == name {
                    found = Some((rid, id));
                    break;
                }
                floor = floor.max(id.0);
            }
        }
        if let Some((rid, id)) = found {
            // Known, but not indexed (an index left stale): repair it.
            self.name_index_add(name, rid, tag);
            return Ok(Some(id));
        }
        if want as u64 > self.max_record_len() {
            return Err(Error::TooLarge { len: want as u64, max: self.max_record_len() });
        }
        self.st()?;
        self.check_no_journal()?;
        let Some(id) = self.take_owner_id(floor) else {
            return Ok(None);
        };
        let mut rec = Vec::with_capacity(want);
        rec.extend_from_slice(&id.0.to_le_bytes());
        rec.extend_from_slice(name);
        hit("names.after_bump");
        let rid = self.insert(OwnerId::NAMES, tag, &rec)?;
        self.name_index_add(name, rid, tag);
        Ok(Some(id))
    }

    /// Installs `names` with their ids and raises the counter to `next`
    /// (a snapshot of another region's table: a graceful restart that
    /// re-creates the region keeps every id). Only into a table that has
    /// handed out nothing yet; returns false (and changes nothing) otherwise.
    pub fn adopt_names(&mut self, names: &[(&[u8], OwnerId)], next: u32, tag: ProcTag) -> Result<bool> {
        if self.hdr().next_owner > 1 || self.iter_owner(OwnerId::NAMES).next().is_some() {
            return Ok(false);
        }
        self.st()?;
        self.check_no_journal()?;
        let top = names.iter().map(|n| n.1 .0).max().unwrap_or(0);
        let next = next.max(top.saturating_add(1));
        // Counter first, as for a registration: a kill midway leaves ids
        // spent, never reusable.
        self.hdr_mut().next_owner = next;
        fence();
        for (name, id) in names {
            if id.is_process() || id.is_names() {
                continue;
            }
            let mut rec = Vec::with_capacity(NAME_ID + name.len());
            rec.extend_from_slice(&id.0.to_le_bytes());
            rec.extend_from_slice(name);
            self.insert(OwnerId::NAMES, tag, &rec)?;
        }
        self.name_index_rebuild(tag);
        Ok(true)
    }
}

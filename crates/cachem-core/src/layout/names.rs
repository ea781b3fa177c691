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
//! The callers hold the region lock; see `docs/ids.md`.

use super::*;

/// Bytes in front of the name in a name record (the id).
const NAME_ID: usize = 4;

fn decode(bytes: &[u8]) -> Option<(OwnerId, &[u8])> {
    if bytes.len() <= NAME_ID {
        return None;
    }
    let id = u32::from_le_bytes([bytes[0], bytes[1], bytes[2], bytes[3]]);
    (id != 0 && id != OwnerId::NAMES.0).then_some((OwnerId(id), &bytes[NAME_ID..]))
}

impl<'a> Layout<'a> {
    /// The id registered for `name`, if any (a walk of the name chain).
    pub fn name_lookup(&self, name: &[u8]) -> Option<OwnerId> {
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
        if id == OwnerId::NAMES.0 {
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
        let mut floor = 0;
        let want = NAME_ID + name.len();
        for (_, d) in self.iter_owner(OwnerId::NAMES) {
            if let Some((id, n)) = decode(d) {
                if d.len() == want && n == name {
                    return Ok(Some(id));
                }
                floor = floor.max(id.0);
            }
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
        self.insert(OwnerId::NAMES, tag, &rec)?;
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
        Ok(true)
    }
}

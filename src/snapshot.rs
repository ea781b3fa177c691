//! Snapshots: [`Cache::save`] writes the records of a region to a portable,
//! checksummed file; [`Cache::restore`] adds them to a region again
//! (mod_slotmem_shm's persisted slots: save at a clean stop, restore at the
//! next start).
//!
//! What is saved: every record whose owner is not [`OwnerId::PROCESS`], with
//! its owner's registered name (process-scoped records die with their
//! process, so they are not saved), and the region's whole name table (every
//! registered name with its id, records or not) and id counter. Restored
//! into a region that has handed out no owner id yet (a region just
//! re-created: a graceful restart with a new size or policy), the name table
//! is installed as it was, so every owner keeps its id. Into any other
//! region, restore resolves each name again (ids are not portable between
//! regions); an owner without a name (a [`Cache::unique_id`]) gets one fresh
//! unique id for all its records. Restored records carry the restoring process's pid: in a
//! region created with `reap_all_records_of_dead_processes` they are reaped
//! once that process is gone, so restore from the long-lived process that
//! owns them (the `cachem restore` command refuses such a region).
//!
//! ## File format (version 2, every integer little-endian)
//!
//! | offset | size | field |
//! |---|---|---|
//! | 0 | 8 | magic `CACHEMSN` |
//! | 8 | 4 | format version (2; version 1 files, without the next field, are read too) |
//! | 12 | 4 | flags (0) |
//! | 16 | 4 | number of owners |
//! | 20 | 4 | number of records |
//! | 24 | 4 | the next owner id of the saved region's name table |
//! | 28 | ... | owners (every registered name, and every unnamed owner of a record): saved id (u32), name length (u32; `0xFFFFFFFF` = no name, no bytes follow), name (UTF-8) |
//! | ... | ... | records: saved owner id (u32), length (u32), bytes |
//! | end - 8 | 8 | FNV-1a 64 of every byte before it |
//!
//! A file is checked completely (magic, version, checksum, every length
//! against the file's end, every record's owner in the owner table, every
//! record within this region's largest record) before anything is changed.
//! The checksum detects damage, not tampering.
//!
//! Saving writes a temporary file beside the target, syncs it and renames it
//! into place, so the path holds the old snapshot or the new one, never a
//! half-written file.

use crate::{Cache, Error, OwnerId, Result};
use std::collections::{BTreeMap, BTreeSet, HashMap};
use std::io::Write;
use std::path::{Path, PathBuf};

const MAGIC: &[u8; 8] = b"CACHEMSN";
const VERSION: u32 = 2;
const UNNAMED: u32 = u32::MAX;
const HEAD: usize = 28;
/// Version 1's header: no next-owner field.
const HEAD_V1: usize = 24;
/// Largest snapshot read (a region is at most this size, and a snapshot
/// carries less than its region).
const MAX_FILE: u64 = 1 << 40;

/// What [`Cache::save`] wrote or [`Cache::restore`] added.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct SnapshotReport {
    /// Records written or inserted.
    pub records: usize,
    /// Their data bytes.
    pub bytes: u64,
    /// Distinct owners.
    pub owners: usize,
    /// Process-scoped records left out (save only).
    pub skipped_process_records: usize,
}

fn fnv1a(bytes: &[u8]) -> u64 {
    let mut h: u64 = 0xcbf2_9ce4_8422_2325;
    for &b in bytes {
        h ^= b as u64;
        h = h.wrapping_mul(0x0000_0100_0000_01b3);
    }
    h
}

fn bad(path: &Path, reason: impl Into<String>) -> Error {
    Error::Snapshot { path: path.to_path_buf(), reason: reason.into() }
}

/// A parsed, checked snapshot.
struct Parsed<'a> {
    /// Saved owner id -> name.
    owners: BTreeMap<u32, Option<&'a str>>,
    records: Vec<(u32, &'a [u8])>,
    /// The saved region's next owner id (0: unknown, a version 1 file).
    next: u32,
}

struct Cursor<'a, 'p> {
    body: &'a [u8],
    at: usize,
    path: &'p Path,
}

impl<'a> Cursor<'a, '_> {
    fn take(&mut self, n: usize, what: &str) -> Result<&'a [u8]> {
        let left = self.body.len() - self.at;
        if n > left {
            return Err(bad(
                self.path,
                format!("truncated: {what} at offset {} needs {n} bytes, {left} left", self.at),
            ));
        }
        let s = &self.body[self.at..self.at + n];
        self.at += n;
        Ok(s)
    }
}

fn parse<'a>(path: &Path, b: &'a [u8]) -> Result<Parsed<'a>> {
    if b.len() < 8 || &b[..8] != MAGIC {
        return Err(bad(path, "not a cachem snapshot (bad magic)"));
    }
    if b.len() < HEAD_V1 + 8 {
        return Err(bad(
            path,
            format!("truncated: {} bytes, a snapshot has at least {}", b.len(), HEAD_V1 + 8),
        ));
    }
    let u32_at = |o: usize| u32::from_le_bytes([b[o], b[o + 1], b[o + 2], b[o + 3]]);
    let version = u32_at(8);
    let head = match version {
        1 => HEAD_V1,
        VERSION => HEAD,
        _ => {
            return Err(bad(
                path,
                format!("format version {version}, this build reads versions 1 and {VERSION}"),
            ))
        }
    };
    if b.len() < head + 8 {
        return Err(bad(path, format!("truncated: {} bytes, a snapshot has at least {}", b.len(), head + 8)));
    }
    let next = if version == 1 { 0 } else { u32_at(24) };
    let (body, sum) = b.split_at(b.len() - 8);
    let stored = u64::from_le_bytes(sum.try_into().map_err(|_| bad(path, "truncated checksum"))?);
    let actual = fnv1a(body);
    if stored != actual {
        return Err(bad(
            path,
            format!("checksum mismatch (stored {stored:016x}, computed {actual:016x}): the file is damaged"),
        ));
    }
    let flags = u32_at(12);
    if flags != 0 {
        return Err(bad(path, format!("unknown flags {flags:#x}")));
    }
    let n_owners = u32_at(16) as usize;
    let n_records = u32_at(20) as usize;
    let mut cur = Cursor { body, at: head, path };
    let word = |s: &[u8]| u32::from_le_bytes([s[0], s[1], s[2], s[3]]);
    let mut owners = BTreeMap::new();
    for i in 0..n_owners {
        let id = word(cur.take(4, "owner id")?);
        let len = word(cur.take(4, "owner name length")?);
        if OwnerId(id).is_process() || OwnerId(id).is_names() {
            return Err(bad(
                path,
                format!("owner entry {i} has the reserved owner id {id}, which is never saved"),
            ));
        }
        let name = if len == UNNAMED {
            None
        } else {
            let raw = cur.take(len as usize, "owner name")?;
            Some(std::str::from_utf8(raw).map_err(|_| bad(path, format!("owner {id}'s name is not UTF-8")))?)
        };
        if owners.insert(id, name).is_some() {
            return Err(bad(path, format!("owner {id} appears twice in the owner table")));
        }
    }
    // Each record takes at least 8 bytes: a bogus count fails here, before
    // any allocation of its size.
    if n_records > (body.len() - cur.at) / 8 {
        return Err(bad(
            path,
            format!("truncated: {n_records} records cannot fit in {} bytes", body.len() - cur.at),
        ));
    }
    let mut records = Vec::with_capacity(n_records);
    for i in 0..n_records {
        let owner = word(cur.take(4, "record owner")?);
        let len = word(cur.take(4, "record length")?);
        let data = cur.take(len as usize, "record data")?;
        if !owners.contains_key(&owner) {
            return Err(bad(
                path,
                format!("record {i} belongs to owner {owner}, absent from the owner table"),
            ));
        }
        records.push((owner, data));
    }
    if cur.at != body.len() {
        return Err(bad(path, format!("{} unexpected bytes after the last record", body.len() - cur.at)));
    }
    Ok(Parsed { owners, records, next })
}

fn encode(owners: &BTreeMap<u32, Option<String>>, records: &[(u32, Vec<u8>)], next: u32) -> Vec<u8> {
    let mut b = Vec::with_capacity(HEAD + 8 + records.iter().map(|r| 8 + r.1.len()).sum::<usize>());
    b.extend_from_slice(MAGIC);
    b.extend_from_slice(&VERSION.to_le_bytes());
    b.extend_from_slice(&0u32.to_le_bytes());
    b.extend_from_slice(&(owners.len() as u32).to_le_bytes());
    b.extend_from_slice(&(records.len() as u32).to_le_bytes());
    b.extend_from_slice(&next.to_le_bytes());
    for (id, name) in owners {
        b.extend_from_slice(&id.to_le_bytes());
        match name {
            Some(n) => {
                b.extend_from_slice(&(n.len() as u32).to_le_bytes());
                b.extend_from_slice(n.as_bytes());
            }
            None => b.extend_from_slice(&UNNAMED.to_le_bytes()),
        }
    }
    for (owner, data) in records {
        b.extend_from_slice(&owner.to_le_bytes());
        b.extend_from_slice(&(data.len() as u32).to_le_bytes());
        b.extend_from_slice(data);
    }
    let sum = fnv1a(&b);
    b.extend_from_slice(&sum.to_le_bytes());
    b
}

/// Writes `bytes` to `path` through a synced temporary file and a rename.
fn write_atomically(path: &Path, bytes: &[u8], mode: u32) -> Result<()> {
    use std::os::unix::fs::OpenOptionsExt;
    fn io<'a>(op: &'static str, p: &'a Path) -> impl FnOnce(std::io::Error) -> Error + 'a {
        move |source| Error::Io { op, path: p.to_path_buf(), source }
    }
    let dir = match path.parent() {
        Some(d) if !d.as_os_str().is_empty() => d.to_path_buf(),
        _ => PathBuf::from("."),
    };
    let name = path.file_name().ok_or_else(|| bad(path, "the path names no file"))?;
    let mut tmp_name = std::ffi::OsString::from(".");
    tmp_name.push(name);
    tmp_name.push(format!(".tmp-{}", std::process::id()));
    let tmp = dir.join(tmp_name);
    let _ = std::fs::remove_file(&tmp);
    let r = (|| {
        let mut f = std::fs::OpenOptions::new()
            .write(true)
            .create_new(true)
            .mode(mode)
            .open(&tmp)
            .map_err(io("create snapshot", &tmp))?;
        f.write_all(bytes).map_err(io("write snapshot", &tmp))?;
        f.sync_all().map_err(io("sync snapshot", &tmp))?;
        std::fs::rename(&tmp, path).map_err(io("rename snapshot into", path))?;
        // The rename is durable once the directory is synced.
        if let Ok(d) = std::fs::File::open(&dir) {
            let _ = d.sync_all();
        }
        Ok(())
    })();
    if r.is_err() {
        let _ = std::fs::remove_file(&tmp);
    }
    r
}

impl Cache {
    /// Writes the region's records (all but process-scoped ones), its name
    /// table and id counter to `path`, atomically. See the [module
    /// docs](self). Everything is copied under one lock.
    pub fn save(&self, path: impl AsRef<Path>) -> Result<SnapshotReport> {
        let path = path.as_ref();
        let mut skipped = 0;
        let (records, names, next) = {
            let g = self.lock()?;
            let records: Vec<(u32, Vec<u8>)> = g
                .iter()
                .filter(|(m, _)| {
                    skipped += m.owner.is_process() as usize;
                    !m.owner.is_process()
                })
                .map(|(m, d)| (m.owner.get(), d.to_vec()))
                .collect();
            (records, crate::names_of(&g), g.next_owner())
        };
        let mut owners: BTreeMap<u32, Option<String>> = records.iter().map(|r| (r.0, None)).collect();
        let used = owners.len();
        owners.extend(names.into_iter().map(|(n, id)| (id.get(), Some(n))));
        let bytes = encode(&owners, &records, next);
        write_atomically(path, &bytes, self.mode)?;
        Ok(SnapshotReport {
            records: records.len(),
            bytes: records.iter().map(|r| r.1.len() as u64).sum(),
            owners: used,
            skipped_process_records: skipped,
        })
    }

    /// Adds the records of the snapshot at `path` to this region, with
    /// the saved owner ids kept (a region that has handed out no id yet) or
    /// resolved again from the saved names (see the [module docs](self)).
    /// All or nothing: a damaged or foreign file, a record that can never
    /// fit, or a region without room for all of them is an error and leaves
    /// the records as they were (names the snapshot carries may have been
    /// registered by then).
    pub fn restore(&self, path: impl AsRef<Path>) -> Result<SnapshotReport> {
        let path = path.as_ref();
        let io = |op: &'static str| move |source| Error::Io { op, path: path.to_path_buf(), source };
        let len = std::fs::metadata(path).map_err(io("open snapshot"))?.len();
        if len > MAX_FILE {
            return Err(bad(path, format!("{len} bytes is larger than any snapshot")));
        }
        let file = std::fs::read(path).map_err(io("read snapshot"))?;
        let snap = parse(path, &file)?;
        let max = self.max_record_len();
        if let Some((i, (_, d))) = snap.records.iter().enumerate().find(|(_, r)| r.1.len() as u64 > max) {
            return Err(bad(
                path,
                format!("record {i} has {} bytes; this region holds at most {max} bytes per record", d.len()),
            ));
        }
        let named: Vec<(&[u8], OwnerId)> =
            snap.owners.iter().filter_map(|(&id, n)| n.map(|n| (n.as_bytes(), OwnerId(id)))).collect();
        let top = snap.owners.keys().max().copied().unwrap_or(0);
        let mut g = self.lock()?;
        let mut map: HashMap<u32, OwnerId> = HashMap::new();
        if g.adopt_names(&named, snap.next.max(top.saturating_add(1)))? {
            // A fresh table: every owner keeps its saved id.
            map.extend(snap.owners.keys().map(|&id| (id, OwnerId(id))));
        } else {
            for (&id, name) in &snap.owners {
                let new = match name {
                    Some(n) => g.register_name(n.as_bytes())?,
                    None => g.unique_owner()?,
                };
                map.insert(id, new.ok_or_else(crate::exhausted)?);
            }
        }
        let mut added = Vec::with_capacity(snap.records.len());
        for (owner, data) in &snap.records {
            let owner = *map.get(owner).ok_or_else(|| bad(path, "owner table changed under us"))?;
            match g.insert(owner, data) {
                Ok(r) => added.push(r),
                Err(e) => {
                    // All or nothing, under the same lock: nobody saw them.
                    for r in added.into_iter().rev() {
                        if let Err(e2) = g.remove(r) {
                            tracing::error!("rolling back a failed restore: {e2}");
                        }
                    }
                    return Err(e);
                }
            }
        }
        Ok(SnapshotReport {
            records: added.len(),
            bytes: snap.records.iter().map(|r| r.1.len() as u64).sum(),
            owners: snap.records.iter().map(|r| r.0).collect::<BTreeSet<_>>().len(),
            skipped_process_records: 0,
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn sample() -> Vec<u8> {
        let owners: BTreeMap<u32, Option<String>> = [(3, Some("mod_a".to_string())), (9, None)].into();
        encode(&owners, &[(3, b"one".to_vec()), (9, vec![]), (3, vec![7; 100])], 12)
    }

    #[test]
    fn a_snapshot_parses_back_to_what_was_encoded() {
        let b = sample();
        let p = parse(Path::new("x"), &b).unwrap();
        assert_eq!(p.owners.get(&3), Some(&Some("mod_a")));
        assert_eq!(p.owners.get(&9), Some(&None));
        assert_eq!(p.records, vec![(3, &b"one"[..]), (9, &[][..]), (3, &[7u8; 100][..])]);
    }

    #[test]
    fn every_single_byte_change_and_every_truncation_is_rejected() {
        let b = sample();
        for i in 0..b.len() {
            for flip in [0x01u8, 0x80, 0xff] {
                let mut d = b.clone();
                d[i] ^= flip;
                assert!(
                    matches!(parse(Path::new("x"), &d), Err(Error::Snapshot { .. })),
                    "byte {i} ^ {flip:#x}"
                );
            }
        }
        for n in 0..b.len() {
            assert!(matches!(parse(Path::new("x"), &b[..n]), Err(Error::Snapshot { .. })), "length {n}");
        }
    }

    #[test]
    fn a_foreign_file_says_so() {
        let e = parse(Path::new("x"), b"{\"json\": true}").err().unwrap().to_string();
        assert!(e.contains("not a cachem snapshot"), "{e}");
        let mut v = sample();
        v[8] = 3;
        let n = v.len() - 8;
        let sum = fnv1a(&v[..n]);
        v[n..].copy_from_slice(&sum.to_le_bytes());
        let e = parse(Path::new("x"), &v).err().unwrap().to_string();
        assert!(e.contains("format version 3"), "{e}");
    }

    #[test]
    fn a_huge_record_count_is_rejected_before_allocating() {
        let owners = BTreeMap::new();
        let mut v = encode(&owners, &[], 1);
        v[20..24].copy_from_slice(&u32::MAX.to_le_bytes());
        let n = v.len() - 8;
        let sum = fnv1a(&v[..n]);
        v[n..].copy_from_slice(&sum.to_le_bytes());
        let e = parse(Path::new("x"), &v).err().unwrap().to_string();
        assert!(e.contains("truncated"), "{e}");
    }
}

//! The `ops` target: arbitrary operation sequences on a fresh region,
//! checked after every step against a model (records by id, byte for byte),
//! with `verify` after each step and removed ids checked to stay stale.
//!
//! The model is a `BTreeMap`, not a `HashMap`, so that choosing "the n-th
//! live record" is deterministic (libFuzzer needs reproducible runs).
use arbitrary::Arbitrary;
use cachem_core::format::{block_size, HEADER_SIZE, TRAILER_SIZE};
use cachem_core::layout::{format, FormatOptions, Layout, ProcTag};
use cachem_core::{bytemuck, Compaction, Error, OwnerId, RecordId};
use std::collections::{BTreeMap, BTreeSet};

#[derive(Arbitrary, Debug)]
pub struct Input {
    /// Region size: 4096 + 8 * (size % 7681), i.e. 4096..=65536.
    pub size: u16,
    pub generation: u64,
    /// The compaction policy: `Deferred` if true, else `Eager`.
    pub deferred: bool,
    pub ops: Vec<Op>,
}

#[derive(Arbitrary, Debug)]
pub enum Op {
    /// Length: `len & 0xff`, or `len & 0x7fff` when bit 15 is set.
    Insert {
        owner: u8,
        pid: u8,
        len: u16,
        fill: u8,
    },
    /// A record of `max_record_len() + extra - 8` bytes.
    InsertHuge {
        extra: u8,
    },
    Remove {
        pick: u16,
    },
    RemoveStale {
        pick: u16,
    },
    Write {
        pick: u16,
        at: u16,
        byte: u8,
    },
    Get {
        id: u64,
    },
    GetStale {
        pick: u16,
    },
    Retain {
        modulus: u8,
        rem: u8,
    },
    Purge {
        owner: u8,
        pid: u8,
    },
    Next {
        owner: u8,
        pid: Option<u8>,
    },
    Status,
    Recover,
    /// Close every hole now.
    Compact,
}

#[derive(Clone, Debug, PartialEq, Eq)]
struct Rec {
    owner: u32,
    pid: u32,
    data: Vec<u8>,
}

#[derive(Default)]
struct Model {
    size: u64,
    live: BTreeMap<RecordId, Rec>,
    stale: BTreeSet<RecordId>,
    inserts: u64,
    removes: u64,
    deferred: bool,
}

impl Model {
    fn pick(&self, pick: u16) -> Option<RecordId> {
        (!self.live.is_empty()).then(|| *self.live.keys().nth(pick as usize % self.live.len()).unwrap())
    }
    fn kill(&mut self, id: RecordId) {
        assert!(self.live.remove(&id).is_some());
        self.stale.insert(id);
        self.removes += 1;
    }
}

fn tag(pid: u32) -> ProcTag {
    ProcTag { pid, start_time: 500 + pid as u64 }
}

fn stale(r: Result<impl std::fmt::Debug, Error>, what: &str) {
    assert!(matches!(r, Err(Error::Stale(_))), "{what}: expected Stale, got {r:?}");
}

pub fn run(input: Input) {
    let size = 4096 + 8 * (input.size as usize % 7681);
    let mut words = vec![0u64; size / 8];
    let buf: &mut [u8] = bytemuck::cast_slice_mut(&mut words);
    let compaction = if input.deferred { Compaction::Deferred } else { Compaction::Eager };
    format(buf, &FormatOptions { generation: input.generation, compaction, ..Default::default() }).unwrap();
    let mut l = Layout::open(buf).unwrap();
    let mut m = Model { size: size as u64, deferred: input.deferred, ..Default::default() };
    for op in input.ops {
        step(&mut l, &mut m, op);
        check(&l, &m);
    }
}

fn step(l: &mut Layout, m: &mut Model, op: Op) {
    match op {
        Op::Insert { owner, pid, len, fill } => {
            let len = if len & 0x8000 != 0 { len & 0x7fff } else { len & 0xff } as usize;
            let data: Vec<u8> = (0..len).map(|i| fill.wrapping_add(i as u8)).collect();
            insert(l, m, owner as u32 % 4, pid as u32 % 4, data);
        }
        Op::InsertHuge { extra } => {
            let len = (l.max_record_len() + extra as u64).saturating_sub(8) as usize;
            insert(l, m, 1, 1, vec![extra; len]);
        }
        Op::Remove { pick } => match m.pick(pick) {
            Some(id) => {
                l.remove(id).unwrap_or_else(|e| panic!("remove {id}: {e}"));
                m.kill(id);
            }
            None => stale(l.remove(RecordId::new(pick as u32, 1)), "remove on empty"),
        },
        Op::RemoveStale { pick } => {
            if let Some(&id) = m.stale.iter().nth(pick as usize % m.stale.len().max(1)) {
                stale(l.remove(id), "remove of a stale id");
            }
        }
        Op::Write { pick, at, byte } => {
            if let Some(id) = m.pick(pick) {
                let d = l.get_mut(id).expect("get_mut of a live id");
                let r = m.live.get_mut(&id).unwrap();
                assert_eq!(d, &r.data[..]);
                if !d.is_empty() {
                    let i = at as usize % d.len();
                    d[i] = byte;
                    r.data[i] = byte;
                }
            }
        }
        Op::Get { id } => {
            let id = RecordId::from_u64(id);
            match m.live.get(&id) {
                Some(r) => assert_eq!(l.get(id), Some(&r.data[..])),
                None => {
                    stale(l.try_get(id), "try_get of a random id");
                    stale(l.meta(id), "meta of a random id");
                }
            }
        }
        Op::GetStale { pick } => {
            if let Some(&id) = m.stale.iter().nth(pick as usize % m.stale.len().max(1)) {
                assert!(l.get(id).is_none());
                stale(l.try_get(id), "try_get of a stale id");
                stale(l.get_pod::<u64>(id), "get_pod of a stale id");
            }
        }
        Op::Retain { modulus, rem } => {
            let keep = |owner: u32, pid: u32, d: &[u8]| {
                (owner as usize * 7 + pid as usize + d.len()) % (modulus as usize).max(1) != rem as usize
            };
            let r = l.retain(|meta, d| keep(meta.owner.0, meta.pid, d)).expect("retain");
            let gone: Vec<RecordId> =
                m.live.iter().filter(|(_, r)| !keep(r.owner, r.pid, &r.data)).map(|(id, _)| *id).collect();
            let bytes: u64 = gone.iter().map(|id| block_size(m.live[id].data.len() as u64)).sum();
            assert_eq!((r.records, r.bytes), (gone.len(), bytes), "retain");
            gone.into_iter().for_each(|id| m.kill(id));
        }
        Op::Purge { owner, pid } => {
            let (owner, pid) = (owner as u32 % 4, pid as u32 % 4);
            let n = l.purge(OwnerId(owner), pid).expect("purge");
            let gone: Vec<RecordId> =
                m.live.iter().filter(|(_, r)| r.owner == owner && r.pid == pid).map(|(id, _)| *id).collect();
            assert_eq!(n, gone.len(), "purge");
            gone.into_iter().for_each(|id| m.kill(id));
        }
        Op::Next { owner, pid } => {
            let (owner, pid) = (owner as u32 % 4, pid.map(|p| p as u32 % 4));
            let mut want: Vec<RecordId> = m
                .live
                .iter()
                .filter(|(_, r)| r.owner == owner && pid.is_none_or(|p| p == r.pid))
                .map(|(id, _)| *id)
                .collect();
            want.sort_by_key(|id| id.slot());
            // The owner index runs newest first: compare the sets, and
            // iter_owner with next_of_owner in their shared order.
            let (mut got, mut cur) = (Vec::new(), None);
            while let Some(id) = match pid {
                Some(p) => l.next_of_owner_pid(OwnerId(owner), p, cur),
                None => l.next_of_owner(OwnerId(owner), cur),
            } {
                got.push(id);
                cur = Some(id);
                assert!(got.len() <= want.len(), "next_of_owner returns too many");
            }
            let in_order = got.clone();
            got.sort_by_key(|id| id.slot());
            assert_eq!(got, want, "next_of_owner");
            if pid.is_none() {
                let it: Vec<(RecordId, Vec<u8>)> =
                    l.iter_owner(OwnerId(owner)).map(|(id, d)| (id, d.to_vec())).collect();
                let want: Vec<(RecordId, Vec<u8>)> =
                    in_order.iter().map(|id| (*id, m.live[id].data.clone())).collect();
                assert_eq!(it, want, "iter_owner");
            }
        }
        Op::Status => {
            let s = l.status().expect("status");
            let mut owners: BTreeMap<u32, (u32, u64)> = BTreeMap::new();
            let mut pids: BTreeMap<u32, (u32, u64)> = BTreeMap::new();
            for r in m.live.values() {
                let o = owners.entry(r.owner).or_default();
                (o.0, o.1) = (o.0 + 1, o.1 + r.data.len() as u64);
                let p = pids.entry(r.pid).or_default();
                (p.0, p.1) = (p.0 + 1, p.1 + r.data.len() as u64);
            }
            let got: BTreeMap<u32, (u32, u64)> =
                s.owners.iter().map(|o| (o.owner.0, (o.records, o.bytes))).collect();
            assert_eq!(got, owners, "status owners");
            let got: BTreeMap<u32, (u32, u64)> =
                s.pids.iter().map(|p| (p.pid, (p.records, p.bytes))).collect();
            assert_eq!(got, pids, "status pids");
            assert!(s.pids.iter().all(|p| p.start_time == 500 + p.pid as u64));
            assert_eq!((s.counters.inserts, s.counters.removes), (m.inserts, m.removes), "counters");
            assert!(!s.recovery_required);
        }
        Op::Compact => {
            let before = l.verify().unwrap();
            let moved = l.compact_now().expect("compact");
            let v = l.verify().unwrap();
            assert_eq!((v.dead_bytes, v.used_bytes), (0, before.used_bytes - before.dead_bytes), "compact");
            assert_eq!(v.free_bytes, before.free_bytes + before.dead_bytes, "compact");
            assert!(moved <= before.used_bytes);
        }
        Op::Recover => {
            let r = l.recover().expect("recover of a consistent image");
            assert_eq!(r, Default::default(), "recover found work on a consistent image");
        }
    }
}

fn insert(l: &mut Layout, m: &mut Model, owner: u32, pid: u32, data: Vec<u8>) {
    let v = l.verify().unwrap();
    let len = data.len() as u64;
    let r = l.insert(OwnerId(owner), tag(pid), &data);
    let need = block_size(len) + if v.free_slots == 0 { 32 } else { 0 };
    match r {
        Ok(id) => {
            // Dead bytes are reclaimed by a compaction before Full.
            assert!(len <= l.max_record_len() && need <= v.free_bytes + v.dead_bytes, "insert of {len} fit in {v:?}?");
            assert!(!m.stale.contains(&id) && !m.live.contains_key(&id), "insert reissued id {id}");
            m.live.insert(id, Rec { owner, pid, data });
            m.inserts += 1;
        }
        Err(Error::TooLarge { .. }) => assert!(len > l.max_record_len()),
        Err(Error::Full { .. }) => {
            assert!(len <= l.max_record_len() && need > v.free_bytes + v.dead_bytes, "Full with {v:?}");
            assert_eq!(l.dead_bytes(), 0, "Full left dead bytes");
        }
        Err(e) => panic!("insert of {len}: {e}"),
    }
}

fn check(l: &Layout, m: &Model) {
    let v = l.verify().unwrap_or_else(|e| panic!("verify: {e}"));
    let used: u64 = m.live.values().map(|r| block_size(r.data.len() as u64)).sum();
    let slots = m.live.keys().map(|id| id.slot() + 1).max().unwrap_or(0);
    assert_eq!((v.records as usize, v.used_bytes - v.dead_bytes, v.slots), (m.live.len(), used, slots), "{v:?}");
    if !m.deferred {
        assert_eq!(v.dead_bytes, 0, "a dead block in an Eager region");
    }
    assert!(v.dead_bytes * 2 <= v.used_bytes, "dead bytes past the bound: {v:?}");
    let total = (HEADER_SIZE + TRAILER_SIZE) as u64 + v.used_bytes + v.free_bytes + 32 * v.slots as u64;
    assert_eq!(total, m.size, "geometry does not add up: {v:?}");
    let mut n = 0;
    for (meta, d) in l.iter() {
        let r = m.live.get(&meta.id).unwrap_or_else(|| panic!("iter yields unknown {}", meta.id));
        assert_eq!(
            (meta.owner.0, meta.pid, meta.start_time, d),
            (r.owner, r.pid, 500 + r.pid as u64, &r.data[..])
        );
        assert_eq!(d.as_ptr() as usize % 8, 0, "record data not 8-aligned");
        n += 1;
    }
    assert_eq!(n, m.live.len(), "iter count");
    for (&id, r) in &m.live {
        assert_eq!(l.get(id), Some(&r.data[..]), "get {id}");
    }
    for &id in m.stale.iter().rev().take(8) {
        stale(l.try_get(id), "try_get of a removed id");
        stale(l.meta(id), "meta of a removed id");
    }
}

//! The model test: random operations against a `HashMap` model, checking
//! contents, ids, owner iteration and `verify` after every step.

use super::*;
use proptest::prelude::*;
use std::collections::HashMap;

#[derive(Debug, Clone)]
enum Op {
    Insert {
        owner: u32,
        pid: u32,
        len: usize,
        byte: u8,
    },
    Remove(usize),
    GetMut(usize, u8),
    Purge {
        owner: u32,
        pid: u32,
    },
    RetainLen(usize),
    Stale(usize),
    Compact,
    /// Walks an owner with `next_of_owner`, removing every `every`-th
    /// record it visits: before asking for the next (`ask_first`) or after
    /// (asking with the removed id).
    IterRemove {
        owner: u32,
        every: usize,
        ask_first: bool,
    },
}

/// Owners of the model: 0 and 26 share owner bucket 0, 1 and 27 bucket 1.
const MODEL_OWNERS: [u32; 6] = [0, 1, 2, 3, 26, 27];

fn op_strategy() -> impl Strategy<Value = Op> {
    prop_oneof![
        5 => (0..6usize, 1..4u32, 0..120usize, any::<u8>()).prop_map(|(o, pid, len, byte)| Op::Insert { owner: MODEL_OWNERS[o], pid, len, byte }),
        3 => any::<usize>().prop_map(Op::Remove),
        2 => (any::<usize>(), any::<u8>()).prop_map(|(i, b)| Op::GetMut(i, b)),
        1 => (0..6usize, 1..4u32).prop_map(|(o, pid)| Op::Purge { owner: MODEL_OWNERS[o], pid }),
        1 => (0..6usize, 1..4usize, any::<bool>()).prop_map(|(o, every, ask_first)| Op::IterRemove { owner: MODEL_OWNERS[o], every, ask_first }),
        1 => (0..120usize).prop_map(Op::RetainLen),
        1 => any::<usize>().prop_map(Op::Stale),
        1 => Just(Op::Compact),
    ]
}

proptest! {
    #![proptest_config(ProptestConfig { cases: 256, ..ProptestConfig::default() })]

    #[test]
    fn model(deferred in any::<bool>(), ops in proptest::collection::vec(op_strategy(), 1..120)) {
        let policy = if deferred { Compaction::Deferred } else { Compaction::Eager };
        let mut img = Img::with(8192, policy);
        let mut l = img.l();
        let mut model: HashMap<RecordId, (u32, u32, Vec<u8>)> = HashMap::new();
        let mut dead: Vec<RecordId> = vec![];
        let pick = |m: &HashMap<RecordId, (u32, u32, Vec<u8>)>, i: usize| {
            let mut k: Vec<_> = m.keys().copied().collect();
            k.sort();
            (!k.is_empty()).then(|| k[i % k.len()])
        };
        for op in ops {
            match op {
                Op::Insert { owner, pid, len, byte } => {
                    let data = vec![byte; len];
                    let free = l.free_bytes().unwrap();
                    match l.insert(OwnerId(owner), ProcTag { pid, start_time: 0 }, &data) {
                        Ok(id) => { prop_assert!(model.insert(id, (owner, pid, data)).is_none()); }
                        Err(Error::Full { needed, free: f }) => {
                            // Deferred: the insert compacted first, so the
                            // gap may have grown; no dead byte is left.
                            if deferred {
                                prop_assert!(f >= free);
                            } else {
                                prop_assert_eq!(f, free);
                            }
                            prop_assert!(needed > f);
                            prop_assert_eq!(l.dead_bytes(), 0);
                        }
                        Err(e) => prop_assert!(false, "{}", e),
                    }
                }
                Op::Remove(i) => if let Some(id) = pick(&model, i) {
                    l.remove(id).unwrap();
                    model.remove(&id);
                    dead.push(id);
                },
                Op::GetMut(i, b) => if let Some(id) = pick(&model, i) {
                    let m = model.get_mut(&id).unwrap();
                    if let Some(x) = l.get_mut(id).unwrap().first_mut() { *x = b; m.2[0] = b; }
                },
                Op::Purge { owner, pid } => {
                    let n = l.purge(OwnerId(owner), pid).unwrap();
                    let before = model.len();
                    model.retain(|id, (o, p, _)| { let k = !(*o == owner && *p == pid); if !k { dead.push(*id) }; k });
                    prop_assert_eq!(n, before - model.len());
                }
                Op::RetainLen(n) => {
                    let r = l.retain(|m, _| m.len as usize != n).unwrap();
                    let before = model.len();
                    model.retain(|id, (_, _, d)| { let k = d.len() != n; if !k { dead.push(*id) }; k });
                    prop_assert_eq!(r.records, before - model.len());
                }
                Op::Compact => {
                    let used = l.verify().unwrap().used_bytes;
                    let dead_bytes = l.dead_bytes();
                    let moved = l.compact_now().unwrap();
                    let v = l.verify().unwrap();
                    prop_assert_eq!((v.dead_bytes, v.used_bytes), (0, used - dead_bytes));
                    prop_assert!(moved <= used);
                }
                Op::Stale(i) => if !dead.is_empty() {
                    let id = dead[i % dead.len()];
                    prop_assert!(l.get(id).is_none());
                    prop_assert!(matches!(l.remove(id), Err(Error::Stale(_))));
                },
                Op::IterRemove { owner, every, ask_first } => {
                    let mut want: Vec<RecordId> = model.iter().filter(|(_, r)| r.0 == owner).map(|(id, _)| *id).collect();
                    want.sort();
                    let (mut seen, mut cur) = (Vec::new(), None);
                    while let Some(id) = l.next_of_owner(OwnerId(owner), cur) {
                        prop_assert!(seen.len() < want.len(), "visits more than the owner's records");
                        seen.push(id);
                        let remove = seen.len() % every == 0;
                        if remove && ask_first {
                            let next = l.next_of_owner(OwnerId(owner), Some(id));
                            l.remove(id).unwrap();
                            model.remove(&id);
                            dead.push(id);
                            // The id asked for before the remove is the one asked after.
                            prop_assert_eq!(l.next_of_owner(OwnerId(owner), Some(id)), next);
                        } else if remove {
                            l.remove(id).unwrap();
                            model.remove(&id);
                            dead.push(id);
                        }
                        cur = Some(id);
                    }
                    seen.sort();
                    prop_assert_eq!(seen, want, "each record of the owner exactly once");
                }
            }
            for owner in MODEL_OWNERS {
                let mut want: Vec<RecordId> = model.iter().filter(|(_, r)| r.0 == owner).map(|(id, _)| *id).collect();
                want.sort();
                let mut got: Vec<RecordId> = l.iter_owner(OwnerId(owner)).map(|(id, _)| id).collect();
                got.sort();
                prop_assert_eq!(got, want, "iter_owner({})", owner);
            }
            let rep = l.verify().unwrap();
            prop_assert_eq!(rep.records as usize, model.len());
            if !deferred {
                prop_assert_eq!(rep.dead_bytes, 0);
            }
            // Dead bytes never pass half of the block section.
            prop_assert!(rep.dead_bytes * 2 <= rep.used_bytes, "{:?}", rep);
            for (id, (owner, pid, data)) in &model {
                prop_assert_eq!(l.get(*id).unwrap(), &data[..]);
                let m = l.meta(*id).unwrap();
                prop_assert_eq!((m.owner.0, m.pid), (*owner, *pid));
            }
            prop_assert_eq!(l.iter().count(), model.len());
        }
    }
}

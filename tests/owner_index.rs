//! The owner index through the public API: snapshots of one owner's
//! records, and the seed's loops over an owner shared by several processes.

mod common;

use cachem::{Cache, Config, OwnerId, RecordId};
use common::*;
use std::collections::BTreeSet;
use std::time::Duration;

fn config(dir: &std::path::Path) -> Config {
    Config::named("index").dir(dir).size(1 << 20)
}

#[test]
fn iter_owner_copied_is_a_snapshot_of_one_owner() {
    let d = TempDir::new("copied");
    let cache = Cache::open(&config(d.path())).unwrap();
    let (a, b) = (cache.id("a").unwrap(), cache.id("b").unwrap());
    let mut mine = vec![];
    {
        let mut g = cache.lock().unwrap();
        for i in 0..50u32 {
            let owner = [a, b, OwnerId::PROCESS][i as usize % 3];
            let id = g.insert(owner, &i.to_ne_bytes()).unwrap();
            if owner == a {
                mine.push((id, i.to_ne_bytes().to_vec()));
            }
        }
    }
    let copy: Vec<(RecordId, Vec<u8>)> = cache.iter_owner_copied(a).unwrap().collect();
    assert_eq!(copy, mine);
    // In insertion order. The copy does not change with the region, and holds no lock.
    let mut g = cache.lock().unwrap();
    g.remove(mine[0].0).unwrap();
    drop(g);
    assert_eq!(copy.len(), 17);
    assert_eq!(cache.iter_owner_copied(a).unwrap().len(), 16);
    assert_eq!(cache.iter_owner_copied(OwnerId(12345)).unwrap().len(), 0);
}

/// Worker: owner `CACHEM_TEST_OWNER` (all workers' owners share one owner
/// bucket); rounds of: insert 4 records, then walk the owner with the
/// seed's loop, removing every second record it visits (after asking for
/// the next, or before: alternating), checking it visits exactly its own
/// records once.
#[test]
fn worker_index() {
    if !is_worker() {
        return;
    }
    let dir = std::env::var("CACHEM_TEST_DIR").unwrap();
    let owner = OwnerId(std::env::var("CACHEM_TEST_OWNER").unwrap().parse().unwrap());
    let cache = Cache::open(&config(dir.as_ref())).unwrap();
    let mut mine: BTreeSet<RecordId> = BTreeSet::new();
    for round in 0..300u32 {
        let mut g = cache.lock().unwrap();
        for i in 0..4u32 {
            mine.insert(g.insert(owner, &(round * 4 + i).to_ne_bytes()).unwrap());
        }
        let (mut cur, mut seen) = (None, BTreeSet::new());
        while let Some(id) = g.next_of_owner(owner, cur) {
            assert!(seen.insert(id), "visited {id} twice");
            assert!(seen.len() <= mine.len(), "visited a record that is not mine");
            if seen.len() % 2 == 0 {
                if round % 2 == 0 {
                    let next = g.next_of_owner(owner, Some(id));
                    g.remove(id).unwrap();
                    assert_eq!(g.next_of_owner(owner, Some(id)), next);
                } else {
                    g.remove(id).unwrap();
                }
            }
            cur = Some(id);
        }
        assert_eq!(seen, mine, "round {round}: every record of mine, once");
        mine.retain(|id| g.get(*id).is_some());
    }
    say(format!("{}", mine.len()));
}

#[test]
fn processes_sharing_an_owner_bucket_run_the_seeds_loops_at_once() {
    let d = TempDir::new("shared");
    let cache = Cache::open(&config(d.path())).unwrap();
    let owners = [5u32, 5 + cachem::format::USER_BUCKETS as u32, 5 + 2 * cachem::format::USER_BUCKETS as u32];
    let mut ws: Vec<_> = owners
        .iter()
        .map(|o| {
            let env =
                [("CACHEM_TEST_DIR", d.path().display().to_string()), ("CACHEM_TEST_OWNER", o.to_string())];
            spawn_worker("worker_index", &env)
        })
        .collect();
    let mut left = vec![];
    for w in &mut ws {
        left.push(read_line_timeout(w, Duration::from_secs(60)).parse::<usize>().unwrap());
        assert!(wait_timeout(w, Duration::from_secs(30)).success());
    }
    let g = cache.lock().unwrap();
    g.verify().unwrap();
    for (o, n) in owners.iter().zip(left) {
        assert!((1..=8).contains(&n), "owner {o}: {n} records left");
        assert_eq!(g.iter_owner(OwnerId(*o)).count(), n, "owner {o}");
    }
}

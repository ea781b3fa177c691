//! `Cache::save` / `Cache::restore` and `cachem save` / `cachem restore`:
//! round trip across regions with other owner ids, process-scoped records
//! left out, damaged and foreign files refused without any change, all or
//! nothing when the region lacks room, atomic replacement.

// The root package's test helpers (tests/common), shared with its tests.
#[path = "../../../tests/common/mod.rs"]
mod common;

use cachem::{Cache, Config, Error, OwnerId};
use common::*;
use std::collections::BTreeMap;
use std::path::Path;
use std::process::Command;

fn open(dir: &Path, name: &str, size: u64) -> Cache {
    Cache::open(&Config::named(name).dir(dir).size(size)).unwrap()
}

/// (owner name or "#<id>", bytes) of every record, sorted.
fn contents(c: &Cache) -> Vec<(String, Vec<u8>)> {
    let st = c.status().unwrap();
    let names: BTreeMap<OwnerId, String> = st.owner_names.clone();
    let g = c.lock().unwrap();
    let mut v: Vec<_> = g
        .iter()
        .map(|(m, d)| {
            (names.get(&m.owner).cloned().unwrap_or_else(|| format!("#{}", m.owner.get())), d.to_vec())
        })
        .collect();
    v.sort();
    v
}

#[test]
fn a_snapshot_round_trips_with_owner_names_resolved_again() {
    let d = TempDir::new("snap-rt");
    let src = open(d.path(), "src", 1 << 16);
    let a = src.id("mod_a").unwrap();
    let b = src.id("mod_b").unwrap();
    let u = src.unique_id().unwrap();
    {
        let mut g = src.lock().unwrap();
        g.insert(a, b"alpha").unwrap();
        g.insert(b, b"").unwrap();
        g.insert(a, &[9u8; 1000]).unwrap();
        g.insert(u, b"unnamed 1").unwrap();
        g.insert(u, b"unnamed 2").unwrap();
        g.insert(OwnerId::PROCESS, b"process-scoped: not saved").unwrap();
    }
    let file = d.path().join("src.snap");
    let rep = src.save(&file).unwrap();
    assert_eq!((rep.records, rep.owners, rep.skipped_process_records), (5, 3, 1));
    assert_eq!(rep.bytes, 5 + 1000 + 9 + 9);

    // Another region where the same names get other ids.
    let dst = open(d.path(), "dst", 1 << 16);
    for n in ["x", "y", "z"] {
        dst.id(n).unwrap();
    }
    let rep = dst.restore(&file).unwrap();
    assert_eq!((rep.records, rep.owners), (5, 3));
    let a2 = dst.id("mod_a").unwrap();
    assert_ne!(a2, a, "ids are re-resolved, not copied");
    let g = dst.lock().unwrap();
    let mut of_a: Vec<Vec<u8>> = g.iter_owner(a2).map(|(_, d)| d.to_vec()).collect();
    of_a.sort();
    assert_eq!(of_a, vec![vec![9u8; 1000], b"alpha".to_vec()]);
    // The unnamed owner's two records share one fresh id, not a named one.
    let unnamed: Vec<_> = g.iter().filter(|(_, d)| d.starts_with(b"unnamed")).map(|(m, _)| m.owner).collect();
    assert_eq!(unnamed.len(), 2);
    assert_eq!(unnamed[0], unnamed[1]);
    assert!(!unnamed[0].is_process());
    assert!(g.iter().all(|(m, _)| m.pid == std::process::id()));
    drop(g);
    let mut want = contents(&src);
    want.retain(|(o, _)| !o.starts_with("#0"));
    let got: Vec<_> = contents(&dst).into_iter().filter(|(o, _)| !o.starts_with('#')).collect();
    let want_named: Vec<_> = want.into_iter().filter(|(o, _)| !o.starts_with('#')).collect();
    assert_eq!(got, want_named);
    dst.lock().unwrap().verify().unwrap();
}

#[test]
fn a_damaged_or_foreign_snapshot_is_refused_and_changes_nothing() {
    let d = TempDir::new("snap-bad");
    let c = open(d.path(), "r", 1 << 16);
    let a = c.id("mod_a").unwrap();
    for i in 0..5u8 {
        c.lock().unwrap().insert(a, &[i; 40]).unwrap();
    }
    let file = d.path().join("good.snap");
    c.save(&file).unwrap();
    let good = std::fs::read(&file).unwrap();
    let before = contents(&c);
    let bad = d.path().join("bad.snap");
    // Every byte position, one bit flipped; and every truncation.
    for i in 0..good.len() {
        let mut b = good.clone();
        b[i] ^= 0x04;
        std::fs::write(&bad, &b).unwrap();
        match c.restore(&bad) {
            Err(Error::Snapshot { reason, .. }) => assert!(!reason.is_empty()),
            other => panic!("byte {i} flipped: {other:?}"),
        }
    }
    for n in [0, 7, 8, 31, good.len() / 2, good.len() - 1] {
        std::fs::write(&bad, &good[..n]).unwrap();
        assert!(matches!(c.restore(&bad), Err(Error::Snapshot { .. })), "truncated to {n}");
    }
    std::fs::write(&bad, b"{\"not\": \"a snapshot\"}").unwrap();
    let e = c.restore(&bad).unwrap_err().to_string();
    assert!(e.contains("not a cachem snapshot") && e.contains("bad.snap"), "{e}");
    assert!(matches!(c.restore(d.path().join("missing")), Err(Error::Io { .. })));
    assert_eq!(contents(&c), before);
    c.lock().unwrap().verify().unwrap();
}

#[test]
fn a_restore_that_does_not_fit_is_rolled_back_whole() {
    let d = TempDir::new("snap-full");
    let big = open(d.path(), "big", 1 << 20);
    let a = big.id("mod_a").unwrap();
    for i in 0..40u32 {
        big.lock().unwrap().insert(a, &vec![i as u8; 3000]).unwrap();
    }
    let file = d.path().join("big.snap");
    big.save(&file).unwrap();

    let small = open(d.path(), "small", 1 << 16);
    let s = small.id("mine").unwrap();
    small.lock().unwrap().insert(s, b"already here").unwrap();
    let before = contents(&small);
    assert!(matches!(small.restore(&file), Err(Error::Full { .. })));
    assert_eq!(contents(&small), before);
    small.lock().unwrap().verify().unwrap();

    // A record that can never fit: refused before anything is resolved.
    let huge = open(d.path(), "huge", 1 << 20);
    let h = huge.id("h").unwrap();
    huge.lock().unwrap().insert(h, &vec![1u8; 200_000]).unwrap();
    let hf = d.path().join("huge.snap");
    huge.save(&hf).unwrap();
    let e = small.restore(&hf).unwrap_err();
    assert!(matches!(e, Error::Snapshot { .. }) && e.to_string().contains("at most"), "{e}");
    assert_eq!(contents(&small), before);
}

#[test]
fn save_replaces_the_file_atomically_and_leaves_no_temporary() {
    let d = TempDir::new("snap-atomic");
    let c = open(d.path(), "r", 1 << 16);
    let a = c.id("a").unwrap();
    let file = d.path().join("s.snap");
    std::fs::write(&file, b"old contents").unwrap();
    c.lock().unwrap().insert(a, b"v1").unwrap();
    c.save(&file).unwrap();
    let v1 = std::fs::read(&file).unwrap();
    assert!(v1.starts_with(b"CACHEMSN"));
    c.lock().unwrap().insert(a, b"v2").unwrap();
    c.save(&file).unwrap();
    assert_ne!(std::fs::read(&file).unwrap(), v1);
    let names: Vec<String> = std::fs::read_dir(d.path())
        .unwrap()
        .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
        .collect();
    assert!(!names.iter().any(|n| n.contains(".tmp-")), "{names:?}");
    // A failed save (no such directory) leaves nothing and reports the path.
    let e = c.save(d.path().join("no/such/dir/s.snap")).unwrap_err().to_string();
    assert!(e.contains("no/such/dir"), "{e}");
    // An empty region saves and restores to nothing.
    let empty = open(d.path(), "empty", 1 << 16);
    let ef = d.path().join("empty.snap");
    assert_eq!(empty.save(&ef).unwrap().records, 0);
    assert_eq!(c.restore(&ef).unwrap().records, 0);
}

#[test]
fn the_cli_saves_and_restores() {
    let d = TempDir::new("snap-cli");
    let p = d.path();
    let bin = env!("CARGO_BIN_EXE_cachem");
    let run = |args: &[&str]| Command::new(bin).arg("--dir").arg(p).args(args).output().unwrap();
    assert!(run(&["create", "one", "--size", "64K"]).status.success());
    assert!(run(&["create", "two", "--size", "64K"]).status.success());
    assert!(run(&["put", "one", "--owner", "jobs", "payload"]).status.success());
    assert!(run(&["put", "one", "--owner", "jobs", "second"]).status.success());
    let f = p.join("one.snap");
    let o = run(&["save", "one", f.to_str().unwrap()]);
    assert!(o.status.success(), "{}", String::from_utf8_lossy(&o.stderr));
    assert!(String::from_utf8_lossy(&o.stdout).contains("saved 2 records"));
    let o = run(&["restore", "two", f.to_str().unwrap()]);
    assert!(o.status.success(), "{}", String::from_utf8_lossy(&o.stderr));
    assert!(String::from_utf8_lossy(&o.stdout).contains("restored 2 records"));
    let ls = String::from_utf8(run(&["ls", "two", "--owner", "jobs", "--json"]).stdout).unwrap();
    assert_eq!(serde_json::from_str::<serde_json::Value>(&ls).unwrap().as_array().unwrap().len(), 2);
    // A --reap-all region would reap what this short-lived command restores.
    assert!(run(&["create", "all", "--size", "64K", "--reap-all"]).status.success());
    let o = run(&["restore", "all", f.to_str().unwrap()]);
    assert_eq!(o.status.code(), Some(1));
    assert!(
        String::from_utf8_lossy(&o.stderr).contains("--reap-all"),
        "{}",
        String::from_utf8_lossy(&o.stderr)
    );
    std::fs::write(&f, b"garbage").unwrap();
    let o = run(&["restore", "two", f.to_str().unwrap()]);
    assert_eq!(o.status.code(), Some(1));
    assert!(
        String::from_utf8_lossy(&o.stderr).contains("snapshot"),
        "{}",
        String::from_utf8_lossy(&o.stderr)
    );
}

//! Single-process behaviour of the registry: persistence, generations, bad
//! input and bad paths. Multi-process tests are in `processes.rs`.

use std::path::Path;
use std::sync::Arc;

use cachem_ids::{Error, IdRegistry, OwnerId, KEPT_GENERATIONS, MAX_NAME_LEN};

type TestResult = Result<(), Box<dyn std::error::Error>>;

fn open(dir: &Path, generation: u64) -> Result<IdRegistry, Error> {
    IdRegistry::open(dir.join("store"), dir.join("lock"), generation)
}

#[test]
fn ids_are_dense_from_one_and_survive_reopen_with_the_same_generation() -> TestResult {
    let dir = tempfile::tempdir()?;
    let reg = open(dir.path(), 1)?;
    assert_eq!(reg.id("alpha")?, OwnerId(1));
    assert_eq!(reg.unique_id()?, OwnerId(2));
    assert_eq!(reg.id("beta")?, OwnerId(3));
    let cycles = reg.cycles();
    assert_eq!(reg.id("alpha")?, OwnerId(1));
    assert_eq!(reg.cycles(), cycles, "a memoised id ran a registry cycle");
    drop(reg);

    let again = open(dir.path(), 1)?;
    assert_eq!(again.lookup("alpha")?, Some(OwnerId(1)));
    assert_eq!(again.id("beta")?, OwnerId(3));
    // The counter survives too: a unique id is never handed out twice.
    assert_eq!(again.unique_id()?, OwnerId(4));
    assert_eq!(again.id("gamma")?, OwnerId(5));
    assert_eq!(
        again.names()?,
        vec![
            ("alpha".to_string(), OwnerId(1)),
            ("beta".to_string(), OwnerId(3)),
            ("gamma".to_string(), OwnerId(5)),
        ]
    );
    Ok(())
}

#[test]
fn a_new_generation_starts_from_an_empty_registry() -> TestResult {
    let dir = tempfile::tempdir()?;
    let old = open(dir.path(), 10)?;
    old.ids(&["a", "b", "c"])?;
    drop(old);

    let new = open(dir.path(), 11)?;
    assert_eq!(new.names()?, vec![]);
    assert_eq!(new.lookup("a")?, None);
    assert_eq!(new.id("c")?, OwnerId(1));
    assert_eq!(new.unique_id()?, OwnerId(2));
    assert_eq!(new.name_of(OwnerId(3))?, None);
    Ok(())
}

#[test]
fn a_process_still_on_the_old_generation_does_not_wipe_the_new_one() -> TestResult {
    let dir = tempfile::tempdir()?;
    let old = open(dir.path(), 1)?;
    assert_eq!(old.ids(&["x", "y"])?, vec![OwnerId(1), OwnerId(2)]);

    // The region is re-created while `old` is still open.
    let new = open(dir.path(), 2)?;
    assert_eq!(new.id("y")?, OwnerId(1));

    // The old incarnation keeps its own consistent table...
    assert_eq!(old.id("z")?, OwnerId(3));
    assert_eq!(old.names()?.len(), 3);
    // ...and the new one is untouched by it.
    let peer = open(dir.path(), 2)?;
    assert_eq!(peer.id("y")?, OwnerId(1));
    assert_eq!(peer.lookup("x")?, None);
    assert_eq!(peer.id("z")?, OwnerId(2));
    Ok(())
}

#[test]
fn only_the_most_recent_generations_are_kept() -> TestResult {
    let dir = tempfile::tempdir()?;
    let first = open(dir.path(), 100)?;
    first.id("kept?")?;
    for g in 101..=100 + KEPT_GENERATIONS as u64 {
        open(dir.path(), g)?.id("other")?;
    }
    // Generation 100 was evicted: its table is gone, and the still-open
    // registry notices on its next cycle and forgets its memo.
    assert_eq!(first.names()?, vec![]);
    assert_eq!(first.lookup("kept?")?, None);
    assert_eq!(first.id("new")?, OwnerId(1));
    Ok(())
}

#[test]
fn ids_resolves_many_names_at_once_with_duplicates() -> TestResult {
    let dir = tempfile::tempdir()?;
    let reg = open(dir.path(), 1)?;
    assert_eq!(reg.id("b")?, OwnerId(1));
    let got = reg.ids(&["a", "b", "a", "c"])?;
    assert_eq!(got, vec![OwnerId(2), OwnerId(1), OwnerId(2), OwnerId(3)]);
    // All memoised now, and the same answers from a fresh registry.
    assert_eq!(reg.ids(&["c", "a"])?, vec![OwnerId(3), OwnerId(2)]);
    assert_eq!(open(dir.path(), 1)?.ids(&["c", "a"])?, vec![OwnerId(3), OwnerId(2)]);
    assert_eq!(reg.ids(&[])?, vec![]);
    Ok(())
}

#[test]
fn name_of_knows_names_only() -> TestResult {
    let dir = tempfile::tempdir()?;
    let reg = open(dir.path(), 1)?;
    let named = reg.id("mod_status")?;
    let unnamed = reg.unique_id()?;
    assert_eq!(reg.name_of(named)?.as_deref(), Some("mod_status"));
    assert_eq!(open(dir.path(), 1)?.name_of(named)?.as_deref(), Some("mod_status"));
    assert_eq!(reg.name_of(unnamed)?, None);
    assert_eq!(reg.name_of(OwnerId::PROCESS)?, None);
    assert_eq!(reg.name_of(OwnerId(999))?, None);
    Ok(())
}

#[test]
fn bad_names_are_rejected_with_the_reason() -> TestResult {
    let dir = tempfile::tempdir()?;
    let reg = open(dir.path(), 1)?;
    let long = "n".repeat(MAX_NAME_LEN + 1);
    for (name, why) in [("", "empty"), (long.as_str(), "4097"), ("a\0b", "NUL")] {
        for res in [reg.id(name).map(Some), reg.lookup(name)] {
            match res {
                Err(e @ Error::InvalidName { .. }) => {
                    assert!(e.to_string().contains(why), "{e} lacks {why}")
                }
                other => panic!("{name:?}: {other:?}"),
            }
        }
    }
    // One bad name in a batch registers nothing.
    assert!(matches!(reg.ids(&["good", ""]), Err(Error::InvalidName { .. })));
    assert_eq!(reg.lookup("good")?, None);
    // The longest allowed name works.
    let max = "m".repeat(MAX_NAME_LEN);
    assert_eq!(reg.id(&max)?, OwnerId(1));
    assert_eq!(reg.name_of(OwnerId(1))?, Some(max));
    Ok(())
}

fn expect_store_error(res: Result<IdRegistry, Error>, path: &Path) {
    match res {
        Err(e @ Error::Store { .. }) => {
            let msg = e.to_string();
            eprintln!("{msg}");
            assert!(msg.contains(&path.display().to_string()), "{msg}");
        }
        other => panic!("expected Error::Store, got {other:?}"),
    }
}

#[test]
fn a_store_full_of_garbage_is_an_error_naming_the_path() -> TestResult {
    let dir = tempfile::tempdir()?;
    let store = dir.path().join("store");
    std::fs::create_dir(&store)?;
    // Deterministic pseudo-random bytes (xorshift), so a failure reproduces.
    let mut x: u64 = 0x9e37_79b9_7f4a_7c15;
    let mut garbage = vec![0u8; 64 * 1024];
    for b in &mut garbage {
        x ^= x << 13;
        x ^= x >> 7;
        x ^= x << 17;
        *b = x as u8;
    }
    std::fs::write(store.join("db"), &garbage)?;
    std::fs::write(store.join("conf"), &garbage[..512])?;
    expect_store_error(open(dir.path(), 1), &store);
    Ok(())
}

#[test]
fn a_store_damaged_after_use_is_an_error_naming_the_path() -> TestResult {
    let dir = tempfile::tempdir()?;
    let store = dir.path().join("store");
    open(dir.path(), 1)?.ids(&["a", "b"])?;
    let conf = std::fs::read(store.join("conf"))?;
    let flipped: Vec<u8> = conf.iter().map(|b| !b).collect();
    std::fs::write(store.join("conf"), flipped)?;
    expect_store_error(open(dir.path(), 1), &store);
    Ok(())
}

#[test]
fn a_store_whose_log_is_damaged_is_an_error_naming_the_path() -> TestResult {
    let dir = tempfile::tempdir()?;
    let store = dir.path().join("store");
    open(dir.path(), 1)?.ids(&["a", "b"])?;
    // The configuration stays valid; the log's first bytes are flipped.
    let mut db = std::fs::read(store.join("db"))?;
    for b in db.iter_mut().take(64) {
        *b ^= 0xff;
    }
    std::fs::write(store.join("db"), db)?;
    expect_store_error(open(dir.path(), 1), &store);
    Ok(())
}

#[test]
fn a_foreign_sled_database_is_refused() -> TestResult {
    let dir = tempfile::tempdir()?;
    let store = dir.path().join("store");
    // Made in this process: the registry runs sled in-process too (the
    // test process does not fork without exec afterwards).
    {
        let db = sled::open(&store)?;
        db.insert(b"someone else's", b"data".as_slice())?;
        db.flush()?;
    }
    expect_store_error(open(dir.path(), 1), &store);
    Ok(())
}

#[test]
fn a_store_path_that_is_a_file_is_an_error_naming_the_path() -> TestResult {
    let dir = tempfile::tempdir()?;
    let store = dir.path().join("store");
    std::fs::write(&store, b"not a directory")?;
    expect_store_error(open(dir.path(), 1), &store);
    Ok(())
}

#[test]
fn a_lockfile_that_cannot_be_created_is_an_error_naming_the_path() -> TestResult {
    let dir = tempfile::tempdir()?;
    for lock in [dir.path().join("missing/dir/lock"), dir.path().to_path_buf()] {
        match IdRegistry::open(dir.path().join("store"), &lock, 1) {
            Err(e @ Error::Lock { .. }) => {
                let msg = e.to_string();
                assert!(msg.contains(&lock.display().to_string()), "{msg}");
            }
            other => panic!("{}: expected Error::Lock, got {other:?}", lock.display()),
        }
    }
    Ok(())
}

#[test]
fn threads_sharing_one_registry_agree() -> TestResult {
    let dir = tempfile::tempdir()?;
    let reg = Arc::new(open(dir.path(), 1)?);
    let names = ["t0", "t1", "t2", "t3"];
    let handles: Vec<_> = (0..4)
        .map(|_| {
            let reg = Arc::clone(&reg);
            std::thread::spawn(move || -> Result<Vec<OwnerId>, Error> {
                let mut ids: Vec<OwnerId> = names.iter().map(|n| reg.id(n)).collect::<Result<_, _>>()?;
                ids.push(reg.unique_id()?);
                Ok(ids)
            })
        })
        .collect();
    let mut results = Vec::new();
    for h in handles {
        results.push(h.join().map_err(|_| "thread panicked")??);
    }
    let named: Vec<&[OwnerId]> = results.iter().map(|r| &r[..4]).collect();
    assert!(named.windows(2).all(|w| w[0] == w[1]), "{results:?}");
    let mut all: Vec<OwnerId> = named[0].to_vec();
    all.extend(results.iter().map(|r| r[4]));
    all.sort();
    all.dedup();
    assert_eq!(all.len(), 8, "{results:?}");
    Ok(())
}

#[test]
fn mirror_makes_the_table_exactly_the_regions_and_read_store_reads_it_back() -> TestResult {
    let dir = tempfile::tempdir()?;
    let (store, lock) = (dir.path().join("ids"), dir.path().join("lock"));
    // No store yet: nothing read, nothing created.
    assert_eq!(cachem_ids::read_store(&store, &lock)?, None);
    assert!(!store.exists() && !lock.exists());

    let reg = IdRegistry::open(&store, &lock, 7)?;
    reg.id("stale")?; // a name the region does not have
    let region = vec![("mod_a".to_string(), OwnerId(1)), ("mod_c".to_string(), OwnerId(3))];
    let r = reg.mirror(&region, 4)?;
    assert_eq!((r.written, r.removed, r.unchanged), (2, 1, 0), "{r:?}");
    assert_eq!(reg.names()?, region);
    assert_eq!(reg.lookup("stale")?, None, "the memo forgot the replaced table");
    assert_eq!(reg.unique_id()?, OwnerId(4), "the counter follows the region's");
    // Again: nothing to write.
    let r = reg.mirror(&region, 4)?;
    assert_eq!((r.written, r.removed, r.unchanged), (0, 0, 2), "{r:?}");
    drop(reg);

    // A new region generation replaces the old table.
    let reg = IdRegistry::open(&store, &lock, 8)?;
    let next = vec![("mod_c".to_string(), OwnerId(1))];
    let r = reg.mirror(&next, 2)?;
    assert_eq!(r.dropped_generations, 1, "{r:?}");
    drop(reg);
    let t = cachem_ids::read_store(&store, &lock)?.ok_or("no table")?;
    assert_eq!((t.generation, t.names, t.next), (8, next, 2));
    Ok(())
}

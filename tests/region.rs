//! Shared regions with real processes: create/attach, the create race, the
//! robust lock after a SIGKILL, a region file from another boot, anonymous
//! regions shared with forked children.

mod common;

use cachem::format::Header;
use cachem::{Error, OwnerId, Region, RegionOptions};
use common::*;
use std::os::unix::fs::PermissionsExt;
use std::time::Duration;

fn opts(dir: &TempDir, size: u64) -> RegionOptions {
    RegionOptions { size: Some(size), dir: Some(dir.path().to_path_buf()), ..Default::default() }
}

#[test]
fn create_attach_and_size_rules() {
    let d = TempDir::new("attach");
    let r = Region::open("app", &opts(&d, 65536)).unwrap();
    assert!(r.open_report().created || r.path().unwrap().exists());
    let id = r.lock().unwrap().insert(OwnerId(3), b"hello").unwrap();
    let r2 = Region::open("app", &opts(&d, 65536)).unwrap();
    assert_eq!(r2.generation(), r.generation());
    assert_eq!(r2.lock().unwrap().get(id).unwrap(), b"hello");
    // Same name, other size: refused, unless any size is accepted.
    match Region::open("app", &opts(&d, 131072)) {
        Err(Error::SizeMismatch { existing: 65536, requested: 131072, .. }) => {}
        other => panic!("{other:?}"),
    }
    let any = RegionOptions { attach_any_size: true, ..opts(&d, 131072) };
    assert_eq!(Region::open("app", &any).unwrap().size(), 65536);
    // Attach only: a missing region is NotFound.
    let attach = RegionOptions { create: false, ..opts(&d, 65536) };
    assert!(matches!(Region::open("nope", &attach), Err(Error::NotFound { .. })));
    // Files 0600.
    let mode = std::fs::metadata(r.path().unwrap()).unwrap().permissions().mode() & 0o777;
    assert_eq!(mode, 0o600);
    let lmode = std::fs::metadata(r.lock_path().unwrap()).unwrap().permissions().mode() & 0o777;
    assert_eq!(lmode, 0o600);
    Region::destroy("app", &opts(&d, 0)).unwrap();
    assert!(!d.path().join("app").exists());
    assert!(!d.path().join("app.lock").exists());
}

#[test]
fn runtime_directory_is_created_0700() {
    let d = TempDir::new("rundir");
    let sub = d.path().join("run");
    let o = RegionOptions { size: Some(8192), dir: Some(sub.clone()), ..Default::default() };
    Region::open("x", &o).unwrap();
    assert_eq!(std::fs::metadata(&sub).unwrap().permissions().mode() & 0o777, 0o700);
}

#[test]
fn bad_names_and_sizes() {
    let d = TempDir::new("names");
    for bad in ["", "a/b", "..", "../x", "/tmp/../etc/x", ".hidden", "a\0b", "x/"] {
        assert!(matches!(Region::open(bad, &opts(&d, 8192)), Err(Error::BadName { .. })), "{bad:?}");
    }
    for size in [0u64, 100, 4095, 8191, 1 << 40] {
        assert!(matches!(Region::open("s", &opts(&d, size)), Err(Error::BadSize { .. })), "{size}");
    }
    assert!(!d.path().join("s").exists());
}

#[test]
fn attach_never_reinitialises_a_bad_file() {
    let d = TempDir::new("garbage");
    let p = d.path().join("junk");
    let junk: Vec<u8> = (0..8192u32).map(|i| (i * 7) as u8).collect();
    std::fs::write(&p, &junk).unwrap();
    let e = Region::open("junk", &opts(&d, 8192)).unwrap_err();
    assert_eq!(e.corrupt_field(), Some("magic"), "{e}");
    assert!(e.to_string().contains("junk"), "the message names the file: {e}");
    assert_eq!(std::fs::read(&p).unwrap(), junk, "bytes left alone");
    std::fs::write(&p, b"").unwrap();
    let e = Region::open("junk", &opts(&d, 8192)).unwrap_err();
    assert_eq!(e.corrupt_field(), Some("region_size"), "{e}");
}

/// Issue 22 finding 7: a failed open of a file that is not a region (text,
/// garbage, empty, a FIFO) leaves no `<name>.lock` beside it, opening a FIFO
/// does not block, and a lockfile the open did not make is never removed.
#[test]
fn a_failed_open_of_a_file_that_is_not_a_region_leaves_no_lockfile() {
    let d = TempDir::new("notregion");
    let lock = |name: &str| d.path().join(format!("{name}.lock"));
    let cases: [(&str, Vec<u8>); 3] = [
        ("text", b"hello, this is a text file\n".repeat(400)),
        ("garbage", (0..8192u32).map(|i| (i * 13 + 5) as u8).collect()),
        ("empty", Vec::new()),
    ];
    for (name, bytes) in &cases {
        std::fs::write(d.path().join(name), bytes).unwrap();
        for o in [opts(&d, 8192), RegionOptions { create: false, ..opts(&d, 8192) }] {
            let e = Region::open(name, &o).unwrap_err();
            assert!(e.corrupt_field().is_some(), "{name}: {e}");
            assert!(!lock(name).exists(), "{name}: a stray lockfile after {e}");
        }
        assert_eq!(&std::fs::read(d.path().join(name)).unwrap(), bytes, "{name}: bytes left alone");
    }
    // A FIFO: refused, without blocking (in a thread so that a blocking
    // open fails the test instead of hanging it), no lockfile.
    let fifo = d.path().join("fifo");
    let c = std::ffi::CString::new(fifo.as_os_str().as_encoded_bytes()).unwrap();
    // SAFETY: a valid NUL-terminated path.
    assert_eq!(unsafe { libc::mkfifo(c.as_ptr(), 0o600) }, 0, "mkfifo");
    let (tx, rx) = std::sync::mpsc::channel();
    let o = opts(&d, 8192);
    std::thread::spawn(move || {
        let _ = tx.send(Region::open("fifo", &o).map(|_| ()).map_err(|e| e.to_string()));
    });
    let r = rx.recv_timeout(Duration::from_secs(60)).expect("opening a FIFO blocked");
    let e = r.unwrap_err();
    assert!(e.contains("not a regular file"), "{e}");
    assert!(!lock("fifo").exists(), "a stray lockfile after {e}");
    // A lockfile that existed before the failed open is left alone.
    std::fs::write(lock("text"), b"").unwrap();
    Region::open("text", &opts(&d, 8192)).unwrap_err();
    assert!(lock("text").exists(), "a lockfile the open did not make was removed");
    // A region still gets its lockfile.
    Region::open("good", &opts(&d, 65536)).unwrap();
    assert!(lock("good").exists());
}

/// Worker: open-or-create the region named by CACHEM_TEST_REGION and print
/// its generation.
#[test]
fn worker_create() {
    if !is_worker() {
        return;
    }
    let dir = std::env::var("CACHEM_TEST_DIR").unwrap();
    let o = RegionOptions { size: Some(65536), dir: Some(dir.into()), ..Default::default() };
    let r = Region::open("race", &o).unwrap();
    let g = r.lock().unwrap();
    g.verify().unwrap();
    say(format!("{} {}", r.generation(), r.open_report().created));
}

#[test]
fn two_processes_racing_to_create_make_one_region() {
    for i in 0..100 {
        let d = TempDir::new("race");
        let env = [("CACHEM_TEST_DIR", d.path().display().to_string())];
        let mut a = spawn_worker("worker_create", &env);
        let mut b = spawn_worker("worker_create", &env);
        let sa = wait_timeout(&mut a, Duration::from_secs(30));
        let sb = wait_timeout(&mut b, Duration::from_secs(30));
        assert!(sa.success() && sb.success(), "round {i}");
        let (oa, ob) = (stdout_of(&mut a), stdout_of(&mut b));
        let ga: Vec<&str> = oa.split_whitespace().collect();
        let gb: Vec<&str> = ob.split_whitespace().collect();
        assert_eq!(ga[0], gb[0], "round {i}: both see one region");
        assert_ne!(ga[1], gb[1], "round {i}: exactly one created it");
        let leftovers: Vec<_> = std::fs::read_dir(d.path())
            .unwrap()
            .flatten()
            .map(|e| e.file_name().to_string_lossy().into_owned())
            .filter(|n| n.contains(".tmp-"))
            .collect();
        assert!(leftovers.is_empty(), "{leftovers:?}");
    }
}

/// Worker: lock the region, insert, say "locked", and wait to be killed.
#[test]
fn worker_hold_lock() {
    if !is_worker() {
        return;
    }
    let dir = std::env::var("CACHEM_TEST_DIR").unwrap();
    let o = RegionOptions { size: Some(65536), dir: Some(dir.into()), ..Default::default() };
    let r = Region::open("held", &o).unwrap();
    let mut g = r.lock().unwrap();
    g.insert(OwnerId(5), b"from the holder").unwrap();
    say("locked");
    std::thread::sleep(Duration::from_secs(60));
    drop(g);
}

#[test]
fn a_process_killed_holding_the_lock_does_not_freeze_the_region() {
    let d = TempDir::new("held");
    let o = opts(&d, 65536);
    let r = Region::open("held", &o).unwrap();
    let keep = r.lock().unwrap().insert(OwnerId(1), b"keep").unwrap();
    let mut w = spawn_worker("worker_hold_lock", &[("CACHEM_TEST_DIR", d.path().display().to_string())]);
    assert_eq!(read_line_timeout(&mut w, Duration::from_secs(20)).trim(), "locked");
    // While the holder lives, copy the file (lock word and all) and pretend
    // the copy is from an older boot.
    let copy = d.path().join("copy");
    std::fs::copy(d.path().join("held"), &copy).unwrap();
    let mut bytes = std::fs::read(&copy).unwrap();
    bytes[std::mem::offset_of!(Header, boot_id)] ^= 0xff;
    std::fs::write(&copy, &bytes).unwrap();
    sigkill(&mut w);
    let _ = w.wait();
    // The original: the next lock sees the dead owner and recovers.
    let g = r.lock().unwrap();
    assert!(g.recovered());
    assert_eq!(g.get(keep).unwrap(), b"keep");
    assert_eq!(g.iter_owner(OwnerId(5)).count(), 1, "the dead holder's completed insert stays");
    let st = g.status().unwrap();
    assert_eq!(st.counters.recoveries, 1);
    g.verify().unwrap();
    drop(g);
    // The copy from "another boot": its lock word names a thread on no
    // robust list; attach re-arms it instead of waiting forever.
    let rc = Region::open(copy.to_str().unwrap(), &RegionOptions { size: Some(65536), ..Default::default() })
        .unwrap();
    assert!(rc.open_report().rearmed_after_reboot);
    let g = rc.lock().unwrap();
    assert_eq!(g.get(keep).unwrap(), b"keep");
    g.verify().unwrap();
    assert_eq!(g.status().unwrap().counters.recoveries, 1);
    drop(g);
    // Re-attaching the copy now finds the current boot id: no re-arm.
    let rc2 = Region::open(copy.to_str().unwrap(), &RegionOptions::default()).unwrap();
    assert!(!rc2.open_report().rearmed_after_reboot);
}

#[test]
fn anonymous_region_is_shared_with_forked_children() {
    // The helper is a small single-threaded program (examples/prefork.rs):
    // it forks children that insert and exit, and verifies in the parent.
    let helper = prefork_helper();
    let out = std::process::Command::new(&helper).args(["8", "50"]).output().unwrap();
    let text = String::from_utf8_lossy(&out.stdout);
    assert!(out.status.success(), "prefork failed: {text} {}", String::from_utf8_lossy(&out.stderr));
    assert!(text.contains("records=400"), "{text}");
}

#[test]
fn the_lock_lives_in_the_trailer_outside_the_engines_view() {
    use cachem::format::TRAILER_SIZE;
    let d = TempDir::new("trailer");
    let r = Region::open("t", &opts(&d, 65536)).unwrap();
    let path = r.path().unwrap().to_path_buf();
    let trailer = || {
        let b = std::fs::read(&path).unwrap();
        b[b.len() - TRAILER_SIZE..].to_vec()
    };
    let header = || std::fs::read(&path).unwrap()[..cachem::format::HEADER_SIZE].to_vec();
    let (t_free, h_free) = (trailer(), header());
    let mut g = r.lock().unwrap();
    // Taking the lock writes the mutex word (its owner), in the trailer only.
    let (t_held, h_held) = (trailer(), header());
    assert_ne!(t_free, t_held, "the mutex is not in the trailer");
    assert_eq!(h_free, h_held, "locking wrote the header");
    // The engine's geometry ends where the trailer begins.
    let id = g.insert(OwnerId(1), b"x").unwrap();
    let st = g.status().unwrap();
    assert_eq!(st.trailer_bytes, TRAILER_SIZE as u64);
    assert_eq!(st.header_size + st.used_bytes + st.free_bytes + st.table_bytes + st.trailer_bytes, st.size);
    let top = st.size - st.trailer_bytes - st.table_bytes;
    assert_eq!(top, st.o_bptop);
    // The readers' version (the trailer's last word): an insert that does
    // not compact leaves it even (it writes nothing a reader of a live
    // record copies); a change in place makes it odd.
    let version = |t: &[u8]| u64::from_ne_bytes(t[cachem::format::TRAILER_VERSION..].try_into().unwrap());
    assert_eq!(version(&trailer()), version(&t_free), "a light insert leaves the version alone");
    g.get_mut(id).unwrap()[0] = b'y';
    assert_eq!(version(&trailer()), version(&t_free) + 1, "a change in place makes the version odd");
    drop(g);
    let t_after = trailer();
    let m = cachem::format::MUTEX_BYTES;
    assert_eq!(t_after[..m], t_free[..m], "unlocking restores the mutex word");
    assert_eq!(version(&t_after), version(&t_free) + 2, "unlocking makes the version even again");
    // A read-only lock leaves the version alone.
    drop(r.lock().unwrap());
    assert_eq!(trailer(), t_after);
}

/// A lock already waiting keeps the timeout it started with: a later
/// `set_lock_timeout` applies to later locks only (docs/c-api.md).
#[test]
fn a_waiting_lock_keeps_the_timeout_it_started_with() {
    let d = TempDir::new("waitkeeps");
    let r = Region::open("app", &opts(&d, 65536)).unwrap();
    for (start_with, set_to, expect_timeout) in
        [(None, Some(Duration::from_millis(50)), false), (Some(Duration::from_millis(500)), None, true)]
    {
        r.set_lock_timeout(start_with);
        std::thread::scope(|s| {
            let (held_tx, held_rx) = std::sync::mpsc::channel();
            let (go_tx, go_rx) = std::sync::mpsc::channel::<()>();
            let r = &r;
            let holder = s.spawn(move || {
                let g = r.lock().unwrap();
                held_tx.send(()).unwrap();
                // Held until told, or 1.5 s at most.
                let _ = go_rx.recv_timeout(Duration::from_millis(1500));
                drop(g);
            });
            held_rx.recv_timeout(Duration::from_secs(10)).unwrap();
            let waiter = s.spawn(move || r.lock().map(drop));
            std::thread::sleep(Duration::from_millis(150));
            // Changed while the waiter sleeps in the lock.
            r.set_lock_timeout(set_to);
            let got = waiter.join().unwrap();
            let _ = go_tx.send(());
            holder.join().unwrap();
            match got {
                Err(Error::LockTimeout { .. }) => {
                    assert!(expect_timeout, "{start_with:?} -> {set_to:?}: timed out")
                }
                Ok(()) => assert!(!expect_timeout, "{start_with:?} -> {set_to:?}: waited past its timeout"),
                Err(e) => panic!("{e}"),
            }
        });
    }
}

//! Hostile conditions: a full tmpfs, other users, API misuse. (Corrupt
//! images are covered by the engine's unit tests, `tests/cli.rs` and the
//! fuzz regressions.)

// The root package's test helpers (tests/common), shared with its tests.
#[path = "../../../tests/common/mod.rs"]
mod common;

use cachem::{Cache, Config, Error, OwnerId, RecordId};
use common::*;
use std::os::unix::fs::{MetadataExt, PermissionsExt};
use std::os::unix::process::CommandExt;
use std::path::Path;
use std::process::Command;

const BIN: &str = env!("CARGO_BIN_EXE_cachem");

fn mode_of(p: &Path) -> u32 {
    std::fs::metadata(p).unwrap().permissions().mode() & 0o7777
}

#[test]
fn a_full_tmpfs_fails_at_create_and_leaves_nothing() {
    let d = TempDir::new("tmpfs");
    let mnt = d.path().join("small");
    std::fs::create_dir(&mnt).unwrap();
    let m = Command::new("mount").args(["-t", "tmpfs", "-o", "size=1m", "tmpfs"]).arg(&mnt).output();
    match m {
        Ok(o) if o.status.success() => {}
        Ok(o) => {
            println!("skipped: mounting a tmpfs was refused: {}", String::from_utf8_lossy(&o.stderr).trim());
            return;
        }
        Err(e) => {
            println!("skipped: mount not available: {e}");
            return;
        }
    }
    struct Umount<'a>(&'a Path);
    impl Drop for Umount<'_> {
        fn drop(&mut self) {
            let _ = Command::new("umount").arg(self.0).status();
        }
    }
    let _u = Umount(&mnt);
    let r = Cache::open(&Config::named("big").dir(&mnt).size(4 << 20));
    match r {
        Err(Error::Io { op: "allocate region", ref source, .. }) => {
            assert!(source.to_string().contains("no room"), "{source}");
        }
        Err(e) => panic!("unexpected error: {e}"),
        Ok(_) => panic!("a 4 MiB region fit in a 1 MiB tmpfs"),
    }
    let e = r.err().unwrap().to_string();
    assert!(e.contains("big") && e.contains("no room"), "{e}");
    let left: Vec<_> = std::fs::read_dir(&mnt).unwrap().flatten().map(|e| e.file_name()).collect();
    assert!(left.is_empty(), "left behind: {left:?}");
    // A region that fits still works there.
    let c = Cache::open(&Config::named("small").dir(&mnt).size(256 << 10)).unwrap();
    c.lock().unwrap().insert(OwnerId(1), b"fits").unwrap();
}

#[test]
fn files_are_private_by_default_and_other_users_are_refused() {
    let d = TempDir::new("perm");
    std::fs::set_permissions(d.path(), std::fs::Permissions::from_mode(0o755)).unwrap();
    let run = d.path().join("run");
    let o =
        Command::new(BIN).arg("--dir").arg(&run).args(["create", "priv", "--size", "64K"]).output().unwrap();
    assert!(o.status.success());
    assert!(Command::new(BIN)
        .arg("--dir")
        .arg(&run)
        .args(["id", "priv", "x"])
        .output()
        .unwrap()
        .status
        .success());
    assert_eq!(mode_of(&run), 0o700, "runtime directory");
    assert_eq!(mode_of(&run.join("priv")), 0o600, "region");
    assert_eq!(mode_of(&run.join("priv.lock")), 0o600, "lockfile");
    // Names live in the region (issue 22); `cachem id` mirrors them into
    // the id store, a directory as private as the region.
    assert_eq!(mode_of(&run.join("priv.ids")), 0o700, "id store");
    // Another user cannot attach, and is told which path refused.
    let o = Command::new(BIN)
        .arg("--dir")
        .arg(&run)
        .args(["stat", "priv"])
        .uid(65534)
        .gid(65534)
        .output()
        .unwrap();
    let err = String::from_utf8_lossy(&o.stderr);
    if o.status.code() == Some(126) || err.contains("cannot execute") {
        println!("skipped: nobody cannot execute the test binary here");
        return;
    }
    assert_eq!(o.status.code(), Some(1), "{err}");
    assert!(err.contains("Permission denied") && err.contains(run.to_str().unwrap()), "{err}");
}

#[test]
fn a_shared_group_with_mode_0660_can_attach() {
    let d = TempDir::new("group");
    std::fs::set_permissions(d.path(), std::fs::Permissions::from_mode(0o755)).unwrap();
    let shared = d.path().join("shared");
    std::fs::create_dir(&shared).unwrap();
    // The deployment: a directory of the shared group, setgid, so files
    // created in it belong to that group.
    assert!(Command::new("chgrp").arg("nogroup").arg(&shared).status().unwrap().success());
    std::fs::set_permissions(&shared, std::fs::Permissions::from_mode(0o2770)).unwrap();
    let o = Command::new(BIN)
        .arg("--dir")
        .arg(&shared)
        .args(["create", "app", "--size", "64K", "--mode", "0660"])
        .output()
        .unwrap();
    assert!(o.status.success(), "{}", String::from_utf8_lossy(&o.stderr));
    assert_eq!(mode_of(&shared.join("app")), 0o660);
    assert_eq!(std::fs::metadata(shared.join("app")).unwrap().gid(), 65534);
    // nobody (group nogroup) can attach, read and write.
    let as_nobody = |args: &[&str]| {
        Command::new(BIN).arg("--dir").arg(&shared).args(args).uid(65534).gid(65534).output().unwrap()
    };
    let o = as_nobody(&["put", "app", "--owner-id", "3", "from nobody"]);
    if o.status.code() == Some(126) {
        println!("skipped: nobody cannot execute the test binary here");
        return;
    }
    assert!(o.status.success(), "{}", String::from_utf8_lossy(&o.stderr));
    let o = as_nobody(&["verify", "app"]);
    assert!(o.status.success(), "{}", String::from_utf8_lossy(&o.stderr));
    // The owner using the region (and its registry) first must not take it
    // away from the group: the lockfile keeps its mode, the id store gets
    // the region's.
    let as_root = |args: &[&str]| Command::new(BIN).arg("--dir").arg(&shared).args(args).output().unwrap();
    assert!(as_root(&["ls", "app"]).status.success());
    assert!(as_root(&["id", "app", "root-module"]).status.success());
    assert_eq!(mode_of(&shared.join("app.lock")), 0o660);
    for args in [&["verify", "app"][..], &["id", "app", "nobody-module"], &["stat", "app"]] {
        let o = as_nobody(args);
        assert!(o.status.success(), "{args:?} as nobody: {}", String::from_utf8_lossy(&o.stderr));
    }
    let o =
        Command::new(BIN).arg("--dir").arg(&shared).args(["ls", "app", "--owner-id", "3"]).output().unwrap();
    assert!(
        String::from_utf8_lossy(&o.stdout).contains("65534")
            || String::from_utf8_lossy(&o.stdout).contains('3')
    );
}

#[test]
fn api_misuse_gives_specific_errors() {
    let d = TempDir::new("misuse");
    let cfg = |name: &str, size: u64| Config::named(name).dir(d.path()).size(size);
    // Sizes.
    for (size, why) in [(8191u64, "multiple of 8"), (4000, "page"), (1 << 40, "4 GiB")] {
        match Cache::open(&cfg("s", size)) {
            Err(Error::BadSize { reason, .. }) => assert!(reason.contains(why), "{size}: {reason}"),
            Err(e) => panic!("{size}: {e}"),
            Ok(_) => panic!("{size} accepted"),
        }
    }
    // Names.
    for name in ["a/../b", "/tmp/../x", "../x", "", "a\0"] {
        assert!(matches!(Cache::open(&cfg(name, 65536)), Err(Error::BadName { .. })), "{name:?}");
    }
    let a = Cache::open(&cfg("a", 65536)).unwrap();
    let b = Cache::open(&cfg("b", 65536)).unwrap();
    let mut ga = a.lock().unwrap();
    // Zero-length records are records.
    let z = ga.insert(OwnerId(1), b"").unwrap();
    assert_eq!(ga.get(z), Some(&b""[..]));
    // Oversized.
    assert!(matches!(ga.insert(OwnerId(1), &vec![0; 70_000]), Err(Error::TooLarge { .. })));
    // Stale: removed, then the slot reused.
    let r = ga.insert(OwnerId(1), b"r").unwrap();
    ga.remove(r).unwrap();
    let r2 = ga.insert(OwnerId(1), b"r2").unwrap();
    assert_eq!(r.slot(), r2.slot());
    assert!(matches!(ga.try_get(r), Err(Error::Stale(_))));
    assert!(matches!(ga.remove(r), Err(Error::Stale(_))));
    // An id from another region.
    let x = b.lock().unwrap().insert(OwnerId(1), b"other region").unwrap();
    assert!(matches!(ga.try_get(x), Err(Error::Stale(_))), "an id from region b must not reach region a");
    assert!(matches!(ga.try_get(RecordId::from_u64(u64::MAX)), Err(Error::Stale(_))));
    // Pod of the wrong size.
    assert!(matches!(ga.get_pod::<u64>(r2), Err(Error::PodMismatch { expected: 8, actual: 2, .. })));
    drop(ga);
    // Same name, other size.
    assert!(matches!(Cache::open(&cfg("a", 131072)), Err(Error::SizeMismatch { .. })));
}

/// True as root; else says why the test is skipped.
fn root_or_skip(why: &str) -> bool {
    let root = cachem::sys::process::effective_ids().0 == 0;
    if !root {
        println!("skipped: needs root to {why}");
    }
    root
}

/// A stand-in for `/dev/shm`: root's, mode 1777, so another user can plant
/// things in it.
fn shm_like(tag: &str) -> TempDir {
    let d = TempDir::new(tag);
    std::fs::set_permissions(d.path(), std::fs::Permissions::from_mode(0o1777)).unwrap();
    d
}

/// `cachem` with `$CACHEM_DIR` (the default runtime directory's path).
fn with_cachem_dir(dir: &Path, args: &[&str]) -> std::process::Output {
    Command::new(BIN).env("CACHEM_DIR", dir).args(args).output().unwrap()
}

fn entries(dir: &Path) -> Vec<String> {
    let mut v: Vec<String> = std::fs::read_dir(dir)
        .unwrap()
        .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
        .collect();
    v.sort();
    v
}

#[test]
fn a_runtime_directory_planted_by_another_user_is_refused() {
    if !root_or_skip("plant a directory as another user") {
        return;
    }
    let shm = shm_like("planted-dir");
    let run = shm.path().join("cachem");
    std::fs::create_dir(&run).unwrap();
    std::os::unix::fs::lchown(&run, Some(65534), Some(65534)).unwrap();
    std::fs::set_permissions(&run, std::fs::Permissions::from_mode(0o777)).unwrap();
    for args in [&["create", "r", "--size", "64K"][..], &["ls", "r"]] {
        let o = with_cachem_dir(&run, args);
        let err = String::from_utf8_lossy(&o.stderr);
        assert_eq!(o.status.code(), Some(1), "{args:?}: {err}");
        assert!(err.contains("refusing") && err.contains("uid 65534") && err.contains("chown root"), "{err}");
    }
    // The same through the library, with an explicit dir.
    match Cache::open(&Config::named("r").dir(&run).size(1 << 16)) {
        Err(Error::UnsafeDir { path, reason }) => {
            assert_eq!(path, run);
            assert!(reason.contains("uid 65534"), "{reason}");
        }
        Err(e) => panic!("{e}"),
        Ok(_) => panic!("a directory of nobody's, mode 0777, was accepted"),
    }
    assert!(entries(&run).is_empty(), "files were made in it: {:?}", entries(&run));
    // Root's own directory, world-writable without the sticky bit: refused too.
    std::os::unix::fs::lchown(&run, Some(0), Some(0)).unwrap();
    let o = with_cachem_dir(&run, &["create", "r", "--size", "64K"]);
    let err = String::from_utf8_lossy(&o.stderr);
    assert!(!o.status.success() && err.contains("sticky"), "{err}");
    // The caller vouches for it: accepted.
    let o = with_cachem_dir(&run, &["--trust-dir", "create", "r", "--size", "64K"]);
    assert!(o.status.success(), "{}", String::from_utf8_lossy(&o.stderr));
}

#[test]
fn a_symlink_planted_at_the_runtime_directory_is_refused_and_nothing_is_written_there() {
    if !root_or_skip("plant a symlink as another user") {
        return;
    }
    let shm = shm_like("planted-link");
    let target = shm.path().join("elsewhere");
    std::fs::create_dir(&target).unwrap();
    let run = shm.path().join("cachem");
    std::os::unix::fs::symlink(&target, &run).unwrap();
    std::os::unix::fs::lchown(&run, Some(65534), Some(65534)).unwrap();
    let o = with_cachem_dir(&run, &["create", "r", "--size", "64K"]);
    let err = String::from_utf8_lossy(&o.stderr);
    assert_eq!(o.status.code(), Some(1), "{err}");
    assert!(err.contains("symlink") && err.contains(run.to_str().unwrap()), "{err}");
    assert!(entries(&target).is_empty(), "written through the symlink: {:?}", entries(&target));
    // A region file or lockfile planted as a symlink in a good directory
    // is refused too, and its target left alone.
    let good = shm.path().join("good");
    std::fs::create_dir(&good).unwrap();
    std::os::unix::fs::symlink(target.join("x"), good.join("r.lock")).unwrap();
    let o = with_cachem_dir(&good, &["create", "r", "--size", "64K"]);
    let err = String::from_utf8_lossy(&o.stderr);
    assert!(!o.status.success() && err.contains("symlink"), "{err}");
    assert!(entries(&target).is_empty(), "written through the symlink: {:?}", entries(&target));
}

#[test]
fn a_sticky_shared_directory_and_the_default_path_work() {
    if !root_or_skip("run as another user") {
        return;
    }
    let shm = shm_like("sticky");
    // /dev/shm itself as the runtime directory, for root: accepted.
    let o = with_cachem_dir(shm.path(), &["create", "r", "--size", "64K"]);
    assert!(o.status.success(), "{}", String::from_utf8_lossy(&o.stderr));
    // The default path (not there yet) made by root: 0700, root's.
    let run = shm.path().join("cachem");
    let o = with_cachem_dir(&run, &["create", "r", "--size", "64K"]);
    assert!(o.status.success(), "{}", String::from_utf8_lossy(&o.stderr));
    assert_eq!(mode_of(&run), 0o700);
    // And by another user, in a directory of its own.
    let theirs = shm.path().join("cachem-nobody");
    let o = Command::new(BIN)
        .env("CACHEM_DIR", &theirs)
        .args(["create", "r", "--size", "64K"])
        .uid(65534)
        .gid(65534)
        .output()
        .unwrap();
    if o.status.code() == Some(126) {
        println!("skipped: nobody cannot execute the test binary here");
        return;
    }
    assert!(o.status.success(), "{}", String::from_utf8_lossy(&o.stderr));
    let m = std::fs::metadata(&theirs).unwrap();
    assert_eq!((m.uid(), m.mode() & 0o7777), (65534, 0o700));
    // Root's directory is not nobody's to use.
    let o =
        Command::new(BIN).env("CACHEM_DIR", &run).args(["ls", "r"]).uid(65534).gid(65534).output().unwrap();
    assert!(!o.status.success());
}

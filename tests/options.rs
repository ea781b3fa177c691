//! Every `Config` option on both kinds of region: honoured, or refused
//! with a clear error — never accepted and ignored. Also the smaller
//! promises of the API (max_record_len, non-UTF-8 paths, error kinds).

mod common;

use cachem::{Cache, Config, ErrorKind, OwnerId};
use common::*;
use std::os::unix::fs::PermissionsExt;
use std::path::Path;
use std::time::Duration;

fn mode_of(p: &Path) -> u32 {
    std::fs::metadata(p).unwrap_or_else(|e| panic!("{}: {e}", p.display())).permissions().mode() & 0o7777
}

/// Forks a child that inserts one owned and one process-scoped record into
/// `cache` and exits at once, without dropping anything (as if killed).
/// Returns its pid once it is gone.
fn child_inserts_and_dies(cache: &Cache, owner: OwnerId) -> u32 {
    // SAFETY: the child only inserts (no stdout, no environment) and _exits.
    let pid = unsafe { libc::fork() };
    assert!(pid >= 0);
    if pid == 0 {
        let ok = cache
            .lock()
            .and_then(|mut g| {
                g.insert(owner, b"owned")?;
                g.insert(OwnerId::PROCESS, b"scoped")
            })
            .is_ok();
        // SAFETY: ends the child at once.
        unsafe { libc::_exit(if ok { 0 } else { 1 }) };
    }
    let mut st = 0;
    let end = std::time::Instant::now() + Duration::from_secs(30);
    loop {
        // SAFETY: waits for our own child.
        let r = unsafe { libc::waitpid(pid, &mut st, libc::WNOHANG) };
        if r == pid {
            break;
        }
        assert!(std::time::Instant::now() < end, "child {pid} hangs");
        std::thread::sleep(Duration::from_millis(2));
    }
    assert!(libc::WIFEXITED(st) && libc::WEXITSTATUS(st) == 0, "child failed: {st}");
    pid as u32
}

/// Records of `pid` left after a reap: (owned, process-scoped).
fn left_after_reap(cache: &Cache, pid: u32) -> (usize, usize) {
    cache.reap().unwrap();
    let g = cache.lock().unwrap();
    let owned = g.iter().filter(|(m, _)| m.pid == pid && !m.owner.is_process()).count();
    let scoped = g.iter().filter(|(m, _)| m.pid == pid && m.owner.is_process()).count();
    (owned, scoped)
}

fn both_kinds(dir: &Path, tag: &str) -> [(String, Config); 2] {
    [
        (format!("named {tag}"), Config::named(tag).dir(dir).size(1 << 16)),
        (format!("anonymous {tag}"), Config::anonymous(1 << 16).dir(dir)),
    ]
}

#[test]
fn the_reap_policy_is_honoured_on_both_kinds_of_region() {
    let d = TempDir::new("opt-reap");
    for (what, c) in both_kinds(d.path(), "default") {
        let cache = Cache::open(&c).unwrap();
        let pid = child_inserts_and_dies(&cache, OwnerId(7));
        assert_eq!(left_after_reap(&cache, pid), (1, 0), "{what}");
    }
    for (what, c) in both_kinds(d.path(), "all") {
        let cache = Cache::open(&c.reap_all_records_of_dead_processes()).unwrap();
        let pid = child_inserts_and_dies(&cache, OwnerId(7));
        assert_eq!(left_after_reap(&cache, pid), (0, 0), "{what}");
    }
    for (what, c) in both_kinds(d.path(), "none") {
        let cache = Cache::open(&c.no_reap()).unwrap();
        let pid = child_inserts_and_dies(&cache, OwnerId(7));
        assert_eq!(left_after_reap(&cache, pid), (1, 1), "{what}");
    }
}

#[test]
fn reap_all_asked_of_a_region_made_without_it_is_refused() {
    let d = TempDir::new("opt-reap-attach");
    let c = Config::named("r").dir(d.path()).size(1 << 16);
    let _made = Cache::open(&c).unwrap();
    let e = Cache::open(&c.clone().reap_all_records_of_dead_processes()).err().unwrap();
    assert_eq!(e.kind(), ErrorKind::OptionMismatch, "{e}");
    assert!(e.to_string().contains("reap_all_records_of_dead_processes"), "{e}");
    // Made with it, attaching with or without asking is fine.
    let c2 = Config::named("r2").dir(d.path()).size(1 << 16).reap_all_records_of_dead_processes();
    let _a = Cache::open(&c2).unwrap();
    let _b = Cache::open(&c2).unwrap();
    let _c = Cache::open(&Config::named("r2").dir(d.path())).unwrap();
}

#[test]
fn attach_options_are_honoured_when_named_and_refused_when_anonymous() {
    let d = TempDir::new("opt-attach");
    let e = Cache::open(&Config::named("missing").dir(d.path()).size(1 << 16).attach_only()).err().unwrap();
    assert_eq!(e.kind(), ErrorKind::NotFound, "{e}");
    let _m = Cache::open(&Config::named("m").dir(d.path()).size(1 << 16)).unwrap();
    let e = Cache::open(&Config::named("m").dir(d.path()).size(1 << 17)).err().unwrap();
    assert_eq!(e.kind(), ErrorKind::SizeMismatch, "{e}");
    let any = Cache::open(&Config::named("m").dir(d.path()).size(1 << 17).attach_any_size()).unwrap();
    assert_eq!(any.region().size(), 1 << 16);

    for (what, c) in [
        ("attach_only", Config::anonymous(1 << 16).dir(d.path()).attach_only()),
        ("attach_any_size", Config::anonymous(1 << 16).dir(d.path()).attach_any_size()),
        // No files: no lockfile, no id store (issue 22).
        ("lock_file", Config::anonymous(1 << 16).dir(d.path()).lock_file(d.path().join("l"))),
        ("id_store", Config::anonymous(1 << 16).dir(d.path()).id_store(d.path().join("s"))),
    ] {
        let e = Cache::open(&c).err().unwrap_or_else(|| panic!("{what} accepted for an anonymous region"));
        assert_eq!(e.kind(), ErrorKind::OptionMismatch, "{what}: {e}");
        assert!(e.to_string().contains(what), "{e}");
    }
}

#[test]
fn mode_and_lock_file_are_honoured_and_ids_need_no_files() {
    let d = TempDir::new("opt-files");
    let lock = d.path().join("named.mylock");
    let store = d.path().join("named.mystore");
    let cache = Cache::open(
        &Config::named("files").dir(d.path()).size(1 << 16).mode(0o666).lock_file(&lock).id_store(&store),
    )
    .unwrap();
    cache.id("x").unwrap();
    assert_eq!(mode_of(&lock), 0o666, "lockfile");
    assert_eq!(mode_of(cache.region().path().unwrap()), 0o666, "region file");
    // Names live in the region: the library makes no id store (the
    // command-line tool's mirror does).
    assert!(!store.exists(), "the library made the id store");
    // destroy removes a store made by the tool.
    std::fs::create_dir(&store).unwrap();
    cache.destroy().unwrap();
    assert!(!store.exists() && !lock.exists(), "destroy left files behind");
}

#[test]
fn an_anonymous_region_leaves_nothing_in_the_runtime_directory() {
    // Issue 22, finding 5: it used to leave anon-<generation>.ids and .lock.
    let d = TempDir::new("opt-dir");
    let run = d.path().join("run");
    std::fs::create_dir(&run).unwrap();
    let cache = Cache::open(&Config::anonymous(1 << 16).dir(&run)).unwrap();
    let a = cache.id("x").unwrap();
    assert_eq!(cache.id("x").unwrap(), a);
    assert_ne!(cache.unique_id().unwrap(), a);
    assert_eq!(cache.status().unwrap().owner_name(a), Some("x"));
    let listed = || -> Vec<String> {
        std::fs::read_dir(&run)
            .unwrap()
            .flatten()
            .map(|e| e.file_name().to_string_lossy().into_owned())
            .collect()
    };
    assert_eq!(listed(), Vec::<String>::new(), "while open");
    drop(cache);
    assert_eq!(listed(), Vec::<String>::new(), "after the last close");
}

#[test]
fn max_record_len_is_what_too_large_reports() {
    let d = TempDir::new("opt-max");
    let cache = Cache::open(&Config::named("m").dir(d.path()).size(1 << 16)).unwrap();
    let max = cache.max_record_len();
    let mut g = cache.lock().unwrap();
    assert_eq!(g.max_record_len(), max);
    match g.insert(OwnerId(1), &vec![0u8; max as usize + 1]) {
        Err(cachem::Error::TooLarge { max: m, .. }) => assert_eq!(m, max),
        other => panic!("{other:?}"),
    }
    let r = g.insert(OwnerId(1), &vec![1u8; max as usize]).unwrap();
    assert_eq!(g.get(r).unwrap().len() as u64, max);
}

#[test]
fn a_region_in_a_non_utf8_directory_is_created_and_destroyed() {
    use std::os::unix::ffi::OsStrExt;
    let d = TempDir::new("opt-utf8");
    let odd = d.path().join(std::ffi::OsStr::from_bytes(b"dir-\xff\xfe"));
    let c = Config::named("r").dir(&odd).size(1 << 16);
    let cache = Cache::open(&c).unwrap();
    cache.id("x").unwrap();
    let path = cache.region().path().unwrap().to_path_buf();
    cache.destroy().unwrap();
    assert!(!path.exists(), "destroy left the region behind");
    let _again = Cache::open(&c).unwrap();
    cachem::destroy(&c).unwrap();
    assert!(!path.exists(), "cachem::destroy left the region behind");
}

#[test]
fn a_second_lock_by_the_same_thread_is_an_already_locked_error() {
    let d = TempDir::new("opt-relock");
    let cache = Cache::open(&Config::named("r").dir(d.path()).size(1 << 16)).unwrap();
    let _g = cache.lock().unwrap();
    let e = cache.lock().err().unwrap();
    assert_eq!(e.kind(), ErrorKind::AlreadyLocked, "{e}");
}

//! The pre-fork pattern with real `fork`s from this (multi-threaded) test
//! process: a parent sets a cache up and uses it, then forks workers that
//! use it too, while other threads of the parent keep running. Regression
//! tests for the life-cycle bugs of issue "Pre-fork safety".
//!
//! Children report through files and their exit status only (no stdout: a
//! child of a multi-threaded process must not take locks other threads may
//! have held at fork time), and always end with `_exit`. Every wait is
//! bounded; a child that overruns is SIGKILLed and the test fails.

mod common;

use cachem::{Cache, Config, ErrorKind, OwnerId};
use common::*;
use std::collections::{BTreeMap, BTreeSet};
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

/// Forks a child that runs `f` and `_exit`s: 0 on Ok, 1 on Err (the error
/// text goes to `<dir>/err-<pid>`), 2 on a panic.
fn fork_child(dir: &Path, f: impl FnOnce() -> Result<(), String>) -> libc::pid_t {
    // SAFETY: the child runs only `f` (which avoids stdout and the
    // environment) and always ends with _exit.
    let pid = unsafe { libc::fork() };
    assert!(pid >= 0, "fork failed: {}", std::io::Error::last_os_error());
    if pid == 0 {
        let code = match std::panic::catch_unwind(std::panic::AssertUnwindSafe(f)) {
            Ok(Ok(())) => 0,
            Ok(Err(e)) => {
                let _ = std::fs::write(dir.join(format!("err-{}", std::process::id())), e);
                1
            }
            Err(_) => 2,
        };
        // SAFETY: ends the child without running the parent's atexit
        // handlers or destructors.
        unsafe { libc::_exit(code) };
    }
    pid
}

/// Waits for every pid until `limit`; on timeout kills them all and panics.
/// Returns each exit code (128 + signal for a signal).
fn wait_all(pids: &[libc::pid_t], limit: Duration) -> Vec<i32> {
    let end = Instant::now() + limit;
    let mut codes: Vec<Option<i32>> = vec![None; pids.len()];
    while codes.iter().any(Option::is_none) {
        for (i, &pid) in pids.iter().enumerate() {
            if codes[i].is_some() {
                continue;
            }
            let mut st = 0;
            // SAFETY: waits for our own child; writes into a local.
            let r = unsafe { libc::waitpid(pid, &mut st, libc::WNOHANG) };
            if r == pid {
                codes[i] =
                    Some(if libc::WIFEXITED(st) { libc::WEXITSTATUS(st) } else { 128 + libc::WTERMSIG(st) });
            }
        }
        if Instant::now() > end {
            for (i, &pid) in pids.iter().enumerate() {
                if codes[i].is_none() {
                    // SAFETY: signals and reaps our own child.
                    unsafe {
                        libc::kill(pid, libc::SIGKILL);
                        libc::waitpid(pid, std::ptr::null_mut(), 0);
                    }
                }
            }
            panic!("children did not finish within {limit:?} (a hang): {codes:?}");
        }
        std::thread::sleep(Duration::from_millis(2));
    }
    codes.into_iter().map(|c| c.unwrap_or(-1)).collect()
}

fn errors_of(dir: &Path) -> String {
    let mut out = String::new();
    for e in std::fs::read_dir(dir).unwrap().flatten() {
        if e.file_name().to_string_lossy().starts_with("err-") {
            out += &format!(
                "{}: {}\n",
                e.file_name().to_string_lossy(),
                std::fs::read_to_string(e.path()).unwrap()
            );
        }
    }
    out
}

/// Threads that keep the parent busy at fork time: allocating, writing the
/// environment (std's environment lock), formatting, locking stderr.
struct Busy {
    stop: Arc<AtomicBool>,
    threads: Vec<std::thread::JoinHandle<()>>,
}

impl Busy {
    fn start(n: usize) -> Busy {
        let stop = Arc::new(AtomicBool::new(false));
        let threads = (0..n)
            .map(|i| {
                let stop = stop.clone();
                std::thread::spawn(move || {
                    let mut k = 0u64;
                    while !stop.load(Ordering::Relaxed) {
                        k += 1;
                        let v: Vec<String> = (0..64).map(|j| format!("{i}-{j}-{k}")).collect();
                        std::hint::black_box(&v);
                        std::env::set_var(format!("CACHEM_TEST_BUSY_{i}"), k.to_string());
                        std::hint::black_box(std::env::var("HOME").ok());
                        drop(std::io::stderr().lock());
                    }
                })
            })
            .collect();
        Busy { stop, threads }
    }
}

impl Drop for Busy {
    fn drop(&mut self) {
        self.stop.store(true, Ordering::Relaxed);
        for t in self.threads.drain(..) {
            let _ = t.join();
        }
    }
}

const PARENT_NAMES: [&str; 3] = ["mod_status", "mod_proxy", "mod_cache"];
const CHILD_NAMES: [&str; 3] = ["child_a", "child_b", "child_c"];

/// What a worker resolves: the parent's names and new ones through the
/// inherited handle and through a handle of its own, and 10 unique ids.
fn resolve_all(inherited: &Cache, config: &Config, out: &Path) -> Result<(), String> {
    let e = |e: cachem::Error| e.to_string();
    let mut lines = String::new();
    for n in PARENT_NAMES.iter().chain(&CHILD_NAMES) {
        lines += &format!("inherited {n} {}\n", inherited.id(n).map_err(e)?.get());
    }
    let own = Cache::open(config).map_err(e)?;
    for n in PARENT_NAMES.iter().chain(&CHILD_NAMES) {
        lines += &format!("own {n} {}\n", own.id(n).map_err(e)?.get());
    }
    for _ in 0..10 {
        lines += &format!("unique {}\n", own.unique_id().map_err(e)?.get());
    }
    std::fs::write(out, lines).map_err(|e| e.to_string())
}

#[test]
fn children_forked_after_the_parent_used_the_registry_resolve_ids() {
    let d = TempDir::new("prefork-ids");
    let config = Config::named("pf").dir(d.path().join("run")).size(1 << 16);
    let cache = Cache::open(&config).unwrap();
    let parent_ids: Vec<OwnerId> = PARENT_NAMES.iter().map(|n| cache.id(n).unwrap()).collect();
    let parent_unique = cache.unique_id().unwrap();

    let started = Instant::now();
    let busy = Busy::start(4);
    let mut pids = Vec::new();
    for i in 0..8 {
        let out = d.path().join(format!("child-{i}"));
        let grand = d.path().join(format!("grand-{i}"));
        let (cache, config, dir) = (&cache, &config, d.path());
        pids.push(fork_child(d.path(), move || {
            resolve_all(cache, config, &out)?;
            if i == 0 {
                // A child of a child, forked after its parent used the
                // registry too.
                let g = fork_child(dir, || resolve_all(cache, config, &grand));
                let codes = wait_all(&[g], Duration::from_secs(120));
                if codes != [0] {
                    return Err(format!("grandchild exited with {codes:?}"));
                }
            }
            Ok(())
        }));
    }
    let codes = wait_all(&pids, Duration::from_secs(180));
    drop(busy);
    eprintln!("8 forked children + 1 grandchild resolved their ids in {:?}", started.elapsed());
    assert!(codes.iter().all(|c| *c == 0), "exit codes {codes:?}\n{}", errors_of(d.path()));

    let mut names: BTreeMap<String, BTreeSet<u32>> = BTreeMap::new();
    let mut uniques = Vec::new();
    let files: Vec<PathBuf> =
        (0..8).map(|i| d.path().join(format!("child-{i}"))).chain([d.path().join("grand-0")]).collect();
    for f in &files {
        let text = std::fs::read_to_string(f).unwrap();
        for l in text.lines() {
            let w: Vec<&str> = l.split(' ').collect();
            match w.as_slice() {
                ["unique", id] => uniques.push(id.parse::<u32>().unwrap()),
                [_, name, id] => {
                    names.entry(name.to_string()).or_default().insert(id.parse().unwrap());
                }
                _ => panic!("bad line {l:?}"),
            }
        }
    }
    // Every process agrees on every name, and with the parent.
    assert_eq!(names.len(), 6, "{names:?}");
    for (n, ids) in &names {
        assert_eq!(ids.len(), 1, "{n} got several ids: {ids:?}");
    }
    for (n, id) in PARENT_NAMES.iter().zip(&parent_ids) {
        assert_eq!(names[*n], BTreeSet::from([id.get()]));
    }
    for n in CHILD_NAMES {
        assert_eq!(Some(cache.id(n).unwrap().get()), names[n].iter().next().copied());
    }
    // Unique ids are distinct across all processes and from every name.
    assert_eq!(uniques.len(), 90);
    let mut all: BTreeSet<u32> = uniques.iter().copied().collect();
    assert_eq!(all.len(), 90, "duplicate unique ids");
    all.insert(parent_unique.get());
    for ids in names.values() {
        all.extend(ids);
    }
    assert_eq!(all.len(), 90 + 1 + 6);
    assert!(!all.contains(&OwnerId::PROCESS.get()));
}

#[test]
fn sixteen_processes_race_on_the_registry_of_a_fresh_region() {
    let d = TempDir::new("prefork-race");
    for round in 0..20 {
        let config = Config::named(format!("race{round}")).dir(d.path().join("run")).size(1 << 16);
        // Every child waits for the pipe to close, then opens the fresh
        // region and resolves a name at once.
        let mut fds = [0; 2];
        // SAFETY: pipe writes two descriptors into the array.
        assert_eq!(unsafe { libc::pipe(fds.as_mut_ptr()) }, 0);
        let mut pids = Vec::new();
        for i in 0..16 {
            let config = config.clone();
            let out = d.path().join(format!("r{round}-{i}"));
            pids.push(fork_child(d.path(), move || {
                let mut b = [0u8; 1];
                // SAFETY: closes our copy of the write end, then blocks on
                // the read end until the parent closes its copy.
                unsafe {
                    libc::close(fds[1]);
                    libc::read(fds[0], b.as_mut_ptr().cast(), 1);
                }
                let cache = Cache::open(&config).map_err(|e| e.to_string())?;
                let id = cache.id("shared").map_err(|e| e.to_string())?;
                std::fs::write(out, id.get().to_string()).map_err(|e| e.to_string())
            }));
        }
        // SAFETY: closes our two descriptors: the children start.
        unsafe {
            libc::close(fds[0]);
            libc::close(fds[1]);
        }
        let codes = wait_all(&pids, Duration::from_secs(120));
        assert!(codes.iter().all(|c| *c == 0), "round {round}: {codes:?}\n{}", errors_of(d.path()));
        let ids: BTreeSet<String> = (0..16)
            .map(|i| std::fs::read_to_string(d.path().join(format!("r{round}-{i}"))).unwrap())
            .collect();
        assert_eq!(ids.len(), 1, "round {round}: processes disagree: {ids:?}");
    }
}

#[test]
fn a_forked_child_purges_its_process_scoped_records_when_it_drops_its_own_handle() {
    let d = TempDir::new("prefork-drop");
    let config = Config::named("drop").dir(d.path()).size(1 << 16);
    let parent = Cache::open(&config).unwrap();
    parent.lock().unwrap().insert(OwnerId::PROCESS, b"parent's").unwrap();
    let (p, cfg) = (&parent, &config);
    let pid = fork_child(d.path(), move || {
        let own = Cache::open(cfg).map_err(|e| e.to_string())?;
        own.lock()
            .map_err(|e| e.to_string())?
            .insert(OwnerId::PROCESS, b"child's")
            .map_err(|e| e.to_string())?;
        drop(own);
        // The handle the child opened was its last own handle: its
        // process-scoped record is gone, the parent's is not.
        let me = std::process::id();
        let g = p.lock().map_err(|e| e.to_string())?;
        let mine = g.iter().filter(|(m, _)| m.owner.is_process() && m.pid == me).count();
        let total = g.iter().count();
        if mine != 0 || total != 1 {
            return Err(format!("after drop: {mine} of the child's records left, {total} in all"));
        }
        Ok(())
    });
    let codes = wait_all(&[pid], Duration::from_secs(60));
    assert_eq!(codes, [0], "{}", errors_of(d.path()));
    assert_eq!(parent.lock().unwrap().iter().count(), 1);
}

#[test]
fn a_lock_taken_right_after_a_sigkill_purges_the_dead_holder_records() {
    let d = TempDir::new("prefork-kill");
    let config = Config::named("kill").dir(d.path()).size(1 << 16);
    let cache = Cache::open(&config).unwrap();
    let owner = cache.id("jobs").unwrap();
    cache.lock().unwrap().insert(OwnerId::PROCESS, b"survivor").unwrap();
    let mut purged_every_time = 0;
    for round in 0..50 {
        let mut fds = [0; 2];
        // SAFETY: pipe writes two descriptors into the array.
        assert_eq!(unsafe { libc::pipe(fds.as_mut_ptr()) }, 0);
        let c = &cache;
        let pid = fork_child(d.path(), move || {
            let mut g = c.lock().map_err(|e| e.to_string())?;
            for i in 0..3u8 {
                g.insert(OwnerId::PROCESS, &[i; 32]).map_err(|e| e.to_string())?;
            }
            g.insert(owner, b"owned").map_err(|e| e.to_string())?;
            // Holding the lock: tell the parent, then wait to be killed.
            // SAFETY: writes one byte from a local.
            unsafe { libc::write(fds[1], [1u8].as_ptr().cast(), 1) };
            std::thread::sleep(Duration::from_secs(60));
            Err("not killed".into())
        });
        // SAFETY: closes the write end, reads the ready byte.
        let n = unsafe {
            libc::close(fds[1]);
            let mut b = [0u8; 1];
            libc::read(fds[0], b.as_mut_ptr().cast(), 1)
        };
        assert_eq!(n, 1, "round {round}: the child never got ready: {}", errors_of(d.path()));
        // SAFETY: SIGKILL to our own child; no waitpid before the lock.
        unsafe {
            libc::close(fds[0]);
            libc::kill(pid, libc::SIGKILL);
        }
        let g = cache.lock().unwrap();
        let left = g.iter().filter(|(m, _)| m.pid == pid as u32 && m.owner.is_process()).count();
        let owned = g.iter().filter(|(m, _)| m.pid == pid as u32 && m.owner == owner).count();
        let survivor = g.iter().filter(|(m, _)| m.pid == std::process::id()).count();
        drop(g);
        wait_all(&[pid], Duration::from_secs(30));
        assert_eq!(left, 0, "round {round}: the killed holder's process-scoped records survived");
        assert_eq!(owned, 1, "round {round}: an owned record must stay");
        assert_eq!(survivor, 1, "round {round}: our own record must stay");
        purged_every_time += 1;
        cache.lock().unwrap().purge(owner, pid as u32).unwrap();
    }
    assert_eq!(purged_every_time, 50);
    assert!(cache.lock().unwrap().verify().is_ok());
}

/// Runs `f` in a forked child that first becomes `uid`/`gid` (no
/// supplementary groups).
fn as_user(dir: &Path, uid: u32, gid: u32, f: impl FnOnce() -> Result<(), String>) -> i32 {
    let pid = fork_child(dir, move || {
        // SAFETY: plain syscalls with valid arguments (no groups).
        let ok = unsafe {
            libc::setgroups(0, std::ptr::null()) == 0 && libc::setgid(gid) == 0 && libc::setuid(uid) == 0
        };
        if !ok {
            return Err(format!("cannot become {uid}:{gid}: {}", std::io::Error::last_os_error()));
        }
        f()
    });
    wait_all(&[pid], Duration::from_secs(60))[0]
}

const NOBODY: u32 = 65534;

fn is_root() -> bool {
    cachem::sys::process::effective_ids().0 == 0
}

#[test]
fn a_region_given_to_another_user_works_for_that_user_only() {
    if !is_root() {
        eprintln!("SKIPPED: needs root to give files to another user");
        return;
    }
    let d = TempDir::new("prefork-owner");
    // The test directory itself must be reachable by nobody.
    use std::os::unix::fs::{MetadataExt, PermissionsExt};
    std::fs::set_permissions(d.path(), std::fs::Permissions::from_mode(0o755)).unwrap();
    let run = d.path().join("run");
    let config = Config::named("owned").dir(&run).size(1 << 16).owner(NOBODY, NOBODY);
    let cache = Cache::open(&config).unwrap();
    let jobs = cache.id("jobs").unwrap();
    cache.lock().unwrap().insert(jobs, b"root's").unwrap();

    // A worker that became nobody: new ids, inserts, reaps.
    let cfg = Config::named("owned").dir(&run).size(1 << 16);
    let code = as_user(d.path(), NOBODY, NOBODY, || {
        let c = Cache::open(&cfg).map_err(|e| e.to_string())?;
        let fresh = c.id("made_by_nobody").map_err(|e| e.to_string())?;
        let u = c.unique_id().map_err(|e| e.to_string())?;
        if c.id("jobs").map_err(|e| e.to_string())? != jobs || fresh == u {
            return Err("ids disagree".into());
        }
        c.lock().map_err(|e| e.to_string())?.insert(fresh, b"nobody's").map_err(|e| e.to_string())?;
        c.reap().map_err(|e| e.to_string())?;
        Ok(())
    });
    assert_eq!(code, 0, "{}", errors_of(d.path()));
    assert!(cache.lookup("made_by_nobody").unwrap().is_some());

    // Everything cachem made is nobody's (the run directory, the region,
    // its lockfile; names live in the region, so no id store).
    let mut checked = 0;
    let mut stack = vec![run.clone()];
    while let Some(p) = stack.pop() {
        let m = std::fs::symlink_metadata(&p).unwrap();
        assert_eq!((m.uid(), m.gid()), (NOBODY, NOBODY), "{} is not nobody's", p.display());
        checked += 1;
        if m.is_dir() {
            stack.extend(std::fs::read_dir(&p).unwrap().flatten().map(|e| e.path()));
        }
    }
    assert!(checked >= 3, "only {checked} files checked");

    // Another unrelated user is refused, with the path.
    let code = as_user(d.path(), 1, 1, || match Cache::open(&cfg) {
        Err(e) if e.kind() == ErrorKind::PermissionDenied && e.to_string().contains("owned") => Ok(()),
        Err(e) => Err(format!("wrong error: {e}")),
        Ok(_) => Err("an unrelated user could open the region".into()),
    });
    assert_eq!(code, 0, "{}", errors_of(d.path()));

    // A non-root caller may not give files away.
    let other = Config::named("other").dir(d.path().join("x")).size(1 << 16).owner(0, 0);
    let code = as_user(d.path(), NOBODY, NOBODY, || match Cache::open(&other) {
        Err(e) if e.kind() == ErrorKind::PermissionDenied => Ok(()),
        Err(e) => Err(format!("wrong error: {e}")),
        Ok(_) => Err("nobody gave files to root".into()),
    });
    assert_eq!(code, 0, "{}", errors_of(d.path()));
}

#[test]
fn a_child_forked_while_another_thread_is_inside_id_can_resolve_ids() {
    let d = TempDir::new("prefork-midcycle");
    let config = Config::named("mid").dir(d.path()).size(1 << 16);
    let cache = Arc::new(Cache::open(&config).unwrap());
    cache.id("warm").unwrap();
    let stop = Arc::new(AtomicBool::new(false));
    let t = {
        let (cache, stop) = (cache.clone(), stop.clone());
        std::thread::spawn(move || {
            while !stop.load(Ordering::Relaxed) {
                let _ = cache.unique_id();
                let _ = cache.id("warm");
            }
        })
    };
    let mut pids = Vec::new();
    for i in 0..5 {
        std::thread::sleep(Duration::from_millis(15));
        let c = &*cache;
        pids.push(fork_child(d.path(), move || {
            c.id(&format!("child-{i}")).map_err(|e| e.to_string())?;
            c.id("warm").map_err(|e| e.to_string())?;
            Ok(())
        }));
    }
    let codes = wait_all(&pids, Duration::from_secs(120));
    stop.store(true, Ordering::Relaxed);
    t.join().unwrap();
    assert!(codes.iter().all(|c| *c == 0), "{codes:?}\n{}", errors_of(d.path()));
}

#[test]
fn dropping_an_inherited_handle_in_a_child_keeps_the_records_of_another() {
    let d = TempDir::new("prefork-two");
    let config = Config::named("two").dir(d.path()).size(1 << 16);
    let a = Cache::open(&config).unwrap();
    let b = Cache::open(&config).unwrap();
    let pid = fork_child(d.path(), move || {
        let r = b
            .lock()
            .map_err(|e| e.to_string())?
            .insert(OwnerId::PROCESS, b"child's")
            .map_err(|e| e.to_string())?;
        drop(a);
        let g = b.lock().map_err(|e| e.to_string())?;
        if g.get(r).is_none() {
            return Err("dropping one inherited handle purged a record another still uses".into());
        }
        Ok(())
    });
    assert_eq!(wait_all(&[pid], Duration::from_secs(60)), [0], "{}", errors_of(d.path()));
}

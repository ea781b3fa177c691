//! Process life-cycle with real processes: process-scoped records vanish
//! when their process exits or is killed, even if the pid is reused.

mod common;

use cachem::layout::ProcTag;
use cachem::{Cache, Config, Error, OwnerId};
use common::*;
use std::os::unix::process::ExitStatusExt;
use std::time::Duration;

fn config(dir: &std::path::Path) -> Config {
    Config::named("life").dir(dir).size(1 << 16)
}

/// Worker: insert 3 process-scoped and 2 owned records, then exit normally
/// (dropping the Cache), or wait to be killed, or exit without dropping.
#[test]
fn worker_life() {
    if !is_worker() {
        return;
    }
    let dir = std::env::var("CACHEM_TEST_DIR").unwrap();
    let how = std::env::var("CACHEM_TEST_HOW").unwrap();
    let cache = Cache::open(&config(dir.as_ref())).unwrap();
    let owner = cache.id("jobs").unwrap();
    {
        let mut g = cache.lock().unwrap();
        if how == "fill" {
            while g.insert(OwnerId::PROCESS, &[7u8; 200]).is_ok() {}
        } else {
            for i in 0..3u8 {
                g.insert(OwnerId::PROCESS, &[i; 40]).unwrap();
            }
            for i in 0..2u8 {
                g.insert(owner, &[i; 24]).unwrap();
            }
        }
    }
    say("inserted");
    match how.as_str() {
        "exit" => drop(cache),
        "abandon" => std::process::exit(0),
        _ => std::thread::sleep(Duration::from_secs(60)),
    }
}

fn run_worker(dir: &TempDir, how: &str) -> std::process::Child {
    let env = [("CACHEM_TEST_DIR", dir.path().display().to_string()), ("CACHEM_TEST_HOW", how.to_string())];
    let mut w = spawn_worker("worker_life", &env);
    assert_eq!(read_line_timeout(&mut w, Duration::from_secs(30)), "inserted");
    w
}

#[test]
fn a_normal_exit_purges_process_scoped_records_only() {
    let d = TempDir::new("exit");
    let mut w = run_worker(&d, "exit");
    assert!(wait_timeout(&mut w, Duration::from_secs(30)).success());
    let cache = Cache::open(&config(d.path())).unwrap();
    let st = cache.status().unwrap();
    assert_eq!(st.region.records, 2, "the owned records remain");
    let jobs = cache.id("jobs").unwrap();
    let g = cache.lock().unwrap();
    assert_eq!(g.iter_owner(OwnerId::PROCESS).count(), 0);
    assert_eq!(g.iter_owner(jobs).count(), 2);
    assert_eq!(g.status().unwrap().counters.reaped_records, 0, "purged by the exiting process, not reaped");
}

#[test]
fn a_killed_process_is_reaped_by_the_next_open_and_the_bytes_come_back() {
    let d = TempDir::new("killed");
    let before = Cache::open(&config(d.path())).unwrap();
    let free0 = before.status().unwrap().region.free_bytes;
    let mut w = run_worker(&d, "wait");
    let pid = w.id();
    let st = before.status().unwrap();
    assert_eq!(st.region.records, 5);
    assert!(st.pids.iter().any(|p| p.pid == pid && p.alive && p.records == 5));
    sigkill(&mut w);
    assert_eq!(wait_timeout(&mut w, Duration::from_secs(30)).signal(), Some(9));
    let st = before.status().unwrap();
    assert!(st.pids.iter().any(|p| p.pid == pid && !p.alive), "status shows the process dead");
    drop(before);
    // The next open reaps.
    let cache = Cache::open(&config(d.path())).unwrap();
    let st = cache.status().unwrap();
    assert_eq!(st.region.records, 2);
    assert_eq!(st.region.counters.reaped_records, 3);
    // 3 blocks of 8 + 40 bytes came back. The worker's name "jobs" stays
    // in the name table: a block of 8 + 8 bytes (id, name) and an entry;
    // so does the table's hash index: a block of 8 + 272 bytes (16
    // entries) and an entry.
    let owned_and_table = 2 * (8 + 24) + 5 * 32 + (8 + 8) + 32 + (8 + 272) + 32;
    // Free at once, or dead (a deferred region compacts when dead bytes are
    // a large share of the used ones) until the next compaction.
    let r = &st.region;
    assert_eq!(r.free_bytes + r.dead_bytes, free0 - owned_and_table, "{r:?}");
    cache.lock().unwrap().compact().unwrap();
    assert_eq!(cache.status().unwrap().region.free_bytes, free0 - owned_and_table);
    // And reap() finds nothing more.
    assert_eq!(cache.reap().unwrap().records, 0);
}

#[test]
fn reap_reports_what_it_reclaimed() {
    let d = TempDir::new("reap");
    let cache = Cache::open(&config(d.path())).unwrap();
    let mut w = run_worker(&d, "abandon");
    let pid = w.id();
    assert!(wait_timeout(&mut w, Duration::from_secs(30)).success());
    let rep = cache.reap().unwrap();
    assert_eq!(rep.records, 3);
    assert_eq!(rep.bytes, 3 * 48);
    assert_eq!(rep.dead.len(), 1);
    assert_eq!((rep.dead[0].pid, rep.dead[0].records), (pid, 3));
}

#[test]
fn pid_reuse_is_told_apart_by_start_time() {
    let d = TempDir::new("reuse");
    let cache = Cache::open(&config(d.path())).unwrap();
    // A live child of ours (its /proc/<pid>/ns/time is readable: a pid
    // whose time namespace cannot be read is never judged, see
    // tests/timens.rs); one record carries its real start time, one a
    // forged one.
    let mut child = Reaped(
        std::process::Command::new("sleep").arg("60").stdin(std::process::Stdio::null()).spawn().unwrap(),
    );
    let pid = child.0.id();
    let start1 = cachem::sys::process::start_time(pid).expect("/proc/<pid>/stat");
    let (real, forged) = {
        let mut g = cache.lock().unwrap();
        let mut l = g.layout();
        let real = l.insert(OwnerId::PROCESS, ProcTag { pid, start_time: start1 }, b"the child's").unwrap();
        let forged =
            l.insert(OwnerId::PROCESS, ProcTag { pid, start_time: start1 + 777 }, b"an old process").unwrap();
        (real, forged)
    };
    let rep = cache.reap().unwrap();
    assert_eq!(rep.records, 1);
    let g = cache.lock().unwrap();
    assert!(g.get(real).is_some(), "matching start time: alive, kept");
    assert!(g.get(forged).is_none(), "same pid, other start time: dead, reaped");
    drop(g);
    let _ = child.0.kill();
}

/// A child killed and waited for when dropped.
struct Reaped(std::process::Child);

impl Drop for Reaped {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

#[test]
fn a_region_full_of_a_dead_process_still_takes_an_insert() {
    let d = TempDir::new("full");
    let cache = Cache::open(&config(d.path())).unwrap();
    let mut w = run_worker(&d, "fill");
    sigkill(&mut w);
    let _ = wait_timeout(&mut w, Duration::from_secs(30));
    let mut g = cache.lock().unwrap();
    assert!(g.status().unwrap().free_bytes < 300, "the dead worker filled the region");
    let id = g.insert(OwnerId(1), &[1u8; 256]).unwrap();
    assert_eq!(g.get(id).unwrap().len(), 256);
    assert!(g.status().unwrap().counters.reaped_records > 100);
}

#[test]
fn dropping_the_last_handle_purges_this_process() {
    let d = TempDir::new("drop");
    let a = Cache::open(&config(d.path())).unwrap();
    let b = Cache::open(&config(d.path())).unwrap();
    a.lock().unwrap().insert(OwnerId::PROCESS, b"mine").unwrap();
    drop(a);
    assert_eq!(b.status().unwrap().region.records, 1, "another handle is still open");
    drop(b);
    let c = Cache::open(&config(d.path())).unwrap();
    assert_eq!(c.status().unwrap().region.records, 0);
    c.lock().unwrap().insert(OwnerId::PROCESS, b"mine").unwrap();
    assert_eq!(c.purge_process().unwrap().records, 1);
}

#[test]
fn forked_children_of_an_anonymous_region_killed_are_reaped_by_the_parent() {
    let out = run_prefork(&["4", "10", "kill"]);
    assert!(out.contains("reaped=40") && out.contains("records=40 ok=true"), "{out}");
}

fn run_prefork(args: &[&str]) -> String {
    let helper = prefork_helper();
    let out = std::process::Command::new(&helper).args(args).output().unwrap();
    let text = String::from_utf8_lossy(&out.stdout).into_owned();
    assert!(out.status.success(), "prefork {args:?}: {text} {}", String::from_utf8_lossy(&out.stderr));
    text
}

/// Worker: attach from inside a new pid namespace.
#[test]
fn worker_other_ns() {
    if !is_worker() {
        return;
    }
    let dir = std::env::var("CACHEM_TEST_DIR").unwrap();
    let cfg = config(dir.as_ref());
    match Cache::open(&cfg) {
        Err(Error::PidNamespace { .. }) => say("refused"),
        other => say(format!("unexpected {:?}", other.map(|_| ()))),
    }
    match Cache::open(&cfg.no_reap()) {
        Ok(_) => say("no_reap ok"),
        Err(e) => say(format!("no_reap failed: {e}")),
    }
}

#[test]
fn another_pid_namespace_is_refused_unless_reaping_is_off() {
    let d = TempDir::new("ns");
    let _cache = Cache::open(&config(d.path())).unwrap();
    let exe = std::env::current_exe().unwrap();
    let out = std::process::Command::new("unshare")
        .args(["--pid", "--fork", "--"])
        .arg(&exe)
        .args(["worker_other_ns", "--exact", "--nocapture", "--test-threads=1", "-q"])
        .env("CACHEM_TEST_WORKER", "1")
        .env("CACHEM_TEST_DIR", d.path())
        .output();
    let out = match out {
        Ok(o) if o.status.success() => o,
        Ok(o) => {
            println!("skipped: unshare --pid refused here: {}", String::from_utf8_lossy(&o.stderr).trim());
            return;
        }
        Err(e) => {
            println!("skipped: unshare not available: {e}");
            return;
        }
    };
    let text = String::from_utf8_lossy(&out.stdout);
    assert!(text.contains("@@ refused"), "{text}");
    assert!(text.contains("@@ no_reap ok"), "{text}");
}

#[test]
fn an_id_call_inside_a_guard_does_not_deadlock_with_an_attach() {
    // Regression: attach held the lockfile while waiting for the region
    // lock, and a registry call under the region lock waits for the
    // lockfile. Threads stand in for processes (flock is per open file).
    let d = TempDir::new("deadlock");
    let cache = std::sync::Arc::new(Cache::open(&config(d.path())).unwrap());
    let (tx, rx) = std::sync::mpsc::channel();
    let c2 = cache.clone();
    let holder = std::thread::spawn(move || {
        let mut g = c2.lock().unwrap();
        std::thread::sleep(Duration::from_millis(200));
        // id() would take the lock again: an error, never a hang.
        assert_eq!(c2.id("late-name").unwrap_err().kind(), cachem::ErrorKind::AlreadyLocked);
        let id = c2.id_in(&mut g, "late-name").unwrap();
        drop(g);
        id
    });
    std::thread::sleep(Duration::from_millis(50));
    let dir = d.path().to_path_buf();
    std::thread::spawn(move || {
        let other = Cache::open(&config(&dir)).map(|_| ());
        let _ = tx.send(other.is_ok());
    });
    assert_eq!(rx.recv_timeout(Duration::from_secs(20)), Ok(true), "attach and id() deadlocked");
    assert_eq!(holder.join().unwrap(), cache.id("late-name").unwrap());
}

/// Worker: insert 3 process-scoped records, then a second thread takes the
/// lock and holds it (the main thread sleeps) until the process is killed.
#[test]
fn worker_second_thread_holds() {
    if !is_worker() {
        return;
    }
    let dir = std::env::var("CACHEM_TEST_DIR").unwrap();
    let cache = std::sync::Arc::new(Cache::open(&config(dir.as_ref())).unwrap());
    {
        let mut g = cache.lock().unwrap();
        for i in 0..3u8 {
            g.insert(OwnerId::PROCESS, &[i; 40]).unwrap();
        }
    }
    let c = cache.clone();
    std::thread::spawn(move || {
        let _g = c.lock().unwrap();
        say("holding");
        std::thread::sleep(Duration::from_secs(60));
    });
    std::thread::sleep(Duration::from_secs(60));
}

/// Item 11 of issue 21: when a process is SIGKILLed while its second
/// thread holds the lock, the kernel releases the lock as that thread
/// exits, possibly before the main thread (whose state `/proc/<pid>/stat`
/// shows) starts to exit. The waiter that gets the lock with EOWNERDEAD
/// must still judge the process dead and reap its records at once, not
/// one reap later. Several rounds, since the order of the two threads'
/// exits varies.
#[test]
fn a_process_killed_while_its_second_thread_holds_the_lock_is_reaped_by_the_next_locker() {
    for round in 0..8 {
        let d = TempDir::new("thread-holder");
        let cache = Cache::open(&config(d.path()).lock_timeout(Some(Duration::from_secs(30)))).unwrap();
        let env = [("CACHEM_TEST_DIR", d.path().display().to_string())];
        let mut w = spawn_worker("worker_second_thread_holds", &env);
        assert_eq!(read_line_timeout(&mut w, Duration::from_secs(30)), "holding");
        let pid = w.id();
        std::thread::scope(|s| {
            // A waiter already asleep on the lock when the holder dies.
            let waiter = s.spawn(|| {
                let g = cache.lock().unwrap();
                let left = g.iter_owner_meta(OwnerId::PROCESS).filter(|(m, _)| m.pid == pid).count();
                (left, g.status().unwrap().counters.reaped_records)
            });
            // Give the waiter a moment to block (not a timing assertion:
            // the outcome must be the same whenever it starts waiting).
            std::thread::sleep(Duration::from_millis(20));
            sigkill(&mut w);
            let (left, reaped) = waiter.join().unwrap();
            assert_eq!(
                left, 0,
                "round {round}: the killed process's records outlived the lock it died holding"
            );
            assert_eq!(reaped, 3, "round {round}");
        });
        assert_eq!(wait_timeout(&mut w, Duration::from_secs(30)).signal(), Some(9));
    }
}

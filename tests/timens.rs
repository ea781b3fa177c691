//! Time namespaces (issue 21 item 10): start times are per time namespace,
//! so a reaper never judges a live process of another time namespace dead
//! by its start time; it leaves its records and says why. Real processes,
//! started in a new time namespace with `unshare --time` (root, or a user
//! namespace; skipped where it is refused).

mod common;

use cachem::sys::process::Unsure;
use cachem::{Cache, Config, OwnerId};
use common::*;
use std::process::{Command, Stdio};
use std::time::Duration;

fn config(dir: &std::path::Path) -> Config {
    Config::named("tns").dir(dir).size(1 << 16)
}

/// Runs `entry` of this test binary in a new time namespace whose boot
/// clock is 1000 s ahead, with `dir`; None if `unshare --time` is refused.
fn in_time_namespace(entry: &str, dir: &TempDir) -> Option<std::process::Child> {
    let probe =
        Command::new("unshare").args(["--time", "--boottime", "1000", "--fork", "--", "true"]).output();
    match probe {
        Ok(o) if o.status.success() => {}
        Ok(o) => {
            println!("skipped: unshare --time refused here: {}", String::from_utf8_lossy(&o.stderr).trim());
            return None;
        }
        Err(e) => {
            println!("skipped: unshare not available: {e}");
            return None;
        }
    }
    let exe = std::env::current_exe().unwrap();
    let child = Command::new("unshare")
        .args(["--time", "--boottime", "1000", "--fork", "--"])
        .arg(&exe)
        .args([entry, "--exact", "--nocapture", "--test-threads=1", "-q"])
        .env("CACHEM_TEST_WORKER", "1")
        .env("RUST_BACKTRACE", "0")
        .env("CACHEM_TEST_DIR", dir.path())
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .spawn()
        .unwrap();
    Some(child)
}

/// Waits (at most 60 s) until stdin is closed.
fn wait_for_stdin_eof() {
    let (tx, rx) = std::sync::mpsc::channel();
    std::thread::spawn(move || {
        use std::io::Read;
        let _ = std::io::stdin().read_to_end(&mut Vec::new());
        let _ = tx.send(());
    });
    let _ = rx.recv_timeout(Duration::from_secs(60));
}

/// Worker: insert 3 process-scoped records, report its pid and the time
/// namespace's view of its start time, stay alive until stdin closes, then
/// exit without dropping the handle (its records stay for a reaper).
#[test]
fn worker_insert_and_stay() {
    if !is_worker() {
        return;
    }
    let dir = std::env::var("CACHEM_TEST_DIR").unwrap();
    let cache = Cache::open(&config(dir.as_ref())).unwrap();
    {
        let mut g = cache.lock().unwrap();
        for i in 0..3u8 {
            g.insert(OwnerId::PROCESS, &[i; 40]).unwrap();
        }
    }
    say(format!("inserted {}", std::process::id()));
    wait_for_stdin_eof();
    std::process::exit(0);
}

/// Worker: open the region (which reaps) and reap again, then report what
/// both reaps did.
#[test]
fn worker_reap() {
    if !is_worker() {
        return;
    }
    let dir = std::env::var("CACHEM_TEST_DIR").unwrap();
    let cache = Cache::open(&config(dir.as_ref())).unwrap();
    let open = cache.open_reap().clone();
    let again = cache.reap().unwrap();
    let unjudged: Vec<String> = again.unjudged.iter().map(|u| format!("{}:{:?}", u.pid, u.reason)).collect();
    say(format!("reaped {} {} unjudged {}", open.records, again.records, unjudged.join(",")));
}

fn process_records(cache: &Cache) -> usize {
    cache.lock().unwrap().iter_owner(OwnerId::PROCESS).count()
}

#[test]
fn a_live_writer_in_another_time_namespace_is_not_reaped_from_outside() {
    let d = TempDir::new("tns-in");
    let cache = Cache::open(&config(d.path())).unwrap();
    let Some(mut w) = in_time_namespace("worker_insert_and_stay", &d) else { return };
    let line = read_line_timeout(&mut w, Duration::from_secs(30));
    let pid: u32 =
        line.strip_prefix("inserted ").and_then(|p| p.parse().ok()).unwrap_or_else(|| panic!("{line}"));
    assert_eq!(process_records(&cache), 3);
    // The recorded start time is the namespace's view, not ours.
    let recorded = cache.lock().unwrap().iter_owner_meta(OwnerId::PROCESS).next().unwrap().0.start_time;
    assert_ne!(
        Some(recorded),
        cachem::sys::process::start_time(pid),
        "the namespace did not shift start times"
    );
    let rep = cache.reap().unwrap();
    assert_eq!(rep.records, 0, "a live writer in another time namespace was reaped: {rep:?}");
    assert!(rep.dead.is_empty(), "{rep:?}");
    assert_eq!(rep.unjudged.len(), 1, "{rep:?}");
    assert_eq!((rep.unjudged[0].pid, rep.unjudged[0].records), (pid, 3));
    assert_eq!(rep.unjudged[0].reason, Unsure::OtherTimeNamespace);
    assert_eq!(process_records(&cache), 3);
    // Once it has exited (without dropping its handle), the pid is gone:
    // dead, whatever namespace it ran in.
    drop(w.stdin.take());
    assert!(wait_timeout(&mut w, Duration::from_secs(30)).success());
    let rep = cache.reap().unwrap();
    assert_eq!(rep.records, 3, "{rep:?}");
    assert_eq!(rep.dead.len(), 1, "{rep:?}");
    assert_eq!(rep.dead[0].pid, pid);
    assert_eq!(process_records(&cache), 0);
}

#[test]
fn a_reaper_in_another_time_namespace_leaves_a_live_writer_alone() {
    let d = TempDir::new("tns-out");
    let cache = Cache::open(&config(d.path())).unwrap();
    let mut w =
        worker_command("worker_insert_and_stay", &[("CACHEM_TEST_DIR", d.path().display().to_string())])
            .stdin(Stdio::piped())
            .spawn()
            .unwrap();
    let line = read_line_timeout(&mut w, Duration::from_secs(30));
    let pid: u32 =
        line.strip_prefix("inserted ").and_then(|p| p.parse().ok()).unwrap_or_else(|| panic!("{line}"));
    let Some(mut r) = in_time_namespace("worker_reap", &d) else {
        drop(w.stdin.take());
        wait_timeout(&mut w, Duration::from_secs(30));
        return;
    };
    let said = read_line_timeout(&mut r, Duration::from_secs(30));
    assert!(wait_timeout(&mut r, Duration::from_secs(30)).success());
    assert_eq!(said, format!("reaped 0 0 unjudged {pid}:OtherTimeNamespace"));
    assert_eq!(process_records(&cache), 3);
    drop(w.stdin.take());
    assert!(wait_timeout(&mut w, Duration::from_secs(30)).success());
    assert_eq!(cache.reap().unwrap().records, 3);
}

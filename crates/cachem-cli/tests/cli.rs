//! End-to-end tests of the `cachem` binary: every command, both output
//! forms, the error paths (exit codes and messages), a `--process` record
//! gone after the command exits, stress workers SIGKILLed while `verify`
//! keeps passing, the demo, and every command of the README's tour.

// The root package's test helpers (tests/common), shared with its tests.
#[path = "../../../tests/common/mod.rs"]
mod common;

use common::*;
use std::path::Path;
use std::process::{Command, Output, Stdio};
use std::time::Duration;

const BIN: &str = env!("CARGO_BIN_EXE_cachem");

fn cachem(dir: &Path, args: &[&str]) -> Output {
    Command::new(BIN).arg("--dir").arg(dir).args(args).output().unwrap()
}

fn ok(dir: &Path, args: &[&str]) -> String {
    let o = cachem(dir, args);
    assert!(
        o.status.success(),
        "cachem {args:?} failed ({:?}): {}",
        o.status,
        String::from_utf8_lossy(&o.stderr)
    );
    String::from_utf8(o.stdout).unwrap()
}

/// Runs a failing command; returns (exit code, stderr).
fn fails(dir: &Path, args: &[&str]) -> (i32, String) {
    let o = cachem(dir, args);
    assert!(!o.status.success(), "cachem {args:?} should fail");
    (o.status.code().unwrap(), String::from_utf8_lossy(&o.stderr).into_owned())
}

fn json(s: &str) -> serde_json::Value {
    serde_json::from_str(s).unwrap_or_else(|e| panic!("not JSON ({e}): {s}"))
}

#[test]
fn create_put_get_del_ls_id_and_both_output_forms() {
    let d = TempDir::new("cli");
    let p = d.path();
    assert!(ok(p, &["create", "app", "--size", "64K"]).starts_with("created"));
    assert!(ok(p, &["create", "app", "--size", "65536"]).contains("already exists"));
    let a = ok(p, &["put", "app", "--owner", "mod_status", "hello world"]).trim().to_string();
    let b = ok(p, &["put", "app", "--owner-id", "7", "x"]).trim().to_string();
    let file = p.join("payload");
    std::fs::write(&file, b"from a file").unwrap();
    let c = ok(p, &["put", "app", "--owner", "jobs", "--file", file.to_str().unwrap()]).trim().to_string();
    let mut child = Command::new(BIN)
        .arg("--dir")
        .arg(p)
        .args(["put", "app", "--owner", "jobs", "-"])
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .spawn()
        .unwrap();
    use std::io::Write;
    child.stdin.take().unwrap().write_all(b"from stdin").unwrap();
    let out = child.wait_with_output().unwrap();
    assert!(out.status.success());
    let s = String::from_utf8(out.stdout).unwrap().trim().to_string();

    assert_eq!(ok(p, &["get", "app", &a]), "hello world");
    assert_eq!(ok(p, &["get", "app", &c]), "from a file");
    assert_eq!(ok(p, &["get", "app", &s]), "from stdin");
    let hex = ok(p, &["get", "app", &a, "--hex"]);
    assert!(hex.starts_with("00000000  68 65 6c 6c 6f") && hex.contains("|hello world|"), "{hex}");

    // id: the same name gives the same id; a new name the next one.
    let status_id = ok(p, &["id", "app", "mod_status"]).trim().to_string();
    assert_eq!(status_id, "1");
    assert_eq!(ok(p, &["id", "app", "jobs"]).trim(), "2");
    assert_eq!(ok(p, &["id", "app", "new-module"]).trim(), "3");

    // ls, human and JSON, with filters.
    let ls = ok(p, &["ls", "app"]);
    assert!(ls.lines().next().unwrap().starts_with("ID"));
    assert_eq!(ls.lines().count(), 5, "{ls}");
    assert!(ls.contains("mod_status") && ls.contains(&a));
    let v = json(&ok(p, &["ls", "app", "--json"]));
    assert_eq!(v.as_array().unwrap().len(), 4);
    let first = &v[0];
    for key in ["id", "owner", "owner_name", "pid", "alive", "len"] {
        assert!(first.get(key).is_some(), "ls --json lacks {key}");
    }
    assert_eq!(json(&ok(p, &["ls", "app", "--owner", "jobs", "--json"])).as_array().unwrap().len(), 2);
    assert_eq!(json(&ok(p, &["ls", "app", "--owner-id", "7", "--json"])).as_array().unwrap().len(), 1);
    let pid = first["pid"].as_u64().unwrap().to_string();
    assert_eq!(json(&ok(p, &["ls", "app", "--pid", &pid, "--json"])).as_array().unwrap().len(), 1);

    // stat, human and JSON.
    let st = ok(p, &["stat", "app"]);
    let first_line = st.lines().next().unwrap();
    assert!(
        first_line.starts_with("[H|B") && first_line.contains("|T") && first_line.ends_with("% used"),
        "{st}"
    );
    assert!(st.contains("mod_status") && st.contains("counters") && st.contains("dead"), "{st}");
    let v = json(&ok(p, &["stat", "app", "--json"]));
    for key in ["size", "used_bytes", "free_bytes", "records", "slots", "owners", "pids", "counters"] {
        assert!(v.get(key).is_some(), "stat --json lacks {key}");
    }
    assert_eq!(v["size"], 65536);
    assert_eq!(v["records"], 4);
    for key in ["inserts", "removes", "bytes_moved", "reaped_records", "recoveries"] {
        assert!(v["counters"].get(key).is_some(), "counters lack {key}");
    }
    let owners = v["owners"].as_array().unwrap();
    assert!(owners
        .iter()
        .any(|o| o["name"] == "mod_status" && o["id"] == 1 && o["records"] == 1 && o["bytes"] == 11));
    assert!(v["pids"].as_array().unwrap().iter().all(|p| p["alive"] == false && p.get("records").is_some()));

    // del, then the id is stale.
    assert!(ok(p, &["del", "app", &b]).contains("deleted"));
    let (code, err) = fails(p, &["get", "app", &b]);
    assert_eq!(code, 1);
    assert!(err.starts_with("cachem: stale record id") && err.lines().count() == 1, "{err}");
    let (code, _) = fails(p, &["del", "app", &b]);
    assert_eq!(code, 1);
    assert!(ok(p, &["verify", "app"]).starts_with("ok: 3 records"));
    assert!(ok(p, &["destroy", "app"]).starts_with("destroyed"));
    assert!(!p.join("app").exists() && !p.join("app.lock").exists() && !p.join("app.ids").exists());
}

#[test]
fn a_process_record_is_gone_after_the_command_exits() {
    let d = TempDir::new("cli-proc");
    let p = d.path();
    ok(p, &["create", "r", "--size", "16K"]);
    let id = ok(p, &["put", "r", "--process", "ephemeral"]).trim().to_string();
    let (code, err) = fails(p, &["get", "r", &id]);
    assert_eq!(code, 1, "{err}");
    assert_eq!(json(&ok(p, &["stat", "r", "--json"]))["records"], 0);
    let help = ok(p, &["put", "--help"]);
    assert!(help.contains("removed as soon as this command exits"), "{help}");
}

#[test]
fn reap_reports_a_killed_workers_records() {
    let d = TempDir::new("cli-reap");
    let p = d.path();
    ok(p, &["create", "r", "--size", "64K"]);
    let mut w = Command::new(BIN)
        .arg("--dir")
        .arg(p)
        .args(["stress", "r", "--seconds", "30", "--seed", "7"])
        .stdout(Stdio::null())
        .spawn()
        .unwrap();
    // Wait until it holds records, then kill it.
    let end = std::time::Instant::now() + Duration::from_secs(20);
    loop {
        let v = json(&ok(p, &["stat", "r", "--json"]));
        if v["records"].as_u64().unwrap() > 3 {
            break;
        }
        assert!(std::time::Instant::now() < end, "the stress worker inserted nothing");
        std::thread::sleep(Duration::from_millis(20));
    }
    w.kill().unwrap();
    w.wait().unwrap();
    let v = json(&ok(p, &["stat", "r", "--json"]));
    let dead = v["pids"].as_array().unwrap().iter().find(|x| x["pid"] == w.id()).cloned().unwrap();
    assert_eq!(dead["alive"], false);
    let n = dead["records"].as_u64().unwrap();
    let rep = json(&ok(p, &["reap", "r", "--json"]));
    assert_eq!(rep["records"].as_u64().unwrap(), n);
    assert_eq!(rep["dead"][0]["pid"], w.id());
    assert_eq!(json(&ok(p, &["stat", "r", "--json"]))["records"], 0);
    assert!(ok(p, &["reap", "r"]).contains("nothing to reap"));
    ok(p, &["verify", "r"]);
}

#[test]
fn stress_workers_killed_at_random_while_verify_keeps_passing() {
    let d = TempDir::new("cli-stress");
    let p = d.path();
    ok(p, &["create", "s", "--size", "256K"]);
    let spawn = |seed: u64| {
        Command::new(BIN)
            .arg("--dir")
            .arg(p)
            .args(["stress", "s", "--seconds", "3", "--record-size", "600", "--seed", &seed.to_string()])
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
            .unwrap()
    };
    let mut rng = Rng::seeded();
    let mut workers: Vec<_> = (0..3).map(|i| spawn(i + 1)).collect();
    for round in 0..12 {
        std::thread::sleep(Duration::from_millis(20 + rng.below(60)));
        let k = rng.below(workers.len() as u64) as usize;
        sigkill(&mut workers[k]);
        let _ = workers[k].wait();
        workers[k] = spawn(100 + round);
        let v = cachem(p, &["verify", "s"]);
        assert!(v.status.success(), "verify after kill {round}: {}", String::from_utf8_lossy(&v.stderr));
    }
    for mut w in workers {
        let st = wait_timeout(&mut w, Duration::from_secs(60));
        let mut out = String::new();
        use std::io::Read;
        w.stdout.take().unwrap().read_to_string(&mut out).unwrap();
        assert!(st.success() && out.contains("errors=0"), "a surviving worker failed: {out}");
    }
    ok(p, &["verify", "s"]);
    let v = json(&ok(p, &["stat", "s", "--json"]));
    assert!(v["counters"]["recoveries"].as_u64().is_some());
    ok(p, &["reap", "s"]);
    assert_eq!(json(&ok(p, &["stat", "s", "--json"]))["records"], 0, "all process-scoped records reaped");
}

#[test]
fn usage_errors_exit_2() {
    let d = TempDir::new("cli-usage");
    let p = d.path();
    for args in [
        &["create", "x", "--size", "1000"][..],
        &["create", "x", "--size", "4100"],
        &["create", "x", "--size", "12Q"],
        &["create", "x", "--size", "64K", "--mode", "0400"],
        &["create", "x"],
        &["put", "x", "data"],
        &["put", "x", "--process", "--owner", "a", "data"],
        &["get", "x", "not-an-id"],
        &["frobnicate"],
    ] {
        let (code, err) = fails(p, args);
        assert_eq!(code, 2, "{args:?}: {err}");
    }
    assert!(!p.join("x").exists());
}

#[test]
fn operation_errors_exit_1_with_one_clear_line() {
    let d = TempDir::new("cli-errors");
    let p = d.path();
    let one_line =
        |err: &str| assert!(err.starts_with("cachem: ") && err.trim_end().lines().count() == 1, "{err:?}");
    // A missing region: every command says so, and leaves nothing behind.
    for args in [
        &["stat", "nope"][..],
        &["ls", "nope"],
        &["get", "nope", "0.1"],
        &["verify", "nope"],
        &["destroy", "nope"],
        &["put", "nope", "--process", "x"],
    ] {
        let (code, err) = fails(p, args);
        assert_eq!(code, 1, "{args:?}");
        one_line(&err);
        assert!(err.contains("does not exist") && err.contains("cachem create"), "{err}");
    }
    assert_eq!(std::fs::read_dir(p).unwrap().count(), 0, "nothing left behind");
    // Another size.
    ok(p, &["create", "r", "--size", "16K"]);
    let (code, err) = fails(p, &["create", "r", "--size", "32K"]);
    assert_eq!(code, 1);
    one_line(&err);
    assert!(err.contains("created with size 16384, asked for 32768"), "{err}");
    // Full.
    let big = "z".repeat(9000);
    ok(p, &["put", "r", "--owner", "a", &big]);
    let (code, err) = fails(p, &["put", "r", "--owner", "a", &big]);
    assert_eq!(code, 1);
    assert!(err.contains("region full"), "{err}");
    let (_, err) = fails(p, &["put", "r", "--owner", "a", &"z".repeat(20000)]);
    assert!(err.contains("too large"), "{err}");
    // An unknown owner name for ls.
    let (code, err) = fails(p, &["ls", "r", "--owner", "nobody"]);
    assert_eq!(code, 1);
    assert!(err.contains("no owner named"), "{err}");
    // A corrupt region: verify prints the reason and exits 1; the file is untouched.
    let path = p.join("r");
    let mut bytes = std::fs::read(&path).unwrap();
    let o_fr = std::mem::offset_of!(cachem::format::Header, o_fr);
    bytes[o_fr..o_fr + 8].copy_from_slice(&3u64.to_ne_bytes());
    std::fs::write(&path, &bytes).unwrap();
    let (code, err) = fails(p, &["verify", "r"]);
    assert_eq!(code, 1);
    one_line(&err);
    assert!(err.contains("region corrupt: o_fr"), "{err}");
    assert_eq!(std::fs::read(&path).unwrap(), bytes);
    // A region from another format version.
    bytes[12..16].copy_from_slice(&0u32.to_ne_bytes());
    std::fs::write(&path, &bytes).unwrap();
    let (code, err) = fails(p, &["stat", "r"]);
    assert_eq!(code, 1);
    assert!(err.contains("format version 0 is not supported"), "{err}");
}

#[test]
fn the_demo_runs_and_says_what_it_proved() {
    let o = Command::new(BIN).arg("demo").output().unwrap();
    let out = String::from_utf8_lossy(&o.stdout);
    assert!(o.status.success(), "{out}\n{}", String::from_utf8_lossy(&o.stderr));
    assert!(
        out.contains("with SIGKILL") && out.contains("reaped 2 records") && out.contains("Done in"),
        "{out}"
    );
}

#[test]
fn every_command_in_the_readme_tour_works() {
    let readme = std::fs::read_to_string(workspace_root().join("README.md")).unwrap();
    assert!(readme.starts_with("# cachem\n\n```sh\nmake demo"), "README must start with the two commands");
    let tour = readme.split("## Five-minute tour").nth(1).expect("a tour section");
    let block = tour.split("```sh").nth(1).unwrap().split("```").next().unwrap();
    let d = TempDir::new("readme");
    let bin_dir = Path::new(BIN).parent().unwrap();
    let path = format!("{}:{}", bin_dir.display(), std::env::var("PATH").unwrap_or_default());
    let mut n = 0;
    for line in block.lines().map(str::trim).filter(|l| l.starts_with("cachem ")) {
        let cmd = line.split("  #").next().unwrap().trim();
        let o = Command::new("sh")
            .arg("-c")
            .arg(cmd)
            .env("PATH", &path)
            .env("CACHEM_DIR", d.path())
            .output()
            .unwrap();
        assert!(o.status.success(), "README command failed: {cmd}\n{}", String::from_utf8_lossy(&o.stderr));
        n += 1;
    }
    assert!(n >= 10, "only {n} commands found in the tour");
}

#[test]
fn compaction_policies_dead_bytes_in_stat_and_compact() {
    let d = TempDir::new("cli-compact");
    let p = d.path();
    // Deferred (the default): a delete leaves a dead block, stat shows it,
    // compact reclaims it.
    assert!(ok(p, &["create", "def", "--size", "64K"]).contains("deferred compaction"));
    let ids: Vec<String> = (0..8)
        .map(|i| {
            ok(p, &["put", "def", "--owner", "w", &format!("record number {i} ....")]).trim().to_string()
        })
        .collect();
    let used = json(&ok(p, &["stat", "def", "--json"]))["used_bytes"].as_u64().unwrap();
    ok(p, &["del", "def", &ids[2]]);
    let v = json(&ok(p, &["stat", "def", "--json"]));
    assert_eq!(v["compaction"], "deferred");
    assert_eq!(v["dead_bytes"], 32);
    assert_eq!(v["dead_blocks"], 1);
    assert_eq!(v["records"], 7);
    let st = ok(p, &["stat", "def"]);
    let first = st.lines().next().unwrap();
    assert!(first.starts_with("[H|B") && first.contains('x') && first.contains("|L]"), "{st}");
    assert!(st.contains("deferred compaction; 1 dead blocks, 32 dead bytes"), "{st}");
    ok(p, &["verify", "def"]);
    let out = ok(p, &["compact", "def"]);
    assert!(out.contains("32 dead bytes reclaimed") && out.contains("160 bytes moved"), "{out}");
    let v = json(&ok(p, &["stat", "def", "--json"]));
    // The 32 bytes of the deleted record are gone, nothing else (the used
    // bytes include the name table's, owner "w").
    assert_eq!((v["dead_bytes"].as_u64(), v["used_bytes"].as_u64()), (Some(0), Some(used - 32)));
    assert_eq!(v["counters"]["compactions"], 1);
    for id in &ids[3..] {
        assert!(ok(p, &["get", "def", id]).starts_with("record number"));
    }
    // Eager: a delete compacts at once; there is never a dead byte.
    assert!(ok(p, &["create", "eag", "--size", "64K", "--compaction", "eager"]).contains("eager compaction"));
    let a = ok(p, &["put", "eag", "--owner", "w", "first record ......."]).trim().to_string();
    ok(p, &["put", "eag", "--owner", "w", "second record ......"]);
    ok(p, &["del", "eag", &a]);
    let v = json(&ok(p, &["stat", "eag", "--json"]));
    assert_eq!((v["compaction"].as_str(), v["dead_bytes"].as_u64()), (Some("eager"), Some(0)));
    assert_eq!(v["counters"]["bytes_moved"], 32);
    assert!(ok(p, &["compact", "eag"]).contains("0 dead bytes reclaimed"));
    let (code, err) = fails(p, &["create", "bad", "--size", "64K", "--compaction", "lazy"]);
    assert_eq!(code, 2);
    assert!(err.contains("eager or deferred"), "{err}");
}

#[test]
fn logs_on_a_pipe_carry_no_colour_and_a_failure_is_printed_once() {
    let d = TempDir::new("cli-log");
    let p = d.path();
    ok(p, &["create", "app", "--size", "64K"]);
    // -v: the purge of the command's own process-scoped record is logged.
    let o = cachem(p, &["-v", "put", "app", "--process", "x"]);
    assert!(o.status.success());
    let err = String::from_utf8_lossy(&o.stderr);
    assert!(err.contains("purged"), "no debug line: {err:?}");
    assert!(!err.contains('\u{1b}'), "ANSI escapes on a pipe: {err:?}");

    ok(p, &["put", "app", "--owner", "x", "hello"]);
    // Damage the block-pointer table at the end of the region (just below
    // the lock trailer).
    let path = p.join("app");
    let mut img = std::fs::read(&path).unwrap();
    let n = img.len() - cachem::format::TRAILER_SIZE;
    img[n - 32..n].fill(0xff);
    std::fs::write(&path, img).unwrap();
    for args in [&["verify", "app"][..], &["stat", "app"], &["put", "app", "--owner", "x", "y"]] {
        let (code, err) = fails(p, args);
        assert_eq!(code, 1, "{args:?}");
        let lines: Vec<&str> = err.lines().filter(|l| !l.trim().is_empty()).collect();
        assert_eq!(lines.len(), 1, "{args:?} printed {lines:?}");
        assert!(lines[0].starts_with("cachem: region corrupt"), "{args:?}: {lines:?}");
    }
}

#[test]
fn create_gives_the_region_to_an_owner_and_refuses_unknown_ones() {
    let d = TempDir::new("cli-owner");
    let p = d.path();
    let (code, err) = fails(p, &["create", "app", "--size", "64K", "--owner", "no-such-user:root"]);
    assert_eq!(code, 2, "{err}");
    assert!(err.contains("no such user"), "{err}");
    if cachem::sys::process::effective_ids().0 != 0 {
        eprintln!("SKIPPED: giving files away needs root");
        return;
    }
    ok(p, &["create", "app", "--size", "64K", "--owner", "nobody:65534"]);
    use std::os::unix::fs::MetadataExt;
    for f in ["app", "app.lock"] {
        let m = std::fs::metadata(p.join(f)).unwrap();
        assert_eq!((m.uid(), m.gid()), (65534, 65534), "{f}");
    }
}

#[test]
fn a_format_v1_region_is_refused_with_what_to_do() {
    let d = TempDir::new("cli-v1");
    let p = d.path();
    ok(p, &["create", "old", "--size", "64K"]);
    let path = p.join("old");
    let mut img = std::fs::read(&path).unwrap();
    let at = std::mem::offset_of!(cachem::format::Header, format_version);
    img[at..at + 4].copy_from_slice(&1u32.to_ne_bytes());
    std::fs::write(&path, &img).unwrap();
    for args in [&["stat", "old"][..], &["verify", "old"], &["put", "old", "--owner", "x", "y"]] {
        let (code, err) = fails(p, args);
        assert_eq!(code, 1, "{args:?}");
        assert!(
            err.contains("format version 1") && err.contains("destroy") && err.contains("re-create"),
            "{args:?}: {err}"
        );
    }
    assert_eq!(std::fs::read(&path).unwrap(), img, "the refused file was changed");
    ok(p, &["destroy", "old"]);
    assert!(ok(p, &["create", "old", "--size", "64K"]).starts_with("created"));
}

/// Writes `v` (`n` bytes, host order) at `at` in the region file.
fn poke(path: &Path, at: u64, v: u64, n: usize) {
    use std::os::unix::fs::FileExt;
    let f = std::fs::OpenOptions::new().write(true).open(path).unwrap();
    f.write_all_at(&v.to_ne_bytes()[..n], at).unwrap();
}

#[test]
fn recovery_logs_what_triggered_it() {
    let t = TempDir::new("cli-trigger");
    let d = t.path();
    ok(d, &["create", "r", "--size", "64K"]);
    ok(d, &["put", "r", "--owner", "a", "one"]);
    let file = d.join("r");
    // flags bit 0 alone (header offset 116).
    poke(&file, 116, 1, 4);
    let o = cachem(d, &["put", "r", "--owner", "a", "two"]);
    let err = String::from_utf8_lossy(&o.stderr);
    assert!(o.status.success(), "{err}");
    assert!(err.contains("recovered region (recovery flag set)"), "{err}");
    assert!(!err.contains("owner_died") && !err.contains("died holding"), "{err}");
    // A journal pending (a true one: a compaction with nothing left to
    // move, at the offsets of docs/format.md: journal at 120).
    let o_fr = {
        let b = std::fs::read(&file).unwrap();
        u64::from_ne_bytes(b[88..96].try_into().unwrap())
    };
    for (at, v) in [(128, o_fr), (136, o_fr), (144, o_fr), (152, o_fr), (160, o_fr), (168, u64::MAX)] {
        poke(&file, at, v, 8);
    }
    poke(&file, 120, 1, 4);
    // Without the flag, a Deferred region's journal is a compaction paused
    // between two lock holds (docs/format.md): the next mutation carries it
    // on, no recovery.
    let o = cachem(d, &["put", "r", "--owner", "a", "three"]);
    let err = String::from_utf8_lossy(&o.stderr);
    assert!(o.status.success(), "{err}");
    assert!(!err.contains("recovered region"), "{err}");
    ok(d, &["verify", "r"]);
    // With the flag (a holder killed inside the compaction), recovery.
    let o_fr = {
        let b = std::fs::read(&file).unwrap();
        u64::from_ne_bytes(b[88..96].try_into().unwrap())
    };
    for (at, v) in [(128, o_fr), (136, o_fr), (144, o_fr), (152, o_fr), (160, o_fr), (168, u64::MAX)] {
        poke(&file, at, v, 8);
    }
    poke(&file, 120, 1, 4);
    poke(&file, 116, 1, 4);
    let o = cachem(d, &["put", "r", "--owner", "a", "four"]);
    let err = String::from_utf8_lossy(&o.stderr);
    assert!(o.status.success(), "{err}");
    assert!(err.contains("recovered region (journal pending)"), "{err}");
    ok(d, &["verify", "r"]);
}

/// Issue 22: the CLI mirrors the region's name table into the sled store
/// (`id`, `put --owner`, `ids --sync`), reads it back, and the store still
/// lists the names once the region is gone; a new region generation
/// replaces the store's table.
#[test]
fn ids_mirrors_the_name_table_into_the_store_and_lists_it_after_the_region_is_gone() {
    let d = TempDir::new("cli-ids");
    let p = d.path();
    let store = p.join("app.ids");
    ok(p, &["create", "app", "--size", "64K"]);
    // Before anything wrote names: the region's table, no store yet.
    let doc = json(&ok(p, &["ids", "app", "--json"]));
    assert_eq!(doc["store_generation"], serde_json::Value::Null, "{doc}");
    assert!(!store.exists(), "ids without --sync wrote the store");
    assert_eq!(ok(p, &["id", "app", "mod_status"]).trim(), "1");
    ok(p, &["put", "app", "--owner", "mod_proxy", "x"]);
    assert!(store.is_dir(), "`id` / `put --owner` did not write the mirror");
    let doc = json(&ok(p, &["ids", "app", "--json"]));
    assert_eq!(doc["store_generation"], doc["region_generation"], "{doc}");
    let names = doc["names"].as_array().unwrap();
    let row =
        |n: &str| names.iter().find(|r| r["name"] == n).unwrap_or_else(|| panic!("{n} in {doc}")).clone();
    assert_eq!((row("mod_status")["id"].as_u64(), row("mod_proxy")["id"].as_u64()), (Some(1), Some(2)));
    for n in ["mod_status", "mod_proxy"] {
        assert_eq!((row(n)["in_region"].as_bool(), row(n)["in_store"].as_bool()), (Some(true), Some(true)));
    }
    let human = ok(p, &["ids", "app", "--sync"]);
    assert!(human.contains("same generation") && human.contains("both     mod_proxy"), "{human}");

    // A store given with --id-store, kept apart: destroy removes the
    // region (and its default store), not this one.
    let kept = p.join("kept-ids");
    let k = kept.to_str().unwrap();
    ok(p, &["--id-store", k, "ids", "app", "--sync"]);
    ok(p, &["destroy", "app"]);
    assert!(!store.exists(), "destroy removes the default store");
    let gone = json(&ok(p, &["--id-store", k, "ids", "app", "--json"]));
    assert_eq!(gone["region_generation"], serde_json::Value::Null, "{gone}");
    let listed: Vec<(u64, String)> = gone["names"]
        .as_array()
        .unwrap()
        .iter()
        .map(|r| (r["id"].as_u64().unwrap(), r["name"].as_str().unwrap().to_string()))
        .collect();
    assert_eq!(listed, [(1, "mod_status".to_string()), (2, "mod_proxy".to_string())], "{gone}");
    assert!(ok(p, &["--id-store", k, "ids", "app"]).contains("no region"));
    let (code, err) = fails(p, &["ids", "app"]);
    assert_eq!(code, 1, "{err}");

    // A new region (new generation): its first sync replaces the table.
    ok(p, &["create", "app", "--size", "64K"]);
    ok(p, &["--id-store", k, "id", "app", "other"]);
    let doc = json(&ok(p, &["--id-store", k, "ids", "app", "--json"]));
    assert_eq!(doc["store_generation"], doc["region_generation"], "{doc}");
    let names: Vec<&str> =
        doc["names"].as_array().unwrap().iter().map(|r| r["name"].as_str().unwrap()).collect();
    assert_eq!(names, ["other"], "{doc}");
}

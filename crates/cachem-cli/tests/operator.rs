//! The operator's side of the `cachem` binary: `stat --watch` stopped by a
//! real SIGINT / SIGTERM (on a pipe and on a pseudo-terminal), the
//! Prometheus exposition checked by a strict parser of the text format,
//! and the generated man pages and bash / zsh / fish completions exercised
//! by the real tools (groff, bash, zsh, fish).

// The root package's test helpers (tests/common), shared with its tests.
#[path = "../../../tests/common/mod.rs"]
mod common;

use common::*;
use std::collections::{BTreeMap, BTreeSet};
use std::io::{BufRead, BufReader, Read};
use std::os::fd::{FromRawFd, OwnedFd};
use std::path::Path;
use std::process::{Child, Command, Output, Stdio};
use std::sync::mpsc;
use std::time::{Duration, Instant};

const BIN: &str = env!("CARGO_BIN_EXE_cachem");
const LIMIT: Duration = Duration::from_secs(20);

fn cachem(dir: &Path, args: &[&str]) -> Output {
    Command::new(BIN).arg("--dir").arg(dir).args(args).output().unwrap()
}

fn ok(dir: &Path, args: &[&str]) -> String {
    let o = cachem(dir, args);
    assert!(o.status.success(), "cachem {args:?} failed: {}", String::from_utf8_lossy(&o.stderr));
    String::from_utf8(o.stdout).unwrap()
}

fn signal(child: &Child, sig: i32) {
    // SAFETY: kill(2) on the pid of a child we spawned and have not reaped.
    let r = unsafe { libc::kill(child.id() as libc::pid_t, sig) };
    assert_eq!(r, 0, "kill failed");
}

/// A region with named owners (one with `"`, `\` and a newline in its
/// name), a dead process's records and a live process holding records.
fn populated(dir: &Path) -> Child {
    // Room for both workers' records (at most 32 each of <= 256 bytes), so
    // no insert finds the region full and reaps the killed one early.
    ok(dir, &["create", "app", "--size", "256K"]);
    ok(dir, &["put", "app", "--owner", "jobs", "job 1"]);
    ok(dir, &["put", "app", "--owner", "weird \"name\" \\ with\nnewline", "x"]);
    // A stress worker is alive, holding process-scoped records, for a while.
    let mut w = Command::new(BIN)
        .arg("--dir")
        .arg(dir)
        .args(["stress", "app", "--seconds", "30", "--seed", "7"])
        .stdout(Stdio::null())
        .spawn()
        .unwrap();
    // One killed worker leaves a dead pid with process-scoped records behind
    // (no reap: stat never reaps). A worker killed while it holds the lock
    // is recovered by the live one's next lock, which reaps it: then (or if
    // it held no process-scoped record when killed) try another.
    let status =
        |d: &Path| -> serde_json::Value { serde_json::from_str(&ok(d, &["stat", "app", "--json"])).unwrap() };
    for seed in 8..16 {
        let mut v = Command::new(BIN)
            .arg("--dir")
            .arg(dir)
            .args(["stress", "app", "--seconds", "30", "--seed", &seed.to_string()])
            .stdout(Stdio::null())
            .spawn()
            .unwrap();
        let end = Instant::now() + LIMIT;
        loop {
            let st = status(dir);
            let pids: Vec<u64> =
                st["pids"].as_array().unwrap().iter().map(|p| p["pid"].as_u64().unwrap()).collect();
            if pids.contains(&u64::from(w.id())) && pids.contains(&u64::from(v.id())) {
                break;
            }
            assert!(Instant::now() < end, "stress workers did not insert within {LIMIT:?}");
            std::thread::sleep(Duration::from_millis(20));
        }
        sigkill(&mut v);
        wait_timeout(&mut v, LIMIT);
        // Let the live worker take the lock a few times (a recovery, if
        // any, happens at its next lock).
        std::thread::sleep(Duration::from_millis(100));
        if status(dir)["dead_reapable_processes"].as_u64().unwrap_or(0) >= 1 {
            let _ = &mut w;
            return w;
        }
    }
    sigkill(&mut w);
    wait_timeout(&mut w, LIMIT);
    panic!("no killed worker left reapable records behind in 8 tries");
}

/// Lines of the child's stdout, as they come.
fn lines_of(child: &mut Child) -> mpsc::Receiver<String> {
    let out = child.stdout.take().unwrap();
    let (tx, rx) = mpsc::channel();
    std::thread::spawn(move || {
        for l in BufReader::new(out).lines().map_while(Result::ok) {
            if tx.send(l).is_err() {
                break;
            }
        }
    });
    rx
}

fn watch_on_a_pipe_stops_cleanly_on(sig: i32) {
    let d = TempDir::new("watch-pipe");
    ok(d.path(), &["create", "app", "--size", "64K"]);
    ok(d.path(), &["put", "app", "--owner", "jobs", "job 1"]);
    let mut c = Command::new(BIN)
        .arg("--dir")
        .arg(d.path())
        .args(["stat", "app", "--watch", "0.1"])
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    let rx = lines_of(&mut c);
    let mut lines = vec![];
    while lines.len() < 3 {
        lines.push(rx.recv_timeout(LIMIT).expect("no line from stat --watch"));
        if lines.len() == 2 {
            // Change the region between frames: the next line shows it.
            ok(d.path(), &["put", "app", "--owner", "jobs", "job 2"]);
        }
    }
    signal(&c, sig);
    let st = wait_timeout(&mut c, LIMIT);
    assert!(st.success(), "stat --watch ended with {st:?} after signal {sig}");
    let mut err = String::new();
    c.stderr.take().unwrap().read_to_string(&mut err).unwrap();
    assert!(err.is_empty(), "stderr: {err}");
    // Every line is complete: a timestamp and key=value pairs, no escapes.
    for l in &lines {
        let (ts, rest) = l.split_once(' ').unwrap();
        assert!(ts.len() == 20 && ts.ends_with('Z') && ts.as_bytes()[10] == b'T', "{l}");
        assert!(!l.contains('\x1b'), "terminal escapes on a pipe: {l:?}");
        for kv in rest.split(' ') {
            let (k, v) = kv.split_once('=').unwrap_or_else(|| panic!("{kv} in {l}"));
            assert!(!k.is_empty() && v.parse::<u64>().is_ok(), "{kv} in {l}");
        }
    }
    assert!(lines[0].contains(" records=1 "), "{}", lines[0]);
    assert!(lines.last().unwrap().contains(" records=2 "), "{lines:?}");
    // Nothing but whole lines after the stop.
    let rest: Vec<String> = rx.iter().collect();
    assert!(rest.iter().all(|l| l.contains(" records=")), "{rest:?}");
}

#[test]
fn stat_watch_on_a_pipe_prints_one_line_per_interval_and_stops_on_sigint() {
    watch_on_a_pipe_stops_cleanly_on(libc::SIGINT);
}

#[test]
fn stat_watch_on_a_pipe_stops_on_sigterm() {
    watch_on_a_pipe_stops_cleanly_on(libc::SIGTERM);
}

#[test]
fn stat_watch_json_prints_one_document_per_line() {
    let d = TempDir::new("watch-json");
    ok(d.path(), &["create", "app", "--size", "64K"]);
    let mut c = Command::new(BIN)
        .arg("--dir")
        .arg(d.path())
        .args(["stat", "app", "--watch", "0.1", "--format", "json"])
        .stdout(Stdio::piped())
        .spawn()
        .unwrap();
    let rx = lines_of(&mut c);
    for _ in 0..2 {
        let l = rx.recv_timeout(LIMIT).unwrap();
        let v: serde_json::Value = serde_json::from_str(&l).unwrap_or_else(|e| panic!("{e}: {l}"));
        assert_eq!(v["size"], 65536);
    }
    signal(&c, libc::SIGINT);
    assert!(wait_timeout(&mut c, LIMIT).success());
}

#[test]
fn stat_watch_redraws_in_place_on_a_terminal_and_stops_on_sigint() {
    let d = TempDir::new("watch-tty");
    ok(d.path(), &["create", "app", "--size", "64K"]);
    ok(d.path(), &["put", "app", "--owner", "jobs", "job 1"]);
    let (mut master, mut slave) = (-1, -1);
    // SAFETY: openpty writes two fds into the out-parameters; the name,
    // termios and winsize arguments may be null.
    let r = unsafe {
        libc::openpty(&mut master, &mut slave, std::ptr::null_mut(), std::ptr::null(), std::ptr::null())
    };
    assert_eq!(r, 0, "openpty failed");
    // SAFETY: both fds were just returned by openpty and are owned by nobody else.
    let (master, slave) = unsafe { (OwnedFd::from_raw_fd(master), OwnedFd::from_raw_fd(slave)) };
    let mut c = Command::new(BIN)
        .arg("--dir")
        .arg(d.path())
        .args(["stat", "app", "--watch", "0.1"])
        .stdin(Stdio::null())
        .stdout(Stdio::from(slave))
        .spawn()
        .unwrap();
    let (tx, rx) = mpsc::channel();
    let mut m = std::fs::File::from(master);
    std::thread::spawn(move || {
        let mut buf = [0u8; 4096];
        while let Ok(n) = m.read(&mut buf) {
            if n == 0 || tx.send(buf[..n].to_vec()).is_err() {
                break;
            }
        }
    });
    let mut screen = Vec::new();
    let end = Instant::now() + LIMIT;
    let frames = |s: &[u8]| s.windows(3).filter(|w| w == b"\x1b[H").count();
    while frames(&screen) < 3 {
        let left = end.saturating_duration_since(Instant::now());
        screen.extend(rx.recv_timeout(left).expect("fewer than 3 frames on the terminal"));
    }
    signal(&c, libc::SIGINT);
    assert!(wait_timeout(&mut c, LIMIT).success());
    let text = String::from_utf8_lossy(&screen);
    // Each frame: cursor home, the picture with every line cleared to its
    // end, the rest of the screen cleared.
    let frame = text.split("\x1b[H").nth(1).unwrap();
    assert!(frame.starts_with("[H|"), "{frame:?}");
    assert!(frame.contains("region    ") && frame.contains("\x1b[K"), "{frame:?}");
    assert!(frame.contains("Ctrl-C to stop") && frame.ends_with("\x1b[J"), "{frame:?}");
    assert!(!frame.contains("records=1"), "a terminal gets the picture, not log lines");
}

#[test]
fn stat_watch_rejects_a_bad_interval_and_prometheus() {
    let d = TempDir::new("watch-usage");
    ok(d.path(), &["create", "app", "--size", "64K"]);
    for args in [
        &["stat", "app", "--watch", "0"][..],
        &["stat", "app", "--watch", "x"],
        &["stat", "app", "--watch", "1", "--format", "prometheus"],
        &["stat", "app", "--json", "--format", "human"],
    ] {
        let o = cachem(d.path(), args);
        assert_eq!(o.status.code(), Some(2), "{args:?}: {}", String::from_utf8_lossy(&o.stderr));
    }
}

// ---- Prometheus text exposition (format 0.0.4), parsed strictly ----

#[derive(Debug)]
struct Family {
    kind: String,
    help: bool,
    samples: Vec<(BTreeMap<String, String>, f64)>,
}

fn metric_name_ok(s: &str) -> bool {
    let mut c = s.chars();
    c.next().is_some_and(|f| f.is_ascii_alphabetic() || f == '_' || f == ':')
        && c.all(|x| x.is_ascii_alphanumeric() || x == '_' || x == ':')
}

fn label_name_ok(s: &str) -> bool {
    let mut c = s.chars();
    c.next().is_some_and(|f| f.is_ascii_alphabetic() || f == '_')
        && c.all(|x| x.is_ascii_alphanumeric() || x == '_')
        && !s.starts_with("__")
}

/// Parses `{a="x",b="y"}` strictly (escapes `\\`, `\"`, `\n` only);
/// returns the labels and the rest of the line.
fn parse_labels(s: &str) -> Result<(BTreeMap<String, String>, &str), String> {
    let mut labels = BTreeMap::new();
    let mut rest = s.strip_prefix('{').ok_or("labels must start with {")?;
    if let Some(r) = rest.strip_prefix('}') {
        return Ok((labels, r));
    }
    loop {
        let eq = rest.find('=').ok_or("label without =")?;
        let name = &rest[..eq];
        if !label_name_ok(name) {
            return Err(format!("bad label name {name:?}"));
        }
        let mut chars = rest[eq + 1..].char_indices();
        if chars.next().map(|(_, c)| c) != Some('"') {
            return Err("label value must be quoted".into());
        }
        let mut value = String::new();
        let end = loop {
            match chars.next() {
                None => return Err("unterminated label value".into()),
                Some((i, '"')) => break eq + 1 + i + 1,
                Some((_, '\n')) => return Err("raw newline in label value".into()),
                Some((_, '\\')) => match chars.next() {
                    Some((_, '\\')) => value.push('\\'),
                    Some((_, '"')) => value.push('"'),
                    Some((_, 'n')) => value.push('\n'),
                    other => return Err(format!("bad escape {other:?}")),
                },
                Some((_, c)) => value.push(c),
            }
        };
        if labels.insert(name.to_string(), value).is_some() {
            return Err(format!("label {name} twice"));
        }
        rest = &rest[end..];
        if let Some(r) = rest.strip_prefix('}') {
            return Ok((labels, r));
        }
        rest = rest.strip_prefix(',').ok_or("labels must be separated by ,")?;
    }
}

fn parse_exposition(text: &str) -> Result<BTreeMap<String, Family>, String> {
    if !text.ends_with('\n') {
        return Err("the exposition must end with a newline".into());
    }
    let mut fams: BTreeMap<String, Family> = BTreeMap::new();
    let mut order: Vec<String> = vec![];
    let mut seen_series = BTreeSet::new();
    for (n, line) in text.lines().enumerate() {
        let at = |m: String| format!("line {}: {m}: {line:?}", n + 1);
        if line.is_empty() {
            return Err(at("empty line".into()));
        }
        if let Some(c) = line.strip_prefix("# ") {
            let mut p = c.splitn(3, ' ');
            let (kw, name, rest) = (p.next().unwrap(), p.next().unwrap_or(""), p.next());
            if kw != "HELP" && kw != "TYPE" {
                continue; // a plain comment
            }
            if !metric_name_ok(name) {
                return Err(at(format!("bad metric name {name:?}")));
            }
            if order.last().map(String::as_str) != Some(name) {
                if fams.contains_key(name) {
                    return Err(at(format!("family {name} is not contiguous")));
                }
                order.push(name.to_string());
                fams.insert(name.into(), Family { kind: String::new(), help: false, samples: vec![] });
            }
            let f = fams.get_mut(name).unwrap();
            if !f.samples.is_empty() {
                return Err(at("HELP/TYPE after samples".into()));
            }
            let rest = rest.ok_or_else(|| at("HELP/TYPE without text".into()))?;
            if kw == "HELP" {
                if std::mem::replace(&mut f.help, true) {
                    return Err(at("second HELP".into()));
                }
                let mut it = rest.chars();
                while let Some(ch) = it.next() {
                    if ch == '\\' && !matches!(it.next(), Some('\\' | 'n')) {
                        return Err(at("bad escape in HELP".into()));
                    }
                }
            } else {
                if !f.kind.is_empty() {
                    return Err(at("second TYPE".into()));
                }
                if !["counter", "gauge", "histogram", "summary", "untyped"].contains(&rest) {
                    return Err(at(format!("unknown type {rest}")));
                }
                f.kind = rest.to_string();
            }
            continue;
        }
        if line.starts_with('#') {
            continue;
        }
        let name_end = line.find(['{', ' ']).ok_or_else(|| at("no value".into()))?;
        let name = &line[..name_end];
        if !metric_name_ok(name) {
            return Err(at(format!("bad metric name {name:?}")));
        }
        let (labels, rest) = if line[name_end..].starts_with('{') {
            parse_labels(&line[name_end..]).map_err(at)?
        } else {
            (BTreeMap::new(), &line[name_end..])
        };
        let value = rest.strip_prefix(' ').ok_or_else(|| at("one space before the value".into()))?;
        let mut vp = value.split(' ');
        let v = vp.next().unwrap();
        let v: f64 = match v {
            "+Inf" => f64::INFINITY,
            "-Inf" => f64::NEG_INFINITY,
            "NaN" => f64::NAN,
            v => v.parse().map_err(|_| at(format!("bad value {v:?}")))?,
        };
        if let Some(ts) = vp.next() {
            ts.parse::<i64>().map_err(|_| at("bad timestamp".into()))?;
        }
        if vp.next().is_some() {
            return Err(at("trailing fields".into()));
        }
        if order.last().map(String::as_str) != Some(name) {
            return Err(at(format!("sample of {name} outside its family (no TYPE line before it?)")));
        }
        let f = fams.get_mut(name).unwrap();
        if f.kind.is_empty() || !f.help {
            return Err(at("sample before HELP and TYPE".into()));
        }
        if f.kind == "counter" && (!name.ends_with("_total") || v < 0.0) {
            return Err(at("a counter must end in _total and not be negative".into()));
        }
        if !seen_series.insert(format!("{name}{labels:?}")) {
            return Err(at("duplicate series".into()));
        }
        f.samples.push((labels, v));
    }
    Ok(fams)
}

#[test]
fn the_strict_parser_rejects_what_prometheus_rejects() {
    let good = "# HELP a_total x\n# TYPE a_total counter\na_total{l=\"q\\\"\\\\\\n\"} 1\n";
    let f = parse_exposition(good).unwrap();
    assert_eq!(f["a_total"].samples[0].0["l"], "q\"\\\n");
    for bad in [
        "# HELP a x\n# TYPE a gauge\na 1",              // no final newline
        "a 1\n",                                        // no TYPE
        "# HELP a x\n# TYPE a gauge\na{l=\"\\x\"} 1\n", // bad escape
        "# HELP a x\n# TYPE a gauge\na{l=\"v\"} 1\na{l=\"v\"} 2\n", // duplicate
        "# HELP a x\n# TYPE a counter\na 1\n",          // counter name
        "# HELP a x\n# TYPE a gauge\na 1\n# HELP b x\n# TYPE b gauge\nb 1\na 2\n", // split family
        "# HELP a x\n# TYPE a gauge\na{1l=\"v\"} 1\n",  // label name
        "# HELP a x\n# TYPE a gauge\na  1\n",           // two spaces
        "# HELP a x\n# TYPE a gauge\na{l=\"v\"\"} 1\n", // stray quote
    ] {
        assert!(parse_exposition(bad).is_err(), "accepted {bad:?}");
    }
}

#[test]
fn stat_format_prometheus_is_valid_exposition_with_the_same_figures_as_json() {
    let d = TempDir::new("prom");
    let mut live = populated(d.path());
    let text = ok(d.path(), &["stat", "app", "--format", "prometheus"]);
    let json: serde_json::Value = serde_json::from_str(&ok(d.path(), &["stat", "app", "--json"])).unwrap();
    let live_pid = live.id().to_string();
    sigkill(&mut live);
    wait_timeout(&mut live, LIMIT);
    let fams = parse_exposition(&text).unwrap_or_else(|e| panic!("{e}\n{text}"));

    let one = |name: &str| -> f64 {
        let f = fams.get(name).unwrap_or_else(|| panic!("no {name}"));
        assert_eq!(f.samples.len(), 1, "{name}");
        assert_eq!(f.samples[0].0.get("region").map(String::as_str), Some("app"));
        f.samples[0].1
    };
    for name in ["cachem_records", "cachem_free_bytes", "cachem_dead_bytes", "cachem_recoveries_total"] {
        assert!(fams.contains_key(name), "{name} missing");
    }
    assert_eq!(fams["cachem_recoveries_total"].kind, "counter");
    assert_eq!(fams["cachem_records"].kind, "gauge");
    // Records inserted by the live worker between the two snapshots may
    // differ; the geometry does not.
    assert_eq!(one("cachem_size_bytes"), 262144.0);
    // The stress workers remove records: under deferred compaction (the
    // default) their blocks wait, dead, inside the block section.
    assert!(one("cachem_dead_bytes") <= one("cachem_used_bytes"));
    let info = &fams["cachem_region_info"].samples[0];
    assert_eq!(info.0["compaction"], json["compaction"].as_str().unwrap());
    assert_eq!(info.0["generation"], json["generation"].as_str().unwrap());
    assert_eq!(info.1, 1.0);
    assert!(one("cachem_records") >= 2.0);
    assert!(one("cachem_free_bytes") > 0.0 && one("cachem_free_bytes") < 262144.0);
    assert_eq!(one("cachem_recoveries_total"), json["counters"]["recoveries"].as_f64().unwrap());

    // Per owner: names, escaped and unescaped back exactly.
    let owners: BTreeMap<String, f64> =
        fams["cachem_owner_records"].samples.iter().map(|(l, v)| (l["owner"].clone(), *v)).collect();
    assert_eq!(owners.get("jobs"), Some(&1.0), "{owners:?}");
    assert_eq!(owners.get("weird \"name\" \\ with\nnewline"), Some(&1.0), "{owners:?}");
    assert!(owners.contains_key("(process)"), "{owners:?}");
    let ids: BTreeSet<&str> =
        fams["cachem_owner_bytes"].samples.iter().map(|(l, _)| l["owner_id"].as_str()).collect();
    assert!(ids.contains("0") && ids.contains("1") && ids.contains("2"), "{ids:?}");

    // Per process: the live worker alive, the killed one dead.
    let procs = &fams["cachem_process_records"].samples;
    assert!(
        procs.iter().any(|(l, v)| l["pid"] == live_pid && l["state"] == "alive" && *v > 0.0),
        "{procs:?}"
    );
    assert!(procs.iter().any(|(l, _)| l["state"] == "dead"), "{procs:?}");
    assert!(one("cachem_dead_processes") >= 1.0);
    assert_eq!(fams["cachem_process_bytes"].samples.len(), procs.len());
}

// ---- man pages and completions ----

fn assets() -> (TempDir, std::path::PathBuf) {
    let d = TempDir::new("assets");
    let out = d.path().join("assets");
    let o = Command::new(BIN).arg("generate-assets").arg("--out").arg(&out).output().unwrap();
    assert!(o.status.success(), "{}", String::from_utf8_lossy(&o.stderr));
    (d, out)
}

const COMMANDS: [&str; 16] = [
    "create", "stat", "put", "get", "del", "ls", "id", "ids", "reap", "compact", "verify", "save", "restore",
    "destroy", "stress", "demo",
];

fn need(tool: &str) {
    let found =
        Command::new("sh").arg("-c").arg(format!("command -v {tool}")).output().unwrap().status.success();
    assert!(found, "{tool} is not installed (make test installs it: see the Makefile's test-tools)");
}

#[test]
fn man_pages_render_without_warnings_one_per_command() {
    need("groff");
    let (_d, out) = assets();
    let man = out.join("man");
    let mut pages: Vec<String> =
        std::fs::read_dir(&man).unwrap().map(|e| e.unwrap().file_name().into_string().unwrap()).collect();
    pages.sort();
    let mut want: Vec<String> = COMMANDS.iter().map(|c| format!("cachem-{c}.1")).collect();
    want.push("cachem.1".into());
    want.sort();
    assert_eq!(pages, want, "hidden commands must not get a page");
    for p in &pages {
        let o = Command::new("groff")
            .args(["-man", "-Tutf8", "-ww", "-rLL=80n", "-P-cbou"])
            .arg(man.join(p))
            .env("LC_ALL", "C.UTF-8")
            .output()
            .unwrap();
        assert!(o.status.success() && o.stderr.is_empty(), "{p}: {}", String::from_utf8_lossy(&o.stderr));
        let text = String::from_utf8_lossy(&o.stdout).replace(['\u{2010}', '\u{2011}'], "-");
        assert!(text.contains("NAME") && text.contains("SYNOPSIS"), "{p}: {text}");
    }
    let stat = String::from_utf8(
        Command::new("groff")
            .args(["-man", "-Tascii", "-P-cbou"])
            .arg(man.join("cachem-stat.1"))
            .output()
            .unwrap()
            .stdout,
    )
    .unwrap();
    for s in ["--watch", "--format", "prometheus", "Region: a name in the runtime directory"] {
        assert!(stat.contains(s), "cachem-stat.1 lacks {s:?}:\n{stat}");
    }
    let top = String::from_utf8(
        Command::new("groff")
            .args(["-man", "-Tascii", "-P-cbou"])
            .arg(man.join("cachem.1"))
            .output()
            .unwrap()
            .stdout,
    )
    .unwrap();
    let top = top.split_whitespace().collect::<Vec<_>>().join(" ");
    assert!(
        top.contains("cachem-stat(1)") && top.contains("CACHEM_DIR") && top.contains("Exit status"),
        "{top}"
    );
    assert!(!top.contains("demo-worker") && !top.contains("generate-assets"), "{top}");
}

#[test]
fn bash_completion_offers_commands_options_and_formats() {
    need("bash");
    let (_d, out) = assets();
    let script = out.join("completions/cachem.bash");
    let complete = |words: &str| -> Vec<String> {
        let prog = format!(
            "source '{}'; COMP_WORDS=({words}); COMP_CWORD=$((${{#COMP_WORDS[@]}}-1)); \
             COMP_LINE=\"${{COMP_WORDS[*]}}\"; COMP_POINT=${{#COMP_LINE}}; \
             _cachem cachem \"${{COMP_WORDS[COMP_CWORD]}}\" \"${{COMP_WORDS[COMP_CWORD-1]}}\"; \
             printf '%s\\n' \"${{COMPREPLY[@]}}\"",
            script.display()
        );
        let o = Command::new("bash").arg("--norc").arg("-c").arg(prog).output().unwrap();
        assert!(o.status.success(), "{}", String::from_utf8_lossy(&o.stderr));
        String::from_utf8(o.stdout).unwrap().lines().map(str::to_string).collect()
    };
    let top = complete("cachem ''");
    for c in COMMANDS {
        assert!(top.contains(&c.to_string()), "{c} not offered: {top:?}");
    }
    assert!(!top.iter().any(|w| w == "generate-assets" || w == "demo-worker"), "{top:?}");
    assert_eq!(complete("cachem st"), ["stat", "stress"]);
    let opts = complete("cachem stat app --");
    assert!(opts.contains(&"--watch".to_string()) && opts.contains(&"--format".to_string()), "{opts:?}");
    assert_eq!(complete("cachem stat app --format p"), ["prometheus"]);
}

#[test]
fn fish_completion_offers_commands_options_and_formats() {
    need("fish");
    let (_d, out) = assets();
    let script = out.join("completions/cachem.fish");
    let complete = |line: &str| -> Vec<String> {
        let o = Command::new("fish")
            .arg("--no-config")
            .arg("-c")
            .arg(format!("source '{}'; complete -C '{line}'", script.display()))
            .output()
            .unwrap();
        assert!(o.status.success(), "{}", String::from_utf8_lossy(&o.stderr));
        String::from_utf8(o.stdout)
            .unwrap()
            .lines()
            .map(|l| l.split('\t').next().unwrap().to_string())
            .collect()
    };
    let top = complete("cachem ");
    for c in COMMANDS {
        assert!(top.contains(&c.to_string()), "{c} not offered: {top:?}");
    }
    assert!(complete("cachem stat app --").contains(&"--watch".to_string()));
    assert_eq!(complete("cachem stat app --format p"), ["prometheus"]);
}

#[test]
fn zsh_completion_loads_and_defines_every_command() {
    need("zsh");
    let (_d, out) = assets();
    let dir = out.join("completions");
    // Load it the way zsh does (fpath + compinit), then ask the completion
    // system which function handles `cachem`.
    let prog = format!(
        "fpath=('{}' $fpath); autoload -Uz compinit; compinit -u -D; \
         print -r -- $_comps[cachem]; autoload +X _cachem; whence -w _cachem",
        dir.display()
    );
    let o = Command::new("zsh").arg("-f").arg("-c").arg(prog).env("HOME", out.as_os_str()).output().unwrap();
    let stdout = String::from_utf8_lossy(&o.stdout);
    assert!(o.status.success(), "{stdout}{}", String::from_utf8_lossy(&o.stderr));
    assert!(stdout.starts_with("_cachem\n") && stdout.contains("_cachem: function"), "{stdout}");
    let text = std::fs::read_to_string(dir.join("_cachem")).unwrap();
    assert!(text.starts_with("#compdef cachem"), "{text}");
    for c in COMMANDS {
        assert!(text.contains(&format!("'{c}:")), "{c} missing from _cachem");
    }
    assert!(text.contains("prometheus") && text.contains("--watch="), "stat options missing");
}

// ---- the Debian packaging's files ----

#[test]
fn packaged_cachem_conf_shows_every_directive_of_mod_cachem_commented_out() {
    let root = workspace_root();
    let src = std::fs::read_to_string(root.join("apache/mod_cachem.c")).unwrap();
    let conf = std::fs::read_to_string(root.join("packaging/deb/cachem.conf")).unwrap();
    let directives: Vec<&str> = src
        .split("AP_INIT_")
        .skip(1)
        .filter_map(|s| s.split_once("(\"").and_then(|(_, r)| r.split_once('"')).map(|(name, _)| name))
        .collect();
    assert!(directives.len() >= 7 && directives.contains(&"CACHEM"), "{directives:?}");
    for d in &directives {
        let line = conf
            .lines()
            .map(str::trim)
            .find(|l| l.strip_prefix('#').is_some_and(|r| r.starts_with(&format!("{d} "))));
        assert!(line.is_some(), "cachem.conf lacks a commented `#{d} <default>` line");
    }
    // Nothing is switched on: every line inside <IfModule> is a comment.
    for l in conf.lines().map(str::trim).filter(|l| !l.is_empty() && !l.starts_with('#')) {
        assert!(l.starts_with("<IfModule") || l.starts_with("</IfModule"), "active line in cachem.conf: {l}");
    }
    let load = std::fs::read_to_string(root.join("packaging/deb/cachem.load")).unwrap();
    assert!(load.contains("LoadModule cachem_module /usr/lib/apache2/modules/mod_cachem.so"), "{load}");
    assert!(src.contains("module AP_MODULE_DECLARE_DATA cachem_module"), "the module name changed");
}

#[test]
fn packaging_scripts_are_valid_shell() {
    let dir = workspace_root().join("packaging/deb");
    for f in [
        "build.sh",
        "test.sh",
        "libapache2-mod-cachem.prerm",
        "libapache2-mod-cachem.postrm",
        "libapache2-mod-cachem-example.prerm",
        "libapache2-mod-cachem-example.postrm",
    ] {
        let o = Command::new("sh").arg("-n").arg(dir.join(f)).output().unwrap();
        assert!(o.status.success(), "{f}: {}", String::from_utf8_lossy(&o.stderr));
    }
}

#[test]
fn prometheus_dead_bytes_match_the_status_after_a_remove() {
    // cachem_dead_bytes is the status's `dead_bytes`: under deferred
    // compaction (the default) a remove leaves a dead block until a
    // compaction (`cachem compact`) closes the hole.
    let d = TempDir::new("prom-dead");
    let p = d.path();
    ok(p, &["create", "app", "--size", "64K"]);
    let a = ok(p, &["put", "app", "--owner", "jobs", "first record"]).trim().to_string();
    ok(p, &["put", "app", "--owner", "jobs", "second record"]);
    ok(p, &["del", "app", &a]);
    let json: serde_json::Value = serde_json::from_str(&ok(p, &["stat", "app", "--json"])).unwrap();
    let fams = parse_exposition(&ok(p, &["stat", "app", "--format", "prometheus"])).unwrap();
    let dead = fams["cachem_dead_bytes"].samples[0].1;
    assert_eq!(dead, json["dead_bytes"].as_f64().unwrap(), "{json}");
    if json["compaction"] == "deferred" {
        assert!(dead > 0.0, "a remove under deferred compaction leaves a dead block: {json}");
        ok(p, &["compact", "app"]);
        let fams = parse_exposition(&ok(p, &["stat", "app", "--format", "prometheus"])).unwrap();
        assert_eq!(fams["cachem_dead_bytes"].samples[0].1, 0.0);
        assert_eq!(fams["cachem_compactions_total"].samples[0].1, 1.0);
    }
    let free = fams["cachem_free_bytes"].samples[0].1;
    assert_eq!(free, json["free_bytes"].as_f64().unwrap());
    assert_eq!(fams["cachem_records"].samples[0].1, 1.0);
}

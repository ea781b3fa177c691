//! Multi-process tests with real processes: this test binary re-executes
//! itself as a worker (see [`worker_entry`]).

use std::collections::BTreeSet;
use std::io::{BufRead, BufReader, Read};
use std::path::Path;
use std::process::{Child, Command, Stdio};
use std::sync::mpsc;
use std::time::{Duration, Instant};

use cachem_ids::{IdRegistry, OwnerId};

type TestResult = Result<(), Box<dyn std::error::Error>>;

const WORKER_ENV: &str = "CACHEM_IDS_WORKER";
const DIR_ENV: &str = "CACHEM_IDS_DIR";
const GENERATION: u64 = 0x5eed;
/// No test waits longer than this for its workers.
const TIMEOUT: Duration = Duration::from_secs(60);

const NAMES: [&str; 10] = [
    "mod_status",
    "mod_proxy",
    "mod_cache",
    "mod_ssl",
    "mod_rewrite",
    "mod_auth",
    "mod_dir",
    "mod_log",
    "mod_mime",
    "mod_alias",
];
const UNIQUE_PER_WORKER: usize = 100;

type WorkerOutputs = Result<Vec<Vec<String>>, Box<dyn std::error::Error>>;

fn open(dir: &Path) -> Result<IdRegistry, cachem_ids::Error> {
    IdRegistry::open(dir.join("store"), dir.join("lock"), GENERATION)
}

/// The worker side. Does nothing in a normal test run; a parent test starts
/// this binary with `worker_entry --exact` and `CACHEM_IDS_WORKER=<role>`.
/// Results go to stdout as lines starting with `ID `, `UNIQUE ` or `READY`.
#[test]
fn worker_entry() -> TestResult {
    let Ok(role) = std::env::var(WORKER_ENV) else {
        return Ok(());
    };
    let dir = std::path::PathBuf::from(std::env::var(DIR_ENV)?);
    let reg = open(&dir)?;
    // Start together: the parent closes our stdin once every worker is up.
    std::io::stdin().read_to_end(&mut Vec::new())?;
    match role.as_str() {
        "names" => {
            for name in NAMES {
                println!("ID {name} {}", reg.id(name)?.get());
            }
        }
        "unique" => {
            for _ in 0..UNIQUE_PER_WORKER {
                println!("UNIQUE {}", reg.unique_id()?.get());
            }
        }
        "check" => {
            for name in ["a", "b", "c", "held_before", "d"] {
                println!("ID {name} {}", reg.id(name)?.get());
            }
        }
        "hold" => {
            println!("ID held_before {}", reg.id("held_before")?.get());
            reg.hold_open_for_test(|| {
                // Lockfile held, sled open, an unflushed write pending.
                println!("READY");
                std::thread::sleep(TIMEOUT);
            })?;
            return Err("the parent should have killed this worker".into());
        }
        other => return Err(format!("unknown worker role {other}").into()),
    }
    Ok(())
}

fn spawn(role: &str, dir: &Path) -> std::io::Result<Child> {
    Command::new(std::env::current_exe()?)
        .args(["worker_entry", "--exact", "--nocapture", "--test-threads=1", "-q"])
        .env(WORKER_ENV, role)
        .env(DIR_ENV, dir)
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
}

/// Starts `n` workers at once, waits for all (killing them all after
/// [`TIMEOUT`]) and returns each one's result lines.
fn run_workers(role: &str, n: usize, dir: &Path) -> WorkerOutputs {
    let mut children = (0..n).map(|_| spawn(role, dir)).collect::<Result<Vec<_>, _>>()?;
    for c in &mut children {
        drop(c.stdin.take()); // go
    }
    let deadline = Instant::now() + TIMEOUT;
    let mut outputs = Vec::new();
    for mut c in children {
        let status = loop {
            if let Some(s) = c.try_wait()? {
                break s;
            }
            if Instant::now() > deadline {
                let _ = c.kill();
                return Err(format!("a {role} worker did not finish within {TIMEOUT:?}").into());
            }
            std::thread::sleep(Duration::from_millis(5));
        };
        let mut out = String::new();
        let mut err = String::new();
        if let Some(mut s) = c.stdout.take() {
            s.read_to_string(&mut out)?;
        }
        if let Some(mut s) = c.stderr.take() {
            s.read_to_string(&mut err)?;
        }
        if !status.success() {
            return Err(format!("{role} worker failed ({status}):\n{out}\n{err}").into());
        }
        outputs.push(
            out.lines()
                .filter(|l| l.starts_with("ID ") || l.starts_with("UNIQUE "))
                .map(str::to_owned)
                .collect(),
        );
    }
    Ok(outputs)
}

fn parse_ids(lines: &[String]) -> Result<Vec<(String, u32)>, Box<dyn std::error::Error>> {
    lines
        .iter()
        .filter_map(|l| l.strip_prefix("ID "))
        .map(|l| {
            let (name, id) = l.split_once(' ').ok_or("bad ID line")?;
            Ok((name.to_owned(), id.parse()?))
        })
        .collect()
}

#[test]
fn sixteen_processes_get_the_same_ten_distinct_ids() -> TestResult {
    let dir = tempfile::tempdir()?;
    open(dir.path())?;
    let outputs = run_workers("names", 16, dir.path())?;
    assert_eq!(outputs.len(), 16);
    let first = parse_ids(&outputs[0])?;
    assert_eq!(first.len(), NAMES.len(), "{outputs:?}");
    for out in &outputs[1..] {
        assert_eq!(parse_ids(out)?, first);
    }
    let distinct: BTreeSet<u32> = first.iter().map(|(_, id)| *id).collect();
    // Ten distinct ids, dense from 1, none of them OwnerId::PROCESS.
    assert_eq!(distinct, (1..=10).collect());
    // And the parent, a later process, sees the same.
    let reg = open(dir.path())?;
    for (name, id) in &first {
        assert_eq!(reg.lookup(name)?, Some(OwnerId(*id)));
    }
    Ok(())
}

#[test]
fn eight_processes_get_eight_hundred_distinct_unique_ids() -> TestResult {
    let dir = tempfile::tempdir()?;
    open(dir.path())?;
    let outputs = run_workers("unique", 8, dir.path())?;
    let mut all = BTreeSet::new();
    let mut count = 0;
    for out in &outputs {
        assert_eq!(out.len(), UNIQUE_PER_WORKER);
        for line in out {
            let id: u32 = line.trim_start_matches("UNIQUE ").parse()?;
            all.insert(id);
            count += 1;
        }
    }
    assert_eq!(count, 8 * UNIQUE_PER_WORKER);
    // All distinct, and dense: exactly 1..=800.
    assert_eq!(all, (1..=(8 * UNIQUE_PER_WORKER) as u32).collect());
    Ok(())
}

#[test]
fn a_process_killed_while_holding_the_lock_and_sled_leaves_a_working_registry() -> TestResult {
    let dir = tempfile::tempdir()?;
    let reg = open(dir.path())?;
    let before = reg.ids(&["a", "b", "c"])?;

    let mut child = spawn("hold", dir.path())?;
    drop(child.stdin.take());
    let stdout = child.stdout.take().ok_or("no stdout")?;
    let (tx, rx) = mpsc::channel();
    std::thread::spawn(move || {
        for line in BufReader::new(stdout).lines().map_while(Result::ok) {
            if tx.send(line).is_err() {
                break;
            }
        }
    });
    let mut held_before = None;
    let deadline = Instant::now() + TIMEOUT;
    loop {
        let line = rx.recv_timeout(deadline.saturating_duration_since(Instant::now())).map_err(|_| {
            let _ = child.kill();
            "the hold worker never got ready"
        })?;
        if let Some(id) = line.strip_prefix("ID held_before ") {
            held_before = Some(OwnerId(id.parse()?));
        }
        if line == "READY" {
            break;
        }
    }
    child.kill()?; // SIGKILL, inside the critical section
    child.wait()?;

    // The next process gets the lock (the kernel released the flock) and
    // the registry answers with the same ids.
    let outputs = run_workers("check", 1, dir.path())?;
    let after: Vec<OwnerId> = parse_ids(&outputs[0])?.iter().map(|(_, id)| OwnerId(*id)).collect();
    assert_eq!(after.len(), 5, "{outputs:?}");
    let d = after[4];
    assert_eq!(after[..3], before[..]);
    assert_eq!(Some(after[3]), held_before);
    assert_eq!(held_before, Some(OwnerId(4)));
    // Counter intact too: the next name gets the next id, no reuse.
    assert_eq!(d, OwnerId(5));
    Ok(())
}

//! `cachem demo` (the README's `make demo`): four workers publish state in a
//! fresh region, one is killed with SIGKILL, the next reap removes exactly
//! its process-scoped records, the region verifies. Narrated; exits 0 only if
//! every step behaved as it should.

use crate::{show, CliResult, Fail};
use cachem::{Cache, Config, OwnerId};
use std::io::{BufRead, BufReader};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::mpsc;
use std::time::{Duration, Instant};

const WORKERS: u32 = 4;
const VICTIM: usize = 2;

fn say(s: impl AsRef<str>) {
    println!("{}", s.as_ref());
}

fn check(ok: bool, what: impl Into<String>) -> CliResult {
    if ok {
        Ok(())
    } else {
        Err(Fail(format!("demo failed: {}", what.into()), 1))
    }
}

struct Workers(Vec<Child>);

impl Drop for Workers {
    fn drop(&mut self) {
        for c in &mut self.0 {
            let _ = c.kill();
            let _ = c.wait();
        }
    }
}

struct TempDir(PathBuf);

impl Drop for TempDir {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.0);
    }
}

pub fn run() -> CliResult {
    let t0 = Instant::now();
    let base = if Path::new("/dev/shm").is_dir() { PathBuf::from("/dev/shm") } else { std::env::temp_dir() };
    let tmp = TempDir(base.join(format!("cachem-demo-{}", std::process::id())));
    std::fs::create_dir_all(&tmp.0)?;
    let dir = tmp.0.clone();

    say(format!(
        "1. Create an 8 KiB region \"demo\" in {} (deferred compaction: a delete marks its block dead).",
        dir.display()
    ));
    let cache =
        Cache::open(&Config::named("demo").dir(&dir).size(8 << 10).lock_timeout(crate::lock_timeout()))?;
    let ids = cache.ids(&["scoreboard", "jobs"])?;
    say(format!("   Registered owner names: scoreboard = {}, jobs = {}.", ids[0].get(), ids[1].get()));

    say(format!(
        "2. Start {WORKERS} worker processes. Each publishes a process-scoped heartbeat and \
         status record (gone when it dies), a scoreboard record and a job record (owned, they stay)."
    ));
    let exe = std::env::current_exe()?;
    let (tx, rx) = mpsc::channel();
    let mut workers = Workers(vec![]);
    for i in 0..WORKERS {
        let mut c = Command::new(&exe)
            .arg("--dir")
            .arg(&dir)
            .args(["demo-worker", "demo", &i.to_string()])
            .stdout(Stdio::piped())
            .stdin(Stdio::null())
            .spawn()?;
        let out = c.stdout.take().ok_or_else(|| Fail("worker has no stdout".into(), 1))?;
        let tx = tx.clone();
        std::thread::spawn(move || {
            for line in BufReader::new(out).lines().map_while(Result::ok) {
                let _ = tx.send((i, line));
            }
        });
        workers.0.push(c);
    }
    let mut ready = 0;
    while ready < WORKERS {
        let (_, line) = rx
            .recv_timeout(Duration::from_secs(5))
            .map_err(|_| Fail("demo failed: a worker did not start within 5 s".into(), 1))?;
        if line.starts_with("ready") {
            ready += 1;
        }
    }
    std::thread::sleep(Duration::from_millis(300));
    let before = cache.status()?;
    say("   All workers are publishing. The region now:");
    show::status_human(&mut std::io::stdout(), &before)?;
    check(
        before.region.records == WORKERS * 4,
        format!("expected {} records, found {}", WORKERS * 4, before.region.records),
    )?;

    let victim = &mut workers.0[VICTIM];
    let vpid = victim.id();
    say(format!("3. Kill worker {VICTIM} (pid {vpid}) with SIGKILL: it cannot clean up after itself."));
    victim.kill()?;
    let st = victim.wait()?;
    check(st.code().is_none(), "the worker was not killed by a signal")?;
    let after_kill = cache.status()?;
    let dead_row = after_kill.pids.iter().find(|p| p.pid == vpid);
    check(
        dead_row.is_some_and(|p| !p.alive && p.records == 4),
        "status does not show the dead worker's 4 records",
    )?;
    say(format!(
        "   Status now lists pid {vpid} as dead, still holding 4 records (2 of them process-scoped)."
    ));

    say("4. Reap: remove the records of dead processes.");
    let free0 = after_kill.region.free_bytes;
    let rep = cache.reap()?;
    show::reap(&mut std::io::stdout(), &rep, false)?;
    check(
        rep.records == 2 && rep.dead.len() == 1 && rep.dead[0].pid == vpid,
        "the reap did not remove exactly the victim's 2 process-scoped records",
    )?;
    let after = cache.status()?;
    check(
        after.region.free_bytes + after.region.dead_bytes == free0 + rep.bytes + after_kill.region.dead_bytes,
        "the reaped bytes are neither dead nor back in the free gap",
    )?;
    say(format!(
        "   {} bytes freed; {} dead bytes now wait as holes for a compaction. Its scoreboard and job records stay: they are owned.",
        rep.bytes, after.region.dead_bytes
    ));
    show::status_human(&mut std::io::stdout(), &after)?;
    say("   Compact (`cachem compact demo`): one pass closes every hole.");
    let moved = cache.compact()?;
    let compacted = cache.status()?;
    check(
        compacted.region.dead_bytes == 0
            && compacted.region.free_bytes == after.region.free_bytes + after.region.dead_bytes,
        "the compaction did not return every dead byte to the free gap",
    )?;
    say(format!(
        "   {} bytes moved; {} -> {} bytes in the free gap, no dead bytes left.",
        moved, after.region.free_bytes, compacted.region.free_bytes
    ));

    say("5. Verify every invariant of the region.");
    let v = cache.lock()?.verify()?;
    say(format!("   ok: {} records, {} bytes used, {} bytes free.", v.records, v.used_bytes, v.free_bytes));

    say("6. Stop the other workers normally: each removes its own process-scoped records on exit.");
    std::fs::write(dir.join("demo.stop"), b"")?;
    for (i, c) in workers.0.iter_mut().enumerate() {
        if i == VICTIM {
            continue;
        }
        let end = Instant::now() + Duration::from_secs(5);
        loop {
            if let Some(st) = c.try_wait()? {
                check(st.success(), format!("worker {i} failed"))?;
                break;
            }
            check(Instant::now() < end, format!("worker {i} did not stop within 5 s"))?;
            std::thread::sleep(Duration::from_millis(5));
        }
    }
    let fin = cache.status()?;
    show::status_human(&mut std::io::stdout(), &fin)?;
    check(
        fin.region.records == WORKERS * 2,
        format!("expected {} owned records, found {}", WORKERS * 2, fin.region.records),
    )?;
    check(fin.region.owners.iter().all(|o| !o.owner.is_process()), "process-scoped records remain")?;
    cache.lock()?.verify()?;
    say(format!(
        "Done in {:.1} s: {} owned records remain, no process-scoped record outlived its process, the region verifies.",
        t0.elapsed().as_secs_f64(),
        fin.region.records
    ));
    cache.destroy()?;
    Ok(())
}

/// A demo worker: publishes its records, says "ready", then beats until the
/// stop file appears (or it is killed).
pub fn worker(dir: &Option<PathBuf>, name: &str, index: u32) -> CliResult {
    let d = dir.clone().ok_or_else(|| Fail("demo-worker needs --dir".into(), 2))?;
    let cache = Cache::open(&crate::existing(dir, name))?;
    let ids = cache.ids(&["scoreboard", "jobs"])?;
    let pid = std::process::id();
    let heartbeat = {
        let mut g = cache.lock()?;
        let hb = g.insert(OwnerId::PROCESS, &0u64.to_ne_bytes())?;
        g.insert(OwnerId::PROCESS, format!("worker {index} (pid {pid}): serving requests").as_bytes())?;
        g.insert(ids[0], format!("worker {index}: started").as_bytes())?;
        g.insert(ids[1], format!("job {index}: result computed by pid {pid}").as_bytes())?;
        hb
    };
    println!("ready {pid}");
    let stop = d.join(format!("{name}.stop"));
    let end = Instant::now() + Duration::from_secs(30);
    let mut beats = 0u64;
    while !stop.exists() && Instant::now() < end {
        beats += 1;
        let mut g = cache.lock()?;
        let b = g.get_mut(heartbeat).ok_or_else(|| Fail("heartbeat record vanished".into(), 1))?;
        b.copy_from_slice(&beats.to_ne_bytes());
        drop(g);
        std::thread::sleep(Duration::from_millis(10));
    }
    Ok(())
}

//! The pre-fork server model on an anonymous region: the parent creates the
//! region, forks N children that each insert K records and exit, then checks
//! every record. Single-threaded on purpose (fork and threads do not mix).
//! Usage: prefork [N] [K] [kill]. With `kill`, each child also inserts K
//! process-scoped records and then SIGKILLs itself; the parent reaps them.
//! Exits 0 only if every record arrived intact (and, with `kill`, every
//! process-scoped record was reaped).

use cachem::{OwnerId, Region};

fn main() {
    let mut args = std::env::args().skip(1);
    let n: u32 = args.next().and_then(|a| a.parse().ok()).unwrap_or(4);
    let k: u32 = args.next().and_then(|a| a.parse().ok()).unwrap_or(10);
    let kill = args.next().as_deref() == Some("kill");
    let region = Region::anonymous(1 << 20).expect("anonymous region");
    let mut children = vec![];
    for c in 0..n {
        let pid = fork();
        if pid == 0 {
            let code = match child(&region, c, k, kill) {
                Ok(()) => 0,
                Err(e) => {
                    eprintln!("child {c}: {e}");
                    1
                }
            };
            std::process::exit(code);
        }
        children.push(pid);
    }
    let mut ok = true;
    for pid in children {
        ok &= wait(pid, kill);
    }
    let mut g = region.lock().expect("lock");
    if kill {
        let rep = g.reap().expect("reap");
        println!("reaped={} dead={}", rep.records, rep.dead.len());
        ok &= rep.records == (n * k) as usize && rep.dead.len() == n as usize;
    }
    let rep = g.verify().expect("verify");
    for c in 0..n {
        let mut seen = 0;
        for (_, data) in g.iter_owner(OwnerId(c + 1)) {
            let want = format!("child {c} record");
            ok &= data.starts_with(want.as_bytes());
            seen += 1;
        }
        ok &= seen == k;
    }
    println!("children={n} records={} ok={ok}", rep.records);
    std::process::exit(if ok && rep.records == n * k { 0 } else { 1 });
}

fn child(region: &Region, c: u32, k: u32, kill: bool) -> Result<(), cachem::Error> {
    for i in 0..k {
        let mut g = region.lock()?;
        let id = g.insert(OwnerId(c + 1), format!("child {c} record {i}").as_bytes())?;
        assert_eq!(g.meta(id)?.pid, std::process::id());
        if kill {
            g.insert(OwnerId::PROCESS, b"process-scoped")?;
        }
    }
    if kill {
        // SAFETY: raise takes no pointers; SIGKILL ends this process here.
        unsafe {
            libc::raise(libc::SIGKILL);
        }
    }
    Ok(())
}

fn fork() -> i32 {
    // SAFETY: this program is single-threaded, so the child may run any code.
    unsafe { libc::fork() }
}

fn wait(pid: i32, killed: bool) -> bool {
    let mut status = 0;
    // SAFETY: waitpid writes the status into a local.
    let r = unsafe { libc::waitpid(pid, &mut status, 0) };
    if killed {
        return r == pid && libc::WIFSIGNALED(status) && libc::WTERMSIG(status) == libc::SIGKILL;
    }
    r == pid && libc::WIFEXITED(status) && libc::WEXITSTATUS(status) == 0
}

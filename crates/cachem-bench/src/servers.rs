//! Redis and memcached servers started by the bench on 127.0.0.1 with a
//! free port, as child processes, stopped by pid when dropped (also while
//! unwinding from a panic), and killed by the kernel if the bench itself
//! dies (`PR_SET_PDEATHSIG`).

use std::net::{TcpListener, TcpStream};
use std::os::unix::process::CommandExt;
use std::path::Path;
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

pub const REDIS: &str = "/usr/bin/redis-server";
pub const MEMCACHED: &str = "/usr/bin/memcached";

pub struct Server {
    pub port: u16,
    pub version: String,
    child: Child,
}

fn free_port() -> std::io::Result<u16> {
    Ok(TcpListener::bind("127.0.0.1:0")?.local_addr()?.port())
}

fn version(bin: &str, arg: &str) -> String {
    Command::new(bin)
        .arg(arg)
        .output()
        .ok()
        .map(|o| String::from_utf8_lossy(&o.stdout).trim().to_string())
        .unwrap_or_default()
}

impl Server {
    fn start(
        name: &'static str,
        bin: &str,
        args: &[String],
        port: u16,
        log: &Path,
    ) -> std::io::Result<Server> {
        let log = std::fs::File::create(log)?;
        let mut cmd = Command::new(bin);
        cmd.args(args).stdin(Stdio::null()).stdout(log.try_clone()?).stderr(log);
        // SAFETY: the closure runs in the forked child before exec and only
        // calls prctl, which is async-signal-safe and touches no memory of
        // ours.
        unsafe {
            cmd.pre_exec(|| {
                if libc::prctl(libc::PR_SET_PDEATHSIG, libc::SIGKILL as libc::c_ulong) != 0 {
                    return Err(std::io::Error::last_os_error());
                }
                Ok(())
            });
        }
        let child = cmd.spawn()?;
        let mut s = Server { port, version: String::new(), child };
        let deadline = Instant::now() + Duration::from_secs(10);
        while TcpStream::connect(("127.0.0.1", port)).is_err() {
            if let Some(st) = s.child.try_wait()? {
                return Err(std::io::Error::other(format!("{name} exited at start: {st}")));
            }
            if Instant::now() > deadline {
                return Err(std::io::Error::other(format!("{name} did not listen on port {port}")));
            }
            std::thread::sleep(Duration::from_millis(20));
        }
        Ok(s)
    }

    /// `redis-server --port P --bind 127.0.0.1 --save '' --appendonly no`.
    pub fn redis(dir: &Path) -> std::io::Result<Server> {
        let port = free_port()?;
        let args: Vec<String> = [
            "--port",
            &port.to_string(),
            "--bind",
            "127.0.0.1",
            "--save",
            "",
            "--appendonly",
            "no",
            "--daemonize",
            "no",
            "--dir",
            &dir.display().to_string(),
        ]
        .iter()
        .map(|s| s.to_string())
        .collect();
        let mut s = Server::start("redis", REDIS, &args, port, &dir.join("redis.log"))?;
        let v = version(REDIS, "--version");
        // "Redis server v=7.0.15 sha=... malloc=... bits=64 build=..."
        s.version = match v.split_whitespace().find_map(|t| t.strip_prefix("v=")) {
            Some(n) => format!("Redis {n}"),
            None => v,
        };
        Ok(s)
    }

    /// `memcached -l 127.0.0.1 -p P -U 0 -m 1024` (plus `-u root` as root,
    /// which memcached requires to run as root at all).
    pub fn memcached(dir: &Path) -> std::io::Result<Server> {
        let port = free_port()?;
        let mut args: Vec<String> = ["-l", "127.0.0.1", "-p", &port.to_string(), "-U", "0", "-m", "1024"]
            .iter()
            .map(|s| s.to_string())
            .collect();
        // SAFETY: geteuid has no preconditions.
        if unsafe { libc::geteuid() } == 0 {
            args.extend(["-u".to_string(), "root".to_string()]);
        }
        let mut s = Server::start("memcached", MEMCACHED, &args, port, &dir.join("memcached.log"))?;
        s.version = version(MEMCACHED, "-V");
        Ok(s)
    }

    pub fn pid(&self) -> u32 {
        self.child.id()
    }
}

impl Drop for Server {
    fn drop(&mut self) {
        // Child::kill sends SIGKILL to exactly this pid.
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

//! `cachem`: inspect and use cachem regions from the command line.
//!
//! Exit codes: 0 success, 1 the operation failed (not found, verify failed,
//! full, ...), 2 usage error.
#![forbid(unsafe_code)]

mod assets;
mod demo;
mod names;
mod prom;
mod show;
mod stress;
mod watch;

use cachem::{Cache, Compaction, Config, OwnerId, RecordId};
use clap::{ArgGroup, CommandFactory, Parser, Subcommand, ValueEnum};
use std::io::{Read, Write};
use std::path::PathBuf;
use std::process::ExitCode;

#[derive(Parser, Debug)]
#[command(
    name = "cachem",
    version,
    about = "Shared-memory state records for cooperating processes",
    after_long_help = AFTER_HELP
)]
struct Cli {
    /// Runtime directory for region names (default: $CACHEM_DIR, else /dev/shm/cachem).
    #[arg(long, global = true, value_name = "DIR")]
    dir: Option<PathBuf>,
    /// Vouch for the runtime directory: skip the check that it is not a
    /// symlink, not another user's and not writable by everyone (files are
    /// still never opened through a symlink).
    #[arg(long, global = true)]
    trust_dir: bool,
    /// The region's id store, the sled mirror of its owner names (default:
    /// REGION.ids beside the region).
    #[arg(long, global = true, value_name = "PATH")]
    id_store: Option<PathBuf>,
    /// More logging (-v debug, -vv trace). RUST_LOG overrides.
    #[arg(short, long, global = true, action = clap::ArgAction::Count)]
    verbose: u8,
    /// Only errors.
    #[arg(short, long, global = true)]
    quiet: bool,
    /// How long to wait for the region lock when another process holds it
    /// (seconds, fractions allowed); then exit 1 naming the holder.
    #[arg(long, global = true, value_name = "SECONDS", default_value = "10", value_parser = parse_lock_timeout)]
    lock_timeout: std::time::Duration,
    #[command(subcommand)]
    cmd: Cmd,
}

const AFTER_HELP: &str = "\
Regions: a NAME without a slash is a file in the runtime directory (--dir, \
else $CACHEM_DIR, else /dev/shm/cachem); a NAME with a slash is a path.

Exit status: 0 success; 1 the operation failed (missing region, stale record \
id, full region, failed verify); 2 usage error.

Environment: CACHEM_DIR (runtime directory), RUST_LOG (log filter, overrides \
-v/-q), NO_COLOR (no colours in log lines).

Files: /dev/shm/cachem/NAME (the region), NAME.lock (its lockfile), \
NAME.ids (the mirror of its owner names, written by `id`, `put --owner`, \
`ls`, `restore` and `ids --sync`; see docs/ids.md).

See docs/operations.md for sizing, monitoring and what to do when verify fails.";

/// The output of `stat`.
#[derive(Clone, Copy, Debug, PartialEq, Eq, ValueEnum)]
enum StatFormat {
    /// A picture of the region and tables, for people.
    Human,
    /// One JSON document with stable keys.
    Json,
    /// Prometheus text exposition, for the node exporter's textfile collector.
    Prometheus,
}

#[derive(Subcommand, Debug)]
enum Cmd {
    /// Create a region (fully allocated; fails if it exists with another size).
    Create {
        /// Region: a name in the runtime directory, or a path.
        name: String,
        /// Size: 65536, 64K, 1M, 1G; a multiple of 8, at least one page.
        #[arg(long, value_parser = parse_size)]
        size: u64,
        /// Permission bits of the region, lockfile and id store (octal).
        #[arg(long, value_parser = parse_mode, default_value = "0600")]
        mode: u32,
        /// Reaping removes every record of a dead process, not only its
        /// process-scoped ones.
        #[arg(long)]
        reap_all: bool,
        /// Never reap dead processes' records in this region.
        #[arg(long)]
        no_reap: bool,
        /// Compaction policy: `deferred` (a delete marks the block dead; one
        /// compaction closes all holes later) or `eager` (every delete
        /// compacts at once).
        #[arg(long, default_value = "deferred", value_parser = parse_compaction)]
        compaction: Compaction,
        /// Give the region, its lockfile and id store to USER:GROUP (names or
        /// numeric ids; root only), e.g. for workers that drop privileges.
        #[arg(long, value_name = "USER:GROUP", value_parser = parse_owner)]
        owner: Option<(u32, u32)>,
    },
    /// Show a region's geometry, usage per owner and per process, counters.
    Stat {
        /// Region: a name in the runtime directory, or a path.
        name: String,
        /// Machine-readable output with stable keys (same as --format json).
        #[arg(long, conflicts_with = "format")]
        json: bool,
        /// Output form.
        #[arg(long, value_enum, default_value_t = StatFormat::Human)]
        format: StatFormat,
        /// Show the status again every SECONDS (0.1 to 86400) until Ctrl-C or
        /// SIGTERM: redrawn in place on a terminal, one line (or, with
        /// --format json, one JSON document) per interval otherwise.
        #[arg(long, value_name = "SECONDS", value_parser = parse_interval, conflicts_with = "json")]
        watch: Option<std::time::Duration>,
    },
    /// Insert a record and print its id.
    #[command(group(ArgGroup::new("who").required(true).args(["owner", "owner_id", "process"])))]
    #[command(group(ArgGroup::new("input").args(["data", "file"])))]
    Put {
        /// Region: a name in the runtime directory, or a path.
        name: String,
        /// Owner name (registered if new).
        #[arg(long)]
        owner: Option<String>,
        /// Owner id.
        #[arg(long, value_parser = parse_owner_id)]
        owner_id: Option<u32>,
        /// A process-scoped record. It belongs to this `cachem` process, so it
        /// is removed as soon as this command exits.
        #[arg(long)]
        process: bool,
        /// The record's bytes ("-" or nothing reads standard input).
        data: Option<String>,
        /// Read the record's bytes from a file.
        #[arg(long, value_name = "PATH")]
        file: Option<PathBuf>,
    },
    /// Print a record's bytes.
    Get {
        /// Region: a name in the runtime directory, or a path.
        name: String,
        /// Record id as printed by `put` and `ls` (SLOT.GENERATION).
        #[arg(value_parser = parse_record_id)]
        record_id: RecordId,
        /// Hex dump instead of raw bytes.
        #[arg(long)]
        hex: bool,
    },
    /// Delete a record (compacted at once under `eager`, marked dead under
    /// `deferred`).
    Del {
        /// Region: a name in the runtime directory, or a path.
        name: String,
        /// Record id as printed by `put` and `ls` (SLOT.GENERATION).
        #[arg(value_parser = parse_record_id)]
        record_id: RecordId,
    },
    /// List records (id, owner, pid, alive, len).
    #[command(group(ArgGroup::new("filter").args(["owner", "owner_id"])))]
    Ls {
        /// Region: a name in the runtime directory, or a path.
        name: String,
        /// Only records of this owner name.
        #[arg(long)]
        owner: Option<String>,
        /// Only records of this owner id (0: process-scoped records).
        #[arg(long, value_parser = parse_owner_id)]
        owner_id: Option<u32>,
        /// Only records inserted by this process id.
        #[arg(long)]
        pid: Option<u32>,
        /// A JSON array with stable keys.
        #[arg(long)]
        json: bool,
    },
    /// Print the owner id of OWNER_NAME (registered if new).
    Id {
        /// Region: a name in the runtime directory, or a path.
        name: String,
        /// The owner name to look up or register.
        owner_name: String,
    },
    /// List the owner names with their ids, from the region and from its id
    /// store (the sled mirror); without the region, from the store alone.
    Ids {
        /// Region: a name in the runtime directory, or a path.
        name: String,
        /// Write the region's names into the store first.
        #[arg(long)]
        sync: bool,
        /// A JSON document with stable keys.
        #[arg(long)]
        json: bool,
    },
    /// Remove the records of dead processes now.
    Reap {
        /// Region: a name in the runtime directory, or a path.
        name: String,
        /// A JSON report with stable keys.
        #[arg(long)]
        json: bool,
    },
    /// Close every hole left by deletes now, in one compaction.
    Compact {
        /// Region: a name in the runtime directory, or a path.
        name: String,
    },
    /// Check every invariant; exit 1 with the reason if one is broken.
    Verify {
        /// Region: a name in the runtime directory, or a path.
        name: String,
    },
    /// Write the region's records (not process-scoped ones) with their owner
    /// names to FILE: a checksummed snapshot, replaced atomically.
    Save {
        /// Region: a name in the runtime directory, or a path.
        name: String,
        /// The snapshot file to write.
        file: PathBuf,
    },
    /// Add the records of the snapshot FILE to the region (owner ids resolved
    /// again from the names); all or nothing.
    Restore {
        /// Region: a name in the runtime directory, or a path.
        name: String,
        /// The snapshot file to read (written by `save`).
        file: PathBuf,
    },
    /// Remove a region, its lockfile and its id store.
    Destroy {
        /// Region: a name in the runtime directory, or a path.
        name: String,
    },
    /// One worker's random insert / update / remove loop over self-checking
    /// records; prints a summary (ops, errors) at exit.
    Stress {
        /// Region: a name in the runtime directory, or a path.
        name: String,
        /// How long to run (0 to 31536000).
        #[arg(long, value_parser = parse_seconds)]
        seconds: f64,
        /// Seed of the random operation sequence (default: from the clock).
        #[arg(long)]
        seed: Option<u64>,
        /// Largest record size (16 to 16777216).
        #[arg(long, default_value_t = 256, value_parser = clap::value_parser!(u64).range(16..=16 << 20))]
        record_size: u64,
        /// Use records owned by NAME instead of process-scoped ones.
        #[arg(long, value_name = "NAME")]
        owner: Option<String>,
    },
    /// Show the whole product in ten seconds: workers, a SIGKILL, a reap.
    Demo,
    #[command(hide = true)]
    DemoWorker { name: String, index: u32 },
    /// Write the man pages and shell completions into DIR (used by
    /// `make assets` and `make deb`).
    #[command(hide = true)]
    GenerateAssets {
        #[arg(long, value_name = "DIR")]
        out: PathBuf,
    },
}

/// A failure: message for stderr and exit code.
pub struct Fail(pub String, pub u8);

impl From<cachem::Error> for Fail {
    fn from(e: cachem::Error) -> Self {
        Fail(e.to_string(), 1)
    }
}

impl From<std::io::Error> for Fail {
    fn from(e: std::io::Error) -> Self {
        Fail(e.to_string(), 1)
    }
}

pub type CliResult<T = ()> = Result<T, Fail>;

fn main() -> ExitCode {
    let cli = Cli::parse();
    init_logging(cli.verbose, cli.quiet);
    let _ = LOCK_TIMEOUT.set(cli.lock_timeout);
    match run(cli) {
        Ok(()) => ExitCode::SUCCESS,
        Err(Fail(msg, code)) => {
            if !msg.is_empty() {
                eprintln!("cachem: {msg}");
            }
            ExitCode::from(code)
        }
    }
}

fn init_logging(verbose: u8, quiet: bool) {
    use tracing_subscriber::EnvFilter;
    let level = match (quiet, verbose) {
        (true, _) => "error",
        (false, 0) => "warn",
        (false, 1) => "debug",
        _ => "trace",
    };
    let filter = EnvFilter::try_from_default_env().unwrap_or_else(|_| EnvFilter::new(level));
    // Colour only on a terminal, and never with NO_COLOR set (no-color.org).
    let ansi = std::io::IsTerminal::is_terminal(&std::io::stderr())
        && std::env::var_os("NO_COLOR").is_none_or(|v| v.is_empty());
    let _ = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_writer(std::io::stderr)
        .with_ansi(ansi)
        .without_time()
        .try_init();
}

/// Parses `USER:GROUP` (names from /etc/passwd and /etc/group, or numbers).
fn parse_owner(s: &str) -> Result<(u32, u32), String> {
    let (u, g) = s.split_once(':').ok_or_else(|| format!("{s:?} is not USER:GROUP"))?;
    let uid = lookup_id("/etc/passwd", u).ok_or_else(|| format!("no such user {u:?}"))?;
    let gid = lookup_id("/etc/group", g).ok_or_else(|| format!("no such group {g:?}"))?;
    Ok((uid, gid))
}

/// A numeric id, or the id of `name` in a passwd/group-style file.
fn lookup_id(file: &str, name: &str) -> Option<u32> {
    if let Ok(n) = name.parse() {
        return Some(n);
    }
    if name.is_empty() {
        return None;
    }
    let text = std::fs::read_to_string(file).ok()?;
    text.lines().find_map(|l| {
        let mut f = l.split(':');
        (f.next()? == name).then_some(())?;
        f.nth(1)?.parse().ok()
    })
}

/// `--lock-timeout`, set once in `main`.
static LOCK_TIMEOUT: std::sync::OnceLock<std::time::Duration> = std::sync::OnceLock::new();

/// `--lock-timeout` (10 s when `main` did not set it).
pub fn lock_timeout() -> Option<std::time::Duration> {
    Some(*LOCK_TIMEOUT.get_or_init(|| std::time::Duration::from_secs(10)))
}

/// `--id-store`, for every config the commands build.
static ID_STORE: std::sync::OnceLock<PathBuf> = std::sync::OnceLock::new();

/// `--trust-dir`, for every config the commands build.
static TRUST_DIR: std::sync::atomic::AtomicBool = std::sync::atomic::AtomicBool::new(false);

fn trust_dir() -> bool {
    TRUST_DIR.load(std::sync::atomic::Ordering::Relaxed)
}

/// Config of an existing region (any size).
pub fn existing(dir: &Option<PathBuf>, name: &str) -> Config {
    let mut c = Config::named(name)
        .attach_only()
        .attach_any_size()
        .trust_dir(trust_dir())
        .lock_timeout(lock_timeout());
    if let Some(s) = ID_STORE.get() {
        c = c.id_store(s);
    }
    match dir {
        Some(d) => c.dir(d),
        None => c,
    }
}

/// Opens an existing region for inspection: it does not reap, so the state
/// shown is the state found (dead processes' records included).
pub fn inspect(dir: &Option<PathBuf>, name: &str) -> CliResult<Cache> {
    Ok(Cache::open(&existing(dir, name).no_reap())?)
}

fn run(cli: Cli) -> CliResult {
    let dir = cli.dir;
    TRUST_DIR.store(cli.trust_dir, std::sync::atomic::Ordering::Relaxed);
    if let Some(s) = cli.id_store {
        let _ = ID_STORE.set(s);
    }
    let mut out = std::io::stdout().lock();
    match cli.cmd {
        Cmd::Create { name, size, mode, reap_all, no_reap, compaction, owner } => {
            let mut c = Config::named(&name)
                .size(size)
                .mode(mode)
                .compaction(compaction)
                .trust_dir(trust_dir())
                .lock_timeout(lock_timeout());
            if let Some((uid, gid)) = owner {
                c = c.owner(uid, gid);
            }
            if let Some(s) = ID_STORE.get() {
                c = c.id_store(s);
            }
            if let Some(d) = &dir {
                c = c.dir(d);
            }
            if reap_all {
                c = c.reap_all_records_of_dead_processes();
            }
            if no_reap {
                c = c.no_reap();
            }
            let cache = Cache::open(&c)?;
            let path = cache.region().path().map(|p| p.display().to_string()).unwrap_or_default();
            let policy = cache.lock()?.compaction();
            if cache.region().open_report().created {
                writeln!(out, "created {path} ({} bytes, {policy} compaction)", cache.region().size())?;
            } else {
                writeln!(
                    out,
                    "{path} already exists ({} bytes, {policy} compaction)",
                    cache.region().size()
                )?;
            }
        }
        Cmd::Stat { name, json, format, watch } => {
            let format = if json { StatFormat::Json } else { format };
            let cache = inspect(&dir, &name)?;
            if let Some(interval) = watch {
                let form = match format {
                    StatFormat::Human => watch::Form::Human,
                    StatFormat::Json => watch::Form::Json,
                    StatFormat::Prometheus => {
                        return Err(Fail(
                            "--watch prints human or JSON figures; for Prometheus run \
                             `stat --format prometheus` from a timer (see docs/operations.md)"
                                .into(),
                            2,
                        ))
                    }
                };
                drop(out);
                return watch::run(&cache, interval, form);
            }
            let mut st = cache.status()?;
            // Attaching took the lock first: a wait for a holder happened
            // there, or in the status, or both.
            let at_open = cache.region().open_report();
            st.lock_holder = st.lock_holder.or(at_open.lock_holder);
            st.lock_waited += at_open.lock_waited;
            match format {
                StatFormat::Json => writeln!(out, "{}", st.to_json())?,
                StatFormat::Human => show::status_human(&mut out, &st)?,
                StatFormat::Prometheus => out.write_all(prom::exposition(&name, &st).as_bytes())?,
            }
        }
        Cmd::Put { name, owner, owner_id, process, data, file } => {
            let bytes = match (data.as_deref(), file) {
                (_, Some(f)) => {
                    std::fs::read(&f).map_err(|e| Fail(format!("cannot read {}: {e}", f.display()), 1))?
                }
                (None, None) if std::io::IsTerminal::is_terminal(&std::io::stdin()) => {
                    return Err(Fail(
                        "put needs the record's bytes: DATA, --file PATH, or - for standard input".into(),
                        2,
                    ));
                }
                (Some("-"), None) | (None, None) => {
                    let mut v = vec![];
                    std::io::stdin().read_to_end(&mut v)?;
                    v
                }
                (Some(d), None) => d.as_bytes().to_vec(),
            };
            let cache = Cache::open(&existing(&dir, &name))?;
            let named = owner.is_some();
            let who = match (owner, owner_id, process) {
                (Some(n), _, _) => cache.id(&n)?,
                (_, Some(id), _) => OwnerId(id),
                _ => OwnerId::PROCESS,
            };
            let id = cache.lock()?.insert(who, &bytes)?;
            writeln!(out, "{id}")?;
            if named {
                names::sync_quietly(&cache);
            }
        }
        Cmd::Get { name, record_id, hex } => {
            let cache = inspect(&dir, &name)?;
            // An optimistic read: a copy, without the lock unless a writer
            // is at work.
            let bytes = cache.read(record_id, <[u8]>::to_vec)?;
            if hex {
                show::hexdump(&mut out, &bytes)?;
            } else {
                out.write_all(&bytes)?;
            }
        }
        Cmd::Del { name, record_id } => {
            let cache = Cache::open(&existing(&dir, &name))?;
            cache.lock()?.remove(record_id)?;
            writeln!(out, "deleted {record_id}")?;
        }
        Cmd::Ls { name, owner, owner_id, pid, json } => {
            let cache = inspect(&dir, &name)?;
            let filter = match (owner, owner_id) {
                (Some(n), _) => Some(
                    cache
                        .lookup(&n)?
                        .ok_or_else(|| Fail(format!("no owner named {n:?} in region {name}"), 1))?,
                ),
                (_, Some(id)) => Some(OwnerId(id)),
                _ => None,
            };
            show::list(&mut out, &cache, filter, pid, json)?;
            names::sync_quietly(&cache);
        }
        Cmd::Id { name, owner_name } => {
            let cache = Cache::open(&existing(&dir, &name))?;
            writeln!(out, "{}", cache.id(&owner_name)?.get())?;
            names::sync_quietly(&cache);
        }
        Cmd::Ids { name, sync, json } => {
            let c = existing(&dir, &name);
            let cache = match Cache::open(&c.clone().no_reap()) {
                Ok(c) => Some(c),
                Err(e) if e.kind() == cachem::ErrorKind::NotFound => None,
                Err(e) => return Err(e.into()),
            };
            let store = match (ID_STORE.get(), c.path()?) {
                (Some(s), _) => s.clone(),
                (None, Some(p)) => {
                    let mut s = p.into_os_string();
                    s.push(".ids");
                    PathBuf::from(s)
                }
                (None, None) => return Err(Fail("no id store for this region".into(), 1)),
            };
            names::run(&mut out, cache.as_ref(), &store, sync, json)?;
        }
        Cmd::Reap { name, json } => {
            // Opening reaps already (on attach); report that and any more.
            let cache = Cache::open(&existing(&dir, &name))?;
            if !cache.region().reaps() {
                return Err(Fail(
                    format!("reaping is disabled for region {name} (created with --no-reap)"),
                    1,
                ));
            }
            let mut rep = cache.open_reap().clone();
            let more = cache.reap()?;
            rep.records += more.records;
            rep.bytes += more.bytes;
            rep.dead.extend(more.dead);
            show::reap(&mut out, &rep, json)?;
        }
        Cmd::Compact { name } => {
            let cache = Cache::open(&existing(&dir, &name))?;
            let mut g = cache.lock()?;
            let dead = g.status()?.dead_bytes;
            let moved = g.compact()?;
            writeln!(out, "compacted: {dead} dead bytes reclaimed, {moved} bytes moved")?;
        }
        Cmd::Verify { name } => {
            let cache = inspect(&dir, &name)?;
            let rep = cache.lock()?.verify()?;
            writeln!(
                out,
                "ok: {} records (+{} of the name table) in {} table entries, {} bytes used, {} bytes free",
                rep.records, rep.names, rep.slots, rep.used_bytes, rep.free_bytes
            )?;
        }
        Cmd::Save { name, file } => {
            let cache = inspect(&dir, &name)?;
            let r = cache.save(&file)?;
            writeln!(
                out,
                "saved {} records ({} bytes, {} owners) to {}; {} process-scoped records left out",
                r.records,
                r.bytes,
                r.owners,
                file.display(),
                r.skipped_process_records
            )?;
        }
        Cmd::Restore { name, file } => {
            let cache = Cache::open(&existing(&dir, &name))?;
            if cache.region().options() & cachem::format::OPT_REAP_ALL != 0 {
                // Restored records carry this command's pid; in such a
                // region the next reap after it exits would remove them.
                return Err(Fail(
                    format!(
                        "region {name} reaps every record of a dead process (--reap-all): records \
                         restored by this short-lived command would be reaped once it exits; restore \
                         from the long-lived process that owns them (Cache::restore, cachem_restore)"
                    ),
                    1,
                ));
            }
            let r = cache.restore(&file)?;
            names::sync_quietly(&cache);
            writeln!(
                out,
                "restored {} records ({} bytes, {} owners) from {}",
                r.records,
                r.bytes,
                r.owners,
                file.display()
            )?;
        }
        Cmd::Destroy { name } => {
            let c = existing(&dir, &name);
            cachem::destroy(&c)?;
            writeln!(out, "destroyed {}", c.path()?.map(|p| p.display().to_string()).unwrap_or_default())?;
        }
        Cmd::Stress { name, seconds, seed, record_size, owner } => {
            drop(out);
            stress::run(&dir, &name, seconds, seed, record_size as usize, owner)?;
        }
        Cmd::Demo => {
            drop(out);
            demo::run()?;
        }
        Cmd::DemoWorker { name, index } => {
            drop(out);
            demo::worker(&dir, &name, index)?;
        }
        Cmd::GenerateAssets { out: dest } => {
            assets::generate(Cli::command(), &dest)?;
            writeln!(out, "wrote {}/man and {}/completions", dest.display(), dest.display())?;
        }
    }
    Ok(())
}

/// `65536`, `64K`, `1M`, `1G` (powers of 1024); a multiple of 8, at least a page.
fn parse_size(s: &str) -> Result<u64, String> {
    let t = s.trim();
    let (num, mult) = match t.char_indices().last() {
        Some((i, c)) if c.is_ascii_alphabetic() => {
            let m: u64 = match c.to_ascii_uppercase() {
                'K' => 1 << 10,
                'M' => 1 << 20,
                'G' => 1 << 30,
                _ => return Err(format!("unknown unit {c:?} in {s:?}: use K, M or G")),
            };
            (&t[..i], m)
        }
        _ => (t, 1),
    };
    let n: u64 = num.parse().map_err(|_| format!("{s:?} is not a size: use e.g. 65536, 64K, 1M, 1G"))?;
    let size = n.checked_mul(mult).ok_or_else(|| format!("{s:?} is too large"))?;
    cachem::region::check_create_size(size).map_err(|e| e.to_string())?;
    Ok(size)
}

fn parse_seconds(s: &str) -> Result<f64, String> {
    match s.parse::<f64>() {
        Ok(v) if v.is_finite() && (0.0..=31_536_000.0).contains(&v) => Ok(v),
        _ => Err(format!("{s:?} is not a number of seconds between 0 and 31536000")),
    }
}

fn parse_lock_timeout(s: &str) -> Result<std::time::Duration, String> {
    match s.parse::<f64>() {
        Ok(v) if v.is_finite() && (0.001..=86_400.0).contains(&v) => {
            Ok(std::time::Duration::from_secs_f64(v))
        }
        _ => Err(format!("{s:?} is not a number of seconds between 0.001 and 86400")),
    }
}

fn parse_interval(s: &str) -> Result<std::time::Duration, String> {
    match s.parse::<f64>() {
        Ok(v) if v.is_finite() && (0.1..=86_400.0).contains(&v) => Ok(std::time::Duration::from_secs_f64(v)),
        _ => Err(format!("{s:?} is not a number of seconds between 0.1 and 86400")),
    }
}

fn parse_compaction(s: &str) -> Result<Compaction, String> {
    s.parse()
}

fn parse_mode(s: &str) -> Result<u32, String> {
    let m = u32::from_str_radix(s.trim_start_matches("0o"), 8)
        .map_err(|_| format!("{s:?} is not an octal mode"))?;
    if m > 0o777 || m & 0o600 != 0o600 {
        return Err(format!("mode {s} must be at most 0777 and include 0600 (owner read and write)"));
    }
    Ok(m)
}

fn parse_owner_id(s: &str) -> Result<u32, String> {
    s.parse().map_err(|_| format!("{s:?} is not an owner id (an integer; 0 is the process owner)"))
}

fn parse_record_id(s: &str) -> Result<RecordId, String> {
    s.parse::<RecordId>().map_err(|e| e.to_string())
}

#[cfg(test)]
mod tests {
    use super::Cli;
    use clap::CommandFactory;

    #[test]
    fn the_command_definition_is_consistent() {
        Cli::command().debug_assert();
    }

    #[test]
    fn every_argument_of_every_visible_command_has_help() {
        fn walk(c: &clap::Command, path: &str, missing: &mut Vec<String>) {
            for a in c.get_arguments().filter(|a| !a.is_hide_set()) {
                if a.get_help().is_none_or(|h| h.to_string().trim().is_empty()) {
                    missing.push(format!("{path} {}", a.get_id()));
                }
            }
            for s in c.get_subcommands().filter(|s| !s.is_hide_set()) {
                walk(s, &format!("{path} {}", s.get_name()), missing);
            }
        }
        let mut cmd = Cli::command();
        cmd.build();
        let mut missing = vec![];
        walk(&cmd, "cachem", &mut missing);
        assert!(missing.is_empty(), "arguments without help: {missing:?}");
        // The positional arguments in particular (clap lists them first).
        let stat = cmd.find_subcommand("stat").unwrap();
        let name = stat.get_positionals().next().unwrap();
        assert!(name.get_help().unwrap().to_string().contains("runtime directory"));
    }
}

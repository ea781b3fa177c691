//! Owner ids for cachem regions: a sled-backed name registry under the
//! global lockfile.
//!
//! mod_cachem's `cachem_id(name)` gives every process the same id for the
//! same module name, and `cachem_id(NULL)` a fresh unique id. This crate
//! does the same with an [`IdRegistry`]:
//!
//! - [`IdRegistry::id`] maps a name to an [`OwnerId`]; every process that
//!   opens the same store with the same region generation gets the same id
//!   for the same name.
//! - [`IdRegistry::unique_id`] hands out an id never handed out before
//!   (for this region generation).
//! - Ids are dense, starting at 1; [`OwnerId::PROCESS`] (0) is never handed
//!   out.
//!
//! # What this crate owns, and what it must not touch
//!
//! It owns the sled database in the store directory (nothing else may open
//! it) and takes the global lockfile for the duration of each call. It never
//! reads or writes the region itself: the caller passes the region's
//! generation to [`IdRegistry::open`].
//!
//! # One lock + sled cycle per call, in this process: who may use it
//!
//! sled cannot be opened by two processes at once, so every call that needs
//! the store takes the global lockfile exclusively (`flock`, through fs2,
//! waiting at most [`LOCK_TIMEOUT`]), opens sled, does its work, flushes,
//! drops sled and releases the lock.
//!
//! The cycle runs **in the calling process** (there is no helper process
//! any more: forking without exec is unsafe in a process with threads).
//! sled keeps process-global state (a thread pool counted in statics, a
//! process-wide lock) that a child forked without exec inherits in a state
//! where it may hang forever. So the registry must only be used by a
//! process that is single-threaded while it calls it and that does not
//! fork without exec afterwards: the `cachem` command-line tool, which
//! mirrors a region's name table into the store (`docs/ids.md`). The
//! library (`cachem::Cache`), the C ABI and mod_cachem never use it: owner
//! ids live in the region's own name table.
//!
//! A cycle costs a few milliseconds (the sled open; see `docs/ids.md`); the
//! registry memoises name -> id, so a repeated [`IdRegistry::id`] costs
//! nanoseconds, and [`IdRegistry::ids`] resolves many names in one cycle.
//!
//! Because the lockfile is taken by every call, do not call the registry
//! while the same process already holds the global lockfile through another
//! file handle: the `flock` would wait for the caller itself (until
//! [`LOCK_TIMEOUT`]).
//!
//! # Lifetime: region generations
//!
//! Ids live as long as the region they belong to. The store keeps one table
//! per region generation (the value from the region header, which must
//! differ for each incarnation of a region). A generation the store has not
//! seen before starts from an empty table, ids from 1 again. The tables of
//! the few most recent generations are kept, so a process still attached to
//! a replaced region keeps getting its own, consistent ids instead of
//! wiping the new region's; older tables are dropped.
//!
//! # Example
//!
//! ```
//! use cachem_ids::{IdRegistry, OwnerId};
//!
//! # fn main() -> Result<(), cachem_ids::Error> {
//! let dir = tempfile::tempdir().expect("tempdir");
//! let generation = 42; // from the region header
//! let reg = IdRegistry::open(dir.path().join("ids"), dir.path().join("lock"), generation)?;
//!
//! let status = reg.id("mod_status")?;
//! assert_eq!(status, OwnerId(1));
//! assert_eq!(reg.id("mod_status")?, status); // memoised: no lock, no sled
//! assert_eq!(reg.lookup("mod_status")?, Some(status));
//! assert_eq!(reg.lookup("never_asked")?, None);
//!
//! let fresh = reg.unique_id()?;
//! assert_eq!(fresh, OwnerId(2));
//!
//! let both = reg.ids(&["mod_status", "mod_proxy"])?;
//! assert_eq!(both, vec![status, OwnerId(3)]);
//! assert_eq!(reg.name_of(OwnerId(3))?.as_deref(), Some("mod_proxy"));
//! assert_eq!(
//!     reg.names()?,
//!     vec![("mod_status".to_string(), OwnerId(1)), ("mod_proxy".to_string(), OwnerId(3))]
//! );
//!
//! // Bad input is an error, never a panic.
//! assert!(matches!(reg.id(""), Err(cachem_ids::Error::InvalidName { .. })));
//! # Ok(())
//! # }
//! ```
#![forbid(unsafe_code)]

use std::collections::HashMap;
use std::fs::{File, OpenOptions};
use std::io;
use std::os::unix::fs::OpenOptionsExt;
use std::panic::{catch_unwind, AssertUnwindSafe};
use std::path::{Path, PathBuf};
use std::sync::{Mutex, MutexGuard};
use std::time::{Duration, Instant};

pub use cachem_core::OwnerId;

/// The longest name the registry accepts, in bytes.
pub const MAX_NAME_LEN: usize = 4096;

/// How many region generations keep their id tables in the store.
pub const KEPT_GENERATIONS: usize = 4;

/// Marks a sled database as a cachem-ids store, and its layout version.
const FORMAT: &[u8] = b"cachem-ids 1";
/// Default-tree key holding [`FORMAT`].
const KEY_FORMAT: &[u8] = b"format";
/// Default-tree key holding the known generations, oldest first, each a
/// big-endian u64.
const KEY_GENERATIONS: &[u8] = b"generations";
/// Prefix of the per-generation tree names; the generation follows in hex.
const TREE_PREFIX: &str = "gen-";

/// Per-generation tree: key of the next id to hand out (big-endian u64, so
/// "all of u32 used" is representable). Absent means 1.
const KEY_NEXT: &[u8] = b"c";
/// Per-generation tree: `n` + name -> big-endian u32 id.
const PREFIX_NAME: u8 = b'n';
/// Per-generation tree: `i` + big-endian u32 id -> name.
const PREFIX_ID: u8 = b'i';

/// How long to retry `sled::open` while sled's own file lock is still held
/// (see [`open_sled`]).
const SLED_LOCK_RETRY: Duration = Duration::from_secs(5);

/// How long a registry call waits for the global lockfile held by another
/// process before it fails with [`Error::Lock`] (kind `TimedOut`).
pub const LOCK_TIMEOUT: Duration = Duration::from_secs(30);

/// Everything that can go wrong in the registry.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum Error {
    /// The name cannot be registered.
    #[error("invalid owner name: {reason}; use a non-empty name of at most 4096 bytes without NUL")]
    InvalidName {
        /// What is wrong with the name.
        reason: String,
    },
    /// The global lockfile could not be opened, created or locked.
    #[error(
        "cannot take the id registry lockfile {}: {source}; check that its directory exists \
         and that this user may create and open the file",
        path.display()
    )]
    Lock {
        /// The lockfile.
        path: PathBuf,
        /// What the operating system said.
        #[source]
        source: io::Error,
    },
    /// The store directory could not be opened, is not a cachem-ids store,
    /// or is corrupt.
    #[error(
        "id registry store {}: {reason}; if it is damaged, move it aside while no process uses \
         it: it is re-created empty, and `cachem ids REGION --sync` writes the region's names \
         into it again (the region's table is authoritative)",
        path.display()
    )]
    Store {
        /// The store directory.
        path: PathBuf,
        /// What went wrong.
        reason: String,
    },
    /// The filesystem of the store is full (ENOSPC) or over quota.
    #[error(
        "id registry store {}: no space left on its filesystem ({source}); free space there and \
         run the command again. Do not remove the store: it is the durable record of the \
         names' ids",
        path.display()
    )]
    NoSpace {
        /// The store directory.
        path: PathBuf,
        /// What the operating system said.
        #[source]
        source: io::Error,
    },
    /// Every u32 owner id of this region generation has been handed out.
    #[error(
        "all 4294967295 owner ids of this region generation are used up; re-create the region \
         to start again from 1"
    )]
    Exhausted,
}

/// The crate's result type.
pub type Result<T, E = Error> = std::result::Result<T, E>;

/// The name registry of one region generation. See the [crate docs](crate).
///
/// Methods take `&self`; the registry is `Send + Sync` and can be shared
/// between threads.
#[derive(Debug)]
pub struct IdRegistry {
    store_dir: PathBuf,
    lock_path: PathBuf,
    generation: u64,
    /// name -> id, for names this process has resolved. Ids never change
    /// while the generation's table exists, so entries never go stale; the
    /// memo is cleared when the table is found missing (dropped after
    /// [`KEPT_GENERATIONS`] newer generations came).
    memo: Mutex<HashMap<String, OwnerId>>,
    /// Registry cycles run so far by this handle (a memoised answer runs
    /// none), so callers can tell whether the store's files may have changed.
    cycles: std::sync::atomic::AtomicU64,
}

impl IdRegistry {
    /// Opens (creating if needed) the registry in `store_dir`, serialised by
    /// the global lockfile `lock_file`, for the region incarnation
    /// `generation` (the value from the region header).
    ///
    /// Runs one lock + sled cycle, so a bad lockfile or store is reported
    /// here. If `generation` was not seen before, its id table starts empty.
    ///
    /// # Errors
    ///
    /// [`Error::Lock`] if the lockfile cannot be created or locked,
    /// [`Error::Store`] if the store directory cannot be created or is not
    /// a cachem-ids store, or is corrupt.
    pub fn open(
        store_dir: impl AsRef<Path>,
        lock_file: impl AsRef<Path>,
        generation: u64,
    ) -> Result<IdRegistry> {
        let reg = IdRegistry::new(store_dir, lock_file, generation);
        reg.cycle(|_| Ok(()))?;
        Ok(reg)
    }

    /// Like [`open`](Self::open), without the checking cycle: no I/O here,
    /// a bad lockfile or store is reported by the first call that needs
    /// them.
    pub fn new(store_dir: impl AsRef<Path>, lock_file: impl AsRef<Path>, generation: u64) -> IdRegistry {
        IdRegistry {
            store_dir: store_dir.as_ref().to_path_buf(),
            lock_path: lock_file.as_ref().to_path_buf(),
            generation,
            memo: Mutex::new(HashMap::new()),
            cycles: std::sync::atomic::AtomicU64::new(0),
        }
    }

    /// How many lock + sled cycles this registry has run (answers from the
    /// memo run none): sled may have written files in the store only when
    /// this changed.
    pub fn cycles(&self) -> u64 {
        self.cycles.load(std::sync::atomic::Ordering::Relaxed)
    }

    /// The region generation this registry serves.
    pub fn generation(&self) -> u64 {
        self.generation
    }

    /// The store directory.
    pub fn store_dir(&self) -> &Path {
        &self.store_dir
    }

    /// The global lockfile.
    pub fn lock_file(&self) -> &Path {
        &self.lock_path
    }

    /// The id of `name`, registering it if needed: the same name gives the
    /// same id in every process (`cachem_id(name)`).
    ///
    /// A name this process resolved before is answered from memory.
    ///
    /// # Errors
    ///
    /// [`Error::InvalidName`] for an empty name, one over
    /// [`MAX_NAME_LEN`] bytes or one containing NUL; [`Error::Exhausted`]
    /// when no id is left; [`Error::Lock`] / [`Error::Store`] as for
    /// [`open`](Self::open).
    pub fn id(&self, name: &str) -> Result<OwnerId> {
        if let Some(id) = self.memo_get(name) {
            return Ok(id);
        }
        validate_name(name)?;
        let id = self.cycle(|s| s.id_of(name))?;
        self.memo_put(name, id);
        Ok(id)
    }

    /// The ids of `names`, in order, registering those not yet known, all in
    /// at most one lock + sled cycle.
    ///
    /// # Errors
    ///
    /// As for [`id`](Self::id); if any name is invalid, nothing is
    /// registered.
    pub fn ids(&self, names: &[&str]) -> Result<Vec<OwnerId>> {
        {
            let memo = self.memo();
            let hits: Vec<OwnerId> = names.iter().map_while(|n| memo.get(*n).copied()).collect();
            if hits.len() == names.len() {
                return Ok(hits);
            }
        }
        for name in names {
            validate_name(name)?;
        }
        // One cycle resolves every name, memoised or not, so the answer
        // comes from a single view of the store.
        let found = self.cycle(|s| {
            let map = s.ids_of(names)?;
            names
                .iter()
                .map(|n| {
                    map.get(*n)
                        .copied()
                        .ok_or_else(|| s.corrupt(format!("name {n:?} was not resolved (internal error)")))
                })
                .collect::<Result<Vec<OwnerId>>>()
        })?;
        let mut memo = self.memo();
        for (name, id) in names.iter().zip(&found) {
            memo.insert((*name).to_owned(), *id);
        }
        drop(memo);
        Ok(found)
    }

    /// A fresh id, never handed out before for this region generation
    /// (`cachem_id(NULL)`). It has no name.
    ///
    /// # Errors
    ///
    /// [`Error::Exhausted`] when no id is left; [`Error::Lock`] /
    /// [`Error::Store`] as for [`open`](Self::open).
    pub fn unique_id(&self) -> Result<OwnerId> {
        self.cycle(|s| {
            let (id, next) = allocate(s.next()?)?;
            s.tree.insert(KEY_NEXT, &next.to_be_bytes()).map_err(|e| s.err(e))?;
            Ok(id)
        })
    }

    /// The id of `name` if it is registered; never registers it.
    ///
    /// # Errors
    ///
    /// As for [`id`](Self::id), except [`Error::Exhausted`].
    pub fn lookup(&self, name: &str) -> Result<Option<OwnerId>> {
        if let Some(id) = self.memo_get(name) {
            return Ok(Some(id));
        }
        validate_name(name)?;
        let found = self.cycle(|s| s.get_name(name))?;
        if let Some(id) = found {
            self.memo_put(name, id);
        }
        Ok(found)
    }

    /// The name registered for `id`, if any. Ids from
    /// [`unique_id`](Self::unique_id) and [`OwnerId::PROCESS`] have none.
    ///
    /// # Errors
    ///
    /// [`Error::Lock`] / [`Error::Store`] as for [`open`](Self::open).
    pub fn name_of(&self, id: OwnerId) -> Result<Option<String>> {
        if id.is_process() {
            return Ok(None);
        }
        let known = self.memo().iter().find(|(_, v)| **v == id).map(|(n, _)| n.clone());
        if let Some(name) = known {
            return Ok(Some(name));
        }
        self.cycle(|s| {
            let key = id_key(id);
            match s.tree.get(key).map_err(|e| s.err(e))? {
                None => Ok(None),
                Some(v) => String::from_utf8(v.to_vec())
                    .map(Some)
                    .map_err(|_| s.corrupt(format!("the name of id {id} is not UTF-8"))),
            }
        })
    }

    /// Every registered name with its id, ordered by id (for status output).
    ///
    /// # Errors
    ///
    /// [`Error::Lock`] / [`Error::Store`] as for [`open`](Self::open).
    pub fn names(&self) -> Result<Vec<(String, OwnerId)>> {
        self.cycle(|s| s.all_names())
    }

    /// Makes this generation's table exactly `names` (a region's name
    /// table, ids as the region gave them) with the counter at `next`, and
    /// drops every other generation's table: the store then mirrors the
    /// region (`cachem ids --sync`). One atomic batch: a crash leaves the
    /// old table or the new one. Names are written as given (the region
    /// checked them when it registered them).
    ///
    /// # Errors
    ///
    /// [`Error::Lock`] / [`Error::Store`] / [`Error::NoSpace`] as for
    /// [`open`](Self::open).
    pub fn mirror(&self, names: &[(String, OwnerId)], next: u64) -> Result<MirrorReport> {
        let r = self.cycle(|s| {
            let mut want: HashMap<Vec<u8>, Vec<u8>> = HashMap::with_capacity(2 * names.len() + 1);
            let mut next = next.max(1);
            for (name, id) in names {
                want.insert(name_key(name), id.get().to_be_bytes().to_vec());
                want.insert(id_key(*id).to_vec(), name.as_bytes().to_vec());
                next = next.max(u64::from(id.get()) + 1);
            }
            want.insert(KEY_NEXT.to_vec(), next.to_be_bytes().to_vec());
            let mut batch = sled::Batch::default();
            let (mut removed, mut kept) = (0, 0);
            for entry in s.tree.iter() {
                let (k, v) = entry.map_err(|e| s.err(e))?;
                match want.get(&*k) {
                    None => {
                        removed += usize::from(k.first() == Some(&PREFIX_NAME));
                        batch.remove(k);
                    }
                    Some(w) if *w == *v => {
                        kept += usize::from(k.first() == Some(&PREFIX_NAME));
                        want.remove(&*k);
                    }
                    Some(_) => {}
                }
            }
            let written = want.keys().filter(|k| k.first() == Some(&PREFIX_NAME)).count();
            for (k, v) in want {
                batch.insert(k, v);
            }
            s.tree.apply_batch(batch).map_err(|e| s.err(e))?;
            let dropped = s.keep_only_this_generation()?;
            Ok(MirrorReport { written, removed, unchanged: kept, dropped_generations: dropped })
        })?;
        // The memo may hold names of a table that was just replaced.
        self.memo().clear();
        Ok(r)
    }

    /// Runs `f` inside a lock + sled cycle, with the global lockfile held and
    /// sled open, then flushes and releases as usual. Only for crash tests
    /// (a process killed here must not harm the registry).
    /// `f` runs with the lockfile held and sled open, in this process.
    #[doc(hidden)]
    pub fn hold_open_for_test(&self, f: impl FnOnce()) -> Result<()> {
        self.cycle(|s| {
            // Leave an unflushed write behind, like an interrupted call.
            s.tree.insert(b"x-test", b"pending".as_slice()).map_err(|e| s.err(e))?;
            f();
            Ok(())
        })
    }

    /// The memo. A panic while it was held cannot leave a wrong entry
    /// behind, so poisoning is ignored.
    fn memo(&self) -> MutexGuard<'_, HashMap<String, OwnerId>> {
        self.memo.lock().unwrap_or_else(std::sync::PoisonError::into_inner)
    }

    fn memo_get(&self, name: &str) -> Option<OwnerId> {
        self.memo().get(name).copied()
    }

    fn memo_put(&self, name: &str, id: OwnerId) {
        self.memo().insert(name.to_owned(), id);
    }

    /// One cycle, in this process: lock, open sled, check format and
    /// generation, run `f`, flush, drop sled, unlock.
    fn cycle<T>(&self, f: impl FnOnce(&Session<'_>) -> Result<T>) -> Result<T> {
        self.cycles.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
        let lock = LockGuard::acquire(&self.lock_path)?;
        let db = open_sled(&self.store_dir)?;
        let session = Session::start(&db, &self.store_dir, self.generation)?;
        let fresh = session.fresh_generation;
        let out = f(&session)?;
        db.flush().map_err(|e| session.err(e))?;
        drop(session);
        drop(db);
        drop(lock);
        if fresh {
            // The table of our generation was (re)created empty: whatever
            // this registry memoised no longer holds.
            self.memo().clear();
        }
        Ok(out)
    }
}

/// What [`IdRegistry::mirror`] changed.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct MirrorReport {
    /// Names written (new, or with another id than the store had).
    pub written: usize,
    /// Names removed (in the store's table, not in the region's).
    pub removed: usize,
    /// Names the store had already, with the same id.
    pub unchanged: usize,
    /// Tables of other generations dropped.
    pub dropped_generations: usize,
}

/// A store's most recent table, read by [`read_store`].
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct StoreTable {
    /// The region generation the table belongs to.
    pub generation: u64,
    /// Every name with its id, ordered by id.
    pub names: Vec<(String, OwnerId)>,
    /// The next id the table would hand out.
    pub next: u64,
}

/// Reads the table of the most recently used generation of the store in
/// `store_dir` (under `lock_file`), without registering anything and
/// without knowing the generation: for inspecting a store whose region is
/// gone. `Ok(None)` if there is no store there (nothing is created then)
/// or it holds no table yet. Runs sled in this process, like every
/// registry call (see the crate docs for who may).
///
/// # Errors
///
/// [`Error::Lock`] / [`Error::Store`] / [`Error::NoSpace`] as for
/// [`IdRegistry::open`].
pub fn read_store(store_dir: impl AsRef<Path>, lock_file: impl AsRef<Path>) -> Result<Option<StoreTable>> {
    let dir = store_dir.as_ref();
    match std::fs::symlink_metadata(dir) {
        Err(e) if e.kind() == io::ErrorKind::NotFound => return Ok(None),
        Err(e) => return Err(Error::Store { path: dir.to_path_buf(), reason: e.to_string() }),
        Ok(m) if !m.is_dir() => {
            return Err(Error::Store { path: dir.to_path_buf(), reason: "not a directory".into() })
        }
        Ok(_) => {}
    }
    let lock = LockGuard::acquire(lock_file.as_ref())?;
    let db = open_sled(dir)?;
    let err = |e: sled::Error| store_err(dir, e);
    let corrupt =
        |reason: String| Error::Store { path: dir.to_path_buf(), reason: format!("corrupt: {reason}") };
    match db.get(KEY_FORMAT).map_err(err)? {
        Some(v) if v == FORMAT => {}
        Some(_) => return Err(corrupt("not a store of this version".into())),
        None if db.is_empty() && db.tree_names().len() <= 1 => return Ok(None),
        None => return Err(corrupt("a sled database that is not a cachem-ids store (no format key)".into())),
    }
    let gens = db.get(KEY_GENERATIONS).map_err(err)?.unwrap_or_default();
    if gens.len() % 8 != 0 {
        return Err(corrupt(format!("the generation list has {} bytes, not a multiple of 8", gens.len())));
    }
    let Some(last) = gens.chunks_exact(8).last() else { return Ok(None) };
    let mut b = [0u8; 8];
    b.copy_from_slice(last);
    let generation = u64::from_be_bytes(b);
    let session = Session {
        db: db.clone(),
        generation,
        path: dir,
        tree: db.open_tree(tree_name(generation)).map_err(err)?,
        fresh_generation: false,
    };
    let names = session.all_names()?;
    let next = session.next()?;
    drop(session);
    drop(db);
    drop(lock);
    Ok(Some(StoreTable { generation, names, next }))
}

/// The global lockfile, held exclusively until dropped.
struct LockGuard {
    file: File,
}

impl LockGuard {
    fn acquire(path: &Path) -> Result<LockGuard> {
        let lock_err = |source| Error::Lock { path: path.to_path_buf(), source };
        let file = OpenOptions::new()
            .read(true)
            .write(true)
            .create(true)
            .truncate(false)
            // Never through a symlink planted at the lockfile's path.
            .custom_flags(cachem_core::region::OPEN_FLAGS)
            .open(path)
            .map_err(lock_err)?;
        // Bounded: another process holding the lockfile for longer than
        // LOCK_TIMEOUT is an error, not a hang. std has inherent File::lock
        // methods now; call fs2 explicitly.
        let deadline = Instant::now() + LOCK_TIMEOUT;
        let mut pause = Duration::from_micros(100);
        loop {
            match fs2::FileExt::try_lock_exclusive(&file) {
                Ok(()) => return Ok(LockGuard { file }),
                Err(e) if e.kind() != io::ErrorKind::WouldBlock => return Err(lock_err(e)),
                Err(_) if Instant::now() >= deadline => {
                    return Err(lock_err(io::Error::new(
                        io::ErrorKind::TimedOut,
                        format!("another process held it for more than {} s", LOCK_TIMEOUT.as_secs()),
                    )))
                }
                Err(_) => {
                    std::thread::sleep(pause);
                    pause = (pause * 2).min(Duration::from_millis(10));
                }
            }
        }
    }
}

impl Drop for LockGuard {
    fn drop(&mut self) {
        // Closing the file releases the flock anyway; unlock first so the
        // next process does not wait for the close.
        let _ = fs2::FileExt::unlock(&self.file);
    }
}

/// Opens the sled database in `dir`.
///
/// sled takes its own `flock` on `<dir>/db` and fails at once if it is
/// held. Under the global lockfile that can only be a sled instance of this
/// process that was dropped but whose file is still being closed by one of
/// sled's threads, so "could not acquire lock" is retried for a while.
fn open_sled(dir: &Path) -> Result<sled::Db> {
    let deadline = Instant::now() + SLED_LOCK_RETRY;
    let mut pause = Duration::from_micros(100);
    loop {
        // No periodic flusher thread (sled's `flush_every_ms` is a
        // doc-hidden builder of 0.34): each cycle flushes explicitly before
        // dropping the Db.
        let config = sled::Config::new().path(dir).cache_capacity(4 << 20).flush_every_ms(None);
        // sled answers most damage with an error, but some corrupt files
        // make it panic inside `open`. As a last resort the panic is caught
        // here and reported as Error::Store; nothing of sled's state
        // survives the unwind (the half-built Db is dropped).
        let opened = catch_unwind(AssertUnwindSafe(|| config.open()));
        let err = match opened {
            Ok(Ok(db)) => return Ok(db),
            Ok(Err(e)) => e,
            Err(panic) => {
                let what = panic
                    .downcast_ref::<&str>()
                    .map(|s| (*s).to_owned())
                    .or_else(|| panic.downcast_ref::<String>().cloned())
                    .unwrap_or_else(|| "unknown panic".to_owned());
                return Err(Error::Store {
                    path: dir.to_path_buf(),
                    reason: format!("sled panicked while opening it (corrupt?): {what}"),
                });
            }
        };
        let busy = matches!(&err, sled::Error::Io(e) if e.to_string().contains("could not acquire lock"));
        if !busy || Instant::now() >= deadline {
            return Err(match err {
                sled::Error::Io(e) if is_no_space(&e) => {
                    Error::NoSpace { path: dir.to_path_buf(), source: e }
                }
                err => Error::Store {
                    path: dir.to_path_buf(),
                    reason: format!("cannot open it as a sled database: {err}"),
                },
            });
        }
        std::thread::sleep(pause);
        pause = (pause * 2).min(Duration::from_millis(10));
    }
}

/// The open store of one cycle, positioned on this generation's tree.
struct Session<'a> {
    db: sled::Db,
    generation: u64,
    path: &'a Path,
    tree: sled::Tree,
    /// The generation's table did not exist and was created empty.
    fresh_generation: bool,
}

impl<'a> Session<'a> {
    fn start(db: &sled::Db, path: &'a Path, generation: u64) -> Result<Session<'a>> {
        let err = |e: sled::Error| store_err(path, e);
        let corrupt = |reason: String| Error::Store { path: path.to_path_buf(), reason };

        // Is this our store?
        match db.get(KEY_FORMAT).map_err(err)? {
            Some(v) if v == FORMAT => {}
            Some(v) => {
                return Err(corrupt(format!(
                    "not a store of this version (format {:?}, expected {:?})",
                    String::from_utf8_lossy(&v),
                    String::from_utf8_lossy(FORMAT)
                )))
            }
            None => {
                let foreign = !db.is_empty() || db.tree_names().len() > 1;
                if foreign {
                    return Err(corrupt(
                        "a sled database that is not a cachem-ids store (no format key)".into(),
                    ));
                }
                db.insert(KEY_FORMAT, FORMAT).map_err(err)?;
            }
        }

        // Which generations have tables?
        let mut gens: Vec<u64> = match db.get(KEY_GENERATIONS).map_err(err)? {
            None => Vec::new(),
            Some(v) if v.len() % 8 == 0 => v
                .chunks_exact(8)
                .map(|c| {
                    let mut b = [0u8; 8];
                    b.copy_from_slice(c);
                    u64::from_be_bytes(b)
                })
                .collect(),
            Some(v) => {
                return Err(corrupt(format!(
                    "the generation list has {} bytes, not a multiple of 8",
                    v.len()
                )))
            }
        };
        let name = tree_name(generation);
        let fresh_generation = !gens.contains(&generation);
        if gens.last() != Some(&generation) {
            // Most recently used last. A generation seen before is only
            // moved; a new one starts with an empty table.
            gens.retain(|g| *g != generation);
            gens.push(generation);
            let evicted = gens.len().saturating_sub(KEPT_GENERATIONS);
            gens.drain(..evicted);
            let list: Vec<u8> = gens.iter().flat_map(|g| g.to_be_bytes()).collect();
            db.insert(KEY_GENERATIONS, list).map_err(err)?;
        }
        if fresh_generation {
            // Drop every table not in the list: the evicted ones, leftovers
            // of a process killed between the two steps, and a stale table
            // of our own generation.
            let keep: Vec<String> =
                gens.iter().filter(|g| **g != generation).map(|g| tree_name(*g)).collect();
            for t in db.tree_names() {
                let is_ours = t.starts_with(TREE_PREFIX.as_bytes());
                if is_ours && !keep.iter().any(|k| k.as_bytes() == &*t) {
                    db.drop_tree(&t).map_err(err)?;
                }
            }
        }
        let tree = db.open_tree(name).map_err(err)?;
        Ok(Session { db: db.clone(), generation, path, tree, fresh_generation })
    }

    fn err(&self, e: sled::Error) -> Error {
        store_err(self.path, e)
    }

    /// Makes this generation the only one in the store (its list and its
    /// tables); returns how many other tables were dropped.
    fn keep_only_this_generation(&self) -> Result<usize> {
        let err = |e| self.err(e);
        self.db.insert(KEY_GENERATIONS, &self.generation.to_be_bytes()).map_err(err)?;
        let ours = tree_name(self.generation);
        let mut dropped = 0;
        for t in self.db.tree_names() {
            if t.starts_with(TREE_PREFIX.as_bytes()) && *t != *ours.as_bytes() {
                self.db.drop_tree(&t).map_err(err)?;
                dropped += 1;
            }
        }
        Ok(dropped)
    }

    /// Every name of the table with its id, ordered by id.
    fn all_names(&self) -> Result<Vec<(String, OwnerId)>> {
        let mut all = Vec::new();
        for entry in self.tree.scan_prefix([PREFIX_NAME]) {
            let (k, v) = entry.map_err(|e| self.err(e))?;
            let name = std::str::from_utf8(&k[1..])
                .map_err(|_| self.corrupt("a registered name is not UTF-8".into()))?;
            all.push((name.to_owned(), self.decode_id(name, &v)?));
        }
        all.sort_by_key(|(_, id)| *id);
        Ok(all)
    }

    fn corrupt(&self, reason: String) -> Error {
        Error::Store { path: self.path.to_path_buf(), reason: format!("corrupt: {reason}") }
    }

    /// The next id to hand out (u64, so that 2^32 means "none left").
    fn next(&self) -> Result<u64> {
        match self.tree.get(KEY_NEXT).map_err(|e| self.err(e))? {
            None => Ok(1),
            Some(v) => match <[u8; 8]>::try_from(&*v) {
                Ok(b) if u64::from_be_bytes(b) >= 1 => Ok(u64::from_be_bytes(b)),
                _ => Err(self.corrupt(format!("the id counter is {:?}", &*v))),
            },
        }
    }

    fn decode_id(&self, name: &str, v: &[u8]) -> Result<OwnerId> {
        match <[u8; 4]>::try_from(v) {
            Ok(b) if u32::from_be_bytes(b) != 0 => Ok(OwnerId(u32::from_be_bytes(b))),
            _ => Err(self.corrupt(format!("the id of {name:?} is {v:?}"))),
        }
    }

    fn get_name(&self, name: &str) -> Result<Option<OwnerId>> {
        match self.tree.get(name_key(name)).map_err(|e| self.err(e))? {
            None => Ok(None),
            Some(v) => self.decode_id(name, &v).map(Some),
        }
    }

    fn id_of(&self, name: &str) -> Result<OwnerId> {
        let found = self.ids_of(&[name])?;
        found.get(name).copied().ok_or_else(|| self.corrupt(format!("name {name:?} was not resolved")))
    }

    /// Resolves `names` (valid, possibly repeated), registering the unknown
    /// ones in one atomic batch.
    fn ids_of<'n>(&self, names: &[&'n str]) -> Result<HashMap<&'n str, OwnerId>> {
        let mut found = HashMap::with_capacity(names.len());
        let mut batch = sled::Batch::default();
        let mut next = None;
        for name in names {
            if found.contains_key(name) {
                continue;
            }
            let id = match self.get_name(name)? {
                Some(id) => id,
                None => {
                    let (id, after) = allocate(match next {
                        Some(n) => n,
                        None => self.next()?,
                    })?;
                    next = Some(after);
                    batch.insert(name_key(name), &id.get().to_be_bytes());
                    batch.insert(&id_key(id)[..], name.as_bytes());
                    id
                }
            };
            found.insert(*name, id);
        }
        if let Some(n) = next {
            // Counter and names in one batch: sled applies it atomically,
            // so a crash never leaves a name without its counter bump.
            batch.insert(KEY_NEXT, &n.to_be_bytes());
            self.tree.apply_batch(batch).map_err(|e| self.err(e))?;
        }
        Ok(found)
    }
}

fn store_err(path: &Path, e: sled::Error) -> Error {
    match e {
        sled::Error::Io(e) if is_no_space(&e) => Error::NoSpace { path: path.to_path_buf(), source: e },
        e => Error::Store { path: path.to_path_buf(), reason: e.to_string() },
    }
}

/// A full filesystem (ENOSPC) or quota (EDQUOT): the store is fine, the
/// disk is not.
fn is_no_space(e: &io::Error) -> bool {
    matches!(e.raw_os_error(), Some(libc::ENOSPC) | Some(libc::EDQUOT))
}

/// Hands out `next` and returns the counter value after it.
fn allocate(next: u64) -> Result<(OwnerId, u64)> {
    match u32::try_from(next) {
        Ok(id) if id != 0 => Ok((OwnerId(id), next + 1)),
        _ => Err(Error::Exhausted),
    }
}

fn tree_name(generation: u64) -> String {
    format!("{TREE_PREFIX}{generation:016x}")
}

fn name_key(name: &str) -> Vec<u8> {
    let mut k = Vec::with_capacity(1 + name.len());
    k.push(PREFIX_NAME);
    k.extend_from_slice(name.as_bytes());
    k
}

fn id_key(id: OwnerId) -> [u8; 5] {
    let b = id.get().to_be_bytes();
    [PREFIX_ID, b[0], b[1], b[2], b[3]]
}

/// Checks a name before it is registered or looked up.
/// Checks a name for registration: not empty, at most [`MAX_NAME_LEN`]
/// bytes, no NUL.
pub fn validate_name(name: &str) -> Result<()> {
    let reason = if name.is_empty() {
        "the name is empty".to_owned()
    } else if name.len() > MAX_NAME_LEN {
        format!("the name is {} bytes long, more than the limit of {MAX_NAME_LEN}", name.len())
    } else if let Some(at) = name.bytes().position(|b| b == 0) {
        format!("the name contains a NUL byte at offset {at}")
    } else {
        return Ok(());
    };
    Err(Error::InvalidName { reason })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn names_are_validated() {
        assert!(validate_name("mod_status").is_ok());
        assert!(validate_name(&"x".repeat(MAX_NAME_LEN)).is_ok());
        for (bad, why) in [
            (String::new(), "empty"),
            ("x".repeat(MAX_NAME_LEN + 1), "4097 bytes"),
            ("a\0b".to_owned(), "NUL byte at offset 1"),
        ] {
            match validate_name(&bad) {
                Err(Error::InvalidName { reason }) => {
                    assert!(reason.contains(why), "{reason:?} lacks {why:?}")
                }
                other => panic!("{bad:?}: {other:?}"),
            }
        }
    }

    #[test]
    fn allocation_is_dense_and_stops_at_u32_max() {
        assert_eq!(allocate(1).ok(), Some((OwnerId(1), 2)));
        assert_eq!(allocate(u64::from(u32::MAX)).ok(), Some((OwnerId(u32::MAX), 1 << 32)));
        assert!(matches!(allocate(1 << 32), Err(Error::Exhausted)));
        assert!(matches!(allocate(0), Err(Error::Exhausted)));
    }

    #[test]
    fn exhausted_counter_is_an_error_not_a_wrap() -> Result<()> {
        let dir = tempfile::tempdir().map_err(|e| Error::Lock { path: "tempdir".into(), source: e })?;
        let reg = IdRegistry::open(dir.path().join("s"), dir.path().join("l"), 7)?;
        reg.cycle(|s| {
            s.tree.insert(KEY_NEXT, &u64::from(u32::MAX).to_be_bytes()).map_err(|e| s.err(e))?;
            Ok(())
        })?;
        assert_eq!(reg.unique_id()?, OwnerId(u32::MAX));
        assert!(matches!(reg.unique_id(), Err(Error::Exhausted)));
        assert!(matches!(reg.id("late"), Err(Error::Exhausted)));
        assert_eq!(reg.lookup("late")?, None);
        Ok(())
    }

    /// Issue 22 finding 7: a full disk says to free space, never to
    /// remove the store (which would silently remap owners).
    #[test]
    fn a_full_disk_says_free_space_not_remove_the_store() {
        let path = Path::new("/var/lib/x.ids");
        for errno in [libc::ENOSPC, libc::EDQUOT] {
            let e = store_err(path, sled::Error::Io(io::Error::from_raw_os_error(errno)));
            assert!(matches!(e, Error::NoSpace { .. }), "{e:?}");
            let msg = e.to_string();
            assert!(msg.contains("free space there"), "{msg}");
            assert!(msg.contains("/var/lib/x.ids"), "{msg}");
            assert!(!msg.contains("re-assigned") && !msg.contains("remove it"), "{msg}");
        }
        let other = store_err(path, sled::Error::Io(io::Error::from_raw_os_error(libc::EIO)));
        assert!(matches!(other, Error::Store { .. }), "{other:?}");
    }

    #[test]
    fn keys_encode_as_documented() {
        assert_eq!(name_key("ab"), b"nab".to_vec());
        assert_eq!(id_key(OwnerId(0x01020304)), *b"i\x01\x02\x03\x04");
        assert_eq!(tree_name(0xabc), "gen-0000000000000abc");
    }
}

//! # cachem
//!
//! Cooperating processes on one Linux host share small state records through
//! one mapped memory region: insert and delete records, iterate the records
//! of an owner, and clean up after a process that exits or is killed. Modelled
//! on the Apache module mod_cachem, made safe: a process killed at any
//! instruction, even holding the lock, leaves a region the next process
//! recovers; a dead process's process-scoped records are reaped even if its
//! pid is reused.
//!
//! ```
//! # let dir = std::env::temp_dir().join(format!("cachem-doc-{}", std::process::id()));
//! use cachem::{Cache, Config, OwnerId};
//!
//! // Create or attach (mod_cachem's cachem_handler_init).
//! let cache = Cache::open(&Config::named("myapp").dir(&dir).size(1 << 20))?;
//! let owner = cache.id("mod_status")?; // cachem_id(name): same id in every process
//! let fresh = cache.unique_id()?; // cachem_id(NULL)
//! assert_ne!(owner, fresh);
//!
//! let mut g = cache.lock()?; // cachem_lock (recovers if a holder died)
//! let r = g.insert(owner, b"state")?; // cachem_add -> RecordId
//! let bytes: &[u8] = g.get(r).unwrap(); // cachem_get
//! assert_eq!(bytes, b"state");
//! g.get_mut(r).unwrap()[0] = b'S';
//! let _mine = g.insert(OwnerId::PROCESS, b"gone when this process exits")?;
//!
//! // ACCESSING ALL RECORDS WITH A SPECIFIC ID
//! let mut index = None;
//! while let Some(i) = g.next_of_owner(owner, index) {
//!     let _ptr: &[u8] = g.get(i).unwrap();
//!     index = Some(i);
//! }
//! for (_id, bytes) in g.iter_owner(owner) {
//!     assert_eq!(bytes, b"State");
//! }
//! // DELETING ALL RECORDS WITH CURRENT PID AND SPECIFIC ID
//! let me = std::process::id();
//! while let Some(i) = g.next_of_owner_pid(owner, me, None) {
//!     g.remove(i)?; // cachem_delete (the hole is reclaimed by a later compaction)
//! }
//! let n = g.purge(owner, me)?; // cachem_delete_pid
//! assert_eq!(n, 0);
//! drop(g); // cachem_unlock
//!
//! let report = cache.reap()?; // purge dead processes' records
//! assert_eq!(report.records, 0);
//! let status = cache.status()?; // for `cachem stat`
//! assert_eq!(status.region.records, 1); // our process-scoped record
//! assert_eq!(status.owner_name(owner), Some("mod_status"));
//! cache.destroy()?;
//! # Ok::<(), cachem::Error>(())
//! ```
//!
//! Layers: [`layout`] (the pure layout engine), [`region`] (mapping, lock,
//! recovery, reaping), `cachem_ids` (the owner-id registry), and this
//! crate's [`Cache`], which ties a region and its registry together.
#![forbid(unsafe_code)]

pub use cachem_core::*;
pub use cachem_ids::{read_store, Error as IdError, IdRegistry, MirrorReport, StoreTable};

use std::collections::BTreeMap;

mod json;
mod memo;
mod snapshot;
pub use snapshot::SnapshotReport;
use std::path::{Path, PathBuf};

/// How to open a cache: which region, where, how large.
#[derive(Clone, Debug)]
pub struct Config {
    name: Option<String>,
    size: Option<u64>,
    dir: Option<PathBuf>,
    lock_file: Option<PathBuf>,
    id_store: Option<PathBuf>,
    mode: u32,
    attach_any_size: bool,
    create: bool,
    reap_all: bool,
    no_reap: bool,
    compaction: Compaction,
    owner: Option<(u32, u32)>,
    lock_timeout: Option<std::time::Duration>,
    trust_dir: bool,
}

impl Config {
    /// A named region: an absolute path, or a name in the runtime directory
    /// (`.dir()`, else `$CACHEM_DIR`, else `/dev/shm/cachem`).
    pub fn named(name: impl Into<String>) -> Config {
        Config {
            name: Some(name.into()),
            size: None,
            dir: None,
            lock_file: None,
            id_store: None,
            mode: 0o600,
            attach_any_size: false,
            create: true,
            reap_all: false,
            no_reap: false,
            compaction: Compaction::Deferred,
            owner: None,
            lock_timeout: None,
            trust_dir: false,
        }
    }

    /// An anonymous region of `size` bytes, shared with children forked
    /// after [`Cache::open`]. It has no files: its names live in the
    /// region, and [`Config::lock_file`] / [`Config::id_store`] are refused
    /// for it (`Error::OptionMismatch`, `CACHEM_E_INVALID_ARGUMENT`).
    pub fn anonymous(size: u64) -> Config {
        Config { name: None, size: Some(size), ..Config::named("") }
    }

    /// Size to create with (and to expect when attaching).
    pub fn size(mut self, size: u64) -> Config {
        self.size = Some(size);
        self
    }

    /// Runtime directory for relative names.
    pub fn dir(mut self, dir: impl AsRef<Path>) -> Config {
        self.dir = Some(dir.as_ref().to_path_buf());
        self
    }

    /// Vouch for the runtime directory (and the lockfile's and id store's):
    /// skip the check that it is not a symlink, not another user's and not
    /// writable by everyone (`Error::UnsafeDir`; see `docs/operations.md`,
    /// "The runtime directory"). Files are still never opened through a
    /// symlink. Default false.
    pub fn trust_dir(mut self, trust: bool) -> Config {
        self.trust_dir = trust;
        self
    }

    /// Global lockfile (default `<region>.lock`).
    pub fn lock_file(mut self, path: impl AsRef<Path>) -> Config {
        self.lock_file = Some(path.as_ref().to_path_buf());
        self
    }

    /// Id-registry directory (default `<region>.ids/`).
    pub fn id_store(mut self, path: impl AsRef<Path>) -> Config {
        self.id_store = Some(path.as_ref().to_path_buf());
        self
    }

    /// Permission bits of created files (default `0o600`).
    pub fn mode(mut self, mode: u32) -> Config {
        self.mode = mode;
        self
    }

    /// Attach to an existing region whatever its size.
    pub fn attach_any_size(mut self) -> Config {
        self.attach_any_size = true;
        self
    }

    /// Attach only: fail with `NotFound` instead of creating.
    pub fn attach_only(mut self) -> Config {
        self.create = false;
        self
    }

    /// At creation: reaping purges every record of a dead process, not only
    /// its process-scoped ones.
    pub fn reap_all_records_of_dead_processes(mut self) -> Config {
        self.reap_all = true;
        self
    }

    /// Never reap: at creation, for the region; when attaching, for this
    /// process (needed to attach from another pid namespace).
    pub fn no_reap(mut self) -> Config {
        self.no_reap = true;
        self
    }

    /// At creation: the compaction policy (default [`Compaction::Deferred`];
    /// [`Compaction::Eager`] keeps the block section compacted at all times).
    /// An existing region keeps the policy it was created with.
    pub fn compaction(mut self, policy: Compaction) -> Config {
        self.compaction = policy;
        self
    }

    /// Give everything cachem creates for the region — the region file, its
    /// lockfile, the id store and every file written into it, the runtime
    /// directory when cachem made it — to user `uid` and group `gid`, with
    /// the configured mode. For a server started as root whose workers run
    /// as another user (Apache's `User`/`Group`). Only root may give files
    /// to another user: anyone else gets an error at open.
    ///
    /// Without this option, files a root process makes later for an existing
    /// region (a re-created lockfile, sled's files) take the region file's
    /// owner, as they take its mode.
    pub fn owner(mut self, uid: u32, gid: u32) -> Config {
        self.owner = Some((uid, gid));
        self
    }

    /// How long a lock waits for a holder that is alive but does not let
    /// go (stopped by SIGSTOP or a debugger, looping) before the call fails
    /// with [`Error::LockTimeout`] naming it. `None` (the default): wait as
    /// long as it takes, since the library cannot know how long its
    /// callers hold the lock; servers and tools should set one (mod_cachem
    /// and the CLI use 10 s). With or without it, a lock word naming a
    /// thread that no longer exists is recovered from within one wait
    /// slice (200 ms): see `docs/design.md`, "The lock".
    pub fn lock_timeout(mut self, timeout: Option<std::time::Duration>) -> Config {
        self.lock_timeout = timeout;
        self
    }

    fn region_options(&self) -> RegionOptions {
        RegionOptions {
            size: self.size,
            dir: self.dir.clone(),
            lock_file: self.lock_file.clone(),
            mode: self.mode,
            attach_any_size: self.attach_any_size,
            create: self.create,
            reap_all_records_of_dead_processes: self.reap_all,
            no_reap: self.no_reap,
            compaction: self.compaction,
            owner: self.owner,
            lock_timeout: self.lock_timeout,
            trust_dir: self.trust_dir,
        }
    }

    /// The region file this config names (None for an anonymous region).
    pub fn path(&self) -> Result<Option<PathBuf>> {
        self.name.as_deref().map(|n| region::resolve_path(n, self.dir.as_deref())).transpose()
    }
}

/// Removes a named region, its lockfile and its id store, without attaching.
pub fn destroy(config: &Config) -> Result<()> {
    let Some(path) = config.path()? else {
        return Ok(());
    };
    let store = config.id_store.clone().unwrap_or_else(|| ids_path(&path));
    Region::destroy_path(path, &config.region_options())?;
    let _ = std::fs::remove_dir_all(store);
    Ok(())
}

/// Checks a name for registration (the registry's rules and message).
fn check_name(name: &str) -> Result<()> {
    cachem_ids::validate_name(name).map_err(|e| Error::Registry(Box::new(e)))
}

fn exhausted() -> Error {
    Error::Registry(Box::new(IdError::Exhausted))
}

/// The region's name table as strings (a name that is not UTF-8 is shown
/// lossily: names are checked when registered, the bytes are not trusted).
fn names_of(g: &Guard<'_>) -> Vec<(String, OwnerId)> {
    g.names().into_iter().map(|(n, id)| (String::from_utf8_lossy(&n).into_owned(), id)).collect()
}

fn ids_path(region: &Path) -> PathBuf {
    let mut s = region.as_os_str().to_owned();
    s.push(".ids");
    PathBuf::from(s)
}

/// A region and its owner-id registry: the API of mod_cachem.
///
/// Dropping the process's last `Cache` of a region purges the process's
/// process-scoped records ([`OwnerId::PROCESS`]); a process that dies
/// without dropping it is reaped by the next `open`, lock recovery, full
/// insert, or [`Cache::reap`] in any process.
pub struct Cache {
    region: Region,
    /// The id store of a named region (`<region>.ids/`): the sled mirror
    /// the command-line tool writes (see `docs/ids.md`); removed by
    /// [`Cache::destroy`].
    store: Option<PathBuf>,
    /// name -> id for names this handle resolved (lock-free, fork-safe).
    memo: memo::Memo,
    open_reap: ReapReport,
    mode: u32,
    /// The pid that opened this handle: a handle inherited through `fork`
    /// is not counted among the child's own.
    opener: u32,
}

impl Cache {
    /// Creates or attaches the region, then reaps dead processes' records.
    pub fn open(config: &Config) -> Result<Cache> {
        let (region, store) = match &config.name {
            Some(name) => {
                let region = Region::open(name, &config.region_options())?;
                let path = region.path().map(Path::to_path_buf).unwrap_or_default();
                let store = config.id_store.clone().unwrap_or_else(|| ids_path(&path));
                (region, Some(store))
            }
            None => {
                let size = config
                    .size
                    .ok_or(Error::BadSize { size: 0, reason: "an anonymous region needs a size" })?;
                // Options for files an anonymous region does not have are
                // refused, never ignored.
                for (set, option) in
                    [(config.lock_file.is_some(), "lock_file"), (config.id_store.is_some(), "id_store")]
                {
                    if set {
                        return Err(Error::OptionMismatch {
                            path: PathBuf::from("<anonymous>"),
                            option,
                            detail: "an anonymous region has no files: no lockfile, no id store".into(),
                        });
                    }
                }
                // Its names live in the region: nothing in the runtime
                // directory.
                (Region::anonymous_with(size, &config.region_options())?, None)
            }
        };
        // The id store takes the region file's mode (whoever makes it), so a
        // group sharing the region shares its registry too.
        let mode = region
            .path()
            .and_then(|p| std::fs::metadata(p).ok())
            .map(|m| std::os::unix::fs::PermissionsExt::mode(&m.permissions()) & 0o777)
            .unwrap_or(config.mode);
        let (opener, _) = sys::process::me();
        let mut cache =
            Cache { region, store, memo: memo::Memo::new(), open_reap: ReapReport::default(), mode, opener };
        // Counted before anything can fail, so Drop's decrement matches.
        sys::process::handles::opened(cache.region.generation());
        cache.open_reap = cache.reap()?;
        Ok(cache)
    }

    /// The owner id of `name`: the same in every process, for the lifetime
    /// of the region (a graceful restart that re-creates the region keeps
    /// it, through a snapshot). mod_cachem's `cachem_id(name)`.
    ///
    /// Answered from this handle's memo (no lock), else from the region's
    /// name table under the region lock, registering the name there if it
    /// is new. No helper process, no file, no fork. See `docs/ids.md`.
    ///
    /// A thread that holds the lock already gets `AlreadyLocked` for a name
    /// this handle has not resolved yet: use [`Cache::id_in`] with its
    /// guard.
    pub fn id(&self, name: &str) -> Result<OwnerId> {
        if let Some(id) = self.memo.get(name.as_bytes()) {
            return Ok(id);
        }
        self.id_in(&mut self.lock()?, name)
    }

    /// [`Cache::id`] under a guard this thread already holds.
    pub fn id_in(&self, g: &mut Guard<'_>, name: &str) -> Result<OwnerId> {
        if let Some(id) = self.memo.get(name.as_bytes()) {
            return Ok(id);
        }
        check_name(name)?;
        let id = g.register_name(name.as_bytes())?.ok_or_else(exhausted)?;
        self.memo.put(name.as_bytes(), id);
        Ok(id)
    }

    /// The id of `name` if this handle has resolved it before (no lock, no
    /// region access).
    #[inline]
    pub fn memoised(&self, name: &str) -> Option<OwnerId> {
        self.memo.get(name.as_bytes())
    }

    /// [`Cache::unique_id`] under a guard this thread already holds.
    pub fn unique_id_in(&self, g: &mut Guard<'_>) -> Result<OwnerId> {
        g.unique_owner()?.ok_or_else(exhausted)
    }

    /// Owner ids of several names, under one lock.
    pub fn ids(&self, names: &[&str]) -> Result<Vec<OwnerId>> {
        for name in names {
            check_name(name)?;
        }
        let ids = {
            let mut g = self.lock()?;
            names
                .iter()
                .map(|n| g.register_name(n.as_bytes())?.ok_or_else(exhausted))
                .collect::<Result<Vec<_>>>()?
        };
        for (n, id) in names.iter().zip(&ids) {
            self.memo.put(n.as_bytes(), *id);
        }
        Ok(ids)
    }

    /// An owner id never returned before. mod_cachem's `cachem_id(NULL)`.
    pub fn unique_id(&self) -> Result<OwnerId> {
        self.unique_id_in(&mut self.lock()?)
    }

    /// The id of `name` if it was registered (no insert).
    pub fn lookup(&self, name: &str) -> Result<Option<OwnerId>> {
        if let Some(id) = self.memo.get(name.as_bytes()) {
            return Ok(Some(id));
        }
        check_name(name)?;
        let found = self.lock()?.name_lookup(name.as_bytes());
        if let Some(id) = found {
            self.memo.put(name.as_bytes(), id);
        }
        Ok(found)
    }

    /// Every registered name with its id, in registration order.
    pub fn names(&self) -> Result<Vec<(String, OwnerId)>> {
        Ok(names_of(&self.lock()?))
    }

    /// Takes the region lock (recovering first if a holder died).
    #[inline]
    pub fn lock(&self) -> Result<Guard<'_>> {
        self.region.lock()
    }

    /// Largest record this region could ever hold (when empty).
    pub fn max_record_len(&self) -> u64 {
        self.region.max_record_len()
    }

    /// Copies record `id` into `buf` and returns its length, without taking
    /// the lock when no writer is at work (an optimistic read; see
    /// [`Region::get_into`]). `Stale` if the record is gone,
    /// `BufferTooSmall` (with its length) if it does not fit.
    #[inline]
    pub fn get_into(&self, id: RecordId, buf: &mut [u8]) -> Result<usize> {
        self.region.get_into(id, buf)
    }

    /// Calls `f` with a validated copy of record `id` (an optimistic read;
    /// see [`Region::get_into`]).
    pub fn read<R>(&self, id: RecordId, f: impl FnOnce(&[u8]) -> R) -> Result<R> {
        self.region.read(id, f)
    }

    /// Record `id` copied out as a `T` (an optimistic read; see
    /// [`Region::get_into`]). `PodMismatch` if its length is not
    /// `size_of::<T>()`.
    pub fn read_pod<T: bytemuck::Pod>(&self, id: RecordId) -> Result<T> {
        self.region.read_pod(id)
    }

    /// A snapshot of one owner's records: each record's id and a copy of
    /// its bytes, in insertion order, copied under one short lock (through the
    /// owner index, so the lock is held in proportion to the owner's
    /// records). Work on the copies without holding the lock; an id may be
    /// stale by the time it is used.
    pub fn iter_owner_copied(&self, owner: OwnerId) -> Result<std::vec::IntoIter<(RecordId, Vec<u8>)>> {
        let g = self.lock()?;
        let records: Vec<(RecordId, Vec<u8>)> = g.iter_owner(owner).map(|(id, d)| (id, d.to_vec())).collect();
        Ok(records.into_iter())
    }

    /// What the reap at [`Cache::open`] removed.
    pub fn open_reap(&self) -> &ReapReport {
        &self.open_reap
    }

    /// Removes dead processes' records now.
    pub fn reap(&self) -> Result<ReapReport> {
        self.region.lock()?.reap()
    }

    /// Closes every hole left by removes now, in one compaction (see
    /// [`Guard::compact`]). Returns the bytes moved.
    pub fn compact(&self) -> Result<u64> {
        self.region.lock()?.compact()
    }

    /// Removes this process's process-scoped records now.
    pub fn purge_process(&self) -> Result<Removed> {
        self.region.lock()?.purge_process()
    }

    /// Engine status, owner names from the registry, and per-process
    /// liveness.
    pub fn status(&self) -> Result<CacheStatus> {
        let holder = self.region.lock_holder();
        let started = std::time::Instant::now();
        let (region, names, waited) = {
            let g = self.region.lock()?;
            let waited = started.elapsed();
            (g.status()?, names_of(&g), waited)
        };
        let mut st = self.status_of(region, names);
        // The wait is reported only when a holder was there to wait for: an
        // uncontended lock's nanoseconds would make the report's length
        // change from one call to the next (C's length query).
        let waited = if holder.is_some() { waited } else { std::time::Duration::ZERO };
        (st.lock_holder, st.lock_waited) = (holder, waited);
        Ok(st)
    }

    /// The underlying region.
    pub fn region(&self) -> &Region {
        &self.region
    }

    /// The id store of a named region (`Config::id_store`, else
    /// `<region>.ids`): the sled mirror of the name table that the
    /// command-line tool writes (`docs/ids.md`). The library never writes
    /// it. `None` for an anonymous region.
    pub fn id_store(&self) -> Option<&Path> {
        self.store.as_deref()
    }

    /// The permission bits of the region's files (the region file's, else
    /// `Config::mode`): files made later for the region take them.
    pub fn file_mode(&self) -> u32 {
        self.mode
    }

    /// Removes the region file, its lockfile and its id store (an
    /// anonymous region has no files). Other processes keep their mapping.
    pub fn destroy(self) -> Result<()> {
        let store = self.store.clone();
        let lock = self.region.lock_path().map(Path::to_path_buf);
        let path = self.region.path().map(Path::to_path_buf);
        drop(self);
        if let Some(p) = path {
            Region::destroy_path(p, &RegionOptions { lock_file: lock, ..Default::default() })?;
        }
        if let Some(store) = store {
            let _ = std::fs::remove_dir_all(store);
        }
        Ok(())
    }
}

impl Drop for Cache {
    fn drop(&mut self) {
        let generation = self.region.generation();
        if sys::process::me().0 != self.opener {
            // Inherited through fork: not one of this process's own handles
            // (the count is per pid). Other inherited handles may still be in
            // use, so dropping one never purges; the process's records go
            // with its last own handle, `purge_process`, or a reap after it
            // is gone.
            return;
        }
        let left = sys::process::handles::closed(generation);
        if left == 0 {
            match self.purge_process() {
                Ok(r) if r.records > 0 => {
                    tracing::debug!(records = r.records, "purged process-scoped records")
                }
                Ok(_) => {}
                Err(e) => tracing::warn!("purging process-scoped records failed: {e}"),
            }
        }
    }
}

/// Liveness and usage of one process in a region.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct PidStatus {
    pub pid: u32,
    pub start_time: u64,
    pub alive: bool,
    pub records: u32,
    pub bytes: u64,
    /// Of `records`, those a reap removes once the process is dead
    /// ([`PidUsage::reapable`](cachem_core::PidUsage::reapable)).
    pub reapable: u32,
}

impl CacheStatus {
    /// Distinct dead processes with records a reap removes (their
    /// process-scoped records, all of them under reap-all): what reaping
    /// exists for. Above 0 for more than a few reap intervals: reaping is
    /// off or failing (the alert of docs/operations.md).
    pub fn dead_reapable_processes(&self) -> usize {
        self.distinct_pids(|p| !p.alive && p.reapable > 0)
    }

    /// Distinct dead processes whose records are all kept (owned records
    /// outlive their inserter): information, not a fault.
    pub fn dead_pids_with_kept_records(&self) -> usize {
        let reapable: std::collections::BTreeSet<u32> =
            self.pids.iter().filter(|p| !p.alive && p.reapable > 0).map(|p| p.pid).collect();
        self.distinct_pids(|p| !p.alive && !reapable.contains(&p.pid))
    }

    fn distinct_pids(&self, f: impl Fn(&PidStatus) -> bool) -> usize {
        self.pids.iter().filter(|p| f(p)).map(|p| p.pid).collect::<std::collections::BTreeSet<_>>().len()
    }
}

/// [`Cache::status`]: the engine's status plus names and liveness.
#[derive(Clone, Debug)]
pub struct CacheStatus {
    /// The region file (None when anonymous).
    pub path: Option<PathBuf>,
    pub region: Status,
    pub owner_names: BTreeMap<OwnerId, String>,
    pub pids: Vec<PidStatus>,
    /// Who held the region lock when the status was asked for (read from
    /// the lock word before waiting for it; None: it was free, or this is
    /// [`Cache::status_locked`]).
    pub lock_holder: Option<LockHolder>,
    /// How long taking the lock for this status waited (a long wait with a
    /// holder: a process holds the lock that long; see
    /// docs/operations.md).
    pub lock_waited: std::time::Duration,
}

impl CacheStatus {
    /// The registered name of `owner`, if any.
    pub fn owner_name(&self, owner: OwnerId) -> Option<&str> {
        self.owner_names.get(&owner).map(String::as_str)
    }
}

//! Shared regions: creating or attaching a mapped region, and the lock.
//!
//! A [`Region`] is one mapping of a region image, named (a file, usually
//! under `/dev/shm/cachem`) or anonymous (shared with children forked after
//! it was made). [`Region::lock`] takes the robust process-shared mutex in the
//! header and returns a [`Guard`], the only door to record bytes.
//!
//! ## Why references exist only under the lock
//!
//! Other processes write the region at any time. A Rust reference (`&[u8]`,
//! `&mut [u8]`) promises the compiler that nobody else writes the bytes it
//! covers while it lives; a reference into memory another process is writing
//! is undefined behaviour, even if the code "only reads". So the mapping
//! hands out raw pointers only, and the guard builds the engine's
//! `&mut [u8]` after the mutex is taken: every cooperating process writes
//! record bytes only while holding the same mutex. References to records
//! borrow the guard, and `insert`/`remove` take `&mut self`, so the borrow
//! checker guarantees no reference outlives the lock or survives a
//! compaction (mod_cachem: "once the lock is released, the pointer state is
//! undefined").
//!
//! The one exception is the mutex word itself, which waiting threads update
//! atomically while another holds the lock. It lives in the region's
//! trailer (its last 64 bytes), and the engine's `&mut [u8]` covers the
//! region without the trailer, so no reference ever covers bytes another
//! thread writes. Before the mapping is trusted, attach reads the header
//! through a raw copy, never through a reference.
//!
//! ## Create or attach
//!
//! Both are serialised by the global lockfile (`<region>.lock`, flock through
//! fs2). Creation builds the image in a temporary file in the same directory
//! (fully allocated with `posix_fallocate`, formatted, mutex initialised) and
//! renames it into place, so the final path never holds a half-made region,
//! even if the creator is killed midway. Attach never re-initialises an
//! existing file: one without a valid header is reported as corrupt and its
//! bytes are left alone.
//!
//! ## Where things are
//!
//! `mod.rs` (this file) holds the [`Region`] type, its options and
//! accessors, and the reads that copy a record out (optimistically, see
//! `optimistic.rs`, else under the lock); `open.rs` creates, attaches,
//! maps anonymously and destroys regions (the global lockfile, the image's
//! initialisation, path resolution); `lock.rs` takes the region lock and
//! recovers after a dead holder; `guard.rs` holds [`Guard`], the held lock
//! and its record operations; `reap.rs` removes dead processes' records.

use crate::error::{Error, Result};
use crate::format::{Compaction, TRAILER_SIZE};
use crate::ids::RecordId;
use crate::layout::{self, Layout};
use crate::sys::map::Mapping;
use crate::sys::{mutex, process, seqlock};
use std::io;
use std::path::{Path, PathBuf};

mod dir;
mod global_lock;
mod guard;
mod lock;
mod open;
mod reap;

pub use dir::{check_dir, check_store_dir, ensure_dir, OPEN_FLAGS};
use guard::mark_dirty;
pub use guard::Guard;
pub use open::{check_create_size, chown_to, default_lock_path, dir_mode, resolve_path, runtime_dir};
pub use reap::{DeadProcess, ReapReport, UnjudgedProcess};

/// Runtime directory for relative region names when `$CACHEM_DIR` is unset.
pub const DEFAULT_DIR: &str = "/dev/shm/cachem";

/// How to open a named region.
#[derive(Clone, Debug)]
pub struct RegionOptions {
    /// Size to create with, and to expect when attaching. `None`: attach
    /// only, at whatever size exists.
    pub size: Option<u64>,
    /// Runtime directory for relative names (else `$CACHEM_DIR`, else
    /// [`DEFAULT_DIR`]).
    pub dir: Option<PathBuf>,
    /// Global lockfile (default `<region>.lock`).
    pub lock_file: Option<PathBuf>,
    /// Permission bits of created files (default `0o600`).
    pub mode: u32,
    /// Attach to an existing region whatever its size.
    pub attach_any_size: bool,
    /// Create the region if it does not exist (default true).
    pub create: bool,
    /// At creation: reaping purges every record of a dead process.
    pub reap_all_records_of_dead_processes: bool,
    /// At creation: never reap (pids are not meaningful for this region).
    /// When attaching: this process does not reap, which also allows
    /// attaching from another pid namespace.
    pub no_reap: bool,
    /// At creation: the compaction policy (default `Deferred`). Attaching
    /// uses the region's own.
    pub compaction: Compaction,
    /// Give everything created for the region (the region file, its
    /// lockfile, the runtime directory when this call made it) to this
    /// `(uid, gid)`. Needs root unless it is the caller's own; when
    /// attaching as root, the region file and lockfile are given to it too.
    pub owner: Option<(u32, u32)>,
    /// How long [`Region::lock`] waits for a holder that is alive but does
    /// not release the lock (stopped, in a debugger, looping) before it
    /// fails with [`Error::LockTimeout`]. `None` (the default): wait as
    /// long as it takes. Either way a lock word naming a thread that no
    /// longer exists is found within one wait slice and recovered from
    /// (see `docs/design.md`, "The lock").
    pub lock_timeout: Option<std::time::Duration>,
    /// Skip the runtime directory's check (see `region/dir.rs` and
    /// `docs/operations.md`): the caller vouches for the directory (and
    /// for the lockfile's). Files are still never opened through a
    /// symlink. Default false.
    pub trust_dir: bool,
}

impl Default for RegionOptions {
    fn default() -> Self {
        RegionOptions {
            size: None,
            dir: None,
            lock_file: None,
            mode: 0o600,
            attach_any_size: false,
            create: true,
            reap_all_records_of_dead_processes: false,
            no_reap: false,
            compaction: Compaction::default(),
            owner: None,
            lock_timeout: None,
            trust_dir: false,
        }
    }
}

impl RegionOptions {
    /// Checks that the caller may give files to `owner`: only root may give
    /// them to someone else.
    pub fn check_owner(&self) -> Result<()> {
        if let Some((uid, gid)) = self.owner {
            let (euid, egid) = process::effective_ids();
            if euid != 0 && (uid, gid) != (euid, egid) {
                return Err(Error::Io {
                    op: "give region files to",
                    path: PathBuf::from(format!("uid {uid} gid {gid}")),
                    source: io::Error::new(
                        io::ErrorKind::PermissionDenied,
                        format!(
                            "only root may give files to another user (running as uid {euid}); \
                             drop the owner option or run as root"
                        ),
                    ),
                });
            }
        }
        Ok(())
    }
}

/// What happened when a region was opened.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct OpenReport {
    /// This call created the region.
    pub created: bool,
    /// The lock word came from another boot and was re-initialised.
    pub rearmed_after_reboot: bool,
    /// The first lock found a dead owner or a pending journal and recovered.
    pub recovered: bool,
    /// Who held the lock when attach went to take it (None: free, or a
    /// region this call created or an anonymous one).
    pub lock_holder: Option<LockHolder>,
    /// How long attach waited for the lock.
    pub lock_waited: std::time::Duration,
}

/// The holder of a region lock, as its lock word names it.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct LockHolder {
    /// The holding thread's id (in the region's pid namespace).
    pub tid: u32,
    /// Its process (`Tgid` of `/proc/<tid>/status`); None if no such
    /// thread is visible here.
    pub pid: Option<u32>,
    /// The word also carries the owner-died bit.
    pub owner_died: bool,
}

/// One mapping of a region. See the module docs.
#[derive(Debug)]
pub struct Region {
    map: Mapping,
    path: Option<PathBuf>,
    lock_path: Option<PathBuf>,
    generation: u64,
    options: u32,
    pid_ns: u64,
    /// This process reaps dead processes' records (region and opener agree).
    reap: bool,
    /// This process lives in another pid namespace than the region's creator.
    foreign_ns: bool,
    report: OpenReport,
    /// Who files made later for this region (lockfile, id store) belong to,
    /// when this process runs as root: the configured owner, else the region
    /// file's owner. None: leave them to whoever makes them.
    file_owner: Option<(u32, u32)>,
    /// See [`RegionOptions::lock_timeout`]: nanoseconds, `u64::MAX` for
    /// none. Atomic so that a shared handle's timeout can change (a server
    /// reloading its configuration); read only by a lock that must wait.
    lock_timeout: std::sync::atomic::AtomicU64,
    /// The tids in the lock word are this process's to judge (same boot,
    /// same pid namespace as the region's creator, a /proc of this
    /// namespace, glibc's mutex layout): the dead-tid rule applies.
    judge_tids: bool,
}

/// A lock timeout as stored in [`Region`]: nanoseconds (at most about 584
/// years), `u64::MAX` for none.
fn timeout_ns(t: Option<std::time::Duration>) -> u64 {
    t.map_or(u64::MAX, |d| d.as_nanos().min(u64::MAX as u128 - 1) as u64)
}

fn io_err<'a>(op: &'static str, path: &'a Path) -> impl FnOnce(io::Error) -> Error + 'a {
    move |source| Error::Io { op, path: path.to_path_buf(), source }
}

impl Region {
    fn display_path(&self) -> PathBuf {
        self.path.clone().unwrap_or_else(|| PathBuf::from("<anonymous>"))
    }

    /// The region file (None for an anonymous region).
    pub fn path(&self) -> Option<&Path> {
        self.path.as_deref()
    }

    /// The global lockfile (None for an anonymous region).
    pub fn lock_path(&self) -> Option<&Path> {
        self.lock_path.as_deref()
    }

    /// Random id of this incarnation of the region.
    pub fn generation(&self) -> u64 {
        self.generation
    }

    /// Size of the region in bytes.
    pub fn size(&self) -> u64 {
        self.map.len() as u64
    }

    /// The region's `OPT_*` bits.
    pub fn options(&self) -> u32 {
        self.options
    }

    /// The creator's pid namespace inode (0 if unknown).
    pub fn pid_ns(&self) -> u64 {
        self.pid_ns
    }

    /// What opening this region did.
    pub fn open_report(&self) -> OpenReport {
        self.report
    }

    /// Whether this process reaps dead processes' records in this region.
    pub fn reaps(&self) -> bool {
        self.reap
    }

    /// Who files made later for this region (by a root process) belong to:
    /// see [`RegionOptions::owner`].
    pub fn file_owner(&self) -> Option<(u32, u32)> {
        self.file_owner
    }

    /// How long [`Region::lock`] waits for a live holder (None: no bound).
    pub fn lock_timeout(&self) -> Option<std::time::Duration> {
        match self.lock_timeout.load(std::sync::atomic::Ordering::Relaxed) {
            u64::MAX => None,
            ns => Some(std::time::Duration::from_nanos(ns)),
        }
    }

    /// Changes how long [`Region::lock`] waits for a live holder (for the
    /// locks that start waiting after this call).
    pub fn set_lock_timeout(&self, timeout: Option<std::time::Duration>) {
        self.lock_timeout.store(timeout_ns(timeout), std::sync::atomic::Ordering::Relaxed);
    }

    /// Who holds the lock right now, read from the lock word without
    /// taking it: `None` if it is free.
    pub fn lock_holder(&self) -> Option<LockHolder> {
        // SAFETY: the mutex bytes are the trailer of the live mapping.
        let w = unsafe { mutex::owner_word(self.mutex_ptr()) };
        let tid = w & mutex::FUTEX_TID_MASK;
        (tid != 0 && mutex::layout_ok().is_some()).then(|| LockHolder {
            tid,
            pid: process::thread_group(tid),
            owner_died: w & mutex::FUTEX_OWNER_DIED != 0,
        })
    }

    /// Largest record this region could ever hold (when empty).
    pub fn max_record_len(&self) -> u64 {
        layout::max_record_len_for(self.size())
    }

    /// Copies record `id` into `buf` and returns its length, without the
    /// lock when possible (an optimistic read: see `docs/design.md`). After
    /// a bounded number of attempts spoiled by writers (or if a writer died
    /// mid-change, or a compaction journal is pending) it takes the lock,
    /// which recovers the region if needed. `Stale` if the record is gone,
    /// `BufferTooSmall` (with the record's length) if it does not fit.
    ///
    /// Called while this thread holds the lock and has changed the region,
    /// it returns `AlreadyLocked` instead of waiting for itself: read
    /// through the guard then.
    pub fn get_into(&self, id: RecordId, buf: &mut [u8]) -> Result<usize> {
        match self.get_optimistic(id, buf, crate::optimistic::TRIES) {
            Some(r) => r,
            None => self.get_locked(id, buf),
        }
    }

    /// Only the optimistic part of [`Region::get_into`]: `None` when the
    /// caller would have to take the lock (after `tries` attempts).
    #[inline]
    pub fn get_optimistic(&self, id: RecordId, buf: &mut [u8], tries: u32) -> Option<Result<usize>> {
        crate::optimistic::read(&seqlock::MapWords(&self.map), id, buf, tries)
    }

    /// [`Region::get_into`] under the lock.
    pub fn get_locked(&self, id: RecordId, buf: &mut [u8]) -> Result<usize> {
        let g = self.lock()?;
        let b = g.try_get(id)?;
        if b.len() > buf.len() {
            return Err(Error::BufferTooSmall { id, len: b.len(), capacity: buf.len() });
        }
        buf[..b.len()].copy_from_slice(b);
        Ok(b.len())
    }

    /// Calls `f` with a validated copy of record `id` (see
    /// [`Region::get_into`]); records up to 256 bytes are copied to the
    /// stack.
    pub fn read<R>(&self, id: RecordId, f: impl FnOnce(&[u8]) -> R) -> Result<R> {
        let mut small = [0u8; 256];
        let mut cap = match self.get_into(id, &mut small) {
            Ok(n) => return Ok(f(&small[..n])),
            Err(Error::BufferTooSmall { len, .. }) => len,
            Err(e) => return Err(e),
        };
        // An id names one record, whose length never changes; a bounded
        // loop all the same (the lock path re-reads the length).
        for _ in 0..4 {
            let mut v = vec![0u8; cap];
            match self.get_into(id, &mut v) {
                Ok(n) => return Ok(f(&v[..n])),
                Err(Error::BufferTooSmall { len, .. }) => cap = len,
                Err(e) => return Err(e),
            }
        }
        Err(Error::corrupt("block.len", format!("record {id} changed length while read")))
    }

    /// Record `id` as a `T`, copied out (see [`Region::get_into`]).
    /// `PodMismatch` if its length is not `size_of::<T>()`.
    pub fn read_pod<T: bytemuck::Pod>(&self, id: RecordId) -> Result<T> {
        let mut v = <T as bytemuck::Zeroable>::zeroed();
        let want = std::mem::size_of::<T>();
        let mismatch = |actual| Error::PodMismatch { id, expected: want, actual, align_ok: true };
        match self.get_into(id, bytemuck::bytes_of_mut(&mut v)) {
            Ok(n) if n == want => Ok(v),
            Ok(n) => Err(mismatch(n)),
            Err(Error::BufferTooSmall { len, .. }) => Err(mismatch(len)),
            Err(e) => Err(e),
        }
    }

    /// Whether the `len` bytes at address `addr` overlap this process's
    /// mapping of the region (for callers handed raw pointers, such as the
    /// C ABI, which must not pass region bytes back in as a source).
    pub fn overlaps(&self, addr: usize, len: usize) -> bool {
        let start = self.map.as_ptr() as usize;
        let end = start + self.map.len();
        len > 0 && addr < end && addr.saturating_add(len) > start
    }
}

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

use crate::error::{Error, Result};
use crate::format::{
    mutex_offset, Compaction, Header, HEADER_SIZE, MAX_REGION_SIZE, OPT_NO_REAP, OPT_REAP_ALL, TRAILER_SIZE,
};
use crate::ids::{OwnerId, RecordId, RecordMeta};
use crate::layout::{self, FormatOptions, Layout, ProcTag, Removed, Status, VerifyReport};
use crate::sys::map::Mapping;
use crate::sys::{mutex, process, seqlock};
use fs2::FileExt;
use std::collections::HashMap;
use std::fs::{self, File, OpenOptions};
use std::io;
use std::marker::PhantomData;
use std::os::unix::fs::{DirBuilderExt, OpenOptionsExt};
use std::path::{Path, PathBuf};

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

/// Gives `path` to `owner` (if any). Root only; a no-op when it already has
/// that owner.
pub fn chown_to(path: &Path, owner: Option<(u32, u32)>) -> Result<()> {
    use std::os::unix::fs::MetadataExt;
    let Some((uid, gid)) = owner else {
        return Ok(());
    };
    match fs::symlink_metadata(path) {
        Ok(m) if m.uid() == uid && m.gid() == gid => Ok(()),
        _ => std::os::unix::fs::lchown(path, Some(uid), Some(gid)).map_err(io_err("chown", path)),
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
}

/// One dead process whose records a reap removed.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct DeadProcess {
    pub pid: u32,
    pub start_time: u64,
    pub records: usize,
    pub bytes: u64,
}

/// What a reap found and reclaimed.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct ReapReport {
    /// Processes found dead that had reapable records.
    pub dead: Vec<DeadProcess>,
    /// Records removed.
    pub records: usize,
    /// Bytes given back to the free gap (block headers and padding included).
    pub bytes: u64,
}

/// Resolves a region name to its file: an absolute path as given, a relative
/// name inside the runtime directory.
pub fn resolve_path(name: &str, dir: Option<&Path>) -> Result<PathBuf> {
    let bad = |reason| Err(Error::BadName { name: name.to_string(), reason });
    if name.is_empty() {
        return bad("the name is empty");
    }
    if name.contains('\0') {
        return bad("the name contains a NUL byte");
    }
    if name.ends_with('/') {
        return bad("the name ends with '/'");
    }
    let p = Path::new(name);
    if p.components().any(|c| matches!(c, std::path::Component::ParentDir)) {
        return bad("the name contains '..'");
    }
    if p.is_absolute() {
        return Ok(p.to_path_buf());
    }
    if name.contains('/') || name.starts_with('.') {
        return bad("a relative name must be a plain file name (no '/', not starting with '.')");
    }
    Ok(runtime_dir(dir).join(name))
}

/// The runtime directory: `dir`, else `$CACHEM_DIR`, else [`DEFAULT_DIR`].
pub fn runtime_dir(dir: Option<&Path>) -> PathBuf {
    match dir {
        Some(d) => d.to_path_buf(),
        None => std::env::var_os("CACHEM_DIR").map(PathBuf::from).unwrap_or_else(|| DEFAULT_DIR.into()),
    }
}

/// The default lockfile of a region file: `<region>.lock`.
pub fn default_lock_path(path: &Path) -> PathBuf {
    let mut s = path.as_os_str().to_owned();
    s.push(".lock");
    PathBuf::from(s)
}

fn io_err<'a>(op: &'static str, path: &'a Path) -> impl FnOnce(io::Error) -> Error + 'a {
    move |source| Error::Io { op, path: path.to_path_buf(), source }
}

fn with_path(e: Error, path: &Path) -> Error {
    match e {
        Error::Corrupt { field, detail } => {
            Error::Corrupt { field, detail: format!("{detail} (in {})", path.display()) }
        }
        e => e,
    }
}

fn page_size() -> u64 {
    // SAFETY: sysconf has no memory-safety preconditions.
    let p = unsafe { libc::sysconf(libc::_SC_PAGESIZE) };
    if p > 0 {
        p as u64
    } else {
        4096
    }
}

/// Mode of a runtime directory for files of `mode`: rwx for the owner, and
/// rwx for group / others that may read or write the files.
pub fn dir_mode(mode: u32) -> u32 {
    let mut m = 0o700;
    if mode & 0o060 != 0 {
        m |= 0o070;
    }
    if mode & 0o006 != 0 {
        m |= 0o007;
    }
    m
}

/// Checks a size asked for at creation: a multiple of 8, at least one page.
pub fn check_create_size(size: u64) -> Result<()> {
    layout::check_size(size)?;
    if size < page_size() {
        return Err(Error::BadSize { size, reason: "must be at least one page" });
    }
    Ok(())
}

/// Holds the global lockfile while alive.
struct GlobalLock(File);

impl GlobalLock {
    /// Opens (creating with exactly `mode` if missing) and flocks the
    /// lockfile. A lockfile that someone unlinked or replaced while we waited
    /// (destroy, a failed create) is not the lock others take any more: in
    /// that case start over with the file now at the path.
    fn take(path: &Path, mode: u32) -> Result<GlobalLock> {
        use std::os::unix::fs::{MetadataExt, PermissionsExt};
        loop {
            let f = match OpenOptions::new().read(true).write(true).create_new(true).mode(mode).open(path) {
                Ok(f) => {
                    // The mode given at open is filtered by the umask; the
                    // lockfile we made gets exactly `mode`, so a group
                    // sharing the region can lock it too.
                    let _ = f.set_permissions(fs::Permissions::from_mode(mode));
                    f
                }
                Err(e) if e.kind() == io::ErrorKind::AlreadyExists => {
                    match OpenOptions::new().read(true).write(true).open(path) {
                        Ok(f) => f,
                        Err(e) if e.kind() == io::ErrorKind::NotFound => continue,
                        Err(e) => {
                            return Err(Error::Io {
                                op: "open lockfile",
                                path: path.to_path_buf(),
                                source: e,
                            })
                        }
                    }
                }
                Err(e) => return Err(Error::Io { op: "open lockfile", path: path.to_path_buf(), source: e }),
            };
            FileExt::lock_exclusive(&f).map_err(io_err("lock lockfile", path))?;
            let ours = f.metadata().map_err(io_err("stat lockfile", path))?;
            match fs::metadata(path) {
                Ok(now) if now.ino() == ours.ino() && now.dev() == ours.dev() => return Ok(GlobalLock(f)),
                Ok(_) => continue,
                Err(e) if e.kind() == io::ErrorKind::NotFound => continue,
                Err(e) => return Err(Error::Io { op: "stat lockfile", path: path.to_path_buf(), source: e }),
            }
        }
    }
}

impl Drop for GlobalLock {
    fn drop(&mut self) {
        let _ = FileExt::unlock(&self.0);
    }
}

impl Region {
    /// Creates the named region or attaches to it. See [`RegionOptions`].
    pub fn open(name: &str, opts: &RegionOptions) -> Result<Region> {
        Self::open_path(resolve_path(name, opts.dir.as_deref())?, opts)
    }

    /// Creates the region file at `path` or attaches to it (`path` as
    /// given; [`Region::open`] resolves a name first).
    pub fn open_path(path: PathBuf, opts: &RegionOptions) -> Result<Region> {
        opts.check_owner()?;
        let lock_path = opts.lock_file.clone().unwrap_or_else(|| default_lock_path(&path));
        if !opts.create || opts.size.is_none() {
            // Attach only: leave no directory or lockfile behind for a
            // missing region.
            match fs::metadata(&path) {
                Ok(_) => {}
                Err(e) if e.kind() == io::ErrorKind::NotFound => return Err(Error::NotFound { path }),
                Err(e) => return Err(Error::Io { op: "open region", path, source: e }),
            }
        }
        let parent = path.parent().map(Path::to_path_buf).unwrap_or_else(|| PathBuf::from("/"));
        if !parent.exists() {
            fs::DirBuilder::new()
                .recursive(true)
                .mode(dir_mode(opts.mode))
                .create(&parent)
                .map_err(io_err("create runtime directory", &parent))?;
            // The mode is filtered by the umask; the directory cachem made
            // gets exactly the mode the files need, and their owner.
            use std::os::unix::fs::PermissionsExt;
            let _ = fs::set_permissions(&parent, fs::Permissions::from_mode(dir_mode(opts.mode)));
            chown_to(&parent, opts.owner)?;
        }
        let lock_existed = lock_path.exists();
        let global = GlobalLock::take(&lock_path, opts.mode)?;
        if !lock_existed {
            chown_to(&lock_path, opts.owner)?;
        }
        let mut created = false;
        let file = match OpenOptions::new().read(true).write(true).open(&path) {
            Ok(f) => f,
            Err(e) if e.kind() == io::ErrorKind::NotFound => {
                if !opts.create {
                    return Err(Error::NotFound { path });
                }
                let Some(size) = opts.size else {
                    return Err(Error::NotFound { path });
                };
                created = true;
                match Self::create_file(&path, size, opts) {
                    Ok(f) => f,
                    Err(e) => {
                        // Leave nothing behind: the lockfile too, if this
                        // call made it (publishing never replaces a region,
                        // so a racer holding the old lockfile cannot harm one).
                        if !lock_existed {
                            let _ = fs::remove_file(&lock_path);
                        }
                        return Err(e);
                    }
                }
            }
            Err(e) => return Err(Error::Io { op: "open region", path, source: e }),
        };
        let file_owner = if process::effective_ids().0 == 0 {
            use std::os::unix::fs::MetadataExt;
            if opts.owner.is_some() && !created {
                chown_to(&path, opts.owner)?;
            }
            opts.owner.or_else(|| file.metadata().ok().map(|m| (m.uid(), m.gid())))
        } else {
            None
        };
        // Files made later for the region by root take the region's owner.
        chown_to(&lock_path, file_owner)?;
        let mut region = Self::attach_file(file, &path, opts).map_err(|e| with_path(e, &path))?;
        region.report.created = created;
        region.lock_path = Some(lock_path);
        region.file_owner = file_owner;
        // Release the lockfile before waiting for the region lock: a process
        // holding the region lock may be waiting for the lockfile (an id
        // registry call inside a guard), and waiting for each other in
        // opposite orders would deadlock.
        drop(global);
        let g = region.lock_inner().map_err(|e| with_path(e, &path))?;
        g.layout.verify().map_err(|e| with_path(e, &path))?;
        let recovered = g.recovered;
        drop(g);
        region.report.recovered |= recovered;
        Ok(region)
    }

    /// Builds a new region file in a temporary file beside `path` and renames
    /// it into place. The caller holds the global lockfile.
    fn create_file(path: &Path, size: u64, opts: &RegionOptions) -> Result<File> {
        check_create_size(size)?;
        let dir = path.parent().unwrap_or(Path::new("/"));
        let base = path.file_name().map(|n| n.to_string_lossy().into_owned()).unwrap_or_default();
        let prefix = format!(".{base}.tmp-");
        // Temporaries of creators killed midway: creation runs only under the
        // global lockfile, which we hold, so every one of them is stale.
        if let Ok(rd) = fs::read_dir(dir) {
            for e in rd.flatten() {
                if e.file_name().to_string_lossy().starts_with(&prefix) {
                    let _ = fs::remove_file(e.path());
                }
            }
        }
        let tmp = dir.join(format!("{prefix}{}", std::process::id()));
        let file = OpenOptions::new()
            .read(true)
            .write(true)
            .create_new(true)
            .mode(opts.mode)
            .open(&tmp)
            .map_err(io_err("create region", &tmp))?;
        let built = (|| {
            // The mode is filtered by the umask at open; set it exactly.
            use std::os::unix::fs::PermissionsExt;
            file.set_permissions(fs::Permissions::from_mode(opts.mode))
                .map_err(io_err("chmod region", &tmp))?;
            chown_to(&tmp, opts.owner)?;
            crate::sys::file::allocate(&file, size).map_err(|e| {
                let e = if e.raw_os_error() == Some(libc::ENOSPC) {
                    io::Error::new(
                        e.kind(),
                        format!("no room for a {size}-byte region on this filesystem ({e})"),
                    )
                } else {
                    e
                };
                Error::Io { op: "allocate region", path: path.to_path_buf(), source: e }
            })?;
            let map = Mapping::file(&file, size as usize, &tmp)?;
            let mut options = 0;
            if opts.reap_all_records_of_dead_processes {
                options |= OPT_REAP_ALL;
            }
            if opts.no_reap {
                options |= OPT_NO_REAP;
            }
            init_image(&map, options, opts.compaction)?;
            // Publish without ever replacing an existing region.
            fs::hard_link(&tmp, path).map_err(io_err("publish region", path))?;
            fs::remove_file(&tmp).map_err(io_err("remove temporary", &tmp))
        })();
        if let Err(e) = built {
            let _ = fs::remove_file(&tmp);
            return Err(e);
        }
        Ok(file)
    }

    fn attach_file(file: File, path: &Path, opts: &RegionOptions) -> Result<Region> {
        let len = file.metadata().map_err(io_err("stat region", path))?.len();
        if len < HEADER_SIZE as u64 || len > MAX_REGION_SIZE {
            return Err(Error::corrupt(
                "region_size",
                format!("the file has {len} bytes, which no region has"),
            ));
        }
        let map = Mapping::file(&file, len as usize, path)?;
        let h = read_header(&map);
        let hdr = &h.0;
        layout::check_header(hdr, len)?;
        if let Some(req) = opts.size {
            if req != len && !opts.attach_any_size {
                return Err(Error::SizeMismatch { path: path.to_path_buf(), existing: len, requested: req });
            }
        }
        if opts.reap_all_records_of_dead_processes && hdr.options & OPT_REAP_ALL == 0 {
            return Err(Error::OptionMismatch {
                path: path.to_path_buf(),
                option: "reap_all_records_of_dead_processes",
                detail: "the existing region was created reaping only process-scoped records".into(),
            });
        }
        if hdr.mutex_size as usize != mutex::SIZE {
            return Err(Error::ForeignAbi {
                what: format!("pthread_mutex_t of {} bytes, here {}", hdr.mutex_size, mutex::SIZE),
            });
        }
        let mut region = Region {
            map,
            path: Some(path.to_path_buf()),
            lock_path: None,
            generation: hdr.generation,
            options: hdr.options,
            pid_ns: hdr.pid_ns,
            reap: hdr.options & OPT_NO_REAP == 0 && !opts.no_reap,
            foreign_ns: false,
            report: OpenReport::default(),
            file_owner: None,
        };
        // Pids are meaningless across pid namespaces: refuse to reap there.
        let ours = process::pid_namespace(None);
        region.foreign_ns = hdr.pid_ns != 0 && ours != 0 && hdr.pid_ns != ours;
        if region.reap && region.foreign_ns {
            return Err(Error::PidNamespace {
                path: path.to_path_buf(),
                region_ns: hdr.pid_ns,
                our_ns: ours,
            });
        }
        // A lock word from another boot may be owned by a thread that is on
        // no robust list: re-arm the mutex (no process of that boot is left)
        // and recover. We hold the global lockfile, so no one else attaches.
        // A stored boot id of zeros means "unknown" (the creator could not
        // read it): never re-arm then, live processes may use the mutex.
        let now = process::boot_id();
        if now != [0; 16] && hdr.boot_id != [0; 16] && hdr.boot_id != now {
            tracing::warn!(path = %path.display(), "region is from another boot: re-initialising its lock and recovering");
            // SAFETY: the mutex bytes lie inside the mapping, 8-aligned; no
            // process of the boot that used it exists any more.
            unsafe { mutex::init(region.mutex_ptr()) }.map_err(io_err("initialise lock", path))?;
            region.report.rearmed_after_reboot = true;
            region.report.recovered = true;
            let mut g = region.lock_inner()?;
            g.begin_write();
            g.layout.recover()?;
            g.layout.count_recovery();
            g.layout.set_boot_id(now);
            drop(g);
        }
        // The mutable fields are validated under the region lock by the
        // caller, after it released the global lockfile.
        Ok(region)
    }

    /// Creates an anonymous region of `size` bytes, shared with children
    /// forked after this call (the pre-fork server model).
    pub fn anonymous(size: u64) -> Result<Region> {
        Self::anonymous_with(size, &RegionOptions::default())
    }

    /// [`Region::anonymous`] with options: the reap policy
    /// (`reap_all_records_of_dead_processes`, `no_reap`) and `owner` (kept
    /// for the files made later for the region: its lockfile and id store).
    /// Options that only make sense for a file (`attach_any_size`, attach
    /// only) are refused, never ignored; `dir`, `lock_file` and `mode` are
    /// for the caller's files (see `cachem::Cache`).
    pub fn anonymous_with(size: u64, opts: &RegionOptions) -> Result<Region> {
        let refuse = |option: &'static str| {
            Err(Error::OptionMismatch {
                path: PathBuf::from("<anonymous>"),
                option,
                detail: "an anonymous region is always created, never attached".into(),
            })
        };
        if opts.attach_any_size {
            return refuse("attach_any_size");
        }
        if !opts.create {
            return refuse("attach_only");
        }
        if opts.size.is_some_and(|s| s != size) {
            return Err(Error::BadSize { size, reason: "the options ask for another size" });
        }
        opts.check_owner()?;
        check_create_size(size)?;
        let mut options = 0;
        if opts.reap_all_records_of_dead_processes {
            options |= OPT_REAP_ALL;
        }
        if opts.no_reap {
            options |= OPT_NO_REAP;
        }
        let map = Mapping::anonymous(size as usize)?;
        let h = init_image(&map, options, opts.compaction)?;
        Ok(Region {
            map,
            path: None,
            lock_path: None,
            generation: h.generation,
            options,
            pid_ns: h.pid_ns,
            reap: options & OPT_NO_REAP == 0,
            foreign_ns: false,
            report: OpenReport { created: true, ..Default::default() },
            file_owner: if process::effective_ids().0 == 0 { opts.owner } else { None },
        })
    }

    /// Removes a named region's file and its lockfile. Processes still
    /// attached keep their mapping until they drop it.
    pub fn destroy(name: &str, opts: &RegionOptions) -> Result<()> {
        Self::destroy_path(resolve_path(name, opts.dir.as_deref())?, opts)
    }

    /// [`Region::destroy`] of the file at `path` (as given).
    pub fn destroy_path(path: PathBuf, opts: &RegionOptions) -> Result<()> {
        let lock_path = opts.lock_file.clone().unwrap_or_else(|| default_lock_path(&path));
        match fs::symlink_metadata(&path) {
            Err(e) if e.kind() == io::ErrorKind::NotFound => return Err(Error::NotFound { path }),
            Err(e) => return Err(Error::Io { op: "destroy region", path, source: e }),
            Ok(m) if !m.is_file() => {
                return Err(Error::Io {
                    op: "destroy region",
                    path,
                    source: io::Error::other("not a regular file; refusing to remove it"),
                })
            }
            Ok(_) => {}
        }
        let global = GlobalLock::take(&lock_path, opts.mode)?;
        fs::remove_file(&path).map_err(io_err("remove region", &path))?;
        let _ = fs::remove_file(&lock_path);
        drop(global);
        Ok(())
    }

    #[inline(always)]
    fn mutex_ptr(&self) -> *mut libc::pthread_mutex_t {
        // The mutex is the trailer, the last bytes of the mapping.
        self.map.as_ptr().wrapping_add(mutex_offset(self.map.len() as u64) as usize).cast()
    }

    /// Takes the region lock. If its previous owner died holding it, or a
    /// journal is pending, the region is recovered first (counted in the
    /// header's recoveries counter and logged).
    #[inline(always)]
    pub fn lock(&self) -> Result<Guard<'_>> {
        self.lock_inner()
    }

    /// The lock, split so the common case (a clean lock, no journal
    /// pending) is a few inlined instructions around the mutex calls, and
    /// everything else (errors, recovery, logging) is out of line in
    /// [`Region::lock_slow`]. The checks are the same on both paths. The
    /// guard is built in one place only: a guard that came back from a
    /// call through memory cost more than all the checks (the result is
    /// written as small stores and read back as wide loads, which the CPU
    /// cannot forward).
    #[inline(always)]
    fn lock_inner(&self) -> Result<Guard<'_>> {
        let m = self.mutex_ptr();
        // SAFETY: the mutex was initialised at creation (or re-armed on
        // attach) and stays mapped as long as `self`.
        let state = unsafe { mutex::lock(m) };
        let clean = matches!(state, Ok(mutex::Locked::Clean)) && {
            // SAFETY: `mutex::lock` succeeded, so this thread holds the
            // lock; the view ends with this block.
            let view = unsafe { self.view() };
            Layout::reopen(view).is_ok_and(|l| !l.recovery_required())
        };
        let recovered = if clean { false } else { self.lock_slow(m, state)? };
        // SAFETY: we hold the lock (the slow path returns `Ok` only with it
        // held); the view lives in the guard, which unlocks when dropped.
        let layout = match Layout::reopen(unsafe { self.view() }) {
            Ok(l) => l,
            // The slow path checked the same view (its length is the
            // mapping's, which never changes): not reached.
            Err(e) => return Err(self.unlock_after(m, false, e)),
        };
        // An odd version (left by recovery in the slow path, or by a writer
        // that died mid-change, or bytes from elsewhere) is made even by
        // this guard when it unlocks.
        let dirty = seqlock::load(&self.map) & 1 != 0;
        Ok(Guard { region: self, layout, recovered, dirty, _not_send: PhantomData })
    }

    // `&mut` from `&self`: the lock, not `&mut self`, makes it exclusive.
    #[allow(clippy::mut_from_ref)]
    #[inline(always)]
    /// The engine's view of the mapping: everything but the trailer (the
    /// mutex, which waiting threads write; the mapping is longer than it,
    /// checked at attach/create).
    ///
    /// # Safety
    /// The calling thread must hold the region lock; the slice must not
    /// outlive it nor overlap another live reference into the mapping.
    unsafe fn view(&self) -> &mut [u8] {
        // SAFETY: the caller holds the lock; the mapping outlives `self`'s
        // borrow; the length stays inside the mapping.
        unsafe { std::slice::from_raw_parts_mut(self.map.as_ptr(), self.map.len() - TRAILER_SIZE) }
    }

    /// Releases the lock after a failure under it (making it consistent
    /// first if it came back owner-dead) and returns the error.
    #[cold]
    #[inline(never)]
    fn unlock_after(&self, m: *mut libc::pthread_mutex_t, owner_died: bool, e: Error) -> Error {
        // SAFETY: the callers hold the lock.
        unsafe {
            if owner_died {
                let _ = mutex::make_consistent(m);
            }
            let _ = mutex::unlock(m);
        }
        e
    }

    /// The rest of [`Region::lock_inner`]: a lock that failed, a dead
    /// owner, a view that does not check, a journal pending. `state` is
    /// what `mutex::lock` returned; when it is `Ok` this thread holds the
    /// lock. Returns `Ok(recovered)` with the lock held and the region
    /// recovered (the caller builds the guard), or an error with the lock
    /// released.
    #[cold]
    #[inline(never)]
    fn lock_slow(
        &self,
        m: *mut libc::pthread_mutex_t,
        state: std::result::Result<mutex::Locked, mutex::LockError>,
    ) -> Result<bool> {
        let owner_died = match state {
            Ok(mutex::Locked::Clean) => false,
            Ok(mutex::Locked::OwnerDied) => true,
            Err(mutex::LockError::NotRecoverable) => {
                return Err(Error::LockUnrecoverable { path: self.display_path() })
            }
            Err(mutex::LockError::Deadlock) => {
                return Err(Error::AlreadyLocked { path: self.display_path() })
            }
            Err(mutex::LockError::Other(e)) => {
                return Err(Error::Io { op: "lock", path: self.display_path(), source: e })
            }
        };
        // SAFETY: we hold the region lock (taken above).
        let layout = match Layout::reopen(unsafe { self.view() }) {
            Ok(l) => l,
            Err(e) => return Err(self.unlock_after(m, owner_died, e)),
        };
        // An odd version here means the last writer died mid-change (its
        // lock came back with EOWNERDEAD) or the image is from another boot:
        // this guard makes it even again when it unlocks.
        let dirty = seqlock::load(&self.map) & 1 != 0;
        let mut g = Guard { region: self, layout, recovered: false, dirty, _not_send: PhantomData };
        if owner_died || g.layout.recovery_required() {
            g.begin_write();
            if owner_died {
                // The flag first: once the lock is consistent again, a
                // recovery that panics or is killed must still be redone by
                // the next locker (which then gets a clean lock). Consistent
                // before recovering, so that a panic in the recovery unlocks
                // a usable mutex, not one that is unrecoverable for good.
                g.layout.mark_recovery_required();
                std::sync::atomic::fence(std::sync::atomic::Ordering::SeqCst);
                // SAFETY: we hold the lock, obtained with EOWNERDEAD.
                unsafe { mutex::make_consistent(m) }
                    .map_err(io_err("mark lock consistent", &self.display_path()))?;
                g.layout.count_recovery();
            }
            let r = g.layout.recover();
            match &r {
                Ok(rep) => tracing::warn!(
                    path = %self.display_path().display(),
                    owner_died,
                    finished_compaction = rep.finished_compaction,
                    rolled_back_inserts = rep.rolled_back_inserts,
                    "recovered region after a process died holding its lock"
                ),
                // Returned to the caller below, who reports it: not logged
                // as an error here, or it would be printed twice.
                Err(e) => tracing::debug!(path = %self.display_path().display(), "recovery failed: {e}"),
            }
            r?;
            g.recovered = true;
            if owner_died && self.reap {
                // The dead owner is likely not the only dead process.
                if let Err(e) = g.reap() {
                    tracing::error!("reaping after recovery failed: {e}");
                }
            }
        }
        // Keep the lock for the caller's guard. Whether it must make the
        // version even again is read back from the version word: it is odd
        // exactly when this guard is dirty (it started odd, or this guard
        // made it odd).
        let recovered = g.recovered;
        std::mem::forget(g);
        Ok(recovered)
    }

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

/// A multiply-xor hasher for small integer keys (the reaper's per-record
/// lookups; SipHash costs more than the rest of the pass).
#[derive(Default, Clone, Copy)]
struct FastHash;

struct FastHasher(u64);

impl std::hash::BuildHasher for FastHash {
    type Hasher = FastHasher;
    fn build_hasher(&self) -> FastHasher {
        FastHasher(0)
    }
}

impl std::hash::Hasher for FastHasher {
    fn finish(&self) -> u64 {
        self.0
    }
    fn write(&mut self, bytes: &[u8]) {
        for &b in bytes {
            self.write_u64(b as u64);
        }
    }
    fn write_u32(&mut self, v: u32) {
        self.write_u64(v as u64);
    }
    fn write_u64(&mut self, v: u64) {
        self.0 = (self.0.rotate_left(5) ^ v).wrapping_mul(0x51_7c_c1_b7_27_22_0a_95);
    }
}

/// Copy of the header read without forming a reference into the mapping.
#[repr(C, align(8))]
struct HeaderCopy(Header);

fn read_header(map: &Mapping) -> HeaderCopy {
    let mut h = HeaderCopy(bytemuck::Zeroable::zeroed());
    // SAFETY: the mapping has at least HEADER_SIZE bytes (checked by the
    // caller); the destination is a local of exactly that size; the source
    // is shared memory read as plain bytes, never through a reference.
    unsafe {
        std::ptr::copy_nonoverlapping(map.as_ptr(), (&mut h.0 as *mut Header).cast::<u8>(), HEADER_SIZE);
    }
    h
}

/// Formats a fresh mapping (no other process can see it yet) and initialises
/// its mutex.
fn init_image(map: &Mapping, options: u32, compaction: Compaction) -> Result<Header> {
    let opts = FormatOptions {
        generation: random_u64(),
        boot_id: process::boot_id(),
        pid_ns: process::pid_namespace(None),
        options,
        mutex_size: mutex::SIZE as u32,
        compaction,
    };
    // SAFETY: the mapping is fresh (a new temporary file or new anonymous
    // memory) and not yet visible to any other process; this is the only
    // reference to it and it ends with this block.
    let buf = unsafe { std::slice::from_raw_parts_mut(map.as_ptr(), map.len()) };
    layout::format(buf, &opts)?;
    let h: Header = *bytemuck::from_bytes(&buf[..HEADER_SIZE]);
    let m = map.as_ptr().wrapping_add(mutex_offset(map.len() as u64) as usize).cast();
    // SAFETY: the mutex area (the trailer) is inside the fresh mapping,
    // 8-aligned, unused.
    unsafe { mutex::init(m) }.map_err(|e| Error::Io {
        op: "initialise lock",
        path: "<new region>".into(),
        source: e,
    })?;
    Ok(h)
}

/// A random u64 from the kernel (for region generations).
fn random_u64() -> u64 {
    let mut b = [0u8; 8];
    // SAFETY: getrandom writes at most b.len() bytes into b.
    let n = unsafe { libc::getrandom(b.as_mut_ptr().cast(), b.len(), 0) };
    if n == 8 {
        u64::from_ne_bytes(b)
    } else {
        // Fallback: time and pid mixed; uniqueness is what matters here.
        let t = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map_or(0, |d| d.as_nanos() as u64);
        t ^ ((std::process::id() as u64) << 32)
    }
}

/// Makes the version odd unless this guard already did (`Guard::begin_write`
/// for a caller that holds the guard's layout borrowed).
#[inline(always)]
fn mark_dirty(region: &Region, dirty: &mut bool) {
    if !*dirty {
        seqlock::begin_write(&region.map);
        *dirty = true;
    }
}

/// The region lock, held. The only door to record bytes: references to
/// records borrow the guard, and mutations take `&mut self`.
pub struct Guard<'r> {
    region: &'r Region,
    layout: Layout<'r>,
    recovered: bool,
    /// This guard made the version odd (it changes the region): it makes
    /// it even again before unlocking.
    dirty: bool,
    // A pthread mutex must be unlocked by the thread that locked it.
    _not_send: PhantomData<*mut ()>,
}

impl Drop for Guard<'_> {
    #[inline]
    fn drop(&mut self) {
        if std::thread::panicking() {
            // A panic may have abandoned a mutation midway: make the next
            // locker recover.
            self.begin_write();
            self.layout.mark_recovery_required();
        }
        if self.dirty {
            seqlock::end_write(&self.region.map);
        }
        // SAFETY: this guard's existence means this thread holds the lock.
        if let Err(e) = unsafe { mutex::unlock(self.region.mutex_ptr()) } {
            unlock_failed(e);
        }
    }
}

#[cold]
#[inline(never)]
fn unlock_failed(e: io::Error) {
    tracing::error!("unlocking region failed: {e}");
}

impl<'r> Guard<'r> {
    /// Makes the version odd before the first change this guard makes, so
    /// optimistic readers retry or take the lock until it unlocks. Every
    /// method that may change the region (or hands out `&mut` to its
    /// bytes) calls this first.
    #[inline(always)]
    fn begin_write(&mut self) {
        mark_dirty(self.region, &mut self.dirty);
    }

    /// Whether taking this lock recovered the region.
    pub fn recovered(&self) -> bool {
        self.recovered
    }

    /// The region this guard locks.
    pub fn region(&self) -> &'r Region {
        self.region
    }

    /// Largest record this region could ever hold (when empty).
    pub fn max_record_len(&self) -> u64 {
        self.region.max_record_len()
    }

    /// The engine, for operations not wrapped here (tests, tools): a view
    /// that borrows this guard, so it cannot outlive the lock.
    ///
    /// It is a fresh view each time, not the guard's own engine, so nothing
    /// can be swapped out of the guard and kept after the unlock:
    ///
    /// ```compile_fail,E0505
    /// # fn keep(r: &cachem_core::Region) {
    /// let mut g = r.lock().unwrap();
    /// let l = g.layout();
    /// drop(g); // unlocks: the view may not live on
    /// l.records();
    /// # }
    /// ```
    pub fn layout(&mut self) -> Layout<'_> {
        self.begin_write();
        self.layout.reborrow()
    }

    /// Inserts a record owned by `owner`, stamped with this process's pid
    /// and start time. mod_cachem's `cachem_add`. If the region is full, dead
    /// processes' records are reaped and the insert is tried once more.
    pub fn insert(&mut self, owner: OwnerId, data: &[u8]) -> Result<RecordId> {
        // Light unless it compacts: it writes no byte a reader of a live
        // record copies (`Layout::insert_would_compact`).
        if self.layout.insert_would_compact(data.len()) {
            self.begin_write();
        }
        if owner.is_process() && self.region.foreign_ns {
            // Our pid means another process in the creator's namespace: a
            // reaper there would judge the record by the wrong process.
            let path = self.region.display_path();
            let region_ns = self.region.pid_ns;
            return Err(Error::PidNamespace { path, region_ns, our_ns: process::pid_namespace(None) });
        }
        let (pid, start_time) = process::me();
        let tag = ProcTag { pid, start_time };
        match self.layout.insert(owner, tag, data) {
            Err(Error::Full { .. }) if self.region.reap && self.reap()?.records > 0 => {
                self.layout.insert(owner, tag, data)
            }
            r => r,
        }
    }

    /// Removes the records of dead processes: their process-scoped records,
    /// or all their records if the region was created with
    /// `reap_all_records_of_dead_processes`. One pass over the table, one
    /// /proc read per distinct process, one compaction. Does nothing (an
    /// empty report) if reaping is disabled for this region or process.
    pub fn reap(&mut self) -> Result<ReapReport> {
        if !self.region.reap {
            return Ok(ReapReport::default());
        }
        let all = self.region.options & OPT_REAP_ALL != 0;
        let me = process::me();
        // One pass: the liveness of each distinct (pid, start time) is read
        // from /proc the first time it is met, then remembered.
        let mut procs: HashMap<(u32, u64), Option<DeadProcess>, FastHash> = HashMap::default();
        // The scan only reads: the version turns odd only if a record goes
        // (attach reaps, so a reap that finds nothing must not disturb the
        // readers).
        let (region, dirty) = (self.region, &mut self.dirty);
        let removed = self.layout.retain_then(
            |m, _| {
                if !(all || m.owner.is_process()) || (m.pid, m.start_time) == me {
                    return true;
                }
                let dead = procs.entry((m.pid, m.start_time)).or_insert_with(|| {
                    (!process::is_alive(m.pid, m.start_time)).then_some(DeadProcess {
                        pid: m.pid,
                        start_time: m.start_time,
                        records: 0,
                        bytes: 0,
                    })
                });
                match dead {
                    None => true,
                    Some(d) => {
                        d.records += 1;
                        d.bytes += crate::format::block_size(m.len as u64);
                        false
                    }
                }
            },
            || mark_dirty(region, dirty),
        )?;
        if removed.records > 0 {
            self.layout.count_reaped(removed.records as u64);
        }
        let mut dead: Vec<DeadProcess> = procs.into_values().flatten().collect();
        dead.sort_by_key(|d| (d.pid, d.start_time));
        Ok(ReapReport { dead, records: removed.records, bytes: removed.bytes })
    }

    /// Removes this process's process-scoped records (what happens when the
    /// process's last `Cache` handle is dropped).
    pub fn purge_process(&mut self) -> Result<Removed> {
        let me = process::me();
        let (region, dirty) = (self.region, &mut self.dirty);
        self.layout.remove_of_owner_then(
            OwnerId::PROCESS,
            |m, _| (m.pid, m.start_time) == me,
            || mark_dirty(region, dirty),
        )
    }

    /// Inserts `value`'s bytes.
    pub fn insert_pod<T: bytemuck::Pod>(&mut self, owner: OwnerId, value: &T) -> Result<RecordId> {
        self.insert(owner, bytemuck::bytes_of(value))
    }

    /// The record's bytes, or None if the id is stale. mod_cachem's `cachem_get`.
    #[inline]
    pub fn get(&self, id: RecordId) -> Option<&[u8]> {
        self.layout.get(id)
    }

    /// The record's bytes, or `Stale` / `Corrupt`.
    #[inline]
    pub fn try_get(&self, id: RecordId) -> Result<&[u8]> {
        self.layout.try_get(id)
    }

    /// The record's bytes for writing.
    pub fn get_mut(&mut self, id: RecordId) -> Option<&mut [u8]> {
        self.begin_write();
        self.layout.get_mut(id)
    }

    /// The record as a `T`.
    pub fn get_pod<T: bytemuck::Pod>(&self, id: RecordId) -> Result<&T> {
        self.layout.get_pod(id)
    }

    /// The record as a mutable `T`.
    pub fn get_pod_mut<T: bytemuck::Pod>(&mut self, id: RecordId) -> Result<&mut T> {
        self.begin_write();
        self.layout.get_pod_mut(id)
    }

    /// Owner, pid, start time and length of a record.
    pub fn meta(&self, id: RecordId) -> Result<RecordMeta> {
        self.layout.meta(id)
    }

    /// Removes a record (Eager: compacts at once; Deferred: marks its block
    /// dead for a later compaction). mod_cachem's `cachem_delete`.
    pub fn remove(&mut self, id: RecordId) -> Result<()> {
        // A Deferred remove that does not compact is light
        // (`Layout::remove_would_compact`).
        if self.layout.remove_would_compact(id) {
            self.begin_write();
        }
        self.layout.remove(id)
    }

    /// The next record of `owner` after `after` (in insertion order; see
    /// [`Layout::next_of_owner`] for a removal mid-iteration and other
    /// `after`s). mod_cachem's `cachem_get_id`. Costs time in proportion to
    /// the owner's records, through the owner index.
    pub fn next_of_owner(&self, owner: OwnerId, after: Option<RecordId>) -> Option<RecordId> {
        self.layout.next_of_owner(owner, after)
    }

    /// The next record of `owner` inserted by `pid`. mod_cachem's `cachem_get_pid`.
    pub fn next_of_owner_pid(&self, owner: OwnerId, pid: u32, after: Option<RecordId>) -> Option<RecordId> {
        self.layout.next_of_owner_pid(owner, pid, after)
    }

    /// Every record with its metadata and bytes.
    pub fn iter(&self) -> impl Iterator<Item = (RecordMeta, &[u8])> + '_ {
        self.layout.iter()
    }

    /// The records of one owner, in insertion order, through the owner index.
    pub fn iter_owner(&self, owner: OwnerId) -> impl Iterator<Item = (RecordId, &[u8])> + '_ {
        self.layout.iter_owner(owner)
    }

    /// The records of one owner with their metadata, in insertion order.
    pub fn iter_owner_meta(&self, owner: OwnerId) -> impl Iterator<Item = (RecordMeta, &[u8])> + '_ {
        self.layout.iter_owner_meta(owner)
    }

    /// Removes the records of `owner` for which `pick` returns true, in one
    /// pass over that owner's records only.
    pub fn remove_of_owner(
        &mut self,
        owner: OwnerId,
        pick: impl FnMut(&RecordMeta, &[u8]) -> bool,
    ) -> Result<Removed> {
        let (region, dirty) = (self.region, &mut self.dirty);
        self.layout.remove_of_owner_then(owner, pick, || mark_dirty(region, dirty))
    }

    /// Removes every record of `owner` inserted by `pid`. mod_cachem's
    /// `cachem_delete_pid`.
    pub fn purge(&mut self, owner: OwnerId, pid: u32) -> Result<usize> {
        let (region, dirty) = (self.region, &mut self.dirty);
        let r = self.layout.remove_of_owner_then(owner, |m, _| m.pid == pid, || mark_dirty(region, dirty));
        Ok(r?.records)
    }

    /// Removes every record for which `keep` returns false, in one pass.
    pub fn retain(&mut self, keep: impl FnMut(&RecordMeta, &[u8]) -> bool) -> Result<Removed> {
        let (region, dirty) = (self.region, &mut self.dirty);
        self.layout.retain_then(keep, || mark_dirty(region, dirty))
    }

    /// Closes every hole left by removes in one compaction (`Deferred`
    /// regions; nothing to do under `Eager`). Returns the bytes moved.
    pub fn compact(&mut self) -> Result<u64> {
        self.begin_write();
        self.layout.compact_now()
    }

    /// The region's compaction policy.
    pub fn compaction(&self) -> Compaction {
        self.layout.compaction()
    }

    /// Full invariant check.
    pub fn verify(&self) -> Result<VerifyReport> {
        self.layout.verify()
    }

    /// Geometry, usage and counters.
    pub fn status(&self) -> Result<Status> {
        self.layout.status()
    }
}

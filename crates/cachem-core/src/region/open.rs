//! Opening and closing regions: `open`/`open_path` (create or attach under
//! the global lockfile), `create_file` (built in a temporary file and
//! published by a hard link, so the path never holds a half-made region),
//! `attach_file` (the header read through a raw copy and checked before the
//! mapping is trusted; a lock from another boot re-armed), anonymous
//! regions, `destroy`, and region name and runtime directory resolution.
//! Crash argument for creation: see the module docs of `region` ("Create or
//! attach") and `docs/design.md` ("Regions").

use super::dir;
use super::global_lock::GlobalLock;
use super::*;
use crate::format::{mutex_offset, Header, HEADER_SIZE, MAX_REGION_SIZE, OPT_NO_REAP, OPT_REAP_ALL};
use crate::layout::FormatOptions;
use std::fs::{self, File, OpenOptions};
use std::os::unix::fs::OpenOptionsExt;

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

/// A region file or lockfile that is a symlink is refused (cachem opens
/// them with `O_NOFOLLOW`; this says why instead of "too many levels of
/// symbolic links").
fn refuse_symlink(path: &Path) -> Result<()> {
    match fs::symlink_metadata(path) {
        Ok(m) if m.file_type().is_symlink() => Err(Error::UnsafeDir {
            path: path.to_path_buf(),
            reason: format!(
                "it is a symlink; cachem never opens its files through one (someone may have planted it): remove it (rm {})",
                path.display()
            ),
        }),
        _ => Ok(()),
    }
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
/// rwx for group / others that may read or write the files (their members
/// create the id store's files); the sticky bit when everyone may write,
/// so nobody can rename or remove another user's files (the runtime
/// directory check refuses a world-writable directory without it).
pub fn dir_mode(mode: u32) -> u32 {
    let mut m = 0o700;
    if mode & 0o060 != 0 {
        m |= 0o070;
    }
    if mode & 0o006 != 0 {
        m |= 0o1007;
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

/// A region is a regular file: anything else at its path (a FIFO, a
/// device, a directory, a socket) is refused before it is opened, so
/// opening never blocks on a FIFO and never reads a device.
fn refuse_non_regular(path: &Path, m: &fs::Metadata) -> Result<()> {
    if m.is_file() {
        return Ok(());
    }
    Err(Error::Io {
        op: "open region",
        path: path.to_path_buf(),
        source: io::Error::new(
            io::ErrorKind::InvalidInput,
            "not a regular file (a FIFO, device, directory or socket): not a cachem region",
        ),
    })
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
        let parent = path.parent().map(Path::to_path_buf).unwrap_or_else(|| PathBuf::from("/"));
        // An existing runtime directory is checked before anything in it is
        // looked at (a missing one is made and checked below).
        if !opts.trust_dir && fs::symlink_metadata(&parent).is_ok() {
            dir::check_dir(&parent, opts.owner.map(|o| o.0))?;
        }
        if !opts.create || opts.size.is_none() {
            // Attach only: leave no directory or lockfile behind for a
            // missing region.
            match fs::symlink_metadata(&path) {
                Ok(_) => {}
                Err(e) if e.kind() == io::ErrorKind::NotFound => return Err(Error::NotFound { path }),
                Err(e) => return Err(Error::Io { op: "open region", path, source: e }),
            }
        }
        // The runtime directory: made (mode and owner exact) if missing,
        // then checked, as is the lockfile's when it lies elsewhere (see
        // `dir.rs`), before any file in them is opened or created.
        dir::ensure_dir(&parent, dir_mode(opts.mode), opts.owner, opts.trust_dir)?;
        let lock_dir = lock_path.parent().map(Path::to_path_buf).unwrap_or_else(|| PathBuf::from("/"));
        if lock_dir != parent && !opts.trust_dir {
            dir::check_dir(&lock_dir, opts.owner.map(|o| o.0))?;
        }
        refuse_symlink(&path)?;
        refuse_symlink(&lock_path)?;
        if let Ok(m) = fs::symlink_metadata(&path) {
            refuse_non_regular(&path, &m)?;
        }
        let global = GlobalLock::take(&lock_path, opts.mode)?;
        if global.created {
            if let Err(e) = chown_to(&lock_path, opts.owner) {
                global.remove_made(&lock_path);
                return Err(e);
            }
        }
        // Leave nothing behind on failure: the lockfile too, if this call
        // made it (a file that is not a region, a failed creation).
        let mut region = match Self::open_locked(&path, &lock_path, opts) {
            Ok(r) => r,
            Err(e) => {
                global.remove_made(&lock_path);
                return Err(e);
            }
        };
        let made = if global.created {
            use std::os::unix::fs::MetadataExt;
            global.file.metadata().ok().map(|m| (m.dev(), m.ino()))
        } else {
            None
        };
        // Release the lockfile before waiting for the region lock: a process
        // holding the region lock may be waiting for the lockfile (opening
        // another handle inside a guard), and waiting for each other in
        // opposite orders would deadlock.
        drop(global);
        region.report.lock_holder = region.lock_holder();
        let started = std::time::Instant::now();
        let checked = region.lock_inner().and_then(|g| {
            let waited = started.elapsed();
            g.layout.verify()?;
            Ok((g.recovered, waited))
        });
        match checked {
            Ok((recovered, waited)) => {
                region.report.lock_waited = waited;
                region.report.recovered |= recovered;
            }
            Err(e) => {
                drop(region);
                if let Some(made) = made {
                    GlobalLock::remove_if_same(&lock_path, made);
                }
                return Err(with_path(e, &path));
            }
        }
        Ok(region)
    }

    /// The part of [`Region::open_path`] under the global lockfile: opens
    /// (or creates) the region file and attaches it.
    fn open_locked(path: &Path, lock_path: &Path, opts: &RegionOptions) -> Result<Region> {
        let path = path.to_path_buf();
        let mut created = false;
        // O_NONBLOCK: a FIFO put at the path after the check above must not
        // block the open (it is refused just below); it changes nothing for
        // a regular file.
        let file = match OpenOptions::new()
            .read(true)
            .write(true)
            .custom_flags(dir::OPEN_FLAGS | libc::O_NONBLOCK)
            .open(&path)
        {
            Ok(f) => {
                refuse_non_regular(&path, &f.metadata().map_err(io_err("stat region", &path))?)?;
                f
            }
            Err(e) if e.kind() == io::ErrorKind::NotFound => {
                if !opts.create {
                    return Err(Error::NotFound { path });
                }
                let Some(size) = opts.size else {
                    return Err(Error::NotFound { path });
                };
                created = true;
                // Publishing never replaces a region, so a racer holding
                // the old lockfile cannot harm one if this fails.
                Self::create_file(&path, size, opts)?
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
        chown_to(lock_path, file_owner)?;
        let mut region = Self::attach_file(file, &path, opts).map_err(|e| with_path(e, &path))?;
        region.report.created = created;
        region.lock_path = Some(lock_path.to_path_buf());
        region.file_owner = file_owner;
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
            .custom_flags(dir::OPEN_FLAGS)
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
        // A lock word from another boot may be owned by a thread that is on
        // no robust list: re-arm the mutex (no process of that boot is left)
        // and recover. We hold the global lockfile, so no one else attaches.
        // A stored boot id of zeros means "unknown" (the creator could not
        // read it): never re-arm then, live processes may use the mutex.
        let now = process::boot_id();
        let rearm = now != [0; 16] && hdr.boot_id != [0; 16] && hdr.boot_id != now;
        if !rearm {
            check_mutex(&map)?;
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
            lock_timeout: timeout_ns(opts.lock_timeout).into(),
            judge_tids: false,
        };
        // Pids are meaningless across pid namespaces: refuse to reap there.
        let ours = process::pid_namespace(None);
        region.foreign_ns = hdr.pid_ns != 0 && ours != 0 && hdr.pid_ns != ours;
        region.judge_tids =
            !region.foreign_ns && now != [0; 16] && hdr.boot_id != [0; 16] && judge_tids(hdr.pid_ns);
        if region.reap && region.foreign_ns {
            return Err(Error::PidNamespace {
                path: path.to_path_buf(),
                region_ns: hdr.pid_ns,
                our_ns: ours,
            });
        }
        if rearm {
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
            lock_timeout: timeout_ns(opts.lock_timeout).into(),
            judge_tids: judge_tids(h.pid_ns),
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

/// Whether this process may judge the tids in the lock word of a region
/// created in pid namespace `region_ns` (the boot is checked by the
/// caller): the same, known, pid namespace; a /proc that shows this
/// namespace (`/proc/self` is our pid); and glibc's mutex layout.
fn judge_tids(region_ns: u64) -> bool {
    let ours = process::pid_namespace(None);
    region_ns != 0 && region_ns == ours && process::proc_is_ours() && mutex::layout_ok().is_some()
}

/// Attach's check of the mutex bytes (the trailer's first `mutex_size`
/// bytes): its kind must be the one `mutex::init` gives here (robust,
/// process-shared, error-checking). A zeroed or foreign mutex would lose
/// the robust attribute (a dead holder then blocks every waiter) or fail
/// every lock with EINVAL.
fn check_mutex(map: &Mapping) -> Result<()> {
    let Some(want) = mutex::layout_ok() else { return Ok(()) };
    let m = map.as_ptr().wrapping_add(mutex_offset(map.len() as u64) as usize).cast();
    // SAFETY: the trailer lies inside the mapping (its length was checked
    // against the header size), 8-aligned (the region size is a multiple
    // of 8, checked by check_header).
    let kind = unsafe { mutex::kind(m) };
    if kind != want {
        return Err(Error::corrupt(
            "trailer mutex kind",
            format!(
                "{kind}, expected {want} (robust, process-shared, error-checking): the lock's bytes are damaged \
                 or were written by another libc; destroy and re-create the region (cachem destroy NAME), \
                 see docs/operations.md (a damaged region)"
            ),
        ));
    }
    Ok(())
}

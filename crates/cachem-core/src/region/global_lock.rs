//! The global lockfile: `GlobalLock` opens (creating with exactly the
//! region's mode) and flocks `<region>.lock`, starts over if the file at
//! the path was replaced while it waited, and removes a lockfile it made
//! itself when the open it guarded fails. Serialises creating, attaching
//! and destroying a region across processes (see `open.rs`).

use super::*;
use fs2::FileExt;
use std::fs::{self, File, OpenOptions};
use std::os::unix::fs::OpenOptionsExt;

/// Holds the global lockfile while alive.
pub(super) struct GlobalLock {
    pub(super) file: File,
    /// This call made the lockfile (it did not exist): a failed open
    /// removes it again (see [`GlobalLock::remove_made`]).
    pub(super) created: bool,
}

impl GlobalLock {
    /// Opens (creating with exactly `mode` if missing) and flocks the
    /// lockfile. A lockfile that someone unlinked or replaced while we waited
    /// (destroy, a failed create) is not the lock others take any more: in
    /// that case start over with the file now at the path.
    pub(super) fn take(path: &Path, mode: u32) -> Result<GlobalLock> {
        use std::os::unix::fs::{MetadataExt, PermissionsExt};
        loop {
            let mut created = false;
            let f = match OpenOptions::new()
                .read(true)
                .write(true)
                .create_new(true)
                .mode(mode)
                .custom_flags(dir::OPEN_FLAGS)
                .open(path)
            {
                Ok(f) => {
                    // The mode given at open is filtered by the umask; the
                    // lockfile we made gets exactly `mode`, so a group
                    // sharing the region can lock it too.
                    let _ = f.set_permissions(fs::Permissions::from_mode(mode));
                    created = true;
                    f
                }
                Err(e) if e.kind() == io::ErrorKind::AlreadyExists => {
                    match OpenOptions::new().read(true).write(true).custom_flags(dir::OPEN_FLAGS).open(path) {
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
                Ok(now) if now.ino() == ours.ino() && now.dev() == ours.dev() => {
                    return Ok(GlobalLock { file: f, created })
                }
                Ok(_) => continue,
                Err(e) if e.kind() == io::ErrorKind::NotFound => continue,
                Err(e) => return Err(Error::Io { op: "stat lockfile", path: path.to_path_buf(), source: e }),
            }
        }
    }
}

impl Drop for GlobalLock {
    fn drop(&mut self) {
        let _ = FileExt::unlock(&self.file);
    }
}

impl GlobalLock {
    /// After a failed open: removes the lockfile if this call made it (a
    /// lockfile someone else made is never removed), then releases it.
    /// Removing it under the lock is safe: a process waiting for it finds
    /// the path gone or holding another file and starts over on that.
    pub(super) fn remove_made(self, path: &Path) {
        if self.created {
            let _ = fs::remove_file(path);
        }
    }

    /// After a failed open whose lockfile was released already: takes the
    /// lockfile again and removes it if it is still the file this call made
    /// (same device and inode), else leaves it.
    pub(super) fn remove_if_same(path: &Path, made: (u64, u64)) {
        use std::os::unix::fs::MetadataExt;
        let Ok(f) = OpenOptions::new().read(true).write(true).custom_flags(dir::OPEN_FLAGS).open(path) else {
            return;
        };
        if FileExt::lock_exclusive(&f).is_err() {
            return;
        }
        let same = |m: &fs::Metadata| (m.dev(), m.ino()) == made;
        if f.metadata().is_ok_and(|m| same(&m)) && fs::metadata(path).is_ok_and(|m| same(&m)) {
            let _ = fs::remove_file(path);
        }
        let _ = FileExt::unlock(&f);
    }
}

//! The runtime directory's check: who may have put the files cachem is
//! about to open or create there. A directory that another user owns, or
//! that everyone can write without the sticky bit, lets that user plant a
//! symlink or swap a file under the name cachem uses (`/dev/shm` is
//! world-writable: `/dev/shm/cachem` may already exist, made by anyone).
//!
//! The rule (after sshd's StrictModes and PostgreSQL's socket directory),
//! applied to the directory itself, found with `O_NOFOLLOW`:
//!
//! - it is a directory, not a symlink (nor anything else);
//! - its owner is the caller (effective uid), root, or the user the caller
//!   gives the region's files to (`RegionOptions::owner`);
//! - it is not writable by everyone (`o+w`) unless it is sticky (as
//!   `/dev/shm` and `/tmp` are: root's, mode 1777). In a sticky directory
//!   nobody can rename or remove another user's files, and cachem's opens
//!   never follow a planted symlink (`O_NOFOLLOW`; `O_EXCL` for what it
//!   creates). What remains is squatting: another user may create a file
//!   under the name first, which cachem then attaches to (a region it
//!   does not trust a byte of, but whose lock that user holds). So a
//!   private region belongs in a directory of its own (the default
//!   `/dev/shm/cachem`, made 0700), not in `/dev/shm` itself;
//! - group write (`g+w`) is accepted: the owner (trusted above) granted
//!   it, and cachem makes the directory of a group-shared region (mode
//!   0660) group-writable itself, since the group's members create the id
//!   store's files. A region a group can write is a region the group can
//!   change anyway.
//!
//! The caller may vouch for a directory instead (`RegionOptions::trust_dir`,
//! `Config::trust_dir`, `cachem --trust-dir`); the files are still opened
//! without following symlinks. This module only decides; the opens are in
//! `open.rs` (and `cachem-ids` for the id store's lockfile).

use crate::error::{Error, Result};
use crate::sys::process;
use std::fs::{self, File, OpenOptions};
use std::io;
use std::os::unix::fs::{DirBuilderExt, MetadataExt, OpenOptionsExt, PermissionsExt};
use std::path::Path;

/// Flags for every open of a region, lockfile or id-store file: never
/// through a symlink at the last component, never inherited by an exec.
pub const OPEN_FLAGS: i32 = libc::O_NOFOLLOW | libc::O_CLOEXEC;

fn unsafe_dir(path: &Path, reason: String) -> Error {
    Error::UnsafeDir { path: path.to_path_buf(), reason }
}

/// Opens the directory itself, refusing a symlink or a non-directory.
fn open_dir(path: &Path) -> Result<File> {
    match OpenOptions::new().read(true).custom_flags(OPEN_FLAGS | libc::O_DIRECTORY).open(path) {
        Ok(f) => Ok(f),
        // O_NOFOLLOW with O_DIRECTORY: a symlink gives ELOOP or ENOTDIR.
        Err(e)
            if e.raw_os_error() == Some(libc::ELOOP)
                || fs::symlink_metadata(path).is_ok_and(|m| m.file_type().is_symlink()) =>
        {
            let to = fs::read_link(path).map(|t| format!(" (to {})", t.display())).unwrap_or_default();
            Err(unsafe_dir(
                path,
                format!(
                    "it is a symlink{to}; cachem does not follow a symlink for its runtime directory: remove it (rm {p}) and let cachem create the directory, or name the real directory",
                    p = path.display()
                ),
            ))
        }
        Err(e) if e.raw_os_error() == Some(libc::ENOTDIR) => Err(unsafe_dir(
            path,
            format!("it is not a directory: remove it (rm {}) or choose another directory", path.display()),
        )),
        Err(e) => Err(Error::Io { op: "open runtime directory", path: path.to_path_buf(), source: e }),
    }
}

/// Checks the runtime directory `path` by the rule of the module docs.
/// `also_trusted` is the uid the caller gives the region's files to, if
/// any.
pub fn check_dir(path: &Path, also_trusted: Option<u32>) -> Result<()> {
    let m = match open_dir(path) {
        Ok(f) => f.metadata(),
        // A directory we may not read (another user's 0700): judge it by
        // lstat, which the refusal can then explain.
        Err(Error::Io { source, .. }) if source.kind() == io::ErrorKind::PermissionDenied => {
            fs::symlink_metadata(path)
        }
        Err(e) => return Err(e),
    }
    .map_err(|e| Error::Io { op: "stat runtime directory", path: path.to_path_buf(), source: e })?;
    check_meta(path, m.uid(), m.mode(), also_trusted)
}

/// Checks the id store's directory, which lies in a runtime directory
/// that passed [`check_dir`]: a directory, not a symlink, not writable by
/// everyone unless sticky and the caller's. Its owner is not checked: any
/// user the runtime directory lets in (a member of a group sharing the
/// region) may have made it first.
pub fn check_store_dir(path: &Path) -> Result<()> {
    let f = open_dir(path)?;
    let m =
        f.metadata().map_err(|e| Error::Io { op: "stat id store", path: path.to_path_buf(), source: e })?;
    check_meta(path, m.uid(), m.mode(), Some(m.uid()))
}

fn check_meta(path: &Path, uid: u32, mode: u32, also_trusted: Option<u32>) -> Result<()> {
    let euid = process::effective_ids().0;
    let p = path.display();
    if uid != euid && uid != 0 && Some(uid) != also_trusted {
        return Err(unsafe_dir(
            path,
            format!(
                "it is owned by uid {uid}, not by you (uid {euid}) or root, so that user controls what is in it: remove it (rm -r {p}) and let cachem create it, or if you trust it, chown root {p} && chmod 0755 {p}"
            ),
        ));
    }
    if mode & 0o002 != 0 && mode & 0o1000 == 0 {
        return Err(unsafe_dir(
            path,
            format!(
                "it is writable by every user (mode {:04o}) without the sticky bit, so anyone can rename or replace the files in it: chmod o-w {p} (e.g. chown root {p} && chmod 0755 {p}), or chmod +t {p}, or use a directory of your own (the default /dev/shm/cachem)",
                mode & 0o7777
            ),
        ));
    }
    Ok(())
}

/// Makes the runtime directory `path` if it is missing (its parents with
/// `mode` too, as `mkdir -p` does), with exactly `mode` and `owner`; then,
/// unless `trusted`, checks it (also when it existed, or when another
/// process made it first).
pub fn ensure_dir(path: &Path, mode: u32, owner: Option<(u32, u32)>, trusted: bool) -> Result<()> {
    let io = |op| move |e| Error::Io { op, path: path.to_path_buf(), source: e };
    match fs::symlink_metadata(path) {
        Ok(_) => {}
        Err(e) if e.kind() == io::ErrorKind::NotFound => {
            if let Some(parent) = path.parent().filter(|p| !p.as_os_str().is_empty()) {
                fs::DirBuilder::new()
                    .recursive(true)
                    .mode(mode)
                    .create(parent)
                    .map_err(io("create runtime directory"))?;
            }
            // The last component on its own (mode 0700 for private files),
            // not recursive: if someone made it meanwhile, it is theirs, and
            // the check below judges it.
            match fs::DirBuilder::new().mode(mode).create(path) {
                Ok(()) => {
                    // Through a descriptor of the directory just made (never
                    // a symlink put in its place): the exact mode (the umask
                    // filtered it), and the owner.
                    let f = open_dir(path)?;
                    f.set_permissions(fs::Permissions::from_mode(mode))
                        .map_err(io("chmod runtime directory"))?;
                    if let Some((uid, gid)) = owner {
                        std::os::unix::fs::fchown(&f, Some(uid), Some(gid))
                            .map_err(io("chown runtime directory"))?;
                    }
                }
                Err(e) if e.kind() == io::ErrorKind::AlreadyExists => {}
                Err(e) => return Err(io("create runtime directory")(e)),
            }
        }
        Err(e) => return Err(io("stat runtime directory")(e)),
    }
    if trusted {
        return Ok(());
    }
    check_dir(path, owner.map(|o| o.0))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_rule_on_owner_and_mode() {
        let p = Path::new("/x");
        let me = process::effective_ids().0;
        let other = if me == 65534 { 65533 } else { 65534 };
        assert!(check_meta(p, me, 0o40700, None).is_ok());
        assert!(check_meta(p, 0, 0o40755, None).is_ok());
        assert!(check_meta(p, me, 0o40770, None).is_ok(), "group write granted by a trusted owner");
        assert!(check_meta(p, me, 0o41777, None).is_ok(), "sticky, world-writable, mine");
        assert!(check_meta(p, 0, 0o41777, None).is_ok(), "/dev/shm itself");
        assert!(check_meta(p, other, 0o40700, Some(other)).is_ok(), "the files' owner");
        for (uid, mode) in [(other, 0o40700), (other, 0o40777), (other, 0o41777), (me, 0o40777), (0, 0o40757)]
        {
            let e = check_meta(p, uid, mode, None).unwrap_err();
            assert!(matches!(e, Error::UnsafeDir { .. }), "{uid} {mode:o}: {e}");
        }
    }
}

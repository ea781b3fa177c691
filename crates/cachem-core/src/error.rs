//! The one error type of cachem-core.

use crate::RecordId;
use std::path::PathBuf;

/// Result alias used throughout cachem-core.
pub type Result<T, E = Error> = std::result::Result<T, E>;

/// Everything that can go wrong. Each message says what happened and, where
/// there is something to do, what to do.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum Error {
    /// The free gap cannot hold the record.
    #[error("region full: the record needs {needed} bytes, the free gap has {free}; remove records, reap dead processes or create a larger region")]
    Full { needed: u64, free: u64 },

    /// The record can never fit in this region, even when empty.
    #[error("record of {len} bytes is too large: this region holds at most {max} bytes per record")]
    TooLarge { len: u64, max: u64 },

    /// The record was removed (or the id belongs to another region).
    #[error("stale record id {0}: the record was removed, or the id is from another region")]
    Stale(RecordId),

    /// A typed (Pod) access does not match the record.
    #[error("record {id} is {actual} bytes, the type needs {expected} bytes{align}",
        align = if *.align_ok { "" } else { " and alignment of at most 8" })]
    PodMismatch { id: RecordId, expected: usize, actual: usize, align_ok: bool },

    /// The record does not fit the caller's buffer (`get_into`).
    #[error("record {id} is {len} bytes, the buffer holds {capacity}")]
    BufferTooSmall { id: RecordId, len: usize, capacity: usize },

    /// A size asked for is not usable as a region size.
    #[error("bad region size {size}: {reason}")]
    BadSize { size: u64, reason: &'static str },

    /// The image was written by a newer or older layout version.
    #[error("region format version {found} is not supported (this build reads version {supported}); regions are runtime state: destroy it (cachem destroy NAME) and re-create it, or use a matching cachem")]
    Version { found: u32, supported: u32 },

    /// The image comes from a machine of another byte order or ABI.
    #[error("region was made on a machine with another ABI ({what}); regions cannot be shared across machine kinds")]
    ForeignAbi { what: String },

    /// The image breaks an invariant. `field` names the header field or the
    /// structure at fault; `detail` gives the value.
    #[error("region corrupt: {field}: {detail}")]
    Corrupt { field: &'static str, detail: String },

    /// An interrupted compaction must be finished (by locking the region)
    /// before this read-only check can succeed.
    #[error("region needs recovery: an interrupted compaction is recorded in its journal (lock it once to recover)")]
    RecoveryRequired,

    /// The existing region has another size than the one asked for.
    #[error("region {path} was created with size {existing}, asked for {requested}; open it without a size (attach_any_size) or destroy it first (cachem destroy)")]
    SizeMismatch { path: PathBuf, existing: u64, requested: u64 },

    /// The lock was left unrecoverable.
    #[error("the lock of region {path} is unrecoverable (a previous recovery did not finish); destroy and re-create the region")]
    LockUnrecoverable { path: PathBuf },

    /// A named region does not exist and creation was not asked for.
    #[error("region {path} does not exist; create it first (cachem create)")]
    NotFound { path: PathBuf },

    /// A bad region name.
    #[error("bad region name {name:?}: {reason}")]
    BadName { name: String, reason: &'static str },

    /// The runtime directory (or a file in it) is not safe to use: a
    /// symlink, another user's, or writable by everyone. `reason` says what
    /// is wrong and how to fix it.
    #[error("refusing {path}: {reason}")]
    UnsafeDir { path: PathBuf, reason: String },

    /// Another process runs in a different pid namespace.
    #[error("region {path} was created in pid namespace {region_ns}, this process is in {our_ns}: pids cannot be compared across namespaces; open with reaping disabled or use a region of this namespace")]
    PidNamespace { path: PathBuf, region_ns: u64, our_ns: u64 },

    /// This thread already holds the region lock (a second `lock()` by the
    /// same thread is an error, never a hang).
    #[error(
        "region {path}: this thread already holds the region lock; drop the first guard before locking again"
    )]
    AlreadyLocked { path: PathBuf },

    /// The lock timeout passed while a live thread held the region lock
    /// (see `RegionOptions::lock_timeout`). The message gives the wait
    /// rounded down to a tenth of a second ("at least").
    #[error("{} (thread {holder_tid}) has held the lock of region {path} for at least {:.1} s; if it is stopped (SIGSTOP, a debugger), continue or kill it",
        holder_pid.map_or_else(|| "a thread this process cannot see".to_string(), |p| format!("process {p}")),
        (waited.as_millis() / 100) as f64 / 10.0)]
    LockTimeout { path: PathBuf, holder_pid: Option<u32>, holder_tid: u32, waited: std::time::Duration },

    /// An option conflicts with the region: a creation-time option that the
    /// existing region was made without, or one that makes no sense for this
    /// kind of region. Options are never silently ignored.
    #[error("region {path}: option {option} cannot be honoured: {detail}; drop the option, or destroy and re-create the region with it")]
    OptionMismatch { path: PathBuf, option: &'static str, detail: String },

    /// A snapshot file (`Cache::save` / `Cache::restore`) is damaged, is not
    /// a cachem snapshot, or does not fit the region; nothing was changed.
    #[error("snapshot {path}: {reason}")]
    Snapshot { path: PathBuf, reason: String },

    /// An insert named the reserved owner id of the name table
    /// ([`crate::OwnerId::NAMES`], `u32::MAX`).
    #[error("owner id {0} is reserved for the region's name table; use an id from cachem_id")]
    ReservedOwner(u32),

    /// The owner-id registry failed (its message names the path).
    #[error("owner-id registry: {0}")]
    Registry(Box<dyn std::error::Error + Send + Sync>),

    /// An operating-system call failed.
    #[error("{op} {path}: {source}")]
    Io {
        op: &'static str,
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
}

/// The kind of an [`Error`], without its details: for matching in tests and
/// for mapping to error codes (the C ABI).
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
#[non_exhaustive]
pub enum ErrorKind {
    Full,
    TooLarge,
    Stale,
    PodMismatch,
    /// The record does not fit the caller's buffer.
    BufferTooSmall,
    BadSize,
    Version,
    ForeignAbi,
    Corrupt,
    RecoveryRequired,
    SizeMismatch,
    LockUnrecoverable,
    NotFound,
    BadName,
    PidNamespace,
    OptionMismatch,
    Snapshot,
    ReservedOwner,
    Registry,
    /// An OS call failed with "permission denied" (EACCES / EPERM).
    PermissionDenied,
    /// This thread already holds the region lock.
    AlreadyLocked,
    /// A live holder kept the region lock past the lock timeout.
    LockTimeout,
    Io,
}

impl Error {
    /// What kind of error this is.
    pub fn kind(&self) -> ErrorKind {
        match self {
            Error::Full { .. } => ErrorKind::Full,
            Error::TooLarge { .. } => ErrorKind::TooLarge,
            Error::Stale(_) => ErrorKind::Stale,
            Error::PodMismatch { .. } => ErrorKind::PodMismatch,
            Error::BufferTooSmall { .. } => ErrorKind::BufferTooSmall,
            Error::BadSize { .. } => ErrorKind::BadSize,
            Error::Version { .. } => ErrorKind::Version,
            Error::ForeignAbi { .. } => ErrorKind::ForeignAbi,
            Error::Corrupt { .. } => ErrorKind::Corrupt,
            Error::RecoveryRequired => ErrorKind::RecoveryRequired,
            Error::SizeMismatch { .. } => ErrorKind::SizeMismatch,
            Error::LockUnrecoverable { .. } => ErrorKind::LockUnrecoverable,
            Error::NotFound { .. } => ErrorKind::NotFound,
            Error::BadName { .. } => ErrorKind::BadName,
            // The C API's CACHEM_E_PERMISSION too: access refused, here by
            // cachem's own check of the directory.
            Error::UnsafeDir { .. } => ErrorKind::PermissionDenied,
            Error::PidNamespace { .. } => ErrorKind::PidNamespace,
            Error::OptionMismatch { .. } => ErrorKind::OptionMismatch,
            Error::Snapshot { .. } => ErrorKind::Snapshot,
            Error::ReservedOwner(_) => ErrorKind::ReservedOwner,
            Error::Registry(_) => ErrorKind::Registry,
            Error::Io { source, .. } if source.kind() == std::io::ErrorKind::PermissionDenied => {
                ErrorKind::PermissionDenied
            }
            Error::AlreadyLocked { .. } => ErrorKind::AlreadyLocked,
            Error::LockTimeout { .. } => ErrorKind::LockTimeout,
            Error::Io { .. } => ErrorKind::Io,
        }
    }

    pub(crate) fn corrupt(field: &'static str, detail: impl Into<String>) -> Self {
        Error::Corrupt { field, detail: detail.into() }
    }

    /// For a `Corrupt` error, the field it names.
    pub fn corrupt_field(&self) -> Option<&'static str> {
        match self {
            Error::Corrupt { field, .. } => Some(field),
            _ => None,
        }
    }
}

//! Errors of the C ABI: a code for C and a detail message for
//! `cachem_last_error_message`, and the one wrapper every entry point runs
//! in (catching panics).

use crate::cachem_error_t::{self, *};
use crate::state;
use std::panic::{catch_unwind, AssertUnwindSafe};

/// A failed call: the code returned to C and the detail text.
#[derive(Debug)]
pub(crate) struct Fail {
    pub code: cachem_error_t,
    pub msg: String,
}

impl Fail {
    pub fn new(code: cachem_error_t, msg: impl Into<String>) -> Fail {
        Fail { code, msg: msg.into() }
    }
    pub fn invalid(msg: impl Into<String>) -> Fail {
        Fail::new(CACHEM_E_INVALID_ARGUMENT, msg)
    }
    pub fn misuse(msg: impl Into<String>) -> Fail {
        Fail::new(CACHEM_E_MISUSE, msg)
    }
    pub fn busy(msg: impl Into<String>) -> Fail {
        Fail::new(CACHEM_E_BUSY, msg)
    }
    pub fn not_locked(msg: impl Into<String>) -> Fail {
        Fail::new(CACHEM_E_NOT_LOCKED, msg)
    }
    pub fn already_locked(msg: impl Into<String>) -> Fail {
        Fail::new(CACHEM_E_ALREADY_LOCKED, msg)
    }
    pub fn internal(msg: impl Into<String>) -> Fail {
        Fail::new(CACHEM_E_INTERNAL, msg)
    }
}

/// The code of each `cachem::Error` variant.
pub(crate) fn code_of(e: &cachem_rs::Error) -> cachem_error_t {
    use cachem_rs::Error as E;
    match e {
        E::Full { .. } => CACHEM_E_NO_ROOM,
        E::TooLarge { .. } => CACHEM_E_TOO_LARGE,
        E::Stale(_) => CACHEM_E_STALE,
        E::BufferTooSmall { .. } => CACHEM_E_BUFFER_TOO_SMALL,
        E::PodMismatch { .. } | E::BadSize { .. } | E::BadName { .. } | E::ReservedOwner(_) => {
            CACHEM_E_INVALID_ARGUMENT
        }
        E::Version { .. } | E::ForeignAbi { .. } => CACHEM_E_VERSION,
        E::Corrupt { .. } | E::RecoveryRequired => CACHEM_E_CORRUPT,
        E::SizeMismatch { .. } => CACHEM_E_SIZE_MISMATCH,
        E::LockUnrecoverable { .. } => CACHEM_E_LOCK_UNRECOVERABLE,
        E::NotFound { .. } => CACHEM_E_NOT_FOUND,
        E::PidNamespace { .. } => CACHEM_E_PID_NAMESPACE,
        E::Registry(inner) => match inner.downcast_ref::<cachem_rs::IdError>() {
            Some(cachem_rs::IdError::InvalidName { .. }) => CACHEM_E_INVALID_ARGUMENT,
            _ => CACHEM_E_REGISTRY,
        },
        E::Snapshot { .. } => CACHEM_E_SNAPSHOT,
        E::AlreadyLocked { .. } => CACHEM_E_ALREADY_LOCKED,
        E::LockTimeout { .. } => CACHEM_E_LOCK_TIMEOUT,
        E::OptionMismatch { .. } => CACHEM_E_INVALID_ARGUMENT,
        E::UnsafeDir { .. } => CACHEM_E_PERMISSION,
        E::Io { source, .. } if source.kind() == std::io::ErrorKind::PermissionDenied => CACHEM_E_PERMISSION,
        E::Io { .. } => CACHEM_E_IO,
        // A variant added to cachem-core after this file was written.
        _ => CACHEM_E_INTERNAL,
    }
}

impl From<cachem_rs::Error> for Fail {
    fn from(e: cachem_rs::Error) -> Fail {
        Fail { code: code_of(&e), msg: e.to_string() }
    }
}

fn panic_text(p: &(dyn std::any::Any + Send)) -> &str {
    p.downcast_ref::<&str>().copied().or_else(|| p.downcast_ref::<String>().map(String::as_str)).unwrap_or("")
}

/// Runs one entry point: no panic crosses into C, and a failure's detail is
/// kept for `cachem_last_error_message` (prefixed with the function name).
#[inline]
pub(crate) fn ffi(func: &str, f: impl FnOnce() -> Result<(), Fail>) -> cachem_error_t {
    // Counted until the code (and the last error) is set: a signal handler
    // calling `cachem_purge_process` meanwhile defers its purge to here.
    let _in = state::InCall::enter();
    match catch_unwind(AssertUnwindSafe(f)) {
        Ok(Ok(())) => CACHEM_OK,
        Ok(Err(e)) => {
            state::set_last_error(&format!("{func}: {}", e.msg));
            e.code
        }
        Err(p) => {
            state::abandon_locks_after_panic();
            state::set_last_error(&format!(
                "{func}: internal error (a Rust panic was caught; this thread's region locks were released \
                 and marked for recovery): {}",
                panic_text(&*p)
            ));
            CACHEM_E_INTERNAL
        }
    }
}

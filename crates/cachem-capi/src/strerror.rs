//! Error texts: `cachem_strerror` (a fixed text per code) and
//! `cachem_last_error_message` (the calling thread's last detail).

use crate::cachem_t;
use crate::state;
use std::ffi::{c_char, c_int};

/// A fixed English text for an error code (static storage; never NULL).
/// Takes an `int` so that any value, even one not in `cachem_error_t`, is
/// safe to pass.
#[no_mangle]
pub extern "C" fn cachem_strerror(code: c_int) -> *const c_char {
    let s: &'static [u8] = match code {
        0 => b"success\0",
        1 => b"no room in the region\0",
        2 => b"record too large for this region\0",
        3 => b"stale record index (deleted, or from another region)\0",
        4 => b"region corrupt\0",
        5 => b"region format version or ABI not supported\0",
        6 => b"region exists with another size\0",
        7 => b"region lock unrecoverable\0",
        8 => b"permission denied\0",
        9 => b"I/O error\0",
        10 => b"region not found\0",
        11 => b"owner ids exhausted\0",
        12 => b"snapshot damaged, foreign or not fitting\0",
        13 => b"invalid argument\0",
        14 => b"this thread does not hold the lock\0",
        15 => b"this thread already holds the lock\0",
        16 => b"misuse (closed or unknown handle)\0",
        17 => b"buffer too small\0",
        18 => b"internal error\0",
        19 => b"handle busy (a thread holds its lock)\0",
        20 => b"region from another pid namespace\0",
        21 => b"too many handles open in this process\0",
        22 => b"lock timeout: a live process holds the region lock\0",
        _ => b"unknown cachem error code\0",
    };
    s.as_ptr().cast()
}

/// The detail of the calling thread's last failed cachem call ("" if none),
/// with the function name, paths and sizes. Valid until this thread's next
/// failed call. `c` is unused (the detail is per thread); it may be NULL.
#[no_mangle]
pub extern "C" fn cachem_last_error_message(c: *const cachem_t) -> *const c_char {
    let _ = c;
    state::last_error_ptr()
}

//! File allocation.

use std::fs::File;
use std::io;
use std::os::fd::AsRawFd;

/// Allocates `len` bytes of `file` for real (`posix_fallocate`), so a full
/// filesystem (a tmpfs without room) fails here with ENOSPC instead of
/// SIGBUS when the mapping is first touched.
///
/// `posix_fallocate` returns the error number instead of setting `errno`
/// (fs2's `allocate` reads `errno` and reports "Success" on ENOSPC), so it is
/// called directly.
pub fn allocate(file: &File, len: u64) -> io::Result<()> {
    let len = libc::off_t::try_from(len).map_err(|_| io::Error::from_raw_os_error(libc::EFBIG))?;
    loop {
        // SAFETY: the descriptor is open for the lifetime of `file`; the call
        // takes no pointers.
        let rc = unsafe { libc::posix_fallocate(file.as_raw_fd(), 0, len) };
        match rc {
            0 => return Ok(()),
            libc::EINTR => continue,
            e => return Err(io::Error::from_raw_os_error(e)),
        }
    }
}

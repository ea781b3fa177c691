//! Shared memory mappings: a file mapped `MAP_SHARED`, or anonymous shared
//! memory (`MAP_SHARED | MAP_ANONYMOUS`) inherited by children forked later.

use crate::error::{Error, Result};
use std::fs::File;
use std::os::fd::AsRawFd;
use std::path::Path;
use std::ptr::NonNull;

/// One mapping, unmapped on drop.
///
/// The bytes behind it are shared with other processes, which may write them
/// at any time. So the mapping never hands out a reference by itself: only
/// [`Mapping::as_ptr`]. Turning that into a reference is the lock guard's job
/// (`region::Guard`), under the region's lock.
#[derive(Debug)]
pub struct Mapping {
    ptr: NonNull<u8>,
    len: usize,
}

// SAFETY: the mapping is plain shared memory; which thread unmaps it does not
// matter, and all access to its bytes goes through the region lock.
unsafe impl Send for Mapping {}
// SAFETY: as above; `&Mapping` only exposes the pointer and the length.
unsafe impl Sync for Mapping {}

impl Mapping {
    /// Maps `len` bytes of `file` read-write and shared.
    pub fn file(file: &File, len: usize, path: &Path) -> Result<Mapping> {
        Self::map(len, libc::MAP_SHARED, file.as_raw_fd(), path)
    }

    /// Maps `len` bytes of fresh zeroed anonymous shared memory.
    pub fn anonymous(len: usize) -> Result<Mapping> {
        Self::map(len, libc::MAP_SHARED | libc::MAP_ANONYMOUS, -1, Path::new("<anonymous>"))
    }

    fn map(len: usize, flags: libc::c_int, fd: libc::c_int, path: &Path) -> Result<Mapping> {
        if len == 0 {
            return Err(Error::BadSize { size: 0, reason: "cannot map 0 bytes" });
        }
        // SAFETY: a fresh mapping chosen by the kernel (addr = NULL) aliases
        // no Rust object; fd is either -1 (anonymous) or an open descriptor
        // that outlives this call.
        let p = unsafe {
            libc::mmap(std::ptr::null_mut(), len, libc::PROT_READ | libc::PROT_WRITE, flags, fd, 0)
        };
        if p == libc::MAP_FAILED {
            return Err(Error::Io {
                op: "mmap",
                path: path.to_path_buf(),
                source: std::io::Error::last_os_error(),
            });
        }
        let ptr = NonNull::new(p.cast::<u8>()).ok_or_else(|| Error::Io {
            op: "mmap",
            path: path.to_path_buf(),
            source: std::io::Error::other("mmap returned NULL"),
        })?;
        Ok(Mapping { ptr, len })
    }

    /// Start of the mapping (page-aligned).
    #[inline]
    pub fn as_ptr(&self) -> *mut u8 {
        self.ptr.as_ptr()
    }

    /// Length in bytes.
    #[inline]
    pub fn len(&self) -> usize {
        self.len
    }

    /// Always false: a mapping is never empty.
    pub fn is_empty(&self) -> bool {
        false
    }
}

impl Drop for Mapping {
    fn drop(&mut self) {
        // SAFETY: ptr/len are exactly what mmap returned; no reference into
        // the mapping outlives it (guards borrow the region that owns it).
        unsafe {
            libc::munmap(self.ptr.as_ptr().cast(), self.len);
        }
    }
}

//! A new region image and the checks of an existing one's immutable
//! header: [`format`](fn@format) writes the header of an empty region (the magic last,
//! so a half-made header is never accepted), [`check_immutable`] and
//! [`check_header`] validate the fields that never change before anything
//! trusts an image, [`check_size`] and [`max_record_len_for`] the sizes.

use super::*;

/// What [`format`](fn@format) writes into the immutable part of a new header.
#[derive(Clone, Copy, Debug, Default)]
pub struct FormatOptions {
    /// Random id of this incarnation of the region.
    pub generation: u64,
    /// `/proc/sys/kernel/random/boot_id` of the creating boot.
    pub boot_id: [u8; 16],
    /// Inode of the creator's pid namespace, 0 if unknown.
    pub pid_ns: u64,
    /// `OPT_*` bits.
    pub options: u32,
    /// `size_of::<pthread_mutex_t>()` of the creator (part of the ABI tag).
    pub mutex_size: u32,
    /// The compaction policy, fixed for the region's life.
    pub compaction: Compaction,
}

/// Largest record a region of `size` bytes (trailer included) could ever
/// hold (when empty).
pub fn max_record_len_for(size: u64) -> u64 {
    size.saturating_sub(TRAILER_SIZE as u64).saturating_sub(H).saturating_sub(BH + B) & !7
}

/// Checks that `size` can be a region size.
pub fn check_size(size: u64) -> Result<()> {
    if size % ALIGN as u64 != 0 {
        return Err(Error::BadSize { size, reason: "must be a multiple of 8" });
    }
    if size < MIN_REGION_SIZE {
        return Err(Error::BadSize { size, reason: "must be at least one page (4096 bytes)" });
    }
    if size > MAX_REGION_SIZE {
        return Err(Error::BadSize { size, reason: "must be below 4 GiB (block offsets are 32-bit)" });
    }
    Ok(())
}

/// Initialises a region image in `buf`: header, empty block section, empty
/// table. The magic is written last, so a reader never accepts a half-made
/// header. Every byte of `buf` is overwritten.
pub fn format(buf: &mut [u8], opts: &FormatOptions) -> Result<()> {
    check_size(buf.len() as u64)?;
    check_align(buf)?;
    buf.fill(0);
    let size = buf.len() as u64;
    let h: &mut Header = bytemuck::from_bytes_mut(&mut buf[..HEADER_SIZE]);
    h.endian = ENDIAN_TAG;
    h.format_version = FORMAT_VERSION;
    h.header_size = HEADER_SIZE as u32;
    h.bptr_size = BPTR_SIZE as u32;
    h.region_size = size;
    h.generation = opts.generation;
    h.o_st = H;
    h.pid_ns = opts.pid_ns;
    h.options = opts.options;
    h.mutex_size = opts.mutex_size;
    h.compaction = opts.compaction.to_raw();
    h.trailer_size = TRAILER_SIZE as u32;
    h.boot_id = opts.boot_id;
    h.o_fr = H;
    h.o_bptop = size - TRAILER_SIZE as u64;
    h.journal.mv_src = NO_MOVE;
    // Start the generations at a per-region value, so an id from another
    // region is almost surely stale here.
    h.last_gen = (opts.generation ^ (opts.generation >> 32)) as u32;
    fence();
    h.magic = MAGIC;
    Ok(())
}

pub(super) fn check_align(buf: &[u8]) -> Result<()> {
    if buf.as_ptr() as usize % ALIGN != 0 {
        return Err(Error::corrupt("buffer", "region buffer is not 8-byte aligned"));
    }
    Ok(())
}

/// Validates the immutable header fields of an image against its length.
/// Used by [`Layout::open`] and by attach before a mapping is trusted.
pub fn check_immutable(buf: &[u8]) -> Result<()> {
    check_align(buf)?;
    if buf.len() < HEADER_SIZE {
        return Err(Error::corrupt(
            "region_size",
            format!("image of {} bytes is smaller than the {HEADER_SIZE}-byte header", buf.len()),
        ));
    }
    check_header(bytemuck::from_bytes(&buf[..HEADER_SIZE]), buf.len() as u64)
}

/// Validates the immutable fields of header `h` of an image of `len` bytes.
pub fn check_header(h: &Header, len: u64) -> Result<()> {
    if h.magic != MAGIC {
        return Err(Error::corrupt("magic", format!("{:02x?} is not a cachem region", h.magic)));
    }
    if h.endian != ENDIAN_TAG {
        let what = if h.endian == ENDIAN_TAG.swap_bytes() {
            "other byte order".to_string()
        } else {
            format!("unknown ABI tag {:#010x}", h.endian)
        };
        return Err(Error::ForeignAbi { what });
    }
    if h.format_version != FORMAT_VERSION {
        return Err(Error::Version { found: h.format_version, supported: FORMAT_VERSION });
    }
    if h.header_size as usize != HEADER_SIZE {
        return Err(Error::corrupt("header_size", format!("{} (expected {HEADER_SIZE})", h.header_size)));
    }
    if h.bptr_size as usize != BPTR_SIZE {
        return Err(Error::corrupt("bptr_size", format!("{} (expected {BPTR_SIZE})", h.bptr_size)));
    }
    if h.region_size != len {
        return Err(Error::corrupt(
            "region_size",
            format!("header says {} bytes, the image has {len}", h.region_size),
        ));
    }
    if let Err(e) = check_size(h.region_size) {
        return Err(Error::corrupt("region_size", e.to_string()));
    }
    if h.o_st != H {
        return Err(Error::corrupt("o_st", format!("{} (expected {H})", h.o_st)));
    }
    if h.options & !(OPT_REAP_ALL | OPT_NO_REAP) != 0 {
        return Err(Error::corrupt("options", format!("unknown bits {:#x}", h.options)));
    }
    if Compaction::from_raw(h.compaction).is_none() {
        return Err(Error::corrupt("compaction", format!("unknown policy {}", h.compaction)));
    }
    if h.trailer_size as usize != TRAILER_SIZE {
        return Err(Error::corrupt("trailer_size", format!("{} (expected {TRAILER_SIZE})", h.trailer_size)));
    }
    Ok(())
}

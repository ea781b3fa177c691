//! cachem-core: the region layout engine, the shared mapping and the lock.
//!
//! - [`format`](mod@format): the byte layout (header, block header, block pointer), with
//!   compile-time checks of every size and offset.
//! - [`layout`]: the layout engine, pure code over `&mut [u8]` (no `unsafe`).
//! - `sys`: everything that talks to the operating system; all `unsafe`
//!   lives there.

mod error;
pub mod format;
mod ids;
pub mod layout;
pub mod optimistic;
pub mod region;
pub mod sys;

pub use bytemuck;
pub use error::{Error, ErrorKind, Result};
pub use format::Compaction;
pub use ids::{OwnerId, ParseRecordIdError, RecordId, RecordMeta};
pub use layout::{
    FormatOptions, Layout, OwnerUsage, PidUsage, ProcTag, RecoveryReport, Removed, Status, VerifyReport,
};
pub use region::{
    DeadProcess, Guard, LockHolder, OpenReport, ReapReport, Region, RegionOptions, UnjudgedProcess,
};

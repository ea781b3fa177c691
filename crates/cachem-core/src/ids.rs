//! Small value types shared by every layer: owner ids and record ids.

use std::fmt;

/// Who a record belongs to: a small integer handed out by the id registry
/// (`cachem-ids`) for a name, or [`OwnerId::PROCESS`].
///
/// `OwnerId::PROCESS` (mod_cachem's `CACHEM_INVALID_ID`) marks a
/// process-scoped record: it is deleted when the inserting process exits or
/// dies. The registry never hands out 0.
#[derive(Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash, Default)]
pub struct OwnerId(pub u32);

impl OwnerId {
    /// The reserved owner of process-scoped records.
    pub const PROCESS: OwnerId = OwnerId(0);

    /// The raw integer, as stored in a table entry.
    pub const fn get(self) -> u32 {
        self.0
    }

    /// True for [`OwnerId::PROCESS`].
    pub const fn is_process(self) -> bool {
        self.0 == 0
    }
}

impl fmt::Debug for OwnerId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        if self.is_process() {
            f.write_str("OwnerId::PROCESS")
        } else {
            write!(f, "OwnerId({})", self.0)
        }
    }
}

impl fmt::Display for OwnerId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        if self.is_process() {
            f.write_str("process")
        } else {
            write!(f, "{}", self.0)
        }
    }
}

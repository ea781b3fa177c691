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

    /// The reserved owner of the region's name table (`u32::MAX`): never
    /// handed out, refused by inserts, hidden from iteration, status and
    /// reaping. See `docs/ids.md`.
    pub const NAMES: OwnerId = OwnerId(u32::MAX);

    /// The reserved owner of the name table's hash index (`u32::MAX - 1`):
    /// reserved like [`OwnerId::NAMES`] (never handed out, refused by
    /// inserts, hidden). See `docs/ids.md`.
    pub const NAMES_INDEX: OwnerId = OwnerId(u32::MAX - 1);

    /// The raw integer, as stored in a table entry.
    pub const fn get(self) -> u32 {
        self.0
    }

    /// True for [`OwnerId::PROCESS`].
    pub const fn is_process(self) -> bool {
        self.0 == 0
    }

    /// True for the name table's reserved owners, [`OwnerId::NAMES`] and
    /// [`OwnerId::NAMES_INDEX`].
    pub const fn is_names(self) -> bool {
        self.0 >= u32::MAX - 1
    }
}

impl fmt::Debug for OwnerId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        if self.is_process() {
            f.write_str("OwnerId::PROCESS")
        } else if self.0 == u32::MAX {
            f.write_str("OwnerId::NAMES")
        } else if self.is_names() {
            f.write_str("OwnerId::NAMES_INDEX")
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

/// A stable handle to one record: the table slot and its generation.
///
/// It stays valid while the record's block moves during compaction, and is
/// valid in every process attached to the same region. Once the record is
/// removed the slot's generation changes, so an old `RecordId` is detected
/// as stale and never reaches another record. Printed (and parsed) as
/// `<slot>.<generation>`, e.g. `3.2718281`.
#[derive(Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct RecordId(u64);

impl RecordId {
    /// Builds an id from its parts.
    pub const fn new(slot: u32, gen: u32) -> Self {
        RecordId(((gen as u64) << 32) | slot as u64)
    }
    /// The table slot.
    pub const fn slot(self) -> u32 {
        self.0 as u32
    }
    /// The generation of the slot when the record was inserted.
    pub const fn generation(self) -> u32 {
        (self.0 >> 32) as u32
    }
    /// The packed form (slot in the low 32 bits).
    pub const fn to_u64(self) -> u64 {
        self.0
    }
    /// Inverse of [`RecordId::to_u64`].
    pub const fn from_u64(v: u64) -> Self {
        RecordId(v)
    }
}

impl fmt::Debug for RecordId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "RecordId({}.{})", self.slot(), self.generation())
    }
}

impl fmt::Display for RecordId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}.{}", self.slot(), self.generation())
    }
}

/// Error from parsing a [`RecordId`].
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("invalid record id {0:?}: expected <slot>.<generation>, e.g. 3.2718281")]
pub struct ParseRecordIdError(pub String);

impl std::str::FromStr for RecordId {
    type Err = ParseRecordIdError;
    fn from_str(s: &str) -> Result<Self, Self::Err> {
        let err = || ParseRecordIdError(s.to_string());
        let (a, b) = s.trim().split_once('.').ok_or_else(err)?;
        let slot = a.parse::<u32>().map_err(|_| err())?;
        let gen = b.parse::<u32>().map_err(|_| err())?;
        Ok(RecordId::new(slot, gen))
    }
}

/// What the table says about a record (not its bytes).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct RecordMeta {
    pub id: RecordId,
    pub owner: OwnerId,
    /// Pid of the inserting process.
    pub pid: u32,
    /// Start time of that process (clock ticks since boot), 0 if unknown.
    pub start_time: u64,
    /// Length of the record data in bytes.
    pub len: u32,
}

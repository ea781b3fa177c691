//! cachem-core: the region layout engine, the shared mapping and the lock.
mod ids;
pub use ids::OwnerId;

//! Per-download tallies, for `shoal status`.

use std::sync::atomic::{AtomicU32, AtomicU64};

/// Per-task tallies.
#[derive(Debug, Default)]
pub struct TaskCounters {
    /// Bytes fetched from the origin.
    pub origin_bytes: AtomicU64,
    /// Verified bytes fetched from parents.
    pub peer_bytes: AtomicU64,
    /// Parents offered by the scheduler.
    pub parents: AtomicU32,
}

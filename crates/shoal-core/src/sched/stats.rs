//! Read-only views of the scheduler for metrics and status pages: per-task snapshots and
//! monotonic counters.
//!
//! Values only; exporting them (Prometheus, gRPC) is the service's job.

use super::{DecisionKind, FailReason, HostId, TaskId};

/// Decisions handed out, by kind.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct DecisionCounts {
    /// [`Decision::BackToSource`](super::Decision::BackToSource) answers.
    pub back_to_source: u64,
    /// Non-empty [`Decision::Parents`](super::Decision::Parents) answers.
    pub parents: u64,
    /// Empty [`Decision::Parents`](super::Decision::Parents) answers (wait).
    pub wait: u64,
}

impl DecisionCounts {
    /// The count for one kind.
    pub fn get(&self, kind: DecisionKind) -> u64 {
        match kind {
            DecisionKind::BackToSource => self.back_to_source,
            DecisionKind::Parents => self.parents,
            DecisionKind::Wait => self.wait,
        }
    }

    pub(super) fn add(&mut self, kind: DecisionKind) {
        match kind {
            DecisionKind::BackToSource => self.back_to_source += 1,
            DecisionKind::Parents => self.parents += 1,
            DecisionKind::Wait => self.wait += 1,
        }
    }
}

/// Piece failures reported by children, by reason.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct FailureCounts {
    /// [`FailReason::DigestMismatch`].
    pub digest_mismatch: u64,
    /// [`FailReason::Timeout`].
    pub timeout: u64,
    /// [`FailReason::Refused`].
    pub refused: u64,
    /// [`FailReason::Io`].
    pub io: u64,
}

impl FailureCounts {
    /// The count for one reason.
    pub fn get(&self, reason: FailReason) -> u64 {
        match reason {
            FailReason::DigestMismatch => self.digest_mismatch,
            FailReason::Timeout => self.timeout,
            FailReason::Refused => self.refused,
            FailReason::Io => self.io,
        }
    }

    pub(super) fn add(&mut self, reason: FailReason) {
        match reason {
            FailReason::DigestMismatch => self.digest_mismatch += 1,
            FailReason::Timeout => self.timeout += 1,
            FailReason::Refused => self.refused += 1,
            FailReason::Io => self.io += 1,
        }
    }
}

/// Scheduler-wide counters since start; they never go down (tasks dropped keep counting here).
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Counters {
    /// Decisions handed out, by kind.
    pub decisions: DecisionCounts,
    /// Piece failures reported, by reason.
    pub failures: FailureCounts,
    /// Piece reports whose digest contradicted the kept one.
    pub digest_conflicts: u64,
    /// Times a peer marked a parent bad.
    pub parents_marked_bad: u64,
    /// Hosts removed by expiry.
    pub hosts_expired: u64,
    /// Peers that reported done.
    pub peers_done: u64,
    /// Peers that reported failed.
    pub peers_failed: u64,
    /// Peers that left (reported, or with their expired host).
    pub peers_left: u64,
    /// Parents offered back to peers that did not ask (see [`Offer`](super::Offer)).
    pub offers: u64,
    /// Digest tables a child proved forged (dropped, their authors distrusted).
    pub forged_tables: u64,
}

/// One peer of a task, as seen by the scheduler.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PeerStats {
    /// The peer's host.
    pub host: HostId,
    /// Pieces held.
    pub pieces: u32,
    /// Fetching from the origin now.
    pub back_to_source: bool,
    /// Holds the whole, verified blob.
    pub done: bool,
    /// Parents currently assigned to it.
    pub parents: u32,
    /// Children currently assigned to it.
    pub children: u32,
    /// Parents it reported bad.
    pub bad_parents: u32,
    /// Reported for digest mismatches by enough peers that it is offered to nobody in the task.
    pub quarantined: bool,
}

/// A snapshot of one task.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct TaskStats {
    /// The task (blob digest).
    pub task: TaskId,
    /// Blob size in bytes.
    pub size: u64,
    /// Piece size in bytes.
    pub piece_size: u64,
    /// Piece count.
    pub pieces: u32,
    /// Pieces whose digest the scheduler keeps.
    pub digests_known: u32,
    /// Peers registered.
    pub peers: u32,
    /// Peers holding the whole blob.
    pub done_peers: u32,
    /// Peers fetching from the origin now.
    pub back_to_source_peers: u32,
    /// Every peer, by host id.
    pub per_peer: Vec<PeerStats>,
    /// Decisions handed out for this task.
    pub decisions: DecisionCounts,
    /// Piece failures reported for this task.
    pub failures: FailureCounts,
    /// Digest conflicts reported for this task.
    pub digest_conflicts: u64,
}

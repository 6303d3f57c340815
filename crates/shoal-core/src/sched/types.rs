//! The scheduler's vocabulary: host and task identities, what a host announces, and the
//! answers the scheduler gives (decisions, candidates, piece and failure outcomes).
//!
//! Plain values only; no decision logic lives here.

use std::fmt;

use crate::{Bitmap, Digest};

/// A daemon's stable identity in the cluster (e.g. its node name).
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct HostId(pub String);

impl HostId {
    /// A host id from any string.
    pub fn new(id: impl Into<String>) -> Self {
        Self(id.into())
    }

    /// The id as a string.
    pub fn as_str(&self) -> &str {
        &self.0
    }
}

impl fmt::Display for HostId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}

impl From<&str> for HostId {
    fn from(id: &str) -> Self {
        Self(id.to_owned())
    }
}

impl From<String> for HostId {
    fn from(id: String) -> Self {
        Self(id)
    }
}

/// One authenticated connection to the scheduler, numbered by the service. A host id is spoken
/// for only by the session that announced it, until that session ends.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct SessionId(pub u64);

/// Whether a session may speak for a host, as told by
/// [`speaker`](super::Scheduler::speaker).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Speaker {
    /// The session announced the host (and still owns it).
    Owner,
    /// The host is not announced (or expired): announce it first.
    Unknown,
    /// Another live session announced the host.
    Other,
}

/// A task is one blob, identified by the blob's digest: the same layer pulled from two
/// registries or two repositories is one task.
pub type TaskId = Digest;

/// What a daemon announces about itself, periodically (it is also its heartbeat).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct HostInfo {
    /// Stable identity.
    pub id: HostId,
    /// Peer (QUIC) listener, `ip:port`, handed to children as is.
    pub addr: String,
    /// Site label (zone, rack, edge location). Peers of one site share one origin copy and are
    /// preferred as parents of each other. Compared as an exact string.
    pub site: String,
    /// Upload limit in bytes per second; 0 means unlimited. A higher limit ranks higher among
    /// otherwise equal parents.
    pub upload_limit: u64,
    /// Active uploads the daemon reports right now (all tasks).
    pub load: u32,
}

/// A parent offered to a child.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Candidate {
    /// The parent's host.
    pub host: HostId,
    /// Its peer (QUIC) address.
    pub addr: String,
    /// The pieces it held when the decision was made (it may have more by the time the child
    /// connects; the parent's "have" updates tell).
    pub have: Bitmap,
}

/// A parent offered to a peer that did not ask: a newcomer that chose the peer as its parent is
/// offered back to it, so peers that arrive together trade with each other instead of all
/// leaning on the first one. Drained with [`take_offers`](super::Scheduler::take_offers).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Offer {
    /// The task.
    pub task: TaskId,
    /// The peer that gets a new parent.
    pub peer: HostId,
    /// The new parent.
    pub parent: Candidate,
}

/// The scheduler's answer to [`register`](super::Scheduler::register) and
/// [`reschedule`](super::Scheduler::reschedule).
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Decision {
    /// Fetch from the origin registry and report each piece with its digest
    /// (`from_origin = true`).
    BackToSource,
    /// Download from these parents, best first, checking every piece against
    /// [`piece_digest`](super::Scheduler::piece_digest). An empty list means wait: no parent is
    /// available and the site's origin budget is used up; ask again with
    /// [`reschedule`](super::Scheduler::reschedule) after a short delay.
    Parents(Vec<Candidate>),
}

impl Decision {
    /// The kind of decision, for metrics.
    pub fn kind(&self) -> DecisionKind {
        match self {
            Decision::BackToSource => DecisionKind::BackToSource,
            Decision::Parents(p) if p.is_empty() => DecisionKind::Wait,
            Decision::Parents(_) => DecisionKind::Parents,
        }
    }

    /// The parents offered (empty for back-to-source and wait).
    pub fn parents(&self) -> &[Candidate] {
        match self {
            Decision::BackToSource => &[],
            Decision::Parents(p) => p,
        }
    }
}

/// The three kinds of decision, as counted in metrics.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum DecisionKind {
    /// [`Decision::BackToSource`].
    BackToSource,
    /// [`Decision::Parents`] with at least one parent.
    Parents,
    /// [`Decision::Parents`] with no parent: wait and ask again.
    Wait,
}

/// Why a child could not get a piece from a parent.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum FailReason {
    /// The piece did not match the scheduler's digest: the parent is marked bad at once.
    DigestMismatch,
    /// The parent did not answer in time.
    Timeout,
    /// The parent refused (busy, no such piece, not a cluster member).
    Refused,
    /// Connection or stream error.
    Io,
}

impl FailReason {
    /// Every reason, for exporting one metric series per reason.
    pub const ALL: [FailReason; 4] =
        [FailReason::DigestMismatch, FailReason::Timeout, FailReason::Refused, FailReason::Io];

    /// Metric label value.
    pub fn as_str(self) -> &'static str {
        match self {
            FailReason::DigestMismatch => "digest_mismatch",
            FailReason::Timeout => "timeout",
            FailReason::Refused => "refused",
            FailReason::Io => "io",
        }
    }
}

/// How a finished piece was recorded by [`piece_finished`](super::Scheduler::piece_finished).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum PieceRecorded {
    /// First origin report for this piece: its digest is now the one children check against.
    DigestKept,
    /// The digest matched the one the scheduler keeps.
    Verified,
    /// A report from a parent download while the scheduler keeps no digest for the piece yet:
    /// recorded, but it does not set the digest table.
    Unverified,
}

/// What a failure report did to the parent, returned by
/// [`piece_failed`](super::Scheduler::piece_failed).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ParentStatus {
    /// The parent stays usable for this peer.
    Usable,
    /// The parent is bad for this peer and task: never offered to it again.
    Bad,
}

//! Errors of the scheduler's operations, one small enum per kind of call.
//!
//! Each variant says why the input was refused and what the caller should do; none of them
//! leaves the scheduler's state half-changed.

use super::{HostId, TaskId};
use crate::{PieceDigest, PieceLayout};

/// Why [`announce_host`](super::Scheduler::announce_host) refused an announcement.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum HostError {
    /// Another live session announced this host id: only it may speak for the host until it
    /// ends (or the host expires). Remedy: a second daemon with the same `host_id` must pick
    /// another one.
    #[error("host {0} is announced by another session")]
    Taken(HostId),
}

/// Why [`register`](super::Scheduler::register) refused a peer.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum RegisterError {
    /// The host has not announced itself, or expired: its address and site are unknown.
    /// Remedy: announce the host, then register again.
    #[error("host {0} is not announced (or expired)")]
    UnknownHost(HostId),
    /// The task already exists with another piece layout (another size or piece size).
    /// Remedy: the daemon's size for this blob is wrong or the blob's digest collides; fetch
    /// from the origin without the swarm.
    #[error("task {task} has layout {existing:?}, the peer reported {got:?}")]
    LayoutMismatch {
        /// The task.
        task: TaskId,
        /// The layout the scheduler keeps.
        existing: PieceLayout,
        /// The layout in the request.
        got: PieceLayout,
    },
    /// The layout is unusable: the piece size is not a power of two, or the blob has more
    /// pieces than [`Config::max_pieces`](super::Config::max_pieces). Remedy: compute the
    /// layout with [`PieceLayout::for_size`].
    #[error("layout {0:?} is not a valid piece layout")]
    BadLayout(PieceLayout),
    /// The bitmap of held pieces does not cover exactly the layout's pieces.
    /// Remedy: send a bitmap of `expected` pieces.
    #[error("bitmap covers {got} pieces, the layout has {expected}")]
    BitmapLength {
        /// The layout's piece count.
        expected: u32,
        /// The bitmap's length.
        got: u32,
    },
}

/// Why a report about a registered peer was refused: the host is not (or no longer) a member
/// of the task. (Not the daemon's `peer::PeerError`, which is about the peer protocol's
/// transport.)
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum MembershipError {
    /// No such task: it never existed or every peer left (or expired). Remedy: register.
    #[error("task {0} is unknown")]
    UnknownTask(TaskId),
    /// The task exists but this host is not one of its peers (it left, expired or never
    /// registered). Remedy: register.
    #[error("host {host} is not a peer of task {task}")]
    UnknownPeer {
        /// The task.
        task: TaskId,
        /// The host.
        host: HostId,
    },
}

/// Why [`piece_finished`](super::Scheduler::piece_finished) refused a piece.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum PieceError {
    /// The task or peer is unknown.
    #[error(transparent)]
    Membership(#[from] MembershipError),
    /// The piece index is past the layout's last piece. Remedy: a bug in the reporter.
    #[error("piece {index} is out of range (the blob has {count} pieces)")]
    OutOfRange {
        /// The reported index.
        index: u32,
        /// The layout's piece count.
        count: u32,
    },
    /// The reported digest differs from the one the scheduler keeps for this piece (the first
    /// one an origin download reported). The piece is not recorded as held and the kept digest
    /// stays. Remedy: the reporter drops the piece and fetches it again.
    #[error("piece {index}: reported {reported}, the scheduler keeps {kept}")]
    DigestConflict {
        /// The piece.
        index: u32,
        /// The digest the scheduler keeps.
        kept: PieceDigest,
        /// The digest in the report.
        reported: PieceDigest,
    },
}

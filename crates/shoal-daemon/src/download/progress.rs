//! What readers of a blob download see: where it stands ([`Progress`]) and how it ended
//! ([`State`]). The writer publishes them; response bodies, the peer server and the swarm read them.

use std::sync::Arc;

use shoal_core::{Bitmap, PieceLayout};

/// Where a blob download stands, as its readers see it.
#[derive(Debug, Clone)]
pub struct Progress {
    /// Bytes present from offset 0 without a gap (not yet verified as a whole).
    pub available: u64,
    /// Bytes from offset 0 without a gap that came from the origin itself: the prefix a
    /// client may receive before the whole blob is verified. Bytes from parents count only once
    /// the whole blob hashes to its digest, because a piece digest is only as honest as the
    /// member that reported it.
    pub confirmed: u64,
    /// Pieces present and hashed.
    pub have: Bitmap,
    /// Pieces whose bytes a ranged response may send before the whole blob is verified: those
    /// streamed here from the origin, and those from parents that matched their trusted digest.
    /// Pieces resumed from disk are not among them. A subset of `have`.
    pub verified: Bitmap,
    /// Pieces streaming from the origin right now, with the bytes present from each one's
    /// start, by piece: those bytes are verified too (they came from the origin itself).
    pub streaming: Vec<(u32, u64)>,
    /// Running, verified, complete or failed.
    pub state: State,
}

impl Progress {
    /// How far from `pos` a ranged response may send: the end of the verified bytes that run
    /// from `pos` without a gap (`pos` itself when the byte at `pos` is not verified yet).
    pub fn verified_from(&self, layout: &PieceLayout, pos: u64) -> u64 {
        if self.state.is_verified() {
            return layout.size;
        }
        let mut i = layout.piece_of(pos);
        while i < layout.count() && self.verified.get(i) {
            i += 1;
        }
        let streamed = self.streaming.iter().find(|(p, _)| *p == i).map_or(0, |(_, n)| *n);
        (layout.piece(i).start + streamed).max(pos)
    }
}

/// The end state of a download, if it has one.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum State {
    /// Still receiving pieces.
    Running,
    /// Every byte is in the file and the blob hashes to its digest (recorded durably); the file
    /// is being synced and moved to its final path.
    Verified,
    /// Verified and at its final path.
    Complete,
    /// Given up; the message says why.
    Failed(Arc<str>),
    /// The disk could not hold it (full, failing, read-only): nothing was kept.
    StoreFailed(Arc<str>),
}

impl State {
    /// True once the whole blob hashed to its digest: every byte may be served.
    pub fn is_verified(&self) -> bool {
        matches!(self, Self::Verified | Self::Complete)
    }
}

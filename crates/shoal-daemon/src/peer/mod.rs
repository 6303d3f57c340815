//! The peer protocol: daemons exchange verified pieces over QUIC.
//!
//! `tls` sets up per-node certificates, `auth` proves cluster membership, `frame` frames
//! messages, `server` serves pieces this daemon holds (paced by the upload limit), `client`
//! fetches pieces from parents (paced by the download limit). Neither side decides which piece
//! to fetch from whom (that is the picker's and scheduler's job) nor trusts a parent's bytes
//! (the caller checks every piece against the scheduler's digest).

pub mod auth;
pub mod client;
pub mod frame;
pub mod seeding;
pub mod server;
pub mod tls;

use std::fs::File;
use std::sync::Arc;

use shoal_core::{Bitmap, ByteRange, Digest};
use tokio::sync::watch;

use crate::download::writer::Progress;

/// What a parent serves from: the pieces it holds, complete or partial.
pub trait PieceStore: Send + Sync + 'static {
    /// The file and byte range of a piece held and verified, if any.
    fn piece(&self, task: &Digest, index: u32) -> Option<(Arc<File>, ByteRange)>;
    /// The pieces held now and, for a blob still downloading, a receiver of progress.
    fn have(&self, task: &Digest) -> Option<(Bitmap, Option<watch::Receiver<Progress>>)>;
}

/// Why a peer exchange failed.
#[derive(Debug, thiserror::Error)]
pub enum PeerError {
    /// Could not connect (address, network, TLS).
    #[error("connect to {addr}: {message}")]
    Connect {
        /// The peer.
        addr: std::net::SocketAddr,
        /// What failed.
        message: String,
    },
    /// The other side does not hold the cluster token (or refused ours).
    #[error("peer {0} failed the cluster-token handshake")]
    Unauthorized(std::net::SocketAddr),
    /// The connection or stream broke.
    #[error("peer stream: {0}")]
    Stream(String),
    /// The parent does not hold the piece (any more).
    #[error("parent does not have the piece")]
    NotFound,
    /// The parent is at its upload capacity.
    #[error("parent is busy")]
    Busy,
    /// The parent announced a piece of the wrong length.
    #[error("parent sent {got} bytes for a piece of {want}")]
    Length {
        /// Announced length.
        got: u64,
        /// Expected length.
        want: u64,
    },
}

impl From<frame::FrameError> for PeerError {
    fn from(e: frame::FrameError) -> Self {
        Self::Stream(e.to_string())
    }
}

/// The TLS exporter secret of a connection, the input of membership proofs.
fn exporter(conn: &quinn::Connection) -> Option<[u8; 32]> {
    let mut out = [0u8; 32];
    conn.export_keying_material(&mut out, auth::EXPORTER_LABEL, b"").ok()?;
    Some(out)
}

#[cfg(test)]
mod tests;

//! Serving pieces to children: accept connections, check the cluster token, then answer piece,
//! "have" and "digests" requests, one bidirectional stream each, paced by the upload limit.
//!
//! A peer that has not proven the token holds at most one stream and a few KiB of credit (see
//! `tls`), for at most the handshake timeout; how many such peers, and connections in all, are
//! served at once is capped ([`PeerLimits`]). A stream must deliver its request in time.

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use prometheus_client::metrics::counter::Counter;
use shoal_core::Digest;
use shoal_proto::peer::{
    request, DigestsAnswer, DigestsRequest, HaveUpdate, Hello, PieceHeader, PieceRequest, PieceStatus, Request,
    SiteAnswer, SiteRequest,
};

use tokio::sync::{OwnedSemaphorePermit, Semaphore};

use super::auth::{self, Role};
use super::tls::{PROVEN_CHILD_STREAMS, PROVEN_CHILD_WINDOW};
use super::{exporter, frame, PieceStore};
use crate::limits::Limiter;
use crate::peer::seeding::Seeds;
use crate::store::meta::MetaStore;
use crate::store::read::read_at;

/// Bytes read from the file and handed to the stream at once (one blocking read, one pacing
/// step, one buffer that quinn keeps without copying).
const READ: u64 = 1 << 20;
/// Time a peer has to complete the handshake.
const HANDSHAKE_TIMEOUT: Duration = Duration::from_secs(10);
/// Time a stream has to deliver its request.
const REQUEST_TIMEOUT: Duration = Duration::from_secs(5);
/// Piece digests in one answer to a digests request (16384 × 34 bytes fit a frame).
pub const DIGESTS_PER_PAGE: u32 = 16384;

/// What the server needs.
pub struct ServerCtx {
    /// This daemon's host id.
    pub host_id: String,
    /// The cluster token.
    pub token: Vec<u8>,
    /// Pieces held.
    pub store: Arc<dyn PieceStore>,
    /// Blob records, for the piece digests held (digests requests).
    pub meta: Arc<dyn MetaStore>,
    /// Upload pacing.
    pub upload: Arc<Limiter>,
    /// Bytes uploaded to peers.
    pub uploaded: Counter,
    /// Blobs this daemon seeds from the origin: each of their pieces goes to one child at a
    /// time, the others are told "busy".
    pub seeds: Arc<Seeds>,
    /// Test-only fault: flip a byte in every piece served (to test that children catch it).
    pub corrupt: bool,
    /// Answers what this node knows of a repository (site requests); none: nothing is known.
    pub site: Option<Arc<dyn SiteKnowledge>>,
}

/// What this node knows of repositories, for members whose origin cannot be asked (see
/// `mirror::site`). Answers from caches only, at once.
pub trait SiteKnowledge: Send + Sync {
    /// The answer to one site request.
    fn answer(&self, req: &SiteRequest) -> SiteAnswer;
}

/// Why serving a peer connection or one of its requests stopped.
#[derive(Debug, thiserror::Error)]
pub enum ServeError {
    /// The TLS handshake failed, or the connection broke.
    #[error(transparent)]
    Connection(#[from] quinn::ConnectionError),
    /// Reading the request or writing the answer's framed messages failed.
    #[error(transparent)]
    Frame(#[from] frame::FrameError),
    /// The connection has no TLS exporter secret to check a proof against.
    #[error("no TLS exporter")]
    NoExporter,
    /// The peer's proof does not match the cluster token.
    #[error("peer {remote} ({host_id}) does not hold the cluster token")]
    Unauthorized {
        /// The peer's address.
        remote: SocketAddr,
        /// The host id it gave.
        host_id: String,
    },
    /// The peer did not prove the token within the handshake timeout.
    #[error("peer {remote} did not prove the cluster token in {timeout:?}")]
    HandshakeTimeout {
        /// The peer's address.
        remote: SocketAddr,
        /// The timeout.
        timeout: Duration,
    },
    /// A stream did not deliver its whole request in time.
    #[error("no complete request from {child} within {timeout:?}")]
    RequestTimeout {
        /// The child's host id.
        child: Arc<str>,
        /// The timeout.
        timeout: Duration,
    },
    /// A request with nothing in it.
    #[error("empty request")]
    EmptyRequest,
    /// Reading the piece from its file failed.
    #[error(transparent)]
    Read(#[from] std::io::Error),
    /// The blocking read of the piece did not finish (panicked or cancelled).
    #[error(transparent)]
    ReadTask(#[from] tokio::task::JoinError),
    /// Sending the piece's bytes failed.
    #[error(transparent)]
    Send(#[from] quinn::WriteError),
}

/// Bounds on what peers may hold of this server.
#[derive(Debug, Clone, Copy)]
pub struct PeerLimits {
    /// Connections at once, proven or not (`max_connections`); more are refused.
    pub max_connections: usize,
    /// Connections at once still in their TLS handshake or token proof; more are refused.
    pub max_unproven: usize,
    /// Time a connection has for the TLS handshake and the token proof.
    pub handshake_timeout: Duration,
    /// Time a stream has to deliver its whole request.
    pub request_timeout: Duration,
}

impl Default for PeerLimits {
    fn default() -> Self {
        Self {
            max_connections: crate::listener::DEFAULT_MAX_CONNECTIONS,
            max_unproven: 64,
            handshake_timeout: HANDSHAKE_TIMEOUT,
            request_timeout: REQUEST_TIMEOUT,
        }
    }
}

/// Accepts peer connections until the endpoint closes. Connections over either cap of
/// `limits` are refused before their handshake (they cost nothing but the refusal).
pub async fn serve(endpoint: quinn::Endpoint, ctx: Arc<ServerCtx>, limits: PeerLimits) {
    let open = Arc::new(Semaphore::new(limits.max_connections.max(1)));
    let unproven = Arc::new(Semaphore::new(limits.max_unproven.max(1)));
    let mut refused = 0u64;
    while let Some(incoming) = endpoint.accept().await {
        let permits = (open.clone().try_acquire_owned(), unproven.clone().try_acquire_owned());
        let (Ok(open_permit), Ok(unproven_permit)) = permits else {
            refused += 1;
            if refused.is_power_of_two() {
                tracing::warn!(
                    remote = %incoming.remote_address(),
                    refused,
                    "peer connections over max_connections or unproven handshakes refused"
                );
            }
            incoming.refuse();
            continue;
        };
        let ctx = ctx.clone();
        tokio::spawn(async move {
            if let Err(e) = connection(incoming, ctx, limits, unproven_permit).await {
                tracing::debug!(error = %e, "peer connection ended");
            }
            drop(open_permit);
        });
    }
}

async fn connection(
    incoming: quinn::Incoming,
    ctx: Arc<ServerCtx>,
    limits: PeerLimits,
    unproven: OwnedSemaphorePermit,
) -> Result<(), ServeError> {
    let remote = incoming.remote_address();
    let conn = match tokio::time::timeout(limits.handshake_timeout, prove(incoming, &ctx)).await {
        Ok(Ok(proven)) => proven,
        Ok(Err((conn, e))) => {
            tracing::warn!(%remote, error = %e, "refused peer");
            if let Some(conn) = conn {
                conn.close(quinn::VarInt::from_u32(1), b"unauthorized");
            }
            return Err(e);
        }
        Err(_) => return Err(ServeError::HandshakeTimeout { remote, timeout: limits.handshake_timeout }),
    };
    drop(unproven);
    let (conn, child) = conn;
    loop {
        let (send, recv) = conn.accept_bi().await?;
        let (ctx, child) = (ctx.clone(), child.clone());
        tokio::spawn(async move {
            if let Err(e) = request(send, recv, ctx, child, limits.request_timeout).await {
                tracing::debug!(error = %e, "peer request failed");
            }
        });
    }
}

/// The TLS handshake and the child's token proof; then the child gets its flow-control credit
/// and streams, and this daemon's proof. A failure gives back the connection, if there is one.
async fn prove(
    incoming: quinn::Incoming,
    ctx: &ServerCtx,
) -> Result<(quinn::Connection, Arc<str>), (Option<quinn::Connection>, ServeError)> {
    let conn = incoming.await.map_err(|e| (None, e.into()))?;
    let remote = conn.remote_address();
    let fail = |e: ServeError| (Some(conn.clone()), e);
    let (mut send, mut recv) = conn.accept_bi().await.map_err(|e| fail(e.into()))?;
    let hello: Hello = frame::read_max(&mut recv, frame::MAX_REQUEST).await.map_err(|e| fail(e.into()))?;
    let secret = exporter(&conn).ok_or_else(|| fail(ServeError::NoExporter))?;
    if !auth::verify(&ctx.token, Role::Client, &secret, &hello.proof) {
        return Err(fail(ServeError::Unauthorized { remote, host_id: hello.host_id }));
    }
    conn.set_receive_window(quinn::VarInt::from_u32(PROVEN_CHILD_WINDOW));
    conn.set_max_concurrent_bi_streams(quinn::VarInt::from_u32(PROVEN_CHILD_STREAMS));
    let reply = Hello { host_id: ctx.host_id.clone(), proof: auth::prove(&ctx.token, Role::Server, &secret) };
    frame::write(&mut send, &reply).await.map_err(|e| fail(e.into()))?;
    let _ = send.finish();
    Ok((conn, hello.host_id.into()))
}

async fn request(
    mut send: quinn::SendStream,
    mut recv: quinn::RecvStream,
    ctx: Arc<ServerCtx>,
    child: Arc<str>,
    timeout: Duration,
) -> Result<(), ServeError> {
    let req: Request = match tokio::time::timeout(timeout, frame::read_max(&mut recv, frame::MAX_REQUEST)).await {
        Ok(read) => read?,
        Err(_) => {
            let _ = recv.stop(quinn::VarInt::from_u32(3));
            let _ = send.reset(quinn::VarInt::from_u32(3));
            return Err(ServeError::RequestTimeout { child, timeout });
        }
    };
    match req.request {
        Some(request::Request::Piece(p)) => piece(&mut send, p, &ctx, &child).await,
        Some(request::Request::Have(h)) => have(&mut send, &h.task_id, &ctx).await,
        Some(request::Request::Digests(d)) => {
            frame::write(&mut send, &digest_page(ctx.meta.as_ref(), &d)).await.map_err(ServeError::from)
        }
        Some(request::Request::Site(q)) => {
            let answer = ctx.site.as_ref().map(|s| s.answer(&q)).unwrap_or_default();
            frame::write(&mut send, &answer).await.map_err(ServeError::from)
        }
        None => Err(ServeError::EmptyRequest),
    }?;
    let _ = send.finish();
    Ok(())
}

/// Serves one piece: "not found" if it is not held, "busy" if it is a piece this daemon
/// seeds from the origin and another child got it moments ago (that child has it soon).
async fn piece(
    send: &mut quinn::SendStream,
    p: PieceRequest,
    ctx: &ServerCtx,
    child: &Arc<str>,
) -> Result<(), ServeError> {
    let task = p.task_id.parse::<Digest>().ok();
    let Some((task, (file, range))) = task.and_then(|t| Some((t, ctx.store.piece(&t, p.index)?))) else {
        return refuse(send, PieceStatus::NotFound).await;
    };
    if !ctx.seeds.admit(&task, p.index, child) {
        return refuse(send, PieceStatus::Busy).await;
    }
    let header = PieceHeader { status: PieceStatus::Ok as i32, length: range.len() };
    frame::write(send, &header).await?;
    let mut pos = range.start;
    while pos < range.end {
        let len = (range.end - pos).min(READ) as usize;
        let f = file.clone();
        let mut chunk = tokio::task::spawn_blocking(move || read_at(&f, pos, len)).await??;
        if ctx.corrupt {
            let mut bytes = chunk.to_vec();
            crate::fault::corrupt_piece(&mut bytes);
            chunk = bytes.into();
        }
        ctx.upload.acquire(len as u64).await;
        // Handed over whole: quinn keeps the buffer instead of copying it.
        send.write_chunk(chunk).await?;
        ctx.uploaded.inc_by(len as u64);
        pos += len as u64;
    }
    Ok(())
}

/// Answers a piece request with `status` and no bytes.
async fn refuse(send: &mut quinn::SendStream, status: PieceStatus) -> Result<(), ServeError> {
    Ok(frame::write(send, &PieceHeader { status: status as i32, length: 0 }).await?)
}

/// One page of the piece digests held of a blob: [`DIGESTS_PER_PAGE`] from `first` on, each
/// the 32 bytes of a piece present here, else empty. Not held (or unreadable): `held` false.
fn digest_page(meta: &dyn MetaStore, req: &DigestsRequest) -> DigestsAnswer {
    let record = req.task_id.parse::<Digest>().ok().and_then(|d| meta.blob(&d).ok().flatten());
    let Some(record) = record else { return DigestsAnswer::default() };
    let (count, have) = (record.layout.count(), record.bitmap());
    let first = req.first.min(count);
    let end = first.saturating_add(DIGESTS_PER_PAGE).min(count);
    let digest = |i: u32| -> Vec<u8> {
        let hex = record.piece_digests.get(i as usize).filter(|_| have.get(i));
        hex.and_then(|h| hex::decode(h).ok()).filter(|b| b.len() == 32).unwrap_or_default()
    };
    DigestsAnswer {
        held: true,
        size: record.layout.size,
        piece_size: record.layout.piece_size,
        first,
        blake3: (first..end).map(digest).collect(),
        complete: record.is_complete(),
    }
}

async fn have(send: &mut quinn::SendStream, task_id: &str, ctx: &ServerCtx) -> Result<(), ServeError> {
    let Some((now, rx)) = task_id.parse::<Digest>().ok().and_then(|d| ctx.store.have(&d)) else {
        return Ok(frame::write(send, &HaveUpdate { have: Vec::new(), complete: false }).await?);
    };
    let Some(mut rx) = rx else {
        return Ok(frame::write(send, &HaveUpdate { have: now.as_bytes().to_vec(), complete: true }).await?);
    };
    loop {
        let (bytes, complete, failed) = {
            let p = rx.borrow_and_update();
            (
                p.have.as_bytes().to_vec(),
                p.state == crate::download::writer::State::Complete,
                matches!(
                    p.state,
                    crate::download::writer::State::Failed(_) | crate::download::writer::State::StoreFailed(_)
                ),
            )
        };
        frame::write(send, &HaveUpdate { have: bytes, complete }).await?;
        if complete || failed || rx.changed().await.is_err() {
            return Ok(());
        }
        // Coalesce bursts of pieces into one update.
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

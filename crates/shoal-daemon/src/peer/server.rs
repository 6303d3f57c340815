//! Serving pieces to children: accept connections, check the cluster token, then answer piece
//! and "have" requests, one bidirectional stream each, paced by the upload limit.

use std::os::unix::fs::FileExt;
use std::sync::Arc;
use std::time::Duration;

use prometheus_client::metrics::counter::Counter;
use shoal_core::Digest;
use shoal_proto::peer::{request, HaveUpdate, Hello, PieceHeader, PieceRequest, PieceStatus, Request};

use super::auth::{self, Role};
use super::{exporter, frame, PieceStore};
use crate::limits::Limiter;
use crate::seeding::Seeds;

/// Bytes read and sent per write (the corrupt-uploads fault flips the first byte of each).
const CHUNK: u64 = crate::fault::CHUNK;
/// Time a peer has to complete the handshake.
const HANDSHAKE_TIMEOUT: Duration = Duration::from_secs(10);

/// What the server needs.
pub struct ServerCtx {
    /// This daemon's host id.
    pub host_id: String,
    /// The cluster token.
    pub token: Vec<u8>,
    /// Pieces held.
    pub store: Arc<dyn PieceStore>,
    /// Upload pacing.
    pub upload: Arc<Limiter>,
    /// Bytes uploaded to peers.
    pub uploaded: Counter,
    /// Blobs this daemon seeds from the origin: each of their pieces goes to one child at a
    /// time, the others are told "busy".
    pub seeds: Arc<Seeds>,
    /// Test-only fault: flip a byte in every piece served (to test that children catch it).
    pub corrupt: bool,
}

/// Accepts peer connections until the endpoint closes.
pub async fn serve(endpoint: quinn::Endpoint, ctx: Arc<ServerCtx>) {
    while let Some(incoming) = endpoint.accept().await {
        let ctx = ctx.clone();
        tokio::spawn(async move {
            if let Err(e) = connection(incoming, ctx).await {
                tracing::debug!(error = %e, "peer connection ended");
            }
        });
    }
}

async fn connection(incoming: quinn::Incoming, ctx: Arc<ServerCtx>) -> Result<(), String> {
    let conn = incoming.await.map_err(|e| e.to_string())?;
    let remote = conn.remote_address();
    let handshake = async {
        let (mut send, mut recv) = conn.accept_bi().await.map_err(|e| e.to_string())?;
        let hello: Hello = frame::read(&mut recv).await.map_err(|e| e.to_string())?;
        let secret = exporter(&conn).ok_or("no TLS exporter")?;
        if !auth::verify(&ctx.token, Role::Client, &secret, &hello.proof) {
            return Err(format!("peer {remote} ({}) does not hold the cluster token", hello.host_id));
        }
        let reply = Hello { host_id: ctx.host_id.clone(), proof: auth::prove(&ctx.token, Role::Server, &secret) };
        frame::write(&mut send, &reply).await.map_err(|e| e.to_string())?;
        let _ = send.finish();
        Ok(hello.host_id)
    };
    let child: Arc<str> = match tokio::time::timeout(HANDSHAKE_TIMEOUT, handshake).await {
        Ok(Ok(host_id)) => host_id.into(),
        Ok(Err(e)) => {
            tracing::warn!(%remote, error = %e, "refused peer");
            conn.close(quinn::VarInt::from_u32(1), b"unauthorized");
            return Err(e);
        }
        Err(_) => {
            conn.close(quinn::VarInt::from_u32(2), b"handshake timeout");
            return Err(format!("peer {remote} handshake timed out"));
        }
    };
    loop {
        let (send, recv) = conn.accept_bi().await.map_err(|e| e.to_string())?;
        let (ctx, child) = (ctx.clone(), child.clone());
        tokio::spawn(async move {
            if let Err(e) = request(send, recv, ctx, child).await {
                tracing::debug!(error = %e, "peer request failed");
            }
        });
    }
}

async fn request(
    mut send: quinn::SendStream,
    mut recv: quinn::RecvStream,
    ctx: Arc<ServerCtx>,
    child: Arc<str>,
) -> Result<(), String> {
    let req: Request = frame::read(&mut recv).await.map_err(|e| e.to_string())?;
    match req.request {
        Some(request::Request::Piece(p)) => piece(&mut send, p, &ctx, &child).await,
        Some(request::Request::Have(h)) => have(&mut send, &h.task_id, &ctx).await,
        None => Err("empty request".into()),
    }?;
    let _ = send.finish();
    Ok(())
}

/// Serves one piece: "not found" if it is not held, "busy" if it is a piece this daemon
/// seeds from the origin and another child got it moments ago (that child has it soon).
async fn piece(send: &mut quinn::SendStream, p: PieceRequest, ctx: &ServerCtx, child: &Arc<str>) -> Result<(), String> {
    let task = p.task_id.parse::<Digest>().ok();
    let Some((task, (file, range))) = task.and_then(|t| Some((t, ctx.store.piece(&t, p.index)?))) else {
        return refuse(send, PieceStatus::NotFound).await;
    };
    if !ctx.seeds.admit(&task, p.index, child) {
        return refuse(send, PieceStatus::Busy).await;
    }
    let header = PieceHeader { status: PieceStatus::Ok as i32, length: range.len() };
    frame::write(send, &header).await.map_err(|e| e.to_string())?;
    let mut pos = range.start;
    while pos < range.end {
        let len = (range.end - pos).min(CHUNK) as usize;
        let f = file.clone();
        let mut chunk = tokio::task::spawn_blocking(move || {
            let mut buf = vec![0u8; len];
            f.read_exact_at(&mut buf, pos).map(|()| buf)
        })
        .await
        .map_err(|e| e.to_string())?
        .map_err(|e| e.to_string())?;
        if ctx.corrupt {
            chunk[0] ^= 0xff;
        }
        ctx.upload.acquire(len as u64).await;
        // Handed over whole: quinn keeps the buffer instead of copying it.
        send.write_chunk(bytes::Bytes::from(chunk)).await.map_err(|e| e.to_string())?;
        ctx.uploaded.inc_by(len as u64);
        pos += len as u64;
    }
    Ok(())
}

/// Answers a piece request with `status` and no bytes.
async fn refuse(send: &mut quinn::SendStream, status: PieceStatus) -> Result<(), String> {
    frame::write(send, &PieceHeader { status: status as i32, length: 0 }).await.map_err(|e| e.to_string())
}

async fn have(send: &mut quinn::SendStream, task_id: &str, ctx: &ServerCtx) -> Result<(), String> {
    let Some((now, rx)) = task_id.parse::<Digest>().ok().and_then(|d| ctx.store.have(&d)) else {
        return frame::write(send, &HaveUpdate { have: Vec::new(), complete: false }).await.map_err(|e| e.to_string());
    };
    let Some(mut rx) = rx else {
        return frame::write(send, &HaveUpdate { have: now.as_bytes().to_vec(), complete: true })
            .await
            .map_err(|e| e.to_string());
    };
    loop {
        let (bytes, complete, failed) = {
            let p = rx.borrow_and_update();
            (
                p.have.as_bytes().to_vec(),
                p.state == crate::writer::State::Complete,
                matches!(p.state, crate::writer::State::Failed(_) | crate::writer::State::StoreFailed(_)),
            )
        };
        frame::write(send, &HaveUpdate { have: bytes, complete }).await.map_err(|e| e.to_string())?;
        if complete || failed || rx.changed().await.is_err() {
            return Ok(());
        }
        // Coalesce bursts of pieces into one update.
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

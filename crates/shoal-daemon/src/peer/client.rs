//! Fetching from parents: one cached, authenticated QUIC connection per parent, one stream per
//! piece, paced by the download limit. Bytes are returned unverified, with the BLAKE3 digest
//! they hash to (computed as they arrive, while they are in the cache): the caller checks it
//! against the trusted one. A holder's piece digest table (for when no scheduler hands
//! out a trusted one) is checked for shape here, never for truth.

use std::collections::HashMap;
use std::net::SocketAddr;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use bytes::{Bytes, BytesMut};
use shoal_core::{Digest, PieceDigest, PieceHasher, PieceLayout};
use shoal_proto::peer::{
    request, DigestsAnswer, DigestsRequest, HaveRequest, HaveUpdate, Hello, PieceHeader, PieceRequest, PieceStatus,
    Request, SiteAnswer, SiteRequest,
};

use super::auth::{self, Role};
use super::tls::{PROVEN_PARENT_WINDOW, SERVER_NAME};
use super::{exporter, frame, PeerError};
use crate::limits::Limiter;

/// Bytes of a piece hashed at once as it arrives.
const HASH_BLOCK: usize = 64 << 10;
/// Time allowed to connect and complete the handshake.
const CONNECT_TIMEOUT: Duration = Duration::from_secs(5);

/// A client of other daemons' peer servers.
pub struct PeerClient {
    endpoint: quinn::Endpoint,
    host_id: String,
    token: Vec<u8>,
    download: Arc<Limiter>,
    conns: Mutex<HashMap<SocketAddr, quinn::Connection>>,
}

impl PeerClient {
    /// A client dialing from `endpoint` (whose default client config must be set).
    pub fn new(endpoint: quinn::Endpoint, host_id: String, token: Vec<u8>, download: Arc<Limiter>) -> Self {
        Self { endpoint, host_id, token, download, conns: Mutex::new(HashMap::new()) }
    }

    async fn connection(&self, addr: SocketAddr) -> Result<quinn::Connection, PeerError> {
        let cached = self.lock().get(&addr).filter(|c| c.close_reason().is_none()).cloned();
        if let Some(c) = cached {
            return Ok(c);
        }
        let conn = tokio::time::timeout(CONNECT_TIMEOUT, self.handshake(addr))
            .await
            .map_err(|_| PeerError::Connect { addr, message: "timed out".into() })??;
        self.lock().insert(addr, conn.clone());
        Ok(conn)
    }

    async fn handshake(&self, addr: SocketAddr) -> Result<quinn::Connection, PeerError> {
        let connect_err = |e: &dyn std::fmt::Display| PeerError::Connect { addr, message: e.to_string() };
        let conn = self
            .endpoint
            .connect(addr, SERVER_NAME)
            .map_err(|e| connect_err(&e))?
            .await
            .map_err(|e| connect_err(&e))?;
        let secret = exporter(&conn).ok_or_else(|| connect_err(&"no TLS exporter"))?;
        let (mut send, mut recv) = conn.open_bi().await.map_err(|e| connect_err(&e))?;
        let hello = Hello { host_id: self.host_id.clone(), proof: auth::prove(&self.token, Role::Client, &secret) };
        frame::write(&mut send, &hello).await?;
        let _ = send.finish();
        let reply: Hello =
            frame::read_max(&mut recv, frame::MAX_REQUEST).await.map_err(|_| PeerError::Unauthorized(addr))?;
        if !auth::verify(&self.token, Role::Server, &secret, &reply.proof) {
            conn.close(quinn::VarInt::from_u32(1), b"unauthorized");
            return Err(PeerError::Unauthorized(addr));
        }
        // Until here the parent could send a few KiB in all (see `tls`); now pieces may flow.
        conn.set_receive_window(quinn::VarInt::from_u32(PROVEN_PARENT_WINDOW));
        Ok(conn)
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, HashMap<SocketAddr, quinn::Connection>> {
        self.conns.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// Forgets a connection (after a failure), so the next request dials again.
    pub fn forget(&self, addr: SocketAddr) {
        if let Some(c) = self.lock().remove(&addr) {
            c.close(quinn::VarInt::from_u32(0), b"");
        }
    }

    /// Fetches piece `index` of `task` from the parent at `addr`; `want` is its length.
    /// `received` counts the bytes as they arrive (the caller's progress deadline reads it).
    /// Returns the bytes and what they hash to.
    pub async fn fetch_piece(
        &self,
        addr: SocketAddr,
        task: &Digest,
        index: u32,
        want: u64,
        received: &AtomicU64,
    ) -> Result<(Bytes, PieceDigest), PeerError> {
        let conn = self.connection(addr).await?;
        let (mut send, mut recv) = conn.open_bi().await.map_err(|e| PeerError::Stream(e.to_string()))?;
        let req = Request { request: Some(request::Request::Piece(PieceRequest { task_id: task.to_string(), index })) };
        frame::write(&mut send, &req).await?;
        let _ = send.finish();
        let header: PieceHeader = frame::read(&mut recv).await?;
        match PieceStatus::try_from(header.status) {
            Ok(PieceStatus::Ok) => {}
            Ok(PieceStatus::Busy) => return Err(PeerError::Busy),
            _ => return Err(PeerError::NotFound),
        }
        if header.length != want {
            return Err(PeerError::Length { got: header.length, want });
        }
        let mut buf = BytesMut::with_capacity(want as usize);
        let mut hasher = PieceHasher::default();
        let mut hashed = 0;
        while (buf.len() as u64) < want {
            let left = want as usize - buf.len();
            let chunk = recv.read_chunk(left, true).await.map_err(|e| PeerError::Stream(e.to_string()))?;
            let Some(chunk) = chunk else {
                return Err(PeerError::Stream(format!("stream ended at {} of {want}", buf.len())));
            };
            self.download.acquire(chunk.bytes.len() as u64).await;
            buf.extend_from_slice(&chunk.bytes);
            // Hashed in blocks: BLAKE3 is fast on many 1 KiB chunks at once, slow on a few.
            let whole_blocks = hashed + (buf.len() - hashed) / HASH_BLOCK * HASH_BLOCK;
            hasher.update(&buf[hashed..whole_blocks]);
            hashed = whole_blocks;
            received.store(buf.len() as u64, Ordering::Relaxed);
        }
        hasher.update(&buf[hashed..]);
        Ok((buf.freeze(), hasher.finish()))
    }

    /// Subscribes to a parent's pieces of `task`: each item is its current bitmap bytes.
    pub async fn watch_have(&self, addr: SocketAddr, task: &Digest) -> Result<HaveStream, PeerError> {
        let conn = self.connection(addr).await?;
        let (mut send, recv) = conn.open_bi().await.map_err(|e| PeerError::Stream(e.to_string()))?;
        let req = Request { request: Some(request::Request::Have(HaveRequest { task_id: task.to_string() })) };
        frame::write(&mut send, &req).await?;
        let _ = send.finish();
        Ok(HaveStream { recv })
    }
}

/// A holder's piece digests of one blob: its claim, to be cross-checked (the blob's sha256 has
/// the last word).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct DigestTable {
    /// The blob's layout, as the holder has it (the standard one for its size).
    pub layout: PieceLayout,
    /// One per piece: its digest, or `None` when the holder has no digest for it.
    pub digests: Vec<Option<PieceDigest>>,
    /// The holder has the whole blob and it matched its sha256 there.
    pub complete: bool,
}

impl PeerClient {
    /// The piece digests the holder at `addr` has of `task`, page by page; `max_size` bounds
    /// the blob size the holder may claim (`max_blob_size`). [`PeerError::NotFound`] when it
    /// does not hold the blob; [`PeerError::Stream`] when the table is malformed.
    pub async fn fetch_digests(
        &self,
        addr: SocketAddr,
        task: &Digest,
        max_size: u64,
    ) -> Result<DigestTable, PeerError> {
        let first = self.digest_page(addr, task, 0).await?;
        if !first.held {
            return Err(PeerError::NotFound);
        }
        let layout = PieceLayout::bounded(first.size, max_size).map_err(|e| malformed(&e))?;
        if layout.piece_size != first.piece_size {
            return Err(malformed(&format!("piece size {} for a blob of {} bytes", first.piece_size, first.size)));
        }
        let (count, complete) = (layout.count() as usize, first.complete);
        let mut digests = Vec::new();
        let mut page = first;
        loop {
            append_page(&mut digests, &page, layout)?;
            if digests.len() == count {
                return Ok(DigestTable { layout, digests, complete });
            }
            page = self.digest_page(addr, task, digests.len() as u32).await?;
        }
    }

    async fn digest_page(&self, addr: SocketAddr, task: &Digest, first: u32) -> Result<DigestsAnswer, PeerError> {
        let conn = self.connection(addr).await?;
        let (mut send, mut recv) = conn.open_bi().await.map_err(|e| PeerError::Stream(e.to_string()))?;
        let req = DigestsRequest { task_id: task.to_string(), first };
        frame::write(&mut send, &Request { request: Some(request::Request::Digests(req)) }).await?;
        let _ = send.finish();
        Ok(frame::read(&mut recv).await?)
    }
}

impl PeerClient {
    /// What the member at `addr` knows of a repository (see `mirror::site`); its answer is
    /// bounded here (a manifest of at most 4 MiB) and checked by the caller.
    pub async fn ask_site(&self, addr: SocketAddr, req: &SiteRequest) -> Result<SiteAnswer, PeerError> {
        let conn = self.connection(addr).await?;
        let (mut send, mut recv) = conn.open_bi().await.map_err(|e| PeerError::Stream(e.to_string()))?;
        frame::write(&mut send, &Request { request: Some(request::Request::Site(req.clone())) }).await?;
        let _ = send.finish();
        Ok(frame::read_max(&mut recv, MAX_SITE_ANSWER).await?)
    }
}

/// Largest site answer: a manifest (4 MiB, the mirror's limit) and a few short fields.
const MAX_SITE_ANSWER: usize = (4 << 20) + (4 << 10);

/// Appends one page's digests, checking that it continues the table where it stopped, keeps
/// the layout, brings at least one digest and no more than the blob has.
fn append_page(
    digests: &mut Vec<Option<PieceDigest>>,
    page: &DigestsAnswer,
    layout: PieceLayout,
) -> Result<(), PeerError> {
    let count = layout.count() as usize;
    let continues = page.held && page.first as usize == digests.len() && page.size == layout.size;
    if !continues || page.piece_size != layout.piece_size {
        return Err(malformed(&"a page that does not continue the table"));
    }
    if (page.blake3.is_empty() && digests.len() < count) || digests.len() + page.blake3.len() > count {
        return Err(malformed(&format!("{} digests from piece {} of {count}", page.blake3.len(), page.first)));
    }
    for d in &page.blake3 {
        digests.push(match d.len() {
            0 => None,
            32 => PieceDigest::from_slice(d),
            n => return Err(malformed(&format!("a piece digest of {n} bytes"))),
        });
    }
    Ok(())
}

fn malformed(what: &dyn std::fmt::Display) -> PeerError {
    PeerError::Stream(format!("malformed digest table: {what}"))
}

/// "Have" updates from one parent.
pub struct HaveStream {
    recv: quinn::RecvStream,
}

impl HaveStream {
    /// The next update, or `None` when the parent closed the stream.
    pub async fn next(&mut self) -> Option<HaveUpdate> {
        frame::read(&mut self.recv).await.ok()
    }
}

/// Why the QUIC endpoint could not be set up.
#[derive(Debug, thiserror::Error)]
pub enum EndpointError {
    /// The TLS configs could not be built.
    #[error(transparent)]
    Tls(#[from] super::tls::TlsError),
    /// The UDP socket could not be bound.
    #[error("cannot listen on peer_listen {addr}: {source}")]
    Bind {
        /// The address.
        addr: SocketAddr,
        /// The I/O error.
        source: std::io::Error,
    },
}

/// One QUIC endpoint that serves and dials, bound to `addr`.
pub fn endpoint(addr: SocketAddr) -> Result<quinn::Endpoint, EndpointError> {
    let server = super::tls::server_config()?;
    let mut ep = quinn::Endpoint::server(server, addr).map_err(|source| EndpointError::Bind { addr, source })?;
    ep.set_default_client_config(super::tls::client_config()?);
    Ok(ep)
}

//! The scheduler's gRPC listener: every connection is TLS, and the client must prove the cluster
//! token (HMAC over the session's exporter secret) within [`HANDSHAKE_TIMEOUT`] before a single
//! HTTP/2 byte is read. Each authenticated connection is one [`SessionId`], put in the
//! extensions of every request it carries; when it closes, its hosts are released.
//!
//! Caps: [`MAX_CONNECTIONS`] connections at once (more are closed at accept), 16 KiB of
//! headers, a bounded number of streams per connection, keep-alive pings to drop dead peers.

use std::net::SocketAddr;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::Duration;

use axum::Router;
use hyper_util::rt::{TokioExecutor, TokioIo, TokioTimer};
use shoal_core::membership::{self, Role, EXPORTER_LEN, PROOF_LEN, SCHEDULER_EXPORTER_LABEL};
use shoal_core::sched::SessionId;
use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::Semaphore;
use tower::ServiceExt;

use crate::metrics::SchedulerMetrics;

/// Connections served at once; more are closed as soon as they are accepted.
pub const MAX_CONNECTIONS: usize = 1024;
/// Bound on the TLS handshake and the membership proof together.
pub const HANDSHAKE_TIMEOUT: Duration = Duration::from_secs(5);
/// Bound on one request's headers (HTTP/2 header list).
const MAX_HEADER_BYTES: u32 = 16 << 10;
/// Concurrent streams per connection (a daemon has one per blob it downloads).
const MAX_STREAMS: u32 = 4096;

/// Why a connection was refused before its first request.
#[derive(Debug, thiserror::Error)]
pub enum Refused {
    /// TLS failed, or the client sent no proof in time.
    #[error("handshake: {0}")]
    Handshake(String),
    /// The client's proof does not match the cluster token.
    #[error("the client did not prove the cluster token")]
    BadProof,
}

impl Refused {
    fn kind(&self) -> &'static str {
        match self {
            Self::Handshake(_) => "handshake",
            Self::BadProof => "bad_proof",
        }
    }
}

/// What the listener needs: the token, the TLS config, metrics, and the hook run when a session
/// ends.
pub struct Listener {
    /// The cluster token.
    pub token: Arc<[u8]>,
    /// TLS server config (ALPN h2).
    pub tls: Arc<rustls::ServerConfig>,
    /// Where refusals are counted.
    pub metrics: Arc<SchedulerMetrics>,
    /// Called with a session's id once its connection closed.
    pub ended: Arc<dyn Fn(SessionId) + Send + Sync>,
}

impl Listener {
    /// Accepts connections until the listener fails; each authenticated one serves `router`.
    pub async fn serve(self, listener: TcpListener, router: Router) -> std::io::Result<()> {
        let this = Arc::new(self);
        let slots = Arc::new(Semaphore::new(MAX_CONNECTIONS));
        let next = AtomicU64::new(1);
        loop {
            let (tcp, addr) = match listener.accept().await {
                Ok(c) => c,
                Err(e) => {
                    // EMFILE and friends: wait for connections to close instead of spinning.
                    tracing::warn!(error = %e, "accept failed");
                    tokio::time::sleep(Duration::from_millis(100)).await;
                    continue;
                }
            };
            let Ok(slot) = slots.clone().try_acquire_owned() else {
                this.metrics.refuse("over_cap");
                tracing::debug!(%addr, "connection refused: {MAX_CONNECTIONS} connections open");
                continue;
            };
            let session = SessionId(next.fetch_add(1, Ordering::Relaxed));
            let (this, router) = (this.clone(), router.clone());
            tokio::spawn(async move {
                this.connection(tcp, addr, session, router).await;
                drop(slot);
            });
        }
    }

    async fn connection(&self, tcp: TcpStream, addr: SocketAddr, session: SessionId, router: Router) {
        let _ = tcp.set_nodelay(true);
        let tls = match tokio::time::timeout(HANDSHAKE_TIMEOUT, self.handshake(tcp)).await {
            Ok(Ok(tls)) => tls,
            Ok(Err(e)) => {
                self.metrics.refuse(e.kind());
                tracing::warn!(%addr, error = %e, "scheduler connection refused");
                return;
            }
            Err(_) => {
                self.metrics.refuse("handshake");
                tracing::warn!(%addr, "scheduler connection refused: no proof within {HANDSHAKE_TIMEOUT:?}");
                return;
            }
        };
        let service = hyper::service::service_fn(move |mut req: hyper::Request<hyper::body::Incoming>| {
            req.extensions_mut().insert(session);
            router.clone().oneshot(req)
        });
        let mut http = hyper::server::conn::http2::Builder::new(TokioExecutor::new());
        http.timer(TokioTimer::new())
            .max_header_list_size(MAX_HEADER_BYTES)
            .max_concurrent_streams(MAX_STREAMS)
            .keep_alive_interval(Some(Duration::from_secs(20)))
            .keep_alive_timeout(Duration::from_secs(10));
        if let Err(e) = http.serve_connection(TokioIo::new(tls), service).await {
            tracing::debug!(%addr, error = %e, "scheduler connection closed");
        }
        (self.ended)(session);
    }

    /// TLS, then the client's proof, then ours.
    async fn handshake(&self, tcp: TcpStream) -> Result<tokio_rustls::server::TlsStream<TcpStream>, Refused> {
        let acceptor = tokio_rustls::TlsAcceptor::from(self.tls.clone());
        let mut tls = acceptor.accept(tcp).await.map_err(|e| Refused::Handshake(e.to_string()))?;
        let secret = exporter(tls.get_ref().1)?;
        let mut proof = [0u8; PROOF_LEN];
        tls.read_exact(&mut proof).await.map_err(|e| Refused::Handshake(e.to_string()))?;
        if !membership::verify(&self.token, Role::Client, &secret, &proof) {
            return Err(Refused::BadProof);
        }
        write_proof(&mut tls, &membership::prove(&self.token, Role::Server, &secret)).await?;
        Ok(tls)
    }
}

fn exporter(conn: &rustls::ServerConnection) -> Result<[u8; EXPORTER_LEN], Refused> {
    conn.export_keying_material([0u8; EXPORTER_LEN], SCHEDULER_EXPORTER_LABEL, None)
        .map_err(|e| Refused::Handshake(e.to_string()))
}

async fn write_proof(io: &mut (impl AsyncRead + AsyncWrite + Unpin), proof: &[u8]) -> Result<(), Refused> {
    io.write_all(proof).await.map_err(|e| Refused::Handshake(e.to_string()))?;
    io.flush().await.map_err(|e| Refused::Handshake(e.to_string()))
}

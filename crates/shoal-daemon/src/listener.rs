//! A hardened HTTP listener: the accept loop and per-connection serving behind the mirror and
//! admin APIs, for any axum [`Router`] (a tonic server converts into one, so the scheduler can
//! serve through the same loop with [`Protocol::Http2`]).
//!
//! What a hostile or broken client can hold is bounded:
//! - at most [`HttpLimits::max_connections`] connections at once. One over the cap is answered a
//!   fixed `503` (an OCI `TOOMANYREQUESTS` error, `Retry-After: 1`) written without waiting and
//!   closed at once: nothing queues behind the cap, and the slots held by slow clients free up
//!   within the header-read timeout.
//! - HTTP/1.1: a request head must arrive within [`HttpLimits::header_read_timeout`], which also
//!   bounds how long a kept-alive connection may sit idle between requests; a head larger than
//!   [`HttpLimits::max_header_bytes`] is refused with `431`.
//! - any connection that moves no byte either way for [`HttpLimits::idle_timeout`] (a client
//!   that stopped reading its response, an HTTP/2 client that sends nothing) is closed.
//! - accept errors (EMFILE, ENFILE, ENOBUFS) are logged and backed off, never fatal.
//!
//! It makes no decision about requests; that is the router's job.

use std::io;
use std::pin::Pin;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::task::{Context, Poll};
use std::time::{Duration, Instant};

use axum::Router;
use hyper_util::rt::{TokioExecutor, TokioIo, TokioTimer};
use hyper_util::server::conn::auto::Builder;
use hyper_util::service::TowerToHyperService;
use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::{OwnedSemaphorePermit, Semaphore};

/// Default of [`HttpLimits::max_connections`] (the `max_connections` config key).
pub const DEFAULT_MAX_CONNECTIONS: usize = 1024;

/// What the listener speaks.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Protocol {
    /// HTTP/1.1 only (registry clients speak it to a plain-HTTP mirror).
    Http1,
    /// HTTP/2 only, with prior knowledge (gRPC).
    Http2,
}

/// Bounds on what one listener's clients may hold.
#[derive(Debug, Clone, Copy)]
pub struct HttpLimits {
    /// Connections served at once; more are refused at once.
    pub max_connections: usize,
    /// HTTP/1.1: time for a request head to arrive, and for the next one on a kept-alive
    /// connection.
    pub header_read_timeout: Duration,
    /// A connection that moves no byte either way for this long is closed.
    pub idle_timeout: Duration,
    /// Largest request head (HTTP/1.1 read buffer, HTTP/2 header list), bytes; at least 8 KiB.
    pub max_header_bytes: usize,
    /// HTTP/2: streams open at once per connection.
    pub max_streams: u32,
    /// HTTP/1.1 or HTTP/2.
    pub protocol: Protocol,
}

impl Default for HttpLimits {
    fn default() -> Self {
        Self {
            max_connections: DEFAULT_MAX_CONNECTIONS,
            header_read_timeout: Duration::from_secs(10),
            idle_timeout: Duration::from_secs(120),
            max_header_bytes: 32 << 10,
            max_streams: 256,
            protocol: Protocol::Http1,
        }
    }
}

/// The answer to a connection over the cap.
const OVER_CAP: &[u8] = b"HTTP/1.1 503 Service Unavailable\r\nContent-Type: application/json\r\nRetry-After: 1\r\nConnection: close\r\nContent-Length: 87\r\n\r\n{\"errors\":[{\"code\":\"TOOMANYREQUESTS\",\"message\":\"too many connections to this daemon\"}]}";

/// Connections over the cap that are being answered at once (each for at most [`LINGER`]).
const MAX_REFUSING: usize = 256;
/// How long an over-cap connection is drained after its answer, so that closing it with the
/// client's request unread does not reset it before the client reads the answer.
const LINGER: Duration = Duration::from_millis(500);

/// Answers a connection over the cap: the fixed 503 (written without waiting: a socket's send
/// buffer holds it whole), then, within a bound of its own, a short drain of what the client
/// sent before closing. Past that bound the connection is just closed.
fn refuse(stream: TcpStream, refusing: &Arc<Semaphore>) {
    let _ = stream.try_write(OVER_CAP);
    let Ok(slot) = refusing.clone().try_acquire_owned() else { return };
    tokio::spawn(async move {
        let mut stream = stream;
        let _ = tokio::io::AsyncWriteExt::shutdown(&mut stream).await;
        let mut sink = [0u8; 4096];
        let drain = async {
            let mut left = 64usize << 10;
            while left > 0 {
                match tokio::io::AsyncReadExt::read(&mut stream, &mut sink).await {
                    Ok(0) | Err(_) => break,
                    Ok(n) => left = left.saturating_sub(n),
                }
            }
        };
        let _ = tokio::time::timeout(LINGER, drain).await;
        drop(slot);
    });
}

/// Serves `router` on `listener` until the task is dropped; never returns on its own.
pub async fn serve(listener: TcpListener, router: Router, limits: HttpLimits) {
    let permits = Arc::new(Semaphore::new(limits.max_connections.max(1)));
    let builder = Arc::new(builder(&limits));
    let mut backoff = Backoff::default();
    let mut refused = Refusals::default();
    let refusing = Arc::new(Semaphore::new(MAX_REFUSING));
    loop {
        let stream = match listener.accept().await {
            Ok((stream, _)) => stream,
            Err(e) if per_connection(&e) => continue,
            Err(e) => {
                backoff.wait(&e).await;
                continue;
            }
        };
        backoff.reset();
        let Ok(permit) = permits.clone().try_acquire_owned() else {
            refuse(stream, &refusing);
            refused.log(limits.max_connections);
            continue;
        };
        let _ = stream.set_nodelay(true);
        tokio::spawn(connection(stream, router.clone(), builder.clone(), limits.idle_timeout, permit));
    }
}

fn builder(limits: &HttpLimits) -> Builder<TokioExecutor> {
    let max_header = limits.max_header_bytes.max(8192);
    match limits.protocol {
        Protocol::Http1 => {
            let mut b = Builder::new(TokioExecutor::new()).http1_only();
            b.http1()
                .timer(TokioTimer::new())
                .header_read_timeout(limits.header_read_timeout)
                .keep_alive(true)
                .max_buf_size(max_header);
            b
        }
        Protocol::Http2 => {
            let mut b = Builder::new(TokioExecutor::new()).http2_only();
            b.http2()
                .timer(TokioTimer::new())
                .max_header_list_size(u32::try_from(max_header).unwrap_or(u32::MAX))
                .max_concurrent_streams(limits.max_streams)
                .max_pending_accept_reset_streams(Some(32))
                .max_local_error_reset_streams(Some(256));
            // No keep-alive pings from this side: they would count as traffic and keep a
            // silent client's connection open; the idle timeout closes dead ones.
            b
        }
    }
}

/// Serves one connection until it ends or idles for `idle`; the permit goes with it.
async fn connection(
    stream: TcpStream,
    router: Router,
    builder: Arc<Builder<TokioExecutor>>,
    idle: Duration,
    permit: OwnedSemaphorePermit,
) {
    let epoch = Instant::now();
    let last = Arc::new(AtomicU64::new(0));
    let io = TokioIo::new(Watched { inner: stream, epoch, last: last.clone() });
    let conn = builder.serve_connection(io, TowerToHyperService::new(router));
    tokio::pin!(conn);
    loop {
        let quiet_since = epoch + Duration::from_millis(last.load(Ordering::Relaxed));
        tokio::select! {
            result = conn.as_mut() => {
                if let Err(e) = result {
                    tracing::debug!(error = %e, "HTTP connection ended");
                }
                break;
            }
            () = tokio::time::sleep_until((quiet_since + idle).into()) => {
                if epoch + Duration::from_millis(last.load(Ordering::Relaxed)) == quiet_since {
                    tracing::debug!(?idle, "closing an idle HTTP connection");
                    break;
                }
            }
        }
    }
    drop(permit);
}

/// Accept errors that concern one connection only (the next accept works).
fn per_connection(e: &io::Error) -> bool {
    matches!(e.kind(), io::ErrorKind::ConnectionAborted | io::ErrorKind::ConnectionReset | io::ErrorKind::Interrupted)
}

/// Waits after an accept error (out of file descriptors, buffers): 10 ms, doubling to 1 s.
#[derive(Default)]
struct Backoff {
    delay: Option<Duration>,
}

impl Backoff {
    async fn wait(&mut self, e: &io::Error) {
        let delay = self.delay.map_or(Duration::from_millis(10), |d| (d * 2).min(Duration::from_secs(1)));
        if self.delay.is_none() || delay == Duration::from_secs(1) {
            tracing::warn!(error = %e, "accepting a connection failed; backing off");
        }
        self.delay = Some(delay);
        tokio::time::sleep(delay).await;
    }

    fn reset(&mut self) {
        self.delay = None;
    }
}

/// Logs refusals over the cap, at most once per 10 s.
#[derive(Default)]
struct Refusals {
    count: u64,
    logged: Option<Instant>,
}

impl Refusals {
    fn log(&mut self, cap: usize) {
        self.count += 1;
        if self.logged.is_none_or(|at| at.elapsed() >= Duration::from_secs(10)) {
            tracing::warn!(max_connections = cap, refused = self.count, "connections over max_connections refused");
            self.logged = Some(Instant::now());
        }
    }
}

/// A stream that records when it last moved a byte (ms since `epoch`).
struct Watched {
    inner: TcpStream,
    epoch: Instant,
    last: Arc<AtomicU64>,
}

impl Watched {
    fn moved(&self) {
        self.last.store(self.epoch.elapsed().as_millis() as u64, Ordering::Relaxed);
    }
}

impl AsyncRead for Watched {
    fn poll_read(mut self: Pin<&mut Self>, cx: &mut Context<'_>, buf: &mut ReadBuf<'_>) -> Poll<io::Result<()>> {
        let before = buf.filled().len();
        let r = Pin::new(&mut self.inner).poll_read(cx, buf);
        if buf.filled().len() > before {
            self.moved();
        }
        r
    }
}

impl AsyncWrite for Watched {
    fn poll_write(mut self: Pin<&mut Self>, cx: &mut Context<'_>, buf: &[u8]) -> Poll<io::Result<usize>> {
        let r = Pin::new(&mut self.inner).poll_write(cx, buf);
        if matches!(r, Poll::Ready(Ok(n)) if n > 0) {
            self.moved();
        }
        r
    }

    fn poll_write_vectored(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        bufs: &[io::IoSlice<'_>],
    ) -> Poll<io::Result<usize>> {
        let r = Pin::new(&mut self.inner).poll_write_vectored(cx, bufs);
        if matches!(r, Poll::Ready(Ok(n)) if n > 0) {
            self.moved();
        }
        r
    }

    fn is_write_vectored(&self) -> bool {
        self.inner.is_write_vectored()
    }

    fn poll_flush(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.inner).poll_flush(cx)
    }

    fn poll_shutdown(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.inner).poll_shutdown(cx)
    }
}

#[cfg(test)]
#[path = "listener_tests.rs"]
mod tests;

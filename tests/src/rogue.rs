//! A rogue QUIC peer: it does the peer protocol's TLS handshake (ALPN `shoal-peer/1`, server
//! name `shoal-peer`, any certificate, as daemons do) but never proves the cluster token. It
//! holds its hello half-sent and pushes as much data as the daemon's flow control lets it on
//! every further stream it may open, for a while. Only ever aimed at 127.0.0.1.

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::{Duration, Instant};

use anyhow::{Context, Result};
use shoal_daemon::peer::tls::{provider, AnyCert};

/// Streams a rogue connection tries to open besides its hello's.
const MAX_STREAMS: usize = 256;

/// What a flood achieved.
#[derive(Debug, Default, Clone, Copy)]
pub struct Flood {
    /// Connections whose TLS handshake completed.
    pub connected: usize,
    /// Connections the daemon refused (or that failed to connect).
    pub refused: usize,
    /// Streams opened, hellos included.
    pub streams: u64,
    /// Bytes the daemon's flow control accepted from the rogue, in all.
    pub bytes: u64,
}

/// Opens `connections` rogue connections to the peer listener at `addr` at once, each pushing
/// for `hold` (or until the daemon closes it).
pub async fn flood(addr: SocketAddr, connections: usize, hold: Duration) -> Result<Flood> {
    let endpoint = endpoint()?;
    let deadline = Instant::now() + hold;
    let mut tasks = tokio::task::JoinSet::new();
    for _ in 0..connections {
        let endpoint = endpoint.clone();
        tasks.spawn(async move { one(&endpoint, addr, deadline).await });
    }
    let mut total = Flood::default();
    while let Some(joined) = tasks.join_next().await {
        match joined? {
            Some((streams, bytes)) => {
                total.connected += 1;
                total.streams += streams;
                total.bytes += bytes;
            }
            None => total.refused += 1,
        }
    }
    endpoint.close(quinn::VarInt::from_u32(0), b"");
    Ok(total)
}

/// One rogue connection: `(streams, bytes accepted)`, or `None` if it could not connect.
async fn one(endpoint: &quinn::Endpoint, addr: SocketAddr, deadline: Instant) -> Option<(u64, u64)> {
    let conn = endpoint.connect(addr, "shoal-peer").ok()?.await.ok()?;
    let mut pushes = tokio::task::JoinSet::new();
    // The hello: a length prefix of 1000 bytes, and only 500 of them.
    let mut hello_bytes = 0u64;
    if let Ok((mut send, recv)) = conn.open_bi().await {
        if send.write_all(&1000u32.to_be_bytes()).await.is_ok() && send.write_all(&[7u8; 500]).await.is_ok() {
            hello_bytes = 504;
        }
        pushes.spawn(async move {
            tokio::time::sleep_until(deadline.into()).await;
            drop((send, recv));
            0
        });
    }
    for _ in 0..MAX_STREAMS {
        let Ok(Ok((send, recv))) = tokio::time::timeout_at(deadline.into(), conn.open_bi()).await else { break };
        pushes.spawn(push(send, recv, deadline));
    }
    let streams = pushes.len() as u64;
    let mut bytes = hello_bytes;
    while let Some(pushed) = pushes.join_next().await {
        bytes += pushed.unwrap_or(0);
    }
    conn.close(quinn::VarInt::from_u32(0), b"");
    Some((streams, bytes))
}

/// Writes zeros until the deadline or the stream fails; returns the bytes accepted.
async fn push(mut send: quinn::SendStream, _recv: quinn::RecvStream, deadline: Instant) -> u64 {
    let chunk = vec![0u8; 64 << 10];
    let mut written = 0u64;
    loop {
        match tokio::time::timeout_at(deadline.into(), send.write(&chunk)).await {
            Ok(Ok(n)) => written += n as u64,
            _ => return written,
        }
    }
}

fn endpoint() -> Result<quinn::Endpoint> {
    let provider = provider();
    let mut tls = rustls::ClientConfig::builder_with_provider(provider.clone())
        .with_protocol_versions(&[&rustls::version::TLS13])?
        .dangerous()
        .with_custom_certificate_verifier(Arc::new(AnyCert(provider)))
        .with_no_client_auth();
    tls.alpn_protocols = vec![b"shoal-peer/1".to_vec()];
    let crypto = quinn::crypto::rustls::QuicClientConfig::try_from(tls)?;
    let mut endpoint = quinn::Endpoint::client("127.0.0.1:0".parse()?).context("rogue QUIC endpoint")?;
    endpoint.set_default_client_config(quinn::ClientConfig::new(Arc::new(crypto)));
    Ok(endpoint)
}

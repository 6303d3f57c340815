//! A TCP proxy on 127.0.0.1 between the daemon and the origin that slows the upstream→client
//! direction to a fixed rate (a slow origin link, so a download is reliably still running when a
//! test interrupts it, whatever the build profile) and can turn into a black hole (connections
//! accepted, nothing forwarded: an origin cut off without a reset).

use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use anyhow::Result;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};
use tokio::task::JoinHandle;

/// A running proxy; stops accepting and drops its connections on drop.
pub struct SlowProxy {
    port: u16,
    task: JoinHandle<()>,
    blackhole: Arc<AtomicBool>,
}

impl SlowProxy {
    /// Proxies to `upstream` (`host:port`), sending at most `bytes_per_sec` per connection back.
    pub async fn start(upstream: &str, bytes_per_sec: u64) -> Result<Self> {
        let listener = TcpListener::bind("127.0.0.1:0").await?;
        let port = listener.local_addr()?.port();
        let upstream = upstream.to_string();
        let blackhole = Arc::new(AtomicBool::new(false));
        let hole = blackhole.clone();
        let task = tokio::spawn(async move {
            let mut connections = tokio::task::JoinSet::new();
            while let Ok((client, _)) = listener.accept().await {
                let (upstream, hole) = (upstream.clone(), hole.clone());
                connections.spawn(async move {
                    // A black hole holds the connection open and never answers.
                    stall_if(&hole).await;
                    if let Ok(server) = TcpStream::connect(&upstream).await {
                        let _ = relay(client, server, bytes_per_sec, &hole).await;
                    }
                });
            }
        });
        Ok(Self { port, task, blackhole })
    }

    /// From now on, forward nothing on any connection, old or new, and answer nothing.
    pub fn blackhole(&self) {
        self.blackhole.store(true, Ordering::SeqCst);
    }

    /// `127.0.0.1:PORT`.
    pub fn host(&self) -> String {
        format!("127.0.0.1:{}", self.port)
    }

    /// `http://127.0.0.1:PORT`.
    pub fn url(&self) -> String {
        format!("http://{}", self.host())
    }
}

impl Drop for SlowProxy {
    fn drop(&mut self) {
        self.task.abort();
    }
}

/// Copies client→server at full speed and server→client at `rate` bytes/s, until either side
/// closes.
async fn relay(client: TcpStream, server: TcpStream, rate: u64, blackhole: &AtomicBool) -> std::io::Result<()> {
    let (mut client_read, mut client_write) = client.into_split();
    let (mut server_read, mut server_write) = server.into_split();
    let upload = async {
        let mut buf = vec![0u8; 32 * 1024];
        loop {
            let n = client_read.read(&mut buf).await?;
            if n == 0 {
                return server_write.shutdown().await;
            }
            stall_if(blackhole).await;
            server_write.write_all(&buf[..n]).await?;
        }
    };
    let download = async {
        let started = Instant::now();
        let mut sent = 0u64;
        let mut buf = vec![0u8; 32 * 1024];
        loop {
            let n = server_read.read(&mut buf).await?;
            if n == 0 {
                return client_write.shutdown().await;
            }
            stall_if(blackhole).await;
            client_write.write_all(&buf[..n]).await?;
            sent += n as u64;
            let due = Duration::from_secs_f64(sent as f64 / rate as f64);
            if let Some(wait) = due.checked_sub(started.elapsed()) {
                tokio::time::sleep(wait).await;
            }
        }
    };
    tokio::try_join!(upload, download).map(|_| ())
}

/// Never returns once the proxy is a black hole.
async fn stall_if(blackhole: &AtomicBool) {
    if blackhole.load(Ordering::SeqCst) {
        std::future::pending::<()>().await;
    }
}

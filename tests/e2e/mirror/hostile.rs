//! Hostile clients and a lying origin: half-open connections (slowloris), more connections than
//! `max_connections`, huge request heads, made-up methods against the metrics, and an origin that
//! claims blobs of 100 GB and more.

use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};

use super::*;

/// The daemon's header-read timeout (see `listener.rs`), and the slack allowed on top.
const HEADER_TIMEOUT: Duration = Duration::from_secs(10);
const SLACK: Duration = Duration::from_secs(4);

/// Opens `n` connections to `host`, each sending a request head that never ends.
async fn half_open(host: &str, n: usize) -> Result<Vec<TcpStream>> {
    let mut held = Vec::with_capacity(n);
    for i in 0..n {
        let mut s = TcpStream::connect(host).await?;
        s.write_all(format!("GET /v2/ HTTP/1.1\r\nHost: {host}\r\nX-Slow-{i}: a").as_bytes()).await?;
        held.push(s);
    }
    Ok(held)
}

/// Waits (at most until `since + limit`) until each stream is closed by the other side (EOF or
/// reset); returns when each was seen closed, counted from `since`, `None` for those still open.
async fn wait_closed(streams: Vec<TcpStream>, since: Instant, limit: Duration) -> Vec<Option<Duration>> {
    let started = since;
    let deadline = tokio::time::Instant::from_std(since + limit);
    let waits = streams.into_iter().map(|mut s| async move {
        let mut buf = [0u8; 1024];
        loop {
            match tokio::time::timeout_at(deadline, s.read(&mut buf)).await {
                Err(_) => return None,
                Ok(Ok(0) | Err(_)) => return Some(started.elapsed()),
                Ok(Ok(_)) => continue,
            }
        }
    });
    futures::future::join_all(waits).await
}

/// Times `GET /v2/` through the mirror with a fresh client.
async fn timed_base(daemon: &Daemon) -> Result<(StatusCode, Duration)> {
    let client = reqwest::Client::builder().timeout(Duration::from_secs(10)).build()?;
    let started = Instant::now();
    let status = client.get(format!("{}/v2/", daemon.mirror_url())).send().await?.status();
    Ok((status, started.elapsed()))
}

/// Slowloris: 400 half-open connections from one client. A normal `GET /v2/` is still answered
/// within a second, the half-open connections are closed after the header-read timeout, and a
/// request head over the size cap is refused with 431.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn half_open_connections_do_not_stall_the_mirror_and_are_closed() -> Result<()> {
    require_tools();
    let registry = Registry::start().await?;
    let daemon = Daemon::start(DaemonConfig::for_registry(&registry)).await?;
    let host = daemon.mirror_host();
    let opened = Instant::now();
    let held = half_open(&host, 400).await?;
    let (status, took) = timed_base(&daemon).await?;
    eprintln!("[slowloris] 400 half-open connections; GET /v2/: {status} in {took:?}");
    ensure!(status == StatusCode::OK && took < Duration::from_secs(1), "GET /v2/: {status} in {took:?}");
    ensure!(daemon.healthz().await?.starts_with("ok"), "the admin listener stopped answering");

    let closed = wait_closed(held, opened, HEADER_TIMEOUT + SLACK).await;
    let open = closed.iter().filter(|c| c.is_none()).count();
    let first = closed.iter().flatten().min().copied().unwrap_or_default();
    let last = closed.iter().flatten().max().copied().unwrap_or_default();
    eprintln!(
        "[slowloris] closed by the daemon: {} of 400, {first:.1?} to {last:.1?} after opening; still open: {open}",
        400 - open
    );
    ensure!(open == 0, "{open} of 400 half-open connections still open after {:?}", HEADER_TIMEOUT + SLACK);
    let (status, took) = timed_base(&daemon).await?;
    ensure!(status == StatusCode::OK, "GET /v2/ afterwards: {status} in {took:?}");

    let big = "a".repeat(64 << 10);
    let refused = raw_request(&host, "GET", "/v2/", &[("X-Big", big.as_str())]).await?;
    eprintln!("[slowloris] a 64 KiB request head: {}", refused.status);
    ensure!(refused.status == 431, "a 64 KiB head got {}", refused.status);
    Ok(())
}

/// With `--max-connections 16`, 16 held connections fill the cap: a 17th is answered 503 at
/// once (not queued), and once they are gone the mirror serves again.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn connections_over_max_connections_are_refused_at_once() -> Result<()> {
    require_tools();
    let registry = Registry::start().await?;
    let mut config = DaemonConfig::for_registry(&registry);
    config.extra_args = vec!["--max-connections".into(), "16".into()];
    let daemon = Daemon::start(config).await?;
    let host = daemon.mirror_host();
    let held = half_open(&host, 16).await?;
    tokio::time::sleep(Duration::from_millis(200)).await;
    let started = Instant::now();
    let over = raw_request(&host, "GET", "/v2/", &[]).await?;
    let took = started.elapsed();
    let codes = oci_error_codes(&over.body).unwrap_or_default();
    eprintln!("[max_connections] 17th connection: {} {codes:?} in {took:?}", over.status);
    ensure!(over.status == 503 && took < Duration::from_secs(1), "17th connection: {} in {took:?}", over.status);
    ensure!(codes == ["TOOMANYREQUESTS"], "codes {codes:?}");
    drop(held);
    let served = wait_until(Duration::from_secs(3), Duration::from_millis(50), || async {
        timed_base(&daemon).await.is_ok_and(|(s, _)| s == StatusCode::OK)
    })
    .await;
    ensure!(served, "the mirror does not serve again once the held connections are gone");
    Ok(())
}

/// Series of `shoal_mirror_requests_total`.
fn request_series(metrics: &str) -> Vec<String> {
    metrics.lines().filter(|l| l.starts_with("shoal_mirror_requests_total{")).map(str::to_owned).collect()
}

/// Made-up methods (`FOOBAR`, a 200-character one, 100 random ones) count as `method="other"`:
/// none of them shows up as a label, and the number of series does not grow with them.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn made_up_methods_count_as_other_in_the_metrics() -> Result<()> {
    require_tools();
    let registry = Registry::start().await?;
    let daemon = Daemon::start(DaemonConfig::for_registry(&registry)).await?;
    let host = daemon.mirror_host();
    let long = "X".repeat(200);
    let mut methods = vec!["FOOBAR".to_string(), long];
    let mut seed = 0x9e37_79b9_7f4a_7c15u64;
    for _ in 0..100 {
        seed ^= seed << 13;
        seed ^= seed >> 7;
        seed ^= seed << 17;
        methods.push(format!("M{:X}", seed));
    }
    let first = raw_request(&host, &methods[0], "/v2/", &[]).await?;
    ensure!(first.status == 405, "FOOBAR /v2/: {}", first.status);
    let before = request_series(&daemon.metrics().await?);
    for method in &methods[1..] {
        raw_request(&host, method, "/v2/", &[]).await?;
    }
    let metrics = daemon.metrics().await?;
    let after = request_series(&metrics);
    eprintln!(
        "[methods] {} made-up methods: {} series before the last {}, {} after:\n{}",
        methods.len(),
        before.len(),
        methods.len() - 1,
        after.len(),
        after.join("\n")
    );
    let leaked: Vec<&String> = methods.iter().filter(|m| metrics.contains(&format!("method=\"{m}\""))).collect();
    ensure!(leaked.is_empty(), "made-up methods became labels: {leaked:?}");
    ensure!(after.len() == before.len(), "series grew from {} to {}", before.len(), after.len());
    let other = metric_value(&metrics, "shoal_mirror_requests_total", r#"method="other""#);
    ensure!(other == Some(methods.len() as f64), "method=\"other\" counted {other:?}, want {}", methods.len());
    Ok(())
}

/// A front that claims blob sizes: `HEAD`/`GET` of `/v2/e2e/huge/blobs/<digest>` answer 200
/// with the size mapped to that digest (and, for a GET, up to 1 MiB of zeros, then close).
/// `/v2/` answers 200. Loopback only; one request per connection.
async fn lying_front(sizes: Vec<(String, String)>) -> Result<(String, tokio::task::JoinHandle<()>)> {
    let listener = TcpListener::bind("127.0.0.1:0").await?;
    let host = listener.local_addr()?.to_string();
    let task = tokio::spawn(async move {
        while let Ok((mut s, _)) = listener.accept().await {
            let sizes = sizes.clone();
            tokio::spawn(async move {
                let mut head = Vec::new();
                let mut buf = [0u8; 4096];
                while !head.windows(4).any(|w| w == b"\r\n\r\n") && head.len() < 64 << 10 {
                    match s.read(&mut buf).await {
                        Ok(0) | Err(_) => return,
                        Ok(n) => head.extend_from_slice(&buf[..n]),
                    }
                }
                let text = String::from_utf8_lossy(&head).into_owned();
                let mut parts = text.split_whitespace();
                let (method, path) = (parts.next().unwrap_or(""), parts.next().unwrap_or(""));
                let size = sizes.iter().find(|(d, _)| path.ends_with(d.as_str())).map(|(_, s)| s.clone());
                let answer = match &size {
                    Some(size) => format!("HTTP/1.1 200 OK\r\nContent-Length: {size}\r\nConnection: close\r\n\r\n"),
                    None => "HTTP/1.1 200 OK\r\nContent-Length: 2\r\nConnection: close\r\n\r\n{}".to_string(),
                };
                if s.write_all(answer.as_bytes()).await.is_err() {
                    return;
                }
                if method == "GET" && size.is_some() {
                    let _ = s.write_all(&vec![0u8; 1 << 20]).await;
                }
            });
        }
    });
    Ok((host, task))
}

/// An origin claiming 100 GB (over `--max-blob-size 10GiB`) or 9 EB gets a clear 502
/// naming `max_blob_size`, at once, for GET and HEAD; the daemon's memory does not move.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn origin_sizes_over_max_blob_size_get_a_clear_error() -> Result<()> {
    let huge = format!("sha256:{}", "a".repeat(64));
    let max = format!("sha256:{}", "b".repeat(64));
    let sizes = vec![(huge.clone(), "100000000000".to_string()), (max.clone(), "9000000000000000000".to_string())];
    let (front, _front) = lying_front(sizes).await?;
    let mut config = DaemonConfig::default().registry(&front, &format!("http://{front}"));
    config.extra_args = vec!["--max-blob-size".into(), "10GiB".into()];
    let daemon = Daemon::start(config).await?;
    let rss_before = daemon.rss_bytes()?;
    let client = http();
    for digest in [&huge, &max] {
        for method in [Method::GET, Method::HEAD] {
            let url = format!("{}/v2/e2e/huge/blobs/{digest}", daemon.mirror_url());
            let started = Instant::now();
            let resp =
                with_log(client.request(method.clone(), &url).send().await.map_err(Into::into), "blob", &daemon)?;
            let status = resp.status();
            let body = resp.text().await?;
            let took = started.elapsed();
            eprintln!("[max_blob_size] {method} {}: {status} in {took:?}: {body}", &digest[..16]);
            ensure!(status == StatusCode::BAD_GATEWAY, "{method} {digest}: {status} {body}");
            ensure!(took < Duration::from_secs(2), "{method} {digest} took {took:?}");
            if method == Method::GET {
                ensure!(body.contains("max_blob_size") && body.contains("\"errors\""), "unclear error: {body}");
            }
        }
    }
    let rss_after = daemon.rss_bytes()?;
    let grew = rss_after.saturating_sub(rss_before);
    eprintln!("[max_blob_size] daemon RSS {} MiB before, {} MiB after", rss_before >> 20, rss_after >> 20);
    ensure!(grew < 16 << 20, "the daemon grew by {} MiB", grew >> 20);
    Ok(())
}

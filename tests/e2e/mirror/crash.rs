//! Crash safety: kill -9 mid-download, restart, resume, serve from the cache.

use super::*;

/// Starts a GET, reads at least `at_least` bytes of the body for at least `min_time`, kills the
/// daemon with SIGKILL and drains what is left; returns how many body bytes arrived in all.
async fn read_then_kill9(
    client: &reqwest::Client,
    url: &str,
    daemon: &mut Daemon,
    at_least: u64,
    min_time: Duration,
) -> Result<u64> {
    let started = Instant::now();
    let mut response = client.get(url).send().await?;
    ensure!(response.status() == StatusCode::OK, "first GET: {}", response.status());
    let mut received = 0u64;
    let read_some = async {
        while received < at_least || started.elapsed() < min_time {
            match response.chunk().await? {
                Some(chunk) => received += chunk.len() as u64,
                None => break,
            }
        }
        anyhow::Ok(())
    };
    tokio::time::timeout(Duration::from_secs(60), read_some)
        .await
        .context("reading the first bytes took over 60 s")??;
    daemon.kill9();
    let rest = tokio::time::timeout(Duration::from_secs(30), async {
        while let Ok(Some(chunk)) = response.chunk().await {
            received += chunk.len() as u64;
        }
    })
    .await;
    ensure!(rest.is_ok(), "the body did not end within 30 s of kill -9");
    Ok(received)
}

/// c. kill -9 mid-download, restart, GET again: right bytes; then with the origin stopped the
/// complete blob is still served from the cache.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn kill9_mid_download_then_restart_resumes_and_serves_from_cache() -> Result<()> {
    require_tools();
    let mut registry = Registry::start().await?;
    let image = Image::build(30, &[110 * MB])?;
    image.push(&registry, "e2e/crash", "v1").await?;
    let mut daemon = Daemon::start(DaemonConfig::for_registry(&registry)).await?;
    let blob = image.layers[0].clone();
    let url = format!("{}/v2/e2e/crash/blobs/{}", daemon.mirror_url(), blob.digest);
    let client = http();

    let received = read_then_kill9(&client, &url, &mut daemon, 8 * MB, Duration::ZERO).await?;
    ensure!(received < blob.size, "the whole blob ({received} B) arrived before kill -9");

    daemon.restart().await?;
    let (digest, len) = with_log(get_blob(&client, &url).await, "GET after restart", &daemon)?;
    ensure!(digest == blob.digest && len == blob.size, "after restart: {digest} ({len} B)");
    let origin_bytes = registry.blob_bytes_served(&blob.digest);
    eprintln!("origin sent {origin_bytes} bytes for a {} byte blob across the crash", blob.size);
    ensure!(origin_bytes <= 2 * blob.size, "origin sent {origin_bytes} B:\n{}", registry.blob_summary());

    registry.stop();
    daemon.kill9();
    daemon.restart().await?;
    let started = Instant::now();
    let (digest, len) = with_log(get_blob(&client, &url).await, "GET from cache, origin down", &daemon)?;
    ensure!(digest == blob.digest && len == blob.size, "from cache: {digest} ({len} B)");
    ensure!(started.elapsed() < Duration::from_secs(60), "serving from cache took {:?}", started.elapsed());
    Ok(())
}

/// c'. A download killed midway resumes from the pieces it had stored instead of fetching the
/// whole blob from the origin again (DESIGN: "partial blobs resume from their bitmap"). The origin
/// is behind an 8 MB/s link so the download is still running after 3 s, when the daemon is killed.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_download_killed_midway_resumes_instead_of_starting_over() -> Result<()> {
    require_tools();
    let registry = Registry::start().await?;
    let image = Image::build(35, &[48 * MB])?;
    image.push(&registry, "e2e/resume", "v1").await?;
    let link = SlowProxy::start(&registry.host(), 8 * MB).await?;
    let config = DaemonConfig::default().registry(&registry.host(), &link.url());
    let mut daemon = Daemon::start(config).await?;
    let blob = image.layers[0].clone();
    let url = format!("{}/v2/e2e/resume/blobs/{}", daemon.mirror_url(), blob.digest);
    let client = http();
    let received = read_then_kill9(&client, &url, &mut daemon, MB, Duration::from_secs(3)).await?;
    ensure!(received < blob.size, "the whole blob arrived before kill -9");
    // Let the origin log the request the crash cut short before taking the mark.
    wait_until(Duration::from_secs(5), Duration::from_millis(50), || async {
        registry.blob_get_count(&blob.digest) > 0
    })
    .await;
    let mark = registry.mark();
    daemon.restart().await?;
    let got = with_log(get_blob(&client, &url).await, "GET after restart", &daemon)?;
    ensure!(got == (blob.digest.clone(), blob.size), "after restart: {got:?}");
    let refetched = registry.blob_bytes_served_since(&blob.digest, mark);
    eprintln!("{received} B reached the client before kill -9; the origin sent {refetched} B after");
    ensure!(
        refetched + 4 * MB <= blob.size,
        "after the restart the origin sent {refetched} of {} bytes again, although the download \
         had run for 3 s and {received} bytes had reached the client before kill -9:\n{}",
        blob.size,
        registry.blob_summary()
    );
    Ok(())
}

/// c''. The last byte goes out once the blob hashes to its digest, before the file is synced and
/// moved. With the move stalled (a test-only fault standing in for a slow fsync), a kill -9 the
/// moment the client has the last byte leaves the blob verified but not moved; the restarted
/// daemon finishes it from its own file (the origin is down by then: nothing can be fetched).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn kill9_right_after_the_last_byte_leaves_the_blob_complete() -> Result<()> {
    require_tools();
    let mut registry = Registry::start().await?;
    let image = Image::build(36, &[64 * MB])?;
    image.push(&registry, "e2e/lastbyte", "v1").await?;
    let mut config = DaemonConfig::for_registry(&registry);
    config.env.push(("SHOAL_FAULT_STALL_PROMOTE".into(), "1".into()));
    let mut daemon = Daemon::start(config).await?;
    let blob = image.layers[0].clone();
    let url = format!("{}/v2/e2e/lastbyte/blobs/{}", daemon.mirror_url(), blob.digest);
    let client = http();
    let started = Instant::now();
    let (digest, len) = with_log(get_blob(&client, &url).await, "cold GET", &daemon)?;
    ensure!(digest == blob.digest && len == blob.size, "cold GET: {digest} ({len} B)");
    ensure!(started.elapsed() < Duration::from_secs(30), "the last byte waited for the stalled move");
    daemon.kill9();
    let partial = daemon.data_dir().join(format!("partial/{}", blob.hex()));
    let stored = daemon.data_dir().join(format!("blobs/sha256/{}/{}", &blob.hex()[..2], blob.hex()));
    ensure!(partial.is_file() && !stored.exists(), "the move was not stalled: the test proves nothing");
    registry.stop();
    daemon.config_mut().env.clear();
    daemon.restart().await?;
    ensure!(stored.is_file(), "after the restart the blob is not complete in the store:\n{}", daemon.stderr_tail());
    let (digest, len) = with_log(get_blob(&client, &url).await, "GET after restart, origin down", &daemon)?;
    ensure!(digest == blob.digest && len == blob.size, "after restart: {digest} ({len} B)");
    Ok(())
}

//! A full or failing disk never fails a pull: the cache quota holds at every moment, a blob
//! without room is served from the origin uncached, a disk that fills up mid-download still
//! completes the client's response from the origin, and caching resumes once space is back.

use std::path::Path;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::Arc;

use super::*;

/// Bytes the blob files of a data dir take on disk (allocated blocks: a sparse partial file
/// counts only what was written).
fn stored_bytes(data: &Path) -> u64 {
    use std::os::unix::fs::MetadataExt;
    fn walk(dir: &Path, total: &mut u64) {
        let Ok(entries) = std::fs::read_dir(dir) else { return };
        for e in entries.flatten() {
            match e.metadata() {
                Ok(m) if m.is_dir() => walk(&e.path(), total),
                Ok(m) => *total += m.blocks() * 512,
                Err(_) => {}
            }
        }
    }
    let mut total = 0;
    walk(&data.join("blobs"), &mut total);
    walk(&data.join("partial"), &mut total);
    total
}

/// Samples [`stored_bytes`] every 5 ms until stopped; returns the largest value seen.
fn sample_max(data: std::path::PathBuf, stop: Arc<AtomicBool>) -> tokio::task::JoinHandle<u64> {
    tokio::task::spawn_blocking(move || {
        let max = AtomicU64::new(0);
        while !stop.load(Ordering::SeqCst) {
            max.fetch_max(stored_bytes(&data), Ordering::SeqCst);
            std::thread::sleep(Duration::from_millis(5));
        }
        max.into_inner()
    })
}

/// `/healthz` once it reads `ok` (the cache is marked healthy just after the last byte went
/// out), or its last answer after 3 s.
async fn healthz_when_ok(daemon: &Daemon) -> Result<String> {
    let mut health = daemon.healthz().await?;
    let deadline = Instant::now() + Duration::from_secs(3);
    while health != "ok\n" && Instant::now() < deadline {
        tokio::time::sleep(Duration::from_millis(50)).await;
        health = daemon.healthz().await?;
    }
    Ok(health)
}

/// i. `--cache-size 100MiB`, five 42 MB blobs pulled at once: the store never holds more than
/// 100 MiB, and every pull gets the right bytes (those without room straight from the origin).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_quota_holds_at_every_moment_while_five_pulls_run_at_once() -> Result<()> {
    require_tools();
    let registry = Registry::start().await?;
    let image = Image::build(40, &[42 * MB; 5])?;
    image.push(&registry, "e2e/quota", "v1").await?;
    let daemon = Daemon::start(DaemonConfig::for_registry(&registry).cache_size("100MiB")).await?;
    let client = http();
    let stop = Arc::new(AtomicBool::new(false));
    let sampler = sample_max(daemon.data_dir(), stop.clone());
    let started = Instant::now();
    let pulls = image.layers.iter().map(|blob| {
        let url = format!("{}/v2/e2e/quota/blobs/{}", daemon.mirror_url(), blob.digest);
        let client = client.clone();
        async move { get_blob(&client, &url).await }
    });
    let results = futures::future::join_all(pulls).await;
    let took = started.elapsed();
    stop.store(true, Ordering::SeqCst);
    let max = sampler.await?;
    for (blob, got) in image.layers.iter().zip(results) {
        let got = with_log(got, "GET through the mirror", &daemon)?;
        ensure!(got == (blob.digest.clone(), blob.size), "{}: got {got:?}", blob.digest);
    }
    let uncached = daemon.counter("shoal_uncached_total", "reason=\"no_space\"").await?;
    let now = stored_bytes(&daemon.data_dir());
    eprintln!(
        "5 × 42 MB at once in {took:?}: the store peaked at {:.1} MiB (quota 100 MiB), holds {:.1} MiB; \
         {uncached} pulls served uncached",
        max as f64 / MB as f64,
        now as f64 / MB as f64
    );
    ensure!(max <= 100 * MB, "the store grew to {max} bytes, over the 100 MiB quota");
    ensure!(uncached >= 1.0, "five 42 MB blobs cannot all fit under 100 MiB, yet none was served uncached");
    Ok(())
}

/// ii. A data dir on a small tmpfs: full before the pull → served from the origin uncached and
/// `/healthz` degraded; space back → cached again and healthy; filled up mid-download → the
/// response still completes from the origin, nothing partial is kept; space back → cached again.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_disk_that_fills_up_never_fails_a_pull_and_caching_resumes() -> Result<()> {
    require_tools();
    let registry = Registry::start().await?;
    let image = Image::build(41, &[42 * MB, 48 * MB])?;
    image.push(&registry, "e2e/disk", "v1").await?;
    // A 16 MB/s link, so the second download is still running when the disk fills.
    let link = SlowProxy::start(&registry.host(), 16 * MB).await?;
    let mut config = DaemonConfig::default().registry(&registry.host(), &link.url());
    config.data_tmpfs = Some(160 * MB);
    config.extra_args = vec!["--min-free-space".into(), "16MiB".into()];
    let daemon = Daemon::start(config).await?;
    let tmpfs = daemon.tmpfs().context("tmpfs")?;
    let client = http();
    let (small, big) = (&image.layers[0], &image.layers[1]);
    let url = |b: &shoal_e2e::Blob| format!("{}/v2/e2e/disk/blobs/{}", daemon.mirror_url(), b.digest);
    let blob_file = |b: &shoal_e2e::Blob| daemon.data_dir().join("blobs/sha256").join(&b.hex()[..2]).join(b.hex());

    // Full before the pull: 40 MiB free cannot take 42 MB above the 16 MiB floor.
    tmpfs.fill("filler", 40 * MB)?;
    let got = with_log(get_blob(&client, &url(small)).await, "GET with the disk full", &daemon)?;
    ensure!(got == (small.digest.clone(), small.size), "with the disk full: {got:?}");
    let no_space = daemon.counter("shoal_uncached_total", "reason=\"no_space\"").await?;
    let health = daemon.healthz().await?;
    eprintln!(
        "disk full: 200 with the right {} bytes, uncached{{no_space}} = {no_space}, /healthz: {health:?}",
        small.size
    );
    ensure!(no_space == 1.0 && health.starts_with("degraded"), "no_space {no_space}, healthz {health:?}");
    ensure!(!blob_file(small).exists(), "a blob without room was cached");

    // Space back: the next pull caches, the one after is a cache hit.
    tmpfs.remove("filler")?;
    let got = with_log(get_blob(&client, &url(small)).await, "GET with space back", &daemon)?;
    ensure!(got == (small.digest.clone(), small.size), "with space back: {got:?}");
    let gets = registry.blob_get_count(&small.digest);
    let health = healthz_when_ok(&daemon).await?;
    get_blob(&client, &url(small)).await?;
    ensure!(blob_file(small).exists() && health == "ok\n", "not cached again: healthz {health:?}");
    ensure!(registry.blob_get_count(&small.digest) == gets, "the cached blob went to the origin again");

    // Full mid-download: read 4 MB of the big blob, fill the disk, read on.
    let mut response = client.get(url(big)).send().await?;
    ensure!(response.status() == StatusCode::OK, "GET big: {}", response.status());
    let mut hasher = shoal_e2e::StreamHasher::new()?;
    while hasher.len() < 4 * MB {
        let chunk = response.chunk().await?.context("body ended early")?;
        hasher.update(&chunk).await?;
    }
    let filled = tmpfs.fill("filler", 0)?;
    while let Some(chunk) = response.chunk().await? {
        hasher.update(&chunk).await?;
    }
    let len = hasher.len();
    let digest = hasher.finish().await?;
    let store_failed = daemon.counter("shoal_uncached_total", "reason=\"store_failed\"").await?;
    let health = daemon.healthz().await?;
    eprintln!(
        "disk filled ({:.0} MiB) mid-download: the client got {len} bytes hashing to the digest: {}, \
         uncached{{store_failed}} = {store_failed}, /healthz: {health:?}",
        filled as f64 / MB as f64,
        digest == big.digest
    );
    ensure!(digest == big.digest && len == big.size, "mid-download: {digest} ({len} B)");
    ensure!(store_failed >= 1.0 && health.starts_with("degraded"), "store_failed {store_failed}, healthz {health:?}");
    ensure!(!blob_file(big).exists(), "a blob that could not be stored is recorded complete");
    let log = std::fs::read_to_string(daemon.stderr_path())?;
    let logged = log.lines().filter(|l| l.contains("blob not cached") && l.contains(big.hex())).count();
    ensure!(logged == 1, "the failure was logged {logged} times for the blob");

    // Space back again: the big blob caches and the cache is healthy.
    tmpfs.remove("filler")?;
    let got = with_log(get_blob(&client, &url(big)).await, "GET big with space back", &daemon)?;
    ensure!(got == (big.digest.clone(), big.size), "big with space back: {got:?}");
    let health = healthz_when_ok(&daemon).await?;
    ensure!(
        blob_file(big).exists() && health == "ok\n",
        "big not cached again: healthz {health:?}\n{}",
        daemon.stderr_tail()
    );
    let log = std::fs::read_to_string(daemon.stderr_path())?;
    let reopened = log.lines().filter(|l| l.contains("metadata store reopened")).count();
    eprintln!("space back: the big blob cached, /healthz ok (metadata store reopened {reopened} times)");
    Ok(())
}

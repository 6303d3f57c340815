//! Ranged reads of a blob still downloading: a range goes out as soon as its pieces are present
//! and verified (here, pieces from a parent that matched their trusted digests), without waiting
//! for the rest of the blob or for the whole-blob sha256; a response of the whole blob still
//! waits for that check.

use super::*;

/// d1's download limit: the 32 MiB layer takes it about 4 s.
const DOWNLOAD_LIMIT: &str = "8MiB/s";

/// True once `daemon` has a running download of `blob`.
async fn downloading(daemon: &Daemon, blob: &Blob) -> bool {
    let Ok(tasks) = daemon.status().await else { return false };
    tasks.as_array().into_iter().flatten().any(|t| t["digest"] == blob.digest.as_str())
}

/// A `GET` of `range` of `blob` through `daemon`, checked byte for byte against the image's
/// file; the task returns when it ended, counted from `since`.
fn range_get(origin: &Origin, daemon: &Daemon, blob: &Blob, range: std::ops::Range<u64>, since: Instant) -> Pull {
    let who = format!("GET bytes {}-{} via {}", range.start, range.end - 1, daemon.mirror_host());
    let (url, path) = (origin.blob_url(daemon, blob), origin.image.blob_path(blob));
    let task = tokio::spawn(async move {
        let client = reqwest::Client::builder().timeout(Duration::from_secs(240)).build()?;
        let header = format!("bytes={}-{}", range.start, range.end - 1);
        let response = client.get(&url).header("range", header).send().await?;
        ensure!(response.status() == StatusCode::PARTIAL_CONTENT, "GET {url}: {}", response.status());
        let body = response.bytes().await?;
        let took = since.elapsed();
        let file = std::fs::read(&path)?;
        let want = &file[range.start as usize..range.end as usize];
        ensure!(body.len() == want.len(), "GET {url}: {} bytes, want {}", body.len(), want.len());
        ensure!(body == want, "GET {url}: the bytes differ from the blob's");
        Ok(took)
    });
    (who, task)
}

/// d0 fetches a 32 MiB layer from the origin; then d1 (download limit 8 MiB/s) gets it from d0
/// while three clients read it through d1: the whole blob, its third MiB and its last MiB. Both
/// ranges get the right bytes within half the time of the whole-blob response: each reader's
/// position steers the picker, so the last MiB does not wait for the pieces before it.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn ranges_of_a_blob_still_downloading_go_out_before_the_whole_blob() -> Result<()> {
    require_tools();
    let _alone = SERIAL.write().await;
    let origin = Origin::start(800, &[32 * MB], "e2e/ranges").await?;
    let scheduler = Scheduler::start().await?;
    let config = Swarm::config(&origin.registry, &[scheduler.url()]);
    let limited = |i, c: DaemonConfig| if i == 1 { c.download_limit(DOWNLOAD_LIMIT) } else { c };
    let swarm = Swarm::start(2, config, limited).await?;
    let _logs = KeepLogs::new("swarm-ranges", &swarm, Some(&scheduler));
    let (d0, d1) = (&swarm.daemons[0], &swarm.daemons[1]);
    let blob = origin.image.layers[0].clone();
    expect_pulls(vec![blob_get(&origin, d0, &blob, "d0")], PULL_LIMIT, &swarm).await?;

    let started = Instant::now();
    let whole = blob_get(&origin, d1, &blob, "d1");
    wait_for("d1 to start downloading the layer", Duration::from_secs(10), &swarm, || downloading(d1, &blob)).await?;
    let joined = started.elapsed();
    let third = range_get(&origin, d1, &blob, 2 * MB..3 * MB, started);
    let last = range_get(&origin, d1, &blob, blob.size - MB..blob.size, started);
    let ranges = expect_pulls(vec![third, last], PULL_LIMIT, &swarm).await?;
    let whole = expect_pulls(vec![whole], PULL_LIMIT, &swarm).await?[0];
    let (third, last) = (ranges[0], ranges[1]);
    let from_peers = d1.counter("shoal_fetched_bytes_total", r#"source="peer""#).await?;
    report(
        "ranges",
        &format!(
            "{:.1} MiB layer, d1 at {DOWNLOAD_LIMIT}: ranges joined at {:.2}s; third MiB done at {:.2}s, \
             last MiB at {:.2}s, whole blob at {:.2}s ({:.1} MiB of it from peers)",
            blob.size as f64 / MB as f64,
            joined.as_secs_f64(),
            third.as_secs_f64(),
            last.as_secs_f64(),
            whole.as_secs_f64(),
            from_peers / MB as f64,
        ),
    );
    ensure!(from_peers >= 0.9 * blob.size as f64, "d1 got only {from_peers} B from peers: this tests nothing");
    // The picker takes every reader's next pieces first: the last MiB does not wait for the
    // pieces before it.
    ensure!(last < whole / 2, "the last MiB ({last:?}) waited for most of the blob ({whole:?})");
    ensure!(third < whole / 2, "the third MiB ({third:?}) waited for most of the blob ({whole:?})");
    Ok(())
}

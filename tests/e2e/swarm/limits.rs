//! g. Bandwidth limits hold: a daemon's origin fetches stay at its `--origin-limit`, its uploads to
//! peers at its `--upload-limit` (within 10%), measured from its own byte counters over the
//! transfer (10% → 90% of the blob, leaving out the first burst and the tail).

use super::*;

const ORIGIN_LIMIT: (&str, f64) = ("12MiB/s", 12.0 * MB as f64);
const UPLOAD_LIMIT: (&str, f64) = ("10MiB/s", 10.0 * MB as f64);

/// `(seconds since the first sample, counter value)` samples of one daemon counter, taken every
/// 50 ms until every task in `tasks` has ended (at most [`PULL_LIMIT`]).
async fn sample(daemon: &Daemon, name: &str, labels: &str, tasks: &[Pull]) -> Result<Vec<(f64, f64)>> {
    let start = Instant::now();
    let mut samples = Vec::new();
    loop {
        let asked = start.elapsed().as_secs_f64();
        let value = daemon.counter(name, labels).await?;
        // Time-stamp a sample halfway through the request that read it.
        samples.push(((asked + start.elapsed().as_secs_f64()) / 2.0, value));
        if tasks.iter().all(|(_, t)| t.is_finished()) {
            return Ok(samples);
        }
        ensure!(start.elapsed() < PULL_LIMIT, "{name}{{{labels}}} still growing after {PULL_LIMIT:?}: {value}");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

/// The rate between the first samples at or above `lo` and `hi` of the way from `base` to
/// `base + size`: `(bytes per second, seconds measured)`.
fn rate(samples: &[(f64, f64)], base: f64, size: f64, lo: f64, hi: f64) -> Option<(f64, f64)> {
    let at = |f: f64| samples.iter().find(|(_, v)| *v - base >= f * size).copied();
    let ((t0, v0), (t1, v1)) = (at(lo)?, at(hi)?);
    (t1 > t0).then(|| ((v1 - v0) / (t1 - t0), t1 - t0))
}

fn check_rate(what: &str, measured: Option<(f64, f64)>, limit: f64, samples: &[(f64, f64)]) -> Result<String> {
    let Some((rate, window)) = measured else {
        bail!("{what}: too few samples to measure a rate: {samples:?}");
    };
    let text = format!(
        "{what}: {:.2} MiB/s over {window:.2}s (limit {:.0} MiB/s, {:+.1}%)",
        rate / MB as f64,
        limit / MB as f64,
        100.0 * (rate / limit - 1.0)
    );
    ensure!((rate / limit - 1.0).abs() <= 0.10, "{text}: not within 10%; samples: {samples:?}");
    Ok(text)
}

/// d0 (origin limit 12 MiB/s, upload limit 10 MiB/s) fetches a 40 MiB layer from the origin;
/// then d1 and d2 (no limits) fetch it at once, with d0 as their only complete parent (they
/// also trade pieces among themselves; d0's upload is measured over what it actually sent).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn origin_and_upload_limits_hold_within_ten_percent() -> Result<()> {
    require_tools();
    let _alone = SERIAL.write().await;
    let origin = Origin::start(700, &[40 * MB], "e2e/limits").await?;
    let scheduler = Scheduler::start().await?;
    let config = Swarm::config(&origin.registry, &[scheduler.url()]);
    let swarm =
        Swarm::start(
            3,
            config,
            |i, c| {
                if i == 0 {
                    c.origin_limit(ORIGIN_LIMIT.0).upload_limit(UPLOAD_LIMIT.0)
                } else {
                    c
                }
            },
        )
        .await?;
    let _logs = KeepLogs::new("swarm-limits", &swarm, Some(&scheduler));
    let d0 = &swarm.daemons[0];
    let blob = origin.image.layers[0].clone();
    let size = blob.size as f64;

    // Origin limit: d0 is first, so it fetches the layer from the origin.
    let gets = vec![blob_get(&origin, d0, &blob, "d0")];
    let fetched = sample(d0, "shoal_fetched_bytes_total", r#"source="origin""#, &gets).await?;
    let took = expect_pulls(gets, PULL_LIMIT, &swarm).await?;
    ensure!(fetched.last().map(|s| s.1) == Some(size), "d0 fetched {fetched:?} from the origin, want {size}");
    let origin_text = check_rate("origin fetch of d0", rate(&fetched, 0.0, size, 0.1, 0.9), ORIGIN_LIMIT.1, &fetched)?;

    // Upload limit: the others get the layer from d0 (and from each other).
    let base = d0.counter("shoal_uploaded_bytes_total", "").await?;
    let gets: Vec<Pull> = (1..3).map(|i| blob_get(&origin, &swarm.daemons[i], &blob, &format!("d{i}"))).collect();
    let uploaded = sample(d0, "shoal_uploaded_bytes_total", "", &gets).await?;
    let took_peer = expect_pulls(gets, PULL_LIMIT, &swarm).await?;
    let traffic = swarm.traffic_table().await;
    let sent = d0.counter("shoal_uploaded_bytes_total", "").await? - base;
    // The children got (nearly) everything from peers: a few pieces may come from the origin when
    // the scheduler lacks their digest (see `digests.rs`), outside the measured window.
    let from_origin = swarm.sum("shoal_fetched_bytes_total", r#"source="origin""#).await - size;
    ensure!(from_origin <= 0.1 * size, "the children fetched {from_origin} B from the origin\n{traffic}");
    ensure!(sent >= size, "d0 uploaded only {sent} B: its upload limit was not what paced the children\n{traffic}");
    let measured = rate(&uploaded, base, sent, 0.1, 0.9);
    let upload_text = check_rate("upload of d0", measured, UPLOAD_LIMIT.1, &uploaded)?;
    report(
        "limits",
        &format!(
            "{origin_text} (GET took {}); {upload_text}, {:.1} MiB in all (GETs took {})\n{traffic}",
            secs(&took),
            sent / MB as f64,
            secs(&took_peer)
        ),
    );
    Ok(())
}

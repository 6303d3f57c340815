//! The piece digest table: children can only take (and verify) a piece from a parent once the
//! scheduler has its digest, reported by the peer that fetched it from the origin. Every piece of
//! a finished origin download, the short last one included, must be there.

use super::*;

/// `(known, total)` from each "digests K/N" of `shoal status --scheduler` (one per task).
fn digest_counts(report: &str) -> Vec<(u32, u32)> {
    report
        .split("digests ")
        .skip(1)
        .filter_map(|rest| {
            let (known, total) = rest.split_whitespace().next()?.split_once('/')?;
            Some((known.parse().ok()?, total.parse().ok()?))
        })
        .collect()
}

/// d0 fetches 4 multi-piece layers (each with a short last piece) from the origin at once; then
/// the scheduler knows every piece digest of the 4 tasks, and d1 gets all 4 layers from d0 with
/// nothing from the origin and no stall.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn every_piece_digest_of_an_origin_download_reaches_the_scheduler() -> Result<()> {
    require_tools();
    let _shared = SERIAL.read().await;
    let origin = Origin::start(800, &[3 * MB, 4 * MB, 5 * MB, 6 * MB], "e2e/digests").await?;
    let scheduler = Scheduler::start().await?;
    let swarm = Swarm::start(2, Swarm::config(&origin.registry, &[scheduler.url()]), |_, c| c).await?;
    let _logs = KeepLogs::new("swarm-digests", &swarm, Some(&scheduler));
    let (d0, d1) = (&swarm.daemons[0], &swarm.daemons[1]);

    let gets = origin.image.layers.iter().map(|l| blob_get(&origin, d0, l, "d0")).collect();
    expect_pulls(gets, PULL_LIMIT, &swarm).await?;
    // Piece reports may trail the end of the download a little: allow 3 s.
    let deadline = Instant::now() + Duration::from_secs(3);
    let (mut report_text, mut complete) = (String::new(), false);
    while !complete && Instant::now() < deadline {
        report_text = scheduler.task_report(d0).await?;
        let counts = digest_counts(&report_text);
        complete = counts.len() == 4 && counts.iter().all(|(known, total)| known == total);
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    let gets = origin.image.layers.iter().map(|l| blob_get(&origin, d1, l, "d1")).collect();
    let took = expect_pulls(gets, PULL_LIMIT, &swarm).await?;
    let traffic = swarm.traffic_table().await;
    report("digests", &format!("d1 got the layers in {}\n{traffic}", secs(&took)));
    let from_origin = d1.counter("shoal_fetched_bytes_total", r#"source="origin""#).await?;
    let slowest = took.iter().max().copied().unwrap_or_default();
    ensure!(
        complete,
        "d0 finished every layer from the origin, but the scheduler lacks piece digests (children \
         cannot verify, hence cannot take, those pieces from peers):\n{report_text}\nthen d1 took {} for the \
         layers and fetched {from_origin} B from the origin\n{traffic}",
        secs(&took)
    );
    ensure!(from_origin == 0.0, "d1 fetched {from_origin} B from the origin\n{traffic}");
    ensure!(slowest < Duration::from_secs(5), "a 6 MiB layer from an idle peer took {slowest:?}: a stall\n{traffic}");
    Ok(())
}

#[test]
fn parses_digest_counts() {
    let text = "scheduler http://x: 2 hosts, 2 tasks\n  sha256:2288e1c42e77   20.0 MiB peers    6 done    6 \
                from-origin  0 digests 21/21\n  sha256:24f36b0ba5d0   12.0 MiB peers 1 done 1 from-origin 0 digests 12/13\n";
    assert_eq!(digest_counts(text), [(21, 21), (12, 13)]);
}

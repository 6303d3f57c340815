//! f. A daemon that serves corrupted pieces (test-only fault `SHOAL_FAULT_CORRUPT_UPLOADS=1`) is
//! caught by the children's per-piece sha256 against the scheduler's digests, reported, and
//! avoided; every pull is still correct.

use super::*;

/// Distinct children reporting a parent for digest mismatches before the scheduler stops
/// offering it for the task: the scheduler's default `quarantine_after_reports`.
const QUARANTINE_AFTER: usize = 3;

/// d0 (corrupting its uploads) pulls first, from the origin, and so is the only holder of the
/// image; d1..d4 then pull at once with skopeo. Each is offered d0 first, gets corrupt pieces,
/// detects and reports them, and completes from healthy sources. Then d5 pulls: d0 is
/// quarantined, so d5 never gets a piece from it.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_peer_serving_corrupt_pieces_is_detected_and_avoided() -> Result<()> {
    require_tools();
    let _shared = SERIAL.read().await;
    let origin = Origin::start(600, &[24 * MB, 16 * MB], "e2e/corrupt").await?;
    let scheduler = Scheduler::start().await?;
    let config = Swarm::config(&origin.registry, &[scheduler.url()]);
    let swarm =
        Swarm::start(6, config, |i, c| if i == 0 { c.env("SHOAL_FAULT_CORRUPT_UPLOADS", "1") } else { c }).await?;
    let _logs = KeepLogs::new("swarm-corrupt", &swarm, Some(&scheduler));
    let d0 = &swarm.daemons[0];
    let mismatch = r#"reason="digest_mismatch""#;

    expect_pulls(vec![skopeo_pull(&origin, d0, "d0")], PULL_LIMIT, &swarm).await?;
    let pulls = (1..5).map(|i| skopeo_pull(&origin, &swarm.daemons[i], &format!("d{i}"))).collect();
    let took = expect_pulls(pulls, PULL_LIMIT, &swarm).await?;
    origin.expect_no_client_bypass()?;
    let traffic = swarm.traffic_table().await;
    report("corrupt", &format!("d1..d4 pulled in {}\n{traffic}", secs(&took)));

    // Detected: the children saw mismatches, and d0 really served (corrupt) bytes.
    let mismatches = swarm.counters("shoal_piece_failures_total", mismatch).await;
    let reporters = mismatches[1..5].iter().filter(|&&m| m > 0.0).count();
    ensure!(reporters >= QUARANTINE_AFTER, "only {reporters} children detected corrupt pieces\n{traffic}");
    let uploaded = d0.counter("shoal_uploaded_bytes_total", "").await?;
    ensure!(uploaded > 0.0, "d0 never served a piece: the fault was not exercised\n{traffic}");
    // Avoided: a child drops a parent at its first mismatch and only loses the requests it had in
    // flight to it then, so d0 served less than one image per child (not retried again and again).
    let layers = origin.image.layers_size() as f64;
    ensure!(uploaded < 4.0 * layers, "d0 served {uploaded} B of corrupt pieces to 4 children\n{traffic}");

    // Quarantined: a later daemon is never offered d0.
    let (d0_before, mark) = (uploaded, origin.served_bytes().await);
    let last = expect_pulls(vec![skopeo_pull(&origin, &swarm.daemons[5], "d5")], PULL_LIMIT, &swarm).await?;
    let traffic = swarm.traffic_table().await;
    report("corrupt", &format!("then d5 pulled in {}\n{traffic}", secs(&last)));
    let d5 = &swarm.daemons[5];
    ensure!(d5.counter("shoal_piece_failures_total", mismatch).await? == 0.0, "d5 got corrupt pieces\n{traffic}");
    ensure!(d0.counter("shoal_uploaded_bytes_total", "").await? == d0_before, "d0 served d5\n{traffic}");
    let peer = d5.counter("shoal_fetched_bytes_total", r#"source="peer""#).await?;
    // Mostly from healthy peers (pieces whose digest the scheduler lacks come from the origin: see
    // `digests.rs`).
    ensure!(peer >= 0.5 * layers, "d5 got only {peer} B from (healthy) peers\n{traffic}");
    let extra = (origin.served_bytes().await - mark) as f64;
    ensure!(extra <= 0.5 * layers, "the origin served d5 {extra} B\n{traffic}");
    Ok(())
}

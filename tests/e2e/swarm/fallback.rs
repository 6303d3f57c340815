//! d, e. Daemons that cannot use the swarm still pull, from the origin: no scheduler listening;
//! a daemon without the cluster token (refused by its peers, and it gives them nothing either).

use super::*;

/// d. Three daemons whose scheduler URL nobody listens on: their pulls complete from the origin,
/// as fast as a plain mirror's (no waiting on the missing scheduler).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn without_a_scheduler_pulls_complete_from_the_origin_promptly() -> Result<()> {
    require_tools();
    let _shared = SERIAL.read().await;
    let origin = Origin::start(400, &[24 * MB, 16 * MB], "e2e/no-scheduler").await?;
    let plain = Daemon::start(DaemonConfig::for_registry(&origin.registry)).await?;
    let config = Swarm::config(&origin.registry, &[Scheduler::unreachable_url()]);
    let swarm = Swarm::start(3, config, |_, c| c).await?;
    let mut logs = KeepLogs::new("swarm-no-scheduler", &swarm, None);
    logs.add("plain", plain.stderr_path());

    // The same pull alone, through a plain mirror (no swarm) and through d0: about as fast.
    let baseline =
        expect_pulls(vec![skopeo_pull(&origin, &plain, "plain mirror")], Duration::from_secs(60), &swarm).await?[0];
    let alone =
        expect_pulls(vec![skopeo_pull(&origin, &swarm.daemons[0], "d0")], Duration::from_secs(60), &swarm).await?[0];
    // Then d1 and d2 at once.
    let pulls = (1..3).map(|i| skopeo_pull(&origin, &swarm.daemons[i], &format!("d{i}"))).collect();
    let took = expect_pulls(pulls, Duration::from_secs(60), &swarm).await?;
    origin.expect_no_client_bypass()?;
    let traffic = swarm.traffic_table().await;
    report(
        "no-scheduler",
        &format!(
            "plain mirror {:.1}s, d0 alone {:.1}s, d1+d2 at once {}\n{traffic}",
            baseline.as_secs_f64(),
            alone.as_secs_f64(),
            secs(&took)
        ),
    );
    ensure!(
        alone <= baseline.mul_f64(1.5) + Duration::from_secs(2),
        "with an unreachable scheduler the pull took {alone:?}, a plain mirror {baseline:?}"
    );
    let layers = origin.image.layers_size() as f64;
    for (i, d) in swarm.daemons.iter().enumerate() {
        let from_origin = d.counter("shoal_fetched_bytes_total", r#"source="origin""#).await?;
        let peer = d.counter("shoal_fetched_bytes_total", r#"source="peer""#).await?;
        ensure!(
            from_origin >= layers && peer == 0.0,
            "d{i}: {from_origin} B from the origin, {peer} from peers\n{traffic}"
        );
    }
    Ok(())
}

/// A token other than [`shoal_e2e::CLUSTER_TOKEN`], long enough to be accepted by the daemon.
const WRONG_TOKEN: &str = "not-the-cluster-token-5e8d2b";

/// e. d0..d2 share the cluster token, d3 has another one. d0 pulls first (from the origin); d3
/// pulls next: the scheduler refuses its connection (it cannot prove the token), so it never
/// learns a peer's address; it gets nothing from peers and completes from the origin, and d0
/// uploads nothing to it. Then d1 and d2 pull at once,
/// correctly and from peers, unaffected by d3 (which holds the image too, but is no peer of theirs).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_daemon_with_the_wrong_cluster_token_gets_nothing_from_peers() -> Result<()> {
    require_tools();
    let _shared = SERIAL.read().await;
    let origin = Origin::start(500, &[24 * MB, 16 * MB], "e2e/wrong-token").await?;
    let scheduler = Scheduler::start().await?;
    let config = Swarm::config(&origin.registry, &[scheduler.url()]);
    let swarm = Swarm::start(4, config, |i, c| if i == 3 { c.cluster_token(WRONG_TOKEN) } else { c }).await?;
    let _logs = KeepLogs::new("swarm-wrong-token", &swarm, Some(&scheduler));
    let (d0, d3) = (&swarm.daemons[0], &swarm.daemons[3]);
    let peer = r#"source="peer""#;

    expect_pulls(vec![skopeo_pull(&origin, d0, "d0")], PULL_LIMIT, &swarm).await?;
    let uploaded_before = d0.counter("shoal_uploaded_bytes_total", "").await?;
    let intruder = expect_pulls(vec![skopeo_pull(&origin, d3, "d3")], PULL_LIMIT, &swarm).await?[0];
    let traffic = swarm.traffic_table().await;
    report("wrong-token", &format!("d3 (wrong token) pulled in {:.1}s\n{traffic}", intruder.as_secs_f64()));
    let layers = origin.image.layers_size() as f64;
    let d3_peer = d3.counter("shoal_fetched_bytes_total", peer).await?;
    let d3_origin = d3.counter("shoal_fetched_bytes_total", r#"source="origin""#).await?;
    ensure!(
        d3_peer == 0.0 && d3_origin >= layers,
        "d3 got {d3_peer} B from peers, {d3_origin} from the origin\n{traffic}"
    );
    let uploaded = d0.counter("shoal_uploaded_bytes_total", "").await?;
    ensure!(uploaded == uploaded_before, "d0 uploaded {} B to the intruder\n{traffic}", uploaded - uploaded_before);
    // It did try the scheduler and was refused (otherwise this test proved nothing).
    let refused = scheduler.metric("shoal_scheduler_refused_total", r#"kind="bad_proof""#).await?.unwrap_or(0.0);
    report("wrong-token", &format!("the scheduler refused {refused} connections without the token"));
    ensure!(
        refused > 0.0,
        "d3 was never refused by the scheduler (refused: {refused})\n{traffic}{}",
        swarm.grep_logs(&["refused", "WARN", "origin"], 20)
    );

    // The rest of the cluster is unaffected.
    let origin_mark = origin.served_bytes().await;
    let pulls = (1..3).map(|i| skopeo_pull(&origin, &swarm.daemons[i], &format!("d{i}"))).collect();
    let took = expect_pulls(pulls, PULL_LIMIT, &swarm).await?;
    origin.expect_no_client_bypass()?;
    let traffic = swarm.traffic_table().await;
    report("wrong-token", &format!("then d1+d2 pulled in {}\n{traffic}", secs(&took)));
    for i in 1..3 {
        let got = swarm.daemons[i].counter("shoal_fetched_bytes_total", peer).await?;
        // Mostly from peers (pieces whose digest the scheduler lacks come from the origin: see
        // `digests.rs`).
        ensure!(got >= 0.5 * layers, "d{i} got only {got} B from peers\n{traffic}");
    }
    let extra = origin.served_bytes().await - origin_mark;
    ensure!(extra as f64 <= 0.5 * layers, "the origin sent {extra} B more for d1 and d2\n{traffic}");
    ensure!(d3.counter("shoal_uploaded_bytes_total", "").await? == 0.0, "d3 uploaded to a peer\n{traffic}");
    Ok(())
}

//! b, c. Failures in the middle of a swarm transfer: a parent killed, the scheduler killed. The
//! pulls still complete, correctly, through their daemons.

use super::*;

/// d0's origin limit: slow enough that its origin download (40 MiB) lasts ~7 s, so a kill lands
/// mid-transfer, while the children fetch from it as its pieces arrive.
const ROOT_ORIGIN_LIMIT: &str = "6MiB/s";

/// Waits until the children (every daemon but d0) got `bytes` from peers in all, then checks that
/// d0 is still downloading (has not got every layer from the origin yet).
async fn wait_mid_transfer(swarm: &Swarm, origin: &Origin, bytes: f64) -> Result<()> {
    wait_for("the children to get pieces from peers", Duration::from_secs(60), swarm, || async move {
        let peer = swarm.counters("shoal_fetched_bytes_total", r#"source="peer""#).await;
        peer.iter().skip(1).sum::<f64>() >= bytes
    })
    .await?;
    let root = swarm.daemons[0].counter("shoal_fetched_bytes_total", r#"source="origin""#).await?;
    let layers = origin.image.layers_size() as f64;
    ensure!(root < layers, "d0 already had all {layers} B from the origin: the fault would not be mid-transfer");
    Ok(())
}

/// Waits until d0 was sent back to source for every layer (it is the first peer of each task).
async fn wait_root(swarm: &Swarm, origin: &Origin) -> Result<()> {
    let layers = origin.image.layers.len() as f64;
    let d0 = &swarm.daemons[0];
    wait_for("d0 to be sent back to source for every layer", Duration::from_secs(30), swarm, || async move {
        d0.counter("shoal_back_to_source_total", "").await.unwrap_or(0.0) >= layers
    })
    .await
}

/// b. d0 fetches the layers from the origin (slowly) and feeds 4 children pulling with skopeo;
/// kill -9 of d0 mid-transfer → the 4 pulls complete correctly, through their daemons.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_parent_killed_mid_transfer_does_not_fail_the_other_pulls() -> Result<()> {
    require_tools();
    let _shared = SERIAL.read().await;
    let origin = Origin::start(200, &[24 * MB, 16 * MB], "e2e/parent-kill").await?;
    let scheduler = Scheduler::start().await?;
    let config = Swarm::config(&origin.registry, &[scheduler.url()]);
    let mut swarm = Swarm::start(5, config, |i, c| if i == 0 { c.origin_limit(ROOT_ORIGIN_LIMIT) } else { c }).await?;
    let _logs = KeepLogs::new("swarm-parent-killed", &swarm, Some(&scheduler));

    let root: Vec<Pull> = origin.image.layers.iter().map(|l| blob_get(&origin, &swarm.daemons[0], l, "d0")).collect();
    wait_root(&swarm, &origin).await?;
    let started = Instant::now();
    let pulls: Vec<Pull> = (1..5).map(|i| skopeo_pull(&origin, &swarm.daemons[i], &format!("d{i}"))).collect();
    wait_mid_transfer(&swarm, &origin, (6 * MB) as f64).await?;
    let before = swarm.traffic_table().await;
    swarm.daemons[0].kill9();
    let killed_at = started.elapsed();
    root.into_iter().for_each(|(_, task)| task.abort());

    let took = expect_pulls(pulls, PULL_LIMIT, &swarm).await?;
    origin.expect_no_client_bypass()?;
    let after = swarm.traffic_table().await;
    report(
        "parent-killed",
        &format!(
            "d0 killed at {:.1}s; pulls took {}\nat the kill:\n{before}after:\n{after}",
            killed_at.as_secs_f64(),
            secs(&took)
        ),
    );
    // The children did use d0 (or each other) before the kill: the kill hit a live transfer.
    let peer: f64 = swarm.counters("shoal_fetched_bytes_total", r#"source="peer""#).await.iter().skip(1).sum();
    ensure!(peer >= (6 * MB) as f64, "children got only {peer} B from peers\n{after}");
    Ok(())
}

/// c. Same set-up, 3 children; kill -9 of the scheduler mid-transfer → all 4
/// pulls complete correctly. Restarted, the scheduler hears from every daemon again.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_scheduler_killed_mid_pull_does_not_fail_pulls() -> Result<()> {
    require_tools();
    let _shared = SERIAL.read().await;
    let origin = Origin::start(300, &[24 * MB, 16 * MB], "e2e/scheduler-kill").await?;
    let mut scheduler = Scheduler::start().await?;
    let config = Swarm::config(&origin.registry, &[scheduler.url()]);
    let swarm = Swarm::start(4, config, |i, c| if i == 0 { c.origin_limit(ROOT_ORIGIN_LIMIT) } else { c }).await?;
    let _logs = KeepLogs::new("swarm-scheduler-killed", &swarm, Some(&scheduler));

    // d0 GETs every layer at once (skopeo would fetch them one after the other).
    let mut pulls: Vec<Pull> =
        origin.image.layers.iter().map(|l| blob_get(&origin, &swarm.daemons[0], l, "d0")).collect();
    wait_root(&swarm, &origin).await?;
    let started = Instant::now();
    pulls.extend((1..4).map(|i| skopeo_pull(&origin, &swarm.daemons[i], &format!("d{i}"))));
    wait_mid_transfer(&swarm, &origin, (4 * MB) as f64).await?;
    let before = swarm.traffic_table().await;
    scheduler.kill9();
    let killed_at = started.elapsed();

    let took = expect_pulls(pulls, PULL_LIMIT, &swarm).await?;
    origin.expect_no_client_bypass()?;
    let after = swarm.traffic_table().await;
    report(
        "scheduler-killed",
        &format!(
            "scheduler killed at {:.1}s; pulls took {}\nat the kill:\n{before}after:\n{after}",
            killed_at.as_secs_f64(),
            secs(&took)
        ),
    );

    // All state is soft: a restarted scheduler learns every host again from re-announcements.
    scheduler.restart().await?;
    let s = &scheduler;
    let back = wait_until(Duration::from_secs(25), Duration::from_millis(200), || async move {
        s.metric("shoal_scheduler_hosts", "").await.ok().flatten() == Some(4.0)
    })
    .await;
    let hosts = scheduler.metric("shoal_scheduler_hosts", "").await?;
    ensure!(back, "after a restart the scheduler knows {hosts:?} hosts, want 4\n{}", scheduler.stderr_tail());
    Ok(())
}

//! a. The headline: six daemons pull one 100 MB image at once; the origin sends it about once and
//! the rest moves between the daemons.

use super::*;

/// A scheduler and 6 daemons; 4 skopeo and 2 containerd pull the same 102 MB image (layers of
/// 40, 30, 20 and 12 MB) at once, each through its own daemon.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn six_daemons_pull_one_image_at_once_and_the_origin_sends_it_about_once() -> Result<()> {
    require_tools();
    let _alone = SERIAL.write().await;
    let origin = Origin::start(100, &[40 * MB, 30 * MB, 20 * MB, 12 * MB], "e2e/swarm").await?;
    ensure!(origin.image_bytes() >= 100_000_000, "the image must be at least 100 MB");
    let scheduler = Scheduler::start().await?;
    let swarm = Swarm::start(6, Swarm::config(&origin.registry, &[scheduler.url()]), |_, c| c).await?;
    let _logs = KeepLogs::new("swarm-everyone", &swarm, Some(&scheduler));

    let timeline = StatusTimeline::start(&swarm, &scheduler);
    let started = Instant::now();
    let pulls: Vec<Pull> = swarm
        .daemons
        .iter()
        .enumerate()
        .map(|(i, d)| {
            let who = format!("d{i}");
            if i < 2 {
                containerd_pull(&origin, d, &who)
            } else {
                skopeo_pull(&origin, d, &who)
            }
        })
        .collect();
    let took = expect_pulls(pulls, 2 * PULL_LIMIT, &swarm).await?;
    let wall = started.elapsed();
    let timeline = timeline.stop().await;
    origin.expect_no_client_bypass()?;

    let image = origin.image_bytes() as f64;
    let served = origin.served_bytes().await as f64;
    let mut traffic = swarm.traffic_table().await;
    let decisions = scheduler.metrics().await.unwrap_or_default();
    for line in decisions.lines().filter(|l| !l.starts_with('#') && !l.contains("_seconds")) {
        traffic.push_str(&format!("  scheduler: {line}\n"));
    }
    match scheduler.task_report(&swarm.daemons[0]).await {
        Ok(text) => traffic.push_str(&text),
        Err(e) => traffic.push_str(&format!("shoal status failed: {e:#}\n")),
    }
    report(
        "everyone",
        &format!(
            "6 pulls in {:.1}s ({}); origin sent {:.2}x the image\n{traffic}",
            wall.as_secs_f64(),
            secs(&took),
            served / image
        ),
    );
    ensure!(
        served <= 1.1 * image,
        "the origin sent {served} B for a {image} B image ({:.2}x > 1.1x)\n{traffic}{}\ndownloads over time \
         (per daemon and layer: pieces held, MB from origin and peers, parents):\n{timeline}",
        served / image,
        origin.registry.blob_summary().lines().filter(|l| l.starts_with("GET")).collect::<Vec<_>>().join("\n")
    );
    // Each daemon received the layers once (origin + peers); whatever did not come from the
    // origin came from peers: at least (6 - 1.1) copies of the layers.
    let layers = origin.image.layers_size() as f64;
    let peer = swarm.sum("shoal_fetched_bytes_total", r#"source="peer""#).await;
    let from_origin = swarm.sum("shoal_fetched_bytes_total", r#"source="origin""#).await;
    let uploaded = swarm.sum("shoal_uploaded_bytes_total", "").await;
    ensure!(
        peer >= (6.0 - 1.1) * layers,
        "only {:.1} MB moved between peers (want >= {:.1} MB)\n{traffic}",
        peer / 1e6,
        4.9 * layers / 1e6
    );
    ensure!(
        peer / (peer + from_origin) > 0.8,
        "peers supplied only {:.0}% of the bytes\n{traffic}",
        100.0 * peer / (peer + from_origin)
    );
    ensure!(uploaded >= peer, "uploaded {uploaded} B < fetched from peers {peer} B\n{traffic}");
    // Every daemon got a share from peers: none silently went to the origin for everything.
    let per_daemon = swarm.counters("shoal_fetched_bytes_total", r#"source="peer""#).await;
    let fed = per_daemon.iter().filter(|&&b| b > 0.0).count();
    ensure!(fed >= 5, "only {fed} daemons got bytes from peers\n{traffic}");
    // The scheduler saw all six hosts.
    let hosts = scheduler.metric("shoal_scheduler_hosts", "").await?;
    ensure!(hosts == Some(6.0), "shoal_scheduler_hosts = {hosts:?}");
    Ok(())
}

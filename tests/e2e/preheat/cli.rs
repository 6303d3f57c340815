//! a, d. `shoal preheat` through the CLI with two sites: one daemon per site fetches; a second
//! preheat moves no byte; then all four daemons pull at once and the origin sends no blob (no
//! layer, no config).

use super::*;
use shoal_e2e::{Registry, Skopeo};

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn preheat_then_rollout_takes_no_layer_from_the_origin() -> Result<()> {
    require_tools();
    let registry = Registry::start().await?;
    let image = Image::build(610, &[12 * MB, 8 * MB, 3 * MB])?;
    image.push(&registry, "e2e/preheat", "v1").await?;
    let reference = format!("{}/e2e/preheat:v1", registry.host());
    let scheduler = scheduler(shoal_e2e::free_port()).await?;
    let swarm = two_sites(Swarm::config(&registry, &[scheduler.url()])).await?;
    let _logs = KeepLogs::new("preheat-cli", &swarm, Some(&scheduler));
    wait_ready(&scheduler, 4).await?;

    // a. One daemon per site fetches every blob.
    let mark = registry.mark();
    let started = std::time::Instant::now();
    let out = shoal_preheat(&scheduler, &[&reference]).await?;
    report("cli", &format!("first preheat in {:?}:\n{out}", started.elapsed()));
    ensure!(out.contains("done") && out.contains("site east: done") && out.contains("site west: done"), "{out}");
    expect_one_per_site(&swarm, &image)?;
    let preheat_bytes = registry.image_bytes_served_since(&image, mark).await;
    let image_bytes: u64 = image.blobs().iter().map(|b| b.size).sum();
    ensure!(
        preheat_bytes <= 2 * image_bytes,
        "the preheat took {preheat_bytes} B from the origin for a {image_bytes} B image in two sites"
    );

    // d. Again: done at once, no byte moves, still one holder per site.
    let mark = registry.mark();
    let started = std::time::Instant::now();
    let out = shoal_preheat(&scheduler, &[&reference]).await?;
    report("cli", &format!("second preheat in {:?}:\n{out}", started.elapsed()));
    ensure!(out.contains("fetched 0 bytes\n") || out.trim_end().ends_with("fetched 0 bytes"), "{out}");
    let again = registry.image_bytes_served_since(&image, mark).await;
    ensure!(again == 0, "the second preheat took {again} B of blobs from the origin");
    expect_one_per_site(&swarm, &image)?;

    // The rollout: every daemon pulls at once; every layer comes from peers.
    let mark = registry.mark();
    let pulls: Vec<_> = swarm
        .daemons
        .iter()
        .map(|d| {
            let (host, mirror, reference, image) = (registry.host(), d.mirror_host(), reference.clone(), &image);
            async move { Skopeo::pull_verified(&host, &mirror, &reference, image).await }
        })
        .collect();
    let took = futures::future::try_join_all(pulls).await?;
    let layer_bytes: u64 = image.layers.iter().map(|l| registry.blob_bytes_served_since(&l.digest, mark)).sum();
    let config_bytes = registry.blob_bytes_served_since(&image.config.digest, mark);
    let traffic = swarm.traffic_table().await;
    report(
        "cli",
        &format!(
            "rollout of 4 pulls in {:?}: origin sent {layer_bytes} B of layers ({} B image), {config_bytes} B of config \
             ({} B each)\n{traffic}",
            took,
            image.layers_size(),
            image.config.size
        ),
    );
    ensure!(layer_bytes == 0, "the origin sent {layer_bytes} B of layers during the rollout\n{traffic}");
    // Configs (single-piece blobs) go through the swarm too: the preheated node serves them.
    ensure!(config_bytes == 0, "the origin sent {config_bytes} B of the config during the rollout\n{traffic}");
    let clients = registry.client_blob_gets();
    ensure!(clients.is_empty(), "clients bypassed their daemons: {clients:#?}");

    // --no-wait returns once the job is accepted; named sites and platforms are taken.
    let out =
        shoal_preheat(&scheduler, &[&reference, "--site", "west", "--platform", "linux/amd64", "--no-wait"]).await?;
    ensure!(out.starts_with("preheat job ") && out.contains("on 1 site(s)") && !out.contains("done"), "{out}");
    let refused = shoal_preheat(&scheduler, &[&reference, "--platform", "linux"]).await;
    ensure!(format!("{:#}", refused.err().context("a bad platform was accepted")?).contains("os/architecture"));
    Ok(())
}

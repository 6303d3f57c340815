//! g. A member holding the cluster token that poisons the swarm (test-only fault
//! `SHOAL_FAULT_POISON=1`: it reports forged "from origin" piece digests and serves pieces that
//! match them) never makes a pull fail or serves a wrong byte: the children's whole-blob sha256
//! catches it, they drop what came from peers, the scheduler drops the forged table and sends
//! one child back to the origin, and the others get the pieces again from that child.

use super::*;

/// d0 (poisoning) pulls first, from the origin, so its forged digests are the trusted ones;
/// d1..d3 then pull at once with skopeo. Every pull must be correct, and the origin must serve
/// at most 2x each layer over the whole test (d0's copy plus one honest copy).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_poisoning_member_never_fails_a_pull() -> Result<()> {
    require_tools();
    let _shared = SERIAL.read().await;
    let origin = Origin::start(700, &[24 * MB, 16 * MB], "e2e/poison").await?;
    let scheduler = Scheduler::start().await?;
    let config = Swarm::config(&origin.registry, &[scheduler.url()]);
    let swarm = Swarm::start(4, config, |i, c| if i == 0 { c.env("SHOAL_FAULT_POISON", "1") } else { c }).await?;
    let _logs = KeepLogs::new("swarm-poison", &swarm, Some(&scheduler));

    expect_pulls(vec![skopeo_pull(&origin, &swarm.daemons[0], "d0")], PULL_LIMIT, &swarm).await?;
    let pulls = (1..4).map(|i| skopeo_pull(&origin, &swarm.daemons[i], &format!("d{i}"))).collect();
    let took = expect_pulls(pulls, PULL_LIMIT, &swarm).await?;
    origin.expect_no_client_bypass()?;
    let traffic = swarm.traffic_table().await;
    report("poison", &format!("d1..d3 pulled (every blob checked) in {}\n{traffic}", secs(&took)));

    // The poison was exercised and caught by the whole-blob check, not by a piece check.
    let d0 = &swarm.daemons[0];
    let uploaded = d0.counter("shoal_uploaded_bytes_total", "").await?;
    ensure!(uploaded > 0.0, "d0 never served a piece: the fault was not exercised\n{traffic}");
    let caught = swarm.counters("shoal_blob_mismatches_total", "").await;
    ensure!(caught[1..].iter().any(|&c| c > 0.0), "no child caught a forged blob: {caught:?}\n{traffic}");
    // Per layer: d0's copy plus one honest copy at most (the config, a single piece, goes
    // through the swarm too, but its bytes are not counted here).
    let image = origin.image_bytes() as f64;
    let served = origin.served_bytes().await as f64;
    report("poison", &format!("blob mismatches {caught:?}; origin served {:.3}x the image", served / image));
    for layer in &origin.image.layers {
        let sent = origin.registry.blob_bytes_served(&layer.digest) as f64;
        report(
            "poison",
            &format!("layer {} ({} B): origin served {:.2}x", layer.digest, layer.size, sent / layer.size as f64),
        );
        ensure!(sent <= 2.0 * layer.size as f64, "the origin served {sent} B of a {} B layer\n{traffic}", layer.size);
    }
    Ok(())
}

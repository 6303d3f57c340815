//! h. No scheduler, still a swarm: daemons that know each other only through the DHT
//! (`--bootstrap`) share pieces, agree without a central party on who fetches a blob from the
//! origin, cross-check the digest tables they get from each other, and never fail a pull for a
//! lying member. With a scheduler and the DHT both on, killing the scheduler mid-pull costs no
//! extra origin bytes.

use super::*;

/// `n` daemons with the DHT on: d0 is the first member, the others bootstrap from it.
async fn dht_swarm(
    origin: &Origin,
    schedulers: &[String],
    n: usize,
    configure: impl Fn(usize, DaemonConfig) -> DaemonConfig,
) -> Result<Swarm> {
    let base = Swarm::config(&origin.registry, schedulers);
    let (first, first_dht) = base.clone().dht(&[]);
    let mut swarm = Swarm::start(1, first, &configure).await?;
    for i in 1..n {
        let (c, _) = base.clone().dht(std::slice::from_ref(&first_dht));
        swarm.add(configure(i, c)).await?;
    }
    // Members find each other within a few bootstrap rounds; give them a moment.
    tokio::time::sleep(Duration::from_secs(3)).await;
    Ok(swarm)
}

/// Origin bytes for the image so far, as a multiple of its size.
async fn origin_ratio(origin: &Origin) -> f64 {
    origin.served_bytes().await as f64 / origin.image_bytes() as f64
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn six_daemons_without_a_scheduler_share_through_the_dht() -> Result<()> {
    require_tools();
    let _alone = SERIAL.write().await;
    let at_once = Origin::start(810, &[24 * MB, 16 * MB, 8 * MB], "e2e/dht-at-once").await?;
    let swarm = dht_swarm(&at_once, &[], 6, |_, c| c).await?;
    let _logs = KeepLogs::new("swarm-dht", &swarm, None);

    let pulls = (0..6).map(|i| skopeo_pull(&at_once, &swarm.daemons[i], &format!("d{i}"))).collect();
    let took = expect_pulls(pulls, PULL_LIMIT, &swarm).await?;
    at_once.expect_no_client_bypass()?;
    let ratio = origin_ratio(&at_once).await;
    let traffic = swarm.traffic_table().await;
    report(
        "dht",
        &format!("6 daemons at once, no scheduler: {}; origin sent {ratio:.2}x the image\n{traffic}", secs(&took)),
    );
    let peer = swarm.sum("shoal_fetched_bytes_total", r#"source="peer""#).await;
    ensure!(peer > 0.0, "nothing moved between peers\n{traffic}");
    ensure!(ratio <= 1.5, "at once: the origin sent {ratio:.2}x the image (> 1.5x)\n{traffic}");

    // The same daemons, one after another, on another image of the same registry.
    let mut one_by_one = at_once;
    let second = Image::build(811, &[24 * MB, 16 * MB, 8 * MB])?;
    second.push(&one_by_one.registry, "e2e/dht-in-turn", "v1").await?;
    one_by_one.reference = format!("{}/e2e/dht-in-turn:v1", one_by_one.registry.host());
    one_by_one.name = "e2e/dht-in-turn".into();
    one_by_one.image = Arc::new(second);
    let mut took = Vec::new();
    for (i, d) in swarm.daemons.iter().enumerate() {
        let mut t = expect_pulls(vec![skopeo_pull(&one_by_one, d, &format!("d{i}"))], PULL_LIMIT, &swarm).await?;
        took.append(&mut t);
    }
    one_by_one.expect_no_client_bypass()?;
    let ratio = origin_ratio(&one_by_one).await;
    report("dht", &format!("6 daemons one after another: {}; origin sent {ratio:.2}x the image", secs(&took)));
    ensure!(ratio <= 1.05, "in turn: the origin sent {ratio:.2}x the image (> 1.05x)\n{}", swarm.traffic_table().await);
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_node_without_the_token_gets_nothing_through_the_dht() -> Result<()> {
    require_tools();
    let _shared = SERIAL.read().await;
    let origin = Origin::start(812, &[16 * MB], "e2e/dht-token").await?;
    let swarm =
        dht_swarm(&origin, &[], 3, |i, c| if i == 2 { c.cluster_token("not-the-cluster-token-at-all") } else { c })
            .await?;
    let _logs = KeepLogs::new("swarm-dht-token", &swarm, None);
    expect_pulls(vec![skopeo_pull(&origin, &swarm.daemons[0], "d0")], PULL_LIMIT, &swarm).await?;
    expect_pulls(vec![skopeo_pull(&origin, &swarm.daemons[2], "d2")], PULL_LIMIT, &swarm).await?;
    let outsider = swarm.daemons[2].counter("shoal_fetched_bytes_total", r#"source="peer""#).await?;
    let served = swarm.daemons[0].counter("shoal_uploaded_bytes_total", "").await?;
    ensure!(outsider == 0.0 && served == 0.0, "the outsider got {outsider} B from peers, d0 uploaded {served} B");
    // A member still gets it from d0.
    expect_pulls(vec![skopeo_pull(&origin, &swarm.daemons[1], "d1")], PULL_LIMIT, &swarm).await?;
    let member = swarm.daemons[1].counter("shoal_fetched_bytes_total", r#"source="peer""#).await?;
    report("dht-token", &format!("outsider: 0 B from peers; member: {member} B from peers"));
    ensure!(member > 0.0, "the member got nothing from peers\n{}", swarm.traffic_table().await);
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_lying_member_never_fails_a_pull_without_a_scheduler() -> Result<()> {
    require_tools();
    let _shared = SERIAL.read().await;
    let origin = Origin::start(813, &[16 * MB, 8 * MB], "e2e/dht-liar").await?;
    let swarm = dht_swarm(&origin, &[], 4, |i, c| if i == 0 { c.env("SHOAL_FAULT_POISON", "1") } else { c }).await?;
    let _logs = KeepLogs::new("swarm-dht-liar", &swarm, None);
    // d0 lies: it serves forged pieces that match the forged table it hands out.
    expect_pulls(vec![skopeo_pull(&origin, &swarm.daemons[0], "d0")], PULL_LIMIT, &swarm).await?;
    let mut took = Vec::new();
    for i in 1..4 {
        took.append(
            &mut expect_pulls(vec![skopeo_pull(&origin, &swarm.daemons[i], &format!("d{i}"))], PULL_LIMIT, &swarm)
                .await?,
        );
    }
    origin.expect_no_client_bypass()?;
    let caught = swarm.counters("shoal_blob_mismatches_total", "").await;
    let ratio = origin_ratio(&origin).await;
    let traffic = swarm.traffic_table().await;
    report(
        "dht-liar",
        &format!("pulls {}; blob mismatches {caught:?}; origin sent {ratio:.2}x\n{traffic}", secs(&took)),
    );
    ensure!(caught[1] > 0.0, "d1 trusted d0 alone and must have caught the forged blob: {caught:?}\n{traffic}");
    // d1's honest table outvotes... nobody yet (a tie); from d3 on, two honest tables outvote d0.
    ensure!(caught[3] == 0.0, "d3 had two honest tables against the liar's: {caught:?}\n{traffic}");
    ensure!(ratio <= 3.05, "the origin sent {ratio:.2}x\n{traffic}");
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_scheduler_killed_mid_pull_costs_no_origin_bytes_with_the_dht_on() -> Result<()> {
    require_tools();
    let _shared = SERIAL.read().await;
    let origin = Origin::start(814, &[32 * MB], "e2e/dht-sched").await?;
    let mut scheduler = Scheduler::start().await?;
    let swarm =
        dht_swarm(&origin, &[scheduler.url()], 4, |i, c| if i > 0 { c.download_limit("8MiB/s") } else { c }).await?;
    let _logs = KeepLogs::new("swarm-dht-sched", &swarm, Some(&scheduler));
    expect_pulls(vec![skopeo_pull(&origin, &swarm.daemons[0], "d0")], PULL_LIMIT, &swarm).await?;
    let before = origin.served_bytes().await;
    let pulls = (1..4).map(|i| skopeo_pull(&origin, &swarm.daemons[i], &format!("d{i}"))).collect();
    tokio::time::sleep(Duration::from_millis(1500)).await;
    scheduler.kill9();
    let took = expect_pulls(pulls, PULL_LIMIT, &swarm).await?;
    origin.expect_no_client_bypass()?;
    // Configs (single-piece blobs) go through the swarm too; the bound leaves each daemon room
    // for one config copy (a config pulled while steering passes from scheduler to DHT).
    let extra = origin.served_bytes().await - before;
    let config = origin.image_bytes() - origin.image.layers_size();
    let traffic = swarm.traffic_table().await;
    report(
        "dht-sched",
        &format!("scheduler killed 1.5 s in; pulls {}; origin sent {extra} B after d0\n{traffic}", secs(&took)),
    );
    ensure!(extra <= 3 * config, "the origin sent {extra} B of layers after the scheduler died\n{traffic}");
    Ok(())
}

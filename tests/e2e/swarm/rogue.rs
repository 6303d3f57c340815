//! Rogue peers: QUIC clients that do the peer TLS handshake but never prove the cluster token
//! and push as much as they can. They get a few KiB of credit each and are refused past the cap
//! on unproven handshakes; the daemon's memory stays flat, members still fetch pieces from it and
//! its mirror still answers.

use shoal_e2e::rogue;

use super::*;

/// Rogue connections at once (the issue's measurement: 29 → 705 MiB with 64 MiB of credit each).
const ROGUES: usize = 40;
/// How long they push (past the daemon's 10 s proof timeout).
const HOLD: Duration = Duration::from_secs(12);
/// What the daemon may grow by while they do.
const RSS_BUDGET: u64 = 64 << 20;
/// Flow-control credit a rogue connection may get in all (the daemon allows 16 KiB).
const CREDIT_BUDGET: u64 = 64 << 10;
/// The daemon's cap on handshakes not yet proven.
const MAX_UNPROVEN: usize = 64;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn peers_that_never_prove_the_token_get_no_memory_and_members_still_get_pieces() -> Result<()> {
    require_tools();
    let _alone = SERIAL.write().await;
    let origin = Origin::start(700, &[16 * MB], "e2e/rogue").await?;
    let scheduler = Scheduler::start().await?;
    let swarm = Swarm::start(2, Swarm::config(&origin.registry, &[scheduler.url()]), |_, c| c).await?;
    let _logs = KeepLogs::new("swarm-rogue", &swarm, Some(&scheduler));
    let (d0, d1) = (&swarm.daemons[0], &swarm.daemons[1]);
    let blob = &origin.image.layers[0];
    expect_pulls(vec![blob_get(&origin, d0, blob, "d0")], PULL_LIMIT, &swarm).await?;
    tokio::time::sleep(Duration::from_secs(1)).await;
    let before = d0.rss_bytes()?;

    let addr = d0.peer_addr().parse()?;
    let flood = tokio::spawn(rogue::flood(addr, ROGUES, HOLD));
    let started = Instant::now();
    let mut peak = before;
    let mut member = None;
    let mut mirror = None;
    while !flood.is_finished() {
        peak = peak.max(d0.rss_bytes()?);
        if member.is_none() && started.elapsed() > Duration::from_secs(2) {
            // A member fetches the blob from d0 while the rogues push.
            member = Some(expect_pulls(vec![blob_get(&origin, d1, blob, "d1")], PULL_LIMIT, &swarm).await?);
            let t = Instant::now();
            let status = reqwest::get(format!("{}/v2/", d0.mirror_url())).await?.status();
            mirror = Some((status, t.elapsed()));
        }
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    let flooded = flood.await??;
    tokio::time::sleep(Duration::from_secs(2)).await;
    let after = d0.rss_bytes()?;
    let peer_bytes = d1.counter("shoal_fetched_bytes_total", r#"source="peer""#).await?;
    report(
        "rogue",
        &format!(
            "{ROGUES} rogue connections for {HOLD:?}: {flooded:?}; d0 RSS {} MiB before, peak {} MiB, {} MiB after; \
             d1 pulled in {} with {peer_bytes} B from peers; d0 mirror GET /v2/ {mirror:?}",
            before >> 20,
            peak >> 20,
            after >> 20,
            secs(&member.clone().unwrap_or_default())
        ),
    );
    ensure!(flooded.connected == ROGUES, "only {} rogue connections got through TLS", flooded.connected);
    ensure!(
        flooded.bytes <= ROGUES as u64 * CREDIT_BUDGET,
        "rogues pushed {} B in all, more than {} KiB each",
        flooded.bytes,
        CREDIT_BUDGET >> 10
    );
    ensure!(peak - before < RSS_BUDGET, "d0 grew by {} MiB under the rogues", (peak - before) >> 20);
    ensure!(member.is_some(), "the member pull did not run during the flood");
    ensure!(peer_bytes > 0.0, "d1 got no piece from d0 during the flood\n{}", swarm.traffic_table().await);
    ensure!(mirror.is_some_and(|(s, t)| s == StatusCode::OK && t < Duration::from_secs(1)), "mirror: {mirror:?}");

    // More handshakes than the cap at once: the rest are refused before their handshake.
    let burst = rogue::flood(addr, 100, Duration::from_secs(2)).await?;
    report("rogue", &format!("100 rogue connections at once: {burst:?}"));
    ensure!(
        burst.refused >= 100 - MAX_UNPROVEN,
        "only {} of 100 refused over the cap of {MAX_UNPROVEN}",
        burst.refused
    );
    ensure!(d0.healthz().await?.starts_with("ok"), "d0 is not healthy after the rogues");
    Ok(())
}

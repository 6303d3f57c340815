//! What `kill -9` of a parent mid-transfer costs a child (issue 8 §5): the child's pull time
//! with the parent killed at about a third of the transfer, minus its undisturbed time, with a
//! second complete holder at hand. The goal: at most 3 s.

use super::*;

/// The blob: one 64 MiB layer.
const LAYER: u64 = 64 * MB;
/// The child's download limit: the transfer takes about 5 s, long enough to kill a parent in it.
const CHILD_LIMIT: &str = "12MiB/s";
/// Where in the child's transfer the parent is killed (fraction of the pieces held).
const KILL_AT: f64 = 0.35;
/// The bound on the delay a dead parent adds to a child.
const MAX_COST: Duration = Duration::from_secs(3);
/// The parent: a complete holder that fetched the blob from H, killed in the disturbed run. (H,
/// which fetched it from the origin, seeds it: it may answer a child "busy", so the child takes
/// most pieces from P.)
const P: usize = 0;
/// The second complete holder: the first to fetch the blob, from the origin.
const H: usize = 1;
/// The child, download-limited.
const C: usize = 2;

/// One child pull and what the origin sent meanwhile.
struct ChildPull {
    took: Duration,
    /// The origin's bytes for the blob while the child pulled.
    origin_bytes: u64,
}

/// The fraction of `digest`'s pieces `daemon` holds, while it downloads it.
async fn progress(daemon: &Daemon, digest: &str) -> Option<f64> {
    let status = daemon.status().await.ok()?;
    let task = status.as_array()?.iter().find(|t| t["digest"] == digest)?;
    Some(task["have"].as_f64()? / task["pieces"].as_f64()?.max(1.0))
}

/// A fresh scheduler and P, H, C with fresh data dirs: H fetches the layer from the origin, P
/// from H, then C (download-limited) pulls it; with `kill_at`, P gets SIGKILL once C holds that
/// fraction of the pieces.
async fn child_pull(origin: &Origin, kill_at: Option<f64>, label: &str) -> Result<ChildPull> {
    let scheduler = Scheduler::start().await?;
    let config = Swarm::config(&origin.registry, &[scheduler.url()]);
    let mut swarm = Swarm::start(3, config, |i, c| if i == C { c.download_limit(CHILD_LIMIT) } else { c }).await?;
    let _logs = KeepLogs::new(&format!("swarm-parent-kill-{label}"), &swarm, Some(&scheduler));
    let layer = origin.image.largest_layer().clone();
    for (holder, who) in [(H, "H"), (P, "P")] {
        expect_pulls(vec![blob_get(origin, &swarm.daemons[holder], &layer, who)], PULL_LIMIT, &swarm).await?;
    }
    let mark = origin.registry.mark();
    let uploaded_before = swarm.daemons[P].counter("shoal_uploaded_bytes_total", "").await?;
    let pull = blob_get(origin, &swarm.daemons[C], &layer, "C");
    if let Some(fraction) = kill_at {
        let child = &swarm.daemons[C];
        wait_for(&format!("C to hold {fraction} of the blob"), PULL_LIMIT, &swarm, || async {
            progress(child, &layer.digest).await.is_some_and(|p| p >= fraction)
        })
        .await?;
        let uploaded = swarm.daemons[P].counter("shoal_uploaded_bytes_total", "").await? - uploaded_before;
        ensure!(uploaded > 0.0, "P sent C nothing before its kill: the test would measure nothing");
        swarm.daemons[P].kill9();
    }
    let took = expect_pulls(vec![pull], PULL_LIMIT, &swarm).await?[0];
    let origin_bytes = origin.registry.blob_bytes_served_since(&layer.digest, mark);
    report("parent-kill", &format!("{label}: C pulled in {:.2}s\n{}", took.as_secs_f64(), swarm.traffic_table().await));
    Ok(ChildPull { took, origin_bytes })
}

/// H, P and C as above: C's pull undisturbed, then again (everything fresh) with P killed
/// (SIGKILL) at 35% of C's transfer. Prints both times, the cost and the origin's bytes.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_parent_killed_mid_transfer_costs_the_child_at_most_3_s() -> Result<()> {
    require_tools();
    let _alone = SERIAL.write().await;
    let origin = Origin::start(900, &[LAYER], "e2e/parent-kill").await?;
    let calm = child_pull(&origin, None, "undisturbed").await?;
    let killed = child_pull(&origin, Some(KILL_AT), "parent-killed").await?;
    let cost = killed.took.saturating_sub(calm.took);
    let mb = |b: u64| b as f64 / MB as f64;
    report(
        "parent-kill",
        &format!(
            "undisturbed {:.2}s, parent killed at {:.0}%: {:.2}s, cost {:.2}s; origin sent {:.1} MiB \
             (undisturbed) and {:.1} MiB (parent killed) of the {:.1} MiB blob during C's pull",
            calm.took.as_secs_f64(),
            KILL_AT * 100.0,
            killed.took.as_secs_f64(),
            cost.as_secs_f64(),
            mb(calm.origin_bytes),
            mb(killed.origin_bytes),
            mb(origin.image.largest_layer().size)
        ),
    );
    ensure!(cost <= MAX_COST, "a dead parent cost the child {cost:?} (> {MAX_COST:?})");
    Ok(())
}

//! b. Pins against the cache quota, time to live, and `shoal cache ls|rm|pin`.

use std::time::Duration;

use anyhow::{ensure, Result};
use shoal_e2e::{wait_until, Daemon, DaemonConfig, Image, Registry};

use super::{
    admin_addr, cache_ls, complete_blobs, image_digest, import, layout_tar, require_tools, shoal, workdir, MB,
};

/// `shoal cache ARGS --admin ADDR`.
async fn cache(daemon: &Daemon, args: &[&str]) -> Result<super::Out> {
    let admin = admin_addr(daemon);
    let mut all = vec!["cache"];
    all.extend_from_slice(args);
    all.extend_from_slice(&["--admin", &admin]);
    shoal(&all, None).await
}

fn holds(listing: &serde_json::Value, image: &Image) -> (bool, bool) {
    let blobs = complete_blobs(listing);
    let all = image.blobs().iter().all(|b| blobs.contains(&b.digest));
    let none = image.blobs().iter().all(|b| !blobs.contains(&b.digest));
    (all, none)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn pins_hold_against_the_quota_ttl_expires_and_cache_commands_manage_it() -> Result<()> {
    require_tools();
    let mut registry = Registry::start().await?;
    let origin = registry.host();
    let (kept, plain, short) = (Image::build(51, &[2 * MB])?, Image::build(52, &[32 * MB])?, Image::build(53, &[MB])?);
    let work = workdir()?;
    let mut daemon = Daemon::start(DaemonConfig::for_registry(&registry).cache_size("128MiB")).await?;
    let (kept_ref, plain_ref, short_ref) =
        (format!("{origin}/keep/pinned:v1"), format!("{origin}/drop/plain:v1"), format!("{origin}/drop/short:v1"));
    import(&daemon, &layout_tar(&work, "kept", &kept, None)?, &["--tag", &kept_ref, "--pin"]).await?;
    import(&daemon, &layout_tar(&work, "plain", &plain, None)?, &["--tag", &plain_ref]).await?;

    // The origin stops (with it up, it decides, and it has never heard of these images).
    registry.stop();
    // Offline, an imported tag resolves for anyone (marked stale); a --restricted import does not.
    let restricted = format!("{origin}/keep/restricted:v1");
    import(&daemon, &layout_tar(&work, "restricted", &kept, None)?, &["--tag", &restricted, "--restricted"]).await?;
    let accept = "application/vnd.oci.image.manifest.v1+json";
    let client = reqwest::Client::new();
    let open = client
        .get(format!("{}/v2/keep/pinned/manifests/v1", daemon.mirror_url()))
        .header("accept", accept)
        .send()
        .await?;
    ensure!(open.status() == 200 && open.headers().contains_key("warning"), "imported tag offline: {}", open.status());
    ensure!(open.bytes().await? == kept.manifest, "the imported tag served another manifest");
    let shut = client
        .get(format!("{}/v2/keep/restricted/manifests/v1", daemon.mirror_url()))
        .header("accept", accept)
        .send()
        .await?;
    ensure!(shut.status() == 502, "a --restricted import offline to an anonymous client: {}", shut.status());
    let blob = format!("{}/v2/keep/restricted/blobs/{}", daemon.mirror_url(), kept.layers[0].digest);
    let shut = client.get(blob).send().await?;
    ensure!(shut.status() == 502, "a --restricted import's blob offline to an anonymous client: {}", shut.status());
    let out = cache(&daemon, &["rm", &restricted]).await?;
    ensure!(out.ok, "{}", out.stderr);

    // A pinned blob is not removed; nor is a blob being served.
    let out = cache(&daemon, &["rm", &kept.layers[0].digest]).await?;
    ensure!(!out.ok && out.stderr.contains("pinned by image"), "rm of a pinned blob: {}", out.stderr);
    let layer = &plain.layers[0].digest;
    let held = reqwest::get(format!("{}/v2/drop/plain/blobs/{layer}", daemon.mirror_url())).await?;
    ensure!(held.status() == 200, "GET {layer}: {}", held.status());
    let listing = cache_ls(&daemon).await?;
    let row = listing["blobs"].as_array().and_then(|b| b.iter().find(|b| b["digest"] == *layer).cloned());
    ensure!(row.as_ref().is_some_and(|r| r["in_use"] == true), "cache ls does not show {layer} in use: {row:?}");
    let out = cache(&daemon, &["rm", layer]).await?;
    ensure!(!out.ok && out.stderr.contains("being served"), "rm of a blob being served: {}", out.stderr);
    drop(held);

    // A quota smaller than both images: gc evicts the plain one, never the pinned one.
    daemon.config_mut().cache_size = Some("8MiB".into());
    daemon.restart().await?;
    let trimmed = wait_until(Duration::from_secs(20), Duration::from_millis(500), || async {
        let l = cache_ls(&daemon).await.unwrap_or_default();
        holds(&l, &kept).0 && holds(&l, &plain).1
    })
    .await;
    ensure!(trimmed, "after gc under 8 MiB: {:#}", cache_ls(&daemon).await?);

    // A time to live of 2 s: the image and its blobs go within a gc round or two.
    daemon.config_mut().cache_size = Some("128MiB".into());
    daemon.restart().await?;
    import(&daemon, &layout_tar(&work, "short", &short, None)?, &["--tag", &short_ref, "--ttl", "2s"]).await?;
    let listing = cache_ls(&daemon).await?;
    ensure!(image_digest(&listing, &short_ref).is_some() && holds(&listing, &short).0, "{listing:#}");
    let expired = wait_until(Duration::from_secs(20), Duration::from_millis(500), || async {
        let l = cache_ls(&daemon).await.unwrap_or_default();
        image_digest(&l, &short_ref).is_none() && holds(&l, &short).1
    })
    .await;
    ensure!(expired, "the ttl image is still there: {:#}", cache_ls(&daemon).await?);

    // Unpin the image, pin its layer by itself, remove the image: the layer stays, the config goes.
    let out = cache(&daemon, &["pin", "--unpin", &kept_ref]).await?;
    ensure!(out.ok && out.stdout.contains("unpinned image"), "{}{}", out.stdout, out.stderr);
    let out = cache(&daemon, &["pin", &kept.layers[0].digest]).await?;
    ensure!(out.ok, "{}", out.stderr);
    let out = cache(&daemon, &["rm", &kept_ref]).await?;
    ensure!(out.ok && out.stdout.contains("removed image"), "{}{}", out.stdout, out.stderr);
    let blobs = complete_blobs(&cache_ls(&daemon).await?);
    ensure!(blobs.contains(&kept.layers[0].digest) && !blobs.contains(&kept.config.digest), "{blobs:?}");
    let out = cache(&daemon, &["rm", &format!("sha256:{}", "0".repeat(64))]).await?;
    ensure!(!out.ok && out.stderr.contains("no blob"), "{}", out.stderr);
    let out = cache(&daemon, &["ls"]).await?;
    ensure!(out.ok && out.stdout.contains(&kept.layers[0].digest) && out.stdout.contains("yes"), "{}", out.stdout);
    println!("{}", out.stdout);
    Ok(())
}

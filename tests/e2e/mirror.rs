//! End-to-end tests of `shoal daemon` as a pull-through registry mirror: a real registry as the
//! origin, real clients (skopeo, podman, containerd) and the daemon as a real process.

use std::time::{Duration, Instant};

use anyhow::{ensure, Context, Result};
use reqwest::{Method, StatusCode};
use shoal_e2e::{
    expect_oci_error, manifest_request, metric_value, missing_tool, oci_error_codes, raw_request, sha256_body,
    sha256_hex, wait_until, Containerd, Daemon, DaemonConfig, Image, Podman, Registry, Skopeo, SlowProxy,
};

const MB: u64 = 1 << 20;

fn require_tools() {
    if let Some(tool) = missing_tool() {
        panic!("`{tool}` is not installed; ./scripts/test.sh installs the e2e dependencies");
    }
}

/// Adds the daemon's log to a failure.
fn with_log<T>(result: Result<T>, what: &str, daemon: &Daemon) -> Result<T> {
    result.with_context(|| format!("{what}\n--- shoal daemon stderr (tail):\n{}", daemon.stderr_tail()))
}

fn http() -> reqwest::Client {
    reqwest::Client::builder().timeout(Duration::from_secs(240)).build().expect("reqwest client")
}

/// GETs a blob through the mirror and returns `(sha256, length)` of the body, requiring 200.
async fn get_blob(client: &reqwest::Client, url: &str) -> Result<(String, u64)> {
    let response = client.get(url).send().await?;
    ensure!(response.status() == StatusCode::OK, "GET {url}: {}", response.status());
    sha256_body(response).await
}

#[path = "mirror/auth.rs"]
mod auth;
#[path = "mirror/ca.rs"]
mod ca;
#[path = "mirror/crash.rs"]
mod crash;
#[path = "mirror/disk.rs"]
mod disk;
#[path = "mirror/freshness.rs"]
mod freshness;
#[path = "mirror/hostile.rs"]
mod hostile;
#[path = "mirror/lists.rs"]
mod lists;
#[path = "mirror/malformed.rs"]
mod malformed;
#[path = "mirror/private.rs"]
mod private;

/// a. skopeo, podman and containerd (hosts.toml, `?ns=`) pull one image through one daemon at
/// the same time; every layer checks out and the origin sent each blob once.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn three_clients_pull_through_one_daemon_and_the_origin_serves_each_blob_once() -> Result<()> {
    require_tools();
    let registry = Registry::start().await?;
    let image = Image::build(10, &[30 * MB, 15 * MB, 8 * MB])?;
    image.push(&registry, "e2e/app", "v1").await?;
    let daemon = Daemon::start(DaemonConfig::for_registry(&registry)).await?;
    let (origin, mirror) = (registry.host(), daemon.mirror_host());
    let reference = format!("{origin}/e2e/app:v1");

    let mut skopeo = Skopeo::new(&origin, Some(&mirror))?;
    let podman = Podman::new(&origin, Some(&mirror))?;
    let containerd = Containerd::start().await?;
    let hosts = containerd.hosts_dir(&origin, Some(&mirror))?;
    let (skopeo_out, podman_pull, containerd_pull) = tokio::join!(
        skopeo.pull(&reference, None),
        podman.pull(&reference, None),
        containerd.pull(&reference, &hosts, None),
    );
    let out = with_log(skopeo_out, "skopeo pull through the mirror", &daemon)?;
    Skopeo::verify_dir(&out, &image)?;
    with_log(podman_pull, "podman pull through the mirror", &daemon)?;
    podman.verify(&reference, &image).await?;
    with_log(containerd_pull, "ctr pull through the mirror", &daemon)?;
    containerd.verify(&reference, &image).await?;

    let bypassed = registry.client_blob_gets();
    ensure!(bypassed.is_empty(), "clients fell back to the origin: {bypassed:#?}");
    for blob in image.blobs() {
        registry.expect_served_once(&blob).await?;
    }
    // The daemon's own accounting agrees: blob bytes fetched from the origin, once each.
    let want: u64 = image.blobs().iter().map(|b| b.size).sum();
    let fetched = daemon.wait_for_metric("shoal_fetched_bytes_total", r#"source="origin""#, want as f64).await?;
    ensure!(fetched == Some(want as f64), "shoal_fetched_bytes_total{{source=origin}} = {fetched:?}, want {want}");
    Ok(())
}

/// b. 32 concurrent cold GETs of one big blob: all get the right bytes, the origin sends it once.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn concurrent_cold_gets_of_one_blob_fetch_it_from_the_origin_once() -> Result<()> {
    require_tools();
    let registry = Registry::start().await?;
    let image = Image::build(20, &[64 * MB])?;
    image.push(&registry, "e2e/big", "v1").await?;
    let daemon = Daemon::start(DaemonConfig::for_registry(&registry)).await?;
    let blob = image.layers[0].clone();
    let url = format!("{}/v2/e2e/big/blobs/{}", daemon.mirror_url(), blob.digest);
    let client = http();
    let mut tasks = tokio::task::JoinSet::new();
    for _ in 0..32 {
        let (client, url) = (client.clone(), url.clone());
        tasks.spawn(async move { get_blob(&client, &url).await });
    }
    let mut done = 0;
    while let Some(result) = tasks.join_next().await {
        let (digest, len) = with_log(result?, "concurrent GET", &daemon)?;
        ensure!(digest == blob.digest && len == blob.size, "got {digest} ({len} B), want {blob:?}");
        done += 1;
    }
    assert_eq!(done, 32);
    registry.expect_served_once(&blob).await?;
    // The daemon's own accounting agrees (/metrics on the admin listener).
    let fetched = daemon.wait_for_metric("shoal_fetched_bytes_total", r#"source="origin""#, blob.size as f64).await?;
    ensure!(
        fetched == Some(blob.size as f64),
        "shoal_fetched_bytes_total{{source=origin}} = {fetched:?}, want {}",
        blob.size
    );
    let want_served = 32.0 * blob.size as f64;
    let served = daemon.wait_for_metric("shoal_served_bytes_total", r#"kind="blob""#, want_served).await?;
    ensure!(served == Some(want_served), "shoal_served_bytes_total{{kind=blob}} = {served:?}, want {want_served}");
    Ok(())
}

//! End-to-end tests of the swarm: a real distribution registry as the origin, a `shoal scheduler`
//! and several `shoal daemon`s on loopback (own ports, data dirs, QUIC peer listeners), real
//! clients (skopeo, containerd) pulling through their own daemon at the same time.
//!
//! The tests that measure run alone, the others two at a time (see [`SERIAL`]).
//! Every pull is checked bit for bit, and no client may have bypassed its mirror (a
//! containers/image or containerd client falls back to the origin by itself when a mirror fails,
//! which would hide a failure of Shoal).

use std::sync::Arc;
use std::time::{Duration, Instant};

use anyhow::{bail, ensure, Result};
use reqwest::StatusCode;
use shoal_e2e::{
    missing_tool, sha256_body, wait_until, Blob, Containerd, Daemon, DaemonConfig, Image, KeepLogs, Registry,
    Scheduler, Skopeo, Swarm,
};
use tokio::task::JoinHandle;

const MB: u64 = 1 << 20;

/// How long pulls through the swarm may take in all: generous, so that a slow pull (a stalled
/// swarm download waits 10 s before asking the scheduler again) is told apart from a hung one.
const PULL_LIMIT: Duration = Duration::from_secs(180);

/// The tests that measure (rates, the 6-daemon pull) run alone: they take this lock exclusively.
/// The others share it, two at a time (cargo's default on 2 cores): much of their time is spent
/// waiting for stalled downloads to time out, not on the CPU. A tokio lock: no poisoning, and it
/// may be held across awaits.
static SERIAL: tokio::sync::RwLock<()> = tokio::sync::RwLock::const_new(());

fn require_tools() {
    if let Some(tool) = missing_tool() {
        panic!("`{tool}` is not installed; ./scripts/test.sh installs the e2e dependencies");
    }
}

/// The origin registry with one synthetic image pushed as `NAME:v1`.
struct Origin {
    registry: Registry,
    image: Arc<Image>,
    /// `127.0.0.1:PORT/NAME:v1`.
    reference: String,
    name: String,
}

impl Origin {
    async fn start(seed: u64, layer_sizes: &[u64], name: &str) -> Result<Self> {
        let registry = Registry::start().await?;
        let image = Image::build(seed, layer_sizes)?;
        image.push(&registry, name, "v1").await?;
        let reference = format!("{}/{name}:v1", registry.host());
        Ok(Self { registry, image: Arc::new(image), reference, name: name.to_string() })
    }

    /// Sum of every blob of the image (config and layers).
    fn image_bytes(&self) -> u64 {
        self.image.blobs().iter().map(|b| b.size).sum()
    }

    /// Body bytes the origin sent for the image's blobs, once the access log stops growing
    /// (at most 3 s).
    async fn served_bytes(&self) -> u64 {
        self.registry.image_bytes_served_since(&self.image, 0).await
    }

    /// Fails if a client fetched a blob from the origin itself (its mirror failed it).
    fn expect_no_client_bypass(&self) -> Result<()> {
        let bypassed = self.registry.client_blob_gets();
        ensure!(bypassed.is_empty(), "clients fell back to the origin, bypassing their daemon: {bypassed:#?}");
        Ok(())
    }

    /// `http://MIRROR/v2/NAME/blobs/DIGEST` on a daemon.
    fn blob_url(&self, daemon: &Daemon, blob: &Blob) -> String {
        format!("{}/v2/{}/blobs/{}", daemon.mirror_url(), self.name, blob.digest)
    }
}

/// A client pull running in the background: `(who, task)`; the task pulls, checks every blob
/// and returns how long the pull took.
type Pull = (String, JoinHandle<Result<Duration>>);

/// skopeo copies the image through `daemon` into a dir and checks every file.
fn skopeo_pull(origin: &Origin, daemon: &Daemon, who: &str) -> Pull {
    let (host, mirror) = (origin.registry.host(), daemon.mirror_host());
    let (reference, image) = (origin.reference.clone(), origin.image.clone());
    let task = tokio::spawn(async move {
        let mut skopeo = Skopeo::new(&host, Some(&mirror))?;
        let started = Instant::now();
        let out = skopeo.pull(&reference, None).await?;
        let took = started.elapsed();
        Skopeo::verify_dir(&out, &image)?;
        Ok(took)
    });
    (format!("skopeo via {who}"), task)
}

/// A private containerd pulls (and unpacks) the image through `daemon` and checks its store.
fn containerd_pull(origin: &Origin, daemon: &Daemon, who: &str) -> Pull {
    let (host, mirror) = (origin.registry.host(), daemon.mirror_host());
    let (reference, image) = (origin.reference.clone(), origin.image.clone());
    let task = tokio::spawn(async move {
        let containerd = Containerd::start().await?;
        let hosts = containerd.hosts_dir(&host, Some(&mirror))?;
        let started = Instant::now();
        containerd.pull(&reference, &hosts, None).await?;
        let took = started.elapsed();
        containerd.verify(&reference, &image).await?;
        Ok(took)
    });
    (format!("containerd via {who}"), task)
}

/// A plain `GET` of one blob through a daemon's mirror; checks the body's digest and size.
fn blob_get(origin: &Origin, daemon: &Daemon, blob: &Blob, who: &str) -> Pull {
    let who = format!("GET {} via {who}", &blob.digest[..19]);
    let (url, blob) = (origin.blob_url(daemon, blob), blob.clone());
    let task = tokio::spawn(async move {
        let client = reqwest::Client::builder().timeout(Duration::from_secs(240)).build()?;
        let started = Instant::now();
        let response = client.get(&url).send().await?;
        ensure!(response.status() == StatusCode::OK, "GET {url}: {}", response.status());
        let (digest, len) = sha256_body(response).await?;
        ensure!(digest == blob.digest && len == blob.size, "GET {url}: got {digest} ({len} B), want {blob:?}");
        Ok(started.elapsed())
    });
    (who, task)
}

/// Waits for every pull (each within `limit`); fails with every error, the swarm's traffic and
/// the daemons' logs if any failed. Returns the durations in order.
async fn expect_pulls(pulls: Vec<Pull>, limit: Duration, swarm: &Swarm) -> Result<Vec<Duration>> {
    let deadline = tokio::time::Instant::now() + limit;
    let mut took = Vec::new();
    let mut errors = Vec::new();
    for (who, task) in pulls {
        match tokio::time::timeout_at(deadline, task).await {
            Ok(Ok(Ok(t))) => took.push(t),
            Ok(Ok(Err(e))) => errors.push(format!("{who}: {e:#}")),
            Ok(Err(e)) => errors.push(format!("{who}: task panicked: {e}")),
            Err(_) => errors.push(format!("{who}: not done within {limit:?}")),
        }
    }
    if !errors.is_empty() {
        bail!(
            "{} pull(s) failed:\n{}\n{}\n{}",
            errors.len(),
            errors.join("\n"),
            swarm.traffic_table().await,
            swarm.logs()
        );
    }
    Ok(took)
}

/// Polls until `check` holds (at most `limit`), failing with `what` and the swarm's state.
async fn wait_for<F, Fut>(what: &str, limit: Duration, swarm: &Swarm, check: F) -> Result<()>
where
    F: FnMut() -> Fut,
    Fut: std::future::Future<Output = bool>,
{
    if wait_until(limit, Duration::from_millis(50), check).await {
        return Ok(());
    }
    bail!("timed out after {limit:?} waiting for {what}\n{}\n{}", swarm.traffic_table().await, swarm.logs())
}

fn secs(durations: &[Duration]) -> String {
    let parts: Vec<String> = durations.iter().map(|d| format!("{:.1}s", d.as_secs_f64())).collect();
    parts.join(" ")
}

/// Where a test's diagnostics go: stderr, shown by `cargo test` on failure or with --nocapture.
fn report(test: &str, text: &str) {
    eprintln!("[{test}] {text}");
}

#[path = "swarm/timeline.rs"]
mod timeline;
use timeline::StatusTimeline;

#[path = "swarm/corrupt.rs"]
mod corrupt;
#[path = "swarm/dht.rs"]
mod dht;
#[path = "swarm/digests.rs"]
mod digests;
#[path = "swarm/everyone.rs"]
mod everyone;
#[path = "swarm/fallback.rs"]
mod fallback;
#[path = "swarm/faults.rs"]
mod faults;
#[path = "swarm/limits.rs"]
mod limits;
#[path = "swarm/parent_kill_cost.rs"]
mod parent_kill_cost;
#[path = "swarm/poison.rs"]
mod poison;
#[path = "swarm/ranges.rs"]
mod ranges;
#[path = "swarm/rogue.rs"]
mod rogue;
#[path = "swarm/sched_access.rs"]
mod sched_access;
#[path = "swarm/schedulers.rs"]
mod schedulers;

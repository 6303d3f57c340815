//! End-to-end tests of preheat: a real distribution registry as the origin, a `shoal scheduler`
//! with its preheat HTTP API on, and daemons in two sites (`east`: d0, d1; `west`: d2, d3).
//!
//! - `cli`: `shoal preheat` has one daemon per site fetch the image; a second preheat moves no
//!   byte; then every daemon pulls at once and the origin sends no layer byte.
//! - `api`: the HTTP API refuses a missing or wrong token, validates its input, joins a running
//!   job, and reports progress to done.
//! - `failover`: a daemon killed while it preheats loses the job to the other daemon of its site.
//! - `notify`: the real registry, configured with `notifications.endpoints` pointing at the
//!   scheduler, has a `skopeo copy` push preheated on one daemon per site without any pull.

use std::path::PathBuf;
use std::time::Duration;

use anyhow::{bail, ensure, Context, Result};
use shoal_e2e::{missing_tool, wait_until, Daemon, DaemonConfig, Image, KeepLogs, Scheduler, Swarm, CLUSTER_TOKEN};

const MB: u64 = 1 << 20;
/// The token of the scheduler's preheat HTTP API in these tests.
const PREHEAT_TOKEN: &str = "shoal-e2e-preheat-token-51d0";
/// How long a preheat or a pull may take in these tests.
const LIMIT: Duration = Duration::from_secs(120);

fn require_tools() {
    if let Some(tool) = missing_tool() {
        panic!("`{tool}` is not installed; ./scripts/test.sh installs the e2e dependencies");
    }
}

/// A scheduler serving the preheat API on `preheat_port` with [`PREHEAT_TOKEN`].
async fn scheduler(preheat_port: u16) -> Result<Scheduler> {
    let toml = format!(
        "preheat_listen = \"127.0.0.1:{preheat_port}\"\npreheat_token = \"{PREHEAT_TOKEN}\"\n[preheat]\nprogress_timeout_ms = 20000\n"
    );
    Scheduler::start_with_config(&toml).await
}

/// Four daemons of `base`, d0 and d1 in site `east`, d2 and d3 in `west`.
async fn two_sites(base: DaemonConfig) -> Result<Swarm> {
    Swarm::start(4, base, |i, c| c.site(site_of(i))).await
}

/// The site of daemon `i` of [`two_sites`].
fn site_of(i: usize) -> &'static str {
    if i < 2 {
        "east"
    } else {
        "west"
    }
}

/// Where a daemon keeps a complete blob.
fn blob_path(daemon: &Daemon, digest: &str) -> PathBuf {
    let hex = digest.trim_start_matches("sha256:");
    daemon.data_dir().join("blobs/sha256").join(&hex[..2]).join(hex)
}

/// Per daemon: how many of the image's blobs it holds complete.
fn holdings(swarm: &Swarm, image: &Image) -> Vec<usize> {
    swarm.daemons.iter().map(|d| image.blobs().iter().filter(|b| blob_path(d, &b.digest).is_file()).count()).collect()
}

/// Checks that exactly one daemon per site holds every blob of the image and the others none.
fn expect_one_per_site(swarm: &Swarm, image: &Image) -> Result<()> {
    let held = holdings(swarm, image);
    let all = image.blobs().len();
    for site in ["east", "west"] {
        let members: Vec<usize> = (0..swarm.len()).filter(|&i| site_of(i) == site).collect();
        let full = members.iter().filter(|&&i| held[i] == all).count();
        let none = members.iter().filter(|&&i| held[i] == 0).count();
        ensure!(
            full == 1 && none == members.len() - 1,
            "site {site}: want one daemon with all {all} blobs and the others none; held per daemon: {held:?}"
        );
    }
    Ok(())
}

/// Waits until every daemon has its preheat job stream open (the scheduler says so in its log).
async fn wait_ready(scheduler: &Scheduler, n: usize) -> Result<()> {
    let ready = || async {
        std::fs::read_to_string(scheduler.stderr_path()).unwrap_or_default().matches("ready for preheat jobs").count()
            >= n
    };
    if !wait_until(Duration::from_secs(30), Duration::from_millis(100), ready).await {
        bail!("not every daemon opened its preheat job stream:\n{}", scheduler.stderr_tail());
    }
    Ok(())
}

/// `shoal preheat ARGS --scheduler URL --cluster-token T`: its stdout, or an error with its
/// stderr.
async fn shoal_preheat(scheduler: &Scheduler, args: &[&str]) -> Result<String> {
    let mut cmd = tokio::process::Command::new(Daemon::bin_path());
    cmd.arg("preheat").args(args).args(["--scheduler", &scheduler.url(), "--cluster-token", CLUSTER_TOKEN]);
    let out = shoal_e2e::run(&mut cmd, LIMIT).await.context("shoal preheat")?;
    Ok(String::from_utf8_lossy(&out.stdout).into_owned())
}

/// The preheat API's base URL.
fn api(port: u16) -> String {
    format!("http://127.0.0.1:{port}")
}

/// `GET /preheat/{id}` until the job is done (or failed: an error); returns its JSON.
async fn wait_job(http: &reqwest::Client, port: u16, id: u64) -> Result<serde_json::Value> {
    let deadline = tokio::time::Instant::now() + LIMIT;
    loop {
        let job: serde_json::Value =
            http.get(format!("{}/preheat/{id}", api(port))).bearer_auth(PREHEAT_TOKEN).send().await?.json().await?;
        match job["state"].as_str() {
            Some("done") => return Ok(job),
            Some("failed") => bail!("preheat job {id} failed: {job:#}"),
            _ if tokio::time::Instant::now() > deadline => bail!("preheat job {id} not done within {LIMIT:?}: {job:#}"),
            _ => tokio::time::sleep(Duration::from_millis(200)).await,
        }
    }
}

fn report(test: &str, text: &str) {
    eprintln!("[{test}] {text}");
}

#[path = "preheat/api.rs"]
mod api_tests;
#[path = "preheat/cli.rs"]
mod cli;
#[path = "preheat/failover.rs"]
mod failover;
#[path = "preheat/notify.rs"]
mod notify;

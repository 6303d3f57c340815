//! The Shoal scheduler as a real process: `shoal scheduler --listen 127.0.0.1:PORT --admin-listen
//! 127.0.0.1:PORT2 --cluster-token T [--config FILE]` (gRPC over TLS for members on one port,
//! `/healthz` and `/metrics` on the other), with kill -9 and restart on the same ports.

use std::path::PathBuf;
use std::process::Child;
use std::time::Duration;

use anyhow::{bail, Result};
use tempfile::TempDir;

use crate::daemon::{metric_value, Daemon};
use crate::swarm::CLUSTER_TOKEN;
use crate::util::{daemon_command, free_port, kill_child, spawn_logged, tail, wait_healthy};

/// How long a scheduler may take to answer `/healthz` after it is spawned.
const STARTUP_LIMIT: Duration = Duration::from_secs(20);

/// A running (or killed) `shoal scheduler`, killed on drop.
pub struct Scheduler {
    dir: TempDir,
    port: u16,
    admin_port: u16,
    config_toml: Option<String>,
    child: Option<Child>,
    http: reqwest::Client,
}

impl Scheduler {
    /// Spawns a scheduler with default rules on a free port and waits for `/healthz`.
    pub async fn start() -> Result<Self> {
        Self::launch(None).await
    }

    /// Spawns a scheduler with `--config FILE` holding this TOML (e.g. a `[rules]` table).
    pub async fn start_with_config(toml: &str) -> Result<Self> {
        Self::launch(Some(toml.to_string())).await
    }

    async fn launch(config_toml: Option<String>) -> Result<Self> {
        let dir = tempfile::Builder::new().prefix("shoal-scheduler-").tempdir()?;
        let http = reqwest::Client::builder().timeout(Duration::from_secs(5)).build()?;
        let mut scheduler = Self { dir, port: free_port(), admin_port: free_port(), config_toml, child: None, http };
        scheduler.restart().await?;
        Ok(scheduler)
    }

    /// A scheduler URL on which nobody listens (a port that was free a moment ago).
    pub fn unreachable_url() -> String {
        format!("http://127.0.0.1:{}", free_port())
    }

    /// `http://127.0.0.1:PORT`, what daemons get as `--scheduler`.
    pub fn url(&self) -> String {
        format!("http://127.0.0.1:{}", self.port)
    }

    /// `http://127.0.0.1:PORT2`, its admin listener (`/metrics`, `/healthz`).
    pub fn admin_url(&self) -> String {
        format!("http://127.0.0.1:{}", self.admin_port)
    }

    /// Path of its stderr (appended across restarts).
    pub fn stderr_path(&self) -> PathBuf {
        self.dir.path().join("stderr.log")
    }

    /// The last few KB of its stderr.
    pub fn stderr_tail(&self) -> String {
        tail(&self.stderr_path(), 6000)
    }

    /// SIGKILL: all its (soft) state is lost.
    pub fn kill9(&mut self) {
        if let Some(mut child) = self.child.take() {
            kill_child(&mut child);
        }
    }

    /// Whether the process is alive.
    pub fn is_running(&mut self) -> bool {
        matches!(self.child.as_mut().map(|c| c.try_wait()), Some(Ok(None)))
    }

    /// (Re)starts it on the same port; waits for `/healthz`.
    pub async fn restart(&mut self) -> Result<()> {
        self.kill9();
        let bin = Daemon::bin_path();
        if !bin.is_file() {
            bail!("shoal binary not found at {} (run `cargo build --bin shoal` or set SHOAL_BIN)", bin.display());
        }
        let mut cmd = daemon_command(&bin);
        cmd.arg("scheduler").arg("--listen").arg(format!("127.0.0.1:{}", self.port));
        cmd.arg("--admin-listen").arg(format!("127.0.0.1:{}", self.admin_port));
        cmd.arg("--cluster-token").arg(CLUSTER_TOKEN);
        if let Some(toml) = &self.config_toml {
            let path = self.dir.path().join("scheduler.toml");
            std::fs::write(&path, toml)?;
            cmd.arg("--config").arg(path);
        }
        self.child = Some(spawn_logged(&mut cmd, &self.stderr_path(), &format!("{} scheduler", bin.display()))?);
        let client = self.http.clone();
        let url = format!("{}/healthz", self.admin_url());
        if !wait_healthy(&client, &url, STARTUP_LIMIT, || self.is_running()).await {
            self.kill9();
            bail!("shoal scheduler not healthy at {url} within {STARTUP_LIMIT:?}; stderr:\n{}", self.stderr_tail());
        }
        Ok(())
    }

    /// `shoal status --admin ADMIN --scheduler URL`: a daemon's downloads and this scheduler's
    /// tasks (per peer: pieces, back to source, parents, children, bad parents), as printed.
    pub async fn task_report(&self, daemon: &Daemon) -> Result<String> {
        let mut cmd = tokio::process::Command::new(Daemon::bin_path());
        let admin = daemon.admin_url();
        cmd.args(["status", "--admin", admin.trim_start_matches("http://"), "--scheduler", &self.url()]);
        cmd.args(["--cluster-token", CLUSTER_TOKEN]);
        let out = crate::util::run(&mut cmd, Duration::from_secs(20)).await?;
        Ok(String::from_utf8_lossy(&out.stdout).into_owned())
    }

    /// The `/metrics` text (metrics are prefixed `shoal_scheduler_`).
    pub async fn metrics(&self) -> Result<String> {
        let resp = self.http.get(format!("{}/metrics", self.admin_url())).send().await?;
        if !resp.status().is_success() {
            bail!("GET /metrics: {}", resp.status());
        }
        Ok(resp.text().await?)
    }

    /// One sample of its metrics (see [`metric_value`]).
    pub async fn metric(&self, name: &str, labels: &str) -> Result<Option<f64>> {
        Ok(metric_value(&self.metrics().await?, name, labels))
    }
}

impl Drop for Scheduler {
    fn drop(&mut self) {
        self.kill9();
    }
}

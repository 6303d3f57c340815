//! The Shoal daemon as a real process:
//! `shoal daemon --data-dir DIR --mirror-listen 127.0.0.1:P1 --admin-listen 127.0.0.1:P2
//!  --registry NAME=URL ... [--cache-size SIZE] [--config FILE]`, and with a scheduler the swarm
//! flags: `--scheduler URL ... --peer-listen 127.0.0.1:UDP --advertise-addr 127.0.0.1
//!  --cluster-token T [--site S] [--host-id ID] [--upload-limit R] [--download-limit R]`.

use std::path::PathBuf;
use std::process::Child;
use std::time::{Duration, Instant};

use anyhow::{bail, Result};
use tempfile::TempDir;

use crate::registry::Registry;
use crate::util::{
    daemon_command, free_port, free_udp_port, kill_child, spawn_logged, tail, wait_healthy, workspace_root,
};

/// How long a daemon may take to answer `/healthz` after it is spawned.
const STARTUP_LIMIT: Duration = Duration::from_secs(20);

/// Command-line settings of a daemon.
#[derive(Debug, Clone, Default)]
pub struct DaemonConfig {
    /// `--registry NAME=URL`, in order (the first is the default upstream).
    pub registries: Vec<(String, String)>,
    /// `--cache-size SIZE`.
    pub cache_size: Option<String>,
    /// Contents of a TOML file passed with `--config FILE`.
    pub config_toml: Option<String>,
    /// Any further arguments.
    pub extra_args: Vec<String>,
    /// `--scheduler URL`, repeatable. With at least one, the daemon also gets `--peer-listen
    /// 127.0.0.1:<free UDP port>` and `--advertise-addr 127.0.0.1`.
    pub schedulers: Vec<String>,
    /// `--cluster-token`.
    pub cluster_token: Option<String>,
    /// `--site`.
    pub site: Option<String>,
    /// `--host-id`.
    pub host_id: Option<String>,
    /// `--upload-limit`, `--download-limit`, `--origin-limit` (e.g. `8MiB/s`).
    pub upload_limit: Option<String>,
    pub download_limit: Option<String>,
    pub origin_limit: Option<String>,
    /// Mount a tmpfs of this many bytes as the data dir (root only).
    pub data_tmpfs: Option<u64>,
    /// `--dht-listen ADDR` (with it, the daemon also gets the peer listener on loopback).
    pub dht_listen: Option<String>,
    /// `--bootstrap ADDR`, repeatable.
    pub bootstrap: Vec<String>,
    /// Extra environment variables (e.g. `SHOAL_FAULT_CORRUPT_UPLOADS=1`; the binary must be built with the `fault-injection` feature).
    pub env: Vec<(String, String)>,
}

impl DaemonConfig {
    /// A daemon mirroring `registry` under its `host:port` name.
    pub fn for_registry(registry: &Registry) -> Self {
        Self::default().registry(&registry.host(), &registry.url())
    }

    /// Adds `--registry NAME=URL`.
    pub fn registry(mut self, name: &str, url: &str) -> Self {
        self.registries.push((name.to_string(), url.to_string()));
        self
    }

    /// Sets `--cache-size`.
    pub fn cache_size(mut self, size: &str) -> Self {
        self.cache_size = Some(size.to_string());
        self
    }

    /// Passes `--config FILE` with this TOML content.
    pub fn config_toml(mut self, toml: &str) -> Self {
        self.config_toml = Some(toml.to_string());
        self
    }
}

/// A running `shoal daemon`, killed on drop.
pub struct Daemon {
    /// Unmounted before `dir` is removed (fields drop in order).
    tmpfs: Option<crate::tmpfs::Tmpfs>,
    dir: TempDir,
    config: DaemonConfig,
    mirror_port: u16,
    admin_port: u16,
    peer_port: u16,
    child: Option<Child>,
    /// For the admin listener (one client: building one costs ~60 ms in a debug build).
    admin: reqwest::Client,
}

impl Daemon {
    /// The binary under test: `SHOAL_BIN`, else `CARGO_TARGET_DIR/debug/shoal`, else
    /// `<workspace>/target/debug/shoal`.
    pub fn bin_path() -> PathBuf {
        if let Some(bin) = std::env::var_os("SHOAL_BIN") {
            return PathBuf::from(bin);
        }
        let target =
            std::env::var_os("CARGO_TARGET_DIR").map(PathBuf::from).unwrap_or_else(|| workspace_root().join("target"));
        target.join("debug/shoal")
    }

    /// Spawns a daemon on fresh ports with a fresh data dir and waits for `/healthz`.
    pub async fn start(config: DaemonConfig) -> Result<Self> {
        let dir = tempfile::Builder::new().prefix("shoal-daemon-").tempdir()?;
        let (mirror_port, admin_port, peer_port) = (free_port(), free_port(), free_udp_port());
        let admin = reqwest::Client::builder().timeout(Duration::from_secs(10)).build()?;
        let tmpfs =
            config.data_tmpfs.map(|size| crate::tmpfs::Tmpfs::mount(&dir.path().join("data"), size)).transpose()?;
        let mut daemon = Self { tmpfs, dir, config, mirror_port, admin_port, peer_port, child: None, admin };
        // Another process may take a port between `free_port` and the daemon's bind: retry then.
        for _ in 0..3 {
            match daemon.restart().await {
                Err(e) if format!("{e:#}").contains("Address already in use") => {
                    (daemon.mirror_port, daemon.admin_port, daemon.peer_port) =
                        (free_port(), free_port(), free_udp_port());
                }
                result => return result.map(|()| daemon),
            }
        }
        daemon.restart().await?;
        Ok(daemon)
    }

    /// The tmpfs under the data dir, with [`DaemonConfig::data_tmpfs`].
    pub fn tmpfs(&self) -> Option<&crate::tmpfs::Tmpfs> {
        self.tmpfs.as_ref()
    }

    /// The data directory (kept across restarts).
    pub fn data_dir(&self) -> PathBuf {
        self.dir.path().join("data")
    }

    /// `127.0.0.1:P1`, the mirror listener.
    pub fn mirror_host(&self) -> String {
        format!("127.0.0.1:{}", self.mirror_port)
    }

    /// `http://127.0.0.1:P1`.
    pub fn mirror_url(&self) -> String {
        format!("http://{}", self.mirror_host())
    }

    /// `http://127.0.0.1:P2`, the admin listener.
    pub fn admin_url(&self) -> String {
        format!("http://127.0.0.1:{}", self.admin_port)
    }

    /// `127.0.0.1:UDP`, the peer (QUIC) listener when a scheduler is configured.
    pub fn peer_addr(&self) -> String {
        format!("127.0.0.1:{}", self.peer_port)
    }

    /// Its `--host-id`, if set.
    pub fn host_id(&self) -> Option<&str> {
        self.config.host_id.as_deref()
    }

    /// The settings it was started with.
    pub fn config(&self) -> &DaemonConfig {
        &self.config
    }

    /// Path of the daemon's stderr (appended across restarts).
    pub fn stderr_path(&self) -> PathBuf {
        self.dir.path().join("stderr.log")
    }

    /// The last few KB of the daemon's stderr.
    pub fn stderr_tail(&self) -> String {
        tail(&self.stderr_path(), 6000)
    }

    /// SIGKILL, no clean shutdown.
    pub fn kill9(&mut self) {
        if let Some(mut child) = self.child.take() {
            kill_child(&mut child);
        }
    }

    /// (Re)starts the daemon with the same data dir, ports and flags; waits for `/healthz`.
    pub async fn restart(&mut self) -> Result<()> {
        self.kill9();
        let bin = Self::bin_path();
        if !bin.is_file() {
            bail!("shoal binary not found at {} (run `cargo build --bin shoal` or set SHOAL_BIN)", bin.display());
        }
        let mut cmd = daemon_command(&bin);
        cmd.arg("daemon")
            .arg("--data-dir")
            .arg(self.data_dir())
            .arg("--mirror-listen")
            .arg(self.mirror_host())
            .arg("--admin-listen")
            .arg(format!("127.0.0.1:{}", self.admin_port));
        for (name, url) in &self.config.registries {
            cmd.arg("--registry").arg(format!("{name}={url}"));
        }
        if let Some(size) = &self.config.cache_size {
            cmd.arg("--cache-size").arg(size);
        }
        if let Some(toml) = &self.config.config_toml {
            let path = self.dir.path().join("config.toml");
            std::fs::write(&path, toml)?;
            cmd.arg("--config").arg(path);
        }
        cmd.args(self.config.swarm_args(self.peer_port));
        cmd.args(&self.config.extra_args);
        // Only what the test sets: never a token from the environment of the test run.
        cmd.env_remove("SHOAL_CLUSTER_TOKEN");
        cmd.envs(self.config.env.iter().map(|(k, v)| (k, v)));
        self.child = Some(spawn_logged(&mut cmd, &self.stderr_path(), &bin.display().to_string())?);
        let client = self.admin.clone();
        let url = format!("{}/healthz", self.admin_url());
        if !wait_healthy(&client, &url, STARTUP_LIMIT, || self.is_running()).await {
            self.kill9();
            bail!("shoal daemon not healthy at {url} within {STARTUP_LIMIT:?}; stderr:\n{}", self.stderr_tail());
        }
        Ok(())
    }

    /// Its settings, to change before a [`Daemon::restart`].
    pub fn config_mut(&mut self) -> &mut DaemonConfig {
        &mut self.config
    }

    /// The daemon's process id, while it runs.
    pub fn pid(&self) -> Option<u32> {
        self.child.as_ref().map(|c| c.id())
    }

    /// The daemon's resident memory (`VmRSS` of `/proc/<pid>/status`), bytes.
    pub fn rss_bytes(&self) -> Result<u64> {
        let pid = self.pid().ok_or_else(|| anyhow::anyhow!("the daemon is not running"))?;
        let status = std::fs::read_to_string(format!("/proc/{pid}/status"))?;
        let line = status.lines().find(|l| l.starts_with("VmRSS:")).ok_or_else(|| anyhow::anyhow!("no VmRSS"))?;
        let kib: u64 = line.split_whitespace().nth(1).unwrap_or_default().parse()?;
        Ok(kib << 10)
    }

    /// True while the daemon process is alive.
    pub fn is_running(&mut self) -> bool {
        matches!(self.child.as_mut().map(|c| c.try_wait()), Some(Ok(None)))
    }

    /// The `/metrics` text.
    pub async fn metrics(&self) -> Result<String> {
        let resp = self.admin.get(format!("{}/metrics", self.admin_url())).send().await?;
        if !resp.status().is_success() {
            bail!("GET /metrics: {}", resp.status());
        }
        Ok(resp.text().await?)
    }

    /// The body of `GET /healthz` (`ok`, or why the cache is degraded).
    pub async fn healthz(&self) -> Result<String> {
        let resp = self.admin.get(format!("{}/healthz", self.admin_url())).send().await?;
        if !resp.status().is_success() {
            bail!("GET /healthz: {}", resp.status());
        }
        Ok(resp.text().await?)
    }

    /// `GET /status` on the admin listener: the running downloads, as JSON.
    pub async fn status(&self) -> Result<serde_json::Value> {
        let resp = self.admin.get(format!("{}/status", self.admin_url())).send().await?;
        if !resp.status().is_success() {
            bail!("GET /status: {}", resp.status());
        }
        Ok(resp.json().await?)
    }

    /// Reads a sample like [`Daemon::metric`], 0 when absent (a counter not yet touched).
    pub async fn counter(&self, name: &str, labels: &str) -> Result<f64> {
        Ok(self.metric(name, labels).await?.unwrap_or(0.0))
    }

    /// Reads one sample from the `/metrics` text: see [`metric_value`].
    pub async fn metric(&self, name: &str, labels: &str) -> Result<Option<f64>> {
        Ok(metric_value(&self.metrics().await?, name, labels))
    }

    /// Polls one sample until it equals `want` (at most 3 s: counters may lag the response a
    /// little) and returns the last value read.
    pub async fn wait_for_metric(&self, name: &str, labels: &str, want: f64) -> Result<Option<f64>> {
        let deadline = Instant::now() + Duration::from_secs(3);
        loop {
            let value = self.metric(name, labels).await?;
            if value == Some(want) || Instant::now() >= deadline {
                return Ok(value);
            }
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    }
}

/// The value of the first sample of metric `name` whose label set contains `labels` (a substring,
/// e.g. `result="hit"`; empty matches any).
pub fn metric_value(text: &str, name: &str, labels: &str) -> Option<f64> {
    for line in text.lines().filter(|l| !l.starts_with('#')) {
        let Some((series, value)) = line.rsplit_once(' ') else {
            continue;
        };
        let (metric, label_set) = series.split_once('{').unwrap_or((series, ""));
        if metric == name && label_set.contains(labels) {
            return value.parse().ok();
        }
    }
    None
}

impl Drop for Daemon {
    fn drop(&mut self) {
        self.kill9();
    }
}

#[cfg(test)]
mod tests {
    use super::metric_value;

    #[test]
    fn reads_metric_samples() {
        let text = "# HELP x y\nshoal_blob_bytes_total{source=\"origin\"} 42\nshoal_blob_bytes_total{source=\"cache\"} 7\nshoal_up 1\n";
        assert_eq!(metric_value(text, "shoal_blob_bytes_total", "source=\"cache\""), Some(7.0));
        assert_eq!(metric_value(text, "shoal_blob_bytes_total", ""), Some(42.0));
        assert_eq!(metric_value(text, "shoal_up", ""), Some(1.0));
        assert_eq!(metric_value(text, "shoal_missing", ""), None);
    }
}

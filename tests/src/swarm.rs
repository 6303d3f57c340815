//! A swarm: several `shoal daemon`s mirroring one origin and sharing one (or no) scheduler, each
//! with its own ports (mirror, admin, QUIC peer listener on loopback) and data dir.

use std::fmt::Write as _;
use std::path::PathBuf;

use anyhow::{Context, Result};

use crate::daemon::{Daemon, DaemonConfig};
use crate::registry::Registry;
use crate::scheduler::Scheduler;
use crate::util::workspace_root;

/// The swarm flags of `shoal daemon`.
impl DaemonConfig {
    /// Adds `--scheduler URL` (and so the peer listener on loopback).
    pub fn scheduler(mut self, url: &str) -> Self {
        self.schedulers.push(url.to_string());
        self
    }

    /// Sets `--cluster-token`.
    pub fn cluster_token(mut self, token: &str) -> Self {
        self.cluster_token = Some(token.to_string());
        self
    }

    /// Sets `--site`.
    pub fn site(mut self, site: &str) -> Self {
        self.site = Some(site.to_string());
        self
    }

    /// Sets `--host-id`.
    pub fn host_id(mut self, id: &str) -> Self {
        self.host_id = Some(id.to_string());
        self
    }

    /// Sets `--upload-limit` (peers), e.g. `12MiB/s`.
    pub fn upload_limit(mut self, rate: &str) -> Self {
        self.upload_limit = Some(rate.to_string());
        self
    }

    /// Sets `--download-limit` (from peers).
    pub fn download_limit(mut self, rate: &str) -> Self {
        self.download_limit = Some(rate.to_string());
        self
    }

    /// Sets `--origin-limit`.
    pub fn origin_limit(mut self, rate: &str) -> Self {
        self.origin_limit = Some(rate.to_string());
        self
    }

    /// Turns the DHT on: `--dht-listen 127.0.0.1:<free port>` and `--bootstrap ADDR` for each
    /// of `bootstrap`. Returns the DHT address this daemon will listen on.
    pub fn dht(mut self, bootstrap: &[String]) -> (Self, String) {
        let listen = format!("127.0.0.1:{}", crate::util::free_port());
        self.dht_listen = Some(listen.clone());
        self.bootstrap = bootstrap.to_vec();
        (self, listen)
    }

    /// Sets an environment variable for the daemon process.
    pub fn env(mut self, key: &str, value: &str) -> Self {
        self.env.push((key.to_string(), value.to_string()));
        self
    }

    /// The swarm arguments (empty without a scheduler, except for the limits).
    pub(crate) fn swarm_args(&self, peer_port: u16) -> Vec<String> {
        let mut args = Vec::new();
        for url in &self.schedulers {
            args.extend(["--scheduler".into(), url.clone()]);
        }
        if !self.schedulers.is_empty() || self.dht_listen.is_some() {
            args.extend(["--peer-listen".into(), format!("127.0.0.1:{peer_port}")]);
            args.extend(["--advertise-addr".into(), "127.0.0.1".into()]);
        }
        if let Some(listen) = &self.dht_listen {
            args.extend(["--dht-listen".into(), listen.clone()]);
        }
        for addr in &self.bootstrap {
            args.extend(["--bootstrap".into(), addr.clone()]);
        }
        let options = [
            ("--cluster-token", &self.cluster_token),
            ("--site", &self.site),
            ("--host-id", &self.host_id),
            ("--upload-limit", &self.upload_limit),
            ("--download-limit", &self.download_limit),
            ("--origin-limit", &self.origin_limit),
        ];
        for (flag, value) in options {
            if let Some(value) = value {
                args.extend([flag.to_string(), value.clone()]);
            }
        }
        args
    }
}

/// The cluster token every swarm daemon gets unless a test says otherwise.
pub const CLUSTER_TOKEN: &str = "shoal-e2e-cluster-token-7f3a9c1d";

/// N daemons, killed on drop. Daemon `i` has `--host-id d<i>`.
pub struct Swarm {
    pub daemons: Vec<Daemon>,
}

impl Swarm {
    /// A daemon config mirroring `registry`, with these schedulers and the cluster token.
    pub fn config(registry: &Registry, schedulers: &[String]) -> DaemonConfig {
        let mut config = DaemonConfig::for_registry(registry).cluster_token(CLUSTER_TOKEN);
        for url in schedulers {
            config = config.scheduler(url);
        }
        config
    }

    /// Starts `n` daemons at once from `base`, each adjusted by `configure(i, config)`, and waits
    /// until every one answers `/healthz`.
    pub async fn start(
        n: usize,
        base: DaemonConfig,
        mut configure: impl FnMut(usize, DaemonConfig) -> DaemonConfig,
    ) -> Result<Self> {
        let mut starting = tokio::task::JoinSet::new();
        for i in 0..n {
            let config = configure(i, base.clone().host_id(&format!("d{i}")));
            starting.spawn(async move { (i, Daemon::start(config).await) });
        }
        let mut daemons: Vec<(usize, Daemon)> = Vec::new();
        while let Some(joined) = starting.join_next().await {
            let (i, daemon) = joined?;
            daemons.push((i, daemon.with_context(|| format!("start daemon d{i}"))?));
        }
        daemons.sort_by_key(|(i, _)| *i);
        Ok(Self { daemons: daemons.into_iter().map(|(_, d)| d).collect() })
    }

    /// Starts one more daemon (`--host-id d<len>`) and returns its index.
    pub async fn add(&mut self, config: DaemonConfig) -> Result<usize> {
        let i = self.daemons.len();
        self.daemons.push(Daemon::start(config.host_id(&format!("d{i}"))).await?);
        Ok(i)
    }

    /// The number of daemons.
    pub fn len(&self) -> usize {
        self.daemons.len()
    }

    /// Whether there are none.
    pub fn is_empty(&self) -> bool {
        self.daemons.is_empty()
    }

    /// One counter of every daemon (0 when absent or when the daemon is down), in order.
    pub async fn counters(&self, name: &str, labels: &str) -> Vec<f64> {
        let mut out = Vec::with_capacity(self.daemons.len());
        for daemon in &self.daemons {
            out.push(daemon.counter(name, labels).await.unwrap_or(0.0));
        }
        out
    }

    /// The sum of one counter over the daemons that answer.
    pub async fn sum(&self, name: &str, labels: &str) -> f64 {
        self.counters(name, labels).await.iter().sum()
    }

    /// Per daemon: bytes from the origin, from peers, uploaded to peers, and piece failures;
    /// for assertion messages.
    pub async fn traffic_table(&self) -> String {
        let mut out = String::from("daemon   origin_MB   peer_MB   uploaded_MB  mismatch  refused  timeout  io  b2s\n");
        for (i, d) in self.daemons.iter().enumerate() {
            let get = |name: &'static str, labels: &'static str| async move { d.counter(name, labels).await.ok() };
            let mb = |v: Option<f64>| v.map_or("   down".to_string(), |v| format!("{:8.1}", v / 1_048_576.0));
            let n = |v: Option<f64>| v.map_or("-".to_string(), |v| format!("{v}"));
            let _ = writeln!(
                out,
                "d{i:<6} {}    {}    {}      {:>6}  {:>7}  {:>7}  {:>2}  {:>3}",
                mb(get("shoal_fetched_bytes_total", r#"source="origin""#).await),
                mb(get("shoal_fetched_bytes_total", r#"source="peer""#).await),
                mb(get("shoal_uploaded_bytes_total", "").await),
                n(get("shoal_piece_failures_total", r#"reason="digest_mismatch""#).await),
                n(get("shoal_piece_failures_total", r#"reason="refused""#).await),
                n(get("shoal_piece_failures_total", r#"reason="timeout""#).await),
                n(get("shoal_piece_failures_total", r#"reason="io""#).await),
                n(get("shoal_back_to_source_total", "").await),
            );
        }
        out
    }

    /// Lines of every daemon's stderr that contain any of `needles` (ANSI colours removed),
    /// prefixed with the daemon; at most `max` lines per daemon (the last ones).
    pub fn grep_logs(&self, needles: &[&str], max: usize) -> String {
        let mut out = String::new();
        for (i, d) in self.daemons.iter().enumerate() {
            let text = std::fs::read_to_string(d.stderr_path()).unwrap_or_default();
            let lines: Vec<String> =
                text.lines().map(strip_ansi).filter(|l| needles.iter().any(|n| l.contains(n))).collect();
            for line in &lines[lines.len().saturating_sub(max)..] {
                let _ = writeln!(out, "d{i}: {line}");
            }
        }
        out
    }

    /// The last lines of every daemon's stderr, for failure messages.
    pub fn logs(&self) -> String {
        let mut out = String::new();
        for (i, d) in self.daemons.iter().enumerate() {
            let _ = writeln!(out, "--- d{i} stderr ({}):\n{}", d.stderr_path().display(), d.stderr_tail());
        }
        out
    }
}

/// Removes ANSI colour sequences (`ESC [ ... m`) from a log line.
pub fn strip_ansi(line: &str) -> String {
    let mut out = String::with_capacity(line.len());
    let mut chars = line.chars();
    while let Some(c) = chars.next() {
        if c == '\u{1b}' {
            for c in chars.by_ref() {
                if c.is_ascii_alphabetic() {
                    break;
                }
            }
        } else {
            out.push(c);
        }
    }
    out
}

/// Copies log files into `<target>/e2e-logs/<test>/` when dropped, so they outlive the temp dirs
/// of a failed test. Declare it after the processes whose logs it keeps: it is dropped first.
pub struct KeepLogs {
    dir: PathBuf,
    files: Vec<(String, PathBuf)>,
}

impl KeepLogs {
    /// Keeps the stderr of every daemon of `swarm` (`d<i>.log`) and of `scheduler`.
    pub fn new(test: &str, swarm: &Swarm, scheduler: Option<&Scheduler>) -> Self {
        let target =
            std::env::var_os("CARGO_TARGET_DIR").map(PathBuf::from).unwrap_or_else(|| workspace_root().join("target"));
        let mut keep = Self { dir: target.join("e2e-logs").join(test), files: Vec::new() };
        keep.add_swarm(swarm);
        if let Some(scheduler) = scheduler {
            keep.add("scheduler", scheduler.stderr_path());
        }
        keep
    }

    /// Also keeps `path` as `<label>.log`.
    pub fn add(&mut self, label: &str, path: PathBuf) {
        self.files.retain(|(l, _)| l != label);
        self.files.push((label.to_string(), path));
    }

    /// (Re)adds every daemon of `swarm` (after [`Swarm::add`]).
    pub fn add_swarm(&mut self, swarm: &Swarm) {
        for (i, d) in swarm.daemons.iter().enumerate() {
            self.add(&format!("d{i}"), d.stderr_path());
        }
    }

    /// Where the logs go.
    pub fn dir(&self) -> &std::path::Path {
        &self.dir
    }
}

impl Drop for KeepLogs {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.dir);
        if std::fs::create_dir_all(&self.dir).is_err() {
            return;
        }
        for (label, path) in &self.files {
            let text = std::fs::read_to_string(path).unwrap_or_default();
            let clean: Vec<String> = text.lines().map(strip_ansi).collect();
            let _ = std::fs::write(self.dir.join(format!("{label}.log")), clean.join("\n") + "\n");
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn swarm_flags_only_with_a_scheduler() {
        let plain = DaemonConfig::default().origin_limit("8MiB/s");
        assert_eq!(plain.swarm_args(7), ["--origin-limit", "8MiB/s"]);
        let args = DaemonConfig::default().scheduler("http://127.0.0.1:9").cluster_token("t").swarm_args(7);
        let pairs: Vec<&[String]> = args.chunks(2).collect();
        assert!(pairs.contains(&&["--peer-listen".to_string(), "127.0.0.1:7".to_string()][..]), "{args:?}");
        assert!(pairs.contains(&&["--advertise-addr".to_string(), "127.0.0.1".to_string()][..]), "{args:?}");
        assert!(pairs.contains(&&["--cluster-token".to_string(), "t".to_string()][..]), "{args:?}");
    }

    #[test]
    fn strips_colours() {
        assert_eq!(strip_ansi("\u{1b}[2m12:00\u{1b}[0m \u{1b}[32m INFO\u{1b}[0m hi"), "12:00  INFO hi");
    }
}

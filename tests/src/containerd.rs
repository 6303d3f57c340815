//! A private containerd (own config, root, state and socket under a temp dir, CRI disabled) and
//! `ctr images pull --hosts-dir` through a hosts.toml mirror.

use std::path::{Path, PathBuf};
use std::process::{Child, Stdio};
use std::time::{Duration, Instant};

use anyhow::{bail, ensure, Context, Result};
use tempfile::TempDir;

use crate::hash::sha256_file;
use crate::image::Image;
use crate::util::{daemon_command, kill_child, log_file, run, tail};

const NAMESPACE: &str = "shoal-e2e";
const SNAPSHOTTER: &str = "native";

/// A running containerd, killed on drop.
pub struct Containerd {
    dir: TempDir,
    child: Option<Child>,
}

impl Containerd {
    /// Starts containerd and waits (at most 20 s) until `ctr version` answers.
    pub async fn start() -> Result<Self> {
        // Unix socket paths are limited to 108 bytes: keep the dir short.
        let dir = tempfile::Builder::new().prefix("shoal-ctrd-").tempdir_in("/tmp")?;
        let d = dir.path().display();
        let config = format!(
            r#"version = 2
root = "{d}/root"
state = "{d}/state"
disabled_plugins = ["io.containerd.grpc.v1.cri", "io.containerd.snapshotter.v1.aufs",
  "io.containerd.snapshotter.v1.btrfs", "io.containerd.snapshotter.v1.zfs",
  "io.containerd.snapshotter.v1.devmapper", "io.containerd.tracing.processor.v1.otlp",
  "io.containerd.internal.v1.tracing"]

[grpc]
  address = "{d}/ctrd.sock"

[ttrpc]
  address = "{d}/ctrd.sock.ttrpc"

[debug]
  address = "{d}/debug.sock"

[metrics]
  address = ""

[plugins."io.containerd.internal.v1.opt"]
  path = "{d}/opt"
"#
        );
        std::fs::write(dir.path().join("config.toml"), config)?;
        let log = dir.path().join("containerd.log");
        let child = daemon_command("containerd")
            .arg("--config")
            .arg(dir.path().join("config.toml"))
            .stdin(Stdio::null())
            .stdout(log_file(&log)?)
            .stderr(log_file(&log)?)
            .spawn()
            .context("spawn containerd (is the containerd package installed?)")?;
        let mut ctrd = Self { dir, child: Some(child) };
        let deadline = Instant::now() + Duration::from_secs(20);
        loop {
            let mut cmd = ctrd.ctr();
            cmd.arg("version");
            if run(&mut cmd, Duration::from_secs(5)).await.is_ok() {
                return Ok(ctrd);
            }
            let exited = !matches!(ctrd.child.as_mut().map(|c| c.try_wait()), Some(Ok(None)));
            if exited || Instant::now() >= deadline {
                bail!("containerd did not come up:\n{}", tail(&log, 4000));
            }
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
    }

    /// `ctr -a SOCKET -n shoal-e2e`.
    pub fn ctr(&self) -> tokio::process::Command {
        let mut cmd = tokio::process::Command::new("ctr");
        cmd.arg("-a").arg(self.dir.path().join("ctrd.sock")).args(["-n", NAMESPACE]);
        cmd
    }

    /// Writes `HOSTS/<origin>/hosts.toml` sending `origin` (`host:port`) pulls to `mirror`
    /// (`host:port`, plain HTTP, pull + resolve) with the origin as fallback; returns HOSTS.
    pub fn hosts_dir(&self, origin: &str, mirror: Option<&str>) -> Result<PathBuf> {
        let hosts = self.dir.path().join(format!("hosts-{}", mirror.unwrap_or("direct")));
        std::fs::create_dir_all(hosts.join(origin))?;
        let mut toml = format!("server = \"http://{origin}\"\n");
        if let Some(mirror) = mirror {
            toml.push_str(&format!("\n[host.\"http://{mirror}\"]\n  capabilities = [\"pull\", \"resolve\"]\n"));
        }
        std::fs::write(hosts.join(origin).join("hosts.toml"), toml)?;
        Ok(hosts)
    }

    /// `ctr images pull --hosts-dir HOSTS --plain-http --snapshotter native REFERENCE` (unpacks).
    pub async fn pull(&self, reference: &str, hosts: &Path, creds: Option<&str>) -> Result<()> {
        let mut cmd = self.ctr();
        cmd.args(["images", "pull", "--plain-http", "--snapshotter", SNAPSHOTTER]).arg("--hosts-dir").arg(hosts);
        if let Some(creds) = creds {
            cmd.arg("--user").arg(creds);
        }
        run(cmd.arg(reference), Duration::from_secs(300)).await?;
        Ok(())
    }

    /// Checks the pull: the image points at the manifest digest, every blob in the content store
    /// hashes to its digest, and the layers were unpacked into snapshots.
    pub async fn verify(&self, reference: &str, image: &Image) -> Result<()> {
        let mut cmd = self.ctr();
        cmd.args(["images", "ls"]);
        let out = run(&mut cmd, Duration::from_secs(30)).await?;
        let listing = String::from_utf8_lossy(&out.stdout).into_owned();
        let line = listing
            .lines()
            .find(|l| l.split_whitespace().next() == Some(reference))
            .with_context(|| format!("ctr images ls lacks {reference}:\n{listing}"))?;
        ensure!(line.contains(&image.manifest_digest), "ctr image is not {}: {line}", image.manifest_digest);
        let content = self.dir.path().join("root/io.containerd.content.v1.content/blobs/sha256");
        for blob in image.blobs() {
            let got = sha256_file(&content.join(blob.hex()))?;
            ensure!(got == blob.digest, "containerd content {} hashes to {got}", blob.digest);
        }
        let mut cmd = self.ctr();
        cmd.args(["snapshots", "--snapshotter", SNAPSHOTTER, "ls"]);
        let out = run(&mut cmd, Duration::from_secs(30)).await?;
        let snapshots = String::from_utf8_lossy(&out.stdout).lines().skip(1).count();
        ensure!(snapshots == image.layers.len(), "{snapshots} snapshots for {} layers", image.layers.len());
        Ok(())
    }
}

impl Drop for Containerd {
    fn drop(&mut self) {
        if let Some(mut child) = self.child.take() {
            kill_child(&mut child);
        }
    }
}

//! The deploy checks (issue 10 §5): what `deploy/` ships works with the binary as it is.
//!
//! - the container image builds offline on the real dockerd and runs (`scripts/image.sh verify`);
//! - every port, config key, Secret, ConfigMap key, volume mount and flag the Kubernetes
//!   manifests name exists in the real binary and agrees with the rest, and the containers run
//!   as the manifests say (in a network namespace of their own) and answer their probes;
//! - the systemd units name flags, paths and credentials that exist (`systemd-analyze verify`);
//! - every metric the Grafana dashboard queries is exported by a running daemon or scheduler.
//!
//! Nothing here talks to the network: processes run on loopback or in namespaces the tests make
//! and remove.

use std::collections::BTreeSet;
use std::path::{Path, PathBuf};
use std::process::Command;

use anyhow::{bail, ensure, Context, Result};
use shoal_e2e::{workspace_root, Daemon};

#[path = "deploy/grafana.rs"]
mod grafana;
#[path = "deploy/image.rs"]
mod image;
#[path = "deploy/kube.rs"]
mod kube;
#[path = "deploy/kube_checks.rs"]
mod kube_checks;
#[path = "deploy/kube_run.rs"]
mod kube_run;
#[path = "deploy/netns.rs"]
mod netns;
#[path = "deploy/systemd.rs"]
mod systemd;

/// `deploy/` of this workspace.
fn deploy_dir() -> PathBuf {
    workspace_root().join("deploy")
}

/// The binary under test (as the other e2e tests run it).
fn shoal_bin() -> Result<PathBuf> {
    let bin = Daemon::bin_path();
    ensure!(bin.is_file(), "no shoal binary at {} (cargo build -p shoal --bin shoal)", bin.display());
    Ok(bin)
}

/// The long flags (`--name`) and environment variables (`[env: NAME=]`) that `shoal <sub...>
/// --help` documents.
#[derive(Debug, Clone, Default)]
struct Help {
    flags: BTreeSet<String>,
    env: BTreeSet<String>,
}

impl Help {
    /// Runs `shoal <subcommand...> --help` and reads its flags.
    fn of(subcommand: &[&str]) -> Result<Self> {
        let out = Command::new(shoal_bin()?).args(subcommand).arg("--help").output()?;
        ensure!(out.status.success(), "shoal {subcommand:?} --help: {}", String::from_utf8_lossy(&out.stderr));
        Ok(Self::parse(&String::from_utf8_lossy(&out.stdout)))
    }

    fn parse(text: &str) -> Self {
        let mut help = Self::default();
        for word in text.split(|c: char| c.is_whitespace() || c == ',' || c == '[' || c == ']') {
            if let Some(flag) = word.strip_prefix("--") {
                let flag: String = flag.chars().take_while(|c| c.is_ascii_alphanumeric() || *c == '-').collect();
                if !flag.is_empty() {
                    help.flags.insert(flag);
                }
            }
        }
        for part in text.split("[env: ").skip(1) {
            help.env.insert(part.split('=').next().unwrap_or_default().to_owned());
        }
        help
    }
}

/// Runs a command to completion; fails with its output unless it exits 0.
fn run(cmd: &mut Command) -> Result<std::process::Output> {
    let out = cmd.output().with_context(|| format!("spawn {cmd:?}"))?;
    if !out.status.success() {
        bail!(
            "{cmd:?}: {}\n--- stdout:\n{}\n--- stderr:\n{}",
            out.status,
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr)
        );
    }
    Ok(out)
}

/// Whether this process may make network namespaces (root).
fn is_root() -> bool {
    std::fs::read_to_string("/proc/self/status")
        .map(|s| s.lines().any(|l| l.starts_with("Uid:") && l.split_whitespace().nth(1) == Some("0")))
        .unwrap_or(false)
}

/// Reads a file of this workspace.
fn read(path: &Path) -> Result<String> {
    std::fs::read_to_string(path).with_context(|| format!("read {}", path.display()))
}

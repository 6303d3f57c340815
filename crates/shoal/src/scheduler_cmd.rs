//! `shoal scheduler`: the scheduler service (gRPC, plus /metrics and /healthz on the same port).

use std::path::PathBuf;

use anyhow::{Context, Result};
use clap::Args;
use serde::Deserialize;
use shoal_core::sched::Config as Rules;

/// Flags of `shoal scheduler`.
#[derive(Args, Debug)]
pub struct SchedulerArgs {
    /// TOML file: `listen = "ADDR"` and a `[rules]` table (candidate_parents,
    /// back_to_source_per_site, max_children_per_parent, host_ttl_ms, …).
    #[arg(long, value_name = "FILE")]
    config: Option<PathBuf>,
    /// gRPC (and /metrics) listener (`listen`, default 0.0.0.0:65000).
    #[arg(long, value_name = "ADDR")]
    listen: Option<String>,
}

#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields, default)]
struct File {
    listen: Option<String>,
    rules: Rules,
}

/// The listen address and rules after file and flags.
pub fn settings(args: &SchedulerArgs) -> Result<(std::net::SocketAddr, Rules)> {
    let file: File = match &args.config {
        Some(p) => {
            let text = std::fs::read_to_string(p).with_context(|| format!("reading {}", p.display()))?;
            toml::from_str(&text).with_context(|| format!("config file {}", p.display()))?
        }
        None => File::default(),
    };
    let listen = args.listen.clone().or(file.listen).unwrap_or_else(|| "0.0.0.0:65000".into());
    let addr = listen.parse().with_context(|| format!("config key `listen`: {listen:?} is not ip:port"))?;
    Ok((addr, file.rules))
}

/// `shoal scheduler`.
pub fn run(args: SchedulerArgs) -> Result<()> {
    let (addr, rules) = settings(&args)?;
    let rt = tokio::runtime::Builder::new_multi_thread().enable_all().build()?;
    rt.block_on(async move {
        let listener = tokio::net::TcpListener::bind(addr).await.with_context(|| format!("cannot listen on {addr}"))?;
        tracing::info!(%addr, "shoal scheduler started");
        tokio::select! {
            r = shoal_scheduler::serve(listener, rules) => r.context("scheduler listener failed"),
            _ = tokio::signal::ctrl_c() => Ok(()),
        }
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn reads_listen_and_rules() {
        let dir = tempfile::tempdir().unwrap();
        let f = dir.path().join("s.toml");
        std::fs::write(&f, "listen = \"127.0.0.1:7000\"\n[rules]\ncandidate_parents = 2\n").unwrap();
        let (addr, rules) = settings(&SchedulerArgs { config: Some(f.clone()), listen: None }).unwrap();
        assert_eq!((addr.port(), rules.candidate_parents), (7000, 2));
        let (addr, _) = settings(&SchedulerArgs { config: Some(f), listen: Some("127.0.0.1:7001".into()) }).unwrap();
        assert_eq!(addr.port(), 7001);
        assert!(settings(&SchedulerArgs { config: None, listen: Some("x".into()) })
            .unwrap_err()
            .to_string()
            .contains("listen"));
    }
}

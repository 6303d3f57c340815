//! `shoal scheduler`: the scheduler service (gRPC over TLS for cluster members; /metrics and
//! /healthz on a separate admin listener).

use std::net::SocketAddr;
use std::path::PathBuf;

use anyhow::{Context, Result};
use clap::Args;
use serde::Deserialize;
use shoal_core::sched::Config as Rules;
use tokio::net::TcpListener;

/// Flags of `shoal scheduler`.
#[derive(Args, Debug)]
pub struct SchedulerArgs {
    /// TOML file: `listen = "ADDR"` and a `[rules]` table (candidate_parents,
    /// back_to_source_per_site, max_children_per_parent, host_ttl_ms, …).
    #[arg(long, value_name = "FILE")]
    config: Option<PathBuf>,
    /// gRPC listener for cluster members (`listen`, default 0.0.0.0:65000).
    #[arg(long, value_name = "ADDR")]
    listen: Option<String>,
    /// `/metrics` and `/healthz` (`admin_listen`, default 127.0.0.1:65005).
    #[arg(long, value_name = "ADDR")]
    admin_listen: Option<String>,
    /// The cluster's shared secret (`cluster_token`); every daemon must prove it.
    #[arg(long, value_name = "TOKEN", env = "SHOAL_CLUSTER_TOKEN", hide_env_values = true)]
    cluster_token: Option<String>,
    /// A file holding the cluster token (`cluster_token_file`).
    #[arg(long, value_name = "FILE", env = "SHOAL_CLUSTER_TOKEN_FILE")]
    cluster_token_file: Option<PathBuf>,
}

#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields, default)]
struct File {
    listen: Option<String>,
    admin_listen: Option<String>,
    cluster_token: Option<String>,
    cluster_token_file: Option<PathBuf>,
    rules: Rules,
}

/// A scheduler's settings after file and flags.
#[derive(Debug)]
pub struct Settings {
    /// gRPC listener.
    pub listen: SocketAddr,
    /// Admin listener.
    pub admin_listen: SocketAddr,
    /// The cluster token.
    pub token: Vec<u8>,
    /// Decision rules.
    pub rules: Rules,
}

fn addr(key: &str, value: &str) -> Result<SocketAddr> {
    value.parse().with_context(|| format!("config key `{key}`: {value:?} is not ip:port"))
}

/// The settings after file and flags; the cluster token is required.
pub fn settings(args: &SchedulerArgs) -> Result<Settings> {
    let file: File = match &args.config {
        Some(p) => {
            let text = std::fs::read_to_string(p).with_context(|| format!("reading {}", p.display()))?;
            toml::from_str(&text).with_context(|| format!("config file {}", p.display()))?
        }
        None => File::default(),
    };
    let listen = args.listen.clone().or(file.listen).unwrap_or_else(|| "0.0.0.0:65000".into());
    let admin = args.admin_listen.clone().or(file.admin_listen).unwrap_or_else(|| "127.0.0.1:65005".into());
    // A token given by flag (or env) replaces both file keys.
    let (token, token_file) = if args.cluster_token.is_some() || args.cluster_token_file.is_some() {
        (args.cluster_token.clone(), args.cluster_token_file.clone())
    } else {
        (file.cluster_token, file.cluster_token_file)
    };
    let token = shoal_daemon::config::load_token(token.as_deref(), token_file.as_deref())?.context(
        "config key `cluster_token`: required (--cluster-token, SHOAL_CLUSTER_TOKEN or cluster_token_file); \
         daemons prove it on every connection",
    )?;
    Ok(Settings {
        listen: addr("listen", &listen)?,
        admin_listen: addr("admin_listen", &admin)?,
        token,
        rules: file.rules,
    })
}

/// Binds both listeners.
pub async fn listeners(listen: SocketAddr, admin: SocketAddr, token: &[u8]) -> Result<shoal_scheduler::Listeners> {
    let grpc = TcpListener::bind(listen).await.with_context(|| format!("scheduler cannot listen on {listen}"))?;
    let admin = TcpListener::bind(admin).await.with_context(|| format!("scheduler admin cannot listen on {admin}"))?;
    Ok(shoal_scheduler::Listeners { grpc, admin, token: token.into() })
}

/// `shoal scheduler`.
pub fn run(args: SchedulerArgs) -> Result<()> {
    let s = settings(&args)?;
    let rt = tokio::runtime::Builder::new_multi_thread().enable_all().build()?;
    rt.block_on(async move {
        let listeners = listeners(s.listen, s.admin_listen, &s.token).await?;
        tracing::info!(listen = %s.listen, admin = %s.admin_listen, "shoal scheduler started");
        tokio::select! {
            r = shoal_scheduler::serve(listeners, s.rules) => r.context("scheduler listener failed"),
            _ = tokio::signal::ctrl_c() => Ok(()),
        }
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn args(config: Option<PathBuf>) -> SchedulerArgs {
        SchedulerArgs { config, listen: None, admin_listen: None, cluster_token: None, cluster_token_file: None }
    }

    #[test]
    fn reads_listen_token_and_rules() {
        let dir = tempfile::tempdir().unwrap();
        let f = dir.path().join("s.toml");
        std::fs::write(
            &f,
            "listen = \"127.0.0.1:7000\"\ncluster_token = \"0123456789abcdef\"\n[rules]\ncandidate_parents = 2\n",
        )
        .unwrap();
        let s = settings(&args(Some(f.clone()))).unwrap();
        assert_eq!((s.listen.port(), s.admin_listen.port(), s.rules.candidate_parents), (7000, 65005, 2));
        assert_eq!(s.token, b"0123456789abcdef");
        let s = settings(&SchedulerArgs { listen: Some("127.0.0.1:7001".into()), ..args(Some(f)) }).unwrap();
        assert_eq!(s.listen.port(), 7001);
        let token = Some("0123456789abcdef".to_owned());
        let bad = SchedulerArgs { listen: Some("x".into()), cluster_token: token, ..args(None) };
        assert!(settings(&bad).unwrap_err().to_string().contains("listen"));
    }

    #[test]
    fn the_example_config_validates() {
        let path = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("../../deploy/scheduler.toml");
        let token = Some("0123456789abcdef".to_owned());
        let s = settings(&SchedulerArgs { cluster_token: token, ..args(Some(path)) }).unwrap();
        assert_eq!((s.listen.port(), s.admin_listen.to_string().as_str()), (65000, "127.0.0.1:65005"));
        assert_eq!(s.rules.back_to_source_per_site, 1);
    }

    #[test]
    fn the_token_is_required_and_checked() {
        assert!(format!("{:#}", settings(&args(None)).unwrap_err()).contains("cluster_token"));
        let short = SchedulerArgs { cluster_token: Some("short".into()), ..args(None) };
        assert!(format!("{:#}", settings(&short).unwrap_err()).contains("16 characters"));
        let dir = tempfile::tempdir().unwrap();
        let file = dir.path().join("token");
        std::fs::write(&file, "fedcba9876543210\n").unwrap();
        let s = settings(&SchedulerArgs { cluster_token_file: Some(file), ..args(None) }).unwrap();
        assert_eq!(s.token, b"fedcba9876543210");
    }
}

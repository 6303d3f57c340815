//! `shoal scheduler`: the scheduler service (gRPC over TLS for cluster members; /metrics and
//! /healthz on a separate admin listener; the preheat HTTP API on a third, when configured).

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
    /// The preheat HTTP API and registry notifications (`preheat_listen`; default: not served).
    /// Needs a preheat token.
    #[arg(long, value_name = "ADDR")]
    preheat_listen: Option<String>,
    /// The token callers of the preheat HTTP API present as `Authorization: Bearer`
    /// (`preheat_token`); not the cluster token.
    #[arg(long, value_name = "TOKEN", env = "SHOAL_PREHEAT_TOKEN", hide_env_values = true)]
    preheat_token: Option<String>,
    /// A file holding the preheat token (`preheat_token_file`).
    #[arg(long, value_name = "FILE", env = "SHOAL_PREHEAT_TOKEN_FILE")]
    preheat_token_file: Option<PathBuf>,
}

#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields, default)]
struct File {
    listen: Option<String>,
    admin_listen: Option<String>,
    cluster_token: Option<String>,
    cluster_token_file: Option<PathBuf>,
    preheat_listen: Option<String>,
    preheat_token: Option<String>,
    preheat_token_file: Option<PathBuf>,
    notification_registry: Option<String>,
    rules: Rules,
    preheat: shoal_core::preheat::Config,
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
    /// The preheat HTTP API: where, with which token, and the registry notifications name.
    pub preheat_api: Option<PreheatApi>,
    /// Preheat bounds and time-outs.
    pub preheat: shoal_core::preheat::Config,
}

/// Where the preheat HTTP API listens and what it needs.
#[derive(Debug)]
pub struct PreheatApi {
    /// Its listener.
    pub listen: SocketAddr,
    /// The token its callers present.
    pub token: Vec<u8>,
    /// `notification_registry`: the registry name notifications are preheated under.
    pub registry: Option<String>,
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
    let listen = args.listen.clone().or(file.listen.clone()).unwrap_or_else(|| "0.0.0.0:65000".into());
    let admin = args.admin_listen.clone().or(file.admin_listen.clone()).unwrap_or_else(|| "127.0.0.1:65005".into());
    // A token given by flag (or env) replaces both file keys.
    let (token, token_file) = if args.cluster_token.is_some() || args.cluster_token_file.is_some() {
        (args.cluster_token.clone(), args.cluster_token_file.clone())
    } else {
        (file.cluster_token.clone(), file.cluster_token_file.clone())
    };
    let token = shoal_daemon::config::load_token(token.as_deref(), token_file.as_deref())?.context(
        "config key `cluster_token`: required (--cluster-token, SHOAL_CLUSTER_TOKEN or cluster_token_file); \
         daemons prove it on every connection",
    )?;
    let preheat_api = preheat_api(args, &file, &token)?;
    Ok(Settings {
        listen: addr("listen", &listen)?,
        admin_listen: addr("admin_listen", &admin)?,
        token,
        rules: file.rules,
        preheat_api,
        preheat: file.preheat,
    })
}

/// The preheat API's settings: none without `preheat_listen`; with it, a preheat token is
/// required (fail closed) and must differ from the cluster token.
fn preheat_api(args: &SchedulerArgs, file: &File, cluster_token: &[u8]) -> Result<Option<PreheatApi>> {
    let Some(listen) = args.preheat_listen.clone().or(file.preheat_listen.clone()) else {
        return Ok(None);
    };
    let (token, token_file) = if args.preheat_token.is_some() || args.preheat_token_file.is_some() {
        (args.preheat_token.clone(), args.preheat_token_file.clone())
    } else {
        (file.preheat_token.clone(), file.preheat_token_file.clone())
    };
    let token = shoal_daemon::config::load_token(token.as_deref(), token_file.as_deref())
        .map_err(|e| anyhow::anyhow!(e.to_string().replace("cluster_token", "preheat_token")))?
        .context("config key `preheat_token`: required with `preheat_listen` (--preheat-token, SHOAL_PREHEAT_TOKEN or preheat_token_file)")?;
    anyhow::ensure!(
        token != cluster_token,
        "config key `preheat_token`: must differ from the cluster token (it crosses the network in plain HTTP)"
    );
    let registry = file.notification_registry.clone();
    if let Some(r) = &registry {
        shoal_core::preheat::ImageRef::parse(&format!("{r}/x"))
            .ok()
            .filter(|i| i.registry.as_deref() == Some(r))
            .with_context(|| format!("config key `notification_registry`: {r:?} is not host[:port]"))?;
    }
    Ok(Some(PreheatApi { listen: addr("preheat_listen", &listen)?, token, registry }))
}

/// Binds both listeners.
pub async fn listeners(listen: SocketAddr, admin: SocketAddr, token: &[u8]) -> Result<shoal_scheduler::Listeners> {
    let grpc = TcpListener::bind(listen).await.with_context(|| format!("scheduler cannot listen on {listen}"))?;
    let admin = TcpListener::bind(admin).await.with_context(|| format!("scheduler admin cannot listen on {admin}"))?;
    Ok(shoal_scheduler::Listeners { grpc, admin, token: token.into(), preheat: None })
}

/// `shoal scheduler`.
pub fn run(args: SchedulerArgs) -> Result<()> {
    let s = settings(&args)?;
    let rt = tokio::runtime::Builder::new_multi_thread().enable_all().build()?;
    rt.block_on(async move {
        let mut listeners = listeners(s.listen, s.admin_listen, &s.token).await?;
        if let Some(p) = &s.preheat_api {
            let listener = TcpListener::bind(p.listen)
                .await
                .with_context(|| format!("scheduler preheat API cannot listen on {}", p.listen))?;
            let (token, registry) = (p.token.as_slice().into(), p.registry.clone());
            listeners.preheat = Some(shoal_scheduler::PreheatListener { listener, token, registry });
        }
        let preheat_listen = s.preheat_api.as_ref().map(|p| p.listen);
        tracing::info!(listen = %s.listen, admin = %s.admin_listen, ?preheat_listen, "shoal scheduler started");
        let config = shoal_scheduler::ServeConfig { rules: s.rules, preheat: s.preheat };
        tokio::select! {
            r = shoal_scheduler::serve(listeners, config) => r.context("scheduler listener failed"),
            _ = tokio::signal::ctrl_c() => Ok(()),
        }
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn args(config: Option<PathBuf>) -> SchedulerArgs {
        SchedulerArgs {
            config,
            listen: None,
            admin_listen: None,
            cluster_token: None,
            cluster_token_file: None,
            preheat_listen: None,
            preheat_token: None,
            preheat_token_file: None,
        }
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
    fn the_preheat_api_needs_its_own_token() {
        let token = Some("0123456789abcdef".to_owned());
        let base = || SchedulerArgs { cluster_token: token.clone(), ..args(None) };
        assert!(settings(&base()).unwrap().preheat_api.is_none(), "off unless preheat_listen is set");
        let no_token = SchedulerArgs { preheat_listen: Some("127.0.0.1:7002".into()), ..base() };
        assert!(format!("{:#}", settings(&no_token).unwrap_err()).contains("preheat_token"));
        let same = SchedulerArgs { preheat_token: token.clone(), ..no_token };
        assert!(format!("{:#}", settings(&same).unwrap_err()).contains("differ"));
        let ok = SchedulerArgs { preheat_token: Some("a-preheat-token-0123".into()), ..same };
        let p = settings(&ok).unwrap().preheat_api.unwrap();
        assert_eq!((p.listen.port(), p.token.as_slice()), (7002, &b"a-preheat-token-0123"[..]));
        let dir = tempfile::tempdir().unwrap();
        let f = dir.path().join("s.toml");
        std::fs::write(&f, "notification_registry = \"not a host\"\n[preheat]\nmax_jobs = 3\n").unwrap();
        let bad = SchedulerArgs { config: Some(f.clone()), ..ok };
        assert!(format!("{:#}", settings(&bad).unwrap_err()).contains("notification_registry"));
        std::fs::write(&f, "notification_registry = \"registry.local:5000\"\n[preheat]\nmax_jobs = 3\n").unwrap();
        let s = settings(&SchedulerArgs { config: Some(f), ..bad }).unwrap();
        assert_eq!((s.preheat.max_jobs, s.preheat_api.unwrap().registry.as_deref()), (3, Some("registry.local:5000")));
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

//! `shoal daemon` and `shoal up`: flags that override the config file's keys of the same name,
//! then validation and start-up.

use std::path::PathBuf;

use anyhow::{Context, Result};
use clap::Args;
use shoal_daemon::config::{Config, Settings};

/// Flags of `shoal daemon`; each overrides the TOML key of the same name.
#[derive(Args, Debug, Default)]
pub struct DaemonArgs {
    /// TOML configuration file.
    #[arg(long, value_name = "FILE")]
    pub config: Option<PathBuf>,
    /// Where blobs and metadata live (`data_dir`).
    #[arg(long, value_name = "DIR")]
    pub data_dir: Option<PathBuf>,
    /// Mirror HTTP listener (`mirror_listen`, default 127.0.0.1:65001).
    #[arg(long, value_name = "ADDR")]
    pub mirror_listen: Option<String>,
    /// Admin listener for /healthz and /metrics (`admin_listen`, default 127.0.0.1:65003).
    #[arg(long, value_name = "ADDR")]
    pub admin_listen: Option<String>,
    /// Origin registry NAME=URL, repeatable; the first is the default (`[[registry]]`).
    #[arg(long, value_name = "NAME=URL")]
    pub registry: Vec<String>,
    /// Cache quota such as 20GiB (`cache_size`).
    #[arg(long, value_name = "SIZE")]
    pub cache_size: Option<String>,
    /// Free space the data_dir's file system keeps, such as 1GiB (`min_free_space`, default 1GiB).
    #[arg(long, value_name = "SIZE")]
    pub min_free_space: Option<String>,
    /// Scheduler URL, repeatable (`scheduler`); tasks are spread over them by rendezvous hashing.
    #[arg(long, value_name = "URL")]
    pub scheduler: Vec<String>,
    /// Peer QUIC listener, UDP (`peer_listen`, default 0.0.0.0:65002).
    #[arg(long, value_name = "ADDR")]
    pub peer_listen: Option<String>,
    /// DHT listener, TCP (`dht_listen`, default 0.0.0.0:65004); setting it turns the DHT on.
    #[arg(long, value_name = "ADDR")]
    pub dht_listen: Option<String>,
    /// Where to join the DHT, repeatable (`bootstrap`): another daemon's dht_listen, or a DNS
    /// name resolving to several (a headless service); turns the DHT on.
    #[arg(long, value_name = "ADDR")]
    pub bootstrap: Vec<String>,
    /// The IP other daemons dial (`advertise_addr`).
    #[arg(long, value_name = "IP")]
    pub advertise_addr: Option<String>,
    /// This node's site (`site`, default "default").
    #[arg(long, value_name = "NAME")]
    pub site: Option<String>,
    /// The cluster's shared secret (`cluster_token`); prefer cluster_token_file in the config.
    #[arg(long, value_name = "TOKEN", env = "SHOAL_CLUSTER_TOKEN", hide_env_values = true)]
    pub cluster_token: Option<String>,
    /// A file holding the cluster token (`cluster_token_file`).
    #[arg(long, value_name = "FILE", env = "SHOAL_CLUSTER_TOKEN_FILE")]
    pub cluster_token_file: Option<PathBuf>,
    /// Upload limit to peers, e.g. 100MiB/s; 0 = unlimited (`upload_limit`).
    #[arg(long, value_name = "RATE")]
    pub upload_limit: Option<String>,
    /// Download limit from peers (`download_limit`).
    #[arg(long, value_name = "RATE")]
    pub download_limit: Option<String>,
    /// Origin fetch limit (`origin_limit`).
    #[arg(long, value_name = "RATE")]
    pub origin_limit: Option<String>,
    /// This node's id among peers (`host_id`, default hostname-peerport).
    #[arg(long, value_name = "ID")]
    pub host_id: Option<String>,
    /// Connections each listener serves at once; more are refused (`max_connections`, default 1024).
    #[arg(long, value_name = "N")]
    pub max_connections: Option<usize>,
    /// Largest blob handled, such as 1TiB; larger ones are refused (`max_blob_size`, default 1TiB).
    #[arg(long, value_name = "SIZE")]
    pub max_blob_size: Option<String>,
    /// While the origin cannot decide, serve cached images only to clients it accepted within
    /// this long, such as 24h; 0 = never (`offline_grace`, default 24h).
    #[arg(long, value_name = "DURATION")]
    pub offline_grace: Option<String>,
}

/// Flags of `shoal up`: the daemon's, with data in ./shoal-data by default.
#[derive(Args, Debug)]
pub struct UpArgs {
    #[command(flatten)]
    daemon: DaemonArgs,
}

impl DaemonArgs {
    /// File (if any) → flags → validated settings.
    pub fn settings(&self, base: Config) -> Result<Settings> {
        let mut config = match &self.config {
            Some(path) => Config::load(path)?,
            None => base,
        };
        if let Some(v) = &self.data_dir {
            config.data_dir.clone_from(v);
        }
        if let Some(v) = &self.mirror_listen {
            config.mirror_listen.clone_from(v);
        }
        if let Some(v) = &self.admin_listen {
            config.admin_listen.clone_from(v);
        }
        if let Some(v) = &self.cache_size {
            config.cache_size.clone_from(v);
        }
        if let Some(v) = &self.min_free_space {
            config.min_free_space.clone_from(v);
        }
        if !self.scheduler.is_empty() {
            config.scheduler.clone_from(&self.scheduler);
        }
        if !self.bootstrap.is_empty() {
            config.bootstrap.clone_from(&self.bootstrap);
        }
        override_opt(&mut config.dht_listen, &self.dht_listen);
        override_opt(&mut config.advertise_addr, &self.advertise_addr);
        // A token given by flag (or env) replaces both file keys.
        if self.cluster_token.is_some() || self.cluster_token_file.is_some() {
            config.cluster_token.clone_from(&self.cluster_token);
            config.cluster_token_file.clone_from(&self.cluster_token_file);
        }
        override_opt(&mut config.host_id, &self.host_id);
        if let Some(n) = self.max_connections {
            config.max_connections = n;
        }
        for (key, flag) in [
            (&mut config.peer_listen, &self.peer_listen),
            (&mut config.site, &self.site),
            (&mut config.upload_limit, &self.upload_limit),
            (&mut config.download_limit, &self.download_limit),
            (&mut config.origin_limit, &self.origin_limit),
            (&mut config.max_blob_size, &self.max_blob_size),
            (&mut config.offline_grace, &self.offline_grace),
        ] {
            if let Some(v) = flag {
                key.clone_from(v);
            }
        }
        if !self.registry.is_empty() {
            config.registry = self.registry.iter().map(|r| Config::parse_registry_flag(r)).collect::<Result<_, _>>()?;
        }
        Ok(config.validate()?)
    }
}

fn override_opt<T: Clone>(key: &mut Option<T>, flag: &Option<T>) {
    if flag.is_some() {
        key.clone_from(flag);
    }
}

fn runtime() -> Result<tokio::runtime::Runtime> {
    tokio::runtime::Builder::new_multi_thread().enable_all().build().context("starting the tokio runtime")
}

/// `shoal daemon`.
pub fn run_daemon(args: DaemonArgs) -> Result<()> {
    let settings = args.settings(Config::default())?;
    runtime()?.block_on(async {
        let running = shoal_daemon::daemon::start(&settings).await?;
        serve_until_signal(running).await
    })
}

/// `shoal up`.
pub fn run_up(args: UpArgs) -> Result<()> {
    let base = Config {
        data_dir: PathBuf::from("shoal-data"),
        scheduler: vec![format!("http://{UP_SCHEDULER}")],
        peer_listen: "127.0.0.1:65002".into(),
        cluster_token: Some(random_token()?),
        ..Config::default()
    };
    let settings = args.daemon.settings(base)?;
    // The daemon and the scheduler share the token (random, unless --cluster-token is given).
    let token = settings.swarm.as_ref().map(|s| s.token.clone()).context("shoal up runs a scheduler")?;
    let token_file = write_token(&settings.data_dir, &token)?;
    runtime()?.block_on(async {
        let (grpc, admin) = (UP_SCHEDULER.parse()?, UP_SCHEDULER_ADMIN.parse()?);
        let listeners = crate::scheduler_cmd::listeners(grpc, admin, &token).await?;
        tokio::spawn(shoal_scheduler::serve(listeners, Default::default()));
        let running = shoal_daemon::daemon::start(&settings).await?;
        println!("{}", banner(&settings, &token_file, running.mirror_addr, running.admin_addr));
        serve_until_signal(running).await
    })
}

/// Where `shoal up` runs its scheduler.
const UP_SCHEDULER: &str = "127.0.0.1:65000";
/// Where `shoal up`'s scheduler serves `/metrics` and `/healthz`.
const UP_SCHEDULER_ADMIN: &str = "127.0.0.1:65005";

/// Writes the demo's token to `data_dir/cluster-token` (mode 0600), for `shoal status
/// --cluster-token-file` and for daemons that join the demo.
fn write_token(data_dir: &std::path::Path, token: &[u8]) -> Result<PathBuf> {
    use std::io::Write;
    use std::os::unix::fs::OpenOptionsExt;
    std::fs::create_dir_all(data_dir).with_context(|| format!("creating {}", data_dir.display()))?;
    let path = data_dir.join("cluster-token");
    let mut file = std::fs::OpenOptions::new()
        .write(true)
        .create(true)
        .truncate(true)
        .mode(0o600)
        .open(&path)
        .with_context(|| format!("writing {}", path.display()))?;
    file.write_all(token)?;
    file.write_all(b"\n")?;
    Ok(path)
}

/// A fresh cluster token for the one-node demo.
fn random_token() -> Result<String> {
    let mut bytes = [0u8; 16];
    std::io::Read::read_exact(&mut std::fs::File::open("/dev/urandom")?, &mut bytes)?;
    Ok(bytes.iter().map(|b| format!("{b:02x}")).collect())
}

async fn serve_until_signal(running: shoal_daemon::daemon::Running) -> Result<()> {
    let mut term = tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate())?;
    tokio::select! {
        () = running.wait() => anyhow::bail!("a listener stopped"),
        _ = tokio::signal::ctrl_c() => tracing::info!("interrupted; stopping"),
        _ = term.recv() => tracing::info!("terminated; stopping"),
    }
    Ok(())
}

fn banner(
    s: &Settings,
    token_file: &std::path::Path,
    mirror: std::net::SocketAddr,
    admin: std::net::SocketAddr,
) -> String {
    let registries: Vec<String> = s.registries.iter().map(|r| format!("{} ({})", r.name, r.url)).collect();
    format!(
        "Shoal is up.\n  scheduler:  http://{UP_SCHEDULER}  (shoal status --scheduler http://{UP_SCHEDULER} --cluster-token-file {})\n  mirror:     http://{mirror}  (registries: {})\n  admin:      http://{admin}/metrics  http://{admin}/healthz\n  data:       {}\n\n\
         Point your clients at it:\n  containerd: shoal config containerd --mirror {mirror} --write   (then restart containerd)\n  \
         dockerd:    shoal config docker --mirror {mirror} --write       (then restart dockerd)\n  \
         podman:     shoal config podman --mirror {mirror} --write\n  \
         or try it:  curl -s http://{mirror}/v2/library/alpine/manifests/latest -H 'Accept: application/vnd.oci.image.index.v1+json'\n\n\
         Ctrl-C stops it.",
        token_file.display(),
        registries.join(", "),
        s.data_dir.display()
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_example_config_validates() {
        let path = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("../../deploy/shoal.toml");
        let args = DaemonArgs { config: Some(path), ..DaemonArgs::default() };
        let s = args.settings(Config::default()).unwrap();
        assert_eq!(s.registries.len(), 2);
        assert_eq!(s.cache_size, 20 << 30);
    }

    #[test]
    fn flags_override_the_file() {
        let dir = tempfile::tempdir().unwrap();
        let file = dir.path().join("shoal.toml");
        std::fs::write(&file, "cache_size = \"1GiB\"\nmirror_listen = \"127.0.0.1:1\"\n[[registry]]\nname = \"a.io\"\nurl = \"https://a.io\"\n").unwrap();
        let args = DaemonArgs {
            config: Some(file.clone()),
            mirror_listen: Some("127.0.0.1:2".into()),
            ..DaemonArgs::default()
        };
        let s = args.settings(Config::default()).unwrap();
        assert_eq!(s.cache_size, 1 << 30);
        assert_eq!(s.mirror_listen.port(), 2);
        assert_eq!(s.registries[0].name, "a.io");
        let args = DaemonArgs {
            registry: vec!["b.io=http://127.0.0.1:5000".into(), "c.io=https://c.io".into()],
            ..DaemonArgs::default()
        };
        let s = args.settings(Config::default()).unwrap();
        assert_eq!(s.registries.len(), 2);
        assert_eq!(s.registries[0].name, "b.io");
        let bad = DaemonArgs { cache_size: Some("big".into()), ..DaemonArgs::default() };
        assert!(bad.settings(Config::default()).unwrap_err().to_string().contains("cache_size"));
        let args = DaemonArgs { max_connections: Some(8), max_blob_size: Some("2GiB".into()), ..DaemonArgs::default() };
        let s = args.settings(Config::default()).unwrap();
        assert_eq!((s.max_connections, s.max_blob_size), (8, 2 << 30));
        let bad = DaemonArgs { max_blob_size: Some("big".into()), ..DaemonArgs::default() };
        assert!(bad.settings(Config::default()).unwrap_err().to_string().contains("max_blob_size"));
        let args = DaemonArgs {
            bootstrap: vec!["10.0.0.1:7000".into(), "shoal-dht".into()],
            dht_listen: Some("127.0.0.1:7001".into()),
            cluster_token: Some("0123456789abcdef".into()),
            ..DaemonArgs::default()
        };
        let dht = args.settings(Config::default()).unwrap().swarm.unwrap().dht.unwrap();
        assert_eq!((dht.listen.port(), dht.bootstrap.len()), (7001, 2));
        let bad = DaemonArgs { registry: vec!["nourl".into()], ..DaemonArgs::default() };
        assert!(bad.settings(Config::default()).unwrap_err().to_string().contains("registry"));
    }
}

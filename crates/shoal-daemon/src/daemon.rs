//! Wiring: opens the store, recovers it, builds the shared parts and serves the mirror and admin
//! listeners (and, with a scheduler or the DHT, the peer listener and discovery) until
//! shutdown. No request logic lives here.

use std::net::SocketAddr;
use std::sync::Arc;

use axum::Router;
use tokio::net::TcpListener;

use shoal_core::picker::PickerConfig;

use crate::config::Settings;
use crate::discovery::dht::{Dht, DhtConfig, DhtError};
use crate::discovery::scheduler::Schedulers;
use crate::discovery::{Holder, Holdings};
use crate::download::swarm::Swarm;
use crate::download::tasks::Tasks;
use crate::limits::Limiter;
use crate::listener::HttpLimits;
use crate::metrics::Metrics;
use crate::mirror::site::{Knowledge, Site};
use crate::mirror::{self, Authz, Mirror};
use crate::origin::Origins;
use crate::peer::client::PeerClient;
use crate::peer::seeding::Seeds;
use crate::peer::server::{PeerLimits, ServerCtx};
use crate::store::meta::MetaStore;
use crate::store::meta_redb::RedbMeta;
use crate::store::paths::Paths;
use crate::store::pins::Pins;
use crate::store::space::Space;
use shoal_core::evict::Limits;
use shoal_core::seeding::SeedingConfig;

/// Why the daemon could not start.
#[derive(Debug, thiserror::Error)]
pub enum StartError {
    /// The data directory could not be created.
    #[error("data_dir {path}: {source}")]
    DataDir {
        /// The directory.
        path: String,
        /// The I/O error.
        source: std::io::Error,
    },
    /// The metadata store could not be opened or recovered.
    #[error("metadata store in data_dir: {0}")]
    Meta(#[from] crate::store::meta::MetaError),
    /// A listener could not bind.
    #[error("cannot listen on {key} {addr}: {source}")]
    Bind {
        /// The config key.
        key: &'static str,
        /// The address.
        addr: SocketAddr,
        /// The I/O error.
        source: std::io::Error,
    },
    /// The peer listener's QUIC endpoint could not be set up.
    #[error("peer_listen: {0}")]
    Endpoint(#[from] crate::peer::client::EndpointError),
    /// The scheduler clients could not be set up.
    #[error("peer_listen: {0}")]
    Peer(String),
    /// The HTTP client for origins could not be built.
    #[error("origin HTTP client: {0}")]
    Http(#[from] reqwest::Error),
    /// The DHT could not start (`dht_listen`).
    #[error("{0}")]
    Dht(#[from] DhtError),
}

/// A started daemon.
pub struct Running {
    /// Where the mirror listens.
    pub mirror_addr: SocketAddr,
    /// Where the admin listener listens.
    pub admin_addr: SocketAddr,
    /// Where the peer (QUIC) listener listens, with a scheduler or the DHT configured.
    pub peer_addr: Option<SocketAddr>,
    /// Where the DHT listens, when it is on.
    pub dht_addr: Option<SocketAddr>,
    tasks: Vec<tokio::task::JoinHandle<()>>,
}

impl Running {
    /// Waits until a listener stops (which only happens on an I/O failure).
    pub async fn wait(mut self) {
        let tasks = std::mem::take(&mut self.tasks);
        let _ = futures::future::select_all(tasks).await;
    }
}

impl Drop for Running {
    fn drop(&mut self) {
        self.tasks.iter().for_each(|t| t.abort());
    }
}

/// Starts the daemon in the current tokio runtime.
pub async fn start(settings: &Settings) -> Result<Running, StartError> {
    let paths = Paths::new(&settings.data_dir);
    paths.create().map_err(|source| StartError::DataDir { path: settings.data_dir.display().to_string(), source })?;
    let meta: Arc<dyn MetaStore> = Arc::new(RedbMeta::open(&paths.meta_db())?);
    let cached = crate::store::gc::recover(&paths, meta.as_ref())?;
    let metrics = Arc::new(Metrics::default());
    metrics.cache_bytes.set(cached as i64);
    let limits = Limits { quota: settings.cache_size, min_free: settings.min_free_space };
    let space = Arc::new(Space::new(paths.clone(), meta.clone(), Pins::default(), limits, cached));
    let faults = crate::fault::Faults::from_env();
    let mut tasks = Tasks::new(paths.clone(), meta.clone(), metrics.clone(), space.clone())
        .with_origin_limit(Limiter::new(settings.limits.origin))
        .with_faults(faults);
    let mut handles = Vec::new();
    let mut peer_addr = None;
    let mut endpoint = None;
    let seeds = Arc::new(Seeds::new(SeedingConfig::default()));
    let mut holdings = None;
    let mut peer_client = None;
    let mut authz = Authz::open(paths.root(), meta.clone(), settings.offline_grace)
        .map_err(|source| StartError::DataDir { path: settings.data_dir.display().to_string(), source })?;
    let mut preheat_schedulers = Vec::new();
    if let Some(swarm) = &settings.swarm {
        let ep = crate::peer::client::endpoint(swarm.peer_listen)?;
        let addr = ep.local_addr().map_err(|source| StartError::Bind {
            key: "peer_listen",
            addr: swarm.peer_listen,
            source,
        })?;
        if let Some(dht) = &swarm.dht {
            let me = Holder { host_id: swarm.host_id.clone(), addr: SocketAddr::new(swarm.advertise_ip, addr.port()) };
            let mut config =
                DhtConfig::new(dht.listen, swarm.advertise_ip, dht.bootstrap.clone(), swarm.token.clone(), me);
            config.members_gauge = metrics.dht_members.clone();
            holdings = Some(start_dht(config, meta.clone()).await?);
        }
        let schedulers = Schedulers::new(swarm, addr, settings.limits.upload)
            .map_err(|e| StartError::Peer(e.to_string()))?
            .with_live_gauge(metrics.schedulers_live.clone());
        let schedulers = Arc::new(schedulers);
        preheat_schedulers = schedulers.clients();
        if !swarm.schedulers.is_empty() {
            handles.push(tokio::spawn(schedulers.clone().announce_forever()));
        }
        let download = Arc::new(Limiter::new(settings.limits.download));
        let peers = Arc::new(PeerClient::new(ep.clone(), swarm.host_id.clone(), swarm.token.clone(), download));
        peer_client = Some(peers.clone());
        let driver = Arc::new(Swarm {
            schedulers,
            peers,
            picker: PickerConfig { urgent_window: 2, ..PickerConfig::default() },
            sessions: Default::default(),
            seeds: seeds.clone(),
            holdings: holdings.as_ref().map(|(h, _)| h.clone()),
        });
        if driver.schedulers.configured() {
            handles.push(tokio::spawn(driver.clone().follow_owners()));
        }
        tasks = tasks.with_swarm(driver);
        peer_addr = Some(addr);
        endpoint = Some(ep);
    }
    let tasks = Arc::new(tasks);
    let tasks_for_preheat = tasks.clone();
    if let (Some(swarm), Some(ep)) = (&settings.swarm, endpoint) {
        let ctx = ServerCtx {
            host_id: swarm.host_id.clone(),
            token: swarm.token.clone(),
            store: tasks.clone(),
            meta: meta.clone(),
            upload: Arc::new(Limiter::new(settings.limits.upload)),
            uploaded: metrics.uploaded_bytes.clone(),
            seeds,
            corrupt: faults.corrupt_uploads,
            site: Some(Arc::new(Knowledge { meta: meta.clone(), grants: authz.grants.clone() })),
        };
        let limits = PeerLimits { max_connections: settings.max_connections, ..PeerLimits::default() };
        handles.push(tokio::spawn(crate::peer::server::serve(ep, Arc::new(ctx), limits)));
    }
    let origins = Origins::new(&settings.registries)?;
    if let (Some((holdings, _)), Some(peers), Some(me)) = (&holdings, peer_client, peer_addr) {
        authz.site = Some(Site { peers, holdings: holdings.clone(), me });
    }
    let mirror = Arc::new(Mirror {
        origins,
        tasks,
        meta: meta.clone(),
        metrics: metrics.clone(),
        authz,
        max_blob_size: settings.max_blob_size,
    });

    let bind = |key, addr| async move {
        TcpListener::bind(addr).await.map_err(|source| StartError::Bind { key, addr, source })
    };
    let mirror_listener = bind("mirror_listen", settings.mirror_listen).await?;
    let admin_listener = bind("admin_listen", settings.admin_listen).await?;
    let mirror_addr = mirror_listener.local_addr().map_err(|source| StartError::Bind {
        key: "mirror_listen",
        addr: settings.mirror_listen,
        source,
    })?;
    let admin_addr = admin_listener.local_addr().map_err(|source| StartError::Bind {
        key: "admin_listen",
        addr: settings.admin_listen,
        source,
    })?;

    let limits = HttpLimits { max_connections: settings.max_connections, ..HttpLimits::default() };
    let serve = |listener: TcpListener, router: Router| tokio::spawn(crate::listener::serve(listener, router, limits));
    let admin = Arc::new(crate::admin::Admin::new(mirror.clone(), metrics.clone()));
    if let (Some(swarm), false) = (&settings.swarm, preheat_schedulers.is_empty()) {
        let ctx = crate::preheat::Ctx { mirror: mirror::router(mirror.clone()), tasks: tasks_for_preheat };
        handles.push(tokio::spawn(crate::preheat::serve(preheat_schedulers, swarm.host_id.clone(), ctx)));
    }
    handles.push(serve(mirror_listener, mirror::router(mirror)));
    handles.push(serve(admin_listener, crate::admin::router(admin)));
    let dht_addr = holdings.as_ref().map(|(_, addr)| *addr);
    handles.push(tokio::spawn(crate::store::gc::run(space, metrics, holdings.map(|(h, _)| h))));
    tracing::info!(%mirror_addr, %admin_addr, ?peer_addr, ?dht_addr, data_dir = %settings.data_dir.display(), "shoal daemon started");
    Ok(Running { mirror_addr, admin_addr, peer_addr, dht_addr, tasks: handles })
}

/// Starts the DHT and re-advertises, in the background, every complete blob of `meta`.
/// Returns the holdings (the DHT lives as long as they do) and where the DHT listens.
async fn start_dht(config: DhtConfig, meta: Arc<dyn MetaStore>) -> Result<(Arc<Holdings>, SocketAddr), StartError> {
    let dht = Dht::start(config).await?;
    let addr = dht.local_addr();
    let holdings = Arc::new(Holdings::new(Arc::new(dht), meta));
    let advertising = holdings.clone();
    tokio::spawn(async move {
        match advertising.advertise_held().await {
            Ok(n) => tracing::info!(blobs = n, "advertised the blobs held"),
            Err(e) => tracing::warn!(error = %e, "cannot list the blobs held to advertise them"),
        }
    });
    Ok((holdings, addr))
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::config::Config;
    use crate::discovery::conformance::eventually;
    use crate::discovery::Discovery;
    use crate::store::meta::{BlobRecord, BlobState, Durability};
    use shoal_core::{Digest, PieceLayout};

    const TOKEN: &str = "daemon-test-token-0123";

    /// A complete blob in `dir`'s store, as a previous run left it.
    fn held_blob(dir: &std::path::Path, data: &[u8]) -> Digest {
        let paths = Paths::new(dir);
        paths.create().unwrap();
        let digest = Digest::of(data);
        std::fs::create_dir_all(paths.blob(&digest).parent().unwrap()).unwrap();
        std::fs::write(paths.blob(&digest), data).unwrap();
        let mut record = BlobRecord::new(PieceLayout::for_size(data.len() as u64), 1);
        record.state = BlobState::Complete;
        record.piece_digests[0] = shoal_core::PieceDigest::of(data).hex();
        RedbMeta::open(&paths.meta_db()).unwrap().put_blob(&digest, &record, Durability::Sync).unwrap();
        digest
    }

    /// A daemon with no scheduler, the DHT on loopback, and `cache_size`.
    fn settings(dir: &std::path::Path, cache_size: &str) -> Settings {
        Config {
            data_dir: dir.into(),
            mirror_listen: "127.0.0.1:0".into(),
            admin_listen: "127.0.0.1:0".into(),
            peer_listen: "127.0.0.1:0".into(),
            dht_listen: Some("127.0.0.1:0".into()),
            cluster_token: Some(TOKEN.into()),
            host_id: Some("first".into()),
            cache_size: cache_size.into(),
            min_free_space: "0".into(),
            ..Config::default()
        }
        .validate()
        .unwrap()
    }

    /// Another member of the DHT, joined through `dht`.
    async fn probe(dht: SocketAddr) -> Dht {
        let me = Holder { host_id: "probe".into(), addr: ([127, 0, 0, 1], 9).into() };
        let loopback = [127, 0, 0, 1].into();
        let bootstrap = vec![dht.to_string().parse().unwrap()];
        Dht::start(DhtConfig::new("127.0.0.1:0".parse().unwrap(), loopback, bootstrap, TOKEN.into(), me)).await.unwrap()
    }

    #[tokio::test]
    async fn without_a_scheduler_the_dht_brings_the_peer_listener_and_advertises_what_is_held() {
        let dir = tempfile::tempdir().unwrap();
        let data = b"a layer held before the restart ".repeat(1000);
        let blob = held_blob(dir.path(), &data);
        let running = start(&settings(dir.path(), "1GiB")).await.unwrap();
        let (peer, dht) = (running.peer_addr.unwrap(), running.dht_addr.unwrap());
        let probe = probe(dht).await;
        let first = Holder { host_id: "first".into(), addr: peer };
        eventually("the probe finds the held blob", async || probe.holders(&blob).await.unwrap() == [first.clone()])
            .await;

        let ep = crate::peer::client::endpoint("127.0.0.1:0".parse().unwrap()).unwrap();
        let client = PeerClient::new(ep, "probe".into(), TOKEN.into(), Arc::new(Limiter::unlimited()));
        let table = client.fetch_digests(peer, &blob, 1 << 30).await.unwrap();
        assert!(table.complete);
        assert_eq!(table.digests, vec![Some(shoal_core::PieceDigest::of(&data))]);
    }

    #[tokio::test]
    async fn an_evicted_blob_is_withdrawn() {
        let dir = tempfile::tempdir().unwrap();
        let blob = held_blob(dir.path(), &[7; 4096]);
        // A quota smaller than the blob: the first gc round evicts it.
        let running = start(&settings(dir.path(), "1KiB")).await.unwrap();
        let probe = probe(running.dht_addr.unwrap()).await;
        eventually("the probe finds the blob", async || probe.holders(&blob).await.unwrap().len() == 1).await;
        eventually("the evicted blob is withdrawn", async || probe.holders(&blob).await.unwrap().is_empty()).await;
        assert!(!Paths::new(dir.path()).blob(&blob).exists());
    }
}

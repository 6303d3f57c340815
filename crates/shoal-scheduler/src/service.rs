//! The gRPC service: host announcements, one stream per (task, peer), statistics. Every call
//! comes over an authenticated session (see [`crate::session`]); a host id is spoken for only
//! by the session that announced it. `/metrics` and `/healthz` are on the admin listener.

use std::collections::HashMap;
use std::net::SocketAddr;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use axum::routing::get;
use shoal_core::sched::{Config, Decision, HostId, HostInfo, Offer, PieceRecorded, Scheduler, SessionId, Speaker};
use shoal_core::{Digest, PieceDigest};
use shoal_proto::scheduler as pb;
use shoal_proto::scheduler::peer_event::Event;
use tokio::sync::mpsc;
use tokio_stream::wrappers::UnboundedReceiverStream;
use tonic::{Request, Response, Status, Streaming};

use crate::convert;
use crate::metrics::{KindLabels, SchedulerMetrics};
use crate::preheat::Preheater;

/// How often daemons re-announce their host.
const REANNOUNCE_SECS: u32 = 10;
/// Parents a blob-mismatch report may name (more are ignored).
const MAX_REPORTED_PARENTS: usize = 64;
/// How often expired hosts are dropped and gauges refreshed.
const EXPIRE_EVERY: Duration = Duration::from_secs(5);

type Outbox = mpsc::UnboundedSender<Result<pb::SchedulerEvent, Status>>;

/// The scheduler service.
#[derive(Clone)]
pub struct SchedulerService {
    inner: Arc<Inner>,
}

struct Inner {
    core: Mutex<Scheduler>,
    epoch: Instant,
    metrics: Arc<SchedulerMetrics>,
    outboxes: Mutex<HashMap<Digest, HashMap<HostId, Outbox>>>,
    preheat: Arc<Preheater>,
}

impl SchedulerService {
    /// A service with the given decision rules (and default preheat bounds).
    pub fn new(config: Config, metrics: Arc<SchedulerMetrics>) -> Self {
        Self::with_preheat(config, metrics, Arc::new(Preheater::new(Default::default())))
    }

    /// A service with the given decision rules whose preheat jobs are `preheat`'s.
    pub fn with_preheat(config: Config, metrics: Arc<SchedulerMetrics>, preheat: Arc<Preheater>) -> Self {
        let inner = Inner {
            core: Mutex::new(Scheduler::new(config)),
            epoch: Instant::now(),
            metrics,
            outboxes: Mutex::new(HashMap::new()),
            preheat,
        };
        Self { inner: Arc::new(inner) }
    }
}

impl Inner {
    fn now(&self) -> u64 {
        self.epoch.elapsed().as_millis() as u64
    }

    /// Runs `f` on the core with the current time, timing it as a decision.
    fn with_core<T>(&self, f: impl FnOnce(&mut Scheduler, u64) -> T) -> T {
        let start = Instant::now();
        let now = self.now();
        let out = f(&mut self.core.lock().unwrap_or_else(|p| p.into_inner()), now);
        self.metrics.decision_seconds.observe(start.elapsed().as_secs_f64());
        out
    }

    fn count(&self, d: &Decision) {
        let kind = match d.kind() {
            shoal_core::sched::DecisionKind::BackToSource => "back_to_source",
            shoal_core::sched::DecisionKind::Parents => "parents",
            shoal_core::sched::DecisionKind::Wait => "wait",
        };
        self.metrics.decisions.get_or_create(&KindLabels { kind }).inc();
    }

    fn outboxes(&self) -> std::sync::MutexGuard<'_, HashMap<Digest, HashMap<HostId, Outbox>>> {
        self.outboxes.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// Sends `event` to every peer of the task.
    fn broadcast(&self, task: Digest, event: &pb::SchedulerEvent) {
        if let Some(peers) = self.outboxes().get(&task) {
            for outbox in peers.values() {
                let _ = outbox.send(Ok(event.clone()));
            }
        }
    }

    /// Sends a newly trusted piece digest to every other peer of the task.
    fn broadcast_digest(&self, task: Digest, from: &HostId, index: u32, digest: PieceDigest) {
        let epoch = self.with_core(|c, _| c.digest_epoch(task));
        let event = convert::digests(epoch, &[(index, digest)]);
        if let Some(peers) = self.outboxes().get(&task) {
            for (host, outbox) in peers {
                if host != from {
                    let _ = outbox.send(Ok(event.clone()));
                }
            }
        }
    }

    /// Sends the parents the core offered back to peers that did not ask (see `Offer`), as
    /// taken by the same core call as the decision that made them.
    fn send_offers(&self, offers: Vec<Offer>) {
        if offers.is_empty() {
            return;
        }
        self.metrics.offers.inc_by(offers.len() as u64);
        let boxes = self.outboxes();
        for offer in offers {
            if let Some(outbox) = boxes.get(&offer.task).and_then(|peers| peers.get(&offer.peer)) {
                let _ = outbox.send(Ok(convert::decision(&Decision::Parents(vec![offer.parent]))));
            }
        }
    }

    /// Applies one event of a peer's stream.
    fn apply(&self, task: Digest, host: &HostId, event: Event, outbox: &Outbox) {
        match event {
            Event::PieceFinished(p) => {
                let Ok(digest) = convert::piece_digest(&p.blake3) else { return };
                match self.with_core(|c, now| c.piece_finished(now, task, host, p.index, digest, p.from_origin)) {
                    Ok(PieceRecorded::DigestKept) => self.broadcast_digest(task, host, p.index, digest),
                    Ok(_) => {}
                    Err(e) => tracing::warn!(%task, host = %host.0, error = %e, "piece report refused"),
                }
            }
            Event::PieceFailed(f) => {
                let reason = convert::fail_reason(f.reason);
                self.metrics.piece_failures.get_or_create(&KindLabels { kind: reason.as_str() }).inc();
                let parent = HostId(f.parent_host_id);
                let _ = self.with_core(|c, now| c.piece_failed(now, task, host, f.index, &parent, reason));
            }
            Event::Reschedule(_) => {
                let decided = self.with_core(|c, now| c.reschedule(now, task, host).map(|d| (d, c.take_offers())));
                if let Ok((d, offers)) = decided {
                    self.count(&d);
                    let _ = outbox.send(Ok(convert::decision(&d)));
                    self.send_offers(offers);
                }
            }
            Event::BlobMismatch(m) => {
                self.metrics.piece_failures.get_or_create(&KindLabels { kind: "blob_mismatch" }).inc();
                let parents: Vec<HostId> =
                    m.parent_host_ids.into_iter().take(MAX_REPORTED_PARENTS).map(HostId).collect();
                tracing::warn!(%task, host = %host.0, epoch = m.epoch, "a peer found the blob forged; dropping the digest table it was built from");
                let (before, decided, after) = self.with_core(|c, now| {
                    let before = c.digest_epoch(task);
                    let decided = c.blob_mismatch(now, task, host, m.epoch, &parents).map(|d| (d, c.take_offers()));
                    (before, decided, c.digest_epoch(task))
                });
                if after != before {
                    // Every peer drops the forged table now, before it checks a piece from the
                    // peers that refetch from the origin against it (and blames them).
                    self.broadcast(task, &convert::digests(after, &[]));
                }
                if let Ok((d, offers)) = decided {
                    self.count(&d);
                    let _ = outbox.send(Ok(convert::decision(&d)));
                    self.send_offers(offers);
                }
            }
            Event::Done(_) => {
                let _ = self.with_core(|c, now| c.done(now, task, host));
            }
            Event::Failed(_) => {
                let _ = self.with_core(|c, now| c.failed(now, task, host));
            }
            Event::Register(_) => tracing::warn!(%task, host = %host.0, "second register on a peer stream ignored"),
        }
    }

    /// The authenticated session a request came over; none is a refusal (fail closed).
    fn session<T>(req: &Request<T>) -> Result<SessionId, Status> {
        req.extensions().get::<SessionId>().copied().ok_or_else(|| Status::unauthenticated("no authenticated session"))
    }

    /// Refuses a session that does not speak for `host`.
    fn check_speaker(&self, session: SessionId, host: &HostId) -> Result<(), Status> {
        match self.with_core(|c, _| c.speaker(session, host)) {
            Speaker::Owner => Ok(()),
            // The daemon announces its host, then registers again.
            Speaker::Unknown => Err(Status::failed_precondition(format!("host {host} is not announced"))),
            Speaker::Other => {
                self.metrics.refuse("host_taken");
                Err(Status::permission_denied(format!("host {host} is announced by another session")))
            }
        }
    }

    fn leave(&self, task: Digest, host: &HostId) {
        let _ = self.with_core(|c, now| c.left(now, task, host));
        let mut boxes = self.outboxes();
        if let Some(peers) = boxes.get_mut(&task) {
            peers.remove(host);
            if peers.is_empty() {
                boxes.remove(&task);
            }
        }
        self.metrics.peers.dec();
    }
}

#[tonic::async_trait]
impl pb::scheduler_server::Scheduler for SchedulerService {
    async fn announce_host(
        &self,
        req: Request<pb::HostAnnouncement>,
    ) -> Result<Response<pb::AnnounceHostReply>, Status> {
        let session = Inner::session(&req)?;
        let a = req.into_inner();
        if a.host_id.is_empty() || a.host_id.len() > 256 {
            return Err(Status::invalid_argument("host_id must be 1 to 256 bytes"));
        }
        a.peer_addr
            .parse::<SocketAddr>()
            .map_err(|e| Status::invalid_argument(format!("peer_addr {:?}: {e}", a.peer_addr)))?;
        let info = HostInfo {
            id: HostId(a.host_id),
            addr: a.peer_addr,
            site: a.site,
            upload_limit: a.upload_limit,
            load: a.load,
        };
        self.inner.with_core(|c, now| c.announce_host(now, session, info)).map_err(|e| {
            self.inner.metrics.refuse("host_taken");
            Status::permission_denied(e.to_string())
        })?;
        Ok(Response::new(pb::AnnounceHostReply { reannounce_secs: REANNOUNCE_SECS }))
    }

    type PeerStream = UnboundedReceiverStream<Result<pb::SchedulerEvent, Status>>;

    async fn peer(&self, req: Request<Streaming<pb::PeerEvent>>) -> Result<Response<Self::PeerStream>, Status> {
        let session = Inner::session(&req)?;
        let mut inbound = req.into_inner();
        let first = inbound.message().await?.and_then(|m| m.event);
        let Some(Event::Register(r)) = first else {
            return Err(Status::invalid_argument("the first peer event must be register"));
        };
        let task = convert::task_id(&r.task_id)?;
        let layout = convert::layout(r.size, r.piece_size)?;
        let have = convert::bitmap(layout.count(), &r.have)?;
        let host = HostId(r.host_id);
        self.inner.check_speaker(session, &host)?;
        let inner = self.inner.clone();
        let (decision, offers) = inner
            .with_core(|c, now| c.register(now, task, &host, layout, have).map(|d| (d, c.take_offers())))
            .map_err(|e| Status::failed_precondition(e.to_string()))?;
        inner.count(&decision);
        let (outbox, rx) = mpsc::unbounded_channel();
        let (epoch, known) = inner.with_core(|c, _| (c.digest_epoch(task), c.piece_digests(task)));
        if !known.is_empty() {
            let _ = outbox.send(Ok(convert::digests(epoch, &known)));
        }
        let _ = outbox.send(Ok(convert::decision(&decision)));
        inner.outboxes().entry(task).or_default().insert(host.clone(), outbox.clone());
        inner.send_offers(offers);
        inner.metrics.peers.inc();
        tokio::spawn(async move {
            while let Ok(Some(msg)) = inbound.message().await {
                if let Some(event) = msg.event {
                    inner.apply(task, &host, event, &outbox);
                }
            }
            inner.leave(task, &host);
        });
        Ok(Response::new(UnboundedReceiverStream::new(rx)))
    }

    async fn stats(&self, req: Request<pb::StatsRequest>) -> Result<Response<pb::StatsReply>, Status> {
        Inner::session(&req)?;
        let id = req.into_inner().task_id;
        let tasks = if id.is_empty() {
            self.inner.with_core(|c, _| c.stats_all())
        } else {
            let task = convert::task_id(&id)?;
            self.inner.with_core(|c, _| c.stats(task)).into_iter().collect()
        };
        let hosts = self.inner.with_core(|c, _| c.hosts().count()) as u32;
        Ok(Response::new(pb::StatsReply { hosts, tasks: tasks.iter().map(convert::stats).collect() }))
    }

    async fn preheat(&self, req: Request<pb::PreheatRequest>) -> Result<Response<pb::PreheatStatus>, Status> {
        Inner::session(&req)?;
        let r = req.into_inner();
        let request = shoal_core::preheat::Request::parse(&r.image, &r.platforms, &r.sites)
            .map_err(|e| Status::invalid_argument(e.to_string()))?;
        let (view, joined) = self.inner.preheat.submit(request).map_err(|e| crate::preheat::refused(&e))?;
        Ok(Response::new(crate::preheat::status(&view, joined)))
    }

    async fn get_preheat(&self, req: Request<pb::PreheatQuery>) -> Result<Response<pb::PreheatStatus>, Status> {
        Inner::session(&req)?;
        let id = req.into_inner().id;
        let view = self.inner.preheat.job(id).ok_or_else(|| Status::not_found(format!("no preheat job {id}")))?;
        Ok(Response::new(crate::preheat::status(&view, false)))
    }

    type PreheatJobsStream = UnboundedReceiverStream<Result<pb::PreheatJob, Status>>;

    async fn preheat_jobs(
        &self,
        req: Request<Streaming<pb::PreheatReport>>,
    ) -> Result<Response<Self::PreheatJobsStream>, Status> {
        let session = Inner::session(&req)?;
        let mut inbound = req.into_inner();
        let first = inbound.message().await?.and_then(|m| m.report);
        let Some(pb::preheat_report::Report::Hello(hello)) = first else {
            return Err(Status::invalid_argument("the first preheat report must be hello"));
        };
        let host = HostId(hello.host_id);
        self.inner.check_speaker(session, &host)?;
        let site = self.inner.with_core(|c, _| c.host(&host).map(|h| h.site.clone()));
        let site = site.ok_or_else(|| Status::failed_precondition(format!("host {host} is not announced")))?;
        let (outbox, rx) = mpsc::unbounded_channel();
        let preheat = self.inner.preheat.clone();
        let generation = preheat.worker_joined(&host.0, &site, outbox);
        tokio::spawn(async move {
            while let Ok(Some(msg)) = inbound.message().await {
                if let Some(report) = msg.report {
                    preheat.report(&host.0, report);
                }
            }
            preheat.worker_left(&host.0, generation);
        });
        Ok(Response::new(UnboundedReceiverStream::new(rx)))
    }
}

/// The listeners of a scheduler and the cluster token its clients must prove.
pub struct Listeners {
    /// gRPC, TLS with the membership proof.
    pub grpc: tokio::net::TcpListener,
    /// `/metrics` and `/healthz`, plain HTTP (keep it off the network, or behind a firewall).
    pub admin: tokio::net::TcpListener,
    /// The cluster token.
    pub token: Arc<[u8]>,
    /// The preheat HTTP API, if it is served (see [`crate::http_api`]).
    pub preheat: Option<PreheatListener>,
}

/// The preheat HTTP API's listener and what it needs.
pub struct PreheatListener {
    /// Plain HTTP.
    pub listener: tokio::net::TcpListener,
    /// The token its callers present (`Authorization: Bearer`); never the cluster token.
    pub token: Arc<[u8]>,
    /// Replaces the registry that registry notifications name (`notification_registry`).
    pub registry: Option<String>,
}

/// What `shoal scheduler` decides by: the scheduler's rules and the preheat bounds.
#[derive(Debug, Clone, Default)]
pub struct ServeConfig {
    /// Parent choice, origin budget, host TTL.
    pub rules: Config,
    /// Preheat jobs: bounds and time-outs.
    pub preheat: shoal_core::preheat::Config,
}

/// Caps of the preheat HTTP listener: few callers (registries, Harbor, scripts).
fn preheat_limits() -> shoal_daemon::listener::HttpLimits {
    shoal_daemon::listener::HttpLimits {
        max_connections: 64,
        idle_timeout: Duration::from_secs(30),
        ..Default::default()
    }
}

/// Serves the scheduler until a listener fails.
pub async fn serve(listeners: Listeners, config: ServeConfig) -> std::io::Result<()> {
    let metrics = Arc::new(SchedulerMetrics::default());
    let preheat = Arc::new(Preheater::new(config.preheat));
    tokio::spawn(preheat.clone().tick_forever());
    let service = SchedulerService::with_preheat(config.rules, metrics.clone(), preheat.clone());
    let inner = service.inner.clone();
    tokio::spawn(async move {
        loop {
            tokio::time::sleep(EXPIRE_EVERY).await;
            let (hosts, tasks) = inner.with_core(|c, now| {
                c.expire(now);
                (c.hosts().count(), c.stats_all().len())
            });
            inner.metrics.hosts.set(hosts as i64);
            inner.metrics.tasks.set(tasks as i64);
            let (jobs, workers) = inner.preheat.counts();
            inner.metrics.preheat_jobs.set(jobs as i64);
            inner.metrics.preheat_hosts.set(workers as i64);
        }
    });
    let preheat_listener = listeners.preheat;
    let preheat_api = async move {
        match preheat_listener {
            Some(p) => {
                let api = crate::http_api::Api { preheat, token: p.token, registry: p.registry };
                shoal_daemon::listener::serve(p.listener, crate::http_api::router(Arc::new(api)), preheat_limits())
                    .await
            }
            None => std::future::pending().await,
        }
    };
    let tls = crate::tls::server_config().map_err(std::io::Error::other)?;
    let inner = service.inner.clone();
    let grpc = crate::session::Listener {
        token: listeners.token,
        tls,
        metrics: metrics.clone(),
        ended: Arc::new(move |session| inner.with_core(|c, _| c.session_ended(session))),
    };
    let router = tonic::service::Routes::new(pb::scheduler_server::SchedulerServer::new(service)).into_axum_router();
    let admin = axum::Router::new().route("/healthz", get(|| async { "ok\n" })).route(
        "/metrics",
        get(move || {
            let m = metrics.clone();
            async move { m.encode() }
        }),
    );
    let limits = shoal_daemon::listener::HttpLimits::default();
    tokio::select! {
        r = grpc.serve(listeners.grpc, router) => r,
        () = shoal_daemon::listener::serve(listeners.admin, admin, limits) => Ok(()),
        () = preheat_api => Ok(()),
    }
}

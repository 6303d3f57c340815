//! A blob's download through the swarm: the driver of [`shoal_core::child::Child`].
//!
//! The machine decides everything (which piece from whom, when a parent is stalled or slow,
//! busy back-off, bad parents, falling back to the origin, registering again); this driver
//! does what it says — piece requests over QUIC, origin runs over HTTP, reports to the
//! scheduler — and feeds it the results, the bytes as they arrive, the readers' positions and
//! the time. A pull never fails because of the swarm: every road ends at the origin.

use std::collections::HashMap;
use std::net::SocketAddr;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use bytes::Bytes;
use futures::future::BoxFuture;
use futures::FutureExt;
use shoal_core::child::{Action, Checked, Child, ChildConfig, Failure, Offered, ParentId, Report, RequestId, Verdict};
use shoal_core::picker::PickerConfig;
use shoal_core::rendezvous::{Rendezvous, RendezvousConfig, Step, WhyOrigin};
use shoal_core::sched::FailReason as CoreReason;
use shoal_core::{Bitmap, Digest, PieceDigest, PieceLayout};
use shoal_proto::scheduler::{
    peer_event, scheduler_event, BlobMismatch, FailReason, PieceFailed, PieceFinished, SchedulerEvent,
};
use tokio::sync::{mpsc, watch};
use tokio::task::AbortHandle;

use crate::discovery::scheduler::{SchedError, Schedulers, Session};
use crate::discovery::Holdings;
use crate::download::counters::TaskCounters;
use crate::download::dht::{DhtSource, Found};
use crate::download::error::DownloadError;
use crate::download::origin::{verify, Chunk, OriginSource};
use crate::download::readers::Readers;
use crate::download::writer::{Progress, Verified};
use crate::metrics::{Metrics, ReasonLabels, SourceLabels};
use crate::peer::client::PeerClient;
use crate::peer::seeding::Seeds;
use crate::peer::PeerError;

/// Completed blobs whose sessions this daemon keeps open (so the scheduler keeps offering it as
/// their parent), most recent first.
const MAX_KEPT_SESSIONS: usize = 512;
/// How often the bytes of running requests are read for the progress deadlines.
const PROGRESS_EVERY: Duration = Duration::from_millis(200);
/// Steered by the DHT: how often holders and their tables are looked up.
const LOOKUP_EVERY: u64 = 500;
/// With no scheduler session: how often the schedulers are tried again.
const SCHEDULER_RETRY: u64 = 5000;

/// What a daemon needs to download through the swarm.
pub struct Swarm {
    /// The schedulers.
    pub schedulers: Arc<Schedulers>,
    /// Connections to parents.
    pub peers: Arc<PeerClient>,
    /// Piece picking rules.
    pub picker: PickerConfig,
    /// Open sessions of completed blobs: the scheduler keeps offering this daemon as a parent
    /// while they stay open. The oldest is closed past [`MAX_KEPT_SESSIONS`].
    pub sessions: std::sync::Mutex<std::collections::VecDeque<KeptSession>>,
    /// Blobs fetched from the origin here, whose pieces the peer server hands out one child
    /// at a time.
    pub seeds: Arc<Seeds>,
    /// The DHT: parents when no scheduler answers, and where this node is found.
    pub holdings: Option<Arc<Holdings>>,
}

impl Swarm {
    fn keep_session(&self, digest: Digest, layout: PieceLayout, session: Session) {
        let mut sessions = self.lock_sessions();
        sessions.push_front(KeptSession { digest, layout, session });
        sessions.truncate(MAX_KEPT_SESSIONS);
    }

    fn lock_sessions(&self) -> std::sync::MutexGuard<'_, std::collections::VecDeque<KeptSession>> {
        self.sessions.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// Keeps each kept session with the scheduler that owns its blob: when a scheduler
    /// dies or comes back, the sessions opened with another one are opened again with the
    /// owner, so that newcomers it steers find this daemon. Runs forever.
    pub async fn follow_owners(self: Arc<Self>) {
        let mut changes = self.schedulers.changes();
        while changes.changed().await.is_ok() {
            let stale: Vec<(Digest, PieceLayout)> = self
                .lock_sessions()
                .iter()
                .filter(|s| self.schedulers.owner(&s.digest) != Some(s.session.scheduler))
                .map(|s| (s.digest, s.layout))
                .collect();
            for (digest, layout) in stale {
                let full = Bitmap::full(layout.count());
                let Ok(session) = self.schedulers.open(&digest, layout, &full).await else { continue };
                if let Some(kept) = self.lock_sessions().iter_mut().find(|s| s.digest == digest) {
                    kept.session = session;
                }
            }
        }
    }

    fn config(&self) -> ChildConfig {
        ChildConfig { picker: self.picker, ..ChildConfig::default() }
    }
}

/// A completed blob's session, kept open so the scheduler offers this daemon as its parent.
pub struct KeptSession {
    digest: Digest,
    layout: PieceLayout,
    session: Session,
}

/// The writer's side of a download.
pub struct Sink<'a> {
    /// The writer's progress (pieces held).
    pub have: &'a mut watch::Receiver<Progress>,
    /// Chunks to the writer.
    pub tx: &'a mpsc::Sender<Chunk>,
    /// Pieces the writer stored, with their digests.
    pub finished: mpsc::UnboundedReceiver<(u32, PieceDigest)>,
}

/// A piece from a parent and its sha256 (computed off the async workers).
type Fetched = Result<(Bytes, PieceDigest), PeerError>;

/// Both ends of a channel the driver feeds itself through.
type Channel<T> = (mpsc::UnboundedSender<T>, mpsc::UnboundedReceiver<T>);

/// A request running on its own task.
struct Running {
    piece: u32,
    abort: AbortHandle,
    bytes: Arc<AtomicU64>,
}

struct Driver<'a> {
    swarm: &'a Swarm,
    metrics: &'a Metrics,
    counters: &'a TaskCounters,
    origin: &'a OriginSource<'a>,
    digest: Digest,
    layout: PieceLayout,
    started: Instant,
    session: Option<Session>,
    addrs: Vec<Option<SocketAddr>>,
    running: HashMap<RequestId, Running>,
    results: Channel<(RequestId, Fetched)>,
    haves: Channel<(ParentId, Bitmap)>,
    watchers: Vec<AbortHandle>,
    origin_job: Option<BoxFuture<'a, Result<(), DownloadError>>>,
    /// A registration running; `true` when the machine asked for it (it wants the answer).
    register_job: Option<(bool, BoxFuture<'a, Result<Session, SchedError>>)>,
    dht: Option<Arc<DhtSource>>,
    lookup_job: Option<BoxFuture<'a, Found>>,
    next_lookup: u64,
    /// Steered by the DHT: who fetches from the origin (see `shoal_core::rendezvous`).
    rendezvous: Rendezvous,
    /// Pieces whose DHT digests the machine has.
    dht_digests: std::collections::HashSet<u32>,
    /// The scheduler's last digest table generation (DHT digests extend it).
    epoch: u32,
    retry_scheduler_at: u64,
    /// Steered by the DHT, the blob did not verify: the origin has the last word.
    pending_origin: bool,
    /// The origin's last failure: the download's error if the machine gives up.
    origin_error: Option<DownloadError>,
}

/// Downloads the pieces the writer lacks; returns once the blob is complete and verified.
pub async fn download(
    swarm: &Swarm,
    metrics: &Metrics,
    counters: &TaskCounters,
    origin: &OriginSource<'_>,
    sink: Sink<'_>,
    readers: Arc<Readers>,
) -> Result<(), DownloadError> {
    let (digest, layout) = (origin.digest, origin.layout);
    let held = sink.have.borrow().have.clone();
    let session = swarm.schedulers.open(&digest, layout, &held).await;
    if let Err(e) = &session {
        tracing::info!(%digest, error = %e, "no scheduler; fetching from the origin unless parents are found");
    }
    let started = Instant::now();
    let host_id = swarm.schedulers.host_id();
    let tie = tie_offset(&host_id, &digest);
    let dht = DhtSource::new(swarm.holdings.as_ref(), swarm.peers.clone(), digest, layout, host_id).map(Arc::new);
    if let Some(dht) = &dht {
        dht.advertise();
    }
    let by_dht = session.is_err() && dht.as_ref().is_some_and(|d| d.ready());
    let mut child = Child::new(swarm.config(), layout, held, tie, 0, session.is_ok() || by_dht);
    let mut d = Driver {
        swarm,
        metrics,
        counters,
        origin,
        digest,
        layout,
        started,
        session: session.ok(),
        addrs: Vec::new(),
        running: HashMap::new(),
        results: mpsc::unbounded_channel(),
        haves: mpsc::unbounded_channel(),
        watchers: Vec::new(),
        origin_job: None,
        register_job: None,
        dht,
        lookup_job: None,
        next_lookup: 0,
        rendezvous: if by_dht {
            Rendezvous::new(RendezvousConfig::default())
        } else {
            Rendezvous::agreed(RendezvousConfig::default())
        },
        dht_digests: Default::default(),
        epoch: 0,
        retry_scheduler_at: SCHEDULER_RETRY,
        pending_origin: false,
        origin_error: None,
    };
    let result = d.run(&mut child, sink, readers).await;
    d.running.values().for_each(|r| r.abort.abort());
    d.watchers.iter().for_each(|w| w.abort());
    metrics.task_parents.observe(child.parents().len() as f64);
    result
}

impl<'a> Driver<'a> {
    fn now(&self) -> u64 {
        self.started.elapsed().as_millis() as u64
    }

    async fn run(&mut self, child: &mut Child, mut sink: Sink<'_>, readers: Arc<Readers>) -> Result<(), DownloadError> {
        let mut positions = readers.watch();
        child.readers(self.now(), &readers.pieces());
        loop {
            while let Some(action) = child.poll_action() {
                if self.act(child, action, &mut sink).await? {
                    return Ok(());
                }
            }
            if std::mem::take(&mut self.pending_origin) {
                child.back_to_source(self.now());
                continue;
            }
            let wake = self.wake_in(child);
            tokio::select! {
                event = next_event(&mut self.session) => self.on_event(child, event),
                Some((index, digest)) = sink.finished.recv() => child.piece_stored(self.now(), index, digest),
                Some((parent, have)) = self.haves.1.recv() => child.parent_have(self.now(), parent, have),
                Some((id, fetched)) = self.results.1.recv() => self.on_piece(child, id, fetched, sink.tx).await?,
                done = async { self.origin_job.as_mut().expect("guarded").await }, if self.origin_job.is_some() => {
                    self.origin_job = None;
                    self.on_origin(child, done)?;
                }
                opened = async { (&mut self.register_job.as_mut().expect("guarded").1).await }, if self.register_job.is_some() => {
                    let asked = self.register_job.take().is_some_and(|(asked, _)| asked);
                    self.on_registered(child, opened, asked);
                }
                found = async { self.lookup_job.as_mut().expect("guarded").await }, if self.lookup_job.is_some() => {
                    self.lookup_job = None;
                    self.on_found(child, found);
                }
                Ok(()) = positions.changed() => {
                    let pieces = positions.borrow_and_update().clone();
                    child.readers(self.now(), &pieces);
                }
                _ = tokio::time::sleep(wake) => {
                    self.read_progress(child);
                    child.handle_timeout(self.now());
                    self.steer(child);
                }
            }
        }
    }

    /// Until the machine's next deadline, or the next progress reading while requests run.
    fn wake_in(&self, child: &Child) -> Duration {
        let now = self.now();
        let mut next = child.poll_timeout().unwrap_or(now + 3_600_000);
        if self.steered_by_dht() && !child.at_origin() {
            next = next.min(self.next_lookup);
        }
        if self.session.is_none() && self.swarm.schedulers.configured() {
            next = next.min(self.retry_scheduler_at);
        }
        let deadline = Duration::from_millis(next.saturating_sub(now));
        if self.running.is_empty() {
            deadline
        } else {
            deadline.min(PROGRESS_EVERY)
        }
    }

    /// No scheduler session, and the DHT knows other members.
    fn steered_by_dht(&self) -> bool {
        self.session.is_none() && self.dht.as_ref().is_some_and(|d| d.ready())
    }

    /// Without a scheduler: DHT lookups while pieces are missing, and the schedulers tried
    /// again now and then.
    fn steer(&mut self, child: &mut Child) {
        let now = self.now();
        let retry = self.session.is_none() && self.register_job.is_none() && self.swarm.schedulers.configured();
        if retry && now >= self.retry_scheduler_at {
            self.retry_scheduler_at = now + SCHEDULER_RETRY;
            self.register(child, false);
        }
        if !self.steered_by_dht() || child.at_origin() || self.lookup_job.is_some() || now < self.next_lookup {
            return;
        }
        self.next_lookup = now + LOOKUP_EVERY;
        if let Some(dht) = self.dht.clone() {
            self.lookup_job = Some(async move { dht.look().await }.boxed());
        }
    }

    /// Holders and digests from the DHT: new parents and digests for the machine, and the
    /// rendezvous on who fetches from the origin.
    fn on_found(&mut self, child: &mut Child, found: Found) {
        let now = self.now();
        if !self.steered_by_dht() {
            return;
        }
        let fresh: Vec<(u32, PieceDigest)> =
            found.digests.iter().copied().filter(|(i, _)| !self.dht_digests.contains(i)).collect();
        self.dht_digests.extend(fresh.iter().map(|(i, _)| *i));
        child.digests(now, self.epoch, fresh);
        let has_pieces = found.has_pieces();
        let picked = !has_pieces && self.dht.as_ref().is_some_and(|d| d.fetches_from_origin(&found));
        child.parents_offered(now, found.offered);
        match self.rendezvous.found(now, has_pieces, picked) {
            Step::Go => {}
            Step::LookAgainAt(at) => self.next_lookup = at,
            Step::Origin(why) => {
                match why {
                    WhyOrigin::Picked => {
                        tracing::info!(digest = %self.digest, "no member holds this blob and the rendezvous picked this one: fetching it from the origin")
                    }
                    WhyOrigin::NoPiecesInTime => {
                        tracing::info!(digest = %self.digest, "the member picked to fetch this blob has no piece yet; fetching from the origin")
                    }
                }
                child.back_to_source(now);
            }
        }
    }

    /// The origin fetch ended. Its failure is the machine's to weigh (parents may hold the
    /// blob); a writer that stopped ends the download.
    fn on_origin(&mut self, child: &mut Child, done: Result<(), DownloadError>) -> Result<(), DownloadError> {
        match done {
            Ok(()) => child.origin_done(self.now()),
            Err(e @ (DownloadError::Origin(_) | DownloadError::OriginRetries { .. })) => {
                tracing::warn!(digest = %self.digest, error = %e, "origin fetch failed; looking for parents");
                self.origin_error = Some(e);
                child.origin_failed(self.now());
            }
            Err(e) => return Err(e),
        }
        Ok(())
    }

    fn register(&mut self, child: &Child, asked: bool) {
        let (schedulers, digest, layout, held) =
            (self.swarm.schedulers.clone(), self.digest, self.layout, child.held().clone());
        self.register_job = Some((asked, async move { schedulers.open(&digest, layout, &held).await }.boxed()));
    }

    fn read_progress(&self, child: &mut Child) {
        let now = self.now();
        for (id, r) in &self.running {
            child.progress(now, *id, r.bytes.load(Ordering::Relaxed));
        }
    }

    /// Carries out one decision; true when the download is over.
    async fn act(&mut self, child: &mut Child, action: Action, sink: &mut Sink<'_>) -> Result<bool, DownloadError> {
        match action {
            Action::Watch(parent) => self.watch(child, parent),
            Action::Request { id, parent, piece } => self.request(id, parent, piece),
            Action::Cancel(id) => {
                if let Some(r) = self.running.remove(&id) {
                    r.abort.abort();
                }
            }
            Action::Forget(parent) => {
                if let Some(addr) = self.addrs[parent.0] {
                    self.swarm.peers.forget(addr);
                }
            }
            Action::FetchOrigin(runs) => {
                self.swarm.seeds.mark(&self.digest);
                let (origin, mut have, tx) = (self.origin, sink.have.clone(), sink.tx.clone());
                self.origin_job = Some(async move { origin.fetch(runs, &mut have, &tx).await }.boxed());
            }
            Action::Report(report) => self.report(child, report),
            Action::Register => {
                if self.register_job.is_none() {
                    self.register(child, true);
                } else if let Some((asked, _)) = &mut self.register_job {
                    *asked = true;
                }
            }
            Action::Verify => {
                let checked = match verify(sink.tx).await? {
                    Verified::Complete => Checked::Complete,
                    Verified::Dropped { pieces, kept } => {
                        self.metrics.blob_mismatches.inc();
                        tracing::warn!(digest = %self.digest, pieces = pieces.len(), "blob did not verify; dropped the pieces from parents and their digests");
                        Checked::Dropped { dropped: pieces, kept }
                    }
                };
                child.verified(self.now(), checked);
            }
            Action::GiveUp => {
                tracing::warn!(digest = %self.digest, "neither the origin nor a parent can deliver this blob");
                return Err(self.origin_error.take().unwrap_or(DownloadError::NoSource));
            }
            Action::Done => {
                if let Some(dht) = &self.dht {
                    dht.advertise();
                }
                if let Some(session) = self.session.take() {
                    self.swarm.keep_session(self.digest, self.layout, session);
                }
                return Ok(true);
            }
        }
        Ok(false)
    }

    /// A new parent: remember its address and follow its "have" updates.
    fn watch(&mut self, child: &Child, parent: ParentId) {
        let addr = child.parent(parent).addr.parse::<SocketAddr>().ok();
        self.addrs.resize(parent.0 + 1, None);
        self.addrs[parent.0] = addr;
        self.counters.parents.fetch_add(1, Ordering::Relaxed);
        let Some(addr) = addr else { return };
        let (peers, digest, tx, count) =
            (self.swarm.peers.clone(), self.digest, self.haves.0.clone(), self.layout.count());
        let watcher = tokio::spawn(async move {
            let Ok(mut stream) = peers.watch_have(addr, &digest).await else { return };
            while let Some(update) = stream.next().await {
                // A complete parent holds every piece, whatever bitmap came with it.
                let have =
                    if update.complete { Ok(Bitmap::full(count)) } else { Bitmap::from_bytes(count, &update.have) };
                if let Ok(b) = have {
                    if tx.send((parent, b)).is_err() || update.complete {
                        return;
                    }
                }
            }
        });
        self.watchers.push(watcher.abort_handle());
    }

    fn request(&mut self, id: RequestId, parent: ParentId, piece: u32) {
        let bytes = Arc::new(AtomicU64::new(0));
        let (peers, digest, results, counter) =
            (self.swarm.peers.clone(), self.digest, self.results.0.clone(), bytes.clone());
        let addr = self.addrs.get(parent.0).copied().flatten();
        let want = self.layout.piece(piece).len();
        let task = tokio::spawn(async move {
            let fetched = match addr {
                Some(addr) => peers.fetch_piece(addr, &digest, piece, want, &counter).await,
                None => Err(PeerError::Stream("the parent's address does not parse".into())),
            };
            let _ = results.send((id, fetched));
        });
        self.running.insert(id, Running { piece, abort: task.abort_handle(), bytes });
    }

    async fn on_piece(
        &mut self,
        child: &mut Child,
        id: RequestId,
        fetched: Fetched,
        tx: &mpsc::Sender<Chunk>,
    ) -> Result<(), DownloadError> {
        let Some(Running { piece: index, .. }) = self.running.remove(&id) else {
            return Ok(()); // cancelled meanwhile
        };
        let now = self.now();
        let (bytes, got) = match fetched {
            Ok(ok) => ok,
            Err(e) => {
                let failure = failure_of(&e);
                if failure == Failure::Busy {
                    self.metrics.piece_busy.inc();
                }
                tracing::debug!(digest = %self.digest, error = %e, "piece fetch failed");
                child.piece_failed(now, id, failure);
                return Ok(());
            }
        };
        let Verdict::Store(digest) = child.piece_received(now, id, got) else { return Ok(()) };
        let len = bytes.len() as u64;
        self.metrics.fetched_bytes.get_or_create(&SourceLabels { source: "peer" }).inc_by(len);
        self.counters.peer_bytes.fetch_add(len, Ordering::Relaxed);
        tx.send(Chunk::Piece(index, bytes, digest)).await.map_err(|_| DownloadError::WriterStopped)
    }

    fn report(&mut self, child: &Child, report: Report) {
        if self.session.is_none() {
            self.steer_report(child, report);
            return;
        }
        let event = match report {
            Report::PieceFinished { index, digest, from_origin } => peer_event::Event::PieceFinished(PieceFinished {
                index,
                blake3: digest.as_bytes().to_vec(),
                from_origin,
            }),
            Report::PieceFailed { index, parent, reason } => {
                let reason = proto_reason(reason);
                self.metrics.piece_failures.get_or_create(&ReasonLabels { reason: reason_label(reason) }).inc();
                if reason == FailReason::DigestMismatch {
                    tracing::warn!(digest = %self.digest, parent = %child.parent(parent).host_id, piece = index, "parent sent a corrupt piece; avoiding it");
                }
                let parent_host_id = child.parent(parent).host_id.clone();
                peer_event::Event::PieceFailed(PieceFailed { index, parent_host_id, reason: reason as i32 })
            }
            Report::Reschedule => {
                let parents: Vec<String> =
                    child.parents().iter().map(|p| format!("{}:{}", p.host_id, p.have.count())).collect();
                tracing::info!(digest = %self.digest, held = child.held().count(), of = self.layout.count(), digests = child.trusted_digests(), ?parents, "no progress: asking the scheduler again");
                peer_event::Event::Reschedule(Default::default())
            }
            Report::BlobMismatch { epoch, parents } => {
                let parent_host_ids = parents.iter().map(|p| child.parent(*p).host_id.clone()).collect();
                peer_event::Event::BlobMismatch(BlobMismatch { epoch, parent_host_ids })
            }
            Report::Done => peer_event::Event::Done(Default::default()),
        };
        if let Some(s) = &self.session {
            s.report(event);
        }
    }

    /// What the scheduler would have been told, when the DHT steers: a reschedule looks up
    /// holders at once; a blob that did not verify blames its parents and goes to the origin
    /// (no scheduler to drop the table).
    fn steer_report(&mut self, child: &Child, report: Report) {
        match report {
            Report::Reschedule => self.next_lookup = self.now(),
            Report::BlobMismatch { parents, .. } => {
                if let Some(dht) = &self.dht {
                    dht.blame(parents.iter().map(|p| child.parent(*p).host_id.clone()));
                }
                self.pending_origin = true;
            }
            _ => {}
        }
    }

    fn on_registered(&mut self, child: &mut Child, opened: Result<Session, SchedError>, asked: bool) {
        match opened {
            Ok(session) => {
                tracing::info!(digest = %self.digest, "registered with the scheduler again");
                self.session = Some(session);
                child.session_opened(self.now());
            }
            Err(e) if asked && !self.steered_by_dht() => {
                tracing::info!(digest = %self.digest, error = %e, "scheduler unreachable");
                child.register_failed(self.now());
            }
            Err(e) => {
                tracing::debug!(digest = %self.digest, error = %e, "scheduler still unreachable; the DHT steers");
                if asked {
                    self.next_lookup = self.now();
                }
            }
        }
    }

    fn on_event(&mut self, child: &mut Child, event: Option<SchedulerEvent>) {
        let now = self.now();
        let Some(event) = event else {
            if self.session.take().is_some() {
                self.retry_scheduler_at = now;
                if self.steered_by_dht() {
                    tracing::info!(digest = %self.digest, "scheduler stream ended; the DHT steers until it is back");
                    self.next_lookup = now;
                } else {
                    tracing::info!(digest = %self.digest, "scheduler stream ended; continuing with current parents");
                    child.session_lost(now);
                }
            }
            return;
        };
        match event.event {
            Some(scheduler_event::Event::BackToSource(_)) => {
                self.metrics.back_to_source.inc();
                child.back_to_source(now);
            }
            Some(scheduler_event::Event::Parents(ps)) => {
                let count = self.layout.count();
                let offered = ps
                    .parents
                    .into_iter()
                    .filter(|p| p.peer_addr.parse::<SocketAddr>().is_ok())
                    .map(|p| Offered {
                        host_id: p.host_id,
                        addr: p.peer_addr,
                        have: Bitmap::from_bytes(count, &p.have).unwrap_or_else(|_| Bitmap::new(count)),
                    })
                    .collect();
                child.parents_offered(now, offered);
            }
            Some(scheduler_event::Event::PieceDigests(ds)) => {
                self.epoch = self.epoch.max(ds.epoch);
                self.dht_digests.clear();
                let digests =
                    ds.digests.into_iter().filter_map(|d| Some((d.index, PieceDigest::from_slice(&d.blake3)?)));
                child.digests(now, ds.epoch, digests);
            }
            None => {}
        }
    }
}

fn failure_of(e: &PeerError) -> Failure {
    match e {
        PeerError::Busy => Failure::Busy,
        PeerError::NotFound => Failure::NotFound,
        PeerError::Unauthorized(_) => Failure::Refused,
        _ => Failure::Io,
    }
}

fn proto_reason(r: CoreReason) -> FailReason {
    match r {
        CoreReason::DigestMismatch => FailReason::DigestMismatch,
        CoreReason::Timeout => FailReason::Timeout,
        CoreReason::Refused => FailReason::Refused,
        CoreReason::Io => FailReason::Io,
    }
}

/// Where this host starts among equally rare pieces: its own place, so siblings differ.
fn tie_offset(host_id: &str, digest: &Digest) -> u32 {
    let h = crate::hash::digest(format!("{host_id} {digest}").as_bytes());
    u32::from_be_bytes([h.as_bytes()[0], h.as_bytes()[1], h.as_bytes()[2], h.as_bytes()[3]])
}

async fn next_event(session: &mut Option<Session>) -> Option<SchedulerEvent> {
    match session {
        Some(s) => s.events.message().await.ok().flatten(),
        None => std::future::pending().await,
    }
}

fn reason_label(r: FailReason) -> &'static str {
    match r {
        FailReason::DigestMismatch => "digest_mismatch",
        FailReason::Timeout => "timeout",
        FailReason::Refused => "refused",
        FailReason::Io | FailReason::Unspecified => "io",
    }
}

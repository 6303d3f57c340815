//! The daemon's side of the scheduler: host announcements to every scheduler, and per task a
//! peer stream to the scheduler that owns it. With several schedulers the owner is chosen by
//! rendezvous hashing of the task id over the ones that answer (`shoal_core::sched_owner`), so
//! a dead scheduler's tasks move to the live ones and come back when it answers again.
//! Every connection is TLS with the membership proof (`sched_connect`).
//!
//! Liveness: a scheduler is dead from its first failed announcement or registration (not
//! reachable, or no answer in time) until an announcement, retried every [`RETRY_DEAD`],
//! succeeds. A scheduler that answers with a refusal (a gRPC status such as permission denied)
//! is alive: it is not skipped, the refusal is the caller's answer.
//!
//! Every call is bounded in time; a scheduler that cannot be reached is reported as an error
//! and the caller falls back (to current parents or the origin). Nothing here decides anything
//! about pieces or parents.

use std::net::SocketAddr;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::Duration;

use prometheus_client::metrics::gauge::Gauge;
use shoal_core::{sched_owner, Bitmap, Digest, PieceLayout};
use shoal_proto::scheduler::scheduler_client::SchedulerClient;
use shoal_proto::scheduler::{peer_event, HostAnnouncement, PeerEvent, Register, SchedulerEvent};
use tokio::sync::{mpsc, watch};
use tokio::time::Instant;
use tonic::transport::Channel;
use url::Url;

use crate::config::Swarm;
use crate::discovery::sched_connect::Refusal;

/// Bound on connecting to a scheduler and on one announcement or registration attempt.
pub const SCHEDULER_TIMEOUT: Duration = Duration::from_secs(2);
/// Bound on [`Schedulers::open`] over all the schedulers it tries.
pub const OPEN_TIMEOUT: Duration = Duration::from_secs(5);
/// Announce interval when the scheduler does not say otherwise.
const ANNOUNCE_EVERY: Duration = Duration::from_secs(10);
/// Announce interval to a scheduler marked dead: how soon it gets its tasks back once it answers.
pub const RETRY_DEAD: Duration = Duration::from_secs(2);

/// Why the scheduler could not be used.
#[derive(Debug, thiserror::Error)]
pub enum SchedError {
    /// Not reachable or not answering in time: it is marked dead and its tasks go to the next
    /// scheduler. Remedy: start it, or check the address and the network.
    #[error("scheduler {url} unreachable: {message}")]
    Unreachable {
        /// Which scheduler.
        url: String,
        /// What failed.
        message: String,
    },
    /// It answered, with a refusal (e.g. this host id is spoken for by another session, or a
    /// malformed registration). Remedy: see the message; the scheduler stays in use.
    #[error("scheduler {url} refused: {message}")]
    Refused {
        /// Which scheduler.
        url: String,
        /// The gRPC status code.
        code: tonic::Code,
        /// The scheduler's message.
        message: String,
    },
}

impl SchedError {
    /// Classifies a gRPC status: transport failures mean unreachable, anything else (a status
    /// of the scheduler's, or its refusal of our membership proof) is the scheduler's answer.
    fn from_status(url: &Url, status: &tonic::Status) -> Self {
        let (url, message) = (url.to_string(), status.message().to_owned());
        if let Some(refusal) = std::error::Error::source(status).and_then(Refusal::find) {
            return Self::Refused { url, code: tonic::Code::Unauthenticated, message: refusal.to_string() };
        }
        match status.code() {
            tonic::Code::Unavailable
            | tonic::Code::DeadlineExceeded
            | tonic::Code::Cancelled
            | tonic::Code::Unknown
            | tonic::Code::Internal => Self::Unreachable { url, message },
            code => Self::Refused { url, code, message },
        }
    }

    fn timed_out(url: &Url) -> Self {
        Self::Unreachable { url: url.to_string(), message: "timed out".into() }
    }
}

/// One configured scheduler.
struct Scheduler {
    url: Url,
    client: SchedulerClient<Channel>,
    /// Whether it answered last time (optimistic at start-up).
    live: AtomicBool,
}

/// The configured schedulers and this host's announcement.
pub struct Schedulers {
    schedulers: Vec<Scheduler>,
    host: HostAnnouncement,
    /// How many schedulers are live (see [`Schedulers::with_live_gauge`]).
    live_gauge: Gauge,
    /// Counts the liveness changes (see [`Schedulers::changes`]).
    changes: watch::Sender<u64>,
}

/// An open peer stream for one task.
pub struct Session {
    /// Decisions and digests from the scheduler.
    pub events: tonic::Streaming<SchedulerEvent>,
    /// Reports to the scheduler.
    pub reports: mpsc::UnboundedSender<PeerEvent>,
    /// The scheduler it is open with, by its index in the configured list: when it is no
    /// longer [`Schedulers::owner`] of the task, the session is with a stand-in (or a dead one).
    pub scheduler: usize,
}

impl Session {
    /// Sends one report; false when the stream is gone.
    pub fn report(&self, event: peer_event::Event) -> bool {
        self.reports.send(PeerEvent { event: Some(event) }).is_ok()
    }
}

impl Schedulers {
    /// Lazy clients for every scheduler (nothing is dialed yet); all count as live until one
    /// fails to answer.
    pub fn new(swarm: &Swarm, peer_addr: SocketAddr, upload_limit: u64) -> Result<Self, SchedError> {
        let mut schedulers = Vec::new();
        let token: Arc<[u8]> = swarm.token.as_slice().into();
        for url in &swarm.schedulers {
            let channel = crate::discovery::sched_connect::channel(url, token.clone(), SCHEDULER_TIMEOUT)
                .map_err(|message| SchedError::Unreachable { url: url.to_string(), message })?;
            let client = SchedulerClient::new(channel);
            schedulers.push(Scheduler { url: url.clone(), client, live: AtomicBool::new(true) });
        }
        let host = HostAnnouncement {
            host_id: swarm.host_id.clone(),
            peer_addr: SocketAddr::new(swarm.advertise_ip, peer_addr.port()).to_string(),
            site: swarm.site.clone(),
            upload_limit,
            // Not measured yet: the scheduler counts announced load against a cap of children.
            load: 0,
        };
        let live_gauge = Gauge::default();
        live_gauge.set(schedulers.len() as i64);
        Ok(Self { schedulers, host, live_gauge, changes: watch::Sender::new(0) })
    }

    /// Keeps `gauge` at the number of live schedulers (e.g. the daemon's `schedulers_live`).
    pub fn with_live_gauge(mut self, gauge: Gauge) -> Self {
        gauge.set(self.live_count() as i64);
        self.live_gauge = gauge;
        self
    }

    /// Whether any scheduler is configured.
    pub fn configured(&self) -> bool {
        !self.schedulers.is_empty()
    }

    /// Every configured scheduler's URL and client (for the preheat job streams).
    pub fn clients(&self) -> Vec<(Url, SchedulerClient<Channel>)> {
        self.schedulers.iter().map(|s| (s.url.clone(), s.client.clone())).collect()
    }

    /// This host's id.
    pub fn host_id(&self) -> String {
        self.host.host_id.clone()
    }

    /// How many schedulers answered last time.
    pub fn live_count(&self) -> usize {
        self.schedulers.iter().filter(|s| s.live.load(Ordering::Relaxed)).count()
    }

    /// The order in which to try the schedulers for `task` (indices in the configured list):
    /// its owner among the live ones first, the dead ones last.
    fn candidates(&self, task: &Digest) -> Vec<usize> {
        let urls: Vec<&str> = self.schedulers.iter().map(|s| s.url.as_str()).collect();
        let live: Vec<bool> = self.schedulers.iter().map(|s| s.live.load(Ordering::Relaxed)).collect();
        sched_owner::candidates(&urls, &live, task)
    }

    /// The scheduler that owns `task` now (its index in the configured list): the first live one
    /// in its rendezvous order. Compare with [`Session::scheduler`] after [`Schedulers::changes`].
    pub fn owner(&self, task: &Digest) -> Option<usize> {
        self.candidates(task).first().copied()
    }

    /// A receiver that sees a new value at every death and every return of a scheduler: the cue
    /// to re-open the sessions (e.g. the kept sessions of completed blobs) whose
    /// [`Session::scheduler`] no longer owns their task, so that the owner knows its holders.
    pub fn changes(&self) -> watch::Receiver<u64> {
        self.changes.subscribe()
    }

    /// Records how `scheduler` answered: dead only when it could not be reached.
    fn record(&self, scheduler: &Scheduler, outcome: Result<(), &SchedError>) {
        let live = !matches!(outcome, Err(SchedError::Unreachable { .. }));
        if scheduler.live.swap(live, Ordering::Relaxed) == live {
            return;
        }
        self.live_gauge.set(self.live_count() as i64);
        self.changes.send_modify(|n| *n += 1);
        match outcome {
            Err(e) if !live => {
                tracing::warn!(scheduler = %scheduler.url, error = %e, "scheduler dead: its tasks go to the next scheduler");
            }
            _ => tracing::info!(scheduler = %scheduler.url, "scheduler live again: it owns its tasks again"),
        }
    }

    async fn announce_to(&self, scheduler: &Scheduler) -> Result<(), SchedError> {
        let mut client = scheduler.client.clone();
        match tokio::time::timeout(SCHEDULER_TIMEOUT, client.announce_host(self.host.clone())).await {
            Ok(Ok(_)) => Ok(()),
            Ok(Err(status)) => Err(SchedError::from_status(&scheduler.url, &status)),
            Err(_) => Err(SchedError::timed_out(&scheduler.url)),
        }
    }

    /// Announces this host to `scheduler` forever: every [`ANNOUNCE_EVERY`] while it answers,
    /// every [`RETRY_DEAD`] while it does not.
    async fn keep_announcing(&self, scheduler: &Scheduler) {
        loop {
            let outcome = self.announce_to(scheduler).await;
            if let Err(e @ SchedError::Refused { .. }) = &outcome {
                tracing::warn!(error = %e, "host announcement refused");
            }
            self.record(scheduler, outcome.as_ref().map(|_| ()));
            let live = scheduler.live.load(Ordering::Relaxed);
            tokio::time::sleep(if live { ANNOUNCE_EVERY } else { RETRY_DEAD }).await;
        }
    }

    /// Announces this host to every scheduler, forever, each on its own schedule.
    pub async fn announce_forever(self: Arc<Self>) {
        futures::future::join_all(self.schedulers.iter().map(|s| self.keep_announcing(s))).await;
    }

    /// Registers this host for `task`, holding `have`, with the task's owner among the live
    /// schedulers, else the next candidate (each attempt within [`SCHEDULER_TIMEOUT`], those known
    /// dead skipped, all within [`OPEN_TIMEOUT`]). A refusal ends the
    /// search: the owner answered.
    pub async fn open(&self, task: &Digest, layout: PieceLayout, have: &Bitmap) -> Result<Session, SchedError> {
        let deadline = Instant::now() + OPEN_TIMEOUT;
        let mut last = None;
        for index in self.candidates(task) {
            let scheduler = &self.schedulers[index];
            let left = deadline.saturating_duration_since(Instant::now());
            if left.is_zero() {
                break;
            }
            // A scheduler known dead is skipped: the announcements (every `RETRY_DEAD`) find
            // its return, and a site cut off from every scheduler must not wait for each blob.
            if !scheduler.live.load(Ordering::Relaxed) {
                last = Some(SchedError::Unreachable {
                    url: scheduler.url.to_string(),
                    message: "marked dead; announcements are retried until it answers".into(),
                });
                continue;
            }
            let attempt = self.register_at(index, task, layout, have);
            let result = match tokio::time::timeout(left.min(SCHEDULER_TIMEOUT), attempt).await {
                Ok(result) => result,
                Err(_) => Err(SchedError::timed_out(&scheduler.url)),
            };
            self.record(scheduler, result.as_ref().map(|_| ()));
            match result {
                Err(e @ SchedError::Unreachable { .. }) => last = Some(e),
                done => return done,
            }
        }
        Err(last.unwrap_or_else(|| SchedError::Unreachable {
            url: String::new(),
            message: "no scheduler configured".into(),
        }))
    }

    /// One registration at the scheduler at `index`; announces the host first if the scheduler
    /// does not know it (e.g. it just restarted).
    async fn register_at(
        &self,
        index: usize,
        task: &Digest,
        layout: PieceLayout,
        have: &Bitmap,
    ) -> Result<Session, SchedError> {
        let scheduler = &self.schedulers[index];
        let mut announced = false;
        loop {
            let (tx, rx) = mpsc::unbounded_channel();
            let register = Register {
                task_id: task.to_string(),
                host_id: self.host.host_id.clone(),
                size: layout.size,
                piece_size: layout.piece_size,
                have: have.as_bytes().to_vec(),
            };
            let _ = tx.send(PeerEvent { event: Some(peer_event::Event::Register(register)) });
            let mut client = scheduler.client.clone();
            let stream = tokio_stream::wrappers::UnboundedReceiverStream::new(rx);
            match client.peer(stream).await {
                Ok(resp) => return Ok(Session { events: resp.into_inner(), reports: tx, scheduler: index }),
                Err(status) if status.code() == tonic::Code::FailedPrecondition && !announced => {
                    self.announce_to(scheduler).await?;
                    announced = true;
                }
                Err(status) => return Err(SchedError::from_status(&scheduler.url, &status)),
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn url() -> Url {
        Url::parse("http://127.0.0.1:9").expect("a valid URL")
    }

    /// Schedulers at `ports` of loopback, where nothing listens (in a runtime: the lazy
    /// channels spawn their workers).
    fn schedulers(ports: &[u16]) -> Schedulers {
        let swarm = Swarm {
            schedulers: ports.iter().map(|p| Url::parse(&format!("http://127.0.0.1:{p}")).expect("URL")).collect(),
            peer_listen: "127.0.0.1:0".parse().expect("address"),
            advertise_ip: "127.0.0.1".parse().expect("IP"),
            site: "default".into(),
            token: b"a-cluster-token-for-unit-tests".to_vec(),
            host_id: "h1".into(),
            dht: None,
        };
        Schedulers::new(&swarm, "127.0.0.1:7".parse().expect("address"), 0).expect("lazy clients")
    }

    /// A loopback port nobody listens on (it was free a moment ago).
    fn closed_port() -> u16 {
        let listener = std::net::TcpListener::bind("127.0.0.1:0").expect("bind");
        listener.local_addr().expect("address").port()
    }

    #[test]
    fn transport_failures_are_deaths_and_other_statuses_are_answers() {
        for code in [tonic::Code::Unavailable, tonic::Code::DeadlineExceeded, tonic::Code::Unknown] {
            let e = SchedError::from_status(&url(), &tonic::Status::new(code, "x"));
            assert!(matches!(e, SchedError::Unreachable { .. }), "{code:?}: {e}");
        }
        for code in [tonic::Code::PermissionDenied, tonic::Code::FailedPrecondition, tonic::Code::InvalidArgument] {
            let e = SchedError::from_status(&url(), &tonic::Status::new(code, "x"));
            assert!(matches!(e, SchedError::Refused { code: c, .. } if c == code), "{code:?}: {e}");
        }
    }

    /// An error wrapping another, as tonic and hyper wrap a connector's error.
    #[derive(Debug, thiserror::Error)]
    #[error("transport error")]
    struct Wrapped(#[source] Refusal);

    #[test]
    fn a_refused_membership_proof_is_an_answer() {
        let mut status = tonic::Status::unavailable("transport error");
        status.set_source(Arc::new(Wrapped(Refusal::ProofRefused)));
        let e = SchedError::from_status(&url(), &status);
        assert!(matches!(e, SchedError::Refused { code: tonic::Code::Unauthenticated, .. }), "{e}");
    }

    #[tokio::test]
    async fn a_refusal_keeps_a_scheduler_live_and_a_failure_marks_it_dead() {
        let s = schedulers(&[1]);
        let refused =
            SchedError::Refused { url: String::new(), code: tonic::Code::PermissionDenied, message: "x".into() };
        let unreachable = SchedError::timed_out(&url());
        let gauge = Gauge::default();
        let s = s.with_live_gauge(gauge.clone());
        let changes = s.changes();
        s.record(&s.schedulers[0], Err(&refused));
        assert_eq!((s.live_count(), gauge.get(), *changes.borrow()), (1, 1, 0));
        s.record(&s.schedulers[0], Err(&unreachable));
        s.record(&s.schedulers[0], Err(&unreachable));
        assert_eq!((s.live_count(), gauge.get(), *changes.borrow()), (0, 0, 1));
        s.record(&s.schedulers[0], Ok(()));
        assert_eq!((s.live_count(), gauge.get(), *changes.borrow()), (1, 1, 2));
    }

    #[tokio::test]
    async fn a_dead_scheduler_is_tried_last() {
        let s = schedulers(&[1, 2, 3]);
        let task = Digest::of(b"a task");
        let owner = s.owner(&task).expect("an owner");
        let changes = s.changes();
        s.record(&s.schedulers[owner], Err(&SchedError::timed_out(&url())));
        let order = s.candidates(&task);
        assert_eq!(order.len(), 3);
        assert_eq!(order[2], owner, "{order:?}");
        assert_eq!(s.owner(&task), Some(order[0]));
        assert!(changes.has_changed().expect("the sender lives"), "a death is a change");
    }

    #[tokio::test]
    async fn open_tries_every_scheduler_and_marks_the_unreachable_ones_dead() {
        let s = schedulers(&[closed_port(), closed_port()]);
        let layout = PieceLayout::for_size(4 << 20);
        let result = s.open(&Digest::of(b"a blob"), layout, &Bitmap::new(layout.count())).await;
        assert!(matches!(result, Err(SchedError::Unreachable { .. })), "{:?}", result.err());
        assert_eq!(s.live_count(), 0);
    }
}

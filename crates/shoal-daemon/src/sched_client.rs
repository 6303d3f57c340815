//! The daemon's side of the scheduler: host announcements to every scheduler, and per task a
//! peer stream to the scheduler that owns it (rendezvous hashing of the task id over the list).
//! Every connection is TLS with the membership proof (`sched_connect`).
//!
//! Every call is bounded in time; a scheduler that cannot be reached is reported as an error
//! and the caller falls back (to current parents or the origin). Nothing here decides anything.

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use sha2::{Digest as _, Sha256};
use shoal_core::{Bitmap, Digest, PieceLayout};
use shoal_proto::scheduler::scheduler_client::SchedulerClient;
use shoal_proto::scheduler::{peer_event, HostAnnouncement, PeerEvent, Register, SchedulerEvent};
use tokio::sync::mpsc;
use tonic::transport::Channel;
use url::Url;

use crate::config::Swarm;

/// Bound on connecting to a scheduler and on one announcement or registration.
pub const SCHEDULER_TIMEOUT: Duration = Duration::from_secs(2);
/// Announce interval when the scheduler does not say otherwise.
const ANNOUNCE_EVERY: Duration = Duration::from_secs(10);

/// Why the scheduler could not be used.
#[derive(Debug, thiserror::Error)]
pub enum SchedError {
    /// Not reachable or not answering in time.
    #[error("scheduler {url} unreachable: {message}")]
    Unreachable {
        /// Which scheduler.
        url: String,
        /// What failed.
        message: String,
    },
}

/// The configured schedulers and this host's announcement.
pub struct Schedulers {
    clients: Vec<(Url, SchedulerClient<Channel>)>,
    host: HostAnnouncement,
}

/// An open peer stream for one task.
pub struct Session {
    /// Decisions and digests from the scheduler.
    pub events: tonic::Streaming<SchedulerEvent>,
    /// Reports to the scheduler.
    pub reports: mpsc::UnboundedSender<PeerEvent>,
}

impl Session {
    /// Sends one report; false when the stream is gone.
    pub fn report(&self, event: peer_event::Event) -> bool {
        self.reports.send(PeerEvent { event: Some(event) }).is_ok()
    }
}

impl Schedulers {
    /// Lazy clients for every scheduler (nothing is dialed yet).
    pub fn new(swarm: &Swarm, peer_addr: SocketAddr, upload_limit: u64) -> Result<Self, SchedError> {
        let mut clients = Vec::new();
        let token: Arc<[u8]> = swarm.token.as_slice().into();
        for url in &swarm.schedulers {
            let channel = crate::sched_connect::channel(url, token.clone(), SCHEDULER_TIMEOUT)
                .map_err(|message| SchedError::Unreachable { url: url.to_string(), message })?;
            clients.push((url.clone(), SchedulerClient::new(channel)));
        }
        let host = HostAnnouncement {
            host_id: swarm.host_id.clone(),
            peer_addr: SocketAddr::new(swarm.advertise_ip, peer_addr.port()).to_string(),
            site: swarm.site.clone(),
            upload_limit,
            // Not measured yet: the scheduler counts announced load against a cap of children.
            load: 0,
        };
        Ok(Self { clients, host })
    }

    /// This host's id.
    pub fn host_id(&self) -> String {
        self.host.host_id.clone()
    }

    /// The scheduler owning `task`: highest sha256(url ‖ task) wins.
    fn owner(&self, task: &Digest) -> Option<&(Url, SchedulerClient<Channel>)> {
        self.clients.iter().max_by_key(|(url, _)| {
            let h = Sha256::new().chain_update(url.as_str()).chain_update(task.as_bytes()).finalize();
            u64::from_be_bytes(h[..8].try_into().unwrap_or([0; 8]))
        })
    }

    async fn announce_to(&self, url: &Url, client: &SchedulerClient<Channel>) -> Result<(), SchedError> {
        let host = self.host.clone();
        let mut c = client.clone();
        match tokio::time::timeout(SCHEDULER_TIMEOUT, c.announce_host(host)).await {
            Ok(Ok(_)) => Ok(()),
            Ok(Err(e)) => Err(SchedError::Unreachable { url: url.to_string(), message: e.message().to_owned() }),
            Err(_) => Err(SchedError::Unreachable { url: url.to_string(), message: "timed out".into() }),
        }
    }

    /// Announces this host to every scheduler, forever.
    pub async fn announce_forever(self: Arc<Self>) {
        loop {
            for (url, client) in &self.clients {
                if let Err(e) = self.announce_to(url, client).await {
                    tracing::debug!(error = %e, "host announcement failed");
                }
            }
            tokio::time::sleep(ANNOUNCE_EVERY).await;
        }
    }

    /// Registers this host for `task`, holding `have`; announces the host first if the
    /// scheduler does not know it (e.g. it just restarted).
    pub async fn open(&self, task: &Digest, layout: PieceLayout, have: &Bitmap) -> Result<Session, SchedError> {
        let Some((url, client)) = self.owner(task) else {
            return Err(SchedError::Unreachable { url: String::new(), message: "no scheduler configured".into() });
        };
        let unreachable = |message: String| SchedError::Unreachable { url: url.to_string(), message };
        for attempt in 0..2 {
            let (tx, rx) = mpsc::unbounded_channel();
            let register = Register {
                task_id: task.to_string(),
                host_id: self.host.host_id.clone(),
                size: layout.size,
                piece_size: layout.piece_size,
                have: have.as_bytes().to_vec(),
            };
            let _ = tx.send(PeerEvent { event: Some(peer_event::Event::Register(register)) });
            let mut c = client.clone();
            let stream = tokio_stream::wrappers::UnboundedReceiverStream::new(rx);
            match tokio::time::timeout(SCHEDULER_TIMEOUT, c.peer(stream)).await {
                Ok(Ok(resp)) => return Ok(Session { events: resp.into_inner(), reports: tx }),
                Ok(Err(status)) if status.code() == tonic::Code::FailedPrecondition && attempt == 0 => {
                    self.announce_to(url, client).await?;
                }
                Ok(Err(status)) => return Err(unreachable(status.message().to_owned())),
                Err(_) => return Err(unreachable("timed out".into())),
            }
        }
        Err(unreachable("registration refused".into()))
    }
}

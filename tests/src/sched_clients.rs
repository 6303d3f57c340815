//! gRPC clients of a scheduler for the tests that attack it: a plain one (no TLS, no token), a
//! member with any token (TLS and the membership proof, as daemons connect), and one peer stream
//! driven by hand.

use std::time::Duration;

use anyhow::{Context, Result};
use shoal_proto::scheduler::scheduler_client::SchedulerClient;
use shoal_proto::scheduler::{peer_event, PeerEvent, SchedulerEvent};
use tokio::sync::mpsc;
use tonic::transport::{Channel, Endpoint};

/// Bound on each call the tests make.
pub const CALL_LIMIT: Duration = Duration::from_secs(5);

/// A client that speaks plain gRPC (HTTP/2 without TLS), as a stranger would.
pub fn plain_client(url: &str) -> Result<SchedulerClient<Channel>> {
    let endpoint = Endpoint::from_shared(url.to_owned())?.connect_timeout(CALL_LIMIT);
    Ok(SchedulerClient::new(endpoint.connect_lazy()))
}

/// A client connecting the way daemons do, proving `token` (right or wrong).
pub fn member_client(url: &str, token: &[u8]) -> Result<SchedulerClient<Channel>> {
    let url = url::Url::parse(url)?;
    let channel =
        shoal_daemon::api::sched_connect::channel(&url, token.into(), CALL_LIMIT).map_err(anyhow::Error::msg)?;
    Ok(SchedulerClient::new(channel))
}

/// A peer stream opened by hand: events go out on `tx`, the scheduler's answers come in.
pub struct PeerStream {
    /// Reports to the scheduler.
    pub tx: mpsc::UnboundedSender<PeerEvent>,
    /// The scheduler's events.
    pub events: tonic::Streaming<SchedulerEvent>,
}

impl PeerStream {
    /// Opens a peer stream whose first event is `first` (a register).
    pub async fn open(client: &mut SchedulerClient<Channel>, first: peer_event::Event) -> Result<Self, tonic::Status> {
        let (tx, rx) = mpsc::unbounded_channel();
        let _ = tx.send(PeerEvent { event: Some(first) });
        let stream = tokio_stream::wrappers::UnboundedReceiverStream::new(rx);
        match tokio::time::timeout(CALL_LIMIT, client.peer(stream)).await {
            Ok(r) => r.map(|resp| Self { tx, events: resp.into_inner() }),
            Err(_) => Err(tonic::Status::deadline_exceeded("peer stream: no answer")),
        }
    }

    /// Sends one event.
    pub fn send(&self, event: peer_event::Event) -> Result<()> {
        self.tx.send(PeerEvent { event: Some(event) }).ok().context("the peer stream is closed")
    }

    /// The next event from the scheduler, within [`CALL_LIMIT`].
    pub async fn next(&mut self) -> Result<Option<SchedulerEvent>> {
        Ok(tokio::time::timeout(CALL_LIMIT, self.events.message()).await.context("no scheduler event")??)
    }
}

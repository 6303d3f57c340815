//! [`Discovery`] over a libp2p Kademlia DHT of the cluster's daemons, for when no scheduler
//! answers (or none is configured).
//!
//! Provider records are keyed by the blob digest. Each member tells the others its host id and
//! peer (QUIC) address through identify; a lookup asks every provider it finds "do you still
//! hold it?" before returning it, so a withdrawn blob or a dead member is not offered even while
//! its provider records live on. Only holders of the cluster token take part (pnet; see
//! `transport`). Everything from the network is bounded: message sizes, providers per key,
//! holders per answer, members, and every call in time.
//!
//! One task owns the libp2p swarm (`node`); [`Dht`] is a handle that sends it commands.

mod node;
mod transport;

#[cfg(test)]
mod tests;

use std::collections::BTreeMap;
use std::net::{IpAddr, SocketAddr};
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::{Duration, Instant};

use libp2p::PeerId;
use shoal_core::Digest;
use tokio::sync::{mpsc, oneshot};

use super::bootstrap::BootstrapAddr;
use super::{Discovery, DiscoveryError, Holder, QUERY_TIMEOUT};

/// The most blob keys one node's record store keeps (its own and other members' records).
pub const MAX_PROVIDED: usize = 1 << 16;
/// The most members one node keeps track of.
pub const MAX_MEMBERS: usize = 4096;
/// A member this node has had no connection with for this long is forgotten (a restarted
/// daemon comes back under a new peer id; the old one would linger otherwise).
pub const MEMBER_TTL: Duration = Duration::from_secs(60 * 60);
/// The longest host id accepted from a member.
const MAX_HOST_ID: usize = 255;
/// Default interval between re-publications of what this node holds.
pub const REPUBLISH: Duration = Duration::from_secs(5 * 60);
/// Default interval between resolutions of the bootstrap addresses.
pub const REBOOTSTRAP: Duration = Duration::from_secs(30);
/// Connections with no stream open are kept this long, so members stay connected.
pub const IDLE: Duration = Duration::from_secs(300);

/// How to start a DHT node.
#[derive(Debug, Clone)]
pub struct DhtConfig {
    /// The TCP address to listen on (`dht_listen`); port 0 picks one.
    pub listen: SocketAddr,
    /// The IP other members dial for the DHT (`advertise_addr`).
    pub advertise_ip: IpAddr,
    /// Where to join (`bootstrap`); empty for the first member.
    pub bootstrap: Vec<BootstrapAddr>,
    /// The cluster token; the DHT's private-network key derives from it.
    pub token: Vec<u8>,
    /// This member: host id and peer (QUIC) address.
    pub me: Holder,
    /// Interval between re-publications of this node's provider records ([`REPUBLISH`]).
    pub republish: Duration,
    /// Interval between resolutions of `bootstrap` ([`REBOOTSTRAP`]); each resolves names
    /// (cheap) and dials only addresses not connected yet. The routing table is refreshed
    /// (a Kademlia bootstrap) at the same interval, so members that joined at one moment
    /// find each other within it.
    pub rebootstrap: Duration,
    /// How long a connection with no stream open is kept ([`IDLE`]). Closing an idle
    /// connection keeps its member: only an I/O error, a failed dial or the routing table
    /// drops one.
    pub idle: Duration,
    /// Kept at the number of other members known (the daemon's `dht_members`).
    pub members_gauge: prometheus_client::metrics::gauge::Gauge,
}

impl DhtConfig {
    /// A configuration with the default intervals.
    pub fn new(
        listen: SocketAddr,
        advertise_ip: IpAddr,
        bootstrap: Vec<BootstrapAddr>,
        token: Vec<u8>,
        me: Holder,
    ) -> Self {
        Self {
            listen,
            advertise_ip,
            bootstrap,
            token,
            me,
            republish: REPUBLISH,
            rebootstrap: REBOOTSTRAP,
            idle: IDLE,
            members_gauge: Default::default(),
        }
    }
}

/// Why a DHT node could not start.
#[derive(Debug, thiserror::Error)]
pub enum DhtError {
    /// The libp2p stack could not be built (a bug, or no randomness for the identity).
    #[error("DHT transport: {0}")]
    Transport(String),
    /// The listener could not bind (`dht_listen` in use or not local).
    #[error("cannot listen on dht_listen {addr}: {message}")]
    Bind {
        /// The address.
        addr: SocketAddr,
        /// What failed.
        message: String,
    },
}

/// "Do you still hold this blob?" (`HOLDS_PROTOCOL`).
#[derive(Debug, Clone, serde::Serialize, serde::Deserialize)]
pub struct HoldsRequest {
    /// The blob digest, `sha256:…`.
    pub blob: String,
}

/// The answer, with who answers.
#[derive(Debug, Clone, serde::Serialize, serde::Deserialize)]
pub struct HoldsResponse {
    /// It holds (part of) the blob and advertises it.
    pub held: bool,
    /// The answering member.
    pub member: Holder,
}

/// What the handle asks of the node's task.
enum Command {
    Holders(Digest, oneshot::Sender<Vec<Holder>>),
    Advertise(Digest, oneshot::Sender<Result<(), DiscoveryError>>),
    Withdraw(Digest, oneshot::Sender<()>),
}

/// What the handle and the node both see.
struct Shared {
    me: Holder,
    /// Members, with when this node last had a connection to each.
    members: Mutex<BTreeMap<PeerId, (Holder, Instant)>>,
    gauge: prometheus_client::metrics::gauge::Gauge,
}

impl Shared {
    fn members(&self) -> MutexGuard<'_, BTreeMap<PeerId, (Holder, Instant)>> {
        self.members.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// Drops a member (and counts the others in the gauge).
    fn forget(&self, peer: &PeerId) {
        let mut members = self.members();
        if members.remove(peer).is_some() {
            self.gauge.set(members.len() as i64);
        }
    }
}

/// A running DHT node; dropping the last handle stops it.
pub struct Dht {
    commands: mpsc::Sender<Command>,
    shared: Arc<Shared>,
    local_addr: SocketAddr,
    task: tokio::task::JoinHandle<()>,
}

impl Dht {
    /// Binds `config.listen`, starts the node's task in the current runtime and begins joining
    /// through `config.bootstrap` (an unreachable or empty list leaves it the first member).
    pub async fn start(config: DhtConfig) -> Result<Self, DhtError> {
        let shared = Arc::new(Shared {
            me: config.me.clone(),
            members: Mutex::new(BTreeMap::new()),
            gauge: config.members_gauge.clone(),
        });
        let (commands, rx) = mpsc::channel(1024);
        let (node, local_addr) = node::Node::start(config, shared.clone()).await?;
        let task = tokio::spawn(node.run(rx));
        Ok(Self { commands, shared, local_addr, task })
    }

    /// Where the DHT listens (with the port picked, if `listen` had port 0).
    pub fn local_addr(&self) -> SocketAddr {
        self.local_addr
    }

    async fn ask<T>(&self, command: Command, answer: oneshot::Receiver<T>) -> Result<T, DiscoveryError> {
        // The node answers within QUERY_TIMEOUT by itself; the margin covers a busy runtime.
        let bound = QUERY_TIMEOUT + Duration::from_millis(500);
        let asked = async {
            self.commands.send(command).await.map_err(|_| DiscoveryError::Stopped)?;
            answer.await.map_err(|_| DiscoveryError::Stopped)
        };
        tokio::time::timeout(bound, asked).await.map_err(|_| DiscoveryError::Timeout(bound))?
    }
}

impl Drop for Dht {
    fn drop(&mut self) {
        self.task.abort();
    }
}

#[async_trait::async_trait]
impl Discovery for Dht {
    fn ready(&self) -> bool {
        !self.shared.members().is_empty()
    }

    async fn holders(&self, blob: &Digest) -> Result<Vec<Holder>, DiscoveryError> {
        let (tx, rx) = oneshot::channel();
        self.ask(Command::Holders(*blob, tx), rx).await
    }

    async fn advertise(&self, blob: &Digest) -> Result<(), DiscoveryError> {
        let (tx, rx) = oneshot::channel();
        self.ask(Command::Advertise(*blob, tx), rx).await?
    }

    async fn withdraw(&self, blob: &Digest) -> Result<(), DiscoveryError> {
        let (tx, rx) = oneshot::channel();
        self.ask(Command::Withdraw(*blob, tx), rx).await
    }

    fn members(&self) -> Vec<Holder> {
        let mut all: Vec<Holder> = self.shared.members().values().map(|(h, _)| h.clone()).collect();
        all.push(self.shared.me.clone());
        all.sort();
        all.dedup();
        all
    }
}

/// Identify's agent version for `me`: `shoal <peer addr> <host id>`.
fn agent(me: &Holder) -> String {
    format!("shoal {} {}", me.addr, me.host_id)
}

/// The member an agent version names, if it is well formed.
fn parse_agent(agent: &str) -> Option<Holder> {
    let (addr, host_id) = agent.strip_prefix("shoal ")?.split_once(' ')?;
    let valid = !host_id.is_empty() && host_id.len() <= MAX_HOST_ID && !host_id.chars().any(char::is_control);
    valid.then(|| Some(Holder { host_id: host_id.to_owned(), addr: addr.parse().ok()? }))?
}

#[cfg(test)]
mod agent_tests {
    use super::*;

    #[test]
    fn agents_round_trip_and_bad_ones_are_refused() {
        let me = Holder { host_id: "node a-65002".into(), addr: "10.0.0.7:65002".parse().unwrap() };
        assert_eq!(parse_agent(&agent(&me)), Some(me));
        let long = format!("shoal 10.0.0.7:1 {}", "x".repeat(256));
        for bad in ["rust-libp2p/0.56", "shoal 10.0.0.7:1", "shoal nope host", "shoal 10.0.0.7:1 a\nb", long.as_str()] {
            assert_eq!(parse_agent(bad), None, "{bad:?}");
        }
    }
}

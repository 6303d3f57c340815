//! The DHT node's task: owns the libp2p swarm, runs the handle's commands as Kademlia queries
//! and "holds?" requests, and answers other members. Every lookup ends by its deadline with what
//! it found. It never blocks on anything but the swarm and its channels.

use std::collections::{HashMap, HashSet};
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Instant;

use futures::StreamExt;
use libp2p::kad::store::RecordStore as _;
use libp2p::kad::{self, GetProvidersOk, QueryId, QueryResult, RecordKey};
use libp2p::request_response::{self, OutboundRequestId};
use libp2p::swarm::dial_opts::DialOpts;
use libp2p::swarm::DialError;
use libp2p::swarm::SwarmEvent;
use libp2p::{identify, Multiaddr, PeerId};
use shoal_core::Digest;
use tokio::sync::{mpsc, oneshot};

use super::transport::{self, Behaviour, BehaviourEvent, PROTOCOL_VERSION};
use super::{
    agent, parse_agent, Command, DhtConfig, DhtError, HoldsRequest, HoldsResponse, Shared, MAX_MEMBERS, MEMBER_TTL,
};
use crate::discovery::bootstrap::{self, BootstrapAddr};
use crate::discovery::{DiscoveryError, Holder, MAX_HOLDERS, QUERY_TIMEOUT};

/// The most providers of one lookup asked "holds?" (others are ignored).
const MAX_CANDIDATES: usize = 64;
/// How long a lookup goes on once it found a holder.
const AFTER_FIRST_HOLDER: std::time::Duration = std::time::Duration::from_millis(250);
/// The most addresses of one member added to the routing table.
const MAX_ADDRS_PER_MEMBER: usize = 4;
/// While it knows no member, the node dials the bootstrap addresses again after this, doubling
/// up to `rebootstrap`: members start in any order, and one that dialed the others before they
/// listened must not stay alone for a whole `rebootstrap`.
const ALONE_RETRY: std::time::Duration = std::time::Duration::from_millis(250);

/// One `holders` lookup in flight.
struct Lookup {
    blob: Digest,
    reply: oneshot::Sender<Vec<Holder>>,
    asked: HashSet<PeerId>,
    pending: usize,
    found: Vec<Holder>,
    searching: bool,
}

/// What the node's own timers and helpers tell it.
enum Internal {
    /// A lookup's deadline passed.
    Expire(QueryId),
    /// The bootstrap addresses resolved to these.
    Dial(Vec<SocketAddr>),
}

pub(super) struct Node {
    swarm: libp2p::Swarm<Behaviour>,
    shared: Arc<Shared>,
    bootstrap: Vec<BootstrapAddr>,
    rebootstrap: std::time::Duration,
    internal_tx: mpsc::UnboundedSender<Internal>,
    internal: mpsc::UnboundedReceiver<Internal>,
    /// Blobs this node advertises (and answers "held" for).
    provided: HashSet<Digest>,
    lookups: HashMap<QueryId, Lookup>,
    asks: HashMap<OutboundRequestId, QueryId>,
    advertising: HashMap<QueryId, oneshot::Sender<Result<(), DiscoveryError>>>,
    /// Addresses this node has an outgoing connection to, and its own (a bootstrap name may
    /// resolve to this node too): neither is dialed again.
    dialed: HashSet<Multiaddr>,
    own: HashSet<Multiaddr>,
}

impl Node {
    /// Builds the swarm and binds; returns once the listener is up, with its address.
    pub(super) async fn start(config: DhtConfig, shared: Arc<Shared>) -> Result<(Self, SocketAddr), DhtError> {
        let mut swarm =
            transport::swarm(&config.token, agent(&config.me), config.republish, config.rebootstrap, config.idle)
                .map_err(DhtError::Transport)?;
        let bind_err = |message: String| DhtError::Bind { addr: config.listen, message };
        swarm.listen_on(transport::multiaddr(config.listen)).map_err(|e| bind_err(e.to_string()))?;
        let port = tokio::time::timeout(QUERY_TIMEOUT, listening_port(&mut swarm))
            .await
            .map_err(|_| bind_err("the listener did not start".into()))?
            .map_err(bind_err)?;
        let local = SocketAddr::new(config.listen.ip(), port);
        let external = transport::multiaddr(SocketAddr::new(config.advertise_ip, port));
        swarm.add_external_address(external.clone());
        let (internal_tx, internal) = mpsc::unbounded_channel();
        tracing::info!(peer_id = %swarm.local_peer_id(), %local, %external, "DHT listening");
        let node = Self {
            swarm,
            shared,
            bootstrap: config.bootstrap,
            rebootstrap: config.rebootstrap,
            internal_tx,
            internal,
            provided: HashSet::new(),
            lookups: HashMap::new(),
            asks: HashMap::new(),
            advertising: HashMap::new(),
            dialed: HashSet::new(),
            own: [external, transport::multiaddr(local)].into(),
        };
        Ok((node, local))
    }

    /// Serves commands until every handle is gone.
    pub(super) async fn run(mut self, mut commands: mpsc::Receiver<Command>) {
        let mut rebootstrap = tokio::time::interval(self.rebootstrap);
        rebootstrap.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        let mut alone_retry = ALONE_RETRY.min(self.rebootstrap);
        let alone = tokio::time::sleep(alone_retry);
        tokio::pin!(alone);
        loop {
            tokio::select! {
                () = &mut alone => {
                    let next = if self.shared.members().is_empty() {
                        self.resolve_bootstrap();
                        alone_retry = (alone_retry * 2).min(self.rebootstrap);
                        alone_retry
                    } else {
                        alone_retry = ALONE_RETRY.min(self.rebootstrap);
                        self.rebootstrap
                    };
                    alone.as_mut().reset(tokio::time::Instant::now() + next);
                }
                event = self.swarm.select_next_some() => self.on_swarm(event),
                command = commands.recv() => match command {
                    Some(c) => self.on_command(c),
                    None => return,
                },
                Some(internal) = self.internal.recv() => self.on_internal(internal),
                _ = rebootstrap.tick() => {
                    self.forget_unseen();
                    self.resolve_bootstrap();
                }
            }
        }
    }

    fn kad(&mut self) -> &mut kad::Behaviour<kad::store::MemoryStore> {
        &mut self.swarm.behaviour_mut().kad
    }

    fn on_command(&mut self, command: Command) {
        match command {
            Command::Holders(blob, reply) => self.start_lookup(blob, reply),
            Command::Advertise(blob, reply) => self.advertise(blob, reply),
            Command::Withdraw(blob, done) => {
                self.provided.remove(&blob);
                self.kad().stop_providing(&key(&blob));
                let _ = done.send(());
            }
        }
    }

    fn advertise(&mut self, blob: Digest, reply: oneshot::Sender<Result<(), DiscoveryError>>) {
        match self.kad().start_providing(key(&blob)) {
            Ok(query) => {
                self.provided.insert(blob);
                self.advertising.insert(query, reply);
            }
            Err(e) => {
                let _ = reply.send(Err(DiscoveryError::Store(format!("{e:?}"))));
            }
        }
    }

    fn start_lookup(&mut self, blob: Digest, reply: oneshot::Sender<Vec<Holder>>) {
        let query = self.kad().get_providers(key(&blob));
        let lookup = Lookup { blob, reply, asked: HashSet::new(), pending: 0, found: Vec::new(), searching: true };
        self.lookups.insert(query, lookup);
        self.expire_in(query, QUERY_TIMEOUT);
    }

    /// Ends lookup `query` (with what it found by then) after `after`.
    fn expire_in(&self, query: QueryId, after: std::time::Duration) {
        let tx = self.internal_tx.clone();
        tokio::spawn(async move {
            tokio::time::sleep(after).await;
            let _ = tx.send(Internal::Expire(query));
        });
    }

    fn on_internal(&mut self, internal: Internal) {
        match internal {
            Internal::Expire(query) => self.finish_lookup(query),
            Internal::Dial(addrs) => self.dial(addrs),
        }
    }

    /// Resolves the bootstrap names off the event loop; the addresses come back as `Dial`.
    fn resolve_bootstrap(&mut self) {
        if self.bootstrap.is_empty() {
            return;
        }
        let (names, tx) = (self.bootstrap.clone(), self.internal_tx.clone());
        tokio::spawn(async move {
            let _ = tx.send(Internal::Dial(bootstrap::resolve(&names).await));
        });
    }

    fn dial(&mut self, addrs: Vec<SocketAddr>) {
        for addr in addrs.into_iter().map(transport::multiaddr) {
            if self.dialed.contains(&addr) || self.own.contains(&addr) {
                continue;
            }
            if let Err(e) = self.swarm.dial(DialOpts::unknown_peer_id().address(addr.clone()).build()) {
                tracing::debug!(%addr, error = %e, "cannot dial a bootstrap address");
            }
        }
    }

    fn on_swarm(&mut self, event: SwarmEvent<BehaviourEvent>) {
        match event {
            SwarmEvent::Behaviour(BehaviourEvent::Kad(e)) => self.on_kad(e),
            SwarmEvent::Behaviour(BehaviourEvent::Identify(e)) => self.on_identify(e),
            SwarmEvent::Behaviour(BehaviourEvent::Holds(e)) => self.on_holds(e),
            SwarmEvent::ConnectionEstablished { peer_id, endpoint, .. } => {
                if endpoint.is_dialer() {
                    self.dialed.insert(endpoint.get_remote_address().clone());
                }
                self.seen(&peer_id);
            }
            // A closed connection keeps its member: an idle close looks like an error on the
            // other side (the remote hung up), and a site cut off later must still be able to
            // ask a member that was merely quiet. A member that is gone is dropped when a dial
            // to it fails (Kademlia's refreshes dial it, as do lookups and re-bootstraps).
            SwarmEvent::ConnectionClosed { peer_id, endpoint, num_established: 0, .. } => {
                self.dialed.remove(endpoint.get_remote_address());
                self.seen(&peer_id);
            }
            SwarmEvent::OutgoingConnectionError { peer_id, error, .. } => {
                tracing::debug!(?peer_id, error = %error, "DHT dial failed");
                match (&error, peer_id) {
                    (DialError::LocalPeerId { address }, _) => {
                        self.own.insert(address.clone());
                    }
                    // Unreachable, and no connection to it left: the member is gone. A dial
                    // denied by a limit (a third connection to a member already connected
                    // twice), cancelled or aborted says nothing about the member.
                    (DialError::Transport(_) | DialError::WrongPeerId { .. } | DialError::NoAddresses, Some(peer))
                        if !self.swarm.is_connected(&peer) =>
                    {
                        self.shared.forget(&peer);
                    }
                    _ => {}
                }
            }
            _ => {}
        }
    }

    fn on_identify(&mut self, event: identify::Event) {
        let identify::Event::Received { peer_id, info, .. } = event else { return };
        let member = parse_agent(&info.agent_version).filter(|_| info.protocol_version == PROTOCOL_VERSION);
        let Some(member) = member else {
            tracing::warn!(%peer_id, agent = %info.agent_version, "DHT peer is not a Shoal daemon; disconnecting");
            let _ = self.swarm.disconnect_peer_id(peer_id);
            return;
        };
        for addr in info.listen_addrs.into_iter().take(MAX_ADDRS_PER_MEMBER) {
            self.kad().add_address(&peer_id, addr);
        }
        let first = {
            let mut members = self.shared.members();
            let first = members.is_empty();
            if members.len() < MAX_MEMBERS || members.contains_key(&peer_id) {
                members.insert(peer_id, (member, Instant::now()));
                self.shared.gauge.set(members.len() as i64);
            }
            first
        };
        if first {
            self.joined();
        }
    }

    /// A connection to `peer` opened or closed: a member was there until now.
    fn seen(&self, peer: &PeerId) {
        if let Some((_, at)) = self.shared.members().get_mut(peer) {
            *at = Instant::now();
        }
    }

    /// Forgets members with no connection for [`MEMBER_TTL`].
    fn forget_unseen(&mut self) {
        let connected: HashSet<PeerId> = self.swarm.connected_peers().copied().collect();
        let gone = unseen(&self.shared.members(), &connected, Instant::now(), MEMBER_TTL);
        for peer in gone {
            tracing::debug!(%peer, "forgetting a member not seen for an hour");
            self.shared.forget(&peer);
        }
    }

    /// The first other member is known: fill the routing table and publish what this node
    /// holds to the members that are now there (it was alone when it advertised).
    fn joined(&mut self) {
        let _ = self.kad().bootstrap();
        let provided: Vec<Digest> = self.provided.iter().copied().collect();
        for blob in provided {
            let _ = self.kad().start_providing(key(&blob));
        }
    }

    fn on_kad(&mut self, event: kad::Event) {
        match event {
            kad::Event::OutboundQueryProgressed { id, result: QueryResult::GetProviders(result), step, .. } => {
                match result {
                    Ok(GetProvidersOk::FoundProviders { providers, .. }) => self.ask_providers(id, providers),
                    Ok(GetProvidersOk::FinishedWithNoAdditionalRecord { .. }) | Err(_) => self.searched(id),
                }
                if step.last {
                    self.searched(id);
                }
            }
            kad::Event::OutboundQueryProgressed { id, result: QueryResult::StartProviding(result), .. } => {
                if let Err(e) = result {
                    tracing::debug!(error = ?e, "publishing a provider record reached fewer members than asked");
                }
                if let Some(reply) = self.advertising.remove(&id) {
                    let _ = reply.send(Ok(()));
                }
            }
            kad::Event::InboundRequest { request: kad::InboundRequest::AddProvider { record: Some(record) } } => {
                // Kademlia checked that the record is the sender's own; the store bounds its size.
                if let Err(e) = self.kad().store_mut().add_provider(record) {
                    tracing::debug!(error = ?e, "provider record not stored");
                }
            }
            kad::Event::RoutingUpdated { old_peer: Some(old), .. } => {
                self.shared.forget(&old);
            }
            _ => {}
        }
    }

    /// Asks each provider not asked yet whether it still holds the blob.
    fn ask_providers(&mut self, query: QueryId, providers: HashSet<PeerId>) {
        let me = *self.swarm.local_peer_id();
        let Some(lookup) = self.lookups.get_mut(&query) else { return };
        let request = HoldsRequest { blob: lookup.blob.to_string() };
        for peer in providers {
            if peer == me || lookup.asked.len() >= MAX_CANDIDATES || !lookup.asked.insert(peer) {
                continue;
            }
            let id = self.swarm.behaviour_mut().holds.send_request(&peer, request.clone());
            lookup.pending += 1;
            self.asks.insert(id, query);
        }
    }

    fn searched(&mut self, query: QueryId) {
        if let Some(lookup) = self.lookups.get_mut(&query) {
            lookup.searching = false;
        }
        self.maybe_finish(query);
    }

    fn on_holds(&mut self, event: request_response::Event<HoldsRequest, HoldsResponse>) {
        match event {
            request_response::Event::Message { message, peer, .. } => match message {
                request_response::Message::Request { request, channel, .. } => {
                    let held = request.blob.parse::<Digest>().is_ok_and(|d| self.provided.contains(&d));
                    let response = HoldsResponse { held, member: self.shared.me.clone() };
                    let _ = self.swarm.behaviour_mut().holds.send_response(channel, response);
                }
                request_response::Message::Response { request_id, response } => {
                    self.answered(request_id, Some(response).filter(|r| r.held).map(|r| r.member), peer);
                }
            },
            request_response::Event::OutboundFailure { request_id, peer, error, .. } => {
                tracing::debug!(%peer, %error, "a provider did not answer \"holds?\"");
                self.answered(request_id, None, peer);
            }
            _ => {}
        }
    }

    fn answered(&mut self, request: OutboundRequestId, holder: Option<Holder>, peer: PeerId) {
        let Some(query) = self.asks.remove(&request) else { return };
        let Some(lookup) = self.lookups.get_mut(&query) else { return };
        lookup.pending = lookup.pending.saturating_sub(1);
        let holder = holder.filter(|h| h.host_id.len() <= super::MAX_HOST_ID && h.host_id != self.shared.me.host_id);
        if let Some(h) = holder {
            if !lookup.found.iter().any(|f| f.host_id == h.host_id) {
                lookup.found.push(h);
                if lookup.found.len() == 1 {
                    // One holder is enough to start on: the query may still be waiting for
                    // members that are gone (a site cut off), so it ends soon after.
                    self.expire_in(query, AFTER_FIRST_HOLDER);
                }
            }
        } else {
            tracing::trace!(%peer, "provider does not hold the blob (any more)");
        }
        self.maybe_finish(query);
    }

    fn maybe_finish(&mut self, query: QueryId) {
        let done =
            self.lookups.get(&query).is_some_and(|l| (!l.searching && l.pending == 0) || l.found.len() >= MAX_HOLDERS);
        if done {
            self.finish_lookup(query);
        }
    }

    /// Answers a lookup with what it found so far and stops its query.
    fn finish_lookup(&mut self, query: QueryId) {
        let Some(mut lookup) = self.lookups.remove(&query) else { return };
        if let Some(mut q) = self.kad().query_mut(&query) {
            q.finish();
        }
        self.asks.retain(|_, q| *q != query);
        lookup.found.truncate(MAX_HOLDERS);
        let _ = lookup.reply.send(lookup.found);
    }
}

/// The provider-record key of a blob: its digest's 32 bytes.
fn key(blob: &Digest) -> RecordKey {
    RecordKey::new(blob.as_bytes())
}

/// Waits for the listener's first address; returns its port.
async fn listening_port(swarm: &mut libp2p::Swarm<Behaviour>) -> Result<u16, String> {
    loop {
        match swarm.select_next_some().await {
            SwarmEvent::NewListenAddr { address, .. } => {
                if let Some(addr) = transport::socket_addr(&address) {
                    return Ok(addr.port());
                }
            }
            SwarmEvent::ListenerError { error, .. } => return Err(error.to_string()),
            SwarmEvent::ListenerClosed { reason: Err(e), .. } => return Err(e.to_string()),
            _ => {}
        }
    }
}

/// Members with no connection now and none for `ttl`.
fn unseen(
    members: &std::collections::BTreeMap<PeerId, (Holder, Instant)>,
    connected: &HashSet<PeerId>,
    now: Instant,
    ttl: std::time::Duration,
) -> Vec<PeerId> {
    members
        .iter()
        .filter(|(peer, (_, at))| !connected.contains(peer) && now.saturating_duration_since(*at) >= ttl)
        .map(|(peer, _)| *peer)
        .collect()
}

#[cfg(test)]
mod unseen_tests {
    use super::*;

    #[test]
    fn only_members_with_no_connection_for_the_ttl_are_forgotten() {
        let ttl = std::time::Duration::from_secs(3600);
        let start = Instant::now();
        let now = start + ttl + std::time::Duration::from_secs(1);
        let holder = |i: u16| Holder { host_id: format!("m{i}"), addr: ([10, 0, 0, 1], i).into() };
        let (old, old_connected, recent) = (PeerId::random(), PeerId::random(), PeerId::random());
        let members = [(old, (holder(1), start)), (old_connected, (holder(2), start)), (recent, (holder(3), now))];
        let members = members.into_iter().collect();
        assert_eq!(unseen(&members, &HashSet::from([old_connected]), now, ttl), vec![old]);
    }
}

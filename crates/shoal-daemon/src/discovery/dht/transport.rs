//! The DHT's libp2p stack: TCP, the cluster's private-network key (pnet), noise, yamux, and the
//! three protocols (Kademlia, identify, "holds?"). A node without the cluster token cannot
//! complete the pnet handshake, so it never reaches noise, let alone a DHT request.

use std::net::SocketAddr;
use std::time::Duration;

use hmac::{Hmac, Mac};
use libp2p::connection_limits::{self, ConnectionLimits};
use libp2p::core::upgrade::Version;
use libp2p::kad::store::{MemoryStore, MemoryStoreConfig};
use libp2p::pnet::{PnetConfig, PreSharedKey};
use libp2p::request_response::{self, ProtocolSupport};
use libp2p::swarm::NetworkBehaviour;
use libp2p::{identify, kad, noise, tcp, yamux, Multiaddr, StreamProtocol, Transport as _};
use sha2::Sha256;

use super::{HoldsRequest, HoldsResponse, MAX_PROVIDED};
use crate::discovery::QUERY_TIMEOUT;

/// The Kademlia protocol name: Shoal's own, never IPFS's.
pub const KAD_PROTOCOL: StreamProtocol = StreamProtocol::new("/shoal/kad/1.0.0");
/// The protocol that asks a provider whether it still holds a blob.
pub const HOLDS_PROTOCOL: StreamProtocol = StreamProtocol::new("/shoal/holds/1.0.0");
/// Identify's protocol version: peers that speak another are ignored.
pub const PROTOCOL_VERSION: &str = "/shoal/dht/1";
/// Largest Kademlia message (a provider answer holds at most 20 peers with a few addresses).
const MAX_KAD_PACKET: usize = 16 << 10;
/// Bound on the TCP + pnet + noise + yamux handshake.
const HANDSHAKE_TIMEOUT: Duration = Duration::from_secs(5);
/// How long a provider record lives on the nodes that store it: the holder re-publishes well
/// before, and a record that outlives its holder is filtered by the "holds?" check.
pub const PROVIDER_TTL: Duration = Duration::from_secs(30 * 60);
/// Bound on one "holds?" exchange (dial included).
pub const HOLDS_TIMEOUT: Duration = Duration::from_secs(1);
/// Connections at once, and those still in their handshake (a stranger's never completes).
const MAX_CONNECTIONS: u32 = crate::listener::DEFAULT_MAX_CONNECTIONS as u32;
const MAX_PENDING: u32 = 64;

/// The domain of the pre-shared key, so the token's other uses never yield the same key.
const PSK_DOMAIN: &[u8] = b"shoal dht private network key v1";

/// The private-network key of the cluster: HMAC-SHA256(token, domain).
pub fn psk(token: &[u8]) -> PreSharedKey {
    let mut mac =
        <Hmac<Sha256> as Mac>::new_from_slice(token).unwrap_or_else(|_| unreachable!("hmac takes any key length"));
    mac.update(PSK_DOMAIN);
    PreSharedKey::new(mac.finalize().into_bytes().into())
}

/// The protocols a DHT node speaks.
#[derive(NetworkBehaviour)]
pub struct Behaviour {
    /// Caps on connections (the first behaviour: it refuses before the others see anything).
    pub limits: connection_limits::Behaviour,
    /// Provider records keyed by blob digest, and the routing table of members.
    pub kad: kad::Behaviour<MemoryStore>,
    /// Each member's host id, peer address and DHT address.
    pub identify: identify::Behaviour,
    /// "Do you still hold this blob?", asked of every provider a lookup finds.
    pub holds: request_response::json::Behaviour<HoldsRequest, HoldsResponse>,
}

/// A libp2p swarm for the cluster of `token`, announcing `agent` (this member's host id and
/// peer address) through identify, re-publishing its records every `republish` and refreshing
/// its routing table every `rebootstrap`, closing connections idle for `idle`.
pub fn swarm(
    token: &[u8],
    agent: String,
    republish: Duration,
    rebootstrap: Duration,
    idle: Duration,
) -> Result<libp2p::Swarm<Behaviour>, String> {
    let psk = psk(token);
    let swarm = libp2p::SwarmBuilder::with_new_identity()
        .with_tokio()
        .with_other_transport(|key| -> Result<_, Box<dyn std::error::Error + Send + Sync>> {
            let noise = noise::Config::new(key)?;
            Ok(tcp::tokio::Transport::new(tcp::Config::default().nodelay(true))
                .and_then(move |socket, _| PnetConfig::new(psk).handshake(socket))
                .upgrade(Version::V1Lazy)
                .authenticate(noise)
                .multiplex(yamux::Config::default())
                .timeout(HANDSHAKE_TIMEOUT))
        })
        .map_err(|e| e.to_string())?
        .with_behaviour(|key| behaviour(key, agent, republish, rebootstrap))
        .map_err(|e| e.to_string())?
        .with_swarm_config(|c| c.with_idle_connection_timeout(idle))
        .build();
    Ok(swarm)
}

fn behaviour(key: &libp2p::identity::Keypair, agent: String, republish: Duration, rebootstrap: Duration) -> Behaviour {
    let id = key.public().to_peer_id();
    let mut config = kad::Config::new(KAD_PROTOCOL);
    config
        .set_query_timeout(QUERY_TIMEOUT)
        .set_max_packet_size(MAX_KAD_PACKET)
        .set_provider_record_ttl(Some(PROVIDER_TTL))
        .set_provider_publication_interval(Some(republish))
        // Nobody may store arbitrary records here: inbound puts are dropped, and provider
        // records are stored by hand (see the node's event loop).
        .set_record_filtering(kad::StoreInserts::FilterBoth)
        // Members that joined through the same bootstrap node at the same moment each asked it
        // for the others before it knew them: only a later refresh introduces them to each
        // other. Refreshing as often as the bootstrap names are resolved bounds that wait.
        .set_periodic_bootstrap_interval(Some(rebootstrap));
    let store = MemoryStore::with_config(
        id,
        MemoryStoreConfig {
            max_records: 0,
            max_value_bytes: 0,
            max_providers_per_key: kad::K_VALUE.get(),
            max_provided_keys: MAX_PROVIDED,
        },
    );
    let mut kad = kad::Behaviour::with_config(id, store, config);
    kad.set_mode(Some(kad::Mode::Server));
    let identify = identify::Behaviour::new(
        identify::Config::new(PROTOCOL_VERSION.into(), key.public())
            .with_agent_version(agent)
            // Only the external address (advertise_addr and the DHT port) is announced: a
            // listener on 0.0.0.0 would otherwise announce loopback and every interface.
            .with_hide_listen_addrs(true),
    );
    let codec =
        request_response::json::codec::Codec::default().set_request_size_maximum(256).set_response_size_maximum(1024);
    let holds = request_response::Behaviour::with_codec(
        codec,
        [(HOLDS_PROTOCOL, ProtocolSupport::Full)],
        request_response::Config::default().with_request_timeout(HOLDS_TIMEOUT),
    );
    let limits = ConnectionLimits::default()
        .with_max_pending_incoming(Some(MAX_PENDING))
        .with_max_established(Some(MAX_CONNECTIONS))
        .with_max_established_per_peer(Some(2));
    Behaviour { limits: connection_limits::Behaviour::new(limits), kad, identify, holds }
}

/// `/ip4/a.b.c.d/tcp/port` (or `/ip6/…`).
pub fn multiaddr(addr: SocketAddr) -> Multiaddr {
    let ip = match addr.ip() {
        std::net::IpAddr::V4(v4) => libp2p::multiaddr::Protocol::Ip4(v4),
        std::net::IpAddr::V6(v6) => libp2p::multiaddr::Protocol::Ip6(v6),
    };
    Multiaddr::empty().with(ip).with(libp2p::multiaddr::Protocol::Tcp(addr.port()))
}

/// The TCP socket address of `/ip4|ip6/…/tcp/…` multiaddrs, if that is what it is.
pub fn socket_addr(addr: &Multiaddr) -> Option<SocketAddr> {
    use libp2p::multiaddr::Protocol;
    let mut parts = addr.iter();
    let ip = match parts.next()? {
        Protocol::Ip4(v4) => std::net::IpAddr::V4(v4),
        Protocol::Ip6(v6) => std::net::IpAddr::V6(v6),
        _ => return None,
    };
    let Protocol::Tcp(port) = parts.next()? else { return None };
    Some(SocketAddr::new(ip, port))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_key_depends_on_the_token_only() {
        assert!(psk(b"0123456789abcdef") == psk(b"0123456789abcdef"));
        assert!(psk(b"0123456789abcdef") != psk(b"0123456789abcdeF"));
    }

    #[test]
    fn socket_addresses_round_trip() {
        for a in ["127.0.0.1:65004", "[::1]:7"] {
            let a: SocketAddr = a.parse().unwrap();
            assert_eq!(socket_addr(&multiaddr(a)), Some(a));
        }
        assert_eq!(socket_addr(&"/dns4/x/tcp/1".parse().unwrap()), None);
    }
}

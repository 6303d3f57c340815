//! Discovery: who in the cluster holds a blob, and who the cluster's members are.
//!
//! One small trait, [`Discovery`] (Spegel's router is the model: ready, find holders,
//! advertise, withdraw), with an in-memory implementation for tests ([`memory`]) and a libp2p
//! Kademlia DHT ([`dht`]); the scheduler is the third. [`Holdings`] keeps what this node
//! advertised in step with its metadata store (start-up, eviction).
//!
//! Discovery only finds candidates: it never decides whom to fetch from, and a holder it
//! returns is a claim, not a proof (pieces are checked against trusted digests, the blob
//! against its sha256). Every call is bounded in time.

pub mod bootstrap;
pub mod dht;
mod holdings;
pub mod memory;
pub mod sched_connect;
pub(crate) mod scheduler;

#[cfg(test)]
pub(crate) mod conformance;

use std::net::SocketAddr;

use shoal_core::Digest;

pub use holdings::Holdings;

/// A cluster member, as other daemons reach it.
#[derive(Debug, Clone, PartialEq, Eq, Hash, PartialOrd, Ord, serde::Serialize, serde::Deserialize)]
pub struct Holder {
    /// The member's host id (`host_id`).
    pub host_id: String,
    /// Its peer (QUIC) address: `advertise_addr` and the port of `peer_listen`.
    pub addr: SocketAddr,
}

/// Why a discovery call failed. Finding nobody is not an error: it is an empty list.
#[derive(Debug, thiserror::Error)]
pub enum DiscoveryError {
    /// The discovery task has stopped (the daemon is shutting down, or the DHT's event loop
    /// ended); nothing can be found or advertised any more. Callers fall back to the origin.
    #[error("discovery has stopped")]
    Stopped,
    /// The call did not finish within its bound (the network is slow or partitioned); callers
    /// go on without it, and a later advertisement or re-publication catches up.
    #[error("discovery call timed out after {0:?}")]
    Timeout(std::time::Duration),
    /// This node's own record store refused the record (more blobs advertised than it keeps;
    /// see [`dht::MAX_PROVIDED`]). The blob is still served to whoever asks for it.
    #[error("discovery record store: {0}")]
    Store(String),
}

/// Finding the holders of blobs, and being found.
#[async_trait::async_trait]
pub trait Discovery: Send + Sync {
    /// True once this node can answer: it knows at least one other member.
    fn ready(&self) -> bool;
    /// Other members that hold (part of) `blob`, best effort: at most
    /// [`MAX_HOLDERS`], this node never among them, within [`QUERY_TIMEOUT`].
    async fn holders(&self, blob: &Digest) -> Result<Vec<Holder>, DiscoveryError>;
    /// This node holds (part of) `blob`: other members may now find it.
    async fn advertise(&self, blob: &Digest) -> Result<(), DiscoveryError>;
    /// This node no longer holds `blob`: no member finds it here any more.
    async fn withdraw(&self, blob: &Digest) -> Result<(), DiscoveryError>;
    /// The cluster members this node knows, itself included, sorted by host id: the set over
    /// which rendezvous hashing picks who fetches a blob from the origin.
    fn members(&self) -> Vec<Holder>;
}

/// The most holders one [`Discovery::holders`] call returns.
pub const MAX_HOLDERS: usize = 32;
/// The bound on one [`Discovery::holders`] or [`Discovery::advertise`] call.
pub const QUERY_TIMEOUT: std::time::Duration = std::time::Duration::from_secs(2);

/// The member that fetches `blob` from the origin when no member holds it: the highest
/// sha256(host id ‖ blob) among `members` (rendezvous hashing), so every member that knows the
/// same members picks the same one without asking anybody.
pub fn origin_fetcher<'a>(members: &'a [Holder], blob: &Digest) -> Option<&'a Holder> {
    use sha2::{Digest as _, Sha256};
    members.iter().max_by_key(|m| {
        let h = Sha256::new().chain_update(m.host_id.as_bytes()).chain_update(blob.as_bytes()).finalize();
        (u64::from_be_bytes(h[..8].try_into().unwrap_or([0; 8])), m.host_id.clone())
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn member(i: u16) -> Holder {
        Holder { host_id: format!("node-{i}"), addr: SocketAddr::from(([10, 0, 0, 1], 65002 + i)) }
    }

    #[test]
    fn every_member_picks_the_same_origin_fetcher_and_blobs_spread() {
        let members: Vec<Holder> = (0..6).map(member).collect();
        let mut reversed = members.clone();
        reversed.reverse();
        let mut picked = std::collections::HashSet::new();
        for i in 0..64u32 {
            let blob = Digest::of(&i.to_be_bytes());
            let a = origin_fetcher(&members, &blob).unwrap();
            assert_eq!(Some(a), origin_fetcher(&reversed, &blob), "order does not matter");
            picked.insert(a.host_id.clone());
        }
        assert!(picked.len() >= 4, "64 blobs over 6 members land on most of them: {picked:?}");
        assert_eq!(origin_fetcher(&[], &Digest::of(b"x")), None);
    }

    #[test]
    fn losing_a_member_moves_only_its_blobs() {
        let members: Vec<Holder> = (0..6).map(member).collect();
        let fewer: Vec<Holder> = members[1..].to_vec();
        for i in 0..64u32 {
            let blob = Digest::of(&i.to_be_bytes());
            let before = origin_fetcher(&members, &blob).unwrap();
            if before.host_id != "node-0" {
                assert_eq!(Some(before), origin_fetcher(&fewer, &blob));
            }
        }
    }
}

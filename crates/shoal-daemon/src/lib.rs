//! The Shoal node daemon: a registry mirror in front of origin registries, with a
//! content-addressed blob cache whose downloads are tasks made of pieces.
//!
//! The tree shows the architecture (see DESIGN.md):
//! - `mirror/` — the OCI distribution HTTP API: parse, authorize, serve from the cache or join a
//!   download; `mirror/body` streams a blob as its pieces land;
//! - `download/` — one download per blob (`tasks`), driving `shoal_core::child` (`swarm`) with
//!   parents from the scheduler or the DHT (`dht`) and runs from the origin (`origin`), pieces
//!   assembled and verified by the `writer`, readers' positions in `readers`;
//! - `store/` — on-disk paths, metadata (`meta`, `meta_redb`), the cache's room (`space`),
//!   recovery and eviction (`gc`), store health, pieces as a parent sees them;
//! - `peer/` — the QUIC transport: TLS, membership proof, framing, serving and fetching pieces,
//!   seeding;
//! - `discovery/` — finding holders: the scheduler client, the libp2p Kademlia DHT, in-memory;
//! - `origin/` — the origin registries, their auth, and blob bytes straight from them;
//! - `admin/` — the admin listener's API: health, status, metrics, import and cache management;
//! - `preheat/` — preheat jobs the scheduler hands this daemon, fetched through the mirror;
//! - `config`, `limits`, `listener` (the hardened HTTP accept loop), `metrics`, `hash`, `fault`
//!   (test-only faults), `daemon` (wiring).
//!
//! Imports go one way: mirror → download → (peer, discovery, store, origin).
#![warn(missing_docs)]

pub(crate) mod admin;
pub(crate) mod clock;
pub mod config;
pub mod daemon;
pub mod discovery;
pub(crate) mod download;
pub(crate) mod fault;
pub(crate) mod hash;
pub(crate) mod limits;
pub mod listener;
pub(crate) mod metrics;
pub(crate) mod mirror;
pub(crate) mod origin;
pub mod peer;
pub(crate) mod preheat;
pub(crate) mod store;

/// What the `shoal` binary and the end-to-end tests use besides `config` and `daemon`.
pub mod api {
    pub use crate::admin::wire;
    pub use crate::clock::now_ms;
    pub use crate::discovery::sched_connect;
    pub use crate::download::tasks::TaskStatus;
    /// What a manifest refers to (shared with `shoal import` and `shoal fetch -o`).
    pub mod manifest {
        pub use crate::admin::manifest::*;
    }
}

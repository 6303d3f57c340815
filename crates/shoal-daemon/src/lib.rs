//! The Shoal node daemon: a registry mirror in front of origin registries, with a
//! content-addressed blob cache whose downloads are tasks made of pieces.
//!
//! Module map: `config` (keys and validation), `paths` (every on-disk path), `meta` and
//! `meta_redb` (metadata), `writer` (piece assembly into a partial file), `task` (one download per
//! blob, shared by every reader), `origin` (upstream registries and their auth), `mirror` (the
//! OCI distribution HTTP API), `metrics` and `admin`, `space` (the cache's quota and free-space floor, at every moment), `gc`
//! (recovery and the periodic check), `health` (whether the cache can store), `direct` (blob
//! bytes straight from the origin, uncached), `listener` (the hardened HTTP accept loop),
//! `daemon` (wiring).
#![warn(missing_docs)]

pub mod body;
pub mod config;
pub mod daemon;
pub mod direct;
pub mod discovery;
pub mod fault;
pub mod gc;
pub mod hash;
pub mod health;
pub mod limits;
pub mod listener;
pub mod meta;
pub mod meta_redb;
pub mod metrics;
pub mod mirror;
pub mod origin;
pub mod origin_fetch;
pub mod paths;
pub mod peer;
pub mod readers;
pub mod sched_client;
pub mod sched_connect;
pub mod seeding;
pub mod serve_pieces;
pub mod space;
pub mod swarm;
pub mod swarm_dht;
pub mod task;
pub mod writer;

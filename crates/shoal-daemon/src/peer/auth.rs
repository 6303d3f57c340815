//! Cluster membership of peer connections: see [`shoal_core::membership`].

pub use shoal_core::membership::{prove, verify, Role, PEER_EXPORTER_LABEL as EXPORTER_LABEL};

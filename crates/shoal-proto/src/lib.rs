//! Generated code for Shoal's two protocols, and nothing else: `scheduler` (gRPC between daemons
//! and `shoal scheduler`) and `peer` (messages framed on QUIC streams between daemons).
#![allow(missing_docs, clippy::all)]

/// The scheduler service (`proto/scheduler.proto`).
pub mod scheduler {
    tonic::include_proto!("shoal.scheduler.v1");
}

/// The peer protocol messages (`proto/peer.proto`).
pub mod peer {
    tonic::include_proto!("shoal.peer.v1");
}

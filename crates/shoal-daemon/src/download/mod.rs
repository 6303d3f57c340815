//! Downloads: one per blob, shared by every reader; the driver of the child machine; the origin
//! and parent sources; the piece writer.

pub(crate) mod counters;
pub(crate) mod dht;
pub(crate) mod error;
pub(crate) mod origin;
pub(crate) mod progress;
pub(crate) mod readers;
pub(crate) mod swarm;
pub(crate) mod tasks;
pub(crate) mod whole;
pub(crate) mod writer;

//! The store: blob files and partial files (`paths`), metadata (`meta`, `meta_redb`), the
//! cache's room under its quota and free-space floor (`space`), recovery and eviction (`gc`),
//! whether the disk can store (`health`), the pieces a parent serves (`pieces`), and imported
//! images with their pins and times to live (`imports`).

pub(crate) mod gc;
pub(crate) mod health;
pub(crate) mod imports;
pub(crate) mod meta;
pub(crate) mod meta_redb;
pub(crate) mod paths;
mod pieces;
pub(crate) mod pins;
pub(crate) mod read;
pub(crate) mod space;

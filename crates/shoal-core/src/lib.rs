//! Shoal's pure domain: the values and decisions every other crate shares.
//!
//! Everything here is plain data and pure functions: digests, repository names and references,
//! distribution API paths, byte ranges, piece layout, piece bitmaps, sizes and rates, the OCI error
//! vocabulary and cache eviction plans. Nothing in this crate does I/O, spawns tasks or reads a
//! clock; time, where needed, is passed in. That keeps it unit- and property-testable.
#![warn(missing_docs)]

pub mod access;
pub mod bitmap;
pub mod child;
pub mod digest;
pub mod duration;
pub mod error_code;
pub mod evict;
pub mod media;
pub mod membership;
pub mod name;
pub mod picker;
pub mod piece;
pub mod piece_digest;
pub mod preheat;
pub mod range;
pub mod rendezvous;
pub mod route;
pub mod sched;
pub mod sched_owner;
pub mod seeding;
#[cfg(any(test, feature = "sim"))]
pub mod sim;
pub mod size;

pub use bitmap::Bitmap;
pub use digest::Digest;
pub use error_code::ErrorCode;
pub use name::{Reference, RepoName};
pub use piece::PieceLayout;
pub use piece_digest::{PieceDigest, PieceHasher};
pub use range::ByteRange;
pub use route::{Route, RouteError};

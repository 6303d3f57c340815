//! What the admin endpoints `/import` and `/cache` exchange with the `shoal` CLI: plain serde
//! types and the framing of an import upload. No logic beyond the framing's bounds.
//!
//! An import upload (`POST /import`) is one body: a 4-byte big-endian length, an
//! [`ImportHeader`] as JSON of that length (at most [`MAX_HEADER`]), then the bytes of every blob
//! of [`ImportHeader::blobs`], one after the other in that order, exactly `size` bytes each and
//! nothing after the last.

use shoal_core::Digest;

/// Largest import header, bytes (manifests travel inside it).
pub const MAX_HEADER: u32 = 16 << 20;
/// Largest manifest or index, bytes (the distribution registry's own limit).
pub const MAX_MANIFEST: usize = 4 << 20;
/// Most images (tags) one import names.
pub const MAX_IMAGES: usize = 1024;
/// Most manifests one import carries.
pub const MAX_MANIFESTS: usize = 4096;
/// Most blobs one import carries.
pub const MAX_BLOBS: usize = 65_536;

/// The header of an import upload.
#[derive(Debug, Clone, Default, serde::Serialize, serde::Deserialize)]
pub struct ImportHeader {
    /// The tags to make pullable.
    pub images: Vec<ImportImage>,
    /// Every manifest the tags need (the tagged ones, and for an index the platform manifests
    /// carried with it), bodies exactly as they hash to their digests.
    pub manifests: Vec<ImportManifest>,
    /// The blobs that follow the header, in order.
    pub blobs: Vec<ImportBlob>,
    /// Never evict the images' blobs while the images live.
    #[serde(default)]
    pub pin: bool,
    /// Forget the images (and evict their blobs) this many seconds after the import.
    #[serde(default)]
    pub ttl_secs: Option<u64>,
    /// Serve them without the origin only to clients the ordinary offline rule allows.
    #[serde(default)]
    pub restricted: bool,
}

/// One tag to make pullable: `registry/repository:tag` → `digest`.
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub struct ImportImage {
    /// Registry host (`docker.io`, `127.0.0.1:5000`): one the daemon mirrors.
    pub registry: String,
    /// Repository, e.g. `library/alpine`.
    pub repository: String,
    /// Tag.
    pub tag: String,
    /// The manifest or index the tag names.
    pub digest: Digest,
}

/// A manifest carried in the header.
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub struct ImportManifest {
    /// Its digest.
    pub digest: Digest,
    /// Its media type.
    pub media_type: String,
    /// Its exact bytes (JSON, hence UTF-8).
    pub body: String,
}

/// A blob that follows the header.
#[derive(Debug, Clone, Copy, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub struct ImportBlob {
    /// Its digest.
    pub digest: Digest,
    /// Its size, bytes.
    pub size: u64,
}

/// What an import did.
#[derive(Debug, Clone, Default, serde::Serialize, serde::Deserialize)]
pub struct ImportReport {
    /// The tags now pullable, as `registry/repository:tag@digest`.
    pub images: Vec<String>,
    /// Blobs written to the store.
    pub blobs_written: usize,
    /// Blobs the store already held.
    pub blobs_held: usize,
    /// Bytes written to the store.
    pub bytes_written: u64,
}

/// `GET /cache`: what the cache holds.
#[derive(Debug, Clone, Default, serde::Serialize, serde::Deserialize)]
pub struct CacheListing {
    /// Imported images.
    pub images: Vec<CacheImage>,
    /// Every blob record.
    pub blobs: Vec<CacheBlob>,
}

/// One imported image in `GET /cache`.
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub struct CacheImage {
    /// `registry/repository:tag`.
    pub name: String,
    /// The manifest or index the tag names.
    pub digest: Digest,
    /// Bytes of its blobs.
    pub size: u64,
    /// Blobs (configs and layers).
    pub blobs: usize,
    /// Never evicted while it lives.
    pub pinned: bool,
    /// When it is forgotten, unix milliseconds.
    pub expires: Option<u64>,
    /// When it was imported, unix milliseconds.
    pub imported: u64,
    /// Served offline only to clients the ordinary offline rule allows.
    pub restricted: bool,
}

/// One blob in `GET /cache`.
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub struct CacheBlob {
    /// Its digest.
    pub digest: Digest,
    /// Its size, bytes.
    pub size: u64,
    /// `complete`, `verified` or `partial`.
    pub state: String,
    /// Pinned by itself or by a live pinned image.
    pub pinned: bool,
    /// Being served or downloaded right now.
    pub in_use: bool,
    /// Last access, unix milliseconds.
    pub last_access: u64,
    /// When the earliest-expiring image holding it expires (none: kept by the quota alone).
    pub expires: Option<u64>,
}

/// `POST /cache/rm` and `POST /cache/pin`: a blob digest or an imported image
/// (`registry/repository:tag`).
#[derive(Debug, Clone, serde::Serialize, serde::Deserialize)]
pub struct CacheTarget {
    /// `sha256:<hex>`, or `registry/repository:tag`.
    pub target: String,
    /// For `/cache/pin`: pin (true) or unpin (false).
    #[serde(default)]
    pub pin: bool,
}

/// What `POST /cache/rm` or `POST /cache/pin` did.
#[derive(Debug, Clone, Default, serde::Serialize, serde::Deserialize)]
pub struct CacheChange {
    /// Images forgotten or (un)pinned.
    pub images: Vec<String>,
    /// Blobs removed or (un)pinned.
    pub blobs: Vec<Digest>,
}

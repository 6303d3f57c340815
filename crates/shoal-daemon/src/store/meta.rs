//! Blob and manifest metadata: the [`MetaStore`] interface, its records, and an in-memory version.
//!
//! The redb implementation lives in `meta_redb`; both pass the same conformance suite below.
//! A blob becomes `Complete` here only after its file is written, synced, verified and in place.

#[cfg(test)]
use std::collections::BTreeMap;
#[cfg(test)]
use std::sync::Mutex;

use shoal_core::{Bitmap, Digest, PieceLayout};

pub use crate::store::imports::ImageRecord;

/// Why a metadata operation failed.
#[derive(Debug, thiserror::Error)]
pub enum MetaError {
    /// The embedded database failed (I/O, corruption).
    #[error("metadata store: {0}")]
    Db(String),
    /// A stored record could not be decoded.
    #[error("metadata record for {key} is corrupt: {message}")]
    Corrupt {
        /// The record's key.
        key: String,
        /// What was wrong.
        message: String,
    },
}

/// Where a blob stands.
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub enum BlobState {
    /// Downloading (or interrupted): these pieces are on disk in the partial file.
    Partial {
        /// Present pieces (encoded [`Bitmap`]).
        bitmap: Vec<u8>,
    },
    /// Every byte is in the partial file and the blob hashed to its digest, but the file may
    /// not be synced and moved yet: start-up checks it again and finishes the move.
    Verified,
    /// Complete and verified against its digest, at its final path.
    Complete,
}

/// Metadata of one blob.
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub struct BlobRecord {
    /// Size and piece size.
    pub layout: PieceLayout,
    /// Partial or complete.
    pub state: BlobState,
    /// BLAKE3 of each piece present, as hex (empty string for missing pieces). Stored under
    /// a key of its own: records of the sha256 era read as having no piece digests.
    #[serde(rename = "piece_blake3", default)]
    pub piece_digests: Vec<String>,
    /// Last access, unix milliseconds.
    pub last_access: u64,
}

impl BlobRecord {
    /// A fresh record with no pieces.
    pub fn new(layout: PieceLayout, now: u64) -> Self {
        let n = layout.count();
        Self {
            layout,
            state: BlobState::Partial { bitmap: Bitmap::new(n).as_bytes().to_vec() },
            piece_digests: vec![String::new(); n as usize],
            last_access: now,
        }
    }

    /// The record as read from storage, with one digest slot per piece whatever was stored.
    pub fn normalized(mut self) -> Self {
        self.piece_digests.resize(self.layout.count() as usize, String::new());
        self
    }

    /// The present pieces (all of them when verified or complete; none if the stored bitmap is
    /// corrupt).
    pub fn bitmap(&self) -> Bitmap {
        let n = self.layout.count();
        match &self.state {
            BlobState::Complete | BlobState::Verified => {
                let mut b = Bitmap::new(n);
                (0..n).for_each(|i| {
                    b.set(i);
                });
                b
            }
            BlobState::Partial { bitmap } => Bitmap::from_bytes(n, bitmap).unwrap_or_else(|_| Bitmap::new(n)),
        }
    }

    /// True when complete.
    pub fn is_complete(&self) -> bool {
        self.state == BlobState::Complete
    }
}

/// A cached manifest body.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ManifestRecord {
    /// Its media type (the origin's Content-Type).
    pub media_type: String,
    /// The exact bytes, which hash to its digest.
    pub body: Vec<u8>,
}

/// Where a tag pointed when last seen at the origin.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct TagRecord {
    /// Manifest digest.
    pub digest: Digest,
    /// Media type of that manifest.
    pub media_type: String,
    /// When the origin (or an import) last said so, unix ms; 0 for a record older than this
    /// field. A site cut off from the origin resolves a tag to its most recent sighting.
    pub seen_at_ms: u64,
}

/// How durable a write must be.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Durability {
    /// Synced to disk before returning: for state changes that must survive a crash.
    Sync,
    /// May be lost in a crash: for progress that is cheap to redo (access times, bitmaps).
    Lazy,
}

/// Metadata storage: blobs, manifests by digest, and tag mappings.
pub trait MetaStore: Send + Sync + 'static {
    /// The record of a blob.
    fn blob(&self, digest: &Digest) -> Result<Option<BlobRecord>, MetaError>;
    /// Writes a blob record.
    fn put_blob(&self, digest: &Digest, record: &BlobRecord, durability: Durability) -> Result<(), MetaError>;
    /// Removes a blob record (no error if absent).
    fn remove_blob(&self, digest: &Digest) -> Result<(), MetaError>;
    /// All blob records.
    fn blobs(&self) -> Result<Vec<(Digest, BlobRecord)>, MetaError>;
    /// A cached manifest.
    fn manifest(&self, digest: &Digest) -> Result<Option<ManifestRecord>, MetaError>;
    /// Caches a manifest (its digest must already be verified).
    fn put_manifest(&self, digest: &Digest, record: &ManifestRecord) -> Result<(), MetaError>;
    /// Where `registry/name:tag` pointed when last seen.
    fn tag(&self, key: &str) -> Result<Option<TagRecord>, MetaError>;
    /// Records where a tag points.
    fn put_tag(&self, key: &str, record: &TagRecord) -> Result<(), MetaError>;
    /// When the access grant stored under `key` was made, unix milliseconds (see `mirror::grants`).
    fn grant(&self, key: &str) -> Result<Option<u64>, MetaError>;
    /// Stores an access grant made at `at`, durably.
    fn put_grant(&self, key: &str, at: u64) -> Result<(), MetaError>;
    /// Forgets an access grant (no error if absent).
    fn remove_grant(&self, key: &str) -> Result<(), MetaError>;
    /// Forgets every grant made before `before`; returns how many.
    fn prune_grants(&self, before: u64) -> Result<usize, MetaError>;
    /// The origin's last `WWW-Authenticate` challenge stored under `key` (see `mirror::grants`).
    fn challenge(&self, key: &str) -> Result<Option<String>, MetaError>;
    /// Stores (or, with `None`, forgets) a challenge, durably.
    fn set_challenge(&self, key: &str, value: Option<&str>) -> Result<(), MetaError>;
    /// Every imported image (see `store::imports`).
    fn images(&self) -> Result<Vec<ImageRecord>, MetaError>;
    /// Records an imported image under its key, durably (replacing one of the same key).
    fn put_image(&self, record: &ImageRecord) -> Result<(), MetaError>;
    /// Forgets an imported image (no error if absent).
    fn remove_image(&self, key: &str) -> Result<(), MetaError>;
    /// Blobs pinned by themselves (`shoal cache pin DIGEST`).
    fn blob_pins(&self) -> Result<Vec<Digest>, MetaError>;
    /// Pins or unpins a blob by itself, durably.
    fn set_blob_pin(&self, digest: &Digest, pinned: bool) -> Result<(), MetaError>;
}

/// The key of a tag mapping.
pub fn tag_key(registry: &str, name: &str, tag: &str) -> String {
    format!("{registry}/{name}:{tag}")
}

/// An in-memory [`MetaStore`] for unit tests of the modules above it.
#[cfg(test)]
#[derive(Debug, Default)]
pub struct MemMeta {
    blobs: Mutex<BTreeMap<Digest, BlobRecord>>,
    manifests: Mutex<BTreeMap<Digest, ManifestRecord>>,
    tags: Mutex<BTreeMap<String, TagRecord>>,
    grants: Mutex<BTreeMap<String, u64>>,
    challenges: Mutex<BTreeMap<String, String>>,
    images: Mutex<BTreeMap<String, ImageRecord>>,
    blob_pins: Mutex<std::collections::BTreeSet<Digest>>,
}

#[cfg(test)]
fn locked<T>(m: &Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    m.lock().unwrap_or_else(|p| p.into_inner())
}

#[cfg(test)]
impl MetaStore for MemMeta {
    fn blob(&self, digest: &Digest) -> Result<Option<BlobRecord>, MetaError> {
        Ok(locked(&self.blobs).get(digest).cloned())
    }
    fn put_blob(&self, digest: &Digest, record: &BlobRecord, _: Durability) -> Result<(), MetaError> {
        locked(&self.blobs).insert(*digest, record.clone());
        Ok(())
    }
    fn remove_blob(&self, digest: &Digest) -> Result<(), MetaError> {
        locked(&self.blobs).remove(digest);
        Ok(())
    }
    fn blobs(&self) -> Result<Vec<(Digest, BlobRecord)>, MetaError> {
        Ok(locked(&self.blobs).iter().map(|(d, r)| (*d, r.clone())).collect())
    }
    fn manifest(&self, digest: &Digest) -> Result<Option<ManifestRecord>, MetaError> {
        Ok(locked(&self.manifests).get(digest).cloned())
    }
    fn put_manifest(&self, digest: &Digest, record: &ManifestRecord) -> Result<(), MetaError> {
        locked(&self.manifests).insert(*digest, record.clone());
        Ok(())
    }
    fn tag(&self, key: &str) -> Result<Option<TagRecord>, MetaError> {
        Ok(locked(&self.tags).get(key).cloned())
    }
    fn put_tag(&self, key: &str, record: &TagRecord) -> Result<(), MetaError> {
        locked(&self.tags).insert(key.to_owned(), record.clone());
        Ok(())
    }
    fn grant(&self, key: &str) -> Result<Option<u64>, MetaError> {
        Ok(locked(&self.grants).get(key).copied())
    }
    fn put_grant(&self, key: &str, at: u64) -> Result<(), MetaError> {
        locked(&self.grants).insert(key.to_owned(), at);
        Ok(())
    }
    fn remove_grant(&self, key: &str) -> Result<(), MetaError> {
        locked(&self.grants).remove(key);
        Ok(())
    }
    fn prune_grants(&self, before: u64) -> Result<usize, MetaError> {
        let mut g = locked(&self.grants);
        let n = g.len();
        g.retain(|_, at| *at >= before);
        Ok(n - g.len())
    }
    fn challenge(&self, key: &str) -> Result<Option<String>, MetaError> {
        Ok(locked(&self.challenges).get(key).cloned())
    }
    fn set_challenge(&self, key: &str, value: Option<&str>) -> Result<(), MetaError> {
        let mut c = locked(&self.challenges);
        match value {
            Some(v) => c.insert(key.to_owned(), v.to_owned()),
            None => c.remove(key),
        };
        Ok(())
    }
    fn images(&self) -> Result<Vec<ImageRecord>, MetaError> {
        Ok(locked(&self.images).values().cloned().collect())
    }
    fn put_image(&self, record: &ImageRecord) -> Result<(), MetaError> {
        locked(&self.images).insert(record.key(), record.clone());
        Ok(())
    }
    fn remove_image(&self, key: &str) -> Result<(), MetaError> {
        locked(&self.images).remove(key);
        Ok(())
    }
    fn blob_pins(&self) -> Result<Vec<Digest>, MetaError> {
        Ok(locked(&self.blob_pins).iter().copied().collect())
    }
    fn set_blob_pin(&self, digest: &Digest, pinned: bool) -> Result<(), MetaError> {
        let mut p = locked(&self.blob_pins);
        if pinned {
            p.insert(*digest);
        } else {
            p.remove(digest);
        }
        Ok(())
    }
}

/// The conformance suite every [`MetaStore`] must pass.
#[cfg(test)]
pub(crate) mod conformance {
    use super::*;

    pub(crate) fn run(store: &dyn MetaStore) {
        let d = Digest::of(b"blob");
        let layout = PieceLayout::for_size(3 << 20);
        assert_eq!(store.blob(&d).unwrap(), None);
        let mut rec = BlobRecord::new(layout, 7);
        assert_eq!(rec.bitmap().count(), 0);
        store.put_blob(&d, &rec, Durability::Sync).unwrap();
        assert_eq!(store.blob(&d).unwrap(), Some(rec.clone()));

        let mut bm = rec.bitmap();
        bm.set(1);
        rec.state = BlobState::Partial { bitmap: bm.as_bytes().to_vec() };
        rec.piece_digests[1] = Digest::of(b"p").hex();
        store.put_blob(&d, &rec, Durability::Lazy).unwrap();
        let got = store.blob(&d).unwrap().unwrap();
        assert!(got.bitmap().get(1) && !got.bitmap().get(0));
        assert_eq!(got.piece_digests[1], Digest::of(b"p").hex());

        rec.state = BlobState::Complete;
        store.put_blob(&d, &rec, Durability::Sync).unwrap();
        assert!(store.blob(&d).unwrap().unwrap().is_complete());
        assert!(store.blob(&d).unwrap().unwrap().bitmap().is_full());
        let other = Digest::of(b"other");
        store.put_blob(&other, &BlobRecord::new(layout, 1), Durability::Sync).unwrap();
        let mut all: Vec<_> = store.blobs().unwrap().into_iter().map(|(d, _)| d).collect();
        all.sort();
        let mut want = vec![d, other];
        want.sort();
        assert_eq!(all, want);
        store.remove_blob(&d).unwrap();
        store.remove_blob(&d).unwrap();
        assert_eq!(store.blob(&d).unwrap(), None);

        let m =
            ManifestRecord { media_type: "application/vnd.oci.image.manifest.v1+json".into(), body: b"{}".to_vec() };
        let md = Digest::of(b"{}");
        assert_eq!(store.manifest(&md).unwrap(), None);
        store.put_manifest(&md, &m).unwrap();
        assert_eq!(store.manifest(&md).unwrap(), Some(m.clone()));

        let key = tag_key("docker.io", "library/alpine", "3");
        assert_eq!(store.tag(&key).unwrap(), None);
        let t = TagRecord { digest: md, media_type: m.media_type.clone(), seen_at_ms: 1_700_000_000_000 };
        store.put_tag(&key, &t).unwrap();
        assert_eq!(store.tag(&key).unwrap(), Some(t));
        let t2 = TagRecord { digest: d, media_type: "x".into(), seen_at_ms: 0 };
        store.put_tag(&key, &t2).unwrap();
        assert_eq!(store.tag(&key).unwrap(), Some(t2));

        assert_eq!(store.grant("g a").unwrap(), None);
        store.put_grant("g a", 5).unwrap();
        store.put_grant("g b", 9).unwrap();
        assert_eq!(store.grant("g a").unwrap(), Some(5));
        store.put_grant("g a", 7).unwrap();
        assert_eq!(store.grant("g a").unwrap(), Some(7));
        assert_eq!(store.prune_grants(8).unwrap(), 1);
        assert_eq!(store.grant("g a").unwrap(), None);
        store.remove_grant("g b").unwrap();
        store.remove_grant("g b").unwrap();
        assert_eq!(store.grant("g b").unwrap(), None);

        assert_eq!(store.challenge("c").unwrap(), None);
        store.set_challenge("c", Some("Basic realm=\"x\"")).unwrap();
        assert_eq!(store.challenge("c").unwrap().as_deref(), Some("Basic realm=\"x\""));
        store.set_challenge("c", None).unwrap();
        store.set_challenge("c", None).unwrap();
        assert_eq!(store.challenge("c").unwrap(), None);

        let image = crate::store::imports::tests::image("v1", &[b"config", b"layer"], true, Some(9));
        assert_eq!(store.images().unwrap(), vec![]);
        store.put_image(&image).unwrap();
        let mut moved = image.clone();
        moved.tag = "v2".into();
        store.put_image(&moved).unwrap();
        store.put_image(&image).unwrap();
        assert_eq!(store.images().unwrap(), vec![image.clone(), moved]);
        store.remove_image(&crate::store::meta::tag_key("r", "a/b", "v2")).unwrap();
        store.remove_image("absent").unwrap();
        assert_eq!(store.images().unwrap(), vec![image]);

        assert_eq!(store.blob_pins().unwrap(), vec![]);
        store.set_blob_pin(&d, true).unwrap();
        store.set_blob_pin(&d, true).unwrap();
        assert_eq!(store.blob_pins().unwrap(), vec![d]);
        store.set_blob_pin(&d, false).unwrap();
        store.set_blob_pin(&d, false).unwrap();
        assert_eq!(store.blob_pins().unwrap(), vec![]);
    }

    #[test]
    fn mem_meta_conforms() {
        run(&MemMeta::default());
    }
}

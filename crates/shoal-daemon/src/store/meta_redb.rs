//! The redb implementation of [`MetaStore`]: one file, versioned table names, JSON records.
//!
//! Writes that make a blob complete are committed with full durability; progress updates use
//! redb's non-durable commits (lost in a crash, redone on resume) so per-piece bookkeeping
//! does not cost an fsync per piece.
//!
//! After an I/O error redb refuses every later operation until the file is reopened (a full
//! disk would otherwise stop caching until a restart): the next operation reopens it.

use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{RwLock, RwLockReadGuard};

use redb::{Database, ReadableDatabase, ReadableTable, TableDefinition};
use shoal_core::Digest;

use crate::store::meta::{BlobRecord, Durability, ImageRecord, ManifestRecord, MetaError, MetaStore, TagRecord};

const BLOBS: TableDefinition<&str, &[u8]> = TableDefinition::new("blobs_v1");
const MANIFESTS: TableDefinition<&str, &[u8]> = TableDefinition::new("manifests_v1");
/// Tags: key (see `tag_key`) → `<digest> <seen at, unix ms> <media type>`.
const TAGS: TableDefinition<&str, &[u8]> = TableDefinition::new("tags_v2");
/// Tags as written before their seen time was kept: `<digest> <media type>`; read when
/// `TAGS` has no record (a site cut off right after an upgrade keeps its tags), never written.
const TAGS_V1: TableDefinition<&str, &[u8]> = TableDefinition::new("tags_v1");
/// Access grants: key (see `mirror::grants`) → when, unix milliseconds.
const GRANTS: TableDefinition<&str, u64> = TableDefinition::new("grants_v1");
/// The origins' last authentication challenges: key (see `mirror::grants`) → `WWW-Authenticate`.
const CHALLENGES: TableDefinition<&str, &str> = TableDefinition::new("challenges_v1");
/// Imported images: `registry/repository:tag` → JSON [`ImageRecord`].
const IMAGES: TableDefinition<&str, &[u8]> = TableDefinition::new("images_v1");
/// Blobs pinned by themselves: digest → when pinned, unix milliseconds.
const BLOB_PINS: TableDefinition<&str, u64> = TableDefinition::new("blob_pins_v1");

/// Metadata in a redb database file.
pub struct RedbMeta {
    path: PathBuf,
    /// `None` while a reopen after an I/O error has not succeeded yet.
    db: RwLock<Option<Database>>,
    /// An operation failed with an I/O error: reopen before the next one.
    failed: AtomicBool,
}

fn db_err(e: impl Into<redb::Error>) -> MetaError {
    MetaError::Db(e.into().to_string())
}

fn create(path: &Path) -> Result<Database, MetaError> {
    let db = Database::create(path).map_err(db_err)?;
    let txn = db.begin_write().map_err(db_err)?;
    for table in [BLOBS, MANIFESTS, TAGS, TAGS_V1, IMAGES] {
        txn.open_table(table).map_err(db_err)?;
    }
    txn.open_table(GRANTS).map_err(db_err)?;
    txn.open_table(CHALLENGES).map_err(db_err)?;
    txn.open_table(BLOB_PINS).map_err(db_err)?;
    txn.commit().map_err(db_err)?;
    Ok(db)
}

impl RedbMeta {
    /// Opens (or creates) the database at `path`.
    pub fn open(path: &Path) -> Result<Self, MetaError> {
        let db = create(path)?;
        Ok(Self { path: path.to_owned(), db: RwLock::new(Some(db)), failed: AtomicBool::new(false) })
    }

    /// The open database, reopened first if the last operation hit an I/O error.
    fn db(&self) -> Result<RwLockReadGuard<'_, Option<Database>>, MetaError> {
        if self.failed.load(Ordering::Acquire) {
            let mut db = self.db.write().unwrap_or_else(|e| e.into_inner());
            if self.failed.load(Ordering::Acquire) {
                // redb holds a lock on the file: the old handle must go before the new one opens.
                drop(db.take());
                *db = Some(create(&self.path)?);
                self.failed.store(false, Ordering::Release);
                tracing::info!(path = %self.path.display(), "metadata store reopened after an I/O error");
            }
        }
        Ok(self.db.read().unwrap_or_else(|e| e.into_inner()))
    }

    /// Runs `op` on the database; an I/O error makes the next call reopen it.
    fn with<T>(&self, op: impl FnOnce(&Database) -> Result<T, MetaError>) -> Result<T, MetaError> {
        let guard = self.db()?;
        let Some(db) = guard.as_ref() else {
            return Err(MetaError::Db("closed after an I/O error; reopening failed".into()));
        };
        let result = op(db);
        if let Err(MetaError::Db(_)) = &result {
            self.failed.store(true, Ordering::Release);
        }
        result
    }

    fn get(&self, table: TableDefinition<&str, &[u8]>, key: &str) -> Result<Option<Vec<u8>>, MetaError> {
        self.with(|db| {
            let txn = db.begin_read().map_err(db_err)?;
            let t = txn.open_table(table).map_err(db_err)?;
            Ok(t.get(key).map_err(db_err)?.map(|v| v.value().to_vec()))
        })
    }

    fn put(
        &self,
        table: TableDefinition<&str, &[u8]>,
        key: &str,
        value: &[u8],
        durability: Durability,
    ) -> Result<(), MetaError> {
        self.with(|db| {
            let mut txn = db.begin_write().map_err(db_err)?;
            if durability == Durability::Lazy {
                txn.set_durability(redb::Durability::None).map_err(|e| MetaError::Db(e.to_string()))?;
            }
            txn.open_table(table).map_err(db_err)?.insert(key, value).map_err(db_err)?;
            txn.commit().map_err(db_err)
        })
    }
}

fn decode_blob(key: &str, bytes: &[u8]) -> Result<BlobRecord, MetaError> {
    serde_json::from_slice(bytes)
        .map(BlobRecord::normalized)
        .map_err(|e| MetaError::Corrupt { key: key.to_owned(), message: e.to_string() })
}

impl MetaStore for RedbMeta {
    fn blob(&self, digest: &Digest) -> Result<Option<BlobRecord>, MetaError> {
        let key = digest.to_string();
        self.get(BLOBS, &key)?.map(|b| decode_blob(&key, &b)).transpose()
    }

    fn put_blob(&self, digest: &Digest, record: &BlobRecord, durability: Durability) -> Result<(), MetaError> {
        let bytes = serde_json::to_vec(record).map_err(|e| MetaError::Db(e.to_string()))?;
        self.put(BLOBS, &digest.to_string(), &bytes, durability)
    }

    fn remove_blob(&self, digest: &Digest) -> Result<(), MetaError> {
        self.with(|db| {
            let txn = db.begin_write().map_err(db_err)?;
            txn.open_table(BLOBS).map_err(db_err)?.remove(digest.to_string().as_str()).map_err(db_err)?;
            txn.commit().map_err(db_err)
        })
    }

    fn blobs(&self) -> Result<Vec<(Digest, BlobRecord)>, MetaError> {
        self.with(|db| {
            let txn = db.begin_read().map_err(db_err)?;
            let t = txn.open_table(BLOBS).map_err(db_err)?;
            let mut out = Vec::new();
            for row in t.iter().map_err(db_err)? {
                let (k, v) = row.map_err(db_err)?;
                let key = k.value();
                let digest = key.parse().map_err(|e: shoal_core::digest::DigestError| MetaError::Corrupt {
                    key: key.to_owned(),
                    message: e.to_string(),
                })?;
                out.push((digest, decode_blob(key, v.value())?));
            }
            Ok(out)
        })
    }

    fn manifest(&self, digest: &Digest) -> Result<Option<ManifestRecord>, MetaError> {
        let key = digest.to_string();
        let Some(bytes) = self.get(MANIFESTS, &key)? else {
            return Ok(None);
        };
        let nul = bytes
            .iter()
            .position(|&b| b == 0)
            .ok_or_else(|| MetaError::Corrupt { key: key.clone(), message: "no media type".into() })?;
        let media_type = String::from_utf8_lossy(&bytes[..nul]).into_owned();
        Ok(Some(ManifestRecord { media_type, body: bytes[nul + 1..].to_vec() }))
    }

    fn put_manifest(&self, digest: &Digest, record: &ManifestRecord) -> Result<(), MetaError> {
        let mut bytes = Vec::with_capacity(record.media_type.len() + 1 + record.body.len());
        bytes.extend_from_slice(record.media_type.replace('\0', "").as_bytes());
        bytes.push(0);
        bytes.extend_from_slice(&record.body);
        self.put(MANIFESTS, &digest.to_string(), &bytes, Durability::Sync)
    }

    fn tag(&self, key: &str) -> Result<Option<TagRecord>, MetaError> {
        let corrupt = |m: &str| MetaError::Corrupt { key: key.to_owned(), message: m.to_owned() };
        let (bytes, v2) = match self.get(TAGS, key)? {
            Some(b) => (b, true),
            None => match self.get(TAGS_V1, key)? {
                Some(b) => (b, false),
                None => return Ok(None),
            },
        };
        let text = std::str::from_utf8(&bytes).map_err(|_| corrupt("not utf-8"))?;
        let (digest, rest) = text.split_once(' ').ok_or_else(|| corrupt("no media type"))?;
        let (seen_at_ms, media_type) = if v2 {
            let (seen, media_type) = rest.split_once(' ').ok_or_else(|| corrupt("no seen time"))?;
            (seen.parse().map_err(|_| corrupt("bad seen time"))?, media_type)
        } else {
            (0, rest)
        };
        Ok(Some(TagRecord {
            digest: digest.parse().map_err(|_| corrupt("bad digest"))?,
            media_type: media_type.to_owned(),
            seen_at_ms,
        }))
    }

    fn put_tag(&self, key: &str, record: &TagRecord) -> Result<(), MetaError> {
        let value = format!("{} {} {}", record.digest, record.seen_at_ms, record.media_type);
        self.put(TAGS, key, value.as_bytes(), Durability::Sync)
    }

    fn grant(&self, key: &str) -> Result<Option<u64>, MetaError> {
        self.with(|db| {
            let txn = db.begin_read().map_err(db_err)?;
            let t = txn.open_table(GRANTS).map_err(db_err)?;
            Ok(t.get(key).map_err(db_err)?.map(|v| v.value()))
        })
    }

    fn put_grant(&self, key: &str, at: u64) -> Result<(), MetaError> {
        self.with(|db| {
            let txn = db.begin_write().map_err(db_err)?;
            txn.open_table(GRANTS).map_err(db_err)?.insert(key, at).map_err(db_err)?;
            txn.commit().map_err(db_err)
        })
    }

    fn remove_grant(&self, key: &str) -> Result<(), MetaError> {
        self.with(|db| {
            let txn = db.begin_write().map_err(db_err)?;
            txn.open_table(GRANTS).map_err(db_err)?.remove(key).map_err(db_err)?;
            txn.commit().map_err(db_err)
        })
    }

    fn prune_grants(&self, before: u64) -> Result<usize, MetaError> {
        self.with(|db| {
            let txn = db.begin_write().map_err(db_err)?;
            let removed =
                txn.open_table(GRANTS).map_err(db_err)?.extract_if(|_, at| at < before).map_err(db_err)?.count();
            txn.commit().map_err(db_err)?;
            Ok(removed)
        })
    }

    fn challenge(&self, key: &str) -> Result<Option<String>, MetaError> {
        self.with(|db| {
            let txn = db.begin_read().map_err(db_err)?;
            let t = txn.open_table(CHALLENGES).map_err(db_err)?;
            Ok(t.get(key).map_err(db_err)?.map(|v| v.value().to_owned()))
        })
    }

    fn set_challenge(&self, key: &str, value: Option<&str>) -> Result<(), MetaError> {
        self.with(|db| {
            let txn = db.begin_write().map_err(db_err)?;
            {
                let mut t = txn.open_table(CHALLENGES).map_err(db_err)?;
                match value {
                    Some(v) => drop(t.insert(key, v).map_err(db_err)?),
                    None => drop(t.remove(key).map_err(db_err)?),
                }
            }
            txn.commit().map_err(db_err)
        })
    }

    fn images(&self) -> Result<Vec<ImageRecord>, MetaError> {
        self.with(|db| {
            let txn = db.begin_read().map_err(db_err)?;
            let t = txn.open_table(IMAGES).map_err(db_err)?;
            let mut out = Vec::new();
            for row in t.iter().map_err(db_err)? {
                let (k, v) = row.map_err(db_err)?;
                let record = serde_json::from_slice(v.value())
                    .map_err(|e| MetaError::Corrupt { key: k.value().to_owned(), message: e.to_string() })?;
                out.push(record);
            }
            Ok(out)
        })
    }

    fn put_image(&self, record: &ImageRecord) -> Result<(), MetaError> {
        let bytes = serde_json::to_vec(record).map_err(|e| MetaError::Db(e.to_string()))?;
        self.put(IMAGES, &record.key(), &bytes, Durability::Sync)
    }

    fn remove_image(&self, key: &str) -> Result<(), MetaError> {
        self.with(|db| {
            let txn = db.begin_write().map_err(db_err)?;
            txn.open_table(IMAGES).map_err(db_err)?.remove(key).map_err(db_err)?;
            txn.commit().map_err(db_err)
        })
    }

    fn blob_pins(&self) -> Result<Vec<Digest>, MetaError> {
        self.with(|db| {
            let txn = db.begin_read().map_err(db_err)?;
            let t = txn.open_table(BLOB_PINS).map_err(db_err)?;
            let mut out = Vec::new();
            for row in t.iter().map_err(db_err)? {
                let (k, _) = row.map_err(db_err)?;
                let key = k.value();
                out.push(key.parse().map_err(|e: shoal_core::digest::DigestError| MetaError::Corrupt {
                    key: key.to_owned(),
                    message: e.to_string(),
                })?);
            }
            Ok(out)
        })
    }

    fn set_blob_pin(&self, digest: &Digest, pinned: bool) -> Result<(), MetaError> {
        let key = digest.to_string();
        self.with(|db| {
            let txn = db.begin_write().map_err(db_err)?;
            {
                let mut t = txn.open_table(BLOB_PINS).map_err(db_err)?;
                if pinned {
                    t.insert(key.as_str(), crate::clock::now_ms()).map_err(db_err)?;
                } else {
                    t.remove(key.as_str()).map_err(db_err)?;
                }
            }
            txn.commit().map_err(db_err)
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn redb_meta_conforms() {
        let dir = tempfile::tempdir().unwrap();
        crate::store::meta::conformance::run(&RedbMeta::open(&dir.path().join("m.redb")).unwrap());
    }

    #[test]
    fn reopens_after_an_io_error() {
        let dir = tempfile::tempdir().unwrap();
        let m = RedbMeta::open(&dir.path().join("m.redb")).unwrap();
        let d = Digest::of(b"x");
        m.failed.store(true, Ordering::Release);
        let rec = BlobRecord::new(shoal_core::PieceLayout::for_size(10), 1);
        m.put_blob(&d, &rec, Durability::Sync).unwrap();
        assert!(!m.failed.load(Ordering::Acquire));
        assert!(m.blob(&d).unwrap().is_some());
    }

    #[test]
    fn survives_reopen() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("m.redb");
        let d = Digest::of(b"x");
        {
            let m = RedbMeta::open(&path).unwrap();
            let rec = BlobRecord::new(shoal_core::PieceLayout::for_size(10), 1);
            m.put_blob(&d, &rec, Durability::Sync).unwrap();
        }
        assert!(RedbMeta::open(&path).unwrap().blob(&d).unwrap().is_some());
    }

    #[test]
    fn a_tag_written_before_seen_times_is_still_read() {
        let dir = tempfile::tempdir().unwrap();
        let m = RedbMeta::open(&dir.path().join("m.redb")).unwrap();
        let d = Digest::of(b"manifest");
        let old = format!("{d} application/vnd.oci.image.manifest.v1+json");
        m.put(TAGS_V1, "r/n:t", old.as_bytes(), Durability::Sync).unwrap();
        let read = m.tag("r/n:t").unwrap().unwrap();
        assert_eq!((read.digest, read.seen_at_ms), (d, 0));
        assert_eq!(read.media_type, "application/vnd.oci.image.manifest.v1+json");
        let newer = TagRecord { digest: Digest::of(b"newer"), media_type: "m t".into(), seen_at_ms: 42 };
        m.put_tag("r/n:t", &newer).unwrap();
        assert_eq!(m.tag("r/n:t").unwrap(), Some(newer), "the new record wins");
    }
}

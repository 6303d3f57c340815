//! Room in the cache, at every moment: a download reserves its blob's size before it writes a
//! byte, evicting least recently used blobs that no one is reading to make room under the size
//! quota and above the file system's free-space floor. A blob that cannot get room is not
//! cached (the mirror serves it straight from the origin).
//!
//! The decision is `shoal_core::evict::room`; this module measures (bytes held, bytes promised,
//! free space) and applies it. It never decides where bytes come from.

use std::io;
use std::path::Path;
use std::sync::{Arc, Mutex, MutexGuard};

use shoal_core::evict::{room, trim, Candidate, Limits, Room, Usage};
use shoal_core::Digest;

use crate::store::health::CacheHealth;
use crate::store::imports::durable_pins;
use crate::store::meta::{MetaError, MetaStore};
use crate::store::paths::Paths;
use crate::store::pins::Pins;

/// Why a blob gets no room in the cache.
#[derive(Debug, thiserror::Error)]
pub enum NoRoom {
    /// Evicting every blob no one is reading would still leave too little.
    #[error("no room for {size} bytes: {short} bytes short of cache_size or min_free_space")]
    Short {
        /// The blob's size.
        size: u64,
        /// Bytes that could not be found.
        short: u64,
    },
    /// The free space of the data directory could not be measured: nothing is cached blind.
    #[error("cannot measure free space in data_dir: {0}")]
    Measure(io::Error),
    /// The metadata store failed while making room.
    #[error(transparent)]
    Meta(#[from] MetaError),
}

/// Bytes held and promised.
#[derive(Debug, Default)]
struct Ledger {
    /// Bytes of complete blobs.
    complete: u64,
    /// Bytes reserved by downloads in progress.
    reserved: u64,
}

/// The cache's room: quota, floor, and what is held and promised.
pub struct Space {
    paths: Paths,
    meta: Arc<dyn MetaStore>,
    pins: Pins,
    limits: Limits,
    ledger: Mutex<Ledger>,
    /// Whether blobs can be stored right now, for `/healthz`.
    pub health: CacheHealth,
}

/// Room for one blob until dropped; [`Reservation::commit`] turns it into a complete blob.
pub struct Reservation {
    space: Arc<Space>,
    size: u64,
    committed: bool,
}

impl Reservation {
    /// The blob was stored complete: its bytes now count as held, not promised.
    pub fn commit(mut self) {
        self.committed = true;
        self.space.health.stored();
    }
}

impl Drop for Reservation {
    fn drop(&mut self) {
        let mut ledger = self.space.lock();
        ledger.reserved = ledger.reserved.saturating_sub(self.size);
        if self.committed {
            ledger.complete += self.size;
        }
    }
}

impl Space {
    /// The room of a data directory holding `complete` bytes of complete blobs.
    pub fn new(paths: Paths, meta: Arc<dyn MetaStore>, pins: Pins, limits: Limits, complete: u64) -> Self {
        let ledger = Mutex::new(Ledger { complete, reserved: 0 });
        Self { paths, meta, pins, limits, ledger, health: CacheHealth::default() }
    }

    /// Reserves `size` bytes, evicting blobs if that is what it takes. Blocks on file system
    /// and metadata calls: call from a blocking thread.
    pub fn reserve(self: &Arc<Self>, size: u64) -> Result<Reservation, NoRoom> {
        let mut ledger = self.lock();
        let free = free_bytes(self.paths.root()).map_err(NoRoom::Measure)?;
        let fast = ledger.complete + ledger.reserved + size <= self.limits.quota
            && free >= ledger.reserved + size + self.limits.min_free;
        if !fast {
            let usage = Usage { reserved: ledger.reserved, free };
            let held = self.pins.with_locked(|pinned| -> Result<u64, NoRoom> {
                let entries = self.candidates(pinned)?;
                let total = entries.iter().map(|e| e.size).sum::<u64>();
                match room(entries, usage, self.limits, size) {
                    Room::Fits(evict) => Ok(total - self.evict(&evict)?),
                    Room::NoRoom { short } => Err(NoRoom::Short { size, short }),
                }
            })?;
            ledger.complete = held;
        }
        ledger.reserved += size;
        drop(ledger);
        Ok(Reservation { space: self.clone(), size, committed: false })
    }

    /// Evicts what breaks the limits now (the quota after a restart with a smaller one, the
    /// floor after something else filled the file system). Returns (bytes held, blobs evicted).
    pub fn trim(&self) -> Result<(u64, usize), MetaError> {
        let mut ledger = self.lock();
        let free = free_bytes(self.paths.root()).unwrap_or(u64::MAX);
        let usage = Usage { reserved: ledger.reserved, free };
        let (held, evicted) = self.pins.with_locked(|pinned| -> Result<(u64, usize), MetaError> {
            let entries = self.candidates(pinned)?;
            let total = entries.iter().map(|e| e.size).sum::<u64>();
            let evict = trim(entries, usage, self.limits);
            Ok((total - self.evict(&evict)?, evict.len()))
        })?;
        ledger.complete = held;
        Ok((held, evicted))
    }

    /// The pins eviction respects.
    pub fn pins(&self) -> &Pins {
        &self.pins
    }

    /// Bytes of complete blobs and bytes reserved.
    #[cfg(test)]
    pub fn usage(&self) -> (u64, u64) {
        let ledger = self.lock();
        (ledger.complete, ledger.reserved)
    }

    /// Complete blobs as eviction sees them: in use while served or downloaded, and also while
    /// durably pinned (pinned by the operator, or part of a pinned imported image).
    fn candidates(
        &self,
        pinned: &std::collections::HashMap<Digest, usize>,
    ) -> Result<Vec<Candidate<Digest>>, MetaError> {
        let now = crate::clock::now_ms();
        let durable = durable_pins(&self.meta.images()?, &self.meta.blob_pins()?, now);
        Ok(self
            .meta
            .blobs()?
            .into_iter()
            .filter(|(_, r)| r.is_complete())
            .map(|(key, r)| Candidate {
                key,
                size: r.layout.size,
                last_access: r.last_access,
                in_use: pinned.contains_key(&key) || durable.contains(&key),
            })
            .collect())
    }

    /// Removes complete blobs no one is reading (the time to live of an imported image ended,
    /// or the operator asked); blobs in use are skipped. Returns the blobs removed.
    pub fn remove(&self, digests: &[Digest]) -> Result<Vec<Digest>, MetaError> {
        let mut ledger = self.lock();
        let removed = self.pins.with_locked(|in_use| -> Result<Vec<Digest>, MetaError> {
            let free: Vec<Digest> = digests.iter().filter(|d| !in_use.contains_key(d)).copied().collect();
            let freed = self.evict(&free)?;
            ledger.complete = ledger.complete.saturating_sub(freed);
            Ok(free)
        })?;
        Ok(removed)
    }

    /// The metadata store whose blobs this is the room of.
    pub fn meta(&self) -> &Arc<dyn MetaStore> {
        &self.meta
    }

    /// Removes blobs, record first so no new reader can open them; returns the bytes freed.
    fn evict(&self, digests: &[Digest]) -> Result<u64, MetaError> {
        let mut freed = 0;
        for digest in digests {
            let Some(record) = self.meta.blob(digest)?.filter(|r| r.is_complete()) else { continue };
            let size = record.layout.size;
            self.meta.remove_blob(digest)?;
            let _ = std::fs::remove_file(self.paths.blob(digest));
            freed += size;
            tracing::info!(%digest, size, "evicted from the cache");
        }
        Ok(freed)
    }

    fn lock(&self) -> MutexGuard<'_, Ledger> {
        self.ledger.lock().unwrap_or_else(|p| p.into_inner())
    }
}

/// Bytes of the file system under `path` available to this process.
pub fn free_bytes(path: &Path) -> io::Result<u64> {
    let s = rustix::fs::statvfs(path)?;
    Ok(s.f_bavail.saturating_mul(s.f_frsize))
}

#[cfg(test)]
pub(crate) mod tests {
    use super::*;
    use crate::store::meta::{BlobRecord, BlobState, Durability, MemMeta};
    use shoal_core::PieceLayout;

    /// A complete blob on disk and in `meta` (also used by the gc tests).
    pub(crate) fn put_complete(paths: &Paths, meta: &MemMeta, data: &[u8], access: u64) -> Digest {
        let d = Digest::of(data);
        let path = paths.blob(&d);
        std::fs::create_dir_all(path.parent().unwrap()).unwrap();
        std::fs::write(&path, data).unwrap();
        let mut r = BlobRecord::new(PieceLayout::for_size(data.len() as u64), access);
        r.state = BlobState::Complete;
        meta.put_blob(&d, &r, Durability::Sync).unwrap();
        d
    }

    fn space(quota: u64) -> (tempfile::TempDir, Arc<MemMeta>, Pins, Arc<Space>) {
        let dir = tempfile::tempdir().unwrap();
        let paths = Paths::new(dir.path());
        paths.create().unwrap();
        let meta = Arc::new(MemMeta::default());
        let pins = Pins::default();
        let limits = Limits { quota, min_free: 0 };
        let s = Arc::new(Space::new(paths, meta.clone(), pins.clone(), limits, 0));
        (dir, meta, pins, s)
    }

    #[test]
    fn reservations_hold_the_quota_at_every_moment() {
        let (_dir, _meta, _pins, s) = space(100);
        let a = s.reserve(60).unwrap();
        assert!(matches!(s.reserve(60), Err(NoRoom::Short { short: 20, .. })));
        let b = s.reserve(40).unwrap();
        assert_eq!(s.usage(), (0, 100));
        drop(b);
        a.commit();
        assert_eq!(s.usage(), (60, 0));
        assert!(s.reserve(40).is_ok(), "60 held + 40 fits the quota of 100");
    }

    #[test]
    fn a_reservation_evicts_lru_blobs_no_one_reads() {
        let (dir, meta, pins, s) = space(250);
        let paths = Paths::new(dir.path());
        let old = put_complete(&paths, &meta, &[1; 100], 1);
        let read = put_complete(&paths, &meta, &[2; 100], 2);
        s.trim().unwrap();
        assert_eq!(s.usage(), (200, 0));
        let _reading = pins.pin(read);
        let r = s.reserve(100).unwrap();
        assert!(!paths.blob(&old).exists() && meta.blob(&old).unwrap().is_none());
        assert!(paths.blob(&read).exists());
        assert_eq!(s.usage(), (100, 100));
        // The blob being read and the reservation leave no room for 100 more.
        assert!(matches!(s.reserve(100), Err(NoRoom::Short { short: 50, .. })));
        drop(r);
    }

    #[test]
    fn the_free_space_floor_counts() {
        let dir = tempfile::tempdir().unwrap();
        let paths = Paths::new(dir.path());
        paths.create().unwrap();
        let free = free_bytes(dir.path()).unwrap();
        let limits = Limits { quota: u64::MAX / 4, min_free: free };
        let s = Arc::new(Space::new(paths, Arc::new(MemMeta::default()), Pins::default(), limits, 0));
        assert!(matches!(s.reserve(1 << 30), Err(NoRoom::Short { .. })));
    }

    #[test]
    fn trim_evicts_lru_but_never_pinned() {
        let (dir, meta, pins, s) = space(200);
        let paths = Paths::new(dir.path());
        let old = put_complete(&paths, &meta, &[1; 100], 1);
        let pinned = put_complete(&paths, &meta, &[2; 100], 2);
        let new = put_complete(&paths, &meta, &[3; 100], 3);
        let _pin = pins.pin(pinned);
        assert_eq!(s.trim().unwrap(), (200, 1));
        assert!(!paths.blob(&old).exists() && meta.blob(&old).unwrap().is_none());
        assert!(paths.blob(&pinned).exists() && paths.blob(&new).exists());
    }
}

//! The cache on disk: recovery after a crash, and the periodic check of the cache's limits.
//!
//! Recovery makes metadata and files agree (nothing the metadata calls complete without its
//! file; no file without a record). Eviction itself is [`crate::store::space`]'s: this module runs it on
//! a timer, for what changes outside the daemon (such as the file system's free space), and
//! after each round withdraws from discovery what is no longer held. Each round also ends the
//! imported images whose time to live is over (see [`crate::store::imports`]).

use std::collections::HashSet;
use std::path::Path;
use std::sync::Arc;
use std::time::Duration;

use shoal_core::Digest;

use crate::discovery::Holdings;
use crate::metrics::Metrics;
use crate::store::meta::{BlobRecord, BlobState, Durability, MetaError, MetaStore};
use crate::store::paths::Paths;
use crate::store::space::Space;

/// How often the limits are checked.
pub const GC_INTERVAL: Duration = Duration::from_secs(5);

/// Makes files and records agree after a restart. Returns the bytes of complete blobs.
pub fn recover(paths: &Paths, meta: &dyn MetaStore) -> Result<u64, MetaError> {
    let mut complete = HashSet::new();
    let mut partial = HashSet::new();
    let mut bytes = 0;
    for (digest, mut record) in meta.blobs()? {
        if record.state == BlobState::Verified {
            finish_verified(paths, meta, &digest, &mut record)?;
        }
        let path = if record.is_complete() { paths.blob(&digest) } else { paths.partial(&digest) };
        let ok = std::fs::metadata(&path).is_ok_and(|m| m.len() == record.layout.size);
        if !ok {
            tracing::warn!(%digest, "blob record without its file; forgetting it");
            meta.remove_blob(&digest)?;
            let _ = std::fs::remove_file(&path);
        } else if record.is_complete() {
            bytes += record.layout.size;
            complete.insert(digest.hex());
        } else {
            partial.insert(digest.hex());
        }
    }
    remove_unknown(&paths.partial_dir(), &partial);
    // Blobs an import staged but never committed: nothing there is complete.
    let _ = std::fs::remove_dir_all(paths.import_dir());
    if let Ok(dirs) = std::fs::read_dir(paths.blobs_dir()) {
        for dir in dirs.flatten() {
            remove_unknown(&dir.path(), &complete);
        }
    }
    Ok(bytes)
}

/// Finishes a blob that was verified but not yet moved when the daemon stopped: if its partial
/// file still hashes to its digest it is synced, moved and recorded complete (no byte fetched
/// again); otherwise it goes back to partial with no pieces, to be fetched again when asked for.
fn finish_verified(
    paths: &Paths,
    meta: &dyn MetaStore,
    digest: &Digest,
    record: &mut BlobRecord,
) -> Result<(), MetaError> {
    let partial = paths.partial(digest);
    let promoted = std::fs::File::open(&partial).and_then(|file| {
        if crate::hash::file_prefix(&file, record.layout.size)?.finish() != *digest {
            return Err(std::io::Error::other("the partial file no longer hashes to its digest"));
        }
        paths.promote(digest, &file)
    });
    match promoted {
        Ok(()) => {
            tracing::info!(%digest, "finished a blob verified before the restart");
            record.state = BlobState::Complete;
        }
        Err(e) => {
            tracing::warn!(%digest, error = %e, "a blob verified before the restart is fetched again");
            *record = BlobRecord::new(record.layout, record.last_access);
        }
    }
    meta.put_blob(digest, record, Durability::Sync)
}

/// Deletes files in `dir` whose name is not in `known` (left by a crash before their record).
fn remove_unknown(dir: &Path, known: &HashSet<String>) {
    let Ok(entries) = std::fs::read_dir(dir) else {
        return;
    };
    for e in entries.flatten() {
        let name = e.file_name().to_string_lossy().into_owned();
        if !known.contains(&name) {
            tracing::info!(file = %e.path().display(), "removing file without a record");
            let _ = std::fs::remove_file(e.path());
        }
    }
}

/// Keeps the cache within its limits forever, every [`GC_INTERVAL`] (reservations keep them at
/// every moment; this catches what changes outside the daemon, such as the free space). With
/// `holdings`, each round then withdraws every blob evicted since the last (by this round or by
/// a reservation), so other members stop being sent here for it.
pub async fn run(space: Arc<Space>, metrics: Arc<Metrics>, holdings: Option<Arc<Holdings>>) {
    loop {
        tokio::time::sleep(GC_INTERVAL).await;
        let expiring = space.clone();
        let now = crate::clock::now_ms();
        match tokio::task::spawn_blocking(move || expire_images(&expiring, now)).await {
            Ok(Ok((0, _))) => {}
            Ok(Ok((images, blobs))) => {
                tracing::info!(images, blobs, "imported images past their time to live removed");
                metrics.evictions.inc_by(blobs as u64);
            }
            Ok(Err(e)) => tracing::warn!(error = %e, "cannot expire imported images"),
            Err(e) => tracing::warn!(error = %e, "expiring imported images panicked"),
        }
        let space = space.clone();
        match tokio::task::spawn_blocking(move || space.trim()).await {
            Ok(Ok((kept, evicted))) => {
                metrics.cache_bytes.set(kept as i64);
                metrics.evictions.inc_by(evicted as u64);
            }
            Ok(Err(e)) => tracing::warn!(error = %e, "cache eviction failed"),
            Err(e) => tracing::warn!(error = %e, "cache eviction panicked"),
        }
        if let Some(holdings) = &holdings {
            match holdings.withdraw_gone().await {
                Ok(0) => {}
                Ok(n) => tracing::debug!(blobs = n, "withdrew evicted blobs from discovery"),
                Err(e) => tracing::warn!(error = %e, "cannot list evicted blobs to withdraw"),
            }
        }
    }
}

/// Forgets the imported images whose time to live ended at `now` and removes the blobs no
/// image still alive needs (unless pinned by themselves, or being read: those stay as ordinary
/// cache entries). Returns (images forgotten, blobs removed).
pub fn expire_images(space: &Space, now: u64) -> Result<(usize, usize), MetaError> {
    let meta = space.meta();
    let (keys, blobs) = crate::store::imports::expired(&meta.images()?, &meta.blob_pins()?, now);
    for key in &keys {
        meta.remove_image(key)?;
    }
    let removed = if keys.is_empty() { 0 } else { space.remove(&blobs)?.len() };
    Ok((keys.len(), removed))
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::store::meta::MemMeta;
    use crate::store::space::tests::put_complete;
    use shoal_core::PieceLayout;

    #[test]
    fn pinned_images_survive_trim_and_expired_ones_go() {
        use crate::store::imports::tests::image;
        let dir = tempfile::tempdir().unwrap();
        let paths = Paths::new(dir.path());
        paths.create().unwrap();
        let meta = Arc::new(MemMeta::default());
        let pinned = put_complete(&paths, &meta, b"pinned layer", 1);
        let cached = put_complete(&paths, &meta, b"cached layer", 2);
        let ttl = put_complete(&paths, &meta, b"ttl layer", 3);
        meta.put_image(&image("pinned", &[b"pinned layer"], true, None)).unwrap();
        meta.put_image(&image("ttl", &[b"ttl layer"], false, Some(100))).unwrap();
        let limits = shoal_core::evict::Limits { quota: 0, min_free: 0 };
        let space = Space::new(paths.clone(), meta.clone(), crate::store::pins::Pins::default(), limits, 0);
        // A quota of 0: everything not pinned goes, the pinned image's layer stays.
        space.trim().unwrap();
        assert!(paths.blob(&pinned).exists() && meta.blob(&pinned).unwrap().is_some());
        assert!(!paths.blob(&cached).exists() && !paths.blob(&ttl).exists());

        let ttl = put_complete(&paths, &meta, b"ttl layer", 3);
        let space = Space::new(paths.clone(), meta.clone(), crate::store::pins::Pins::default(), limits, 0);
        assert_eq!(expire_images(&space, 99).unwrap(), (0, 0));
        assert!(paths.blob(&ttl).exists());
        assert_eq!(expire_images(&space, 100).unwrap(), (1, 1));
        assert!(!paths.blob(&ttl).exists() && meta.blob(&ttl).unwrap().is_none());
        assert_eq!(meta.images().unwrap().len(), 1);
    }

    #[test]
    fn recovery_drops_orphans_both_ways() {
        let dir = tempfile::tempdir().unwrap();
        let paths = Paths::new(dir.path());
        paths.create().unwrap();
        let meta = MemMeta::default();
        let kept = put_complete(&paths, &meta, b"kept", 1);
        let lost = put_complete(&paths, &meta, b"lost", 1);
        std::fs::remove_file(paths.blob(&lost)).unwrap();
        let stray = Digest::of(b"stray");
        std::fs::write(paths.partial(&stray), b"x").unwrap();
        assert_eq!(recover(&paths, &meta).unwrap(), 4);
        assert!(meta.blob(&kept).unwrap().is_some());
        assert!(meta.blob(&lost).unwrap().is_none());
        assert!(!paths.partial(&stray).exists());
    }

    /// A blob verified just before a crash (its record says so, its file is still partial).
    fn verified_partial(paths: &Paths, meta: &MemMeta, digest: Digest, bytes: &[u8]) {
        std::fs::write(paths.partial(&digest), bytes).unwrap();
        let mut record = BlobRecord::new(PieceLayout::for_size(bytes.len() as u64), 1);
        record.state = BlobState::Verified;
        meta.put_blob(&digest, &record, Durability::Sync).unwrap();
    }

    #[test]
    fn a_blob_verified_before_a_crash_is_finished_without_fetching() {
        let dir = tempfile::tempdir().unwrap();
        let paths = Paths::new(dir.path());
        paths.create().unwrap();
        let meta = MemMeta::default();
        let good = Digest::of(b"verified");
        verified_partial(&paths, &meta, good, b"verified");
        let torn = Digest::of(b"torn write");
        verified_partial(&paths, &meta, torn, b"torn wrote");
        assert_eq!(recover(&paths, &meta).unwrap(), 8, "only the good blob is complete");
        assert!(meta.blob(&good).unwrap().unwrap().is_complete());
        assert_eq!(std::fs::read(paths.blob(&good)).unwrap(), b"verified");
        assert!(!paths.partial(&good).exists());
        let again = meta.blob(&torn).unwrap().unwrap();
        assert_eq!(again.state, BlobState::Partial { bitmap: vec![0] }, "fetched again, nothing trusted");
        assert!(!paths.blob(&torn).exists());
    }
}

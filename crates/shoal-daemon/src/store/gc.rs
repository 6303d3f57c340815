//! The cache on disk: recovery after a crash, and the periodic check of the cache's limits.
//!
//! Recovery makes metadata and files agree (nothing the metadata calls complete without its
//! file; no file without a record). Eviction itself is [`crate::store::space`]'s: this module runs it on
//! a timer, for what changes outside the daemon (such as the file system's free space), and
//! after each round withdraws from discovery what is no longer held.

use std::collections::HashSet;
use std::path::Path;
use std::sync::Arc;
use std::time::Duration;

use crate::discovery::Holdings;
use crate::metrics::Metrics;
use crate::store::meta::{MetaError, MetaStore};
use crate::store::paths::Paths;
use crate::store::space::Space;

/// How often the limits are checked.
pub const GC_INTERVAL: Duration = Duration::from_secs(5);

/// Makes files and records agree after a restart. Returns the bytes of complete blobs.
pub fn recover(paths: &Paths, meta: &dyn MetaStore) -> Result<u64, MetaError> {
    let mut complete = HashSet::new();
    let mut partial = HashSet::new();
    let mut bytes = 0;
    for (digest, record) in meta.blobs()? {
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
    if let Ok(dirs) = std::fs::read_dir(paths.blobs_dir()) {
        for dir in dirs.flatten() {
            remove_unknown(&dir.path(), &complete);
        }
    }
    Ok(bytes)
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

#[cfg(test)]
mod tests {
    use super::*;
    use crate::store::meta::MemMeta;
    use crate::store::space::tests::put_complete;
    use shoal_core::Digest;

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
}

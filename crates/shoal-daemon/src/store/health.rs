//! Whether the cache can store blobs right now, as `/healthz` and the metrics report it.
//!
//! A failing or full disk never fails a pull (the origin serves the client instead), so it must
//! be visible elsewhere: the first failure for each blob is logged, the cache reports degraded
//! until a blob is stored again, and the reason is kept for `/healthz`.

use std::collections::HashSet;
use std::sync::Mutex;
use std::time::Instant;

use shoal_core::Digest;

/// Blobs remembered as logged, at most (then the memory starts over).
const MAX_LOGGED: usize = 4096;

#[derive(Debug, Default)]
struct State {
    degraded: Option<(String, Instant)>,
    logged: HashSet<Digest>,
}

/// The cache's health.
#[derive(Debug, Default)]
pub struct CacheHealth {
    state: Mutex<State>,
}

impl CacheHealth {
    /// `digest` could not be cached for `reason`: logs it once per blob and marks the cache
    /// degraded. Returns whether it was logged.
    pub fn failed(&self, digest: &Digest, reason: &str) -> bool {
        let mut s = self.lock();
        if s.logged.len() >= MAX_LOGGED {
            s.logged.clear();
        }
        let first = s.logged.insert(*digest);
        if first {
            tracing::warn!(%digest, %reason, "blob not cached; serving it from the origin");
        } else {
            tracing::debug!(%digest, %reason, "blob not cached again");
        }
        if s.degraded.is_none() {
            s.degraded = Some((reason.to_owned(), Instant::now()));
        }
        first
    }

    /// A blob was stored complete: caching works again.
    pub fn stored(&self) {
        let mut s = self.lock();
        if let Some((reason, since)) = s.degraded.take() {
            tracing::info!(%reason, degraded_secs = since.elapsed().as_secs(), "the cache stores blobs again");
        }
        s.logged.clear();
    }

    /// Why the cache is degraded and for how many seconds, if it is.
    pub fn degraded(&self) -> Option<(String, u64)> {
        self.lock().degraded.as_ref().map(|(r, at)| (r.clone(), at.elapsed().as_secs()))
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, State> {
        self.state.lock().unwrap_or_else(|p| p.into_inner())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn logs_once_per_blob_and_recovers_on_store() {
        let h = CacheHealth::default();
        let (a, b) = (Digest::of(b"a"), Digest::of(b"b"));
        assert!(h.degraded().is_none());
        assert!(h.failed(&a, "no space left on device"));
        assert!(!h.failed(&a, "no space left on device"));
        assert!(h.failed(&b, "input/output error"));
        assert_eq!(h.degraded().unwrap().0, "no space left on device");
        h.stored();
        assert!(h.degraded().is_none());
        assert!(h.failed(&a, "again"), "a new outage logs each blob again");
    }
}

//! The daemon's Prometheus metrics: one [`Metrics`] value, created at start-up and passed to
//! whoever records into it (no globals), encoded by the admin listener.

use prometheus_client::encoding::EncodeLabelSet;
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::gauge::Gauge;
use prometheus_client::metrics::histogram::{exponential_buckets, Histogram};
use prometheus_client::registry::Registry;

/// Labels of a mirror request.
#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct RequestLabels {
    /// `base`, `manifest`, `blob`, `tags`, `referrers`, `upload`, `other`.
    pub route: &'static str,
    /// HTTP method: one of the standard ones, else `other` (see [`method_label`]).
    pub method: &'static str,
    /// HTTP status code.
    pub status: u16,
}

/// A `kind` label: `blob` or `manifest`.
#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct KindLabels {
    /// What was served.
    pub kind: &'static str,
}

/// A `source` label: where fetched bytes came from (`origin`).
#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct SourceLabels {
    /// The source.
    pub source: &'static str,
}

/// Cache lookups by kind and result.
#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct CacheLabels {
    /// `blob` or `manifest`.
    pub kind: &'static str,
    /// `hit` or `miss`.
    pub result: &'static str,
}

/// A failure reason.
#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct ReasonLabels {
    /// `digest_mismatch`, `timeout`, `refused`, `io`.
    pub reason: &'static str,
}

/// Download outcomes.
#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct ResultLabels {
    /// `complete` or `failed`.
    pub result: &'static str,
}

/// Every metric the daemon exports.
pub struct Metrics {
    registry: Registry,
    /// Mirror requests by route, method and status.
    pub requests: Family<RequestLabels, Counter>,
    /// Bytes sent to clients, by kind.
    pub served_bytes: Family<KindLabels, Counter>,
    /// Bytes fetched, by source.
    pub fetched_bytes: Family<SourceLabels, Counter>,
    /// Cache hits and misses.
    pub cache: Family<CacheLabels, Counter>,
    /// Blob download durations, by outcome.
    pub download_seconds: Family<ResultLabels, Histogram>,
    /// Blob downloads in progress.
    pub downloads_running: Gauge,
    /// Bytes of complete blobs in the cache.
    pub cache_bytes: Gauge,
    /// Configured schedulers that answered their last announcement or registration.
    pub schedulers_live: Gauge,
    /// Other DHT members this node knows (0: alone, or the DHT is off).
    pub dht_members: Gauge,
    /// Blobs evicted to stay under the quota.
    pub evictions: Counter,
    /// Bytes uploaded to peers.
    pub uploaded_bytes: Counter,
    /// Pieces from parents that failed, by reason.
    pub piece_failures: Family<ReasonLabels, Counter>,
    /// Back-to-source grants received from the scheduler.
    pub back_to_source: Counter,
    /// Piece requests a seeding parent answered "busy" (it just gave the piece to a sibling).
    pub piece_busy: Counter,
    /// Parents used per task.
    pub task_parents: Histogram,
    /// Blobs that did not hash to their digest although every piece matched a trusted digest
    /// (a forged digest table): their pieces from parents were fetched again.
    pub blob_mismatches: Counter,
    /// Blob responses served straight from the origin without caching, by reason
    /// (`no_space`: no room under the quota or the free-space floor; `store_failed`: the store
    /// failed mid-download; `download_failed`: the download gave up).
    pub uncached: Family<ReasonLabels, Counter>,
    /// Bytes read back from partial files to feed a whole-blob sha256 (pieces that arrived
    /// ahead of the hashed prefix beyond the in-memory budget, or were resumed from disk).
    pub hash_reread_bytes: Counter,
}

impl Default for Metrics {
    fn default() -> Self {
        let mut registry = Registry::with_prefix("shoal");
        let requests = Family::default();
        let served_bytes = Family::default();
        let fetched_bytes = Family::default();
        let cache = Family::default();
        let download_seconds = Family::<ResultLabels, Histogram>::new_with_constructor(|| {
            Histogram::new(exponential_buckets(0.01, 2.0, 16))
        });
        let downloads_running = Gauge::default();
        let cache_bytes = Gauge::default();
        let schedulers_live = Gauge::default();
        let dht_members = Gauge::default();
        let evictions = Counter::default();
        let uploaded_bytes = Counter::default();
        let piece_failures = Family::default();
        let back_to_source = Counter::default();
        let piece_busy = Counter::default();
        let task_parents = Histogram::new([0.0, 1.0, 2.0, 3.0, 4.0, 6.0, 8.0, 12.0, 16.0]);
        let blob_mismatches = Counter::default();
        let uncached = Family::default();
        let hash_reread_bytes = Counter::default();
        registry.register(
            "hash_reread_bytes",
            "Bytes read back from partial files to feed a whole-blob sha256",
            hash_reread_bytes.clone(),
        );
        registry.register(
            "blob_mismatches",
            "Blobs that failed their sha256 although every piece matched its trusted digest",
            blob_mismatches.clone(),
        );
        registry.register(
            "uncached",
            "Blob responses served from the origin without caching, by reason",
            uncached.clone(),
        );
        registry.register("uploaded_bytes", "Bytes uploaded to peers", uploaded_bytes.clone());
        registry.register("piece_failures", "Pieces from parents that failed, by reason", piece_failures.clone());
        registry.register("back_to_source", "Back-to-source grants from the scheduler", back_to_source.clone());
        registry.register(
            "piece_busy",
            "Piece requests a seeding parent answered busy (the piece went to a sibling; not a failure)",
            piece_busy.clone(),
        );
        registry.register("task_parents", "Parents used per task", task_parents.clone());
        registry.register("mirror_requests", "Mirror requests by route, method and status", requests.clone());
        registry.register("served_bytes", "Bytes sent to clients", served_bytes.clone());
        registry.register("fetched_bytes", "Bytes fetched, by source", fetched_bytes.clone());
        registry.register("cache_lookups", "Cache lookups by kind and result", cache.clone());
        registry.register("blob_download_seconds", "Blob download durations", download_seconds.clone());
        registry.register("downloads_running", "Blob downloads in progress", downloads_running.clone());
        registry.register("cache_bytes", "Bytes of complete blobs in the cache", cache_bytes.clone());
        registry.register(
            "schedulers_live",
            "Configured schedulers that answered their last announcement or registration",
            schedulers_live.clone(),
        );
        registry.register("dht_members", "Other DHT members this node knows (0: alone)", dht_members.clone());
        registry.register("cache_evictions", "Blobs evicted to stay under the cache quota", evictions.clone());
        Self {
            registry,
            requests,
            served_bytes,
            fetched_bytes,
            cache,
            download_seconds,
            downloads_running,
            cache_bytes,
            schedulers_live,
            dht_members,
            evictions,
            uploaded_bytes,
            piece_failures,
            back_to_source,
            piece_busy,
            task_parents,
            blob_mismatches,
            uncached,
            hash_reread_bytes,
        }
    }
}

impl Metrics {
    /// The OpenMetrics text exposition.
    pub fn encode(&self) -> String {
        let mut out = String::new();
        // Writing into a String cannot fail.
        let _ = prometheus_client::encoding::text::encode(&mut out, &self.registry);
        out
    }

    /// Counts a cache lookup.
    pub fn cache_lookup(&self, kind: &'static str, hit: bool) {
        let result = if hit { "hit" } else { "miss" };
        self.cache.get_or_create(&CacheLabels { kind, result }).inc();
    }
}

/// The `method` label of a request: a standard HTTP method, or `other` for any made-up one,
/// so clients cannot grow the label set.
pub fn method_label(method: &http::Method) -> &'static str {
    use http::Method;
    static KNOWN: [Method; 9] = [
        Method::GET,
        Method::HEAD,
        Method::POST,
        Method::PUT,
        Method::PATCH,
        Method::DELETE,
        Method::OPTIONS,
        Method::CONNECT,
        Method::TRACE,
    ];
    KNOWN.iter().find(|m| *m == method).map_or("other", Method::as_str)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn made_up_methods_are_other() {
        assert_eq!(method_label(&http::Method::GET), "GET");
        assert_eq!(method_label(&http::Method::DELETE), "DELETE");
        for made_up in ["FOOBAR", "get", &"X".repeat(200)] {
            assert_eq!(method_label(&http::Method::from_bytes(made_up.as_bytes()).unwrap()), "other", "{made_up}");
        }
    }

    #[test]
    fn encodes_recorded_values() {
        let m = Metrics::default();
        m.cache_lookup("blob", true);
        m.fetched_bytes.get_or_create(&SourceLabels { source: "origin" }).inc_by(42);
        let text = m.encode();
        assert!(text.contains(r#"shoal_cache_lookups_total{kind="blob",result="hit"} 1"#), "{text}");
        assert!(text.contains(r#"shoal_fetched_bytes_total{source="origin"} 42"#), "{text}");
    }
}

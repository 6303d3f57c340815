//! The scheduler's metrics: peers, tasks, decisions by kind and their latency.

use prometheus_client::encoding::EncodeLabelSet;
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::gauge::Gauge;
use prometheus_client::metrics::histogram::{exponential_buckets, Histogram};
use prometheus_client::registry::Registry;

/// A `kind` label.
#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct KindLabels {
    /// `back_to_source`, `parents` or `wait` (decisions); a reason (failures).
    pub kind: &'static str,
}

/// Every metric `shoal scheduler` exports.
pub struct SchedulerMetrics {
    registry: Registry,
    /// Hosts known.
    pub hosts: Gauge,
    /// Peer streams open.
    pub peers: Gauge,
    /// Tasks known.
    pub tasks: Gauge,
    /// Decisions by kind.
    pub decisions: Family<KindLabels, Counter>,
    /// Time to take a decision, seconds.
    pub decision_seconds: Histogram,
    /// Piece failures reported, by reason.
    pub piece_failures: Family<KindLabels, Counter>,
    /// Parents offered back to peers that did not ask (newcomers to downloading parents).
    pub offers: Counter,
    /// Connections and calls refused, by reason: `handshake` (no TLS or no proof in time),
    /// `bad_proof`, `over_cap` (too many connections), `host_taken` (a host id another
    /// session speaks for).
    pub refused: Family<KindLabels, Counter>,
    /// Preheat jobs running (not yet done or failed).
    pub preheat_jobs: Gauge,
    /// Daemons with a preheat job stream open.
    pub preheat_hosts: Gauge,
}

impl Default for SchedulerMetrics {
    fn default() -> Self {
        let mut registry = Registry::with_prefix("shoal_scheduler");
        let hosts = Gauge::default();
        let peers = Gauge::default();
        let tasks = Gauge::default();
        let decisions = Family::default();
        let decision_seconds = Histogram::new(exponential_buckets(1e-6, 4.0, 12));
        let piece_failures = Family::default();
        let offers = Counter::default();
        let refused = Family::default();
        let (preheat_jobs, preheat_hosts) = (Gauge::default(), Gauge::default());
        registry.register("hosts", "Hosts known", hosts.clone());
        registry.register("peers", "Peer streams open", peers.clone());
        registry.register("tasks", "Tasks known", tasks.clone());
        registry.register("decisions", "Decisions by kind", decisions.clone());
        registry.register("decision_seconds", "Time to take a decision", decision_seconds.clone());
        registry.register("piece_failures", "Piece failures reported by peers, by reason", piece_failures.clone());
        registry.register("offers", "Parents offered back to downloading peers that did not ask", offers.clone());
        registry.register("refused", "Connections and calls refused, by reason", refused.clone());
        registry.register("preheat_jobs", "Preheat jobs running", preheat_jobs.clone());
        registry.register("preheat_hosts", "Daemons with a preheat job stream open", preheat_hosts.clone());
        Self {
            registry,
            hosts,
            peers,
            tasks,
            decisions,
            decision_seconds,
            piece_failures,
            offers,
            refused,
            preheat_jobs,
            preheat_hosts,
        }
    }
}

impl SchedulerMetrics {
    /// Counts one refusal.
    pub fn refuse(&self, kind: &'static str) {
        self.refused.get_or_create(&KindLabels { kind }).inc();
    }

    /// The OpenMetrics text exposition.
    pub fn encode(&self) -> String {
        let mut out = String::new();
        let _ = prometheus_client::encoding::text::encode(&mut out, &self.registry);
        out
    }
}

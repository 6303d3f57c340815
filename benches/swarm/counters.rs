//! A daemon's Prometheus counters, read from inside its namespace after a run.

use super::*;

/// A daemon's counters.
#[derive(Default, Clone, Copy)]
pub(crate) struct Counters {
    pub origin: f64,
    pub peer: f64,
    pub uploaded: f64,
    pub back_to_source: f64,
    pub piece_failures: f64,
    pub piece_busy: f64,
    pub tasks: f64,
    pub parents: f64,
}

/// The sum of every sample of `name` (all label sets).
pub(crate) fn metric_sum(text: &str, name: &str) -> f64 {
    text.lines()
        .filter(|l| !l.starts_with('#'))
        .filter_map(|l| l.rsplit_once(' '))
        .filter(|(series, _)| series.split('{').next() == Some(name))
        .filter_map(|(_, v)| v.parse::<f64>().ok())
        .sum()
}

pub(crate) fn read_counters(ns: &str) -> Counters {
    let text =
        sh(in_ns(ns, "curl").args(["-sf", "--max-time", "5", &format!("http://{ADMIN}/metrics")])).unwrap_or_default();
    Counters {
        origin: metric_value(&text, "shoal_fetched_bytes_total", "source=\"origin\"").unwrap_or(0.0),
        peer: metric_value(&text, "shoal_fetched_bytes_total", "source=\"peer\"").unwrap_or(0.0),
        uploaded: metric_value(&text, "shoal_uploaded_bytes_total", "").unwrap_or(0.0),
        back_to_source: metric_value(&text, "shoal_back_to_source_total", "").unwrap_or(0.0),
        piece_failures: metric_sum(&text, "shoal_piece_failures_total"),
        piece_busy: metric_value(&text, "shoal_piece_busy_total", "").unwrap_or(0.0),
        tasks: metric_value(&text, "shoal_task_parents_count", "").unwrap_or(0.0),
        parents: metric_value(&text, "shoal_task_parents_sum", "").unwrap_or(0.0),
    }
}

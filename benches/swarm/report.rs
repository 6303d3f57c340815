//! The namespace part's report at one link rate: what runs A (P2P) and B (direct) measured, the
//! tables with issue 9's target for the slowest node next to the figure, and the summary row.
//! It measures nothing itself.

use super::*;

/// Everything one rate's runs measured.
pub(crate) struct SwarmRun {
    pub nodes: usize,
    /// B, in tc syntax and in bits per second.
    pub rate: String,
    pub rate_bits: f64,
    /// S: every blob plus the manifest.
    pub s_bytes: u64,
    /// Layer count and the first layer's size in MB.
    pub layers: (usize, f64),
    pub parallel: u64,
    /// The iperf3 check and the tc qdiscs, one sentence.
    pub setup: String,
    pub blobs: Vec<Blob>,
    pub p2p: Vec<Pull>,
    /// `None` when run B was skipped (`SHOAL_BENCH_DIRECT=0`).
    pub direct: Option<Vec<Pull>>,
    /// Origin blob bytes and GETs during run A.
    pub origin_p2p: (u64, usize),
    /// Per blob digest during run A: (bytes, GETs).
    pub origin_by_blob: std::collections::HashMap<String, (u64, usize)>,
    pub origin_direct: u64,
    pub counters: Vec<Counters>,
    /// Daemons and scheduler alive, the scheduler's decisions, the store check: one sentence.
    pub health: String,
    pub daemons_cpu: f64,
    pub sched_cpu: f64,
    /// The machine's busy percentage during run A and run B.
    pub busy: (f64, f64),
}

/// Issue 9's bound on the slowest node, as a multiple of S/B, at the rates it names.
fn slowest_target(rate_bits: f64) -> Option<f64> {
    match rate_bits.round() as u64 {
        200_000_000 => Some(1.25),
        100_000_000 => Some(1.2),
        _ => None,
    }
}

fn totals(pulls: &[Pull]) -> Vec<Duration> {
    pulls.iter().map(|p| p.total).collect()
}

impl SwarmRun {
    fn s_over_b(&self) -> f64 {
        self.s_bytes as f64 * 8.0 / self.rate_bits
    }

    /// Appends this rate's section to `report` and its row to `summary`.
    pub(crate) fn report(&self, machine: &Machine, report: &mut String, summary: &mut Summary) {
        let s_over_b = self.s_over_b();
        let (nodes, rate) = (self.nodes, &self.rate);
        let _ = writeln!(
            report,
            "## Swarm: {nodes} nodes, S = {:.1} MB ({} layers of ~{:.1} MB + config), B = {rate} each way per link\n",
            self.s_bytes as f64 / MB as f64,
            self.layers.0,
            self.layers.1
        );
        let _ = writeln!(
            report,
            "Physical limit S/B = {s_over_b:.2} s. Each node and the origin in its own network namespace, veth to a bridge, \
             tbf on both ends of every capped veth. Clients: curl in each namespace (manifest, then the blobs, {} at a time). \
             {}.\n",
            self.parallel,
            self.setup
        );
        let _ = writeln!(report, "{}\n", machine.line());
        self.main_table(report, summary);
        self.node_table(report);
        let _ = writeln!(report, "{}\n", self.health);
        let p2p_max = p50_max(&totals(&self.p2p)).1.as_secs_f64();
        let _ = writeln!(
            report,
            "CPU: during run A the {nodes} daemons used {:.1} CPU-seconds in {p2p_max:.1} s ({:.2} cores; scheduler {:.2} s in \
             total) and the machine was {:.0}% busy (all processes, {} cores); during run B the machine was {:.0}% busy.\n",
            self.daemons_cpu,
            self.daemons_cpu / p2p_max,
            self.sched_cpu,
            self.busy.0,
            cores(),
            self.busy.1
        );
        self.blob_table(report);
    }

    /// Completion, origin traffic and speedup, each with its target and verdict.
    fn main_table(&self, report: &mut String, summary: &mut Summary) {
        let s_over_b = self.s_over_b();
        let (p2p_p50, p2p_max) = p50_max(&totals(&self.p2p));
        let direct = self.direct.as_deref().map(|d| p50_max(&totals(d)));
        let direct_cell = |t: Option<Duration>| match t {
            Some(t) => format!("{:.2}× S/B ({:.1} s)", t.as_secs_f64() / s_over_b, t.as_secs_f64()),
            None => "skipped".into(),
        };
        let slowest = p2p_max.as_secs_f64() / s_over_b;
        let bound = slowest_target(self.rate_bits);
        let slowest_target = bound
            .map_or("none at this rate (issue 9: 200mbit ≤ 1.25×, 100mbit ≤ 1.2×)".into(), |b| {
                format!("≤ {b}× S/B")
            });
        let slowest_met = bound.map(|b| slowest <= b);
        let origin_ratio = self.origin_p2p.0 as f64 / self.s_bytes as f64;
        let speedup = direct.map(|(_, d_max)| d_max.as_secs_f64() / p2p_max.as_secs_f64());
        let speedup_bound = self.nodes as f64 / 1.5;

        let _ = writeln!(report, "| | P2P (Shoal) | direct from origin | target | met? |");
        let _ = writeln!(report, "|---|---|---|---|---|");
        let _ = writeln!(
            report,
            "| node completion p50 | {:.2}× S/B ({:.1} s) | {} | | |",
            p2p_p50.as_secs_f64() / s_over_b,
            p2p_p50.as_secs_f64(),
            direct_cell(direct.map(|d| d.0))
        );
        let _ = writeln!(
            report,
            "| **slowest node** | **{slowest:.2}× S/B** ({:.1} s) | {} | P2P {slowest_target} | {} |",
            p2p_max.as_secs_f64(),
            direct_cell(direct.map(|d| d.1)),
            met(slowest_met)
        );
        let _ = writeln!(
            report,
            "| origin blob bytes | {origin_ratio:.3}× S ({} GETs) | {} | P2P ≤ 1.05× S | {} |",
            self.origin_p2p.1,
            if direct.is_some() {
                format!("{:.3}× S", self.origin_direct as f64 / self.s_bytes as f64)
            } else {
                "skipped".into()
            },
            met(Some(origin_ratio <= 1.05))
        );
        let _ = writeln!(
            report,
            "| speedup (direct slowest / P2P slowest) | {} | 1× | ≥ N/1.5 = {speedup_bound:.2}× | {} |\n",
            speedup.map_or("direct run skipped".into(), |s| format!("{s:.2}×")),
            met(speedup.map(|s| s >= speedup_bound))
        );
        summary.add(
            format!("{} netns nodes at {}, slowest node", self.nodes, self.rate),
            format!("{slowest:.2}× S/B ({:.1} s; S/B = {s_over_b:.2} s)", p2p_max.as_secs_f64()),
            slowest_target,
            slowest_met,
        );
    }

    /// Per node: the P2P run's own counters and both completion times.
    fn node_table(&self, report: &mut String) {
        let _ = writeln!(report, "Per node (P2P run: the daemon's own counters; direct run: completion only):\n");
        let _ = writeln!(
            report,
            "| node | P2P time | from origin (MB) | from peers (MB) | uploaded (MB) | back-to-source grants | failed pieces | busy answers | parents per task | direct time |"
        );
        let _ = writeln!(report, "|---|---|---|---|---|---|---|---|---|---|");
        for (i, (c, pull)) in self.counters.iter().zip(&self.p2p).enumerate() {
            let direct =
                self.direct.as_ref().map_or("skipped".into(), |d| format!("{:.1} s", d[i].total.as_secs_f64()));
            let _ = writeln!(
                report,
                "| node{i} | {:.1} s | {:.1} | {:.1} | {:.1} | {:.0} | {:.0} | {:.0} | {:.1} | {direct} |",
                pull.total.as_secs_f64(),
                c.origin / MB as f64,
                c.peer / MB as f64,
                c.uploaded / MB as f64,
                // `+ 0.0` turns the -0.0 of an empty float sum into 0.
                c.back_to_source + 0.0,
                c.piece_failures + 0.0,
                c.piece_busy + 0.0,
                if c.tasks > 0.0 { c.parents / c.tasks } else { 0.0 },
            );
        }
        let sum = |f: fn(&Counters) -> f64| self.counters.iter().map(f).sum::<f64>();
        let _ = writeln!(
            report,
            "| sum | | {:.1} ({:.3}× S) | {:.1} | {:.1} | | | | | |\n",
            sum(|c| c.origin) / MB as f64,
            sum(|c| c.origin) / self.s_bytes as f64,
            sum(|c| c.peer) / MB as f64,
            sum(|c| c.uploaded) / MB as f64
        );
    }

    /// Per blob: origin traffic during run A and the slowest node's transfer of it in each run.
    fn blob_table(&self, report: &mut String) {
        let _ = writeln!(
            report,
            "Per blob (P2P run): origin traffic and the slowest node's transfer time of that blob (curl's time_total):\n"
        );
        let _ = writeln!(
            report,
            "| blob | size (MB) | origin GETs | origin bytes (× blob) | slowest P2P transfer | slowest direct transfer |"
        );
        let _ = writeln!(report, "|---|---|---|---|---|---|");
        for (b, blob) in self.blobs.iter().enumerate() {
            let (bytes, gets) = self.origin_by_blob.get(&blob.digest).copied().unwrap_or((0, 0));
            let slowest =
                |pulls: &[Pull]| pulls.iter().map(|p| p.blob_secs.get(b).copied().unwrap_or(0.0)).fold(0.0, f64::max);
            let _ = writeln!(
                report,
                "| {} | {:.1} | {gets} | {:.2} | {:.1} s | {} |",
                &blob.hex()[..12],
                blob.size as f64 / MB as f64,
                bytes as f64 / blob.size as f64,
                slowest(&self.p2p),
                self.direct.as_deref().map_or("skipped".into(), |d| format!("{:.1} s", slowest(d)))
            );
        }
        let _ = writeln!(report);
    }
}

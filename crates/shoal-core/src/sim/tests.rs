//! The swarm on modelled links: one origin copy per site, corrupt parents avoided, peers that
//! arrive together trading. Sized to run in seconds in a debug build.

use super::*;

const MIB: u64 = 1 << 20;

/// 2,000 peers in 3 sites, a 32 MiB blob (32 pieces), links of 32 MiB/s: S/B is 1 s.
fn params() -> Params {
    Params::new(2000, 3, 32 * MIB, 32 * MIB)
}

/// Every peer done, at most `origin_factor` origin copies per site, the slowest peer within
/// `slowest` times S/B.
///
/// The bounds on completion are loose on purpose: with 32 pieces, each store-and-forward hop
/// through the parent graph costs a larger share of S/B than with the bench's 256, and the
/// graph built when every peer arrives at once is 9-14 hops deep; today these runs take 5-6.6x
/// S/B (the scale bench measures the goal, 1.3x, at 10,000 peers).
fn check(out: &Outcome, p: &Params, origin_factor: f64, slowest: f64) {
    let ideal = p.ideal_ms();
    let brief = Outcome { completion_ms: Vec::new(), hops: Vec::new(), ..out.clone() };
    eprintln!(
        "{} peers: p50 {:.2} p99 {:.2} max {:.2} x S/B; origin copies {:?}; {brief:?}",
        p.peers,
        out.completion_quantile(0.5) as f64 / ideal,
        out.completion_quantile(0.99) as f64 / ideal,
        out.completion_quantile(1.0) as f64 / ideal,
        out.origin_copies(p.layout.size),
    );
    assert_eq!(out.unfinished(), 0, "peers not done after {} ms", out.end_ms);
    for copies in out.origin_copies(p.layout.size) {
        assert!(copies <= origin_factor, "{copies} origin copies in a site");
    }
    let took = out.completion_quantile(1.0) as f64;
    assert!(took <= slowest * ideal, "slowest peer took {took} ms, S/B is {ideal} ms");
    // The peers that went to the origin stream the blob at the link rate.
    for i in 0..p.sites {
        let ms = out.completion_ms[i].unwrap_or(0) as f64;
        assert!(ms <= 1.05 * ideal, "origin peer {i} took {ms} ms");
    }
}

#[test]
fn a_swarm_pulls_one_blob_with_one_origin_copy_per_site() {
    let p = params();
    let (out, _) = Sim::new(p.clone()).run();
    check(&out, &p, 1.05, 8.0);
    assert_eq!(out.mismatches, 0);
}

#[test]
fn a_swarm_arriving_over_a_window_pulls_one_origin_copy_per_site() {
    let p = Params { arrival_window_ms: 2000, ..params() };
    let (out, _) = Sim::new(p.clone()).run();
    check(&out, &p, 1.05, 8.0);
}

#[test]
fn a_swarm_with_corrupt_parents_completes_and_avoids_them() {
    let p = Params { corrupt_every: 10, ..params() };
    let (out, _) = Sim::new(p.clone()).run();
    assert_eq!(out.corrupt_peers, p.peers / 10);
    assert!(out.mismatches > 0);
    check(&out, &p, 1.05, 8.0);
    // Avoided: after `quarantine_after_reports` peers caught it, a corrupt parent is offered to
    // nobody, so only the children it had then can still catch it (once each: a child drops a
    // parent at its first corrupt piece, and `offered` checks it is never offered again).
    let config = Config::default();
    let bound = (config.quarantine_after_reports + config.max_children_per_parent) as usize;
    assert!(out.most_reporters <= bound, "{} > {bound}", out.most_reporters);
    assert!(out.quarantined > 0);
    assert!(out.mismatches < 8 * out.corrupt_peers as u64);
}

#[test]
fn peers_arriving_together_trade_with_each_other() {
    // Eight peers at once: with only the parents of their own decision, the early ones lean on
    // the origin peer's uplink; offered back to each other, they trade.
    let burst = Params::new(8, 1, 32 * MIB, 32 * MIB);
    let (mesh, _) = Sim::new(burst.clone()).run();
    let tree_params = Params { scheduler: Config { max_parents: 0, ..Config::default() }, ..burst.clone() };
    let (tree, _) = Sim::new(tree_params).run();
    check(&mesh, &burst, 1.05, 8.0);
    assert!(mesh.offers > 0 && tree.offers == 0);
    let (m, t) = (mesh.completion_quantile(1.0), tree.completion_quantile(1.0));
    assert!(m < t, "{m} ms with offers, {t} ms without");
}

#[test]
fn the_run_is_deterministic() {
    let p = Params::new(50, 2, 20 * MIB, 50 * MIB);
    let (a, _) = Sim::new(p.clone()).run();
    let (b, _) = Sim::new(p).run();
    assert_eq!(a.completion_ms, b.completion_ms);
    assert_eq!((a.requests, a.cancels, a.wasted_bytes), (b.requests, b.cancels, b.wasted_bytes));
}

#[test]
#[ignore = "a trace to read, not a check"]
fn trace_eight_peers() {
    let p = Params { sample_ms: 100, ..Params::new(8, 1, 32 * MIB, 32 * MIB) };
    let (out, _) = Sim::new(p).run();
    // Per peer: pieces held / transfers in / transfers out / rate in (of the link).
    for (at, peers) in &out.samples {
        let row: Vec<String> =
            peers.iter().map(|x| format!("{:>2}/{:>2}/{:>2}/{:.2}", x.held, x.incoming, x.outgoing, x.rate)).collect();
        eprintln!("{at:>5} ms {}", row.join("  "));
    }
}

#[test]
#[ignore = "a trace to read, not a check"]
fn trace_a_swarm() {
    let p = Params { sample_ms: 200, ..params() };
    let (out, _) = Sim::new(p).run();
    let mut hops = out.hops.clone();
    hops.sort_unstable();
    eprintln!(
        "hops from an origin peer: p50 {} p99 {} max {}",
        quantile_u32(&hops, 0.5),
        quantile_u32(&hops, 0.99),
        quantile_u32(&hops, 1.0)
    );
    for (at, peers) in &out.samples {
        let active: Vec<_> = peers.iter().filter(|x| x.held < 32).collect();
        let n = active.len().max(1) as f64;
        let flows = active.iter().map(|x| x.incoming).sum::<u32>() as f64 / n;
        let rate = active.iter().map(|x| x.rate).sum::<f64>() / n;
        let held = active.iter().map(|x| x.held).sum::<u32>() as f64 / n;
        let uploads = peers.iter().map(|x| x.outgoing).sum::<u32>() as f64 / peers.len() as f64;
        eprintln!("{at:>5} ms: {} downloading, mean {held:.1} pieces, {flows:.1} transfers in at {rate:.2} B, {uploads:.1} out per peer", active.len());
    }
}

fn quantile_u32(sorted: &[u32], q: f64) -> u32 {
    let v: Vec<u64> = sorted.iter().map(|&h| u64::from(h)).collect();
    quantile(&v, q) as u32
}

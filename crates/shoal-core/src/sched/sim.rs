//! Swarm simulator: thousands of peers over several sites pulling one blob through the
//! [`Scheduler`] and the piece [`picker`](crate::picker), in discrete time steps.
//!
//! Each step, every active peer downloads up to `per_step` pieces, from the origin if it was
//! sent there, otherwise from its parents (each parent serves at most `uploads_per_step` pieces
//! per step); pieces fetched in a step become visible to others at the next one. A peer that
//! makes no progress for `stall_steps` steps, or has no usable parent left, reschedules. Corrupt
//! peers serve pieces that fail the digest check. Test-only: it must stay deterministic (seeded
//! shuffle, no clock) and fast.

use std::collections::{BTreeSet, HashMap};

use super::tests::SESSION;
use super::*;
use crate::picker::{self, ParentPieces, PickInput, PickerConfig};

const STEP_MS: u64 = 1000;

#[derive(Debug, Clone, Copy)]
struct Params {
    peers: usize,
    sites: usize,
    pieces: u32,
    per_step: usize,
    uploads_per_step: u32,
    arrivals_per_step: usize,
    stall_steps: u64,
    /// Every n-th peer is corrupt (0: none); the first peer of each site never is.
    corrupt_every: usize,
    max_steps: u64,
    /// [`Config::max_parents`].
    max_parents: usize,
}

const PARAMS: Params = Params {
    peers: 2000,
    sites: 3,
    pieces: 100,
    per_step: 4,
    uploads_per_step: 8,
    arrivals_per_step: 200,
    stall_steps: 5,
    corrupt_every: 0,
    max_steps: 200,
    max_parents: 8,
};

/// What a run measured.
#[derive(Debug, Default)]
struct Report {
    steps: u64,
    /// Longest time from arrival to done, in steps.
    slowest_peer: u64,
    origin_fetches: u64,
    origin_peers: u64,
    reschedules: u64,
    waits: u64,
    /// Parents added by offers.
    offers: u64,
    mismatches: u64,
    corrupt_peers: usize,
    /// Most distinct peers that caught one corrupt parent.
    most_reporters: usize,
    quarantined: usize,
}

struct SimPeer {
    id: HostId,
    site: usize,
    have: Bitmap,
    parents: Vec<usize>,
    bad: BTreeSet<usize>,
    origin: bool,
    arrived: Option<u64>,
    done: bool,
    corrupt: bool,
    last_progress: u64,
}

struct Sim {
    p: Params,
    /// Per corrupt parent, the peers that caught it.
    reporters: HashMap<usize, BTreeSet<usize>>,
    sched: Scheduler,
    peers: Vec<SimPeer>,
    index: HashMap<HostId, usize>,
    task: TaskId,
    layout: PieceLayout,
    truth: Vec<Digest>,
    rng: u64,
    report: Report,
}

impl Sim {
    fn new(p: Params) -> Self {
        let peers: Vec<SimPeer> = (0..p.peers)
            .map(|i| SimPeer {
                id: HostId(format!("p{i:05}")),
                site: i % p.sites,
                have: Bitmap::new(p.pieces),
                parents: Vec::new(),
                bad: BTreeSet::new(),
                origin: false,
                arrived: None,
                done: false,
                corrupt: p.corrupt_every > 0 && i >= p.sites && i % p.corrupt_every == 7,
                last_progress: 0,
            })
            .collect();
        let index = peers.iter().enumerate().map(|(i, x)| (x.id.clone(), i)).collect();
        let layout = PieceLayout { size: u64::from(p.pieces) << 20, piece_size: 1 << 20 };
        Self {
            p,
            reporters: HashMap::new(),
            sched: Scheduler::new(Config { max_parents: p.max_parents, ..Config::default() }),
            report: Report { corrupt_peers: peers.iter().filter(|x| x.corrupt).count(), ..Report::default() },
            peers,
            index,
            task: Digest::of(b"the blob"),
            layout,
            truth: (0..p.pieces).map(|i| Digest::of(&i.to_le_bytes())).collect(),
            rng: 0x9e37_79b9_7f4a_7c15,
        }
    }

    fn run(mut self) -> Report {
        for step in 0..self.p.max_steps {
            let now = step * STEP_MS;
            if step % 30 == 0 {
                self.announce_all(now);
            }
            assert!(self.sched.expire(now).is_empty(), "a live host expired");
            self.arrive(step);
            let pending = self.transfer(step);
            self.land(step, pending);
            if step % 20 == 0 {
                self.sched.check_invariants();
            }
            if self.peers.iter().all(|x| x.done) {
                self.report.steps = step + 1;
                self.sched.check_invariants();
                return self.finish();
            }
        }
        let left = self.peers.iter().filter(|x| !x.done).count();
        panic!("{left} peers not done after {} steps", self.p.max_steps);
    }

    fn finish(mut self) -> Report {
        let stats = self.sched.stats(self.task).expect("task");
        for peer in stats.per_peer.iter().filter(|p| p.quarantined) {
            assert!(self.peers[self.index[&peer.host]].corrupt, "honest {} quarantined", peer.host);
            self.report.quarantined += 1;
        }
        self.report.most_reporters = self.reporters.values().map(|r| r.len()).max().unwrap_or(0);
        self.report
    }

    fn announce_all(&mut self, now: u64) {
        for x in &self.peers {
            let info = HostInfo {
                id: x.id.clone(),
                addr: format!("{}:4433", x.id),
                site: format!("site-{}", x.site),
                upload_limit: 0,
                load: 0,
            };
            self.sched.announce_host(now, SESSION, info).unwrap();
        }
    }

    fn arrive(&mut self, step: u64) {
        let first = self.peers.iter().filter(|x| x.arrived.is_some()).count();
        let last = (first + self.p.arrivals_per_step).min(self.p.peers);
        for i in first..last {
            self.peers[i].arrived = Some(step);
            self.peers[i].last_progress = step;
            let (id, have) = (self.peers[i].id.clone(), Bitmap::new(self.p.pieces));
            let d = self.sched.register(step * STEP_MS, self.task, &id, self.layout, have);
            self.apply(i, d.expect("register"));
        }
    }

    /// Records a decision for peer `i`, checking it never names the peer or a bad parent.
    fn apply(&mut self, i: usize, d: Decision) {
        match d {
            Decision::BackToSource => {
                if !self.peers[i].origin {
                    self.report.origin_peers += 1;
                }
                self.peers[i].origin = true;
                self.peers[i].parents.clear();
            }
            Decision::Parents(c) => {
                let parents: Vec<usize> = c.iter().map(|c| self.index[&c.host]).collect();
                for p in &parents {
                    assert_ne!(*p, i, "peer {i} was offered itself");
                    assert!(!self.peers[i].bad.contains(p), "peer {i} offered bad {p}");
                }
                self.report.waits += u64::from(parents.is_empty());
                self.peers[i].parents = parents;
            }
        }
        self.take_offers();
    }

    /// Adds the parents the scheduler offered back to peers (a daemon adds them to its list).
    fn take_offers(&mut self) {
        for offer in self.sched.take_offers() {
            assert_eq!(offer.task, self.task);
            let (i, p) = (self.index[&offer.peer], self.index[&offer.parent.host]);
            assert_ne!(i, p, "peer {i} was offered itself");
            assert!(!self.peers[i].bad.contains(&p), "peer {i} offered bad {p}");
            assert!(!self.peers[i].done && !self.peers[i].origin, "offer to a peer that needs none");
            if !self.peers[i].parents.contains(&p) {
                self.peers[i].parents.push(p);
                self.report.offers += 1;
            }
        }
    }

    /// One step of downloads; returns the pieces fetched as (peer, piece, from origin).
    fn transfer(&mut self, step: u64) -> Vec<(usize, u32, bool)> {
        let mut order: Vec<usize> =
            (0..self.p.peers).filter(|&i| self.peers[i].arrived.is_some() && !self.peers[i].done).collect();
        for k in (1..order.len()).rev() {
            self.rng ^= self.rng << 13;
            self.rng ^= self.rng >> 7;
            self.rng ^= self.rng << 17;
            order.swap(k, (self.rng % (k as u64 + 1)) as usize);
        }
        let mut uploads_left = vec![self.p.uploads_per_step; self.p.peers];
        let mut pending = Vec::new();
        for i in order {
            if self.peers[i].origin {
                let missing = self.peers[i].have.missing().take(self.p.per_step);
                pending.extend(missing.map(|piece| (i, piece, true)));
                continue;
            }
            let stalled = step - self.peers[i].last_progress >= self.p.stall_steps;
            if stalled || self.peers[i].parents.is_empty() {
                self.report.reschedules += 1;
                let id = self.peers[i].id.clone();
                let d = self.sched.reschedule(step * STEP_MS, self.task, &id);
                self.apply(i, d.expect("reschedule"));
                self.peers[i].last_progress = step;
                if self.peers[i].origin {
                    continue;
                }
            }
            self.fetch_from_parents(step * STEP_MS, i, &mut uploads_left, &mut pending);
        }
        self.report.origin_fetches += pending.iter().filter(|x| x.2).count() as u64;
        pending
    }

    /// Peer `i` picks pieces from its parents and fetches them, checking each against the
    /// scheduler's digest.
    fn fetch_from_parents(
        &mut self,
        now: u64,
        i: usize,
        uploads_left: &mut [u32],
        pending: &mut Vec<(usize, u32, bool)>,
    ) {
        let cap = self.p.uploads_per_step;
        let parents = self.peers[i].parents.clone();
        assert!(parents.iter().all(|p| *p != i && !self.peers[i].bad.contains(p)));
        let none = Bitmap::new(self.p.pieces);
        let views: Vec<ParentPieces<'_>> = parents
            .iter()
            .map(|&p| ParentPieces { have: &self.peers[p].have, in_flight: cap - uploads_left[p] })
            .collect();
        let config = PickerConfig { urgent_window: 1, max_in_flight_per_parent: cap };
        let input = PickInput {
            held: &self.peers[i].have,
            in_flight: &none,
            parents: &views,
            read_position: prefix(&self.peers[i].have),
            max_requests: self.p.per_step,
            tie_offset: (i as u32).wrapping_mul(2_654_435_761),
        };
        let picks = picker::pick(&config, &input);
        let id = self.peers[i].id.clone();
        for pick in picks {
            let p = parents[pick.parent];
            if self.peers[i].bad.contains(&p) {
                continue; // caught earlier in this batch: the request is cancelled
            }
            uploads_left[p] -= 1;
            if !self.peers[p].corrupt {
                let want = self.sched.piece_digest(self.task, pick.piece);
                assert_eq!(want, Some(self.truth[pick.piece as usize]));
                pending.push((i, pick.piece, false));
                continue;
            }
            // The corrupt parent's bytes do not hash to the scheduler's digest.
            self.report.mismatches += 1;
            self.reporters.entry(p).or_default().insert(i);
            let parent = self.peers[p].id.clone();
            let reason = FailReason::DigestMismatch;
            let st = self.sched.piece_failed(now, self.task, &id, pick.piece, &parent, reason);
            assert_eq!(st, Ok(ParentStatus::Bad));
            self.peers[i].bad.insert(p);
            self.peers[i].parents.retain(|&x| x != p);
        }
    }

    /// Pieces fetched this step land: recorded, reported, and peers holding all are done.
    fn land(&mut self, step: u64, pending: Vec<(usize, u32, bool)>) {
        let now = step * STEP_MS;
        for (i, piece, origin) in pending {
            let x = &mut self.peers[i];
            assert!(x.have.set(piece), "piece {piece} fetched twice by {i}");
            x.last_progress = step;
            let digest = self.truth[piece as usize];
            let r = self.sched.piece_finished(now, self.task, &x.id, piece, digest, origin);
            assert!(r.is_ok(), "{r:?}");
        }
        for x in self.peers.iter_mut().filter(|x| !x.done && x.have.is_full()) {
            self.sched.done(now, self.task, &x.id).expect("done");
            x.done = true;
            let arrived = x.arrived.unwrap_or(0);
            self.report.slowest_peer = self.report.slowest_peer.max(step + 1 - arrived);
        }
    }
}

/// `Bitmap::prefix`, a byte at a time (the simulator calls it for every peer at every step).
fn prefix(have: &Bitmap) -> u32 {
    let bytes = have.as_bytes();
    let full = bytes.iter().take_while(|&&b| b == 0xff).count();
    let ones = bytes.get(full).map_or(0, |b| b.trailing_ones());
    (full as u32 * 8 + ones).min(have.len())
}

fn check(report: &Report, p: Params, origin_factor: f64) {
    eprintln!("{report:?}");
    let one_copy_per_site = f64::from(p.pieces) * p.sites as f64;
    assert!(
        report.origin_fetches as f64 <= origin_factor * one_copy_per_site,
        "origin fetches {} > {origin_factor} x {one_copy_per_site}",
        report.origin_fetches
    );
    // A peer alone needs pieces / per_step steps; in the swarm, parents are a few steps ahead
    // of their children and share their uploads: every peer is done within 3 times that.
    let arrivals = p.peers.div_ceil(p.arrivals_per_step) as u64;
    let transfer = u64::from(p.pieces).div_ceil(p.per_step as u64);
    assert!(report.slowest_peer <= 3 * transfer, "slowest {}", report.slowest_peer);
    assert!(report.steps <= arrivals + 3 * transfer, "{} steps", report.steps);
}

#[test]
fn a_swarm_pulls_one_blob_with_one_origin_copy_per_site() {
    let report = Sim::new(PARAMS).run();
    check(&report, PARAMS, 1.05);
    assert_eq!(report.mismatches, 0);
}

#[test]
fn a_swarm_with_corrupt_parents_completes_and_avoids_them() {
    let p = Params { corrupt_every: 10, ..PARAMS };
    let report = Sim::new(p).run();
    assert_eq!(report.corrupt_peers, p.peers / 10);
    assert!(report.mismatches > 0);
    check(&report, p, 1.05);
    // Avoided: after `quarantine_after_reports` peers caught it, a corrupt parent is offered to
    // nobody, so only the children it had then can still catch it (once each).
    let config = Config::default();
    let bound = (config.quarantine_after_reports + config.max_children_per_parent) as usize;
    assert!(report.most_reporters <= bound, "{} > {bound}", report.most_reporters);
    // A parent caught once ranks last; caught by enough peers, it is quarantined (only corrupt
    // ones are: `finish` checks).
    assert!(report.quarantined > 0);
    // Each corrupt peer is caught at most once by each peer it was given or offered to; with
    // offers that is about six peers on average here (four without).
    assert!(report.mismatches < 8 * report.corrupt_peers as u64);
}

#[test]
fn peers_arriving_together_trade_with_each_other() {
    // Eight peers at once, each uploading no faster than it downloads: with only the parents
    // of their own decision, the early ones lean on the origin peer; offered back to each
    // other, they trade.
    let burst = Params { peers: 8, sites: 1, per_step: 4, uploads_per_step: 4, arrivals_per_step: 8, ..PARAMS };
    let mesh = Sim::new(burst).run();
    let tree = Sim::new(Params { max_parents: 0, ..burst }).run();
    eprintln!("offers on: {mesh:?}\noffers off: {tree:?}");
    assert!(mesh.offers > 0 && tree.offers == 0);
    assert!(mesh.steps < tree.steps, "{} steps with offers, {} without", mesh.steps, tree.steps);
    check(&mesh, burst, 1.05);
}

#[test]
fn prefix_matches_bitmap_prefix() {
    for len in [0u32, 1, 7, 8, 9, 100] {
        let mut b = Bitmap::new(len);
        for i in 0..=len {
            assert_eq!(prefix(&b), b.prefix(), "len {len}, {i} set");
            b.set(i);
            if i % 3 == 2 {
                b.set(i + 2);
            }
        }
    }
}

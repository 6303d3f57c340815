//! Swarm simulator, for tests and benchmarks only (built for `cargo test` and with the `sim`
//! feature; no daemon uses it): thousands of peers in several sites pull one blob through the
//! real [`Scheduler`] and, each of them, the real child machine ([`Child`]), over modelled links.
//!
//! Each peer is what a daemon is around its child machine, and nothing more: it carries out the
//! child's [`Action`]s (a request becomes a transfer from the parent, a report becomes a
//! scheduler call, an origin fetch a stream of pieces), feeds the answers back (bytes so far,
//! pieces received, refusals, "have" updates from the parents it watches, digest tables), and
//! serves its own pieces to others, refusing busy ones the way a parent that fetched from the
//! origin does ([`Seeding`]). The scheduler's decisions and offers go to the children as the
//! service sends them: digests first, then the decision; each newly trusted digest to everyone.
//!
//! Time is virtual, in milliseconds, advanced in fixed steps ([`Params::step_ms`]). At each
//! step the network ([`net`]) shares every link among its transfers (max-min fair, every link
//! [`Params::link_bytes_per_s`] up and down), transfers move on, each child hears its bytes so
//! far, finished pieces land, and due timeouts fire. What happens within a step — answers to
//! requests a parent refuses, "have" updates, new digests — reaches the children at the next
//! one, like a round trip. An origin stream goes on within a step (a piece shorter than a step
//! does not cost a whole one); a parent's transfer that ends mid-step leaves the rest of the
//! step unused. Deterministic: no clock, no threads, no randomness (peers arrive in index order,
//! peer `i` in site `i % sites`); [`Meter`] is the only way out to the wall clock (the benchmark
//! times decisions).
//!
//! Not modelled: peers that die, stall or leave (no parent ever times out here unless the
//! swarm starves it), forged digest tables (the blob always verifies: digests come from honest
//! origin peers; corrupt peers lie only in the pieces they upload), sha256 and disk time,
//! latency beyond one step, and the scheduler's own session (always up).

mod net;
#[cfg(test)]
mod tests;

use std::cmp::Reverse;
use std::collections::{BTreeSet, BinaryHeap, HashMap, VecDeque};

use net::{Net, Source};

use crate::child::{Action, Checked, Child, ChildConfig, Failure, Offered, ParentId, Report, RequestId, Verdict};
use crate::sched::{Candidate, Config, Decision, FailReason, HostId, HostInfo, PieceRecorded, Scheduler, SessionId};
use crate::seeding::{Seeding, SeedingConfig};
use crate::{Bitmap, Digest, PieceDigest, PieceLayout};

/// What to simulate.
#[derive(Debug, Clone)]
pub struct Params {
    /// Peers pulling the blob.
    pub peers: usize,
    /// Sites; peer `i` is in site `i % sites`.
    pub sites: usize,
    /// The blob's layout.
    pub layout: PieceLayout,
    /// Bytes per second of every link, up and down alike.
    pub link_bytes_per_s: u64,
    /// Peers arrive one after another, evenly over this window (0: all at once), in index order.
    pub arrival_window_ms: u64,
    /// Every n-th peer serves corrupt pieces (0: none); the first peer of each site never does.
    pub corrupt_every: usize,
    /// The network's time step. Smaller: more exact, slower.
    pub step_ms: u64,
    /// The run gives up at this virtual time.
    pub max_ms: u64,
    /// Records every peer's piece count this often (0: never), in [`Outcome::samples`].
    pub sample_ms: u64,
    /// The scheduler's configuration.
    pub scheduler: Config,
    /// Every child's configuration.
    pub child: ChildConfig,
    /// The seeding rule of parents that fetched from the origin.
    pub seeding: SeedingConfig,
}

impl Params {
    /// `peers` in `sites` pulling a blob of `size` bytes (standard layout) over links of
    /// `link` bytes per second, all arriving at once; defaults for everything else.
    pub fn new(peers: usize, sites: usize, size: u64, link: u64) -> Self {
        Self {
            peers,
            sites,
            layout: PieceLayout::for_size(size),
            link_bytes_per_s: link,
            arrival_window_ms: 0,
            corrupt_every: 0,
            step_ms: 10,
            max_ms: 3_600_000,
            sample_ms: 0,
            scheduler: Config::default(),
            child: ChildConfig::default(),
            seeding: SeedingConfig::default(),
        }
    }

    /// S/B: how long one peer alone takes at the link rate, in ms.
    pub fn ideal_ms(&self) -> f64 {
        self.layout.size as f64 * 1000.0 / self.link_bytes_per_s as f64
    }
}

/// Times the calls into the scheduler and the child machines (the benchmark reads the wall
/// clock here; the simulator itself never does).
pub trait Meter {
    /// A scheduler decision: `register`, `reschedule` or `blob_mismatch`.
    fn scheduler<T>(&mut self, f: impl FnOnce() -> T) -> T {
        f()
    }

    /// One event into a child machine (every input but `progress`).
    fn child<T>(&mut self, f: impl FnOnce() -> T) -> T {
        f()
    }
}

/// Times nothing.
#[derive(Debug, Default, Clone, Copy)]
pub struct NoMeter;

impl Meter for NoMeter {}

/// What a run measured.
#[derive(Debug, Default, Clone)]
pub struct Outcome {
    /// Per peer, from its arrival to its child's `Done`, in ms (`None`: not done).
    pub completion_ms: Vec<Option<u64>>,
    /// Virtual time when the run ended, in ms.
    pub end_ms: u64,
    /// Bytes fetched from the origin, per site.
    pub origin_bytes: Vec<u64>,
    /// Bytes delivered by parents (accepted or not).
    pub peer_bytes: u64,
    /// Bytes of transfers cancelled midway, or delivered and thrown away (hedge losers,
    /// corrupt pieces).
    pub wasted_bytes: u64,
    /// Scheduler decisions, by call.
    pub registers: u64,
    /// Reschedules asked by children.
    pub reschedules: u64,
    /// Back-to-source decisions.
    pub back_to_source: u64,
    /// Decisions with no parent (wait).
    pub waits: u64,
    /// Parents offered back to peers that did not ask.
    pub offers: u64,
    /// Piece requests sent to parents.
    pub requests: u64,
    /// Requests a parent refused as busy (seeding rule).
    pub busy: u64,
    /// Requests for pieces the parent did not hold.
    pub not_found: u64,
    /// Requests cancelled by children.
    pub cancels: u64,
    /// Timeouts children reported (stalled parents, requests past their hard limit).
    pub timeouts: u64,
    /// Corrupt pieces caught.
    pub mismatches: u64,
    /// Corrupt peers in the run.
    pub corrupt_peers: usize,
    /// Most distinct peers that caught one corrupt parent.
    pub most_reporters: usize,
    /// Parents the scheduler quarantined (all of them corrupt).
    pub quarantined: usize,
    /// Events handed to child machines (every input but `progress`).
    pub child_events: u64,
    /// Per peer, the fewest parent links from a peer that went to the origin (`u32::MAX`: not
    /// reachable): how many store-and-forward hops a piece needs at least.
    pub hops: Vec<u32>,
    /// Every [`Params::sample_ms`]: the time, and each peer's state.
    pub samples: Vec<(u64, Vec<PeerSample>)>,
}

/// One peer at one time (transfers and rates as of the last step).
#[derive(Debug, Default, Clone, Copy)]
pub struct PeerSample {
    /// Pieces held.
    pub held: u32,
    /// Transfers coming in.
    pub incoming: u32,
    /// Transfers going out (to children).
    pub outgoing: u32,
    /// The incoming transfers' total rate, as a fraction of the link.
    pub rate: f64,
}

impl Outcome {
    /// Peers not done when the run ended.
    pub fn unfinished(&self) -> usize {
        self.completion_ms.iter().filter(|c| c.is_none()).count()
    }

    /// The `q`-quantile (0..=1) of the completion times of peers that finished, in ms.
    pub fn completion_quantile(&self, q: f64) -> u64 {
        let mut done: Vec<u64> = self.completion_ms.iter().flatten().copied().collect();
        done.sort_unstable();
        quantile(&done, q)
    }

    /// Origin bytes per site, as copies of a blob of `size` bytes.
    pub fn origin_copies(&self, size: u64) -> Vec<f64> {
        self.origin_bytes.iter().map(|&b| b as f64 / size as f64).collect()
    }
}

/// The `q`-quantile of sorted values (nearest rank; 0 for none).
pub fn quantile(sorted: &[u64], q: f64) -> u64 {
    if sorted.is_empty() {
        return 0;
    }
    let rank = ((q * sorted.len() as f64).ceil() as usize).clamp(1, sorted.len());
    sorted[rank - 1]
}

/// One simulated daemon.
struct Peer {
    id: HostId,
    site: usize,
    corrupt: bool,
    arrive_at: u64,
    child: Option<Child>,
    /// Pieces stored here (what it serves).
    held: Bitmap,
    /// Its child's parents, by [`ParentId`], as peer indexes.
    parents: Vec<usize>,
    /// Children watching its "have" updates.
    watchers: Vec<(usize, ParentId)>,
    /// Its pieces changed since the last "have" update.
    dirty: bool,
    /// Set once it fetches from the origin: then it serves each new piece to one child at a time.
    seeding: Option<Seeding<usize>>,
    /// Origin pieces still to fetch, in order, and the transfer running.
    origin: VecDeque<u32>,
    origin_flow: Option<usize>,
    /// Requests in flight, by request id, as transfer slots.
    requests: HashMap<RequestId, usize>,
    done_at: Option<u64>,
    /// The child's next timeout, as last pushed to the timer heap.
    timeout: Option<u64>,
}

/// A run; see the [module docs](self).
pub struct Sim<M: Meter = NoMeter> {
    p: Params,
    meter: M,
    sched: Scheduler,
    net: Net,
    peers: Vec<Peer>,
    index: HashMap<String, usize>,
    task: Digest,
    truth: Vec<PieceDigest>,
    now: u64,
    arrived: usize,
    /// Peers whose child has actions to carry out.
    todo: Vec<usize>,
    timers: BinaryHeap<Reverse<(u64, usize)>>,
    /// Refusals, answered at the next step (a round trip).
    refusals: Vec<(usize, RequestId, Failure)>,
    /// Peers whose pieces changed since the last step.
    changed: Vec<usize>,
    /// Digests newly trusted since the last step.
    new_digests: Vec<(u32, PieceDigest)>,
    /// Per corrupt parent, the peers that caught it.
    reporters: HashMap<usize, BTreeSet<usize>>,
    out: Outcome,
}

const SESSION: SessionId = SessionId(1);

impl Sim<NoMeter> {
    /// A run of `p`, timing nothing.
    pub fn new(p: Params) -> Self {
        Self::with_meter(p, NoMeter)
    }
}

impl<M: Meter> Sim<M> {
    /// A run of `p`, timing decisions with `meter`.
    pub fn with_meter(p: Params, meter: M) -> Self {
        let n = p.layout.count();
        let peers: Vec<Peer> = (0..p.peers)
            .map(|i| Peer {
                id: HostId(format!("p{i:05}")),
                site: i % p.sites,
                corrupt: p.corrupt_every > 0 && i >= p.sites && i % p.corrupt_every == 7,
                arrive_at: if p.peers > 1 { p.arrival_window_ms * i as u64 / (p.peers as u64 - 1) } else { 0 },
                child: None,
                held: Bitmap::new(n),
                parents: Vec::new(),
                watchers: Vec::new(),
                dirty: false,
                seeding: None,
                origin: VecDeque::new(),
                origin_flow: None,
                requests: HashMap::new(),
                done_at: None,
                timeout: None,
            })
            .collect();
        let index = peers.iter().enumerate().map(|(i, x)| (x.id.0.clone(), i)).collect();
        let out = Outcome {
            completion_ms: vec![None; p.peers],
            origin_bytes: vec![0; p.sites],
            corrupt_peers: peers.iter().filter(|x| x.corrupt).count(),
            ..Outcome::default()
        };
        Self {
            sched: Scheduler::new(p.scheduler.clone()),
            net: Net::new(p.peers, p.link_bytes_per_s),
            meter,
            peers,
            index,
            task: Digest::of(b"the blob"),
            truth: (0..n).map(|i| PieceDigest::of(&i.to_le_bytes())).collect(),
            now: 0,
            arrived: 0,
            todo: Vec::new(),
            timers: BinaryHeap::new(),
            refusals: Vec::new(),
            changed: Vec::new(),
            new_digests: Vec::new(),
            reporters: HashMap::new(),
            out,
            p,
        }
    }

    /// Runs until every peer is done or [`Params::max_ms`]; returns what it measured and the
    /// meter.
    pub fn run(mut self) -> (Outcome, M) {
        let mut next_announce = 0;
        #[cfg(test)]
        let mut next_check = 0;
        loop {
            if self.p.sample_ms > 0 && self.now % self.p.sample_ms < self.p.step_ms {
                let mut sample: Vec<PeerSample> =
                    self.peers.iter().map(|x| PeerSample { held: x.held.count(), ..PeerSample::default() }).collect();
                for (_, f) in self.net.iter() {
                    if let Source::Peer(p) = f.from {
                        sample[p].outgoing += 1;
                    }
                    sample[f.to].incoming += 1;
                    sample[f.to].rate += f.rate / self.p.link_bytes_per_s as f64;
                }
                self.out.samples.push((self.now, sample));
            }
            if self.now >= next_announce {
                self.announce_all();
                next_announce += 30_000;
            }
            self.arrive();
            self.answer_refusals();
            self.fire_timers();
            self.publish();
            #[cfg(test)]
            if self.now >= next_check {
                self.sched.check_invariants();
                next_check += 50 * self.p.step_ms;
            }
            let all_done = self.arrived == self.peers.len() && self.peers.iter().all(|x| x.done_at.is_some());
            if all_done || self.now >= self.p.max_ms {
                break;
            }
            self.net.allocate();
            let finished = self.net.advance(self.p.step_ms);
            self.now += self.p.step_ms;
            self.report_progress();
            for (slot, spare) in finished {
                self.land(slot, spare);
                self.flush();
            }
        }
        self.finish()
    }

    fn finish(mut self) -> (Outcome, M) {
        self.out.end_ms = self.now;
        if let Some(stats) = self.sched.stats(self.task) {
            for peer in stats.per_peer.iter().filter(|p| p.quarantined) {
                assert!(self.peers[self.index[peer.host.as_str()]].corrupt, "honest {} quarantined", peer.host);
                self.out.quarantined += 1;
            }
        }
        self.out.most_reporters = self.reporters.values().map(BTreeSet::len).max().unwrap_or(0);
        self.out.hops = self.hops();
        (self.out, self.meter)
    }

    /// Breadth first over the children's parent lists, from the peers that went to the origin.
    fn hops(&self) -> Vec<u32> {
        let mut children: Vec<Vec<usize>> = vec![Vec::new(); self.peers.len()];
        for (i, x) in self.peers.iter().enumerate() {
            for &p in &x.parents {
                children[p].push(i);
            }
        }
        let mut hops = vec![u32::MAX; self.peers.len()];
        let mut queue: VecDeque<usize> = VecDeque::new();
        for (i, x) in self.peers.iter().enumerate() {
            if x.seeding.is_some() {
                hops[i] = 0;
                queue.push_back(i);
            }
        }
        while let Some(p) = queue.pop_front() {
            for &c in &children[p] {
                if hops[c] == u32::MAX {
                    hops[c] = hops[p] + 1;
                    queue.push_back(c);
                }
            }
        }
        hops
    }

    fn announce_all(&mut self) {
        for x in &self.peers {
            let info = HostInfo {
                id: x.id.clone(),
                addr: format!("{}:4433", x.id),
                site: format!("site-{}", x.site),
                upload_limit: 0,
                load: 0,
            };
            self.sched.announce_host(self.now, SESSION, info).expect("announce");
        }
    }

    // --- arrivals and the scheduler ---

    fn arrive(&mut self) {
        while self.arrived < self.peers.len() && self.peers[self.arrived].arrive_at <= self.now {
            let (i, now, n) = (self.arrived, self.now, self.p.layout.count());
            self.arrived += 1;
            let (task, layout, id) = (self.task, self.p.layout, self.peers[i].id.clone());
            let sched = &mut self.sched;
            let d = self.meter.scheduler(|| sched.register(now, task, &id, layout, Bitmap::new(n)));
            self.out.registers += 1;
            let tie = (i as u32).wrapping_mul(2_654_435_761);
            let child = self.meter.child(|| Child::new(self.p.child, layout, Bitmap::new(n), tie, now, true));
            self.peers[i].child = Some(child);
            // As the service sends them: the digests known, then the decision.
            let known = self.sched.piece_digests(task);
            if !known.is_empty() {
                let epoch = self.sched.digest_epoch(task);
                self.with_child(i, |c| c.digests(now, epoch, known));
            }
            self.decided(i, d.expect("register"));
            self.flush();
        }
    }

    /// Hands a decision to peer `i`'s child, then the offers it made to others.
    fn decided(&mut self, i: usize, d: Decision) {
        let now = self.now;
        match d {
            Decision::BackToSource => {
                self.out.back_to_source += 1;
                self.with_child(i, |c| c.back_to_source(now));
            }
            Decision::Parents(candidates) => {
                self.out.waits += u64::from(candidates.is_empty());
                let offered = self.offered(i, &candidates);
                self.with_child(i, |c| c.parents_offered(now, offered));
            }
        }
        for offer in self.sched.take_offers() {
            assert_eq!(offer.task, self.task);
            let j = self.index[offer.peer.as_str()];
            assert!(self.peers[j].done_at.is_none(), "offer to {j}, done");
            self.out.offers += 1;
            let offered = self.offered(j, std::slice::from_ref(&offer.parent));
            self.with_child(j, |c| c.parents_offered(now, offered));
        }
    }

    /// Candidates for peer `i` as its child takes them, checking they never name itself or a
    /// parent it caught with a corrupt piece.
    fn offered(&self, i: usize, candidates: &[Candidate]) -> Vec<Offered> {
        candidates
            .iter()
            .map(|c| {
                let p = self.index[c.host.as_str()];
                assert_ne!(p, i, "peer {i} was offered itself");
                assert!(!self.reporters.get(&p).is_some_and(|r| r.contains(&i)), "peer {i} offered bad {p}");
                Offered { host_id: c.host.0.clone(), addr: c.addr.clone(), have: c.have.clone() }
            })
            .collect()
    }

    /// Carries a child's report to the scheduler.
    fn report(&mut self, i: usize, report: Report) {
        let (now, task, id) = (self.now, self.task, self.peers[i].id.clone());
        match report {
            Report::PieceFinished { index, digest, from_origin } => {
                let recorded = self.sched.piece_finished(now, task, &id, index, digest, from_origin);
                if recorded.expect("piece finished") == PieceRecorded::DigestKept {
                    self.new_digests.push((index, digest));
                }
            }
            Report::PieceFailed { index, parent, reason } => {
                let p = self.peers[i].parents[parent.0];
                match reason {
                    FailReason::DigestMismatch => {
                        self.out.mismatches += 1;
                        self.reporters.entry(p).or_default().insert(i);
                    }
                    FailReason::Timeout => self.out.timeouts += 1,
                    FailReason::Refused | FailReason::Io => {}
                }
                let parent = self.peers[p].id.clone();
                self.sched.piece_failed(now, task, &id, index, &parent, reason).expect("piece failed");
            }
            Report::Reschedule => {
                self.out.reschedules += 1;
                let sched = &mut self.sched;
                let d = self.meter.scheduler(|| sched.reschedule(now, task, &id));
                self.decided(i, d.expect("reschedule"));
            }
            Report::BlobMismatch { epoch, parents } => {
                let parents: Vec<HostId> =
                    parents.iter().map(|p| self.peers[self.peers[i].parents[p.0]].id.clone()).collect();
                let before = self.sched.digest_epoch(task);
                let sched = &mut self.sched;
                let d = self.meter.scheduler(|| sched.blob_mismatch(now, task, &id, epoch, &parents));
                let after = self.sched.digest_epoch(task);
                if after != before {
                    for j in 0..self.arrived {
                        self.with_child(j, |c| c.digests(now, after, []));
                    }
                }
                self.decided(i, d.expect("blob mismatch"));
            }
            Report::Done => self.sched.done(now, task, &id).expect("done"),
        }
    }

    // --- the child machines ---

    /// Calls peer `i`'s child (timed), and remembers to carry out its actions.
    fn with_child<T>(&mut self, i: usize, f: impl FnOnce(&mut Child) -> T) -> T {
        let child = self.peers[i].child.as_mut().expect("arrived");
        self.out.child_events += 1;
        let t = self.meter.child(|| f(child));
        self.todo.push(i);
        t
    }

    /// Carries out every pending action, then re-arms the children's timers.
    fn flush(&mut self) {
        while let Some(i) = self.todo.pop() {
            while let Some(action) = self.peers[i].child.as_mut().and_then(Child::poll_action) {
                self.act(i, action);
            }
            let next = self.peers[i].child.as_ref().and_then(Child::poll_timeout);
            if next != self.peers[i].timeout {
                self.peers[i].timeout = next;
                if let Some(t) = next {
                    self.timers.push(Reverse((t, i)));
                }
            }
        }
    }

    fn act(&mut self, i: usize, action: Action) {
        let now = self.now;
        match action {
            Action::Watch(parent) => {
                let host = &self.peers[i].child.as_ref().expect("arrived").parent(parent).host_id;
                let p = self.index[host.as_str()];
                assert_eq!(self.peers[i].parents.len(), parent.0, "parent ids in order");
                self.peers[i].parents.push(p);
                self.peers[p].watchers.push((i, parent));
                // The "have" stream starts with the parent's current pieces.
                let have = self.peers[p].held.clone();
                self.with_child(i, |c| c.parent_have(now, parent, have));
            }
            Action::Request { id, parent, piece } => self.request(i, id, parent, piece),
            Action::Cancel(id) => {
                self.out.cancels += 1;
                if let Some(flow) = self.peers[i].requests.remove(&id).and_then(|slot| self.net.remove(slot)) {
                    self.out.wasted_bytes += flow.bytes();
                }
            }
            // No connection to drop here: the next request goes through as before.
            Action::Forget(_) => {}
            Action::FetchOrigin(runs) => {
                self.peers[i].origin.extend(runs.into_iter().flatten());
                let seeding = self.p.seeding;
                self.peers[i].seeding.get_or_insert_with(|| Seeding::new(seeding));
                self.next_origin_piece(i);
            }
            Action::Report(report) => self.report(i, report),
            Action::Register => {
                let (task, layout, id) = (self.task, self.p.layout, self.peers[i].id.clone());
                let held = self.peers[i].held.clone();
                let sched = &mut self.sched;
                let d = self.meter.scheduler(|| sched.register(now, task, &id, layout, held));
                self.out.registers += 1;
                self.with_child(i, |c| c.session_opened(now));
                self.decided(i, d.expect("register"));
            }
            // The pieces all matched trusted digests from honest origin peers: the blob does.
            Action::Verify => {
                self.with_child(i, |c| c.verified(now, Checked::Complete));
            }
            // The simulated origin never fails, and only an origin failure gives up.
            Action::GiveUp => unreachable!("peer {i} gave up with a working origin"),
            Action::Done => {
                self.peers[i].done_at = Some(now);
                self.out.completion_ms[i] = Some(now - self.peers[i].arrive_at);
            }
        }
    }

    /// A request reaches its parent: served, or refused (the answer comes a step later).
    fn request(&mut self, i: usize, id: RequestId, parent: ParentId, piece: u32) {
        self.out.requests += 1;
        let p = self.peers[i].parents[parent.0];
        let now = self.now;
        let parent = &mut self.peers[p];
        if !parent.held.get(piece) {
            self.out.not_found += 1;
            self.refusals.push((i, id, Failure::NotFound));
            return;
        }
        if parent.seeding.as_mut().is_some_and(|s| !s.admit(piece, &i, now)) {
            self.out.busy += 1;
            self.refusals.push((i, id, Failure::Busy));
            return;
        }
        let size = self.p.layout.piece(piece).len();
        let slot = self.net.start(i, Source::Peer(p), id.0, piece, size);
        self.peers[i].requests.insert(id, slot);
    }

    fn next_origin_piece(&mut self, i: usize) {
        if self.peers[i].origin_flow.is_some() {
            return;
        }
        while let Some(piece) = self.peers[i].origin.pop_front() {
            if !self.peers[i].held.get(piece) {
                let size = self.p.layout.piece(piece).len();
                self.peers[i].origin_flow = Some(self.net.start(i, Source::Origin, 0, piece, size));
                return;
            }
        }
    }

    // --- each step ---

    fn answer_refusals(&mut self) {
        let now = self.now;
        for (i, id, failure) in std::mem::take(&mut self.refusals) {
            self.with_child(i, |c| c.piece_failed(now, id, failure));
        }
        self.flush();
    }

    fn fire_timers(&mut self) {
        let now = self.now;
        while let Some(&Reverse((t, i))) = self.timers.peek() {
            if t > now {
                break;
            }
            self.timers.pop();
            if self.peers[i].timeout == Some(t) {
                self.peers[i].timeout = None;
                self.with_child(i, |c| c.handle_timeout(now));
                self.flush();
            }
        }
    }

    /// "Have" updates to the children watching peers whose pieces changed, and new digests to
    /// every peer still downloading.
    fn publish(&mut self) {
        let now = self.now;
        for p in std::mem::take(&mut self.changed) {
            self.peers[p].dirty = false;
            for k in 0..self.peers[p].watchers.len() {
                let (i, parent) = self.peers[p].watchers[k];
                if self.peers[i].done_at.is_none() {
                    let have = self.peers[p].held.clone();
                    self.with_child(i, |c| c.parent_have(now, parent, have));
                }
            }
            self.flush();
        }
        if !self.new_digests.is_empty() {
            let digests = std::mem::take(&mut self.new_digests);
            let epoch = self.sched.digest_epoch(self.task);
            for i in 0..self.arrived {
                if self.peers[i].done_at.is_none() {
                    self.with_child(i, |c| c.digests(now, epoch, digests.iter().copied()));
                }
            }
            self.flush();
        }
    }

    fn report_progress(&mut self) {
        let now = self.now;
        for (_, f) in self.net.iter() {
            if let (Source::Peer(_), Some(c)) = (f.from, self.peers[f.to].child.as_mut()) {
                c.progress(now, RequestId(f.tag), f.bytes());
            }
        }
    }

    /// A transfer finished `spare` seconds before the end of the step: an origin piece is
    /// stored (and the next one gets the rest of the step); a parent's piece is checked by the
    /// child, then stored.
    fn land(&mut self, slot: usize, spare: f64) {
        let Some(flow) = self.net.remove(slot) else { return };
        let (i, piece, now) = (flow.to, flow.piece, self.now);
        let truth = self.truth[piece as usize];
        match flow.from {
            Source::Origin => {
                self.peers[i].origin_flow = None;
                self.out.origin_bytes[self.peers[i].site] += flow.size;
                self.store(i, piece);
                self.with_child(i, |c| c.piece_stored(now, piece, truth));
                self.next_origin_piece(i);
                match self.peers[i].origin_flow {
                    // The origin stream goes on within the step: a piece shorter than a step
                    // does not cost a whole one (several can finish in one step).
                    Some(next) if spare > 0.0 => {
                        if self.net.credit(next, flow.rate, spare) {
                            let rest = spare - self.p.layout.piece(self.net_piece(next)).len() as f64 / flow.rate;
                            self.land(next, rest.max(0.0));
                        }
                    }
                    Some(_) => {}
                    None => {
                        self.with_child(i, |c| c.origin_done(now));
                    }
                }
            }
            Source::Peer(p) => {
                let id = RequestId(flow.tag);
                self.peers[i].requests.remove(&id);
                self.out.peer_bytes += flow.size;
                let got = if self.peers[p].corrupt {
                    PieceDigest::of(&[b"corrupt".as_slice(), &piece.to_le_bytes()].concat())
                } else {
                    truth
                };
                match self.with_child(i, |c| c.piece_received(now, id, got)) {
                    Verdict::Store(digest) => {
                        assert_eq!(digest, truth, "peer {i} stored a corrupt piece {piece}");
                        self.store(i, piece);
                        self.with_child(i, |c| c.piece_stored(now, piece, digest));
                    }
                    Verdict::Discard => self.out.wasted_bytes += flow.size,
                }
            }
        }
    }

    fn net_piece(&self, slot: usize) -> u32 {
        self.net.get(slot).map_or(0, |f| f.piece)
    }

    fn store(&mut self, i: usize, piece: u32) {
        let x = &mut self.peers[i];
        assert!(x.held.set(piece), "piece {piece} stored twice by {i}");
        if !x.dirty {
            x.dirty = true;
            self.changed.push(i);
        }
    }
}

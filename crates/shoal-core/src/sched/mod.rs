//! The scheduler's decision logic as a state machine: host and peer announcements in, decisions
//! (back to source, parents, wait) and digests out.
//!
//! [`Scheduler`] holds the soft state of a cluster: the hosts that announced themselves and, per
//! task (blob), which peer holds which piece, who fetches from the origin, who is whose parent,
//! which parents a peer found bad, and the piece digests origin downloads reported. The gRPC
//! service and the swarm simulator (`shoal_core::sim`, for tests and benchmarks) drive it the
//! same way: call a method with the current time in milliseconds, act on what it returns. It
//! must not do I/O, spawn, read a clock or log; a restart loses everything and daemons'
//! announcements rebuild it.
//!
//! A task is dropped as soon as its last peer leaves (there is nobody left to serve it, and the
//! next peer goes back to source and reports the digests again); hosts are refreshed by any call
//! that names them and expire only through [`Scheduler::expire`].

mod config;
mod decide;
mod error;
mod host;
mod peers;
mod stats;
mod task;
mod types;

#[cfg(test)]
mod tests;
#[cfg(test)]
mod tests_pieces;
#[cfg(test)]
mod tests_sessions;

use std::collections::BTreeMap;

pub use config::Config;
pub use error::{HostError, MembershipError, PieceError, RegisterError};
pub use stats::{Counters, DecisionCounts, FailureCounts, PeerStats, TaskStats};
pub use types::{
    Candidate, Decision, DecisionKind, FailReason, HostId, HostInfo, Offer, ParentStatus, PieceRecorded, SessionId,
    Speaker, TaskId,
};

use crate::{Bitmap, PieceDigest, PieceLayout};
use decide::Ask;
use host::Hosts;
use task::Task;

/// The scheduler's whole state; see the [module docs](self).
#[derive(Debug, Default)]
pub struct Scheduler {
    config: Config,
    hosts: Hosts,
    tasks: BTreeMap<TaskId, Task>,
    counters: Counters,
    offers: Vec<Offer>,
}

impl Scheduler {
    /// An empty scheduler.
    pub fn new(config: Config) -> Self {
        Self { config, ..Self::default() }
    }

    /// The configuration in use.
    pub fn config(&self) -> &Config {
        &self.config
    }

    /// Adds or refreshes a host (its heartbeat), spoken for by `session`. A changed address,
    /// site, limit or load takes effect for the next decisions. Refused, changing nothing,
    /// when another live session announced the host id.
    pub fn announce_host(&mut self, now: u64, session: SessionId, info: HostInfo) -> Result<(), HostError> {
        self.hosts.announce(now, session, info)
    }

    /// Whether `session` may speak for `host` (register it for tasks): only the session that
    /// announced it may.
    pub fn speaker(&self, session: SessionId, host: &HostId) -> Speaker {
        self.hosts.speaker(session, host)
    }

    /// A session ended (its connection closed): another session may announce its hosts now.
    /// The hosts stay until they expire or are announced again.
    pub fn session_ended(&mut self, session: SessionId) {
        self.hosts.session_ended(session);
    }

    /// What a host last announced, if it is live.
    pub fn host(&self, id: &HostId) -> Option<&HostInfo> {
        self.hosts.get(id).map(|e| &e.info)
    }

    /// Every live host, by id (e.g. to bootstrap the daemons' DHT).
    pub fn hosts(&self) -> impl Iterator<Item = &HostInfo> {
        self.hosts.iter().map(|e| &e.info)
    }

    /// Removes a host at once (a daemon shutting down): its peers leave every task. True if it
    /// was known.
    pub fn remove_host(&mut self, id: &HostId) -> bool {
        for task in self.tasks.values_mut() {
            if task.remove_peer(&mut self.hosts, id) {
                self.counters.peers_left += 1;
            }
        }
        self.tasks.retain(|_, t| !t.peers.is_empty());
        self.hosts.remove(id).is_some()
    }

    /// Removes hosts not heard from for [`Config::host_ttl_ms`]; their peers leave every task,
    /// freeing their origin slots. Returns the expired hosts, by id. Call it periodically.
    pub fn expire(&mut self, now: u64) -> Vec<HostId> {
        let expired = self.hosts.expired(now, self.config.host_ttl_ms);
        for id in &expired {
            self.remove_host(id);
        }
        self.counters.hosts_expired += expired.len() as u64;
        expired
    }

    /// A host starts (or restarts) downloading a blob, holding the pieces in `have`.
    ///
    /// Creates the task on first use. A peer already registered keeps its origin slot and its
    /// bad parents, and its held pieces are replaced by `have`. A peer that holds every piece is
    /// recorded as done (a seed) and gets empty parents. Otherwise see [`Decision`]: the first
    /// peer of a site goes back to source, the others get parents (even ones with no piece yet)
    /// or wait.
    pub fn register(
        &mut self,
        now: u64,
        task: TaskId,
        host: &HostId,
        layout: PieceLayout,
        have: Bitmap,
    ) -> Result<Decision, RegisterError> {
        let slot = self.check_register(task, host, layout, &have)?;
        self.hosts.touch(now, host);
        let config = &self.config;
        let t = self.tasks.entry(task).or_insert_with(|| Task::new(layout));
        let full = have.is_full();
        t.upsert_peer(host, slot, have);
        if full {
            t.mark_done(&mut self.hosts, host);
            return Ok(Decision::Parents(Vec::new()));
        }
        let mut offers = Vec::new();
        let decision = decide::decide(t, &mut self.hosts, config, host, Ask::Register, &mut offers);
        self.counters.decisions.add(decision.kind());
        self.queue_offers(task, offers);
        Ok(decision)
    }

    fn check_register(
        &self,
        task: TaskId,
        host: &HostId,
        layout: PieceLayout,
        have: &Bitmap,
    ) -> Result<host::Slot, RegisterError> {
        let slot = self.hosts.slot(host).ok_or_else(|| RegisterError::UnknownHost(host.clone()))?;
        if !layout.piece_size.is_power_of_two()
            || layout.size.div_ceil(layout.piece_size) > u64::from(self.config.max_pieces)
        {
            return Err(RegisterError::BadLayout(layout));
        }
        if let Some(t) = self.tasks.get(&task) {
            if t.layout != layout {
                return Err(RegisterError::LayoutMismatch { task, existing: t.layout, got: layout });
            }
        }
        if have.len() != layout.count() {
            return Err(RegisterError::BitmapLength { expected: layout.count(), got: have.len() });
        }
        Ok(slot)
    }

    /// A peer stalled or lost its parents and asks again. It gets fresh candidates (never the
    /// ones it reported bad); with none, or after [`Config::reschedule_b2s_after`] asks without a
    /// new piece, it goes back to source even beyond its site's budget, so a pull never hangs.
    /// A peer already at the origin stays there; a done peer gets empty parents (not counted).
    pub fn reschedule(&mut self, now: u64, task: TaskId, host: &HostId) -> Result<Decision, MembershipError> {
        self.hosts.touch(now, host);
        let config = &self.config;
        let t = peer_task(&mut self.tasks, task, host)?;
        if let Some(peer) = t.peers.get_mut(host) {
            peer.reschedules = peer.reschedules.saturating_add(1);
        }
        let mut offers = Vec::new();
        let decision = decide::decide(t, &mut self.hosts, config, host, Ask::Reschedule, &mut offers);
        if !t.peers.get(host).is_some_and(|p| p.done) {
            self.counters.decisions.add(decision.kind());
        }
        self.queue_offers(task, offers);
        Ok(decision)
    }

    /// `host` proved the blob forged although every piece matched the digest table of `epoch`
    /// (see [`Scheduler::digest_epoch`]); it dropped its pieces from `parents`. Drops the table
    /// and distrusts its authors when it is still the current one, then decides for `host`
    /// again within the origin budget: back to source for the first reporter (the authors'
    /// origin slots are free now), parents for those who report the same table later.
    pub fn blob_mismatch(
        &mut self,
        now: u64,
        task: TaskId,
        host: &HostId,
        epoch: u32,
        parents: &[HostId],
    ) -> Result<Decision, MembershipError> {
        self.hosts.touch(now, host);
        let config = &self.config;
        let t = peer_task(&mut self.tasks, task, host)?;
        let dropped = t.blob_mismatch(&mut self.hosts, host, epoch, parents);
        if dropped {
            self.counters.forged_tables += 1;
        }
        // Within the site's origin budget: a reporter of an already dropped table waits for
        // the peer that went back to source, instead of each reporter fetching the blob again.
        let mut offers = Vec::new();
        let decision = decide::decide(t, &mut self.hosts, config, host, Ask::Register, &mut offers);
        if dropped && decision == Decision::BackToSource {
            // Everyone else holds the forged table too: the new origin peer is their parent.
            offers.extend(t.offer_to_all(&mut self.hosts, config, host));
        }
        self.counters.decisions.add(decision.kind());
        self.queue_offers(task, offers);
        Ok(decision)
    }

    /// The generation of a task's digest table (0 for an unknown task).
    pub fn digest_epoch(&self, task: TaskId) -> u32 {
        self.tasks.get(&task).map_or(0, |t| t.epoch)
    }

    fn queue_offers(&mut self, task: TaskId, offers: Vec<(HostId, Candidate)>) {
        self.counters.offers += offers.len() as u64;
        self.offers.extend(offers.into_iter().map(|(peer, parent)| Offer { task, peer, parent }));
    }

    /// Parents offered to peers that did not ask, since the last call (see [`Offer`]). Send each
    /// to its peer like a decision's parents. Call it after every
    /// [`register`](Self::register) and [`reschedule`](Self::reschedule); offers to a peer that
    /// left meanwhile can be dropped.
    pub fn take_offers(&mut self) -> Vec<Offer> {
        std::mem::take(&mut self.offers)
    }

    /// A peer holds piece `index`, verified, with sha256 `digest`; `from_origin` when it came
    /// from the origin registry.
    ///
    /// The first origin report of a piece, from a peer this scheduler sent back to source for
    /// the task, sets the digest children check against; a later report with another digest
    /// (origin or not) is refused with [`PieceError::DigestConflict`] and not recorded. Reports
    /// from parent downloads, and "origin" reports from peers the scheduler did not send back to
    /// source, never set the table. A new piece counts as progress (it resets the reschedule count).
    pub fn piece_finished(
        &mut self,
        now: u64,
        task: TaskId,
        host: &HostId,
        index: u32,
        digest: PieceDigest,
        from_origin: bool,
    ) -> Result<PieceRecorded, PieceError> {
        let t = self.tasks.get_mut(&task).ok_or(MembershipError::UnknownTask(task))?;
        match t.record_piece(task, host, index, digest, from_origin) {
            Ok((recorded, slot)) => {
                self.hosts.touch_at(now, slot);
                Ok(recorded)
            }
            Err(e) => {
                if matches!(e, PieceError::DigestConflict { .. }) {
                    self.counters.digest_conflicts += 1;
                }
                Err(e)
            }
        }
    }

    /// A peer failed to get piece `index` from `parent`. Counted per reason; a digest mismatch,
    /// or [`Config::bad_after_failures`] failures of that parent, mark it bad for this peer and
    /// task: it is dropped from the peer's parents and never offered to it again.
    pub fn piece_failed(
        &mut self,
        now: u64,
        task: TaskId,
        host: &HostId,
        index: u32,
        parent: &HostId,
        reason: FailReason,
    ) -> Result<ParentStatus, MembershipError> {
        let _ = index; // Kept in the signature for the service's logs; no rule depends on it.
        self.hosts.touch(now, host);
        let t = peer_task(&mut self.tasks, task, host)?;
        let (status, newly) = t.record_failure(&mut self.hosts, &self.config, host, parent, reason);
        self.counters.failures.add(reason);
        self.counters.parents_marked_bad += u64::from(newly);
        Ok(status)
    }

    /// A peer holds the whole blob, verified against its digest: it frees its origin slot,
    /// drops its parents and stays as a parent for others until it leaves. Repeating it is
    /// harmless.
    pub fn done(&mut self, now: u64, task: TaskId, host: &HostId) -> Result<(), MembershipError> {
        self.hosts.touch(now, host);
        let t = peer_task(&mut self.tasks, task, host)?;
        let again = t.peers.get(host).is_some_and(|p| p.done);
        t.mark_done(&mut self.hosts, host);
        self.counters.peers_done += u64::from(!again);
        Ok(())
    }

    /// A peer gave up on the blob: it leaves the task (its origin slot is freed).
    pub fn failed(&mut self, now: u64, task: TaskId, host: &HostId) -> Result<(), MembershipError> {
        self.remove_peer(now, task, host)?;
        self.counters.peers_failed += 1;
        Ok(())
    }

    /// A peer no longer holds or wants the blob (evicted, cancelled): it leaves the task.
    pub fn left(&mut self, now: u64, task: TaskId, host: &HostId) -> Result<(), MembershipError> {
        self.remove_peer(now, task, host)?;
        self.counters.peers_left += 1;
        Ok(())
    }

    fn remove_peer(&mut self, now: u64, task: TaskId, host: &HostId) -> Result<(), MembershipError> {
        self.hosts.touch(now, host);
        let t = peer_task(&mut self.tasks, task, host)?;
        t.remove_peer(&mut self.hosts, host);
        if t.peers.is_empty() {
            self.tasks.remove(&task);
        }
        Ok(())
    }

    /// Every digest the scheduler keeps for the task, by piece index (empty for an unknown
    /// task). Hand them to children with their parents.
    pub fn piece_digests(&self, task: TaskId) -> Vec<(u32, PieceDigest)> {
        self.tasks.get(&task).map_or_else(Vec::new, |t| t.digests.iter().map(|(&i, &d)| (i, d)).collect())
    }

    /// The digest a child must check piece `index` against; `None` when no origin download
    /// has reported it yet (the child must then not accept the piece from a parent).
    pub fn piece_digest(&self, task: TaskId, index: u32) -> Option<PieceDigest> {
        self.tasks.get(&task)?.digests.get(&index).copied()
    }

    /// The task's piece layout, for a daemon that cannot reach the origin to learn the size.
    pub fn layout(&self, task: TaskId) -> Option<PieceLayout> {
        self.tasks.get(&task).map(|t| t.layout)
    }

    /// A snapshot of one task.
    pub fn stats(&self, task: TaskId) -> Option<TaskStats> {
        self.tasks.get(&task).map(|t| t.stats(&self.config, task))
    }

    /// Snapshots of every task, by task id.
    pub fn stats_all(&self) -> Vec<TaskStats> {
        self.tasks.iter().map(|(&id, t)| t.stats(&self.config, id)).collect()
    }

    /// Scheduler-wide counters since start.
    pub fn counters(&self) -> &Counters {
        &self.counters
    }

    /// Asserts the structural invariants: links symmetric and between live peers, never to
    /// oneself or a bad parent, hosts' children counts equal to their links, no empty task.
    #[cfg(test)]
    pub(crate) fn check_invariants(&self) {
        let mut links: BTreeMap<&HostId, u32> = BTreeMap::new();
        for (id, t) in &self.tasks {
            assert!(!t.peers.is_empty(), "task {id} has no peer");
            for (h, p) in t.peers.iter() {
                assert_eq!(self.hosts.slot(h), Some(p.host), "peer {h} without host");
                assert!(!p.parents.contains(h), "{h} is its own parent");
                assert!(!(p.done && p.back_to_source), "{h} done and back to source");
                assert_eq!(p.pieces, p.have.count(), "piece count of {h}");
                let reports = t.mismatch_reports.get(h).map_or(0, |r| r.len() as u32);
                assert_eq!(p.mismatch_reports, reports, "mismatch reports of {h}");
                for parent in &p.parents {
                    assert!(!p.bad.contains(parent), "{h} linked to bad {parent}");
                    assert!(t.peers[parent].children.contains(h), "asymmetric link");
                    *links.entry(parent).or_default() += 1;
                }
                for child in &p.children {
                    assert!(t.peers[child].parents.contains(h), "asymmetric link");
                }
            }
        }
        for e in self.hosts.iter() {
            let want = links.get(&e.info.id).copied().unwrap_or(0);
            assert_eq!(e.children, want, "children count of {}", e.info.id);
        }
    }
}

/// The task, if `host` is one of its peers.
fn peer_task<'a>(
    tasks: &'a mut BTreeMap<TaskId, Task>,
    task: TaskId,
    host: &HostId,
) -> Result<&'a mut Task, MembershipError> {
    let t = tasks.get_mut(&task).ok_or(MembershipError::UnknownTask(task))?;
    if !t.peers.contains_key(host) {
        return Err(MembershipError::UnknownPeer { task, host: host.clone() });
    }
    Ok(t)
}

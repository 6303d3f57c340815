//! One task's state: its layout, its peers (pieces held, origin slot, parent and child links,
//! bad parents), the piece digest table and its counters.
//!
//! It keeps parent/child links symmetric and the hosts' children counts in step with them; it
//! does not choose parents (that is `decide`) and never reads a clock.

use std::collections::{BTreeMap, BTreeSet};

use super::host::{Hosts, Slot};
use super::peers::{Peer, Peers};
use super::stats::{DecisionCounts, FailureCounts, PeerStats, TaskStats};
use super::{Candidate, Config, FailReason, HostId, MembershipError, ParentStatus, PieceError, PieceRecorded, TaskId};
use crate::{Bitmap, PieceDigest, PieceLayout};

/// One blob being pulled by some peers.
#[derive(Debug, Clone)]
pub(super) struct Task {
    pub layout: PieceLayout,
    pub peers: Peers,
    /// The first digest an origin download reported, per piece.
    pub digests: BTreeMap<u32, PieceDigest>,
    /// Per parent, the peers that reported a digest mismatch from it (kept until the task is
    /// dropped, even if the parent leaves and comes back).
    pub mismatch_reports: BTreeMap<HostId, BTreeSet<HostId>>,
    /// Generation of `digests`: bumped whenever a table was found forged and dropped.
    pub epoch: u32,
    /// Peers whose reports are in `digests`.
    pub authors: BTreeSet<HostId>,
    /// Peers whose digest table a child proved forged: never parents, never trusted again
    /// for this task.
    pub distrusted: BTreeSet<HostId>,
    pub decisions: DecisionCounts,
    pub failures: FailureCounts,
    pub digest_conflicts: u64,
}

impl Task {
    pub fn new(layout: PieceLayout) -> Self {
        Self {
            layout,
            peers: Peers::default(),
            digests: BTreeMap::new(),
            mismatch_reports: BTreeMap::new(),
            epoch: 0,
            authors: BTreeSet::new(),
            distrusted: BTreeSet::new(),
            decisions: DecisionCounts::default(),
            failures: FailureCounts::default(),
            digest_conflicts: 0,
        }
    }

    /// Adds the peer, or replaces what an existing one holds (the daemon is the authority on
    /// its own store). Keeps its origin slot and bad parents.
    pub fn upsert_peer(&mut self, host: &HostId, slot: Slot, have: Bitmap) -> &mut Peer {
        let reports = self.mismatch_reports.get(host).map_or(0, |r| count(r.len()));
        let peer = self.peers.get_or_insert(host, || Peer::new(slot, Bitmap::new(0)));
        peer.mismatch_reports = reports;
        peer.host = slot;
        peer.pieces = have.count();
        peer.have = have;
        peer.done = false;
        peer
    }

    /// Marks the peer as holding the whole blob: it frees its origin slot and drops its parents.
    pub fn mark_done(&mut self, hosts: &mut Hosts, host: &HostId) {
        self.release_parents(hosts, host);
        if let Some(peer) = self.peers.get_mut(host) {
            peer.have = full_bitmap(self.layout.count());
            peer.pieces = self.layout.count();
            peer.done = true;
            peer.back_to_source = false;
        }
    }

    /// Links `child` to each of `parents`.
    pub fn link(&mut self, hosts: &mut Hosts, child: &HostId, parents: &[HostId]) {
        for parent in parents {
            let Some(p) = self.peers.get_mut(parent) else {
                continue;
            };
            if p.children.insert(child.clone()) {
                hosts.add_child(p.host);
            }
            if let Some(c) = self.peers.get_mut(child) {
                c.parents.insert(parent.clone());
            }
        }
    }

    /// Removes the link `child` → `parent`, if any.
    pub fn unlink(&mut self, hosts: &mut Hosts, child: &HostId, parent: &HostId) {
        if let Some(c) = self.peers.get_mut(child) {
            c.parents.remove(parent);
        }
        if let Some(p) = self.peers.get_mut(parent) {
            if p.children.remove(child) {
                hosts.remove_child(p.host);
            }
        }
    }

    /// Removes every link from `child` to its parents.
    pub fn release_parents(&mut self, hosts: &mut Hosts, child: &HostId) {
        let parents = match self.peers.get_mut(child) {
            Some(c) => std::mem::take(&mut c.parents),
            None => return,
        };
        for parent in &parents {
            self.unlink(hosts, child, parent);
        }
    }

    /// Removes the peer and every link to or from it. Its origin slot is freed with it.
    pub fn remove_peer(&mut self, hosts: &mut Hosts, host: &HostId) -> bool {
        self.release_parents(hosts, host);
        let Some(peer) = self.peers.remove(host) else {
            return false;
        };
        for child in &peer.children {
            if let Some(c) = self.peers.get_mut(child) {
                c.parents.remove(host);
            }
            hosts.remove_child(peer.host);
        }
        true
    }

    /// Peers of `site` holding an origin slot.
    #[cfg(test)]
    pub fn back_to_source_in(&self, hosts: &Hosts, site: super::host::SiteId) -> u32 {
        let n = self.peers.iter().filter(|(_, p)| p.back_to_source && hosts.site_at(p.host) == site).count();
        u32::try_from(n).unwrap_or(u32::MAX)
    }

    /// Whether enough peers reported `parent` for digest mismatches to stop offering it.
    pub fn quarantined(&self, config: &Config, parent: &HostId) -> bool {
        self.peers.get(parent).is_some_and(|p| config.quarantined(p.mismatch_reports))
    }

    /// Checks a finished piece against the digest table and records it as held. Returns how
    /// it was recorded and the peer's host slot.
    pub fn record_piece(
        &mut self,
        task: TaskId,
        host: &HostId,
        index: u32,
        digest: PieceDigest,
        from_origin: bool,
    ) -> Result<(PieceRecorded, Slot), PieceError> {
        let count = self.layout.count();
        let Some(peer) = self.peers.get_mut(host) else {
            let host = host.clone();
            return Err(MembershipError::UnknownPeer { task, host }.into());
        };
        if index >= count {
            return Err(PieceError::OutOfRange { index, count });
        }
        let recorded = match self.digests.get(&index) {
            Some(&kept) if kept != digest => {
                self.digest_conflicts += 1;
                return Err(PieceError::DigestConflict { index, kept, reported: digest });
            }
            Some(_) => PieceRecorded::Verified,
            // Only the peer the scheduler sent back to source hashed bytes from the origin.
            None if from_origin && peer.back_to_source && !self.distrusted.contains(host) => {
                self.digests.insert(index, digest);
                self.authors.insert(host.clone());
                PieceRecorded::DigestKept
            }
            None => PieceRecorded::Unverified,
        };
        if peer.have.set(index) {
            peer.pieces += 1;
            peer.reschedules = 0;
        }
        Ok((recorded, peer.host))
    }

    /// Counts a failure of `parent` reported by `child`; marks the parent bad (and unlinks it)
    /// on a digest mismatch or after `bad_after_failures` failures. The bool is true when the
    /// parent became bad just now.
    pub fn record_failure(
        &mut self,
        hosts: &mut Hosts,
        config: &Config,
        child: &HostId,
        parent: &HostId,
        reason: FailReason,
    ) -> (ParentStatus, bool) {
        self.failures.add(reason);
        if reason == FailReason::DigestMismatch && child != parent {
            let reporters = self.mismatch_reports.entry(parent.clone()).or_default();
            reporters.insert(child.clone());
            let reports = count(reporters.len());
            if let Some(p) = self.peers.get_mut(parent) {
                p.mismatch_reports = reports;
            }
        }
        let Some(peer) = self.peers.get_mut(child) else {
            return (ParentStatus::Usable, false);
        };
        let failures = peer.failures.entry(parent.clone()).or_insert(0);
        *failures += 1;
        let bad = reason == FailReason::DigestMismatch || *failures >= config.bad_after_failures;
        if !bad {
            return (ParentStatus::Usable, false);
        }
        let newly = peer.bad.insert(parent.clone());
        self.unlink(hosts, child, parent);
        (ParentStatus::Bad, newly)
    }

    /// A child found the blob forged although every piece matched the digest table of `epoch`:
    /// if that is the current table, drop it and distrust its authors (they lose their origin
    /// slots, so a new peer goes back to source). The child dropped its pieces from `parents`
    /// and holds none of them now. True when the table was dropped just now.
    pub fn blob_mismatch(&mut self, hosts: &mut Hosts, child: &HostId, epoch: u32, parents: &[HostId]) -> bool {
        self.failures.add(FailReason::DigestMismatch);
        // Parents that relayed the forged pieces cannot be told apart from their victims: they
        // are unlinked, not banned (pieces are checked against the new table from now on); the
        // table's authors are the ones distrusted.
        for parent in parents.iter().filter(|p| *p != child) {
            self.unlink(hosts, child, parent);
        }
        let count = self.layout.count();
        if let Some(c) = self.peers.get_mut(child) {
            c.have = Bitmap::new(count);
            c.pieces = 0;
        }
        if epoch != self.epoch || self.digests.is_empty() {
            self.forgive(child);
            return false;
        }
        self.digests.clear();
        self.epoch = self.epoch.wrapping_add(1);
        for author in std::mem::take(&mut self.authors) {
            if let Some(p) = self.peers.get_mut(&author) {
                p.back_to_source = false;
            }
            self.distrusted.insert(author);
        }
        // Parents reported bad may only have failed the forged table: forgive all but its authors.
        let distrusted = &self.distrusted;
        for peer in self.peers.values_mut() {
            peer.bad.retain(|h| distrusted.contains(h));
        }
        true
    }

    /// `child` checked pieces against a table that is dropped now (it reports the blob forged
    /// late): the parents it found corrupt meanwhile may be honest — the new origin peer's
    /// pieces fail the forged table. Its blames of anyone but the table's authors are withdrawn.
    fn forgive(&mut self, child: &HostId) {
        let distrusted = &self.distrusted;
        if let Some(c) = self.peers.get_mut(child) {
            c.bad.retain(|h| distrusted.contains(h));
            c.failures.retain(|h, _| distrusted.contains(h));
        }
        for (parent, reporters) in &mut self.mismatch_reports {
            if !distrusted.contains(parent) && reporters.remove(child) {
                if let Some(p) = self.peers.get_mut(parent) {
                    p.mismatch_reports = count(reporters.len());
                }
            }
        }
    }

    /// Offers `parent` to every other peer of its site still downloading (not done, not
    /// distrusted, not already its child), up to the children cap; links them. Returns the
    /// offers.
    pub fn offer_to_all(&mut self, hosts: &mut Hosts, config: &Config, parent: &HostId) -> Vec<(HostId, Candidate)> {
        let Some(p) = self.peers.get(parent) else { return Vec::new() };
        let Some(addr) = hosts.at(p.host).map(|h| h.info.addr.clone()) else { return Vec::new() };
        let offered = Candidate { host: parent.clone(), addr, have: p.have.clone() };
        let site = hosts.site_at(p.host);
        let children: Vec<HostId> = self
            .peers
            .iter()
            .filter(|(id, c)| *id != parent && !c.done && !self.distrusted.contains(*id) && !p.children.contains(*id))
            .filter(|(_, c)| hosts.site_at(c.host) == site)
            .map(|(id, _)| id.clone())
            .collect();
        let room = config.max_children_per_parent.saturating_sub(count(p.children.len())) as usize;
        let mut offers = Vec::new();
        for child in children.into_iter().take(room) {
            self.link(hosts, &child, std::slice::from_ref(parent));
            offers.push((child, offered.clone()));
        }
        offers
    }

    /// A snapshot for metrics.
    pub fn stats(&self, config: &Config, task: TaskId) -> TaskStats {
        let per_peer: Vec<PeerStats> = self
            .peers
            .iter_sorted()
            .map(|(id, p)| PeerStats {
                host: id.clone(),
                pieces: p.pieces,
                back_to_source: p.back_to_source,
                done: p.done,
                parents: count(p.parents.len()),
                children: count(p.children.len()),
                bad_parents: count(p.bad.len()),
                quarantined: self.quarantined(config, id),
            })
            .collect();
        TaskStats {
            task,
            size: self.layout.size,
            piece_size: self.layout.piece_size,
            pieces: self.layout.count(),
            digests_known: count(self.digests.len()),
            peers: count(per_peer.len()),
            done_peers: count(per_peer.iter().filter(|p| p.done).count()),
            back_to_source_peers: count(per_peer.iter().filter(|p| p.back_to_source).count()),
            per_peer,
            decisions: self.decisions,
            failures: self.failures,
            digest_conflicts: self.digest_conflicts,
        }
    }
}

/// A bitmap with every one of `len` pieces present.
pub(super) fn full_bitmap(len: u32) -> Bitmap {
    let mut b = Bitmap::new(len);
    for i in 0..len {
        b.set(i);
    }
    b
}

fn count(n: usize) -> u32 {
    u32::try_from(n).unwrap_or(u32::MAX)
}

//! The decision rules: the per-site origin budget and the ranking of candidate parents.
//!
//! Given one task, the host table and a peer asking, it answers back-to-source, parents or wait,
//! and records the answer (origin slot, parent links, counters). It must not look at other
//! tasks, read a clock or do I/O; everything it needs is passed in.

use std::cmp::Reverse;

use super::host::{Hosts, SiteId};
use super::task::Task;
use super::{Candidate, Config, Decision, HostId};

/// Why the peer is asking.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(super) enum Ask {
    /// First contact (or a re-registration): the origin budget is respected.
    Register,
    /// The peer stalled or its parents failed: it may be sent to the origin beyond the budget.
    Reschedule,
}

/// Decides for `child` (a peer of `task`) and records the decision.
///
/// In order:
/// 1. a done peer needs nobody: empty parents (not counted as a decision);
/// 2. a peer that already holds an origin slot keeps it: back to source;
/// 3. on reschedule, no candidate or `reschedule_b2s_after` asks without progress: back to
///    source, even beyond the site's budget;
/// 4. a free origin slot in the child's site, and either no candidate in the site or no done
///    peer in the site yet (the first peer of a site): back to source;
/// 5. candidates in the child's site: parents, best first; the child is offered back to those
///    that are still downloading (pushed to `offers` as (peer, new parent));
/// 6. no candidate in the site, the site's copy on its way (no free slot): wait (empty
///    parents) — a parent in another site would carry a second copy over the site's link;
/// 7. on reschedule (the site's copy cannot serve this child): candidates in other sites, a
///    copy beyond the budget like rule 3, before rule 3 sends it to the origin.
pub(super) fn decide(
    task: &mut Task,
    hosts: &mut Hosts,
    config: &Config,
    child: &HostId,
    ask: Ask,
    offers: &mut Vec<(HostId, Candidate)>,
) -> Decision {
    let Some(peer) = task.peers.get(child) else {
        return Decision::Parents(Vec::new());
    };
    let slot = peer.host;
    if peer.done {
        return Decision::Parents(Vec::new());
    }
    let (back_to_source, reschedules) = (peer.back_to_source, peer.reschedules);
    let decision = if back_to_source {
        Decision::BackToSource
    } else {
        task.release_parents(hosts, child);
        let site = hosts.site_at(slot);
        let Survey { candidates, in_site, back_to_source_in_site, done_in_site } =
            survey(task, hosts, config, child, site);
        let stuck = ask == Ask::Reschedule && (candidates.is_empty() || reschedules >= config.reschedule_b2s_after);
        let free_slot = back_to_source_in_site < config.back_to_source_per_site;
        let first_in_site = free_slot && (!in_site || !done_in_site);
        if stuck || first_in_site {
            if let Some(peer) = task.peers.get_mut(child) {
                peer.back_to_source = true;
            }
            Decision::BackToSource
        } else if !in_site && ask == Ask::Register {
            Decision::Parents(Vec::new())
        } else {
            let ids: Vec<HostId> = candidates.iter().map(|c| c.host.clone()).collect();
            task.link(hosts, child, &ids);
            offer_back(task, hosts, config, child, &ids, offers);
            Decision::Parents(candidates)
        }
    };
    task.decisions.add(decision.kind());
    decision
}

/// Offers `child` as a parent to each of its new `parents` that is still downloading (not done,
/// not at the origin), has room for parents, did not report it bad and is not its parent
/// already; links them. Stops when the child reaches the children cap.
fn offer_back(
    task: &mut Task,
    hosts: &mut Hosts,
    config: &Config,
    child: &HostId,
    parents: &[HostId],
    offers: &mut Vec<(HostId, Candidate)>,
) {
    let Some(me) = task.peers.get(child) else { return };
    let Some(host) = hosts.at(me.host) else { return };
    if config.max_parents == 0 || config.quarantined(me.mismatch_reports) {
        return;
    }
    let site = host.site;
    let offered = Candidate { host: child.clone(), addr: host.info.addr.clone(), have: me.have.clone() };
    for parent in parents {
        let children = task.peers.get(child).map_or(0, |c| c.children.len());
        if u32::try_from(children).unwrap_or(u32::MAX) >= config.max_children_per_parent {
            return;
        }
        let Some(p) = task.peers.get(parent) else { continue };
        // Never across sites: the offered child would feed the other site over both links.
        let wants = hosts.site_at(p.host) == site
            && !p.done
            && !p.back_to_source
            && p.parents.len() < config.max_parents
            && !p.parents.contains(child)
            && !p.bad.contains(child);
        if wants {
            task.link(hosts, parent, std::slice::from_ref(child));
            offers.push((parent.clone(), offered.clone()));
        }
    }
}

/// How a parent ranks for a child; smaller is better.
#[derive(Debug, PartialEq, Eq, PartialOrd, Ord)]
struct Rank<'a> {
    other_site: bool,
    mismatch_reports: u32,
    pieces: Reverse<u32>,
    not_done: bool,
    load: u32,
    upload_limit: Reverse<u64>,
    host: &'a HostId,
}

/// What one pass over a task's peers tells about a child's options.
pub(super) struct Survey {
    /// The best `candidate_parents` parents, best first: those of the child's site when it has
    /// any, else those of other sites.
    pub candidates: Vec<Candidate>,
    /// Whether `candidates` are in the child's site.
    pub in_site: bool,
    /// Peers of the child's site holding an origin slot.
    pub back_to_source_in_site: u32,
    /// Whether a peer of the child's site holds the whole blob.
    pub done_in_site: bool,
}

/// The child's site's origin slots in use, and its best `candidate_parents` parents.
///
/// Never the child itself, a parent it reported bad, a parent quarantined in the task, or a
/// host at the children cap; never a parent in another site when one in the child's site is
/// left. Ranked by: same site first; fewest digest-mismatch reports from
/// other peers (a suspect ranks last before it is quarantined); most pieces; done before
/// partial; lighter load; higher upload limit (0 is unlimited); host id.
pub(super) fn survey(task: &Task, hosts: &Hosts, config: &Config, child: &HostId, site: SiteId) -> Survey {
    let mut survey = Survey { candidates: Vec::new(), in_site: false, back_to_source_in_site: 0, done_in_site: false };
    let Some(me) = task.peers.get(child) else {
        return survey;
    };
    let k = config.candidate_parents;
    let mut best: Vec<Rank<'_>> = Vec::with_capacity(k.min(task.peers.len()) + 1);
    for (id, peer) in task.peers.iter() {
        let Some(host) = hosts.at(peer.host) else {
            continue;
        };
        if task.distrusted.contains(id) {
            continue;
        }
        let other_site = host.site != site;
        if !other_site {
            survey.back_to_source_in_site += u32::from(peer.back_to_source);
            survey.done_in_site |= peer.done;
        }
        if peer.host == me.host || (!me.bad.is_empty() && me.bad.contains(id)) {
            continue;
        }
        // The cap counts this task's children (a host seeding several blobs at once serves each
        // blob's children); announced uploads still count. Ranking uses the host-wide load.
        let load = host.load();
        let task_load = host.info.load.max(u32::try_from(peer.children.len()).unwrap_or(u32::MAX));
        let mismatch_reports = peer.mismatch_reports;
        let quarantined = config.quarantined(mismatch_reports);
        if task_load >= config.max_children_per_parent || quarantined {
            continue;
        }
        let rank = Rank {
            other_site,
            mismatch_reports,
            pieces: Reverse(peer.pieces),
            not_done: !peer.done,
            load,
            upload_limit: Reverse(match host.info.upload_limit {
                0 => u64::MAX,
                limit => limit,
            }),
            host: id,
        };
        // Keep the best k, sorted: most peers are rejected by one comparison with the worst.
        if best.len() < k || best.last().is_some_and(|worst| rank < *worst) {
            let at = best.partition_point(|b| *b < rank);
            best.insert(at, rank);
            best.truncate(k);
        }
    }
    survey.in_site = best.first().is_some_and(|r| !r.other_site);
    if survey.in_site {
        best.retain(|r| !r.other_site);
    }
    survey.candidates = best
        .into_iter()
        .filter_map(|r| {
            let peer = task.peers.get(r.host)?;
            let host = hosts.at(peer.host)?;
            Some(Candidate { host: r.host.clone(), addr: host.info.addr.clone(), have: peer.have.clone() })
        })
        .collect();
    survey
}

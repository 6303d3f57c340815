//! Unit tests of the decision rules: origin budget per site, parent ranking and filtering,
//! waiting and rescheduling. Shared helpers for the other test modules live here too.

use super::*;
use crate::Digest;

pub(super) const MIB: u64 = 1 << 20;
pub(super) const PIECES: u32 = 10;

pub(super) fn layout() -> PieceLayout {
    PieceLayout { size: u64::from(PIECES) * MIB, piece_size: MIB }
}

pub(super) fn task() -> TaskId {
    Digest::of(b"blob")
}

/// The session every test host is announced by.
pub(super) const SESSION: SessionId = SessionId(1);

pub(super) fn h(id: &str) -> HostId {
    HostId::from(id)
}

pub(super) fn info(id: &str, site: &str) -> HostInfo {
    HostInfo {
        id: h(id),
        addr: format!("10.0.0.1:{}", 4000 + id.len()),
        site: site.to_owned(),
        upload_limit: 0,
        load: 0,
    }
}

pub(super) fn bits(set: &[u32]) -> Bitmap {
    let mut b = Bitmap::new(PIECES);
    for &i in set {
        b.set(i);
    }
    b
}

/// A scheduler with the given hosts as `(id, site)`, all announced at time 0.
pub(super) fn sched(config: Config, hosts: &[(&str, &str)]) -> Scheduler {
    let mut s = Scheduler::new(config);
    for (id, site) in hosts {
        s.announce_host(0, SESSION, info(id, site)).unwrap();
    }
    s
}

pub(super) fn reg(s: &mut Scheduler, id: &str) -> Decision {
    reg_with(s, id, &[])
}

pub(super) fn reg_with(s: &mut Scheduler, id: &str, have: &[u32]) -> Decision {
    let d = s.register(1, task(), &h(id), layout(), bits(have)).unwrap();
    s.check_invariants();
    d
}

pub(super) fn names(d: &Decision) -> Vec<&str> {
    d.parents().iter().map(|c| c.host.as_str()).collect()
}

#[test]
fn first_peer_of_a_site_goes_to_origin_the_others_get_it_as_parent() {
    let mut s = sched(Config::default(), &[("a1", "A"), ("a2", "A"), ("a3", "A")]);
    assert_eq!(reg(&mut s, "a1"), Decision::BackToSource);
    // a1 has no piece yet: it is offered anyway, pieces land while the child waits.
    let d = reg(&mut s, "a2");
    assert_eq!(names(&d), vec!["a1"]);
    assert_eq!(d.parents()[0].addr, info("a1", "A").addr);
    // Equal pieces: the lighter loaded a2 (no child yet) ranks before a1 (one child).
    assert_eq!(names(&reg(&mut s, "a3")), vec!["a2", "a1"]);
    let st = s.stats(task()).unwrap();
    assert_eq!(st.back_to_source_peers, 1);
    assert_eq!(st.decisions.back_to_source, 1);
    assert_eq!(st.decisions.parents, 2);
}

#[test]
fn two_sites_get_one_origin_fetch_each() {
    let hosts = [("a1", "A"), ("b1", "B"), ("a2", "A"), ("b2", "B")];
    let mut s = sched(Config::default(), &hosts);
    assert_eq!(reg(&mut s, "a1"), Decision::BackToSource);
    // a1 is a candidate for b1, but site B has a free slot and no done peer: one copy per site.
    assert_eq!(reg(&mut s, "b1"), Decision::BackToSource);
    // Never a parent from the other site while the child's own site has one: each site's
    // link carries one copy.
    assert_eq!(names(&reg(&mut s, "a2")), vec!["a1"]);
    assert_eq!(names(&reg(&mut s, "b2")), vec!["b1"]);
    assert_eq!(s.stats(task()).unwrap().back_to_source_peers, 2);
    // Nor is a child offered back across sites.
    assert!(s.take_offers().iter().all(|o| o.peer.as_str().starts_with(&o.parent.host.as_str()[..1])));
}

#[test]
fn a_site_whose_copy_cannot_serve_waits_and_crosses_sites_only_when_rescheduled() {
    let config = Config { max_children_per_parent: 1, ..Config::default() };
    let hosts = [("a1", "A"), ("b1", "B"), ("b2", "B"), ("b3", "B")];
    let mut s = sched(config, &hosts);
    reg_with(&mut s, "a1", &[0, 1, 2, 3, 4, 5, 6, 7, 8]);
    assert_eq!(reg(&mut s, "b1"), Decision::BackToSource);
    assert_eq!(names(&reg(&mut s, "b2")), vec!["b1"]);
    // b1 is at its cap (one child): b2 is b3's only parent in B; a1, with nine pieces, is
    // not offered.
    assert_eq!(names(&reg(&mut s, "b3")), vec!["b2"]);
    // b3 reports b2 bad: no parent in B can serve it, and B's copy is on its way (b1 holds the
    // origin slot). It waits rather than pull a second copy over B's link from a1...
    s.piece_failed(2, task(), &h("b3"), 0, &h("b2"), FailReason::DigestMismatch).unwrap();
    assert_eq!(reg(&mut s, "b3"), Decision::Parents(Vec::new()));
    // ...until it asks again: then a1, across sites, before the origin.
    assert_eq!(names(&s.reschedule(3, task(), &h("b3")).unwrap()), vec!["a1"]);
    s.check_invariants();
}

#[test]
fn budget_of_two_sends_two_peers_per_site_to_the_origin() {
    let config = Config { back_to_source_per_site: 2, ..Config::default() };
    let mut s = sched(config, &[("a1", "A"), ("a2", "A"), ("a3", "A")]);
    assert_eq!(reg(&mut s, "a1"), Decision::BackToSource);
    assert_eq!(reg(&mut s, "a2"), Decision::BackToSource);
    assert_eq!(names(&reg(&mut s, "a3")), vec!["a1", "a2"]);
}

#[test]
fn a_site_with_a_done_peer_uses_it_even_with_a_free_slot() {
    let mut s = sched(Config::default(), &[("a1", "A"), ("a2", "A")]);
    assert_eq!(reg(&mut s, "a1"), Decision::BackToSource);
    s.done(2, task(), &h("a1")).unwrap();
    assert_eq!(s.stats(task()).unwrap().back_to_source_peers, 0);
    assert_eq!(names(&reg(&mut s, "a2")), vec!["a1"]);
}

#[test]
fn slot_is_freed_when_the_origin_peer_fails_or_leaves() {
    for how in ["failed", "left"] {
        let mut s = sched(Config::default(), &[("a1", "A"), ("a2", "A"), ("a3", "A")]);
        assert_eq!(reg(&mut s, "a1"), Decision::BackToSource);
        assert_eq!(names(&reg(&mut s, "a2")), vec!["a1"]);
        match how {
            "failed" => s.failed(2, task(), &h("a1")).unwrap(),
            _ => s.left(2, task(), &h("a1")).unwrap(),
        }
        s.check_invariants();
        assert_eq!(reg(&mut s, "a3"), Decision::BackToSource, "{how}");
    }
}

#[test]
fn never_offers_the_peer_itself() {
    let mut s = sched(Config::default(), &[("a1", "A"), ("a2", "A")]);
    assert_eq!(reg_with(&mut s, "a1", &[0, 1, 2]), Decision::BackToSource);
    // Re-registering keeps the origin slot instead of offering a1 to itself.
    assert_eq!(reg_with(&mut s, "a1", &[0, 1, 2, 3]), Decision::BackToSource);
    reg(&mut s, "a2");
    for _ in 0..3 {
        let d = s.reschedule(3, task(), &h("a2")).unwrap();
        assert!(!names(&d).contains(&"a2"));
    }
    s.check_invariants();
}

#[test]
fn never_offers_a_parent_reported_bad() {
    let hosts = [("a1", "A"), ("a2", "A"), ("a3", "A")];
    let mut s = sched(Config::default(), &hosts);
    reg(&mut s, "a1");
    reg_with(&mut s, "a2", &[0, 1]);
    assert_eq!(names(&reg(&mut s, "a3")), vec!["a2", "a1"]);
    let st = s.piece_failed(3, task(), &h("a3"), 0, &h("a2"), FailReason::DigestMismatch).unwrap();
    assert_eq!(st, ParentStatus::Bad);
    s.check_invariants();
    assert_eq!(names(&s.reschedule(4, task(), &h("a3")).unwrap()), vec!["a1"]);
    // Even re-registering does not forget it.
    assert_eq!(names(&reg(&mut s, "a3")), vec!["a1"]);
    assert_eq!(s.counters().parents_marked_bad, 1);
}

#[test]
fn repeated_failures_mark_a_parent_bad() {
    let mut s = sched(Config::default(), &[("a1", "A"), ("a2", "A")]);
    reg(&mut s, "a1");
    reg(&mut s, "a2");
    let fail = |s: &mut Scheduler, reason| s.piece_failed(3, task(), &h("a2"), 0, &h("a1"), reason).unwrap();
    assert_eq!(fail(&mut s, FailReason::Timeout), ParentStatus::Usable);
    assert_eq!(fail(&mut s, FailReason::Io), ParentStatus::Usable);
    assert_eq!(fail(&mut s, FailReason::Refused), ParentStatus::Bad);
    s.check_invariants();
    let st = s.stats(task()).unwrap();
    assert_eq!((st.failures.timeout, st.failures.io, st.failures.refused), (1, 1, 1));
    assert_eq!(s.counters().failures.get(FailReason::Refused), 1);
    assert_eq!(st.per_peer[1].bad_parents, 1);
    assert_eq!(st.per_peer[1].parents, 0);
}

#[test]
fn a_parent_at_the_children_cap_is_not_offered() {
    let config = Config { max_children_per_parent: 2, ..Config::default() };
    let hosts = [("a1", "A"), ("a2", "A"), ("a3", "A"), ("a4", "A")];
    let mut s = sched(config, &hosts);
    reg_with(&mut s, "a1", &[0, 1, 2]);
    assert_eq!(names(&reg(&mut s, "a2")), vec!["a1"]);
    assert_eq!(names(&reg(&mut s, "a3")), vec!["a1", "a2"]);
    // a1 has two children now; a2 and a3 have one each (a3 was offered back to a2).
    assert_eq!(names(&reg(&mut s, "a4")), vec!["a2", "a3"]);
    // A child that finishes frees its parents' capacity.
    s.done(2, task(), &h("a2")).unwrap();
    assert_eq!(names(&s.reschedule(3, task(), &h("a4")).unwrap()), vec!["a2", "a1", "a3"]);
}

#[test]
fn announced_load_counts_against_the_cap() {
    let mut s = sched(Config::default(), &[("a1", "A"), ("a2", "A"), ("a3", "A")]);
    reg(&mut s, "a1");
    reg(&mut s, "a2");
    s.announce_host(2, SESSION, HostInfo { load: 8, ..info("a1", "A") }).unwrap();
    assert_eq!(names(&reg(&mut s, "a3")), vec!["a2"]);
}

#[test]
fn same_site_parents_come_first() {
    let hosts = [("a1", "A"), ("b1", "B"), ("b2", "B"), ("b3", "B")];
    let mut s = sched(Config::default(), &hosts);
    reg_with(&mut s, "a1", &[0, 1, 2, 3, 4, 5, 6, 7, 8]);
    reg(&mut s, "b1");
    reg_with(&mut s, "b2", &[0]);
    // b2 has one piece, a1 nine: b2 still ranks first, being in B; a1 is not offered at all.
    assert_eq!(names(&reg(&mut s, "b3")), vec!["b2", "b1"]);
}

#[test]
fn ranks_by_pieces_then_done_then_load_then_limit_then_id() {
    let hosts = [("p1", "A"), ("p2", "A"), ("p3", "A"), ("p4", "A"), ("p5", "A"), ("p6", "A")];
    let config = Config { candidate_parents: 10, ..Config::default() };
    let mut s = sched(config, &hosts);
    let all: Vec<u32> = (0..PIECES).collect();
    reg_with(&mut s, "p1", &[0]); // first of the site: origin
    reg_with(&mut s, "p2", &[0, 1]);
    reg_with(&mut s, "p3", &all); // done (a seed)
    reg_with(&mut s, "p4", &[0, 1]);
    s.announce_host(2, SESSION, HostInfo { load: 3, ..info("p2", "A") }).unwrap();
    // p5 holds all pieces but has not reported done: ranks after the done seed p3.
    s.register(3, task(), &h("p5"), layout(), bits(&all[..9])).unwrap();
    s.piece_finished(3, task(), &h("p5"), 9, PieceDigest::of(b"x"), false).unwrap();
    let d = reg(&mut s, "p6");
    // p4 (load 1: p5's parent) vs p2 (announced load 3): lighter load first.
    assert_eq!(names(&d), vec!["p3", "p5", "p4", "p2", "p1"]);
}

#[test]
fn upload_limit_and_host_id_break_ties() {
    let hosts = [("x", "A"), ("c", "A"), ("b", "A"), ("a", "A"), ("z", "A")];
    let mut s = sched(Config::default(), &hosts);
    reg(&mut s, "x");
    s.announce_host(1, SESSION, HostInfo { upload_limit: 10, ..info("a", "A") }).unwrap();
    let all: Vec<u32> = (0..PIECES).collect();
    for id in ["c", "b", "a"] {
        reg_with(&mut s, id, &all); // seeds: same pieces, no load
    }
    // c and b unlimited (0) rank above a (10 B/s); b before c by id; x has no piece.
    assert_eq!(names(&reg(&mut s, "z")), vec!["b", "c", "a", "x"]);
}

#[test]
fn offers_at_most_candidate_parents() {
    let hosts: Vec<(String, &str)> = (0..10).map(|i| (format!("p{i}"), "A")).collect();
    let hosts: Vec<(&str, &str)> = hosts.iter().map(|(a, b)| (a.as_str(), *b)).collect();
    let mut s = sched(Config::default(), &hosts);
    for (id, _) in &hosts[..9] {
        reg(&mut s, id);
    }
    assert_eq!(reg(&mut s, "p9").parents().len(), 4);
}

#[test]
fn waits_when_nobody_can_serve_and_the_budget_is_used() {
    let config = Config { max_children_per_parent: 1, ..Config::default() };
    let mut s = sched(config, &[("a1", "A"), ("a2", "A"), ("a3", "A")]);
    assert_eq!(reg(&mut s, "a1"), Decision::BackToSource);
    assert_eq!(names(&reg(&mut s, "a2")), vec!["a1"]);
    s.announce_host(1, SESSION, HostInfo { load: 1, ..info("a2", "A") }).unwrap();
    let d = reg(&mut s, "a3");
    assert_eq!(d, Decision::Parents(vec![]));
    assert_eq!(d.kind(), DecisionKind::Wait);
    assert_eq!(s.counters().decisions.wait, 1);
}

#[test]
fn reschedule_without_candidates_goes_to_origin_beyond_the_budget() {
    let config = Config { max_children_per_parent: 1, ..Config::default() };
    let mut s = sched(config, &[("a1", "A"), ("a2", "A"), ("a3", "A")]);
    reg(&mut s, "a1");
    reg(&mut s, "a2");
    s.announce_host(1, SESSION, HostInfo { load: 1, ..info("a2", "A") }).unwrap();
    assert_eq!(reg(&mut s, "a3").kind(), DecisionKind::Wait);
    assert_eq!(s.reschedule(5, task(), &h("a3")).unwrap(), Decision::BackToSource);
    assert_eq!(s.stats(task()).unwrap().back_to_source_peers, 2);
    s.check_invariants();
}

#[test]
fn reschedule_goes_to_origin_after_asks_without_progress() {
    let hosts = [("a1", "A"), ("a2", "A"), ("a3", "A")];
    let mut s = sched(Config::default(), &hosts);
    reg(&mut s, "a1");
    reg(&mut s, "a2");
    reg(&mut s, "a3");
    let ask = |s: &mut Scheduler| s.reschedule(5, task(), &h("a3")).unwrap().kind();
    assert_eq!(ask(&mut s), DecisionKind::Parents);
    // A new piece is progress: the count starts again.
    s.piece_finished(6, task(), &h("a3"), 0, PieceDigest::of(b"0"), false).unwrap();
    assert_eq!(ask(&mut s), DecisionKind::Parents);
    assert_eq!(ask(&mut s), DecisionKind::BackToSource);
    // Once at the origin, it stays there.
    assert_eq!(ask(&mut s), DecisionKind::BackToSource);
    s.check_invariants();
}

#[test]
fn reschedule_takes_a_slot_freed_by_a_failed_origin_peer() {
    let mut s = sched(Config::default(), &[("a1", "A"), ("a2", "A"), ("a3", "A")]);
    reg(&mut s, "a1");
    reg(&mut s, "a2");
    reg(&mut s, "a3");
    s.failed(2, task(), &h("a1")).unwrap();
    // Candidates exist (a3) but no peer of A has the blob and the slot is free.
    assert_eq!(s.reschedule(3, task(), &h("a2")).unwrap(), Decision::BackToSource);
    assert_eq!(names(&s.reschedule(3, task(), &h("a3")).unwrap()), vec!["a2"]);
}

#[test]
fn a_peer_holding_every_piece_registers_as_a_seed() {
    let mut s = sched(Config::default(), &[("a1", "A"), ("a2", "A")]);
    let all: Vec<u32> = (0..PIECES).collect();
    assert_eq!(reg_with(&mut s, "a1", &all), Decision::Parents(vec![]));
    let st = s.stats(task()).unwrap();
    assert_eq!((st.done_peers, st.back_to_source_peers), (1, 0));
    // Not counted as a decision (it asked for nothing).
    assert_eq!(s.counters().decisions, DecisionCounts::default());
    let d = reg(&mut s, "a2");
    assert_eq!(names(&d), vec!["a1"]);
    assert!(d.parents()[0].have.is_full());
}

#[test]
fn refuses_bad_registrations() {
    let mut s = sched(Config::default(), &[("a1", "A")]);
    let unknown = s.register(0, task(), &h("zz"), layout(), bits(&[]));
    assert_eq!(unknown, Err(RegisterError::UnknownHost(h("zz"))));
    let short = s.register(0, task(), &h("a1"), layout(), Bitmap::new(3));
    assert!(matches!(short, Err(RegisterError::BitmapLength { expected: 10, got: 3 })));
    let odd = PieceLayout { size: 10, piece_size: 3 };
    let bad = s.register(0, task(), &h("a1"), odd, Bitmap::new(4));
    assert_eq!(bad, Err(RegisterError::BadLayout(odd)));
    let zero = PieceLayout { size: 10, piece_size: 0 };
    assert!(s.register(0, task(), &h("a1"), zero, Bitmap::new(0)).is_err());
    let huge = PieceLayout { size: u64::MAX, piece_size: 1 };
    assert!(s.register(0, task(), &h("a1"), huge, Bitmap::new(0)).is_err());
    // Nothing was created by the refused calls.
    assert!(s.stats_all().is_empty());
    reg(&mut s, "a1");
    let other = PieceLayout::for_size(3 * MIB);
    let mismatch = s.register(0, task(), &h("a1"), other, Bitmap::new(3));
    assert!(matches!(mismatch, Err(RegisterError::LayoutMismatch { .. })));
    let unknown_task = s.reschedule(0, Digest::of(b"other"), &h("a1"));
    assert!(matches!(unknown_task, Err(MembershipError::UnknownTask(_))));
}

#[test]
fn a_parent_caught_by_several_peers_ranks_last_then_is_quarantined() {
    let hosts = [("a1", "A"), ("a2", "A"), ("a3", "A"), ("a4", "A"), ("a5", "A"), ("a6", "A")];
    let mut s = sched(Config::default(), &hosts);
    reg(&mut s, "a1");
    reg_with(&mut s, "a2", &[0, 1, 2, 3]);
    for (n, id) in ["a3", "a4", "a5"].into_iter().enumerate() {
        let d = reg(&mut s, id);
        // The richest parent, a2, ranks first until a peer catches it, then last.
        let expected = if n == 0 { names(&d).first().copied() } else { names(&d).last().copied() };
        assert_eq!(expected, Some("a2"), "{id}: {:?}", names(&d));
        let st = s.piece_failed(2, task(), &h(id), 0, &h("a2"), FailReason::DigestMismatch).unwrap();
        assert_eq!(st, ParentStatus::Bad);
        let stats = s.stats(task()).unwrap();
        let a2 = stats.per_peer.iter().find(|p| p.host == h("a2")).unwrap();
        assert_eq!(a2.quarantined, n == 2, "after {} reports", n + 1);
    }
    // Three distinct peers caught it: nobody is offered a2 any more, even after it re-registers.
    assert!(!names(&reg(&mut s, "a6")).contains(&"a2"));
    reg_with(&mut s, "a2", &[0, 1, 2, 3, 4]);
    assert!(!names(&s.reschedule(3, task(), &h("a6")).unwrap()).contains(&"a2"));
    // Every report counts for metrics.
    assert_eq!(s.counters().failures.digest_mismatch, 3);
}

#[test]
fn newcomers_are_offered_back_to_their_downloading_parents() {
    let hosts = [("a1", "A"), ("a2", "A"), ("a3", "A"), ("a4", "A")];
    let mut s = sched(Config::default(), &hosts);
    assert_eq!(reg(&mut s, "a1"), Decision::BackToSource);
    assert_eq!(names(&reg(&mut s, "a2")), vec!["a1"]);
    // a1 fetches from the origin: it needs no parent, nothing is offered.
    assert!(s.take_offers().is_empty());
    assert_eq!(names(&reg(&mut s, "a3")), vec!["a2", "a1"]);
    // a2 registered before a3 existed: a3 is offered back to it, and only to it.
    let offers = s.take_offers();
    assert_eq!(offers.len(), 1);
    assert_eq!((offers[0].task, offers[0].peer.as_str(), offers[0].parent.host.as_str()), (task(), "a2", "a3"));
    assert_eq!(offers[0].parent.addr, info("a3", "A").addr);
    assert!(s.take_offers().is_empty(), "drained");
    let st = s.stats(task()).unwrap();
    let a2 = st.per_peer.iter().find(|p| p.host.as_str() == "a2").unwrap();
    let a3 = st.per_peer.iter().find(|p| p.host.as_str() == "a3").unwrap();
    assert_eq!((a2.parents, a3.children), (2, 1));
    // A done parent is not offered anyone.
    s.done(2, task(), &h("a2")).unwrap();
    reg(&mut s, "a4");
    let to: Vec<String> = s.take_offers().iter().map(|o| o.peer.as_str().to_owned()).collect();
    assert!(!to.contains(&"a2".to_owned()) && !to.contains(&"a1".to_owned()), "{to:?}");
    assert_eq!(s.counters().offers, 2);
}

#[test]
fn offers_respect_bad_parents_and_the_parent_limit() {
    let hosts = [("a1", "A"), ("a2", "A"), ("a3", "A"), ("a4", "A")];
    let config = Config { max_parents: 2, ..Config::default() };
    let mut s = sched(config, &hosts);
    reg(&mut s, "a1");
    reg(&mut s, "a2"); // parents: a1
    reg(&mut s, "a3"); // parents a2, a1; offered to a2 (now at 2 parents)
    assert_eq!(s.take_offers().len(), 1);
    reg(&mut s, "a4"); // a2 and a3 hold two parents each: no offer
    assert!(s.take_offers().is_empty());
    let mut s = sched(Config::default(), &hosts);
    for id in ["a1", "a2", "a3"] {
        reg(&mut s, id);
    }
    s.take_offers();
    reg(&mut s, "a4"); // with room, a4 is offered to both
    let mut to: Vec<String> = s.take_offers().iter().map(|o| o.peer.as_str().to_owned()).collect();
    to.sort();
    assert_eq!(to, vec!["a2", "a3"]);
    // a peer that found a newcomer bad is never offered it.
    let mut s = sched(Config::default(), &hosts);
    reg(&mut s, "a1");
    reg(&mut s, "a2");
    reg(&mut s, "a3");
    s.take_offers();
    let st = s.piece_failed(2, task(), &h("a2"), 0, &h("a3"), FailReason::DigestMismatch).unwrap();
    assert_eq!(st, ParentStatus::Bad);
    s.left(3, task(), &h("a3")).unwrap();
    reg(&mut s, "a3");
    assert!(s.take_offers().iter().all(|o| o.peer.as_str() != "a2"));
    s.check_invariants();
    // Turned off.
    let mut s = sched(Config { max_parents: 0, ..Config::default() }, &hosts);
    for id in ["a1", "a2", "a3", "a4"] {
        reg(&mut s, id);
    }
    assert!(s.take_offers().is_empty());
}

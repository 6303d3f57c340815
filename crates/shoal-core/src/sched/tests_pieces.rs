//! Unit tests of piece reports (the digest table), the peer and host lifecycle (done, failed,
//! left, expiry, task drop), stats, and a property test of random call sequences.

use proptest::collection::vec;
use proptest::prelude::*;

use super::tests::{bits, h, info, layout, reg, reg_with, sched, task, PIECES, SESSION};
use super::*;
use crate::Digest;

fn finished(
    s: &mut Scheduler,
    id: &str,
    index: u32,
    data: &[u8],
    from_origin: bool,
) -> Result<PieceRecorded, PieceError> {
    let r = s.piece_finished(5, task(), &h(id), index, PieceDigest::of(data), from_origin);
    s.check_invariants();
    r
}

#[test]
fn the_first_origin_digest_wins_and_conflicts_are_refused() {
    let mut s = sched(Config::default(), &[("a1", "A"), ("a2", "A"), ("b1", "B")]);
    reg(&mut s, "a1");
    reg(&mut s, "a2");
    reg(&mut s, "b1");
    assert_eq!(finished(&mut s, "a1", 0, b"p0", true), Ok(PieceRecorded::DigestKept));
    assert_eq!(finished(&mut s, "a2", 0, b"p0", false), Ok(PieceRecorded::Verified));
    // Another origin peer (site B) reports a different digest: refused, table unchanged.
    let conflict = finished(&mut s, "b1", 0, b"evil", true);
    assert_eq!(
        conflict,
        Err(PieceError::DigestConflict { index: 0, kept: PieceDigest::of(b"p0"), reported: PieceDigest::of(b"evil") })
    );
    assert_eq!(s.piece_digest(task(), 0), Some(PieceDigest::of(b"p0")));
    assert_eq!(s.piece_digests(task()), vec![(0, PieceDigest::of(b"p0"))]);
    // The refused piece is not offered by b1.
    let st = s.stats(task()).unwrap();
    let b1 = st.per_peer.iter().find(|p| p.host == h("b1")).unwrap();
    assert_eq!(b1.pieces, 0);
    assert_eq!((st.digest_conflicts, s.counters().digest_conflicts), (1, 1));
    // The same digest from origin again is fine.
    assert_eq!(finished(&mut s, "b1", 0, b"p0", true), Ok(PieceRecorded::Verified));
}

#[test]
fn parent_downloads_never_set_the_digest_table() {
    let mut s = sched(Config::default(), &[("a1", "A"), ("a2", "A")]);
    reg(&mut s, "a1");
    reg(&mut s, "a2");
    assert_eq!(finished(&mut s, "a2", 3, b"claim", false), Ok(PieceRecorded::Unverified));
    assert_eq!(s.piece_digest(task(), 3), None);
    assert!(s.piece_digests(task()).is_empty());
    // The origin's digest is kept even though a parent claimed another one first.
    assert_eq!(finished(&mut s, "a1", 3, b"real", true), Ok(PieceRecorded::DigestKept));
    assert!(matches!(finished(&mut s, "a2", 3, b"claim", false), Err(PieceError::DigestConflict { .. })));
    assert_eq!(s.stats(task()).unwrap().digests_known, 1);
}

#[test]
fn piece_reports_are_checked() {
    let mut s = sched(Config::default(), &[("a1", "A"), ("a2", "A")]);
    reg(&mut s, "a1");
    assert_eq!(
        finished(&mut s, "a1", PIECES, b"x", true),
        Err(PieceError::OutOfRange { index: PIECES, count: PIECES })
    );
    assert_eq!(
        finished(&mut s, "a2", 0, b"x", true),
        Err(PieceError::Membership(MembershipError::UnknownPeer { task: task(), host: h("a2") }))
    );
    let other = s.done(0, Digest::of(b"nope"), &h("a1"));
    assert_eq!(other, Err(MembershipError::UnknownTask(Digest::of(b"nope"))));
    assert!(s.piece_failed(0, task(), &h("a2"), 0, &h("a1"), FailReason::Io).is_err());
}

#[test]
fn expired_hosts_leave_their_tasks_and_free_their_slots() {
    let mut s = sched(Config::default(), &[("a1", "A"), ("a2", "A"), ("a3", "A")]);
    assert_eq!(reg(&mut s, "a1"), Decision::BackToSource); // a1 last heard at 1
    reg(&mut s, "a2");
    s.announce_host(60_000, SESSION, info("a2", "A")).unwrap();
    s.piece_finished(70_000, task(), &h("a2"), 0, PieceDigest::of(b"0"), false).unwrap();
    assert!(s.expire(89_999).is_empty());
    // a3 was announced at 0 and never heard from since; a1 last registered at 1.
    assert_eq!(s.expire(90_000), vec![h("a3")]);
    assert_eq!(s.expire(90_001), vec![h("a1")]);
    s.check_invariants();
    assert!(s.host(&h("a1")).is_none() && s.host(&h("a2")).is_some());
    assert_eq!(s.hosts().map(|i| i.id.as_str()).collect::<Vec<_>>(), vec!["a2"]);
    assert_eq!(s.counters().hosts_expired, 2);
    assert_eq!(s.counters().peers_left, 1);
    let st = s.stats(task()).unwrap();
    assert_eq!((st.peers, st.back_to_source_peers), (1, 0));
    assert_eq!(st.per_peer[0].parents, 0);
    // The slot is free: a2 takes it on its next ask.
    assert_eq!(s.reschedule(90_002, task(), &h("a2")).unwrap(), Decision::BackToSource);
    // An expired host must announce again before registering.
    let again = s.register(90_003, task(), &h("a1"), layout(), bits(&[]));
    assert_eq!(again, Err(RegisterError::UnknownHost(h("a1"))));
    // Every host gone: the task goes with them.
    assert_eq!(s.expire(1_000_000), vec![h("a2")]);
    assert!(s.stats_all().is_empty());
}

#[test]
fn a_task_is_dropped_with_its_last_peer() {
    let mut s = sched(Config::default(), &[("a1", "A"), ("a2", "A")]);
    reg(&mut s, "a1");
    finished(&mut s, "a1", 0, b"0", true).unwrap();
    reg(&mut s, "a2");
    s.left(2, task(), &h("a1")).unwrap();
    assert!(s.stats(task()).is_some());
    s.failed(2, task(), &h("a2")).unwrap();
    assert!(s.stats(task()).is_none());
    assert!(s.piece_digests(task()).is_empty());
    assert_eq!(s.layout(task()), None);
    assert!(matches!(s.reschedule(3, task(), &h("a1")), Err(MembershipError::UnknownTask(_))));
    let c = s.counters();
    assert_eq!((c.peers_left, c.peers_failed), (1, 1));
    // A new pull starts over: back to source.
    assert_eq!(reg(&mut s, "a2"), Decision::BackToSource);
}

#[test]
fn remove_host_leaves_every_task() {
    let mut s = sched(Config::default(), &[("a1", "A"), ("a2", "A")]);
    let other = Digest::of(b"other");
    reg(&mut s, "a1");
    reg(&mut s, "a2");
    s.register(1, other, &h("a1"), layout(), bits(&[])).unwrap();
    assert!(s.remove_host(&h("a1")));
    s.check_invariants();
    assert!(!s.remove_host(&h("a1")));
    let all = s.stats_all();
    assert_eq!(all.len(), 1);
    assert_eq!(all[0].task, task());
}

#[test]
fn stats_describe_the_task() {
    let mut s = sched(Config::default(), &[("a1", "A"), ("a2", "A"), ("b1", "B")]);
    reg(&mut s, "a1");
    reg_with(&mut s, "a2", &[1, 2]);
    reg(&mut s, "b1");
    finished(&mut s, "a1", 0, b"0", true).unwrap();
    s.done(3, task(), &h("a1")).unwrap();
    s.done(4, task(), &h("a1")).unwrap();
    let st = s.stats(task()).unwrap();
    assert_eq!(st.task, task());
    assert_eq!((st.size, st.piece_size, st.pieces), (10 << 20, 1 << 20, PIECES));
    assert_eq!((st.peers, st.done_peers, st.back_to_source_peers), (3, 1, 1));
    let pieces: Vec<(&str, u32, u32)> = st.per_peer.iter().map(|p| (p.host.as_str(), p.pieces, p.children)).collect();
    assert_eq!(pieces, vec![("a1", PIECES, 1), ("a2", 2, 0), ("b1", 0, 0)]);
    assert_eq!(st.decisions, DecisionCounts { back_to_source: 2, parents: 1, wait: 0 });
    assert_eq!(s.counters().decisions, st.decisions);
    assert_eq!(s.counters().peers_done, 1);
    assert_eq!(s.stats_all(), vec![st]);
    assert_eq!(s.layout(task()), Some(layout()));
}

/// One call of a random sequence over hosts `h0..h5` in sites A/B and two tasks.
#[derive(Debug, Clone)]
enum Op {
    Announce(usize, u32),
    Register(usize, usize, Vec<bool>),
    Reschedule(usize, usize),
    Finished(usize, usize, u32, bool, bool),
    Failed(usize, usize, usize, usize),
    Done(usize, usize),
    Gone(usize, usize, bool),
    Expire(u64),
}

fn arb_op() -> impl Strategy<Value = Op> {
    let (hs, ts) = (0usize..6, 0usize..2);
    prop_oneof![
        (hs.clone(), 0u32..10).prop_map(|(h, l)| Op::Announce(h, l)),
        (ts.clone(), hs.clone(), vec(any::<bool>(), PIECES as usize)).prop_map(|(t, h, b)| Op::Register(t, h, b)),
        (ts.clone(), hs.clone()).prop_map(|(t, h)| Op::Reschedule(t, h)),
        (ts.clone(), hs.clone(), 0..PIECES, any::<bool>(), any::<bool>())
            .prop_map(|(t, h, i, good, o)| Op::Finished(t, h, i, good, o)),
        (ts.clone(), hs.clone(), hs.clone(), 0usize..4).prop_map(|(t, h, p, r)| Op::Failed(t, h, p, r)),
        (ts.clone(), hs.clone()).prop_map(|(t, h)| Op::Done(t, h)),
        (ts, hs, any::<bool>()).prop_map(|(t, h, f)| Op::Gone(t, h, f)),
        (0u64..40_000).prop_map(Op::Expire),
    ]
}

/// Checks the rules every decision must obey, right after it was made.
fn check_decision(s: &Scheduler, t: TaskId, host: &HostId, d: &Decision, registered: bool) {
    let task = &s.tasks[&t];
    let peer = &task.peers[host];
    assert!(d.parents().len() <= s.config.candidate_parents);
    for c in d.parents() {
        assert_ne!(&c.host, host, "offered itself");
        assert!(!peer.bad.contains(&c.host), "offered a bad parent");
        let children = task.peers[&c.host].children.len() as u32;
        let load = s.hosts.get(&c.host).unwrap().info.load.max(children);
        assert!(load <= s.config.max_children_per_parent, "over the cap in this task");
    }
    if registered && *d == Decision::BackToSource && !peer.done {
        let site = s.hosts.site_at(peer.host);
        assert!(task.back_to_source_in(&s.hosts, site) <= s.config.back_to_source_per_site);
    }
}

fn apply(s: &mut Scheduler, now: &mut u64, op: Op) {
    let tasks = [task(), Digest::of(b"second")];
    let host = |i: usize| h(&format!("h{i}"));
    *now += 1000;
    match op {
        Op::Announce(i, load) => {
            let site = if i % 2 == 0 { "A" } else { "B" };
            s.announce_host(*now, SESSION, HostInfo { load, ..info(&format!("h{i}"), site) }).unwrap();
        }
        Op::Register(t, i, have) => {
            let mut b = Bitmap::new(PIECES);
            (0..PIECES).filter(|&j| have[j as usize]).for_each(|j| {
                b.set(j);
            });
            let was_at_origin =
                s.tasks.get(&tasks[t]).and_then(|task| task.peers.get(&host(i))).is_some_and(|p| p.back_to_source);
            if let Ok(d) = s.register(*now, tasks[t], &host(i), layout(), b) {
                check_decision(s, tasks[t], &host(i), &d, !was_at_origin);
            }
        }
        Op::Reschedule(t, i) => {
            if let Ok(d) = s.reschedule(*now, tasks[t], &host(i)) {
                check_decision(s, tasks[t], &host(i), &d, false);
            }
        }
        Op::Finished(t, i, idx, good, origin) => {
            let data: &[u8] = if good { b"good" } else { b"bad" };
            let _ = s.piece_finished(*now, tasks[t], &host(i), idx, PieceDigest::of(data), origin);
        }
        Op::Failed(t, i, p, r) => {
            let _ = s.piece_failed(*now, tasks[t], &host(i), 0, &host(p), FailReason::ALL[r]);
        }
        Op::Done(t, i) => {
            let _ = s.done(*now, tasks[t], &host(i));
        }
        Op::Gone(t, i, failed) => {
            let _ = match failed {
                true => s.failed(*now, tasks[t], &host(i)),
                false => s.left(*now, tasks[t], &host(i)),
            };
        }
        Op::Expire(dt) => {
            *now += dt;
            s.expire(*now);
        }
    }
}

proptest! {
    #[test]
    fn random_calls_keep_the_rules(ops in vec(arb_op(), 1..80)) {
        let config = Config { max_children_per_parent: 3, candidate_parents: 2, ..Config::default() };
        let mut s = Scheduler::new(config);
        let mut now = 0;
        for i in 0..6 {
            s.announce_host(0, SESSION, info(&format!("h{i}"), if i % 2 == 0 { "A" } else { "B" })).unwrap();
        }
        for op in ops {
            apply(&mut s, &mut now, op);
            s.check_invariants();
            let c = s.counters();
            let per_task: u64 = s.stats_all().iter().map(|t| t.decisions.parents).sum();
            prop_assert!(c.decisions.parents >= per_task);
        }
    }
}

#[test]
fn a_forged_digest_table_is_dropped_once_and_its_author_distrusted() {
    let mut s = sched(Config::default(), &[("a1", "A"), ("a2", "A"), ("a3", "A")]);
    assert_eq!(reg(&mut s, "a1"), Decision::BackToSource);
    assert_eq!(finished(&mut s, "a1", 0, b"forged", true), Ok(PieceRecorded::DigestKept));
    let _ = reg(&mut s, "a2");
    let _ = reg(&mut s, "a3");
    assert_eq!(s.digest_epoch(task()), 0);
    // a2's blob did not verify: the table goes, a1 is distrusted and a2 takes the origin slot.
    let d = s.blob_mismatch(6, task(), &h("a2"), 0, &[h("a1")]).unwrap();
    s.check_invariants();
    assert_eq!(d, Decision::BackToSource);
    assert!(s.piece_digests(task()).is_empty());
    assert_eq!((s.digest_epoch(task()), s.counters().forged_tables), (1, 1));
    // a3 holds the forged table too: a2, the new origin peer, is its parent at once; no one is
    // offered the distrusted a1.
    let a3 = s.tasks[&task()].peers.get(&h("a3")).unwrap();
    assert!(a3.parents.contains(&h("a2")), "{:?}", a3.parents);
    assert!(!s.take_offers().iter().any(|o| o.parent.host == h("a1")));
    // a1's origin reports no longer count, and it is never a parent again.
    assert_eq!(finished(&mut s, "a1", 1, b"forged", true), Ok(PieceRecorded::Unverified));
    assert_eq!(finished(&mut s, "a2", 0, b"real", true), Ok(PieceRecorded::DigestKept));
    // a3 found the same old table forged later: the new table stays, a3 gets a2 as parent.
    let d = s.blob_mismatch(7, task(), &h("a3"), 0, &[h("a1")]).unwrap();
    s.check_invariants();
    assert_eq!(s.piece_digests(task()), vec![(0, PieceDigest::of(b"real"))]);
    assert_eq!(s.counters().forged_tables, 1);
    let Decision::Parents(ps) = d else { panic!("{d:?}") };
    assert_eq!(ps.iter().map(|p| p.host.clone()).collect::<Vec<_>>(), vec![h("a2")]);
}

#[test]
fn a_late_reporter_of_a_dropped_table_forgives_the_new_origin_peer_it_blamed() {
    let mut s = sched(Config::default(), &[("a1", "A"), ("a2", "A"), ("a3", "A")]);
    assert_eq!(reg(&mut s, "a1"), Decision::BackToSource);
    assert_eq!(finished(&mut s, "a1", 0, b"forged", true), Ok(PieceRecorded::DigestKept));
    let _ = reg(&mut s, "a2");
    let _ = reg(&mut s, "a3");
    assert_eq!(s.blob_mismatch(6, task(), &h("a2"), 0, &[h("a1")]).unwrap(), Decision::BackToSource);
    assert_eq!(finished(&mut s, "a2", 0, b"real", true), Ok(PieceRecorded::DigestKept));
    // a3 still checks against the forged table: a2's honest piece fails it, a3 blames a2.
    s.piece_failed(7, task(), &h("a3"), 0, &h("a2"), FailReason::DigestMismatch).unwrap();
    s.check_invariants();
    // Then a3 finds the blob forged: the blame was the forged table's doing, a2 is its parent.
    let d = s.blob_mismatch(8, task(), &h("a3"), 0, &[h("a1")]).unwrap();
    s.check_invariants();
    let Decision::Parents(ps) = d else { panic!("{d:?}") };
    assert_eq!(ps.iter().map(|p| p.host.clone()).collect::<Vec<_>>(), vec![h("a2")]);
    assert_eq!(s.tasks[&task()].peers.get(&h("a2")).unwrap().mismatch_reports, 0);
}

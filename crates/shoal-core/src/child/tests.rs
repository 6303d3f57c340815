//! The child machine on a virtual clock: one test per decision.

use proptest::prelude::*;

use super::decide::hard_limit_ms;
use super::*;

/// 8 pieces of 1 MiB.
fn layout() -> PieceLayout {
    PieceLayout { size: 8 << 20, piece_size: 1 << 20 }
}

fn truth(i: u32) -> PieceDigest {
    PieceDigest::of(&i.to_le_bytes())
}

fn full() -> Bitmap {
    Bitmap::full(8)
}

fn offered(name: &str, have: Bitmap) -> Offered {
    Offered { host_id: name.into(), addr: format!("{name}:1"), have }
}

/// A child with a session, the whole digest table, and `parents` holding everything.
fn child_with(parents: &[&str]) -> Child {
    let mut c = Child::new(ChildConfig::default(), layout(), Bitmap::new(8), 0, 0, true);
    c.digests(0, 1, (0..8).map(|i| (i, truth(i))));
    c.parents_offered(0, parents.iter().map(|p| offered(p, full())).collect());
    c
}

fn drain(c: &mut Child) -> Vec<Action> {
    std::iter::from_fn(|| c.poll_action()).collect()
}

fn requests(actions: &[Action]) -> Vec<(RequestId, ParentId, u32)> {
    actions
        .iter()
        .filter_map(|a| match a {
            Action::Request { id, parent, piece } => Some((*id, *parent, *piece)),
            _ => None,
        })
        .collect()
}

fn reports(actions: &[Action]) -> Vec<&Report> {
    actions.iter().filter_map(|a| if let Action::Report(r) = a { Some(r) } else { None }).collect()
}

/// Delivers every request correctly, 10 ms apart, until every piece is held; returns the time,
/// with the actions that followed (the verify) drained.
fn fetch_all(c: &mut Child, mut now: u64) -> u64 {
    for _ in 0..100 {
        if c.held().is_full() {
            break;
        }
        now += 10;
        for (id, _, piece) in requests(&drain(c)) {
            deliver(c, now, id, piece);
        }
    }
    assert!(c.held().is_full(), "{} pieces held", c.held().count());
    assert_eq!(drain(c).last(), Some(&Action::Verify));
    now
}

/// Delivers request `id` for `piece` correctly and stores it.
fn deliver(c: &mut Child, now: u64, id: RequestId, piece: u32) {
    assert_eq!(c.piece_received(now, id, truth(piece)), Verdict::Store(truth(piece)));
    c.piece_stored(now, piece, truth(piece));
}

#[test]
fn no_request_without_a_trusted_digest() {
    let mut c = Child::new(ChildConfig::default(), layout(), Bitmap::new(8), 0, 0, true);
    c.parents_offered(0, vec![offered("a", full())]);
    let a = drain(&mut c);
    assert_eq!(a, vec![Action::Watch(ParentId(0))]);
    c.digests(1, 1, [(3, truth(3))]);
    let picked: Vec<u32> = requests(&drain(&mut c)).iter().map(|r| r.2).collect();
    assert_eq!(picked, vec![3]);
}

#[test]
fn requests_stay_within_the_caps_and_go_in_order_from_the_read_position() {
    let mut c = child_with(&["a", "b"]);
    let r = requests(&drain(&mut c));
    // Four per parent by default, eight in all.
    assert_eq!(r.len(), 8);
    let pieces: Vec<u32> = r.iter().map(|x| x.2).collect();
    assert_eq!(&pieces[..4], &[0, 1, 2, 3]);
    for p in [ParentId(0), ParentId(1)] {
        assert_eq!(r.iter().filter(|x| x.1 == p).count(), 4);
    }
}

#[test]
fn a_reader_far_ahead_gets_its_pieces_first() {
    let mut c = Child::new(ChildConfig::default(), layout(), Bitmap::new(8), 0, 0, true);
    c.readers(0, &[0, 6]);
    c.digests(0, 1, (0..8).map(|i| (i, truth(i))));
    c.parents_offered(0, vec![offered("a", full())]);
    let pieces: Vec<u32> = requests(&drain(&mut c)).iter().map(|x| x.2).collect();
    // Reader at 0 gets its window (cut by the parent's cap of four), and piece 6 is not
    // behind the whole prefix: readers are served in position order, each up to its window.
    assert_eq!(pieces, vec![0, 1, 2, 3]);
    let mut c = Child::new(ChildConfig::default(), layout(), Bitmap::new(8), 0, 0, true);
    c.readers(0, &[6]);
    c.digests(0, 1, (0..8).map(|i| (i, truth(i))));
    c.parents_offered(0, vec![offered("a", full())]);
    let pieces: Vec<u32> = requests(&drain(&mut c)).iter().map(|x| x.2).collect();
    assert_eq!(&pieces[..2], &[6, 7]);
}

#[test]
fn a_download_verifies_and_reports_done() {
    let mut c = child_with(&["a", "b"]);
    let mut now = 0;
    while !c.held().is_full() {
        now += 10;
        let r = requests(&drain(&mut c));
        assert!(!r.is_empty(), "nothing requested with {} held", c.held().count());
        for (id, _, piece) in r {
            deliver(&mut c, now, id, piece);
        }
    }
    let a = drain(&mut c);
    let finished = reports(&a).iter().filter(|r| matches!(r, Report::PieceFinished { from_origin: false, .. })).count();
    assert!(finished > 0);
    assert_eq!(a.last(), Some(&Action::Verify));
    c.verified(now, Checked::Complete);
    assert_eq!(drain(&mut c), vec![Action::Report(Report::Done), Action::Done]);
    assert_eq!(c.poll_timeout(), None);
}

#[test]
fn a_corrupt_piece_drops_its_parent() {
    let mut c = child_with(&["a", "b"]);
    let r = requests(&drain(&mut c));
    let (id, parent, piece) = r[0];
    assert_eq!(c.piece_received(5, id, PieceDigest::of(b"forged")), Verdict::Discard);
    let a = drain(&mut c);
    let failed = Report::PieceFailed { index: piece, parent, reason: FailReason::DigestMismatch };
    assert!(reports(&a).contains(&&failed), "{a:?}");
    assert!(c.parent(parent).is_bad());
    // The piece is asked of the other parent, and nothing more of the bad one.
    for (id, q, p) in r.iter().skip(1).copied() {
        if q != parent {
            deliver(&mut c, 6, id, p);
        } else {
            c.piece_failed(6, id, Failure::Io);
        }
    }
    let later = requests(&drain(&mut c));
    assert!(later.iter().all(|x| x.1 != parent));
    assert!(later.iter().any(|x| x.2 == piece));
}

#[test]
fn a_new_table_forgives_parents_blamed_for_the_old_one() {
    let mut c = child_with(&["a"]);
    let (id, parent, _) = requests(&drain(&mut c))[0];
    c.piece_received(1, id, PieceDigest::of(b"other"));
    assert!(c.parent(parent).is_bad());
    c.digests(2, 2, (0..8).map(|i| (i, truth(i))));
    assert!(!c.parent(parent).is_bad());
}

#[test]
fn a_silent_parent_is_replaced_within_the_progress_deadline() {
    let mut c = child_with(&["a", "b"]);
    let r = requests(&drain(&mut c));
    let deadline = ChildConfig::default().progress_deadline_ms;
    let of_a: Vec<(RequestId, u32)> = r.iter().filter(|x| x.1 == ParentId(0)).map(|x| (x.0, x.2)).collect();
    // b delivers everything it was asked at once; a goes silent.
    let mut asked_of_b: Vec<(RequestId, u32)> = r.iter().filter(|x| x.1 == ParentId(1)).map(|x| (x.0, x.2)).collect();
    let mut hedged = Vec::new();
    let mut t = 0;
    while t < 2000 {
        t += 100;
        for (id, piece) in std::mem::take(&mut asked_of_b) {
            if !of_a.iter().any(|x| x.1 == piece) {
                deliver(&mut c, t, id, piece);
            } else {
                hedged.push((id, piece, t));
            }
        }
        c.handle_timeout(t);
        for a in drain(&mut c) {
            match a {
                Action::Request { id, parent, piece } => {
                    assert_eq!(parent, ParentId(1), "nothing new for a silent parent");
                    asked_of_b.push((id, piece));
                }
                Action::Cancel(id) => assert!(!of_a.iter().any(|x| x.0 == id) || t > deadline),
                _ => {}
            }
        }
        if hedged.len() == of_a.len() {
            break;
        }
    }
    // Every piece asked of a was asked of b too, within two seconds.
    assert_eq!(hedged.len(), of_a.len(), "hedged {hedged:?}");
    assert!(hedged.iter().all(|h| h.2 <= 2000));
    // b's copies win: a's requests are cancelled then.
    for (id, piece, at) in hedged {
        deliver(&mut c, at + 10, id, piece);
    }
    let cancelled: Vec<Action> = drain(&mut c).into_iter().filter(|a| matches!(a, Action::Cancel(_))).collect();
    assert_eq!(cancelled.len(), of_a.len());
}

#[test]
fn the_only_parent_dying_is_retried_then_the_scheduler_decides() {
    let mut c = child_with(&["a"]);
    let r = requests(&drain(&mut c));
    deliver(&mut c, 200, r[0].0, r[0].2);
    drain(&mut c);
    let config = ChildConfig::default();
    let dead = 200 + config.progress_deadline_ms;
    c.handle_timeout(dead - 1);
    assert!(reports(&drain(&mut c)).is_empty(), "not stalled before the deadline");
    c.handle_timeout(dead);
    let a = drain(&mut c);
    let timeouts =
        reports(&a).iter().filter(|r| matches!(r, Report::PieceFailed { reason: FailReason::Timeout, .. })).count();
    assert_eq!(timeouts, 1, "one failure per stall: {a:?}");
    assert!(reports(&a).iter().all(|r| **r != Report::Reschedule), "a stalled parent may come back");
    // Retried after the suspension, stalled again, ... dropped at the third stall: then the
    // scheduler is asked, once.
    let mut reschedules = Vec::new();
    for _ in 0..50 {
        let Some(now) = c.poll_timeout() else { break };
        c.handle_timeout(now);
        for a in drain(&mut c) {
            // (Ten seconds without a piece also reschedules: that is the stall rule.)
            if a == Action::Report(Report::Reschedule) && now < 200 + config.stall_ms {
                reschedules.push(now);
            }
        }
        if now > 200 + config.stall_ms {
            break;
        }
    }
    assert!(c.parent(ParentId(0)).is_bad());
    assert_eq!(reschedules.len(), 1, "once: the scheduler counts asks ({reschedules:?})");
    let at = reschedules[0];
    assert!(at - 200 <= 3 * config.progress_deadline_ms + 2 * config.suspend_ms, "asked after {} ms", at - 200);
    c.back_to_source(at + 5);
    assert!(drain(&mut c).iter().any(|a| matches!(a, Action::FetchOrigin(_))));
}

#[test]
fn without_a_scheduler_the_only_parent_dying_sends_the_child_to_the_origin_within_two_seconds() {
    let mut c = child_with(&["a"]);
    c.session_lost(0);
    let r = requests(&drain(&mut c));
    let piece = r[0].2;
    deliver(&mut c, 200, r[0].0, piece);
    drain(&mut c);
    let mut now = 200;
    let mut origin = None;
    for _ in 0..100 {
        let Some(next) = c.poll_timeout() else { break };
        assert!(next > now, "timeout {next} not after {now}");
        now = next;
        c.handle_timeout(now);
        for a in drain(&mut c) {
            match a {
                Action::FetchOrigin(runs) => {
                    assert!(runs.iter().cloned().flatten().all(|i| i != piece));
                    origin = origin.or(Some(now));
                }
                Action::Register => c.register_failed(now),
                _ => {}
            }
        }
        if origin.is_some() {
            break;
        }
    }
    let origin = origin.expect("origin");
    assert!(origin - 200 <= 2000, "origin after {} ms", origin - 200);
}

#[test]
fn pieces_the_writer_has_not_stored_yet_are_not_fetched_from_the_origin_again() {
    let mut c = Child::new(ChildConfig::default(), layout(), Bitmap::new(8), 0, 0, true);
    c.back_to_source(0);
    assert_eq!(drain(&mut c), vec![Action::FetchOrigin(std::iter::once(0..8).collect())]);
    c.piece_stored(1, 0, truth(0));
    c.origin_done(2);
    assert!(drain(&mut c).iter().all(|a| !matches!(a, Action::FetchOrigin(_))), "the writer lags, that is all");
    // Dropped by the whole-blob check: fetched again.
    (1..8).for_each(|i| c.piece_stored(3, i, truth(i)));
    drain(&mut c);
    c.verified(4, Checked::Dropped { dropped: vec![5], kept: vec![] });
    c.back_to_source(5);
    let again: Vec<Action> = drain(&mut c).into_iter().filter(|a| matches!(a, Action::FetchOrigin(_))).collect();
    assert_eq!(again, vec![Action::FetchOrigin(std::iter::once(5..6).collect())]);
}

#[test]
fn the_scheduler_answers_a_reschedule_with_a_new_parent() {
    let mut c = child_with(&["a"]);
    drain(&mut c);
    let t = ChildConfig::default().progress_deadline_ms;
    c.handle_timeout(t);
    drain(&mut c);
    c.parents_offered(t + 50, vec![offered("b", full())]);
    let r = requests(&drain(&mut c));
    assert!(!r.is_empty() && r.iter().all(|x| x.1 == ParentId(1)));
    c.handle_timeout(t + ChildConfig::default().orphan_ms + 100);
    assert!(!c.at_origin());
}

#[test]
fn a_slow_request_is_hedged_and_the_first_answer_wins() {
    let mut c = child_with(&["a", "b"]);
    let r = requests(&drain(&mut c));
    // Every request but one completes quickly; the last one of a trickles.
    let slow = *r.iter().rfind(|x| x.1 == ParentId(0)).expect("a request to a");
    for (id, _, piece) in r.iter().copied().filter(|x| x.0 != slow.0) {
        deliver(&mut c, 50, id, piece);
    }
    // b's slots are taken by new picks; finish those too so b has room.
    let mut now = 50;
    let mut hedge = None;
    while now < 3000 && hedge.is_none() {
        now += 50;
        c.progress(now, slow.0, now); // a trickle: progress, but slow
        c.handle_timeout(now);
        for (id, parent, piece) in requests(&drain(&mut c)) {
            if piece == slow.2 {
                assert_eq!(parent, ParentId(1));
                hedge = Some((id, now));
            } else {
                deliver(&mut c, now, id, piece);
            }
        }
    }
    let (hedge_id, at) = hedge.expect("hedged");
    assert!(at <= 50 + 1000 + 100, "hedged after {at} ms");
    deliver(&mut c, at + 10, hedge_id, slow.2);
    let a = drain(&mut c);
    assert!(a.contains(&Action::Cancel(slow.0)), "{a:?}");
    // The slow one's late answer is ignored.
    assert_eq!(c.piece_received(at + 20, slow.0, truth(slow.2)), Verdict::Discard);
}

#[test]
fn a_busy_piece_waits_for_the_backoff() {
    let mut c = child_with(&["a"]);
    let r = requests(&drain(&mut c));
    let (id, _, piece) = r[0];
    c.piece_failed(10, id, Failure::Busy);
    let a = drain(&mut c);
    assert!(reports(&a).is_empty(), "busy is not a failure: {a:?}");
    assert!(requests(&a).iter().all(|x| x.2 != piece));
    let backoff = ChildConfig::default().busy_backoff_ms;
    for (id, _, p) in r.into_iter().skip(1).chain(requests(&a)) {
        deliver(&mut c, 20, id, p);
    }
    // Every other piece arrives; the busy one is not asked again meanwhile.
    for now in 21..40 {
        for (id, _, p) in requests(&drain(&mut c)) {
            assert_ne!(p, piece, "re-asked at {now}");
            deliver(&mut c, now, id, p);
        }
    }
    assert_eq!(c.held().count(), 7);
    c.handle_timeout(10 + backoff);
    let after = requests(&drain(&mut c));
    assert!(after.iter().any(|x| x.2 == piece), "{after:?}");
}

#[test]
fn io_failures_drop_a_parent_after_three() {
    let mut c = child_with(&["a"]);
    let r = requests(&drain(&mut c));
    for (k, (id, _, _)) in r.iter().take(3).enumerate() {
        assert!(!c.parent(ParentId(0)).is_bad(), "bad after {k}");
        c.piece_failed(1, *id, Failure::Io);
    }
    assert!(c.parent(ParentId(0)).is_bad());
    assert!(drain(&mut c).contains(&Action::Forget(ParentId(0))));
}

#[test]
fn not_found_forgets_the_piece_and_refused_drops_the_parent() {
    let mut c = child_with(&["a", "b"]);
    let r = requests(&drain(&mut c));
    let (id, p, piece) = r[0];
    c.piece_failed(1, id, Failure::NotFound);
    assert!(!c.parent(p).have.get(piece));
    let (id, q, _) = *r.iter().find(|x| x.1 != p).expect("other");
    c.piece_failed(1, id, Failure::Refused);
    assert!(c.parent(q).is_bad());
}

#[test]
fn a_trickle_forever_hits_the_hard_limit() {
    let mut c = child_with(&["a"]);
    let r = requests(&drain(&mut c));
    let limit = hard_limit_ms(1 << 20);
    let mut now = 0;
    let mut cancelled = 0;
    while now <= limit + 100 {
        now += 100;
        for (id, _, _) in &r {
            c.progress(now, *id, now);
        }
        c.handle_timeout(now);
        cancelled += drain(&mut c).iter().filter(|a| matches!(a, Action::Cancel(_))).count();
    }
    assert_eq!(cancelled, r.len());
}

#[test]
fn ten_seconds_without_a_piece_reschedules_and_three_stalls_go_to_the_origin() {
    // Parents that hold nothing yet (they are downloading too): the child waits.
    let mut c = Child::new(ChildConfig::default(), layout(), Bitmap::new(8), 0, 0, true);
    c.digests(0, 1, (0..8).map(|i| (i, truth(i))));
    c.parents_offered(0, vec![offered("a", Bitmap::new(8))]);
    drain(&mut c);
    let stall = ChildConfig::default().stall_ms;
    let mut reschedules = 0;
    for k in 1..=3 {
        c.handle_timeout(k * stall);
        let a = drain(&mut c);
        reschedules += reports(&a).iter().filter(|r| matches!(r, Report::Reschedule)).count();
        assert_eq!(c.at_origin(), k == 3, "after {k} stalls");
        if k == 3 {
            assert!(a.iter().any(|a| matches!(a, Action::FetchOrigin(_))));
        }
    }
    assert_eq!(reschedules, 3);
}

#[test]
fn without_a_scheduler_and_parents_the_child_registers_then_goes_to_the_origin() {
    let mut c = Child::new(ChildConfig::default(), layout(), Bitmap::new(8), 0, 0, false);
    assert_eq!(drain(&mut c), vec![Action::Register]);
    c.register_failed(5);
    assert_eq!(drain(&mut c), vec![Action::FetchOrigin(std::iter::once(0..8).collect())]);
    c.register_failed(6);
    assert!(drain(&mut c).is_empty(), "one origin fetch at a time");
}

#[test]
fn a_new_session_after_registering_again_keeps_the_child_in_the_swarm() {
    let mut c = Child::new(ChildConfig::default(), layout(), Bitmap::new(8), 0, 0, false);
    assert_eq!(drain(&mut c), vec![Action::Register]);
    c.session_opened(5);
    c.handle_timeout(5 + ChildConfig::default().orphan_ms);
    assert!(!c.at_origin());
}

#[test]
fn origin_runs_start_at_the_reader() {
    let mut held = Bitmap::new(8);
    held.set(2);
    let mut c = Child::new(ChildConfig::default(), layout(), held, 0, 0, true);
    c.readers(0, &[5]);
    c.back_to_source(0);
    assert_eq!(drain(&mut c), vec![Action::FetchOrigin(vec![3..8, 0..2])]);
}

#[test]
fn a_blob_that_does_not_verify_is_reported_once_then_fetched_from_the_origin() {
    let mut c = child_with(&["a"]);
    let now = fetch_all(&mut c, 0);
    c.verified(now, Checked::Dropped { dropped: (0..8).collect(), kept: vec![] });
    let a = drain(&mut c);
    assert_eq!(reports(&a), vec![&Report::BlobMismatch { epoch: 1, parents: vec![ParentId(0)] }]);
    assert_eq!(c.held().count(), 0);
    // The forged table's digests, sent again before the scheduler read the report: ignored.
    c.digests(now, 1, (0..8).map(|i| (i, truth(i))));
    assert!(requests(&drain(&mut c)).is_empty(), "the forged table is not taken again");
    // The scheduler's new table and the same parent: it gets another chance.
    c.digests(now, 2, (0..8).map(|i| (i, truth(i))));
    let now = fetch_all(&mut c, now);
    c.verified(now, Checked::Dropped { dropped: (0..8).collect(), kept: vec![] });
    assert!(c.at_origin());
    assert!(drain(&mut c).iter().any(|a| matches!(a, Action::FetchOrigin(_))));
}

#[test]
fn without_a_scheduler_a_blob_mismatch_drops_the_parents_and_goes_to_the_origin() {
    let mut c = child_with(&["a"]);
    c.session_lost(0);
    let now = fetch_all(&mut c, 0);
    c.verified(now, Checked::Dropped { dropped: vec![0, 1], kept: vec![] });
    assert!(c.parent(ParentId(0)).is_bad());
    assert_eq!(drain(&mut c), vec![Action::FetchOrigin(std::iter::once(0..2).collect())]);
}

/// Random events.
#[derive(Debug, Clone)]
enum Event {
    Offer(u8, u8),
    Deliver(u8, bool),
    Fail(u8, u8),
    Progress(u8),
    Tick(u16),
    Reader(u8),
    Stored,
}

fn event() -> impl Strategy<Value = Event> {
    prop_oneof![
        (0u8..4, any::<u8>()).prop_map(|(p, h)| Event::Offer(p, h)),
        (any::<u8>(), any::<bool>()).prop_map(|(k, ok)| Event::Deliver(k, ok)),
        (any::<u8>(), 0u8..4).prop_map(|(k, f)| Event::Fail(k, f)),
        any::<u8>().prop_map(Event::Progress),
        (1u16..3000).prop_map(Event::Tick),
        (0u8..8).prop_map(Event::Reader),
        Just(Event::Stored),
    ]
}

proptest! {
    /// Whatever happens: never a piece held or landing requested, never a piece from a parent
    /// that was dropped or does not hold it, never more than the caps, at most two requests
    /// per piece, and the download always moves on (a timeout is pending until done).
    #[test]
    fn invariants_hold_under_any_events(events in prop::collection::vec(event(), 1..200)) {
        let config = ChildConfig::default();
        let mut c = Child::new(config, layout(), Bitmap::new(8), 7, 0, true);
        c.digests(0, 1, (0..8).map(|i| (i, truth(i))));
        let mut now = 0u64;
        let mut live: Vec<(RequestId, ParentId, u32)> = Vec::new();
        let mut landing: Vec<u32> = Vec::new();
        for e in events {
            match e {
                Event::Offer(p, h) => {
                    let mut have = Bitmap::new(8);
                    (0..8).filter(|i| h & (1 << i) != 0).for_each(|i| { have.set(i); });
                    c.parents_offered(now, vec![offered(&format!("p{p}"), have)]);
                }
                Event::Deliver(k, ok) if !live.is_empty() => {
                    let (id, _, piece) = live.remove(k as usize % live.len());
                    let got = if ok { truth(piece) } else { PieceDigest::of(b"bad") };
                    if let Verdict::Store(d) = c.piece_received(now, id, got) {
                        prop_assert_eq!(d, truth(piece));
                        prop_assert!(!c.held().get(piece));
                        landing.push(piece);
                    }
                }
                Event::Fail(k, f) if !live.is_empty() => {
                    let (id, _, _) = live.remove(k as usize % live.len());
                    let f = [Failure::Busy, Failure::NotFound, Failure::Refused, Failure::Io][f as usize];
                    c.piece_failed(now, id, f);
                }
                Event::Progress(k) if !live.is_empty() => {
                    let (id, _, _) = live[k as usize % live.len()];
                    c.progress(now, id, now + 1);
                }
                Event::Tick(ms) => {
                    now += u64::from(ms);
                    c.handle_timeout(now);
                }
                Event::Reader(r) => c.readers(now, &[u32::from(r)]),
                Event::Stored => {
                    if let Some(piece) = landing.pop() {
                        c.piece_stored(now, piece, truth(piece));
                    }
                }
                _ => {}
            }
            while let Some(a) = c.poll_action() {
                match a {
                    Action::Request { id, parent, piece } => {
                        prop_assert!(!c.held().get(piece) && !landing.contains(&piece));
                        let p = c.parent(parent);
                        prop_assert!(!p.is_bad() && p.have.get(piece));
                        live.push((id, parent, piece));
                    }
                    Action::Cancel(id) => live.retain(|x| x.0 != id),
                    Action::Verify => c.verified(now, Checked::Complete),
                    Action::FetchOrigin(runs) => {
                        for i in runs.into_iter().flatten() {
                            prop_assert!(!c.held().get(i));
                            c.piece_stored(now, i, truth(i));
                        }
                        c.origin_done(now);
                    }
                    _ => {}
                }
            }
            prop_assert!(live.len() <= config.max_in_flight);
            prop_assert_eq!(live.len(), c.requests_in_flight());
            for piece in 0..8 {
                prop_assert!(live.iter().filter(|x| x.2 == piece).count() <= 2);
            }
            for (q, _) in c.parents().iter().enumerate() {
                let n = live.iter().filter(|x| x.1 == ParentId(q)).count() as u32;
                prop_assert!(n <= config.picker.max_in_flight_per_parent, "parent {} has {}", q, n);
            }
            let finished = c.poll_action().is_none() && c.poll_timeout().is_none();
            prop_assert!(!finished || c.held().is_full() || !landing.is_empty(), "stuck with {} held", c.held().count());
        }
    }
}

#[test]
fn a_single_piece_refused_as_busy_is_asked_again_after_the_backoff() {
    let one = PieceLayout { size: 529, piece_size: 1 << 20 };
    let mut c = Child::new(ChildConfig::default(), one, Bitmap::new(1), 0, 0, true);
    c.digests(0, 1, [(0, truth(0))]);
    c.parents_offered(0, vec![offered("seed", Bitmap::full(1))]);
    let r = requests(&drain(&mut c));
    assert_eq!(r.len(), 1);
    c.piece_failed(10, r[0].0, Failure::Busy);
    assert!(requests(&drain(&mut c)).is_empty());
    let backoff = ChildConfig::default().busy_backoff_ms;
    let wake = c.poll_timeout().expect("a deadline");
    assert!(wake <= 10 + backoff, "woken at {wake}, after the backoff at {}", 10 + backoff);
    c.handle_timeout(wake);
    let again = requests(&drain(&mut c));
    assert_eq!(again.len(), 1, "asked again at {wake}");
}

fn origin_fetches(actions: &[Action]) -> usize {
    actions.iter().filter(|a| matches!(a, Action::FetchOrigin(_))).count()
}

#[test]
fn an_origin_that_fails_sends_the_child_back_to_parents() {
    // A site cut off from the origin: the child was sent to the origin before the holder in
    // its site was found. The origin's failure is not the download's.
    let mut c = Child::new(ChildConfig::default(), layout(), Bitmap::new(8), 0, 0, true);
    c.back_to_source(0);
    assert_eq!(origin_fetches(&drain(&mut c)), 1);
    c.piece_stored(50, 0, truth(0));
    drain(&mut c);
    c.origin_failed(5_000);
    let a = drain(&mut c);
    assert_eq!(reports(&a), vec![&Report::Reschedule], "parents are asked for at once");
    assert_eq!(origin_fetches(&a), 0);
    assert!(!c.at_origin());
    // The holder is found: every piece the origin did not deliver comes from it.
    c.digests(5_100, 1, (0..8).map(|i| (i, truth(i))));
    c.parents_offered(5_100, vec![offered("holder", full())]);
    let done = fetch_all(&mut c, 5_100);
    assert!(c.held().is_full(), "complete by {done} ms");
    c.verified(done, Checked::Complete);
    assert_eq!(drain(&mut c).last(), Some(&Action::Done));
}

#[test]
fn a_failed_origin_is_asked_again_only_after_the_retry_time_and_then_gives_up() {
    let config = ChildConfig::default();
    let mut c = Child::new(config, layout(), Bitmap::new(8), 0, 0, false);
    assert_eq!(drain(&mut c), vec![Action::Register]);
    c.register_failed(0);
    assert_eq!(origin_fetches(&drain(&mut c)), 1);
    c.origin_failed(100);
    assert_eq!(drain(&mut c), vec![Action::Register], "no scheduler session: register again");
    c.register_failed(200);
    assert!(c.at_origin(), "no parent: the origin is next");
    assert_eq!(origin_fetches(&drain(&mut c)), 0, "but not before the retry time");
    let retry = 100 + config.origin_retry_ms;
    assert_eq!(c.poll_timeout(), Some(retry));
    c.handle_timeout(retry);
    assert_eq!(origin_fetches(&drain(&mut c)), 1);
    c.origin_failed(retry + 100);
    assert_eq!(drain(&mut c), vec![Action::GiveUp], "twice in a row with no parent between");
    assert_eq!(c.poll_timeout(), None);
}

#[test]
fn a_piece_from_a_parent_between_two_origin_failures_keeps_the_download_going() {
    let mut c = Child::new(ChildConfig::default(), layout(), Bitmap::new(8), 0, 0, true);
    c.back_to_source(0);
    drain(&mut c);
    c.origin_failed(10);
    drain(&mut c);
    let mut one = Bitmap::new(8);
    one.set(7);
    c.digests(20, 1, [(7, truth(7))]);
    c.parents_offered(20, vec![offered("partial", one)]);
    let r = requests(&drain(&mut c));
    assert_eq!(r.iter().map(|x| x.2).collect::<Vec<_>>(), vec![7]);
    deliver(&mut c, 30, r[0].0, 7);
    c.back_to_source(40);
    let retry = 10 + ChildConfig::default().origin_retry_ms;
    c.handle_timeout(retry);
    let runs: Vec<Action> = drain(&mut c).into_iter().filter(|a| matches!(a, Action::FetchOrigin(_))).collect();
    assert_eq!(runs, vec![Action::FetchOrigin(std::iter::once(0..7).collect())], "the parent's piece is not fetched");
    c.origin_failed(retry + 10);
    assert!(!drain(&mut c).contains(&Action::GiveUp), "a parent delivered since the last failure");
}

#[test]
fn a_piece_asked_under_a_table_dropped_since_is_fetched_again_and_nobody_is_blamed() {
    // The poison race: a piece asked of the new origin peer while the forged table was still
    // current arrives after the new table, matching neither; the parent is honest.
    let mut c = child_with(&["honest"]);
    let r = requests(&drain(&mut c));
    let (id, _, piece) = r[0];
    c.digests(10, 2, (0..8u32).map(|i| (i, PieceDigest::of(&[b"new".as_slice(), &i.to_le_bytes()].concat()))));
    drain(&mut c);
    assert_eq!(c.piece_received(20, id, PieceDigest::of(b"torn")), Verdict::Discard);
    let a = drain(&mut c);
    assert!(reports(&a).is_empty(), "no blame: {a:?}");
    assert!(!c.parent(ParentId(0)).is_bad());
    assert!(requests(&a).iter().any(|x| x.2 == piece && x.1 == ParentId(0)), "asked again: {a:?}");
}

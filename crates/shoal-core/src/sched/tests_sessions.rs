//! Unit tests of who may speak for a host (sessions) and whose "from origin" digests count.

use super::tests::{h, info, reg, sched, task, SESSION};
use super::*;

const ROGUE: SessionId = SessionId(666);

#[test]
fn a_host_id_is_spoken_for_only_by_the_session_that_announced_it() {
    let mut s = sched(Config::default(), &[("a1", "A")]);
    let before = s.host(&h("a1")).cloned();
    let takeover = HostInfo { addr: "192.0.2.66:1".into(), ..info("a1", "A") };
    assert_eq!(s.announce_host(1, ROGUE, takeover.clone()), Err(HostError::Taken(h("a1"))));
    assert_eq!(s.host(&h("a1")).cloned(), before, "a refused announcement changed the host");
    assert_eq!(s.speaker(ROGUE, &h("a1")), Speaker::Other);
    assert_eq!(s.speaker(SESSION, &h("a1")), Speaker::Owner);
    assert_eq!(s.speaker(ROGUE, &h("nobody")), Speaker::Unknown);
    // The owner re-announces (heartbeat, new address) freely.
    s.announce_host(2, SESSION, HostInfo { load: 2, ..info("a1", "A") }).unwrap();
    assert_eq!(s.host(&h("a1")).map(|i| i.load), Some(2));
    // Once the owner's session ends (a daemon reconnecting), a new session may take the id.
    s.session_ended(SESSION);
    assert_eq!(s.speaker(ROGUE, &h("a1")), Speaker::Owner);
    s.announce_host(3, SessionId(2), info("a1", "A")).unwrap();
    assert_eq!(s.speaker(SessionId(2), &h("a1")), Speaker::Owner);
    assert_eq!(s.announce_host(4, ROGUE, takeover), Err(HostError::Taken(h("a1"))));
}

#[test]
fn origin_digests_count_only_from_the_peer_sent_back_to_source() {
    let mut s = sched(Config::default(), &[("a1", "A"), ("a2", "A")]);
    assert_eq!(reg(&mut s, "a1"), Decision::BackToSource);
    assert!(matches!(reg(&mut s, "a2"), Decision::Parents(_)));
    // a2 was not sent to the origin: its "from origin" claim is recorded but trusted by no one.
    let forged = s.piece_finished(5, task(), &h("a2"), 0, PieceDigest::of(b"forged"), true);
    assert_eq!(forged, Ok(PieceRecorded::Unverified));
    assert_eq!(s.piece_digest(task(), 0), None);
    // The origin peer's report sets the table; the forged one now conflicts.
    let real = s.piece_finished(6, task(), &h("a1"), 0, PieceDigest::of(b"real"), true);
    assert_eq!(real, Ok(PieceRecorded::DigestKept));
    assert_eq!(s.piece_digest(task(), 0), Some(PieceDigest::of(b"real")));
    let again = s.piece_finished(7, task(), &h("a2"), 0, PieceDigest::of(b"forged"), true);
    assert!(matches!(again, Err(PieceError::DigestConflict { .. })));
    s.check_invariants();
}

//! Who may read a cached object: the origin decides, for this credential and this repository.
//!
//! [`decide`] is the whole rule, as a pure function of the origin's answer (to this credential,
//! for this repository), what is remembered of earlier answers, and the time:
//!
//! - the origin said yes: serve, and remember the yes for this credential and repository;
//! - the origin said no (401/403/404…): pass its answer through; a 401 or 403 also forgets the
//!   yes remembered for this credential and repository;
//! - the origin could not decide now (unreachable, timed out, 5xx, token service failing):
//!   serve from the cache only when the object is known to belong to the repository, and the
//!   origin accepted this exact credential for that repository, or let anonymous clients pull
//!   it, within the offline grace; everyone else gets an error matching the origin's failure.
//!
//! Times are unix milliseconds, passed in.

/// How the origin failed to answer.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Unavailable {
    /// Connection refused, reset, DNS or TLS failure, or its token service failing.
    Unreachable,
    /// No answer in time.
    Timeout,
    /// It answered with this status: 5xx, or 429.
    Status(u16),
}

impl Unavailable {
    /// The status a refused client gets: 502 unreachable, 503 the origin's 503 (or 429), 504 a
    /// timeout (or the origin's 504), 502 any other 5xx.
    pub fn status(self) -> u16 {
        match self {
            Self::Unreachable => 502,
            Self::Timeout | Self::Status(504) => 504,
            Self::Status(503 | 429) => 503,
            Self::Status(_) => 502,
        }
    }
}

/// What the origin answered to this credential for this repository's object.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Answer {
    /// 200.
    Allowed,
    /// Any other definite answer: 401, 403, 404, 400…
    Denied(u16),
    /// No usable answer.
    Unavailable(Unavailable),
}

impl Answer {
    /// Classifies an HTTP status the origin sent.
    pub fn from_status(status: u16) -> Self {
        match status {
            200 => Self::Allowed,
            429 | 500..=599 => Self::Unavailable(Unavailable::Status(status)),
            s => Self::Denied(s),
        }
    }
}

/// What is remembered of the origin's earlier answers, for the object's repository.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Remembered {
    /// When the origin last accepted this client's exact credential for the repository.
    pub credential: Option<u64>,
    /// When the origin last let an anonymous client pull the repository.
    pub anonymous: Option<u64>,
    /// The origin has served this object (blob, manifest, tag) under this repository's name.
    pub in_repo: bool,
}

impl Remembered {
    /// What this node remembers with what its site knows added (a cut-off site): a member's
    /// sighting of an anonymous pull counts as this node's, and a member's knowledge that the
    /// object belongs to the repository counts too. Never a credential's grant: a private
    /// repository stays readable only by credentials this node saw accepted.
    pub fn with_site(mut self, public_at: Option<u64>, in_repo: bool) -> Self {
        self.anonymous = self.anonymous.max(public_at);
        self.in_repo |= in_repo;
        self
    }
}

/// What to do with the request.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Decision {
    /// Serve the object (from the cache when the origin is unavailable).
    Serve,
    /// Answer with an error of this status; never the object's bytes.
    Refuse(u16),
    /// Pass the origin's own answer back to the client.
    Relay,
}

/// What to change in the remembered grants for this credential and repository.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Update {
    /// Nothing.
    Keep,
    /// Remember that the origin accepted this credential (and the object is in the repository).
    Grant,
    /// Forget the grant of this credential for this repository.
    Revoke,
}

/// True when a grant made at `at` still counts at `now` (a grant from the future, after the
/// clock stepped back, counts only within the same grace).
pub fn within(at: u64, now: u64, grace_ms: u64) -> bool {
    now.abs_diff(at) <= grace_ms
}

/// The access rule (see the module documentation). `grace_ms` 0 never serves without the origin.
pub fn decide(answer: Answer, remembered: Remembered, now: u64, grace_ms: u64) -> (Decision, Update) {
    match answer {
        Answer::Allowed => (Decision::Serve, Update::Grant),
        Answer::Denied(401 | 403) => (Decision::Relay, Update::Revoke),
        Answer::Denied(_) => (Decision::Relay, Update::Keep),
        Answer::Unavailable(why) => {
            let fresh = |t: Option<u64>| grace_ms > 0 && t.is_some_and(|t| within(t, now, grace_ms));
            if remembered.in_repo && (fresh(remembered.credential) || fresh(remembered.anonymous)) {
                (Decision::Serve, Update::Keep)
            } else {
                (Decision::Refuse(why.status()), Update::Keep)
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use proptest::prelude::*;

    use super::*;

    const H: u64 = 3_600_000;
    const GRACE: u64 = 24 * H;
    const NOW: u64 = 1_000 * H;

    fn mem(credential: Option<u64>, anonymous: Option<u64>) -> Remembered {
        Remembered { credential, anonymous, in_repo: true }
    }

    #[test]
    fn the_site_makes_a_public_repository_public_and_never_a_private_one_readable() {
        let down = Answer::Unavailable(Unavailable::Timeout);
        let nothing = Remembered::default();
        // A member saw the repository public an hour ago, and the object in it: anyone.
        let public = nothing.with_site(Some(NOW - H), true);
        assert_eq!(decide(down, public, NOW, GRACE).0, Decision::Serve);
        // The member's sighting is older than the grace: no.
        assert_eq!(decide(down, nothing.with_site(Some(NOW - 2 * GRACE), true), NOW, GRACE).0, Decision::Refuse(504));
        // The site knows the object but never saw the repository public: a credential this
        // node never saw accepted is refused; one it saw accepted is served.
        assert_eq!(decide(down, nothing.with_site(None, true), NOW, GRACE).0, Decision::Refuse(504));
        let granted = Remembered { credential: Some(NOW - H), ..nothing }.with_site(None, true);
        assert_eq!(decide(down, granted, NOW, GRACE).0, Decision::Serve);
        // The latest sighting wins over this node's older one.
        assert_eq!(Remembered { anonymous: Some(5), ..nothing }.with_site(Some(9), false).anonymous, Some(9));
    }

    #[test]
    fn the_origin_decides_when_it_answers() {
        assert_eq!(decide(Answer::Allowed, Remembered::default(), NOW, GRACE), (Decision::Serve, Update::Grant));
        let granted = mem(Some(NOW), Some(NOW));
        assert_eq!(decide(Answer::Denied(401), granted, NOW, GRACE), (Decision::Relay, Update::Revoke));
        assert_eq!(decide(Answer::Denied(403), granted, NOW, GRACE), (Decision::Relay, Update::Revoke));
        assert_eq!(decide(Answer::Denied(404), granted, NOW, GRACE), (Decision::Relay, Update::Keep));
    }

    #[test]
    fn offline_serves_only_granted_clients() {
        let down = Answer::Unavailable(Unavailable::Unreachable);
        assert_eq!(decide(down, mem(Some(NOW - H), None), NOW, GRACE).0, Decision::Serve);
        assert_eq!(decide(down, mem(None, Some(NOW - H)), NOW, GRACE).0, Decision::Serve);
        assert_eq!(decide(down, mem(None, None), NOW, GRACE).0, Decision::Refuse(502));
        assert_eq!(decide(down, mem(Some(NOW - GRACE - 1), None), NOW, GRACE).0, Decision::Refuse(502));
        assert_eq!(decide(down, mem(Some(NOW - GRACE), None), NOW, GRACE).0, Decision::Serve);
        assert_eq!(decide(down, mem(Some(NOW), Some(NOW)), NOW, 0).0, Decision::Refuse(502));
        let elsewhere = Remembered { in_repo: false, ..mem(Some(NOW), Some(NOW)) };
        assert_eq!(decide(down, elsewhere, NOW, GRACE).0, Decision::Refuse(502));
        assert_eq!(decide(down, mem(Some(NOW + GRACE + 1), None), NOW, GRACE).0, Decision::Refuse(502));
    }

    #[test]
    fn refusals_match_the_failure() {
        let refused = |u| decide(Answer::Unavailable(u), Remembered::default(), NOW, GRACE).0;
        assert_eq!(refused(Unavailable::Unreachable), Decision::Refuse(502));
        assert_eq!(refused(Unavailable::Timeout), Decision::Refuse(504));
        assert_eq!(refused(Unavailable::Status(503)), Decision::Refuse(503));
        assert_eq!(refused(Unavailable::Status(429)), Decision::Refuse(503));
        assert_eq!(refused(Unavailable::Status(500)), Decision::Refuse(502));
        assert_eq!(refused(Unavailable::Status(504)), Decision::Refuse(504));
    }

    #[test]
    fn classifies_statuses() {
        assert_eq!(Answer::from_status(200), Answer::Allowed);
        assert_eq!(Answer::from_status(401), Answer::Denied(401));
        assert_eq!(Answer::from_status(404), Answer::Denied(404));
        assert_eq!(Answer::from_status(503), Answer::Unavailable(Unavailable::Status(503)));
        assert_eq!(Answer::from_status(429), Answer::Unavailable(Unavailable::Status(429)));
        assert_eq!(Answer::from_status(206), Answer::Denied(206));
    }

    fn answer() -> impl Strategy<Value = Answer> {
        prop_oneof![
            Just(Answer::Allowed),
            (100u16..600).prop_map(Answer::from_status),
            Just(Answer::Unavailable(Unavailable::Unreachable)),
            Just(Answer::Unavailable(Unavailable::Timeout)),
        ]
    }

    fn remembered() -> impl Strategy<Value = Remembered> {
        (proptest::option::of(0u64..2_000 * H), proptest::option::of(0u64..2_000 * H), any::<bool>())
            .prop_map(|(credential, anonymous, in_repo)| Remembered { credential, anonymous, in_repo })
    }

    proptest! {
        /// Never serve without a yes from the origin: now, or for this credential or anonymous
        /// clients within the grace, for an object seen in this repository.
        #[test]
        fn never_serves_without_an_origin_yes(a in answer(), r in remembered(), now in 0u64..2_000 * H, grace in 0u64..100 * H) {
            let (decision, update) = decide(a, r, now, grace);
            if decision == Decision::Serve && a != Answer::Allowed {
                let fresh = |t: Option<u64>| t.is_some_and(|t| now.abs_diff(t) <= grace);
                prop_assert!(grace > 0 && r.in_repo && (fresh(r.credential) || fresh(r.anonymous)));
            }
            // Only a yes grants; a refusal never carries the origin's body; a no is always relayed.
            prop_assert_eq!(update == Update::Grant, a == Answer::Allowed);
            if let Decision::Refuse(s) = decision {
                prop_assert!(matches!(a, Answer::Unavailable(_)) && matches!(s, 502..=504));
            }
            if matches!(a, Answer::Denied(_)) {
                prop_assert_eq!(decision, Decision::Relay);
            }
        }
    }
}

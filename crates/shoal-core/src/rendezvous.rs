//! Without a scheduler, when a downloading member fetches a blob from the origin itself.
//!
//! The members downloading a blob agree on one of them to fetch it (rendezvous hashing of the
//! blob over the members the DHT names; the daemon computes whether it is the one picked). The
//! rules here say when to act on what a DHT lookup found: holders with pieces are parents and
//! need no agreement; the agreement waits [`RendezvousConfig::settle_ms`] so that members that
//! start the blob at the same moment see each other first; a member not picked waits at most
//! [`RendezvousConfig::wait_ms`] for the picked one to have pieces, then goes to the origin too.
//! Pure: lookups' results and the time in, a step out.

/// Times, in milliseconds of the caller's clock (0 is when the download started).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct RendezvousConfig {
    /// Who fetches from the origin is agreed no sooner than this. Default 300.
    pub settle_ms: u64,
    /// How long a member not picked waits for holders with pieces. Default 3000.
    pub wait_ms: u64,
}

impl Default for RendezvousConfig {
    fn default() -> Self {
        Self { settle_ms: 300, wait_ms: 3000 }
    }
}

/// What to do after a lookup.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Step {
    /// Go on with the holders found (parents), looking up again at the usual pace.
    Go,
    /// Too early to agree: look up again at this time.
    LookAgainAt(u64),
    /// Fetch from the origin here, for this reason.
    Origin(WhyOrigin),
}

/// Why this member fetches from the origin.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum WhyOrigin {
    /// No member holds a piece and the rendezvous picked this one.
    Picked,
    /// The member picked has had no piece for [`RendezvousConfig::wait_ms`].
    NoPiecesInTime,
}

/// One blob's agreement.
#[derive(Debug, Clone, Default)]
pub struct Rendezvous {
    config: RendezvousConfig,
    /// The agreement was made (or not needed): it is not made again.
    agreed: bool,
    /// Since when lookups found no holder with pieces.
    waiting_since: Option<u64>,
}

impl Rendezvous {
    /// A new agreement.
    pub fn new(config: RendezvousConfig) -> Self {
        Self { config, agreed: false, waiting_since: None }
    }

    /// For a download a scheduler began (and chose who fetches from the origin): only the wait
    /// for pieces applies once the DHT steers.
    pub fn agreed(config: RendezvousConfig) -> Self {
        Self { config, agreed: true, waiting_since: None }
    }

    /// A lookup at `now` found holders with pieces (`has_pieces`), or not; `picked`: the
    /// rendezvous over the members found picks this one.
    pub fn found(&mut self, now: u64, has_pieces: bool, picked: bool) -> Step {
        if has_pieces {
            (self.agreed, self.waiting_since) = (true, None);
            return Step::Go;
        }
        if !self.agreed {
            if now < self.config.settle_ms {
                return Step::LookAgainAt(self.config.settle_ms);
            }
            self.agreed = true;
            if picked {
                return Step::Origin(WhyOrigin::Picked);
            }
        }
        let since = *self.waiting_since.get_or_insert(now);
        if now >= since + self.config.wait_ms {
            return Step::Origin(WhyOrigin::NoPiecesInTime);
        }
        Step::Go
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn holders_with_pieces_need_no_agreement_even_before_it_settles() {
        let mut r = Rendezvous::new(RendezvousConfig::default());
        assert_eq!(r.found(0, true, true), Step::Go);
        // Agreed: losing the holders later is a wait, not a second agreement.
        assert_eq!(r.found(500, false, true), Step::Go);
    }

    #[test]
    fn the_agreement_waits_to_settle_then_the_picked_member_fetches() {
        let mut r = Rendezvous::new(RendezvousConfig::default());
        assert_eq!(r.found(0, false, true), Step::LookAgainAt(300));
        assert_eq!(r.found(300, false, true), Step::Origin(WhyOrigin::Picked));
    }

    #[test]
    fn a_member_not_picked_waits_for_pieces_then_fetches_itself() {
        let c = RendezvousConfig::default();
        let mut r = Rendezvous::new(c);
        assert_eq!(r.found(310, false, false), Step::Go);
        assert_eq!(r.found(310 + c.wait_ms - 1, false, false), Step::Go);
        assert_eq!(r.found(310 + c.wait_ms, false, false), Step::Origin(WhyOrigin::NoPiecesInTime));
    }

    #[test]
    fn after_a_scheduler_only_the_wait_applies() {
        let c = RendezvousConfig::default();
        let mut r = Rendezvous::agreed(c);
        assert_eq!(r.found(0, false, true), Step::Go, "picked, but the scheduler chose already");
        assert_eq!(r.found(c.wait_ms, false, true), Step::Origin(WhyOrigin::NoPiecesInTime));
    }

    #[test]
    fn pieces_found_meanwhile_restart_the_wait() {
        let c = RendezvousConfig::default();
        let mut r = Rendezvous::new(c);
        assert_eq!(r.found(300, false, false), Step::Go);
        assert_eq!(r.found(2_000, true, false), Step::Go);
        assert_eq!(r.found(3_400, false, false), Step::Go, "the wait starts again at 3400");
        assert_eq!(r.found(3_400 + c.wait_ms, false, false), Step::Origin(WhyOrigin::NoPiecesInTime));
    }
}

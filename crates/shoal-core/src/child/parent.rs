//! What a child knows of one parent, and the rules for when it may be asked.

use std::collections::HashMap;

use crate::Bitmap;

/// A parent's place in the child's list (stable for the child's lifetime).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct ParentId(pub usize);

/// A parent offered by discovery (the scheduler or the DHT).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Offered {
    /// Its host id.
    pub host_id: String,
    /// Its peer address, as discovery gave it (the driver parses it).
    pub addr: String,
    /// Pieces it holds, as far as discovery knows.
    pub have: Bitmap,
}

/// One parent.
#[derive(Debug, Clone)]
pub struct Parent {
    /// Its host id.
    pub host_id: String,
    /// Its peer address.
    pub addr: String,
    /// Pieces it holds (from discovery, then its own "have" updates).
    pub have: Bitmap,
    pub(super) in_flight: u32,
    pub(super) failures: u32,
    pub(super) bad: bool,
    /// Marked bad only for pieces that did not match the digest table: forgiven when that
    /// table is dropped (the table, not the parent, may have been forged).
    pub(super) bad_digest: bool,
    /// When it last sent a byte of a request (or was given its first request after idling).
    pub(super) last_bytes: u64,
    /// Stalled: no new request before this time.
    pub(super) suspended_until: u64,
    /// Pieces it refused as busy, and until when they are not asked of it again.
    pub(super) refused: HashMap<u32, u64>,
    /// Hedge races it lost (a second parent delivered first).
    pub(super) lost_races: u32,
}

impl Parent {
    pub(super) fn new(offered: Offered) -> Self {
        Self {
            host_id: offered.host_id,
            addr: offered.addr,
            have: offered.have,
            in_flight: 0,
            failures: 0,
            bad: false,
            bad_digest: false,
            last_bytes: 0,
            suspended_until: 0,
            refused: HashMap::new(),
            lost_races: 0,
        }
    }

    /// Not dropped and not stalled at `now`.
    pub fn is_live(&self, now: u64) -> bool {
        !self.bad && self.suspended_until <= now
    }

    /// Whether it was dropped (corrupt, refused us, or failed too often).
    pub fn is_bad(&self) -> bool {
        self.bad
    }

    /// The pieces it may be asked for at `now`: held, with a trusted digest, not refused lately.
    pub(super) fn usable(&mut self, now: u64, known: &Bitmap) -> Bitmap {
        if !self.is_live(now) {
            return Bitmap::new(known.len());
        }
        let mut usable = self.have.and(known);
        self.refused.retain(|&i, until| {
            let live = *until > now;
            if live {
                usable.unset(i);
            }
            live
        });
        usable
    }

    /// One more failure; dropped past `limit`.
    pub(super) fn fail(&mut self, limit: u32) {
        self.failures += 1;
        self.bad |= self.failures >= limit;
    }
}

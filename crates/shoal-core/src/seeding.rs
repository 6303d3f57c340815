//! Seeding: a parent that fetched a blob from the origin serves each of those pieces to one
//! child at a time, so its upload carries new pieces instead of copies.
//!
//! When every node of a site pulls the same blob at once, the peer that goes back to source is
//! the only holder of each new piece, and its uplink is no faster than its origin download. If
//! all its children ask it for the newest piece, that piece leaves it once per child and the
//! swarm moves at the seed's upload divided by the number of children. Serving a new piece to
//! one child and refusing the others for a short window makes them fetch it from that child (or
//! each other) instead: the BitTorrent "super-seeding" idea, decided per request.
//!
//! [`Seeding`] is the per-task record a parent keeps: which child was last given each piece and
//! when. It does no I/O and reads no clock (time in milliseconds is passed in); the peer server
//! asks [`Seeding::admit`] before serving a piece of a task fetched from the origin, answers
//! "busy" when it says no, and the child looks for another holder.

use std::collections::HashMap;

/// Tuning of [`Seeding`]. `Default` gives the values below.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct SeedingConfig {
    /// After serving a piece to one child, other children are refused it for this long (ms).
    /// Default 3 000. Longer: fewer copies leave the seed, but a child whose sibling is slow to
    /// pass a piece on waits longer for it. 0 serves everyone at once (no seeding rule).
    pub window_ms: u64,
}

impl SeedingConfig {
    /// The default [`window_ms`](Self::window_ms).
    pub const DEFAULT_WINDOW_MS: u64 = 3_000;
}

impl Default for SeedingConfig {
    fn default() -> Self {
        Self { window_ms: Self::DEFAULT_WINDOW_MS }
    }
}

/// One task's record: per piece, the child it was last served to and when.
#[derive(Debug, Clone, Default)]
pub struct Seeding<C> {
    config: SeedingConfig,
    served: HashMap<u32, (C, u64)>,
}

impl<C: PartialEq + Clone> Seeding<C> {
    /// An empty record.
    pub fn new(config: SeedingConfig) -> Self {
        Self { config, served: HashMap::new() }
    }

    /// Whether `child` may have `piece` now; if so, it is recorded as the piece's last
    /// recipient. Yes when the piece was never served, was last served to this same child (a
    /// retry), or was last served at least a window ago; no when another child got it within
    /// the window.
    pub fn admit(&mut self, piece: u32, child: &C, now: u64) -> bool {
        let window = self.config.window_ms;
        match self.served.get_mut(&piece) {
            Some((last, at)) if last != child && now.saturating_sub(*at) < window => false,
            Some(entry) => {
                *entry = (child.clone(), now);
                true
            }
            None => {
                self.served.insert(piece, (child.clone(), now));
                true
            }
        }
    }

    /// Pieces served at least once.
    pub fn served(&self) -> usize {
        self.served.len()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    fn seeding() -> Seeding<&'static str> {
        Seeding::new(SeedingConfig { window_ms: 1000 })
    }

    #[test]
    fn a_new_piece_goes_to_one_child_per_window() {
        let mut s = seeding();
        assert!(s.admit(0, &"a", 10));
        assert!(!s.admit(0, &"b", 20), "b must get piece 0 from a");
        assert!(s.admit(1, &"b", 20), "another piece is free");
        assert!(s.admit(0, &"a", 500), "a retry by the same child");
        assert!(!s.admit(0, &"b", 1499), "the window restarts with a's retry");
        assert!(s.admit(0, &"b", 1500), "a window later, served again");
        assert!(!s.admit(0, &"c", 1600));
        assert_eq!(s.served(), 2);
    }

    #[test]
    fn a_zero_window_serves_everyone() {
        let mut s = Seeding::new(SeedingConfig { window_ms: 0 });
        assert!(s.admit(3, &"a", 5));
        assert!(s.admit(3, &"b", 5));
    }

    proptest! {
        /// Within any window, a piece goes to one child only: between two admissions of a piece
        /// to different children lies at least a window.
        #[test]
        fn never_two_children_within_a_window(
            asks in prop::collection::vec((0u32..4, 0u8..4, 0u64..50), 1..200),
        ) {
            let mut s: Seeding<u8> = Seeding::new(SeedingConfig { window_ms: 100 });
            let mut now = 0;
            let mut last: HashMap<u32, (u8, u64)> = HashMap::new();
            for (piece, child, step) in asks {
                now += step;
                if s.admit(piece, &child, now) {
                    if let Some(&(c, at)) = last.get(&piece) {
                        prop_assert!(c == child || now - at >= 100);
                    }
                    last.insert(piece, (child, now));
                } else {
                    let (c, at) = last[&piece];
                    prop_assert!(c != child && now - at < 100);
                }
            }
        }
    }
}

//! Which blobs this daemon seeds from the origin, and the per-piece record that makes it serve
//! each of their pieces to one child at a time ([`shoal_core::seeding`]).
//!
//! The swarm marks a blob when it starts fetching it from the origin; the peer server asks
//! [`Seeds::admit`] before serving a piece and answers "busy" on a no. Blobs this daemon got from
//! peers are never marked: their pieces exist elsewhere and are served to anyone. The table is
//! bounded (least recently used blobs are forgotten) and holds no bytes.

use std::collections::HashMap;
use std::sync::{Arc, Mutex};
use std::time::Instant;

use shoal_core::seeding::{Seeding, SeedingConfig};
use shoal_core::Digest;

/// Blobs remembered at most; the least recently used is dropped beyond.
const MAX_BLOBS: usize = 256;

/// Per blob: its record (children named by host id) and when it was last used (ms).
type Blobs = HashMap<Digest, (Seeding<Arc<str>>, u64)>;

/// The seeding record of every blob this daemon fetches (or fetched) from the origin.
pub struct Seeds {
    config: SeedingConfig,
    epoch: Instant,
    blobs: Mutex<Blobs>,
}

impl Seeds {
    /// An empty table; `config.window_ms == 0` turns the rule off.
    pub fn new(config: SeedingConfig) -> Self {
        Self { config, epoch: Instant::now(), blobs: Mutex::new(HashMap::new()) }
    }

    fn now(&self) -> u64 {
        u64::try_from(self.epoch.elapsed().as_millis()).unwrap_or(u64::MAX)
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, Blobs> {
        self.blobs.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// Marks `blob` as fetched from the origin by this daemon.
    pub fn mark(&self, blob: &Digest) {
        if self.config.window_ms == 0 {
            return;
        }
        let now = self.now();
        let mut blobs = self.lock();
        if blobs.len() >= MAX_BLOBS && !blobs.contains_key(blob) {
            if let Some(oldest) = blobs.iter().min_by_key(|(_, (_, used))| *used).map(|(d, _)| *d) {
                blobs.remove(&oldest);
            }
        }
        blobs.entry(*blob).or_insert_with(|| (Seeding::new(self.config), now)).1 = now;
    }

    /// Whether `child` may fetch `piece` of `blob` now. Always yes for a blob not marked.
    pub fn admit(&self, blob: &Digest, piece: u32, child: &Arc<str>) -> bool {
        let now = self.now();
        let mut blobs = self.lock();
        let Some((seeding, used)) = blobs.get_mut(blob) else { return true };
        *used = now;
        seeding.admit(piece, child, now)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn only_marked_blobs_are_rationed() {
        let seeds = Seeds::new(SeedingConfig { window_ms: 60_000 });
        let (a, b) = (Digest::of(b"a"), Digest::of(b"b"));
        seeds.mark(&a);
        let (c1, c2): (Arc<str>, Arc<str>) = ("child-1".into(), "child-2".into());
        assert!(seeds.admit(&a, 0, &c1));
        assert!(!seeds.admit(&a, 0, &c2));
        assert!(seeds.admit(&a, 0, &c1));
        assert!(seeds.admit(&b, 0, &c1) && seeds.admit(&b, 0, &c2), "b is not marked");
        let off = Seeds::new(SeedingConfig { window_ms: 0 });
        off.mark(&a);
        assert!(off.admit(&a, 0, &c1) && off.admit(&a, 0, &c2));
    }

    #[test]
    fn the_table_is_bounded() {
        let seeds = Seeds::new(SeedingConfig::default());
        for i in 0..(MAX_BLOBS as u32 + 10) {
            seeds.mark(&Digest::of(&i.to_le_bytes()));
        }
        assert_eq!(seeds.lock().len(), MAX_BLOBS);
    }
}

//! Pins: blobs in use (served or downloading), which eviction must leave alone.

use std::collections::HashMap;
use std::sync::{Arc, Mutex};

use shoal_core::Digest;

/// Blobs in use (served or downloading), which eviction must leave alone.
#[derive(Default, Clone)]
pub struct Pins {
    counts: Arc<Mutex<HashMap<Digest, usize>>>,
}

/// Keeps a blob pinned until dropped.
pub struct Pin {
    pins: Pins,
    digest: Digest,
}

impl Pins {
    /// Pins `digest`.
    pub fn pin(&self, digest: Digest) -> Pin {
        *self.lock().entry(digest).or_insert(0) += 1;
        Pin { pins: self.clone(), digest }
    }

    /// Runs `f` with the set of pinned digests locked, so no pin can start meanwhile.
    pub fn with_locked<T>(&self, f: impl FnOnce(&HashMap<Digest, usize>) -> T) -> T {
        f(&self.lock())
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, HashMap<Digest, usize>> {
        self.counts.lock().unwrap_or_else(|p| p.into_inner())
    }
}

impl Drop for Pin {
    fn drop(&mut self) {
        let mut counts = self.pins.lock();
        if let Some(n) = counts.get_mut(&self.digest) {
            *n -= 1;
            if *n == 0 {
                counts.remove(&self.digest);
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn pins_count_and_release() {
        let pins = Pins::default();
        let d = Digest::of(b"x");
        let a = pins.pin(d);
        let b = pins.pin(d);
        assert_eq!(pins.with_locked(|m| m.get(&d).copied()), Some(2));
        drop(a);
        drop(b);
        assert_eq!(pins.with_locked(|m| m.get(&d).copied()), None);
    }
}

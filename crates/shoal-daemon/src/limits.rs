//! Bandwidth limits: one token bucket per traffic class (upload to peers, download from peers,
//! fetch from origin), in bytes per second, built on governor.
//!
//! Cells are KiB so that rates up to terabytes per second fit governor's u32 quotas; the burst is
//! a tenth of a second of traffic, so a measured rate stays close to the limit.

use std::num::NonZeroU32;

use governor::{DefaultDirectRateLimiter, Quota, RateLimiter};

const CELL: u64 = 1024;

/// A byte-rate limit; `unlimited()` never waits.
pub struct Limiter {
    inner: Option<(DefaultDirectRateLimiter, u32)>,
    rate: u64,
}

impl Limiter {
    /// A limit of `bytes_per_sec`; 0 means unlimited.
    pub fn new(bytes_per_sec: u64) -> Self {
        let cells = (bytes_per_sec / CELL).clamp(if bytes_per_sec == 0 { 0 } else { 1 }, u64::from(u32::MAX));
        let Some(per_sec) = NonZeroU32::new(cells as u32) else {
            return Self::unlimited();
        };
        let burst = NonZeroU32::new((per_sec.get() / 10).max(64).min(per_sec.get())).unwrap_or(per_sec);
        let limiter = RateLimiter::direct(Quota::per_second(per_sec).allow_burst(burst));
        Self { inner: Some((limiter, burst.get())), rate: bytes_per_sec }
    }

    /// No limit.
    pub fn unlimited() -> Self {
        Self { inner: None, rate: 0 }
    }

    /// The configured rate in bytes per second (0 = unlimited).
    pub fn rate(&self) -> u64 {
        self.rate
    }

    /// Waits until `bytes` may pass.
    pub async fn acquire(&self, bytes: u64) {
        let Some((limiter, burst)) = &self.inner else {
            return;
        };
        let mut cells = bytes.div_ceil(CELL);
        while cells > 0 {
            let n = cells.min(u64::from(*burst)) as u32;
            if let Some(n) = NonZeroU32::new(n) {
                // n never exceeds the burst, so this cannot fail.
                let _ = limiter.until_n_ready(n).await;
            }
            cells -= u64::from(n);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::time::Instant;

    #[tokio::test]
    async fn holds_the_rate_within_ten_percent() {
        let rate = 4 << 20;
        let l = Limiter::new(rate);
        let start = Instant::now();
        let total = 2 * rate; // two seconds' worth, minus the initial burst
        let mut sent = 0;
        while sent < total {
            l.acquire(64 << 10).await;
            sent += 64 << 10;
        }
        let burst = (rate / CELL / 10) * CELL;
        let expected = (total - burst) as f64 / rate as f64;
        let took = start.elapsed().as_secs_f64();
        assert!((took - expected).abs() / expected < 0.10, "took {took:.3}s, expected {expected:.3}s");
    }

    #[tokio::test]
    async fn unlimited_never_waits() {
        let l = Limiter::new(0);
        let start = Instant::now();
        l.acquire(u64::MAX / 2).await;
        assert!(start.elapsed().as_millis() < 50);
        assert_eq!(l.rate(), 0);
    }
}

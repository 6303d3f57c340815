//! Tuning of the child machine. `Default` gives the values the daemon runs with.

use crate::picker::PickerConfig;
use crate::seeding::SeedingConfig;

/// Times are milliseconds of the caller's clock.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct ChildConfig {
    /// Piece picking rules.
    pub picker: PickerConfig,
    /// Piece requests in flight at once, over all parents (hedges included). Default 16.
    pub max_in_flight: usize,
    /// A parent with requests in flight that sends no byte for this long is stalled: its
    /// requests are cancelled and asked of others, and it gets no new request for
    /// [`ChildConfig::suspend_ms`]. Default 1500 (replaced within 2 s). Smaller: faster
    /// failover, more false alarms behind a congested link or a busy CPU.
    pub progress_deadline_ms: u64,
    /// How long a stalled parent is left alone. Default 2000.
    pub suspend_ms: u64,
    /// A request still running after this long (and after three times the usual piece time)
    /// is also asked of a second parent; the first answer wins. Default 1000.
    pub hedge_after_ms: u64,
    /// When every missing piece is in flight, requests older than this are hedged. Default 500.
    pub endgame_hedge_after_ms: u64,
    /// Failures (I/O errors, stalls) of one parent after which it is dropped. Default 3.
    pub parent_failures: u32,
    /// Without a new piece for this long, ask the scheduler again. Default 10 s: behind a capped
    /// link a parent shared by many children legitimately takes seconds per round of pieces,
    /// and every early give-up costs an extra origin copy.
    pub stall_ms: u64,
    /// Stalls after which the origin takes over. Default 3.
    pub stalls_before_origin: u32,
    /// Every parent dropped: the scheduler is asked again at once (once until a parent is live
    /// again). Without a scheduler, the origin takes over when no live parent (none dropped or
    /// stalled) comes within this long. Default 500 (with the progress deadline: replaced by
    /// the origin within 2 s).
    pub orphan_ms: u64,
    /// After the origin failed (unreachable, refusing, cut short), it is not asked again for
    /// this long: the download goes back to parents meanwhile (a site cut off from the
    /// origin still holds the blob). Default 2000.
    pub origin_retry_ms: u64,
    /// Origin failures in a row, with no piece from a parent between them, after which the
    /// download gives up (the origin's last error goes to the readers). Default 2.
    pub origin_failures: u32,
    /// A piece a parent refused as busy is not asked of it again for this long. Default: the
    /// parent's seeding window.
    pub busy_backoff_ms: u64,
    /// Hedge races a parent may lose before it gets one request at a time. Default 2.
    pub slow_after_lost_races: u32,
}

impl Default for ChildConfig {
    fn default() -> Self {
        Self {
            picker: PickerConfig::default(),
            max_in_flight: 16,
            progress_deadline_ms: 1500,
            suspend_ms: 2000,
            hedge_after_ms: 1000,
            endgame_hedge_after_ms: 500,
            parent_failures: 3,
            stall_ms: 10_000,
            stalls_before_origin: 3,
            orphan_ms: 500,
            origin_retry_ms: 2000,
            origin_failures: 2,
            busy_backoff_ms: SeedingConfig::DEFAULT_WINDOW_MS,
            slow_after_lost_races: 2,
        }
    }
}

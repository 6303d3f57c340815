//! The wall clock, in the one unit every record uses: unix milliseconds. Durable records
//! (grants, access times, pins, tag sightings) and answers to other members carry it; timers
//! use `Instant`, never this.

use std::time::{SystemTime, UNIX_EPOCH};

/// Unix milliseconds now (0 on a clock set before 1970).
pub fn now_ms() -> u64 {
    SystemTime::now().duration_since(UNIX_EPOCH).map_or(0, |d| d.as_millis() as u64)
}

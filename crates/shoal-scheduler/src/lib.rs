//! `shoal scheduler`: a thin tonic shell around [`shoal_core::sched::Scheduler`].
//!
//! It owns no logic of its own: it converts messages, passes time in, relays decisions and new
//! piece digests to the peers of a task, and exports metrics. All state is soft, rebuilt from
//! daemon announcements after a restart.
#![warn(missing_docs)]

mod convert;
mod metrics;
mod service;
pub mod session;
pub mod tls;

pub use metrics::SchedulerMetrics;
pub use service::{serve, Listeners, SchedulerService};

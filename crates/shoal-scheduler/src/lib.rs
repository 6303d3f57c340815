//! `shoal scheduler`: a thin tonic shell around [`shoal_core::sched::Scheduler`].
//!
//! It owns no logic of its own: it converts messages, passes time in, relays decisions and new
//! piece digests to the peers of a task, and exports metrics. All state is soft, rebuilt from
//! daemon announcements after a restart. Preheat jobs (`preheat`, around
//! [`shoal_core::preheat::Preheats`]) go to connected daemons over their job streams; the
//! preheat HTTP API (`http_api`, `notify`) serves scripts, registries and Harbor.
#![warn(missing_docs)]

mod convert;
pub mod http_api;
mod metrics;
pub mod notify;
pub mod preheat;
mod service;
pub mod session;
pub mod tls;

pub use metrics::SchedulerMetrics;
pub use service::{serve, Listeners, PreheatListener, SchedulerService, ServeConfig};

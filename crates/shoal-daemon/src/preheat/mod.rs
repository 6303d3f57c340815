//! Preheat jobs on this daemon: a job stream to every configured scheduler, on which the
//! scheduler hands this daemon images to fetch before a rollout (one daemon per site) and
//! cancels them; progress is reported every [`REPORT_EVERY`] (the scheduler gives the job to
//! another daemon of the site if it hears nothing), then done or failed.
//!
//! The stream is opened after the host is announced (the scheduler refuses it before), and
//! opened again whenever it ends. The fetching itself is `run`'s; nothing here decides which
//! daemon runs what (that is `shoal_core::preheat`, in the scheduler).

pub(crate) mod run;

use std::collections::HashMap;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use shoal_core::preheat::{ImageRef, Platform, Progress};
use shoal_proto::scheduler as pb;
use shoal_proto::scheduler::scheduler_client::SchedulerClient;
use tokio::sync::mpsc;
use tokio::task::AbortHandle;
use tonic::transport::Channel;
use url::Url;

pub use run::Ctx;

/// How often a running job reports its progress (also its heartbeat).
pub const REPORT_EVERY: Duration = Duration::from_secs(1);
/// Wait before opening a job stream again; doubled after each refusal up to [`MAX_RETRY`].
const RETRY: Duration = Duration::from_millis(500);
/// Longest wait between two attempts to open a job stream.
const MAX_RETRY: Duration = Duration::from_secs(10);
/// Jobs this daemon runs at once; more are refused (the scheduler gives them to another).
pub const MAX_JOBS: usize = 8;

type Reports = mpsc::UnboundedSender<pb::PreheatReport>;

/// Keeps a job stream open with every scheduler, forever.
pub async fn serve(schedulers: Vec<(Url, SchedulerClient<Channel>)>, host_id: String, ctx: Ctx) {
    let streams = schedulers.into_iter().map(|(url, client)| stream_forever(url, client, host_id.clone(), ctx.clone()));
    futures::future::join_all(streams).await;
}

async fn stream_forever(url: Url, mut client: SchedulerClient<Channel>, host_id: String, ctx: Ctx) {
    let mut wait = RETRY;
    loop {
        let (tx, rx) = mpsc::unbounded_channel();
        let hello = pb::PreheatHello { host_id: host_id.clone() };
        let _ = tx.send(report(pb::preheat_report::Report::Hello(hello)));
        match client.preheat_jobs(tokio_stream::wrappers::UnboundedReceiverStream::new(rx)).await {
            Ok(resp) => {
                wait = RETRY;
                tracing::debug!(scheduler = %url, "preheat job stream open");
                take_jobs(resp.into_inner(), &tx, &ctx).await;
            }
            // Before its first announcement the scheduler does not know this host: the first
            // refusals are expected, and a scheduler that keeps refusing is asked less often.
            Err(status) => {
                if wait >= MAX_RETRY {
                    tracing::warn!(scheduler = %url, error = %status.message(), "preheat job stream refused");
                }
                wait = (wait * 2).min(MAX_RETRY);
            }
        }
        tokio::time::sleep(wait).await;
    }
}

fn report(r: pb::preheat_report::Report) -> pb::PreheatReport {
    pb::PreheatReport { report: Some(r) }
}

/// Runs the jobs of one stream until it ends; then aborts them (the scheduler gives them to
/// another daemon, or back to this one on the next stream).
async fn take_jobs(mut jobs: tonic::Streaming<pb::PreheatJob>, tx: &Reports, ctx: &Ctx) {
    let running: Arc<Mutex<HashMap<u64, AbortHandle>>> = Arc::default();
    while let Ok(Some(job)) = jobs.message().await {
        match job.job {
            Some(pb::preheat_job::Job::Start(start)) => {
                let id = start.job_id;
                let mut map = running.lock().unwrap_or_else(|p| p.into_inner());
                map.retain(|_, h| !h.is_finished());
                if map.contains_key(&id) {
                    continue;
                }
                if map.len() >= MAX_JOBS {
                    let failed = pb::PreheatFailed {
                        job_id: id,
                        message: "this daemon runs too many preheat jobs".into(),
                        permanent: false,
                    };
                    let _ = tx.send(report(pb::preheat_report::Report::Failed(failed)));
                    continue;
                }
                let handle = tokio::spawn(run_job(start, tx.clone(), ctx.clone()));
                map.insert(id, handle.abort_handle());
            }
            Some(pb::preheat_job::Job::Cancel(c)) => {
                if let Some(h) = running.lock().unwrap_or_else(|p| p.into_inner()).remove(&c.job_id) {
                    tracing::info!(job = c.job_id, "preheat job cancelled by the scheduler");
                    h.abort();
                }
            }
            None => {}
        }
    }
    for (_, h) in running.lock().unwrap_or_else(|p| p.into_inner()).drain() {
        h.abort();
    }
}

/// One job: parse, run, report progress every [`REPORT_EVERY`], then done or failed.
async fn run_job(start: pb::PreheatStart, tx: Reports, ctx: Ctx) {
    let id = start.job_id;
    let parsed = ImageRef::parse(&start.image).and_then(|image| {
        let platforms = start.platforms.iter().map(|p| Platform::parse(p)).collect::<Result<Vec<_>, _>>()?;
        Ok((image, platforms))
    });
    let (image, platforms) = match parsed {
        Ok(p) => p,
        Err(e) => {
            let failed = pb::PreheatFailed { job_id: id, message: e.to_string(), permanent: true };
            let _ = tx.send(report(pb::preheat_report::Report::Failed(failed)));
            return;
        }
    };
    tracing::info!(job = id, %image, "preheat job started");
    let progress = Mutex::new(Progress::default());
    let work = run::preheat(&ctx, &image, &platforms, &progress);
    tokio::pin!(work);
    let mut tick = tokio::time::interval(REPORT_EVERY);
    let outcome = loop {
        tokio::select! {
            r = &mut work => break r,
            _ = tick.tick() => {
                let p = *progress.lock().unwrap_or_else(|p| p.into_inner());
                let _ = tx.send(report(pb::preheat_report::Report::Progress(update(id, p))));
            }
        }
    };
    let r = match outcome {
        Ok(p) => {
            tracing::info!(job = id, %image, blobs = p.blobs_total, fetched = p.bytes_fetched, "preheat job done");
            pb::preheat_report::Report::Done(update(id, p))
        }
        Err(e) => {
            tracing::warn!(job = id, %image, error = %e, permanent = e.permanent, "preheat job failed");
            pb::preheat_report::Report::Failed(pb::PreheatFailed {
                job_id: id,
                message: e.message,
                permanent: e.permanent,
            })
        }
    };
    let _ = tx.send(report(r));
}

fn update(job_id: u64, p: Progress) -> pb::PreheatUpdate {
    let progress = pb::PreheatProgress {
        blobs_done: p.blobs_done,
        blobs_total: p.blobs_total,
        bytes_done: p.bytes_done,
        bytes_total: p.bytes_total,
        bytes_fetched: p.bytes_fetched,
    };
    pb::PreheatUpdate { job_id, progress: Some(progress) }
}

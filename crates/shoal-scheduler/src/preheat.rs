//! Preheat jobs in the scheduler: a thin shell around [`shoal_core::preheat::Preheats`]. It
//! passes the time in, keeps one job stream (outbox) per connected daemon, delivers the
//! machine's start and cancel commands to them, and converts statuses for gRPC and HTTP.
//!
//! It decides nothing itself and never talks to a registry: the daemons resolve and fetch.

use std::collections::HashMap;
use std::sync::{Mutex, MutexGuard};
use std::time::{Duration, Instant};

use shoal_core::preheat::{Command, Config, JobId, JobView, Preheats, Progress, Request, State, SubmitError};
use shoal_proto::scheduler as pb;
use shoal_proto::scheduler::preheat_report::Report;
use tokio::sync::mpsc;
use tonic::Status;

/// How often the time-outs are applied.
pub const TICK: Duration = Duration::from_secs(1);

/// Where a daemon's jobs go.
pub type JobOutbox = mpsc::UnboundedSender<Result<pb::PreheatJob, Status>>;

/// The scheduler's preheat jobs and the daemons connected to run them.
pub struct Preheater {
    core: Mutex<Preheats>,
    epoch: Instant,
    /// Per host: the generation of its stream (a reconnect replaces it) and its outbox.
    workers: Mutex<HashMap<String, (u64, JobOutbox)>>,
    next_generation: Mutex<u64>,
}

impl Preheater {
    /// No jobs, no workers.
    pub fn new(config: Config) -> Self {
        Self {
            core: Mutex::new(Preheats::new(config)),
            epoch: Instant::now(),
            workers: Mutex::new(HashMap::new()),
            next_generation: Mutex::new(0),
        }
    }

    /// Runs `f` on the machine with the current time, then delivers the commands it made.
    fn with<T>(&self, f: impl FnOnce(&mut Preheats, u64) -> T) -> T {
        let now = self.epoch.elapsed().as_millis() as u64;
        let (out, commands) = {
            let mut core = self.core();
            let out = f(&mut core, now);
            (out, core.take_commands())
        };
        self.deliver(commands);
        out
    }

    fn core(&self) -> MutexGuard<'_, Preheats> {
        self.core.lock().unwrap_or_else(|p| p.into_inner())
    }

    fn workers(&self) -> MutexGuard<'_, HashMap<String, (u64, JobOutbox)>> {
        self.workers.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// Sends each command to its worker; a worker whose stream is gone leaves (its parts go to
    /// other workers, whose commands are delivered in turn).
    fn deliver(&self, mut commands: Vec<Command>) {
        while !commands.is_empty() {
            let mut gone = Vec::new();
            {
                let workers = self.workers();
                for command in commands.drain(..) {
                    let (host, job) = match command {
                        Command::Start { host, job, request } => (host, start(job, &request)),
                        Command::Cancel { host, job } => (host, cancel(job)),
                    };
                    let sent = workers.get(&host).is_some_and(|(_, outbox)| outbox.send(Ok(job)).is_ok());
                    if !sent {
                        gone.push(host);
                    }
                }
            }
            if gone.is_empty() {
                break;
            }
            let now = self.epoch.elapsed().as_millis() as u64;
            let mut core = self.core();
            for host in gone {
                self.workers().remove(&host);
                core.worker_left(now, &host);
            }
            commands = core.take_commands();
        }
    }

    /// Submits a request: its job (new, or the running one it joined) and whether it joined.
    pub fn submit(&self, request: Request) -> Result<(JobView, bool), SubmitError> {
        self.with(|c, now| {
            let (id, joined) = c.submit(now, request)?;
            Ok((c.job(id).expect("a job just submitted exists"), joined))
        })
    }

    /// Jobs running, and daemons with a job stream open.
    pub fn counts(&self) -> (usize, usize) {
        (self.core().running(), self.workers().len())
    }

    /// A job's status.
    pub fn job(&self, id: JobId) -> Option<JobView> {
        self.core().job(id)
    }

    /// A daemon of `site` opened its job stream; returns the stream's generation.
    pub fn worker_joined(&self, host: &str, site: &str, outbox: JobOutbox) -> u64 {
        let generation = {
            let mut next = self.next_generation.lock().unwrap_or_else(|p| p.into_inner());
            *next += 1;
            *next
        };
        self.workers().insert(host.to_owned(), (generation, outbox));
        self.with(|c, now| c.worker_joined(now, host, site));
        tracing::info!(host, site, "daemon ready for preheat jobs");
        generation
    }

    /// A daemon's job stream (of `generation`) ended.
    pub fn worker_left(&self, host: &str, generation: u64) {
        let current = {
            let mut workers = self.workers();
            let current = workers.get(host).is_some_and(|(g, _)| *g == generation);
            if current {
                workers.remove(host);
            }
            current
        };
        if current {
            self.with(|c, now| c.worker_left(now, host));
        }
    }

    /// One report of a daemon's job stream.
    pub fn report(&self, host: &str, report: Report) {
        match report {
            Report::Hello(_) => tracing::warn!(host, "second hello on a preheat stream ignored"),
            Report::Progress(u) => self.with(|c, now| c.progress(now, host, u.job_id, progress(u.progress))),
            Report::Done(u) => {
                tracing::info!(host, job = u.job_id, "preheat done on this host");
                self.with(|c, now| c.done(now, host, u.job_id, progress(u.progress)));
            }
            Report::Failed(f) => {
                let message: String = f.message.chars().take(1024).collect();
                tracing::warn!(host, job = f.job_id, error = %message, permanent = f.permanent, "preheat failed on this host");
                self.with(|c, now| c.failed(now, host, f.job_id, &message, f.permanent));
            }
        }
    }

    /// Applies the time-outs every [`TICK`], forever.
    pub async fn tick_forever(self: std::sync::Arc<Self>) {
        loop {
            tokio::time::sleep(TICK).await;
            self.with(|c, now| c.tick(now));
        }
    }
}

fn start(job: JobId, request: &Request) -> pb::PreheatJob {
    let start = pb::PreheatStart {
        job_id: job,
        image: request.image.to_string(),
        platforms: request.platforms.iter().map(ToString::to_string).collect(),
    };
    pb::PreheatJob { job: Some(pb::preheat_job::Job::Start(start)) }
}

fn cancel(job: JobId) -> pb::PreheatJob {
    pb::PreheatJob { job: Some(pb::preheat_job::Job::Cancel(pb::PreheatCancel { job_id: job })) }
}

fn progress(p: Option<pb::PreheatProgress>) -> Progress {
    let p = p.unwrap_or_default();
    Progress {
        blobs_done: p.blobs_done,
        blobs_total: p.blobs_total,
        bytes_done: p.bytes_done,
        bytes_total: p.bytes_total,
        bytes_fetched: p.bytes_fetched,
    }
}

/// A job's status as a gRPC message.
pub fn status(view: &JobView, joined: bool) -> pb::PreheatStatus {
    let sites = view
        .sites
        .iter()
        .map(|s| pb::PreheatSite {
            site: s.site.clone(),
            host_id: s.host.clone().unwrap_or_default(),
            state: state(s.state) as i32,
            progress: Some(pb::PreheatProgress {
                blobs_done: s.progress.blobs_done,
                blobs_total: s.progress.blobs_total,
                bytes_done: s.progress.bytes_done,
                bytes_total: s.progress.bytes_total,
                bytes_fetched: s.progress.bytes_fetched,
            }),
            error: s.error.clone().unwrap_or_default(),
        })
        .collect();
    pb::PreheatStatus {
        id: view.id,
        image: view.image.clone(),
        state: state(view.state) as i32,
        sites,
        joined,
        platforms: view.platforms.clone(),
    }
}

fn state(s: State) -> pb::PreheatState {
    match s {
        State::Waiting => pb::PreheatState::Waiting,
        State::Running => pb::PreheatState::Running,
        State::Done => pb::PreheatState::Done,
        State::Failed => pb::PreheatState::Failed,
    }
}

/// A submission refused, as a gRPC status.
pub fn refused(e: &SubmitError) -> Status {
    match e {
        SubmitError::NoHosts => Status::failed_precondition(e.to_string()),
        SubmitError::TooMany(_) => Status::resource_exhausted(e.to_string()),
    }
}

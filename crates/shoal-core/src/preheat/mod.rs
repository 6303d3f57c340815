//! Preheat decisions: which live host of each site fetches an image before a rollout, what
//! state each job is in, and what happens when a host is slow, fails or goes away.
//!
//! A plain state machine in the style of `sched`: hosts able to run jobs (workers), requests,
//! progress reports and the time (milliseconds, passed in) go in; commands for the workers
//! ([`Command::Start`], [`Command::Cancel`]) come out through [`Preheats::take_commands`].
//! It never resolves an image, touches a network or reads a clock; the scheduler service is a
//! thin shell around it and the daemons do the fetching.
//!
//! Rules:
//! - One job per distinct request: a request equal to a job still running joins it.
//! - A job has one part per site: the named sites, or every site with a worker when it is
//!   submitted. Each part runs on one worker of its site at a time, the least busy one.
//! - A part whose worker goes away, sends nothing for [`Config::progress_timeout_ms`] or fails
//!   is given to another worker of the site (the failed or silent one is not tried again),
//!   at most [`Config::max_attempts`] times. A part that finds no worker within
//!   [`Config::wait_for_host_ms`] fails; so does one still running after [`Config::job_timeout_ms`].
//! - A failure the worker calls permanent (the image itself: unknown, refused, too large) fails
//!   the part at once: another worker would get the same answer.
//! - Bounded: at most [`Config::max_jobs`] jobs run at once; finished jobs are kept for
//!   [`Config::keep_finished_ms`], at most [`Config::keep_finished`] of them.

mod image;
#[cfg(test)]
mod tests;

use std::collections::{BTreeMap, BTreeSet};

pub use image::{ImageRef, Platform, Request, RequestError, MAX_PLATFORMS, MAX_SITES};

/// Bounds and time-outs of the preheat machine.
#[derive(Debug, Clone, PartialEq, Eq, serde::Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct Config {
    /// Jobs running at once; more are refused until one ends.
    pub max_jobs: usize,
    /// Finished jobs kept for their status to be read.
    pub keep_finished: usize,
    /// How long a finished job is kept, ms.
    pub keep_finished_ms: u64,
    /// A running part whose worker reports nothing for this long is given to another, ms.
    pub progress_timeout_ms: u64,
    /// A part that finds no worker in its site for this long fails, ms.
    pub wait_for_host_ms: u64,
    /// Workers a part is given to before it fails.
    pub max_attempts: u32,
    /// A job still running after this long fails, ms.
    pub job_timeout_ms: u64,
}

impl Default for Config {
    fn default() -> Self {
        Self {
            max_jobs: 64,
            keep_finished: 256,
            keep_finished_ms: 3_600_000,
            progress_timeout_ms: 30_000,
            wait_for_host_ms: 30_000,
            max_attempts: 3,
            job_timeout_ms: 4 * 3_600_000,
        }
    }
}

/// A job's id (sequential, never reused by one scheduler run).
pub type JobId = u64;

/// What a worker reports of a job as it runs.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, serde::Serialize)]
pub struct Progress {
    /// Blobs (configs and layers) complete on the worker.
    pub blobs_done: u32,
    /// Blobs of the image (of the platforms asked for).
    pub blobs_total: u32,
    /// Bytes of the complete blobs.
    pub bytes_done: u64,
    /// Bytes of every blob.
    pub bytes_total: u64,
    /// Bytes this job downloaded (blobs the worker did not hold yet): 0 for an image already
    /// preheated.
    pub bytes_fetched: u64,
}

/// Where a job, or one site's part of it, stands.
#[derive(Debug, Clone, Copy, PartialEq, Eq, serde::Serialize)]
#[serde(rename_all = "snake_case")]
pub enum State {
    /// Waiting for a worker.
    Waiting,
    /// A worker is fetching.
    Running,
    /// Every blob is on a worker of the site (of every site, for a job).
    Done,
    /// Given up (for a job: at least one site failed).
    Failed,
}

/// One site's part of a job, as shown to clients.
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize)]
pub struct SiteView {
    /// The site.
    pub site: String,
    /// Its state.
    pub state: State,
    /// The worker running (or that ran) it.
    pub host: Option<String>,
    /// The last progress reported.
    pub progress: Progress,
    /// Why it failed.
    pub error: Option<String>,
}

/// A job, as shown to clients.
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize)]
pub struct JobView {
    /// Its id.
    pub id: JobId,
    /// The image, as given.
    pub image: String,
    /// Platforms asked for (empty: all).
    pub platforms: Vec<String>,
    /// Running until every site is done or failed; then done, or failed if any site failed.
    pub state: State,
    /// Per site.
    pub sites: Vec<SiteView>,
}

/// What a worker must do.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Command {
    /// Fetch every blob of the request's image.
    Start {
        /// The worker.
        host: String,
        /// The job.
        job: JobId,
        /// What to fetch.
        request: Request,
    },
    /// Stop working on the job (it went to another worker, or failed).
    Cancel {
        /// The worker.
        host: String,
        /// The job.
        job: JobId,
    },
}

/// Why a preheat was not accepted.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum SubmitError {
    /// No site named and no worker live: nobody could fetch. Remedy: start daemons with this
    /// scheduler, or wait for them to connect.
    #[error("no daemon is connected to this scheduler to preheat on")]
    NoHosts,
    /// [`Config::max_jobs`] jobs are running. Remedy: wait, or raise the bound.
    #[error("{0} preheat jobs are running already; try again later")]
    TooMany(usize),
}

#[derive(Debug, Clone)]
struct Worker {
    site: String,
    jobs: BTreeSet<JobId>,
}

#[derive(Debug, Clone)]
struct Part {
    state: State,
    host: Option<String>,
    /// Workers that failed or went silent on this part.
    tried: BTreeSet<String>,
    attempts: u32,
    /// When it started waiting, or last heard from its worker.
    since: u64,
    progress: Progress,
    error: Option<String>,
}

#[derive(Debug, Clone)]
struct Job {
    request: Request,
    created: u64,
    finished: Option<u64>,
    parts: BTreeMap<String, Part>,
}

/// Every preheat job and the workers that can run them.
#[derive(Debug, Default)]
pub struct Preheats {
    config: Config,
    workers: BTreeMap<String, Worker>,
    jobs: BTreeMap<JobId, Job>,
    next: JobId,
    commands: Vec<Command>,
}

impl Preheats {
    /// An empty machine.
    pub fn new(config: Config) -> Self {
        Self { config, next: 1, ..Self::default() }
    }

    /// A host of `site` can run jobs now (its job stream opened). Waiting parts of its site
    /// are given to it at once. A host that was a worker already (its stream was opened
    /// again, which ends the jobs of the old one) is told to start its parts again.
    pub fn worker_joined(&mut self, now: u64, host: &str, site: &str) {
        let jobs = self.workers.remove(host).map(|w| w.jobs).unwrap_or_default();
        for &id in &jobs {
            let restart = self.part_of(id, host).map(|part| part.since = now).is_some();
            if let (true, Some(job)) = (restart, self.jobs.get(&id)) {
                let request = job.request.clone();
                self.commands.push(Command::Start { host: host.to_owned(), job: id, request });
            }
        }
        self.workers.insert(host.to_owned(), Worker { site: site.to_owned(), jobs });
        self.assign(now);
    }

    /// A host can no longer run jobs (its stream closed): its parts go to other workers.
    pub fn worker_left(&mut self, now: u64, host: &str) {
        let Some(worker) = self.workers.remove(host) else { return };
        for id in worker.jobs {
            if let Some(part) = self.part_of(id, host) {
                part.state = State::Waiting;
                part.host = None;
                part.since = now;
            }
        }
        self.assign(now);
    }

    /// Accepts a request: a new job, or the running job of an equal request (`true`: joined).
    pub fn submit(&mut self, now: u64, request: Request) -> Result<(JobId, bool), SubmitError> {
        if let Some((&id, _)) = self.jobs.iter().find(|(_, j)| j.finished.is_none() && j.request == request) {
            return Ok((id, true));
        }
        let running = self.jobs.values().filter(|j| j.finished.is_none()).count();
        if running >= self.config.max_jobs {
            return Err(SubmitError::TooMany(running));
        }
        let sites: BTreeSet<String> = if request.sites.is_empty() {
            self.workers.values().map(|w| w.site.clone()).collect()
        } else {
            request.sites.iter().cloned().collect()
        };
        if sites.is_empty() {
            return Err(SubmitError::NoHosts);
        }
        let part = Part {
            state: State::Waiting,
            host: None,
            tried: BTreeSet::new(),
            attempts: 0,
            since: now,
            progress: Progress::default(),
            error: None,
        };
        let id = self.next;
        self.next += 1;
        let parts = sites.into_iter().map(|s| (s, part.clone())).collect();
        self.jobs.insert(id, Job { request, created: now, finished: None, parts });
        self.assign(now);
        Ok((id, false))
    }

    /// A worker's progress on a job; ignored unless it is the part's current worker.
    pub fn progress(&mut self, now: u64, host: &str, job: JobId, progress: Progress) {
        if let Some(part) = self.running_part(job, host) {
            part.progress = progress;
            part.since = now;
        }
    }

    /// A worker holds every blob of the job.
    pub fn done(&mut self, now: u64, host: &str, job: JobId, progress: Progress) {
        if let Some(part) = self.running_part(job, host) {
            part.progress = progress;
            part.state = State::Done;
            part.since = now;
        }
        self.release(host, job);
        self.finish_jobs(now);
    }

    /// A worker gave up on a job; `permanent` when another worker would fail the same way.
    pub fn failed(&mut self, now: u64, host: &str, job: JobId, message: &str, permanent: bool) {
        let max_attempts = self.config.max_attempts;
        if let Some(part) = self.running_part(job, host) {
            part.error = Some(format!("{host}: {message}"));
            part.tried.insert(host.to_owned());
            part.host = Some(host.to_owned());
            part.since = now;
            part.state = if permanent || part.attempts >= max_attempts { State::Failed } else { State::Waiting };
        }
        self.release(host, job);
        self.assign(now);
        self.finish_jobs(now);
    }

    /// Applies the time-outs and forgets old finished jobs; call it every second or so.
    pub fn tick(&mut self, now: u64) {
        let c = self.config.clone();
        let mut cancels = Vec::new();
        for (&id, job) in &mut self.jobs {
            if job.finished.is_some() {
                continue;
            }
            let expired = now.saturating_sub(job.created) >= c.job_timeout_ms;
            for (site, part) in &mut job.parts {
                let idle = now.saturating_sub(part.since);
                match part.state {
                    State::Running if expired || idle >= c.progress_timeout_ms => {
                        let host = part.host.clone().unwrap_or_default();
                        cancels.push((host.clone(), id));
                        part.tried.insert(host.clone());
                        let why = if expired { "the job timed out" } else { "no progress reported in time" };
                        part.error = Some(format!("{host}: {why}"));
                        part.state =
                            if expired || part.attempts >= c.max_attempts { State::Failed } else { State::Waiting };
                        part.since = now;
                    }
                    State::Waiting if expired || idle >= c.wait_for_host_ms => {
                        part.state = State::Failed;
                        let why = part.error.take().map(|e| format!(" (last: {e})")).unwrap_or_default();
                        part.error = Some(format!("no live host of site {site:?} could take it{why}"));
                    }
                    _ => {}
                }
            }
        }
        for (host, id) in cancels {
            self.release(&host, id);
            self.commands.push(Command::Cancel { host, job: id });
        }
        self.assign(now);
        self.finish_jobs(now);
        self.forget(now);
    }

    /// A job's status.
    pub fn job(&self, id: JobId) -> Option<JobView> {
        let job = self.jobs.get(&id)?;
        let sites = job
            .parts
            .iter()
            .map(|(site, p)| SiteView {
                site: site.clone(),
                state: p.state,
                host: p.host.clone(),
                progress: p.progress,
                error: p.error.clone(),
            })
            .collect();
        Some(JobView {
            id,
            image: job.request.image.to_string(),
            platforms: job.request.platforms.iter().map(ToString::to_string).collect(),
            state: job_state(job),
            sites,
        })
    }

    /// Jobs not finished yet.
    pub fn running(&self) -> usize {
        self.jobs.values().filter(|j| j.finished.is_none()).count()
    }

    /// The commands for workers decided since the last call.
    pub fn take_commands(&mut self) -> Vec<Command> {
        std::mem::take(&mut self.commands)
    }

    /// Gives every waiting part to the least busy worker of its site it has not tried.
    fn assign(&mut self, now: u64) {
        for (&id, job) in &mut self.jobs {
            if job.finished.is_some() {
                continue;
            }
            for (site, part) in &mut job.parts {
                if part.state != State::Waiting {
                    continue;
                }
                let pick = self
                    .workers
                    .iter()
                    .filter(|(h, w)| &w.site == site && !part.tried.contains(*h))
                    .min_by_key(|(h, w)| (w.jobs.len(), (*h).clone()))
                    .map(|(h, _)| h.clone());
                let Some(host) = pick else { continue };
                part.state = State::Running;
                part.host = Some(host.clone());
                part.attempts += 1;
                part.since = now;
                if let Some(w) = self.workers.get_mut(&host) {
                    w.jobs.insert(id);
                }
                self.commands.push(Command::Start { host, job: id, request: job.request.clone() });
            }
        }
    }

    /// Marks finished the jobs whose every part is done or failed.
    fn finish_jobs(&mut self, now: u64) {
        for job in self.jobs.values_mut() {
            if job.finished.is_none() && job.parts.values().all(|p| matches!(p.state, State::Done | State::Failed)) {
                job.finished = Some(now);
            }
        }
    }

    /// Drops finished jobs older than the keep time, then the oldest beyond the keep count.
    fn forget(&mut self, now: u64) {
        let keep_ms = self.config.keep_finished_ms;
        self.jobs.retain(|_, j| j.finished.is_none_or(|at| now.saturating_sub(at) < keep_ms));
        let mut finished: Vec<(u64, JobId)> =
            self.jobs.iter().filter_map(|(&id, j)| j.finished.map(|at| (at, id))).collect();
        if finished.len() > self.config.keep_finished {
            finished.sort_unstable();
            let excess = finished.len() - self.config.keep_finished;
            for (_, id) in finished.into_iter().take(excess) {
                self.jobs.remove(&id);
            }
        }
    }

    fn part_of(&mut self, job: JobId, host: &str) -> Option<&mut Part> {
        let job = self.jobs.get_mut(&job).filter(|j| j.finished.is_none())?;
        job.parts.values_mut().find(|p| p.state == State::Running && p.host.as_deref() == Some(host))
    }

    fn running_part(&mut self, job: JobId, host: &str) -> Option<&mut Part> {
        self.part_of(job, host)
    }

    fn release(&mut self, host: &str, job: JobId) {
        if let Some(w) = self.workers.get_mut(host) {
            w.jobs.remove(&job);
        }
    }
}

fn job_state(job: &Job) -> State {
    if job.finished.is_none() {
        if job.parts.values().any(|p| p.state != State::Waiting) {
            return State::Running;
        }
        return State::Waiting;
    }
    if job.parts.values().all(|p| p.state == State::Done) {
        State::Done
    } else {
        State::Failed
    }
}

//! Blob tasks: one download per blob digest, shared by every request for that blob.
//!
//! A task owns a [`PieceWriter`] on a blocking thread and gets the missing pieces from the swarm
//! (parents chosen by the scheduler, see `swarm`) or straight from the origin when there is no
//! scheduler or the blob is a single piece. Readers join a task at any moment and stream from
//! its file as pieces land.
//! Pins (`store::pins`) mark blobs in use so eviction never removes one being served or downloaded.

use crate::clock::now_ms;
use std::collections::HashMap;
use std::fs::File;
use std::sync::atomic::Ordering;
use std::sync::{Arc, Mutex};
use std::time::Instant;

use shoal_core::{Digest, PieceLayout};
use tokio::sync::{mpsc, watch};

pub use crate::download::counters::TaskCounters;
use crate::download::error::DownloadError;
use crate::download::origin::{runs_of, verify, Chunk, OriginSource};
use crate::download::readers::Readers;
use crate::download::swarm::Swarm;
use crate::download::writer::{PieceWriter, Progress, State, Verified, WriteError};
use crate::limits::Limiter;
use crate::metrics::{Metrics, ResultLabels, SourceLabels};
use crate::origin::direct::DirectSource;
use crate::origin::OriginFetch;
use crate::store::meta::{Durability, MetaStore};
use crate::store::paths::Paths;
use crate::store::pins::{Pin, Pins};
use crate::store::space::{NoRoom, Reservation, Space};

/// Chunks queued between the network and the writer thread.
const WRITER_QUEUE: usize = 64;

/// Why a blob is not being cached: the caller serves it straight from the origin.
#[derive(Debug, thiserror::Error)]
pub enum Uncached {
    /// No room under the quota or the free-space floor.
    #[error(transparent)]
    NoRoom(#[from] NoRoom),
    /// The partial file or its record could not be set up (full, failing or read-only disk).
    #[error(transparent)]
    Store(#[from] WriteError),
}

impl Uncached {
    /// The `reason` label of `shoal_uncached_total`.
    pub fn reason(&self) -> &'static str {
        match self {
            Self::NoRoom(_) => "no_space",
            Self::Store(_) => "store_failed",
        }
    }
}

/// A download in progress that readers can join.
pub struct Task {
    /// The blob.
    pub digest: Digest,
    /// Its size and pieces.
    pub layout: PieceLayout,
    /// The partial file (stays readable after it is renamed into place).
    pub file: Arc<File>,
    progress: watch::Receiver<Progress>,
    /// When the download started.
    pub started: Instant,
    /// Bytes by source and parents used, for `shoal status`.
    pub counters: Arc<TaskCounters>,
    /// Where the responses streaming this blob read next: the download fetches those pieces
    /// first.
    pub readers: Arc<Readers>,
}

/// One running download, as `GET /status` on the admin listener shows it.
#[derive(Debug, Clone, serde::Serialize, serde::Deserialize)]
pub struct TaskStatus {
    /// Blob digest.
    pub digest: String,
    /// Blob size.
    pub size: u64,
    /// Pieces in the blob.
    pub pieces: u32,
    /// Pieces held.
    pub have: u32,
    /// Seconds since the download started.
    pub elapsed_secs: f64,
    /// Bytes from the origin.
    pub origin_bytes: u64,
    /// Bytes from parents.
    pub peer_bytes: u64,
    /// Parents used.
    pub parents: u32,
    /// Average download rate, bytes per second.
    pub rate: f64,
}

impl Task {
    /// A receiver of progress, for one reader.
    pub fn progress(&self) -> watch::Receiver<Progress> {
        self.progress.clone()
    }
}

/// A complete, verified blob on disk.
pub struct LocalBlob {
    /// Open file.
    pub file: File,
    /// Size in bytes.
    pub size: u64,
    /// Keeps it from eviction while served.
    pub pin: Pin,
}

/// All downloads of this daemon.
pub struct Tasks {
    paths: Paths,
    meta: Arc<dyn MetaStore>,
    metrics: Arc<Metrics>,
    pins: Pins,
    space: Arc<Space>,
    running: Mutex<HashMap<Digest, Arc<Task>>>,
    origin_limit: Arc<Limiter>,
    swarm: Option<Arc<Swarm>>,
    faults: crate::fault::Faults,
}

impl Tasks {
    /// A task registry over a data directory whose room is `space`.
    pub fn new(paths: Paths, meta: Arc<dyn MetaStore>, metrics: Arc<Metrics>, space: Arc<Space>) -> Self {
        Self {
            paths,
            meta,
            metrics,
            pins: space.pins().clone(),
            space,
            running: Mutex::new(HashMap::new()),
            origin_limit: Arc::new(Limiter::unlimited()),
            swarm: None,
            faults: crate::fault::Faults::default(),
        }
    }

    /// Paces origin fetches.
    pub fn with_origin_limit(mut self, limiter: Limiter) -> Self {
        self.origin_limit = Arc::new(limiter);
        self
    }

    /// Test-only faults (see [`crate::fault`]).
    pub fn with_faults(mut self, faults: crate::fault::Faults) -> Self {
        self.faults = faults;
        self
    }

    /// Gets pieces from the swarm (parents chosen by the scheduler) before the origin.
    pub fn with_swarm(mut self, swarm: Arc<Swarm>) -> Self {
        self.swarm = Some(swarm);
        self
    }

    /// The blob, if it is complete on disk; records the access.
    pub fn local(&self, digest: &Digest) -> Option<LocalBlob> {
        let pin = self.pins.pin(*digest);
        let mut record = self.meta.blob(digest).ok().flatten().filter(|r| r.is_complete())?;
        let file = File::open(self.paths.blob(digest)).ok()?;
        let size = file.metadata().ok()?.len();
        if size != record.layout.size {
            return None;
        }
        record.last_access = now_ms();
        let _ = self.meta.put_blob(digest, &record, Durability::Lazy);
        Some(LocalBlob { file, size, pin })
    }

    /// Whether this node has `digest` complete or downloading (a record read: no file is
    /// opened, the access time is not touched).
    pub fn holds(&self, digest: &Digest) -> bool {
        self.running(digest).is_some() || self.meta.blob(digest).ok().flatten().is_some_and(|r| r.is_complete())
    }

    /// The running download of `digest`, if any.
    pub fn running(&self, digest: &Digest) -> Option<Arc<Task>> {
        self.lock().get(digest).cloned()
    }

    /// The file and layout of a complete blob, without recording an access.
    pub fn complete_file(&self, digest: &Digest) -> Option<(File, PieceLayout)> {
        let record = self.meta.blob(digest).ok().flatten().filter(|r| r.is_complete())?;
        Some((File::open(self.paths.blob(digest)).ok()?, record.layout))
    }

    /// Every running download.
    pub fn status(&self) -> Vec<TaskStatus> {
        let running: Vec<Arc<Task>> = self.lock().values().cloned().collect();
        running
            .iter()
            .map(|t| {
                let have = t.progress.borrow().have.count();
                let elapsed = t.started.elapsed().as_secs_f64();
                let (origin, peer) =
                    (t.counters.origin_bytes.load(Ordering::Relaxed), t.counters.peer_bytes.load(Ordering::Relaxed));
                TaskStatus {
                    digest: t.digest.to_string(),
                    size: t.layout.size,
                    pieces: t.layout.count(),
                    have,
                    elapsed_secs: elapsed,
                    origin_bytes: origin,
                    peer_bytes: peer,
                    parents: t.counters.parents.load(Ordering::Relaxed),
                    rate: (origin + peer) as f64 / elapsed.max(0.001),
                }
            })
            .collect()
    }

    /// Joins the running download of `digest`, if there is one.
    pub fn join(&self, digest: &Digest) -> Option<(Arc<Task>, Pin)> {
        let pin = self.pins.pin(*digest);
        self.lock().get(digest).map(|t| (t.clone(), pin))
    }

    /// Joins the running download of `digest`, or starts one of `size` bytes from `fetch`
    /// once the cache has room for it.
    pub async fn join_or_start(
        self: &Arc<Self>,
        digest: Digest,
        size: u64,
        fetch: OriginFetch,
    ) -> Result<(Arc<Task>, Pin), Uncached> {
        if let Some(joined) = self.join(&digest) {
            return Ok(joined);
        }
        let space = self.space.clone();
        let reservation = tokio::task::spawn_blocking(move || space.reserve(size))
            .await
            .map_err(|e| NoRoom::Measure(std::io::Error::other(e)))??;
        let pin = self.pins.pin(digest);
        let mut running = self.lock();
        if let Some(task) = running.get(&digest) {
            return Ok((task.clone(), pin));
        }
        let layout = PieceLayout::for_size(size);
        let writer = PieceWriter::open(&self.paths, self.meta.clone(), digest, layout, now_ms())?;
        let file = Arc::new(File::open(self.paths.partial(&digest)).map_err(WriteError::from)?);
        let task = Arc::new(Task {
            digest,
            layout,
            file,
            progress: writer.subscribe(),
            started: Instant::now(),
            counters: Arc::default(),
            readers: Arc::new(Readers::new(layout)),
        });
        running.insert(digest, task.clone());
        drop(running);
        let tasks = self.clone();
        let (counters, readers) = (task.counters.clone(), task.readers.clone());
        let download_pin = self.pins.pin(digest);
        tokio::spawn(async move {
            tasks.run(writer, fetch, counters, readers, reservation).await;
            tasks.lock().remove(&digest);
            drop(download_pin);
        });
        Ok((task, pin))
    }

    /// The origin as a direct source for `fetch`'s client (see [`crate::origin::direct`]).
    pub fn direct_origin(&self, fetch: OriginFetch) -> DirectSource {
        let fetched = self.metrics.fetched_bytes.get_or_create(&SourceLabels { source: "origin" }).clone();
        DirectSource { fetch, limiter: self.origin_limit.clone(), fetched }
    }

    /// The data directory's layout.
    pub fn paths(&self) -> &Paths {
        &self.paths
    }

    /// The cache's room and health.
    pub fn space(&self) -> &Arc<Space> {
        &self.space
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, HashMap<Digest, Arc<Task>>> {
        self.running.lock().unwrap_or_else(|p| p.into_inner())
    }

    async fn run(
        &self,
        mut writer: PieceWriter,
        fetch: OriginFetch,
        counters: Arc<TaskCounters>,
        readers: Arc<Readers>,
        reservation: Reservation,
    ) {
        let started = Instant::now();
        self.metrics.downloads_running.inc();
        let digest = writer.digest();
        let layout = writer.layout();
        let progress = writer.progress();
        let mut have = writer.subscribe();
        let (finished_tx, finished) = mpsc::unbounded_channel();
        writer.report_to(finished_tx);
        // Single-piece blobs (image configs) go through the swarm too: a cut-off site gets them from
        // a member, and each site's link carries one copy.
        writer.set_piece_hashing(self.swarm.is_some() && layout.count() > 0);
        writer.set_poison(self.faults.poison);
        writer.set_stall_promote(self.faults.stall_promote);
        writer.count_rereads(self.metrics.hash_reread_bytes.clone());
        let (tx, rx) = mpsc::channel::<Chunk>(WRITER_QUEUE);
        let thread = tokio::task::spawn_blocking(move || write_all(writer, rx));
        let origin = OriginSource {
            fetch: &fetch,
            digest,
            layout,
            limiter: &self.origin_limit,
            counter: self.metrics.fetched_bytes.get_or_create(&SourceLabels { source: "origin" }).clone(),
            task_bytes: &counters.origin_bytes,
        };
        let fetched = match &self.swarm {
            Some(swarm) if layout.count() > 0 => {
                let sink = crate::download::swarm::Sink { have: &mut have, tx: &tx, finished };
                crate::download::swarm::download(swarm, &self.metrics, &counters, &origin, sink, readers).await
            }
            _ => from_origin(&origin, &mut have, &tx).await,
        };
        drop(tx);
        let result = match thread.await {
            Ok(r) => r,
            Err(e) => Err(Arc::new(WriteError::Io(std::io::Error::other(format!("writer thread: {e}"))))),
        };
        let outcome = match (fetched, result) {
            (_, Ok(())) => {
                reservation.commit();
                "complete"
            }
            (_, Err(e)) if e.is_store() => {
                self.store_failed(&digest, &e);
                progress.send_modify(|p| p.state = State::StoreFailed(e.to_string().into()));
                "failed"
            }
            (fetched, Err(e)) => {
                let why = fetched.err().map_or_else(|| e.to_string(), |f| f.to_string());
                tracing::warn!(%digest, error = %why, "blob download failed");
                progress.send_modify(|p| p.state = State::Failed(why.into()));
                "failed"
            }
        };
        self.metrics.downloads_running.dec();
        self.metrics
            .download_seconds
            .get_or_create(&ResultLabels { result: outcome })
            .observe(started.elapsed().as_secs_f64());
    }
}

impl Tasks {
    /// The disk could not hold `digest`: forget what was written (it frees the space, and a
    /// partial file that failed to be written is not worth resuming) and report it.
    fn store_failed(&self, digest: &Digest, e: &WriteError) {
        let _ = self.meta.remove_blob(digest);
        let _ = std::fs::remove_file(self.paths.partial(digest));
        self.space.health.failed(digest, &e.to_string());
    }
}

/// The writer thread: applies chunks until the sources are done, then verifies and completes
/// the blob if every piece arrived (otherwise leaves the partial file to resume later).
fn write_all(mut writer: PieceWriter, mut rx: mpsc::Receiver<Chunk>) -> Result<(), Arc<WriteError>> {
    while let Some(chunk) = rx.blocking_recv() {
        match chunk {
            Chunk::Stream(offset, bytes) => {
                writer.write(offset, bytes).map_err(Arc::new)?;
                if rx.is_empty() {
                    writer.publish_pending();
                }
            }
            Chunk::Piece(index, bytes, digest) => writer.write_piece(index, bytes, digest).map_err(Arc::new)?,
            Chunk::Verify(reply) => match writer.verify() {
                Ok(Verified::Complete) => {
                    let _ = reply.send(Ok(Verified::Complete));
                    return Ok(());
                }
                Ok(dropped) => {
                    let _ = reply.send(Ok(dropped));
                }
                Err(e) => {
                    let e = Arc::new(e);
                    let _ = reply.send(Err(DownloadError::Verify(e.clone())));
                    return Err(e);
                }
            },
        }
    }
    writer.finish().map_err(Arc::new)
}

/// Every piece from the origin, then the whole-blob check; pieces resumed from disk that fail
/// it are fetched once more.
async fn from_origin(
    origin: &OriginSource<'_>,
    have: &mut watch::Receiver<Progress>,
    tx: &mpsc::Sender<Chunk>,
) -> Result<(), DownloadError> {
    let mut missing = runs_of(origin.layout.count(), |_| true);
    for _ in 0..2 {
        origin.fetch(missing, have, tx).await?;
        match verify(tx).await? {
            Verified::Complete => return Ok(()),
            Verified::Dropped { pieces, .. } => missing = runs_of(origin.layout.count(), |i| pieces.contains(&i)),
        }
    }
    Err(DownloadError::NotVerified)
}

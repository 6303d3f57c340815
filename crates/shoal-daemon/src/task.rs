//! Blob tasks: one download per blob digest, shared by every request for that blob.
//!
//! A task owns a [`PieceWriter`] on a blocking thread and fetches the missing pieces from a
//! source (today the origin, with HTTP Range requests per run of missing pieces, retried a bounded
//! number of times). Readers join a task at any moment and stream from its file as pieces land.
//! [`Pins`] mark blobs in use so eviction never removes one being served or downloaded.

use std::collections::HashMap;
use std::fs::File;
use std::ops::Range;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use bytes::Bytes;
use futures::StreamExt;
use http::header::{CONTENT_RANGE, RANGE};
use http::{HeaderMap, HeaderValue, Method, StatusCode};
use shoal_core::{Digest, PieceLayout, RepoName};
use tokio::sync::{mpsc, watch};

use crate::meta::{Durability, MetaStore};
use crate::metrics::{Metrics, ResultLabels, SourceLabels};
use crate::origin::{error_chain, Upstream};
use crate::paths::Paths;
use crate::writer::{PieceWriter, Progress, State, WriteError};

/// Attempts at fetching the missing pieces before a download gives up.
const MAX_ATTEMPTS: u32 = 4;
/// Chunks queued between the network and the writer thread.
const WRITER_QUEUE: usize = 64;

/// Unix time in milliseconds.
pub fn now_millis() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| d.as_millis() as u64)
}

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
        Pin {
            pins: self.clone(),
            digest,
        }
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

/// Why a task could not be started.
#[derive(Debug, thiserror::Error)]
pub enum TaskError {
    /// The partial file or its record could not be set up.
    #[error(transparent)]
    Write(#[from] WriteError),
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
}

impl Task {
    /// A receiver of progress, for one reader.
    pub fn progress(&self) -> watch::Receiver<Progress> {
        self.progress.clone()
    }
}

/// Where a download's bytes come from: the origin, for one repository, with one client's
/// credentials.
pub struct OriginFetch {
    /// The registry.
    pub upstream: Arc<Upstream>,
    /// The repository the client asked through.
    pub name: RepoName,
    /// The client's Authorization/Accept headers.
    pub headers: HeaderMap,
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
    running: Mutex<HashMap<Digest, Arc<Task>>>,
}

impl Tasks {
    /// A task registry over a data directory.
    pub fn new(paths: Paths, meta: Arc<dyn MetaStore>, metrics: Arc<Metrics>, pins: Pins) -> Self {
        Self {
            paths,
            meta,
            metrics,
            pins,
            running: Mutex::new(HashMap::new()),
        }
    }

    /// The blob, if it is complete on disk; records the access.
    pub fn local(&self, digest: &Digest) -> Option<LocalBlob> {
        let pin = self.pins.pin(*digest);
        let mut record = self
            .meta
            .blob(digest)
            .ok()
            .flatten()
            .filter(|r| r.is_complete())?;
        let file = File::open(self.paths.blob(digest)).ok()?;
        let size = file.metadata().ok()?.len();
        if size != record.layout.size {
            return None;
        }
        record.last_access = now_millis();
        let _ = self.meta.put_blob(digest, &record, Durability::Lazy);
        Some(LocalBlob { file, size, pin })
    }

    /// The size of a blob known locally (complete or partial), if any.
    pub fn known_size(&self, digest: &Digest) -> Option<u64> {
        if let Some(t) = self.lock().get(digest) {
            return Some(t.layout.size);
        }
        self.meta.blob(digest).ok().flatten().map(|r| r.layout.size)
    }

    /// Joins the running download of `digest`, if there is one.
    pub fn join(&self, digest: &Digest) -> Option<(Arc<Task>, Pin)> {
        let pin = self.pins.pin(*digest);
        self.lock().get(digest).map(|t| (t.clone(), pin))
    }

    /// Joins the running download of `digest`, or starts one of `size` bytes from `fetch`.
    pub fn join_or_start(
        self: &Arc<Self>,
        digest: Digest,
        size: u64,
        fetch: OriginFetch,
    ) -> Result<(Arc<Task>, Pin), TaskError> {
        let pin = self.pins.pin(digest);
        let mut running = self.lock();
        if let Some(task) = running.get(&digest) {
            return Ok((task.clone(), pin));
        }
        let layout = PieceLayout::for_size(size);
        let writer =
            PieceWriter::open(&self.paths, self.meta.clone(), digest, layout, now_millis())?;
        let file = Arc::new(File::open(self.paths.partial(&digest)).map_err(WriteError::from)?);
        let task = Arc::new(Task {
            digest,
            layout,
            file,
            progress: writer.subscribe(),
        });
        running.insert(digest, task.clone());
        drop(running);
        let tasks = self.clone();
        let download_pin = self.pins.pin(digest);
        tokio::spawn(async move {
            tasks.run(writer, fetch).await;
            tasks.lock().remove(&digest);
            drop(download_pin);
        });
        Ok((task, pin))
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, HashMap<Digest, Arc<Task>>> {
        self.running.lock().unwrap_or_else(|p| p.into_inner())
    }

    async fn run(&self, writer: PieceWriter, fetch: OriginFetch) {
        let started = Instant::now();
        self.metrics.downloads_running.inc();
        let digest = writer.digest();
        let layout = writer.layout();
        let progress = writer.progress();
        let mut have = writer.subscribe();
        let (tx, rx) = mpsc::channel::<(u64, Bytes)>(WRITER_QUEUE);
        let thread = tokio::task::spawn_blocking(move || write_all(writer, rx));
        let fetched = self
            .fetch_missing(&fetch, digest, layout, &mut have, tx)
            .await;
        let result = match thread.await {
            Ok(r) => r.map_err(|e| e.to_string()),
            Err(e) => Err(format!("writer thread: {e}")),
        };
        let outcome = match (fetched, result) {
            (_, Ok(())) => "complete",
            (Err(fetch_err), Err(_)) | (Ok(()), Err(fetch_err)) => {
                tracing::warn!(%digest, error = %fetch_err, "blob download failed");
                progress.send_modify(|p| p.state = State::Failed(fetch_err.into()));
                "failed"
            }
        };
        self.metrics.downloads_running.dec();
        self.metrics
            .download_seconds
            .get_or_create(&ResultLabels { result: outcome })
            .observe(started.elapsed().as_secs_f64());
    }

    /// Fetches every missing piece from the origin, a Range request per run of missing pieces,
    /// retrying transient failures. Returns when the writer has been sent every piece or the
    /// download gave up (with why).
    async fn fetch_missing(
        &self,
        fetch: &OriginFetch,
        digest: Digest,
        layout: PieceLayout,
        have: &mut watch::Receiver<Progress>,
        tx: mpsc::Sender<(u64, Bytes)>,
    ) -> Result<(), String> {
        let mut last_error = String::new();
        for attempt in 0..MAX_ATTEMPTS {
            if attempt > 0 {
                tokio::time::sleep(Duration::from_millis(250 << attempt)).await;
            }
            let runs = missing_runs(&have.borrow().have);
            if runs.is_empty() {
                return Ok(());
            }
            let mut failed = false;
            for run in runs {
                match self.fetch_run(fetch, digest, layout, run, &tx).await {
                    Ok(()) => {}
                    Err(FetchError::Fatal(e)) => return Err(e),
                    Err(FetchError::Transient(e)) => {
                        last_error = e;
                        failed = true;
                        break;
                    }
                }
            }
            if !failed {
                return Ok(());
            }
            // Let the writer drain what it has, so the next attempt asks only for what is missing.
            let _ = tokio::time::timeout(Duration::from_millis(200), have.changed()).await;
        }
        Err(format!("origin failed {MAX_ATTEMPTS} times: {last_error}"))
    }

    async fn fetch_run(
        &self,
        fetch: &OriginFetch,
        digest: Digest,
        layout: PieceLayout,
        run: Range<u32>,
        tx: &mpsc::Sender<(u64, Bytes)>,
    ) -> Result<(), FetchError> {
        let start = layout.piece(run.start).start;
        let end = layout.piece(run.end - 1).end;
        let whole = start == 0 && end == layout.size;
        let mut extra = HeaderMap::new();
        if !whole {
            let v = HeaderValue::from_str(&format!("bytes={}-{}", start, end - 1))
                .map_err(|e| FetchError::Fatal(e.to_string()))?;
            extra.insert(RANGE, v);
        }
        let path = format!("/v2/{}/blobs/{}", fetch.name, digest);
        let resp = fetch
            .upstream
            .send(
                Method::GET,
                Some(&fetch.name),
                &path,
                &fetch.headers,
                extra,
                None,
            )
            .await
            .map_err(|e| FetchError::Transient(e.to_string()))?;
        let status = resp.status();
        let offset = match status {
            StatusCode::OK => 0,
            StatusCode::PARTIAL_CONTENT => content_range_start(resp.headers())
                .ok_or_else(|| FetchError::Fatal("206 without a usable Content-Range".into()))?,
            s if s.is_server_error() || s == StatusCode::TOO_MANY_REQUESTS => {
                return Err(FetchError::Transient(format!("origin answered {s}")))
            }
            s => return Err(FetchError::Fatal(format!("origin answered {s}"))),
        };
        if offset > start {
            return Err(FetchError::Fatal(format!(
                "origin started at byte {offset}, asked for {start}"
            )));
        }
        let mut pos = offset;
        let mut body = resp.bytes_stream();
        let origin_bytes = self
            .metrics
            .fetched_bytes
            .get_or_create(&SourceLabels { source: "origin" })
            .clone();
        while pos < end {
            let chunk = match body.next().await {
                Some(Ok(c)) => c,
                Some(Err(e)) => return Err(FetchError::Transient(error_chain(&e))),
                None => {
                    return Err(FetchError::Transient(format!(
                        "origin body ended at byte {pos} of {end}"
                    )))
                }
            };
            origin_bytes.inc_by(chunk.len() as u64);
            let len = chunk.len() as u64;
            // Skip bytes before `start` (an origin that ignored Range) and after `end`.
            let lo = start.saturating_sub(pos).min(len);
            let hi = (end - pos).min(len);
            if lo < hi {
                let piece = chunk.slice(lo as usize..hi as usize);
                if tx.send((pos + lo, piece)).await.is_err() {
                    return Err(FetchError::Fatal("blob writer stopped".into()));
                }
            }
            pos += len;
        }
        Ok(())
    }
}

enum FetchError {
    /// Worth another attempt (network, 5xx).
    Transient(String),
    /// Will not get better (4xx, protocol violation).
    Fatal(String),
}

/// The writer thread: applies chunks until the sources are done, then verifies and completes
/// the blob if every piece arrived (otherwise leaves the partial file to resume later).
fn write_all(
    mut writer: PieceWriter,
    mut rx: mpsc::Receiver<(u64, Bytes)>,
) -> Result<(), WriteError> {
    while let Some((offset, bytes)) = rx.blocking_recv() {
        writer.write(offset, &bytes)?;
    }
    writer.finish()
}

/// Runs of consecutive missing pieces.
pub fn missing_runs(have: &shoal_core::Bitmap) -> Vec<Range<u32>> {
    let mut runs: Vec<Range<u32>> = Vec::new();
    for i in have.missing() {
        match runs.last_mut() {
            Some(r) if r.end == i => r.end = i + 1,
            _ => runs.push(i..i + 1),
        }
    }
    runs
}

/// The first byte of a `Content-Range: bytes first-last/size` header.
fn content_range_start(headers: &HeaderMap) -> Option<u64> {
    let v = headers.get(CONTENT_RANGE)?.to_str().ok()?;
    let rest = v.strip_prefix("bytes ")?;
    rest.split('-').next()?.trim().parse().ok()
}

#[cfg(test)]
mod tests {
    use super::*;
    use shoal_core::Bitmap;

    #[test]
    fn finds_missing_runs() {
        let mut b = Bitmap::new(8);
        for i in [0, 3, 4, 7] {
            b.set(i);
        }
        assert_eq!(missing_runs(&b), vec![1..3, 5..7]);
        assert_eq!(missing_runs(&Bitmap::new(3)), vec![0..3]);
    }

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

    #[test]
    fn parses_content_range() {
        let mut h = HeaderMap::new();
        h.insert(
            CONTENT_RANGE,
            HeaderValue::from_static("bytes 100-199/1000"),
        );
        assert_eq!(content_range_start(&h), Some(100));
    }
}

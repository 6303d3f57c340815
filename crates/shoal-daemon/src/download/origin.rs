//! The origin as a source of pieces: HTTP Range requests, one per run of wanted pieces, retried a
//! bounded number of times, paced by the origin limit. Chunks go to the blob's writer.

use std::ops::Range;
use std::time::Duration;

use bytes::Bytes;
use futures::StreamExt;
use http::header::{CONTENT_RANGE, RANGE};
use http::{HeaderMap, HeaderValue, Method, StatusCode};
use prometheus_client::metrics::counter::Counter;
use shoal_core::{Bitmap, Digest, PieceDigest, PieceLayout};
use tokio::sync::{mpsc, oneshot, watch};

use crate::download::error::{DownloadError, RunError};
use crate::download::writer::{Progress, Verified};
use crate::limits::Limiter;
use crate::origin::OriginFetch;

/// Attempts at fetching a set of pieces before giving up.
const MAX_ATTEMPTS: u32 = 4;

/// Bytes for a blob's writer.
pub enum Chunk {
    /// Part of a stream: bytes at an offset, in order within each piece.
    Stream(u64, Bytes),
    /// A whole piece, already verified against its trusted digest (given).
    Piece(u32, Bytes, PieceDigest),
    /// Every piece was sent: check the whole blob and answer (see [`Verified`]).
    Verify(oneshot::Sender<Result<Verified, DownloadError>>),
}

/// Asks the writer behind `tx` to check the whole blob once every chunk before has landed.
pub async fn verify(tx: &mpsc::Sender<Chunk>) -> Result<Verified, DownloadError> {
    let (reply, answer) = oneshot::channel();
    tx.send(Chunk::Verify(reply)).await.map_err(|_| DownloadError::WriterStopped)?;
    answer.await.map_err(|_| DownloadError::WriterStopped)?
}

/// One blob's origin download.
pub struct OriginSource<'a> {
    /// Registry, repository, credentials.
    pub fetch: &'a OriginFetch,
    /// The blob.
    pub digest: Digest,
    /// Its layout.
    pub layout: PieceLayout,
    /// Origin pacing.
    pub limiter: &'a Limiter,
    /// Bytes fetched from the origin.
    pub counter: Counter,
    /// The same, for this task alone.
    pub task_bytes: &'a std::sync::atomic::AtomicU64,
}

impl OriginSource<'_> {
    /// Fetches the pieces of `runs`; after a transient failure asks again only for what the
    /// writer still lacks. Returns once every piece was sent to the writer, or why not.
    pub async fn fetch(
        &self,
        runs: Vec<Range<u32>>,
        have: &mut watch::Receiver<Progress>,
        tx: &mpsc::Sender<Chunk>,
    ) -> Result<(), DownloadError> {
        let mut wanted = Bitmap::new(self.layout.count());
        for i in runs.into_iter().flatten() {
            wanted.set(i);
        }
        let mut attempt = 0;
        loop {
            if attempt > 0 {
                tokio::time::sleep(Duration::from_millis(250 << attempt)).await;
                // Let the writer drain, so only what is really missing is asked for again.
                let _ = tokio::time::timeout(Duration::from_millis(200), have.changed()).await;
            }
            let held = have.borrow().have.clone();
            let runs = runs_of(self.layout.count(), |i| wanted.get(i) && !held.get(i));
            if runs.is_empty() {
                return Ok(());
            }
            match self.fetch_runs(&runs, tx).await {
                Ok(()) => return Ok(()),
                Err(DownloadError::Origin(e)) if e.is_transient() => {
                    attempt += 1;
                    if attempt == MAX_ATTEMPTS {
                        return Err(DownloadError::OriginRetries { attempts: MAX_ATTEMPTS, last: e });
                    }
                }
                Err(e) => return Err(e),
            }
        }
    }

    async fn fetch_runs(&self, runs: &[Range<u32>], tx: &mpsc::Sender<Chunk>) -> Result<(), DownloadError> {
        for run in runs {
            self.fetch_run(run.clone(), tx).await?;
        }
        Ok(())
    }

    async fn fetch_run(&self, run: Range<u32>, tx: &mpsc::Sender<Chunk>) -> Result<(), DownloadError> {
        let start = self.layout.piece(run.start).start;
        let end = self.layout.piece(run.end - 1).end;
        let mut extra = HeaderMap::new();
        if !(start == 0 && end == self.layout.size) {
            let v = HeaderValue::from_str(&format!("bytes={}-{}", start, end - 1))
                .map_err(|e| DownloadError::Origin(RunError::RangeHeader(e)))?;
            extra.insert(RANGE, v);
        }
        let f = self.fetch;
        let path = format!("/v2/{}/blobs/{}", f.name, self.digest);
        let resp = f
            .origin
            .send(Method::GET, Some(&f.name), &path, &f.headers, extra, None)
            .await
            .map_err(|e| DownloadError::Origin(RunError::Request(e)))?;
        let offset = match resp.status() {
            StatusCode::OK => 0,
            StatusCode::PARTIAL_CONTENT => {
                content_range_start(resp.headers()).ok_or(DownloadError::Origin(RunError::NoContentRange))?
            }
            s => return Err(DownloadError::Origin(RunError::Status(s))),
        };
        if offset > start {
            return Err(DownloadError::Origin(RunError::StartsLate { offset, start }));
        }
        let mut pos = offset;
        let mut body = resp.bytes_stream();
        while pos < end {
            let chunk = match body.next().await {
                Some(Ok(c)) => c,
                Some(Err(e)) => return Err(DownloadError::Origin(RunError::Body(e))),
                None => return Err(DownloadError::Origin(RunError::BodyEnded { at: pos, end })),
            };
            let len = chunk.len() as u64;
            self.limiter.acquire(len).await;
            self.counter.inc_by(len);
            self.task_bytes.fetch_add(len, std::sync::atomic::Ordering::Relaxed);
            // Skip bytes before `start` (an origin that ignored Range) and after `end`.
            let lo = start.saturating_sub(pos).min(len);
            let hi = end.saturating_sub(pos).min(len);
            if lo < hi && tx.send(Chunk::Stream(pos + lo, chunk.slice(lo as usize..hi as usize))).await.is_err() {
                return Err(DownloadError::WriterStopped);
            }
            pos += len;
        }
        Ok(())
    }
}

/// Runs of consecutive pieces `0..count` for which `want` holds.
pub fn runs_of(count: u32, want: impl Fn(u32) -> bool) -> Vec<Range<u32>> {
    let mut runs: Vec<Range<u32>> = Vec::new();
    for i in (0..count).filter(|&i| want(i)) {
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
    v.strip_prefix("bytes ")?.split('-').next()?.trim().parse().ok()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn finds_runs() {
        let held = [0, 3, 4, 7];
        assert_eq!(runs_of(8, |i| !held.contains(&i)), vec![1..3, 5..7]);
        assert_eq!(runs_of(3, |_| true), vec![0..3]);
        assert_eq!(runs_of(3, |_| false), Vec::<Range<u32>>::new());
    }

    #[test]
    fn parses_content_range() {
        let mut h = HeaderMap::new();
        h.insert(CONTENT_RANGE, HeaderValue::from_static("bytes 100-199/1000"));
        assert_eq!(content_range_start(&h), Some(100));
    }
}

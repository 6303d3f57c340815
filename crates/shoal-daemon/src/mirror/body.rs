//! Response bodies for blobs: from a complete local file, or from a download in progress.
//!
//! A body of a download streams bytes as the writer lands them. A body of the whole blob holds
//! back the blob's last byte until the whole blob is verified, so a client never receives a
//! complete body that did not hash to its digest; while the download runs it sends only bytes
//! that came from the origin itself, and bytes from peers follow once the whole blob has verified
//! (a lying member's pieces are dropped and fetched again meanwhile, within the same response).
//! A body of a range sends its bytes as soon as they are verified, piece by piece: streamed from
//! the origin, or from a parent and matching their trusted digest (see [`Progress::verified`]);
//! it does not wait for the rest of the blob. Each body of a download tells the download where it
//! reads next ([`crate::download::readers`]).
//!
//! When the download or the cache file fails (a full or failing disk, a download that gave up),
//! a body with a [`Fallback`] goes on from its position with bytes straight from the origin
//! ([`crate::origin::direct`]), so the client's response still completes; without one it is cut short.

use std::fs::File;
use std::io;
use std::sync::Arc;

use axum::body::Body;
use bytes::Bytes;
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use shoal_core::{ByteRange, Digest, PieceLayout};
use tokio::sync::watch;

use crate::download::readers::ReaderGuard;
use crate::download::tasks::{LocalBlob, Task};
use crate::download::writer::{Progress, State};
use crate::metrics::ReasonLabels;
use crate::origin::direct::{Direct, DirectSource};
use crate::store::pins::Pin;

/// Bytes read per chunk sent to a client.
const CHUNK: u64 = 1 << 20;

/// Where a body goes on when its file fails.
pub struct Fallback {
    /// The origin, for this client.
    pub origin: DirectSource,
    /// The blob.
    pub digest: Digest,
    /// Responses finished from the origin, by reason.
    pub uncached: Family<ReasonLabels, Counter>,
}

/// The body of a complete local blob, for `range`.
pub fn local(blob: LocalBlob, range: ByteRange, served: Counter, fallback: Option<Fallback>) -> Body {
    let LocalBlob { mut file, size, pin } = blob;
    // This response owns the file: read it sequentially from `range.start`.
    if let Err(e) = io::Seek::seek(&mut file, io::SeekFrom::Start(range.start)) {
        return Body::from_stream(futures::stream::once(async move { Err::<Bytes, _>(e) }));
    }
    let source = Source { file: Arc::new(file), layout: PieceLayout::for_size(size), download: None };
    stream(Reader::new(source, range, served, pin, fallback))
}

/// The body of a blob still downloading, for `range`.
pub fn downloading(task: &Task, pin: Pin, range: ByteRange, served: Counter, fallback: Option<Fallback>) -> Body {
    let download = Download { progress: task.progress(), position: Some(task.readers.register(range.start)) };
    let source = Source { file: task.file.clone(), layout: task.layout, download: Some(download) };
    stream(Reader::new(source, range, served, pin, fallback))
}

fn stream(reader: Reader) -> Body {
    Body::from_stream(futures::stream::unfold(Some(reader), |state| async move {
        let mut r = state?;
        match r.next().await {
            Ok(Some(bytes)) => Some((Ok(bytes), Some(r))),
            Ok(None) => None,
            Err(e) => Some((Err(e), None)),
        }
    }))
}

/// The file a body reads, and the download still writing it, if any.
struct Source {
    file: Arc<File>,
    layout: PieceLayout,
    download: Option<Download>,
}

/// What a body of a download follows.
struct Download {
    progress: watch::Receiver<Progress>,
    /// This body's read position, while it still reads the file.
    position: Option<ReaderGuard>,
}

struct Reader {
    file: Arc<File>,
    start: u64,
    pos: u64,
    end: u64,
    layout: PieceLayout,
    served: Counter,
    download: Option<Download>,
    fallback: Option<Fallback>,
    direct: Option<Direct>,
    _pin: Pin,
}

/// Why a body stopped reading its file.
struct Broken {
    reason: &'static str,
    error: io::Error,
}

impl Broken {
    fn store(error: io::Error) -> Self {
        Self { reason: "store_failed", error }
    }
}

impl Reader {
    fn new(source: Source, range: ByteRange, served: Counter, pin: Pin, fallback: Option<Fallback>) -> Self {
        let Source { file, layout, download } = source;
        let (start, pos, end) = (range.start, range.start, range.end);
        Self { file, start, pos, end, layout, served, download, fallback, direct: None, _pin: pin }
    }

    /// True when this body delivers the whole blob (its last byte waits for the whole-blob check).
    fn is_whole(&self) -> bool {
        self.start == 0 && self.end == self.layout.size
    }

    async fn next(&mut self) -> io::Result<Option<Bytes>> {
        if self.direct.is_none() && self.pos < self.end {
            match self.read_file().await {
                Ok(bytes) => return Ok(Some(self.count(bytes))),
                Err(broken) => self.go_direct(broken).await?,
            }
        }
        let Some(direct) = &mut self.direct else { return Ok(None) };
        let bytes = direct.next().await?;
        Ok(bytes.map(|b| self.count(b)))
    }

    fn count(&mut self, bytes: Bytes) -> Bytes {
        self.pos += bytes.len() as u64;
        self.served.inc_by(bytes.len() as u64);
        self.moved();
        bytes
    }

    /// Tells the download where this body reads next; once the file has nothing more for this
    /// body (it is done, or goes on from the origin), it stops being a reader of the download.
    fn moved(&mut self) {
        let Some(download) = &mut self.download else { return };
        if self.pos >= self.end || self.direct.is_some() {
            download.position = None;
        } else if let Some(position) = &download.position {
            position.advance_to(self.pos);
        }
    }

    async fn read_file(&mut self) -> Result<Bytes, Broken> {
        let ready = self.wait_ready().await?;
        let len = (ready.min(self.end) - self.pos).min(CHUNK) as usize;
        let (file, pos, shared) = (self.file.clone(), self.pos, self.download.is_some());
        match tokio::task::spawn_blocking(move || read_chunk(&file, pos, len, shared)).await {
            Ok(Ok(bytes)) => Ok(bytes),
            Ok(Err(e)) => Err(Broken::store(e)),
            Err(e) => Err(Broken::store(io::Error::other(e))),
        }
    }

    /// Goes on from the origin, or gives up when there is no fallback.
    async fn go_direct(&mut self, broken: Broken) -> io::Result<()> {
        let Some(fallback) = self.fallback.take() else { return Err(broken.error) };
        tracing::debug!(digest = %fallback.digest, pos = self.pos, error = %broken.error, "finishing the response from the origin");
        fallback.uncached.get_or_create(&ReasonLabels { reason: broken.reason }).inc();
        let size = self.layout.size;
        let whole = if self.is_whole() {
            let (file, pos) = (self.file.clone(), self.pos);
            tokio::task::spawn_blocking(move || crate::hash::file_prefix(&file, pos).ok()).await.ok().flatten()
        } else {
            None
        };
        let rest = ByteRange { start: self.pos, end: self.end };
        self.direct = Some(Direct::new(fallback.origin, fallback.digest, size, rest, whole));
        self.moved();
        Ok(())
    }

    /// Waits until bytes past `pos` may be served; returns how far.
    async fn wait_ready(&mut self) -> Result<u64, Broken> {
        let (layout, pos, whole) = (self.layout, self.pos, self.is_whole());
        let Some(Download { progress: rx, .. }) = &mut self.download else {
            return Ok(self.end);
        };
        loop {
            let ready = {
                let p = rx.borrow_and_update();
                match &p.state {
                    State::Verified | State::Complete => layout.size,
                    State::Failed(why) => return Err(failed("download_failed", why)),
                    State::StoreFailed(why) => return Err(failed("store_failed", why)),
                    State::Running => servable(&p, &layout, pos, whole),
                }
            };
            if ready > pos {
                return Ok(ready);
            }
            if rx.changed().await.is_err() && !rx.borrow().state.is_verified() {
                return Err(failed("download_failed", "blob download ended before the blob was complete"));
            }
        }
    }
}

/// How far from `pos` a body may send while the download runs: for the whole blob, the prefix
/// from the origin short of the last byte; for a range, the verified bytes from `pos` on.
fn servable(p: &Progress, layout: &PieceLayout, pos: u64, whole: bool) -> u64 {
    if whole {
        p.confirmed.min(layout.size.saturating_sub(1))
    } else {
        p.verified_from(layout, pos)
    }
}

fn failed(reason: &'static str, why: &str) -> Broken {
    Broken { reason, error: io::Error::other(format!("blob download failed: {why}")) }
}

/// Reads `len` bytes at `pos`: positioned from a file shared with other readers, else
/// sequentially into fresh capacity (no zero-filling of the buffer).
fn read_chunk(file: &File, pos: u64, len: usize, shared: bool) -> io::Result<Bytes> {
    if shared {
        return crate::store::read::read_at(file, pos, len);
    }
    let mut buf = Vec::with_capacity(len);
    io::Read::read_to_end(&mut io::Read::take(file, len as u64), &mut buf)?;
    if buf.len() != len {
        return Err(io::Error::new(io::ErrorKind::UnexpectedEof, "blob file shorter than recorded"));
    }
    Ok(Bytes::from(buf))
}

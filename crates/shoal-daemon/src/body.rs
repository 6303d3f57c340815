//! Response bodies for blobs: from a complete local file, or from a download in progress.
//!
//! A body of a download streams bytes as the writer lands them and holds back the blob's last
//! byte until the whole blob is verified, so a client never receives a complete body that did not
//! hash to its digest: on failure the response is cut short instead. While the download runs,
//! only bytes that came from the origin itself go out; bytes from peers follow once the whole
//! blob has verified (a lying member's pieces are dropped and fetched again meanwhile).

use std::fs::File;
use std::io;
use std::os::unix::fs::FileExt;
use std::sync::Arc;

use axum::body::Body;
use bytes::Bytes;
use prometheus_client::metrics::counter::Counter;
use shoal_core::ByteRange;
use tokio::sync::watch;

use crate::task::{LocalBlob, Pin, Task};
use crate::writer::{Progress, State};

/// Bytes read per chunk sent to a client.
const CHUNK: u64 = 1 << 20;

/// The body of a complete local blob, for `range`.
pub fn local(blob: LocalBlob, range: ByteRange, served: Counter) -> Body {
    let LocalBlob { mut file, pin, .. } = blob;
    // This response owns the file: read it sequentially from `range.start`.
    if let Err(e) = std::io::Seek::seek(&mut file, std::io::SeekFrom::Start(range.start)) {
        return Body::from_stream(futures::stream::once(async move { Err::<Bytes, _>(e) }));
    }
    stream(Arc::new(file), range, served, pin, None)
}

/// The body of a blob still downloading, for `range`.
pub fn downloading(task: &Task, pin: Pin, range: ByteRange, served: Counter) -> Body {
    stream(task.file.clone(), range, served, pin, Some((task.progress(), task.layout.size)))
}

struct Reader {
    file: Arc<File>,
    pos: u64,
    end: u64,
    served: Counter,
    progress: Option<(watch::Receiver<Progress>, u64)>,
    _pin: Pin,
}

fn stream(
    file: Arc<File>,
    range: ByteRange,
    served: Counter,
    pin: Pin,
    progress: Option<(watch::Receiver<Progress>, u64)>,
) -> Body {
    let reader = Reader { file, pos: range.start, end: range.end, served, progress, _pin: pin };
    Body::from_stream(futures::stream::unfold(Some(reader), |state| async move {
        let mut r = state?;
        match r.next().await {
            Ok(Some(bytes)) => Some((Ok(bytes), Some(r))),
            Ok(None) => None,
            Err(e) => Some((Err(e), None)),
        }
    }))
}

/// Reads `len` bytes at `pos`: positioned from a file shared with other readers, else
/// sequentially into fresh capacity (no zero-filling of the buffer).
fn read_chunk(file: &File, pos: u64, len: usize, shared: bool) -> io::Result<Bytes> {
    if shared {
        let mut buf = vec![0u8; len];
        return file.read_exact_at(&mut buf, pos).map(|()| Bytes::from(buf));
    }
    let mut buf = Vec::with_capacity(len);
    io::Read::read_to_end(&mut io::Read::take(file, len as u64), &mut buf)?;
    if buf.len() != len {
        return Err(io::Error::new(io::ErrorKind::UnexpectedEof, "blob file shorter than recorded"));
    }
    Ok(Bytes::from(buf))
}

impl Reader {
    async fn next(&mut self) -> io::Result<Option<Bytes>> {
        if self.pos >= self.end {
            return Ok(None);
        }
        let ready = self.wait_ready().await?;
        let len = (ready.min(self.end) - self.pos).min(CHUNK) as usize;
        let (file, pos, shared) = (self.file.clone(), self.pos, self.progress.is_some());
        let bytes = tokio::task::spawn_blocking(move || read_chunk(&file, pos, len, shared))
            .await
            .map_err(io::Error::other)??;
        self.pos += len as u64;
        self.served.inc_by(len as u64);
        Ok(Some(bytes))
    }

    /// Waits until bytes past `pos` may be served; returns how far.
    async fn wait_ready(&mut self) -> io::Result<u64> {
        let Some((rx, size)) = &mut self.progress else {
            return Ok(self.end);
        };
        loop {
            let ready = {
                let p = rx.borrow_and_update();
                match &p.state {
                    State::Complete => *size,
                    State::Failed(why) => return Err(io::Error::other(format!("blob download failed: {why}"))),
                    State::Running => p.confirmed.min(size.saturating_sub(1)),
                }
            };
            if ready > self.pos {
                return Ok(ready);
            }
            if rx.changed().await.is_err() {
                let p = rx.borrow();
                if p.state != State::Complete {
                    return Err(io::Error::other("blob download ended before the blob was complete"));
                }
            }
        }
    }
}

//! Blob bytes straight from the origin, not cached: for a blob the cache has no room for, and
//! for the rest of a response whose download or cache file failed (a full or failing disk never
//! fails a pull).
//!
//! A byte range is fetched with HTTP Range requests, resumed from where it broke a bounded
//! number of times, paced by the origin limit. When the response delivers the whole blob, every
//! byte is hashed and the chunk holding the last byte goes out only if the blob matches its
//! digest: no unverified whole blob is ever served as complete.

use std::io;
use std::sync::Arc;
use std::time::Duration;

use bytes::Bytes;
use futures::stream::BoxStream;
use futures::StreamExt;
use http::header::RANGE;
use http::{HeaderMap, HeaderValue, Method, StatusCode};
use prometheus_client::metrics::counter::Counter;
use shoal_core::{ByteRange, Digest};

use crate::hash::Hasher;
use crate::limits::Limiter;
use crate::origin::error_chain;
use crate::origin::OriginFetch;

/// Requests for one response before it is cut short.
const MAX_ATTEMPTS: u32 = 4;

/// What a direct stream needs besides its range.
#[derive(Clone)]
pub struct DirectSource {
    /// Registry, repository, credentials.
    pub fetch: OriginFetch,
    /// Origin pacing.
    pub limiter: Arc<Limiter>,
    /// Bytes fetched from the origin.
    pub fetched: Counter,
}

/// One response's bytes from the origin, in order.
pub struct Direct {
    origin: DirectSource,
    digest: Digest,
    size: u64,
    pos: u64,
    end: u64,
    /// The sha256 of bytes `0..pos`, when the response delivers the whole blob.
    whole: Option<Hasher>,
    body: Option<BoxStream<'static, reqwest::Result<Bytes>>>,
    attempts: u32,
}

impl Direct {
    /// Bytes `range` of the blob `digest` of `size` bytes. `whole` is the sha256 of the bytes
    /// before `range.start` when the response delivers the whole blob (a fresh hasher from 0).
    pub fn new(origin: DirectSource, digest: Digest, size: u64, range: ByteRange, whole: Option<Hasher>) -> Self {
        let whole = whole.filter(|_| range.end == size);
        Self { origin, digest, size, pos: range.start, end: range.end, whole, body: None, attempts: 0 }
    }

    /// The next chunk, `None` at the end of the range.
    pub async fn next(&mut self) -> io::Result<Option<Bytes>> {
        loop {
            if self.pos >= self.end {
                return Ok(None);
            }
            if self.body.is_none() {
                self.open().await?;
            }
            let Some(body) = self.body.as_mut() else { continue };
            match body.next().await {
                Some(Ok(chunk)) if !chunk.is_empty() => return self.take(chunk).await.map(Some),
                Some(Ok(_)) => continue,
                Some(Err(e)) => self.broke(&error_chain(&e)),
                None => self.broke(&format!("origin body ended at byte {}", self.pos)),
            }?;
        }
    }

    /// Opens a request for what is left of the range.
    async fn open(&mut self) -> io::Result<()> {
        while self.attempts < MAX_ATTEMPTS {
            if self.attempts > 0 {
                tokio::time::sleep(Duration::from_millis(250 << self.attempts)).await;
            }
            self.attempts += 1;
            match request(&self.origin, self.digest, self.pos, self.end).await {
                Ok(body) => {
                    self.body = Some(body);
                    return Ok(());
                }
                Err(Broken::Fatal(why)) => return Err(io::Error::other(why)),
                Err(Broken::Transient(why)) => tracing::debug!(digest = %self.digest, %why, "origin stream failed"),
            }
        }
        Err(io::Error::other(format!("origin failed {MAX_ATTEMPTS} times for {}", self.digest)))
    }

    /// Accounts a chunk and, for a whole-blob response, checks the digest before the last byte.
    async fn take(&mut self, mut chunk: Bytes) -> io::Result<Bytes> {
        let room = (self.end - self.pos) as usize;
        chunk.truncate(room);
        let len = chunk.len() as u64;
        self.origin.limiter.acquire(len).await;
        self.origin.fetched.inc_by(len);
        self.pos += len;
        if let Some(h) = &mut self.whole {
            h.update(&chunk);
            if self.pos == self.size {
                let actual = self.whole.take().map(Hasher::finish);
                if actual != Some(self.digest) {
                    return Err(io::Error::other(format!("origin bytes do not hash to {}", self.digest)));
                }
            }
        }
        Ok(chunk)
    }

    fn broke(&mut self, why: &str) -> io::Result<()> {
        tracing::debug!(digest = %self.digest, pos = self.pos, %why, "origin stream broke; resuming");
        self.body = None;
        Ok(())
    }
}

/// Opens a GET of bytes `pos..end` of `digest`.
async fn request(
    origin: &DirectSource,
    digest: Digest,
    pos: u64,
    end: u64,
) -> Result<BoxStream<'static, reqwest::Result<Bytes>>, Broken> {
    let f = &origin.fetch;
    let mut extra = HeaderMap::new();
    let v = HeaderValue::from_str(&format!("bytes={}-{}", pos, end - 1)).map_err(|e| Broken::Fatal(e.to_string()))?;
    extra.insert(RANGE, v);
    let path = format!("/v2/{}/blobs/{}", f.name, digest);
    let resp = f
        .origin
        .send(Method::GET, Some(&f.name), &path, &f.headers, extra, None)
        .await
        .map_err(|e| Broken::Transient(e.to_string()))?;
    let skip = match resp.status() {
        StatusCode::PARTIAL_CONTENT => 0,
        // An origin that ignores Range sends the blob from byte 0.
        StatusCode::OK => pos,
        s if s.is_server_error() || s == StatusCode::TOO_MANY_REQUESTS => {
            return Err(Broken::Transient(format!("origin answered {s}")))
        }
        s => return Err(Broken::Fatal(format!("origin answered {s} for {}", digest))),
    };
    Ok(skip_bytes(resp.bytes_stream().boxed(), skip))
}

enum Broken {
    Transient(String),
    Fatal(String),
}

/// Drops the first `skip` bytes of a body.
fn skip_bytes(
    body: BoxStream<'static, reqwest::Result<Bytes>>,
    skip: u64,
) -> BoxStream<'static, reqwest::Result<Bytes>> {
    if skip == 0 {
        return body;
    }
    body.scan(skip, |left, item| {
        let out = item.map(|mut chunk| {
            let n = (*left).min(chunk.len() as u64);
            *left -= n;
            chunk.split_off(n as usize)
        });
        futures::future::ready(Some(out))
    })
    .boxed()
}

/// A response body of `direct`'s bytes; an error cuts it short.
pub fn body(direct: Direct) -> axum::body::Body {
    axum::body::Body::from_stream(futures::stream::unfold(Some(direct), |state| async move {
        let mut d = state?;
        match d.next().await {
            Ok(Some(bytes)) => Some((Ok(bytes), Some(d))),
            Ok(None) => None,
            Err(e) => Some((Err(e), None)),
        }
    }))
}

//! Read authorization: may this client read this blob or manifest? Asked of the origin with the
//! client's own credentials (a HEAD), remembered briefly per credential, repository and digest.
//!
//! A private layer must never leak to a client that could not pull it itself, including when
//! the bytes are already in the local cache.

use std::collections::HashMap;
use std::sync::Mutex;
use std::time::{Duration, Instant};

use http::header::{AUTHORIZATION, CONTENT_LENGTH};
use http::{HeaderMap, Method, StatusCode};
use sha2::{Digest as _, Sha256};
use shoal_core::{Digest, RepoName};

use crate::origin::{OriginError, Upstream};

/// How long a positive answer is reused.
const TTL: Duration = Duration::from_secs(60);
/// Entries kept at most (the cache is cleared of stale entries, then entirely, past this).
const MAX_ENTRIES: usize = 100_000;

/// What the origin said about a read.
pub enum Verdict {
    /// Allowed; the origin's size of the object, if it sent one.
    Allowed(Option<u64>),
    /// Not allowed (401/403/404…): the origin's answer, to pass back to the client.
    Denied(reqwest::Response),
    /// The origin could not be asked.
    Unreachable(OriginError),
}

/// Which API an object belongs to.
#[derive(Clone, Copy, PartialEq, Eq, Hash, Debug)]
pub enum Kind {
    /// `/blobs/`.
    Blob,
    /// `/manifests/`.
    Manifest,
}

#[derive(Clone, PartialEq, Eq, Hash)]
struct Key {
    registry: String,
    name: RepoName,
    kind: Kind,
    digest: Digest,
    credential: [u8; 32],
}

/// Remembered positive verdicts.
#[derive(Default)]
pub struct Authz {
    allowed: Mutex<HashMap<Key, (Instant, Option<u64>)>>,
}

impl Authz {
    /// Asks (or remembers) whether the client with `headers` may read `digest` in `name`.
    pub async fn check(
        &self,
        upstream: &Upstream,
        name: &RepoName,
        kind: Kind,
        digest: &Digest,
        headers: &HeaderMap,
    ) -> Verdict {
        let credential: [u8; 32] = Sha256::digest(headers.get(AUTHORIZATION).map_or(&[][..], |v| v.as_bytes())).into();
        let key = Key { registry: upstream.name().to_owned(), name: name.clone(), kind, digest: *digest, credential };
        if let Some(size) = self.remembered(&key) {
            return Verdict::Allowed(size);
        }
        let segment = if kind == Kind::Blob { "blobs" } else { "manifests" };
        let path = format!("/v2/{name}/{segment}/{digest}");
        let timeout = Some(crate::origin::SMALL_REQUEST_TIMEOUT);
        match upstream.send(Method::HEAD, Some(name), &path, headers, HeaderMap::new(), timeout).await {
            Err(e) => Verdict::Unreachable(e),
            Ok(resp) if resp.status() == StatusCode::OK => {
                let size = resp.headers().get(CONTENT_LENGTH).and_then(|v| v.to_str().ok()?.parse().ok());
                self.remember(key, size);
                Verdict::Allowed(size)
            }
            Ok(resp) => Verdict::Denied(resp),
        }
    }

    fn remembered(&self, key: &Key) -> Option<Option<u64>> {
        let map = self.allowed.lock().unwrap_or_else(|p| p.into_inner());
        map.get(key).filter(|(at, _)| at.elapsed() < TTL).map(|(_, size)| *size)
    }

    fn remember(&self, key: Key, size: Option<u64>) {
        let mut map = self.allowed.lock().unwrap_or_else(|p| p.into_inner());
        if map.len() >= MAX_ENTRIES {
            map.retain(|_, (at, _)| at.elapsed() < TTL);
            if map.len() >= MAX_ENTRIES {
                map.clear();
            }
        }
        map.insert(key, (Instant::now(), size));
    }
}

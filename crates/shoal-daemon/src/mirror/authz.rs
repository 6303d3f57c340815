//! Read authorization: may this client read this blob or manifest? The origin decides, for this
//! credential and this repository; [`shoal_core::access::decide`] is the rule, this module asks
//! the origin and applies the answer.
//!
//! A positive answer is reused for a minute per credential, repository and object. When the
//! origin cannot answer, the cache serves only the clients the remembered grants allow
//! ([`super::grants`]); everyone else gets a 502/503/504 OCI error, never the bytes.
//!
//! Every check asks the origin itself: a slow or failing request for another repository or
//! another client never skips or shortens it. Only this client's own recent failure on this
//! repository (within [`DOWN_FOR`]) skips the wait, and that only leads to its own grants.

use std::collections::HashMap;
use std::path::Path;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use http::header::{CONTENT_LENGTH, WWW_AUTHENTICATE};
use http::{HeaderMap, HeaderValue, Method, StatusCode};
use shoal_core::access::{self, Answer, Decision, Unavailable, Update};
use shoal_core::{Digest, ErrorCode, RepoName};

use super::error::ApiError;
use super::grants::{Challenged, Credential, Grants};
use super::site::{Question, Site, SiteKnowledge};
use crate::clock::now_ms;
use crate::origin::{Origin, SMALL_REQUEST_TIMEOUT};
use crate::store::meta::MetaStore;

/// How long a positive answer is reused.
const TTL: Duration = Duration::from_secs(60);
/// After the origin failed a check, the same client's next checks on the same repository go
/// without asking for this long.
pub const DOWN_FOR: Duration = Duration::from_secs(5);
/// Entries kept at most (the cache is cleared of stale entries, then entirely, past this).
const MAX_ENTRIES: usize = 100_000;

/// The outcome of a check.
pub enum Access {
    /// The origin allowed it now; the origin's size of the object, if it sent one.
    Allowed(Option<u64>),
    /// The origin could not answer, and a remembered grant (this node's, or the site's for a
    /// public repository) lets this client read the object: from the cache, or from the site
    /// with the size its members give. Without either, answer with this failure.
    Cached(Unavailable, Option<u64>),
    /// Not allowed (401/403/404…): the origin's answer, to pass back to the client.
    Relay(reqwest::Response),
    /// The origin could not answer, and nothing lets this client read: the error to send.
    Refused(ApiError),
}

/// What came of asking the origin.
pub enum Asked {
    /// It answered this (any status but 5xx and 429).
    Answered(reqwest::Response),
    /// It could not decide (no answer in time, unreachable, 5xx or 429).
    Unavailable(Unavailable),
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
    credential: Credential,
}

#[derive(Clone, PartialEq, Eq, Hash)]
struct DownKey {
    registry: String,
    name: RepoName,
    credential: Credential,
}

/// Read authorization state: recent answers, recent failures, durable grants.
pub struct Authz {
    allowed: Mutex<HashMap<Key, (Instant, Option<u64>)>>,
    down: Mutex<HashMap<DownKey, (Instant, Unavailable)>>,
    /// The durable grants.
    pub grants: Arc<Grants>,
    /// The other members, asked when the origin cannot be (none without the DHT).
    pub site: Option<Site>,
}

/// The OCI error for an origin that could not decide.
pub fn refusal(status: u16, why: Unavailable) -> ApiError {
    let code = match status {
        503 => ErrorCode::OriginUnavailable,
        504 => ErrorCode::OriginUnreachable,
        _ => ErrorCode::OriginError,
    };
    let what = match why {
        Unavailable::Unreachable => "could not be reached".to_owned(),
        Unavailable::Timeout => "did not answer in time".to_owned(),
        Unavailable::Status(s) => format!("answered {s}"),
    };
    ApiError::new(code, format!("the origin {what}, and it has not let this client read this repository recently"))
}

impl Authz {
    /// Authorization with grants kept in `meta`, hashed with the key in `data_dir`.
    pub fn open(data_dir: &Path, meta: Arc<dyn MetaStore>, grace: Duration) -> std::io::Result<Self> {
        let grants = Arc::new(Grants::open(data_dir, meta, grace)?);
        Ok(Self { allowed: Mutex::default(), down: Mutex::default(), grants, site: None })
    }

    /// Asks (or remembers) whether the client with `headers` may read `digest` in `name`;
    /// `held`: this node has the object (when the origin cannot be asked, the site is asked
    /// only for what this node lacks: the object, or the grant).
    pub async fn check(
        &self,
        origin: &Origin,
        name: &RepoName,
        kind: Kind,
        digest: &Digest,
        headers: &HeaderMap,
        held: bool,
    ) -> Access {
        let credential = self.grants.credential(headers);
        let key = Key { registry: origin.name().to_owned(), name: name.clone(), kind, digest: *digest, credential };
        if let Some(size) = self.remembered(&key) {
            return Access::Allowed(size);
        }
        let segment = if kind == Kind::Blob { "blobs" } else { "manifests" };
        let path = format!("/v2/{name}/{segment}/{digest}");
        let resp = match self.ask(origin, name, &key.credential, Method::HEAD, &path, headers).await {
            Asked::Unavailable(why) => {
                let q = Question { registry: origin.name(), name, tag: None, digest: Some(digest) };
                let (decision, site) = self.decide_offline(origin, &key.credential, why, &q, held).await;
                return match decision {
                    Decision::Serve => Access::Cached(why, site.and_then(|s| s.blob_size)),
                    Decision::Refuse(status) => Access::Refused(self.refuse(origin, &key.credential, status, why)),
                    Decision::Relay => Access::Refused(refusal(why.status(), why)),
                };
            }
            Asked::Answered(resp) => resp,
        };
        let answer = Answer::from_status(resp.status().as_u16());
        match self.decide(origin, name, &key.credential, answer, Some(digest), false) {
            Decision::Serve => {
                let size = resp.headers().get(CONTENT_LENGTH).and_then(|v| v.to_str().ok()?.parse().ok());
                self.remember(key, size);
                Access::Allowed(size)
            }
            Decision::Relay | Decision::Refuse(_) => Access::Relay(resp),
        }
    }

    /// Sends an access-deciding request to the origin: `method path` with the client's headers.
    /// Skipped only after this client's own failure on this repository moments ago.
    pub async fn ask(
        &self,
        origin: &Origin,
        name: &RepoName,
        credential: &Credential,
        method: Method,
        path: &str,
        headers: &HeaderMap,
    ) -> Asked {
        let down = DownKey { registry: origin.name().to_owned(), name: name.clone(), credential: credential.clone() };
        if let Some(why) = self.is_down(&down) {
            return Asked::Unavailable(why);
        }
        let asked = match origin.ask(method, Some(name), path, headers, SMALL_REQUEST_TIMEOUT).await {
            Err(e) => {
                tracing::debug!(repository = %name, error = %e, "origin could not decide access");
                Asked::Unavailable(e.unavailable())
            }
            Ok(resp) => match Answer::from_status(resp.status().as_u16()) {
                Answer::Unavailable(why) => Asked::Unavailable(why),
                _ => Asked::Answered(resp),
            },
        };
        if let (Asked::Answered(resp), true) = (&asked, credential.is_anonymous()) {
            if resp.status() == StatusCode::UNAUTHORIZED {
                let challenge = resp.headers().get(WWW_AUTHENTICATE).and_then(|v| v.to_str().ok());
                self.grants.challenged(origin.name(), Challenged::Repository, challenge);
            }
        }
        let mut map = self.down.lock().unwrap_or_else(|p| p.into_inner());
        match &asked {
            Asked::Unavailable(why) => {
                bound(&mut map, DOWN_FOR);
                map.insert(down, (Instant::now(), *why));
            }
            Asked::Answered(_) => {
                map.remove(&down);
            }
        }
        asked
    }

    /// Applies the access rule to the origin's `answer` for `credential` reading `object` (or,
    /// for `None`, a tag, whose mapping is cached: `tag_cached`) in `name`, and updates the grants.
    pub fn decide(
        &self,
        origin: &Origin,
        name: &RepoName,
        credential: &Credential,
        answer: Answer,
        object: Option<&Digest>,
        tag_cached: bool,
    ) -> Decision {
        let registry = origin.name();
        let remembered = match answer {
            Answer::Unavailable(_) => self.grants.remembered(registry, name, credential, object, tag_cached),
            _ => access::Remembered::default(),
        };
        let grace = self.grants.grace().as_millis() as u64;
        let (decision, update) = access::decide(answer, remembered, now_ms(), grace);
        match update {
            Update::Grant => self.grants.grant(registry, name, credential, object),
            Update::Revoke => self.grants.revoke(registry, name, credential),
            Update::Keep => {}
        }
        if let (Answer::Unavailable(why), Decision::Serve) = (answer, decision) {
            tracing::debug!(repository = %name, ?why, anonymous = credential.is_anonymous(), "origin unavailable; serving a granted client from cache");
        }
        decision
    }

    /// The origin cannot decide (`why`): the access rule on this node's grants; when that
    /// refuses, the object is not `held` here, or a tag is asked (a member may have seen it
    /// move since this node did), on them and what the site knows (a member
    /// that saw the repository public makes it public for the site; objects the site saw in the
    /// repository belong to it). The site's answer comes back for what it holds (sizes,
    /// manifests). Nothing from the site is remembered as a grant.
    pub async fn decide_offline(
        &self,
        origin: &Origin,
        credential: &Credential,
        why: Unavailable,
        q: &Question<'_>,
        held: bool,
    ) -> (Decision, Option<SiteKnowledge>) {
        let answer = Answer::Unavailable(why);
        let local = self.decide(origin, q.name, credential, answer, q.digest, held && q.digest.is_none());
        let ask = local != Decision::Serve || !held || q.tag.is_some();
        let Some(site) = self.site.as_ref().filter(|_| ask) else {
            return (local, None);
        };
        let known = site.ask(q).await;
        let remembered = self.grants.remembered(origin.name(), q.name, credential, q.digest, held);
        let in_repo = known.in_repo || (q.digest.is_none() && known.tag.is_some());
        let remembered = remembered.with_site(known.public_at, in_repo);
        let grace = self.grants.grace().as_millis() as u64;
        let (decision, _) = access::decide(answer, remembered, now_ms(), grace);
        if decision == Decision::Serve && local != Decision::Serve {
            tracing::info!(repository = %q.name, public = known.public_at.is_some(), "origin unavailable; the site's knowledge lets this client read");
        }
        (decision, Some(known))
    }

    /// The error for a client the access rule refused while the origin could not decide
    /// (`status`). A client that sent no credentials gets the origin's last challenge (401)
    /// instead, when it had one: clients send credentials only after a challenge.
    pub fn refuse(&self, origin: &Origin, credential: &Credential, status: u16, why: Unavailable) -> ApiError {
        let challenge =
            if credential.is_anonymous() { self.grants.challenge(origin.name(), Challenged::Repository) } else { None };
        match challenge.and_then(|c| HeaderValue::from_str(&c).ok()) {
            Some(c) => {
                ApiError::new(ErrorCode::Unauthorized, "authentication required (the origin cannot be asked now)")
                    .with_header(WWW_AUTHENTICATE, c)
            }
            None => refusal(status, why),
        }
    }

    fn is_down(&self, key: &DownKey) -> Option<Unavailable> {
        let map = self.down.lock().unwrap_or_else(|p| p.into_inner());
        map.get(key).filter(|(at, _)| at.elapsed() < DOWN_FOR).map(|(_, why)| *why)
    }

    fn remembered(&self, key: &Key) -> Option<Option<u64>> {
        let map = self.allowed.lock().unwrap_or_else(|p| p.into_inner());
        map.get(key).filter(|(at, _)| at.elapsed() < TTL).map(|(_, size)| *size)
    }

    fn remember(&self, key: Key, size: Option<u64>) {
        let mut map = self.allowed.lock().unwrap_or_else(|p| p.into_inner());
        bound(&mut map, TTL);
        map.insert(key, (Instant::now(), size));
    }
}

/// Keeps a map of timed entries under [`MAX_ENTRIES`]: stale ones go first, then all.
fn bound<K, V>(map: &mut HashMap<K, (Instant, V)>, ttl: Duration) {
    if map.len() >= MAX_ENTRIES {
        map.retain(|_, (at, _)| at.elapsed() < ttl);
        if map.len() >= MAX_ENTRIES {
            map.clear();
        }
    }
}

//! Manifests: tags are always revalidated with the origin (a moved tag is seen at once) and
//! served from cache only when the origin cannot decide, to the clients the access rule allows;
//! manifests by digest are immutable, verified against their digest, cached and served locally
//! once the origin (or a remembered grant) allows this client.

use axum::response::{IntoResponse, Response};
use http::header::{CONTENT_LENGTH, CONTENT_TYPE};
use http::{HeaderMap, HeaderValue, Method, StatusCode};
use shoal_core::{Digest, ErrorCode, Reference, RepoName};

use shoal_core::access::{Answer, Decision, Unavailable};

use super::authz::{refusal, Access, Asked, Kind};
use super::error::ApiError;
use super::grants::Credential;
use super::site::{Question, SiteTag};
use super::{read_limited, relay, Mirror};
use crate::clock::now_ms;
use crate::origin::Origin;
use crate::store::meta::{tag_key, ManifestRecord, TagRecord};

/// Largest manifest accepted (the distribution registry's own limit).
const MAX_MANIFEST: usize = 4 << 20;
const DIGEST_HEADER: &str = "docker-content-digest";

pub(super) async fn serve(
    m: &Mirror,
    origin: &Origin,
    name: &RepoName,
    reference: &Reference,
    method: &Method,
    headers: &HeaderMap,
) -> Result<Response, ApiError> {
    match reference {
        Reference::Tag(tag) => by_tag(m, origin, name, tag, method, headers).await,
        Reference::Digest(digest) => by_digest(m, origin, name, digest, headers).await,
    }
}

async fn by_tag(
    m: &Mirror,
    origin: &Origin,
    name: &RepoName,
    tag: &str,
    method: &Method,
    headers: &HeaderMap,
) -> Result<Response, ApiError> {
    let key = tag_key(origin.name(), name.as_str(), tag);
    let path = format!("/v2/{name}/manifests/{tag}");
    let cred = m.authz.grants.credential(headers);
    let resp = match m.authz.ask(origin, name, &cred, method.clone(), &path, headers).await {
        Asked::Answered(r) => r,
        Asked::Unavailable(why) => {
            if let Some((digest, record)) = super::imported::tag(m, origin.name(), name, tag) {
                return Ok(respond(&digest, record, true));
            }
            let local = cached_tag(m, &key);
            let q = Question { registry: origin.name(), name, tag: Some(tag), digest: None };
            let (decision, site) = m.authz.decide_offline(origin, &cred, why, &q, local.is_some()).await;
            let cached = latest_tag(m, &key, local, site.and_then(|s| s.tag));
            return match decision {
                Decision::Serve => stale(m, &key, cached, why),
                Decision::Refuse(status) => Err(m.authz.refuse(origin, &cred, status, why)),
                Decision::Relay => Err(refusal(why.status(), why)),
            };
        }
    };
    let status = resp.status();
    if m.authz.decide(origin, name, &cred, Answer::from_status(status.as_u16()), None, false) != Decision::Serve {
        return Ok(relay(resp).await);
    }
    if method == Method::HEAD {
        return Ok(head_through(m, origin, name, &key, &resp));
    }
    let media_type = content_type(resp.headers());
    let claimed = resp.headers().get(DIGEST_HEADER).and_then(|v| v.to_str().ok()?.parse::<Digest>().ok());
    let body = read_limited(resp, MAX_MANIFEST)
        .await
        .ok_or_else(|| ApiError::new(ErrorCode::OriginError, "manifest from origin too large or cut short"))?;
    let digest = Digest::of(&body);
    if claimed.is_some_and(|c| c != digest) {
        return Err(ApiError::new(
            ErrorCode::OriginError,
            format!("origin sent a manifest hashing to {digest}, not its Docker-Content-Digest"),
        ));
    }
    let record = ManifestRecord { media_type, body };
    store(m, &digest, &record, Some((&key, now_ms())));
    m.authz.grants.member(origin.name(), name, &digest);
    Ok(respond(&digest, record, false))
}

/// A HEAD by tag answered by the origin: relayed, and the tag mapping refreshed when the
/// manifest it names is cached.
fn head_through(m: &Mirror, origin: &Origin, name: &RepoName, key: &str, resp: &reqwest::Response) -> Response {
    let h = resp.headers();
    let digest = h.get(DIGEST_HEADER).and_then(|v| v.to_str().ok()?.parse::<Digest>().ok());
    if let Some(d) = digest {
        m.authz.grants.member(origin.name(), name, &d);
        if let Ok(Some(cached)) = m.meta.manifest(&d) {
            let _ = m.meta.put_tag(key, &TagRecord { digest: d, media_type: cached.media_type, seen_at_ms: now_ms() });
        }
    }
    let mut out = StatusCode::OK.into_response();
    for name in [CONTENT_TYPE, CONTENT_LENGTH] {
        if let Some(v) = h.get(&name) {
            out.headers_mut().insert(name, v.clone());
        }
    }
    if let Some(v) = h.get(DIGEST_HEADER) {
        out.headers_mut().insert(DIGEST_HEADER, v.clone());
    }
    out
}

/// Where the tag pointed at its most recent sighting, this node's (`local`) or the site's,
/// with the manifest; a newer sighting from the site is cached here with its time.
fn latest_tag(
    m: &Mirror,
    key: &str,
    local: Option<(TagRecord, ManifestRecord)>,
    site: Option<SiteTag>,
) -> Option<(Digest, ManifestRecord)> {
    let newer = site.filter(|s| local.as_ref().is_none_or(|(l, _)| s.seen_at_ms > l.seen_at_ms));
    newer.and_then(|s| from_site(m, s, key)).or_else(|| local.map(|(t, record)| (t.digest, record)))
}

/// The tag's record here, when its manifest is cached too.
fn cached_tag(m: &Mirror, key: &str) -> Option<(TagRecord, ManifestRecord)> {
    let t = m.meta.tag(key).ok().flatten()?;
    let record = m.meta.manifest(&t.digest).ok().flatten()?;
    Some((t, record))
}

/// The manifest a tag named when a site member last saw it, from this node's cache or as the
/// member sent it (checked against its digest); cached here with the tag's mapping and the
/// member's time of the sighting (not this node's: it did not see the origin say so).
fn from_site(m: &Mirror, tag: SiteTag, key: &str) -> Option<(Digest, ManifestRecord)> {
    let record = m.meta.manifest(&tag.digest).ok().flatten().or(tag.record)?;
    store(m, &tag.digest, &record, Some((key, tag.seen_at_ms)));
    Some((tag.digest, record))
}

/// The origin cannot decide, and this client may read the repository: serve the last manifest
/// seen for the tag, marked stale.
fn stale(
    m: &Mirror,
    key: &str,
    cached: Option<(Digest, ManifestRecord)>,
    why: Unavailable,
) -> Result<Response, ApiError> {
    let Some((digest, record)) = cached else {
        return Err(refusal(why.status(), why));
    };
    tracing::warn!(tag = key, %digest, ?why, "origin unavailable; serving cached tag");
    m.metrics.cache_lookup("manifest", true);
    Ok(respond(&digest, record, true))
}

async fn by_digest(
    m: &Mirror,
    origin: &Origin,
    name: &RepoName,
    digest: &Digest,
    headers: &HeaderMap,
) -> Result<Response, ApiError> {
    if let Ok(Some(record)) = m.meta.manifest(digest) {
        m.metrics.cache_lookup("manifest", true);
        return match m.authz.check(origin, name, Kind::Manifest, digest, headers, true).await {
            Access::Allowed(_) | Access::Cached(..) => Ok(respond(digest, record, false)),
            Access::Refused(_) if super::imported::allows(m, origin.name(), name, digest) => {
                Ok(respond(digest, record, false))
            }
            Access::Relay(resp) => Ok(relay(resp).await),
            Access::Refused(e) => Err(e),
        };
    }
    m.metrics.cache_lookup("manifest", false);
    let path = format!("/v2/{name}/manifests/{digest}");
    let cred = m.authz.grants.credential(headers);
    let resp = match m.authz.ask(origin, name, &cred, Method::GET, &path, headers).await {
        Asked::Answered(r) => r,
        Asked::Unavailable(why) => return from_site_by_digest(m, origin, name, digest, &cred, why).await,
    };
    if m.authz.decide(origin, name, &cred, Answer::from_status(resp.status().as_u16()), Some(digest), false)
        != Decision::Serve
    {
        return Ok(relay(resp).await);
    }
    let media_type = content_type(resp.headers());
    let body = read_limited(resp, MAX_MANIFEST)
        .await
        .ok_or_else(|| ApiError::new(ErrorCode::OriginError, "manifest from origin too large or cut short"))?;
    if Digest::of(&body) != *digest {
        return Err(ApiError::new(
            ErrorCode::OriginError,
            format!("origin sent a manifest that does not hash to {digest}"),
        ));
    }
    let record = ManifestRecord { media_type, body };
    store(m, digest, &record, None);
    Ok(respond(digest, record, false))
}

/// The origin cannot decide, and the manifest is not cached here: a site member's copy
/// (checked against its digest), to a client the access rule allows with what the site knows.
async fn from_site_by_digest(
    m: &Mirror,
    origin: &Origin,
    name: &RepoName,
    digest: &Digest,
    cred: &Credential,
    why: Unavailable,
) -> Result<Response, ApiError> {
    let q = Question { registry: origin.name(), name, tag: None, digest: Some(digest) };
    let (decision, site) = m.authz.decide_offline(origin, cred, why, &q, false).await;
    match (decision, site.and_then(|s| s.manifest)) {
        (Decision::Serve, Some(record)) => {
            store(m, digest, &record, None);
            Ok(respond(digest, record, false))
        }
        (Decision::Refuse(status), _) => Err(m.authz.refuse(origin, cred, status, why)),
        _ => Err(refusal(why.status(), why)),
    }
}

/// Caches a manifest, and the tag (key, when seen) that named it.
fn store(m: &Mirror, digest: &Digest, record: &ManifestRecord, tag: Option<(&str, u64)>) {
    let stored = m.meta.put_manifest(digest, record).and_then(|()| match tag {
        Some((key, seen_at_ms)) => {
            let media_type = record.media_type.clone();
            m.meta.put_tag(key, &TagRecord { digest: *digest, media_type, seen_at_ms })
        }
        None => Ok(()),
    });
    if let Err(e) = stored {
        tracing::warn!(%digest, error = %e, "could not cache manifest");
    }
}

fn content_type(h: &HeaderMap) -> String {
    h.get(CONTENT_TYPE).and_then(|v| v.to_str().ok()).unwrap_or("application/vnd.oci.image.manifest.v1+json").to_owned()
}

/// A manifest response (hyper drops the body itself for HEAD requests).
fn respond(digest: &Digest, record: ManifestRecord, stale: bool) -> Response {
    let mut out = (StatusCode::OK, record.body).into_response();
    let h = out.headers_mut();
    if let Ok(v) = HeaderValue::from_str(&record.media_type) {
        h.insert(CONTENT_TYPE, v);
    }
    if let Ok(v) = HeaderValue::from_str(&digest.to_string()) {
        h.insert(DIGEST_HEADER, v);
    }
    if stale {
        h.insert("warning", HeaderValue::from_static("110 shoal \"Response is Stale: origin unreachable\""));
    }
    out
}

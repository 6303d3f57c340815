//! Manifests: tags are always revalidated with the origin (a moved tag is seen at once) and
//! served from cache only when the origin cannot be reached; manifests by digest are immutable,
//! verified against their digest, cached and served locally.

use axum::response::{IntoResponse, Response};
use http::header::{CONTENT_LENGTH, CONTENT_TYPE};
use http::{HeaderMap, HeaderValue, Method, StatusCode};
use shoal_core::{Digest, ErrorCode, Reference, RepoName};

use super::authz::{Kind, Verdict};
use super::error::ApiError;
use super::{read_limited, relay, Mirror};
use crate::meta::{tag_key, ManifestRecord, TagRecord};
use crate::origin::{OriginError, Upstream, SMALL_REQUEST_TIMEOUT};

/// Largest manifest accepted (the distribution registry's own limit).
const MAX_MANIFEST: usize = 4 << 20;
const DIGEST_HEADER: &str = "docker-content-digest";

pub(super) async fn serve(
    m: &Mirror,
    up: &Upstream,
    name: &RepoName,
    reference: &Reference,
    method: &Method,
    headers: &HeaderMap,
) -> Result<Response, ApiError> {
    match reference {
        Reference::Tag(tag) => by_tag(m, up, name, tag, method, headers).await,
        Reference::Digest(digest) => by_digest(m, up, name, digest, headers).await,
    }
}

async fn by_tag(
    m: &Mirror,
    up: &Upstream,
    name: &RepoName,
    tag: &str,
    method: &Method,
    headers: &HeaderMap,
) -> Result<Response, ApiError> {
    let key = tag_key(up.name(), name.as_str(), tag);
    let path = format!("/v2/{name}/manifests/{tag}");
    let resp = match up
        .send(method.clone(), Some(name), &path, headers, HeaderMap::new(), Some(SMALL_REQUEST_TIMEOUT))
        .await
    {
        Ok(r) => r,
        Err(e) => return stale(m, &key, e),
    };
    let status = resp.status();
    if status.is_server_error() {
        let e =
            OriginError::Unreachable { registry: up.name().to_owned(), message: format!("origin answered {status}") };
        return stale(m, &key, e).or(Ok(relay(resp).await));
    }
    if status != StatusCode::OK {
        return Ok(relay(resp).await);
    }
    if method == Method::HEAD {
        return Ok(head_through(m, &key, &resp));
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
    store(m, &digest, &record, Some(&key));
    Ok(respond(&digest, record, false))
}

/// A HEAD by tag answered by the origin: relayed, and the tag mapping refreshed when the
/// manifest it names is cached.
fn head_through(m: &Mirror, key: &str, resp: &reqwest::Response) -> Response {
    let h = resp.headers();
    let digest = h.get(DIGEST_HEADER).and_then(|v| v.to_str().ok()?.parse::<Digest>().ok());
    if let Some(d) = digest {
        if let Ok(Some(cached)) = m.meta.manifest(&d) {
            let _ = m.meta.put_tag(key, &TagRecord { digest: d, media_type: cached.media_type });
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

/// The origin is unreachable: serve the last manifest seen for the tag, marked stale.
fn stale(m: &Mirror, key: &str, err: OriginError) -> Result<Response, ApiError> {
    let cached =
        m.meta.tag(key).ok().flatten().and_then(|t| Some((t.digest, m.meta.manifest(&t.digest).ok().flatten()?)));
    let Some((digest, record)) = cached else {
        return Err(err.into());
    };
    tracing::warn!(tag = key, %digest, error = %err, "origin unreachable; serving cached tag");
    m.metrics.cache_lookup("manifest", true);
    Ok(respond(&digest, record, true))
}

async fn by_digest(
    m: &Mirror,
    up: &Upstream,
    name: &RepoName,
    digest: &Digest,
    headers: &HeaderMap,
) -> Result<Response, ApiError> {
    if let Ok(Some(record)) = m.meta.manifest(digest) {
        m.metrics.cache_lookup("manifest", true);
        return match m.authz.check(up, name, Kind::Manifest, digest, headers).await {
            Verdict::Allowed(_) | Verdict::Unreachable(_) => Ok(respond(digest, record, false)),
            Verdict::Denied(resp) => Ok(relay(resp).await),
        };
    }
    m.metrics.cache_lookup("manifest", false);
    let path = format!("/v2/{name}/manifests/{digest}");
    let resp = up.send(Method::GET, Some(name), &path, headers, HeaderMap::new(), Some(SMALL_REQUEST_TIMEOUT)).await?;
    if resp.status() != StatusCode::OK {
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

fn store(m: &Mirror, digest: &Digest, record: &ManifestRecord, tag: Option<&str>) {
    let stored = m.meta.put_manifest(digest, record).and_then(|()| match tag {
        Some(key) => m.meta.put_tag(key, &TagRecord { digest: *digest, media_type: record.media_type.clone() }),
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

//! Blobs: authorize with the origin, then serve from the local cache, or join (or start) the
//! blob's download and stream it as it arrives. HEAD never starts a download. A blob the cache
//! has no room for, or cannot store, is streamed straight from the origin.

use axum::body::Body;
use axum::response::Response;
use http::header::{ACCEPT_RANGES, AUTHORIZATION, CONTENT_LENGTH, CONTENT_RANGE, CONTENT_TYPE, RANGE};
use http::{HeaderMap, HeaderValue, Method, StatusCode};
use shoal_core::range::{self, RangeSpec};
use shoal_core::{ByteRange, Digest, ErrorCode, PieceLayout, RepoName};

use super::authz::{refusal, Access, Kind};
use super::error::ApiError;
use super::{relay, Mirror};
use crate::hash::Hasher;
use crate::metrics::{KindLabels, ReasonLabels};
use crate::mirror::body;
use crate::origin::direct::{self, Direct};
use crate::origin::Origin;
use crate::origin::OriginFetch;

pub(super) async fn serve(
    m: &Mirror,
    origin: &std::sync::Arc<Origin>,
    name: &RepoName,
    digest: &Digest,
    method: &Method,
    headers: &HeaderMap,
) -> Result<Response, ApiError> {
    let spec = range_spec(headers)?;
    let held = m.tasks.holds(digest);
    let size = match m.authz.check(origin, name, Kind::Blob, digest, headers, held).await {
        Access::Relay(resp) => return Ok(relay(resp).await),
        Access::Refused(e) if super::imported::allows(m, origin.name(), name, digest) => {
            return serve_without_origin(m, digest, method, spec).unwrap_or(Err(e))
        }
        Access::Refused(e) => return Err(e),
        Access::Allowed(size) => size,
        Access::Cached(why, site_size) => match serve_without_origin(m, digest, method, spec) {
            Some(served) => return served,
            // Not here: the site holds it (the origin stays unreachable; the download takes
            // it from members, checked against its sha256).
            None => Some(site_size.ok_or_else(|| refusal(why.status(), why))?),
        },
    };
    let served = m.metrics.served_bytes.get_or_create(&KindLabels { kind: "blob" }).clone();
    let mut forwarded = HeaderMap::new();
    if let Some(a) = headers.get(AUTHORIZATION) {
        forwarded.insert(AUTHORIZATION, a.clone());
    }
    let fetch = OriginFetch { origin: origin.clone(), name: name.clone(), headers: forwarded };
    let source = m.tasks.direct_origin(fetch.clone());
    let fallback = Some(body::Fallback { origin: source, digest: *digest, uncached: m.metrics.uncached.clone() });
    if let Some(local) = m.tasks.local(digest) {
        m.metrics.cache_lookup("blob", true);
        return respond(method, digest, local.size, spec, |r| body::local(local, r, served, fallback));
    }
    m.metrics.cache_lookup("blob", false);
    let size = size.ok_or_else(|| ApiError::new(ErrorCode::OriginError, "origin gave no size for the blob"))?;
    let size = PieceLayout::bounded(size, m.max_blob_size)
        .map_err(|e| ApiError::new(ErrorCode::OriginError, format!("origin says {digest}: {e}")))?
        .size;
    if method == Method::HEAD {
        return respond(method, digest, size, spec, |_| Body::empty());
    }
    match m.tasks.join_or_start(*digest, size, fetch.clone()).await {
        Ok((task, pin)) => {
            respond(method, digest, task.layout.size, spec, |r| body::downloading(&task, pin, r, served, fallback))
        }
        Err(why) => {
            m.tasks.space().health.failed(digest, &why.to_string());
            m.metrics.uncached.get_or_create(&ReasonLabels { reason: why.reason() }).inc();
            let source = m.tasks.direct_origin(fetch);
            respond(method, digest, size, spec, |r| {
                let whole = (r.start == 0).then(Hasher::default);
                direct::body(Direct::new(source, *digest, size, r, whole))
            })
        }
    }
}

/// With the origin unable to decide, a blob this node already holds (or is downloading) is
/// served to a client a remembered grant allows.
fn serve_without_origin(
    m: &Mirror,
    digest: &Digest,
    method: &Method,
    spec: Option<RangeSpec>,
) -> Option<Result<Response, ApiError>> {
    let served = m.metrics.served_bytes.get_or_create(&KindLabels { kind: "blob" }).clone();
    if let Some(local) = m.tasks.local(digest) {
        m.metrics.cache_lookup("blob", true);
        return Some(respond(method, digest, local.size, spec, |r| body::local(local, r, served, None)));
    }
    let (task, pin) = m.tasks.join(digest)?;
    Some(respond(method, digest, task.layout.size, spec, |r| body::downloading(&task, pin, r, served, None)))
}

fn range_spec(headers: &HeaderMap) -> Result<Option<RangeSpec>, ApiError> {
    let Some(v) = headers.get(RANGE) else {
        return Ok(None);
    };
    let text = v.to_str().map_err(|_| ApiError::from(range::RangeError::Malformed))?;
    Ok(range::parse(text)?)
}

/// A blob response: 200 for the whole blob, 206 for a range; headers only for HEAD.
fn respond(
    method: &Method,
    digest: &Digest,
    size: u64,
    spec: Option<RangeSpec>,
    body: impl FnOnce(ByteRange) -> Body,
) -> Result<Response, ApiError> {
    let (status, range) = match spec {
        Some(s) => (StatusCode::PARTIAL_CONTENT, s.resolve(size)?),
        None => (StatusCode::OK, ByteRange { start: 0, end: size }),
    };
    let body = if method == Method::HEAD { Body::empty() } else { body(range) };
    let mut out = Response::new(body);
    *out.status_mut() = status;
    let h = out.headers_mut();
    h.insert(CONTENT_LENGTH, HeaderValue::from(range.len()));
    h.insert(CONTENT_TYPE, HeaderValue::from_static("application/octet-stream"));
    h.insert(ACCEPT_RANGES, HeaderValue::from_static("bytes"));
    if let Ok(v) = HeaderValue::from_str(&digest.to_string()) {
        h.insert("docker-content-digest", v);
    }
    if status == StatusCode::PARTIAL_CONTENT {
        if let Ok(v) = HeaderValue::from_str(&range.content_range(size)) {
            h.insert(CONTENT_RANGE, v);
        }
    }
    Ok(out)
}

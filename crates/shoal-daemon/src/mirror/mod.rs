//! The registry mirror: the OCI distribution read API over HTTP.
//!
//! The handler is thin: parse the path into a [`Route`] (pure, in shoal-core), pick the origin
//! from `ns`, then hand over to `manifests`, `blobs` or `lists` (tags and referrers, relayed).
//! Imported images (`imported`) are served when the origin cannot answer.
//! Every error leaves as an OCI error body.

pub(crate) mod authz;
mod blobs;
pub(crate) mod body;
pub mod error;
mod grants;
mod imported;
mod lists;
mod manifests;
pub(crate) mod site;

use std::sync::Arc;

use axum::extract::{Request, State};
use axum::response::{IntoResponse, Response};
use axum::Router;
use http::header::{AUTHORIZATION, CONTENT_LENGTH, CONTENT_TYPE, WWW_AUTHENTICATE};
use http::request::Parts;
use http::{HeaderMap, HeaderValue, Method, StatusCode};
use shoal_core::access::Answer;
use shoal_core::route::{self, Route};
use shoal_core::ErrorCode;

use crate::download::tasks::Tasks;
use crate::metrics::{Metrics, RequestLabels};
use crate::origin::{Origin, Origins};
use crate::store::meta::MetaStore;
pub use authz::Authz;
use error::ApiError;
use grants::Challenged;

/// The API version header every `/v2/` response carries.
const API_VERSION: (&str, &str) = ("docker-distribution-api-version", "registry/2.0");
/// Largest error body relayed from the origin.
const MAX_RELAYED_BODY: usize = 64 << 10;

/// Everything the mirror handlers share.
pub struct Mirror {
    /// Origin registries.
    pub origins: Origins,
    /// Blob downloads.
    pub tasks: Arc<Tasks>,
    /// Metadata (manifests, tags).
    pub meta: Arc<dyn MetaStore>,
    /// Metrics.
    pub metrics: Arc<Metrics>,
    /// Read authorization.
    pub authz: Authz,
    /// Blobs larger than this (bytes, as the origin says) are refused (`max_blob_size`).
    pub max_blob_size: u64,
}

/// The mirror's HTTP router.
pub fn router(mirror: Arc<Mirror>) -> Router {
    Router::new().fallback(handle).with_state(mirror)
}

async fn handle(State(mirror): State<Arc<Mirror>>, req: Request) -> Response {
    let (req, _body) = req.into_parts();
    let method = req.method.clone();
    let parsed = route::parse(req.uri.path());
    let label = match &parsed {
        Ok(Route::Base) => "base",
        Ok(Route::Manifest { .. }) => "manifest",
        Ok(Route::Blob { .. }) => "blob",
        Ok(Route::Upload) => "upload",
        Ok(Route::Tags { .. }) => "tags",
        Ok(Route::Referrers { .. }) => "referrers",
        _ => "other",
    };
    let mut resp = match dispatch(&mirror, parsed, &req).await {
        Ok(r) => r,
        Err(e) => e.into_response(),
    };
    resp.headers_mut().insert(API_VERSION.0, HeaderValue::from_static(API_VERSION.1));
    let status = resp.status().as_u16();
    if label == "manifest" && status == 200 && method == Method::GET {
        let len = resp.headers().get(CONTENT_LENGTH).and_then(|v| v.to_str().ok()?.parse().ok()).unwrap_or(0);
        mirror.metrics.served_bytes.get_or_create(&crate::metrics::KindLabels { kind: "manifest" }).inc_by(len);
    }
    let method_label = crate::metrics::method_label(&method);
    mirror.metrics.requests.get_or_create(&RequestLabels { route: label, method: method_label, status }).inc();
    tracing::debug!(%method, path = req.uri.path(), status, "mirror request");
    resp
}

async fn dispatch(
    mirror: &Mirror,
    parsed: Result<Route, route::RouteError>,
    req: &Parts,
) -> Result<Response, ApiError> {
    let method = &req.method;
    let route = parsed?;
    if route == Route::Upload || (method != Method::GET && method != Method::HEAD) {
        return Err(ApiError::method_not_allowed(method));
    }
    let origin = mirror.origins.select(ns(req.uri.query())?.as_deref())?;
    let headers = &req.headers;
    match route {
        Route::Base => base(mirror, &origin, headers).await,
        Route::Manifest { name, reference } => {
            manifests::serve(mirror, &origin, &name, &reference, method, headers).await
        }
        Route::Blob { name, digest } => blobs::serve(mirror, &origin, &name, &digest, method, headers).await,
        Route::Tags { name } | Route::Referrers { name, .. } => {
            lists::serve(&origin, &name, req.uri.path(), req.uri.query(), method, headers).await
        }
        Route::Upload => Err(ApiError::method_not_allowed(method)),
        Route::Unsupported => Err(ApiError::new(ErrorCode::Unsupported, "this mirror does not serve the catalog")),
    }
}

/// containerd's `ns` query parameter, validated.
fn ns(query: Option<&str>) -> Result<Option<String>, ApiError> {
    let Some(q) = query else { return Ok(None) };
    let Some((_, v)) = url::form_urlencoded::parse(q.as_bytes()).find(|(k, _)| k == "ns") else {
        return Ok(None);
    };
    route::parse_ns(&v).map_err(|e| ApiError::new(ErrorCode::Unsupported, format!("{e}: {v:?}")))?;
    Ok(Some(v.into_owned()))
}

/// `/v2/`: 200, unless the origin wants the client to authenticate (and the daemon holds no
/// credentials of its own), in which case its challenge is passed on. An unreachable origin
/// still answers 200, so clients go on to what the cache can serve; but a client without
/// credentials gets the origin's last challenge, as it would online, so it sends them.
async fn base(mirror: &Mirror, origin: &Origin, headers: &HeaderMap) -> Result<Response, ApiError> {
    if !origin.has_credentials() {
        let anonymous = headers.get(AUTHORIZATION).is_none();
        let sent = origin
            .send(Method::GET, None, "/v2/", headers, HeaderMap::new(), Some(crate::origin::SMALL_REQUEST_TIMEOUT))
            .await;
        let grants = &mirror.authz.grants;
        match sent {
            Ok(resp) if resp.status() == StatusCode::UNAUTHORIZED => {
                if anonymous {
                    let challenge = resp.headers().get(WWW_AUTHENTICATE).and_then(|v| v.to_str().ok());
                    grants.challenged(origin.name(), Challenged::Base, challenge);
                }
                return Ok(relay(resp).await);
            }
            Ok(resp) if resp.status().is_success() && anonymous => {
                grants.challenged(origin.name(), Challenged::Base, None);
            }
            Ok(resp) if !matches!(Answer::from_status(resp.status().as_u16()), Answer::Unavailable(_)) => {}
            _ if anonymous => {
                let challenge = grants.challenge(origin.name(), Challenged::Base);
                if let Some(c) = challenge.and_then(|c| HeaderValue::from_str(&c).ok()) {
                    let e = ApiError::new(
                        ErrorCode::Unauthorized,
                        "authentication required (the origin cannot be asked now)",
                    );
                    return Err(e.with_header(WWW_AUTHENTICATE, c));
                }
            }
            _ => {}
        }
    }
    Ok((StatusCode::OK, [(CONTENT_TYPE, "application/json")], "{}").into_response())
}

/// Passes an origin's (error) answer back: status, auth challenge, content type and a bounded
/// body. A body that is not an OCI error is replaced by one.
async fn relay(resp: reqwest::Response) -> Response {
    let status = StatusCode::from_u16(resp.status().as_u16()).unwrap_or(StatusCode::BAD_GATEWAY);
    let challenges: Vec<HeaderValue> = resp.headers().get_all(WWW_AUTHENTICATE).iter().cloned().collect();
    let body = read_limited(resp, MAX_RELAYED_BODY).await.unwrap_or_default();
    let body = if serde_json::from_slice::<serde_json::Value>(&body).is_ok_and(|v| v.get("errors").is_some()) {
        body
    } else {
        relayed_code(status).body(&format!("origin answered {status}")).into_bytes()
    };
    let mut out = (status, body).into_response();
    for c in challenges {
        out.headers_mut().append(WWW_AUTHENTICATE, c);
    }
    out.headers_mut().insert(CONTENT_TYPE, HeaderValue::from_static("application/json"));
    out
}

fn relayed_code(status: StatusCode) -> ErrorCode {
    match status.as_u16() {
        401 => ErrorCode::Unauthorized,
        403 => ErrorCode::Denied,
        404 => ErrorCode::NotFound,
        429 => ErrorCode::TooManyRequests,
        _ => ErrorCode::OriginError,
    }
}

/// Reads at most `limit` bytes of a body; `None` if it is longer or breaks.
async fn read_limited(mut resp: reqwest::Response, limit: usize) -> Option<Vec<u8>> {
    if resp
        .headers()
        .get(CONTENT_LENGTH)
        .and_then(|v| v.to_str().ok()?.parse::<usize>().ok())
        .is_some_and(|n| n > limit)
    {
        return None;
    }
    let mut out = Vec::new();
    while let Some(chunk) = resp.chunk().await.ok()? {
        if out.len() + chunk.len() > limit {
            return None;
        }
        out.extend_from_slice(&chunk);
    }
    Some(out)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_ns() {
        assert_eq!(ns(None).unwrap(), None);
        assert_eq!(ns(Some("x=1")).unwrap(), None);
        assert_eq!(ns(Some("ns=127.0.0.1%3A5000")).unwrap().as_deref(), Some("127.0.0.1:5000"));
        assert_eq!(ns(Some("ns=docker.io&x=1")).unwrap().as_deref(), Some("docker.io"));
        assert!(ns(Some("ns=evil%2Fpath")).is_err());
        assert!(ns(Some("ns=")).is_err());
    }
}

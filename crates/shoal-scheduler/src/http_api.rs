//! The scheduler's preheat HTTP API, for registries, Harbor and scripts: `POST /preheat`,
//! `GET /preheat/{id}`, `POST /registry/notifications` (the distribution registry's and
//! Harbor's event envelope) and `GET /health` (Harbor's provider health check).
//!
//! Every route but `/health` needs `Authorization: Bearer <preheat token>` (compared in constant
//! time); there is no way to serve it without a token. Bodies are bounded by [`MAX_BODY`];
//! errors are `{"errors":[{"code","message"}]}` with the right status. The cluster token is
//! never accepted here: this listener is plain HTTP, and that token must not cross a network.

use std::sync::Arc;

use axum::body::Bytes;
use axum::extract::{DefaultBodyLimit, Path, State};
use axum::http::{HeaderMap, StatusCode};
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post};
use axum::{Json, Router};
use serde::Deserialize;
use shoal_core::preheat::{JobView, Request, SubmitError};

use crate::preheat::Preheater;

/// Largest request body accepted.
pub const MAX_BODY: usize = 1 << 20;

/// What the preheat routes share.
pub struct Api {
    /// The jobs.
    pub preheat: Arc<Preheater>,
    /// The token callers must present.
    pub token: Arc<[u8]>,
    /// Replaces the registry notifications name (see [`crate::notify::parse`]).
    pub registry: Option<String>,
}

/// The preheat router.
pub fn router(api: Arc<Api>) -> Router {
    Router::new()
        .route("/health", get(|| async { Json(serde_json::json!({"status": "healthy"})) }))
        .route("/preheat", post(create))
        .route("/preheat/{id}", get(show))
        .route("/registry/notifications", post(notifications))
        .fallback(|| async { error(StatusCode::NOT_FOUND, "NOT_FOUND", "no such preheat API route") })
        .layer(DefaultBodyLimit::max(MAX_BODY))
        .with_state(api)
}

/// An error response.
fn error(status: StatusCode, code: &str, message: impl std::fmt::Display) -> Response {
    let body = serde_json::json!({"errors": [{"code": code, "message": message.to_string()}]});
    (status, Json(body)).into_response()
}

/// The refusal of a caller without the preheat token; `None` lets it in.
fn refusal(api: &Api, headers: &HeaderMap) -> Option<Response> {
    let presented = headers
        .get(http::header::AUTHORIZATION)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.strip_prefix("Bearer ").or_else(|| v.strip_prefix("bearer ")))
        .map(str::trim);
    match presented {
        Some(t) if constant_time_eq(t.as_bytes(), &api.token) => None,
        Some(_) => Some(error(StatusCode::UNAUTHORIZED, "UNAUTHORIZED", "wrong preheat token")),
        None => {
            let mut r =
                error(StatusCode::UNAUTHORIZED, "UNAUTHORIZED", "Authorization: Bearer <preheat token> required");
            r.headers_mut().insert(
                http::header::WWW_AUTHENTICATE,
                http::HeaderValue::from_static("Bearer realm=\"shoal-preheat\""),
            );
            Some(r)
        }
    }
}

fn constant_time_eq(a: &[u8], b: &[u8]) -> bool {
    a.len() == b.len() && a.iter().zip(b).fold(0u8, |acc, (x, y)| acc | (x ^ y)) == 0
}

/// `POST /preheat` body.
#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct Create {
    image: String,
    #[serde(default)]
    platforms: Vec<String>,
    #[serde(default)]
    sites: Vec<String>,
}

fn body_error(e: axum::extract::rejection::BytesRejection) -> Response {
    error(e.status(), "BODY_INVALID", e.body_text())
}

/// A POST's body, once the caller proved the token and the body arrived whole within its
/// limit; otherwise the answer to send.
fn admitted(
    api: &Api,
    headers: &HeaderMap,
    body: Result<Bytes, axum::extract::rejection::BytesRejection>,
) -> Result<Bytes, Box<Response>> {
    if let Some(r) = refusal(api, headers) {
        return Err(Box::new(r));
    }
    body.map_err(|e| Box::new(body_error(e)))
}

fn view(job: &JobView, joined: bool) -> serde_json::Value {
    let mut v = serde_json::to_value(job).unwrap_or_default();
    v["joined"] = joined.into();
    v
}

fn refused(e: &SubmitError) -> Response {
    match e {
        SubmitError::NoHosts => error(StatusCode::SERVICE_UNAVAILABLE, "NO_HOSTS", e),
        SubmitError::TooMany(_) => error(StatusCode::TOO_MANY_REQUESTS, "TOOMANYREQUESTS", e),
    }
}

async fn create(
    State(api): State<Arc<Api>>,
    headers: HeaderMap,
    body: Result<Bytes, axum::extract::rejection::BytesRejection>,
) -> Response {
    let body = match admitted(&api, &headers, body) {
        Ok(b) => b,
        Err(r) => return *r,
    };
    let create: Create = match serde_json::from_slice(&body) {
        Ok(c) => c,
        Err(e) => {
            return error(
                StatusCode::BAD_REQUEST,
                "BODY_INVALID",
                format!("expected {{\"image\", \"platforms\", \"sites\"}}: {e}"),
            )
        }
    };
    let request = match Request::parse(&create.image, &create.platforms, &create.sites) {
        Ok(r) => r,
        Err(e) => return error(StatusCode::BAD_REQUEST, "NAME_INVALID", e),
    };
    match api.preheat.submit(request) {
        Ok((job, joined)) => {
            let status = if joined { StatusCode::OK } else { StatusCode::ACCEPTED };
            (status, Json(view(&job, joined))).into_response()
        }
        Err(e) => refused(&e),
    }
}

async fn show(State(api): State<Arc<Api>>, headers: HeaderMap, Path(id): Path<String>) -> Response {
    if let Some(r) = refusal(&api, &headers) {
        return r;
    }
    let Ok(id) = id.parse::<u64>() else {
        return error(StatusCode::BAD_REQUEST, "ID_INVALID", format!("{id:?} is not a preheat job id"));
    };
    match api.preheat.job(id) {
        Some(job) => Json(view(&job, false)).into_response(),
        None => error(
            StatusCode::NOT_FOUND,
            "NOT_FOUND",
            format!("no preheat job {id} (finished jobs are kept for a while)"),
        ),
    }
}

async fn notifications(
    State(api): State<Arc<Api>>,
    headers: HeaderMap,
    body: Result<Bytes, axum::extract::rejection::BytesRejection>,
) -> Response {
    let body = match admitted(&api, &headers, body) {
        Ok(b) => b,
        Err(r) => return *r,
    };
    let pushes = match crate::notify::parse(&body, api.registry.as_deref()) {
        Ok(p) => p,
        Err(e) => return error(StatusCode::BAD_REQUEST, "BODY_INVALID", e),
    };
    let mut jobs = Vec::new();
    for request in pushes.requests {
        let image = request.image.to_string();
        match api.preheat.submit(request) {
            Ok((job, joined)) => {
                tracing::info!(%image, job = job.id, joined, "preheat on registry notification");
                jobs.push(serde_json::json!({"id": job.id, "image": image, "joined": joined}));
            }
            // The registry retries the envelope later: by then daemons may be connected.
            Err(e) => return refused(&e),
        }
    }
    Json(serde_json::json!({"preheats": jobs, "ignored": pushes.ignored})).into_response()
}

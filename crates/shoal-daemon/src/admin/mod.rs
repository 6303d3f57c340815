//! The admin listener's API: `/healthz`, `/status`, `/metrics`, and the cache as a thing to
//! manage — `POST /import` (an image from an archive, see `import`), `GET /cache`,
//! `POST /cache/rm`, `POST /cache/pin` (see `cache`).
//!
//! It listens on loopback by default and has no authentication of its own: whoever reaches it
//! manages this node's cache. It never serves registry clients (that is the mirror).

mod cache;
mod import;
pub mod manifest;
pub mod wire;

use std::sync::Arc;

use axum::extract::DefaultBodyLimit;
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post};
use axum::Router;
use http::header::CONTENT_TYPE;
use http::{HeaderValue, StatusCode};

use crate::download::tasks::Tasks;
use crate::metrics::Metrics;
use crate::mirror::Mirror;
use crate::store::space::Space;

/// What the admin handlers share.
pub struct Admin {
    /// The mirror (origins, blob tasks, metadata).
    pub mirror: Arc<Mirror>,
    /// Metrics.
    pub metrics: Arc<Metrics>,
    /// Imports running at once, at most [`MAX_IMPORTS`].
    imports: Arc<tokio::sync::Semaphore>,
}

/// Imports that may run at once; more are refused (429).
const MAX_IMPORTS: usize = 2;
/// Largest body of the small JSON requests (`/cache/rm`, `/cache/pin`).
const MAX_SMALL_BODY: usize = 64 << 10;

impl Admin {
    /// The admin state over `mirror`.
    pub fn new(mirror: Arc<Mirror>, metrics: Arc<Metrics>) -> Self {
        Self { mirror, metrics, imports: Arc::new(tokio::sync::Semaphore::new(MAX_IMPORTS)) }
    }

    fn tasks(&self) -> &Arc<Tasks> {
        &self.mirror.tasks
    }
}

/// The admin listener's router.
pub fn router(admin: Arc<Admin>) -> Router {
    let space = admin.tasks().space().clone();
    let (status, metrics) = (admin.clone(), admin.metrics.clone());
    Router::new()
        .route("/healthz", get(move || async move { healthz(&space) }))
        .route("/status", get(move || async move { axum::Json(status.tasks().status()) }))
        .route(
            "/metrics",
            get(move || async move {
                ([(CONTENT_TYPE, "application/openmetrics-text; version=1.0.0; charset=utf-8")], metrics.encode())
            }),
        )
        .route("/import", post(import::handle))
        .route("/cache", get(cache::list))
        .route("/cache/rm", post(cache::remove))
        .route("/cache/pin", post(cache::pin))
        .layer(DefaultBodyLimit::max(MAX_SMALL_BODY))
        .with_state(admin)
}

/// `ok`, or why the cache is degraded. Always 200: the daemon still serves every pull (from the
/// origin), and a restart would not give the disk back.
fn healthz(space: &Space) -> String {
    match space.health.degraded() {
        None => "ok\n".into(),
        Some((reason, secs)) => format!("degraded: cache: {reason} (for {secs} s)\n"),
    }
}

/// An admin error: an OCI-style error body with the status its kind implies.
#[derive(Debug, thiserror::Error)]
pub enum AdminError {
    /// The request (an archive's header, a target) is malformed or inconsistent: nothing was
    /// changed.
    #[error("{0}")]
    Invalid(String),
    /// No such image or blob.
    #[error("{0}")]
    NotFound(String),
    /// The blob is being served or downloaded right now.
    #[error("{0}")]
    InUse(String),
    /// The cache has no room (quota or free-space floor) for the import.
    #[error("{0}")]
    NoRoom(String),
    /// Too many imports at once.
    #[error("{0}")]
    Busy(String),
    /// The store failed.
    #[error("{0}")]
    Store(String),
}

impl AdminError {
    fn status_and_code(&self) -> (StatusCode, &'static str) {
        match self {
            Self::Invalid(_) => (StatusCode::BAD_REQUEST, "INVALID"),
            Self::NotFound(_) => (StatusCode::NOT_FOUND, "NOT_FOUND"),
            Self::InUse(_) => (StatusCode::CONFLICT, "IN_USE"),
            Self::NoRoom(_) => (StatusCode::INSUFFICIENT_STORAGE, "NO_ROOM"),
            Self::Busy(_) => (StatusCode::TOO_MANY_REQUESTS, "TOOMANYREQUESTS"),
            Self::Store(_) => (StatusCode::INTERNAL_SERVER_ERROR, "INTERNAL_ERROR"),
        }
    }
}

impl From<crate::store::meta::MetaError> for AdminError {
    fn from(e: crate::store::meta::MetaError) -> Self {
        Self::Store(e.to_string())
    }
}

impl IntoResponse for AdminError {
    fn into_response(self) -> Response {
        let (status, code) = self.status_and_code();
        let body = serde_json::json!({"errors": [{"code": code, "message": self.to_string()}]});
        let mut resp = (status, body.to_string()).into_response();
        resp.headers_mut().insert(CONTENT_TYPE, HeaderValue::from_static("application/json"));
        resp
    }
}

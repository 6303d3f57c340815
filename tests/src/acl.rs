//! An access-controlled origin: an HTTP front on 127.0.0.1 before the real registry that lets only
//! named users (basic auth) read their repositories, and anyone read `pub/*`; others get 401 with a
//! `WWW-Authenticate` challenge (wrong or missing credentials) or 403 (a valid user, another's
//! repository). `GET /v2/` wants a valid user, as the distribution registry with htpasswd does. It can be switched at run time to answer 503, to be slow, or to be gone (listener
//! closed and every connection dropped: connection refused).
//!
//! The registry behind it runs without auth (images are pushed to it directly); only the daemon
//! talks to the front.

use std::convert::Infallible;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use anyhow::Result;
use axum::body::Body;
use base64::Engine as _;
use hyper::body::Incoming;
use hyper::{Request, Response, StatusCode};
use hyper_util::rt::TokioIo;
use tokio::net::TcpListener;
use tokio::task::JoinHandle;

use crate::registry::Registry;

/// How the front behaves.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Mode {
    /// Enforces the ACL and proxies to the registry.
    Up,
    /// Answers every request 503 with an OCI error.
    Unavailable,
    /// Waits this long before answering each request normally.
    Slow(Duration),
    /// Not listening; existing connections dropped.
    Gone,
}

/// Who may read what.
#[derive(Debug, Clone)]
pub struct User {
    /// Basic-auth user name.
    pub name: String,
    /// Password.
    pub password: String,
    /// Repository prefix (e.g. `priv/`) this user may read, besides `pub/`.
    pub prefix: String,
}

struct State {
    upstream: String,
    users: Vec<User>,
    mode: Mutex<Mode>,
    /// Requests for repositories with this prefix are delayed this long (whatever the mode).
    slow_prefix: Mutex<Option<(String, Duration)>>,
    http: reqwest::Client,
    requests: AtomicUsize,
}

/// A running front; stops on drop.
pub struct AclFront {
    port: u16,
    state: Arc<State>,
    task: Mutex<Option<JoinHandle<()>>>,
}

impl AclFront {
    /// A front before `registry` for `users`.
    pub async fn start(registry: &Registry, users: Vec<User>) -> Result<Self> {
        let listener = TcpListener::bind("127.0.0.1:0").await?;
        let port = listener.local_addr()?.port();
        let state = Arc::new(State {
            upstream: registry.url(),
            users,
            mode: Mutex::new(Mode::Up),
            slow_prefix: Mutex::new(None),
            http: reqwest::Client::builder().build()?,
            requests: AtomicUsize::new(0),
        });
        let task = tokio::spawn(serve(listener, state.clone()));
        Ok(Self { port, state, task: Mutex::new(Some(task)) })
    }

    /// `127.0.0.1:PORT`.
    pub fn host(&self) -> String {
        format!("127.0.0.1:{}", self.port)
    }

    /// `http://127.0.0.1:PORT`.
    pub fn url(&self) -> String {
        format!("http://{}", self.host())
    }

    /// Requests answered so far (any mode).
    pub fn requests(&self) -> usize {
        self.state.requests.load(Ordering::SeqCst)
    }

    /// Switches the behaviour; `Gone` closes the listener and drops every connection, and
    /// leaving `Gone` listens on the same port again.
    pub async fn set_mode(&self, mode: Mode) -> Result<()> {
        *self.state.mode.lock().unwrap_or_else(|p| p.into_inner()) = mode;
        let running = self.task.lock().unwrap_or_else(|p| p.into_inner()).take();
        match (mode, running) {
            (Mode::Gone, Some(task)) => {
                task.abort();
                let _ = task.await;
            }
            (Mode::Gone, None) => {}
            (_, Some(task)) => *self.task.lock().unwrap_or_else(|p| p.into_inner()) = Some(task),
            (_, None) => {
                let listener = TcpListener::bind(("127.0.0.1", self.port)).await?;
                let task = tokio::spawn(serve(listener, self.state.clone()));
                *self.task.lock().unwrap_or_else(|p| p.into_inner()) = Some(task);
            }
        }
        Ok(())
    }

    /// Delays every request for repositories starting with `prefix` by `delay` (`None`: none).
    pub fn set_slow_prefix(&self, slow: Option<(&str, Duration)>) {
        *self.state.slow_prefix.lock().unwrap_or_else(|p| p.into_inner()) = slow.map(|(p, d)| (p.to_owned(), d));
    }
}

impl Drop for AclFront {
    fn drop(&mut self) {
        if let Some(task) = self.task.lock().unwrap_or_else(|p| p.into_inner()).take() {
            task.abort();
        }
    }
}

/// Accepts connections until aborted; aborting drops the listener and every connection.
async fn serve(listener: TcpListener, state: Arc<State>) {
    let mut connections = tokio::task::JoinSet::new();
    loop {
        tokio::select! {
            accepted = listener.accept() => {
                let Ok((stream, _)) = accepted else { continue };
                let state = state.clone();
                connections.spawn(async move {
                    let service = hyper::service::service_fn(move |req| handle(state.clone(), req));
                    let _ = hyper::server::conn::http1::Builder::new().serve_connection(TokioIo::new(stream), service).await;
                });
            }
            Some(_) = connections.join_next(), if !connections.is_empty() => {}
        }
    }
}

async fn handle(state: Arc<State>, req: Request<Incoming>) -> Result<Response<Body>, Infallible> {
    state.requests.fetch_add(1, Ordering::SeqCst);
    let path = req.uri().path().to_owned();
    let repo = repository(&path);
    let slow = state.slow_prefix.lock().unwrap_or_else(|p| p.into_inner()).clone();
    if let (Some((prefix, delay)), Some(repo)) = (&slow, &repo) {
        if repo.starts_with(prefix.as_str()) {
            tokio::time::sleep(*delay).await;
        }
    }
    let mode = *state.mode.lock().unwrap_or_else(|p| p.into_inner());
    match mode {
        Mode::Unavailable => return Ok(error(StatusCode::SERVICE_UNAVAILABLE, "UNAVAILABLE", "origin is down")),
        Mode::Slow(delay) => tokio::time::sleep(delay).await,
        Mode::Up | Mode::Gone => {}
    }
    let user = basic_user(&req);
    let known = user.as_ref().map(|(u, p)| state.users.iter().find(|x| &x.name == u && &x.password == p));
    // Like the distribution registry with htpasswd: `/v2/` wants a valid user.
    if repo.is_none() && !matches!(known, Some(Some(_))) {
        return Ok(challenge());
    }
    if let Some(repo) = &repo {
        match known {
            Some(None) => return Ok(challenge()),
            None if !repo.starts_with("pub/") => return Ok(challenge()),
            Some(Some(u)) if !repo.starts_with("pub/") && !repo.starts_with(&u.prefix) => {
                return Ok(error(StatusCode::FORBIDDEN, "DENIED", "requested access to the resource is denied"))
            }
            _ => {}
        }
    }
    Ok(proxy(&state, req).await.unwrap_or_else(|e| error(StatusCode::BAD_GATEWAY, "UNKNOWN", &e.to_string())))
}

/// The repository of a `/v2/<name>/(manifests|blobs|tags)/...` path.
fn repository(path: &str) -> Option<String> {
    let rest = path.strip_prefix("/v2/")?;
    ["/manifests/", "/blobs/", "/tags/"].iter().find_map(|s| rest.find(s).map(|i| rest[..i].to_owned()))
}

fn basic_user(req: &Request<Incoming>) -> Option<(String, String)> {
    let value = req.headers().get(hyper::header::AUTHORIZATION)?.to_str().ok()?;
    let Some(b64) = value.strip_prefix("Basic ") else { return Some((String::new(), String::new())) };
    let text = String::from_utf8(base64::engine::general_purpose::STANDARD.decode(b64).ok()?).ok()?;
    let (u, p) = text.split_once(':')?;
    Some((u.to_owned(), p.to_owned()))
}

fn error(status: StatusCode, code: &str, message: &str) -> Response<Body> {
    let body = format!(r#"{{"errors":[{{"code":"{code}","message":"{message}"}}]}}"#);
    let mut r = Response::new(Body::from(body));
    *r.status_mut() = status;
    r.headers_mut().insert(hyper::header::CONTENT_TYPE, "application/json".parse().expect("static header"));
    r
}

fn challenge() -> Response<Body> {
    let mut r = error(StatusCode::UNAUTHORIZED, "UNAUTHORIZED", "authentication required");
    r.headers_mut()
        .insert(hyper::header::WWW_AUTHENTICATE, "Basic realm=\"acl-front\"".parse().expect("static header"));
    r
}

/// Forwards the request (method, path, Accept and Range headers) and streams the answer back.
async fn proxy(state: &State, req: Request<Incoming>) -> Result<Response<Body>> {
    let target = req.uri().path_and_query().map_or("/", |p| p.as_str());
    let method = reqwest::Method::from_bytes(req.method().as_str().as_bytes())?;
    let mut up = state.http.request(method, format!("{}{target}", state.upstream));
    for name in [hyper::header::ACCEPT, hyper::header::RANGE] {
        for v in req.headers().get_all(&name) {
            up = up.header(name.as_str(), v.as_bytes());
        }
    }
    let resp = up.send().await?;
    let mut out = Response::builder().status(resp.status().as_u16());
    for (name, value) in resp.headers() {
        if !matches!(name.as_str(), "connection" | "transfer-encoding" | "keep-alive") {
            out = out.header(name.as_str(), value.as_bytes());
        }
    }
    Ok(out.body(Body::from_stream(resp.bytes_stream()))?)
}

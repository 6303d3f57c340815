//! Origin registries: choosing one for a request, and sending requests to it with the right
//! credentials.
//!
//! The client's `Authorization` is forwarded unchanged when it sent one; otherwise configured
//! credentials are used (Basic, or a Bearer token obtained through oci-client's token flow and
//! cached per repository); otherwise the request goes anonymously and a 401 is passed back so the
//! client can authenticate itself. This module knows nothing of caching or of HTTP handlers.

pub(crate) mod direct;

use std::collections::HashMap;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use base64::engine::general_purpose::STANDARD as BASE64;
use base64::Engine as _;
use http::header::{ACCEPT, AUTHORIZATION};
use http::{HeaderMap, HeaderValue, Method, StatusCode};
use oci_client::client::{Certificate, CertificateEncoding, ClientConfig, ClientProtocol};
use oci_client::secrets::RegistryAuth;
use shoal_core::RepoName;

use crate::config::Registry;

/// How long to wait for a TCP/TLS connection to the origin.
pub const CONNECT_TIMEOUT: Duration = Duration::from_secs(5);
/// How long a stalled origin read may last before the request fails.
pub const READ_TIMEOUT: Duration = Duration::from_secs(30);
/// Bound on a whole manifest or HEAD request. Registries answer these in milliseconds; an
/// origin that takes longer is treated as unreachable, so cached tags are served without delay.
pub const SMALL_REQUEST_TIMEOUT: Duration = Duration::from_secs(5);
/// After a failure to reach an origin, further requests fail at once for this long (a cut-off
/// edge site then serves from cache immediately instead of waiting on every request).
pub const DOWN_FOR: Duration = Duration::from_secs(5);
/// How long an obtained token is reused (registries issue them for 60 s at least).
const TOKEN_TTL: Duration = Duration::from_secs(50);

/// Why the origin could not answer.
#[derive(Debug, thiserror::Error)]
pub enum OriginError {
    /// Connection refused, DNS failure, TLS failure: the origin is unreachable (502).
    #[error("origin {registry} unreachable: {message}")]
    Unreachable {
        /// Registry name.
        registry: String,
        /// What failed.
        message: String,
    },
    /// The origin did not answer in time (504).
    #[error("origin {registry} timed out: {message}")]
    Timeout {
        /// Registry name.
        registry: String,
        /// What timed out.
        message: String,
    },
    /// Obtaining a token with the configured credentials failed (502).
    #[error("origin {registry} refused the configured credentials: {message}")]
    Auth {
        /// Registry name.
        registry: String,
        /// What the token service said.
        message: String,
    },
}

impl OriginError {
    fn marked_down(&self) -> Self {
        match self {
            Self::Timeout { registry, message } => {
                Self::Timeout { registry: registry.clone(), message: format!("{message} (marked down)") }
            }
            Self::Unreachable { registry, message } | Self::Auth { registry, message } => {
                Self::Unreachable { registry: registry.clone(), message: format!("{message} (marked down)") }
            }
        }
    }

    fn from_reqwest(registry: &str, e: &reqwest::Error) -> Self {
        let registry = registry.to_owned();
        let message = error_chain(e);
        if e.is_timeout() {
            Self::Timeout { registry, message }
        } else {
            Self::Unreachable { registry, message }
        }
    }

    /// True for a timeout (504) rather than an unreachable origin (502).
    pub fn is_timeout(&self) -> bool {
        matches!(self, Self::Timeout { .. })
    }

    /// How the origin failed, for the access decision.
    pub fn unavailable(&self) -> shoal_core::access::Unavailable {
        if self.is_timeout() {
            shoal_core::access::Unavailable::Timeout
        } else {
            shoal_core::access::Unavailable::Unreachable
        }
    }
}

/// The full cause chain of an error, on one line.
pub fn error_chain(e: &dyn std::error::Error) -> String {
    let mut s = e.to_string();
    let mut cur = e.source();
    while let Some(c) = cur {
        s.push_str(": ");
        s.push_str(&c.to_string());
        cur = c.source();
    }
    s
}

/// Why no origin matches a request.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("ns={0:?} names no configured registry; this mirror is not an open proxy")]
pub struct UnknownRegistry(pub String);

/// All configured origin registries.
pub struct Origins {
    origins: Vec<Arc<Origin>>,
}

impl Origins {
    /// Builds a client per registry.
    pub fn new(registries: &[Registry]) -> Result<Self, reqwest::Error> {
        // Both ring and aws-lc-rs are linked (through different dependencies); pick one so
        // rustls never has to guess. An error only means a provider is already installed.
        let _ = rustls::crypto::aws_lc_rs::default_provider().install_default();
        let shared = http_client(None)?;
        let origins = registries
            .iter()
            .map(|r| {
                let http = if r.ca.is_some() { http_client(r.ca.as_ref())? } else { shared.clone() };
                Ok(Arc::new(Origin::new(r.clone(), http)))
            })
            .collect::<Result<_, reqwest::Error>>()?;
        Ok(Self { origins })
    }

    /// The origin for containerd's `ns` (by registry name or URL host:port), or the default
    /// (first) registry when there is no `ns`.
    pub fn select(&self, ns: Option<&str>) -> Result<Arc<Origin>, UnknownRegistry> {
        let Some(ns) = ns else {
            return self.origins.first().cloned().ok_or_else(|| UnknownRegistry(String::new()));
        };
        self.origins
            .iter()
            .find(|o| o.registry.name == ns)
            .or_else(|| self.origins.iter().find(|o| o.registry.authority() == ns))
            .cloned()
            .ok_or_else(|| UnknownRegistry(ns.to_owned()))
    }
}

/// The HTTP client of the origins; with `ca`, it also trusts that registry's own CA.
fn http_client(ca: Option<&(std::path::PathBuf, Vec<u8>)>) -> Result<reqwest::Client, reqwest::Error> {
    let mut builder = reqwest::Client::builder()
        .connect_timeout(CONNECT_TIMEOUT)
        .read_timeout(READ_TIMEOUT)
        .pool_max_idle_per_host(32)
        .user_agent(concat!("shoal/", env!("CARGO_PKG_VERSION")));
    for cert in ca.map(|(_, pem)| reqwest::Certificate::from_pem_bundle(pem)).transpose()?.unwrap_or_default() {
        builder = builder.add_root_certificate(cert);
    }
    builder.build()
}

/// Credentials to attach to a request.
#[derive(Clone)]
enum Auth {
    Basic(String, String),
    Bearer(String),
}

/// One origin registry and its credential state.
pub struct Origin {
    registry: Registry,
    http: reqwest::Client,
    oci: oci_client::Client,
    tokens: Mutex<HashMap<String, (Auth, Instant)>>,
    down: Mutex<Option<(Instant, OriginError)>>,
}

impl Origin {
    fn new(registry: Registry, http: reqwest::Client) -> Self {
        let protocol = if registry.url.scheme() == "http" { ClientProtocol::Http } else { ClientProtocol::Https };
        let extra_root_certificates = registry
            .ca
            .iter()
            .map(|(_, pem)| Certificate { encoding: CertificateEncoding::Pem, data: pem.clone() })
            .collect();
        let oci = oci_client::Client::new(ClientConfig {
            protocol,
            connect_timeout: Some(CONNECT_TIMEOUT),
            read_timeout: Some(READ_TIMEOUT),
            extra_root_certificates,
            ..ClientConfig::default()
        });
        Self { registry, http, oci, tokens: Mutex::new(HashMap::new()), down: Mutex::new(None) }
    }

    /// True when the daemon holds credentials for this registry.
    pub fn has_credentials(&self) -> bool {
        self.registry.credentials.is_some()
    }

    /// The registry's configured name.
    pub fn name(&self) -> &str {
        &self.registry.name
    }

    /// Sends `method path` (for repository `scope`, whose pull token it needs) with the client's `Authorization` and `Accept`
    /// headers (repeated ones kept) plus `extra` headers, applying configured credentials when
    /// the client sent none. `timeout` bounds the whole request when set. While the origin is
    /// marked down (a request failed moments ago) it fails at once; a failure marks it down.
    /// For data only: an access check uses [`Origin::ask`].
    pub async fn send(
        &self,
        method: Method,
        scope: Option<&RepoName>,
        path: &str,
        client: &HeaderMap,
        extra: HeaderMap,
        timeout: Option<Duration>,
    ) -> Result<reqwest::Response, OriginError> {
        self.request(method, scope, path, client, extra, timeout, true).await
    }

    /// Like [`Origin::send`], for an access check: always asks the origin, whatever other
    /// requests went through, and its failure marks nothing down. One client's or repository's
    /// trouble never skips or shortens another's check.
    pub async fn ask(
        &self,
        method: Method,
        scope: Option<&RepoName>,
        path: &str,
        client: &HeaderMap,
        timeout: Duration,
    ) -> Result<reqwest::Response, OriginError> {
        self.request(method, scope, path, client, HeaderMap::new(), Some(timeout), false).await
    }

    #[allow(clippy::too_many_arguments)]
    async fn request(
        &self,
        method: Method,
        scope: Option<&RepoName>,
        path: &str,
        client: &HeaderMap,
        extra: HeaderMap,
        timeout: Option<Duration>,
        shared_down: bool,
    ) -> Result<reqwest::Response, OriginError> {
        let client_auth = client.get(AUTHORIZATION).cloned();
        let creds = self.registry.credentials.clone().filter(|_| client_auth.is_none());
        let scope = scope.filter(|_| creds.is_some());
        let mut auth = scope.and_then(|name| self.cached_auth(name));
        let mut refreshed = false;
        loop {
            let mut headers = extra.clone();
            for v in client.get_all(ACCEPT) {
                headers.append(ACCEPT, v.clone());
            }
            if let Some(a) = &client_auth {
                headers.insert(AUTHORIZATION, a.clone());
            } else if let Some(a) = &auth {
                headers.insert(AUTHORIZATION, header_for(a));
            }
            let url = format!("{}{}", self.registry.url.as_str().trim_end_matches('/'), path);
            let mut req = self.http.request(method.clone(), url).headers(headers);
            if let Some(t) = timeout {
                req = req.timeout(t);
            }
            if let Some(e) = self.is_down().filter(|_| shared_down) {
                return Err(e);
            }
            let resp = match req.send().await {
                Ok(r) => {
                    *self.down.lock().unwrap_or_else(|p| p.into_inner()) = None;
                    r
                }
                Err(e) => {
                    let err = OriginError::from_reqwest(&self.registry.name, &e);
                    if shared_down {
                        *self.down.lock().unwrap_or_else(|p| p.into_inner()) =
                            Some((Instant::now(), err.marked_down()));
                    }
                    return Err(err);
                }
            };
            match (&creds, scope, resp.status()) {
                (Some((user, pass)), Some(name), StatusCode::UNAUTHORIZED) if !refreshed => {
                    refreshed = true;
                    auth = Some(self.fetch_auth(name, user, pass).await?);
                }
                _ => return Ok(resp),
            }
        }
    }

    /// The last failure, while the origin counts as down.
    fn is_down(&self) -> Option<OriginError> {
        let down = self.down.lock().unwrap_or_else(|p| p.into_inner());
        down.as_ref().filter(|(at, _)| at.elapsed() < DOWN_FOR).map(|(_, e)| e.marked_down())
    }

    fn cached_auth(&self, name: &RepoName) -> Option<Auth> {
        let tokens = self.tokens.lock().unwrap_or_else(|p| p.into_inner());
        tokens.get(name.as_str()).filter(|(_, at)| at.elapsed() < TOKEN_TTL).map(|(a, _)| a.clone())
    }

    async fn fetch_auth(&self, name: &RepoName, user: &str, pass: &str) -> Result<Auth, OriginError> {
        let reference =
            oci_client::Reference::with_tag(self.registry.authority(), name.as_str().to_owned(), "latest".into());
        let basic = RegistryAuth::Basic(user.to_owned(), pass.to_owned());
        let token = self
            .oci
            .auth(&reference, &basic, oci_client::RegistryOperation::Pull)
            .await
            .map_err(|e| OriginError::Auth { registry: self.registry.name.clone(), message: e.to_string() })?;
        let auth = match token {
            Some(t) => Auth::Bearer(t),
            None => Auth::Basic(user.to_owned(), pass.to_owned()),
        };
        let mut tokens = self.tokens.lock().unwrap_or_else(|p| p.into_inner());
        tokens.retain(|_, (_, at)| at.elapsed() < TOKEN_TTL);
        tokens.insert(name.as_str().to_owned(), (auth.clone(), Instant::now()));
        Ok(auth)
    }
}

fn header_for(auth: &Auth) -> HeaderValue {
    let value = match auth {
        Auth::Bearer(t) => format!("Bearer {t}"),
        Auth::Basic(u, p) => format!("Basic {}", BASE64.encode(format!("{u}:{p}"))),
    };
    HeaderValue::from_str(&value).unwrap_or_else(|_| HeaderValue::from_static(""))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_registry_with_its_own_ca_gets_a_client_that_trusts_it() {
        use base64::Engine as _;
        let cert = rcgen::generate_simple_self_signed(vec!["harbor.example".into()]).unwrap();
        let b64 = base64::engine::general_purpose::STANDARD.encode(cert.cert.der());
        let pem = format!("-----BEGIN CERTIFICATE-----\n{b64}\n-----END CERTIFICATE-----\n");
        let mut harbor = reg("harbor.example", "https://harbor.example");
        harbor.ca = Some(("ca.pem".into(), pem.into_bytes()));
        let origins = Origins::new(&[harbor, reg("docker.io", "https://registry-1.docker.io")]).unwrap();
        assert_eq!(origins.select(Some("harbor.example")).unwrap().name(), "harbor.example");
    }

    fn reg(name: &str, url: &str) -> Registry {
        Registry { name: name.into(), url: url.parse().unwrap(), credentials: None, ca: None }
    }

    #[test]
    fn selects_by_ns() {
        let o =
            Origins::new(&[reg("docker.io", "https://registry-1.docker.io"), reg("local", "http://127.0.0.1:5000")])
                .unwrap();
        assert_eq!(o.select(None).unwrap().name(), "docker.io");
        assert_eq!(o.select(Some("docker.io")).unwrap().name(), "docker.io");
        assert_eq!(o.select(Some("local")).unwrap().name(), "local");
        assert_eq!(o.select(Some("127.0.0.1:5000")).unwrap().name(), "local");
        assert_eq!(o.select(Some("evil.example.com")).err(), Some(UnknownRegistry("evil.example.com".into())));
    }

    #[test]
    fn encodes_basic_credentials() {
        let h = header_for(&Auth::Basic("user".into(), "pass".into()));
        assert_eq!(h, "Basic dXNlcjpwYXNz");
        assert_eq!(header_for(&Auth::Bearer("t0k".into())), "Bearer t0k");
    }
}

/// Where a download's bytes come from: the origin, for one repository, with one client's
/// credentials.
#[derive(Clone)]
pub struct OriginFetch {
    /// The registry.
    pub origin: Arc<Origin>,
    /// The repository the client asked through.
    pub name: RepoName,
    /// The client's Authorization/Accept headers.
    pub headers: HeaderMap,
}

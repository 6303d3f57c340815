//! Daemon configuration: the TOML file's keys, their defaults, and validation.
//!
//! Load → override (the binary applies command-line flags to the same keys) → validate. Every
//! default is written once, here. Validation errors name the key so an operator can fix the file.

use std::net::SocketAddr;
use std::path::{Path, PathBuf};

use serde::Deserialize;
use shoal_core::duration::parse_duration;
use shoal_core::size::{parse_rate, parse_size};
use url::Url;

use crate::discovery::bootstrap::BootstrapAddr;

/// Why a configuration cannot be used; each message names the offending key.
#[derive(Debug, thiserror::Error)]
pub enum ConfigError {
    /// The file could not be read.
    #[error("cannot read config file {path}: {source}")]
    Read {
        /// The file.
        path: PathBuf,
        /// The I/O error.
        source: std::io::Error,
    },
    /// TOML syntax or an unknown/mistyped key (toml's message names it).
    #[error("config file {path}: {message}")]
    Parse {
        /// The file.
        path: PathBuf,
        /// What toml said, including the key and line.
        message: String,
    },
    /// A key holds a value that cannot be used.
    #[error("config key `{key}`: {message}")]
    Invalid {
        /// The key, e.g. `registry[1].url`.
        key: String,
        /// What is wrong with it.
        message: String,
    },
}

fn invalid(key: impl Into<String>, message: impl Into<String>) -> ConfigError {
    ConfigError::Invalid { key: key.into(), message: message.into() }
}

/// One origin registry the mirror may fetch from.
#[derive(Debug, Clone, Deserialize, PartialEq, Eq)]
#[serde(deny_unknown_fields)]
pub struct RegistryConfig {
    /// The registry's name as clients know it and as containerd sends it in `?ns=`, e.g.
    /// `docker.io` or `127.0.0.1:5000`.
    pub name: String,
    /// Where to reach it: `https://registry-1.docker.io`; `http://` means plain HTTP.
    pub url: String,
    /// Username used when the client sends no credentials (dockerd never does to a mirror).
    #[serde(default)]
    pub username: Option<String>,
    /// Password or token for `username`.
    #[serde(default)]
    pub password: Option<String>,
    /// PEM file of the CA certificate(s) the registry's TLS certificate is checked against, in
    /// addition to the system's (a private CA, as for Harbor or a registry behind nginx; like
    /// containerd's `ca` in hosts.toml).
    #[serde(default)]
    pub ca_file: Option<PathBuf>,
}

/// The `shoal daemon` configuration file.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct Config {
    /// Where blobs, partial downloads and metadata live.
    pub data_dir: PathBuf,
    /// The registry mirror listener (HTTP). Loopback by default: it serves this node's clients.
    pub mirror_listen: String,
    /// The admin listener: `/healthz` and `/metrics`.
    pub admin_listen: String,
    /// Origin registries; the first is the default for requests without `ns`.
    pub registry: Vec<RegistryConfig>,
    /// Cache size quota, e.g. `20GiB`; least recently used blobs are evicted beyond it.
    pub cache_size: String,
    /// Free space the file system under `data_dir` keeps, e.g. `1GiB`: a blob that would take
    /// it below this is served from the origin without being cached.
    pub min_free_space: String,
    /// Scheduler URLs (`http://host:65000`); tasks are spread over them by rendezvous hashing.
    /// Empty: no scheduler (pulls go to the origin).
    pub scheduler: Vec<String>,
    /// The peer (QUIC, UDP) listener other daemons fetch pieces from. It runs with a scheduler
    /// or the DHT.
    pub peer_listen: String,
    /// The DHT (Kademlia over TCP) listener, default `0.0.0.0:65004`. Setting it, or
    /// `bootstrap`, turns the DHT on: with a scheduler it carries on when the scheduler does not
    /// answer; without one it is how daemons find each other. The first member of a cluster
    /// sets only this (or a `bootstrap` list that does not answer yet).
    pub dht_listen: Option<String>,
    /// Where to join the DHT: other daemons' `dht_listen` (`host:port`, or `host` for port
    /// 65004), or a DNS name resolving to several (a Kubernetes headless service), resolved
    /// again every 30 s. Turns the DHT on.
    pub bootstrap: Vec<String>,
    /// The IP other daemons dial (peer port and DHT); default: the IP of `peer_listen`, or when
    /// that is unspecified the local address of the route to the first scheduler (else to the
    /// first bootstrap address).
    pub advertise_addr: Option<String>,
    /// This node's site (rack, zone, edge location): parents are chosen in the same site first,
    /// and each site fetches a blob from the origin once.
    pub site: String,
    /// The secret every daemon of the cluster shares; peers without it are refused (the peer
    /// port, the scheduler, the DHT). Required with `scheduler` or the DHT.
    pub cluster_token: Option<String>,
    /// A file holding the cluster token (first line), instead of `cluster_token`.
    pub cluster_token_file: Option<PathBuf>,
    /// Upload to peers, e.g. `100MiB/s`; `0` is unlimited.
    pub upload_limit: String,
    /// Download from peers; `0` is unlimited.
    pub download_limit: String,
    /// Fetch from origin registries; `0` is unlimited.
    pub origin_limit: String,
    /// This node's id among peers; default: hostname and peer port.
    pub host_id: Option<String>,
    /// Connections each listener (mirror, admin, peer) serves at once; more are refused at once.
    pub max_connections: usize,
    /// Largest blob the daemon handles, e.g. `1TiB`: a blob the origin says is larger is
    /// refused with an error (502) before anything is allocated for it.
    pub max_blob_size: String,
    /// While the origin cannot decide (unreachable, slow, 5xx), the cache still serves a client
    /// whose exact credential the origin accepted for that repository within this long, or
    /// anyone if the origin let anonymous clients pull it within this long. `0`: never.
    pub offline_grace: String,
}

impl Default for Config {
    fn default() -> Self {
        Self {
            data_dir: PathBuf::from("/var/lib/shoal"),
            mirror_listen: "127.0.0.1:65001".into(),
            admin_listen: "127.0.0.1:65003".into(),
            registry: vec![RegistryConfig {
                name: "docker.io".into(),
                url: "https://registry-1.docker.io".into(),
                username: None,
                password: None,
                ca_file: None,
            }],
            cache_size: "20GiB".into(),
            min_free_space: "1GiB".into(),
            scheduler: Vec::new(),
            peer_listen: "0.0.0.0:65002".into(),
            dht_listen: None,
            bootstrap: Vec::new(),
            advertise_addr: None,
            site: "default".into(),
            cluster_token: None,
            cluster_token_file: None,
            upload_limit: "0".into(),
            download_limit: "0".into(),
            origin_limit: "0".into(),
            host_id: None,
            max_connections: crate::listener::DEFAULT_MAX_CONNECTIONS,
            max_blob_size: "1TiB".into(),
            offline_grace: "24h".into(),
        }
    }
}

/// A configuration that passed validation, with values parsed.
#[derive(Debug, Clone)]
pub struct Settings {
    /// See [`Config::data_dir`].
    pub data_dir: PathBuf,
    /// See [`Config::mirror_listen`].
    pub mirror_listen: SocketAddr,
    /// See [`Config::admin_listen`].
    pub admin_listen: SocketAddr,
    /// See [`Config::registry`]; never empty.
    pub registries: Vec<Registry>,
    /// See [`Config::cache_size`], in bytes.
    pub cache_size: u64,
    /// See [`Config::min_free_space`], in bytes.
    pub min_free_space: u64,
    /// The swarm settings; `None` without a scheduler and without the DHT.
    pub swarm: Option<Swarm>,
    /// Byte rates; 0 is unlimited.
    pub limits: Limits,
    /// See [`Config::max_connections`]; at least 1.
    pub max_connections: usize,
    /// See [`Config::max_blob_size`], in bytes.
    pub max_blob_size: u64,
    /// See [`Config::offline_grace`].
    pub offline_grace: std::time::Duration,
}

/// The largest `max_blob_size` accepted: 16 TiB is a million pieces of 16 MiB, whose digests
/// (32 MiB) and bitmaps still fit comfortably in memory.
pub const MAX_BLOB_SIZE_LIMIT: u64 = 16 << 40;

/// Bandwidth limits per traffic class, bytes per second (0 = unlimited).
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Limits {
    /// Upload to peers.
    pub upload: u64,
    /// Download from peers.
    pub download: u64,
    /// Fetch from origins.
    pub origin: u64,
}

/// Validated peer-to-peer settings: a scheduler, the DHT, or both.
#[derive(Debug, Clone)]
pub struct Swarm {
    /// Scheduler URLs; empty when the DHT alone finds peers.
    pub schedulers: Vec<Url>,
    /// The DHT, when `dht_listen` or `bootstrap` is set.
    pub dht: Option<Dht>,
    /// QUIC listener.
    pub peer_listen: SocketAddr,
    /// IP peers dial.
    pub advertise_ip: std::net::IpAddr,
    /// Site label.
    pub site: String,
    /// Cluster token bytes.
    pub token: Vec<u8>,
    /// Host id.
    pub host_id: String,
}

/// Validated DHT settings.
#[derive(Debug, Clone)]
pub struct Dht {
    /// See [`Config::dht_listen`].
    pub listen: SocketAddr,
    /// See [`Config::bootstrap`]; may be empty (the first member).
    pub bootstrap: Vec<BootstrapAddr>,
}

/// `dht_listen` when only `bootstrap` is set.
pub const DEFAULT_DHT_LISTEN: &str = "0.0.0.0:65004";

/// A validated origin registry.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Registry {
    /// Name as sent in `ns`.
    pub name: String,
    /// Base URL (scheme, host, port; no path).
    pub url: Url,
    /// Configured credentials.
    pub credentials: Option<(String, String)>,
    /// `ca_file`, and the PEM it held when the configuration was read.
    pub ca: Option<(PathBuf, Vec<u8>)>,
}

impl Registry {
    /// `host[:port]` of the URL, the other name an `ns` may use for this registry.
    pub fn authority(&self) -> String {
        let host = self.url.host_str().unwrap_or_default();
        match self.url.port() {
            Some(p) => format!("{host}:{p}"),
            None => host.to_owned(),
        }
    }
}

impl Config {
    /// Reads a TOML file; unknown keys are errors.
    pub fn load(path: &std::path::Path) -> Result<Self, ConfigError> {
        let text = std::fs::read_to_string(path).map_err(|source| ConfigError::Read { path: path.into(), source })?;
        toml::from_str(&text).map_err(|e| ConfigError::Parse { path: path.into(), message: e.to_string() })
    }

    /// Parses a registry flag `NAME=URL`.
    pub fn parse_registry_flag(flag: &str) -> Result<RegistryConfig, ConfigError> {
        let (name, url) =
            flag.split_once('=').ok_or_else(|| invalid("registry", format!("{flag:?} is not NAME=URL")))?;
        Ok(RegistryConfig { name: name.into(), url: url.into(), username: None, password: None, ca_file: None })
    }

    /// Checks every key and parses values.
    pub fn validate(&self) -> Result<Settings, ConfigError> {
        let addr = |key: &str, v: &str| v.parse::<SocketAddr>().map_err(|e| invalid(key, format!("{v:?}: {e}")));
        if self.registry.is_empty() {
            return Err(invalid("registry", "at least one registry is required"));
        }
        let registries =
            self.registry.iter().enumerate().map(|(i, r)| validate_registry(i, r)).collect::<Result<Vec<_>, _>>()?;
        for (i, r) in registries.iter().enumerate() {
            if registries[..i].iter().any(|o| o.name == r.name) {
                return Err(invalid(format!("registry[{i}].name"), format!("{:?} is configured twice", r.name)));
            }
        }
        if self.data_dir.as_os_str().is_empty() {
            return Err(invalid("data_dir", "must not be empty"));
        }
        Ok(Settings {
            data_dir: self.data_dir.clone(),
            mirror_listen: addr("mirror_listen", &self.mirror_listen)?,
            admin_listen: addr("admin_listen", &self.admin_listen)?,
            registries,
            cache_size: parse_size(&self.cache_size).map_err(|e| invalid("cache_size", e.to_string()))?,
            min_free_space: parse_size(&self.min_free_space).map_err(|e| invalid("min_free_space", e.to_string()))?,
            swarm: self.validate_swarm()?,
            limits: Limits {
                upload: rate("upload_limit", &self.upload_limit)?,
                download: rate("download_limit", &self.download_limit)?,
                origin: rate("origin_limit", &self.origin_limit)?,
            },
            max_connections: self.validate_max_connections()?,
            max_blob_size: self.validate_max_blob_size()?,
            offline_grace: parse_duration(&self.offline_grace).map_err(|e| invalid("offline_grace", e.to_string()))?,
        })
    }

    fn validate_max_connections(&self) -> Result<usize, ConfigError> {
        match self.max_connections {
            0 => Err(invalid("max_connections", "must be at least 1")),
            n if n > 1 << 20 => Err(invalid("max_connections", format!("{n} is more than 1048576"))),
            n => Ok(n),
        }
    }

    fn validate_max_blob_size(&self) -> Result<u64, ConfigError> {
        let size = parse_size(&self.max_blob_size).map_err(|e| invalid("max_blob_size", e.to_string()))?;
        if size == 0 || size > MAX_BLOB_SIZE_LIMIT {
            return Err(invalid(
                "max_blob_size",
                format!("{:?} must be more than 0 and at most 16TiB", self.max_blob_size),
            ));
        }
        Ok(size)
    }

    fn validate_swarm(&self) -> Result<Option<Swarm>, ConfigError> {
        let peer_listen: SocketAddr =
            self.peer_listen.parse().map_err(|e| invalid("peer_listen", format!("{:?}: {e}", self.peer_listen)))?;
        let schedulers = self.validate_schedulers()?;
        let dht = self.validate_dht()?;
        let token = self.token()?;
        if schedulers.is_empty() && dht.is_none() {
            return Ok(None);
        }
        let token = token.ok_or_else(|| {
            invalid(
                "cluster_token",
                "required when a scheduler or the DHT (bootstrap, dht_listen) is configured (or set cluster_token_file)",
            )
        })?;
        let advertise_ip = self.advertise_ip(peer_listen, &schedulers, dht.as_ref())?;
        if self.site.is_empty() {
            return Err(invalid("site", "must not be empty"));
        }
        let host_id = self.host_id.clone().unwrap_or_else(|| format!("{}-{}", hostname(), peer_listen.port()));
        Ok(Some(Swarm { schedulers, dht, peer_listen, advertise_ip, site: self.site.clone(), token, host_id }))
    }

    fn validate_schedulers(&self) -> Result<Vec<Url>, ConfigError> {
        let mut schedulers = Vec::new();
        for (i, s) in self.scheduler.iter().enumerate() {
            let url = Url::parse(s).map_err(|e| invalid(format!("scheduler[{i}]"), format!("{s:?}: {e}")))?;
            if !matches!(url.scheme(), "http" | "https") || url.host_str().is_none() {
                return Err(invalid(format!("scheduler[{i}]"), format!("{s:?} must be an http:// URL with a host")));
            }
            schedulers.push(url);
        }
        Ok(schedulers)
    }

    /// The DHT settings, when `dht_listen` or `bootstrap` turns it on.
    fn validate_dht(&self) -> Result<Option<Dht>, ConfigError> {
        if self.dht_listen.is_none() && self.bootstrap.is_empty() {
            return Ok(None);
        }
        let listen = self.dht_listen.as_deref().unwrap_or(DEFAULT_DHT_LISTEN);
        let listen = listen.parse().map_err(|e| invalid("dht_listen", format!("{listen:?}: {e}")))?;
        let bootstrap = self
            .bootstrap
            .iter()
            .enumerate()
            .map(|(i, b)| b.parse().map_err(|e: String| invalid(format!("bootstrap[{i}]"), e)))
            .collect::<Result<_, _>>()?;
        Ok(Some(Dht { listen, bootstrap }))
    }

    /// `advertise_addr`, else the IP of `peer_listen` or `dht_listen` (unless unspecified), else
    /// the local IP of the route to the first scheduler or, without one, the first bootstrap
    /// address.
    fn advertise_ip(
        &self,
        peer_listen: SocketAddr,
        schedulers: &[Url],
        dht: Option<&Dht>,
    ) -> Result<std::net::IpAddr, ConfigError> {
        if let Some(a) = &self.advertise_addr {
            return a.parse().map_err(|e| invalid("advertise_addr", format!("{a:?}: {e}")));
        }
        let listening = [Some(peer_listen), dht.map(|d| d.listen)].into_iter().flatten();
        if let Some(ip) = listening.map(|a| a.ip()).find(|ip| !ip.is_unspecified()) {
            return Ok(ip);
        }
        let target = match (schedulers.first(), dht.and_then(|d| d.bootstrap.first())) {
            (Some(url), _) => url.host_str().map(|h| (h.to_owned(), url.port_or_known_default().unwrap_or(65000))),
            (None, Some(b)) => Some((b.host.clone(), b.port)),
            (None, None) => None,
        };
        target
            .and_then(|(host, port)| route_ip(&host, port))
            .ok_or_else(|| invalid("advertise_addr", "cannot be derived; set the IP other daemons should dial"))
    }

    fn token(&self) -> Result<Option<Vec<u8>>, ConfigError> {
        load_token(self.cluster_token.as_deref(), self.cluster_token_file.as_deref())
    }
}

/// The cluster token from `cluster_token` or `cluster_token_file` (its first line), at least
/// 16 characters; `None` when neither is set. Daemon and scheduler read it the same way.
pub fn load_token(token: Option<&str>, file: Option<&std::path::Path>) -> Result<Option<Vec<u8>>, ConfigError> {
    let token = match (token, file) {
        (Some(_), Some(_)) => {
            return Err(invalid("cluster_token_file", "set cluster_token or cluster_token_file, not both"))
        }
        (Some(t), None) => t.trim().to_owned(),
        (None, Some(path)) => std::fs::read_to_string(path)
            .map_err(|e| invalid("cluster_token_file", format!("{}: {e}", path.display())))?
            .lines()
            .next()
            .unwrap_or_default()
            .trim()
            .to_owned(),
        (None, None) => return Ok(None),
    };
    if token.len() < 16 {
        return Err(invalid("cluster_token", "must be at least 16 characters"));
    }
    Ok(Some(token.into_bytes()))
}

fn rate(key: &str, v: &str) -> Result<u64, ConfigError> {
    if v.trim() == "0" {
        return Ok(0);
    }
    parse_rate(v).map_err(|e| invalid(key, e.to_string()))
}

/// The local IP of the route to `host` (a UDP connect sends nothing).
fn route_ip(host: &str, port: u16) -> Option<std::net::IpAddr> {
    let target = std::net::ToSocketAddrs::to_socket_addrs(&(host, port)).ok()?.next()?;
    let bind: SocketAddr =
        if target.is_ipv4() { ([0, 0, 0, 0], 0).into() } else { (std::net::Ipv6Addr::UNSPECIFIED, 0).into() };
    let sock = std::net::UdpSocket::bind(bind).ok()?;
    sock.connect(target).ok()?;
    Some(sock.local_addr().ok()?.ip())
}

fn hostname() -> String {
    std::fs::read_to_string("/etc/hostname")
        .ok()
        .map(|s| s.trim().to_owned())
        .filter(|s| !s.is_empty())
        .unwrap_or_else(|| "shoal".into())
}

fn validate_registry(i: usize, r: &RegistryConfig) -> Result<Registry, ConfigError> {
    let key = |k: &str| format!("registry[{i}].{k}");
    shoal_core::route::parse_ns(&r.name)
        .map_err(|_| invalid(key("name"), format!("{:?} is not a registry host[:port]", r.name)))?;
    let url = Url::parse(&r.url).map_err(|e| invalid(key("url"), format!("{:?}: {e}", r.url)))?;
    if !matches!(url.scheme(), "http" | "https") || url.host_str().is_none() {
        return Err(invalid(key("url"), format!("{:?} must be an http:// or https:// URL with a host", r.url)));
    }
    if url.path() != "/" || url.query().is_some() {
        return Err(invalid(key("url"), format!("{:?} must not have a path or query", r.url)));
    }
    let credentials = match (&r.username, &r.password) {
        (Some(u), Some(p)) => Some((u.clone(), p.clone())),
        (None, None) => None,
        (Some(_), None) => return Err(invalid(key("password"), "username is set but password is not")),
        (None, Some(_)) => return Err(invalid(key("username"), "password is set but username is not")),
    };
    let ca = r.ca_file.as_ref().map(|path| read_ca(&key("ca_file"), path)).transpose()?;
    Ok(Registry { name: r.name.clone(), url, credentials, ca })
}

/// Reads a `ca_file`: PEM with at least one certificate, at most 1 MiB.
fn read_ca(key: &str, path: &Path) -> Result<(PathBuf, Vec<u8>), ConfigError> {
    const MAX: u64 = 1 << 20;
    let mut pem = Vec::new();
    std::fs::File::open(path)
        .and_then(|f| std::io::Read::read_to_end(&mut std::io::Read::take(f, MAX + 1), &mut pem))
        .map_err(|e| invalid(key.to_owned(), format!("{}: {e}", path.display())))?;
    let certs = (pem.len() as u64 <= MAX).then(|| reqwest::Certificate::from_pem_bundle(&pem).ok()).flatten();
    if certs.is_none_or(|c| c.is_empty()) {
        return Err(invalid(key.to_owned(), format!("{}: no PEM certificate in it", path.display())));
    }
    Ok((path.to_owned(), pem))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn defaults_validate() {
        let s = Config::default().validate().unwrap();
        assert_eq!(s.mirror_listen.port(), 65001);
        assert_eq!(s.cache_size, 20 << 30);
        assert_eq!(s.min_free_space, 1 << 30);
        assert_eq!(s.offline_grace, std::time::Duration::from_secs(86_400));
        assert_eq!(s.registries[0].authority(), "registry-1.docker.io");
        assert_eq!(s.max_connections, 1024);
        assert_eq!(s.max_blob_size, 1 << 40);
    }

    #[test]
    fn bounds_connections_and_blob_sizes() {
        let c: Config = toml::from_str("max_connections = 64\nmax_blob_size = \"10GiB\"\n").unwrap();
        let s = c.validate().unwrap();
        assert_eq!((s.max_connections, s.max_blob_size), (64, 10 << 30));
        let bad = |c: Config, key: &str| {
            let e = c.validate().unwrap_err().to_string();
            assert!(e.contains(key), "{e}");
        };
        bad(Config { max_connections: 0, ..Config::default() }, "max_connections");
        bad(Config { max_connections: 1 << 30, ..Config::default() }, "max_connections");
        bad(Config { max_blob_size: "0".into(), ..Config::default() }, "max_blob_size");
        bad(Config { max_blob_size: "17TiB".into(), ..Config::default() }, "max_blob_size");
        bad(Config { max_blob_size: "huge".into(), ..Config::default() }, "max_blob_size");
        assert!(toml::from_str::<Config>("max_connections = -1").is_err());
    }

    #[test]
    fn a_registry_may_name_its_own_ca() {
        let dir = tempfile::tempdir().unwrap();
        let cert = rcgen::generate_simple_self_signed(vec!["harbor.example".into()]).unwrap();
        use base64::Engine as _;
        let b64 = base64::engine::general_purpose::STANDARD.encode(cert.cert.der());
        let lines: Vec<&str> = b64.as_bytes().chunks(64).map(|c| std::str::from_utf8(c).unwrap()).collect();
        let text = format!("-----BEGIN CERTIFICATE-----\n{}\n-----END CERTIFICATE-----\n", lines.join("\n"));
        let pem = dir.path().join("ca.pem");
        std::fs::write(&pem, &text).unwrap();
        let with = |file: &std::path::Path| {
            let text = format!(
                "[[registry]]\nname = \"harbor.example\"\nurl = \"https://harbor.example\"\nca_file = {:?}\n",
                file.display().to_string()
            );
            toml::from_str::<Config>(&text).unwrap().validate()
        };
        let s = with(&pem).unwrap();
        let (path, bytes) = s.registries[0].ca.clone().unwrap();
        assert_eq!((path, bytes), (pem.clone(), text.into_bytes()));
        let missing = with(&dir.path().join("nope.pem")).unwrap_err().to_string();
        assert!(missing.contains("registry[0].ca_file") && missing.contains("nope.pem"), "{missing}");
        let junk = dir.path().join("junk.pem");
        std::fs::write(&junk, "not a certificate").unwrap();
        let junk = with(&junk).unwrap_err().to_string();
        assert!(junk.contains("no PEM certificate"), "{junk}");
    }

    #[test]
    fn parses_toml_and_names_bad_keys() {
        let c: Config = toml::from_str(
            "data_dir = \"/tmp/x\"\ncache_size = \"1GiB\"\n[[registry]]\nname = \"127.0.0.1:5000\"\nurl = \"http://127.0.0.1:5000\"\nusername = \"u\"\npassword = \"p\"\n",
        )
        .unwrap();
        let s = c.validate().unwrap();
        assert_eq!(s.registries[0].credentials, Some(("u".into(), "p".into())));
        assert_eq!(s.registries[0].authority(), "127.0.0.1:5000");

        let bad = |c: Config, key: &str| {
            let e = c.validate().unwrap_err().to_string();
            assert!(e.contains(key), "{e}");
        };
        bad(Config { cache_size: "lots".into(), ..Config::default() }, "cache_size");
        bad(Config { min_free_space: "some".into(), ..Config::default() }, "min_free_space");
        bad(Config { offline_grace: "a day".into(), ..Config::default() }, "offline_grace");
        bad(Config { mirror_listen: "nope".into(), ..Config::default() }, "mirror_listen");
        bad(Config { registry: vec![], ..Config::default() }, "registry");
        let mut c = Config::default();
        c.registry[0].url = "ftp://x".into();
        bad(c, "registry[0].url");
        let mut c = Config::default();
        c.registry.push(c.registry[0].clone());
        bad(c, "registry[1].name");
        assert!(toml::from_str::<Config>("mirror_lisen = \"x\"").unwrap_err().to_string().contains("mirror_lisen"));
    }

    #[test]
    fn validates_swarm_keys() {
        assert!(Config::default().validate().unwrap().swarm.is_none());
        let with = |f: fn(&mut Config)| {
            let mut c = Config {
                scheduler: vec!["http://127.0.0.1:65000".into()],
                cluster_token: Some("0123456789abcdef".into()),
                ..Config::default()
            };
            f(&mut c);
            c.validate()
        };
        let s = with(|_| {}).unwrap().swarm.unwrap();
        assert_eq!(s.advertise_ip.to_string(), "127.0.0.1");
        assert_eq!(s.site, "default");
        let bad = |f: fn(&mut Config), key: &str| {
            let e = with(f).unwrap_err().to_string();
            assert!(e.contains(key), "{e}");
        };
        bad(|c| c.cluster_token = None, "cluster_token");
        bad(|c| c.cluster_token = Some("short".into()), "cluster_token");
        bad(|c| c.scheduler = vec!["nope".into()], "scheduler[0]");
        bad(|c| c.upload_limit = "fast".into(), "upload_limit");
        bad(|c| c.advertise_addr = Some("x".into()), "advertise_addr");
        bad(|c| c.peer_listen = "x".into(), "peer_listen");
        let l = with(|c| c.origin_limit = "10MiB/s".into()).unwrap().limits;
        assert_eq!(l.origin, 10 << 20);
    }

    #[test]
    fn bootstrap_or_dht_listen_turns_the_dht_on() {
        let dht = |c: Config| c.validate().map(|s| s.swarm.and_then(|s| s.dht));
        let token = Some("0123456789abcdef".to_owned());
        assert!(dht(Config::default()).unwrap().is_none());
        let first =
            Config { dht_listen: Some("127.0.0.1:7000".into()), cluster_token: token.clone(), ..Config::default() };
        let s = first.validate().unwrap().swarm.unwrap();
        assert!(s.schedulers.is_empty(), "no scheduler, still a swarm");
        assert_eq!(s.advertise_ip.to_string(), "127.0.0.1", "the IP of dht_listen");
        let d = s.dht.unwrap();
        assert_eq!((d.listen.port(), d.bootstrap.len()), (7000, 0));

        let joining = Config {
            bootstrap: vec!["127.0.0.1:7000".into(), "shoal-dht.shoal.svc".into()],
            cluster_token: token.clone(),
            ..Config::default()
        };
        let s = joining.validate().unwrap().swarm.unwrap();
        assert_eq!(s.advertise_ip.to_string(), "127.0.0.1", "the route to the first bootstrap address");
        let d = s.dht.unwrap();
        assert_eq!(d.listen.to_string(), DEFAULT_DHT_LISTEN);
        assert_eq!(d.bootstrap[1].to_string(), "shoal-dht.shoal.svc:65004");

        let bad = |c: Config, key: &str| {
            let e = c.validate().unwrap_err().to_string();
            assert!(e.contains(key), "{e}");
        };
        bad(Config { bootstrap: vec!["127.0.0.1:7000".into()], ..Config::default() }, "cluster_token");
        bad(
            Config { bootstrap: vec!["a b".into()], cluster_token: token.clone(), ..Config::default() },
            "bootstrap[0]",
        );
        bad(Config { dht_listen: Some("nope".into()), cluster_token: token, ..Config::default() }, "dht_listen");
        assert!(toml::from_str::<Config>("bootstrap = [\"a:1\"]\ndht_listen = \"0.0.0.0:1\"").is_ok());
    }
}

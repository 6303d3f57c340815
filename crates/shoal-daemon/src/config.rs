//! Daemon configuration: the TOML file's keys, their defaults, and validation.
//!
//! Load → override (the binary applies command-line flags to the same keys) → validate. Every
//! default is written once, here. Validation errors name the key so an operator can fix the file.

use std::net::SocketAddr;
use std::path::PathBuf;

use serde::Deserialize;
use shoal_core::size::parse_size;
use url::Url;

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
    ConfigError::Invalid {
        key: key.into(),
        message: message.into(),
    }
}

/// One upstream registry the mirror may fetch from.
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
    /// Upstream registries; the first is the default for requests without `ns`.
    pub registry: Vec<RegistryConfig>,
    /// Cache size quota, e.g. `20GiB`; least recently used blobs are evicted beyond it.
    pub cache_size: String,
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
            }],
            cache_size: "20GiB".into(),
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
}

/// A validated upstream registry.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Registry {
    /// Name as sent in `ns`.
    pub name: String,
    /// Base URL (scheme, host, port; no path).
    pub url: Url,
    /// Configured credentials.
    pub credentials: Option<(String, String)>,
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
        let text = std::fs::read_to_string(path).map_err(|source| ConfigError::Read {
            path: path.into(),
            source,
        })?;
        toml::from_str(&text).map_err(|e| ConfigError::Parse {
            path: path.into(),
            message: e.to_string(),
        })
    }

    /// Parses a registry flag `NAME=URL`.
    pub fn parse_registry_flag(flag: &str) -> Result<RegistryConfig, ConfigError> {
        let (name, url) = flag
            .split_once('=')
            .ok_or_else(|| invalid("registry", format!("{flag:?} is not NAME=URL")))?;
        Ok(RegistryConfig {
            name: name.into(),
            url: url.into(),
            username: None,
            password: None,
        })
    }

    /// Checks every key and parses values.
    pub fn validate(&self) -> Result<Settings, ConfigError> {
        let addr = |key: &str, v: &str| {
            v.parse::<SocketAddr>()
                .map_err(|e| invalid(key, format!("{v:?}: {e}")))
        };
        if self.registry.is_empty() {
            return Err(invalid("registry", "at least one registry is required"));
        }
        let registries = self
            .registry
            .iter()
            .enumerate()
            .map(|(i, r)| validate_registry(i, r))
            .collect::<Result<Vec<_>, _>>()?;
        for (i, r) in registries.iter().enumerate() {
            if registries[..i].iter().any(|o| o.name == r.name) {
                return Err(invalid(
                    format!("registry[{i}].name"),
                    format!("{:?} is configured twice", r.name),
                ));
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
            cache_size: parse_size(&self.cache_size)
                .map_err(|e| invalid("cache_size", e.to_string()))?,
        })
    }
}

fn validate_registry(i: usize, r: &RegistryConfig) -> Result<Registry, ConfigError> {
    let key = |k: &str| format!("registry[{i}].{k}");
    shoal_core::route::parse_ns(&r.name).map_err(|_| {
        invalid(
            key("name"),
            format!("{:?} is not a registry host[:port]", r.name),
        )
    })?;
    let url = Url::parse(&r.url).map_err(|e| invalid(key("url"), format!("{:?}: {e}", r.url)))?;
    if !matches!(url.scheme(), "http" | "https") || url.host_str().is_none() {
        return Err(invalid(
            key("url"),
            format!("{:?} must be an http:// or https:// URL with a host", r.url),
        ));
    }
    if url.path() != "/" || url.query().is_some() {
        return Err(invalid(
            key("url"),
            format!("{:?} must not have a path or query", r.url),
        ));
    }
    let credentials = match (&r.username, &r.password) {
        (Some(u), Some(p)) => Some((u.clone(), p.clone())),
        (None, None) => None,
        (Some(_), None) => {
            return Err(invalid(
                key("password"),
                "username is set but password is not",
            ))
        }
        (None, Some(_)) => {
            return Err(invalid(
                key("username"),
                "password is set but username is not",
            ))
        }
    };
    Ok(Registry {
        name: r.name.clone(),
        url,
        credentials,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn defaults_validate() {
        let s = Config::default().validate().unwrap();
        assert_eq!(s.mirror_listen.port(), 65001);
        assert_eq!(s.cache_size, 20 << 30);
        assert_eq!(s.registries[0].authority(), "registry-1.docker.io");
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
        bad(
            Config {
                cache_size: "lots".into(),
                ..Config::default()
            },
            "cache_size",
        );
        bad(
            Config {
                mirror_listen: "nope".into(),
                ..Config::default()
            },
            "mirror_listen",
        );
        bad(
            Config {
                registry: vec![],
                ..Config::default()
            },
            "registry",
        );
        let mut c = Config::default();
        c.registry[0].url = "ftp://x".into();
        bad(c, "registry[0].url");
        let mut c = Config::default();
        c.registry.push(c.registry[0].clone());
        bad(c, "registry[1].name");
        assert!(toml::from_str::<Config>("mirror_lisen = \"x\"")
            .unwrap_err()
            .to_string()
            .contains("mirror_lisen"));
    }
}

//! What a preheat names: an image (`[registry/]name[:tag|@digest]`), the platforms to take
//! from its index, and the sites to warm. Parsing only, bounded and validated with the
//! repository-name and digest grammar; nothing here looks anything up.

use std::fmt;

use crate::name::{NameError, Reference, RepoName};

/// Platforms one preheat may name.
pub const MAX_PLATFORMS: usize = 16;
/// Sites one preheat may name.
pub const MAX_SITES: usize = 64;
/// Longest site label accepted.
pub const MAX_SITE_LEN: usize = 128;
/// Longest registry host (`host[:port]`) accepted.
pub const MAX_REGISTRY_LEN: usize = 255;

/// Why a preheat request is malformed.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum RequestError {
    /// The image reference does not parse. Remedy: `[registry/]name[:tag|@sha256:<hex>]`.
    #[error("image {0:?}: {1}")]
    Image(String, NameError),
    /// The registry part is not `host[:port]`.
    #[error("registry {0:?} is not host[:port]")]
    Registry(String),
    /// A platform is not `os/architecture[/variant]`.
    #[error("platform {0:?} is not os/architecture[/variant]")]
    Platform(String),
    /// A site label is empty, too long or has control characters.
    #[error("site {0:?} is not a site label (1 to {MAX_SITE_LEN} printable characters)")]
    Site(String),
    /// More platforms or sites than allowed.
    #[error("too many {what}: {count} (at most {max})")]
    TooMany {
        /// `platforms` or `sites`.
        what: &'static str,
        /// How many were given.
        count: usize,
        /// The bound.
        max: usize,
    },
}

/// An image: which registry (`None`: the daemons' default), repository and tag or digest.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub struct ImageRef {
    /// The registry as the daemons know it (`ns`: a configured name or `host:port`).
    pub registry: Option<String>,
    /// The repository.
    pub name: RepoName,
    /// Tag or digest.
    pub reference: Reference,
}

impl ImageRef {
    /// Parses `[registry/]name[:tag|@digest]`; the first path component is the registry when it
    /// has a `.` or a `:` or is `localhost` (as docker reads references). No tag means `latest`.
    pub fn parse(s: &str) -> Result<Self, RequestError> {
        let bad = |e| RequestError::Image(s.to_owned(), e);
        let (registry, rest) = match s.split_once('/') {
            Some((first, rest)) if first.contains(['.', ':']) || first == "localhost" => (Some(first), rest),
            _ => (None, s),
        };
        let (name, reference) = match rest.split_once('@') {
            Some((n, d)) => (n, d),
            None => match rest.rsplit_once(':') {
                Some((n, t)) if !t.contains('/') => (n, t),
                _ => (rest, "latest"),
            },
        };
        let registry = registry.map(validate_registry).transpose()?;
        let name = RepoName::parse(name).map_err(bad)?;
        let reference = Reference::parse(reference).map_err(bad)?;
        Ok(Self { registry, name, reference })
    }

    /// An image from the parts a registry notification names.
    pub fn from_parts(registry: Option<&str>, name: &str, reference: &str) -> Result<Self, RequestError> {
        let bad = |e| RequestError::Image(format!("{name}:{reference}"), e);
        Ok(Self {
            registry: registry.map(validate_registry).transpose()?,
            name: RepoName::parse(name).map_err(bad)?,
            reference: Reference::parse(reference).map_err(bad)?,
        })
    }
}

impl fmt::Display for ImageRef {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        if let Some(r) = &self.registry {
            write!(f, "{r}/")?;
        }
        match &self.reference {
            Reference::Tag(t) => write!(f, "{}:{t}", self.name),
            Reference::Digest(d) => write!(f, "{}@{d}", self.name),
        }
    }
}

/// `host[:port]`: letters, digits, `.`, `-`, an optional numeric port (or a bracketed IPv6).
fn validate_registry(s: &str) -> Result<String, RequestError> {
    let bad = || RequestError::Registry(s.to_owned());
    if s.is_empty() || s.len() > MAX_REGISTRY_LEN {
        return Err(bad());
    }
    let (host, port) = match s.find(']') {
        Some(end) if s.starts_with('[') => match &s[end + 1..] {
            "" => (s, None),
            rest => (&s[..=end], Some(rest.strip_prefix(':').ok_or_else(bad)?)),
        },
        _ => match s.split_once(':') {
            Some((h, p)) => (h, Some(p)),
            None => (s, None),
        },
    };
    if let Some(p) = port {
        p.parse::<u16>().map_err(|_| bad())?;
    }
    let host_ok = if host.starts_with('[') {
        host.len() > 2
            && host.ends_with(']')
            && host[1..host.len() - 1].bytes().all(|b| b.is_ascii_hexdigit() || b == b':')
    } else {
        host.split('.').all(|label| {
            let b = label.as_bytes();
            !b.is_empty()
                && b[0].is_ascii_alphanumeric()
                && b[b.len() - 1].is_ascii_alphanumeric()
                && b.iter().all(|c| c.is_ascii_alphanumeric() || *c == b'-')
        })
    };
    if !host_ok {
        return Err(bad());
    }
    Ok(s.to_owned())
}

/// A platform of an image index: `os/architecture[/variant]` (`linux/arm64/v8`).
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct Platform {
    /// `linux`, `windows`, …
    pub os: String,
    /// `amd64`, `arm64`, …
    pub architecture: String,
    /// `v7`, `v8`, … when named; an index entry of any variant matches a platform without one.
    pub variant: Option<String>,
}

impl Platform {
    /// Parses `os/architecture[/variant]`; each part 1 to 32 of `[a-z0-9._-]`.
    pub fn parse(s: &str) -> Result<Self, RequestError> {
        let part = |p: &str| {
            !p.is_empty()
                && p.len() <= 32
                && p.bytes().all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || matches!(b, b'.' | b'_' | b'-'))
        };
        let parts: Vec<&str> = s.split('/').collect();
        if !(2..=3).contains(&parts.len()) || !parts.iter().all(|p| part(p)) {
            return Err(RequestError::Platform(s.to_owned()));
        }
        Ok(Self {
            os: parts[0].to_owned(),
            architecture: parts[1].to_owned(),
            variant: parts.get(2).map(|v| (*v).to_owned()),
        })
    }

    /// Whether an index entry's platform is this one.
    pub fn matches(&self, os: &str, architecture: &str, variant: Option<&str>) -> bool {
        self.os == os && self.architecture == architecture && self.variant.as_deref().is_none_or(|v| Some(v) == variant)
    }
}

impl fmt::Display for Platform {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}/{}", self.os, self.architecture)?;
        if let Some(v) = &self.variant {
            write!(f, "/{v}")?;
        }
        Ok(())
    }
}

/// One preheat: an image, the platforms (none: every platform of its index) and the sites (none:
/// every site with a live host).
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub struct Request {
    /// The image.
    pub image: ImageRef,
    /// Platforms, sorted and without duplicates.
    pub platforms: Vec<Platform>,
    /// Sites, sorted and without duplicates.
    pub sites: Vec<String>,
}

impl Request {
    /// A request from its textual parts, validated and bounded; platforms and sites sorted so
    /// that the same preheat asked twice is the same request.
    pub fn parse(image: &str, platforms: &[String], sites: &[String]) -> Result<Self, RequestError> {
        if platforms.len() > MAX_PLATFORMS {
            return Err(RequestError::TooMany { what: "platforms", count: platforms.len(), max: MAX_PLATFORMS });
        }
        if sites.len() > MAX_SITES {
            return Err(RequestError::TooMany { what: "sites", count: sites.len(), max: MAX_SITES });
        }
        let image = ImageRef::parse(image)?;
        let mut platforms = platforms.iter().map(|p| Platform::parse(p)).collect::<Result<Vec<_>, _>>()?;
        platforms.sort();
        platforms.dedup();
        let mut sites = sites.iter().map(|s| validate_site(s)).collect::<Result<Vec<_>, _>>()?;
        sites.sort();
        sites.dedup();
        Ok(Self { image, platforms, sites })
    }
}

fn validate_site(s: &str) -> Result<String, RequestError> {
    if s.is_empty() || s.len() > MAX_SITE_LEN || s.chars().any(char::is_control) {
        return Err(RequestError::Site(s.to_owned()));
    }
    Ok(s.to_owned())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_image_references() {
        let i = ImageRef::parse("127.0.0.1:5000/team/app:v1").unwrap();
        assert_eq!(i.registry.as_deref(), Some("127.0.0.1:5000"));
        assert_eq!((i.name.as_str(), i.reference.to_string().as_str()), ("team/app", "v1"));
        assert_eq!(i.to_string(), "127.0.0.1:5000/team/app:v1");
        let i = ImageRef::parse("library/alpine").unwrap();
        assert_eq!((i.registry, i.reference), (None, Reference::Tag("latest".into())));
        let d = crate::Digest::of(b"x");
        let i = ImageRef::parse(&format!("ghcr.io/a/b@{d}")).unwrap();
        assert_eq!(i.reference, Reference::Digest(d));
        assert_eq!(i.to_string(), format!("ghcr.io/a/b@{d}"));
        for ok in ["[::1]:5000/a", "[fe80::1]/a", "localhost/a", "reg-1.example.com/a"] {
            assert!(ImageRef::parse(ok).is_ok(), "{ok}");
        }
        for bad in [
            "[::1]x/a",
            "[]/a",
            "[::1]:x/a",
            "a:1:2/b",
            "UPPER/x",
            "a/b:t@t",
            "ex ample.com/a",
            "host:99999/a",
            "a:/b",
            "",
            "a/b:-bad",
            "a/b@sha256:12",
            "../etc/passwd",
            "a..b/c",
            ".x/y",
            "-a.b/c",
        ] {
            assert!(ImageRef::parse(bad).is_err(), "{bad}");
        }
    }

    #[test]
    fn parses_platforms_and_matches_index_entries() {
        let p = Platform::parse("linux/arm64/v8").unwrap();
        assert!(p.matches("linux", "arm64", Some("v8")));
        assert!(!p.matches("linux", "arm64", None));
        let any = Platform::parse("linux/arm").unwrap();
        assert!(any.matches("linux", "arm", Some("v7")));
        for bad in ["linux", "linux/", "Linux/amd64", "a/b/c/d", "linux/amd64 "] {
            assert!(Platform::parse(bad).is_err(), "{bad}");
        }
    }

    #[test]
    fn requests_are_normalised_and_bounded() {
        let s = |v: &[&str]| v.iter().map(|x| (*x).to_owned()).collect::<Vec<_>>();
        let a = Request::parse("a/b:v1", &s(&["linux/arm64", "linux/amd64"]), &s(&["west", "east", "west"])).unwrap();
        let b = Request::parse("a/b:v1", &s(&["linux/amd64", "linux/arm64"]), &s(&["east", "west"])).unwrap();
        assert_eq!(a, b);
        assert_eq!(a.sites, ["east", "west"]);
        let many: Vec<String> = (0..=MAX_SITES).map(|i| format!("s{i}")).collect();
        assert!(matches!(Request::parse("a/b", &[], &many), Err(RequestError::TooMany { what: "sites", .. })));
        assert!(matches!(Request::parse("a/b", &[], &s(&[""])), Err(RequestError::Site(_))));
        assert!(matches!(Request::parse("a/b", &[], &s(&["a\nb"])), Err(RequestError::Site(_))));
    }
}

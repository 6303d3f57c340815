//! Distribution API paths: a pure function from a request's raw path to a typed route.
//!
//! The path is taken as sent, still percent-encoded: `%2e%2e` or `%2f` are not name characters, so
//! an encoded traversal fails validation instead of being decoded into one. The HTTP handler only
//! matches on the [`Route`] this returns.

use crate::digest::{Digest, DigestError};
use crate::name::{NameError, Reference, RepoName};

/// One request target of the distribution read API.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Route {
    /// `/v2/`: the API version check.
    Base,
    /// `/v2/<name>/manifests/<reference>`.
    Manifest {
        /// Repository.
        name: RepoName,
        /// Tag or digest.
        reference: Reference,
    },
    /// `/v2/<name>/blobs/<digest>`.
    Blob {
        /// Repository.
        name: RepoName,
        /// Blob digest.
        digest: Digest,
    },
    /// `/v2/<name>/tags/list`: relayed to the origin.
    Tags {
        /// Repository.
        name: RepoName,
    },
    /// `/v2/<name>/referrers/<digest>` (OCI 1.1): relayed to the origin.
    Referrers {
        /// Repository.
        name: RepoName,
        /// The subject manifest's digest.
        digest: Digest,
    },
    /// `/v2/<name>/blobs/uploads/…`: the push API, which a mirror does not offer.
    Upload,
    /// Another distribution endpoint (the catalog) the mirror does not serve.
    Unsupported,
}

/// Why a path is not a route.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum RouteError {
    /// Not under `/v2/`, or no known endpoint shape.
    #[error("no such endpoint")]
    NotFound,
    /// The repository name or reference is invalid.
    #[error(transparent)]
    Name(#[from] NameError),
    /// The blob digest is invalid.
    #[error(transparent)]
    Digest(#[from] DigestError),
}

/// Parses a raw (undecoded) request path.
pub fn parse(path: &str) -> Result<Route, RouteError> {
    let rest = path.strip_prefix("/v2").ok_or(RouteError::NotFound)?;
    if rest.is_empty() || rest == "/" {
        return Ok(Route::Base);
    }
    let rest = rest.strip_prefix('/').ok_or(RouteError::NotFound)?;
    if rest == "_catalog" {
        return Ok(Route::Unsupported);
    }
    if let Some(idx) = rest.find("/blobs/uploads") {
        RepoName::parse(&rest[..idx])?;
        return Ok(Route::Upload);
    }
    let (head, last) = rest.rsplit_once('/').ok_or(RouteError::NotFound)?;
    let (name, kind) = head.rsplit_once('/').ok_or(RouteError::NotFound)?;
    match kind {
        "manifests" => Ok(Route::Manifest { name: RepoName::parse(name)?, reference: Reference::parse(last)? }),
        "blobs" => Ok(Route::Blob { name: RepoName::parse(name)?, digest: last.parse()? }),
        "tags" if last == "list" => Ok(Route::Tags { name: RepoName::parse(name)? }),
        "referrers" => Ok(Route::Referrers { name: RepoName::parse(name)?, digest: last.parse()? }),
        _ => Err(RouteError::NotFound),
    }
}

/// Largest page a tags list may ask the origin for (`n`).
pub const MAX_LIST_N: u32 = 10_000;

/// A query parameter of a tags list or referrers request that cannot go to the origin.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("query parameter {0:?} is not valid here")]
pub struct ListParamError(pub String);

/// Whether `key=value` (decoded) may be passed on to the origin with a tags list or referrers
/// request: `n` (0..=[`MAX_LIST_N`]), `last` (a tag), `artifactType` (a media type). `Ok(false)`
/// for parameters the mirror keeps to itself (containerd's `ns`); an error for anything else.
pub fn list_param(key: &str, value: &str) -> Result<bool, ListParamError> {
    let bad = || ListParamError(key.chars().take(40).collect());
    let ok = match key {
        "ns" => return Ok(false),
        "n" => value.len() <= 5 && value.parse::<u32>().is_ok_and(|n| n <= MAX_LIST_N),
        "last" => matches!(Reference::parse(value), Ok(Reference::Tag(_))),
        "artifactType" => {
            !value.is_empty()
                && value.len() <= 255
                && value.bytes().all(|b| b.is_ascii_alphanumeric() || b"!#$&^_.+-/".contains(&b))
        }
        _ => false,
    };
    if ok {
        Ok(true)
    } else {
        Err(bad())
    }
}

/// Why an `ns` value is not a registry host.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("ns is not a registry host[:port]")]
pub struct NsError;

/// Validates containerd's `ns` query value: `host[:port]` with a DNS name, IPv4 or `[IPv6]` host.
/// Returns it unchanged (after percent-decoding by the caller's query parser).
pub fn parse_ns(ns: &str) -> Result<&str, NsError> {
    if ns.is_empty() || ns.len() > 255 {
        return Err(NsError);
    }
    let (host, port) = split_host_port(ns).ok_or(NsError)?;
    if let Some(p) = port {
        if p.is_empty() || p.len() > 5 || !p.bytes().all(|b| b.is_ascii_digit()) || p.parse::<u16>().is_err() {
            return Err(NsError);
        }
    }
    let host_ok = if let Some(v6) = host.strip_prefix('[').and_then(|h| h.strip_suffix(']')) {
        v6.parse::<std::net::Ipv6Addr>().is_ok()
    } else {
        !host.is_empty() && host.split('.').all(is_dns_label)
    };
    if host_ok {
        Ok(ns)
    } else {
        Err(NsError)
    }
}

fn split_host_port(s: &str) -> Option<(&str, Option<&str>)> {
    if s.starts_with('[') {
        let end = s.find(']')?;
        let (host, rest) = s.split_at(end + 1);
        return match rest {
            "" => Some((host, None)),
            _ => Some((host, Some(rest.strip_prefix(':')?))),
        };
    }
    Some(match s.split_once(':') {
        Some((h, p)) => (h, Some(p)),
        None => (s, None),
    })
}

fn is_dns_label(l: &str) -> bool {
    !l.is_empty()
        && l.len() <= 63
        && !l.starts_with('-')
        && !l.ends_with('-')
        && l.bytes().all(|b| b.is_ascii_alphanumeric() || b == b'-')
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    fn d() -> String {
        Digest::of(b"layer").to_string()
    }

    #[test]
    fn parses_routes() {
        assert_eq!(parse("/v2/").unwrap(), Route::Base);
        assert_eq!(parse("/v2").unwrap(), Route::Base);
        let m = parse("/v2/library/alpine/manifests/3.20").unwrap();
        assert!(
            matches!(m, Route::Manifest { ref name, reference: Reference::Tag(ref t) } if name.as_str() == "library/alpine" && t == "3.20")
        );
        let b = parse(&format!("/v2/a/b/blobs/{}", d())).unwrap();
        assert!(matches!(b, Route::Blob { ref name, .. } if name.as_str() == "a/b"));
        let nested = parse("/v2/x/manifests/y/manifests/latest").unwrap();
        assert!(matches!(nested, Route::Manifest { ref name, .. } if name.as_str() == "x/manifests/y"));
        assert_eq!(parse("/v2/a/blobs/uploads/").unwrap(), Route::Upload);
        assert_eq!(parse("/v2/a/blobs/uploads/123").unwrap(), Route::Upload);
        assert!(matches!(parse("/v2/a/b/tags/list").unwrap(), Route::Tags { ref name } if name.as_str() == "a/b"));
        let d = Digest::of(b"m");
        let referrers = parse(&format!("/v2/a/referrers/{d}")).unwrap();
        assert!(matches!(referrers, Route::Referrers { ref name, digest } if name.as_str() == "a" && digest == d));
        assert!(parse("/v2/a/referrers/latest").is_err(), "referrers take a digest");
        assert!(parse("/v2/A/tags/list").is_err());
        assert_eq!(parse("/v2/_catalog").unwrap(), Route::Unsupported);
    }

    #[test]
    fn rejects_bad_paths() {
        assert_eq!(parse("/v1/a/manifests/x"), Err(RouteError::NotFound));
        assert_eq!(parse("/v2/a"), Err(RouteError::NotFound));
        assert_eq!(parse("/v2/a/things/x"), Err(RouteError::NotFound));
        assert_eq!(parse("/v2/UPPER/manifests/x"), Err(RouteError::Name(NameError::Name)));
        assert_eq!(parse(&format!("/v2/../../etc/blobs/{}", d())), Err(RouteError::Name(NameError::Name)));
        assert_eq!(parse("/v2/%2e%2e/manifests/x"), Err(RouteError::Name(NameError::Name)));
        assert!(matches!(parse("/v2/a/blobs/sha256:xyz"), Err(RouteError::Digest(_))));
        assert!(parse("/v2/a/blobs/../../etc/passwd").is_err());
        assert!(parse("/v2/a/blobs/..%2f..%2fetc%2fpasswd").is_err());
    }

    #[test]
    fn list_parameters_are_checked_before_they_reach_the_origin() {
        assert_eq!(list_param("n", "100"), Ok(true));
        assert_eq!(list_param("n", "0"), Ok(true));
        assert_eq!(list_param("last", "v1.2"), Ok(true));
        assert_eq!(list_param("artifactType", "application/vnd.example.sbom+json"), Ok(true));
        assert_eq!(list_param("ns", "docker.io"), Ok(false), "ns is the mirror's own");
        for (k, v) in [
            ("n", "10001"),
            ("n", "-1"),
            ("n", "1e3"),
            ("n", "99999999999"),
            ("last", "sha256:abc"),
            ("last", "../x"),
            ("last", ""),
            ("artifactType", "a b"),
            ("artifactType", ""),
            ("other", "1"),
        ] {
            assert!(list_param(k, v).is_err(), "{k}={v}");
        }
    }

    #[test]
    fn validates_ns() {
        for ok in ["docker.io", "127.0.0.1:5000", "registry-1.docker.io", "[::1]:5000", "[::1]", "localhost"] {
            assert_eq!(parse_ns(ok), Ok(ok));
        }
        for bad in ["", "a/b", "host:", "host:99999", "host:12a", "-a.com", "a..b", "[::1", "[zz]:1", "a b", "http://x"]
        {
            assert_eq!(parse_ns(bad), Err(NsError), "{bad}");
        }
    }

    proptest! {
        #[test]
        fn never_panics(s in "/v2/.{0,200}") {
            let _ = parse(&s);
            let _ = parse_ns(&s[4..]);
        }
    }
}

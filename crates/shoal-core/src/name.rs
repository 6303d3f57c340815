//! Repository names and manifest references, validated against the distribution spec grammar.
//!
//! A name that passes here contains only `[a-z0-9._/-]` in the spec's shape, so it can never
//! climb out of a URL path or name a file; still, no name is ever used as a file path.

use std::fmt;

use crate::digest::{Digest, DigestError};

/// Longest repository name accepted (the distribution registry's limit).
pub const MAX_NAME_LEN: usize = 255;

/// Why a repository name or reference is invalid.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum NameError {
    /// The name does not match `[a-z0-9]+((\.|_|__|-+)[a-z0-9]+)*(/…)*` or is too long.
    #[error("invalid repository name")]
    Name,
    /// The reference is neither a tag (`[a-zA-Z0-9_][a-zA-Z0-9._-]{0,127}`) nor a digest.
    #[error("invalid tag")]
    Tag,
    /// The reference looks like a digest but is not a valid one.
    #[error(transparent)]
    Digest(#[from] DigestError),
}

/// A validated repository name such as `library/alpine`.
#[derive(Clone, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct RepoName(String);

impl RepoName {
    /// Validates `s` as a repository name.
    pub fn parse(s: &str) -> Result<Self, NameError> {
        if s.is_empty() || s.len() > MAX_NAME_LEN || !s.split('/').all(is_path_component) {
            return Err(NameError::Name);
        }
        Ok(Self(s.to_owned()))
    }

    /// The name as a string.
    pub fn as_str(&self) -> &str {
        &self.0
    }
}

/// `[a-z0-9]+((\.|_|__|-+)[a-z0-9]+)*`
fn is_path_component(c: &str) -> bool {
    let bytes = c.as_bytes();
    let alnum = |b: u8| b.is_ascii_lowercase() || b.is_ascii_digit();
    if bytes.is_empty() || !alnum(bytes[0]) || !alnum(bytes[bytes.len() - 1]) {
        return false;
    }
    let mut i = 0;
    while i < bytes.len() {
        if alnum(bytes[i]) {
            i += 1;
            continue;
        }
        let start = i;
        while i < bytes.len() && !alnum(bytes[i]) {
            i += 1;
        }
        let sep = &c[start..i];
        let ok = sep == "." || sep == "_" || sep == "__" || sep.bytes().all(|b| b == b'-');
        if !ok {
            return false;
        }
    }
    true
}

impl fmt::Display for RepoName {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}

impl fmt::Debug for RepoName {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        fmt::Debug::fmt(&self.0, f)
    }
}

/// What a manifest request names: a mutable tag or an immutable digest.
#[derive(Clone, PartialEq, Eq, Hash)]
pub enum Reference {
    /// A tag, which must be revalidated with the origin on every request.
    Tag(String),
    /// A digest, which is immutable and may be served from cache.
    Digest(Digest),
}

impl Reference {
    /// Parses a tag or a digest (anything with a `:` is taken as a digest).
    pub fn parse(s: &str) -> Result<Self, NameError> {
        if s.contains(':') {
            return Ok(Self::Digest(s.parse()?));
        }
        let bytes = s.as_bytes();
        let head_ok = bytes.first().is_some_and(|&b| b.is_ascii_alphanumeric() || b == b'_');
        let rest_ok = bytes.iter().all(|&b| b.is_ascii_alphanumeric() || matches!(b, b'_' | b'.' | b'-'));
        if !head_ok || !rest_ok || bytes.len() > 128 {
            return Err(NameError::Tag);
        }
        Ok(Self::Tag(s.to_owned()))
    }
}

impl fmt::Display for Reference {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Self::Tag(t) => f.write_str(t),
            Self::Digest(d) => fmt::Display::fmt(d, f),
        }
    }
}

impl fmt::Debug for Reference {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "Reference({self})")
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    #[test]
    fn accepts_spec_names() {
        for ok in ["a", "library/alpine", "a.b_c__d---e/f0", "x/y/z", "127"] {
            assert!(RepoName::parse(ok).is_ok(), "{ok}");
        }
    }

    #[test]
    fn rejects_bad_names() {
        let long = "a".repeat(256);
        for bad in
            ["", "UPPER", "a//b", "/a", "a/", "..", "a/../b", "a..b", "a___b", "-a", "a-", ".a", "a b", "a%2fb", &long]
        {
            assert_eq!(RepoName::parse(bad), Err(NameError::Name), "{bad}");
        }
    }

    #[test]
    fn parses_references() {
        assert_eq!(Reference::parse("v1.0_rc-1").unwrap(), Reference::Tag("v1.0_rc-1".into()));
        assert!(matches!(Reference::parse(&Digest::of(b"x").to_string()).unwrap(), Reference::Digest(_)));
        for bad in ["", ".v1", "-v1", "v/1", "sha256:zz", &"a".repeat(129)] {
            assert!(Reference::parse(bad).is_err(), "{bad}");
        }
    }

    proptest! {
        #[test]
        fn valid_names_hold_only_safe_bytes(s in "[a-z0-9._/-]{1,40}") {
            if let Ok(n) = RepoName::parse(&s) {
                prop_assert!(!n.as_str().split('/').any(|c| c == ".." || c == "." || c.is_empty()));
            }
        }

        #[test]
        fn never_panics(s in ".{0,300}") {
            let _ = RepoName::parse(&s);
            let _ = Reference::parse(&s);
        }
    }
}

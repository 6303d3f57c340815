//! HTTP byte ranges on blobs (`Range: bytes=…`), parsed and resolved against a blob's size.
//!
//! Parsing and resolving are separate steps: a malformed header is a client error (400) whatever
//! the blob, while an unsatisfiable one (416) depends on the blob's size.

/// Why a Range header cannot be served.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum RangeError {
    /// Not `bytes=first-[last]` or `bytes=-suffix`.
    #[error("malformed Range header")]
    Malformed,
    /// Well-formed, but starts past the end of the blob (or asks for an empty suffix).
    #[error("range not satisfiable for a blob of {size} bytes")]
    Unsatisfiable {
        /// The blob size, for `Content-Range: bytes */size`.
        size: u64,
    },
}

/// A range as the client wrote it, before the blob size is known.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum RangeSpec {
    /// `bytes=first-` or `bytes=first-last`.
    From {
        /// First byte.
        first: u64,
        /// Last byte, inclusive.
        last: Option<u64>,
    },
    /// `bytes=-n`: the last n bytes.
    Suffix(u64),
}

/// A resolved, non-empty byte range `[start, end)` inside a blob.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct ByteRange {
    /// First byte.
    pub start: u64,
    /// One past the last byte.
    pub end: u64,
}

impl ByteRange {
    /// Number of bytes.
    pub fn len(&self) -> u64 {
        self.end - self.start
    }

    /// Always false: a resolved range holds at least one byte.
    pub fn is_empty(&self) -> bool {
        self.end == self.start
    }

    /// The `Content-Range` header value for a blob of `size` bytes.
    pub fn content_range(&self, size: u64) -> String {
        format!("bytes {}-{}/{}", self.start, self.end - 1, size)
    }
}

/// Parses a Range header value. `Ok(None)` means "serve the whole blob": several ranges at once
/// (multipart answers are not offered, which RFC 9110 allows) or a unit other than bytes.
pub fn parse(header: &str) -> Result<Option<RangeSpec>, RangeError> {
    let header = header.trim();
    let Some(set) = header.strip_prefix("bytes=") else {
        return if header.contains('=') { Ok(None) } else { Err(RangeError::Malformed) };
    };
    if set.contains(',') {
        return Ok(None);
    }
    let (a, b) = set.trim().split_once('-').ok_or(RangeError::Malformed)?;
    let num = |s: &str| -> Result<u64, RangeError> {
        if s.is_empty() || s.len() > 19 || !s.bytes().all(|c| c.is_ascii_digit()) {
            return Err(RangeError::Malformed);
        }
        s.parse().map_err(|_| RangeError::Malformed)
    };
    if a.is_empty() {
        return Ok(Some(RangeSpec::Suffix(num(b)?)));
    }
    let first = num(a)?;
    let last = if b.is_empty() { None } else { Some(num(b)?) };
    if last.is_some_and(|l| l < first) {
        return Err(RangeError::Malformed);
    }
    Ok(Some(RangeSpec::From { first, last }))
}

impl RangeSpec {
    /// Resolves against a blob of `size` bytes (RFC 9110 §14.1.2).
    pub fn resolve(self, size: u64) -> Result<ByteRange, RangeError> {
        let unsatisfiable = RangeError::Unsatisfiable { size };
        match self {
            Self::From { first, last } => {
                if first >= size {
                    return Err(unsatisfiable);
                }
                let end = last.map_or(size, |l| l.saturating_add(1).min(size));
                Ok(ByteRange { start: first, end })
            }
            Self::Suffix(n) => {
                if n == 0 || size == 0 {
                    return Err(unsatisfiable);
                }
                Ok(ByteRange { start: size - n.min(size), end: size })
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    fn r(h: &str, size: u64) -> Result<Option<ByteRange>, RangeError> {
        parse(h)?.map(|s| s.resolve(size)).transpose()
    }

    #[test]
    fn resolves_ranges() {
        assert_eq!(r("bytes=0-9", 100), Ok(Some(ByteRange { start: 0, end: 10 })));
        assert_eq!(r("bytes=90-", 100), Ok(Some(ByteRange { start: 90, end: 100 })));
        assert_eq!(r("bytes=90-1000", 100), Ok(Some(ByteRange { start: 90, end: 100 })));
        assert_eq!(r("bytes=-10", 100), Ok(Some(ByteRange { start: 90, end: 100 })));
        assert_eq!(r("bytes=-1000", 100), Ok(Some(ByteRange { start: 0, end: 100 })));
        assert_eq!(r("bytes=0-1,5-6", 100), Ok(None));
        assert_eq!(r("items=0-1", 100), Ok(None));
        assert_eq!(ByteRange { start: 90, end: 100 }.content_range(100), "bytes 90-99/100");
    }

    #[test]
    fn rejects_bad_ranges() {
        for bad in ["abc", "bytes=abc", "bytes=5-1", "bytes=-", "bytes=1", "bytes=+1-2", "bytes=99999999999999999999-"]
        {
            assert_eq!(r(bad, 100), Err(RangeError::Malformed), "{bad}");
        }
        assert_eq!(r("bytes=100-", 100), Err(RangeError::Unsatisfiable { size: 100 }));
        assert_eq!(r("bytes=-0", 100), Err(RangeError::Unsatisfiable { size: 100 }));
        assert_eq!(r("bytes=0-", 0), Err(RangeError::Unsatisfiable { size: 0 }));
    }

    proptest! {
        #[test]
        fn resolved_ranges_lie_inside_the_blob(h in "bytes=[0-9]{0,4}-[0-9]{0,4}", size in 0u64..20_000) {
            if let Ok(Some(b)) = r(&h, size) {
                prop_assert!(b.start < b.end && b.end <= size);
            }
        }

        #[test]
        fn never_panics(h in ".{0,40}", size in any::<u64>()) {
            let _ = r(&h, size);
        }
    }
}

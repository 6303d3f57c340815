//! The OCI distribution error vocabulary: codes, their HTTP status, and the JSON error body.
//!
//! Every error the mirror returns goes through [`ErrorCode::body`], so clients always get
//! `{"errors":[{"code":…,"message":…}]}`.

/// An OCI distribution error code (plus the few proxy-side ones a mirror needs).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ErrorCode {
    /// Blob unknown to the registry (404).
    BlobUnknown,
    /// Manifest unknown (404).
    ManifestUnknown,
    /// Invalid repository name (400).
    NameInvalid,
    /// Repository unknown (404).
    NameUnknown,
    /// Invalid digest (400).
    DigestInvalid,
    /// Invalid request, e.g. a malformed Range or an unknown `ns` (400).
    Unsupported,
    /// Malformed Range header (400).
    RangeInvalid,
    /// Range cannot be satisfied (416).
    RangeUnsatisfiable,
    /// Authentication required (401).
    Unauthorized,
    /// Access denied (403).
    Denied,
    /// The operation is not offered by a read-only mirror (405).
    MethodNotAllowed,
    /// No such endpoint (404).
    NotFound,
    /// Over a limit (429).
    TooManyRequests,
    /// The origin answered with something unusable (502).
    OriginError,
    /// The origin could not be reached in time (504).
    OriginUnreachable,
    /// The origin is unavailable (it answered 503 or 429) and nothing lets the cache answer (503).
    OriginUnavailable,
    /// An internal failure of the daemon (500).
    Internal,
}

impl ErrorCode {
    /// The code string in the JSON body.
    pub fn as_str(self) -> &'static str {
        match self {
            Self::BlobUnknown => "BLOB_UNKNOWN",
            Self::ManifestUnknown => "MANIFEST_UNKNOWN",
            Self::NameInvalid => "NAME_INVALID",
            Self::NameUnknown => "NAME_UNKNOWN",
            Self::DigestInvalid => "DIGEST_INVALID",
            Self::Unsupported => "UNSUPPORTED",
            Self::RangeInvalid => "RANGE_INVALID",
            Self::RangeUnsatisfiable => "RANGE_NOT_SATISFIABLE",
            Self::Unauthorized => "UNAUTHORIZED",
            Self::Denied => "DENIED",
            Self::MethodNotAllowed => "UNSUPPORTED",
            Self::NotFound => "NOT_FOUND",
            Self::TooManyRequests => "TOOMANYREQUESTS",
            Self::OriginError => "ORIGIN_ERROR",
            Self::OriginUnreachable => "ORIGIN_UNREACHABLE",
            Self::OriginUnavailable => "UNAVAILABLE",
            Self::Internal => "INTERNAL_ERROR",
        }
    }

    /// The HTTP status that goes with the code.
    pub fn status(self) -> u16 {
        match self {
            Self::NameInvalid | Self::DigestInvalid | Self::Unsupported | Self::RangeInvalid => 400,
            Self::Unauthorized => 401,
            Self::Denied => 403,
            Self::BlobUnknown | Self::ManifestUnknown | Self::NameUnknown | Self::NotFound => 404,
            Self::MethodNotAllowed => 405,
            Self::RangeUnsatisfiable => 416,
            Self::TooManyRequests => 429,
            Self::Internal => 500,
            Self::OriginError => 502,
            Self::OriginUnavailable => 503,
            Self::OriginUnreachable => 504,
        }
    }

    /// The JSON error body with `message`.
    pub fn body(self, message: &str) -> String {
        let msg = serde_json_escape(message);
        format!(r#"{{"errors":[{{"code":"{}","message":"{}"}}]}}"#, self.as_str(), msg)
    }
}

fn serde_json_escape(s: &str) -> String {
    let mut out = String::with_capacity(s.len());
    for c in s.chars() {
        match c {
            '"' => out.push_str("\\\""),
            '\\' => out.push_str("\\\\"),
            c if (c as u32) < 0x20 => out.push_str(&format!("\\u{:04x}", c as u32)),
            c => out.push(c),
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn bodies_are_json() {
        let b = ErrorCode::DigestInvalid.body("bad \"digest\"\n");
        assert_eq!(b, r#"{"errors":[{"code":"DIGEST_INVALID","message":"bad \"digest\"\u000a"}]}"#);
        assert_eq!(ErrorCode::RangeUnsatisfiable.status(), 416);
        assert_eq!(ErrorCode::OriginUnreachable.status(), 504);
    }
}

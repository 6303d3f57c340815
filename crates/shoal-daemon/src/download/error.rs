//! Why a blob's download failed, and why one origin run failed.
//!
//! The messages are what `State::Failed` carries to the blob's readers and what the log says.

use std::sync::Arc;

use http::header::InvalidHeaderValue;
use http::StatusCode;

use crate::download::writer::WriteError;
use crate::origin::{error_chain, OriginError};

/// Why a blob's download ended without the blob.
#[derive(Debug, thiserror::Error)]
pub enum DownloadError {
    /// The writer thread is gone, so there is nowhere to put the bytes (it failed on its own
    /// error, which the download reports as well).
    #[error("blob writer stopped")]
    WriterStopped,
    /// The writer could not check the whole blob (the disk failed, or the blob does not hash
    /// to its digest and no piece is left to drop).
    #[error(transparent)]
    Verify(Arc<WriteError>),
    /// The origin failed in a way another attempt would not change (a refusing status, a
    /// broken Range answer).
    #[error(transparent)]
    Origin(RunError),
    /// The origin failed every attempt, each time in a way worth another one; the last error.
    #[error("origin failed {attempts} times: {last}")]
    OriginRetries {
        /// The attempts made.
        attempts: u32,
        /// How the last one failed.
        last: RunError,
    },
    /// Neither the origin nor a parent could deliver the blob (the origin's own error is
    /// reported instead whenever there is one).
    #[error("neither the origin nor a parent could deliver the blob")]
    NoSource,
    /// The blob did not hash to its digest even after the dropped pieces were fetched again
    /// from the origin.
    #[error("blob did not verify after fetching its pieces again from the origin")]
    NotVerified,
}

/// Why one origin run (a Range request for consecutive pieces) failed.
#[derive(Debug, thiserror::Error)]
pub enum RunError {
    /// The request could not be sent or answered (unreachable, timed out, credentials).
    #[error(transparent)]
    Request(#[from] OriginError),
    /// The origin answered with a status other than 200 or 206.
    #[error("origin answered {0}")]
    Status(StatusCode),
    /// The body broke off with an error.
    #[error("{}", error_chain(.0))]
    Body(reqwest::Error),
    /// The body ended before the run's last byte.
    #[error("origin body ended at byte {at} of {end}")]
    BodyEnded {
        /// Where it ended.
        at: u64,
        /// Where the run ends.
        end: u64,
    },
    /// A 206 whose `Content-Range` is missing or does not parse.
    #[error("206 without a usable Content-Range")]
    NoContentRange,
    /// A 206 that starts after the run's first byte.
    #[error("origin started at byte {offset}, asked for {start}")]
    StartsLate {
        /// Where the answer starts.
        offset: u64,
        /// The run's first byte.
        start: u64,
    },
    /// The `Range` header could not be built.
    #[error(transparent)]
    RangeHeader(InvalidHeaderValue),
}

impl RunError {
    /// Worth another attempt: the network, a 5xx, a 429, a body that broke off.
    pub fn is_transient(&self) -> bool {
        match self {
            Self::Request(_) | Self::Body(_) | Self::BodyEnded { .. } => true,
            Self::Status(s) => s.is_server_error() || *s == StatusCode::TOO_MANY_REQUESTS,
            Self::NoContentRange | Self::StartsLate { .. } | Self::RangeHeader(_) => false,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn messages_say_what_failed() {
        let last = RunError::Status(StatusCode::BAD_GATEWAY);
        assert!(last.is_transient());
        assert_eq!(
            DownloadError::OriginRetries { attempts: 4, last }.to_string(),
            "origin failed 4 times: origin answered 502 Bad Gateway"
        );
        let refused = RunError::Status(StatusCode::NOT_FOUND);
        assert!(!refused.is_transient());
        assert_eq!(DownloadError::Origin(refused).to_string(), "origin answered 404 Not Found");
        assert!(RunError::BodyEnded { at: 3, end: 9 }.is_transient());
        assert!(!RunError::StartsLate { offset: 9, start: 3 }.is_transient());
        assert_eq!(DownloadError::WriterStopped.to_string(), "blob writer stopped");
    }
}

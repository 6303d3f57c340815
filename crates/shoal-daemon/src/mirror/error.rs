//! Mirror errors as HTTP responses: always an OCI error body with the status its code implies.

use axum::response::{IntoResponse, Response};
use http::header::{ALLOW, CONTENT_RANGE, CONTENT_TYPE};
use http::{HeaderName, HeaderValue, StatusCode};
use shoal_core::range::RangeError;
use shoal_core::route::RouteError;
use shoal_core::ErrorCode;

use crate::origin::{OriginError, UnknownRegistry};

/// An error response of the mirror.
#[derive(Debug)]
pub struct ApiError {
    code: ErrorCode,
    message: String,
    headers: Vec<(HeaderName, HeaderValue)>,
}

impl ApiError {
    /// An error with `code` and a human message.
    pub fn new(code: ErrorCode, message: impl Into<String>) -> Self {
        Self { code, message: message.into(), headers: Vec::new() }
    }

    /// Adds a response header.
    pub fn with_header(mut self, name: HeaderName, value: HeaderValue) -> Self {
        self.headers.push((name, value));
        self
    }

    /// 405 for writes and other methods a read-only mirror does not offer.
    pub fn method_not_allowed(method: &http::Method) -> Self {
        let mut e = Self::new(
            ErrorCode::MethodNotAllowed,
            format!("{method} is not supported: this is a read-only registry mirror"),
        );
        e.headers.push((ALLOW, HeaderValue::from_static("GET, HEAD")));
        e
    }
}

impl IntoResponse for ApiError {
    fn into_response(self) -> Response {
        let status = StatusCode::from_u16(self.code.status()).unwrap_or(StatusCode::INTERNAL_SERVER_ERROR);
        let mut resp = (status, self.code.body(&self.message)).into_response();
        resp.headers_mut().extend(self.headers.into_iter().map(|(k, v)| (Some(k), v)));
        resp.headers_mut().insert(CONTENT_TYPE, HeaderValue::from_static("application/json"));
        resp
    }
}

impl From<RouteError> for ApiError {
    fn from(e: RouteError) -> Self {
        let code = match e {
            RouteError::NotFound => ErrorCode::NotFound,
            RouteError::Name(shoal_core::name::NameError::Name | shoal_core::name::NameError::Tag) => {
                ErrorCode::NameInvalid
            }
            RouteError::Name(shoal_core::name::NameError::Digest(_)) | RouteError::Digest(_) => {
                ErrorCode::DigestInvalid
            }
        };
        Self::new(code, e.to_string())
    }
}

impl From<RangeError> for ApiError {
    fn from(e: RangeError) -> Self {
        match e {
            RangeError::Malformed => Self::new(ErrorCode::RangeInvalid, e.to_string()),
            RangeError::Unsatisfiable { size } => {
                let mut err = Self::new(ErrorCode::RangeUnsatisfiable, e.to_string());
                if let Ok(v) = HeaderValue::from_str(&format!("bytes */{size}")) {
                    err.headers.push((CONTENT_RANGE, v));
                }
                err
            }
        }
    }
}

impl From<OriginError> for ApiError {
    fn from(e: OriginError) -> Self {
        let code = if e.is_timeout() { ErrorCode::OriginUnreachable } else { ErrorCode::OriginError };
        Self::new(code, e.to_string())
    }
}

impl From<UnknownRegistry> for ApiError {
    fn from(e: UnknownRegistry) -> Self {
        Self::new(ErrorCode::Unsupported, e.to_string())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn maps_errors_to_statuses() {
        let r = ApiError::from(RangeError::Unsatisfiable { size: 10 }).into_response();
        assert_eq!(r.status(), 416);
        assert_eq!(r.headers()[CONTENT_RANGE], "bytes */10");
        assert_eq!(ApiError::from(RangeError::Malformed).into_response().status(), 400);
        assert_eq!(ApiError::from(RouteError::NotFound).into_response().status(), 404);
        let r = ApiError::method_not_allowed(&http::Method::PUT).into_response();
        assert_eq!(r.status(), 405);
        assert_eq!(r.headers()[ALLOW], "GET, HEAD");
        assert_eq!(ApiError::from(UnknownRegistry("x".into())).into_response().status(), 400);
    }
}

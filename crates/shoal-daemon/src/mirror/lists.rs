//! Tags lists and OCI 1.1 referrers: relayed to the origin with the client's credentials, the
//! origin's answer passed back (status, body up to [`MAX_LIST_BODY`], `Content-Type`, and a
//! `Link` to the next page that stays on this mirror). Nothing is cached: the origin decides
//! every time what the client may see.

use axum::response::{IntoResponse, Response};
use http::header::{CONTENT_TYPE, LINK};
use http::{HeaderMap, HeaderValue, Method, StatusCode};
use shoal_core::route::list_param;
use shoal_core::{ErrorCode, RepoName};

use super::error::ApiError;
use super::{read_limited, relay};
use crate::origin::{Origin, SMALL_REQUEST_TIMEOUT};

/// Largest list body relayed (a page of 10,000 tags is about 1 MiB).
pub const MAX_LIST_BODY: usize = 4 << 20;

/// Serves `GET`/`HEAD` of `path` (`/v2/<name>/tags/list` or `/v2/<name>/referrers/<digest>`) with
/// the client's `query`, from `origin`.
pub async fn serve(
    origin: &Origin,
    name: &RepoName,
    path: &str,
    query: Option<&str>,
    method: &Method,
    headers: &HeaderMap,
) -> Result<Response, ApiError> {
    let target = format!("{path}{}", origin_query(query)?);
    let resp =
        origin.send(Method::GET, Some(name), &target, headers, HeaderMap::new(), Some(SMALL_REQUEST_TIMEOUT)).await?;
    if resp.status() != StatusCode::OK {
        return Ok(relay(resp).await);
    }
    let content_type = resp.headers().get(CONTENT_TYPE).cloned();
    let link = resp.headers().get(LINK).and_then(|l| same_mirror_link(l, path));
    let body = read_limited(resp, MAX_LIST_BODY).await.ok_or_else(|| {
        ApiError::new(ErrorCode::OriginError, format!("the origin's list is over {MAX_LIST_BODY} bytes or broke off"))
    })?;
    let mut out =
        if method == Method::HEAD { StatusCode::OK.into_response() } else { (StatusCode::OK, body).into_response() };
    let h = out.headers_mut();
    h.insert(CONTENT_TYPE, content_type.unwrap_or(HeaderValue::from_static("application/json")));
    if let Some(l) = link {
        h.insert(LINK, l);
    }
    Ok(out)
}

/// The client's query as it goes to the origin: only `n`, `last` and `artifactType`, each
/// validated (see [`list_param`]) and encoded again; `?…` or empty.
fn origin_query(query: Option<&str>) -> Result<String, ApiError> {
    let mut out = url::form_urlencoded::Serializer::new(String::new());
    for (k, v) in url::form_urlencoded::parse(query.unwrap_or("").as_bytes()) {
        if list_param(&k, &v).map_err(|e| ApiError::new(ErrorCode::Unsupported, e.to_string()))? {
            out.append_pair(&k, &v);
        }
    }
    let q = out.finish();
    Ok(if q.is_empty() { q } else { format!("?{q}") })
}

/// The origin's `Link: <…>; rel="next"` rewritten to point at this mirror: its path must be
/// `path` (the same list), its query is checked like a client's; an absolute URL loses its
/// origin. Anything else is dropped (the client then sees one page, never a link elsewhere).
fn same_mirror_link(link: &HeaderValue, path: &str) -> Option<HeaderValue> {
    let text = link.to_str().ok()?;
    let (target, params) = text.strip_prefix('<')?.split_once('>')?;
    if !params.contains("rel=\"next\"") {
        return None;
    }
    let relative = match target.find("/v2/") {
        Some(i) => &target[i..],
        None => return None,
    };
    let (link_path, query) = relative.split_once('?').map_or((relative, None), |(p, q)| (p, Some(q)));
    if link_path != path {
        return None;
    }
    let query = origin_query(query).ok()?;
    HeaderValue::from_str(&format!("<{path}{query}>; rel=\"next\"")).ok()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn queries_keep_only_what_the_origin_needs() {
        assert_eq!(origin_query(None).unwrap(), "");
        assert_eq!(origin_query(Some("ns=docker.io")).unwrap(), "");
        assert_eq!(origin_query(Some("n=2&last=v1&ns=docker.io")).unwrap(), "?n=2&last=v1");
        assert!(origin_query(Some("n=2&x=%2F")).is_err());
        assert!(origin_query(Some("last=..%2F..")).is_err());
    }

    #[test]
    fn next_links_stay_on_the_mirror() {
        let path = "/v2/a/b/tags/list";
        let link = |s: &str| same_mirror_link(&HeaderValue::from_str(s).unwrap(), path);
        let want = HeaderValue::from_static("</v2/a/b/tags/list?n=2&last=v2>; rel=\"next\"");
        assert_eq!(link("</v2/a/b/tags/list?n=2&last=v2>; rel=\"next\""), Some(want.clone()));
        assert_eq!(
            link("<https://origin.example/v2/a/b/tags/list?last=v2&n=2>; rel=\"next\""),
            Some(HeaderValue::from_static("</v2/a/b/tags/list?last=v2&n=2>; rel=\"next\""))
        );
        assert_eq!(link("</v2/other/tags/list?n=2>; rel=\"next\""), None, "another list");
        assert_eq!(link("</v2/a/b/tags/list?n=2&evil=1>; rel=\"next\""), None);
        assert_eq!(link("</v2/a/b/tags/list?n=2>; rel=\"prev\""), None);
        assert_eq!(link("garbage"), None);
    }
}

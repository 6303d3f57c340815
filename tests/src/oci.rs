//! Requests against a distribution API (the origin or the mirror): manifest Accept headers, OCI
//! error bodies, and a raw HTTP/1.1 client for request targets that URL libraries would normalize
//! (`/v2/../..`).

use std::time::Duration;

use anyhow::{bail, ensure, Context, Result};
use tokio::io::{AsyncReadExt, AsyncWriteExt};

/// The manifest media types containers/image accepts, each sent as its own `Accept` header.
pub const MANIFEST_TYPES: &[&str] = &[
    "application/vnd.oci.image.manifest.v1+json",
    "application/vnd.oci.image.index.v1+json",
    "application/vnd.docker.distribution.manifest.v2+json",
    "application/vnd.docker.distribution.manifest.list.v2+json",
];

/// A request for `BASE/v2/NAME/manifests/REFERENCE` with one `Accept` header per manifest type.
pub fn manifest_request(
    client: &reqwest::Client,
    method: reqwest::Method,
    base: &str,
    name: &str,
    reference: &str,
) -> reqwest::RequestBuilder {
    let mut request = client.request(method, format!("{base}/v2/{name}/manifests/{reference}"));
    for media_type in MANIFEST_TYPES {
        request = request.header(reqwest::header::ACCEPT, *media_type);
    }
    request
}

/// Checks that `body` is an OCI error document (`{"errors":[{"code":..,"message":..}]}`) and
/// returns its codes.
pub fn oci_error_codes(body: &[u8]) -> Result<Vec<String>> {
    let doc: serde_json::Value = serde_json::from_slice(body)
        .with_context(|| format!("not a JSON error body: {:?}", String::from_utf8_lossy(body)))?;
    let errors = doc["errors"].as_array().with_context(|| format!("no `errors` array in {doc}"))?;
    ensure!(!errors.is_empty(), "empty `errors` array in {doc}");
    errors
        .iter()
        .map(|e| {
            ensure!(e["message"].is_string(), "error without a string `message`: {e}");
            e["code"].as_str().map(str::to_owned).with_context(|| format!("error without a string `code`: {e}"))
        })
        .collect()
}

/// Consumes a response, checks its status and that its body is an OCI error; returns the codes.
pub async fn expect_oci_error(response: reqwest::Response, status: u16) -> Result<Vec<String>> {
    let got = response.status().as_u16();
    let url = response.url().clone();
    let body = response.bytes().await?;
    ensure!(got == status, "{url}: status {got}, want {status}; body {:?}", String::from_utf8_lossy(&body));
    oci_error_codes(&body).with_context(|| format!("{url} ({got})"))
}

/// A response read by [`raw_request`].
#[derive(Debug)]
pub struct RawResponse {
    pub status: u16,
    /// Header names lowercased.
    pub headers: Vec<(String, String)>,
    pub body: Vec<u8>,
}

impl RawResponse {
    /// The first header with this (lowercase) name.
    pub fn header(&self, name: &str) -> Option<&str> {
        self.headers.iter().find(|(n, _)| n == name).map(|(_, v)| v.as_str())
    }
}

/// Sends `METHOD TARGET HTTP/1.1` exactly as given to `host` (`ip:port`), with `Connection: close`,
/// and reads the whole response (at most 10 s).
pub async fn raw_request(host: &str, method: &str, target: &str, headers: &[(&str, &str)]) -> Result<RawResponse> {
    let exchange = async {
        let mut stream = tokio::net::TcpStream::connect(host).await?;
        let mut request = format!("{method} {target} HTTP/1.1\r\nHost: {host}\r\nConnection: close\r\n");
        for (name, value) in headers {
            request.push_str(&format!("{name}: {value}\r\n"));
        }
        request.push_str("\r\n");
        stream.write_all(request.as_bytes()).await?;
        let mut data = Vec::new();
        stream.read_to_end(&mut data).await?;
        anyhow::Ok(data)
    };
    let data = tokio::time::timeout(Duration::from_secs(10), exchange)
        .await
        .with_context(|| format!("{method} {target}: no complete response within 10 s"))??;
    parse_response(&data).with_context(|| format!("{method} {target}"))
}

fn parse_response(data: &[u8]) -> Result<RawResponse> {
    let split = data.windows(4).position(|w| w == b"\r\n\r\n").context("no end of headers")?;
    let head = String::from_utf8_lossy(&data[..split]);
    let mut lines = head.split("\r\n");
    let status_line = lines.next().unwrap_or_default();
    let status = status_line
        .split_whitespace()
        .nth(1)
        .and_then(|s| s.parse().ok())
        .with_context(|| format!("bad status line {status_line:?}"))?;
    let headers: Vec<(String, String)> = lines
        .filter_map(|l| l.split_once(':'))
        .map(|(n, v)| (n.trim().to_ascii_lowercase(), v.trim().to_string()))
        .collect();
    let mut body = data[split + 4..].to_vec();
    let chunked = headers.iter().any(|(n, v)| n == "transfer-encoding" && v.eq_ignore_ascii_case("chunked"));
    if chunked {
        body = dechunk(&body)?;
    }
    Ok(RawResponse { status, headers, body })
}

fn dechunk(mut data: &[u8]) -> Result<Vec<u8>> {
    let mut out = Vec::new();
    loop {
        let line_end = data.windows(2).position(|w| w == b"\r\n").context("truncated chunk size")?;
        let size_text = String::from_utf8_lossy(&data[..line_end]);
        let size = usize::from_str_radix(size_text.split(';').next().unwrap_or("").trim(), 16)
            .with_context(|| format!("bad chunk size {size_text:?}"))?;
        data = &data[line_end + 2..];
        if size == 0 {
            return Ok(out);
        }
        if data.len() < size + 2 {
            bail!("truncated chunk");
        }
        out.extend_from_slice(&data[..size]);
        data = &data[size + 2..];
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_chunked_and_plain_responses() -> Result<()> {
        let plain = parse_response(b"HTTP/1.1 405 Method Not Allowed\r\nContent-Length: 2\r\n\r\nok")?;
        assert_eq!((plain.status, plain.body.as_slice()), (405, &b"ok"[..]));
        let chunked =
            parse_response(b"HTTP/1.1 400 Bad\r\nTransfer-Encoding: chunked\r\n\r\n3\r\nabc\r\n2\r\nde\r\n0\r\n\r\n")?;
        assert_eq!(chunked.body, b"abcde");
        assert_eq!(chunked.header("transfer-encoding"), Some("chunked"));
        assert_eq!(oci_error_codes(br#"{"errors":[{"code":"NAME_INVALID","message":"x"}]}"#)?, ["NAME_INVALID"]);
        assert!(oci_error_codes(br#"{"errors":[]}"#).is_err());
        Ok(())
    }
}

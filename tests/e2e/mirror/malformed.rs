//! Requests the mirror must refuse, each with the right status and an OCI error body.

use super::*;

/// One request the mirror must refuse.
struct Case {
    method: &'static str,
    target: String,
    headers: Vec<(&'static str, &'static str)>,
    statuses: &'static [u16],
    code: Option<&'static str>,
}

fn case(method: &'static str, target: impl Into<String>, statuses: &'static [u16]) -> Case {
    Case { method, target: target.into(), headers: Vec::new(), statuses, code: None }
}

impl Case {
    fn header(mut self, name: &'static str, value: &'static str) -> Self {
        self.headers.push((name, value));
        self
    }

    fn code(mut self, code: &'static str) -> Self {
        self.code = Some(code);
        self
    }

    /// Sends the request and judges the answer.
    async fn check(&self, host: &str) -> Result<(), String> {
        let response =
            raw_request(host, self.method, &self.target, &self.headers).await.map_err(|e| format!("{e:#}"))?;
        let body = String::from_utf8_lossy(&response.body).into_owned();
        let got = format!("got {} {body:?}", response.status);
        if !self.statuses.contains(&response.status) {
            return Err(format!("want status {:?}; {got}", self.statuses));
        }
        let codes = oci_error_codes(&response.body).map_err(|e| format!("{e:#}; {got}"))?;
        if let Some(code) = self.code {
            if !codes.iter().any(|c| c == code) {
                return Err(format!("want code {code}; {got}"));
            }
        }
        if body.contains("root:") {
            return Err(format!("leaks /etc/passwd; {got}"));
        }
        Ok(())
    }
}

/// g. Malformed requests get the right status and an OCI error body, and touch no file.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn malformed_requests_get_oci_errors() -> Result<()> {
    require_tools();
    let registry = Registry::start().await?;
    let image = Image::build(70, &[MB])?;
    image.push(&registry, "e2e/strict", "v1").await?;
    let daemon = Daemon::start(DaemonConfig::for_registry(&registry)).await?;
    let host = daemon.mirror_host();
    let blob = &image.layers[0];
    let blob_path = format!("/v2/e2e/strict/blobs/{}", blob.digest);
    let hex = blob.hex();

    let cases = [
        case("GET", "/v2/UPPER/manifests/x", &[400]).code("NAME_INVALID"),
        case("GET", "/v2/a/blobs/sha256:xyz", &[400]).code("DIGEST_INVALID"),
        case("GET", format!("/v2/../../etc/passwd/blobs/sha256:{hex}"), &[400, 404]),
        case("GET", format!("/v2/%2e%2e/%2e%2e/etc/passwd/blobs/sha256:{hex}"), &[400, 404]),
        case("GET", format!("/v2/e2e/strict/blobs/sha256:{hex}%2f..%2f..%2fetc%2fpasswd"), &[400, 404]),
        case("GET", "/v2/e2e/strict/manifests/..%2f..%2fetc%2fpasswd", &[400, 404]),
        case("GET", "/v2/e2e/strict/manifests/v1?ns=unknown.example:5000", &[400]),
        case("GET", format!("{blob_path}?ns=unknown.example"), &[400]),
        case("GET", &blob_path, &[400]).header("Range", "bytes=abc"),
        case("GET", &blob_path, &[416]).header("Range", "bytes=999999999-").code("RANGE_NOT_SATISFIABLE"),
        case("PUT", "/v2/e2e/strict/manifests/v2", &[405]).header("Content-Length", "0"),
        case("POST", "/v2/e2e/strict/blobs/uploads/", &[405]).header("Content-Length", "0"),
        case("PATCH", "/v2/e2e/strict/blobs/uploads/x", &[405]).header("Content-Length", "0"),
        case("DELETE", &blob_path, &[405]),
        case("DELETE", "/v2/e2e/strict/manifests/v1", &[405]),
    ];
    let mut failures = Vec::new();
    for case in &cases {
        if let Err(why) = case.check(&host).await {
            failures.push(format!("{} {} {:?}: {why}", case.method, case.target, case.headers));
        }
    }
    // A valid range is honoured, so the range cases above failed for the right reason.
    let ranged = raw_request(&host, "GET", &blob_path, &[("Range", "bytes=100-199")]).await?;
    let original = std::fs::read(image.blob_path(blob))?;
    let content_range = format!("bytes 100-199/{}", blob.size);
    if ranged.status != 206 || ranged.body != original[100..200] {
        failures.push(format!("Range bytes=100-199: {} with {} bytes", ranged.status, ranged.body.len()));
    } else if ranged.header("content-range") != Some(content_range.as_str()) {
        failures.push(format!("Content-Range {:?}, want {content_range:?}", ranged.header("content-range")));
    }
    ensure!(failures.is_empty(), "{} of {} cases failed:\n{}", failures.len(), cases.len() + 1, failures.join("\n"));
    Ok(())
}

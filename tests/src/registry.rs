//! The origin: the real CNCF distribution registry (`docker-registry serve CONFIG.yml`) on a free
//! loopback port, with storage and logs in a temp dir, optional htpasswd basic auth and optional
//! TLS (a certificate the test made, e.g. from a private CA).
//!
//! Its access log (Apache combined format, on stdout) is how tests count blob downloads.

use std::fmt::Write as _;
use std::path::PathBuf;
use std::process::{Child, Stdio};
use std::time::Duration;

use anyhow::{bail, Context, Result};
use tempfile::TempDir;

use crate::image::{Blob, Image};
use crate::util::{daemon_command, free_port, kill_child, log_file, tail, wait_until};

/// A running (or stopped) `docker-registry`.
pub struct Registry {
    dir: TempDir,
    port: u16,
    auth: Option<(String, String)>,
    /// Serves HTTPS (`http.tls` in its config).
    tls: bool,
    child: Option<Child>,
}

/// One parsed access-log line.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct AccessLogLine {
    pub method: String,
    /// Path including any query string.
    pub path: String,
    pub status: u16,
    /// Response body bytes (0 when the log shows `-`).
    pub bytes: u64,
    /// The client's User-Agent.
    pub user_agent: String,
}

impl AccessLogLine {
    /// Parses `IP - USER [DATE] "METHOD PATH PROTO" STATUS BYTES "REFERER" "UA"`.
    pub fn parse(line: &str) -> Option<Self> {
        let start = line.find('"')? + 1;
        let len = line[start..].find('"')?;
        let mut request = line[start..start + len].split(' ');
        let method = request.next()?.to_string();
        let path = request.next()?.to_string();
        let rest: Vec<&str> = line[start + len + 1..].split('"').collect();
        let mut numbers = rest.first()?.split_whitespace();
        let status = numbers.next()?.parse().ok()?;
        let bytes = numbers.next()?.parse().unwrap_or(0);
        let user_agent = rest.get(3).copied().unwrap_or_default().to_string();
        Some(Self { method, path, status, bytes, user_agent })
    }

    /// The digest if this is a request for `/v2/<name>/blobs/<digest>`.
    pub fn blob_digest(&self) -> Option<&str> {
        let path = self.path.split('?').next()?;
        let (_, digest) = path.strip_prefix("/v2/")?.rsplit_once("/blobs/")?;
        digest.starts_with("sha256:").then_some(digest)
    }
}

impl Registry {
    /// Starts a registry without authentication.
    pub async fn start() -> Result<Self> {
        Self::launch(None).await
    }

    /// Starts a registry that requires HTTP basic auth (htpasswd, bcrypt) for `user`/`password`.
    pub async fn start_with_auth(user: &str, password: &str) -> Result<Self> {
        Self::launch(Some((user.to_string(), password.to_string()))).await
    }

    /// Starts a registry without authentication that serves HTTPS with this certificate chain
    /// and key (PEM files).
    pub async fn start_tls(certificate: &std::path::Path, key: &std::path::Path) -> Result<Self> {
        Self::launch_with(None, Some((certificate, key))).await
    }

    async fn launch(auth: Option<(String, String)>) -> Result<Self> {
        Self::launch_with(auth, None).await
    }

    async fn launch_with(
        auth: Option<(String, String)>,
        tls: Option<(&std::path::Path, &std::path::Path)>,
    ) -> Result<Self> {
        let dir = tempfile::Builder::new().prefix("shoal-registry-").tempdir()?;
        let port = free_port();
        let storage = dir.path().join("storage");
        std::fs::create_dir_all(&storage)?;
        let mut config = format!(
            "version: 0.1\nlog:\n  level: info\n  formatter: text\n  accesslog:\n    disabled: false\n\
             storage:\n  filesystem:\n    rootdirectory: {}\n  delete:\n    enabled: true\n\
             http:\n  addr: 127.0.0.1:{port}\n  secret: shoal-e2e-secret\n",
            storage.display()
        );
        // Under `http:`, which the text above ends with.
        if let Some((certificate, key)) = tls {
            let _ = write!(config, "  tls:\n    certificate: {}\n    key: {}\n", certificate.display(), key.display());
        }
        if let Some((user, password)) = &auth {
            let hash = bcrypt::hash(password, 5).context("bcrypt")?;
            let htpasswd = dir.path().join("htpasswd");
            std::fs::write(&htpasswd, format!("{user}:{hash}\n"))?;
            let _ = write!(config, "auth:\n  htpasswd:\n    realm: shoal-e2e\n    path: {}\n", htpasswd.display());
        }
        std::fs::write(dir.path().join("config.yml"), config)?;
        let mut registry = Self { dir, port, auth, tls: tls.is_some(), child: None };
        registry.restart().await?;
        Ok(registry)
    }

    /// `127.0.0.1:PORT`.
    pub fn host(&self) -> String {
        format!("127.0.0.1:{}", self.port)
    }

    /// `http://127.0.0.1:PORT` (`https://` with TLS).
    pub fn url(&self) -> String {
        format!("{}://{}", if self.tls { "https" } else { "http" }, self.host())
    }

    /// The credentials it requires, if any.
    pub fn credentials(&self) -> Option<(&str, &str)> {
        self.auth.as_ref().map(|(u, p)| (u.as_str(), p.as_str()))
    }

    /// `USER:PASSWORD` for skopeo's `--creds` flags, if auth is on.
    pub fn creds_arg(&self) -> Option<String> {
        self.credentials().map(|(u, p)| format!("{u}:{p}"))
    }

    /// Path of the access log (stdout of every run, appended across restarts).
    pub fn access_log_path(&self) -> PathBuf {
        self.dir.path().join("access.log")
    }

    /// Path of the application log (stderr).
    pub fn app_log_path(&self) -> PathBuf {
        self.dir.path().join("registry.log")
    }

    /// Kills the registry (origin down). The port stays reserved for [`Registry::restart`].
    pub fn stop(&mut self) {
        if let Some(mut child) = self.child.take() {
            kill_child(&mut child);
        }
    }

    /// Whether the process is running.
    pub fn is_running(&mut self) -> bool {
        matches!(self.child.as_mut().map(|c| c.try_wait()), Some(Ok(None)))
    }

    /// (Re)starts the registry on the same port with the same storage, and waits until `/v2/`
    /// answers (at most 15 s).
    pub async fn restart(&mut self) -> Result<()> {
        self.stop();
        let child = daemon_command("docker-registry")
            .arg("serve")
            .arg(self.dir.path().join("config.yml"))
            .stdin(Stdio::null())
            .stdout(log_file(&self.access_log_path())?)
            .stderr(log_file(&self.app_log_path())?)
            .spawn()
            .context("spawn docker-registry (is the docker-registry package installed?)")?;
        self.child = Some(child);
        // Only to see it up: its certificate is the test's to check.
        let client = reqwest::Client::builder().danger_accept_invalid_certs(self.tls).build()?;
        let url = format!("{}/v2/", self.url());
        let up = wait_until(Duration::from_secs(15), Duration::from_millis(50), || async {
            match client.get(&url).send().await {
                Ok(resp) => matches!(resp.status().as_u16(), 200 | 401),
                Err(_) => false,
            }
        })
        .await;
        if !up || !self.is_running() {
            let log = tail(&self.app_log_path(), 4000);
            self.stop();
            bail!("docker-registry did not come up on {}:\n{log}", self.host());
        }
        Ok(())
    }

    /// Every access-log line so far.
    pub fn access_log(&self) -> Vec<AccessLogLine> {
        std::fs::read_to_string(self.access_log_path())
            .unwrap_or_default()
            .lines()
            .filter_map(AccessLogLine::parse)
            .collect()
    }

    /// The number of access-log lines so far, to count only what comes after.
    pub fn mark(&self) -> usize {
        self.access_log().len()
    }

    /// Body bytes the origin sent for this blob in `GET`s logged after `mark`.
    pub fn blob_bytes_served_since(&self, digest: &str, mark: usize) -> u64 {
        self.access_log()
            .into_iter()
            .skip(mark)
            .filter(|l| l.method == "GET" && matches!(l.status, 200 | 206) && l.blob_digest() == Some(digest))
            .map(|l| l.bytes)
            .sum()
    }

    /// Body bytes the origin sent for every blob of `image` (config and layers) in `GET`s logged
    /// after `mark`, read once the access log stops growing (it lags the responses a little; at
    /// most 3 s).
    pub async fn image_bytes_served_since(&self, image: &Image, mark: usize) -> u64 {
        let total = || image.blobs().iter().map(|b| self.blob_bytes_served_since(&b.digest, mark)).sum::<u64>();
        let mut last = total();
        wait_until(Duration::from_secs(3), Duration::from_millis(300), || {
            let now = total();
            let stable = now == last;
            last = now;
            async move { stable }
        })
        .await;
        total()
    }

    /// Successful `GET /v2/<name>/blobs/<digest>` responses so far, for any repository
    /// (status 200 or 206).
    pub fn blob_gets(&self, digest: &str) -> Vec<AccessLogLine> {
        self.access_log()
            .into_iter()
            .filter(|l| l.method == "GET" && matches!(l.status, 200 | 206))
            .filter(|l| l.blob_digest() == Some(digest))
            .collect()
    }

    /// How many times the origin served `GET` for this blob (200 or 206).
    pub fn blob_get_count(&self, digest: &str) -> usize {
        self.blob_gets(digest).len()
    }

    /// Body bytes the origin sent for this blob, over all `GET`s.
    pub fn blob_bytes_served(&self, digest: &str) -> u64 {
        self.blob_gets(digest).iter().map(|l| l.bytes).sum()
    }

    /// Checks that the origin sent this blob's bytes exactly once in all (one `GET`, or ranged
    /// `GET`s that add up to its size). Waits up to 3 s for the access log to catch up.
    pub async fn expect_served_once(&self, blob: &Blob) -> Result<()> {
        wait_until(Duration::from_secs(3), Duration::from_millis(50), || async {
            self.blob_bytes_served(&blob.digest) >= blob.size
        })
        .await;
        let served = self.blob_bytes_served(&blob.digest);
        if served != blob.size {
            bail!(
                "origin served {served} bytes of {} ({} bytes) in {} GETs; blob requests:\n{}",
                blob.digest,
                blob.size,
                self.blob_get_count(&blob.digest),
                self.blob_summary()
            );
        }
        Ok(())
    }

    /// Blob `GET`s the origin got straight from a real client (by User-Agent: skopeo, podman's
    /// containers/image, containerd) rather than from a mirror.
    pub fn client_blob_gets(&self) -> Vec<AccessLogLine> {
        const CLIENTS: &[&str] = &["skopeo/", "containers/", "containerd/", "libpod/", "podman/"];
        self.access_log()
            .into_iter()
            .filter(|l| l.method == "GET" && l.blob_digest().is_some())
            .filter(|l| CLIENTS.iter().any(|c| l.user_agent.starts_with(c)))
            .collect()
    }

    /// A short summary of blob traffic, for assertion messages.
    pub fn blob_summary(&self) -> String {
        let mut out = String::new();
        for l in self.access_log().iter().filter(|l| l.blob_digest().is_some()) {
            let _ = writeln!(out, "{} {} -> {} ({} B) {:?}", l.method, l.path, l.status, l.bytes, l.user_agent);
        }
        out
    }
}

impl Drop for Registry {
    fn drop(&mut self) {
        self.stop();
    }
}

#[cfg(test)]
mod tests {
    use super::AccessLogLine;

    #[test]
    fn parses_combined_log_lines() {
        let line = r#"127.0.0.1 - - [22/Nov/2025:14:35:00 +0000] "GET /v2/lib/app/blobs/sha256:abcd?ns=x HTTP/1.1" 200 1048576 "" "skopeo/1.9.3""#;
        let parsed = AccessLogLine::parse(line).expect("parse");
        assert_eq!(parsed.method, "GET");
        assert_eq!(parsed.status, 200);
        assert_eq!(parsed.bytes, 1_048_576);
        assert_eq!(parsed.blob_digest(), Some("sha256:abcd"));
        assert_eq!(parsed.user_agent, "skopeo/1.9.3");
        let head = r#"127.0.0.1 - bob [22/Nov/2025:14:35:00 +0000] "HEAD /v2/a/manifests/v1 HTTP/1.1" 200 - "" "x""#;
        let parsed = AccessLogLine::parse(head).expect("parse");
        assert_eq!(parsed.bytes, 0);
        assert_eq!(parsed.blob_digest(), None);
    }
}

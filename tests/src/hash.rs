//! SHA-256 of large data through `openssl dgst`.
//!
//! Test builds are unoptimized: there the sha2 crate hashes at ~10 MB/s, while `openssl` does
//! ~280 MB/s on this machine (it has no SHA-NI). Tests hash gigabytes, so they use `openssl`; small
//! documents (manifests, configs) are hashed in process with [`crate::sha256_hex`].

use std::path::Path;
use std::process::Stdio;

use anyhow::{bail, Context, Result};
use tokio::io::AsyncWriteExt;

/// Parses `openssl dgst -sha256 -r` output (`<hex> *<name>`) into `sha256:<hex>`.
fn parse(output: &[u8]) -> Result<String> {
    let text = String::from_utf8_lossy(output);
    let hex = text.split_whitespace().next().unwrap_or_default();
    if hex.len() != 64 || !hex.bytes().all(|b| b.is_ascii_hexdigit()) {
        bail!("unexpected openssl dgst output: {text:?}");
    }
    Ok(format!("sha256:{}", hex.to_ascii_lowercase()))
}

/// `sha256:<hex>` of a file's contents.
pub fn sha256_file(path: &Path) -> Result<String> {
    if !path.is_file() {
        bail!("{} does not exist", path.display());
    }
    let out = std::process::Command::new("openssl")
        .args(["dgst", "-sha256", "-r"])
        .arg(path)
        .stdin(Stdio::null())
        .output()
        .context("run openssl dgst (is openssl installed?)")?;
    if !out.status.success() {
        bail!("openssl dgst {}: {}", path.display(), String::from_utf8_lossy(&out.stderr));
    }
    parse(&out.stdout)
}

/// An incremental SHA-256 fed through an `openssl dgst` child process.
pub struct StreamHasher {
    child: tokio::process::Child,
    stdin: tokio::process::ChildStdin,
    bytes: u64,
}

impl StreamHasher {
    /// Starts the hasher.
    pub fn new() -> Result<Self> {
        let mut child = tokio::process::Command::new("openssl")
            .args(["dgst", "-sha256", "-r"])
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .kill_on_drop(true)
            .spawn()
            .context("spawn openssl dgst (is openssl installed?)")?;
        let stdin = child.stdin.take().context("openssl stdin")?;
        Ok(Self { child, stdin, bytes: 0 })
    }

    /// Hashes more data.
    pub async fn update(&mut self, data: &[u8]) -> Result<()> {
        self.stdin.write_all(data).await?;
        self.bytes += data.len() as u64;
        Ok(())
    }

    /// Bytes hashed so far.
    pub fn len(&self) -> u64 {
        self.bytes
    }

    /// Whether nothing was hashed yet.
    pub fn is_empty(&self) -> bool {
        self.bytes == 0
    }

    /// `sha256:<hex>` of everything hashed.
    pub async fn finish(self) -> Result<String> {
        let Self { child, mut stdin, .. } = self;
        stdin.shutdown().await?;
        drop(stdin);
        let out = child.wait_with_output().await?;
        if !out.status.success() {
            bail!("openssl dgst: {}", String::from_utf8_lossy(&out.stderr));
        }
        parse(&out.stdout)
    }
}

/// Reads a whole response body, returning `(sha256:<hex>, length)`; the body is never held in
/// memory.
pub async fn sha256_body(mut response: reqwest::Response) -> Result<(String, u64)> {
    let mut hasher = StreamHasher::new()?;
    while let Some(chunk) = response.chunk().await? {
        hasher.update(&chunk).await?;
    }
    let len = hasher.len();
    Ok((hasher.finish().await?, len))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn matches_in_process_sha256() -> Result<()> {
        let data = b"hello shoal".repeat(100_000);
        let mut hasher = StreamHasher::new()?;
        hasher.update(&data[..5000]).await?;
        hasher.update(&data[5000..]).await?;
        assert_eq!(hasher.finish().await?, crate::sha256_hex(&data));
        let file = tempfile::NamedTempFile::new()?;
        std::fs::write(file.path(), &data)?;
        assert_eq!(sha256_file(file.path())?, crate::sha256_hex(&data));
        Ok(())
    }
}

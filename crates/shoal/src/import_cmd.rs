//! `shoal import FILE|-`: an image archive (`docker save`, `skopeo copy … docker-archive:` or
//! `oci-archive:`, `shoal fetch -o FILE.tar`; plain or gzip) into the running daemon's cache,
//! over its admin API, so the archive's tags are pullable through the mirror with the origin
//! unreachable.
//!
//! The archive is read twice: once to check all of it (`import_archive::scan`,
//! `import_layout::plan`), and only if that passes, once more to stream the blobs the images
//! need to `POST /import` (framed as `shoal_daemon::api::wire` says). A bad archive never
//! reaches the daemon; the daemon checks everything again and commits all or nothing. Standard
//! input is first copied to a temporary file (it cannot be read twice).

use std::collections::HashMap;
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use anyhow::{bail, Context, Result};
use clap::Args;
use shoal_core::Digest;
use shoal_daemon::api::wire::{ImportHeader, ImportReport};

use crate::import_archive;
use crate::import_layout::{self, Upload};

/// Chunks of blob bytes queued between the archive reader and the upload.
const QUEUE: usize = 8;

/// Flags of `shoal import`.
#[derive(Args, Debug)]
pub struct ImportArgs {
    /// The archive (a tar, or a gzip of one), or `-` for standard input.
    file: String,
    /// The daemon's admin address.
    #[arg(long, default_value = "127.0.0.1:65003", value_name = "ADDR")]
    admin: String,
    /// Name the archive's (only) image REGISTRY/REPOSITORY:TAG instead of the names it carries
    /// (needed when it carries none). Repeatable.
    #[arg(long = "tag", value_name = "REF")]
    tags: Vec<String>,
    /// Never evict the image's blobs (until `shoal cache pin --unpin` or the end of --ttl).
    #[arg(long)]
    pin: bool,
    /// Forget the image and evict its blobs this long after the import (e.g. `7d`, `12h`).
    #[arg(long, value_name = "DURATION")]
    ttl: Option<String>,
    /// Serve the image without the origin only to clients the ordinary offline rule allows
    /// (a credential the origin accepted within offline_grace), not to anyone who can reach
    /// the mirror.
    #[arg(long)]
    restricted: bool,
}

/// `shoal import`.
pub fn run(args: ImportArgs) -> Result<()> {
    let started = Instant::now();
    let (path, _spool) = archive_path(&args.file)?;
    let scan = import_archive::scan(&path).with_context(|| format!("{}: bad archive", args.file))?;
    let mut upload = import_layout::plan(&scan, &args.tags).with_context(|| format!("{}: bad archive", args.file))?;
    upload.header.pin = args.pin;
    upload.header.restricted = args.restricted;
    upload.header.ttl_secs = args
        .ttl
        .as_deref()
        .map(|t| shoal_core::duration::parse_duration(t).map(|d| d.as_secs().max(1)))
        .transpose()
        .map_err(|e| anyhow::anyhow!("--ttl: {e}"))?;
    let bytes: u64 = upload.header.blobs.iter().map(|b| b.size).sum();
    let rt = tokio::runtime::Builder::new_multi_thread().worker_threads(1).enable_all().build()?;
    let report = rt.block_on(send(&args.admin, path, upload))?;
    for image in &report.images {
        println!("imported {image}");
    }
    println!(
        "{} blob(s) written ({}), {} already held; {} of blobs in the archive checked in {:.2} s",
        report.blobs_written,
        shoal_core::size::format_size(report.bytes_written),
        report.blobs_held,
        shoal_core::size::format_size(bytes),
        started.elapsed().as_secs_f64()
    );
    Ok(())
}

/// The archive's path; for `-`, standard input copied to a temporary file (kept while the
/// returned guard lives).
fn archive_path(file: &str) -> Result<(PathBuf, Option<tempfile::NamedTempFile>)> {
    if file != "-" {
        return Ok((PathBuf::from(file), None));
    }
    let mut spool = tempfile::NamedTempFile::new().context("a temporary file for standard input")?;
    std::io::copy(&mut std::io::stdin().lock(), spool.as_file_mut()).context("reading standard input")?;
    Ok((spool.path().to_owned(), Some(spool)))
}

/// Streams the upload to `POST /import` and returns the daemon's report.
async fn send(admin: &str, archive: PathBuf, upload: Upload) -> Result<ImportReport> {
    let Upload { header, paths } = upload;
    let head = serde_json::to_vec(&header)?;
    let (tx, rx) = tokio::sync::mpsc::channel::<std::io::Result<bytes::Bytes>>(QUEUE);
    let mut first = (head.len() as u32).to_be_bytes().to_vec();
    first.extend_from_slice(&head);
    tx.send(Ok(first.into())).await.map_err(|_| anyhow::anyhow!("upload closed"))?;
    let reader = tokio::task::spawn_blocking(move || stream_blobs(&archive, &header, &paths, &tx));
    let body = reqwest::Body::wrap_stream(tokio_stream::wrappers::ReceiverStream::new(rx));
    let client = reqwest::Client::builder().connect_timeout(Duration::from_secs(10)).build()?;
    let resp = client
        .post(format!("http://{admin}/import"))
        .header("content-type", "application/octet-stream")
        .body(body)
        .send()
        .await;
    let read = reader.await?;
    let resp = resp.with_context(|| format!("daemon admin at {admin} unreachable or the upload broke off"))?;
    let status = resp.status();
    let text = resp.text().await.unwrap_or_default();
    if !status.is_success() {
        bail!("the daemon refused the import ({status}): {}", error_message(&text));
    }
    read?;
    serde_json::from_str(&text).with_context(|| format!("unexpected answer from the daemon: {text}"))
}

/// The message of an OCI-style error body, or the body itself.
pub fn error_message(body: &str) -> String {
    serde_json::from_str::<serde_json::Value>(body)
        .ok()
        .and_then(|v| v["errors"][0]["message"].as_str().map(str::to_owned))
        .unwrap_or_else(|| body.trim().to_owned())
}

/// Reads the archive again and sends the bytes of every blob of `header`, in its order.
fn stream_blobs(
    archive: &Path,
    header: &ImportHeader,
    paths: &HashMap<Digest, String>,
    tx: &tokio::sync::mpsc::Sender<std::io::Result<bytes::Bytes>>,
) -> Result<()> {
    let wanted: HashMap<&str, Digest> = paths.iter().map(|(d, p)| (p.as_str(), *d)).collect();
    let mut next = 0;
    import_archive::walk(import_archive::open(archive)?, &mut Vec::new(), |path, data, _| {
        let Some(digest) = wanted.get(path) else { return Ok(()) };
        if header.blobs.get(next).is_none_or(|b| b.digest != *digest) {
            return Ok(());
        }
        next += 1;
        let mut buf = vec![0u8; 1 << 20];
        loop {
            let n = data.read(&mut buf)?;
            if n == 0 {
                return Ok(());
            }
            if tx.blocking_send(Ok(bytes::Bytes::copy_from_slice(&buf[..n]))).is_err() {
                bail!("the daemon closed the upload");
            }
        }
    })?;
    if next != header.blobs.len() {
        bail!("the archive changed while it was imported");
    }
    Ok(())
}

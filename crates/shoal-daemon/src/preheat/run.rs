//! One preheat job on this daemon: resolve the image (an index to the platform manifests asked
//! for) and bring every blob (configs and layers) into the cache.
//!
//! It asks this daemon's own mirror, in process (the router, no socket), exactly as a client
//! would: so the configured origin and its credentials, the access check, the manifest cache
//! and the blob download (one task per blob, registered with the scheduler, so this daemon
//! becomes a parent) are the mirror's, and nothing here reimplements them. A blob already
//! complete in the cache is not read at all. Every count and size from a manifest is bounded
//! before use.

use std::collections::HashSet;
use std::sync::{Arc, Mutex};

use axum::body::Body;
use axum::Router;
use futures::StreamExt;
use http::{Request, StatusCode};
use shoal_core::preheat::{ImageRef, Platform, Progress};
use shoal_core::{Digest, Reference};
use tower::ServiceExt;

use crate::download::tasks::Tasks;

/// Largest manifest read (the mirror's own bound).
const MAX_MANIFEST: usize = 4 << 20;
/// Platform manifests one image may name.
pub const MAX_MANIFESTS: usize = 64;
/// Layers one manifest may name.
pub const MAX_LAYERS: usize = 1024;
/// Bytes one image may add up to (every platform asked for).
pub const MAX_IMAGE_BYTES: u64 = 1 << 40;
/// Blobs fetched at once (as a client pulling layers in parallel).
const PARALLEL_BLOBS: usize = 4;

/// Why a job failed.
#[derive(Debug, thiserror::Error)]
#[error("{message}")]
pub struct JobError {
    /// What went wrong.
    pub message: String,
    /// The image itself is at fault (unknown, refused, malformed, too large): another daemon
    /// would fail the same way.
    pub permanent: bool,
}

impl JobError {
    fn permanent(message: impl Into<String>) -> Self {
        Self { message: message.into(), permanent: true }
    }

    fn transient(message: impl Into<String>) -> Self {
        Self { message: message.into(), permanent: false }
    }

    /// An answer of the mirror: a 4xx is about the image, anything else about this daemon or
    /// the origin's health.
    fn status(what: &str, status: StatusCode, body: &[u8]) -> Self {
        let text: String = String::from_utf8_lossy(body).chars().take(300).collect();
        let message = format!("{what}: {status}: {text}");
        Self { message, permanent: status.is_client_error() && status != StatusCode::TOO_MANY_REQUESTS }
    }
}

/// What a job needs of the daemon.
#[derive(Clone)]
pub struct Ctx {
    /// The mirror's router.
    pub mirror: Router,
    /// The blob tasks, to see what is complete already.
    pub tasks: Arc<Tasks>,
}

/// Runs one job, updating `progress` as blobs complete.
pub async fn preheat(
    ctx: &Ctx,
    image: &ImageRef,
    platforms: &[Platform],
    progress: &Mutex<Progress>,
) -> Result<Progress, JobError> {
    let blobs = resolve(ctx, image, platforms).await?;
    {
        let mut p = progress.lock().unwrap_or_else(|p| p.into_inner());
        p.blobs_total = blobs.len() as u32;
        p.bytes_total = blobs.iter().map(|b| b.1).sum();
    }
    let mut fetches = futures::stream::iter(blobs.into_iter().map(|(digest, size)| async move {
        let fetched = blob(ctx, image, digest, size).await?;
        let mut p = progress.lock().unwrap_or_else(|p| p.into_inner());
        p.blobs_done += 1;
        p.bytes_done += size;
        p.bytes_fetched += fetched;
        Ok::<_, JobError>(())
    }))
    .buffer_unordered(PARALLEL_BLOBS);
    while let Some(r) = fetches.next().await {
        r?;
    }
    drop(fetches);
    Ok(*progress.lock().unwrap_or_else(|p| p.into_inner()))
}

/// Every blob of the image's platforms asked for, without duplicates, bounded.
async fn resolve(ctx: &Ctx, image: &ImageRef, platforms: &[Platform]) -> Result<Vec<(Digest, u64)>, JobError> {
    let top = manifest(ctx, image, &image.reference).await?;
    let manifests = match top.get("manifests") {
        Some(list) => pick(list, platforms)?,
        None => {
            if !platforms.is_empty() {
                tracing::debug!(%image, "a single-platform image: the platforms asked for are not checked");
            }
            vec![Entry::Manifest(top)]
        }
    };
    let mut seen = HashSet::new();
    let mut blobs = Vec::new();
    let mut total: u64 = 0;
    for m in manifests {
        let m = match m {
            Entry::Manifest(v) => v,
            Entry::Digest(d) => manifest(ctx, image, &Reference::Digest(d)).await?,
        };
        if m.get("manifests").is_some() {
            return Err(JobError::permanent("an index inside an index is not preheated"));
        }
        let layers = m.get("layers").and_then(|l| l.as_array()).map_or(&[][..], Vec::as_slice);
        if layers.len() > MAX_LAYERS {
            return Err(JobError::permanent(format!("{} layers in one manifest (at most {MAX_LAYERS})", layers.len())));
        }
        for d in std::iter::once(&m["config"]).chain(layers) {
            let (digest, size) = descriptor(d)?;
            total = total.saturating_add(size);
            if total > MAX_IMAGE_BYTES {
                return Err(JobError::permanent(format!("the image is over {MAX_IMAGE_BYTES} bytes")));
            }
            if seen.insert(digest) {
                blobs.push((digest, size));
            }
        }
    }
    Ok(blobs)
}

/// A manifest of an image, or the digest of one to fetch.
enum Entry {
    Manifest(serde_json::Value),
    Digest(Digest),
}

/// The entries of an index for `platforms` (none: every platform but `unknown`, which marks
/// attestations); one missing platform is an error.
fn pick(list: &serde_json::Value, platforms: &[Platform]) -> Result<Vec<Entry>, JobError> {
    let list = list.as_array().ok_or_else(|| JobError::permanent("index: `manifests` is not a list"))?;
    if list.len() > MAX_MANIFESTS {
        return Err(JobError::permanent(format!("{} manifests in the index (at most {MAX_MANIFESTS})", list.len())));
    }
    let platform = |e: &serde_json::Value| {
        let p = &e["platform"];
        (
            p["os"].as_str().unwrap_or("").to_owned(),
            p["architecture"].as_str().unwrap_or("").to_owned(),
            p["variant"].as_str().map(str::to_owned),
        )
    };
    let mut out = Vec::new();
    for want in platforms {
        let found = list.iter().find(|e| {
            let (os, arch, variant) = platform(e);
            want.matches(&os, &arch, variant.as_deref())
        });
        let e = found.ok_or_else(|| JobError::permanent(format!("the image has no manifest for {want}")))?;
        out.push(Entry::Digest(descriptor(e)?.0));
    }
    if platforms.is_empty() {
        for e in list.iter().filter(|e| platform(e).0 != "unknown") {
            out.push(Entry::Digest(descriptor(e)?.0));
        }
    }
    Ok(out)
}

/// The digest and size of a descriptor.
fn descriptor(d: &serde_json::Value) -> Result<(Digest, u64), JobError> {
    let digest = d["digest"].as_str().and_then(|s| s.parse::<Digest>().ok());
    let size = d["size"].as_u64();
    match (digest, size) {
        (Some(digest), Some(size)) => Ok((digest, size)),
        _ => Err(JobError::permanent(format!("a descriptor without a valid digest and size: {d}"))),
    }
}

/// `?ns=` for the image's registry.
fn ns(image: &ImageRef) -> String {
    image.registry.as_ref().map(|r| format!("?ns={r}")).unwrap_or_default()
}

/// A manifest through the mirror, parsed.
async fn manifest(ctx: &Ctx, image: &ImageRef, reference: &Reference) -> Result<serde_json::Value, JobError> {
    let uri = format!("/v2/{}/manifests/{reference}{}", image.name, ns(image));
    let mut req = Request::get(&uri);
    for t in shoal_core::media::MANIFEST_TYPES {
        req = req.header(http::header::ACCEPT, *t);
    }
    let req = req.body(Body::empty()).map_err(|e| JobError::permanent(format!("{uri}: {e}")))?;
    let resp = ctx.mirror.clone().oneshot(req).await.unwrap_or_else(|never| match never {});
    let status = resp.status();
    let body = axum::body::to_bytes(resp.into_body(), MAX_MANIFEST)
        .await
        .map_err(|e| JobError::transient(format!("manifest {reference}: {e}")))?;
    if status != StatusCode::OK {
        return Err(JobError::status(&format!("manifest {image}"), status, &body));
    }
    if let Reference::Digest(d) = reference {
        if Digest::of(&body) != *d {
            return Err(JobError::transient(format!("manifest {d} does not hash to its digest")));
        }
    }
    serde_json::from_slice(&body).map_err(|e| JobError::permanent(format!("manifest {reference} is not JSON: {e}")))
}

/// Brings one blob into the cache; returns the bytes that moved (0 when it was complete).
async fn blob(ctx: &Ctx, image: &ImageRef, digest: Digest, size: u64) -> Result<u64, JobError> {
    if ctx.tasks.complete_file(&digest).is_some() {
        return Ok(0);
    }
    let uri = format!("/v2/{}/blobs/{digest}{}", image.name, ns(image));
    let req = Request::get(&uri).body(Body::empty()).map_err(|e| JobError::permanent(format!("{uri}: {e}")))?;
    let resp = ctx.mirror.clone().oneshot(req).await.unwrap_or_else(|never| match never {});
    let status = resp.status();
    if status != StatusCode::OK {
        let body = axum::body::to_bytes(resp.into_body(), 64 << 10).await.unwrap_or_default();
        return Err(JobError::status(&format!("blob {digest}"), status, &body));
    }
    let mut body = resp.into_body().into_data_stream();
    let mut n: u64 = 0;
    while let Some(chunk) = body.next().await {
        let chunk = chunk.map_err(|e| JobError::transient(format!("blob {digest} cut short after {n} bytes: {e}")))?;
        n += chunk.len() as u64;
    }
    if n != size {
        return Err(JobError::permanent(format!("blob {digest}: {n} bytes, the manifest says {size}")));
    }
    // The last byte goes out once the blob is verified; its record may land a moment later.
    for _ in 0..50 {
        if ctx.tasks.complete_file(&digest).is_some() {
            return Ok(size);
        }
        tokio::time::sleep(std::time::Duration::from_millis(100)).await;
    }
    Err(JobError::transient(format!("blob {digest} was served but not cached (no room, or the store failed)")))
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn entry(os: &str, arch: &str, variant: Option<&str>, seed: &[u8]) -> serde_json::Value {
        let mut platform = json!({"os": os, "architecture": arch});
        if let Some(v) = variant {
            platform["variant"] = v.into();
        }
        json!({"mediaType": "application/vnd.oci.image.manifest.v1+json", "digest": Digest::of(seed).to_string(), "size": 500, "platform": platform})
    }

    fn digests(entries: Vec<Entry>) -> Vec<Digest> {
        entries
            .into_iter()
            .map(|e| match e {
                Entry::Digest(d) => d,
                Entry::Manifest(_) => panic!("an index gives digests"),
            })
            .collect()
    }

    #[test]
    fn an_index_gives_the_platforms_asked_for_or_every_real_one() {
        let index = json!([
            entry("linux", "amd64", None, b"amd64"),
            entry("linux", "arm64", Some("v8"), b"arm64"),
            entry("unknown", "unknown", None, b"attestation"),
        ]);
        assert_eq!(digests(pick(&index, &[]).unwrap()), [Digest::of(b"amd64"), Digest::of(b"arm64")]);
        let arm = [Platform::parse("linux/arm64").unwrap()];
        assert_eq!(digests(pick(&index, &arm).unwrap()), [Digest::of(b"arm64")]);
        let missing = [Platform::parse("linux/s390x").unwrap()];
        let e = pick(&index, &missing).err().unwrap();
        assert!(e.permanent && e.message.contains("linux/s390x"), "{e}");
        let many = serde_json::Value::Array(vec![entry("linux", "amd64", None, b"x"); MAX_MANIFESTS + 1]);
        assert!(pick(&many, &[]).err().unwrap().permanent);
    }

    #[test]
    fn descriptors_need_a_valid_digest_and_a_size() {
        let d = Digest::of(b"layer");
        assert_eq!(descriptor(&json!({"digest": d.to_string(), "size": 5})).unwrap(), (d, 5));
        assert!(descriptor(&json!({"digest": "sha256:zz", "size": 5})).is_err());
        assert!(descriptor(&json!({"digest": d.to_string(), "size": -1})).is_err());
        assert!(descriptor(&json!({"digest": d.to_string()})).is_err());
    }

    #[test]
    fn a_client_error_of_the_origin_is_about_the_image() {
        assert!(JobError::status("m", StatusCode::NOT_FOUND, b"").permanent);
        assert!(JobError::status("m", StatusCode::UNAUTHORIZED, b"").permanent);
        assert!(!JobError::status("m", StatusCode::TOO_MANY_REQUESTS, b"").permanent);
        assert!(!JobError::status("m", StatusCode::BAD_GATEWAY, b"").permanent);
    }
}

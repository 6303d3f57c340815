//! `shoal fetch REF`: download an image (`[registry/]name[:tag]`) or one blob (`name@sha256:…`)
//! through a daemon's mirror with a progress bar, checking every blob's sha256. With `-o DIR`
//! the image is written as a complete OCI image layout (`oci-layout`, `index.json`,
//! `blobs/sha256/…` with the manifests and the config) that skopeo, podman and `shoal import`
//! read; with `-o FILE.tar` as an OCI archive (the same layout in a tar).

use std::path::{Path, PathBuf};
use std::time::Instant;

use anyhow::{bail, ensure, Context, Result};
use clap::Args;
use futures::StreamExt;
use indicatif::{ProgressBar, ProgressStyle};
use sha2::{Digest as _, Sha256};
use shoal_core::Digest;
use shoal_daemon::api::manifest::{self as mf, Refs};

use shoal_core::media::MANIFEST_TYPES;

/// Flags of `shoal fetch`.
#[derive(Args, Debug)]
pub struct FetchArgs {
    /// `[registry/]name[:tag]` for an image, or `[registry/]name@sha256:<hex>` for one blob.
    reference: String,
    /// The daemon's mirror address.
    #[arg(long, default_value = "127.0.0.1:65001", value_name = "ADDR")]
    mirror: String,
    /// Write the image as an OCI image layout in DIR, or as an OCI archive if the name ends in
    /// `.tar`; default: download, verify and discard.
    #[arg(long, short, value_name = "DIR|FILE.tar")]
    output: Option<PathBuf>,
    /// For a multi-platform image: `OS/ARCH[/VARIANT]`, or `all` (default: this host's).
    #[arg(long, value_name = "OS/ARCH")]
    platform: Option<String>,
}

struct Target {
    ns: Option<String>,
    name: String,
    reference: String,
}

fn parse(reference: &str) -> Result<Target> {
    let (ns, rest) = match reference.split_once('/') {
        Some((first, rest)) if first.contains(['.', ':']) || first == "localhost" => (Some(first.to_owned()), rest),
        _ => (None, reference),
    };
    let (name, r) = if let Some((n, d)) = rest.split_once('@') {
        (n, d.to_owned())
    } else {
        match rest.rsplit_once(':') {
            Some((n, t)) => (n, t.to_owned()),
            None => (rest, "latest".to_owned()),
        }
    };
    shoal_core::RepoName::parse(name).with_context(|| format!("{name:?} is not a repository name"))?;
    Ok(Target { ns, name: name.to_owned(), reference: r })
}

/// `shoal fetch`.
pub fn run(args: FetchArgs) -> Result<()> {
    let target = parse(&args.reference)?;
    let rt = tokio::runtime::Builder::new_current_thread().enable_all().build()?;
    rt.block_on(fetch(&args, &target))
}

/// A manifest as fetched: digest, media type, exact bytes.
struct Manifest {
    digest: Digest,
    media_type: String,
    body: Vec<u8>,
}

/// What an image reference resolved to: the manifest written as the image (an index with
/// `--platform all`, else one platform's manifest), every manifest under it, and the blobs.
struct Resolved {
    top: Manifest,
    children: Vec<Manifest>,
    blobs: Vec<(Digest, Option<u64>)>,
}

async fn fetch(args: &FetchArgs, t: &Target) -> Result<()> {
    let client = reqwest::Client::new();
    let base = format!("http://{}/v2/{}", args.mirror, t.name);
    let ns = t.ns.as_ref().map(|n| format!("?ns={n}")).unwrap_or_default();
    let started = Instant::now();
    let resolved = if t.reference.starts_with("sha256:")
        && t.reference.parse::<Digest>().is_ok()
        && !is_manifest(&client, &base, &ns, &t.reference).await
    {
        None
    } else {
        Some(resolve(&client, &base, &ns, &t.reference, args.platform.as_deref()).await?)
    };
    let blobs = match &resolved {
        Some(r) => r.blobs.clone(),
        None => vec![(t.reference.parse::<Digest>()?, None)],
    };
    let layout = args.output.as_ref().map(|o| Layout::new(o)).transpose()?;
    let total: u64 = blobs.iter().filter_map(|b| b.1).sum();
    let bar = ProgressBar::new(total);
    bar.set_style(ProgressStyle::with_template("{bar:40} {bytes}/{total_bytes} {bytes_per_sec} eta {eta} {msg}")?);
    let mut bytes = 0;
    for (digest, _) in &blobs {
        bar.set_message(digest.hex()[..12].to_owned());
        let dir = layout.as_ref().map(|l| l.blobs_dir());
        bytes += blob(&client, &format!("{base}/blobs/{digest}{ns}"), digest, dir.as_ref(), &bar).await?;
    }
    bar.finish_and_clear();
    let secs = started.elapsed().as_secs_f64();
    println!(
        "fetched {} blob(s), {} in {secs:.2} s ({}/s), every sha256 verified",
        blobs.len(),
        shoal_core::size::format_size(bytes),
        shoal_core::size::format_size((bytes as f64 / secs.max(1e-3)) as u64)
    );
    if let (Some(layout), Some(r)) = (layout, resolved) {
        let written = layout.finish(&r, t)?;
        println!("wrote an OCI image layout to {}", written.display());
    }
    Ok(())
}

async fn is_manifest(client: &reqwest::Client, base: &str, ns: &str, digest: &str) -> bool {
    let mut req = client.head(format!("{base}/manifests/{digest}{ns}"));
    for t in MANIFEST_TYPES {
        req = req.header("accept", *t);
    }
    req.send().await.is_ok_and(|r| r.status().is_success())
}

async fn manifest(client: &reqwest::Client, base: &str, ns: &str, reference: &str) -> Result<Manifest> {
    let mut req = client.get(format!("{base}/manifests/{reference}{ns}"));
    for t in MANIFEST_TYPES {
        req = req.header("accept", *t);
    }
    let resp = req.send().await.context("mirror unreachable")?;
    let status = resp.status();
    let media_type = resp.headers().get("content-type").and_then(|v| v.to_str().ok()).unwrap_or_default().to_owned();
    let body = resp.bytes().await?;
    ensure!(status.is_success(), "manifest {reference}: {status}: {}", String::from_utf8_lossy(&body));
    ensure!(body.len() <= shoal_daemon::api::wire::MAX_MANIFEST, "manifest {reference} is too large");
    let digest = Digest::of(&body);
    if let Ok(d) = reference.parse::<Digest>() {
        ensure!(digest == d, "manifest {reference} does not hash to its digest");
    }
    Ok(Manifest { digest, media_type, body: body.to_vec() })
}

/// This host's platform, as an index names it.
fn host_platform() -> String {
    let arch = match std::env::consts::ARCH {
        "x86_64" => "amd64",
        "aarch64" => "arm64",
        "x86" => "386",
        other => other,
    };
    format!("linux/{arch}")
}

/// Resolves an image reference; for an index, the platform asked for (`all`: every one).
async fn resolve(
    client: &reqwest::Client,
    base: &str,
    ns: &str,
    reference: &str,
    platform: Option<&str>,
) -> Result<Resolved> {
    let top = manifest(client, base, ns, reference).await?;
    let children = match mf::refs(&top.digest, &top.media_type, &top.body)? {
        Refs::Image { .. } => return Ok(Resolved { blobs: blobs_of(&top)?, top, children: Vec::new() }),
        Refs::Index(children) => children,
    };
    let want = platform.map_or_else(host_platform, str::to_owned);
    if want == "all" {
        let mut resolved = Resolved { top, children: Vec::new(), blobs: Vec::new() };
        for c in &children {
            let m = manifest(client, base, ns, &c.digest.to_string()).await?;
            for b in blobs_of(&m)? {
                if !resolved.blobs.contains(&b) {
                    resolved.blobs.push(b);
                }
            }
            resolved.children.push(m);
        }
        return Ok(resolved);
    }
    let matches =
        |c: &&mf::Descriptor| c.platform.as_deref().is_some_and(|p| p == want || p.starts_with(&format!("{want}/")));
    let pick = match (children.iter().find(matches), platform) {
        (Some(c), _) => c,
        (None, None) => children.first().context("empty image index")?,
        (None, Some(_)) => {
            let have: Vec<_> = children.iter().filter_map(|c| c.platform.clone()).collect();
            bail!("the image has no platform {want} (it has {})", have.join(", "));
        }
    };
    let m = manifest(client, base, ns, &pick.digest.to_string()).await?;
    Ok(Resolved { blobs: blobs_of(&m)?, top: m, children: Vec::new() })
}

/// Config and layers of an image manifest.
fn blobs_of(m: &Manifest) -> Result<Vec<(Digest, Option<u64>)>> {
    match mf::refs(&m.digest, &m.media_type, &m.body)? {
        Refs::Image { config, layers } => {
            Ok(std::iter::once(config).chain(layers).map(|d| (d.digest, Some(d.size))).collect())
        }
        Refs::Index(_) => bail!("manifest {}: an index inside an index is not supported", m.digest),
    }
}

/// An OCI image layout being written: a directory, or a temporary one to be put in a tar.
struct Layout {
    dir: PathBuf,
    tar: Option<(PathBuf, tempfile::TempDir)>,
}

impl Layout {
    fn new(output: &Path) -> Result<Self> {
        let tar = output.extension().is_some_and(|e| e == "tar");
        let layout = if tar {
            let parent = output.parent().filter(|p| !p.as_os_str().is_empty()).unwrap_or(Path::new("."));
            let tmp = tempfile::Builder::new().prefix(".shoal-fetch-").tempdir_in(parent)?;
            Self { dir: tmp.path().to_owned(), tar: Some((output.to_owned(), tmp)) }
        } else {
            Self { dir: output.to_owned(), tar: None }
        };
        std::fs::create_dir_all(layout.blobs_dir()).with_context(|| format!("creating {}", layout.dir.display()))?;
        Ok(layout)
    }

    fn blobs_dir(&self) -> PathBuf {
        self.dir.join("blobs/sha256")
    }

    /// Writes the manifests, `index.json` (naming the image by its tag and full name) and
    /// `oci-layout`; for an archive, puts it all in the tar. Returns what was written.
    fn finish(self, r: &Resolved, t: &Target) -> Result<PathBuf> {
        for m in std::iter::once(&r.top).chain(&r.children) {
            std::fs::write(self.blobs_dir().join(m.digest.hex()), &m.body)?;
        }
        let mut annotations = serde_json::Map::new();
        if t.reference.parse::<Digest>().is_err() {
            annotations.insert("org.opencontainers.image.ref.name".into(), t.reference.clone().into());
            if let Some(ns) = &t.ns {
                let full = format!("{ns}/{}:{}", t.name, t.reference);
                annotations.insert("io.containerd.image.name".into(), full.into());
            }
        }
        let index = serde_json::json!({
            "schemaVersion": 2,
            "mediaType": mf::OCI_INDEX,
            "manifests": [{
                "mediaType": r.top.media_type,
                "digest": r.top.digest.to_string(),
                "size": r.top.body.len(),
                "annotations": annotations,
            }],
        });
        std::fs::write(self.dir.join("index.json"), serde_json::to_vec(&index)?)?;
        std::fs::write(self.dir.join("oci-layout"), br#"{"imageLayoutVersion":"1.0.0"}"#)?;
        let Some((file, tmp)) = self.tar else { return Ok(self.dir) };
        let partial = file.with_extension("tar.partial");
        let mut tar = tar::Builder::new(std::io::BufWriter::new(std::fs::File::create(&partial)?));
        tar.mode(tar::HeaderMode::Deterministic);
        tar.follow_symlinks(false);
        tar.append_path_with_name(tmp.path().join("oci-layout"), "oci-layout")?;
        tar.append_path_with_name(tmp.path().join("index.json"), "index.json")?;
        tar.append_dir_all("blobs", tmp.path().join("blobs"))?;
        let out = tar.into_inner()?.into_inner().map_err(|e| e.into_error())?;
        out.sync_all()?;
        std::fs::rename(&partial, &file)?;
        Ok(file)
    }
}

async fn blob(
    client: &reqwest::Client,
    url: &str,
    digest: &Digest,
    out: Option<&PathBuf>,
    bar: &ProgressBar,
) -> Result<u64> {
    let resp = client.get(url).send().await.context("mirror unreachable")?;
    let status = resp.status();
    if !status.is_success() {
        bail!("blob {digest}: {status}: {}", resp.text().await.unwrap_or_default());
    }
    let path = out.map(|dir| dir.join(digest.hex()));
    let mut file = match &path {
        Some(p) => Some(tokio::fs::File::create(p.with_extension("partial")).await?),
        None => None,
    };
    let mut hasher = Sha256::new();
    let mut n = 0;
    let mut body = resp.bytes_stream();
    while let Some(chunk) = body.next().await {
        let chunk = chunk.with_context(|| format!("blob {digest} cut short after {n} bytes"))?;
        hasher.update(&chunk);
        if let Some(f) = &mut file {
            tokio::io::AsyncWriteExt::write_all(f, &chunk).await?;
        }
        n += chunk.len() as u64;
        bar.inc(chunk.len() as u64);
    }
    ensure!(
        Digest::from_bytes(hasher.finalize().into()) == *digest,
        "blob {digest}: content does not match its digest"
    );
    if let (Some(p), Some(f)) = (&path, file) {
        f.sync_all().await?;
        tokio::fs::rename(p.with_extension("partial"), p).await?;
    }
    Ok(n)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_references() {
        let t = parse("127.0.0.1:5000/team/app:v1").unwrap();
        assert_eq!(
            (t.ns.as_deref(), t.name.as_str(), t.reference.as_str()),
            (Some("127.0.0.1:5000"), "team/app", "v1")
        );
        let t = parse("library/alpine").unwrap();
        assert_eq!((t.ns, t.name.as_str(), t.reference.as_str()), (None, "library/alpine", "latest"));
        let d = Digest::of(b"x").to_string();
        let t = parse(&format!("ghcr.io/a/b@{d}")).unwrap();
        assert_eq!((t.ns.as_deref(), t.reference), (Some("ghcr.io"), d));
        assert!(parse("UPPER/x").is_err());
    }
}

//! `shoal fetch REF`: download an image (`[registry/]name[:tag]`) or one blob (`name@sha256:…`)
//! through a daemon's mirror with a progress bar, checking every blob's sha256.

use std::path::PathBuf;
use std::time::Instant;

use anyhow::{bail, ensure, Context, Result};
use clap::Args;
use futures::StreamExt;
use indicatif::{ProgressBar, ProgressStyle};
use sha2::{Digest as _, Sha256};
use shoal_core::Digest;

const MANIFEST_TYPES: &[&str] = &[
    "application/vnd.oci.image.index.v1+json",
    "application/vnd.oci.image.manifest.v1+json",
    "application/vnd.docker.distribution.manifest.list.v2+json",
    "application/vnd.docker.distribution.manifest.v2+json",
];

/// Flags of `shoal fetch`.
#[derive(Args, Debug)]
pub struct FetchArgs {
    /// `[registry/]name[:tag]` for an image, or `[registry/]name@sha256:<hex>` for one blob.
    reference: String,
    /// The daemon's mirror address.
    #[arg(long, default_value = "127.0.0.1:65001", value_name = "ADDR")]
    mirror: String,
    /// Save blobs here (as <hex> files); default: download, verify and discard.
    #[arg(long, short, value_name = "DIR")]
    output: Option<PathBuf>,
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
    if let Some(dir) = &args.output {
        std::fs::create_dir_all(dir).with_context(|| format!("creating {}", dir.display()))?;
    }
    let rt = tokio::runtime::Builder::new_current_thread().enable_all().build()?;
    rt.block_on(fetch(&args, &target))
}

async fn fetch(args: &FetchArgs, t: &Target) -> Result<()> {
    let client = reqwest::Client::new();
    let base = format!("http://{}/v2/{}", args.mirror, t.name);
    let ns = t.ns.as_ref().map(|n| format!("?ns={n}")).unwrap_or_default();
    let started = Instant::now();
    let blobs = if t.reference.starts_with("sha256:")
        && t.reference.parse::<Digest>().is_ok()
        && !is_manifest(&client, &base, &ns, &t.reference).await
    {
        vec![(t.reference.parse::<Digest>()?, None)]
    } else {
        image_blobs(&client, &base, &ns, &t.reference).await?
    };
    let total: u64 = blobs.iter().filter_map(|b| b.1).sum();
    let bar = ProgressBar::new(total);
    bar.set_style(ProgressStyle::with_template("{bar:40} {bytes}/{total_bytes} {bytes_per_sec} eta {eta} {msg}")?);
    let mut bytes = 0;
    for (digest, _) in &blobs {
        bar.set_message(digest.hex()[..12].to_owned());
        bytes += blob(&client, &format!("{base}/blobs/{digest}{ns}"), digest, args.output.as_ref(), &bar).await?;
    }
    bar.finish_and_clear();
    let secs = started.elapsed().as_secs_f64();
    println!(
        "fetched {} blob(s), {} in {secs:.2} s ({}/s), every sha256 verified",
        blobs.len(),
        shoal_core::size::format_size(bytes),
        shoal_core::size::format_size((bytes as f64 / secs.max(1e-3)) as u64)
    );
    Ok(())
}

async fn is_manifest(client: &reqwest::Client, base: &str, ns: &str, digest: &str) -> bool {
    let mut req = client.head(format!("{base}/manifests/{digest}{ns}"));
    for t in MANIFEST_TYPES {
        req = req.header("accept", *t);
    }
    req.send().await.is_ok_and(|r| r.status().is_success())
}

async fn manifest(client: &reqwest::Client, base: &str, ns: &str, reference: &str) -> Result<serde_json::Value> {
    let mut req = client.get(format!("{base}/manifests/{reference}{ns}"));
    for t in MANIFEST_TYPES {
        req = req.header("accept", *t);
    }
    let resp = req.send().await.context("mirror unreachable")?;
    let status = resp.status();
    let body = resp.bytes().await?;
    ensure!(status.is_success(), "manifest {reference}: {status}: {}", String::from_utf8_lossy(&body));
    if let Ok(d) = reference.parse::<Digest>() {
        ensure!(Digest::of(&body) == d, "manifest {reference} does not hash to its digest");
    }
    Ok(serde_json::from_slice(&body)?)
}

/// Config and layers of an image (for an index: the linux/amd64 entry, else the first).
async fn image_blobs(
    client: &reqwest::Client,
    base: &str,
    ns: &str,
    reference: &str,
) -> Result<Vec<(Digest, Option<u64>)>> {
    let mut m = manifest(client, base, ns, reference).await?;
    if let Some(list) = m.get("manifests").and_then(|v| v.as_array()) {
        let pick = list
            .iter()
            .find(|e| e["platform"]["os"] == "linux" && e["platform"]["architecture"] == "amd64")
            .or_else(|| list.first())
            .context("empty image index")?;
        let digest = pick["digest"].as_str().context("index entry without digest")?.to_owned();
        m = manifest(client, base, ns, &digest).await?;
    }
    let mut out = Vec::new();
    for d in std::iter::once(&m["config"]).chain(m["layers"].as_array().into_iter().flatten()) {
        let Some(digest) = d["digest"].as_str() else { bail!("manifest entry without digest") };
        out.push((digest.parse::<Digest>()?, d["size"].as_u64()));
    }
    Ok(out)
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
    let mut file = match out {
        Some(dir) => Some(tokio::fs::File::create(dir.join(digest.hex())).await?),
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

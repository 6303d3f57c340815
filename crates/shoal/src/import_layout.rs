//! What a scanned archive holds, as an upload for the daemon's `POST /import`: the images, their
//! names, manifests and blobs. Every check that can be made on the archive is made here, before
//! anything is sent: blobs under `blobs/sha256/` hash to their names, descriptors' sizes match,
//! a docker archive's layers match its config's diff ids. The daemon checks again.
//!
//! An OCI layout (`oci-layout` and `index.json`, also what newer `docker save` writes beside its
//! `manifest.json`) keeps its own manifests, so digests stay those of the registry. A classic
//! docker archive carries no registry manifest: one is built from its config and layers, in the
//! Docker v2 schema 2 media types that `docker save` itself describes.

use std::collections::HashMap;

use anyhow::{bail, ensure, Context, Result};
use serde_json::{json, Value};
use shoal_core::Digest;
use shoal_daemon::api::manifest::{self as mf, Refs};
use shoal_daemon::api::wire::{ImportBlob, ImportHeader, ImportImage, ImportManifest};

use crate::import_archive::{Scan, MAX_JSON};

/// The OCI annotation naming an image in a layout.
const REF_NAME: &str = "org.opencontainers.image.ref.name";
/// The annotation containerd and newer docker write with the full name.
const IMAGE_NAME: &str = "io.containerd.image.name";
/// Most images one archive may name.
const MAX_ARCHIVE_IMAGES: usize = 1024;

/// `registry/repository:tag`, normalised as docker does (`alpine` is
/// `docker.io/library/alpine:latest`).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Name {
    /// Registry host.
    pub registry: String,
    /// Repository.
    pub repository: String,
    /// Tag.
    pub tag: String,
}

impl std::fmt::Display for Name {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{}/{}:{}", self.registry, self.repository, self.tag)
    }
}

/// Parses an image name; a bare tag (no `/` and no `:`) is `None`: it names no repository.
pub fn parse_name(text: &str) -> Result<Option<Name>> {
    if !text.contains(['/', ':']) {
        return Ok(None);
    }
    ensure!(!text.contains('@'), "{text:?}: an imported image needs a tag, not a digest");
    let (registry, rest) = match text.split_once('/') {
        Some((first, rest)) if first.contains(['.', ':']) || first == "localhost" => (first.to_owned(), rest),
        _ => ("docker.io".to_owned(), text),
    };
    let (repository, tag) = match rest.rsplit_once(':') {
        Some((r, t)) if !t.contains('/') => (r.to_owned(), t.to_owned()),
        _ => (rest.to_owned(), "latest".to_owned()),
    };
    let repository =
        if registry == "docker.io" && !repository.contains('/') { format!("library/{repository}") } else { repository };
    shoal_core::RepoName::parse(&repository).with_context(|| format!("{text:?}: bad repository name"))?;
    ensure!(
        matches!(shoal_core::Reference::parse(&tag), Ok(shoal_core::Reference::Tag(_))),
        "{text:?}: bad tag {tag:?}"
    );
    Ok(Some(Name { registry, repository, tag }))
}

/// An upload: its header and where each blob is in the archive.
pub struct Upload {
    /// The header (blobs in archive order).
    pub header: ImportHeader,
    /// Archive path of each blob to send.
    pub paths: HashMap<Digest, String>,
}

/// One image found in the archive before naming: its top manifest and the names it carries.
struct Found {
    digest: Digest,
    names: Vec<String>,
}

/// Builds the upload for `scan`; `tags` (from `--tag`) name the archive's only image instead of
/// the names it carries.
pub fn plan(scan: &Scan, tags: &[String]) -> Result<Upload> {
    let mut manifests: HashMap<Digest, ImportManifest> = HashMap::new();
    let found = if scan.has("index.json") && scan.has("oci-layout") {
        oci_images(scan, &mut manifests)?
    } else if scan.has("manifest.json") {
        docker_images(scan, &mut manifests)?
    } else {
        bail!("neither an OCI image layout (oci-layout, index.json) nor a docker archive (manifest.json)");
    };
    ensure!(!found.is_empty(), "the archive holds no image");
    ensure!(tags.is_empty() || found.len() == 1, "--tag names one image, and the archive holds {}", found.len());
    let mut images = Vec::new();
    for f in &found {
        let texts = if tags.is_empty() { &f.names } else { &tags.to_vec() };
        let mut names = Vec::new();
        for t in texts {
            match parse_name(t)? {
                Some(n) if !names.contains(&n) => names.push(n),
                Some(_) => {}
                None => bail!(
                    "image {} is named only {t:?}, with no repository: name it with --tag REGISTRY/REPOSITORY:TAG",
                    f.digest
                ),
            }
        }
        ensure!(!names.is_empty(), "image {} carries no name: name it with --tag REGISTRY/REPOSITORY:TAG", f.digest);
        images.extend(names.into_iter().map(|n| ImportImage {
            registry: n.registry,
            repository: n.repository,
            tag: n.tag,
            digest: f.digest,
        }));
    }
    let (blobs, paths) = blobs_of(scan, &found, &manifests)?;
    let manifests = manifests.into_values().collect();
    Ok(Upload { header: ImportHeader { images, manifests, blobs, ..ImportHeader::default() }, paths })
}

/// The images of an OCI layout, from `index.json`; every `blobs/sha256/` file is checked
/// against its name.
fn oci_images(scan: &Scan, manifests: &mut HashMap<Digest, ImportManifest>) -> Result<Vec<Found>> {
    for (path, f) in &scan.files {
        if let Some(hex) = path.strip_prefix("blobs/sha256/") {
            let named: Digest = format!("sha256:{hex}").parse().with_context(|| format!("{path}: not a digest"))?;
            ensure!(named == f.digest, "{path}: its bytes hash to {} (the archive is corrupt)", f.digest);
        }
    }
    let index = scan.json("index.json")?;
    let entries = index["manifests"].as_array().context("index.json lists no manifests")?;
    ensure!(entries.len() <= MAX_ARCHIVE_IMAGES, "index.json lists more than {MAX_ARCHIVE_IMAGES} manifests");
    let repo_tags = docker_repo_tags(scan);
    let mut found: Vec<Found> = Vec::new();
    for e in entries {
        let d = descriptor(e)?;
        let media_type = load_manifest(scan, &d, manifests)?;
        let mut names: Vec<String> = [IMAGE_NAME, REF_NAME]
            .iter()
            .filter_map(|k| e["annotations"][*k].as_str().map(str::to_owned))
            .take(1)
            .collect();
        if media_type == mf::OCI_MANIFEST || media_type == mf::DOCKER_MANIFEST {
            let body = manifests[&d.digest].body.as_bytes();
            if let Ok(Refs::Image { config, .. }) = mf::refs(&d.digest, &media_type, body) {
                names.extend(repo_tags.get(&config.digest).cloned().unwrap_or_default());
            }
        }
        match found.iter_mut().find(|f| f.digest == d.digest) {
            Some(f) => f.names.extend(names),
            None => found.push(Found { digest: d.digest, names }),
        }
    }
    Ok(found)
}

/// `manifest.json`'s RepoTags by config digest, when a docker archive sits beside the layout.
fn docker_repo_tags(scan: &Scan) -> HashMap<Digest, Vec<String>> {
    let Ok(list) = scan.json("manifest.json") else { return HashMap::new() };
    let mut out = HashMap::new();
    for e in list.as_array().into_iter().flatten() {
        let config = e["Config"].as_str().and_then(|p| scan.files.get(p)).map(|f| f.digest);
        let tags: Vec<String> =
            e["RepoTags"].as_array().into_iter().flatten().filter_map(|t| t.as_str().map(str::to_owned)).collect();
        if let Some(c) = config {
            out.insert(c, tags);
        }
    }
    out
}

/// A descriptor of `index.json` or a manifest.
fn descriptor(v: &Value) -> Result<mf::Descriptor> {
    let digest = v["digest"].as_str().context("a descriptor without digest")?;
    Ok(mf::Descriptor {
        media_type: v["mediaType"].as_str().unwrap_or_default().to_owned(),
        digest: digest.parse().with_context(|| format!("descriptor digest {digest:?}"))?,
        size: v["size"].as_u64().context("a descriptor without size")?,
        platform: None,
    })
}

/// Loads the manifest `d` names from `blobs/sha256/` (and, for an index, the platform
/// manifests the archive carries); returns its media type.
fn load_manifest(scan: &Scan, d: &mf::Descriptor, out: &mut HashMap<Digest, ImportManifest>) -> Result<String> {
    let path = format!("blobs/sha256/{}", d.digest.hex());
    let f = scan.file(&path)?;
    ensure!(f.size == d.size, "manifest {}: {} bytes, its descriptor says {}", d.digest, f.size, d.size);
    ensure!(f.size <= MAX_JSON, "manifest {} is larger than {MAX_JSON} bytes", d.digest);
    let body = f.json.clone().with_context(|| format!("manifest {} is not JSON", d.digest))?;
    let v: Value = serde_json::from_slice(&body).with_context(|| format!("manifest {} is not JSON", d.digest))?;
    let media_type = match (d.media_type.as_str(), v["mediaType"].as_str()) {
        (t, _) if !t.is_empty() => t.to_owned(),
        (_, Some(t)) => t.to_owned(),
        _ if v.get("manifests").is_some() => mf::OCI_INDEX.to_owned(),
        _ => mf::OCI_MANIFEST.to_owned(),
    };
    let refs = mf::refs(&d.digest, &media_type, &body)?;
    let body = String::from_utf8(body).with_context(|| format!("manifest {} is not UTF-8", d.digest))?;
    out.insert(d.digest, ImportManifest { digest: d.digest, media_type: media_type.clone(), body });
    if let Refs::Index(children) = refs {
        let mut carried = 0;
        for c in children.iter().filter(|c| scan.files.contains_key(&format!("blobs/sha256/{}", c.digest.hex()))) {
            if !out.contains_key(&c.digest) {
                load_manifest(scan, c, out)?;
            }
            carried += 1;
        }
        ensure!(carried > 0, "index {} comes with none of its manifests", d.digest);
    }
    Ok(media_type)
}

/// The images of a classic docker archive, each with a Docker v2 schema 2 manifest built from
/// its config and layers.
fn docker_images(scan: &Scan, manifests: &mut HashMap<Digest, ImportManifest>) -> Result<Vec<Found>> {
    let list = scan.json("manifest.json")?;
    let list = list.as_array().context("manifest.json is not a list")?;
    ensure!(list.len() <= MAX_ARCHIVE_IMAGES, "manifest.json lists more than {MAX_ARCHIVE_IMAGES} images");
    let mut found = Vec::new();
    for e in list {
        let config_path = e["Config"].as_str().context("manifest.json: an image without Config")?;
        let config = scan.file(config_path)?;
        let parsed = scan.json(config_path)?;
        let diff_ids =
            parsed["rootfs"]["diff_ids"].as_array().with_context(|| format!("{config_path}: no rootfs.diff_ids"))?;
        let layers = e["Layers"].as_array().context("manifest.json: an image without Layers")?;
        ensure!(
            layers.len() == diff_ids.len(),
            "{config_path}: {} diff ids for {} layers",
            diff_ids.len(),
            layers.len()
        );
        let mut descriptors = Vec::new();
        for (layer, diff_id) in layers.iter().zip(diff_ids) {
            let path = layer.as_str().context("manifest.json: a layer that is not a path")?;
            let f = scan.file(path)?;
            let diff_id: Digest =
                diff_id.as_str().unwrap_or_default().parse().with_context(|| format!("{config_path}: bad diff id"))?;
            let (media_type, content) = match f.uncompressed {
                Some(inner) => (mf::DOCKER_LAYER_GZIP, inner),
                None => (mf::DOCKER_LAYER, f.digest),
            };
            ensure!(content == diff_id, "layer {path} does not match its diff id {diff_id} (the archive is corrupt)");
            descriptors.push(json!({"mediaType": media_type, "size": f.size, "digest": f.digest.to_string()}));
        }
        let manifest = json!({
            "schemaVersion": 2,
            "mediaType": mf::DOCKER_MANIFEST,
            "config": {"mediaType": mf::DOCKER_CONFIG, "size": config.size, "digest": config.digest.to_string()},
            "layers": descriptors,
        });
        let body = serde_json::to_string(&manifest)?;
        let digest = Digest::of(body.as_bytes());
        manifests.insert(digest, ImportManifest { digest, media_type: mf::DOCKER_MANIFEST.into(), body });
        let names =
            e["RepoTags"].as_array().into_iter().flatten().filter_map(|t| t.as_str().map(str::to_owned)).collect();
        found.push(Found { digest, names });
    }
    Ok(found)
}

/// The blobs the images need, in archive order, with the path of each.
fn blobs_of(
    scan: &Scan,
    found: &[Found],
    manifests: &HashMap<Digest, ImportManifest>,
) -> Result<(Vec<ImportBlob>, HashMap<Digest, String>)> {
    let mut needed: HashMap<Digest, u64> = HashMap::new();
    let mut stack: Vec<Digest> = found.iter().map(|f| f.digest).collect();
    while let Some(d) = stack.pop() {
        let Some(m) = manifests.get(&d) else { continue };
        match mf::refs(&d, &m.media_type, m.body.as_bytes())? {
            Refs::Image { config, layers } => {
                for b in std::iter::once(config).chain(layers) {
                    needed.insert(b.digest, b.size);
                }
            }
            Refs::Index(children) => stack.extend(children.iter().map(|c| c.digest)),
        }
    }
    let mut blobs = Vec::new();
    let mut paths = HashMap::new();
    for path in &scan.order {
        let f = &scan.files[path];
        if let Some(&size) = needed.get(&f.digest) {
            if paths.contains_key(&f.digest) {
                continue;
            }
            ensure!(size == f.size, "blob {}: {} bytes in the archive, {size} in its manifest", f.digest, f.size);
            paths.insert(f.digest, path.clone());
            blobs.push(ImportBlob { digest: f.digest, size });
        }
    }
    if let Some(missing) = needed.keys().find(|d| !paths.contains_key(d)) {
        bail!("blob {missing} is not in the archive");
    }
    Ok((blobs, paths))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn names_normalise_like_docker() {
        let n = |s: &str| parse_name(s).unwrap().map(|n| n.to_string());
        assert_eq!(n("alpine:3"), Some("docker.io/library/alpine:3".into()));
        assert_eq!(n("team/app"), Some("docker.io/team/app:latest".into()));
        assert_eq!(n("127.0.0.1:5000/foo/bar:v1"), Some("127.0.0.1:5000/foo/bar:v1".into()));
        assert_eq!(n("localhost/x"), Some("localhost/x:latest".into()));
        assert_eq!(n("latest"), None);
        assert!(parse_name("a/b@sha256:00").is_err());
        assert!(parse_name("UP/x:1").is_err());
    }
}

//! A synthetic multi-layer OCI image, built offline from a seed, in an OCI image layout directory.
//!
//! Each layer is an uncompressed tar (`application/vnd.oci.image.layer.v1.tar`) of pseudo-random,
//! incompressible files, so the layer digest is also its diff_id. The same seed and sizes always
//! give the same bytes, hence the same digests.

use std::fs::File;
use std::io::{BufWriter, Write};
use std::path::Path;
use std::time::Duration;

use anyhow::{bail, Context, Result};
use serde_json::json;
use sha2::{Digest, Sha256};
use tempfile::TempDir;

use crate::hash::sha256_file;
use crate::registry::Registry;
use crate::util::run;

const MANIFEST_TYPE: &str = "application/vnd.oci.image.manifest.v1+json";
const CONFIG_TYPE: &str = "application/vnd.oci.image.config.v1+json";
const LAYER_TYPE: &str = "application/vnd.oci.image.layer.v1.tar";
/// The ref name of the image inside its OCI layout (`oci:DIR:latest`).
const LOCAL_REF: &str = "latest";
/// Size of each random file inside a layer.
const FILE_SIZE: u64 = 4 << 20;

/// A content-addressed blob of the image.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Blob {
    /// `sha256:<hex>`.
    pub digest: String,
    pub size: u64,
}

impl Blob {
    /// The hex part of the digest.
    pub fn hex(&self) -> &str {
        self.digest.trim_start_matches("sha256:")
    }
}

/// An OCI image layout on disk (removed on drop).
pub struct Image {
    dir: TempDir,
    /// The manifest bytes, exactly as pushed.
    pub manifest: Vec<u8>,
    pub manifest_digest: String,
    pub config: Blob,
    pub layers: Vec<Blob>,
}

impl Image {
    /// Builds an image whose layers hold about `layer_sizes[i]` bytes of random data each.
    pub fn build(seed: u64, layer_sizes: &[u64]) -> Result<Self> {
        let dir = tempfile::Builder::new().prefix("shoal-image-").tempdir()?;
        let blobs = dir.path().join("blobs/sha256");
        std::fs::create_dir_all(&blobs)?;
        let mut layers = Vec::new();
        for (index, &size) in layer_sizes.iter().enumerate() {
            let seed = seed.wrapping_mul(1000).wrapping_add(index as u64);
            layers.push(write_layer(&blobs, seed, index, size)?);
        }
        let diff_ids: Vec<&str> = layers.iter().map(|l| l.digest.as_str()).collect();
        let history: Vec<_> = (0..layers.len())
            .map(|i| json!({"created": "2024-01-01T00:00:00Z", "created_by": format!("shoal-e2e layer {i} seed {seed}")}))
            .collect();
        let config = json!({
            "created": "2024-01-01T00:00:00Z",
            "architecture": "amd64",
            "os": "linux",
            "config": {"Env": ["PATH=/usr/local/bin:/usr/bin:/bin"], "Cmd": ["/bin/sh"],
                       "Labels": {"org.shoal.e2e.seed": seed.to_string()}},
            "rootfs": {"type": "layers", "diff_ids": diff_ids},
            "history": history,
        });
        let config = write_blob(&blobs, &serde_json::to_vec(&config)?)?;
        let manifest = serde_json::to_vec(&json!({
            "schemaVersion": 2,
            "mediaType": MANIFEST_TYPE,
            "config": {"mediaType": CONFIG_TYPE, "digest": config.digest, "size": config.size},
            "layers": layers.iter().map(|l| json!({"mediaType": LAYER_TYPE, "digest": l.digest, "size": l.size})).collect::<Vec<_>>(),
        }))?;
        let manifest_blob = write_blob(&blobs, &manifest)?;
        let index = json!({
            "schemaVersion": 2,
            "manifests": [{
                "mediaType": MANIFEST_TYPE,
                "digest": manifest_blob.digest,
                "size": manifest_blob.size,
                "annotations": {"org.opencontainers.image.ref.name": LOCAL_REF},
            }],
        });
        std::fs::write(dir.path().join("index.json"), serde_json::to_vec(&index)?)?;
        std::fs::write(dir.path().join("oci-layout"), br#"{"imageLayoutVersion":"1.0.0"}"#)?;
        Ok(Self { dir, manifest, manifest_digest: manifest_blob.digest, config, layers })
    }

    /// The OCI layout directory.
    pub fn layout_dir(&self) -> &Path {
        self.dir.path()
    }

    /// Path of a blob in the layout.
    pub fn blob_path(&self, blob: &Blob) -> std::path::PathBuf {
        self.dir.path().join("blobs/sha256").join(blob.hex())
    }

    /// The config and all layers.
    pub fn blobs(&self) -> Vec<Blob> {
        std::iter::once(self.config.clone()).chain(self.layers.iter().cloned()).collect()
    }

    /// Sum of the layer sizes.
    pub fn layers_size(&self) -> u64 {
        self.layers.iter().map(|l| l.size).sum()
    }

    /// The biggest layer.
    pub fn largest_layer(&self) -> &Blob {
        self.layers.iter().max_by_key(|l| l.size).expect("image has layers")
    }

    /// Pushes the image to `registry` as `NAME:TAG` with skopeo, keeping every digest (layers stay
    /// uncompressed), and checks that the registry got exactly our manifest.
    pub async fn push(&self, registry: &Registry, name: &str, tag: &str) -> Result<()> {
        let digest_file = self.dir.path().join("pushed-digest");
        let mut cmd = tokio::process::Command::new("skopeo");
        cmd.args(["copy", "--quiet", "--preserve-digests", "--dest-tls-verify=false"])
            .arg("--digestfile")
            .arg(&digest_file);
        if let Some(creds) = registry.creds_arg() {
            cmd.arg("--dest-creds").arg(creds);
        }
        cmd.arg(format!("oci:{}:{LOCAL_REF}", self.dir.path().display()))
            .arg(format!("docker://{}/{name}:{tag}", registry.host()));
        run(&mut cmd, Duration::from_secs(120)).await?;
        let pushed = std::fs::read_to_string(&digest_file).context("read --digestfile")?;
        if pushed.trim() != self.manifest_digest {
            bail!("skopeo pushed {} but the image is {}", pushed.trim(), self.manifest_digest);
        }
        Ok(())
    }
}

/// SplitMix64: a tiny deterministic generator; its output does not compress.
struct SplitMix64(u64);

impl SplitMix64 {
    fn fill(&mut self, buf: &mut [u8]) {
        for chunk in buf.chunks_mut(8) {
            self.0 = self.0.wrapping_add(0x9E37_79B9_7F4A_7C15);
            let mut z = self.0;
            z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
            z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
            z ^= z >> 31;
            chunk.copy_from_slice(&z.to_le_bytes()[..chunk.len()]);
        }
    }
}

/// Writes one layer tar of about `size` bytes of random file data into `blobs`.
fn write_layer(blobs: &Path, seed: u64, index: usize, size: u64) -> Result<Blob> {
    let tmp = blobs.join(format!("layer-{index}.tmp"));
    let mut tar = tar::Builder::new(BufWriter::new(File::create(&tmp)?));
    let dir_name = format!("shoal-e2e/layer{index}/");
    let mut header = header(tar::EntryType::Directory, 0o755, 0);
    tar.append_data(&mut header, &dir_name, std::io::empty())?;
    let note = format!("layer {index} of a shoal-e2e image, seed {seed}\n");
    let mut header = header_file(note.len() as u64);
    tar.append_data(&mut header, format!("{dir_name}README"), note.as_bytes())?;
    let mut rng = SplitMix64(seed);
    let mut buf = vec![0u8; FILE_SIZE as usize];
    let (mut left, mut file) = (size, 0);
    while left > 0 {
        let n = left.min(FILE_SIZE);
        rng.fill(&mut buf[..n as usize]);
        let mut header = header_file(n);
        tar.append_data(&mut header, format!("{dir_name}file{file:04}.bin"), &buf[..n as usize])?;
        left -= n;
        file += 1;
    }
    let mut out = tar.into_inner()?;
    out.flush()?;
    drop(out);
    let blob = Blob { digest: sha256_file(&tmp)?, size: std::fs::metadata(&tmp)?.len() };
    std::fs::rename(&tmp, blobs.join(blob.hex()))?;
    Ok(blob)
}

fn header(kind: tar::EntryType, mode: u32, size: u64) -> tar::Header {
    let mut header = tar::Header::new_ustar();
    header.set_entry_type(kind);
    header.set_mode(mode);
    header.set_size(size);
    header.set_mtime(1_700_000_000);
    header.set_uid(0);
    header.set_gid(0);
    header
}

fn header_file(size: u64) -> tar::Header {
    header(tar::EntryType::Regular, 0o644, size)
}

/// Writes a small blob (config, manifest) into `blobs` and returns its descriptor.
fn write_blob(blobs: &Path, data: &[u8]) -> Result<Blob> {
    let hex = hex::encode(Sha256::digest(data));
    std::fs::write(blobs.join(&hex), data)?;
    Ok(Blob { digest: format!("sha256:{hex}"), size: data.len() as u64 })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn same_seed_same_digests_and_valid_tar() -> Result<()> {
        let a = Image::build(7, &[100_000, 5_000_000])?;
        let b = Image::build(7, &[100_000, 5_000_000])?;
        let c = Image::build(8, &[100_000, 5_000_000])?;
        assert_eq!(a.manifest_digest, b.manifest_digest);
        assert_ne!(a.manifest_digest, c.manifest_digest);
        for layer in &a.layers {
            assert_eq!(sha256_file(&a.blob_path(layer))?, layer.digest);
            let mut archive = tar::Archive::new(File::open(a.blob_path(layer))?);
            let total: u64 = archive.entries()?.map(|e| e.map(|e| e.size())).sum::<Result<u64, _>>()?;
            assert!(total >= 100_000);
        }
        assert!(a.layers[1].size > 5_000_000);
        Ok(())
    }
}

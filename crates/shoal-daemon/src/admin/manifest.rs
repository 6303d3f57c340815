//! What a manifest refers to: an image manifest's config and layers, an index's platform
//! manifests. A pure, bounded parse of the OCI and Docker v2 schema 2 media types, shared by the
//! import endpoint and the `shoal` CLI (`shoal import`, `shoal fetch -o`). It never fetches.

use shoal_core::Digest;

pub use shoal_core::media::{DOCKER_LIST, DOCKER_MANIFEST, OCI_INDEX, OCI_MANIFEST};
/// Docker image config.
pub const DOCKER_CONFIG: &str = "application/vnd.docker.container.image.v1+json";
/// Docker uncompressed layer.
pub const DOCKER_LAYER: &str = "application/vnd.docker.image.rootfs.diff.tar";
/// Docker gzip layer.
pub const DOCKER_LAYER_GZIP: &str = "application/vnd.docker.image.rootfs.diff.tar.gzip";
/// Most entries (layers, platform manifests) one manifest may list.
pub const MAX_ENTRIES: usize = 4096;

/// A content descriptor.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Descriptor {
    /// Media type (empty when absent).
    pub media_type: String,
    /// Digest.
    pub digest: Digest,
    /// Size, bytes.
    pub size: u64,
    /// `os/architecture[/variant]` for an index entry that names its platform.
    pub platform: Option<String>,
}

/// What a manifest refers to.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Refs {
    /// An image manifest: its config and layers.
    Image {
        /// The config blob.
        config: Descriptor,
        /// The layer blobs, in order.
        layers: Vec<Descriptor>,
    },
    /// An index (manifest list): its platform manifests.
    Index(Vec<Descriptor>),
}

/// Why a manifest is refused.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("manifest {digest}: {message}")]
pub struct ManifestError {
    /// The manifest.
    pub digest: Digest,
    /// What is wrong.
    pub message: String,
}

/// True for the four manifest media types this module reads.
pub fn is_manifest_type(media_type: &str) -> bool {
    [OCI_MANIFEST, OCI_INDEX, DOCKER_MANIFEST, DOCKER_LIST].contains(&media_type)
}

/// Parses `body` (of `media_type`, hashing to `digest`, checked here) into what it refers to.
pub fn refs(digest: &Digest, media_type: &str, body: &[u8]) -> Result<Refs, ManifestError> {
    let err = |message: String| ManifestError { digest: *digest, message };
    if body.len() > crate::admin::wire::MAX_MANIFEST {
        return Err(err(format!("{} bytes, more than {}", body.len(), crate::admin::wire::MAX_MANIFEST)));
    }
    if Digest::of(body) != *digest {
        return Err(err(format!("its bytes hash to {}", Digest::of(body))));
    }
    if !is_manifest_type(media_type) {
        return Err(err(format!("unsupported media type {media_type:?}")));
    }
    let v: serde_json::Value = serde_json::from_slice(body).map_err(|e| err(format!("not JSON: {e}")))?;
    if v["schemaVersion"] != 2 {
        return Err(err("schemaVersion is not 2".into()));
    }
    if let Some(inner) = v.get("mediaType").and_then(|m| m.as_str()) {
        if inner != media_type {
            return Err(err(format!("says it is {inner:?}, not {media_type:?}")));
        }
    }
    if media_type == OCI_INDEX || media_type == DOCKER_LIST {
        return Ok(Refs::Index(list(&v["manifests"]).map_err(err)?));
    }
    let config = descriptor(&v["config"]).map_err(|m| err(format!("config: {m}")))?;
    Ok(Refs::Image { config, layers: list(&v["layers"]).map_err(err)? })
}

fn list(v: &serde_json::Value) -> Result<Vec<Descriptor>, String> {
    let items = v.as_array().ok_or("no list of descriptors")?;
    if items.len() > MAX_ENTRIES {
        return Err(format!("{} entries, more than {MAX_ENTRIES}", items.len()));
    }
    items.iter().map(descriptor).collect()
}

fn descriptor(v: &serde_json::Value) -> Result<Descriptor, String> {
    let digest = v["digest"].as_str().ok_or("descriptor without digest")?;
    let digest = digest.parse::<Digest>().map_err(|e| format!("descriptor digest {digest:?}: {e}"))?;
    let size = v["size"].as_u64().ok_or("descriptor without size")?;
    let platform = v.get("platform").and_then(|p| {
        let (os, arch) = (p["os"].as_str()?, p["architecture"].as_str()?);
        Some(match p["variant"].as_str() {
            Some(variant) => format!("{os}/{arch}/{variant}"),
            None => format!("{os}/{arch}"),
        })
    });
    let media_type = v["mediaType"].as_str().unwrap_or_default().to_owned();
    Ok(Descriptor { media_type, digest, size, platform })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn reads_images_and_indexes() {
        let d = Digest::of(b"c");
        let body = format!(
            r#"{{"schemaVersion":2,"mediaType":"{OCI_MANIFEST}","config":{{"digest":"{d}","size":1}},"layers":[{{"digest":"{d}","size":1,"mediaType":"x"}}]}}"#
        );
        let got = refs(&Digest::of(body.as_bytes()), OCI_MANIFEST, body.as_bytes()).unwrap();
        let Refs::Image { config, layers } = got else { panic!("not an image") };
        assert_eq!((config.digest, layers.len(), layers[0].media_type.as_str()), (d, 1, "x"));

        let index = format!(
            r#"{{"schemaVersion":2,"manifests":[{{"digest":"{d}","size":9,"platform":{{"os":"linux","architecture":"arm64","variant":"v8"}}}}]}}"#
        );
        let got = refs(&Digest::of(index.as_bytes()), OCI_INDEX, index.as_bytes()).unwrap();
        assert_eq!(
            got,
            Refs::Index(vec![Descriptor {
                media_type: String::new(),
                digest: d,
                size: 9,
                platform: Some("linux/arm64/v8".into())
            }])
        );
    }

    #[test]
    fn refuses_what_does_not_hold() {
        let body = br#"{"schemaVersion":2,"config":{"digest":"sha256:zz","size":1},"layers":[]}"#;
        let d = Digest::of(body);
        assert!(refs(&Digest::of(b"other"), OCI_MANIFEST, body).unwrap_err().message.contains("hash"));
        assert!(refs(&d, "text/plain", body).unwrap_err().message.contains("media type"));
        assert!(refs(&d, OCI_MANIFEST, body).unwrap_err().message.contains("digest"));
        let lying = format!(r#"{{"schemaVersion":2,"mediaType":"{OCI_INDEX}","manifests":[]}}"#);
        let e = refs(&Digest::of(lying.as_bytes()), OCI_MANIFEST, lying.as_bytes()).unwrap_err();
        assert!(e.message.contains("says it is"), "{e}");
    }
}

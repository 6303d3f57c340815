//! Imported images (`shoal import`) and durable pins: what the operator put in the cache on
//! purpose, and what eviction must therefore leave alone.
//!
//! An [`ImageRecord`] names one imported tag (`registry/repository:tag`) with every manifest and
//! blob it needs, whether it is pinned and when it expires. A blob is durably pinned when it is
//! pinned by itself (`shoal cache pin DIGEST`) or belongs to a pinned image that has not expired;
//! [`durable_pins`] computes that set, [`expired`] the images whose time to live is over. Both
//! are pure over the records: the metadata store keeps them, `space` and `gc` apply them.
//! Nothing here reads a file or decides access (that is `mirror::imported`).

use std::collections::HashSet;

use shoal_core::Digest;

/// One imported image under one tag.
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub struct ImageRecord {
    /// The registry as the daemon names it (a configured `[[registry]]` name).
    pub registry: String,
    /// The repository, e.g. `library/alpine`.
    pub repository: String,
    /// The tag.
    pub tag: String,
    /// The manifest (or index) the tag names.
    pub digest: Digest,
    /// Its media type.
    pub media_type: String,
    /// Every manifest of the image: the tagged one and, for an index, the platform manifests
    /// imported with it.
    pub manifests: Vec<Digest>,
    /// Every config and layer of the image.
    pub blobs: Vec<Digest>,
    /// Bytes of the blobs.
    pub size: u64,
    /// Never evicted while it lives.
    pub pinned: bool,
    /// Unix milliseconds after which the image is forgotten and its blobs become ordinary
    /// cache entries to evict at once (`None`: never).
    pub expires: Option<u64>,
    /// When it was imported, unix milliseconds.
    pub imported: u64,
    /// Served without the origin only to clients the ordinary offline rule allows (not to
    /// anyone who can reach the mirror).
    #[serde(default)]
    pub restricted: bool,
}

impl ImageRecord {
    /// Its key: `registry/repository:tag` (the same as the tag mapping's).
    pub fn key(&self) -> String {
        crate::store::meta::tag_key(&self.registry, &self.repository, &self.tag)
    }

    /// True when its time to live is over at `now`.
    pub fn is_expired(&self, now: u64) -> bool {
        self.expires.is_some_and(|at| at <= now)
    }

    /// True when `digest` is one of its manifests or blobs.
    pub fn holds(&self, digest: &Digest) -> bool {
        self.manifests.contains(digest) || self.blobs.contains(digest)
    }
}

/// Blobs eviction must never take: pinned blobs, and the blobs of pinned images still alive at
/// `now`.
pub fn durable_pins(images: &[ImageRecord], blob_pins: &[Digest], now: u64) -> HashSet<Digest> {
    let mut out: HashSet<Digest> = blob_pins.iter().copied().collect();
    for image in images.iter().filter(|i| i.pinned && !i.is_expired(now)) {
        out.extend(image.blobs.iter().copied());
    }
    out
}

/// What the end of some images' time to live removes: their keys, and the blobs that no image
/// still alive needs and that are not pinned by themselves.
pub fn expired(images: &[ImageRecord], blob_pins: &[Digest], now: u64) -> (Vec<String>, Vec<Digest>) {
    let (gone, alive): (Vec<_>, Vec<_>) = images.iter().partition(|i| i.is_expired(now));
    let kept: HashSet<Digest> =
        alive.iter().flat_map(|i| i.blobs.iter().copied()).chain(blob_pins.iter().copied()).collect();
    let mut blobs: Vec<Digest> =
        gone.iter().flat_map(|i| i.blobs.iter().copied()).filter(|d| !kept.contains(d)).collect();
    blobs.sort();
    blobs.dedup();
    (gone.iter().map(|i| i.key()).collect(), blobs)
}

#[cfg(test)]
pub(crate) mod tests {
    use super::*;

    pub(crate) fn image(tag: &str, blobs: &[&[u8]], pinned: bool, expires: Option<u64>) -> ImageRecord {
        ImageRecord {
            registry: "r".into(),
            repository: "a/b".into(),
            tag: tag.into(),
            digest: Digest::of(tag.as_bytes()),
            media_type: "application/vnd.oci.image.manifest.v1+json".into(),
            manifests: vec![Digest::of(tag.as_bytes())],
            blobs: blobs.iter().map(|b| Digest::of(b)).collect(),
            size: 10,
            pinned,
            expires,
            imported: 1,
            restricted: false,
        }
    }

    #[test]
    fn pins_are_blob_pins_and_live_pinned_images() {
        let images = [
            image("p", &[b"a", b"b"], true, None),
            image("u", &[b"c"], false, None),
            image("x", &[b"d"], true, Some(5)),
        ];
        let pins = durable_pins(&images, &[Digest::of(b"e")], 10);
        let want: HashSet<Digest> = [b"a", b"b", b"e"].iter().map(|b| Digest::of(*b)).collect();
        assert_eq!(pins, want);
        assert!(durable_pins(&images, &[], 4).contains(&Digest::of(b"d")), "alive until it expires");
    }

    #[test]
    fn expiry_removes_only_what_nothing_alive_needs() {
        let images = [
            image("old", &[b"shared", b"own", b"pinned"], true, Some(5)),
            image("new", &[b"shared"], false, Some(50)),
            image("forever", &[b"other"], false, None),
        ];
        let (keys, blobs) = expired(&images, &[Digest::of(b"pinned")], 10);
        assert_eq!(keys, vec!["r/a/b:old".to_owned()]);
        assert_eq!(blobs, vec![Digest::of(b"own")]);
        assert_eq!(expired(&images, &[], 4), (vec![], vec![]));
    }
}

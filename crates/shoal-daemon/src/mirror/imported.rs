//! Imported images (`shoal import`) as the mirror serves them when the origin cannot answer.
//!
//! The rule: the origin stays authoritative whenever it answers (a moved tag, a 401, a 404 all
//! win over the import). When it cannot answer, an imported image is the site's most recent
//! knowledge: its tag resolves (with a `Warning` header, like any stale tag) as long as the last
//! mapping seen for the tag is the imported one, and its manifests and blobs are served — to
//! anyone who can reach the mirror, because the operator imported it on purpose and there is no
//! origin to ask. An image imported with `--restricted` gets no such pass: it is served offline
//! only to clients the ordinary offline rule (`grants`) allows. Nothing here touches the
//! origin-online path, and nothing is granted for objects outside an imported image of this very
//! registry and repository.

use shoal_core::{Digest, RepoName};

use super::Mirror;
use crate::store::meta::{tag_key, ImageRecord, ManifestRecord};

/// The live, unrestricted imported images of `registry/name`. A metadata error reads as none
/// (fail closed).
fn images(m: &Mirror, registry: &str, name: &RepoName) -> Vec<ImageRecord> {
    let now = crate::clock::now_ms();
    match m.meta.images() {
        Ok(all) => all
            .into_iter()
            .filter(|i| i.registry == registry && i.repository == name.as_str() && !i.restricted && !i.is_expired(now))
            .collect(),
        Err(e) => {
            tracing::warn!(error = %e, "cannot read imported images; not serving them");
            Vec::new()
        }
    }
}

/// True when `digest` (a manifest or blob) belongs to an imported image of `registry/name` that
/// may be served without the origin.
pub(super) fn allows(m: &Mirror, registry: &str, name: &RepoName, digest: &Digest) -> bool {
    images(m, registry, name).iter().any(|i| i.holds(digest))
}

/// The imported manifest `registry/name:tag` names, when the origin cannot answer and the
/// import is still the last mapping seen for the tag.
pub(super) fn tag(m: &Mirror, registry: &str, name: &RepoName, tag: &str) -> Option<(Digest, ManifestRecord)> {
    let key = tag_key(registry, name.as_str(), tag);
    let image = images(m, registry, name).into_iter().find(|i| i.tag == tag)?;
    let latest = m.meta.tag(&key).ok().flatten().map(|t| t.digest);
    if latest.is_some_and(|d| d != image.digest) {
        return None;
    }
    let record = m.meta.manifest(&image.digest).ok().flatten()?;
    tracing::warn!(tag = key, digest = %image.digest, "origin unavailable; serving the imported image");
    Some((image.digest, record))
}

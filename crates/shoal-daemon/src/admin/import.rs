//! `POST /import`: images from an archive (`shoal import`) into the store, all or nothing.
//!
//! The upload (framed as `wire` says) is taken in three steps, and the store changes only in
//! the last: (1) the header is checked whole — every manifest hashes to its digest and parses,
//! every tag names a registry this daemon mirrors, every config and layer an image needs is in
//! the upload or already complete in the store, every size is bounded — and room is reserved
//! under the cache quota; (2) every blob is written to a staging directory, hashed (sha256, and
//! BLAKE3 per piece so peers can fetch it from here) and compared with its digest; (3) only then
//! each blob goes through the store's complete-blob path (recorded verified, synced, moved into
//! place, recorded complete), then the manifests, the tag mappings and the image records. A bad
//! upload leaves nothing: the staging directory goes with the request.
//!
//! It never trusts the CLI's own checks, and decides nothing about who may pull (see
//! `mirror::imported`).

use std::collections::{BTreeMap, HashMap};
use std::sync::Arc;

use axum::body::Body;
use axum::extract::State;
use axum::Json;
use futures::TryStreamExt;
use shoal_core::{Digest, PieceDigest, PieceHasher, PieceLayout, Reference, RepoName};
use tokio::io::{AsyncRead, AsyncReadExt, AsyncWriteExt};

use super::manifest::{refs, Refs};
use super::wire::{ImportBlob, ImportHeader, ImportReport, MAX_BLOBS, MAX_HEADER, MAX_IMAGES, MAX_MANIFESTS};
use super::{Admin, AdminError};
use crate::clock::now_ms;
use crate::hash::Hasher;
use crate::store::meta::{tag_key, BlobRecord, BlobState, Durability, ImageRecord, ManifestRecord, TagRecord};
use crate::store::paths::Paths;

/// Longest time to live, seconds (ten years).
const MAX_TTL_SECS: u64 = 10 * 365 * 86_400;
/// Deepest nesting of indexes.
const MAX_DEPTH: usize = 3;
/// Read buffer while staging a blob.
const CHUNK: usize = 1 << 20;

/// What a checked header will write.
struct Plan {
    images: Vec<ImageRecord>,
    manifests: Vec<(Digest, ManifestRecord)>,
    /// Bytes of blobs the store does not hold yet.
    new_bytes: u64,
}

/// The handler: check, stage, commit.
pub(super) async fn handle(State(admin): State<Arc<Admin>>, body: Body) -> Result<Json<ImportReport>, AdminError> {
    let _permit = admin
        .imports
        .clone()
        .try_acquire_owned()
        .map_err(|_| AdminError::Busy("another import is running; try again when it is done".into()))?;
    let stream = body.into_data_stream().map_err(std::io::Error::other);
    let mut reader = tokio_util::io::StreamReader::new(stream);
    let header = read_header(&mut reader).await?;
    let plan = plan(&admin, &header, now_ms())?;
    let space = admin.tasks().space().clone();
    let size = plan.new_bytes;
    let reservation = tokio::task::spawn_blocking(move || space.reserve(size))
        .await
        .map_err(|e| AdminError::Store(e.to_string()))?
        .map_err(|e| AdminError::NoRoom(format!("the cache cannot hold the import: {e}")))?;
    let staging = Staging::new(admin.tasks().paths())?;
    let mut staged = Vec::with_capacity(header.blobs.len());
    for blob in &header.blobs {
        staged.push((*blob, stage(&mut reader, &staging, blob).await?));
    }
    let mut rest = [0u8; 1];
    if reader.read(&mut rest).await.map_err(cut_short)? != 0 {
        return Err(AdminError::Invalid("the upload goes on after its last blob".into()));
    }
    let admin2 = admin.clone();
    let report = tokio::task::spawn_blocking(move || commit(&admin2, &staging, staged, plan))
        .await
        .map_err(|e| AdminError::Store(e.to_string()))??;
    reservation.commit();
    tracing::info!(images = ?report.images, blobs = report.blobs_written, bytes = report.bytes_written, "imported");
    Ok(Json(report))
}

fn cut_short(e: std::io::Error) -> AdminError {
    AdminError::Invalid(format!("the upload broke off: {e}"))
}

async fn read_header(reader: &mut (impl AsyncRead + Unpin)) -> Result<ImportHeader, AdminError> {
    let len = reader.read_u32().await.map_err(cut_short)?;
    if len > MAX_HEADER {
        return Err(AdminError::Invalid(format!("import header of {len} bytes, more than {MAX_HEADER}")));
    }
    let mut buf = vec![0u8; len as usize];
    reader.read_exact(&mut buf).await.map_err(cut_short)?;
    serde_json::from_slice(&buf).map_err(|e| AdminError::Invalid(format!("import header: {e}")))
}

/// Checks the header whole (see the module documentation) against the store as it is now.
fn plan(admin: &Admin, h: &ImportHeader, now: u64) -> Result<Plan, AdminError> {
    let invalid = AdminError::Invalid;
    if h.images.is_empty() || h.images.len() > MAX_IMAGES {
        return Err(invalid(format!("{} images: an import names 1 to {MAX_IMAGES}", h.images.len())));
    }
    if h.manifests.len() > MAX_MANIFESTS || h.blobs.len() > MAX_BLOBS {
        return Err(invalid(format!("more than {MAX_MANIFESTS} manifests or {MAX_BLOBS} blobs")));
    }
    let ttl = h.ttl_secs.map(|s| if s == 0 || s > MAX_TTL_SECS { Err(s) } else { Ok(s) }).transpose();
    let ttl = ttl.map_err(|s| invalid(format!("time to live of {s} s: 1 s to {MAX_TTL_SECS} s")))?;
    let max = admin.mirror.max_blob_size;
    let mut blobs = HashMap::new();
    for b in &h.blobs {
        PieceLayout::bounded(b.size, max).map_err(|e| invalid(format!("blob {}: {e}", b.digest)))?;
        if blobs.insert(b.digest, b.size).is_some() {
            return Err(invalid(format!("blob {} is in the upload twice", b.digest)));
        }
    }
    let mut manifests = BTreeMap::new();
    for m in &h.manifests {
        let parsed = refs(&m.digest, &m.media_type, m.body.as_bytes()).map_err(|e| invalid(e.to_string()))?;
        let record = ManifestRecord { media_type: m.media_type.clone(), body: m.body.as_bytes().to_vec() };
        if manifests.insert(m.digest, (record, parsed)).is_some() {
            return Err(invalid(format!("manifest {} is in the upload twice", m.digest)));
        }
    }
    let held = |d: &Digest, size: u64| -> Result<bool, AdminError> {
        Ok(admin.mirror.meta.blob(d)?.is_some_and(|r| r.is_complete() && r.layout.size == size))
    };
    let mut images = Vec::new();
    let mut used = HashMap::new();
    for image in &h.images {
        let (walked, needed) = walk(&image.digest, &manifests)?;
        for (digest, want) in &needed {
            match blobs.get(digest) {
                Some(got) if got != want => {
                    return Err(invalid(format!("blob {digest} is {got} bytes in the upload, {want} in its manifest")))
                }
                Some(_) => {}
                None if held(digest, *want)? => {}
                None => return Err(invalid(format!("blob {digest} of {}:{} is missing", image.repository, image.tag))),
            }
            used.insert(*digest, *want);
        }
        let mut record = record(admin, h, image, now, ttl)?;
        record.media_type = manifests[&image.digest].0.media_type.clone();
        record.manifests = walked;
        record.size = needed.iter().map(|(_, s)| s).sum();
        record.blobs = needed.into_iter().map(|(d, _)| d).collect();
        images.push(record);
    }
    let mut new_bytes = 0;
    for b in &h.blobs {
        if !used.contains_key(&b.digest) {
            return Err(invalid(format!("blob {} belongs to no image of the upload", b.digest)));
        }
        if !held(&b.digest, b.size)? {
            new_bytes += b.size;
        }
    }
    let manifests = manifests.into_iter().map(|(d, (record, _))| (d, record)).collect();
    Ok(Plan { images, manifests, new_bytes })
}

/// The record of one imported tag, its name checked (manifests and blobs filled in by the caller).
fn record(
    admin: &Admin,
    h: &ImportHeader,
    image: &super::wire::ImportImage,
    now: u64,
    ttl: Option<u64>,
) -> Result<ImageRecord, AdminError> {
    let invalid = AdminError::Invalid;
    let registry = admin.mirror.origins.select(Some(&image.registry)).map_err(|_| {
        invalid(format!(
            "registry {:?} of {}:{} is not one this daemon mirrors (add a [[registry]] for it, or name the image with --tag)",
            image.registry, image.repository, image.tag
        ))
    })?;
    RepoName::parse(&image.repository).map_err(|e| invalid(format!("repository {:?}: {e}", image.repository)))?;
    if !matches!(Reference::parse(&image.tag), Ok(Reference::Tag(_))) {
        return Err(invalid(format!("tag {:?} is not a valid tag", image.tag)));
    }
    Ok(ImageRecord {
        registry: registry.name().to_owned(),
        repository: image.repository.clone(),
        tag: image.tag.clone(),
        digest: image.digest,
        media_type: String::new(),
        manifests: Vec::new(),
        blobs: Vec::new(),
        size: 0,
        pinned: h.pin,
        expires: ttl.map(|s| now + s * 1000),
        imported: now,
        restricted: h.restricted,
    })
}

/// The manifests under `top` that the upload carries and the blobs (with sizes) they need, in
/// order. An index needs at least one of its platform manifests; the others may be absent (the
/// archive holds only some platforms).
type Walked = (Vec<Digest>, Vec<(Digest, u64)>);

fn walk(top: &Digest, manifests: &BTreeMap<Digest, (ManifestRecord, Refs)>) -> Result<Walked, AdminError> {
    let invalid = AdminError::Invalid;
    let mut stack = vec![(*top, 0usize)];
    let (mut seen, mut blobs) = (Vec::new(), Vec::<(Digest, u64)>::new());
    while let Some((digest, depth)) = stack.pop() {
        let Some((_, parsed)) = manifests.get(&digest) else {
            return Err(invalid(format!("manifest {digest} is not in the upload")));
        };
        if seen.contains(&digest) || depth > MAX_DEPTH {
            return Err(invalid(format!("manifest {digest} is nested too deep or in a cycle")));
        }
        seen.push(digest);
        match parsed {
            Refs::Image { config, layers } => {
                for d in std::iter::once(config).chain(layers) {
                    if !blobs.iter().any(|(b, _)| *b == d.digest) {
                        blobs.push((d.digest, d.size));
                    }
                }
            }
            Refs::Index(children) => {
                let carried: Vec<_> = children.iter().filter(|c| manifests.contains_key(&c.digest)).collect();
                if carried.is_empty() {
                    return Err(invalid(format!("index {digest} comes with none of its manifests")));
                }
                for c in carried {
                    if manifests[&c.digest].0.body.len() as u64 != c.size {
                        return Err(invalid(format!("manifest {} does not have the size its index says", c.digest)));
                    }
                    stack.push((c.digest, depth + 1));
                }
            }
        }
    }
    Ok((seen, blobs))
}

/// The staging directory of one import, removed (with whatever is left in it) on drop.
struct Staging {
    paths: Paths,
    session: u64,
}

impl Staging {
    fn new(paths: &Paths) -> Result<Self, AdminError> {
        static NEXT: std::sync::atomic::AtomicU64 = std::sync::atomic::AtomicU64::new(0);
        let session = NEXT.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
        let dir = paths.import_session(session);
        let _ = std::fs::remove_dir_all(&dir);
        std::fs::create_dir_all(&dir).map_err(|e| AdminError::Store(format!("{}: {e}", dir.display())))?;
        Ok(Self { paths: paths.clone(), session })
    }

    fn path(&self, digest: &Digest) -> std::path::PathBuf {
        self.paths.staged(self.session, digest)
    }
}

impl Drop for Staging {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(self.paths.import_session(self.session));
    }
}

/// Writes one blob of the upload to its staging file and checks it against its digest; returns
/// its BLAKE3 piece digests.
async fn stage(
    reader: &mut (impl AsyncRead + Unpin),
    staging: &Staging,
    blob: &ImportBlob,
) -> Result<Vec<String>, AdminError> {
    let path = staging.path(&blob.digest);
    let store = |e: std::io::Error| AdminError::Store(format!("{}: {e}", path.display()));
    let mut file = tokio::fs::File::create(&path).await.map_err(store)?;
    let mut pieces = Pieces::new(PieceLayout::for_size(blob.size));
    let mut sha = Hasher::default();
    let mut buf = vec![0u8; CHUNK];
    let mut done = 0u64;
    while done < blob.size {
        let want = (blob.size - done).min(CHUNK as u64) as usize;
        let n = reader.read(&mut buf[..want]).await.map_err(cut_short)?;
        if n == 0 {
            return Err(AdminError::Invalid(format!(
                "the upload ends inside blob {} ({done} of {} bytes)",
                blob.digest, blob.size
            )));
        }
        sha.update(&buf[..n]);
        pieces.update(&buf[..n]);
        file.write_all(&buf[..n]).await.map_err(store)?;
        done += n as u64;
    }
    file.flush().await.map_err(store)?;
    let actual = sha.finish();
    if actual != blob.digest {
        return Err(AdminError::Invalid(format!("blob {}: its bytes hash to {actual}", blob.digest)));
    }
    Ok(pieces.finish())
}

/// BLAKE3 digests of a blob's pieces, fed in order.
struct Pieces {
    layout: PieceLayout,
    index: u32,
    filled: u64,
    hasher: PieceHasher,
    out: Vec<String>,
}

impl Pieces {
    fn new(layout: PieceLayout) -> Self {
        Self { layout, index: 0, filled: 0, hasher: PieceHasher::default(), out: Vec::new() }
    }

    fn update(&mut self, mut data: &[u8]) {
        while !data.is_empty() && self.index < self.layout.count() {
            let left = self.layout.piece(self.index).len() - self.filled;
            let n = (left.min(data.len() as u64)) as usize;
            self.hasher.update(&data[..n]);
            self.filled += n as u64;
            data = &data[n..];
            if self.filled == self.layout.piece(self.index).len() {
                let done: PieceDigest = std::mem::take(&mut self.hasher).finish();
                self.out.push(done.hex());
                (self.index, self.filled) = (self.index + 1, 0);
            }
        }
    }

    fn finish(mut self) -> Vec<String> {
        self.out.resize(self.layout.count() as usize, String::new());
        self.out
    }
}

/// Step 3: every staged blob into the store, then manifests, tags and image records.
fn commit(
    admin: &Admin,
    staging: &Staging,
    staged: Vec<(ImportBlob, Vec<String>)>,
    plan: Plan,
) -> Result<ImportReport, AdminError> {
    static COMMITS: std::sync::Mutex<()> = std::sync::Mutex::new(());
    let _one = COMMITS.lock().unwrap_or_else(|p| p.into_inner());
    let meta = &admin.mirror.meta;
    let tasks = admin.tasks();
    if let Some((b, _)) = staged.iter().find(|(b, _)| tasks.running(&b.digest).is_some()) {
        return Err(AdminError::InUse(format!("blob {} is being downloaded right now; import again later", b.digest)));
    }
    let mut report = ImportReport::default();
    for (blob, piece_digests) in staged {
        let path = staging.path(&blob.digest);
        if meta.blob(&blob.digest)?.is_some_and(|r| r.is_complete()) {
            report.blobs_held += 1;
            continue;
        }
        let mut record = BlobRecord::new(PieceLayout::for_size(blob.size), now_ms());
        record.piece_digests = piece_digests;
        record.state = BlobState::Verified;
        meta.put_blob(&blob.digest, &record, Durability::Sync)?;
        let moved = std::fs::File::open(&path).and_then(|f| tasks.paths().promote_from(&path, &blob.digest, &f));
        if let Err(e) = moved {
            let _ = meta.remove_blob(&blob.digest);
            return Err(AdminError::Store(format!("blob {}: {e}", blob.digest)));
        }
        record.state = BlobState::Complete;
        meta.put_blob(&blob.digest, &record, Durability::Sync)?;
        report.blobs_written += 1;
        report.bytes_written += blob.size;
    }
    for (digest, record) in &plan.manifests {
        meta.put_manifest(digest, record)?;
    }
    for image in &plan.images {
        let key = tag_key(&image.registry, &image.repository, &image.tag);
        let tag = TagRecord { digest: image.digest, media_type: image.media_type.clone(), seen_at_ms: now_ms() };
        meta.put_tag(&key, &tag)?;
        meta.put_image(image)?;
        report.images.push(format!("{key}@{}", image.digest));
    }
    Ok(report)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn piece_digests_do_not_depend_on_how_the_bytes_arrive() {
        let data: Vec<u8> = (0..(5u32 << 20) + 7).map(|i| (i % 251) as u8).collect();
        let layout = PieceLayout::for_size(data.len() as u64);
        let want: Vec<String> = (0..layout.count())
            .map(|i| {
                let r = layout.piece(i);
                PieceDigest::of(&data[r.start as usize..r.end as usize]).hex()
            })
            .collect();
        for chunk in [1000, 1 << 20, 3 << 20, data.len()] {
            let mut p = Pieces::new(layout);
            data.chunks(chunk).for_each(|c| p.update(c));
            assert_eq!(p.finish(), want, "chunks of {chunk}");
        }
    }

    #[tokio::test]
    async fn headers_are_bounded_before_they_are_read() {
        let mut big = &(MAX_HEADER + 1).to_be_bytes()[..];
        assert!(matches!(read_header(&mut big).await, Err(AdminError::Invalid(m)) if m.contains("more than")));
        let mut short = &[0u8, 0, 0, 9, b'{'][..];
        assert!(matches!(read_header(&mut short).await, Err(AdminError::Invalid(m)) if m.contains("broke off")));
        let body = br#"{"images":[],"manifests":[],"blobs":[]}"#;
        let mut ok = (body.len() as u32).to_be_bytes().to_vec();
        ok.extend_from_slice(body);
        assert!(read_header(&mut ok.as_slice()).await.unwrap().images.is_empty());
    }
}

//! `GET /cache`, `POST /cache/rm`, `POST /cache/pin`: the cache as the operator manages it.
//!
//! A target is a blob digest (`sha256:<hex>`) or an imported image (`registry/repository:tag`).
//! Removing a blob that is being served or downloaded, or that a pin keeps, is refused (409);
//! removing an image forgets it and removes the blobs no other imported image needs (those being
//! read stay as ordinary cache entries). Nothing here evicts for room: that is `store::space`.

use std::collections::HashSet;
use std::sync::Arc;

use axum::extract::State;
use axum::Json;
use shoal_core::Digest;

use super::wire::{CacheBlob, CacheChange, CacheImage, CacheListing, CacheTarget};
use super::{Admin, AdminError};
use crate::clock::now_ms;
use crate::store::imports::durable_pins;
use crate::store::meta::{tag_key, BlobState, ImageRecord};

/// `GET /cache`.
pub(super) async fn list(State(admin): State<Arc<Admin>>) -> Result<Json<CacheListing>, AdminError> {
    let meta = &admin.mirror.meta;
    let images = meta.images()?;
    let pinned = durable_pins(&images, &meta.blob_pins()?, now_ms());
    let in_use: HashSet<Digest> = admin.tasks().space().pins().with_locked(|m| m.keys().copied().collect());
    let mut blobs: Vec<CacheBlob> = meta
        .blobs()?
        .into_iter()
        .map(|(digest, r)| CacheBlob {
            digest,
            size: r.layout.size,
            state: match r.state {
                BlobState::Complete => "complete",
                BlobState::Verified => "verified",
                BlobState::Partial { .. } => "partial",
            }
            .to_owned(),
            pinned: pinned.contains(&digest),
            in_use: in_use.contains(&digest),
            last_access: r.last_access,
            expires: removed_at(&images, &digest),
        })
        .collect();
    blobs.sort_by_key(|b| std::cmp::Reverse(b.last_access));
    let images = images
        .into_iter()
        .map(|i| CacheImage {
            name: i.key(),
            digest: i.digest,
            size: i.size,
            blobs: i.blobs.len(),
            pinned: i.pinned,
            expires: i.expires,
            imported: i.imported,
            restricted: i.restricted,
        })
        .collect();
    Ok(Json(CacheListing { images, blobs }))
}

/// When the end of imported images' times to live removes `digest`: the latest expiry of the
/// images holding it, none if one of them never expires (or none holds it).
fn removed_at(images: &[ImageRecord], digest: &Digest) -> Option<u64> {
    let holders: Vec<_> = images.iter().filter(|i| i.blobs.contains(digest)).collect();
    if holders.is_empty() || holders.iter().any(|i| i.expires.is_none()) {
        return None;
    }
    holders.iter().filter_map(|i| i.expires).max()
}

/// `POST /cache/rm`.
pub(super) async fn remove(
    State(admin): State<Arc<Admin>>,
    Json(target): Json<CacheTarget>,
) -> Result<Json<CacheChange>, AdminError> {
    let meta = admin.mirror.meta.clone();
    let images = meta.images()?;
    if let Ok(digest) = target.target.parse::<Digest>() {
        if let Some(i) = images.iter().find(|i| i.pinned && !i.is_expired(now_ms()) && i.blobs.contains(&digest)) {
            return Err(AdminError::InUse(format!("blob {digest} is pinned by image {}; unpin it first", i.key())));
        }
        if meta.blob_pins()?.contains(&digest) {
            return Err(AdminError::InUse(format!("blob {digest} is pinned; unpin it first")));
        }
        return remove_blob(&admin, digest).await.map(|()| Json(CacheChange { images: vec![], blobs: vec![digest] }));
    }
    let image = find_image(&admin, &images, &target.target)?;
    meta.remove_image(&image.key())?;
    let others: HashSet<Digest> = images
        .iter()
        .filter(|i| i.key() != image.key())
        .flat_map(|i| i.blobs.iter().copied())
        .chain(meta.blob_pins()?)
        .collect();
    let blobs: Vec<Digest> = image.blobs.iter().filter(|d| !others.contains(d)).copied().collect();
    let space = admin.tasks().space().clone();
    let removed = tokio::task::spawn_blocking(move || space.remove(&blobs))
        .await
        .map_err(|e| AdminError::Store(e.to_string()))??;
    tracing::info!(image = %image.key(), blobs = removed.len(), "imported image removed");
    Ok(Json(CacheChange { images: vec![image.key()], blobs: removed }))
}

/// Removes one blob that no pin keeps; refused while it is served or downloaded.
async fn remove_blob(admin: &Admin, digest: Digest) -> Result<(), AdminError> {
    let meta = &admin.mirror.meta;
    let Some(record) = meta.blob(&digest)? else {
        return Err(AdminError::NotFound(format!("the cache holds no blob {digest}")));
    };
    let busy = || AdminError::InUse(format!("blob {digest} is being served or downloaded; try again later"));
    if admin.tasks().running(&digest).is_some() {
        return Err(busy());
    }
    if !record.is_complete() {
        let in_use = admin.tasks().space().pins().with_locked(|m| m.contains_key(&digest));
        if in_use {
            return Err(busy());
        }
        meta.remove_blob(&digest)?;
        let _ = std::fs::remove_file(admin.tasks().paths().partial(&digest));
        return Ok(());
    }
    let space = admin.tasks().space().clone();
    let removed = tokio::task::spawn_blocking(move || space.remove(&[digest]))
        .await
        .map_err(|e| AdminError::Store(e.to_string()))??;
    if removed.is_empty() {
        return Err(busy());
    }
    tracing::info!(%digest, "blob removed from the cache");
    Ok(())
}

/// `POST /cache/pin` (`pin: false` unpins).
pub(super) async fn pin(
    State(admin): State<Arc<Admin>>,
    Json(target): Json<CacheTarget>,
) -> Result<Json<CacheChange>, AdminError> {
    let meta = &admin.mirror.meta;
    if let Ok(digest) = target.target.parse::<Digest>() {
        if target.pin && !meta.blob(&digest)?.is_some_and(|r| r.is_complete()) {
            return Err(AdminError::NotFound(format!("the cache holds no complete blob {digest}")));
        }
        meta.set_blob_pin(&digest, target.pin)?;
        return Ok(Json(CacheChange { images: vec![], blobs: vec![digest] }));
    }
    let mut image = find_image(&admin, &meta.images()?, &target.target)?;
    image.pinned = target.pin;
    meta.put_image(&image)?;
    Ok(Json(CacheChange { images: vec![image.key()], blobs: vec![] }))
}

/// The imported image `registry/repository:tag`, its registry named as the daemon names it or
/// by its host.
fn find_image(admin: &Admin, images: &[ImageRecord], target: &str) -> Result<ImageRecord, AdminError> {
    let not_found =
        || AdminError::NotFound(format!("no imported image {target:?} (a digest or registry/repository:tag)"));
    let (registry, rest) = target.split_once('/').ok_or_else(not_found)?;
    let (repository, tag) = rest.rsplit_once(':').ok_or_else(not_found)?;
    let registry = admin.mirror.origins.select(Some(registry)).map(|o| o.name().to_owned()).unwrap_or(registry.into());
    let key = tag_key(&registry, repository, tag);
    images.iter().find(|i| i.key() == key).cloned().ok_or_else(not_found)
}

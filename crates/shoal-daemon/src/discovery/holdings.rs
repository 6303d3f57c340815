//! What this node has advertised, kept in step with the metadata store: every complete blob at
//! start-up, each download as it starts and completes, and a withdrawal for every blob whose
//! record is gone (evicted, or a failed download dropped). It decides nothing about downloads.

use std::collections::HashSet;
use std::sync::{Arc, Mutex, MutexGuard};

use shoal_core::Digest;

use super::{Discovery, DiscoveryError};
use crate::store::meta::{MetaError, MetaStore};

/// This node's advertisements through one [`Discovery`], of the blobs in one metadata store.
pub struct Holdings {
    discovery: Arc<dyn Discovery>,
    meta: Arc<dyn MetaStore>,
    advertised: Mutex<HashSet<Digest>>,
}

impl Holdings {
    /// Nothing advertised yet.
    pub fn new(discovery: Arc<dyn Discovery>, meta: Arc<dyn MetaStore>) -> Self {
        Self { discovery, meta, advertised: Mutex::new(HashSet::new()) }
    }

    /// The discovery these holdings are advertised through.
    pub fn discovery(&self) -> &Arc<dyn Discovery> {
        &self.discovery
    }

    /// Advertises `blob` (again: a download that completes re-advertises what it advertised
    /// when it started, which refreshes the record).
    pub async fn advertise(&self, blob: &Digest) -> Result<(), DiscoveryError> {
        self.lock().insert(*blob);
        self.discovery.advertise(blob).await
    }

    /// Withdraws `blob`.
    pub async fn withdraw(&self, blob: &Digest) -> Result<(), DiscoveryError> {
        self.lock().remove(blob);
        self.discovery.withdraw(blob).await
    }

    /// At start-up: advertises every complete blob. Returns how many; a blob that could not be
    /// advertised is logged and left to the periodic re-publication.
    pub async fn advertise_held(&self) -> Result<usize, MetaError> {
        let complete: Vec<Digest> =
            self.meta.blobs()?.into_iter().filter(|(_, r)| r.is_complete()).map(|(d, _)| d).collect();
        for blob in &complete {
            if let Err(e) = self.advertise(blob).await {
                tracing::debug!(%blob, error = %e, "advertising a held blob failed");
            }
        }
        Ok(complete.len())
    }

    /// Withdraws every advertised blob the metadata store no longer has a record of (evicted,
    /// or a failed download dropped). Returns how many.
    pub async fn withdraw_gone(&self) -> Result<usize, MetaError> {
        let advertised: Vec<Digest> = self.lock().iter().copied().collect();
        let mut gone = Vec::new();
        for blob in advertised {
            if self.meta.blob(&blob)?.is_none() {
                gone.push(blob);
            }
        }
        for blob in &gone {
            if let Err(e) = self.withdraw(blob).await {
                tracing::debug!(%blob, error = %e, "withdrawing an evicted blob failed");
            }
        }
        Ok(gone.len())
    }

    fn lock(&self) -> MutexGuard<'_, HashSet<Digest>> {
        self.advertised.lock().unwrap_or_else(|p| p.into_inner())
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::discovery::memory::MemoryNetwork;
    use crate::discovery::Holder;
    use crate::store::meta::{BlobRecord, BlobState, Durability, MemMeta};
    use shoal_core::PieceLayout;

    fn holder(name: &str, port: u16) -> Holder {
        Holder { host_id: name.into(), addr: ([127, 0, 0, 1], port).into() }
    }

    fn put(meta: &MemMeta, data: &[u8], complete: bool) -> Digest {
        let digest = Digest::of(data);
        let mut record = BlobRecord::new(PieceLayout::for_size(data.len() as u64), 0);
        if complete {
            record.state = BlobState::Complete;
        }
        meta.put_blob(&digest, &record, Durability::Sync).unwrap();
        digest
    }

    #[tokio::test]
    async fn advertises_complete_blobs_at_start_up_and_withdraws_evicted_ones() {
        let network = MemoryNetwork::default();
        let meta = Arc::new(MemMeta::default());
        let me = Holdings::new(Arc::new(network.join(holder("me", 1))), meta.clone());
        let other = network.join(holder("other", 2));
        let (kept, evicted, partial) =
            (put(&meta, b"kept", true), put(&meta, b"evicted", true), put(&meta, b"p", false));
        assert_eq!(me.advertise_held().await.unwrap(), 2);
        assert_eq!(other.holders(&kept).await.unwrap(), vec![holder("me", 1)]);
        assert!(other.holders(&partial).await.unwrap().is_empty(), "a partial blob after a restart is not served");

        meta.remove_blob(&evicted).unwrap();
        assert_eq!(other.holders(&evicted).await.unwrap().len(), 1);
        assert_eq!(me.withdraw_gone().await.unwrap(), 1);
        assert!(other.holders(&evicted).await.unwrap().is_empty());
        assert_eq!(other.holders(&kept).await.unwrap().len(), 1);
        assert_eq!(me.withdraw_gone().await.unwrap(), 0, "withdrawn once");
    }
}

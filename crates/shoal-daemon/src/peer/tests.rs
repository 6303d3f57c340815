//! Two real QUIC endpoints on loopback: pieces flow, tokens are checked, faults show.

use std::io::Write;
use std::sync::Arc;

use shoal_core::{Bitmap, ByteRange, Digest, PieceLayout};
use tokio::sync::watch;

use super::client::{endpoint, PeerClient};
use super::server::{serve, PeerLimits, ServerCtx};
use super::{PeerError, PieceStore};
use crate::limits::Limiter;
use crate::seeding::Seeds;
use crate::writer::Progress;
use shoal_core::seeding::SeedingConfig;

const MIB: u64 = 1 << 20;

struct OneBlob {
    digest: Digest,
    layout: PieceLayout,
    file: Arc<std::fs::File>,
    _dir: tempfile::TempDir,
}

impl OneBlob {
    fn new(data: &[u8]) -> Self {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("blob");
        std::fs::File::create(&path).unwrap().write_all(data).unwrap();
        let file = Arc::new(std::fs::File::open(&path).unwrap());
        Self { digest: Digest::of(data), layout: PieceLayout::for_size(data.len() as u64), file, _dir: dir }
    }
}

impl PieceStore for OneBlob {
    fn piece(&self, task: &Digest, index: u32) -> Option<(Arc<std::fs::File>, ByteRange)> {
        (*task == self.digest && index < self.layout.count()).then(|| (self.file.clone(), self.layout.piece(index)))
    }
    fn have(&self, task: &Digest) -> Option<(Bitmap, Option<watch::Receiver<Progress>>)> {
        let mut b = Bitmap::new(self.layout.count());
        (0..self.layout.count()).for_each(|i| {
            b.set(i);
        });
        (*task == self.digest).then_some((b, None))
    }
}

fn start_server(store: Arc<OneBlob>, token: &[u8], corrupt: bool) -> std::net::SocketAddr {
    start_seeding(store, token, corrupt, Arc::new(Seeds::new(SeedingConfig::default())))
}

fn start_seeding(store: Arc<OneBlob>, token: &[u8], corrupt: bool, seeds: Arc<Seeds>) -> std::net::SocketAddr {
    let ep = endpoint("127.0.0.1:0".parse().unwrap()).unwrap();
    let addr = ep.local_addr().unwrap();
    let ctx = ServerCtx {
        host_id: "parent".into(),
        token: token.to_vec(),
        store,
        upload: Arc::new(Limiter::unlimited()),
        uploaded: Default::default(),
        seeds,
        corrupt,
    };
    tokio::spawn(serve(ep, Arc::new(ctx), PeerLimits::default()));
    addr
}

fn client(token: &[u8]) -> PeerClient {
    named_client("child", token)
}

fn named_client(name: &str, token: &[u8]) -> PeerClient {
    let ep = endpoint("127.0.0.1:0".parse().unwrap()).unwrap();
    PeerClient::new(ep, name.into(), token.to_vec(), Arc::new(Limiter::unlimited()))
}

fn data(len: u64) -> Vec<u8> {
    (0..len).map(|i| (i * 7 % 253) as u8).collect()
}

#[tokio::test]
async fn serves_pieces_to_members_only() {
    let blob = Arc::new(OneBlob::new(&data(3 * MIB + 5)));
    let addr = start_server(blob.clone(), b"secret", false);
    let c = client(b"secret");
    for i in 0..blob.layout.count() {
        let want = blob.layout.piece(i);
        let bytes = c.fetch_piece(addr, &blob.digest, i, want.len()).await.unwrap();
        assert_eq!(&bytes[..], &data(3 * MIB + 5)[want.start as usize..want.end as usize]);
    }
    assert!(matches!(c.fetch_piece(addr, &blob.digest, 99, MIB).await, Err(PeerError::NotFound)));
    assert!(matches!(c.fetch_piece(addr, &blob.digest, 0, 5).await, Err(PeerError::Length { .. })));
    let mut have = c.watch_have(addr, &blob.digest).await.unwrap();
    let update = have.next().await.unwrap();
    assert!(update.complete);
    assert_eq!(Bitmap::from_bytes(4, &update.have).unwrap().count(), 4);

    let intruder = client(b"wrong");
    assert!(matches!(intruder.fetch_piece(addr, &blob.digest, 0, MIB).await, Err(PeerError::Unauthorized(_))));
}

#[tokio::test]
async fn the_fault_switch_corrupts_what_is_served() {
    let blob = Arc::new(OneBlob::new(&data(MIB)));
    let addr = start_server(blob.clone(), b"t", true);
    let bytes = client(b"t").fetch_piece(addr, &blob.digest, 0, MIB).await.unwrap();
    assert_ne!(Digest::of(&bytes), blob.digest);
}

#[tokio::test]
async fn a_seeded_blob_goes_to_one_child_per_piece_at_a_time() {
    let blob = Arc::new(OneBlob::new(&data(2 * MIB)));
    let seeds = Arc::new(Seeds::new(SeedingConfig { window_ms: 60_000 }));
    seeds.mark(&blob.digest);
    let addr = start_seeding(blob.clone(), b"t", false, seeds);
    let (a, b) = (named_client("a", b"t"), named_client("b", b"t"));
    assert!(a.fetch_piece(addr, &blob.digest, 0, MIB).await.is_ok());
    assert!(matches!(b.fetch_piece(addr, &blob.digest, 0, MIB).await, Err(PeerError::Busy)), "b gets piece 0 from a");
    assert!(b.fetch_piece(addr, &blob.digest, 1, MIB).await.is_ok(), "piece 1 is b's");
    assert!(a.fetch_piece(addr, &blob.digest, 0, MIB).await.is_ok(), "a may retry");
}

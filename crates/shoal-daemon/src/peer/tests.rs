//! Two real QUIC endpoints on loopback: pieces flow, tokens are checked, faults show.

use std::io::Write;
use std::sync::Arc;

use shoal_core::{Bitmap, ByteRange, Digest, PieceLayout};
use tokio::sync::watch;

use super::client::{endpoint, PeerClient};
use super::server::{serve, PeerLimits, ServerCtx};
use super::{PeerError, PieceStore};
use crate::download::writer::Progress;
use crate::limits::Limiter;
use crate::peer::seeding::Seeds;
use crate::store::meta::{BlobRecord, BlobState, Durability, MemMeta, MetaStore};
use shoal_core::seeding::SeedingConfig;
use shoal_proto::peer::Hello;

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
    start_with_meta(store, token, corrupt, Arc::new(MemMeta::default()))
}

fn start_with_meta(store: Arc<OneBlob>, token: &[u8], corrupt: bool, meta: Arc<MemMeta>) -> std::net::SocketAddr {
    let seeds = Arc::new(Seeds::new(SeedingConfig::default()));
    start_full(store, token, corrupt, seeds, PeerLimits::default(), meta)
}

fn start_full(
    store: Arc<OneBlob>,
    token: &[u8],
    corrupt: bool,
    seeds: Arc<Seeds>,
    limits: PeerLimits,
    meta: Arc<MemMeta>,
) -> std::net::SocketAddr {
    let ep = endpoint("127.0.0.1:0".parse().unwrap()).unwrap();
    let addr = ep.local_addr().unwrap();
    let ctx = ServerCtx {
        host_id: "parent".into(),
        token: token.to_vec(),
        store,
        meta,
        upload: Arc::new(Limiter::unlimited()),
        uploaded: Default::default(),
        seeds,
        corrupt,
        site: None,
    };
    tokio::spawn(serve(ep, Arc::new(ctx), limits));
    addr
}

fn start_seeding(store: Arc<OneBlob>, token: &[u8], corrupt: bool, seeds: Arc<Seeds>) -> std::net::SocketAddr {
    start_limited(store, token, corrupt, seeds, PeerLimits::default())
}

fn start_limited(
    store: Arc<OneBlob>,
    token: &[u8],
    corrupt: bool,
    seeds: Arc<Seeds>,
    limits: PeerLimits,
) -> std::net::SocketAddr {
    start_full(store, token, corrupt, seeds, limits, Arc::new(MemMeta::default()))
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
        let (bytes, digest) = c.fetch_piece(addr, &blob.digest, i, want.len(), &Default::default()).await.unwrap();
        assert_eq!(&bytes[..], &data(3 * MIB + 5)[want.start as usize..want.end as usize]);
        assert_eq!(digest, shoal_core::PieceDigest::of(&bytes));
    }
    assert!(matches!(c.fetch_piece(addr, &blob.digest, 99, MIB, &Default::default()).await, Err(PeerError::NotFound)));
    assert!(matches!(
        c.fetch_piece(addr, &blob.digest, 0, 5, &Default::default()).await,
        Err(PeerError::Length { .. })
    ));
    let mut have = c.watch_have(addr, &blob.digest).await.unwrap();
    let update = have.next().await.unwrap();
    assert!(update.complete);
    assert_eq!(Bitmap::from_bytes(4, &update.have).unwrap().count(), 4);

    let intruder = client(b"wrong");
    assert!(matches!(
        intruder.fetch_piece(addr, &blob.digest, 0, MIB, &Default::default()).await,
        Err(PeerError::Unauthorized(_))
    ));
}

#[tokio::test]
async fn the_fault_switch_corrupts_what_is_served() {
    let blob = Arc::new(OneBlob::new(&data(MIB)));
    let addr = start_server(blob.clone(), b"t", true);
    let (bytes, digest) = client(b"t").fetch_piece(addr, &blob.digest, 0, MIB, &Default::default()).await.unwrap();
    assert_ne!(Digest::of(&bytes), blob.digest);
    assert_eq!(digest, shoal_core::PieceDigest::of(&bytes), "the digest is of what arrived");
}

#[tokio::test]
async fn a_seeded_blob_goes_to_one_child_per_piece_at_a_time() {
    let blob = Arc::new(OneBlob::new(&data(2 * MIB)));
    let seeds = Arc::new(Seeds::new(SeedingConfig { window_ms: 60_000 }));
    seeds.mark(&blob.digest);
    let addr = start_seeding(blob.clone(), b"t", false, seeds);
    let (a, b) = (named_client("a", b"t"), named_client("b", b"t"));
    assert!(a.fetch_piece(addr, &blob.digest, 0, MIB, &Default::default()).await.is_ok());
    assert!(
        matches!(b.fetch_piece(addr, &blob.digest, 0, MIB, &Default::default()).await, Err(PeerError::Busy)),
        "b gets piece 0 from a"
    );
    assert!(b.fetch_piece(addr, &blob.digest, 1, MIB, &Default::default()).await.is_ok(), "piece 1 is b's");
    assert!(a.fetch_piece(addr, &blob.digest, 0, MIB, &Default::default()).await.is_ok(), "a may retry");
}

/// A connection that completed TLS (and, with `token`, the membership proof) by hand.
async fn raw_connection(addr: std::net::SocketAddr, token: Option<&[u8]>) -> Result<quinn::Connection, String> {
    let ep = endpoint("127.0.0.1:0".parse().unwrap()).unwrap();
    let conn = ep.connect(addr, super::tls::SERVER_NAME).unwrap().await.map_err(|e| e.to_string())?;
    let (mut send, mut recv) = conn.open_bi().await.unwrap();
    let Some(token) = token else {
        // A hello announced as 1000 bytes, of which 10 ever come.
        send.write_all(&1000u32.to_be_bytes()).await.unwrap();
        send.write_all(&[0; 10]).await.unwrap();
        std::mem::forget((send, recv));
        return Ok(conn);
    };
    let secret = super::exporter(&conn).unwrap();
    let hello = Hello { host_id: "raw".into(), proof: super::auth::prove(token, super::auth::Role::Client, &secret) };
    super::frame::write(&mut send, &hello).await.unwrap();
    let _ = send.finish();
    let _: Hello = super::frame::read(&mut recv).await.unwrap();
    Ok(conn)
}

#[tokio::test]
async fn strangers_get_one_stream_and_their_number_is_capped() {
    let blob = Arc::new(OneBlob::new(&data(MIB)));
    let limits = PeerLimits { max_unproven: 2, ..PeerLimits::default() };
    let addr = start_limited(blob, b"t", false, Arc::new(Seeds::new(SeedingConfig::default())), limits);
    let a = raw_connection(addr, None).await.unwrap();
    let second = tokio::time::timeout(std::time::Duration::from_millis(500), a.open_bi()).await;
    assert!(second.is_err(), "a second stream before the proof");
    let _b = raw_connection(addr, None).await.unwrap();
    assert!(raw_connection(addr, None).await.is_err(), "a third unproven handshake is refused");
    let member = raw_connection(addr, Some(b"t")).await;
    assert!(member.is_err(), "members wait for a slot too");
}

#[tokio::test]
async fn a_stream_without_a_complete_request_is_reset() {
    let blob = Arc::new(OneBlob::new(&data(MIB)));
    let limits = PeerLimits { request_timeout: std::time::Duration::from_millis(300), ..PeerLimits::default() };
    let addr = start_limited(blob.clone(), b"t", false, Arc::new(Seeds::new(SeedingConfig::default())), limits);
    let conn = raw_connection(addr, Some(b"t")).await.unwrap();
    let (mut send, mut recv) = conn.open_bi().await.unwrap();
    send.write_all(&[0, 0]).await.unwrap();
    let started = std::time::Instant::now();
    let mut buf = [0u8; 16];
    let read = tokio::time::timeout(std::time::Duration::from_secs(3), recv.read(&mut buf)).await.unwrap();
    assert!(matches!(read, Err(quinn::ReadError::Reset(_))), "{read:?}");
    assert!(started.elapsed() >= std::time::Duration::from_millis(250));
    // The connection itself still serves.
    let c = client(b"t");
    assert!(c.fetch_piece(addr, &blob.digest, 0, MIB, &Default::default()).await.is_ok());
}

/// A record of `blob` in `meta` holding `pieces`, with their true digests (complete: all).
fn record(meta: &MemMeta, blob: &OneBlob, bytes: &[u8], pieces: &[u32], complete: bool) {
    let mut r = BlobRecord::new(blob.layout, 0);
    let mut have = Bitmap::new(blob.layout.count());
    for &i in pieces {
        let p = blob.layout.piece(i);
        r.piece_digests[i as usize] = shoal_core::PieceDigest::of(&bytes[p.start as usize..p.end as usize]).hex();
        have.set(i);
    }
    r.state = if complete { BlobState::Complete } else { BlobState::Partial { bitmap: have.as_bytes().to_vec() } };
    meta.put_blob(&blob.digest, &r, Durability::Sync).unwrap();
}

#[tokio::test]
async fn holders_answer_with_the_digests_they_have() {
    let bytes = data(3 * MIB + 5);
    let blob = Arc::new(OneBlob::new(&bytes));
    let meta = Arc::new(MemMeta::default());
    record(&meta, &blob, &bytes, &[0, 1, 2, 3], true);
    let addr = start_with_meta(blob.clone(), b"t", false, meta.clone());
    let c = client(b"t");
    let table = c.fetch_digests(addr, &blob.digest, 1 << 40).await.unwrap();
    assert!(table.complete);
    assert_eq!(table.layout, blob.layout);
    for (i, d) in table.digests.iter().enumerate() {
        let p = blob.layout.piece(i as u32);
        assert_eq!(*d, Some(shoal_core::PieceDigest::of(&bytes[p.start as usize..p.end as usize])), "piece {i}");
    }

    record(&meta, &blob, &bytes, &[0, 2], false);
    let table = c.fetch_digests(addr, &blob.digest, 1 << 40).await.unwrap();
    assert!(!table.complete);
    let present: Vec<bool> = table.digests.iter().map(Option::is_some).collect();
    assert_eq!(present, [true, false, true, false]);

    let unknown = Digest::of(b"not here");
    assert!(matches!(c.fetch_digests(addr, &unknown, 1 << 40).await, Err(PeerError::NotFound)));
    assert!(
        matches!(c.fetch_digests(addr, &blob.digest, MIB).await, Err(PeerError::Stream(_))),
        "a blob larger than max_size is refused"
    );
    assert!(matches!(
        client(b"wrong").fetch_digests(addr, &blob.digest, 1 << 40).await,
        Err(PeerError::Unauthorized(_))
    ));
}

#[tokio::test]
async fn a_large_table_comes_in_bounded_pages() {
    // A 320 GiB blob: 20000 pieces of 16 MiB, more than one page. Only its record exists.
    let layout = PieceLayout::for_size(20_000 * 16 * MIB);
    assert!(layout.count() > super::server::DIGESTS_PER_PAGE);
    let digest = Digest::of(b"huge");
    let mut r = BlobRecord::new(layout, 0);
    for (i, d) in r.piece_digests.iter_mut().enumerate() {
        *d = shoal_core::PieceDigest::of(&i.to_be_bytes()).hex();
    }
    r.state = BlobState::Complete;
    let meta = Arc::new(MemMeta::default());
    meta.put_blob(&digest, &r, Durability::Sync).unwrap();
    let addr = start_with_meta(Arc::new(OneBlob::new(b"unrelated")), b"t", false, meta);
    let table = client(b"t").fetch_digests(addr, &digest, 1 << 40).await.unwrap();
    assert_eq!(table.digests.len(), 20_000);
    assert_eq!(table.digests[19_999], Some(shoal_core::PieceDigest::of(&19_999usize.to_be_bytes())));
    assert!(table.digests.iter().all(Option::is_some));
}

//! Piece assembly: writes a blob's bytes into its partial file, piece by piece, and makes the
//! blob complete only after the whole file hashes to its digest.
//!
//! The writer runs on a blocking thread of its own (file writes and hashing must not stall the
//! async workers) and is fed byte chunks at offsets by any number of sources. It keeps the piece
//! bitmap and per-piece BLAKE3 digests in the metadata store, so a crash resumes instead of
//! restarting, feeds the whole-blob sha256 in order from the bytes it is given ([`WholeHash`]),
//! and publishes [`Progress`] to every reader of the blob. It never decides where bytes come from.
//!
//! Once the blob hashes to its digest, the verified state is made durable and published
//! ([`State::Verified`]: readers may send the last byte) before the file is synced and moved to
//! its final path; a crash in between is finished at start-up ([`crate::store::gc::recover`]).

use std::collections::HashMap;
use std::fs::{File, OpenOptions};
use std::os::unix::fs::FileExt;
use std::sync::Arc;
use std::time::{Duration, Instant};

use bytes::Bytes;
use prometheus_client::metrics::counter::Counter;
use shoal_core::{Bitmap, Digest, PieceDigest, PieceHasher, PieceLayout};
use tokio::sync::watch;

pub use crate::download::progress::{Progress, State};
use crate::download::whole::WholeHash;
use crate::store::meta::{BlobRecord, BlobState, Durability, MetaError, MetaStore};
use crate::store::paths::Paths;

/// How often piece progress is made durable (between, progress commits are lazy).
const SYNC_EVERY: Duration = Duration::from_secs(1);
/// How often piece progress is recorded at all: a record holds every piece's digest, so
/// writing it per piece would cost O(pieces²) for a blob; what a crash loses is fetched again.
const PUT_EVERY: Duration = Duration::from_millis(100);
/// Bytes streamed into a piece between two progress updates to readers (a completed piece is
/// published at once).
const PUBLISH_EVERY: u64 = 256 << 10;

/// Why writing a blob failed.
#[derive(Debug, thiserror::Error)]
pub enum WriteError {
    /// Reading or writing the partial file failed.
    #[error("blob file I/O: {0}")]
    Io(#[from] std::io::Error),
    /// The metadata store failed.
    #[error(transparent)]
    Meta(#[from] MetaError),
    /// A source sent bytes outside the blob or not where its piece continues.
    #[error("chunk at offset {offset} does not continue piece {piece}")]
    OutOfOrder {
        /// Offset of the chunk.
        offset: u64,
        /// The piece it fell into.
        piece: u32,
    },
    /// Every piece arrived but the blob does not hash to its digest: nothing is kept.
    #[error("blob content hashes to {actual}, not {expected}")]
    DigestMismatch {
        /// What was asked for.
        expected: Digest,
        /// What the bytes hash to.
        actual: Digest,
    },
    /// Finish was asked for before every piece arrived.
    #[error("blob incomplete: {have} of {total} pieces")]
    Incomplete {
        /// Pieces present.
        have: u32,
        /// Pieces in the blob.
        total: u32,
    },
}

/// What a whole-blob check found.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Verified {
    /// The blob hashes to its digest and is recorded complete.
    Complete,
    /// It does not: the pieces that came from parents (or were resumed from disk) were dropped;
    /// fetch them again, from the origin or from parents whose digests are trusted.
    Dropped {
        /// The pieces dropped.
        pieces: Vec<u32>,
        /// The pieces kept (they came from this node's origin stream), with their digests.
        kept: Vec<(u32, PieceDigest)>,
    },
}

impl WriteError {
    /// True when the disk or the metadata store failed, not the bytes.
    pub fn is_store(&self) -> bool {
        matches!(self, Self::Io(_) | Self::Meta(_))
    }
}

/// Assembles one blob. Created by [`PieceWriter::open`]; consumed by [`PieceWriter::finish`].
pub struct PieceWriter {
    digest: Digest,
    layout: PieceLayout,
    paths: Paths,
    meta: Arc<dyn MetaStore>,
    file: File,
    record: BlobRecord,
    have: Bitmap,
    /// Present pieces that did not come from this node's own origin stream (from parents, or
    /// resumed from disk): dropped if the whole blob does not verify.
    unconfirmed: Bitmap,
    /// Present pieces that came from the origin stream or matched a trusted digest (see
    /// [`Progress::verified`]).
    verified: Bitmap,
    inflight: HashMap<u32, (Option<PieceHasher>, u64)>,
    whole: WholeHash,
    hash_pieces: bool,
    /// Test-only fault: report forged digests (see [`crate::fault::POISON`]).
    poison: bool,
    /// Test-only fault: stall before moving a verified blob (see [`crate::fault::STALL_PROMOTE`]).
    stall_promote: bool,
    last_sync: Option<Instant>,
    last_put: Option<Instant>,
    /// Pieces completed since the record was last written.
    unrecorded: bool,
    /// Bytes streamed since progress was last published.
    unpublished: u64,
    progress: watch::Sender<Progress>,
    finished: Option<tokio::sync::mpsc::UnboundedSender<(u32, PieceDigest)>>,
    reread_counter: Option<Counter>,
}

impl PieceWriter {
    /// Opens the partial file of `digest`, resuming from its recorded pieces when the record and
    /// file agree (pieces whose bytes no longer hash to their recorded digest are dropped).
    pub fn open(
        paths: &Paths,
        meta: Arc<dyn MetaStore>,
        digest: Digest,
        layout: PieceLayout,
        now: u64,
    ) -> Result<Self, WriteError> {
        let path = paths.partial(&digest);
        let previous = meta.blob(&digest)?.filter(|r| r.layout == layout && !r.is_complete());
        let file = OpenOptions::new().read(true).write(true).create(true).truncate(false).open(&path)?;
        let resumable = previous.is_some() && file.metadata()?.len() == layout.size;
        let mut record = match previous {
            Some(r) if resumable => r,
            _ => {
                file.set_len(0)?;
                file.set_len(layout.size)?;
                BlobRecord::new(layout, now)
            }
        };
        let have = verify_pieces(&file, &mut record)?;
        meta.put_blob(&digest, &record, Durability::Sync)?;
        let progress = Progress {
            available: 0,
            confirmed: 0,
            have: have.clone(),
            verified: Bitmap::new(layout.count()),
            streaming: Vec::new(),
            state: State::Running,
        };
        let (progress, _) = watch::channel(progress);
        let mut w = Self {
            digest,
            layout,
            paths: paths.clone(),
            meta,
            file,
            record,
            unconfirmed: have.clone(),
            verified: Bitmap::new(layout.count()),
            have,
            inflight: HashMap::new(),
            whole: WholeHash::default(),
            hash_pieces: true,
            poison: false,
            stall_promote: false,
            last_sync: None,
            last_put: None,
            unrecorded: false,
            unpublished: 0,
            progress,
            finished: None,
            reread_counter: None,
        };
        w.publish();
        Ok(w)
    }

    /// A receiver of this blob's progress.
    pub fn subscribe(&self) -> watch::Receiver<Progress> {
        self.progress.subscribe()
    }

    /// The sender side, so the owner can publish a final failure after dropping the writer.
    pub fn progress(&self) -> watch::Sender<Progress> {
        self.progress.clone()
    }

    /// The blob being written.
    pub fn digest(&self) -> Digest {
        self.digest
    }

    /// Its piece layout.
    pub fn layout(&self) -> PieceLayout {
        self.layout
    }

    /// Pieces present.
    #[cfg(test)]
    pub fn have(&self) -> &Bitmap {
        &self.have
    }

    /// Reports every piece completed from now on, with its digest, on `tx`.
    pub fn report_to(&mut self, tx: tokio::sync::mpsc::UnboundedSender<(u32, PieceDigest)>) {
        self.finished = Some(tx);
    }

    /// Computes and records a BLAKE3 digest per piece (needed to serve peers and to report pieces to
    /// the scheduler; without them, resume trusts the bitmap and the whole-blob check decides).
    pub fn set_piece_hashing(&mut self, on: bool) {
        self.hash_pieces = on;
    }

    /// Test-only fault: the digests reported for pieces streamed here are those of the
    /// corrupted pieces the peer server then serves.
    pub fn set_poison(&mut self, on: bool) {
        self.poison = on;
    }

    /// Test-only fault: stall between recording the blob verified and moving its file.
    pub fn set_stall_promote(&mut self, on: bool) {
        self.stall_promote = on;
    }

    /// Writes a whole piece already verified against its trusted `digest` (from a parent), so
    /// it is not hashed again. It replaces any partial stream of the same piece; ignored if the
    /// piece is present.
    pub fn write_piece(&mut self, index: u32, data: Bytes, digest: PieceDigest) -> Result<(), WriteError> {
        let piece = self.layout.piece(index);
        if piece.is_empty() || piece.len() != data.len() as u64 {
            return Err(WriteError::OutOfOrder { offset: piece.start, piece: index });
        }
        if self.have.get(index) {
            return Ok(());
        }
        self.inflight.insert(index, (None, 0));
        self.file.write_all_at(&data, piece.start)?;
        self.inflight.remove(&index);
        self.unconfirmed.set(index);
        self.verified.set(index);
        self.complete_piece(index, Some(digest))?;
        self.advance_whole(piece.start, data)?;
        self.publish();
        Ok(())
    }

    /// Writes `data` at `offset`. Bytes of pieces already present are ignored; within a piece,
    /// bytes must arrive in order from the piece's start.
    pub fn write(&mut self, offset: u64, data: Bytes) -> Result<(), WriteError> {
        let end = offset.checked_add(data.len() as u64).filter(|&e| e <= self.layout.size);
        let Some(end) = end else {
            return Err(WriteError::OutOfOrder { offset, piece: self.layout.piece_of(offset) });
        };
        let mut pos = offset;
        while pos < end {
            let index = self.layout.piece_of(pos);
            let piece = self.layout.piece(index);
            let stop = piece.end.min(end);
            let slice = &data[(pos - offset) as usize..(stop - offset) as usize];
            self.write_in_piece(index, pos, slice)?;
            pos = stop;
        }
        let pieces = self.have.count();
        self.unpublished += data.len() as u64;
        self.advance_whole(offset, data)?;
        // Readers wake per piece or per PUBLISH_EVERY bytes, not per chunk from the network.
        if self.have.count() != pieces || self.unpublished >= PUBLISH_EVERY {
            self.publish();
        }
        Ok(())
    }

    fn write_in_piece(&mut self, index: u32, pos: u64, slice: &[u8]) -> Result<(), WriteError> {
        if self.have.get(index) {
            return Ok(());
        }
        let piece = self.layout.piece(index);
        let fresh = || (self.hash_pieces.then(PieceHasher::default), 0);
        let entry = self.inflight.entry(index).or_insert_with(fresh);
        if pos == piece.start && entry.1 != 0 {
            *entry = fresh();
        }
        if pos != piece.start + entry.1 {
            return Err(WriteError::OutOfOrder { offset: pos, piece: index });
        }
        self.file.write_all_at(slice, pos)?;
        if let Some(h) = &mut entry.0 {
            h.update(slice);
        }
        entry.1 += slice.len() as u64;
        if entry.1 == piece.len() {
            let hasher = self.inflight.remove(&index).and_then(|(h, _)| h);
            let mut digest = hasher.map(|h| h.finish());
            if self.poison && digest.is_some() {
                let mut bytes = vec![0u8; piece.len() as usize];
                self.file.read_exact_at(&mut bytes, piece.start)?;
                crate::fault::corrupt_piece(&mut bytes);
                digest = Some(PieceDigest::of(&bytes));
            }
            self.verified.set(index);
            self.complete_piece(index, digest)?;
        }
        Ok(())
    }

    fn complete_piece(&mut self, index: u32, digest: Option<PieceDigest>) -> Result<(), WriteError> {
        self.have.set(index);
        self.record.piece_digests[index as usize] = digest.map(|d| d.hex()).unwrap_or_default();
        self.record.state = BlobState::Partial { bitmap: self.have.as_bytes().to_vec() };
        let now = Instant::now();
        self.unrecorded = true;
        if self.last_sync.is_none_or(|t| now - t >= SYNC_EVERY) {
            (self.last_sync, self.last_put) = (Some(now), Some(now));
            self.put_record(Durability::Sync)?;
        } else if self.last_put.is_none_or(|t| now - t >= PUT_EVERY) {
            self.last_put = Some(now);
            self.put_record(Durability::Lazy)?;
        }
        if let (Some(tx), Some(d)) = (&self.finished, digest) {
            let _ = tx.send((index, d));
        }
        Ok(())
    }

    fn put_record(&mut self, durability: Durability) -> Result<(), WriteError> {
        self.meta.put_blob(&self.digest, &self.record, durability)?;
        self.unrecorded = false;
        Ok(())
    }

    /// Bytes present from offset 0 without a gap.
    fn available(&self) -> u64 {
        let prefix = self.have.prefix();
        let base = self.layout.piece(prefix).start;
        let partial = self.inflight.get(&prefix).map_or(0, |(_, n)| *n);
        if prefix >= self.layout.count() {
            self.layout.size
        } else {
            base + partial
        }
    }

    /// Feeds the whole-blob hash with `data` (written at `offset`) and extends it to the
    /// available prefix, reading back only what is not in memory (see [`WholeHash`]).
    fn advance_whole(&mut self, offset: u64, data: Bytes) -> Result<(), WriteError> {
        self.whole.add(offset, data);
        let before = self.whole.reread();
        self.whole.catch_up(&self.file, self.available())?;
        if let Some(counter) = &self.reread_counter {
            counter.inc_by(self.whole.reread() - before);
        }
        Ok(())
    }

    /// Counts on `counter` the bytes read back from the file to hash the whole blob.
    pub fn count_rereads(&mut self, counter: Counter) {
        self.reread_counter = Some(counter);
    }

    /// Bytes from offset 0 without a gap that came from this node's origin stream.
    fn confirmed(&self) -> u64 {
        let mut i = 0;
        while i < self.layout.count() && self.have.get(i) && !self.unconfirmed.get(i) {
            i += 1;
        }
        if i >= self.layout.count() {
            return self.layout.size;
        }
        let partial = if self.have.get(i) { 0 } else { self.inflight.get(&i).map_or(0, |(_, n)| *n) };
        self.layout.piece(i).start + partial
    }

    /// Pieces streaming from the origin, with the bytes present from each one's start.
    fn streaming(&self) -> Vec<(u32, u64)> {
        let mut streaming: Vec<(u32, u64)> =
            self.inflight.iter().filter(|(_, (_, n))| *n > 0).map(|(&i, (_, n))| (i, *n)).collect();
        streaming.sort_unstable();
        streaming
    }

    /// Publishes bytes streamed since the last update (the writer thread calls it whenever it
    /// has no more chunks queued, so readers never wait on bytes already written).
    pub fn publish_pending(&mut self) {
        if self.unpublished > 0 {
            self.publish();
        }
    }

    fn publish(&mut self) {
        self.unpublished = 0;
        let available = self.available();
        let confirmed = self.confirmed();
        let streaming = self.streaming();
        self.progress.send_if_modified(|p| {
            let changed = p.available != available
                || p.have.count() != self.have.count()
                || p.verified.count() != self.verified.count()
                || p.confirmed != confirmed
                || p.streaming != streaming;
            p.available = available;
            p.confirmed = confirmed;
            p.have.clone_from(&self.have);
            p.verified.clone_from(&self.verified);
            p.streaming = streaming;
            changed
        });
    }

    /// Verifies the whole blob; see [`Verified`]. On success the blob is synced, moved to its
    /// final path and recorded complete, and the writer must not be used again.
    pub fn verify(&mut self) -> Result<Verified, WriteError> {
        if !self.have.is_full() {
            return Err(WriteError::Incomplete { have: self.have.count(), total: self.have.len() });
        }
        self.advance_whole(self.layout.size, Bytes::new())?;
        let actual = self.whole.digest();
        if actual == self.digest {
            self.complete()?;
            return Ok(Verified::Complete);
        }
        let dropped: Vec<u32> = (0..self.layout.count()).filter(|&i| self.unconfirmed.get(i)).collect();
        if dropped.is_empty() {
            self.discard();
            return Err(WriteError::DigestMismatch { expected: self.digest, actual });
        }
        tracing::warn!(digest = %self.digest, %actual, pieces = dropped.len(), "blob does not hash to its digest; dropping the pieces that came from peers");
        for &i in &dropped {
            self.have.unset(i);
            self.verified.unset(i);
            self.record.piece_digests[i as usize].clear();
        }
        self.unconfirmed = Bitmap::new(self.layout.count());
        self.record.state = BlobState::Partial { bitmap: self.have.as_bytes().to_vec() };
        self.put_record(Durability::Sync)?;
        self.whole.restart();
        self.advance_whole(0, Bytes::new())?;
        self.publish();
        let kept = (0..self.layout.count())
            .filter(|&i| self.have.get(i))
            .filter_map(|i| Some((i, PieceDigest::from_hex(&self.record.piece_digests[i as usize])?)))
            .collect();
        Ok(Verified::Dropped { pieces: dropped, kept })
    }

    /// Verifies the whole blob and completes it (see [`PieceWriter::verify`]); a blob that does
    /// not verify is an error.
    pub fn finish(mut self) -> Result<(), WriteError> {
        match self.verify()? {
            Verified::Complete => Ok(()),
            Verified::Dropped { pieces, .. } => Err(WriteError::Incomplete {
                have: self.layout.count() - pieces.len() as u32,
                total: self.layout.count(),
            }),
        }
    }

    /// Records the verified state durably and publishes it (readers may send the last byte
    /// now), then syncs the file, moves it to its final path and records it complete.
    fn complete(&mut self) -> Result<(), WriteError> {
        // The last pieces may not be published yet (readers are woken per piece only when the
        // queue runs dry): a parent's final "have" update must show every piece.
        self.publish();
        self.record.state = BlobState::Verified;
        self.meta.put_blob(&self.digest, &self.record, Durability::Sync)?;
        self.progress.send_modify(|p| p.state = State::Verified);
        if self.stall_promote {
            std::thread::sleep(crate::fault::STALL);
        }
        self.paths.promote(&self.digest, &self.file)?;
        self.record.state = BlobState::Complete;
        self.meta.put_blob(&self.digest, &self.record, Durability::Sync)?;
        self.progress.send_modify(|p| p.state = State::Complete);
        Ok(())
    }

    /// Removes the partial file and its record.
    pub fn discard(&mut self) {
        self.unrecorded = false;
        let _ = std::fs::remove_file(self.paths.partial(&self.digest));
        let _ = self.meta.remove_blob(&self.digest);
    }
}

impl Drop for PieceWriter {
    /// A download that stops before the end leaves its progress recorded, to resume from.
    fn drop(&mut self) {
        if self.unrecorded && matches!(self.record.state, BlobState::Partial { .. }) {
            let _ = self.put_record(Durability::Lazy);
        }
    }
}

/// Re-hashes every piece the record says is present; drops those that no longer match.
fn verify_pieces(file: &File, record: &mut BlobRecord) -> Result<Bitmap, WriteError> {
    let layout = record.layout;
    let mut have = record.bitmap();
    let mut checked = Bitmap::new(layout.count());
    let mut buf = Vec::new();
    for i in 0..layout.count() {
        if !have.get(i) {
            continue;
        }
        let range = layout.piece(i);
        buf.resize(range.len() as usize, 0);
        let want = &record.piece_digests[i as usize];
        // Pieces recorded without a digest (no peers to serve) are trusted here; the whole-blob
        // check at the end still decides whether the blob is complete.
        let ok = file.read_exact_at(&mut buf, range.start).is_ok()
            && (want.is_empty() || PieceDigest::of(&buf).hex() == *want);
        if ok {
            checked.set(i);
        } else {
            record.piece_digests[i as usize].clear();
        }
    }
    have.clone_from(&checked);
    record.state = BlobState::Partial { bitmap: have.as_bytes().to_vec() };
    Ok(have)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::store::meta::MemMeta;

    fn b(data: &[u8]) -> Bytes {
        Bytes::copy_from_slice(data)
    }

    /// Reads a whole local file into its digest (used to re-verify complete blobs on demand).
    pub fn digest_file(path: &std::path::Path) -> std::io::Result<Digest> {
        let f = File::open(path)?;
        Ok(crate::hash::file_prefix(&f, f.metadata()?.len())?.finish())
    }

    const MIB: usize = 1 << 20;

    fn blob(len: usize) -> Vec<u8> {
        (0..len).map(|i| (i * 31 % 251) as u8).collect()
    }

    fn setup(data: &[u8]) -> (tempfile::TempDir, Paths, Arc<dyn MetaStore>, Digest, PieceLayout) {
        let dir = tempfile::tempdir().unwrap();
        let paths = Paths::new(dir.path());
        paths.create().unwrap();
        (dir, paths, Arc::new(MemMeta::default()), Digest::of(data), PieceLayout::for_size(data.len() as u64))
    }

    #[test]
    fn a_complete_blob_shows_every_piece_to_its_readers() {
        // No publish between chunks: the last pieces reach readers with the final state, or a
        // child watching this parent never learns it holds them.
        let data = blob(3 * MIB + 123);
        let (_d, paths, meta, digest, layout) = setup(&data);
        let mut w = PieceWriter::open(&paths, meta, digest, layout, 0).unwrap();
        let rx = w.subscribe();
        for (i, chunk) in data.chunks(64 << 10).enumerate() {
            w.write((i * (64 << 10)) as u64, b(chunk)).unwrap();
        }
        w.finish().unwrap();
        let p = rx.borrow();
        assert_eq!(p.state, State::Complete);
        assert!(p.have.is_full(), "{} of {} pieces shown", p.have.count(), layout.count());
    }

    #[test]
    fn assembles_in_order_chunks_and_completes() {
        let data = blob(3 * MIB + 123);
        let (_d, paths, meta, digest, layout) = setup(&data);
        let mut w = PieceWriter::open(&paths, meta.clone(), digest, layout, 0).unwrap();
        let rx = w.subscribe();
        for (i, chunk) in data.chunks(10_000).enumerate() {
            let before = rx.borrow().available;
            w.write((i * 10_000) as u64, b(chunk)).unwrap();
            let published = rx.borrow().available;
            assert!(
                published == before || published.is_multiple_of(MIB as u64) || published >= (256 << 10) + before,
                "not per chunk"
            );
            w.publish_pending();
            assert_eq!(rx.borrow().available, ((i + 1) * 10_000).min(data.len()) as u64);
        }
        w.finish().unwrap();
        assert_eq!(rx.borrow().state, State::Complete);
        assert_eq!(std::fs::read(paths.blob(&digest)).unwrap(), data);
        assert!(meta.blob(&digest).unwrap().unwrap().is_complete());
        assert!(!paths.partial(&digest).exists());
    }

    #[test]
    fn accepts_pieces_out_of_order() {
        let data = blob(4 * MIB);
        let (_d, paths, meta, digest, layout) = setup(&data);
        let mut w = PieceWriter::open(&paths, meta, digest, layout, 0).unwrap();
        for i in [3usize, 1, 0, 2] {
            w.write((i * MIB) as u64, b(&data[i * MIB..(i + 1) * MIB])).unwrap();
            assert!(w.have().get(i as u32));
        }
        assert_eq!(w.subscribe().borrow().available, data.len() as u64);
        w.finish().unwrap();
    }

    #[test]
    fn resumes_after_a_crash_and_drops_corrupted_pieces() {
        let data = blob(4 * MIB);
        let (_d, paths, meta, digest, layout) = setup(&data);
        let mut w = PieceWriter::open(&paths, meta.clone(), digest, layout, 0).unwrap();
        w.write(0, b(&data[..2 * MIB + 5])).unwrap();
        drop(w);
        // Corrupt piece 1 on disk, as a torn write would.
        let f = OpenOptions::new().write(true).open(paths.partial(&digest)).unwrap();
        f.write_all_at(b"garbage", MIB as u64 + 10).unwrap();
        let mut w = PieceWriter::open(&paths, meta.clone(), digest, layout, 0).unwrap();
        assert_eq!(w.have().missing().collect::<Vec<_>>(), vec![1, 2, 3]);
        w.write(MIB as u64, b(&data[MIB..])).unwrap();
        w.finish().unwrap();
        assert_eq!(digest_file(&paths.blob(&digest)).unwrap(), digest);
    }

    #[test]
    fn rejects_a_wrong_blob_and_keeps_nothing() {
        let data = blob(2 * MIB);
        let (_d, paths, meta, _, layout) = setup(&data);
        let wrong = Digest::of(b"something else");
        let mut w = PieceWriter::open(&paths, meta.clone(), wrong, layout, 0).unwrap();
        let rx = w.subscribe();
        w.write(0, b(&data)).unwrap();
        assert!(matches!(w.finish(), Err(WriteError::DigestMismatch { .. })));
        assert_ne!(rx.borrow().state, State::Complete);
        assert!(!paths.partial(&wrong).exists() && !paths.blob(&wrong).exists());
        assert!(meta.blob(&wrong).unwrap().is_none());
    }

    #[test]
    fn refuses_gaps_and_overruns() {
        let data = blob(2 * MIB);
        let (_d, paths, meta, digest, layout) = setup(&data);
        let mut w = PieceWriter::open(&paths, meta, digest, layout, 0).unwrap();
        assert!(matches!(w.write(10, b(&data[10..20])), Err(WriteError::OutOfOrder { .. })));
        assert!(matches!(w.write(2 * MIB as u64 - 1, b(b"xy")), Err(WriteError::OutOfOrder { .. })));
        assert!(matches!(w.write(u64::MAX, b(b"x")), Err(WriteError::OutOfOrder { .. })));
        assert!(matches!(w.finish(), Err(WriteError::Incomplete { have: 0, total: 2 })));
    }

    #[test]
    fn peer_pieces_are_not_confirmed_and_a_poisoned_blob_drops_them() {
        let data = blob(4 * MIB);
        let (_d, paths, meta, digest, layout) = setup(&data);
        let mut w = PieceWriter::open(&paths, meta.clone(), digest, layout, 0).unwrap();
        let rx = w.subscribe();
        w.write(0, b(&data[..MIB])).unwrap();
        assert_eq!(rx.borrow().confirmed, MIB as u64);
        // Piece 1 from a parent whose (forged) digest matched its (wrong) bytes.
        let mut bad = data[MIB..2 * MIB].to_vec();
        bad[0] ^= 0xff;
        w.write_piece(1, b(&bad), PieceDigest::of(&bad)).unwrap();
        w.write(2 * MIB as u64, b(&data[2 * MIB..])).unwrap();
        let p = rx.borrow().clone();
        assert_eq!((p.available, p.confirmed), (data.len() as u64, MIB as u64));
        let kept = [0u32, 2, 3].map(|i| (i, PieceDigest::of(&data[i as usize * MIB..(i as usize + 1) * MIB])));
        assert_eq!(w.verify().unwrap(), Verified::Dropped { pieces: vec![1], kept: kept.to_vec() });
        assert!(!w.have().get(1) && w.have().get(2));
        assert_eq!(meta.blob(&digest).unwrap().unwrap().bitmap().count(), 3);
        w.write(MIB as u64, b(&data[MIB..2 * MIB])).unwrap();
        assert_eq!(rx.borrow().confirmed, data.len() as u64);
        assert_eq!(w.verify().unwrap(), Verified::Complete);
        assert_eq!(std::fs::read(paths.blob(&digest)).unwrap(), data);
    }

    #[test]
    fn a_range_is_verified_piece_by_piece_before_the_blob_is() {
        let data = blob(4 * MIB);
        let (_d, paths, meta, digest, layout) = setup(&data);
        let mut w = PieceWriter::open(&paths, meta, digest, layout, 0).unwrap();
        let rx = w.subscribe();
        let from = |pos: usize| rx.borrow().verified_from(&layout, pos as u64) as usize;
        // The last piece streams from the origin: its bytes count as they land, the last included.
        w.write(3 * MIB as u64, b(&data[3 * MIB..3 * MIB + 100])).unwrap();
        w.publish_pending();
        assert_eq!((from(3 * MIB), from(3 * MIB + 100), from(0)), (3 * MIB + 100, 3 * MIB + 100, 0));
        w.write(3 * MIB as u64 + 100, b(&data[3 * MIB + 100..])).unwrap();
        assert_eq!(from(3 * MIB + 7), 4 * MIB);
        // A parent's piece that matched its trusted digest counts too; up to the next gap.
        let piece = &data[MIB..2 * MIB];
        w.write_piece(1, b(piece), PieceDigest::of(piece)).unwrap();
        assert_eq!((from(MIB), from(2 * MIB)), (2 * MIB, 2 * MIB));
        let p = rx.borrow().clone();
        assert_eq!((p.confirmed, p.state), (0, State::Running), "the whole-blob prefix is another matter");
        w.write(0, b(&data[..3 * MIB])).unwrap();
        assert_eq!(from(0), 4 * MIB);
        assert!(rx.borrow().streaming.is_empty());
        w.finish().unwrap();
    }

    #[test]
    fn pieces_resumed_from_disk_are_not_verified_for_ranges() {
        let data = blob(4 * MIB);
        let (_d, paths, meta, digest, layout) = setup(&data);
        let mut w = PieceWriter::open(&paths, meta.clone(), digest, layout, 0).unwrap();
        w.write(0, b(&data[..2 * MIB])).unwrap();
        assert_eq!(w.subscribe().borrow().verified_from(&layout, 0), 2 * MIB as u64);
        drop(w);
        let mut w = PieceWriter::open(&paths, meta, digest, layout, 0).unwrap();
        let rx = w.subscribe();
        assert_eq!(w.have().count(), 2);
        assert_eq!(rx.borrow().verified_from(&layout, 0), 0);
        w.write(2 * MIB as u64, b(&data[2 * MIB..])).unwrap();
        assert_eq!(rx.borrow().verified_from(&layout, 0), 0);
        assert_eq!(rx.borrow().verified_from(&layout, 2 * MIB as u64), 4 * MIB as u64);
        w.finish().unwrap();
        assert_eq!(rx.borrow().verified_from(&layout, 0), 4 * MIB as u64);
    }

    #[test]
    fn a_dropped_peer_piece_is_no_longer_verified() {
        let data = blob(3 * MIB);
        let (_d, paths, meta, digest, layout) = setup(&data);
        let mut w = PieceWriter::open(&paths, meta, digest, layout, 0).unwrap();
        let rx = w.subscribe();
        let mut bad = data[MIB..2 * MIB].to_vec();
        bad[7] ^= 1;
        w.write_piece(1, b(&bad), PieceDigest::of(&bad)).unwrap();
        w.write(0, b(&data[..MIB])).unwrap();
        w.write(2 * MIB as u64, b(&data[2 * MIB..])).unwrap();
        assert_eq!(rx.borrow().verified_from(&layout, 0), 3 * MIB as u64);
        assert!(matches!(w.verify().unwrap(), Verified::Dropped { .. }));
        assert_eq!(rx.borrow().verified_from(&layout, 0), MIB as u64);
        assert_eq!(rx.borrow().verified_from(&layout, MIB as u64 + 1), MIB as u64 + 1);
    }

    #[test]
    fn empty_blob_completes() {
        let (_d, paths, meta, digest, layout) = setup(b"");
        let w = PieceWriter::open(&paths, meta, digest, layout, 0).unwrap();
        w.finish().unwrap();
        assert_eq!(std::fs::read(paths.blob(&digest)).unwrap(), b"");
    }
}

//! A blob's download through the swarm: register with the scheduler, fetch pieces from the
//! parents it names (rarest first, the client's next piece first), check every piece against the
//! scheduler's digest, report progress, and fall back to the origin when told to, when parents
//! fail or stall, or when the scheduler is gone. A pull never fails because of the swarm.

use std::collections::{HashMap, HashSet};
use std::net::SocketAddr;
use std::sync::atomic::Ordering;
use std::sync::Arc;
use std::time::{Duration, Instant};

use bytes::Bytes;
use futures::future::BoxFuture;
use futures::stream::FuturesUnordered;
use futures::{FutureExt, StreamExt};
use shoal_core::picker::{pick, ParentPieces, PickInput, PickerConfig};
use shoal_core::seeding::SeedingConfig;
use shoal_core::{Bitmap, Digest, PieceLayout};
use shoal_proto::scheduler::{
    peer_event, scheduler_event, BlobMismatch, FailReason, PieceFailed, PieceFinished, SchedulerEvent,
};
use tokio::sync::{mpsc, watch};

use crate::metrics::{Metrics, ReasonLabels, SourceLabels};
use crate::origin_fetch::{runs_of, verify, Chunk, OriginSource};
use crate::peer::client::PeerClient;
use crate::peer::PeerError;
use crate::sched_client::{Schedulers, Session};
use crate::seeding::Seeds;
use crate::task::TaskCounters;
use crate::writer::{Progress, Verified};

/// Without a new piece for this long, ask the scheduler again. Generous: behind a capped link a
/// parent shared by many children legitimately takes seconds per round of pieces, and every
/// early give-up costs an extra origin copy.
const STALL: Duration = Duration::from_secs(10);
/// Stalls after which the origin takes over.
const STALLS_BEFORE_ORIGIN: u32 = 3;
/// Failures of one parent before it is dropped.
const PARENT_FAILURES: u32 = 3;
/// Piece requests in flight at once, over all parents.
const MAX_IN_FLIGHT: usize = 16;
/// Completed blobs this daemon keeps announcing as a parent (seed), most recent first.
const MAX_SEEDS: usize = 512;
/// A piece a parent refused as "busy" (it seeds it and just gave it to a sibling) is not asked
/// of that parent again for this long; the sibling announces it meanwhile. Matches the
/// parent's seeding window.
const BUSY_BACKOFF: Duration = Duration::from_millis(SeedingConfig::DEFAULT_WINDOW_MS);

/// What a daemon needs to download through the swarm.
pub struct Swarm {
    /// The schedulers.
    pub schedulers: Arc<Schedulers>,
    /// Connections to parents.
    pub peers: Arc<PeerClient>,
    /// Piece picking rules.
    pub picker: PickerConfig,
    /// Open sessions of completed blobs: the scheduler keeps offering this daemon as a parent
    /// while they stay open. The oldest is closed past [`MAX_SEEDS`].
    pub sessions: std::sync::Mutex<std::collections::VecDeque<Session>>,
    /// Blobs fetched from the origin here, whose pieces the peer server hands out one child
    /// at a time.
    pub seeds: Arc<Seeds>,
}

impl Swarm {
    fn keep_seeding(&self, session: Session) {
        let mut sessions = self.sessions.lock().unwrap_or_else(|p| p.into_inner());
        sessions.push_front(session);
        sessions.truncate(MAX_SEEDS);
    }
}

struct Parent {
    host_id: String,
    addr: SocketAddr,
    have: Bitmap,
    in_flight: u32,
    failures: u32,
    bad: bool,
    /// Marked bad only for pieces that did not match the digest table: forgiven when the
    /// scheduler drops that table (the table, not the parent, may have been forged).
    bad_digest: bool,
    /// Pieces it refused as busy, and until when they are not asked of it again.
    refused: HashMap<u32, Instant>,
}

/// A piece from a parent and its sha256 (computed off the async workers).
type Fetched = Result<(Bytes, Digest), PeerError>;
type Fetch<'a> = BoxFuture<'a, (usize, u32, Fetched)>;

struct Download<'a> {
    swarm: &'a Swarm,
    metrics: &'a Metrics,
    counters: &'a TaskCounters,
    origin: &'a OriginSource<'a>,
    digest: Digest,
    layout: PieceLayout,
    session: Option<Session>,
    parents: Vec<Parent>,
    digests: HashMap<u32, Digest>,
    /// Generation of `digests` (see the scheduler's `PieceDigests.epoch`).
    digest_epoch: u32,
    /// The oldest table generation a piece from a parent was accepted with.
    used_epoch: Option<u32>,
    /// Which parent each piece held came from.
    from_parent: HashMap<u32, usize>,
    /// Times the whole blob did not verify.
    mismatches: u32,
    in_flight: HashSet<u32>,
    from_origin: Bitmap,
    origin_mode: bool,
    last_progress: Instant,
    stalls: u32,
    tie_offset: u32,
    have_tx: mpsc::UnboundedSender<(usize, Bitmap)>,
    watchers: Vec<tokio::task::JoinHandle<()>>,
}

/// Downloads the pieces `have` lacks; returns once every piece is with the writer.
#[allow(clippy::too_many_arguments)]
pub async fn download(
    swarm: &Swarm,
    metrics: &Metrics,
    counters: &TaskCounters,
    origin: &OriginSource<'_>,
    have: &mut watch::Receiver<Progress>,
    tx: &mpsc::Sender<Chunk>,
    mut finished: mpsc::UnboundedReceiver<(u32, Digest)>,
) -> Result<(), String> {
    let (digest, layout) = (origin.digest, origin.layout);
    let held = have.borrow().have.clone();
    let session = swarm.schedulers.open(&digest, layout, &held).await;
    if let Err(e) = &session {
        tracing::info!(%digest, error = %e, "no scheduler; fetching from the origin");
    }
    let (have_tx, mut have_rx) = mpsc::unbounded_channel();
    let mut d = Download {
        swarm,
        metrics,
        counters,
        origin,
        digest,
        layout,
        session: session.ok(),
        parents: Vec::new(),
        digests: HashMap::new(),
        digest_epoch: 0,
        used_epoch: None,
        from_parent: HashMap::new(),
        mismatches: 0,
        in_flight: HashSet::new(),
        from_origin: Bitmap::new(layout.count()),
        origin_mode: false,
        last_progress: Instant::now(),
        stalls: 0,
        tie_offset: tie_offset(&swarm.schedulers.host_id(), &digest),
        have_tx,
        watchers: Vec::new(),
    };
    if d.session.is_none() {
        d.origin_mode = true;
    }
    let result = d.run(have, tx, &mut finished, &mut have_rx).await;
    d.watchers.iter().for_each(|w| w.abort());
    metrics.task_parents.observe(d.parents.len() as f64);
    result
}

impl<'a> Download<'a> {
    async fn run(
        &mut self,
        have: &mut watch::Receiver<Progress>,
        tx: &mpsc::Sender<Chunk>,
        finished: &mut mpsc::UnboundedReceiver<(u32, Digest)>,
        have_rx: &mut mpsc::UnboundedReceiver<(usize, Bitmap)>,
    ) -> Result<(), String> {
        let mut fetches: FuturesUnordered<Fetch<'a>> = FuturesUnordered::new();
        let mut origin_job: Option<BoxFuture<'a, Result<(), String>>> = None;
        let mut tick = tokio::time::interval(Duration::from_millis(500));
        loop {
            let held = have.borrow().have.clone();
            self.in_flight.retain(|i| !held.get(*i));
            if held.is_full() {
                // Pieces finished just now may still be queued: their digests must reach the
                // scheduler before Done, or children cannot verify them.
                while let Ok((index, digest)) = finished.try_recv() {
                    self.on_finished(index, digest);
                }
                if let Verified::Dropped { pieces, kept } = verify(tx).await? {
                    self.on_blob_mismatch(&pieces, &kept);
                    continue;
                }
                self.report(peer_event::Event::Done(Default::default()));
                if let Some(session) = self.session.take() {
                    self.swarm.keep_seeding(session);
                }
                return Ok(());
            }
            if self.origin_mode && origin_job.is_none() {
                origin_job = self.start_origin(&held, have.clone(), tx.clone());
            }
            if !self.origin_mode {
                for f in self.pick(&held) {
                    fetches.push(f);
                }
            }
            tokio::select! {
                event = next_event(&mut self.session) => self.on_event(event),
                Some((index, digest)) = finished.recv() => self.on_finished(index, digest),
                Some((p, bitmap)) = have_rx.recv() => self.parents[p].have = bitmap,
                Some((p, index, result)) = fetches.next() => self.on_piece(p, index, result, tx).await?,
                done = async { origin_job.as_mut().expect("guarded").await }, if origin_job.is_some() => {
                    origin_job = None;
                    done?;
                }
                _ = have.changed() => {}
                _ = tick.tick() => self.on_tick(&held).await,
            }
        }
    }

    fn report(&self, event: peer_event::Event) {
        if let Some(s) = &self.session {
            s.report(event);
        }
    }

    /// Starts fetching every piece not held and not in flight from the origin.
    fn start_origin(
        &mut self,
        held: &Bitmap,
        mut have: watch::Receiver<Progress>,
        tx: mpsc::Sender<Chunk>,
    ) -> Option<BoxFuture<'a, Result<(), String>>> {
        let runs = runs_of(self.layout.count(), |i| !held.get(i) && !self.in_flight.contains(&i));
        if runs.is_empty() {
            return None;
        }
        for i in runs.iter().cloned().flatten() {
            self.from_origin.set(i);
            self.in_flight.insert(i);
        }
        self.swarm.seeds.mark(&self.digest);
        let origin = self.origin;
        Some(async move { origin.fetch(runs, &mut have, &tx).await }.boxed())
    }

    /// New piece requests to parents, for pieces whose trusted digest is known.
    fn pick(&mut self, held: &Bitmap) -> Vec<Fetch<'a>> {
        let room = MAX_IN_FLIGHT.saturating_sub(self.in_flight.len());
        if room == 0 || self.parents.is_empty() {
            return Vec::new();
        }
        let mut known = Bitmap::new(self.layout.count());
        self.digests.keys().for_each(|&i| {
            known.set(i);
        });
        let now = Instant::now();
        let masked: Vec<Bitmap> = self
            .parents
            .iter_mut()
            .map(|p| {
                if p.bad {
                    return Bitmap::new(self.layout.count());
                }
                let mut usable = p.have.and(&known);
                p.refused.retain(|&i, until| {
                    let live = *until > now;
                    if live {
                        usable.unset(i);
                    }
                    live
                });
                usable
            })
            .collect();
        let inputs: Vec<ParentPieces<'_>> =
            masked.iter().zip(&self.parents).map(|(have, p)| ParentPieces { have, in_flight: p.in_flight }).collect();
        let mut in_flight = Bitmap::new(self.layout.count());
        self.in_flight.iter().for_each(|&i| {
            in_flight.set(i);
        });
        let input = PickInput {
            held,
            in_flight: &in_flight,
            parents: &inputs,
            read_position: held.prefix(),
            max_requests: room,
            tie_offset: self.tie_offset,
        };
        let picks = pick(&self.swarm.picker, &input);
        picks
            .into_iter()
            .map(|p| {
                self.in_flight.insert(p.piece);
                let parent = &mut self.parents[p.parent];
                parent.in_flight += 1;
                let (peers, addr, digest) = (self.swarm.peers.clone(), parent.addr, self.digest);
                let want = self.layout.piece(p.piece).len();
                let limit = Duration::from_secs(10) + Duration::from_millis(want / 1024);
                async move {
                    let r = match tokio::time::timeout(limit, peers.fetch_piece(addr, &digest, p.piece, want)).await {
                        Ok(Ok(bytes)) => hash_off_workers(bytes).await,
                        Ok(Err(e)) => Err(e),
                        Err(_) => Err(PeerError::Stream("timed out".into())),
                    };
                    (p.parent, p.piece, r)
                }
                .boxed()
            })
            .collect()
    }

    async fn on_piece(
        &mut self,
        p: usize,
        index: u32,
        result: Fetched,
        tx: &mpsc::Sender<Chunk>,
    ) -> Result<(), String> {
        let parent = &mut self.parents[p];
        parent.in_flight = parent.in_flight.saturating_sub(1);
        let trusted = self.digests.get(&index).copied();
        let failure = match result {
            Ok((bytes, got)) if trusted == Some(got) => {
                self.metrics.fetched_bytes.get_or_create(&SourceLabels { source: "peer" }).inc_by(bytes.len() as u64);
                self.counters.peer_bytes.fetch_add(bytes.len() as u64, Ordering::Relaxed);
                let digest = trusted.unwrap_or_else(|| unreachable!("guarded above"));
                tx.send(Chunk::Piece(index, bytes, digest)).await.map_err(|_| "blob writer stopped".to_owned())?;
                self.from_parent.insert(index, p);
                self.used_epoch = Some(self.used_epoch.map_or(self.digest_epoch, |e| e.min(self.digest_epoch)));
                return Ok(());
            }
            Ok(_) if trusted.is_none() => {
                // The table was dropped while the piece was in flight: nothing to check it
                // against, and nothing to blame the parent for. Fetch it again later.
                self.in_flight.remove(&index);
                return Ok(());
            }
            Ok(_) => {
                parent.bad_digest = !parent.bad;
                parent.bad = true;
                FailReason::DigestMismatch
            }
            Err(PeerError::Unauthorized(_)) => {
                parent.bad = true;
                FailReason::Refused
            }
            Err(PeerError::Busy) => {
                // Not a failure: the parent seeds this piece and a sibling has it soon.
                parent.refused.insert(index, Instant::now() + BUSY_BACKOFF);
                self.in_flight.remove(&index);
                self.metrics.piece_busy.inc();
                return Ok(());
            }
            Err(PeerError::NotFound) => {
                parent.have.unset(index);
                FailReason::Refused
            }
            Err(e) => {
                parent.failures += 1;
                parent.bad |= parent.failures >= PARENT_FAILURES;
                self.swarm.peers.forget(parent.addr);
                tracing::debug!(parent = %parent.host_id, error = %e, "piece fetch failed");
                FailReason::Io
            }
        };
        self.in_flight.remove(&index);
        self.metrics.piece_failures.get_or_create(&ReasonLabels { reason: reason_label(failure) }).inc();
        if failure == FailReason::DigestMismatch {
            tracing::warn!(digest = %self.digest, parent = %self.parents[p].host_id, piece = index, "parent sent a corrupt piece; avoiding it");
        }
        let parent_host_id = self.parents[p].host_id.clone();
        self.report(peer_event::Event::PieceFailed(PieceFailed { index, parent_host_id, reason: failure as i32 }));
        if self.parents.iter().all(|p| p.bad) && self.session.is_none() {
            self.origin_mode = true;
        }
        Ok(())
    }

    fn on_finished(&mut self, index: u32, digest: Digest) {
        self.last_progress = Instant::now();
        self.stalls = 0;
        let from_origin = self.from_origin.get(index);
        self.report(peer_event::Event::PieceFinished(PieceFinished {
            index,
            digest: digest.as_bytes().to_vec(),
            from_origin,
        }));
    }

    fn on_event(&mut self, event: Option<SchedulerEvent>) {
        let Some(event) = event else {
            if self.session.take().is_some() {
                tracing::info!(digest = %self.digest, "scheduler stream ended; continuing with current parents");
            }
            return;
        };
        match event.event {
            Some(scheduler_event::Event::BackToSource(_)) => {
                self.metrics.back_to_source.inc();
                self.origin_mode = true;
            }
            Some(scheduler_event::Event::Parents(ps)) => {
                for p in ps.parents {
                    self.add_parent(p.host_id, &p.peer_addr, &p.have);
                }
            }
            Some(scheduler_event::Event::PieceDigests(ds)) => {
                if ds.epoch < self.digest_epoch {
                    return;
                }
                if ds.epoch > self.digest_epoch {
                    // The scheduler dropped a forged table: none of its digests count any more,
                    // and parents blamed only for not matching it get another chance.
                    self.digests.clear();
                    self.digest_epoch = ds.epoch;
                    for parent in self.parents.iter_mut().filter(|p| p.bad_digest) {
                        (parent.bad, parent.bad_digest) = (false, false);
                    }
                }
                for d in ds.digests {
                    if let Ok(bytes) = <[u8; 32]>::try_from(d.digest.as_slice()) {
                        self.digests.insert(d.index, Digest::from_bytes(bytes));
                    }
                }
            }
            None => {}
        }
    }

    fn add_parent(&mut self, host_id: String, addr: &str, have: &[u8]) {
        let Ok(addr) = addr.parse::<SocketAddr>() else { return };
        if self.parents.iter().any(|p| p.host_id == host_id) {
            return;
        }
        let have = Bitmap::from_bytes(self.layout.count(), have).unwrap_or_else(|_| Bitmap::new(self.layout.count()));
        let index = self.parents.len();
        self.parents.push(Parent {
            host_id,
            addr,
            have,
            in_flight: 0,
            failures: 0,
            bad: false,
            bad_digest: false,
            refused: HashMap::new(),
        });
        self.counters.parents.fetch_add(1, Ordering::Relaxed);
        let (peers, digest, tx, count) =
            (self.swarm.peers.clone(), self.digest, self.have_tx.clone(), self.layout.count());
        self.watchers.push(tokio::spawn(async move {
            let Ok(mut stream) = peers.watch_have(addr, &digest).await else { return };
            while let Some(update) = stream.next().await {
                if let Ok(b) = Bitmap::from_bytes(count, &update.have) {
                    if tx.send((index, b)).is_err() || update.complete {
                        return;
                    }
                }
            }
        }));
    }

    /// Stalled: ask the scheduler again (re-registering if it went away); after a few stalls,
    /// or with no scheduler and no usable parent, the origin takes over.
    async fn on_tick(&mut self, held: &Bitmap) {
        if !self.origin_mode && self.orphaned(held) {
            // The scheduler is gone and every piece still missing lacks a trusted digest:
            // parents cannot help. Re-register at once, else take the rest from the origin.
            match self.swarm.schedulers.open(&self.digest, self.layout, held).await {
                Ok(s) => {
                    tracing::info!(digest = %self.digest, "re-registered with the scheduler");
                    self.session = Some(s);
                }
                Err(e) => {
                    tracing::info!(digest = %self.digest, error = %e, "scheduler gone and no digest for the missing pieces; fetching them from the origin");
                    self.origin_mode = true;
                }
            }
            return;
        }
        if self.origin_mode || self.last_progress.elapsed() < STALL {
            return;
        }
        self.last_progress = Instant::now();
        self.stalls += 1;
        if self.session.is_none() {
            if let Ok(s) = self.swarm.schedulers.open(&self.digest, self.layout, held).await {
                tracing::info!(digest = %self.digest, "re-registered with the scheduler");
                self.session = Some(s);
                return;
            }
        } else {
            self.report(peer_event::Event::Reschedule(Default::default()));
        }
        let usable = self.parents.iter().any(|p| !p.bad);
        if self.stalls >= STALLS_BEFORE_ORIGIN || (self.session.is_none() && !usable) {
            tracing::info!(digest = %self.digest, stalls = self.stalls, "swarm stalled; fetching the rest from the origin");
            self.origin_mode = true;
        }
    }

    /// Every piece matched its trusted digest, yet the blob did not: the writer dropped
    /// `pieces` (from parents, or resumed). Stop trusting the digest table, tell the scheduler (which drops the table and decides again, usually sending this
    /// daemon to the origin), or go to the origin at once without a scheduler or the second
    /// time. The client's request waits meanwhile: it has only been sent origin bytes.
    fn on_blob_mismatch(&mut self, pieces: &[u32], kept: &[(u32, Digest)]) {
        self.mismatches += 1;
        self.metrics.blob_mismatches.inc();
        let mut parents: Vec<String> = Vec::new();
        for i in pieces {
            // A parent that relayed a forged piece is not banned: it cannot be told from a
            // victim, and every piece is checked against the new table from now on.
            if let Some(parent) = self.from_parent.remove(i).and_then(|p| self.parents.get(p)) {
                if !parents.contains(&parent.host_id) {
                    parents.push(parent.host_id.clone());
                }
            }
        }
        let epoch = self.used_epoch.take();
        tracing::warn!(digest = %self.digest, pieces = pieces.len(), ?parents, ?epoch, table = self.digest_epoch, "blob did not verify; dropped the pieces from parents and their digests");
        if epoch.is_none_or(|e| e >= self.digest_epoch) {
            // Else a newer table arrived already: it is not the forged one, keep it.
            self.digests.clear();
        }
        self.in_flight.clear();
        match (epoch, &self.session) {
            (Some(epoch), Some(_)) if self.mismatches < 2 => {
                self.report(peer_event::Event::BlobMismatch(BlobMismatch { epoch, parent_host_ids: parents }));
                // The pieces kept came from the origin here: if the scheduler sends this daemon
                // back to source, their digests start the new table (else they are ignored).
                for &(index, digest) in kept {
                    let digest = digest.as_bytes().to_vec();
                    self.report(peer_event::Event::PieceFinished(PieceFinished { index, digest, from_origin: true }));
                }
                self.last_progress = Instant::now();
            }
            _ => self.origin_mode = true,
        }
    }

    /// No scheduler, nothing in flight from parents, and no digest known for any missing piece.
    fn orphaned(&self, held: &Bitmap) -> bool {
        self.session.is_none()
            && self.in_flight.is_empty()
            && !held.is_full()
            && held.missing().all(|i| !self.digests.contains_key(&i))
    }
}

/// The piece and its sha256, hashed on a blocking thread: a piece takes milliseconds to hash
/// and the async workers also drive the QUIC connections.
async fn hash_off_workers(bytes: Bytes) -> Fetched {
    tokio::task::spawn_blocking(move || {
        let digest = crate::hash::digest(&bytes);
        (bytes, digest)
    })
    .await
    .map_err(|e| PeerError::Stream(format!("hashing a piece: {e}")))
}

/// Where this host starts among equally rare pieces: its own place, so siblings differ.
fn tie_offset(host_id: &str, digest: &Digest) -> u32 {
    let h = crate::hash::digest(format!("{host_id} {digest}").as_bytes());
    u32::from_be_bytes([h.as_bytes()[0], h.as_bytes()[1], h.as_bytes()[2], h.as_bytes()[3]])
}

async fn next_event(session: &mut Option<Session>) -> Option<SchedulerEvent> {
    match session {
        Some(s) => s.events.message().await.ok().flatten(),
        None => std::future::pending().await,
    }
}

fn reason_label(r: FailReason) -> &'static str {
    match r {
        FailReason::DigestMismatch => "digest_mismatch",
        FailReason::Timeout => "timeout",
        FailReason::Refused => "refused",
        FailReason::Io | FailReason::Unspecified => "io",
    }
}

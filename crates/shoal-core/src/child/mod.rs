//! A child's download of one blob, as a state machine (quinn-proto style: no I/O, no clock).
//!
//! Events go in — parents offered, their pieces, digest tables, a piece received or failed,
//! bytes arriving, pieces stored, readers' positions, the time — and decisions come out as
//! [`Action`]s: request piece p from parent q, cancel a request, fetch runs from the origin,
//! report to the scheduler, register again, verify the blob. The daemon's `download` driver
//! carries the actions out; the swarm simulator drives this same machine.
//!
//! The rules, in brief:
//! - pieces come from parents only with a trusted digest; the next pieces each reader waits for
//!   go first, the rest rarest first ([`crate::picker`]);
//! - a parent that sends nothing for [`ChildConfig::progress_deadline_ms`] while it has
//!   requests is stalled: they are cancelled and asked elsewhere; a request that runs long is
//!   hedged on a second parent (the first answer wins, the other is cancelled);
//! - a parent is dropped for a corrupt piece, a refusal, or repeated failures;
//! - with no live parent, the scheduler is asked at once (without one, the origin takes over
//!   after [`ChildConfig::orphan_ms`]); without a new piece for [`ChildConfig::stall_ms`] the scheduler
//!   is asked again, and after [`ChildConfig::stalls_before_origin`] stalls the origin takes over;
//! - an origin fetch that fails sends the child back to parents, and the origin is asked again
//!   after [`ChildConfig::origin_retry_ms`]; two failures with no parent's piece between them
//!   end the download ([`Action::GiveUp`]);
//! - when every piece is held the blob is verified; if it does not match, the pieces from
//!   parents are dropped and the scheduler told (or the origin used).

mod config;
mod decide;
mod parent;
mod requests;
#[cfg(test)]
mod tests;

use std::collections::{HashMap, VecDeque};
use std::ops::Range;

pub use config::ChildConfig;
pub use parent::{Offered, Parent, ParentId};
pub use requests::RequestId;
use requests::Requests;

use crate::sched::FailReason;
use crate::{Bitmap, PieceDigest, PieceLayout};

/// A decision for the driver to carry out.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Action {
    /// A new parent: subscribe to its "have" updates (feed them to [`Child::parent_have`]).
    Watch(ParentId),
    /// Fetch `piece` from `parent`; answer with [`Child::piece_received`] or
    /// [`Child::piece_failed`], and report bytes with [`Child::progress`] meanwhile.
    Request {
        /// Names the request in the answers.
        id: RequestId,
        /// Whom to ask.
        parent: ParentId,
        /// Which piece.
        piece: u32,
    },
    /// Stop a request; no answer is expected (one that still comes is ignored).
    Cancel(RequestId),
    /// Drop the connection to a parent that failed (the next request dials again).
    Forget(ParentId),
    /// Fetch these runs of pieces from the origin, in this order; answer with
    /// [`Child::origin_done`] when it ends, or [`Child::origin_failed`].
    FetchOrigin(Vec<Range<u32>>),
    /// Tell the scheduler, if there is one.
    Report(Report),
    /// Open a session with the scheduler again; answer with [`Child::session_opened`] or
    /// [`Child::register_failed`].
    Register,
    /// Every piece is held: check the whole blob, answer with [`Child::verified`].
    Verify,
    /// The blob is complete and verified: the download is over.
    Done,
    /// Neither the origin nor any parent can deliver: the download is over without the blob
    /// (fail it with the origin's last error).
    GiveUp,
}

/// What the scheduler is told.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Report {
    /// A piece is stored here (a parent for it now).
    PieceFinished {
        /// Piece index.
        index: u32,
        /// Its digest.
        digest: PieceDigest,
        /// Fetched from the origin (its digest may start the table).
        from_origin: bool,
    },
    /// A parent failed a piece.
    PieceFailed {
        /// Piece index.
        index: u32,
        /// The parent.
        parent: ParentId,
        /// Why.
        reason: FailReason,
    },
    /// No progress or no live parent: decide again.
    Reschedule,
    /// Every piece matched the table of `epoch`, yet the blob did not verify.
    BlobMismatch {
        /// The table's generation.
        epoch: u32,
        /// Parents whose pieces were dropped.
        parents: Vec<ParentId>,
    },
    /// The blob is complete here.
    Done,
}

/// Why a request failed.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Failure {
    /// The parent seeds this piece and just gave it to a sibling: not a failure.
    Busy,
    /// The parent does not hold the piece.
    NotFound,
    /// The parent refused us (not a cluster member to it, or we to it).
    Refused,
    /// Connection or stream error.
    Io,
}

/// What to do with a piece's bytes.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Verdict {
    /// It matched this trusted digest: hand it to the writer (then [`Child::piece_stored`]).
    Store(PieceDigest),
    /// Throw it away (cancelled, a duplicate, no digest to check it, or corrupt).
    Discard,
}

/// The whole-blob check's answer.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Checked {
    /// The blob matched its digest.
    Complete,
    /// It did not: `dropped` pieces were removed (from parents or resumed), `kept` ones came
    /// from the origin here.
    Dropped {
        /// Pieces removed.
        dropped: Vec<u32>,
        /// Pieces kept, with their digests.
        kept: Vec<(u32, PieceDigest)>,
    },
}

/// The origin's share of the download.
#[derive(Debug)]
struct OriginState {
    /// The origin takes every piece not held and not in flight.
    mode: bool,
    /// A fetch is running.
    running: bool,
    /// Pieces fetched (or being fetched) from the origin.
    pieces: Bitmap,
    /// Pieces the origin fetch took that the writer has not stored yet (it lags behind the
    /// fetch): not fetched again.
    pending: Bitmap,
    /// Failures in a row, with no piece from a parent since the first.
    failures: u32,
    /// The origin is not asked again before this time (it failed moments ago).
    retry_at: u64,
}

/// One child download. See the module documentation.
#[derive(Debug)]
pub struct Child {
    config: ChildConfig,
    layout: PieceLayout,
    held: Bitmap,
    /// Accepted pieces on their way to the writer.
    landing: Bitmap,
    parents: Vec<Parent>,
    requests: Requests,
    digests: HashMap<u32, PieceDigest>,
    /// Generation of `digests` (see the scheduler's `PieceDigests.epoch`).
    digest_epoch: u32,
    /// The oldest table generation a piece from a parent was accepted with.
    used_epoch: Option<u32>,
    /// A table generation this child proved forged (the blob did not verify although every
    /// piece matched it): its digests are not taken again, only a newer table's.
    forged_epoch: Option<u32>,
    from_parent: HashMap<u32, ParentId>,
    mismatches: u32,
    origin: OriginState,
    session: bool,
    registering: bool,
    last_progress: u64,
    stalls: u32,
    /// Since when no parent is live (while not at the origin).
    orphaned_since: Option<u64>,
    rescheduled_at: Option<u64>,
    tie_offset: u32,
    readers: Vec<u32>,
    verifying: bool,
    done: bool,
    /// Moving average of how long a piece takes from a parent, in ms.
    piece_ms: Option<u64>,
    actions: VecDeque<Action>,
    /// The latest time given.
    now: u64,
}

impl Child {
    /// A download of a blob laid out as `layout`, holding `held` already. `tie_offset` spreads
    /// siblings over equally rare pieces (e.g. a hash of the host id). `session`: whether the
    /// scheduler accepted the registration.
    pub fn new(
        config: ChildConfig,
        layout: PieceLayout,
        held: Bitmap,
        tie_offset: u32,
        now: u64,
        session: bool,
    ) -> Self {
        let n = layout.count();
        let mut child = Self {
            config,
            layout,
            held,
            landing: Bitmap::new(n),
            parents: Vec::new(),
            requests: Requests::default(),
            digests: HashMap::new(),
            digest_epoch: 0,
            used_epoch: None,
            forged_epoch: None,
            from_parent: HashMap::new(),
            mismatches: 0,
            origin: OriginState {
                mode: false,
                running: false,
                pieces: Bitmap::new(n),
                pending: Bitmap::new(n),
                failures: 0,
                retry_at: 0,
            },
            session,
            registering: false,
            last_progress: now,
            stalls: 0,
            orphaned_since: None,
            rescheduled_at: None,
            tie_offset,
            readers: Vec::new(),
            verifying: false,
            done: false,
            piece_ms: None,
            actions: VecDeque::new(),
            now,
        };
        child.decide(now);
        child
    }

    /// The next decision, if any.
    pub fn poll_action(&mut self) -> Option<Action> {
        self.actions.pop_front()
    }

    /// When [`Child::handle_timeout`] should be called next.
    pub fn poll_timeout(&self) -> Option<u64> {
        if self.done || self.verifying {
            return None;
        }
        let c = &self.config;
        let mut next = vec![self.last_progress + c.stall_ms];
        next.extend(self.orphaned_since.map(|t| t + c.orphan_ms));
        if self.origin.mode && !self.origin.running {
            next.push(self.origin.retry_at);
        }
        for p in self.parents.iter().filter(|p| p.in_flight > 0 && !p.bad) {
            next.push(p.last_bytes + c.progress_deadline_ms);
        }
        for p in self.parents.iter().filter(|p| !p.bad) {
            next.extend(p.refused.values().copied());
            if p.suspended_until > 0 {
                next.push(p.suspended_until);
            }
        }
        next.extend(self.requests.next_deadline(self.hedge_after(false)));
        // A deadline already passed was handled (a hedge with no second parent is tried again
        // at the next event).
        next.into_iter().filter(|&t| t > self.now).min()
    }

    /// The time passed: stalled parents, long requests, stalls, orphaned downloads.
    pub fn handle_timeout(&mut self, now: u64) {
        if self.done || self.verifying {
            return;
        }
        self.expire_stalled_parents(now);
        self.expire_requests(now);
        self.check_stall(now);
        self.decide(now);
    }

    /// The parent `id`, as the driver needs it (address, host id).
    pub fn parent(&self, id: ParentId) -> &Parent {
        &self.parents[id.0]
    }

    /// Every parent known.
    pub fn parents(&self) -> &[Parent] {
        &self.parents
    }

    /// How many pieces have a trusted digest (from the scheduler, or the holders' tables).
    pub fn trusted_digests(&self) -> usize {
        self.digests.len()
    }

    /// Pieces held.
    pub fn held(&self) -> &Bitmap {
        &self.held
    }

    /// Whether the origin has taken over.
    pub fn at_origin(&self) -> bool {
        self.origin.mode
    }

    /// Requests running, for status and tests.
    pub fn requests_in_flight(&self) -> usize {
        self.requests.len()
    }

    // --- discovery ---

    /// Parents offered (duplicates of known parents are ignored).
    pub fn parents_offered(&mut self, now: u64, offered: Vec<Offered>) {
        for o in offered {
            if o.have.len() != self.layout.count() || self.parents.iter().any(|p| p.host_id == o.host_id) {
                continue;
            }
            let id = ParentId(self.parents.len());
            self.parents.push(Parent::new(o));
            self.actions.push_back(Action::Watch(id));
        }
        self.decide(now);
    }

    /// A parent's current pieces.
    pub fn parent_have(&mut self, now: u64, parent: ParentId, have: Bitmap) {
        if let Some(p) = self.parents.get_mut(parent.0).filter(|_| have.len() == self.layout.count()) {
            p.have = have;
            self.decide(now);
        }
    }

    /// Trusted piece digests of table generation `epoch`. A newer generation replaces the
    /// table (the old one was forged) and forgives parents blamed only for not matching it.
    pub fn digests(&mut self, now: u64, epoch: u32, digests: impl IntoIterator<Item = (u32, PieceDigest)>) {
        if epoch < self.digest_epoch || self.forged_epoch.is_some_and(|f| epoch <= f) {
            return;
        }
        if epoch > self.digest_epoch {
            self.digests.clear();
            self.digest_epoch = epoch;
            for p in self.parents.iter_mut().filter(|p| p.bad_digest) {
                (p.bad, p.bad_digest) = (false, false);
            }
        }
        let n = self.layout.count();
        self.digests.extend(digests.into_iter().filter(|(i, _)| *i < n));
        self.decide(now);
    }

    /// The scheduler sends this child to the origin.
    pub fn back_to_source(&mut self, now: u64) {
        self.origin.mode = true;
        self.decide(now);
    }

    /// The scheduler's stream ended: carry on with the current parents.
    pub fn session_lost(&mut self, now: u64) {
        self.session = false;
        self.decide(now);
    }

    /// A new session with the scheduler.
    pub fn session_opened(&mut self, now: u64) {
        (self.session, self.registering) = (true, false);
        self.last_progress = now;
        self.decide(now);
    }

    /// The scheduler could not be reached again: the origin takes over if parents cannot help.
    pub fn register_failed(&mut self, now: u64) {
        self.registering = false;
        if self.orphaned(now) || !self.any_live_parent(now) {
            self.origin.mode = true;
        }
        self.decide(now);
    }

    /// Where readers of the blob are waiting, as piece indexes.
    pub fn readers(&mut self, now: u64, positions: &[u32]) {
        let n = self.layout.count();
        self.readers = positions.iter().copied().filter(|&p| p < n).collect();
        self.readers.sort_unstable();
        self.readers.dedup();
        self.decide(now);
    }

    // --- transfers ---

    /// Bytes of request `id` received so far.
    pub fn progress(&mut self, now: u64, id: RequestId, bytes: u64) {
        if let Some(parent) = self.requests.progress(id, bytes) {
            self.parents[parent.0].last_bytes = now;
        }
    }

    /// Request `id` delivered a piece that hashes to `got`.
    pub fn piece_received(&mut self, now: u64, id: RequestId, got: PieceDigest) -> Verdict {
        let Some(r) = self.requests.remove(id) else { return Verdict::Discard };
        let p = &mut self.parents[r.parent.0];
        p.in_flight = p.in_flight.saturating_sub(1);
        p.last_bytes = now;
        if self.held.get(r.piece) || self.landing.get(r.piece) {
            return Verdict::Discard;
        }
        let verdict = match self.digests.get(&r.piece).copied() {
            Some(trusted) if trusted == got => {
                self.accept(now, r.piece, r.parent, r.started);
                Verdict::Store(trusted)
            }
            // The table was dropped while the piece was in flight: nothing to check it
            // against, nothing to blame the parent for. It is fetched again.
            None => Verdict::Discard,
            // Asked under a table found forged since: the parent served what that table
            // expected, or a piece it was rewriting from the origin meanwhile. Fetched again,
            // nobody blamed (a blame would cost the new origin peer its children).
            Some(_) if r.epoch != self.digest_epoch => Verdict::Discard,
            Some(_) => {
                let p = &mut self.parents[r.parent.0];
                p.bad_digest = !p.bad;
                p.bad = true;
                self.report(Report::PieceFailed {
                    index: r.piece,
                    parent: r.parent,
                    reason: FailReason::DigestMismatch,
                });
                Verdict::Discard
            }
        };
        self.decide(now);
        verdict
    }

    /// Request `id` failed.
    pub fn piece_failed(&mut self, now: u64, id: RequestId, failure: Failure) {
        let Some(r) = self.requests.remove(id) else { return };
        let limit = self.config.parent_failures;
        let p = &mut self.parents[r.parent.0];
        p.in_flight = p.in_flight.saturating_sub(1);
        let reason = match failure {
            Failure::Busy => {
                p.refused.insert(r.piece, now + self.config.busy_backoff_ms);
                None
            }
            Failure::NotFound => {
                p.have.unset(r.piece);
                Some(FailReason::Refused)
            }
            Failure::Refused => {
                p.bad = true;
                Some(FailReason::Refused)
            }
            Failure::Io => {
                p.fail(limit);
                self.actions.push_back(Action::Forget(r.parent));
                Some(FailReason::Io)
            }
        };
        if let Some(reason) = reason {
            self.report(Report::PieceFailed { index: r.piece, parent: r.parent, reason });
        }
        self.decide(now);
    }

    /// The writer stored piece `index` (from a parent or the origin) with `digest`.
    pub fn piece_stored(&mut self, now: u64, index: u32, digest: PieceDigest) {
        if index >= self.layout.count() {
            return;
        }
        self.held.set(index);
        self.landing.unset(index);
        self.origin.pending.unset(index);
        for (id, q) in self.requests.remove_piece(index) {
            let p = &mut self.parents[q.0];
            p.in_flight = p.in_flight.saturating_sub(1);
            self.actions.push_back(Action::Cancel(id));
        }
        self.last_progress = now;
        self.stalls = 0;
        let from_origin = self.origin.pieces.get(index);
        if !from_origin {
            self.origin.failures = 0;
        }
        self.report(Report::PieceFinished { index, digest, from_origin });
        self.decide(now);
    }

    /// The origin fetch ended, every piece sent to the writer.
    pub fn origin_done(&mut self, now: u64) {
        self.origin.running = false;
        self.decide(now);
    }

    /// The origin fetch failed (unreachable, refusing, cut short): parents may still hold the
    /// blob (a site cut off from the origin). The pieces it did not deliver are wanted again,
    /// the scheduler (or the DHT) is asked for parents, and the origin is tried again only
    /// after [`ChildConfig::origin_retry_ms`]. After [`ChildConfig::origin_failures`] failures
    /// with no piece from a parent between them, [`Action::GiveUp`].
    pub fn origin_failed(&mut self, now: u64) {
        self.now = self.now.max(now);
        (self.origin.running, self.origin.mode) = (false, false);
        for i in self.held.missing().collect::<Vec<_>>() {
            self.origin.pending.unset(i);
            self.origin.pieces.unset(i);
        }
        self.origin.failures += 1;
        if self.origin.failures >= self.config.origin_failures {
            self.cancel_all();
            self.done = true;
            self.actions.push_back(Action::GiveUp);
            return;
        }
        self.origin.retry_at = now + self.config.origin_retry_ms;
        (self.last_progress, self.stalls) = (now, 0);
        (self.orphaned_since, self.rescheduled_at) = (None, None);
        if self.session {
            self.report(Report::Reschedule);
        } else if !self.registering {
            self.registering = true;
            self.actions.push_back(Action::Register);
        }
        self.decide(now);
    }

    /// The whole-blob check answered.
    pub fn verified(&mut self, now: u64, checked: Checked) {
        self.verifying = false;
        match checked {
            Checked::Complete => {
                self.done = true;
                self.report(Report::Done);
                self.actions.push_back(Action::Done);
            }
            Checked::Dropped { dropped, kept } => self.blob_mismatch(now, &dropped, &kept),
        }
        self.decide(now);
    }
}

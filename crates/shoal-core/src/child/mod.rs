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
//! - when every piece is held the blob is verified; if it does not match, the pieces from
//!   parents are dropped and the scheduler told (or the origin used).

mod config;
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

use crate::picker::{pick, ParentPieces, PickInput};
use crate::sched::FailReason;
use crate::{Bitmap, Digest, PieceLayout};

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
    /// [`Child::origin_done`] when it ends.
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
}

/// What the scheduler is told.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Report {
    /// A piece is stored here (a parent for it now).
    PieceFinished {
        /// Piece index.
        index: u32,
        /// Its digest.
        digest: Digest,
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
    Store(Digest),
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
        kept: Vec<(u32, Digest)>,
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
    digests: HashMap<u32, Digest>,
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
            origin: OriginState { mode: false, running: false, pieces: Bitmap::new(n), pending: Bitmap::new(n) },
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
    pub fn digests(&mut self, now: u64, epoch: u32, digests: impl IntoIterator<Item = (u32, Digest)>) {
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
    pub fn piece_received(&mut self, now: u64, id: RequestId, got: Digest) -> Verdict {
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
    pub fn piece_stored(&mut self, now: u64, index: u32, digest: Digest) {
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
        self.report(Report::PieceFinished { index, digest, from_origin });
        self.decide(now);
    }

    /// The origin fetch ended (successfully: its pieces were stored; a failing origin fails the
    /// download in the driver).
    pub fn origin_done(&mut self, now: u64) {
        self.origin.running = false;
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

    // --- decisions ---

    fn report(&mut self, report: Report) {
        if self.session {
            self.actions.push_back(Action::Report(report));
        }
    }

    fn accept(&mut self, now: u64, piece: u32, parent: ParentId, started: u64) {
        self.landing.set(piece);
        self.from_parent.insert(piece, parent);
        self.used_epoch = Some(self.used_epoch.map_or(self.digest_epoch, |e| e.min(self.digest_epoch)));
        let took = now.saturating_sub(started);
        self.piece_ms = Some(self.piece_ms.map_or(took, |avg| (avg * 7 + took) / 8));
        for (id, loser) in self.requests.remove_piece(piece) {
            let p = &mut self.parents[loser.0];
            p.in_flight = p.in_flight.saturating_sub(1);
            p.lost_races += 1;
            self.actions.push_back(Action::Cancel(id));
        }
    }

    /// Everything that follows from the current state: verify, origin runs, requests, asking
    /// the scheduler again.
    fn decide(&mut self, now: u64) {
        self.now = self.now.max(now);
        if self.done || self.verifying {
            return;
        }
        if self.held.is_full() {
            self.cancel_all();
            self.verifying = true;
            self.actions.push_back(Action::Verify);
            return;
        }
        if self.origin.mode {
            self.start_origin();
            return;
        }
        self.pick(now);
        self.hedge(now);
        self.check_orphaned(now);
    }

    fn start_origin(&mut self) {
        if self.origin.running {
            return;
        }
        let now = self.now;
        let mut wanted = Bitmap::new(self.layout.count());
        for i in self.held.missing() {
            // A piece asked only of stalled parents is the origin's too (the first copy wins).
            let asked = self.requests.parents_of(i).any(|q| self.parents[q.0].is_live(now));
            if !self.landing.get(i) && !self.origin.pending.get(i) && !asked {
                wanted.set(i);
            }
        }
        let runs = runs_from(&wanted, self.readers.first().copied().unwrap_or(0));
        if runs.is_empty() {
            return;
        }
        for i in runs.iter().cloned().flatten() {
            self.origin.pieces.set(i);
            self.origin.pending.set(i);
        }
        self.origin.running = true;
        self.actions.push_back(Action::FetchOrigin(runs));
    }

    /// Pieces wanted from parents: not held, not landing, not at the origin.
    fn busy_pieces(&self) -> Bitmap {
        let mut busy = self.landing.clone();
        for i in self.requests.pieces() {
            busy.set(i);
        }
        busy
    }

    fn pick(&mut self, now: u64) {
        let mut room = self.config.max_in_flight.saturating_sub(self.requests.len());
        if room == 0 || self.parents.is_empty() {
            return;
        }
        let mut known = Bitmap::new(self.layout.count());
        self.digests.keys().for_each(|&i| {
            known.set(i);
        });
        let usable: Vec<Bitmap> = self.parents.iter_mut().map(|p| p.usable(now, &known)).collect();
        // Each reader's next pieces first, then the rest from the first reader (or the prefix).
        let mut passes: Vec<(u32, usize)> =
            self.readers.iter().map(|&r| (r, self.config.picker.urgent_window as usize)).collect();
        passes.push((self.readers.first().copied().unwrap_or_else(|| self.held.prefix()), usize::MAX));
        for (position, max) in passes {
            if room == 0 {
                break;
            }
            let picks = self.pick_from(&usable, position, room.min(max));
            room -= picks.len();
            for (piece, parent) in picks {
                self.request(now, parent, piece);
            }
        }
    }

    fn pick_from(&self, usable: &[Bitmap], position: u32, max: usize) -> Vec<(u32, ParentId)> {
        let cap = self.config.picker.max_in_flight_per_parent;
        let inputs: Vec<ParentPieces<'_>> = usable
            .iter()
            .zip(&self.parents)
            .map(|(have, p)| {
                // A parent that keeps losing hedge races gets one request at a time.
                let slow = p.lost_races >= self.config.slow_after_lost_races;
                let in_flight = if slow { p.in_flight.max(cap.saturating_sub(1)) } else { p.in_flight };
                ParentPieces { have, in_flight }
            })
            .collect();
        let in_flight = self.busy_pieces();
        let input = PickInput {
            held: &self.held,
            in_flight: &in_flight,
            parents: &inputs,
            read_position: position,
            max_requests: max,
            tie_offset: self.tie_offset,
        };
        pick(&self.config.picker, &input).into_iter().map(|p| (p.piece, ParentId(p.parent))).collect()
    }

    fn request(&mut self, now: u64, parent: ParentId, piece: u32) {
        let p = &mut self.parents[parent.0];
        if p.in_flight == 0 {
            p.last_bytes = now;
        }
        p.in_flight += 1;
        let len = self.layout.piece(piece).len();
        let id = self.requests.insert(parent, piece, now, hard_limit_ms(len));
        self.actions.push_back(Action::Request { id, parent, piece });
    }

    /// How long a request runs before it is hedged.
    fn hedge_after(&self, endgame: bool) -> u64 {
        let c = &self.config;
        let floor = if endgame { c.endgame_hedge_after_ms } else { c.hedge_after_ms };
        floor.max(self.piece_ms.unwrap_or(0) * 3)
    }

    /// Asks a second parent for requests that run long (at most one duplicate per piece).
    fn hedge(&mut self, now: u64) {
        let mut room = self.config.max_in_flight.saturating_sub(self.requests.len());
        if room == 0 {
            return;
        }
        let endgame = self.nothing_left_to_pick();
        let after = self.hedge_after(endgame);
        let cap = self.config.picker.max_in_flight_per_parent;
        for (piece, first) in self.requests.hedge_candidates(now, after) {
            if room == 0 {
                break;
            }
            let other = (0..self.parents.len()).map(ParentId).find(|&q| {
                let p = &self.parents[q.0];
                q != first
                    && p.is_live(now)
                    && p.in_flight < cap
                    && p.have.get(piece)
                    && p.refused.get(&piece).is_none_or(|&t| t <= now)
            });
            if let Some(q) = other {
                self.request(now, q, piece);
                room -= 1;
            }
        }
    }

    fn nothing_left_to_pick(&self) -> bool {
        let busy = self.busy_pieces();
        self.held.missing().all(|i| busy.get(i))
    }

    fn any_live_parent(&self, now: u64) -> bool {
        self.parents.iter().any(|p| p.is_live(now))
    }

    /// Every parent dropped and nothing in flight: ask the scheduler again at once (it knows
    /// the other holders, or sends this child to the origin). Without a scheduler, no live
    /// parent: register again, and the origin takes over after `orphan_ms`.
    fn check_orphaned(&mut self, now: u64) {
        let lost = !self.parents.is_empty() && !self.any_live_parent(now) && !self.live_requests(now);
        if self.session {
            // Stalled parents come back after `suspend_ms` (under load a live parent may be
            // quiet for a second); only when every parent is dropped does the scheduler decide.
            let lost = lost && self.requests.is_empty() && self.parents.iter().all(|p| p.bad);
            // Once per episode: the scheduler counts a child's asks, and sends it to the
            // origin after a few.
            self.orphaned_since = None;
            if !lost {
                self.rescheduled_at = None;
            } else if self.rescheduled_at.is_none() {
                self.rescheduled_at = Some(now);
                self.report(Report::Reschedule);
            }
            return;
        }
        if !(lost || self.orphaned(now)) {
            self.orphaned_since = None;
            return;
        }
        let since = *self.orphaned_since.get_or_insert(now);
        if now >= since + self.config.orphan_ms {
            self.origin.mode = true;
            self.start_origin();
        } else if !self.registering {
            self.registering = true;
            self.actions.push_back(Action::Register);
        }
    }

    /// Nothing in flight from parents, and no live parent holds a missing piece whose trusted
    /// digest is known.
    fn orphaned(&self, now: u64) -> bool {
        if self.live_requests(now) || self.held.is_full() {
            return false;
        }
        let busy = self.busy_pieces();
        let mut want = Bitmap::new(self.layout.count());
        for i in self.held.missing().filter(|i| !busy.get(*i) && self.digests.contains_key(i)) {
            want.set(i);
        }
        !self.parents.iter().any(|p| p.is_live(now) && p.have.and(&want).count() > 0)
    }

    /// Parents that sent nothing for the progress deadline: suspended (no new request), their
    /// requests hedged on live parents (see [`Child::hedge`]) but left running — a parent
    /// that is only slow (a congested link, a busy CPU, a seed handing each piece to one child)
    /// may still deliver, and a cancelled request to a seed costs every sibling that piece. At
    /// the third stall it is dropped and its requests cancelled.
    fn expire_stalled_parents(&mut self, now: u64) {
        let deadline = self.config.progress_deadline_ms;
        for q in (0..self.parents.len()).map(ParentId) {
            let p = &self.parents[q.0];
            if p.bad || p.in_flight == 0 || now < p.last_bytes + deadline {
                continue;
            }
            let limit = self.config.parent_failures;
            let p = &mut self.parents[q.0];
            p.fail(limit);
            p.suspended_until = now + self.config.suspend_ms;
            // The next stall is another full deadline of silence.
            p.last_bytes = now;
            let bad = p.bad;
            // One failure per stall, whatever the number of requests: a parent behind a
            // congested link is not dropped by the scheduler for one quiet second.
            if let Some(piece) = self.requests.pieces_of(q).first().copied() {
                self.report(Report::PieceFailed { index: piece, parent: q, reason: FailReason::Timeout });
            }
            if bad {
                self.drop_requests_of(q);
            }
        }
    }

    /// Cancels every request to a dropped parent and its connection.
    fn drop_requests_of(&mut self, q: ParentId) {
        self.parents[q.0].in_flight = 0;
        for (id, _) in self.requests.remove_parent(q) {
            self.actions.push_back(Action::Cancel(id));
        }
        self.actions.push_back(Action::Forget(q));
    }

    /// Whether some request runs to a live parent.
    fn live_requests(&self, now: u64) -> bool {
        self.requests.parents().any(|q| self.parents[q.0].is_live(now))
    }

    /// Requests past their hard limit (a parent trickling bytes forever).
    fn expire_requests(&mut self, now: u64) {
        for (id, r) in self.requests.expired(now) {
            let limit = self.config.parent_failures;
            let p = &mut self.parents[r.parent.0];
            p.in_flight = p.in_flight.saturating_sub(1);
            p.fail(limit);
            let bad = p.bad;
            self.actions.push_back(Action::Cancel(id));
            self.report(Report::PieceFailed { index: r.piece, parent: r.parent, reason: FailReason::Timeout });
            if bad {
                self.drop_requests_of(r.parent);
            }
        }
    }

    /// Without a new piece for `stall_ms`: ask the scheduler again; after a few stalls, or with
    /// no scheduler and no live parent, the origin takes over.
    fn check_stall(&mut self, now: u64) {
        if self.origin.mode || now < self.last_progress + self.config.stall_ms {
            return;
        }
        self.last_progress = now;
        self.stalls += 1;
        if self.session {
            self.report(Report::Reschedule);
        } else if !self.registering {
            self.registering = true;
            self.actions.push_back(Action::Register);
        }
        if self.stalls >= self.config.stalls_before_origin || (!self.session && !self.any_live_parent(now)) {
            self.origin.mode = true;
        }
    }

    fn cancel_all(&mut self) {
        for (id, r) in self.requests.drain() {
            let p = &mut self.parents[r.parent.0];
            p.in_flight = p.in_flight.saturating_sub(1);
            self.actions.push_back(Action::Cancel(id));
        }
    }

    /// Every piece matched its trusted digest, yet the blob did not: the writer dropped
    /// `dropped` (from parents, or resumed). Stop trusting the table and tell the scheduler
    /// (which drops it and decides again), or go to the origin without a scheduler or the
    /// second time.
    fn blob_mismatch(&mut self, now: u64, dropped: &[u32], kept: &[(u32, Digest)]) {
        self.mismatches += 1;
        let mut blamed: Vec<ParentId> = Vec::new();
        for i in dropped {
            self.held.unset(*i);
            self.origin.pending.unset(*i);
            // A parent that relayed a forged piece is not dropped: it cannot be told from a
            // victim, and every piece is checked against the new table from now on.
            if let Some(p) = self.from_parent.remove(i) {
                if !blamed.contains(&p) {
                    blamed.push(p);
                }
            }
        }
        let epoch = self.used_epoch.take();
        if epoch.is_none_or(|e| e >= self.digest_epoch) {
            // Else a newer table arrived already: it is not the forged one, keep it.
            self.digests.clear();
            // The scheduler may still send the forged table's digests until it has read our
            // report: they are not taken again.
            if self.session {
                self.forged_epoch = Some(self.digest_epoch);
            }
        }
        match epoch {
            Some(epoch) if self.session && self.mismatches < 2 => {
                self.report(Report::BlobMismatch { epoch, parents: blamed });
                // The pieces kept came from the origin here: if the scheduler sends this child
                // back to source, their digests start the new table.
                for &(index, digest) in kept {
                    self.report(Report::PieceFinished { index, digest, from_origin: true });
                }
                self.last_progress = now;
            }
            _ => {
                // No scheduler to sort it out: the parents that sent these pieces lied (or
                // relayed a lie); the origin has the last word.
                for p in blamed {
                    self.parents[p.0].bad = true;
                }
                self.origin.mode = true;
            }
        }
    }
}

/// A request for a piece of `len` bytes may run this long at most, however slowly it moves.
fn hard_limit_ms(len: u64) -> u64 {
    10_000 + len / 1024
}

/// Runs of wanted pieces, starting with the run at or after `first` (wrapping): the origin
/// serves a reader's position first.
fn runs_from(wanted: &Bitmap, first: u32) -> Vec<Range<u32>> {
    let mut runs: Vec<Range<u32>> = Vec::new();
    for i in (0..wanted.len()).filter(|&i| wanted.get(i)) {
        match runs.last_mut() {
            Some(r) if r.end == i => r.end = i + 1,
            _ => runs.push(i..i + 1),
        }
    }
    let split = runs.iter().position(|r| r.end > first).unwrap_or(0);
    runs.rotate_left(split);
    runs
}

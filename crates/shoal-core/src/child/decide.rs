//! The child machine's rules: what follows from its state (verify, origin runs, picks, hedges,
//! asking again), the time's effects (stalled parents, long requests, stalls) and a blob that
//! did not verify.

use std::ops::Range;

use super::{Action, Child, ParentId, Report};
use crate::picker::{pick, ParentPieces, PickInput};
use crate::sched::FailReason;
use crate::{Bitmap, PieceDigest};

impl Child {
    pub(super) fn report(&mut self, report: Report) {
        if self.session {
            self.actions.push_back(Action::Report(report));
        }
    }

    pub(super) fn accept(&mut self, now: u64, piece: u32, parent: ParentId, started: u64) {
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
    pub(super) fn decide(&mut self, now: u64) {
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
        if self.origin.mode && now >= self.origin.retry_at {
            self.start_origin();
            return;
        }
        // Parents go on while an origin that failed waits to be asked again.
        self.pick(now);
        self.hedge(now);
        if self.origin.mode {
            self.orphaned_since = None;
        } else {
            self.check_orphaned(now);
        }
    }

    pub(super) fn start_origin(&mut self) {
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
    pub(super) fn busy_pieces(&self) -> Bitmap {
        let mut busy = self.landing.clone();
        for i in self.requests.pieces() {
            busy.set(i);
        }
        busy
    }

    pub(super) fn pick(&mut self, now: u64) {
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

    pub(super) fn pick_from(&self, usable: &[Bitmap], position: u32, max: usize) -> Vec<(u32, ParentId)> {
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

    pub(super) fn request(&mut self, now: u64, parent: ParentId, piece: u32) {
        let p = &mut self.parents[parent.0];
        if p.in_flight == 0 {
            p.last_bytes = now;
        }
        p.in_flight += 1;
        let len = self.layout.piece(piece).len();
        let id = self.requests.insert(parent, piece, now, hard_limit_ms(len), self.digest_epoch);
        self.actions.push_back(Action::Request { id, parent, piece });
    }

    /// How long a request runs before it is hedged.
    pub(super) fn hedge_after(&self, endgame: bool) -> u64 {
        let c = &self.config;
        let floor = if endgame { c.endgame_hedge_after_ms } else { c.hedge_after_ms };
        floor.max(self.piece_ms.unwrap_or(0) * 3)
    }

    /// Asks a second parent for requests that run long (at most one duplicate per piece).
    pub(super) fn hedge(&mut self, now: u64) {
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

    pub(super) fn nothing_left_to_pick(&self) -> bool {
        let busy = self.busy_pieces();
        self.held.missing().all(|i| busy.get(i))
    }

    pub(super) fn any_live_parent(&self, now: u64) -> bool {
        self.parents.iter().any(|p| p.is_live(now))
    }

    /// Every parent dropped and nothing in flight: ask the scheduler again at once (it knows
    /// the other holders, or sends this child to the origin). Without a scheduler, no live
    /// parent: register again, and the origin takes over after `orphan_ms`.
    pub(super) fn check_orphaned(&mut self, now: u64) {
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
    pub(super) fn orphaned(&self, now: u64) -> bool {
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
    pub(super) fn expire_stalled_parents(&mut self, now: u64) {
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
    pub(super) fn drop_requests_of(&mut self, q: ParentId) {
        self.parents[q.0].in_flight = 0;
        for (id, _) in self.requests.remove_parent(q) {
            self.actions.push_back(Action::Cancel(id));
        }
        self.actions.push_back(Action::Forget(q));
    }

    /// Whether some request runs to a live parent.
    pub(super) fn live_requests(&self, now: u64) -> bool {
        self.requests.parents().any(|q| self.parents[q.0].is_live(now))
    }

    /// Requests past their hard limit (a parent trickling bytes forever).
    pub(super) fn expire_requests(&mut self, now: u64) {
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
    pub(super) fn check_stall(&mut self, now: u64) {
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

    pub(super) fn cancel_all(&mut self) {
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
    pub(super) fn blob_mismatch(&mut self, now: u64, dropped: &[u32], kept: &[(u32, PieceDigest)]) {
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
pub(super) fn hard_limit_ms(len: u64) -> u64 {
    10_000 + len / 1024
}

/// Runs of wanted pieces, starting with the run at or after `first` (wrapping): the origin
/// serves a reader's position first.
pub(super) fn runs_from(wanted: &Bitmap, first: u32) -> Vec<Range<u32>> {
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

//! The child's requests in flight: which piece from which parent, since when, how far along.

use std::collections::{BTreeMap, HashMap};

use super::ParentId;

/// Names one request in the driver's answers.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct RequestId(pub u64);

/// One request to a parent.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(super) struct Request {
    pub parent: ParentId,
    pub piece: u32,
    pub started: u64,
    /// Bytes received so far.
    pub bytes: u64,
    /// Cancelled as failed after this time, however it moves.
    pub hard_deadline: u64,
    /// The digest table generation it was asked under.
    pub epoch: u32,
}

/// Every request in flight; at most two per piece (the first and one hedge).
#[derive(Debug, Default)]
pub(super) struct Requests {
    next: u64,
    by_id: BTreeMap<RequestId, Request>,
    by_piece: HashMap<u32, Vec<RequestId>>,
}

impl Requests {
    pub fn insert(&mut self, parent: ParentId, piece: u32, now: u64, limit_ms: u64, epoch: u32) -> RequestId {
        let id = RequestId(self.next);
        self.next += 1;
        let r = Request { parent, piece, started: now, bytes: 0, hard_deadline: now + limit_ms, epoch };
        self.by_id.insert(id, r);
        self.by_piece.entry(piece).or_default().push(id);
        id
    }

    pub fn len(&self) -> usize {
        self.by_id.len()
    }

    pub fn is_empty(&self) -> bool {
        self.by_id.is_empty()
    }

    /// Pieces with a request in flight.
    pub fn pieces(&self) -> impl Iterator<Item = u32> + '_ {
        self.by_piece.keys().copied()
    }

    pub fn remove(&mut self, id: RequestId) -> Option<Request> {
        let r = self.by_id.remove(&id)?;
        if let Some(ids) = self.by_piece.get_mut(&r.piece) {
            ids.retain(|&x| x != id);
            if ids.is_empty() {
                self.by_piece.remove(&r.piece);
            }
        }
        Some(r)
    }

    /// Records bytes received; the parent when they moved forward.
    pub fn progress(&mut self, id: RequestId, bytes: u64) -> Option<ParentId> {
        let r = self.by_id.get_mut(&id)?;
        if bytes <= r.bytes {
            return None;
        }
        r.bytes = bytes;
        Some(r.parent)
    }

    /// The parents `piece` is asked of.
    pub fn parents_of(&self, piece: u32) -> impl Iterator<Item = ParentId> + '_ {
        self.by_piece.get(&piece).into_iter().flatten().filter_map(|id| self.by_id.get(id).map(|r| r.parent))
    }

    /// The parents with a request running.
    pub fn parents(&self) -> impl Iterator<Item = ParentId> + '_ {
        self.by_id.values().map(|r| r.parent)
    }

    /// The pieces asked of `parent`.
    pub fn pieces_of(&self, parent: ParentId) -> Vec<u32> {
        self.by_id.values().filter(|r| r.parent == parent).map(|r| r.piece).collect()
    }

    /// Removes the requests still running for `piece` (it arrived by another one).
    pub fn remove_piece(&mut self, piece: u32) -> Vec<(RequestId, ParentId)> {
        let ids = self.by_piece.remove(&piece).unwrap_or_default();
        ids.into_iter().filter_map(|id| self.by_id.remove(&id).map(|r| (id, r.parent))).collect()
    }

    /// Removes every request to `parent`.
    pub fn remove_parent(&mut self, parent: ParentId) -> Vec<(RequestId, u32)> {
        let ids: Vec<RequestId> = self.by_id.iter().filter(|(_, r)| r.parent == parent).map(|(&id, _)| id).collect();
        ids.into_iter().filter_map(|id| self.remove(id).map(|r| (id, r.piece))).collect()
    }

    /// Removes the requests past their hard deadline.
    pub fn expired(&mut self, now: u64) -> Vec<(RequestId, Request)> {
        let ids: Vec<RequestId> =
            self.by_id.iter().filter(|(_, r)| now >= r.hard_deadline).map(|(&id, _)| id).collect();
        ids.into_iter().filter_map(|id| self.remove(id).map(|r| (id, r))).collect()
    }

    /// Pieces with one request only, running for `after` or longer: (piece, its parent),
    /// oldest first.
    pub fn hedge_candidates(&self, now: u64, after: u64) -> Vec<(u32, ParentId)> {
        let mut out: Vec<(u64, u32, ParentId)> = self
            .by_piece
            .iter()
            .filter(|(_, ids)| ids.len() == 1)
            .filter_map(|(&piece, ids)| self.by_id.get(&ids[0]).map(|r| (r.started, piece, r.parent)))
            .filter(|(started, _, _)| now >= started + after)
            .collect();
        out.sort_unstable();
        out.into_iter().map(|(_, piece, parent)| (piece, parent)).collect()
    }

    /// The earliest hard deadline or hedge time.
    pub fn next_deadline(&self, hedge_after: u64) -> Option<u64> {
        let hard = self.by_id.values().map(|r| r.hard_deadline);
        let hedge = self
            .by_piece
            .values()
            .filter(|ids| ids.len() == 1)
            .filter_map(|ids| self.by_id.get(&ids[0]).map(|r| r.started + hedge_after));
        hard.chain(hedge).min()
    }

    /// Removes everything.
    pub fn drain(&mut self) -> Vec<(RequestId, Request)> {
        self.by_piece.clear();
        std::mem::take(&mut self.by_id).into_iter().collect()
    }
}

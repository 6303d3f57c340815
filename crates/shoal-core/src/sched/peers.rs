//! A task's peers: a vector scanned at every decision, with an index by host id.
//!
//! Storage only: it knows nothing of links, sites or rules. Scans run in storage order, which
//! is not meaningful; whoever needs an order sorts (or uses [`Peers::iter_sorted`]).

use std::collections::{BTreeMap, BTreeSet};
use std::ops::Index;

use super::host::Slot;
use super::HostId;
use crate::Bitmap;

/// One host's download of the task.
#[derive(Debug, Clone)]
pub(super) struct Peer {
    /// The host's slot in the host table.
    pub host: Slot,
    /// Pieces held and verified.
    pub have: Bitmap,
    /// `have.count()`, kept in step with it (ranking reads it for every peer).
    pub pieces: u32,
    /// Holds an origin slot of its site (or was granted origin beyond budget).
    pub back_to_source: bool,
    /// Holds the whole verified blob.
    pub done: bool,
    /// Parents assigned by the last decision (minus those dropped since).
    pub parents: BTreeSet<HostId>,
    /// Children that have this peer among their parents.
    pub children: BTreeSet<HostId>,
    /// Parents this peer reported bad: never offered to it again.
    pub bad: BTreeSet<HostId>,
    /// Failures reported per parent.
    pub failures: BTreeMap<HostId, u32>,
    /// Reschedule requests since the last new piece.
    pub reschedules: u32,
    /// Distinct peers that reported a digest mismatch from this one (a copy of the task's
    /// record, which outlives the peer).
    pub mismatch_reports: u32,
}

impl Peer {
    pub fn new(host: Slot, have: Bitmap) -> Self {
        Self {
            host,
            pieces: have.count(),
            have,
            back_to_source: false,
            done: false,
            parents: BTreeSet::new(),
            children: BTreeSet::new(),
            bad: BTreeSet::new(),
            failures: BTreeMap::new(),
            reschedules: 0,
            mismatch_reports: 0,
        }
    }
}

/// The peers of one task.
#[derive(Debug, Clone, Default)]
pub(super) struct Peers {
    list: Vec<(HostId, Peer)>,
    index: BTreeMap<HostId, usize>,
}

impl Peers {
    pub fn get(&self, id: &HostId) -> Option<&Peer> {
        self.index.get(id).map(|&i| &self.list[i].1)
    }

    pub fn get_mut(&mut self, id: &HostId) -> Option<&mut Peer> {
        self.index.get(id).map(|&i| &mut self.list[i].1)
    }

    pub fn contains_key(&self, id: &HostId) -> bool {
        self.index.contains_key(id)
    }

    /// The peer, added with `new` if absent.
    pub fn get_or_insert(&mut self, id: &HostId, new: impl FnOnce() -> Peer) -> &mut Peer {
        let i = match self.index.get(id) {
            Some(&i) => i,
            None => {
                self.list.push((id.clone(), new()));
                self.index.insert(id.clone(), self.list.len() - 1);
                self.list.len() - 1
            }
        };
        &mut self.list[i].1
    }

    pub fn remove(&mut self, id: &HostId) -> Option<Peer> {
        let i = self.index.remove(id)?;
        let (_, peer) = self.list.swap_remove(i);
        if let Some((moved, _)) = self.list.get(i) {
            self.index.insert(moved.clone(), i);
        }
        Some(peer)
    }

    pub fn len(&self) -> usize {
        self.list.len()
    }

    pub fn is_empty(&self) -> bool {
        self.list.is_empty()
    }

    /// Every peer, in storage order.
    pub fn values_mut(&mut self) -> impl Iterator<Item = &mut Peer> {
        self.list.iter_mut().map(|(_, p)| p)
    }

    pub fn iter(&self) -> impl Iterator<Item = (&HostId, &Peer)> {
        self.list.iter().map(|(id, p)| (id, p))
    }

    /// Every peer, by host id.
    pub fn iter_sorted(&self) -> impl Iterator<Item = (&HostId, &Peer)> {
        self.index.iter().map(|(id, &i)| (id, &self.list[i].1))
    }
}

impl Index<&HostId> for Peers {
    type Output = Peer;

    /// The peer; panics if absent (tests and invariant checks only).
    fn index(&self, id: &HostId) -> &Peer {
        self.get(id).expect("no such peer")
    }
}

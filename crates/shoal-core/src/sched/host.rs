//! The host table: what each daemon announced, when it was last heard from, and how many
//! children the scheduler has assigned to it across all tasks.
//!
//! Bookkeeping only: it decides nothing and never touches tasks (the scheduler removes an
//! expired host's peers before removing the host).

use std::collections::BTreeMap;

use super::{HostError, HostId, HostInfo, SessionId, Speaker};

/// One announced host.
#[derive(Debug, Clone)]
pub(super) struct HostEntry {
    /// The latest announcement.
    pub info: HostInfo,
    /// Last time (ms) the host announced itself or reported anything.
    pub last_seen: u64,
    /// Parent links to this host, over all tasks.
    pub children: u32,
    /// `info.site`, interned: compared for every peer of a task at every decision.
    pub site: SiteId,
    /// The session that announced the host; `None` once it ended (any session may then
    /// announce the host again).
    pub session: Option<SessionId>,
}

impl HostEntry {
    /// Upload load as the scheduler counts it against the cap: the larger of what the host
    /// reports and what the scheduler assigned.
    pub fn load(&self) -> u32 {
        self.info.load.max(self.children)
    }
}

/// A site label, interned (labels are few and never forgotten).
pub(super) type SiteId = u32;

/// A host's place in the table: stable while the host is live, reused after it is removed
/// (by then no peer refers to it any more).
pub(super) type Slot = usize;

/// Every live host, by id and by slot.
#[derive(Debug, Default)]
pub(super) struct Hosts {
    slots: Vec<Option<HostEntry>>,
    free: Vec<Slot>,
    index: BTreeMap<HostId, Slot>,
    sites: BTreeMap<String, SiteId>,
}

impl Hosts {
    /// Adds or refreshes a host, keeping its slot and assigned-children count. Refused when
    /// another live session announced it.
    pub fn announce(&mut self, now: u64, session: SessionId, info: HostInfo) -> Result<(), HostError> {
        if self.speaker(session, &info.id) == Speaker::Other {
            return Err(HostError::Taken(info.id));
        }
        let next = SiteId::try_from(self.sites.len()).unwrap_or(SiteId::MAX);
        let site = *self.sites.entry(info.site.clone()).or_insert(next);
        if let Some(entry) = self.index.get(&info.id).and_then(|&s| self.slots[s].as_mut()) {
            entry.site = site;
            entry.info = info;
            entry.session = Some(session);
            entry.last_seen = entry.last_seen.max(now);
            return Ok(());
        }
        let id = info.id.clone();
        let entry = Some(HostEntry { info, last_seen: now, children: 0, site, session: Some(session) });
        let slot = match self.free.pop() {
            Some(slot) => {
                self.slots[slot] = entry;
                slot
            }
            None => {
                self.slots.push(entry);
                self.slots.len() - 1
            }
        };
        self.index.insert(id, slot);
        Ok(())
    }

    /// Whether `session` may speak for host `id`.
    pub fn speaker(&self, session: SessionId, id: &HostId) -> Speaker {
        match self.get(id).map(|e| e.session) {
            None => Speaker::Unknown,
            Some(Some(owner)) if owner != session => Speaker::Other,
            Some(_) => Speaker::Owner,
        }
    }

    /// A session ended: the hosts it announced may be announced by another session.
    pub fn session_ended(&mut self, session: SessionId) {
        for entry in self.slots.iter_mut().flatten() {
            if entry.session == Some(session) {
                entry.session = None;
            }
        }
    }

    /// Records that the host was heard from.
    pub fn touch(&mut self, now: u64, id: &HostId) {
        if let Some(entry) = self.index.get(id).and_then(|&s| self.slots[s].as_mut()) {
            entry.last_seen = entry.last_seen.max(now);
        }
    }

    /// Records that the host in `slot` was heard from.
    pub fn touch_at(&mut self, now: u64, slot: Slot) {
        if let Some(Some(entry)) = self.slots.get_mut(slot) {
            entry.last_seen = entry.last_seen.max(now);
        }
    }

    /// The slot of a live host.
    pub fn slot(&self, id: &HostId) -> Option<Slot> {
        self.index.get(id).copied()
    }

    pub fn get(&self, id: &HostId) -> Option<&HostEntry> {
        self.at(self.slot(id)?)
    }

    pub fn at(&self, slot: Slot) -> Option<&HostEntry> {
        self.slots.get(slot)?.as_ref()
    }

    /// The site of the host in `slot` (`SiteId::MAX` if none).
    pub fn site_at(&self, slot: Slot) -> SiteId {
        self.at(slot).map_or(SiteId::MAX, |e| e.site)
    }

    /// Hosts not heard from for `ttl` ms or more, by id.
    pub fn expired(&self, now: u64, ttl: u64) -> Vec<HostId> {
        self.index
            .iter()
            .filter(|(_, &s)| self.at(s).is_some_and(|e| now.saturating_sub(e.last_seen) >= ttl))
            .map(|(id, _)| id.clone())
            .collect()
    }

    pub fn remove(&mut self, id: &HostId) -> Option<HostEntry> {
        let slot = self.index.remove(id)?;
        self.free.push(slot);
        self.slots[slot].take()
    }

    pub fn add_child(&mut self, parent: Slot) {
        if let Some(Some(e)) = self.slots.get_mut(parent) {
            e.children += 1;
        }
    }

    pub fn remove_child(&mut self, parent: Slot) {
        if let Some(Some(e)) = self.slots.get_mut(parent) {
            e.children = e.children.saturating_sub(1);
        }
    }

    /// Every live host, by id.
    pub fn iter(&self) -> impl Iterator<Item = &HostEntry> {
        self.index.values().filter_map(|&s| self.at(s))
    }
}

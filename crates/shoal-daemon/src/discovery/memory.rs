//! An in-memory [`Discovery`]: members of one [`MemoryNetwork`] share a map of who holds what.
//! For unit tests of the layers above discovery; it never touches the network.

use std::collections::{BTreeMap, BTreeSet, HashMap};
use std::sync::{Arc, Mutex, MutexGuard};

use shoal_core::Digest;

use super::{Discovery, DiscoveryError, Holder, MAX_HOLDERS};

#[derive(Debug, Default)]
struct State {
    members: BTreeMap<String, Holder>,
    held: HashMap<Digest, BTreeSet<String>>,
}

/// A cluster in memory: every [`MemoryDiscovery`] joined to it sees the others.
#[derive(Debug, Clone, Default)]
pub struct MemoryNetwork {
    state: Arc<Mutex<State>>,
}

impl MemoryNetwork {
    /// Adds a member; its handle advertises and finds in this network.
    pub fn join(&self, me: Holder) -> MemoryDiscovery {
        self.lock().members.insert(me.host_id.clone(), me.clone());
        MemoryDiscovery { network: self.clone(), me }
    }

    /// Removes a member and everything it advertised, as if it had died.
    pub fn leave(&self, host_id: &str) {
        let mut state = self.lock();
        state.members.remove(host_id);
        state.held.values_mut().for_each(|h| {
            h.remove(host_id);
        });
    }

    fn lock(&self) -> MutexGuard<'_, State> {
        self.state.lock().unwrap_or_else(|p| p.into_inner())
    }
}

/// One member's view of a [`MemoryNetwork`].
#[derive(Debug, Clone)]
pub struct MemoryDiscovery {
    network: MemoryNetwork,
    me: Holder,
}

#[async_trait::async_trait]
impl Discovery for MemoryDiscovery {
    fn ready(&self) -> bool {
        self.network.lock().members.len() > 1
    }

    async fn holders(&self, blob: &Digest) -> Result<Vec<Holder>, DiscoveryError> {
        let state = self.network.lock();
        let Some(ids) = state.held.get(blob) else { return Ok(Vec::new()) };
        Ok(ids
            .iter()
            .filter(|id| **id != self.me.host_id)
            .filter_map(|id| state.members.get(id).cloned())
            .take(MAX_HOLDERS)
            .collect())
    }

    async fn advertise(&self, blob: &Digest) -> Result<(), DiscoveryError> {
        self.network.lock().held.entry(*blob).or_default().insert(self.me.host_id.clone());
        Ok(())
    }

    async fn withdraw(&self, blob: &Digest) -> Result<(), DiscoveryError> {
        let mut state = self.network.lock();
        if let Some(ids) = state.held.get_mut(blob) {
            ids.remove(&self.me.host_id);
            if ids.is_empty() {
                state.held.remove(blob);
            }
        }
        Ok(())
    }

    fn members(&self) -> Vec<Holder> {
        self.network.lock().members.values().cloned().collect()
    }
}

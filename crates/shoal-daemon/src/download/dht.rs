//! Parents and piece digests from the DHT, for a download no scheduler steers.
//!
//! Without a scheduler there is no trusted digest table. Each holder the DHT names sends the
//! table it has ([`PeerClient::fetch_digests`]): the node that fetched the blob from the origin
//! computed its digests from the origin's bytes, and every other holder copied a table it
//! checked. Tables are cross-checked piece by piece: a digest counts when the holders that
//! have one agree, or when most of them do (those that disagree are liars: never offered again
//! for this blob); a tie trusts nobody and leaves the piece to the origin. The whole-blob sha256
//! is the final word: a blob that does not match drops every parent's piece and goes to the
//! origin, and its parents are dropped (see `shoal_core::child`).
//!
//! Who fetches from the origin is agreed without a central party: rendezvous hashing of the
//! blob over the members downloading it ([`origin_fetcher`]); the others wait a bounded time for
//! it to appear as a holder with pieces, then go to the origin themselves.

use std::collections::{HashMap, HashSet};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use futures::future::join_all;
use shoal_core::child::Offered;
use shoal_core::{Bitmap, Digest, PieceDigest, PieceLayout};

use crate::discovery::{origin_fetcher, Holder, Holdings};
use crate::peer::client::{DigestTable, PeerClient};

/// Holders whose tables are read in one lookup.
const MAX_TABLES: usize = 8;
/// Bound on reading one holder's table.
const TABLE_TIMEOUT: Duration = Duration::from_secs(2);
/// How long the DHT's list of holders is reused: tables are read from them more often (they
/// grow as the holders download), the DHT is asked again for newcomers.
const HOLDERS_FOR: Duration = Duration::from_secs(3);

/// One blob's view of the DHT.
pub struct DhtSource {
    holdings: Arc<Holdings>,
    peers: Arc<PeerClient>,
    digest: Digest,
    layout: PieceLayout,
    host_id: String,
    liars: Mutex<HashSet<String>>,
    /// The holders the DHT named last, and when.
    holders: Mutex<Option<(Vec<Holder>, Instant)>>,
}

/// What one lookup found.
#[derive(Debug, Default)]
pub struct Found {
    /// Holders whose tables match the blob's layout, with the pieces they have.
    pub offered: Vec<Offered>,
    /// Digests the holders agree on.
    pub digests: Vec<(u32, PieceDigest)>,
}

impl Found {
    /// Whether some holder can serve a piece with an agreed digest.
    pub fn has_pieces(&self) -> bool {
        let agreed: HashSet<u32> = self.digests.iter().map(|(i, _)| *i).collect();
        self.offered.iter().any(|o| o.have.count() > 0 && agreed.iter().any(|&i| o.have.get(i)))
    }
}

impl DhtSource {
    /// A source for `digest`, or `None` without a DHT.
    pub fn new(
        holdings: Option<&Arc<Holdings>>,
        peers: Arc<PeerClient>,
        digest: Digest,
        layout: PieceLayout,
        host_id: String,
    ) -> Option<Self> {
        let holdings = holdings?.clone();
        Some(Self { holdings, peers, digest, layout, host_id, liars: Mutex::default(), holders: Mutex::default() })
    }

    /// Whether the DHT knows another member.
    pub fn ready(&self) -> bool {
        self.holdings.discovery().ready()
    }

    /// Whether this node is the one to fetch the blob from the origin: rendezvous hashing
    /// over the members downloading it (every download advertises the blob as it starts)
    /// and this node.
    pub fn fetches_from_origin(&self, found: &Found) -> bool {
        let me = Holder { host_id: self.host_id.clone(), addr: ([0, 0, 0, 0], 0).into() };
        let mut candidates: Vec<Holder> = found
            .offered
            .iter()
            .filter_map(|o| Some(Holder { host_id: o.host_id.clone(), addr: o.addr.parse().ok()? }))
            .collect();
        candidates.push(me);
        origin_fetcher(&candidates, &self.digest).is_none_or(|m| m.host_id == self.host_id)
    }

    /// Tells the other members this node holds (part of) the blob.
    pub fn advertise(&self) {
        let (holdings, digest) = (self.holdings.clone(), self.digest);
        tokio::spawn(async move {
            if let Err(e) = holdings.advertise(&digest).await {
                tracing::debug!(%digest, error = %e, "advertising a blob failed");
            }
        });
    }

    /// Marks members whose pieces made the blob fail its sha256: never offered again.
    pub fn blame(&self, hosts: impl IntoIterator<Item = String>) {
        self.liars.lock().unwrap_or_else(|p| p.into_inner()).extend(hosts);
    }

    /// The holders the DHT names, asked again every [`HOLDERS_FOR`].
    async fn holders(&self) -> Vec<Holder> {
        let cached = self.holders.lock().unwrap_or_else(|p| p.into_inner()).clone();
        if let Some((holders, _)) = cached.filter(|(h, at)| !h.is_empty() && at.elapsed() < HOLDERS_FOR) {
            return holders;
        }
        match self.holdings.discovery().holders(&self.digest).await {
            Ok(h) => {
                *self.holders.lock().unwrap_or_else(|p| p.into_inner()) = Some((h.clone(), Instant::now()));
                h
            }
            Err(e) => {
                tracing::debug!(digest = %self.digest, error = %e, "DHT lookup failed");
                Vec::new()
            }
        }
    }

    /// Holders, their pieces, and the digests they agree on.
    pub async fn look(&self) -> Found {
        let holders = self.holders().await;
        let liars = self.liars.lock().unwrap_or_else(|p| p.into_inner()).clone();
        let holders: Vec<Holder> = holders
            .into_iter()
            .filter(|h| h.host_id != self.host_id && !liars.contains(&h.host_id))
            .take(MAX_TABLES)
            .collect();
        let tables = join_all(holders.iter().map(|h| self.table(h))).await;
        let tables: Vec<(Holder, DigestTable)> =
            holders.into_iter().zip(tables).filter_map(|(h, t)| Some((h, t?))).collect();
        let (digests, caught) = cross_check(self.layout.count(), &tables);
        if !caught.is_empty() {
            tracing::warn!(digest = %self.digest, liars = ?caught, "members sent piece digests the others contradict; avoiding them");
            self.liars.lock().unwrap_or_else(|p| p.into_inner()).extend(caught.iter().cloned());
        }
        let offered = tables
            .iter()
            .filter(|(h, _)| !caught.contains(&h.host_id))
            .map(|(h, t)| Offered { host_id: h.host_id.clone(), addr: h.addr.to_string(), have: have_of(t) })
            .collect();
        Found { offered, digests }
    }

    async fn table(&self, holder: &Holder) -> Option<DigestTable> {
        let read = self.peers.fetch_digests(holder.addr, &self.digest, self.layout.size);
        match tokio::time::timeout(TABLE_TIMEOUT, read).await {
            Ok(Ok(t)) if t.layout == self.layout && t.digests.len() == self.layout.count() as usize => Some(t),
            Ok(Ok(_)) => None,
            Ok(Err(e)) => {
                tracing::debug!(holder = %holder.host_id, error = %e, "reading a digest table failed");
                None
            }
            Err(_) => None,
        }
    }
}

/// The pieces a holder has a digest for.
fn have_of(table: &DigestTable) -> Bitmap {
    let mut have = Bitmap::new(table.digests.len() as u32);
    for (i, d) in table.digests.iter().enumerate() {
        if d.is_some() {
            have.set(i as u32);
        }
    }
    have
}

/// Per piece, the digest most holders give (strictly more than any other); holders that give
/// another one where a majority exists are returned as liars.
pub fn cross_check(count: u32, tables: &[(Holder, DigestTable)]) -> (Vec<(u32, PieceDigest)>, HashSet<String>) {
    let mut agreed = Vec::new();
    let mut liars = HashSet::new();
    for i in 0..count as usize {
        let mut votes: HashMap<PieceDigest, Vec<&str>> = HashMap::new();
        for (h, t) in tables {
            if let Some(Some(d)) = t.digests.get(i) {
                votes.entry(*d).or_default().push(&h.host_id);
            }
        }
        let mut ranked: Vec<(&PieceDigest, &Vec<&str>)> = votes.iter().collect();
        ranked.sort_by_key(|(_, v)| std::cmp::Reverse(v.len()));
        match ranked.as_slice() {
            [] => {}
            [(d, _)] => agreed.push((i as u32, **d)),
            [(d, best), (_, next), ..] if best.len() > next.len() => {
                agreed.push((i as u32, **d));
                for (other, hosts) in &ranked[1..] {
                    if *other != *d {
                        liars.extend(hosts.iter().map(|h| h.to_string()));
                    }
                }
            }
            _ => {}
        }
    }
    (agreed, liars)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn table(digests: Vec<Option<PieceDigest>>) -> DigestTable {
        let layout = PieceLayout { size: digests.len() as u64, piece_size: 1 };
        DigestTable { layout, digests, complete: false }
    }

    fn holder(name: &str) -> Holder {
        Holder { host_id: name.into(), addr: ([127, 0, 0, 1], 1).into() }
    }

    #[test]
    fn agreeing_tables_are_trusted_and_a_lone_table_too() {
        let (a, b) = (PieceDigest::of(b"a"), PieceDigest::of(b"b"));
        let tables = vec![(holder("x"), table(vec![Some(a), None])), (holder("y"), table(vec![Some(a), Some(b)]))];
        let (agreed, liars) = cross_check(2, &tables);
        assert_eq!(agreed, vec![(0, a), (1, b)]);
        assert!(liars.is_empty());
    }

    #[test]
    fn a_majority_outvotes_a_liar_and_a_tie_trusts_nobody() {
        let (good, forged) = (PieceDigest::of(b"good"), PieceDigest::of(b"forged"));
        let tables = vec![
            (holder("x"), table(vec![Some(good), Some(good)])),
            (holder("y"), table(vec![Some(good), Some(forged)])),
            (holder("liar"), table(vec![Some(forged), None])),
        ];
        let (agreed, liars) = cross_check(2, &tables);
        assert_eq!(agreed, vec![(0, good)], "piece 1 is a tie");
        assert_eq!(liars, HashSet::from(["liar".to_string()]));
    }
}

//! What the site knows, for when the origin cannot be asked (a site cut off from it): other
//! members answer from their caches whether a repository was seen public, where a tag pointed,
//! whether an object belongs to the repository, a cached manifest and a held blob's size
//! ([`Knowledge`] answers; [`Site::ask`] asks).
//!
//! Everything a member says is bounded and checked before use: digests parsed, a manifest
//! hashed against its digest, sizes against `max_blob_size`, times not in the future. It never
//! grants anything by itself: the answers are inputs to [`super::authz::Authz::decide_offline`],
//! the one access rule; a private repository is still served only to credentials this node saw
//! the origin accept.

use std::collections::HashMap;
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use futures::StreamExt;
use shoal_core::{Digest, RepoName};
use shoal_proto::peer::{SiteAnswer, SiteRequest};

use super::grants::Grants;
use crate::clock::now_ms;
use crate::discovery::Holdings;
use crate::peer::client::PeerClient;
use crate::store::meta::{tag_key, ManifestRecord, MetaStore};

/// How long one member has to answer.
const ASK_TIMEOUT: Duration = Duration::from_millis(1500);
/// How long the other members have once one has answered.
const AFTER_FIRST: Duration = Duration::from_millis(200);
/// Members asked at most per question.
const MAX_ASKED: usize = 32;
/// Largest manifest taken from a member (the mirror's own limit).
const MAX_MANIFEST: usize = 4 << 20;
/// Longest media type taken from a member.
const MAX_MEDIA_TYPE: usize = 255;

/// What a question is about.
pub struct Question<'a> {
    /// The registry's configured name.
    pub registry: &'a str,
    /// The repository.
    pub name: &'a RepoName,
    /// A tag to resolve.
    pub tag: Option<&'a str>,
    /// A manifest or blob digest.
    pub digest: Option<&'a Digest>,
}

/// What the site's members said, merged and checked.
#[derive(Debug, Default, Clone)]
pub struct SiteKnowledge {
    /// The latest time a member saw the origin let anonymous clients pull the repository.
    pub public_at: Option<u64>,
    /// Where the tag pointed at its most recent sighting in the site.
    pub tag: Option<SiteTag>,
    /// A member saw the asked object (or the tag's manifest) served under the repository.
    pub in_repo: bool,
    /// The asked digest's manifest, checked against it.
    pub manifest: Option<ManifestRecord>,
    /// The asked blob's size, as most holders give it.
    pub blob_size: Option<u64>,
}

/// A tag's target as the site knows it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SiteTag {
    /// The manifest the tag named.
    pub digest: Digest,
    /// That manifest, when a member sent it (checked against the digest).
    pub record: Option<ManifestRecord>,
    /// When the origin said so, unix ms (0: a member that did not record it).
    pub seen_at_ms: u64,
}

/// Asks the other members of the cluster (those the DHT knows).
pub struct Site {
    /// The peer client (QUIC, cluster token).
    pub peers: Arc<PeerClient>,
    /// The DHT's view of the members.
    pub holdings: Arc<Holdings>,
    /// This node's peer address (never asked).
    pub me: SocketAddr,
}

impl Site {
    /// Asks up to [`MAX_ASKED`] members at once, each for at most [`ASK_TIMEOUT`]; merges what
    /// they answer. A member that does not answer in time adds nothing.
    pub async fn ask(&self, q: &Question<'_>) -> SiteKnowledge {
        let req = SiteRequest {
            registry: q.registry.to_owned(),
            repository: q.name.to_string(),
            tag: q.tag.unwrap_or_default().to_owned(),
            digest: q.digest.map(|d| d.to_string()).unwrap_or_default(),
        };
        let members = self.holdings.discovery().members();
        let mut asks: futures::stream::FuturesUnordered<_> = members
            .iter()
            .filter(|m| m.addr != self.me)
            .take(MAX_ASKED)
            .map(|m| {
                let (peers, req) = (self.peers.clone(), req.clone());
                async move { tokio::time::timeout(ASK_TIMEOUT, peers.ask_site(m.addr, &req)).await.ok()?.ok() }
            })
            .collect();
        // Members cut off with the origin never answer: once one has answered what was asked,
        // the others get `AFTER_FIRST` more, not the whole `ASK_TIMEOUT`.
        let mut answers: Vec<SiteAnswer> = Vec::new();
        let mut deadline = tokio::time::Instant::now() + ASK_TIMEOUT;
        let mut answered = false;
        while let Ok(Some(answer)) = tokio::time::timeout_at(deadline, asks.next()).await {
            if let Some(a) = answer {
                if !answered && knows(&a, q) {
                    answered = true;
                    deadline = deadline.min(tokio::time::Instant::now() + AFTER_FIRST);
                }
                answers.push(a);
            }
        }
        tracing::debug!(asked = members.len(), answered = answers.len(), repository = %q.name, "asked the site");
        merge(&answers, q.digest)
    }
}

/// Whether `a` answers what `q` asks: where the tag points, or the object's manifest or size.
fn knows(a: &SiteAnswer, q: &Question<'_>) -> bool {
    let tag = q.tag.is_none() || !a.tag_digest.is_empty();
    let object = q.digest.is_none() || a.blob_size > 0 || !a.manifest.is_empty();
    tag && object
}

/// Merges members' answers: the latest public time (never in the future), the tag target of
/// the most recent sighting (most members' among equally recent ones), any membership, the
/// first manifest that hashes to its digest, the size most holders give.
fn merge(answers: &[SiteAnswer], digest: Option<&Digest>) -> SiteKnowledge {
    let now = now_ms();
    let past = |t: u64| t <= now + 60_000;
    let mut out = SiteKnowledge {
        public_at: answers.iter().map(|a| a.public_at_ms).filter(|t| *t > 0 && past(*t)).max(),
        in_repo: answers.iter().any(|a| a.in_repo),
        ..SiteKnowledge::default()
    };
    let tags: Vec<(Digest, u64)> = answers
        .iter()
        .filter_map(|a| Some((a.tag_digest.parse::<Digest>().ok()?, a.tag_seen_at_ms)))
        .filter(|(_, seen)| past(*seen))
        .collect();
    let latest = tags.iter().map(|(_, seen)| *seen).max();
    let tag = latest.and_then(|l| most(tags.iter().filter(|(_, seen)| *seen == l).map(|(d, _)| *d)));
    if let (Some(t), Some(seen_at_ms)) = (tag, latest) {
        let record = if digest.is_none() { answers.iter().find_map(|a| checked(&t, a)) } else { None };
        out.tag = Some(SiteTag { digest: t, record, seen_at_ms });
    }
    if let Some(d) = digest {
        out.manifest = answers.iter().find_map(|a| checked(d, a));
        out.blob_size = most(answers.iter().map(|a| a.blob_size).filter(|s| *s > 0));
    }
    out
}

/// The answer's manifest, if it is one and hashes to `digest`.
fn checked(digest: &Digest, a: &SiteAnswer) -> Option<ManifestRecord> {
    let fits = !a.manifest.is_empty() && a.manifest.len() <= MAX_MANIFEST && a.media_type.len() <= MAX_MEDIA_TYPE;
    (fits && Digest::of(&a.manifest) == *digest)
        .then(|| ManifestRecord { media_type: a.media_type.clone(), body: a.manifest.clone() })
}

/// The value given most often (the first of those given as often).
fn most<T: Eq + std::hash::Hash + Copy>(values: impl Iterator<Item = T>) -> Option<T> {
    let mut counts: HashMap<T, (usize, usize)> = HashMap::new();
    for (i, v) in values.enumerate() {
        counts.entry(v).or_insert((0, i)).0 += 1;
    }
    counts.into_iter().max_by_key(|(_, (n, first))| (*n, std::cmp::Reverse(*first))).map(|(v, _)| v)
}

/// Answers other members' questions from this node's caches.
pub struct Knowledge {
    /// Manifests, tags, blobs.
    pub meta: Arc<dyn MetaStore>,
    /// Access grants (shared with the mirror's authorization).
    pub grants: Arc<Grants>,
}

impl crate::peer::server::SiteKnowledge for Knowledge {
    fn answer(&self, req: &SiteRequest) -> SiteAnswer {
        let Ok(name) = RepoName::parse(&req.repository) else { return SiteAnswer::default() };
        let registry = req.registry.as_str();
        let mut out = SiteAnswer {
            public_at_ms: self.grants.public_since(registry, &name).unwrap_or(0),
            ..SiteAnswer::default()
        };
        let tagged = (!req.tag.is_empty())
            .then(|| self.meta.tag(&tag_key(registry, name.as_str(), &req.tag)).ok().flatten())
            .flatten();
        if let Some(t) = &tagged {
            out.tag_digest = t.digest.to_string();
            out.tag_media_type.clone_from(&t.media_type);
            out.tag_seen_at_ms = t.seen_at_ms;
        }
        let object = req.digest.parse::<Digest>().ok().or(tagged.map(|t| t.digest));
        let Some(object) = object else { return out };
        out.in_repo = self.grants.in_repo(registry, &name, &object);
        if let Ok(Some(m)) = self.meta.manifest(&object) {
            out.media_type = m.media_type;
            out.manifest = m.body;
        }
        let held =
            self.meta.blob(&object).ok().flatten().filter(|b| b.state == crate::store::meta::BlobState::Complete);
        out.blob_size = held.map_or(0, |b| b.layout.size);
        out
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn answer(tag: &Digest, public_at: u64) -> SiteAnswer {
        SiteAnswer { public_at_ms: public_at, tag_digest: tag.to_string(), ..SiteAnswer::default() }
    }

    fn sighting(tag: &Digest, seen: u64) -> SiteAnswer {
        SiteAnswer { tag_digest: tag.to_string(), tag_seen_at_ms: seen, ..SiteAnswer::default() }
    }

    #[test]
    fn merging_takes_the_most_recent_tag_the_latest_past_time_and_only_checked_manifests() {
        let (a, b) = (Digest::of(b"a"), Digest::of(b"b"));
        let future = now_ms() + 3_600_000;
        let answers = [answer(&a, 10), answer(&b, 20), answer(&b, future)];
        let k = merge(&answers, None);
        assert_eq!(k.tag.map(|t| t.digest), Some(b), "equally recent (unknown): most members");
        assert_eq!(k.public_at, Some(20), "a time in the future is not taken");
        // One member saw the tag move after the others last looked: it wins, however few.
        let k = merge(&[sighting(&a, 100), sighting(&a, 100), sighting(&b, 200)], None);
        assert_eq!(k.tag.map(|t| (t.digest, t.seen_at_ms)), Some((b, 200)));
        let k = merge(&[sighting(&a, 100), sighting(&b, future)], None);
        assert_eq!(k.tag.map(|t| t.digest), Some(a), "a sighting in the future is not taken");

        let body = b"{\"schemaVersion\":2}".to_vec();
        let d = Digest::of(&body);
        let forged = SiteAnswer { manifest: b"{}".to_vec(), ..SiteAnswer::default() };
        let good = SiteAnswer { manifest: body.clone(), blob_size: 7, ..SiteAnswer::default() };
        let k = merge(&[forged.clone(), good], Some(&d));
        assert_eq!(k.manifest.map(|m| m.body), Some(body));
        assert_eq!(k.blob_size, Some(7));
        assert!(merge(&[forged], Some(&d)).manifest.is_none(), "a manifest that does not hash to its digest");
        assert!(!merge(&[], Some(&d)).in_repo);
    }
}

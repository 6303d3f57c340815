//! What the origin allowed, remembered durably so a cut-off (or restarted) edge site still
//! serves the clients that pulled before, and only them.
//!
//! Two kinds of rows in the metadata store's grant table, each with the time of the origin's
//! last yes (unix ms, refreshed at most every [`REFRESH`]):
//! - `g <registry>/<repo> <credential>`: the origin accepted this credential for the repository.
//!   The credential is a keyed hash (HMAC-SHA256) of the client's `Authorization` header, `-` for
//!   a client that sent none. The key is a random secret in the data dir (`grants.key`, 0600):
//!   credentials are never stored, and the rows are useless without the key.
//! - `m <registry>/<repo> <digest>`: the origin served this object under this repository's name
//!   (blobs are shared across repositories: a grant for one repository never serves another's).
//!
//! Besides, the origin's last challenge (`WWW-Authenticate`) to a client without credentials, on
//! `/v2/` and on a repository, so that offline the daemon still asks such clients to authenticate
//! as the origin did: clients send credentials only after a challenge.

use crate::clock::now_ms;
use std::io::{Read as _, Write as _};
use std::os::unix::fs::OpenOptionsExt as _;
use std::path::Path;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use hmac::{Hmac, Mac};
use http::header::AUTHORIZATION;
use http::HeaderMap;
use sha2::Sha256;
use shoal_core::access::Remembered;
use shoal_core::{Digest, RepoName};

use crate::store::meta::MetaStore;

/// A stored grant is rewritten when older than this: a grant's time is at most this stale.
pub const REFRESH: Duration = Duration::from_secs(600);
/// How often grants older than the grace are dropped.
const PRUNE_EVERY: Duration = Duration::from_secs(3_600);
/// The key file in the data dir.
pub const KEY_FILE: &str = "grants.key";
/// HMAC-SHA256's block size: the longest key it uses as is.
const KEY_LEN: usize = 64;

/// A client's credential as the grant table knows it: the keyed hash of its `Authorization`
/// header, or `None` for an anonymous client.
#[derive(Clone, PartialEq, Eq, Hash, Debug)]
pub struct Credential(Option<[u8; 32]>);

impl Credential {
    /// True for a client that sent no credentials.
    pub fn is_anonymous(&self) -> bool {
        self.0.is_none()
    }

    fn text(&self) -> String {
        self.0.map_or_else(|| "-".to_owned(), hex::encode)
    }
}

/// The remembered grants.
pub struct Grants {
    meta: Arc<dyn MetaStore>,
    key: [u8; KEY_LEN],
    grace: Duration,
    pruned: Mutex<Option<Instant>>,
}

impl Grants {
    /// Grants in `meta`, hashed with the key in `data_dir` (created on first start).
    pub fn open(data_dir: &Path, meta: Arc<dyn MetaStore>, grace: Duration) -> std::io::Result<Self> {
        let key = load_or_create_key(&data_dir.join(KEY_FILE))?;
        let grants = Self { meta, key, grace, pruned: Mutex::new(None) };
        grants.prune();
        Ok(grants)
    }

    /// How long a remembered yes lets the cache serve without the origin.
    pub fn grace(&self) -> Duration {
        self.grace
    }

    /// The credential of a request.
    pub fn credential(&self, headers: &HeaderMap) -> Credential {
        let Some(value) = headers.get(AUTHORIZATION) else { return Credential(None) };
        let mut mac = <Hmac<Sha256> as Mac>::new(&self.key.into());
        mac.update(value.as_bytes());
        Credential(Some(mac.finalize().into_bytes().into()))
    }

    /// What is remembered for `cred` reading `object` (a digest, or `None` for a tag, whose
    /// cached mapping is itself repository-scoped: `tag_cached`) in `registry/name`.
    pub fn remembered(
        &self,
        registry: &str,
        name: &RepoName,
        cred: &Credential,
        object: Option<&Digest>,
        tag_cached: bool,
    ) -> Remembered {
        let read = |key: String| match self.meta.grant(&key) {
            Ok(at) => at,
            Err(e) => {
                tracing::warn!(error = %e, "cannot read access grants; refusing offline access");
                None
            }
        };
        let in_repo = match object {
            Some(d) => read(member_key(registry, name, d)).is_some(),
            None => tag_cached,
        };
        let anonymous = read(grant_key(registry, name, &Credential(None)));
        let credential = if cred.is_anonymous() { anonymous } else { read(grant_key(registry, name, cred)) };
        Remembered { credential, anonymous, in_repo }
    }

    /// The origin accepted `cred` for `registry/name` (and served `object` under that name).
    pub fn grant(&self, registry: &str, name: &RepoName, cred: &Credential, object: Option<&Digest>) {
        self.touch(grant_key(registry, name, cred));
        if let Some(d) = object {
            self.touch(member_key(registry, name, d));
        }
    }

    /// When the origin last let an anonymous client pull `registry/name`, within the grace.
    pub fn public_since(&self, registry: &str, name: &RepoName) -> Option<u64> {
        let at = self.meta.grant(&grant_key(registry, name, &Credential(None))).ok().flatten()?;
        (now_ms().saturating_sub(at) <= self.grace.as_millis() as u64).then_some(at)
    }

    /// Whether the origin served `object` under `registry/name`.
    pub fn in_repo(&self, registry: &str, name: &RepoName, object: &Digest) -> bool {
        self.meta.grant(&member_key(registry, name, object)).ok().flatten().is_some()
    }

    /// The origin served `object` under `registry/name`.
    pub fn member(&self, registry: &str, name: &RepoName, object: &Digest) {
        self.touch(member_key(registry, name, object));
    }

    /// The origin refused `cred` for `registry/name`: forget its grant.
    pub fn revoke(&self, registry: &str, name: &RepoName, cred: &Credential) {
        if let Err(e) = self.meta.remove_grant(&grant_key(registry, name, cred)) {
            tracing::warn!(error = %e, repository = %name, "cannot forget an access grant");
        }
    }

    fn touch(&self, key: String) {
        let now = now_ms();
        let fresh =
            self.meta.grant(&key).ok().flatten().is_some_and(|at| now.abs_diff(at) < REFRESH.as_millis() as u64);
        if fresh {
            return;
        }
        if let Err(e) = self.meta.put_grant(&key, now) {
            tracing::warn!(error = %e, "cannot remember an access grant");
        }
        self.prune();
    }

    fn prune(&self) {
        {
            let mut last = self.pruned.lock().unwrap_or_else(|p| p.into_inner());
            if last.is_some_and(|t| t.elapsed() < PRUNE_EVERY) {
                return;
            }
            *last = Some(Instant::now());
        }
        let before = now_ms().saturating_sub(self.grace.as_millis() as u64);
        match self.meta.prune_grants(before) {
            Ok(0) => {}
            Ok(n) => tracing::info!(removed = n, "dropped access grants older than offline_grace"),
            Err(e) => tracing::warn!(error = %e, "cannot prune access grants"),
        }
    }
}

/// Where the origin challenged a client that sent no credentials.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Challenged {
    /// On `GET /v2/`.
    Base,
    /// On a repository's manifest or blob.
    Repository,
}

impl Grants {
    /// The origin's last challenge to a client without credentials, there.
    pub fn challenge(&self, registry: &str, at: Challenged) -> Option<String> {
        self.meta.challenge(&challenge_key(registry, at)).ok().flatten()
    }

    /// The origin answered a client without credentials there: with this challenge, or
    /// (`None`) without one.
    pub fn challenged(&self, registry: &str, at: Challenged, value: Option<&str>) {
        let key = challenge_key(registry, at);
        if self.meta.challenge(&key).ok().flatten().as_deref() == value {
            return;
        }
        if let Err(e) = self.meta.set_challenge(&key, value) {
            tracing::warn!(error = %e, "cannot remember the origin's challenge");
        }
    }
}

fn challenge_key(registry: &str, at: Challenged) -> String {
    match at {
        Challenged::Base => format!("{registry} /v2/"),
        Challenged::Repository => format!("{registry} repositories"),
    }
}

fn grant_key(registry: &str, name: &RepoName, cred: &Credential) -> String {
    format!("g {registry}/{name} {}", cred.text())
}

fn member_key(registry: &str, name: &RepoName, object: &Digest) -> String {
    format!("m {registry}/{name} {object}")
}

/// Reads the grant key, or creates it (random, mode 0600). A key file of the wrong size is an
/// error: grants made with another key would silently stop counting.
fn load_or_create_key(path: &Path) -> std::io::Result<[u8; KEY_LEN]> {
    let invalid = |m: String| std::io::Error::new(std::io::ErrorKind::InvalidData, m);
    match std::fs::File::open(path) {
        Ok(mut f) => {
            std::fs::set_permissions(path, std::os::unix::fs::PermissionsExt::from_mode(0o600))?;
            let mut key = [0u8; KEY_LEN];
            let mut rest = Vec::new();
            f.read_exact(&mut key).map_err(|e| invalid(format!("{}: {e}", path.display())))?;
            f.read_to_end(&mut rest)?;
            if !rest.is_empty() {
                return Err(invalid(format!("{}: longer than {KEY_LEN} bytes", path.display())));
            }
            Ok(key)
        }
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => {
            let mut key = [0u8; KEY_LEN];
            aws_lc_rs::rand::fill(&mut key).map_err(|_| std::io::Error::other("no random numbers"))?;
            let tmp = path.with_extension("key.tmp");
            let mut f = std::fs::OpenOptions::new().write(true).create(true).truncate(true).mode(0o600).open(&tmp)?;
            f.write_all(&key)?;
            f.sync_all()?;
            std::fs::rename(&tmp, path)?;
            Ok(key)
        }
        Err(e) => Err(e),
    }
}

#[cfg(test)]
mod tests {
    use std::os::unix::fs::PermissionsExt as _;

    use super::*;
    use crate::store::meta::MemMeta;

    fn name(s: &str) -> RepoName {
        RepoName::parse(s).unwrap()
    }

    #[test]
    fn remembers_per_credential_repository_and_object() {
        let dir = tempfile::tempdir().unwrap();
        let meta: Arc<dyn MetaStore> = Arc::new(MemMeta::default());
        let g = Grants::open(dir.path(), meta.clone(), Duration::from_secs(60)).unwrap();
        let mut h = HeaderMap::new();
        h.insert(AUTHORIZATION, "Basic YWxpY2U6c2VjcmV0".parse().unwrap());
        let alice = g.credential(&h);
        assert!(!alice.is_anonymous() && g.credential(&HeaderMap::new()).is_anonymous());
        let d = Digest::of(b"layer");
        g.grant("r", &name("priv/app"), &alice, Some(&d));
        let r = g.remembered("r", &name("priv/app"), &alice, Some(&d), false);
        assert!(r.credential.is_some() && r.anonymous.is_none() && r.in_repo);
        assert!(!g.remembered("r", &name("pub/other"), &alice, Some(&d), false).in_repo);
        assert_eq!(g.remembered("r", &name("priv/app"), &Credential(None), Some(&d), false).credential, None);
        g.revoke("r", &name("priv/app"), &alice);
        assert_eq!(g.remembered("r", &name("priv/app"), &alice, Some(&d), false).credential, None);
        // The stored key holds no credential.
        assert!(meta.grant(&format!("g r/priv/app {}", alice.text())).unwrap().is_none());

        // The key survives a restart; the file is private.
        let again = Grants::open(dir.path(), meta, Duration::from_secs(60)).unwrap();
        assert_eq!(again.credential(&h), alice);
        let mode = std::fs::metadata(dir.path().join(KEY_FILE)).unwrap().permissions().mode();
        assert_eq!(mode & 0o777, 0o600);
        std::fs::write(dir.path().join(KEY_FILE), b"short").unwrap();
        assert!(Grants::open(dir.path(), Arc::new(MemMeta::default()), Duration::ZERO).is_err());
    }
}

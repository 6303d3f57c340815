//! Private images stay private, also while the origin misbehaves: an ACL front before the real
//! registry lets only alice read `priv/*` (bob reads `team/*`, anyone `pub/*`), and is switched
//! to answer 503, to be slow, and to be gone; and in a site cut off from it (`site.rs`).

use shoal_e2e::{AclFront, AclMode, AclUser};

use super::*;

/// Beyond the daemon's 5 s bound on access checks.
const SLOW: Duration = Duration::from_secs(8);
/// A little over how long the daemon skips asking for a client whose check just failed.
const DOWN_FOR: Duration = Duration::from_millis(5_500);

#[derive(Clone, Copy, Debug)]
enum Who {
    Anonymous,
    Alice,
    Bob,
    WrongPassword,
}

impl Who {
    fn apply(self, r: reqwest::RequestBuilder) -> reqwest::RequestBuilder {
        match self {
            Self::Anonymous => r,
            Self::Alice => r.basic_auth("alice", Some("secret")),
            Self::Bob => r.basic_auth("bob", Some("hunter2")),
            Self::WrongPassword => r.basic_auth("alice", Some("guess")),
        }
    }
}

/// What a probe must get.
#[derive(Clone)]
enum Want {
    /// This status with an OCI error body (headers only for HEAD).
    Refused(u16),
    /// 401 with a `WWW-Authenticate` challenge and an OCI error body (headers only for HEAD).
    Challenged,
    /// 200 (or 206 for a range) with exactly these bytes (HEAD: their length).
    Bytes(Vec<u8>),
    /// Any error status (4xx or 5xx) with an OCI error body: no bytes.
    Nothing,
}

struct Probe {
    what: String,
    who: Who,
    method: Method,
    path: String,
    range: Option<(u64, u64)>,
    want: Want,
}

impl Probe {
    fn new(what: &str, who: Who, method: Method, path: String, want: Want) -> Self {
        Self { what: what.into(), who, method, path, range: None, want }
    }

    fn range(mut self, start: u64, end: u64) -> Self {
        if let Want::Bytes(b) = &self.want {
            self.want = Want::Bytes(b[start as usize..=end as usize].to_vec());
        }
        self.range = Some((start, end));
        self
    }

    /// Sends it; returns (status, elapsed) or what was wrong.
    async fn run(&self, client: &reqwest::Client, mirror: &str) -> Result<(u16, Duration)> {
        let started = Instant::now();
        let mut req = if self.path.contains("/manifests/") {
            let (name, reference) = self.path.split_once("/manifests/").context("manifest path")?;
            manifest_request(client, self.method.clone(), mirror, name, reference)
        } else {
            client.request(self.method.clone(), format!("{mirror}/v2/{}", self.path))
        };
        if let Some((s, e)) = self.range {
            req = req.header("range", format!("bytes={s}-{e}"));
        }
        let resp = self.who.apply(req).send().await?;
        let status = resp.status().as_u16();
        let challenge = resp.headers().get("www-authenticate").map(|v| v.to_str().unwrap_or("?").to_owned());
        let length = resp.headers().get("content-length").and_then(|v| v.to_str().ok()?.parse::<u64>().ok());
        let body = resp.bytes().await?;
        let elapsed = started.elapsed();
        let head = self.method == Method::HEAD;
        match &self.want {
            Want::Refused(want) => {
                ensure!(status == *want, "{}: status {status}, want {want}; body {:?}", self.what, lossy(&body));
                if !head {
                    oci_error_codes(&body).with_context(|| format!("{}: not an OCI error", self.what))?;
                }
            }
            Want::Challenged => {
                ensure!(status == 401, "{}: status {status}, want 401; body {:?}", self.what, lossy(&body));
                ensure!(challenge.is_some(), "{}: 401 without WWW-Authenticate", self.what);
                if !head {
                    oci_error_codes(&body).with_context(|| format!("{}: not an OCI error", self.what))?;
                }
            }
            Want::Nothing => {
                ensure!(status >= 400, "{}: status {status}, want an error; body {:?}", self.what, lossy(&body));
                if !head {
                    oci_error_codes(&body).with_context(|| format!("{}: not an OCI error", self.what))?;
                }
            }
            Want::Bytes(bytes) => {
                let ok = if self.range.is_some() { 206 } else { 200 };
                ensure!(status == ok, "{}: status {status}, want {ok}; body {:?}", self.what, lossy(&body));
                if head {
                    ensure!(length == Some(bytes.len() as u64), "{}: HEAD length {length:?}", self.what);
                } else {
                    ensure!(body.as_ref() == bytes.as_slice(), "{}: wrong bytes ({} bytes)", self.what, body.len());
                }
            }
        }
        Ok((status, elapsed))
    }
}

fn lossy(b: &[u8]) -> String {
    String::from_utf8_lossy(&b[..b.len().min(200)]).into_owned()
}

/// Runs probes concurrently; prints each status and time; fails with every wrong answer.
async fn run_all(label: &str, probes: &[Probe], mirror: &str) -> Result<()> {
    let client = http();
    let results = futures::future::join_all(probes.iter().map(|p| p.run(&client, mirror))).await;
    let mut wrong = Vec::new();
    for (p, r) in probes.iter().zip(results) {
        match r {
            Ok((status, t)) => {
                eprintln!("[{label}] {:<48} {:?} {} -> {status} in {} ms", p.what, p.who, p.method, t.as_millis())
            }
            Err(e) => {
                eprintln!("[{label}] {:<48} WRONG: {e:#}", p.what);
                wrong.push(format!("{e:#}"));
            }
        }
    }
    ensure!(wrong.is_empty(), "[{label}] {} wrong answers:\n{}", wrong.len(), wrong.join("\n"));
    Ok(())
}

struct Setup {
    registry: Registry,
    front: AclFront,
    private: Image,
    public: Image,
}

impl Setup {
    async fn start() -> Result<Self> {
        let registry = Registry::start().await?;
        let private = Image::build(71, &[MB, 2 * MB])?;
        private.push(&registry, "priv/app", "v1").await?;
        let public = Image::build(72, &[MB])?;
        public.push(&registry, "pub/other", "v1").await?;
        let user = |name: &str, password: &str, prefix: &str| AclUser {
            name: name.into(),
            password: password.into(),
            prefix: prefix.into(),
        };
        let front =
            AclFront::start(&registry, vec![user("alice", "secret", "priv/"), user("bob", "hunter2", "team/")]).await?;
        Ok(Self { registry, front, private, public })
    }

    fn daemon_config(&self) -> DaemonConfig {
        DaemonConfig::default().registry(&self.front.host(), &self.front.url())
    }

    fn bytes(image: &Image, blob: &shoal_e2e::Blob) -> Result<Vec<u8>> {
        Ok(std::fs::read(image.blob_path(blob))?)
    }

    /// What alice and anonymous clients pull while the front is up.
    fn pulls(&self) -> Result<Vec<Probe>> {
        let (p, q) = (&self.private, &self.public);
        let mut out = vec![
            Probe::new(
                "alice: priv tag",
                Who::Alice,
                Method::GET,
                "priv/app/manifests/v1".into(),
                Want::Bytes(p.manifest.clone()),
            ),
            Probe::new(
                "alice: priv by digest",
                Who::Alice,
                Method::GET,
                format!("priv/app/manifests/{}", p.manifest_digest),
                Want::Bytes(p.manifest.clone()),
            ),
            Probe::new(
                "anonymous: pub tag",
                Who::Anonymous,
                Method::GET,
                "pub/other/manifests/v1".into(),
                Want::Bytes(q.manifest.clone()),
            ),
            Probe::new(
                "anonymous: pub by digest",
                Who::Anonymous,
                Method::GET,
                format!("pub/other/manifests/{}", q.manifest_digest),
                Want::Bytes(q.manifest.clone()),
            ),
        ];
        for b in p.blobs() {
            out.push(Probe::new(
                "alice: priv blob",
                Who::Alice,
                Method::GET,
                format!("priv/app/blobs/{}", b.digest),
                Want::Bytes(Self::bytes(p, &b)?),
            ));
        }
        for b in q.blobs() {
            out.push(Probe::new(
                "anonymous: pub blob",
                Who::Anonymous,
                Method::GET,
                format!("pub/other/blobs/{}", b.digest),
                Want::Bytes(Self::bytes(q, &b)?),
            ));
        }
        Ok(out)
    }

    /// Every probe, with what it must get while the origin cannot decide (`status`: the error).
    fn probes(&self, status: u16) -> Result<Vec<Probe>> {
        let (p, q) = (&self.private, &self.public);
        let layer = &p.layers[1];
        let blob = format!("priv/app/blobs/{}", layer.digest);
        let bytes = Self::bytes(p, layer)?;
        let tag = "priv/app/manifests/v1".to_owned();
        let by_digest = format!("priv/app/manifests/{}", p.manifest_digest);
        let mut out = vec![
            // A client without credentials is asked for them, as the origin did; with them, it
            // gets no more than the error.
            Probe::new("anonymous: /v2/", Who::Anonymous, Method::GET, String::new(), Want::Challenged),
            Probe::new("alice: /v2/", Who::Alice, Method::GET, String::new(), Want::Bytes(b"{}".to_vec())),
        ];
        for who in [Who::Anonymous, Who::Bob, Who::WrongPassword] {
            let n = format!("{who:?}").to_lowercase();
            let no = if matches!(who, Who::Anonymous) { Want::Challenged } else { Want::Refused(status) };
            out.push(Probe::new(&format!("{n}: priv tag"), who, Method::GET, tag.clone(), no.clone()));
            out.push(Probe::new(&format!("{n}: priv tag HEAD"), who, Method::HEAD, tag.clone(), no.clone()));
            out.push(Probe::new(&format!("{n}: priv by digest"), who, Method::GET, by_digest.clone(), no.clone()));
            out.push(Probe::new(&format!("{n}: priv blob"), who, Method::GET, blob.clone(), no.clone()));
            out.push(Probe::new(&format!("{n}: priv blob HEAD"), who, Method::HEAD, blob.clone(), no.clone()));
            out.push(
                Probe::new(&format!("{n}: priv blob Range"), who, Method::GET, blob.clone(), no.clone()).range(0, 99),
            );
        }
        // Under another repository's name, one anonymous clients did pull: still not the blob.
        let blob_elsewhere = format!("pub/other/blobs/{}", layer.digest);
        let manifest_elsewhere = format!("pub/other/manifests/{}", p.manifest_digest);
        for (who, method, path) in [
            (Who::Anonymous, Method::GET, &blob_elsewhere),
            (Who::Anonymous, Method::HEAD, &blob_elsewhere),
            (Who::Alice, Method::GET, &blob_elsewhere),
            (Who::Bob, Method::GET, &blob_elsewhere),
            (Who::Anonymous, Method::GET, &manifest_elsewhere),
        ] {
            let what = format!("{}: priv object as pub/other {method}", format!("{who:?}").to_lowercase());
            let no = if matches!(who, Who::Anonymous) { Want::Challenged } else { Want::Refused(status) };
            out.push(Probe::new(&what, who, method, path.clone(), no));
        }
        // Alice, with the credential the origin accepted, still gets the right bytes.
        let yes = Want::Bytes(bytes.clone());
        out.push(Probe::new("alice: priv tag", Who::Alice, Method::GET, tag.clone(), Want::Bytes(p.manifest.clone())));
        out.push(Probe::new(
            "alice: priv by digest",
            Who::Alice,
            Method::GET,
            by_digest,
            Want::Bytes(p.manifest.clone()),
        ));
        out.push(Probe::new("alice: priv blob", Who::Alice, Method::GET, blob.clone(), yes.clone()));
        out.push(Probe::new("alice: priv blob HEAD", Who::Alice, Method::HEAD, blob.clone(), yes.clone()));
        out.push(Probe::new("alice: priv blob Range", Who::Alice, Method::GET, blob, yes).range(100, 4195));
        // A repository anonymous clients pulled: anyone.
        let pub_blob = &q.layers[0];
        let pub_bytes = Want::Bytes(Self::bytes(q, pub_blob)?);
        let pub_path = format!("pub/other/blobs/{}", pub_blob.digest);
        for who in [Who::Anonymous, Who::Bob] {
            let n = format!("{who:?}").to_lowercase();
            out.push(Probe::new(
                &format!("{n}: pub tag"),
                who,
                Method::GET,
                "pub/other/manifests/v1".into(),
                Want::Bytes(q.manifest.clone()),
            ));
            out.push(Probe::new(&format!("{n}: pub blob"), who, Method::GET, pub_path.clone(), pub_bytes.clone()));
        }
        Ok(out)
    }
}

/// While the ACL front answers 503, is slow, and is gone: another valid user and a wrong
/// password get an OCI error (503, 504, 502) and no bytes, by tag, by digest, blob, HEAD, Range
/// and under another repository's name; anonymous gets the origin's last challenge (401, an OCI
/// error, so real clients send their credentials) and no bytes; alice gets the right bytes from the cache; a
/// repository anonymous clients pulled goes to anyone. After a restart with the front gone,
/// the same holds (durable grants).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn private_images_stay_private_while_the_origin_misbehaves() -> Result<()> {
    require_tools();
    let s = Setup::start().await?;
    let mut daemon = Daemon::start(s.daemon_config()).await?;
    let mirror = daemon.mirror_url();
    let result = async {
        run_all("up: pulls", &s.pulls()?, &mirror).await?;
        // With the origin answering, it decides: 401 (anonymous, wrong password), 403 (bob),
        // 404 (a blob under a repository that does not hold it).
        let (p, layer) = (&s.private, &s.private.layers[1]);
        let blob = format!("priv/app/blobs/{}", layer.digest);
        let up = vec![
            Probe::new("anonymous: /v2/", Who::Anonymous, Method::GET, String::new(), Want::Challenged),
            Probe::new("anonymous: priv blob", Who::Anonymous, Method::GET, blob.clone(), Want::Challenged),
            Probe::new(
                "wrongpassword: priv tag",
                Who::WrongPassword,
                Method::GET,
                "priv/app/manifests/v1".into(),
                Want::Refused(401),
            ),
            Probe::new(
                "bob: priv by digest",
                Who::Bob,
                Method::GET,
                format!("priv/app/manifests/{}", p.manifest_digest),
                Want::Refused(403),
            ),
            Probe::new(
                "anonymous: priv blob as pub/other",
                Who::Anonymous,
                Method::GET,
                format!("pub/other/blobs/{}", layer.digest),
                Want::Refused(404),
            ),
        ];
        run_all("up: probes", &up, &mirror).await?;
        for (mode, status) in [(AclMode::Unavailable, 503), (AclMode::Slow(SLOW), 504), (AclMode::Gone, 502)] {
            // A client's own failed check spares its next ones on that repository the wait for
            // 5 s (with the failure seen then): let that pass, so each mode is asked afresh.
            tokio::time::sleep(DOWN_FOR).await;
            s.front.set_mode(mode).await?;
            let started = Instant::now();
            run_all(&format!("{mode:?}"), &s.probes(status)?, &mirror).await?;
            eprintln!("[{mode:?}] all probes in {} ms", started.elapsed().as_millis());
        }
        daemon.restart().await?;
        let restarted = vec![
            Probe::new(
                "alice: priv tag",
                Who::Alice,
                Method::GET,
                "priv/app/manifests/v1".into(),
                Want::Bytes(p.manifest.clone()),
            ),
            Probe::new("alice: priv blob", Who::Alice, Method::GET, blob.clone(), Want::Bytes(Setup::bytes(p, layer)?)),
            Probe::new("anonymous: /v2/", Who::Anonymous, Method::GET, String::new(), Want::Challenged),
            Probe::new("anonymous: priv blob", Who::Anonymous, Method::GET, blob.clone(), Want::Challenged),
            Probe::new(
                "anonymous: priv tag",
                Who::Anonymous,
                Method::GET,
                "priv/app/manifests/v1".into(),
                Want::Challenged,
            ),
            Probe::new("bob: priv blob", Who::Bob, Method::GET, blob.clone(), Want::Refused(502)),
            Probe::new(
                "wrongpassword: priv tag",
                Who::WrongPassword,
                Method::GET,
                "priv/app/manifests/v1".into(),
                Want::Refused(502),
            ),
            Probe::new(
                "anonymous: pub tag",
                Who::Anonymous,
                Method::GET,
                "pub/other/manifests/v1".into(),
                Want::Bytes(s.public.manifest.clone()),
            ),
        ];
        run_all("restarted, origin gone", &restarted, &mirror).await?;
        let key = daemon.data_dir().join("grants.key");
        let mode = std::os::unix::fs::PermissionsExt::mode(&std::fs::metadata(&key)?.permissions()) & 0o777;
        eprintln!("grant key {} mode {mode:o}", key.display());
        ensure!(mode == 0o600, "grant key mode {mode:o}");
        let db = std::fs::read(daemon.data_dir().join("meta.redb"))?;
        let needle = base64::Engine::encode(&base64::engine::general_purpose::STANDARD, "alice:secret");
        ensure!(!contains(&db, needle.as_bytes()) && !contains(&db, b"secret"), "credential stored in the clear");
        Ok(())
    }
    .await;
    with_log(result, "private images", &daemon)?;
    eprintln!("front answered {} requests; registry log lines {}", s.front.requests(), s.registry.access_log().len());
    Ok(())
}

fn contains(hay: &[u8], needle: &[u8]) -> bool {
    hay.windows(needle.len()).any(|w| w == needle)
}

/// One client's slow request for another repository (the origin takes longer than the daemon
/// waits) never makes an anonymous request for `priv/app`, right after or at the same time, get
/// the cached bytes: the origin is asked and answers 401. Alice meanwhile is answered at once.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_slow_request_for_one_repository_never_grants_another() -> Result<()> {
    require_tools();
    let s = Setup::start().await?;
    let daemon = Daemon::start(s.daemon_config()).await?;
    let mirror = daemon.mirror_url();
    let result = async {
        run_all("pulls", &s.pulls()?, &mirror).await?;
        s.front.set_slow_prefix(Some(("slow/", SLOW)));
        let client = http();
        let layer = &s.private.layers[0];
        let blob = format!("priv/app/blobs/{}", layer.digest);
        // By anonymous first, then by bob (a client's own failed check spares its next ones the wait).
        let slow = |who: Who| {
            let client = client.clone();
            let url = format!("{mirror}/v2/slow/repo/manifests/v1");
            async move {
                let t = Instant::now();
                let status = who.apply(client.get(url)).send().await.map(|r| r.status().as_u16());
                (status, t.elapsed())
            }
        };
        let (status, took) = slow(Who::Anonymous).await;
        eprintln!("slow/repo tag: {status:?} after {} ms", took.as_millis());
        ensure!(status.as_ref().ok() == Some(&504), "slow request: {status:?}");
        // Right after (within the old 5 s "down" window), and during a second slow request.
        let after = vec![
            Probe::new(
                "anonymous: priv blob right after",
                Who::Anonymous,
                Method::GET,
                blob.clone(),
                Want::Refused(401),
            ),
            Probe::new(
                "anonymous: priv tag right after",
                Who::Anonymous,
                Method::GET,
                "priv/app/manifests/v1".into(),
                Want::Refused(401),
            ),
            Probe::new(
                "anonymous: priv blob HEAD right after",
                Who::Anonymous,
                Method::HEAD,
                blob.clone(),
                Want::Refused(401),
            ),
            Probe::new(
                "alice: priv blob right after",
                Who::Alice,
                Method::GET,
                blob.clone(),
                Want::Bytes(Setup::bytes(&s.private, layer)?),
            ),
        ];
        run_all("after a slow request", &after, &mirror).await?;
        let during = async {
            tokio::time::sleep(Duration::from_millis(500)).await;
            let t = Instant::now();
            let r = run_all("during a slow request", &after, &mirror).await;
            (r, t.elapsed())
        };
        let ((status, took), (during, probes_took)) = tokio::join!(slow(Who::Bob), during);
        eprintln!(
            "second slow request: {status:?} after {} ms; probes during it took {} ms",
            took.as_millis(),
            probes_took.as_millis()
        );
        during?;
        ensure!(
            status.as_ref().ok() == Some(&504) && took >= Duration::from_secs(4),
            "second slow request: {status:?}"
        );
        ensure!(probes_took < Duration::from_secs(3), "probes waited on the slow request: {probes_took:?}");
        Ok(())
    }
    .await;
    with_log(result, "slow request", &daemon)
}

/// A real client: skopeo logged in to the mirror as alice pulls `priv/app` through the daemon,
/// then again with the ACL front gone, and again after the daemon restarts with it gone. A
/// skopeo without credentials cannot pull it while the front is gone.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn skopeo_with_the_accepted_credential_pulls_a_private_image_offline() -> Result<()> {
    require_tools();
    let s = Setup::start().await?;
    let mut daemon = Daemon::start(s.daemon_config()).await?;
    let reference = format!("{}/priv/app:v1", s.front.host());
    let mut alice = Skopeo::new(&s.front.host(), Some(&daemon.mirror_host()))?;
    alice.login(&daemon.mirror_host(), "alice", "secret")?;
    let result = async {
        for phase in ["front up", "front gone", "front gone, daemon restarted"] {
            match phase {
                "front gone" => s.front.set_mode(AclMode::Gone).await?,
                "front gone, daemon restarted" => daemon.restart().await?,
                _ => {}
            }
            let t = Instant::now();
            let out = alice.pull(&reference, None).await.with_context(|| format!("alice, {phase}"))?;
            Skopeo::verify_dir(&out, &s.private)?;
            eprintln!("skopeo as alice, {phase}: image verified in {} ms", t.elapsed().as_millis());
        }
        let mut anonymous = Skopeo::new(&s.front.host(), Some(&daemon.mirror_host()))?;
        let t = Instant::now();
        let got = anonymous.pull(&reference, None).await;
        eprintln!(
            "skopeo without credentials, front gone: {} in {} ms",
            if got.is_ok() { "PULLED" } else { "refused" },
            t.elapsed().as_millis()
        );
        ensure!(got.is_err(), "skopeo without credentials pulled the private image offline");
        Ok(())
    }
    .await;
    with_log(result, "skopeo offline", &daemon)
}

#[path = "site.rs"]
mod site;

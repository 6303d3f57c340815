//! c. The real distribution registry with `notifications.endpoints` pointing at the scheduler's
//! preheat API: a `skopeo copy` push is preheated on one daemon per site, without any pull.
//!
//! The registry here is started by this test (the harness's `Registry` has no notifications
//! config): `docker-registry serve` on loopback, storage and logs in a temp dir, killed on drop.

use std::process::{Child, Command, Stdio};

use super::*;
use shoal_e2e::AccessLogLine;
use tempfile::TempDir;

/// A distribution registry that notifies `endpoint` of every event, with `Authorization:
/// Bearer <token>`.
struct NotifyingRegistry {
    dir: TempDir,
    port: u16,
    child: Child,
}

impl NotifyingRegistry {
    async fn start(endpoint: &str, token: &str) -> Result<Self> {
        let dir = tempfile::Builder::new().prefix("shoal-registry-notify-").tempdir()?;
        let port = shoal_e2e::free_port();
        let storage = dir.path().join("storage");
        std::fs::create_dir_all(&storage)?;
        let config = format!(
            "version: 0.1\nlog:\n  level: info\n  formatter: text\n  accesslog:\n    disabled: false\n\
             storage:\n  filesystem:\n    rootdirectory: {}\n\
             http:\n  addr: 127.0.0.1:{port}\n  secret: shoal-e2e-secret\n\
             notifications:\n  endpoints:\n    - name: shoal\n      url: {endpoint}\n      headers:\n        \
             Authorization: [\"Bearer {token}\"]\n      timeout: 2s\n      threshold: 3\n      backoff: 1s\n      \
             ignoredmediatypes: [application/octet-stream]\n",
            storage.display()
        );
        let path = dir.path().join("config.yml");
        std::fs::write(&path, config)?;
        let child = Command::new("docker-registry")
            .arg("serve")
            .arg(&path)
            .stdin(Stdio::null())
            .stdout(std::fs::File::create(dir.path().join("access.log"))?)
            .stderr(std::fs::File::create(dir.path().join("registry.log"))?)
            .spawn()
            .context("spawn docker-registry")?;
        let registry = Self { dir, port, child };
        let url = format!("http://{}/v2/", registry.host());
        let up = wait_until(Duration::from_secs(15), Duration::from_millis(50), || async {
            reqwest::get(&url).await.is_ok_and(|r| r.status().is_success())
        })
        .await;
        ensure!(up, "docker-registry did not come up:\n{}", registry.log());
        Ok(registry)
    }

    fn host(&self) -> String {
        format!("127.0.0.1:{}", self.port)
    }

    fn log(&self) -> String {
        shoal_e2e::tail(&self.dir.path().join("registry.log"), 6000)
    }

    fn access_log(&self) -> Vec<AccessLogLine> {
        let text = std::fs::read_to_string(self.dir.path().join("access.log")).unwrap_or_default();
        text.lines().filter_map(AccessLogLine::parse).collect()
    }

    /// Pushes `image` as `NAME:TAG` with skopeo, digests kept.
    async fn push(&self, image: &Image, name: &str, tag: &str) -> Result<()> {
        let mut cmd = tokio::process::Command::new("skopeo");
        cmd.args(["copy", "--quiet", "--preserve-digests", "--dest-tls-verify=false"])
            .arg(format!("oci:{}:latest", image.layout_dir().display()))
            .arg(format!("docker://{}/{name}:{tag}", self.host()));
        shoal_e2e::run(&mut cmd, LIMIT).await?;
        Ok(())
    }
}

impl Drop for NotifyingRegistry {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_push_to_the_registry_is_preheated_on_one_daemon_per_site() -> Result<()> {
    require_tools();
    let port = shoal_e2e::free_port();
    let scheduler = scheduler(port).await?;
    let registry = NotifyingRegistry::start(&format!("{}/registry/notifications", api(port)), PREHEAT_TOKEN).await?;
    let base = DaemonConfig::default()
        .registry(&registry.host(), &format!("http://{}", registry.host()))
        .cluster_token(CLUSTER_TOKEN)
        .scheduler(&scheduler.url());
    let swarm = two_sites(base).await?;
    let _logs = KeepLogs::new("preheat-notify", &swarm, Some(&scheduler));
    wait_ready(&scheduler, 4).await?;

    let image = Image::build(630, &[6 * MB, 2 * MB])?;
    registry.push(&image, "e2e/pushed", "v1").await?;
    let all = image.blobs().len();
    let preheated = || async {
        let held = holdings(&swarm, &image);
        ["east", "west"].iter().all(|site| (0..swarm.len()).any(|i| site_of(i) == *site && held[i] == all))
    };
    if !wait_until(LIMIT, Duration::from_millis(200), preheated).await {
        bail!(
            "the push was not preheated; held per daemon: {:?}\nscheduler:\n{}\nregistry:\n{}",
            holdings(&swarm, &image),
            scheduler.stderr_tail(),
            registry.log()
        );
    }
    expect_one_per_site(&swarm, &image)?;
    // Nobody pulled: every blob GET the registry served came from a daemon (shoal's User-Agent).
    let gets: Vec<AccessLogLine> =
        registry.access_log().into_iter().filter(|l| l.method == "GET" && l.blob_digest().is_some()).collect();
    ensure!(gets.iter().all(|l| l.user_agent.starts_with("shoal/")), "blob GETs not from a daemon: {gets:#?}");
    let log = std::fs::read_to_string(scheduler.stderr_path()).unwrap_or_default();
    ensure!(log.contains("preheat on registry notification"), "no notification logged:\n{}", scheduler.stderr_tail());
    report("notify", &format!("{} blob GETs from daemons; held per daemon {:?}", gets.len(), holdings(&swarm, &image)));
    Ok(())
}

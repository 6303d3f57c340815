//! The swarm benchmark's origin: docker-registry inside the origin namespace, its access log read
//! back to count what the origin served; and the push of the image into it.

use super::*;

/// The origin: docker-registry inside the origin namespace on 0.0.0.0:5000, access log on stdout.
pub(crate) struct Origin {
    pub proc: Proc,
    access_log: PathBuf,
}

impl Origin {
    pub async fn start(dir: &Path) -> Result<Self> {
        let storage = dir.join("storage");
        std::fs::create_dir_all(&storage)?;
        let config = dir.join("config.yml");
        std::fs::write(
            &config,
            format!(
                "version: 0.1\nlog:\n  level: warn\n  formatter: text\n  accesslog:\n    disabled: false\n\
                 storage:\n  filesystem:\n    rootdirectory: {}\n\
                 http:\n  addr: 0.0.0.0:{REGISTRY_PORT}\n  secret: shoal-bench-secret\n",
                storage.display()
            ),
        )?;
        // The access log goes to stdout, the application log to stderr: keep them apart.
        let access_log = dir.join("access.log");
        let script = format!(
            "exec docker-registry serve {} >>{} 2>>{}",
            config.display(),
            access_log.display(),
            dir.join("registry.log").display()
        );
        let mut proc = Proc::spawn(
            "docker-registry",
            Some(ORIGIN),
            Path::new("sh"),
            &["-c".into(), script],
            &[],
            &dir.join("spawn.log"),
        )?;
        proc.log = dir.join("registry.log");
        proc.wait_http(Some(ORIGIN), &format!("http://127.0.0.1:{REGISTRY_PORT}/v2/"), Duration::from_secs(15)).await?;
        Ok(Self { proc, access_log })
    }

    fn lines(&self) -> Vec<AccessLogLine> {
        std::fs::read_to_string(&self.access_log).unwrap_or_default().lines().filter_map(AccessLogLine::parse).collect()
    }

    /// Blob body bytes served (GET 200/206) after access-log line `mark`.
    pub fn blob_bytes_since(&self, mark: usize) -> u64 {
        self.lines()
            .into_iter()
            .skip(mark)
            .filter(|l| l.method == "GET" && matches!(l.status, 200 | 206) && l.blob_digest().is_some())
            .map(|l| l.bytes)
            .sum()
    }

    /// Per blob digest: (body bytes served, GETs answered 200/206) after `mark`.
    pub fn by_blob_since(&self, mark: usize) -> std::collections::HashMap<String, (u64, usize)> {
        let mut out = std::collections::HashMap::new();
        for l in self.lines().into_iter().skip(mark).filter(|l| l.method == "GET" && matches!(l.status, 200 | 206)) {
            if let Some(d) = l.blob_digest() {
                let e = out.entry(d.to_string()).or_insert((0, 0));
                e.0 += l.bytes;
                e.1 += 1;
            }
        }
        out
    }

    /// Blob GETs (any status) after `mark`.
    pub fn blob_gets_since(&self, mark: usize) -> usize {
        self.lines().into_iter().skip(mark).filter(|l| l.method == "GET" && l.blob_digest().is_some()).count()
    }

    /// Waits until the access log stops growing (it is written after each response).
    pub async fn settle(&self) -> usize {
        let mut last = usize::MAX;
        for _ in 0..20 {
            let n = self.lines().len();
            if n == last {
                return n;
            }
            last = n;
            tokio::time::sleep(Duration::from_millis(150)).await;
        }
        last
    }
}

/// Pushes the image's OCI layout into the origin with skopeo run inside the origin namespace
/// (over its loopback, so the cap does not slow the push).
pub(crate) async fn push(image: &Image, tag: &str) -> Result<()> {
    let mut cmd = tokio::process::Command::new("nsenter");
    cmd.arg(format!("--net={}", netns::ns_path(ORIGIN)))
        .args(["--", "skopeo", "copy", "--quiet", "--preserve-digests", "--dest-tls-verify=false"])
        .arg(format!("oci:{}:latest", image.layout_dir().display()))
        .arg(format!("docker://127.0.0.1:{REGISTRY_PORT}/{REPO}:{tag}"));
    shoal_e2e::run(&mut cmd, Duration::from_secs(300)).await?;
    Ok(())
}

//! The swarm benchmark's clients: curl inside each node namespace (manifest by tag, then every
//! blob), all pulling at once; each fails unless every response is 200 with the expected bytes.

use super::*;

/// One client's pull: the total time and each blob's own transfer time (curl's time_total), in
/// blob order.
pub(crate) struct Pull {
    pub total: Duration,
    pub blob_secs: Vec<f64>,
}

pub(crate) async fn pull_in_ns(
    ns: String,
    base: String,
    blobs: Vec<Blob>,
    parallel: u64,
    limit: Duration,
) -> Result<Pull> {
    let start = Instant::now();
    let max_time = limit.as_secs().to_string();
    let mut manifest = tokio::process::Command::new("nsenter");
    manifest
        .arg(format!("--net={}", netns::ns_path(&ns)))
        .args(["--", "curl", "-sS", "--fail", "--max-time", &max_time, "-H", MANIFEST_ACCEPT, "-o", "/dev/null"])
        .arg(format!("{base}/v2/{REPO}/manifests/{TAG}"));
    shoal_e2e::run(&mut manifest, limit).await.with_context(|| format!("{ns}: manifest"))?;
    let mut cmd = tokio::process::Command::new("nsenter");
    cmd.arg(format!("--net={}", netns::ns_path(&ns))).args([
        "--",
        "curl",
        "-sS",
        "--fail",
        "--max-time",
        &max_time,
        "-w",
        "%{http_code} %{size_download} %{time_total} %{url}\\n",
    ]);
    if blobs.len() > 1 {
        cmd.args(["-Z", "--parallel-immediate", "--parallel-max", &parallel.max(1).to_string()]);
    }
    for blob in &blobs {
        cmd.args(["-o", "/dev/null"]).arg(format!("{base}/v2/{REPO}/blobs/{}", blob.digest));
    }
    let out = shoal_e2e::run(&mut cmd, limit).await.with_context(|| format!("{ns}: blobs"))?;
    let elapsed = start.elapsed();
    let text = String::from_utf8_lossy(&out.stdout);
    let mut blob_secs = Vec::new();
    for blob in &blobs {
        let line = text
            .lines()
            .find(|l| l.ends_with(&blob.digest))
            .with_context(|| format!("{ns}: no curl result for {}:\n{text}", blob.digest))?;
        let mut f = line.split_whitespace();
        let (code, size) = (f.next().unwrap_or(""), f.next().unwrap_or(""));
        ensure!(
            code == "200" && size == blob.size.to_string(),
            "{ns}: {} answered {code} with {size} bytes, want 200 with {}",
            blob.digest,
            blob.size
        );
        blob_secs.push(f.next().and_then(|t| t.parse().ok()).unwrap_or(0.0));
    }
    Ok(Pull { total: elapsed, blob_secs })
}

/// Pulls from every node namespace at once; per-node completion times, in node order.
pub(crate) async fn pull_all(
    nodes: usize,
    base: impl Fn(usize) -> String,
    blobs: &[Blob],
    parallel: u64,
    limit: Duration,
) -> Result<Vec<Pull>> {
    let mut handles = Vec::new();
    for i in 0..nodes {
        handles.push(tokio::spawn(pull_in_ns(node_ns(i), base(i), blobs.to_vec(), parallel, limit)));
    }
    let mut times = Vec::new();
    let mut errors = Vec::new();
    for (i, h) in handles.into_iter().enumerate() {
        match h.await {
            Ok(Ok(t)) => times.push(t),
            Ok(Err(e)) => errors.push(format!("node {i}: {e:#}")),
            Err(e) => errors.push(format!("node {i}: {e}")),
        }
    }
    if !errors.is_empty() {
        bail!("pulls failed:\n{}", errors.join("\n"));
    }
    Ok(times)
}

/// Median and max.
pub(crate) fn p50_max(times: &[Duration]) -> (Duration, Duration) {
    let mut v = times.to_vec();
    v.sort();
    (v[(v.len() - 1) / 2], *v.last().unwrap_or(&Duration::ZERO))
}

//! Swarm benchmark: N daemons, each in its own network namespace with its link capped at B both
//! ways (tbf), the origin registry in its own namespace behind the same cap, all pulling one image of
//! size S at once — first through Shoal (scheduler + daemons, P2P), then the same N namespaces
//! straight from the origin. Then the raw peer-to-peer rate between two daemons on loopback (no
//! caps, sha256 on). Prints Markdown tables; asserts nothing about speed (it fails only if a pull
//! fails or returns the wrong bytes).
//!
//! Run (as root: it creates network namespaces `shoalb-*`, all removed on exit):
//! `./scripts/bench-swarm.sh`, i.e. `SHOAL_BIN=target/release/shoal cargo bench -p shoal-e2e --bench swarm`.
//!
//! Knobs (environment):
//! - `SHOAL_BENCH_NODES` (8): N daemons / client namespaces.
//! - `SHOAL_BENCH_RATE` (`200mbit`): B, the cap on every node's and the origin's link, each way.
//! - `SHOAL_BENCH_MB` (200): S in MB (10^6 bytes), split into layers of about 25 MB (at least 16 MiB).
//! - `SHOAL_BENCH_PARALLEL` (3): blobs each client fetches at once (containerd's CRI default is 3).
//! - `SHOAL_BENCH_DAEMON_ARGS`: extra `shoal daemon` flags (e.g. `--upload-limit 24MiB/s`).
//! - `SHOAL_BENCH_P2P_MB` (512): blob size of the loopback peer-rate part; 0 skips it.
//! - `SHOAL_BENCH_SWARM` (1): 0 skips the namespace part.
//! - `SHOAL_BENCH_IPERF` (1): 0 skips the iperf3 check of the cap.
//! - `SHOAL_BENCH_DIRECT` (1): 0 skips the direct run (for quick P2P iterations; no speedup then).
//! - `SHOAL_BENCH_VERIFY` (1): 0 skips re-hashing the blobs each daemon stored.
//! - `SHOAL_BENCH_KEEP` (0): 1 keeps the swarm's logs and data dirs (the path is printed).
//! - `SHOAL_BENCH_PERF=DIR`: `perf record -g` of both loopback daemons during the peer pull.
//!
//! Clients are curl processes inside each namespace (manifest by tag, then every blob, bytes
//! counted, not hashed: the daemons hash, the client must not be the bottleneck on 2 cores).

#[path = "swarm/loopback.rs"]
mod loopback;
#[path = "swarm/netns.rs"]
mod netns;
#[path = "swarm/procs.rs"]
mod procs;
#[path = "swarm/sys.rs"]
mod sys;

use loopback::loopback;
use sys::*;

use std::fmt::Write as _;
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use anyhow::{bail, ensure, Context, Result};
use shoal_e2e::{metric_value, AccessLogLine, Blob, Daemon, DaemonConfig, Image, Registry};

use netns::{in_ns, node_ip, node_ns, sh, Topology, ORIGIN, ORIGIN_IP, SCHED, SCHED_IP};
use procs::Proc;

const MB: u64 = 1_000_000;
const MIB: u64 = 1 << 20;
const REPO: &str = "bench/swarm";
const TAG: &str = "v1";
const TOKEN: &str = "0123456789abcdef0123";
const REGISTRY_PORT: u16 = 5000;
const SCHED_PORT: u16 = 65000;
/// The scheduler's admin listener (`/metrics`, `/healthz`), inside its namespace.
const SCHED_ADMIN_PORT: u16 = 65005;
const MIRROR: &str = "127.0.0.1:5001";
const ADMIN: &str = "127.0.0.1:5003";
const PEER_PORT: u16 = 65002;
const MANIFEST_ACCEPT: &str = "Accept: application/vnd.oci.image.manifest.v1+json";

fn env_u64(name: &str, default: u64) -> u64 {
    std::env::var(name).ok().and_then(|v| v.trim().parse().ok()).unwrap_or(default)
}

fn env_on(name: &str) -> bool {
    env_u64(name, 1) != 0
}

fn load_avg() -> String {
    std::fs::read_to_string("/proc/loadavg")
        .unwrap_or_default()
        .split_whitespace()
        .take(3)
        .collect::<Vec<_>>()
        .join(" ")
}

fn cores() -> usize {
    std::thread::available_parallelism().map(|n| n.get()).unwrap_or(1)
}

#[tokio::main]
async fn main() -> Result<()> {
    // `cargo bench` passes `--bench`; `cargo test --all-targets` runs this binary without it, and
    // a benchmark is not a test: do nothing then.
    if !std::env::args().any(|a| a == "--bench") {
        println!("benchmark skipped: run it with cargo bench (see the file's header)");
        return Ok(());
    }
    let mut term = tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate())?;
    let result = tokio::select! {
        r = run() => r,
        _ = tokio::signal::ctrl_c() => Err(anyhow::anyhow!("interrupted")),
        _ = term.recv() => Err(anyhow::anyhow!("terminated")),
    };
    // Every guard inside `run` has been dropped by now (processes killed, namespaces deleted);
    // this catches anything a panic in a guard could have left.
    netns::cleanup_stale();
    result
}

async fn run() -> Result<()> {
    let bin = Daemon::bin_path();
    ensure!(bin.is_file(), "shoal binary not found at {} (set SHOAL_BIN or run scripts/bench-swarm.sh)", bin.display());
    let started = chrono_now();
    let load_start = load_avg();
    let mut report = String::new();
    let _ = writeln!(report, "\n# Shoal swarm benchmark\n");
    let _ = writeln!(
        report,
        "{started}; binary {}; commit {}; {} cores, load average at start {load_start}{}.\n",
        bin.display(),
        git_commit(),
        cores(),
        if cores() <= 2 {
            " (few cores: CPU, not the link, may bound the swarm; see the load average and the CPU line)"
        } else {
            ""
        }
    );

    if env_on("SHOAL_BENCH_SWARM") {
        if !is_root() {
            bail!("the swarm part needs root (network namespaces); run as root or set SHOAL_BENCH_SWARM=0");
        }
        netns::cleanup_stale();
        swarm(&bin, &mut report).await?;
    }
    let p2p_mb = env_u64("SHOAL_BENCH_P2P_MB", 512);
    if p2p_mb > 0 {
        loopback(&bin, p2p_mb, &mut report).await?;
    }
    let _ = writeln!(report, "Load average at the end: {}.", load_avg());
    println!("{report}");
    Ok(())
}

fn is_root() -> bool {
    sh(std::process::Command::new("id").arg("-u")).map(|s| s.trim() == "0").unwrap_or(false)
}

fn chrono_now() -> String {
    sh(std::process::Command::new("date").args(["-u", "+%Y-%m-%d %H:%M UTC"]))
        .map(|s| s.trim().to_string())
        .unwrap_or_default()
}

fn git_commit() -> String {
    let root = shoal_e2e::workspace_root();
    let head = sh(std::process::Command::new("git").arg("-C").arg(&root).args(["rev-parse", "--short", "HEAD"]))
        .unwrap_or_default();
    let dirty = sh(std::process::Command::new("git").arg("-C").arg(&root).args([
        "status",
        "--porcelain",
        "--untracked-files=no",
        "crates",
    ]))
    .map(|s| !s.trim().is_empty())
    .unwrap_or(false);
    format!("{}{}", head.trim(), if dirty { " (crates/ modified)" } else { "" })
}

// ---------------------------------------------------------------------------------------------
// Part 1: the capped swarm in network namespaces.

/// The origin: docker-registry inside the origin namespace on 0.0.0.0:5000, access log on stdout.
struct Origin {
    proc: Proc,
    access_log: PathBuf,
}

impl Origin {
    async fn start(dir: &Path) -> Result<Self> {
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
    fn blob_bytes_since(&self, mark: usize) -> u64 {
        self.lines()
            .into_iter()
            .skip(mark)
            .filter(|l| l.method == "GET" && matches!(l.status, 200 | 206) && l.blob_digest().is_some())
            .map(|l| l.bytes)
            .sum()
    }

    /// Per blob digest: (body bytes served, GETs answered 200/206) after `mark`.
    fn by_blob_since(&self, mark: usize) -> std::collections::HashMap<String, (u64, usize)> {
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
    fn blob_gets_since(&self, mark: usize) -> usize {
        self.lines().into_iter().skip(mark).filter(|l| l.method == "GET" && l.blob_digest().is_some()).count()
    }

    /// Waits until the access log stops growing (it is written after each response).
    async fn settle(&self) -> usize {
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
async fn push(image: &Image) -> Result<()> {
    let mut cmd = tokio::process::Command::new("nsenter");
    cmd.arg(format!("--net={}", netns::ns_path(ORIGIN)))
        .args(["--", "skopeo", "copy", "--quiet", "--preserve-digests", "--dest-tls-verify=false"])
        .arg(format!("oci:{}:latest", image.layout_dir().display()))
        .arg(format!("docker://127.0.0.1:{REGISTRY_PORT}/{REPO}:{TAG}"));
    shoal_e2e::run(&mut cmd, Duration::from_secs(300)).await?;
    Ok(())
}

/// One client's pull: manifest by tag, then every blob (`parallel` at a time), from `base`
/// (`http://HOST:PORT`), inside namespace `ns`. Returns the completion time; fails unless every
/// response is 200 with the expected number of bytes.
/// One client's pull: the total time and each blob's own transfer time (curl's time_total), in
/// blob order.
struct Pull {
    total: Duration,
    blob_secs: Vec<f64>,
}

impl Pull {
    /// A run that was not made (reported as 0 s).
    fn skipped(blobs: usize) -> Self {
        Self { total: Duration::ZERO, blob_secs: vec![0.0; blobs] }
    }
}

async fn pull_in_ns(ns: String, base: String, blobs: Vec<Blob>, parallel: u64, limit: Duration) -> Result<Pull> {
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
async fn pull_all(
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
fn p50_max(times: &[Duration]) -> (Duration, Duration) {
    let mut v = times.to_vec();
    v.sort();
    (v[(v.len() - 1) / 2], *v.last().unwrap_or(&Duration::ZERO))
}

/// A daemon's counters.
#[derive(Default, Clone, Copy)]
struct Counters {
    origin: f64,
    peer: f64,
    uploaded: f64,
    back_to_source: f64,
    piece_failures: f64,
    piece_busy: f64,
    tasks: f64,
    parents: f64,
}

/// The sum of every sample of `name` (all label sets).
fn metric_sum(text: &str, name: &str) -> f64 {
    text.lines()
        .filter(|l| !l.starts_with('#'))
        .filter_map(|l| l.rsplit_once(' '))
        .filter(|(series, _)| series.split('{').next() == Some(name))
        .filter_map(|(_, v)| v.parse::<f64>().ok())
        .sum()
}

fn read_counters(ns: &str) -> Counters {
    let text =
        sh(in_ns(ns, "curl").args(["-sf", "--max-time", "5", &format!("http://{ADMIN}/metrics")])).unwrap_or_default();
    Counters {
        origin: metric_value(&text, "shoal_fetched_bytes_total", "source=\"origin\"").unwrap_or(0.0),
        peer: metric_value(&text, "shoal_fetched_bytes_total", "source=\"peer\"").unwrap_or(0.0),
        uploaded: metric_value(&text, "shoal_uploaded_bytes_total", "").unwrap_or(0.0),
        back_to_source: metric_value(&text, "shoal_back_to_source_total", "").unwrap_or(0.0),
        piece_failures: metric_sum(&text, "shoal_piece_failures_total"),
        piece_busy: metric_value(&text, "shoal_piece_busy_total", "").unwrap_or(0.0),
        tasks: metric_value(&text, "shoal_task_parents_count", "").unwrap_or(0.0),
        parents: metric_value(&text, "shoal_task_parents_sum", "").unwrap_or(0.0),
    }
}

/// The blob layers for S bytes: about 25 MB each, at least 16 MiB, at most 12 layers.
fn layer_sizes(total: u64) -> Vec<u64> {
    let count = (total / (25 * MB)).clamp(1, 12);
    let count = count.min((total / (16 * MIB)).max(1));
    let each = total / count;
    let mut sizes = vec![each; count as usize];
    sizes[0] += total - each * count;
    sizes
}

/// iperf3 from the origin to node 0 and back: what the cap really gives (both tbf's on the path).
async fn iperf(dir: &Path) -> Result<(f64, f64)> {
    let mut server = Proc::spawn(
        "iperf3 -s",
        Some(&node_ns(0)),
        Path::new("iperf3"),
        &["-s".into(), "-p".into(), "5201".into()],
        &[],
        &dir.join("iperf3.log"),
    )?;
    let mut rates = Vec::new();
    for reverse in [false, true] {
        let mut last = String::new();
        let mut got = None;
        for _ in 0..20 {
            let mut cmd = in_ns(ORIGIN, "iperf3");
            cmd.args(["-c", &node_ip(0), "-p", "5201", "-t", "3", "-J"]);
            if reverse {
                cmd.arg("-R");
            }
            // On failure iperf3 -J still prints JSON with an "error" (e.g. the server is still
            // busy with the previous test): retry.
            let out = sh(&mut cmd).unwrap_or_else(|e| format!("{e:#}"));
            let v: serde_json::Value = serde_json::from_str(&out).unwrap_or_default();
            got = v["end"]["sum_received"]["bits_per_second"].as_f64();
            if got.is_some() {
                break;
            }
            last = v["error"].as_str().map_or(out.clone(), str::to_string);
            tokio::time::sleep(Duration::from_millis(300)).await;
        }
        rates.push(got.with_context(|| format!("iperf3 failed: {last}"))?);
    }
    server.kill();
    Ok((rates[0], rates[1]))
}

fn which(tool: &str) -> bool {
    sh(std::process::Command::new("sh").args(["-c", &format!("command -v {tool}")])).is_ok()
}

async fn swarm(bin: &Path, report: &mut String) -> Result<()> {
    let nodes = env_u64("SHOAL_BENCH_NODES", 8).max(1) as usize;
    let rate = std::env::var("SHOAL_BENCH_RATE").unwrap_or_else(|_| "200mbit".into());
    let rate_bits = netns::parse_rate(&rate)?;
    let s_mb = env_u64("SHOAL_BENCH_MB", 200).max(16);
    let parallel = env_u64("SHOAL_BENCH_PARALLEL", 3);
    let extra: Vec<String> =
        std::env::var("SHOAL_BENCH_DAEMON_ARGS").unwrap_or_default().split_whitespace().map(str::to_string).collect();
    ensure!(nodes <= 200, "at most 200 nodes");

    let dir = tempfile::Builder::new().prefix("shoal-bench-swarm-").tempdir()?;
    eprintln!("swarm: building a {s_mb} MB image…");
    let image = Image::build(42, &layer_sizes(s_mb * MB))?;
    let blobs = image.blobs();
    let s_bytes: u64 = blobs.iter().map(|b| b.size).sum::<u64>() + image.manifest.len() as u64;
    let ideal = Duration::from_secs_f64(s_bytes as f64 * 8.0 / rate_bits);
    // Generous: the direct run takes about N × S/B.
    let limit = ideal * (3 * nodes as u32) + Duration::from_secs(120);

    eprintln!("swarm: creating {nodes} node namespaces + origin + scheduler, links capped at {rate} each way…");
    let topo = Topology::create(nodes, &rate, rate_bits)?;
    let origin_dir = dir.path().join("origin");
    std::fs::create_dir_all(&origin_dir)?;
    let origin = Origin::start(&origin_dir).await?;
    eprintln!("swarm: pushing the image into the origin…");
    push(&image).await?;

    let cap_check = if env_on("SHOAL_BENCH_IPERF") && which("iperf3") {
        eprintln!("swarm: checking the cap with iperf3 (origin <-> node 0)…");
        match iperf(dir.path()).await {
            Ok((down, up)) => format!(
                "iperf3 (TCP, 3 s) origin→node0 {:.1} Mbit/s, node0→origin {:.1} Mbit/s ({:.0}% / {:.0}% of {rate})",
                down / 1e6,
                up / 1e6,
                100.0 * down / rate_bits,
                100.0 * up / rate_bits
            ),
            Err(e) => format!("iperf3 check failed: {e:#}"),
        }
    } else {
        "iperf3 check skipped".to_string()
    };
    eprintln!("swarm: {cap_check}");

    // --- Run A: P2P through Shoal.
    eprintln!("swarm: run A — scheduler + {nodes} daemons, all nodes pull at once…");
    let sched_log = dir.path().join("scheduler.log");
    let mut scheduler = Proc::spawn(
        "scheduler",
        Some(SCHED),
        bin,
        &[
            "scheduler".into(),
            "--listen".into(),
            format!("{SCHED_IP}:{SCHED_PORT}"),
            "--admin-listen".into(),
            format!("127.0.0.1:{SCHED_ADMIN_PORT}"),
            "--cluster-token".into(),
            TOKEN.into(),
        ],
        &[("RUST_LOG", std::env::var("RUST_LOG").unwrap_or_else(|_| "info".into()))],
        &sched_log,
    )?;
    scheduler
        .wait_http(Some(SCHED), &format!("http://127.0.0.1:{SCHED_ADMIN_PORT}/healthz"), Duration::from_secs(20))
        .await?;
    let mut daemons = Vec::new();
    for i in 0..nodes {
        let data = dir.path().join(format!("node{i}"));
        std::fs::create_dir_all(&data)?;
        let mut args: Vec<String> = vec![
            "daemon".into(),
            "--data-dir".into(),
            data.join("data").display().to_string(),
            "--mirror-listen".into(),
            MIRROR.into(),
            "--admin-listen".into(),
            ADMIN.into(),
            "--registry".into(),
            format!("{ORIGIN_IP}:{REGISTRY_PORT}=http://{ORIGIN_IP}:{REGISTRY_PORT}"),
            "--scheduler".into(),
            format!("http://{SCHED_IP}:{SCHED_PORT}"),
            "--peer-listen".into(),
            format!("{}:{PEER_PORT}", node_ip(i)),
            "--advertise-addr".into(),
            node_ip(i),
            "--cluster-token".into(),
            TOKEN.into(),
            "--host-id".into(),
            format!("node{i}"),
        ];
        args.extend(extra.iter().cloned());
        let env =
            [("RUST_LOG", std::env::var("RUST_LOG").unwrap_or_else(|_| "info".into())), ("RUST_BACKTRACE", "1".into())];
        daemons.push(Proc::spawn(
            &format!("daemon node{i}"),
            Some(&node_ns(i)),
            bin,
            &args,
            &env,
            &data.join("daemon.log"),
        )?);
    }
    for (i, d) in daemons.iter_mut().enumerate() {
        d.wait_http(Some(&node_ns(i)), &format!("http://{ADMIN}/healthz"), Duration::from_secs(30)).await?;
    }
    tokio::time::sleep(Duration::from_secs(1)).await; // host announcements reach the scheduler
    let mark = origin.settle().await;
    let pids: Vec<Option<u32>> = daemons.iter().map(Proc::pid).collect();
    let daemon_cpu = |pids: &[Option<u32>]| pids.iter().map(|p| cpu_seconds(*p)).sum::<f64>();
    let (cpu_a0, mach_a0) = (daemon_cpu(&pids), machine_cpu());
    let p2p_pulls = match pull_all(nodes, |_| format!("http://{MIRROR}"), &blobs, parallel, limit).await {
        Ok(t) => t,
        Err(e) => {
            for (i, d) in daemons.iter().enumerate() {
                eprintln!("--- node{i} daemon log tail:\n{}", d.tail(2500));
            }
            eprintln!("--- scheduler log tail:\n{}", scheduler.tail(2500));
            eprintln!("--- registry log tail:\n{}", origin.proc.tail(2500));
            return Err(e);
        }
    };
    let (cpu_a1, mach_a1) = (daemon_cpu(&pids), machine_cpu());
    let sched_cpu = cpu_seconds(scheduler.pid());
    let sched_metrics = sh(in_ns(SCHED, "curl").args([
        "-sf",
        "--max-time",
        "5",
        &format!("http://127.0.0.1:{SCHED_ADMIN_PORT}/metrics"),
    ]))
    .unwrap_or_default();
    let decision = |kind: &str| {
        metric_value(&sched_metrics, "shoal_scheduler_decisions_total", &format!("kind=\"{kind}\"")).unwrap_or(0.0)
    };
    let decisions = format!(
        "scheduler decisions: {} back-to-source, {} parents, {} wait (for {} blobs × {nodes} nodes)",
        decision("back_to_source"),
        decision("parents"),
        decision("wait"),
        blobs.len()
    );
    origin.settle().await;
    let p2p: Vec<Duration> = p2p_pulls.iter().map(|p| p.total).collect();
    let p2p_origin = origin.blob_bytes_since(mark);
    let p2p_by_blob = origin.by_blob_since(mark);
    let p2p_origin_gets = origin.blob_gets_since(mark);
    tokio::time::sleep(Duration::from_millis(500)).await;
    let counters: Vec<Counters> = (0..nodes).map(|i| read_counters(&node_ns(i))).collect();
    let verified = verify_stores(dir.path(), nodes, &blobs).await;
    let alive = daemons.iter_mut().map(Proc::is_running).filter(|&up| up).count();
    let sched_alive = scheduler.is_running();
    drop(daemons);
    drop(scheduler);

    // --- Run B: straight from the origin.
    eprintln!("swarm: run B — the same {nodes} namespaces pull straight from the origin…");
    let mark = origin.settle().await;
    let mach_b0 = machine_cpu();
    let direct_pulls = if env_on("SHOAL_BENCH_DIRECT") {
        pull_all(nodes, |_| format!("http://{ORIGIN_IP}:{REGISTRY_PORT}"), &blobs, parallel, limit).await?
    } else {
        eprintln!("swarm: direct run skipped (SHOAL_BENCH_DIRECT=0)");
        p2p_pulls.iter().map(|_| Pull::skipped(blobs.len())).collect()
    };
    let direct: Vec<Duration> = direct_pulls.iter().map(|p| p.total).collect();
    let mach_b1 = machine_cpu();
    origin.settle().await;
    let direct_origin = origin.blob_bytes_since(mark);

    // --- Report.
    let s_over_b = ideal.as_secs_f64();
    let (p2p_p50, p2p_max) = p50_max(&p2p);
    let (d_p50, d_max) = p50_max(&direct);
    let layer_count = image.layers.len();
    let layer_mb = image.layers[0].size as f64 / MB as f64;
    let _ = writeln!(
        report,
        "## Swarm: {nodes} nodes, S = {:.1} MB ({layer_count} layers of ~{layer_mb:.1} MB + config), B = {rate} each way per link\n",
        s_bytes as f64 / MB as f64
    );
    let _ = writeln!(
        report,
        "Physical limit S/B = {s_over_b:.2} s. Each node and the origin in its own network namespace, veth to a bridge, \
         tbf on both ends of every capped veth. Clients: curl in each namespace (manifest, then the blobs, {parallel} at a time). \
         {cap_check}. `tc`: {}.\n",
        topo.describe()
    );
    let _ = writeln!(report, "| | P2P (Shoal) | direct from origin | target |");
    let _ = writeln!(report, "|---|---|---|---|");
    let _ = writeln!(
        report,
        "| node completion p50 | {:.2}× S/B ({:.1} s) | {:.2}× S/B ({:.1} s) | |",
        p2p_p50.as_secs_f64() / s_over_b,
        p2p_p50.as_secs_f64(),
        d_p50.as_secs_f64() / s_over_b,
        d_p50.as_secs_f64()
    );
    let _ = writeln!(
        report,
        "| node completion max | {:.2}× S/B ({:.1} s) | {:.2}× S/B ({:.1} s) | P2P ≤ 1.5× (aim 1.2×) |",
        p2p_max.as_secs_f64() / s_over_b,
        p2p_max.as_secs_f64(),
        d_max.as_secs_f64() / s_over_b,
        d_max.as_secs_f64()
    );
    let _ = writeln!(
        report,
        "| origin blob bytes | {:.3}× S ({} GETs) | {:.3}× S | P2P ≤ 1.05× |",
        p2p_origin as f64 / s_bytes as f64,
        p2p_origin_gets,
        direct_origin as f64 / s_bytes as f64
    );
    let speedup = d_max.as_secs_f64() / p2p_max.as_secs_f64();
    let _ = writeln!(
        report,
        "| speedup (direct max / P2P max) | {speedup:.2}× | 1× | ≥ N/1.5 = {:.2}× |",
        nodes as f64 / 1.5
    );
    let _ = writeln!(report);
    let _ = writeln!(report, "Per node (P2P run: the daemon's own counters; direct run: completion only):\n");
    let _ = writeln!(
        report,
        "| node | P2P time | from origin (MB) | from peers (MB) | uploaded (MB) | back-to-source grants | failed pieces | busy answers | parents per task | direct time |"
    );
    let _ = writeln!(report, "|---|---|---|---|---|---|---|---|---|---|");
    for i in 0..nodes {
        let c = counters[i];
        let _ = writeln!(
            report,
            "| node{i} | {:.1} s | {:.1} | {:.1} | {:.1} | {:.0} | {:.0} | {:.0} | {:.1} | {:.1} s |",
            p2p[i].as_secs_f64(),
            c.origin / MB as f64,
            c.peer / MB as f64,
            c.uploaded / MB as f64,
            c.back_to_source + 0.0,
            c.piece_failures + 0.0,
            c.piece_busy + 0.0,
            if c.tasks > 0.0 { c.parents / c.tasks } else { 0.0 },
            direct[i].as_secs_f64()
        );
    }
    let sum_origin: f64 = counters.iter().map(|c| c.origin).sum();
    let sum_peer: f64 = counters.iter().map(|c| c.peer).sum();
    let sum_up: f64 = counters.iter().map(|c| c.uploaded).sum();
    let _ = writeln!(
        report,
        "| sum | | {:.1} ({:.3}× S) | {:.1} | {:.1} | | | | | |\n",
        sum_origin / MB as f64,
        sum_origin / s_bytes as f64,
        sum_peer / MB as f64,
        sum_up / MB as f64
    );
    let _ = writeln!(
        report,
        "Daemons alive after run A: {alive}/{nodes}; scheduler alive: {sched_alive}; {decisions}. Stored blobs: {verified}.\n"
    );
    let _ = writeln!(
        report,
        "CPU: during run A the {nodes} daemons used {:.1} CPU-seconds in {:.1} s ({:.2} cores; scheduler {:.2} s in total) and the \
         machine was {:.0}% busy (all processes, {} cores); during run B the machine was {:.0}% busy.\n",
        cpu_a1 - cpu_a0,
        p2p_max.as_secs_f64(),
        (cpu_a1 - cpu_a0) / p2p_max.as_secs_f64(),
        sched_cpu,
        busy_pct(mach_a0, mach_a1),
        cores(),
        busy_pct(mach_b0, mach_b1)
    );
    let _ = writeln!(
        report,
        "Per blob (P2P run): origin traffic and the slowest node's transfer time of that blob (curl's time_total):\n"
    );
    let _ = writeln!(
        report,
        "| blob | size (MB) | origin GETs | origin bytes (× blob) | slowest P2P transfer | slowest direct transfer |"
    );
    let _ = writeln!(report, "|---|---|---|---|---|---|");
    for (b, blob) in blobs.iter().enumerate() {
        let (bytes, gets) = p2p_by_blob.get(&blob.digest).copied().unwrap_or((0, 0));
        let slowest =
            |pulls: &[Pull]| pulls.iter().map(|p| p.blob_secs.get(b).copied().unwrap_or(0.0)).fold(0.0, f64::max);
        let _ = writeln!(
            report,
            "| {} | {:.1} | {gets} | {:.2} | {:.1} s | {:.1} s |",
            &blob.hex()[..12],
            blob.size as f64 / MB as f64,
            bytes as f64 / blob.size as f64,
            slowest(&p2p_pulls),
            slowest(&direct_pulls)
        );
    }
    let _ = writeln!(report);
    drop(origin);
    drop(topo);
    if env_u64("SHOAL_BENCH_KEEP", 0) != 0 {
        let kept = dir.keep();
        let _ = writeln!(report, "Logs and data kept in {}.\n", kept.display());
    }
    Ok(())
}

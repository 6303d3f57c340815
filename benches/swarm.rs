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
//! - `SHOAL_BENCH_VERIFY` (1): 0 skips re-hashing the blobs each daemon stored.
//!
//! Clients are curl processes inside each namespace (manifest by tag, then every blob, bytes
//! counted, not hashed: the daemons hash, the client must not be the bottleneck on 2 cores).

#[path = "swarm/netns.rs"]
mod netns;
#[path = "swarm/procs.rs"]
mod procs;

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
    std::fs::read_to_string("/proc/loadavg").unwrap_or_default().split_whitespace().take(3).collect::<Vec<_>>().join(" ")
}

fn cores() -> usize {
    std::thread::available_parallelism().map(|n| n.get()).unwrap_or(1)
}

#[tokio::main]
async fn main() -> Result<()> {
    // Cargo passes `--bench`; there are no other arguments.
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
        if cores() <= 2 { " (a 2-core machine, shared with other builds: CPU, not the link, may bound the swarm)" } else { "" }
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
    sh(std::process::Command::new("date").args(["-u", "+%Y-%m-%d %H:%M UTC"])).map(|s| s.trim().to_string()).unwrap_or_default()
}

fn git_commit() -> String {
    let root = shoal_e2e::workspace_root();
    let head = sh(std::process::Command::new("git").arg("-C").arg(&root).args(["rev-parse", "--short", "HEAD"])).unwrap_or_default();
    let dirty = sh(std::process::Command::new("git").arg("-C").arg(&root).args(["status", "--porcelain", "--untracked-files=no", "crates"]))
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
        let script = format!("exec docker-registry serve {} >>{} 2>>{}", config.display(), access_log.display(), dir.join("registry.log").display());
        let mut proc = Proc::spawn("docker-registry", Some(ORIGIN), Path::new("sh"), &["-c".into(), script], &[], &dir.join("spawn.log"))?;
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
async fn pull_in_ns(ns: String, base: String, blobs: Vec<Blob>, parallel: u64, limit: Duration) -> Result<Duration> {
    let start = Instant::now();
    let max_time = limit.as_secs().to_string();
    let mut manifest = tokio::process::Command::new("nsenter");
    manifest
        .arg(format!("--net={}", netns::ns_path(&ns)))
        .args(["--", "curl", "-sS", "--fail", "--max-time", &max_time, "-H", MANIFEST_ACCEPT, "-o", "/dev/null"])
        .arg(format!("{base}/v2/{REPO}/manifests/{TAG}"));
    shoal_e2e::run(&mut manifest, limit).await.with_context(|| format!("{ns}: manifest"))?;
    let mut cmd = tokio::process::Command::new("nsenter");
    cmd.arg(format!("--net={}", netns::ns_path(&ns)))
        .args(["--", "curl", "-sS", "--fail", "--max-time", &max_time, "-w", "%{http_code} %{size_download} %{url}\\n"]);
    if blobs.len() > 1 {
        cmd.args(["-Z", "--parallel-immediate", "--parallel-max", &parallel.max(1).to_string()]);
    }
    for blob in &blobs {
        cmd.args(["-o", "/dev/null"]).arg(format!("{base}/v2/{REPO}/blobs/{}", blob.digest));
    }
    let out = shoal_e2e::run(&mut cmd, limit).await.with_context(|| format!("{ns}: blobs"))?;
    let elapsed = start.elapsed();
    let text = String::from_utf8_lossy(&out.stdout);
    for blob in &blobs {
        let line = text
            .lines()
            .find(|l| l.ends_with(&blob.digest))
            .with_context(|| format!("{ns}: no curl result for {}:\n{text}", blob.digest))?;
        let mut f = line.split_whitespace();
        let (code, size) = (f.next().unwrap_or(""), f.next().unwrap_or(""));
        ensure!(code == "200" && size == blob.size.to_string(), "{ns}: {} answered {code} with {size} bytes, want 200 with {}", blob.digest, blob.size);
    }
    Ok(elapsed)
}

/// Pulls from every node namespace at once; per-node completion times, in node order.
async fn pull_all(nodes: usize, base: impl Fn(usize) -> String, blobs: &[Blob], parallel: u64, limit: Duration) -> Result<Vec<Duration>> {
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
}

fn read_counters(ns: &str) -> Counters {
    let text = sh(in_ns(ns, "curl").args(["-sf", "--max-time", "5", &format!("http://{ADMIN}/metrics")])).unwrap_or_default();
    Counters {
        origin: metric_value(&text, "shoal_fetched_bytes_total", "source=\"origin\"").unwrap_or(0.0),
        peer: metric_value(&text, "shoal_fetched_bytes_total", "source=\"peer\"").unwrap_or(0.0),
        uploaded: metric_value(&text, "shoal_uploaded_bytes_total", "").unwrap_or(0.0),
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
    let mut server = Proc::spawn("iperf3 -s", Some(&node_ns(0)), Path::new("iperf3"), &["-s".into(), "-p".into(), "5201".into()], &[], &dir.join("iperf3.log"))?;
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
            match sh(&mut cmd) {
                Ok(out) => {
                    let v: serde_json::Value = serde_json::from_str(&out)?;
                    got = v["end"]["sum_received"]["bits_per_second"].as_f64();
                    break;
                }
                Err(e) => last = format!("{e:#}"),
            }
            tokio::time::sleep(Duration::from_millis(200)).await;
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
    let extra: Vec<String> = std::env::var("SHOAL_BENCH_DAEMON_ARGS").unwrap_or_default().split_whitespace().map(str::to_string).collect();
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
        &["scheduler".into(), "--listen".into(), format!("{SCHED_IP}:{SCHED_PORT}")],
        &[("RUST_LOG", std::env::var("RUST_LOG").unwrap_or_else(|_| "info".into()))],
        &sched_log,
    )?;
    scheduler.wait_http(Some(SCHED), &format!("http://{SCHED_IP}:{SCHED_PORT}/healthz"), Duration::from_secs(20)).await?;
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
        let env = [("RUST_LOG", std::env::var("RUST_LOG").unwrap_or_else(|_| "info".into())), ("RUST_BACKTRACE", "1".into())];
        daemons.push(Proc::spawn(&format!("daemon node{i}"), Some(&node_ns(i)), bin, &args, &env, &data.join("daemon.log"))?);
    }
    for (i, d) in daemons.iter_mut().enumerate() {
        d.wait_http(Some(&node_ns(i)), &format!("http://{ADMIN}/healthz"), Duration::from_secs(30)).await?;
    }
    tokio::time::sleep(Duration::from_secs(1)).await; // host announcements reach the scheduler
    let mark = origin.settle().await;
    let p2p = match pull_all(nodes, |_| format!("http://{MIRROR}"), &blobs, parallel, limit).await {
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
    origin.settle().await;
    let p2p_origin = origin.blob_bytes_since(mark);
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
    let direct = pull_all(nodes, |_| format!("http://{ORIGIN_IP}:{REGISTRY_PORT}"), &blobs, parallel, limit).await?;
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
    let _ = writeln!(report, "| node | P2P time | from origin (MB) | from peers (MB) | uploaded (MB) | direct time |");
    let _ = writeln!(report, "|---|---|---|---|---|---|");
    for i in 0..nodes {
        let c = counters[i];
        let _ = writeln!(
            report,
            "| node{i} | {:.1} s | {:.1} | {:.1} | {:.1} | {:.1} s |",
            p2p[i].as_secs_f64(),
            c.origin / MB as f64,
            c.peer / MB as f64,
            c.uploaded / MB as f64,
            direct[i].as_secs_f64()
        );
    }
    let sum_origin: f64 = counters.iter().map(|c| c.origin).sum();
    let sum_peer: f64 = counters.iter().map(|c| c.peer).sum();
    let sum_up: f64 = counters.iter().map(|c| c.uploaded).sum();
    let _ = writeln!(
        report,
        "| sum | | {:.1} ({:.3}× S) | {:.1} | {:.1} | |\n",
        sum_origin / MB as f64,
        sum_origin / s_bytes as f64,
        sum_peer / MB as f64,
        sum_up / MB as f64
    );
    let _ = writeln!(
        report,
        "Daemons alive after run A: {alive}/{nodes}; scheduler alive: {sched_alive}. Stored blobs: {verified}.\n"
    );
    drop(origin);
    drop(topo);
    Ok(())
}

/// Checks every daemon's complete blob files exist with the right size and (unless
/// SHOAL_BENCH_VERIFY=0) re-hashes them with sha256sum. Returns a one-line summary.
async fn verify_stores(dir: &Path, nodes: usize, blobs: &[Blob]) -> String {
    let mut missing = Vec::new();
    let mut files = Vec::new();
    for i in 0..nodes {
        for blob in blobs {
            let path = dir.join(format!("node{i}/data/blobs/sha256/{}/{}", &blob.hex()[..2], blob.hex()));
            let ok = shoal_e2e::wait_until(Duration::from_secs(10), Duration::from_millis(100), || {
                let p = path.clone();
                async move { std::fs::metadata(&p).map(|m| m.len() == blob.size).unwrap_or(false) }
            })
            .await;
            if ok {
                files.push((path, blob.hex().to_string()));
            } else {
                missing.push(format!("node{i}:{}", &blob.hex()[..12]));
            }
        }
    }
    let mut summary = format!("{}/{} complete with the right size", files.len(), nodes * blobs.len());
    if !missing.is_empty() {
        let _ = write!(summary, " (missing or wrong size: {})", missing.join(", "));
    }
    if env_on("SHOAL_BENCH_VERIFY") && !files.is_empty() {
        let mut cmd = tokio::process::Command::new("sha256sum");
        cmd.args(files.iter().map(|(p, _)| p));
        match shoal_e2e::run(&mut cmd, Duration::from_secs(600)).await {
            Ok(out) => {
                let text = String::from_utf8_lossy(&out.stdout);
                let bad = files.iter().filter(|(p, hex)| !text.lines().any(|l| l.starts_with(hex.as_str()) && l.ends_with(&p.display().to_string()))).count();
                let _ = write!(summary, "; sha256 re-checked: {} bad", bad);
            }
            Err(e) => {
                let _ = write!(summary, "; sha256sum failed: {e:#}");
            }
        }
    }
    summary
}

// ---------------------------------------------------------------------------------------------
// Part 2: raw peer-to-peer rate between two daemons on loopback.

/// The pid of the process whose command line contains `needle` (e.g. a daemon's data dir).
fn pid_with_arg(needle: &str) -> Option<u32> {
    let me = std::process::id();
    std::fs::read_dir("/proc").ok()?.flatten().find_map(|e| {
        let pid: u32 = e.file_name().to_str()?.parse().ok()?;
        let cmdline = std::fs::read(e.path().join("cmdline")).ok()?;
        let cmdline = String::from_utf8_lossy(&cmdline).replace('\0', " ");
        (pid != me && !cmdline.starts_with("setpriv") && cmdline.contains(needle)).then_some(pid)
    })
}

/// User + system CPU seconds a process has used so far (0 if it is gone).
fn cpu_seconds(pid: Option<u32>) -> f64 {
    let Some(pid) = pid else { return 0.0 };
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).unwrap_or_default();
    // Fields after the parenthesised command name: state is field 3, utime 14, stime 15.
    let rest = stat.rsplit_once(')').map_or("", |(_, r)| r);
    let f: Vec<&str> = rest.split_whitespace().collect();
    let ticks: f64 = f.get(11).and_then(|v| v.parse().ok()).unwrap_or(0.0) + f.get(12).and_then(|v| v.parse().ok()).unwrap_or(0.0);
    ticks / clk_tck()
}

fn clk_tck() -> f64 {
    sh(std::process::Command::new("getconf").arg("CLK_TCK")).ok().and_then(|s| s.trim().parse().ok()).unwrap_or(100.0)
}

/// With `SHOAL_BENCH_PERF=DIR`: `perf record -g` of each (name, pid) into `DIR/NAME.data`.
fn start_perf(targets: &[(&str, Option<u32>)]) -> Result<Vec<std::process::Child>> {
    let Some(dir) = std::env::var_os("SHOAL_BENCH_PERF") else { return Ok(Vec::new()) };
    std::fs::create_dir_all(&dir)?;
    let mut children = Vec::new();
    for (name, pid) in targets {
        let Some(pid) = pid else { continue };
        let out = Path::new(&dir).join(format!("{name}.data"));
        children.push(
            std::process::Command::new("perf")
                .args(["record", "-q", "-F", "999", "-g", "-p", &pid.to_string(), "-o"])
                .arg(out)
                .stdout(std::process::Stdio::null())
                .stderr(std::process::Stdio::null())
                .spawn()?,
        );
    }
    std::thread::sleep(Duration::from_millis(300));
    Ok(children)
}

fn stop_perf(children: Vec<std::process::Child>) {
    for mut child in children {
        let _ = std::process::Command::new("kill").args(["-INT", &child.id().to_string()]).status();
        let _ = child.wait();
    }
}

/// GETs `url` counting bytes (no hashing); returns (time, bytes).
async fn get_count(client: &reqwest::Client, url: &str) -> Result<(Duration, u64)> {
    let start = Instant::now();
    let mut resp = client.get(url).send().await?.error_for_status()?;
    let mut n = 0u64;
    while let Some(chunk) = resp.chunk().await? {
        n += chunk.len() as u64;
    }
    Ok((start.elapsed(), n))
}

async fn loopback(bin: &Path, mb: u64, report: &mut String) -> Result<()> {
    eprintln!("loopback: building a {mb} MB blob and pushing it to a loopback registry…");
    let registry = Registry::start().await?;
    let image = Image::build(77, &[mb * MB])?;
    image.push(&registry, "bench/p2p", "v1").await?;
    let blob = image.largest_layer().clone();
    let path = format!("/v2/bench/p2p/blobs/{}", blob.digest);
    let dir = tempfile::Builder::new().prefix("shoal-bench-loopback-").tempdir()?;

    let sched_port = shoal_e2e::free_port();
    let mut scheduler = Proc::spawn(
        "scheduler",
        None,
        bin,
        &["scheduler".into(), "--listen".into(), format!("127.0.0.1:{sched_port}")],
        &[("RUST_LOG", "info".into())],
        &dir.path().join("scheduler.log"),
    )?;
    scheduler.wait_http(None, &format!("http://127.0.0.1:{sched_port}/healthz"), Duration::from_secs(20)).await?;
    let daemon = |id: &str| {
        let mut config = DaemonConfig::for_registry(&registry);
        config.extra_args = vec![
            "--scheduler".into(),
            format!("http://127.0.0.1:{sched_port}"),
            "--peer-listen".into(),
            format!("127.0.0.1:{}", shoal_e2e::free_port()),
            "--advertise-addr".into(),
            "127.0.0.1".into(),
            "--cluster-token".into(),
            TOKEN.into(),
            "--host-id".into(),
            id.to_string(),
        ];
        Daemon::start(config)
    };
    let a = daemon("loop-a").await?;
    let b = daemon("loop-b").await?;
    let client = reqwest::Client::new();
    let a_pid = pid_with_arg(&a.data_dir().display().to_string());
    let b_pid = pid_with_arg(&b.data_dir().display().to_string());
    let cpu = || (cpu_seconds(a_pid), cpu_seconds(b_pid));

    eprintln!("loopback: origin direct, then daemon A (from the origin), then daemon B (from A)…");
    let (direct_t, n) = get_count(&client, &format!("{}{path}", registry.url())).await?;
    ensure!(n == blob.size, "direct: {n} bytes of {}", blob.size);
    let cpu0 = cpu();
    let (a_t, n) = get_count(&client, &format!("{}{path}", a.mirror_url())).await?;
    let cpu1 = cpu();
    ensure!(n == blob.size, "daemon A: {n} bytes of {}", blob.size);
    // A's blob is complete once it is in its store; then B pulls.
    let a_file = a.data_dir().join(format!("blobs/sha256/{}/{}", &blob.hex()[..2], blob.hex()));
    shoal_e2e::wait_until(Duration::from_secs(20), Duration::from_millis(50), || {
        let p = a_file.clone();
        async move { p.is_file() }
    })
    .await;
    tokio::time::sleep(Duration::from_millis(500)).await;
    let b_before = b.metrics().await.unwrap_or_default();
    let cpu2 = cpu();
    let perf = start_perf(&[("a", a_pid), ("b", b_pid)])?;
    let (b_t, n) = get_count(&client, &format!("{}{path}", b.mirror_url())).await?;
    stop_perf(perf);
    let cpu3 = cpu();
    ensure!(n == blob.size, "daemon B: {n} bytes of {}", blob.size);
    tokio::time::sleep(Duration::from_millis(300)).await;
    let b_after = b.metrics().await.unwrap_or_default();
    let delta = |name: &str, labels: &str| {
        metric_value(&b_after, name, labels).unwrap_or(0.0) - metric_value(&b_before, name, labels).unwrap_or(0.0)
    };
    let b_peer = delta("shoal_fetched_bytes_total", "source=\"peer\"");
    let b_origin = delta("shoal_fetched_bytes_total", "source=\"origin\"");
    let a_up = a.metric("shoal_uploaded_bytes_total", "").await.ok().flatten().unwrap_or(0.0);
    // Warm: B again, from its own cache.
    let (w_t, n) = get_count(&client, &format!("{}{path}", b.mirror_url())).await?;
    ensure!(n == blob.size, "daemon B warm: {n} bytes of {}", blob.size);

    let rate = |t: Duration| blob.size as f64 / MB as f64 / t.as_secs_f64();
    let _ = writeln!(report, "## Peer-to-peer rate on loopback: a {:.0} MB blob, no caps, sha256 on\n", blob.size as f64 / MB as f64);
    let _ = writeln!(report, "| pull | time | rate | daemon CPU during it | note |");
    let _ = writeln!(report, "|---|---|---|---|---|");
    let _ = writeln!(report, "| origin direct (docker-registry) | {:.2} s | {:.0} MB/s | | client counts bytes only |", direct_t.as_secs_f64(), rate(direct_t));
    let _ = writeln!(
        report,
        "| daemon A, cold, from the origin | {:.2} s | {:.0} MB/s | A {:.2} s | |",
        a_t.as_secs_f64(),
        rate(a_t),
        cpu1.0 - cpu0.0
    );
    let _ = writeln!(
        report,
        "| **daemon B, cold, from peer A** | {:.2} s | **{:.0} MB/s** | A {:.2} s, B {:.2} s | B fetched {:.1} MB from peers, {:.1} MB from origin; A uploaded {:.1} MB; target ≥ 1000 MB/s |",
        b_t.as_secs_f64(),
        rate(b_t),
        cpu3.0 - cpu2.0,
        cpu3.1 - cpu2.1,
        b_peer / MB as f64,
        b_origin / MB as f64,
        a_up / MB as f64
    );
    let _ = writeln!(report, "| daemon B, warm (its cache) | {:.2} s | {:.0} MB/s | | |", w_t.as_secs_f64(), rate(w_t));
    let _ = writeln!(
        report,
        "\nThis CPU has no SHA-NI (`sha_ni` absent from /proc/cpuinfo): sha256 runs at a few hundred MB/s per core, which bounds \
         any verified transfer; {} cores shared with whatever else runs.\n",
        cores()
    );
    drop(scheduler);
    Ok(())
}

//! Mirror benchmark: a blob (256 MiB) pulled directly from a local origin, cold through a fresh
//! daemon and warm through it, side by side in each round; then the daemon's peak RSS while
//! serving 16 concurrent pulls of it (cold, then warm); optionally the peak RSS of one cold pull of
//! a big blob. Every table is preceded by the machine line (CPU, SHA-NI, one core's sha256 and
//! BLAKE3 rates, measured here) and shows issue 9's target and whether the run met it; a summary
//! table closes the run. Asserts nothing about speed.
//!
//! Run: `./scripts/bench.sh` (builds the release binary and runs
//! `SHOAL_BIN=target/release/shoal cargo bench -p shoal-e2e --bench mirror`). Knobs:
//! - `SHOAL_BENCH_MIB` (256): the blob size.
//! - `SHOAL_BENCH_ROUNDS` (3): rounds of direct / cold / warm (each with a fresh daemon).
//! - `SHOAL_BENCH_BIG_MIB` (0 = skipped): one cold pull of a blob of this size through a fresh
//!   daemon, reporting its peak RSS ("flat for a 4 GiB blob": 4096).
//!
//! Targets (`sha` = one core's measured sha256 rate): cold ≤ max(1.15 × direct, 1.1 × size/sha)
//! on the median; warm ≤ 1.00 × direct in every round; peak RSS ≤ 64 MiB.

#[path = "machine.rs"]
mod machine;
#[path = "summary.rs"]
mod summary;

use std::time::{Duration, Instant};

use anyhow::{ensure, Context, Result};
use futures::StreamExt;
use shoal_e2e::{Blob, Daemon, DaemonConfig, Image, Registry};

use machine::Machine;
use summary::{met, Summary};

const MIB: u64 = 1 << 20;
/// Issue 9: the daemon's peak RSS, however many pulls and however big the blob.
const RSS_TARGET_MIB: f64 = 64.0;

fn env_u64(name: &str, default: u64) -> u64 {
    std::env::var(name).ok().and_then(|v| v.parse().ok()).unwrap_or(default)
}

/// GETs `url` and counts the bytes (no hashing: the client must not be the bottleneck).
async fn pull(client: &reqwest::Client, url: &str) -> Result<(Duration, u64)> {
    let start = Instant::now();
    let resp = client.get(url).send().await?.error_for_status()?;
    let mut body = resp.bytes_stream();
    let mut n = 0u64;
    while let Some(chunk) = body.next().await {
        n += chunk?.len() as u64;
    }
    Ok((start.elapsed(), n))
}

fn median(mut v: Vec<Duration>) -> Duration {
    v.sort();
    v[v.len() / 2]
}

/// Peak resident set (VmHWM) of a process, in MiB.
fn peak_rss_mib(pid: u32) -> Result<f64> {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status"))?;
    let line = status.lines().find(|l| l.starts_with("VmHWM:")).context("no VmHWM")?;
    let kib: f64 = line.split_whitespace().nth(1).context("VmHWM value")?.parse()?;
    Ok(kib / 1024.0)
}

/// MiB/s of `bytes` in `t`.
fn mib_rate(bytes: u64, t: Duration) -> f64 {
    bytes as f64 / MIB as f64 / t.as_secs_f64()
}

/// The blob under test, in a local registry.
struct Origin {
    registry: Registry,
    _image: Image,
    blob: Blob,
    path: String,
}

impl Origin {
    async fn start(mib: u64, repo: &str) -> Result<Self> {
        eprintln!("building a {mib} MiB image and pushing it to a local registry…");
        let registry = Registry::start().await?;
        let image = Image::build(7 + mib, &[mib * MIB])?;
        image.push(&registry, repo, "v1").await?;
        let blob = image.largest_layer().clone();
        let path = format!("/v2/{repo}/blobs/{}", blob.digest);
        Ok(Self { registry, _image: image, blob, path })
    }

    fn direct_url(&self) -> String {
        format!("{}{}", self.registry.url(), self.path)
    }

    async fn daemon(&self) -> Result<(Daemon, String)> {
        let daemon = Daemon::start(DaemonConfig::for_registry(&self.registry)).await?;
        let url = format!("{}{}", daemon.mirror_url(), self.path);
        Ok((daemon, url))
    }
}

/// One round: direct, then cold and warm through a fresh daemon.
struct Round {
    direct: Duration,
    cold: Duration,
    warm: Duration,
}

async fn round(client: &reqwest::Client, origin: &Origin) -> Result<Round> {
    let size = origin.blob.size;
    let (direct, n) = pull(client, &origin.direct_url()).await?;
    ensure!(n == size, "direct pull got {n} bytes");
    let (_daemon, url) = origin.daemon().await?;
    let (cold, n) = pull(client, &url).await?;
    ensure!(n == size, "cold pull got {n} bytes");
    let (warm, n) = pull(client, &url).await?;
    ensure!(n == size, "warm pull got {n} bytes");
    Ok(Round { direct, cold, warm })
}

/// The direct / cold / warm table and its summary rows.
fn report_rounds(machine: &Machine, rounds: &[Round], size: u64, summary: &mut Summary) {
    let mib = size / MIB;
    let d = median(rounds.iter().map(|r| r.direct).collect());
    let c = median(rounds.iter().map(|r| r.cold).collect());
    let w = median(rounds.iter().map(|r| r.warm).collect());
    let hash_floor = 1.1 * size as f64 / machine.sha256_bps;
    let cold_allowed = (1.15 * d.as_secs_f64()).max(hash_floor);
    let cold_target =
        format!("≤ {:.2}× (max of 1.15× and 1.1 × size/sha = {hash_floor:.3} s)", cold_allowed / d.as_secs_f64());
    let cold_ratio = c.as_secs_f64() / d.as_secs_f64();
    let cold_met = c.as_secs_f64() <= cold_allowed;
    let warm_ratios: Vec<f64> = rounds.iter().map(|r| r.warm.as_secs_f64() / r.direct.as_secs_f64()).collect();
    let warm_worst = warm_ratios.iter().copied().fold(0.0, f64::max);
    let warm_each = warm_ratios.iter().map(|r| format!("{r:.2}×")).collect::<Vec<_>>().join(", ");
    let warm_met = warm_worst <= 1.0;

    println!("\n## Mirror benchmark — {} — {mib} MiB blob, median of {} rounds\n", today(), rounds.len());
    println!("{}\n", machine.line());
    println!("| path | time | MiB/s | vs direct | target | met? |");
    println!("|---|---|---|---|---|---|");
    println!("| direct from origin | {:.3} s | {:.0} | 1.00× | | |", d.as_secs_f64(), mib_rate(size, d));
    println!(
        "| cold through daemon | {:.3} s | {:.0} | {cold_ratio:.2}× | {cold_target} | {} |",
        c.as_secs_f64(),
        mib_rate(size, c),
        met(Some(cold_met))
    );
    println!(
        "| warm through daemon | {:.3} s | {:.0} | {:.2}× (worst round {warm_worst:.2}×; rounds {warm_each}) | ≤ 1.00× in every round | {} |",
        w.as_secs_f64(),
        mib_rate(size, w),
        w.as_secs_f64() / d.as_secs_f64(),
        met(Some(warm_met))
    );
    summary.add(
        format!("cold pull through the daemon ÷ direct ({mib} MiB, local origin, median)"),
        format!("{cold_ratio:.2}× ({:.3} s vs {:.3} s)", c.as_secs_f64(), d.as_secs_f64()),
        cold_target,
        Some(cold_met),
    );
    summary.add(
        "warm pull ÷ direct, worst round",
        format!("{warm_worst:.2}× (rounds {warm_each})"),
        "≤ 1.00× in every round".into(),
        Some(warm_met),
    );
}

/// 16 pulls of `url` at once, each checked to be `size` bytes; the wall time.
async fn sixteen(client: &reqwest::Client, url: &str, size: u64) -> Result<Duration> {
    let start = Instant::now();
    for r in futures::future::join_all((0..16).map(|_| pull(client, url))).await {
        ensure!(r?.1 == size, "short body");
    }
    Ok(start.elapsed())
}

/// 16 concurrent pulls through one fresh daemon, cold then warm: the table and its summary row.
async fn concurrent(machine: &Machine, client: &reqwest::Client, origin: &Origin, summary: &mut Summary) -> Result<()> {
    let (daemon, url) = origin.daemon().await?;
    let pid = daemon.pid().context("daemon pid")?;
    let size = origin.blob.size;
    let cold = sixteen(client, &url, size).await.context("16 cold pulls")?;
    let rss_cold = peak_rss_mib(pid)?;
    let warm = sixteen(client, &url, size).await.context("16 warm pulls")?;
    let rss = peak_rss_mib(pid)?;

    let row = |label: &str, t: Duration, rss: f64| {
        println!(
            "| {label} | {:.3} s | {:.0} | {rss:.1} MiB | ≤ {RSS_TARGET_MIB} MiB | {} |",
            t.as_secs_f64(),
            16.0 * mib_rate(size, t),
            met(Some(rss <= RSS_TARGET_MIB))
        )
    };
    println!("\n{}\n", machine.line());
    println!("| 16 concurrent pulls | wall time | aggregate MiB/s | daemon peak RSS | target | met? |");
    println!("|---|---|---|---|---|---|");
    row("cold (one origin download)", cold, rss_cold);
    row("then warm", warm, rss);
    summary.add(
        format!("daemon peak RSS, 16 concurrent pulls of {} MiB (cold, then warm)", size / MIB),
        format!("{rss:.1} MiB"),
        format!("≤ {RSS_TARGET_MIB} MiB"),
        Some(rss <= RSS_TARGET_MIB),
    );
    Ok(())
}

/// With `SHOAL_BENCH_BIG_MIB`: one cold pull of a big blob through a fresh daemon, its peak RSS.
async fn big_blob(machine: &Machine, client: &reqwest::Client, mib: u64, summary: &mut Summary) -> Result<()> {
    let origin = Origin::start(mib, "bench/big").await?;
    let (daemon, url) = origin.daemon().await?;
    let pid = daemon.pid().context("daemon pid")?;
    let (t, n) = pull(client, &url).await?;
    ensure!(n == origin.blob.size, "big cold pull got {n} bytes");
    let rss = peak_rss_mib(pid)?;
    let verdict = met(Some(rss <= RSS_TARGET_MIB));
    println!("\n{}\n", machine.line());
    println!("| one big blob, cold through a fresh daemon | time | MiB/s | daemon peak RSS | target | met? |");
    println!("|---|---|---|---|---|---|");
    println!(
        "| {mib} MiB | {:.2} s | {:.0} | {rss:.1} MiB | ≤ {RSS_TARGET_MIB} MiB (flat) | {verdict} |",
        t.as_secs_f64(),
        mib_rate(n, t)
    );
    summary.add(
        format!("daemon peak RSS, one cold pull of a {mib} MiB blob"),
        format!("{rss:.1} MiB"),
        format!("≤ {RSS_TARGET_MIB} MiB (flat)"),
        Some(rss <= RSS_TARGET_MIB),
    );
    Ok(())
}

fn today() -> String {
    std::process::Command::new("date")
        .args(["-u", "+%Y-%m-%d"])
        .output()
        .map(|o| String::from_utf8_lossy(&o.stdout).trim().to_string())
        .unwrap_or_default()
}

#[tokio::main]
async fn main() -> Result<()> {
    // `cargo bench` passes `--bench`; `cargo test --all-targets` runs this binary without it, and
    // a benchmark is not a test: do nothing then.
    if !std::env::args().any(|a| a == "--bench") {
        println!("benchmark skipped: run it with cargo bench (see the file's header)");
        return Ok(());
    }
    let mib = env_u64("SHOAL_BENCH_MIB", 256);
    let rounds = env_u64("SHOAL_BENCH_ROUNDS", 3).max(1);
    let big_mib = env_u64("SHOAL_BENCH_BIG_MIB", 0);
    let machine = Machine::measure();
    eprintln!("{}", machine.line());
    let mut summary = Summary::default();
    let origin = Origin::start(mib, "bench/blob").await?;
    let client = reqwest::Client::new();

    pull(&client, &origin.direct_url()).await?; // the origin's file into the page cache, as in production
    let mut results = Vec::new();
    for i in 0..rounds {
        let r = round(&client, &origin).await?;
        eprintln!(
            "round {i}: direct {:.2?}  cold {:.2?}  warm {:.2?}  (warm ÷ direct {:.2}×)",
            r.direct,
            r.cold,
            r.warm,
            r.warm.as_secs_f64() / r.direct.as_secs_f64()
        );
        results.push(r);
    }
    report_rounds(&machine, &results, origin.blob.size, &mut summary);
    concurrent(&machine, &client, &origin, &mut summary).await?;
    let origin_gets = origin.registry.blob_get_count(&origin.blob.digest);
    println!(
        "\norigin GETs of the blob during the whole run: {origin_gets} ({} direct + {rounds} cold + 1 concurrent-cold expected)",
        rounds + 1
    );
    if big_mib > 0 {
        big_blob(&machine, &client, big_mib, &mut summary).await?;
    }
    println!("{}", summary.render(&format!("mirror benchmark, {}", today()), &machine));
    Ok(())
}

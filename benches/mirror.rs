//! Mirror benchmark: a 256 MiB blob pulled directly from the origin, cold through the daemon and
//! warm through the daemon, side by side in one run; then the daemon's peak RSS while serving
//! 16 concurrent pulls of it (cold, then warm). Prints a table; asserts nothing about speed.
//!
//! Run: `./scripts/bench.sh` (builds the release binary and runs
//! `SHOAL_BIN=target/release/shoal cargo bench -p shoal-e2e --bench mirror`).
//! `SHOAL_BENCH_MIB` changes the blob size, `SHOAL_BENCH_ROUNDS` the rounds (default 3).

use std::time::{Duration, Instant};

use anyhow::{ensure, Context, Result};
use futures::StreamExt;
use shoal_e2e::{Daemon, DaemonConfig, Image, Registry};

const MIB: u64 = 1 << 20;

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

/// Peak resident set (VmHWM) of a process, in KiB.
fn peak_rss_kib(pid: u32) -> Result<u64> {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status"))?;
    let line = status.lines().find(|l| l.starts_with("VmHWM:")).context("no VmHWM")?;
    Ok(line.split_whitespace().nth(1).context("VmHWM value")?.parse()?)
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
    let size = mib * MIB;
    eprintln!("building a {mib} MiB image and pushing it to a local registry…");
    let registry = Registry::start().await?;
    let image = Image::build(7, &[size])?;
    image.push(&registry, "bench/blob", "v1").await?;
    let blob = image.largest_layer().clone();
    let path = format!("/v2/bench/blob/blobs/{}", blob.digest);
    let client = reqwest::Client::new();
    let direct_url = format!("{}{path}", registry.url());

    let (mut direct, mut cold, mut warm) = (Vec::new(), Vec::new(), Vec::new());
    pull(&client, &direct_url).await?; // the origin's file into the page cache, as in production
    for round in 0..rounds {
        let (d, n) = pull(&client, &direct_url).await?;
        ensure!(n == blob.size, "direct pull got {n} bytes");
        let daemon = Daemon::start(DaemonConfig::for_registry(&registry)).await?;
        let url = format!("{}{path}", daemon.mirror_url());
        let (c, n) = pull(&client, &url).await?;
        ensure!(n == blob.size, "cold pull got {n} bytes");
        let (w, n) = pull(&client, &url).await?;
        ensure!(n == blob.size, "warm pull got {n} bytes");
        eprintln!("round {round}: direct {d:.2?}  cold {c:.2?}  warm {w:.2?}");
        direct.push(d);
        cold.push(c);
        warm.push(w);
    }
    let (d, c, w) = (median(direct), median(cold), median(warm));
    let rate = |t: Duration| size as f64 / MIB as f64 / t.as_secs_f64();

    let daemon = Daemon::start(DaemonConfig::for_registry(&registry)).await?;
    let pid = daemon.pid().context("daemon pid")?;
    let url = format!("{}{path}", daemon.mirror_url());
    let concurrent = |label: &'static str| {
        let (client, url) = (client.clone(), url.clone());
        async move {
            let start = Instant::now();
            let pulls = (0..16).map(|_| pull(&client, &url));
            for r in futures::future::join_all(pulls).await {
                ensure!(r?.1 == blob.size, "{label}: short body");
            }
            Ok::<_, anyhow::Error>(start.elapsed())
        }
    };
    let cold16 = concurrent("cold").await?;
    let rss_cold = peak_rss_kib(pid)?;
    let warm16 = concurrent("warm").await?;
    let rss = peak_rss_kib(pid)?;

    let date = std::process::Command::new("date").arg("-u").arg("+%Y-%m-%d").output()?;
    println!();
    println!(
        "## Mirror benchmark — {} — {mib} MiB blob, median of {rounds} rounds",
        String::from_utf8_lossy(&date.stdout).trim()
    );
    println!();
    println!("| path | time | MiB/s | vs direct | target |");
    println!("|---|---|---|---|---|");
    println!("| direct from origin | {:.3} s | {:.0} | 1.00× | |", d.as_secs_f64(), rate(d));
    println!(
        "| cold through daemon | {:.3} s | {:.0} | {:.2}× | ≤ 1.25× |",
        c.as_secs_f64(),
        rate(c),
        c.as_secs_f64() / d.as_secs_f64()
    );
    println!(
        "| warm through daemon | {:.3} s | {:.0} | {:.2}× | ≤ 1.00× |",
        w.as_secs_f64(),
        rate(w),
        w.as_secs_f64() / d.as_secs_f64()
    );
    println!();
    println!("| 16 concurrent pulls | wall time | aggregate MiB/s | daemon peak RSS | target |");
    println!("|---|---|---|---|---|");
    println!(
        "| cold (one origin download) | {:.3} s | {:.0} | {:.1} MiB | ≤ 100 MiB |",
        cold16.as_secs_f64(),
        16.0 * rate(cold16),
        rss_cold as f64 / 1024.0
    );
    println!(
        "| then warm | {:.3} s | {:.0} | {:.1} MiB | ≤ 100 MiB |",
        warm16.as_secs_f64(),
        16.0 * rate(warm16),
        rss as f64 / 1024.0
    );
    let origin_gets = registry.blob_get_count(&blob.digest);
    println!();
    println!("origin GETs of the blob during the whole run: {origin_gets} ({} direct + {rounds} cold + 1 concurrent-cold expected)", rounds + 1);
    Ok(())
}

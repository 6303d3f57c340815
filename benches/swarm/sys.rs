//! System helpers of the swarm benchmark: store verification, CPU accounting, perf.

use super::*;
/// Checks every daemon's complete blob files exist with the right size and (unless
/// SHOAL_BENCH_VERIFY=0) re-hashes them with sha256sum. Returns a one-line summary.
pub(crate) async fn verify_stores(dir: &Path, nodes: usize, blobs: &[Blob]) -> String {
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
                let bad = files
                    .iter()
                    .filter(|(p, hex)| {
                        !text.lines().any(|l| l.starts_with(hex.as_str()) && l.ends_with(&p.display().to_string()))
                    })
                    .count();
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

/// (busy, total) jiffies of the whole machine so far, from /proc/stat.
pub(crate) fn machine_cpu() -> (f64, f64) {
    let stat = std::fs::read_to_string("/proc/stat").unwrap_or_default();
    let f: Vec<f64> =
        stat.lines().next().unwrap_or("").split_whitespace().skip(1).filter_map(|v| v.parse().ok()).collect();
    let total: f64 = f.iter().take(8).sum();
    let idle = f.get(3).copied().unwrap_or(0.0) + f.get(4).copied().unwrap_or(0.0);
    (total - idle, total)
}

/// Percentage of the machine's CPU busy between two [`machine_cpu`] snapshots.
pub(crate) fn busy_pct(a: (f64, f64), b: (f64, f64)) -> f64 {
    let total = b.1 - a.1;
    if total <= 0.0 {
        0.0
    } else {
        100.0 * (b.0 - a.0) / total
    }
}

/// The pid of the process whose command line contains `needle` (e.g. a daemon's data dir).
pub(crate) fn pid_with_arg(needle: &str) -> Option<u32> {
    let me = std::process::id();
    std::fs::read_dir("/proc").ok()?.flatten().find_map(|e| {
        let pid: u32 = e.file_name().to_str()?.parse().ok()?;
        let cmdline = std::fs::read(e.path().join("cmdline")).ok()?;
        let cmdline = String::from_utf8_lossy(&cmdline).replace('\0', " ");
        (pid != me && !cmdline.starts_with("setpriv") && cmdline.contains(needle)).then_some(pid)
    })
}

/// User + system CPU seconds a process has used so far (0 if it is gone).
pub(crate) fn cpu_seconds(pid: Option<u32>) -> f64 {
    let Some(pid) = pid else { return 0.0 };
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).unwrap_or_default();
    // Fields after the parenthesised command name: state is field 3, utime 14, stime 15.
    let rest = stat.rsplit_once(')').map_or("", |(_, r)| r);
    let f: Vec<&str> = rest.split_whitespace().collect();
    let ticks: f64 =
        f.get(11).and_then(|v| v.parse().ok()).unwrap_or(0.0) + f.get(12).and_then(|v| v.parse().ok()).unwrap_or(0.0);
    ticks / clk_tck()
}

pub(crate) fn clk_tck() -> f64 {
    sh(std::process::Command::new("getconf").arg("CLK_TCK")).ok().and_then(|s| s.trim().parse().ok()).unwrap_or(100.0)
}

/// With `SHOAL_BENCH_PERF=DIR`: `perf record -g` of each (name, pid) into `DIR/NAME.data`.
pub(crate) fn start_perf(targets: &[(&str, Option<u32>)]) -> Result<Vec<std::process::Child>> {
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

pub(crate) fn stop_perf(children: Vec<std::process::Child>) {
    for mut child in children {
        let _ = std::process::Command::new("kill").args(["-INT", &child.id().to_string()]).status();
        let _ = child.wait();
    }
}

//! The swarm benchmark's fleet for run A: the scheduler and one daemon per node namespace, each
//! started and waited for until it answers its health check; and the iperf3 check of the cap.

use super::*;

/// The scheduler in its namespace, answering `/healthz`.
pub(crate) async fn start_scheduler(bin: &Path, dir: &Path) -> Result<Proc> {
    let sched_log = dir.join("scheduler.log");
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
    Ok(scheduler)
}

/// One daemon per node namespace (with `SHOAL_BENCH_DAEMON_ARGS` appended), all answering `/healthz`.
pub(crate) async fn start_daemons(bin: &Path, dir: &Path, nodes: usize) -> Result<Vec<Proc>> {
    let extra: Vec<String> =
        std::env::var("SHOAL_BENCH_DAEMON_ARGS").unwrap_or_default().split_whitespace().map(str::to_string).collect();
    let mut daemons = Vec::new();
    for i in 0..nodes {
        let data = dir.join(format!("node{i}"));
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
    Ok(daemons)
}

/// The scheduler's decision counts, as a sentence for the report.
pub(crate) fn scheduler_decisions(nodes: usize, blobs: usize) -> String {
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
    format!(
        "scheduler decisions: {} back-to-source, {} parents, {} wait (for {} blobs × {nodes} nodes)",
        decision("back_to_source"),
        decision("parents"),
        decision("wait"),
        blobs
    )
}

/// What iperf3 measures across the cap (origin ↔ node 0), as a sentence for the report.
pub(crate) async fn cap_check(dir: &Path, rate: &str, rate_bits: f64) -> String {
    if env_on("SHOAL_BENCH_IPERF") && which("iperf3") {
        eprintln!("swarm: checking the cap with iperf3 (origin <-> node 0)…");
        match iperf(dir).await {
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
    }
}

/// iperf3 from the origin to node 0 and back: what the cap really gives (both tbf's on the path).
pub(crate) async fn iperf(dir: &Path) -> Result<(f64, f64)> {
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

pub(crate) fn which(tool: &str) -> bool {
    sh(std::process::Command::new("sh").args(["-c", &format!("command -v {tool}")])).is_ok()
}

//! The raw peer-to-peer rate on loopback: daemon A from the origin, then daemon B from A, with
//! both daemons' CPU-seconds per GB during B's pull, each next to issue 9's target (which depends
//! on one core's measured sha256 rate). No caps, no namespaces, no root.

use super::*;

/// What the loopback part measured: the blob's size, then each pull's time.
struct Loopback {
    size: u64,
    direct: Duration,
    /// Daemon A's cold pull from the origin and A's CPU-seconds during it.
    from_origin: (Duration, f64),
    peer: PeerPull,
    /// B's second pull, from its own cache.
    warm: Duration,
}

/// What B's pull from peer A measured.
struct PeerPull {
    size: u64,
    time: Duration,
    /// CPU-seconds of parent A and child B during B's pull.
    cpu: (f64, f64),
    /// Bytes A uploaded, B received from peers, and B fetched from the origin.
    uploaded: f64,
    received: f64,
    from_origin: f64,
}

/// GETs `url` counting bytes (no hashing); returns (time, bytes).
pub(crate) async fn get_count(client: &reqwest::Client, url: &str) -> Result<(Duration, u64)> {
    let start = Instant::now();
    let mut resp = client.get(url).send().await?.error_for_status()?;
    let mut n = 0u64;
    while let Some(chunk) = resp.chunk().await? {
        n += chunk.len() as u64;
    }
    Ok((start.elapsed(), n))
}

/// The loopback part: measures, then appends its section to `report` and its rows to `summary`.
pub(crate) async fn loopback(
    bin: &Path,
    mb: u64,
    machine: &Machine,
    report: &mut String,
    summary: &mut Summary,
) -> Result<()> {
    measure(bin, mb).await?.report(machine, report, summary);
    Ok(())
}

/// Origin direct, daemon A cold from the origin, daemon B cold from A, B warm.
async fn measure(bin: &Path, mb: u64) -> Result<Loopback> {
    eprintln!("loopback: building a {mb} MB blob and pushing it to a loopback registry…");
    let registry = Registry::start().await?;
    let image = Image::build(77, &[mb * MB])?;
    image.push(&registry, "bench/p2p", "v1").await?;
    let blob = image.largest_layer().clone();
    let path = format!("/v2/bench/p2p/blobs/{}", blob.digest);
    let dir = tempfile::Builder::new().prefix("shoal-bench-loopback-").tempdir()?;

    let (sched_port, sched_admin) = (shoal_e2e::free_port(), shoal_e2e::free_port());
    let mut scheduler = Proc::spawn(
        "scheduler",
        None,
        bin,
        &[
            "scheduler".into(),
            "--listen".into(),
            format!("127.0.0.1:{sched_port}"),
            "--admin-listen".into(),
            format!("127.0.0.1:{sched_admin}"),
            "--cluster-token".into(),
            TOKEN.into(),
        ],
        &[("RUST_LOG", "info".into())],
        &dir.path().join("scheduler.log"),
    )?;
    scheduler.wait_http(None, &format!("http://127.0.0.1:{sched_admin}/healthz"), Duration::from_secs(20)).await?;
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

    let peer = PeerPull {
        size: blob.size,
        time: b_t,
        cpu: (cpu3.0 - cpu2.0, cpu3.1 - cpu2.1),
        uploaded: a_up,
        received: b_peer,
        from_origin: b_origin,
    };
    drop(scheduler);
    Ok(Loopback { size: blob.size, direct: direct_t, from_origin: (a_t, cpu1.0 - cpu0.0), peer, warm: w_t })
}

impl Loopback {
    /// The pulls table, then the CPU table.
    fn report(&self, machine: &Machine, report: &mut String, summary: &mut Summary) {
        let mb = self.size as f64 / MB as f64;
        let rate = |t: Duration| mb / t.as_secs_f64();
        let peer = &self.peer;
        let (a_t, a_cpu) = self.from_origin;
        let _ = writeln!(report, "## Peer-to-peer rate on loopback: a {mb:.0} MB blob, no caps, sha256 on\n");
        let _ = writeln!(report, "{}\n", machine.line());
        let _ = writeln!(report, "| pull | time | rate | daemon CPU during it | target | met? | note |");
        let _ = writeln!(report, "|---|---|---|---|---|---|---|");
        let _ = writeln!(
            report,
            "| origin direct (docker-registry) | {:.2} s | {:.0} MB/s | | | | client counts bytes only |",
            self.direct.as_secs_f64(),
            rate(self.direct)
        );
        let _ = writeln!(
            report,
            "| daemon A, cold, from the origin | {:.2} s | {:.0} MB/s | A {a_cpu:.2} s | | | |",
            a_t.as_secs_f64(),
            rate(a_t)
        );
        let (rate_target, rate_met) = peer.rate_target(machine);
        let _ = writeln!(
            report,
            "| **daemon B, cold, from peer A** | {:.2} s | **{:.0} MB/s** | A {:.2} s, B {:.2} s | {rate_target} | {} | B fetched {:.1} MB from peers, {:.1} MB from origin; A uploaded {:.1} MB |",
            peer.time.as_secs_f64(),
            rate(peer.time),
            peer.cpu.0,
            peer.cpu.1,
            met(Some(rate_met)),
            peer.received / MB as f64,
            peer.from_origin / MB as f64,
            peer.uploaded / MB as f64
        );
        let _ = writeln!(
            report,
            "| daemon B, warm (its cache) | {:.2} s | {:.0} MB/s | | | | |\n",
            self.warm.as_secs_f64(),
            rate(self.warm)
        );
        summary.add(
            format!("peer → peer on loopback, {mb:.0} MB, verified (B cold from A)"),
            format!("{:.0} MB/s", rate(peer.time)),
            rate_target,
            Some(rate_met),
        );
        peer.cpu_table(machine, report, summary);
    }
}

impl PeerPull {
    /// Issue 9: ≥ 1000 MB/s, or ≥ 0.8 × sha on a CPU whose core hashes sha256 below 1.25 GB/s.
    fn rate_target(&self, machine: &Machine) -> (String, bool) {
        let sha = machine.sha256_bps;
        let (bound, text) = if sha < 1.25e9 {
            (0.8 * sha, format!("≥ 0.8 × sha = {:.0} MB/s", 0.8 * sha / 1e6))
        } else {
            (1e9, "≥ 1000 MB/s".to_string())
        };
        (text, self.size as f64 / self.time.as_secs_f64() >= bound)
    }

    /// CPU-seconds per GB (10^9 bytes) of parent and child during the pull, with their targets.
    fn cpu_table(&self, machine: &Machine, report: &mut String, summary: &mut Summary) {
        let child_bound = 1e9 / machine.sha256_bps + 0.4;
        let rows = [
            (
                "parent CPU per GB uploaded (daemon A during B's pull)",
                self.cpu.0,
                self.uploaded,
                0.5,
                "≤ 0.5 s".to_string(),
            ),
            (
                "child CPU per GB received from a peer (daemon B during its pull)",
                self.cpu.1,
                self.received,
                child_bound,
                format!("≤ 1 GB/sha + 0.4 s = {child_bound:.2} s"),
            ),
        ];
        let _ = writeln!(report, "{}\n", machine.line());
        let _ = writeln!(report, "| CPU during B's pull | CPU-seconds | bytes | CPU-seconds per GB | target | met? |");
        let _ = writeln!(report, "|---|---|---|---|---|---|");
        for (name, cpu, bytes, bound, target) in rows {
            // No bytes counted (the counter is missing, or B got nothing from A): no figure.
            let per_gb = (bytes > 0.0).then(|| cpu / (bytes / 1e9));
            let measured = per_gb.map_or("no bytes counted".into(), |v| format!("{v:.2} s"));
            let verdict = per_gb.map(|v| v <= bound);
            let _ = writeln!(
                report,
                "| {name} | {cpu:.2} s | {:.1} MB | {measured} | {target} | {} |",
                bytes / MB as f64,
                met(verdict)
            );
            summary.add(name, measured, target, verdict);
        }
        let _ = writeln!(report);
    }
}

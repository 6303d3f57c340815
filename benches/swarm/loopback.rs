//! The raw peer-to-peer rate on loopback: daemon A from the origin, then daemon B from A.

use super::*;
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

pub(crate) async fn loopback(bin: &Path, mb: u64, report: &mut String) -> Result<()> {
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

    let rate = |t: Duration| blob.size as f64 / MB as f64 / t.as_secs_f64();
    let _ = writeln!(
        report,
        "## Peer-to-peer rate on loopback: a {:.0} MB blob, no caps, sha256 on\n",
        blob.size as f64 / MB as f64
    );
    let _ = writeln!(report, "| pull | time | rate | daemon CPU during it | note |");
    let _ = writeln!(report, "|---|---|---|---|---|");
    let _ = writeln!(
        report,
        "| origin direct (docker-registry) | {:.2} s | {:.0} MB/s | | client counts bytes only |",
        direct_t.as_secs_f64(),
        rate(direct_t)
    );
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

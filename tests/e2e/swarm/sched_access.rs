//! h. Only cluster members talk to the scheduler. A client without the token — plain gRPC, or
//! TLS with a wrong token, or bytes that are not TLS at all — is refused at the connection and
//! changes nothing (no host, no task, no stats). A member cannot take over another host's id,
//! and its "from origin" piece digests count only when the scheduler sent it back to source.

use shoal_core::PieceLayout;
use shoal_e2e::{member_client, plain_client, PeerStream, CALL_LIMIT, CLUSTER_TOKEN};
use shoal_proto::scheduler::{
    peer_event::Event, scheduler_event, HostAnnouncement, PieceFinished, Register, StatsReply, StatsRequest,
};
use tokio::io::{AsyncReadExt, AsyncWriteExt};

use super::*;

fn announcement(host_id: &str, addr: &str) -> HostAnnouncement {
    HostAnnouncement {
        host_id: host_id.into(),
        peer_addr: addr.into(),
        site: "default".into(),
        upload_limit: 0,
        load: 0,
    }
}

fn register(task: &str, host: &str, layout: PieceLayout) -> Event {
    let have = vec![0u8; (layout.count() as usize).div_ceil(8)];
    Event::Register(Register {
        task_id: task.into(),
        host_id: host.into(),
        size: layout.size,
        piece_size: layout.piece_size,
        have,
    })
}

async fn stats(url: &str) -> Result<StatsReply> {
    let mut member = member_client(url, CLUSTER_TOKEN.as_bytes())?;
    let reply = tokio::time::timeout(CALL_LIMIT, member.stats(StatsRequest { task_id: String::new() })).await??;
    Ok(reply.into_inner())
}

/// Waits until the scheduler knows every daemon of the swarm.
async fn wait_announced(url: &str, swarm: &Swarm) -> Result<()> {
    let hosts = swarm.len() as u32;
    wait_for("every daemon announced", Duration::from_secs(15), swarm, || async move {
        stats(url).await.is_ok_and(|s| s.hosts == hosts)
    })
    .await
}

/// Every call a stranger can make, on one client; returns what each got.
async fn try_everything(
    client: &mut shoal_proto::scheduler::scheduler_client::SchedulerClient<tonic::transport::Channel>,
    task: &Blob,
) -> Vec<String> {
    let layout = PieceLayout::for_size(task.size);
    let mut out = Vec::new();
    let announced = tokio::time::timeout(CALL_LIMIT, client.announce_host(announcement("d0", "192.0.2.66:1"))).await;
    out.push(format!("announce as d0: {}", outcome(announced.map(|r| r.map(|_| ())))));
    let fresh = tokio::time::timeout(CALL_LIMIT, client.announce_host(announcement("rogue", "192.0.2.66:2"))).await;
    out.push(format!("announce a new host: {}", outcome(fresh.map(|r| r.map(|_| ())))));
    let stream = PeerStream::open(client, register(&task.digest, "rogue", layout)).await;
    out.push(format!("register a complete seed: {}", outcome(Ok(stream.map(|_| ())))));
    let stats = tokio::time::timeout(CALL_LIMIT, client.stats(StatsRequest { task_id: String::new() })).await;
    out.push(format!("stats: {}", outcome(stats.map(|r| r.map(|_| ())))));
    out
}

fn outcome(r: Result<Result<(), tonic::Status>, tokio::time::error::Elapsed>) -> String {
    match r {
        Ok(Ok(())) => "ACCEPTED".into(),
        Ok(Err(status)) => format!("refused ({:?})", status.code()),
        Err(_) => "timed out".into(),
    }
}

/// Strangers are refused at the connection and change nothing; the swarm keeps working.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_client_without_the_token_is_refused_and_changes_nothing() -> Result<()> {
    require_tools();
    let _shared = SERIAL.read().await;
    let origin = Origin::start(800, &[12 * MB], "e2e/rogue").await?;
    let scheduler = Scheduler::start().await?;
    let swarm = Swarm::start(2, Swarm::config(&origin.registry, &[scheduler.url()]), |_, c| c).await?;
    let _logs = KeepLogs::new("swarm-rogue", &swarm, Some(&scheduler));
    let url = scheduler.url();
    wait_announced(&url, &swarm).await?;
    let layer = origin.image.layers[0].clone();

    let mut results = Vec::new();
    for (who, mut client) in [
        ("plain gRPC", plain_client(&url)?),
        ("TLS, wrong token", member_client(&url, b"not-the-cluster-token-at-all")?),
    ] {
        for line in try_everything(&mut client, &layer).await {
            results.push(format!("{who}: {line}"));
        }
    }
    // Not TLS at all: the connection is closed, at the latest when the handshake bound ends.
    let mut raw = tokio::net::TcpStream::connect(url.trim_start_matches("http://")).await?;
    raw.write_all(b"GET /healthz HTTP/1.1\r\nHost: x\r\n\r\n").await?;
    let started = Instant::now();
    // At most a TLS alert comes back, never an HTTP answer; then the connection closes.
    let mut answer = Vec::new();
    let got = tokio::time::timeout(Duration::from_secs(10), raw.read_to_end(&mut answer)).await;
    let closed = matches!(got, Ok(Ok(_)) | Ok(Err(_))) && !answer.starts_with(b"HTTP");
    results.push(format!("plain HTTP: closed {closed} after {:.1}s", started.elapsed().as_secs_f64()));
    report("rogue", &results.join("\n"));
    ensure!(!results.iter().any(|l| l.contains("ACCEPTED")), "a stranger was served:\n{}", results.join("\n"));
    ensure!(closed, "a plain HTTP request was not closed: {got:?}");

    // 400 half-open connections held by one client do not keep a member out.
    let mut held = Vec::new();
    for _ in 0..400 {
        let mut c = tokio::net::TcpStream::connect(url.trim_start_matches("http://")).await?;
        c.write_all(&[0x16, 0x03, 0x01]).await?; // the first bytes of a TLS record, never finished
        held.push(c);
    }
    let started = Instant::now();
    let served = stats(&url).await;
    let took = started.elapsed();
    report("rogue", &format!("with 400 half-open connections held, a member's stats call took {took:?}"));
    ensure!(served.is_ok() && took < Duration::from_secs(1), "a member was kept out: {served:?} after {took:?}");
    drop(held);

    // Nothing changed: two hosts, no task, and the refusals were counted.
    let after = stats(&url).await?;
    ensure!(after.hosts == 2 && after.tasks.is_empty(), "strangers changed the scheduler: {after:?}");
    let bad = scheduler.metric("shoal_scheduler_refused_total", "kind=\"bad_proof\"").await?.unwrap_or(0.0);
    let handshake = scheduler.metric("shoal_scheduler_refused_total", "kind=\"handshake\"").await?.unwrap_or(0.0);
    report("rogue", &format!("refused connections: bad_proof {bad}, handshake {handshake}"));
    ensure!(bad >= 1.0, "no bad proof counted");

    // The swarm still works: d1 gets the layer from d0.
    expect_pulls(vec![blob_get(&origin, &swarm.daemons[0], &layer, "d0")], PULL_LIMIT, &swarm).await?;
    expect_pulls(vec![blob_get(&origin, &swarm.daemons[1], &layer, "d1")], PULL_LIMIT, &swarm).await?;
    let from_peers = swarm.daemons[1].counter("shoal_fetched_bytes_total", "source=\"peer\"").await?;
    report("rogue", &format!("after the attack d1 fetched {from_peers} B of the {} B layer from peers", layer.size));
    ensure!(from_peers > 0.0, "d1 fetched nothing from d0 after the attack");
    Ok(())
}

/// A member (it holds the token) that was not sent back to source cannot set piece digests,
/// and cannot take over another host's id.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_member_cannot_take_over_a_host_or_forge_origin_digests() -> Result<()> {
    require_tools();
    let _shared = SERIAL.read().await;
    let origin = Origin::start(801, &[24 * MB], "e2e/forge").await?;
    let scheduler = Scheduler::start().await?;
    // d0 fetches from the origin slowly, so the forger reports while d0's pieces are pending.
    let config = Swarm::config(&origin.registry, &[scheduler.url()]);
    let swarm = Swarm::start(2, config, |i, c| if i == 0 { c.origin_limit("4MiB/s") } else { c }).await?;
    let _logs = KeepLogs::new("swarm-forge", &swarm, Some(&scheduler));
    let url = scheduler.url();
    wait_announced(&url, &swarm).await?;
    let layer = origin.image.layers[0].clone();
    let layout = PieceLayout::for_size(layer.size);

    let mut mallory = member_client(&url, CLUSTER_TOKEN.as_bytes())?;
    let takeover = tokio::time::timeout(CALL_LIMIT, mallory.announce_host(announcement("d0", "127.0.0.1:9"))).await?;
    report("forge", &format!("a member announcing d0's id: {:?}", takeover.as_ref().map_err(|s| s.code())));
    ensure!(takeover.is_err(), "a second session took over d0's host id");
    let stolen = PeerStream::open(&mut mallory, register(&layer.digest, "d0", layout)).await;
    ensure!(stolen.is_err(), "a second session registered as d0");

    // d0 starts pulling (it is sent back to source); then the forger registers and claims
    // every piece "from the origin" with made-up digests, and leaves.
    let d0_pull = blob_get(&origin, &swarm.daemons[0], &layer, "d0");
    wait_for("d0 back to source", Duration::from_secs(15), &swarm, || {
        let url = url.clone();
        async move { stats(&url).await.is_ok_and(|s| s.tasks.iter().any(|t| t.back_to_source_peers == 1)) }
    })
    .await?;
    tokio::time::timeout(CALL_LIMIT, mallory.announce_host(announcement("mallory", "127.0.0.1:9"))).await??;
    let mut stream = PeerStream::open(&mut mallory, register(&layer.digest, "mallory", layout))
        .await
        .map_err(|s| anyhow::anyhow!("mallory's register: {s}"))?;
    let first = stream.next().await?;
    let sent_back = matches!(first.and_then(|e| e.event), Some(scheduler_event::Event::BackToSource(_)));
    ensure!(!sent_back, "the forger was sent back to source; the test needs d0 to be");
    for index in 0..layout.count() {
        let blake3 = shoal_core::PieceDigest::of(format!("forged {index}").as_bytes()).as_bytes().to_vec();
        stream.send(Event::PieceFinished(PieceFinished { index, blake3, from_origin: true }))?;
    }
    tokio::time::sleep(Duration::from_millis(300)).await;
    drop(stream);

    expect_pulls(vec![d0_pull], PULL_LIMIT, &swarm).await?;
    expect_pulls(vec![blob_get(&origin, &swarm.daemons[1], &layer, "d1")], PULL_LIMIT, &swarm).await?;
    let d1 = &swarm.daemons[1];
    let from_peers = d1.counter("shoal_fetched_bytes_total", "source=\"peer\"").await?;
    let mismatches = d1.counter("shoal_piece_failures_total", "reason=\"digest_mismatch\"").await?;
    report(
        "forge",
        &format!(
            "{} forged digests sent; d1 then fetched {from_peers} B from peers with {mismatches} digest mismatches",
            layout.count()
        ),
    );
    ensure!(
        from_peers >= layer.size as f64 / 2.0 && mismatches == 0.0,
        "forged digests were trusted: d1 fetched {from_peers} B from peers, {mismatches} mismatches\n{}",
        swarm.traffic_table().await
    );
    Ok(())
}

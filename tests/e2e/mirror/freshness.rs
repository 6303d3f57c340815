//! Tags that move and origins that go away.

use super::*;

/// d. A tag moved at the origin is seen through the mirror at once.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_moved_tag_is_seen_at_once() -> Result<()> {
    require_tools();
    let registry = Registry::start().await?;
    let (a, b) = (Image::build(40, &[MB])?, Image::build(41, &[MB])?);
    a.push(&registry, "e2e/moving", "v1").await?;
    let daemon = Daemon::start(DaemonConfig::for_registry(&registry)).await?;
    let client = http();
    let mirror = daemon.mirror_url();
    let get_tag = || manifest_request(&client, Method::GET, &mirror, "e2e/moving", "v1").send();

    let first = get_tag().await?;
    ensure!(first.status() == StatusCode::OK, "GET tag: {}", first.status());
    ensure!(sha256_hex(&first.bytes().await?) == a.manifest_digest, "first GET is not image A");

    b.push(&registry, "e2e/moving", "v1").await?;
    let second = get_tag().await?;
    ensure!(second.status() == StatusCode::OK, "GET moved tag: {}", second.status());
    let header = second.headers().get("docker-content-digest").map(|v| v.to_str().unwrap_or("").to_owned());
    let body = second.bytes().await?;
    ensure!(
        sha256_hex(&body) == b.manifest_digest,
        "stale tag: got {}, want B {}",
        sha256_hex(&body),
        b.manifest_digest
    );
    if let Some(header) = header {
        ensure!(header == b.manifest_digest, "Docker-Content-Digest {header} != {}", b.manifest_digest);
    }
    let head = manifest_request(&client, Method::HEAD, &mirror, "e2e/moving", "v1").send().await?;
    ensure!(head.status() == StatusCode::OK, "HEAD tag: {}", head.status());
    let head_digest = head.headers().get("docker-content-digest").context("HEAD without Docker-Content-Digest")?;
    ensure!(head_digest.to_str()? == b.manifest_digest, "HEAD says {head_digest:?}");
    // The old manifest is still there by digest.
    let old = manifest_request(&client, Method::GET, &mirror, "e2e/moving", &a.manifest_digest).send().await?;
    ensure!(old.status() == StatusCode::OK, "GET A by digest: {}", old.status());
    ensure!(old.bytes().await?.as_ref() == a.manifest.as_slice(), "A by digest has other bytes");
    Ok(())
}

/// f. Origin down: a tag fetched before is served from the cache; a blob never fetched fails fast
/// with 502/504 and an OCI error body.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn origin_down_serves_cached_tags_and_fails_fast_for_the_rest() -> Result<()> {
    require_tools();
    let mut registry = Registry::start().await?;
    let image = Image::build(60, &[3 * MB, 2 * MB])?;
    image.push(&registry, "e2e/offline", "v1").await?;
    let daemon = Daemon::start(DaemonConfig::for_registry(&registry)).await?;
    let client = http();
    let mirror = daemon.mirror_url();
    let cached = manifest_request(&client, Method::GET, &mirror, "e2e/offline", "v1").send().await?;
    ensure!(cached.status() == StatusCode::OK, "GET tag: {}", cached.status());
    ensure!(cached.bytes().await?.as_ref() == image.manifest.as_slice(), "wrong manifest");
    let fetched = &image.layers[0];
    let fetched_url = format!("{mirror}/v2/e2e/offline/blobs/{}", fetched.digest);
    ensure!(get_blob(&client, &fetched_url).await? == (fetched.digest.clone(), fetched.size), "wrong blob");

    registry.stop();
    let started = Instant::now();
    let stale = manifest_request(&client, Method::GET, &mirror, "e2e/offline", "v1").send().await?;
    ensure!(stale.status() == StatusCode::OK, "cached tag with origin down: {}", stale.status());
    // DESIGN: a stale tag mapping is served "with a warning header".
    ensure!(
        stale.headers().contains_key("warning"),
        "stale tag served without a Warning header: {:?}",
        stale.headers()
    );
    ensure!(stale.bytes().await?.as_ref() == image.manifest.as_slice(), "wrong stale manifest");
    ensure!(started.elapsed() < Duration::from_secs(15), "stale tag took {:?}", started.elapsed());

    let got = with_log(get_blob(&client, &fetched_url).await, "cached blob, origin down", &daemon)?;
    ensure!(got == (fetched.digest.clone(), fetched.size), "cached blob: {got:?}");

    let started = Instant::now();
    let missing = format!("{mirror}/v2/e2e/offline/blobs/{}", image.layers[1].digest);
    let response = client.get(&missing).timeout(Duration::from_secs(30)).send().await?;
    let elapsed = started.elapsed();
    let status = response.status().as_u16();
    ensure!(matches!(status, 502 | 504), "uncached blob with origin down: {status}");
    expect_oci_error(response, status).await?;
    ensure!(elapsed < Duration::from_secs(15), "the error took {elapsed:?}");
    Ok(())
}

/// f'. An origin that hangs (connections accepted, nothing ever answered, as when a link is cut
/// without a reset): the cached tag is still served and an uncached blob fails with 502/504 and an
/// OCI error body, each within 15 s.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_hanging_origin_is_given_up_on_within_bounds() -> Result<()> {
    require_tools();
    let registry = Registry::start().await?;
    let image = Image::build(65, &[3 * MB, 2 * MB])?;
    image.push(&registry, "e2e/hang", "v1").await?;
    let link = SlowProxy::start(&registry.host(), 1 << 30).await?;
    let config = DaemonConfig::default().registry(&registry.host(), &link.url());
    let daemon = Daemon::start(config).await?;
    let client = http();
    let mirror = daemon.mirror_url();
    let tag = || manifest_request(&client, Method::GET, &mirror, "e2e/hang", "v1").send();
    ensure!(tag().await?.status() == StatusCode::OK, "GET tag with the origin up");

    link.blackhole();
    let started = Instant::now();
    let stale = tag().await?;
    let elapsed = started.elapsed();
    ensure!(stale.status() == StatusCode::OK, "cached tag, hanging origin: {}", stale.status());
    ensure!(stale.bytes().await?.as_ref() == image.manifest.as_slice(), "wrong stale manifest");
    ensure!(elapsed < Duration::from_secs(15), "the stale tag took {elapsed:?}");

    let started = Instant::now();
    let url = format!("{mirror}/v2/e2e/hang/blobs/{}", image.layers[1].digest);
    let response = client.get(&url).timeout(Duration::from_secs(60)).send().await;
    let elapsed = started.elapsed();
    let response = response.with_context(|| format!("no answer for an uncached blob in {elapsed:?}"))?;
    let status = response.status().as_u16();
    ensure!(matches!(status, 502 | 504), "uncached blob, hanging origin: {status}");
    expect_oci_error(response, status).await?;
    ensure!(elapsed < Duration::from_secs(15), "the error took {elapsed:?}");
    Ok(())
}

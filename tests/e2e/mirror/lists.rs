//! Tags lists and referrers through the mirror: relayed to the origin (issue 10 §4), so
//! `skopeo list-tags` works through Shoal, pages follow `Link` headers that stay on the mirror,
//! and the origin's answers (including its refusals) reach the client as the origin gave them.

use super::*;

/// `skopeo list-tags` through the mirror lists every tag; `n` and `last` reach the origin and its
/// answer comes back unchanged; a bad query is refused before it reaches the origin; a
/// referrers request gets the origin's own answer.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn tags_lists_and_referrers_are_relayed_to_the_origin() -> Result<()> {
    require_tools();
    let registry = Registry::start().await?;
    let image = Image::build(41, &[MB])?;
    for tag in ["v1", "v2", "v3"] {
        image.push(&registry, "e2e/tags", tag).await?;
    }
    let daemon = Daemon::start(DaemonConfig::for_registry(&registry)).await?;

    let mut cmd = tokio::process::Command::new("skopeo");
    cmd.args(["list-tags", "--tls-verify=false"]).arg(format!("docker://{}/e2e/tags", daemon.mirror_host()));
    let out = with_log(shoal_e2e::run(&mut cmd, Duration::from_secs(60)).await, "skopeo list-tags", &daemon)?;
    let listed: serde_json::Value = serde_json::from_slice(&out.stdout)?;
    let tags: Vec<&str> = listed["Tags"].as_array().context("no Tags")?.iter().filter_map(|t| t.as_str()).collect();
    ensure!(tags == ["v1", "v2", "v3"], "skopeo list-tags through the mirror: {listed}");

    // The page parameters go to the origin as given and its answer comes back as it gave it
    // (distribution 2.8 answers every tag whatever `n` says; the rewriting of a `Link` to the
    // next page is unit-tested in the daemon's `mirror::lists`).
    let client = http();
    let marked = registry.mark();
    let query = "/v2/e2e/tags/tags/list?n=1&last=v1";
    let direct = client.get(format!("{}{query}", registry.url())).send().await?;
    ensure!(direct.status() == StatusCode::OK, "direct: {}", direct.status());
    let direct: serde_json::Value = direct.json().await?;
    let relayed = client.get(format!("{}{query}", daemon.mirror_url())).send().await?;
    ensure!(relayed.status() == StatusCode::OK, "through the mirror: {}", relayed.status());
    let relayed: serde_json::Value = relayed.json().await?;
    ensure!(relayed == direct, "through the mirror {relayed}, direct {direct}");
    let asked = |what: &'static str| {
        let lines = registry.access_log().into_iter().skip(marked);
        lines.filter(|l| l.path.contains(what)).count()
    };
    wait_until(Duration::from_secs(3), Duration::from_millis(100), || async { asked("tags/list?n=1&last=v1") >= 2 })
        .await;
    ensure!(asked("tags/list?n=1&last=v1") == 2, "the page parameters did not reach the origin from the mirror");

    let bad = client.get(format!("{}/v2/e2e/tags/tags/list?n=1&evil=%2F..", daemon.mirror_url())).send().await?;
    let codes = expect_oci_error(bad, 400).await?;
    ensure!(codes == ["UNSUPPORTED"], "a bad query: {codes:?}");
    let referrers = format!("/v2/e2e/tags/referrers/{}", image.manifest_digest);
    let direct = client.get(format!("{}{referrers}", registry.url())).send().await?.status();
    let relayed = client.get(format!("{}{referrers}", daemon.mirror_url())).send().await?.status();
    ensure!(relayed == direct, "referrers: the mirror answered {relayed}, the origin {direct}");
    wait_until(Duration::from_secs(3), Duration::from_millis(100), || async { asked("/referrers/") >= 2 }).await;
    ensure!(
        asked("/referrers/") == 2,
        "the origin saw {} referrers requests, want the direct one and the mirror's",
        asked("/referrers/")
    );
    ensure!(asked("evil") == 0, "a refused query reached the origin");
    Ok(())
}

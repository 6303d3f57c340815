//! b. The scheduler's preheat HTTP API: a missing or wrong token is refused (and the cluster
//! token is not a preheat token), bad input gets a clear error, an equal request joins the
//! running job, and the job reports its progress until done.

use super::*;
use reqwest::StatusCode;
use shoal_e2e::Registry;

/// The error code of an error body.
async fn code(resp: reqwest::Response) -> Result<(StatusCode, String)> {
    let status = resp.status();
    let body: serde_json::Value = resp.json().await?;
    Ok((status, body["errors"][0]["code"].as_str().unwrap_or_default().to_owned()))
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_http_api_needs_the_preheat_token_and_joins_a_running_job() -> Result<()> {
    require_tools();
    let registry = Registry::start().await?;
    let image = Image::build(620, &[10 * MB, 6 * MB])?;
    image.push(&registry, "e2e/api", "v1").await?;
    let port = shoal_e2e::free_port();
    let scheduler = scheduler(port).await?;
    // A slow origin link, so that the job is still running when it is asked for again.
    let base = Swarm::config(&registry, &[scheduler.url()]).origin_limit("8MiB/s");
    let swarm = two_sites(base).await?;
    let _logs = KeepLogs::new("preheat-api", &swarm, Some(&scheduler));
    wait_ready(&scheduler, 4).await?;
    let http = reqwest::Client::builder().timeout(Duration::from_secs(10)).build()?;
    let body = serde_json::json!({"image": format!("{}/e2e/api:v1", registry.host())});
    let post = || http.post(format!("{}/preheat", api(port))).json(&body);

    // Refusals: no token, a wrong one, the cluster token, on every route but /health.
    let resp = post().send().await?;
    ensure!(resp.headers().contains_key("www-authenticate"), "401 without a challenge");
    ensure!(code(resp).await? == (StatusCode::UNAUTHORIZED, "UNAUTHORIZED".into()));
    for token in ["wrong-token-0123456789", CLUSTER_TOKEN] {
        ensure!(
            code(post().bearer_auth(token).send().await?).await? == (StatusCode::UNAUTHORIZED, "UNAUTHORIZED".into())
        );
        let notify = http.post(format!("{}/registry/notifications", api(port))).bearer_auth(token).body("{}");
        ensure!(notify.send().await?.status() == StatusCode::UNAUTHORIZED);
        let show = http.get(format!("{}/preheat/1", api(port))).bearer_auth(token);
        ensure!(show.send().await?.status() == StatusCode::UNAUTHORIZED);
    }
    ensure!(http.get(format!("{}/health", api(port))).send().await?.status() == StatusCode::OK);
    ensure!(holdings(&swarm, &image).iter().all(|&n| n == 0), "a refused request fetched something");

    // Bad input.
    let bad =
        |json: serde_json::Value| http.post(format!("{}/preheat", api(port))).bearer_auth(PREHEAT_TOKEN).json(&json);
    for (json, want) in [
        (serde_json::json!({"image": "../etc/passwd"}), "NAME_INVALID"),
        (serde_json::json!({"image": "a/B"}), "NAME_INVALID"),
        (serde_json::json!({"imag": "a/b"}), "BODY_INVALID"),
        (serde_json::json!({"image": "a/b", "platforms": ["linux"]}), "NAME_INVALID"),
        (serde_json::json!({"image": "a/b", "sites": [""]}), "NAME_INVALID"),
    ] {
        let got = code(bad(json.clone()).send().await?).await?;
        ensure!(got == (StatusCode::BAD_REQUEST, want.into()), "{json}: {got:?}");
    }
    // Its own client: the server closes the connection it did not read the whole body of.
    let huge = reqwest::Client::new().post(format!("{}/preheat", api(port))).bearer_auth(PREHEAT_TOKEN);
    let huge = huge.body(vec![b' '; 2 << 20]);
    ensure!(huge.send().await?.status() == StatusCode::PAYLOAD_TOO_LARGE);
    let show = |id: &str| http.get(format!("{}/preheat/{id}", api(port))).bearer_auth(PREHEAT_TOKEN);
    ensure!(show("999").send().await?.status() == StatusCode::NOT_FOUND);
    ensure!(show("x").send().await?.status() == StatusCode::BAD_REQUEST);

    // A job, then the same request while it runs: joined.
    let resp = post().bearer_auth(PREHEAT_TOKEN).send().await?;
    ensure!(resp.status() == StatusCode::ACCEPTED, "{}", resp.status());
    let first: serde_json::Value = resp.json().await?;
    let id = first["id"].as_u64().context("job id")?;
    let resp = post().bearer_auth(PREHEAT_TOKEN).send().await?;
    ensure!(resp.status() == StatusCode::OK);
    let second: serde_json::Value = resp.json().await?;
    ensure!(second["id"] == first["id"] && second["joined"] == true, "not joined: {second:#}");
    let done = wait_job(&http, port, id).await?;
    report("api", &format!("job: {done:#}"));
    let sites = done["sites"].as_array().context("sites")?;
    ensure!(sites.len() == 2, "{done:#}");
    for s in sites {
        let p = &s["progress"];
        ensure!(p["blobs_done"] == p["blobs_total"] && p["blobs_total"] == 3, "{done:#}");
        ensure!(p["bytes_fetched"].as_u64() == Some(image.blobs().iter().map(|b| b.size).sum()), "{done:#}");
    }
    expect_one_per_site(&swarm, &image)?;
    // The scheduler exports the daemons ready for jobs (refreshed every 5 s).
    let four = || async { scheduler.metric("shoal_scheduler_preheat_hosts", "").await.ok().flatten() == Some(4.0) };
    ensure!(
        wait_until(Duration::from_secs(12), Duration::from_millis(250), four).await,
        "shoal_scheduler_preheat_hosts != 4"
    );
    Ok(())
}

//! A daemon killed (kill -9) while it preheats: the scheduler gives its site's part of the job
//! to the other daemon of the site, which finishes it.

use super::*;
use shoal_e2e::Registry;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_killed_daemons_preheat_goes_to_another_daemon_of_its_site() -> Result<()> {
    require_tools();
    let registry = Registry::start().await?;
    let image = Image::build(640, &[10 * MB, 6 * MB])?;
    image.push(&registry, "e2e/failover", "v1").await?;
    let port = shoal_e2e::free_port();
    let scheduler = scheduler(port).await?;
    // A slow origin link: the job runs for seconds, long enough to kill its daemon midway.
    let base = Swarm::config(&registry, &[scheduler.url()]).origin_limit("4MiB/s");
    let mut swarm = two_sites(base).await?;
    let _logs = KeepLogs::new("preheat-failover", &swarm, Some(&scheduler));
    wait_ready(&scheduler, 4).await?;
    let http = reqwest::Client::builder().timeout(Duration::from_secs(10)).build()?;
    let body = serde_json::json!({"image": format!("{}/e2e/failover:v1", registry.host()), "sites": ["east"]});
    let resp = http.post(format!("{}/preheat", api(port))).bearer_auth(PREHEAT_TOKEN).json(&body).send().await?;
    ensure!(resp.status() == reqwest::StatusCode::ACCEPTED, "{}", resp.status());
    let job: serde_json::Value = resp.json().await?;
    let id = job["id"].as_u64().context("job id")?;

    // Wait until the east daemon has fetched something, then kill it.
    let show = || async {
        let resp = http.get(format!("{}/preheat/{id}", api(port))).bearer_auth(PREHEAT_TOKEN).send().await.ok()?;
        resp.json::<serde_json::Value>().await.ok()
    };
    let deadline = tokio::time::Instant::now() + Duration::from_secs(30);
    let mut first = None;
    while tokio::time::Instant::now() < deadline {
        if let Some(job) = show().await {
            let site = &job["sites"][0];
            if site["state"] == "running" && site["progress"]["bytes_total"].as_u64().unwrap_or(0) > 0 {
                first = site["host"].as_str().map(str::to_owned);
                break;
            }
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    let first = first.context("no daemon was fetching within 30 s")?;
    let index: usize = first.trim_start_matches('d').parse()?;
    ensure!(site_of(index) == "east", "{first} is not in site east");
    swarm.daemons[index].kill9();

    let done = wait_job(&http, port, id).await?;
    report("failover", &format!("{first} killed; job: {done:#}"));
    let site = &done["sites"][0];
    let second = site["host"].as_str().context("host")?;
    ensure!(second != first && site_of(second.trim_start_matches('d').parse()?) == "east", "{done:#}");
    let survivor = &swarm.daemons[second.trim_start_matches('d').parse::<usize>()?];
    let held = image.blobs().iter().filter(|b| blob_path(survivor, &b.digest).is_file()).count();
    ensure!(held == image.blobs().len(), "{second} holds {held} of the {} blobs", image.blobs().len());
    let west = holdings(&swarm, &image)[2..].iter().sum::<usize>();
    ensure!(west == 0, "site west was not asked for, yet holds {west} blobs");
    Ok(())
}

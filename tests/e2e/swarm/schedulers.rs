//! Two schedulers, and one of them dies: its tasks move to the live one (rendezvous over the
//! schedulers that answer), so the origin still sends each image about once; when it comes back
//! it owns its tasks again.

use std::path::PathBuf;

use super::*;

/// Layers of each of the three images (the config adds a few hundred bytes).
const LAYERS: [u64; 3] = [20 * MB, 12 * MB, 6 * MB];
/// The bound on what the origin sends per image, in images.
const MAX_ORIGIN_COPIES: f64 = 1.25;
/// How long a daemon may take to notice a scheduler's death or return (bounds the polling only).
const NOTICE_LIMIT: Duration = Duration::from_secs(30);

/// An image of the origin under one tag.
struct Tagged {
    image: Arc<Image>,
    /// `127.0.0.1:PORT/NAME:TAG`.
    reference: String,
}

impl Tagged {
    async fn push(registry: &Registry, name: &str, tag: &str, seed: u64) -> Result<Self> {
        let image = Image::build(seed, &LAYERS)?;
        image.push(registry, name, tag).await?;
        Ok(Self { image: Arc::new(image), reference: format!("{}/{name}:{tag}", registry.host()) })
    }

    fn size(&self) -> u64 {
        self.image.blobs().iter().map(|b| b.size).sum()
    }
}

/// Every daemon of `swarm` pulls `tagged` with skopeo at once; returns the origin's bytes for
/// it as a multiple of its size, and prints the pull.
async fn pull_everywhere(registry: &Registry, swarm: &Swarm, tagged: &Tagged, what: &str) -> Result<f64> {
    let mark = registry.mark();
    let pulls = swarm
        .daemons
        .iter()
        .enumerate()
        .map(|(i, d)| {
            let (host, mirror, reference, image) =
                (registry.host(), d.mirror_host(), tagged.reference.clone(), tagged.image.clone());
            let task = tokio::spawn(async move { Skopeo::pull_verified(&host, &mirror, &reference, &image).await });
            (format!("skopeo via d{i}"), task)
        })
        .collect();
    let took = expect_pulls(pulls, PULL_LIMIT, swarm).await?;
    let copies = registry.image_bytes_served_since(&tagged.image, mark).await as f64 / tagged.size() as f64;
    report("schedulers", &format!("{what}: pulls {}; the origin sent {copies:.2}x the image", secs(&took)));
    Ok(copies)
}

/// The scheduler (index into `urls`) that owns `blob` while every one answers, as the daemons
/// compute it.
fn owner_of(urls: &[String], blob: &Blob) -> Result<usize> {
    let parsed: Vec<String> = urls.iter().map(|u| url::Url::parse(u).map(String::from)).collect::<Result<_, _>>()?;
    let task: shoal_core::Digest = blob.digest.parse()?;
    shoal_core::sched_owner::owner(&parsed, &[], &task).ok_or_else(|| anyhow::anyhow!("no scheduler"))
}

/// Per daemon (by stderr path), how long after the call its log holds one more line with every
/// one of `needles` than at the call (`None`: not within [`NOTICE_LIMIT`]). Polls in the
/// background.
fn notice_times(logs: Vec<PathBuf>, needles: Vec<String>) -> JoinHandle<Vec<Option<Duration>>> {
    let count = move |path: &PathBuf| {
        let text = std::fs::read_to_string(path).unwrap_or_default();
        text.lines().filter(|l| needles.iter().all(|n| l.contains(n.as_str()))).count()
    };
    let before: Vec<usize> = logs.iter().map(&count).collect();
    let started = Instant::now();
    tokio::spawn(async move {
        let mut noticed = vec![None; logs.len()];
        while started.elapsed() < NOTICE_LIMIT && noticed.iter().any(Option::is_none) {
            for (i, path) in logs.iter().enumerate() {
                if noticed[i].is_none() && count(path) > before[i] {
                    noticed[i] = Some(started.elapsed());
                }
            }
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
        noticed
    })
}

fn notice_report(noticed: &[Option<Duration>]) -> String {
    let parts: Vec<String> = noticed
        .iter()
        .enumerate()
        .map(|(i, t)| t.map_or(format!("d{i} never"), |t| format!("d{i} {:.2}s", t.as_secs_f64())))
        .collect();
    parts.join(", ")
}

/// Two schedulers, five daemons configured with both. Image 1 on all five; one scheduler is
/// killed (the owner of image 2's largest layer, so that some of its tasks must move) and image
/// 2 is pulled on all five at once; the scheduler comes back and image 3 is pulled. The origin
/// sends each image at most 1.25 times.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_dead_schedulers_tasks_move_to_the_live_one() -> Result<()> {
    require_tools();
    let _alone = SERIAL.write().await;
    let registry = Registry::start().await?;
    let name = "e2e/schedulers";
    let images = [
        Tagged::push(&registry, name, "v1", 801).await?,
        Tagged::push(&registry, name, "v2", 802).await?,
        Tagged::push(&registry, name, "v3", 803).await?,
    ];
    let mut schedulers = [Scheduler::start().await?, Scheduler::start().await?];
    let urls: Vec<String> = schedulers.iter().map(Scheduler::url).collect();
    let swarm = Swarm::start(5, Swarm::config(&registry, &urls), |_, c| c).await?;
    let mut logs = KeepLogs::new("swarm-schedulers", &swarm, Some(&schedulers[0]));
    logs.add("scheduler1", schedulers[1].stderr_path());
    let stderr: Vec<PathBuf> = swarm.daemons.iter().map(Daemon::stderr_path).collect();

    let first = pull_everywhere(&registry, &swarm, &images[0], "image 1, both schedulers up").await?;
    ensure!(first <= MAX_ORIGIN_COPIES, "image 1 cost {first:.2}x at the origin\n{}", swarm.traffic_table().await);

    let victim = owner_of(&urls, images[1].image.largest_layer())?;
    let victim_url = format!("{}/", urls[victim]);
    schedulers[victim].kill9();
    let dead = notice_times(stderr.clone(), vec!["scheduler dead".into(), victim_url.clone()]);
    let second = pull_everywhere(&registry, &swarm, &images[1], &format!("image 2, scheduler {victim} killed")).await?;
    let dead = dead.await?;
    report("schedulers", &format!("noticed scheduler {victim} dead after: {}", notice_report(&dead)));
    let traffic = swarm.traffic_table().await;
    ensure!(second <= MAX_ORIGIN_COPIES, "with a scheduler dead image 2 cost {second:.2}x at the origin\n{traffic}");

    let back = notice_times(stderr, vec!["scheduler live again".into(), victim_url]);
    schedulers[victim].restart().await?;
    let back = back.await?;
    report(
        "schedulers",
        &format!("noticed scheduler {victim} live again after (its start-up included): {}", notice_report(&back)),
    );
    ensure!(back.iter().all(Option::is_some), "not every daemon noticed the scheduler's return\n{}", swarm.logs());
    let third = pull_everywhere(&registry, &swarm, &images[2], "image 3, scheduler back").await?;
    let traffic = swarm.traffic_table().await;
    ensure!(
        third <= MAX_ORIGIN_COPIES,
        "after the scheduler's return image 3 cost {third:.2}x at the origin\n{traffic}"
    );
    // The returned scheduler took back the tasks it owns by hash (layers: a blob under one piece
    // is fetched from the origin without a task).
    let tasks = schedulers[victim].task_report(&swarm.daemons[0]).await?;
    for blob in &images[2].image.layers {
        if owner_of(&urls, blob)? == victim {
            ensure!(tasks.contains(&blob.digest[..19]), "scheduler {victim} lacks its task {}:\n{tasks}", blob.digest);
        }
    }
    report("schedulers", &format!("scheduler {victim} after image 3:\n{tasks}{traffic}"));
    Ok(())
}

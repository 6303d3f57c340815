//! A background sampler of the swarm's downloads for failure messages: once a second, every
//! daemon's `/status` (per running download: pieces held, MB from the origin and from peers,
//! parents) and the scheduler's task table (peers done, piece digests known).

use super::*;

/// A background sampler of every daemon's `/status` (running downloads: pieces held, bytes from
/// the origin and from peers, parents), once a second, for failure messages: `stop()` returns
/// the timeline.
pub struct StatusTimeline {
    stop: Arc<std::sync::atomic::AtomicBool>,
    task: JoinHandle<String>,
}

impl StatusTimeline {
    /// Samples every daemon of `swarm`, and `scheduler`'s task table (piece digests known, peers
    /// done) through `shoal status`.
    pub fn start(swarm: &Swarm, scheduler: &Scheduler) -> Self {
        let urls: Vec<String> = swarm.daemons.iter().map(|d| format!("{}/status", d.admin_url())).collect();
        // `shoal status` needs a daemon to talk to: the last one (tests kill d0, never it).
        let last = swarm.daemons.last().expect("a swarm has daemons");
        let admin = last.admin_url().trim_start_matches("http://").to_string();
        let scheduler_url = scheduler.url();
        let stop = Arc::new(std::sync::atomic::AtomicBool::new(false));
        let flag = stop.clone();
        let task = tokio::spawn(async move {
            let client = reqwest::Client::builder().timeout(Duration::from_secs(5)).build().expect("reqwest client");
            let (started, mut out) = (Instant::now(), String::new());
            while !flag.load(std::sync::atomic::Ordering::Relaxed) {
                let mut line = format!("t={:5.1}s", started.elapsed().as_secs_f64());
                for (i, url) in urls.iter().enumerate() {
                    let tasks: serde_json::Value = match client.get(url).send().await {
                        Ok(r) => r.json().await.unwrap_or_default(),
                        Err(_) => serde_json::Value::Null,
                    };
                    for t in tasks.as_array().into_iter().flatten() {
                        let mb = |k: &str| t[k].as_f64().unwrap_or(0.0) / MB as f64;
                        let digest = t["digest"].as_str().unwrap_or("?");
                        line.push_str(&format!(
                            " | d{i} {} {}/{} o={:.0} p={:.0} par={}",
                            &digest[7.min(digest.len())..11.min(digest.len())],
                            t["have"],
                            t["pieces"],
                            mb("origin_bytes"),
                            mb("peer_bytes"),
                            t["parents"]
                        ));
                    }
                }
                line.push_str(&scheduler_tasks(&admin, &scheduler_url).await);
                out.push_str(&line);
                out.push('\n');
                tokio::time::sleep(Duration::from_secs(1)).await;
            }
            out
        });
        Self { stop, task }
    }

    pub async fn stop(self) -> String {
        self.stop.store(true, std::sync::atomic::Ordering::Relaxed);
        self.task.await.unwrap_or_default()
    }
}

/// ` | S <task> done=N/P digests=K/T` per task of `shoal status --scheduler`.
async fn scheduler_tasks(admin: &str, scheduler: &str) -> String {
    let mut cmd = tokio::process::Command::new(Daemon::bin_path());
    cmd.args(["status", "--admin", admin, "--scheduler", scheduler]);
    let Ok(out) = shoal_e2e::run(&mut cmd, Duration::from_secs(5)).await else {
        return " | S ?".into();
    };
    let mut line = String::new();
    for task in String::from_utf8_lossy(&out.stdout).lines().filter(|l| l.contains(" digests ")) {
        // "  sha256:2288e1c42e77   20.0 MiB peers    6 done    6 from-origin  0 digests 21/21"
        let words: Vec<&str> = task.split_whitespace().collect();
        let after = |key: &str| words.iter().position(|w| *w == key).and_then(|i| words.get(i + 1)).copied();
        let id = words.first().map_or("?", |w| &w[7.min(w.len())..11.min(w.len())]);
        line.push_str(&format!(
            " | S {id} done={}/{} digests={}",
            after("done").unwrap_or("?"),
            after("peers").unwrap_or("?"),
            after("digests").unwrap_or("?")
        ));
    }
    line
}

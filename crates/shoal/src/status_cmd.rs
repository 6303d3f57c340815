//! `shoal status`: a daemon's running downloads (sources, rates) from its admin listener, and
//! with `--scheduler` the scheduler's view of every task.

use anyhow::{Context, Result};
use clap::Args;
use shoal_core::size::format_size;
use shoal_daemon::api::TaskStatus;

/// Flags of `shoal status`.
#[derive(Args, Debug)]
pub struct StatusArgs {
    /// The daemon's admin address.
    #[arg(long, default_value = "127.0.0.1:65003", value_name = "ADDR")]
    admin: String,
    /// Also show a scheduler's tasks (needs the cluster token).
    #[arg(long, value_name = "URL")]
    scheduler: Option<String>,
    /// The cluster token, to prove membership to the scheduler.
    #[arg(long, value_name = "TOKEN", env = "SHOAL_CLUSTER_TOKEN", hide_env_values = true)]
    cluster_token: Option<String>,
    /// A file holding the cluster token.
    #[arg(long, value_name = "FILE", env = "SHOAL_CLUSTER_TOKEN_FILE")]
    cluster_token_file: Option<std::path::PathBuf>,
}

/// `shoal status`.
pub fn run(args: StatusArgs) -> Result<()> {
    let rt = tokio::runtime::Builder::new_current_thread().enable_all().build()?;
    rt.block_on(async {
        let url = format!("http://{}/status", args.admin);
        let tasks: Vec<TaskStatus> = reqwest::get(&url)
            .await
            .with_context(|| format!("daemon admin at {} unreachable", args.admin))?
            .json()
            .await?;
        println!("{}", table(&tasks));
        if let Some(s) = &args.scheduler {
            let token = shoal_daemon::config::load_token(
                args.cluster_token.as_deref(),
                args.cluster_token_file.as_deref(),
            )?
            .context(
                "--scheduler needs the cluster token (--cluster-token, SHOAL_CLUSTER_TOKEN or --cluster-token-file)",
            )?;
            scheduler(s, token.into()).await?;
        }
        Ok(())
    })
}

fn table(tasks: &[TaskStatus]) -> String {
    if tasks.is_empty() {
        return "no downloads running".into();
    }
    let mut out = format!(
        "{:<19} {:>10} {:>7} {:>10} {:>10} {:>7} {:>12}\n",
        "BLOB", "SIZE", "PIECES", "ORIGIN", "PEERS", "PARENTS", "RATE"
    );
    for t in tasks {
        out.push_str(&format!(
            "{:<19} {:>10} {:>7} {:>10} {:>10} {:>7} {:>10}/s\n",
            &t.digest[..t.digest.len().min(19)],
            format_size(t.size),
            format!("{}/{}", t.have, t.pieces),
            format_size(t.origin_bytes),
            format_size(t.peer_bytes),
            t.parents,
            format_size(t.rate as u64)
        ));
    }
    out
}

async fn scheduler(url: &str, token: std::sync::Arc<[u8]>) -> Result<()> {
    let parsed = url::Url::parse(url).with_context(|| format!("--scheduler {url:?}"))?;
    let channel = shoal_daemon::api::sched_connect::channel(&parsed, token, std::time::Duration::from_secs(5))
        .map_err(|e| anyhow::anyhow!("scheduler {url}: {e}"))?;
    let mut client = shoal_proto::scheduler::scheduler_client::SchedulerClient::new(channel);
    let reply = client
        .stats(shoal_proto::scheduler::StatsRequest { task_id: String::new() })
        .await
        .with_context(|| format!("scheduler {url}"))?
        .into_inner();
    println!("scheduler {url}: {} hosts, {} tasks", reply.hosts, reply.tasks.len());
    for t in reply.tasks {
        println!(
            "  {:<19} {:>10} peers {:>4} done {:>4} from-origin {:>2} digests {}/{}",
            &t.task_id[..t.task_id.len().min(19)],
            format_size(t.size),
            t.peers,
            t.done_peers,
            t.back_to_source_peers,
            t.known_digests,
            t.pieces
        );
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn renders_tasks() {
        let t = TaskStatus {
            digest: shoal_core::Digest::of(b"x").to_string(),
            size: 3 << 20,
            pieces: 3,
            have: 2,
            elapsed_secs: 1.0,
            origin_bytes: 1 << 20,
            peer_bytes: 1 << 20,
            parents: 2,
            rate: 2.0 * (1 << 20) as f64,
        };
        let s = table(&[t]);
        assert!(s.contains("2/3") && s.contains("2.0 MiB/s"), "{s}");
        assert_eq!(table(&[]), "no downloads running");
    }
}

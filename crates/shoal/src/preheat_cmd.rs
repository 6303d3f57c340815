//! `shoal preheat IMAGE`: asks a scheduler to have one daemon per site fetch every blob of an
//! image before a rollout, and follows the job with a progress bar until it is done (or
//! returns at once with `--no-wait`). The scheduler decides who fetches; this only asks and
//! shows. Asking again for an image being preheated joins the running job.

use std::time::Duration;

use anyhow::{bail, Context, Result};
use clap::Args;
use indicatif::{ProgressBar, ProgressStyle};
use shoal_core::size::format_size;
use shoal_proto::scheduler as pb;
use shoal_proto::scheduler::scheduler_client::SchedulerClient;

/// How often the job's status is asked for.
const POLL: Duration = Duration::from_millis(500);
/// How long the scheduler may stay unreachable while a job is followed.
const UNREACHABLE_FOR: Duration = Duration::from_secs(30);

/// Flags of `shoal preheat`.
#[derive(Args, Debug)]
pub struct PreheatArgs {
    /// `[registry/]name[:tag|@sha256:<hex>]`; the registry as the daemons know it.
    image: String,
    /// `os/architecture[/variant]` to take from the image's index (repeatable); default: every
    /// platform in it.
    #[arg(long = "platform", value_name = "OS/ARCH")]
    platforms: Vec<String>,
    /// A site to preheat (repeatable); default: every site with a connected daemon.
    #[arg(long = "site", value_name = "NAME")]
    sites: Vec<String>,
    /// The scheduler.
    #[arg(long, default_value = "http://127.0.0.1:65000", value_name = "URL")]
    scheduler: String,
    /// The cluster token, to prove membership to the scheduler.
    #[arg(long, value_name = "TOKEN", env = "SHOAL_CLUSTER_TOKEN", hide_env_values = true)]
    cluster_token: Option<String>,
    /// A file holding the cluster token.
    #[arg(long, value_name = "FILE", env = "SHOAL_CLUSTER_TOKEN_FILE")]
    cluster_token_file: Option<std::path::PathBuf>,
    /// Return once the scheduler accepted the job (print its id) instead of following it.
    #[arg(long)]
    no_wait: bool,
}

/// `shoal preheat`.
pub fn run(args: PreheatArgs) -> Result<()> {
    shoal_core::preheat::Request::parse(&args.image, &args.platforms, &args.sites)?;
    let token = shoal_daemon::config::load_token(args.cluster_token.as_deref(), args.cluster_token_file.as_deref())?
        .context(
            "shoal preheat needs the cluster token (--cluster-token, SHOAL_CLUSTER_TOKEN or --cluster-token-file)",
        )?;
    let rt = tokio::runtime::Builder::new_current_thread().enable_all().build()?;
    rt.block_on(preheat(&args, token.into()))
}

async fn preheat(args: &PreheatArgs, token: std::sync::Arc<[u8]>) -> Result<()> {
    let url = url::Url::parse(&args.scheduler).with_context(|| format!("--scheduler {:?}", args.scheduler))?;
    let channel = shoal_daemon::api::sched_connect::channel(&url, token, Duration::from_secs(5))
        .map_err(|e| anyhow::anyhow!("scheduler {url}: {e}"))?;
    let mut client = SchedulerClient::new(channel);
    let request =
        pb::PreheatRequest { image: args.image.clone(), platforms: args.platforms.clone(), sites: args.sites.clone() };
    let status = client.preheat(request).await.map_err(|s| anyhow::anyhow!("scheduler {url}: {}", s.message()))?;
    let status = status.into_inner();
    let how = if status.joined { "joined the running" } else { "started" };
    println!("preheat job {} {how} for {} on {} site(s)", status.id, status.image, status.sites.len());
    if args.no_wait {
        return Ok(());
    }
    let last = follow(&mut client, status).await?;
    summary(&last)
}

/// Polls the job until it is finished, drawing its progress.
async fn follow(
    client: &mut SchedulerClient<tonic::transport::Channel>,
    mut status: pb::PreheatStatus,
) -> Result<pb::PreheatStatus> {
    let bar = ProgressBar::new(0);
    bar.set_style(ProgressStyle::with_template("{bar:40} {bytes}/{total_bytes} {bytes_per_sec} {msg}")?);
    let mut unreachable_since: Option<tokio::time::Instant> = None;
    loop {
        let (done, total) = status
            .sites
            .iter()
            .filter_map(|s| s.progress)
            .fold((0, 0), |(d, t), p| (d + p.bytes_done, t + p.bytes_total));
        bar.set_length(total);
        bar.set_position(done);
        bar.set_message(sites_line(&status));
        if finished(status.state) {
            bar.finish_and_clear();
            return Ok(status);
        }
        tokio::time::sleep(POLL).await;
        match client.get_preheat(pb::PreheatQuery { id: status.id }).await {
            Ok(s) => {
                status = s.into_inner();
                unreachable_since = None;
            }
            Err(e) if e.code() == tonic::Code::NotFound => bail!("preheat job {}: {}", status.id, e.message()),
            Err(e) => {
                let since = *unreachable_since.get_or_insert_with(tokio::time::Instant::now);
                if since.elapsed() > UNREACHABLE_FOR {
                    bail!(
                        "scheduler unreachable for {UNREACHABLE_FOR:?} while following job {}: {}",
                        status.id,
                        e.message()
                    );
                }
            }
        }
    }
}

fn finished(state: i32) -> bool {
    matches!(pb::PreheatState::try_from(state), Ok(pb::PreheatState::Done | pb::PreheatState::Failed))
}

fn state_name(state: i32) -> &'static str {
    match pb::PreheatState::try_from(state) {
        Ok(pb::PreheatState::Waiting) => "waiting",
        Ok(pb::PreheatState::Running) => "running",
        Ok(pb::PreheatState::Done) => "done",
        Ok(pb::PreheatState::Failed) => "failed",
        _ => "unknown",
    }
}

/// `east: d1 running 2/5`, for every site.
fn sites_line(status: &pb::PreheatStatus) -> String {
    let parts: Vec<String> = status
        .sites
        .iter()
        .map(|s| {
            let p = s.progress.unwrap_or_default();
            format!("{}: {} {} {}/{}", s.site, s.host_id, state_name(s.state), p.blobs_done, p.blobs_total)
        })
        .collect();
    parts.join(", ")
}

/// Prints one line per site; an error if the job failed.
fn summary(status: &pb::PreheatStatus) -> Result<()> {
    let mut fetched = 0;
    for s in &status.sites {
        let p = s.progress.unwrap_or_default();
        fetched += p.bytes_fetched;
        let error = if s.error.is_empty() { String::new() } else { format!(" ({})", s.error) };
        println!(
            "  site {}: {} on {}, {} blob(s), {}, fetched {} bytes{error}",
            s.site,
            state_name(s.state),
            if s.host_id.is_empty() { "no host" } else { &s.host_id },
            p.blobs_done,
            format_size(p.bytes_done),
            p.bytes_fetched,
        );
    }
    if pb::PreheatState::try_from(status.state) != Ok(pb::PreheatState::Done) {
        bail!("preheat job {} of {} failed", status.id, status.image);
    }
    println!(
        "preheat job {} done: {} on {} site(s), fetched {fetched} bytes",
        status.id,
        status.image,
        status.sites.len()
    );
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn site(name: &str, state: pb::PreheatState, fetched: u64, error: &str) -> pb::PreheatSite {
        let progress = pb::PreheatProgress {
            blobs_done: 2,
            blobs_total: 3,
            bytes_done: 10,
            bytes_total: 20,
            bytes_fetched: fetched,
        };
        pb::PreheatSite {
            site: name.into(),
            host_id: "d1".into(),
            state: state as i32,
            progress: Some(progress),
            error: error.into(),
        }
    }

    #[test]
    fn shows_sites_and_fails_a_failed_job() {
        let mut s = pb::PreheatStatus {
            id: 7,
            image: "a/b:v1".into(),
            state: pb::PreheatState::Running as i32,
            sites: vec![
                site("east", pb::PreheatState::Running, 0, ""),
                site("west", pb::PreheatState::Failed, 0, "boom"),
            ],
            joined: false,
            platforms: vec![],
        };
        assert_eq!(sites_line(&s), "east: d1 running 2/3, west: d1 failed 2/3");
        assert!(!finished(s.state));
        s.state = pb::PreheatState::Failed as i32;
        assert!(finished(s.state));
        assert!(summary(&s).unwrap_err().to_string().contains("failed"));
        s.state = pb::PreheatState::Done as i32;
        assert!(summary(&s).is_ok());
    }
}

//! The `shoal` binary: `daemon` (the node daemon), `up` (the one-command local demo),
//! `config` (mirror configuration for containerd, dockerd and podman), and the client commands
//! (`fetch`, `status`, `import`, `cache`).

mod cache_cmd;
mod client_config;
mod daemon_args;
mod fetch_cmd;
mod import_archive;
mod import_cmd;
mod import_layout;
mod preheat_cmd;
mod scheduler_cmd;
mod status_cmd;

use anyhow::Result;
use clap::{Parser, Subcommand};

/// Peer-to-peer container image distribution: a registry mirror on every node.
#[derive(Parser)]
#[command(name = "shoal", version, about)]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand)]
enum Command {
    /// Run the node daemon: a pull-through registry mirror with a verified blob cache.
    Daemon(daemon_args::DaemonArgs),
    /// Run the scheduler: tells daemons whom to fetch pieces from (soft state, no database).
    Scheduler(scheduler_cmd::SchedulerArgs),
    /// Run a scheduler and a daemon on embedded defaults (data in ./shoal-data) and print how to use it.
    Up(daemon_args::UpArgs),
    /// Print (or --write) the mirror configuration of containerd, dockerd or podman.
    Config(client_config::ConfigArgs),
    /// Download an image or a blob through a daemon, with a progress bar, verifying every byte.
    Fetch(fetch_cmd::FetchArgs),
    /// Show a daemon's downloads (sources, rates) and optionally a scheduler's tasks.
    Status(status_cmd::StatusArgs),
    /// Import an image archive (docker save, OCI layout; tar or tar.gz) into a daemon's cache.
    Import(import_cmd::ImportArgs),
    /// Show and manage a daemon's cache: ls, rm, pin.
    Cache(cache_cmd::CacheArgs),
    /// Have one daemon per site fetch every blob of an image, before a rollout (via the scheduler).
    Preheat(preheat_cmd::PreheatArgs),
}

fn main() -> Result<()> {
    let cli = Cli::parse();
    tracing_subscriber::fmt()
        .with_env_filter(tracing_subscriber::EnvFilter::try_from_default_env().unwrap_or_else(|_| "info".into()))
        .with_writer(std::io::stderr)
        .init();
    match cli.command {
        Command::Daemon(args) => daemon_args::run_daemon(args),
        Command::Scheduler(args) => scheduler_cmd::run(args),
        Command::Up(args) => daemon_args::run_up(args),
        Command::Config(args) => client_config::run(args),
        Command::Fetch(args) => fetch_cmd::run(args),
        Command::Status(args) => status_cmd::run(args),
        Command::Import(args) => import_cmd::run(args),
        Command::Cache(args) => cache_cmd::run(args),
        Command::Preheat(args) => preheat_cmd::run(args),
    }
}

//! The `shoal` binary: `daemon` (the node daemon), `up` (the one-command local demo) and
//! `config` (mirror configuration for containerd, dockerd and podman).

mod client_config;
mod daemon_args;

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
    /// Run a daemon on embedded defaults (data in ./shoal-data) and print how to use it.
    Up(daemon_args::UpArgs),
    /// Print (or --write) the mirror configuration of containerd, dockerd or podman.
    Config(client_config::ConfigArgs),
}

fn main() -> Result<()> {
    let cli = Cli::parse();
    tracing_subscriber::fmt()
        .with_env_filter(
            tracing_subscriber::EnvFilter::try_from_default_env().unwrap_or_else(|_| "info".into()),
        )
        .with_writer(std::io::stderr)
        .init();
    match cli.command {
        Command::Daemon(args) => daemon_args::run_daemon(args),
        Command::Up(args) => daemon_args::run_up(args),
        Command::Config(args) => client_config::run(args),
    }
}

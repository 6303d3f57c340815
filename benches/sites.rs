//! Sites benchmark (issue 10 §1): two sites of four nodes, a fast LAN inside each site, each site
//! reaching the origin and the scheduler only through its own WAN link capped at W (both ways).
//!
//! Part A: all eight nodes pull one image of S bytes at once through their daemons (scheduler,
//! DHT on). Measured: bytes into and out of each site over its WAN link (router counters, every
//! header included), origin bytes, each node's pull time against S ÷ W, every stored blob's
//! sha256. Targets: WAN bytes ≤ 1.05× S per site, every node within 1.2× S ÷ W.
//!
//! Part B (the site cut off): node 4 (site 1) pulls a second image, then site 1's WAN link goes
//! down (origin and scheduler unreachable) and the other nodes of site 1 pull that image and
//! the first one again. Measured: each pull's outcome and time (target: every pull succeeds,
//! none waits more than a few seconds for the dead link).
//!
//! As a benchmark it asserts nothing about speed; it fails only if the setup fails. Run as root
//! (network namespaces `shoalb-*`, all removed on exit): `./scripts/bench-sites.sh`, i.e.
//! `SHOAL_BIN=target/release/shoal cargo test --release -p shoal-e2e --test sites -- --bench`.
//! Without `--bench` it is the end-to-end test `sites` (`cargo test -p shoal-e2e --test sites`,
//! part of `./scripts/test.sh`):
//! a 40 MB image, and the bytes checked (WAN ≤ 1.05× per site, every stored blob correct, every
//! cut-off pull served).
//!
//! Knobs: `SHOAL_BENCH_WAN` (`50mbit`), `SHOAL_BENCH_LAN` (`1gbit`), `SHOAL_BENCH_MB` (48: S in
//! MB, in 16 MiB layers), `SHOAL_BENCH_KEEP` (0; 1 keeps logs and data, the path is printed).

#[path = "swarm/clients.rs"]
#[allow(dead_code)]
mod clients;
#[path = "machine.rs"]
mod machine;
#[path = "swarm/netns.rs"]
#[allow(dead_code)]
mod netns;
#[path = "swarm/origin.rs"]
#[allow(dead_code)]
mod origin;
#[path = "swarm/procs.rs"]
#[allow(dead_code)]
mod procs;
#[path = "sites/run.rs"]
mod run;
#[path = "summary.rs"]
mod summary;
#[path = "sites/tags.rs"]
mod tags;
#[path = "sites/topo.rs"]
mod topo;

use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use anyhow::{bail, ensure, Context, Result};
use shoal_e2e::{AccessLogLine, Blob, Daemon, Image};

use procs::Proc;
pub use topo::{node_ns, ORIGIN};

const MB: u64 = 1_000_000;
const MIB: u64 = 1 << 20;
const REPO: &str = "bench/sites";
const TAG: &str = "v1";
const TOKEN: &str = "0123456789abcdef0123";
const REGISTRY_PORT: u16 = 5000;
const SCHED_PORT: u16 = 65000;
const MIRROR: &str = "127.0.0.1:5001";
const ADMIN: &str = "127.0.0.1:5003";
const PEER_PORT: u16 = 65002;
const DHT_PORT: u16 = 65004;
const MANIFEST_ACCEPT: &str = "Accept: application/vnd.oci.image.manifest.v1+json";
const SITES: usize = 2;
const PER_SITE: usize = 4;

fn env_u64(name: &str, default: u64) -> u64 {
    std::env::var(name).ok().and_then(|v| v.trim().parse().ok()).unwrap_or(default)
}

fn env_str(name: &str, default: &str) -> String {
    std::env::var(name).ok().filter(|v| !v.trim().is_empty()).unwrap_or_else(|| default.into())
}

#[tokio::main]
async fn main() -> Result<()> {
    // The same file is the `sites` test (`cargo test -p shoal-e2e --test sites`): without
    // `--bench` it runs the smaller check with its assertions.
    let bench = std::env::args().any(|a| a == "--bench");
    let mut term = tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate())?;
    let result = tokio::select! {
        r = async { if bench { run::run().await } else { run::check().await } } => r,
        _ = tokio::signal::ctrl_c() => Err(anyhow::anyhow!("interrupted")),
        _ = term.recv() => Err(anyhow::anyhow!("terminated")),
    };
    netns::cleanup_stale();
    result
}

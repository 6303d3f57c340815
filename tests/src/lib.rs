//! End-to-end test harness for Shoal.
//!
//! Everything here drives real processes on 127.0.0.1 only:
//! - [`Registry`]: the CNCF distribution registry (`docker-registry serve`), the origin, whose
//!   access log tells how many times each blob was served;
//! - [`Image`]: a synthetic multi-layer OCI image built offline from a seed, pushed with skopeo;
//! - [`Daemon`]: the `shoal daemon` binary, with kill -9 and restart;
//! - [`Scheduler`]: the `shoal scheduler` binary, with kill -9 and restart on the same port;
//! - [`Swarm`]: N daemons sharing a scheduler (QUIC peer listeners on loopback, one cluster token);
//! - [`Skopeo`], [`Podman`], [`Containerd`]: real clients pulling through the daemon as a mirror;
//! - [`AclFront`]: an origin that lets only named users read their repositories, switchable to
//!   answer 503, to be slow or to be gone;
//! - [`SlowProxy`]: a rate-limited link to the origin that can also turn into a black hole;
//! - [`Tmpfs`]: a small file system for a data dir that fills up;
//! - [`rogue`]: a QUIC client that does the peer TLS handshake but never proves the token.
//!
//! Every process is killed and every temp dir removed on drop (long-running children also get
//! SIGKILL if the test process dies, through `setpriv --pdeathsig`); every wait is bounded.
//!
//! Running: `./scripts/test.sh` installs the Debian packages the tests drive (docker-registry,
//! skopeo, podman, containerd, openssl), builds `shoal` and runs the whole workspace's tests. By
//! hand: `cargo build --bin shoal && cargo test -p shoal-e2e`. The daemon under test is `SHOAL_BIN`
//! if set, else `target/debug/shoal` of this workspace (it is not rebuilt by `cargo test`).

mod acl;
mod clients;
mod containerd;
mod daemon;
mod hash;
mod image;
mod oci;
mod proxy;
mod registry;
pub mod rogue;
mod sched_clients;
mod scheduler;
mod swarm;
mod tmpfs;
mod util;

pub use acl::{AclFront, Mode as AclMode, User as AclUser};
pub use clients::{registries_conf, Podman, Skopeo};
pub use containerd::Containerd;
pub use daemon::{metric_value, Daemon, DaemonConfig};
pub use hash::{sha256_body, sha256_file, StreamHasher};
pub use image::{Blob, Image};
pub use oci::{expect_oci_error, manifest_request, oci_error_codes, raw_request, RawResponse, MANIFEST_TYPES};
pub use proxy::SlowProxy;
pub use registry::{AccessLogLine, Registry};
pub use sched_clients::{member_client, plain_client, PeerStream, CALL_LIMIT};
pub use scheduler::Scheduler;
pub use swarm::{strip_ansi, KeepLogs, Swarm, CLUSTER_TOKEN};
pub use tmpfs::Tmpfs;
pub use util::{free_port, free_udp_port, run, sha256_hex, tail, wait_until, workspace_root};

/// Tools the end-to-end tests need on PATH.
pub const REQUIRED_TOOLS: &[&str] = &["docker-registry", "skopeo", "podman", "containerd", "ctr", "openssl"];

/// The first required tool that is missing from PATH, if any.
pub fn missing_tool() -> Option<&'static str> {
    REQUIRED_TOOLS.iter().copied().find(|t| util::which(t).is_none())
}

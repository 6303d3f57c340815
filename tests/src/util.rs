//! Small helpers: ports, bounded waits, hashing, running commands with a time limit.

use std::future::Future;
use std::path::{Path, PathBuf};
use std::process::Output;
use std::time::{Duration, Instant};

use anyhow::{bail, Context, Result};
use sha2::{Digest, Sha256};

/// A free TCP port on 127.0.0.1 (bind to port 0, read it back, release it). Never the same port
/// twice in one test process, so processes started at once do not race for one port.
pub fn free_port() -> u16 {
    loop {
        let listener = std::net::TcpListener::bind("127.0.0.1:0").expect("bind 127.0.0.1:0");
        let port = listener.local_addr().expect("local_addr").port();
        if first_hand_out(port) {
            return port;
        }
    }
}

/// Records `port` as handed out; false if it already was.
fn first_hand_out(port: u16) -> bool {
    static HANDED_OUT: std::sync::Mutex<std::collections::BTreeSet<u16>> =
        std::sync::Mutex::new(std::collections::BTreeSet::new());
    HANDED_OUT.lock().unwrap_or_else(|e| e.into_inner()).insert(port)
}

/// Polls `check` every `every` until it returns true or `limit` has passed. Returns whether it
/// became true.
pub async fn wait_until<F, Fut>(limit: Duration, every: Duration, mut check: F) -> bool
where
    F: FnMut() -> Fut,
    Fut: Future<Output = bool>,
{
    let deadline = Instant::now() + limit;
    loop {
        if check().await {
            return true;
        }
        if Instant::now() >= deadline {
            return false;
        }
        tokio::time::sleep(every).await;
    }
}

/// `sha256:<hex>` of a (small) byte slice, in process.
pub fn sha256_hex(data: &[u8]) -> String {
    format!("sha256:{}", hex::encode(Sha256::digest(data)))
}

/// The last `max` bytes of a (log) file, lossily decoded; empty if unreadable.
pub fn tail(path: &Path, max: usize) -> String {
    let data = std::fs::read(path).unwrap_or_default();
    let start = data.len().saturating_sub(max);
    String::from_utf8_lossy(&data[start..]).into_owned()
}

/// The workspace root: `SHOAL_WORKSPACE` if set, else the parent of this package's directory.
pub fn workspace_root() -> PathBuf {
    if let Some(dir) = std::env::var_os("SHOAL_WORKSPACE") {
        return PathBuf::from(dir);
    }
    let manifest = Path::new(env!("CARGO_MANIFEST_DIR"));
    manifest.parent().unwrap_or(manifest).to_path_buf()
}

/// Full path of `tool` on PATH.
pub(crate) fn which(tool: &str) -> Option<PathBuf> {
    let path = std::env::var_os("PATH")?;
    std::env::split_paths(&path).map(|dir| dir.join(tool)).find(|candidate| candidate.is_file())
}

/// Runs a command to completion within `limit` (killing it past that), and fails unless it exits 0.
/// The error carries the command line, exit status, stdout and stderr.
pub async fn run(cmd: &mut tokio::process::Command, limit: Duration) -> Result<Output> {
    let line = format!("{:?}", cmd.as_std());
    cmd.kill_on_drop(true)
        .stdin(std::process::Stdio::null())
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::piped());
    let output = match tokio::time::timeout(limit, cmd.output()).await {
        Ok(out) => out.with_context(|| format!("spawn {line}"))?,
        Err(_) => bail!("timed out after {limit:?}: {line}"),
    };
    if !output.status.success() {
        bail!(
            "{line} failed: {}\n--- stdout:\n{}\n--- stderr:\n{}",
            output.status,
            String::from_utf8_lossy(&output.stdout),
            String::from_utf8_lossy(&output.stderr)
        );
    }
    Ok(output)
}

/// A command for a long-running child process that must not outlive the test: run through
/// `setpriv --pdeathsig KILL` (util-linux) when available, so it is killed even if the test
/// process dies without running destructors.
pub(crate) fn daemon_command(program: impl AsRef<std::ffi::OsStr>) -> std::process::Command {
    match which("setpriv") {
        Some(setpriv) => {
            let mut cmd = std::process::Command::new(setpriv);
            cmd.args(["--pdeathsig", "KILL", "--"]).arg(program);
            cmd
        }
        None => std::process::Command::new(program),
    }
}

/// Sends SIGKILL to a child and reaps it (a no-op if it already exited).
pub(crate) fn kill_child(child: &mut std::process::Child) {
    if let Ok(None) = child.try_wait() {
        let _ = child.kill();
    }
    let _ = child.wait();
}

/// Opens (creating, appending) a log file usable as a child's stdout/stderr.
/// Spawns `cmd` (a shoal process) with stdout and stderr appended to `log`.
pub(crate) fn spawn_logged(cmd: &mut std::process::Command, log: &Path, what: &str) -> Result<std::process::Child> {
    let log = log_file(log)?;
    cmd.env("RUST_LOG", std::env::var("RUST_LOG").unwrap_or_else(|_| "info".into()))
        .env("RUST_BACKTRACE", "1")
        .stdin(std::process::Stdio::null())
        .stdout(log.try_clone()?)
        .stderr(log)
        .spawn()
        .with_context(|| format!("spawn {what}"))
}

/// Polls `url` until it answers 200 while `alive()` holds, for at most `limit`.
pub(crate) async fn wait_healthy(
    client: &reqwest::Client,
    url: &str,
    limit: Duration,
    mut alive: impl FnMut() -> bool,
) -> bool {
    let deadline = Instant::now() + limit;
    loop {
        if matches!(client.get(url).send().await, Ok(r) if r.status() == 200) {
            return true;
        }
        if !alive() || Instant::now() >= deadline {
            return false;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

pub(crate) fn log_file(path: &Path) -> Result<std::fs::File> {
    std::fs::OpenOptions::new()
        .create(true)
        .append(true)
        .open(path)
        .with_context(|| format!("open log {}", path.display()))
}

/// A free UDP port on 127.0.0.1 (bind to port 0, read it back, release it), for a daemon's QUIC
/// peer listener.
pub fn free_udp_port() -> u16 {
    loop {
        let socket = std::net::UdpSocket::bind("127.0.0.1:0").expect("bind udp 127.0.0.1:0");
        let port = socket.local_addr().expect("local_addr").port();
        if first_hand_out(port) {
            return port;
        }
    }
}

//! A network namespace with only `lo`, for running the processes of a manifest on the ports it
//! names (65000-65005 on 0.0.0.0) without touching the host's ports: made and removed by the
//! test, with every process started in it killed on drop.

use std::collections::BTreeSet;
use std::path::Path;
use std::process::{Child, Command, Stdio};

use anyhow::{Context, Result};

/// `ip netns add NAME` with `lo` up; deleted on drop.
pub struct NetNs {
    name: String,
}

impl NetNs {
    pub fn new(tag: &str) -> Result<Self> {
        let name = format!("shoal-{tag}-{}", std::process::id());
        super::run(Command::new("ip").args(["netns", "add", &name]))?;
        let ns = Self { name };
        super::run(Command::new("nsenter").arg(ns.arg()).args(["ip", "link", "set", "lo", "up"]))?;
        Ok(ns)
    }

    /// `--net=/run/netns/NAME`, nsenter's argument.
    pub fn arg(&self) -> String {
        format!("--net=/run/netns/{}", self.name)
    }

    /// Spawns `program args...` in the namespace (killed if the test process dies, through
    /// `setpriv --pdeathsig`), output to `log`.
    pub fn spawn(&self, program: &Path, args: &[String], log: &Path) -> Result<NsChild> {
        let log = std::fs::File::create(log)?;
        let child = Command::new("setpriv")
            .args(["--pdeathsig", "KILL", "--", "nsenter", &self.arg()])
            .arg(program)
            .args(args)
            .env("RUST_LOG", "info")
            .env_remove("SHOAL_CLUSTER_TOKEN")
            .env_remove("SHOAL_CLUSTER_TOKEN_FILE")
            .stdin(Stdio::null())
            .stdout(log.try_clone()?)
            .stderr(log)
            .spawn()
            .with_context(|| format!("spawn {} in {}", program.display(), self.name))?;
        Ok(NsChild(child))
    }

    /// `curl` in the namespace: the HTTP status and body (status 0 when nothing answered).
    pub fn get(&self, url: &str) -> (u16, String) {
        let out = Command::new("nsenter")
            .arg(self.arg())
            .args(["curl", "-sS", "--max-time", "2", "-w", "\n%{http_code}", url])
            .output();
        let Ok(out) = out else { return (0, String::new()) };
        let text = String::from_utf8_lossy(&out.stdout).into_owned();
        let (body, status) = text.rsplit_once('\n').unwrap_or(("", "0"));
        (status.trim().parse().unwrap_or(0), body.to_owned())
    }

    /// GETs `url` until it answers 200 (at most 20 s); the last status and body.
    pub fn wait_ok(&self, url: &str, alive: &mut NsChild) -> (u16, String) {
        let deadline = std::time::Instant::now() + std::time::Duration::from_secs(20);
        loop {
            let (status, body) = self.get(url);
            if status == 200 || std::time::Instant::now() > deadline || !alive.is_running() {
                return (status, body);
            }
            std::thread::sleep(std::time::Duration::from_millis(100));
        }
    }
}

impl Drop for NetNs {
    fn drop(&mut self) {
        let _ = Command::new("ip").args(["netns", "del", &self.name]).status();
    }
}

/// A process in a [`NetNs`], killed on drop.
pub struct NsChild(Child);

impl NsChild {
    pub fn is_running(&mut self) -> bool {
        matches!(self.0.try_wait(), Ok(None))
    }

    /// `(protocol, port)` of every socket it listens on (TCP LISTEN, bound UDP) with the
    /// address it is bound to, read from `/proc/PID/net/*` (which shows the process's own
    /// network namespace).
    pub fn listening(&self) -> BTreeSet<(String, u16, String)> {
        let mut out = BTreeSet::new();
        for (file, proto) in [("tcp", "TCP"), ("tcp6", "TCP"), ("udp", "UDP"), ("udp6", "UDP")] {
            let text = std::fs::read_to_string(format!("/proc/{}/net/{file}", self.0.id())).unwrap_or_default();
            for line in text.lines().skip(1) {
                let fields: Vec<&str> = line.split_whitespace().collect();
                let (Some(local), Some(state)) = (fields.get(1), fields.get(3)) else { continue };
                // TCP: 0A is LISTEN; UDP: 07 is an unconnected (bound) socket.
                if (proto == "TCP" && *state != "0A") || (proto == "UDP" && *state != "07") {
                    continue;
                }
                let Some((ip, port)) = local.split_once(':') else { continue };
                let ip = match ip {
                    _ if ip.chars().all(|c| c == '0') => "0.0.0.0",
                    "0100007F" => "127.0.0.1",
                    other => other,
                };
                if let Ok(port) = u16::from_str_radix(port, 16) {
                    out.insert((proto.to_owned(), port, ip.to_owned()));
                }
            }
        }
        out
    }
}

impl Drop for NsChild {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

//! The swarm benchmark's network: a bridge in a hub namespace and one namespace per node, each
//! joined to the bridge by a veth pair whose two ends are both capped with `tbf` (egress of the
//! node's end = the node's upload, egress of the hub's end = the node's download). Everything lives
//! in namespaces named `shoalb-*` with addresses in 10.200.0.0/24 that exist only inside them, so no
//! packet can leave the machine. [`Topology`] deletes every namespace it made on drop (which also
//! removes the veths); [`cleanup_stale`] removes leftovers of a run that was killed.

use std::process::{Command, Stdio};

use anyhow::{bail, Context, Result};

/// Every namespace this benchmark creates starts with this.
pub const PREFIX: &str = "shoalb-";
/// The namespace holding the bridge.
pub const HUB: &str = "shoalb-hub";
/// The origin registry's namespace (capped like a node).
pub const ORIGIN: &str = "shoalb-origin";
pub const ORIGIN_IP: &str = "10.200.0.2";
/// The scheduler's namespace (not capped: its traffic is tiny).
pub const SCHED: &str = "shoalb-sched";
pub const SCHED_IP: &str = "10.200.0.3";

/// The namespace of node `i` (0-based).
pub fn node_ns(i: usize) -> String {
    format!("{PREFIX}n{i}")
}

/// The address of node `i` (10.200.0.11, …).
pub fn node_ip(i: usize) -> String {
    format!("10.200.0.{}", 11 + i)
}

/// `/run/netns/NAME`, for `nsenter --net=…`.
pub fn ns_path(ns: &str) -> String {
    format!("/run/netns/{ns}")
}

/// A command run inside namespace `ns` (`nsenter --net=/run/netns/NS -- PROGRAM`; unlike
/// `ip netns exec` it leaves /sys and the cgroup mounts alone).
pub fn in_ns(ns: &str, program: &str) -> Command {
    let mut cmd = Command::new("nsenter");
    cmd.arg(format!("--net={}", ns_path(ns))).arg("--").arg(program);
    cmd
}

/// Runs a command to completion; fails with its stderr unless it exits 0. Returns stdout.
pub fn sh(cmd: &mut Command) -> Result<String> {
    let line = format!("{cmd:?}");
    let out = cmd.stdin(Stdio::null()).output().with_context(|| format!("spawn {line}"))?;
    if !out.status.success() {
        bail!("{line} failed ({}): {}", out.status, String::from_utf8_lossy(&out.stderr).trim());
    }
    Ok(String::from_utf8_lossy(&out.stdout).into_owned())
}

fn ip(args: &[&str]) -> Result<String> {
    sh(Command::new("ip").args(args))
}

/// Namespaces whose name starts with [`PREFIX`].
pub fn ours() -> Vec<String> {
    let list = ip(&["netns", "list"]).unwrap_or_default();
    list.lines()
        .filter_map(|l| l.split_whitespace().next())
        .filter(|n| n.starts_with(PREFIX))
        .map(str::to_string)
        .collect()
}

/// Deletes leftover `shoalb-*` namespaces (of a run that was killed), first killing any process
/// still inside them.
pub fn cleanup_stale() {
    for ns in ours() {
        kill_ns_processes(&ns);
        let _ = ip(&["netns", "del", &ns]);
    }
}

/// SIGKILLs every process whose network namespace is `ns` (`ip netns pids`).
fn kill_ns_processes(ns: &str) {
    let pids = ip(&["netns", "pids", ns]).unwrap_or_default();
    for pid in pids.split_whitespace() {
        let _ = Command::new("kill").args(["-9", pid]).stderr(Stdio::null()).status();
    }
}

/// The created network; removed on drop.
pub struct Topology {
    /// The cap, in tc syntax (e.g. `200mbit`).
    pub rate: String,
    created: Vec<String>,
}

impl Topology {
    /// Creates the hub with its bridge, `nodes` node namespaces, the origin's (all capped at
    /// `rate` both ways) and the scheduler's (uncapped).
    pub fn create(nodes: usize, rate: &str, rate_bits: f64) -> Result<Self> {
        let mut topo = Self { rate: rate.to_string(), created: Vec::new() };
        topo.add_ns(HUB)?;
        ip(&["-n", HUB, "link", "add", "br0", "type", "bridge"])?;
        ip(&["-n", HUB, "link", "set", "br0", "up"])?;
        ip(&["-n", HUB, "link", "set", "lo", "up"])?;
        topo.attach(ORIGIN, "horigin", ORIGIN_IP, Some(rate_bits))?;
        topo.attach(SCHED, "hsched", SCHED_IP, None)?;
        for i in 0..nodes {
            topo.attach(&node_ns(i), &format!("hn{i}"), &node_ip(i), Some(rate_bits))?;
        }
        Ok(topo)
    }

    fn add_ns(&mut self, ns: &str) -> Result<()> {
        ip(&["netns", "add", ns])?;
        self.created.push(ns.to_string());
        Ok(())
    }

    /// A namespace `ns` whose `eth0` (address `addr`/24) is a veth to `hub_end` on the bridge.
    fn attach(&mut self, ns: &str, hub_end: &str, addr: &str, cap_bits: Option<f64>) -> Result<()> {
        self.add_ns(ns)?;
        ip(&["-n", HUB, "link", "add", hub_end, "type", "veth", "peer", "name", "eth0", "netns", ns])?;
        ip(&["-n", HUB, "link", "set", hub_end, "master", "br0", "up"])?;
        ip(&["-n", ns, "addr", "add", &format!("{addr}/24"), "dev", "eth0"])?;
        ip(&["-n", ns, "link", "set", "eth0", "up"])?;
        ip(&["-n", ns, "link", "set", "lo", "up"])?;
        if let Some(bits) = cap_bits {
            // Upload: egress of the node's end. Download: egress of the hub's end (the same as an
            // ifb ingress cap on the node's end, without the redirect).
            tbf(ns, "eth0", &self.rate, bits)?;
            tbf(HUB, hub_end, &self.rate, bits)?;
        }
        Ok(())
    }

    /// The tbf qdisc lines of node 0's link (both ends), for the report.
    pub fn describe(&self) -> String {
        let node = sh(Command::new("tc").args(["-n", &node_ns(0), "qdisc", "show", "dev", "eth0"])).unwrap_or_default();
        let hub = sh(Command::new("tc").args(["-n", HUB, "qdisc", "show", "dev", "hn0"])).unwrap_or_default();
        format!("{} | {}", node.trim(), hub.trim())
    }
}

/// `tc qdisc add dev DEV root tbf rate RATE burst … latency 50ms` inside `ns`. The bucket holds
/// 10 ms of traffic (at least 64 KiB, so GSO packets are segmented rather than dropped).
fn tbf(ns: &str, dev: &str, rate: &str, bits: f64) -> Result<()> {
    let burst = ((bits / 8.0 / 100.0) as u64).max(64 * 1024);
    sh(Command::new("tc").args([
        "-n",
        ns,
        "qdisc",
        "add",
        "dev",
        dev,
        "root",
        "tbf",
        "rate",
        rate,
        "burst",
        &burst.to_string(),
        "latency",
        "50ms",
    ]))?;
    Ok(())
}

impl Drop for Topology {
    fn drop(&mut self) {
        for ns in self.created.iter().rev() {
            kill_ns_processes(ns);
            let _ = ip(&["netns", "del", ns]);
        }
    }
}

/// Parses a tc rate (`200mbit`, `1gbit`, `500kbit`, `1000000bit`) into bits per second.
pub fn parse_rate(rate: &str) -> Result<f64> {
    let rate = rate.trim().to_ascii_lowercase();
    let split = rate.find(|c: char| !(c.is_ascii_digit() || c == '.')).unwrap_or(rate.len());
    let (num, unit) = rate.split_at(split);
    let num: f64 = num.parse().with_context(|| format!("rate {rate:?}: not a number"))?;
    let mult = match unit {
        "bit" | "" => 1.0,
        "kbit" => 1e3,
        "mbit" => 1e6,
        "gbit" => 1e9,
        _ => bail!("rate {rate:?}: use tc units kbit, mbit or gbit"),
    };
    Ok(num * mult)
}

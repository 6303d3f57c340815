//! The sites benchmark's network: a WAN backbone (a bridge in the hub namespace) holding the
//! origin and the scheduler, and per site a router namespace whose `wan0` joins the backbone
//! through a link capped at the WAN rate both ways (tbf on both ends) and whose `lan0` bridge
//! joins the site's nodes at the LAN rate. Routers forward between the site's subnet
//! (10.201.S.0/24) and the backbone (10.200.0.0/24); every address exists only inside these
//! namespaces (`shoalb-*`), so no packet leaves the machine. [`Sites`] deletes every namespace it
//! made on drop; `netns::cleanup_stale` removes a killed run's leftovers.

use std::process::Command;

use anyhow::{Context, Result};

use crate::netns::{in_ns, sh, PREFIX};

/// The backbone's namespace (bridge `br0`).
pub const HUB: &str = "shoalb-hub";
/// The origin registry, on the backbone (uncapped: the WAN links are the limit).
pub const ORIGIN: &str = "shoalb-origin";
pub const ORIGIN_IP: &str = "10.200.0.2";
/// The scheduler, on the backbone next to the origin: a site whose WAN link is cut loses both.
pub const SCHED: &str = "shoalb-sched";
pub const SCHED_IP: &str = "10.200.0.3";

/// The router namespace of site `s`.
pub fn router_ns(s: usize) -> String {
    format!("{PREFIX}s{s}")
}

/// The backbone address of site `s`'s router.
fn router_wan_ip(s: usize) -> String {
    format!("10.200.0.{}", 21 + s)
}

/// Site `s`'s subnet.
fn subnet(s: usize) -> String {
    format!("10.201.{s}.0/24")
}

/// The namespace of node `i` (numbered across sites).
pub fn node_ns(i: usize) -> String {
    format!("{PREFIX}n{i}")
}

/// Where node `i` of a layout with `per_site` nodes per site lives: (site, address).
pub fn node_place(i: usize, per_site: usize) -> (usize, String) {
    let s = i / per_site;
    (s, format!("10.201.{s}.{}", 11 + i % per_site))
}

/// The created network; removed on drop.
pub struct Sites {
    created: Vec<String>,
}

fn ip(args: &[&str]) -> Result<String> {
    sh(Command::new("ip").args(args))
}

impl Sites {
    /// `sites` sites of `per_site` nodes; WAN links capped at `wan`, LAN links at `lan` (tc rates).
    pub fn create(sites: usize, per_site: usize, wan: &str, wan_bits: f64, lan: &str, lan_bits: f64) -> Result<Self> {
        let mut t = Self { created: Vec::new() };
        t.add_ns(HUB)?;
        bridge(HUB, "br0", None)?;
        t.attach(HUB, "br0", ORIGIN, "horigin", ORIGIN_IP, 24, None)?;
        t.attach(HUB, "br0", SCHED, "hsched", SCHED_IP, 24, None)?;
        for s in 0..sites {
            let router = router_ns(s);
            t.attach(HUB, "br0", &router, &format!("hs{s}"), &router_wan_ip(s), 24, Some((wan, wan_bits)))?;
            sh(in_ns(&router, "ip").args(["link", "set", "eth0", "name", "wan0"]))?;
            bridge(&router, "lan0", Some(&format!("10.201.{s}.1/24")))?;
            sh(in_ns(&router, "sysctl").args(["-qw", "net.ipv4.ip_forward=1"]))?;
            for backbone in [ORIGIN, SCHED] {
                ip(&["-n", backbone, "route", "add", &subnet(s), "via", &router_wan_ip(s)])?;
            }
            for other in (0..sites).filter(|o| *o != s) {
                ip(&["-n", &router, "route", "add", &subnet(other), "via", &router_wan_ip(other)])?;
            }
            for j in 0..per_site {
                let i = s * per_site + j;
                let (_, addr) = node_place(i, per_site);
                t.attach(&router, "lan0", &node_ns(i), &format!("n{i}"), &addr, 24, Some((lan, lan_bits)))?;
                ip(&["-n", &node_ns(i), "route", "add", "default", "via", &format!("10.201.{s}.1")])?;
            }
        }
        Ok(t)
    }

    fn add_ns(&mut self, ns: &str) -> Result<()> {
        ip(&["netns", "add", ns])?;
        self.created.push(ns.to_string());
        ip(&["-n", ns, "link", "set", "lo", "up"])?;
        Ok(())
    }

    /// A namespace `ns` whose `eth0` (`addr/prefix`) is a veth to `end` on `bridge` in `host`,
    /// both ends capped at `cap` when given.
    #[allow(clippy::too_many_arguments)]
    fn attach(
        &mut self,
        host: &str,
        bridge: &str,
        ns: &str,
        end: &str,
        addr: &str,
        prefix: u8,
        cap: Option<(&str, f64)>,
    ) -> Result<()> {
        self.add_ns(ns)?;
        ip(&["-n", host, "link", "add", end, "type", "veth", "peer", "name", "eth0", "netns", ns])?;
        ip(&["-n", host, "link", "set", end, "master", bridge, "up"])?;
        ip(&["-n", ns, "addr", "add", &format!("{addr}/{prefix}"), "dev", "eth0"])?;
        ip(&["-n", ns, "link", "set", "eth0", "up"])?;
        if let Some((rate, bits)) = cap {
            tbf(ns, "eth0", rate, bits)?;
            tbf(host, end, rate, bits)?;
        }
        Ok(())
    }

    /// Bytes (received, sent) on site `s`'s WAN link, seen from its router: into and out of the
    /// site, every header included.
    pub fn wan_bytes(&self, s: usize) -> Result<(u64, u64)> {
        let out = ip(&["-n", &router_ns(s), "-s", "-j", "link", "show", "dev", "wan0"])?;
        let v: serde_json::Value = serde_json::from_str(&out).context("ip -j link")?;
        let stats = &v[0]["stats64"];
        let get = |dir: &str| stats[dir]["bytes"].as_u64().with_context(|| format!("no {dir} bytes in {out}"));
        Ok((get("rx")?, get("tx")?))
    }

    /// Cuts (or restores) site `s`'s WAN link at the backbone's end: the router keeps its
    /// routes and sends into a dead link, so connections to the origin and the scheduler time
    /// out rather than being refused (a cable cut upstream, the hard case).
    pub fn set_wan(&self, s: usize, up: bool) -> Result<()> {
        ip(&["-n", HUB, "link", "set", &format!("hs{s}"), if up { "up" } else { "down" }])?;
        Ok(())
    }
}

/// A bridge `name` in `ns`, up, with `addr` on it when given.
fn bridge(ns: &str, name: &str, addr: Option<&str>) -> Result<()> {
    ip(&["-n", ns, "link", "add", name, "type", "bridge"])?;
    if let Some(addr) = addr {
        ip(&["-n", ns, "addr", "add", addr, "dev", name])?;
    }
    ip(&["-n", ns, "link", "set", name, "up"])?;
    Ok(())
}

/// `tc qdisc add dev DEV root tbf rate RATE …` inside `ns`; the bucket holds 10 ms of traffic
/// (at least 64 KiB, so GSO packets are segmented rather than dropped).
fn tbf(ns: &str, dev: &str, rate: &str, bits: f64) -> Result<()> {
    let burst = ((bits / 8.0 / 100.0) as u64).max(64 * 1024).to_string();
    let args = ["-n", ns, "qdisc", "add", "dev", dev, "root", "tbf", "rate", rate, "burst", &burst, "latency", "50ms"];
    sh(Command::new("tc").args(args))?;
    Ok(())
}

impl Drop for Sites {
    fn drop(&mut self) {
        for ns in self.created.iter().rev() {
            let pids = ip(&["netns", "pids", ns]).unwrap_or_default();
            for pid in pids.split_whitespace() {
                let _ = Command::new("kill").args(["-9", pid]).status();
            }
            let _ = ip(&["netns", "del", ns]);
        }
    }
}

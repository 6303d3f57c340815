//! Bootstrap addresses: another daemon's `dht_listen`, or a DNS name that resolves to several
//! (a Kubernetes headless service). Parsed once at configuration time, resolved again and again
//! while the daemon runs (members come and go). Nothing here dials.

use std::net::SocketAddr;
use std::time::Duration;

/// The DHT port a bootstrap address without one is taken to have.
pub const DEFAULT_DHT_PORT: u16 = 65004;
/// Bound on resolving one bootstrap name.
pub const RESOLVE_TIMEOUT: Duration = Duration::from_secs(2);
/// The most addresses taken from one name (a headless service of a large cluster lists every
/// pod; a few are enough to join, the DHT finds the rest).
pub const MAX_ADDRS_PER_NAME: usize = 16;

/// One `bootstrap` entry: `host:port`, `host` (port 65004), `[v6]:port` or an IP address.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct BootstrapAddr {
    /// An IP address or a DNS name.
    pub host: String,
    /// The DHT port there.
    pub port: u16,
}

impl std::fmt::Display for BootstrapAddr {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        if self.host.contains(':') {
            write!(f, "[{}]:{}", self.host, self.port)
        } else {
            write!(f, "{}:{}", self.host, self.port)
        }
    }
}

impl std::str::FromStr for BootstrapAddr {
    type Err = String;

    fn from_str(s: &str) -> Result<Self, String> {
        if let Ok(addr) = s.parse::<SocketAddr>() {
            return Ok(Self { host: addr.ip().to_string(), port: addr.port() });
        }
        if let Ok(ip) = s.parse::<std::net::IpAddr>() {
            return Ok(Self { host: ip.to_string(), port: DEFAULT_DHT_PORT });
        }
        let (host, port) = match s.rsplit_once(':') {
            Some((host, port)) => (host, port.parse::<u16>().map_err(|_| format!("{s:?}: bad port {port:?}"))?),
            None => (s, DEFAULT_DHT_PORT),
        };
        if !is_dns_name(host) {
            return Err(format!("{s:?} is not host:port, an IP address or a DNS name"));
        }
        Ok(Self { host: host.to_owned(), port })
    }
}

/// Letters, digits, `-` and `.`, 1 to 253 characters, no empty label.
fn is_dns_name(host: &str) -> bool {
    !host.is_empty()
        && host.len() <= 253
        && host.split('.').all(|l| !l.is_empty() && l.len() <= 63)
        && host.bytes().all(|b| b.is_ascii_alphanumeric() || b == b'-' || b == b'.')
}

/// Every address `addrs` resolve to now, deduplicated; a name that does not resolve in time
/// is skipped (its members may not be up yet: the next round tries again).
pub async fn resolve(addrs: &[BootstrapAddr]) -> Vec<SocketAddr> {
    let mut out: Vec<SocketAddr> = Vec::new();
    for a in addrs {
        let lookup = tokio::time::timeout(RESOLVE_TIMEOUT, tokio::net::lookup_host((a.host.as_str(), a.port))).await;
        match lookup {
            Ok(Ok(found)) => {
                for addr in found.take(MAX_ADDRS_PER_NAME) {
                    if !out.contains(&addr) {
                        out.push(addr);
                    }
                }
            }
            Ok(Err(e)) => tracing::debug!(bootstrap = %a, error = %e, "bootstrap name does not resolve"),
            Err(_) => tracing::debug!(bootstrap = %a, "resolving the bootstrap name timed out"),
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_addresses_names_and_default_ports() {
        let p = |s: &str| s.parse::<BootstrapAddr>().map(|a| a.to_string());
        assert_eq!(p("10.0.0.1:7000").unwrap(), "10.0.0.1:7000");
        assert_eq!(p("10.0.0.1").unwrap(), "10.0.0.1:65004");
        assert_eq!(p("[::1]:7000").unwrap(), "[::1]:7000");
        assert_eq!(p("::1").unwrap(), "[::1]:65004");
        assert_eq!(p("shoal.kube-system.svc.cluster.local").unwrap(), "shoal.kube-system.svc.cluster.local:65004");
        assert_eq!(p("shoal-dht:9000").unwrap(), "shoal-dht:9000");
        for bad in ["", "host:port", "a..b", "http://x:1", "x:99999", "a b"] {
            assert!(p(bad).is_err(), "{bad:?}");
        }
    }

    #[tokio::test]
    async fn resolves_names_and_skips_what_does_not_resolve() {
        let addrs: Vec<BootstrapAddr> =
            ["127.0.0.1:7000", "localhost:7001", "127.0.0.1:7000", "no-such-host.invalid:1"]
                .iter()
                .map(|s| s.parse().unwrap())
                .collect();
        let found = resolve(&addrs).await;
        assert_eq!(found[0], SocketAddr::from(([127, 0, 0, 1], 7000)));
        assert!(found.iter().any(|a| a.port() == 7001 && a.ip().is_loopback()), "{found:?}");
        assert_eq!(found.iter().filter(|a| a.port() == 7000).count(), 1, "deduplicated");
        assert!(found.iter().all(|a| a.port() != 1));
    }
}

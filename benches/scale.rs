//! Scale, measured (issue 8 §8): the real scheduler and the real child machine, one per peer,
//! pulling one blob over modelled links (`shoal_core::sim`), with the wall-clock time of every
//! scheduler decision and every child event.
//!
//! `cargo bench -p shoal-core --features sim --bench scale` (or `scripts/bench-scale.sh`).
//! Environment, all optional: `SCALE_PEERS` (10000), `SCALE_SITES` (3), `SCALE_SIZE_MIB` (256),
//! `SCALE_LINK_MBIT` (1000: B for every link, up and down), `SCALE_WINDOW_MS` (0: every peer
//! arrives at once), `SCALE_STEP_MS` (10).

use std::time::Instant;

use shoal_core::sim::{quantile, Meter, Params, Sim};
use shoal_core::Digest;

/// Wall-clock times of decisions and child events.
#[derive(Default)]
struct Clock {
    decisions: Vec<u64>,
    /// Child events, as a log histogram: 16 buckets per power of two of nanoseconds.
    child: Vec<u64>,
    child_max: u64,
}

impl Meter for Clock {
    fn scheduler<T>(&mut self, f: impl FnOnce() -> T) -> T {
        let t = Instant::now();
        let out = f();
        self.decisions.push(t.elapsed().as_nanos() as u64);
        out
    }

    fn child<T>(&mut self, f: impl FnOnce() -> T) -> T {
        let t = Instant::now();
        let out = f();
        let ns = t.elapsed().as_nanos() as u64;
        let bucket = bucket(ns);
        if self.child.len() <= bucket {
            self.child.resize(bucket + 1, 0);
        }
        self.child[bucket] += 1;
        self.child_max = self.child_max.max(ns);
        out
    }
}

fn bucket(ns: u64) -> usize {
    let ns = ns.max(1);
    let octave = 63 - ns.leading_zeros() as usize;
    let frac = if octave >= 4 { ((ns >> (octave - 4)) & 15) as usize } else { 0 };
    octave * 16 + frac
}

/// The upper bound of a bucket, in ns.
fn bucket_ceiling(b: usize) -> u64 {
    let (octave, frac) = (b / 16, (b % 16) as u64);
    if octave < 4 {
        return 1 << (octave + 1);
    }
    (16 + frac + 1) << (octave - 4)
}

impl Clock {
    fn child_quantile(&self, q: f64) -> u64 {
        let total: u64 = self.child.iter().sum();
        let want = (q * total as f64).ceil() as u64;
        let mut seen = 0;
        for (b, &n) in self.child.iter().enumerate() {
            seen += n;
            if seen >= want.max(1) {
                return bucket_ceiling(b).min(self.child_max);
            }
        }
        self.child_max
    }
}

fn env(name: &str, default: u64) -> u64 {
    std::env::var(name).ok().and_then(|v| v.parse().ok()).unwrap_or(default)
}

fn cpu_model() -> String {
    let info = std::fs::read_to_string("/proc/cpuinfo").unwrap_or_default();
    let model = info.lines().find_map(|l| l.strip_prefix("model name")).map(|l| l.trim_start_matches([' ', '\t', ':']));
    let cores = info.lines().filter(|l| l.starts_with("processor")).count();
    let sha_ni = info.lines().find(|l| l.starts_with("flags")).is_some_and(|l| l.split(' ').any(|f| f == "sha_ni"));
    format!("{} ({cores} logical CPUs, SHA-NI {})", model.unwrap_or("unknown"), if sha_ni { "yes" } else { "no" })
}

/// One core's rate of `hash` over 64 MiB, in MB/s.
fn rate_mb_per_s(hash: impl Fn(&[u8])) -> f64 {
    let buf = vec![0x5au8; 64 << 20];
    let t = Instant::now();
    hash(std::hint::black_box(&buf));
    buf.len() as f64 / t.elapsed().as_secs_f64() / 1e6
}

fn ms(ns: u64) -> String {
    format!("{:.3} ms", ns as f64 / 1e6)
}

fn main() {
    let peers = env("SCALE_PEERS", 10_000) as usize;
    let sites = env("SCALE_SITES", 3) as usize;
    let size = env("SCALE_SIZE_MIB", 256) << 20;
    let link_mbit = env("SCALE_LINK_MBIT", 1000);
    let link = link_mbit * 1_000_000 / 8;
    let mut p = Params {
        arrival_window_ms: env("SCALE_WINDOW_MS", 0),
        step_ms: env("SCALE_STEP_MS", 10),
        ..Params::new(peers, sites, size, link)
    };
    // Tuning experiments (defaults: the values the scheduler and the daemon run with).
    let s = &mut p.scheduler;
    s.candidate_parents = env("SCALE_CANDIDATES", s.candidate_parents as u64) as usize;
    s.max_children_per_parent = env("SCALE_MAX_CHILDREN", u64::from(s.max_children_per_parent)) as u32;
    s.max_parents = env("SCALE_MAX_PARENTS", s.max_parents as u64) as usize;
    p.child.max_in_flight = env("SCALE_IN_FLIGHT", p.child.max_in_flight as u64) as usize;
    p.child.picker.max_in_flight_per_parent =
        env("SCALE_PER_PARENT", u64::from(p.child.picker.max_in_flight_per_parent)) as u32;
    p.child.picker.urgent_window = env("SCALE_URGENT", u64::from(p.child.picker.urgent_window)) as u32;
    p.seeding.window_ms = env("SCALE_SEEDING_MS", p.seeding.window_ms);
    p.child.busy_backoff_ms = env("SCALE_BUSY_BACKOFF_MS", p.seeding.window_ms);
    if p.scheduler != shoal_core::sched::Config::default() || p.child != shoal_core::child::ChildConfig::default() {
        println!("tuned: {:?}; child {:?}; seeding {:?}", p.scheduler, p.child, p.seeding);
    }
    println!("CPU: {}", cpu_model());
    println!(
        "one core hashes sha256 (sha2 crate, the core's Digest) at {:.0} MB/s, BLAKE3 (the core's PieceDigest) at {:.0} MB/s",
        rate_mb_per_s(|b| {
            std::hint::black_box(Digest::of(b));
        }),
        rate_mb_per_s(|b| {
            std::hint::black_box(shoal_core::PieceDigest::of(b));
        })
    );
    println!(
        "{peers} peers in {sites} sites, blob {} MiB in {} pieces of {} MiB, every link {link_mbit} Mbit/s, arrivals over {} ms, step {} ms; S/B = {:.2} s",
        size >> 20,
        p.layout.count(),
        p.layout.piece_size >> 20,
        p.arrival_window_ms,
        p.step_ms,
        p.ideal_ms() / 1000.0
    );
    let started = Instant::now();
    let (out, clock) = Sim::with_meter(p.clone(), Clock::default()).run();
    let wall = started.elapsed();
    let ideal = p.ideal_ms();
    let x = |q: f64| out.completion_quantile(q) as f64 / ideal;
    let copies: Vec<String> = out.origin_copies(size).iter().map(|c| format!("{c:.2}")).collect();
    let mut decisions = clock.decisions.clone();
    decisions.sort_unstable();
    let dq = |q: f64| ms(quantile(&decisions, q));
    println!();
    println!("| figure | measured | goal |");
    println!("|---|---|---|");
    println!("| peers / sites | {peers} / {sites} | 10,000 / 3 |");
    println!("| S (blob) / B (every link) | {} MiB / {link_mbit} Mbit/s | |", size >> 20);
    println!("| completion p50 | {:.2} × S/B | |", x(0.5));
    println!("| completion p99 | {:.2} × S/B | ≤ 1.3 × S/B |", x(0.99));
    println!("| completion max | {:.2} × S/B | |", x(1.0));
    println!("| peers not done | {} | 0 |", out.unfinished());
    println!("| origin copies per site | {} | 1 |", copies.join(", "));
    println!("| scheduler decisions (register + reschedule) | {} | |", decisions.len());
    println!("| decision latency p50 / p99 / max | {} / {} / {} | p99 < 1 ms |", dq(0.5), dq(0.99), dq(1.0));
    println!(
        "| child event latency p50 / p99 / max | {} / {} / {} | |",
        ms(clock.child_quantile(0.5)),
        ms(clock.child_quantile(0.99)),
        ms(clock.child_max)
    );
    println!("| child events | {} | |", out.child_events);
    let mut hops: Vec<u64> = out.hops.iter().map(|&h| u64::from(h)).collect();
    hops.sort_unstable();
    println!(
        "| parent links from an origin peer (hops) p50 / p99 / max | {} / {} / {} | |",
        quantile(&hops, 0.5),
        quantile(&hops, 0.99),
        quantile(&hops, 1.0)
    );
    println!();
    println!(
        "requests {} (busy {}, not found {}), cancels {}, timeouts {}, reschedules {}, offers {}, waits {}, back to source {}",
        out.requests, out.busy, out.not_found, out.cancels, out.timeouts, out.reschedules, out.offers, out.waits, out.back_to_source
    );
    println!(
        "bytes from parents {:.2} × (peers − sites) × S, wasted {:.3} × S per peer; virtual time {:.1} s; wall time {:.1} s",
        out.peer_bytes as f64 / ((peers - sites) as f64 * size as f64),
        out.wasted_bytes as f64 / (peers as f64 * size as f64),
        out.end_ms as f64 / 1000.0,
        wall.as_secs_f64()
    );
}

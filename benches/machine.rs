//! The machine a benchmark ran on: the CPU model, its cores, the instructions that decide hash
//! speed (SHA-NI for sha256, AVX2/AVX-512 for BLAKE3), and what one core of it hashes, measured in
//! the benchmark process (sha256 with aws-lc-rs as the daemon does, BLAKE3 single-threaded).
//! Every results table is preceded by [`Machine::line`]; targets that depend on the hash rate
//! read [`Machine::sha256_bps`]. It measures nothing about Shoal itself.

use std::time::{Duration, Instant};

/// Bytes hashed per measurement pass, and the size of each update.
const HASH_BYTES: usize = 256 << 20;
const UPDATE_BYTES: usize = 1 << 20;
/// Passes per hash; the fastest counts (the machine is shared).
const PASSES: usize = 3;

/// The CPU and its single-core hash rates.
pub struct Machine {
    model: String,
    cores: usize,
    sha_ni: Feature,
    avx2: Feature,
    avx512: Feature,
    /// sha256 (aws-lc-rs) on one core, bytes per second.
    pub sha256_bps: f64,
    /// BLAKE3 (`blake3::Hasher::update`, one thread) on one core, bytes per second.
    blake3_bps: f64,
}

/// A CPU feature as /proc/cpuinfo lists it and as CPUID reports it to this process.
#[derive(Clone, Copy)]
struct Feature {
    cpuinfo: bool,
    detected: bool,
}

impl Feature {
    fn word(self) -> &'static str {
        match (self.cpuinfo, self.detected) {
            (true, true) => "yes",
            (false, false) => "no",
            (true, false) => "in /proc/cpuinfo but not detected",
            (false, true) => "detected but not in /proc/cpuinfo",
        }
    }
}

impl Machine {
    /// Reads /proc/cpuinfo and measures both hash rates (a few seconds of one core at most).
    pub fn measure() -> Self {
        let cpuinfo = std::fs::read_to_string("/proc/cpuinfo").unwrap_or_default();
        let flags = cpuinfo_field(&cpuinfo, "flags").unwrap_or_default();
        let has = |flag: &str| flags.split_whitespace().any(|f| f == flag);
        let (sha, avx2, avx512) = detected();
        eprintln!("machine: measuring one core's sha256 and BLAKE3 rates…");
        Self {
            model: cpuinfo_field(&cpuinfo, "model name").unwrap_or_else(|| "unknown CPU".into()),
            cores: std::thread::available_parallelism().map(|n| n.get()).unwrap_or(1),
            sha_ni: Feature { cpuinfo: has("sha_ni"), detected: sha },
            avx2: Feature { cpuinfo: has("avx2"), detected: avx2 },
            avx512: Feature { cpuinfo: has("avx512f"), detected: avx512 },
            sha256_bps: best_rate(sha256_pass),
            blake3_bps: best_rate(blake3_pass),
        }
    }

    /// One line describing the machine, printed before every results table.
    pub fn line(&self) -> String {
        format!(
            "CPU: {}, {} cores, SHA-NI {}, AVX2 {}, AVX-512 {}; one core hashes sha256 at {:.0} MB/s, BLAKE3 at {:.0} MB/s",
            self.model,
            self.cores,
            self.sha_ni.word(),
            self.avx2.word(),
            self.avx512.word(),
            self.sha256_bps / 1e6,
            self.blake3_bps / 1e6
        )
    }
}

/// The value of the first `key : value` line of /proc/cpuinfo.
fn cpuinfo_field(cpuinfo: &str, key: &str) -> Option<String> {
    cpuinfo.lines().find_map(|line| {
        let (k, v) = line.split_once(':')?;
        (k.trim() == key).then(|| v.trim().to_string())
    })
}

/// (SHA, AVX2, AVX-512F) as CPUID reports them to this process.
#[cfg(target_arch = "x86_64")]
fn detected() -> (bool, bool, bool) {
    (
        std::arch::is_x86_feature_detected!("sha"),
        std::arch::is_x86_feature_detected!("avx2"),
        std::arch::is_x86_feature_detected!("avx512f"),
    )
}

#[cfg(not(target_arch = "x86_64"))]
fn detected() -> (bool, bool, bool) {
    (false, false, false)
}

/// The best of [`PASSES`] runs of `pass` over [`HASH_BYTES`], in bytes per second.
fn best_rate(pass: fn(&[u8]) -> Duration) -> f64 {
    let chunk = pattern(UPDATE_BYTES);
    let best = (0..PASSES).map(|_| pass(&chunk)).min().unwrap_or(Duration::MAX);
    HASH_BYTES as f64 / best.as_secs_f64().max(1e-9)
}

/// Non-repeating bytes (hash speed does not depend on them; this keeps the buffer honest).
fn pattern(len: usize) -> Vec<u8> {
    let mut x = 0x9e37_79b9_7f4a_7c15u64;
    (0..len)
        .map(|_| {
            x ^= x << 13;
            x ^= x >> 7;
            x ^= x << 17;
            x as u8
        })
        .collect()
}

fn sha256_pass(chunk: &[u8]) -> Duration {
    let start = Instant::now();
    let mut ctx = aws_lc_rs::digest::Context::new(&aws_lc_rs::digest::SHA256);
    for _ in 0..HASH_BYTES / chunk.len() {
        ctx.update(chunk);
    }
    std::hint::black_box(ctx.finish());
    start.elapsed()
}

fn blake3_pass(chunk: &[u8]) -> Duration {
    let start = Instant::now();
    let mut hasher = blake3::Hasher::new();
    for _ in 0..HASH_BYTES / chunk.len() {
        hasher.update(chunk);
    }
    std::hint::black_box(hasher.finalize());
    start.elapsed()
}

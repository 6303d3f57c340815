//! The sites benchmark's runs: the fleet (origin, scheduler, one daemon per node with its site
//! and the DHT), part A (everyone pulls at once; WAN bytes per site) and part B (a site cut off).

use std::fmt::Write as _;

use super::*;
use crate::clients::{p50_max, pull_in_ns, Pull};
use crate::machine::Machine;
use crate::netns::{in_ns, parse_rate, sh};
use crate::origin::{push, Origin};
use crate::summary::Summary;
use crate::topo::{node_place, Sites, SCHED, SCHED_IP};

/// Layers of 16 MiB for S bytes (at least one).
fn layer_sizes(total: u64) -> Vec<u64> {
    let count = (total / (16 * MIB)).max(1);
    let each = total / count;
    let mut sizes = vec![each; count as usize];
    sizes[0] += total - each * count;
    sizes
}

/// What one run measured, with its report (tables and the summary, ready to print).
pub struct Outcome {
    pub a: PartA,
    pub b: PartB,
    pub report: String,
}

/// The benchmark: the defaults above, every figure printed.
pub async fn run() -> Result<()> {
    let out = measure(env_u64("SHOAL_BENCH_MB", 48).max(1)).await?;
    println!("{}", out.report);
    Ok(())
}

/// The end-to-end test (`cargo test -p shoal-e2e --test sites`): a smaller image, and what the
/// issue requires of the bytes checked: each site's WAN link carries at most 1.05× the image
/// (headers included), every blob every node stored is correct, every pull of the cut-off site
/// succeeds and resolves a tag that moved before the cut to its latest target. Times are
/// printed, not asserted.
pub async fn check() -> Result<()> {
    let out = measure(40).await?;
    println!("{}", out.report);
    for (s, (rx, _)) in out.a.wan.iter().enumerate() {
        let ratio = *rx as f64 / out.a.s_bytes as f64;
        ensure!(ratio <= 1.05, "site{s}'s WAN link carried {ratio:.3}× the image into the site (> 1.05×)");
    }
    ensure!(out.a.bad_stores.is_empty(), "wrong or missing blobs: {}", out.a.bad_stores.join(" "));
    for (i, name, outcome, secs) in &out.b.pulls {
        if let Err(e) = outcome {
            bail!("node{i} could not pull the {name} image with its site cut off ({secs:.1} s): {e}");
        }
    }
    for (i, outcome, _) in &out.b.moved {
        if let Err(e) = outcome {
            bail!("node{i}, site cut off, tag moved before: {e}");
        }
    }
    Ok(())
}

/// Sets up the sites, runs parts A and B with an image of `s_mb` MB, tears everything down.
async fn measure(s_mb: u64) -> Result<Outcome> {
    let bin = Daemon::bin_path();
    ensure!(bin.is_file(), "shoal binary not found at {} (set SHOAL_BIN)", bin.display());
    ensure!(sh(std::process::Command::new("id").arg("-u"))?.trim() == "0", "needs root (network namespaces)");
    let machine = Machine::measure();
    let (wan, lan) = (env_str("SHOAL_BENCH_WAN", "50mbit"), env_str("SHOAL_BENCH_LAN", "1gbit"));
    let (wan_bits, lan_bits) = (parse_rate(&wan)?, parse_rate(&lan)?);
    netns::cleanup_stale();
    let dir = tempfile::Builder::new().prefix("shoal-bench-sites-").tempdir()?;
    let image = Image::build(7, &layer_sizes(s_mb * MB))?;
    let second = Image::build(8, &layer_sizes(s_mb * MB / 2))?;
    eprintln!("sites: {SITES} sites × {PER_SITE} nodes, WAN {wan}, LAN {lan}, image {s_mb} MB…");
    let sites = Sites::create(SITES, PER_SITE, &wan, wan_bits, &lan, lan_bits)?;
    let origin_dir = dir.path().join("origin");
    std::fs::create_dir_all(&origin_dir)?;
    let origin = Origin::start(&origin_dir).await?;
    push(&image, TAG).await?;
    push(&second, "v2").await?;
    let _scheduler = start_scheduler(&bin, dir.path()).await?;
    let mut daemons = start_daemons(&bin, dir.path()).await?;
    tokio::time::sleep(Duration::from_secs(2)).await; // announcements and DHT joins

    let mut report = format!("\n# Shoal sites benchmark\n\n{}\n\n", machine.line());
    let mut summary = Summary::default();
    let a = match part_a(&sites, &origin, &image, wan_bits).await {
        Ok(a) => a,
        Err(e) => {
            dump_logs(&daemons);
            bail!("part A: {e:#}");
        }
    };
    a.report(&mut report, &mut summary, wan_bits);
    let _ = writeln!(report, "{}\n", scheduler_decisions());
    let b = part_b(&sites, &image, &second, &mut daemons).await?;
    b.report(&mut report, &mut summary);
    report.push_str(&summary.render("sites benchmark", &machine));
    if env_u64("SHOAL_BENCH_KEEP", 0) != 0 {
        let _ = writeln!(report, "Logs and data kept in {}.", dir.keep().display());
    }
    Ok(Outcome { a, b, report })
}

/// The scheduler's decision counts, as a sentence for the report.
fn scheduler_decisions() -> String {
    let url = format!("http://{ADMIN}/metrics");
    let text = sh(in_ns(SCHED, "curl").args(["-sf", "--max-time", "5", &url])).unwrap_or_default();
    let count = |kind: &str| {
        shoal_e2e::metric_value(&text, "shoal_scheduler_decisions_total", &format!("kind=\"{kind}\"")).unwrap_or(0.0)
    };
    format!(
        "Scheduler decisions: {} back-to-source, {} parents, {} wait.",
        count("back_to_source"),
        count("parents"),
        count("wait")
    )
}

fn dump_logs(daemons: &[Proc]) {
    for d in daemons {
        eprintln!("--- {} log tail:\n{}", d.name, d.tail(3000));
    }
}

async fn start_scheduler(bin: &Path, dir: &Path) -> Result<Proc> {
    let args = ["scheduler", "--listen", &format!("{SCHED_IP}:{SCHED_PORT}"), "--cluster-token", TOKEN];
    let args: Vec<String> = args.iter().map(|a| a.to_string()).chain(["--admin-listen".into(), ADMIN.into()]).collect();
    let mut p = Proc::spawn("scheduler", Some(SCHED), bin, &args, &log_env(), &dir.join("scheduler.log"))?;
    p.wait_http(Some(SCHED), &format!("http://{ADMIN}/healthz"), Duration::from_secs(20)).await?;
    Ok(p)
}

fn log_env() -> Vec<(&'static str, String)> {
    vec![("RUST_LOG", std::env::var("RUST_LOG").unwrap_or_else(|_| "info".into())), ("RUST_BACKTRACE", "1".into())]
}

/// One daemon per node, each in its site, the DHT joined through the first node of each site.
async fn start_daemons(bin: &Path, dir: &Path) -> Result<Vec<Proc>> {
    let bootstrap: Vec<String> =
        (0..SITES).map(|s| format!("{}:{DHT_PORT}", node_place(s * PER_SITE, PER_SITE).1)).collect();
    let mut daemons = Vec::new();
    for i in 0..SITES * PER_SITE {
        let (site, addr) = node_place(i, PER_SITE);
        let data = dir.join(format!("node{i}"));
        std::fs::create_dir_all(&data)?;
        let mut args: Vec<String> = [
            "daemon",
            "--data-dir",
            &data.join("data").display().to_string(),
            "--mirror-listen",
            MIRROR,
            "--admin-listen",
            ADMIN,
            "--registry",
            &format!("{}:{REGISTRY_PORT}=http://{}:{REGISTRY_PORT}", topo::ORIGIN_IP, topo::ORIGIN_IP),
            "--scheduler",
            &format!("http://{SCHED_IP}:{SCHED_PORT}"),
            "--peer-listen",
            &format!("{addr}:{PEER_PORT}"),
            "--dht-listen",
            &format!("{addr}:{DHT_PORT}"),
            "--advertise-addr",
            &addr,
            "--site",
            &format!("site{site}"),
            "--cluster-token",
            TOKEN,
            "--host-id",
            &format!("node{i}"),
        ]
        .iter()
        .map(|a| a.to_string())
        .collect();
        for b in &bootstrap {
            args.extend(["--bootstrap".to_string(), b.clone()]);
        }
        daemons.push(Proc::spawn(
            &format!("node{i}"),
            Some(&node_ns(i)),
            bin,
            &args,
            &log_env(),
            &data.join("daemon.log"),
        )?);
    }
    for (i, d) in daemons.iter_mut().enumerate() {
        d.wait_http(Some(&node_ns(i)), &format!("http://{ADMIN}/healthz"), Duration::from_secs(30)).await?;
    }
    Ok(daemons)
}

/// What part A measured.
pub struct PartA {
    pub s_bytes: u64,
    pulls: Vec<Pull>,
    /// Per site: (bytes into the site, bytes out of it) over its WAN link.
    pub wan: Vec<(u64, u64)>,
    origin_bytes: u64,
    stores: String,
    /// `node:blob` of every stored blob that was missing or did not hash to its digest.
    pub bad_stores: Vec<String>,
}

async fn part_a(sites: &Sites, origin: &Origin, image: &Image, wan_bits: f64) -> Result<PartA> {
    let blobs = image.blobs();
    let s_bytes: u64 = blobs.iter().map(|b| b.size).sum::<u64>() + image.manifest.len() as u64;
    let limit = Duration::from_secs_f64(s_bytes as f64 * 8.0 / wan_bits * 6.0 + 60.0);
    let before: Vec<(u64, u64)> = (0..SITES).map(|s| sites.wan_bytes(s)).collect::<Result<_>>()?;
    let mark = origin.settle().await;
    eprintln!("sites: part A — all {} nodes pull at once…", SITES * PER_SITE);
    let handles: Vec<_> = (0..SITES * PER_SITE)
        .map(|i| tokio::spawn(pull_in_ns(node_ns(i), format!("http://{MIRROR}"), blobs.clone(), 3, limit)))
        .collect();
    let mut pulls = Vec::new();
    for (i, h) in handles.into_iter().enumerate() {
        pulls.push(h.await?.with_context(|| format!("node{i}"))?);
    }
    origin.settle().await;
    let after: Vec<(u64, u64)> = (0..SITES).map(|s| sites.wan_bytes(s)).collect::<Result<_>>()?;
    let wan = before.iter().zip(&after).map(|(b, a)| (a.0 - b.0, a.1 - b.1)).collect();
    let (stores, bad_stores) = verify_stores(&blobs).await;
    Ok(PartA { s_bytes, pulls, wan, origin_bytes: origin.blob_bytes_since(mark), stores, bad_stores })
}

/// Every node's stored copy of every blob, re-hashed: a sentence, and the bad ones.
async fn verify_stores(blobs: &[Blob]) -> (String, Vec<String>) {
    let (mut good, mut bad) = (0, Vec::new());
    for i in 0..SITES * PER_SITE {
        for blob in blobs {
            let url = format!("http://{MIRROR}/v2/{REPO}/blobs/{}", blob.digest);
            let got = sh(in_ns(&node_ns(i), "sh").args(["-c", &format!("curl -sf --max-time 30 {url} | sha256sum")]));
            match got {
                Ok(out) if out.starts_with(blob.hex()) => good += 1,
                _ => bad.push(format!("node{i}:{}", &blob.hex()[..12])),
            }
        }
    }
    let total = SITES * PER_SITE * blobs.len();
    (format!("{good}/{total} re-read through the mirrors with the right sha256 {}", bad.join(" ")), bad)
}

impl PartA {
    fn report(&self, out: &mut String, summary: &mut Summary, wan_bits: f64) {
        let ideal = self.s_bytes as f64 * 8.0 / wan_bits;
        let times: Vec<Duration> = self.pulls.iter().map(|p| p.total).collect();
        let (p50, max) = p50_max(&times);
        let _ = writeln!(
            out,
            "## Part A: {} nodes pull a {:.1} MB image at once\n",
            times.len(),
            self.s_bytes as f64 / 1e6
        );
        let _ = writeln!(
            out,
            "S ÷ W = {ideal:.2} s. Origin served {:.2}× S. {}.\n",
            self.origin_bytes as f64 / self.s_bytes as f64,
            self.stores
        );
        let _ = writeln!(out, "| node | site | pull (s) | × S÷W | each blob (s) |\n|---|---|---|---|---|");
        for (i, (t, p)) in times.iter().zip(&self.pulls).enumerate() {
            let each: Vec<String> = p.blob_secs.iter().map(|s| format!("{s:.2}")).collect();
            let (secs, ratio) = (t.as_secs_f64(), t.as_secs_f64() / ideal);
            let _ = writeln!(out, "| node{i} | site{} | {secs:.2} | {ratio:.2} | {} |", i / PER_SITE, each.join(" "));
        }
        let _ = writeln!(out, "\n| site | WAN in (× S) | WAN out (× S) |\n|---|---|---|");
        for (s, (rx, tx)) in self.wan.iter().enumerate() {
            let (rx, tx) = (*rx as f64 / self.s_bytes as f64, *tx as f64 / self.s_bytes as f64);
            let _ = writeln!(out, "| site{s} | {rx:.3} | {tx:.3} |");
            summary.add(
                format!("site{s} WAN bytes in, × S (headers included)"),
                format!("{rx:.3}"),
                "≤ 1.05".into(),
                Some(rx <= 1.05),
            );
        }
        let slowest = max.as_secs_f64() / ideal;
        let _ = writeln!(out, "\np50 {:.2}× S÷W, slowest {slowest:.2}× S÷W.\n", p50.as_secs_f64() / ideal);
        summary.add("slowest node, × S÷W", format!("{slowest:.2}"), "≤ 1.2".into(), Some(slowest <= 1.2));
    }
}

/// What part B measured: per pull, (node, image, outcome, seconds); per node, the moved tag's
/// resolution (see `tags`).
pub struct PartB {
    pub pulls: Vec<(usize, &'static str, Result<(), String>, f64)>,
    pub moved: Vec<(usize, Result<(), String>, f64)>,
}

async fn part_b(sites: &Sites, first: &Image, second: &Image, _daemons: &mut [Proc]) -> Result<PartB> {
    let holder = PER_SITE; // node 4, the first of site 1
    eprintln!("sites: part B — node{holder} pulls the second image, a tag moves, then site 1 is cut off…");
    pull(holder, second, "v2").await.map_err(|e| anyhow::anyhow!("{e}"))?;
    // Two members saw `moving` name the first image, then the holder saw it move to the second.
    tags::sightings(first, second, &[holder + 1, holder + 2], holder).await?;
    sites.set_wan(1, false)?;
    tokio::time::sleep(Duration::from_millis(500)).await;
    let mut pulls = Vec::new();
    for i in holder + 1..2 * PER_SITE {
        for (name, image, tag) in [("second", second, "v2"), ("first", first, TAG)] {
            let start = Instant::now();
            let outcome = pull(i, image, tag).await;
            pulls.push((i, name, outcome, start.elapsed().as_secs_f64()));
        }
    }
    let mut moved = Vec::new();
    for i in holder + 1..2 * PER_SITE {
        let start = Instant::now();
        let outcome = tags::check_cut_off(i, second).await;
        moved.push((i, outcome, start.elapsed().as_secs_f64()));
    }
    sites.set_wan(1, true)?;
    Ok(PartB { pulls, moved })
}

/// Node `i` pulls `image` by `tag`: the manifest by tag, then every blob with its sha256 checked.
async fn pull(i: usize, image: &Image, tag: &str) -> Result<(), String> {
    let base = format!("http://{MIRROR}/v2/{REPO}");
    let mut script =
        format!("set -e; curl -sf --max-time 60 -H '{MANIFEST_ACCEPT}' {base}/manifests/{tag} >/dev/null\n");
    for blob in image.blobs() {
        let _ = writeln!(
            script,
            "curl -sf --max-time 60 {base}/blobs/{} | sha256sum | grep -q {}",
            blob.digest,
            blob.hex()
        );
    }
    let mut cmd = tokio::process::Command::new("nsenter");
    cmd.arg(format!("--net={}", netns::ns_path(&node_ns(i)))).args(["--", "sh", "-c", &script]);
    shoal_e2e::run(&mut cmd, Duration::from_secs(600)).await.map(|_| ()).map_err(|e| format!("{e:#}"))
}

impl PartB {
    fn report(&self, out: &mut String, summary: &mut Summary) {
        let _ = writeln!(out, "## Part B: site 1 cut off (origin and scheduler unreachable)\n");
        let _ = writeln!(out, "| node | image | outcome | seconds |\n|---|---|---|---|");
        for (i, name, outcome, secs) in &self.pulls {
            let what = outcome
                .as_ref()
                .map_or_else(|e| format!("failed: {}", e.lines().next().unwrap_or("")), |_| "ok".into());
            let _ = writeln!(out, "| node{i} | {name} | {what} | {secs:.2} |");
        }
        let _ = writeln!(out, "\nThe tag `moving`, moved at the origin after two members saw its older target:\n");
        let _ = writeln!(out, "| node | most recent target, with Warning | seconds |\n|---|---|---|");
        for (i, outcome, secs) in &self.moved {
            let what = outcome.as_ref().map_or_else(|e| format!("no: {e}"), |_| "yes".into());
            let _ = writeln!(out, "| node{i} | {what} | {secs:.2} |");
        }
        let moved_ok = self.moved.iter().filter(|m| m.1.is_ok()).count();
        summary.add(
            "cut-off site: a moved tag resolves to its latest target",
            format!("{moved_ok}/{}", self.moved.len()),
            "all".into(),
            Some(moved_ok == self.moved.len()),
        );
        let ok = self.pulls.iter().filter(|p| p.2.is_ok()).count();
        let slowest = self.pulls.iter().map(|p| p.3).fold(0.0, f64::max);
        summary.add(
            "cut-off site: pulls that succeed",
            format!("{ok}/{}", self.pulls.len()),
            "all".into(),
            Some(ok == self.pulls.len()),
        );
        summary.add("cut-off site: slowest pull (s)", format!("{slowest:.1}"), "a few seconds".into(), None);
    }
}

//! The Grafana dashboard (deploy/grafana/shoal.json) queries only metrics that a running daemon
//! or scheduler exports: a real scheduler and three real daemons pull an image through the
//! swarm (so the metrics have samples), their /metrics are scraped, and every metric name and
//! label matcher in every query must be there. The same run measures the processes' peak
//! memory (VmHWM), the figures the Kubernetes resource limits are set from.

use std::collections::{BTreeMap, BTreeSet};
use std::time::Duration;

use anyhow::{ensure, Context, Result};
use serde_json::Value;
use shoal_e2e::{
    member_client, missing_tool, sha256_body, Daemon, DaemonConfig, Image, Registry, Scheduler, Swarm, CALL_LIMIT,
};
use shoal_proto::scheduler::StatsRequest;

use super::{deploy_dir, read};

const MB: u64 = 1 << 20;

/// PromQL words that are not metric names (aggregations may be followed by `by (...)`).
const KEYWORDS: &[&str] = &[
    "by",
    "without",
    "on",
    "ignoring",
    "group_left",
    "group_right",
    "bool",
    "and",
    "or",
    "unless",
    "offset",
    "sum",
    "min",
    "max",
    "avg",
    "count",
    "stddev",
    "stdvar",
    "topk",
    "bottomk",
    "quantile",
    "count_values",
    "group",
];

/// `(metric, label names in its matcher)` of every metric a PromQL expression selects.
fn metric_names(expr: &str) -> Vec<(String, Vec<String>)> {
    let chars: Vec<char> = expr.chars().collect();
    let mut out = Vec::new();
    let mut i = 0;
    let ident = |c: char| c.is_ascii_alphanumeric() || c == '_' || c == ':';
    while i < chars.len() {
        let c = chars[i];
        if c == '"' {
            i += 1 + chars[i + 1..].iter().position(|&x| x == '"').unwrap_or(chars.len());
        } else if c == '[' {
            i += chars[i..].iter().position(|&x| x == ']').unwrap_or(chars.len());
        } else if c.is_ascii_digit() || c == '.' {
            while i < chars.len() && (chars[i].is_ascii_alphanumeric() || chars[i] == '.') {
                i += 1;
            }
            continue;
        } else if c.is_ascii_alphabetic() || c == '_' {
            let start = i;
            while i < chars.len() && ident(chars[i]) {
                i += 1;
            }
            let word: String = chars[start..i].iter().collect();
            let next = chars[i..].iter().find(|c| !c.is_whitespace()).copied();
            if word == "by" || word == "without" {
                i += chars[i..].iter().position(|&x| x == ')').unwrap_or(chars.len());
            } else if next != Some('(') && !KEYWORDS.contains(&word.as_str()) {
                let mut labels = Vec::new();
                if next == Some('{') {
                    let end = i + chars[i..].iter().position(|&x| x == '}').unwrap_or(chars.len() - i);
                    let body: String = chars[i..end].iter().collect();
                    let mut rest = body.trim_start_matches(|c: char| c.is_whitespace() || c == '{');
                    while let Some(at) = rest.find(['=', '!']) {
                        labels.push(rest[..at].trim().to_owned());
                        let after = &rest[at..];
                        let quote = after.find('"').map_or(after.len(), |q| q + 1);
                        let close = after[quote..].find('"').map_or(after.len(), |q| quote + q + 1);
                        rest = after[close..].trim_start_matches(|c: char| c.is_whitespace() || c == ',');
                    }
                    i = end;
                }
                out.push((word, labels));
            }
            continue;
        }
        i += 1;
    }
    out
}

/// Every PromQL expression of the dashboard (panel targets, rows' panels) and the metrics its
/// template variables query (`label_values(METRIC, LABEL)`).
fn dashboard_queries(dash: &Value) -> (Vec<String>, Vec<String>) {
    fn panels(v: &Value, out: &mut Vec<String>) {
        for p in v.as_array().into_iter().flatten() {
            for t in p["targets"].as_array().into_iter().flatten() {
                out.extend(t["expr"].as_str().map(str::to_owned));
            }
            panels(&p["panels"], out);
        }
    }
    let mut exprs = Vec::new();
    panels(&dash["panels"], &mut exprs);
    let variables = dash["templating"]["list"].as_array().into_iter().flatten();
    let template_metrics = variables
        .filter_map(|v| v["query"]["query"].as_str().or(v["definition"].as_str()))
        .filter_map(|q| q.strip_prefix("label_values(")?.split(',').next().map(|m| m.trim().to_owned()))
        .collect();
    (exprs, template_metrics)
}

/// Series names a /metrics text exports (samples, and the OpenMetrics names of each declared
/// family: `_total` for counters, `_bucket`/`_sum`/`_count` for histograms), with the label
/// names seen on their samples.
fn exported(text: &str, into: &mut BTreeMap<String, BTreeSet<String>>) {
    for line in text.lines() {
        if let Some(decl) = line.strip_prefix("# TYPE ") {
            let mut words = decl.split_whitespace();
            let (Some(family), Some(kind)) = (words.next(), words.next()) else { continue };
            let names: &[&str] = match kind {
                "counter" => &["_total"],
                "histogram" => &["_bucket", "_sum", "_count"],
                _ => &[""],
            };
            for suffix in names {
                into.entry(format!("{family}{suffix}")).or_default();
            }
        } else if !line.starts_with('#') && !line.is_empty() {
            let series = line.rsplit_once(' ').map_or(line, |(s, _)| s);
            let (name, labels) = series.split_once('{').unwrap_or((series, ""));
            let entry = into.entry(name.to_owned()).or_default();
            entry.extend(labels.split(',').filter_map(|l| l.split_once('=')).map(|(k, _)| k.trim().to_owned()));
        }
    }
}

/// Every metric and label matcher of the dashboard that nothing exports.
fn missing(dash: &Value, exported: &BTreeMap<String, BTreeSet<String>>) -> Vec<String> {
    let (exprs, template_metrics) = dashboard_queries(dash);
    let mut missing = Vec::new();
    for m in template_metrics {
        if !exported.contains_key(&m) {
            missing.push(format!("template variable: {m}"));
        }
    }
    for expr in &exprs {
        for (metric, labels) in metric_names(expr) {
            match exported.get(&metric) {
                None => missing.push(format!("{metric} (in {expr})")),
                Some(seen) => {
                    // Prometheus adds instance and job; a family without samples has no labels to compare.
                    let unknown = labels.iter().filter(|l| {
                        !["instance", "job"].contains(&l.as_str()) && !seen.is_empty() && !seen.contains(*l)
                    });
                    missing.extend(unknown.map(|l| format!("label {l} of {metric} (in {expr})")));
                }
            }
        }
    }
    missing
}

/// Peak resident memory (VmHWM) of a process, bytes.
fn peak_rss(pid: u32) -> Result<u64> {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status"))?;
    let kib =
        status.lines().find(|l| l.starts_with("VmHWM:")).and_then(|l| l.split_whitespace().nth(1)).context("VmHWM")?;
    Ok(kib.parse::<u64>()? << 10)
}

/// The pid of the `shoal scheduler` whose admin listener is `admin_url` (found by its command
/// line among this test's processes).
fn scheduler_pid(admin_url: &str) -> Result<u32> {
    let port = admin_url.rsplit(':').next().unwrap_or_default();
    for entry in std::fs::read_dir("/proc")?.filter_map(|e| e.ok()) {
        let Ok(pid) = entry.file_name().to_string_lossy().parse::<u32>() else { continue };
        let cmdline = std::fs::read(format!("/proc/{pid}/cmdline")).unwrap_or_default();
        let args: Vec<String> = cmdline.split(|b| *b == 0).map(|a| String::from_utf8_lossy(a).into_owned()).collect();
        if args.iter().any(|a| a == "scheduler")
            && args.iter().any(|a| a.ends_with(&format!(":{port}")))
            && !args[0].contains("setpriv")
        {
            return Ok(pid);
        }
    }
    anyhow::bail!("no scheduler process with admin port {port}")
}

/// Every daemon GETs the manifest and every blob of `image` at once; every byte checked.
async fn pull(http: &reqwest::Client, daemons: &[Daemon], image: &Image) -> Result<()> {
    let mut pulls = tokio::task::JoinSet::new();
    for (i, d) in daemons.iter().enumerate() {
        let manifest = format!("{}/v2/e2e/deploy/manifests/v1", d.mirror_url());
        let accept = "application/vnd.oci.image.manifest.v1+json";
        ensure!(http.get(&manifest).header("Accept", accept).send().await?.status() == 200, "manifest via {i}");
        for blob in image.blobs() {
            let (http, url) = (http.clone(), format!("{}/v2/e2e/deploy/blobs/{}", d.mirror_url(), blob.digest));
            pulls.spawn(async move {
                let body = async { sha256_body(http.get(&url).send().await?.error_for_status()?).await };
                (blob.clone(), body.await)
            });
        }
    }
    while let Some(joined) = pulls.join_next().await {
        let (blob, got) = joined?;
        let (digest, len) = got?;
        ensure!(digest == blob.digest && len == blob.size, "{digest} ({len} B), want {blob:?}");
    }
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn every_dashboard_query_names_metrics_a_daemon_or_scheduler_exports() -> Result<()> {
    if let Some(tool) = missing_tool() {
        panic!("`{tool}` is not installed; ./scripts/test.sh installs the e2e dependencies");
    }
    let dash: Value = serde_json::from_str(&read(&deploy_dir().join("grafana/shoal.json"))?)?;
    let caught = missing(&dash, &BTreeMap::new());
    ensure!(
        !caught.is_empty() && metric_names("sum by (kind) (rate(shoal_x_total{a=\"b\"}[5m])) / 2").len() == 1,
        "the extractor finds nothing"
    );

    let registry = Registry::start().await?;
    let image = Image::build(77, &[32 * MB, 32 * MB, 32 * MB])?;
    image.push(&registry, "e2e/deploy", "v1").await?;
    let scheduler = Scheduler::start().await?;
    // d3 serves corrupt pieces (a test-only fault), so the error panels' families have samples.
    let config = Swarm::config(&registry, &[scheduler.url()]);
    let swarm =
        Swarm::start(4, config, |i, c| if i == 3 { c.env("SHOAL_FAULT_CORRUPT_UPLOADS", "1") } else { c }).await?;
    let http = reqwest::Client::builder().timeout(Duration::from_secs(180)).build()?;
    // d3 pulls first (from the origin); then d0..d2 pull the image at once: the rollout, whose
    // pieces come from d3 (caught, refetched) and from each other; then d0 again (cache hits).
    pull(&http, &swarm.daemons[3..], &image).await?;
    let started = std::time::Instant::now();
    pull(&http, &swarm.daemons[..3], &image).await?;
    let rollout = started.elapsed();
    pull(&http, &swarm.daemons[..1], &image).await?;
    // A daemon whose quota is below one blob serves it uncached; a client with a wrong token is
    // refused by the scheduler.
    let tiny = Daemon::start(DaemonConfig::for_registry(&registry).cache_size("1MiB")).await?;
    pull(&http, std::slice::from_ref(&tiny), &image).await?;
    let mut stranger = member_client(&scheduler.url(), b"not-the-cluster-token-at-all")?;
    let refused = tokio::time::timeout(CALL_LIMIT, stranger.stats(StatsRequest { task_id: String::new() })).await;
    ensure!(!matches!(refused, Ok(Ok(_))), "a wrong token was served");

    let mut names = BTreeMap::new();
    for d in swarm.daemons.iter().chain([&tiny]) {
        exported(&d.metrics().await?, &mut names);
    }
    exported(&scheduler.metrics().await?, &mut names);
    let gaps = missing(&dash, &names);
    ensure!(gaps.is_empty(), "the dashboard queries what nothing exports:\n{}", gaps.join("\n"));
    let (exprs, _) = dashboard_queries(&dash);
    let used: BTreeSet<String> = exprs.iter().flat_map(|e| metric_names(e)).map(|(m, _)| m).collect();
    println!("{} queries, {} metric names, all exported: {used:?}", exprs.len(), used.len());

    let image_mb = image.blobs().iter().map(|b| b.size).sum::<u64>() as f64 / MB as f64;
    let rss: Vec<String> = swarm.daemons[..3]
        .iter()
        .map(|d| peak_rss(d.pid().unwrap_or(0)).map(|b| format!("{} MiB", b >> 20)))
        .collect::<Result<_>>()?;
    let sched = peak_rss(scheduler_pid(&scheduler.admin_url())?)? >> 20;
    println!(
        "memory: 3 daemons pulled {image_mb:.0} MiB each at once in {:.1} s (debug build); peak RSS (VmHWM) daemons {rss:?}, scheduler {sched} MiB",
        rollout.as_secs_f64()
    );
    println!("{}", swarm.traffic_table().await);
    Ok(())
}

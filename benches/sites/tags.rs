//! A tag that moved before the site was cut off: the cut-off site resolves it to its most
//! recent sighting, not to what most members saw. Before the cut, two members resolve `moving`
//! while it names the first image; the origin then moves it to the second image and one member
//! resolves it again. With the site cut off every member must answer with the second image's
//! manifest (the two that saw the older target included), marked stale with a `Warning`.

use super::*;
use crate::netns;
use crate::origin::push;

/// The tag that moves.
const MOVING: &str = "moving";

/// Before the cut: `moving` names `older` for `early` nodes, then `newer` for `late`.
pub async fn sightings(older: &Image, newer: &Image, early: &[usize], late: usize) -> Result<()> {
    push(older, MOVING).await?;
    for &i in early {
        let got = resolve(i).await?;
        ensure!(got.digest == older.manifest_digest, "node{i} resolved {MOVING} to {}", got.digest);
    }
    push(newer, MOVING).await?;
    let got = resolve(late).await?;
    ensure!(got.digest == newer.manifest_digest, "node{late} resolved the moved {MOVING} to {}", got.digest);
    Ok(())
}

/// With the site cut off: what node `i` resolves `moving` to, checked against `newer`.
pub async fn check_cut_off(i: usize, newer: &Image) -> Result<(), String> {
    let got = resolve(i).await.map_err(|e| format!("{e:#}"))?;
    if got.digest != newer.manifest_digest {
        return Err(format!("resolved {MOVING} to {} (an older sighting), not {}", got.digest, newer.manifest_digest));
    }
    if !got.warned {
        return Err(format!("{MOVING} served from the site's knowledge without a Warning header"));
    }
    Ok(())
}

/// A tag's answer through node `i`'s mirror.
struct Resolved {
    digest: String,
    warned: bool,
}

async fn resolve(i: usize) -> Result<Resolved> {
    let url = format!("http://{MIRROR}/v2/{REPO}/manifests/{MOVING}");
    let mut cmd = tokio::process::Command::new("nsenter");
    cmd.arg(format!("--net={}", netns::ns_path(&node_ns(i)))).args([
        "--",
        "curl",
        "-sf",
        "--max-time",
        "60",
        "-H",
        MANIFEST_ACCEPT,
        "-D",
        "-",
        "-o",
        "/dev/null",
        &url,
    ]);
    let out = shoal_e2e::run(&mut cmd, Duration::from_secs(90)).await.with_context(|| format!("node{i}: {url}"))?;
    let headers = String::from_utf8_lossy(&out.stdout);
    let header = |name: &str| {
        headers.lines().find_map(|l| {
            let (k, v) = l.split_once(':')?;
            k.trim().eq_ignore_ascii_case(name).then(|| v.trim().to_owned())
        })
    };
    let digest = header("docker-content-digest").with_context(|| format!("node{i}: no Docker-Content-Digest"))?;
    Ok(Resolved { digest, warned: header("warning").is_some() })
}

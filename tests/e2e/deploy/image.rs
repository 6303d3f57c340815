//! The container image: `scripts/image.sh verify` builds deploy/Containerfile from the binary
//! under test on a throwaway dockerd with no network, and runs it (`--version`; the daemon
//! answering /healthz in the container's own network namespace as UID 65532 with no
//! capabilities). The script cleans up dockerd, the namespace and its temp dir itself, also
//! when it fails.

use std::process::Command;

use anyhow::{ensure, Result};

use super::{is_root, shoal_bin, workspace_root};

#[test]
fn the_image_builds_offline_and_runs_as_a_non_root_user() -> Result<()> {
    if !is_root() {
        panic!("needs root (dockerd in a network namespace); ./scripts/test.sh runs as root");
    }
    let started = std::time::Instant::now();
    let out = Command::new(workspace_root().join("scripts/image.sh"))
        .args(["verify", "--tag", "shoal:e2e", "--binary"])
        .arg(shoal_bin()?)
        .output()?;
    let (stdout, stderr) = (String::from_utf8_lossy(&out.stdout), String::from_utf8_lossy(&out.stderr));
    ensure!(out.status.success(), "scripts/image.sh verify failed: {}\n{stdout}\n{stderr}", out.status);
    ensure!(stdout.contains("image ok") && stdout.contains("as uid 65532 with no capabilities"), "{stdout}\n{stderr}");
    println!("{stderr}{stdout}in {:.1} s", started.elapsed().as_secs_f64());
    let leftovers: Vec<_> = std::fs::read_dir(std::env::temp_dir())?
        .filter_map(|e| e.ok())
        .filter(|e| e.file_name().to_string_lossy().starts_with("shoal-image-verify-"))
        .collect();
    ensure!(leftovers.is_empty(), "image.sh left {leftovers:?}");
    Ok(())
}

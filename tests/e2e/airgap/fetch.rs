//! d. `shoal fetch -o DIR` writes an OCI layout skopeo reads (inspect; copy into a fresh
//! registry with the same manifest digest); `-o FILE.tar` is read by `podman pull
//! oci-archive:`, and imported into another daemon and pulled back through its mirror with the
//! origin down.

use std::time::Duration;

use anyhow::{ensure, Result};
use shoal_e2e::{registries_conf, run, sha256_hex, Daemon, DaemonConfig, Image, Podman, Registry, Skopeo};

use super::{import, require_tools, shoal, workdir, MB};

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn fetch_writes_an_oci_layout_that_skopeo_and_import_read_back() -> Result<()> {
    require_tools();
    let mut registry = Registry::start().await?;
    let origin = registry.host();
    let image = Image::build(71, &[2 * MB, MB])?;
    image.push(&registry, "airgap/fetched", "v3").await?;
    let daemon = Daemon::start(DaemonConfig::for_registry(&registry)).await?;
    let work = workdir()?;
    let reference = format!("{origin}/airgap/fetched:v3");
    let layout = work.path().join("layout");
    let tarball = work.path().join("fetched.tar");
    for out in [&layout, &tarball] {
        let o =
            shoal(&["fetch", &reference, "--mirror", &daemon.mirror_host(), "-o", &out.display().to_string()], None)
                .await?;
        ensure!(o.ok, "shoal fetch -o {}: {}\n{}", out.display(), o.stderr, daemon.stderr_tail());
    }

    std::fs::write(work.path().join("policy.json"), r#"{"default":[{"type":"insecureAcceptAnything"}]}"#)?;
    let skopeo = |args: &[String]| {
        let mut cmd = tokio::process::Command::new("skopeo");
        cmd.arg("--policy").arg(work.path().join("policy.json")).args(args).env("TMPDIR", work.path());
        cmd
    };
    let oci = format!("oci:{}:v3", layout.display());
    let raw = run(&mut skopeo(&["inspect".into(), "--raw".into(), oci.clone()]), Duration::from_secs(60)).await?;
    ensure!(sha256_hex(&raw.stdout) == image.manifest_digest, "skopeo inspect read another manifest");
    let fresh = Registry::start().await?;
    std::fs::write(work.path().join("registries.conf"), registries_conf(&fresh.host(), None))?;
    let digest_file = work.path().join("copied-digest");
    let copy: Vec<String> = vec![
        "copy".into(),
        "--quiet".into(),
        "--preserve-digests".into(),
        "--dest-tls-verify=false".into(),
        "--digestfile".into(),
        digest_file.display().to_string(),
        oci,
        format!("docker://{}/copied/app:v3", fresh.host()),
    ];
    run(&mut skopeo(&copy), Duration::from_secs(120)).await?;
    ensure!(std::fs::read_to_string(&digest_file)?.trim() == image.manifest_digest, "skopeo copied another manifest");

    let podman = Podman::new(&origin, None)?;
    podman.pull(&format!("oci-archive:{}", tarball.display()), None).await?;
    // podman names it by the full name `shoal fetch` wrote into index.json.
    podman.verify(&reference, &image).await?;

    registry.stop();
    let other = Daemon::start(DaemonConfig::for_registry(&registry)).await?;
    let printed = import(&other, &tarball, &[]).await?;
    ensure!(printed.contains(&format!("imported {reference}@{}", image.manifest_digest)), "{printed}");
    let took = Skopeo::pull_verified(&origin, &other.mirror_host(), &reference, &image).await?;
    println!(
        "fetch -o, skopeo copy oci:, podman pull oci-archive:, import of the tar and a pull with the origin down: ok ({took:?} for the pull)"
    );
    Ok(())
}

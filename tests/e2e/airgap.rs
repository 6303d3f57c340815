//! End-to-end tests of the air gap (issue 10 §3): archives made by the real skopeo
//! (`docker-archive:`, `oci-archive:`) imported with `shoal import` into a real daemon and
//! pulled back through the mirror by skopeo and containerd with the origin stopped; pins and
//! time to live against the cache quota; `shoal cache ls|rm|pin`; bad archives written here;
//! and `shoal fetch -o` read back by skopeo and `shoal import`.

use std::path::{Path, PathBuf};
use std::process::Stdio;
use std::time::Duration;

use anyhow::{ensure, Context, Result};
use serde_json::Value;
use shoal_e2e::{missing_tool, registries_conf, run, sha256_file, Containerd, Daemon, DaemonConfig, Image, Registry};

const MB: u64 = 1 << 20;

#[path = "airgap/bad.rs"]
mod bad;
#[path = "airgap/cache.rs"]
mod cache;
#[path = "airgap/fetch.rs"]
mod fetch;

fn require_tools() {
    if let Some(tool) = missing_tool() {
        panic!("`{tool}` is not installed; ./scripts/test.sh installs the e2e dependencies");
    }
}

/// What a `shoal` client command printed.
struct Out {
    ok: bool,
    stdout: String,
    stderr: String,
}

/// Runs `shoal ARGS` (the binary under test), with `stdin` from a file if given.
async fn shoal(args: &[&str], stdin: Option<&Path>) -> Result<Out> {
    let mut cmd = tokio::process::Command::new(Daemon::bin_path());
    cmd.args(args).kill_on_drop(true).stdout(Stdio::piped()).stderr(Stdio::piped());
    cmd.stdin(match stdin {
        Some(path) => Stdio::from(std::fs::File::open(path)?),
        None => Stdio::null(),
    });
    let out = tokio::time::timeout(Duration::from_secs(300), cmd.output()).await.context("shoal timed out")??;
    Ok(Out {
        ok: out.status.success(),
        stdout: String::from_utf8_lossy(&out.stdout).into_owned(),
        stderr: String::from_utf8_lossy(&out.stderr).into_owned(),
    })
}

/// `shoal import FILE --admin ADDR EXTRA...`, which must succeed.
async fn import(daemon: &Daemon, file: &Path, extra: &[&str]) -> Result<String> {
    let admin = admin_addr(daemon);
    let mut args = vec!["import", file.to_str().context("path")?, "--admin", &admin];
    args.extend_from_slice(extra);
    let out = shoal(&args, None).await?;
    ensure!(
        out.ok,
        "shoal import {} failed:\n{}\n{}\n--- daemon:\n{}",
        file.display(),
        out.stdout,
        out.stderr,
        daemon.stderr_tail()
    );
    Ok(out.stdout)
}

fn admin_addr(daemon: &Daemon) -> String {
    daemon.admin_url().trim_start_matches("http://").to_owned()
}

/// `shoal cache ls --json`.
async fn cache_ls(daemon: &Daemon) -> Result<Value> {
    let out = shoal(&["cache", "ls", "--json", "--admin", &admin_addr(daemon)], None).await?;
    ensure!(out.ok, "shoal cache ls failed: {}", out.stderr);
    Ok(serde_json::from_str(&out.stdout)?)
}

/// The digests of the complete blobs `cache ls` shows.
fn complete_blobs(listing: &Value) -> Vec<String> {
    let mut out: Vec<String> = listing["blobs"]
        .as_array()
        .into_iter()
        .flatten()
        .filter(|b| b["state"] == "complete")
        .filter_map(|b| b["digest"].as_str().map(str::to_owned))
        .collect();
    out.sort();
    out
}

/// The digest `cache ls` shows for an imported image.
fn image_digest(listing: &Value, name: &str) -> Option<String> {
    listing["images"].as_array()?.iter().find(|i| i["name"] == name)?["digest"].as_str().map(str::to_owned)
}

/// `skopeo copy docker://ORIGIN/SRC DEST` straight from the origin (no mirror); `preserve`
/// keeps every digest (skopeo would compress layers for an OCI archive).
async fn skopeo_archive(dir: &Path, origin: &str, src: &str, dest: &str, preserve: bool) -> Result<()> {
    std::fs::write(dir.join("registries.conf"), registries_conf(origin, None))?;
    std::fs::write(dir.join("policy.json"), r#"{"default":[{"type":"insecureAcceptAnything"}]}"#)?;
    let mut cmd = tokio::process::Command::new("skopeo");
    cmd.arg("--registries-conf")
        .arg(dir.join("registries.conf"))
        .arg("--policy")
        .arg(dir.join("policy.json"))
        .args(["copy", "--quiet", "--src-tls-verify=false"])
        .args(preserve.then_some("--preserve-digests"))
        .arg(format!("docker://{origin}/{src}"))
        .arg(dest)
        .env("TMPDIR", dir);
    run(&mut cmd, Duration::from_secs(120)).await?;
    Ok(())
}

/// `skopeo copy --preserve-digests docker://REFERENCE dir:OUT` with `origin` mirrored by `mirror`
/// (skopeo would otherwise compress the uncompressed layers of a Docker v2 manifest on the way).
async fn skopeo_pull(dir: &Path, origin: &str, mirror: &str, reference: &str) -> Result<PathBuf> {
    let conf = dir.join("mirrored.conf");
    std::fs::write(&conf, registries_conf(origin, Some(mirror)))?;
    std::fs::write(dir.join("policy.json"), r#"{"default":[{"type":"insecureAcceptAnything"}]}"#)?;
    let out = dir.join(format!("pulled-{}", reference.replace(['/', ':'], "_")));
    let mut cmd = tokio::process::Command::new("skopeo");
    cmd.arg("--registries-conf")
        .arg(&conf)
        .arg("--policy")
        .arg(dir.join("policy.json"))
        .args(["copy", "--quiet", "--preserve-digests"])
        .arg(format!("docker://{reference}"))
        .arg(format!("dir:{}", out.display()))
        .env("TMPDIR", dir);
    run(&mut cmd, Duration::from_secs(120)).await?;
    Ok(out)
}

/// Checks a skopeo `dir:` copy: every layer of `image` is there, and every blob file hashes to
/// its name (skopeo's docker-archive writer re-encodes the config, so the config is checked by
/// its digest only); returns the digest of the manifest skopeo got.
fn check_dir_blobs(out: &Path, image: &Image) -> Result<String> {
    for blob in &image.layers {
        ensure!(
            out.join(blob.hex()).is_file(),
            "skopeo output lacks layer {} (manifest {})",
            blob.digest,
            std::fs::read_to_string(out.join("manifest.json")).unwrap_or_default()
        );
    }
    let mut files = 0;
    for entry in std::fs::read_dir(out)? {
        let name = entry?.file_name().to_string_lossy().into_owned();
        if name.len() == 64 && name.bytes().all(|b| b.is_ascii_hexdigit()) {
            let got = sha256_file(&out.join(&name))?;
            ensure!(got == format!("sha256:{name}"), "{name} hashes to {got}");
            files += 1;
        }
    }
    ensure!(files == image.blobs().len(), "{files} blobs in the skopeo copy, want {}", image.blobs().len());
    sha256_file(&out.join("manifest.json"))
}

/// containerd pulled `reference` as `digest` and holds every layer of `image` (containerd checks
/// each digest as it writes, and each layer's diff id as it unpacks).
async fn check_containerd(containerd: &Containerd, reference: &str, digest: &str, image: &Image) -> Result<()> {
    let mut cmd = containerd.ctr();
    let out = run(cmd.args(["images", "ls"]), Duration::from_secs(30)).await?;
    let listing = String::from_utf8_lossy(&out.stdout).into_owned();
    let line = listing.lines().find(|l| l.split_whitespace().next() == Some(reference));
    let line = line.with_context(|| format!("ctr images ls lacks {reference}:\n{listing}"))?;
    ensure!(line.contains(digest), "ctr image is not {digest}: {line}");
    let mut cmd = containerd.ctr();
    let out = run(cmd.args(["content", "ls", "-q"]), Duration::from_secs(30)).await?;
    let content = String::from_utf8_lossy(&out.stdout).into_owned();
    for blob in &image.layers {
        ensure!(content.contains(&blob.digest), "containerd content lacks {}", blob.digest);
    }
    Ok(())
}

/// A temp dir for archives.
fn workdir() -> Result<tempfile::TempDir> {
    Ok(tempfile::Builder::new().prefix("shoal-airgap-").tempdir()?)
}

fn path_str(p: &Path) -> String {
    p.display().to_string()
}

/// a. skopeo writes a docker archive and a (gzipped) OCI archive of an image; the origin stops;
/// both are imported (one from a file, one from standard input) and pulled back through the
/// mirror by skopeo and by containerd, every blob checked.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn skopeo_archives_import_and_pull_back_with_the_origin_down() -> Result<()> {
    require_tools();
    let mut registry = Registry::start().await?;
    let image = Image::build(41, &[3 * MB, MB])?;
    image.push(&registry, "airgap/app", "v1").await?;
    let origin = registry.host();
    let work = workdir()?;
    let docker_tar = work.path().join("docker.tar");
    let oci_tar = work.path().join("oci.tar");
    let docker_ref = format!("{origin}/airgap/docker:v1");
    let oci_ref = format!("{origin}/airgap/oci:v2");
    skopeo_archive(
        work.path(),
        &origin,
        "airgap/app:v1",
        &format!("docker-archive:{}:{docker_ref}", path_str(&docker_tar)),
        false,
    )
    .await?;
    skopeo_archive(
        work.path(),
        &origin,
        "airgap/app:v1",
        &format!("oci-archive:{}:{oci_ref}", path_str(&oci_tar)),
        true,
    )
    .await?;
    let gz = work.path().join("oci.tar.gz");
    let mut cmd = tokio::process::Command::new("sh");
    cmd.arg("-c").arg(format!("gzip -c {} > {}", path_str(&oci_tar), path_str(&gz)));
    run(&mut cmd, Duration::from_secs(60)).await?;
    registry.stop();

    let daemon = Daemon::start(DaemonConfig::for_registry(&registry)).await?;
    let printed = import(&daemon, &docker_tar, &[]).await?;
    ensure!(printed.contains(&format!("imported {docker_ref}@")), "{printed}");
    let out = shoal(&["import", "-", "--admin", &admin_addr(&daemon)], Some(&gz)).await?;
    ensure!(out.ok && out.stdout.contains(&format!("imported {oci_ref}@")), "{}\n{}", out.stdout, out.stderr);
    let listing = cache_ls(&daemon).await?;
    let docker_digest = image_digest(&listing, &docker_ref).context("docker image not listed")?;
    let oci_digest = image_digest(&listing, &oci_ref).context("oci image not listed")?;
    ensure!(oci_digest == image.manifest_digest, "the OCI archive's manifest is {oci_digest}, not the origin's");

    let mirror = daemon.mirror_host();
    for (reference, digest) in [(&docker_ref, &docker_digest), (&oci_ref, &oci_digest)] {
        let out = skopeo_pull(work.path(), &origin, &mirror, reference)
            .await
            .with_context(|| format!("skopeo pull {reference}\n{}", daemon.stderr_tail()))?;
        let got = check_dir_blobs(&out, &image)?;
        ensure!(&got == digest, "skopeo got manifest {got}, the import is {digest}");
    }
    let containerd = Containerd::start().await?;
    let hosts = containerd.hosts_dir(&origin, Some(&mirror))?;
    for (reference, digest) in [(&docker_ref, &docker_digest), (&oci_ref, &oci_digest)] {
        containerd
            .pull(reference, &hosts, None)
            .await
            .with_context(|| format!("ctr pull {reference}\n{}", daemon.stderr_tail()))?;
        check_containerd(&containerd, reference, digest, &image).await?;
    }
    println!("imported and pulled back with the origin down: {docker_ref} ({docker_digest}), {oci_ref} ({oci_digest})");
    Ok(())
}

/// `image`'s OCI layout as a tar `NAME.tar` in `work` (its ref name is a bare tag: import it
/// with `--tag`); with `tamper`, that blob's bytes are changed (its name kept).
fn layout_tar(work: &tempfile::TempDir, name: &str, image: &Image, tamper: Option<&str>) -> Result<PathBuf> {
    let path = work.path().join(format!("{name}.tar"));
    let mut tar = tar::Builder::new(std::fs::File::create(&path)?);
    let dir = image.layout_dir();
    for file in ["oci-layout", "index.json"] {
        tar.append_path_with_name(dir.join(file), file)?;
    }
    for blob in std::fs::read_dir(dir.join("blobs/sha256"))? {
        let blob = blob?;
        let name = format!("blobs/sha256/{}", blob.file_name().to_string_lossy());
        let mut data = std::fs::read(blob.path())?;
        if tamper.is_some_and(|t| t.ends_with(&*blob.file_name().to_string_lossy())) {
            data[0] ^= 1;
        }
        let mut header = tar::Header::new_gnu();
        header.set_size(data.len() as u64);
        header.set_mode(0o644);
        tar.append_data(&mut header, name, data.as_slice())?;
    }
    tar.into_inner()?.sync_all()?;
    Ok(path)
}

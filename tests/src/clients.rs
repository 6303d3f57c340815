//! containers/image clients (skopeo, podman) pulling through a mirror configured in their own
//! registries.conf, each with its own temp config and state.

use std::path::{Path, PathBuf};
use std::time::Duration;

use anyhow::{bail, ensure, Context, Result};
use tempfile::TempDir;

use crate::hash::sha256_file;
use crate::image::Image;
use crate::util::{run, sha256_hex};

/// How long one client pull may take.
const PULL_LIMIT: Duration = Duration::from_secs(300);

/// A registries.conf where `origin` (`host:port`) is reached through `mirror` (`host:port`), both
/// plain HTTP. With `mirror == None` the client goes straight to the origin.
pub fn registries_conf(origin: &str, mirror: Option<&str>) -> String {
    let mut conf =
        format!("unqualified-search-registries = []\n\n[[registry]]\nlocation = \"{origin}\"\ninsecure = true\n");
    if let Some(mirror) = mirror {
        conf.push_str(&format!("\n[[registry.mirror]]\nlocation = \"{mirror}\"\ninsecure = true\n"));
    }
    conf
}

/// Writes registries.conf and an accept-anything policy.json into a new temp dir.
fn client_dir(prefix: &str, origin: &str, mirror: Option<&str>) -> Result<TempDir> {
    let dir = tempfile::Builder::new().prefix(prefix).tempdir()?;
    std::fs::write(dir.path().join("registries.conf"), registries_conf(origin, mirror))?;
    std::fs::write(dir.path().join("policy.json"), r#"{"default":[{"type":"insecureAcceptAnything"}]}"#)?;
    std::fs::write(dir.path().join("auth.json"), r#"{"auths":{}}"#)?;
    std::fs::create_dir_all(dir.path().join("tmp"))?;
    Ok(dir)
}

/// skopeo with its own registries.conf, policy and auth file.
pub struct Skopeo {
    dir: TempDir,
    copies: usize,
    logins: serde_json::Map<String, serde_json::Value>,
}

impl Skopeo {
    /// A skopeo that pulls `origin` (`host:port`) images through `mirror` (`host:port`), or
    /// directly when `mirror` is `None`.
    pub fn new(origin: &str, mirror: Option<&str>) -> Result<Self> {
        Ok(Self { dir: client_dir("shoal-skopeo-", origin, mirror)?, copies: 0, logins: serde_json::Map::new() })
    }

    /// Stores credentials for `host` in this skopeo's auth file, like `skopeo login` would.
    /// containers/image never sends `--src-creds` to a mirror, only auth-file entries for the
    /// mirror's own host.
    pub fn login(&mut self, host: &str, user: &str, password: &str) -> Result<()> {
        use base64::Engine as _;
        let auth = base64::engine::general_purpose::STANDARD.encode(format!("{user}:{password}"));
        self.logins.insert(host.to_string(), serde_json::json!({ "auth": auth }));
        let file = serde_json::json!({ "auths": self.logins });
        std::fs::write(self.dir.path().join("auth.json"), serde_json::to_vec(&file)?)?;
        Ok(())
    }

    /// `skopeo copy docker://REFERENCE dir:OUT` (REFERENCE is `host:port/name:tag`); returns OUT.
    /// `creds` is `user:password` for the source.
    pub async fn pull(&mut self, reference: &str, creds: Option<&str>) -> Result<PathBuf> {
        self.copies += 1;
        let out = self.dir.path().join(format!("out{}", self.copies));
        let mut cmd = tokio::process::Command::new("skopeo");
        cmd.arg("--registries-conf")
            .arg(self.dir.path().join("registries.conf"))
            .arg("--policy")
            .arg(self.dir.path().join("policy.json"))
            .args(["copy", "--quiet"])
            .arg("--authfile")
            .arg(self.dir.path().join("auth.json"));
        if let Some(creds) = creds {
            cmd.arg("--src-creds").arg(creds);
        }
        cmd.arg(format!("docker://{reference}"))
            .arg(format!("dir:{}", out.display()))
            .env("TMPDIR", self.dir.path().join("tmp"));
        run(&mut cmd, PULL_LIMIT).await?;
        Ok(out)
    }

    /// A fresh skopeo copies `reference` (`host:port/name:tag` on `origin`) through `mirror`
    /// and checks every file against `image`; returns how long the copy took.
    pub async fn pull_verified(origin: &str, mirror: &str, reference: &str, image: &Image) -> Result<Duration> {
        let mut skopeo = Self::new(origin, Some(mirror))?;
        let started = std::time::Instant::now();
        let out = skopeo.pull(reference, None).await?;
        let took = started.elapsed();
        Self::verify_dir(&out, image)?;
        Ok(took)
    }

    /// Checks a `dir:` copy: the manifest is the image's, every blob file hashes to its digest.
    pub fn verify_dir(out: &Path, image: &Image) -> Result<()> {
        let manifest = std::fs::read(out.join("manifest.json")).context("read manifest.json")?;
        ensure!(
            sha256_hex(&manifest) == image.manifest_digest,
            "skopeo manifest {} != {}",
            sha256_hex(&manifest),
            image.manifest_digest
        );
        for blob in image.blobs() {
            let path = out.join(blob.hex());
            let got = sha256_file(&path).with_context(|| format!("skopeo output lacks {}", blob.digest))?;
            ensure!(got == blob.digest, "{} hashes to {got}", path.display());
            ensure!(std::fs::metadata(&path)?.len() == blob.size, "{} has the wrong size", path.display());
        }
        Ok(())
    }
}

/// podman with its own storage (vfs), run root, registries.conf and policy.
pub struct Podman {
    dir: TempDir,
}

impl Podman {
    /// A podman that pulls `origin` images through `mirror` (or directly when `None`).
    pub fn new(origin: &str, mirror: Option<&str>) -> Result<Self> {
        let dir = client_dir("shoal-podman-", origin, mirror)?;
        // Own containers.conf and storage.conf so the machine's settings do not leak in.
        let d = dir.path().display();
        std::fs::write(
            dir.path().join("containers.conf"),
            "[engine]\nevents_logger = \"file\"\ncgroup_manager = \"cgroupfs\"\n",
        )?;
        std::fs::write(
            dir.path().join("storage.conf"),
            format!("[storage]\ndriver = \"vfs\"\ngraphroot = \"{d}/root\"\nrunroot = \"{d}/runroot\"\n"),
        )?;
        Ok(Self { dir })
    }

    fn command(&self) -> tokio::process::Command {
        let d = self.dir.path();
        let mut cmd = tokio::process::Command::new("podman");
        cmd.arg("--root")
            .arg(d.join("root"))
            .arg("--runroot")
            .arg(d.join("runroot"))
            .arg("--tmpdir")
            .arg(d.join("tmp"))
            .args(["--storage-driver", "vfs", "--cgroup-manager", "cgroupfs", "--events-backend", "file"])
            .env("CONTAINERS_REGISTRIES_CONF", d.join("registries.conf"))
            .env("CONTAINERS_CONF", d.join("containers.conf"))
            .env("CONTAINERS_STORAGE_CONF", d.join("storage.conf"))
            .env("TMPDIR", d.join("tmp"));
        cmd
    }

    /// `podman pull REFERENCE` (`host:port/name:tag`), with `creds` (`user:password`) if given.
    pub async fn pull(&self, reference: &str, creds: Option<&str>) -> Result<()> {
        let mut cmd = self.command();
        cmd.args(["pull", "--quiet"]).arg("--signature-policy").arg(self.dir.path().join("policy.json"));
        if let Some(creds) = creds {
            cmd.arg("--creds").arg(creds);
        }
        run(cmd.arg(reference), PULL_LIMIT).await?;
        Ok(())
    }

    /// Checks the pulled image: same manifest digest, the layers' diff_ids are the image's.
    pub async fn verify(&self, reference: &str, image: &Image) -> Result<()> {
        let mut cmd = self.command();
        cmd.args(["image", "inspect", reference]);
        let out = run(&mut cmd, Duration::from_secs(60)).await?;
        let inspect: serde_json::Value = serde_json::from_slice(&out.stdout)?;
        let info = &inspect[0];
        let digest = info["Digest"].as_str().unwrap_or_default();
        ensure!(digest == image.manifest_digest, "podman has digest {digest}, want {}", image.manifest_digest);
        let layers: Vec<&str> = info["RootFS"]["Layers"]
            .as_array()
            .map(|a| a.iter().filter_map(|v| v.as_str()).collect())
            .unwrap_or_default();
        let want: Vec<&str> = image.layers.iter().map(|l| l.digest.as_str()).collect();
        if layers != want {
            bail!("podman layers {layers:?}, want {want:?}");
        }
        // Export the stored layers again and hash them: uncompressed layers come back bit for bit.
        let out_dir = self.dir.path().join("saved");
        let _ = std::fs::remove_dir_all(&out_dir);
        let mut cmd = self.command();
        cmd.args(["save", "--quiet", "--format", "oci-dir", "--uncompressed", "-o"]).arg(&out_dir).arg(reference);
        run(&mut cmd, PULL_LIMIT).await?;
        for layer in &image.layers {
            let got = sha256_file(&out_dir.join("blobs/sha256").join(layer.hex()))?;
            ensure!(got == layer.digest, "podman's stored layer {} hashes to {got}", layer.digest);
        }
        Ok(())
    }
}

//! `shoal config containerd|docker|podman`: the mirror configuration each client needs, printed
//! or written into place (as Dragonfly's dfinit does).
//!
//! containerd learns of every configured registry (it names the origin with `?ns=`); dockerd
//! and podman send no `ns`, so their mirror serves the daemon's default (first) registry.

use std::path::{Path, PathBuf};

use anyhow::{Context, Result};
use clap::{Args, ValueEnum};
use shoal_daemon::config::{Config, Registry};

/// Which client to configure.
#[derive(Clone, Copy, Debug, ValueEnum)]
pub enum Client {
    /// containerd: a hosts.toml per registry under /etc/containerd/certs.d.
    Containerd,
    /// dockerd: registry-mirrors in /etc/docker/daemon.json (docker.io images only).
    Docker,
    /// podman, skopeo, CRI-O: a registries.conf.d drop-in.
    Podman,
}

/// Flags of `shoal config`.
#[derive(Args, Debug)]
pub struct ConfigArgs {
    /// The client to configure.
    client: Client,
    /// The daemon's mirror address as clients reach it.
    #[arg(long, default_value = "127.0.0.1:65001", value_name = "ADDR")]
    mirror: String,
    /// The daemon's config file, to learn its registries.
    #[arg(long, value_name = "FILE")]
    config: Option<PathBuf>,
    /// Registries NAME=URL (as given to the daemon); default: the config file's, else docker.io.
    #[arg(long, value_name = "NAME=URL")]
    registry: Vec<String>,
    /// Write the files instead of printing them.
    #[arg(long)]
    write: bool,
    /// Prefix for the files written (for tests and image builds).
    #[arg(long, default_value = "/", value_name = "DIR")]
    root: PathBuf,
}

/// One configuration file: where it goes and what it holds.
#[derive(Debug, PartialEq, Eq)]
pub struct File {
    /// Absolute path (before the root prefix).
    pub path: PathBuf,
    /// Contents.
    pub contents: String,
}

/// `shoal config`.
pub fn run(args: ConfigArgs) -> Result<()> {
    let mut config = match &args.config {
        Some(p) => Config::load(p)?,
        None => Config::default(),
    };
    if !args.registry.is_empty() {
        config.registry = args.registry.iter().map(|r| Config::parse_registry_flag(r)).collect::<Result<_, _>>()?;
    }
    // Only the registries matter here. The swarm keys need not hold where the clients are
    // configured (a Kubernetes init container has neither the cluster token nor, always, the
    // scheduler's DNS name): the daemon checks them when it starts.
    (config.scheduler, config.bootstrap, config.dht_listen) = (Vec::new(), Vec::new(), None);
    (config.cluster_token, config.cluster_token_file) = (None, None);
    let settings = config.validate()?;
    let files = match args.client {
        Client::Containerd => containerd(&settings.registries, &args.mirror),
        Client::Docker => vec![docker(&read_existing(&args.root, DOCKER_JSON)?, &args.mirror)?],
        Client::Podman => vec![podman(&settings.registries[0], &args.mirror)],
    };
    for f in &files {
        if args.write {
            let dest = args.root.join(f.path.strip_prefix("/").unwrap_or(&f.path));
            if let Some(parent) = dest.parent() {
                std::fs::create_dir_all(parent).with_context(|| format!("creating {}", parent.display()))?;
            }
            std::fs::write(&dest, &f.contents).with_context(|| format!("writing {}", dest.display()))?;
            println!("wrote {}", dest.display());
        } else {
            println!("# {}\n{}", f.path.display(), f.contents);
        }
    }
    if matches!(args.client, Client::Containerd) {
        eprintln!("containerd must read these: set config_path = \"/etc/containerd/certs.d\" under [plugins.\"io.containerd.grpc.v1.cri\".registry], or pass ctr --hosts-dir /etc/containerd/certs.d");
    }
    Ok(())
}

const DOCKER_JSON: &str = "/etc/docker/daemon.json";

fn read_existing(root: &Path, path: &str) -> Result<Option<String>> {
    let full = root.join(path.trim_start_matches('/'));
    match std::fs::read_to_string(&full) {
        Ok(s) => Ok(Some(s)),
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(None),
        Err(e) => Err(e).with_context(|| format!("reading {}", full.display())),
    }
}

/// hosts.toml files: every registry resolves and pulls through the mirror, falling back to the
/// registry itself when the mirror is down.
pub fn containerd(registries: &[Registry], mirror: &str) -> Vec<File> {
    registries
        .iter()
        .map(|r| File {
            path: PathBuf::from(format!("/etc/containerd/certs.d/{}/hosts.toml", r.name)),
            contents: format!(
                "# Written by shoal config containerd\nserver = \"{}\"\n{}\n[host.\"http://{mirror}\"]\n  capabilities = [\"pull\", \"resolve\"]\n",
                r.url.as_str().trim_end_matches('/'),
                // The registry's own CA, for when containerd falls back to it.
                r.ca.as_ref().map(|(path, _)| format!("ca = {:?}\n", path.display().to_string())).unwrap_or_default()
            ),
        })
        .collect()
}

/// daemon.json with `registry-mirrors` set, other keys kept.
pub fn docker(existing: &Option<String>, mirror: &str) -> Result<File> {
    let mut json: serde_json::Value = match existing {
        Some(s) if !s.trim().is_empty() => {
            serde_json::from_str(s).context("existing /etc/docker/daemon.json is not JSON")?
        }
        _ => serde_json::json!({}),
    };
    let obj = json.as_object_mut().context("existing /etc/docker/daemon.json is not a JSON object")?;
    obj.insert("registry-mirrors".into(), serde_json::json!([format!("http://{mirror}")]));
    Ok(File { path: PathBuf::from(DOCKER_JSON), contents: serde_json::to_string_pretty(&json)? + "\n" })
}

/// A registries.conf.d drop-in mirroring the default registry.
pub fn podman(default: &Registry, mirror: &str) -> File {
    File {
        path: PathBuf::from("/etc/containers/registries.conf.d/shoal.conf"),
        contents: format!(
            "# Written by shoal config podman\n[[registry]]\nprefix = \"{name}\"\nlocation = \"{name}\"\n\n[[registry.mirror]]\nlocation = \"{mirror}\"\ninsecure = true\n",
            name = default.name
        ),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn reg(name: &str, url: &str) -> Registry {
        Registry { name: name.into(), url: url.parse().unwrap(), credentials: None, ca: None }
    }

    #[test]
    fn writes_one_hosts_toml_per_registry() {
        let files = containerd(
            &[reg("docker.io", "https://registry-1.docker.io"), reg("127.0.0.1:5000", "http://127.0.0.1:5000")],
            "127.0.0.1:65001",
        );
        assert_eq!(files.len(), 2);
        assert_eq!(files[1].path, PathBuf::from("/etc/containerd/certs.d/127.0.0.1:5000/hosts.toml"));
        let parsed: toml::Value = toml::from_str(&files[0].contents).unwrap();
        assert_eq!(parsed["server"].as_str(), Some("https://registry-1.docker.io"));
        assert_eq!(parsed["host"]["http://127.0.0.1:65001"]["capabilities"].as_array().unwrap().len(), 2);
    }

    #[test]
    fn a_registry_ca_goes_into_its_hosts_toml() {
        let mut harbor = reg("harbor.example", "https://harbor.example");
        harbor.ca = Some((PathBuf::from("/etc/shoal/harbor-ca.pem"), b"PEM".to_vec()));
        let files = containerd(&[harbor, reg("docker.io", "https://registry-1.docker.io")], "127.0.0.1:65001");
        let parsed: toml::Value = toml::from_str(&files[0].contents).unwrap();
        assert_eq!(parsed["ca"].as_str(), Some("/etc/shoal/harbor-ca.pem"));
        assert_eq!(parsed["server"].as_str(), Some("https://harbor.example"));
        let plain: toml::Value = toml::from_str(&files[1].contents).unwrap();
        assert!(plain.get("ca").is_none());
    }

    #[test]
    fn writes_hosts_toml_without_the_swarm_settings_at_hand() {
        // A daemon config with P2P on, as an init container sees it: no token file, no DNS.
        let dir = tempfile::tempdir().unwrap();
        let file = dir.path().join("shoal.toml");
        std::fs::write(
            &file,
            "scheduler = [\"http://shoal-scheduler.invalid:65000\"]\nbootstrap = [\"shoal-dht.invalid:65004\"]\n\
             cluster_token_file = \"/nonexistent/token\"\n[[registry]]\nname = \"a.io\"\nurl = \"https://a.io\"\n",
        )
        .unwrap();
        let args = ConfigArgs {
            client: Client::Containerd,
            mirror: "127.0.0.1:65001".into(),
            config: Some(file),
            registry: Vec::new(),
            write: true,
            root: dir.path().join("host"),
        };
        run(args).unwrap();
        let hosts = std::fs::read_to_string(dir.path().join("host/etc/containerd/certs.d/a.io/hosts.toml")).unwrap();
        assert!(hosts.contains("server = \"https://a.io\""), "{hosts}");
    }

    #[test]
    fn keeps_other_docker_settings() {
        let f =
            docker(&Some(r#"{"log-driver":"json-file","registry-mirrors":["http://old"]}"#.into()), "127.0.0.1:65001")
                .unwrap();
        let v: serde_json::Value = serde_json::from_str(&f.contents).unwrap();
        assert_eq!(v["log-driver"], "json-file");
        assert_eq!(v["registry-mirrors"], serde_json::json!(["http://127.0.0.1:65001"]));
        assert!(docker(&Some("[1]".into()), "x").is_err());
        assert!(docker(&None, "x").is_ok());
    }

    #[test]
    fn podman_drop_in_parses() {
        let f = podman(&reg("docker.io", "https://registry-1.docker.io"), "127.0.0.1:65001");
        let v: toml::Value = toml::from_str(&f.contents).unwrap();
        assert_eq!(v["registry"][0]["mirror"][0]["location"].as_str(), Some("127.0.0.1:65001"));
    }
}

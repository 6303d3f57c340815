//! The Kubernetes manifests in deploy/kubernetes, read as data, and the checks that what they
//! name agrees with itself and with the binary: flags (from `--help`), ConfigMap keys and the
//! TOML in them, the Secret and its key, volumes and mounts, container ports, Services and
//! their target ports, probes, the scheduler URL and the DHT bootstrap name, the init
//! container's hosts.toml step. [`check`] returns every disagreement it finds, so a test can
//! also prove that a broken copy of the manifests is caught. Running them is in `kube_run`.

use std::collections::BTreeMap;
use std::path::Path;

use anyhow::{Context, Result};
use serde::Deserialize;
use serde_json::Value;

use super::Help;

/// Every object of deploy/kubernetes, and its kustomization.
#[derive(Clone)]
pub struct Manifests {
    /// `(file, object)` in file order.
    pub objects: Vec<(String, Value)>,
    pub kustomization: Value,
    /// YAML files in the directory besides kustomization.yaml.
    pub files: Vec<String>,
}

/// `--help` of the subcommands the manifests run.
pub struct Helps {
    pub daemon: Help,
    pub scheduler: Help,
    pub config: Help,
}

impl Helps {
    pub fn load() -> Result<Self> {
        Ok(Self {
            daemon: Help::of(&["daemon"])?,
            scheduler: Help::of(&["scheduler"])?,
            config: Help::of(&["config"])?,
        })
    }
}

impl Manifests {
    pub fn load(dir: &Path) -> Result<Self> {
        let mut objects = Vec::new();
        let mut files = Vec::new();
        let mut kustomization = Value::Null;
        let mut names: Vec<_> = std::fs::read_dir(dir)?.collect::<Result<Vec<_>, _>>()?;
        names.sort_by_key(|e| e.file_name());
        for entry in names {
            let file = entry.file_name().to_string_lossy().into_owned();
            if !file.ends_with(".yaml") {
                continue;
            }
            let text = std::fs::read_to_string(entry.path())?;
            for doc in serde_yaml::Deserializer::from_str(&text) {
                let value = Value::deserialize(doc).with_context(|| format!("parse {file}"))?;
                if value.is_null() {
                    continue;
                }
                if file == "kustomization.yaml" {
                    kustomization = value;
                } else {
                    objects.push((file.clone(), value));
                }
            }
            if file != "kustomization.yaml" {
                files.push(file);
            }
        }
        Ok(Self { objects, kustomization, files })
    }

    /// The object of this kind and name.
    pub fn get(&self, kind: &str, name: &str) -> Option<&Value> {
        self.objects.iter().map(|(_, o)| o).find(|o| o["kind"] == kind && o["metadata"]["name"] == name)
    }

    pub fn get_mut(&mut self, kind: &str, name: &str) -> &mut Value {
        let found =
            self.objects.iter_mut().map(|(_, o)| o).find(|o| o["kind"] == kind && o["metadata"]["name"] == name);
        found.unwrap_or_else(|| panic!("no {kind} {name}"))
    }

    fn of_kind<'a>(&'a self, kinds: &'a [&str]) -> impl Iterator<Item = &'a Value> + 'a {
        self.objects.iter().map(|(_, o)| o).filter(move |o| kinds.iter().any(|k| o["kind"] == *k))
    }

    /// The workloads (Deployments, DaemonSets).
    pub fn workloads(&self) -> impl Iterator<Item = &Value> {
        self.of_kind(&["Deployment", "DaemonSet"])
    }

    /// The keys of the Secret `name`: from the kustomization's secretGenerator or a Secret
    /// object.
    pub fn secret_keys(&self, name: &str) -> Option<Vec<String>> {
        let generated =
            self.kustomization["secretGenerator"].as_array().into_iter().flatten().find(|g| g["name"] == name);
        if let Some(g) = generated {
            let files = g["files"].as_array().into_iter().flatten().filter_map(|f| f.as_str());
            let keys =
                files.map(|f| f.split_once('=').map_or(f, |(k, _)| k).rsplit('/').next().unwrap_or(f).to_owned());
            let literals = g["literals"].as_array().into_iter().flatten().filter_map(|l| l.as_str());
            return Some(keys.chain(literals.filter_map(|l| l.split_once('=').map(|(k, _)| k.to_owned()))).collect());
        }
        let secret = self.get("Secret", name)?;
        let keys = ["data", "stringData"].iter().filter_map(|f| secret[*f].as_object()).flat_map(|m| m.keys().cloned());
        Some(keys.collect())
    }
}

/// Where a path inside a container comes from.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Source {
    ConfigMap { name: String, key: String },
    Secret { name: String, key: String },
    HostPath(String),
    Other(String),
}

/// The volume mounted at the longest mount path that holds `path`, and the rest of the path.
pub fn mount_of<'a>(pod: &'a Value, container: &'a Value, path: &str) -> Option<(&'a Value, String)> {
    let mounts = container["volumeMounts"].as_array()?;
    let (mount, rest) = mounts
        .iter()
        .filter_map(|m| {
            let mp = m["mountPath"].as_str()?.trim_end_matches('/');
            let rest = if path == mp { Some("") } else { path.strip_prefix(mp).and_then(|r| r.strip_prefix('/')) };
            rest.map(|r| (m, mp.len(), r))
        })
        .max_by_key(|(_, len, _)| *len)
        .map(|(m, _, r)| (m, r.to_owned()))?;
    let volume = pod["volumes"].as_array()?.iter().find(|v| v["name"] == mount["name"])?;
    Some((volume, rest))
}

/// What a path inside a container is, through its volume mounts.
pub fn resolve(pod: &Value, container: &Value, path: &str) -> Option<Source> {
    let (volume, rest) = mount_of(pod, container, path)?;
    let key_of = |items: &Value| {
        items.as_array().map_or(Some(rest.clone()), |items| {
            items.iter().find(|i| i["path"] == rest.as_str()).and_then(|i| i["key"].as_str()).map(str::to_owned)
        })
    };
    if let Some(name) = volume["configMap"]["name"].as_str() {
        return Some(Source::ConfigMap { name: name.into(), key: key_of(&volume["configMap"]["items"])? });
    }
    if let Some(name) = volume["secret"]["secretName"].as_str() {
        return Some(Source::Secret { name: name.into(), key: key_of(&volume["secret"]["items"])? });
    }
    if let Some(host) = volume["hostPath"]["path"].as_str() {
        return Some(Source::HostPath(if rest.is_empty() { host.into() } else { format!("{host}/{rest}") }));
    }
    Some(Source::Other(volume["name"].as_str().unwrap_or_default().into()))
}

/// A container's containers: init containers first.
pub fn containers(pod: &Value) -> impl Iterator<Item = &Value> {
    ["initContainers", "containers"].into_iter().flat_map(|f| pod[f].as_array().into_iter().flatten())
}

/// The container's args as strings.
pub fn args(container: &Value) -> Vec<String> {
    container["args"].as_array().into_iter().flatten().filter_map(|a| a.as_str().map(str::to_owned)).collect()
}

/// The value following `--flag` in `args`.
pub fn flag(args: &[String], name: &str) -> Option<String> {
    let long = format!("--{name}");
    let at = args.iter().position(|a| *a == long)?;
    args.get(at + 1).cloned()
}

/// The settings a daemon or scheduler container runs with: its `--config` file's keys, with its
/// flags (`--admin-listen` for `admin_listen`) over them.
pub struct Settings {
    pub config: Option<Source>,
    pub keys: BTreeMap<String, toml::Value>,
}

impl Settings {
    pub fn str(&self, key: &str) -> Option<&str> {
        self.keys.get(key).and_then(|v| v.as_str())
    }

    pub fn list(&self, key: &str) -> Vec<String> {
        self.keys
            .get(key)
            .and_then(|v| v.as_array())
            .into_iter()
            .flatten()
            .filter_map(|v| v.as_str())
            .map(str::to_owned)
            .collect()
    }
}

/// The TOML text of a ConfigMap key.
pub fn config_map_text<'a>(m: &'a Manifests, source: &Source) -> Option<&'a str> {
    let Source::ConfigMap { name, key } = source else { return None };
    m.get("ConfigMap", name)?["data"][key.as_str()].as_str()
}

/// The settings of `container`, or why they cannot be read.
pub fn settings(m: &Manifests, pod: &Value, container: &Value) -> Result<Settings, String> {
    let args = args(container);
    let mut keys = BTreeMap::new();
    let mut config = None;
    if let Some(path) = flag(&args, "config") {
        let source = resolve(pod, container, &path).ok_or(format!("--config {path}: no volume mounted there"))?;
        let text = config_map_text(m, &source).ok_or(format!("--config {path}: {source:?} is not a ConfigMap key"))?;
        let table: toml::Table = toml::from_str(text).map_err(|e| format!("--config {path}: {e}"))?;
        keys.extend(table);
        config = Some(source);
    }
    let mut i = 1;
    while i < args.len() {
        if let Some(name) = args[i].strip_prefix("--") {
            let value = args.get(i + 1).filter(|v| !v.starts_with("--"));
            if let (Some(value), false) = (value, name == "config") {
                keys.insert(name.replace('-', "_"), toml::Value::String(value.clone()));
            }
            i += if value.is_some() { 2 } else { 1 };
        } else {
            i += 1;
        }
    }
    Ok(Settings { config, keys })
}

/// `(listen key, protocol)` of a role's listeners.
pub fn listeners(role: &str) -> &'static [(&'static str, &'static str)] {
    match role {
        "daemon" => &[("mirror_listen", "TCP"), ("admin_listen", "TCP"), ("peer_listen", "UDP"), ("dht_listen", "TCP")],
        "scheduler" => &[("listen", "TCP"), ("admin_listen", "TCP")],
        _ => &[],
    }
}

/// `ip:port` split.
pub fn ip_port(addr: &str) -> Option<(String, u16)> {
    let (ip, port) = addr.rsplit_once(':')?;
    Some((ip.trim_matches(['[', ']']).to_owned(), port.parse().ok()?))
}

/// A container port: `(name, number, protocol)`.
pub fn ports(container: &Value) -> Vec<(String, u64, String)> {
    let ports = container["ports"].as_array().into_iter().flatten();
    ports
        .map(|p| {
            let name = p["name"].as_str().unwrap_or_default().to_owned();
            let proto = p["protocol"].as_str().unwrap_or("TCP").to_owned();
            (name, p["containerPort"].as_u64().unwrap_or(0), proto)
        })
        .collect()
}

/// A port reference (a number or a container port's name) in the pod, as a number.
pub fn port_number(pod: &Value, port: &Value) -> Option<u64> {
    if let Some(n) = port.as_u64() {
        return Some(n);
    }
    let name = port.as_str()?;
    containers(pod).flat_map(ports).find(|(n, _, _)| n == name).map(|(_, number, _)| number)
}

/// Every disagreement in the manifests, as messages naming the object and field.
pub fn check(m: &Manifests, helps: &Helps) -> Vec<String> {
    let mut errors = Vec::new();
    super::kube_checks::namespaces(m, &mut errors);
    for workload in m.workloads() {
        super::kube_checks::workload(m, helps, workload, &mut errors);
    }
    super::kube_checks::services(m, &mut errors);
    super::kube_checks::network_policies(m, &mut errors);
    super::kube_checks::cross_references(m, &mut errors);
    errors
}

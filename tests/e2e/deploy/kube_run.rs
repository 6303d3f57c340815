//! The Kubernetes manifests, checked and run: [`kube::check`] finds no disagreement in
//! deploy/kubernetes and finds each one planted in a copy; the DaemonSet's init container and
//! daemon and the scheduler Deployment's container run with the manifests' exact args, their
//! ConfigMap files and the Secret's file at the paths the mounts give them, in a network
//! namespace of their own, and answer their probes on the ports the manifests name.

use std::path::{Path, PathBuf};

use anyhow::{ensure, Context, Result};
use serde_json::{json, Value};

use super::kube::{self, args, containers, mount_of, ports, Helps, Manifests};
use super::netns::NetNs;
use super::{deploy_dir, is_root, run, shoal_bin};

fn manifests() -> Result<Manifests> {
    Manifests::load(&deploy_dir().join("kubernetes"))
}

#[test]
fn kubernetes_manifests_agree_with_the_binary_and_with_each_other() -> Result<()> {
    let m = manifests()?;
    let helps = Helps::load()?;
    let errors = kube::check(&m, &helps);
    ensure!(errors.is_empty(), "deploy/kubernetes disagrees:\n{}", errors.join("\n"));
    // The ConfigMap's TOML through the binary itself (unknown keys are errors there):
    // `shoal config containerd` loads and validates the daemon's config.
    let text = m.get("ConfigMap", "shoal-daemon").context("no ConfigMap shoal-daemon")?["data"]["shoal.toml"]
        .as_str()
        .context("no shoal.toml")?;
    let dir = tempfile::tempdir()?;
    std::fs::write(dir.path().join("shoal.toml"), text)?;
    let root = dir.path().join("root");
    run(std::process::Command::new(shoal_bin()?)
        .args(["config", "containerd", "--write", "--config"])
        .arg(dir.path().join("shoal.toml"))
        .arg("--root")
        .arg(&root))?;
    let mut typo = text.to_owned();
    typo.push_str("\ncache_sise = \"1GiB\"\n");
    std::fs::write(dir.path().join("typo.toml"), typo)?;
    let refused = std::process::Command::new(shoal_bin()?)
        .args(["config", "containerd", "--config"])
        .arg(dir.path().join("typo.toml"))
        .output()?;
    ensure!(!refused.status.success(), "the binary accepted an unknown key");
    println!(
        "{} objects in {} files agree; flags checked against `shoal daemon|scheduler|config --help`",
        m.objects.len(),
        m.files.len()
    );
    Ok(())
}

/// Changes one thing in a copy of the manifests.
type Mutation = fn(&mut Manifests);

fn daemon_pod(m: &mut Manifests) -> &mut Value {
    &mut m.get_mut("DaemonSet", "shoal-daemon")["spec"]["template"]["spec"]
}

fn set_toml(m: &mut Manifests, config_map: &str, key: &str, from: &str, to: &str) {
    let data = &mut m.get_mut("ConfigMap", config_map)["data"][key];
    let text = data.as_str().unwrap().replace(from, to);
    assert_ne!(data.as_str().unwrap(), text, "{from} not in {config_map}");
    *data = json!(text);
}

#[test]
fn a_broken_copy_of_the_manifests_is_caught() -> Result<()> {
    let helps = Helps::load()?;
    let cases: &[(&str, Mutation, &str)] = &[
        (
            "a made-up flag",
            |m| daemon_pod(m)["containers"][0]["args"].as_array_mut().unwrap().push(json!("--cache-sise")),
            "--cache-sise",
        ),
        (
            "the Service targets another port",
            |m| m.get_mut("Service", "shoal-scheduler")["spec"]["ports"][0]["targetPort"] = json!(65001),
            "targets",
        ),
        ("the Secret's name", |m| daemon_pod(m)["volumes"][1]["secret"]["secretName"] = json!("shoal-token"), "Secret"),
        (
            "the token file's path",
            |m| set_toml(m, "shoal-daemon", "shoal.toml", "/etc/shoal/token/token", "/etc/shoal/token/tokn"),
            "cluster_token_file",
        ),
        (
            "the scheduler's token mount",
            |m| {
                m.get_mut("Deployment", "shoal-scheduler")["spec"]["template"]["spec"]["containers"][0]
                    ["volumeMounts"][1]["mountPath"] = json!("/etc/token")
            },
            "cluster_token_file",
        ),
        (
            "admin moves, probes do not",
            |m| set_toml(m, "shoal-daemon", "shoal.toml", "127.0.0.1:65003", "127.0.0.1:65013"),
            "Probe",
        ),
        ("the DHT port", |m| set_toml(m, "shoal-daemon", "shoal.toml", "0.0.0.0:65004", "0.0.0.0:65014"), "65014"),
        (
            "the peer port's protocol",
            |m| daemon_pod(m)["containers"][0]["ports"][0]["protocol"] = json!("TCP"),
            "65002",
        ),
        (
            "the init container's mirror",
            |m| daemon_pod(m)["initContainers"][0]["args"][5] = json!("127.0.0.1:65011"),
            "--mirror",
        ),
        ("hosts.toml off the node", |m| daemon_pod(m)["initContainers"][0]["args"][7] = json!("/elsewhere"), "--root"),
        ("a mount of no volume", |m| daemon_pod(m)["containers"][0]["volumeMounts"][2]["name"] = json!("date"), "date"),
        (
            "the scheduler URL's port",
            |m| set_toml(m, "shoal-daemon", "shoal.toml", "local:65000", "local:65001"),
            "no port 65001",
        ),
        (
            "the bootstrap Service",
            |m| set_toml(m, "shoal-daemon", "shoal.toml", "shoal-daemon-dht.", "shoal-dht."),
            "no Service shoal-dht",
        ),
        (
            "the scheduler's gRPC port",
            |m| set_toml(m, "shoal-scheduler", "scheduler.toml", "0.0.0.0:65000", "0.0.0.0:65010"),
            "65000",
        ),
        ("a ConfigMap name", |m| daemon_pod(m)["volumes"][0]["configMap"]["name"] = json!("shoal"), "ConfigMap"),
        ("no memory limit", |m| daemon_pod(m)["containers"][0]["resources"]["limits"] = json!({}), "memory"),
        (
            "data_dir off the hostPath",
            |m| set_toml(m, "shoal-daemon", "shoal.toml", "\"/var/lib/shoal\"", "\"/tmp/shoal\""),
            "data_dir",
        ),
    ];
    let clean = manifests()?;
    for (what, mutate, expect) in cases {
        let mut m = clean.clone();
        mutate(&mut m);
        let errors = kube::check(&m, &helps);
        ensure!(
            errors.iter().any(|e| e.to_lowercase().contains(&expect.to_lowercase())),
            "{what}: not caught (want an error naming {expect:?}); errors: {errors:#?}"
        );
    }
    println!("{} planted disagreements, each caught", cases.len());
    Ok(())
}

/// The files a pod's volumes hold, laid out under `root/volumes/<name>`, and each container's
/// view of its file system as `root/c/<container>/<path>` with the mount points linked to those
/// volumes; the cluster token (`token`) in every Secret key.
struct PodFiles {
    root: PathBuf,
}

const TOKEN: &str = "0123456789abcdef0123456789abcdef";

impl PodFiles {
    fn new(m: &Manifests, pod: &Value, root: &Path) -> Result<Self> {
        for v in pod["volumes"].as_array().into_iter().flatten() {
            let dir = root.join("volumes").join(v["name"].as_str().unwrap_or_default());
            std::fs::create_dir_all(&dir)?;
            if let Some(name) = v["configMap"]["name"].as_str() {
                let data =
                    m.get("ConfigMap", name).context("ConfigMap")?["data"].as_object().cloned().unwrap_or_default();
                for (key, text) in data {
                    std::fs::write(dir.join(key), text.as_str().unwrap_or_default())?;
                }
            }
            if let Some(name) = v["secret"]["secretName"].as_str() {
                for key in m.secret_keys(name).unwrap_or_default() {
                    std::fs::write(dir.join(key), format!("{TOKEN}\n"))?;
                }
            }
        }
        for c in containers(pod) {
            let croot = root.join("c").join(c["name"].as_str().unwrap_or_default());
            for mnt in c["volumeMounts"].as_array().into_iter().flatten() {
                let at = croot.join(mnt["mountPath"].as_str().unwrap_or_default().trim_start_matches('/'));
                std::fs::create_dir_all(at.parent().unwrap())?;
                std::os::unix::fs::symlink(root.join("volumes").join(mnt["name"].as_str().unwrap_or_default()), &at)?;
            }
        }
        Ok(Self { root: root.to_owned() })
    }

    /// `path` as container `c` sees it.
    fn path(&self, c: &Value, path: &str) -> String {
        let croot = self.root.join("c").join(c["name"].as_str().unwrap_or_default());
        croot.join(path.trim_start_matches('/')).display().to_string()
    }

    /// The container's args: `$(VAR)` from its env (downward API values made up), absolute
    /// paths into its view; and every ConfigMap TOML it reads with its absolute paths moved the
    /// same way.
    fn args(&self, pod: &Value, c: &Value) -> Result<Vec<String>> {
        let mut out = Vec::new();
        for a in args(c) {
            let a = a.replace("$(NODE_IP)", "127.0.0.1").replace("$(NODE_NAME)", "node-a");
            ensure!(!a.contains("$("), "{a}: a variable this test does not know");
            if a.starts_with('/') {
                if let Some((v, rest)) = mount_of(pod, c, &a) {
                    if v["configMap"].is_object() {
                        self.rewrite_toml(
                            pod,
                            c,
                            &self.root.join("volumes").join(v["name"].as_str().unwrap()).join(rest),
                        )?;
                    }
                }
                out.push(self.path(c, &a));
            } else {
                out.push(a);
            }
        }
        Ok(out)
    }

    fn rewrite_toml(&self, pod: &Value, c: &Value, file: &Path) -> Result<()> {
        fn walk(v: &mut toml::Value, f: &dyn Fn(&str) -> String) {
            match v {
                toml::Value::String(s) if s.starts_with('/') => *s = f(s),
                toml::Value::Array(a) => a.iter_mut().for_each(|x| walk(x, f)),
                toml::Value::Table(t) => t.iter_mut().for_each(|(_, x)| walk(x, f)),
                _ => {}
            }
        }
        let text = std::fs::read_to_string(file)?;
        if text.contains("# rewritten") {
            return Ok(());
        }
        let mut value: toml::Value = toml::from_str(&text)?;
        // Paths the daemon container mounts (data, token) as it sees them.
        let daemon = pod["containers"][0].clone();
        walk(&mut value, &|p| {
            if mount_of(pod, &daemon, p).is_some() {
                self.path(&daemon, p)
            } else {
                self.path(c, p)
            }
        });
        std::fs::write(file, format!("# rewritten\n{}", toml::to_string(&value)?))?;
        Ok(())
    }
}

/// Runs a workload's containers in a fresh network namespace: init containers to completion,
/// then the main container, whose probes must answer `ok` and whose container ports (and so the
/// Services' targets) must be listened on.
fn run_workload(m: &Manifests, kind: &str, name: &str) -> Result<String> {
    let w = m.get(kind, name).with_context(|| format!("no {kind} {name}"))?;
    let pod = &w["spec"]["template"]["spec"];
    let dir = tempfile::Builder::new().prefix("shoal-kube-").tempdir()?;
    let files = PodFiles::new(m, pod, dir.path())?;
    let ns = NetNs::new("kube")?;
    let bin = shoal_bin()?;
    let mut report = String::new();
    for init in pod["initContainers"].as_array().into_iter().flatten() {
        let args = files.args(pod, init)?;
        let log = dir.path().join("init.log");
        let mut child = ns.spawn(&bin, &args, &log)?;
        let deadline = std::time::Instant::now() + std::time::Duration::from_secs(20);
        while child.is_running() && std::time::Instant::now() < deadline {
            std::thread::sleep(std::time::Duration::from_millis(50));
        }
        let out = std::fs::read_to_string(&log)?;
        ensure!(out.contains("wrote "), "init container {}: {out}", init["name"]);
        report.push_str(&format!("init {}: {}", init["name"], out.lines().filter(|l| l.starts_with("wrote")).count()));
        report.push_str(" files written; ");
    }
    let c = &pod["containers"][0];
    let log = dir.path().join("main.log");
    let mut child = ns.spawn(&bin, &files.args(pod, c)?, &log)?;
    for probe in ["readinessProbe", "livenessProbe"] {
        let get = &c[probe]["httpGet"];
        let port = kube::port_number(pod, &get["port"]).context("probe port")?;
        let url = format!(
            "http://{}:{port}{}",
            get["host"].as_str().unwrap_or("127.0.0.1"),
            get["path"].as_str().unwrap_or("/")
        );
        let (status, body) = ns.wait_ok(&url, &mut child);
        let log = std::fs::read_to_string(&log).unwrap_or_default();
        ensure!(status == 200 && body.starts_with("ok"), "{name} {probe} {url}: {status} {body:?}\n{log}");
    }
    let listening = child.listening();
    for (pname, number, proto) in ports(c) {
        ensure!(
            listening.iter().any(|(p, n, ip)| *p == proto && u64::from(*n) == number && ip == "0.0.0.0"),
            "{name}: containerPort {pname} {number}/{proto} is not listened on: {listening:?}"
        );
    }
    ensure!(child.is_running(), "{name} exited: {}", std::fs::read_to_string(&log)?);
    report.push_str(&format!("{name}: probes ok, listening {listening:?}"));
    if kind == "DaemonSet" {
        check_daemon_files(m, pod, dir.path(), &mut report)?;
    }
    Ok(report)
}

/// The init container wrote a hosts.toml per registry into the certs.d hostPath, pointing at
/// the mirror; the daemon made its store on the data hostPath.
fn check_daemon_files(m: &Manifests, pod: &Value, root: &Path, report: &mut String) -> Result<()> {
    let text =
        m.get("ConfigMap", "shoal-daemon").context("ConfigMap")?["data"]["shoal.toml"].as_str().unwrap_or_default();
    let config: toml::Table = toml::from_str(text)?;
    let mirror = config["mirror_listen"].as_str().unwrap_or_default();
    for r in config["registry"].as_array().into_iter().flatten() {
        let name = r["name"].as_str().unwrap_or_default();
        let hosts = root.join(format!("volumes/certs-d/{name}/hosts.toml"));
        let hosts = std::fs::read_to_string(&hosts).with_context(|| format!("{}", hosts.display()))?;
        ensure!(hosts.contains(&format!("[host.\"http://{mirror}\"]")), "{name}: {hosts}");
        ensure!(hosts.contains(&format!("server = \"{}\"", r["url"].as_str().unwrap_or_default())), "{name}: {hosts}");
    }
    let data = pod["volumes"].as_array().into_iter().flatten().find(|v| v["hostPath"]["path"] == "/var/lib/shoal");
    let data = root.join("volumes").join(data.and_then(|v| v["name"].as_str()).context("no data volume")?);
    let entries: Vec<String> =
        std::fs::read_dir(&data)?.filter_map(|e| e.ok()).map(|e| e.file_name().to_string_lossy().into()).collect();
    ensure!(entries.iter().any(|e| e.contains("redb")), "no store in the data hostPath: {entries:?}");
    report.push_str(&format!("; hosts.toml per registry; store in the data hostPath: {entries:?}"));
    Ok(())
}

#[test]
fn the_manifests_containers_run_as_written_and_answer_their_probes() -> Result<()> {
    if !is_root() {
        panic!("needs root (a network namespace per workload); ./scripts/test.sh runs as root");
    }
    let m = manifests()?;
    println!("{}", run_workload(&m, "Deployment", "shoal-scheduler")?);
    println!("{}", run_workload(&m, "DaemonSet", "shoal-daemon")?);
    Ok(())
}

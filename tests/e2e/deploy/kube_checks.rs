//! The checks behind [`super::kube::check`], one function per kind of agreement. Each pushes a
//! message per disagreement and never stops at the first.

use serde_json::Value;

use super::kube::{
    args, containers, flag, ip_port, listeners, port_number, ports, resolve, settings, Helps, Manifests, Settings,
    Source,
};

fn name(o: &Value) -> String {
    format!("{} {}", o["kind"].as_str().unwrap_or("?"), o["metadata"]["name"].as_str().unwrap_or("?"))
}

/// Every object in the kustomization's namespace; the kustomization lists every file.
pub fn namespaces(m: &Manifests, errors: &mut Vec<String>) {
    let ns = m.kustomization["namespace"].as_str().unwrap_or_default();
    for (file, o) in &m.objects {
        let got = if o["kind"] == "Namespace" { &o["metadata"]["name"] } else { &o["metadata"]["namespace"] };
        if got != ns {
            errors.push(format!("{file}: {} is in namespace {got}, the kustomization says {ns:?}", name(o)));
        }
    }
    let mut listed: Vec<String> = m.kustomization["resources"]
        .as_array()
        .into_iter()
        .flatten()
        .filter_map(|r| r.as_str().map(str::to_owned))
        .collect();
    listed.sort();
    let mut files = m.files.clone();
    files.sort();
    if listed != files {
        errors.push(format!("kustomization resources {listed:?} are not the files {files:?}"));
    }
}

/// One Deployment or DaemonSet: selector, volumes, and every container.
pub fn workload(m: &Manifests, helps: &Helps, w: &Value, errors: &mut Vec<String>) {
    let (wname, pod) = (name(w), &w["spec"]["template"]["spec"]);
    let labels = &w["spec"]["template"]["metadata"]["labels"];
    for (k, v) in w["spec"]["selector"]["matchLabels"].as_object().into_iter().flatten() {
        if &labels[k] != v {
            errors.push(format!("{wname}: selector {k}={v} does not match the pod labels {labels}"));
        }
    }
    volumes(m, &wname, pod, errors);
    let images: Vec<&str> =
        m.kustomization["images"].as_array().into_iter().flatten().filter_map(|i| i["name"].as_str()).collect();
    for c in containers(pod) {
        let cname = format!("{wname} container {}", c["name"].as_str().unwrap_or("?"));
        let image = c["image"].as_str().unwrap_or_default();
        if !images.iter().any(|i| image.split(':').next() == Some(i)) {
            errors.push(format!("{cname}: image {image} is not in the kustomization's images {images:?}"));
        }
        container(m, helps, &cname, pod, c, errors);
    }
}

fn volumes(m: &Manifests, wname: &str, pod: &Value, errors: &mut Vec<String>) {
    for v in pod["volumes"].as_array().into_iter().flatten() {
        let vname = v["name"].as_str().unwrap_or_default();
        if !containers(pod)
            .flat_map(|c| c["volumeMounts"].as_array().into_iter().flatten())
            .any(|mnt| mnt["name"] == vname)
        {
            errors.push(format!("{wname}: volume {vname} is mounted by no container"));
        }
        if let Some(cm) = v["configMap"]["name"].as_str() {
            match m.get("ConfigMap", cm) {
                None => errors.push(format!("{wname}: volume {vname}: no ConfigMap {cm}")),
                Some(o) => {
                    for item in v["configMap"]["items"].as_array().into_iter().flatten() {
                        if o["data"][item["key"].as_str().unwrap_or_default()].is_null() {
                            errors.push(format!("{wname}: volume {vname}: ConfigMap {cm} has no key {}", item["key"]));
                        }
                    }
                }
            }
        }
        if let Some(secret) = v["secret"]["secretName"].as_str() {
            match m.secret_keys(secret) {
                None => errors.push(format!("{wname}: volume {vname}: no Secret {secret}")),
                Some(keys) => {
                    for item in v["secret"]["items"].as_array().into_iter().flatten() {
                        if !keys.iter().any(|k| item["key"] == k.as_str()) {
                            errors.push(format!("{wname}: volume {vname}: Secret {secret} has no key {}", item["key"]));
                        }
                    }
                }
            }
        }
    }
}

fn container(m: &Manifests, helps: &Helps, cname: &str, pod: &Value, c: &Value, errors: &mut Vec<String>) {
    for mnt in c["volumeMounts"].as_array().into_iter().flatten() {
        if !pod["volumes"].as_array().into_iter().flatten().any(|v| v["name"] == mnt["name"]) {
            errors.push(format!("{cname}: volumeMount {} names no volume of the pod", mnt["name"]));
        }
    }
    for env in c["env"].as_array().into_iter().flatten() {
        let r = &env["valueFrom"]["secretKeyRef"];
        if let (Some(secret), Some(key)) = (r["name"].as_str(), r["key"].as_str()) {
            if !m.secret_keys(secret).is_some_and(|keys| keys.iter().any(|k| k == key)) {
                errors.push(format!("{cname}: env {}: no key {key} in Secret {secret}", env["name"]));
            }
        }
    }
    resources(cname, c, errors);
    let sc = &c["securityContext"];
    if sc["allowPrivilegeEscalation"] != false
        || !sc["capabilities"]["drop"].as_array().is_some_and(|d| d.iter().any(|x| x == "ALL"))
    {
        errors.push(format!("{cname}: must drop ALL capabilities and disallow privilege escalation (securityContext)"));
    }
    let args = args(c);
    let (role, help) = match args.first().map(String::as_str) {
        Some("daemon") => ("daemon", &helps.daemon),
        Some("scheduler") => ("scheduler", &helps.scheduler),
        Some("config") => ("config", &helps.config),
        other => {
            errors.push(format!("{cname}: args start with {other:?}, not a shoal subcommand this test knows"));
            return;
        }
    };
    for a in args.iter().filter_map(|a| a.strip_prefix("--")) {
        let flag = a.split('=').next().unwrap_or(a);
        if !help.flags.contains(flag) {
            errors.push(format!("{cname}: --{flag} is not a flag of `shoal {role}` (see --help)"));
        }
    }
    if role == "config" {
        init_containerd(m, cname, pod, c, errors);
        return;
    }
    match settings(m, pod, c) {
        Err(e) => errors.push(format!("{cname}: {e}")),
        Ok(s) => served(m, cname, role, pod, c, &s, errors),
    }
}

/// A Kubernetes memory quantity in bytes (Ki, Mi, Gi or plain).
fn quantity(q: &Value) -> Option<u64> {
    let q = q.as_str()?;
    let (n, unit) = q.split_at(q.find(|c: char| !c.is_ascii_digit()).unwrap_or(q.len()));
    let shift = match unit {
        "" => 0,
        "Ki" => 10,
        "Mi" => 20,
        "Gi" => 30,
        _ => return None,
    };
    Some(n.parse::<u64>().ok()? << shift)
}

fn resources(cname: &str, c: &Value, errors: &mut Vec<String>) {
    let r = &c["resources"];
    match (quantity(&r["requests"]["memory"]), quantity(&r["limits"]["memory"])) {
        (Some(req), Some(lim)) if req <= lim => {}
        (req, lim) => {
            errors.push(format!("{cname}: memory request {req:?} and limit {lim:?} must be set, request ≤ limit"))
        }
    }
}

/// A daemon or scheduler container: listeners ↔ container ports ↔ probes; the token file.
fn served(m: &Manifests, cname: &str, role: &str, pod: &Value, c: &Value, s: &Settings, errors: &mut Vec<String>) {
    let host_network = pod["hostNetwork"] == true;
    let mut open = Vec::new();
    for (key, proto) in listeners(role) {
        match s.str(key).and_then(ip_port) {
            Some((ip, port)) => open.push((*key, *proto, ip, u64::from(port))),
            None => errors.push(format!("{cname}: `{key}` must be set to ip:port (in the ConfigMap or a flag)")),
        }
    }
    let declared = ports(c);
    for (pname, number, proto) in &declared {
        if !open.iter().any(|(_, p, ip, port)| p == proto && port == number && (ip == "0.0.0.0" || ip == "::")) {
            errors.push(format!(
                "{cname}: containerPort {pname} {number}/{proto}: nothing listens there on all addresses"
            ));
        }
    }
    for (key, proto, ip, port) in &open {
        let public = ip == "0.0.0.0" || ip == "::";
        if public && !declared.iter().any(|(_, n, p)| n == port && p == proto) {
            errors.push(format!("{cname}: `{key}` listens on {ip}:{port}/{proto}, which no containerPort declares"));
        }
    }
    let admin = open.iter().find(|(k, ..)| *k == "admin_listen").map(|(_, _, ip, port)| (ip.clone(), *port));
    for probe in ["readinessProbe", "livenessProbe"] {
        let get = &c[probe]["httpGet"];
        let Some((ip, port)) = &admin else { continue };
        if get.is_null() {
            errors.push(format!("{cname}: no {probe}.httpGet"));
            continue;
        }
        if port_number(pod, &get["port"]) != Some(*port) || get["path"] != "/healthz" {
            errors.push(format!(
                "{cname}: {probe} GETs {}{}, admin_listen is port {port} (/healthz)",
                get["port"], get["path"]
            ));
        }
        let host = get["host"].as_str();
        let reachable = match host {
            Some(h) => host_network && (h == ip || ip == "0.0.0.0"),
            None => ip == "0.0.0.0" || ip == "::",
        };
        if !reachable {
            errors
                .push(format!("{cname}: {probe} goes to {host:?} (hostNetwork {host_network}), admin listens on {ip}"));
        }
    }
    let annotations = &pod_template_of(m, c)["metadata"]["annotations"];
    if let (Some(p), Some((ip, port))) = (annotations["prometheus.io/port"].as_str(), &admin) {
        if p != port.to_string() || ip != "0.0.0.0" {
            errors.push(format!("{cname}: prometheus.io/port {p}, admin listens on {ip}:{port}"));
        }
    }
    token(cname, role, pod, c, s, m, errors);
    if role == "daemon" {
        let data = s.str("data_dir").and_then(|d| resolve(pod, c, d));
        if !matches!(data, Some(Source::HostPath(_))) {
            errors
                .push(format!("{cname}: data_dir is on {data:?}, not a hostPath: the store would not survive the pod"));
        }
        for ca in
            s.keys.get("registry").and_then(|r| r.as_array()).into_iter().flatten().filter_map(|r| r.get("ca_file"))
        {
            let ca = ca.as_str().unwrap_or_default();
            if resolve(pod, c, ca).is_none() {
                errors.push(format!("{cname}: ca_file {ca} is on no volume"));
            }
        }
    }
}

/// The pod template that holds container `c`.
fn pod_template_of<'a>(m: &'a Manifests, c: &Value) -> &'a Value {
    m.workloads()
        .map(|w| &w["spec"]["template"])
        .find(|t| containers(&t["spec"]).any(|x| x == c))
        .unwrap_or(&Value::Null)
}

fn token(cname: &str, role: &str, pod: &Value, c: &Value, s: &Settings, m: &Manifests, errors: &mut Vec<String>) {
    if s.keys.contains_key("cluster_token") {
        errors.push(format!("{cname}: the cluster token is written in the config or args; use cluster_token_file"));
    }
    let swarm = role == "scheduler" || ["scheduler", "bootstrap", "dht_listen"].iter().any(|k| s.keys.contains_key(*k));
    let Some(file) = s.str("cluster_token_file") else {
        if swarm {
            errors.push(format!("{cname}: P2P is on but cluster_token_file is not set"));
        }
        return;
    };
    match resolve(pod, c, file) {
        Some(Source::Secret { name, key }) if m.secret_keys(&name).is_some_and(|k| k.contains(&key)) => {}
        other => errors.push(format!("{cname}: cluster_token_file {file} is {other:?}, not a key of a Secret")),
    }
}

/// The init container: `shoal config containerd --config C --mirror M --write --root R`.
fn init_containerd(m: &Manifests, cname: &str, pod: &Value, c: &Value, errors: &mut Vec<String>) {
    let init_args = args(c);
    if init_args.get(1).map(String::as_str) != Some("containerd") || !init_args.iter().any(|a| a == "--write") {
        errors.push(format!("{cname}: args {init_args:?} are not `config containerd ... --write`"));
    }
    let daemon = pod["containers"]
        .as_array()
        .into_iter()
        .flatten()
        .find(|x| args(x).first().map(String::as_str) == Some("daemon"));
    let Some(daemon) = daemon else {
        errors.push(format!("{cname}: no daemon container in the pod to configure containerd for"));
        return;
    };
    let (Ok(mine), Ok(theirs)) = (settings(m, pod, c), settings(m, pod, daemon)) else {
        errors.push(format!("{cname}: cannot read its or the daemon's --config"));
        return;
    };
    if mine.config.is_none() || mine.config != theirs.config {
        errors.push(format!("{cname}: --config is {:?}, the daemon's is {:?}", mine.config, theirs.config));
    }
    let mirror = flag(&init_args, "mirror");
    if mirror.is_none() || mirror.as_deref() != theirs.str("mirror_listen") {
        errors.push(format!(
            "{cname}: --mirror {mirror:?}, the daemon's mirror_listen is {:?}",
            theirs.str("mirror_listen")
        ));
    }
    if mirror.as_deref().and_then(ip_port).is_some_and(|(ip, _)| ip.starts_with("127.")) && pod["hostNetwork"] != true {
        errors.push(format!("{cname}: containerd reaches a loopback mirror only with hostNetwork"));
    }
    let certs = flag(&init_args, "root").map(|r| format!("{}/etc/containerd/certs.d", r.trim_end_matches('/')));
    let target = certs.as_deref().and_then(|p| resolve(pod, c, p));
    if target != Some(Source::HostPath("/etc/containerd/certs.d".into())) {
        errors.push(format!(
            "{cname}: --root puts hosts.toml at {certs:?}, which is {target:?}, not the node's /etc/containerd/certs.d"
        ));
    }
    for ca in
        mine.keys.get("registry").and_then(|r| r.as_array()).into_iter().flatten().filter_map(|r| r.get("ca_file"))
    {
        if resolve(pod, c, ca.as_str().unwrap_or_default()).is_none() {
            errors.push(format!("{cname}: ca_file {ca} is on no volume of the init container"));
        }
    }
}

/// Services: the selector picks one workload; every target port is one of its container ports.
pub fn services(m: &Manifests, errors: &mut Vec<String>) {
    for svc in m.objects.iter().map(|(_, o)| o).filter(|o| o["kind"] == "Service") {
        let sname = name(svc);
        let Some(w) = selected(m, &svc["spec"]["selector"]) else {
            errors.push(format!("{sname}: its selector picks no workload"));
            continue;
        };
        let pod = &w["spec"]["template"]["spec"];
        for p in svc["spec"]["ports"].as_array().into_iter().flatten() {
            let target = if p["targetPort"].is_null() { &p["port"] } else { &p["targetPort"] };
            let proto = p["protocol"].as_str().unwrap_or("TCP");
            let number = port_number(pod, target);
            if !containers(pod).flat_map(ports).any(|(_, n, pr)| Some(n) == number && pr == proto) {
                errors.push(format!(
                    "{sname}: port {} targets {target} ({number:?}/{proto}), no such container port in {}",
                    p["port"],
                    name(w)
                ));
            }
        }
    }
}

/// The workload whose pod labels include `selector` (exactly one).
fn selected<'a>(m: &'a Manifests, selector: &Value) -> Option<&'a Value> {
    let sel = selector.as_object()?;
    let mut found =
        m.workloads().filter(|w| sel.iter().all(|(k, v)| &w["spec"]["template"]["metadata"]["labels"][k] == v));
    let first = found.next()?;
    found.next().is_none().then_some(first)
}

/// NetworkPolicies: they select a workload and open only ports it has.
pub fn network_policies(m: &Manifests, errors: &mut Vec<String>) {
    for np in m.objects.iter().map(|(_, o)| o).filter(|o| o["kind"] == "NetworkPolicy") {
        let Some(w) = selected(m, &np["spec"]["podSelector"]["matchLabels"]) else {
            errors.push(format!("{}: its podSelector picks no workload", name(np)));
            continue;
        };
        let pod = &w["spec"]["template"]["spec"];
        let rules = np["spec"]["ingress"].as_array().into_iter().flatten();
        for p in rules.flat_map(|r| r["ports"].as_array().into_iter().flatten()) {
            let number = port_number(pod, &p["port"]);
            if !containers(pod).flat_map(ports).any(|(_, n, _)| Some(n) == number) {
                errors.push(format!("{}: port {} is no container port of {}", name(np), p["port"], name(w)));
            }
        }
    }
}

/// The daemon's `scheduler` URLs and `bootstrap` names are Services of this namespace whose
/// ports lead to the scheduler's `listen` and the daemons' `dht_listen`.
pub fn cross_references(m: &Manifests, errors: &mut Vec<String>) {
    let ns = m.kustomization["namespace"].as_str().unwrap_or_default();
    for w in m.workloads() {
        let pod = &w["spec"]["template"]["spec"];
        for c in pod["containers"]
            .as_array()
            .into_iter()
            .flatten()
            .filter(|c| args(c).first().is_some_and(|a| a == "daemon"))
        {
            let Ok(s) = settings(m, pod, c) else { continue };
            for url in s.list("scheduler") {
                let hostport = url.strip_prefix("http://").unwrap_or(&url).trim_end_matches('/').to_owned();
                service_leads_to(m, ns, &hostport, "scheduler", "listen", false, errors);
            }
            for b in s.list("bootstrap") {
                service_leads_to(m, ns, &b, "daemon", "dht_listen", true, errors);
            }
        }
    }
}

fn service_leads_to(
    m: &Manifests,
    ns: &str,
    hostport: &str,
    role: &str,
    key: &str,
    headless: bool,
    errors: &mut Vec<String>,
) {
    let Some((host, port)) = ip_port(hostport) else {
        errors.push(format!("{hostport}: not host:port"));
        return;
    };
    let svc_name = host.split('.').next().unwrap_or_default();
    let in_ns = host.split('.').nth(1).is_none_or(|n| n == ns);
    let Some(svc) = m.get("Service", svc_name).filter(|_| in_ns) else {
        errors.push(format!("{hostport}: no Service {svc_name} in namespace {ns}"));
        return;
    };
    if headless != (svc["spec"]["clusterIP"] == "None") {
        errors.push(format!("{hostport}: Service {svc_name} must {}be headless", if headless { "" } else { "not " }));
    }
    let Some(w) = selected(m, &svc["spec"]["selector"]) else { return };
    let pod = &w["spec"]["template"]["spec"];
    let sp = svc["spec"]["ports"].as_array().into_iter().flatten().find(|p| p["port"] == port);
    let Some(sp) = sp else {
        errors.push(format!("{hostport}: Service {svc_name} has no port {port}"));
        return;
    };
    let target = port_number(pod, if sp["targetPort"].is_null() { &sp["port"] } else { &sp["targetPort"] });
    let c = pod["containers"].as_array().into_iter().flatten().find(|c| args(c).first().is_some_and(|a| a == role));
    let listen = c.and_then(|c| settings(m, pod, c).ok()).and_then(|s| s.str(key).and_then(ip_port));
    if target.is_none() || target != listen.as_ref().map(|(_, p)| u64::from(*p)) {
        errors
            .push(format!("{hostport}: Service {svc_name} leads to port {target:?}, the {role}'s {key} is {listen:?}"));
    }
}

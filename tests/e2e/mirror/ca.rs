//! Origins with a private CA (issue 10 §5): the real registry serves TLS with a certificate from
//! a CA the test makes (openssl); a daemon whose `[[registry]]` names that CA in `ca_file` pulls
//! through it for skopeo and containerd (whose hosts.toml `shoal config containerd` writes, with
//! the `ca` line); a daemon without `ca_file` refuses, failing closed with a 502 OCI error.

use std::path::Path;

use super::*;

/// Makes `ca.pem` (a CA) and `server.pem`/`server.key` (for 127.0.0.1, signed by it) in `dir`.
async fn private_ca(dir: &Path) -> Result<()> {
    let openssl = |args: &[&str]| {
        let mut cmd = tokio::process::Command::new("openssl");
        cmd.args(args).current_dir(dir);
        cmd
    };
    let ec = ["-newkey", "ec", "-pkeyopt", "ec_paramgen_curve:prime256v1", "-nodes"];
    let mut ca = openssl(&["req", "-x509", "-days", "2", "-subj", "/CN=Shoal e2e private CA", "-keyout", "ca.key"]);
    ca.args(ec).args(["-out", "ca.pem", "-addext", "basicConstraints=critical,CA:TRUE"]);
    ca.args(["-addext", "keyUsage=critical,keyCertSign,cRLSign"]);
    shoal_e2e::run(&mut ca, Duration::from_secs(30)).await?;
    let mut csr = openssl(&["req", "-subj", "/CN=127.0.0.1", "-keyout", "server.key", "-out", "server.csr"]);
    csr.args(ec);
    shoal_e2e::run(&mut csr, Duration::from_secs(30)).await?;
    std::fs::write(
        dir.join("server.ext"),
        "subjectAltName=IP:127.0.0.1\nbasicConstraints=CA:FALSE\nextendedKeyUsage=serverAuth\n",
    )?;
    let mut sign = openssl(&["x509", "-req", "-days", "2", "-in", "server.csr", "-CA", "ca.pem", "-CAkey", "ca.key"]);
    sign.args(["-CAcreateserial", "-out", "server.pem", "-extfile", "server.ext"]);
    shoal_e2e::run(&mut sign, Duration::from_secs(30)).await?;
    Ok(())
}

/// The daemon's config for the TLS origin, with or without its CA.
fn config(registry: &Registry, ca: Option<&Path>) -> String {
    let ca = ca.map(|p| format!("ca_file = {:?}\n", p.display().to_string())).unwrap_or_default();
    format!("[[registry]]\nname = {:?}\nurl = {:?}\n{ca}", registry.host(), registry.url())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_origin_with_a_private_ca_is_trusted_through_ca_file_and_refused_without_it() -> Result<()> {
    require_tools();
    let pki = tempfile::Builder::new().prefix("shoal-ca-").tempdir()?;
    private_ca(pki.path()).await?;
    let ca = pki.path().join("ca.pem");
    let registry = Registry::start_tls(&pki.path().join("server.pem"), &pki.path().join("server.key")).await?;
    ensure!(registry.url().starts_with("https://"), "{}", registry.url());
    let image = Image::build(51, &[6 * MB, 3 * MB])?;
    image.push(&registry, "e2e/ca", "v1").await?;
    let toml = config(&registry, Some(&ca));
    let daemon = Daemon::start(DaemonConfig { config_toml: Some(toml.clone()), ..DaemonConfig::default() }).await?;
    let (origin, mirror) = (registry.host(), daemon.mirror_host());
    let reference = format!("{origin}/e2e/ca:v1");

    // containerd, with the hosts.toml `shoal config containerd` writes from the same config.
    let root = tempfile::Builder::new().prefix("shoal-ca-hosts-").tempdir()?;
    let config_file = root.path().join("shoal.toml");
    std::fs::write(&config_file, &toml)?;
    let mut write = tokio::process::Command::new(Daemon::bin_path());
    write.args(["config", "containerd", "--write", "--mirror", &mirror, "--config"]).arg(&config_file);
    shoal_e2e::run(write.arg("--root").arg(root.path()), Duration::from_secs(20)).await?;
    let hosts_dir = root.path().join("etc/containerd/certs.d");
    let hosts = std::fs::read_to_string(hosts_dir.join(&origin).join("hosts.toml"))?;
    let parsed: toml::Value = toml::from_str(&hosts)?;
    ensure!(parsed["ca"].as_str() == Some(&ca.display().to_string()), "no ca line: {hosts}");
    ensure!(parsed["server"].as_str() == Some(registry.url().as_str()), "{hosts}");
    let containerd = Containerd::start().await?;
    with_log(containerd.pull(&reference, &hosts_dir, None).await, "ctr pull through the mirror", &daemon)?;
    containerd.verify(&reference, &image).await?;
    let mut skopeo = Skopeo::new(&origin, Some(&mirror))?;
    let out = with_log(skopeo.pull(&reference, None).await, "skopeo pull through the mirror", &daemon)?;
    Skopeo::verify_dir(&out, &image)?;
    let bypassed = registry.client_blob_gets();
    ensure!(bypassed.is_empty(), "clients went to the origin themselves: {bypassed:#?}");
    for blob in image.blobs() {
        registry.expect_served_once(&blob).await?;
    }

    // Without ca_file: the system's CAs (and SSL_CERT_FILE, if set) do not know this CA; the
    // daemon refuses with a 502 OCI error, for manifests and blobs, and keeps running.
    let mut blind =
        Daemon::start(DaemonConfig { config_toml: Some(config(&registry, None)), ..DaemonConfig::default() }).await?;
    let client = http();
    let marked = registry.mark();
    let manifest = manifest_request(&client, Method::GET, &blind.mirror_url(), "e2e/ca", "v1").send().await?;
    let blob = format!("{}/v2/e2e/ca/blobs/{}", blind.mirror_url(), image.layers[0].digest);
    let mut refusals = Vec::new();
    for (what, response) in [("manifest", manifest), ("blob", client.get(blob).send().await?)] {
        let status = response.status();
        let body = response.text().await?;
        let codes = oci_error_codes(body.as_bytes()).with_context(|| format!("{what}: {status} {body}"))?;
        ensure!(
            status == StatusCode::BAD_GATEWAY && codes == ["ORIGIN_ERROR"],
            "{what} without ca_file: {status} {body}"
        );
        refusals.push(format!("{what}: {status} {body}"));
    }
    // The operator learns why from the log: the origin's certificate has an unknown issuer.
    let log = blind.stderr_tail();
    ensure!(log.contains("UnknownIssuer") || log.contains("certificate"), "the log does not say why:\n{log}");
    ensure!(blind.is_running(), "the daemon without ca_file died:\n{}", blind.stderr_tail());
    ensure!(!log.contains("panicked"), "{log}");
    let served: Vec<_> = registry.access_log().into_iter().skip(marked).filter(|l| l.status == 200).collect();
    ensure!(served.is_empty(), "the origin answered a daemon that could not verify it: {served:#?}");
    println!(
        "with ca_file: containerd and skopeo pulled {} blobs through the mirror; without:\n{}",
        image.blobs().len(),
        refusals.join("\n")
    );
    Ok(())
}

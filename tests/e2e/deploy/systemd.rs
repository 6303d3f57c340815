//! The systemd units in deploy/systemd: `systemd-analyze verify` accepts them (no unknown key,
//! the binary they start exists); every flag of their ExecStart= and every variable of their
//! Environment= is one the binary documents; the credential the token comes from is the one
//! the environment names; the config file each starts with is the example in deploy/; and each
//! program runs as its unit says — the token from the credential's file through
//! SHOAL_CLUSTER_TOKEN_FILE, as a non-root user with no capability, no new privileges, umask
//! 077 — and answers /healthz.

use std::collections::BTreeMap;
use std::path::Path;
use std::process::Command;

use anyhow::{ensure, Context, Result};
use shoal_e2e::free_port;

use super::{deploy_dir, is_root, read, run, shoal_bin, Help};

/// `Key` → every value, `[Service]` and the rest alike.
fn parse_unit(text: &str) -> BTreeMap<String, Vec<String>> {
    let mut keys: BTreeMap<String, Vec<String>> = BTreeMap::new();
    for line in text.lines().map(str::trim).filter(|l| !l.is_empty() && !l.starts_with(['#', ';', '['])) {
        if let Some((k, v)) = line.split_once('=') {
            keys.entry(k.trim().to_owned()).or_default().push(v.trim().to_owned());
        }
    }
    keys
}

/// The static checks of one unit; returns `(subcommand, config file, env var, credential)`.
fn check_unit(file: &str) -> Result<(String, String, String)> {
    let unit = parse_unit(&read(&deploy_dir().join("systemd").join(file))?);
    let exec = unit.get("ExecStart").and_then(|v| v.first()).context("no ExecStart")?;
    let words: Vec<&str> = exec.split_whitespace().collect();
    ensure!(words.first() == Some(&"/usr/local/bin/shoal"), "{file}: ExecStart {exec}");
    let sub = words.get(1).context("no subcommand")?.to_string();
    let help = Help::of(&[&sub])?;
    for w in words.iter().filter_map(|w| w.strip_prefix("--")) {
        ensure!(help.flags.contains(w.split('=').next().unwrap_or(w)), "{file}: --{w} is not a flag of shoal {sub}");
    }
    let config = words.iter().position(|w| *w == "--config").and_then(|i| words.get(i + 1)).context("no --config")?;
    let example = Path::new(config).file_name().context("config name")?.to_string_lossy().into_owned();
    ensure!(
        deploy_dir().join(&example).is_file(),
        "{file}: --config {config}, but no deploy/{example} to install there"
    );
    let (cred, cred_path) = unit
        .get("LoadCredential")
        .and_then(|v| v.first())
        .and_then(|c| c.split_once(':'))
        .context("no LoadCredential=")?;
    ensure!(cred_path.starts_with("/etc/shoal/"), "{file}: the token file {cred_path}");
    let env = unit.get("Environment").into_iter().flatten().find_map(|e| e.strip_prefix("SHOAL_CLUSTER_TOKEN_FILE="));
    ensure!(env == Some(&format!("%d/{cred}")), "{file}: SHOAL_CLUSTER_TOKEN_FILE={env:?}, the credential is {cred}");
    ensure!(help.env.contains("SHOAL_CLUSTER_TOKEN_FILE"), "shoal {sub} does not read SHOAL_CLUSTER_TOKEN_FILE");
    for e in unit.get("Environment").into_iter().flatten() {
        let var = e.split('=').next().unwrap_or_default();
        ensure!(help.env.contains(var), "{file}: Environment={var} is not read by shoal {sub}");
    }
    ensure!(unit.get("CapabilityBoundingSet").is_some_and(|v| v == &[""]), "{file}: keeps capabilities");
    if sub == "daemon" {
        let toml: toml::Table = toml::from_str(&read(&deploy_dir().join(&example))?)?;
        let state = unit.get("StateDirectory").and_then(|v| v.first()).context("no StateDirectory=")?;
        ensure!(
            toml["data_dir"].as_str() == Some(&format!("/var/lib/{state}")),
            "{file}: StateDirectory={state}, data_dir {}",
            toml["data_dir"]
        );
    }
    Ok((sub, example, cred.to_owned()))
}

/// `systemd-analyze verify` with the units and the binary in a root of their own (and the
/// system's unit library, for the targets they name). Any warning fails.
fn analyze(units: &[&str]) -> Result<()> {
    let root = tempfile::Builder::new().prefix("shoal-systemd-").tempdir()?;
    let system = root.path().join("etc/systemd/system");
    std::fs::create_dir_all(&system)?;
    std::fs::create_dir_all(root.path().join("usr/local/bin"))?;
    std::fs::create_dir_all(root.path().join("usr/lib/systemd"))?;
    run(Command::new("cp").arg("-r").arg("/usr/lib/systemd/system").arg(root.path().join("usr/lib/systemd/")))?;
    let bin = root.path().join("usr/local/bin/shoal");
    let source = shoal_bin()?;
    std::fs::hard_link(&source, &bin).or_else(|_| std::fs::copy(&source, &bin).map(|_| ()))?;
    for u in units {
        std::fs::copy(deploy_dir().join("systemd").join(u), system.join(u))?;
    }
    let out = run(Command::new("systemd-analyze")
        .arg("verify")
        .arg(format!("--root={}", root.path().display()))
        .args(units))?;
    let noise = String::from_utf8_lossy(&out.stderr).into_owned() + &String::from_utf8_lossy(&out.stdout);
    ensure!(noise.trim().is_empty(), "systemd-analyze verify: {noise}");
    Ok(())
}

/// Runs `shoal SUB --config deploy/EXAMPLE` as its unit would: the token from a credential file
/// named by SHOAL_CLUSTER_TOKEN_FILE, as UID 65532 without capabilities or new privileges; the
/// listeners moved to free loopback ports (and the daemon's data_dir to a temp dir).
fn run_like_the_unit(sub: &str, example: &str, cred: &str) -> Result<String> {
    let dir = tempfile::Builder::new().prefix("shoal-unit-").tempdir()?;
    std::fs::set_permissions(dir.path(), std::os::unix::fs::PermissionsExt::from_mode(0o755))?;
    let creds = dir.path().join("credentials");
    std::fs::create_dir(&creds)?;
    std::fs::write(creds.join(cred), "0123456789abcdef0123456789abcdef\n")?;
    let data = dir.path().join("state");
    std::fs::create_dir(&data)?;
    run(Command::new("chown").args(["-R", "65532:65532"]).arg(&creds).arg(&data))?;
    let admin = free_port();
    let mut cmd = Command::new("setpriv");
    cmd.args(["--reuid", "65532", "--regid", "65532", "--clear-groups", "--inh-caps=-all", "--bounding-set=-all"]);
    cmd.args(["--no-new-privs", "--pdeathsig", "KILL", "--"]).arg(shoal_bin()?).arg(sub);
    cmd.arg("--config").arg(deploy_dir().join(example)).env("SHOAL_CLUSTER_TOKEN_FILE", creds.join(cred));
    cmd.env_remove("SHOAL_CLUSTER_TOKEN").arg("--admin-listen").arg(format!("127.0.0.1:{admin}"));
    match sub {
        "daemon" => cmd.arg("--mirror-listen").arg(format!("127.0.0.1:{}", free_port())).arg("--data-dir").arg(&data),
        _ => cmd.arg("--listen").arg(format!("127.0.0.1:{}", free_port())),
    };
    let log = dir.path().join("log");
    let mut child = cmd.stdout(std::fs::File::create(&log)?).stderr(std::fs::File::create(&log)?).spawn()?;
    let url = format!("http://127.0.0.1:{admin}/healthz");
    let mut body = String::new();
    for _ in 0..200 {
        if let Ok(out) = Command::new("curl").args(["-fsS", "--max-time", "2", &url]).output() {
            body = String::from_utf8_lossy(&out.stdout).into_owned();
            if out.status.success() || !matches!(child.try_wait(), Ok(None)) {
                break;
            }
        }
        std::thread::sleep(std::time::Duration::from_millis(100));
    }
    let status = std::fs::read_to_string(format!("/proc/{}/status", child.id())).unwrap_or_default();
    let _ = child.kill();
    let _ = child.wait();
    ensure!(body.starts_with("ok"), "shoal {sub} as its unit runs it: /healthz {body:?}\n{}", read(&log)?);
    let field = |k: &str| {
        status.lines().find(|l| l.starts_with(k)).map(|l| l.split_whitespace().nth(1).unwrap_or("").to_owned())
    };
    ensure!(
        field("Uid:").as_deref() == Some("65532") && field("CapEff:").as_deref() == Some("0000000000000000"),
        "{status}"
    );
    Ok(format!("shoal {sub}: /healthz ok as uid 65532, CapEff 0, token from ${{CREDENTIALS_DIRECTORY}}/{cred}"))
}

#[test]
fn systemd_units_name_what_the_binary_has_and_run_as_they_say() -> Result<()> {
    let units = ["shoal-daemon.service", "shoal-scheduler.service"];
    let mut checked = Vec::new();
    for unit in units {
        checked.push(check_unit(unit)?);
    }
    analyze(&units)?;
    println!("systemd-analyze verify: no warning for {units:?}");
    if is_root() {
        for (sub, example, cred) in &checked {
            println!("{}", run_like_the_unit(sub, example, cred)?);
        }
    }
    Ok(())
}

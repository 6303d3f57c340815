//! Long-running processes of the swarm benchmark (registry, scheduler, daemons), each inside a
//! network namespace, SIGKILLed on drop and also when the benchmark dies (`setpriv --pdeathsig`).

use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use anyhow::{bail, Context, Result};

use crate::netns::{ns_path, sh};

/// A child process killed on drop, with its output in `log`.
pub struct Proc {
    pub name: String,
    pub log: PathBuf,
    child: Option<Child>,
}

impl Proc {
    /// Spawns `program args…` inside namespace `ns` (or in this namespace when `ns` is `None`),
    /// stdout+stderr appended to `log`.
    pub fn spawn(
        name: &str,
        ns: Option<&str>,
        program: &Path,
        args: &[String],
        env: &[(&str, String)],
        log: &Path,
    ) -> Result<Self> {
        let mut cmd = Command::new("setpriv");
        cmd.args(["--pdeathsig", "KILL", "--"]);
        if let Some(ns) = ns {
            cmd.arg("nsenter").arg(format!("--net={}", ns_path(ns))).arg("--");
        }
        cmd.arg(program).args(args);
        for (k, v) in env {
            cmd.env(k, v);
        }
        let out = std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(log)
            .with_context(|| format!("open {}", log.display()))?;
        let child = cmd
            .stdin(Stdio::null())
            .stdout(out.try_clone()?)
            .stderr(out)
            .spawn()
            .with_context(|| format!("spawn {name}: {cmd:?}"))?;
        Ok(Self { name: name.to_string(), log: log.to_path_buf(), child: Some(child) })
    }

    pub fn pid(&self) -> Option<u32> {
        self.child.as_ref().map(Child::id)
    }

    pub fn is_running(&mut self) -> bool {
        matches!(self.child.as_mut().map(Child::try_wait), Some(Ok(None)))
    }

    /// The last `max` bytes of its log.
    pub fn tail(&self, max: usize) -> String {
        shoal_e2e::tail(&self.log, max)
    }

    /// Polls `url` with curl from inside `ns` until it answers 2xx (at most `limit`).
    pub async fn wait_http(&mut self, ns: Option<&str>, url: &str, limit: Duration) -> Result<()> {
        let deadline = Instant::now() + limit;
        loop {
            let mut cmd = match ns {
                Some(ns) => crate::netns::in_ns(ns, "curl"),
                None => Command::new("curl"),
            };
            if sh(cmd.args(["-sf", "-o", "/dev/null", "--max-time", "2", url])).is_ok() {
                return Ok(());
            }
            if !self.is_running() || Instant::now() >= deadline {
                bail!("{} did not answer {url} within {limit:?}; log:\n{}", self.name, self.tail(3000));
            }
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
    }

    pub fn kill(&mut self) {
        if let Some(mut child) = self.child.take() {
            if let Ok(None) = child.try_wait() {
                let _ = child.kill();
            }
            let _ = child.wait();
        }
    }
}

impl Drop for Proc {
    fn drop(&mut self) {
        self.kill();
    }
}

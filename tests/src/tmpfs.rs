//! A small tmpfs mounted for one test (a data dir that fills up), unmounted on drop. Needs root,
//! as the e2e tests run (`./scripts/test.sh`).

use std::path::{Path, PathBuf};

use anyhow::{bail, Context, Result};

/// A mounted tmpfs.
pub struct Tmpfs {
    dir: PathBuf,
}

impl Tmpfs {
    /// Mounts a tmpfs of `size` bytes at `dir` (created if missing).
    pub fn mount(dir: &Path, size: u64) -> Result<Self> {
        std::fs::create_dir_all(dir)?;
        let status = std::process::Command::new("mount")
            .args(["-t", "tmpfs", "-o", &format!("size={size}"), "tmpfs"])
            .arg(dir)
            .status()
            .context("running mount (the disk tests need root)")?;
        if !status.success() {
            bail!("mount -t tmpfs at {} failed: {status} (the disk tests need root)", dir.display());
        }
        Ok(Self { dir: dir.to_path_buf() })
    }

    /// Bytes available on it.
    pub fn free(&self) -> Result<u64> {
        let out = std::process::Command::new("df").args(["-B1", "--output=avail"]).arg(&self.dir).output()?;
        let text = String::from_utf8_lossy(&out.stdout);
        text.lines().nth(1).and_then(|l| l.trim().parse().ok()).context("parsing df output")
    }

    /// Writes a file of zeros named `name` until at most `leave` bytes are free (or the file
    /// system is full). Returns its size.
    pub fn fill(&self, name: &str, leave: u64) -> Result<u64> {
        use std::io::Write;
        let mut file = std::fs::File::create(self.dir.join(name))?;
        let chunk = vec![0u8; 1 << 20];
        let mut written = 0u64;
        // Bounded: the file system is finite and every pass writes or stops.
        loop {
            let free = self.free()?;
            if free <= leave {
                break;
            }
            let n = (free - leave).min(chunk.len() as u64) as usize;
            match file.write_all(&chunk[..n]) {
                Ok(()) => written += n as u64,
                Err(e) if e.raw_os_error() == Some(28) => break,
                Err(e) => return Err(e.into()),
            }
        }
        file.sync_all().ok();
        Ok(written)
    }

    /// Deletes a file written by [`Tmpfs::fill`].
    pub fn remove(&self, name: &str) -> Result<()> {
        Ok(std::fs::remove_file(self.dir.join(name))?)
    }
}

impl Drop for Tmpfs {
    fn drop(&mut self) {
        let _ = std::process::Command::new("umount").arg("-l").arg(&self.dir).status();
    }
}

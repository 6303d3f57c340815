//! `shoal cache ls|rm|pin`: a daemon's cache as the operator manages it, over the admin API
//! (`GET /cache`, `POST /cache/rm`, `POST /cache/pin`). Only shows and asks; the daemon decides.

use std::time::Duration;

use anyhow::{bail, Context, Result};
use clap::{Args, Subcommand};
use shoal_core::size::format_size;
use shoal_daemon::api::wire::{CacheChange, CacheListing, CacheTarget};

/// Flags of `shoal cache`.
#[derive(Args, Debug)]
pub struct CacheArgs {
    /// The daemon's admin address.
    #[arg(long, default_value = "127.0.0.1:65003", value_name = "ADDR", global = true)]
    admin: String,
    #[command(subcommand)]
    command: CacheCommand,
}

#[derive(Subcommand, Debug)]
enum CacheCommand {
    /// List imported images and every blob: size, state, pinned, in use, last access, expiry.
    Ls {
        /// Print the daemon's JSON answer instead of tables.
        #[arg(long)]
        json: bool,
    },
    /// Remove a blob (`sha256:…`) or an imported image (`REGISTRY/REPOSITORY:TAG`); refused for
    /// a blob being served or downloaded, or pinned.
    Rm {
        /// A blob digest or an imported image.
        target: String,
    },
    /// Pin a blob or an imported image (never evicted), or unpin it with --unpin.
    Pin {
        /// A blob digest or an imported image.
        target: String,
        /// Unpin instead.
        #[arg(long)]
        unpin: bool,
    },
}

/// `shoal cache`.
pub fn run(args: CacheArgs) -> Result<()> {
    let rt = tokio::runtime::Builder::new_current_thread().enable_all().build()?;
    rt.block_on(async {
        let client = reqwest::Client::builder().timeout(Duration::from_secs(60)).build()?;
        let base = format!("http://{}", args.admin);
        match args.command {
            CacheCommand::Ls { json } => {
                let text = answer(client.get(format!("{base}/cache")), &args.admin).await?;
                if json {
                    println!("{text}");
                } else {
                    print!("{}", tables(&serde_json::from_str(&text)?));
                }
            }
            CacheCommand::Rm { target } => {
                let req = client.post(format!("{base}/cache/rm")).json(&CacheTarget { target, pin: false });
                let change: CacheChange = serde_json::from_str(&answer(req, &args.admin).await?)?;
                print_change("removed", &change);
            }
            CacheCommand::Pin { target, unpin } => {
                let req = client.post(format!("{base}/cache/pin")).json(&CacheTarget { target, pin: !unpin });
                let change: CacheChange = serde_json::from_str(&answer(req, &args.admin).await?)?;
                print_change(if unpin { "unpinned" } else { "pinned" }, &change);
            }
        }
        Ok(())
    })
}

/// Sends `req`; the body of a success, or the daemon's error message.
async fn answer(req: reqwest::RequestBuilder, admin: &str) -> Result<String> {
    let resp = req.send().await.with_context(|| format!("daemon admin at {admin} unreachable"))?;
    let status = resp.status();
    let text = resp.text().await?;
    if !status.is_success() {
        bail!("{status}: {}", crate::import_cmd::error_message(&text));
    }
    Ok(text)
}

fn print_change(what: &str, change: &CacheChange) {
    for i in &change.images {
        println!("{what} image {i}");
    }
    for b in &change.blobs {
        println!("{what} blob {b}");
    }
}

/// When, as a short text relative to now.
fn when(ms: u64, now: u64) -> String {
    let secs = ms.abs_diff(now) / 1000;
    let text = match secs {
        s if s < 120 => format!("{s}s"),
        s if s < 7200 => format!("{}m", s / 60),
        s if s < 172_800 => format!("{}h", s / 3600),
        s => format!("{}d", s / 86_400),
    };
    if ms >= now {
        format!("in {text}")
    } else {
        format!("{text} ago")
    }
}

fn tables(l: &CacheListing) -> String {
    let now = shoal_daemon::api::now_ms();
    let mut out =
        format!("{:<48} {:<19} {:>10} {:>5} {:>6} {:>10}\n", "IMAGE", "DIGEST", "SIZE", "BLOBS", "PINNED", "EXPIRES");
    for i in &l.images {
        out.push_str(&format!(
            "{:<48} {:<19} {:>10} {:>5} {:>6} {:>10}\n",
            i.name,
            &i.digest.to_string()[..19],
            format_size(i.size),
            i.blobs,
            if i.pinned { "yes" } else { "no" },
            i.expires.map_or("never".into(), |e| when(e, now))
        ));
    }
    out.push_str(&format!(
        "\n{:<71} {:>10} {:<8} {:>6} {:>6} {:>10} {:>10}\n",
        "BLOB", "SIZE", "STATE", "PINNED", "IN USE", "ACCESSED", "EXPIRES"
    ));
    for b in &l.blobs {
        out.push_str(&format!(
            "{:<71} {:>10} {:<8} {:>6} {:>6} {:>10} {:>10}\n",
            b.digest.to_string(),
            format_size(b.size),
            b.state,
            if b.pinned { "yes" } else { "no" },
            if b.in_use { "yes" } else { "no" },
            when(b.last_access, now),
            b.expires.map_or("-".into(), |e| when(e, now))
        ));
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn renders_times() {
        assert_eq!(when(10_000, 70_000), "60s ago");
        assert_eq!(when(7_200_000 * 24, 0), "in 2d");
        let l = CacheListing::default();
        assert!(tables(&l).contains("IMAGE") && tables(&l).contains("BLOB"));
    }
}

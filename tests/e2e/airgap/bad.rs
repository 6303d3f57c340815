//! c. Bad archives, written here: each gets a clear error from `shoal import` and leaves the
//! cache as it was (`shoal cache ls` before and after); the daemon checks an upload itself too.

use std::io::Write as _;

use anyhow::{ensure, Result};
use shoal_e2e::{Daemon, DaemonConfig, Image, Registry};

use super::{admin_addr, cache_ls, import, layout_tar, require_tools, shoal, workdir, MB};

/// A tar of raw entries: (path bytes as written, type, link name, data); no checks applied.
fn raw_tar(entries: &[(&str, tar::EntryType, &str, &[u8])]) -> Vec<u8> {
    let mut b = tar::Builder::new(Vec::new());
    for (path, kind, link, data) in entries {
        let mut h = tar::Header::new_gnu();
        h.set_entry_type(*kind);
        h.set_size(data.len() as u64);
        h.set_mode(0o644);
        h.as_old_mut().name[..path.len()].copy_from_slice(path.as_bytes());
        h.as_old_mut().linkname[..link.len()].copy_from_slice(link.as_bytes());
        h.set_cksum();
        b.append(&h, *data).expect("in-memory tar");
    }
    b.into_inner().expect("in-memory tar")
}

fn gzip(data: &[u8]) -> Vec<u8> {
    let mut gz = flate2::write::GzEncoder::new(Vec::new(), flate2::Compression::fast());
    gz.write_all(data).expect("in-memory gzip");
    gz.finish().expect("in-memory gzip")
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn bad_archives_get_clear_errors_and_change_nothing() -> Result<()> {
    require_tools();
    let registry = Registry::start().await?;
    let origin = registry.host();
    let tag = format!("{origin}/airgap/bad:v1");
    let image = Image::build(61, &[MB])?;
    let work = workdir()?;
    let daemon = Daemon::start(DaemonConfig::for_registry(&registry)).await?;
    let good = layout_tar(&work, "good", &image, None)?;
    import(&daemon, &good, &["--tag", &format!("{origin}/airgap/good:v1")]).await?;
    let before = cache_ls(&daemon).await?;

    let good_bytes = std::fs::read(&good)?;
    let tampered = std::fs::read(layout_tar(&work, "tampered", &image, Some(image.layers[0].hex()))?)?;
    let regular = tar::EntryType::Regular;
    let huge_manifest = [b"{".as_slice(), &vec![b' '; 5 << 20], b"}"].concat();
    let cases: Vec<(&str, Vec<u8>, &str)> = vec![
        ("truncated", good_bytes[..good_bytes.len() / 2 + 100].to_vec(), "truncated"),
        ("truncated gzip", gzip(&good_bytes)[..good_bytes.len() / 3].to_vec(), "truncated"),
        ("wrong digest", tampered, "hash to"),
        ("parent dir", raw_tar(&[("../x", regular, "", b"x")]), "leaves the archive"),
        ("absolute path", raw_tar(&[("/etc/shoal-x", regular, "", b"x")]), "is absolute"),
        ("symlink", raw_tar(&[("manifest.json", tar::EntryType::Symlink, "/etc/passwd", b"")]), "not followed"),
        ("device", raw_tar(&[("manifest.json", tar::EntryType::Char, "", b"")]), "special file"),
        ("huge manifest.json", raw_tar(&[("manifest.json", regular, "", &huge_manifest)]), "at most 4194304 bytes"),
        ("huge header", raw_tar(&[("x", tar::EntryType::GNULongName, "", &vec![b'a'; 1 << 20])]), "extension header"),
        ("not a tar", b"hello, this is not an archive at all".repeat(40), "not a tar archive"),
    ];
    for (what, bytes, want) in &cases {
        let path = work.path().join(format!("{}.bad", what.replace(' ', "-")));
        std::fs::write(&path, bytes)?;
        let out = shoal(&["import", &path.display().to_string(), "--tag", &tag, "--admin", &admin_addr(&daemon)], None)
            .await?;
        ensure!(!out.ok, "{what}: imported:\n{}", out.stdout);
        ensure!(out.stderr.contains(want), "{what}: the error does not say {want:?}:\n{}", out.stderr);
        println!("{what}: {}", out.stderr.lines().filter(|l| !l.trim().is_empty()).collect::<Vec<_>>().join(" / "));
    }

    // The daemon checks an upload by itself: a blob whose bytes are not its digest.
    let manifest = String::from_utf8(image.manifest.clone())?;
    let header = serde_json::json!({
        "images": [{"registry": origin, "repository": "airgap/raw", "tag": "v1", "digest": image.manifest_digest}],
        "manifests": [{"digest": image.manifest_digest, "media_type": "application/vnd.oci.image.manifest.v1+json", "body": manifest}],
        "blobs": image.blobs().iter().map(|b| serde_json::json!({"digest": b.digest, "size": b.size})).collect::<Vec<_>>(),
    });
    let head = serde_json::to_vec(&header)?;
    let mut body = (head.len() as u32).to_be_bytes().to_vec();
    body.extend_from_slice(&head);
    for b in image.blobs() {
        let mut data = std::fs::read(image.blob_path(&b))?;
        data[0] ^= 1;
        body.extend_from_slice(&data);
    }
    let resp = reqwest::Client::new().post(format!("{}/import", daemon.admin_url())).body(body).send().await?;
    let status = resp.status();
    let text = resp.text().await?;
    ensure!(status == 400 && text.contains("hash to"), "a forged upload: {status} {text}");

    let after = cache_ls(&daemon).await?;
    ensure!(before == after, "the cache changed:\nbefore {before:#}\nafter {after:#}");
    let staged = std::fs::read_dir(daemon.data_dir().join("import"))?.count();
    ensure!(staged == 0, "{staged} staging directories left behind");
    Ok(())
}

//! Reading an image archive for `shoal import`: a `docker save` tar (`manifest.json`, possibly
//! with the newer OCI index beside it) or an OCI image-layout tar (`oci-layout`, `index.json`,
//! `blobs/sha256/…`), plain or gzip (told by its magic bytes).
//!
//! [`walk`] is the one place tar entries are read, and it is hostile-input code: only regular
//! files and directories are read, links are noted but never followed (a layout that names one
//! is refused), devices and sparse files are refused, every path must be relative without `..`, extension headers (GNU long names, PAX) and paths are bounded, and so
//! is the number of entries. [`scan`] hashes every file (sha256; for a gzip layer also its
//! uncompressed content) and keeps the small JSON ones in memory, bounded in total. It never
//! writes anywhere: what it found is turned into an upload by `import_cmd`.

use std::collections::HashMap;
use std::io::{BufRead, BufReader, Read, Write};
use std::path::{Component, Path};

use anyhow::{bail, ensure, Context, Result};
use sha2::{Digest as _, Sha256};
use shoal_core::Digest;

/// Most entries an archive may hold.
pub const MAX_ENTRIES: usize = 100_000;
/// Longest path in an archive, bytes.
const MAX_PATH: usize = 4096;
/// Largest extension header (GNU long name or link, PAX records), bytes.
const MAX_EXTENSION: u64 = 64 << 10;
/// Largest JSON file kept in memory (manifest.json, index.json, manifests, configs), bytes.
pub const MAX_JSON: u64 = 4 << 20;
/// JSON kept in memory at most, all files together, bytes.
const MAX_JSON_TOTAL: u64 = 256 << 20;

/// What the scan learnt of one file.
#[derive(Debug, Clone)]
pub struct FileInfo {
    /// sha256 of its bytes.
    pub digest: Digest,
    /// Its size.
    pub size: u64,
    /// Its bytes, when it is small and looks like JSON.
    pub json: Option<Vec<u8>>,
    /// For a gzip file, sha256 of its uncompressed content (a layer's diff id).
    pub uncompressed: Option<Digest>,
}

/// Every file of an archive, by path (`./` prefixes removed).
#[derive(Debug, Default)]
pub struct Scan {
    /// Files by path.
    pub files: HashMap<String, FileInfo>,
    /// Paths in archive order.
    pub order: Vec<String>,
    /// Links (symbolic or hard), which are never followed.
    pub links: Vec<String>,
}

impl Scan {
    /// The file at `path`, or a clear error.
    pub fn file(&self, path: &str) -> Result<&FileInfo> {
        if self.links.iter().any(|l| l == path) {
            bail!("{path} is a symbolic or hard link: links in an archive are not followed");
        }
        self.files.get(path).with_context(|| format!("the archive has no {path}"))
    }

    /// True when the archive has `path` (a file, or a link it will refuse to follow).
    pub fn has(&self, path: &str) -> bool {
        self.files.contains_key(path) || self.links.iter().any(|l| l == path)
    }

    /// The JSON file at `path`, parsed.
    pub fn json(&self, path: &str) -> Result<serde_json::Value> {
        let f = self.file(path)?;
        let bytes =
            f.json.as_ref().with_context(|| format!("{path} is not a JSON file of at most {MAX_JSON} bytes"))?;
        serde_json::from_slice(bytes).with_context(|| format!("{path} is not valid JSON"))
    }
}

/// Opens an archive, decompressing it if it starts with the gzip magic bytes.
pub fn open(path: &Path) -> Result<Box<dyn Read>> {
    let file = std::fs::File::open(path).with_context(|| format!("cannot open {}", path.display()))?;
    let mut reader = BufReader::with_capacity(1 << 20, file);
    let gzip = reader.fill_buf()?.starts_with(&[0x1f, 0x8b]);
    Ok(if gzip { Box::new(flate2::read::MultiGzDecoder::new(reader)) } else { Box::new(reader) })
}

/// Calls `f(path, bytes, size)` for every regular file of the tar stream, in order, after
/// checking every entry (see the module documentation); adds the paths of links (symbolic or
/// hard, which are never followed) to `links`.
pub fn walk(
    reader: impl Read,
    links: &mut Vec<String>,
    mut f: impl FnMut(&str, &mut dyn Read, u64) -> Result<()>,
) -> Result<()> {
    let mut archive = tar::Archive::new(reader);
    let mut long_name: Option<Vec<u8>> = None;
    let mut count = 0;
    for entry in archive.entries().context("not a tar archive")?.raw(true) {
        let mut entry = entry.context("the archive is truncated or not a tar archive")?;
        count += 1;
        ensure!(count <= MAX_ENTRIES, "the archive has more than {MAX_ENTRIES} entries");
        let kind = entry.header().entry_type();
        let size = entry.header().size().context("bad entry size")?;
        if kind.is_gnu_longname()
            || kind.is_gnu_longlink()
            || kind.is_pax_local_extensions()
            || kind.is_pax_global_extensions()
        {
            ensure!(size <= MAX_EXTENSION, "an extension header of {size} bytes (more than {MAX_EXTENSION})");
            let mut data = Vec::with_capacity(size as usize);
            entry.read_to_end(&mut data).context("the archive is truncated")?;
            if kind.is_gnu_longname() {
                long_name = Some(data.split(|&b| b == 0).next().unwrap_or_default().to_vec());
            } else if kind.is_pax_local_extensions() {
                if let Some(path) = pax_path(&data)? {
                    long_name = Some(path);
                }
            }
            continue;
        }
        let raw = long_name.take().unwrap_or_else(|| entry.path_bytes().into_owned());
        let path = clean_path(&raw)?;
        if kind.is_dir() {
            continue;
        }
        let Some(path) = path else { bail!("a file entry with an empty path") };
        if kind.is_symlink() || kind.is_hard_link() {
            // Never followed nor written anywhere: a layout that names it is refused (Scan::file).
            links.push(path);
            continue;
        }
        ensure!(
            kind.is_file() || kind.is_contiguous(),
            "{path:?} is a {}: only regular files, directories and (never followed) links are accepted",
            kind_name(kind)
        );
        f(&path, &mut entry, size).with_context(|| format!("reading {path}"))?;
    }
    Ok(())
}

fn kind_name(kind: tar::EntryType) -> &'static str {
    if kind.is_symlink() {
        "symbolic link"
    } else if kind.is_hard_link() {
        "hard link"
    } else if kind.is_gnu_sparse() {
        "sparse file"
    } else {
        "special file"
    }
}

/// The `path` record of PAX extended header `data`; refuses the records that would change
/// how the entry is read (`size`), which this reader does not apply.
fn pax_path(data: &[u8]) -> Result<Option<Vec<u8>>> {
    let mut path = None;
    let mut rest = data;
    while !rest.is_empty() {
        let space = rest.iter().position(|&b| b == b' ').context("malformed PAX header")?;
        let len: usize =
            std::str::from_utf8(&rest[..space]).ok().and_then(|s| s.parse().ok()).context("malformed PAX header")?;
        ensure!(len > space + 1 && len <= rest.len(), "malformed PAX header");
        let record = &rest[space + 1..len - 1];
        let (key, value) = record.split_at(record.iter().position(|&b| b == b'=').context("malformed PAX record")?);
        match key {
            b"path" => path = Some(value[1..].to_vec()),
            b"size" => bail!("PAX size records (files over 8 GiB) are not supported"),
            _ => {}
        }
        rest = &rest[len..];
    }
    Ok(path)
}

/// The path as a relative, normalised string; `None` for the archive's root (`./`). Refuses
/// absolute paths, `..`, non-UTF-8 and overlong paths.
fn clean_path(raw: &[u8]) -> Result<Option<String>> {
    ensure!(raw.len() <= MAX_PATH, "a path of {} bytes (more than {MAX_PATH})", raw.len());
    let text = std::str::from_utf8(raw).map_err(|_| anyhow::anyhow!("a path that is not UTF-8"))?;
    let mut parts = Vec::new();
    for c in Path::new(text).components() {
        match c {
            Component::Normal(p) => parts.push(p.to_str().unwrap_or_default()),
            Component::CurDir => {}
            Component::ParentDir => bail!("path {text:?} leaves the archive (..)"),
            Component::RootDir | Component::Prefix(_) => bail!("path {text:?} is absolute"),
        }
    }
    Ok((!parts.is_empty()).then(|| parts.join("/")))
}

/// Hashes every file of the archive at `path` (see [`FileInfo`]).
pub fn scan(path: &Path) -> Result<Scan> {
    let mut scan = Scan::default();
    let mut json_total = 0u64;
    let mut links = Vec::new();
    walk(open(path)?, &mut links, |name, data, size| {
        let info = hash_file(data, size)?;
        if let Some(j) = &info.json {
            json_total += j.len() as u64;
            ensure!(json_total <= MAX_JSON_TOTAL, "more than {MAX_JSON_TOTAL} bytes of JSON files");
        }
        if let Some(old) = scan.files.insert(name.to_owned(), info) {
            ensure!(old.digest == scan.files[name].digest, "{name} is in the archive twice, with different contents");
        } else {
            scan.order.push(name.to_owned());
        }
        Ok(())
    })?;
    scan.links = links;
    Ok(scan)
}

/// sha256 (and for gzip, the uncompressed sha256) of one file; its bytes if small JSON.
fn hash_file(data: &mut dyn Read, size: u64) -> Result<FileInfo> {
    let mut sha = Sha256::new();
    let mut json = None::<Vec<u8>>;
    let mut inner: Option<flate2::write::GzDecoder<HashWriter>> = None;
    let mut buf = vec![0u8; 1 << 20];
    let mut done = 0u64;
    loop {
        let n = data.read(&mut buf).context("the archive is truncated")?;
        if n == 0 {
            break;
        }
        let chunk = &buf[..n];
        if done == 0 {
            if matches!(chunk.first(), Some(b'{' | b'[')) && size <= MAX_JSON {
                json = Some(Vec::with_capacity(size as usize));
            }
            if chunk.starts_with(&[0x1f, 0x8b]) {
                inner = Some(flate2::write::GzDecoder::new(HashWriter::default()));
            }
        }
        sha.update(chunk);
        if let Some(j) = &mut json {
            j.extend_from_slice(chunk);
        }
        if let Some(gz) = &mut inner {
            if gz.write_all(chunk).is_err() {
                inner = None;
            }
        }
        done += n as u64;
    }
    ensure!(done == size, "the archive is truncated ({done} of {size} bytes)");
    let uncompressed = inner.and_then(|gz| gz.finish().ok()).map(|h| Digest::from_bytes(h.0.finalize().into()));
    Ok(FileInfo { digest: Digest::from_bytes(sha.finalize().into()), size, json, uncompressed })
}

#[derive(Default)]
struct HashWriter(Sha256);

impl Write for HashWriter {
    fn write(&mut self, buf: &[u8]) -> std::io::Result<usize> {
        self.0.update(buf);
        Ok(buf.len())
    }
    fn flush(&mut self) -> std::io::Result<()> {
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn tar_with(entries: &[(&str, tar::EntryType, &[u8])]) -> Vec<u8> {
        let mut b = tar::Builder::new(Vec::new());
        for (path, kind, data) in entries {
            let mut h = tar::Header::new_gnu();
            h.set_entry_type(*kind);
            h.set_size(data.len() as u64);
            h.set_mode(0o644);
            let name = h.as_old_mut().name.as_mut();
            name[..path.len()].copy_from_slice(path.as_bytes());
            h.set_cksum();
            b.append(&h, *data).unwrap();
        }
        b.into_inner().unwrap()
    }

    fn paths(tar: &[u8]) -> Result<Vec<String>> {
        let mut out = Vec::new();
        let mut links = Vec::new();
        walk(tar, &mut links, |p, _, _| {
            out.push(p.to_owned());
            Ok(())
        })?;
        out.extend(links.into_iter().map(|l| format!("link {l}")));
        Ok(out)
    }

    #[test]
    fn accepts_files_and_directories() {
        use tar::EntryType::{Directory, Regular};
        let t = tar_with(&[("./", Directory, b""), ("./blobs/", Directory, b""), ("./blobs/a", Regular, b"x")]);
        assert_eq!(paths(&t).unwrap(), vec!["blobs/a".to_owned()]);
    }

    #[test]
    fn refuses_traversal_absolute_paths_and_special_files_and_keeps_links_aside() {
        use tar::EntryType::{Char, Fifo, Link, Regular, Symlink};
        for (path, kind, want) in [
            ("../x", Regular, "leaves the archive"),
            ("a/../../x", Regular, "leaves the archive"),
            ("/etc/x", Regular, "absolute"),
            ("dev", Char, "special file"),
            ("fifo", Fifo, "special file"),
            ("../link", Symlink, "leaves the archive"),
        ] {
            let e = paths(&tar_with(&[(path, kind, b"")])).unwrap_err();
            assert!(format!("{e:#}").contains(want), "{path}: {e:#}");
        }
        let t = tar_with(&[("manifest.json", Symlink, b""), ("a/layer.tar", Link, b"")]);
        assert_eq!(paths(&t).unwrap(), vec!["link manifest.json".to_owned(), "link a/layer.tar".to_owned()]);
    }

    #[test]
    fn bounds_extension_headers() {
        let big = vec![b'a'; 70_000];
        let t = tar_with(&[("x", tar::EntryType::GNULongName, &big), ("y", tar::EntryType::Regular, b"")]);
        assert!(format!("{:#}", paths(&t).unwrap_err()).contains("extension header"));
        let long = format!("{}/f\0", "d".repeat(200));
        let t = tar_with(&[
            ("././@LongLink", tar::EntryType::GNULongName, long.as_bytes()),
            ("short", tar::EntryType::Regular, b"z"),
        ]);
        assert_eq!(paths(&t).unwrap(), vec![format!("{}/f", "d".repeat(200))]);
    }

    #[test]
    fn reads_pax_paths() {
        let record = |k: &str, v: &str| {
            let body = format!(" {k}={v}\n");
            let mut len = body.len() + 1;
            if (len.to_string() + &body).len() != len {
                len += 1;
            }
            format!("{len}{body}")
        };
        assert_eq!(pax_path(record("path", "a/b").as_bytes()).unwrap(), Some(b"a/b".to_vec()));
        assert!(pax_path(record("size", "9").as_bytes()).is_err());
        assert!(pax_path(b"99 path=x\n").is_err());
    }

    #[test]
    fn hashes_gzip_content_too() {
        let mut gz = flate2::write::GzEncoder::new(Vec::new(), flate2::Compression::fast());
        gz.write_all(b"layer").unwrap();
        let bytes = gz.finish().unwrap();
        let info = hash_file(&mut bytes.as_slice(), bytes.len() as u64).unwrap();
        assert_eq!(info.uncompressed, Some(Digest::of(b"layer")));
        assert_eq!(info.digest, Digest::of(&bytes));
        let info = hash_file(&mut &b"{\"a\":1}"[..], 7).unwrap();
        assert!(info.json.is_some() && info.uncompressed.is_none());
        assert!(hash_file(&mut &b"short"[..], 9).is_err());
    }
}

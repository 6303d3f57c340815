//! Every on-disk path of the daemon, computed in one place.
//!
//! Paths are built only from parsed [`Digest`]s (64 lowercase hex characters), never from request
//! text, so no request can name a file outside the data directory.

use std::path::{Path, PathBuf};

use shoal_core::Digest;

/// The layout of a data directory.
#[derive(Debug, Clone)]
pub struct Paths {
    root: PathBuf,
}

impl Paths {
    /// Layout rooted at `root`.
    pub fn new(root: impl Into<PathBuf>) -> Self {
        Self { root: root.into() }
    }

    /// The data directory.
    pub fn root(&self) -> &Path {
        &self.root
    }

    /// Directory of complete blobs: `blobs/sha256`.
    pub fn blobs_dir(&self) -> PathBuf {
        self.root.join("blobs").join("sha256")
    }

    /// A complete blob: `blobs/sha256/<ab>/<hex>`.
    pub fn blob(&self, digest: &Digest) -> PathBuf {
        let hex = digest.hex();
        self.blobs_dir().join(&hex[..2]).join(hex)
    }

    /// Directory of downloads in progress.
    pub fn partial_dir(&self) -> PathBuf {
        self.root.join("partial")
    }

    /// A download in progress: `partial/<hex>`.
    pub fn partial(&self, digest: &Digest) -> PathBuf {
        self.partial_dir().join(digest.hex())
    }

    /// Directory where imports stage their blobs until every one is verified (emptied at
    /// start-up: a staged blob is never complete).
    pub fn import_dir(&self) -> PathBuf {
        self.root.join("import")
    }

    /// The staging directory of import number `session`.
    pub fn import_session(&self, session: u64) -> PathBuf {
        self.import_dir().join(session.to_string())
    }

    /// A blob staged by an import: `import/<session>/<hex>`.
    pub fn staged(&self, session: u64, digest: &Digest) -> PathBuf {
        self.import_session(session).join(digest.hex())
    }

    /// The redb metadata file.
    pub fn meta_db(&self) -> PathBuf {
        self.root.join("meta.redb")
    }

    /// Creates the directories.
    pub fn create(&self) -> std::io::Result<()> {
        std::fs::create_dir_all(self.blobs_dir())?;
        std::fs::create_dir_all(self.partial_dir())
    }

    /// Syncs the verified partial `file` of `digest` and moves it to its final path, durably.
    pub fn promote(&self, digest: &Digest, file: &std::fs::File) -> std::io::Result<()> {
        self.promote_from(&self.partial(digest), digest, file)
    }

    /// Syncs the verified `file` of `digest` at `from` (its partial file, or a staged import)
    /// and moves it to its final path, durably.
    pub fn promote_from(&self, from: &Path, digest: &Digest, file: &std::fs::File) -> std::io::Result<()> {
        file.sync_all()?;
        let dest = self.blob(digest);
        if let Some(parent) = dest.parent() {
            std::fs::create_dir_all(parent)?;
        }
        std::fs::rename(from, &dest)?;
        if let Some(parent) = dest.parent() {
            std::fs::File::open(parent)?.sync_all()?;
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn blob_paths_stay_inside_the_root() {
        let p = Paths::new("/data");
        let d = Digest::of(b"x");
        assert_eq!(p.blob(&d), PathBuf::from(format!("/data/blobs/sha256/{}/{}", &d.hex()[..2], d.hex())));
        assert_eq!(p.partial(&d), PathBuf::from(format!("/data/partial/{}", d.hex())));
    }
}

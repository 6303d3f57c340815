//! The daemon's pieces as a parent sees them: [`PieceStore`] over running tasks (pieces present
//! in the partial file) and complete blobs in the cache.

use std::fs::File;
use std::sync::Arc;

use shoal_core::{Bitmap, ByteRange, Digest};
use tokio::sync::watch;

use crate::download::tasks::Tasks;
use crate::download::writer::Progress;
use crate::peer::PieceStore;

impl PieceStore for Tasks {
    fn piece(&self, task: &Digest, index: u32) -> Option<(Arc<File>, ByteRange)> {
        if let Some(t) = self.running(task) {
            if t.progress().borrow().have.get(index) {
                return Some((t.file.clone(), t.layout.piece(index)));
            }
        }
        let (file, layout) = self.complete_file(task)?;
        (index < layout.count()).then(|| (Arc::new(file), layout.piece(index)))
    }

    fn have(&self, task: &Digest) -> Option<(Bitmap, Option<watch::Receiver<Progress>>)> {
        if let Some(t) = self.running(task) {
            let rx = t.progress();
            let have = rx.borrow().have.clone();
            return Some((have, Some(rx)));
        }
        let (_, layout) = self.complete_file(task)?;
        Some((Bitmap::full(layout.count()), None))
    }
}

//! Reader positions: where each response streaming a blob that is still downloading reads next,
//! so the download fetches first the pieces a client is waiting for.
//!
//! A response registers its next byte offset here and moves it as it streams; dropping its
//! [`ReaderGuard`] removes it. The download driver reads the positions as piece indexes and can
//! wait for them to change ([`Readers::watch`]): a change is published only when the set of
//! pieces changes, not on every chunk. This module only records positions; what to fetch and
//! from whom is the picker's decision.

use std::collections::HashMap;
use std::sync::{Arc, Mutex, MutexGuard};

use shoal_core::PieceLayout;
use tokio::sync::watch;

/// The read positions of one blob's responses.
pub struct Readers {
    layout: PieceLayout,
    offsets: Mutex<Offsets>,
    pieces: watch::Sender<Vec<u32>>,
}

/// Every registered reader's next byte offset, by reader id.
#[derive(Default)]
struct Offsets {
    next_id: u64,
    by_reader: HashMap<u64, u64>,
}

/// One response's place in [`Readers`]; removed when dropped.
pub struct ReaderGuard {
    readers: Arc<Readers>,
    id: u64,
}

impl Readers {
    /// No readers yet, for a blob of `layout`.
    pub fn new(layout: PieceLayout) -> Self {
        Self { layout, offsets: Mutex::default(), pieces: watch::Sender::new(Vec::new()) }
    }

    /// Registers a reader whose next byte is `offset`.
    pub fn register(self: &Arc<Self>, offset: u64) -> ReaderGuard {
        let id = self.update(|o| {
            let id = o.next_id;
            o.next_id += 1;
            o.by_reader.insert(id, offset);
            id
        });
        ReaderGuard { readers: self.clone(), id }
    }

    /// The pieces holding the readers' next bytes, sorted, without duplicates. Offsets at or
    /// past the blob's end are left out.
    pub fn pieces(&self) -> Vec<u32> {
        self.pieces.borrow().clone()
    }

    /// A receiver of [`Readers::pieces`] that sees a change whenever a reader comes, goes, or
    /// moves to another piece (moves within a piece wake no one).
    pub fn watch(&self) -> watch::Receiver<Vec<u32>> {
        self.pieces.subscribe()
    }

    /// Applies `f` to the offsets and republishes the pieces if they changed.
    fn update<T>(&self, f: impl FnOnce(&mut Offsets) -> T) -> T {
        let mut offsets = self.lock();
        let out = f(&mut offsets);
        let pieces = pieces_of(&self.layout, offsets.by_reader.values().copied());
        self.pieces.send_if_modified(|p| {
            let changed = *p != pieces;
            *p = pieces;
            changed
        });
        out
    }

    fn lock(&self) -> MutexGuard<'_, Offsets> {
        self.offsets.lock().unwrap_or_else(|p| p.into_inner())
    }
}

impl ReaderGuard {
    /// Moves this reader: its next byte is now `offset`.
    pub fn advance_to(&self, offset: u64) {
        self.readers.update(|o| o.by_reader.insert(self.id, offset));
    }
}

impl Drop for ReaderGuard {
    fn drop(&mut self) {
        self.readers.update(|o| o.by_reader.remove(&self.id));
    }
}

/// The pieces holding `offsets` within the blob, sorted, without duplicates.
fn pieces_of(layout: &PieceLayout, offsets: impl Iterator<Item = u64>) -> Vec<u32> {
    let mut pieces: Vec<u32> = offsets.filter(|&o| o < layout.size).map(|o| layout.piece_of(o)).collect();
    pieces.sort_unstable();
    pieces.dedup();
    pieces
}

#[cfg(test)]
mod tests {
    use super::*;

    const MIB: u64 = 1 << 20;

    fn readers(size: u64) -> Arc<Readers> {
        Arc::new(Readers::new(PieceLayout::for_size(size)))
    }

    #[test]
    fn positions_are_pieces_sorted_without_duplicates() {
        let r = readers(10 * MIB);
        let _a = r.register(7 * MIB + 5);
        let _b = r.register(2 * MIB);
        let _c = r.register(7 * MIB);
        let _d = r.register(0);
        assert_eq!(r.pieces(), vec![0, 2, 7]);
    }

    #[test]
    fn a_reader_moves_and_leaves_when_dropped() {
        let r = readers(10 * MIB);
        let a = r.register(0);
        let b = r.register(9 * MIB);
        a.advance_to(3 * MIB + 1);
        assert_eq!(r.pieces(), vec![3, 9]);
        drop(b);
        assert_eq!(r.pieces(), vec![3]);
        drop(a);
        assert!(r.pieces().is_empty());
    }

    #[test]
    fn offsets_at_or_past_the_end_are_not_positions() {
        let r = readers(4 * MIB);
        let a = r.register(4 * MIB);
        assert!(r.pieces().is_empty());
        a.advance_to(4 * MIB - 1);
        assert_eq!(r.pieces(), vec![3]);
        a.advance_to(u64::MAX);
        assert!(r.pieces().is_empty());
        let empty = readers(0);
        let _b = empty.register(0);
        assert!(empty.pieces().is_empty());
    }

    #[test]
    fn watchers_wake_only_when_the_pieces_change() {
        let r = readers(10 * MIB);
        let mut rx = r.watch();
        let a = r.register(MIB);
        assert!(rx.has_changed().unwrap());
        assert_eq!(*rx.borrow_and_update(), vec![1]);
        a.advance_to(MIB + 4096);
        let _b = r.register(MIB + 10);
        assert!(!rx.has_changed().unwrap(), "moves within piece 1 wake no one");
        a.advance_to(2 * MIB);
        assert!(rx.has_changed().unwrap());
        assert_eq!(*rx.borrow_and_update(), vec![1, 2]);
    }

    #[tokio::test]
    async fn a_waiting_driver_wakes_when_a_reader_moves() {
        let r = readers(10 * MIB);
        let a = r.register(0);
        let mut rx = r.watch();
        let waiter = tokio::spawn(async move {
            rx.changed().await.unwrap();
            rx.borrow_and_update().clone()
        });
        tokio::task::yield_now().await;
        a.advance_to(5 * MIB);
        assert_eq!(waiter.await.unwrap(), vec![5]);
    }
}

//! The whole-blob sha256, fed in order as the blob's prefix grows, from the bytes already in
//! memory.
//!
//! Bytes that continue the hashed prefix are hashed at once. Pieces that land ahead of it (from
//! parents, which send pieces in any order) wait here, as the same buffers the writer wrote, until
//! the prefix reaches them, within a budget of [`AHEAD_BUDGET`] bytes. Only what the budget could
//! not hold, and pieces resumed from disk, are read back from the file; [`WholeHash::reread`]
//! counts those bytes.

use std::collections::BTreeMap;
use std::fs::File;

use bytes::Bytes;
use shoal_core::Digest;

use crate::hash::Hasher;
use crate::store::read::read_at;

/// Bytes held ahead of the hashed prefix, per blob.
pub const AHEAD_BUDGET: usize = 32 << 20;
/// Bytes read per read-back.
const REREAD_CHUNK: usize = 4 << 20;

/// The sha256 of a blob's prefix, and what waits to extend it.
#[derive(Default)]
pub struct WholeHash {
    hasher: Hasher,
    /// Bytes hashed so far, from offset 0.
    pos: u64,
    /// Buffers ahead of `pos`, by offset.
    ahead: BTreeMap<u64, Bytes>,
    ahead_bytes: usize,
    /// Bytes read back from the file to hash them.
    reread: u64,
}

impl WholeHash {
    /// Takes `data`, written at `offset`: hashed now if it continues the prefix (then whatever
    /// waited behind it), held if it lies ahead and the budget allows, else left for
    /// [`WholeHash::catch_up`] to read back.
    pub fn add(&mut self, offset: u64, data: Bytes) {
        let end = offset + data.len() as u64;
        if offset <= self.pos && self.pos < end {
            self.hasher.update(&data[(self.pos - offset) as usize..]);
            self.pos = end;
            self.drain();
        } else if offset > self.pos && self.ahead_bytes + data.len() <= AHEAD_BUDGET {
            self.ahead_bytes += data.len();
            if let Some(old) = self.ahead.insert(offset, data) {
                self.ahead_bytes -= old.len();
            }
        }
    }

    /// Hashes the held buffers that now continue the prefix; drops those it has passed.
    fn drain(&mut self) {
        while let Some(entry) = self.ahead.first_entry() {
            let (offset, len) = (*entry.key(), entry.get().len() as u64);
            if offset > self.pos {
                return;
            }
            let data = entry.remove();
            self.ahead_bytes -= data.len();
            if offset + len > self.pos {
                self.hasher.update(&data[(self.pos - offset) as usize..]);
                self.pos = offset + len;
            }
        }
    }

    /// Extends the prefix to `available` bytes, reading from `file` what is not in memory.
    pub fn catch_up(&mut self, file: &File, available: u64) -> std::io::Result<()> {
        if self.pos >= available {
            return Ok(());
        }
        while self.pos < available {
            let n = ((available - self.pos) as usize).min(REREAD_CHUNK);
            self.hasher.update(&read_at(file, self.pos, n)?);
            self.pos += n as u64;
            self.reread += n as u64;
            self.drain();
        }
        Ok(())
    }

    /// The digest of the prefix hashed so far.
    pub fn digest(&self) -> Digest {
        self.hasher.clone().finish()
    }

    /// Bytes read back from the file so far.
    pub fn reread(&self) -> u64 {
        self.reread
    }

    /// Starts over from offset 0 (after pieces were dropped), keeping the count of bytes read back.
    pub fn restart(&mut self) {
        *self = Self { reread: self.reread, ..Self::default() };
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::io::Write;

    fn data(len: usize) -> Vec<u8> {
        (0..len).map(|i| (i * 7 % 251) as u8).collect()
    }

    #[test]
    fn in_order_and_out_of_order_pieces_hash_without_reading_back() {
        let d = data(10_000);
        let mut w = WholeHash::default();
        let piece = |i: usize| Bytes::copy_from_slice(&d[i * 1000..(i + 1) * 1000]);
        for i in [3, 1, 2, 9, 0, 4, 5, 8, 6, 7] {
            w.add(i as u64 * 1000, piece(i));
        }
        assert_eq!(w.pos, 10_000);
        assert_eq!(w.ahead_bytes, 0);
        assert_eq!(w.reread(), 0);
        assert_eq!(w.digest(), Digest::of(&d));
    }

    #[test]
    fn overlapping_bytes_are_hashed_once() {
        let d = data(3000);
        let mut w = WholeHash::default();
        w.add(0, Bytes::copy_from_slice(&d[..1500]));
        w.add(1000, Bytes::copy_from_slice(&d[1000..3000]));
        w.add(0, Bytes::copy_from_slice(&d[..1000]));
        assert_eq!(w.digest(), Digest::of(&d));
    }

    #[test]
    fn what_the_budget_cannot_hold_is_read_back() {
        let d = data(AHEAD_BUDGET + 3000);
        let mut file = tempfile::tempfile().unwrap();
        file.write_all(&d).unwrap();
        let mut w = WholeHash::default();
        w.add(1000, Bytes::copy_from_slice(&d[1000..AHEAD_BUDGET + 1000]));
        w.add(AHEAD_BUDGET as u64 + 1000, Bytes::copy_from_slice(&d[AHEAD_BUDGET + 1000..]));
        assert_eq!(w.ahead_bytes, AHEAD_BUDGET, "the second buffer is over the budget");
        w.add(0, Bytes::copy_from_slice(&d[..1000]));
        assert_eq!(w.pos, AHEAD_BUDGET as u64 + 1000);
        w.catch_up(&file, d.len() as u64).unwrap();
        assert_eq!(w.reread(), 2000);
        assert_eq!(w.digest(), Digest::of(&d));
        w.restart();
        assert_eq!((w.pos, w.reread()), (0, 2000));
        w.catch_up(&file, d.len() as u64).unwrap();
        assert_eq!(w.digest(), Digest::of(&d));
    }
}

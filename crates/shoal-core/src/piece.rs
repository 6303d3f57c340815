//! Piece layout: how a blob of a given size is cut into fixed-size pieces.
//!
//! The piece size is a power of two between [`MIN_PIECE`] and [`MAX_PIECE`], the smallest that
//! keeps a blob at or under [`TARGET_MAX_PIECES`] pieces. Every daemon computes the same layout
//! from the same size, so pieces can be exchanged between peers by index alone.

use std::ops::Range;

use crate::range::ByteRange;

/// Smallest piece: 1 MiB.
pub const MIN_PIECE: u64 = 1 << 20;
/// Largest piece: 16 MiB.
pub const MAX_PIECE: u64 = 16 << 20;
/// The layout aims at no more than this many pieces per blob.
pub const TARGET_MAX_PIECES: u64 = 1000;

/// A blob's size and piece size; every piece is `piece_size` bytes except possibly the last.
#[derive(Debug, Clone, Copy, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub struct PieceLayout {
    /// Blob size in bytes.
    pub size: u64,
    /// Piece size in bytes (a power of two).
    pub piece_size: u64,
}

/// A blob larger than the daemon's `max_blob_size`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
#[error("the blob is {size} bytes, more than max_blob_size ({max} bytes)")]
pub struct TooLarge {
    /// The size the origin gave.
    pub size: u64,
    /// The limit.
    pub max: u64,
}

impl PieceLayout {
    /// The standard layout for a blob of `size` bytes, if it is at most `max` bytes: a size
    /// from the network is checked here before anything (file, bitmaps, digests) is sized by it.
    pub fn bounded(size: u64, max: u64) -> Result<Self, TooLarge> {
        if size > max {
            return Err(TooLarge { size, max });
        }
        Ok(Self::for_size(size))
    }

    /// The standard layout for a blob of `size` bytes.
    pub fn for_size(size: u64) -> Self {
        let mut piece_size = MIN_PIECE;
        while piece_size < MAX_PIECE && size.div_ceil(piece_size) > TARGET_MAX_PIECES {
            piece_size *= 2;
        }
        Self { size, piece_size }
    }

    /// Number of pieces (0 for an empty blob).
    pub fn count(&self) -> u32 {
        u32::try_from(self.size.div_ceil(self.piece_size)).unwrap_or(u32::MAX)
    }

    /// Byte range `[start, end)` of piece `index`; empty when out of bounds.
    pub fn piece(&self, index: u32) -> ByteRange {
        let start = (u64::from(index) * self.piece_size).min(self.size);
        let end = (start + self.piece_size).min(self.size);
        ByteRange { start, end }
    }

    /// The piece holding byte `offset`.
    pub fn piece_of(&self, offset: u64) -> u32 {
        u32::try_from(offset / self.piece_size).unwrap_or(u32::MAX)
    }

    /// The pieces that together cover `range`.
    pub fn covering(&self, range: ByteRange) -> Range<u32> {
        if range.is_empty() {
            return 0..0;
        }
        self.piece_of(range.start)..self.piece_of(range.end - 1) + 1
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    const MIB: u64 = 1 << 20;

    #[test]
    fn chooses_piece_sizes() {
        assert_eq!(PieceLayout::for_size(0).piece_size, MIB);
        assert_eq!(PieceLayout::for_size(0).count(), 0);
        assert_eq!(PieceLayout::for_size(10).count(), 1);
        assert_eq!(PieceLayout::for_size(256 * MIB).piece_size, MIB);
        assert_eq!(PieceLayout::for_size(256 * MIB).count(), 256);
        assert_eq!(PieceLayout::for_size(1000 * MIB).piece_size, MIB);
        assert_eq!(PieceLayout::for_size(1001 * MIB).piece_size, 2 * MIB);
        assert_eq!(PieceLayout::for_size(10_000 * MIB).piece_size, 16 * MIB);
        assert_eq!(PieceLayout::for_size(100_000 * MIB).piece_size, 16 * MIB);
    }

    #[test]
    fn covers_ranges() {
        let l = PieceLayout::for_size(5 * MIB + 7);
        assert_eq!(l.count(), 6);
        assert_eq!(l.piece(5), ByteRange { start: 5 * MIB, end: 5 * MIB + 7 });
        assert_eq!(l.covering(ByteRange { start: 0, end: 1 }), 0..1);
        assert_eq!(l.covering(ByteRange { start: MIB - 1, end: MIB + 1 }), 0..2);
        assert_eq!(l.covering(ByteRange { start: 5 * MIB, end: 5 * MIB + 7 }), 5..6);
    }

    #[test]
    fn sizes_over_the_limit_are_refused() {
        assert_eq!(PieceLayout::bounded(10, 10), Ok(PieceLayout::for_size(10)));
        let e = PieceLayout::bounded(100_000_000_000, 10 << 30).unwrap_err();
        assert_eq!(e, TooLarge { size: 100_000_000_000, max: 10 << 30 });
        assert!(e.to_string().contains("max_blob_size"), "{e}");
        assert!(PieceLayout::bounded(u64::MAX, 1 << 40).is_err());
    }

    proptest! {
        #[test]
        fn pieces_tile_the_blob(size in 0u64..(1u64 << 40)) {
            let l = PieceLayout::for_size(size);
            prop_assert!(l.piece_size.is_power_of_two());
            prop_assert!((MIN_PIECE..=MAX_PIECE).contains(&l.piece_size));
            prop_assert!(u64::from(l.count()) <= TARGET_MAX_PIECES || l.piece_size == MAX_PIECE);
            let n = l.count();
            if n > 0 {
                prop_assert_eq!(l.piece(0).start, 0);
                prop_assert_eq!(l.piece(n - 1).end, size);
                prop_assert!(!l.piece(n - 1).is_empty());
                prop_assert!(l.piece(n).is_empty());
            }
        }

        #[test]
        fn covering_is_exact(size in 1u64..(64 * MIB), a in any::<u64>(), b in any::<u64>()) {
            let l = PieceLayout::for_size(size);
            let (s, e) = { let (x, y) = (a % size, b % size); (x.min(y), x.max(y) + 1) };
            let c = l.covering(ByteRange { start: s, end: e });
            prop_assert!(l.piece(c.start).start <= s && s < l.piece(c.start).end);
            prop_assert!(l.piece(c.end - 1).start < e && e <= l.piece(c.end - 1).end);
        }
    }
}

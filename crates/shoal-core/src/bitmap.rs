//! A fixed-length bitmap of pieces: which pieces of a blob are present and verified.
//!
//! A pure value with a stable byte encoding (little-endian bit order within bytes) for storage
//! and for the wire.

/// Why a byte encoding is not a bitmap of the given length.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("bitmap encoding has {got} bytes, expected {want} (or bits set past the end)")]
pub struct BitmapDecodeError {
    got: usize,
    want: usize,
}

/// A set of piece indices `0..len`.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct Bitmap {
    bytes: Vec<u8>,
    len: u32,
}

impl Bitmap {
    /// An empty bitmap of `len` pieces.
    pub fn new(len: u32) -> Self {
        Self { bytes: vec![0; (len as usize).div_ceil(8)], len }
    }

    /// A bitmap of `len` pieces, every one set.
    pub fn full(len: u32) -> Self {
        let mut b = Self::new(len);
        (0..len).for_each(|i| {
            b.set(i);
        });
        b
    }

    /// Number of pieces it covers.
    pub fn len(&self) -> u32 {
        self.len
    }

    /// True when it covers no pieces.
    pub fn is_empty(&self) -> bool {
        self.len == 0
    }

    /// Whether piece `i` is present (false when out of range).
    pub fn get(&self, i: u32) -> bool {
        i < self.len && self.bytes[(i / 8) as usize] & (1 << (i % 8)) != 0
    }

    /// Marks piece `i` present; out-of-range indices are ignored. Returns true if it was new.
    pub fn set(&mut self, i: u32) -> bool {
        if i >= self.len || self.get(i) {
            return false;
        }
        self.bytes[(i / 8) as usize] |= 1 << (i % 8);
        true
    }

    /// Marks piece `i` absent; out-of-range indices are ignored.
    pub fn unset(&mut self, i: u32) {
        if i < self.len {
            self.bytes[(i / 8) as usize] &= !(1 << (i % 8));
        }
    }

    /// The pieces present in both.
    pub fn and(&self, other: &Bitmap) -> Bitmap {
        let bytes =
            self.bytes.iter().zip(other.bytes.iter().chain(std::iter::repeat(&0))).map(|(a, b)| a & b).collect();
        Self { bytes, len: self.len }
    }

    /// Number of pieces present.
    pub fn count(&self) -> u32 {
        self.bytes.iter().map(|b| b.count_ones()).sum()
    }

    /// True when every piece is present.
    pub fn is_full(&self) -> bool {
        self.count() == self.len
    }

    /// The pieces not present, in order.
    pub fn missing(&self) -> impl Iterator<Item = u32> + '_ {
        (0..self.len).filter(|&i| !self.get(i))
    }

    /// Length of the run of present pieces starting at piece 0.
    pub fn prefix(&self) -> u32 {
        self.missing().next().unwrap_or(self.len)
    }

    /// The stable byte encoding.
    pub fn as_bytes(&self) -> &[u8] {
        &self.bytes
    }

    /// Decodes a bitmap of `len` pieces, rejecting a wrong length or bits past the end.
    pub fn from_bytes(len: u32, bytes: &[u8]) -> Result<Self, BitmapDecodeError> {
        let want = (len as usize).div_ceil(8);
        let err = BitmapDecodeError { got: bytes.len(), want };
        if bytes.len() != want {
            return Err(err);
        }
        let spare = (want * 8) as u32 - len;
        if spare > 0 && bytes[want - 1] >> (8 - spare) != 0 {
            return Err(err);
        }
        Ok(Self { bytes: bytes.to_vec(), len })
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::collection::vec;
    use proptest::prelude::*;

    #[test]
    fn sets_and_counts() {
        let mut b = Bitmap::new(10);
        assert!(b.set(0) && b.set(9) && !b.set(9) && !b.set(10));
        assert_eq!(b.count(), 2);
        assert!(b.get(9) && !b.get(5) && !b.get(100));
        assert_eq!(b.prefix(), 1);
        assert_eq!(b.missing().collect::<Vec<_>>(), vec![1, 2, 3, 4, 5, 6, 7, 8]);
        assert!(Bitmap::from_bytes(10, &[0, 0b0000_0100]).is_err());
        assert!(Bitmap::from_bytes(10, &[0]).is_err());
        assert!(Bitmap::new(0).is_full());
        b.unset(9);
        b.unset(99);
        assert!(!b.get(9) && b.get(0));
        let mut c = Bitmap::new(10);
        c.set(0);
        c.set(5);
        assert_eq!(b.and(&c).count(), 1);
    }

    proptest! {
        #[test]
        fn behaves_like_a_set(len in 0u32..300, idx in vec(0u32..320, 0..100)) {
            let mut b = Bitmap::new(len);
            let mut model = std::collections::BTreeSet::new();
            for i in idx {
                prop_assert_eq!(b.set(i), i < len && model.insert(i));
            }
            prop_assert_eq!(b.count() as usize, model.len());
            prop_assert_eq!(b.missing().count() + model.len(), len as usize);
            prop_assert_eq!(b.is_full(), model.len() == len as usize);
            prop_assert_eq!(Bitmap::from_bytes(len, b.as_bytes()).unwrap(), b);
        }
    }
}

//! Piece digests: BLAKE3, Shoal's own check of each piece a parent sends.
//!
//! A blob's identity stays its sha256 ([`Digest`](crate::Digest)), which every registry and
//! client uses and which has the last word on every blob. Piece digests never leave Shoal (the
//! scheduler's tables, the peers' digest pages, the store's records), so they use BLAKE3: several
//! GB/s per core, where sha256 without SHA extensions runs at a few hundred MB/s. A piece is then
//! hashed once with BLAKE3 when it arrives and once more, in order, into the blob's sha256.

use std::fmt;

/// The BLAKE3 digest of one piece.
#[derive(Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct PieceDigest([u8; 32]);

impl PieceDigest {
    /// The digest of `data`.
    pub fn of(data: &[u8]) -> Self {
        let mut h = PieceHasher::default();
        h.update(data);
        h.finish()
    }

    /// Wraps raw BLAKE3 output (e.g. 32 bytes from the network).
    pub fn from_bytes(bytes: [u8; 32]) -> Self {
        Self(bytes)
    }

    /// Exactly 32 bytes, or `None`.
    pub fn from_slice(bytes: &[u8]) -> Option<Self> {
        <[u8; 32]>::try_from(bytes).ok().map(Self)
    }

    /// 64 lowercase hex characters (as the store records them), or `None`.
    pub fn from_hex(hex: &str) -> Option<Self> {
        let mut out = [0u8; 32];
        (hex.len() == 64 && hex.bytes().all(|b| matches!(b, b'0'..=b'9' | b'a'..=b'f')))
            .then(|| hex::decode_to_slice(hex, &mut out).ok())
            .flatten()
            .map(|()| Self(out))
    }

    /// The raw 32 bytes.
    pub fn as_bytes(&self) -> &[u8; 32] {
        &self.0
    }

    /// The 64 lowercase hex characters.
    pub fn hex(&self) -> String {
        hex::encode(self.0)
    }
}

impl fmt::Display for PieceDigest {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "blake3:{}", self.hex())
    }
}

impl fmt::Debug for PieceDigest {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        fmt::Display::fmt(self, f)
    }
}

/// An incremental piece digest.
#[derive(Clone, Default)]
pub struct PieceHasher(blake3::Hasher);

impl PieceHasher {
    /// Feeds bytes.
    pub fn update(&mut self, data: &[u8]) {
        self.0.update(data);
    }

    /// The digest of everything fed.
    pub fn finish(&self) -> PieceDigest {
        PieceDigest(*self.0.finalize().as_bytes())
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    #[test]
    fn is_blake3() {
        // The BLAKE3 reference vector for the empty input.
        let want = "af1349b9f5f9a1a6a0404dea36dcc9499bcb25c9adc112b7cc9a93cae41f3262";
        assert_eq!(PieceDigest::of(b"").hex(), want);
        assert_eq!(PieceDigest::of(b"").to_string(), format!("blake3:{want}"));
    }

    #[test]
    fn incremental_agrees_with_one_shot() {
        let data: Vec<u8> = (0..300_000u32).map(|i| (i % 251) as u8).collect();
        let mut h = PieceHasher::default();
        data.chunks(4099).for_each(|c| h.update(c));
        assert_eq!(h.finish(), PieceDigest::of(&data));
    }

    #[test]
    fn parses_only_exact_hex_and_lengths() {
        let d = PieceDigest::of(b"piece");
        assert_eq!(PieceDigest::from_hex(&d.hex()), Some(d));
        assert_eq!(PieceDigest::from_slice(d.as_bytes()), Some(d));
        for bad in ["", "00", &d.hex().to_uppercase(), &format!("{}0", d.hex()), &"g".repeat(64)] {
            assert_eq!(PieceDigest::from_hex(bad), None, "{bad}");
        }
        assert_eq!(PieceDigest::from_slice(&[0; 31]), None);
        assert_eq!(PieceDigest::from_slice(&[0; 33]), None);
    }

    proptest! {
        #[test]
        fn hex_round_trips(bytes in any::<[u8; 32]>()) {
            let d = PieceDigest::from_bytes(bytes);
            prop_assert_eq!(PieceDigest::from_hex(&d.hex()), Some(d));
        }
    }
}

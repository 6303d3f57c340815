//! Test-only faults, so end-to-end tests can play a bad cluster member with a real daemon.
//!
//! They are read from environment variables only when the crate is built with the
//! `fault-injection` feature (the e2e tests build the binary so); without it [`Faults::from_env`]
//! always answers "no faults" and no variable is looked at. Never enable the feature in a release.

/// Corrupt every piece served to peers (`=1`): children must detect and avoid the parent.
#[cfg(any(test, feature = "fault-injection"))]
pub const CORRUPT_UPLOADS: &str = "SHOAL_FAULT_CORRUPT_UPLOADS";
/// Poison (`=1`): report forged digests for pieces fetched from the origin and serve pieces
/// that match them, as a member holding the cluster token could. Implies corrupt uploads.
#[cfg(any(test, feature = "fault-injection"))]
pub const POISON: &str = "SHOAL_FAULT_POISON";

/// Stall the move of a verified blob (`=1`): the writer waits [`STALL`] between recording the
/// blob verified and syncing and moving its file, as a slow disk could, so a test can kill the
/// daemon in between.
#[cfg(any(test, feature = "fault-injection"))]
pub const STALL_PROMOTE: &str = "SHOAL_FAULT_STALL_PROMOTE";
/// How long [`STALL_PROMOTE`] stalls.
pub const STALL: std::time::Duration = std::time::Duration::from_secs(60);

/// Which faults are on.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Faults {
    /// Flip a byte in every chunk of every piece served.
    pub corrupt_uploads: bool,
    /// Report the digests of those flipped pieces as origin digests.
    pub poison: bool,
    /// Stall between a blob's verified record and the move of its file.
    pub stall_promote: bool,
}

impl Faults {
    /// The faults switched on in the environment (none without the `fault-injection` feature).
    pub fn from_env() -> Self {
        #[cfg(feature = "fault-injection")]
        {
            let on = |name: &str| std::env::var_os(name).is_some_and(|v| v == "1");
            let poison = on(POISON);
            let faults =
                Self { corrupt_uploads: poison || on(CORRUPT_UPLOADS), poison, stall_promote: on(STALL_PROMOTE) };
            if faults != Self::default() {
                tracing::warn!(?faults, "TEST-ONLY FAULTS ON: this daemon serves corrupted pieces");
            }
            faults
        }
        #[cfg(not(feature = "fault-injection"))]
        Self::default()
    }
}

/// Bytes per corrupted chunk: the peer server flips the first byte of each chunk it sends.
pub const CHUNK: u64 = 256 << 10;

/// Flips what the peer server flips in a piece (the first byte of every [`CHUNK`]).
pub fn corrupt_piece(piece: &mut [u8]) {
    for i in (0..piece.len()).step_by(CHUNK as usize) {
        piece[i] ^= 0xff;
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn corrupts_the_first_byte_of_every_chunk() {
        let mut piece = vec![0u8; 2 * CHUNK as usize + 10];
        corrupt_piece(&mut piece);
        let flipped: Vec<usize> = piece.iter().enumerate().filter(|(_, b)| **b != 0).map(|(i, _)| i).collect();
        assert_eq!(flipped, vec![0, CHUNK as usize, 2 * CHUNK as usize]);
    }

    #[cfg(not(feature = "fault-injection"))]
    #[test]
    fn without_the_feature_no_variable_switches_a_fault_on() {
        std::env::set_var(POISON, "1");
        std::env::set_var(CORRUPT_UPLOADS, "1");
        std::env::set_var(STALL_PROMOTE, "1");
        assert_eq!(Faults::from_env(), Faults::default());
    }
}

//! Cluster membership: each side of a connection (peer QUIC, scheduler TLS) proves it holds the
//! cluster token with HMAC-SHA256(token, role ‖ TLS exporter secret). The exporter is unique to
//! the TLS session, so a proof cannot be replayed on another connection or relayed by a man in
//! the middle, and the token itself never crosses the network.

use hmac::{Hmac, Mac};
use sha2::Sha256;

/// Exporter label of peer (QUIC) connections (RFC 5705 / RFC 8446 §7.5).
pub const PEER_EXPORTER_LABEL: &[u8] = b"EXPORTER-shoal-peer-v1";
/// Exporter label of scheduler (TLS over TCP) connections.
pub const SCHEDULER_EXPORTER_LABEL: &[u8] = b"EXPORTER-shoal-scheduler-v1";
/// Bytes of an exporter secret both sides derive.
pub const EXPORTER_LEN: usize = 32;
/// Bytes of a proof.
pub const PROOF_LEN: usize = 32;

/// Which end of the connection a proof speaks for.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Role {
    /// The dialing side.
    Client,
    /// The listening side.
    Server,
}

impl Role {
    fn tag(self) -> &'static [u8] {
        match self {
            Self::Client => b"client",
            Self::Server => b"server",
        }
    }
}

fn mac(token: &[u8], role: Role, exporter: &[u8]) -> Hmac<Sha256> {
    // HMAC accepts keys of any length.
    let mut m =
        <Hmac<Sha256> as Mac>::new_from_slice(token).unwrap_or_else(|_| unreachable!("hmac takes any key length"));
    m.update(role.tag());
    m.update(exporter);
    m
}

/// The proof `role` sends on a session with this exporter secret.
pub fn prove(token: &[u8], role: Role, exporter: &[u8]) -> Vec<u8> {
    mac(token, role, exporter).finalize().into_bytes().to_vec()
}

/// Checks a proof in constant time.
pub fn verify(token: &[u8], role: Role, exporter: &[u8], proof: &[u8]) -> bool {
    mac(token, role, exporter).verify_slice(proof).is_ok()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn proofs_bind_token_role_and_session() {
        let p = prove(b"token", Role::Client, b"session-1");
        assert!(verify(b"token", Role::Client, b"session-1", &p));
        assert!(!verify(b"other", Role::Client, b"session-1", &p));
        assert!(!verify(b"token", Role::Server, b"session-1", &p));
        assert!(!verify(b"token", Role::Client, b"session-2", &p));
        assert!(!verify(b"token", Role::Client, b"session-1", &p[..31]));
    }
}

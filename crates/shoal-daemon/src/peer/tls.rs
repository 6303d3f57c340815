//! TLS for the peer protocol: a fresh self-signed certificate per daemon start, and a client
//! that accepts any server certificate — membership is proven by the cluster token bound to the
//! session (see `auth`), not by a PKI. Signatures are still verified, so the session is real.

use std::sync::Arc;
use std::time::Duration;

use quinn::crypto::rustls::{QuicClientConfig, QuicServerConfig};
use rustls::client::danger::{HandshakeSignatureValid, ServerCertVerified, ServerCertVerifier};
use rustls::crypto::CryptoProvider;
use rustls::pki_types::{CertificateDer, PrivateKeyDer, PrivatePkcs8KeyDer, ServerName, UnixTime};
use rustls::{DigitallySignedStruct, SignatureScheme};

/// ALPN of the peer protocol.
pub const ALPN: &[u8] = b"shoal-peer/1";
/// The server name clients ask for (certificates are self-signed for it).
pub const SERVER_NAME: &str = "shoal-peer";

/// Why TLS could not be set up.
#[derive(Debug, thiserror::Error)]
#[error("peer TLS setup: {0}")]
pub struct TlsError(String);

fn err(e: impl std::fmt::Display) -> TlsError {
    TlsError(e.to_string())
}

/// The crypto provider every Shoal TLS config uses (aws-lc-rs).
pub fn provider() -> Arc<CryptoProvider> {
    Arc::new(rustls::crypto::aws_lc_rs::default_provider())
}

/// Largest UDP payload MTU discovery probes for (jumbo frames; loopback allows more).
const MTU_UPPER_BOUND: u16 = 65_527;

/// Connection flow-control credit a peer gets before it proved the cluster token: room for the
/// hello and little else, so a stranger cannot make this daemon buffer more.
pub const UNPROVEN_WINDOW: u32 = 16 << 10;
/// Connection credit a parent gets once it proved the token: several pieces in flight.
pub const PROVEN_PARENT_WINDOW: u32 = 64 << 20;
/// Connection credit a child gets once it proved the token: children only send requests.
pub const PROVEN_CHILD_WINDOW: u32 = 1 << 20;
/// Streams a child may open at once once it proved the token (before: the hello's one).
pub const PROVEN_CHILD_STREAMS: u32 = 256;

/// The side of a connection a transport config is for.
#[derive(Clone, Copy, PartialEq, Eq)]
enum Side {
    /// Accepted connections: the child only sends small requests, this daemon sends pieces.
    Serving,
    /// Dialed connections: this daemon receives pieces and opens every stream itself.
    Dialing,
}

fn transport(side: Side) -> Arc<quinn::TransportConfig> {
    let mut t = quinn::TransportConfig::default();
    t.max_idle_timeout(Some(quinn::IdleTimeout::from(quinn::VarInt::from_u32(30_000))));
    t.keep_alive_interval(Some(Duration::from_secs(5)));
    // Until the other side proves the token it may send UNPROVEN_WINDOW bytes in all; the
    // window is raised once it has (`Connection::set_receive_window`).
    t.receive_window(quinn::VarInt::from_u32(UNPROVEN_WINDOW));
    t.send_window(64 << 20);
    // Nothing of the peer protocol uses datagrams or unidirectional streams: refuse them, so
    // nothing is buffered for them either.
    t.datagram_receive_buffer_size(None);
    t.max_concurrent_uni_streams(quinn::VarInt::from_u32(0));
    match side {
        Side::Serving => {
            // Requests are tiny: a stream never needs more credit than this, proven or not.
            t.stream_receive_window(quinn::VarInt::from_u32(16 << 10));
            // One stream (the hello) until the child proves the token.
            t.max_concurrent_bidi_streams(quinn::VarInt::from_u32(1));
        }
        Side::Dialing => {
            // Large stream windows: a piece is up to 16 MiB and loopback/LAN links are fast
            // (bounded by the connection window above until the parent proves the token).
            t.stream_receive_window(quinn::VarInt::from_u32(32 << 20));
            // A parent never opens streams to its child.
            t.max_concurrent_bidi_streams(quinn::VarInt::from_u32(0));
        }
    }
    // Fewer packets per byte, the main CPU cost of QUIC after crypto: probe for paths larger
    // than the 1452-byte default (loopback, jumbo-frame LANs), and ask the peer to acknowledge
    // every 8th packet instead of every 2nd (the ACK frequency extension; quinn on both ends).
    let mut mtu = quinn::MtuDiscoveryConfig::default();
    mtu.upper_bound(MTU_UPPER_BOUND);
    t.mtu_discovery_config(Some(mtu));
    let mut acks = quinn::AckFrequencyConfig::default();
    acks.ack_eliciting_threshold(quinn::VarInt::from_u32(7));
    t.ack_frequency_config(Some(acks));
    Arc::new(t)
}

/// A server config with a fresh self-signed certificate.
pub fn server_config() -> Result<quinn::ServerConfig, TlsError> {
    let cert = rcgen::generate_simple_self_signed(vec![SERVER_NAME.to_owned()]).map_err(err)?;
    let der = CertificateDer::from(cert.cert.der().to_vec());
    let key = PrivateKeyDer::Pkcs8(PrivatePkcs8KeyDer::from(cert.signing_key.serialize_der()));
    let mut tls = rustls::ServerConfig::builder_with_provider(provider())
        .with_protocol_versions(&[&rustls::version::TLS13])
        .map_err(err)?
        .with_no_client_auth()
        .with_single_cert(vec![der], key)
        .map_err(err)?;
    tls.alpn_protocols = vec![ALPN.to_vec()];
    tls.max_early_data_size = 0;
    let crypto = QuicServerConfig::try_from(tls).map_err(err)?;
    let mut config = quinn::ServerConfig::with_crypto(Arc::new(crypto));
    config.transport_config(transport(Side::Serving));
    // Handshakes not yet accepted, and what they may buffer (the defaults allow 10 MiB each).
    config.max_incoming(256).incoming_buffer_size(64 << 10).incoming_buffer_size_total(4 << 20);
    Ok(config)
}

/// A client config that accepts any server certificate (see the module doc).
pub fn client_config() -> Result<quinn::ClientConfig, TlsError> {
    let provider = provider();
    let mut tls = rustls::ClientConfig::builder_with_provider(provider.clone())
        .with_protocol_versions(&[&rustls::version::TLS13])
        .map_err(err)?
        .dangerous()
        .with_custom_certificate_verifier(Arc::new(AnyCert(provider)))
        .with_no_client_auth();
    tls.alpn_protocols = vec![ALPN.to_vec()];
    let crypto = QuicClientConfig::try_from(tls).map_err(err)?;
    let mut config = quinn::ClientConfig::new(Arc::new(crypto));
    config.transport_config(transport(Side::Dialing));
    Ok(config)
}

/// Accepts any server certificate but checks its signatures (membership is proven by the token).
#[derive(Debug)]
pub struct AnyCert(pub Arc<CryptoProvider>);

impl ServerCertVerifier for AnyCert {
    fn verify_server_cert(
        &self,
        _: &CertificateDer<'_>,
        _: &[CertificateDer<'_>],
        _: &ServerName<'_>,
        _: &[u8],
        _: UnixTime,
    ) -> Result<ServerCertVerified, rustls::Error> {
        Ok(ServerCertVerified::assertion())
    }

    fn verify_tls12_signature(
        &self,
        _: &[u8],
        _: &CertificateDer<'_>,
        _: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        Err(rustls::Error::General("TLS 1.2 is not used by the peer protocol".into()))
    }

    fn verify_tls13_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        rustls::crypto::verify_tls13_signature(message, cert, dss, &self.0.signature_verification_algorithms)
    }

    fn supported_verify_schemes(&self) -> Vec<SignatureScheme> {
        self.0.signature_verification_algorithms.supported_schemes()
    }
}

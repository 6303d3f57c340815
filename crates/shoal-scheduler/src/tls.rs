//! TLS of the scheduler listener: a fresh self-signed certificate per start. Clients accept any
//! certificate; membership is proven by the cluster token bound to the TLS session (see
//! [`shoal_core::membership`]), in both directions, before any gRPC byte is read.

use std::sync::Arc;

use rustls::pki_types::{CertificateDer, PrivateKeyDer, PrivatePkcs8KeyDer};

/// The server name clients ask for (the certificate is self-signed for it).
pub const SERVER_NAME: &str = "shoal-scheduler";

/// A TLS 1.3 server config for gRPC (ALPN h2) with a fresh self-signed certificate.
pub fn server_config() -> Result<Arc<rustls::ServerConfig>, String> {
    let cert = rcgen::generate_simple_self_signed(vec![SERVER_NAME.to_owned()]).map_err(|e| e.to_string())?;
    let der = CertificateDer::from(cert.cert.der().to_vec());
    let key = PrivateKeyDer::Pkcs8(PrivatePkcs8KeyDer::from(cert.signing_key.serialize_der()));
    let provider = Arc::new(rustls::crypto::aws_lc_rs::default_provider());
    let mut tls = rustls::ServerConfig::builder_with_provider(provider)
        .with_protocol_versions(&[&rustls::version::TLS13])
        .map_err(|e| e.to_string())?
        .with_no_client_auth()
        .with_single_cert(vec![der], key)
        .map_err(|e| e.to_string())?;
    tls.alpn_protocols = vec![b"h2".to_vec()];
    tls.max_early_data_size = 0;
    Ok(Arc::new(tls))
}

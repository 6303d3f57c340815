//! Connections to a scheduler: TCP, TLS 1.3 (any certificate: see `peer::tls`), then the
//! membership proof both ways (ours first, then the scheduler's, bound to this TLS session),
//! then gRPC over HTTP/2. An `http://host:port` URL names the address; the traffic is always
//! encrypted and the token never crosses the network.

use std::sync::Arc;
use std::time::Duration;

use hyper_util::rt::TokioIo;
use shoal_core::membership::{self, Role, EXPORTER_LEN, PROOF_LEN, SCHEDULER_EXPORTER_LABEL};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;
use tokio_rustls::client::TlsStream;
use tonic::transport::{Channel, Endpoint, Uri};
use url::Url;

use crate::peer::tls::{provider, AnyCert};

/// The server name asked for (the scheduler's certificate is self-signed for it).
const SERVER_NAME: &str = "shoal-scheduler";

type BoxError = Box<dyn std::error::Error + Send + Sync>;

/// The scheduler answered the connection and turned it down: it is up, but not for us.
#[derive(Debug, thiserror::Error)]
pub enum Refusal {
    /// It closed the connection on our proof of the cluster token. Remedy: the same token on
    /// both sides.
    #[error("the scheduler refused our proof of the cluster token (is it the same token on both sides?)")]
    ProofRefused,
    /// Its own proof did not match our token. Remedy: as above; or it is not our scheduler.
    #[error("the scheduler did not prove the cluster token")]
    BadProof,
}

impl Refusal {
    /// The refusal somewhere in `error`'s chain of sources, if any (a connection error reaches
    /// the caller wrapped in tonic's and hyper's errors).
    pub fn find<'a>(error: &'a (dyn std::error::Error + 'static)) -> Option<&'a Refusal> {
        let mut next = Some(error);
        while let Some(e) = next {
            if let Some(refusal) = e.downcast_ref::<Refusal>() {
                return Some(refusal);
            }
            next = e.source();
        }
        None
    }
}

/// A lazy channel to the scheduler at `url` (nothing is dialed until the first call); each
/// connection is bounded by `timeout` up to the end of the proof.
pub fn channel(url: &Url, token: Arc<[u8]>, timeout: Duration) -> Result<Channel, String> {
    let endpoint = Endpoint::from_shared(url.to_string())
        .map_err(|e| e.to_string())?
        .connect_timeout(timeout)
        .http2_keep_alive_interval(Duration::from_secs(10))
        .keep_alive_timeout(Duration::from_secs(5));
    let tls = Arc::new(client_config()?);
    let connector = tower::service_fn(move |uri: Uri| {
        let (tls, token) = (tls.clone(), token.clone());
        async move {
            match tokio::time::timeout(timeout, connect(&uri, tls, &token)).await {
                Ok(r) => r.map(TokioIo::new),
                Err(_) => Err(format!("no membership proof from {uri} within {timeout:?}").into()),
            }
        }
    });
    Ok(endpoint.connect_with_connector_lazy(connector))
}

fn client_config() -> Result<rustls::ClientConfig, String> {
    let provider = provider();
    let mut tls = rustls::ClientConfig::builder_with_provider(provider.clone())
        .with_protocol_versions(&[&rustls::version::TLS13])
        .map_err(|e| e.to_string())?
        .dangerous()
        .with_custom_certificate_verifier(Arc::new(AnyCert(provider)))
        .with_no_client_auth();
    tls.alpn_protocols = vec![b"h2".to_vec()];
    Ok(tls)
}

async fn connect(uri: &Uri, tls: Arc<rustls::ClientConfig>, token: &[u8]) -> Result<TlsStream<TcpStream>, BoxError> {
    let host = uri.host().ok_or("scheduler URL without a host")?.trim_matches(['[', ']']);
    let port = uri.port_u16().unwrap_or(if uri.scheme_str() == Some("https") { 443 } else { 80 });
    let tcp = TcpStream::connect((host, port)).await?;
    tcp.set_nodelay(true)?;
    let name = rustls::pki_types::ServerName::try_from(SERVER_NAME)?;
    let mut stream = tokio_rustls::TlsConnector::from(tls).connect(name, tcp).await?;
    let secret: [u8; EXPORTER_LEN] =
        stream.get_ref().1.export_keying_material([0u8; EXPORTER_LEN], SCHEDULER_EXPORTER_LABEL, None)?;
    stream.write_all(&membership::prove(token, Role::Client, &secret)).await?;
    stream.flush().await?;
    let mut proof = [0u8; PROOF_LEN];
    stream.read_exact(&mut proof).await.map_err(|_| Refusal::ProofRefused)?;
    if !membership::verify(token, Role::Server, &secret, &proof) {
        return Err(Refusal::BadProof.into());
    }
    Ok(stream)
}

//! TLS on both sides: the connector that reaches `https://` backends (system roots, a
//! backend's own `tls_ca_file`, or no check at all when asked), and the crypto provider the
//! listener shares.

use std::collections::HashMap;
use std::future::Future;
use std::pin::Pin;
use std::sync::Arc;
use std::task::{Context, Poll};

use http::Uri;
use hyper_rustls::{HttpsConnector, HttpsConnectorBuilder, MaybeHttpsStream};
use hyper_util::client::legacy::connect::HttpConnector;
use hyper_util::rt::TokioIo;
use rustls::client::danger::{HandshakeSignatureValid, ServerCertVerified, ServerCertVerifier};
use rustls::crypto::CryptoProvider;
use rustls::{ClientConfig, DigitallySignedStruct, RootCertStore, SignatureScheme};
use rustls_pki_types::{CertificateDer, ServerName, UnixTime};

use crate::config::{tls_provider as provider, BackendTls, Config};

type BoxError = Box<dyn std::error::Error + Send + Sync>;

/// Connects to backends: plain TCP for `http://`, TLS for `https://` checked as each
/// backend's configuration says (by authority; the first backend configured for one wins).
#[derive(Clone)]
pub struct Connector {
    plain: HttpsConnector<HttpConnector>,
    by_authority: Arc<HashMap<String, HttpsConnector<HttpConnector>>>,
}

impl Connector {
    /// For the backends of `config`. Fails when the system's roots are needed and none can
    /// be read.
    pub fn new(config: &Config) -> Result<Self, String> {
        let mut tcp = HttpConnector::new();
        tcp.set_connect_timeout(config.timeouts.connect);
        tcp.set_nodelay(true);
        tcp.enforce_http(false);
        let mut by_authority = HashMap::new();
        let mut system: Option<HttpsConnector<HttpConnector>> = None;
        for backend in &config.backends {
            let authority = backend.authority.as_str().to_owned();
            if backend.tls == BackendTls::Off || by_authority.contains_key(&authority) {
                continue;
            }
            let connector = match &backend.tls {
                BackendTls::SystemRoots => match &system {
                    Some(connector) => connector.clone(),
                    None => system.insert(https(tcp.clone(), system_roots()?)).clone(),
                },
                BackendTls::CaFile { path, roots } => {
                    let mut store = RootCertStore::empty();
                    for root in roots {
                        store.add(root.clone()).map_err(|e| {
                            format!("{}: certificate not usable as a root: {e}", path.display())
                        })?;
                    }
                    https(tcp.clone(), client_config(store))
                }
                BackendTls::SkipVerify => {
                    tracing::warn!(backend = %backend.url, "tls_insecure_skip_verify: this backend's certificate is not checked; anyone on the path can read and change its traffic");
                    https(tcp.clone(), unchecked())
                }
                BackendTls::Off => continue,
            };
            by_authority.insert(authority, connector);
        }
        let plain = HttpsConnectorBuilder::new()
            .with_tls_config(client_config(RootCertStore::empty()))
            .https_or_http()
            .enable_http1()
            .wrap_connector(tcp);
        Ok(Self {
            plain,
            by_authority: Arc::new(by_authority),
        })
    }
}

fn https(tcp: HttpConnector, tls: ClientConfig) -> HttpsConnector<HttpConnector> {
    HttpsConnectorBuilder::new()
        .with_tls_config(tls)
        .https_only()
        .enable_http1()
        .wrap_connector(tcp)
}

fn client_config(roots: RootCertStore) -> ClientConfig {
    ClientConfig::builder_with_provider(provider())
        .with_safe_default_protocol_versions()
        .expect("the provider supports the default protocol versions")
        .with_root_certificates(roots)
        .with_no_client_auth()
}

/// A client that checks certificates against the system's root certificates.
pub fn system_roots() -> Result<ClientConfig, String> {
    let found = rustls_native_certs::load_native_certs();
    let mut roots = RootCertStore::empty();
    let (added, _) = roots.add_parsable_certificates(found.certs);
    if added == 0 {
        let why = found
            .errors
            .first()
            .map_or_else(|| "none found".to_owned(), ToString::to_string);
        return Err(format!(
            "no system root certificates for https backends ({why}); give the backend a tls_ca_file"
        ));
    }
    Ok(client_config(roots))
}

/// A client that takes any certificate: the handshake's signatures are still checked, the
/// certificate's chain and name are not.
pub fn unchecked() -> ClientConfig {
    let provider = provider();
    ClientConfig::builder_with_provider(provider.clone())
        .with_safe_default_protocol_versions()
        .expect("the provider supports the default protocol versions")
        .dangerous()
        .with_custom_certificate_verifier(Arc::new(AnyCertificate(provider)))
        .with_no_client_auth()
}

#[derive(Debug)]
struct AnyCertificate(Arc<CryptoProvider>);

impl ServerCertVerifier for AnyCertificate {
    fn verify_server_cert(
        &self,
        _end_entity: &CertificateDer<'_>,
        _intermediates: &[CertificateDer<'_>],
        _server_name: &ServerName<'_>,
        _ocsp_response: &[u8],
        _now: UnixTime,
    ) -> Result<ServerCertVerified, rustls::Error> {
        Ok(ServerCertVerified::assertion())
    }

    fn verify_tls12_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        rustls::crypto::verify_tls12_signature(
            message,
            cert,
            dss,
            &self.0.signature_verification_algorithms,
        )
    }

    fn verify_tls13_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        rustls::crypto::verify_tls13_signature(
            message,
            cert,
            dss,
            &self.0.signature_verification_algorithms,
        )
    }

    fn supported_verify_schemes(&self) -> Vec<SignatureScheme> {
        self.0.signature_verification_algorithms.supported_schemes()
    }
}

impl tower::Service<Uri> for Connector {
    type Response = MaybeHttpsStream<TokioIo<tokio::net::TcpStream>>;
    type Error = BoxError;
    type Future = Pin<Box<dyn Future<Output = Result<Self::Response, BoxError>> + Send>>;

    fn poll_ready(&mut self, _cx: &mut Context<'_>) -> Poll<Result<(), BoxError>> {
        // Each connector below is always ready (a clone per call).
        Poll::Ready(Ok(()))
    }

    fn call(&mut self, uri: Uri) -> Self::Future {
        let https = uri.scheme() == Some(&http::uri::Scheme::HTTPS);
        let chosen = uri
            .authority()
            .filter(|_| https)
            .and_then(|authority| self.by_authority.get(authority.as_str()));
        let mut connector = chosen.unwrap_or(&self.plain).clone();
        Box::pin(async move { connector.call(uri).await })
    }
}

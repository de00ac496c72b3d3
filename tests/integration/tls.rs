//! TLS: an `https://` backend (forge-sim behind a TLS front, as a Forge behind an HTTPS
//! proxy on a rented GPU), checked against its `tls_ca_file`, refused against the system's
//! roots, accepted unchecked when told; and the proxy's own HTTPS listener, its certificate
//! read again on `SIGHUP`.

use std::net::SocketAddr;
use std::path::PathBuf;
use std::sync::Arc;
use std::time::{Duration, Instant};

use http::StatusCode;
use http_body_util::{BodyExt, Empty};
use rcgen::{BasicConstraints, CertificateParams, IsCa, Issuer, KeyPair};
use rustls_pki_types::pem::PemObject;
use rustls_pki_types::{CertificateDer, PrivateKeyDer};
use serde_json::Value;

use crate::support::{client, get_json, journal_of, sim, txt2img_with, Proxy, ProxyProcess, SD15};

/// A certificate authority and a server certificate it signed for `localhost` and
/// 127.0.0.1, as PEM files in a folder of their own.
struct Pki {
    dir: PathBuf,
    ca: PathBuf,
    cert: PathBuf,
    key: PathBuf,
}

impl Pki {
    fn new(name: &str) -> Pki {
        let dir = std::env::temp_dir().join(format!("fvp-tls-{name}-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&dir);
        std::fs::create_dir_all(&dir).unwrap();
        let pki = Pki {
            ca: dir.join("ca.pem"),
            cert: dir.join("cert.pem"),
            key: dir.join("key.pem"),
            dir,
        };
        pki.issue();
        pki
    }

    /// A new authority and server certificate, over the files of the last.
    fn issue(&self) {
        let ca_key = KeyPair::generate().unwrap();
        let mut ca_params = CertificateParams::new(Vec::<String>::new()).unwrap();
        ca_params.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
        let ca = ca_params.self_signed(&ca_key).unwrap();
        let issuer = Issuer::new(ca_params, ca_key);
        let key = KeyPair::generate().unwrap();
        let params =
            CertificateParams::new(vec!["localhost".to_owned(), "127.0.0.1".to_owned()]).unwrap();
        let cert = params.signed_by(&key, &issuer).unwrap();
        std::fs::write(&self.ca, ca.pem()).unwrap();
        std::fs::write(&self.cert, cert.pem()).unwrap();
        std::fs::write(&self.key, key.serialize_pem()).unwrap();
    }

    fn server_config(&self) -> Arc<rustls::ServerConfig> {
        let chain: Vec<CertificateDer<'static>> = CertificateDer::pem_file_iter(&self.cert)
            .unwrap()
            .collect::<Result<_, _>>()
            .unwrap();
        let key = PrivateKeyDer::from_pem_file(&self.key).unwrap();
        let config =
            rustls::ServerConfig::builder_with_provider(forge_vram_proxy::config::tls_provider())
                .with_safe_default_protocol_versions()
                .unwrap()
                .with_no_client_auth()
                .with_single_cert(chain, key)
                .unwrap();
        Arc::new(config)
    }

    /// A client that trusts this authority alone.
    fn client(
        &self,
    ) -> hyper_util::client::legacy::Client<
        hyper_rustls::HttpsConnector<hyper_util::client::legacy::connect::HttpConnector>,
        Empty<bytes::Bytes>,
    > {
        let mut roots = rustls::RootCertStore::empty();
        for ca in CertificateDer::pem_file_iter(&self.ca).unwrap() {
            roots.add(ca.unwrap()).unwrap();
        }
        let tls =
            rustls::ClientConfig::builder_with_provider(forge_vram_proxy::config::tls_provider())
                .with_safe_default_protocol_versions()
                .unwrap()
                .with_root_certificates(roots)
                .with_no_client_auth();
        let connector = hyper_rustls::HttpsConnectorBuilder::new()
            .with_tls_config(tls)
            .https_only()
            .enable_http1()
            .build();
        hyper_util::client::legacy::Client::builder(hyper_util::rt::TokioExecutor::new())
            .build(connector)
    }
}

impl Drop for Pki {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.dir);
    }
}

/// TLS in front of `target`: each connection's handshake, then its bytes both ways.
async fn tls_front(target: SocketAddr, config: Arc<rustls::ServerConfig>) -> SocketAddr {
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    let acceptor = tokio_rustls::TlsAcceptor::from(config);
    tokio::spawn(async move {
        while let Ok((stream, _)) = listener.accept().await {
            let acceptor = acceptor.clone();
            tokio::spawn(async move {
                let Ok(mut tls) = acceptor.accept(stream).await else {
                    return;
                };
                let Ok(mut plain) = tokio::net::TcpStream::connect(target).await else {
                    return;
                };
                let _ = tokio::io::copy_bidirectional(&mut tls, &mut plain).await;
            });
        }
    });
    addr
}

async fn get_status(
    client: &hyper_util::client::legacy::Client<
        hyper_rustls::HttpsConnector<hyper_util::client::legacy::connect::HttpConnector>,
        Empty<bytes::Bytes>,
    >,
    url: &str,
) -> Result<(StatusCode, String), String> {
    let response = client
        .get(url.parse().unwrap())
        .await
        .map_err(|e| format!("{e:?}"))?;
    let status = response.status();
    let body = response.into_body().collect().await.unwrap().to_bytes();
    Ok((status, String::from_utf8_lossy(&body).into_owned()))
}

async fn generate(proxy: &Proxy) -> reqwest::Response {
    client()
        .post(proxy.url("/sdapi/v1/txt2img"))
        .header("content-type", "application/json")
        .body(txt2img_with(SD15))
        .send()
        .await
        .unwrap()
}

#[tokio::test]
async fn an_https_backend_is_reached_through_its_tls_ca_file() {
    let sim = sim().await;
    let pki = Pki::new("ca-file");
    let front = tls_front(sim.addr, pki.server_config()).await;
    let proxy = Proxy::start(
        &format!("https://localhost:{}", front.port()),
        &format!("tls_ca_file = \"{}\"\n", pki.ca.display()),
    )
    .await;
    let response = generate(&proxy).await;
    assert_eq!(response.status(), StatusCode::OK);
    assert_eq!(journal_of(&sim, "generation").len(), 1);
    let options = client()
        .get(proxy.url("/sdapi/v1/options"))
        .send()
        .await
        .unwrap();
    assert_eq!(options.status(), StatusCode::OK);
    let status: Value = get_json(proxy.url("/proxy/status")).await;
    assert_eq!(status["backends"][0]["healthy"], true);
    assert_eq!(status["backends"][0]["credentials"], "accepted");
}

#[tokio::test]
async fn an_https_backend_with_a_certificate_nobody_trusts_is_refused_unless_told_not_to_check() {
    let sim = sim().await;
    let pki = Pki::new("untrusted");
    let front = tls_front(sim.addr, pki.server_config()).await;
    let url = format!("https://localhost:{}", front.port());

    // Against the system's roots (or no roots at all here): no generation reaches Forge,
    // and the status says why.
    let checked = Proxy::start(&url, "").await;
    let until = Instant::now() + Duration::from_secs(10);
    let health = loop {
        let status: Value = get_json(checked.url("/proxy/status")).await;
        if status["backends"][0]["healthy"] == false {
            break status["backends"][0]["health"].as_str().unwrap().to_owned();
        }
        assert!(Instant::now() < until, "{status:#}");
        tokio::time::sleep(Duration::from_millis(20)).await;
    };
    assert!(
        health.contains("invalid peer certificate: UnknownIssuer"),
        "{health}"
    );
    let response = generate(&checked).await;
    assert_eq!(response.status(), StatusCode::SERVICE_UNAVAILABLE);
    assert!(journal_of(&sim, "generation").is_empty());
    // A request that is not a generation says it too, naming the backend.
    let response = client()
        .get(checked.url("/sdapi/v1/options"))
        .send()
        .await
        .unwrap();
    assert_eq!(response.status(), StatusCode::BAD_GATEWAY);
    let body: Value = response.json().await.unwrap();
    let message = body["detail"].as_str().unwrap();
    assert!(
        message.contains(&url) && message.contains("invalid peer certificate: UnknownIssuer"),
        "{message}"
    );

    // Told not to check: it goes through.
    let unchecked = Proxy::start(&url, "tls_insecure_skip_verify = true\n").await;
    let response = generate(&unchecked).await;
    assert_eq!(response.status(), StatusCode::OK);
    assert_eq!(journal_of(&sim, "generation").len(), 1);
}

#[tokio::test]
async fn the_listener_speaks_https_and_takes_a_new_certificate_on_sighup() {
    let sim = sim().await;
    let pki = Pki::new("listener");
    let config = pki.dir.join("config.toml");
    std::fs::write(
        &config,
        format!(
            "[[backends]]\nurl = \"{}\"\nvram_source = \"backend\"\n\n[tls]\ncert_file = \"{}\"\nkey_file = \"{}\"\n",
            sim.url(),
            pki.cert.display(),
            pki.key.display()
        ),
    )
    .unwrap();
    let proxy = ProxyProcess::start(&["--config", config.to_str().unwrap()]);
    let https = format!("https://localhost:{}/proxy/health", proxy.addr.port());
    let (status, body) = get_status(&pki.client(), &https).await.unwrap();
    assert_eq!(
        (status, body.as_str()),
        (StatusCode::OK, "{\"status\":\"ok\"}")
    );
    let progress = format!("https://127.0.0.1:{}/sdapi/v1/progress", proxy.addr.port());
    assert_eq!(
        get_status(&pki.client(), &progress).await.unwrap().0,
        StatusCode::OK
    );

    // Plain HTTP on the TLS port gets no answer.
    let plain = client().get(proxy.url("/proxy/health")).send().await;
    assert!(plain.is_err(), "{plain:?}");

    // A new authority and certificate, read on SIGHUP: clients of the new authority get in,
    // those of the old one no longer.
    let old_client = pki.client();
    pki.issue();
    proxy.signal("HUP");
    proxy
        .log_event("reload", |event| {
            event["message"] == "configuration reloaded"
        })
        .await;
    let (status, _) = get_status(&pki.client(), &https).await.unwrap();
    assert_eq!(status, StatusCode::OK);
    let refused = get_status(&old_client, &https).await.unwrap_err();
    assert!(refused.to_lowercase().contains("certificate"), "{refused}");
}

#[test]
fn the_health_subcommand_asks_over_https_when_the_listener_speaks_it() {
    let runtime = tokio::runtime::Runtime::new().unwrap();
    let pki = Pki::new("health");
    let sim = runtime.block_on(sim());
    let port = {
        let probe = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        probe.local_addr().unwrap().port()
    };
    let config = pki.dir.join("config.toml");
    std::fs::write(
        &config,
        format!(
            "listen = \"127.0.0.1:{port}\"\n[[backends]]\nurl = \"{}\"\nvram_source = \"backend\"\n\n[tls]\ncert_file = \"{}\"\nkey_file = \"{}\"\n",
            sim.url(),
            pki.cert.display(),
            pki.key.display()
        ),
    )
    .unwrap();
    let binary = env!("CARGO_BIN_EXE_forge-vram-proxy");
    let mut server = std::process::Command::new(binary)
        .args(["--config", config.to_str().unwrap()])
        .env_remove("FORGE_VRAM_PROXY_CONFIG")
        .env("XDG_RUNTIME_DIR", &pki.dir)
        .stdout(std::process::Stdio::null())
        .stderr(std::process::Stdio::null())
        .spawn()
        .unwrap();
    let health = || {
        std::process::Command::new(binary)
            .args(["--config", config.to_str().unwrap(), "health"])
            .env("XDG_RUNTIME_DIR", &pki.dir)
            .output()
            .unwrap()
    };
    let until = Instant::now() + Duration::from_secs(10);
    let mut last = health();
    while !last.status.success() && Instant::now() < until {
        std::thread::sleep(Duration::from_millis(100));
        last = health();
    }
    let _ = server.kill();
    let _ = server.wait();
    assert!(
        last.status.success(),
        "{}",
        String::from_utf8_lossy(&last.stderr)
    );
    drop(sim);
}

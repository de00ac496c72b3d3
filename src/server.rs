//! Serving: `run(listener, config, shutdown)`, the connection loop, and the signals that end it.
//!
//! Connections are served with hyper's HTTP/1.1 connection directly rather than through
//! `axum::serve`: axum's server first reads a few bytes to tell HTTP/1 from HTTP/2 and hands
//! them back to hyper, and that split first read makes hyper grow every connection's read
//! buffer from 8 to 16 KiB, kept while the connection idles. Forge speaks HTTP/1.1 only, and
//! so does the proxy.

use std::convert::Infallible;
use std::future::Future;
use std::net::SocketAddr;
use std::pin::Pin;
use std::time::Duration;

use axum::body::Body;
use axum::response::Response;
use http::Request;
use hyper::body::Incoming;
use hyper::server::conn::http1;
use hyper_util::rt::TokioIo;
use tokio::net::{TcpListener, TcpStream};
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;

use crate::config::Config;
use crate::proxy::{app, Proxy};
use crate::state::AppState;

/// After an accept error other than a failed handshake (e.g. too many open files), wait this
/// long before accepting again rather than spinning.
const ACCEPT_ERROR_PAUSE: Duration = Duration::from_millis(100);

/// Serves until `shutdown` completes, then stops accepting and lets in-flight requests
/// finish for at most `timeouts.shutdown_grace`.
pub async fn run(
    listener: TcpListener,
    config: Config,
    shutdown: impl Future<Output = ()> + Send + 'static,
) -> std::io::Result<()> {
    let grace = config.timeouts.shutdown_grace;
    warn_if_open(&listener, &config);
    let state = AppState::build(config).await?;
    let background = CancellationToken::new();
    crate::backend::health::check::spawn_checks(&state, &background);
    let _stop_background = background.drop_guard();
    let proxy = app(state.clone());
    let stopping = CancellationToken::new();
    let connections = TaskTracker::new();
    tokio::pin!(shutdown);
    loop {
        let (stream, peer) = tokio::select! {
            accepted = listener.accept() => match accepted {
                Ok(accepted) => accepted,
                Err(e) => {
                    accept_failed(&e).await;
                    continue;
                }
            },
            () = &mut shutdown => break,
        };
        connections.spawn(serve_connection(
            stream,
            peer,
            proxy.clone(),
            stopping.clone(),
        ));
    }
    drop(listener);
    tracing::info!("shutting down: no new connections, finishing in-flight requests");
    stopping.cancel();
    state.stopping.cancel();
    connections.close();
    state.work.close();
    // In-flight requests, then what outlives them: generations whose client left (Forge is
    // still running them), upgraded connections (closing now).
    let drained = async {
        connections.wait().await;
        state.work.wait().await;
    };
    match grace {
        Some(grace) => {
            if tokio::time::timeout(grace, drained).await.is_err() {
                tracing::warn!("shutdown grace period over: closing the remaining connections");
            }
        }
        None => drained.await,
    }
    Ok(())
}

/// Listening beyond loopback without client keys lets anyone who reaches the port change
/// Forge's settings or stop it: said once, at start.
fn warn_if_open(listener: &TcpListener, config: &Config) {
    let Ok(addr) = listener.local_addr() else {
        return;
    };
    if config.access.keys.is_empty() && !addr.ip().is_loopback() {
        tracing::warn!(
            addr = %addr,
            "listening beyond loopback without client keys: anyone who can reach this port can change Forge's settings, switch its checkpoint or stop it; add [[access.keys]] (docs/security.md)"
        );
    }
}

/// One client connection: HTTP/1.1 with upgrades (websockets), until the client closes it
/// or, once `stopping` fires, its in-flight request is answered.
async fn serve_connection(
    stream: TcpStream,
    peer: SocketAddr,
    proxy: Proxy,
    stopping: CancellationToken,
) {
    // Responses go out as soon as they are written: no Nagle delay behind a small write.
    if let Err(e) = stream.set_nodelay(true) {
        tracing::debug!(error = %e, "cannot set TCP_NODELAY");
    }
    let service = ClientService { proxy, peer };
    let connection = http1::Builder::new()
        .serve_connection(TokioIo::new(stream), service)
        .with_upgrades();
    tokio::pin!(connection);
    let served = tokio::select! {
        served = connection.as_mut() => served,
        () = stopping.cancelled() => {
            connection.as_mut().graceful_shutdown();
            connection.await
        }
    };
    if let Err(e) = served {
        tracing::debug!(client = %peer, error = %e, "client connection ended with an error");
    }
}

/// The proxy as hyper sees it, with the client's address.
#[derive(Clone)]
struct ClientService {
    proxy: Proxy,
    peer: SocketAddr,
}

impl hyper::service::Service<Request<Incoming>> for ClientService {
    type Response = Response;
    type Error = Infallible;
    type Future = Pin<Box<dyn Future<Output = Result<Response, Infallible>> + Send>>;

    fn call(&self, request: Request<Incoming>) -> Self::Future {
        let proxy = self.proxy.clone();
        let client = self.peer.ip();
        Box::pin(async move { Ok(proxy.handle(Some(client), request.map(Body::new)).await) })
    }
}

/// Errors of one connection's handshake are that connection's; anything else (out of file
/// descriptors) is logged and waited out.
async fn accept_failed(error: &std::io::Error) {
    use std::io::ErrorKind::{ConnectionAborted, ConnectionRefused, ConnectionReset};
    if matches!(
        error.kind(),
        ConnectionRefused | ConnectionAborted | ConnectionReset
    ) {
        return;
    }
    tracing::error!(error = %error, "cannot accept a connection");
    tokio::time::sleep(ACCEPT_ERROR_PAUSE).await;
}

/// Completes on Ctrl-C or SIGTERM.
pub async fn shutdown_signal() {
    let ctrl_c = async {
        if let Err(e) = tokio::signal::ctrl_c().await {
            tracing::error!(error = %e, "cannot listen for Ctrl-C");
            std::future::pending::<()>().await;
        }
    };
    #[cfg(unix)]
    let terminate = async {
        match tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate()) {
            Ok(mut signal) => {
                signal.recv().await;
            }
            Err(e) => {
                tracing::error!(error = %e, "cannot listen for SIGTERM");
                std::future::pending::<()>().await;
            }
        }
    };
    #[cfg(not(unix))]
    let terminate = std::future::pending::<()>();
    tokio::select! {
        () = ctrl_c => {},
        () = terminate => {},
    }
}

/// Asks the proxy listening on `listen` for `/proxy/health`: the container health check,
/// built in so the runtime image needs no shell or curl.
pub async fn check_health(listen: SocketAddr, timeout: std::time::Duration) -> Result<(), String> {
    use http_body_util::Empty;
    use hyper_util::client::legacy::Client;
    use hyper_util::rt::TokioExecutor;

    let mut target = listen;
    if target.ip().is_unspecified() {
        target.set_ip(match target {
            SocketAddr::V4(_) => std::net::Ipv4Addr::LOCALHOST.into(),
            SocketAddr::V6(_) => std::net::Ipv6Addr::LOCALHOST.into(),
        });
    }
    let client = Client::builder(TokioExecutor::new()).build_http::<Empty<bytes::Bytes>>();
    let uri = format!("http://{target}/proxy/health")
        .parse::<http::Uri>()
        .map_err(|e| e.to_string())?;
    match tokio::time::timeout(timeout, client.get(uri)).await {
        Ok(Ok(response)) if response.status().is_success() => Ok(()),
        Ok(Ok(response)) => Err(format!("{target} answered {}", response.status())),
        Ok(Err(e)) => Err(format!("{target}: {e}")),
        Err(_) => Err(format!("{target}: no answer within {timeout:?}")),
    }
}

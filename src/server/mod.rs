//! Serving: `run(listener, config, shutdown)`, the connection loop, and the signals that end it.
//!
//! Connections are served with hyper's HTTP/1.1 connection directly rather than through
//! `axum::serve`: axum's server first reads a few bytes to tell HTTP/1 from HTTP/2 and hands
//! them back to hyper, and that split first read makes hyper grow every connection's read
//! buffer from 8 to 16 KiB, kept while the connection idles. Forge speaks HTTP/1.1 only, and
//! so does the proxy.

pub mod connection;
pub mod reload;
pub mod runtime_file;

use std::future::Future;
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::{Duration, Instant};

use tokio::net::{TcpListener, TcpStream};
use tokio::sync::Semaphore;
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;

use crate::config::Config;
use crate::proxy::app;
use crate::state::AppState;

/// After an accept error other than a failed handshake (e.g. too many open files), wait this
/// long before accepting again rather than spinning.
const ACCEPT_ERROR_PAUSE: Duration = Duration::from_millis(100);
/// Accept errors are logged at most this often.
const ACCEPT_ERROR_LOG_EVERY: Duration = Duration::from_secs(1);
/// A refused connection gets this long to send its request's head, then as long to take its
/// 503 (and to close its side).
const REFUSAL_WRITE_TIMEOUT: Duration = Duration::from_secs(1);
/// The most of a refused connection's head that is read before the refusal.
const REFUSAL_HEAD_MAX: usize = 16 * 1024;
/// Descriptors kept for the listener, log files, NVML and the proxy's own calls.
const RESERVED_DESCRIPTORS: u64 = 64;
/// A client connection's descriptors: its socket, the second handle that watches it, and a
/// backend connection.
const DESCRIPTORS_PER_CONNECTION: u64 = 3;

/// Serves until `shutdown` completes, then stops accepting and lets in-flight requests
/// finish for at most `timeouts.shutdown_grace`.
pub async fn run(
    listener: TcpListener,
    config: Config,
    shutdown: impl Future<Output = ()> + Send + 'static,
) -> std::io::Result<()> {
    serve(listener, config, shutdown, None).await
}

/// [`run`], and on `SIGHUP` the configuration is read again from `source`.
pub async fn run_reloading(
    listener: TcpListener,
    config: Config,
    shutdown: impl Future<Output = ()> + Send + 'static,
    source: reload::Source,
) -> std::io::Result<()> {
    serve(listener, config, shutdown, Some(source)).await
}

async fn serve(
    listener: TcpListener,
    config: Config,
    shutdown: impl Future<Output = ()> + Send + 'static,
    source: Option<reload::Source>,
) -> std::io::Result<()> {
    warn_if_open(&listener, &config);
    let state = AppState::build(config).await?;
    let background = CancellationToken::new();
    crate::backend::health::check::spawn_checks(&state, &background);
    crate::admin::live::spawn_progress_poller(&state, &background);
    crate::admin::live::spawn_sampler(&state, &background);
    let fits = descriptors_fit();
    let limit = connection_limit(state.config().max_connections, fits);
    let clients = Clients {
        proxy: app(state.clone()),
        state: state.clone(),
        slots: Arc::new(Semaphore::new(limit)),
        limit,
        reloader: None,
        stopping: CancellationToken::new(),
        tasks: TaskTracker::new(),
    };
    if let Some(source) = &source {
        state.install(state.config(), source.file.clone());
    }
    let reloader = source.map(|source| {
        let connections = reload::Connections {
            slots: clients.slots.clone(),
            limit,
            fits,
        };
        Arc::new(reload::Reloader::new(
            source,
            state.clone(),
            background.clone(),
            connections,
        ))
    });
    let clients = Clients {
        reloader: reloader.clone(),
        ..clients
    };
    let mut hangups = reload::Hangups::listen(reloader.is_some());
    let _stop_background = background.drop_guard();
    let mut accept_errors = AcceptErrors::default();
    tokio::pin!(shutdown);
    loop {
        tokio::select! {
            accepted = listener.accept() => match accepted {
                Ok((stream, peer)) => clients.open(stream, peer),
                Err(e) => accept_errors.failed(&e).await,
            },
            () = hangups.next() => {
                if let Some(reloader) = reloader.clone() {
                    tokio::spawn(async move { reloader.reload().await });
                }
            }
            () = &mut shutdown => break,
        }
    }
    drop(listener);
    clients.close().await;
    Ok(())
}

/// The client connections: their slots under `limits.max_connections`, their tasks, and
/// their end at shutdown.
struct Clients {
    proxy: crate::proxy::Proxy,
    state: AppState,
    slots: Arc<Semaphore>,
    /// The limit at start (a reload may change it: the reloader knows the one in force).
    limit: usize,
    reloader: Option<Arc<reload::Reloader>>,
    /// Cancelled at shutdown: quiet connections close at once.
    stopping: CancellationToken,
    tasks: TaskTracker,
}

impl Clients {
    /// Serves a new connection with the configuration in force, or refuses it when every
    /// slot is taken.
    fn open(&self, stream: TcpStream, peer: SocketAddr) {
        let Ok(slot) = self.slots.clone().try_acquire_owned() else {
            self.state.metrics.connection_refused();
            let limit = self
                .reloader
                .as_ref()
                .map_or(self.limit, |r| r.connection_limit());
            self.tasks.spawn(refuse(stream, limit));
            return;
        };
        let config = self.state.config();
        let timeouts = connection::Timeouts {
            client_header: config.timeouts.client_header,
            keep_alive: config.timeouts.keep_alive,
            client_body_idle: config.timeouts.client_body_idle,
        };
        let tls = config.tls.clone().map(tokio_rustls::TlsAcceptor::from);
        self.tasks.spawn(connection::serve(
            stream,
            peer,
            self.proxy.clone(),
            timeouts,
            self.stopping.clone(),
            slot,
            tls,
        ));
    }

    /// In-flight requests, then what outlives them: generations whose client left (Forge is
    /// still running them), upgraded connections (closing now); for at most
    /// `timeouts.shutdown_grace` as configured now.
    async fn close(self) {
        tracing::info!("shutting down: no new connections, finishing in-flight requests");
        let state = &self.state;
        self.stopping.cancel();
        state.stopping.cancel();
        self.tasks.close();
        state.work.close();
        let drained = async {
            self.tasks.wait().await;
            state.work.wait().await;
        };
        match state.config().timeouts.shutdown_grace {
            Some(grace) => {
                if tokio::time::timeout(grace, drained).await.is_err() {
                    tracing::warn!("shutdown grace period over: closing the remaining connections");
                }
            }
            None => drained.await,
        }
    }
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

/// Accept errors other than one connection's failed handshake (out of file descriptors):
/// logged at most once a second, with how many there were, and waited out.
#[derive(Default)]
struct AcceptErrors {
    last_logged: Option<Instant>,
    unlogged: u64,
}

impl AcceptErrors {
    async fn failed(&mut self, error: &std::io::Error) {
        use std::io::ErrorKind::{ConnectionAborted, ConnectionRefused, ConnectionReset};
        if matches!(
            error.kind(),
            ConnectionRefused | ConnectionAborted | ConnectionReset
        ) {
            return;
        }
        self.unlogged += 1;
        if self
            .last_logged
            .is_none_or(|at| at.elapsed() >= ACCEPT_ERROR_LOG_EVERY)
        {
            tracing::error!(error = %error, errors = self.unlogged, "cannot accept connections");
            self.last_logged = Some(Instant::now());
            self.unlogged = 0;
        }
        tokio::time::sleep(ACCEPT_ERROR_PAUSE).await;
    }
}

/// A connection beyond `limits.max_connections`: a 503 that says so, then closed.
async fn refuse(mut stream: TcpStream, limit: usize) {
    use tokio::io::AsyncWriteExt;
    let message = format!(
        "forge-vram-proxy: the proxy has {limit} connections open, its limit (limits.max_connections); try again shortly"
    );
    let body = serde_json::json!({
        "error": "TooManyConnections", "detail": message, "body": "", "message": message, "errors": message,
    })
    .to_string();
    let response = format!(
        "HTTP/1.1 503 Service Unavailable\r\ncontent-type: application/json\r\nretry-after: 1\r\nx-forge-proxy-error: true\r\nconnection: close\r\ncontent-length: {}\r\n\r\n{body}",
        body.len()
    );
    use tokio::io::AsyncReadExt;
    // The request's head first (as much as comes within the time): a client that is still
    // writing when the answer comes takes it for an answer to nothing.
    let mut head = Vec::new();
    let _ = tokio::time::timeout(REFUSAL_WRITE_TIMEOUT, async {
        let mut buffer = [0u8; 4096];
        while head.len() < REFUSAL_HEAD_MAX && !head.windows(4).any(|w| w == b"\r\n\r\n") {
            match stream.read(&mut buffer).await {
                Ok(0) | Err(_) => return,
                Ok(n) => head.extend_from_slice(&buffer[..n]),
            }
        }
    })
    .await;
    let written = tokio::time::timeout(REFUSAL_WRITE_TIMEOUT, async {
        stream.write_all(response.as_bytes()).await?;
        stream.shutdown().await?;
        // Closed in stages: the client's request, unread, would otherwise reset the
        // connection before the client has read the refusal.
        let mut sink = [0u8; 4096];
        while stream.read(&mut sink).await? > 0 {}
        Ok::<(), std::io::Error>(())
    })
    .await;
    if let Ok(Err(e)) = written {
        tracing::debug!(error = %e, "could not write the refusal");
    }
}

/// The connections the descriptors allow: the soft limit is raised to the hard limit first.
/// `None` when the limit cannot be read.
fn descriptors_fit() -> Option<usize> {
    let descriptors = match rlimit::increase_nofile_limit(u64::MAX) {
        Ok(limit) => limit,
        Err(e) => {
            tracing::warn!(error = %e, "cannot read or raise the open file limit");
            return None;
        }
    };
    let fits = usize::try_from(
        descriptors.saturating_sub(RESERVED_DESCRIPTORS) / DESCRIPTORS_PER_CONNECTION,
    )
    .unwrap_or(usize::MAX)
    .max(1);
    Some(fits)
}

/// `limits.max_connections`, lowered with a warning to what the descriptors allow.
fn connection_limit(configured: usize, fits: Option<usize>) -> usize {
    match fits {
        Some(fits) if configured > fits => {
            tracing::warn!(
                configured,
                using = fits,
                "limits.max_connections is more than the open file limit allows: lowered"
            );
            fits
        }
        _ => configured,
    }
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

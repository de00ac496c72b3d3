//! Serving: the accept loop, graceful shutdown that also closes open
//! connections, and `start` / `SimServer` for tests that run the simulator
//! in-process.

use std::future::Future;
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use axum::response::Response;

use axum::http::Request;
use hyper::body::Incoming;
use hyper::server::conn::http1;
use hyper_util::rt::{TokioIo, TokioTimer};
use hyper_util::service::TowerToHyperService;
use tokio::net::TcpListener;
use tokio::sync::Notify;
use tokio::task::JoinHandle;
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;
use tower::ServiceExt;

use crate::app::app;
use crate::config::SimConfig;
use crate::error::CloseConnection;
use crate::state::SimState;

/// How long `run` lets in-flight requests finish after shutdown is asked,
/// before it closes their connections.
const DRAIN: Duration = Duration::from_secs(5);

/// Serves a simulator with `config` on `listener` until `shutdown`
/// completes; then stops accepting, lets requests in flight finish for a
/// few seconds and closes every connection.
pub async fn run(
    listener: TcpListener,
    config: SimConfig,
    shutdown: impl Future<Output = ()> + Send + 'static,
) -> std::io::Result<()> {
    serve(listener, SimState::new(config), shutdown, DRAIN).await
}

/// Starts a simulator on `127.0.0.1:0` (ignoring `config.listen`) in the
/// background, for tests.
pub async fn start(config: SimConfig) -> std::io::Result<SimServer> {
    let listener = TcpListener::bind("127.0.0.1:0").await?;
    let addr = listener.local_addr()?;
    let state = SimState::new(config);
    let stop = CancellationToken::new();
    let shutdown = stop.clone().cancelled_owned();
    let task = tokio::spawn(serve(listener, state.clone(), shutdown, Duration::ZERO));
    Ok(SimServer {
        addr,
        state,
        stop,
        task: Some(task),
    })
}

/// A simulator running in the background. Dropping it stops it too.
#[derive(Debug)]
pub struct SimServer {
    /// Where it listens.
    pub addr: SocketAddr,
    state: SimState,
    stop: CancellationToken,
    task: Option<JoinHandle<std::io::Result<()>>>,
}

impl SimServer {
    /// `http://127.0.0.1:PORT`.
    pub fn url(&self) -> String {
        format!("http://{}", self.addr)
    }

    /// The simulator's state (journal, options) without going through HTTP.
    pub fn state(&self) -> &SimState {
        &self.state
    }

    /// Stops accepting, closes every open connection and waits until done.
    pub async fn stop(mut self) {
        self.stop.cancel();
        if let Some(task) = self.task.take() {
            let _ = task.await;
        }
    }
}

impl Drop for SimServer {
    fn drop(&mut self) {
        self.stop.cancel();
    }
}

/// The accept loop. Each connection runs in its own task. On shutdown the
/// loop stops accepting, connections finish their requests in flight for up
/// to `drain` and are closed; then the simulator's own token ends what
/// outlives a connection (websockets, generations).
async fn serve(
    listener: TcpListener,
    state: SimState,
    shutdown: impl Future<Output = ()> + Send + 'static,
    drain: Duration,
) -> std::io::Result<()> {
    let closing = CancellationToken::new();
    let router = app(state.clone());
    let connections = TaskTracker::new();
    tokio::pin!(shutdown);
    loop {
        let (stream, peer) = tokio::select! {
            accepted = listener.accept() => match accepted {
                Ok(accepted) => accepted,
                Err(error) => {
                    // Out of file descriptors and the like: back off, retry.
                    tracing::warn!("accept failed: {error}");
                    tokio::time::sleep(Duration::from_millis(50)).await;
                    continue;
                }
            },
            () = &mut shutdown => break,
        };
        // As uvicorn does: answers are not held back by Nagle's algorithm.
        if let Err(error) = stream.set_nodelay(true) {
            tracing::debug!("TCP_NODELAY on a connection from {peer}: {error}");
        }
        // An answer made from an exception ends its connection, as uvicorn's does.
        let failed = Arc::new(Notify::new());
        let service = TowerToHyperService::new(ServiceExt::<Request<Incoming>>::map_response(
            router.clone(),
            {
                let failed = failed.clone();
                move |response: Response| {
                    if response.extensions().get::<CloseConnection>().is_some() {
                        failed.notify_one();
                    }
                    response
                }
            },
        ));
        let closing = closing.clone();
        connections.spawn(async move {
            let connection = http1::Builder::new()
                .timer(TokioTimer::new())
                .serve_connection(TokioIo::new(stream), service)
                .with_upgrades();
            tokio::pin!(connection);
            tokio::select! {
                result = connection.as_mut() => {
                    if let Err(error) = result {
                        tracing::debug!("connection from {peer}: {error}");
                    }
                    return;
                }
                () = failed.notified() => {
                    // The answer is written out, then the connection closes.
                    connection.as_mut().graceful_shutdown();
                    let _ = connection.await;
                    return;
                }
                () = closing.cancelled() => {}
            }
            connection.as_mut().graceful_shutdown();
            let _ = tokio::time::timeout(drain, connection).await;
        });
    }
    drop(listener);
    closing.cancel();
    connections.close();
    connections.wait().await;
    state.shutdown_token().cancel();
    Ok(())
}

//! The connections to each backend, kept open between requests (HTTP/1.1 keep-alive) on
//! hyper's `client::conn::http1`.
//!
//! The rules, each for a reason:
//! - **Idle connections expire** after [`IDLE_EXPIRY`], below uvicorn's 5 s keep-alive:
//!   a connection Forge is about to close is not picked for a request.
//! - **A retry only before the request was written.** A pooled connection found closed
//!   before any byte of the request went out (hyper hands the request back) is left, and
//!   the request goes on a fresh connection. Once a byte has been written it is never sent
//!   again: a generation is not idempotent, and Forge may be running it.
//! - **A connection comes back only after its response body has ended**, whole; one whose
//!   body was dropped half-read is closed, as its remaining bytes would be the next
//!   response's beginning.
//! - **Upgrades leave the pool**: after `101 Switching Protocols` the connection belongs
//!   to the tunnel.
//! - **A bounded number per backend** (`limits.backend_connections`), in use and idle
//!   together; a request beyond it waits for one to come back or close.
//!
//! The most recently returned connection is taken first: it is the least likely to have
//! been closed by the backend, and the others expire sooner.
//!
//! A connection is driven by the task of the request using it, not a task of its own: the
//! request is written, its answer read and handed on in one task, with no wake-up of
//! another between them (hyper-util's client spawns one task per connection, and every
//! request crosses between the two). An idle connection is driven by no one; whether its
//! backend closed it is seen when it is next taken, or by the sweep.

use std::future::{poll_fn, Future};
use std::pin::Pin;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex, Weak};
use std::task::{Context, Poll, Waker};
use std::time::Duration;

use axum::body::Body;
use bytes::Bytes;
use http::{Request, Response, Uri};
use http_body::{Frame, SizeHint};
use hyper::body::Incoming;
use hyper::client::conn::http1::{self, SendRequest};
use tokio::sync::Notify;
use tokio::time::Instant;
use tower::Service;

use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::gauge::Gauge;

use super::tls;
use crate::config::{BackendConfig, Config};

type BoxError = Box<dyn std::error::Error + Send + Sync>;

/// Where a backend's [`ConnectionFigures`] come from, by its URL: the proxy's metrics.
pub type Figures = Arc<dyn Fn(&str) -> ConnectionFigures + Send + Sync>;

/// One backend's connection figures: handles on its series in the proxy's metrics, taken
/// once when the pool is made, so the pool records with no lookup or allocation per
/// request.
#[derive(Clone, Debug)]
pub struct ConnectionFigures {
    pub idle: Gauge,
    pub in_use: Gauge,
    pub opened: Counter,
    pub reused: Counter,
    pub retried: Counter,
    pub dropped_closed: Counter,
    pub dropped_expired: Counter,
}

/// Why an idle connection left the pool without being used again.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Dropped {
    /// Its backend closed it (it was stale).
    Closed,
    /// Idle past [`IDLE_EXPIRY`].
    Expired,
}

impl ConnectionFigures {
    fn dropped(&self, why: Dropped) {
        match why {
            Dropped::Closed => self.dropped_closed.inc(),
            Dropped::Expired => self.dropped_expired.inc(),
        };
    }
}

/// What reads and writes a connection (hyper's `Connection` with upgrades, whose type is
/// not nameable): polled by the request on it.
type Driver = Pin<Box<dyn Future<Output = hyper::Result<()>> + Send>>;

/// How long a connection stays idle in the pool. uvicorn closes idle keep-alive
/// connections after 5 s; a shorter time avoids reusing a connection it is closing.
pub const IDLE_EXPIRY: Duration = Duration::from_secs(4);

/// Every backend's connections.
pub struct Pool {
    slots: Vec<Arc<Slot>>,
    connector: tls::Connector,
    max_per_backend: usize,
    figures: Figures,
}

/// One backend's connections.
struct Slot {
    /// The backend's URL as configured, which names it.
    url: String,
    /// What the connector connects to: the backend's scheme and authority.
    origin: Uri,
    /// Idle connections, the most recently returned last.
    idle: Mutex<Vec<Idle>>,
    /// Connections open, in use and idle together.
    open: AtomicUsize,
    max: usize,
    /// Woken when a connection comes back or closes, for requests waiting at `max`.
    freed: Notify,
    figures: ConnectionFigures,
}

struct Idle {
    sender: SendRequest<Body>,
    driver: Driver,
    since: Instant,
}

impl Idle {
    /// Whether its backend has closed it, as a poll of its driver tells; the poll also
    /// lets a connection that has just ended a response become ready for the next.
    fn closed(&mut self, cx: &mut Context<'_>) -> bool {
        self.driver.as_mut().poll(cx).is_ready() || self.sender.is_closed()
    }
}

/// Why a request got no response.
#[derive(Debug)]
pub enum SendError {
    /// No connection could be opened.
    Connect(BoxError),
    /// The request failed on its connection.
    Request(hyper::Error),
}

/// A connection taken from the pool, or opened for a request: back to the pool only by
/// [`Lease::give_back`]; dropped, it closes.
struct Lease {
    /// `None` once given back.
    sender: Option<SendRequest<Body>>,
    /// `None` once given back, or once the connection has ended.
    driver: Option<Driver>,
    slot: Arc<Slot>,
    reused: bool,
}

impl Pool {
    pub fn new(config: &Config, connector: tls::Connector, figures: Figures) -> Self {
        let max = config.backend_connections;
        let slots = config
            .backends
            .iter()
            .map(|backend| Arc::new(Slot::new(backend, max, &figures)))
            .collect();
        Self {
            slots,
            connector,
            max_per_backend: max,
            figures,
        }
    }

    /// Sends `request` (its URI in origin form) to `backend` on a pooled connection, or a
    /// new one; a pooled one found closed before the request was written is replaced by
    /// a fresh one, once.
    pub async fn send(
        &self,
        backend: &BackendConfig,
        mut request: Request<Body>,
    ) -> Result<Response<Body>, SendError> {
        let slot = self.slot(backend);
        let mut fresh = false;
        loop {
            let mut lease = self.checkout(&slot, fresh).await?;
            match lease.exchange(request).await {
                Ok(response) => return Ok(lease.answered(response)),
                Err(mut failed) => match failed.take_message() {
                    // Nothing was written: the request is whole, and goes on a fresh
                    // connection when this one came from the pool (a fresh one is never
                    // `reused`: at most one retry).
                    Some(unsent) if lease.reused => {
                        tracing::debug!(backend = %slot.url, error = %failed.error(), "pooled connection closed before the request was written: sending it on a fresh one");
                        slot.figures.retried.inc();
                        request = unsent;
                        fresh = true;
                    }
                    _ => return Err(SendError::Request(failed.into_error())),
                },
            }
        }
    }

    /// The backend's slot; a backend not configured when the pool was made (a request
    /// that began before a reload) gets one of its own, not kept.
    fn slot(&self, backend: &BackendConfig) -> Arc<Slot> {
        match self.slots.iter().find(|slot| slot.url == backend.url) {
            Some(slot) => slot.clone(),
            None => Arc::new(Slot::new(backend, self.max_per_backend, &self.figures)),
        }
    }

    /// The most recently returned idle connection still open and ready, or else a new one;
    /// only a new one when `fresh` (an idle one then gives its place up at the bound).
    async fn checkout(&self, slot: &Arc<Slot>, fresh: bool) -> Result<Lease, SendError> {
        loop {
            while let Some(idle) = (!fresh).then(|| slot.take_idle()).flatten() {
                if let Some(lease) = slot.reuse(idle).await {
                    return Ok(lease);
                }
            }
            // Registered before the count is read, so a connection freed in between wakes it.
            let freed = slot.freed.notified();
            if slot.reserve() {
                // Boxed: opening a connection is rare, and its future large.
                return Box::pin(self.connected(slot)).await;
            }
            if let Some(idle) = fresh.then(|| slot.take_idle()).flatten() {
                drop(idle);
                slot.closed();
                continue;
            }
            freed.await;
        }
    }

    /// Opens the connection `slot` has reserved a place for.
    async fn connected(&self, slot: &Arc<Slot>) -> Result<Lease, SendError> {
        let mut connector = self.connector.clone();
        let opened = async {
            let io = connector.call(slot.origin.clone()).await?;
            let (sender, connection) = http1::Builder::new().handshake(io).await?;
            Ok::<_, BoxError>((sender, connection))
        };
        let (sender, connection) = match opened.await {
            Ok(opened) => opened,
            Err(e) => {
                slot.closed();
                return Err(SendError::Connect(e));
            }
        };
        slot.figures.opened.inc();
        slot.figures.in_use.inc();
        Ok(Lease {
            sender: Some(sender),
            driver: Some(Box::pin(connection.with_upgrades())),
            slot: slot.clone(),
            reused: false,
        })
    }

    /// Closes idle connections past [`IDLE_EXPIRY`] or closed by their backend.
    fn sweep(&self) {
        for slot in &self.slots {
            slot.sweep();
        }
    }
}

/// Sweeps `pool`'s idle connections every second while the pool lives.
pub fn keep_swept(pool: &Arc<Pool>) {
    let pool: Weak<Pool> = Arc::downgrade(pool);
    let Ok(runtime) = tokio::runtime::Handle::try_current() else {
        return;
    };
    runtime.spawn(async move {
        let mut every = tokio::time::interval(IDLE_EXPIRY / 4);
        every.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        loop {
            every.tick().await;
            match pool.upgrade() {
                Some(pool) => pool.sweep(),
                None => return,
            }
        }
    });
}

impl Slot {
    fn new(backend: &BackendConfig, max: usize, figures: &Figures) -> Self {
        let origin = Uri::builder()
            .scheme(backend.scheme.clone())
            .authority(backend.authority.clone())
            .path_and_query("/")
            .build()
            .expect("a configured backend's scheme and authority make a URI");
        Self {
            url: backend.url.clone(),
            origin,
            idle: Mutex::new(Vec::new()),
            open: AtomicUsize::new(0),
            max,
            freed: Notify::new(),
            figures: figures(&backend.url),
        }
    }

    fn take_idle(&self) -> Option<Idle> {
        let idle = self.idle.lock().unwrap_or_else(|e| e.into_inner()).pop();
        if idle.is_some() {
            self.figures.idle.dec();
        }
        idle
    }

    /// `idle` as a lease when it is still open, unexpired and ready.
    async fn reuse(self: &Arc<Self>, mut idle: Idle) -> Option<Lease> {
        if idle.since.elapsed() >= IDLE_EXPIRY {
            self.dropped(idle, Dropped::Expired);
            return None;
        }
        // Ready at once, unless its connection has yet to see the last response's end.
        let ready = poll_fn(|cx| {
            if idle.closed(cx) {
                return Poll::Ready(false);
            }
            idle.sender.poll_ready(cx).map(|ready| ready.is_ok())
        });
        if !ready.await {
            self.dropped(idle, Dropped::Closed);
            return None;
        }
        self.figures.reused.inc();
        self.figures.in_use.inc();
        Some(Lease {
            sender: Some(idle.sender),
            driver: Some(idle.driver),
            slot: self.clone(),
            reused: true,
        })
    }

    fn dropped(&self, idle: Idle, why: Dropped) {
        drop(idle);
        self.figures.dropped(why);
        self.closed();
    }

    /// Takes a place for a new connection, when one is free.
    fn reserve(&self) -> bool {
        self.open
            .fetch_update(Ordering::AcqRel, Ordering::Acquire, |open| {
                (open < self.max).then_some(open + 1)
            })
            .is_ok()
    }

    /// A connection closed: its place is free.
    fn closed(&self) {
        self.open.fetch_sub(1, Ordering::AcqRel);
        self.freed.notify_one();
    }

    fn sweep(&self) {
        let gone: Vec<(Idle, Dropped)> = {
            let mut idle = self.idle.lock().unwrap_or_else(|e| e.into_inner());
            if idle.is_empty() {
                return;
            }
            // Idle connections are driven by no one: a poll here sees a backend's close.
            let mut cx = Context::from_waker(Waker::noop());
            let mut kept = Vec::with_capacity(idle.len());
            let mut gone = Vec::new();
            for mut connection in idle.drain(..) {
                if connection.closed(&mut cx) {
                    gone.push((connection, Dropped::Closed));
                } else if connection.since.elapsed() >= IDLE_EXPIRY {
                    gone.push((connection, Dropped::Expired));
                } else {
                    kept.push(connection);
                }
            }
            *idle = kept;
            gone
        };
        for (idle, why) in gone {
            self.figures.idle.dec();
            self.dropped(idle, why);
        }
    }
}

impl Drop for Slot {
    /// The pool was replaced (a reload): its idle connections close with it.
    fn drop(&mut self) {
        let idle = self.idle.get_mut().unwrap_or_else(|e| e.into_inner()).len();
        self.figures.idle.dec_by(idle as i64);
    }
}

impl Lease {
    /// Writes `request` and reads its response head, driving the connection meanwhile.
    async fn exchange(
        &mut self,
        request: Request<Body>,
    ) -> Result<Response<Incoming>, hyper::client::conn::TrySendError<Request<Body>>> {
        let sender = self
            .sender
            .as_mut()
            .expect("a lease holds its connection until given back");
        let mut answer = std::pin::pin!(sender.try_send_request(request));
        let driver = &mut self.driver;
        poll_fn(|cx| {
            drive(driver, cx);
            answer.as_mut().poll(cx)
        })
        .await
    }

    /// The response, its body giving the connection back when it ends; a connection
    /// switching protocols goes to the tunnel instead.
    fn answered(self, response: Response<Incoming>) -> Response<Body> {
        if response.status() == http::StatusCode::SWITCHING_PROTOCOLS {
            // Out of the pool: its driver, run to its end, hands the socket to the upgrade.
            let mut this = self;
            if let Some(driver) = this.driver.take() {
                tokio::spawn(async move {
                    if let Err(e) = driver.await {
                        tracing::debug!(error = %e, "backend connection ended with an error before its upgrade");
                    }
                });
            }
            return response.map(Body::new);
        }
        response.map(|body| Body::new(Returning::new(body, self)))
    }

    /// Back to the idle connections, for the next request; its place stays taken.
    fn give_back(mut self) {
        let (Some(sender), driver) = (self.sender.take(), self.driver.take()) else {
            return;
        };
        let slot = &self.slot;
        slot.figures.in_use.dec();
        let Some(driver) = driver.filter(|_| !sender.is_closed()) else {
            slot.figures.dropped(Dropped::Closed);
            slot.closed();
            return;
        };
        slot.idle
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .push(Idle {
                sender,
                driver,
                since: Instant::now(),
            });
        slot.figures.idle.inc();
        slot.freed.notify_one();
    }
}

impl Drop for Lease {
    /// Not given back: the connection closes with its sender.
    fn drop(&mut self) {
        self.driver = None;
        if self.sender.take().is_some() {
            self.slot.figures.in_use.dec();
            self.slot.closed();
        }
    }
}

/// Lets the connection read and write what it can; one that has ended is let go.
fn drive(driver: &mut Option<Driver>, cx: &mut Context<'_>) {
    if let Some(running) = driver {
        if let Poll::Ready(ended) = running.as_mut().poll(cx) {
            if let Err(e) = ended {
                tracing::debug!(error = %e, "backend connection ended with an error");
            }
            *driver = None;
        }
    }
}

/// A response body that gives its connection back once it has ended.
struct Returning {
    body: Incoming,
    lease: Option<Lease>,
}

impl Returning {
    fn new(body: Incoming, lease: Lease) -> Self {
        let mut returning = Self {
            body,
            lease: Some(lease),
        };
        // No body at all (a 204, a HEAD, `Content-Length: 0`): ended already.
        returning.give_back_if_ended();
        returning
    }

    fn give_back_if_ended(&mut self) {
        if http_body::Body::is_end_stream(&self.body) {
            if let Some(lease) = self.lease.take() {
                lease.give_back();
            }
        }
    }
}

impl http_body::Body for Returning {
    type Data = Bytes;
    type Error = hyper::Error;

    fn poll_frame(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, hyper::Error>>> {
        if let Some(lease) = self.lease.as_mut() {
            drive(&mut lease.driver, cx);
        }
        let polled = Pin::new(&mut self.body).poll_frame(cx);
        match &polled {
            Poll::Ready(Some(Ok(_))) => self.give_back_if_ended(),
            Poll::Ready(None) => {
                if let Some(lease) = self.lease.take() {
                    lease.give_back();
                }
            }
            // A failed body leaves its connection unusable: dropped, it closes.
            Poll::Ready(Some(Err(_))) => drop(self.lease.take()),
            Poll::Pending => {}
        }
        polled
    }

    fn is_end_stream(&self) -> bool {
        self.body.is_end_stream()
    }

    fn size_hint(&self) -> SizeHint {
        self.body.size_hint()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::config::from_toml_str;
    use http_body_util::BodyExt;
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    use tokio::net::{TcpListener, TcpStream};

    /// What the test backend does with a request, by connection and request number
    /// (both from 0).
    #[derive(Clone, Copy, PartialEq, Debug)]
    enum Then {
        Answer,
        AnswerAndClose,
        /// Reads the request, closes without a byte of answer.
        Close,
        /// `101 Switching Protocols`, then echoes what it reads.
        Upgrade,
    }

    /// A backend speaking HTTP/1.1 by hand, so each rule can be put to it exactly.
    struct Backend {
        url: String,
        /// (connection, request line) of every request read, in order.
        seen: Arc<Mutex<Vec<(usize, String)>>>,
    }

    impl Backend {
        async fn start(then: fn(usize, usize) -> Then) -> Self {
            let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
            let url = format!("http://{}", listener.local_addr().unwrap());
            let seen: Arc<Mutex<Vec<(usize, String)>>> = Arc::default();
            let log = seen.clone();
            tokio::spawn(async move {
                for connection in 0.. {
                    let (socket, _) = listener.accept().await.unwrap();
                    tokio::spawn(Self::serve(socket, connection, then, log.clone()));
                }
            });
            Self { url, seen }
        }

        async fn serve(
            mut socket: TcpStream,
            connection: usize,
            then: fn(usize, usize) -> Then,
            seen: Arc<Mutex<Vec<(usize, String)>>>,
        ) {
            let mut buffer = Vec::new();
            for request in 0.. {
                let head = loop {
                    if let Some(end) = buffer.windows(4).position(|w| w == b"\r\n\r\n") {
                        break buffer.drain(..end + 4).collect::<Vec<u8>>();
                    }
                    let mut chunk = [0u8; 1024];
                    match socket.read(&mut chunk).await {
                        Ok(0) | Err(_) => return,
                        Ok(n) => buffer.extend_from_slice(&chunk[..n]),
                    }
                };
                let line = String::from_utf8_lossy(&head)
                    .lines()
                    .next()
                    .unwrap()
                    .to_owned();
                seen.lock().unwrap().push((connection, line));
                let answer: &[u8] = b"HTTP/1.1 200 OK\r\ncontent-length: 2\r\n\r\nok";
                match then(connection, request) {
                    Then::Answer => socket.write_all(answer).await.unwrap(),
                    Then::AnswerAndClose => {
                        socket.write_all(answer).await.unwrap();
                        return;
                    }
                    Then::Close => return,
                    Then::Upgrade => {
                        socket
                            .write_all(b"HTTP/1.1 101 Switching Protocols\r\nconnection: upgrade\r\nupgrade: echo\r\n\r\n")
                            .await
                            .unwrap();
                        let (mut read, mut write) = socket.split();
                        let _ = tokio::io::copy(&mut read, &mut write).await;
                        return;
                    }
                }
            }
        }

        fn seen(&self) -> Vec<(usize, String)> {
            self.seen.lock().unwrap().clone()
        }
    }

    fn pool_for(backend: &Backend, max: usize) -> (Arc<Pool>, BackendConfig) {
        let config = from_toml_str(&format!(
            "[[backends]]\nurl = \"{}\"\n[limits]\nbackend_connections = {max}\n",
            backend.url
        ))
        .unwrap();
        let connector = tls::Connector::new(&config).unwrap();
        let metrics = crate::admin::metrics::Metrics::new();
        let figures: Figures = Arc::new(move |url| metrics.backend_connections(url));
        let pool = Arc::new(Pool::new(&config, connector, figures));
        keep_swept(&pool);
        (pool, config.backends[0].clone())
    }

    fn get(path: &str, backend: &BackendConfig) -> Request<Body> {
        Request::get(path)
            .header(http::header::HOST, backend.host.clone())
            .body(Body::empty())
            .unwrap()
    }

    async fn text(pool: &Pool, backend: &BackendConfig, path: &str) -> String {
        let response = pool.send(backend, get(path, backend)).await.unwrap();
        let body = response.into_body().collect().await.unwrap().to_bytes();
        String::from_utf8(body.to_vec()).unwrap()
    }

    fn figures(pool: &Pool) -> &ConnectionFigures {
        &pool.slots[0].figures
    }

    #[tokio::test]
    async fn a_connection_comes_back_once_its_body_has_ended_and_is_used_again() {
        let backend = Backend::start(|_, _| Then::Answer).await;
        let (pool, config) = pool_for(&backend, 8);
        for path in ["/a", "/b", "/c"] {
            assert_eq!(text(&pool, &config, path).await, "ok");
        }
        let connections: Vec<usize> = backend.seen().iter().map(|(c, _)| *c).collect();
        assert_eq!(connections, [0, 0, 0]);
        assert_eq!(figures(&pool).opened.get(), 1);
        assert_eq!(figures(&pool).reused.get(), 2);
        assert_eq!(figures(&pool).idle.get(), 1);
        assert_eq!(figures(&pool).in_use.get(), 0);

        // A body dropped before its end: its connection closes, the next request opens one.
        let unread = pool.send(&config, get("/d", &config)).await.unwrap();
        assert_eq!(figures(&pool).in_use.get(), 1, "the body has not ended");
        drop(unread);
        assert_eq!(figures(&pool).in_use.get(), 0);
        assert_eq!(figures(&pool).idle.get(), 0);
        assert_eq!(text(&pool, &config, "/e").await, "ok");
        assert_eq!(
            backend.seen().last().unwrap(),
            &(1, "GET /e HTTP/1.1".to_owned())
        );
    }

    #[tokio::test]
    async fn a_kept_connection_the_backend_closed_is_replaced_before_the_request_is_written() {
        // Every connection answers one request and closes, as a backend whose keep-alive
        // ended would.
        let backend = Backend::start(|_, _| Then::AnswerAndClose).await;
        let (pool, config) = pool_for(&backend, 8);
        for path in ["/a", "/b", "/c"] {
            assert_eq!(text(&pool, &config, path).await, "ok");
            // The backend's close reaches the kept connection.
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
        // Each request written once, each on a connection of its own.
        assert_eq!(
            backend.seen(),
            [
                (0, "GET /a HTTP/1.1".to_owned()),
                (1, "GET /b HTTP/1.1".to_owned()),
                (2, "GET /c HTTP/1.1".to_owned())
            ]
        );
        assert_eq!(figures(&pool).opened.get(), 3);
        assert_eq!(figures(&pool).reused.get(), 0);
        // Seen closed when taken (the first two), or already as its body ended.
        assert!(figures(&pool).dropped_closed.get() >= 2);
    }

    #[tokio::test]
    async fn a_request_written_on_a_connection_that_then_fails_is_not_sent_again() {
        // The kept connection takes the second request, then closes without answering.
        let backend = Backend::start(|connection, request| match (connection, request) {
            (0, 1) => Then::Close,
            _ => Then::Answer,
        })
        .await;
        let (pool, config) = pool_for(&backend, 8);
        assert_eq!(text(&pool, &config, "/first").await, "ok");
        let failed = pool.send(&config, get("/sdapi/v1/txt2img", &config)).await;
        assert!(matches!(failed, Err(SendError::Request(_))), "{failed:?}");
        tokio::time::sleep(Duration::from_millis(100)).await;
        assert_eq!(
            backend.seen(),
            [
                (0, "GET /first HTTP/1.1".to_owned()),
                (0, "GET /sdapi/v1/txt2img HTTP/1.1".to_owned())
            ],
            "written once, never again on another connection"
        );
        assert_eq!(figures(&pool).retried.get(), 0);
        assert_eq!(figures(&pool).opened.get(), 1);
    }

    #[tokio::test]
    async fn an_upgrade_takes_a_kept_connection_out_of_the_pool() {
        let backend = Backend::start(|_, request| match request {
            1 => Then::Upgrade,
            _ => Then::Answer,
        })
        .await;
        let (pool, config) = pool_for(&backend, 8);
        assert_eq!(text(&pool, &config, "/first").await, "ok");
        let request = Request::get("/queue/join")
            .header(http::header::HOST, config.host.clone())
            .header(http::header::CONNECTION, "upgrade")
            .header(http::header::UPGRADE, "echo")
            .body(Body::empty())
            .unwrap();
        let mut response = pool.send(&config, request).await.unwrap();
        assert_eq!(response.status(), http::StatusCode::SWITCHING_PROTOCOLS);
        let upgraded = hyper::upgrade::on(&mut response).await.unwrap();
        let mut tunnel = hyper_util::rt::TokioIo::new(upgraded);
        tunnel.write_all(b"ping").await.unwrap();
        let mut echoed = [0u8; 4];
        tunnel.read_exact(&mut echoed).await.unwrap();
        assert_eq!(&echoed, b"ping");
        // The upgrade went through the kept connection, which then left the pool.
        assert_eq!(
            backend.seen().iter().map(|(c, _)| *c).collect::<Vec<_>>(),
            [0, 0]
        );
        assert_eq!(figures(&pool).reused.get(), 1);
        assert_eq!(figures(&pool).idle.get() + figures(&pool).in_use.get(), 0);
        assert_eq!(text(&pool, &config, "/after").await, "ok");
        assert_eq!(backend.seen().last().unwrap().0, 1, "a new connection");
    }

    #[tokio::test]
    async fn idle_connections_expire_before_the_backend_closes_them() {
        let backend = Backend::start(|_, _| Then::Answer).await;
        let (pool, config) = pool_for(&backend, 8);
        assert_eq!(text(&pool, &config, "/a").await, "ok");
        assert_eq!(figures(&pool).idle.get(), 1);
        tokio::time::pause();
        tokio::time::advance(IDLE_EXPIRY - Duration::from_millis(10)).await;
        assert_eq!(figures(&pool).idle.get(), 1, "not yet");
        tokio::time::advance(Duration::from_millis(1500)).await;
        // The sweep closed it, without a request asking (given its turn to run).
        for _ in 0..50 {
            if figures(&pool).idle.get() == 0 {
                break;
            }
            tokio::task::yield_now().await;
        }
        assert_eq!(figures(&pool).idle.get(), 0);
        assert_eq!(figures(&pool).dropped_expired.get(), 1);
        tokio::time::resume();
        assert_eq!(text(&pool, &config, "/b").await, "ok");
        assert_eq!(
            backend.seen().iter().map(|(c, _)| *c).collect::<Vec<_>>(),
            [0, 1]
        );
    }

    #[tokio::test]
    async fn at_the_bound_a_request_waits_for_a_connection_to_come_back() {
        let backend = Backend::start(|_, _| Then::Answer).await;
        let (pool, config) = pool_for(&backend, 1);
        let first = pool.send(&config, get("/a", &config)).await.unwrap();
        let waiting = tokio::spawn({
            let pool = pool.clone();
            let config = config.clone();
            async move { text(&pool, &config, "/b").await }
        });
        tokio::time::sleep(Duration::from_millis(50)).await;
        assert!(
            !waiting.is_finished(),
            "one connection at most, and it is in use"
        );
        assert_eq!(backend.seen().len(), 1);
        let body = first.into_body().collect().await.unwrap().to_bytes();
        assert_eq!(&body[..], b"ok");
        assert_eq!(waiting.await.unwrap(), "ok");
        assert_eq!(
            backend.seen().iter().map(|(c, _)| *c).collect::<Vec<_>>(),
            [0, 0]
        );
    }
}

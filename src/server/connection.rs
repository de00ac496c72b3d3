//! One client connection: HTTP/1.1 with upgrades (websockets), held to the timeouts a server
//! any client can reach needs (nginx's `client_header_timeout`, `keepalive_timeout`,
//! `client_body_timeout`):
//!
//! - `timeouts.client_header`: from a request's first byte (or the connection's opening, for
//!   the first request) to the end of its head; a client trickling its headers is closed.
//! - `timeouts.keep_alive`: an idle connection between requests is closed.
//! - `timeouts.client_body_idle`: a request body that stalls fails its request with 408
//!   ([`ClientBody`]).
//!
//! A client that closes its sending side after its request (a half-close) still gets its
//! answer, as HTTP/1.1 allows. TCP cannot tell that from a client that left, so a request
//! in flight for a while is watched ([`closed_by_client`]): when the client's side closes,
//! [`ClientClosed`] tells the request's handler, and a generation notes its client as gone
//! (and, with `on_client_disconnect = "interrupt"`, stops Forge) while its answer is still
//! written if the client reads it.
//!
//! A connection the proxy ends is closed in stages (RFC 9112 §9.6, [`linger`]): what the
//! client still sends after the proxy's last answer is read and dropped for a while, so an
//! answer given before a body was read (a 503 `Busy`, a 413) is not lost to a reset.
//!
//! A plain-HTTP connection idle for [`PARK_AFTER`] is parked ([`Parked`]): hyper's state
//! (its buffers) goes, the socket stays, and hyper takes it up again, with whatever bytes
//! it had read and not used, when the client sends again.
//!
//! The connection's [`Activity`] tells them apart: bytes read while no request is in
//! flight start a head; a request handed to the proxy is in flight until its response has
//! been written (or dropped). On shutdown a connection with nothing in flight (idle, or
//! still reading a head) is closed at once; one with a request in flight finishes it.

use std::convert::Infallible;
use std::future::Future;
use std::io;
use std::net::SocketAddr;
use std::pin::Pin;
use std::sync::atomic::{AtomicBool, AtomicU64, AtomicUsize, Ordering};
use std::sync::Arc;
use std::task::{Context, Poll};
use std::time::Duration;

use axum::body::Body;
use axum::response::Response;
use bytes::Bytes;
use http::Request;
use http_body::{Frame, SizeHint};
use hyper::body::Incoming;
use hyper::server::conn::http1;
use hyper_util::rt::TokioIo;
use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};
use tokio::net::TcpStream;
use tokio::sync::{Notify, OwnedSemaphorePermit};
use tokio::time::Instant;
use tokio_util::sync::CancellationToken;

use crate::forward::client_body::ClientBody;
use crate::proxy::request::ClientClosed;
use crate::proxy::Proxy;

/// The connection timeouts, from `[timeouts]`.
#[derive(Debug, Clone, Copy)]
pub struct Timeouts {
    pub client_header: Option<Duration>,
    pub keep_alive: Option<Duration>,
    pub client_body_idle: Option<Duration>,
}

/// What a connection is doing, as its reads and its requests tell it.
struct Activity {
    opened: Instant,
    /// Requests handed to the proxy whose response is not yet written.
    in_flight: AtomicUsize,
    /// Requests handed to the proxy so far.
    served: AtomicU64,
    /// Milliseconds after `opened` when the last response was written.
    idle_since_ms: AtomicU64,
    /// Milliseconds after `opened` when the first byte of the next head came; [`NONE`]
    /// while none has.
    head_since_ms: AtomicU64,
    /// Milliseconds after `opened` when the oldest request in flight started.
    busy_since_ms: AtomicU64,
    /// Woken when a deadline may have moved (a head began, the last response was written).
    changed: Notify,
    /// Cancelled when the client closes its side of the connection.
    closed: CancellationToken,
    /// A response switched protocols: the socket belongs to the tunnel from then on.
    upgraded: AtomicBool,
    /// hyper is being closed to park the connection: its socket is not to be shut down.
    parking: AtomicBool,
}

/// A request in flight this long is watched for its client closing its side.
const WATCH_AFTER: Duration = Duration::from_millis(200);
/// While bytes wait in the socket (a body being read, a pipelined request), the watch looks
/// again this often.
const WATCH_PAUSE: Duration = Duration::from_millis(100);

const NONE: u64 = u64::MAX;

/// A connection idle this long is parked ([`Parked`]): long enough that a client sending
/// request after request (a load, a poll loop) keeps hyper's state, short enough that many
/// clients opening connections at once do not hold it all.
const PARK_AFTER: Duration = Duration::from_millis(50);

/// Why a connection was closed before its client closed it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Expiry {
    /// `timeouts.client_header`: the head did not arrive in time.
    Header,
    /// `timeouts.keep_alive`: idle between requests.
    Idle,
}

impl Activity {
    fn new() -> Self {
        Self {
            opened: Instant::now(),
            in_flight: AtomicUsize::new(0),
            served: AtomicU64::new(0),
            idle_since_ms: AtomicU64::new(0),
            head_since_ms: AtomicU64::new(NONE),
            busy_since_ms: AtomicU64::new(NONE),
            changed: Notify::new(),
            closed: CancellationToken::new(),
            upgraded: AtomicBool::new(false),
            parking: AtomicBool::new(false),
        }
    }

    /// When the connection is to be parked: [`PARK_AFTER`] idle after a request answered
    /// since `served_before` with no byte of the next read; `None` while it may not be.
    fn park_at<S: Parkable>(&self, served_before: u64) -> Option<Instant> {
        let parkable = S::PARKS
            && self.is_quiet()
            && self.served.load(Ordering::Acquire) > served_before
            && self.head_since_ms.load(Ordering::Acquire) == NONE
            && !self.upgraded.load(Ordering::Acquire);
        parkable.then(|| self.at(self.idle_since_ms.load(Ordering::Acquire)) + PARK_AFTER)
    }

    /// Whether the connection's deadline has passed (not moved meanwhile by a head
    /// beginning or a request coming): then it is closed.
    fn expired(&self, timeouts: &Timeouts, peer: SocketAddr) -> bool {
        match self.deadline(timeouts) {
            Some((at, why)) if at <= Instant::now() => {
                tracing::debug!(client = %peer, ?why, "closing the connection: timed out");
                true
            }
            _ => false,
        }
    }

    fn now_ms(&self) -> u64 {
        self.opened.elapsed().as_millis() as u64
    }

    fn at(&self, ms: u64) -> Instant {
        self.opened + Duration::from_millis(ms)
    }

    /// Bytes arrived: with nothing in flight, a new head has begun.
    fn read_some(&self) {
        if self.in_flight.load(Ordering::Acquire) == 0
            && self.head_since_ms.load(Ordering::Acquire) == NONE
        {
            self.head_since_ms.store(self.now_ms(), Ordering::Release);
            self.changed.notify_one();
        }
    }

    fn request_started(&self) {
        if self.in_flight.fetch_add(1, Ordering::AcqRel) == 0 {
            self.busy_since_ms.store(self.now_ms(), Ordering::Release);
            self.changed.notify_one();
        }
        self.served.fetch_add(1, Ordering::AcqRel);
        self.head_since_ms.store(NONE, Ordering::Release);
    }

    fn response_done(&self) {
        self.idle_since_ms.store(self.now_ms(), Ordering::Release);
        if self.in_flight.fetch_sub(1, Ordering::AcqRel) == 1 {
            self.changed.notify_one();
        }
    }

    /// When the request in flight is to be watched for its client closing its side.
    fn watch_from(&self) -> Option<Instant> {
        if self.is_quiet() || self.closed.is_cancelled() {
            return None;
        }
        let since = self.busy_since_ms.load(Ordering::Acquire);
        (since != NONE).then(|| self.at(since) + WATCH_AFTER)
    }

    /// Nothing in flight: idle, or reading a head.
    fn is_quiet(&self) -> bool {
        self.in_flight.load(Ordering::Acquire) == 0
    }

    /// When the connection expires, and why; `None` while a request is in flight.
    fn deadline(&self, timeouts: &Timeouts) -> Option<(Instant, Expiry)> {
        if !self.is_quiet() {
            return None;
        }
        let head = self.head_since_ms.load(Ordering::Acquire);
        if head != NONE || self.served.load(Ordering::Acquire) == 0 {
            let from = if head == NONE { 0 } else { head };
            return timeouts
                .client_header
                .map(|limit| (self.at(from) + limit, Expiry::Header));
        }
        let idle = self.idle_since_ms.load(Ordering::Acquire);
        timeouts
            .keep_alive
            .map(|limit| (self.at(idle) + limit, Expiry::Idle))
    }
}

/// Serves one connection until its client closes it, a timeout closes it, or shutdown
/// (`stopping`) ends it; over TLS when `tls` is given. `_slot` is its place under
/// `limits.max_connections`.
pub async fn serve(
    stream: TcpStream,
    peer: SocketAddr,
    proxy: Proxy,
    timeouts: Timeouts,
    stopping: CancellationToken,
    _slot: OwnedSemaphorePermit,
    tls: Option<tokio_rustls::TlsAcceptor>,
) {
    // Responses go out as soon as they are written: no Nagle delay behind a small write.
    if let Err(e) = stream.set_nodelay(true) {
        tracing::debug!(error = %e, "cannot set TCP_NODELAY");
    }
    // A second handle on the socket, to see the client close its side while hyper is not
    // reading (it does not while a request is in flight).
    let watch = Watch::of(&stream);
    let Some(acceptor) = tls else {
        return drive(stream, watch, peer, proxy, timeouts, stopping).await;
    };
    // Boxed: a TLS connection's state is five times a plain one's, which every connection's
    // task would otherwise carry.
    Box::pin(serve_tls(
        acceptor, stream, watch, peer, proxy, timeouts, stopping,
    ))
    .await
}

async fn serve_tls(
    acceptor: tokio_rustls::TlsAcceptor,
    stream: TcpStream,
    watch: Watch,
    peer: SocketAddr,
    proxy: Proxy,
    timeouts: Timeouts,
    stopping: CancellationToken,
) {
    // The handshake is part of the head: it gets `client_header` too, and shutdown ends it.
    let limit = timeouts
        .client_header
        .unwrap_or(HANDSHAKE_WITHOUT_HEADER_TIMEOUT);
    let handshake = tokio::select! {
        shaken = tokio::time::timeout(limit, acceptor.accept(stream)) => shaken,
        () = stopping.cancelled() => return,
    };
    match handshake {
        Ok(Ok(stream)) => drive(stream, watch, peer, proxy, timeouts, stopping).await,
        Ok(Err(e)) => tracing::debug!(client = %peer, error = %e, "TLS handshake failed"),
        Err(_) => tracing::debug!(client = %peer, "TLS handshake timed out"),
    }
}

/// With `timeouts.client_header` off, a TLS handshake still ends after this.
const HANDSHAKE_WITHOUT_HEADER_TIMEOUT: Duration = Duration::from_secs(60);

/// Serves the connection: HTTP with hyper while requests come, parked between them
/// ([`Parked`]), until the client closes it, a timeout or shutdown ends it.
async fn drive<S: Parkable>(
    stream: S,
    mut watch: Watch,
    peer: SocketAddr,
    proxy: Proxy,
    timeouts: Timeouts,
    stopping: CancellationToken,
) {
    let activity = Arc::new(Activity::new());
    let mut io = Watched {
        inner: stream,
        activity: activity.clone(),
        unread: Bytes::new(),
    };
    let mut service = ClientService {
        proxy,
        peer,
        activity: activity.clone(),
        body_idle: timeouts.client_body_idle,
    };
    let mut link = Link {
        activity: &activity,
        alarm: Alarm::new(),
        watch: &mut watch,
        peer,
        timeouts: &timeouts,
        stopping: &stopping,
    };
    loop {
        match link.serve(io, service).await {
            Served::Ended => break,
            Served::Closed => return,
            Served::Parked(parked) => {
                tracing::debug!(client = %peer, "connection parked");
                (io, service) = (parked.io, parked.service);
                if io.unread.is_empty() && !link.wait_for_bytes(&io).await {
                    return;
                }
                tracing::debug!(client = %peer, "parked connection resumed");
            }
        }
    }
    if !activity.upgraded.load(Ordering::Acquire) {
        if let Some(socket) = watch.socket() {
            tokio::select! {
                () = linger(socket) => {}
                () = stopping.cancelled() => {}
            }
        }
    }
}

/// What a connection's serving needs besides its socket and service.
struct Link<'a> {
    activity: &'a Arc<Activity>,
    alarm: Alarm,
    watch: &'a mut Watch,
    peer: SocketAddr,
    timeouts: &'a Timeouts,
    stopping: &'a CancellationToken,
}

/// How a stretch of HTTP on a connection ended.
enum Served<S> {
    /// The connection is over; its close is staged ([`linger`]).
    Ended,
    /// Closed at once: timed out, or shutdown with nothing in flight.
    Closed,
    /// Idle: hyper's state is let go, the socket kept.
    Parked(Parked<S>),
}

/// An idle connection without hyper's state: a hyper connection holds two 8 KiB buffers
/// (read and write) whether or not a request comes, about 18 KiB in all per connection;
/// parked, a connection keeps its socket, its service and whatever bytes hyper had read
/// and not used, and a new hyper connection takes them when the client's next bytes come.
struct Parked<S> {
    io: Watched<S>,
    service: ClientService,
}

type HyperConnection<S> =
    hyper::server::conn::http1::UpgradeableConnection<TokioIo<Watched<S>>, ClientService>;

impl Link<'_> {
    /// Serves with hyper until the connection ends or, idle, is parked.
    async fn serve<S: Parkable>(&mut self, io: Watched<S>, service: ClientService) -> Served<S> {
        let activity = self.activity;
        let mut connection: Pin<Box<HyperConnection<S>>> = Box::pin(
            http1::Builder::new()
                .half_close(true)
                .serve_connection(TokioIo::new(io), service)
                .with_upgrades(),
        );
        let mut shutting_down = false;
        // Parked again only after answering a request: the one whose bytes woke it.
        let served_before = activity.served.load(Ordering::Acquire);
        let served = loop {
            let now = Instant::now();
            let park_at = activity
                .park_at::<S>(served_before)
                .filter(|_| !shutting_down);
            if park_at.is_some_and(|at| at <= now) {
                // hyper closes an idle connection at once; its socket stays open.
                activity.parking.store(true, Ordering::Release);
                connection.as_mut().graceful_shutdown();
                shutting_down = true;
                continue;
            }
            let deadline = activity.deadline(self.timeouts).map(|(at, _)| at);
            let watch_from = activity.watch_from().filter(|_| self.watch.possible());
            let watching = watch_from.is_some_and(|at| at <= now);
            let next = [deadline, park_at, watch_from.filter(|_| !watching)];
            self.alarm.want(next.into_iter().flatten().min());
            let client_closes = client_closes(self.watch, watching);
            tokio::select! {
                served = connection.as_mut() => break served,
                () = self.alarm.rung() => {
                    if activity.expired(self.timeouts, self.peer) {
                        return Served::Closed;
                    }
                }
                () = activity.changed.notified() => {}
                () = client_closes => {
                    tracing::debug!(client = %self.peer, "the client closed its side with a request in flight");
                    activity.closed.cancel();
                }
                () = self.stopping.cancelled(), if !shutting_down || activity.parking.load(Ordering::Acquire) => {
                    if activity.is_quiet() {
                        return Served::Closed;
                    }
                    activity.parking.store(false, Ordering::Release);
                    connection.as_mut().graceful_shutdown();
                    shutting_down = true;
                }
            }
        };
        if let Err(e) = served {
            tracing::debug!(client = %self.peer, error = %e, "client connection ended with an error");
        }
        if !activity.parking.swap(false, Ordering::AcqRel) {
            return Served::Ended;
        }
        let Some(parts) = Pin::into_inner(connection).into_parts() else {
            return Served::Ended;
        };
        let mut io = parts.io.into_inner();
        // A copy, so that hyper's read buffer (8 KiB, whatever the bytes left in it) goes.
        io.unread = match parts.read_buf.is_empty() {
            true => Bytes::new(),
            false => Bytes::copy_from_slice(&parts.read_buf),
        };
        Served::Parked(Parked {
            io,
            service: parts.service,
        })
    }

    /// Waits, parked, for the client's next bytes: false when the connection is to close
    /// instead (keep-alive timed out, shutdown).
    async fn wait_for_bytes<S: Parkable>(&mut self, io: &Watched<S>) -> bool {
        loop {
            self.alarm
                .want(self.activity.deadline(self.timeouts).map(|(at, _)| at));
            tokio::select! {
                ready = io.inner.readable() => return ready.is_ok(),
                () = self.alarm.rung() => {
                    if self.activity.expired(self.timeouts, self.peer) {
                        return false;
                    }
                }
                () = self.stopping.cancelled() => return false,
            }
        }
    }
}

/// A client's stream, as a parked connection waits on it.
pub trait Parkable: AsyncRead + AsyncWrite + Unpin + Send + 'static {
    /// Whether a connection over it may be parked: not over TLS, whose library may hold
    /// bytes already read from the socket.
    const PARKS: bool;

    /// Completes when bytes (or the client's close) can be read.
    fn readable(&self) -> impl Future<Output = io::Result<()>> + Send;
}

impl Parkable for TcpStream {
    const PARKS: bool = true;

    fn readable(&self) -> impl Future<Output = io::Result<()>> + Send {
        TcpStream::readable(self)
    }
}

impl Parkable for tokio_rustls::server::TlsStream<TcpStream> {
    const PARKS: bool = false;

    fn readable(&self) -> impl Future<Output = io::Result<()>> + Send {
        std::future::pending()
    }
}

/// A connection's one timer, for whichever of its deadlines comes first (head, keep-alive,
/// parking, the watch of a request in flight). It is armed again only for a time earlier
/// than the one it is armed for: on a busy connection every request moves the deadlines,
/// and registering a timer for each would cost every request; one that rings early is
/// looked at and armed again.
struct Alarm {
    sleep: Pin<Box<tokio::time::Sleep>>,
    armed: Option<Instant>,
}

impl Alarm {
    fn new() -> Self {
        Self {
            sleep: Box::pin(tokio::time::sleep(Duration::from_secs(86_400))),
            armed: None,
        }
    }

    /// Rings at `at` at the latest.
    fn want(&mut self, at: Option<Instant>) {
        if let Some(at) = at {
            if self.armed.is_none_or(|armed| at < armed) {
                self.sleep.as_mut().reset(at);
                self.armed = Some(at);
            }
        }
    }

    /// Completes when the time armed comes; never while not armed.
    async fn rung(&mut self) {
        if self.armed.is_none() {
            return std::future::pending().await;
        }
        self.sleep.as_mut().await;
        self.armed = None;
    }
}

/// Completes when the client closes its side, while `watching`; never otherwise.
async fn client_closes(watch: &mut Watch, watching: bool) {
    if !watching {
        return std::future::pending().await;
    }
    match watch.socket() {
        Some(socket) => closed_by_client(socket).await,
        None => std::future::pending().await,
    }
}

/// How long a closed connection's last bytes are read ([`linger`]): at most this long in
/// all, and no longer than this without a byte.
const LINGER_FOR: Duration = Duration::from_secs(10);
const LINGER_IDLE: Duration = Duration::from_secs(2);

/// A staged close (RFC 9112 §9.6). hyper has closed the proxy's sending side; what the
/// client still sends (a body the proxy answered without reading: a 503 `Busy`, a 413, a
/// 408) is read and dropped until the client closes too. Closing a socket with unread
/// bytes resets the connection, and the client may then lose the answer it had not read.
async fn linger(socket: &TcpStream) {
    let drain = async {
        let mut sink = Vec::new();
        loop {
            match tokio::time::timeout(LINGER_IDLE, socket.readable()).await {
                Ok(Ok(())) => {}
                Ok(Err(_)) | Err(_) => return,
            }
            if sink.is_empty() {
                sink = vec![0u8; 16 * 1024];
            }
            match socket.try_read(&mut sink) {
                Ok(0) => return,
                Ok(_) => {}
                Err(e) if e.kind() == io::ErrorKind::WouldBlock => {}
                Err(_) => return,
            }
        }
    };
    let _ = tokio::time::timeout(LINGER_FOR, drain).await;
}

/// Another handle on the client's socket, to watch it while hyper holds the first: taken
/// at accept, registered with the runtime only when a request is first watched.
enum Watch {
    Unused(std::net::TcpStream),
    Registered(TcpStream),
    /// The system gave no second handle: no watch.
    Impossible,
}

impl Watch {
    fn of(stream: &TcpStream) -> Self {
        use std::os::fd::AsFd;
        match stream.as_fd().try_clone_to_owned() {
            Ok(fd) => Watch::Unused(std::net::TcpStream::from(fd)),
            Err(e) => {
                tracing::debug!(error = %e, "no second handle on the client socket: it is not watched");
                Watch::Impossible
            }
        }
    }

    fn possible(&self) -> bool {
        !matches!(self, Watch::Impossible)
    }

    fn socket(&mut self) -> Option<&TcpStream> {
        if let Watch::Unused(_) = self {
            let Watch::Unused(std) = std::mem::replace(self, Watch::Impossible) else {
                return None;
            };
            if let Ok(registered) = TcpStream::from_std(std) {
                *self = Watch::Registered(registered);
            }
        }
        match self {
            Watch::Registered(socket) => Some(socket),
            _ => None,
        }
    }
}

/// Completes when the client has closed its side of the connection (or reset it). Bytes
/// waiting to be read are a body or a next request: looked at again shortly.
async fn closed_by_client(socket: &TcpStream) {
    let mut byte = [0u8; 1];
    loop {
        match socket.peek(&mut byte).await {
            Ok(0) | Err(_) => return,
            Ok(_) => tokio::time::sleep(WATCH_PAUSE).await,
        }
    }
}

/// The client's socket, telling its [`Activity`] when bytes arrive.
struct Watched<S> {
    inner: S,
    activity: Arc<Activity>,
    /// Bytes a parked connection's hyper had read and not used: read first.
    unread: Bytes,
}

impl<S: AsyncRead + Unpin> AsyncRead for Watched<S> {
    fn poll_read(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        if !self.unread.is_empty() {
            let n = self.unread.len().min(buf.remaining());
            buf.put_slice(&self.unread.split_to(n));
            self.activity.read_some();
            return Poll::Ready(Ok(()));
        }
        let before = buf.filled().len();
        let polled = Pin::new(&mut self.inner).poll_read(cx, buf);
        if matches!(polled, Poll::Ready(Ok(()))) && buf.filled().len() > before {
            self.activity.read_some();
        }
        polled
    }
}

impl<S: AsyncWrite + Unpin> AsyncWrite for Watched<S> {
    fn poll_write(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<io::Result<usize>> {
        Pin::new(&mut self.inner).poll_write(cx, buf)
    }

    fn poll_write_vectored(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        bufs: &[io::IoSlice<'_>],
    ) -> Poll<io::Result<usize>> {
        Pin::new(&mut self.inner).poll_write_vectored(cx, bufs)
    }

    fn is_write_vectored(&self) -> bool {
        self.inner.is_write_vectored()
    }

    fn poll_flush(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.inner).poll_flush(cx)
    }

    fn poll_shutdown(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        if self.activity.parking.load(Ordering::Acquire) {
            // Parked, not closed: the socket stays open for the next request.
            return Poll::Ready(Ok(()));
        }
        Pin::new(&mut self.inner).poll_shutdown(cx)
    }
}

/// The proxy as hyper sees it, with the client's address.
#[derive(Clone)]
struct ClientService {
    proxy: Proxy,
    peer: SocketAddr,
    activity: Arc<Activity>,
    body_idle: Option<Duration>,
}

impl hyper::service::Service<Request<Incoming>> for ClientService {
    type Response = Response;
    type Error = Infallible;
    type Future = Pin<Box<dyn Future<Output = Result<Response, Infallible>> + Send>>;

    fn call(&self, request: Request<Incoming>) -> Self::Future {
        self.activity.request_started();
        let in_flight = InFlight(self.activity.clone());
        let closed = ClientClosed(self.activity.closed.clone());
        let proxy = self.proxy.clone();
        let client = self.peer.ip();
        let body_idle = self.body_idle;
        Box::pin(async move {
            let mut request = request.map(|body| match http_body::Body::is_end_stream(&body) {
                // Nothing to read (a GET): no wrapper to allocate.
                true => Body::empty(),
                false => Body::new(ClientBody::new(body, body_idle)),
            });
            // Only a generation (a POST) watches its client leave.
            if request.method() == http::Method::POST {
                request.extensions_mut().insert(closed);
            }
            let response = proxy.handle(Some(client), request).await;
            if response.status() == http::StatusCode::SWITCHING_PROTOCOLS {
                in_flight.0.upgraded.store(true, Ordering::Release);
            }
            Ok(response.map(|body| {
                Body::new(Written {
                    body,
                    _in_flight: in_flight,
                })
            }))
        })
    }
}

/// A request in flight on its connection until dropped: with its response body once that
/// is written, or early when the request is abandoned.
struct InFlight(Arc<Activity>);

impl Drop for InFlight {
    fn drop(&mut self) {
        self.0.response_done();
    }
}

/// A response body that holds its request in flight until hyper has written it.
struct Written {
    body: Body,
    _in_flight: InFlight,
}

impl http_body::Body for Written {
    type Data = Bytes;
    type Error = axum::Error;

    fn poll_frame(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, axum::Error>>> {
        Pin::new(&mut self.body).poll_frame(cx)
    }

    fn is_end_stream(&self) -> bool {
        self.body.is_end_stream()
    }

    fn size_hint(&self) -> SizeHint {
        self.body.size_hint()
    }
}

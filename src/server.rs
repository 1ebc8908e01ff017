//! Listening sockets and the connection loop every listener shares.
//!
//! A listener binds a TCP address or a Unix socket, accepts connections,
//! optionally terminates TLS (with the configuration current at accept time,
//! so a reloaded certificate applies to new handshakes), and serves HTTP/1.1
//! and HTTP/2 (h2c, or ALPN over TLS) with hyper. Stopping a listener closes
//! the socket at once and then waits, up to a drain deadline, for the
//! connections it accepted to finish their in-flight requests.

use std::convert::Infallible;
use std::future::Future;
use std::io;
use std::net::SocketAddr;
use std::path::PathBuf;
use std::pin::Pin;
use std::sync::Arc;
use std::task::Poll;
use std::time::Duration;

use bytes::Bytes;
use http::{Request, Response};
use http_body_util::{Either, Full};
use hyper::body::Incoming;
use hyper_util::rt::{TokioExecutor, TokioIo, TokioTimer};
use hyper_util::server::conn::auto;
use hyper_util::server::graceful::{GracefulShutdown, Watcher};
use tokio::io::{AsyncRead, AsyncWrite};
use tokio::net::{TcpListener, TcpSocket, UnixListener};
use tokio::sync::{OwnedSemaphorePermit, Semaphore, oneshot};
use tokio::task::JoinHandle;
use tokio::time::Sleep;
use tracing::{debug, info, warn};

use crate::config::ListenAddr;

/// Who is on the other end of a connection.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Peer {
    /// A TCP peer.
    Tcp(SocketAddr),
    /// A Unix-socket peer (same host).
    Unix,
}

/// Body of every response the gateway sends: made here, or streamed from a peer.
pub type ResponseBody = Either<Full<Bytes>, Streamed>;

/// A body streamed from a peer, optionally preceded by bytes already read
/// from it (an idempotent response that turned out too large to store is
/// passed on from where buffering stopped), bounded by the request's
/// deadline, and optionally holding something until the body is over.
pub struct Streamed {
    prefix: Option<Bytes>,
    rest: Incoming,
    deadline: Option<(Pin<Box<Sleep>>, Duration)>,
    hold: Option<Box<dyn Send>>,
}

impl std::fmt::Debug for Streamed {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Streamed")
            .field("prefix", &self.prefix.as_ref().map(Bytes::len))
            .field("deadline", &self.deadline.as_ref().map(|(_, d)| d))
            .finish()
    }
}

/// The error a body that outlived its request deadline ends with.
#[derive(Debug, thiserror::Error)]
#[error("upstream response body not finished within {0:?}")]
pub struct BodyDeadline(pub Duration);

impl Streamed {
    /// `prefix` (if not empty), then the rest of `rest`.
    pub fn with_prefix(prefix: Bytes, rest: Incoming) -> Self {
        Self {
            prefix: Some(prefix).filter(|p| !p.is_empty()),
            ..Self::from(rest)
        }
    }

    /// Ends the body with an error once `sleep` fires: the request's
    /// `timeout` covers the body too, not only the head. Reusing the
    /// request's own timer costs no second timer registration.
    pub fn deadline(mut self, sleep: Pin<Box<Sleep>>, timeout: Duration) -> Self {
        self.deadline = Some((sleep, timeout));
        self
    }

    /// Keeps `value` alive until the body ends, fails or is dropped.
    pub fn hold(mut self, value: impl Send + 'static) -> Self {
        self.hold = Some(Box::new(value));
        self
    }
}

impl From<Incoming> for Streamed {
    fn from(rest: Incoming) -> Self {
        Self {
            prefix: None,
            rest,
            deadline: None,
            hold: None,
        }
    }
}

impl hyper::body::Body for Streamed {
    type Data = Bytes;
    type Error = Box<dyn std::error::Error + Send + Sync>;

    fn poll_frame(
        self: Pin<&mut Self>,
        cx: &mut std::task::Context<'_>,
    ) -> Poll<Option<Result<hyper::body::Frame<Bytes>, Self::Error>>> {
        let this = self.get_mut();
        if let Some(p) = this.prefix.take() {
            return Poll::Ready(Some(Ok(hyper::body::Frame::data(p))));
        }
        let polled = Pin::new(&mut this.rest).poll_frame(cx);
        match polled {
            Poll::Ready(None) => {
                this.hold = None;
                this.deadline = None;
                Poll::Ready(None)
            }
            Poll::Ready(Some(Err(e))) => {
                this.hold = None;
                Poll::Ready(Some(Err(e.into())))
            }
            Poll::Ready(Some(Ok(frame))) => Poll::Ready(Some(Ok(frame))),
            Poll::Pending => {
                let expired = match &mut this.deadline {
                    Some((sleep, d)) => sleep.as_mut().poll(cx).is_ready().then_some(*d),
                    None => None,
                };
                match expired {
                    Some(d) => {
                        this.hold = None;
                        Poll::Ready(Some(Err(Box::new(BodyDeadline(d)))))
                    }
                    None => Poll::Pending,
                }
            }
        }
    }

    fn is_end_stream(&self) -> bool {
        self.prefix.is_none() && self.rest.is_end_stream()
    }

    fn size_hint(&self) -> hyper::body::SizeHint {
        let rest = self.rest.size_hint();
        let n = self.prefix.as_ref().map_or(0, |p| p.len() as u64);
        let mut hint = hyper::body::SizeHint::new();
        hint.set_lower(rest.lower().saturating_add(n));
        if let Some(u) = rest.upper() {
            hint.set_upper(u.saturating_add(n));
        }
        hint
    }
}

/// A full response from bytes.
pub fn full(resp: Response<Full<Bytes>>) -> Response<ResponseBody> {
    resp.map(Either::Left)
}

/// What a listener does with each request.
pub trait Handler: Clone + Send + Sync + 'static {
    /// Answers one request. Errors are answers too: this cannot fail.
    fn call(
        &self,
        req: Request<Incoming>,
        peer: Peer,
    ) -> impl Future<Output = Response<ResponseBody>> + Send;
}

/// Where a listener actually bound (port 0 resolved).
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum BoundAddr {
    /// TCP.
    Tcp(SocketAddr),
    /// Unix socket path.
    Unix(PathBuf),
}

impl std::fmt::Display for BoundAddr {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            BoundAddr::Tcp(a) => write!(f, "{a}"),
            BoundAddr::Unix(p) => write!(f, "unix:{}", p.display()),
        }
    }
}

impl BoundAddr {
    /// The TCP address, if this is a TCP listener.
    pub fn tcp(&self) -> Option<SocketAddr> {
        match self {
            BoundAddr::Tcp(a) => Some(*a),
            BoundAddr::Unix(_) => None,
        }
    }
}

/// A bound socket, not yet serving.
pub enum Bound {
    /// TCP.
    Tcp(TcpListener),
    /// Unix socket, removed from the filesystem when the listener stops.
    Unix(UnixListener, PathBuf),
}

impl Bound {
    /// The address this socket is bound to.
    pub fn addr(&self) -> io::Result<BoundAddr> {
        match self {
            Bound::Tcp(l) => l.local_addr().map(BoundAddr::Tcp),
            Bound::Unix(_, p) => Ok(BoundAddr::Unix(p.clone())),
        }
    }
}

/// Binds a listen address. A leftover Unix socket file is replaced only if
/// nothing answers on it (a running process keeps its socket).
pub async fn bind(addr: &ListenAddr) -> io::Result<Bound> {
    match addr {
        ListenAddr::Tcp(sa) => {
            let sock = if sa.is_ipv4() {
                TcpSocket::new_v4()?
            } else {
                TcpSocket::new_v6()?
            };
            sock.set_reuseaddr(true)?;
            sock.set_nodelay(true)?;
            sock.bind(*sa)?;
            Ok(Bound::Tcp(sock.listen(1024)?))
        }
        ListenAddr::Unix(path) => {
            use std::os::unix::fs::{FileTypeExt as _, PermissionsExt as _};
            if let Ok(meta) = std::fs::symlink_metadata(path) {
                // Only ever replace a stale *socket*: a typo must not delete a file.
                if !meta.file_type().is_socket() {
                    return Err(io::Error::new(
                        io::ErrorKind::AlreadyExists,
                        format!("{} exists and is not a socket", path.display()),
                    ));
                }
                if tokio::net::UnixStream::connect(path).await.is_ok() {
                    return Err(io::Error::new(
                        io::ErrorKind::AddrInUse,
                        format!("{} is in use by another process", path.display()),
                    ));
                }
                std::fs::remove_file(path)?;
            }
            let listener = UnixListener::bind(path)?;
            // Whoever can connect *is* the service: owner and group only,
            // whatever the umask.
            std::fs::set_permissions(path, std::fs::Permissions::from_mode(0o660))?;
            Ok(Bound::Unix(listener, path.clone()))
        }
    }
}

/// Supplies the TLS configuration for each new connection.
pub type TlsSource = Arc<dyn Fn() -> Option<Arc<rustls::ServerConfig>> + Send + Sync>;

/// Per-listener settings.
#[derive(Clone)]
pub struct ServeOptions {
    /// Label for log lines (`service checkout`, `webhooks`, `admin`).
    pub name: String,
    /// Terminate TLS with the configuration this returns (per connection).
    pub tls: Option<TlsSource>,
    /// Limit for reading a request head and for the TLS handshake.
    pub header_timeout: Duration,
    /// Serve HTTP/1.1 only (no h2c, no h2 preface detection).
    pub http1_only: bool,
    /// Decides at accept time whether a TCP peer may connect at all, so a
    /// refused network cannot even hold connections open. `None` admits all.
    pub admit: Option<AdmitFn>,
    /// Open connections at most; at the cap the listener stops accepting
    /// until one closes (backpressure instead of fd exhaustion).
    pub max_connections: usize,
}

/// An accept-time admission check on the peer's IP address.
pub type AdmitFn = Arc<dyn Fn(std::net::IpAddr) -> bool + Send + Sync>;

impl ServeOptions {
    /// Plain HTTP with default timeouts.
    pub fn plain(name: impl Into<String>) -> Self {
        Self {
            name: name.into(),
            tls: None,
            header_timeout: Duration::from_secs(30),
            http1_only: false,
            admit: None,
            max_connections: 4096,
        }
    }
}

/// A running listener.
pub struct Listener {
    addr: BoundAddr,
    stop: Option<oneshot::Sender<Stop>>,
    task: JoinHandle<()>,
}

struct Stop {
    drain: Duration,
    closed: Option<oneshot::Sender<()>>,
}

impl Listener {
    /// Where it is bound.
    pub fn addr(&self) -> &BoundAddr {
        &self.addr
    }

    /// Stops accepting at once, then waits up to `drain` for open
    /// connections to finish their in-flight requests.
    pub async fn shutdown(self, drain: Duration) {
        self.stop_with(Stop {
            drain,
            closed: None,
        })
        .await;
    }

    /// Like [`Listener::shutdown`], and signals `closed` as soon as the
    /// socket no longer accepts (so its address can be bound again).
    pub async fn shutdown_notify(self, drain: Duration, closed: oneshot::Sender<()>) {
        self.stop_with(Stop {
            drain,
            closed: Some(closed),
        })
        .await;
    }

    async fn stop_with(mut self, stop: Stop) {
        if let Some(tx) = self.stop.take() {
            let _ = tx.send(stop);
        }
        let _ = (&mut self.task).await;
    }
}

/// Starts serving `bound` with `handler`.
pub fn serve<H: Handler>(bound: Bound, handler: H, opts: ServeOptions) -> io::Result<Listener> {
    let addr = bound.addr()?;
    let (tx, rx) = oneshot::channel();
    info!(listener = %opts.name, addr = %addr, "listening");
    let task = tokio::spawn(accept_loop(bound, handler, opts, rx));
    Ok(Listener {
        addr,
        stop: Some(tx),
        task,
    })
}

fn http_builder(opts: &ServeOptions) -> auto::Builder<TokioExecutor> {
    let mut b = auto::Builder::new(TokioExecutor::new());
    b.http1()
        .timer(TokioTimer::new())
        .header_read_timeout(opts.header_timeout)
        .keep_alive(true);
    // An h2 connection that stops answering pings is closed rather than
    // held forever.
    b.http2()
        .timer(TokioTimer::new())
        .max_concurrent_streams(256)
        .keep_alive_interval(Some(Duration::from_secs(30)))
        .keep_alive_timeout(Duration::from_secs(10));
    if opts.http1_only {
        b = b.http1_only();
    }
    b
}

async fn accept_loop<H: Handler>(
    bound: Bound,
    handler: H,
    opts: ServeOptions,
    mut stop: oneshot::Receiver<Stop>,
) {
    let graceful = GracefulShutdown::new();
    let builder = Arc::new(http_builder(&opts));
    let slots = Arc::new(Semaphore::new(opts.max_connections.max(1)));
    let stop = loop {
        let accepted = tokio::select! {
            biased;
            s = &mut stop => break s.unwrap_or(Stop { drain: Duration::ZERO, closed: None }),
            a = async {
                let slot = slots.clone().acquire_owned().await;
                (slot, accept(&bound).await)
            } => a,
        };
        let (Ok(slot), accepted) = accepted else {
            continue;
        };
        match accepted {
            Ok(Accepted::Tcp(s, peer)) => {
                if opts.admit.as_ref().is_some_and(|admit| !admit(peer.ip())) {
                    debug!(listener = %opts.name, peer = %peer.ip(), "peer not in allow_from");
                    spawn_refusal(s, opts.header_timeout, slot);
                    continue;
                }
                spawn_conn(
                    s,
                    Peer::Tcp(peer),
                    &handler,
                    &builder,
                    graceful.watcher(),
                    &opts,
                    slot,
                );
            }
            Ok(Accepted::Unix(s)) => {
                spawn_conn(
                    s,
                    Peer::Unix,
                    &handler,
                    &builder,
                    graceful.watcher(),
                    &opts,
                    slot,
                );
            }
            Err(e) => {
                // Usually fd exhaustion: back off briefly instead of spinning.
                warn!(listener = %opts.name, error = %e, "accept failed");
                tokio::time::sleep(Duration::from_millis(50)).await;
            }
        }
    };
    let path = match &bound {
        Bound::Unix(_, p) => Some(p.clone()),
        Bound::Tcp(_) => None,
    };
    drop(bound);
    if let Some(p) = path {
        let _ = std::fs::remove_file(p);
    }
    if let Some(closed) = stop.closed {
        let _ = closed.send(());
    }
    let drain = stop.drain;
    info!(listener = %opts.name, connections = graceful.count(), "stopped accepting; draining");
    if tokio::time::timeout(drain, graceful.shutdown())
        .await
        .is_err()
    {
        warn!(
            listener = %opts.name,
            "drain deadline passed; connections still open are no longer waited for"
        );
    }
    info!(listener = %opts.name, "stopped");
}

enum Accepted {
    Tcp(tokio::net::TcpStream, SocketAddr),
    Unix(tokio::net::UnixStream),
}

async fn accept(bound: &Bound) -> io::Result<Accepted> {
    match bound {
        Bound::Tcp(l) => {
            let (s, peer) = l.accept().await?;
            let _ = s.set_nodelay(true);
            Ok(Accepted::Tcp(s, peer))
        }
        Bound::Unix(l, _) => l.accept().await.map(|(s, _)| Accepted::Unix(s)),
    }
}

/// A peer outside `allow_from` gets exactly one answer, 403
/// `peer_not_allowed`, over HTTP/1.1 with the connection closed after it,
/// all within `timeout`: it can neither reach a handler nor hold a
/// connection open.
fn spawn_refusal(io: tokio::net::TcpStream, timeout: Duration, slot: OwnedSemaphorePermit) {
    tokio::spawn(async move {
        let _slot = slot;
        let svc = hyper::service::service_fn(|_req| async {
            let e = crate::error::ApiError::new(
                crate::error::ErrorCode::PeerNotAllowed,
                "this client address is not allowed to use this listener",
            );
            Ok::<_, Infallible>(e.into_response())
        });
        let conn = hyper::server::conn::http1::Builder::new()
            .keep_alive(false)
            .serve_connection(TokioIo::new(io), svc);
        let _ = tokio::time::timeout(timeout, conn).await;
    });
}

/// A freshly accepted socket whose first bytes can be awaited.
trait FirstBytes {
    fn first_bytes(&self) -> impl Future<Output = io::Result<()>> + Send;
}

impl FirstBytes for tokio::net::TcpStream {
    fn first_bytes(&self) -> impl Future<Output = io::Result<()>> + Send {
        self.readable()
    }
}

impl FirstBytes for tokio::net::UnixStream {
    fn first_bytes(&self) -> impl Future<Output = io::Result<()>> + Send {
        self.readable()
    }
}

fn spawn_conn<IO, H>(
    io: IO,
    peer: Peer,
    handler: &H,
    builder: &Arc<auto::Builder<TokioExecutor>>,
    watcher: Watcher,
    opts: &ServeOptions,
    slot: OwnedSemaphorePermit,
) where
    IO: AsyncRead + AsyncWrite + FirstBytes + Unpin + Send + 'static,
    H: Handler,
{
    let handler = handler.clone();
    let builder = builder.clone();
    let tls = opts.tls.clone();
    let timeout = opts.header_timeout;
    let name = opts.name.clone();
    tokio::spawn(async move {
        let _slot = slot;
        // A peer that connects and says nothing never reaches hyper's own
        // header timer (the protocol sniff and TLS wait first): bound it here.
        if !matches!(
            tokio::time::timeout(timeout, io.first_bytes()).await,
            Ok(Ok(()))
        ) {
            debug!(listener = %name, "connection closed: nothing received in time");
            return;
        }
        match tls {
            None => serve_io(io, peer, handler, &builder, watcher).await,
            Some(source) => {
                let Some(cfg) = source() else {
                    return;
                };
                let acceptor = tokio_rustls::TlsAcceptor::from(cfg);
                match tokio::time::timeout(timeout, acceptor.accept(io)).await {
                    Ok(Ok(tls)) => serve_io(tls, peer, handler, &builder, watcher).await,
                    Ok(Err(e)) => debug!(listener = %name, error = %e, "tls handshake failed"),
                    Err(_) => debug!(listener = %name, "tls handshake timed out"),
                }
            }
        }
    });
}

async fn serve_io<IO, H>(
    io: IO,
    peer: Peer,
    handler: H,
    builder: &auto::Builder<TokioExecutor>,
    watcher: Watcher,
) where
    IO: AsyncRead + AsyncWrite + Unpin + Send + 'static,
    H: Handler,
{
    let svc = hyper::service::service_fn(move |req| {
        let h = handler.clone();
        let p = peer.clone();
        async move { Ok::<_, Infallible>(h.call(req, p).await) }
    });
    let conn = builder.serve_connection(TokioIo::new(io), svc);
    if let Err(e) = watcher.watch(conn.into_owned()).await {
        debug!(error = %e, "connection ended with an error");
    }
}

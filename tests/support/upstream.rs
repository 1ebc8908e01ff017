//! A fake PayMongo: a real TLS server (rustls, rcgen certificate) on
//! 127.0.0.1:0 that records every request it receives and answers according
//! to a behaviour the test sets. Gates let a test hold a response until it
//! says so, which replaces sleeps with explicit synchronisation.

use std::collections::HashMap;
use std::convert::Infallible;
use std::net::SocketAddr;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};

use bytes::Bytes;
use http::{HeaderMap, Method, Request, Response, StatusCode};
use http_body_util::combinators::BoxBody;
use http_body_util::{BodyExt, Full, StreamBody};
use hyper::body::{Frame, Incoming};
use hyper_util::rt::{TokioExecutor, TokioIo};
use hyper_util::server::conn::auto;
use tokio::net::TcpListener;
use tokio::sync::watch;

use super::ca::{Leaf, server_config};

/// One request as the upstream received it.
#[derive(Clone, Debug)]
pub struct Seen {
    pub method: Method,
    pub path: String,
    pub query: Option<String>,
    pub headers: HeaderMap,
    pub body: Bytes,
    pub version: http::Version,
}

/// A latch a test opens to release held responses.
#[derive(Clone)]
pub struct Gate(Arc<watch::Sender<bool>>);

impl Default for Gate {
    fn default() -> Self {
        Self::new()
    }
}

impl Gate {
    pub fn new() -> Self {
        Gate(Arc::new(watch::channel(false).0))
    }
    pub fn open(&self) {
        self.0.send_replace(true);
    }
    pub async fn wait(&self) {
        let mut rx = self.0.subscribe();
        let _ = rx.wait_for(|o| *o).await;
    }
}

/// What the fake answers.
#[derive(Clone)]
pub enum Reply {
    /// Status and JSON body.
    Json(u16, String),
    /// Status, extra headers and body.
    Full(u16, Vec<(String, String)>, Bytes),
    /// Wait for the gate, then answer.
    Hold(Gate, Box<Reply>),
    /// Close the connection without any response.
    Reset,
    /// Send a head promising 100 bytes and 6 of them; fail once the gate opens.
    ResetMidBody(Gate),
    /// Status, `application/json`, and the body in these chunks with no
    /// declared length (chunked over HTTP/1.1, DATA frames over h2).
    Chunked(u16, Vec<Bytes>),
    /// 200 with Content-Length of `first` + `rest`: sends `first`, waits
    /// for the gate, then sends `rest`.
    HeldBody(Gate, Bytes, Bytes),
}

type Behavior = Arc<dyn Fn(&Seen, usize) -> Reply + Send + Sync>;

pub struct State {
    seen: Mutex<Vec<Seen>>,
    count: watch::Sender<usize>,
    per_path: Mutex<HashMap<String, usize>>,
    pub handshakes_ok: AtomicUsize,
    pub handshakes_failed: AtomicUsize,
    behavior: Mutex<Behavior>,
}

pub struct FakeUpstream {
    pub addr: SocketAddr,
    pub state: Arc<State>,
    task: tokio::task::JoinHandle<()>,
}

impl Drop for FakeUpstream {
    fn drop(&mut self) {
        self.task.abort();
    }
}

/// Default: 200 with a JSON body naming the path and the per-path count.
fn default_behavior() -> Behavior {
    Arc::new(|s: &Seen, n: usize| {
        Reply::Json(
            200,
            format!(
                r#"{{"data":{{"id":"pi_fake{n}","path":"{}","n":{n}}}}}"#,
                s.path
            ),
        )
    })
}

impl FakeUpstream {
    /// Starts on 127.0.0.1:0 with ALPN h2 and http/1.1.
    pub async fn start(leaf: &Leaf) -> Self {
        Self::start_with_alpn(leaf, &[b"h2", b"http/1.1"]).await
    }

    pub async fn start_with_alpn(leaf: &Leaf, alpn: &[&[u8]]) -> Self {
        let tls = tokio_rustls::TlsAcceptor::from(server_config(leaf, alpn));
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        let state = Arc::new(State {
            seen: Mutex::new(Vec::new()),
            count: watch::channel(0).0,
            per_path: Mutex::new(HashMap::new()),
            handshakes_ok: AtomicUsize::new(0),
            handshakes_failed: AtomicUsize::new(0),
            behavior: Mutex::new(default_behavior()),
        });
        let st = state.clone();
        let task = tokio::spawn(async move {
            loop {
                let Ok((tcp, _)) = listener.accept().await else {
                    continue;
                };
                let tls = tls.clone();
                let st = st.clone();
                tokio::spawn(async move {
                    let Ok(stream) = tls.accept(tcp).await else {
                        st.handshakes_failed.fetch_add(1, Ordering::SeqCst);
                        return;
                    };
                    st.handshakes_ok.fetch_add(1, Ordering::SeqCst);
                    let svc = hyper::service::service_fn(move |req| handle(st.clone(), req));
                    let _ = auto::Builder::new(TokioExecutor::new())
                        .serve_connection(TokioIo::new(stream), svc)
                        .await;
                });
            }
        });
        Self { addr, state, task }
    }

    pub fn port(&self) -> u16 {
        self.addr.port()
    }

    /// Replaces the behaviour. The closure gets the request and its 1-based
    /// count for that method+path.
    pub fn behave(&self, f: impl Fn(&Seen, usize) -> Reply + Send + Sync + 'static) {
        *self.state.behavior.lock().unwrap() = Arc::new(f);
    }

    pub fn requests(&self) -> Vec<Seen> {
        self.state.seen.lock().unwrap().clone()
    }

    pub fn total(&self) -> usize {
        *self.state.count.borrow()
    }

    /// Requests seen for `METHOD /path`.
    pub fn count(&self, method: &str, path: &str) -> usize {
        self.state
            .per_path
            .lock()
            .unwrap()
            .get(&format!("{method} {path}"))
            .copied()
            .unwrap_or(0)
    }

    /// Resolves once at least `n` requests have arrived.
    pub async fn wait_for_requests(&self, n: usize) {
        let mut rx = self.state.count.subscribe();
        let _ = rx.wait_for(|c| *c >= n).await;
    }
}

type RespBody = BoxBody<Bytes, std::io::Error>;

async fn handle(
    st: Arc<State>,
    req: Request<Incoming>,
) -> Result<Response<RespBody>, std::io::Error> {
    let (parts, body) = req.into_parts();
    let body = body
        .collect()
        .await
        .map(|c| c.to_bytes())
        .unwrap_or_default();
    let seen = Seen {
        method: parts.method.clone(),
        path: parts.uri.path().to_owned(),
        query: parts.uri.query().map(str::to_owned),
        headers: parts.headers.clone(),
        body,
        version: parts.version,
    };
    let n = {
        let mut m = st.per_path.lock().unwrap();
        let c = m
            .entry(format!("{} {}", seen.method, seen.path))
            .or_insert(0);
        *c += 1;
        *c
    };
    let behavior = st.behavior.lock().unwrap().clone();
    let reply = behavior(&seen, n);
    st.seen.lock().unwrap().push(seen);
    st.count.send_modify(|c| *c += 1);
    answer(reply).await
}

fn full_body(b: impl Into<Bytes>) -> RespBody {
    Full::new(b.into())
        .map_err(|e: Infallible| match e {})
        .boxed()
}

async fn answer(mut reply: Reply) -> Result<Response<RespBody>, std::io::Error> {
    loop {
        match reply {
            Reply::Hold(gate, next) => {
                gate.wait().await;
                reply = *next;
            }
            Reply::Json(status, body) => {
                return Ok(Response::builder()
                    .status(StatusCode::from_u16(status).unwrap())
                    .header("content-type", "application/json")
                    .body(full_body(body))
                    .unwrap());
            }
            Reply::Full(status, headers, body) => {
                let mut b = Response::builder().status(StatusCode::from_u16(status).unwrap());
                for (k, v) in headers {
                    b = b.header(k, v);
                }
                return Ok(b.body(full_body(body)).unwrap());
            }
            Reply::Reset => {
                return Err(std::io::Error::other("fake upstream reset"));
            }
            Reply::Chunked(status, chunks) => {
                let frames =
                    futures_util::stream::iter(chunks.into_iter().map(|c| Ok(Frame::data(c))));
                return Ok(Response::builder()
                    .status(StatusCode::from_u16(status).unwrap())
                    .header("content-type", "application/json")
                    .body(StreamBody::new(frames).boxed())
                    .unwrap());
            }
            Reply::HeldBody(gate, first, rest) => {
                let len = first.len() + rest.len();
                let head = futures_util::stream::iter([Ok(Frame::data(first))]);
                let tail = futures_util::stream::once(async move {
                    gate.wait().await;
                    Ok(Frame::data(rest))
                });
                let body = StreamBody::new(futures_util::StreamExt::chain(head, tail)).boxed();
                return Ok(Response::builder()
                    .status(200)
                    .header("content-type", "application/json")
                    .header("content-length", len.to_string())
                    .body(body)
                    .unwrap());
            }
            Reply::ResetMidBody(gate) => {
                let first =
                    futures_util::stream::iter([Ok(Frame::data(Bytes::from_static(b"{\"part")))]);
                let fail = futures_util::stream::once(async move {
                    gate.wait().await;
                    Err(std::io::Error::other("fake upstream died mid-body"))
                });
                let body = StreamBody::new(futures_util::StreamExt::chain(first, fail)).boxed();
                return Ok(Response::builder()
                    .status(200)
                    .header("content-type", "application/json")
                    .header("content-length", "100")
                    .body(body)
                    .unwrap());
            }
        }
    }
}

//! A real inward receiver: a hyper HTTP/1.1 server on 127.0.0.1:0 (or a
//! Unix socket) standing in for the internal service webhooks are forwarded
//! to. It records every request (method, path, headers, exact body bytes)
//! and answers as the test says; `Hold` waits on a `Gate` so slow-service
//! tests synchronise explicitly instead of sleeping.

use std::convert::Infallible;
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};

use bytes::Bytes;
use http::{HeaderMap, Method, Request, Response, StatusCode};
use http_body_util::{BodyExt, Full};
use hyper::body::Incoming;
use hyper_util::rt::{TokioExecutor, TokioIo};
use hyper_util::server::conn::auto;
use tokio::io::{AsyncRead, AsyncWrite};
use tokio::sync::watch;

use super::upstream::Gate;

/// One delivery as the inward service received it.
#[derive(Clone, Debug)]
pub struct Received {
    pub method: Method,
    pub path: String,
    pub headers: HeaderMap,
    pub body: Bytes,
}

impl Received {
    pub fn header(&self, name: &str) -> Option<&str> {
        self.headers.get(name).and_then(|v| v.to_str().ok())
    }
}

/// What the inward service answers.
#[derive(Clone)]
pub enum InwardReply {
    /// This status with a small JSON body.
    Status(u16),
    /// Wait for the gate, then answer.
    Hold(Gate, Box<InwardReply>),
}

type Behavior = Arc<dyn Fn(&Received, usize) -> InwardReply + Send + Sync>;

struct State {
    received: Mutex<Vec<Received>>,
    count: watch::Sender<usize>,
    behavior: Mutex<Behavior>,
}

pub struct Inward {
    /// TCP address (`None` for a Unix-socket receiver).
    pub addr: Option<SocketAddr>,
    /// Socket path (Unix-socket receiver only).
    pub socket: Option<PathBuf>,
    state: Arc<State>,
    task: tokio::task::JoinHandle<()>,
}

impl Drop for Inward {
    fn drop(&mut self) {
        self.task.abort();
    }
}

fn new_state() -> Arc<State> {
    Arc::new(State {
        received: Mutex::new(Vec::new()),
        count: watch::channel(0).0,
        behavior: Mutex::new(Arc::new(|_, _| InwardReply::Status(200))),
    })
}

fn serve<IO>(io: IO, st: Arc<State>)
where
    IO: AsyncRead + AsyncWrite + Unpin + Send + 'static,
{
    tokio::spawn(async move {
        let svc = hyper::service::service_fn(move |req| handle(st.clone(), req));
        let _ = auto::Builder::new(TokioExecutor::new())
            .serve_connection(TokioIo::new(io), svc)
            .await;
    });
}

impl Inward {
    /// Starts on 127.0.0.1:0; answers 200 until told otherwise.
    pub async fn start() -> Self {
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        let state = new_state();
        let st = state.clone();
        let task = tokio::spawn(async move {
            loop {
                let Ok((tcp, _)) = listener.accept().await else {
                    continue;
                };
                serve(tcp, st.clone());
            }
        });
        Self {
            addr: Some(addr),
            socket: None,
            state,
            task,
        }
    }

    /// Starts on a Unix socket at `path`.
    pub async fn start_unix(path: &Path) -> Self {
        let listener = tokio::net::UnixListener::bind(path).unwrap();
        let state = new_state();
        let st = state.clone();
        let task = tokio::spawn(async move {
            loop {
                let Ok((s, _)) = listener.accept().await else {
                    continue;
                };
                serve(s, st.clone());
            }
        });
        Self {
            addr: None,
            socket: Some(path.to_owned()),
            state,
            task,
        }
    }

    /// `http://127.0.0.1:PORT{path}`.
    pub fn url(&self, path: &str) -> String {
        format!("http://{}{path}", self.addr.expect("tcp receiver"))
    }

    /// Replaces the behaviour; the closure gets the request and its 1-based number.
    pub fn behave(&self, f: impl Fn(&Received, usize) -> InwardReply + Send + Sync + 'static) {
        *self.state.behavior.lock().unwrap() = Arc::new(f);
    }

    pub fn received(&self) -> Vec<Received> {
        self.state.received.lock().unwrap().clone()
    }

    pub fn count(&self) -> usize {
        *self.state.count.borrow()
    }

    /// Resolves once at least `n` requests have arrived (bounded by the caller).
    pub async fn wait_for(&self, n: usize) {
        let mut rx = self.state.count.subscribe();
        let _ = rx.wait_for(|c| *c >= n).await;
    }
}

async fn handle(
    st: Arc<State>,
    req: Request<Incoming>,
) -> Result<Response<Full<Bytes>>, Infallible> {
    let (parts, body) = req.into_parts();
    let body = body
        .collect()
        .await
        .map(|c| c.to_bytes())
        .unwrap_or_default();
    let r = Received {
        method: parts.method,
        path: parts.uri.path().to_owned(),
        headers: parts.headers,
        body,
    };
    let behavior = st.behavior.lock().unwrap().clone();
    let n = {
        let mut v = st.received.lock().unwrap();
        v.push(r.clone());
        v.len()
    };
    let mut reply = behavior(&r, n);
    st.count.send_modify(|c| *c += 1);
    loop {
        match reply {
            InwardReply::Hold(gate, next) => {
                gate.wait().await;
                reply = *next;
            }
            InwardReply::Status(s) => {
                return Ok(Response::builder()
                    .status(StatusCode::from_u16(s).unwrap())
                    .header("content-type", "application/json")
                    .body(Full::new(Bytes::from(format!(r#"{{"inward":{s}}}"#))))
                    .unwrap());
            }
        }
    }
}

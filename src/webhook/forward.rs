//! Inward delivery: the verified raw body, POSTed to the endpoint's
//! `forward_to` over TCP (http to loopback, or https with certificate and
//! hostname validation against the webpki roots plus `forward_ca_file`) or
//! over a Unix socket (`forward_socket`).
//!
//! Only an inward 2xx counts as delivered. Redirects are not followed (a
//! 3xx is a failure: the event must reach the configured service, not
//! wherever it points). The whole exchange up to the response head is
//! bounded by `forward_timeout`.

use std::future::Future;
use std::path::{Path, PathBuf};
use std::pin::Pin;
use std::sync::Arc;
use std::task::{Context, Poll};
use std::time::Duration;

use bytes::Bytes;
use http::header::{CONTENT_TYPE, HeaderValue, USER_AGENT};
use http::{Request, StatusCode, Uri};
use http_body_util::{BodyExt, Full, Limited};
use hyper_rustls::HttpsConnector;
use hyper_util::client::legacy::Client;
use hyper_util::client::legacy::connect::HttpConnector;
use hyper_util::rt::{TokioExecutor, TokioIo, TokioTimer};
use rustls_pki_types::CertificateDer;

use super::event::Event;
use crate::config::EndpointConfig;

/// Header carrying `data.id` inward.
pub const EVENT_ID_HEADER: &str = "x-paymongo-event-id";
/// Header carrying `data.attributes.type` inward.
pub const EVENT_TYPE_HEADER: &str = "x-paymongo-event-type";

/// How long a 2xx response body may take to drain (so its connection can be
/// reused) before it is dropped. The outcome is already decided by then.
const DRAIN_LIMIT: Duration = Duration::from_secs(1);
/// Most response bytes drained; a larger body just closes the connection.
const DRAIN_BYTES: usize = 64 << 10;

/// Why an inward delivery did not succeed.
#[derive(Debug, thiserror::Error)]
pub enum ForwardError {
    /// TCP/Unix connect or TLS handshake failed (including an untrusted certificate).
    #[error("inward connect failed: {0}")]
    Connect(String),
    /// The inward service answered, but not with a 2xx.
    #[error("inward service answered {0}")]
    Status(StatusCode),
    /// No response head within `forward_timeout`.
    #[error("inward service did not answer within {0:?}")]
    Timeout(Duration),
    /// The request failed after connecting (reset, bad response).
    #[error("inward request failed: {0}")]
    Failed(String),
}

type Body = Full<Bytes>;

#[derive(Clone)]
enum Transport {
    Tcp(Client<HttpsConnector<HttpConnector>, Body>),
    Unix(Client<HttpsConnector<UnixConnector>, Body>),
}

/// Delivers events for one endpoint.
#[derive(Clone)]
pub struct Forwarder {
    uri: Uri,
    timeout: Duration,
    transport: Transport,
    socket: Option<PathBuf>,
}

impl std::fmt::Debug for Forwarder {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Forwarder")
            .field("uri", &self.uri)
            .field("socket", &self.socket)
            .field("timeout", &self.timeout)
            .finish()
    }
}

/// Connects every request to one Unix socket, whatever the URI says (the
/// URI still supplies `Host` and the path).
#[derive(Clone)]
struct UnixConnector(Arc<Path>);

impl tower_service::Service<Uri> for UnixConnector {
    type Response = TokioIo<tokio::net::UnixStream>;
    type Error = std::io::Error;
    type Future = Pin<Box<dyn Future<Output = Result<Self::Response, Self::Error>> + Send>>;

    fn poll_ready(&mut self, _cx: &mut Context<'_>) -> Poll<Result<(), Self::Error>> {
        Poll::Ready(Ok(()))
    }

    fn call(&mut self, _uri: Uri) -> Self::Future {
        let path = self.0.clone();
        Box::pin(async move {
            tokio::net::UnixStream::connect(&*path)
                .await
                .map(TokioIo::new)
        })
    }
}

fn https_or_http<C>(
    roots: &[CertificateDer<'static>],
    inner: C,
) -> Result<HttpsConnector<C>, String> {
    let tls = crate::tls::client_config(roots)?;
    Ok(hyper_rustls::HttpsConnectorBuilder::new()
        .with_tls_config(tls)
        .https_or_http()
        .enable_http1()
        .wrap_connector(inner))
}

fn client<C>(connector: C) -> Client<C, Body>
where
    C: hyper_util::client::legacy::connect::Connect + Clone,
{
    Client::builder(TokioExecutor::new())
        .pool_idle_timeout(Duration::from_secs(90))
        .pool_max_idle_per_host(8)
        .pool_timer(TokioTimer::new())
        .timer(TokioTimer::new())
        .build(connector)
}

impl Forwarder {
    /// A forwarder for an endpoint. Plain http is only ever configured to
    /// loopback or a Unix socket (checked by `config`); https always verifies.
    pub fn new(cfg: &EndpointConfig) -> Result<Self, String> {
        let transport = match &cfg.forward_socket {
            Some(path) => {
                let path: Arc<Path> = Arc::from(path.as_path());
                Transport::Unix(client(https_or_http(
                    &cfg.forward_extra_roots,
                    UnixConnector(path),
                )?))
            }
            None => {
                let mut http = HttpConnector::new();
                http.enforce_http(false);
                http.set_nodelay(true);
                http.set_connect_timeout(Some(cfg.forward_timeout));
                Transport::Tcp(client(https_or_http(&cfg.forward_extra_roots, http)?))
            }
        };
        Ok(Self {
            uri: cfg.forward_to.clone(),
            timeout: cfg.forward_timeout,
            transport,
            socket: cfg.forward_socket.clone(),
        })
    }

    /// The configured delivery limit.
    pub fn timeout(&self) -> Duration {
        self.timeout
    }

    /// POSTs the raw body with the event headers; `Ok` only on a 2xx.
    pub async fn deliver(&self, event: &Event, body: Bytes) -> Result<StatusCode, ForwardError> {
        let header =
            |v: &str| HeaderValue::from_str(v).map_err(|e| ForwardError::Failed(e.to_string()));
        let req = Request::post(self.uri.clone())
            .header(CONTENT_TYPE, HeaderValue::from_static("application/json"))
            .header(EVENT_ID_HEADER, header(&event.id)?)
            .header(EVENT_TYPE_HEADER, header(&event.kind)?)
            .header(
                USER_AGENT,
                HeaderValue::from_static(concat!("paymongo-gateway/", env!("CARGO_PKG_VERSION"))),
            )
            .body(Full::new(body))
            .map_err(|e| ForwardError::Failed(e.to_string()))?;
        let sent = async {
            match &self.transport {
                Transport::Tcp(c) => c.request(req).await,
                Transport::Unix(c) => c.request(req).await,
            }
        };
        let resp = match tokio::time::timeout(self.timeout, sent).await {
            Err(_) => return Err(ForwardError::Timeout(self.timeout)),
            Ok(Err(e)) if e.is_connect() => {
                return Err(ForwardError::Connect(crate::outbound::chain(&e)));
            }
            Ok(Err(e)) => return Err(ForwardError::Failed(crate::outbound::chain(&e))),
            Ok(Ok(r)) => r,
        };
        let status = resp.status();
        // Reading the rest keeps the pooled connection usable; its content
        // and any failure here do not change the outcome.
        let _ = tokio::time::timeout(
            DRAIN_LIMIT,
            Limited::new(resp.into_body(), DRAIN_BYTES).collect(),
        )
        .await;
        if status.is_success() {
            Ok(status)
        } else {
            Err(ForwardError::Status(status))
        }
    }
}

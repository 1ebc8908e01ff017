//! The pooled HTTPS client to PayMongo.
//!
//! One client per upstream configuration, shared by every service (keys are
//! per request, not per connection). A reload that leaves `[upstream]`
//! unchanged keeps the client and its warm connections.

use std::pin::Pin;
use std::time::Duration;

use bytes::Bytes;
use http::uri::{PathAndQuery, Uri};
use http::{Request, Response, Version};
use http_body_util::Full;
use hyper::body::Incoming;
use hyper_rustls::HttpsConnector;
use hyper_util::client::legacy::Client;
use hyper_util::client::legacy::connect::HttpConnector;
use hyper_util::rt::{TokioExecutor, TokioTimer};
use tokio::time::Sleep;

use super::ForwardError;
use crate::config::UpstreamConfig;

type HttpsClient = Client<HttpsConnector<HttpConnector>, Full<Bytes>>;

/// PayMongo as seen from the gateway: where it is and a pooled client to it.
#[derive(Clone)]
pub struct Upstream {
    client: HttpsClient,
    settings: UpstreamConfig,
}

impl std::fmt::Debug for Upstream {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Upstream")
            .field("url", &self.settings.url)
            .finish()
    }
}

impl Upstream {
    /// Builds a client for `cfg`, or reuses `previous` when nothing that
    /// affects connections changed.
    pub fn build(cfg: &UpstreamConfig, previous: Option<&Upstream>) -> Result<Self, String> {
        if let Some(prev) = previous {
            if same_connection_settings(&prev.settings, cfg) {
                return Ok(Self {
                    client: prev.client.clone(),
                    settings: cfg.clone(),
                });
            }
        }
        let tls = crate::tls::client_config(&cfg.extra_roots)?;
        let mut http = HttpConnector::new();
        http.enforce_http(false);
        http.set_nodelay(true);
        http.set_connect_timeout(Some(cfg.connect_timeout));
        http.set_keepalive(Some(Duration::from_secs(60)));
        let connector = hyper_rustls::HttpsConnectorBuilder::new()
            .with_tls_config(tls)
            .https_only()
            .enable_http1()
            .enable_http2()
            .wrap_connector(http);
        let client = Client::builder(TokioExecutor::new())
            .pool_idle_timeout(cfg.pool_idle_timeout)
            .pool_max_idle_per_host(cfg.pool_max_idle)
            .pool_timer(TokioTimer::new())
            .timer(TokioTimer::new())
            .build(connector);
        Ok(Self {
            client,
            settings: cfg.clone(),
        })
    }

    /// The absolute upstream URI for a caller's path and query.
    pub fn uri_for(&self, pq: Option<&PathAndQuery>) -> Result<Uri, http::Error> {
        Uri::builder()
            .scheme(self.settings.url.scheme())
            .authority(self.settings.url.authority().clone())
            .path_and_query(pq.map_or("/", PathAndQuery::as_str))
            .build()
    }

    /// The whole-request time limit.
    pub fn timeout(&self) -> Duration {
        self.settings.timeout
    }

    /// A timer for one request's `timeout`, shared by [`Upstream::send`]
    /// (the head) and the streamed body that follows.
    pub fn deadline(&self) -> Pin<Box<Sleep>> {
        Box::pin(tokio::time::sleep(self.settings.timeout))
    }

    /// Sends a prepared request and waits for the response head, until
    /// `deadline` fires.
    pub async fn send(
        &self,
        mut req: Request<Full<Bytes>>,
        deadline: &mut Pin<Box<Sleep>>,
    ) -> Result<Response<Incoming>, ForwardError> {
        // The caller may have used h2c; ALPN picks the upstream protocol.
        *req.version_mut() = Version::HTTP_11;
        tokio::select! {
            biased;
            r = self.client.request(req) => match r {
                Err(e) if e.is_connect() => Err(ForwardError::Connect(e)),
                Err(e) => Err(ForwardError::Failed(e)),
                Ok(resp) => Ok(resp),
            },
            () = deadline.as_mut() => Err(ForwardError::Timeout(self.settings.timeout)),
        }
    }

    /// Opens a fresh connection (TCP + TLS handshake) without sending a request:
    /// the readiness probe.
    pub async fn probe(&self) -> Result<(), String> {
        use tower_service::Service as _;
        let tls = crate::tls::client_config(&self.settings.extra_roots)?;
        let mut http = HttpConnector::new();
        http.enforce_http(false);
        http.set_connect_timeout(Some(self.settings.connect_timeout));
        let mut connector = hyper_rustls::HttpsConnectorBuilder::new()
            .with_tls_config(tls)
            .https_only()
            .enable_http1()
            .enable_http2()
            .wrap_connector(http);
        let uri = self.uri_for(None).map_err(|e| e.to_string())?;
        // Bounded by connect_timeout, not the request timeout: orchestrators
        // give readiness probes seconds, not half a minute.
        match tokio::time::timeout(self.settings.connect_timeout, connector.call(uri)).await {
            Ok(Ok(_conn)) => Ok(()),
            Ok(Err(e)) => Err(format!("upstream handshake failed: {e}")),
            Err(_) => Err("upstream handshake timed out".to_owned()),
        }
    }
}

fn same_connection_settings(a: &UpstreamConfig, b: &UpstreamConfig) -> bool {
    a.url == b.url
        && a.extra_roots == b.extra_roots
        && a.connect_timeout == b.connect_timeout
        && a.pool_idle_timeout == b.pool_idle_timeout
        && a.pool_max_idle == b.pool_max_idle
}

//! Inbound webhooks: PayMongo → gateway → internal service.
//!
//! A separate listener (HTTPS by default) receives PayMongo's event
//! deliveries. The [`receiver`] handles each one in a fixed order, and
//! nothing is parsed, stored or forwarded before the signature verified:
//!
//! 1. method and path: unknown path 404, known path but not POST 405;
//! 2. body, read with a hard limit: a declared `Content-Length` over
//!    `max_body` is refused before reading, a chunked body once it crosses
//!    the limit (413), and a body that trickles in slower than
//!    `read_timeout` is cut off (408);
//! 3. [`signature`] on the raw bytes, constant-time, against every listed
//!    secret (rotation), then the timestamp against `tolerance`
//!    (400 malformed header, 401 bad signature or stale);
//! 4. [`event`]: the JSON, only now — id, type, and `livemode` matching the
//!    gateway's `mode` (400);
//! 5. [`dedupe`]: an event already delivered through this endpoint is
//!    acknowledged (200) without forwarding; one being delivered right now
//!    gets 409 so PayMongo retries it later;
//! 6. [`forward`]: the raw body goes inward; 2xx → 200 to PayMongo, failure
//!    502, timeout 504 (PayMongo retries). Only an inward 2xx marks the
//!    event delivered.
//!
//! [`tools`] holds the `sign` and `trigger` commands.
//!
//! [`WebhookRuntime`] is what a reload swaps: endpoints with their keyed
//! verifiers and inward clients, and the listener's TLS configuration. The
//! [`dedupe::EventStore`] lives in `gateway::Shared` instead, so seen events
//! survive reloads.

pub mod dedupe;
pub mod event;
pub mod forward;
pub mod receiver;
pub mod redis_events;
pub mod signature;
pub mod tools;

use std::collections::HashMap;
use std::sync::Arc;
use std::time::Duration;

pub use receiver::{Rejection, WebhookHandler};

use crate::config::{Mode, SignatureScheme, WebhooksConfig};
use forward::Forwarder;
use signature::Verifier;

/// One endpoint as the request path sees it.
#[derive(Debug)]
pub struct Endpoint {
    /// The URL path PayMongo posts to.
    pub path: Arc<str>,
    /// Its scheme and keyed secrets.
    pub verifier: Verifier,
    /// Its inward client.
    pub forwarder: Forwarder,
}

/// Everything the webhook listener needs that a reload may change.
pub struct WebhookRuntime {
    /// `mode`: which signature element and which `livemode` are accepted.
    pub mode: Mode,
    /// `max_body` in bytes.
    pub max_body: u64,
    /// `tolerance` for `t`.
    pub tolerance: Duration,
    /// `dedupe_ttl`.
    pub dedupe_ttl: Duration,
    /// `read_timeout` (body read limit; the listener uses it for heads too).
    pub read_timeout: Duration,
    /// TLS for the listener; `None` when `plaintext = true`.
    pub tls: Option<Arc<rustls::ServerConfig>>,
    endpoints: HashMap<Arc<str>, Endpoint>,
}

impl std::fmt::Debug for WebhookRuntime {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("WebhookRuntime")
            .field("mode", &self.mode)
            .field("tls", &self.tls.is_some())
            .field("endpoints", &self.endpoints.values().collect::<Vec<_>>())
            .finish()
    }
}

impl WebhookRuntime {
    /// Builds the runtime: keyed verifiers, inward clients, server TLS.
    pub fn build(cfg: &WebhooksConfig, mode: Mode) -> Result<Self, String> {
        let tls = cfg
            .tls
            .as_ref()
            // HTTP/1.1 only: PayMongo needs nothing more, and an internet-facing
            // listener is better off without HTTP/2's extra attack surface.
            .map(|id| crate::tls::server_config(id, &[b"http/1.1"]))
            .transpose()?;
        let mut endpoints = HashMap::with_capacity(cfg.endpoints.len());
        for e in &cfg.endpoints {
            let path: Arc<str> = e.path.as_str().into();
            let forwarder =
                Forwarder::new(e).map_err(|msg| format!("endpoint {}: {msg}", e.path))?;
            endpoints.insert(
                path.clone(),
                Endpoint {
                    path,
                    verifier: Verifier::new(e.signature, &e.secrets),
                    forwarder,
                },
            );
        }
        Ok(Self {
            mode,
            max_body: cfg.max_body,
            tolerance: cfg.tolerance,
            dedupe_ttl: cfg.dedupe_ttl,
            read_timeout: cfg.read_timeout,
            tls,
            endpoints,
        })
    }

    /// The endpoint registered at exactly `path`.
    pub fn endpoint(&self, path: &str) -> Option<&Endpoint> {
        self.endpoints.get(path)
    }

    /// Whether any endpoint uses a scheme without a timestamp (for the
    /// start-up note that replay protection then rests on dedupe alone).
    pub fn has_untimed_scheme(&self) -> bool {
        self.endpoints
            .values()
            .any(|e| e.verifier.scheme() == SignatureScheme::HmacHex)
    }
}

#[cfg(test)]
mod tests {
    //! Reload behaviour, which needs the crate-internal `Gateway::apply`:
    //! a new snapshot swaps the listener's certificate and the secrets for
    //! new connections, while seen events survive.

    use std::net::SocketAddr;
    use std::sync::Arc;

    use bytes::Bytes;
    use http::{Request, Response, StatusCode};
    use http_body_util::{BodyExt, Full};
    use hyper::body::Incoming;
    use hyper_util::rt::TokioIo;
    use rustls_pki_types::pem::PemObject as _;

    use crate::config::{Config, LoadContext, Mode};
    use crate::demo::{LocalCa, local_ca};
    use crate::gateway::Gateway;
    use crate::reload::Snapshot;
    use crate::server::{self, Handler, Peer, ResponseBody, ServeOptions, full};

    #[derive(Clone)]
    struct Ok200;

    impl Handler for Ok200 {
        async fn call(&self, _req: Request<Incoming>, _peer: Peer) -> Response<ResponseBody> {
            full(Response::new(Full::new(Bytes::from_static(b"{}"))))
        }
    }

    fn config(
        dir: &std::path::Path,
        tag: &str,
        inward: SocketAddr,
        secret: &'static str,
    ) -> Config {
        let text = format!(
            r#"mode = "test"
[admin]
listen = "127.0.0.1:0"
[webhooks]
listen = "127.0.0.1:0"
tls_cert = "{tag}-cert.pem"
tls_key = "{tag}-key.pem"
[[webhooks.endpoint]]
path = "/hooks"
secrets = [{{ env = "WHSK" }}]
forward_to = "http://{inward}/events"
"#
        );
        let env = move |name: &str| (name == "WHSK").then(|| secret.to_owned());
        Config::parse(
            &text,
            &LoadContext {
                base_dir: dir.to_owned(),
                env: &env,
            },
        )
        .unwrap()
    }

    fn write_identity(dir: &std::path::Path, tag: &str, ca: &LocalCa) {
        std::fs::write(dir.join(format!("{tag}-cert.pem")), &ca.server_cert_pem).unwrap();
        std::fs::write(dir.join(format!("{tag}-key.pem")), &ca.server_key_pem).unwrap();
    }

    /// POSTs a signed event over a fresh TLS connection trusting only `ca`.
    async fn post(
        addr: SocketAddr,
        ca: &LocalCa,
        secret: &str,
        id: &str,
    ) -> Result<StatusCode, String> {
        let mut roots = rustls::RootCertStore::empty();
        for c in rustls_pki_types::CertificateDer::pem_slice_iter(ca.ca_pem.as_bytes()) {
            roots.add(c.unwrap()).unwrap();
        }
        let cfg = rustls::ClientConfig::builder_with_provider(Arc::new(
            rustls::crypto::ring::default_provider(),
        ))
        .with_safe_default_protocol_versions()
        .unwrap()
        .with_root_certificates(roots)
        .with_no_client_auth();
        let tcp = tokio::net::TcpStream::connect(addr).await.unwrap();
        let name = rustls_pki_types::ServerName::try_from("localhost").unwrap();
        let tls = tokio_rustls::TlsConnector::from(Arc::new(cfg))
            .connect(name, tcp)
            .await
            .map_err(|e| e.to_string())?;
        let (mut tx, conn) = hyper::client::conn::http1::handshake(TokioIo::new(tls))
            .await
            .map_err(|e| e.to_string())?;
        tokio::spawn(conn);
        let body = format!(
            r#"{{"data":{{"id":"{id}","attributes":{{"type":"payment.paid","livemode":false}}}}}}"#
        );
        let now = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .unwrap()
            .as_secs();
        let sig =
            super::signature::paymongo_header(secret.as_bytes(), now, body.as_bytes(), Mode::Test);
        let req = Request::post("/hooks")
            .header("host", "localhost")
            .header("paymongo-signature", sig)
            .body(Full::new(Bytes::from(body)))
            .unwrap();
        let resp = tx.send_request(req).await.map_err(|e| e.to_string())?;
        let status = resp.status();
        let v: serde_json::Value =
            serde_json::from_slice(&resp.into_body().collect().await.unwrap().to_bytes())
                .unwrap_or_default();
        if status == StatusCode::OK {
            assert!(
                v["status"] == "delivered" || v["status"] == "duplicate",
                "{v}"
            );
        }
        Ok(if v["status"] == "duplicate" {
            StatusCode::ALREADY_REPORTED // marker for the test: acknowledged as a duplicate
        } else {
            status
        })
    }

    #[tokio::test]
    async fn reload_swaps_certificate_and_secrets_and_keeps_seen_events() {
        crate::tls::install_crypto_provider();
        let dir = tempfile::tempdir().unwrap();
        let (ca_a, ca_b) = (local_ca().unwrap(), local_ca().unwrap());
        write_identity(dir.path(), "a", &ca_a);
        write_identity(dir.path(), "b", &ca_b);
        let bound = server::bind(&crate::config::ListenAddr::Tcp(SocketAddr::from((
            [127, 0, 0, 1],
            0,
        ))))
        .await
        .unwrap();
        let inward = server::serve(bound, Ok200, ServeOptions::plain("inward")).unwrap();
        let inward_addr = inward.addr().tcp().unwrap();

        let gw = Gateway::start(config(dir.path(), "a", inward_addr, "whsk_first"))
            .await
            .unwrap();
        let addr = gw.webhooks_addr().await.unwrap().tcp().unwrap();
        assert_eq!(
            post(addr, &ca_a, "whsk_first", "evt_before").await,
            Ok(StatusCode::OK)
        );
        assert!(
            post(addr, &ca_b, "whsk_first", "evt_x").await.is_err(),
            "cert B not served yet"
        );

        let old = gw.snapshot();
        let next = Snapshot::build(
            config(dir.path(), "b", inward_addr, "whsk_second"),
            old.generation + 1,
            Some(&old),
            &gw.shared().metrics,
        )
        .unwrap();
        gw.apply(Some(next)).await.unwrap();
        assert_eq!(
            gw.webhooks_addr().await.unwrap().tcp().unwrap(),
            addr,
            "same listener, same socket"
        );

        assert!(
            post(addr, &ca_a, "whsk_second", "evt_y").await.is_err(),
            "new connections get cert B"
        );
        assert_eq!(
            post(addr, &ca_b, "whsk_second", "evt_after").await,
            Ok(StatusCode::OK)
        );
        assert_eq!(
            post(addr, &ca_b, "whsk_first", "evt_z").await,
            Ok(StatusCode::UNAUTHORIZED),
            "the old secret is gone"
        );
        assert_eq!(
            post(addr, &ca_b, "whsk_second", "evt_before").await,
            Ok(StatusCode::ALREADY_REPORTED),
            "an event delivered before the reload is still known"
        );
        gw.shutdown().await;
        inward.shutdown(std::time::Duration::from_secs(1)).await;
    }
}

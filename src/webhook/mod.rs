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

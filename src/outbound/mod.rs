//! Outbound: internal service → gateway → PayMongo.
//!
//! The request path is a short pipeline of named steps, one concern per file:
//! [`admit`] (peer check) → [`allowlist`] (route check) → body read →
//! [`idempotent`] (replay, wait, or claim the key) → [`headers`] (strip
//! hop-by-hop and caller credentials, inject the key) → [`client`] (forward
//! over verified TLS) → response back. [`proxy`] strings the steps together
//! and records one log line and the metrics per request.

pub mod admit;
pub mod allowlist;
pub mod client;
pub mod headers;
pub mod idempotent;
pub mod proxy;

use std::time::Duration;

pub use client::Upstream;
pub use proxy::OutboundHandler;

/// Why an outbound request was not forwarded, or failed upstream.
#[derive(Debug, thiserror::Error)]
pub enum OutboundError {
    /// The peer's address is outside the service's `allow_from`.
    #[error("peer is not in allow_from")]
    PeerNotAllowed,
    /// The route is not in the service's allowlist. (The message leaves
    /// the path out: the log line carries it with ids masked.)
    #[error("route is not in the allowlist")]
    RouteNotAllowed {
        /// Request method.
        method: http::Method,
        /// Request path (no query).
        path: String,
    },
    /// The request body is larger than `max_body`.
    #[error("request body exceeds {limit} bytes")]
    BodyTooLarge {
        /// The configured limit.
        limit: u64,
    },
    /// The request body could not be read (client aborted, bad framing).
    #[error("request body could not be read: {0}")]
    BodyRead(Box<dyn std::error::Error + Send + Sync>),
    /// The service this listener belonged to was removed by a reload.
    #[error("service was removed by a reload")]
    ServiceGone,
    /// The upstream call failed.
    #[error(transparent)]
    Forward(#[from] ForwardError),
    /// The idempotency layer refused the request.
    #[error(transparent)]
    Idempotency(#[from] crate::idempotency::Error),
}

/// An upstream call that produced no usable response.
#[derive(Debug, thiserror::Error)]
pub enum ForwardError {
    /// TCP connect or TLS handshake failed (including untrusted certificates).
    #[error("upstream connect failed: {}", chain(.0))]
    Connect(hyper_util::client::legacy::Error),
    /// No response head within `upstream.timeout`.
    #[error("upstream timed out after {0:?}")]
    Timeout(Duration),
    /// The connection failed after the request was (possibly) sent.
    #[error("upstream request failed: {}", chain(.0))]
    Failed(hyper_util::client::legacy::Error),
    /// The response body broke off.
    #[error("upstream response body failed: {0}")]
    Body(hyper::Error),
    /// The upstream URI could not be built from the request.
    #[error("cannot build upstream uri: {0}")]
    Uri(#[from] http::Error),
    /// The detached task running an idempotent call ended without an answer
    /// (runtime shutdown).
    #[error("upstream call aborted: {0}")]
    Aborted(String),
}

impl ForwardError {
    /// Short kind for metrics: `connect`, `timeout` or `reset`.
    pub fn kind(&self) -> &'static str {
        match self {
            ForwardError::Connect(_) => "connect",
            ForwardError::Timeout(_) => "timeout",
            _ => "reset",
        }
    }
}

/// An error and its sources on one line, for logs.
pub(crate) fn chain(e: &dyn std::error::Error) -> String {
    let mut s = e.to_string();
    let mut cur = e.source();
    while let Some(c) = cur {
        s.push_str(": ");
        s.push_str(&c.to_string());
        cur = c.source();
    }
    s
}

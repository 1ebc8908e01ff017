//! The outbound request path, step by step:
//! admit → route check → read body → inject → forward → respond → record.
//!
//! Each step is a small function with one job. The handler loads the config
//! snapshot once, so a request finishes on the configuration it started with
//! even if a reload swaps it meanwhile.

use std::sync::Arc;
use std::time::Instant;

use bytes::Bytes;
use http::request::Parts;
use http::{HeaderMap, Method, Request, Response, StatusCode};
use http_body_util::{BodyExt, Either, Full, Limited};
use hyper::body::Incoming;
use tracing::{info, warn};

use super::{ForwardError, OutboundError, Upstream, admit::admit, headers};
use crate::config::ServiceConfig;
use crate::error::ApiError;
use crate::gateway::Shared;
use crate::log::MaskedPath;
use crate::reload::{ServiceRuntime, Snapshot};
use crate::server::{Handler, Peer, ResponseBody, full};

/// Serves one service listener: identity is the listener, not the request.
#[derive(Clone)]
pub struct OutboundHandler {
    service: Arc<str>,
    shared: Arc<Shared>,
}

impl OutboundHandler {
    /// The handler for the listener of service `service`.
    pub fn new(service: Arc<str>, shared: Arc<Shared>) -> Self {
        Self { service, shared }
    }
}

impl Handler for OutboundHandler {
    async fn call(&self, req: Request<Incoming>, peer: Peer) -> Response<ResponseBody> {
        let started = Instant::now();
        let snap = self.shared.snapshot();
        let method = req.method().clone();
        let uri = req.uri().clone();
        let Some(svc) = snap.service(&self.service) else {
            let e = OutboundError::ServiceGone;
            let resp = full(ApiError::from(&e).into_response());
            record(
                &self.service,
                &method,
                uri.path(),
                resp.status(),
                started,
                Some(&e),
            );
            return resp;
        };
        let result = proxy(&snap, svc, req, &peer).await;
        let (resp, err) = match result {
            Ok(r) => (r, None),
            Err(e) => {
                if let OutboundError::Forward(f) = &e {
                    self.shared.metrics.upstream_error(f.kind());
                }
                (full(ApiError::from(&e).into_response()), Some(e))
            }
        };
        svc.metrics.response(resp.status());
        record(
            &self.service,
            &method,
            uri.path(),
            resp.status(),
            started,
            err.as_ref(),
        );
        resp
    }
}

async fn proxy(
    snap: &Snapshot,
    svc: &ServiceRuntime,
    req: Request<Incoming>,
    peer: &Peer,
) -> Result<Response<ResponseBody>, OutboundError> {
    let cfg = &svc.config;
    admit(cfg, peer)?;
    route_check(cfg, req.method(), req.uri().path())?;
    let (mut parts, body) = req.into_parts();
    let body = read_body(body, &parts.headers, cfg.max_body).await?;
    inject(&mut parts, cfg, &snap.upstream)?;
    let started = Instant::now();
    let resp = snap
        .upstream
        .send(Request::from_parts(parts, Full::new(body)))
        .await;
    svc.metrics.upstream_latency(started.elapsed());
    Ok(respond(resp?))
}

/// Refuses routes outside the service's allowlist (and non-canonical paths).
fn route_check(cfg: &ServiceConfig, method: &Method, path: &str) -> Result<(), OutboundError> {
    if cfg.allow.permits(method, path) {
        Ok(())
    } else {
        Err(OutboundError::RouteNotAllowed {
            method: method.clone(),
            path: path.to_owned(),
        })
    }
}

/// Reads the whole body, refusing early on a declared length over the limit
/// and mid-stream once the limit is crossed. Buffering means nothing partial
/// is ever forwarded, and idempotency can fingerprint the exact bytes.
pub async fn read_body(
    body: Incoming,
    headers: &HeaderMap,
    limit: u64,
) -> Result<Bytes, OutboundError> {
    let declared = headers
        .get(http::header::CONTENT_LENGTH)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.parse::<u64>().ok());
    if declared.is_some_and(|n| n > limit) {
        return Err(OutboundError::BodyTooLarge { limit });
    }
    let cap = usize::try_from(limit).unwrap_or(usize::MAX);
    match Limited::new(body, cap).collect().await {
        Ok(c) => Ok(c.to_bytes()),
        Err(e) if e.is::<http_body_util::LengthLimitError>() => {
            Err(OutboundError::BodyTooLarge { limit })
        }
        Err(e) => Err(OutboundError::BodyRead(e)),
    }
}

/// Rewrites headers (strip, then inject the key) and points the URI at PayMongo.
fn inject(
    parts: &mut Parts,
    cfg: &ServiceConfig,
    upstream: &Upstream,
) -> Result<(), OutboundError> {
    headers::rewrite_request(&mut parts.headers, &cfg.key);
    parts.uri = upstream
        .uri_for(parts.uri.path_and_query())
        .map_err(ForwardError::Uri)?;
    Ok(())
}

/// Streams PayMongo's response back with hop-by-hop headers removed.
fn respond(mut resp: Response<Incoming>) -> Response<ResponseBody> {
    headers::rewrite_response(resp.headers_mut());
    resp.map(Either::Right)
}

/// The one log line per request.
pub(crate) fn record(
    service: &str,
    method: &Method,
    path: &str,
    status: StatusCode,
    started: Instant,
    err: Option<&OutboundError>,
) {
    // Microsecond resolution is plenty and keeps lines short.
    let latency_ms = (started.elapsed().as_secs_f64() * 1e6).round() / 1e3;
    match err {
        None => info!(
            service,
            method = %method,
            path = %MaskedPath(path),
            status = status.as_u16(),
            latency_ms,
            replay = false,
            "request"
        ),
        Some(e) => warn!(
            service,
            method = %method,
            path = %MaskedPath(path),
            status = status.as_u16(),
            latency_ms,
            replay = false,
            error = %e,
            "request"
        ),
    }
}

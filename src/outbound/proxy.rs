//! The outbound request path, step by step:
//! admit → route check → read body → idempotency → inject → forward →
//! respond → record.
//!
//! Each step is a small function with one job. The handler loads the config
//! snapshot once, so a request finishes on the configuration it started with
//! even if a reload swaps it meanwhile.

use std::pin::Pin;
use std::sync::Arc;
use std::time::Duration;
use std::time::Instant;

use bytes::{Bytes, BytesMut};
use http::request::Parts;
use http::{HeaderMap, HeaderValue, Method, Request, Response, StatusCode};
use http_body_util::{BodyExt, Either, Full};
use hyper::body::Incoming;
use tokio::time::Sleep;
use tracing::{info, warn};

use super::idempotent::{self, Step};
use super::{ForwardError, OutboundError, Upstream, admit::admit, headers};
use crate::config::ServiceConfig;
use crate::error::ApiError;
use crate::gateway::Shared;
use crate::idempotency;
use crate::log::MaskedPath;
use crate::metrics::ServiceMetrics;
use crate::reload::{ServiceRuntime, Snapshot};
use crate::server::{Handler, Peer, ResponseBody, Streamed, full};

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

/// A response and whether it came from the idempotency store.
struct Answer {
    resp: Response<ResponseBody>,
    replay: bool,
}

impl Handler for OutboundHandler {
    async fn call(&self, req: Request<Incoming>, peer: Peer) -> Response<ResponseBody> {
        let started = Instant::now();
        let snap = self.shared.snapshot();
        let method = req.method().clone();
        let uri = req.uri().clone();
        // For the log line only (abbreviated there); a cheap refcount clone.
        let idem_key = req.headers().get(idempotency::KEY_HEADER).cloned();
        let line = Line {
            service: &self.service,
            method: &method,
            path: uri.path(),
            idem_key: idem_key.as_ref(),
            started,
        };
        let Some(svc) = snap.service(&self.service) else {
            let e = OutboundError::ServiceGone;
            let resp = full(ApiError::from(&e).into_response());
            record(&line, resp.status(), false, Some(&e));
            return resp;
        };
        let mut unanswered = Unanswered {
            line: &line,
            metrics: &svc.metrics,
            armed: true,
        };
        let result = proxy(&self.shared, &snap, svc, req, &peer).await;
        unanswered.armed = false;
        let (resp, replay, err) = match result {
            Ok(a) => (a.resp, a.replay, None),
            Err(e) => {
                if let OutboundError::Forward(f) = &e {
                    self.shared.metrics.upstream_error(f.kind());
                }
                (full(ApiError::from(&e).into_response()), false, Some(e))
            }
        };
        svc.metrics.response(resp.status());
        record(&line, resp.status(), replay, err.as_ref());
        resp
    }
}

async fn proxy(
    shared: &Shared,
    snap: &Arc<Snapshot>,
    svc: &ServiceRuntime,
    req: Request<Incoming>,
    peer: &Peer,
) -> Result<Answer, OutboundError> {
    let cfg = &svc.config;
    admit(cfg, peer)?;
    route_check(cfg, req.method(), req.uri().path())?;
    let (mut parts, body) = req.into_parts();
    let body = read_body(body, &parts.headers, cfg.max_body).await?;
    headers::sanitize_request(&mut parts.headers);
    let claim = match idempotent::begin(
        shared,
        snap.config.mode,
        &snap.config.idempotency,
        &cfg.name,
        &parts,
        &body,
    )
    .await?
    {
        Step::Replay(resp) => {
            return Ok(Answer {
                resp: full(resp),
                replay: true,
            });
        }
        Step::Execute(guard) => Some(guard),
        Step::Pass => None,
    };
    inject(&mut parts, cfg, &snap.upstream)?;
    let req = Request::from_parts(parts, Full::new(body));
    let resp = match claim {
        Some(guard) => idempotent::forward_claimed(shared, snap, &svc.metrics, req, guard).await?,
        None => forward(&snap.upstream, svc, req).await?,
    };
    Ok(Answer {
        resp,
        replay: false,
    })
}

/// Sends a request that is not deduplicated and streams the answer back.
async fn forward(
    upstream: &Upstream,
    svc: &ServiceRuntime,
    req: Request<Full<Bytes>>,
) -> Result<Response<ResponseBody>, ForwardError> {
    let started = Instant::now();
    let mut deadline = upstream.deadline();
    let resp = upstream.send(req, &mut deadline).await;
    svc.metrics.upstream_latency(started.elapsed());
    Ok(respond(resp?, deadline, upstream.timeout()))
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
/// A body that arrives in one frame (the usual small JSON) is returned as
/// is: no copy, no allocation.
pub async fn read_body(
    mut body: Incoming,
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
    if hyper::body::Body::is_end_stream(&body) {
        return Ok(Bytes::new());
    }
    let mut first: Option<Bytes> = None;
    let mut joined: Option<BytesMut> = None;
    let mut total: u64 = 0;
    while let Some(frame) = body.frame().await {
        let frame = frame.map_err(|e| OutboundError::BodyRead(Box::new(e)))?;
        // Trailers carry nothing PayMongo reads.
        let Ok(data) = frame.into_data() else {
            continue;
        };
        total += data.len() as u64;
        if total > limit {
            return Err(OutboundError::BodyTooLarge { limit });
        }
        match (&mut joined, first.take()) {
            (Some(buf), _) => buf.extend_from_slice(&data),
            (None, None) => first = Some(data),
            (None, Some(f)) => {
                let cap = declared
                    .map_or(0, |n| usize::try_from(n).unwrap_or(0))
                    .max(f.len() + data.len());
                let mut buf = BytesMut::with_capacity(cap);
                buf.extend_from_slice(&f);
                buf.extend_from_slice(&data);
                joined = Some(buf);
            }
        }
    }
    Ok(joined.map(BytesMut::freeze).or(first).unwrap_or_default())
}

/// Injects the key (the headers were sanitized already) and points the URI
/// at PayMongo.
fn inject(
    parts: &mut Parts,
    cfg: &ServiceConfig,
    upstream: &Upstream,
) -> Result<(), OutboundError> {
    headers::inject_key(&mut parts.headers, &cfg.key);
    parts.uri = upstream
        .uri_for(parts.uri.path_and_query())
        .map_err(ForwardError::Uri)?;
    Ok(())
}

/// Streams PayMongo's response back with hop-by-hop headers removed; the
/// body must finish before the request's deadline.
fn respond(
    mut resp: Response<Incoming>,
    deadline: Pin<Box<Sleep>>,
    timeout: Duration,
) -> Response<ResponseBody> {
    headers::rewrite_response(resp.headers_mut());
    resp.map(|b| Either::Right(Streamed::from(b).deadline(deadline, timeout)))
}

/// Status logged and counted for a request whose client went away before
/// the answer (nginx's convention).
const CLIENT_CLOSED: u16 = 499;

/// Still the one line per request when the client hangs up: hyper then drops
/// the request future mid-way, and this guard's drop writes the line.
struct Unanswered<'a> {
    line: &'a Line<'a>,
    metrics: &'a ServiceMetrics,
    armed: bool,
}

impl Drop for Unanswered<'_> {
    fn drop(&mut self) {
        if self.armed {
            let status = StatusCode::from_u16(CLIENT_CLOSED).unwrap_or(StatusCode::BAD_REQUEST);
            self.metrics.response(status);
            let latency_ms = (self.line.started.elapsed().as_secs_f64() * 1e6).round() / 1e3;
            info!(
                service = self.line.service,
                method = %self.line.method,
                path = %MaskedPath(self.line.path),
                status = CLIENT_CLOSED,
                latency_ms,
                idempotency_key = self.line.idem_key.and_then(idempotency::abbrev).map(tracing::field::display),
                "request: client closed the connection before the answer"
            );
        }
    }
}

/// What the request line says about a request, gathered before it is consumed.
pub(crate) struct Line<'a> {
    pub service: &'a str,
    pub method: &'a Method,
    pub path: &'a str,
    /// The raw `Idempotency-Key`; only its first characters are logged.
    pub idem_key: Option<&'a HeaderValue>,
    pub started: Instant,
}

/// The one log line per request.
pub(crate) fn record(
    line: &Line<'_>,
    status: StatusCode,
    replay: bool,
    err: Option<&OutboundError>,
) {
    // Microsecond resolution is plenty and keeps lines short.
    let latency_ms = (line.started.elapsed().as_secs_f64() * 1e6).round() / 1e3;
    let service = line.service;
    let idempotency_key = line
        .idem_key
        .and_then(idempotency::abbrev)
        .map(tracing::field::display);
    match err {
        None => info!(
            service,
            method = %line.method,
            path = %MaskedPath(line.path),
            status = status.as_u16(),
            latency_ms,
            replay,
            idempotency_key,
            "request"
        ),
        Some(e) => warn!(
            service,
            method = %line.method,
            path = %MaskedPath(line.path),
            status = status.as_u16(),
            latency_ms,
            replay,
            idempotency_key,
            error = %e,
            "request"
        ),
    }
}

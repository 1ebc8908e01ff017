//! The webhook listener's handler: route → read → verify → parse → mode →
//! dedupe → forward → answer, in that order (see the module docs of
//! [`crate::webhook`]). Every request ends in exactly one metric increment
//! and one log line; neither ever carries the body, a signature or a secret.

use std::sync::Arc;

use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};
use tokio::sync::Semaphore;

use bytes::Bytes;
use http::header::{ALLOW, CONTENT_LENGTH, CONTENT_TYPE, HeaderValue};
use http::{HeaderMap, Method, Request, Response, StatusCode};
use http_body_util::{BodyExt, Full, Limited};
use hyper::body::Incoming;
use tracing::{info, warn};

use super::dedupe::Claim;
use super::event::{self, Event, EventError};
use super::forward::ForwardError;
use super::signature::{self, SignatureError};
use super::{Endpoint, WebhookRuntime};
use crate::config::Mode;
use crate::error::ApiError;
use crate::gateway::Shared;
use crate::log::{Abbrev, MaskedPath};
use crate::metrics::WebhookOutcome;
use crate::server::{Handler, Peer, ResponseBody, full};

/// A claim outlives its delivery by this much, so it cannot expire while
/// the forward (bounded by `forward_timeout`) is still running.
const LEASE_MARGIN: Duration = Duration::from_secs(30);

/// Longest request path written to a log line.
const MAX_LOGGED_PATH: usize = 96;

/// Why a delivery was not accepted. Each maps to one status in
/// `crate::error` and one metric outcome.
#[derive(Debug, thiserror::Error)]
pub enum Rejection {
    /// No endpoint at this path (404).
    #[error("no webhook endpoint at this path")]
    NotFound,
    /// The endpoint exists but the method is not POST (405).
    #[error("method {0} is not allowed; webhook endpoints accept post only")]
    MethodNotAllowed(Method),
    /// The body is over `max_body` (413).
    #[error("body exceeds the {limit}-byte limit")]
    BodyTooLarge {
        /// `max_body`.
        limit: u64,
    },
    /// The body broke off or had bad framing (400).
    #[error("body could not be read: {0}")]
    BodyRead(String),
    /// The body did not arrive within `read_timeout` (408).
    #[error("body not received within {0:?}")]
    BodyTimeout(Duration),
    /// The signature header is missing, malformed, wrong or stale (400/401).
    #[error(transparent)]
    Signature(#[from] SignatureError),
    /// The verified body is not a usable event (400).
    #[error(transparent)]
    Event(#[from] EventError),
    /// `livemode` does not match `mode` (400).
    #[error("event livemode = {livemode} does not match mode = {mode:?}")]
    WrongMode {
        /// The event's `livemode`.
        livemode: bool,
        /// The gateway's mode.
        mode: Mode,
    },
    /// The same event is being delivered by another request right now (409).
    #[error("another delivery of this event is in progress")]
    InProgress,
    /// Inward delivery failed (502) or timed out (504).
    #[error(transparent)]
    Forward(#[from] ForwardError),
    /// The configuration no longer has `[webhooks]`; this listener is draining (503).
    #[error("webhooks are no longer configured")]
    Disabled,
    /// Too many bodies are being read at once (503; PayMongo retries).
    #[error("too many deliveries are being read at once")]
    Busy,
}

impl Rejection {
    /// The metric outcome for this rejection.
    pub fn outcome(&self) -> WebhookOutcome {
        match self {
            Rejection::NotFound | Rejection::MethodNotAllowed(_) | Rejection::Disabled => {
                WebhookOutcome::not_found
            }
            Rejection::Busy => WebhookOutcome::busy,
            Rejection::BodyTooLarge { .. } => WebhookOutcome::too_large,
            Rejection::BodyRead(_) | Rejection::BodyTimeout(_) | Rejection::Event(_) => {
                WebhookOutcome::malformed
            }
            Rejection::Signature(s) => match s {
                SignatureError::Missing
                | SignatureError::Duplicated
                | SignatureError::TooLong(_)
                | SignatureError::Malformed(_) => WebhookOutcome::malformed,
                SignatureError::NoSignatureForMode(_) | SignatureError::Mismatch => {
                    WebhookOutcome::bad_signature
                }
                SignatureError::Stale { .. } => WebhookOutcome::stale,
            },
            Rejection::WrongMode { .. } => WebhookOutcome::wrong_mode,
            Rejection::InProgress => WebhookOutcome::duplicate,
            Rejection::Forward(_) => WebhookOutcome::forward_failed,
        }
    }
}

/// A delivery PayMongo gets a 200 for.
#[derive(Debug)]
enum Accepted {
    /// Forwarded; the inward service answered this 2xx.
    Delivered(StatusCode),
    /// Already delivered earlier; not forwarded again.
    Duplicate,
}

/// What the log line says about a request, filled in as it progresses.
#[derive(Default)]
struct Trace {
    endpoint: Option<Arc<str>>,
    event: Option<Event>,
    secret: Option<usize>,
    inward_status: Option<u16>,
}

/// Serves the webhook listener.
#[derive(Clone)]
pub struct WebhookHandler {
    shared: Arc<Shared>,
    body_reads: Arc<Semaphore>,
}

/// Bodies read at once, at most. Deliveries are unauthenticated until their
/// body is read, so this bounds what strangers can make the gateway buffer:
/// at most `MAX_BODY_READS × max_body` (64 MiB at the 1 MiB default).
/// PayMongo delivers far fewer events at a time than this.
const MAX_BODY_READS: usize = 64;

impl WebhookHandler {
    /// A handler over the gateway's shared state.
    pub fn new(shared: Arc<Shared>) -> Self {
        Self {
            shared,
            body_reads: Arc::new(Semaphore::new(MAX_BODY_READS)),
        }
    }
}

impl Handler for WebhookHandler {
    async fn call(&self, req: Request<Incoming>, peer: Peer) -> Response<ResponseBody> {
        let started = Instant::now();
        let snap = self.shared.snapshot();
        let method = req.method().clone();
        let path = truncated(req.uri().path());
        let mut trace = Trace::default();
        let result = match snap.webhooks.as_ref() {
            Some(rt) => self.receive(rt, req, &mut trace).await,
            None => Err(Rejection::Disabled),
        };
        if let Ok(Accepted::Delivered(s)) = &result {
            trace.inward_status = Some(s.as_u16());
        }
        let outcome = match &result {
            Ok(Accepted::Delivered(_)) => WebhookOutcome::accepted,
            Ok(Accepted::Duplicate) => WebhookOutcome::duplicate,
            Err(r) => r.outcome(),
        };
        self.shared.metrics.webhook(outcome);
        let resp = match &result {
            Ok(a) => accepted_response(a, trace.event.as_ref()),
            Err(r) => rejection_response(r),
        };
        record(
            &method,
            &path,
            &peer,
            resp.status(),
            outcome,
            &trace,
            result.as_ref().err(),
            started,
        );
        full(resp)
    }
}

impl WebhookHandler {
    async fn receive(
        &self,
        rt: &WebhookRuntime,
        req: Request<Incoming>,
        trace: &mut Trace,
    ) -> Result<Accepted, Rejection> {
        let ep = rt.endpoint(req.uri().path()).ok_or(Rejection::NotFound)?;
        trace.endpoint = Some(ep.path.clone());
        if req.method() != Method::POST {
            return Err(Rejection::MethodNotAllowed(req.method().clone()));
        }
        let (parts, body) = req.into_parts();
        // Wait for a slot no longer than a body may take to arrive.
        let slot = tokio::time::timeout(rt.read_timeout, self.body_reads.acquire())
            .await
            .map_err(|_| Rejection::Busy)?
            .map_err(|_| Rejection::Busy)?;
        let body = read_body(body, &parts.headers, rt.max_body, rt.read_timeout).await;
        drop(slot);
        let body = body?;
        let header = signature::header_value(&parts.headers)?;
        let verified = ep
            .verifier
            .verify(header, &body, rt.mode, rt.tolerance, unix_now())?;
        trace.secret = Some(verified.secret_index);
        // Only now, with the body authenticated, is it parsed.
        let event = event::parse(&body)?;
        trace.event = Some(event.clone());
        if event.livemode != (rt.mode == Mode::Live) {
            return Err(Rejection::WrongMode {
                livemode: event.livemode,
                mode: rt.mode,
            });
        }
        self.deliver(rt, ep, event, body).await
    }

    /// Claims the event, forwards it, and records the result. The forward
    /// runs as a tracked task: if PayMongo hangs up mid-delivery, the
    /// delivery still finishes and its outcome is still recorded, so the
    /// claim is never left dangling and PayMongo's retry sees the truth.
    async fn deliver(
        &self,
        rt: &WebhookRuntime,
        ep: &Endpoint,
        event: Event,
        body: Bytes,
    ) -> Result<Accepted, Rejection> {
        // Scoped by endpoint: two PayMongo webhooks may carry the same event
        // to two endpoints (two inward services), and each must get it.
        // Event ids have no `:`, so the last one separates the two parts
        // (the Redis store uses this as `pmgw:evt:<path>:<id>`).
        let key = format!("{}:{}", ep.path, event.id);
        let store = self.shared.events.clone();
        let lease = ep.forwarder.timeout() + LEASE_MARGIN;
        let token = match store.claim(&key, lease).await {
            Ok(Claim::Delivered) => return Ok(Accepted::Duplicate),
            Ok(Claim::InProgress) => return Err(Rejection::InProgress),
            Ok(Claim::Acquired(t)) => Some(t),
            Err(e) => {
                // A lost event is worse than a duplicate: inward services
                // must be idempotent on the event id anyway.
                warn!(error = %e, "event store failed; forwarding without deduplication");
                None
            }
        };
        let forwarder = ep.forwarder.clone();
        let ttl = rt.dedupe_ttl;
        let task = self.shared.tasks.spawn(async move {
            let result = forwarder.deliver(&event, body).await;
            if let Some(token) = token {
                let recorded = match &result {
                    Ok(_) => store.mark_delivered(&key, token, ttl).await,
                    Err(_) => store.release(&key, token).await,
                };
                if let Err(e) = recorded {
                    warn!(error = %e, event_id = %Abbrev(&event.id), "could not record the delivery outcome");
                }
            }
            result
        });
        match task.await {
            Ok(Ok(status)) => Ok(Accepted::Delivered(status)),
            Ok(Err(e)) => Err(Rejection::Forward(e)),
            Err(e) => Err(Rejection::Forward(ForwardError::Failed(format!(
                "delivery task ended: {e}"
            )))),
        }
    }
}

/// Reads the whole body: refused before reading when the declared length is
/// over the limit, and mid-stream (without reading the rest) once a chunked
/// body crosses it.
async fn read_body(
    body: Incoming,
    headers: &HeaderMap,
    limit: u64,
    timeout: Duration,
) -> Result<Bytes, Rejection> {
    let declared = headers
        .get(CONTENT_LENGTH)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.parse::<u64>().ok());
    if declared.is_some_and(|n| n > limit) {
        return Err(Rejection::BodyTooLarge { limit });
    }
    let cap = usize::try_from(limit).unwrap_or(usize::MAX);
    match tokio::time::timeout(timeout, Limited::new(body, cap).collect()).await {
        Err(_) => Err(Rejection::BodyTimeout(timeout)),
        Ok(Ok(c)) => Ok(c.to_bytes()),
        Ok(Err(e)) if e.is::<http_body_util::LengthLimitError>() => {
            Err(Rejection::BodyTooLarge { limit })
        }
        Ok(Err(e)) => Err(Rejection::BodyRead(e.to_string())),
    }
}

fn unix_now() -> u64 {
    // A clock before 1970 makes every timestamp "stale", which fails closed.
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| d.as_secs())
}

fn json_response(status: StatusCode, body: serde_json::Value) -> Response<Full<Bytes>> {
    let mut r = Response::new(Full::new(Bytes::from(body.to_string())));
    *r.status_mut() = status;
    r.headers_mut()
        .insert(CONTENT_TYPE, HeaderValue::from_static("application/json"));
    r
}

/// PayMongo counts a delivery as good on 200–209 with a JSON body.
fn accepted_response(a: &Accepted, event: Option<&Event>) -> Response<Full<Bytes>> {
    let status = match a {
        Accepted::Delivered(_) => "delivered",
        Accepted::Duplicate => "duplicate",
    };
    let id = event.map(|e| e.id.as_str()).unwrap_or_default();
    json_response(
        StatusCode::OK,
        serde_json::json!({ "status": status, "event_id": id }),
    )
}

fn rejection_response(r: &Rejection) -> Response<Full<Bytes>> {
    let mut resp = ApiError::from(r).into_response();
    if matches!(r, Rejection::MethodNotAllowed(_)) {
        resp.headers_mut()
            .insert(ALLOW, HeaderValue::from_static("POST"));
    }
    resp
}

fn truncated(path: &str) -> String {
    let masked = MaskedPath(path).to_string();
    match masked.char_indices().nth(MAX_LOGGED_PATH) {
        Some((i, _)) => format!("{}…", &masked[..i]),
        None => masked,
    }
}

/// The one log line per delivery.
#[allow(clippy::too_many_arguments)]
fn record(
    method: &Method,
    path: &str,
    peer: &Peer,
    status: StatusCode,
    outcome: WebhookOutcome,
    trace: &Trace,
    err: Option<&Rejection>,
    started: Instant,
) {
    let latency_ms = (started.elapsed().as_secs_f64() * 1e6).round() / 1e3;
    let peer = match peer {
        Peer::Tcp(a) => a.ip().to_string(),
        Peer::Unix => "unix".to_owned(),
    };
    let endpoint = trace.endpoint.as_deref();
    // The raw (masked, truncated) path only matters when no endpoint matched.
    let path = if endpoint.is_none() { Some(path) } else { None };
    let event_id = trace.event.as_ref().map(|e| Abbrev(&e.id).to_string());
    let event_type = trace.event.as_ref().map(|e| e.kind.as_str());
    // 0 = current secret, 1 = previous: tells when a rotation can finish.
    let secret = trace.secret;
    let outcome = format!("{outcome:?}");
    match err {
        None => info!(
            listener = "webhooks",
            endpoint,
            method = %method,
            status = status.as_u16(),
            outcome,
            event_id,
            event_type,
            secret,
            inward_status = trace.inward_status,
            latency_ms,
            peer,
            "webhook"
        ),
        // Scanners probe random paths all day on a public listener; those
        // are worth a line, not a warning.
        Some(e @ (Rejection::NotFound | Rejection::MethodNotAllowed(_))) => info!(
            listener = "webhooks",
            endpoint,
            path,
            method = %method,
            status = status.as_u16(),
            outcome,
            latency_ms,
            peer,
            reason = %e,
            "webhook"
        ),
        Some(e) => warn!(
            listener = "webhooks",
            endpoint,
            path,
            method = %method,
            status = status.as_u16(),
            outcome,
            event_id,
            event_type,
            secret,
            latency_ms,
            peer,
            reason = %e,
            "webhook"
        ),
    }
}

//! The idempotency step of the outbound pipeline, between reading the body
//! and injecting the key: decide (pass, replay, or own the key), and for an
//! owned key run the upstream call to completion.
//!
//! An owned call runs in a task on `Shared::tasks` that the request merely
//! awaits: if the client hangs up, hyper drops the request future but not
//! the task, so PayMongo's answer is still stored and the client's retry
//! gets the replay instead of a second charge. Shutdown waits for these
//! tasks. The response is buffered (up to `max_response`) so it can be
//! stored; a larger one is streamed on and not stored.

use std::pin::Pin;
use std::sync::Arc;
use std::time::{Duration, Instant};

use bytes::{Bytes, BytesMut};
use http::request::Parts;
use http::response::Parts as ResponseParts;
use http::{Request, Response};
use http_body_util::{BodyExt, Either, Full};
use hyper::body::Incoming;
use tokio::time::Sleep;
use tracing::{debug, info, warn};

use super::{ForwardError, OutboundError, headers};
use crate::config::{IdempotencyConfig, Mode};
use crate::gateway::Shared;
use crate::idempotency::{self, ClaimGuard, Decision, RequestView, StoredResponse};
use crate::log::MaskedPath;
use crate::metrics::{IdempotencyOutcome, ServiceMetrics};
use crate::reload::Snapshot;
use crate::server::{ResponseBody, Streamed};

/// What the pipeline does next with a request.
#[derive(Debug)]
pub enum Step {
    /// Not deduplicated (or the store failed in `forward` mode): forward as usual.
    Pass,
    /// Answer with this stored response; nothing is forwarded.
    Replay(Response<Full<Bytes>>),
    /// This request owns the key: forward it with [`forward_claimed`].
    Execute(ClaimGuard),
}

/// Validates the key, then claims, waits or replays per `cfg`.
pub async fn begin(
    shared: &Shared,
    mode: Mode,
    cfg: &IdempotencyConfig,
    service: &str,
    parts: &Parts,
    body: &Bytes,
) -> Result<Step, OutboundError> {
    let view = RequestView {
        mode,
        service,
        method: &parts.method,
        path: parts.uri.path(),
        query: parts.uri.query(),
        headers: &parts.headers,
        body,
    };
    let metrics = &shared.metrics;
    let id = match idempotency::identify(cfg, &view) {
        Ok(Some(id)) => id,
        Ok(None) => return Ok(Step::Pass),
        Err(e) => {
            metrics.idempotency(IdempotencyOutcome::invalid);
            return Err(e.into());
        }
    };
    match idempotency::decide(&shared.idempotency, &shared.tasks, cfg, id).await {
        Ok(Decision::Execute(guard)) => {
            metrics.idempotency(IdempotencyOutcome::miss);
            Ok(Step::Execute(guard))
        }
        Ok(Decision::Replay { record, waited }) => {
            metrics.idempotency(if waited {
                IdempotencyOutcome::wait
            } else {
                IdempotencyOutcome::replay
            });
            Ok(Step::Replay(record.response.replay()))
        }
        Ok(Decision::Bypass(e)) => {
            metrics.idempotency(IdempotencyOutcome::store_error);
            warn!(service, error = %e, "idempotency store failed; forwarding without deduplication");
            Ok(Step::Pass)
        }
        Err(e) => {
            metrics.idempotency(match &e {
                idempotency::Error::InvalidKey => IdempotencyOutcome::invalid,
                idempotency::Error::KeyReused => IdempotencyOutcome::mismatch,
                idempotency::Error::InUse => IdempotencyOutcome::conflict,
                idempotency::Error::Store(_) => IdempotencyOutcome::store_error,
            });
            Err(e.into())
        }
    }
}

/// Forwards a request whose key this request owns, in a detached task, and
/// awaits its answer. Dropping the returned future does not stop the call;
/// the task then logs the outcome itself, since no request line will.
pub async fn forward_claimed(
    shared: &Shared,
    snap: &Arc<Snapshot>,
    metrics: &ServiceMetrics,
    req: Request<Full<Bytes>>,
    guard: ClaimGuard,
) -> Result<Response<ResponseBody>, ForwardError> {
    let (tx, rx) = tokio::sync::oneshot::channel();
    let (snap, metrics) = (snap.clone(), metrics.clone());
    let what = format!("{} {}", req.method(), MaskedPath(req.uri().path()));
    shared.tasks.spawn(async move {
        let result = execute(snap, metrics, req, guard).await;
        if let Err(unsent) = tx.send(result) {
            match unsent {
                Ok(resp) => info!(
                    request = %what,
                    status = resp.status().as_u16(),
                    "idempotent call finished after the client disconnected; its retry gets the stored answer"
                ),
                Err(e) => warn!(
                    request = %what,
                    error = %e,
                    "idempotent call failed after the client disconnected; claim released"
                ),
            }
        }
    });
    match rx.await {
        Ok(r) => r,
        // Only a runtime shutdown or a panic gets here; the guard, dropped
        // with the task, has released the claim.
        Err(_) => Err(ForwardError::Aborted(
            "the upstream task ended without an answer".into(),
        )),
    }
}

/// The owner's whole job: forward, buffer, then store or release.
async fn execute(
    snap: Arc<Snapshot>,
    metrics: ServiceMetrics,
    req: Request<Full<Bytes>>,
    guard: ClaimGuard,
) -> Result<Response<ResponseBody>, ForwardError> {
    let cfg = &snap.config.idempotency;
    let upstream = &snap.upstream;
    // `upstream.timeout` bounds the whole response here, not just its head:
    // the claim's lease must outlive the call, and it is validated against it.
    let mut deadline = upstream.deadline();
    let started = Instant::now();
    let sent = upstream.send(req, &mut deadline).await;
    metrics.upstream_latency(started.elapsed());
    let mut resp = match sent {
        Ok(r) => r,
        Err(e) => {
            release(guard).await;
            return Err(e);
        }
    };
    headers::rewrite_response(resp.headers_mut());
    match buffer(resp, cfg.max_response, &mut deadline, upstream.timeout()).await {
        Err(e) => {
            release(guard).await;
            Err(e)
        }
        Ok(Buffered::TooLarge(resp)) => {
            debug!("idempotent response exceeds max_response; passed through, not stored");
            // The claim is held until the body is fully streamed (then
            // released by the guard's drop): a waiting duplicate must not
            // re-execute while PayMongo's first answer is still arriving.
            Ok(resp.map(|b| Either::Right(b.deadline(deadline, upstream.timeout()).hold(guard))))
        }
        Ok(Buffered::Whole(parts, body)) => {
            if idempotency::storable(parts.status) {
                let stored = StoredResponse::capture(parts.status, &parts.headers, &body);
                match guard.complete(stored, cfg.ttl).await {
                    Ok(true) => {}
                    Ok(false) => {
                        warn!("idempotency claim expired before the response arrived; not stored")
                    }
                    Err(e) => {
                        warn!(error = %e, "could not store an idempotent response; a retry will be forwarded")
                    }
                }
            } else {
                release(guard).await;
            }
            Ok(Response::from_parts(parts, Either::Left(Full::new(body))))
        }
    }
}

async fn release(guard: ClaimGuard) {
    if let Err(e) = guard.release().await {
        warn!(error = %e, "could not release an idempotency claim; it expires with its lease");
    }
}

enum Buffered {
    Whole(ResponseParts, Bytes),
    TooLarge(Response<Streamed>),
}

/// Reads the whole body if it fits in `cap`; otherwise hands back what was
/// read plus the rest of the stream.
async fn buffer(
    resp: Response<Incoming>,
    cap: u64,
    deadline: &mut Pin<Box<Sleep>>,
    timeout: Duration,
) -> Result<Buffered, ForwardError> {
    let declared = resp
        .headers()
        .get(http::header::CONTENT_LENGTH)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.parse::<u64>().ok());
    if declared.is_some_and(|n| n > cap) {
        return Ok(Buffered::TooLarge(resp.map(Streamed::from)));
    }
    let (parts, mut body) = resp.into_parts();
    let cap = usize::try_from(cap).unwrap_or(usize::MAX);
    let mut buf = BytesMut::with_capacity(declared.map_or(0, |n| usize::try_from(n).unwrap_or(0)));
    loop {
        let frame = tokio::select! {
            biased;
            f = body.frame() => match f {
                None => break,
                Some(Err(e)) => return Err(ForwardError::Body(e)),
                Some(Ok(f)) => f,
            },
            () = deadline.as_mut() => return Err(ForwardError::Timeout(timeout)),
        };
        // Trailers are not replayed (PayMongo sends none).
        let Ok(data) = frame.into_data() else {
            continue;
        };
        buf.extend_from_slice(&data);
        if buf.len() > cap {
            let resp = Response::from_parts(parts, Streamed::with_prefix(buf.freeze(), body));
            return Ok(Buffered::TooLarge(resp));
        }
    }
    Ok(Buffered::Whole(parts, buf.freeze()))
}

//! The admin listener: `/healthz` (the process is up), `/readyz` (it can do
//! its job now) and `/metrics` (Prometheus text). Loopback by default; a
//! non-loopback admin listener admits only `admin.allow_from` peers.

use std::sync::Arc;

use bytes::Bytes;
use http::header::{CONTENT_TYPE, HeaderValue};
use http::{Method, Request, Response, StatusCode};
use http_body_util::Full;
use hyper::body::Incoming;

use crate::error::{ApiError, ErrorCode};
use crate::gateway::Shared;
use crate::server::{Handler, Peer, ResponseBody, full};

/// Serves the admin endpoints.
#[derive(Clone)]
pub struct AdminHandler {
    shared: Arc<Shared>,
}

impl AdminHandler {
    /// A handler over the gateway's shared state.
    pub fn new(shared: Arc<Shared>) -> Self {
        Self { shared }
    }
}

fn json(status: StatusCode, body: serde_json::Value) -> Response<ResponseBody> {
    let mut r = Response::new(Full::new(Bytes::from(body.to_string())));
    *r.status_mut() = status;
    r.headers_mut()
        .insert(CONTENT_TYPE, HeaderValue::from_static("application/json"));
    full(r)
}

impl Handler for AdminHandler {
    async fn call(&self, req: Request<Incoming>, peer: Peer) -> Response<ResponseBody> {
        let snap = self.shared.snapshot();
        if let Some(nets) = &snap.config.admin.allow_from {
            let ok = matches!(&peer, Peer::Tcp(a) if nets.iter().any(|n| n.contains(a.ip())));
            if !ok {
                return full(
                    ApiError::new(
                        ErrorCode::PeerNotAllowed,
                        "this address may not use the admin listener",
                    )
                    .into_response(),
                );
            }
        }
        if req.method() != Method::GET && req.method() != Method::HEAD {
            return full(
                ApiError::new(ErrorCode::MethodNotAllowed, "admin endpoints are GET only")
                    .into_response(),
            );
        }
        match req.uri().path() {
            "/healthz" => json(StatusCode::OK, serde_json::json!({ "status": "ok" })),
            "/readyz" => json(
                StatusCode::OK,
                serde_json::json!({ "status": "ready", "generation": snap.generation }),
            ),
            "/metrics" => {
                let mut r = Response::new(Full::new(Bytes::from(self.shared.metrics.encode())));
                r.headers_mut().insert(
                    CONTENT_TYPE,
                    HeaderValue::from_static(
                        "application/openmetrics-text; version=1.0.0; charset=utf-8",
                    ),
                );
                full(r)
            }
            _ => full(ApiError::new(ErrorCode::NotFound, "no such admin endpoint").into_response()),
        }
    }
}

//! The one place where errors become HTTP responses.
//!
//! Every answer the gateway makes up itself has PayMongo's error shape,
//! `{"errors":[{"code":"..","detail":".."}]}`, so callers need one parser.
//! Module errors (`outbound`, `idempotency`, `webhook`) convert into
//! [`ApiError`] here; details are written for the caller and never contain
//! secrets or internal addresses (the full cause goes to the log).

use std::borrow::Cow;

use bytes::Bytes;
use http::header::{CONTENT_TYPE, HeaderValue};
use http::{Response, StatusCode};
use http_body_util::Full;

/// The codes the gateway answers with, each with a fixed status.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum ErrorCode {
    /// 403: the route is not in the service's allowlist.
    RouteNotAllowed,
    /// 403: the peer is outside `allow_from`.
    PeerNotAllowed,
    /// 400: the `Idempotency-Key` header is malformed.
    IdempotencyKeyInvalid,
    /// 422: the key was used with a different request body.
    IdempotencyKeyReused,
    /// 409: a request with this key is still in flight.
    IdempotencyKeyInUse,
    /// 503: the idempotency store is unreachable and `on_store_error = "reject"`.
    IdempotencyStoreUnavailable,
    /// 413: the body exceeds the configured limit.
    PayloadTooLarge,
    /// 400: the request could not be read.
    BadRequest,
    /// 502: PayMongo (or the inward service) could not be reached or failed mid-way.
    UpstreamUnavailable,
    /// 504: PayMongo (or the inward service) did not answer in time.
    UpstreamTimeout,
    /// 503: the listener is shutting down or being removed.
    ServiceUnavailable,
    /// 404: no such path.
    NotFound,
    /// 405: wrong method for this path.
    MethodNotAllowed,
    /// 400: the webhook signature header is missing or malformed.
    SignatureMissing,
    /// 401: the webhook signature does not verify.
    SignatureInvalid,
    /// 401: the webhook timestamp is outside the tolerance.
    TimestampOutOfTolerance,
    /// 400: the verified webhook body is not a usable PayMongo event.
    EventInvalid,
    /// 409: another delivery of the same webhook event is being forwarded.
    EventInProgress,
    /// 408: the request body did not arrive in time.
    RequestTimeout,
}

impl ErrorCode {
    /// The wire code.
    pub fn as_str(self) -> &'static str {
        match self {
            ErrorCode::RouteNotAllowed => "route_not_allowed",
            ErrorCode::PeerNotAllowed => "peer_not_allowed",
            ErrorCode::IdempotencyKeyInvalid => "idempotency_key_invalid",
            ErrorCode::IdempotencyKeyReused => "idempotency_key_reused",
            ErrorCode::IdempotencyKeyInUse => "idempotency_key_in_use",
            ErrorCode::IdempotencyStoreUnavailable => "idempotency_store_unavailable",
            ErrorCode::PayloadTooLarge => "payload_too_large",
            ErrorCode::BadRequest => "bad_request",
            ErrorCode::UpstreamUnavailable => "upstream_unavailable",
            ErrorCode::UpstreamTimeout => "upstream_timeout",
            ErrorCode::ServiceUnavailable => "service_unavailable",
            ErrorCode::NotFound => "resource_not_found",
            ErrorCode::MethodNotAllowed => "method_not_allowed",
            ErrorCode::SignatureMissing => "signature_missing",
            ErrorCode::SignatureInvalid => "signature_invalid",
            ErrorCode::TimestampOutOfTolerance => "timestamp_out_of_tolerance",
            ErrorCode::EventInvalid => "event_invalid",
            ErrorCode::EventInProgress => "event_in_progress",
            ErrorCode::RequestTimeout => "request_timeout",
        }
    }

    /// The HTTP status that goes with the code.
    pub fn status(self) -> StatusCode {
        match self {
            ErrorCode::RouteNotAllowed | ErrorCode::PeerNotAllowed => StatusCode::FORBIDDEN,
            ErrorCode::IdempotencyKeyInvalid
            | ErrorCode::BadRequest
            | ErrorCode::SignatureMissing
            | ErrorCode::EventInvalid => StatusCode::BAD_REQUEST,
            ErrorCode::IdempotencyKeyReused => StatusCode::UNPROCESSABLE_ENTITY,
            ErrorCode::IdempotencyKeyInUse | ErrorCode::EventInProgress => StatusCode::CONFLICT,
            ErrorCode::RequestTimeout => StatusCode::REQUEST_TIMEOUT,
            ErrorCode::IdempotencyStoreUnavailable | ErrorCode::ServiceUnavailable => {
                StatusCode::SERVICE_UNAVAILABLE
            }
            ErrorCode::PayloadTooLarge => StatusCode::PAYLOAD_TOO_LARGE,
            ErrorCode::UpstreamUnavailable => StatusCode::BAD_GATEWAY,
            ErrorCode::UpstreamTimeout => StatusCode::GATEWAY_TIMEOUT,
            ErrorCode::NotFound => StatusCode::NOT_FOUND,
            ErrorCode::MethodNotAllowed => StatusCode::METHOD_NOT_ALLOWED,
            ErrorCode::SignatureInvalid | ErrorCode::TimestampOutOfTolerance => {
                StatusCode::UNAUTHORIZED
            }
        }
    }
}

/// An error answer: a code and a sentence for the caller.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ApiError {
    /// What went wrong, as a stable code.
    pub code: ErrorCode,
    /// A human sentence; never secrets or internal addresses.
    pub detail: Cow<'static, str>,
}

impl ApiError {
    /// An error with this code and detail.
    pub fn new(code: ErrorCode, detail: impl Into<Cow<'static, str>>) -> Self {
        Self {
            code,
            detail: detail.into(),
        }
    }

    /// The status for this error.
    pub fn status(&self) -> StatusCode {
        self.code.status()
    }

    /// The JSON body.
    pub fn body(&self) -> Bytes {
        let v = serde_json::json!({
            "errors": [{ "code": self.code.as_str(), "detail": self.detail }]
        });
        Bytes::from(v.to_string())
    }

    /// The full response.
    pub fn into_response(self) -> Response<Full<Bytes>> {
        let mut resp = Response::new(Full::new(self.body()));
        *resp.status_mut() = self.status();
        resp.headers_mut()
            .insert(CONTENT_TYPE, HeaderValue::from_static("application/json"));
        resp
    }
}

impl From<&crate::outbound::OutboundError> for ApiError {
    fn from(e: &crate::outbound::OutboundError) -> Self {
        use crate::outbound::{ForwardError, OutboundError as E};
        match e {
            E::PeerNotAllowed => ApiError::new(
                ErrorCode::PeerNotAllowed,
                "this client address is not allowed to use this listener",
            ),
            E::RouteNotAllowed { method, path } => ApiError::new(
                ErrorCode::RouteNotAllowed,
                format!("{method} {path} is not in this service's allowlist"),
            ),
            E::BodyTooLarge { limit } => ApiError::new(
                ErrorCode::PayloadTooLarge,
                format!("the request body exceeds the {limit}-byte limit"),
            ),
            E::BodyRead(_) => {
                ApiError::new(ErrorCode::BadRequest, "the request body could not be read")
            }
            E::ServiceGone => ApiError::new(
                ErrorCode::ServiceUnavailable,
                "this listener is being removed; retry on the current one",
            ),
            E::Forward(ForwardError::Timeout(_)) => ApiError::new(
                ErrorCode::UpstreamTimeout,
                "PayMongo did not answer in time; retry with the same Idempotency-Key",
            ),
            E::Forward(ForwardError::Connect(_)) => ApiError::new(
                ErrorCode::UpstreamUnavailable,
                "the gateway could not connect to PayMongo",
            ),
            E::Forward(_) => ApiError::new(
                ErrorCode::UpstreamUnavailable,
                "the connection to PayMongo failed before a complete response",
            ),
            E::Idempotency(e) => ApiError::from(e),
        }
    }
}

impl From<&crate::idempotency::Error> for ApiError {
    fn from(e: &crate::idempotency::Error) -> Self {
        use crate::idempotency::Error as E;
        match e {
            E::InvalidKey => ApiError::new(
                ErrorCode::IdempotencyKeyInvalid,
                "the Idempotency-Key header must appear once, with 1 to 255 visible ASCII characters",
            ),
            E::KeyReused => ApiError::new(
                ErrorCode::IdempotencyKeyReused,
                "this Idempotency-Key was already used with a different request; use a new key for a new request",
            ),
            E::InUse => ApiError::new(
                ErrorCode::IdempotencyKeyInUse,
                "a request with this Idempotency-Key is still in progress; retry later with the same key",
            ),
            E::Store(_) => ApiError::new(
                ErrorCode::IdempotencyStoreUnavailable,
                "the idempotency store is unavailable; retry later with the same key",
            ),
        }
    }
}

impl From<&crate::webhook::Rejection> for ApiError {
    fn from(r: &crate::webhook::Rejection) -> Self {
        use crate::webhook::Rejection as R;
        use crate::webhook::forward::ForwardError as F;
        use crate::webhook::signature::SignatureError as S;
        match r {
            R::NotFound => ApiError::new(ErrorCode::NotFound, "no webhook endpoint at this path"),
            R::MethodNotAllowed(_) => ApiError::new(
                ErrorCode::MethodNotAllowed,
                "webhook endpoints accept POST only",
            ),
            R::BodyTooLarge { limit } => ApiError::new(
                ErrorCode::PayloadTooLarge,
                format!("the event body exceeds the {limit}-byte limit"),
            ),
            R::BodyRead(_) => {
                ApiError::new(ErrorCode::BadRequest, "the request body could not be read")
            }
            R::BodyTimeout(_) => ApiError::new(
                ErrorCode::RequestTimeout,
                "the request body did not arrive in time",
            ),
            // The parser's reasons name a rule, never header content: safe to
            // return, and they tell a sender exactly what to fix.
            R::Signature(e @ (S::Missing | S::Duplicated | S::TooLong(_) | S::Malformed(_))) => {
                ApiError::new(ErrorCode::SignatureMissing, e.to_string())
            }
            R::Signature(S::NoSignatureForMode(which)) => ApiError::new(
                ErrorCode::SignatureInvalid,
                format!("the Paymongo-Signature header has no {which} signature"),
            ),
            R::Signature(S::Mismatch) => ApiError::new(
                ErrorCode::SignatureInvalid,
                "the signature does not match this endpoint's secret",
            ),
            R::Signature(S::Stale { tolerance_secs, .. }) => ApiError::new(
                ErrorCode::TimestampOutOfTolerance,
                format!(
                    "the signature timestamp is more than {tolerance_secs}s from the gateway's clock"
                ),
            ),
            R::Event(e) => ApiError::new(ErrorCode::EventInvalid, e.to_string()),
            R::WrongMode { livemode, .. } => ApiError::new(
                ErrorCode::EventInvalid,
                if *livemode {
                    "a live-mode event was sent to a test-mode gateway"
                } else {
                    "a test-mode event was sent to a live-mode gateway"
                },
            ),
            R::InProgress => ApiError::new(
                ErrorCode::EventInProgress,
                "this event is being delivered by another request; retry later",
            ),
            R::Forward(F::Timeout(_)) => ApiError::new(
                ErrorCode::UpstreamTimeout,
                "the receiving service did not answer in time; the event was not acknowledged",
            ),
            R::Forward(_) => ApiError::new(
                ErrorCode::UpstreamUnavailable,
                "the event could not be delivered to the receiving service",
            ),
            R::Disabled => ApiError::new(
                ErrorCode::ServiceUnavailable,
                "webhooks are being reconfigured; retry later",
            ),
            R::Busy => ApiError::new(
                ErrorCode::ServiceUnavailable,
                "too many deliveries are arriving at once; retry later",
            ),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn paymongo_shape() {
        let e = ApiError::new(ErrorCode::RouteNotAllowed, "GET /v1/x \"quoted\"");
        let v: serde_json::Value = serde_json::from_slice(&e.body()).unwrap();
        assert_eq!(v["errors"][0]["code"], "route_not_allowed");
        assert_eq!(v["errors"][0]["detail"], "GET /v1/x \"quoted\"");
        assert_eq!(e.status(), StatusCode::FORBIDDEN);
    }

    #[test]
    fn spec_statuses() {
        for (c, s) in [
            (ErrorCode::RouteNotAllowed, 403),
            (ErrorCode::IdempotencyKeyInvalid, 400),
            (ErrorCode::IdempotencyKeyReused, 422),
            (ErrorCode::IdempotencyKeyInUse, 409),
            (ErrorCode::IdempotencyStoreUnavailable, 503),
            (ErrorCode::PayloadTooLarge, 413),
            (ErrorCode::UpstreamUnavailable, 502),
            (ErrorCode::UpstreamTimeout, 504),
            (ErrorCode::SignatureMissing, 400),
            (ErrorCode::SignatureInvalid, 401),
            (ErrorCode::TimestampOutOfTolerance, 401),
            (ErrorCode::EventInvalid, 400),
            (ErrorCode::EventInProgress, 409),
            (ErrorCode::RequestTimeout, 408),
            (ErrorCode::NotFound, 404),
            (ErrorCode::MethodNotAllowed, 405),
        ] {
            assert_eq!(c.status().as_u16(), s, "{}", c.as_str());
        }
    }
}

//! Prometheus metrics, all prefixed `paymongo_gateway_`.
//!
//! Labels are drawn from small, closed sets (service names from the config,
//! status classes, outcome and reason words). No label ever carries a key, an
//! idempotency key, an event id or a path with ids in it, so cardinality stays
//! bounded and nothing secret reaches a scrape.
//!
//! Hot-path counters are resolved to handles once per service
//! ([`ServiceMetrics`]) so a request only does atomic increments.

use std::sync::Arc;

use prometheus_client::encoding::{EncodeLabelSet, EncodeLabelValue};
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::gauge::Gauge;
use prometheus_client::metrics::histogram::{Histogram, exponential_buckets};
use prometheus_client::registry::Registry;

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct RequestLabels {
    service: String,
    class: &'static str,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct ServiceLabel {
    service: String,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct OutcomeLabel {
    outcome: IdempotencyOutcome,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct ReasonLabel {
    reason: WebhookOutcome,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct ResultLabel {
    result: &'static str,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct StoreErrorLabels {
    store: &'static str,
    op: &'static str,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct KindLabel {
    kind: &'static str,
}

/// What the idempotency layer did with a request.
#[derive(Clone, Copy, Debug, Hash, PartialEq, Eq, EncodeLabelValue)]
#[allow(non_camel_case_types)]
pub enum IdempotencyOutcome {
    /// First time this key was seen: claimed and forwarded.
    miss,
    /// Served from the store.
    replay,
    /// Waited for a concurrent duplicate, then replayed.
    wait,
    /// Concurrent duplicate refused (reject mode or wait timeout): 409.
    conflict,
    /// Same key, different body: 422.
    mismatch,
    /// The store failed; forwarded or refused per `on_store_error`.
    store_error,
    /// The key header was malformed: 400.
    invalid,
}

/// How a webhook delivery ended.
#[derive(Clone, Copy, Debug, Hash, PartialEq, Eq, EncodeLabelValue)]
#[allow(non_camel_case_types)]
pub enum WebhookOutcome {
    /// Verified and delivered inward.
    accepted,
    /// Signature did not match any secret.
    bad_signature,
    /// Timestamp outside the tolerance.
    stale,
    /// Missing or unparsable signature header, or a body that is not a PayMongo event.
    malformed,
    /// Body over `max_body`.
    too_large,
    /// Event id already delivered: acknowledged, not forwarded.
    duplicate,
    /// Inward delivery failed or timed out.
    forward_failed,
    /// Event `livemode` does not match `mode`.
    wrong_mode,
    /// No endpoint at that path, or wrong method.
    not_found,
    /// Refused for load: too many bodies were being read at once.
    busy,
}

const IDEMPOTENCY_OUTCOMES: [IdempotencyOutcome; 7] = [
    IdempotencyOutcome::miss,
    IdempotencyOutcome::replay,
    IdempotencyOutcome::wait,
    IdempotencyOutcome::conflict,
    IdempotencyOutcome::mismatch,
    IdempotencyOutcome::store_error,
    IdempotencyOutcome::invalid,
];

const WEBHOOK_OUTCOMES: [WebhookOutcome; 10] = [
    WebhookOutcome::accepted,
    WebhookOutcome::bad_signature,
    WebhookOutcome::stale,
    WebhookOutcome::malformed,
    WebhookOutcome::too_large,
    WebhookOutcome::duplicate,
    WebhookOutcome::forward_failed,
    WebhookOutcome::wrong_mode,
    WebhookOutcome::not_found,
    WebhookOutcome::busy,
];

/// Every metric the gateway exports.
pub struct Metrics {
    registry: Registry,
    requests: Family<RequestLabels, Counter>,
    upstream_latency: Family<ServiceLabel, Histogram>,
    upstream_errors: Family<KindLabel, Counter>,
    reloads: Family<ResultLabel, Counter>,
    store_errors: Family<StoreErrorLabels, Counter>,
    generation: Gauge,
    // Closed label sets, resolved once: the hot path only increments.
    idempotency_by_outcome: [Counter; IDEMPOTENCY_OUTCOMES.len()],
    webhooks_by_reason: [Counter; WEBHOOK_OUTCOMES.len()],
}

impl std::fmt::Debug for Metrics {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("Metrics")
    }
}

fn latency_histogram() -> Histogram {
    // 1 ms .. ~33 s
    Histogram::new(exponential_buckets(0.001, 2.0, 16))
}

impl Default for Metrics {
    fn default() -> Self {
        Self::new()
    }
}

impl Metrics {
    /// Creates and registers every family.
    pub fn new() -> Self {
        let mut registry = Registry::with_prefix("paymongo_gateway");
        let requests = Family::<RequestLabels, Counter>::default();
        let upstream_latency = Family::<ServiceLabel, Histogram>::new_with_constructor(
            latency_histogram as fn() -> Histogram,
        );
        let upstream_errors = Family::<KindLabel, Counter>::default();
        let idempotency = Family::<OutcomeLabel, Counter>::default();
        let webhooks = Family::<ReasonLabel, Counter>::default();
        let reloads = Family::<ResultLabel, Counter>::default();
        let store_errors = Family::<StoreErrorLabels, Counter>::default();
        let generation = Gauge::default();
        registry.register(
            "requests",
            "Outbound requests answered, by service and status class",
            requests.clone(),
        );
        registry.register(
            "upstream_duration_seconds",
            "Time from sending a request to PayMongo to its response head",
            upstream_latency.clone(),
        );
        registry.register(
            "upstream_errors",
            "Upstream calls that failed without a response (connect, timeout, reset)",
            upstream_errors.clone(),
        );
        registry.register(
            "idempotency",
            "Idempotency decisions by outcome",
            idempotency.clone(),
        );
        registry.register(
            "webhooks",
            "Webhook deliveries by outcome",
            webhooks.clone(),
        );
        registry.register(
            "reloads",
            "Configuration reloads by result",
            reloads.clone(),
        );
        registry.register(
            "store_errors",
            "Shared-state store operations that failed or timed out, by store \
             (idempotency, events) and operation",
            store_errors.clone(),
        );
        registry.register(
            "config_generation",
            "Generation of the configuration in use (1 at start, +1 per successful reload)",
            generation.clone(),
        );
        // Every outcome is exported from the start (at 0), so dashboards and
        // rate() see the series before the first event.
        let idempotency_by_outcome = IDEMPOTENCY_OUTCOMES
            .map(|outcome| idempotency.get_or_create(&OutcomeLabel { outcome }).clone());
        let webhooks_by_reason =
            WEBHOOK_OUTCOMES.map(|reason| webhooks.get_or_create(&ReasonLabel { reason }).clone());
        Self {
            registry,
            requests,
            upstream_latency,
            upstream_errors,
            reloads,
            store_errors,
            generation,
            idempotency_by_outcome,
            webhooks_by_reason,
        }
    }

    /// A handle the state stores count their failures with.
    pub fn store_errors(&self) -> StoreErrors {
        StoreErrors(self.store_errors.clone())
    }

    /// Handles for one service's hot-path metrics.
    pub fn service(&self, name: &str) -> ServiceMetrics {
        let class = |c: &'static str| {
            self.requests
                .get_or_create(&RequestLabels {
                    service: name.to_owned(),
                    class: c,
                })
                .clone()
        };
        ServiceMetrics(Arc::new(ServiceMetricsInner {
            by_class: [
                class("1xx"),
                class("2xx"),
                class("3xx"),
                class("4xx"),
                class("5xx"),
            ],
            upstream_latency: self
                .upstream_latency
                .get_or_create(&ServiceLabel {
                    service: name.to_owned(),
                })
                .clone(),
        }))
    }

    /// Counts an upstream failure by kind (`connect`, `timeout`, `reset`).
    pub fn upstream_error(&self, kind: &'static str) {
        self.upstream_errors
            .get_or_create(&KindLabel { kind })
            .inc();
    }

    /// Counts an idempotency decision.
    pub fn idempotency(&self, outcome: IdempotencyOutcome) {
        if let Some(i) = IDEMPOTENCY_OUTCOMES.iter().position(|o| *o == outcome) {
            self.idempotency_by_outcome[i].inc();
        }
    }

    /// Counts a webhook delivery outcome.
    pub fn webhook(&self, reason: WebhookOutcome) {
        if let Some(i) = WEBHOOK_OUTCOMES.iter().position(|r| *r == reason) {
            self.webhooks_by_reason[i].inc();
        }
    }

    /// Counts a reload attempt.
    pub fn reload(&self, ok: bool) {
        let result = if ok { "success" } else { "failure" };
        self.reloads.get_or_create(&ResultLabel { result }).inc();
    }

    /// Sets the configuration generation gauge.
    pub fn set_generation(&self, g: u64) {
        self.generation.set(i64::try_from(g).unwrap_or(i64::MAX));
    }

    /// The OpenMetrics text exposition.
    pub fn encode(&self) -> String {
        let mut out = String::with_capacity(4096);
        // Writing into a String cannot fail.
        let _ = prometheus_client::encoding::text::encode(&mut out, &self.registry);
        out
    }
}

/// Counts failed store operations (`store_errors_total`). Cheap to clone;
/// every clone feeds the same family. A default handle counts into a family
/// no registry exports (store tests and benches).
#[derive(Clone, Debug, Default)]
pub struct StoreErrors(Family<StoreErrorLabels, Counter>);

impl StoreErrors {
    /// Counts one failed `op` (`claim`, `complete`, `release`, `ping`, ...) on `store`.
    pub fn inc(&self, store: &'static str, op: &'static str) {
        self.0.get_or_create(&StoreErrorLabels { store, op }).inc();
    }
}

/// Pre-resolved counters for one service.
#[derive(Clone, Debug)]
pub struct ServiceMetrics(Arc<ServiceMetricsInner>);

#[derive(Debug)]
struct ServiceMetricsInner {
    by_class: [Counter; 5],
    upstream_latency: Histogram,
}

impl ServiceMetrics {
    /// Counts one answered request by its status.
    pub fn response(&self, status: http::StatusCode) {
        let i = (status.as_u16() / 100).clamp(1, 5) as usize - 1;
        self.0.by_class[i].inc();
    }

    /// Records an upstream round trip.
    pub fn upstream_latency(&self, d: std::time::Duration) {
        self.0.upstream_latency.observe(d.as_secs_f64());
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn exposition_has_prefixed_names_and_moves() {
        let m = Metrics::new();
        let s = m.service("checkout");
        s.response(http::StatusCode::OK);
        s.response(http::StatusCode::FORBIDDEN);
        m.idempotency(IdempotencyOutcome::replay);
        m.webhook(WebhookOutcome::bad_signature);
        m.reload(false);
        m.store_errors().inc("idempotency", "claim");
        m.set_generation(3);
        let text = m.encode();
        assert!(
            text.contains("paymongo_gateway_requests_total{service=\"checkout\",class=\"2xx\"} 1"),
            "{text}"
        );
        assert!(
            text.contains("paymongo_gateway_requests_total{service=\"checkout\",class=\"4xx\"} 1")
        );
        assert!(text.contains("paymongo_gateway_idempotency_total{outcome=\"replay\"} 1"));
        assert!(text.contains("paymongo_gateway_webhooks_total{reason=\"bad_signature\"} 1"));
        assert!(text.contains("paymongo_gateway_reloads_total{result=\"failure\"} 1"));
        assert!(text.contains("paymongo_gateway_config_generation 3"));
        assert!(
            text.contains(
                "paymongo_gateway_store_errors_total{store=\"idempotency\",op=\"claim\"} 1"
            )
        );
    }
}

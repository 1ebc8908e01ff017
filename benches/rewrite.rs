//! The per-request rewrite path: allowlist match + header rewrite + upstream URI.
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

use std::hint::black_box;

use criterion::{Criterion, criterion_group, criterion_main};
use http::{HeaderMap, HeaderValue, Method};
use paymongo_gateway::config::{ApiKey, Mode};
use paymongo_gateway::outbound::allowlist::{Allowlist, Route};
use paymongo_gateway::outbound::headers;
use secrecy::SecretString;

fn typical_headers() -> HeaderMap {
    let mut h = HeaderMap::new();
    for (k, v) in [
        ("host", "127.0.0.1:8080"),
        ("user-agent", "checkout-service/4.2 (+internal)"),
        ("accept", "application/json"),
        ("content-type", "application/json"),
        ("content-length", "200"),
        ("idempotency-key", "order-1001-attempt-1"),
        ("x-request-id", "2b1f6c7e-0f55-4bb1-9b4f-5c1f8e3b2a10"),
        ("connection", "keep-alive"),
    ] {
        h.insert(k, HeaderValue::from_static(v));
    }
    h
}

fn bench(c: &mut Criterion) {
    let key = ApiKey::new(
        SecretString::from("sk_test_benchKEY0123456789".to_owned()),
        Mode::Test,
    )
    .unwrap();
    let rules: Vec<Route> = [
        "POST /v1/payment_intents",
        "GET /v1/payment_intents/*",
        "POST /v1/payment_intents/*/attach",
        "POST /v1/payment_methods",
        "GET /v1/payment_methods/*",
        "POST /v1/refunds",
        "GET /v1/refunds/*",
        "POST /v1/customers",
    ]
    .iter()
    .map(|r| r.parse().unwrap())
    .collect();
    let allow = Allowlist::new(rules);
    let default = Allowlist::default();

    c.bench_function("allowlist/8 rules, hit on rule 3", |b| {
        b.iter(|| {
            black_box(&allow).permits(
                &Method::POST,
                black_box("/v1/payment_intents/pi_3Pb9xYzAbC/attach"),
            )
        })
    });
    c.bench_function("allowlist/8 rules, miss", |b| {
        b.iter(|| black_box(&allow).permits(&Method::DELETE, black_box("/v1/customers/cus_1")))
    });
    c.bench_function("allowlist/default", |b| {
        b.iter(|| black_box(&default).permits(&Method::GET, black_box("/v1/payment_intents/pi_1")))
    });

    let template = typical_headers();
    c.bench_function("headers/rewrite_request (8 headers)", |b| {
        b.iter_batched_ref(
            || template.clone(),
            |h| headers::rewrite_request(h, &key),
            criterion::BatchSize::SmallInput,
        )
    });

    let mut hostile = typical_headers();
    hostile.insert(
        "connection",
        HeaderValue::from_static("keep-alive, authorization, x-a, x-b"),
    );
    hostile.insert("authorization", HeaderValue::from_static("Basic ZXZpbDo="));
    hostile.insert("x-forwarded-for", HeaderValue::from_static("10.0.0.1"));
    hostile.insert(
        "proxy-authorization",
        HeaderValue::from_static("Basic ZXZpbDo="),
    );
    c.bench_function("headers/rewrite_request (hostile)", |b| {
        b.iter_batched_ref(
            || hostile.clone(),
            |h| headers::rewrite_request(h, &key),
            criterion::BatchSize::SmallInput,
        )
    });

    paymongo_gateway::tls::install_crypto_provider();
    let up_cfg = paymongo_gateway::config::UpstreamConfig {
        url: paymongo_gateway::config::HttpsUrl::paymongo(),
        ca_file: None,
        extra_roots: vec![],
        connect_timeout: std::time::Duration::from_secs(5),
        timeout: std::time::Duration::from_secs(30),
        pool_idle_timeout: std::time::Duration::from_secs(90),
        pool_max_idle: 256,
    };
    let upstream = paymongo_gateway::outbound::Upstream::build(&up_cfg, None).unwrap();
    let pq: http::uri::PathAndQuery = "/v1/payment_intents/pi_3Pb9xYzAbC?expand=payment_method"
        .parse()
        .unwrap();
    c.bench_function("uri/upstream uri_for", |b| {
        b.iter(|| upstream.uri_for(Some(black_box(&pq))).unwrap())
    });

    c.bench_function("rewrite path/route + headers + uri", |b| {
        b.iter_batched_ref(
            || template.clone(),
            |h| {
                assert!(allow.permits(&Method::POST, "/v1/payment_intents/pi_3Pb9xYzAbC/attach"));
                headers::rewrite_request(h, &key);
                upstream.uri_for(Some(&pq)).unwrap()
            },
            criterion::BatchSize::SmallInput,
        )
    });
}

criterion_group!(benches, bench);
criterion_main!(benches);

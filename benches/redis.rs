//! Criterion benches for the Redis idempotency store against a real Redis
//! (`PAYMONGO_GATEWAY_TEST_REDIS_URL`; without it every bench is skipped
//! with a message). What a replay costs with and without the in-process
//! replay cache, what a miss costs (claim, then complete), and replay
//! throughput with many requests in flight over 1, 2 or 4 connections.
//! `baseline_get` (a bare `GET` of the record through the same client) is
//! the floor an uncached replay is measured against.
//!
//! Keys are unique per run and expire after a minute; nothing is flushed.
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

use std::hint::black_box;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;

use bytes::Bytes;
use criterion::{Criterion, Throughput, criterion_group, criterion_main};
use futures_util::future::join_all;
use http::{HeaderMap, HeaderValue, Method, StatusCode};
use paymongo_gateway::config::{Config, IdempotencyConfig, LoadContext};
use paymongo_gateway::idempotency::{
    self, ClaimOutcome, IdempotencyStore, Identity, Key, OwnerId, Record, RedisStore,
    StoredResponse,
};
use paymongo_gateway::metrics::StoreErrors;
use paymongo_gateway::redis_backend::RedisBackend;

#[global_allocator]
static GLOBAL: mimalloc::MiMalloc = mimalloc::MiMalloc;

const URL_VAR: &str = "PAYMONGO_GATEWAY_TEST_REDIS_URL";
const LEASE: Duration = Duration::from_secs(60);
const TTL: Duration = Duration::from_secs(60);
/// Requests in flight in the throughput benches.
const IN_FLIGHT: usize = 64;

fn body() -> Bytes {
    Bytes::from_static(
        br#"{"data":{"attributes":{"amount":10000,"payment_method_allowed":["card","gcash"],"currency":"PHP","capture_type":"automatic","description":"order 1001","metadata":{"order":"1001"}}}}"#,
    )
}

fn run_id() -> u128 {
    OwnerId::new().0
}

fn identity(run: u128, n: u64) -> Identity {
    let hv = HeaderValue::from_str(&format!("bench-{run:x}-{n}")).unwrap();
    Identity {
        key: idempotency::record_key(
            paymongo_gateway::config::Mode::Test,
            "checkout",
            &Method::POST,
            "/v1/payment_intents",
            Key::parse(&hv).unwrap(),
        ),
        fingerprint: idempotency::fingerprint(Some(b"application/json"), None, &body()),
    }
}

/// A ~600-byte PayMongo-like answer, as in the memory-store bench.
fn response() -> StoredResponse {
    let mut h = HeaderMap::new();
    h.insert("content-type", HeaderValue::from_static("application/json"));
    h.insert(
        "x-request-id",
        HeaderValue::from_static("req_0123456789abcdef01234567"),
    );
    let mut b = br#"{"data":{"id":"pi_0123456789abcdef01234567","type":"payment_intent","attributes":{"amount":10000,"currency":"PHP","status":"awaiting_payment_method","livemode":false}}}"#.to_vec();
    b.resize(600, b' ');
    StoredResponse::capture(StatusCode::OK, &h, &b)
}

fn config(url: &str, connections: u32) -> IdempotencyConfig {
    let text = format!(
        "mode = \"test\"\n[[service]]\nname = \"checkout\"\nlisten = \"127.0.0.1:0\"\n\
         secret_key = {{ env = \"SK\" }}\n[idempotency]\nstore = \"redis\"\n\
         redis_url = {{ env = \"REDIS_URL\" }}\nredis_connections = {connections}\n"
    );
    let url = url.to_owned();
    let env = move |k: &str| match k {
        "REDIS_URL" => Some(url.clone()),
        _ => Some("sk_test_bench".to_owned()),
    };
    let ctx = LoadContext {
        base_dir: ".".into(),
        env: &env,
    };
    Config::parse(&text, &ctx).unwrap().idempotency
}

fn store(url: &str, connections: u32, cache: u64) -> Arc<RedisStore> {
    let backend = Arc::new(RedisBackend::new(&config(url, connections)).unwrap());
    Arc::new(RedisStore::new(backend, cache, StoreErrors::default()))
}

async fn completed(store: &RedisStore, id: &Identity) {
    let owner = OwnerId::new();
    let out = store
        .claim(&id.key, &id.fingerprint, owner, LEASE)
        .await
        .unwrap();
    assert!(matches!(out, ClaimOutcome::Claimed), "{out:?}");
    let record = Record {
        fingerprint: id.fingerprint,
        response: response(),
    };
    assert!(store.complete(&id.key, owner, record, TTL).await.unwrap());
}

async fn replay(store: &RedisStore, id: &Identity) {
    let out = store
        .claim(black_box(&id.key), &id.fingerprint, OwnerId::new(), LEASE)
        .await
        .unwrap();
    assert!(matches!(out, ClaimOutcome::Completed(_)));
}

fn single(c: &mut Criterion, url: &str) {
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .unwrap();
    let _in_runtime = rt.enter();
    let run = run_id();
    let mut g = c.benchmark_group("redis");
    g.throughput(Throughput::Elements(1));

    // Replay served by the in-process cache: no round trip.
    let cached = store(url, 1, 16 << 20);
    let id = identity(run, 1);
    rt.block_on(completed(&cached, &id));
    g.bench_function("replay_cached", |b| {
        b.to_async(&rt).iter(|| replay(&cached, &id))
    });

    // Replay with the cache off: one EVALSHA round trip and a decode.
    let uncached = store(url, 1, 0);
    g.bench_function("replay_uncached", |b| {
        b.to_async(&rt).iter(|| replay(&uncached, &id))
    });

    // The floor: a plain GET of the same record through the same client,
    // one round trip with nothing of ours around it.
    let backend = Arc::new(RedisBackend::new(&config(url, 1)).unwrap());
    let mut get = redis::cmd("GET");
    get.arg(idempotency::redis::redis_key(&id.key));
    g.bench_function("baseline_get", |b| {
        b.to_async(&rt).iter(|| async {
            let v: Vec<u8> = backend.query(&get).await.unwrap();
            black_box(v)
        })
    });

    // Miss: a fresh key claimed, then completed with a ~600-byte answer.
    let next = AtomicU64::new(1_000);
    g.bench_function("claim_complete", |b| {
        b.to_async(&rt).iter(|| async {
            let id = identity(run, next.fetch_add(1, Ordering::Relaxed));
            completed(&uncached, &id).await;
        })
    });

    // Claim then release (an upstream 5xx).
    let fresh = identity(run, 2);
    g.bench_function("claim_release", |b| {
        b.to_async(&rt).iter(|| async {
            let owner = OwnerId::new();
            let out = uncached
                .claim(&fresh.key, &fresh.fingerprint, owner, LEASE)
                .await
                .unwrap();
            assert!(matches!(out, ClaimOutcome::Claimed));
            assert!(uncached.release(&fresh.key, owner).await.unwrap());
        })
    });
    g.finish();
}

/// Replays with [`IN_FLIGHT`] requests at once on 2 worker threads (the
/// gateway's shape on this machine), cache off, over 1, 2 and 4 connections.
fn concurrent(c: &mut Criterion, url: &str) {
    let rt = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .unwrap();
    let _in_runtime = rt.enter();
    let run = run_id();
    let ids: Vec<Identity> = (0..IN_FLIGHT as u64).map(|n| identity(run, n)).collect();
    let mut g = c.benchmark_group("redis_concurrent");
    g.throughput(Throughput::Elements(IN_FLIGHT as u64));
    rt.block_on(async {
        let s = store(url, 1, 0);
        for id in &ids {
            completed(&s, id).await;
        }
    });
    for conns in [1u32, 2, 4] {
        let s = store(url, conns, 0);
        g.bench_function(format!("replay_uncached_{conns}conn"), |b| {
            b.to_async(&rt).iter(|| {
                let tasks = ids.iter().map(|id| {
                    let (s, id) = (s.clone(), *id);
                    tokio::spawn(async move { replay(&s, &id).await })
                });
                async move {
                    for r in join_all(tasks).await {
                        r.unwrap();
                    }
                }
            })
        });
    }
    g.finish();
}

fn benches(c: &mut Criterion) {
    let Ok(url) = std::env::var(URL_VAR) else {
        eprintln!("redis benches skipped: {URL_VAR} is not set");
        return;
    };
    paymongo_gateway::tls::install_crypto_provider();
    single(c, &url);
    concurrent(c, &url);
}

criterion_group!(redis_benches, benches);
criterion_main!(redis_benches);

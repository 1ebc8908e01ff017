//! Criterion benches for the idempotency hot paths: the memory store's
//! replay (claim on a completed key) and claim → complete, and the
//! semantics around them (identify a request, decide, build the replay).
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

use std::hint::black_box;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;

use bytes::Bytes;
use criterion::{Criterion, Throughput, criterion_group, criterion_main};
use http::{HeaderMap, HeaderValue, Method, StatusCode};
use paymongo_gateway::config::{Config, LoadContext};
use paymongo_gateway::idempotency::{
    self, ClaimOutcome, Decision, IdempotencyStore, Identity, Key, MemoryStore, OwnerId, Record,
    RequestView, StoredResponse,
};
use tokio_util::task::TaskTracker;

#[global_allocator]
static GLOBAL: mimalloc::MiMalloc = mimalloc::MiMalloc;

const LEASE: Duration = Duration::from_secs(60);
const TTL: Duration = Duration::from_secs(24 * 3600);

fn body() -> Bytes {
    Bytes::from_static(
        br#"{"data":{"attributes":{"amount":10000,"payment_method_allowed":["card","gcash"],"currency":"PHP","capture_type":"automatic","description":"order 1001","metadata":{"order":"1001"}}}}"#,
    )
}

fn identity(n: u64) -> Identity {
    let hv = HeaderValue::from_str(&format!("order-{n}")).unwrap();
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

/// A ~600-byte PayMongo-like answer.
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

fn config() -> paymongo_gateway::config::IdempotencyConfig {
    let text = "mode = \"test\"\n[[service]]\nname = \"checkout\"\nlisten = \"127.0.0.1:0\"\nsecret_key = { env = \"SK\" }\n";
    let env = |_: &str| Some("sk_test_bench".to_owned());
    let ctx = LoadContext {
        base_dir: ".".into(),
        env: &env,
    };
    Config::parse(text, &ctx).unwrap().idempotency
}

fn runtime() -> tokio::runtime::Runtime {
    tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .unwrap()
}

async fn completed(store: &MemoryStore, id: &Identity) {
    let owner = OwnerId::new();
    let out = store
        .claim(&id.key, &id.fingerprint, owner, LEASE)
        .await
        .unwrap();
    assert!(matches!(out, ClaimOutcome::Claimed));
    let record = Record {
        fingerprint: id.fingerprint,
        response: response(),
    };
    assert!(store.complete(&id.key, owner, record, TTL).await.unwrap());
}

fn store(c: &mut Criterion) {
    let rt = runtime();
    let mut g = c.benchmark_group("store");
    g.throughput(Throughput::Elements(1));

    // Replay: claim on a completed key, the path every retry takes.
    let s = MemoryStore::new(64 << 20);
    let id = identity(1);
    rt.block_on(completed(&s, &id));
    g.bench_function("replay_hit", |b| {
        b.to_async(&rt).iter(|| async {
            let out = s
                .claim(black_box(&id.key), &id.fingerprint, OwnerId::new(), LEASE)
                .await
                .unwrap();
            assert!(matches!(out, ClaimOutcome::Completed(_)));
        })
    });

    // Miss: a fresh key claimed, then completed with a ~600-byte answer.
    // The store is bounded, so this also measures steady-state eviction.
    let s = MemoryStore::new(64 << 20);
    let next = AtomicU64::new(1_000_000);
    g.bench_function("claim_complete", |b| {
        b.to_async(&rt).iter(|| async {
            let id = identity(next.fetch_add(1, Ordering::Relaxed));
            completed(&s, &id).await;
        })
    });

    // Claim then release (an upstream 5xx).
    let s = MemoryStore::new(64 << 20);
    g.bench_function("claim_release", |b| {
        b.to_async(&rt).iter(|| async {
            let owner = OwnerId::new();
            let out = s
                .claim(&id.key, &id.fingerprint, owner, LEASE)
                .await
                .unwrap();
            assert!(matches!(out, ClaimOutcome::Claimed));
            assert!(s.release(&id.key, owner).await.unwrap());
        })
    });
    g.finish();
}

fn semantics(c: &mut Criterion) {
    let rt = runtime();
    let cfg = config();
    let mut g = c.benchmark_group("semantics");
    g.throughput(Throughput::Elements(1));

    let mut headers = HeaderMap::new();
    headers.insert("content-type", HeaderValue::from_static("application/json"));
    headers.insert(
        "idempotency-key",
        HeaderValue::from_static("order-1001-7f3a9c2e"),
    );
    headers.insert("user-agent", HeaderValue::from_static("checkout/1.4"));
    let b = body();
    g.bench_function("identify", |bn| {
        bn.iter(|| {
            let view = RequestView {
                mode: paymongo_gateway::config::Mode::Test,
                service: "checkout",
                method: &Method::POST,
                path: "/v1/payment_intents",
                query: None,
                headers: &headers,
                body: &b,
            };
            black_box(idempotency::identify(&cfg, black_box(&view)).unwrap())
        })
    });

    let resp = response();
    g.bench_function("build_replay_response", |bn| {
        bn.iter(|| black_box(black_box(&resp).replay()))
    });

    // The whole replay decision: claim guard, store lookup, fingerprint check.
    let s: Arc<dyn IdempotencyStore> = Arc::new(MemoryStore::new(64 << 20));
    let tasks = TaskTracker::new();
    let id = identity(7);
    rt.block_on(async {
        let Decision::Execute(guard) = idempotency::decide(&s, &tasks, &cfg, id).await.unwrap()
        else {
            panic!("fresh key");
        };
        assert!(guard.complete(response(), TTL).await.unwrap());
    });
    g.bench_function("decide_replay", |bn| {
        bn.to_async(&rt).iter(|| async {
            let d = idempotency::decide(&s, &tasks, &cfg, black_box(id))
                .await
                .unwrap();
            let Decision::Replay { record, .. } = d else {
                panic!("expected a replay")
            };
            black_box(record.response.replay())
        })
    });
    g.finish();
}

criterion_group!(benches, store, semantics);
criterion_main!(benches);

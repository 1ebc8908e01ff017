//! Memory bound of the idempotency memory store, in its own process so RSS
//! means something: after 1M distinct keys with realistic ~600-byte
//! responses, RSS stays under `max_memory` + 30 MiB.
//!
//! Uses mimalloc, like the binary. Debug builds drive fewer keys (the
//! store's behaviour does not change with the count once it is evicting);
//! `scripts/idempotency-rss.sh` runs the full 1M in release.
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

mod support;

use std::sync::Arc;
use std::time::{Duration, Instant};

use http::{HeaderMap, HeaderValue, Method, StatusCode};
use paymongo_gateway::idempotency::{
    self, ClaimOutcome, IdempotencyStore, Key, MemoryStore, OwnerId, Record, StoredResponse,
};

#[global_allocator]
static GLOBAL: mimalloc::MiMalloc = mimalloc::MiMalloc;

const MIB: u64 = 1 << 20;

fn rss_bytes() -> u64 {
    let status = std::fs::read_to_string("/proc/self/status").unwrap();
    let line = status.lines().find(|l| l.starts_with("VmRSS:")).unwrap();
    let kb: u64 = line.split_whitespace().nth(1).unwrap().parse().unwrap();
    kb * 1024
}

/// A PayMongo-like payment intent answer, ~600 bytes, distinct per key.
fn response(i: u64) -> (HeaderMap, Vec<u8>) {
    let mut h = HeaderMap::new();
    h.insert("content-type", HeaderValue::from_static("application/json"));
    h.insert(
        "x-request-id",
        HeaderValue::from_str(&format!("req_{i:024}")).unwrap(),
    );
    let mut body = format!(
        r#"{{"data":{{"id":"pi_{i:024}","type":"payment_intent","attributes":{{"amount":{},"capture_type":"automatic","client_key":"pi_{i:024}_client_{i:024}","currency":"PHP","description":"order {i}","livemode":false,"statement_descriptor":"TEST SHOP","status":"awaiting_payment_method","last_payment_error":null,"payment_method_allowed":["card","gcash","paymaya"],"payments":[],"next_action":null,"payment_method_options":{{"card":{{"request_three_d_secure":"any"}}}},"metadata":{{"order":"{i}"}},"setup_future_usage":null,"created_at":1700000000,"updated_at":1700000000}}}}}}"#,
        1000 + i
    )
    .into_bytes();
    body.resize(600.max(body.len()), b' ');
    (h, body)
}

async fn drive(store: &Arc<MemoryStore>, from: u64, to: u64) {
    let ttl = Duration::from_secs(24 * 3600);
    let lease = Duration::from_secs(60);
    for i in from..to {
        let k = format!("order-{i}");
        let hv = HeaderValue::from_str(&k).unwrap();
        let key = idempotency::record_key(
            paymongo_gateway::config::Mode::Test,
            "checkout",
            &Method::POST,
            "/v1/payment_intents",
            Key::parse(&hv).unwrap(),
        );
        let fp = idempotency::fingerprint(Some(b"application/json"), None, k.as_bytes());
        let owner = OwnerId::new();
        let out = store.claim(&key, &fp, owner, lease).await.unwrap();
        assert!(
            matches!(out, ClaimOutcome::Claimed),
            "key {i} was not fresh"
        );
        let (h, body) = response(i);
        let response = StoredResponse::capture(StatusCode::OK, &h, &body);
        let record = Record {
            fingerprint: fp,
            response,
        };
        assert!(store.complete(&key, owner, record, ttl).await.unwrap());
    }
}

fn keys() -> u64 {
    if let Ok(v) = std::env::var("IDEM_RSS_KEYS") {
        return v.parse().unwrap();
    }
    if cfg!(debug_assertions) {
        300_000
    } else {
        1_000_000
    }
}

fn mib(b: u64) -> f64 {
    b as f64 / MIB as f64
}

/// One test, so nothing else allocates in this process meanwhile. While the
/// store is still filling (no evictions yet) it also checks that the weigher
/// charges at least what the records really cost, so the byte bound is a
/// real bound.
#[test]
fn rss_stays_under_max_memory_plus_30mib() {
    let rt = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .unwrap();
    let max_memory = 64 * MIB;
    let total = keys();
    let workers = 4u64;
    let chunk = 7_000u64;
    let before = rss_bytes();
    let started = Instant::now();
    let (records, weighted, peak, fill) = rt.block_on(async {
        let store = Arc::new(MemoryStore::new(max_memory));
        let mut peak = 0;
        let mut fill = None;
        let mut next = 0;
        while next < total {
            let mut set = tokio::task::JoinSet::new();
            for w in 0..workers {
                let s = store.clone();
                let from = next + w * chunk;
                let to = (from + chunk).min(total);
                if from < to {
                    set.spawn(async move { drive(&s, from, to).await });
                }
            }
            while let Some(r) = set.join_next().await {
                r.unwrap();
            }
            next += workers * chunk;
            if fill.is_none() {
                // 28k records of ~1.45 KiB: inside the record budget (2/3 of
                // max_memory), nothing evicted yet.
                store.sync().await;
                fill = Some((
                    store.records(),
                    store.weighted_bytes(),
                    rss_bytes().saturating_sub(before),
                ));
            }
            peak = peak.max(rss_bytes());
        }
        store.sync().await;
        (
            store.records(),
            store.weighted_bytes(),
            peak.max(rss_bytes()),
            fill.unwrap(),
        )
    });
    let after = rss_bytes();
    let (fill_records, fill_weighted, fill_grew) = fill;
    eprintln!(
        "filling: {fill_records} records weighed {:.1} MiB ({:.0} B each), RSS grew {:.1} MiB ({:.0} B each)",
        mib(fill_weighted),
        fill_weighted as f64 / fill_records as f64,
        mib(fill_grew),
        fill_grew as f64 / fill_records as f64,
    );
    eprintln!(
        "idempotency memory: {total} keys in {:.1}s; {records} records kept, weighted {:.1} MiB ({:.0} B/record); \
         RSS before {:.1} MiB, peak {:.1} MiB, after {:.1} MiB; bound {:.1} MiB",
        started.elapsed().as_secs_f64(),
        mib(weighted),
        weighted as f64 / records.max(1) as f64,
        mib(before),
        mib(peak),
        mib(after),
        mib(max_memory + 30 * MIB),
    );
    assert_eq!(
        fill_records,
        workers * chunk.min(total),
        "nothing may be evicted while filling"
    );
    // Fixed costs (runtime, moka's sketch and buffers) get a few MiB of slack.
    assert!(
        fill_grew <= fill_weighted + 8 * MIB,
        "records cost {fill_grew} B of RSS but were weighed {fill_weighted} B: ENTRY_OVERHEAD is too low"
    );
    assert!(
        weighted <= max_memory,
        "weighted size {weighted} exceeds max_memory"
    );
    assert!(records < total, "the store must have evicted");
    assert!(
        peak < max_memory + 30 * MIB,
        "peak RSS {peak} >= max_memory + 30 MiB"
    );
}

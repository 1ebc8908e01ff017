//! Idempotency, end to end (real sockets, a fake PayMongo that counts
//! executions per path) and at the store/semantics level.
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

mod support;

use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::Duration;

use async_trait::async_trait;
use bytes::Bytes;
use futures_util::StreamExt;
use futures_util::stream::FuturesUnordered;
use http::{HeaderMap, HeaderValue, Method, StatusCode};
use paymongo_gateway::config::{Config, IdempotencyConfig, LoadContext};
use paymongo_gateway::idempotency::{
    self, ClaimOutcome, Decision, Fingerprint, IdempotencyStore, Identity, MemoryStore, OwnerId,
    Record, RecordKey, StoreError, StoredResponse,
};
use proptest::prelude::*;
use support::{Gate, GatewayProcess, Harness, Reply, Resp, WAIT, send};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio_util::task::TaskTracker;

const SK: &str = "sk_test_idempotencyKEY1";
const SK2: &str = "sk_test_idempotencyKEY2";
const PI: &str = "/v1/payment_intents";
const BODY: &str = r#"{"data":{"attributes":{"amount":2000,"currency":"PHP"}}}"#;

fn service(name: &str) -> String {
    let env = format!("SK_{}", name.to_uppercase());
    format!(
        "\n[[service]]\nname = \"{name}\"\nlisten = \"127.0.0.1:0\"\nsecret_key = {{ env = \"{env}\" }}\n"
    )
}

/// One `checkout` service plus `[idempotency]` settings.
fn config(idem: &str) -> String {
    format!("{}\n[idempotency]\n{idem}\n", service("checkout"))
}

const ENV: &[(&str, &str)] = &[("SK_CHECKOUT", SK), ("SK_BILLING", SK2)];

async fn post(addr: std::net::SocketAddr, path: &str, key: &str, body: &str) -> Resp {
    send(
        addr,
        "POST",
        path,
        &[
            ("content-type", "application/json"),
            ("idempotency-key", key),
        ],
        body,
    )
    .await
}

fn replayed(r: &Resp) -> bool {
    r.header("idempotent-replayed") == Some("true")
}

async fn metrics(g: &support::TestGateway) -> String {
    let m = send(g.admin().await, "GET", "/metrics", &[], "").await;
    String::from_utf8_lossy(&m.body).into_owned()
}

fn outcome(text: &str, outcome: &str) -> u64 {
    let needle = format!("paymongo_gateway_idempotency_total{{outcome=\"{outcome}\"}} ");
    text.lines()
        .find_map(|l| l.strip_prefix(&needle))
        .map_or(0, |v| v.trim().parse().unwrap())
}

#[tokio::test]
async fn same_key_twice_executes_once_and_replays_exactly() {
    let h = Harness::new().await;
    h.upstream.behave(|_, n| {
        Reply::Full(
            201,
            vec![
                (
                    "content-type".into(),
                    "application/json; charset=utf-8".into(),
                ),
                ("x-request-id".into(), format!("req_{n}")),
                ("set-cookie".into(), "__cf_bm=x".into()),
            ],
            Bytes::from(format!(
                r#"{{"data":{{"id":"pi_{n}","n":{n}}},"raw":"\u00e9\t"}}"#
            )),
        )
    });
    let g = h.gateway(&config(""), ENV).await;
    let addr = g.addr("checkout").await;

    let first = post(addr, PI, "order-1001", BODY).await;
    assert_eq!(first.status, 201, "{first:?}");
    assert!(!replayed(&first));
    let second = post(addr, PI, "order-1001", BODY).await;
    assert_eq!(h.upstream.count("POST", PI), 1, "one execution");
    assert_eq!(second.status, 201);
    assert!(replayed(&second), "{:?}", second.headers);
    assert_eq!(second.body, first.body, "body byte-for-byte");
    assert_eq!(
        second.header("content-type"),
        Some("application/json; charset=utf-8")
    );
    assert_eq!(second.header("x-request-id"), Some("req_1"));
    assert!(second.header("set-cookie").is_none());
    assert_eq!(second.headers.get_all("content-length").iter().count(), 1);
    assert_eq!(second.headers.get_all("date").iter().count(), 1);

    // The key went upstream unchanged.
    let seen = h.upstream.requests();
    assert_eq!(
        seen[0].headers.get("idempotency-key").unwrap(),
        "order-1001"
    );

    let m = metrics(&g).await;
    assert_eq!(outcome(&m, "miss"), 1, "{m}");
    assert_eq!(outcome(&m, "replay"), 1, "{m}");
}

#[tokio::test]
async fn same_key_with_another_body_is_422_and_not_forwarded() {
    let h = Harness::new().await;
    let g = h.gateway(&config(""), ENV).await;
    let addr = g.addr("checkout").await;
    assert_eq!(post(addr, PI, "k-reuse", BODY).await.status, 200);
    let r = post(
        addr,
        PI,
        "k-reuse",
        r#"{"data":{"attributes":{"amount":9999}}}"#,
    )
    .await;
    assert_eq!(r.status, 422);
    assert_eq!(r.error_code(), "idempotency_key_reused");
    // Another content type or query is another request too.
    let r = send(
        addr,
        "POST",
        PI,
        &[
            ("content-type", "text/plain"),
            ("idempotency-key", "k-reuse"),
        ],
        BODY,
    )
    .await;
    assert_eq!(r.status, 422);
    let r = post(addr, &format!("{PI}?expand=x"), "k-reuse", BODY).await;
    assert_eq!(r.status, 422);
    assert_eq!(h.upstream.count("POST", PI), 1, "still one execution");
    // The original request still replays.
    assert!(replayed(&post(addr, PI, "k-reuse", BODY).await));
}

#[tokio::test]
async fn another_body_while_in_flight_is_422_at_once() {
    let h = Harness::new().await;
    let gate = Gate::new();
    let g2 = gate.clone();
    h.upstream
        .behave(move |_, _| Reply::Hold(g2.clone(), Box::new(Reply::Json(200, "{}".into()))));
    let g = h.gateway(&config(""), ENV).await;
    let addr = g.addr("checkout").await;
    let owner = tokio::spawn(post(addr, PI, "k-fly", BODY));
    h.upstream.wait_for_requests(1).await;
    let r = post(addr, PI, "k-fly", "{}").await;
    assert_eq!(r.status, 422);
    assert_eq!(r.error_code(), "idempotency_key_reused");
    gate.open();
    assert_eq!(owner.await.unwrap().status, 200);
    assert_eq!(h.upstream.count("POST", PI), 1);
}

#[tokio::test]
async fn key_must_be_1_to_255_visible_ascii() {
    let h = Harness::new().await;
    let g = h.gateway(&config(""), ENV).await;
    let addr = g.addr("checkout").await;

    let ok = "k".repeat(255);
    assert_eq!(post(addr, PI, &ok, BODY).await.status, 200);
    assert_eq!(h.upstream.count("POST", PI), 1);

    for bad in [
        "k".repeat(256),
        String::new(),
        "has space".into(),
        "tab\there".into(),
    ] {
        let r = post(addr, PI, &bad, BODY).await;
        assert_eq!(r.status, 400, "{bad:?}");
        assert_eq!(r.error_code(), "idempotency_key_invalid");
    }
    // Repeated header: ambiguous.
    let r = send(
        addr,
        "POST",
        PI,
        &[("idempotency-key", "a"), ("idempotency-key", "b")],
        BODY,
    )
    .await;
    assert_eq!(r.status, 400);
    // Bytes beyond ASCII, written raw (the client helper takes &str).
    let mut s = tokio::net::TcpStream::connect(addr).await.unwrap();
    let mut req = b"POST /v1/payment_intents HTTP/1.1\r\nhost: x\r\ncontent-length: 2\r\nidempotency-key: caf\xc3\xa9\r\nconnection: close\r\n\r\n{}".to_vec();
    s.write_all(&req).await.unwrap();
    let mut out = Vec::new();
    tokio::time::timeout(WAIT, s.read_to_end(&mut out))
        .await
        .unwrap()
        .unwrap();
    let text = String::from_utf8_lossy(&out);
    assert!(text.starts_with("HTTP/1.1 400"), "{text}");
    assert!(text.contains("idempotency_key_invalid"), "{text}");
    req.clear();

    assert_eq!(
        h.upstream.count("POST", PI),
        1,
        "invalid keys are never forwarded"
    );
    let m = metrics(&g).await;
    assert_eq!(outcome(&m, "invalid"), 6, "{m}");
}

/// Starts `n` identical requests at once; yields each result as it lands.
fn fan_out(
    addr: std::net::SocketAddr,
    n: usize,
    key: &'static str,
) -> FuturesUnordered<tokio::task::JoinHandle<Resp>> {
    (0..n)
        .map(|_| tokio::spawn(post(addr, PI, key, BODY)))
        .collect()
}

#[tokio::test]
async fn fifty_concurrent_duplicates_wait_and_share_one_execution() {
    let h = Harness::new().await;
    let gate = Gate::new();
    let g2 = gate.clone();
    h.upstream.behave(move |_, n| {
        Reply::Hold(
            g2.clone(),
            Box::new(Reply::Json(200, format!(r#"{{"data":{{"n":{n}}}}}"#))),
        )
    });
    let g = h.gateway(&config(r#"in_flight = "wait""#), ENV).await;
    let addr = g.addr("checkout").await;

    let mut all = fan_out(addr, 50, "k-fifty");
    h.upstream.wait_for_requests(1).await;
    gate.open();
    let mut results = Vec::new();
    while let Some(r) = tokio::time::timeout(WAIT, all.next()).await.unwrap() {
        results.push(r.unwrap());
    }
    assert_eq!(results.len(), 50);
    assert_eq!(h.upstream.count("POST", PI), 1, "exactly one execution");
    for r in &results {
        assert_eq!(r.status, 200, "{r:?}");
        assert_eq!(&r.body[..], br#"{"data":{"n":1}}"#);
    }
    assert_eq!(results.iter().filter(|r| replayed(r)).count(), 49);
    let m = metrics(&g).await;
    assert_eq!(outcome(&m, "miss"), 1, "{m}");
    assert_eq!(outcome(&m, "wait") + outcome(&m, "replay"), 49, "{m}");
}

#[tokio::test]
async fn fifty_concurrent_duplicates_in_reject_mode_get_409() {
    let h = Harness::new().await;
    let gate = Gate::new();
    let g2 = gate.clone();
    h.upstream
        .behave(move |_, _| Reply::Hold(g2.clone(), Box::new(Reply::Json(200, "{}".into()))));
    let g = h.gateway(&config(r#"in_flight = "reject""#), ENV).await;
    let addr = g.addr("checkout").await;

    let mut all = fan_out(addr, 50, "k-reject");
    h.upstream.wait_for_requests(1).await;
    // The owner is held at the gate, so the first 49 answers are the losers'.
    for _ in 0..49 {
        let r = tokio::time::timeout(WAIT, all.next())
            .await
            .unwrap()
            .unwrap()
            .unwrap();
        assert_eq!(r.status, 409, "{r:?}");
        assert_eq!(r.error_code(), "idempotency_key_in_use");
    }
    gate.open();
    let owner = tokio::time::timeout(WAIT, all.next())
        .await
        .unwrap()
        .unwrap()
        .unwrap();
    assert_eq!(owner.status, 200);
    assert!(!replayed(&owner));
    assert_eq!(h.upstream.count("POST", PI), 1);
    let m = metrics(&g).await;
    assert_eq!(outcome(&m, "conflict"), 49, "{m}");
}

#[tokio::test]
async fn wait_timeout_answers_409_and_the_owner_still_finishes() {
    let h = Harness::new().await;
    let gate = Gate::new();
    let g2 = gate.clone();
    h.upstream
        .behave(move |_, _| Reply::Hold(g2.clone(), Box::new(Reply::Json(200, "{}".into()))));
    let g = h.gateway(&config(r#"wait_timeout = "100ms""#), ENV).await;
    let addr = g.addr("checkout").await;
    let owner = tokio::spawn(post(addr, PI, "k-slow", BODY));
    h.upstream.wait_for_requests(1).await;
    let r = post(addr, PI, "k-slow", BODY).await;
    assert_eq!(r.status, 409);
    assert_eq!(r.error_code(), "idempotency_key_in_use");
    gate.open();
    assert_eq!(owner.await.unwrap().status, 200);
    assert!(replayed(&post(addr, PI, "k-slow", BODY).await));
    assert_eq!(h.upstream.count("POST", PI), 1);
}

#[tokio::test]
async fn client_hang_up_does_not_cancel_the_call_and_the_retry_replays() {
    let h = Harness::new().await;
    let gate = Gate::new();
    let g2 = gate.clone();
    h.upstream.behave(move |_, n| {
        Reply::Hold(
            g2.clone(),
            Box::new(Reply::Json(201, format!(r#"{{"data":{{"id":"pi_{n}"}}}}"#))),
        )
    });
    let g = h.gateway(&config(""), ENV).await;
    let addr = g.addr("checkout").await;

    let mut s = tokio::net::TcpStream::connect(addr).await.unwrap();
    let req = format!(
        "POST {PI} HTTP/1.1\r\nhost: x\r\ncontent-type: application/json\r\nidempotency-key: k-hangup\r\ncontent-length: {}\r\n\r\n{BODY}",
        BODY.len()
    );
    s.write_all(req.as_bytes()).await.unwrap();
    h.upstream.wait_for_requests(1).await;
    // Hang up. The gateway notices the end of input mid-request, drops the
    // request and closes: reading EOF proves it gave up on this client.
    s.shutdown().await.unwrap();
    let mut rest = Vec::new();
    tokio::time::timeout(WAIT, s.read_to_end(&mut rest))
        .await
        .unwrap()
        .unwrap();
    assert!(
        rest.is_empty(),
        "no response may reach a client that hung up: {:?}",
        String::from_utf8_lossy(&rest)
    );
    drop(s);

    // PayMongo answers only now; the detached call stores it. The retry
    // either waits for it or finds it stored.
    gate.open();
    let retry = post(addr, PI, "k-hangup", BODY).await;
    assert_eq!(retry.status, 201, "{retry:?}");
    assert!(replayed(&retry));
    assert_eq!(&retry.body[..], br#"{"data":{"id":"pi_1"}}"#);
    assert_eq!(
        h.upstream.count("POST", PI),
        1,
        "the retry must not charge twice"
    );
}

#[tokio::test]
async fn transient_upstream_answers_are_not_stored() {
    let h = Harness::new().await;
    h.upstream.behave(|s, n| {
        let status = s.path.rsplit('/').next().unwrap().parse().unwrap();
        Reply::Json(status, format!(r#"{{"n":{n}}}"#))
    });
    let g = h.gateway(&config(""), ENV).await;
    let addr = g.addr("checkout").await;
    for status in [500u16, 503, 429, 409, 408] {
        let path = format!("/v1/status/{status}");
        let a = post(addr, &path, "k-transient", BODY).await;
        let b = post(addr, &path, "k-transient", BODY).await;
        assert_eq!((a.status.as_u16(), b.status.as_u16()), (status, status));
        assert!(!replayed(&b), "{status} must not be replayed");
        assert_eq!(
            h.upstream.count("POST", &path),
            2,
            "{status}: a retry executes again"
        );
    }
    for status in [400u16, 404, 402, 422] {
        let path = format!("/v1/status/{status}");
        let a = post(addr, &path, "k-final", BODY).await;
        let b = post(addr, &path, "k-final", BODY).await;
        assert_eq!((a.status.as_u16(), b.status.as_u16()), (status, status));
        assert!(
            replayed(&b),
            "{status} is PayMongo's final answer: replayed"
        );
        assert_eq!(b.body, a.body);
        assert_eq!(h.upstream.count("POST", &path), 1, "{status}");
    }
}

#[tokio::test]
async fn gateway_made_502_and_504_are_not_stored() {
    let h = Harness::new().await;
    let gate = Gate::new();
    let g2 = gate.clone();
    h.upstream.behave(move |s, n| match (s.path.as_str(), n) {
        ("/v1/reset", 1) => Reply::Reset,
        ("/v1/slow", 1) => Reply::Hold(g2.clone(), Box::new(Reply::Json(200, "{}".into()))),
        _ => Reply::Json(200, format!(r#"{{"n":{n}}}"#)),
    });
    let cfg = h
        .config(&config(""))
        .replace("timeout = \"5s\"", "timeout = \"300ms\"");
    let g = support::start_gateway(&cfg, h.dir.path(), ENV).await;
    let addr = g.addr("checkout").await;

    let r = post(addr, "/v1/reset", "k-gw", BODY).await;
    assert_eq!(r.status, 502);
    assert_eq!(r.error_code(), "upstream_unavailable");
    let r = post(addr, "/v1/reset", "k-gw", BODY).await;
    assert_eq!(
        r.status, 200,
        "a retry after a gateway-made 502 is forwarded again"
    );
    assert_eq!(&r.body[..], br#"{"n":2}"#);

    let r = post(addr, "/v1/slow", "k-gw", BODY).await;
    assert_eq!(r.status, 504);
    assert_eq!(r.error_code(), "upstream_timeout");
    let r = post(addr, "/v1/slow", "k-gw", BODY).await;
    assert_eq!(
        r.status, 200,
        "a retry after a gateway-made 504 is forwarded again"
    );
    assert!(!replayed(&r));
    assert!(replayed(&post(addr, "/v1/slow", "k-gw", BODY).await));
    assert_eq!(h.upstream.count("POST", "/v1/reset"), 2);
    assert_eq!(h.upstream.count("POST", "/v1/slow"), 2);
    gate.open();
}

#[tokio::test]
async fn responses_over_max_response_pass_through_unstored() {
    let h = Harness::new().await;
    let big = Bytes::from(format!("{{\"pad\":\"{}\"}}", "x".repeat(3000)));
    let b2 = big.clone();
    h.upstream.behave(move |s, _| match s.path.as_str() {
        // Declared length over the limit.
        "/v1/declared" => Reply::Full(
            200,
            vec![("content-type".into(), "application/json".into())],
            b2.clone(),
        ),
        // No declared length: found out while buffering.
        _ => Reply::Chunked(200, b2.chunks(700).map(Bytes::copy_from_slice).collect()),
    });
    let g = h.gateway(&config(r#"max_response = "1KiB""#), ENV).await;
    let addr = g.addr("checkout").await;
    for path in ["/v1/declared", "/v1/chunked"] {
        let a = post(addr, path, "k-big", BODY).await;
        assert_eq!(a.status, 200);
        assert_eq!(a.body, big, "{path}: passed through whole");
        let b = post(addr, path, "k-big", BODY).await;
        assert_eq!(b.body, big);
        assert!(!replayed(&b));
        assert_eq!(h.upstream.count("POST", path), 2, "{path}: not stored");
    }
}

#[tokio::test]
async fn scope_is_service_method_and_path_and_reads_are_never_deduplicated() {
    let h = Harness::new().await;
    let services = format!(
        "{}{}\n[idempotency]\nmethods = [\"POST\", \"PUT\"]\n",
        service("checkout"),
        service("billing")
    );
    let g = h.gateway(&services, ENV).await;
    let (a, b) = (g.addr("checkout").await, g.addr("billing").await);
    let hdr = [
        ("content-type", "application/json"),
        ("idempotency-key", "k-scope"),
    ];

    assert!(!replayed(&send(a, "POST", "/v1/x", &hdr, BODY).await));
    assert!(
        !replayed(&send(a, "POST", "/v1/y", &hdr, BODY).await),
        "other path"
    );
    assert!(
        !replayed(&send(a, "PUT", "/v1/x", &hdr, BODY).await),
        "other method"
    );
    assert!(
        !replayed(&send(b, "POST", "/v1/x", &hdr, BODY).await),
        "other service"
    );
    assert_eq!(h.upstream.count("POST", "/v1/x"), 2);
    assert_eq!(h.upstream.count("POST", "/v1/y"), 1);
    assert_eq!(h.upstream.count("PUT", "/v1/x"), 1);
    // Each scope replays on its own.
    assert!(replayed(&send(a, "PUT", "/v1/x", &hdr, BODY).await));
    assert!(replayed(&send(b, "POST", "/v1/x", &hdr, BODY).await));

    // Reads are never deduplicated, header or not; the header still goes up.
    for _ in 0..2 {
        let r = send(a, "GET", "/v1/x", &[("idempotency-key", "k-scope")], "").await;
        assert!(!replayed(&r));
    }
    assert_eq!(h.upstream.count("GET", "/v1/x"), 2);
    // Methods outside the list, and requests without a key, pass through.
    for _ in 0..2 {
        assert!(!replayed(&send(a, "DELETE", "/v1/z", &hdr, "").await));
        assert!(!replayed(&send(a, "POST", "/v1/z", &[], BODY).await));
    }
    assert_eq!(h.upstream.count("DELETE", "/v1/z"), 2);
    assert_eq!(h.upstream.count("POST", "/v1/z"), 2);
    let seen = h.upstream.requests();
    assert!(
        seen.iter()
            .filter(|s| s.method == Method::GET)
            .all(|s| s.headers["idempotency-key"] == "k-scope")
    );
}

#[tokio::test]
async fn records_expire_after_ttl() {
    let h = Harness::new().await;
    // Long enough that two requests fit in it on a loaded 2-core machine.
    let g = h.gateway(&config(r#"ttl = "2s""#), ENV).await;
    let addr = g.addr("checkout").await;
    post(addr, PI, "k-ttl", BODY).await;
    assert!(replayed(&post(addr, PI, "k-ttl", BODY).await));
    assert_eq!(h.upstream.count("POST", PI), 1);
    // Time itself is under test here: step just past the ttl.
    tokio::time::sleep(Duration::from_millis(2050)).await;
    let r = post(addr, PI, "k-ttl", BODY).await;
    assert!(!replayed(&r), "expired records are not replayed");
    assert_eq!(h.upstream.count("POST", PI), 2);
}

/// The request log says which answers were replays and never prints a
/// whole key. Runs the real binary to read what it prints.
#[tokio::test]
async fn log_line_reports_replays_and_abbreviates_keys() {
    let h = Harness::new().await;
    let cfg_path = h.dir.path().join("gateway.toml");
    std::fs::write(&cfg_path, h.config(&config(""))).unwrap();
    let mut p = GatewayProcess::spawn(
        &["--config", cfg_path.to_str().unwrap()],
        &[("SK_CHECKOUT", SK)],
    );
    let addr = p.listening("service checkout").await;
    let key = "order-7f3a9c2e-secret-tail-4b1d";
    post(addr, PI, key, BODY).await;
    assert!(replayed(&post(addr, PI, key, BODY).await));
    let is_request = |l: &str, replay: bool| {
        serde_json::from_str::<serde_json::Value>(l)
            .is_ok_and(|v| v["message"] == "request" && v["replay"] == replay)
    };
    let first = p.wait_for_line(|l| is_request(l, false)).await;
    let second = p.wait_for_line(|l| is_request(l, true)).await;
    let v: serde_json::Value = serde_json::from_str(&second).unwrap();
    assert_eq!(v["idempotency_key"], "order-…", "{second}");
    assert!(first.contains("\"status\":200"), "{first}");
    p.signal("TERM");
    p.wait_exit().await;
    assert!(
        !p.output().contains("secret-tail"),
        "a whole key was logged:\n{}",
        p.output()
    );
}

// ---- store and semantics level ----------------------------------------

fn idem_config(extra: &str) -> IdempotencyConfig {
    let text = format!(
        "mode = \"test\"\n{}\n[idempotency]\n{extra}\n",
        service("checkout")
    );
    let env = |_: &str| Some(SK.to_owned());
    let ctx = LoadContext {
        base_dir: ".".into(),
        env: &env,
    };
    Config::parse(&text, &ctx).unwrap().idempotency
}

fn identity(n: u32) -> Identity {
    let hv = HeaderValue::from_str(&format!("key-{n}")).unwrap();
    Identity {
        key: idempotency::record_key(
            paymongo_gateway::config::Mode::Test,
            "checkout",
            &Method::POST,
            PI,
            idempotency::Key::parse(&hv).unwrap(),
        ),
        fingerprint: idempotency::fingerprint(Some(b"application/json"), None, BODY.as_bytes()),
    }
}

fn ok_response(n: usize) -> StoredResponse {
    let mut h = HeaderMap::new();
    h.insert("content-type", HeaderValue::from_static("application/json"));
    StoredResponse::capture(
        StatusCode::OK,
        &h,
        format!(r#"{{"execution":{n}}}"#).as_bytes(),
    )
}

#[tokio::test]
async fn byte_bound_evicts_oldest_and_stays_bounded() {
    let max = 256 * 1024;
    let store = MemoryStore::new(max);
    let fp = Fingerprint([7; 32]);
    let body = vec![b'x'; 600];
    let n = 2_000u32;
    for i in 0..n {
        let key = identity(i).key;
        let owner = OwnerId::new();
        assert!(matches!(
            store
                .claim(&key, &fp, owner, Duration::from_secs(60))
                .await
                .unwrap(),
            ClaimOutcome::Claimed
        ));
        let response = StoredResponse::capture(StatusCode::OK, &HeaderMap::new(), &body);
        let record = Record {
            fingerprint: fp,
            response,
        };
        assert!(
            store
                .complete(&key, owner, record, Duration::from_secs(3600))
                .await
                .unwrap()
        );
        if i % 250 == 0 {
            store.sync().await;
            let budget = idempotency::memory::record_budget(max);
            assert!(
                store.weighted_bytes() <= budget,
                "over the bound after {i} records"
            );
        }
    }
    store.sync().await;
    let kept = store.records();
    // Records fill at most the record budget (2/3 of max_memory)...
    let budget = idempotency::memory::record_budget(max);
    assert!(
        store.weighted_bytes() <= budget,
        "{} > {budget}",
        store.weighted_bytes()
    );
    assert!(kept > 0 && kept < u64::from(n), "kept {kept} of {n}");
    // ...and do fill it: ~1.2 KiB is charged per record.
    assert!(
        kept * 1300 > budget,
        "the bound is far stricter than it should be: {kept}"
    );
    let newest = store
        .claim(
            &identity(n - 1).key,
            &fp,
            OwnerId::new(),
            Duration::from_secs(60),
        )
        .await;
    assert!(
        matches!(newest.unwrap(), ClaimOutcome::Completed(_)),
        "the newest record is kept"
    );
    let oldest = store
        .claim(
            &identity(0).key,
            &fp,
            OwnerId::new(),
            Duration::from_secs(60),
        )
        .await;
    assert!(
        matches!(oldest.unwrap(), ClaimOutcome::Claimed),
        "the oldest record was evicted"
    );
}

/// A store that always fails, to drive `on_store_error`.
struct Broken;

#[async_trait]
impl IdempotencyStore for Broken {
    fn kind(&self) -> &'static str {
        "broken"
    }
    async fn claim(
        &self,
        _: &RecordKey,
        _: &Fingerprint,
        _: OwnerId,
        _: Duration,
    ) -> Result<ClaimOutcome, StoreError> {
        Err(StoreError::Unavailable("down".into()))
    }
    async fn complete(
        &self,
        _: &RecordKey,
        _: OwnerId,
        _: Record,
        _: Duration,
    ) -> Result<bool, StoreError> {
        Err(StoreError::Unavailable("down".into()))
    }
    async fn release(&self, _: &RecordKey, _: OwnerId) -> Result<bool, StoreError> {
        Err(StoreError::Unavailable("down".into()))
    }
    async fn ping(&self) -> Result<(), StoreError> {
        Err(StoreError::Unavailable("down".into()))
    }
}

#[tokio::test]
async fn store_errors_forward_or_reject_per_config() {
    let store: Arc<dyn IdempotencyStore> = Arc::new(Broken);
    let tasks = TaskTracker::new();
    let forward = idempotency::decide(&store, &tasks, &idem_config(""), identity(1)).await;
    assert!(matches!(forward, Ok(Decision::Bypass(_))), "{forward:?}");
    let reject = idempotency::decide(
        &store,
        &tasks,
        &idem_config(r#"on_store_error = "reject""#),
        identity(1),
    )
    .await;
    let err = reject.unwrap_err();
    assert!(matches!(err, idempotency::Error::Store(_)));
    let api = paymongo_gateway::error::ApiError::from(&err);
    assert_eq!(api.status(), 503);
    assert_eq!(api.code.as_str(), "idempotency_store_unavailable");
}

#[tokio::test]
async fn a_dropped_owner_releases_its_claim() {
    let store: Arc<dyn IdempotencyStore> = Arc::new(MemoryStore::new(1 << 20));
    let tasks = TaskTracker::new();
    let cfg = idem_config("");
    let Ok(Decision::Execute(guard)) = idempotency::decide(&store, &tasks, &cfg, identity(9)).await
    else {
        panic!("expected to own the key");
    };
    // A duplicate waits on the claim...
    let waiter = {
        let (store, tasks, cfg) = (store.clone(), tasks.clone(), cfg.clone());
        tokio::spawn(async move { idempotency::decide(&store, &tasks, &cfg, identity(9)).await })
    };
    // ...and the owner vanishes without finishing (a panic or a dropped future).
    drop(guard);
    // The guard's release wakes the waiter, which now owns the key, long
    // before the 60 s lease.
    let next = tokio::time::timeout(WAIT, waiter).await.unwrap().unwrap();
    assert!(matches!(next, Ok(Decision::Execute(_))), "{next:?}");
}

/// Plays N duplicate requests through `decide` on one runtime thread. Each
/// yields `delays[i]` times before starting and, if it executes, `work[i]`
/// times while "upstream"; the first `failures` executions are released
/// (like a 5xx), the rest stored. Returns (executions, max concurrent
/// executions, replayed bodies).
fn play(
    delays: Vec<u8>,
    work: Vec<u8>,
    failures: usize,
    parallel: bool,
) -> (usize, usize, Vec<Bytes>) {
    let rt = if parallel {
        tokio::runtime::Builder::new_multi_thread()
            .worker_threads(2)
            .enable_all()
            .build()
            .unwrap()
    } else {
        tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
            .unwrap()
    };
    rt.block_on(async move {
        let store: Arc<dyn IdempotencyStore> = Arc::new(MemoryStore::new(1 << 20));
        let tasks = TaskTracker::new();
        let cfg = idem_config("");
        let executions = Arc::new(AtomicUsize::new(0));
        let active = Arc::new(AtomicUsize::new(0));
        let max_active = Arc::new(AtomicUsize::new(0));
        let mut handles = Vec::new();
        for (i, d) in delays.iter().enumerate() {
            let (store, tasks, cfg) = (store.clone(), tasks.clone(), cfg.clone());
            let (executions, active, max_active) =
                (executions.clone(), active.clone(), max_active.clone());
            let (d, w) = (*d, work[i % work.len()]);
            handles.push(tokio::spawn(async move {
                for _ in 0..d {
                    tokio::task::yield_now().await;
                }
                match idempotency::decide(&store, &tasks, &cfg, identity(0))
                    .await
                    .unwrap()
                {
                    Decision::Execute(guard) => {
                        let nth = executions.fetch_add(1, Ordering::SeqCst);
                        let now = active.fetch_add(1, Ordering::SeqCst) + 1;
                        max_active.fetch_max(now, Ordering::SeqCst);
                        for _ in 0..w {
                            tokio::task::yield_now().await;
                        }
                        active.fetch_sub(1, Ordering::SeqCst);
                        if nth < failures {
                            guard.release().await.unwrap();
                            None
                        } else {
                            let r = ok_response(nth);
                            guard
                                .complete(r.clone(), Duration::from_secs(60))
                                .await
                                .unwrap();
                            Some(r.body)
                        }
                    }
                    Decision::Replay { record, .. } => Some(record.response.body.clone()),
                    Decision::Bypass(e) => panic!("memory store failed: {e}"),
                }
            }));
        }
        let mut bodies = Vec::new();
        for h in handles {
            if let Some(b) = h.await.unwrap() {
                bodies.push(b);
            }
        }
        (
            executions.load(Ordering::SeqCst),
            max_active.load(Ordering::SeqCst),
            bodies,
        )
    })
}

proptest! {
    #![proptest_config(ProptestConfig { cases: 128, ..ProptestConfig::default() })]

    /// Any interleaving of N duplicates: one execution, one answer for all.
    #[test]
    fn duplicates_execute_exactly_once(
        delays in proptest::collection::vec(0u8..16, 2..16),
        work in proptest::collection::vec(0u8..16, 1..8),
        parallel in any::<bool>(),
    ) {
        let n = delays.len();
        let (executions, max_active, bodies) = play(delays, work, 0, parallel);
        prop_assert_eq!(executions, 1);
        prop_assert_eq!(max_active, 1);
        prop_assert_eq!(bodies.len(), n);
        prop_assert!(bodies.iter().all(|b| b == &bodies[0]));
    }

    /// When executions fail (released, like a 5xx), waiters take over one
    /// at a time: never two executions at once, and exactly one more
    /// execution than failures (or every request, if all fail).
    #[test]
    fn released_claims_pass_to_exactly_one_waiter(
        delays in proptest::collection::vec(0u8..16, 2..12),
        work in proptest::collection::vec(0u8..16, 1..8),
        failures in 0usize..4,
        parallel in any::<bool>(),
    ) {
        let n = delays.len();
        let (executions, max_active, bodies) = play(delays, work, failures, parallel);
        prop_assert_eq!(executions, (failures + 1).min(n));
        prop_assert_eq!(max_active, 1);
        prop_assert_eq!(bodies.len(), n - failures.min(n));
        prop_assert!(bodies.iter().all(|b| b == &bodies[0]));
    }
}

//! Several replicas sharing one real Redis: idempotency across replicas,
//! webhook dedupe across replicas, Redis outages (a private redis-server
//! this test stops and restarts), lease expiry after a `kill -9`, TLS to
//! Redis, and the Redis password staying out of every output.
//!
//! Needs Redis: see `support::redis_server` (CI provides it and makes a
//! missing Redis a failure; elsewhere these tests skip with a message).
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

mod support;

use std::net::SocketAddr;
use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::{Duration, Instant};

use futures_util::StreamExt;
use futures_util::stream::FuturesUnordered;
use http::{HeaderMap, HeaderValue, Method, StatusCode};
use paymongo_gateway::config::{Config, IdempotencyConfig, LoadContext};
use paymongo_gateway::idempotency::{
    self, ClaimOutcome, Decision, Fingerprint, IdempotencyStore, Identity, OwnerId, Record,
    RedisStore, StoredResponse,
};
use paymongo_gateway::metrics::StoreErrors;
use paymongo_gateway::redis_backend::RedisBackend;
use support::redis_server::{
    RedisServer, TlsFiles, connect, eventually, server_binary, shared_url, unique,
};
use support::webhook::{self as wh, PATH, SECRET};
use support::{Gate, GatewayProcess, Harness, Inward, InwardReply, Reply, Resp, WAIT, send};
use tokio_util::task::TaskTracker;

const SK: &str = "sk_test_replicasKEY1";
const PI: &str = "/v1/payment_intents";
const BODY: &str = r#"{"data":{"attributes":{"amount":2000,"currency":"PHP"}}}"#;

/// One `checkout` service and `[idempotency]` on the Redis at `$REDIS_URL`.
fn config(idem: &str) -> String {
    format!(
        r#"
[[service]]
name = "checkout"
listen = "127.0.0.1:0"
secret_key = {{ env = "SK_CHECKOUT" }}

[idempotency]
store = "redis"
redis_url = {{ env = "REDIS_URL" }}
redis_timeout = "500ms"
{idem}
"#
    )
}

fn env(url: &str) -> Vec<(&'static str, String)> {
    vec![
        ("SK_CHECKOUT", SK.to_owned()),
        ("REDIS_URL", url.to_owned()),
    ]
}

/// A replica from `services` appended to the harness's base config.
async fn replica(h: &Harness, services: &str, url: &str) -> support::TestGateway {
    replica_from(h, &h.config(services), url).await
}

/// A replica from a whole config text.
async fn replica_from(h: &Harness, full: &str, url: &str) -> support::TestGateway {
    let env = env(url);
    let env: Vec<(&str, &str)> = env.iter().map(|(k, v)| (*k, v.as_str())).collect();
    support::start_gateway(full, h.dir.path(), &env).await
}

/// The harness config with `[admin] probe_interval` short enough that every
/// `/readyz` probes again (readiness is what these tests look at).
fn fresh_probes(cfg: String) -> String {
    cfg.replace(
        "[admin]\nlisten = \"127.0.0.1:0\"",
        "[admin]\nlisten = \"127.0.0.1:0\"\nprobe_interval = \"1ms\"",
    )
}

async fn post(addr: SocketAddr, key: String, body: &'static str) -> Resp {
    send(
        addr,
        "POST",
        PI,
        &[
            ("content-type", "application/json"),
            ("idempotency-key", &key),
        ],
        body,
    )
    .await
}

fn replayed(r: &Resp) -> bool {
    r.header("idempotent-replayed") == Some("true")
}

async fn metrics(addr: SocketAddr) -> String {
    let m = send(addr, "GET", "/metrics", &[], "").await;
    String::from_utf8_lossy(&m.body).into_owned()
}

/// The value of the first metric line starting with `prefix`, 0 if absent.
fn metric(text: &str, prefix: &str) -> u64 {
    text.lines()
        .find_map(|l| l.strip_prefix(prefix))
        .map_or(0, |v| v.trim().parse().unwrap())
}

fn outcome(text: &str, outcome: &str) -> u64 {
    metric(
        text,
        &format!("paymongo_gateway_idempotency_total{{outcome=\"{outcome}\"}} "),
    )
}

fn store_errors(text: &str, store: &str, op: &str) -> u64 {
    metric(
        text,
        &format!("paymongo_gateway_store_errors_total{{store=\"{store}\",op=\"{op}\"}} "),
    )
}

async fn readyz(admin: SocketAddr) -> Resp {
    send(admin, "GET", "/readyz", &[], "").await
}

/// Every upstream answer waits for `gate`, then is `status` with the
/// per-path execution count in the body.
fn hold_all(h: &Harness, gate: &Gate, status: u16) {
    let gate = gate.clone();
    h.upstream.behave(move |_, n| {
        Reply::Hold(
            gate.clone(),
            Box::new(Reply::Json(status, format!(r#"{{"data":{{"n":{n}}}}}"#))),
        )
    });
}

// ---- two replicas, one Redis ---------------------------------------------

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn fifty_duplicates_across_two_replicas_execute_once_and_all_get_the_answer() {
    let Some(url) = shared_url("fifty_duplicates_across_two_replicas") else {
        return;
    };
    let h = Harness::new().await;
    let gate = Gate::new();
    hold_all(&h, &gate, 201);
    let cfg = config("in_flight = \"wait\"");
    let (a, b) = (replica(&h, &cfg, &url).await, replica(&h, &cfg, &url).await);
    let addrs = [a.addr("checkout").await, b.addr("checkout").await];
    let key = unique("k-fifty-");

    let mut all: FuturesUnordered<_> = (0..50)
        .map(|i| tokio::spawn(post(addrs[i % 2], key.clone(), BODY)))
        .collect();
    // One of them is now at PayMongo; everyone else waits on its claim.
    h.upstream.wait_for_requests(1).await;
    gate.open();
    let mut results = Vec::new();
    while let Some(r) = tokio::time::timeout(WAIT, all.next()).await.unwrap() {
        results.push(r.unwrap());
    }
    assert_eq!(h.upstream.count("POST", PI), 1, "exactly one execution");
    assert_eq!(results.len(), 50);
    for r in &results {
        assert_eq!(r.status, 201, "{r:?}");
        assert_eq!(&r.body[..], br#"{"data":{"n":1}}"#);
    }
    assert_eq!(results.iter().filter(|r| replayed(r)).count(), 49);
    let (ma, mb) = (
        metrics(a.admin().await).await,
        metrics(b.admin().await).await,
    );
    assert_eq!(outcome(&ma, "miss") + outcome(&mb, "miss"), 1, "{ma}\n{mb}");
    let answered = ["wait", "replay"]
        .iter()
        .map(|o| outcome(&ma, o) + outcome(&mb, o))
        .sum::<u64>();
    assert_eq!(answered, 49);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn fifty_duplicates_across_two_replicas_in_reject_mode_get_409() {
    let Some(url) = shared_url("fifty_duplicates_reject_mode") else {
        return;
    };
    let h = Harness::new().await;
    let gate = Gate::new();
    hold_all(&h, &gate, 200);
    let cfg = config("in_flight = \"reject\"");
    let (a, b) = (replica(&h, &cfg, &url).await, replica(&h, &cfg, &url).await);
    let addrs = [a.addr("checkout").await, b.addr("checkout").await];
    let key = unique("k-reject-");

    let mut all: FuturesUnordered<_> = (0..50)
        .map(|i| tokio::spawn(post(addrs[i % 2], key.clone(), BODY)))
        .collect();
    h.upstream.wait_for_requests(1).await;
    // The owner is held at the gate, so the first 49 answers are the others'.
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
    let (ma, mb) = (
        metrics(a.admin().await).await,
        metrics(b.admin().await).await,
    );
    assert_eq!(outcome(&ma, "conflict") + outcome(&mb, "conflict"), 49);
}

#[tokio::test]
async fn the_other_replica_replays_and_a_changed_body_is_422_on_both() {
    let Some(url) = shared_url("the_other_replica_replays") else {
        return;
    };
    let h = Harness::new().await;
    let gate = Gate::new();
    hold_all(&h, &gate, 201);
    let cfg = config("ttl = \"1h\"");
    let (a, b) = (replica(&h, &cfg, &url).await, replica(&h, &cfg, &url).await);
    let (aa, ba) = (a.addr("checkout").await, b.addr("checkout").await);
    let key = unique("order-secret-tail-");
    let other = r#"{"data":{"attributes":{"amount":9999}}}"#;

    let first = tokio::spawn(post(aa, key.clone(), BODY));
    h.upstream.wait_for_requests(1).await;
    // In flight on A: another body on B is refused at once, nothing forwarded.
    let r = post(ba, key.clone(), other).await;
    assert_eq!(r.status, 422, "{r:?}");
    assert_eq!(r.error_code(), "idempotency_key_reused");
    gate.open();
    let first = first.await.unwrap();
    assert_eq!(first.status, 201);
    assert!(!replayed(&first));

    // B never executed it; it replays what A stored, byte for byte.
    let again = post(ba, key.clone(), BODY).await;
    assert_eq!(again.status, 201);
    assert!(replayed(&again), "{again:?}");
    assert_eq!(again.body, first.body);
    assert_eq!(
        again.header("content-type"),
        Some("application/json"),
        "stored headers come back"
    );
    for addr in [aa, ba] {
        let r = post(addr, key.clone(), other).await;
        assert_eq!(r.status, 422);
        assert_eq!(r.error_code(), "idempotency_key_reused");
    }
    assert_eq!(h.upstream.count("POST", PI), 1);

    // What Redis holds: a record under pmgw:idem:<sha-256 hex>, with the
    // configured ttl, and no trace of the raw key.
    let hv = HeaderValue::from_str(&key).unwrap();
    let rk = idempotency::record_key(
        paymongo_gateway::config::Mode::Test,
        "checkout",
        &Method::POST,
        PI,
        idempotency::Key::parse(&hv).unwrap(),
    );
    let rkey = idempotency::redis::redis_key(&rk);
    assert!(rkey.starts_with("pmgw:idem:") && !rkey.contains(&key));
    let mut c = connect(&url).await;
    let value: Vec<u8> = redis::cmd("GET")
        .arg(&rkey)
        .query_async(&mut c)
        .await
        .unwrap();
    assert_eq!(&value[..2], b"R\x01", "a version-1 record");
    assert!(
        value.ends_with(&first.body),
        "body stored as is, at the end"
    );
    assert!(
        !value.windows(key.len()).any(|w| w == key.as_bytes()),
        "the raw idempotency key is not stored"
    );
    let pttl: i64 = redis::cmd("PTTL")
        .arg(&rkey)
        .query_async(&mut c)
        .await
        .unwrap();
    assert!(
        pttl > 3_500_000 && pttl <= 3_600_000,
        "ttl from config: {pttl}"
    );
}

/// A replica dies (`kill -9`) while PayMongo holds its request: its claim
/// blocks the key until the lease runs out, then exactly one retry runs.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn owner_killed_mid_flight_blocks_until_the_lease_expires_then_one_retry_executes() {
    let Some(url) = shared_url("owner_killed_mid_flight") else {
        return;
    };
    let h = Harness::new().await;
    let gate = Gate::new();
    let g = gate.clone();
    h.upstream.behave(move |_, n| {
        let reply = Reply::Json(201, format!(r#"{{"data":{{"n":{n}}}}}"#));
        if n == 1 {
            Reply::Hold(g.clone(), Box::new(reply))
        } else {
            reply
        }
    });
    let lease = Duration::from_secs(3);
    let cfg = h
        .config(&config(
            "lease = \"3s\"\nwait_timeout = \"20s\"\nin_flight = \"wait\"",
        ))
        .replace("timeout = \"5s\"", "timeout = \"1s\"");
    let path = h.dir.path().join("gateway.toml");
    std::fs::write(&path, &cfg).unwrap();
    let mut p = GatewayProcess::spawn(
        &["--no-watch", "--config", path.to_str().unwrap()],
        &[("SK_CHECKOUT", SK), ("REDIS_URL", &url)],
    );
    let pa = p.listening("service checkout").await;
    let key = unique("k-killed-");
    // The other replicas are up before the clock starts: a reject-mode one
    // and a wait-mode one.
    let reject = h
        .config(&config("lease = \"3s\"\nin_flight = \"reject\""))
        .replace("timeout = \"5s\"", "timeout = \"1s\"");
    let b = replica_from(&h, &reject, &url).await;
    let c = replica_from(&h, &cfg, &url).await;
    let (ba, ca) = (b.addr("checkout").await, c.addr("checkout").await);

    let started = Instant::now();
    let k = key.clone();
    let doomed = tokio::spawn(async move {
        support::client::try_send(
            pa,
            "POST",
            PI,
            &[
                ("content-type", "application/json"),
                ("idempotency-key", &k),
            ],
            BODY,
        )
        .await
    });
    h.upstream.wait_for_requests(1).await;
    p.signal("KILL");
    p.wait_exit().await;
    assert!(doomed.await.unwrap().is_err(), "the caller lost its answer");

    // The orphaned claim still holds the key: a reject-mode replica says so.
    let r = post(ba, key.clone(), BODY).await;
    assert_eq!(r.status, 409, "{r:?}");
    assert!(started.elapsed() < lease, "the test itself was too slow");

    // Retries on a wait-mode replica wait the lease out; one executes.
    let mut retries: FuturesUnordered<_> = (0..5)
        .map(|_| tokio::spawn(post(ca, key.clone(), BODY)))
        .collect();
    let mut results = Vec::new();
    while let Some(r) = tokio::time::timeout(WAIT, retries.next()).await.unwrap() {
        results.push(r.unwrap());
    }
    assert!(
        started.elapsed() >= lease,
        "a retry ran before the dead owner's lease ended: {:?}",
        started.elapsed()
    );
    assert_eq!(
        h.upstream.count("POST", PI),
        2,
        "the lost call and one retry"
    );
    for r in &results {
        assert_eq!(r.status, 201, "{r:?}");
        assert_eq!(&r.body[..], br#"{"data":{"n":2}}"#);
    }
    assert_eq!(results.iter().filter(|r| !replayed(r)).count(), 1);
    gate.open();
}

// ---- Redis outages --------------------------------------------------------

/// Redis goes away and comes back (a private server, same port): `forward`
/// keeps proxying with the key, `reject` answers 503, readiness and metrics
/// say so, and dedupe resumes on its own once Redis is back.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn redis_outage_forward_proxies_reject_refuses_and_dedupe_resumes() {
    let Some(bin) = server_binary("redis_outage") else {
        return;
    };
    let mut redis = RedisServer::start(&bin).await;
    let url = redis.url();
    let h = Harness::new().await;
    let forward = fresh_probes(h.config(&config("on_store_error = \"forward\"")));
    let reject = fresh_probes(h.config(&config("on_store_error = \"reject\"")));
    let f = replica_from(&h, &forward, &url).await;
    let r = replica_from(&h, &reject, &url).await;
    let (fa, ra) = (f.addr("checkout").await, r.addr("checkout").await);
    let (fadmin, radmin) = (f.admin().await, r.admin().await);

    // Healthy: dedupe works on both.
    for addr in [fa, ra] {
        let k = unique("k-up-");
        post(addr, k.clone(), BODY).await;
        assert!(replayed(&post(addr, k, BODY).await));
    }
    let ready = readyz(fadmin).await;
    assert_eq!(ready.status, 200, "{:?}", ready.json());
    let before = h.upstream.total();

    redis.stop().await;

    // forward: proxied, twice (no dedupe), each time with the key.
    let k = unique("k-down-");
    for _ in 0..2 {
        let resp = post(fa, k.clone(), BODY).await;
        assert_eq!(resp.status, 200, "{resp:?}");
        assert!(!replayed(&resp));
    }
    let seen = h.upstream.requests();
    assert_eq!(seen.len(), before + 2);
    assert!(
        seen[before..]
            .iter()
            .all(|s| s.headers["idempotency-key"] == k.as_str()),
        "the key still goes to PayMongo"
    );
    // reject: 503, nothing forwarded.
    let resp = post(ra, unique("k-down-"), BODY).await;
    assert_eq!(resp.status, 503, "{resp:?}");
    assert_eq!(resp.error_code(), "idempotency_store_unavailable");
    assert!(
        !String::from_utf8_lossy(&resp.body).contains("127.0.0.1"),
        "no internal address in the error body"
    );
    assert_eq!(h.upstream.total(), before + 2);

    // Readiness and metrics tell the operator.
    let down = readyz(fadmin).await;
    assert_eq!(down.status, 503);
    let v = down.json();
    let store = v["checks"]["store"].as_str().unwrap().to_owned();
    assert!(
        store.contains(&format!("127.0.0.1:{}", redis.port)),
        "{store}"
    );
    assert!(
        store.contains("webhook event store"),
        "both stores: {store}"
    );
    assert_eq!(v["checks"]["upstream"], "ok");
    let (mf, mr) = (metrics(fadmin).await, metrics(radmin).await);
    assert!(store_errors(&mf, "idempotency", "claim") >= 2, "{mf}");
    assert!(store_errors(&mf, "idempotency", "ping") >= 1, "{mf}");
    assert!(store_errors(&mr, "idempotency", "claim") >= 1, "{mr}");
    assert_eq!(outcome(&mf, "store_error"), 2);
    assert_eq!(outcome(&mr, "store_error"), 1);

    // Back (empty: no persistence). No restart of either gateway.
    redis.restart().await;
    for admin in [fadmin, radmin] {
        eventually(Duration::from_millis(20), || async move {
            (readyz(admin).await.status == 200).then_some(())
        })
        .await;
    }
    for addr in [fa, ra] {
        let k = unique("k-back-");
        let first = post(addr, k.clone(), BODY).await;
        assert_eq!(first.status, 200, "{first:?}");
        let second = post(addr, k, BODY).await;
        assert!(replayed(&second), "dedupe resumed: {second:?}");
    }
}

// ---- webhooks -------------------------------------------------------------

/// PayMongo delivers the same event to both replicas (retries land on any
/// replica behind the load balancer): the inward service gets it once.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn same_event_at_both_replicas_is_forwarded_inward_once() {
    let Some(url) = shared_url("same_event_at_both_replicas") else {
        return;
    };
    let h = Harness::new().await;
    let inward = Inward::start().await;
    let gate = Gate::new();
    let g = gate.clone();
    inward.behave(move |r, _| {
        if r.header("x-paymongo-event-id")
            .is_some_and(|id| id.starts_with("evt_held"))
        {
            InwardReply::Hold(g.clone(), Box::new(InwardReply::Status(200)))
        } else {
            InwardReply::Status(200)
        }
    });
    let cfg = format!(
        "{}\n[idempotency]\nstore = \"redis\"\nredis_url = {{ env = \"REDIS_URL\" }}\n",
        wh::config(&h, &inward.url("/events"), "dedupe_ttl = \"1h\"", "")
    );
    let env = [("WHSK", SECRET), ("REDIS_URL", url.as_str())];
    let (a, b) = (h.gateway(&cfg, &env).await, h.gateway(&cfg, &env).await);
    let wa = a.gw.webhooks_addr().await.unwrap().tcp().unwrap();
    let wb = b.gw.webhooks_addr().await.unwrap().tcp().unwrap();
    let deliver = |addr: SocketAddr, body: String| {
        let ca = &h.ca;
        async move {
            let sig = wh::test_header(SECRET, wh::now(), body.as_bytes());
            support::client::send_tls(
                addr,
                ca,
                "POST",
                PATH,
                &[
                    ("content-type", "application/json"),
                    ("paymongo-signature", &sig),
                ],
                body.as_bytes(),
            )
            .await
        }
    };

    // One after the other: A delivers, B acknowledges without forwarding.
    let id = unique("evt_");
    let body = wh::event(&id, "payment.paid", false);
    let r = deliver(wa, body.clone()).await;
    assert_eq!(
        (r.status.as_u16(), r.json()["status"].clone()),
        (200, "delivered".into())
    );
    let r = deliver(wb, body.clone()).await;
    assert_eq!(r.status, 200);
    assert_eq!(r.json()["status"], "duplicate");
    assert_eq!(inward.count(), 1);

    // At the same time: while A's delivery is in flight, B says 409 (PayMongo
    // retries later) and forwards nothing; afterwards B acknowledges.
    let held = unique("evt_held");
    let body = wh::event(&held, "payment.paid", false);
    let (first, ()) = tokio::join!(deliver(wa, body.clone()), async {
        inward.wait_for(2).await;
        let r = deliver(wb, body.clone()).await;
        assert_eq!(r.status, 409, "{r:?}");
        assert_eq!(r.error_code(), "event_in_progress");
        gate.open();
    });
    assert_eq!(first.json()["status"], "delivered");
    let r = deliver(wb, body).await;
    assert_eq!(r.json()["status"], "duplicate");
    assert_eq!(
        inward.count(),
        2,
        "each event reached the inward service once"
    );

    // What Redis holds: pmgw:evt:<endpoint>:<id> = D, for dedupe_ttl.
    let mut c = connect(&url).await;
    let key = format!("pmgw:evt:{PATH}:{id}");
    let v: Vec<u8> = redis::cmd("GET")
        .arg(&key)
        .query_async(&mut c)
        .await
        .unwrap();
    assert_eq!(v, b"D");
    let pttl: i64 = redis::cmd("PTTL")
        .arg(&key)
        .query_async(&mut c)
        .await
        .unwrap();
    assert!(pttl > 3_500_000 && pttl <= 3_600_000, "{pttl}");
}

// ---- TLS and secrets ------------------------------------------------------

/// `rediss://` to a private CA works with `redis_ca_file`, and without it
/// the certificate is refused (verification cannot be skipped).
#[tokio::test]
async fn rediss_verifies_the_server_certificate() {
    let Some(bin) = server_binary("rediss_verifies_the_server_certificate") else {
        return;
    };
    let h = Harness::new().await;
    let leaf = h.ca.leaf(&["localhost"]);
    let (cert, key) = (
        h.dir.path().join("redis.pem"),
        h.dir.path().join("redis.key"),
    );
    std::fs::write(&cert, &leaf.cert_pem).unwrap();
    std::fs::write(&key, &leaf.key_pem).unwrap();
    let tls = TlsFiles {
        cert,
        key,
        ca: h.ca_file.clone(),
    };
    let redis = RedisServer::start_with(&bin, Some(tls), None).await;
    let url = redis.url();
    assert!(url.starts_with("rediss://localhost:"));

    let trusted = replica(&h, &config("redis_ca_file = \"ca.pem\""), &url).await;
    let addr = trusted.addr("checkout").await;
    let k = unique("k-tls-");
    assert_eq!(post(addr, k.clone(), BODY).await.status, 200);
    assert!(replayed(&post(addr, k, BODY).await), "records over TLS");
    assert_eq!(readyz(trusted.admin().await).await.status, 200);

    // Same server, webpki roots only: the private CA is not trusted.
    let untrusted = replica_from(&h, &fresh_probes(h.config(&config(""))), &url).await;
    let r = readyz(untrusted.admin().await).await;
    assert_eq!(r.status, 503, "{:?}", r.json());
    let check = r.json()["checks"]["store"].as_str().unwrap().to_owned();
    assert!(check.contains("certificate"), "{check}");
    let addr = untrusted.addr("checkout").await;
    let k = unique("k-untrusted-");
    for _ in 0..2 {
        assert!(!replayed(&post(addr, k.clone(), BODY).await));
    }
}

/// The Redis password reaches Redis and nothing else: not the logs (at
/// trace level, through success, outage and wrong-password paths), not
/// `/readyz`, not `/metrics`.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_redis_password_never_appears_in_output() {
    let Some(bin) = server_binary("the_redis_password_never_appears") else {
        return;
    };
    let password = unique("pw-Zq8");
    let mut redis = RedisServer::start_with(&bin, None, Some(&password)).await;
    let url = format!("redis://:{password}@127.0.0.1:{}/0", redis.port);
    let h = Harness::new().await;
    let cfg = fresh_probes(h.config(&config(""))).replace("level = \"debug\"", "level = \"trace\"");
    let path = h.dir.path().join("gateway.toml");
    std::fs::write(&path, &cfg).unwrap();
    let mut p = GatewayProcess::spawn(
        &["--no-watch", "--config", path.to_str().unwrap()],
        &[("SK_CHECKOUT", SK), ("REDIS_URL", &url)],
    );
    let addr = p.listening("service checkout").await;
    let admin = p.listening("admin").await;
    let k = unique("k-pw-");
    post(addr, k.clone(), BODY).await;
    assert!(replayed(&post(addr, k, BODY).await), "authenticated");
    let mut bodies = vec![
        readyz(admin).await,
        send(admin, "GET", "/metrics", &[], "").await,
    ];

    redis.stop().await;
    post(addr, unique("k-pw-down-"), BODY).await;
    let down = readyz(admin).await;
    assert_eq!(down.status, 503);
    bodies.push(down);

    // A replica with the wrong password: refused by Redis, and the refusal
    // names neither password.
    redis.restart().await;
    let wrong = unique("wrong-pw-");
    let bad_url = format!("redis://:{wrong}@127.0.0.1:{}/0", redis.port);
    let bad = replica_from(&h, &fresh_probes(h.config(&config(""))), &bad_url).await;
    let r = readyz(bad.admin().await).await;
    assert_eq!(r.status, 503);
    let check = r.json()["checks"]["store"].as_str().unwrap().to_owned();
    assert!(check.to_lowercase().contains("authentication"), "{check}");
    assert!(!check.contains(&wrong), "{check}");
    bodies.push(r);

    p.signal("TERM");
    p.wait_exit().await;
    let out = p.output();
    assert!(out.contains("127.0.0.1"), "errors name host:port: {out}");
    for (what, text) in bodies
        .iter()
        .map(|b| ("response", String::from_utf8_lossy(&b.body).into_owned()))
        .chain([("output", out)])
    {
        assert!(!text.contains(&password), "password in {what}:\n{text}");
        assert!(!text.contains(&wrong), "wrong password in {what}:\n{text}");
    }
}

// ---- the store itself, two replicas ---------------------------------------

fn idem_config(url: &str) -> IdempotencyConfig {
    let text = format!(
        "mode = \"test\"\n{}",
        config("redis_timeout = \"2s\"").replace("redis_timeout = \"500ms\"\n", "")
    );
    let url = url.to_owned();
    let env = move |k: &str| match k {
        "REDIS_URL" => Some(url.clone()),
        _ => Some(SK.to_owned()),
    };
    let ctx = LoadContext {
        base_dir: ".".into(),
        env: &env,
    };
    Config::parse(&text, &ctx).unwrap().idempotency
}

/// A store as one replica has it: its own connections and replay cache.
fn store(url: &str) -> Arc<dyn IdempotencyStore> {
    let cfg = idem_config(url);
    let backend = Arc::new(RedisBackend::new(&cfg).unwrap());
    Arc::new(RedisStore::new(backend, 1 << 20, StoreErrors::default()))
}

fn identity(key: &str) -> Identity {
    let hv = HeaderValue::from_str(key).unwrap();
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

fn record(id: &Identity, body: &str) -> Record {
    let mut h = HeaderMap::new();
    h.insert("content-type", HeaderValue::from_static("application/json"));
    Record {
        fingerprint: id.fingerprint,
        response: StoredResponse::capture(StatusCode::OK, &h, body.as_bytes()),
    }
}

const LEASE: Duration = Duration::from_secs(60);
const TTL: Duration = Duration::from_secs(3600);

#[tokio::test]
async fn store_claims_are_owned_and_records_are_final() {
    let Some(url) = shared_url("store_claims_are_owned") else {
        return;
    };
    let (a, b) = (store(&url), store(&url));
    let id = identity(&unique("k-store-"));
    let (oa, ob) = (OwnerId::new(), OwnerId::new());
    assert!(matches!(
        a.claim(&id.key, &id.fingerprint, oa, LEASE).await.unwrap(),
        ClaimOutcome::Claimed
    ));
    match b.claim(&id.key, &id.fingerprint, ob, LEASE).await.unwrap() {
        ClaimOutcome::InFlight { fingerprint, .. } => assert_eq!(fingerprint, id.fingerprint),
        other => panic!("{other:?}"),
    }
    let other_fp = Fingerprint([0xee; 32]);
    match b.claim(&id.key, &other_fp, ob, LEASE).await.unwrap() {
        ClaimOutcome::InFlight { fingerprint, .. } => assert_eq!(fingerprint, id.fingerprint),
        other => panic!("{other:?}"),
    }
    assert!(
        !b.complete(&id.key, ob, record(&id, "b"), TTL)
            .await
            .unwrap(),
        "not b's"
    );
    assert!(!b.release(&id.key, ob).await.unwrap(), "not b's");
    assert!(
        a.complete(&id.key, oa, record(&id, "a"), TTL)
            .await
            .unwrap()
    );
    for s in [&a, &b, &store(&url)] {
        match s
            .claim(&id.key, &id.fingerprint, OwnerId::new(), LEASE)
            .await
            .unwrap()
        {
            ClaimOutcome::Completed(r) => assert_eq!(&r.response.body[..], b"a"),
            other => panic!("{other:?}"),
        }
    }
    // Neither a late release nor a late complete touches a record.
    assert!(!a.release(&id.key, oa).await.unwrap());
    assert!(
        !a.complete(&id.key, oa, record(&id, "x"), TTL)
            .await
            .unwrap()
    );
    match store(&url)
        .claim(&id.key, &id.fingerprint, ob, LEASE)
        .await
        .unwrap()
    {
        ClaimOutcome::Completed(r) => assert_eq!(&r.response.body[..], b"a"),
        other => panic!("{other:?}"),
    }
}

#[tokio::test]
async fn an_expired_claim_is_taken_over_and_its_owner_can_no_longer_complete() {
    let Some(url) = shared_url("an_expired_claim_is_taken_over") else {
        return;
    };
    let (a, b) = (store(&url), store(&url));
    let id = identity(&unique("k-expire-"));
    let (oa, ob) = (OwnerId::new(), OwnerId::new());
    // Long enough that a loaded machine still gets b's claim in first.
    let short = Duration::from_secs(1);
    assert!(matches!(
        a.claim(&id.key, &id.fingerprint, oa, short).await.unwrap(),
        ClaimOutcome::Claimed
    ));
    let ClaimOutcome::InFlight { settled, .. } =
        b.claim(&id.key, &id.fingerprint, ob, LEASE).await.unwrap()
    else {
        panic!("expected in flight");
    };
    // Nobody settles it: the waiter is released by the lease itself.
    tokio::time::timeout(WAIT, settled).await.unwrap();
    assert!(matches!(
        b.claim(&id.key, &id.fingerprint, ob, LEASE).await.unwrap(),
        ClaimOutcome::Claimed
    ));
    assert!(
        !a.complete(&id.key, oa, record(&id, "late"), TTL)
            .await
            .unwrap()
    );
    assert!(!a.release(&id.key, oa).await.unwrap());
    assert!(
        b.complete(&id.key, ob, record(&id, "b"), TTL)
            .await
            .unwrap()
    );
}

#[tokio::test]
async fn a_release_on_one_replica_wakes_a_waiter_on_another_long_before_the_lease() {
    let Some(url) = shared_url("a_release_wakes_a_waiter") else {
        return;
    };
    let (a, b) = (store(&url), store(&url));
    let id = identity(&unique("k-wake-"));
    let oa = OwnerId::new();
    assert!(matches!(
        a.claim(&id.key, &id.fingerprint, oa, Duration::from_secs(600))
            .await
            .unwrap(),
        ClaimOutcome::Claimed
    ));
    let ClaimOutcome::InFlight { settled, .. } = b
        .claim(&id.key, &id.fingerprint, OwnerId::new(), LEASE)
        .await
        .unwrap()
    else {
        panic!("expected in flight");
    };
    let waiting = tokio::spawn(settled);
    assert!(a.release(&id.key, oa).await.unwrap());
    // WAIT (30 s) is far below the 600 s lease: only the poll can end this.
    tokio::time::timeout(WAIT, waiting).await.unwrap().unwrap();
}

#[tokio::test]
async fn the_replay_cache_never_outlives_the_record() {
    let Some(url) = shared_url("the_replay_cache_never_outlives_the_record") else {
        return;
    };
    let (a, b) = (store(&url), store(&url));
    let id = identity(&unique("k-cache-"));
    let oa = OwnerId::new();
    let ttl = Duration::from_millis(600);
    assert!(matches!(
        a.claim(&id.key, &id.fingerprint, oa, LEASE).await.unwrap(),
        ClaimOutcome::Claimed
    ));
    assert!(
        a.complete(&id.key, oa, record(&id, "short"), ttl)
            .await
            .unwrap()
    );
    let started = Instant::now();
    // Both replicas now hold it in their caches (a wrote it, b read it).
    for s in [&a, &b] {
        let out = s
            .claim(&id.key, &id.fingerprint, OwnerId::new(), LEASE)
            .await;
        assert!(matches!(out.unwrap(), ClaimOutcome::Completed(_)));
    }
    // Time itself is under test: step just past the ttl.
    tokio::time::sleep(ttl.saturating_sub(started.elapsed()) + Duration::from_millis(100)).await;
    for s in [&a, &b] {
        let o = OwnerId::new();
        let out = s.claim(&id.key, &id.fingerprint, o, LEASE).await.unwrap();
        assert!(
            matches!(out, ClaimOutcome::Claimed | ClaimOutcome::InFlight { .. }),
            "expired record still served: {out:?}"
        );
    }
}

/// Rounds of duplicates split across two replicas' stores, through the
/// real `decide`: one execution at a time, and every answer the same. Some
/// owners fail (release, like a 5xx) and a waiter takes over.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn duplicates_split_across_two_stores_execute_once_per_success() {
    let Some(url) = shared_url("duplicates_split_across_two_stores") else {
        return;
    };
    let stores = [store(&url), store(&url)];
    let cfg = idem_config(&url);
    let tasks = TaskTracker::new();
    for round in 0..12usize {
        let failures = round % 3;
        let id = identity(&unique("k-round-"));
        let executions = Arc::new(AtomicUsize::new(0));
        let active = Arc::new(AtomicUsize::new(0));
        let max_active = Arc::new(AtomicUsize::new(0));
        let handles: Vec<_> = (0..8usize)
            .map(|i| {
                let (store, tasks, cfg) = (stores[i % 2].clone(), tasks.clone(), cfg.clone());
                let (executions, active, max_active) =
                    (executions.clone(), active.clone(), max_active.clone());
                tokio::spawn(async move {
                    for _ in 0..(i * 7 + round) % 5 {
                        tokio::task::yield_now().await;
                    }
                    match idempotency::decide(&store, &tasks, &cfg, id).await.unwrap() {
                        Decision::Execute(guard) => {
                            let nth = executions.fetch_add(1, Ordering::SeqCst);
                            let now = active.fetch_add(1, Ordering::SeqCst) + 1;
                            max_active.fetch_max(now, Ordering::SeqCst);
                            tokio::task::yield_now().await;
                            active.fetch_sub(1, Ordering::SeqCst);
                            if nth < failures {
                                guard.release().await.unwrap();
                                None
                            } else {
                                let r = record(&id, &format!("execution {nth}"));
                                assert!(guard.complete(r.response.clone(), TTL).await.unwrap());
                                Some(r.response.body)
                            }
                        }
                        Decision::Replay { record, .. } => Some(record.response.body.clone()),
                        Decision::Bypass(e) => panic!("redis failed: {e}"),
                    }
                })
            })
            .collect();
        let mut bodies = Vec::new();
        for h in handles {
            if let Some(b) = tokio::time::timeout(WAIT, h).await.unwrap().unwrap() {
                bodies.push(b);
            }
        }
        assert_eq!(max_active.load(Ordering::SeqCst), 1, "round {round}");
        assert_eq!(
            executions.load(Ordering::SeqCst),
            failures + 1,
            "round {round}"
        );
        assert_eq!(bodies.len(), 8 - failures);
        assert!(bodies.iter().all(|b| b == &bodies[0]), "round {round}");
    }
}

/// How often Redis ran `command` (from `INFO commandstats`).
async fn calls(c: &mut redis::aio::MultiplexedConnection, command: &str) -> u64 {
    let info: String = redis::cmd("INFO")
        .arg("commandstats")
        .query_async(c)
        .await
        .unwrap();
    let prefix = format!("cmdstat_{command}:calls=");
    info.lines()
        .find_map(|l| l.strip_prefix(&prefix))
        .and_then(|rest| rest.split(',').next())
        .map_or(0, |n| n.parse().unwrap())
}

/// A duplicate waiting out another replica's claim polls with backoff: a
/// handful of commands per second, not a hot loop. A private server, so
/// the command counts are this test's alone.
#[tokio::test]
async fn a_waiter_backs_off_instead_of_spinning() {
    let Some(bin) = server_binary("a_waiter_backs_off_instead_of_spinning") else {
        return;
    };
    let redis = RedisServer::start(&bin).await;
    let url = redis.url();
    let (a, b) = (store(&url), store(&url));
    let id = identity(&unique("k-spin-"));
    let lease = Duration::from_millis(1500);
    assert!(matches!(
        a.claim(&id.key, &id.fingerprint, OwnerId::new(), lease)
            .await
            .unwrap(),
        ClaimOutcome::Claimed
    ));
    let mut c = connect(&url).await;
    let (polls, scripts) = (
        calls(&mut c, "getrange").await,
        calls(&mut c, "evalsha").await,
    );
    // The owner never finishes: b's duplicate waits the lease out (the time
    // under test), then owns the key.
    let started = Instant::now();
    let decided = idempotency::decide(&b, &TaskTracker::new(), &idem_config(&url), id)
        .await
        .unwrap();
    let waited = started.elapsed();
    assert!(matches!(decided, Decision::Execute(_)), "{decided:?}");
    assert!(waited >= Duration::from_millis(1200), "{waited:?}");
    let polls = calls(&mut c, "getrange").await - polls;
    let scripts = calls(&mut c, "evalsha").await - scripts;
    // Backoff 4, 8, 16, 32, then every 50 ms: ~30 polls in 1.5 s.
    assert!((5..=40).contains(&polls), "{polls} polls in {waited:?}");
    assert!(scripts <= 4, "{scripts} claims");
}

//! Outbound proxy, end to end: real listeners, a fake PayMongo over real TLS.
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

mod support;

use support::client::basic;

use support::client::send_h2c;
use support::{FakeUpstream, Gate, Harness, Reply, TestCa, send, send_unix};
use tokio::io::{AsyncReadExt, AsyncWriteExt};

const SK: &str = "sk_test_outboundKEY1";
const SK2: &str = "sk_test_otherSERVICE2";

/// A gateway with the one-service config, pointed at an upstream on `port`
/// (trusting only the harness CA) instead of the harness's own.
async fn gateway_to(h: &Harness, port: u16) -> support::TestGateway {
    let cfg = format!(
        "{}\n{}",
        support::base_config(port, &h.ca_file),
        one_service("")
    );
    support::start_gateway(&cfg, h.dir.path(), &[("SK_CHECKOUT", SK)]).await
}

fn one_service(extra: &str) -> String {
    format!(
        r#"
[[service]]
name = "checkout"
listen = "127.0.0.1:0"
secret_key = {{ env = "SK_CHECKOUT" }}
{extra}
"#
    )
}

#[tokio::test]
async fn injects_exact_key_and_replaces_callers_credentials() {
    let h = Harness::new().await;
    let g = h.gateway(&one_service(""), &[("SK_CHECKOUT", SK)]).await;
    let addr = g.addr("checkout").await;

    let r = send(
        addr,
        "POST",
        "/v1/payment_intents?expand=x",
        &[
            ("authorization", "Basic ZXZpbDo="),
            ("proxy-authorization", "Basic ZXZpbDo="),
            ("x-forwarded-for", "10.1.2.3"),
            ("content-type", "application/json"),
            ("idempotency-key", "k1"),
        ],
        r#"{"data":{"attributes":{"amount":2000}}}"#,
    )
    .await;
    assert_eq!(r.status, 200, "{r:?}");
    let seen = h.upstream.requests();
    assert_eq!(seen.len(), 1);
    let s = &seen[0];
    let auths: Vec<_> = s.headers.get_all("authorization").iter().collect();
    assert_eq!(auths.len(), 1, "exactly one Authorization upstream");
    assert_eq!(auths[0], basic(SK).as_str());
    assert!(s.headers.get("proxy-authorization").is_none());
    assert!(s.headers.get("x-forwarded-for").is_none());
    assert!(s.headers.get("via").is_none());
    assert_eq!(s.headers.get("idempotency-key").unwrap(), "k1");
    assert_eq!(s.path, "/v1/payment_intents");
    assert_eq!(s.query.as_deref(), Some("expand=x"));
    assert_eq!(&s.body[..], br#"{"data":{"attributes":{"amount":2000}}}"#);
    // The response streams back untouched.
    assert_eq!(r.json()["data"]["path"], "/v1/payment_intents");
}

#[tokio::test]
async fn connection_header_cannot_strip_the_injected_key() {
    let h = Harness::new().await;
    let g = h.gateway(&one_service(""), &[("SK_CHECKOUT", SK)]).await;
    let addr = g.addr("checkout").await;
    let r = send(
        addr,
        "GET",
        "/v1/payment_intents/pi_1",
        &[
            ("connection", "keep-alive, Authorization, x-secret-hop"),
            ("x-secret-hop", "1"),
            ("keep-alive", "timeout=5"),
        ],
        "",
    )
    .await;
    assert_eq!(r.status, 200);
    let s = &h.upstream.requests()[0];
    assert_eq!(s.headers.get("authorization").unwrap(), basic(SK).as_str());
    assert!(s.headers.get("x-secret-hop").is_none());
    assert!(s.headers.get("keep-alive").is_none());
    assert!(s.headers.get("connection").is_none());
}

#[tokio::test]
async fn allowlist_permits_listed_routes_and_refuses_the_rest_unforwarded() {
    let h = Harness::new().await;
    let allow = r#"allow = ["POST /v1/payment_intents", "GET /v1/payment_intents/*", "POST /v1/payment_intents/*/attach"]"#;
    let g = h.gateway(&one_service(allow), &[("SK_CHECKOUT", SK)]).await;
    let addr = g.addr("checkout").await;

    assert_eq!(
        send(addr, "POST", "/v1/payment_intents", &[], "{}")
            .await
            .status,
        200
    );
    assert_eq!(
        send(addr, "GET", "/v1/payment_intents/pi_1", &[], "")
            .await
            .status,
        200
    );
    assert_eq!(
        send(addr, "POST", "/v1/payment_intents/pi_1/attach", &[], "{}")
            .await
            .status,
        200
    );
    let allowed = h.upstream.total();
    assert_eq!(allowed, 3);

    for (m, p) in [
        ("POST", "/v1/refunds"),
        ("GET", "/v1/payment_intents"),
        ("GET", "/v1/payment_intents/pi_1/attach"),
        ("DELETE", "/v1/payment_intents/pi_1"),
        ("GET", "/v1/payment_intents/pi_1/extra/segments"),
        ("GET", "/v1/payment_intents/../refunds"),
        ("GET", "/v1/payment_intents/pi_1%2F..%2Frefunds"),
    ] {
        let r = send(addr, m, p, &[], "").await;
        assert_eq!(r.status, 403, "{m} {p}");
        assert_eq!(r.error_code(), "route_not_allowed");
        assert!(
            r.header("content-type")
                .unwrap()
                .starts_with("application/json")
        );
    }
    assert_eq!(
        h.upstream.total(),
        allowed,
        "refused routes never reach upstream"
    );
}

#[tokio::test]
async fn two_services_inject_two_keys_and_unix_socket_works() {
    let h = Harness::new().await;
    let sock = h.dir.path().join("billing.sock");
    let services = format!(
        r#"
[[service]]
name = "checkout"
listen = "127.0.0.1:0"
secret_key = {{ env = "SK_CHECKOUT" }}

[[service]]
name = "billing"
listen = "unix:{}"
secret_key = {{ file = "billing.sk" }}
"#,
        sock.display()
    );
    h.secret_file("billing.sk", SK2);
    let g = h.gateway(&services, &[("SK_CHECKOUT", SK)]).await;
    let a = g.addr("checkout").await;

    assert_eq!(
        send(a, "GET", "/v1/payment_intents/pi_a", &[], "")
            .await
            .status,
        200
    );
    let r = send_unix(&sock, "GET", "/v1/payment_intents/pi_b", &[], "").await;
    assert_eq!(r.status, 200);
    let seen = h.upstream.requests();
    let by_path = |p: &str| {
        seen.iter()
            .find(|s| s.path == p)
            .unwrap()
            .headers
            .get("authorization")
            .unwrap()
            .clone()
    };
    assert_eq!(by_path("/v1/payment_intents/pi_a"), basic(SK).as_str());
    assert_eq!(by_path("/v1/payment_intents/pi_b"), basic(SK2).as_str());
}

#[tokio::test]
async fn h2c_callers_are_served_and_upstream_negotiates_h2() {
    let h = Harness::new().await;
    let g = h.gateway(&one_service(""), &[("SK_CHECKOUT", SK)]).await;
    let r = send_h2c(
        g.addr("checkout").await,
        "GET",
        "/v1/payment_intents/pi_h2",
        &[],
        "",
    )
    .await;
    assert_eq!(r.status, 200);
    let s = &h.upstream.requests()[0];
    assert_eq!(
        s.version,
        http::Version::HTTP_2,
        "ALPN should pick h2 upstream"
    );
    assert_eq!(s.headers.get("authorization").unwrap(), basic(SK).as_str());
}

#[tokio::test]
async fn upstream_over_http1_only_also_works() {
    let h = Harness::new().await;
    let up = FakeUpstream::start_with_alpn(&h.leaf, &[b"http/1.1"]).await;
    let g = gateway_to(&h, up.port()).await;
    let r = send(
        g.addr("checkout").await,
        "GET",
        "/v1/payment_intents/pi_1",
        &[],
        "",
    )
    .await;
    assert_eq!(r.status, 200);
    assert_eq!(up.requests()[0].version, http::Version::HTTP_11);
    assert_eq!(
        up.requests()[0].headers.get("host").unwrap(),
        &format!("localhost:{}", up.port())
    );
}

#[tokio::test]
async fn untrusted_certificate_is_502_and_no_request_reaches_it() {
    let h = Harness::new().await;
    let rogue = TestCa::new("rogue CA");
    let up = FakeUpstream::start(&rogue.leaf(&["localhost", "127.0.0.1"])).await;
    let g = gateway_to(&h, up.port()).await;
    let r = send(
        g.addr("checkout").await,
        "POST",
        "/v1/payment_intents",
        &[],
        "{}",
    )
    .await;
    assert_eq!(r.status, 502);
    assert_eq!(r.error_code(), "upstream_unavailable");
    assert!(
        !String::from_utf8_lossy(&r.body).contains("127.0.0.1"),
        "no internal address in details"
    );
    assert_eq!(
        up.total(),
        0,
        "no HTTP request may reach an unverified upstream"
    );
}

#[tokio::test]
async fn wrong_hostname_is_502_and_no_request_reaches_it() {
    let h = Harness::new().await;
    let up = FakeUpstream::start(&h.ca.leaf(&["api.other.example"])).await;
    let g = gateway_to(&h, up.port()).await;
    let r = send(
        g.addr("checkout").await,
        "GET",
        "/v1/payment_intents/pi_1",
        &[],
        "",
    )
    .await;
    assert_eq!(r.status, 502);
    assert_eq!(r.error_code(), "upstream_unavailable");
    assert_eq!(up.total(), 0);
}

#[tokio::test]
async fn upstream_down_is_502() {
    let h = Harness::new().await;
    // A port that was just free: bind, read the port, close.
    let port = std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port();
    let g = gateway_to(&h, port).await;
    let r = send(
        g.addr("checkout").await,
        "GET",
        "/v1/payment_intents/pi_1",
        &[],
        "",
    )
    .await;
    assert_eq!(r.status, 502);
    assert_eq!(r.error_code(), "upstream_unavailable");
}

#[tokio::test]
async fn slow_upstream_is_504() {
    let h = Harness::new().await;
    let gate = Gate::new();
    let g2 = gate.clone();
    h.upstream
        .behave(move |_, _| Reply::Hold(g2.clone(), Box::new(Reply::Json(200, "{}".into()))));
    let cfg = h
        .config(&one_service(""))
        .replace("timeout = \"5s\"", "timeout = \"300ms\"");
    let g = support::start_gateway(&cfg, h.dir.path(), &[("SK_CHECKOUT", SK)]).await;
    let r = send(
        g.addr("checkout").await,
        "GET",
        "/v1/payment_intents/pi_1",
        &[],
        "",
    )
    .await;
    assert_eq!(r.status, 504);
    assert_eq!(r.error_code(), "upstream_timeout");
    assert_eq!(h.upstream.total(), 1);
    gate.open();
}

#[tokio::test]
async fn body_over_the_limit_is_413_and_never_forwarded() {
    let h = Harness::new().await;
    let g = h
        .gateway(&one_service("max_body = \"1KiB\""), &[("SK_CHECKOUT", SK)])
        .await;
    let addr = g.addr("checkout").await;

    let big = "x".repeat(1025);
    let r = send(addr, "POST", "/v1/payment_intents", &[], &big).await;
    assert_eq!(r.status, 413);
    assert_eq!(r.error_code(), "payload_too_large");

    // Chunked, no Content-Length: refused once the limit is crossed.
    let mut s = tokio::net::TcpStream::connect(addr).await.unwrap();
    let mut req =
        b"POST /v1/payment_intents HTTP/1.1\r\nhost: x\r\ntransfer-encoding: chunked\r\n\r\n"
            .to_vec();
    for _ in 0..3 {
        req.extend_from_slice(b"200\r\n");
        req.extend_from_slice(&[b'y'; 0x200]);
        req.extend_from_slice(b"\r\n");
    }
    req.extend_from_slice(b"0\r\n\r\n");
    s.write_all(&req).await.unwrap();
    let mut buf = vec![0u8; 4096];
    let n = s.read(&mut buf).await.unwrap();
    let head = String::from_utf8_lossy(&buf[..n]);
    assert!(head.starts_with("HTTP/1.1 413"), "{head}");
    assert!(head.contains("payload_too_large"));

    // Exactly at the limit passes.
    let ok = send(addr, "POST", "/v1/payment_intents", &[], &"z".repeat(1024)).await;
    assert_eq!(ok.status, 200);
    assert_eq!(
        h.upstream.total(),
        1,
        "only the in-limit request was forwarded"
    );
}

#[tokio::test]
async fn upstream_reset_is_502_and_the_gateway_stays_up() {
    let h = Harness::new().await;
    let gate = Gate::new();
    let g2 = gate.clone();
    h.upstream.behave(move |s, _| {
        if s.path.ends_with("/reset") {
            Reply::Reset
        } else if s.path.ends_with("/midbody") {
            Reply::ResetMidBody(g2.clone())
        } else {
            Reply::Json(200, "{}".into())
        }
    });
    let g = h.gateway(&one_service(""), &[("SK_CHECKOUT", SK)]).await;
    let addr = g.addr("checkout").await;

    let r = send(addr, "GET", "/v1/x/reset", &[], "").await;
    assert_eq!(r.status, 502);
    assert_eq!(r.error_code(), "upstream_unavailable");

    // Headers already went out when the upstream dies: the caller's
    // connection is cut short of the promised length, never a silently
    // complete-looking success.
    let mut s = tokio::net::TcpStream::connect(addr).await.unwrap();
    s.write_all(b"GET /v1/x/midbody HTTP/1.1\r\nhost: x\r\n\r\n")
        .await
        .unwrap();
    let mut got = Vec::new();
    let mut buf = [0u8; 1024];
    while !String::from_utf8_lossy(&got).contains("{\"part") {
        let n = s.read(&mut buf).await.unwrap();
        assert!(
            n > 0,
            "closed before the partial body: {:?}",
            String::from_utf8_lossy(&got)
        );
        got.extend_from_slice(&buf[..n]);
    }
    let head = String::from_utf8_lossy(&got).to_string();
    assert!(head.starts_with("HTTP/1.1 200"), "{head}");
    assert!(head.contains("content-length: 100"), "{head}");
    gate.open();
    loop {
        match s.read(&mut buf).await {
            Ok(0) | Err(_) => break,
            Ok(n) => got.extend_from_slice(&buf[..n]),
        }
    }
    let body_len = got.len() - (head.find("\r\n\r\n").unwrap() + 4);
    assert!(
        body_len < 100,
        "connection must close short of Content-Length"
    );

    let ok = send(addr, "GET", "/v1/x/fine", &[], "").await;
    assert_eq!(ok.status, 200, "gateway still serving");
}

#[tokio::test]
async fn upstream_status_and_headers_pass_through() {
    let h = Harness::new().await;
    h.upstream.behave(|_, _| {
        Reply::Full(
            400,
            vec![
                ("content-type".into(), "application/json".into()),
                ("x-request-id".into(), "req_123".into()),
                ("connection".into(), "x-upstream-hop".into()),
                ("x-upstream-hop".into(), "1".into()),
            ],
            bytes::Bytes::from_static(
                br#"{"errors":[{"code":"parameter_below_minimum","detail":"d"}]}"#,
            ),
        )
    });
    let g = h.gateway(&one_service(""), &[("SK_CHECKOUT", SK)]).await;
    let r = send(
        g.addr("checkout").await,
        "POST",
        "/v1/payment_intents",
        &[],
        "{}",
    )
    .await;
    assert_eq!(r.status, 400);
    assert_eq!(r.header("x-request-id"), Some("req_123"));
    assert!(
        r.header("x-upstream-hop").is_none(),
        "hop-by-hop stripped on the way back"
    );
    assert_eq!(r.error_code(), "parameter_below_minimum");
}

#[tokio::test]
async fn remote_listener_admits_only_allow_from() {
    let h = Harness::new().await;
    let services = r#"
[[service]]
name = "outside"
listen = "0.0.0.0:0"
secret_key = { env = "SK_CHECKOUT" }
allow_remote = true
allow_from = ["10.0.0.0/8"]

[[service]]
name = "inside"
listen = "0.0.0.0:0"
secret_key = { env = "SK_CHECKOUT" }
allow_remote = true
allow_from = ["127.0.0.0/8"]
"#;
    let g = h.gateway(services, &[("SK_CHECKOUT", SK)]).await;
    let port = |a: std::net::SocketAddr| std::net::SocketAddr::from(([127, 0, 0, 1], a.port()));
    let r = send(
        port(g.addr("outside").await),
        "GET",
        "/v1/payment_intents/pi_1",
        &[],
        "",
    )
    .await;
    assert_eq!(r.status, 403);
    assert_eq!(r.error_code(), "peer_not_allowed");
    assert_eq!(h.upstream.total(), 0);
    let r = send(
        port(g.addr("inside").await),
        "GET",
        "/v1/payment_intents/pi_1",
        &[],
        "",
    )
    .await;
    assert_eq!(r.status, 200);
}

#[tokio::test]
async fn errors_have_paymongo_shape_and_admin_metrics_count_them() {
    let h = Harness::new().await;
    let g = h
        .gateway(
            &one_service(r#"allow = ["GET /v1/payment_intents/*"]"#),
            &[("SK_CHECKOUT", SK)],
        )
        .await;
    let addr = g.addr("checkout").await;
    let r = send(addr, "POST", "/v1/refunds", &[], "{}").await;
    let v = r.json();
    assert_eq!(v["errors"].as_array().unwrap().len(), 1);
    assert!(
        v["errors"][0]["detail"]
            .as_str()
            .unwrap()
            .contains("/v1/refunds")
    );
    assert_eq!(
        send(addr, "GET", "/v1/payment_intents/pi_1", &[], "")
            .await
            .status,
        200
    );

    let m = send(g.admin().await, "GET", "/metrics", &[], "").await;
    let text = String::from_utf8_lossy(&m.body);
    assert!(
        text.contains(r#"paymongo_gateway_requests_total{service="checkout",class="4xx"} 1"#),
        "{text}"
    );
    assert!(text.contains(r#"paymongo_gateway_requests_total{service="checkout",class="2xx"} 1"#));
    assert!(!text.contains(SK));
}

#[tokio::test]
async fn refused_peers_get_one_403_and_a_closed_connection() {
    let h = Harness::new().await;
    let services = r#"
[[service]]
name = "outside"
listen = "0.0.0.0:0"
secret_key = { env = "SK_CHECKOUT" }
allow_remote = true
allow_from = ["10.0.0.0/8"]
"#;
    let g = h.gateway(services, &[("SK_CHECKOUT", SK)]).await;
    let port = g.addr("outside").await.port();
    let mut s = tokio::net::TcpStream::connect(("127.0.0.1", port))
        .await
        .unwrap();
    // Two pipelined requests: the refusal answers the first and closes.
    s.write_all(b"GET /v1/a HTTP/1.1\r\nhost: x\r\n\r\nGET /v1/b HTTP/1.1\r\nhost: x\r\n\r\n")
        .await
        .unwrap();
    let mut all = Vec::new();
    s.read_to_end(&mut all).await.unwrap();
    let text = String::from_utf8_lossy(&all);
    assert_eq!(text.matches("HTTP/1.1 403").count(), 1, "{text}");
    assert!(text.contains("peer_not_allowed"));
    assert_eq!(h.upstream.total(), 0);
}

#[tokio::test]
async fn unix_socket_is_private_and_never_replaces_a_regular_file() {
    use std::os::unix::fs::PermissionsExt as _;
    let h = Harness::new().await;
    let sock = h.dir.path().join("svc.sock");
    let svc = |p: &std::path::Path| {
        format!(
            "[[service]]\nname = \"s\"\nlisten = \"unix:{}\"\nsecret_key = {{ env = \"SK_CHECKOUT\" }}\n",
            p.display()
        )
    };
    let g = h.gateway(&svc(&sock), &[("SK_CHECKOUT", SK)]).await;
    let mode = std::fs::metadata(&sock).unwrap().permissions().mode() & 0o777;
    assert_eq!(mode, 0o660, "socket must be owner+group only");
    g.gw.shutdown().await;
    assert!(!sock.exists(), "socket removed on shutdown");

    let precious = h.dir.path().join("precious.toml");
    std::fs::write(&precious, "keep me").unwrap();
    let cfg = h.config(&svc(&precious));
    let config = paymongo_gateway::config::Config::parse(
        &cfg,
        &paymongo_gateway::config::LoadContext {
            base_dir: h.dir.path().to_owned(),
            env: &|n: &str| (n == "SK_CHECKOUT").then(|| SK.to_owned()),
        },
    )
    .unwrap();
    let err = paymongo_gateway::Gateway::start(config)
        .await
        .err()
        .expect("must refuse");
    assert!(err.to_string().contains("not a socket"), "{err}");
    assert_eq!(std::fs::read_to_string(&precious).unwrap(), "keep me");
}

/// Reads from `s` until `needle` has arrived; returns everything read.
async fn read_until(s: &mut tokio::net::TcpStream, needle: &str) -> String {
    let mut got = Vec::new();
    let mut buf = [0u8; 4096];
    while !String::from_utf8_lossy(&got).contains(needle) {
        let n = tokio::time::timeout(support::WAIT, s.read(&mut buf))
            .await
            .unwrap()
            .unwrap();
        assert!(
            n > 0,
            "closed before {needle:?}: {:?}",
            String::from_utf8_lossy(&got)
        );
        got.extend_from_slice(&buf[..n]);
    }
    String::from_utf8_lossy(&got).into_owned()
}

#[tokio::test]
async fn a_stalled_response_body_is_cut_at_the_request_timeout() {
    let h = Harness::new().await;
    let never = Gate::new();
    let g2 = never.clone();
    h.upstream
        .behave(move |_, _| Reply::ResetMidBody(g2.clone()));
    let cfg = h
        .config(&one_service(""))
        .replace("timeout = \"5s\"", "timeout = \"300ms\"");
    let g = support::start_gateway(&cfg, h.dir.path(), &[("SK_CHECKOUT", SK)]).await;
    let mut s = tokio::net::TcpStream::connect(g.addr("checkout").await)
        .await
        .unwrap();
    s.write_all(b"GET /v1/payment_intents/pi_1 HTTP/1.1\r\nhost: x\r\n\r\n")
        .await
        .unwrap();
    let head = read_until(&mut s, "{\"part").await;
    assert!(head.starts_with("HTTP/1.1 200"), "{head}");
    // The upstream never finishes; the gateway must end the body itself
    // (bounded wait: a hang fails the test at WAIT).
    let mut rest = Vec::new();
    let r = tokio::time::timeout(support::WAIT, s.read_to_end(&mut rest))
        .await
        .expect("body never cut");
    let total = head.len() + rest.len() - (head.find("\r\n\r\n").unwrap() + 4);
    assert!(
        r.is_err() || total < 100,
        "connection must end short of Content-Length"
    );
    never.open();
}

#[tokio::test]
async fn connection_named_idempotency_key_is_dropped_consistently() {
    let h = Harness::new().await;
    let g = h.gateway(&one_service(""), &[("SK_CHECKOUT", SK)]).await;
    let addr = g.addr("checkout").await;
    let hdrs = [
        ("idempotency-key", "k-conn"),
        ("connection", "idempotency-key"),
    ];
    send(addr, "POST", "/v1/payment_intents", &hdrs, "{}").await;
    let second = send(addr, "POST", "/v1/payment_intents", &hdrs, "{}").await;
    // Stripped as hop-by-hop before idempotency looked: neither deduplicated
    // nor forwarded, so the gateway never claims a key PayMongo didn't get.
    assert!(second.header("idempotent-replayed").is_none());
    assert_eq!(h.upstream.count("POST", "/v1/payment_intents"), 2);
    assert!(
        h.upstream
            .requests()
            .iter()
            .all(|s| s.headers.get("idempotency-key").is_none())
    );
}

#[tokio::test]
async fn a_too_large_idempotent_answer_keeps_its_claim_until_fully_streamed() {
    let h = Harness::new().await;
    let gate = Gate::new();
    let g2 = gate.clone();
    let first = bytes::Bytes::from(format!("{{\"data\":\"{}", "a".repeat(3000)));
    let rest = bytes::Bytes::from(format!("{}\"}}", "b".repeat(3000)));
    let (f2, r2) = (first.clone(), rest.clone());
    h.upstream
        .behave(move |_, _| Reply::HeldBody(g2.clone(), f2.clone(), r2.clone()));
    let cfg = h.config(&format!(
        "{}\n[idempotency]\nmax_response = \"1KiB\"\nin_flight = \"reject\"\n",
        one_service("")
    ));
    let g = support::start_gateway(&cfg, h.dir.path(), &[("SK_CHECKOUT", SK)]).await;
    let addr = g.addr("checkout").await;

    let mut a = tokio::net::TcpStream::connect(addr).await.unwrap();
    a.write_all(b"POST /v1/payment_intents HTTP/1.1\r\nhost: x\r\nidempotency-key: big-1\r\ncontent-length: 2\r\n\r\n{}")
        .await
        .unwrap();
    read_until(&mut a, "aaaa").await;
    // A's answer is still arriving: a duplicate must not run a second call.
    let dup = send(
        addr,
        "POST",
        "/v1/payment_intents",
        &[("idempotency-key", "big-1")],
        "{}",
    )
    .await;
    assert_eq!(dup.status, 409, "claim must be held while the body streams");
    assert_eq!(h.upstream.count("POST", "/v1/payment_intents"), 1);

    gate.open();
    let body = read_until(&mut a, "bbb\"}").await;
    assert!(body.contains(&"b".repeat(3000)));
    // Fully streamed and not stored (too large): the claim is released, so
    // a retry is forwarded again (PayMongo dedupes on the key it received).
    let mut retry = send(
        addr,
        "POST",
        "/v1/payment_intents",
        &[("idempotency-key", "big-1")],
        "{}",
    )
    .await;
    for _ in 0..50 {
        if retry.status != 409 {
            break;
        }
        // The release happens in the background right after the body ends.
        tokio::task::yield_now().await;
        retry = send(
            addr,
            "POST",
            "/v1/payment_intents",
            &[("idempotency-key", "big-1")],
            "{}",
        )
        .await;
    }
    assert_eq!(retry.status, 200);
    assert_eq!(h.upstream.count("POST", "/v1/payment_intents"), 2);
}

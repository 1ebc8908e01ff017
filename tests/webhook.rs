//! Inbound webhooks end to end: the gateway's real HTTPS listener (rcgen
//! certificate), signed deliveries from an independent signer, and a real
//! inward receiver that records exactly what it got.
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

mod support;

use support::webhook::{
    self as wh, OLD_SECRET, PATH, SECRET, WebhookEnv, event, hmac_hex, live_header, now, sig,
    test_header,
};
use support::{FakeUpstream, Gate, Harness, Inward, InwardReply, TestCa, WAIT};
use tokio::io::{AsyncReadExt, AsyncWriteExt};

const EVT: &str = "evt_9ck3LzPaymentPaid01";

fn evt(n: u32) -> String {
    format!("evt_test{n:08}")
}

#[tokio::test]
async fn valid_test_mode_delivery_is_forwarded_byte_identical_with_event_headers() {
    let env = WebhookEnv::start("", "").await;
    let body = event(EVT, "payment.paid", false);
    let r = env.post_signed(SECRET, body.as_bytes()).await;
    assert_eq!(r.status, 200, "{r:?}");
    assert!(
        r.header("content-type")
            .unwrap()
            .starts_with("application/json")
    );
    let v = r.json();
    assert_eq!(v["status"], "delivered");
    assert_eq!(v["event_id"], EVT);

    let got = env.inward.received();
    assert_eq!(got.len(), 1);
    let g = &got[0];
    assert_eq!(g.method, "POST");
    assert_eq!(g.path, "/events");
    assert_eq!(
        &g.body[..],
        body.as_bytes(),
        "raw bytes, not a re-serialisation"
    );
    assert_eq!(g.header("content-type"), Some("application/json"));
    assert_eq!(g.header("x-paymongo-event-id"), Some(EVT));
    assert_eq!(g.header("x-paymongo-event-type"), Some("payment.paid"));
    assert!(
        g.header("paymongo-signature").is_none(),
        "the signature stays at the edge"
    );
    assert_eq!(wh::webhook_count(&env.metrics().await, "accepted"), 1);
}

#[tokio::test]
async fn plain_http_to_the_tls_listener_fails() {
    let env = WebhookEnv::start("", "").await;
    let body = event(EVT, "payment.paid", false);
    let h = test_header(SECRET, now(), body.as_bytes());
    let r = support::client::send_bytes(
        env.addr,
        "POST",
        PATH,
        &[("paymongo-signature", &h)],
        body.as_bytes(),
    )
    .await;
    assert!(r.is_err(), "plain HTTP must not get an HTTP answer: {r:?}");
    assert_eq!(env.inward.count(), 0);
}

#[tokio::test]
async fn forged_malformed_and_stale_signatures_are_4xx_and_never_forwarded() {
    let env = WebhookEnv::start("", "").await;
    let body = event(EVT, "payment.paid", false);
    let b = body.as_bytes();
    let t = now();
    let good = sig(SECRET, t, b);
    let mut flipped = b.to_vec();
    flipped[body.find("10000").unwrap()] ^= 0x01; // amount 10000 -> 00000
    let one = |v: String| vec![("paymongo-signature", v)];

    struct Case {
        name: &'static str,
        headers: Vec<(&'static str, String)>,
        body: Vec<u8>,
        status: u16,
        code: &'static str,
    }
    let case = |name, headers, status, code| Case {
        name,
        headers,
        body: b.to_vec(),
        status,
        code,
    };
    let cases = vec![
        case(
            "wrong secret",
            one(test_header("whsk_wrong", t, b)),
            401,
            "signature_invalid",
        ),
        case(
            "valid only in li while in test mode",
            one(live_header(SECRET, t, b)),
            401,
            "signature_invalid",
        ),
        case(
            "valid li next to a wrong te",
            one(format!("t={t},te={},li={good}", "0".repeat(64))),
            401,
            "signature_invalid",
        ),
        Case {
            name: "one flipped body byte",
            headers: one(test_header(SECRET, t, b)),
            body: flipped,
            status: 401,
            code: "signature_invalid",
        },
        case(
            "timestamp older than the tolerance",
            one(test_header(SECRET, t - 400, b)),
            401,
            "timestamp_out_of_tolerance",
        ),
        case(
            "timestamp newer than the tolerance",
            one(test_header(SECRET, t + 400, b)),
            401,
            "timestamp_out_of_tolerance",
        ),
        case(
            "signature for another timestamp",
            one(format!("t={},te={good},li=", t - 1)),
            401,
            "signature_invalid",
        ),
        case("missing header", vec![], 400, "signature_missing"),
        case("empty header", one(String::new()), 400, "signature_missing"),
        case(
            "garbage header",
            one("garbage".into()),
            400,
            "signature_missing",
        ),
        case(
            "truncated header",
            one(format!("t={t},te={}", &good[..20])),
            400,
            "signature_missing",
        ),
        case(
            "truncated after t",
            one(format!("t={t}")),
            400,
            "signature_missing",
        ),
        case(
            "duplicated header lines",
            vec![
                ("paymongo-signature", test_header(SECRET, t, b)),
                ("paymongo-signature", test_header(SECRET, t, b)),
            ],
            400,
            "signature_missing",
        ),
        case(
            "duplicated te key",
            one(format!("t={t},te={good},te={good},li=")),
            400,
            "signature_missing",
        ),
        case(
            "duplicated t key",
            one(format!("t={t},t={t},te={good},li=")),
            400,
            "signature_missing",
        ),
        case(
            "oversized header",
            one(format!("t={t},te={good},li=,x={}", "a".repeat(600))),
            400,
            "signature_missing",
        ),
        case(
            "non-hex signature",
            one(format!("t={t},te={},li=", "zz".repeat(32))),
            400,
            "signature_missing",
        ),
        case(
            "non-numeric timestamp",
            one(format!("t=now,te={good},li=")),
            400,
            "signature_missing",
        ),
        case(
            "hmac-hex value on a paymongo endpoint",
            one(hmac_hex(SECRET, &[b])),
            400,
            "signature_missing",
        ),
    ];
    for c in &cases {
        let headers: Vec<(&str, &str)> = c.headers.iter().map(|(k, v)| (*k, v.as_str())).collect();
        let r = env.post(&headers, &c.body).await;
        assert_eq!(r.status.as_u16(), c.status, "{}: {r:?}", c.name);
        assert_eq!(r.error_code(), c.code, "{}", c.name);
        assert!(
            r.header("content-type")
                .unwrap()
                .starts_with("application/json")
        );
        assert!(r.body.len() < 300, "{}: small body", c.name);
        let detail = r.json()["errors"][0]["detail"].as_str().unwrap().to_owned();
        assert!(
            !detail.contains(&good) && !detail.contains(SECRET),
            "{}: {detail}",
            c.name
        );
    }
    assert_eq!(
        env.inward.count(),
        0,
        "nothing unverified reaches the inward service"
    );
    let m = env.metrics().await;
    assert_eq!(wh::webhook_count(&m, "bad_signature"), 5, "{m}");
    assert_eq!(wh::webhook_count(&m, "stale"), 2);
    assert_eq!(wh::webhook_count(&m, "malformed"), 12);
    assert_eq!(wh::webhook_count(&m, "accepted"), 0);
}

#[tokio::test]
async fn previous_secret_listed_second_is_accepted() {
    let h = Harness::new().await;
    let inward = Inward::start().await;
    let cfg = wh::config(&h, &inward.url("/events"), "", "").replace(
        r#"secrets = [{ env = "WHSK" }]"#,
        r#"secrets = [{ env = "WHSK" }, { file = "old.whsk" }]"#,
    );
    h.secret_file("old.whsk", OLD_SECRET);
    let env = WebhookEnv::start_with(h, inward, &cfg, &[("WHSK", SECRET)]).await;
    let r = env
        .post_signed(OLD_SECRET, event(&evt(1), "payment.paid", false).as_bytes())
        .await;
    assert_eq!(r.status, 200, "{r:?}");
    let r = env
        .post_signed(SECRET, event(&evt(2), "payment.paid", false).as_bytes())
        .await;
    assert_eq!(r.status, 200, "{r:?}");
    let r = env
        .post_signed(
            "whsk_neither",
            event(&evt(3), "payment.paid", false).as_bytes(),
        )
        .await;
    assert_eq!(r.status, 401);
    assert_eq!(env.inward.count(), 2);
}

/// Writes a request head (and maybe some body) on a raw TLS connection and
/// returns whatever answer arrives, without ever sending the rest.
async fn raw_exchange(env: &WebhookEnv, head_and_some_body: &[u8]) -> String {
    let mut s = support::client::connect_tls(env.addr, &env.h.ca)
        .await
        .unwrap();
    s.write_all(head_and_some_body).await.unwrap();
    s.flush().await.unwrap();
    let mut got = Vec::new();
    let mut buf = [0u8; 4096];
    tokio::time::timeout(WAIT, async {
        loop {
            match s.read(&mut buf).await {
                Ok(0) | Err(_) => break,
                Ok(n) => {
                    got.extend_from_slice(&buf[..n]);
                    let text = String::from_utf8_lossy(&got);
                    if let Some(end) = text.find("\r\n\r\n") {
                        if text[end..].contains('}') {
                            break;
                        }
                    }
                }
            }
        }
    })
    .await
    .expect("the gateway must answer without waiting for the rest of the body");
    String::from_utf8_lossy(&got).into_owned()
}

#[tokio::test]
async fn body_over_max_body_is_413_without_reading_it_all() {
    let env = WebhookEnv::start("max_body = \"1KiB\"", "").await;
    let sig_header = test_header(SECRET, now(), b"{}");

    // Declared too large: refused on the head alone; no body byte is ever sent.
    let head = format!(
        "POST {PATH} HTTP/1.1\r\nhost: localhost\r\ncontent-type: application/json\r\n\
         paymongo-signature: {sig_header}\r\ncontent-length: 1025\r\n\r\n"
    );
    let answer = raw_exchange(&env, head.as_bytes()).await;
    assert!(answer.starts_with("HTTP/1.1 413"), "{answer}");
    assert!(answer.contains("payload_too_large"), "{answer}");

    // A 1 GB declared length gets the same answer at once.
    let head = head.replace("content-length: 1025", "content-length: 1000000000");
    assert!(
        raw_exchange(&env, head.as_bytes())
            .await
            .starts_with("HTTP/1.1 413")
    );

    // Chunked, no length: refused once 1 KiB is crossed; the terminating
    // chunk is never sent.
    let mut req = format!(
        "POST {PATH} HTTP/1.1\r\nhost: localhost\r\ncontent-type: application/json\r\n\
         paymongo-signature: {sig_header}\r\ntransfer-encoding: chunked\r\n\r\n"
    )
    .into_bytes();
    for _ in 0..3 {
        req.extend_from_slice(b"200\r\n");
        req.extend_from_slice(&[b' '; 0x200]);
        req.extend_from_slice(b"\r\n");
    }
    let answer = raw_exchange(&env, &req).await;
    assert!(answer.starts_with("HTTP/1.1 413"), "{answer}");

    // One chunk announcing far more than the limit, only partly sent.
    let mut req = format!(
        "POST {PATH} HTTP/1.1\r\nhost: localhost\r\npaymongo-signature: {sig_header}\r\n\
         transfer-encoding: chunked\r\n\r\n100000\r\n"
    )
    .into_bytes();
    req.extend_from_slice(&[b' '; 2048]);
    assert!(raw_exchange(&env, &req).await.starts_with("HTTP/1.1 413"));

    // Through an ordinary client, one byte over: 413; exactly at the limit: accepted.
    let mut body = event(&evt(1), "payment.paid", false);
    body.push_str(&" ".repeat(1025 - body.len()));
    let r = env.post_signed(SECRET, body.as_bytes()).await;
    assert_eq!(r.status, 413);
    assert_eq!(r.error_code(), "payload_too_large");
    body.pop();
    assert_eq!(body.len(), 1024);
    let r = env.post_signed(SECRET, body.as_bytes()).await;
    assert_eq!(r.status, 200, "{r:?}");
    assert_eq!(
        env.inward.count(),
        1,
        "only the in-limit delivery went inward"
    );
    assert_eq!(wh::webhook_count(&env.metrics().await, "too_large"), 5);
}

#[tokio::test]
async fn same_event_twice_is_acknowledged_twice_and_forwarded_once() {
    let env = WebhookEnv::start("", "").await;
    let body = event(EVT, "payment.paid", false);
    let first = env.post_signed(SECRET, body.as_bytes()).await;
    assert_eq!(first.status, 200);
    assert_eq!(first.json()["status"], "delivered");
    // PayMongo's retry carries a fresh timestamp and signature.
    let again = env.post_signed(SECRET, body.as_bytes()).await;
    assert_eq!(again.status, 200, "{again:?}");
    assert_eq!(again.json()["status"], "duplicate");
    assert_eq!(again.json()["event_id"], EVT);
    assert_eq!(env.inward.count(), 1);
    // A different event is forwarded.
    let other = env
        .post_signed(SECRET, event(&evt(2), "payment.paid", false).as_bytes())
        .await;
    assert_eq!(other.status, 200);
    assert_eq!(env.inward.count(), 2);
    let m = env.metrics().await;
    assert_eq!(wh::webhook_count(&m, "duplicate"), 1);
    assert_eq!(wh::webhook_count(&m, "accepted"), 2);
}

#[tokio::test]
async fn inward_500_is_502_not_marked_delivered_and_the_retry_is_forwarded() {
    let env = WebhookEnv::start("", "").await;
    env.inward
        .behave(|_, n| InwardReply::Status(if n == 1 { 500 } else { 200 }));
    let body = event(EVT, "payment.paid", false);
    let r = env.post_signed(SECRET, body.as_bytes()).await;
    assert_eq!(r.status, 502, "{r:?}");
    assert_eq!(r.error_code(), "upstream_unavailable");
    assert!(
        !String::from_utf8_lossy(&r.body).contains("127.0.0.1"),
        "no internal address in details"
    );
    assert_eq!(env.inward.count(), 1);

    let r = env.post_signed(SECRET, body.as_bytes()).await;
    assert_eq!(
        r.status, 200,
        "the retry after recovery is forwarded: {r:?}"
    );
    assert_eq!(r.json()["status"], "delivered");
    assert_eq!(env.inward.count(), 2);
    let r = env.post_signed(SECRET, body.as_bytes()).await;
    assert_eq!(r.json()["status"], "duplicate");
    assert_eq!(env.inward.count(), 2);
    assert_eq!(wh::webhook_count(&env.metrics().await, "forward_failed"), 1);
}

#[tokio::test]
async fn inward_3xx_and_4xx_are_failures_too() {
    let env = WebhookEnv::start("", "").await;
    env.inward
        .behave(|_, n| InwardReply::Status(if n == 1 { 302 } else { 404 }));
    let body = event(EVT, "payment.paid", false);
    assert_eq!(env.post_signed(SECRET, body.as_bytes()).await.status, 502);
    assert_eq!(env.post_signed(SECRET, body.as_bytes()).await.status, 502);
    assert_eq!(env.inward.count(), 2, "each retry is forwarded again");
}

#[tokio::test]
async fn inward_down_is_502() {
    let h = Harness::new().await;
    let port = std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port();
    let cfg = wh::config(&h, &format!("http://127.0.0.1:{port}/events"), "", "");
    let env = WebhookEnv::start_with(h, Inward::start().await, &cfg, &[("WHSK", SECRET)]).await;
    let r = env
        .post_signed(SECRET, event(EVT, "payment.paid", false).as_bytes())
        .await;
    assert_eq!(r.status, 502, "{r:?}");
    assert_eq!(r.error_code(), "upstream_unavailable");
}

#[tokio::test]
async fn slow_inward_is_504_and_the_retry_is_forwarded_again() {
    let env = WebhookEnv::start("", "forward_timeout = \"300ms\"").await;
    let gate = Gate::new();
    let g = gate.clone();
    env.inward.behave(move |_, n| {
        if n == 1 {
            InwardReply::Hold(g.clone(), Box::new(InwardReply::Status(200)))
        } else {
            InwardReply::Status(200)
        }
    });
    let body = event(EVT, "payment.paid", false);
    let r = env.post_signed(SECRET, body.as_bytes()).await;
    assert_eq!(r.status, 504, "{r:?}");
    assert_eq!(r.error_code(), "upstream_timeout");
    assert_eq!(env.inward.count(), 1);
    gate.open();
    let r = env.post_signed(SECRET, body.as_bytes()).await;
    assert_eq!(
        r.status, 200,
        "a timed-out delivery is not marked delivered: {r:?}"
    );
    assert_eq!(r.json()["status"], "delivered");
    assert_eq!(env.inward.count(), 2);
}

#[tokio::test]
async fn concurrent_duplicate_gets_409_and_the_event_is_forwarded_once() {
    let env = std::sync::Arc::new(WebhookEnv::start("", "").await);
    let gate = Gate::new();
    let g = gate.clone();
    env.inward
        .behave(move |_, _| InwardReply::Hold(g.clone(), Box::new(InwardReply::Status(200))));
    let body = event(EVT, "payment.paid", false);
    let first = {
        let env = env.clone();
        let body = body.clone();
        tokio::spawn(async move { env.post_signed(SECRET, body.as_bytes()).await })
    };
    tokio::time::timeout(WAIT, env.inward.wait_for(1))
        .await
        .unwrap();

    let dup = env.post_signed(SECRET, body.as_bytes()).await;
    assert_eq!(dup.status, 409, "{dup:?}");
    assert_eq!(dup.error_code(), "event_in_progress");

    gate.open();
    let first = tokio::time::timeout(WAIT, first).await.unwrap().unwrap();
    assert_eq!(first.status, 200);
    let later = env.post_signed(SECRET, body.as_bytes()).await;
    assert_eq!(later.json()["status"], "duplicate");
    assert_eq!(env.inward.count(), 1);
}

#[tokio::test]
async fn a_delivery_finishes_and_is_recorded_even_if_paymongo_hangs_up() {
    let env = std::sync::Arc::new(WebhookEnv::start("", "").await);
    let gate = Gate::new();
    let g = gate.clone();
    env.inward
        .behave(move |_, _| InwardReply::Hold(g.clone(), Box::new(InwardReply::Status(200))));
    let body = event(EVT, "payment.paid", false);
    let client = {
        let env = env.clone();
        let body = body.clone();
        tokio::spawn(async move { env.post_signed(SECRET, body.as_bytes()).await })
    };
    tokio::time::timeout(WAIT, env.inward.wait_for(1))
        .await
        .unwrap();
    client.abort(); // PayMongo gives up on the connection
    let _ = client.await;
    gate.open();
    // The claim resolves once the detached delivery records its outcome;
    // until then a retry is told "in progress". Bounded by WAIT.
    let r = tokio::time::timeout(WAIT, async {
        loop {
            let r = env.post_signed(SECRET, body.as_bytes()).await;
            if r.status != 409 {
                return r;
            }
            tokio::task::yield_now().await;
        }
    })
    .await
    .expect("the claim was never resolved");
    assert_eq!(r.status, 200, "{r:?}");
    assert_eq!(
        r.json()["status"],
        "duplicate",
        "delivered once, recorded, not sent again"
    );
    assert_eq!(env.inward.count(), 1);
}

#[tokio::test]
async fn verified_but_unusable_events_are_400_and_never_forwarded() {
    let env = WebhookEnv::start("", "").await;
    for (body, code) in [
        (event(EVT, "payment.paid", true), "event_invalid"), // live event, test gateway
        ("{}".to_owned(), "event_invalid"),
        ("not json".to_owned(), "event_invalid"),
        (event("evt bad id", "payment.paid", false), "event_invalid"),
    ] {
        let r = env.post_signed(SECRET, body.as_bytes()).await;
        assert_eq!(r.status, 400, "{body}: {r:?}");
        assert_eq!(r.error_code(), code);
    }
    assert_eq!(env.inward.count(), 0);
    let m = env.metrics().await;
    assert_eq!(wh::webhook_count(&m, "wrong_mode"), 1);
    assert_eq!(wh::webhook_count(&m, "malformed"), 3);
}

#[tokio::test]
async fn unknown_path_is_404_and_wrong_method_is_405() {
    let env = WebhookEnv::start("", "").await;
    let body = event(EVT, "payment.paid", false);
    let h = test_header(SECRET, now(), body.as_bytes());
    let r = env
        .post_to(
            "/webhooks/other",
            &[("paymongo-signature", &h)],
            body.as_bytes(),
        )
        .await;
    assert_eq!(r.status, 404);
    assert_eq!(r.error_code(), "resource_not_found");
    let r = env
        .post_to(
            "/webhooks/paymongo/",
            &[("paymongo-signature", &h)],
            body.as_bytes(),
        )
        .await;
    assert_eq!(r.status, 404, "paths match exactly");
    for m in ["GET", "PUT", "DELETE"] {
        let r = support::client::send_tls(
            env.addr,
            &env.h.ca,
            m,
            PATH,
            &[("paymongo-signature", &h)],
            body.as_bytes(),
        )
        .await;
        assert_eq!(r.status, 405, "{m}");
        assert_eq!(r.header("allow"), Some("POST"));
        assert_eq!(r.error_code(), "method_not_allowed");
    }
    // The query string is not part of the match.
    let r = env
        .post_to(
            &format!("{PATH}?source=paymongo"),
            &[("paymongo-signature", &h)],
            body.as_bytes(),
        )
        .await;
    assert_eq!(r.status, 200, "{r:?}");
    assert_eq!(env.inward.count(), 1);
    assert_eq!(wh::webhook_count(&env.metrics().await, "not_found"), 5);
}

#[tokio::test]
async fn hmac_hex_scheme() {
    let env = WebhookEnv::start("", "signature = \"hmac-hex\"").await;
    let body = event(EVT, "payment.paid", false);
    let b = body.as_bytes();
    let r = env
        .post(&[("paymongo-signature", &hmac_hex(SECRET, &[b]))], b)
        .await;
    assert_eq!(r.status, 200, "{r:?}");
    let r = env
        .post(&[("paymongo-signature", &hmac_hex("whsk_wrong", &[b]))], b)
        .await;
    assert_eq!(r.status, 401);
    assert_eq!(r.error_code(), "signature_invalid");
    let r = env
        .post(&[("paymongo-signature", &test_header(SECRET, now(), b))], b)
        .await;
    assert_eq!(
        r.status, 400,
        "a paymongo-scheme header is not an hmac-hex value"
    );
    let r = env.post(&[], b).await;
    assert_eq!(r.status, 400);
    assert_eq!(env.inward.count(), 1);
}

#[tokio::test]
async fn live_mode_checks_li_and_livemode() {
    let h = Harness::new().await;
    let inward = Inward::start().await;
    let cfg = wh::config(&h, &inward.url("/events"), "", "");
    let cfg = format!(
        "{}\n{cfg}",
        support::base_config(h.upstream.port(), &h.ca_file)
    )
    .replacen("mode = \"test\"", "mode = \"live\"", 1);
    let g = support::start_gateway(&cfg, h.dir.path(), &[("WHSK", SECRET)]).await;
    let addr = g.gw.webhooks_addr().await.unwrap().tcp().unwrap();
    let post = |hdr: String, body: String| {
        let ca = &h.ca;
        async move {
            support::client::send_tls(
                addr,
                ca,
                "POST",
                PATH,
                &[("paymongo-signature", &hdr)],
                body.as_bytes(),
            )
            .await
        }
    };
    let live = event(&evt(1), "payment.paid", true);
    let r = post(live_header(SECRET, now(), live.as_bytes()), live.clone()).await;
    assert_eq!(r.status, 200, "{r:?}");
    let r = post(test_header(SECRET, now(), live.as_bytes()), live.clone()).await;
    assert_eq!(r.status, 401, "te does not count in live mode");
    let test_evt = event(&evt(2), "payment.paid", false);
    let r = post(live_header(SECRET, now(), test_evt.as_bytes()), test_evt).await;
    assert_eq!(r.status, 400, "a test event in live mode");
    assert_eq!(inward.count(), 1);
}

#[tokio::test]
async fn forwards_over_a_unix_socket() {
    let h = Harness::new().await;
    let sock = h.dir.path().join("inward.sock");
    let inward = Inward::start_unix(&sock).await;
    let cfg = wh::config(
        &h,
        "http://billing.internal/paymongo/events",
        "",
        &format!("forward_socket = \"{}\"", sock.display()),
    );
    let env = WebhookEnv::start_with(h, inward, &cfg, &[("WHSK", SECRET)]).await;
    let body = event(EVT, "source.chargeable", false);
    let r = env.post_signed(SECRET, body.as_bytes()).await;
    assert_eq!(r.status, 200, "{r:?}");
    let got = &env.inward.received()[0];
    assert_eq!(got.path, "/paymongo/events");
    assert_eq!(got.header("host"), Some("billing.internal"));
    assert_eq!(
        got.header("x-paymongo-event-type"),
        Some("source.chargeable")
    );
    assert_eq!(&got.body[..], body.as_bytes());
}

#[tokio::test]
async fn https_forwarding_validates_the_inward_certificate() {
    // Trusted through forward_ca_file: delivered.
    let h = Harness::new().await;
    let tls_inward = FakeUpstream::start(&h.ca.leaf(&["localhost"])).await;
    let cfg = wh::config(
        &h,
        &format!("https://localhost:{}/events", tls_inward.port()),
        "",
        "forward_ca_file = \"ca.pem\"",
    );
    let env = WebhookEnv::start_with(h, Inward::start().await, &cfg, &[("WHSK", SECRET)]).await;
    let body = event(EVT, "payment.paid", false);
    let r = env.post_signed(SECRET, body.as_bytes()).await;
    assert_eq!(r.status, 200, "{r:?}");
    let seen = tls_inward.requests();
    assert_eq!(seen.len(), 1);
    assert_eq!(&seen[0].body[..], body.as_bytes());
    assert_eq!(seen[0].headers.get("x-paymongo-event-id").unwrap(), EVT);

    // A certificate from a CA nobody configured: 502, and no request reaches it.
    let h = Harness::new().await;
    let rogue = TestCa::new("rogue CA");
    let rogue_inward = FakeUpstream::start(&rogue.leaf(&["localhost"])).await;
    let cfg = wh::config(
        &h,
        &format!("https://localhost:{}/events", rogue_inward.port()),
        "",
        "forward_ca_file = \"ca.pem\"",
    );
    let env = WebhookEnv::start_with(h, Inward::start().await, &cfg, &[("WHSK", SECRET)]).await;
    let r = env.post_signed(SECRET, body.as_bytes()).await;
    assert_eq!(r.status, 502, "{r:?}");
    assert_eq!(rogue_inward.total(), 0);
    // Not marked delivered: once the inward service is trusted it would be retried.
    assert_eq!(env.post_signed(SECRET, body.as_bytes()).await.status, 502);
}

#[tokio::test]
async fn the_same_event_reaches_each_endpoint_once() {
    let h = Harness::new().await;
    let inward = Inward::start().await;
    let cfg = format!(
        "{}\n[[webhooks.endpoint]]\npath = \"/webhooks/second\"\nsecrets = [{{ env = \"WHSK2\" }}]\nforward_to = \"{}\"\n",
        wh::config(&h, &inward.url("/first"), "", ""),
        inward.url("/second")
    );
    let env =
        WebhookEnv::start_with(h, inward, &cfg, &[("WHSK", SECRET), ("WHSK2", OLD_SECRET)]).await;
    let body = event(EVT, "payment.paid", false);
    let b = body.as_bytes();
    assert_eq!(
        env.post_signed(SECRET, b).await.json()["status"],
        "delivered"
    );
    let h2 = test_header(OLD_SECRET, now(), b);
    let r = env
        .post_to("/webhooks/second", &[("paymongo-signature", &h2)], b)
        .await;
    assert_eq!(r.json()["status"], "delivered", "{r:?}");
    // Each endpoint has its own secret.
    let r = env
        .post_to(
            "/webhooks/second",
            &[("paymongo-signature", &test_header(SECRET, now(), b))],
            b,
        )
        .await;
    assert_eq!(r.status, 401);
    assert_eq!(
        env.post_signed(SECRET, b).await.json()["status"],
        "duplicate"
    );
    let paths: Vec<_> = env
        .inward
        .received()
        .iter()
        .map(|r| r.path.clone())
        .collect();
    assert_eq!(paths, ["/first", "/second"]);
}

#[tokio::test]
async fn plaintext_listener_when_configured() {
    let h = Harness::new().await;
    let inward = Inward::start().await;
    let cfg = format!(
        "\n[webhooks]\nlisten = \"127.0.0.1:0\"\nplaintext = true\n\n[[webhooks.endpoint]]\npath = \"{PATH}\"\n\
         secrets = [{{ env = \"WHSK\" }}]\nforward_to = \"{}\"\n",
        inward.url("/events")
    );
    let g = h.gateway(&cfg, &[("WHSK", SECRET)]).await;
    let addr = g.gw.webhooks_addr().await.unwrap().tcp().unwrap();
    let body = event(EVT, "payment.paid", false);
    let hdr = test_header(SECRET, now(), body.as_bytes());
    let r = support::client::send_bytes(
        addr,
        "POST",
        PATH,
        &[("paymongo-signature", &hdr)],
        body.as_bytes(),
    )
    .await
    .unwrap();
    assert_eq!(r.status, 200, "{r:?}");
    // And TLS is not spoken there.
    assert!(support::client::connect_tls(addr, &h.ca).await.is_err());
    assert_eq!(inward.count(), 1);
}

#[tokio::test]
async fn a_slow_body_is_cut_off_with_408() {
    let env = WebhookEnv::start("read_timeout = \"1s\"", "").await;
    let head = format!(
        "POST {PATH} HTTP/1.1\r\nhost: localhost\r\npaymongo-signature: t=1,te=,li=\r\ncontent-length: 100\r\n\r\n{{\"data\""
    );
    let answer = raw_exchange(&env, head.as_bytes()).await;
    assert!(answer.starts_with("HTTP/1.1 408"), "{answer}");
    assert!(answer.contains("request_timeout"));
    assert_eq!(env.inward.count(), 0);
}

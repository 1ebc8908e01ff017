//! The real binary: graceful shutdown, secrets never printed, the offline demo.
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

mod support;

use base64::Engine as _;
use support::client::{send_h2c, try_send};
use support::gw::Harness;
use support::{Gate, GatewayProcess, Reply, send};

const SK: &str = "sk_test_PROCESSsecretVALUE0001";
const SK_FILE: &str = "sk_test_FILEsecretVALUE0002";

fn write_config(h: &Harness, level: &str) -> std::path::PathBuf {
    let sk_file = h.secret_file("billing.sk", SK_FILE);
    let text = h
        .config(&format!(
            r#"
[[service]]
name = "checkout"
listen = "127.0.0.1:0"
secret_key = {{ env = "PMGW_TEST_SK" }}
allow = ["POST /v1/payment_intents", "GET /v1/payment_intents/*"]
max_body = "1KiB"

[[service]]
name = "billing"
listen = "127.0.0.1:0"
secret_key = {{ file = "{}" }}
"#,
            sk_file.display()
        ))
        .replace("level = \"debug\"", &format!("level = \"{level}\""));
    let path = h.dir.path().join("gateway.toml");
    std::fs::write(&path, text).unwrap();
    path
}

#[tokio::test]
async fn sigterm_lets_the_in_flight_request_finish_then_exits_zero() {
    let h = Harness::new().await;
    let gate = Gate::new();
    let g2 = gate.clone();
    h.upstream.behave(move |_, _| {
        Reply::Hold(
            g2.clone(),
            Box::new(Reply::Json(200, r#"{"data":{"id":"pi_slow"}}"#.into())),
        )
    });
    let cfg = write_config(&h, "info");
    let mut gw = GatewayProcess::spawn(
        &["--config", cfg.to_str().unwrap()],
        &[("PMGW_TEST_SK", SK)],
    );
    let addr = gw.listening("service checkout").await;

    let in_flight =
        tokio::spawn(
            async move { send(addr, "GET", "/v1/payment_intents/pi_slow", &[], "").await },
        );
    h.upstream.wait_for_requests(1).await;
    gw.signal("TERM");
    gw.wait_for_line(|l| l.contains("SIGTERM")).await;
    gw.wait_for_line(|l| l.contains("stopped accepting") && l.contains("service checkout"))
        .await;

    // The listener is closed: new connections are refused while the old one drains.
    assert!(
        try_send(addr, "GET", "/v1/payment_intents/pi_new", &[], "")
            .await
            .is_err()
    );

    gate.open();
    let r = in_flight.await.unwrap();
    assert_eq!(r.status, 200);
    assert_eq!(r.json()["data"]["id"], "pi_slow");
    let status = gw.wait_exit().await;
    assert!(status.success(), "exit status {status:?}\n{}", gw.output());
    assert_eq!(h.upstream.total(), 1);
}

#[tokio::test]
async fn secret_values_never_appear_in_anything_the_gateway_prints() {
    let h = Harness::new().await;
    h.upstream.behave(|s, _| {
        if s.path.ends_with("/reset") {
            Reply::Reset
        } else {
            Reply::Json(200, "{}".into())
        }
    });
    // trace: the most talkative the gateway and its libraries can be.
    let cfg = write_config(&h, "trace");
    let mut gw = GatewayProcess::spawn(
        &["--config", cfg.to_str().unwrap()],
        &[("PMGW_TEST_SK", SK)],
    );
    let a = gw.listening("service checkout").await;
    let b = gw.listening("service billing").await;
    let admin = gw.listening("admin").await;

    send(
        a,
        "POST",
        "/v1/payment_intents",
        &[("authorization", "Basic ZXZpbDo=")],
        "{}",
    )
    .await;
    send(
        a,
        "GET",
        "/v1/payment_intents/pi_1",
        &[("connection", "authorization")],
        "",
    )
    .await;
    send(a, "POST", "/v1/refunds", &[], "{}").await;
    send(a, "POST", "/v1/payment_intents", &[], &"x".repeat(2048)).await;
    send(b, "GET", "/v1/anything/reset", &[], "").await;
    send_h2c(b, "POST", "/v2/things", &[("idempotency-key", "k-1")], "{}").await;
    let metrics = send(admin, "GET", "/metrics", &[], "").await;
    assert_eq!(h.upstream.total(), 4);

    // `check` on a file with a literal key, and with a key of the wrong mode.
    let bad = h.dir.path().join("bad.toml");
    std::fs::write(
        &bad,
        format!("mode = \"live\"\n[[service]]\nname = \"x\"\nlisten = \"127.0.0.1:0\"\nsecret_key = \"{SK}\"\n"),
    )
    .unwrap();
    let mut chk = GatewayProcess::spawn(&["check", "-c", bad.to_str().unwrap()], &[]);
    assert!(!chk.wait_exit().await.success());
    chk.wait_for_line(|l| l.contains("secret_key")).await;
    let mut chk2 = GatewayProcess::spawn(
        &["check", "-c", cfg.to_str().unwrap()],
        &[("PMGW_TEST_SK", "sk_live_WRONGmodeSECRET9")],
    );
    assert!(!chk2.wait_exit().await.success());
    chk2.wait_for_line(|l| l.contains("live key")).await;

    // A live reload of a file where the key value was pasted in place of
    // the variable name: refused, and the refusal must not quote it.
    let good = std::fs::read_to_string(&cfg).unwrap();
    std::fs::write(
        &cfg,
        good.replace(
            "{ env = \"PMGW_TEST_SK\" }",
            &format!("{{ env = \"{SK}\" }}"),
        ),
    )
    .unwrap();
    gw.signal("HUP");
    gw.wait_for_line(|l| l.contains("reload refused") && l.contains("SIGHUP"))
        .await;

    gw.signal("TERM");
    assert!(gw.wait_exit().await.success());
    gw.wait_for_line(|l| l.contains("shutdown complete")).await;

    let everything = format!(
        "{}\n{}\n{}\n{}",
        gw.output(),
        chk.output(),
        chk2.output(),
        String::from_utf8_lossy(&metrics.body)
    );
    assert!(everything.len() > 2000, "expected plenty of trace output");
    let b64 = |k: &str| base64::engine::general_purpose::STANDARD.encode(format!("{k}:"));
    for secret in [
        SK.to_owned(),
        SK_FILE.to_owned(),
        "sk_live_WRONGmodeSECRET9".to_owned(),
        b64(SK),
        b64(SK_FILE),
        // Also no fragment long enough to matter.
        SK["sk_test_".len()..].to_owned(),
        SK_FILE["sk_test_".len()..].to_owned(),
    ] {
        assert!(
            !everything.contains(&secret),
            "secret material `{secret}` was printed"
        );
    }
}

#[tokio::test]
async fn demo_runs_offline_and_shows_the_gateway_working() {
    let mut demo = GatewayProcess::spawn(&["demo", "--port", "0"], &[]);
    let line = demo
        .wait_for_line(|l| l.contains("service \"demo\":"))
        .await;
    let url = line
        .split_whitespace()
        .find(|w| w.starts_with("http://"))
        .unwrap();
    let addr: std::net::SocketAddr = url.trim_start_matches("http://").parse().unwrap();

    let create = send(
        addr,
        "POST",
        "/v1/payment_intents",
        &[("content-type", "application/json")],
        r#"{"data":{"attributes":{"amount":10000,"currency":"PHP","description":"t"}}}"#,
    )
    .await;
    assert_eq!(create.status, 200, "{create:?}");
    let id = create.json()["data"]["id"].as_str().unwrap().to_owned();
    let read = send(
        addr,
        "GET",
        &format!("/v1/payment_intents/{id}"),
        &[("authorization", "Basic ZXZpbDo=")],
        "",
    )
    .await;
    assert_eq!(
        read.status, 200,
        "caller's own Authorization is replaced by the demo key"
    );
    assert_eq!(read.json()["data"]["id"], id.as_str());
    let refused = send(addr, "POST", "/v1/refunds", &[], "{}").await;
    assert_eq!(refused.status, 403);
    assert_eq!(refused.error_code(), "route_not_allowed");

    demo.signal("INT");
    assert!(demo.wait_exit().await.success(), "{}", demo.output());
}

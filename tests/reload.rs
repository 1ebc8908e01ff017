//! Live reload (file watch and SIGHUP), admin endpoints and metrics.
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

mod support;

use support::client::basic;

use std::path::{Path, PathBuf};
use std::sync::Arc;

use paymongo_gateway::config::Config;
use paymongo_gateway::gateway::ListenerId;
use paymongo_gateway::{Gateway, reload};
use support::client::try_send;
use support::gw::Harness;
use support::{Gate, GatewayProcess, Reply, WAIT, send};

const SK1: &str = "sk_test_reloadKEYone111";
const SK2: &str = "sk_test_reloadKEYtwo222";

fn services(allow: &str) -> String {
    format!(
        r#"
[[service]]
name = "checkout"
listen = "127.0.0.1:0"
secret_key = {{ file = "checkout.sk" }}
allow = {allow}
"#
    )
}

/// Replaces a file the way editors do: write a sibling, then rename over it.
fn replace_file(path: &Path, text: &str) {
    let tmp = path.with_extension("tmp~");
    std::fs::write(&tmp, text).unwrap();
    std::fs::rename(&tmp, path).unwrap();
}

struct Live {
    gw: Arc<Gateway>,
    path: PathBuf,
}

impl Live {
    async fn start(h: &Harness, extra: &str) -> Self {
        h.secret_file("checkout.sk", SK1);
        let path = h.dir.path().join("gateway.toml");
        std::fs::write(&path, h.config(extra)).unwrap();
        let gw = Arc::new(Gateway::start(Config::load(&path).unwrap()).await.unwrap());
        Self { gw, path }
    }

    async fn addr(&self, svc: &str) -> std::net::SocketAddr {
        self.gw.service_addr(svc).await.unwrap().tcp().unwrap()
    }

    async fn admin(&self) -> std::net::SocketAddr {
        self.gw
            .addr(&ListenerId::Admin)
            .await
            .unwrap()
            .tcp()
            .unwrap()
    }

    /// Waits (bounded) until the generation reaches `g`.
    async fn until_generation(&self, g: u64) {
        let mut rx = self.gw.shared().generation();
        tokio::time::timeout(WAIT, rx.wait_for(|x| *x >= g))
            .await
            .unwrap_or_else(|_| panic!("generation {g} never arrived"))
            .unwrap();
    }

    async fn until_attempts(&self, n: u64) {
        let mut rx = self.gw.shared().reload_attempts();
        tokio::time::timeout(WAIT, rx.wait_for(|x| *x >= n))
            .await
            .unwrap_or_else(|_| panic!("reload attempt {n} never happened"))
            .unwrap();
    }
}

/// Parses Prometheus/OpenMetrics text strictly enough to catch a broken
/// exposition: every sample is `name{labels} value` with a declared family.
fn parse_metrics(text: &str) -> Vec<(String, f64)> {
    let mut families = Vec::new();
    let mut samples = Vec::new();
    for line in text.lines() {
        if line == "# EOF" {
            continue;
        }
        if let Some(rest) = line.strip_prefix("# TYPE ") {
            families.push(rest.split_whitespace().next().unwrap().to_owned());
            continue;
        }
        if line.starts_with("# HELP ") || line.starts_with("# UNIT ") {
            continue;
        }
        let (series, value) = line
            .rsplit_once(' ')
            .unwrap_or_else(|| panic!("bad sample line: {line}"));
        let value: f64 = value
            .parse()
            .unwrap_or_else(|_| panic!("bad value in: {line}"));
        let name = series.split('{').next().unwrap();
        assert!(
            name.chars().all(|c| c.is_ascii_alphanumeric() || c == '_'),
            "bad metric name: {line}"
        );
        if let Some(labels) = series.strip_prefix(name) {
            if !labels.is_empty() {
                assert!(
                    labels.starts_with('{') && labels.ends_with('}'),
                    "bad labels: {line}"
                );
            }
        }
        assert!(
            families.iter().any(|f| name.starts_with(f.as_str())),
            "sample without a TYPE line: {line}"
        );
        samples.push((series.to_owned(), value));
    }
    samples
}

fn sample(samples: &[(String, f64)], series: &str) -> f64 {
    samples
        .iter()
        .find(|(s, _)| s == series)
        .map_or(0.0, |(_, v)| *v)
}

#[tokio::test]
async fn allowlist_change_applies_through_the_file_watch_without_restart() {
    let h = Harness::new().await;
    let live = Live::start(&h, &services(r#"["GET /v1/payment_intents/*"]"#)).await;
    let _watch = reload::spawn_watcher(live.gw.clone(), live.path.clone()).unwrap();
    let addr = live.addr("checkout").await;
    assert_eq!(
        send(addr, "POST", "/v1/payment_intents", &[], "{}")
            .await
            .status,
        403
    );

    replace_file(
        &live.path,
        &h.config(&services(
            r#"["GET /v1/payment_intents/*", "POST /v1/payment_intents"]"#,
        )),
    );
    live.until_generation(2).await;
    assert_eq!(
        live.addr("checkout").await,
        addr,
        "same listener, same process"
    );
    assert_eq!(
        send(addr, "POST", "/v1/payment_intents", &[], "{}")
            .await
            .status,
        200
    );

    // In-place edits (truncate + write) are seen too.
    std::fs::write(
        &live.path,
        h.config(&services(r#"["POST /v1/payment_intents"]"#)),
    )
    .unwrap();
    live.until_generation(3).await;
    assert_eq!(
        send(addr, "GET", "/v1/payment_intents/pi_1", &[], "")
            .await
            .status,
        403
    );
}

#[tokio::test]
async fn invalid_file_keeps_the_old_rules_and_counts_the_failure() {
    let h = Harness::new().await;
    let live = Live::start(&h, &services(r#"["GET /v1/payment_intents/*"]"#)).await;
    let _watch = reload::spawn_watcher(live.gw.clone(), live.path.clone()).unwrap();
    let addr = live.addr("checkout").await;

    replace_file(
        &live.path,
        "mode = \"test\"\n[[service]]\nname = \"checkout\"\nlisten = \"127.0.0.1:0\"\nsecret_key = \"sk_test_literal\"\n",
    );
    live.until_attempts(1).await;
    assert_eq!(live.gw.snapshot().generation, 1);
    assert_eq!(
        send(addr, "GET", "/v1/payment_intents/pi_1", &[], "")
            .await
            .status,
        200
    );
    assert_eq!(
        send(addr, "POST", "/v1/payment_intents", &[], "{}")
            .await
            .status,
        403
    );

    // A config that parses but cannot be applied (its new listener cannot bind) is refused too.
    let taken = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let port = taken.local_addr().unwrap().port();
    let clash = format!(
        "{}\n[[service]]\nname = \"extra\"\nlisten = \"127.0.0.1:{port}\"\nsecret_key = {{ file = \"checkout.sk\" }}\n",
        services(r#"["POST /v1/payment_intents"]"#)
    );
    let err = reload::reload(
        &live.gw,
        &{
            let p = h.dir.path().join("clash.toml");
            std::fs::write(&p, h.config(&clash)).unwrap();
            p
        },
        "test",
    )
    .await
    .unwrap_err();
    assert!(err.to_string().contains("cannot listen"), "{err}");
    assert_eq!(
        send(addr, "POST", "/v1/payment_intents", &[], "{}")
            .await
            .status,
        403,
        "old rules still served"
    );

    let m = send(live.admin().await, "GET", "/metrics", &[], "").await;
    let samples = parse_metrics(&String::from_utf8_lossy(&m.body));
    assert_eq!(
        sample(
            &samples,
            r#"paymongo_gateway_reloads_total{result="failure"}"#
        ),
        2.0
    );
    assert_eq!(sample(&samples, "paymongo_gateway_config_generation"), 1.0);
}

#[tokio::test]
async fn rotated_secret_file_reaches_upstream_after_reload() {
    let h = Harness::new().await;
    let live = Live::start(&h, &services(r#"["GET /v1/payment_intents/*"]"#)).await;
    let _watch = reload::spawn_watcher(live.gw.clone(), live.path.clone()).unwrap();
    let addr = live.addr("checkout").await;
    send(addr, "GET", "/v1/payment_intents/pi_1", &[], "").await;

    // The secret file alone changes (as a Kubernetes Secret update would).
    replace_file(&h.dir.path().join("checkout.sk"), SK2);
    live.until_generation(2).await;
    send(addr, "GET", "/v1/payment_intents/pi_2", &[], "").await;

    let seen = h.upstream.requests();
    assert_eq!(
        seen[0].headers.get("authorization").unwrap(),
        basic(SK1).as_str()
    );
    assert_eq!(
        seen[1].headers.get("authorization").unwrap(),
        basic(SK2).as_str()
    );
}

#[tokio::test]
async fn services_added_and_removed_on_reload_start_and_drain() {
    let h = Harness::new().await;
    let gate = Gate::new();
    let g2 = gate.clone();
    h.upstream.behave(move |s, _| {
        if s.path.ends_with("/slow") {
            Reply::Hold(
                g2.clone(),
                Box::new(Reply::Json(200, r#"{"slow":true}"#.into())),
            )
        } else {
            Reply::Json(200, "{}".into())
        }
    });
    let live = Live::start(&h, &services(r#"["GET /v1/**"]"#)).await;
    let old = live.addr("checkout").await;

    // Add "billing".
    let both = format!(
        "{}\n[[service]]\nname = \"billing\"\nlisten = \"127.0.0.1:0\"\nsecret_key = {{ file = \"checkout.sk\" }}\n",
        services(r#"["GET /v1/**"]"#)
    );
    std::fs::write(&live.path, h.config(&both)).unwrap();
    assert_eq!(
        reload::reload(&live.gw, &live.path, "test").await.unwrap(),
        2
    );
    let billing = live.addr("billing").await;
    assert_eq!(send(billing, "GET", "/v1/x", &[], "").await.status, 200);

    // Hold a request on "checkout", then remove "checkout".
    let in_flight = tokio::spawn(async move { send(old, "GET", "/v1/slow", &[], "").await });
    h.upstream.wait_for_requests(2).await;
    let only_billing = both.replace("name = \"checkout\"", "name = \"gone\"").replace(
        "[[service]]\nname = \"gone\"\nlisten = \"127.0.0.1:0\"\nsecret_key = { file = \"checkout.sk\" }\nallow = [\"GET /v1/**\"]\n",
        "",
    );
    assert!(!only_billing.contains("gone"), "{only_billing}");
    std::fs::write(&live.path, h.config(&only_billing)).unwrap();
    reload::reload(&live.gw, &live.path, "test").await.unwrap();
    assert!(live.gw.service_addr("checkout").await.is_none());
    // Its socket is closed at once; the in-flight request still completes.
    assert!(
        try_send(old, "GET", "/v1/x", &[], "").await.is_err(),
        "removed listener must stop accepting"
    );
    gate.open();
    let r = in_flight.await.unwrap();
    assert_eq!(r.status, 200);
    assert_eq!(r.json()["slow"], true);
    assert_eq!(send(billing, "GET", "/v1/y", &[], "").await.status, 200);
}

#[tokio::test]
async fn two_thousand_requests_across_ten_reloads_all_succeed() {
    let h = Harness::new().await;
    let live = Live::start(
        &h,
        &services(r#"["POST /v1/payment_intents", "GET /v1/payment_intents/*"]"#),
    )
    .await;
    let addr = live.addr("checkout").await;
    const WORKERS: usize = 8;
    const PER_WORKER: usize = 250;

    let mut workers = Vec::new();
    for w in 0..WORKERS {
        workers.push(tokio::spawn(async move {
            let mut failures = Vec::new();
            for i in 0..PER_WORKER {
                let r = if i % 2 == 0 {
                    try_send(
                        addr,
                        "GET",
                        &format!("/v1/payment_intents/pi_{w}_{i}"),
                        &[],
                        "",
                    )
                    .await
                } else {
                    try_send(addr, "POST", "/v1/payment_intents", &[], "{}").await
                };
                match r {
                    Ok(r) if r.status == 200 => {}
                    other => failures.push(format!("{other:?}")),
                }
            }
            failures
        }));
    }
    // Ten reloads while the load runs, each a real change (the allowlist
    // grows by a rule), every other one also rotating the key.
    for n in 0..10u64 {
        h.upstream.wait_for_requests(((n + 1) * 150) as usize).await;
        let extra = format!(
            r#"["POST /v1/payment_intents", "GET /v1/payment_intents/*", "GET /v1/reload_{n}"]"#
        );
        replace_file(
            &h.dir.path().join("checkout.sk"),
            if n % 2 == 0 { SK2 } else { SK1 },
        );
        std::fs::write(&live.path, h.config(&services(&extra))).unwrap();
        reload::reload(&live.gw, &live.path, "test").await.unwrap();
    }
    let mut failures = Vec::new();
    for w in workers {
        failures.extend(w.await.unwrap());
    }
    assert_eq!(live.gw.snapshot().generation, 11);
    assert!(
        failures.is_empty(),
        "{} failed: {:?}",
        failures.len(),
        &failures[..failures.len().min(5)]
    );
    assert_eq!(h.upstream.total(), WORKERS * PER_WORKER);
}

#[tokio::test]
async fn healthz_readyz_and_metrics() {
    let h = Harness::new().await;
    let live = Live::start(&h, &services(r#"["GET /v1/payment_intents/*"]"#)).await;
    let admin = live.admin().await;
    let addr = live.addr("checkout").await;

    let r = send(admin, "GET", "/healthz", &[], "").await;
    assert_eq!(r.status, 200);
    let r = send(admin, "GET", "/readyz", &[], "").await;
    assert_eq!(r.status, 200, "{:?}", r.json());
    assert_eq!(r.json()["checks"]["upstream"], "ok");
    assert_eq!(
        h.upstream.total(),
        0,
        "readiness does a handshake, not a request"
    );
    assert!(
        h.upstream
            .state
            .handshakes_ok
            .load(std::sync::atomic::Ordering::SeqCst)
            >= 1
    );
    assert_eq!(send(admin, "POST", "/healthz", &[], "").await.status, 405);
    assert_eq!(send(admin, "GET", "/nope", &[], "").await.status, 404);

    let before = parse_metrics(&String::from_utf8_lossy(
        &send(admin, "GET", "/metrics", &[], "").await.body,
    ));
    for _ in 0..3 {
        send(addr, "GET", "/v1/payment_intents/pi_1", &[], "").await;
    }
    send(addr, "POST", "/v1/refunds", &[], "{}").await;
    let m = send(admin, "GET", "/metrics", &[], "").await;
    assert!(m.header("content-type").unwrap().contains("text"));
    let after = parse_metrics(&String::from_utf8_lossy(&m.body));
    let ok = r#"paymongo_gateway_requests_total{service="checkout",class="2xx"}"#;
    let refused = r#"paymongo_gateway_requests_total{service="checkout",class="4xx"}"#;
    assert_eq!(sample(&after, ok) - sample(&before, ok), 3.0);
    assert_eq!(sample(&after, refused) - sample(&before, refused), 1.0);
    assert_eq!(
        sample(
            &after,
            r#"paymongo_gateway_upstream_duration_seconds_count{service="checkout"}"#
        ),
        3.0
    );
    assert_eq!(sample(&after, "paymongo_gateway_config_generation"), 1.0);
    for (series, _) in &after {
        assert!(!series.contains("pi_1"), "no ids in labels: {series}");
    }
}

#[tokio::test]
async fn readyz_fails_when_the_upstream_is_unreachable() {
    let h = Harness::new().await;
    let port = std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port();
    h.secret_file("checkout.sk", SK1);
    let text = support::base_config(port, &h.ca_file) + &services(r#"["GET /v1/**"]"#);
    let path = h.dir.path().join("down.toml");
    std::fs::write(&path, text).unwrap();
    let gw = Gateway::start(Config::load(&path).unwrap()).await.unwrap();
    let admin = gw.addr(&ListenerId::Admin).await.unwrap().tcp().unwrap();
    let r = send(admin, "GET", "/readyz", &[], "").await;
    assert_eq!(r.status, 503);
    assert_eq!(r.json()["status"], "not_ready");
    assert_ne!(r.json()["checks"]["upstream"], "ok");
    assert_eq!(
        send(admin, "GET", "/healthz", &[], "").await.status,
        200,
        "alive, just not ready"
    );
}

#[tokio::test]
async fn sighup_reloads_the_running_process() {
    let h = Harness::new().await;
    h.secret_file("checkout.sk", SK1);
    let path = h.dir.path().join("gateway.toml");
    std::fs::write(
        &path,
        h.config(&services(r#"["GET /v1/payment_intents/*"]"#)),
    )
    .unwrap();
    // --no-watch: only the signal can trigger the reload here.
    let mut gw = GatewayProcess::spawn(&["--no-watch", "--config", path.to_str().unwrap()], &[]);
    let addr = gw.listening("service checkout").await;
    assert_eq!(
        send(addr, "POST", "/v1/payment_intents", &[], "{}")
            .await
            .status,
        403
    );

    std::fs::write(
        &path,
        h.config(&services(r#"["POST /v1/payment_intents"]"#)),
    )
    .unwrap();
    replace_file(&h.dir.path().join("checkout.sk"), SK2);
    gw.signal("HUP");
    gw.wait_for_line(|l| l.contains("\"reloaded\"") && l.contains("SIGHUP"))
        .await;
    assert_eq!(
        send(addr, "POST", "/v1/payment_intents", &[], "{}")
            .await
            .status,
        200
    );
    assert_eq!(
        h.upstream.requests()[0]
            .headers
            .get("authorization")
            .unwrap(),
        basic(SK2).as_str()
    );

    // A broken file on SIGHUP: refused, old config keeps serving.
    std::fs::write(&path, "this is not toml = = =").unwrap();
    gw.signal("HUP");
    gw.wait_for_line(|l| l.contains("reload refused")).await;
    assert_eq!(
        send(addr, "POST", "/v1/payment_intents", &[], "{}")
            .await
            .status,
        200
    );

    gw.signal("TERM");
    assert!(gw.wait_exit().await.success());
}

mod webhooks {
    use super::*;
    use support::TestCa;
    use support::client::{connect_tls, try_send_tls};
    use support::inward::Inward;
    use support::webhook::{event, now, test_header};

    const WH_A: &str = "whsk_reloadSECRETaaaa";
    const WH_B: &str = "whsk_reloadSECRETbbbb";

    fn webhook_section(forward_to: &str) -> String {
        format!(
            r#"
[webhooks]
listen = "127.0.0.1:0"
tls_cert = "wh.pem"
tls_key = "wh.key"

[[webhooks.endpoint]]
path = "/hooks"
secrets = [{{ file = "wh.secret" }}]
forward_to = "{forward_to}"
"#
        )
    }

    async fn post(
        addr: std::net::SocketAddr,
        ca: &TestCa,
        secret: &str,
        id: &str,
    ) -> Result<u16, String> {
        let body = event(id, "payment.paid", false);
        let sig = test_header(secret, now(), body.as_bytes());
        try_send_tls(
            addr,
            ca,
            "POST",
            "/hooks",
            &[
                ("content-type", "application/json"),
                ("paymongo-signature", &sig),
            ],
            body.as_bytes(),
        )
        .await
        .map(|r| r.status.as_u16())
    }

    #[tokio::test]
    async fn webhook_secret_and_certificate_reload_without_restart() {
        let h = Harness::new().await;
        let inward = Inward::start().await;
        std::fs::write(h.dir.path().join("wh.pem"), &h.leaf.cert_pem).unwrap();
        std::fs::write(h.dir.path().join("wh.key"), &h.leaf.key_pem).unwrap();
        std::fs::write(h.dir.path().join("wh.secret"), WH_A).unwrap();
        let live = Live::start(&h, &webhook_section(&inward.url("/in"))).await;
        let _watch = reload::spawn_watcher(live.gw.clone(), live.path.clone()).unwrap();
        let addr = live.gw.webhooks_addr().await.unwrap().tcp().unwrap();

        assert_eq!(post(addr, &h.ca, WH_A, "evt_r1").await.unwrap(), 200);
        assert_eq!(post(addr, &h.ca, WH_B, "evt_r2").await.unwrap(), 401);

        // Rotate the secret file alone.
        replace_file(&h.dir.path().join("wh.secret"), WH_B);
        live.until_generation(2).await;
        assert_eq!(post(addr, &h.ca, WH_B, "evt_r3").await.unwrap(), 200);
        assert_eq!(post(addr, &h.ca, WH_A, "evt_r4").await.unwrap(), 401);

        // Replace the certificate with one from another CA: new handshakes see it.
        let ca2 = TestCa::new("second CA");
        let leaf2 = ca2.leaf(&["localhost", "127.0.0.1"]);
        let old_conn = connect_tls(addr, &h.ca).await.unwrap();
        std::fs::write(h.dir.path().join("wh.key.new"), &leaf2.key_pem).unwrap();
        std::fs::write(h.dir.path().join("wh.pem.new"), &leaf2.cert_pem).unwrap();
        std::fs::rename(h.dir.path().join("wh.key.new"), h.dir.path().join("wh.key")).unwrap();
        std::fs::rename(h.dir.path().join("wh.pem.new"), h.dir.path().join("wh.pem")).unwrap();
        // A watcher may catch the key before the certificate (a refused,
        // mismatched pair); the generation only moves on a good pair.
        live.until_generation(3).await;
        assert!(
            connect_tls(addr, &h.ca).await.is_err(),
            "old CA must no longer verify new handshakes"
        );
        assert_eq!(post(addr, &ca2, WH_B, "evt_r5").await.unwrap(), 200);
        drop(old_conn);

        let ids: Vec<String> = inward
            .received()
            .iter()
            .map(|r| r.header("x-paymongo-event-id").unwrap().to_owned())
            .collect();
        assert_eq!(ids, ["evt_r1", "evt_r3", "evt_r5"]);
    }
}

#[tokio::test]
async fn a_reload_after_shutdown_began_is_refused_and_binds_nothing() {
    let h = Harness::new().await;
    let live = Live::start(&h, &services(r#"["GET /v1/**"]"#)).await;
    let addr = live.addr("checkout").await;
    live.gw.shutdown().await;
    let err = reload::reload(&live.gw, &live.path, "test")
        .await
        .unwrap_err();
    assert!(err.to_string().contains("shutting down"), "{err}");
    assert!(live.gw.service_addr("checkout").await.is_none());
    assert!(
        try_send(addr, "GET", "/v1/x", &[], "").await.is_err(),
        "nothing listens after shutdown"
    );
}

//! The real binary: `sign` output verifies at a real listener, `trigger`
//! is accepted by one, and a running gateway's output never contains the
//! webhook secret, a signature or an event body.
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

mod support;

use std::process::Output;

use support::webhook::{
    self as wh, PATH, SECRET, WebhookEnv, event, hmac_hex, live_header, now, test_header,
};
use support::{GatewayProcess, Harness, Inward, WAIT};

const EVT: &str = "evt_cliTest0000000001";

async fn run(args: &[&str], env: &[(&str, &str)]) -> Output {
    let mut cmd = tokio::process::Command::new(env!("CARGO_BIN_EXE_paymongo-gateway"));
    cmd.args(args)
        .env_remove("PAYMONGO_WEBHOOK_SECRET")
        .env_remove("PAYMONGO_GATEWAY_CONFIG")
        .kill_on_drop(true);
    for (k, v) in env {
        cmd.env(k, v);
    }
    tokio::time::timeout(WAIT, cmd.output())
        .await
        .expect("command did not finish")
        .unwrap()
}

fn stdout(o: &Output) -> String {
    String::from_utf8_lossy(&o.stdout).into_owned()
}

fn all_output(o: &Output) -> String {
    format!("{}{}", stdout(o), String::from_utf8_lossy(&o.stderr))
}

#[tokio::test]
async fn sign_output_matches_an_independent_signer_and_verifies_at_a_listener() {
    let env = WebhookEnv::start("", "").await;
    let body = event(EVT, "payment.paid", false);
    let file = env.h.dir.path().join("body.json");
    std::fs::write(&file, &body).unwrap();
    let f = file.to_str().unwrap();
    let secret_env = [("WHSK", SECRET)];

    let t = "1700000000";
    let o = run(
        &["sign", f, "--secret-env", "WHSK", "--timestamp", t],
        &secret_env,
    )
    .await;
    assert!(o.status.success(), "{}", all_output(&o));
    assert_eq!(
        stdout(&o).trim(),
        test_header(SECRET, 1_700_000_000, body.as_bytes())
    );
    let o = run(
        &[
            "sign",
            f,
            "--secret-env",
            "WHSK",
            "--timestamp",
            t,
            "--mode",
            "live",
        ],
        &secret_env,
    )
    .await;
    assert_eq!(
        stdout(&o).trim(),
        live_header(SECRET, 1_700_000_000, body.as_bytes())
    );
    let o = run(
        &["sign", f, "--secret-env", "WHSK", "--scheme", "hmac-hex"],
        &secret_env,
    )
    .await;
    assert_eq!(stdout(&o).trim(), hmac_hex(SECRET, &[body.as_bytes()]));
    assert!(!all_output(&o).contains(SECRET));

    // Default timestamp is now: the listener accepts it.
    let o = run(&["sign", f, "--secret-env", "WHSK"], &secret_env).await;
    assert!(o.status.success());
    let header = stdout(&o).trim().to_owned();
    let r = env
        .post(&[("paymongo-signature", &header)], body.as_bytes())
        .await;
    assert_eq!(r.status, 200, "{r:?}");
    assert_eq!(env.inward.count(), 1);
    assert_eq!(&env.inward.received()[0].body[..], body.as_bytes());
}

#[tokio::test]
async fn sign_without_the_secret_fails_and_names_the_variable() {
    let dir = tempfile::tempdir().unwrap();
    let file = dir.path().join("b.json");
    std::fs::write(&file, "{}").unwrap();
    let o = run(
        &[
            "sign",
            file.to_str().unwrap(),
            "--secret-env",
            "NOT_SET_ANYWHERE",
        ],
        &[],
    )
    .await;
    assert!(!o.status.success());
    assert!(
        all_output(&o).contains("NOT_SET_ANYWHERE"),
        "{}",
        all_output(&o)
    );
    assert!(o.stdout.is_empty(), "no header printed");
}

#[tokio::test]
async fn trigger_is_accepted_by_a_test_listener_and_delivered() {
    let env = WebhookEnv::start("", "").await;
    let url = format!("https://localhost:{}{PATH}", env.addr.port());
    let ca = env.h.ca_file.to_str().unwrap().to_owned();
    let secret_env = [("PAYMONGO_WEBHOOK_SECRET", SECRET)];

    let o = run(
        &[
            "trigger",
            "payment.paid",
            "--url",
            &url,
            "--ca-file",
            &ca,
            "--event-id",
            EVT,
        ],
        &secret_env,
    )
    .await;
    assert!(o.status.success(), "{}", all_output(&o));
    assert!(stdout(&o).contains("<- 200"), "{}", stdout(&o));
    assert!(stdout(&o).contains("delivered"));
    assert!(
        !all_output(&o).contains(SECRET),
        "the secret is never printed"
    );
    let got = env.inward.received();
    assert_eq!(got.len(), 1);
    assert_eq!(got[0].header("x-paymongo-event-type"), Some("payment.paid"));
    assert_eq!(got[0].header("x-paymongo-event-id"), Some(EVT));
    let v: serde_json::Value = serde_json::from_slice(&got[0].body).unwrap();
    assert_eq!(v["data"]["attributes"]["livemode"], false);

    // The same event id again: acknowledged as a duplicate, not forwarded.
    let o = run(
        &[
            "trigger",
            "payment.paid",
            "--url",
            &url,
            "--ca-file",
            &ca,
            "--event-id",
            EVT,
        ],
        &secret_env,
    )
    .await;
    assert!(o.status.success());
    assert!(stdout(&o).contains("duplicate"), "{}", stdout(&o));
    for kind in ["source.chargeable", "payment.failed"] {
        let o = run(
            &["trigger", kind, "--url", &url, "--ca-file", &ca],
            &secret_env,
        )
        .await;
        assert!(o.status.success(), "{kind}: {}", all_output(&o));
    }
    assert_eq!(env.inward.count(), 3);
}

#[tokio::test]
async fn trigger_fails_with_the_wrong_secret_or_an_untrusted_certificate() {
    let env = WebhookEnv::start("", "").await;
    let url = format!("https://localhost:{}{PATH}", env.addr.port());
    let ca = env.h.ca_file.to_str().unwrap().to_owned();

    let o = run(
        &["trigger", "payment.paid", "--url", &url, "--ca-file", &ca],
        &[("PAYMONGO_WEBHOOK_SECRET", "whsk_wrong")],
    )
    .await;
    assert!(!o.status.success());
    assert!(stdout(&o).contains("<- 401"), "{}", all_output(&o));

    // Without --ca-file the test CA is not trusted: no request is made.
    let o = run(
        &["trigger", "payment.paid", "--url", &url],
        &[("PAYMONGO_WEBHOOK_SECRET", SECRET)],
    )
    .await;
    assert!(!o.status.success());
    assert!(!stdout(&o).contains("<- "), "{}", all_output(&o));

    let o = run(
        &["trigger", "no.such.event", "--url", &url],
        &[("PAYMONGO_WEBHOOK_SECRET", SECRET)],
    )
    .await;
    assert!(!o.status.success());
    assert!(all_output(&o).contains("payment.paid"), "lists the samples");
    assert_eq!(env.inward.count(), 0);
}

#[tokio::test]
async fn a_running_gateway_never_prints_secrets_signatures_or_bodies() {
    let h = Harness::new().await;
    let inward = Inward::start().await;
    let cfg = h.config(&wh::config(&h, &inward.url("/events"), "", ""));
    let path = h.dir.path().join("gateway.toml");
    std::fs::write(&path, cfg).unwrap();
    let mut p = GatewayProcess::spawn(&["--config", path.to_str().unwrap()], &[("WHSK", SECRET)]);
    let addr = p.listening("webhooks").await;

    let marker = "marker-4111111111111111";
    let body = event(EVT, "payment.paid", false).replace("caf\\u00e9 order", marker);
    assert!(body.contains(marker));
    let good = test_header(SECRET, now(), body.as_bytes());
    let forged = test_header("whsk_attacker", now(), body.as_bytes());
    let send = |hdr: String| {
        let ca = &h.ca;
        let body = body.clone();
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
    assert_eq!(send(good.clone()).await.status, 200);
    assert_eq!(send(forged.clone()).await.status, 401);

    let json = |l: &str| serde_json::from_str::<serde_json::Value>(l).ok();
    let accepted = p
        .wait_for_line(|l| {
            json(l).is_some_and(|v| v["message"] == "webhook" && v["outcome"] == "accepted")
        })
        .await;
    let rejected = p
        .wait_for_line(|l| {
            json(l).is_some_and(|v| v["message"] == "webhook" && v["outcome"] == "bad_signature")
        })
        .await;
    let v = json(&rejected).unwrap();
    assert_eq!(v["status"], 401);
    assert!(
        v["reason"].as_str().unwrap().contains("does not match"),
        "{rejected}"
    );
    assert_eq!(json(&accepted).unwrap()["event_type"], "payment.paid");

    p.signal("TERM");
    p.wait_for_line(|l| l.contains("shutdown complete")).await;
    assert!(p.wait_exit().await.success());
    let out = p.output();
    for (what, needle) in [
        ("secret", SECRET.to_owned()),
        (
            "valid signature",
            good.split(",te=").nth(1).unwrap()[..64].to_owned(),
        ),
        (
            "forged signature",
            forged.split(",te=").nth(1).unwrap()[..64].to_owned(),
        ),
        ("body", marker.to_owned()),
    ] {
        assert!(
            !out.contains(&needle),
            "the {what} appears in the output:\n{out}"
        );
    }
    assert_eq!(inward.count(), 1);
}

#[tokio::test]
async fn a_plaintext_listener_warns_at_start() {
    let h = Harness::new().await;
    let cfg = h.config(&format!(
        "\n[webhooks]\nlisten = \"127.0.0.1:0\"\nplaintext = true\n\n[[webhooks.endpoint]]\npath = \"{PATH}\"\n\
         secrets = [{{ env = \"WHSK\" }}]\nforward_to = \"http://127.0.0.1:9/events\"\n"
    ));
    let path = h.dir.path().join("gateway.toml");
    std::fs::write(&path, cfg).unwrap();
    let mut p = GatewayProcess::spawn(&["--config", path.to_str().unwrap()], &[("WHSK", SECRET)]);
    let line = p
        .wait_for_line(|l| l.contains("\"level\":\"WARN\"") && l.contains("plaintext"))
        .await;
    assert!(line.contains("webhooks"), "{line}");
    p.listening("webhooks").await;
}

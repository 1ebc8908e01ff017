//! Every configuration refusal, through `Config::parse` and through the real
//! `paymongo-gateway check`.
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

mod support;

use std::path::Path;

use paymongo_gateway::config::{Config, ConfigError, LoadContext, Mode};

const SK_TEST: &str = "sk_test_cfgKEYvalue123";
const SK_LIVE: &str = "sk_live_cfgLIVEvalue456";
const PK_TEST: &str = "pk_test_cfgPUBLICvalue789";

fn env(name: &str) -> Option<String> {
    match name {
        "SK_TEST" => Some(SK_TEST.into()),
        "SK_LIVE" => Some(SK_LIVE.into()),
        "PK_TEST" => Some(PK_TEST.into()),
        _ => None,
    }
}

fn parse(text: &str) -> Result<Config, ConfigError> {
    Config::parse(
        text,
        &LoadContext {
            base_dir: ".".into(),
            env: &env,
        },
    )
}

fn err(text: &str) -> String {
    let e = parse(text).expect_err("config should be refused");
    let s = e.to_string();
    for secret in [SK_TEST, SK_LIVE, PK_TEST, "literal_in_file"] {
        assert!(!s.contains(secret), "error message leaks a secret: {s}");
    }
    s
}

fn service(mode: &str, body: &str) -> String {
    format!(
        "mode = \"{mode}\"\n\n[[service]]\nname = \"checkout\"\nlisten = \"127.0.0.1:18080\"\n{body}\n"
    )
}

#[test]
fn a_minimal_valid_config_gets_documented_defaults() {
    let c = parse(&service("test", "secret_key = { env = \"SK_TEST\" }")).unwrap();
    assert_eq!(c.mode, Mode::Test);
    assert_eq!(c.upstream.url.to_string(), "https://api.paymongo.com");
    assert_eq!(c.upstream.timeout.as_secs(), 30);
    assert_eq!(c.upstream.connect_timeout.as_secs(), 5);
    let s = &c.services[0];
    assert_eq!(s.max_body, 1 << 20);
    assert!(s.allow.permits(&http::Method::POST, "/v1/payment_intents"));
    assert!(!s.allow.permits(&http::Method::GET, "/admin"));
    assert_eq!(c.idempotency.ttl.as_secs(), 24 * 3600);
    assert_eq!(c.admin.listen.to_string(), "127.0.0.1:9901");
    // Debug output of the whole config never shows the key.
    assert!(!format!("{c:?}").contains(SK_TEST));
}

#[test]
fn literal_secret_is_refused_with_a_fix_and_without_echoing_it() {
    let s = err(&service("test", "secret_key = \"sk_live_literal_in_file\""));
    assert!(s.contains("service[0].secret_key"), "{s}");
    assert!(s.contains("line 6"), "{s}");
    assert!(s.contains("{ env = "), "message says how to fix it: {s}");
}

#[test]
fn key_kind_must_fit_the_mode() {
    let s = err(&service("test", "secret_key = { env = \"SK_LIVE\" }"));
    assert!(
        s.contains("live key") && s.contains("service[0].secret_key"),
        "{s}"
    );
    let s = err(&service("live", "secret_key = { env = \"SK_TEST\" }"));
    assert!(s.contains("test key"), "{s}");
    let s = err(&service("test", "secret_key = { env = \"PK_TEST\" }"));
    assert!(s.contains("public key"), "{s}");
    let s = err(&service(
        "test",
        "secret_key = { env = \"NOT_SET_ANYWHERE\" }",
    ));
    assert!(s.contains("NOT_SET_ANYWHERE is not set"), "{s}");
    let s = err(&service(
        "test",
        "secret_key = { file = \"/nonexistent/sk\" }",
    ));
    assert!(s.contains("/nonexistent/sk"), "{s}");
}

#[test]
fn http_upstream_is_refused() {
    let s = err(&format!(
        "{}\n[upstream]\nurl = \"http://api.paymongo.com\"\n",
        service("test", "secret_key = { env = \"SK_TEST\" }")
    ));
    assert!(s.contains("upstream.url") && s.contains("https"), "{s}");
}

#[test]
fn duplicate_names_and_listeners_are_refused() {
    let two = |a: &str, b: &str| {
        format!(
            "mode = \"test\"\n[[service]]\nname = \"{a}\"\nlisten = \"127.0.0.1:18080\"\nsecret_key = {{ env = \"SK_TEST\" }}\n\
             [[service]]\nname = \"{b}\"\nlisten = \"127.0.0.1:18080\"\nsecret_key = {{ env = \"SK_TEST\" }}\n"
        )
    };
    let s = err(&two("same", "same"));
    assert!(s.contains("duplicate service name `same`"), "{s}");
    let s = err(&two("a", "b"));
    assert!(
        s.contains("service[1].listen") && s.contains("already used by service[0].listen"),
        "{s}"
    );
    // Two port-0 listeners are fine: each gets its own port.
    let ok = "mode = \"test\"\n[[service]]\nname = \"a\"\nlisten = \"127.0.0.1:0\"\nsecret_key = { env = \"SK_TEST\" }\n\
         [[service]]\nname = \"b\"\nlisten = \"127.0.0.1:0\"\nsecret_key = { env = \"SK_TEST\" }\n";
    parse(ok).unwrap();
}

#[test]
fn non_loopback_listener_needs_allow_remote_and_allow_from() {
    let base = |extra: &str| {
        format!(
            "mode = \"test\"\n[[service]]\nname = \"edge\"\nlisten = \"0.0.0.0:18080\"\nsecret_key = {{ env = \"SK_TEST\" }}\n{extra}"
        )
    };
    let s = err(&base(""));
    assert!(
        s.contains("service[0].listen") && s.contains("allow_remote"),
        "{s}"
    );
    let s = err(&base("allow_remote = true\n"));
    assert!(s.contains("allow_from"), "{s}");
    let s = err(&base("allow_from = [\"10.0.0.0/8\"]\n"));
    assert!(s.contains("allow_remote"), "{s}");
    let c = parse(&base(
        "allow_remote = true\nallow_from = [\"10.0.0.0/8\"]\n",
    ))
    .unwrap();
    assert_eq!(c.services[0].allow_from.as_ref().unwrap().len(), 1);
    let s = err(&base(
        "allow_remote = true\nallow_from = [\"10.0.0.0/33\"]\n",
    ));
    assert!(s.contains("allow_from"), "{s}");
}

#[test]
fn unknown_keys_and_bad_values_name_key_and_line() {
    let s = err(&service(
        "test",
        "secret_key = { env = \"SK_TEST\" }\nallow_all = true",
    ));
    assert!(s.contains("line 7") && s.contains("allow_all"), "{s}");
    let s = err(&service(
        "test",
        "secret_key = { env = \"SK_TEST\" }\nmax_body = \"1 parsec\"",
    ));
    assert!(
        s.contains("service[0].max_body") && s.contains("parsec"),
        "{s}"
    );
    let s = err(&service(
        "test",
        "secret_key = { env = \"SK_TEST\" }\nallow = [\"GET v1/x\"]",
    ));
    assert!(s.contains("service[0].allow"), "{s}");
    let s = err("mode = \"staging\"\n");
    assert!(s.contains("mode") && s.contains("line 1"), "{s}");
    let s = err(
        "mode = \"test\"\n[upstream]\ntimeout = \"30\"\n[[service]]\nname=\"a\"\nlisten=\"127.0.0.1:1\"\nsecret_key={env=\"SK_TEST\"}\n",
    );
    assert!(s.contains("upstream.timeout") && s.contains("unit"), "{s}");
    let s = err("mode = \"test\"\n[[service]\n");
    assert!(s.contains("line 2"), "{s}");
    let s = err("");
    assert!(s.contains("mode"), "{s}");
    let s = err("mode = \"test\"\n");
    assert!(s.contains("[[service]]"), "{s}");
}

#[test]
fn secret_ref_shapes() {
    let s = err(&service(
        "test",
        "secret_key = { env = \"SK_TEST\", file = \"/x\" }",
    ));
    assert!(s.contains("exactly one"), "{s}");
    let s = err(&service("test", "secret_key = { path = \"/x\" }"));
    assert!(s.contains("unknown key `path`"), "{s}");
    let s = err(&service("test", "secret_key = {}"));
    assert!(s.contains("empty secret reference"), "{s}");
}

#[test]
fn idempotency_lease_must_outlive_the_upstream_timeout() {
    let s = err(&format!(
        "{}\n[idempotency]\nlease = \"10s\"\n",
        service("test", "secret_key = { env = \"SK_TEST\" }")
    ));
    assert!(s.contains("idempotency.lease"), "{s}");
    let s = err(&format!(
        "{}\n[idempotency]\nmethods = [\"GET\"]\n",
        service("test", "secret_key = { env = \"SK_TEST\" }")
    ));
    assert!(s.contains("idempotency.methods"), "{s}");
}

#[test]
fn redis_urls_that_leak_a_password_or_skip_verification_are_refused() {
    let idem = |lines: &str| {
        format!(
            "{}\n[idempotency]\nstore = \"redis\"\n{lines}\n",
            service("test", "secret_key = { env = \"SK_TEST\" }")
        )
    };
    // A password in a literal URL, in either place a URL can carry one.
    for url in [
        "redis://:hunter2-pw@10.0.0.5:6379",
        "redis+unix:///run/redis.sock?db=1&pass=hunter2-pw",
    ] {
        let s = err(&idem(&format!("redis_url = \"{url}\"")));
        assert!(s.contains("idempotency.redis_url"), "{s}");
        assert!(s.contains("{ env = "), "says how to fix it: {s}");
        assert!(!s.contains("hunter2"), "the password is not echoed: {s}");
    }
    let s = err(&idem("redis_url = \"rediss://10.0.0.5:6380/#insecure\""));
    assert!(s.contains("always verified"), "{s}");
    let s = err(&idem("redis_url = \"redis://\""));
    assert!(s.contains("not a usable Redis URL"), "{s}");
    let s = err(&idem(""));
    assert!(s.contains("required when store = \"redis\""), "{s}");
    // Usable ones.
    for url in [
        "redis://10.0.0.5:6379/2",
        "rediss://redis.internal:6380",
        "redis+unix:///run/redis.sock?db=1",
    ] {
        let c = parse(&idem(&format!("redis_url = \"{url}\""))).unwrap();
        assert!(c.idempotency.redis_url.is_some(), "{url}");
    }
}

#[test]
fn all_problems_are_reported_at_once() {
    let text = "mode = \"test\"\n\
        [[service]]\nname = \"a\"\nlisten = \"0.0.0.0:1\"\nsecret_key = { env = \"SK_LIVE\" }\n\
        [[service]]\nname = \"a\"\nlisten = \"127.0.0.1:2\"\nsecret_key = { env = \"PK_TEST\" }\n";
    let e = parse(text).unwrap_err();
    assert!(e.problems().len() >= 4, "{e}");
}

/// The example file shipped in the repository is valid (with its env var set).
#[test]
fn shipped_example_config_is_valid() {
    let text = std::fs::read_to_string(Path::new(env!("CARGO_MANIFEST_DIR")).join("gateway.toml"))
        .unwrap();
    let lookup = |n: &str| (n == "PAYMONGO_SECRET_KEY").then(|| SK_TEST.to_owned());
    let c = Config::parse(
        &text,
        &LoadContext {
            base_dir: env!("CARGO_MANIFEST_DIR").into(),
            env: &lookup,
        },
    )
    .unwrap_or_else(|e| panic!("gateway.toml: {e}"));
    assert_eq!(c.mode, Mode::Test);
    assert_eq!(c.services[0].listen.to_string(), "127.0.0.1:8080");
}

mod check_command {
    use super::*;
    use support::GatewayProcess;

    async fn check(text: &str, env: &[(&str, &str)]) -> (bool, String) {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("gateway.toml");
        std::fs::write(&path, text).unwrap();
        let p = path.to_str().unwrap();
        // --config after the subcommand on purpose: both positions work.
        let mut proc = GatewayProcess::spawn(&["check", "--config", p], env);
        let status = proc.wait_exit().await;
        let mut out = String::new();
        // Output readers may lag the exit slightly: wait for the final line.
        let want = if status.success() {
            ": ok"
        } else {
            "invalid configuration"
        };
        out.push_str(&proc.wait_for_line(|l| l.contains(want)).await);
        out.push('\n');
        out.push_str(&proc.output());
        (status.success(), out)
    }

    #[tokio::test]
    async fn valid_config_exits_zero() {
        let (ok, out) = check(
            &service("test", "secret_key = { env = \"SK_TEST\" }"),
            &[("SK_TEST", SK_TEST)],
        )
        .await;
        assert!(ok, "{out}");
        assert!(!out.contains(SK_TEST));
    }

    #[tokio::test]
    async fn every_refusal_exits_non_zero_with_reasons() {
        let cases: Vec<(String, &str)> = vec![
            (service("test", "secret_key = \"sk_live_literal_in_file\""), "{ env = "),
            (service("test", "secret_key = { env = \"SK_LIVE\" }"), "live key"),
            (service("live", "secret_key = { env = \"SK_TEST\" }"), "test key"),
            (service("test", "secret_key = { env = \"PK_TEST\" }"), "public key"),
            (
                format!("{}[upstream]\nurl = \"http://api.paymongo.com\"\n", service("test", "secret_key = { env = \"SK_TEST\" }")),
                "upstream.url",
            ),
            (
                format!("{}[[service]]\nname = \"checkout\"\nlisten = \"127.0.0.1:1\"\nsecret_key = {{ env = \"SK_TEST\" }}\n", service("test", "secret_key = { env = \"SK_TEST\" }")),
                "duplicate service name",
            ),
            (
                format!("{}[[service]]\nname = \"b\"\nlisten = \"127.0.0.1:18080\"\nsecret_key = {{ env = \"SK_TEST\" }}\n", service("test", "secret_key = { env = \"SK_TEST\" }")),
                "already used",
            ),
            (
                "mode = \"test\"\n[[service]]\nname = \"e\"\nlisten = \"0.0.0.0:18080\"\nsecret_key = { env = \"SK_TEST\" }\n".to_owned(),
                "allow_remote",
            ),
        ];
        let env = [
            ("SK_TEST", SK_TEST),
            ("SK_LIVE", SK_LIVE),
            ("PK_TEST", PK_TEST),
        ];
        for (text, want) in cases {
            let (ok, out) = check(&text, &env).await;
            assert!(!ok, "should fail: {text}");
            assert!(out.contains(want), "expected `{want}` in:\n{out}");
            for secret in [SK_TEST, SK_LIVE, PK_TEST, "sk_live_literal_in_file"] {
                assert!(!out.contains(secret), "check output leaks a secret:\n{out}");
            }
        }
    }

    #[tokio::test]
    async fn config_path_from_the_environment() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("gw.toml");
        std::fs::write(&path, service("test", "secret_key = { env = \"SK_TEST\" }")).unwrap();
        let mut proc = GatewayProcess::spawn(
            &["check"],
            &[
                ("SK_TEST", SK_TEST),
                ("PAYMONGO_GATEWAY_CONFIG", path.to_str().unwrap()),
            ],
        );
        assert!(proc.wait_exit().await.success(), "{}", proc.output());
    }
}

/// Values pasted into the wrong place must not come back in messages.
#[test]
fn misplaced_secret_values_are_never_echoed() {
    let s = err(&service(
        "test",
        "secret_key = { env = \"sk_live_literal_in_file\" }",
    ));
    assert!(
        s.contains("service[0].secret_key") && s.contains("NAME"),
        "{s}"
    );
    let s = err(&service(
        "test",
        "secret_key = { file = \"sk_live_literal_in_file\" }",
    ));
    assert!(s.contains("service[0].secret_key"), "{s}");
    let webhooks = |secrets: &str| {
        format!(
            "{}\n[webhooks]\nlisten = \"127.0.0.1:0\"\nplaintext = true\n[[webhooks.endpoint]]\npath = \"/h\"\nforward_to = \"http://127.0.0.1:9/x\"\nsecrets = {secrets}\n",
            service("test", "secret_key = { env = \"SK_TEST\" }")
        )
    };
    let s = err(&webhooks("\"whsk_literal_in_file\""));
    assert!(
        s.contains("webhooks.endpoint[0].secrets") && s.contains("{ env = "),
        "{s}"
    );
    let s = err(&webhooks("{ env = \"WHSK\" }"));
    assert!(s.contains("expected a list"), "{s}");
    let s = err(&webhooks("[\"whsk_literal_in_file\"]"));
    assert!(s.contains("{ env = "), "{s}");
    for text in [
        service("test", "secret_key = { env = \"sk_live_literal_in_file\" }"),
        webhooks("\"whsk_literal_in_file\""),
    ] {
        let e = parse(&text).unwrap_err().to_string();
        assert!(!e.contains("literal_in_file"), "{e}");
    }
}

//! `[webhooks]` and `[[webhooks.endpoint]]` parsing and validation: defaults,
//! and every refusal naming its key without echoing a secret.
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

mod support;

use std::path::Path;
use std::time::Duration;

use paymongo_gateway::config::{Config, ConfigError, LoadContext, SignatureScheme};

const SECRET: &str = "whsk_configTESTsecret";

fn parse_in(dir: &Path, text: &str) -> Result<Config, ConfigError> {
    let env = |name: &str| match name {
        "WHSK" => Some(SECRET.to_owned()),
        "WHSK_OLD" => Some("whsk_old".to_owned()),
        "API_KEY" => Some("sk_test_notAwebhookSECRET".to_owned()),
        _ => None,
    };
    Config::parse(
        text,
        &LoadContext {
            base_dir: dir.to_owned(),
            env: &env,
        },
    )
}

fn parse(text: &str) -> Result<Config, ConfigError> {
    parse_in(Path::new("."), text)
}

/// A webhook-only config: plaintext listener, one endpoint, plus `extra`
/// lines in `[webhooks]` and `endpoint` lines in the endpoint.
fn cfg(extra: &str, endpoint: &str) -> String {
    format!(
        r#"mode = "test"

[webhooks]
listen = "0.0.0.0:0"
plaintext = true
{extra}

[[webhooks.endpoint]]
path = "/webhooks/paymongo"
forward_to = "http://127.0.0.1:9000/events"
{endpoint}
"#
    )
}

const SECRETS: &str = r#"secrets = [{ env = "WHSK" }]"#;

fn problems(text: &str) -> String {
    match parse(text) {
        Ok(_) => panic!("expected a configuration error for:\n{text}"),
        Err(e) => e.to_string(),
    }
}

#[test]
fn defaults_and_a_webhook_only_config() {
    let c = parse(&cfg("", SECRETS)).unwrap();
    assert!(
        c.services.is_empty(),
        "an edge receiver needs no [[service]]"
    );
    let w = c.webhooks.unwrap();
    assert!(w.tls.is_none());
    assert_eq!(w.max_body, 1 << 20);
    assert_eq!(w.tolerance, Duration::from_secs(300));
    assert_eq!(w.dedupe_ttl, Duration::from_secs(24 * 3600));
    assert_eq!(w.read_timeout, Duration::from_secs(10));
    let e = &w.endpoints[0];
    assert_eq!(e.signature, SignatureScheme::Paymongo);
    assert_eq!(e.forward_timeout, Duration::from_secs(10));
    assert_eq!(e.secrets.len(), 1);
    assert_eq!(e.secrets[0].key_bytes(), SECRET.as_bytes());
    assert!(e.forward_socket.is_none() && e.forward_ca_file.is_none());
}

#[test]
fn every_key_is_read() {
    let c = parse(&cfg(
        r#"max_body = "64KiB"
tolerance = "120s"
dedupe_ttl = "48h"
read_timeout = "5s""#,
        r#"secrets = [{ env = "WHSK" }, { env = "WHSK_OLD" }]
signature = "hmac-hex"
forward_timeout = "45s""#,
    ))
    .unwrap();
    let w = c.webhooks.unwrap();
    assert_eq!(w.max_body, 64 << 10);
    assert_eq!(w.tolerance, Duration::from_secs(120));
    assert_eq!(w.dedupe_ttl, Duration::from_secs(48 * 3600));
    assert_eq!(w.read_timeout, Duration::from_secs(5));
    let e = &w.endpoints[0];
    assert_eq!(e.signature, SignatureScheme::HmacHex);
    assert_eq!(
        e.forward_timeout,
        Duration::from_secs(45),
        "hmac-hex senders may wait longer"
    );
    assert_eq!(
        e.secrets[1].key_bytes(),
        b"whsk_old",
        "previous secret second"
    );
}

#[test]
fn neither_service_nor_webhooks_is_still_an_error() {
    let e = problems("mode = \"test\"\n");
    assert!(e.contains("[[service]]"), "{e}");
}

#[test]
fn secrets_are_references_never_literals_or_api_keys() {
    let e = problems(&cfg("", r#"secrets = ["whsk_literalLEAK"]"#));
    assert!(e.contains("{ env ="), "{e}");
    assert!(
        !e.contains("literalLEAK"),
        "the literal is never echoed: {e}"
    );

    let e = problems(&cfg("", r#"secrets = [{ env = "API_KEY" }]"#));
    assert!(e.contains("webhooks.endpoint[0].secrets"), "{e}");
    assert!(e.contains("whsk_"), "{e}");
    assert!(!e.contains("notAwebhookSECRET"), "{e}");

    let e = problems(&cfg("", r#"secrets = []"#));
    assert!(e.contains("at least one"), "{e}");
    let e = problems(&cfg("", r#"secrets = [{ env = "UNSET_VAR" }]"#));
    assert!(e.contains("UNSET_VAR"), "{e}");
    let five = r#"secrets = [{ env = "WHSK" }, { env = "WHSK" }, { env = "WHSK" }, { env = "WHSK" }, { env = "WHSK" }]"#;
    assert!(problems(&cfg("", five)).contains("at most 4"));
}

#[test]
fn forward_timeout_must_fit_paymongos_30_seconds() {
    let e = problems(&cfg("", &format!("{SECRETS}\nforward_timeout = \"30s\"")));
    assert!(e.contains("webhooks.endpoint[0].forward_timeout"), "{e}");
    assert!(e.contains("30"), "{e}");
    // read_timeout (default 10s) + forward_timeout must fit too.
    let e = problems(&cfg("", &format!("{SECRETS}\nforward_timeout = \"25s\"")));
    assert!(e.contains("read_timeout") && e.contains("30 s"), "{e}");
    assert!(parse(&cfg("", &format!("{SECRETS}\nforward_timeout = \"19s\""))).is_ok());
    assert!(
        parse(&cfg(
            "read_timeout = \"2s\"",
            &format!("{SECRETS}\nforward_timeout = \"27s\"")
        ))
        .is_ok()
    );
    assert!(
        problems(&cfg("", &format!("{SECRETS}\nforward_timeout = \"0s\"")))
            .contains("greater than 0")
    );
}

#[test]
fn zero_limits_are_refused() {
    for (k, v) in [
        ("max_body", "\"0B\""),
        ("tolerance", "\"0s\""),
        ("dedupe_ttl", "\"0s\""),
        ("read_timeout", "\"0s\""),
    ] {
        let e = problems(&cfg(&format!("{k} = {v}"), SECRETS));
        assert!(e.contains(&format!("webhooks.{k}")), "{k}: {e}");
    }
}

#[test]
fn forward_to_rules() {
    let e = problems(&cfg("", SECRETS).replace(
        "http://127.0.0.1:9000/events",
        "http://billing.internal/events",
    ));
    assert!(e.contains("forward_to") && e.contains("https://"), "{e}");
    // Plain http to a non-loopback name is fine over a Unix socket.
    let ok = cfg(
        "",
        &format!("{SECRETS}\nforward_socket = \"/run/billing.sock\""),
    )
    .replace(
        "http://127.0.0.1:9000/events",
        "http://billing.internal/events",
    );
    assert!(parse(&ok).is_ok());
    assert!(
        parse(&cfg("", SECRETS).replace("http://127.0.0.1:9000", "http://localhost:9000")).is_ok()
    );
    assert!(parse(&cfg("", SECRETS).replace("http://127.0.0.1:9000", "http://[::1]:9000")).is_ok());
    assert!(
        parse(&cfg("", SECRETS).replace("http://127.0.0.1:9000", "https://billing.internal"))
            .is_ok()
    );
    let e = problems(
        &cfg("", SECRETS).replace("http://127.0.0.1:9000", "https://user:pw@billing.internal"),
    );
    assert!(e.contains("user info"), "{e}");
    assert!(
        problems(&cfg("", SECRETS).replace("http://127.0.0.1:9000/events", "ftp://x/y"))
            .contains("forward_to")
    );
}

#[test]
fn forward_ca_file_is_read_and_only_for_https() {
    let dir = tempfile::tempdir().unwrap();
    let ca = support::TestCa::new("inward CA");
    ca.write_pem(dir.path(), "inward-ca.pem");
    let https = cfg(
        "",
        &format!("{SECRETS}\nforward_ca_file = \"inward-ca.pem\""),
    )
    .replace("http://127.0.0.1:9000", "https://billing.internal");
    let c = parse_in(dir.path(), &https).unwrap();
    let e = &c.webhooks.unwrap().endpoints[0];
    assert_eq!(e.forward_extra_roots.len(), 1);
    assert_eq!(
        e.forward_ca_file.as_deref(),
        Some(dir.path().join("inward-ca.pem").as_path())
    );

    let http = cfg(
        "",
        &format!("{SECRETS}\nforward_ca_file = \"inward-ca.pem\""),
    );
    let e = parse_in(dir.path(), &http).unwrap_err().to_string();
    assert!(
        e.contains("forward_ca_file") && e.contains("https://"),
        "{e}"
    );
    let missing = https.replace("inward-ca.pem", "nope.pem");
    assert!(
        parse_in(dir.path(), &missing)
            .unwrap_err()
            .to_string()
            .contains("forward_ca_file")
    );
}

#[test]
fn tls_is_required_unless_plaintext_and_not_both() {
    let no_tls = cfg("", SECRETS).replace("plaintext = true\n", "");
    let e = problems(&no_tls);
    assert!(
        e.contains("webhooks.tls_cert") && e.contains("plaintext"),
        "{e}"
    );

    let dir = tempfile::tempdir().unwrap();
    let ca = support::TestCa::new("wh CA");
    let leaf = ca.leaf(&["localhost"]);
    std::fs::write(dir.path().join("c.pem"), &leaf.cert_pem).unwrap();
    std::fs::write(dir.path().join("k.pem"), &leaf.key_pem).unwrap();
    let tls = no_tls.replace(
        "listen = \"0.0.0.0:0\"",
        "listen = \"0.0.0.0:0\"\ntls_cert = \"c.pem\"\ntls_key = \"k.pem\"",
    );
    assert!(
        parse_in(dir.path(), &tls)
            .unwrap()
            .webhooks
            .unwrap()
            .tls
            .is_some()
    );
    let both = tls.replace(
        "tls_key = \"k.pem\"",
        "tls_key = \"k.pem\"\nplaintext = true",
    );
    assert!(
        parse_in(dir.path(), &both)
            .unwrap_err()
            .to_string()
            .contains("plaintext")
    );
    // A key that does not belong to the certificate.
    std::fs::write(dir.path().join("k.pem"), ca.leaf(&["localhost"]).key_pem).unwrap();
    assert!(
        parse_in(dir.path(), &tls)
            .unwrap_err()
            .to_string()
            .contains("webhooks.tls_cert")
    );
}

#[test]
fn endpoint_paths_are_absolute_and_unique() {
    let e =
        problems(&cfg("", SECRETS).replace("path = \"/webhooks/paymongo\"", "path = \"webhooks\""));
    assert!(e.contains("webhooks.endpoint[0].path"), "{e}");
    let two = format!(
        "{}\n[[webhooks.endpoint]]\npath = \"/webhooks/paymongo\"\n{SECRETS}\nforward_to = \"http://127.0.0.1:9001/x\"\n",
        cfg("", SECRETS)
    );
    assert!(problems(&two).contains("duplicate endpoint path"));
    let unknown = cfg("", &format!("{SECRETS}\nsecret = \"x\""));
    assert!(problems(&unknown).contains("unknown field"));
    let scheme = cfg("", &format!("{SECRETS}\nsignature = \"sha1\""));
    assert!(problems(&scheme).contains("signature"));
}

#[test]
fn debug_output_never_shows_webhook_secrets() {
    let c = parse(&cfg("", SECRETS)).unwrap();
    let dbg = format!("{c:?}");
    assert!(!dbg.contains(SECRET), "{dbg}");
}

//! `sign` and `trigger`: the operator's and developer's side of webhooks.
//!
//! `sign` prints a `Paymongo-Signature` value for a body file, for testing
//! a receiver by hand (`curl -H "Paymongo-Signature: $(... sign body.json)"`).
//! `trigger` sends a correctly signed sample PayMongo event to a URL, like
//! the Stripe CLI's `trigger`. Both read the signing secret from an
//! environment variable — never from an argument, which would land in shell
//! history and `ps` — and never print it.

use std::io::Read as _;
use std::path::PathBuf;
use std::process::ExitCode;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use bytes::Bytes;
use http::header::{CONTENT_TYPE, HeaderValue, USER_AGENT};
use http::{Request, Uri};
use http_body_util::{BodyExt, Full, Limited};
use hyper_util::client::legacy::Client;
use hyper_util::client::legacy::connect::HttpConnector;
use hyper_util::rt::TokioExecutor;
use secrecy::{ExposeSecret, SecretString};
use serde_json::{Value, json};

use super::signature;
use crate::config::Mode;

/// The variable `--secret-env` defaults to.
pub const DEFAULT_SECRET_ENV: &str = "PAYMONGO_WEBHOOK_SECRET";

/// Which PayMongo environment to sign for.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, clap::ValueEnum)]
pub enum CliMode {
    /// Sign `te` (test mode); events carry `livemode: false`.
    #[default]
    Test,
    /// Sign `li` (live mode); events carry `livemode: true`.
    Live,
}

impl From<CliMode> for Mode {
    fn from(m: CliMode) -> Self {
        match m {
            CliMode::Test => Mode::Test,
            CliMode::Live => Mode::Live,
        }
    }
}

/// Which signature scheme to produce.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, clap::ValueEnum)]
pub enum CliScheme {
    /// `t=<unix>,te=<hex>,li=<hex>` over `"<t>.<body>"` (PayMongo's).
    #[default]
    Paymongo,
    /// hex(HMAC-SHA256(secret, body)).
    HmacHex,
}

/// `paymongo-gateway sign`.
#[derive(Debug, clap::Args)]
pub struct SignArgs {
    /// The body to sign, byte for byte (`-` reads standard input).
    pub body: PathBuf,
    /// Environment variable holding the webhook signing secret.
    #[arg(long, value_name = "NAME", default_value = DEFAULT_SECRET_ENV)]
    pub secret_env: String,
    /// Unix time in seconds to sign with (default: now).
    #[arg(long, value_name = "UNIX")]
    pub timestamp: Option<u64>,
    /// Which signature element to fill: `te` (test) or `li` (live).
    #[arg(long, value_enum, default_value_t)]
    pub mode: CliMode,
    /// Signature scheme of the receiving endpoint.
    #[arg(long, value_enum, default_value_t)]
    pub scheme: CliScheme,
}

/// `paymongo-gateway trigger`.
#[derive(Debug, clap::Args)]
pub struct TriggerArgs {
    /// Event type to send, e.g. `payment.paid` (see the error for the full list).
    pub event_type: String,
    /// The webhook endpoint URL, e.g. `https://localhost:8443/webhooks/paymongo`.
    #[arg(long)]
    pub url: String,
    /// Environment variable holding the webhook signing secret.
    #[arg(long, value_name = "NAME", default_value = DEFAULT_SECRET_ENV)]
    pub secret_env: String,
    /// Test- or live-mode event (and signature element).
    #[arg(long, value_enum, default_value_t)]
    pub mode: CliMode,
    /// Signature scheme of the receiving endpoint.
    #[arg(long, value_enum, default_value_t)]
    pub scheme: CliScheme,
    /// PEM CA certificates to trust in addition to the webpki roots (a
    /// listener with a private or self-made certificate). Verification is
    /// never switched off.
    #[arg(long, value_name = "PEM")]
    pub ca_file: Option<PathBuf>,
    /// Event id to send (default: a fresh random `evt_...`). Reuse one to see deduplication.
    #[arg(long, value_name = "ID")]
    pub event_id: Option<String>,
    /// Seconds to wait for the answer.
    #[arg(long, value_name = "SECS", default_value_t = 30)]
    pub timeout: u64,
}

/// Event types `trigger` has samples for.
pub const SAMPLE_EVENTS: &[&str] = &[
    "payment.paid",
    "payment.failed",
    "payment.refunded",
    "source.chargeable",
    "checkout_session.payment.paid",
];

fn read_secret(var: &str) -> Result<SecretString, String> {
    let v = std::env::var(var).map_err(|_| {
        format!(
            "environment variable {var} is not set; put the webhook signing secret (whsk_...) in it"
        )
    })?;
    let v = v.trim();
    if v.is_empty() {
        return Err(format!("environment variable {var} is empty"));
    }
    Ok(SecretString::from(v.to_owned()))
}

fn unix_now() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| d.as_secs())
}

fn header_for(
    secret: &SecretString,
    scheme: CliScheme,
    mode: CliMode,
    t: u64,
    body: &[u8],
) -> String {
    let key = secret.expose_secret().as_bytes();
    match scheme {
        CliScheme::Paymongo => signature::paymongo_header(key, t, body, mode.into()),
        CliScheme::HmacHex => signature::hmac_hex_header(key, body),
    }
}

/// Runs `sign`: prints the header value on stdout.
pub fn sign(args: &SignArgs) -> ExitCode {
    match sign_inner(args) {
        Ok(h) => {
            println!("{h}");
            ExitCode::SUCCESS
        }
        Err(e) => {
            eprintln!("error: {e}");
            ExitCode::FAILURE
        }
    }
}

fn sign_inner(args: &SignArgs) -> Result<String, String> {
    let secret = read_secret(&args.secret_env)?;
    let body = if args.body.as_os_str() == "-" {
        let mut b = Vec::new();
        std::io::stdin()
            .read_to_end(&mut b)
            .map_err(|e| format!("reading standard input: {e}"))?;
        b
    } else {
        std::fs::read(&args.body).map_err(|e| format!("reading {}: {e}", args.body.display()))?
    };
    let t = args.timestamp.unwrap_or_else(unix_now);
    Ok(header_for(&secret, args.scheme, args.mode, t, &body))
}

fn random_suffix() -> String {
    const ALPHABET: &[u8] = b"0123456789ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz";
    let mut b = [0u8; 24];
    if getrandom::fill(&mut b).is_err() {
        // Uniqueness, not secrecy, is what matters for a sample id.
        let n = SystemTime::now()
            .duration_since(UNIX_EPOCH)
            .map_or(0, |d| d.as_nanos());
        b.iter_mut()
            .enumerate()
            .for_each(|(i, x)| *x = (n >> (i % 16 * 8)) as u8);
    }
    b.iter()
        .map(|x| char::from(ALPHABET[usize::from(*x) % ALPHABET.len()]))
        .collect()
}

/// A sample event of `kind`, shaped like PayMongo's, or `None` for a type
/// there is no sample for.
pub fn sample_event(kind: &str, id: &str, livemode: bool, now: u64) -> Option<Value> {
    let amount = 10_000;
    let resource = match kind {
        "payment.paid" | "payment.failed" | "payment.refunded" => {
            let status = match kind {
                "payment.paid" => "paid",
                "payment.failed" => "failed",
                _ => "refunded",
            };
            json!({
                "id": format!("pay_{}", random_suffix()),
                "type": "payment",
                "attributes": {
                    "amount": amount, "currency": "PHP", "description": "sample order 1001",
                    "fee": 2500, "net_amount": 7500, "livemode": livemode, "status": status,
                    "source": { "id": format!("card_{}", random_suffix()), "type": "card", "brand": "visa", "last4": "4345" },
                    "payment_intent_id": format!("pi_{}", random_suffix()),
                    "paid_at": now, "created_at": now, "updated_at": now
                }
            })
        }
        "source.chargeable" => json!({
            "id": format!("src_{}", random_suffix()),
            "type": "source",
            "attributes": {
                "amount": amount, "currency": "PHP", "livemode": livemode, "status": "chargeable",
                "type": "gcash",
                "redirect": { "success": "https://example.com/success", "failed": "https://example.com/failed" },
                "created_at": now, "updated_at": now
            }
        }),
        "checkout_session.payment.paid" => json!({
            "id": format!("cs_{}", random_suffix()),
            "type": "checkout_session",
            "attributes": {
                "livemode": livemode, "status": "active", "reference_number": "order-1001",
                "line_items": [{ "amount": amount, "currency": "PHP", "name": "Sample item", "quantity": 1 }],
                "payments": [{ "id": format!("pay_{}", random_suffix()), "type": "payment",
                               "attributes": { "amount": amount, "currency": "PHP", "status": "paid" } }],
                "created_at": now, "updated_at": now
            }
        }),
        _ => return None,
    };
    Some(json!({
        "data": {
            "id": id,
            "type": "event",
            "attributes": {
                "type": kind,
                "livemode": livemode,
                "data": resource,
                "previous_data": {},
                "created_at": now,
                "updated_at": now
            }
        }
    }))
}

/// Runs `trigger`: exit 0 when the endpoint answers 2xx.
pub async fn trigger(args: &TriggerArgs) -> ExitCode {
    match trigger_inner(args).await {
        Ok(true) => ExitCode::SUCCESS,
        Ok(false) => ExitCode::FAILURE,
        Err(e) => {
            eprintln!("error: {e}");
            ExitCode::FAILURE
        }
    }
}

async fn trigger_inner(args: &TriggerArgs) -> Result<bool, String> {
    let secret = read_secret(&args.secret_env)?;
    let uri: Uri = args
        .url
        .parse()
        .map_err(|_| format!("`{}` is not a URL", args.url))?;
    if !matches!(uri.scheme_str(), Some("https" | "http")) || uri.host().is_none() {
        return Err(format!(
            "`{}` must be an absolute http:// or https:// URL",
            args.url
        ));
    }
    let id = args
        .event_id
        .clone()
        .unwrap_or_else(|| format!("evt_{}", random_suffix()));
    let now = unix_now();
    let livemode = args.mode == CliMode::Live;
    let event = sample_event(&args.event_type, &id, livemode, now).ok_or_else(|| {
        format!(
            "no sample for `{}`; choose one of: {}",
            args.event_type,
            SAMPLE_EVENTS.join(", ")
        )
    })?;
    let body = Bytes::from(serde_json::to_vec(&event).map_err(|e| e.to_string())?);
    let sig = header_for(&secret, args.scheme, args.mode, now, &body);
    let sig = HeaderValue::from_str(&sig).map_err(|e| e.to_string())?;

    let roots = match &args.ca_file {
        Some(p) => crate::tls::load_certs(p)?,
        None => Vec::new(),
    };
    let tls = crate::tls::client_config(&roots)?;
    let mut http = HttpConnector::new();
    http.enforce_http(false);
    let connector = hyper_rustls::HttpsConnectorBuilder::new()
        .with_tls_config(tls)
        .https_or_http()
        .enable_http1()
        .wrap_connector(http);
    let client: Client<_, Full<Bytes>> = Client::builder(TokioExecutor::new()).build(connector);
    let req = Request::post(uri)
        .header(CONTENT_TYPE, HeaderValue::from_static("application/json"))
        .header(signature::HEADER, sig)
        .header(
            USER_AGENT,
            HeaderValue::from_static(concat!(
                "paymongo-gateway-trigger/",
                env!("CARGO_PKG_VERSION")
            )),
        )
        .body(Full::new(body))
        .map_err(|e| e.to_string())?;

    let mode = if livemode { "live" } else { "test" };
    println!(
        "-> POST {} {} {id} ({mode} mode)",
        args.url, args.event_type
    );
    let timeout = Duration::from_secs(args.timeout);
    let exchange = async {
        let resp = client
            .request(req)
            .await
            .map_err(|e| format!("request failed: {}", crate::outbound::chain(&e)))?;
        let status = resp.status();
        let body = Limited::new(resp.into_body(), 16 << 10)
            .collect()
            .await
            .map(|c| c.to_bytes())
            .unwrap_or_default();
        Ok::<_, String>((status, body))
    };
    let (status, resp_body) = tokio::time::timeout(timeout, exchange)
        .await
        .map_err(|_| format!("no answer within {timeout:?}"))??;
    println!("<- {status} {}", String::from_utf8_lossy(&resp_body).trim());
    Ok(status.is_success())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_sample_is_a_valid_event() {
        for kind in SAMPLE_EVENTS {
            for live in [false, true] {
                let v = sample_event(kind, "evt_sample1", live, 1_700_000_000).unwrap();
                let bytes = serde_json::to_vec(&v).unwrap();
                let e = super::super::event::parse(&bytes).unwrap();
                assert_eq!(e.kind, *kind);
                assert_eq!(e.livemode, live);
                assert_eq!(e.id, "evt_sample1");
            }
        }
        assert!(sample_event("nope.nope", "evt_1", false, 0).is_none());
    }

    #[test]
    fn random_ids_are_event_id_safe_and_differ() {
        let a = random_suffix();
        assert_eq!(a.len(), 24);
        assert!(a.bytes().all(|b| b.is_ascii_alphanumeric()));
        assert_ne!(a, random_suffix());
    }
}

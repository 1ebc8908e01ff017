//! `paymongo-gateway demo`: the real gateway, offline.
//!
//! Generates a throwaway CA in memory, starts a stand-in for the PayMongo API
//! over TLS on loopback (it answers a few payment-intent endpoints and
//! rejects requests without the right Basic key, as PayMongo does), writes a
//! real `gateway.toml` plus secret and CA files into a temporary directory,
//! starts the gateway from that file, and prints commands to try.

use std::collections::HashMap;
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::process::ExitCode;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};

use base64::Engine as _;
use bytes::Bytes;
use http::header::{AUTHORIZATION, CONTENT_TYPE, HeaderValue};
use http::{Method, Request, Response, StatusCode};
use http_body_util::{BodyExt, Full, Limited};
use hyper::body::Incoming;
use rcgen::{
    BasicConstraints, CertificateParams, CertifiedIssuer, DnType, IsCa, KeyPair, KeyUsagePurpose,
};
use rustls_pki_types::{CertificateDer, PrivateKeyDer, PrivatePkcs8KeyDer};
use serde_json::{Value, json};

use crate::config::{Config, TlsIdentity};
use crate::gateway::Gateway;
use crate::server::{self, Handler, Peer, ResponseBody, ServeOptions, full};

/// A CA and a `localhost`/`127.0.0.1` server certificate it signed.
pub struct LocalCa {
    /// The CA certificate, PEM (what clients must trust).
    pub ca_pem: String,
    /// Server identity for `localhost` and `127.0.0.1`.
    pub server: TlsIdentity,
}

/// Makes a fresh CA and a loopback server certificate, in memory.
pub fn local_ca() -> Result<LocalCa, rcgen::Error> {
    let mut ca_params = CertificateParams::new(Vec::<String>::new())?;
    ca_params
        .distinguished_name
        .push(DnType::CommonName, "paymongo-gateway demo CA");
    ca_params.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
    ca_params.key_usages = vec![KeyUsagePurpose::KeyCertSign, KeyUsagePurpose::CrlSign];
    let ca = CertifiedIssuer::self_signed(ca_params, KeyPair::generate()?)?;

    let mut params = CertificateParams::new(vec!["localhost".to_owned(), "127.0.0.1".to_owned()])?;
    params
        .distinguished_name
        .push(DnType::CommonName, "localhost");
    let key = KeyPair::generate()?;
    let cert = params.signed_by(&key, &ca)?;
    Ok(LocalCa {
        ca_pem: ca.pem(),
        server: TlsIdentity {
            chain: vec![CertificateDer::from(cert.der().to_vec())],
            key: Arc::new(PrivateKeyDer::Pkcs8(PrivatePkcs8KeyDer::from(
                key.serialize_der(),
            ))),
            cert_path: PathBuf::from("(in memory)"),
        },
    })
}

/// A small stand-in for the PayMongo API.
#[derive(Clone)]
pub struct FakePayMongo {
    expected_auth: HeaderValue,
    intents: Arc<Mutex<HashMap<String, Value>>>,
    seq: Arc<AtomicU64>,
}

impl FakePayMongo {
    /// Accepts only `Authorization: Basic base64("<secret_key>:")`.
    pub fn new(secret_key: &str) -> Self {
        let b64 = base64::engine::general_purpose::STANDARD.encode(format!("{secret_key}:"));
        Self {
            expected_auth: HeaderValue::try_from(format!("Basic {b64}"))
                .unwrap_or_else(|_| HeaderValue::from_static("-")),
            intents: Arc::default(),
            seq: Arc::default(),
        }
    }

    fn intent(&self, amount: u64, currency: &str, desc: &str) -> Value {
        let n = self.seq.fetch_add(1, Ordering::Relaxed);
        let id = format!("pi_demo{n:016}");
        json!({"data": {"id": id, "type": "payment_intent", "attributes": {
            "amount": amount, "currency": currency, "description": desc,
            "status": "awaiting_payment_method", "livemode": false,
            "client_key": format!("{id}_client_demo"),
            "payment_method_allowed": ["card", "gcash", "paymaya"],
            "created_at": 1733300000, "updated_at": 1733300000 }}})
    }
}

fn reply(status: StatusCode, v: &Value) -> Response<ResponseBody> {
    let mut r = Response::new(Full::new(Bytes::from(v.to_string())));
    *r.status_mut() = status;
    r.headers_mut()
        .insert(CONTENT_TYPE, HeaderValue::from_static("application/json"));
    full(r)
}

fn pm_error(status: StatusCode, code: &str, detail: &str) -> Response<ResponseBody> {
    reply(
        status,
        &json!({"errors": [{"code": code, "detail": detail}]}),
    )
}

impl Handler for FakePayMongo {
    async fn call(&self, req: Request<Incoming>, _peer: Peer) -> Response<ResponseBody> {
        if req.headers().get(AUTHORIZATION) != Some(&self.expected_auth) {
            return pm_error(
                StatusCode::UNAUTHORIZED,
                "authentication_invalid",
                "The API key is missing or invalid.",
            );
        }
        let (parts, body) = req.into_parts();
        let body = match Limited::new(body, 64 << 10).collect().await {
            Ok(b) => b.to_bytes(),
            Err(_) => {
                return pm_error(
                    StatusCode::BAD_REQUEST,
                    "parameter_invalid",
                    "Body too large.",
                );
            }
        };
        let segs: Vec<&str> = parts.uri.path().trim_matches('/').split('/').collect();
        match (&parts.method, segs.as_slice()) {
            (&Method::POST, ["v1", "payment_intents"]) => {
                let v: Value = serde_json::from_slice(&body).unwrap_or(Value::Null);
                let attrs = &v["data"]["attributes"];
                let Some(amount) = attrs["amount"].as_u64().filter(|a| *a >= 2000) else {
                    return pm_error(
                        StatusCode::BAD_REQUEST,
                        "parameter_below_minimum",
                        "The value for amount cannot be less than 2000.",
                    );
                };
                let intent = self.intent(
                    amount,
                    attrs["currency"].as_str().unwrap_or("PHP"),
                    attrs["description"].as_str().unwrap_or(""),
                );
                let id = intent["data"]["id"].as_str().unwrap_or_default().to_owned();
                if let Ok(mut m) = self.intents.lock() {
                    m.insert(id, intent.clone());
                }
                reply(StatusCode::OK, &intent)
            }
            (&Method::GET, ["v1", "payment_intents", id]) => {
                let found = self.intents.lock().ok().and_then(|m| m.get(*id).cloned());
                match found {
                    Some(v) => reply(StatusCode::OK, &v),
                    None => pm_error(
                        StatusCode::NOT_FOUND,
                        "resource_not_found",
                        &format!("Payment intent with id {id} not found."),
                    ),
                }
            }
            (&Method::POST, ["v1", "payment_intents", id, "attach"]) => {
                let updated = self.intents.lock().ok().and_then(|mut m| {
                    m.get_mut(*id).map(|v| {
                        v["data"]["attributes"]["status"] = json!("succeeded");
                        v.clone()
                    })
                });
                match updated {
                    Some(v) => reply(StatusCode::OK, &v),
                    None => pm_error(
                        StatusCode::NOT_FOUND,
                        "resource_not_found",
                        "Payment intent not found.",
                    ),
                }
            }
            _ => pm_error(
                StatusCode::NOT_FOUND,
                "resource_not_found",
                "No such route in the demo API.",
            ),
        }
    }
}

/// Starts the stand-in API over TLS on `127.0.0.1:0`.
pub async fn start_fake_paymongo(
    ca: &LocalCa,
    secret_key: &str,
) -> Result<(server::Listener, SocketAddr), String> {
    let tls = crate::tls::server_config(&ca.server, &[b"h2", b"http/1.1"])?;
    let bound = server::bind(&crate::config::ListenAddr::Tcp(SocketAddr::from((
        [127, 0, 0, 1],
        0,
    ))))
    .await
    .map_err(|e| e.to_string())?;
    let mut opts = ServeOptions::plain("fake-paymongo");
    opts.tls = Some(Arc::new(move || Some(tls.clone())));
    let l = server::serve(bound, FakePayMongo::new(secret_key), opts).map_err(|e| e.to_string())?;
    let addr = l.addr().tcp().ok_or("fake api has no tcp address")?;
    Ok((l, addr))
}

fn random_token() -> String {
    let mut b = [0u8; 12];
    let _ = getrandom::fill(&mut b);
    hex::encode(b)
}

fn write_private(path: &Path, contents: &str) -> std::io::Result<()> {
    use std::io::Write as _;
    use std::os::unix::fs::OpenOptionsExt as _;
    let mut f = std::fs::OpenOptions::new()
        .write(true)
        .create(true)
        .truncate(true)
        .mode(0o600)
        .open(path)?;
    f.write_all(contents.as_bytes())
}

fn port_free(port: u16) -> bool {
    port == 0 || std::net::TcpListener::bind(("127.0.0.1", port)).is_ok()
}

/// Runs the demo until SIGINT/SIGTERM.
pub async fn run(port: u16) -> ExitCode {
    crate::tls::install_crypto_provider();
    crate::log::init(&crate::config::LogConfig {
        format: crate::config::LogFormat::Text,
        level: "info".into(),
    });
    match demo(port).await {
        Ok(code) => code,
        Err(e) => {
            eprintln!("demo failed: {e}");
            ExitCode::FAILURE
        }
    }
}

async fn demo(port: u16) -> Result<ExitCode, String> {
    let ca = local_ca().map_err(|e| format!("generating the demo CA: {e}"))?;
    let secret_key = format!("sk_test_demo{}", random_token());
    let (api, api_addr) = start_fake_paymongo(&ca, &secret_key).await?;

    let dir = std::env::temp_dir().join(format!("paymongo-gateway-demo-{}", std::process::id()));
    std::fs::create_dir_all(&dir).map_err(|e| format!("creating {}: {e}", dir.display()))?;
    let w = |name: &str, text: &str| {
        write_private(&dir.join(name), text).map_err(|e| format!("writing {name}: {e}"))
    };
    w("ca.pem", &ca.ca_pem)?;
    w("secret_key", &secret_key)?;
    let port = if port_free(port) {
        port
    } else {
        eprintln!("port {port} is busy; using a free port instead");
        0
    };
    let toml = format!(
        r#"# Written by `paymongo-gateway demo`. A real config, pointed at a local stand-in API.
mode = "test"
drain_timeout = "5s"

[upstream]
url = "https://localhost:{api_port}"
ca_file = "ca.pem"        # the demo's throwaway CA, added to the webpki roots
timeout = "10s"

[[service]]
name = "demo"
listen = "127.0.0.1:{port}"
secret_key = {{ file = "secret_key" }}
allow = [
  "POST /v1/payment_intents",
  "GET /v1/payment_intents/*",
  "POST /v1/payment_intents/*/attach",
]

[admin]
listen = "127.0.0.1:0"
"#,
        api_port = api_addr.port(),
    );
    w("gateway.toml", &toml)?;
    let config = Config::load(&dir.join("gateway.toml")).map_err(|e| e.to_string())?;
    let gw = Gateway::start(config).await.map_err(|e| e.to_string())?;
    let svc = gw
        .service_addr("demo")
        .await
        .and_then(|a| a.tcp())
        .ok_or("demo service did not bind")?;
    let admin = gw
        .addr(&crate::gateway::ListenerId::Admin)
        .await
        .map(|a| a.to_string())
        .unwrap_or_default();
    let base = format!("http://{svc}");
    println!(
        r#"
paymongo-gateway demo is running (offline). Config: {cfg}
  stand-in PayMongo API: https://localhost:{api_port} (TLS, throwaway CA)
  service "demo":        {base}   (no credentials needed: the gateway injects the key)
  admin:                 http://{admin}/metrics

Try:
  # create a payment intent (idempotent retry-safe with the same key)
  curl -s {base}/v1/payment_intents -H 'Content-Type: application/json' \
    -H 'Idempotency-Key: order-1001' \
    -d '{{"data":{{"attributes":{{"amount":10000,"currency":"PHP","description":"order 1001"}}}}}}'

  # read it back (use the id printed above)
  curl -s {base}/v1/payment_intents/pi_demo0000000000000000

  # a route outside this service's allowlist: 403 route_not_allowed, never forwarded
  curl -s {base}/v1/refunds -d '{{}}'

  # a caller's own Authorization is replaced, not forwarded
  curl -s {base}/v1/payment_intents/pi_demo0000000000000000 -H 'Authorization: Basic ZXZpbDo='

Press Ctrl-C to stop.
"#,
        cfg = dir.join("gateway.toml").display(),
        api_port = api_addr.port(),
    );
    let code = crate::cli::serve_until_signal(&gw).await;
    api.shutdown(std::time::Duration::from_secs(1)).await;
    let _ = std::fs::remove_dir_all(&dir);
    Ok(code)
}

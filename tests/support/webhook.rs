//! Webhook fixtures: an independent signer (the `hmac` and `sha2` crates
//! used directly, not the gateway's code, so a bug shared by its signer and
//! verifier cannot hide), sample events, and a gateway with a real HTTPS
//! webhook listener forwarding to a real [`Inward`] receiver.

use std::net::SocketAddr;
use std::time::{SystemTime, UNIX_EPOCH};

use hmac::{KeyInit, Mac};

use super::client::{Resp, send_tls, try_send_tls};
use super::gw::{Harness, TestGateway};
use super::inward::Inward;

pub const SECRET: &str = "whsk_currentSECRETvalue1";
pub const OLD_SECRET: &str = "whsk_previousSECRETvalue0";
pub const PATH: &str = "/webhooks/paymongo";

pub fn now() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .unwrap()
        .as_secs()
}

/// hex(HMAC-SHA256(secret, msg)).
pub fn hmac_hex(secret: &str, parts: &[&[u8]]) -> String {
    let mut mac = hmac::Hmac::<sha2::Sha256>::new_from_slice(secret.as_bytes()).unwrap();
    for p in parts {
        mac.update(p);
    }
    hex::encode(mac.finalize().into_bytes())
}

/// PayMongo's signature over `"<t>.<body>"`.
pub fn sig(secret: &str, t: u64, body: &[u8]) -> String {
    hmac_hex(secret, &[t.to_string().as_bytes(), b".", body])
}

/// A test-mode header as PayMongo sends it: `te` signed, `li` empty.
pub fn test_header(secret: &str, t: u64, body: &[u8]) -> String {
    format!("t={t},te={},li=", sig(secret, t, body))
}

/// A live-mode header: `li` signed, `te` empty.
pub fn live_header(secret: &str, t: u64, body: &[u8]) -> String {
    format!("t={t},te=,li={}", sig(secret, t, body))
}

/// A PayMongo event body. Deliberately not compact (spaces, a unicode
/// escape) so a re-serialising gateway would change the bytes.
pub fn event(id: &str, kind: &str, livemode: bool) -> String {
    format!(
        r#"{{"data": {{"id": "{id}", "type": "event", "attributes": {{"type": "{kind}", "livemode": {livemode}, "data": {{"id": "pay_1", "type": "payment", "attributes": {{"amount": 10000, "currency": "PHP", "description": "caf\u00e9 order"}}}}, "previous_data": {{}}, "created_at": 1733300000, "updated_at": 1733300000}}}}}}"#
    )
}

/// Writes the harness leaf (localhost, 127.0.0.1) as the webhook listener's
/// certificate and returns the `[webhooks]` TLS lines.
pub fn tls_lines(h: &Harness) -> String {
    std::fs::write(h.dir.path().join("wh.pem"), &h.leaf.cert_pem).unwrap();
    std::fs::write(h.dir.path().join("wh.key"), &h.leaf.key_pem).unwrap();
    "tls_cert = \"wh.pem\"\ntls_key = \"wh.key\"\n".to_owned()
}

/// `[webhooks]` with TLS and one endpoint at [`PATH`] forwarding to `forward_to`.
pub fn config(h: &Harness, forward_to: &str, webhooks_extra: &str, endpoint_extra: &str) -> String {
    format!(
        r#"
[webhooks]
listen = "127.0.0.1:0"
{tls}{webhooks_extra}

[[webhooks.endpoint]]
path = "{PATH}"
secrets = [{{ env = "WHSK" }}]
forward_to = "{forward_to}"
{endpoint_extra}
"#,
        tls = tls_lines(h)
    )
}

/// A running gateway with an HTTPS webhook listener and an inward receiver.
pub struct WebhookEnv {
    pub h: Harness,
    pub inward: Inward,
    pub g: TestGateway,
    pub addr: SocketAddr,
}

impl WebhookEnv {
    /// Default endpoint, secret [`SECRET`], plus extra config lines.
    pub async fn start(webhooks_extra: &str, endpoint_extra: &str) -> Self {
        let h = Harness::new().await;
        let inward = Inward::start().await;
        let cfg = config(&h, &inward.url("/events"), webhooks_extra, endpoint_extra);
        Self::start_with(h, inward, &cfg, &[("WHSK", SECRET)]).await
    }

    pub async fn start_with(h: Harness, inward: Inward, extra: &str, env: &[(&str, &str)]) -> Self {
        let g = h.gateway(extra, env).await;
        let addr = g.gw.webhooks_addr().await.unwrap().tcp().unwrap();
        Self { h, inward, g, addr }
    }

    /// POSTs `body` to [`PATH`] with these extra headers.
    pub async fn post(&self, headers: &[(&str, &str)], body: &[u8]) -> Resp {
        self.post_to(PATH, headers, body).await
    }

    pub async fn post_to(&self, path: &str, headers: &[(&str, &str)], body: &[u8]) -> Resp {
        let mut all = vec![("content-type", "application/json")];
        all.extend_from_slice(headers);
        send_tls(self.addr, &self.h.ca, "POST", path, &all, body).await
    }

    /// POSTs `body` signed now with `secret` in test mode.
    pub async fn post_signed(&self, secret: &str, body: &[u8]) -> Resp {
        let h = test_header(secret, now(), body);
        self.post(&[("paymongo-signature", &h)], body).await
    }

    pub async fn try_post(&self, headers: &[(&str, &str)], body: &[u8]) -> Result<Resp, String> {
        try_send_tls(self.addr, &self.h.ca, "POST", PATH, headers, body).await
    }

    /// The admin `/metrics` text.
    pub async fn metrics(&self) -> String {
        let r = super::send(self.g.admin().await, "GET", "/metrics", &[], "").await;
        String::from_utf8_lossy(&r.body).into_owned()
    }
}

/// The value of `paymongo_gateway_webhooks_total{reason="<reason>"}`, 0 if absent.
pub fn webhook_count(metrics: &str, reason: &str) -> u64 {
    let prefix = format!("paymongo_gateway_webhooks_total{{reason=\"{reason}\"}} ");
    metrics
        .lines()
        .find_map(|l| l.strip_prefix(&prefix))
        .map_or(0, |v| v.trim().parse().unwrap())
}

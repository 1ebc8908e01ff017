//! Logging: tracing with text or JSON lines, a reloadable level filter, and
//! the path masking used in per-request lines.
//!
//! What is never logged: bodies, keys, `Authorization` values, signatures,
//! full idempotency keys. Paths are logged with resource ids masked, and
//! never with their query string.

use std::fmt;
use std::sync::OnceLock;

use tracing_subscriber::layer::SubscriberExt;
use tracing_subscriber::util::SubscriberInitExt;
use tracing_subscriber::{EnvFilter, Registry, reload};

use crate::config::{LogConfig, LogFormat};

type FilterHandle = reload::Handle<EnvFilter, Registry>;

static FILTER: OnceLock<FilterHandle> = OnceLock::new();

/// Installs the global subscriber. `RUST_LOG`, when set, overrides `level`.
/// Later calls (tests) are no-ops.
pub fn init(cfg: &LogConfig) {
    if FILTER.get().is_some() {
        return;
    }
    let filter = std::env::var("RUST_LOG")
        .ok()
        .and_then(|v| EnvFilter::builder().parse(v).ok())
        .unwrap_or_else(|| filter_for(&cfg.level));
    let (filter, handle) = reload::Layer::new(filter);
    let registry = tracing_subscriber::registry().with(filter);
    let ok = match cfg.format {
        LogFormat::Text => registry
            .with(
                tracing_subscriber::fmt::layer()
                    .with_writer(std::io::stderr)
                    .with_ansi(std::io::IsTerminal::is_terminal(&std::io::stderr()))
                    .with_target(false),
            )
            .try_init()
            .is_ok(),
        LogFormat::Json => registry
            .with(
                tracing_subscriber::fmt::layer()
                    .json()
                    .flatten_event(true)
                    .with_writer(std::io::stderr),
            )
            .try_init()
            .is_ok(),
    };
    if ok {
        let _ = FILTER.set(handle);
    }
}

fn filter_for(level: &str) -> EnvFilter {
    EnvFilter::builder()
        .parse(level)
        .unwrap_or_else(|_| EnvFilter::new("info"))
}

/// Applies a new `[log] level` (on reload). `RUST_LOG`, when set, wins.
pub fn set_level(level: &str) {
    if std::env::var_os("RUST_LOG").is_some() {
        return;
    }
    if let Some(h) = FILTER.get() {
        let _ = h.reload(filter_for(level));
    }
}

/// Displays a request path with resource ids replaced by `{id}` and no query.
///
/// PayMongo path words are lower-case snake case (`payment_intents`,
/// `attach`); ids (`pi_3Pb...`, `cus_...`, `evt_...`) carry digits or capitals.
/// Any segment after the version that has either, or is long, is masked.
pub struct MaskedPath<'a>(pub &'a str);

impl fmt::Display for MaskedPath<'_> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let path = self.0.split(['?', '#']).next().unwrap_or("");
        for (i, seg) in path.split('/').enumerate() {
            if i > 0 {
                f.write_str("/")?;
            }
            let looks_like_id = i >= 2
                && (seg.len() > 24
                    || seg
                        .bytes()
                        .any(|b| b.is_ascii_digit() || b.is_ascii_uppercase() || b == b'%'));
            if looks_like_id {
                f.write_str("{id}")?;
            } else {
                f.write_str(seg)?;
            }
        }
        Ok(())
    }
}

/// Displays only the first characters of an idempotency key or event id.
pub struct Abbrev<'a>(pub &'a str);

impl fmt::Display for Abbrev<'_> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let cut = self
            .0
            .char_indices()
            .nth(6)
            .map_or(self.0.len(), |(i, _)| i);
        f.write_str(&self.0[..cut])?;
        if cut < self.0.len() {
            f.write_str("…")?;
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn masks_ids_and_drops_query() {
        let m = |p: &str| MaskedPath(p).to_string();
        assert_eq!(m("/v1/payment_intents"), "/v1/payment_intents");
        assert_eq!(
            m("/v1/payment_intents/pi_3Pb9xYz/attach"),
            "/v1/payment_intents/{id}/attach"
        );
        assert_eq!(
            m("/v1/customers/cus_abc1?email=a@b.c"),
            "/v1/customers/{id}"
        );
        assert_eq!(
            m("/v1/sources/src_abcdefghijklmnopqrstuvwxyz"),
            "/v1/sources/{id}"
        );
        assert_eq!(m("/"), "/");
    }

    #[test]
    fn abbreviates() {
        assert_eq!(Abbrev("order-12345-xyz").to_string(), "order-…");
        assert_eq!(Abbrev("abc").to_string(), "abc");
    }
}

//! Reading secrets from where a [`SecretRef`] points, and the checked secret
//! types built from them. Values are held as `secrecy` types from the moment
//! they are read; `Debug` prints only what kind of secret it is.

use std::fmt;

use base64::Engine as _;
use http::HeaderValue;
use secrecy::{ExposeSecret, SecretString};

use super::Mode;
use super::types::SecretRef;

/// Where `{ env = .. }` references are looked up. The process environment in
/// production; tests pass a map so they need not mutate global state.
pub trait Env {
    /// The value of variable `name`, if set.
    fn var(&self, name: &str) -> Option<String>;
}

/// The real process environment.
#[derive(Clone, Copy, Debug, Default)]
pub struct ProcessEnv;

impl Env for ProcessEnv {
    fn var(&self, name: &str) -> Option<String> {
        std::env::var(name).ok()
    }
}

impl<F: Fn(&str) -> Option<String>> Env for F {
    fn var(&self, name: &str) -> Option<String> {
        self(name)
    }
}

/// Reads the secret a reference points at. Surrounding whitespace (the
/// trailing newline of a mounted file) is trimmed; an empty value is an error.
pub fn read_secret(r: &SecretRef, env: &dyn Env) -> Result<SecretString, String> {
    let raw = match r {
        SecretRef::Env(name) => env
            .var(name)
            .ok_or_else(|| format!("environment variable {name} is not set"))?,
        SecretRef::File(path) => std::fs::read_to_string(path)
            .map_err(|e| format!("cannot read secret file {}: {e}", path.display()))?,
    };
    let trimmed = raw.trim();
    if trimmed.is_empty() {
        return Err(format!("the secret in {r} is empty"));
    }
    Ok(SecretString::from(trimmed.to_owned()))
}

/// A PayMongo secret API key (`sk_test_...` or `sk_live_...`) and the
/// `Authorization` header built from it once, at load time.
#[derive(Clone)]
pub struct ApiKey {
    key: SecretString,
    live: bool,
    header: HeaderValue,
}

impl ApiKey {
    /// Checks the shape of a key and that it fits `mode`. Errors never contain the key.
    pub fn new(key: SecretString, mode: Mode) -> Result<Self, String> {
        let k = key.expose_secret();
        let live = if k.starts_with("sk_live_") {
            true
        } else if k.starts_with("sk_test_") {
            false
        } else if k.starts_with("pk_") {
            return Err("is a public key (pk_...); the gateway needs the secret key (sk_test_... or sk_live_...)".into());
        } else {
            return Err(
                "does not look like a PayMongo secret key; expected sk_test_... or sk_live_..."
                    .into(),
            );
        };
        if k.len() <= "sk_test_".len() || !k.bytes().all(|b| b.is_ascii_graphic() && b != b':') {
            return Err(
                "is malformed: expected sk_test_/sk_live_ followed by printable characters, no ':'"
                    .into(),
            );
        }
        match (mode, live) {
            (Mode::Test, true) => {
                return Err("is a live key (sk_live_...) but mode = \"test\"; use a sk_test_ key or set mode = \"live\"".into());
            }
            (Mode::Live, false) => {
                return Err("is a test key (sk_test_...) but mode = \"live\"; use a sk_live_ key or set mode = \"test\"".into());
            }
            _ => {}
        }
        let encoded = base64::engine::general_purpose::STANDARD.encode(format!("{k}:"));
        let mut header = HeaderValue::try_from(format!("Basic {encoded}"))
            .map_err(|_| "cannot be encoded into an Authorization header".to_string())?;
        // Sensitive: HPACK never-indexes it and `Debug` prints `Sensitive`.
        header.set_sensitive(true);
        Ok(Self { key, live, header })
    }

    /// `Authorization: Basic base64("<key>:")`, marked sensitive.
    pub fn authorization(&self) -> &HeaderValue {
        &self.header
    }

    /// Whether this is a live-mode key.
    pub fn is_live(&self) -> bool {
        self.live
    }

    /// The raw key, for code that must hand it to a peer (never to a log).
    pub fn expose(&self) -> &str {
        self.key.expose_secret()
    }
}

impl fmt::Debug for ApiKey {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let kind = if self.live { "live" } else { "test" };
        write!(f, "ApiKey({kind}, [REDACTED])")
    }
}

/// A webhook signing secret (PayMongo's `whsk_...`, or any shared secret for `hmac-hex`).
#[derive(Clone)]
pub struct WebhookSecret(SecretString);

impl WebhookSecret {
    /// Wraps a secret that was read from its reference.
    pub fn new(s: SecretString) -> Self {
        Self(s)
    }

    /// The HMAC key bytes.
    pub fn key_bytes(&self) -> &[u8] {
        self.0.expose_secret().as_bytes()
    }
}

impl fmt::Debug for WebhookSecret {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("WebhookSecret([REDACTED])")
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn key(s: &str, mode: Mode) -> Result<ApiKey, String> {
        ApiKey::new(SecretString::from(s.to_owned()), mode)
    }

    #[test]
    fn header_is_basic_key_colon() {
        let k = key("sk_test_abc123", Mode::Test).unwrap();
        // base64("sk_test_abc123:")
        assert_eq!(
            k.authorization().to_str().unwrap(),
            "Basic c2tfdGVzdF9hYmMxMjM6"
        );
        assert!(k.authorization().is_sensitive());
    }

    #[test]
    fn refuses_wrong_kinds() {
        assert!(
            key("sk_live_abc", Mode::Test)
                .unwrap_err()
                .contains("live key")
        );
        assert!(
            key("sk_test_abc", Mode::Live)
                .unwrap_err()
                .contains("test key")
        );
        assert!(
            key("pk_test_abc", Mode::Test)
                .unwrap_err()
                .contains("public key")
        );
        assert!(key("whsk_abc", Mode::Test).is_err());
        assert!(key("sk_test_", Mode::Test).is_err());
        assert!(key("sk_test_a:b", Mode::Test).is_err());
        assert!(key("sk_test_a b", Mode::Test).is_err());
        assert!(key("sk_live_abc", Mode::Live).is_ok());
    }

    #[test]
    fn debug_never_shows_the_key() {
        let k = key("sk_test_supersecretvalue", Mode::Test).unwrap();
        let s = format!("{k:?}");
        assert!(!s.contains("supersecretvalue"), "{s}");
        let w = WebhookSecret::new(SecretString::from("whsk_hidden".to_owned()));
        assert!(!format!("{w:?}").contains("hidden"));
    }

    #[test]
    fn errors_never_contain_the_value() {
        for v in [
            "sk_live_leakme1",
            "pk_live_leakme1",
            "garbage_leakme1",
            "sk_test_leak me1",
        ] {
            let e = key(v, Mode::Test).unwrap_err();
            assert!(!e.contains("leakme1"), "{e}");
        }
    }
}

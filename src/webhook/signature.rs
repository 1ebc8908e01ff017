//! Signature header parsing and verification. Pure functions: no I/O, no
//! clock (the caller passes `now`), so every rule is unit-testable.
//!
//! `paymongo` scheme (PayMongo's own): `Paymongo-Signature:
//! t=<unix seconds>,te=<hex>,li=<hex>`, where each signature is
//! hex(HMAC-SHA256(secret, "<t>.<raw body>")). `te` is checked in test mode,
//! `li` in live mode; PayMongo leaves the other one empty. `hmac-hex` scheme:
//! the header is hex(HMAC-SHA256(secret, raw body)), with no timestamp.
//!
//! The parser is strict where leniency could hide an attack (a key given
//! twice, a signature of the wrong length, non-ASCII, oversized input) and
//! lenient only where PayMongo may legitimately evolve: keys it does not
//! know (`v2=...`) are skipped, as Stripe-style receivers do, because
//! rejecting them would turn a harmless format addition into an outage.
//!
//! Comparison is constant-time (`Mac::verify_slice`); the MAC is fed `t`, `.`
//! and the body in turn, so the body is never copied to build the message.

use std::fmt;
use std::time::Duration;

use hmac::{Hmac, KeyInit, Mac};
use http::HeaderMap;
use sha2::Sha256;

use crate::config::{Mode, SignatureScheme, WebhookSecret};

/// The header PayMongo signs deliveries with.
pub const HEADER: &str = "paymongo-signature";

/// Longest header value considered. PayMongo's is about 150 bytes; anything
/// far larger is not a signature and is refused before any parsing work.
pub const MAX_HEADER_LEN: usize = 512;

/// At most this many `key=value` elements.
const MAX_ELEMENTS: usize = 8;

/// Length in bytes of an HMAC-SHA256 tag.
pub const TAG_LEN: usize = 32;

type HmacSha256 = Hmac<Sha256>;

/// What is wrong with the shape of a signature header (400).
#[derive(Clone, Copy, Debug, PartialEq, Eq, thiserror::Error)]
pub enum Malformed {
    /// The value is empty.
    #[error("the header is empty")]
    Empty,
    /// Bytes outside visible ASCII.
    #[error("the header is not visible ascii")]
    NotAscii,
    /// `a=1,,b=2` or a trailing comma.
    #[error("an element is empty")]
    EmptyElement,
    /// An element without `=`.
    #[error("an element has no '='")]
    NoEquals,
    /// A key that is not lower-case letters, digits or `_`, or is too long.
    #[error("an element has an invalid key")]
    BadKey,
    /// More than [`MAX_ELEMENTS`] elements.
    #[error("too many elements")]
    TooManyElements,
    /// The same key twice: which one would count is ambiguous, so neither does.
    #[error("key `{0}` appears more than once")]
    DuplicateKey(&'static str),
    /// No `t=`.
    #[error("no timestamp (t=)")]
    NoTimestamp,
    /// `t` is not 1 to 19 decimal digits.
    #[error("the timestamp is not a unix time in seconds")]
    BadTimestamp,
    /// Neither `te=` nor `li=`.
    #[error("no signature element (te= or li=)")]
    NoSignatures,
    /// A signature with characters outside `0-9a-fA-F`.
    #[error("the {0} signature is not hex")]
    NotHex(&'static str),
    /// A signature that is not 64 hex digits.
    #[error("the {0} signature is not 64 hex digits")]
    WrongLength(&'static str),
}

/// Why a delivery's signature was not accepted.
#[derive(Clone, Copy, Debug, PartialEq, Eq, thiserror::Error)]
pub enum SignatureError {
    /// No `Paymongo-Signature` header (400).
    #[error("no paymongo-signature header")]
    Missing,
    /// The header was sent more than once (400).
    #[error("more than one paymongo-signature header")]
    Duplicated,
    /// The header is longer than [`MAX_HEADER_LEN`] (400).
    #[error("paymongo-signature header is {0} bytes, over the {MAX_HEADER_LEN}-byte limit")]
    TooLong(usize),
    /// The header is not in the scheme's format (400).
    #[error("malformed paymongo-signature header: {0}")]
    Malformed(#[from] Malformed),
    /// Well-formed, but the element for this mode is empty (401).
    #[error("the header has no {0} signature")]
    NoSignatureForMode(&'static str),
    /// No configured secret produces this signature (401).
    #[error("the signature does not match any configured secret")]
    Mismatch,
    /// The signature is genuine but `t` is outside the tolerance (401).
    #[error("the timestamp is {skew_secs}s away from now; the tolerance is {tolerance_secs}s")]
    Stale {
        /// |now − t| in seconds.
        skew_secs: u64,
        /// The configured tolerance in seconds.
        tolerance_secs: u64,
    },
}

/// A parsed `paymongo` header. `t` is kept as sent: the MAC covers those
/// exact bytes, not a re-rendering of the number.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct PaymongoHeader<'a> {
    /// The timestamp text as sent.
    pub t: &'a str,
    /// The timestamp as a number.
    pub timestamp: u64,
    /// `te` (test mode); `None` when absent or empty.
    pub te: Option<[u8; TAG_LEN]>,
    /// `li` (live mode); `None` when absent or empty.
    pub li: Option<[u8; TAG_LEN]>,
}

/// The single `Paymongo-Signature` value, or why there is none to use.
/// A repeated header is refused rather than picking one.
pub fn header_value(headers: &HeaderMap) -> Result<&[u8], SignatureError> {
    let mut all = headers.get_all(HEADER).iter();
    let first = all.next().ok_or(SignatureError::Missing)?;
    if all.next().is_some() {
        return Err(SignatureError::Duplicated);
    }
    Ok(first.as_bytes())
}

fn checked_ascii(value: &[u8]) -> Result<&str, SignatureError> {
    if value.len() > MAX_HEADER_LEN {
        return Err(SignatureError::TooLong(value.len()));
    }
    // One pass: refuse anything but visible ASCII, space and tab, and note
    // whether there is anything besides blanks.
    let mut blank = true;
    for &b in value {
        if b.is_ascii_graphic() {
            blank = false;
        } else if b != b' ' && b != b'\t' {
            return Err(Malformed::NotAscii.into());
        }
    }
    if blank {
        return Err(Malformed::Empty.into());
    }
    // All bytes are ASCII, so this cannot fail; map rather than unwrap.
    std::str::from_utf8(value).map_err(|_| Malformed::NotAscii.into())
}

/// Hex digit values; 0xFF marks a non-hex byte.
static HEX_VALUE: [u8; 256] = {
    let mut t = [0xFFu8; 256];
    let mut i = 0;
    while i < 10 {
        t[b'0' as usize + i] = i as u8;
        i += 1;
    }
    let mut i = 0;
    while i < 6 {
        t[b'a' as usize + i] = 10 + i as u8;
        t[b'A' as usize + i] = 10 + i as u8;
        i += 1;
    }
    t
};

/// Decodes a 64-digit hex tag in one pass (a table lookup per digit; this
/// is a measurable share of verifying a 1 KiB body). Empty means "absent".
fn decode_tag(hex_text: &str, which: &'static str) -> Result<Option<[u8; TAG_LEN]>, Malformed> {
    let digits = hex_text.as_bytes();
    if digits.is_empty() {
        return Ok(None);
    }
    if digits.len() != 2 * TAG_LEN {
        let hex = digits.iter().all(|&b| HEX_VALUE[usize::from(b)] != 0xFF);
        return Err(if hex {
            Malformed::WrongLength(which)
        } else {
            Malformed::NotHex(which)
        });
    }
    let mut out = [0u8; TAG_LEN];
    // Invalid digits map to 0xFF, so any of them leaves high bits in `seen`.
    let mut seen = 0u8;
    for (o, pair) in out.iter_mut().zip(digits.chunks_exact(2)) {
        let (hi, lo) = (
            HEX_VALUE[usize::from(pair[0])],
            HEX_VALUE[usize::from(pair[1])],
        );
        seen |= hi | lo;
        *o = (hi << 4) | (lo & 0x0F);
    }
    if seen & 0xF0 != 0 {
        return Err(Malformed::NotHex(which));
    }
    Ok(Some(out))
}

/// Parses a `paymongo` scheme header value.
pub fn parse_paymongo(value: &[u8]) -> Result<PaymongoHeader<'_>, SignatureError> {
    let text = checked_ascii(value)?;
    let mut t: Option<&str> = None;
    let mut te: Option<&str> = None;
    let mut li: Option<&str> = None;
    for (i, element) in text.split(',').enumerate() {
        if i >= MAX_ELEMENTS {
            return Err(Malformed::TooManyElements.into());
        }
        let element = element.trim_matches([' ', '\t']);
        if element.is_empty() {
            return Err(Malformed::EmptyElement.into());
        }
        let (key, val) = element.split_once('=').ok_or(Malformed::NoEquals)?;
        let (slot, name) = match key {
            "t" => (&mut t, "t"),
            "te" => (&mut te, "te"),
            "li" => (&mut li, "li"),
            other => {
                let valid = !other.is_empty()
                    && other.len() <= 16
                    && other
                        .bytes()
                        .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'_');
                if !valid {
                    return Err(Malformed::BadKey.into());
                }
                continue;
            }
        };
        if slot.replace(val).is_some() {
            return Err(Malformed::DuplicateKey(name).into());
        }
    }
    let t = t.ok_or(Malformed::NoTimestamp)?;
    if t.is_empty() || t.len() > 19 || !t.bytes().all(|b| b.is_ascii_digit()) {
        return Err(Malformed::BadTimestamp.into());
    }
    let timestamp = t.parse::<u64>().map_err(|_| Malformed::BadTimestamp)?;
    if te.is_none() && li.is_none() {
        return Err(Malformed::NoSignatures.into());
    }
    Ok(PaymongoHeader {
        t,
        timestamp,
        te: te.map(|v| decode_tag(v, "te")).transpose()?.flatten(),
        li: li.map(|v| decode_tag(v, "li")).transpose()?.flatten(),
    })
}

/// Parses an `hmac-hex` scheme header value: exactly 64 hex digits.
pub fn parse_hmac_hex(value: &[u8]) -> Result<[u8; TAG_LEN], SignatureError> {
    let text = checked_ascii(value)?.trim_matches([' ', '\t']);
    decode_tag(text, "hmac-hex")?.ok_or_else(|| Malformed::Empty.into())
}

/// A successful verification.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Verified {
    /// Which configured secret matched: 0 is the current one, 1 the
    /// previous one during a rotation (worth logging: it tells the operator
    /// when the old secret can be dropped).
    pub secret_index: usize,
}

/// Checks deliveries for one endpoint: its scheme and its secrets, keyed
/// once at build time so a request only clones a ready HMAC state.
#[derive(Clone)]
pub struct Verifier {
    scheme: SignatureScheme,
    keys: Vec<HmacSha256>,
}

impl fmt::Debug for Verifier {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Verifier")
            .field("scheme", &self.scheme)
            .field("secrets", &self.keys.len())
            .finish()
    }
}

fn keyed(secret: &[u8]) -> HmacSha256 {
    // HMAC takes keys of any length (long ones are hashed first), so this
    // cannot fail; the fallback only exists to avoid an unwrap.
    HmacSha256::new_from_slice(secret).unwrap_or_else(|_| HmacSha256::new(&Default::default()))
}

impl Verifier {
    /// A verifier for `scheme` accepting any of `secrets` (current first).
    pub fn new(scheme: SignatureScheme, secrets: &[WebhookSecret]) -> Self {
        Self {
            scheme,
            keys: secrets.iter().map(|s| keyed(s.key_bytes())).collect(),
        }
    }

    /// The scheme checked.
    pub fn scheme(&self) -> SignatureScheme {
        self.scheme
    }

    /// Verifies `header` (the raw `Paymongo-Signature` value) against the
    /// raw `body`. `now` is unix seconds. The signature is checked before the
    /// timestamp, so `Stale` is only ever reported for genuine deliveries —
    /// a clock-skew signal for the operator rather than attacker noise.
    pub fn verify(
        &self,
        header: &[u8],
        body: &[u8],
        mode: Mode,
        tolerance: Duration,
        now: u64,
    ) -> Result<Verified, SignatureError> {
        match self.scheme {
            SignatureScheme::Paymongo => {
                let h = parse_paymongo(header)?;
                let (tag, which) = match mode {
                    Mode::Test => (h.te, "te (test mode)"),
                    Mode::Live => (h.li, "li (live mode)"),
                };
                let tag = tag.ok_or(SignatureError::NoSignatureForMode(which))?;
                let verified = self.check(&tag, |mac| {
                    mac.update(h.t.as_bytes());
                    mac.update(b".");
                    mac.update(body);
                })?;
                let skew = now.abs_diff(h.timestamp);
                if skew > tolerance.as_secs() {
                    return Err(SignatureError::Stale {
                        skew_secs: skew,
                        tolerance_secs: tolerance.as_secs(),
                    });
                }
                Ok(verified)
            }
            SignatureScheme::HmacHex => {
                let tag = parse_hmac_hex(header)?;
                self.check(&tag, |mac| mac.update(body))
            }
        }
    }

    fn check(
        &self,
        tag: &[u8; TAG_LEN],
        feed: impl Fn(&mut HmacSha256),
    ) -> Result<Verified, SignatureError> {
        for (secret_index, key) in self.keys.iter().enumerate() {
            let mut mac = key.clone();
            feed(&mut mac);
            if mac.verify_slice(tag).is_ok() {
                return Ok(Verified { secret_index });
            }
        }
        Err(SignatureError::Mismatch)
    }
}

/// HMAC-SHA256 of `"<t>.<body>"` (with `t`) or of `body` alone, as hex.
pub fn sign_hex(secret: &[u8], t: Option<&str>, body: &[u8]) -> String {
    let mut mac = keyed(secret);
    if let Some(t) = t {
        mac.update(t.as_bytes());
        mac.update(b".");
    }
    mac.update(body);
    hex::encode(mac.finalize().into_bytes())
}

/// A `paymongo` scheme header value as PayMongo sends it: the element for
/// `mode` signed, the other one present but empty.
pub fn paymongo_header(secret: &[u8], timestamp: u64, body: &[u8], mode: Mode) -> String {
    let t = timestamp.to_string();
    let sig = sign_hex(secret, Some(&t), body);
    match mode {
        Mode::Test => format!("t={t},te={sig},li="),
        Mode::Live => format!("t={t},te=,li={sig}"),
    }
}

/// An `hmac-hex` scheme header value.
pub fn hmac_hex_header(secret: &[u8], body: &[u8]) -> String {
    sign_hex(secret, None, body)
}

#[cfg(test)]
mod tests {
    use secrecy::SecretString;

    use super::*;

    const SECRET: &str = "whsk_test_vector";
    const BODY: &[u8] = br#"{"data":{"id":"evt_1"}}"#;
    // `printf '%s' '1496734173.{"data":{"id":"evt_1"}}' | openssl dgst -sha256 -hmac whsk_test_vector`
    const KAT_PAYMONGO: &str = "6cdefde80764cf7efb30fc4b63c81fff4cb520159d1a49dc687bf83d5e4519d0";
    // `printf '%s' '{"data":{"id":"evt_1"}}' | openssl dgst -sha256 -hmac whsk_test_vector`
    const KAT_HMAC_HEX: &str = "888942f699963a65499c85fc497a36a21d554ced2635bb969c97f167655d840f";
    const T: u64 = 1_496_734_173;
    const TOL: Duration = Duration::from_secs(300);

    fn secret(s: &str) -> WebhookSecret {
        WebhookSecret::new(SecretString::from(s.to_owned()))
    }

    fn paymongo(secrets: &[&str]) -> Verifier {
        let s: Vec<_> = secrets.iter().map(|s| secret(s)).collect();
        Verifier::new(SignatureScheme::Paymongo, &s)
    }

    #[test]
    fn known_answers_match_openssl() {
        assert_eq!(
            sign_hex(SECRET.as_bytes(), Some("1496734173"), BODY),
            KAT_PAYMONGO
        );
        assert_eq!(hmac_hex_header(SECRET.as_bytes(), BODY), KAT_HMAC_HEX);
    }

    #[test]
    fn test_mode_checks_te_and_live_mode_checks_li() {
        let v = paymongo(&[SECRET]);
        let te_only = format!("t={T},te={KAT_PAYMONGO},li=");
        let li_only = format!("t={T},te=,li={KAT_PAYMONGO}");
        assert_eq!(
            v.verify(te_only.as_bytes(), BODY, Mode::Test, TOL, T),
            Ok(Verified { secret_index: 0 })
        );
        assert_eq!(
            v.verify(li_only.as_bytes(), BODY, Mode::Test, TOL, T),
            Err(SignatureError::NoSignatureForMode("te (test mode)"))
        );
        assert!(
            v.verify(li_only.as_bytes(), BODY, Mode::Live, TOL, T)
                .is_ok()
        );
        // A valid li next to a wrong te is still wrong in test mode.
        let wrong_te = format!("t={T},te={},li={KAT_PAYMONGO}", "0".repeat(64));
        assert_eq!(
            v.verify(wrong_te.as_bytes(), BODY, Mode::Test, TOL, T),
            Err(SignatureError::Mismatch)
        );
    }

    #[test]
    fn any_listed_secret_passes_and_reports_which() {
        let v = paymongo(&["whsk_new", SECRET]);
        let h = format!("t={T},te={KAT_PAYMONGO},li=");
        assert_eq!(
            v.verify(h.as_bytes(), BODY, Mode::Test, TOL, T),
            Ok(Verified { secret_index: 1 })
        );
        let none = paymongo(&["whsk_new", "whsk_other"]);
        assert_eq!(
            none.verify(h.as_bytes(), BODY, Mode::Test, TOL, T),
            Err(SignatureError::Mismatch)
        );
    }

    #[test]
    fn every_body_byte_and_the_timestamp_are_covered() {
        let v = paymongo(&[SECRET]);
        let h = format!("t={T},te={KAT_PAYMONGO},li=");
        for i in 0..BODY.len() {
            let mut b = BODY.to_vec();
            b[i] ^= 0x01;
            assert_eq!(
                v.verify(h.as_bytes(), &b, Mode::Test, TOL, T),
                Err(SignatureError::Mismatch),
                "byte {i}"
            );
        }
        // Same number, different text: the MAC covers the text as sent.
        let padded = format!("t=0{T},te={KAT_PAYMONGO},li=");
        assert_eq!(
            v.verify(padded.as_bytes(), BODY, Mode::Test, TOL, T),
            Err(SignatureError::Mismatch)
        );
        let other_t = format!("t={},te={KAT_PAYMONGO},li=", T + 1);
        assert_eq!(
            v.verify(other_t.as_bytes(), BODY, Mode::Test, TOL, T),
            Err(SignatureError::Mismatch)
        );
    }

    #[test]
    fn tolerance_is_inclusive_both_ways() {
        let v = paymongo(&[SECRET]);
        let h = format!("t={T},te={KAT_PAYMONGO},li=");
        for now in [T - 300, T + 300] {
            assert!(
                v.verify(h.as_bytes(), BODY, Mode::Test, TOL, now).is_ok(),
                "now {now}"
            );
        }
        for now in [T - 301, T + 301, 0, u64::MAX] {
            assert!(
                matches!(
                    v.verify(h.as_bytes(), BODY, Mode::Test, TOL, now),
                    Err(SignatureError::Stale { .. })
                ),
                "now {now}"
            );
        }
    }

    #[test]
    fn stale_is_only_reported_for_genuine_signatures() {
        let v = paymongo(&[SECRET]);
        let forged = format!("t={T},te={},li=", "ab".repeat(32));
        assert_eq!(
            v.verify(forged.as_bytes(), BODY, Mode::Test, TOL, 0),
            Err(SignatureError::Mismatch)
        );
    }

    #[test]
    fn malformed_headers_are_refused_with_a_reason() {
        let sig = KAT_PAYMONGO;
        let cases: &[(&str, SignatureError)] = &[
            ("", Malformed::Empty.into()),
            ("   ", Malformed::Empty.into()),
            ("garbage", Malformed::NoEquals.into()),
            ("t=1,,te=", Malformed::EmptyElement.into()),
            ("t=1,te=,", Malformed::EmptyElement.into()),
            ("te=", Malformed::NoTimestamp.into()),
            ("t=,te=", Malformed::BadTimestamp.into()),
            ("t=-1,te=", Malformed::BadTimestamp.into()),
            ("t=+1,te=", Malformed::BadTimestamp.into()),
            ("t=1e9,te=", Malformed::BadTimestamp.into()),
            ("t=99999999999999999999,te=", Malformed::BadTimestamp.into()),
            ("t=1", Malformed::NoSignatures.into()),
            ("t=1,t=2,te=", Malformed::DuplicateKey("t").into()),
            ("t=1,te=,te=", Malformed::DuplicateKey("te").into()),
            ("t=1,li=,li=", Malformed::DuplicateKey("li").into()),
            ("t=1,te=xyz", Malformed::NotHex("te").into()),
            ("t=1,te=abc", Malformed::WrongLength("te").into()),
            ("t=1,li=zz", Malformed::NotHex("li").into()),
            ("T=1,te=", Malformed::BadKey.into()),
            ("t=1,=x,te=", Malformed::BadKey.into()),
            (
                "t=1,a=,b=,c=,d=,e=,f=,g=,te=",
                Malformed::TooManyElements.into(),
            ),
            ("t=1,te=é", Malformed::NotAscii.into()),
        ];
        for (h, want) in cases {
            assert_eq!(parse_paymongo(h.as_bytes()).err(), Some(*want), "{h:?}");
        }
        // Truncated and lengthened signatures.
        let short = format!("t=1,te={}", &sig[..63]);
        assert_eq!(
            parse_paymongo(short.as_bytes()).err(),
            Some(Malformed::WrongLength("te").into())
        );
        let long = format!("t=1,te={sig}0");
        assert_eq!(
            parse_paymongo(long.as_bytes()).err(),
            Some(Malformed::WrongLength("te").into())
        );
        for bad in ['g', 'G', ' ', ':', '@', '`', '/', '\u{7f}'] {
            let mut tag = sig.to_owned();
            tag.replace_range(63..64, &bad.to_string());
            let h = format!("t=1,te={tag}");
            let want = match bad {
                ' ' => Malformed::WrongLength("te"), // a trailing blank is trimmed
                '\u{7f}' => Malformed::NotAscii,
                _ => Malformed::NotHex("te"),
            };
            assert_eq!(
                parse_paymongo(h.as_bytes()).err(),
                Some(want.into()),
                "{bad:?}"
            );
        }
        let huge = format!("t=1,te={}", "a".repeat(MAX_HEADER_LEN));
        assert!(matches!(
            parse_paymongo(huge.as_bytes()),
            Err(SignatureError::TooLong(_))
        ));
    }

    #[test]
    fn unknown_keys_and_spaces_are_tolerated() {
        let h = format!("t={T}, te={KAT_PAYMONGO} ,li=,v2=abc");
        let p = parse_paymongo(h.as_bytes()).unwrap();
        assert_eq!(p.t, T.to_string());
        assert!(p.te.is_some() && p.li.is_none());
    }

    #[test]
    fn hmac_hex_scheme() {
        let v = Verifier::new(
            SignatureScheme::HmacHex,
            &[secret("whsk_other"), secret(SECRET)],
        );
        assert_eq!(
            v.verify(KAT_HMAC_HEX.as_bytes(), BODY, Mode::Live, TOL, 0),
            Ok(Verified { secret_index: 1 })
        );
        let upper = KAT_HMAC_HEX.to_ascii_uppercase();
        assert!(v.verify(upper.as_bytes(), BODY, Mode::Test, TOL, 0).is_ok());
        assert_eq!(
            v.verify(KAT_HMAC_HEX.as_bytes(), b"{}", Mode::Test, TOL, 0),
            Err(SignatureError::Mismatch)
        );
        // A paymongo-style header is not an hmac-hex value.
        let pm = format!("t={T},te={KAT_PAYMONGO},li=");
        assert!(matches!(
            v.verify(pm.as_bytes(), BODY, Mode::Test, TOL, T),
            Err(SignatureError::Malformed(_))
        ));
        assert!(matches!(
            v.verify(b"", BODY, Mode::Test, TOL, T),
            Err(SignatureError::Malformed(_))
        ));
    }

    #[test]
    fn sign_helpers_render_what_verify_accepts() {
        let v = paymongo(&[SECRET]);
        for mode in [Mode::Test, Mode::Live] {
            let h = paymongo_header(SECRET.as_bytes(), T, BODY, mode);
            assert!(
                v.verify(h.as_bytes(), BODY, mode, TOL, T).is_ok(),
                "{mode:?}"
            );
        }
        assert_eq!(
            paymongo_header(SECRET.as_bytes(), T, BODY, Mode::Test),
            format!("t={T},te={KAT_PAYMONGO},li=")
        );
    }

    #[test]
    fn duplicated_and_missing_header_lines() {
        let mut h = HeaderMap::new();
        assert_eq!(header_value(&h), Err(SignatureError::Missing));
        h.append(HEADER, http::HeaderValue::from_static("t=1,te="));
        assert_eq!(header_value(&h), Ok(&b"t=1,te="[..]));
        h.append(HEADER, http::HeaderValue::from_static("t=2,te="));
        assert_eq!(header_value(&h), Err(SignatureError::Duplicated));
    }

    #[test]
    fn debug_hides_keys() {
        let v = paymongo(&["whsk_do_not_print"]);
        let s = format!("{v:?}");
        assert!(!s.contains("do_not_print"), "{s}");
    }

    mod prop {
        use proptest::prelude::*;

        use super::super::*;

        fn tag() -> impl Strategy<Value = Option<[u8; TAG_LEN]>> {
            proptest::option::of(proptest::array::uniform32(any::<u8>()))
        }

        proptest! {
            #[test]
            fn never_panics_on_bytes(bytes in proptest::collection::vec(any::<u8>(), 0..700)) {
                let _ = parse_paymongo(&bytes);
                let _ = parse_hmac_hex(&bytes);
                let v = Verifier::new(SignatureScheme::Paymongo, &[]);
                let _ = v.verify(&bytes, b"", Mode::Test, Duration::from_secs(300), 0);
            }

            #[test]
            fn never_panics_on_header_like_text(s in "(t|te|li|x|,|=|[0-9a-f]{0,70}| ){0,24}") {
                let _ = parse_paymongo(s.as_bytes());
            }

            #[test]
            fn round_trips_valid_headers(t in 0u64..=9_999_999_999_999_999_999, te in tag(), li in tag(), upper in any::<bool>(), te_first in any::<bool>()) {
                let enc = |x: &Option<[u8; TAG_LEN]>| {
                    let s = x.map(hex::encode).unwrap_or_default();
                    if upper { s.to_ascii_uppercase() } else { s }
                };
                let text = if te_first {
                    format!("t={t},te={},li={}", enc(&te), enc(&li))
                } else {
                    format!("li={},te={},t={t}", enc(&li), enc(&te))
                };
                let p = parse_paymongo(text.as_bytes()).unwrap();
                prop_assert_eq!(p.timestamp, t);
                prop_assert_eq!(p.t, t.to_string());
                prop_assert_eq!(p.te, te);
                prop_assert_eq!(p.li, li);
            }

            #[test]
            fn signed_headers_verify_and_any_change_fails(
                body in proptest::collection::vec(any::<u8>(), 0..300),
                secret_text in "[a-zA-Z0-9_]{1,40}",
                flip in any::<prop::sample::Index>(),
            ) {
                let s = WebhookSecret::new(secrecy::SecretString::from(secret_text.clone()));
                let v = Verifier::new(SignatureScheme::Paymongo, std::slice::from_ref(&s));
                let h = paymongo_header(secret_text.as_bytes(), 1_700_000_000, &body, Mode::Test);
                prop_assert!(v.verify(h.as_bytes(), &body, Mode::Test, Duration::from_secs(300), 1_700_000_000).is_ok());
                if !body.is_empty() {
                    let mut b = body.clone();
                    b[flip.index(body.len())] ^= 0x80;
                    prop_assert_eq!(v.verify(h.as_bytes(), &b, Mode::Test, Duration::from_secs(300), 1_700_000_000), Err(SignatureError::Mismatch));
                }
            }
        }
    }
}

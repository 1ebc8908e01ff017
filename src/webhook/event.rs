//! The few fields of a verified PayMongo event the gateway needs: id, type
//! and livemode. Only called after the signature verified, so this never
//! sees unauthenticated input; it is strict anyway because the id and type
//! travel on as header values.
//!
//! Shape: `{"data":{"id":"evt_..","type":"event","attributes":{"type":
//! "payment.paid","livemode":false,"data":{..},..}}}`. Everything else is
//! ignored and forwarded untouched (the raw bytes go inward, not a
//! re-serialisation).

use std::borrow::Cow;

use serde::Deserialize;

/// Longest event id accepted (PayMongo's are about 30 characters).
const MAX_ID_LEN: usize = 128;
/// Longest event type accepted (e.g. `checkout_session.payment.paid`).
const MAX_TYPE_LEN: usize = 64;

/// A verified event's identity.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Event {
    /// `data.id`, e.g. `evt_9ck...`.
    pub id: String,
    /// `data.attributes.type`, e.g. `payment.paid`.
    pub kind: String,
    /// `data.attributes.livemode`.
    pub livemode: bool,
}

/// Why a verified body is not a usable event (400).
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
pub enum EventError {
    /// Not JSON, or not the envelope shape.
    #[error("the body is not a paymongo event: {0}")]
    Shape(String),
    /// `data.id` has characters other than letters, digits, `_`, `-`, or is too long.
    #[error("data.id is not a valid event id")]
    BadId,
    /// `data.attributes.type` is not lower-case words joined by `.`/`_`, or is too long.
    #[error("data.attributes.type is not a valid event type")]
    BadType,
}

#[derive(Deserialize)]
struct Envelope<'a> {
    #[serde(borrow)]
    data: Data<'a>,
}

#[derive(Deserialize)]
struct Data<'a> {
    #[serde(borrow)]
    id: Cow<'a, str>,
    #[serde(borrow)]
    attributes: Attributes<'a>,
}

#[derive(Deserialize)]
struct Attributes<'a> {
    #[serde(borrow, rename = "type")]
    kind: Cow<'a, str>,
    livemode: bool,
}

/// Extracts id, type and livemode from a verified body.
pub fn parse(body: &[u8]) -> Result<Event, EventError> {
    let env: Envelope<'_> =
        serde_json::from_slice(body).map_err(|e| EventError::Shape(describe(&e)))?;
    let Data { id, attributes } = env.data;
    let id_ok = !id.is_empty()
        && id.len() <= MAX_ID_LEN
        && id
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || b == b'_' || b == b'-');
    if !id_ok {
        return Err(EventError::BadId);
    }
    let kind = attributes.kind;
    let type_ok = !kind.is_empty()
        && kind.len() <= MAX_TYPE_LEN
        && kind
            .bytes()
            .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'.' || b == b'_');
    if !type_ok {
        return Err(EventError::BadType);
    }
    Ok(Event {
        id: id.into_owned(),
        kind: kind.into_owned(),
        livemode: attributes.livemode,
    })
}

/// A log-safe description of a JSON error. serde's own message can quote
/// string values from the body (`invalid type: string "..."`), and bodies
/// are never logged, so only the kind, a field name we own, and the
/// position are kept.
fn describe(e: &serde_json::Error) -> String {
    let msg = e.to_string();
    if let Some(field) = msg
        .strip_prefix("missing field `")
        .and_then(|r| r.split('`').next())
    {
        return format!("missing field {field}");
    }
    let kind = match e.classify() {
        serde_json::error::Category::Io => "unreadable",
        serde_json::error::Category::Syntax => "invalid json",
        serde_json::error::Category::Data => "unexpected value",
        serde_json::error::Category::Eof => "truncated json",
    };
    format!("{kind} at line {} column {}", e.line(), e.column())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn reads_a_paymongo_event() {
        let body = br#"{"data":{"id":"evt_9ck3Lz","type":"event","attributes":{"type":"source.chargeable","livemode":false,"data":{"id":"src_1","type":"source"},"previous_data":{}}}}"#;
        assert_eq!(
            parse(body).unwrap(),
            Event {
                id: "evt_9ck3Lz".into(),
                kind: "source.chargeable".into(),
                livemode: false
            }
        );
    }

    #[test]
    fn escaped_strings_are_decoded() {
        let body =
            br#"{"data":{"id":"evt\u005f1","attributes":{"type":"payment.paid","livemode":true}}}"#;
        let e = parse(body).unwrap();
        assert_eq!(e.id, "evt_1");
        assert!(e.livemode);
    }

    #[test]
    fn refuses_what_cannot_be_an_event() {
        for body in [
            &b""[..],
            b"null",
            b"[]",
            b"{}",
            br#"{"data":{}}"#,
            br#"{"data":{"id":"evt_1","attributes":{"type":"payment.paid"}}}"#,
            br#"{"data":{"id":"evt_1","attributes":{"type":"payment.paid","livemode":"false"}}}"#,
            br#"{"data":{"id":1,"attributes":{"type":"payment.paid","livemode":false}}}"#,
            br#"{"data":{"id":"evt_1","attributes":{"type":"payment.paid","livemode":false}}} trailing"#,
        ] {
            match parse(body) {
                Err(EventError::Shape(msg)) => assert!(!msg.contains("\"false\""), "{msg}"),
                other => panic!("{}: {other:?}", String::from_utf8_lossy(body)),
            }
        }
        let with = |id: &str, ty: &str| {
            format!(r#"{{"data":{{"id":"{id}","attributes":{{"type":"{ty}","livemode":false}}}}}}"#)
        };
        assert_eq!(
            parse(with("", "payment.paid").as_bytes()),
            Err(EventError::BadId)
        );
        assert_eq!(
            parse(with("evt 1", "payment.paid").as_bytes()),
            Err(EventError::BadId)
        );
        assert_eq!(
            parse(with("evt\\r\\nx: y", "payment.paid").as_bytes()),
            Err(EventError::BadId)
        );
        assert_eq!(
            parse(with(&"e".repeat(129), "payment.paid").as_bytes()),
            Err(EventError::BadId)
        );
        assert_eq!(
            parse(with("evt_1", "Payment.Paid").as_bytes()),
            Err(EventError::BadType)
        );
        assert_eq!(
            parse(with("evt_1", "").as_bytes()),
            Err(EventError::BadType)
        );
    }
}

//! Canonical JSON (appendices "Canonical JSON"), content hashes, reference hashes, event ids,
//! v12 room ids and redaction per room version.
//!
//! Everything that is hashed or signed goes through [`to_canonical_string`], so the bytes one
//! server signs are the bytes every other server checks.

use base64::Engine as _;
use base64::engine::general_purpose::{STANDARD_NO_PAD, URL_SAFE_NO_PAD};
use ruma::{CanonicalJsonObject, CanonicalJsonValue};
use sha2::{Digest, Sha256};

use crate::version::{EventIdFormat, RedactionAlgorithm, RoomVersion};

/// JSON that cannot be handled as canonical JSON, or an event missing what hashing needs.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum JsonError {
    #[error("not valid JSON: {0}")]
    NotJson(String),
    #[error("top level must be a JSON object")]
    NotAnObject,
    #[error("not canonical JSON: {0}")]
    NotCanonical(String),
    #[error("field {field} has the wrong type or is missing")]
    BadField { field: &'static str },
    #[error("cannot redact: {0}")]
    Redaction(String),
}

/// Parse bytes into a canonical JSON object. Refuses floats, integers outside ±(2^53−1) and
/// non-object top levels. Duplicate keys keep the last value, as serde_json does.
pub fn parse_object(bytes: &[u8]) -> Result<CanonicalJsonObject, JsonError> {
    let value: serde_json::Value =
        serde_json::from_slice(bytes).map_err(|e| JsonError::NotJson(e.to_string()))?;
    value_to_object(value)
}

/// Convert a serde_json value (must be an object) to canonical JSON.
pub fn value_to_object(value: serde_json::Value) -> Result<CanonicalJsonObject, JsonError> {
    match value {
        serde_json::Value::Object(map) => ruma::canonical_json::try_from_json_map(map)
            .map_err(|e| JsonError::NotCanonical(e.to_string())),
        _ => Err(JsonError::NotAnObject),
    }
}

/// The canonical encoding of an object: sorted keys, no insignificant whitespace, UTF-8.
pub fn to_canonical_string(object: &CanonicalJsonObject) -> String {
    // ruma's CanonicalJsonValue serialises in canonical form and cannot fail (no floats, string
    // keys only); fall back to an empty object rather than panic should that ever change.
    serde_json::to_string(object).unwrap_or_else(|_| "{}".to_owned())
}

fn sha256(bytes: &[u8]) -> [u8; 32] {
    Sha256::digest(bytes).into()
}

/// The content hash of an event: SHA-256 of the canonical JSON without `unsigned`, `signatures`
/// and `hashes`. Returned as unpadded standard base64, the form stored in `hashes.sha256`.
pub fn content_hash(event: &CanonicalJsonObject) -> String {
    let mut copy = event.clone();
    copy.remove("unsigned");
    copy.remove("signatures");
    copy.remove("hashes");
    STANDARD_NO_PAD.encode(sha256(to_canonical_string(&copy).as_bytes()))
}

/// The reference hash of an event: SHA-256 of the redacted event without `signatures`,
/// `unsigned` (and the legacy `age_ts`).
pub fn reference_hash(
    event: &CanonicalJsonObject,
    version: &RoomVersion,
) -> Result<[u8; 32], JsonError> {
    let mut redacted = redact(event, version)?;
    redacted.remove("signatures");
    redacted.remove("unsigned");
    redacted.remove("age_ts");
    Ok(sha256(to_canonical_string(&redacted).as_bytes()))
}

/// The event id of an event. Rooms 3 and later: `$` + unpadded base64 of its reference hash
/// (standard alphabet in room 3, URL-safe from room 4). Rooms 1 and 2: the `event_id` the PDU
/// carries (its form is checked by `pdu::check_format`).
pub fn event_id(event: &CanonicalJsonObject, version: &RoomVersion) -> Result<String, JsonError> {
    match version.event_id_format() {
        EventIdFormat::Opaque => get_str(event, "event_id")
            .map(str::to_owned)
            .ok_or(JsonError::BadField { field: "event_id" }),
        EventIdFormat::ReferenceHashStandard => Ok(format!(
            "${}",
            STANDARD_NO_PAD.encode(reference_hash(event, version)?)
        )),
        EventIdFormat::ReferenceHashUrlSafe => Ok(format!(
            "${}",
            URL_SAFE_NO_PAD.encode(reference_hash(event, version)?)
        )),
    }
}

/// The reference hash in the form `prev_events`/`auth_events` pairs cite it in rooms 1 and 2:
/// unpadded standard base64.
pub fn reference_hash_base64(
    event: &CanonicalJsonObject,
    version: &RoomVersion,
) -> Result<String, JsonError> {
    Ok(STANDARD_NO_PAD.encode(reference_hash(event, version)?))
}

/// The room id a v12-style create event defines: `!` + its reference hash (MSC4291). `None` for
/// versions whose room ids are chosen by the creating server.
pub fn room_id_for_create_event(
    create: &CanonicalJsonObject,
    version: &RoomVersion,
) -> Result<Option<String>, JsonError> {
    match version.room_id_format() {
        crate::version::RoomIdFormat::ServerScoped => Ok(None),
        crate::version::RoomIdFormat::CreateEventHash => Ok(Some(format!(
            "!{}",
            URL_SAFE_NO_PAD.encode(reference_hash(create, version)?)
        ))),
    }
}

/// Redact an event with the version's algorithm ([`RedactionAlgorithm`]: v1 rules for rooms 1
/// to 5, v6 for 6 and 7, v8 for 8, v9 for 9 and 10, v11 for 11, 12 and account-key rooms).
/// `unsigned` is dropped.
pub fn redact(
    event: &CanonicalJsonObject,
    version: &RoomVersion,
) -> Result<CanonicalJsonObject, JsonError> {
    // ruma's algorithm is exactly the spec's per version; we only pick which one (the version
    // table's test checks that ruma's flags and our `RedactionAlgorithm` agree).
    debug_assert_eq!(
        version.redaction() == RedactionAlgorithm::V11,
        !version.rules().redaction.keep_origin_membership_prev_state
    );
    ruma::canonical_json::redact(event.clone(), &version.rules().redaction, None)
        .map_err(|e| JsonError::Redaction(e.to_string()))
}

/// Helper: a string field of an object.
pub(crate) fn get_str<'a>(obj: &'a CanonicalJsonObject, key: &str) -> Option<&'a str> {
    match obj.get(key) {
        Some(CanonicalJsonValue::String(s)) => Some(s),
        _ => None,
    }
}

/// Helper: an object field of an object.
pub(crate) fn get_object<'a>(
    obj: &'a CanonicalJsonObject,
    key: &str,
) -> Option<&'a CanonicalJsonObject> {
    match obj.get(key) {
        Some(CanonicalJsonValue::Object(o)) => Some(o),
        _ => None,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn canon(s: &str) -> String {
        to_canonical_string(&parse_object(s.as_bytes()).unwrap())
    }

    #[test]
    fn spec_canonical_json_examples() {
        assert_eq!(canon("{}"), "{}");
        assert_eq!(
            canon(r#"{ "one": 1, "two": "Two" }"#),
            r#"{"one":1,"two":"Two"}"#
        );
        assert_eq!(canon(r#"{ "b": "2", "a": "1" }"#), r#"{"a":"1","b":"2"}"#);
        assert_eq!(
            canon(
                r#"{"auth":{"success":true,"mxid":"@john.doe:example.com","profile":{"display_name":"John Doe","three_pids":[{"medium":"email","address":"john.doe@example.org"},{"medium":"msisdn","address":"123456789"}]}}}"#
            ),
            r#"{"auth":{"mxid":"@john.doe:example.com","profile":{"display_name":"John Doe","three_pids":[{"address":"john.doe@example.org","medium":"email"},{"address":"123456789","medium":"msisdn"}]},"success":true}}"#
        );
        assert_eq!(canon(r#"{"a": "日本語"}"#), r#"{"a":"日本語"}"#);
        assert_eq!(canon(r#"{"本": 2, "日": 1}"#), r#"{"日":1,"本":2}"#);
        assert_eq!(canon(r#"{"a": "\u65E5"}"#), r#"{"a":"日"}"#);
        assert_eq!(canon(r#"{"a": null}"#), r#"{"a":null}"#);
    }

    #[test]
    fn non_canonical_values_are_errors() {
        assert!(matches!(
            parse_object(b"{\"a\": 1.5}"),
            Err(JsonError::NotCanonical(_))
        ));
        assert!(matches!(
            parse_object(b"{\"a\": 9007199254740992}"),
            Err(JsonError::NotCanonical(_))
        ));
        assert!(parse_object(b"{\"a\": 9007199254740991}").is_ok());
        assert!(parse_object(b"{\"a\": -9007199254740991}").is_ok());
        assert!(matches!(
            parse_object(b"{\"a\": -9007199254740992}"),
            Err(JsonError::NotCanonical(_))
        ));
        assert_eq!(parse_object(b"[1]"), Err(JsonError::NotAnObject));
        assert!(matches!(
            parse_object(b"{\"a\":"),
            Err(JsonError::NotJson(_))
        ));
        assert!(matches!(parse_object(b"\xff"), Err(JsonError::NotJson(_))));
        // Deep nesting is refused by the parser's recursion limit, not a stack overflow.
        let deep = format!("{}{}", "{\"a\":".repeat(10_000), "}".repeat(10_000));
        assert!(parse_object(deep.as_bytes()).is_err());
    }
}

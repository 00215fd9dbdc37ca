//! Whether a redaction may be applied to the event it names (rooms 3+ "Handling redactions";
//! rooms 1–2 auth rule 11), with the account-key rule of MSC4243.md §4 Q9, and the power level
//! reads that decision and the server's own permission checks need (a user's level, the level a
//! state event needs).
//!
//! This is not an auth rule: the redaction event is authorised like any event; this decides
//! whether the *target* is served redacted. A server applies it when the redactor has the
//! `redact` power level, or when redactor and target share a domain. In account-key rooms the
//! domain is unverified, so "same domain" counts only for the same key, or when both keys are
//! Local/Verified for that one domain. In rooms 1 and 2 the redaction itself passed auth rule 11
//! (power, or the two event ids' domains), and serving applies that same test. Power levels
//! before room 10 may be string-encoded integers, and are read as such here.

use crate::account_key::KeyFormUserId;
use crate::canonical::{get_object, get_str};
use crate::pdu::Pdu;
use crate::projection::KeyVerification;
use crate::version::{EventFormat, RoomVersion};

/// A user's power level: creators of v12-format rooms are above every number.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord)]
pub enum PowerLevel {
    Int(i64),
    Infinite,
}

/// A power level value. Before room 10 a string holding an integer counts as that integer
/// (the spec's "string-encoded integers"; Synapse reads them with `int()`), from room 10 only
/// JSON integers do.
fn level_field(version: &RoomVersion, obj: &ruma::CanonicalJsonObject, key: &str) -> Option<i64> {
    match obj.get(key) {
        Some(ruma::CanonicalJsonValue::Integer(i)) => Some(i64::from(*i)),
        Some(ruma::CanonicalJsonValue::String(s)) if !version.auth_rules().integer_power_levels => {
            parse_string_level(s)
        }
        _ => None,
    }
}

/// A string-encoded power level: optional surrounding whitespace, optional sign, decimal digits.
pub(crate) fn parse_string_level(s: &str) -> Option<i64> {
    let t = s.trim();
    let digits = t.strip_prefix(['+', '-']).unwrap_or(t);
    if digits.is_empty() || !digits.bytes().all(|b| b.is_ascii_digit()) {
        return None;
    }
    t.parse().ok()
}

/// The room's creator as the version defines it: the create event's `sender` from room 11,
/// `content.creator` before.
fn creator<'a>(version: &RoomVersion, create: &'a Pdu) -> &'a str {
    if version.auth_rules().creator_is_create_sender {
        return create.sender();
    }
    create
        .content_object()
        .and_then(|c| get_str(c, "creator"))
        .unwrap_or(create.sender())
}

fn creators(create: &Pdu) -> Vec<String> {
    let mut out = vec![create.sender().to_owned()];
    if let Some(ruma::CanonicalJsonValue::Array(list)) = create
        .content_object()
        .and_then(|c| c.get("additional_creators"))
    {
        out.extend(list.iter().filter_map(|v| v.as_str().map(str::to_owned)));
    }
    out
}

/// The power level of `user` given the room's create and current power levels events.
pub fn user_power_level(
    version: &RoomVersion,
    user: &str,
    create: &Pdu,
    power_levels: Option<&Pdu>,
) -> PowerLevel {
    if version.event_format() == EventFormat::V12 && creators(create).iter().any(|c| c == user) {
        return PowerLevel::Infinite;
    }
    match power_levels.and_then(Pdu::content_object) {
        Some(content) => {
            let explicit = get_object(content, "users").and_then(|u| level_field(version, u, user));
            PowerLevel::Int(
                explicit
                    .or_else(|| level_field(version, content, "users_default"))
                    .unwrap_or(0),
            )
        }
        // Without power levels the creator has 100 (pre-v12), everyone else 0.
        None if creator(version, create) == user => PowerLevel::Int(100),
        None => PowerLevel::Int(0),
    }
}

/// The `redact` level (default 50).
pub fn redact_level(version: &RoomVersion, power_levels: Option<&Pdu>) -> i64 {
    power_levels
        .and_then(Pdu::content_object)
        .and_then(|c| level_field(version, c, "redact"))
        .unwrap_or(50)
}

/// The level a state event of `event_type` needs: its entry in `events`, else `state_default`
/// (50 when the power levels leave it out), or 0 in a room without power levels (the spec's
/// defaults, as the auth rules read them).
pub fn state_event_level(
    version: &RoomVersion,
    power_levels: Option<&Pdu>,
    event_type: &str,
) -> i64 {
    let Some(content) = power_levels.and_then(Pdu::content_object) else {
        return 0;
    };
    get_object(content, "events")
        .and_then(|events| level_field(version, events, event_type))
        .or_else(|| level_field(version, content, "state_default"))
        .unwrap_or(50)
}

/// Whether `redaction` may be applied to `target`.
pub fn redaction_applies(
    version: &RoomVersion,
    redaction: &Pdu,
    target: &Pdu,
    create: &Pdu,
    power_levels: Option<&Pdu>,
    lookup: impl Fn(&KeyFormUserId) -> KeyVerification,
) -> bool {
    if redaction.redacts() != Some(target.event_id()) || redaction.room_id() != target.room_id() {
        return false;
    }
    let level = user_power_level(version, redaction.sender(), create, power_levels);
    if level >= PowerLevel::Int(redact_level(version, power_levels)) {
        return true;
    }
    if version.auth_rules().redaction_in_auth_rules {
        // Rooms 1 and 2: auth rule 11 already admitted the redaction by power or because its
        // event id and the target's share a domain; serving applies the same test.
        let domain = |id: &str| id.split_once(':').map(|(_, d)| d.to_owned());
        return domain(redaction.event_id()).is_some()
            && domain(redaction.event_id()) == domain(target.event_id());
    }
    let domain = |u: &str| crate::account_key::split_user_id(u).map(|(_, d)| d.to_owned());
    if !version.uses_account_keys() {
        return domain(redaction.sender()).is_some()
            && domain(redaction.sender()) == domain(target.sender());
    }
    let (Ok(a), Ok(b)) = (
        KeyFormUserId::parse(redaction.sender()),
        KeyFormUserId::parse(target.sender()),
    ) else {
        return false;
    };
    if a.key == b.key {
        return true;
    }
    let vouched = |k: &KeyFormUserId| {
        matches!(
            lookup(k),
            KeyVerification::Local { .. } | KeyVerification::Verified { .. }
        )
    };
    a.server_name == b.server_name && vouched(&a) && vouched(&b)
}

//! Authorisation rules and the auth-events selection algorithm, per room version.
//!
//! The rules of every version (1 to 12) are ruma's `state_res` implementation, driven by the
//! version's rule flags; this module adds what ruma lacks for account-key rooms (MSC4243.md §4
//! Q2, Q10): key-form ids where identities are named, and no third-party invites. Callers only
//! see our types: events are [`Pdu`]s, state is looked up by `(type, state_key)` strings.

use std::collections::{HashMap, HashSet};

use ruma::OwnedEventId;
use ruma::events::{StateEventType, TimelineEventType};
use serde_json::value::RawValue;

use crate::account_key::KeyFormUserId;
use crate::canonical::get_object;
use crate::pdu::Pdu;
use crate::version::{EventFormat, RoomVersion};

/// An event failed the authorisation rules. On receipt: reject (or soft-fail against the
/// current state); from a local client: `M_FORBIDDEN`, or `M_BAD_JSON` when the event is
/// [`malformed`](AuthError::malformed).
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("{reason}")]
pub struct AuthError {
    pub reason: String,
    /// The event failed a rule about its own shape (see [`check_content`]), not about who may
    /// do what: no sender could have sent it, so a client's request is malformed (400), not
    /// forbidden.
    pub malformed: bool,
}

impl AuthError {
    pub fn errcode(&self) -> &'static str {
        if self.malformed {
            "M_BAD_JSON"
        } else {
            "M_FORBIDDEN"
        }
    }
}

fn deny(reason: impl Into<String>) -> AuthError {
    AuthError {
        reason: reason.into(),
        malformed: false,
    }
}

fn malformed(reason: impl Into<String>) -> AuthError {
    AuthError {
        reason: reason.into(),
        malformed: true,
    }
}

/// The auth rules that look at an event's shape alone (given the room's create event, for
/// events other than the create event): the ones no sender, however powerful, could pass.
/// [`check_auth_events`] and [`check_against_state`] run them first, so a failure comes back
/// [`malformed`](AuthError::malformed); room creation also runs them on the events it is about
/// to write, before writing any.
///
/// - `m.room.create`: no `prev_events` (so it cannot be sent into an existing room), and, from
///   v12, `additional_creators` an array of valid user ids;
/// - `m.room.power_levels`, from v12: no creator in `users` (creators' power is implicit).
pub fn check_content(
    version: &RoomVersion,
    pdu: &Pdu,
    create: Option<&Pdu>,
) -> Result<(), AuthError> {
    let rules = &version.rules().authorization;
    match pdu.event_type() {
        "m.room.create" => {
            if pdu.prev_events().next().is_some() {
                return Err(malformed(
                    "an m.room.create event cannot follow other events: a room has one, sent when it is created",
                ));
            }
            ruma::state_res::events::RoomCreateEvent::new(pdu)
                .creators(rules)
                .map_err(malformed)?;
        }
        "m.room.power_levels" => {
            if let (Some(create), Some(content)) = (create, pdu.content_object()) {
                check_power_levels_content(version, content, create)?;
            }
        }
        _ => {}
    }
    Ok(())
}

/// The [`check_content`] rule of `m.room.power_levels` on a content not yet in an event (room
/// creation checks its power levels before writing anything): from v12, no creator of the
/// room `create` makes may appear in `users`.
pub fn check_power_levels_content(
    version: &RoomVersion,
    content: &crate::CanonicalJsonObject,
    create: &Pdu,
) -> Result<(), AuthError> {
    let rules = &version.rules().authorization;
    if !rules.explicitly_privilege_room_creators {
        return Ok(());
    }
    let Some(users) = get_object(content, "users") else {
        return Ok(());
    };
    let creators = ruma::state_res::events::RoomCreateEvent::new(create)
        .creators(rules)
        .map_err(deny)?;
    match creators.iter().find(|c| users.contains_key(c.as_str())) {
        Some(creator) => Err(malformed(format!(
            "{creator} is a creator of this room: creators have no entry in the power levels' users"
        ))),
        None => Ok(()),
    }
}

/// What a local sender may put in `m.room.power_levels`, stricter than the auth rules (which
/// must still take the string levels older room versions allowed, from other servers): every
/// level (`ban`, `events_default`, `invite`, `kick`, `redact`, `state_default`,
/// `users_default`) an integer, and `events`, `notifications` and `users` objects of integers.
/// A failure is [`malformed`](AuthError::malformed): the client's request is bad (400
/// `M_BAD_JSON`, as Synapse answers), whatever power its sender has.
pub fn check_local_power_levels_content(
    content: &crate::CanonicalJsonObject,
) -> Result<(), AuthError> {
    use ruma::CanonicalJsonValue;
    for key in [
        "ban",
        "events_default",
        "invite",
        "kick",
        "redact",
        "state_default",
        "users_default",
    ] {
        match content.get(key) {
            None | Some(CanonicalJsonValue::Integer(_)) => {}
            Some(_) => {
                return Err(malformed(format!(
                    "power levels: `{key}` must be an integer"
                )));
            }
        }
    }
    for key in ["events", "notifications", "users"] {
        match content.get(key) {
            None => {}
            Some(CanonicalJsonValue::Object(levels)) => {
                if let Some((name, _)) = levels
                    .iter()
                    .find(|(_, level)| !matches!(level, CanonicalJsonValue::Integer(_)))
                {
                    return Err(malformed(format!(
                        "power levels: `{key}.{name}` must be an integer"
                    )));
                }
            }
            Some(_) => {
                return Err(malformed(format!(
                    "power levels: `{key}` must be an object of integers"
                )));
            }
        }
    }
    Ok(())
}

/// A `(event type, state key)` pair.
pub type StateKey = (String, String);

/// The auth-events selection algorithm (server-server API "Auth events selection"): which
/// state an event with this type, sender, state key and content must cite in `auth_events`.
/// For v12-format rooms the create event is never among them.
pub fn auth_types_for_event(
    version: &RoomVersion,
    event_type: &str,
    sender: &str,
    state_key: Option<&str>,
    content: &RawValue,
) -> Result<Vec<StateKey>, AuthError> {
    let sender = <&ruma::UserId>::try_from(sender).map_err(|e| deny(format!("bad sender: {e}")))?;
    let types = ruma::state_res::auth_types_for_event(
        &TimelineEventType::from(event_type),
        sender,
        state_key,
        content,
        &version.rules().authorization,
    )
    .map_err(deny)?;
    Ok(types.into_iter().map(|(t, k)| (t.to_string(), k)).collect())
}

/// Given the room state before an event, pick the event ids to put in its `auth_events`.
pub fn select_auth_events(
    version: &RoomVersion,
    event_type: &str,
    sender: &str,
    state_key: Option<&str>,
    content: &RawValue,
    state: &HashMap<StateKey, String>,
) -> Result<Vec<String>, AuthError> {
    Ok(
        auth_types_for_event(version, event_type, sender, state_key, content)?
            .iter()
            .filter_map(|k| state.get(k).cloned())
            .collect(),
    )
}

/// The rules that do not depend on room state: the create event's rules, and that the cited
/// `auth_events` are exactly of the selected kinds, not duplicated, not rejected and in the same
/// room (and, in v12-format rooms, that the create event named by the room id was accepted).
/// `fetch_event` looks up events by id (the auth events and, for v12, the create event).
pub fn check_auth_events<'a>(
    version: &RoomVersion,
    pdu: &Pdu,
    fetch_event: impl Fn(&str) -> Option<&'a Pdu>,
) -> Result<(), AuthError> {
    check_account_key_rules(version, pdu)?;
    if pdu.event_type() == "m.room.create" {
        check_content(version, pdu, None)?;
        check_create_room_version(pdu)?;
    }
    ruma::state_res::check_state_independent_auth_rules(
        &version.rules().authorization,
        pdu,
        |id: &ruma::EventId| fetch_event(id.as_str()),
    )
    .map_err(deny)
}

/// The state-dependent rules against a room state (the state before the event, or the current
/// state for soft-failure). `fetch_state` looks up the state event for `(type, state_key)`.
///
/// Assumes the event's signatures were verified first (`verify::verify_pdu`): the restricted-join
/// rule relies on the authoriser's signature having been checked there.
pub fn check_against_state<'a>(
    version: &RoomVersion,
    pdu: &Pdu,
    fetch_state: impl Fn(&str, &str) -> Option<&'a Pdu>,
) -> Result<(), AuthError> {
    check_account_key_rules(version, pdu)?;
    check_content(version, pdu, fetch_state("m.room.create", ""))?;
    ruma::state_res::check_state_dependent_auth_rules(
        &version.rules().authorization,
        pdu,
        |kind: &StateEventType, key: &str| fetch_state(&kind.to_string(), key),
    )
    .map_err(deny)
}

/// Both checks an event must pass against its own `auth_events` (checks on receipt, step 4).
/// In v12-format rooms the create event comes from the room id, not from `auth_events`.
pub fn check_against_auth_events<'a>(
    version: &RoomVersion,
    pdu: &Pdu,
    fetch_event: impl Fn(&str) -> Option<&'a Pdu>,
) -> Result<(), AuthError> {
    check_auth_events(version, pdu, &fetch_event)?;
    if pdu.event_type() == "m.room.create" {
        return Ok(());
    }
    let mut state: HashMap<(String, String), &Pdu> = HashMap::new();
    for id in pdu.auth_events() {
        let event = fetch_event(id).ok_or_else(|| deny(format!("missing auth event {id}")))?;
        if let Some(key) = event.state_key() {
            state.insert((event.event_type().to_owned(), key.to_owned()), event);
        }
    }
    if version.event_format() == EventFormat::V12
        && let Some(room_id) = pdu.room_id()
    {
        let create_id = format!("${}", room_id.trim_start_matches('!'));
        let create = fetch_event(&create_id)
            .ok_or_else(|| deny(format!("missing create event {create_id}")))?;
        state.insert(("m.room.create".to_owned(), String::new()), create);
    }
    check_against_state(version, pdu, |t, k| {
        state.get(&(t.to_owned(), k.to_owned())).copied()
    })
}

/// Rule 1.3: the create event's `room_version` (default "1") must be one we recognise.
fn check_create_room_version(pdu: &Pdu) -> Result<(), AuthError> {
    let content = pdu
        .content_object()
        .ok_or_else(|| deny("create content is not an object"))?;
    let version = match content.get("room_version") {
        None => "1",
        Some(ruma::CanonicalJsonValue::String(s)) => s.as_str(),
        Some(_) => return Err(deny("room_version must be a string")),
    };
    RoomVersion::get(version)
        .map(|_| ())
        .map_err(|e| deny(e.to_string()))
}

/// The MSC4243 additions: identities named in auth-relevant places must be strict key-form ids,
/// and third-party invites do not exist (MSC4243.md §4 Q2 and Q10).
fn check_account_key_rules(version: &RoomVersion, pdu: &Pdu) -> Result<(), AuthError> {
    if !version.uses_account_keys() {
        return Ok(());
    }
    let key_form = |what: &str, id: &str| {
        KeyFormUserId::parse(id)
            .map(|_| ())
            .map_err(|e| deny(format!("{what} must be a key-form user id: {e}")))
    };
    key_form("sender", pdu.sender())?;
    let content = pdu.content_object();
    match pdu.event_type() {
        "m.room.create" => {
            if let Some(creators) = content.and_then(|c| c.get("additional_creators")) {
                let ruma::CanonicalJsonValue::Array(list) = creators else {
                    return Err(deny("additional_creators must be an array"));
                };
                for creator in list {
                    let ruma::CanonicalJsonValue::String(creator) = creator else {
                        return Err(deny("additional_creators must hold strings"));
                    };
                    key_form("additional_creators entry", creator)?;
                }
            }
        }
        "m.room.member" => {
            if let Some(state_key) = pdu.state_key() {
                key_form("member state_key", state_key)?;
            }
            if let Some(content) = content {
                if let Some(authoriser) = content.get("join_authorised_via_users_server") {
                    let ruma::CanonicalJsonValue::String(authoriser) = authoriser else {
                        return Err(deny("join_authorised_via_users_server must be a string"));
                    };
                    key_form("join_authorised_via_users_server", authoriser)?;
                }
                if content.contains_key("third_party_invite") {
                    return Err(deny(
                        "third-party invites are disabled in account-key rooms",
                    ));
                }
            }
        }
        "m.room.third_party_invite" => {
            return Err(deny(
                "third-party invites are disabled in account-key rooms",
            ));
        }
        "m.room.power_levels" => {
            if let Some(users) = content.and_then(|c| get_object(c, "users")) {
                for user in users.keys() {
                    key_form("power_levels.users key", user)?;
                }
            }
        }
        _ => {}
    }
    Ok(())
}

/// The auth chain of some events, computed from events in memory: every event reachable
/// through `auth_events`, excluding the starting events unless reachable from another.
pub fn auth_chain<'a, 'b>(
    start: impl IntoIterator<Item = &'b str>,
    fetch_event: impl Fn(&str) -> Option<&'a Pdu>,
) -> HashSet<String> {
    let mut seen: HashSet<String> = HashSet::new();
    let mut stack: Vec<String> = Vec::new();
    for id in start {
        if let Some(pdu) = fetch_event(id) {
            stack.extend(pdu.auth_events().map(str::to_owned));
        }
    }
    while let Some(id) = stack.pop() {
        if !seen.insert(id.clone()) {
            continue;
        }
        if let Some(pdu) = fetch_event(&id) {
            stack.extend(
                pdu.auth_events()
                    .filter(|a| !seen.contains(*a))
                    .map(str::to_owned),
            );
        }
    }
    seen
}

impl ruma::state_res::Event for Pdu {
    type Id = OwnedEventId;

    fn event_id(&self) -> &Self::Id {
        self.owned_event_id()
    }
    fn room_id(&self) -> Option<&ruma::RoomId> {
        self.typed_room_id()
    }
    fn sender(&self) -> &ruma::UserId {
        self.typed_sender()
    }
    fn origin_server_ts(&self) -> ruma::MilliSecondsSinceUnixEpoch {
        self.ts()
    }
    fn event_type(&self) -> &TimelineEventType {
        self.kind()
    }
    fn content(&self) -> &RawValue {
        Pdu::content(self)
    }
    fn state_key(&self) -> Option<&str> {
        Pdu::state_key(self)
    }
    fn prev_events(&self) -> Box<dyn DoubleEndedIterator<Item = &Self::Id> + '_> {
        Box::new(self.prev_event_ids().iter())
    }
    fn auth_events(&self) -> Box<dyn DoubleEndedIterator<Item = &Self::Id> + '_> {
        Box::new(self.auth_event_ids().iter())
    }
    fn redacts(&self) -> Option<&Self::Id> {
        self.redacts_id()
    }
    fn rejected(&self) -> bool {
        Pdu::rejected(self)
    }
}

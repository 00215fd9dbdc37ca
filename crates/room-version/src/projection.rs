//! The client projection: how an event looks to a given client (MSC4243.md §2.6, §4 Q4–Q6).
//!
//! One pure function decides it for every Client-Server surface (sync, `/messages`, `/context`,
//! `/event`, `/state`, `/members`), so none of them filters on its own. For rooms that are not
//! account-key rooms the event passes through unchanged. For account-key rooms:
//!
//! - key-form user ids of Local or Verified keys are rewritten to account-name ids wherever the
//!   spec names users (`sender`, `@` state keys, `join_authorised_via_users_server`,
//!   `additional_creators`, `power_levels.users` keys), recursively inside `unsigned`
//!   (`prev_content`, `prev_sender`, `redacted_because`, `invite_room_state`, `knock_room_state`);
//!   free-form content (bodies, mentions) is never touched;
//! - `unsigned.sender_account = {key, user_id?}` is added, `user_id` only for Local/Verified;
//! - events from Unverified or Erased senders are hidden, except room-configuration state, which
//!   is always delivered with the key-form sender (hiding `m.room.encryption` would make clients
//!   send plaintext).

use serde_json::{Map, Value, json};

use crate::account_key::KeyFormUserId;
use crate::version::RoomVersion;

/// What this server knows about a key's claim to the domain in a key-form user id.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum KeyVerification {
    /// A local user's key.
    Local { account_name: String },
    /// The claimed domain vouched for the key with this account name.
    Verified { account_name: String },
    /// Not (yet) vouched for: missing, `M_UNKNOWN`, unreachable.
    Unverified,
    /// The domain reported a signed `M_ERASED`. Terminal.
    Erased,
}

impl KeyVerification {
    fn account_name(&self) -> Option<&str> {
        match self {
            KeyVerification::Local { account_name }
            | KeyVerification::Verified { account_name } => Some(account_name),
            KeyVerification::Unverified | KeyVerification::Erased => None,
        }
    }
}

/// State types delivered whatever the sender's status (MSC4243.md §4 Q6).
pub const ROOM_CONFIGURATION_TYPES: [&str; 9] = [
    "m.room.create",
    "m.room.power_levels",
    "m.room.join_rules",
    "m.room.history_visibility",
    "m.room.encryption",
    "m.room.guest_access",
    "m.room.server_acl",
    "m.room.tombstone",
    "m.room.policy",
];

/// Project one client-format event (JSON with `event_id`, `sender`, `type`, `content`,
/// `unsigned`, ...) for `reader` (the reading user's id as it appears in the room, i.e. key form
/// in account-key rooms). `lookup` gives the verification state of a key-form user id.
/// Returns `None` when the reader must not see the event. Takes the event by value: outside
/// account-key rooms it is the projection, as it is (sync hands out hundreds of events at a
/// time; a copy of each is measurable).
pub fn project_for_client(
    version: &RoomVersion,
    event: Value,
    reader: &str,
    lookup: impl Fn(&KeyFormUserId) -> KeyVerification,
) -> Option<Value> {
    if !version.uses_account_keys() {
        return Some(event);
    }
    let object = event.as_object()?;
    let sender_str = object.get("sender")?.as_str()?;
    let sender = KeyFormUserId::parse(sender_str).ok()?;
    let status = lookup(&sender);
    let kind = object
        .get("type")
        .and_then(Value::as_str)
        .unwrap_or_default();
    let is_state = object.get("state_key").is_some_and(Value::is_string);
    // The reader's own member event is always delivered, whoever sent it: a user kicked or
    // banned by an unverified moderator must still learn that it left the room.
    let about_reader = kind == "m.room.member"
        && !reader.is_empty()
        && object.get("state_key").and_then(Value::as_str) == Some(reader);
    let visible = status.account_name().is_some()
        || sender_str == reader
        || about_reader
        || (is_state && ROOM_CONFIGURATION_TYPES.contains(&kind));
    if !visible {
        return None;
    }
    let rewriter = Rewriter { lookup: &lookup };
    let mut out = rewriter.event(object);
    let unsigned = out
        .entry("unsigned")
        .or_insert_with(|| Value::Object(Map::new()));
    if let Some(unsigned) = unsigned.as_object_mut() {
        unsigned.insert("sender_account".into(), sender_account(&sender, &status));
    }
    Some(Value::Object(out))
}

/// A user id as clients may be shown it outside an event (a room summary's heroes, say): a
/// key-form id of a Local or Verified key as its account-name id; of an Unverified or Erased
/// key, nothing (clients never see keys outside `sender_account`, and those members are
/// hidden); any other id as it is.
pub fn visible_user_id<F>(id: &str, lookup: F) -> Option<String>
where
    F: Fn(&KeyFormUserId) -> KeyVerification,
{
    match KeyFormUserId::parse(id) {
        Ok(parsed) => lookup(&parsed)
            .account_name()
            .map(|name| format!("@{name}:{}", parsed.server_name)),
        Err(_) => Some(id.to_owned()),
    }
}

/// `{key, user_id?}`: `user_id` only for a Local or Verified key.
fn sender_account(sender: &KeyFormUserId, status: &KeyVerification) -> Value {
    let mut account = Map::new();
    account.insert("key".into(), json!(sender.key.as_str()));
    if let Some(name) = status.account_name() {
        account.insert(
            "user_id".into(),
            json!(format!("@{name}:{}", sender.server_name)),
        );
    }
    Value::Object(account)
}

struct Rewriter<'a, F: Fn(&KeyFormUserId) -> KeyVerification> {
    lookup: &'a F,
}

impl<F: Fn(&KeyFormUserId) -> KeyVerification> Rewriter<'_, F> {
    /// A key-form id of a Local/Verified key → the account-name id; anything else unchanged.
    fn user(&self, id: &str) -> String {
        match KeyFormUserId::parse(id) {
            Ok(parsed) => match (self.lookup)(&parsed).account_name() {
                Some(name) => format!("@{name}:{}", parsed.server_name),
                None => id.to_owned(),
            },
            Err(_) => id.to_owned(),
        }
    }

    fn user_value(&self, value: &mut Value) {
        if let Some(s) = value.as_str() {
            *value = Value::String(self.user(s));
        }
    }

    /// Rewrite an event (or stripped state event) object.
    fn event(&self, object: &Map<String, Value>) -> Map<String, Value> {
        let mut out = object.clone();
        let kind = object
            .get("type")
            .and_then(Value::as_str)
            .unwrap_or_default()
            .to_owned();
        if let Some(sender) = out.get_mut("sender") {
            self.user_value(sender);
        }
        if let Some(state_key) = out.get_mut("state_key")
            && state_key.as_str().is_some_and(|s| s.starts_with('@'))
        {
            self.user_value(state_key);
        }
        if let Some(content) = out.get_mut("content") {
            self.content(&kind, content);
        }
        if let Some(Value::Object(unsigned)) = out.get_mut("unsigned") {
            if let Some(prev) = unsigned.get_mut("prev_content") {
                self.content(&kind, prev);
            }
            if let Some(prev_sender) = unsigned.get_mut("prev_sender") {
                self.user_value(prev_sender);
            }
            if let Some(Value::Object(because)) = unsigned.get("redacted_because") {
                let mut rewritten = self.event(because);
                // The redaction is an event the client reads too: it gets its own
                // `sender_account` (item 38: every client event carries one).
                if let Some(sender) = because.get("sender").and_then(Value::as_str)
                    && let Ok(sender) = KeyFormUserId::parse(sender)
                {
                    let account = sender_account(&sender, &(self.lookup)(&sender));
                    let inner = rewritten
                        .entry("unsigned")
                        .or_insert_with(|| Value::Object(Map::new()));
                    if let Some(inner) = inner.as_object_mut() {
                        inner.insert("sender_account".into(), account);
                    }
                }
                unsigned.insert("redacted_because".into(), Value::Object(rewritten));
            }
            for list in ["invite_room_state", "knock_room_state"] {
                if let Some(Value::Array(items)) = unsigned.get_mut(list) {
                    for item in items.iter_mut() {
                        if let Value::Object(stripped) = item {
                            *item = Value::Object(self.event(stripped));
                        }
                    }
                }
            }
        }
        out
    }

    fn content(&self, kind: &str, content: &mut Value) {
        let Some(content) = content.as_object_mut() else {
            return;
        };
        match kind {
            "m.room.member" => {
                if let Some(v) = content.get_mut("join_authorised_via_users_server") {
                    self.user_value(v);
                }
            }
            "m.room.create" => {
                if let Some(Value::Array(creators)) = content.get_mut("additional_creators") {
                    creators.iter_mut().for_each(|c| self.user_value(c));
                }
            }
            "m.room.power_levels" => {
                if let Some(Value::Object(users)) = content.get("users") {
                    // Two keys whose names coincide (per-room keys, or equivocation) both stay in
                    // key form: one name cannot carry two levels, and picking one would show
                    // either member with a power it does not have (docs/account-keys.md).
                    let names: Vec<(String, String)> =
                        users.keys().map(|k| (k.clone(), self.user(k))).collect();
                    let rewritten: Map<String, Value> = names
                        .iter()
                        .map(|(key, name)| {
                            let shared = names.iter().filter(|(_, n)| n == name).count() > 1;
                            let out = if shared { key.clone() } else { name.clone() };
                            (out, users[key].clone())
                        })
                        .collect();
                    content.insert("users".into(), Value::Object(rewritten));
                }
            }
            _ => {}
        }
    }
}

//! What account-key room tests check of every client read (MSC4243.md §2.6): each event's
//! sender shown by account name with `unsigned.sender_account = {key, user_id}`, and no key
//! anywhere else; and the key-form ids those checks name. Shared by the one-, two- and
//! three-server tests.

use serde_json::{Value, json};

use crate::{TestServer, TestUser};

/// A local user's key-form id (asserting it has a key).
pub fn key_id(server: &TestServer, user: &TestUser) -> String {
    let localpart = user.user_id[1..].split(':').next().unwrap();
    server
        .services()
        .account_keys
        .known_local_user_id(localpart)
        .unwrap_or_else(|| panic!("{} has no account key", user.user_id))
}

/// The bare account key of a key-form id `@<key>:<domain>`.
pub fn bare_key(key_form: &str) -> String {
    key_form[1..].split(':').next().unwrap().to_owned()
}

/// Every event object (anything with `type` and `sender`) in a client response.
pub fn events_in(value: &Value, out: &mut Vec<Value>) {
    match value {
        Value::Object(map) => {
            if map.contains_key("type") && map.contains_key("sender") && map.contains_key("content")
            {
                out.push(value.clone());
            }
            for v in map.values() {
                events_in(v, out);
            }
        }
        Value::Array(items) => items.iter().for_each(|v| events_in(v, out)),
        _ => {}
    }
}

/// A response with every `sender_account` object taken out (the one place keys may appear).
pub fn without_sender_account(value: &Value) -> Value {
    match value {
        Value::Object(map) => Value::Object(
            map.iter()
                .filter(|(k, _)| k.as_str() != "sender_account")
                .map(|(k, v)| (k.clone(), without_sender_account(v)))
                .collect(),
        ),
        Value::Array(items) => Value::Array(items.iter().map(without_sender_account).collect()),
        other => other.clone(),
    }
}

/// What every client read must show: events in account-name ids with `sender_account` naming
/// the key and the name, and no key anywhere else. `names` maps each bare key to its name id.
pub fn assert_projected(what: &str, body: &Value, names: &[(String, String)]) {
    let mut events = Vec::new();
    events_in(body, &mut events);
    for event in &events {
        // Stripped state (invites) carries no unsigned in the spec's shape, but ours has it.
        let account = &event["unsigned"]["sender_account"];
        let key = account["key"]
            .as_str()
            .unwrap_or_else(|| panic!("{what}: no sender_account in {event}"));
        let (_, name) = names
            .iter()
            .find(|(k, _)| k == key)
            .unwrap_or_else(|| panic!("{what}: unknown key {key} in {event}"));
        assert_eq!(account["user_id"], json!(name), "{what}: {event}");
        assert_eq!(event["sender"], json!(name), "{what}: {event}");
    }
    let text = without_sender_account(body).to_string();
    for (key, _) in names {
        assert!(
            !text.contains(key.as_str()),
            "{what}: key {key} shown to a client: {text}"
        );
    }
}

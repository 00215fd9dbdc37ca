//! Shared helpers for the integration tests: deterministic keys and a small event builder.
#![allow(dead_code)]

use myelin_room_version::canonical::value_to_object;
use myelin_room_version::pdu::{EventSigner, Pdu, build_pdu};
use myelin_room_version::signing::KeyPair;
use myelin_room_version::version::RoomVersion;
use serde_json::{Value, json};

pub fn v(id: &str) -> &'static RoomVersion {
    RoomVersion::get(id).unwrap()
}

/// A deterministic key pair per test actor.
pub fn keypair(n: u8) -> KeyPair {
    KeyPair::from_seed(&[n; 32])
}

/// `@<account key of seed n>:<domain>`.
pub fn key_user(n: u8, domain: &str) -> String {
    keypair(n).account_key().user_id(domain)
}

/// Build and sign an event. `fields` supplies type, sender, content, etc.; defaults fill the rest.
pub fn build(version: &RoomVersion, key: &KeyPair, mut fields: Value) -> Pdu {
    let obj = fields.as_object_mut().unwrap();
    obj.entry("origin_server_ts").or_insert(json!(1_000));
    obj.entry("depth").or_insert(json!(1));
    obj.entry("prev_events").or_insert(json!([]));
    obj.entry("auth_events").or_insert(json!([]));
    obj.entry("content").or_insert(json!({}));
    let sender = obj["sender"].as_str().unwrap().to_owned();
    let domain = sender.split_once(':').unwrap().1.to_owned();
    let partial = value_to_object(fields).unwrap();
    let signer = if version.uses_account_keys() {
        EventSigner::Account(key)
    } else {
        EventSigner::Server { server_name: &domain, key_id: "ed25519:test", key }
    };
    build_pdu(partial, version, signer).unwrap()
}

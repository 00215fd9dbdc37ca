//! Shared helpers for the integration tests: deterministic keys and a small event builder.
#![allow(dead_code)]

use myelin_room_version::canonical::value_to_object;
use myelin_room_version::pdu::{EventSigner, Pdu, build_pdu};
use myelin_room_version::signing::KeyPair;
use myelin_room_version::version::{RoomIdFormat, RoomVersion};
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

static NEXT_ID: std::sync::atomic::AtomicU64 = std::sync::atomic::AtomicU64::new(1);

/// In rooms 1 and 2 the creating server picks the event id: a fresh `$e<n>:<domain>`.
pub fn fresh_event_id(domain: &str) -> String {
    let n = NEXT_ID.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
    format!("$e{n}:{domain}")
}

/// Build and sign an event. `fields` supplies type, sender, content, etc.; defaults fill the rest
/// (in rooms 1 and 2 also a fresh `event_id` on the sender's domain).
pub fn build(version: &RoomVersion, key: &KeyPair, mut fields: Value) -> Pdu {
    let obj = fields.as_object_mut().unwrap();
    if version.event_ids_in_pdu() && !obj.contains_key("event_id") {
        let domain = obj["sender"].as_str().unwrap().split_once(':').unwrap().1;
        obj.insert("event_id".into(), json!(fresh_event_id(domain)));
    }
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
        EventSigner::Server {
            server_name: &domain,
            key_id: "ed25519:test",
            key,
        }
    };
    build_pdu(partial, version, signer).unwrap()
}

use std::collections::HashMap;

use myelin_room_version::auth::{
    AuthError, check_against_auth_events, check_against_state, select_auth_events,
};
use myelin_room_version::canonical::room_id_for_create_event;

/// A test actor: the seed of their key and their user id in the room's id form (key form in
/// account-key rooms, `@u<n>:<domain>` elsewhere).
#[derive(Clone, Debug)]
pub struct Actor {
    pub seed: u8,
    pub id: String,
}

pub fn actor(version: &RoomVersion, n: u8, domain: &str) -> Actor {
    let id = if version.uses_account_keys() {
        key_user(n, domain)
    } else {
        format!("@u{n}:{domain}")
    };
    Actor { seed: n, id }
}

/// A room kept entirely in memory: events by id, current state, a linear DAG.
pub struct Room {
    pub version: &'static RoomVersion,
    pub room_id: String,
    pub events: HashMap<String, Pdu>,
    pub state: HashMap<(String, String), String>,
    pub last: String,
    pub depth: u64,
}

impl Room {
    /// Create a room: create event (by `creator`, with extra create content), creator join,
    /// power levels (given content) and join rules (given rule).
    pub fn new(
        version: &'static RoomVersion,
        creator: &Actor,
        create_content: Value,
        power_levels: Value,
        join_rule: &str,
    ) -> Room {
        let mut content = create_content;
        content["room_version"] = json!(version.id());
        if !version.auth_rules().creator_is_create_sender {
            content["creator"] = json!(creator.id);
        }
        let mut fields = json!({"type": "m.room.create", "state_key": "", "sender": creator.id,
                                "content": content});
        if version.room_id_format() == RoomIdFormat::ServerScoped {
            fields["room_id"] = json!("!room:a.example");
        }
        let create = build(version, &keypair(creator.seed), fields);
        let room_id = room_id_for_create_event(create.json(), version)
            .unwrap()
            .unwrap_or_else(|| "!room:a.example".to_owned());
        let mut room = Room {
            version,
            room_id,
            events: HashMap::new(),
            state: HashMap::new(),
            last: create.event_id().to_owned(),
            depth: 1,
        };
        room.apply(create);
        room.send(
            creator,
            json!({"type": "m.room.member", "state_key": creator.id,
                                  "content": {"membership": "join"}}),
        );
        room.send(
            creator,
            json!({"type": "m.room.power_levels", "state_key": "",
                                  "content": power_levels}),
        );
        room.send(
            creator,
            json!({"type": "m.room.join_rules", "state_key": "",
                                  "content": {"join_rule": join_rule}}),
        );
        room
    }

    /// Build a signed event for the current position of the room, citing the selected auth
    /// events, without checking or applying it.
    pub fn make(&self, who: &Actor, mut fields: Value) -> Pdu {
        let obj = fields.as_object_mut().unwrap();
        obj.insert("sender".into(), json!(who.id));
        obj.insert("room_id".into(), json!(self.room_id));
        obj.entry("content").or_insert(json!({}));
        obj.insert("prev_events".into(), json!([self.cite(&self.last)]));
        obj.insert("depth".into(), json!(self.depth + 1));
        let content = serde_json::value::to_raw_value(&obj["content"]).unwrap();
        let auth = select_auth_events(
            self.version,
            obj["type"].as_str().unwrap(),
            &who.id,
            obj.get("state_key").and_then(|s| s.as_str()),
            &content,
            &self.state,
        )
        .unwrap();
        let auth: Vec<Value> = auth.iter().map(|id| self.cite(id)).collect();
        obj.insert("auth_events".into(), json!(auth));
        build(self.version, &keypair(who.seed), fields)
    }

    /// How a new event cites `id` (an id, or in rooms 1 and 2 an `[id, hashes]` pair).
    pub fn cite(&self, id: &str) -> Value {
        match self.events.get(id) {
            Some(pdu) => serde_json::to_value(pdu.reference(self.version).unwrap()).unwrap(),
            None => json!(id),
        }
    }

    /// Like `make` + `try_apply`, but every step's error is returned instead of unwrapped, for
    /// tests feeding arbitrary content (which may not even be canonical JSON).
    pub fn try_send_any(&mut self, who: &Actor, mut fields: Value) -> Result<String, String> {
        let obj = fields.as_object_mut().ok_or("not an object")?;
        obj.insert("sender".into(), json!(who.id));
        obj.insert("room_id".into(), json!(self.room_id));
        obj.insert("prev_events".into(), json!([self.cite(&self.last)]));
        obj.insert("depth".into(), json!(self.depth + 1));
        obj.insert("origin_server_ts".into(), json!(1));
        let content =
            serde_json::value::to_raw_value(&obj["content"]).map_err(|e| e.to_string())?;
        let auth = select_auth_events(
            self.version,
            obj["type"].as_str().unwrap_or_default(),
            &who.id,
            obj.get("state_key").and_then(|s| s.as_str()),
            &content,
            &self.state,
        )
        .map_err(|e| e.to_string())?;
        let auth: Vec<Value> = auth.iter().map(|id| self.cite(id)).collect();
        obj.insert("auth_events".into(), json!(auth));
        let key = keypair(who.seed);
        let domain = who
            .id
            .split_once(':')
            .map(|(_, d)| d.to_owned())
            .unwrap_or_default();
        if self.version.event_ids_in_pdu() {
            obj.insert("event_id".into(), json!(fresh_event_id(&domain)));
        }
        let partial = value_to_object(fields).map_err(|e| e.to_string())?;
        let signer = if self.version.uses_account_keys() {
            EventSigner::Account(&key)
        } else {
            EventSigner::Server {
                server_name: &domain,
                key_id: "ed25519:test",
                key: &key,
            }
        };
        let pdu = build_pdu(partial, self.version, signer).map_err(|e| e.to_string())?;
        self.try_apply(pdu).map_err(|e| e.to_string())
    }

    /// Authorise against the auth events and the current state, and apply if allowed.
    pub fn try_send(&mut self, who: &Actor, fields: Value) -> Result<String, AuthError> {
        let pdu = self.make(who, fields);
        self.try_apply(pdu)
    }

    pub fn try_apply(&mut self, pdu: Pdu) -> Result<String, AuthError> {
        check_against_auth_events(self.version, &pdu, |id| self.events.get(id))?;
        check_against_state(self.version, &pdu, |t, k| {
            self.state
                .get(&(t.to_owned(), k.to_owned()))
                .and_then(|id| self.events.get(id))
        })?;
        let id = pdu.event_id().to_owned();
        self.apply(pdu);
        Ok(id)
    }

    pub fn send(&mut self, who: &Actor, fields: Value) -> String {
        let kind = fields["type"].clone();
        self.try_send(who, fields)
            .unwrap_or_else(|e| panic!("{kind} should be allowed: {e}"))
    }

    fn apply(&mut self, pdu: Pdu) {
        let id = pdu.event_id().to_owned();
        if let Some(k) = pdu.state_key() {
            self.state
                .insert((pdu.event_type().to_owned(), k.to_owned()), id.clone());
        }
        self.last = id.clone();
        self.depth += 1;
        self.events.insert(id, pdu);
    }

    pub fn membership(&self, user: &Actor) -> Option<String> {
        let id = self
            .state
            .get(&("m.room.member".to_owned(), user.id.clone()))?;
        let pdu = &self.events[id];
        pdu.content_object()?
            .get("membership")?
            .as_str()
            .map(str::to_owned)
    }

    pub fn member(
        &mut self,
        who: &Actor,
        target: &Actor,
        membership: &str,
    ) -> Result<String, AuthError> {
        self.try_send(
            who,
            json!({"type": "m.room.member", "state_key": target.id,
                                  "content": {"membership": membership}}),
        )
    }
}

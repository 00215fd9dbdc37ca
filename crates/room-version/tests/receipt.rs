//! The checks on receipt (`receipt`), one outcome each, with events from a simulated second
//! server `b.example` signing with its own test key: accepted; dropped for bad JSON and for a
//! bad signature; stored redacted for a wrong content hash; missing auth or prev events listed;
//! rejected by its own auth events and by the state before it; soft-failed by the current state.

mod common;

use std::collections::{BTreeMap, HashMap};

use common::{Actor, Room, actor, build, keypair, v};
use myelin_room_version::receipt::{
    Dropped, Outcome, ReceiptLookups, RejectedAt, check_on_receipt,
};
use myelin_room_version::verify::{ServerKey, ServerKeys};
use myelin_room_version::{CanonicalJsonValue, Pdu, PublicKey, RoomVersion};
use serde_json::{Value, json};

const VERSION: &str = "10";

type State = HashMap<(String, String), String>;

/// The store and states a caller would answer from.
struct Lookups<'a> {
    events: &'a HashMap<String, Pdu>,
    before: State,
    current: State,
}

impl ReceiptLookups for Lookups<'_> {
    fn event(&self, event_id: &str) -> Option<&Pdu> {
        self.events.get(event_id)
    }
    fn state_before(&self, event_type: &str, state_key: &str) -> Option<&Pdu> {
        let id = self
            .before
            .get(&(event_type.to_owned(), state_key.to_owned()))?;
        self.events.get(id)
    }
    fn current_state(&self, event_type: &str, state_key: &str) -> Option<&Pdu> {
        let id = self
            .current
            .get(&(event_type.to_owned(), state_key.to_owned()))?;
        self.events.get(id)
    }
}

/// The public keys of `a.example` (seed 1) and `b.example` (seed 2), as key fetching finds them.
fn server_keys() -> ServerKeys {
    let mut keys = ServerKeys::new();
    for (server, seed) in [("a.example", 1), ("b.example", 2)] {
        let key = PublicKey::from_bytes(&keypair(seed).public_key()).unwrap();
        keys.insert(
            server.to_owned(),
            BTreeMap::from([(
                "ed25519:test".to_owned(),
                ServerKey {
                    key,
                    valid_until_ts: u64::MAX,
                },
            )]),
        );
    }
    keys
}

fn version() -> &'static RoomVersion {
    v(VERSION)
}

/// A public room on `a.example` and a user of `b.example`, joined when `joined`.
fn room(joined: bool) -> (Room, Actor, Actor) {
    let creator = actor(version(), 1, "a.example");
    let remote = actor(version(), 2, "b.example");
    let room = Room::new(
        version(),
        &creator,
        json!({}),
        json!({"users": {creator.id.clone(): 100}}),
        "public",
    );
    let mut room = room;
    if joined {
        room.member(&remote, &remote, "join").unwrap();
    }
    (room, creator, remote)
}

fn bytes(pdu: &Pdu) -> Vec<u8> {
    pdu.canonical_json().into_bytes()
}

fn check(room: &Room, pdu_bytes: &[u8], before: State) -> Outcome {
    let lookups = Lookups {
        events: &room.events,
        before,
        current: room.state.clone(),
    };
    check_on_receipt(version(), pdu_bytes, &server_keys(), &lookups)
}

fn message() -> Value {
    json!({"type": "m.room.message", "content": {"msgtype": "m.text", "body": "hello"}})
}

/// A message by `who` with exactly these `prev_events` and `auth_events`, signed by `who`'s key.
fn message_citing(room: &Room, who: &Actor, prev: &[&str], auth: &[&str]) -> Pdu {
    build(
        version(),
        &keypair(who.seed),
        json!({"type": "m.room.message", "room_id": room.room_id, "sender": who.id,
               "content": {"body": "hello"}, "depth": room.depth + 1,
               "prev_events": prev, "auth_events": auth}),
    )
}

fn id_of(room: &Room, event_type: &str, state_key: &str) -> String {
    room.state[&(event_type.to_owned(), state_key.to_owned())].clone()
}

#[test]
fn a_good_event_from_another_server_is_accepted() {
    let (room, _, remote) = room(true);
    let pdu = room.make(&remote, message());
    match check(&room, &bytes(&pdu), room.state.clone()) {
        Outcome::Accepted(event) => {
            assert!(!event.redacted);
            assert_eq!(event.pdu.event_id(), pdu.event_id());
        }
        other => panic!("{other:?}"),
    }
}

#[test]
fn bad_json_is_dropped() {
    let (room, _, _) = room(true);
    assert!(matches!(
        check(&room, b"{not json", room.state.clone()),
        Outcome::Dropped(Dropped::Format(_))
    ));
}

#[test]
fn a_bad_signature_is_dropped() {
    let (room, _, remote) = room(true);
    // b.example's user, signed with a key that is not b.example's.
    let impostor = Actor {
        seed: 3,
        id: remote.id.clone(),
    };
    let pdu = room.make(&impostor, message());
    assert!(matches!(
        check(&room, &bytes(&pdu), room.state.clone()),
        Outcome::Dropped(Dropped::Signature(_))
    ));
}

#[test]
fn a_wrong_content_hash_keeps_only_the_redacted_form() {
    let (room, _, remote) = room(true);
    let pdu = room.make(&remote, message());
    let id = pdu.event_id().to_owned();
    let mut json = pdu.into_json();
    // Content is outside the signed (redacted) form: the signature holds, the hash does not.
    json.insert(
        "content".to_owned(),
        CanonicalJsonValue::Object(
            [(
                "body".to_owned(),
                CanonicalJsonValue::String("tampered".to_owned()),
            )]
            .into(),
        ),
    );
    let tampered = serde_json::to_vec(&json).unwrap();
    match check(&room, &tampered, room.state.clone()) {
        Outcome::Accepted(event) => {
            assert!(event.redacted);
            assert_eq!(event.pdu.event_id(), id);
            assert_eq!(event.pdu.content().get(), "{}", "content stripped");
        }
        other => panic!("{other:?}"),
    }
}

#[test]
fn unknown_auth_events_are_listed_as_missing() {
    let (room, _, remote) = room(true);
    let create = id_of(&room, "m.room.create", "");
    let pdu = message_citing(&room, &remote, &[&room.last], &[&create, "$nope", "$nope"]);
    match check(&room, &bytes(&pdu), room.state.clone()) {
        Outcome::Missing { missing, .. } => assert_eq!(missing, ["$nope"]),
        other => panic!("{other:?}"),
    }
}

#[test]
fn unknown_prev_events_are_listed_as_missing() {
    let (room, _, remote) = room(true);
    let auth = [
        id_of(&room, "m.room.create", ""),
        id_of(&room, "m.room.power_levels", ""),
        id_of(&room, "m.room.member", &remote.id),
    ];
    let auth: Vec<&str> = auth.iter().map(String::as_str).collect();
    let pdu = message_citing(&room, &remote, &["$gone"], &auth);
    match check(&room, &bytes(&pdu), room.state.clone()) {
        Outcome::Missing { missing, .. } => assert_eq!(missing, ["$gone"]),
        other => panic!("{other:?}"),
    }
}

#[test]
fn an_event_its_own_auth_events_forbid_is_rejected() {
    // b.example's user never joined: its auth events hold no membership for it.
    let (room, _, remote) = room(false);
    let pdu = room.make(&remote, message());
    match check(&room, &bytes(&pdu), room.state.clone()) {
        Outcome::Rejected { at, reason, .. } => {
            assert_eq!(at, RejectedAt::AuthEvents);
            assert!(!reason.is_empty());
        }
        other => panic!("{other:?}"),
    }
}

#[test]
fn an_event_the_state_before_it_forbids_is_rejected() {
    let (mut room, _, remote) = room(true);
    let join = id_of(&room, "m.room.member", &remote.id);
    room.member(&remote, &remote, "leave").unwrap();
    // Cites its old join as auth event, but follows its leave.
    let auth = [
        id_of(&room, "m.room.create", ""),
        id_of(&room, "m.room.power_levels", ""),
        join,
    ];
    let auth: Vec<&str> = auth.iter().map(String::as_str).collect();
    let pdu = message_citing(&room, &remote, &[&room.last], &auth);
    match check(&room, &bytes(&pdu), room.state.clone()) {
        Outcome::Rejected { at, .. } => assert_eq!(at, RejectedAt::StateBefore),
        other => panic!("{other:?}"),
    }
}

#[test]
fn an_event_the_current_state_forbids_is_soft_failed() {
    let (mut room, creator, remote) = room(true);
    // Sent while joined; by the time it arrives the creator has banned its sender.
    let pdu = room.make(&remote, message());
    let before = room.state.clone();
    room.member(&creator, &remote, "ban").unwrap();
    match check(&room, &bytes(&pdu), before) {
        Outcome::SoftFailed(event) => assert_eq!(event.pdu.event_id(), pdu.event_id()),
        other => panic!("{other:?}"),
    }
}

//! Signature and hash checks on received PDUs, and the account-key room cases of MSC4243.md §6.

mod common;

use std::collections::BTreeMap;

use common::{Actor, Room, actor, build, key_user, keypair, v};
use myelin_room_version::auth::check_auth_events;
use myelin_room_version::canonical::{parse_object, room_id_for_create_event};
use myelin_room_version::pdu::{EventSigner, Pdu, PduError, add_signature};
use myelin_room_version::signing::{PublicKey, SignatureError};
use myelin_room_version::verify::{
    ServerKey, ServerKeys, Verified, required_server_keys, verify_pdu,
};
use serde_json::{Value, json};

const AK: &str = "org.matrix.12.4243";

fn as_value(pdu: &Pdu) -> Value {
    serde_json::from_str(&pdu.canonical_json()).unwrap()
}

fn reparse(value: Value, version: &str) -> Result<Pdu, PduError> {
    Pdu::from_federation(value.to_string().as_bytes(), v(version))
}

fn message(version: &str, sender: &Actor, ts: u64) -> Pdu {
    build(
        v(version),
        &keypair(sender.seed),
        json!({"type": "m.room.message", "room_id": "!AAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAA",
               "sender": sender.id, "content": {"body": "hello"}, "origin_server_ts": ts,
               "prev_events": ["$p"], "auth_events": ["$a"]}),
    )
}

/// §6 case 1: signed by the account key, accepted with no key fetch.
#[test]
fn case1_account_key_signature_needs_no_fetch() {
    let alice = actor(v(AK), 3, "b.example");
    let pdu = message(AK, &alice, 1_000);
    assert!(required_server_keys(&pdu, v(AK)).is_empty());
    assert_eq!(
        verify_pdu(&pdu, v(AK), &ServerKeys::new()),
        Ok(Verified::All)
    );
    let sigs = as_value(&pdu)["signatures"].clone();
    let key = keypair(3).account_key();
    assert!(
        sigs[key.as_str()]["ed25519:1"].is_string(),
        "entity is the bare key: {sigs}"
    );
}

/// §6 case 2: signed only by the sender's server key → dropped.
#[test]
fn case2_server_key_signature_is_not_enough() {
    let alice = actor(v(AK), 3, "b.example");
    let pdu = message(AK, &alice, 1_000);
    let mut value = as_value(&pdu);
    value["signatures"] = json!({});
    let mut stripped = reparse(value, AK).unwrap();
    let server_key = keypair(50);
    add_signature(
        &mut stripped,
        v(AK),
        EventSigner::Server {
            server_name: "b.example",
            key_id: "ed25519:a",
            key: &server_key,
        },
    )
    .unwrap();
    assert!(matches!(
        verify_pdu(&stripped, v(AK), &ServerKeys::new()),
        Err(SignatureError::Missing { .. })
    ));
}

/// §6 case 3: the right signature under another key id → dropped.
#[test]
fn case3_wrong_key_id_is_dropped() {
    let alice = actor(v(AK), 3, "b.example");
    let pdu = message(AK, &alice, 1_000);
    let key = keypair(3).account_key();
    let sig = as_value(&pdu)["signatures"][key.as_str()]["ed25519:1"].clone();
    for key_id in ["ed25519:auto".to_owned(), format!("ed25519:{key}")] {
        let mut value = as_value(&pdu);
        value["signatures"] = json!({ key.as_str(): { key_id.clone(): sig.clone() } });
        let moved = reparse(value, AK).unwrap();
        assert!(
            verify_pdu(&moved, v(AK), &ServerKeys::new()).is_err(),
            "{key_id}"
        );
    }
}

/// §6 case 4: lax spellings of the sender's key are refused at the format stage.
#[test]
fn case4_lax_key_spellings_are_dropped() {
    let alice = actor(v(AK), 3, "b.example");
    let pdu = message(AK, &alice, 1_000);
    let key = keypair(3).account_key().as_str().to_owned();
    let std_b64 = key.replace('-', "+").replace('_', "/");
    let last = key.chars().last().unwrap();
    let alphabet = "ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789-_";
    let bumped = alphabet.as_bytes()[alphabet.find(last).unwrap() + 1] as char;
    let mut spellings = vec![
        format!("{key}="),
        key[..42].to_owned(),
        format!("{key}A"),
        format!("{}{bumped}", &key[..42]),
        format!("+{}", &key[1..]),
        format!("/{}", &key[1..]),
    ];
    if std_b64 != key {
        spellings.push(std_b64);
    }
    for localpart in spellings {
        let mut value = as_value(&pdu);
        value["sender"] = json!(format!("@{localpart}:b.example"));
        let err = reparse(value, AK).unwrap_err();
        assert!(
            matches!(
                err,
                PduError::SenderNotKeyForm(_) | PduError::InvalidId { .. }
            ),
            "{localpart}: {err}"
        );
    }
}

/// §6 case 6: no key validity period for account keys.
#[test]
fn case6_timestamps_far_from_now_still_verify() {
    let alice = actor(v(AK), 3, "b.example");
    for ts in [0, 1, 4_102_444_800_000 * 3] {
        let pdu = message(AK, &alice, ts);
        assert_eq!(
            verify_pdu(&pdu, v(AK), &ServerKeys::new()),
            Ok(Verified::All)
        );
    }
}

fn restricted_room() -> (Room, Actor, Actor, Actor) {
    let version = v(AK);
    let creator = actor(version, 1, "a.example");
    let moderator = actor(version, 2, "a.example");
    let joiner = actor(version, 3, "b.example");
    let pl = json!({"users": {moderator.id.clone(): 50}, "invite": 50});
    let mut room = Room::new(version, &creator, json!({}), pl, "restricted");
    room.member(&creator, &moderator, "invite").unwrap();
    room.member(&moderator, &moderator, "join").unwrap();
    (room, creator, moderator, joiner)
}

fn restricted_join(room: &Room, joiner: &Actor, authoriser: &Actor) -> Pdu {
    room.make(
        joiner,
        json!({"type": "m.room.member", "state_key": joiner.id,
               "content": {"membership": "join", "join_authorised_via_users_server": authoriser.id}}),
    )
}

/// §6 case 7: the authoriser's account key co-signs; authoriser joined with invite power.
#[test]
fn case7_restricted_join_cosigned_by_authoriser_account_key() {
    let (mut room, _creator, moderator, joiner) = restricted_room();
    let mut join = restricted_join(&room, &joiner, &moderator);
    // Without the authoriser's signature the event is dropped.
    assert!(verify_pdu(&join, v(AK), &ServerKeys::new()).is_err());
    add_signature(
        &mut join,
        v(AK),
        EventSigner::Account(&keypair(moderator.seed)),
    )
    .unwrap();
    assert_eq!(
        verify_pdu(&join, v(AK), &ServerKeys::new()),
        Ok(Verified::All)
    );
    room.try_apply(join).unwrap();
    assert_eq!(room.membership(&joiner).as_deref(), Some("join"));
}

/// §6 case 8: co-signed by the resident server key, or by the wrong user's key → dropped.
#[test]
fn case8_restricted_join_with_wrong_cosigner_is_dropped() {
    let (room, creator, moderator, joiner) = restricted_room();
    let base = restricted_join(&room, &joiner, &moderator);
    let mut by_server = base.clone();
    add_signature(
        &mut by_server,
        v(AK),
        EventSigner::Server {
            server_name: "a.example",
            key_id: "ed25519:a",
            key: &keypair(60),
        },
    )
    .unwrap();
    assert!(verify_pdu(&by_server, v(AK), &ServerKeys::new()).is_err());
    let mut by_other = base;
    add_signature(
        &mut by_other,
        v(AK),
        EventSigner::Account(&keypair(creator.seed)),
    )
    .unwrap();
    assert!(verify_pdu(&by_other, v(AK), &ServerKeys::new()).is_err());
}

/// §6 case 9: valid authoriser signature but the authoriser is not joined → rejected by auth.
#[test]
fn case9_authoriser_not_joined_is_rejected() {
    let (mut room, _creator, _moderator, joiner) = restricted_room();
    let outsider = actor(v(AK), 9, "c.example");
    let mut join = restricted_join(&room, &joiner, &outsider);
    add_signature(
        &mut join,
        v(AK),
        EventSigner::Account(&keypair(outsider.seed)),
    )
    .unwrap();
    assert_eq!(
        verify_pdu(&join, v(AK), &ServerKeys::new()),
        Ok(Verified::All)
    );
    assert!(room.try_apply(join).is_err());
}

/// §6 case 10: the room id is the create event's reference hash; create events with a room_id,
/// or cited in auth_events, are rejected.
#[test]
fn case10_room_id_is_hash_of_key_signed_create() {
    let creator = actor(v(AK), 1, "a.example");
    let room = Room::new(v(AK), &creator, json!({}), json!({}), "invite");
    let create_id = room.state[&("m.room.create".to_owned(), String::new())].clone();
    assert_eq!(room.room_id, format!("!{}", &create_id[1..]));
    let create = &room.events[&create_id];
    assert_eq!(
        room_id_for_create_event(create.json(), v(AK)).unwrap(),
        Some(room.room_id.clone())
    );
    assert_eq!(
        verify_pdu(create, v(AK), &ServerKeys::new()),
        Ok(Verified::All)
    );
    // A create event with a room_id.
    let mut with_room_id = as_value(create);
    with_room_id["room_id"] = json!(room.room_id);
    assert_eq!(
        reparse(with_room_id, AK).unwrap_err(),
        PduError::CreateHasRoomId
    );
    // An event citing the create event in auth_events.
    let msg = room.make(&creator, json!({"type": "m.room.message", "content": {}}));
    let mut citing = as_value(&msg);
    citing["auth_events"]
        .as_array_mut()
        .unwrap()
        .push(json!(create_id));
    assert_eq!(
        reparse(citing, AK).unwrap_err(),
        PduError::CreateEventInAuthEvents
    );
}

/// §6 case 11: name-form ids in additional_creators / power_levels.users are rejected; key-form
/// creators get infinite power.
#[test]
fn case11_name_form_ids_rejected_and_key_form_creators_are_all_powerful() {
    let version = v(AK);
    let creator = actor(version, 1, "a.example");
    let co_creator = actor(version, 2, "b.example");
    let key = keypair(1);
    let name_form = build(
        version,
        &key,
        json!({"type": "m.room.create", "state_key": "", "sender": creator.id,
               "content": {"room_version": AK, "additional_creators": ["@bob:b.example"]}}),
    );
    assert!(check_auth_events(version, &name_form, |_| None).is_err());

    let mut room = Room::new(
        version,
        &creator,
        json!({"additional_creators": [co_creator.id]}),
        json!({"users": {}}),
        "public",
    );
    // Name-form power_levels.users key.
    assert!(
        room.try_send(
            &creator,
            json!({"type": "m.room.power_levels", "state_key": "",
                                       "content": {"users": {"@bob:b.example": 50}}})
        )
        .is_err()
    );
    // The additional creator joins and, with no entry in power levels, can change anything.
    room.member(&co_creator, &co_creator, "join").unwrap();
    room.send(
        &co_creator,
        json!({"type": "m.room.tombstone", "state_key": "", "content": {}}),
    );
    let someone = actor(version, 5, "c.example");
    room.member(&someone, &someone, "join").unwrap();
    room.member(&co_creator, &someone, "ban").unwrap();
    // A name-form member state key is refused.
    assert!(
        room.try_send(
            &creator,
            json!({"type": "m.room.member", "state_key": "@carol:c.example",
                                       "content": {"membership": "ban"}})
        )
        .is_err()
    );
}

fn server_keys(server: &str, key_id: &str, seed: u8, valid_until_ts: u64) -> ServerKeys {
    let mut per = BTreeMap::new();
    per.insert(
        key_id.to_owned(),
        ServerKey {
            key: PublicKey::from_bytes(&keypair(seed).public_key()).unwrap(),
            valid_until_ts,
        },
    );
    let mut keys = ServerKeys::new();
    keys.insert(server.to_owned(), per);
    keys
}

fn server_message(ts: u64) -> Pdu {
    build(
        v("12"),
        &keypair(20),
        json!({"type": "m.room.message", "room_id": "!AAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAA",
               "sender": "@alice:b.example", "content": {"body": "hello"}, "origin_server_ts": ts}),
    )
}

#[test]
fn server_key_verification_reports_needed_keys_and_outcomes() {
    let pdu = server_message(5_000);
    let needed = required_server_keys(&pdu, v("12"));
    assert_eq!(
        needed.into_iter().collect::<Vec<_>>(),
        vec![("b.example".to_owned(), "ed25519:test".to_owned())]
    );
    let keys = server_keys("b.example", "ed25519:test", 20, 10_000);
    assert_eq!(verify_pdu(&pdu, v("12"), &keys), Ok(Verified::All));
    // Key not supplied → error naming it.
    assert!(matches!(
        verify_pdu(&pdu, v("12"), &ServerKeys::new()),
        Err(SignatureError::KeyNotSupplied { .. })
    ));
    // Key expired before the event was sent (v5+ validity period).
    let expired = server_keys("b.example", "ed25519:test", 20, 4_999);
    assert!(matches!(
        verify_pdu(&pdu, v("12"), &expired),
        Err(SignatureError::KeyExpired { .. })
    ));
    // Wrong key → drop.
    let wrong = server_keys("b.example", "ed25519:test", 21, 10_000);
    assert!(matches!(
        verify_pdu(&pdu, v("12"), &wrong),
        Err(SignatureError::Invalid { .. })
    ));
    // Content changed after signing (body is not covered by the signature): keep redacted.
    let mut value = as_value(&pdu);
    value["content"]["body"] = json!("tampered");
    let tampered = reparse(value.clone(), "12").unwrap();
    assert_eq!(
        verify_pdu(&tampered, v("12"), &keys),
        Ok(Verified::SignaturesOnly)
    );
    let redacted = tampered.redacted(v("12")).unwrap();
    assert_eq!(redacted.event_id(), tampered.event_id());
    assert_eq!(redacted.content().get(), "{}");
    // A change to a signed field (the sender's type of event) breaks the signature: drop.
    value["type"] = json!("m.room.other");
    let retyped = reparse(value, "12").unwrap();
    assert!(verify_pdu(&retyped, v("12"), &keys).is_err());
}

#[test]
fn restricted_join_in_server_key_rooms_needs_authorising_server() {
    let version = v("12");
    let pdu = build(
        version,
        &keypair(20),
        json!({"type": "m.room.member", "room_id": "!AAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAA",
               "sender": "@alice:b.example", "state_key": "@alice:b.example",
               "content": {"membership": "join", "join_authorised_via_users_server": "@mod:a.example"}}),
    );
    let servers: Vec<_> = required_server_keys(&pdu, version)
        .into_iter()
        .map(|(s, _)| s)
        .collect();
    assert_eq!(
        servers,
        vec!["b.example"],
        "a.example has not signed yet, so no key id is known"
    );
    let mut keys = server_keys("b.example", "ed25519:test", 20, u64::MAX);
    assert!(
        verify_pdu(&pdu, version, &keys).is_err(),
        "authorising server signature missing"
    );
    let mut signed = pdu.clone();
    add_signature(
        &mut signed,
        version,
        EventSigner::Server {
            server_name: "a.example",
            key_id: "ed25519:r",
            key: &keypair(30),
        },
    )
    .unwrap();
    let needed: Vec<_> = required_server_keys(&signed, version).into_iter().collect();
    assert!(needed.contains(&("a.example".to_owned(), "ed25519:r".to_owned())));
    keys.extend(server_keys("a.example", "ed25519:r", 30, u64::MAX));
    assert_eq!(verify_pdu(&signed, version, &keys), Ok(Verified::All));
}

#[test]
fn building_refuses_the_wrong_key() {
    let alice = key_user(3, "b.example");
    let partial = |sender: &str| {
        parse_object(
            json!({"type": "m.room.message", "room_id": "!AAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAA",
                   "sender": sender, "content": {}, "origin_server_ts": 1, "depth": 1,
                   "prev_events": [], "auth_events": []})
            .to_string()
            .as_bytes(),
        )
        .unwrap()
    };
    use myelin_room_version::pdu::build_pdu;
    // Another user's account key.
    assert!(matches!(
        build_pdu(partial(&alice), v(AK), EventSigner::Account(&keypair(4))),
        Err(PduError::WrongSigner(_))
    ));
    // A server key in an account-key room.
    let server = EventSigner::Server {
        server_name: "b.example",
        key_id: "ed25519:a",
        key: &keypair(4),
    };
    assert!(matches!(
        build_pdu(partial(&alice), v(AK), server),
        Err(PduError::WrongSigner(_))
    ));
    // A server signing for another server's user.
    let other = EventSigner::Server {
        server_name: "evil.example",
        key_id: "ed25519:a",
        key: &keypair(4),
    };
    assert!(matches!(
        build_pdu(partial("@bob:b.example"), v("12"), other),
        Err(PduError::WrongSigner(_))
    ));
    // A name-form sender in an account-key room.
    assert!(matches!(
        build_pdu(
            partial("@bob:b.example"),
            v(AK),
            EventSigner::Account(&keypair(4))
        ),
        Err(PduError::SenderNotKeyForm(_))
    ));
}

/// The invitee's server's signature on an invite (which the room version does not require):
/// checked by name, with its key; missing or made with another key, refused.
#[test]
fn a_signature_the_version_does_not_require_is_checked_by_name() {
    let invite = build(
        v("10"),
        &keypair(20),
        json!({"type": "m.room.member", "room_id": "!r:a.example", "sender": "@alice:a.example",
               "state_key": "@bob:b.example", "content": {"membership": "invite"}}),
    );
    let keys = server_keys("b.example", "ed25519:b", 21, u64::MAX);
    assert!(matches!(
        myelin_room_version::verify::verify_server_signature(&invite, v("10"), "b.example", &keys),
        Err(SignatureError::Missing { .. })
    ));
    let mut signed = invite.clone();
    add_signature(
        &mut signed,
        v("10"),
        EventSigner::Server {
            server_name: "b.example",
            key_id: "ed25519:b",
            key: &keypair(21),
        },
    )
    .unwrap();
    assert_eq!(
        signed.event_id(),
        invite.event_id(),
        "signatures leave the id"
    );
    assert_eq!(
        myelin_room_version::verify::verify_server_signature(&signed, v("10"), "b.example", &keys),
        Ok(())
    );
    let mut forged = invite;
    add_signature(
        &mut forged,
        v("10"),
        EventSigner::Server {
            server_name: "b.example",
            key_id: "ed25519:b",
            key: &keypair(22),
        },
    )
    .unwrap();
    assert!(
        myelin_room_version::verify::verify_server_signature(&forged, v("10"), "b.example", &keys)
            .is_err()
    );
}

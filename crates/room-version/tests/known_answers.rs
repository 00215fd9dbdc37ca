//! Known-answer tests: the spec's signing vectors, real event ids, redaction per version.

mod common;

use common::v;
use myelin_room_version::canonical::{
    content_hash, event_id, parse_object, redact, to_canonical_string,
};
use myelin_room_version::pdu::{EventSigner, build_pdu};
use myelin_room_version::signing::{KeyPair, sign_json};
use serde_json::json;

const SPEC_SEED: &str = "YJDBA9Xnr2sVqXD9Vj7XVUnmFZcZrlw8Md7kMW+3XA1";

fn signature(obj: &ruma::CanonicalJsonObject, entity: &str, key_id: &str) -> String {
    let sigs = obj["signatures"].as_object().unwrap();
    sigs[entity].as_object().unwrap()[key_id]
        .as_str()
        .unwrap()
        .to_owned()
}

/// Spec appendix "Event Signing", first example, built through `build_pdu` with room v10 (whose
/// redaction keeps `origin`, like the v1 algorithm the vector was made with).
#[test]
fn spec_minimal_event_signing_vector() {
    let key = KeyPair::from_base64_seed(SPEC_SEED).unwrap();
    let partial = parse_object(
        br#"{
        "room_id": "!x:domain", "sender": "@a:domain", "origin": "domain",
        "origin_server_ts": 1000000, "signatures": {}, "hashes": {}, "type": "X",
        "content": {}, "prev_events": [], "auth_events": [], "depth": 3,
        "unsigned": {"age_ts": 1000000}}"#,
    )
    .unwrap();
    let signer = EventSigner::Server {
        server_name: "domain",
        key_id: "ed25519:1",
        key: &key,
    };
    let pdu = build_pdu(partial, v("10"), signer).unwrap();
    let hashes = pdu.json()["hashes"].as_object().unwrap();
    assert_eq!(
        hashes["sha256"].as_str().unwrap(),
        "5jM4wQpv6lnBo7CLIghJuHdW+s2CMBJPUOGOC89ncos"
    );
    assert_eq!(
        signature(pdu.json(), "domain", "ed25519:1"),
        "KxwGjPSDEtvnFgU00fwFz+l6d2pJM6XBIaMEn81SXPTRl16AqLAYqfIReFGZlHi5KLjAWbOoMszkwsQma+lYAg"
    );
}

/// Spec appendix "Event Signing", second example: the signature covers the redacted form, so the
/// message body is not signed (only hashed).
#[test]
fn spec_redactable_event_signing_vector() {
    let key = KeyPair::from_base64_seed(SPEC_SEED).unwrap();
    let mut event = parse_object(
        br#"{
        "content": {"body": "Here is the message content"},
        "event_id": "$0:domain", "origin": "domain", "origin_server_ts": 1000000,
        "type": "m.room.message", "room_id": "!r:domain", "sender": "@u:domain",
        "signatures": {}, "unsigned": {"age_ts": 1000000}}"#,
    )
    .unwrap();
    let hash = content_hash(&event);
    assert_eq!(hash, "onLKD1bGljeBWQhWZ1kaP9SorVmRQNdN5aM2JYU2n/g");
    event.insert("hashes".into(), json!({"sha256": hash}).try_into().unwrap());
    let mut redacted = redact(&event, v("10")).unwrap();
    assert!(redacted["content"].as_object().unwrap().is_empty());
    sign_json(&mut redacted, "domain", "ed25519:1", &key).unwrap();
    assert_eq!(
        signature(&redacted, "domain", "ed25519:1"),
        "Wm+VzmOUOz08Ds+0NTWb1d4CZrVsJSikkeRxh6aCcUwu6pNC78FunoD7KNWzqFn241eYHYMGCA5McEiVPdhzBA"
    );
}

/// A real create event from jki.re (room version 5, event-id format v4). Its published event id
/// is the reference hash under the pre-v11 redaction algorithm, which room 10 still uses.
const JKI_CREATE: &str = r#"{"auth_events": [], "prev_events": [], "type": "m.room.create", "room_id": "!uXDCzlYgCTHtiWCkEx:jki.re", "sender": "@erikj:jki.re", "content": {"room_version": "5", "predecessor": {"room_id": "!gdRMqOrTFdOCYHNwOo:half-shot.uk", "event_id": "$LP7ROBc4b+cMc1UE9haIz8q5AK2AIW4eJ90FfKLvyZI"}, "creator": "@erikj:jki.re"}, "depth": 1, "prev_state": [], "state_key": "", "origin": "jki.re", "origin_server_ts": 1560284621137, "hashes": {"sha256": "IX6zuNiJpJPNf70BLleL3HSCpjKeq9Uhu7uUpyDjBmc"}, "signatures": {"jki.re": {"ed25519:auto": "O4IyFfF2PPtGp5uaDm8t57dZbdh8vc8Q64LgCwvzYRVItAMI0uisfiAFaxkVT7MRpzh6N2QNN5NMRXZKmgPYDA"}}, "unsigned": {"age": 1321650}}"#;

#[test]
fn real_event_id_and_content_hash() {
    let event = parse_object(JKI_CREATE.as_bytes()).unwrap();
    assert_eq!(
        content_hash(&event),
        "IX6zuNiJpJPNf70BLleL3HSCpjKeq9Uhu7uUpyDjBmc"
    );
    assert_eq!(
        event_id(&event, v("10")).unwrap(),
        "$RrGxF28UrHLmoASHndYb9Jb_1SFww2ptmtur9INS438"
    );
    // v11 redaction keeps all create content and drops `origin`/`prev_state`, so the same JSON
    // has a different id there: the version really changes the algorithm.
    assert_ne!(
        event_id(&event, v("11")).unwrap(),
        event_id(&event, v("10")).unwrap()
    );
    // Through the PDU parser as well (v10 format checks pass for this event).
    let pdu =
        myelin_room_version::pdu::Pdu::from_federation(JKI_CREATE.as_bytes(), v("10")).unwrap();
    assert_eq!(
        pdu.event_id(),
        "$RrGxF28UrHLmoASHndYb9Jb_1SFww2ptmtur9INS438"
    );
    assert_eq!(pdu.sender(), "@erikj:jki.re");
    assert_eq!(pdu.depth(), 1);
    assert_eq!(pdu.origin_server_ts(), 1560284621137);
}

fn redacted_json(event: serde_json::Value, version: &str) -> serde_json::Value {
    let obj: ruma::CanonicalJsonObject = match event.try_into().unwrap() {
        ruma::CanonicalJsonValue::Object(o) => o,
        _ => unreachable!(),
    };
    serde_json::from_str(&to_canonical_string(&redact(&obj, v(version)).unwrap())).unwrap()
}

#[test]
fn redaction_differs_between_v10_and_v11() {
    let base = |kind: &str, content: serde_json::Value| {
        json!({"type": kind, "room_id": "!r:x", "sender": "@a:x", "origin": "x", "membership": "join",
               "prev_state": [], "state_key": "", "content": content, "unsigned": {"age": 1},
               "hashes": {"sha256": "h"}, "signatures": {}, "depth": 1, "origin_server_ts": 1,
               "prev_events": [], "auth_events": []})
    };
    // Top-level keys: v10 keeps origin/membership/prev_state, v11 drops them; both drop unsigned.
    let m = base("m.room.message", json!({"body": "hi"}));
    let r10 = redacted_json(m.clone(), "10");
    let r11 = redacted_json(m, "11");
    for k in ["origin", "membership", "prev_state"] {
        assert!(r10.get(k).is_some(), "v10 keeps {k}");
        assert!(r11.get(k).is_none(), "v11 drops {k}");
    }
    assert!(r10.get("unsigned").is_none() && r11.get("unsigned").is_none());
    assert_eq!(r10["content"], json!({}));
    // Create: v10 keeps only `creator`; v11 keeps all content.
    let c = base(
        "m.room.create",
        json!({"creator": "@a:x", "room_version": "10", "m.federate": false}),
    );
    assert_eq!(
        redacted_json(c.clone(), "10")["content"],
        json!({"creator": "@a:x"})
    );
    assert_eq!(
        redacted_json(c, "11")["content"],
        json!({"creator": "@a:x", "room_version": "10", "m.federate": false})
    );
    // Power levels: `invite` survives only in v11.
    let p = base(
        "m.room.power_levels",
        json!({"ban": 50, "invite": 0, "notifications": {"room": 50}}),
    );
    assert_eq!(
        redacted_json(p.clone(), "10")["content"],
        json!({"ban": 50})
    );
    assert_eq!(
        redacted_json(p, "12")["content"],
        json!({"ban": 50, "invite": 0})
    );
    // Redaction events: content.redacts survives only in v11.
    let red = base(
        "m.room.redaction",
        json!({"redacts": "$e", "reason": "spam"}),
    );
    assert_eq!(redacted_json(red.clone(), "10")["content"], json!({}));
    assert_eq!(
        redacted_json(red, "org.matrix.12.4243")["content"],
        json!({"redacts": "$e"})
    );
    // Members: join_authorised_via_users_server in both; third_party_invite.signed only in v11.
    let mem = base(
        "m.room.member",
        json!({"membership": "join", "displayname": "A", "join_authorised_via_users_server": "@b:x",
               "third_party_invite": {"display_name": "x", "signed": {"token": "t"}}}),
    );
    assert_eq!(
        redacted_json(mem.clone(), "10")["content"],
        json!({"membership": "join", "join_authorised_via_users_server": "@b:x"})
    );
    assert_eq!(
        redacted_json(mem, "11")["content"],
        json!({"membership": "join", "join_authorised_via_users_server": "@b:x",
               "third_party_invite": {"signed": {"token": "t"}}})
    );
    // Join rules keep `allow` in both.
    let jr = base(
        "m.room.join_rules",
        json!({"join_rule": "restricted", "allow": [], "x": 1}),
    );
    assert_eq!(
        redacted_json(jr.clone(), "10")["content"],
        json!({"join_rule": "restricted", "allow": []})
    );
    assert_eq!(
        redacted_json(jr, "11")["content"],
        json!({"join_rule": "restricted", "allow": []})
    );
}

mod differential {
    //! Our hashes and signatures against ruma-signatures' independent implementation, on
    //! arbitrary events.
    use super::common::{build, keypair, v};
    use myelin_room_version::canonical::{content_hash, event_id, value_to_object};
    use myelin_room_version::verify::{ServerKey, ServerKeys, Verified, verify_pdu};
    use proptest::prelude::*;
    use ruma::RoomVersionId;
    use serde_json::{Value, json};

    fn content() -> impl Strategy<Value = Value> {
        prop::collection::btree_map(
            "[a-z_.]{1,10}",
            prop_oneof![
                any::<i32>().prop_map(|i| json!(i)),
                ".{0,20}".prop_map(Value::String),
                any::<bool>().prop_map(Value::Bool),
                prop::collection::vec("[a-z@:.]{0,12}".prop_map(Value::String), 0..4)
                    .prop_map(Value::Array),
            ],
            0..6,
        )
        .prop_map(|m| Value::Object(m.into_iter().collect()))
    }

    proptest! {
        #![proptest_config(ProptestConfig { cases: 128, ..ProptestConfig::default() })]

        #[test]
        fn hashes_and_ids_match_ruma(
            kind in prop::sample::select(vec!["m.room.message", "m.room.member", "m.room.create",
                "m.room.power_levels", "m.room.join_rules", "m.room.redaction", "org.example"]),
            content in content(),
            state_key in prop::option::of("[a-z@:.]{0,12}"),
            ts in 0u64..4_000_000_000_000,
        ) {
            for (ours, theirs) in [("10", RoomVersionId::V10), ("11", RoomVersionId::V11), ("12", RoomVersionId::V12)] {
                let mut e = json!({"type": kind, "sender": "@a:x.example", "room_id": "!r:x.example",
                    "content": content, "origin_server_ts": ts, "depth": 5, "prev_events": ["$p"],
                    "auth_events": [], "origin": "x.example", "hashes": {"sha256": "x"}, "signatures": {},
                    "unsigned": {"age": 1}});
                if let Some(k) = &state_key {
                    e["state_key"] = json!(k);
                }
                let obj = value_to_object(e).unwrap();
                let rules = theirs.rules().unwrap();
                let ruma_ref = ruma::signatures::reference_hash(&obj, &rules).unwrap();
                prop_assert_eq!(event_id(&obj, v(ours)).unwrap(), format!("${ruma_ref}"));
                let ruma_content = ruma::signatures::content_hash(&obj).unwrap();
                prop_assert_eq!(content_hash(&obj), ruma_content.encode());
            }
        }

        #[test]
        fn signatures_verify_like_ruma(content in content(), tamper in 0u8..3) {
            let key = keypair(20);
            let pdu = build(v("12"), &key, json!({"type": "m.room.message",
                "room_id": "!AAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAA",
                "sender": "@alice:b.example", "content": content}));
            let mut obj = pdu.json().clone();
            // 0: untouched; 1: content changed (hash breaks, signature holds); 2: a signed field
            // changed (signature breaks).
            match tamper {
                1 => {
                    let mut c = ruma::CanonicalJsonObject::new();
                    c.insert("body".into(), ruma::CanonicalJsonValue::String("tampered".into()));
                    obj.insert("content".into(), ruma::CanonicalJsonValue::Object(c));
                }
                2 => {
                    obj.insert("origin_server_ts".into(), ruma::CanonicalJsonValue::Integer(7u8.into()));
                }
                _ => {}
            }
            let pdu = myelin_room_version::pdu::Pdu::from_canonical(obj.clone(), v("12")).unwrap();
            let mut keys = ServerKeys::new();
            keys.entry("b.example".into()).or_default().insert(
                "ed25519:test".into(),
                ServerKey { key: myelin_room_version::PublicKey::from_bytes(&key.public_key()).unwrap(), valid_until_ts: u64::MAX },
            );
            let ours = verify_pdu(&pdu, v("12"), &keys);
            let mut ruma_keys = std::collections::BTreeMap::new();
            let mut set = std::collections::BTreeMap::new();
            set.insert("ed25519:test".to_owned(), ruma::serde::Base64::new(key.public_key().to_vec()));
            ruma_keys.insert("b.example".to_owned(), set);
            let theirs = ruma::signatures::verify_event(&ruma_keys, &obj, &RoomVersionId::V12.rules().unwrap());
            match (ours, theirs) {
                (Ok(Verified::All), Ok(ruma::signatures::Verified::All)) => {}
                (Ok(Verified::SignaturesOnly), Ok(ruma::signatures::Verified::Signatures)) => {}
                (Err(_), Err(_)) => {}
                (a, b) => prop_assert!(false, "disagree: ours {:?}, ruma {:?}", a, b),
            }
        }
    }
}

/// The events this server signs keep `state_key` to the spec's 255 bytes, though other
/// servers' events are taken up to 255 code points.
#[test]
fn built_events_keep_state_keys_to_255_bytes() {
    let key = KeyPair::from_base64_seed(SPEC_SEED).unwrap();
    let signer = || EventSigner::Server {
        server_name: "domain",
        key_id: "ed25519:1",
        key: &key,
    };
    let partial = |state_key: &str| {
        parse_object(
            json!({
                "room_id": "!x:domain", "sender": "@a:domain", "origin_server_ts": 1,
                "type": "my.state", "state_key": state_key, "content": {},
                "prev_events": [], "auth_events": [], "depth": 3,
            })
            .to_string()
            .as_bytes(),
        )
        .unwrap()
    };
    let wide = "\u{1F4A5}".repeat(70);
    assert!(matches!(
        build_pdu(partial(&wide), v("10"), signer()),
        Err(myelin_room_version::PduError::FieldTooLong { .. })
    ));
    build_pdu(partial(&"y".repeat(255)), v("10"), signer()).unwrap();
}

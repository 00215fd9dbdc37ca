//! Event formats of rooms 1 to 3: ids carried in the PDU and `[id, hashes]` references in rooms
//! 1 and 2, reference-hash ids in the standard base64 alphabet in room 3.

mod common;

use common::{build, keypair, v};
use myelin_room_version::canonical::{reference_hash, value_to_object};
use myelin_room_version::pdu::{Pdu, PduError};
use serde_json::{Value, json};

fn event(version: &str, fields: Value) -> Result<Pdu, PduError> {
    let mut base = json!({
        "type": "m.room.message", "room_id": "!r:a.example", "sender": "@u:a.example",
        "content": {"body": "x"}, "depth": 2, "origin_server_ts": 5,
        "hashes": {"sha256": "AAAA"}, "signatures": {},
        "prev_events": [], "auth_events": [],
    });
    for (k, val) in fields.as_object().unwrap() {
        base[k] = val.clone();
    }
    Pdu::from_canonical(value_to_object(base).unwrap(), v(version))
}

const PAIR: &str = "$p1:a.example";

#[test]
fn rooms_1_and_2_carry_the_event_id_in_the_pdu() {
    for version in ["1", "2"] {
        let pdu = event(version, json!({"event_id": "$abc:a.example"})).unwrap();
        assert_eq!(pdu.event_id(), "$abc:a.example");
        assert_eq!(
            event(version, json!({})).unwrap_err(),
            PduError::MissingField("event_id")
        );
        // An id without a server name is the hash form, not this format's.
        assert!(matches!(
            event(version, json!({"event_id": "$abc"})),
            Err(PduError::InvalidId {
                field: "event_id",
                ..
            })
        ));
        assert_eq!(
            event(version, json!({"event_id": 5})).unwrap_err(),
            PduError::WrongType("event_id")
        );
    }
    // From room 3 the id is the reference hash, whatever the PDU says.
    let pdu = event("3", json!({"event_id": "$abc:a.example"})).unwrap();
    assert_ne!(pdu.event_id(), "$abc:a.example");
}

#[test]
fn rooms_1_and_2_cite_events_as_id_and_hash_pairs() {
    let pair = json!([PAIR, {"sha256": "abc"}]);
    let ok = event(
        "1",
        json!({"event_id": "$e:a.example", "prev_events": [pair], "auth_events": [pair]}),
    )
    .unwrap();
    assert_eq!(ok.prev_events().collect::<Vec<_>>(), [PAIR]);
    assert_eq!(ok.auth_events().collect::<Vec<_>>(), [PAIR]);
    for bad in [
        json!(PAIR),
        json!([PAIR]),
        json!([PAIR, "abc"]),
        json!([PAIR, {"sha256": "abc"}, 1]),
        json!([5, {}]),
    ] {
        assert_eq!(
            event(
                "2",
                json!({"event_id": "$e:a.example", "prev_events": [bad]})
            )
            .unwrap_err(),
            PduError::WrongType("prev_events"),
            "{bad}"
        );
    }
    // And later formats refuse the pairs.
    for version in ["3", "4", "11"] {
        assert_eq!(
            event(version, json!({"auth_events": [pair]})).unwrap_err(),
            PduError::WrongType("auth_events"),
            "v{version}"
        );
    }
}

#[test]
fn room_3_ids_use_standard_base64_and_room_4_url_safe() {
    use base64::Engine as _;
    // Search a few bodies for a hash whose base64 has '+' or '/', so the alphabets differ.
    for n in 0..64 {
        let fields = json!({"content": {"body": n}});
        let v3 = event("3", fields.clone()).unwrap();
        let v4 = event("4", fields).unwrap();
        let hash = reference_hash(v3.json(), v("3")).unwrap();
        let std = base64::engine::general_purpose::STANDARD_NO_PAD.encode(hash);
        assert_eq!(v3.event_id(), format!("${std}"));
        let url = std.replace('+', "-").replace('/', "_");
        assert_eq!(v4.event_id(), format!("${url}"));
        if std != url {
            return;
        }
    }
    panic!("no hash with '+' or '/' in 64 tries");
}

/// Building in rooms 1 and 2 needs the event id chosen by the caller.
#[test]
fn building_in_rooms_1_and_2_keeps_the_given_event_id() {
    let key = keypair(1);
    let pdu = build(
        v("1"),
        &key,
        json!({"type": "m.room.message", "room_id": "!r:a.example", "sender": "@u:a.example",
               "event_id": "$mine:a.example"}),
    );
    assert_eq!(pdu.event_id(), "$mine:a.example");
    assert_eq!(pdu.json()["event_id"].as_str(), Some("$mine:a.example"));
    let reference = serde_json::to_value(pdu.reference(v("1")).unwrap()).unwrap();
    assert_eq!(reference[0], "$mine:a.example");
    assert_eq!(reference[1]["sha256"].as_str().unwrap().len(), 43);
    // Room 4 drops a given event_id: the id is the hash.
    let pdu = build(
        v("4"),
        &key,
        json!({"type": "m.room.message", "room_id": "!r:a.example", "sender": "@u:a.example",
               "event_id": "$mine:a.example"}),
    );
    assert!(!pdu.json().contains_key("event_id"));
    assert_eq!(
        serde_json::to_value(pdu.reference(v("4")).unwrap()).unwrap(),
        json!(pdu.event_id())
    );
}

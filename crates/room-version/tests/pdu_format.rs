//! PDU format checks: every malformed input is an error, never a panic; plus proptests on the
//! PDU parser and the account-key grammar.

mod common;

use common::{build, key_user, keypair, v};
use myelin_room_version::account_key::{AccountKey, KeyFormUserId};
use myelin_room_version::pdu::{MAX_PDU_BYTES, Pdu, PduError};
use proptest::prelude::*;
use serde_json::{Value, json};

const ROOM: &str = "!AAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAA";

fn valid(version: &str) -> Value {
    let sender = if version == "org.matrix.12.4243" {
        key_user(1, "a.example")
    } else {
        "@a:a.example".into()
    };
    let room = if version == "10" || version == "11" {
        "!r:a.example"
    } else {
        ROOM
    };
    let pdu = build(
        v(version),
        &keypair(1),
        json!({"type": "m.room.message", "room_id": room,
        "sender": sender, "content": {"body": "x"}, "prev_events": ["$p"], "auth_events": ["$a"]}),
    );
    serde_json::from_str(&pdu.canonical_json()).unwrap()
}

fn parse(value: &Value, version: &str) -> Result<Pdu, PduError> {
    Pdu::from_federation(value.to_string().as_bytes(), v(version))
}

#[test]
fn valid_events_parse_in_every_version() {
    for version in ["10", "11", "12", "org.matrix.12.4243"] {
        let pdu = parse(&valid(version), version).unwrap();
        assert_eq!(pdu.event_type(), "m.room.message");
        assert_eq!(pdu.prev_events().collect::<Vec<_>>(), ["$p"]);
        assert!(pdu.event_id().starts_with('$') && pdu.event_id().len() == 44);
    }
}

#[test]
fn size_limits() {
    let version = "12";
    // Just over 65536 bytes in total.
    let mut big = valid(version);
    let overhead = big.to_string().len();
    big["content"]["body"] = json!("x".repeat(MAX_PDU_BYTES - overhead + 2));
    assert!(matches!(
        parse(&big, version),
        Err(PduError::TooLarge { .. })
    ));
    // Exactly at the limit is fine.
    let mut edge = valid(version);
    edge["content"]["body"] = json!("x".repeat(MAX_PDU_BYTES - overhead + 1));
    assert_eq!(serde_json::to_string(&edge).unwrap().len(), MAX_PDU_BYTES);
    parse(&edge, version).unwrap();
    // 256-byte type, sender, state key.
    let long = "x".repeat(256);
    for (field, value) in [
        ("type", long.clone()),
        ("sender", format!("@{}:a.example", &long[..250])),
        ("state_key", long.clone()),
    ] {
        let mut e = valid(version);
        e[field] = json!(value);
        assert!(
            matches!(parse(&e, version), Err(PduError::FieldTooLong { .. })),
            "{field}"
        );
    }
    // 255 bytes is allowed for state_key.
    let mut ok = valid(version);
    ok["state_key"] = json!("y".repeat(255));
    parse(&ok, version).unwrap();
    // Another server's state key of 255 code points or fewer is taken even past 255 bytes
    // (Synapse counts code points; rooms hold such events).
    let mut wide = valid(version);
    wide["state_key"] = json!("\u{1F4A5}".repeat(70));
    parse(&wide, version).unwrap();
    let mut too_wide = valid(version);
    too_wide["state_key"] = json!("\u{1F4A5}".repeat(256));
    assert!(matches!(
        parse(&too_wide, version),
        Err(PduError::FieldTooLong { .. })
    ));
    // 21 prev_events, 11 auth_events.
    let mut e = valid(version);
    e["prev_events"] = json!((0..21).map(|i| format!("$p{i}")).collect::<Vec<_>>());
    assert!(matches!(
        parse(&e, version),
        Err(PduError::TooManyEvents {
            field: "prev_events",
            ..
        })
    ));
    let mut e = valid(version);
    e["auth_events"] = json!((0..11).map(|i| format!("$a{i}")).collect::<Vec<_>>());
    assert!(matches!(
        parse(&e, version),
        Err(PduError::TooManyEvents {
            field: "auth_events",
            ..
        })
    ));
}

#[test]
fn integer_bounds() {
    let version = "12";
    for (field, value, ok) in [
        ("depth", json!(9_007_199_254_740_991u64), true),
        ("depth", json!(9_007_199_254_740_992u64), false),
        ("depth", json!(-1), false),
        ("origin_server_ts", json!(-5), false),
        ("origin_server_ts", json!(1.5), false),
    ] {
        let mut e = valid(version);
        e[field] = value.clone();
        assert_eq!(parse(&e, version).is_ok(), ok, "{field} = {value}");
    }
    let mut e = valid(version);
    e["content"]["n"] = json!(-9_007_199_254_740_992i64);
    assert!(matches!(parse(&e, version), Err(PduError::Json(_))));
}

#[test]
fn wrong_types_and_missing_fields_are_errors() {
    let version = "12";
    let cases: Vec<(&str, Value)> = vec![
        ("type", json!(5)),
        ("sender", json!(null)),
        ("room_id", json!([])),
        ("content", json!("x")),
        ("prev_events", json!("$p")),
        ("auth_events", json!([1])),
        ("depth", json!("1")),
        ("hashes", json!([])),
        ("signatures", json!("x")),
        ("state_key", json!(false)),
        ("unsigned", json!(3)),
        ("sender", json!("not-a-user")),
        ("room_id", json!("!short")),
        ("prev_events", json!(["no-sigil"])),
    ];
    for (field, value) in cases {
        let mut e = valid(version);
        e[field] = value.clone();
        assert!(parse(&e, version).is_err(), "{field} = {value}");
    }
    for field in [
        "type",
        "sender",
        "room_id",
        "content",
        "prev_events",
        "auth_events",
        "depth",
        "hashes",
        "signatures",
        "origin_server_ts",
    ] {
        let mut e = valid(version);
        e.as_object_mut().unwrap().remove(field);
        assert!(
            matches!(parse(&e, version), Err(PduError::MissingField(_))),
            "missing {field}"
        );
    }
    let mut e = valid(version);
    e["hashes"] = json!({});
    assert!(parse(&e, version).is_err());
    // Not JSON / not an object.
    assert!(matches!(
        Pdu::from_federation(b"nope", v(version)),
        Err(PduError::Json(_))
    ));
    assert!(matches!(
        Pdu::from_federation(b"[]", v(version)),
        Err(PduError::Json(_))
    ));
    assert_eq!(PduError::MissingField("x").errcode(), "M_BAD_JSON");
    assert_eq!(PduError::TooLarge { size: 1 }.errcode(), "M_TOO_LARGE");
}

#[test]
fn v12_create_must_not_have_room_id_but_v11_must() {
    let sender = "@a:a.example";
    let v12 = build(
        v("12"),
        &keypair(1),
        json!({"type": "m.room.create", "state_key": "", "sender": sender,
        "content": {"room_version": "12"}}),
    );
    let mut value: Value = serde_json::from_str(&v12.canonical_json()).unwrap();
    assert!(v12.room_id().is_none());
    value["room_id"] = json!(ROOM);
    assert_eq!(parse(&value, "12").unwrap_err(), PduError::CreateHasRoomId);
    value.as_object_mut().unwrap().remove("room_id");
    assert_eq!(
        parse(&value, "11").unwrap_err(),
        PduError::MissingField("room_id")
    );
}

proptest! {
    #![proptest_config(ProptestConfig { cases: 256, ..ProptestConfig::default() })]

    /// Arbitrary bytes never panic the parser.
    #[test]
    fn parser_never_panics_on_bytes(bytes in proptest::collection::vec(any::<u8>(), 0..512)) {
        for version in ["10", "12", "org.matrix.12.4243"] {
            let _ = Pdu::from_federation(&bytes, v(version));
        }
    }

    /// Arbitrary JSON values in any field never panic; valid events stay valid only when the
    /// replacement has the right type.
    #[test]
    fn parser_never_panics_on_field_values(
        field in prop::sample::select(vec!["type", "sender", "room_id", "content", "prev_events",
            "auth_events", "depth", "hashes", "signatures", "state_key", "origin_server_ts", "unsigned", "redacts"]),
        value in arb_json(),
    ) {
        for version in ["11", "12", "org.matrix.12.4243"] {
            let mut e = valid(version);
            e[field] = value.clone();
            if let Ok(pdu) = parse(&e, version) {
                // Whatever parsed has a well-formed id and round-trips through its own JSON.
                prop_assert!(pdu.event_id().starts_with('$'));
                let again = Pdu::from_federation(pdu.canonical_json().as_bytes(), v(version)).unwrap();
                prop_assert_eq!(again.event_id(), pdu.event_id());
            }
        }
    }

    /// The key grammar accepts exactly the canonical encodings of valid points.
    #[test]
    fn key_grammar_matches_canonical_encoding(s in "[A-Za-z0-9_+/=-]{40,46}") {
        use base64::Engine as _;
        let decoded = base64::engine::general_purpose::URL_SAFE_NO_PAD.decode(&s).ok();
        let canonical = decoded.as_ref().is_some_and(|b| b.len() == 32
            && base64::engine::general_purpose::URL_SAFE_NO_PAD.encode(b) == s);
        match AccountKey::parse(&s) {
            Ok(key) => {
                prop_assert!(canonical);
                prop_assert_eq!(key.as_str(), s.as_str());
                let uid = key.user_id("x.example");
                prop_assert_eq!(KeyFormUserId::parse(&uid).unwrap().key, key);
            }
            Err(_) => {
                // Rejected strings are either non-canonical or not a point.
                if canonical {
                    let bytes: [u8; 32] = decoded.unwrap().try_into().unwrap();
                    prop_assert!(AccountKey::from_bytes(bytes).is_err());
                }
            }
        }
    }

    /// Every real public key round-trips through the grammar.
    #[test]
    fn every_real_key_round_trips(seed in any::<[u8; 32]>()) {
        let key = myelin_room_version::signing::KeyPair::from_seed(&seed).account_key();
        prop_assert_eq!(AccountKey::parse(key.as_str()).unwrap(), key.clone());
        prop_assert_eq!(AccountKey::from_bytes(key.to_bytes()).unwrap(), key);
    }
}

fn arb_json() -> impl Strategy<Value = Value> {
    let leaf = prop_oneof![
        Just(Value::Null),
        any::<bool>().prop_map(Value::Bool),
        any::<i64>().prop_map(|i| json!(i)),
        any::<f64>()
            .prop_filter("finite", |f| f.is_finite())
            .prop_map(|f| json!(f)),
        ".{0,300}".prop_map(Value::String),
        "[$@!][a-zA-Z0-9:._-]{0,60}".prop_map(Value::String),
    ];
    leaf.prop_recursive(3, 32, 6, |inner| {
        prop_oneof![
            prop::collection::vec(inner.clone(), 0..25).prop_map(Value::Array),
            prop::collection::btree_map("[a-z_]{1,8}", inner, 0..6)
                .prop_map(|m| Value::Object(m.into_iter().collect())),
        ]
    })
}

mod no_panics {
    use super::common::{Room, actor, v};
    use super::{arb_json, parse, valid};
    use myelin_room_version::projection::{KeyVerification, project_for_client};
    use proptest::prelude::*;
    use serde_json::json;

    proptest! {
        #![proptest_config(ProptestConfig { cases: 48, ..ProptestConfig::default() })]

        /// Arbitrary content for the auth-relevant event types is allowed or refused, never a
        /// panic, in every version.
        #[test]
        fn auth_never_panics_on_content(
            kind in prop::sample::select(vec!["m.room.power_levels", "m.room.member",
                "m.room.join_rules", "m.room.create", "m.room.third_party_invite", "m.room.redaction"]),
            content in arb_json(),
        ) {
            for id in ["10", "12", "org.matrix.12.4243"] {
                let version = v(id);
                let creator = actor(version, 1, "a.example");
                // Creators have implicit power only from v12 on.
                let pl = if id == "10" { json!({"users": {creator.id.clone(): 100}}) } else { json!({}) };
                let mut room = Room::new(version, &creator, json!({}), pl, "public");
                let content = if content.is_object() { content.clone() } else { json!({"v": content.clone()}) };
                let state_key = if kind == "m.room.member" { creator.id.clone() } else { String::new() };
                let _ = room.try_send_any(&creator, json!({"type": kind, "state_key": state_key, "content": content}));
            }
        }

        /// The projection never panics on arbitrary JSON, in any version.
        #[test]
        fn projection_never_panics(event in arb_json(), field in "[a-z_]{1,12}", value in arb_json()) {
            for id in ["12", "org.matrix.12.4243"] {
                let mut e = valid(id);
                e[field.as_str()] = value.clone();
                let _ = project_for_client(v(id), e.clone(), "@me:x", |_| KeyVerification::Verified { account_name: "n".into() });
                let _ = project_for_client(v(id), event.clone(), "@me:x", |_| KeyVerification::Unverified);
                let _ = parse(&e, id);
            }
        }
    }
}

#[test]
fn client_event_format() {
    let create = build(
        v("12"),
        &keypair(1),
        json!({"type": "m.room.create", "state_key": "", "sender": "@a:a.example",
               "content": {"room_version": "12"}}),
    );
    let client = create.client_event(serde_json::Map::new());
    assert_eq!(
        client["room_id"],
        json!(format!("!{}", &create.event_id()[1..]))
    );
    assert_eq!(client["event_id"], json!(create.event_id()));
    assert_eq!(client["state_key"], json!(""));
    assert_eq!(client["content"], json!({"room_version": "12"}));
    for federation_only in [
        "auth_events",
        "prev_events",
        "depth",
        "hashes",
        "signatures",
    ] {
        assert!(client.get(federation_only).is_none(), "{federation_only}");
    }
    let msg = parse(&valid("12"), "12").unwrap();
    let mut unsigned = serde_json::Map::new();
    unsigned.insert("age".into(), json!(5));
    let client = msg.client_event(unsigned);
    assert_eq!(client["room_id"], json!(ROOM));
    assert_eq!(client["unsigned"], json!({"age": 5}));
    assert!(client.get("state_key").is_none());
}

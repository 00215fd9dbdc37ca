//! Handling redactions: power, same domain, and the account-key rule (MSC4243.md §4 Q9).

mod common;

use common::{Room, actor, v};
use myelin_room_version::projection::KeyVerification;
use myelin_room_version::redaction::{
    PowerLevel, redaction_applies, state_event_level, user_power_level,
};
use serde_json::json;

#[test]
fn redactions_apply_by_power_or_same_domain() {
    for (id, key_form) in [("12", false), ("org.matrix.12.4243", true)] {
        let version = v(id);
        let creator = actor(version, 1, "a.example");
        let alice = actor(version, 2, "b.example");
        let alice_other_device = actor(version, 2, "b.example");
        let bob_same_domain = actor(version, 3, "b.example");
        let carol = actor(version, 4, "c.example");
        let mut room = Room::new(
            version,
            &creator,
            json!({}),
            json!({"redact": 50}),
            "public",
        );
        for who in [&alice, &bob_same_domain, &carol] {
            room.member(who, who, "join").unwrap();
        }
        let msg = room.send(
            &alice,
            json!({"type": "m.room.message", "content": {"body": "x"}}),
        );
        let create = room.events[&room.state[&("m.room.create".to_owned(), String::new())]].clone();
        let pl =
            room.events[&room.state[&("m.room.power_levels".to_owned(), String::new())]].clone();
        let target = room.events[&msg].clone();
        assert_eq!(
            user_power_level(version, &creator.id, &create, Some(&pl)),
            PowerLevel::Infinite
        );
        assert_eq!(
            user_power_level(version, &carol.id, &create, Some(&pl)),
            PowerLevel::Int(0)
        );
        let redact = |room: &mut Room, who: &common::Actor| {
            let id = room.send(
                who,
                json!({"type": "m.room.redaction", "content": {"redacts": msg}}),
            );
            room.events[&id].clone()
        };
        let all_verified = |_: &myelin_room_version::KeyFormUserId| KeyVerification::Verified {
            account_name: "n".into(),
        };
        let none_verified = |_: &myelin_room_version::KeyFormUserId| KeyVerification::Unverified;
        // The creator has power.
        let r = redact(&mut room, &creator);
        assert!(redaction_applies(
            version,
            &r,
            &target,
            &create,
            Some(&pl),
            none_verified
        ));
        // Another domain without power: no.
        let r = redact(&mut room, &carol);
        assert!(!redaction_applies(
            version,
            &r,
            &target,
            &create,
            Some(&pl),
            all_verified
        ));
        // The sender themselves: yes (same domain, and in 4243 the same key).
        let r = redact(&mut room, &alice_other_device);
        assert!(redaction_applies(
            version,
            &r,
            &target,
            &create,
            Some(&pl),
            none_verified
        ));
        // Someone else on the same domain: yes in 12; in 4243 only if both keys are vouched for.
        let r = redact(&mut room, &bob_same_domain);
        assert!(redaction_applies(
            version,
            &r,
            &target,
            &create,
            Some(&pl),
            all_verified
        ));
        assert_eq!(
            redaction_applies(version, &r, &target, &create, Some(&pl), none_verified),
            !key_form
        );
        // A redaction naming another event never applies.
        assert!(!redaction_applies(
            version,
            &r,
            &pl,
            &create,
            Some(&pl),
            all_verified
        ));
    }
}

#[test]
fn state_event_levels_follow_events_then_state_default() {
    let version = v("11");
    let creator = actor(version, 1, "a.example");
    let pl_of = |content| {
        let room = Room::new(version, &creator, json!({}), content, "public");
        room.events[&room.state[&("m.room.power_levels".to_owned(), String::new())]].clone()
    };
    let pl = pl_of(
        json!({"users": {creator.id.clone(): 100}, "state_default": 40,
                          "events": {"m.room.tombstone": 90}}),
    );
    assert_eq!(
        state_event_level(version, Some(&pl), "m.room.tombstone"),
        90
    );
    assert_eq!(state_event_level(version, Some(&pl), "m.room.name"), 40);
    let pl = pl_of(json!({"users": {creator.id.clone(): 100}}));
    assert_eq!(
        state_event_level(version, Some(&pl), "m.room.name"),
        50,
        "state_default defaults to 50"
    );
    assert_eq!(
        state_event_level(version, None, "m.room.name"),
        0,
        "no power levels at all"
    );
}

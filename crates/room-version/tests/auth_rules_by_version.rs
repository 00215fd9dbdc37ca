//! The authorisation rules that differ between room versions 1 to 11, each named after the
//! rule, each run in every version with both outcomes: the versions before the change and the
//! versions after it. The version table says which outcome each version must give.

mod common;

use common::{Actor, Room, actor, v};
use myelin_room_version::redaction::{PowerLevel, redaction_applies, user_power_level};
use myelin_room_version::version::RoomVersion;
use serde_json::{Value, json};

const STABLE: [&str; 11] = ["1", "2", "3", "4", "5", "6", "7", "8", "9", "10", "11"];

struct Cast {
    creator: Actor,
    moderator: Actor,
    alice: Actor,
    bob: Actor,
}

fn cast(version: &RoomVersion) -> Cast {
    Cast {
        creator: actor(version, 1, "a.example"),
        moderator: actor(version, 2, "a.example"),
        alice: actor(version, 3, "b.example"),
        bob: actor(version, 4, "c.example"),
    }
}

fn power_levels(c: &Cast) -> Value {
    json!({"users": {&c.creator.id: 100, &c.moderator.id: 50}, "users_default": 0,
           "ban": 50, "kick": 50, "invite": 50, "redact": 50, "state_default": 50,
           "events_default": 0, "events": {}, "notifications": {"room": 50}})
}

/// A room of the version with the creator, the moderator and alice joined.
fn room(version: &'static RoomVersion, c: &Cast) -> Room {
    let mut room = Room::new(version, &c.creator, json!({}), power_levels(c), "public");
    room.member(&c.moderator, &c.moderator, "join").unwrap();
    room.member(&c.alice, &c.alice, "join").unwrap();
    room
}

fn each(test: impl Fn(&'static RoomVersion, u32)) {
    for id in STABLE {
        test(v(id), id.parse().unwrap());
    }
}

fn message(room: &mut Room, who: &Actor) -> String {
    room.send(
        who,
        json!({"type": "m.room.message", "content": {"msgtype": "m.text", "body": "hi"}}),
    )
}

fn redaction(room: &Room, target: &str) -> Value {
    if room.version.redaction() == myelin_room_version::version::RedactionAlgorithm::V11 {
        json!({"type": "m.room.redaction", "content": {"redacts": target}})
    } else {
        json!({"type": "m.room.redaction", "redacts": target, "content": {}})
    }
}

/// Rooms 1–2, auth rule 11: a redaction without the redact level is allowed only when its
/// event id and the redacted event's share a domain. From room 3 the auth rules let it through
/// and "Handling redactions" decides at serving time (by the senders' domains).
#[test]
fn rule_11_redaction_by_redact_level_or_event_id_domain_only_in_v1_v2() {
    each(|version, n| {
        let c = cast(version);
        let mut r = room(version, &c);
        let creators_message = message(&mut r, &c.creator);
        let alices_message = message(&mut r, &c.alice);
        // Alice (power 0, b.example) redacts the creator's message (a.example).
        let other_domain = r.try_send(&c.alice, redaction(&r, &creators_message));
        assert_eq!(other_domain.is_ok(), n >= 3, "v{n}: {other_domain:?}");
        // Her own message: same domain, allowed everywhere.
        let own = r.try_send(&c.alice, redaction(&r, &alices_message));
        assert!(own.is_ok(), "v{n}: {own:?}");
        // The moderator (redact level) may redact anyone's.
        let by_power = r.try_send(&c.moderator, redaction(&r, &alices_message));
        assert!(by_power.is_ok(), "v{n}: {by_power:?}");
    });
}

/// Serving a redaction (`redaction_applies`) uses the same test as the version's rule: event id
/// domains in rooms 1–2 (the redaction passed auth rule 11 that way), sender domains from 3.
#[test]
fn redaction_applies_by_event_id_domain_in_v1_v2_and_sender_domain_after() {
    each(|version, n| {
        let c = cast(version);
        let mut r = room(version, &c);
        let alices_message = message(&mut r, &c.alice);
        let redaction_id = r
            .try_send(&c.alice, redaction(&r, &alices_message))
            .unwrap();
        let create = &r.events[&r.state[&("m.room.create".to_owned(), String::new())]];
        let power = &r.events[&r.state[&("m.room.power_levels".to_owned(), String::new())]];
        let red = &r.events[&redaction_id];
        let target = &r.events[&alices_message];
        let applies = |red, target| {
            redaction_applies(version, red, target, create, Some(power), |_| {
                unreachable!("server-key rooms look up no account keys")
            })
        };
        assert!(applies(red, target), "v{n}: own event");
        // Re-issued in rooms 1–2 with an event id on another server (as a resident server
        // would mint it): the event-id domains now differ, the senders' domains do not.
        if version.event_ids_in_pdu() {
            let mut fields = redaction(&r, &alices_message);
            fields["event_id"] = json!(common::fresh_event_id("elsewhere.example"));
            let elsewhere = r.make(&c.alice, fields);
            assert!(
                !applies(&elsewhere, target),
                "v{n}: event id domains differ"
            );
        }
    });
}

/// Rooms 1–5, auth rule 4: `m.room.aliases` is allowed iff its state key is the sender's domain,
/// whatever the sender's membership and power. From room 6 it is an ordinary state event.
#[test]
fn rule_4_aliases_state_key_is_sender_domain_only_before_v6() {
    each(|version, n| {
        let c = cast(version);
        let mut r = room(version, &c);
        let aliases = |domain: &str| {
            json!({"type": "m.room.aliases", "state_key": domain,
                   "content": {"aliases": [format!("#x:{domain}")]}})
        };
        // Bob is not in the room.
        let outsider = r.try_send(&c.bob, aliases("c.example"));
        assert_eq!(outsider.is_ok(), n <= 5, "v{n}: {outsider:?}");
        let wrong_domain = r.try_send(&c.bob, aliases("a.example"));
        assert!(wrong_domain.is_err(), "v{n}");
        // Alice is joined but below state_default: allowed only by the special case.
        let member = r.try_send(&c.alice, aliases("b.example"));
        assert_eq!(member.is_ok(), n <= 5, "v{n}: {member:?}");
        // The moderator has state_default: from v6 the ordinary rules allow it.
        let moderator = r.try_send(&c.moderator, aliases("a.example"));
        assert!(moderator.is_ok(), "v{n}: {moderator:?}");
    });
}

/// Room 6 power-level rule: entries of `notifications` are checked like other levels (no
/// raising above one's own level). Before, anyone allowed to send power levels could set them.
#[test]
fn rule_10_notifications_levels_checked_from_v6() {
    each(|version, n| {
        let c = cast(version);
        let mut r = room(version, &c);
        let mut content = power_levels(&c);
        content["notifications"]["room"] = json!(75);
        let raised = r.try_send(
            &c.moderator,
            json!({"type": "m.room.power_levels", "state_key": "", "content": content}),
        );
        assert_eq!(raised.is_ok(), n <= 5, "v{n}: {raised:?}");
        // Within the moderator's own level it is allowed everywhere.
        let mut content = power_levels(&c);
        content["notifications"]["room"] = json!(40);
        let lowered = r.try_send(
            &c.moderator,
            json!({"type": "m.room.power_levels", "state_key": "", "content": content}),
        );
        assert!(lowered.is_ok(), "v{n}: {lowered:?}");
    });
}

/// Room 7: the `knock` join rule and membership.
#[test]
fn rule_knock_membership_only_from_v7() {
    each(|version, n| {
        let c = cast(version);
        let mut r = room(version, &c);
        let rule = r.try_send(
            &c.creator,
            json!({"type": "m.room.join_rules", "state_key": "", "content": {"join_rule": "knock"}}),
        );
        // A join rule event with an unknown rule is still a valid state event before v7 (the
        // rule just never admits anyone); the knock itself is what the version decides.
        assert!(rule.is_ok(), "v{n}: {rule:?}");
        let knock = r.member(&c.bob, &c.bob, "knock");
        assert_eq!(knock.is_ok(), n >= 7, "v{n}: {knock:?}");
    });
}

/// Room 8: the `restricted` join rule admits a join authorised by a resident with invite power.
#[test]
fn rule_restricted_join_only_from_v8() {
    each(|version, n| {
        let c = cast(version);
        let mut r = room(version, &c);
        r.send(
            &c.creator,
            json!({"type": "m.room.join_rules", "state_key": "", "content": {
                "join_rule": "restricted",
                "allow": [{"type": "m.room_membership", "room_id": "!space:a.example"}]}}),
        );
        let join = r.try_send(
            &c.bob,
            json!({"type": "m.room.member", "state_key": c.bob.id, "content": {
                "membership": "join", "join_authorised_via_users_server": c.moderator.id}}),
        );
        assert_eq!(join.is_ok(), n >= 8, "v{n}: {join:?}");
    });
}

/// Room 10: `knock_restricted` join rule.
#[test]
fn rule_knock_restricted_only_from_v10() {
    each(|version, n| {
        let c = cast(version);
        let mut r = room(version, &c);
        r.send(
            &c.creator,
            json!({"type": "m.room.join_rules", "state_key": "", "content": {
                "join_rule": "knock_restricted",
                "allow": [{"type": "m.room_membership", "room_id": "!space:a.example"}]}}),
        );
        let knock = r.member(&c.bob, &c.bob, "knock");
        assert_eq!(knock.is_ok(), n >= 10, "v{n}: {knock:?}");
    });
}

/// Room 10: power level values must be integers; before, a string holding an integer is read
/// as that integer, both by the auth rules and by `user_power_level`.
#[test]
fn rule_power_levels_are_integers_from_v10() {
    each(|version, n| {
        let c = cast(version);
        let mut r = room(version, &c);
        let mut content = power_levels(&c);
        content["users"][&c.alice.id] = json!("50");
        let sent = r.try_send(
            &c.creator,
            json!({"type": "m.room.power_levels", "state_key": "", "content": content}),
        );
        assert_eq!(sent.is_ok(), n <= 9, "v{n}: {sent:?}");
        if sent.is_err() {
            return;
        }
        // Alice now has 50: she may kick bob once he has joined.
        r.member(&c.bob, &c.bob, "join").unwrap();
        let kick = r.member(&c.alice, &c.bob, "leave");
        assert!(kick.is_ok(), "v{n}: {kick:?}");
        let create = &r.events[&r.state[&("m.room.create".to_owned(), String::new())]];
        let power = &r.events[&r.state[&("m.room.power_levels".to_owned(), String::new())]];
        assert_eq!(
            user_power_level(version, &c.alice.id, create, Some(power)),
            PowerLevel::Int(50),
            "v{n}"
        );
    });
}

/// A string power level that is not an integer is refused in every version.
#[test]
fn non_integer_string_power_levels_refused_everywhere() {
    each(|version, n| {
        let c = cast(version);
        let mut r = room(version, &c);
        let mut content = power_levels(&c);
        content["users"][&c.alice.id] = json!("fifty");
        let sent = r.try_send(
            &c.creator,
            json!({"type": "m.room.power_levels", "state_key": "", "content": content}),
        );
        assert!(sent.is_err(), "v{n}");
    });
}

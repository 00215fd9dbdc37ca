//! Authorisation rules of room v12 (and v10/v11 where they differ), run for v12 and for the
//! account-key version, plus the account-key differences (MSC4243.md §6).

mod common;

use common::{Actor, Room, actor, build, keypair, v};
use myelin_room_version::auth::{auth_types_for_event, check_auth_events};
use myelin_room_version::canonical::value_to_object;
use myelin_room_version::signing::{KeyPair, sign_json};
use myelin_room_version::version::RoomVersion;
use serde_json::{Value, json};

const V12_FAMILY: [&str; 2] = ["12", "org.matrix.12.4243"];

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

fn power_levels(c: &Cast, extra_users: &[(&Actor, i64)]) -> Value {
    let mut users = serde_json::Map::new();
    users.insert(c.moderator.id.clone(), json!(50));
    for (a, l) in extra_users {
        users.insert(a.id.clone(), json!(l));
    }
    json!({"users": users, "users_default": 0, "ban": 50, "kick": 50, "invite": 50,
           "redact": 50, "state_default": 50, "events_default": 0, "events": {"m.room.tombstone": 150}})
}

fn room(version: &'static RoomVersion, c: &Cast, join_rule: &str) -> Room {
    // Before v12 creators have no implicit power, so they are listed at 100.
    let pl = if version.event_format() == myelin_room_version::version::EventFormat::V4 {
        power_levels(c, &[(&c.creator, 100)])
    } else {
        power_levels(c, &[])
    };
    let mut room = Room::new(version, &c.creator, json!({}), pl, join_rule);
    // The moderator is in every room.
    if join_rule != "public" {
        room.member(&c.creator, &c.moderator, "invite").unwrap();
    }
    room.member(&c.moderator, &c.moderator, "join").unwrap();
    room
}

fn each_v12(test: impl Fn(&'static RoomVersion)) {
    for id in V12_FAMILY {
        test(v(id));
    }
}

#[test]
fn create_event_rules() {
    each_v12(|version| {
        let c = cast(version);
        let key = keypair(c.creator.seed);
        // A create event with prev_events is rejected.
        let with_prev = build(
            version,
            &key,
            json!({"type": "m.room.create", "state_key": "", "sender": c.creator.id,
                   "content": {"room_version": version.id()}, "prev_events": ["$x"]}),
        );
        assert!(check_auth_events(version, &with_prev, |_| None).is_err());
        // An unknown room_version in content is rejected.
        let unknown = build(
            version,
            &key,
            json!({"type": "m.room.create", "state_key": "", "sender": c.creator.id,
                   "content": {"room_version": "9999"}}),
        );
        assert!(check_auth_events(version, &unknown, |_| None).is_err());
        // additional_creators must be valid user ids.
        let bad = build(
            version,
            &key,
            json!({"type": "m.room.create", "state_key": "", "sender": c.creator.id,
                   "content": {"room_version": version.id(), "additional_creators": ["not a user"]}}),
        );
        assert!(check_auth_events(version, &bad, |_| None).is_err());
        let good = build(
            version,
            &key,
            json!({"type": "m.room.create", "state_key": "", "sender": c.creator.id,
                   "content": {"room_version": version.id(), "additional_creators": [c.alice.id]}}),
        );
        check_auth_events(version, &good, |_| None).unwrap();
    });
}

#[test]
fn join_rules_public_invite_and_bans() {
    each_v12(|version| {
        let c = cast(version);
        let mut public = room(version, &c, "public");
        public.member(&c.alice, &c.alice, "join").unwrap();
        // Joining for someone else is rejected.
        assert!(public.member(&c.alice, &c.bob, "join").is_err());

        let mut private = room(version, &c, "invite");
        assert!(
            private.member(&c.alice, &c.alice, "join").is_err(),
            "invite-only room"
        );
        private.member(&c.moderator, &c.alice, "invite").unwrap();
        private.member(&c.alice, &c.alice, "join").unwrap();
        // Banned users cannot join.
        private.member(&c.moderator, &c.bob, "ban").unwrap();
        assert!(private.member(&c.bob, &c.bob, "join").is_err());
        assert_eq!(private.membership(&c.bob).as_deref(), Some("ban"));
    });
}

#[test]
fn invite_rules() {
    each_v12(|version| {
        let c = cast(version);
        let mut r = room(version, &c, "invite");
        // Sender must be joined.
        assert!(r.member(&c.bob, &c.alice, "invite").is_err());
        r.member(&c.moderator, &c.alice, "invite").unwrap();
        r.member(&c.alice, &c.alice, "join").unwrap();
        // Alice (power 0) is below the invite level (50).
        assert!(r.member(&c.alice, &c.bob, "invite").is_err());
        // Cannot invite someone already joined.
        assert!(r.member(&c.moderator, &c.alice, "invite").is_err());
        // Cannot invite a banned user.
        r.member(&c.moderator, &c.bob, "ban").unwrap();
        assert!(r.member(&c.moderator, &c.bob, "invite").is_err());
    });
}

#[test]
fn leave_kick_and_unban_rules() {
    each_v12(|version| {
        let c = cast(version);
        let mut r = room(version, &c, "public");
        r.member(&c.alice, &c.alice, "join").unwrap();
        r.member(&c.bob, &c.bob, "join").unwrap();
        // Alice cannot kick Bob (kick level 50).
        assert!(r.member(&c.alice, &c.bob, "leave").is_err());
        // Bob can leave himself; the moderator can kick Alice.
        r.member(&c.bob, &c.bob, "leave").unwrap();
        r.member(&c.moderator, &c.alice, "leave").unwrap();
        assert_eq!(r.membership(&c.alice).as_deref(), Some("leave"));
        // Unban needs the ban level: the moderator bans Bob, then unbans.
        r.member(&c.moderator, &c.bob, "ban").unwrap();
        assert!(
            r.member(&c.bob, &c.bob, "leave").is_err(),
            "cannot lift own ban"
        );
        r.member(&c.moderator, &c.bob, "leave").unwrap();
        assert_eq!(r.membership(&c.bob).as_deref(), Some("leave"));
    });
}

#[test]
fn ban_rules_and_creators_infinite_power() {
    each_v12(|version| {
        let c = cast(version);
        let mut r = room(version, &c, "public");
        r.member(&c.alice, &c.alice, "join").unwrap();
        // Alice (0) cannot ban.
        assert!(r.member(&c.alice, &c.bob, "ban").is_err());
        // The moderator cannot ban the creator: creators have infinite power.
        assert!(r.member(&c.moderator, &c.creator, "ban").is_err());
        // The creator can ban the moderator, whatever their level.
        r.member(&c.creator, &c.moderator, "ban").unwrap();
        // Not joined senders cannot ban.
        assert!(r.member(&c.bob, &c.alice, "ban").is_err());
    });
}

#[test]
fn knock_rules() {
    each_v12(|version| {
        let c = cast(version);
        let mut knock = room(version, &c, "knock");
        knock.member(&c.alice, &c.alice, "knock").unwrap();
        // Knocking on someone else's behalf is rejected.
        assert!(knock.member(&c.alice, &c.bob, "knock").is_err());
        // A knock is accepted by inviting.
        knock.member(&c.moderator, &c.alice, "invite").unwrap();
        knock.member(&c.alice, &c.alice, "join").unwrap();
        // Already joined: knocking again is rejected.
        assert!(knock.member(&c.alice, &c.alice, "knock").is_err());
        // Knocking on a public room is rejected.
        let mut public = room(version, &c, "public");
        assert!(public.member(&c.bob, &c.bob, "knock").is_err());
        // knock_restricted allows knocking.
        let mut kr = room(version, &c, "knock_restricted");
        kr.member(&c.bob, &c.bob, "knock").unwrap();
    });
}

fn restricted_join(r: &Room, who: &Actor, authoriser: &Actor) -> serde_json::Value {
    let _ = r;
    json!({"type": "m.room.member", "state_key": who.id,
           "content": {"membership": "join", "join_authorised_via_users_server": authoriser.id}})
}

#[test]
fn restricted_and_knock_restricted_joins() {
    each_v12(|version| {
        for rule in ["restricted", "knock_restricted"] {
            let c = cast(version);
            let mut r = room(version, &c, rule);
            // No authoriser, not invited: rejected.
            assert!(r.member(&c.alice, &c.alice, "join").is_err());
            // Authorised by a joined user with invite power (§6 case 7; signatures are checked
            // by `verify`, see tests/verify.rs).
            r.try_send(&c.alice, restricted_join(&r, &c.alice, &c.moderator))
                .unwrap();
            // Authoriser not joined → rejected (§6 case 9).
            assert!(
                r.try_send(&c.bob, restricted_join(&r, &c.bob, &c.bob))
                    .is_err()
            );
            // Authoriser joined but without invite power → rejected.
            assert!(
                r.try_send(&c.bob, restricted_join(&r, &c.bob, &c.alice))
                    .is_err()
            );
            // Invited users join without an authoriser.
            r.member(&c.moderator, &c.bob, "invite").unwrap();
            r.member(&c.bob, &c.bob, "join").unwrap();
        }
    });
}

#[test]
fn power_level_changes() {
    each_v12(|version| {
        let c = cast(version);
        let mut r = room(version, &c, "public");
        r.member(&c.alice, &c.alice, "join").unwrap();
        let pl = |extra: &[(&Actor, i64)]| json!({"type": "m.room.power_levels", "state_key": "", "content": power_levels(&c, extra)});
        // Alice (0 < state_default 50) cannot change power levels at all.
        assert!(r.try_send(&c.alice, pl(&[(&c.alice, 10)])).is_err());
        // The moderator (50) cannot grant more than 50...
        assert!(r.try_send(&c.moderator, pl(&[(&c.alice, 60)])).is_err());
        // ...but can grant up to their own level.
        r.send(&c.moderator, pl(&[(&c.alice, 50)]));
        // Nobody may change the level of a peer at their own level.
        let mut demote = power_levels(&c, &[(&c.alice, 50)]);
        demote["users"][&c.alice.id] = json!(0);
        assert!(
            r.try_send(
                &c.moderator,
                json!({"type": "m.room.power_levels", "state_key": "", "content": demote.clone()})
            )
            .is_err()
        );
        // The creator has infinite power and can demote anyone.
        r.send(
            &c.creator,
            json!({"type": "m.room.power_levels", "state_key": "", "content": demote}),
        );
        // Creators must not appear in `users` (v12 rule 10.4).
        assert!(r.try_send(&c.creator, pl(&[(&c.creator, 100)])).is_err());
        // Non-integer values are rejected.
        let mut bad = power_levels(&c, &[]);
        bad["ban"] = json!("50");
        assert!(
            r.try_send(
                &c.creator,
                json!({"type": "m.room.power_levels", "state_key": "", "content": bad})
            )
            .is_err()
        );
    });
}

#[test]
fn sender_must_be_joined_and_have_power() {
    each_v12(|version| {
        let c = cast(version);
        let mut r = room(version, &c, "public");
        // Not joined: rejected.
        assert!(
            r.try_send(
                &c.alice,
                json!({"type": "m.room.message", "content": {"body": "hi"}})
            )
            .is_err()
        );
        r.member(&c.alice, &c.alice, "join").unwrap();
        r.send(
            &c.alice,
            json!({"type": "m.room.message", "content": {"body": "hi"}}),
        );
        // State needs state_default (50).
        assert!(
            r.try_send(
                &c.alice,
                json!({"type": "m.room.topic", "state_key": "", "content": {"topic": "x"}})
            )
            .is_err()
        );
        r.send(
            &c.moderator,
            json!({"type": "m.room.topic", "state_key": "", "content": {"topic": "x"}}),
        );
        // The tombstone needs 150: the moderator cannot, the creator can.
        assert!(
            r.try_send(
                &c.moderator,
                json!({"type": "m.room.tombstone", "state_key": "", "content": {}})
            )
            .is_err()
        );
        // A state key naming another user is rejected (rule 9), one's own is fine.
        assert!(
            r.try_send(
                &c.creator,
                json!({"type": "org.example.s", "state_key": c.alice.id, "content": {}})
            )
            .is_err()
        );
        r.send(
            &c.creator,
            json!({"type": "org.example.s", "state_key": c.creator.id, "content": {}}),
        );
    });
}

#[test]
fn auth_events_selection() {
    for id in ["10", "11", "12", "org.matrix.12.4243"] {
        let version = v(id);
        let c = cast(version);
        let content = serde_json::value::to_raw_value(
            &json!({"membership": "join", "join_authorised_via_users_server": c.moderator.id}),
        )
        .unwrap();
        let types = auth_types_for_event(
            version,
            "m.room.member",
            &c.alice.id,
            Some(&c.alice.id),
            &content,
        )
        .unwrap();
        let has = |t: &str, k: &str| types.contains(&(t.to_owned(), k.to_owned()));
        assert!(has("m.room.power_levels", ""));
        assert!(has("m.room.member", &c.alice.id));
        assert!(has("m.room.join_rules", ""));
        assert!(has("m.room.member", &c.moderator.id));
        // The create event is cited before v12 and never from v12 on.
        assert_eq!(
            has("m.room.create", ""),
            !id.starts_with("12") && !id.starts_with("org")
        );
        // A message needs only power levels and the sender's membership (+ create before v12).
        let msg = serde_json::value::to_raw_value(&json!({"body": "x"})).unwrap();
        let types =
            auth_types_for_event(version, "m.room.message", &c.alice.id, None, &msg).unwrap();
        assert_eq!(
            types.len(),
            if version.event_format() == myelin_room_version::version::EventFormat::V12 {
                2
            } else {
                3
            }
        );
        // Malformed member content is an error, not a panic.
        let bad = serde_json::value::to_raw_value(&json!({"membership": 5})).unwrap();
        assert!(
            auth_types_for_event(
                version,
                "m.room.member",
                &c.alice.id,
                Some(&c.alice.id),
                &bad
            )
            .is_err()
        );
    }
    // Third-party invites cite the m.room.third_party_invite with the token.
    let version = v("12");
    let content = serde_json::value::to_raw_value(&json!({"membership": "invite",
        "third_party_invite": {"display_name": "x", "signed": {"mxid": "@b:x", "token": "tok", "signatures": {}}}}))
    .unwrap();
    let types =
        auth_types_for_event(version, "m.room.member", "@a:x", Some("@b:x"), &content).unwrap();
    assert!(types.contains(&("m.room.third_party_invite".to_owned(), "tok".to_owned())));
}

fn third_party_invite_flow(
    version: &'static RoomVersion,
) -> (Result<String, String>, Result<String, String>) {
    let c = cast(version);
    let mut r = room(version, &c, "invite");
    let identity_server = KeyPair::from_seed(&[77; 32]);
    let public_key = base64_std(&identity_server.public_key());
    let invite_event = r.try_send(
        &c.moderator,
        json!({"type": "m.room.third_party_invite", "state_key": "tok",
               "content": {"display_name": "b…", "key_validity_url": "https://id.example/v",
                           "public_key": public_key}}),
    );
    let mut signed = value_to_object(json!({"mxid": c.bob.id, "token": "tok"})).unwrap();
    sign_json(&mut signed, "id.example", "ed25519:0", &identity_server).unwrap();
    let signed: Value = serde_json::from_str(&myelin_room_version::canonical::to_canonical_string(
        &signed,
    ))
    .unwrap();
    let member = r.try_send(
        &c.moderator,
        json!({"type": "m.room.member", "state_key": c.bob.id,
               "content": {"membership": "invite",
                           "third_party_invite": {"display_name": "b…", "signed": signed}}}),
    );
    (
        invite_event.map_err(|e| e.reason),
        member.map_err(|e| e.reason),
    )
}

fn base64_std(bytes: &[u8]) -> String {
    use base64::Engine as _;
    base64::engine::general_purpose::STANDARD_NO_PAD.encode(bytes)
}

#[test]
fn third_party_invites_work_in_non_account_key_rooms() {
    for id in ["10", "11", "12"] {
        let (event, member) = third_party_invite_flow(v(id));
        event.unwrap();
        member.unwrap();
    }
    // A wrong mxid is rejected.
    let version = v("12");
    let c = cast(version);
    let mut r = room(version, &c, "invite");
    let is = KeyPair::from_seed(&[77; 32]);
    r.send(&c.moderator, json!({"type": "m.room.third_party_invite", "state_key": "tok",
        "content": {"display_name": "x", "key_validity_url": "https://id.example/v", "public_key": base64_std(&is.public_key())}}));
    let mut signed = value_to_object(json!({"mxid": c.alice.id, "token": "tok"})).unwrap();
    sign_json(&mut signed, "id.example", "ed25519:0", &is).unwrap();
    let signed: Value = serde_json::from_str(&myelin_room_version::canonical::to_canonical_string(
        &signed,
    ))
    .unwrap();
    assert!(r.try_send(&c.moderator, json!({"type": "m.room.member", "state_key": c.bob.id,
        "content": {"membership": "invite", "third_party_invite": {"display_name": "x", "signed": signed}}})).is_err());
}

/// MSC4243.md §6 case 38 / §4 Q10.
#[test]
fn third_party_invites_refused_in_account_key_rooms() {
    let (event, member) = third_party_invite_flow(v("org.matrix.12.4243"));
    assert!(
        event
            .unwrap_err()
            .contains("third-party invites are disabled")
    );
    assert!(
        member
            .unwrap_err()
            .contains("third-party invites are disabled")
    );
}

#[test]
fn v10_and_v11_basics() {
    for id in ["10", "11"] {
        let version = v(id);
        let c = cast(version);
        let mut r = Room::new(
            version,
            &c.creator,
            json!({"creator": c.creator.id}),
            power_levels(&c, &[(&c.creator, 100)]),
            "public",
        );
        r.member(&c.alice, &c.alice, "join").unwrap();
        assert!(r.member(&c.alice, &c.creator, "ban").is_err());
        r.member(&c.creator, &c.alice, "ban").unwrap();
        // Before v12 the creator has no special power beyond power levels: a power levels event
        // without the creator in `users` is still allowed for the creator at 100.
        r.send(
            &c.creator,
            json!({"type": "m.room.topic", "state_key": "", "content": {"topic": "t"}}),
        );
    }
}

/// Re-sign an event after changing its JSON (e.g. its `auth_events`).
fn rebuilt(
    r: &Room,
    who: &Actor,
    change: impl FnOnce(&mut Value),
) -> myelin_room_version::pdu::Pdu {
    let pdu = r.make(
        who,
        json!({"type": "m.room.message", "content": {"body": "x"}}),
    );
    let mut value: Value = serde_json::from_str(&pdu.canonical_json()).unwrap();
    change(&mut value);
    let obj = value.as_object_mut().unwrap();
    obj.remove("hashes");
    obj.remove("signatures");
    build(r.version, &keypair(who.seed), value)
}

/// Rule 3: the cited auth events must be exactly of the selected kinds, unique, accepted and in
/// the same room; rule 2 (v12): the create event named by the room id must be accepted.
#[test]
fn auth_events_list_rules() {
    each_v12(|version| {
        let c = cast(version);
        let mut r = room(version, &c, "public");
        let pl = r.state[&("m.room.power_levels".to_owned(), String::new())].clone();
        let jr = r.state[&("m.room.join_rules".to_owned(), String::new())].clone();
        // The unmodified event is fine.
        let ok = rebuilt(&r, &c.moderator, |_| {});
        r.try_apply(ok).unwrap();
        // Duplicate (type, state_key).
        let dup = rebuilt(&r, &c.moderator, |e| {
            e["auth_events"]
                .as_array_mut()
                .unwrap()
                .push(json!(pl.clone()))
        });
        assert!(r.try_apply(dup).unwrap_err().reason.contains("duplicate"));
        // A kind the selection algorithm does not ask for.
        let extra = rebuilt(&r, &c.moderator, |e| {
            e["auth_events"]
                .as_array_mut()
                .unwrap()
                .push(json!(jr.clone()))
        });
        assert!(
            r.try_apply(extra)
                .unwrap_err()
                .reason
                .contains("unexpected")
        );
        // An auth event that was itself rejected.
        r.events.get_mut(&pl).unwrap().set_rejected(true);
        let cites_rejected = rebuilt(&r, &c.moderator, |_| {});
        assert!(
            r.try_apply(cites_rejected)
                .unwrap_err()
                .reason
                .contains("rejected")
        );
        r.events.get_mut(&pl).unwrap().set_rejected(false);
        // Rule 2: a rejected create event poisons the room.
        let create = r.state[&("m.room.create".to_owned(), String::new())].clone();
        r.events.get_mut(&create).unwrap().set_rejected(true);
        let in_bad_room = rebuilt(&r, &c.moderator, |_| {});
        assert!(r.try_apply(in_bad_room).is_err());
        r.events.get_mut(&create).unwrap().set_rejected(false);
        // An auth event from another room.
        // (Different create content, so a different room id.)
        let mut other = Room::new(
            version,
            &c.creator,
            json!({"purpose": "other"}),
            power_levels(&c, &[]),
            "public",
        );
        other.member(&c.moderator, &c.moderator, "join").unwrap();
        assert_ne!(other.room_id, r.room_id);
        let foreign_member =
            other.state[&("m.room.member".to_owned(), c.moderator.id.clone())].clone();
        r.events.insert(
            foreign_member.clone(),
            other.events[&foreign_member].clone(),
        );
        let own_member = r.state[&("m.room.member".to_owned(), c.moderator.id.clone())].clone();
        let foreign = rebuilt(&r, &c.moderator, |e| {
            let list = e["auth_events"].as_array_mut().unwrap();
            list.retain(|id| id != &json!(own_member));
            list.push(json!(foreign_member));
        });
        assert!(
            r.try_apply(foreign)
                .unwrap_err()
                .reason
                .contains("same room")
        );
    });
}

/// Rule 4: `m.federate: false` keeps senders of other domains out.
#[test]
fn non_federated_rooms_refuse_other_domains() {
    each_v12(|version| {
        let c = cast(version);
        let mut r = Room::new(
            version,
            &c.creator,
            json!({"m.federate": false}),
            power_levels(&c, &[]),
            "public",
        );
        // Same domain (a.example) as the creator.
        r.member(&c.moderator, &c.moderator, "join").unwrap();
        // Another domain.
        assert!(
            r.member(&c.alice, &c.alice, "join")
                .unwrap_err()
                .reason
                .contains("not federated")
        );
    });
}

/// Redactions need the redact level for others' events (v11+ puts `redacts` in content; the
/// auth rules only check the event's power level, the "same sender" exemption is applied when
/// serving, not in auth).
#[test]
fn redaction_events_need_their_power_level() {
    each_v12(|version| {
        let c = cast(version);
        let mut r = room(version, &c, "public");
        r.member(&c.alice, &c.alice, "join").unwrap();
        let mut pl = power_levels(&c, &[]);
        pl["events"]["m.room.redaction"] = json!(50);
        r.send(
            &c.creator,
            json!({"type": "m.room.power_levels", "state_key": "", "content": pl}),
        );
        let msg = r.send(
            &c.alice,
            json!({"type": "m.room.message", "content": {"body": "x"}}),
        );
        assert!(
            r.try_send(
                &c.alice,
                json!({"type": "m.room.redaction", "content": {"redacts": msg}})
            )
            .is_err()
        );
        let red = r.send(
            &c.moderator,
            json!({"type": "m.room.redaction", "content": {"redacts": msg}}),
        );
        assert_eq!(r.events[&red].redacts(), Some(msg.as_str()));
    });
}

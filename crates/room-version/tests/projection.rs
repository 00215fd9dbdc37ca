//! The client projection (MSC4243.md §2.6, §4 Q4–Q6, §6 cases 29 and 32).

mod common;

use common::{key_user, keypair, v};
use myelin_room_version::account_key::KeyFormUserId;
use myelin_room_version::projection::{KeyVerification, project_for_client, visible_user_id};
use serde_json::{Value, json};

const AK: &str = "org.matrix.12.4243";

struct Ids {
    alice: String, // remote, verified as "alice" on a.example
    bob: String,   // remote, unverified
    erin: String,  // remote, erased
    me: String,    // local reader, "me" on my.example
}

fn ids() -> Ids {
    Ids {
        alice: key_user(1, "a.example"),
        bob: key_user(2, "b.example"),
        erin: key_user(3, "e.example"),
        me: key_user(4, "my.example"),
    }
}

fn lookup(id: &KeyFormUserId) -> KeyVerification {
    let key = id.key.as_str();
    if key == keypair(1).account_key().as_str() && id.server_name == "a.example" {
        KeyVerification::Verified {
            account_name: "alice".into(),
        }
    } else if key == keypair(4).account_key().as_str() && id.server_name == "my.example" {
        KeyVerification::Local {
            account_name: "me".into(),
        }
    } else if key == keypair(3).account_key().as_str() {
        KeyVerification::Erased
    } else {
        KeyVerification::Unverified
    }
}

fn project(event: Value) -> Option<Value> {
    project_for_client(v(AK), event, &ids().me, lookup)
}

/// §6 case 29: a verified remote message shows the name form and `sender_account`.
#[test]
fn verified_sender_is_rewritten_with_sender_account() {
    let i = ids();
    let out = project(
        json!({"type": "m.room.message", "sender": i.alice, "event_id": "$e",
        "content": {"body": format!("hi {}", i.bob), "m.mentions": {"user_ids": [i.alice]}}}),
    )
    .unwrap();
    assert_eq!(out["sender"], "@alice:a.example");
    assert_eq!(
        out["unsigned"]["sender_account"],
        json!({"key": keypair(1).account_key().as_str(), "user_id": "@alice:a.example"})
    );
    // Free-form content is never rewritten.
    assert_eq!(out["content"]["body"], format!("hi {}", i.bob));
    assert_eq!(out["content"]["m.mentions"]["user_ids"][0], json!(i.alice));
    // Local users get the same shape.
    let mine = project(json!({"type": "m.room.message", "sender": i.me, "content": {}})).unwrap();
    assert_eq!(mine["sender"], "@me:my.example");
    assert_eq!(
        mine["unsigned"]["sender_account"]["user_id"],
        "@me:my.example"
    );
}

#[test]
fn unverified_and_erased_senders_are_hidden() {
    let i = ids();
    for sender in [&i.bob, &i.erin] {
        assert!(
            project(json!({"type": "m.room.message", "sender": sender, "content": {}})).is_none()
        );
        assert!(
            project(
                json!({"type": "m.room.topic", "state_key": "", "sender": sender, "content": {}})
            )
            .is_none()
        );
        assert!(
            project(
                json!({"type": "m.room.member", "state_key": sender, "sender": sender,
                               "content": {"membership": "join"}})
            )
            .is_none()
        );
    }
}

/// §6 case 32 / §4 Q6: room configuration from unverified senders is delivered in key form.
#[test]
fn room_configuration_is_always_delivered_in_key_form() {
    let i = ids();
    for kind in [
        "m.room.encryption",
        "m.room.power_levels",
        "m.room.create",
        "m.room.join_rules",
        "m.room.history_visibility",
        "m.room.guest_access",
        "m.room.server_acl",
        "m.room.tombstone",
        "m.room.policy",
    ] {
        for sender in [&i.bob, &i.erin] {
            let out =
                project(json!({"type": kind, "state_key": "", "sender": sender, "content": {}}))
                    .unwrap_or_else(|| panic!("{kind} must be delivered"));
            assert_eq!(&out["sender"], sender);
            let account = out["unsigned"]["sender_account"].as_object().unwrap();
            assert!(account.get("user_id").is_none());
            assert!(account["key"].as_str().is_some());
        }
    }
    // A non-state event of a configuration type is not configuration.
    assert!(
        project(json!({"type": "m.room.encryption", "sender": i.bob, "content": {}})).is_none()
    );
}

#[test]
fn user_ids_in_auth_relevant_places_are_rewritten_recursively() {
    let i = ids();
    let pl = project(
        json!({"type": "m.room.power_levels", "state_key": "", "sender": i.alice,
        "content": {"users": {i.alice.clone(): 100, i.bob.clone(): 50}},
        "unsigned": {"prev_content": {"users": {i.me.clone(): 10}}, "prev_sender": i.me}}),
    )
    .unwrap();
    assert_eq!(
        pl["content"]["users"],
        json!({"@alice:a.example": 100, i.bob.clone(): 50})
    );
    assert_eq!(
        pl["unsigned"]["prev_content"]["users"],
        json!({"@me:my.example": 10})
    );
    assert_eq!(pl["unsigned"]["prev_sender"], "@me:my.example");

    let create = project(
        json!({"type": "m.room.create", "state_key": "", "sender": i.alice,
        "content": {"additional_creators": [i.me, i.bob], "room_version": AK}}),
    )
    .unwrap();
    assert_eq!(
        create["content"]["additional_creators"],
        json!(["@me:my.example", i.bob])
    );

    let join = project(json!({"type": "m.room.member", "state_key": i.alice, "sender": i.alice,
        "content": {"membership": "join", "join_authorised_via_users_server": i.me,
                    "third_party_invite": {"signed": {"mxid": i.alice}}},
        "unsigned": {"redacted_because": {"type": "m.room.redaction", "sender": i.me, "content": {}}}})).unwrap();
    assert_eq!(join["state_key"], "@alice:a.example");
    assert_eq!(
        join["content"]["join_authorised_via_users_server"],
        "@me:my.example"
    );
    assert_eq!(
        join["content"]["third_party_invite"]["signed"]["mxid"],
        json!(i.alice),
        "left as is"
    );
    assert_eq!(
        join["unsigned"]["redacted_because"]["sender"],
        "@me:my.example"
    );

    let invite = project(json!({"type": "m.room.member", "state_key": i.me, "sender": i.alice,
        "content": {"membership": "invite"},
        "unsigned": {"invite_room_state": [
            {"type": "m.room.create", "state_key": "", "sender": i.alice, "content": {}},
            {"type": "m.room.member", "state_key": i.alice, "sender": i.alice, "content": {"membership": "join"}}]}})).unwrap();
    assert_eq!(invite["state_key"], "@me:my.example");
    let stripped = invite["unsigned"]["invite_room_state"].as_array().unwrap();
    assert_eq!(stripped[0]["sender"], "@alice:a.example");
    assert_eq!(stripped[1]["state_key"], "@alice:a.example");
    // Non-user state keys stay.
    let topic = project(
        json!({"type": "org.example", "state_key": "plain", "sender": i.alice, "content": {}}),
    )
    .unwrap();
    assert_eq!(topic["state_key"], "plain");
}

#[test]
fn same_key_on_another_domain_is_not_the_verified_user() {
    // §4 Q1: @K:a verified does not make @K:evil visible.
    let forged = keypair(1).account_key().user_id("evil.example");
    assert!(project(json!({"type": "m.room.message", "sender": forged, "content": {}})).is_none());
}

#[test]
fn other_rooms_pass_through_unchanged() {
    let event = json!({"type": "m.room.message", "sender": "@bob:b.example", "content": {"body": "x"},
                       "unsigned": {"age": 5}});
    for version in ["10", "11", "12"] {
        assert_eq!(
            project_for_client(v(version), event.clone(), "@me:my.example", |_| {
                KeyVerification::Unverified
            }),
            Some(event.clone())
        );
    }
}

/// A kicked or banned reader learns it, even when the moderator is unverified (or erased): the
/// member event whose state_key is the reader is always delivered.
#[test]
fn the_readers_own_member_event_is_always_delivered() {
    let i = ids();
    for (sender, membership) in [(&i.bob, "leave"), (&i.erin, "ban"), (&i.bob, "invite")] {
        let out = project(
            json!({"type": "m.room.member", "state_key": i.me, "sender": sender,
                                 "content": {"membership": membership}}),
        )
        .unwrap_or_else(|| panic!("{membership} by {sender} hidden from its target"));
        assert_eq!(out["state_key"], "@me:my.example");
        // The unverified sender stays in key form, without a user_id.
        assert_eq!(out["sender"], json!(sender));
        assert!(out["unsigned"]["sender_account"].get("user_id").is_none());
    }
    // Another member's event from the same sender stays hidden.
    assert!(
        project(
            json!({"type": "m.room.member", "state_key": i.alice, "sender": i.bob,
                       "content": {"membership": "leave"}})
        )
        .is_none()
    );
    // An anonymous reader ("") is nobody's target.
    assert!(
        project_for_client(
            v(AK),
            json!({"type": "m.room.member", "state_key": "", "sender": i.bob,
                    "content": {"membership": "leave"}}),
            "",
            lookup
        )
        .is_none()
    );
}

/// Two keys of power_levels.users that project to one name both stay in key form
/// (docs/account-keys.md): one name cannot carry two levels.
#[test]
fn power_levels_users_colliding_on_one_name_stay_in_key_form() {
    let i = ids();
    let twin = key_user(5, "a.example");
    let both_alice = |id: &KeyFormUserId| {
        if id.server_name == "a.example" {
            KeyVerification::Verified {
                account_name: "alice".into(),
            }
        } else {
            lookup(id)
        }
    };
    let event = json!({"type": "m.room.power_levels", "state_key": "", "sender": i.me,
        "content": {"users": {i.alice.clone(): 50, twin.clone(): 100, i.me.clone(): 75}}});
    let out = project_for_client(v(AK), event, &i.me, both_alice).unwrap();
    let users = out["content"]["users"].as_object().unwrap();
    assert_eq!(users.len(), 3, "{users:?}");
    assert_eq!(users[&i.alice], 50);
    assert_eq!(users[&twin], 100);
    assert_eq!(users["@me:my.example"], 75);
    assert!(!users.contains_key("@alice:a.example"));
}

/// The redaction inside `unsigned.redacted_because` is an event too: rewritten and with its own
/// `sender_account`.
#[test]
fn redacted_because_gets_its_own_sender_account() {
    let i = ids();
    let out = project(
        json!({"type": "m.room.message", "sender": i.alice, "content": {},
        "unsigned": {"redacted_because": {"type": "m.room.redaction", "sender": i.me,
                                          "content": {}, "redacts": "$x"}}}),
    )
    .unwrap();
    let because = &out["unsigned"]["redacted_because"];
    assert_eq!(because["sender"], "@me:my.example");
    assert_eq!(
        because["unsigned"]["sender_account"],
        json!({"key": keypair(4).account_key().as_str(), "user_id": "@me:my.example"})
    );
}

/// Ids shown outside events (heroes): verified and local keys by name, unverified and erased
/// ones not at all, name-form ids as they are.
#[test]
fn visible_user_ids_name_verified_keys_and_hide_the_rest() {
    let i = ids();
    assert_eq!(
        visible_user_id(&i.alice, lookup).as_deref(),
        Some("@alice:a.example")
    );
    assert_eq!(
        visible_user_id(&i.me, lookup).as_deref(),
        Some("@me:my.example")
    );
    assert_eq!(visible_user_id(&i.bob, lookup), None);
    assert_eq!(visible_user_id(&i.erin, lookup), None);
    assert_eq!(
        visible_user_id("@carol:c.example", lookup).as_deref(),
        Some("@carol:c.example")
    );
}

//! Room upgrades over the client API, on both databases: the replacement room (predecessor,
//! copied state, bans, power levels), the tombstone, the old room locked down, aliases and the
//! directory moved; version 12's creators and tombstone level; the refusals, which write
//! nothing; and users' tags, direct chats and push rules following them into the replacement.

use myelin_testkit::{TestServer, TestUser, enc, test_backends};
use reqwest::StatusCode;
use serde_json::{Value, json};

async fn state(
    server: &TestServer,
    user: &TestUser,
    room: &str,
    kind: &str,
    key: &str,
) -> (StatusCode, Value) {
    server
        .get(
            &format!(
                "/_matrix/client/v3/rooms/{}/state/{kind}/{}",
                enc(room),
                enc(key)
            ),
            &user.access_token,
        )
        .await
}

async fn put_state(
    server: &TestServer,
    user: &TestUser,
    room: &str,
    kind: &str,
    key: &str,
    content: Value,
) {
    let (status, body) = server
        .put(
            &format!(
                "/_matrix/client/v3/rooms/{}/state/{kind}/{}",
                enc(room),
                enc(key)
            ),
            &user.access_token,
            content,
        )
        .await;
    assert_eq!(status, 200, "PUT {kind}: {body}");
}

async fn upgrade(
    server: &TestServer,
    user: &TestUser,
    room: &str,
    body: Value,
) -> (StatusCode, Value) {
    server
        .post(
            &format!("/_matrix/client/v3/rooms/{}/upgrade", enc(room)),
            &user.access_token,
            body,
        )
        .await
}

async fn must_upgrade(server: &TestServer, user: &TestUser, room: &str, body: Value) -> String {
    let (status, reply) = upgrade(server, user, room, body).await;
    assert_eq!(status, 200, "upgrade: {reply}");
    reply["replacement_room"]
        .as_str()
        .expect("replacement_room")
        .to_owned()
}

async fn join(server: &TestServer, user: &TestUser, room: &str) {
    let (status, body) = server
        .post(
            &format!("/_matrix/client/v3/join/{}", enc(room)),
            &user.access_token,
            json!({}),
        )
        .await;
    assert_eq!(status, 200, "join: {body}");
}

/// Sets `users` in the room's power levels, keeping the rest.
async fn set_user_levels(server: &TestServer, admin: &TestUser, room: &str, users: Value) {
    let (_, mut power) = state(server, admin, room, "m.room.power_levels", "").await;
    power["users"] = users;
    put_state(server, admin, room, "m.room.power_levels", "", power).await;
}

async fn send_text(server: &TestServer, user: &TestUser, room: &str, txn: &str) -> StatusCode {
    server
        .put(
            &format!(
                "/_matrix/client/v3/rooms/{}/send/m.room.message/{txn}",
                enc(room)
            ),
            &user.access_token,
            json!({"msgtype": "m.text", "body": "hello"}),
        )
        .await
        .0
}

async fn joined_rooms(server: &TestServer, user: &TestUser) -> Vec<Value> {
    let (status, body) = server
        .get("/_matrix/client/v3/joined_rooms", &user.access_token)
        .await;
    assert_eq!(status, 200);
    body["joined_rooms"].as_array().cloned().unwrap_or_default()
}

#[tokio::test]
async fn upgrade_moves_the_room_to_a_replacement() {
    for kind in test_backends() {
        let server = TestServer::start(kind).await;
        let alice = server.register("alice").await;
        let bob = server.register("bob").await;
        let mallory = server.register("mallory").await;
        let old = server
            .create_room(
                &alice,
                json!({
                    "room_version": "10",
                    "preset": "public_chat",
                    "visibility": "public",
                    "room_alias_name": "lobby",
                    "name": "Lobby",
                    "topic": "chat",
                    "initial_state": [{"type": "m.room.encryption", "state_key": "",
                                       "content": {"algorithm": "m.megolm.v1.aes-sha2"}}],
                }),
            )
            .await;
        // A second local alias, listed as an alternative.
        let (status, body) = server
            .put(
                &format!(
                    "/_matrix/client/v3/directory/room/{}",
                    enc("#hall:localhost")
                ),
                &alice.access_token,
                json!({"room_id": old}),
            )
            .await;
        assert_eq!(status, 200, "{body}");
        put_state(
            &server,
            &alice,
            &old,
            "m.room.canonical_alias",
            "",
            json!({"alias": "#lobby:localhost", "alt_aliases": ["#hall:localhost"]}),
        )
        .await;
        join(&server, &bob, &old).await;
        join(&server, &mallory, &old).await;
        let (status, _) = server
            .post(
                &format!("/_matrix/client/v3/rooms/{}/ban", enc(&old)),
                &alice.access_token,
                json!({"user_id": mallory.user_id, "reason": "spam"}),
            )
            .await;
        assert_eq!(status, 200);
        set_user_levels(
            &server,
            &alice,
            &old,
            json!({&alice.user_id: 100, "@moderator:localhost": 50}),
        )
        .await;
        let (_, old_create) = state(&server, &alice, &old, "m.room.create", "").await;

        let new = must_upgrade(&server, &alice, &old, json!({"new_version": "11"})).await;
        assert_ne!(new, old);
        assert!(new.ends_with(":localhost"), "a v11 room id: {new}");

        // The tombstone, naming the replacement.
        let (status, tombstone) = state(&server, &alice, &old, "m.room.tombstone", "").await;
        assert_eq!(status, 200, "{tombstone}");
        assert_eq!(tombstone["replacement_room"], new);
        assert!(tombstone["body"].is_string());

        // The replacement: its predecessor, and the state that moved with it.
        let (_, create) = state(&server, &alice, &new, "m.room.create", "").await;
        assert_eq!(create["room_version"], "11");
        assert_eq!(create["predecessor"]["room_id"], old);
        assert!(
            create["predecessor"]["event_id"]
                .as_str()
                .is_some_and(|id| id.starts_with('$')),
            "before v12 the predecessor names an event: {create}"
        );
        assert!(create.get("creator").is_none(), "v11 has no creator field");
        assert_eq!(old_create["room_version"], "10");
        for (kind, field, value) in [
            ("m.room.name", "name", json!("Lobby")),
            ("m.room.topic", "topic", json!("chat")),
            ("m.room.join_rules", "join_rule", json!("public")),
            (
                "m.room.history_visibility",
                "history_visibility",
                json!("shared"),
            ),
            (
                "m.room.encryption",
                "algorithm",
                json!("m.megolm.v1.aes-sha2"),
            ),
        ] {
            let (status, content) = state(&server, &alice, &new, kind, "").await;
            assert_eq!(status, 200, "{kind} copied");
            assert_eq!(content[field], value, "{kind}: {content}");
        }
        let (_, power) = state(&server, &alice, &new, "m.room.power_levels", "").await;
        assert_eq!(
            power["users"],
            json!({&alice.user_id: 100, "@moderator:localhost": 50}),
            "{power}"
        );
        assert_eq!(
            power["events_default"], 0,
            "the new room is not locked down"
        );
        let (_, ban) = state(&server, &alice, &new, "m.room.member", &mallory.user_id).await;
        assert_eq!(ban["membership"], "ban", "bans carry over: {ban}");
        assert_eq!(ban["reason"], "spam");
        // Members are not moved: they follow the tombstone.
        let (status, _) = state(&server, &alice, &new, "m.room.member", &bob.user_id).await;
        assert_eq!(status, 404);
        assert!(joined_rooms(&server, &alice).await.contains(&json!(new)));

        // The old room is locked down.
        let (_, old_power) = state(&server, &alice, &old, "m.room.power_levels", "").await;
        assert_eq!(old_power["events_default"], 50, "{old_power}");
        assert_eq!(old_power["invite"], 50);
        assert_eq!(send_text(&server, &bob, &old, "t1").await, 403);

        // Aliases and the directory moved.
        for alias in ["#lobby:localhost", "#hall:localhost"] {
            let (status, body) = server
                .get(
                    &format!("/_matrix/client/v3/directory/room/{}", enc(alias)),
                    &alice.access_token,
                )
                .await;
            assert_eq!(status, 200);
            assert_eq!(body["room_id"], new, "{alias}");
        }
        let (_, canonical) = state(&server, &alice, &new, "m.room.canonical_alias", "").await;
        assert_eq!(
            canonical,
            json!({"alias": "#lobby:localhost", "alt_aliases": ["#hall:localhost"]})
        );
        let (_, old_canonical) = state(&server, &alice, &old, "m.room.canonical_alias", "").await;
        assert!(old_canonical.get("alias").is_none(), "{old_canonical}");
        for (room, visibility) in [(&old, "private"), (&new, "public")] {
            let (_, body) = server
                .get(
                    &format!("/_matrix/client/v3/directory/list/room/{}", enc(room)),
                    &alice.access_token,
                )
                .await;
            assert_eq!(body["visibility"], visibility, "{room}");
        }
        let (_, public) = server
            .get("/_matrix/client/v3/publicRooms", &alice.access_token)
            .await;
        let listed: Vec<&Value> = public["chunk"]
            .as_array()
            .unwrap()
            .iter()
            .map(|room| &room["room_id"])
            .collect();
        assert_eq!(listed, vec![&json!(new)], "{public}");

        // Bob follows the tombstone.
        join(&server, &bob, &new).await;
        assert_eq!(send_text(&server, &bob, &new, "t2").await, 200);
        server.stop().await;
    }
}

#[tokio::test]
async fn upgrades_to_v12_make_creators() {
    for kind in test_backends() {
        let server = TestServer::start(kind).await;
        let alice = server.register("alice").await;
        let bob = server.register("bob").await;
        let charlie = server.register("charlie").await;

        // A v11 admin upgrades to v12: they become the creator, with alice as an additional
        // one; neither is listed in the power levels, charlie keeps his level.
        let old = server
            .create_room(
                &alice,
                json!({"room_version": "11", "preset": "public_chat"}),
            )
            .await;
        join(&server, &bob, &old).await;
        join(&server, &charlie, &old).await;
        set_user_levels(
            &server,
            &alice,
            &old,
            json!({&alice.user_id: 100, &bob.user_id: 100, &charlie.user_id: 50}),
        )
        .await;
        let new = must_upgrade(
            &server,
            &bob,
            &old,
            json!({"new_version": "12", "additional_creators": [alice.user_id]}),
        )
        .await;
        assert!(
            !new.contains(':'),
            "a v12 room id is the create event's hash: {new}"
        );
        let (_, create) = state(&server, &bob, &new, "m.room.create", "").await;
        assert_eq!(create["room_version"], "12");
        assert_eq!(create["additional_creators"], json!([alice.user_id]));
        assert_eq!(
            create["predecessor"],
            json!({"room_id": old}),
            "no event_id in v12"
        );
        let (_, power) = state(&server, &bob, &new, "m.room.power_levels", "").await;
        assert_eq!(power["users"], json!({&charlie.user_id: 50}), "{power}");
        assert_eq!(power["events"]["m.room.tombstone"], 150, "{power}");
        let (_, tombstone) = state(&server, &alice, &old, "m.room.tombstone", "").await;
        assert_eq!(tombstone["replacement_room"], new);

        // Without additional_creators the upgrader is the only creator.
        let old = server
            .create_room(
                &alice,
                json!({"room_version": "11", "preset": "public_chat"}),
            )
            .await;
        join(&server, &bob, &old).await;
        set_user_levels(&server, &alice, &old, json!({&bob.user_id: 100})).await;
        let new = must_upgrade(&server, &bob, &old, json!({"new_version": "12"})).await;
        let (_, create) = state(&server, &bob, &new, "m.room.create", "").await;
        assert!(create.get("additional_creators").is_none(), "{create}");
        let (_, power) = state(&server, &bob, &new, "m.room.power_levels", "").await;
        assert_eq!(power["users"], json!({}), "{power}");

        // In a v12 room an admin at 100 cannot upgrade (the tombstone needs 150), at 150 they
        // can, naming new creators: the old creator is not carried over.
        let old = server
            .create_room(
                &alice,
                json!({"room_version": "12", "preset": "public_chat"}),
            )
            .await;
        join(&server, &bob, &old).await;
        join(&server, &charlie, &old).await;
        set_user_levels(
            &server,
            &alice,
            &old,
            json!({&bob.user_id: 100, &charlie.user_id: 50}),
        )
        .await;
        let (status, body) = upgrade(&server, &bob, &old, json!({"new_version": "12"})).await;
        assert_eq!(status, 403, "{body}");
        assert_eq!(body["errcode"], "M_FORBIDDEN");
        set_user_levels(
            &server,
            &alice,
            &old,
            json!({&bob.user_id: 150, &charlie.user_id: 50}),
        )
        .await;
        let new = must_upgrade(
            &server,
            &bob,
            &old,
            json!({"new_version": "12", "additional_creators": [charlie.user_id]}),
        )
        .await;
        let (_, create) = state(&server, &bob, &new, "m.room.create", "").await;
        assert_eq!(create["additional_creators"], json!([charlie.user_id]));
        let (_, power) = state(&server, &bob, &new, "m.room.power_levels", "").await;
        assert_eq!(
            power["users"],
            json!({}),
            "charlie is a creator now: {power}"
        );
        assert_eq!(power["events"]["m.room.tombstone"], 150);

        // A space stays a space, with its children.
        let space = server
            .create_room(
                &alice,
                json!({"room_version": "12", "preset": "public_chat",
                       "creation_content": {"type": "m.space"}}),
            )
            .await;
        put_state(
            &server,
            &alice,
            &space,
            "m.space.child",
            &old,
            json!({"via": ["localhost"]}),
        )
        .await;
        let new_space = must_upgrade(&server, &alice, &space, json!({"new_version": "12"})).await;
        let (_, create) = state(&server, &alice, &new_space, "m.room.create", "").await;
        assert_eq!(create["type"], "m.space");
        let (status, child) = state(&server, &alice, &new_space, "m.space.child", &old).await;
        assert_eq!(status, 200, "{child}");
        assert_eq!(child["via"], json!(["localhost"]));
        server.stop().await;
    }
}

#[tokio::test]
async fn refused_upgrades_write_nothing() {
    for kind in test_backends() {
        let server = TestServer::start(kind).await;
        let alice = server.register("alice").await;
        let bob = server.register("bob").await;
        let eve = server.register("eve").await;
        let room = server
            .create_room(
                &alice,
                json!({"room_version": "11", "preset": "public_chat"}),
            )
            .await;
        join(&server, &bob, &room).await;
        let rooms_before = joined_rooms(&server, &alice).await;

        // Unknown versions.
        for version in ["9999"] {
            let (status, body) =
                upgrade(&server, &alice, &room, json!({"new_version": version})).await;
            assert_eq!(status, 400, "{version}: {body}");
            assert_eq!(body["errcode"], "M_UNSUPPORTED_ROOM_VERSION", "{version}");
        }
        // Not a room version at all (outside the grammar): a bad request, as for createRoom.
        let (status, body) = upgrade(
            &server,
            &alice,
            &room,
            json!({"new_version": "my_claim_to_fame"}),
        )
        .await;
        assert_eq!(status, 400, "{body}");
        // A member without the power to send the tombstone.
        let (status, body) = upgrade(&server, &bob, &room, json!({"new_version": "11"})).await;
        assert_eq!(status, 403, "{body}");
        assert_eq!(body["errcode"], "M_FORBIDDEN");
        // Not a member, and a room the server does not know.
        let (status, body) = upgrade(&server, &eve, &room, json!({"new_version": "11"})).await;
        assert_eq!(status, 403, "{body}");
        assert_eq!(body["errcode"], "M_FORBIDDEN");
        let (status, body) = upgrade(
            &server,
            &alice,
            "!nowhere:localhost",
            json!({"new_version": "11"}),
        )
        .await;
        assert_eq!(status, 403, "{body}");
        assert_eq!(body["errcode"], "M_FORBIDDEN");
        // A member who left.
        let (status, _) = server
            .post(
                &format!("/_matrix/client/v3/rooms/{}/leave", enc(&room)),
                &bob.access_token,
                json!({}),
            )
            .await;
        assert_eq!(status, 200);
        set_user_levels(
            &server,
            &alice,
            &room,
            json!({&alice.user_id: 100, &bob.user_id: 100}),
        )
        .await;
        let (status, body) = upgrade(&server, &bob, &room, json!({"new_version": "11"})).await;
        assert_eq!(status, 403, "{body}");
        // A body without new_version.
        let (status, _) = upgrade(&server, &alice, &room, json!({})).await;
        assert_eq!(status, 400);

        // Nothing was written: no tombstone, no new room, the old room open.
        let (status, _) = state(&server, &alice, &room, "m.room.tombstone", "").await;
        assert_eq!(status, 404);
        assert_eq!(joined_rooms(&server, &alice).await, rooms_before);
        let (_, power) = state(&server, &alice, &room, "m.room.power_levels", "").await;
        assert_eq!(power["events_default"], 0);
        server.stop().await;
    }
}

async fn set_room_rule(server: &TestServer, user: &TestUser, room: &str) {
    let (status, body) = server
        .put(
            &format!("/_matrix/client/v3/pushrules/global/room/{}", enc(room)),
            &user.access_token,
            json!({"actions": ["dont_notify"]}),
        )
        .await;
    assert_eq!(status, 200, "{body}");
}

async fn push_rule(
    server: &TestServer,
    user: &TestUser,
    kind: &str,
    rule_id: &str,
) -> (StatusCode, Value) {
    server
        .get(
            &format!(
                "/_matrix/client/v3/pushrules/global/{kind}/{}",
                enc(rule_id)
            ),
            &user.access_token,
        )
        .await
}

fn user_path(user: &TestUser, rest: &str) -> String {
    format!("/_matrix/client/v3/user/{}{rest}", enc(&user.user_id))
}

#[tokio::test]
async fn settings_follow_users_into_the_replacement() {
    for kind in test_backends() {
        let server = TestServer::start(kind).await;
        let alice = server.register("alice").await;
        let bob = server.register("bob").await;
        let old = server
            .create_room(
                &alice,
                json!({"room_version": "10", "preset": "public_chat"}),
            )
            .await;
        join(&server, &bob, &old).await;

        set_room_rule(&server, &alice, &old).await;
        set_room_rule(&server, &bob, &old).await;
        // An override rule on the room, named after it, disabled.
        let (status, body) = server
            .put(
                &format!("/_matrix/client/v3/pushrules/global/override/{}", enc(&old)),
                &bob.access_token,
                json!({"conditions": [{"kind": "event_match", "key": "room_id", "pattern": old}],
                       "actions": ["notify"]}),
            )
            .await;
        assert_eq!(status, 200, "{body}");
        let (status, _) = server
            .put(
                &format!(
                    "/_matrix/client/v3/pushrules/global/override/{}/enabled",
                    enc(&old)
                ),
                &bob.access_token,
                json!({"enabled": false}),
            )
            .await;
        assert_eq!(status, 200);
        let (status, _) = server
            .put(
                &user_path(&bob, &format!("/rooms/{}/tags/m.favourite", enc(&old))),
                &bob.access_token,
                json!({"order": 0.5}),
            )
            .await;
        assert_eq!(status, 200);
        let (status, _) = server
            .put(
                &user_path(&bob, "/account_data/m.direct"),
                &bob.access_token,
                json!({&alice.user_id: [old]}),
            )
            .await;
        assert_eq!(status, 200);

        let new = must_upgrade(&server, &alice, &old, json!({"new_version": "11"})).await;

        // Alice joined the replacement by creating it: her rule followed.
        let (status, rule) = push_rule(&server, &alice, "room", &new).await;
        assert_eq!(status, 200, "{rule}");
        assert_eq!(rule["actions"], json!(["dont_notify"]));
        // Bob's settings wait for his join.
        let (status, _) = push_rule(&server, &bob, "room", &new).await;
        assert_eq!(status, 404);
        join(&server, &bob, &new).await;
        let (status, rule) = push_rule(&server, &bob, "room", &new).await;
        assert_eq!(status, 200, "{rule}");
        assert_eq!(rule["actions"], json!(["dont_notify"]));
        let (status, rule) = push_rule(&server, &bob, "override", &new).await;
        assert_eq!(status, 200, "{rule}");
        assert_eq!(rule["enabled"], false);
        assert_eq!(rule["conditions"][0]["pattern"], new);
        // The old room's rules stay.
        let (status, _) = push_rule(&server, &bob, "room", &old).await;
        assert_eq!(status, 200);
        let (_, tags) = server
            .get(
                &user_path(&bob, &format!("/rooms/{}/tags", enc(&new))),
                &bob.access_token,
            )
            .await;
        assert_eq!(tags, json!({"tags": {"m.favourite": {"order": 0.5}}}));
        let (_, direct) = server
            .get(
                &user_path(&bob, "/account_data/m.direct"),
                &bob.access_token,
            )
            .await;
        assert_eq!(direct, json!({&alice.user_id: [old, new]}));

        // A replacement a client builds itself (createRoom with a predecessor) works the same
        // for its creator.
        let other = server
            .create_room(&bob, json!({"room_version": "10", "preset": "public_chat"}))
            .await;
        set_room_rule(&server, &bob, &other).await;
        let manual = server
            .create_room(
                &bob,
                json!({"room_version": "11", "preset": "public_chat",
                       "creation_content": {"predecessor": {"room_id": other}}}),
            )
            .await;
        let (status, rule) = push_rule(&server, &bob, "room", &manual).await;
        assert_eq!(status, 200, "{rule}");
        server.stop().await;
    }
}

/// Upgrades and account-key rooms (MSC4243.md Q8), on both databases. Into an account-key room
/// every user is carried by key: the old power levels' users need known keys, or the upgrade
/// is refused naming them and nothing is written; with known keys, power and bans arrive in key
/// form and clients read them by name. Within account-key rooms the key-form state is carried
/// as it is, also the ban of a key held unverified. Out of account keys: refused.
#[tokio::test]
async fn upgrades_into_and_within_account_key_rooms_carry_users_by_key() {
    use myelin_room_version::{KeyFormUserId, KeyPair};
    const AK: &str = "org.matrix.12.4243";
    /// A room's current state as stored (PDUs, so key form in account-key rooms).
    async fn stored_state(server: &TestServer, room: &str) -> Vec<Value> {
        let store = server.store();
        let nid = store.room(room).await.unwrap().unwrap().room_nid;
        store
            .current_state(nid, None)
            .await
            .unwrap()
            .iter()
            .map(|row| serde_json::from_str(&row.json).unwrap())
            .collect()
    }
    fn banned_keys(state: &[Value]) -> Vec<String> {
        let mut keys: Vec<String> = state
            .iter()
            .filter(|e| e["type"] == "m.room.member" && e["content"]["membership"] == "ban")
            .map(|e| e["state_key"].as_str().unwrap().to_owned())
            .collect();
        keys.sort();
        keys
    }
    for kind in test_backends() {
        let server = TestServer::start(kind).await;
        let alice = server.register("alice").await;
        let bob = server.register("bob").await;
        let carol = server.register("carol").await;
        let room = server
            .create_room(
                &alice,
                json!({"room_version": "12", "preset": "public_chat"}),
            )
            .await;
        join(&server, &bob, &room).await;
        join(&server, &carol, &room).await;
        let (status, body) = server
            .post(
                &format!("/_matrix/client/v3/rooms/{}/ban", enc(&room)),
                &alice.access_token,
                json!({"user_id": carol.user_id}),
            )
            .await;
        assert_eq!(status, 200, "{body}");
        let (_, mut power) = state(&server, &alice, &room, "m.room.power_levels", "").await;
        power["users"][bob.user_id.as_str()] = json!(50);
        power["users"]["@stranger:elsewhere.example"] = json!(10);
        put_state(
            &server,
            &alice,
            &room,
            "m.room.power_levels",
            "",
            power.clone(),
        )
        .await;

        // A user of the power levels whose key is unknown: refused before anything is written.
        let rooms_before = joined_rooms(&server, &alice).await;
        let (status, body) = upgrade(&server, &alice, &room, json!({"new_version": AK})).await;
        assert_eq!(status, 400, "{kind:?}: {body}");
        assert_eq!(body["errcode"], "M_INVALID_PARAM", "{kind:?}");
        assert!(
            body["error"]
                .as_str()
                .unwrap()
                .contains("@stranger:elsewhere.example"),
            "{kind:?}: {body}"
        );
        assert_eq!(
            joined_rooms(&server, &alice).await,
            rooms_before,
            "{kind:?}"
        );
        let (status, _) = state(&server, &alice, &room, "m.room.tombstone", "").await;
        assert_eq!(status, 404, "{kind:?}: the old room was not tombstoned");

        // Without them, the room upgrades; power and the ban arrive by key.
        power["users"]
            .as_object_mut()
            .unwrap()
            .remove("@stranger:elsewhere.example");
        put_state(&server, &alice, &room, "m.room.power_levels", "", power).await;
        let keyed = must_upgrade(&server, &alice, &room, json!({"new_version": AK})).await;
        let (_, create) = state(&server, &alice, &keyed, "m.room.create", "").await;
        assert_eq!(create["room_version"], AK, "{kind:?}");
        assert_eq!(create["predecessor"]["room_id"], json!(room), "{kind:?}");
        let (_, new_power) = state(&server, &alice, &keyed, "m.room.power_levels", "").await;
        assert_eq!(
            new_power["users"][bob.user_id.as_str()],
            50,
            "{kind:?}: {new_power}"
        );
        let (status, ban) = state(&server, &alice, &keyed, "m.room.member", &carol.user_id).await;
        assert_eq!(status, 200, "{kind:?}: {ban}");
        assert_eq!(ban["membership"], "ban", "{kind:?}");
        let stored = stored_state(&server, &keyed).await;
        let stored_power = stored
            .iter()
            .find(|e| e["type"] == "m.room.power_levels")
            .unwrap();
        let users: Vec<&String> = stored_power["content"]["users"]
            .as_object()
            .unwrap()
            .keys()
            .collect();
        assert!(
            !users.is_empty() && users.iter().all(|u| KeyFormUserId::parse(u).is_ok()),
            "{kind:?}: {stored_power}"
        );
        let carol_key = server
            .store()
            .local_account_key("carol", server.name())
            .await
            .unwrap()
            .unwrap()
            .user_id;
        assert_eq!(banned_keys(&stored), vec![carol_key.clone()], "{kind:?}");
        join(&server, &bob, &keyed).await;

        // Within account-key rooms, also a ban of a key this server holds unverified.
        let stranger = {
            use base64::Engine as _;
            base64::engine::general_purpose::URL_SAFE_NO_PAD
                .encode(KeyPair::from_seed(&[11; 32]).public_key())
        };
        server
            .store()
            .record_remote_account_keys(
                "elsewhere.example",
                &[(
                    stranger.as_str(),
                    myelin_store::RemoteKeyVerdict::Unverified {
                        outcome: "unknown",
                        next_attempt_ts: i64::MAX,
                    },
                )],
                1,
            )
            .await
            .unwrap();
        let stranger = format!("@{stranger}:elsewhere.example");
        let (status, body) = server
            .post(
                &format!("/_matrix/client/v3/rooms/{}/ban", enc(&keyed)),
                &alice.access_token,
                json!({"user_id": stranger}),
            )
            .await;
        assert_eq!(status, 200, "{kind:?}: a ban by key: {body}");
        let newer = must_upgrade(&server, &alice, &keyed, json!({"new_version": AK})).await;
        let (_, newer_power) = state(&server, &alice, &newer, "m.room.power_levels", "").await;
        assert_eq!(newer_power["users"][bob.user_id.as_str()], 50, "{kind:?}");
        let mut expected = vec![carol_key, stranger];
        expected.sort();
        assert_eq!(
            banned_keys(&stored_state(&server, &newer).await),
            expected,
            "{kind:?}"
        );

        // Out of account keys: refused, nothing written.
        let rooms_before = joined_rooms(&server, &alice).await;
        let (status, body) = upgrade(&server, &alice, &newer, json!({"new_version": "12"})).await;
        assert_eq!(status, 400, "{kind:?}: {body}");
        assert_eq!(body["errcode"], "M_UNSUPPORTED_ROOM_VERSION", "{kind:?}");
        assert_eq!(
            joined_rooms(&server, &alice).await,
            rooms_before,
            "{kind:?}"
        );
        server.stop().await;
    }
}

/// `additional_creators` of an upgrade into an account-key room may name another server's
/// account whose key this server verified elsewhere, when exactly one key is verified under
/// that name (MSC4243.md Q8); a name with several verified keys is refused, nothing written.
#[tokio::test]
async fn account_key_upgrades_take_creators_by_a_uniquely_verified_name() {
    use myelin_room_version::KeyPair;
    const AK: &str = "org.matrix.12.4243";
    fn key(seed: u8) -> String {
        use base64::Engine as _;
        base64::engine::general_purpose::URL_SAFE_NO_PAD
            .encode(KeyPair::from_seed(&[seed; 32]).public_key())
    }
    for kind in test_backends() {
        let server = TestServer::start(kind).await;
        let alice = server.register("alice").await;
        let room = server
            .create_room(&alice, json!({"room_version": AK, "preset": "public_chat"}))
            .await;
        let (dana, eve_1, eve_2) = (key(21), key(22), key(23));
        for (key, name) in [(&dana, "dana"), (&eve_1, "eve"), (&eve_2, "eve")] {
            server
                .store()
                .record_remote_account_keys(
                    "elsewhere.example",
                    &[(
                        key.as_str(),
                        myelin_store::RemoteKeyVerdict::Verified { account_name: name },
                    )],
                    1,
                )
                .await
                .unwrap();
        }
        let rooms_before = joined_rooms(&server, &alice).await;
        let (status, body) = upgrade(
            &server,
            &alice,
            &room,
            json!({"new_version": AK, "additional_creators": ["@eve:elsewhere.example"]}),
        )
        .await;
        assert_eq!(status, 400, "{kind:?}: {body}");
        assert_eq!(body["errcode"], "M_INVALID_PARAM", "{kind:?}");
        assert_eq!(
            joined_rooms(&server, &alice).await,
            rooms_before,
            "{kind:?}"
        );

        let new = must_upgrade(
            &server,
            &alice,
            &room,
            json!({"new_version": AK, "additional_creators": ["@dana:elsewhere.example"]}),
        )
        .await;
        let store = server.store();
        let nid = store.room(&new).await.unwrap().unwrap().room_nid;
        let create = store
            .current_state(nid, Some(&[("m.room.create".to_owned(), String::new())]))
            .await
            .unwrap();
        let create: Value = serde_json::from_str(&create[0].json).unwrap();
        assert_eq!(
            create["content"]["additional_creators"],
            json!([format!("@{dana}:elsewhere.example")]),
            "{kind:?}: {create}"
        );
        server.stop().await;
    }
}

//! Operations that take several transactions, cut short in the middle and finished after a
//! restart, on both databases: `createRoom` (after the room row, after the creator's join), a
//! profile change's fan-out into the user's rooms, and deactivation's leaving of the rooms.
//!
//! A crash point (the `failpoints` feature's `fail` points, scoped to one user by their
//! argument) makes the operation stop there as if the process had died: nothing after it
//! runs, nothing before it is undone. Each test first shows the half-done state the crash
//! left, then restarts the server and shows the operation finished.

use myelin_service::fail;
use myelin_testkit::{TestServer, TestUser, enc, test_backends};
use reqwest::StatusCode;
use serde_json::{Value, json};

/// Makes the crash point `name` fire for `user` until the guard drops.
struct CrashPoint(&'static str);

impl CrashPoint {
    fn arm(name: &'static str, user: &TestUser) -> Self {
        fail::cfg(name, &format!("return({})", user.user_id)).expect("failpoint configured");
        CrashPoint(name)
    }
}

impl Drop for CrashPoint {
    fn drop(&mut self) {
        fail::remove(self.0);
    }
}

async fn restart(server: &mut TestServer) {
    server.restart().await;
    server.services().operations_resumed().await;
}

async fn joined_rooms(server: &TestServer, user: &TestUser) -> Vec<String> {
    let (status, body) = server
        .get("/_matrix/client/v3/joined_rooms", &user.access_token)
        .await;
    assert_eq!(status, 200, "{body}");
    serde_json::from_value(body["joined_rooms"].clone()).unwrap()
}

/// The room's current state as `(type, state_key) -> content`, read by `user`.
async fn state(
    server: &TestServer,
    user: &TestUser,
    room: &str,
) -> std::collections::HashMap<(String, String), Value> {
    let (status, body) = server
        .get(
            &format!("/_matrix/client/v3/rooms/{}/state", enc(room)),
            &user.access_token,
        )
        .await;
    assert_eq!(status, 200, "{body}");
    body.as_array()
        .unwrap()
        .iter()
        .map(|event| {
            (
                (
                    event["type"].as_str().unwrap().to_owned(),
                    event["state_key"].as_str().unwrap().to_owned(),
                ),
                event["content"].clone(),
            )
        })
        .collect()
}

/// The types of the state events in the room's timeline, oldest first.
async fn state_event_types(server: &TestServer, user: &TestUser, room: &str) -> Vec<String> {
    let (status, body) = server
        .get(
            &format!(
                "/_matrix/client/v3/rooms/{}/messages?dir=f&limit=100",
                enc(room)
            ),
            &user.access_token,
        )
        .await;
    assert_eq!(status, 200, "{body}");
    body["chunk"]
        .as_array()
        .unwrap()
        .iter()
        .filter(|event| event.get("state_key").is_some())
        .map(|event| event["type"].as_str().unwrap().to_owned())
        .collect()
}

async fn journaled(server: &TestServer, kind: &str, user: &TestUser) -> usize {
    server
        .store()
        .pending_operations(kind, &user.user_id)
        .await
        .unwrap()
        .len()
}

async fn login(server: &TestServer, user: &TestUser) -> myelin_testkit::Reply {
    server
        .call(
            reqwest::Method::POST,
            "/_matrix/client/v3/login",
            None,
            Some(json!({
                "type": "m.login.password",
                "identifier": {"type": "m.id.user", "user": user.user_id},
                "password": user.password,
            })),
        )
        .await
}

fn create_request(invitee: &TestUser) -> Value {
    json!({
        "preset": "public_chat",
        "visibility": "public",
        "name": "Half a room",
        "topic": "finished after a crash",
        "invite": [invitee.user_id],
    })
}

/// The room the crashed `createRoom` built, checked whole: the creator joined, every requested
/// event there once, the invitee invited (in their `/sync`), the room in the directory.
async fn assert_room_complete(server: &TestServer, creator: &TestUser, invitee: &TestUser) {
    let rooms = joined_rooms(server, creator).await;
    assert_eq!(rooms.len(), 1, "the creator is in the room: {rooms:?}");
    let room = &rooms[0];
    let state = state(server, creator, room).await;
    let at = |event_type: &str, state_key: &str| {
        state
            .get(&(event_type.to_owned(), state_key.to_owned()))
            .cloned()
            .unwrap_or(Value::Null)
    };
    assert_eq!(at("m.room.member", &creator.user_id)["membership"], "join");
    assert_eq!(at("m.room.name", "")["name"], "Half a room");
    assert_eq!(at("m.room.topic", "")["topic"], "finished after a crash");
    assert_eq!(at("m.room.join_rules", "")["join_rule"], "public");
    assert_eq!(
        at("m.room.history_visibility", "")["history_visibility"],
        "shared"
    );
    assert!(at("m.room.power_levels", "").is_object(), "{state:?}");
    assert_eq!(
        at("m.room.member", &invitee.user_id)["membership"],
        "invite"
    );

    let mut types = state_event_types(server, creator, room).await;
    types.sort();
    assert_eq!(
        types,
        [
            "m.room.create",
            "m.room.history_visibility",
            "m.room.join_rules",
            "m.room.member",
            "m.room.member",
            "m.room.name",
            "m.room.power_levels",
            "m.room.topic",
        ],
        "each event of the build once"
    );

    let (status, sync) = server
        .get("/_matrix/client/v3/sync", &invitee.access_token)
        .await;
    assert_eq!(status, 200, "{sync}");
    assert!(
        sync["rooms"]["invite"].get(room.as_str()).is_some(),
        "the invitee sees the invite: {sync}"
    );
    let (status, directory) = server
        .get("/_matrix/client/v3/publicRooms", &creator.access_token)
        .await;
    assert_eq!(status, 200, "{directory}");
    let listed: Vec<&Value> = directory["chunk"]
        .as_array()
        .unwrap()
        .iter()
        .filter(|entry| entry["room_id"] == room.as_str())
        .collect();
    assert_eq!(listed.len(), 1, "{directory}");
    assert_eq!(listed[0]["name"], "Half a room");
    assert_eq!(listed[0]["num_joined_members"], 1);
    assert_eq!(journaled(server, "create_room", creator).await, 0);
}

#[tokio::test]
async fn create_room_cut_short_after_the_room_row_is_finished_after_a_restart() {
    for kind in test_backends() {
        let mut server = TestServer::start(kind).await;
        let alice = server.register("row_alice").await;
        let bob = server.register("row_bob").await;
        {
            let _crash = CrashPoint::arm("create_room::after_room_row", &alice);
            let (status, body) = server
                .post(
                    "/_matrix/client/v3/createRoom",
                    &alice.access_token,
                    create_request(&bob),
                )
                .await;
            assert_eq!(
                status,
                StatusCode::INTERNAL_SERVER_ERROR,
                "{kind:?}: {body}"
            );
        }
        // The crash left the room row alone: no event, nobody in it.
        assert!(joined_rooms(&server, &alice).await.is_empty());
        assert_eq!(journaled(&server, "create_room", &alice).await, 1);

        restart(&mut server).await;
        assert_room_complete(&server, &alice, &bob).await;
        server.stop().await;
    }
}

#[tokio::test]
async fn create_room_cut_short_after_the_creators_join_is_finished_after_a_restart() {
    for kind in test_backends() {
        let mut server = TestServer::start(kind).await;
        let alice = server.register("join_alice").await;
        let bob = server.register("join_bob").await;
        {
            let _crash = CrashPoint::arm("create_room::after_join", &alice);
            let (status, body) = server
                .post(
                    "/_matrix/client/v3/createRoom",
                    &alice.access_token,
                    create_request(&bob),
                )
                .await;
            assert_eq!(
                status,
                StatusCode::INTERNAL_SERVER_ERROR,
                "{kind:?}: {body}"
            );
        }
        // Half a room: the creator is in it, with no power levels, name or invite yet.
        let rooms = joined_rooms(&server, &alice).await;
        assert_eq!(rooms.len(), 1, "{kind:?}");
        let half = state(&server, &alice, &rooms[0]).await;
        assert!(
            !half.contains_key(&("m.room.name".to_owned(), String::new())),
            "{kind:?}: {half:?}"
        );
        assert!(!half.contains_key(&("m.room.power_levels".to_owned(), String::new())));

        restart(&mut server).await;
        assert_room_complete(&server, &alice, &bob).await;
        server.stop().await;
    }
}

#[tokio::test]
async fn a_profile_fan_out_cut_short_is_finished_after_a_restart() {
    for kind in test_backends() {
        let mut server = TestServer::start(kind).await;
        let carol = server.register("fan_carol").await;
        let rooms = [
            server.create_room(&carol, json!({"name": "one"})).await,
            server.create_room(&carol, json!({"name": "two"})).await,
        ];
        let displayname = |state: &std::collections::HashMap<(String, String), Value>| {
            state[&("m.room.member".to_owned(), carol.user_id.clone())]["displayname"].clone()
        };
        {
            let _crash = CrashPoint::arm("profile::after_first_room", &carol);
            let (status, body) = server
                .put(
                    &format!(
                        "/_matrix/client/v3/profile/{}/displayname",
                        enc(&carol.user_id)
                    ),
                    &carol.access_token,
                    json!({"displayname": "Carol Renamed"}),
                )
                .await;
            assert_eq!(
                status,
                StatusCode::INTERNAL_SERVER_ERROR,
                "{kind:?}: {body}"
            );
        }
        // One room has the new name, the other still the old one.
        let mut names = Vec::new();
        for room in &rooms {
            names.push(displayname(&state(&server, &carol, room).await));
        }
        names.sort_by_key(|name| name.to_string());
        assert_eq!(
            names,
            [json!("Carol Renamed"), json!("fan_carol")],
            "{kind:?}"
        );
        assert_eq!(journaled(&server, "profile", &carol).await, 1);

        restart(&mut server).await;
        for room in &rooms {
            assert_eq!(
                displayname(&state(&server, &carol, room).await),
                "Carol Renamed",
                "{kind:?}: {room}"
            );
            let members = state_event_types(&server, &carol, room)
                .await
                .into_iter()
                .filter(|t| t == "m.room.member")
                .count();
            assert_eq!(members, 2, "{kind:?}: the join, then one update: {room}");
        }
        assert_eq!(journaled(&server, "profile", &carol).await, 0);
        server.stop().await;
    }
}

#[tokio::test]
async fn a_deactivation_cut_short_is_finished_after_a_restart() {
    for kind in test_backends() {
        let mut server = TestServer::start(kind).await;
        let dave = server.register("gone_dave").await;
        let erin = server.register("gone_erin").await;
        let mut rooms = Vec::new();
        for name in ["one", "two"] {
            let room = server
                .create_room(&dave, json!({"preset": "public_chat", "name": name}))
                .await;
            let (status, body) = server
                .post(
                    &format!("/_matrix/client/v3/join/{}", enc(&room)),
                    &erin.access_token,
                    json!({}),
                )
                .await;
            assert_eq!(status, 200, "{body}");
            rooms.push(room);
        }
        let membership = |state: &std::collections::HashMap<(String, String), Value>| {
            state[&("m.room.member".to_owned(), dave.user_id.clone())]["membership"].clone()
        };
        {
            let _crash = CrashPoint::arm("deactivate::after_first_room", &dave);
            let (_, challenge) = server
                .post(
                    "/_matrix/client/v3/account/deactivate",
                    &dave.access_token,
                    json!({}),
                )
                .await;
            let (status, body) = server
                .post(
                    "/_matrix/client/v3/account/deactivate",
                    &dave.access_token,
                    json!({"auth": {
                        "type": "m.login.password",
                        "identifier": {"type": "m.id.user", "user": dave.user_id},
                        "password": dave.password,
                        "session": challenge["session"],
                    }}),
                )
                .await;
            assert_eq!(
                status,
                StatusCode::INTERNAL_SERVER_ERROR,
                "{kind:?}: {body}"
            );
        }
        // Deactivated from the first step on; one room left, the other not yet.
        let (status, body) = login(&server, &dave).await;
        assert_eq!(status, StatusCode::FORBIDDEN, "{kind:?}: {body}");
        assert_eq!(body["errcode"], "M_USER_DEACTIVATED");
        let mut memberships = Vec::new();
        for room in &rooms {
            memberships.push(membership(&state(&server, &erin, room).await));
        }
        memberships.sort_by_key(|m| m.to_string());
        assert_eq!(memberships, [json!("join"), json!("leave")], "{kind:?}");

        restart(&mut server).await;
        for room in &rooms {
            assert_eq!(
                membership(&state(&server, &erin, room).await),
                "leave",
                "{kind:?}: {room}"
            );
        }
        let (status, body) = login(&server, &dave).await;
        assert_eq!(status, StatusCode::FORBIDDEN, "{kind:?}: {body}");
        assert_eq!(journaled(&server, "deactivate", &dave).await, 0);
        server.stop().await;
    }
}

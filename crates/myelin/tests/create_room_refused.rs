//! `createRoom` requests one of whose steps the room's rules (or the server's) refuse are
//! refused whole, before anything is written: the client gets the step's error, and there is
//! no room (no room row, no event, the creator in no new room), no journal entry, no alias and
//! no directory entry. Each refused request has its positive control: the same request without
//! the refused part creates the room, alias and directory entry included.

use myelin_testkit::{TestServer, TestUser, enc, test_backends};
use reqwest::StatusCode;
use serde_json::{Value, json};

/// What a refused request must not have left, and what a created room must have.
async fn rooms_of(server: &TestServer, user: &TestUser) -> (Vec<Value>, Vec<String>, usize) {
    let (status, body) = server
        .get("/_matrix/client/v3/joined_rooms", &user.access_token)
        .await;
    assert_eq!(status, 200, "{body}");
    let joined = body["joined_rooms"].as_array().unwrap().clone();
    let rows = server
        .store()
        .rooms_created_by(&user.user_id)
        .await
        .unwrap();
    let journal = server
        .store()
        .pending_operations("create_room", &user.user_id)
        .await
        .unwrap()
        .len();
    (joined, rows, journal)
}

async fn alias_room(server: &TestServer, user: &TestUser, alias: &str) -> (StatusCode, Value) {
    server
        .get(
            &format!("/_matrix/client/v3/directory/room/{}", enc(alias)),
            &user.access_token,
        )
        .await
}

async fn public_rooms(server: &TestServer, user: &TestUser) -> Vec<Value> {
    let (status, body) = server
        .get("/_matrix/client/v3/publicRooms", &user.access_token)
        .await;
    assert_eq!(status, 200, "{body}");
    body["chunk"].as_array().unwrap().clone()
}

/// Asserts `request` is refused with `status`/`errcode` and leaves nothing, then that
/// `control` (the request without its refused part) creates the room whole. `name` is the
/// alias's localpart (fresh per case).
async fn refused_then_control(
    server: &TestServer,
    user: &TestUser,
    name: &str,
    request: Value,
    control: Value,
    status: StatusCode,
    errcode: &str,
) {
    let with_alias = |mut body: Value| {
        body["room_alias_name"] = json!(name);
        body["visibility"] = json!("public");
        body
    };
    let alias = format!("#{name}:{}", server.name());
    let before = rooms_of(server, user).await;
    let listed_before = public_rooms(server, user).await.len();

    let (got, body) = server
        .post(
            "/_matrix/client/v3/createRoom",
            &user.access_token,
            with_alias(request),
        )
        .await;
    assert_eq!(got, status, "{name}: {body}");
    assert_eq!(body["errcode"], errcode, "{name}: {body}");
    assert_eq!(
        rooms_of(server, user).await,
        before,
        "{name}: no room joined, no room row, no journal entry"
    );
    let (got, body) = alias_room(server, user, &alias).await;
    assert_eq!(
        got,
        StatusCode::NOT_FOUND,
        "{name}: the alias is free: {body}"
    );
    assert_eq!(
        public_rooms(server, user).await.len(),
        listed_before,
        "{name}: nothing listed"
    );

    // Positive control: without the refused part, the same request makes the room.
    let (got, body) = server
        .post(
            "/_matrix/client/v3/createRoom",
            &user.access_token,
            with_alias(control),
        )
        .await;
    assert_eq!(got, StatusCode::OK, "{name} (control): {body}");
    let room_id = body["room_id"].as_str().unwrap().to_owned();
    let (joined, rows, journal) = rooms_of(server, user).await;
    assert_eq!(joined.len(), before.0.len() + 1, "{name} (control)");
    assert!(joined.contains(&json!(room_id)), "{name} (control)");
    assert_eq!(rows.len(), before.1.len() + 1, "{name} (control)");
    assert_eq!(journal, 0, "{name} (control): the build finished");
    let (got, body) = alias_room(server, user, &alias).await;
    assert_eq!(got, StatusCode::OK, "{name} (control): {body}");
    assert_eq!(body["room_id"], room_id.as_str());
    assert!(
        public_rooms(server, user)
            .await
            .iter()
            .any(|entry| entry["room_id"] == room_id.as_str()),
        "{name} (control): listed"
    );
}

fn state_event(event_type: &str, state_key: &str, content: Value) -> Value {
    json!({"type": event_type, "state_key": state_key, "content": content})
}

#[tokio::test]
async fn a_create_room_with_a_refused_step_leaves_nothing_behind() {
    for kind in test_backends() {
        let server = TestServer::start(kind).await;
        let alice = server.register("alice").await;
        let bob = server.register("bob").await;
        let remote = "@someone:remote.example";

        // The creator's power levels let the power levels through, but lock the creator out
        // of the preset's join rules that come after them (room version 10: the creator's
        // power is what the power levels say).
        refused_then_control(
            &server,
            &alice,
            "locked_out",
            json!({"room_version": "10", "preset": "public_chat",
                   "power_level_content_override": {"users": {alice.user_id.clone(): 10}}}),
            json!({"room_version": "10", "preset": "public_chat",
                   "power_level_content_override": {"users": {alice.user_id.clone(): 100}}}),
            StatusCode::FORBIDDEN,
            "M_FORBIDDEN",
        )
        .await;

        // An initial_state event the auth rules refuse by itself: a join for someone else.
        refused_then_control(
            &server,
            &alice,
            "join_for_bob",
            json!({"preset": "public_chat", "initial_state": [
                state_event("m.room.member", &bob.user_id, json!({"membership": "join"}))]}),
            json!({"preset": "public_chat", "initial_state": [
                state_event("m.room.member", &bob.user_id, json!({"membership": "ban"}))]}),
            StatusCode::FORBIDDEN,
            "M_FORBIDDEN",
        )
        .await;

        // initial_state power levels that lock the creator out of the name set after them.
        refused_then_control(
            &server,
            &alice,
            "name_locked",
            json!({"room_version": "10", "name": "Locked", "initial_state": [
                state_event("m.room.power_levels", "", json!({
                    "users": {alice.user_id.clone(): 100}, "events": {"m.room.name": 101}}))]}),
            json!({"room_version": "10", "name": "Locked", "initial_state": [
                state_event("m.room.power_levels", "", json!({
                    "users": {alice.user_id.clone(): 100}, "events": {"m.room.name": 100}}))]}),
            StatusCode::FORBIDDEN,
            "M_FORBIDDEN",
        )
        .await;

        // A kick of someone who is not in the room (the auth rules would let it through; the
        // membership rules do not).
        refused_then_control(
            &server,
            &alice,
            "kick_nobody",
            json!({"initial_state": [
                state_event("m.room.member", &bob.user_id, json!({"membership": "leave"}))]}),
            json!({"invite": [bob.user_id]}),
            StatusCode::FORBIDDEN,
            "M_FORBIDDEN",
        )
        .await;

        // Bad content shapes and event types that are no state of a new room: 400 M_BAD_JSON.
        for (name, event) in [
            (
                "content_not_object",
                state_event("m.room.topic", "", json!("a string")),
            ),
            (
                "second_create",
                state_event("m.room.create", "", json!({"room_version": "10"})),
            ),
            (
                "redaction_state",
                state_event("m.room.redaction", "", json!({"redacts": "$x"})),
            ),
            (
                "member_no_membership",
                state_event("m.room.member", &alice.user_id, json!({"displayname": "A"})),
            ),
            (
                "member_bad_key",
                state_event("m.room.member", "not a user", json!({"membership": "join"})),
            ),
            (
                "canonical_float",
                state_event("org.example.state", "", json!({"number": 1.5})),
            ),
            // Power levels of a shape only older versions' auth rules take (as Synapse: 400).
            (
                "string_power_level",
                state_event("m.room.power_levels", "", json!({"ban": "50"})),
            ),
            (
                "users_not_object",
                state_event("m.room.power_levels", "", json!({"users": ["@a:b"]})),
            ),
        ] {
            refused_then_control(
                &server,
                &alice,
                name,
                json!({"preset": "private_chat", "initial_state": [event]}),
                json!({"preset": "private_chat", "initial_state": [
                    state_event("m.room.topic", "", json!({"topic": "fine"}))]}),
                StatusCode::BAD_REQUEST,
                "M_BAD_JSON",
            )
            .await;
        }

        // The same through power_level_content_override.
        refused_then_control(
            &server,
            &alice,
            "override_string_level",
            json!({"power_level_content_override": {"events": {"m.room.name": "50"}}}),
            json!({"power_level_content_override": {"events": {"m.room.name": 50}}}),
            StatusCode::BAD_REQUEST,
            "M_BAD_JSON",
        )
        .await;

        // An invite of another server's user cannot be decided before the room exists: it
        // goes in `invite`, not `initial_state`.
        refused_then_control(
            &server,
            &alice,
            "remote_member",
            json!({"initial_state": [
                state_event("m.room.member", remote, json!({"membership": "invite"}))]}),
            json!({"initial_state": []}),
            StatusCode::BAD_REQUEST,
            "M_INVALID_PARAM",
        )
        .await;

        // A canonical alias that does not point at the new room.
        refused_then_control(
            &server,
            &alice,
            "foreign_canonical",
            json!({"initial_state": [state_event("m.room.canonical_alias", "",
                json!({"alias": format!("#elsewhere:{}", server.name())}))]}),
            json!({"initial_state": [state_event("m.room.canonical_alias", "",
                json!({"alias": format!("#foreign_canonical:{}", server.name())}))]}),
            StatusCode::BAD_REQUEST,
            "M_BAD_ALIAS",
        )
        .await;

        // A name or topic that is not a string.
        for (name, bad) in [
            ("name_not_string", json!({"name": 5})),
            ("topic_not_string", json!({"topic": {"text": "x"}})),
        ] {
            refused_then_control(
                &server,
                &alice,
                name,
                bad,
                json!({"name": "Named", "topic": "Topical"}),
                StatusCode::BAD_REQUEST,
                "M_BAD_JSON",
            )
            .await;
        }

        // A name that makes its event too large.
        refused_then_control(
            &server,
            &alice,
            "huge_name",
            json!({"name": "n".repeat(70_000)}),
            json!({"name": "n".repeat(100)}),
            StatusCode::PAYLOAD_TOO_LARGE,
            "M_TOO_LARGE",
        )
        .await;

        server.stop().await;
    }
}

/// Two requests for one alias at once: one gets the room and the alias, the other is refused
/// with `M_ROOM_IN_USE` and leaves no room (the alias is written with the room row).
#[tokio::test]
async fn concurrent_requests_for_one_alias_leave_one_room() {
    for kind in test_backends() {
        let server = TestServer::start(kind).await;
        let alice = server.register("alice").await;
        let request = || {
            server.post(
                "/_matrix/client/v3/createRoom",
                &alice.access_token,
                json!({"room_alias_name": "contested", "name": "Contested"}),
            )
        };
        let ((one, one_body), (two, two_body)) = tokio::join!(request(), request());
        let mut statuses = [one, two];
        statuses.sort();
        assert_eq!(
            statuses,
            [StatusCode::OK, StatusCode::BAD_REQUEST],
            "{kind:?}: {one_body} {two_body}"
        );
        let refused = if one == StatusCode::OK {
            two_body
        } else {
            one_body
        };
        assert_eq!(refused["errcode"], "M_ROOM_IN_USE", "{refused}");
        let (joined, rows, journal) = rooms_of(&server, &alice).await;
        assert_eq!(joined.len(), 1, "{kind:?}");
        assert_eq!(rows.len(), 1, "{kind:?}: one room row");
        assert_eq!(journal, 0);
        server.stop().await;
    }
}

/// `PUT /state` of power levels with a level that is not an integer: 400 `M_BAD_JSON` (as
/// Synapse), not the auth rules' 403, and nothing sent; the same with integers goes through.
#[tokio::test]
async fn power_levels_with_levels_that_are_not_integers_are_bad_json() {
    for kind in test_backends() {
        let server = TestServer::start(kind).await;
        let alice = server.register("alice").await;
        let room = server
            .create_room(&alice, json!({"room_version": "10"}))
            .await;
        let path = format!(
            "/_matrix/client/v3/rooms/{}/state/m.room.power_levels/",
            enc(&room)
        );
        let (_, before) = server.get(&path, &alice.access_token).await;
        for bad in [
            json!({"users": {alice.user_id.clone(): 100}, "kick": "50"}),
            json!({"users": {alice.user_id.clone(): "100"}}),
            json!({"users": {alice.user_id.clone(): 100}, "notifications": {"room": true}}),
        ] {
            let (status, body) = server.put(&path, &alice.access_token, bad.clone()).await;
            assert_eq!(status, StatusCode::BAD_REQUEST, "{kind:?} {bad}: {body}");
            assert_eq!(body["errcode"], "M_BAD_JSON", "{bad}: {body}");
            let (_, now) = server.get(&path, &alice.access_token).await;
            assert_eq!(now, before, "{kind:?} {bad}: nothing sent");
        }
        let good = json!({"users": {alice.user_id.clone(): 100}, "kick": 60});
        let (status, body) = server.put(&path, &alice.access_token, good.clone()).await;
        assert_eq!(status, StatusCode::OK, "{kind:?}: {body}");
        let (_, now) = server.get(&path, &alice.access_token).await;
        assert_eq!(now, good);
        server.stop().await;
    }
}

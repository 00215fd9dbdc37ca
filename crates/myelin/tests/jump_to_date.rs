//! `GET /rooms/{roomId}/timestamp_to_event` (jump to date) on both databases: the closest event
//! in each direction with the timestamp itself included, nothing past either end, only events
//! the reader may see, the room gate, and the errors for bad parameters.

use std::time::Duration;

use myelin_testkit::{TestServer, TestUser, enc, test_backends};
use reqwest::StatusCode;
use serde_json::{Value, json};

/// Sends a message, then returns its id and `origin_server_ts`. Sleeps first so that no two
/// events of a test share a millisecond.
async fn send_text(server: &TestServer, user: &TestUser, room: &str, body: &str) -> (String, i64) {
    tokio::time::sleep(Duration::from_millis(5)).await;
    let (status, reply) = server
        .put(
            &format!(
                "/_matrix/client/v3/rooms/{}/send/m.room.message/{body}",
                enc(room)
            ),
            &user.access_token,
            json!({"msgtype": "m.text", "body": body}),
        )
        .await;
    assert_eq!(status, StatusCode::OK, "{reply}");
    let event_id = reply["event_id"].as_str().unwrap().to_owned();
    let (status, event) = server
        .get(
            &format!(
                "/_matrix/client/v3/rooms/{}/event/{}",
                enc(room),
                enc(&event_id)
            ),
            &user.access_token,
        )
        .await;
    assert_eq!(status, StatusCode::OK, "{event}");
    tokio::time::sleep(Duration::from_millis(5)).await;
    (event_id, event["origin_server_ts"].as_i64().unwrap())
}

async fn jump(
    server: &TestServer,
    user: &TestUser,
    room: &str,
    ts: impl std::fmt::Display,
    dir: &str,
) -> (StatusCode, Value) {
    server
        .get(
            &format!(
                "/_matrix/client/v1/rooms/{}/timestamp_to_event?ts={ts}&dir={dir}",
                enc(room)
            ),
            &user.access_token,
        )
        .await
}

#[tokio::test]
async fn closest_event_in_each_direction() {
    for kind in test_backends() {
        let server = TestServer::start(kind).await;
        let alice = server.register("alice").await;
        let room = server
            .create_room(&alice, json!({"preset": "public_chat"}))
            .await;
        let (a, a_ts) = send_text(&server, &alice, &room, "A").await;
        let (b, b_ts) = send_text(&server, &alice, &room, "B").await;
        assert!(a_ts < b_ts, "the sleeps separate A and B");

        // The timestamp itself counts, in both directions.
        let (status, body) = jump(&server, &alice, &room, a_ts, "f").await;
        assert_eq!(status, StatusCode::OK, "{body}");
        assert_eq!(body, json!({"event_id": a, "origin_server_ts": a_ts}));
        let (_, body) = jump(&server, &alice, &room, b_ts, "b").await;
        assert_eq!(body["event_id"], b, "{body}");

        // Between A and B: B going forwards, A going backwards.
        let (_, body) = jump(&server, &alice, &room, a_ts + 1, "f").await;
        assert_eq!(body["event_id"], b, "{body}");
        let (_, body) = jump(&server, &alice, &room, b_ts - 1, "b").await;
        assert_eq!(body["event_id"], a, "{body}");

        // Before A going backwards: the room's creation, not A.
        let (status, body) = jump(&server, &alice, &room, a_ts - 1, "b").await;
        assert_eq!(status, StatusCode::OK, "{body}");
        assert_ne!(body["event_id"], a, "{body}");
        assert!(body["origin_server_ts"].as_i64().unwrap() < a_ts, "{body}");

        // Nothing past either end.
        let (status, body) = jump(&server, &alice, &room, b_ts + 1, "f").await;
        assert_eq!(status, StatusCode::NOT_FOUND, "{body}");
        assert_eq!(body["errcode"], "M_NOT_FOUND");
        let (status, body) = jump(&server, &alice, &room, 0, "b").await;
        assert_eq!(status, StatusCode::NOT_FOUND, "{body}");
        assert_eq!(body["errcode"], "M_NOT_FOUND");
    }
}

#[tokio::test]
async fn only_visible_events_and_only_for_members() {
    for kind in test_backends() {
        let server = TestServer::start(kind).await;
        let alice = server.register("alice").await;
        let bob = server.register("bob").await;
        let room = server
            .create_room(
                &alice,
                json!({"preset": "public_chat", "initial_state": [{
                    "type": "m.room.history_visibility", "state_key": "",
                    "content": {"history_visibility": "joined"}}]}),
            )
            .await;
        let (a, a_ts) = send_text(&server, &alice, &room, "before bob").await;

        // Not a member (of a public room, or of no room at all): forbidden, as /messages.
        for target in [room.as_str(), "!unknown:localhost"] {
            let (status, body) = jump(&server, &bob, target, a_ts, "f").await;
            assert_eq!(status, StatusCode::FORBIDDEN, "{body}");
            assert_eq!(body["errcode"], "M_FORBIDDEN");
        }

        let (status, body) = server
            .post(
                &format!("/_matrix/client/v3/rooms/{}/join", enc(&room)),
                &bob.access_token,
                json!({}),
            )
            .await;
        assert_eq!(status, StatusCode::OK, "{body}");
        let (after, _) = send_text(&server, &alice, &room, "after bob").await;

        // Alice sees A; Bob, who joined after it in a `joined` room, does not: going forwards
        // he finds his own join.
        let (_, body) = jump(&server, &alice, &room, a_ts, "f").await;
        assert_eq!(body["event_id"], a, "{body}");
        let (status, body) = jump(&server, &bob, &room, a_ts, "f").await;
        assert_eq!(status, StatusCode::OK, "{body}");
        assert_ne!(body["event_id"], a, "{body}");
        let (status, body) = server
            .get(
                &format!(
                    "/_matrix/client/v3/rooms/{}/event/{}",
                    enc(&room),
                    body["event_id"].as_str().unwrap()
                ),
                &alice.access_token,
            )
            .await;
        assert_eq!(status, StatusCode::OK, "{body}");
        assert_eq!(body["type"], "m.room.member", "{body}");
        assert_eq!(body["state_key"], bob.user_id, "{body}");
        // Going backwards he skips A too, to the room's creation: the events before the
        // history visibility was set are `shared` (the default), so visible to a member now.
        let (status, body) = jump(&server, &bob, &room, a_ts, "b").await;
        assert_eq!(status, StatusCode::OK, "{body}");
        assert_ne!(body["event_id"], a, "{body}");
        assert!(body["origin_server_ts"].as_i64().unwrap() < a_ts, "{body}");
        let (_, body) = jump(&server, &bob, &room, i64::from(u32::MAX) * 1000, "b").await;
        assert_eq!(body["event_id"], after, "{body}");
    }
}

#[tokio::test]
async fn bad_parameters_are_invalid_param() {
    for kind in test_backends() {
        let server = TestServer::start(kind).await;
        let alice = server.register("alice").await;
        let room = server
            .create_room(&alice, json!({"preset": "public_chat"}))
            .await;
        let path = format!("/_matrix/client/v1/rooms/{}/timestamp_to_event", enc(&room));
        for query in [
            "ts=1&dir=x",
            "ts=1",
            "dir=f",
            "ts=abc&dir=f",
            "ts=-5&dir=b",
            "ts=1.5&dir=b",
        ] {
            let (status, body) = server
                .get(&format!("{path}?{query}"), &alice.access_token)
                .await;
            assert_eq!(status, StatusCode::BAD_REQUEST, "{query}: {body}");
            assert_eq!(body["errcode"], "M_INVALID_PARAM", "{query}: {body}");
        }
    }
}

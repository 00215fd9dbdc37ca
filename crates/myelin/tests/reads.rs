//! What clients read, on both databases, where the Complement suite found Myelin wanting:
//! `unsigned.membership` on every event served from a room's history, `/messages` in a room the
//! reader left, and sync's `leave` section (`include_leave`, a timeline limit of 0).

use myelin_testkit::{TestServer, TestUser, enc, test_backends};
use serde_json::{Value, json};

async fn send(server: &TestServer, user: &TestUser, room: &str, body: Value) -> String {
    let txn = format!("t{}", rand_suffix());
    let (status, reply) = server
        .put(
            &format!(
                "/_matrix/client/v3/rooms/{}/send/m.room.message/{txn}",
                enc(room)
            ),
            &user.access_token,
            body,
        )
        .await;
    assert_eq!(status, 200, "{reply}");
    reply["event_id"].as_str().unwrap().to_owned()
}

fn rand_suffix() -> u64 {
    use std::sync::atomic::{AtomicU64, Ordering};
    static NEXT: AtomicU64 = AtomicU64::new(0);
    NEXT.fetch_add(1, Ordering::Relaxed)
}

fn text(body: &str) -> Value {
    json!({"msgtype": "m.text", "body": body})
}

async fn get(server: &TestServer, user: &TestUser, path: &str) -> Value {
    let (status, reply) = server.get(path, &user.access_token).await;
    assert_eq!(status, 200, "{path}: {reply}");
    reply
}

async fn join(server: &TestServer, user: &TestUser, room: &str) {
    let (status, reply) = server
        .post(
            &format!("/_matrix/client/v3/join/{}", enc(room)),
            &user.access_token,
            json!({}),
        )
        .await;
    assert_eq!(status, 200, "{reply}");
}

async fn leave(server: &TestServer, user: &TestUser, room: &str) {
    let (status, reply) = server
        .post(
            &format!("/_matrix/client/v3/rooms/{}/leave", enc(room)),
            &user.access_token,
            json!({}),
        )
        .await;
    assert_eq!(status, 200, "{reply}");
}

/// The `unsigned.membership` of the event with `id` among `events`.
fn membership_of(events: &Value, id: &str) -> Value {
    let event = events
        .as_array()
        .unwrap_or_else(|| panic!("not a list: {events}"))
        .iter()
        .find(|e| e["event_id"] == id)
        .unwrap_or_else(|| panic!("{id} not in {events}"));
    event["unsigned"]["membership"].clone()
}

#[tokio::test]
async fn served_events_carry_the_readers_membership_at_them() {
    for kind in test_backends() {
        let server = TestServer::start(kind).await;
        let alice = server.register("alice").await;
        let bob = server.register("bob").await;
        let room = server
            .create_room(&alice, json!({"preset": "public_chat"}))
            .await;
        let before = send(&server, &alice, &room, text("prejoin")).await;
        join(&server, &bob, &room).await;
        let after = send(&server, &alice, &room, text("postjoin")).await;

        // Sync: "leave" on everything up to Bob's join, "join" from it on.
        let synced = get(&server, &bob, "/_matrix/client/v3/sync").await;
        let timeline = &synced["rooms"]["join"][&room]["timeline"]["events"];
        let mut joined = false;
        let mut seen = 0;
        for event in timeline.as_array().unwrap() {
            if event["type"] == "m.room.member" && event["state_key"] == bob.user_id.as_str() {
                joined = true;
            }
            let want = if joined { "join" } else { "leave" };
            assert_eq!(event["unsigned"]["membership"], want, "{event}");
            seen += 1;
        }
        assert!(joined && seen > 2, "{timeline}");

        // /messages, /event, /context.
        let messages = get(
            &server,
            &bob,
            &format!("/_matrix/client/v3/rooms/{}/messages?dir=b", enc(&room)),
        )
        .await;
        assert_eq!(membership_of(&messages["chunk"], &before), "leave");
        assert_eq!(membership_of(&messages["chunk"], &after), "join");
        for (id, want) in [(&before, "leave"), (&after, "join")] {
            let event = get(
                &server,
                &bob,
                &format!("/_matrix/client/v3/rooms/{}/event/{}", enc(&room), enc(id)),
            )
            .await;
            assert_eq!(event["unsigned"]["membership"], want, "{event}");
        }
        let context = get(
            &server,
            &bob,
            &format!(
                "/_matrix/client/v3/rooms/{}/context/{}?limit=10",
                enc(&room),
                enc(&after)
            ),
        )
        .await;
        assert_eq!(context["event"]["unsigned"]["membership"], "join");
        assert_eq!(membership_of(&context["events_before"], &before), "leave");

        // /relations: a reply in a thread, read by Alice, who was joined throughout.
        let reply = send(
            &server,
            &alice,
            &room,
            json!({"msgtype": "m.text", "body": "reply",
                   "m.relates_to": {"rel_type": "m.thread", "event_id": before}}),
        )
        .await;
        let relations = get(
            &server,
            &alice,
            &format!(
                "/_matrix/client/v1/rooms/{}/relations/{}",
                enc(&room),
                enc(&before)
            ),
        )
        .await;
        assert_eq!(membership_of(&relations["chunk"], &reply), "join");

        // State read through /state is not an event "at" a point of history: no membership.
        let state = get(
            &server,
            &bob,
            &format!("/_matrix/client/v3/rooms/{}/state", enc(&room)),
        )
        .await;
        assert!(
            state
                .as_array()
                .unwrap()
                .iter()
                .all(|e| e["unsigned"].get("membership").is_none()),
            "{state}"
        );
        server.stop().await;
    }
}

async fn put_state(server: &TestServer, user: &TestUser, room: &str, kind: &str, content: Value) {
    let (status, reply) = server
        .put(
            &format!("/_matrix/client/v3/rooms/{}/state/{kind}/", enc(room)),
            &user.access_token,
            content,
        )
        .await;
    assert_eq!(status, 200, "{reply}");
}

/// `(type, body or state key)` of each event of a chunk, in order.
fn outline(chunk: &Value) -> Vec<(String, String)> {
    chunk
        .as_array()
        .unwrap_or_else(|| panic!("not a list: {chunk}"))
        .iter()
        .map(|e| {
            let what = e["content"]["body"]
                .as_str()
                .or(e["state_key"].as_str())
                .unwrap_or_default();
            (e["type"].as_str().unwrap().to_owned(), what.to_owned())
        })
        .collect()
}

/// Complement's `TestLeftRoomFixture`: paging back from a sync token taken after leaving
/// starts with the leave (a sync token has delivered its own position), and paging forward
/// from it finds nothing the departed member may see.
#[tokio::test]
async fn messages_from_a_sync_token_after_leaving_start_with_the_leave() {
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
        join(&server, &bob, &room).await;
        put_state(&server, &alice, &room, "m.room.name", json!({"name": "N1"})).await;
        put_state(
            &server,
            &alice,
            &room,
            "madeup.test.state",
            json!({"body": "S1"}),
        )
        .await;
        send(&server, &alice, &room, text("M1")).await;
        send(&server, &alice, &room, text("M2")).await;
        leave(&server, &bob, &room).await;
        let synced = get(&server, &bob, "/_matrix/client/v3/sync?timeout=0").await;
        let since = synced["next_batch"].as_str().unwrap().to_owned();
        put_state(&server, &alice, &room, "m.room.name", json!({"name": "N2"})).await;
        put_state(
            &server,
            &alice,
            &room,
            "madeup.test.state",
            json!({"body": "S2"}),
        )
        .await;
        send(&server, &alice, &room, text("M3")).await;

        let back = get(
            &server,
            &bob,
            &format!(
                "/_matrix/client/v3/rooms/{}/messages?dir=b&limit=3&from={}",
                enc(&room),
                enc(&since)
            ),
        )
        .await;
        let want = |kind: &str, what: &str| (kind.to_owned(), what.to_owned());
        assert_eq!(
            outline(&back["chunk"]),
            vec![
                want("m.room.member", &bob.user_id),
                want("m.room.message", "M2"),
                want("m.room.message", "M1"),
            ],
            "{back}"
        );
        let forward = get(
            &server,
            &bob,
            &format!(
                "/_matrix/client/v3/rooms/{}/messages?dir=f&limit=100&from={}",
                enc(&room),
                enc(&since)
            ),
        )
        .await;
        assert_eq!(forward["chunk"], json!([]), "{forward}");
        server.stop().await;
    }
}

async fn sync_with(
    server: &TestServer,
    user: &TestUser,
    filter: &Value,
    since: Option<&str>,
) -> Value {
    let mut path = format!(
        "/_matrix/client/v3/sync?timeout=0&filter={}",
        enc(&filter.to_string())
    );
    if let Some(since) = since {
        path.push_str(&format!("&since={}", enc(since)));
    }
    get(server, user, &path).await
}

/// Complement's `TestOlderLeftRoomsNotInLeaveSection`: with `include_leave`, a room left
/// before the token stays out of incremental syncs once one has told of the departure.
#[tokio::test]
async fn include_leave_shows_old_departures_only_in_syncs_that_start_over() {
    for kind in test_backends() {
        let server = TestServer::start(kind).await;
        let alice = server.register("alice").await;
        let bob = server.register("bob").await;
        let room = server
            .create_room(&alice, json!({"preset": "public_chat"}))
            .await;
        join(&server, &bob, &room).await;
        let filter = json!({"room": {"timeline": {"limit": 1}, "include_leave": true}});
        let before = sync_with(&server, &alice, &filter, None).await;
        leave(&server, &alice, &room).await;
        let told = sync_with(&server, &alice, &filter, before["next_batch"].as_str()).await;
        assert!(told["rooms"]["leave"].get(&room).is_some(), "{told}");
        send(&server, &bob, &room, text("after")).await;

        let later = sync_with(&server, &alice, &filter, told["next_batch"].as_str()).await;
        assert!(
            later["rooms"]["leave"]
                .as_object()
                .is_none_or(|rooms| rooms.is_empty()),
            "{later}"
        );
        // An initial sync with include_leave still lists it.
        let initial = sync_with(&server, &alice, &filter, None).await;
        assert!(initial["rooms"]["leave"].get(&room).is_some(), "{initial}");
        server.stop().await;
    }
}

/// Complement's `TestArchivedRoomsHistory` ("timeline is empty"): a timeline limit of 0 gives
/// a left room no timeline and, as its state, the state as of the departure: the leave itself
/// and nothing sent after it.
#[tokio::test]
async fn a_left_room_with_timeline_limit_zero_has_the_state_at_the_leave() {
    for kind in test_backends() {
        let server = TestServer::start(kind).await;
        let alice = server.register("alice").await;
        let bob = server.register("bob").await;
        let room = server
            .create_room(&alice, json!({"preset": "public_chat"}))
            .await;
        join(&server, &bob, &room).await;
        send(&server, &alice, &room, text("before")).await;
        put_state(
            &server,
            &alice,
            &room,
            "a.madeup.test.state",
            json!({"my_key": "before"}),
        )
        .await;
        leave(&server, &bob, &room).await;
        send(&server, &alice, &room, text("after")).await;
        put_state(
            &server,
            &alice,
            &room,
            "a.madeup.test.state",
            json!({"my_key": "after"}),
        )
        .await;

        let filter = json!({"room": {"timeline": {"limit": 0}, "include_leave": true}});
        let synced = sync_with(&server, &bob, &filter, None).await;
        let left = &synced["rooms"]["leave"][&room];
        assert_eq!(left["timeline"]["events"], json!([]), "{left}");
        let state = left["state"]["events"].as_array().unwrap();
        let madeup: Vec<&Value> = state
            .iter()
            .filter(|e| e["type"] == "a.madeup.test.state")
            .map(|e| &e["content"]["my_key"])
            .collect();
        assert_eq!(madeup, vec!["before"], "{left}");
        assert!(
            state.iter().any(|e| e["type"] == "m.room.member"
                && e["state_key"] == bob.user_id.as_str()
                && e["content"]["membership"] == "leave"),
            "{left}"
        );

        // Joined rooms take a limit of 0 too: no timeline, marked limited.
        let synced = sync_with(&server, &alice, &filter, None).await;
        let joined = &synced["rooms"]["join"][&room];
        assert_eq!(joined["timeline"]["events"], json!([]), "{joined}");
        assert_eq!(joined["timeline"]["limited"], true, "{joined}");
        server.stop().await;
    }
}

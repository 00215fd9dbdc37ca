//! Typing (with expiry), receipts and read markers, to-device delivery and deletion, and
//! presence, through `/sync`, on both databases.

use std::time::Duration;

use myelin_testkit::{TestServer, TestUser, enc, test_backends};
use serde_json::{Value, json};

async fn sync(server: &TestServer, user: &TestUser, query: &str) -> Value {
    let (status, body) = server
        .get(
            &format!("/_matrix/client/v3/sync?{query}"),
            &user.access_token,
        )
        .await;
    assert_eq!(status, 200, "{body}");
    body
}

async fn shared_room(server: &TestServer, alice: &TestUser, bob: &TestUser) -> String {
    let (_, room) = server
        .post(
            "/_matrix/client/v3/createRoom",
            &alice.access_token,
            json!({"preset": "public_chat"}),
        )
        .await;
    let room = room["room_id"].as_str().unwrap().to_owned();
    server
        .post(
            &format!("/_matrix/client/v3/rooms/{}/join", enc(&room)),
            &bob.access_token,
            json!({}),
        )
        .await;
    room
}

fn ephemeral_of<'a>(body: &'a Value, room: &str, kind: &str) -> Option<&'a Value> {
    body["rooms"]["join"][room]["ephemeral"]["events"]
        .as_array()?
        .iter()
        .find(|e| e["type"] == kind)
}

#[tokio::test]
async fn typing_shows_and_expires() {
    for kind in test_backends() {
        let server = TestServer::start(kind).await;
        let alice = server.register("alice").await;
        let bob = server.register("bob").await;
        let room = shared_room(&server, &alice, &bob).await;
        let since = sync(&server, &bob, "").await["next_batch"]
            .as_str()
            .unwrap()
            .to_owned();

        let path = format!(
            "/_matrix/client/v3/rooms/{}/typing/{}",
            enc(&room),
            enc(&alice.user_id)
        );
        let (status, body) = server
            .put(
                &path,
                &alice.access_token,
                json!({"typing": true, "timeout": 600}),
            )
            .await;
        assert_eq!(status, 200, "{body}");
        let (status, _) = server
            .put(
                &format!(
                    "/_matrix/client/v3/rooms/{}/typing/{}",
                    enc(&room),
                    enc(&alice.user_id)
                ),
                &bob.access_token,
                json!({"typing": true, "timeout": 600}),
            )
            .await;
        assert_eq!(status, 403, "nobody types for someone else");

        let body = sync(&server, &bob, &format!("since={since}")).await;
        let typing = ephemeral_of(&body, &room, "m.typing").expect("typing event");
        assert_eq!(
            typing["content"]["user_ids"],
            json!([alice.user_id]),
            "{kind:?}"
        );
        let since = body["next_batch"].as_str().unwrap().to_owned();

        // The expiry wakes a waiting sync with nobody typing.
        let body = sync(&server, &bob, &format!("since={since}&timeout=10000")).await;
        let typing = ephemeral_of(&body, &room, "m.typing").expect("typing stopped");
        assert_eq!(typing["content"]["user_ids"], json!([]), "{body}");
        server.stop().await;
    }
}

#[tokio::test]
async fn receipts_and_read_markers() {
    for kind in test_backends() {
        let server = TestServer::start(kind).await;
        let alice = server.register("alice").await;
        let bob = server.register("bob").await;
        let room = shared_room(&server, &alice, &bob).await;
        let (_, sent) = server
            .put(
                &format!(
                    "/_matrix/client/v3/rooms/{}/send/m.room.message/t1",
                    enc(&room)
                ),
                &alice.access_token,
                json!({"msgtype": "m.text", "body": "hi"}),
            )
            .await;
        let event_id = sent["event_id"].as_str().unwrap().to_owned();
        let since = sync(&server, &alice, "").await["next_batch"]
            .as_str()
            .unwrap()
            .to_owned();

        let receipt = |kind: &str| {
            format!(
                "/_matrix/client/v3/rooms/{}/receipt/{kind}/{}",
                enc(&room),
                enc(&event_id)
            )
        };
        assert_eq!(
            server
                .post(&receipt("m.read"), &bob.access_token, json!({}))
                .await
                .0,
            200
        );
        assert_eq!(
            server
                .post(&receipt("m.read.private"), &bob.access_token, json!({}))
                .await
                .0,
            200
        );
        let (status, _) = server
            .post(
                &format!(
                    "/_matrix/client/v3/rooms/{}/receipt/m.read/%24nope",
                    enc(&room)
                ),
                &bob.access_token,
                json!({}),
            )
            .await;
        assert_eq!(status, 404, "receipt for an unknown event");

        let body = sync(&server, &alice, &format!("since={since}")).await;
        let receipts = ephemeral_of(&body, &room, "m.receipt").expect("receipt event");
        assert!(
            receipts["content"][&event_id]["m.read"]
                .get(&bob.user_id)
                .is_some(),
            "{receipts}"
        );
        assert!(
            receipts["content"][&event_id]
                .get("m.read.private")
                .is_none(),
            "private receipts stay private: {receipts}"
        );
        let bobs = sync(&server, &bob, "").await;
        let own = ephemeral_of(&bobs, &room, "m.receipt").unwrap();
        assert!(
            own["content"][&event_id]["m.read.private"]
                .get(&bob.user_id)
                .is_some(),
            "{own}"
        );

        // Read markers: the fully-read marker is room account data.
        let (status, body) = server
            .post(
                &format!("/_matrix/client/v3/rooms/{}/read_markers", enc(&room)),
                &bob.access_token,
                json!({"m.fully_read": event_id, "m.read": event_id}),
            )
            .await;
        assert_eq!(status, 200, "{body}");
        let bobs = sync(&server, &bob, "").await;
        let data = bobs["rooms"]["join"][&room]["account_data"]["events"]
            .as_array()
            .unwrap();
        assert!(
            data.iter()
                .any(|e| e["type"] == "m.fully_read"
                    && e["content"]["event_id"] == event_id.as_str()),
            "{data:?}"
        );
        server.stop().await;
    }
}

#[tokio::test]
async fn to_device_messages_are_delivered_once_and_deleted_after_acknowledgement() {
    for kind in test_backends() {
        let server = TestServer::start(kind).await;
        let alice = server.register("alice").await;
        let bob = server.register("bob").await;
        let since = sync(&server, &bob, "").await["next_batch"]
            .as_str()
            .unwrap()
            .to_owned();

        let message =
            json!({"messages": {bob.user_id.clone(): {bob.device_id.clone(): {"secret": 1}}}});
        for _ in 0..2 {
            // The same transaction twice delivers once.
            let (status, body) = server
                .put(
                    "/_matrix/client/v3/sendToDevice/org.example.ping/tx1",
                    &alice.access_token,
                    message.clone(),
                )
                .await;
            assert_eq!(status, 200, "{body}");
        }
        let body = sync(&server, &bob, &format!("since={since}")).await;
        let events = body["to_device"]["events"].as_array().unwrap();
        assert_eq!(events.len(), 1, "{kind:?}: {events:?}");
        assert_eq!(events[0]["sender"], alice.user_id);
        assert_eq!(events[0]["type"], "org.example.ping");
        assert_eq!(events[0]["content"]["secret"], 1);

        // Re-syncing from the same token repeats it (not yet acknowledged)...
        let again = sync(&server, &bob, &format!("since={since}")).await;
        assert_eq!(again["to_device"]["events"].as_array().unwrap().len(), 1);
        // ...syncing from the new token acknowledges and deletes it.
        let next = body["next_batch"].as_str().unwrap().to_owned();
        let after = sync(&server, &bob, &format!("since={next}")).await;
        assert!(
            after["to_device"]["events"]
                .as_array()
                .is_none_or(|e| e.is_empty()),
            "{after}"
        );
        let replay = sync(&server, &bob, &format!("since={since}")).await;
        assert!(
            replay["to_device"]["events"]
                .as_array()
                .is_none_or(|e| e.is_empty()),
            "deleted: {replay}"
        );

        // `*` reaches every device of the user.
        let (_, second) = server
            .call(
                reqwest::Method::POST,
                "/_matrix/client/v3/login",
                None,
                Some(json!({"type": "m.login.password", "identifier": {"type": "m.id.user", "user": "bob"}, "password": bob.password, "device_id": "SECOND"})),
            )
            .await;
        let second = TestUser {
            device_id: "SECOND".to_owned(),
            access_token: second["access_token"].as_str().unwrap().to_owned(),
            ..bob.clone()
        };
        server
            .put(
                "/_matrix/client/v3/sendToDevice/org.example.all/tx2",
                &alice.access_token,
                json!({"messages": {bob.user_id.clone(): {"*": {"n": 2}}}}),
            )
            .await;
        for device in [&bob, &second] {
            let body = sync(&server, device, "").await;
            assert!(
                body["to_device"]["events"]
                    .as_array()
                    .unwrap()
                    .iter()
                    .any(|e| e["type"] == "org.example.all"),
                "{}: {body}",
                device.device_id
            );
        }
        server.stop().await;
    }
}

#[tokio::test]
async fn presence_is_shared_with_room_mates() {
    for kind in test_backends() {
        let server = TestServer::start(kind).await;
        let alice = server.register("alice").await;
        let bob = server.register("bob").await;
        let carol = server.register("carol").await;
        shared_room(&server, &alice, &bob).await;
        let since = sync(&server, &bob, "set_presence=offline").await["next_batch"]
            .as_str()
            .unwrap()
            .to_owned();

        let path = format!("/_matrix/client/v3/presence/{}/status", enc(&alice.user_id));
        // Before alice sets or syncs any presence she is offline, not unknown.
        let (status, presence) = server.get(&path, &bob.access_token).await;
        assert_eq!(
            (status, presence["presence"].as_str()),
            (reqwest::StatusCode::OK, Some("offline")),
            "{presence}"
        );
        let (status, _) = server
            .put(
                &path,
                &alice.access_token,
                json!({"presence": "unavailable", "status_msg": "lunch"}),
            )
            .await;
        assert_eq!(status, 200);
        let (status, _) = server
            .put(&path, &bob.access_token, json!({"presence": "online"}))
            .await;
        assert_eq!(status, 403);

        let body = sync(
            &server,
            &bob,
            &format!("since={since}&set_presence=offline"),
        )
        .await;
        let events = body["presence"]["events"].as_array().unwrap();
        let alices = events
            .iter()
            .find(|e| e["sender"] == alice.user_id.as_str())
            .expect("alice's presence");
        assert_eq!(alices["content"]["presence"], "unavailable", "{kind:?}");
        assert_eq!(alices["content"]["status_msg"], "lunch");

        let (status, presence) = server.get(&path, &bob.access_token).await;
        assert_eq!(status, 200, "{presence}");
        assert_eq!(presence["presence"], "unavailable");
        let (status, _) = server.get(&path, &carol.access_token).await;
        assert_eq!(status, 403, "no shared room");
        tokio::time::sleep(Duration::from_millis(1)).await;
        server.stop().await;
    }
}

#[tokio::test]
async fn a_new_room_mate_brings_their_presence_into_incremental_sync() {
    for kind in test_backends() {
        let server = TestServer::start(kind).await;
        let alice = server.register("alice").await;
        let bob = server.register("bob").await;
        // Bob's presence is set before alice and he share a room...
        let path = format!("/_matrix/client/v3/presence/{}/status", enc(&bob.user_id));
        let (status, _) = server
            .put(&path, &bob.access_token, json!({"presence": "online"}))
            .await;
        assert_eq!(status, 200);
        let (_, room) = server
            .post(
                "/_matrix/client/v3/createRoom",
                &alice.access_token,
                json!({"preset": "public_chat"}),
            )
            .await;
        let room = room["room_id"].as_str().unwrap().to_owned();
        let since = sync(&server, &alice, "set_presence=offline").await["next_batch"]
            .as_str()
            .unwrap()
            .to_owned();
        let presence_of_bob = |body: &Value| {
            body["presence"]["events"]
                .as_array()
                .into_iter()
                .flatten()
                .any(|e| e["sender"] == bob.user_id.as_str())
        };
        // ...and a sync where nothing changed carries nobody's presence.
        let quiet = sync(
            &server,
            &alice,
            &format!("since={since}&set_presence=offline&timeout=0"),
        )
        .await;
        assert!(!presence_of_bob(&quiet), "{quiet}");

        // ...so when he joins, alice's incremental sync must bring it, unchanged as it is.
        server
            .post(
                &format!("/_matrix/client/v3/rooms/{}/join", enc(&room)),
                &bob.access_token,
                json!({}),
            )
            .await;
        let body = sync(
            &server,
            &alice,
            &format!("since={since}&set_presence=offline"),
        )
        .await;
        assert!(presence_of_bob(&body), "{body}");
    }
}

#[tokio::test]
async fn push_rules_drive_unread_counts_and_notifications() {
    for kind in test_backends() {
        let server = TestServer::start(kind).await;
        let alice = server.register("alice").await;
        let bob = server.register("bob").await;
        let room = shared_room(&server, &alice, &bob).await;
        let mut last = String::new();
        for (i, mention) in [false, false, true].into_iter().enumerate() {
            let mut content = json!({"msgtype": "m.text", "body": format!("message {i}")});
            if mention {
                content["m.mentions"] = json!({"user_ids": [bob.user_id]});
                content["body"] = json!(format!("hey {}", bob.user_id));
            }
            let (_, sent) = server
                .put(
                    &format!(
                        "/_matrix/client/v3/rooms/{}/send/m.room.message/n{i}",
                        enc(&room)
                    ),
                    &alice.access_token,
                    content,
                )
                .await;
            last = sent["event_id"].as_str().unwrap().to_owned();
        }
        let body = sync(&server, &bob, "").await;
        let unread = &body["rooms"]["join"][&room]["unread_notifications"];
        assert_eq!(unread["notification_count"], 3, "{kind:?}: {unread}");
        assert_eq!(unread["highlight_count"], 1, "{unread}");
        // The sender's own events never notify the sender.
        let own = sync(&server, &alice, "").await;
        assert_eq!(
            own["rooms"]["join"][&room]["unread_notifications"]["notification_count"],
            0
        );

        let (status, list) = server
            .get("/_matrix/client/v3/notifications", &bob.access_token)
            .await;
        assert_eq!(status, 200, "{list}");
        let notifications = list["notifications"].as_array().unwrap();
        assert_eq!(notifications.len(), 3, "{list}");
        assert_eq!(notifications[0]["event"]["event_id"], last, "newest first");
        assert_eq!(notifications[0]["read"], false);
        let (_, highlights) = server
            .get(
                "/_matrix/client/v3/notifications?only=highlight",
                &bob.access_token,
            )
            .await;
        assert_eq!(
            highlights["notifications"].as_array().unwrap().len(),
            1,
            "{highlights}"
        );

        // Reading up to the last message clears the counts.
        server
            .post(
                &format!(
                    "/_matrix/client/v3/rooms/{}/receipt/m.read/{}",
                    enc(&room),
                    enc(&last)
                ),
                &bob.access_token,
                json!({}),
            )
            .await;
        let body = sync(&server, &bob, "").await;
        let unread = &body["rooms"]["join"][&room]["unread_notifications"];
        assert!(
            unread["notification_count"] == 0 || unread.get("notification_count").is_none(),
            "{unread}"
        );
        let (_, list) = server
            .get("/_matrix/client/v3/notifications", &bob.access_token)
            .await;
        assert_eq!(list["notifications"][0]["read"], true);
        server.stop().await;
    }
}

/// Push rules are cached per user by the position of their stored rules: a change of rules
/// applies to the very next event, and so does taking it back.
#[tokio::test]
async fn a_push_rule_change_applies_to_the_next_event() {
    for kind in test_backends() {
        let server = TestServer::start(kind).await;
        let alice = server.register("alice").await;
        let bob = server.register("bob").await;
        let room = shared_room(&server, &alice, &bob).await;
        let send = |i: usize| {
            let (server, room, token) = (&server, &room, &alice.access_token);
            async move {
                let (status, body) = server
                    .put(
                        &format!(
                            "/_matrix/client/v3/rooms/{}/send/m.room.message/r{i}",
                            enc(room)
                        ),
                        token,
                        json!({"msgtype": "m.text", "body": format!("message {i}")}),
                    )
                    .await;
                assert_eq!(status, 200, "{body}");
            }
        };
        let count = || async {
            let body = sync(&server, &bob, "").await;
            body["rooms"]["join"][&room]["unread_notifications"]["notification_count"].clone()
        };

        send(0).await;
        assert_eq!(
            count().await,
            1,
            "{kind:?}: the default rules notify (and are now cached)"
        );

        let mute = format!(
            "/_matrix/client/v3/pushrules/global/override/{}",
            enc("mute-room")
        );
        let (status, body) = server
            .put(
                &mute,
                &bob.access_token,
                json!({"conditions": [{"kind": "event_match", "key": "room_id", "pattern": room}], "actions": []}),
            )
            .await;
        assert_eq!(status, 200, "{body}");
        send(1).await;
        assert_eq!(
            count().await,
            1,
            "{kind:?}: the muting rule applied to the next event"
        );

        let (status, body) = server
            .call(
                reqwest::Method::DELETE,
                &mute,
                Some(&bob.access_token),
                None,
            )
            .await;
        assert_eq!(status, 200, "{body}");
        send(2).await;
        assert_eq!(count().await, 2, "{kind:?}: and its removal too");
        server.stop().await;
    }
}

#[tokio::test]
async fn room_mentions_highlight_only_from_senders_allowed_to_notify_the_room() {
    for kind in test_backends() {
        let server = TestServer::start(kind).await;
        let alice = server.register("alice").await;
        let bob = server.register("bob").await;
        let carol = server.register("carol").await;
        // Alice creates the room (a v12 creator: unlimited power); bob and carol have 0.
        let room = shared_room(&server, &alice, &bob).await;
        server
            .post(
                &format!("/_matrix/client/v3/rooms/{}/join", enc(&room)),
                &carol.access_token,
                json!({}),
            )
            .await;
        let mention =
            json!({"msgtype": "m.text", "body": "@room look", "m.mentions": {"room": true}});
        for (sender, txn) in [(&bob, "from-bob"), (&alice, "from-alice")] {
            let (status, body) = server
                .put(
                    &format!(
                        "/_matrix/client/v3/rooms/{}/send/m.room.message/{txn}",
                        enc(&room)
                    ),
                    &sender.access_token,
                    mention.clone(),
                )
                .await;
            assert_eq!(status, 200, "{body}");
        }
        let body = sync(&server, &carol, "").await;
        let unread = &body["rooms"]["join"][&room]["unread_notifications"];
        assert_eq!(unread["notification_count"], 2, "{kind:?}: {unread}");
        assert_eq!(
            unread["highlight_count"], 1,
            "{kind:?}: only the creator's @room highlights: {unread}"
        );
        let (_, highlights) = server
            .get(
                "/_matrix/client/v3/notifications?only=highlight",
                &carol.access_token,
            )
            .await;
        let list = highlights["notifications"].as_array().unwrap();
        assert_eq!(list.len(), 1, "{highlights}");
        assert_eq!(list[0]["event"]["sender"], alice.user_id);
    }
}

/// The legacy mention rules (v1.12's defaults, which Synapse ships too): a message without
/// `m.mentions` highlights the user whose localpart or display name in that room its body
/// names as a word, and `@room` from a sender allowed to notify the room; one with
/// `m.mentions` (even empty) is judged by its mentions alone (MSC3952).
#[tokio::test]
async fn legacy_mention_rules_apply_to_messages_without_m_mentions() {
    for kind in test_backends() {
        let server = TestServer::start(kind).await;
        let alice = server.register("alice").await;
        let bob = server.register("bob").await;
        let carol = server.register("carol").await;
        let room = shared_room(&server, &alice, &bob).await;
        server
            .post(
                &format!("/_matrix/client/v3/rooms/{}/join", enc(&room)),
                &carol.access_token,
                json!({}),
            )
            .await;
        // Bob's display name in this room only.
        let (status, body) = server
            .put(
                &format!(
                    "/_matrix/client/v3/rooms/{}/state/m.room.member/{}",
                    enc(&room),
                    enc(&bob.user_id)
                ),
                &bob.access_token,
                json!({"membership": "join", "displayname": "Roberto"}),
            )
            .await;
        assert_eq!(status, 200, "{body}");
        let messages = [
            (&alice, json!({"body": "bobcat and bobby"}), false),
            (
                &alice,
                json!({"body": format!("Hello {}!", bob.user_id)}),
                true,
            ),
            (&alice, json!({"body": "thanks, Roberto"}), true),
            (
                &alice,
                json!({"body": "hello bob", "m.mentions": {}}),
                false,
            ),
            (
                &alice,
                json!({"body": "Roberto?", "m.mentions": {"user_ids": []}}),
                false,
            ),
            (&alice, json!({"body": "@room wake up"}), true),
            (&carol, json!({"body": "@room me too"}), false),
            (
                &alice,
                json!({"body": "@room again", "m.mentions": {}}),
                false,
            ),
        ];
        for (i, (sender, mut content, _)) in messages.clone().into_iter().enumerate() {
            content["msgtype"] = json!("m.text");
            let (status, body) = server
                .put(
                    &format!(
                        "/_matrix/client/v3/rooms/{}/send/m.room.message/legacy{i}",
                        enc(&room)
                    ),
                    &sender.access_token,
                    content,
                )
                .await;
            assert_eq!(status, 200, "{body}");
        }
        let body = sync(&server, &bob, "").await;
        let unread = &body["rooms"]["join"][&room]["unread_notifications"];
        assert_eq!(
            unread["notification_count"],
            messages.len(),
            "{kind:?}: {unread}"
        );
        assert_eq!(unread["highlight_count"], 3, "{kind:?}: {unread}");
        let (_, highlights) = server
            .get(
                "/_matrix/client/v3/notifications?only=highlight",
                &bob.access_token,
            )
            .await;
        let mut highlighted: Vec<&str> = highlights["notifications"]
            .as_array()
            .unwrap()
            .iter()
            .map(|n| n["event"]["content"]["body"].as_str().unwrap())
            .collect();
        highlighted.sort_unstable();
        let mut expected: Vec<String> = messages
            .iter()
            .filter(|(_, _, highlight)| *highlight)
            .map(|(_, content, _)| content["body"].as_str().unwrap().to_owned())
            .collect();
        expected.sort_unstable();
        assert_eq!(highlighted, expected, "{kind:?}");

        // Bob's display name elsewhere is his global one: "Roberto" means nothing there.
        let (_, other) = server
            .post(
                "/_matrix/client/v3/createRoom",
                &alice.access_token,
                json!({"preset": "public_chat", "invite": [bob.user_id]}),
            )
            .await;
        let other = other["room_id"].as_str().unwrap().to_owned();
        server
            .post(
                &format!("/_matrix/client/v3/rooms/{}/join", enc(&other)),
                &bob.access_token,
                json!({}),
            )
            .await;
        let (status, body) = server
            .put(
                &format!(
                    "/_matrix/client/v3/rooms/{}/send/m.room.message/elsewhere",
                    enc(&other)
                ),
                &alice.access_token,
                json!({"msgtype": "m.text", "body": "thanks, Roberto"}),
            )
            .await;
        assert_eq!(status, 200, "{body}");
        let body = sync(&server, &bob, "").await;
        let unread = &body["rooms"]["join"][&other]["unread_notifications"];
        assert_eq!(unread["notification_count"], 1, "{kind:?}: {unread}");
        assert_eq!(unread["highlight_count"], 0, "{kind:?}: {unread}");
        server.stop().await;
    }
}

/// Thread-aware unread counts (Complement's TestThreadedReceipts): a threaded receipt reads
/// its thread only (`main` is the main timeline), an unthreaded one reads everything before it;
/// with `unread_thread_notifications` in the timeline filter each thread is counted apart
/// under its root and `unread_notifications` counts the main timeline alone.
#[tokio::test]
async fn threaded_receipts_and_thread_notification_counts() {
    for kind in test_backends() {
        let server = TestServer::start(kind).await;
        let alice = server.register("alice").await;
        let bob = server.register("bob").await;
        let room = shared_room(&server, &alice, &bob).await;
        let mention = format!("hey {}", bob.user_id);
        let send = |txn: &'static str, body: String, relates_to: Option<Value>| {
            let (server, alice, room) = (&server, &alice, room.clone());
            async move {
                let mut content = json!({"msgtype": "m.text", "body": body});
                if body.contains('@') {
                    content["m.mentions"] = json!({"user_ids": [body.trim_start_matches("hey ")]});
                }
                if let Some(relates_to) = relates_to {
                    content["m.relates_to"] = relates_to;
                }
                let (status, sent) = server
                    .put(
                        &format!(
                            "/_matrix/client/v3/rooms/{}/send/m.room.message/{txn}",
                            enc(&room)
                        ),
                        &alice.access_token,
                        content,
                    )
                    .await;
                assert_eq!(status, 200, "{sent}");
                sent["event_id"].as_str().unwrap().to_owned()
            }
        };
        let a = send("a", "root".into(), None).await;
        let in_thread = || Some(json!({"rel_type": "m.thread", "event_id": a}));
        let b = send("b", "start thread".into(), in_thread()).await;
        send("c", mention.clone(), in_thread()).await;
        let d = send("d", mention.clone(), None).await;
        send("e", "end thread".into(), in_thread()).await;
        send(
            "f",
            "reference".into(),
            Some(json!({"rel_type": "m.reference", "event_id": a})),
        )
        .await;

        let thread_filter = enc(r#"{"room":{"timeline":{"unread_thread_notifications":true}}}"#);
        let counts = |threads_apart: bool| {
            let (server, bob, room, a) = (&server, &bob, room.clone(), a.clone());
            let query = if threads_apart {
                format!("filter={thread_filter}")
            } else {
                String::new()
            };
            async move {
                let body = sync(server, bob, &query).await;
                let joined = &body["rooms"]["join"][&room];
                let unread = &joined["unread_notifications"];
                let main = (
                    unread["notification_count"].as_i64().unwrap(),
                    unread["highlight_count"].as_i64().unwrap(),
                );
                let thread = joined.get("unread_thread_notifications").map(|t| {
                    (
                        t[&a]["notification_count"].as_i64().unwrap_or(0),
                        t[&a]["highlight_count"].as_i64().unwrap_or(0),
                    )
                });
                (main, thread)
            }
        };
        let receipt = |event: String, thread: Option<String>| {
            let (server, bob, room) = (&server, &bob, room.clone());
            async move {
                let body = match thread {
                    Some(thread) => json!({"thread_id": thread}),
                    None => json!({}),
                };
                let (status, reply) = server
                    .post(
                        &format!(
                            "/_matrix/client/v3/rooms/{}/receipt/m.read/{}",
                            enc(&room),
                            enc(&event)
                        ),
                        &bob.access_token,
                        body,
                    )
                    .await;
                assert_eq!(status, 200, "{reply}");
            }
        };

        // All six notify (A, D, F in the main timeline; B, C, E in A's thread); C and D mention.
        assert_eq!(counts(false).await, ((6, 2), None), "{kind:?}");
        assert_eq!(counts(true).await, ((3, 1), Some((3, 1))), "{kind:?}");
        // A threaded receipt on A in the main timeline reads A only.
        receipt(a.clone(), Some("main".to_owned())).await;
        assert_eq!(counts(false).await, ((5, 2), None), "{kind:?}");
        assert_eq!(counts(true).await, ((2, 1), Some((3, 1))), "{kind:?}");
        // A receipt in the thread on B reads B only, in the thread.
        receipt(b.clone(), Some(a.clone())).await;
        assert_eq!(counts(false).await, ((4, 2), None), "{kind:?}");
        assert_eq!(counts(true).await, ((2, 1), Some((2, 1))), "{kind:?}");
        // An unthreaded receipt on D reads everything before it, in every thread.
        receipt(d.clone(), None).await;
        assert_eq!(counts(false).await, ((2, 0), None), "{kind:?}");
        assert_eq!(counts(true).await, ((1, 0), Some((1, 0))), "{kind:?}");
    }
}

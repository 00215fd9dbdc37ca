//! Rooms over the client API, on both databases: creation with each preset and version,
//! membership changes and their refusals, restricted joins, sending with transaction ids,
//! state, events, members, timeline paging, redaction and the spec's errors.

use myelin_testkit::{TestServer, TestUser, enc, test_backends};
use reqwest::StatusCode;
use serde_json::{Value, json};

async fn create(server: &TestServer, user: &TestUser, body: Value) -> String {
    server.create_room(user, body).await
}

async fn state_content(
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

async fn send_text(
    server: &TestServer,
    user: &TestUser,
    room: &str,
    txn: &str,
    body: &str,
) -> (StatusCode, Value) {
    server
        .put(
            &format!(
                "/_matrix/client/v3/rooms/{}/send/m.room.message/{txn}",
                enc(room)
            ),
            &user.access_token,
            json!({"msgtype": "m.text", "body": body}),
        )
        .await
}

async fn membership_call(
    server: &TestServer,
    user: &TestUser,
    room: &str,
    action: &str,
    body: Value,
) -> (StatusCode, Value) {
    server
        .post(
            &format!("/_matrix/client/v3/rooms/{}/{action}", enc(room)),
            &user.access_token,
            body,
        )
        .await
}

#[tokio::test]
async fn create_rooms_with_presets_and_versions() {
    for kind in test_backends() {
        let server = TestServer::start(kind).await;
        let alice = server.register("alice").await;

        let room = create(
            &server,
            &alice,
            json!({"preset": "public_chat", "name": "Lobby", "topic": "hi"}),
        )
        .await;
        // Version 12 is the default: the room id is the create event's hash, with no domain.
        assert!(
            room.starts_with('!') && !room.contains(':') && room.len() == 44,
            "{room}"
        );
        let (_, create_content) = state_content(&server, &alice, &room, "m.room.create", "").await;
        assert_eq!(create_content["room_version"], "12");
        assert_eq!(
            state_content(&server, &alice, &room, "m.room.join_rules", "")
                .await
                .1["join_rule"],
            "public"
        );
        assert_eq!(
            state_content(&server, &alice, &room, "m.room.name", "")
                .await
                .1["name"],
            "Lobby"
        );
        let (_, topic) = state_content(&server, &alice, &room, "m.room.topic", "").await;
        assert_eq!(topic["topic"], "hi");
        assert_eq!(
            topic["m.topic"],
            json!({"m.text": [{"body": "hi", "mimetype": "text/plain"}]}),
            "the rich topic block too"
        );
        assert_eq!(
            state_content(&server, &alice, &room, "m.room.history_visibility", "")
                .await
                .1["history_visibility"],
            "shared"
        );
        let (_, power) = state_content(&server, &alice, &room, "m.room.power_levels", "").await;
        assert!(
            power["users"].get(&alice.user_id).is_none(),
            "v12 creators are not listed: {power}"
        );
        assert_eq!(power["events"]["m.room.tombstone"], 150);

        let private = create(&server, &alice, json!({"preset": "private_chat"})).await;
        assert_eq!(
            state_content(&server, &alice, &private, "m.room.join_rules", "")
                .await
                .1["join_rule"],
            "invite"
        );
        assert_eq!(
            state_content(&server, &alice, &private, "m.room.guest_access", "")
                .await
                .1["guest_access"],
            "can_join"
        );

        for version in ["10", "11"] {
            let room = create(
                &server,
                &alice,
                json!({"room_version": version, "preset": "trusted_private_chat"}),
            )
            .await;
            assert!(room.ends_with(":localhost"), "{room}");
            let (_, create_content) =
                state_content(&server, &alice, &room, "m.room.create", "").await;
            assert_eq!(create_content["room_version"], version);
            assert_eq!(
                create_content.get("creator").is_some(),
                version == "10",
                "{create_content}"
            );
            let (_, power) = state_content(&server, &alice, &room, "m.room.power_levels", "").await;
            assert_eq!(power["users"][&alice.user_id], 100);
        }

        // initial_state and power overrides.
        let room = create(
            &server,
            &alice,
            json!({"initial_state": [{"type": "m.room.encryption", "state_key": "", "content": {"algorithm": "m.megolm.v1.aes-sha2"}}],
                   "power_level_content_override": {"events_default": 10}}),
        )
        .await;
        assert_eq!(
            state_content(&server, &alice, &room, "m.room.encryption", "")
                .await
                .1["algorithm"],
            "m.megolm.v1.aes-sha2"
        );
        assert_eq!(
            state_content(&server, &alice, &room, "m.room.power_levels", "")
                .await
                .1["events_default"],
            10
        );

        // (Account-key rooms are creatable in tests; tests/account_keys.rs checks the gate.)
        for (version, errcode) in [("9999", "M_UNSUPPORTED_ROOM_VERSION")] {
            let (status, body) = server
                .post(
                    "/_matrix/client/v3/createRoom",
                    &alice.access_token,
                    json!({"room_version": version}),
                )
                .await;
            assert_eq!(
                (status, body["errcode"].as_str()),
                (StatusCode::BAD_REQUEST, Some(errcode)),
                "{version}: {body}"
            );
        }

        let (status, joined) = server
            .get("/_matrix/client/v3/joined_rooms", &alice.access_token)
            .await;
        assert_eq!(status, 200);
        assert_eq!(joined["joined_rooms"].as_array().unwrap().len(), 5);
        server.stop().await;
    }
}

#[tokio::test]
async fn membership_changes_follow_the_auth_rules() {
    for kind in test_backends() {
        let server = TestServer::start(kind).await;
        let alice = server.register("alice").await;
        let bob = server.register("bob").await;
        let room = create(&server, &alice, json!({"preset": "private_chat"})).await;

        let (status, body) = membership_call(&server, &bob, &room, "join", json!({})).await;
        assert_eq!(
            (status, body["errcode"].as_str()),
            (StatusCode::FORBIDDEN, Some("M_FORBIDDEN")),
            "invite-only: {body}"
        );

        let (status, _) = membership_call(
            &server,
            &alice,
            &room,
            "invite",
            json!({"user_id": bob.user_id}),
        )
        .await;
        assert_eq!(status, 200);
        let (status, body) = membership_call(&server, &bob, &room, "join", json!({})).await;
        assert_eq!(status, 200, "{body}");
        assert_eq!(body["room_id"], room);

        // bob (power 0) cannot kick alice; alice can kick bob.
        let (status, _) = membership_call(
            &server,
            &bob,
            &room,
            "kick",
            json!({"user_id": alice.user_id}),
        )
        .await;
        assert_eq!(status, 403);
        let (status, _) = membership_call(
            &server,
            &alice,
            &room,
            "kick",
            json!({"user_id": bob.user_id, "reason": "bye"}),
        )
        .await;
        assert_eq!(status, 200);
        let (_, member) =
            state_content(&server, &alice, &room, "m.room.member", &bob.user_id).await;
        assert_eq!(
            (member["membership"].as_str(), member["reason"].as_str()),
            (Some("leave"), Some("bye"))
        );

        // Bob has left: kicking him again is refused (the auth rules would allow it).
        let (status, body) = membership_call(
            &server,
            &alice,
            &room,
            "kick",
            json!({"user_id": bob.user_id}),
        )
        .await;
        assert_eq!(status, 403, "{body}");
        assert_eq!(body["errcode"], "M_FORBIDDEN");

        // Ban keeps bob out even with an invite; unban lets an invite work again.
        let (status, _) = membership_call(
            &server,
            &alice,
            &room,
            "ban",
            json!({"user_id": bob.user_id}),
        )
        .await;
        assert_eq!(status, 200);
        let (status, _) = membership_call(
            &server,
            &alice,
            &room,
            "invite",
            json!({"user_id": bob.user_id}),
        )
        .await;
        assert_eq!(status, 403, "cannot invite a banned user");
        let (status, _) = membership_call(&server, &bob, &room, "join", json!({})).await;
        assert_eq!(status, 403);
        let (status, _) = membership_call(
            &server,
            &alice,
            &room,
            "unban",
            json!({"user_id": bob.user_id}),
        )
        .await;
        assert_eq!(status, 200);
        let (status, _) = membership_call(
            &server,
            &alice,
            &room,
            "invite",
            json!({"user_id": bob.user_id}),
        )
        .await;
        assert_eq!(status, 200);
        let (status, _) = server
            .post(
                &format!("/_matrix/client/v3/join/{}", enc(&room)),
                &bob.access_token,
                json!({}),
            )
            .await;
        assert_eq!(
            status, 200,
            "join by room id through /join/{{roomIdOrAlias}}"
        );

        // Leave, then forget; forgetting while joined is refused.
        let (status, body) = membership_call(&server, &alice, &room, "forget", json!({})).await;
        assert_eq!(status, 400);
        assert_eq!(body["errcode"], "M_UNKNOWN", "the spec's example: {body}");
        let (status, _) = membership_call(&server, &bob, &room, "leave", json!({})).await;
        assert_eq!(status, 200);
        let (status, _) = membership_call(&server, &bob, &room, "forget", json!({})).await;
        assert_eq!(status, 200);

        // Knock only where the join rule allows it.
        let (status, _) = server
            .post(
                &format!("/_matrix/client/v3/knock/{}", enc(&room)),
                &bob.access_token,
                json!({}),
            )
            .await;
        assert_eq!(status, 403, "invite rule: no knocking");
        let knockable = create(&server, &alice, json!({"room_version": "11", "initial_state": [{"type": "m.room.join_rules", "state_key": "", "content": {"join_rule": "knock"}}]})).await;
        let (status, body) = server
            .post(
                &format!("/_matrix/client/v3/knock/{}", enc(&knockable)),
                &bob.access_token,
                json!({"reason": "let me in"}),
            )
            .await;
        assert_eq!(status, 200, "{body}");
        let (_, member) =
            state_content(&server, &alice, &knockable, "m.room.member", &bob.user_id).await;
        assert_eq!(member["membership"], "knock");

        // Unknown rooms.
        let (status, body) =
            membership_call(&server, &bob, "!nope:localhost", "join", json!({})).await;
        assert_eq!(
            (status, body["errcode"].as_str()),
            (StatusCode::NOT_FOUND, Some("M_NOT_FOUND"))
        );
        server.stop().await;
    }
}

#[tokio::test]
async fn restricted_join_through_a_room_the_user_is_in() {
    for kind in test_backends() {
        let server = TestServer::start(kind).await;
        let alice = server.register("alice").await;
        let bob = server.register("bob").await;
        let carol = server.register("carol").await;
        let space = create(&server, &alice, json!({"preset": "public_chat"})).await;
        let (status, _) = membership_call(&server, &bob, &space, "join", json!({})).await;
        assert_eq!(status, 200);
        let restricted = create(
            &server,
            &alice,
            json!({"initial_state": [{"type": "m.room.join_rules", "state_key": "",
                   "content": {"join_rule": "restricted", "allow": [{"type": "m.room_membership", "room_id": space}]}}]}),
        )
        .await;
        let (status, body) = membership_call(&server, &bob, &restricted, "join", json!({})).await;
        assert_eq!(status, 200, "bob is in the allowed room: {body}");
        let (_, member) =
            state_content(&server, &bob, &restricted, "m.room.member", &bob.user_id).await;
        assert_eq!(member["join_authorised_via_users_server"], alice.user_id);
        let (status, _) = membership_call(&server, &carol, &restricted, "join", json!({})).await;
        assert_eq!(status, 403, "carol is not in the allowed room");
        server.stop().await;
    }
}

#[tokio::test]
async fn messages_page_through_every_event_exactly_once() {
    for kind in test_backends() {
        let server = TestServer::start(kind).await;
        let alice = server.register("alice").await;
        let room = create(&server, &alice, json!({"preset": "public_chat"})).await;
        let mut sent = Vec::new();
        for i in 0..50 {
            let (status, body) = send_text(
                &server,
                &alice,
                &room,
                &format!("t{i}"),
                &format!("message {i}"),
            )
            .await;
            assert_eq!(status, 200, "{body}");
            sent.push(body["event_id"].as_str().unwrap().to_owned());
        }

        let page_through = |dir: &'static str| {
            let server = &server;
            let alice = &alice;
            let room = room.clone();
            async move {
                let mut seen = Vec::new();
                let mut from: Option<String> = None;
                for _ in 0..100 {
                    let mut path = format!(
                        "/_matrix/client/v3/rooms/{}/messages?dir={dir}&limit=7",
                        enc(&room)
                    );
                    if let Some(from) = &from {
                        path.push_str(&format!("&from={from}"));
                    }
                    let (status, page) = server.get(&path, &alice.access_token).await;
                    assert_eq!(status, 200, "{page}");
                    for event in page["chunk"].as_array().unwrap() {
                        if event["type"] == "m.room.message" {
                            seen.push(event["event_id"].as_str().unwrap().to_owned());
                        }
                    }
                    match page["end"].as_str() {
                        Some(end) => from = Some(end.to_owned()),
                        None => {
                            // A page with events always carries `end`; only the empty page
                            // after the last events has none.
                            assert_eq!(page["chunk"], json!([]), "{page}");
                            return seen;
                        }
                    }
                }
                panic!("pagination did not end");
            }
        };
        let mut backwards = page_through("b").await;
        backwards.reverse();
        assert_eq!(backwards, sent, "{kind:?}: backwards pagination");
        assert_eq!(
            page_through("f").await,
            sent,
            "{kind:?}: forwards pagination"
        );

        // Only messages, through the filter.
        let filter = enc(r#"{"types":["m.room.message"]}"#)
            .replace('{', "%7B")
            .replace('}', "%7D")
            .replace('"', "%22")
            .replace('[', "%5B")
            .replace(']', "%5D");
        let (_, page) = server
            .get(
                &format!(
                    "/_matrix/client/v3/rooms/{}/messages?dir=b&limit=10&filter={filter}",
                    enc(&room)
                ),
                &alice.access_token,
            )
            .await;
        assert!(
            page["chunk"]
                .as_array()
                .unwrap()
                .iter()
                .all(|e| e["type"] == "m.room.message"),
            "{page}"
        );
        assert_eq!(page["chunk"].as_array().unwrap().len(), 10);
        server.stop().await;
    }
}

#[tokio::test]
async fn sends_are_idempotent_per_transaction_and_survive_restart() {
    for kind in test_backends() {
        let mut server = TestServer::start(kind).await;
        let alice = server.register("alice").await;
        let room = create(&server, &alice, json!({})).await;
        let (_, first) = send_text(&server, &alice, &room, "txn1", "once").await;
        let (_, again) = send_text(&server, &alice, &room, "txn1", "once").await;
        assert_eq!(first["event_id"], again["event_id"]);
        let (_, other) = send_text(&server, &alice, &room, "txn2", "twice").await;
        assert_ne!(first["event_id"], other["event_id"]);

        server.restart().await;
        let (_, after_restart) = send_text(&server, &alice, &room, "txn1", "once").await;
        assert_eq!(first["event_id"], after_restart["event_id"], "{kind:?}");
        let (_, page) = server
            .get(
                &format!(
                    "/_matrix/client/v3/rooms/{}/messages?dir=b&limit=50",
                    enc(&room)
                ),
                &alice.access_token,
            )
            .await;
        let bodies: Vec<&str> = page["chunk"]
            .as_array()
            .unwrap()
            .iter()
            .filter_map(|e| e["content"]["body"].as_str())
            .collect();
        assert_eq!(bodies, vec!["twice", "once"]);
        server.stop().await;
    }
}

#[tokio::test]
async fn state_events_members_and_redaction() {
    for kind in test_backends() {
        let server = TestServer::start(kind).await;
        let alice = server.register("alice").await;
        let bob = server.register("bob").await;
        let room = create(&server, &alice, json!({"preset": "public_chat"})).await;
        membership_call(&server, &bob, &room, "join", json!({})).await;

        let (status, body) = server
            .put(
                &format!(
                    "/_matrix/client/v3/rooms/{}/state/m.room.topic/",
                    enc(&room)
                ),
                &alice.access_token,
                json!({"topic": "new"}),
            )
            .await;
        assert_eq!(status, 200, "{body}");
        assert_eq!(
            state_content(&server, &bob, &room, "m.room.topic", "")
                .await
                .1["topic"],
            "new"
        );
        let (status, body) = server
            .put(
                &format!(
                    "/_matrix/client/v3/rooms/{}/state/m.room.topic/",
                    enc(&room)
                ),
                &bob.access_token,
                json!({"topic": "mine"}),
            )
            .await;
        assert_eq!(
            (status, body["errcode"].as_str()),
            (StatusCode::FORBIDDEN, Some("M_FORBIDDEN")),
            "state_default 50"
        );
        let (status, body) = state_content(&server, &alice, &room, "m.room.nothing", "").await;
        assert_eq!(
            (status, body["errcode"].as_str()),
            (StatusCode::NOT_FOUND, Some("M_NOT_FOUND"))
        );

        let (status, all) = server
            .get(
                &format!("/_matrix/client/v3/rooms/{}/state", enc(&room)),
                &bob.access_token,
            )
            .await;
        assert_eq!(status, 200);
        assert!(
            all.as_array()
                .unwrap()
                .iter()
                .any(|e| e["type"] == "m.room.create")
        );

        let (_, members) = server
            .get(
                &format!("/_matrix/client/v3/rooms/{}/members", enc(&room)),
                &bob.access_token,
            )
            .await;
        assert_eq!(members["chunk"].as_array().unwrap().len(), 2);
        let (_, joined) = server
            .get(
                &format!("/_matrix/client/v3/rooms/{}/joined_members", enc(&room)),
                &bob.access_token,
            )
            .await;
        assert!(
            joined["joined"].get(&alice.user_id).is_some()
                && joined["joined"].get(&bob.user_id).is_some(),
            "{joined}"
        );
        // Both profile keys on every member, `null` when unset (Complement's
        // "GET /rooms/:room_id/joined_members fetches my membership").
        for user in [&alice.user_id, &bob.user_id] {
            let member = joined["joined"][user].as_object().unwrap();
            assert!(
                member.contains_key("display_name") && member.contains_key("avatar_url"),
                "{joined}"
            );
        }
        membership_call(&server, &bob, &room, "leave", json!({})).await;
        let (_, members) = server
            .get(
                &format!(
                    "/_matrix/client/v3/rooms/{}/members?not_membership=leave",
                    enc(&room)
                ),
                &alice.access_token,
            )
            .await;
        assert_eq!(members["chunk"].as_array().unwrap().len(), 1, "{members}");
        membership_call(&server, &bob, &room, "join", json!({})).await;

        // Redaction: own event yes, someone else's without power no.
        let (_, sent) = send_text(&server, &bob, &room, "r1", "oops").await;
        let event_id = sent["event_id"].as_str().unwrap();
        let (_, alice_msg) = send_text(&server, &alice, &room, "r2", "keep").await;
        let (status, _) = server
            .put(
                &format!(
                    "/_matrix/client/v3/rooms/{}/redact/{}/x1",
                    enc(&room),
                    enc(alice_msg["event_id"].as_str().unwrap())
                ),
                &bob.access_token,
                json!({}),
            )
            .await;
        assert_eq!(status, 403);
        let (status, redaction) = server
            .put(
                &format!(
                    "/_matrix/client/v3/rooms/{}/redact/{}/x2",
                    enc(&room),
                    enc(event_id)
                ),
                &bob.access_token,
                json!({"reason": "typo"}),
            )
            .await;
        assert_eq!(status, 200, "{redaction}");
        let (status, event) = server
            .get(
                &format!(
                    "/_matrix/client/v3/rooms/{}/event/{}",
                    enc(&room),
                    enc(event_id)
                ),
                &alice.access_token,
            )
            .await;
        assert_eq!(status, 200);
        assert_eq!(event["content"], json!({}), "redacted content: {event}");
        assert_eq!(
            event["unsigned"]["redacted_because"]["event_id"],
            redaction["event_id"]
        );
        let (_, page) = server
            .get(
                &format!(
                    "/_matrix/client/v3/rooms/{}/messages?dir=b&limit=5",
                    enc(&room)
                ),
                &alice.access_token,
            )
            .await;
        let in_page = page["chunk"]
            .as_array()
            .unwrap()
            .iter()
            .find(|e| e["event_id"] == event_id)
            .cloned()
            .unwrap();
        assert_eq!(in_page["content"], json!({}));
        let (status, body) = server
            .get(
                &format!("/_matrix/client/v3/rooms/{}/event/%24nope", enc(&room)),
                &alice.access_token,
            )
            .await;
        assert_eq!(
            (status, body["errcode"].as_str()),
            (StatusCode::NOT_FOUND, Some("M_NOT_FOUND"))
        );
        server.stop().await;
    }
}

#[tokio::test]
async fn history_visibility_and_error_paths() {
    for kind in test_backends() {
        let server = TestServer::start(kind).await;
        let alice = server.register("alice").await;
        let eve = server.register("eve").await;
        let room = create(&server, &alice, json!({"preset": "public_chat"})).await;
        server
            .put(
                &format!(
                    "/_matrix/client/v3/rooms/{}/state/m.room.history_visibility/",
                    enc(&room)
                ),
                &alice.access_token,
                json!({"history_visibility": "joined"}),
            )
            .await;
        let (_, before) = send_text(&server, &alice, &room, "h1", "before eve").await;

        // Not in the room: no reads, no sends.
        let (status, _) = server
            .get(
                &format!("/_matrix/client/v3/rooms/{}/state", enc(&room)),
                &eve.access_token,
            )
            .await;
        assert_eq!(status, 403);
        let (status, body) = send_text(&server, &eve, &room, "e1", "hi").await;
        assert_eq!(
            (status, body["errcode"].as_str()),
            (StatusCode::FORBIDDEN, Some("M_FORBIDDEN"))
        );

        membership_call(&server, &eve, &room, "join", json!({})).await;
        let (status, _) = server
            .get(
                &format!(
                    "/_matrix/client/v3/rooms/{}/event/{}",
                    enc(&room),
                    enc(before["event_id"].as_str().unwrap())
                ),
                &eve.access_token,
            )
            .await;
        assert_eq!(
            status, 404,
            "joined visibility hides what came before eve joined"
        );
        let (_, after) = send_text(&server, &alice, &room, "h2", "after eve").await;
        let (status, _) = server
            .get(
                &format!(
                    "/_matrix/client/v3/rooms/{}/event/{}",
                    enc(&room),
                    enc(after["event_id"].as_str().unwrap())
                ),
                &eve.access_token,
            )
            .await;
        assert_eq!(status, 200);

        // Unknown room, unknown token, too large, not JSON.
        let (status, body) = send_text(&server, &alice, "!unknown:localhost", "u1", "x").await;
        assert_eq!(
            (status, body["errcode"].as_str()),
            (StatusCode::NOT_FOUND, Some("M_NOT_FOUND"))
        );
        let (status, body) = server
            .call(
                reqwest::Method::PUT,
                &format!(
                    "/_matrix/client/v3/rooms/{}/send/m.room.message/z",
                    enc(&room)
                ),
                Some("bad-token"),
                Some(json!({})),
            )
            .await;
        assert_eq!(
            (status, body["errcode"].as_str()),
            (StatusCode::UNAUTHORIZED, Some("M_UNKNOWN_TOKEN"))
        );
        let (status, body) = send_text(&server, &alice, &room, "big", &"x".repeat(70_000)).await;
        assert_eq!(
            (status, body["errcode"].as_str()),
            (StatusCode::PAYLOAD_TOO_LARGE, Some("M_TOO_LARGE")),
            "{body}"
        );
        let response = server
            .http
            .put(server.client_url(&format!(
                "/_matrix/client/v3/rooms/{}/send/m.room.message/nj",
                enc(&room)
            )))
            .bearer_auth(&alice.access_token)
            .body("not json")
            .send()
            .await
            .unwrap();
        assert_eq!(response.status(), 400);
        assert_eq!(
            response.json::<Value>().await.unwrap()["errcode"],
            "M_NOT_JSON"
        );
        server.stop().await;
    }
}

#[tokio::test]
async fn context_prev_content_profiles_and_redacted_because() {
    for kind in test_backends() {
        let server = TestServer::start(kind).await;
        let alice = server.register("alice").await;
        let room = create(
            &server,
            &alice,
            json!({"preset": "public_chat", "topic": "first"}),
        )
        .await;
        let topic_path = format!(
            "/_matrix/client/v3/rooms/{}/state/m.room.topic/",
            enc(&room)
        );
        server
            .put(&topic_path, &alice.access_token, json!({"topic": "second"}))
            .await;
        let mut ids = Vec::new();
        for i in 0..9 {
            let (_, sent) =
                send_text(&server, &alice, &room, &format!("c{i}"), &format!("m{i}")).await;
            ids.push(sent["event_id"].as_str().unwrap().to_owned());
        }

        // The topic change carries what it replaced.
        let (_, page) = server
            .get(
                &format!(
                    "/_matrix/client/v3/rooms/{}/messages?dir=b&limit=20",
                    enc(&room)
                ),
                &alice.access_token,
            )
            .await;
        let topics: Vec<&Value> = page["chunk"]
            .as_array()
            .unwrap()
            .iter()
            .filter(|e| e["type"] == "m.room.topic")
            .collect();
        assert_eq!(topics[0]["content"]["topic"], "second");
        assert_eq!(
            topics[0]["unsigned"]["prev_content"]["topic"], "first",
            "{}",
            topics[0]
        );
        assert!(topics[1]["unsigned"].get("prev_content").is_none());

        // The creator's join carries the profile.
        let (_, member) =
            state_content(&server, &alice, &room, "m.room.member", &alice.user_id).await;
        assert_eq!(member["displayname"], "alice", "{member}");

        // Context: two before, two after, and the state at the event.
        let (status, context) = server
            .get(
                &format!(
                    "/_matrix/client/v3/rooms/{}/context/{}?limit=4",
                    enc(&room),
                    enc(&ids[4])
                ),
                &alice.access_token,
            )
            .await;
        assert_eq!(status, 200, "{context}");
        assert_eq!(context["event"]["event_id"], ids[4]);
        let before: Vec<&str> = context["events_before"]
            .as_array()
            .unwrap()
            .iter()
            .map(|e| e["event_id"].as_str().unwrap())
            .collect();
        let after: Vec<&str> = context["events_after"]
            .as_array()
            .unwrap()
            .iter()
            .map(|e| e["event_id"].as_str().unwrap())
            .collect();
        assert_eq!(before, vec![ids[3].as_str(), ids[2].as_str()]);
        assert_eq!(after, vec![ids[5].as_str(), ids[6].as_str()]);
        assert!(
            context["state"]
                .as_array()
                .unwrap()
                .iter()
                .any(|e| e["type"] == "m.room.create")
        );
        // Its tokens continue paging from its edges.
        let (_, older) = server
            .get(
                &format!(
                    "/_matrix/client/v3/rooms/{}/messages?dir=b&limit=1&from={}",
                    enc(&room),
                    context["start"].as_str().unwrap()
                ),
                &alice.access_token,
            )
            .await;
        assert_eq!(older["chunk"][0]["event_id"], ids[1]);

        // A redacted event says who redacted it and why.
        let (_, redaction) = server
            .put(
                &format!(
                    "/_matrix/client/v3/rooms/{}/redact/{}/rx",
                    enc(&room),
                    enc(&ids[0])
                ),
                &alice.access_token,
                json!({"reason": "spam"}),
            )
            .await;
        let (_, event) = server
            .get(
                &format!(
                    "/_matrix/client/v3/rooms/{}/event/{}",
                    enc(&room),
                    enc(&ids[0])
                ),
                &alice.access_token,
            )
            .await;
        let because = &event["unsigned"]["redacted_because"];
        assert_eq!(because["event_id"], redaction["event_id"]);
        assert_eq!(because["sender"], alice.user_id);
        assert_eq!(because["content"]["reason"], "spam");
        assert_eq!(because["redacts"], ids[0]);
        server.stop().await;
    }
}

#[tokio::test]
async fn deactivation_leaves_rooms() {
    for kind in test_backends() {
        let server = TestServer::start(kind).await;
        let alice = server.register("alice").await;
        let bob = server.register("bob").await;
        let room = create(&server, &alice, json!({"preset": "public_chat"})).await;
        let invited = create(&server, &alice, json!({"invite": [bob.user_id]})).await;
        membership_call(&server, &bob, &room, "join", json!({})).await;

        let (_, challenge) = server
            .post(
                "/_matrix/client/v3/account/deactivate",
                &bob.access_token,
                json!({}),
            )
            .await;
        let (status, body) = server
            .post(
                "/_matrix/client/v3/account/deactivate",
                &bob.access_token,
                json!({"auth": {"type": "m.login.password", "identifier": {"type": "m.id.user", "user": bob.user_id},
                        "password": bob.password, "session": challenge["session"]}}),
            )
            .await;
        assert_eq!(status, 200, "{body}");
        for room in [&room, &invited] {
            let (_, member) =
                state_content(&server, &alice, room, "m.room.member", &bob.user_id).await;
            assert_eq!(member["membership"], "leave", "{kind:?} {room}: {member}");
        }
        server.stop().await;
    }
}

#[tokio::test]
async fn user_directory_finds_room_mates_and_public_room_members() {
    for kind in test_backends() {
        let server = TestServer::start(kind).await;
        let alice = server.register("alice").await;
        let bob = server.register("bob").await;
        let carol = server.register("carol").await;
        let dave = server.register("dave").await;
        // alice and bob share a private room; carol is in a published room; dave is alone.
        let private = create(&server, &alice, json!({"invite": [bob.user_id]})).await;
        membership_call(&server, &bob, &private, "join", json!({})).await;
        create(
            &server,
            &carol,
            json!({"visibility": "public", "preset": "public_chat"}),
        )
        .await;

        let search = |term: &'static str| {
            let server = &server;
            let alice = &alice;
            async move {
                let (status, body) = server
                    .post(
                        "/_matrix/client/v3/user_directory/search",
                        &alice.access_token,
                        json!({"search_term": term, "limit": 10}),
                    )
                    .await;
                assert_eq!(status, 200, "{body}");
                let mut ids: Vec<String> = body["results"]
                    .as_array()
                    .unwrap()
                    .iter()
                    .map(|r| r["user_id"].as_str().unwrap().to_owned())
                    .collect();
                ids.sort();
                ids
            }
        };
        assert_eq!(search("bo").await, vec![bob.user_id.clone()]);
        assert_eq!(
            search("CAR").await,
            vec![carol.user_id.clone()],
            "public-room members, case-insensitive"
        );
        assert!(
            search("dave").await.is_empty(),
            "{} shares no room",
            dave.user_id
        );
        assert!(search("%").await.is_empty(), "LIKE wildcards are literal");
        let (_, limited) = server
            .post(
                "/_matrix/client/v3/user_directory/search",
                &alice.access_token,
                json!({"search_term": "localhost", "limit": 1}),
            )
            .await;
        assert_eq!(limited["limited"], true, "{limited}");
        assert_eq!(limited["results"].as_array().unwrap().len(), 1);
        server.stop().await;
    }
}

#[tokio::test]
async fn empty_state_key_paths_and_bodiless_posts() {
    for kind in test_backends() {
        let server = TestServer::start(kind).await;
        let alice = server.register("alice").await;
        let bob = server.register("bob").await;
        let room = create(
            &server,
            &alice,
            json!({"preset": "public_chat", "name": "n"}),
        )
        .await;
        // `/state/{type}` without a trailing slash is the empty state key too.
        let (status, body) = server
            .get(
                &format!("/_matrix/client/v3/rooms/{}/state/m.room.name", enc(&room)),
                &alice.access_token,
            )
            .await;
        assert_eq!(
            (status, body["name"].as_str()),
            (StatusCode::OK, Some("n")),
            "{body}"
        );
        let (status, _) = server
            .put(
                &format!("/_matrix/client/v3/rooms/{}/state/m.room.name", enc(&room)),
                &alice.access_token,
                json!({"name": "m"}),
            )
            .await;
        assert_eq!(status, 200);
        assert_eq!(
            state_content(&server, &alice, &room, "m.room.name", "")
                .await
                .1["name"],
            "m"
        );
        // A POST with no body at all, as some clients send for /join.
        let response = server
            .http
            .post(server.client_url(&format!("/_matrix/client/v3/join/{}", enc(&room))))
            .bearer_auth(&bob.access_token)
            .send()
            .await
            .unwrap();
        assert_eq!(response.status(), 200);
        server.stop().await;
    }
}

#[tokio::test]
async fn members_at_a_point_and_messages_filters() {
    for kind in test_backends() {
        let server = TestServer::start(kind).await;
        let alice = server.register("alice").await;
        let bob = server.register("bob").await;
        let room = create(&server, &alice, json!({"preset": "public_chat"})).await;
        send_text(&server, &alice, &room, "m1", "before bob").await;
        let (_, page) = server
            .get(
                &format!(
                    "/_matrix/client/v3/rooms/{}/messages?dir=b&limit=1",
                    enc(&room)
                ),
                &alice.access_token,
            )
            .await;
        let before_bob = page["start"].as_str().unwrap().to_owned();
        membership_call(&server, &bob, &room, "join", json!({})).await;
        send_text(&server, &bob, &room, "m2", "from bob").await;

        let (_, now) = server
            .get(
                &format!("/_matrix/client/v3/rooms/{}/members", enc(&room)),
                &alice.access_token,
            )
            .await;
        assert_eq!(now["chunk"].as_array().unwrap().len(), 2);
        let (status, then) = server
            .get(
                &format!(
                    "/_matrix/client/v3/rooms/{}/members?at={before_bob}",
                    enc(&room)
                ),
                &alice.access_token,
            )
            .await;
        assert_eq!(status, 200, "{then}");
        let then: Vec<&str> = then["chunk"]
            .as_array()
            .unwrap()
            .iter()
            .map(|e| e["state_key"].as_str().unwrap())
            .collect();
        assert_eq!(
            then,
            vec![alice.user_id.as_str()],
            "{kind:?}: before bob joined"
        );

        let filter = |json: &str| {
            json.bytes()
                .map(|b| {
                    if b.is_ascii_alphanumeric() {
                        (b as char).to_string()
                    } else {
                        format!("%{b:02X}")
                    }
                })
                .collect::<String>()
        };
        let (_, page) = server
            .get(
                &format!(
                    "/_matrix/client/v3/rooms/{}/messages?dir=b&limit=50&filter={}",
                    enc(&room),
                    filter(&format!(
                        r#"{{"senders":["{}"],"not_types":["m.room.member"]}}"#,
                        bob.user_id
                    ))
                ),
                &alice.access_token,
            )
            .await;
        let chunk = page["chunk"].as_array().unwrap();
        assert_eq!(chunk.len(), 1, "{page}");
        assert_eq!(chunk[0]["content"]["body"], "from bob");
        let (_, page) = server
            .get(
                &format!(
                    "/_matrix/client/v3/rooms/{}/messages?dir=b&limit=50&filter={}",
                    enc(&room),
                    filter(r#"{"types":["m.room.mem*"]}"#)
                ),
                &alice.access_token,
            )
            .await;
        assert!(
            page["chunk"]
                .as_array()
                .unwrap()
                .iter()
                .all(|e| e["type"] == "m.room.member"),
            "{page}"
        );
        assert_eq!(page["chunk"].as_array().unwrap().len(), 2);

        // contains_url: an image with a url against the text messages without one.
        let (status, _) = server
            .put(
                &format!(
                    "/_matrix/client/v3/rooms/{}/send/m.room.message/img",
                    enc(&room)
                ),
                &alice.access_token,
                json!({"msgtype": "m.image", "body": "cat.png", "url": "mxc://localhost/cat"}),
            )
            .await;
        assert_eq!(status, 200);
        let with_url = |wanted: bool| {
            let path = format!(
                "/_matrix/client/v3/rooms/{}/messages?dir=b&limit=50&filter={}",
                enc(&room),
                filter(&format!(
                    r#"{{"contains_url":{wanted},"types":["m.room.message"]}}"#
                ))
            );
            let server = &server;
            let token = alice.access_token.clone();
            async move { server.get(&path, &token).await.1 }
        };
        let page = with_url(true).await;
        let bodies: Vec<&str> = page["chunk"]
            .as_array()
            .unwrap()
            .iter()
            .map(|e| e["content"]["body"].as_str().unwrap())
            .collect();
        assert_eq!(bodies, ["cat.png"], "{page}");
        let page = with_url(false).await;
        let chunk = page["chunk"].as_array().unwrap();
        assert!(!chunk.is_empty(), "{page}");
        assert!(
            chunk.iter().all(|e| e["content"].get("url").is_none()),
            "{page}"
        );
        server.stop().await;
    }
}

/// `/members?at=` lists the members after the last event at or before the token: before the
/// first event of a sync timeline for its `prev_batch`, through the last event a sync delivered
/// for its `next_batch`. A timeline that begins with the room's create event (Complement's
/// `TestGetRoomMembersAtPoint`) has nothing before it; its `prev_batch` is the place the
/// timeline reached, as Synapse's, so the members there are those of that sync, and
/// `/messages` from it reaches the room's start. Filters apply to the members at the point.
#[tokio::test]
async fn members_at_sync_tokens_are_the_members_the_sync_saw() {
    for kind in test_backends() {
        let server = TestServer::start(kind).await;
        let alice = server.register("alice").await;
        let bob = server.register("bob").await;
        let carol = server.register("carol").await;
        let room = create(&server, &alice, json!({"preset": "public_chat"})).await;
        send_text(&server, &alice, &room, "m1", "hello").await;
        let sync = |user: &TestUser, query: String| {
            let (server, token) = (&server, user.access_token.clone());
            async move {
                let (status, body) = server
                    .get(&format!("/_matrix/client/v3/sync?{query}"), &token)
                    .await;
                assert_eq!(status, 200, "{body}");
                body
            }
        };
        let members_at = |query: String| {
            let (server, token) = (&server, alice.access_token.clone());
            let path = format!("/_matrix/client/v3/rooms/{}/members?{query}", enc(&room));
            async move {
                let (status, body) = server.get(&path, &token).await;
                assert_eq!(status, 200, "{path}: {body}");
                let mut members: Vec<String> = body["chunk"]
                    .as_array()
                    .unwrap()
                    .iter()
                    .map(|e| {
                        format!(
                            "{} {}",
                            e["state_key"].as_str().unwrap(),
                            e["content"]["membership"].as_str().unwrap()
                        )
                    })
                    .collect();
                members.sort();
                members
            }
        };
        let joined = |user: &TestUser| format!("{} join", user.user_id);

        // An initial sync whose timeline holds the whole room, from its create event.
        let whole = sync(&alice, String::new()).await;
        let timeline = &whole["rooms"]["join"][&room]["timeline"];
        assert_eq!(timeline["events"][0]["type"], "m.room.create", "{timeline}");
        assert_eq!(timeline["limited"], false);
        let whole_prev_batch = timeline["prev_batch"].as_str().unwrap().to_owned();
        // A limited one of the same moment: it starts at "hello", after alice's join.
        let filter = enc(&json!({"room": {"timeline": {"limit": 1}}}).to_string());
        let limited = sync(&alice, format!("filter={filter}")).await;
        let timeline = &limited["rooms"]["join"][&room]["timeline"];
        assert_eq!(timeline["events"][0]["content"]["body"], "hello");
        let limited_prev_batch = timeline["prev_batch"].as_str().unwrap().to_owned();

        membership_call(&server, &bob, &room, "join", json!({})).await;
        // Bob's join is the last event this sync delivers.
        let after_bob = sync(&alice, String::new()).await["next_batch"]
            .as_str()
            .unwrap()
            .to_owned();
        send_text(&server, &bob, &room, "m2", "hello back").await;
        membership_call(&server, &bob, &room, "leave", json!({})).await;
        let after_leave = sync(&alice, String::new()).await["next_batch"]
            .as_str()
            .unwrap()
            .to_owned();
        membership_call(&server, &carol, &room, "join", json!({})).await;

        for token in [&whole_prev_batch, &limited_prev_batch] {
            assert_eq!(
                members_at(format!("at={}", enc(token))).await,
                [joined(&alice)],
                "{kind:?} at {token}"
            );
        }
        assert_eq!(
            members_at(format!("at={}", enc(&after_bob))).await,
            [joined(&alice), joined(&bob)],
            "{kind:?}: through the last event the sync delivered"
        );
        let bob_left = format!("{} leave", bob.user_id);
        assert_eq!(
            members_at(format!("at={}", enc(&after_leave))).await,
            [joined(&alice), bob_left.clone()],
            "{kind:?}"
        );
        assert_eq!(
            members_at(format!("at={}&not_membership=leave", enc(&after_leave))).await,
            [joined(&alice)],
            "{kind:?}"
        );
        assert_eq!(
            members_at(format!("at={}&membership=leave", enc(&after_leave))).await,
            [bob_left],
            "{kind:?}"
        );
        assert_eq!(
            members_at(String::new()).await,
            [
                joined(&alice),
                format!("{} leave", bob.user_id),
                joined(&carol)
            ],
            "{kind:?}: now"
        );

        // `/messages` from either prev_batch: the limited one gives what came before its
        // timeline; the whole one pages back through that timeline to the room's start.
        let back = |token: &str| {
            let path = format!(
                "/_matrix/client/v3/rooms/{}/messages?dir=b&limit=50&from={}",
                enc(&room),
                enc(token)
            );
            let (server, token) = (&server, alice.access_token.clone());
            async move {
                let (status, page) = server.get(&path, &token).await;
                assert_eq!(status, 200, "{page}");
                page
            }
        };
        let page = back(&limited_prev_batch).await;
        let chunk = page["chunk"].as_array().unwrap();
        assert_eq!(chunk.last().unwrap()["type"], "m.room.create", "{page}");
        assert!(
            chunk.iter().all(|e| e["type"] != "m.room.message"),
            "{kind:?}: only what came before the limited timeline: {page}"
        );
        let page = back(&whole_prev_batch).await;
        let ids = |events: &Value| -> Vec<String> {
            events
                .as_array()
                .unwrap()
                .iter()
                .map(|e| e["event_id"].as_str().unwrap().to_owned())
                .collect()
        };
        let mut timeline_ids = ids(&whole["rooms"]["join"][&room]["timeline"]["events"]);
        timeline_ids.reverse();
        assert_eq!(ids(&page["chunk"]), timeline_ids, "{kind:?}: {page}");
        let after_start = back(page["end"].as_str().unwrap()).await;
        assert_eq!(
            after_start["chunk"],
            json!([]),
            "{kind:?}: the room's start"
        );
        assert!(after_start.get("end").is_none(), "{after_start}");
        server.stop().await;
    }
}

#[tokio::test]
async fn canonical_alias_state_is_checked() {
    for kind in test_backends() {
        let server = TestServer::start(kind).await;
        let alice = server.register("alice").await;
        let room = create(&server, &alice, json!({"room_alias_name": "lobby"})).await;
        let path = format!(
            "/_matrix/client/v3/rooms/{}/state/m.room.canonical_alias/",
            enc(&room)
        );
        let (status, body) = server
            .put(
                &path,
                &alice.access_token,
                json!({"alias": "#nowhere:localhost"}),
            )
            .await;
        assert_eq!(
            (status, body["errcode"].as_str()),
            (StatusCode::BAD_REQUEST, Some("M_BAD_ALIAS")),
            "{kind:?}: {body}"
        );
        let (status, body) = server
            .put(
                &path,
                &alice.access_token,
                json!({"alias": "#lobby:localhost"}),
            )
            .await;
        assert_eq!(status, 200, "{body}");
        server.stop().await;
    }
}

#[tokio::test]
async fn messages_take_sync_tokens_and_hide_unknown_rooms() {
    for kind in test_backends() {
        let server = TestServer::start(kind).await;
        let alice = server.register("alice").await;
        let room = create(&server, &alice, json!({})).await;
        send_text(&server, &alice, &room, "a", "one").await;
        let (_, synced) = server
            .get("/_matrix/client/v3/sync", &alice.access_token)
            .await;
        let next_batch = synced["next_batch"].as_str().unwrap().to_owned();
        send_text(&server, &alice, &room, "b", "two").await;
        // A sync token pages from where that sync ended.
        let (status, page) = server
            .get(
                &format!(
                    "/_matrix/client/v3/rooms/{}/messages?dir=f&from={next_batch}",
                    enc(&room)
                ),
                &alice.access_token,
            )
            .await;
        assert_eq!(status, 200, "{page}");
        let bodies: Vec<&str> = page["chunk"]
            .as_array()
            .unwrap()
            .iter()
            .filter_map(|e| e["content"]["body"].as_str())
            .collect();
        assert_eq!(bodies, vec!["two"], "{kind:?}");
        let (status, body) = server
            .get(
                "/_matrix/client/v3/rooms/%21nope%3Alocalhost/messages?dir=b",
                &alice.access_token,
            )
            .await;
        assert_eq!(
            (status, body["errcode"].as_str()),
            (StatusCode::FORBIDDEN, Some("M_FORBIDDEN"))
        );
        server.stop().await;
    }
}

#[tokio::test]
async fn concurrent_writers_never_see_database_is_locked() {
    for kind in test_backends() {
        let server = TestServer::start(kind).await;
        let alice = server.register("alice").await;
        let rooms = [
            create(&server, &alice, json!({})).await,
            create(&server, &alice, json!({})).await,
        ];
        let mut tasks = Vec::new();
        for i in 0..40 {
            let server = &server;
            let alice = &alice;
            let room = rooms[i % 2].clone();
            tasks.push(async move {
                if i % 4 == 0 {
                    server
                        .post(
                            &format!("/_matrix/client/v3/user/{}/filter", enc(&alice.user_id)),
                            &alice.access_token,
                            json!({"room": {"timeline": {"limit": i}}}),
                        )
                        .await
                        .0
                } else {
                    send_text(server, alice, &room, &format!("c{i}"), "concurrent")
                        .await
                        .0
                }
            });
        }
        let statuses = futures::future::join_all(tasks).await;
        assert!(statuses.iter().all(|s| *s == 200), "{kind:?}: {statuses:?}");
        server.stop().await;
    }
}

#[tokio::test]
async fn identical_room_creations_at_once_get_distinct_rooms() {
    for kind in test_backends() {
        let server = TestServer::start(kind).await;
        let alice = server.register("alice").await;
        // v12 room ids hash the create event: identical requests in one millisecond collide
        // unless the server separates them.
        let requests = (0..16).map(|_| {
            server.post(
                "/_matrix/client/v3/createRoom",
                &alice.access_token,
                json!({}),
            )
        });
        let replies = futures::future::join_all(requests).await;
        let mut ids: Vec<String> = replies
            .iter()
            .map(|(status, body)| {
                assert_eq!(*status, 200, "{kind:?}: {body}");
                body["room_id"].as_str().unwrap().to_owned()
            })
            .collect();
        ids.sort();
        ids.dedup();
        assert_eq!(ids.len(), 16);
        server.stop().await;
    }
}

#[tokio::test]
async fn the_sending_device_sees_its_transaction_id() {
    for kind in test_backends() {
        let server = TestServer::start(kind).await;
        let alice = server.register("alice").await;
        let bob = server.register("bob").await;
        let room = create(&server, &alice, json!({"preset": "public_chat"})).await;
        membership_call(&server, &bob, &room, "join", json!({})).await;
        let (_, other) = server
            .call(
                reqwest::Method::POST,
                "/_matrix/client/v3/login",
                None,
                Some(json!({"type": "m.login.password", "identifier": {"type": "m.id.user", "user": "alice"}, "password": alice.password})),
            )
            .await;
        let other_device = other["access_token"].as_str().unwrap().to_owned();
        let (_, sent) = send_text(&server, &alice, &room, "my-txn", "hello").await;
        let event_id = sent["event_id"].as_str().unwrap();
        let event_path = format!(
            "/_matrix/client/v3/rooms/{}/event/{}",
            enc(&room),
            enc(event_id)
        );

        let (_, own) = server.get(&event_path, &alice.access_token).await;
        assert_eq!(
            own["unsigned"]["transaction_id"], "my-txn",
            "{kind:?}: {own}"
        );
        let (_, page) = server
            .get(
                &format!(
                    "/_matrix/client/v3/rooms/{}/messages?dir=b&limit=1",
                    enc(&room)
                ),
                &alice.access_token,
            )
            .await;
        assert_eq!(page["chunk"][0]["unsigned"]["transaction_id"], "my-txn");
        let (_, synced) = server
            .get("/_matrix/client/v3/sync", &alice.access_token)
            .await;
        let timeline = synced["rooms"]["join"][&room]["timeline"]["events"]
            .as_array()
            .unwrap();
        assert_eq!(
            timeline.last().unwrap()["unsigned"]["transaction_id"],
            "my-txn"
        );

        for token in [other_device.as_str(), bob.access_token.as_str()] {
            let (_, seen) = server.get(&event_path, token).await;
            assert!(
                seen["unsigned"].get("transaction_id").is_none(),
                "only the sending device: {seen}"
            );
        }
        server.stop().await;
    }
}

/// A `/join` body's keys beyond `reason` and `third_party_signed` stay in the member event
/// (Complement's "POST /join/:room_id can join a room with custom content"), on both join
/// endpoints; the membership, the profile and the restricted-join authoriser stay the server's;
/// a body that is not an object joins nobody.
#[tokio::test]
async fn join_keeps_the_clients_extra_member_content() {
    for kind in test_backends() {
        let server = TestServer::start(kind).await;
        let alice = server.register("alice").await;
        let bob = server.register("bob").await;
        let (status, body) = server
            .put(
                &format!(
                    "/_matrix/client/v3/profile/{}/displayname",
                    enc(&bob.user_id)
                ),
                &bob.access_token,
                json!({"displayname": "Bob"}),
            )
            .await;
        assert_eq!(status, StatusCode::OK, "{body}");
        let extra = json!({
            "foo": "bar",
            "nested": {"n": 1},
            "reason": "hello",
            "membership": "leave",
            "displayname": "Not Bob",
            "join_authorised_via_users_server": alice.user_id,
            "third_party_signed": {"sender": "@x:localhost", "mxid": "@y:localhost", "token": "t", "signatures": {}},
        });
        for path in [
            "/_matrix/client/v3/rooms/{}/join",
            "/_matrix/client/v3/join/{}",
        ] {
            let room = create(&server, &alice, json!({"preset": "public_chat"})).await;

            // Not an object: refused, and bob is not in the room.
            let (status, body) = server
                .post(
                    &path.replace("{}", &enc(&room)),
                    &bob.access_token,
                    json!(["foo"]),
                )
                .await;
            assert_eq!(status, StatusCode::BAD_REQUEST, "{path}: {body}");
            assert_eq!(body["errcode"], "M_BAD_JSON", "{path}: {body}");
            let (status, _) =
                state_content(&server, &alice, &room, "m.room.member", &bob.user_id).await;
            assert_eq!(status, StatusCode::NOT_FOUND, "{path}");

            let (status, body) = server
                .post(
                    &path.replace("{}", &enc(&room)),
                    &bob.access_token,
                    extra.clone(),
                )
                .await;
            assert_eq!(status, StatusCode::OK, "{path}: {body}");
            let (status, content) =
                state_content(&server, &alice, &room, "m.room.member", &bob.user_id).await;
            assert_eq!(status, StatusCode::OK, "{path}: {content}");
            assert_eq!(
                content,
                json!({"membership": "join", "displayname": "Bob", "reason": "hello",
                       "foo": "bar", "nested": {"n": 1}}),
                "{path}"
            );
        }
    }
}

/// `/messages` with `lazy_load_members`: `state` holds the member events of the chunk's senders
/// and nobody else's (Complement's TestRoomMessagesLazyLoading); without it, no `state`.
#[tokio::test]
async fn messages_lazy_load_the_senders_members() {
    for kind in test_backends() {
        let server = TestServer::start(kind).await;
        let alice = server.register("alice").await;
        let bob = server.register("bob").await;
        let charlie = server.register("charlie").await;
        let room = create(&server, &alice, json!({"preset": "public_chat"})).await;
        for user in [&bob, &charlie] {
            let (status, body) = membership_call(&server, user, &room, "join", json!({})).await;
            assert_eq!(status, StatusCode::OK, "{body}");
        }
        send_text(&server, &bob, &room, "b1", "from bob").await;
        let (_, synced) = server
            .get("/_matrix/client/v3/sync", &alice.access_token)
            .await;
        let before = synced["next_batch"].as_str().unwrap().to_owned();
        send_text(&server, &charlie, &room, "c1", "from charlie").await;
        let (_, synced) = server
            .get("/_matrix/client/v3/sync", &alice.access_token)
            .await;
        let after = synced["next_batch"].as_str().unwrap().to_owned();

        let lazy = enc(r#"{"lazy_load_members": true}"#);
        let messages = |query: String| {
            let server = &server;
            let alice = &alice;
            let room = &room;
            async move {
                let (status, body) = server
                    .get(
                        &format!("/_matrix/client/v3/rooms/{}/messages?{query}", enc(room)),
                        &alice.access_token,
                    )
                    .await;
                assert_eq!(status, StatusCode::OK, "{body}");
                body
            }
        };
        let members = |body: &Value| -> Vec<(String, String)> {
            let mut out: Vec<(String, String)> = body["state"]
                .as_array()
                .map(|state| {
                    state
                        .iter()
                        .map(|e| {
                            assert_eq!(e["type"], "m.room.member", "{body}");
                            (
                                e["state_key"].as_str().unwrap().to_owned(),
                                e["content"]["membership"].as_str().unwrap().to_owned(),
                            )
                        })
                        .collect()
                })
                .unwrap_or_default();
            out.sort();
            out
        };

        let page = messages(format!("dir=f&from={before}&to={after}&filter={lazy}")).await;
        assert_eq!(page["chunk"].as_array().unwrap().len(), 1, "{page}");
        assert_eq!(
            members(&page),
            [(charlie.user_id.clone(), "join".to_owned())],
            "{page}"
        );
        // Backwards over the whole room: every sender, once.
        let page = messages(format!("dir=b&filter={lazy}")).await;
        assert_eq!(
            members(&page),
            [
                (alice.user_id.clone(), "join".to_owned()),
                (bob.user_id.clone(), "join".to_owned()),
                (charlie.user_id.clone(), "join".to_owned()),
            ],
            "{page}"
        );
        // Not asked for: no members.
        let page = messages(format!("dir=f&from={before}&to={after}")).await;
        assert!(members(&page).is_empty(), "{page}");
    }
}

/// What no sender could send is a bad request (400 M_BAD_JSON), not a permission refused
/// (Complement's MSC4289/MSC4291 tests): a malformed `additional_creators`, a creator in the
/// power levels' `users` (v12), an `m.room.create` into an existing room. createRoom refuses
/// them before writing anything; invitees of a trusted private chat join the named creators.
#[tokio::test]
async fn malformed_creator_rules_are_bad_requests() {
    for kind in test_backends() {
        let server = TestServer::start(kind).await;
        let alice = server.register("alice").await;
        let bob = server.register("bob").await;
        let charlie = server.register("charlie").await;
        let joined_rooms = || async {
            let (_, body) = server
                .get("/_matrix/client/v3/joined_rooms", &alice.access_token)
                .await;
            body["joined_rooms"].as_array().unwrap().len()
        };
        let create_reply = |body: Value| {
            let server = &server;
            let alice = &alice;
            async move {
                server
                    .post("/_matrix/client/v3/createRoom", &alice.access_token, body)
                    .await
            }
        };

        for bad in [
            json!("not-an-array"),
            json!(["@foo:example.com", 42]),
            json!(["@foo:example.com", "not-a-user-id"]),
            json!(["@invalid:dom$ain$.com"]),
        ] {
            let (status, body) =
                create_reply(json!({"room_version": "12", "preset": "public_chat",
                "creation_content": {"additional_creators": bad}}))
                .await;
            assert_eq!(status, StatusCode::BAD_REQUEST, "{bad}: {body}");
            assert_eq!(body["errcode"], "M_BAD_JSON", "{bad}: {body}");
        }
        let (status, body) = create_reply(json!({"room_version": "12", "invite": [bob.user_id],
            "power_level_content_override": {"users": {alice.user_id.clone(): 100}}}))
        .await;
        assert_eq!(status, StatusCode::BAD_REQUEST, "{body}");
        assert_eq!(body["errcode"], "M_BAD_JSON", "{body}");
        assert_eq!(joined_rooms().await, 0, "nothing was written");

        let (status, body) = create_reply(json!({"room_version": "12", "preset": "public_chat",
            "creation_content": {"additional_creators": ["@foo:example.com", "@bar:baz.code"]}}))
        .await;
        assert_eq!(status, StatusCode::OK, "{body}");

        // Invitees of a trusted private chat are creators beside the named ones.
        let room = create(
            &server,
            &alice,
            json!({"room_version": "12", "preset": "trusted_private_chat", "is_direct": true,
                   "invite": [bob.user_id],
                   "creation_content": {"additional_creators": [charlie.user_id]}}),
        )
        .await;
        let (_, content) = state_content(&server, &alice, &room, "m.room.create", "").await;
        let mut creators: Vec<&str> = content["additional_creators"]
            .as_array()
            .unwrap()
            .iter()
            .map(|c| c.as_str().unwrap())
            .collect();
        creators.sort();
        assert_eq!(creators, [bob.user_id.as_str(), charlie.user_id.as_str()]);

        // A creator in the power levels' users, the sender or an additional one.
        for user in [&alice.user_id, &charlie.user_id] {
            let (status, body) = server
                .put(
                    &format!(
                        "/_matrix/client/v3/rooms/{}/state/m.room.power_levels/",
                        enc(&room)
                    ),
                    &alice.access_token,
                    json!({"users": {user.clone(): 100}}),
                )
                .await;
            assert_eq!(status, StatusCode::BAD_REQUEST, "{user}: {body}");
            assert_eq!(body["errcode"], "M_BAD_JSON", "{user}: {body}");
        }

        // No second create event, in any version.
        for version in ["11", "12"] {
            let room = create(&server, &alice, json!({"room_version": version})).await;
            let (status, body) = server
                .put(
                    &format!(
                        "/_matrix/client/v3/rooms/{}/state/m.room.create/",
                        enc(&room)
                    ),
                    &alice.access_token,
                    json!({"room_version": version, "entropy": 100}),
                )
                .await;
            assert_eq!(status, StatusCode::BAD_REQUEST, "{version}: {body}");
            assert_eq!(body["errcode"], "M_BAD_JSON", "{version}: {body}");
        }

        // Lacking power is still forbidden: bob is no creator of this room.
        let room = create(
            &server,
            &alice,
            json!({"room_version": "12", "preset": "public_chat"}),
        )
        .await;
        membership_call(&server, &bob, &room, "join", json!({})).await;
        let (status, body) = server
            .put(
                &format!(
                    "/_matrix/client/v3/rooms/{}/state/m.room.power_levels/",
                    enc(&room)
                ),
                &bob.access_token,
                json!({"users": {bob.user_id.clone(): 100}}),
            )
            .await;
        assert_eq!(status, StatusCode::FORBIDDEN, "{body}");
    }
}

#[tokio::test]
async fn repeating_state_or_a_join_changes_nothing() {
    for kind in test_backends() {
        let server = TestServer::start(kind).await;
        let alice = server.register("alice").await;
        let bob = server.register("bob").await;
        let room = create(&server, &alice, json!({"preset": "public_chat"})).await;
        let put_state = |user: &TestUser, content: Value| {
            let path = format!(
                "/_matrix/client/v3/rooms/{}/state/a.test.state/",
                enc(&room)
            );
            let token = user.access_token.clone();
            let server = &server;
            async move {
                let (status, body) = server.put(&path, &token, content).await;
                assert_eq!(status, 200, "{body}");
                body["event_id"].as_str().unwrap().to_owned()
            }
        };
        let first = put_state(&alice, json!({"a": 1})).await;
        assert_eq!(put_state(&alice, json!({"a": 1})).await, first, "{kind:?}");
        // Other content, or the same content from someone else, is a new event.
        let second = put_state(&alice, json!({"a": 2})).await;
        assert_ne!(second, first);
        membership_call(&server, &bob, &room, "join", json!({})).await;
        let power = state_content(&server, &alice, &room, "m.room.power_levels", "")
            .await
            .1;
        let mut raised = power.clone();
        raised["state_default"] = json!(0);
        let (status, _) = server
            .put(
                &format!(
                    "/_matrix/client/v3/rooms/{}/state/m.room.power_levels/",
                    enc(&room)
                ),
                &alice.access_token,
                raised,
            )
            .await;
        assert_eq!(status, 200);
        assert_ne!(put_state(&bob, json!({"a": 2})).await, second);

        // Joining again while joined, with the same profile: the same member event.
        let member_id = || {
            let path = format!("/_matrix/client/v3/rooms/{}/state", enc(&room));
            let token = alice.access_token.clone();
            let bob_id = bob.user_id.clone();
            let server = &server;
            async move {
                let (_, state) = server.get(&path, &token).await;
                state
                    .as_array()
                    .unwrap()
                    .iter()
                    .find(|e| e["type"] == "m.room.member" && e["state_key"] == bob_id.as_str())
                    .unwrap()["event_id"]
                    .as_str()
                    .unwrap()
                    .to_owned()
            }
        };
        let joined = member_id().await;
        let (status, _) = membership_call(&server, &bob, &room, "join", json!({})).await;
        assert_eq!(status, 200);
        assert_eq!(member_id().await, joined, "{kind:?}");
        server.stop().await;
    }
}

/// `/messages` without `dir` reads backwards (as Synapse does, for clients that leave it out),
/// and so reaches the room's access check: a forgotten room's history is 403.
#[tokio::test]
async fn messages_without_dir_read_backwards_and_check_access() {
    for kind in test_backends() {
        let server = TestServer::start(kind).await;
        let alice = server.register("alice").await;
        let bob = server.register("bob").await;
        let room = create(&server, &alice, json!({"preset": "public_chat"})).await;
        let (status, _) = server
            .post(
                &format!("/_matrix/client/v3/join/{}", enc(&room)),
                &bob.access_token,
                json!({}),
            )
            .await;
        assert_eq!(status, 200);
        for (txn, body) in [("1", "first"), ("2", "second")] {
            let (status, _) = send_text(&server, &alice, &room, txn, body).await;
            assert_eq!(status, 200);
        }
        let messages = |user: &TestUser, query: &str| {
            let url = format!("/_matrix/client/v3/rooms/{}/messages{query}", enc(&room));
            let token = user.access_token.clone();
            let server = &server;
            async move { server.get(&url, &token).await }
        };
        let (status, page) = messages(&bob, "?limit=1").await;
        assert_eq!(status, 200, "{kind:?}: {page}");
        assert_eq!(
            page["chunk"][0]["content"]["body"], "second",
            "{kind:?}: newest first"
        );
        let (status, page) = messages(&bob, "").await;
        assert_eq!(status, 200, "{kind:?}: no query at all: {page}");
        // An explicit direction is still taken, and a bad one refused.
        let (status, page) = messages(&bob, "?dir=f&limit=1").await;
        assert_eq!(status, 200);
        assert_eq!(
            page["chunk"][0]["type"], "m.room.create",
            "{kind:?}: oldest first"
        );
        let (status, _) = messages(&bob, "?dir=x").await;
        assert_eq!(status, 400);

        let (status, _) = membership_call(&server, &bob, &room, "leave", json!({})).await;
        assert_eq!(status, 200);
        let (status, _) = membership_call(&server, &bob, &room, "forget", json!({})).await;
        assert_eq!(status, 200);
        let (status, body) = messages(&bob, "").await;
        assert_eq!(status, 403, "{kind:?}: {body}");
        assert_eq!(body["errcode"], "M_FORBIDDEN");
    }
}

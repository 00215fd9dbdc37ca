//! Ignoring users (`m.ignored_user_list`), on both databases: an ignored user's messages leave
//! the ignoring user's `/sync`, `/messages`, `/event` and `/relations`, their state events stay,
//! their invites are not shown, and unignoring brings everything back.

use myelin_testkit::{TestServer, TestUser, enc, test_backends};
use reqwest::StatusCode;
use serde_json::{Value, json};

async fn ignore(server: &TestServer, user: &TestUser, ignored: &[&str]) {
    let users: serde_json::Map<String, Value> =
        ignored.iter().map(|u| (u.to_string(), json!({}))).collect();
    let (status, body) = server
        .put(
            &format!(
                "/_matrix/client/v3/user/{}/account_data/m.ignored_user_list",
                enc(&user.user_id)
            ),
            &user.access_token,
            json!({"ignored_users": users}),
        )
        .await;
    assert_eq!(status, StatusCode::OK, "{body}");
}

async fn send(
    server: &TestServer,
    user: &TestUser,
    room: &str,
    txn: &str,
    content: Value,
) -> String {
    let (status, body) = server
        .put(
            &format!(
                "/_matrix/client/v3/rooms/{}/send/m.room.message/{txn}",
                enc(room)
            ),
            &user.access_token,
            content,
        )
        .await;
    assert_eq!(status, StatusCode::OK, "{body}");
    body["event_id"].as_str().unwrap().to_owned()
}

fn event_ids(events: &Value) -> Vec<String> {
    events
        .as_array()
        .map(|a| {
            a.iter()
                .filter_map(|e| e["event_id"].as_str().map(str::to_owned))
                .collect()
        })
        .unwrap_or_default()
}

#[tokio::test]
async fn ignored_users_messages_and_invites_are_hidden_and_state_stays() {
    for kind in test_backends() {
        let server = TestServer::start(kind).await;
        let alice = server.register("alice").await;
        let bob = server.register("bob").await;
        let room = server
            .create_room(
                &alice,
                json!({"preset": "public_chat",
                "power_level_content_override": {"events": {"m.room.topic": 0}}}),
            )
            .await;
        let (status, _) = server
            .post(
                &format!("/_matrix/client/v3/join/{}", enc(&room)),
                &bob.access_token,
                json!({}),
            )
            .await;
        assert_eq!(status, StatusCode::OK);
        let message = send(
            &server,
            &bob,
            &room,
            "m1",
            json!({"msgtype": "m.text", "body": "hi"}),
        )
        .await;
        let (status, topic) = server
            .put(
                &format!(
                    "/_matrix/client/v3/rooms/{}/state/m.room.topic/",
                    enc(&room)
                ),
                &bob.access_token,
                json!({"topic": "bob's"}),
            )
            .await;
        assert_eq!(status, StatusCode::OK, "{topic}");
        let topic = topic["event_id"].as_str().unwrap().to_owned();
        let reply = send(
            &server,
            &bob,
            &room,
            "m2",
            json!({"msgtype": "m.text", "body": "in thread",
            "m.relates_to": {"rel_type": "m.thread", "event_id": message}}),
        )
        .await;
        let mine = send(
            &server,
            &alice,
            &room,
            "a1",
            json!({"msgtype": "m.text", "body": "mine"}),
        )
        .await;

        let messages = |user: &TestUser| {
            let path = format!(
                "/_matrix/client/v3/rooms/{}/messages?dir=b&limit=50",
                enc(&room)
            );
            let token = user.access_token.clone();
            let server = &server;
            async move { event_ids(&server.get(&path, &token).await.1["chunk"]) }
        };
        // Positive control: before ignoring, alice sees bob's messages.
        let seen = messages(&alice).await;
        assert!(seen.contains(&message) && seen.contains(&reply), "{seen:?}");

        ignore(&server, &alice, &[&bob.user_id]).await;
        let seen = messages(&alice).await;
        assert!(
            !seen.contains(&message) && !seen.contains(&reply),
            "{seen:?}"
        );
        assert!(
            seen.contains(&topic),
            "state events of ignored users stay: {seen:?}"
        );
        assert!(seen.contains(&mine));
        // Bob is not affected by alice's list.
        assert!(messages(&bob).await.contains(&message));

        let (status, _) = server
            .get(
                &format!(
                    "/_matrix/client/v3/rooms/{}/event/{}",
                    enc(&room),
                    enc(&message)
                ),
                &alice.access_token,
            )
            .await;
        assert_eq!(status, StatusCode::NOT_FOUND);
        let (_, rels) = server
            .get(
                &format!(
                    "/_matrix/client/v1/rooms/{}/relations/{}",
                    enc(&room),
                    enc(&message)
                ),
                &alice.access_token,
            )
            .await;
        assert_eq!(
            rels["errcode"], "M_NOT_FOUND",
            "the ignored root is not visible: {rels}"
        );

        let (_, sync) = server
            .get("/_matrix/client/v3/sync", &alice.access_token)
            .await;
        let timeline = event_ids(&sync["rooms"]["join"][&room]["timeline"]["events"]);
        assert!(
            !timeline.contains(&message) && timeline.contains(&mine),
            "{timeline:?}"
        );

        // Bob's invite to another room is not shown to alice; carol's is.
        let carol = server.register("carol").await;
        let from_bob = server
            .create_room(&bob, json!({"invite": [alice.user_id]}))
            .await;
        let from_carol = server
            .create_room(&carol, json!({"invite": [alice.user_id]}))
            .await;
        let (_, sync) = server
            .get("/_matrix/client/v3/sync", &alice.access_token)
            .await;
        assert!(sync["rooms"]["invite"].get(&from_bob).is_none(), "{sync}");
        assert!(sync["rooms"]["invite"].get(&from_carol).is_some(), "{sync}");

        // Unignoring brings bob back at once (the cached list is invalidated).
        ignore(&server, &alice, &[]).await;
        assert!(messages(&alice).await.contains(&message));
        let (_, sync) = server
            .get("/_matrix/client/v3/sync", &alice.access_token)
            .await;
        assert!(sync["rooms"]["invite"].get(&from_bob).is_some(), "{sync}");
    }
}

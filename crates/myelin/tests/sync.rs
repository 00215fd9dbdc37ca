//! `/sync` on both databases: initial and incremental syncs deliver each event exactly once,
//! gaps are `limited` with a `prev_batch` that `/messages` continues from, long-polls wake on new
//! events and end empty at their timeout, lazy-loaded members, invites, leave and rejoin,
//! `state_after`, account data, bad tokens, and the `limited` flag written out when false.

use std::time::{Duration, Instant};

use myelin_testkit::{TestServer, TestUser, enc, test_backends};
use reqwest::StatusCode;
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

async fn create(server: &TestServer, user: &TestUser, body: Value) -> String {
    server.create_room(user, body).await
}

async fn send(server: &TestServer, user: &TestUser, room: &str, txn: &str) -> String {
    let (status, body) = server
        .put(
            &format!(
                "/_matrix/client/v3/rooms/{}/send/m.room.message/{txn}",
                enc(room)
            ),
            &user.access_token,
            json!({"msgtype": "m.text", "body": txn}),
        )
        .await;
    assert_eq!(status, 200, "{body}");
    body["event_id"].as_str().unwrap().to_owned()
}

fn timeline_ids(body: &Value, room: &str) -> Vec<String> {
    body["rooms"]["join"][room]["timeline"]["events"]
        .as_array()
        .map(|events| {
            events
                .iter()
                .filter(|e| e["type"] == "m.room.message")
                .map(|e| e["event_id"].as_str().unwrap().to_owned())
                .collect()
        })
        .unwrap_or_default()
}

#[tokio::test]
async fn incremental_syncs_deliver_each_event_exactly_once() {
    for kind in test_backends() {
        let server = TestServer::start(kind).await;
        let alice = server.register("alice").await;
        let room = create(&server, &alice, json!({"name": "r"})).await;
        let initial = sync(&server, &alice, "").await;
        let joined = &initial["rooms"]["join"][&room];
        assert!(
            joined["state"]["events"]
                .as_array()
                .is_some_and(|events| events.iter().any(|e| e["type"] == "m.room.create"))
                || joined["timeline"]["events"]
                    .as_array()
                    .unwrap()
                    .iter()
                    .any(|e| e["type"] == "m.room.create"),
            "{joined}"
        );
        assert_eq!(joined["summary"]["m.joined_member_count"], 1);

        let mut since = initial["next_batch"].as_str().unwrap().to_owned();
        let mut sent = Vec::new();
        let mut seen = Vec::new();
        for round in 0..5 {
            for i in 0..3 {
                sent.push(send(&server, &alice, &room, &format!("r{round}m{i}")).await);
            }
            let body = sync(&server, &alice, &format!("since={since}")).await;
            assert_ne!(body["rooms"]["join"][&room]["timeline"]["limited"], true);
            seen.extend(timeline_ids(&body, &room));
            since = body["next_batch"].as_str().unwrap().to_owned();
        }
        assert_eq!(seen, sent, "{kind:?}");
        // Nothing new: the room is not mentioned at all.
        let body = sync(&server, &alice, &format!("since={since}")).await;
        assert!(body["rooms"]["join"].get(&room).is_none(), "{body}");
        server.stop().await;
    }
}

#[tokio::test]
async fn a_gap_is_limited_and_prev_batch_continues_without_loss() {
    for kind in test_backends() {
        let server = TestServer::start(kind).await;
        let alice = server.register("alice").await;
        let room = create(&server, &alice, json!({})).await;
        let since = sync(&server, &alice, "").await["next_batch"]
            .as_str()
            .unwrap()
            .to_owned();
        let mut sent = Vec::new();
        for i in 0..12 {
            sent.push(send(&server, &alice, &room, &format!("g{i}")).await);
        }
        let filter = enc(r#"{"room":{"timeline":{"limit":5}}}"#);
        let body = sync(&server, &alice, &format!("since={since}&filter={filter}")).await;
        let timeline = &body["rooms"]["join"][&room]["timeline"];
        assert_eq!(timeline["limited"], true, "{timeline}");
        let mut got = timeline_ids(&body, &room);
        assert_eq!(got, sent[7..].to_vec());
        // Page back from prev_batch to the sync token's point.
        let mut from = timeline["prev_batch"].as_str().unwrap().to_owned();
        let mut older = Vec::new();
        loop {
            let (_, page) = server
                .get(
                    &format!(
                        "/_matrix/client/v3/rooms/{}/messages?dir=b&limit=3&from={from}",
                        enc(&room)
                    ),
                    &alice.access_token,
                )
                .await;
            let chunk = page["chunk"].as_array().unwrap();
            for event in chunk {
                if event["type"] == "m.room.message" {
                    older.push(event["event_id"].as_str().unwrap().to_owned());
                }
            }
            if older.len() >= 7 || page["end"].is_null() {
                break;
            }
            from = page["end"].as_str().unwrap().to_owned();
        }
        older.truncate(7);
        older.reverse();
        older.append(&mut got);
        assert_eq!(older, sent, "{kind:?}: no loss, no duplicates");
        server.stop().await;
    }
}

#[tokio::test]
async fn long_poll_wakes_on_a_new_event_and_ends_empty_at_its_timeout() {
    for kind in test_backends() {
        let server = TestServer::start(kind).await;
        let alice = server.register("alice").await;
        let bob = server.register("bob").await;
        let room = create(&server, &alice, json!({"preset": "public_chat"})).await;
        server
            .post(
                &format!("/_matrix/client/v3/rooms/{}/join", enc(&room)),
                &bob.access_token,
                json!({}),
            )
            .await;
        let since = sync(&server, &bob, "").await["next_batch"]
            .as_str()
            .unwrap()
            .to_owned();

        // Nothing happens: the long poll ends at its timeout, empty, with the same position.
        let started = Instant::now();
        let body = sync(&server, &bob, &format!("since={since}&timeout=300")).await;
        assert!(
            started.elapsed() >= Duration::from_millis(250),
            "returned before its timeout"
        );
        assert!(
            body["rooms"]["join"]
                .as_object()
                .is_none_or(|j| j.is_empty()),
            "{body}"
        );
        assert_eq!(body["next_batch"], since);

        // Something happens during a long poll: it returns with it, long before the timeout.
        let poll = {
            let server = &server;
            let bob = &bob;
            let since = since.clone();
            async move { sync(server, bob, &format!("since={since}&timeout=20000")).await }
        };
        let sender = async {
            tokio::time::sleep(Duration::from_millis(200)).await;
            send(&server, &alice, &room, "wake").await
        };
        let started = Instant::now();
        let (body, event_id) = tokio::join!(poll, sender);
        assert!(
            started.elapsed() < Duration::from_secs(15),
            "the long poll was not woken"
        );
        assert_eq!(timeline_ids(&body, &room), vec![event_id], "{kind:?}");
        server.stop().await;
    }
}

#[tokio::test]
async fn lazy_loaded_members_are_the_timeline_senders() {
    for kind in test_backends() {
        let server = TestServer::start(kind).await;
        let users: Vec<TestUser> = futures_join(&server, &["alice", "bob", "carol", "dave"]).await;
        let (alice, bob, carol, dave) = (&users[0], &users[1], &users[2], &users[3]);
        let room = create(&server, alice, json!({"preset": "public_chat"})).await;
        for user in [bob, carol, dave] {
            server
                .post(
                    &format!("/_matrix/client/v3/rooms/{}/join", enc(&room)),
                    &user.access_token,
                    json!({}),
                )
                .await;
        }
        for i in 0..5 {
            send(&server, alice, &room, &format!("a{i}")).await;
        }
        send(&server, carol, &room, "c0").await;
        let filter = enc(r#"{"room":{"timeline":{"limit":6},"state":{"lazy_load_members":true}}}"#);
        let body = sync(&server, dave, &format!("filter={filter}")).await;
        let joined = &body["rooms"]["join"][&room];
        let mut members: Vec<&str> = joined["state"]["events"]
            .as_array()
            .unwrap()
            .iter()
            .chain(joined["timeline"]["events"].as_array().unwrap())
            .filter(|e| e["type"] == "m.room.member")
            .map(|e| e["state_key"].as_str().unwrap())
            .collect();
        members.sort();
        members.dedup();
        let mut expected = vec![
            alice.user_id.as_str(),
            carol.user_id.as_str(),
            dave.user_id.as_str(),
        ];
        expected.sort();
        assert_eq!(
            members, expected,
            "{kind:?}: senders plus the syncing user, not bob"
        );
        server.stop().await;
    }
}

async fn futures_join(server: &TestServer, names: &[&str]) -> Vec<TestUser> {
    let mut users = Vec::new();
    for name in names {
        users.push(server.register(name).await);
    }
    users
}

#[tokio::test]
async fn invites_leaves_rejoins_state_after_and_account_data() {
    for kind in test_backends() {
        let server = TestServer::start(kind).await;
        let alice = server.register("alice").await;
        let bob = server.register("bob").await;
        let since = sync(&server, &bob, "").await["next_batch"]
            .as_str()
            .unwrap()
            .to_owned();
        let room = create(
            &server,
            &alice,
            json!({"name": "club", "invite": [bob.user_id]}),
        )
        .await;

        let body = sync(&server, &bob, &format!("since={since}")).await;
        let invite_state = body["rooms"]["invite"][&room]["invite_state"]["events"]
            .as_array()
            .unwrap()
            .clone();
        assert!(
            invite_state
                .iter()
                .any(|e| e["type"] == "m.room.name" && e["content"]["name"] == "club"),
            "{invite_state:?}"
        );
        assert!(
            invite_state
                .iter()
                .any(|e| e["type"] == "m.room.member" && e["state_key"] == bob.user_id.as_str())
        );
        // The create event comes whole (MSC4311), the others stripped.
        let create_event = invite_state
            .iter()
            .find(|e| e["type"] == "m.room.create")
            .expect("the create event is in the invite state");
        assert!(create_event["origin_server_ts"].is_u64(), "{create_event}");
        assert!(create_event["event_id"].is_string(), "{create_event}");
        assert_eq!(create_event["room_id"], room.as_str());
        let name_event = invite_state
            .iter()
            .find(|e| e["type"] == "m.room.name")
            .unwrap();
        assert!(name_event.get("event_id").is_none(), "{name_event}");
        let since = body["next_batch"].as_str().unwrap().to_owned();

        server
            .post(
                &format!("/_matrix/client/v3/rooms/{}/join", enc(&room)),
                &bob.access_token,
                json!({}),
            )
            .await;
        let body = sync(&server, &bob, &format!("since={since}")).await;
        assert!(
            body["rooms"]["join"].get(&room).is_some(),
            "joined room appears: {body}"
        );
        let since = body["next_batch"].as_str().unwrap().to_owned();

        server
            .post(
                &format!("/_matrix/client/v3/rooms/{}/leave", enc(&room)),
                &bob.access_token,
                json!({}),
            )
            .await;
        let body = sync(&server, &bob, &format!("since={since}")).await;
        let left = &body["rooms"]["leave"][&room];
        assert!(
            left["timeline"]["events"]
                .as_array()
                .unwrap()
                .iter()
                .any(|e| e["type"] == "m.room.member" && e["content"]["membership"] == "leave"),
            "{body}"
        );
        assert!(body["rooms"]["join"].get(&room).is_none());
        let since = body["next_batch"].as_str().unwrap().to_owned();
        send(&server, &alice, &room, "while-away").await;

        // Rejoin (alice re-invites): the rejoined room comes with its state again.
        server
            .post(
                &format!("/_matrix/client/v3/rooms/{}/invite", enc(&room)),
                &alice.access_token,
                json!({"user_id": bob.user_id}),
            )
            .await;
        server
            .post(
                &format!("/_matrix/client/v3/rooms/{}/join", enc(&room)),
                &bob.access_token,
                json!({}),
            )
            .await;
        let body = sync(
            &server,
            &bob,
            &format!("since={since}&use_state_after=true"),
        )
        .await;
        let joined = &body["rooms"]["join"][&room];
        let state_after = joined["state_after"]["events"]
            .as_array()
            .expect("state_after with use_state_after");
        assert!(joined.get("state").is_none());
        assert!(
            state_after.iter().any(|e| e["type"] == "m.room.name"),
            "{joined}"
        );
        assert!(state_after.iter().any(|e| e["type"] == "m.room.member"
            && e["state_key"] == bob.user_id.as_str()
            && e["content"]["membership"] == "join"));
        let since = body["next_batch"].as_str().unwrap().to_owned();

        // Account data shows up, and wakes a waiting sync.
        let (status, _) = server
            .put(
                &format!(
                    "/_matrix/client/v3/user/{}/account_data/org.example.test",
                    enc(&bob.user_id)
                ),
                &bob.access_token,
                json!({"k": 1}),
            )
            .await;
        assert_eq!(status, 200);
        let body = sync(&server, &bob, &format!("since={since}&timeout=10000")).await;
        let events = body["account_data"]["events"].as_array().unwrap();
        assert!(
            events
                .iter()
                .any(|e| e["type"] == "org.example.test" && e["content"]["k"] == 1),
            "{body}"
        );
        server.stop().await;
    }
}

#[tokio::test]
async fn bad_tokens_are_errors_not_resets() {
    for kind in test_backends() {
        let server = TestServer::start(kind).await;
        let alice = server.register("alice").await;
        for token in ["garbage", "s1", "s-1_0", "sx_y"] {
            let (status, body) = server
                .get(
                    &format!("/_matrix/client/v3/sync?since={token}"),
                    &alice.access_token,
                )
                .await;
            assert_eq!(
                (status, body["errcode"].as_str()),
                (StatusCode::BAD_REQUEST, Some("M_INVALID_PARAM")),
                "{token}: {body}"
            );
        }
        let (status, body) = server
            .get(
                "/_matrix/client/v3/sync?since=s999999_0_0_0_0_0",
                &alice.access_token,
            )
            .await;
        assert_eq!(status, 400, "a token from the future: {body}");
        let (status, body) = server
            .get("/_matrix/client/v3/sync?filter=12345", &alice.access_token)
            .await;
        assert_eq!(status, 400, "unknown filter id: {body}");
        server.stop().await;
    }
}

/// Every timeline carries `limited`, `false` included (the spec lets it be left out when false,
/// but Complement's `checkJoinFieldsExist` and clients read its absence as a malformed room).
#[tokio::test]
async fn timelines_always_say_whether_they_are_limited() {
    for kind in test_backends() {
        let server = TestServer::start(kind).await;
        let alice = server.register("alice").await;
        let bob = server.register("bob").await;
        let room = create(&server, &alice, json!({"preset": "public_chat"})).await;
        let left = create(&server, &bob, json!({"preset": "public_chat"})).await;
        let initial = sync(&server, &alice, "").await;
        assert_eq!(
            initial["rooms"]["join"][&room]["timeline"]["limited"],
            json!(false),
            "{initial}"
        );
        let since = initial["next_batch"].as_str().unwrap();
        send(&server, &alice, &room, "one").await;
        let incremental = sync(&server, &alice, &format!("since={since}")).await;
        assert_eq!(
            incremental["rooms"]["join"][&room]["timeline"]["limited"],
            json!(false),
            "{incremental}"
        );

        // A left room's timeline too.
        let since = sync(&server, &bob, "").await["next_batch"]
            .as_str()
            .unwrap()
            .to_owned();
        let (status, body) = server
            .post(
                &format!("/_matrix/client/v3/rooms/{}/leave", enc(&left)),
                &bob.access_token,
                json!({}),
            )
            .await;
        assert_eq!(status, 200, "{body}");
        let after = sync(&server, &bob, &format!("since={since}")).await;
        assert_eq!(
            after["rooms"]["leave"][&left]["timeline"]["limited"],
            json!(false),
            "{after}"
        );

        // And a limited one still says so.
        let since = sync(&server, &alice, "").await["next_batch"]
            .as_str()
            .unwrap()
            .to_owned();
        for i in 0..3 {
            send(&server, &alice, &room, &format!("gap{i}")).await;
        }
        let filter = enc(r#"{"room":{"timeline":{"limit":1}}}"#);
        let gapped = sync(&server, &alice, &format!("since={since}&filter={filter}")).await;
        assert_eq!(
            gapped["rooms"]["join"][&room]["timeline"]["limited"],
            json!(true),
            "{gapped}"
        );
    }
}

/// A forgotten room leaves the user's syncs, except for the leave in an incremental sync from
/// before it (Complement's "Leave for forgotten room shows up in v2 incremental /sync"): the
/// user's other devices must learn the room was left. Initial syncs, with or without
/// `include_leave`, and syncs from after the leave never show it.
#[tokio::test]
async fn a_forgotten_rooms_leave_reaches_syncs_from_before_it() {
    for kind in test_backends() {
        let server = TestServer::start(kind).await;
        let alice = server.register("alice").await;
        let bob = server.register("bob").await;
        let room = create(&server, &alice, json!({"preset": "public_chat"})).await;
        let (status, body) = server
            .post(
                &format!("/_matrix/client/v3/rooms/{}/join", enc(&room)),
                &bob.access_token,
                json!({}),
            )
            .await;
        assert_eq!(status, 200, "{body}");
        let before_leave = sync(&server, &alice, "").await["next_batch"]
            .as_str()
            .unwrap()
            .to_owned();
        for action in ["leave", "forget"] {
            let (status, body) = server
                .post(
                    &format!("/_matrix/client/v3/rooms/{}/{action}", enc(&room)),
                    &alice.access_token,
                    json!({}),
                )
                .await;
            assert_eq!(status, 200, "{action}: {body}");
        }
        send(&server, &bob, &room, "after").await;

        let include_leave = enc(r#"{"room":{"include_leave":true}}"#);
        let incremental = sync(
            &server,
            &alice,
            &format!("since={before_leave}&filter={include_leave}"),
        )
        .await;
        assert!(
            incremental["rooms"]["leave"].get(&room).is_some(),
            "{incremental}"
        );
        let after_leave = incremental["next_batch"].as_str().unwrap().to_owned();
        for query in [
            String::new(),
            format!("filter={include_leave}"),
            format!("since={after_leave}&filter={include_leave}&timeout=0"),
        ] {
            let body = sync(&server, &alice, &query).await;
            for section in ["join", "leave", "invite"] {
                assert!(
                    body["rooms"][section].get(&room).is_none(),
                    "{query}: {section}: {body}"
                );
            }
        }
    }
}

/// A room's `summary`: member counts for every room the client is new to, heroes only for a
/// room without a name; and in an incremental sync, for a room whose state section alone shows
/// a change (a limited timeline that leaves the change out), read after that section.
#[tokio::test]
async fn summaries_count_members_and_name_heroes_only_for_unnamed_rooms() {
    for kind in test_backends() {
        let server = TestServer::start(kind).await;
        let alice = server.register("alice").await;
        let bob = server.register("bob").await;
        let named = create(
            &server,
            &alice,
            json!({"name": "named", "invite": [bob.user_id]}),
        )
        .await;
        let unnamed = create(&server, &alice, json!({"invite": [bob.user_id]})).await;
        let initial = sync(&server, &alice, "").await;
        let summary = |body: &Value, room: &str| body["rooms"]["join"][room]["summary"].clone();
        assert_eq!(
            summary(&initial, &named),
            json!({"m.joined_member_count": 1, "m.invited_member_count": 1}),
            "{kind:?}"
        );
        assert_eq!(
            summary(&initial, &unnamed),
            json!({"m.joined_member_count": 1, "m.invited_member_count": 1, "m.heroes": [bob.user_id]}),
            "{kind:?}"
        );

        // A topic, then more messages than the timeline shows: the topic reaches the client
        // through the state section only, and the summary comes with it.
        let since = initial["next_batch"].as_str().unwrap().to_owned();
        let (status, body) = server
            .put(
                &format!(
                    "/_matrix/client/v3/rooms/{}/state/m.room.topic/",
                    enc(&unnamed)
                ),
                &alice.access_token,
                json!({"topic": "t"}),
            )
            .await;
        assert_eq!(status, 200, "{body}");
        for i in 0..3 {
            send(&server, &alice, &unnamed, &format!("s{i}")).await;
        }
        let filter = enc(r#"{"room":{"timeline":{"limit":1}}}"#);
        let body = sync(&server, &alice, &format!("since={since}&filter={filter}")).await;
        let room = &body["rooms"]["join"][&unnamed];
        assert_eq!(room["timeline"]["limited"], true, "{kind:?}: {room}");
        assert!(
            room["state"]["events"]
                .as_array()
                .is_some_and(|events| events.iter().any(|e| e["type"] == "m.room.topic")),
            "{kind:?}: {room}"
        );
        assert_eq!(
            summary(&body, &unnamed),
            json!({"m.joined_member_count": 1, "m.invited_member_count": 1, "m.heroes": [bob.user_id]}),
            "{kind:?}"
        );
        // Messages alone change no summary: the client keeps the one it has.
        send(&server, &alice, &unnamed, "plain").await;
        let next = body["next_batch"].as_str().unwrap().to_owned();
        let body = sync(&server, &alice, &format!("since={next}")).await;
        assert!(
            body["rooms"]["join"][&unnamed]["timeline"]["events"]
                .as_array()
                .is_some_and(|events| !events.is_empty()),
            "{kind:?}: {body}"
        );
        assert!(
            summary(&body, &unnamed)
                .get("m.joined_member_count")
                .is_none(),
            "{kind:?}: {body}"
        );
        server.stop().await;
    }
}

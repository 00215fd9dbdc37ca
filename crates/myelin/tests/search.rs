//! Server-side search (`POST /search`), on both databases: words found in bodies, names and
//! topics, rank and recent order, `next_batch` pagination, groupings and event context; events a
//! user may not see (rooms they were never in, events after they left, ignored users' events,
//! redacted events) are never found; bad input gets the spec's error codes.

use std::sync::atomic::{AtomicU64, Ordering};

use myelin_testkit::{TestServer, TestUser, enc, test_backends};
use reqwest::StatusCode;
use serde_json::{Value, json};

static TXN: AtomicU64 = AtomicU64::new(0);

async fn send(server: &TestServer, user: &TestUser, room: &str, body: &str) -> String {
    let txn = TXN.fetch_add(1, Ordering::Relaxed);
    let (status, reply) = server
        .put(
            &format!(
                "/_matrix/client/v3/rooms/{}/send/m.room.message/t{txn}",
                enc(room)
            ),
            &user.access_token,
            json!({"msgtype": "m.text", "body": body}),
        )
        .await;
    assert_eq!(status, StatusCode::OK, "{reply}");
    reply["event_id"].as_str().unwrap().to_owned()
}

async fn search_raw(
    server: &TestServer,
    user: &TestUser,
    criteria: Value,
    next_batch: Option<&str>,
) -> (StatusCode, Value) {
    let path = match next_batch {
        Some(token) => format!("/_matrix/client/v3/search?next_batch={}", enc(token)),
        None => "/_matrix/client/v3/search".to_owned(),
    };
    server
        .post(
            &path,
            &user.access_token,
            json!({"search_categories": {"room_events": criteria}}),
        )
        .await
}

/// A successful search's `room_events`.
async fn search(server: &TestServer, user: &TestUser, criteria: Value) -> Value {
    search_page(server, user, criteria, None).await
}

async fn search_page(
    server: &TestServer,
    user: &TestUser,
    criteria: Value,
    next_batch: Option<&str>,
) -> Value {
    let (status, body) = search_raw(server, user, criteria, next_batch).await;
    assert_eq!(status, StatusCode::OK, "{body}");
    body["search_categories"]["room_events"].clone()
}

/// The event ids of a search's results, in order.
fn ids(room_events: &Value) -> Vec<String> {
    room_events["results"]
        .as_array()
        .expect("results is always present")
        .iter()
        .map(|r| r["result"]["event_id"].as_str().unwrap().to_owned())
        .collect()
}

async fn join(server: &TestServer, user: &TestUser, room: &str) {
    let (status, body) = server
        .post(
            &format!("/_matrix/client/v3/join/{}", enc(room)),
            &user.access_token,
            json!({}),
        )
        .await;
    assert_eq!(status, StatusCode::OK, "{body}");
}

#[tokio::test]
async fn search_finds_words_in_order_with_pages_groups_and_context() {
    for kind in test_backends() {
        let server = TestServer::start(kind).await;
        let alice = server.register("alice").await;
        let bob = server.register("bob").await;
        let room = server
            .create_room(
                &alice,
                json!({"preset": "public_chat", "name": "Gardening club", "topic": "Compost heaps"}),
            )
            .await;
        let other = server
            .create_room(&alice, json!({"preset": "private_chat"}))
            .await;
        let pie = send(&server, &alice, &room, "apple pie").await;
        let banana = send(&server, &alice, &room, "banana split").await;
        let triple = send(&server, &alice, &room, "apple apple apple").await;
        let tart = send(&server, &alice, &room, "pear and apple tart").await;
        let elsewhere = send(&server, &alice, &other, "apple elsewhere").await;

        // Every word must match; the term's punctuation is not syntax.
        let found = search(
            &server,
            &alice,
            json!({"search_term": "apple", "order_by": "recent"}),
        )
        .await;
        assert_eq!(
            ids(&found),
            vec![
                elsewhere.as_str(),
                tart.as_str(),
                triple.as_str(),
                pie.as_str()
            ]
        );
        assert_eq!(found["count"], 4);
        assert_eq!(found["highlights"], json!(["apple"]));
        assert_eq!(
            found["results"][0]["result"]["content"]["body"],
            "apple elsewhere"
        );
        assert_eq!(found["results"][0]["result"]["room_id"], other.as_str());
        assert!(found.get("next_batch").is_none(), "{found}");
        let found = search(&server, &alice, json!({"search_term": "Pear & APPLE!"})).await;
        assert_eq!(ids(&found), vec![tart.as_str()]);
        let found = search(&server, &alice, json!({"search_term": "cherry"})).await;
        assert_eq!((ids(&found).len(), &found["count"]), (0, &json!(0)));

        // Rank: the message saying "apple" three times first, ranks never increase.
        let ranked = search(
            &server,
            &alice,
            json!({"search_term": "apple", "filter": {"rooms": [room]}}),
        )
        .await;
        assert_eq!(ids(&ranked).len(), 3);
        assert_eq!(ids(&ranked)[0], triple);
        let ranks: Vec<f64> = ranked["results"]
            .as_array()
            .unwrap()
            .iter()
            .map(|r| r["rank"].as_f64().unwrap())
            .collect();
        assert!(ranks.windows(2).all(|w| w[0] >= w[1]), "{ranks:?}");

        // Names and topics are found by their keys only.
        let name = search(&server, &alice, json!({"search_term": "gardening"})).await;
        assert_eq!(ids(&name).len(), 1);
        assert_eq!(name["results"][0]["result"]["type"], "m.room.name");
        let topic = search(
            &server,
            &alice,
            json!({"search_term": "compost", "keys": ["content.topic"]}),
        )
        .await;
        assert_eq!(topic["results"][0]["result"]["type"], "m.room.topic");
        let body_only = search(
            &server,
            &alice,
            json!({"search_term": "gardening compost", "keys": ["content.body"]}),
        )
        .await;
        assert!(ids(&body_only).is_empty(), "{body_only}");

        // Pages of two, newest first, then what is left; the count stays the total.
        let criteria =
            json!({"search_term": "apple", "order_by": "recent", "filter": {"limit": 2}});
        let first = search(&server, &alice, criteria.clone()).await;
        assert_eq!(ids(&first), vec![elsewhere.as_str(), tart.as_str()]);
        let token = first["next_batch"]
            .as_str()
            .expect("a full page has more")
            .to_owned();
        let second = search_page(&server, &alice, criteria.clone(), Some(&token)).await;
        assert_eq!(ids(&second), vec![triple.as_str(), pie.as_str()]);
        assert_eq!(second["count"], 4);
        let token = second["next_batch"].as_str().unwrap().to_owned();
        let third = search_page(&server, &alice, criteria, Some(&token)).await;
        assert!(
            ids(&third).is_empty() && third.get("next_batch").is_none(),
            "{third}"
        );
        // Ranked pages cover every match once.
        let criteria = json!({"search_term": "apple", "order_by": "rank", "filter": {"limit": 3}});
        let first = search(&server, &alice, criteria.clone()).await;
        let token = first["next_batch"].as_str().unwrap().to_owned();
        let second = search_page(&server, &alice, criteria, Some(&token)).await;
        let mut all: Vec<String> = ids(&first).into_iter().chain(ids(&second)).collect();
        all.sort();
        let mut want = vec![pie.clone(), triple.clone(), tart.clone(), elsewhere.clone()];
        want.sort();
        assert_eq!(all, want);

        // Filters: rooms, senders, types.
        join(&server, &bob, &room).await;
        let bobs = send(&server, &bob, &room, "apple from bob").await;
        let found = search(
            &server,
            &alice,
            json!({"search_term": "apple", "filter": {"senders": [bob.user_id]}}),
        )
        .await;
        assert_eq!(ids(&found), vec![bobs.as_str()]);
        let found = search(
            &server,
            &alice,
            json!({"search_term": "apple", "filter": {"not_rooms": [room]}}),
        )
        .await;
        assert_eq!(ids(&found), vec![elsewhere.as_str()]);
        let found = search(
            &server,
            &alice,
            json!({"search_term": "apple", "filter": {"types": ["m.room.topic"]}}),
        )
        .await;
        assert!(ids(&found).is_empty(), "{found}");

        // Groupings by room and by sender.
        let grouped = search(
            &server,
            &alice,
            json!({
                "search_term": "apple",
                "order_by": "recent",
                "groupings": {"group_by": [{"key": "room_id"}, {"key": "sender"}]},
            }),
        )
        .await;
        let by_room = &grouped["groups"]["room_id"];
        assert_eq!(by_room[&room]["results"], json!([bobs, tart, triple, pie]));
        assert_eq!(by_room[&room]["order"], 1);
        assert_eq!(by_room[&other]["results"], json!([elsewhere]));
        assert_eq!(by_room[&other]["order"], 2);
        assert_eq!(
            grouped["groups"]["sender"][&bob.user_id]["results"],
            json!([bobs])
        );

        // Context: the events around a result, newest first before it, with profiles.
        let found = search(
            &server,
            &alice,
            json!({
                "search_term": "banana",
                "event_context": {"before_limit": 1, "after_limit": 2, "include_profile": true},
            }),
        )
        .await;
        assert_eq!(ids(&found), vec![banana.as_str()]);
        let context = &found["results"][0]["context"];
        assert_eq!(context["events_before"][0]["event_id"], pie.as_str());
        assert_eq!(context["events_before"].as_array().unwrap().len(), 1);
        assert_eq!(context["events_after"][0]["event_id"], triple.as_str());
        assert_eq!(context["events_after"][1]["event_id"], tart.as_str());
        assert!(context["start"].is_string() && context["end"].is_string());
        assert_eq!(
            context["profile_info"][&alice.user_id]["displayname"],
            "alice"
        );
        // include_state: the state of the rooms with results.
        let found = search(
            &server,
            &alice,
            json!({"search_term": "banana", "include_state": true}),
        )
        .await;
        let state = found["state"][&room].as_array().expect("the room's state");
        assert!(state.iter().any(|e| e["type"] == "m.room.name"));
    }
}

#[tokio::test]
async fn search_never_finds_what_the_user_may_not_see() {
    for kind in test_backends() {
        let server = TestServer::start(kind).await;
        let alice = server.register("alice").await;
        let bob = server.register("bob").await;
        let carol = server.register("carol").await;
        let eve = server.register("eve").await;
        let room = server
            .create_room(&alice, json!({"preset": "public_chat"}))
            .await;
        join(&server, &carol, &room).await;
        let while_here = send(&server, &alice, &room, "message while carol is here").await;
        let (status, body) = server
            .post(
                &format!("/_matrix/client/v3/rooms/{}/leave", enc(&room)),
                &carol.access_token,
                json!({}),
            )
            .await;
        assert_eq!(status, StatusCode::OK, "{body}");
        send(&server, &alice, &room, "message after carol left").await;

        // Carol finds what she saw, not what came after she left.
        let found = search(&server, &carol, json!({"search_term": "message"})).await;
        assert_eq!(ids(&found), vec![while_here.as_str()]);
        // Alice (positive control) finds both.
        let found = search(&server, &alice, json!({"search_term": "message"})).await;
        assert_eq!(ids(&found).len(), 2);
        // Bob was never in the room: nothing, even when he names it.
        let found = search(
            &server,
            &bob,
            json!({"search_term": "message", "filter": {"rooms": [room]}}),
        )
        .await;
        assert!(ids(&found).is_empty(), "{found}");
        assert_eq!(found["count"], 0);

        // Ignored users' messages are not found; others' are.
        join(&server, &bob, &room).await;
        join(&server, &eve, &room).await;
        send(&server, &eve, &room, "zebra from eve").await;
        let alices = send(&server, &alice, &room, "zebra from alice").await;
        let found = search(&server, &bob, json!({"search_term": "zebra"})).await;
        assert_eq!(ids(&found).len(), 2);
        let (status, body) = server
            .put(
                &format!(
                    "/_matrix/client/v3/user/{}/account_data/m.ignored_user_list",
                    enc(&bob.user_id)
                ),
                &bob.access_token,
                json!({"ignored_users": {eve.user_id.clone(): {}}}),
            )
            .await;
        assert_eq!(status, StatusCode::OK, "{body}");
        for order in ["rank", "recent"] {
            let found = search(
                &server,
                &bob,
                json!({"search_term": "zebra", "order_by": order}),
            )
            .await;
            assert_eq!(ids(&found), vec![alices.as_str()], "{order}");
        }

        // A redacted event is no longer found, in either order.
        let doomed = send(&server, &alice, &room, "ephemeral note").await;
        let kept = send(&server, &alice, &room, "ephemeral but kept").await;
        let found = search(&server, &alice, json!({"search_term": "ephemeral"})).await;
        assert_eq!(ids(&found).len(), 2);
        let (status, body) = server
            .put(
                &format!(
                    "/_matrix/client/v3/rooms/{}/redact/{}/r1",
                    enc(&room),
                    enc(&doomed)
                ),
                &alice.access_token,
                json!({"reason": "testing"}),
            )
            .await;
        assert_eq!(status, StatusCode::OK, "{body}");
        for order in ["rank", "recent"] {
            let found = search(
                &server,
                &alice,
                json!({"search_term": "ephemeral", "order_by": order}),
            )
            .await;
            assert_eq!(ids(&found), vec![kept.as_str()], "{order}");
            assert_eq!(found["count"], 1);
        }
    }
}

#[tokio::test]
async fn search_refuses_bad_input() {
    for kind in test_backends() {
        let server = TestServer::start(kind).await;
        let alice = server.register("alice").await;
        let room = server
            .create_room(&alice, json!({"preset": "private_chat"}))
            .await;
        for i in 0..3 {
            send(&server, &alice, &room, &format!("word {i}")).await;
        }
        let recent_token = search(
            &server,
            &alice,
            json!({"search_term": "word", "order_by": "recent", "filter": {"limit": 1}}),
        )
        .await["next_batch"]
            .as_str()
            .unwrap()
            .to_owned();

        let cases: Vec<(Value, Option<&str>, &str)> = vec![
            (
                json!({"search_term": "word", "order_by": "sideways"}),
                None,
                "M_INVALID_PARAM",
            ),
            (
                json!({"search_term": "word", "keys": ["content.nope"]}),
                None,
                "M_INVALID_PARAM",
            ),
            (
                json!({"search_term": "word", "groupings": {"group_by": [{"key": "colour"}]}}),
                None,
                "M_INVALID_PARAM",
            ),
            (
                json!({"search_term": "word"}),
                Some("garbage"),
                "M_INVALID_PARAM",
            ),
            (
                json!({"search_term": "word"}),
                Some("rank_-4"),
                "M_INVALID_PARAM",
            ),
            // A token of one order is not one of the other.
            (
                json!({"search_term": "word", "order_by": "rank"}),
                Some(&recent_token),
                "M_INVALID_PARAM",
            ),
            (
                json!({"search_term": "word", "filter": {"limit": "ten"}}),
                None,
                "M_BAD_JSON",
            ),
            (
                json!({"search_term": "word", "filter": "rooms"}),
                None,
                "M_BAD_JSON",
            ),
            (
                json!({"search_term": "word", "filter": {"rooms": ["not a room id"]}}),
                None,
                "M_BAD_JSON",
            ),
            (json!({"order_by": "recent"}), None, "M_BAD_JSON"),
        ];
        for (criteria, token, errcode) in cases {
            let (status, body) = search_raw(&server, &alice, criteria.clone(), token).await;
            assert_eq!(
                (status, body["errcode"].as_str()),
                (StatusCode::BAD_REQUEST, Some(errcode)),
                "{criteria} {token:?}: {body}"
            );
        }
        // No search categories at all is a bad body too.
        let (status, body) = server
            .post("/_matrix/client/v3/search", &alice.access_token, json!({}))
            .await;
        assert_eq!(
            (status, body["errcode"].as_str()),
            (StatusCode::BAD_REQUEST, Some("M_BAD_JSON")),
            "{body}"
        );
        // The limit is capped: a huge one still answers (with what there is).
        let found = search(
            &server,
            &alice,
            json!({"search_term": "word", "filter": {"limit": 1_000_000}}),
        )
        .await;
        assert_eq!(ids(&found).len(), 3);
        // Without a token the same request works.
        let found = search(
            &server,
            &alice,
            json!({"search_term": "word", "order_by": "recent"}),
        )
        .await;
        assert_eq!(ids(&found).len(), 3);
    }
}

//! Relations over the client API, on both databases: `/relations` with its filters, directions,
//! pagination and recursion, `/threads` (all and participated), the aggregations bundled into
//! events (threads, references, the latest edit), what a redaction removes, and the errors for
//! unknown events, rooms the reader is not in and bad tokens.

use myelin_testkit::{TestServer, TestUser, enc, test_backends};
use reqwest::StatusCode;
use serde_json::{Value, json};

async fn send(
    server: &TestServer,
    user: &TestUser,
    room: &str,
    kind: &str,
    txn: &str,
    content: Value,
) -> String {
    let (status, body) = server
        .put(
            &format!("/_matrix/client/v3/rooms/{}/send/{kind}/{txn}", enc(room)),
            &user.access_token,
            content,
        )
        .await;
    assert_eq!(status, StatusCode::OK, "{body}");
    body["event_id"].as_str().unwrap().to_owned()
}

fn in_thread(root: &str, body: &str) -> Value {
    json!({"msgtype": "m.text", "body": body,
           "m.relates_to": {"rel_type": "m.thread", "event_id": root}})
}

fn ids(body: &Value, field: &str) -> Vec<String> {
    body[field]
        .as_array()
        .unwrap_or_else(|| panic!("no {field} in {body}"))
        .iter()
        .map(|e| e["event_id"].as_str().unwrap().to_owned())
        .collect()
}

async fn relations(
    server: &TestServer,
    user: &TestUser,
    room: &str,
    path: &str,
) -> (StatusCode, Value) {
    server
        .get(
            &format!("/_matrix/client/v1/rooms/{}/relations/{path}", enc(room)),
            &user.access_token,
        )
        .await
}

#[tokio::test]
async fn relations_filter_by_type_and_page_both_ways() {
    for kind in test_backends() {
        let server = TestServer::start(kind).await;
        let alice = server.register("alice").await;
        let room = server
            .create_room(&alice, json!({"preset": "public_chat"}))
            .await;
        let root = send(
            &server,
            &alice,
            &room,
            "m.room.message",
            "r",
            json!({"msgtype": "m.text", "body": "root"}),
        )
        .await;
        let reply = send(
            &server,
            &alice,
            &room,
            "m.room.message",
            "t1",
            in_thread(&root, "reply"),
        )
        .await;
        let dummy = send(
            &server,
            &alice,
            &room,
            "m.dummy",
            "t2",
            json!({"m.relates_to": {"rel_type": "m.thread", "event_id": root}}),
        )
        .await;
        let edit = send(&server, &alice, &room, "m.room.message", "e1", json!({
            "msgtype": "m.text", "body": "* edited", "m.new_content": {"msgtype": "m.text", "body": "edited"},
            "m.relates_to": {"rel_type": "m.replace", "event_id": root}})).await;
        // An unrelated message is never a relation.
        send(
            &server,
            &alice,
            &room,
            "m.room.message",
            "x",
            json!({"msgtype": "m.text", "body": "other"}),
        )
        .await;

        let root_enc = enc(&root);
        let (status, body) = relations(&server, &alice, &room, &root_enc).await;
        assert_eq!(status, StatusCode::OK, "{body}");
        assert_eq!(
            ids(&body, "chunk"),
            vec![edit.clone(), dummy.clone(), reply.clone()],
            "newest first by default"
        );
        assert!(
            body.get("next_batch").is_none(),
            "one page holds them all: {body}"
        );

        let (_, body) = relations(&server, &alice, &room, &format!("{root_enc}/m.thread")).await;
        assert_eq!(ids(&body, "chunk"), vec![dummy.clone(), reply.clone()]);
        let (_, body) = relations(
            &server,
            &alice,
            &room,
            &format!("{root_enc}/m.thread/m.room.message"),
        )
        .await;
        assert_eq!(ids(&body, "chunk"), vec![reply.clone()]);

        // Pages of one, forwards: oldest first, each next_batch leading on.
        let (_, first) =
            relations(&server, &alice, &room, &format!("{root_enc}?dir=f&limit=1")).await;
        assert_eq!(ids(&first, "chunk"), vec![reply.clone()]);
        let next = first["next_batch"].as_str().unwrap();
        let (_, second) = relations(
            &server,
            &alice,
            &room,
            &format!("{root_enc}?dir=f&limit=1&from={}", enc(next)),
        )
        .await;
        assert_eq!(ids(&second, "chunk"), vec![dummy.clone()]);
        assert_eq!(second["prev_batch"], next);
        // Backwards from the same token: what came before it.
        let (_, back) = relations(
            &server,
            &alice,
            &room,
            &format!(
                "{root_enc}?limit=5&from={}",
                enc(second["next_batch"].as_str().unwrap())
            ),
        )
        .await;
        assert_eq!(ids(&back, "chunk"), vec![reply.clone()]);

        // A sync token is a valid `from`: only relations after it.
        let (_, sync) = server
            .get("/_matrix/client/v3/sync", &alice.access_token)
            .await;
        let since = sync["next_batch"].as_str().unwrap().to_owned();
        let later = send(
            &server,
            &alice,
            &room,
            "m.room.message",
            "t3",
            in_thread(&root, "later"),
        )
        .await;
        let (_, body) = relations(
            &server,
            &alice,
            &room,
            &format!("{root_enc}?dir=f&from={}", enc(&since)),
        )
        .await;
        assert_eq!(ids(&body, "chunk"), vec![later]);
    }
}

#[tokio::test]
async fn relations_recurse_follows_relations_of_relations() {
    for kind in test_backends() {
        let server = TestServer::start(kind).await;
        let alice = server.register("alice").await;
        let room = server.create_room(&alice, json!({})).await;
        let root = send(
            &server,
            &alice,
            &room,
            "m.room.message",
            "r",
            json!({"msgtype": "m.text", "body": "root"}),
        )
        .await;
        let reply = send(
            &server,
            &alice,
            &room,
            "m.room.message",
            "t1",
            in_thread(&root, "reply"),
        )
        .await;
        let reaction = send(
            &server,
            &alice,
            &room,
            "m.reaction",
            "a1",
            json!({
            "m.relates_to": {"rel_type": "m.annotation", "event_id": reply, "key": "👍"}}),
        )
        .await;

        let (_, flat) = relations(&server, &alice, &room, &enc(&root)).await;
        assert_eq!(ids(&flat, "chunk"), vec![reply.clone()]);
        assert!(flat.get("recursion_depth").is_none());
        let (status, deep) = relations(
            &server,
            &alice,
            &room,
            &format!("{}?recurse=true", enc(&root)),
        )
        .await;
        assert_eq!(status, StatusCode::OK, "{deep}");
        assert_eq!(ids(&deep, "chunk"), vec![reaction, reply]);
        assert_eq!(
            deep["recursion_depth"], 2,
            "the reaction is two relations deep"
        );
    }
}

#[tokio::test]
async fn relations_refuse_strangers_unknown_events_and_bad_tokens() {
    for kind in test_backends() {
        let server = TestServer::start(kind).await;
        let alice = server.register("alice").await;
        let eve = server.register("eve").await;
        let room = server
            .create_room(&alice, json!({"preset": "private_chat"}))
            .await;
        let root = send(
            &server,
            &alice,
            &room,
            "m.room.message",
            "r",
            json!({"msgtype": "m.text", "body": "secret"}),
        )
        .await;
        send(
            &server,
            &alice,
            &room,
            "m.room.message",
            "t1",
            in_thread(&root, "reply"),
        )
        .await;

        // Positive control: the member reads the relation.
        let (status, body) = relations(&server, &alice, &room, &enc(&root)).await;
        assert_eq!((status, ids(&body, "chunk").len()), (StatusCode::OK, 1));

        // A stranger learns nothing, whether the room exists or not.
        let (status, body) = relations(&server, &eve, &room, &enc(&root)).await;
        assert_eq!(
            (status, body["errcode"].as_str()),
            (StatusCode::FORBIDDEN, Some("M_FORBIDDEN"))
        );
        let (status, body) = relations(&server, &eve, "!nowhere:localhost", &enc(&root)).await;
        assert_eq!(
            (status, body["errcode"].as_str()),
            (StatusCode::FORBIDDEN, Some("M_FORBIDDEN"))
        );
        let (status, body) = server
            .get(
                &format!("/_matrix/client/v1/rooms/{}/threads", enc(&room)),
                &eve.access_token,
            )
            .await;
        assert_eq!(
            (status, body["errcode"].as_str()),
            (StatusCode::FORBIDDEN, Some("M_FORBIDDEN"))
        );

        // An unknown event is M_NOT_FOUND for a member.
        let (status, body) = relations(&server, &alice, &room, &enc("$unknown")).await;
        assert_eq!(
            (status, body["errcode"].as_str()),
            (StatusCode::NOT_FOUND, Some("M_NOT_FOUND"))
        );

        for bad in ["nonsense", "s-5", "s99999999999999999999999", "s"] {
            let (status, body) = relations(
                &server,
                &alice,
                &room,
                &format!("{}?from={}", enc(&root), enc(bad)),
            )
            .await;
            assert_eq!(
                (status, body["errcode"].as_str()),
                (StatusCode::BAD_REQUEST, Some("M_INVALID_PARAM")),
                "{bad}"
            );
        }
        let (status, body) = server
            .get(
                &format!("/_matrix/client/v1/rooms/{}/threads?from=bad", enc(&room)),
                &alice.access_token,
            )
            .await;
        assert_eq!(
            (status, body["errcode"].as_str()),
            (StatusCode::BAD_REQUEST, Some("M_INVALID_PARAM"))
        );
    }
}

#[tokio::test]
async fn threads_list_roots_by_latest_reply_with_their_aggregation() {
    for kind in test_backends() {
        let server = TestServer::start(kind).await;
        let alice = server.register("alice").await;
        let bob = server.register("bob").await;
        let room = server
            .create_room(&alice, json!({"preset": "public_chat"}))
            .await;
        let (status, _) = server
            .post(
                &format!("/_matrix/client/v3/join/{}", enc(&room)),
                &bob.access_token,
                json!({}),
            )
            .await;
        assert_eq!(status, StatusCode::OK);
        let one = send(
            &server,
            &alice,
            &room,
            "m.room.message",
            "1",
            json!({"msgtype": "m.text", "body": "one"}),
        )
        .await;
        let two = send(
            &server,
            &bob,
            &room,
            "m.room.message",
            "2",
            json!({"msgtype": "m.text", "body": "two"}),
        )
        .await;
        let reply_one = send(
            &server,
            &alice,
            &room,
            "m.room.message",
            "3",
            in_thread(&one, "r1"),
        )
        .await;
        let reply_two = send(
            &server,
            &bob,
            &room,
            "m.room.message",
            "4",
            in_thread(&two, "r2"),
        )
        .await;

        let threads = |user: &TestUser, query: &str| {
            let path = format!("/_matrix/client/v1/rooms/{}/threads{query}", enc(&room));
            let token = user.access_token.clone();
            let server = &server;
            async move { server.get(&path, &token).await }
        };
        let (status, body) = threads(&alice, "").await;
        assert_eq!(status, StatusCode::OK, "{body}");
        assert_eq!(ids(&body, "chunk"), vec![two.clone(), one.clone()]);
        let latest: Vec<&str> = body["chunk"]
            .as_array()
            .unwrap()
            .iter()
            .map(|e| {
                e["unsigned"]["m.relations"]["m.thread"]["latest_event"]["event_id"]
                    .as_str()
                    .unwrap()
            })
            .collect();
        assert_eq!(latest, vec![reply_two.as_str(), reply_one.as_str()]);
        assert_eq!(
            body["chunk"][0]["unsigned"]["m.relations"]["m.thread"]["count"],
            1
        );
        assert_eq!(
            body["chunk"][0]["unsigned"]["m.relations"]["m.thread"]["current_user_participated"],
            false
        );
        assert_eq!(
            body["chunk"][1]["unsigned"]["m.relations"]["m.thread"]["current_user_participated"],
            true
        );

        // A new reply moves its thread to the front.
        let again = send(
            &server,
            &bob,
            &room,
            "m.room.message",
            "5",
            in_thread(&one, "r3"),
        )
        .await;
        let (_, body) = threads(&alice, "").await;
        assert_eq!(ids(&body, "chunk"), vec![one.clone(), two.clone()]);
        assert_eq!(
            body["chunk"][0]["unsigned"]["m.relations"]["m.thread"]["latest_event"]["event_id"],
            again.as_str()
        );
        assert_eq!(
            body["chunk"][0]["unsigned"]["m.relations"]["m.thread"]["count"],
            2
        );

        // Pages, and only the threads one took part in.
        let (_, page) = threads(&alice, "?limit=1").await;
        assert_eq!(ids(&page, "chunk"), vec![one.clone()]);
        let (_, page) = threads(
            &alice,
            &format!(
                "?limit=1&from={}",
                enc(page["next_batch"].as_str().unwrap())
            ),
        )
        .await;
        assert_eq!(ids(&page, "chunk"), vec![two.clone()]);
        let carol = server.register("carol").await;
        server
            .post(
                &format!("/_matrix/client/v3/join/{}", enc(&room)),
                &carol.access_token,
                json!({}),
            )
            .await;
        let (_, mine) = threads(&carol, "?include=participated").await;
        assert_eq!(ids(&mine, "chunk"), Vec::<String>::new());
        let (_, mine) = threads(&bob, "?include=participated").await;
        assert_eq!(
            ids(&mine, "chunk"),
            vec![one, two],
            "bob replied to one and started two"
        );
    }
}

#[tokio::test]
async fn edits_and_references_are_bundled_and_redaction_removes_them() {
    for kind in test_backends() {
        let server = TestServer::start(kind).await;
        let alice = server.register("alice").await;
        let bob = server.register("bob").await;
        let room = server
            .create_room(&alice, json!({"preset": "public_chat"}))
            .await;
        server
            .post(
                &format!("/_matrix/client/v3/join/{}", enc(&room)),
                &bob.access_token,
                json!({}),
            )
            .await;
        let original = send(
            &server,
            &alice,
            &room,
            "m.room.message",
            "o",
            json!({"msgtype": "m.text", "body": "helo"}),
        )
        .await;
        let edit = |txn: &'static str, user: &'static str, text: &'static str| {
            let original = original.clone();
            let (server, room) = (&server, room.clone());
            let user = if user == "alice" {
                alice.clone()
            } else {
                bob.clone()
            };
            async move {
                send(
                    server,
                    &user,
                    &room,
                    "m.room.message",
                    txn,
                    json!({
                    "msgtype": "m.text", "body": format!("* {text}"),
                    "m.new_content": {"msgtype": "m.text", "body": text},
                    "m.relates_to": {"rel_type": "m.replace", "event_id": original}}),
                )
                .await
            }
        };
        let first = edit("e1", "alice", "hello").await;
        let second = edit("e2", "alice", "hello!").await;
        // Someone else's "edit" is not valid and never bundled.
        edit("e3", "bob", "pwned").await;
        let reference = send(
            &server,
            &bob,
            &room,
            "m.room.message",
            "ref",
            json!({
            "msgtype": "m.text", "body": "see above",
            "m.relates_to": {"rel_type": "m.reference", "event_id": original}}),
        )
        .await;

        let event = |id: String| {
            let path = format!("/_matrix/client/v3/rooms/{}/event/{}", enc(&room), enc(&id));
            let token = alice.access_token.clone();
            let server = &server;
            async move { server.get(&path, &token).await }
        };
        let (status, body) = event(original.clone()).await;
        assert_eq!(status, StatusCode::OK, "{body}");
        let bundled = &body["unsigned"]["m.relations"];
        assert_eq!(
            bundled["m.replace"]["event_id"],
            second.as_str(),
            "the latest valid edit: {body}"
        );
        assert_eq!(
            bundled["m.reference"]["chunk"],
            json!([{"event_id": reference}])
        );
        assert_eq!(
            body["content"]["body"], "helo",
            "the original is never rewritten"
        );

        // The same bundle in /messages.
        let (_, page) = server
            .get(
                &format!(
                    "/_matrix/client/v3/rooms/{}/messages?dir=b&limit=50",
                    enc(&room)
                ),
                &alice.access_token,
            )
            .await;
        let in_page = page["chunk"]
            .as_array()
            .unwrap()
            .iter()
            .find(|e| e["event_id"] == original.as_str())
            .unwrap();
        assert_eq!(
            in_page["unsigned"]["m.relations"]["m.replace"]["event_id"],
            second.as_str()
        );

        // Redacting the latest edit falls back to the one before; it leaves /relations too.
        let (status, _) = server
            .put(
                &format!(
                    "/_matrix/client/v3/rooms/{}/redact/{}/r1",
                    enc(&room),
                    enc(&second)
                ),
                &alice.access_token,
                json!({}),
            )
            .await;
        assert_eq!(status, StatusCode::OK);
        let (_, body) = event(original.clone()).await;
        assert_eq!(
            body["unsigned"]["m.relations"]["m.replace"]["event_id"],
            first.as_str()
        );
        let (_, rels) = relations(
            &server,
            &alice,
            &room,
            &format!("{}/m.replace", enc(&original)),
        )
        .await;
        assert!(!ids(&rels, "chunk").contains(&second), "{rels}");

        // A redacted original gets no edit bundled.
        let (status, _) = server
            .put(
                &format!(
                    "/_matrix/client/v3/rooms/{}/redact/{}/r2",
                    enc(&room),
                    enc(&original)
                ),
                &alice.access_token,
                json!({}),
            )
            .await;
        assert_eq!(status, StatusCode::OK);
        let (_, body) = event(original.clone()).await;
        assert!(
            body["unsigned"]["m.relations"].get("m.replace").is_none(),
            "{body}"
        );
    }
}

/// Sync timelines carry bundled aggregations like `/messages` does, in joined and left rooms.
#[tokio::test]
async fn sync_timelines_bundle_aggregations() {
    for kind in test_backends() {
        let server = TestServer::start(kind).await;
        let alice = server.register("alice").await;
        let bob = server.register("bob").await;
        let room = server
            .create_room(&alice, json!({"preset": "public_chat"}))
            .await;
        server
            .post(
                &format!("/_matrix/client/v3/join/{}", enc(&room)),
                &bob.access_token,
                json!({}),
            )
            .await;
        let root = send(
            &server,
            &alice,
            &room,
            "m.room.message",
            "root",
            json!({"msgtype": "m.text", "body": "root"}),
        )
        .await;
        let reply = send(
            &server,
            &bob,
            &room,
            "m.room.message",
            "reply",
            in_thread(&root, "reply"),
        )
        .await;
        let edit = send(&server, &alice, &room, "m.room.message", "edit", json!({
            "msgtype": "m.text", "body": "* root!", "m.new_content": {"msgtype": "m.text", "body": "root!"},
            "m.relates_to": {"rel_type": "m.replace", "event_id": root}})).await;

        let root_in = |body: &Value, section: &str| -> Value {
            body["rooms"][section][&room]["timeline"]["events"]
                .as_array()
                .unwrap_or_else(|| panic!("no {section} timeline: {body}"))
                .iter()
                .find(|e| e["event_id"] == root.as_str())
                .unwrap_or_else(|| panic!("no root in {body}"))
                .clone()
        };
        let check = |event: &Value| {
            let relations = &event["unsigned"]["m.relations"];
            assert_eq!(relations["m.thread"]["count"], 1, "{event}");
            assert_eq!(
                relations["m.thread"]["latest_event"]["event_id"], reply,
                "{event}"
            );
            assert_eq!(relations["m.replace"]["event_id"], edit, "{event}");
        };
        // A second room whose messages nothing relates to: its timeline has nothing bundled,
        // and the first room's bundles do not depend on being the only room.
        let quiet = server.create_room(&alice, json!({})).await;
        let plain = send(
            &server,
            &alice,
            &quiet,
            "m.room.message",
            "plain",
            json!({"msgtype": "m.text", "body": "plain"}),
        )
        .await;

        let (status, body) = server
            .get("/_matrix/client/v3/sync", &alice.access_token)
            .await;
        assert_eq!(status, StatusCode::OK, "{body}");
        check(&root_in(&body, "join"));
        let quiet_timeline = body["rooms"]["join"][&quiet]["timeline"]["events"]
            .as_array()
            .unwrap_or_else(|| panic!("no timeline for the second room: {body}"));
        let plain_event = quiet_timeline
            .iter()
            .find(|e| e["event_id"] == plain.as_str())
            .unwrap_or_else(|| panic!("no plain message in {body}"));
        assert!(
            plain_event["unsigned"].get("m.relations").is_none(),
            "{plain_event}"
        );

        server
            .post(
                &format!("/_matrix/client/v3/rooms/{}/leave", enc(&room)),
                &bob.access_token,
                json!({}),
            )
            .await;
        let filter = enc(r#"{"room":{"include_leave":true}}"#);
        let (status, body) = server
            .get(
                &format!("/_matrix/client/v3/sync?filter={filter}"),
                &bob.access_token,
            )
            .await;
        assert_eq!(status, StatusCode::OK, "{body}");
        check(&root_in(&body, "leave"));
    }
}

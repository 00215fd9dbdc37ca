//! The client-server API read as an attacker would (issue 13), on both databases: membership
//! changes through the state endpoint, redactions through the send endpoint, transaction ids
//! scoped to their path, reads that must not tell non-members anything, extreme tokens, and the
//! bounded sets (nonces, metrics labels). Each refusal is shown next to the same request that
//! is allowed (the positive control), so a test cannot pass by refusing everything.

use hmac::{Hmac, Mac};
use myelin_testkit::{SHARED_SECRET, TestServer, TestUser, enc, test_backends};
use reqwest::StatusCode;
use serde_json::{Value, json};

fn errcode(reply: &(StatusCode, Value)) -> (StatusCode, Option<&str>) {
    (reply.0, reply.1["errcode"].as_str())
}

async fn put_state(
    server: &TestServer,
    user: &TestUser,
    room: &str,
    kind: &str,
    key: &str,
    content: Value,
) -> (StatusCode, Value) {
    server
        .put(
            &format!(
                "/_matrix/client/v3/rooms/{}/state/{kind}/{}",
                enc(room),
                enc(key)
            ),
            &user.access_token,
            content,
        )
        .await
}

async fn get_state(
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

async fn send(
    server: &TestServer,
    user: &TestUser,
    room: &str,
    kind: &str,
    txn: &str,
    content: Value,
) -> (StatusCode, Value) {
    server
        .put(
            &format!("/_matrix/client/v3/rooms/{}/send/{kind}/{txn}", enc(room)),
            &user.access_token,
            content,
        )
        .await
}

async fn text(server: &TestServer, user: &TestUser, room: &str, txn: &str) -> String {
    let reply = send(
        server,
        user,
        room,
        "m.room.message",
        txn,
        json!({"msgtype": "m.text", "body": txn}),
    )
    .await;
    assert_eq!(reply.0, 200, "{}", reply.1);
    reply.1["event_id"].as_str().unwrap().to_owned()
}

async fn redact(
    server: &TestServer,
    user: &TestUser,
    room: &str,
    event: &str,
    txn: &str,
) -> (StatusCode, Value) {
    server
        .put(
            &format!(
                "/_matrix/client/v3/rooms/{}/redact/{}/{txn}",
                enc(room),
                enc(event)
            ),
            &user.access_token,
            json!({}),
        )
        .await
}

async fn get_event(
    server: &TestServer,
    user: &TestUser,
    room: &str,
    event: &str,
) -> (StatusCode, Value) {
    server
        .get(
            &format!(
                "/_matrix/client/v3/rooms/{}/event/{}",
                enc(room),
                enc(event)
            ),
            &user.access_token,
        )
        .await
}

async fn membership(
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

/// The events of a room's timeline as `user` pages it (newest first).
async fn timeline(server: &TestServer, user: &TestUser, room: &str) -> Vec<Value> {
    let (status, page) = server
        .get(
            &format!(
                "/_matrix/client/v3/rooms/{}/messages?dir=b&limit=100",
                enc(room)
            ),
            &user.access_token,
        )
        .await;
    assert_eq!(status, 200, "{page}");
    page["chunk"].as_array().unwrap().clone()
}

#[tokio::test]
async fn every_membership_endpoint_takes_the_same_rules() {
    for kind in test_backends() {
        let server = TestServer::start(kind).await;
        let admin = server.register("admin").await;
        let bob = server.register("bob").await;
        let carol = server.register("carol").await;
        let space = server
            .create_room(&admin, json!({"preset": "public_chat"}))
            .await;
        let restricted = server
            .create_room(
                &admin,
                json!({"preset": "private_chat", "initial_state": [{"type": "m.room.join_rules", "state_key": "",
                   "content": {"join_rule": "restricted", "allow": [{"type": "m.room_membership", "room_id": space}]}}]}),
            )
            .await;

        // Bob is in no allowed room: naming an authoriser himself does not get him in.
        let reply = put_state(
            &server,
            &bob,
            &restricted,
            "m.room.member",
            &bob.user_id,
            json!({"membership": "join", "join_authorised_via_users_server": admin.user_id}),
        )
        .await;
        assert_eq!(
            errcode(&reply),
            (StatusCode::FORBIDDEN, Some("M_FORBIDDEN")),
            "{kind:?}: {}",
            reply.1
        );
        let reply = get_state(&server, &admin, &restricted, "m.room.member", &bob.user_id).await;
        assert_eq!(
            reply.0, 404,
            "{kind:?}: bob has no member event: {}",
            reply.1
        );
        // Nor through /join.
        let reply = membership(&server, &bob, &restricted, "join", json!({})).await;
        assert_eq!(reply.0, 403, "{}", reply.1);

        // Positive control: carol is in the space; the state endpoint lets her in, with the
        // authoriser this server chose (her own choice of one is ignored).
        assert_eq!(
            membership(&server, &carol, &space, "join", json!({}))
                .await
                .0,
            200
        );
        let reply = put_state(
            &server,
            &carol,
            &restricted,
            "m.room.member",
            &carol.user_id,
            json!({"membership": "join", "join_authorised_via_users_server": "@nobody:localhost"}),
        )
        .await;
        assert_eq!(reply.0, 200, "{kind:?}: {}", reply.1);
        let (_, member) = get_state(
            &server,
            &admin,
            &restricted,
            "m.room.member",
            &carol.user_id,
        )
        .await;
        assert_eq!(member["membership"], "join");
        assert_eq!(
            member["join_authorised_via_users_server"], admin.user_id,
            "{member}"
        );

        // The other resident checks hold on the state endpoint too: an invite to a server that
        // cannot be reached fails (502, nothing stored), no kicking someone who is not in the
        // room.
        let reply = put_state(
            &server,
            &admin,
            &space,
            "m.room.member",
            "@someone:elsewhere.example",
            json!({"membership": "invite"}),
        )
        .await;
        assert_eq!(
            errcode(&reply),
            (StatusCode::BAD_GATEWAY, Some("M_UNKNOWN"))
        );
        let reply = put_state(
            &server,
            &admin,
            &space,
            "m.room.member",
            &bob.user_id,
            json!({"membership": "leave"}),
        )
        .await;
        assert_eq!(
            errcode(&reply),
            (StatusCode::FORBIDDEN, Some("M_FORBIDDEN"))
        );
        // A member state key that is no user id, and a redaction as state, are bad requests.
        let reply = put_state(
            &server,
            &admin,
            &space,
            "m.room.member",
            "not-a-user",
            json!({"membership": "invite"}),
        )
        .await;
        assert_eq!(
            errcode(&reply),
            (StatusCode::BAD_REQUEST, Some("M_BAD_JSON"))
        );
        // Positive control: the same invite and kick of a real local member work.
        let reply = put_state(
            &server,
            &admin,
            &space,
            "m.room.member",
            &bob.user_id,
            json!({"membership": "invite"}),
        )
        .await;
        assert_eq!(reply.0, 200, "{}", reply.1);
        let reply = put_state(
            &server,
            &admin,
            &space,
            "m.room.member",
            &bob.user_id,
            json!({"membership": "leave"}),
        )
        .await;
        assert_eq!(reply.0, 200, "{}", reply.1);
        server.stop().await;
    }
}

#[tokio::test]
async fn redactions_through_send_pass_the_redact_checks() {
    for kind in test_backends() {
        let server = TestServer::start(kind).await;
        let alice = server.register("alice").await;
        let bob = server.register("bob").await;
        let room = server
            .create_room(&alice, json!({"preset": "public_chat"}))
            .await;
        let other = server
            .create_room(&alice, json!({"preset": "public_chat"}))
            .await;
        for r in [&room, &other] {
            assert_eq!(membership(&server, &bob, r, "join", json!({})).await.0, 200);
        }
        let alices = text(&server, &alice, &room, "a1").await;

        // Bob has no redact power: alice's message is not his to redact, however sent.
        let reply = send(
            &server,
            &bob,
            &room,
            "m.room.redaction",
            "r1",
            json!({"redacts": alices}),
        )
        .await;
        assert_eq!(
            errcode(&reply),
            (StatusCode::FORBIDDEN, Some("M_FORBIDDEN")),
            "{kind:?}: {}",
            reply.1
        );
        let (_, event) = get_event(&server, &alice, &room, &alices).await;
        assert_eq!(event["content"]["body"], "a1", "{kind:?}: {event}");
        // Nothing any client would apply reached the timeline.
        assert!(
            !timeline(&server, &alice, &room)
                .await
                .iter()
                .any(|e| e["type"] == "m.room.redaction"),
            "{kind:?}: a refused redaction is not in the timeline"
        );
        // A target in another room is not this room's to redact, even for its sender.
        let bobs_elsewhere = text(&server, &bob, &other, "b0").await;
        let reply = send(
            &server,
            &bob,
            &room,
            "m.room.redaction",
            "r2",
            json!({"redacts": bobs_elsewhere}),
        )
        .await;
        assert_eq!(
            errcode(&reply),
            (StatusCode::NOT_FOUND, Some("M_NOT_FOUND"))
        );
        // No target at all.
        let reply = send(&server, &bob, &room, "m.room.redaction", "r3", json!({})).await;
        assert_eq!(
            errcode(&reply),
            (StatusCode::BAD_REQUEST, Some("M_BAD_JSON"))
        );

        // Positive control: bob's own message, and alice (who has the power) on anyone's; both
        // through the send endpoint, and the stored events are redacted with them.
        let bobs = text(&server, &bob, &room, "b1").await;
        let reply = send(
            &server,
            &bob,
            &room,
            "m.room.redaction",
            "r4",
            json!({"redacts": bobs}),
        )
        .await;
        assert_eq!(reply.0, 200, "{kind:?}: {}", reply.1);
        let (_, event) = get_event(&server, &alice, &room, &bobs).await;
        assert_eq!(event["content"], json!({}), "{kind:?}: {event}");
        assert_eq!(
            event["unsigned"]["redacted_because"]["event_id"],
            reply.1["event_id"]
        );
        let reply = send(
            &server,
            &alice,
            &room,
            "m.room.redaction",
            "r5",
            json!({"redacts": bobs_elsewhere}),
        )
        .await;
        assert_eq!(reply.0, 404, "the target must be in the room: {}", reply.1);
        let reply = send(
            &server,
            &alice,
            &other,
            "m.room.redaction",
            "r5",
            json!({"redacts": bobs_elsewhere}),
        )
        .await;
        assert_eq!(reply.0, 200, "{}", reply.1);
        let (_, event) = get_event(&server, &bob, &other, &bobs_elsewhere).await;
        assert_eq!(event["content"], json!({}), "{event}");
        server.stop().await;
    }
}

#[tokio::test]
async fn transaction_ids_are_scoped_to_the_request_path() {
    for kind in test_backends() {
        let server = TestServer::start(kind).await;
        let alice = server.register("alice").await;
        let bob = server.register("bob").await;
        let one = server
            .create_room(&alice, json!({"preset": "public_chat"}))
            .await;
        let two = server
            .create_room(&alice, json!({"preset": "public_chat"}))
            .await;
        for r in [&one, &two] {
            assert_eq!(membership(&server, &bob, r, "join", json!({})).await.0, 200);
        }

        // The same txn id in another room, or for another event type, is a new request.
        let first = text(&server, &alice, &one, "t").await;
        let again = text(&server, &alice, &one, "t").await;
        assert_eq!(
            first, again,
            "{kind:?}: a retransmission gets the same answer"
        );
        let elsewhere = text(&server, &alice, &two, "t").await;
        assert_ne!(
            first, elsewhere,
            "{kind:?}: another room is another request"
        );
        assert!(
            timeline(&server, &alice, &two)
                .await
                .iter()
                .any(|e| e["event_id"] == elsewhere),
            "{kind:?}: and it was sent"
        );
        let reply = send(
            &server,
            &alice,
            &one,
            "org.example.other",
            "t",
            json!({"x": 1}),
        )
        .await;
        assert_eq!(reply.0, 200);
        assert_ne!(
            reply.1["event_id"], first,
            "another event type is another request"
        );

        // `/redact` with a txn id bob used for a message elsewhere: a new request, checked and
        // sent as one (it used to answer with the message's id and redact without a
        // redaction event).
        let message_elsewhere = text(&server, &bob, &two, "x").await;
        let bobs = text(&server, &bob, &one, "b").await;
        let reply = redact(&server, &bob, &one, &bobs, "x").await;
        assert_eq!(reply.0, 200, "{}", reply.1);
        let redaction = reply.1["event_id"].as_str().unwrap().to_owned();
        assert_ne!(redaction, message_elsewhere, "{kind:?}");
        let (_, event) = get_event(&server, &bob, &one, &redaction).await;
        assert_eq!(event["type"], "m.room.redaction", "{event}");
        let (_, event) = get_event(&server, &bob, &one, &bobs).await;
        assert_eq!(event["unsigned"]["redacted_because"]["event_id"], redaction);
        // The same /redact again is a retransmission.
        assert_eq!(
            redact(&server, &bob, &one, &bobs, "x").await.1["event_id"],
            redaction
        );
        // And with the txn id of that redaction, bob may not redact alice's message.
        let reply = redact(&server, &bob, &one, &first, "x").await;
        assert_eq!(
            errcode(&reply),
            (StatusCode::FORBIDDEN, Some("M_FORBIDDEN"))
        );

        // `/redact` needs the redacter in the room: bob leaves and cannot redact his own.
        let later = text(&server, &bob, &one, "c").await;
        assert_eq!(
            membership(&server, &bob, &one, "leave", json!({})).await.0,
            200
        );
        let reply = redact(&server, &bob, &one, &later, "y").await;
        assert_eq!(
            errcode(&reply),
            (StatusCode::FORBIDDEN, Some("M_FORBIDDEN")),
            "{}",
            reply.1
        );
        let (_, event) = get_event(&server, &alice, &one, &later).await;
        assert_eq!(event["content"]["body"], "c");

        // To-device sends are scoped by their event type (`/sendToDevice/{type}/{txn}`).
        let message =
            json!({"messages": {alice.user_id.clone(): {alice.device_id.clone(): {"n": 1}}}});
        for kind in ["org.example.a", "org.example.b", "org.example.a"] {
            let reply = server
                .put(
                    &format!("/_matrix/client/v3/sendToDevice/{kind}/same"),
                    &bob.access_token,
                    message.clone(),
                )
                .await;
            assert_eq!(reply.0, 200);
        }
        let (_, sync) = server
            .get("/_matrix/client/v3/sync", &alice.access_token)
            .await;
        let mut types: Vec<&str> = sync["to_device"]["events"]
            .as_array()
            .unwrap()
            .iter()
            .filter_map(|e| e["type"].as_str())
            .collect();
        types.sort();
        assert_eq!(types, ["org.example.a", "org.example.b"], "{kind:?}");
        server.stop().await;
    }
}

#[tokio::test]
async fn reads_tell_non_members_nothing() {
    for kind in test_backends() {
        let server = TestServer::start(kind).await;
        let alice = server.register("alice").await;
        let bob = server.register("bob").await;
        let carol = server.register("carol").await;
        let dave = server.register("dave").await;
        let eve = server.register("eve").await;
        let room = server
            .create_room(&alice, json!({"preset": "public_chat"}))
            .await;
        put_state(
            &server,
            &alice,
            &room,
            "m.room.history_visibility",
            "",
            json!({"history_visibility": "joined"}),
        )
        .await;
        let secret = text(&server, &alice, &room, "before-bob").await;
        let (_, sync) = server
            .get("/_matrix/client/v3/sync", &alice.access_token)
            .await;
        let before_bob = sync["next_batch"].as_str().unwrap().to_owned();
        assert_eq!(
            membership(&server, &bob, &room, "join", json!({})).await.0,
            200
        );
        let members_at = |token: &str| {
            format!(
                "/_matrix/client/v3/rooms/{}/members?at={}",
                enc(&room),
                enc(token)
            )
        };
        // /members?at= before bob joined a room with `joined` visibility: not his to see.
        let reply = server
            .get(&members_at(&before_bob), &bob.access_token)
            .await;
        assert_eq!(
            errcode(&reply),
            (StatusCode::FORBIDDEN, Some("M_FORBIDDEN")),
            "{kind:?}: {}",
            reply.1
        );
        // Positive control: alice was there; bob at now.
        let reply = server
            .get(&members_at(&before_bob), &alice.access_token)
            .await;
        assert_eq!(reply.0, 200, "{}", reply.1);
        // The start of a backward page from now is a token after bob's join.
        let (_, page) = server
            .get(
                &format!("/_matrix/client/v3/rooms/{}/messages?dir=b", enc(&room)),
                &bob.access_token,
            )
            .await;
        let now = page["start"].as_str().unwrap().to_owned();
        let reply = server.get(&members_at(&now), &bob.access_token).await;
        assert_eq!(reply.0, 200, "{}", reply.1);

        // A room bob left is readable as of his departure, until he forgets it.
        assert_eq!(
            membership(&server, &bob, &room, "leave", json!({})).await.0,
            200
        );
        let state_path = format!("/_matrix/client/v3/rooms/{}/state", enc(&room));
        assert_eq!(server.get(&state_path, &bob.access_token).await.0, 200);
        let mine = format!("/_matrix/client/v3/rooms/{}/messages?dir=b", enc(&room));
        assert_eq!(server.get(&mine, &bob.access_token).await.0, 200);
        assert_eq!(
            membership(&server, &bob, &room, "forget", json!({}))
                .await
                .0,
            200
        );
        let reply = server.get(&state_path, &bob.access_token).await;
        assert_eq!(
            errcode(&reply),
            (StatusCode::FORBIDDEN, Some("M_FORBIDDEN")),
            "{kind:?}"
        );
        let reply = server.get(&mine, &bob.access_token).await;
        assert_eq!(
            errcode(&reply),
            (StatusCode::FORBIDDEN, Some("M_FORBIDDEN")),
            "{kind:?}"
        );
        let reply = server.get(&members_at(&now), &bob.access_token).await;
        assert_eq!(
            errcode(&reply),
            (StatusCode::FORBIDDEN, Some("M_FORBIDDEN")),
            "{kind:?}"
        );

        // Banned without ever joining: no state. Positive control: dave joined first.
        for user in [&carol, &dave] {
            if user.user_id == dave.user_id {
                assert_eq!(
                    membership(&server, user, &room, "join", json!({})).await.0,
                    200
                );
            }
            let reply = membership(
                &server,
                &alice,
                &room,
                "ban",
                json!({"user_id": user.user_id}),
            )
            .await;
            assert_eq!(reply.0, 200, "{}", reply.1);
        }
        let reply = server.get(&state_path, &carol.access_token).await;
        assert_eq!(
            errcode(&reply),
            (StatusCode::FORBIDDEN, Some("M_FORBIDDEN")),
            "{kind:?}: {}",
            reply.1
        );
        let reply = get_state(&server, &carol, &room, "m.room.history_visibility", "").await;
        assert_eq!(
            errcode(&reply),
            (StatusCode::FORBIDDEN, Some("M_FORBIDDEN"))
        );
        assert_eq!(server.get(&state_path, &dave.access_token).await.0, 200);

        // Non-members hear the same whether the room or event exists or not.
        let unknown_room = "!doesnotexist:localhost";
        let unknown_event = "$doesnotexist";
        for path in [
            format!("/_matrix/client/v3/rooms/{}/state", enc(&room)),
            format!("/_matrix/client/v3/rooms/{}/state", enc(unknown_room)),
            format!(
                "/_matrix/client/v3/rooms/{}/state/m.room.name/",
                enc(unknown_room)
            ),
            format!("/_matrix/client/v3/rooms/{}/members", enc(unknown_room)),
        ] {
            let reply = server.get(&path, &eve.access_token).await;
            assert_eq!(
                errcode(&reply),
                (StatusCode::FORBIDDEN, Some("M_FORBIDDEN")),
                "{kind:?}: {path}: {}",
                reply.1
            );
        }
        for (r, e) in [
            (room.as_str(), secret.as_str()),
            (room.as_str(), unknown_event),
            (unknown_room, unknown_event),
        ] {
            let reply = get_event(&server, &eve, r, e).await;
            assert_eq!(
                reply,
                (
                    StatusCode::NOT_FOUND,
                    json!({"errcode": "M_NOT_FOUND", "error": "Event not found"})
                ),
                "{kind:?}: {r} {e}"
            );
            let reply = redact(&server, &eve, r, e, "z").await;
            assert_eq!(
                reply,
                (
                    StatusCode::FORBIDDEN,
                    json!({"errcode": "M_FORBIDDEN", "error": "You are not in this room"})
                ),
                "{kind:?}: {r} {e}"
            );
        }
        // Positive control: alice sees the event.
        assert_eq!(get_event(&server, &alice, &room, &secret).await.0, 200);
        server.stop().await;
    }
}

#[tokio::test]
async fn extreme_and_garbage_tokens_are_invalid_params() {
    for kind in test_backends() {
        let server = TestServer::start(kind).await;
        let alice = server.register("alice").await;
        let room = server.create_room(&alice, json!({})).await;
        text(&server, &alice, &room, "m").await;
        let messages =
            |query: &str| format!("/_matrix/client/v3/rooms/{}/messages?{query}", enc(&room));
        let bad = [
            "s9223372036854775807",
            "s9223372036854775808",
            "s99999999999999999999999",
            "s-1",
            "s+5",
            "s",
            "x5",
            "s1e3",
            "s9007199254740992",
        ];
        for token in bad {
            let token = enc(token);
            for path in [
                messages(&format!("dir=f&from=s0&to={token}")),
                messages(&format!("dir=b&from={token}")),
                messages(&format!("dir=f&from={token}")),
                format!("/_matrix/client/v3/rooms/{}/members?at={token}", enc(&room)),
                format!("/_matrix/client/v3/notifications?from={token}"),
                // As the first and as the last part of a sync token.
                format!("/_matrix/client/v3/sync?since={token}_0_0_0_0_0"),
                format!(
                    "/_matrix/client/v3/sync?since=s0_0_0_0_0_{}",
                    token.strip_prefix('s').unwrap_or(&token)
                ),
            ] {
                let reply = server.get(&path, &alice.access_token).await;
                assert_eq!(
                    errcode(&reply),
                    (StatusCode::BAD_REQUEST, Some("M_INVALID_PARAM")),
                    "{kind:?}: {path}: {}",
                    reply.1
                );
            }
        }
        // A long chain of parts is refused without being split up.
        let long = format!("s{}", "0_".repeat(10_000));
        let reply = server
            .get(
                &format!("/_matrix/client/v3/sync?since={}", enc(&long)),
                &alice.access_token,
            )
            .await;
        assert_eq!(
            errcode(&reply),
            (StatusCode::BAD_REQUEST, Some("M_INVALID_PARAM"))
        );
        // Positive control: the largest allowed position and real tokens page.
        for path in [
            messages("dir=f&from=s0&to=s9007199254740991"),
            messages("dir=b&from=s9007199254740991"),
            messages("dir=b"),
        ] {
            let reply = server.get(&path, &alice.access_token).await;
            assert_eq!(reply.0, 200, "{kind:?}: {path}: {}", reply.1);
            assert!(!reply.1["chunk"].as_array().unwrap().is_empty(), "{path}");
        }
        server.stop().await;
    }
}

fn shared_secret_mac(nonce: &str, user: &str, password: &str) -> String {
    let mut mac = Hmac::<sha1::Sha1>::new_from_slice(SHARED_SECRET.as_bytes()).unwrap();
    mac.update(format!("{nonce}\0{user}\0{password}\0notadmin").as_bytes());
    hex::encode(mac.finalize().into_bytes())
}

#[tokio::test]
async fn nonces_tokens_and_metrics_labels_are_bounded_sets() {
    for kind in test_backends() {
        let server = TestServer::start_with(kind, |config| {
            config.registration.tokens = vec!["letmein-0123".to_owned()];
        })
        .await;
        let nonce = || async {
            let (status, body) = server
                .call(
                    reqwest::Method::GET,
                    "/_synapse/admin/v1/register",
                    None,
                    None,
                )
                .await;
            assert_eq!(status, 200);
            body["nonce"].as_str().unwrap().to_owned()
        };
        let register = |nonce: String, user: &'static str| {
            let server = &server;
            async move {
                server
                    .call(
                        reqwest::Method::POST,
                        "/_synapse/admin/v1/register",
                        None,
                        Some(json!({"nonce": nonce, "username": user, "password": "pw",
                            "mac": shared_secret_mac(&nonce, user, "pw")})),
                    )
                    .await
            }
        };
        // The oldest of more live nonces than the bound is dropped: it no longer registers,
        // while the newest does.
        let oldest = nonce().await;
        let mut newest = String::new();
        for _ in 0..myelin_service::accounts::MAX_LIVE_NONCES {
            newest = nonce().await;
        }
        let reply = register(oldest, "ann").await;
        assert_eq!(
            errcode(&reply),
            (StatusCode::BAD_REQUEST, Some("M_UNKNOWN")),
            "{kind:?}: {}",
            reply.1
        );
        let reply = register(newest, "ben").await;
        assert_eq!(reply.0, 200, "{kind:?}: {}", reply.1);

        // Registration tokens: only the exact token is valid (prefixes, extensions and case
        // changes are not).
        for (token, valid) in [
            ("letmein-0123", true),
            ("letmein-012", false),
            ("letmein-01234", false),
            ("LETMEIN-0123", false),
            ("", false),
        ] {
            let reply = server
                .call(
                    reqwest::Method::GET,
                    &format!(
                        "/_matrix/client/v1/register/m.login.registration_token/validity?token={}",
                        enc(token)
                    ),
                    None,
                    None,
                )
                .await;
            assert_eq!(reply.1["valid"], valid, "{token:?}: {}", reply.1);
        }

        // Metrics: a made-up method does not become a label.
        let response = server
            .http
            .request(
                reqwest::Method::from_bytes(b"FROBNICATE").unwrap(),
                server.client_url("/_matrix/client/versions"),
            )
            .send()
            .await
            .unwrap();
        assert!(response.status().is_client_error(), "{}", response.status());
        let metrics = server
            .http
            .get(server.client_url("/metrics"))
            .send()
            .await
            .unwrap()
            .text()
            .await
            .unwrap();
        assert!(!metrics.contains("FROBNICATE"), "{metrics}");
        assert!(metrics.contains(r#"method="other""#), "{metrics}");
        assert!(metrics.contains(r#"method="GET""#), "{metrics}");
        server.stop().await;
    }
}

/// `Ok` if the reply is 413 `M_TOO_LARGE`, else what it was.
fn too_large(reply: &(StatusCode, Value)) -> bool {
    errcode(reply) == (StatusCode::PAYLOAD_TOO_LARGE, Some("M_TOO_LARGE"))
}

#[tokio::test]
async fn bodies_and_user_controlled_collections_are_capped() {
    use myelin_service::limits;
    for kind in test_backends() {
        let server = TestServer::start_with(kind, |config| {
            config.http.max_json_request_size = 4096;
            config.http.body_read_timeout_secs = 1;
        })
        .await;
        let alice = server.register("alice").await;
        let room = server.create_room(&alice, json!({})).await;

        // The JSON body cap is the route's: a 5 KiB message is refused before it is parsed
        // (it is well under the event size limit); 3 KiB is sent.
        for (size, ok) in [(5_000, false), (3_000, true)] {
            let reply = send(
                &server,
                &alice,
                &room,
                "m.room.message",
                &format!("big{size}"),
                json!({"msgtype": "m.text", "body": "x".repeat(size)}),
            )
            .await;
            assert_eq!(!too_large(&reply), ok, "{kind:?} {size}: {}", reply.1);
            assert_eq!(reply.0 == 200, ok);
        }

        // An unknown access token is refused from the head: the server does not wait for a
        // body it would not read (a 10 MB body that never comes).
        let (client_addr, _) = server.addrs();
        let mut stream = tokio::net::TcpStream::connect(client_addr).await.unwrap();
        use tokio::io::{AsyncReadExt, AsyncWriteExt};
        stream
            .write_all(
                format!(
                    "PUT /_matrix/client/v3/rooms/{}/send/m.room.message/t HTTP/1.1\r\nHost: x\r\n\
                     Authorization: Bearer not-a-token\r\nContent-Type: application/json\r\n\
                     Content-Length: 10000000\r\n\r\n{{",
                    enc(&room)
                )
                .as_bytes(),
            )
            .await
            .unwrap();
        let mut head = vec![0u8; 12];
        tokio::time::timeout(
            std::time::Duration::from_secs(10),
            stream.read_exact(&mut head),
        )
        .await
        .expect("answered without the body")
        .unwrap();
        assert_eq!(&head, b"HTTP/1.1 401", "{kind:?}");
        drop(stream);
        // A body that trickles in too slowly is given up on (408), not waited for; the whole
        // of the same request is sent (the positive control is every send above).
        let mut stream = tokio::net::TcpStream::connect(client_addr).await.unwrap();
        stream
            .write_all(
                format!(
                    "PUT /_matrix/client/v3/rooms/{}/send/m.room.message/slow HTTP/1.1\r\nHost: x\r\n\
                     Authorization: Bearer {}\r\nContent-Type: application/json\r\n\
                     Content-Length: 100\r\n\r\n{{",
                    enc(&room),
                    alice.access_token
                )
                .as_bytes(),
            )
            .await
            .unwrap();
        let mut head = vec![0u8; 12];
        tokio::time::timeout(
            std::time::Duration::from_secs(10),
            stream.read_exact(&mut head),
        )
        .await
        .expect("answered before the body came")
        .unwrap();
        assert_eq!(&head, b"HTTP/1.1 408", "{kind:?}");
        drop(stream);

        // Presence status messages.
        let presence = format!("/_matrix/client/v3/presence/{}/status", enc(&alice.user_id));
        let reply = server
            .put(
                &presence,
                &alice.access_token,
                json!({"presence": "online", "status_msg": "x".repeat(limits::MAX_STATUS_MSG_BYTES + 1)}),
            )
            .await;
        assert!(too_large(&reply), "{kind:?}: {}", reply.1);
        let reply = server
            .put(
                &presence,
                &alice.access_token,
                json!({"presence": "online", "status_msg": "x".repeat(limits::MAX_STATUS_MSG_BYTES)}),
            )
            .await;
        assert_eq!(reply.0, 200, "{}", reply.1);
        server.stop().await;

        // The rest with the default body cap (1 MiB), which lets each collection reach its own.
        let server = TestServer::start(kind).await;
        let alice = server.register("alice").await;
        let bob = server.register("bob").await;

        // To-device: one content too large; too many messages in one request (a user's
        // every device, `*`, counts as each of them).
        let to_device = |content: Value| json!({"messages": {bob.user_id.clone(): {bob.device_id.clone(): content}}});
        let reply = server
            .put(
                "/_matrix/client/v3/sendToDevice/org.example/t1",
                &alice.access_token,
                to_device(json!({"x": "y".repeat(limits::MAX_TO_DEVICE_CONTENT_BYTES)})),
            )
            .await;
        assert!(too_large(&reply), "{kind:?}: {}", reply.1);
        let mut many = serde_json::Map::new();
        for i in 0..=limits::MAX_TO_DEVICE_MESSAGES {
            many.insert(format!("D{i}"), json!({}));
        }
        let reply = server
            .put(
                "/_matrix/client/v3/sendToDevice/org.example/t2",
                &alice.access_token,
                json!({"messages": {bob.user_id.clone(): many}}),
            )
            .await;
        assert!(too_large(&reply), "{kind:?}: {}", reply.1);
        let (_, sync) = server
            .get("/_matrix/client/v3/sync", &bob.access_token)
            .await;
        assert!(
            sync["to_device"]["events"]
                .as_array()
                .is_none_or(Vec::is_empty),
            "{kind:?}: nothing was queued: {sync}"
        );
        let reply = server
            .put(
                "/_matrix/client/v3/sendToDevice/org.example/t3",
                &alice.access_token,
                to_device(json!({"x": "y"})),
            )
            .await;
        assert_eq!(reply.0, 200, "{}", reply.1);

        // Account data and filters.
        let data = format!(
            "/_matrix/client/v3/user/{}/account_data/org.example.big",
            enc(&alice.user_id)
        );
        let reply = server
            .put(
                &data,
                &alice.access_token,
                json!({"x": "y".repeat(limits::MAX_ACCOUNT_DATA_BYTES)}),
            )
            .await;
        assert!(too_large(&reply), "{kind:?}: {}", reply.1);
        let (status, stored) = server.get(&data, &alice.access_token).await;
        assert_eq!(status, 404, "nothing stored: {stored}");
        let reply = server
            .put(&data, &alice.access_token, json!({"x": "y"}))
            .await;
        assert_eq!(reply.0, 200);
        let filter = format!("/_matrix/client/v3/user/{}/filter", enc(&alice.user_id));
        let types: Vec<String> = (0..limits::MAX_FILTER_BYTES / 10)
            .map(|i| format!("t{i:09}"))
            .collect();
        let reply = server
            .post(
                &filter,
                &alice.access_token,
                json!({"room": {"timeline": {"not_types": types}}}),
            )
            .await;
        assert!(too_large(&reply), "{kind:?}: {}", reply.1);
        let reply = server
            .post(
                &filter,
                &alice.access_token,
                json!({"room": {"timeline": {"not_types": ["m.room.member"]}}}),
            )
            .await;
        assert_eq!(reply.0, 200);

        // createRoom: too many initial_state events or invites, and no room is left behind.
        let state: Vec<Value> = (0..=limits::MAX_INITIAL_STATE)
            .map(|i| json!({"type": "org.example.s", "state_key": i.to_string(), "content": {}}))
            .collect();
        let invites: Vec<String> = (0..=limits::MAX_CREATE_ROOM_INVITES)
            .map(|i| format!("@u{i}:localhost"))
            .collect();
        for body in [json!({"initial_state": state}), json!({"invite": invites})] {
            let reply = server
                .post("/_matrix/client/v3/createRoom", &alice.access_token, body)
                .await;
            assert!(too_large(&reply), "{kind:?}: {}", reply.1);
        }
        let (_, joined) = server
            .get("/_matrix/client/v3/joined_rooms", &alice.access_token)
            .await;
        assert_eq!(joined["joined_rooms"], json!([]), "{kind:?}");
        server
            .create_room(&alice, json!({"initial_state": [{"type": "org.example.s", "state_key": "", "content": {}}]}))
            .await;

        // Push rules: one too large; a user's count capped.
        let rule = |id: &str| format!("/_matrix/client/v3/pushrules/global/content/{id}");
        let reply = server
            .put(
                &rule("huge"),
                &alice.access_token,
                json!({"pattern": "p".repeat(limits::MAX_PUSH_RULE_BYTES), "actions": ["notify"]}),
            )
            .await;
        assert!(too_large(&reply), "{kind:?}: {}", reply.1);
        for i in 0..limits::MAX_USER_PUSH_RULES {
            let reply = server
                .put(
                    &rule(&format!("r{i}")),
                    &alice.access_token,
                    json!({"pattern": format!("word{i}"), "actions": ["notify"]}),
                )
                .await;
            assert_eq!(reply.0, 200, "{kind:?} rule {i}: {}", reply.1);
        }
        let reply = server
            .put(
                &rule("one-more"),
                &alice.access_token,
                json!({"pattern": "more", "actions": ["notify"]}),
            )
            .await;
        assert!(too_large(&reply), "{kind:?}: {}", reply.1);
        // Replacing one of them is no new rule.
        let reply = server
            .put(
                &rule("r0"),
                &alice.access_token,
                json!({"pattern": "again", "actions": ["notify"]}),
            )
            .await;
        assert_eq!(reply.0, 200, "{}", reply.1);

        // Pushers per user.
        let pusher = |key: &str| {
            json!({"kind": "http", "app_id": "org.example.app", "pushkey": key,
                "app_display_name": "Example", "device_display_name": "Phone", "lang": "en",
                "data": {"url": "https://push.example.org/_matrix/push/v1/notify"}})
        };
        for i in 0..limits::MAX_PUSHERS_PER_USER {
            let reply = server
                .post(
                    "/_matrix/client/v3/pushers/set",
                    &alice.access_token,
                    pusher(&format!("k{i}")),
                )
                .await;
            assert_eq!(reply.0, 200, "{kind:?} pusher {i}: {}", reply.1);
        }
        let reply = server
            .post(
                "/_matrix/client/v3/pushers/set",
                &alice.access_token,
                pusher("one-more"),
            )
            .await;
        assert!(too_large(&reply), "{kind:?}: {}", reply.1);
        let reply = server
            .post(
                "/_matrix/client/v3/pushers/set",
                &alice.access_token,
                pusher("k0"),
            )
            .await;
        assert_eq!(reply.0, 200, "replacing a pusher: {}", reply.1);
        server.stop().await;
    }
}

/// Anonymous logins from the addresses a proxy forwarded for: the status of each attempt (403
/// for a wrong password, 429 once the address's bucket is empty).
async fn logins_from(server: &TestServer, addresses: &[&str]) -> Vec<u16> {
    let mut statuses = Vec::new();
    for address in addresses {
        let response = server
            .http
            .post(server.client_url("/_matrix/client/v3/login"))
            .header("X-Forwarded-For", format!("198.51.100.99, {address}"))
            .json(&json!({"type": "m.login.password",
                "identifier": {"type": "m.id.user", "user": "nobody"}, "password": "wrong"}))
            .send()
            .await
            .unwrap();
        statuses.push(response.status().as_u16());
    }
    statuses
}

#[tokio::test]
async fn behind_a_trusted_proxy_each_client_and_each_ipv6_64_has_its_bucket() {
    use myelin_service::config::Bucket;
    for kind in test_backends() {
        let limited = |trusted: Vec<String>| {
            move |config: &mut myelin_service::Config| {
                config.rate_limits.enabled = true;
                config.rate_limits.per_address = Bucket {
                    per_second: 0.001,
                    burst: 2,
                };
                config.http.trusted_proxies = trusted;
            }
        };
        // The test client connects from loopback: here that is the trusted proxy.
        let server = TestServer::start_with(kind, limited(vec!["127.0.0.0/8".to_owned()])).await;
        // Two clients: each has its own two attempts. The left-most address (the client's own
        // claim, in front of what the proxy saw) is not believed.
        assert_eq!(
            logins_from(&server, &["203.0.113.1", "203.0.113.1", "203.0.113.1"]).await,
            [403, 403, 429],
            "{kind:?}"
        );
        assert_eq!(
            logins_from(&server, &["203.0.113.2", "203.0.113.2"]).await,
            [403, 403],
            "{kind:?}: another client, another bucket"
        );
        // IPv6 clients are counted by /64: another address in the same /64 is the same client.
        assert_eq!(
            logins_from(
                &server,
                &[
                    "2001:db8:1:2::1",
                    "2001:db8:1:2::ffff",
                    "2001:db8:1:2:abcd::9"
                ]
            )
            .await,
            [403, 403, 429],
            "{kind:?}"
        );
        assert_eq!(
            logins_from(&server, &["2001:db8:1:3::1"]).await,
            [403],
            "{kind:?}: the next /64 is another client"
        );
        server.stop().await;

        // Without trusted proxies the header is anyone's to write and is ignored: every
        // request is the peer's.
        let server = TestServer::start_with(kind, limited(Vec::new())).await;
        assert_eq!(
            logins_from(&server, &["203.0.113.1", "203.0.113.2", "203.0.113.3"]).await,
            [403, 403, 429],
            "{kind:?}"
        );
        server.stop().await;
    }
}

#[tokio::test]
async fn metrics_can_be_turned_off() {
    for kind in test_backends() {
        for serve in [true, false] {
            let server =
                TestServer::start_with(kind, |config| config.http.serve_metrics = serve).await;
            let response = server
                .http
                .get(server.client_url("/metrics"))
                .send()
                .await
                .unwrap();
            assert_eq!(
                response.status() == 200,
                serve,
                "{kind:?} serve_metrics={serve}"
            );
            server.stop().await;
        }
    }
}

/// With `listen.metrics`, `/metrics` moves to a listener of its own (for a scraper on a private
/// address): served there, no longer on the client listener, and not there either when turned
/// off.
#[tokio::test]
async fn metrics_can_have_a_listener_of_their_own() {
    for kind in test_backends() {
        for serve in [true, false] {
            let server = TestServer::start_with(kind, |config| {
                config.listen.metrics = Some(std::net::SocketAddr::from(([127, 0, 0, 1], 0)));
                config.http.serve_metrics = serve;
            })
            .await;
            let status = |url: String| {
                let http = server.http.clone();
                async move { http.get(url).send().await.unwrap().status() }
            };
            let own = server.metrics_url("/metrics").expect("a metrics listener");
            let on_own = status(own.clone()).await;
            assert_eq!(on_own == 200, serve, "{kind:?} serve_metrics={serve}");
            if serve {
                let body = server
                    .http
                    .get(own)
                    .send()
                    .await
                    .unwrap()
                    .text()
                    .await
                    .unwrap();
                assert!(body.contains("# TYPE"), "{kind:?}: Prometheus text: {body}");
            }
            assert_eq!(
                status(server.client_url("/metrics")).await,
                404,
                "{kind:?}: not on the client listener"
            );
            // The client API itself is where it was.
            assert_eq!(
                status(server.client_url("/_matrix/client/versions")).await,
                200
            );
            let metrics_only = server.metrics_url("/_matrix/client/versions").unwrap();
            assert_eq!(
                status(metrics_only).await,
                404,
                "{kind:?}: metrics alone there"
            );
            server.stop().await;
        }
    }
}

#[tokio::test]
async fn room_creation_and_joins_are_rate_limited() {
    use myelin_service::config::Bucket;
    for kind in test_backends() {
        let server = TestServer::start_with(kind, |config| {
            config.rate_limits.enabled = true;
            config.rate_limits.per_user = Bucket {
                per_second: 0.001,
                burst: 3,
            };
            // Registration is per address: plenty for the two users.
            config.rate_limits.per_address = Bucket {
                per_second: 0.001,
                burst: 100,
            };
        })
        .await;
        let alice = server.register("alice").await;
        let bob = server.register("bob").await;
        let mut statuses = Vec::new();
        for _ in 0..4 {
            let (status, _) = server
                .post(
                    "/_matrix/client/v3/createRoom",
                    &alice.access_token,
                    json!({"preset": "public_chat"}),
                )
                .await;
            statuses.push(status.as_u16());
        }
        assert_eq!(statuses, [200, 200, 200, 429], "{kind:?}");
        // Bob's bucket is his own: joins count against it.
        let (_, rooms) = server
            .get("/_matrix/client/v3/joined_rooms", &alice.access_token)
            .await;
        let room = rooms["joined_rooms"][0].as_str().unwrap().to_owned();
        let mut statuses = Vec::new();
        for _ in 0..4 {
            statuses.push(
                membership(&server, &bob, &room, "join", json!({}))
                    .await
                    .0
                    .as_u16(),
            );
        }
        assert_eq!(statuses, [200, 200, 200, 429], "{kind:?}");
        server.stop().await;
    }
}

#[tokio::test]
async fn requests_past_the_concurrency_cap_are_refused_at_once() {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    for kind in test_backends() {
        let server = TestServer::start_with(kind, |config| {
            config.http.max_concurrent_requests = 2;
        })
        .await;
        let alice = server.register("alice").await;
        let room = server.create_room(&alice, json!({})).await;
        let (client_addr, _) = server.addrs();
        // Two sends whose bodies have not arrived hold the two slots.
        let mut held = Vec::new();
        for i in 0..2 {
            let mut stream = tokio::net::TcpStream::connect(client_addr).await.unwrap();
            stream
                .write_all(
                    format!(
                        "PUT /_matrix/client/v3/rooms/{}/send/m.room.message/h{i} HTTP/1.1\r\nHost: x\r\n\
                         Authorization: Bearer {}\r\nContent-Type: application/json\r\n\
                         Content-Length: 100\r\n\r\n{{",
                        enc(&room),
                        alice.access_token
                    )
                    .as_bytes(),
                )
                .await
                .unwrap();
            held.push(stream);
        }
        // Once both are being handled, a third request is refused at once.
        let mut refused = None;
        for _ in 0..100 {
            let reply = server
                .get("/_matrix/client/v3/joined_rooms", &alice.access_token)
                .await;
            if reply.0 == 429 {
                refused = Some(reply);
                break;
            }
            tokio::time::sleep(std::time::Duration::from_millis(20)).await;
        }
        let refused = refused.expect("a request past the cap was refused");
        assert_eq!(refused.1["errcode"], "M_LIMIT_EXCEEDED", "{kind:?}");
        // The held requests finish (their bodies complete): the slots are free again.
        for stream in &mut held {
            stream
                .write_all(
                    format!("\"msgtype\":\"m.text\",\"body\":\"{}\"}}", "x".repeat(70)).as_bytes(),
                )
                .await
                .unwrap();
            let mut head = vec![0u8; 12];
            stream.read_exact(&mut head).await.unwrap();
            assert_eq!(&head, b"HTTP/1.1 200", "{kind:?}");
        }
        drop(held);
        let reply = server
            .get("/_matrix/client/v3/joined_rooms", &alice.access_token)
            .await;
        assert_eq!(reply.0, 200, "{kind:?}: {}", reply.1);
        server.stop().await;
    }
}

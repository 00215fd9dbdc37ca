//! Account-key rooms (MSC4243, `org.matrix.12.4243`), on both databases. On one server: a room
//! made by a local user with local members invited, joined, chatting, kicked, banned and
//! leaving; every stored PDU signed by its sender's account key only; every client read in
//! account-name ids with `unsigned.sender_account`, never keys; lazy keys for users that
//! predate account keys; erasure (signed `M_ERASED`, the user's events hidden); the
//! `experimental.msc4243` gate. Across two servers: a remote user joining and chatting, the
//! members verified through `/query/accounts` both ways.

use myelin_room_version::{
    CanonicalJsonObject, KeyFormUserId,
    query_accounts::{AnswerVerdict, classify_answer},
};
use myelin_service::account_keys::QueryAccounts;
use myelin_store::UserRow;
use myelin_testkit::{
    TestServer, TestUser, enc,
    projection::{assert_projected, bare_key, events_in, key_id},
    test_backends,
};
use serde_json::{Value, json};

const AK: &str = "org.matrix.12.4243";

async fn ok(server: &TestServer, reply: (reqwest::StatusCode, Value), what: &str) -> Value {
    let _ = server;
    assert_eq!(reply.0, 200, "{what}: {}", reply.1);
    reply.1
}

async fn send_text(
    server: &TestServer,
    user: &TestUser,
    room: &str,
    txn: &str,
    body: &str,
) -> String {
    let reply = server
        .put(
            &format!(
                "/_matrix/client/v3/rooms/{}/send/m.room.message/{txn}",
                enc(room)
            ),
            &user.access_token,
            json!({"msgtype": "m.text", "body": body}),
        )
        .await;
    ok(server, reply, "send").await["event_id"]
        .as_str()
        .unwrap()
        .to_owned()
}

async fn post_ok(server: &TestServer, user: &TestUser, path: &str, body: Value) -> Value {
    let reply = server.post(path, &user.access_token, body).await;
    ok(server, reply, path).await
}

async fn get_ok(server: &TestServer, user: &TestUser, path: &str) -> Value {
    let reply = server.get(path, &user.access_token).await;
    ok(server, reply, path).await
}

/// A user as it would be had it registered before account keys existed: an account row and a
/// password, no key.
async fn predating_user(server: &TestServer, localpart: &str) -> TestUser {
    let user_id = format!("@{localpart}:{}", server.config.server_name);
    let password = format!("{localpart}-password");
    let hash = myelin_service::passwords::hash(&server.config.passwords, &password)
        .await
        .unwrap();
    let store = server.store();
    store
        .create_user(&UserRow {
            user_id: user_id.clone(),
            localpart: localpart.to_owned(),
            password_hash: Some(hash),
            is_admin: false,
            created_ts: 1,
            deactivated_ts: None,
        })
        .await
        .unwrap();
    store.create_profile(&user_id, localpart).await.unwrap();
    let reply = server
        .call(
            reqwest::Method::POST,
            "/_matrix/client/v3/login",
            None,
            Some(json!({"type": "m.login.password",
                        "identifier": {"type": "m.id.user", "user": localpart},
                        "password": password})),
        )
        .await;
    let body = ok(server, reply, "login").await;
    TestUser {
        user_id,
        device_id: body["device_id"].as_str().unwrap().to_owned(),
        access_token: body["access_token"].as_str().unwrap().to_owned(),
        password,
    }
}

#[tokio::test]
async fn local_account_key_room_end_to_end() {
    for kind in test_backends() {
        let server = TestServer::start(kind).await;
        let alice = server.register("alice").await;
        let bob = server.register("bob").await;
        let carol = server.register("carol").await;
        let dave = server.register("dave").await;
        // Registration made each a key.
        let users = [&alice, &bob, &carol, &dave];
        for user in users {
            key_id(&server, user);
        }
        // Erin predates account keys: her key is made when she first needs it.
        let erin = predating_user(&server, "erin").await;
        assert!(
            server
                .services()
                .account_keys
                .known_local_user_id("erin")
                .is_none()
        );

        let room = server
            .create_room(
                &alice,
                json!({"room_version": AK, "preset": "private_chat", "invite": [bob.user_id],
                       "name": "keys"}),
            )
            .await;
        let r = enc(&room);
        post_ok(
            &server,
            &bob,
            &format!("/_matrix/client/v3/join/{r}"),
            json!({}),
        )
        .await;
        for invitee in [&carol, &dave, &erin] {
            post_ok(
                &server,
                &alice,
                &format!("/_matrix/client/v3/rooms/{r}/invite"),
                json!({"user_id": invitee.user_id}),
            )
            .await;
        }
        // Erin got her key lazily, at her invite.
        let erin_key = key_id(&server, &erin);
        for joiner in [&carol, &erin] {
            post_ok(
                &server,
                joiner,
                &format!("/_matrix/client/v3/join/{r}"),
                json!({}),
            )
            .await;
        }
        let hello = send_text(&server, &alice, &room, "t1", "hello").await;
        send_text(&server, &bob, &room, "t2", "hi alice").await;
        send_text(&server, &erin, &room, "t3", "late but here").await;
        // Power levels named by account name are stored by key and read back by name.
        let reply = server
            .put(
                &format!("/_matrix/client/v3/rooms/{r}/state/m.room.power_levels/"),
                &alice.access_token,
                json!({"users": {bob.user_id.clone(): 50}, "users_default": 0,
                       "events": {"m.room.tombstone": 150}, "state_default": 50,
                       "ban": 50, "kick": 50, "redact": 50, "invite": 0}),
            )
            .await;
        ok(&server, reply, "power levels").await;
        // A user nobody knows a key for is refused, and nothing is sent.
        let reply = server
            .put(
                &format!("/_matrix/client/v3/rooms/{r}/state/m.room.power_levels/"),
                &alice.access_token,
                json!({"users": {"@nobody:elsewhere.example": 50}}),
            )
            .await;
        assert_eq!(reply.0, 400, "{}", reply.1);
        assert_eq!(reply.1["errcode"], "M_INVALID_PARAM");
        // Third-party invites cannot work with key-form state keys: refused (Q10).
        let reply = server
            .put(
                &format!("/_matrix/client/v3/rooms/{r}/state/m.room.third_party_invite/tok"),
                &alice.access_token,
                json!({"display_name": "x", "key_validity_url": "https://id.example/v", "public_key": "abc"}),
            )
            .await;
        assert_eq!(reply.0, 403, "{}", reply.1);
        assert_eq!(reply.1["errcode"], "M_FORBIDDEN");
        // Relations read through the projection too.
        let reply = server
            .put(
                &format!("/_matrix/client/v3/rooms/{r}/send/m.reaction/re1"),
                &bob.access_token,
                json!({"m.relates_to": {"rel_type": "m.annotation", "event_id": hello, "key": "+1"}}),
            )
            .await;
        ok(&server, reply, "reaction").await;
        // Where carol's and dave's clients are before they are thrown out.
        let mut since = Vec::new();
        for user in [&carol, &dave] {
            let sync = get_ok(&server, user, "/_matrix/client/v3/sync?timeout=0").await;
            since.push(sync["next_batch"].as_str().unwrap().to_owned());
        }
        let names: Vec<(String, String)> = [&alice, &bob, &carol, &dave, &erin]
            .iter()
            .map(|u| (bare_key(&key_id(&server, u)), u.user_id.clone()))
            .collect();
        // Dave's invite, with its stripped state, in names.
        let invite = get_ok(&server, &dave, "/_matrix/client/v3/sync?timeout=0").await;
        let stripped = &invite["rooms"]["invite"][&room]["invite_state"]["events"];
        assert!(
            stripped.as_array().is_some_and(|events| events
                .iter()
                .any(|e| e["type"] == "m.room.member"
                    && e["state_key"] == json!(dave.user_id)
                    && e["sender"] == json!(alice.user_id))),
            "{kind:?}: {invite}"
        );
        assert_projected("dave's invite", &invite["rooms"], &names);
        // Kick carol, ban dave (invited), a redaction, bob leaves.
        post_ok(
            &server,
            &alice,
            &format!("/_matrix/client/v3/rooms/{r}/kick"),
            json!({"user_id": carol.user_id, "reason": "bye"}),
        )
        .await;
        post_ok(
            &server,
            &alice,
            &format!("/_matrix/client/v3/rooms/{r}/ban"),
            json!({"user_id": dave.user_id}),
        )
        .await;
        let reply = server
            .put(
                &format!("/_matrix/client/v3/rooms/{r}/redact/{}/x1", enc(&hello)),
                &alice.access_token,
                json!({"reason": "oops"}),
            )
            .await;
        ok(&server, reply, "redact").await;
        post_ok(
            &server,
            &bob,
            &format!("/_matrix/client/v3/rooms/{r}/leave"),
            json!({}),
        )
        .await;

        // Every stored PDU carries its sender's account-key signature and nothing else.
        let store = server.store();
        let room_row = store.room(&room).await.unwrap().unwrap();
        let stored = store
            .room_events(room_row.room_nid, i64::MIN, i64::MAX, false, 1000)
            .await
            .unwrap();
        assert!(stored.len() >= 15, "{kind:?}: {} events", stored.len());
        let server_name = server.config.server_name.to_string();
        for row in &stored {
            let pdu: Value = serde_json::from_str(&row.json).unwrap();
            let sender = KeyFormUserId::parse(pdu["sender"].as_str().unwrap())
                .unwrap_or_else(|e| panic!("{kind:?}: sender not key form ({e}): {pdu}"));
            let signatures = pdu["signatures"].as_object().unwrap();
            assert_eq!(signatures.len(), 1, "{kind:?}: {pdu}");
            assert!(!signatures.contains_key(&server_name), "{kind:?}: {pdu}");
            let by_key = signatures[sender.key.as_str()].as_object().unwrap();
            assert_eq!(by_key.keys().collect::<Vec<_>>(), ["ed25519:1"], "{pdu}");
            // And it verifies with the key alone.
            let pdu = myelin_room_version::Pdu::from_federation(
                row.json.as_bytes(),
                myelin_room_version::RoomVersion::get(AK).unwrap(),
            )
            .unwrap();
            myelin_room_version::verify::verify_pdu(
                &pdu,
                myelin_room_version::RoomVersion::get(AK).unwrap(),
                &Default::default(),
            )
            .unwrap();
        }
        let stored_pl = stored
            .iter()
            .rev()
            .find(|row| row.event_type == "m.room.power_levels")
            .unwrap();
        let pl: Value = serde_json::from_str(&stored_pl.json).unwrap();
        assert_eq!(pl["content"]["users"], json!({key_id(&server, &bob): 50}));

        // What clients read: names, never keys, sender_account on every event.
        let sync = get_ok(&server, &alice, "/_matrix/client/v3/sync?timeout=0").await;
        assert_projected("alice's sync", &sync["rooms"], &names);
        let joined = &sync["rooms"]["join"][&room];
        assert!(
            joined.is_object(),
            "{kind:?}: room missing from sync: {sync}"
        );
        let sync_state_after = get_ok(
            &server,
            &alice,
            "/_matrix/client/v3/sync?timeout=0&use_state_after=true",
        )
        .await;
        assert_projected("sync state_after", &sync_state_after["rooms"], &names);
        // Lazy-loaded members: the reader's own member event and the timeline senders' are
        // kept, compared by the names the client sees.
        let filter = enc(r#"{"room":{"timeline":{"limit":2},"state":{"lazy_load_members":true}}}"#);
        let lazy = get_ok(
            &server,
            &alice,
            &format!("/_matrix/client/v3/sync?timeout=0&filter={filter}"),
        )
        .await;
        assert_projected("lazy sync", &lazy["rooms"], &names);
        let members: Vec<&Value> = lazy["rooms"]["join"][&room]["state"]["events"]
            .as_array()
            .unwrap()
            .iter()
            .filter(|e| e["type"] == "m.room.member")
            .map(|e| &e["state_key"])
            .collect();
        assert!(members.contains(&&json!(alice.user_id)), "{kind:?}: {lazy}");
        assert!(!members.contains(&&json!(erin.user_id)), "{kind:?}: {lazy}");
        let messages = get_ok(
            &server,
            &alice,
            &format!("/_matrix/client/v3/rooms/{r}/messages?dir=b&limit=100"),
        )
        .await;
        assert_projected("/messages", &messages, &names);
        let bodies: Vec<&str> = messages["chunk"]
            .as_array()
            .unwrap()
            .iter()
            .filter_map(|e| e["content"]["body"].as_str())
            .collect();
        assert!(bodies.contains(&"hi alice"), "{bodies:?}");
        let state = get_ok(
            &server,
            &alice,
            &format!("/_matrix/client/v3/rooms/{r}/state"),
        )
        .await;
        assert_projected("/state", &state, &names);
        let pl = get_ok(
            &server,
            &alice,
            &format!("/_matrix/client/v3/rooms/{r}/state/m.room.power_levels/"),
        )
        .await;
        assert_eq!(pl["users"], json!({bob.user_id.clone(): 50}));
        // State named by account name is found (Q3).
        let member = get_ok(
            &server,
            &alice,
            &format!(
                "/_matrix/client/v3/rooms/{r}/state/m.room.member/{}",
                enc(&carol.user_id)
            ),
        )
        .await;
        assert_eq!(member["membership"], "leave", "{kind:?}: {member}");
        let relations = get_ok(
            &server,
            &alice,
            &format!("/_matrix/client/v1/rooms/{r}/relations/{}", enc(&hello)),
        )
        .await;
        assert_eq!(
            relations["chunk"].as_array().unwrap().len(),
            1,
            "{relations}"
        );
        assert_projected("/relations", &relations, &names);
        for path in [
            format!("/_matrix/client/v3/rooms/{r}/members"),
            format!("/_matrix/client/v3/rooms/{r}/context/{}", enc(&hello)),
            format!("/_matrix/client/v3/rooms/{r}/event/{}", enc(&hello)),
        ] {
            let body = get_ok(&server, &alice, &path).await;
            assert_projected(&path, &body, &names);
        }
        let joined_members = get_ok(
            &server,
            &alice,
            &format!("/_matrix/client/v3/rooms/{r}/joined_members"),
        )
        .await;
        let mut ids: Vec<&String> = joined_members["joined"]
            .as_object()
            .unwrap()
            .keys()
            .collect();
        ids.sort();
        assert_eq!(
            ids,
            [&alice.user_id, &erin.user_id],
            "{kind:?}: {joined_members}"
        );
        let search = post_ok(
            &server,
            &alice,
            "/_matrix/client/v3/search",
            json!({"search_categories": {"room_events": {"search_term": "alice"}}}),
        )
        .await;
        assert_projected("search", &search, &names);
        assert!(
            search["search_categories"]["room_events"]["count"]
                .as_u64()
                .unwrap()
                >= 1,
            "{search}"
        );
        let notifications = get_ok(&server, &bob, "/_matrix/client/v3/notifications").await;
        assert_projected("notifications", &notifications, &names);
        let notified: Vec<&Value> = notifications["notifications"]
            .as_array()
            .unwrap()
            .iter()
            .map(|n| &n["event"]["sender"])
            .collect();
        // Bob is notified of others' messages, never of his own.
        assert!(notified.contains(&&json!(alice.user_id)), "{notifications}");
        assert!(!notified.contains(&&json!(bob.user_id)), "{notifications}");

        // The kicked user learns it, in names.
        let carol_sync = get_ok(
            &server,
            &carol,
            &format!("/_matrix/client/v3/sync?timeout=0&since={}", since[0]),
        )
        .await;
        assert_projected("carol's sync", &carol_sync["rooms"], &names);
        let left = &carol_sync["rooms"]["leave"][&room];
        let mut left_events = Vec::new();
        events_in(left, &mut left_events);
        assert!(
            left_events.iter().any(|e| e["type"] == "m.room.member"
                && e["state_key"] == json!(carol.user_id)
                && e["content"]["membership"] == "leave"
                && e["sender"] == json!(alice.user_id)),
            "{kind:?}: {left}"
        );
        // The banned invitee too.
        let dave_sync = get_ok(
            &server,
            &dave,
            &format!("/_matrix/client/v3/sync?timeout=0&since={}", since[1]),
        )
        .await;
        assert_projected("dave's sync", &dave_sync["rooms"], &names);
        assert!(
            dave_sync["rooms"]["leave"][&room].is_object(),
            "{dave_sync}"
        );
        // Joined rooms find key-form memberships.
        let rooms = get_ok(&server, &erin, "/_matrix/client/v3/joined_rooms").await;
        assert_eq!(rooms["joined_rooms"], json!([room]));
        let _ = erin_key;
        server.stop().await;
    }
}

#[tokio::test]
async fn erasure_answers_signed_m_erased_and_hides_the_users_events() {
    for kind in test_backends() {
        let server = TestServer::start(kind).await;
        let alice = server.register("alice").await;
        let bob = server.register("bob").await;
        let room = server
            .create_room(&alice, json!({"room_version": AK, "preset": "public_chat"}))
            .await;
        let r = enc(&room);
        post_ok(
            &server,
            &bob,
            &format!("/_matrix/client/v3/join/{r}"),
            json!({}),
        )
        .await;
        send_text(&server, &bob, &room, "b1", "remember me").await;
        send_text(&server, &alice, &room, "a1", "hello bob").await;
        let bob_key_form = key_id(&server, &bob);
        let bob_user = KeyFormUserId::parse(&bob_key_form).unwrap();
        let bob_key = bob_user.key.as_str().to_owned();
        let keys = &server.services().account_keys;

        // Before: a signed answer with the name.
        let answer = keys
            .query_accounts(&QueryAccounts {
                account_keys: vec![bob_key.clone(), "not-ours".to_owned()],
                erasure: Some((0, 10)),
            })
            .await
            .unwrap();
        let object: CanonicalJsonObject =
            serde_json::from_value(answer["account_keys"][&bob_key].clone()).unwrap();
        assert_eq!(
            classify_answer(&bob_user, Some(&object)),
            AnswerVerdict::Verified {
                account_name: "bob".to_owned()
            }
        );
        assert_eq!(answer["account_keys"]["not-ours"]["errcode"], "M_UNKNOWN");
        assert_eq!(answer["erasure"], json!({"id": 0, "has_more": false}));
        // Requests are capped.
        let too_many = keys
            .query_accounts(&QueryAccounts {
                account_keys: vec!["k".to_owned(); 2049],
                erasure: None,
            })
            .await
            .unwrap_err();
        assert!(
            matches!(too_many, myelin_service::Error::InvalidParam(_)),
            "{too_many:?}"
        );

        // Bob deactivates with erase: true.
        let reply = server
            .post(
                "/_matrix/client/v3/account/deactivate",
                &bob.access_token,
                json!({"erase": true, "auth": {"type": "m.login.password",
                       "identifier": {"type": "m.id.user", "user": "bob"},
                       "password": bob.password}}),
            )
            .await;
        ok(&server, reply, "deactivate").await;

        // The key is answered with a signed M_ERASED, listed unrequested in the erasure log.
        let answer = keys
            .query_accounts(&QueryAccounts {
                account_keys: vec![bob_key.clone()],
                erasure: None,
            })
            .await
            .unwrap();
        let object: CanonicalJsonObject =
            serde_json::from_value(answer["account_keys"][&bob_key].clone()).unwrap();
        assert_eq!(
            classify_answer(&bob_user, Some(&object)),
            AnswerVerdict::Erased
        );
        let log = keys
            .query_accounts(&QueryAccounts {
                account_keys: vec![],
                erasure: Some((0, 10)),
            })
            .await
            .unwrap();
        assert_eq!(log["erasure"], json!({"id": 1, "has_more": false}), "{log}");
        assert_eq!(log["account_keys"][&bob_key]["errcode"], "M_ERASED");
        let after = keys
            .query_accounts(&QueryAccounts {
                account_keys: vec![],
                erasure: Some((1, 10)),
            })
            .await
            .unwrap();
        assert_eq!(after["account_keys"], json!({}));
        assert_eq!(after["erasure"], json!({"id": 1, "has_more": false}));
        // The private key and the name are gone from the store.
        let rows = server
            .store()
            .account_keys_by_user_ids(std::slice::from_ref(&bob_key_form))
            .await
            .unwrap();
        assert_eq!(rows[0].private_key_enc, None);
        assert_eq!(rows[0].account_name, None);

        // Alice no longer sees bob's events, anywhere; her own are still there.
        let messages = get_ok(
            &server,
            &alice,
            &format!("/_matrix/client/v3/rooms/{r}/messages?dir=b&limit=100"),
        )
        .await;
        let chunk = messages["chunk"].as_array().unwrap();
        assert!(
            chunk
                .iter()
                .all(|e| e["unsigned"]["sender_account"]["key"] != json!(bob_key)),
            "{kind:?}: {messages}"
        );
        assert!(chunk.iter().any(|e| e["content"]["body"] == "hello bob"));
        let sync = get_ok(&server, &alice, "/_matrix/client/v3/sync?timeout=0").await;
        let text = sync.to_string();
        assert!(!text.contains("remember me"), "{kind:?}: {text}");
        assert!(text.contains("hello bob"));
        server.stop().await;
    }
}

#[tokio::test]
async fn account_key_rooms_are_off_unless_configured() {
    for kind in test_backends() {
        let server = TestServer::start_with(kind, |config| {
            config.experimental.msc4243 = false;
        })
        .await;
        let alice = server.register("alice").await;
        let caps = get_ok(&server, &alice, "/_matrix/client/v3/capabilities").await;
        assert!(
            caps["capabilities"]["m.room_versions"]["available"]
                .get(AK)
                .is_none(),
            "{caps}"
        );
        let reply = server
            .post(
                "/_matrix/client/v3/createRoom",
                &alice.access_token,
                json!({"room_version": AK}),
            )
            .await;
        assert_eq!(reply.0, 400, "{}", reply.1);
        assert_eq!(reply.1["errcode"], "M_UNSUPPORTED_ROOM_VERSION");
        server.stop().await;
    }
    // Off by default for operators.
    assert!(!myelin_service::Config::default().experimental.msc4243);
}

/// A restricted join into an account-key room is signed by the joiner's account key and
/// co-signed by the authorising member's (MSC4243.md §2.2 item 12), never by the server.
#[tokio::test]
async fn restricted_joins_are_co_signed_by_the_authorisers_account_key() {
    for kind in test_backends() {
        let server = TestServer::start(kind).await;
        let alice = server.register("alice").await;
        let bob = server.register("bob").await;
        let space = server
            .create_room(&alice, json!({"preset": "public_chat"}))
            .await;
        post_ok(
            &server,
            &bob,
            &format!("/_matrix/client/v3/join/{}", enc(&space)),
            json!({}),
        )
        .await;
        let room = server
            .create_room(
                &alice,
                json!({"room_version": AK, "preset": "private_chat",
                       "initial_state": [{"type": "m.room.join_rules", "state_key": "",
                         "content": {"join_rule": "restricted",
                                     "allow": [{"type": "m.room_membership", "room_id": space}]}}]}),
            )
            .await;
        let joined = post_ok(
            &server,
            &bob,
            &format!("/_matrix/client/v3/join/{}", enc(&room)),
            json!({}),
        )
        .await;
        assert_eq!(joined["room_id"], json!(room));
        let store = server.store();
        let room_row = store.room(&room).await.unwrap().unwrap();
        let stored = store
            .room_events(room_row.room_nid, i64::MIN, i64::MAX, false, 100)
            .await
            .unwrap();
        let bob_key = key_id(&server, &bob);
        let alice_key = key_id(&server, &alice);
        let join = stored
            .iter()
            .find(|row| row.event_type == "m.room.member" && row.sender == bob_key)
            .expect("bob's join");
        let pdu: Value = serde_json::from_str(&join.json).unwrap();
        assert_eq!(
            pdu["content"]["join_authorised_via_users_server"],
            json!(alice_key),
            "{kind:?}: {pdu}"
        );
        let mut entities: Vec<&String> = pdu["signatures"].as_object().unwrap().keys().collect();
        entities.sort();
        let mut expected = vec![&bob_key, &alice_key]
            .into_iter()
            .map(|id| bare_key(id))
            .collect::<Vec<_>>();
        expected.sort();
        assert_eq!(
            entities.into_iter().cloned().collect::<Vec<_>>(),
            expected,
            "{kind:?}: {pdu}"
        );
        // Both signatures verify (verify_pdu checks the authoriser's too).
        let version = myelin_room_version::RoomVersion::get(AK).unwrap();
        let parsed =
            myelin_room_version::Pdu::from_federation(join.json.as_bytes(), version).unwrap();
        myelin_room_version::verify::verify_pdu(&parsed, version, &Default::default()).unwrap();
        // Clients see the authoriser by name.
        let state = get_ok(
            &server,
            &alice,
            &format!(
                "/_matrix/client/v3/rooms/{}/state/m.room.member/{}",
                enc(&room),
                enc(&bob.user_id)
            ),
        )
        .await;
        assert_eq!(
            state["join_authorised_via_users_server"],
            json!(alice.user_id)
        );
        server.stop().await;
    }
}

/// Waits until each server's client sees both users joined to the room, by account name.
async fn both_show_both_joined(
    (a, alice): (&TestServer, &TestUser),
    (b, bob): (&TestServer, &TestUser),
    room: &str,
) {
    let path = format!("/_matrix/client/v3/rooms/{}/joined_members", enc(room));
    for (server, reader) in [(a, alice), (b, bob)] {
        myelin_testkit::rooms::eventually(
            &format!("{} to show both joined by name", server.name()),
            || async {
                let members = get_ok(server, reader, &path).await;
                let joined = &members["joined"];
                joined.get(&alice.user_id).is_some() && joined.get(&bob.user_id).is_some()
            },
        )
        .await;
    }
}

/// Account-key rooms across two servers: a user of B joins A's `org.matrix.12.4243` room
/// through A (B asks `make_join` again in key form when A answers that the room's version is
/// one it did not offer, and signs the join with the user's account key); each server asks the
/// other's `/query/accounts` about the new members, so both sides' clients see account names,
/// never keys, with `sender_account` on every event; every stored PDU is signed by its sender's
/// account key alone, on both servers.
#[tokio::test]
async fn a_user_of_another_server_joins_and_chats_in_an_account_key_room() {
    use myelin_testkit::{
        federation::{TestCa, start_federation},
        rooms::eventually,
    };
    for kind in test_backends() {
        let ca = TestCa::new();
        let servers = start_federation(kind, &ca, &["hs-a.test", "hs-b.test"], |_, _| {}).await;
        let (a, b) = (&servers[0], &servers[1]);
        let alice = a.register("alice").await;
        let bob = b.register("bob").await;
        let alice_key = key_id(a, &alice);
        let bob_key = key_id(b, &bob);
        let room = a
            .create_room(&alice, json!({"room_version": AK, "preset": "public_chat"}))
            .await;
        let r = enc(&room);
        post_ok(
            b,
            &bob,
            &format!("/_matrix/client/v3/join/{r}?via=hs-a.test"),
            json!({}),
        )
        .await;

        // B verified alice while joining; A verifies bob once his join arrives.
        let names = [
            (bare_key(&alice_key), alice.user_id.clone()),
            (bare_key(&bob_key), bob.user_id.clone()),
        ];
        both_show_both_joined((a, &alice), (b, &bob), &room).await;
        send_text(b, &bob, &room, "b1", "hello from b").await;
        send_text(a, &alice, &room, "a1", "welcome, bob").await;
        for (server, reader) in [(a, &alice), (b, &bob)] {
            let path = format!("/_matrix/client/v3/rooms/{r}/messages?dir=b&limit=50");
            eventually(
                &format!("{} to show both messages", server.name()),
                || async {
                    let page = get_ok(server, reader, &path).await;
                    let bodies: Vec<&str> = page["chunk"]
                        .as_array()
                        .into_iter()
                        .flatten()
                        .filter_map(|e| e["content"]["body"].as_str())
                        .collect();
                    bodies.contains(&"hello from b") && bodies.contains(&"welcome, bob")
                },
            )
            .await;
            let page = get_ok(server, reader, &path).await;
            assert_projected(
                &format!("{kind:?} {} /messages", server.name()),
                &page,
                &names,
            );
            let synced = get_ok(server, reader, "/_matrix/client/v3/sync").await;
            let joined = &synced["rooms"]["join"][room.as_str()];
            assert!(
                joined["timeline"]["events"].is_array(),
                "{kind:?}: {synced}"
            );
            assert_projected(&format!("{kind:?} {} /sync", server.name()), joined, &names);
        }

        // Typing and read receipts cross as account-name ids (MSC4243.md §2.7): A maps bob's
        // name to his verified key to check he is in the room, and shows him by name.
        let reply = b
            .put(
                &format!("/_matrix/client/v3/rooms/{r}/typing/{}", enc(&bob.user_id)),
                &bob.access_token,
                json!({"typing": true, "timeout": 30000}),
            )
            .await;
        ok(b, reply, "typing").await;
        let welcome = {
            let page = get_ok(
                b,
                &bob,
                &format!("/_matrix/client/v3/rooms/{r}/messages?dir=b&limit=50"),
            )
            .await;
            page["chunk"]
                .as_array()
                .unwrap()
                .iter()
                .find(|e| e["content"]["body"] == "welcome, bob")
                .unwrap()["event_id"]
                .as_str()
                .unwrap()
                .to_owned()
        };
        post_ok(
            b,
            &bob,
            &format!(
                "/_matrix/client/v3/rooms/{r}/receipt/m.read/{}",
                enc(&welcome)
            ),
            json!({}),
        )
        .await;
        eventually("A to show bob typing and his receipt by name", || async {
            let synced = get_ok(a, &alice, "/_matrix/client/v3/sync").await;
            let ephemeral = &synced["rooms"]["join"][room.as_str()]["ephemeral"]["events"];
            let events = ephemeral.as_array().cloned().unwrap_or_default();
            let typing = events.iter().any(|e| {
                e["type"] == "m.typing"
                    && e["content"]["user_ids"]
                        .as_array()
                        .is_some_and(|ids| ids.contains(&json!(bob.user_id)))
            });
            let receipt = events.iter().any(|e| {
                e["type"] == "m.receipt"
                    && !e["content"][welcome.as_str()]["m.read"][bob.user_id.as_str()].is_null()
            });
            typing && receipt
        })
        .await;

        // Alice kicks bob, he joins again, she bans him and his next join is refused; both
        // servers show it by name. Bob's leave, join and A's events all cross in key form.
        let membership_of_bob = |server: &'static str| {
            let (server, reader) = if server == "a" {
                (a, &alice)
            } else {
                (b, &bob)
            };
            let path = format!(
                "/_matrix/client/v3/rooms/{r}/state/m.room.member/{}",
                enc(&bob.user_id)
            );
            async move {
                let (status, body) = server.get(&path, &reader.access_token).await;
                (status == 200).then(|| body["membership"].as_str().unwrap_or("").to_owned())
            }
        };
        for (action, expected) in [("kick", "leave"), ("ban", "ban")] {
            if action == "ban" {
                post_ok(
                    b,
                    &bob,
                    &format!("/_matrix/client/v3/join/{r}?via=hs-a.test"),
                    json!({}),
                )
                .await;
                eventually("A to see bob back", || async {
                    membership_of_bob("a").await.as_deref() == Some("join")
                })
                .await;
            }
            post_ok(
                a,
                &alice,
                &format!("/_matrix/client/v3/rooms/{r}/{action}"),
                json!({"user_id": bob.user_id}),
            )
            .await;
            for side in ["a", "b"] {
                eventually(&format!("{side} to see bob {expected}"), || async {
                    membership_of_bob(side).await.as_deref() == Some(expected)
                })
                .await;
            }
        }
        let (status, body) = b
            .post(
                &format!("/_matrix/client/v3/join/{r}?via=hs-a.test"),
                &bob.access_token,
                json!({}),
            )
            .await;
        assert_eq!(status, 403, "{kind:?}: a banned user's join: {body}");

        // Every PDU of the room either server stores is signed by its sender's account key only.
        for server in [a, b] {
            let store = server.store();
            let room_nid = store.room(&room).await.unwrap().unwrap().room_nid;
            let mut seen = 0;
            for row in store
                .room_events(room_nid, i64::MIN, i64::MAX, false, 1000)
                .await
                .unwrap()
            {
                let pdu: Value = serde_json::from_str(&row.json).unwrap();
                let signers: Vec<&String> = pdu["signatures"].as_object().unwrap().keys().collect();
                assert_eq!(
                    signers,
                    vec![&bare_key(pdu["sender"].as_str().unwrap())],
                    "{kind:?} {}: {pdu}",
                    server.name()
                );
                seen += 1;
            }
            assert!(seen >= 8, "{kind:?} {}: {seen} events", server.name());
        }
        for server in servers {
            server.stop().await;
        }
    }
}

/// The account-key invite handshake across servers (MSC4243.md §2.5): alice invites bob of
/// another server by account name; B puts in bob's key, A checks and signs, and the invite in
/// A's room carries bob's key-form state key signed by both keys; bob sees the invite (alice by
/// name once A vouched for her), joins, and both see each other by name.
#[tokio::test]
async fn a_user_of_another_server_is_invited_by_name_into_an_account_key_room() {
    use myelin_testkit::{
        federation::{TestCa, start_federation},
        rooms::eventually,
    };
    for kind in test_backends() {
        let ca = TestCa::new();
        let servers = start_federation(kind, &ca, &["hs-a.test", "hs-b.test"], |_, _| {}).await;
        let (a, b) = (&servers[0], &servers[1]);
        let alice = a.register("alice").await;
        let bob = b.register("bob").await;
        let alice_key = key_id(a, &alice);
        let bob_key = key_id(b, &bob);
        let room = a
            .create_room(
                &alice,
                json!({"room_version": AK, "preset": "private_chat"}),
            )
            .await;
        let r = enc(&room);
        post_ok(
            a,
            &alice,
            &format!("/_matrix/client/v3/rooms/{r}/invite"),
            json!({"user_id": bob.user_id}),
        )
        .await;
        // The invite A stored names bob by key and is signed by bob's key and alice's.
        let stored = a
            .store()
            .current_state(a.store().room(&room).await.unwrap().unwrap().room_nid, None)
            .await
            .unwrap()
            .into_iter()
            .find(|row| row.state_key.as_deref() == Some(bob_key.as_str()))
            .unwrap_or_else(|| panic!("{kind:?}: no member event for bob's key"));
        let pdu: Value = serde_json::from_str(&stored.json).unwrap();
        assert_eq!(pdu["content"]["membership"], "invite", "{kind:?}: {pdu}");
        let mut signers: Vec<&String> = pdu["signatures"].as_object().unwrap().keys().collect();
        signers.sort();
        let mut wanted = [bare_key(&alice_key), bare_key(&bob_key)];
        wanted.sort();
        assert_eq!(
            signers,
            wanted.iter().collect::<Vec<_>>(),
            "{kind:?}: {pdu}"
        );

        // Bob's server shows him the invite, from alice by name.
        eventually("bob to see the invite from alice by name", || async {
            let synced = get_ok(b, &bob, "/_matrix/client/v3/sync").await;
            let invite = &synced["rooms"]["invite"][room.as_str()]["invite_state"]["events"];
            invite.as_array().is_some_and(|events| {
                events.iter().any(|e| {
                    e["type"] == "m.room.member"
                        && e["state_key"] == json!(bob.user_id)
                        && e["sender"] == json!(alice.user_id)
                })
            })
        })
        .await;
        post_ok(
            b,
            &bob,
            &format!("/_matrix/client/v3/join/{r}?via=hs-a.test"),
            json!({}),
        )
        .await;
        both_show_both_joined((a, &alice), (b, &bob), &room).await;
        // A second invite, rejected: B's leave goes through A's make_leave in key form.
        let second = a
            .create_room(
                &alice,
                json!({"room_version": AK, "preset": "private_chat"}),
            )
            .await;
        let s2 = enc(&second);
        post_ok(
            a,
            &alice,
            &format!("/_matrix/client/v3/rooms/{s2}/invite"),
            json!({"user_id": bob.user_id}),
        )
        .await;
        post_ok(
            b,
            &bob,
            &format!("/_matrix/client/v3/rooms/{s2}/leave"),
            json!({}),
        )
        .await;
        let path = format!(
            "/_matrix/client/v3/rooms/{s2}/state/m.room.member/{}",
            enc(&bob.user_id)
        );
        eventually("A to take bob's rejection", || async {
            let (status, body) = a.get(&path, &alice.access_token).await;
            status == 200 && body["membership"] == "leave"
        })
        .await;
        for server in servers {
            server.stop().await;
        }
    }
}

/// The room's current `m.room.member` events on `server`, as `(state key, event JSON)`.
async fn member_events(server: &TestServer, room: &str) -> Vec<(String, Value)> {
    let store = server.store();
    let room_nid = store.room(room).await.unwrap().unwrap().room_nid;
    let mut members: Vec<(String, Value)> = store
        .current_state(room_nid, None)
        .await
        .unwrap()
        .into_iter()
        .filter(|row| row.event_type == "m.room.member")
        .map(|row| {
            (
                row.state_key.unwrap_or_default(),
                serde_json::from_str(&row.json).unwrap(),
            )
        })
        .collect();
    members.sort_by(|x, y| x.0.cmp(&y.0));
    members
}

/// A ban sent as `hs-a.test` to B's `/ban` for mallory, built by the test (B's checks of the
/// target's role): its sender `sender`'s key-form id on `domain`, signed by `signer`.
fn crafted_ban(
    room: &str,
    sender: &myelin_room_version::KeyPair,
    domain: &str,
    signer: &myelin_room_version::KeyPair,
    membership: &str,
) -> myelin_room_version::Pdu {
    use myelin_room_version::{EventSigner, RoomVersion, pdu::build_pdu};
    let version = RoomVersion::get(AK).unwrap();
    let partial = myelin_room_version::canonical::parse_object(
        json!({"type": "m.room.member", "state_key": "@mallory:hs-b.test",
               "sender": sender.account_key().user_id(domain), "room_id": room,
               "content": {"membership": membership}, "origin_server_ts": 5, "depth": 3,
               "prev_events": ["$AAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAA"],
               "auth_events": ["$AAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAA"]})
        .to_string()
        .as_bytes(),
    )
    .unwrap();
    let pdu = build_pdu(partial, version, EventSigner::Account(sender)).unwrap();
    if std::ptr::eq(sender, signer) {
        return pdu;
    }
    // Signed by another key than the sender's.
    let mut json = pdu.into_json();
    json.insert(
        "signatures".into(),
        myelin_room_version::CanonicalJsonValue::Object(CanonicalJsonObject::new()),
    );
    let mut pdu = myelin_room_version::Pdu::from_canonical(json, version).unwrap();
    myelin_room_version::pdu::add_signature(&mut pdu, version, EventSigner::Account(signer))
        .unwrap();
    pdu
}

/// A pre-emptive ban across servers (MSC4243.md §2.5 items 34–35, §6 case 28): alice on A bans
/// mallory of B, never in the room, by name; B puts in mallory's key and signs; A's room state
/// then holds a ban of mallory's key-form id signed by alice's key and mallory's, and
/// mallory's join through A is refused. A member without the ban level makes A ask nothing; an
/// unknown name is refused by B and leaves nothing on A; B checks the ban it is asked to sign
/// (X-Matrix, the sender's domain, the signature, the membership) and holds each server to a
/// small burst of `/ban` requests (429 past it).
#[tokio::test]
async fn a_user_of_another_server_is_banned_pre_emptively_by_name() {
    use myelin_federation::FederationError;
    use myelin_room_version::KeyPair;
    use myelin_service::{config::Bucket, federation::msc4243::ban};
    use myelin_testkit::{
        federation::{TestCa, start_federation},
        rooms::eventually,
    };
    use ruma::{OwnedEventId, OwnedRoomId, OwnedServerName, RoomVersionId};
    for kind in test_backends() {
        let ca = TestCa::new();
        let servers = start_federation(kind, &ca, &["hs-a.test", "hs-b.test"], |i, config| {
            if i == 1 {
                // B limits `/ban` to five requests per server, with no refill during the test;
                // clients are not limited.
                config.rate_limits.enabled = true;
                config.rate_limits.per_user = Bucket {
                    per_second: 1000.0,
                    burst: 1000,
                };
                config.rate_limits.per_address = config.rate_limits.per_user.clone();
                config.rate_limits.federated_bans = Bucket {
                    per_second: 0.0001,
                    burst: 5,
                };
            }
        })
        .await;
        let (a, b) = (&servers[0], &servers[1]);
        let alice = a.register("alice").await;
        let carol = a.register("carol").await;
        let mallory = b.register("mallory").await;
        let alice_key = key_id(a, &alice);
        let mallory_key = key_id(b, &mallory);
        let room = a
            .create_room(&alice, json!({"room_version": AK, "preset": "public_chat"}))
            .await;
        let r = enc(&room);
        post_ok(
            a,
            &carol,
            &format!("/_matrix/client/v3/join/{r}"),
            json!({}),
        )
        .await;
        let ban = |user: &TestUser, target: &str| {
            let path = format!("/_matrix/client/v3/rooms/{r}/ban");
            let body = json!({"user_id": target, "reason": "spam"});
            let token = user.access_token.clone();
            async move { a.post(&path, &token, body).await }
        };

        // Carol lacks the ban level: refused before B is asked (B's budget is untouched, see
        // the count at the end).
        let (status, body) = ban(&carol, &mallory.user_id).await;
        assert_eq!(status, 403, "{kind:?}: {body}");
        assert_eq!(member_events(a, &room).await.len(), 2, "{kind:?}");

        // Alice bans mallory by name. [B's /ban budget: 1]
        let reply = ban(&alice, &mallory.user_id).await;
        ok(a, reply, "ban").await;
        let members = member_events(a, &room).await;
        let (_, pdu) = members
            .iter()
            .find(|(key, _)| key == &mallory_key)
            .unwrap_or_else(|| panic!("{kind:?}: no member event for mallory's key"));
        assert_eq!(pdu["content"]["membership"], "ban", "{kind:?}: {pdu}");
        assert_eq!(pdu["content"]["reason"], "spam", "{kind:?}: {pdu}");
        assert_eq!(pdu["sender"], json!(alice_key), "{kind:?}: {pdu}");
        let mut signers: Vec<&String> = pdu["signatures"].as_object().unwrap().keys().collect();
        signers.sort();
        let mut wanted = [bare_key(&alice_key), bare_key(&mallory_key)];
        wanted.sort();
        assert_eq!(
            signers,
            wanted.iter().collect::<Vec<_>>(),
            "{kind:?}: {pdu}"
        );
        assert!(
            !members.iter().any(|(key, _)| key.contains("mallory")),
            "{kind:?}: a name-form member event is stored: {members:?}"
        );
        // A asks B about the key it was given and then shows the ban by name.
        eventually("A to show mallory banned by name", || async {
            let (status, body) = a
                .get(
                    &format!(
                        "/_matrix/client/v3/rooms/{r}/state/m.room.member/{}",
                        enc(&mallory.user_id)
                    ),
                    &alice.access_token,
                )
                .await;
            status == 200 && body["membership"] == "ban"
        })
        .await;

        // Mallory's join through A is refused.
        let (status, body) = b
            .post(
                &format!("/_matrix/client/v3/join/{r}?via=hs-a.test"),
                &mallory.access_token,
                json!({}),
            )
            .await;
        assert_eq!(status, 403, "{kind:?}: a banned user's join: {body}");

        // A name B does not know: B's 404 reaches the client, nothing is stored. [2]
        let before = member_events(a, &room).await;
        let (status, body) = ban(&alice, "@nobody:hs-b.test").await;
        assert_eq!(status, 404, "{kind:?}: {body}");
        assert_eq!(body["errcode"], "M_NOT_FOUND", "{kind:?}: {body}");
        assert_eq!(member_events(a, &room).await, before, "{kind:?}");
        // An unknown key-form id is never sent as a name.
        let stranger = KeyPair::from_seed(&[9; 32])
            .account_key()
            .user_id("hs-b.test");
        let (status, body) = ban(&alice, &stranger).await;
        assert_eq!(status, 400, "{kind:?}: {body}");
        assert_eq!(body["errcode"], "M_INVALID_PARAM", "{kind:?}: {body}");

        // B's endpoint wants X-Matrix.
        let path = format!(
            "/_matrix/federation/unstable/org.matrix.msc4243/ban/{r}/{}",
            enc("$AAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAA")
        );
        let response = ca
            .client(&[("hs-b.test", b.addrs().1)])
            .put(b.federation_url(&path))
            .json(&json!({"room_version": AK, "event": {}}))
            .send()
            .await
            .unwrap();
        assert_eq!(response.status(), 401, "{kind:?}");

        // B's checks of a ban it is asked to sign, asked as hs-a.test. [3, 4, 5]
        let hs_b: OwnedServerName = "hs-b.test".try_into().unwrap();
        let send_to_b = |pdu: myelin_room_version::Pdu| {
            let request = ban::Request::new(
                OwnedRoomId::try_from(room.as_str()).unwrap(),
                OwnedEventId::try_from(pdu.event_id()).unwrap(),
                RoomVersionId::try_from(AK).unwrap(),
                serde_json::value::RawValue::from_string(pdu.canonical_json()).unwrap(),
            );
            let hs_b = hs_b.clone();
            async move { a.services().federation.send(&hs_b, request).await }
        };
        let eve = KeyPair::from_seed(&[7; 32]);
        let other = KeyPair::from_seed(&[8; 32]);
        let status_of = |result: Result<ban::Response, FederationError>| match result {
            Err(FederationError::Status { status, body }) => (status, body),
            other => panic!("{kind:?}: expected a refusal, got {other:?}"),
        };
        // From a user of another server than the requesting one.
        let (status, body) =
            status_of(send_to_b(crafted_ban(&room, &eve, "hs-c.test", &eve, "ban")).await);
        assert_eq!(status, 403, "{kind:?}: {body}");
        // Not signed by its sender's key.
        let (status, body) =
            status_of(send_to_b(crafted_ban(&room, &eve, "hs-a.test", &other, "ban")).await);
        assert_eq!(status, 403, "{kind:?}: {body}");
        // Not a ban.
        let (status, body) =
            status_of(send_to_b(crafted_ban(&room, &eve, "hs-a.test", &eve, "invite")).await);
        assert_eq!(status, 400, "{kind:?}: {body}");

        // The budget of five is spent (so Carol's refused ban never reached B): 429.
        let (status, body) = ban(&alice, "@nobody2:hs-b.test").await;
        assert_eq!(status, 429, "{kind:?}: {body}");
        assert_eq!(body["errcode"], "M_LIMIT_EXCEEDED", "{kind:?}: {body}");
        assert!(
            body["retry_after_ms"].as_u64().is_some_and(|ms| ms > 0),
            "{kind:?}: {body}"
        );
        assert_eq!(member_events(a, &room).await, before, "{kind:?}");
        for server in servers {
            server.stop().await;
        }
    }
}

/// `/ban` is served only with `experimental.msc4243` on: B with it off answers 404
/// `M_UNRECOGNIZED` (asked signed, as hs-a.test), and a ban through it is 502 for A's client
/// with nothing stored.
#[tokio::test]
async fn ban_is_unrecognized_while_msc4243_is_off() {
    use myelin_federation::FederationError;
    use myelin_room_version::KeyPair;
    use myelin_service::federation::msc4243::ban;
    use myelin_testkit::federation::{TestCa, start_federation};
    use ruma::{OwnedEventId, OwnedRoomId, OwnedServerName, RoomVersionId};
    for kind in test_backends() {
        let ca = TestCa::new();
        let servers = start_federation(kind, &ca, &["hs-a.test", "hs-b.test"], |i, config| {
            config.experimental.msc4243 = i == 0;
        })
        .await;
        let (a, b) = (&servers[0], &servers[1]);
        let alice = a.register("alice").await;
        let mallory = b.register("mallory").await;
        let room = a
            .create_room(&alice, json!({"room_version": AK, "preset": "public_chat"}))
            .await;
        let eve = KeyPair::from_seed(&[7; 32]);
        let pdu = crafted_ban(&room, &eve, "hs-a.test", &eve, "ban");
        let request = ban::Request::new(
            OwnedRoomId::try_from(room.as_str()).unwrap(),
            OwnedEventId::try_from(pdu.event_id()).unwrap(),
            RoomVersionId::try_from(AK).unwrap(),
            serde_json::value::RawValue::from_string(pdu.canonical_json()).unwrap(),
        );
        let hs_b: OwnedServerName = "hs-b.test".try_into().unwrap();
        match a.services().federation.send(&hs_b, request).await {
            Err(FederationError::Status { status, body }) => {
                assert_eq!(status, 404, "{kind:?}: {body}");
                assert!(body.contains("M_UNRECOGNIZED"), "{kind:?}: {body}");
            }
            other => panic!("{kind:?}: expected 404, got {other:?}"),
        }
        let before = member_events(a, &room).await;
        let (status, body) = a
            .post(
                &format!("/_matrix/client/v3/rooms/{}/ban", enc(&room)),
                &alice.access_token,
                json!({"user_id": mallory.user_id}),
            )
            .await;
        assert_eq!(status, 502, "{kind:?}: {body}");
        assert_eq!(member_events(a, &room).await, before, "{kind:?}");
        for server in servers {
            server.stop().await;
        }
    }
}

/// Erasure across servers (MSC4243.md §2.4): bob of B chats in A's account-key room, then
/// deactivates with `erase: true`; A's poll of B's erasure log records his key as erased, and
/// A's clients no longer see his events. A second poll finds nothing new.
#[tokio::test]
async fn an_erasure_on_another_server_reaches_this_server_through_its_erasure_log() {
    use myelin_testkit::{
        federation::{TestCa, start_federation},
        rooms::eventually,
    };
    for kind in test_backends() {
        let ca = TestCa::new();
        let servers = start_federation(kind, &ca, &["hs-a.test", "hs-b.test"], |_, _| {}).await;
        let (a, b) = (&servers[0], &servers[1]);
        let alice = a.register("alice").await;
        let bob = b.register("bob").await;
        let bob_key = key_id(b, &bob);
        let room = a
            .create_room(&alice, json!({"room_version": AK, "preset": "public_chat"}))
            .await;
        let r = enc(&room);
        post_ok(
            b,
            &bob,
            &format!("/_matrix/client/v3/join/{r}?via=hs-a.test"),
            json!({}),
        )
        .await;
        both_show_both_joined((a, &alice), (b, &bob), &room).await;
        send_text(b, &bob, &room, "b1", "soon gone").await;
        let path = format!("/_matrix/client/v3/rooms/{r}/messages?dir=b&limit=50");
        let shows_bob = |body: Value| {
            body["chunk"]
                .as_array()
                .is_some_and(|events| events.iter().any(|e| e["content"]["body"] == "soon gone"))
        };
        eventually("A to show bob's message", || async {
            shows_bob(get_ok(a, &alice, &path).await)
        })
        .await;

        let reply = b
            .post(
                "/_matrix/client/v3/account/deactivate",
                &bob.access_token,
                json!({"erase": true, "auth": {"type": "m.login.password",
                       "identifier": {"type": "m.id.user", "user": "bob"},
                       "password": bob.password}}),
            )
            .await;
        ok(b, reply, "deactivate").await;

        let verifier = &a.services().account_verifier;
        assert_eq!(verifier.poll_due_erasures().await.unwrap(), 1, "{kind:?}");
        assert_eq!(
            a.services()
                .account_keys
                .lookup(&KeyFormUserId::parse(&bob_key).unwrap()),
            myelin_room_version::KeyVerification::Erased,
            "{kind:?}"
        );
        assert!(!shows_bob(get_ok(a, &alice, &path).await), "{kind:?}");
        // Polled just now: not due again; read again from the kept position, nothing new.
        assert_eq!(verifier.poll_due_erasures().await.unwrap(), 0, "{kind:?}");
        assert_eq!(
            verifier.poll_erasures("hs-b.test", 1).await.unwrap(),
            0,
            "{kind:?}"
        );
        for server in servers {
            server.stop().await;
        }
    }
}

/// A knock on another server's account-key room (B asks `make_knock` again in key form, as for
/// joins): A shows bob knocking by name once it verified his key; alice invites him and he
/// joins; B's client sees the knock and the room by name.
#[tokio::test]
async fn a_user_of_another_server_knocks_on_an_account_key_room_and_is_let_in() {
    use myelin_testkit::{
        federation::{TestCa, start_federation},
        rooms::eventually,
    };
    for kind in test_backends() {
        let ca = TestCa::new();
        let servers = start_federation(kind, &ca, &["hs-a.test", "hs-b.test"], |_, _| {}).await;
        let (a, b) = (&servers[0], &servers[1]);
        let alice = a.register("alice").await;
        let bob = b.register("bob").await;
        let room = a
            .create_room(
                &alice,
                json!({"room_version": AK, "preset": "private_chat",
                       "initial_state": [{"type": "m.room.join_rules", "state_key": "",
                                          "content": {"join_rule": "knock"}}]}),
            )
            .await;
        let r = enc(&room);
        post_ok(
            b,
            &bob,
            &format!("/_matrix/client/v3/knock/{r}?via=hs-a.test"),
            json!({"reason": "let me in"}),
        )
        .await;
        let member_path = format!(
            "/_matrix/client/v3/rooms/{r}/state/m.room.member/{}",
            enc(&bob.user_id)
        );
        eventually("A to show bob knocking, by name", || async {
            let (status, body) = a.get(&member_path, &alice.access_token).await;
            status == 200 && body["membership"] == "knock"
        })
        .await;
        let synced = get_ok(b, &bob, "/_matrix/client/v3/sync").await;
        let knock = &synced["rooms"]["knock"][room.as_str()]["knock_state"]["events"];
        assert!(
            knock.as_array().is_some_and(|events| events
                .iter()
                .any(|e| e["type"] == "m.room.member" && e["state_key"] == json!(bob.user_id))),
            "{kind:?}: {synced}"
        );
        post_ok(
            a,
            &alice,
            &format!("/_matrix/client/v3/rooms/{r}/invite"),
            json!({"user_id": bob.user_id}),
        )
        .await;
        post_ok(
            b,
            &bob,
            &format!("/_matrix/client/v3/join/{r}?via=hs-a.test"),
            json!({}),
        )
        .await;
        both_show_both_joined((a, &alice), (b, &bob), &room).await;
        for server in servers {
            server.stop().await;
        }
    }
}

/// A user of another server cannot join a non-federating account-key room (`m.federate:
/// false`) through its server (auth rule 4, and the transport check by origin of MSC4243.md Q9,
/// which `federation_receive.rs` tests on its own), while a federating room of the same shape
/// lets him in.
#[tokio::test]
async fn a_non_federating_account_key_room_refuses_other_servers() {
    use myelin_testkit::federation::{TestCa, start_federation};
    for kind in test_backends() {
        let ca = TestCa::new();
        let servers = start_federation(kind, &ca, &["hs-a.test", "hs-b.test"], |_, _| {}).await;
        let (a, b) = (&servers[0], &servers[1]);
        let alice = a.register("alice").await;
        let bob = b.register("bob").await;
        for federate in [false, true] {
            let room = a
                .create_room(
                    &alice,
                    json!({"room_version": AK, "preset": "public_chat",
                           "creation_content": {"m.federate": federate}}),
                )
                .await;
            let (status, body) = b
                .post(
                    &format!("/_matrix/client/v3/join/{}?via=hs-a.test", enc(&room)),
                    &bob.access_token,
                    json!({}),
                )
                .await;
            if federate {
                assert_eq!(status, 200, "{kind:?}: {body}");
            } else {
                assert_eq!(status, 403, "{kind:?}: {body}");
                assert_eq!(body["errcode"], "M_FORBIDDEN", "{kind:?}: {body}");
            }
        }
        for server in servers {
            server.stop().await;
        }
    }
}

/// `/sync?since=` as `user` (no wait).
async fn sync_since(server: &TestServer, user: &TestUser, since: &str) -> Value {
    get_ok(
        server,
        user,
        &format!("/_matrix/client/v3/sync?timeout=0&since={}", enc(since)),
    )
    .await
}

/// Device lists and presence across servers in an account-key room are about accounts
/// (MSC4243.md §2.7, case 35): bob of B is a member of A's room under his key, yet A's client
/// hears of his devices and presence by his account name. A accepts B's device-list and
/// presence EDUs about `@bob:hs-b.test` because it maps the name to bob's verified key to find
/// the room they share; alice's sync names bob (never his key) in `device_lists.changed`, and
/// presence reads find him as a room mate.
#[tokio::test]
async fn device_lists_and_presence_of_another_servers_user_go_by_account_name() {
    use myelin_room_version::{KeyPair, canonical::value_to_object, signing::sign_json};
    use myelin_testkit::{
        federation::{TestCa, start_federation},
        rooms::eventually,
    };
    for kind in test_backends() {
        let ca = TestCa::new();
        let servers = start_federation(kind, &ca, &["hs-a.test", "hs-b.test"], |_, _| {}).await;
        let (a, b) = (&servers[0], &servers[1]);
        let alice = a.register("alice").await;
        let bob = b.register("bob").await;
        let bob_key_form = key_id(b, &bob);
        let room = a
            .create_room(&alice, json!({"room_version": AK, "preset": "public_chat"}))
            .await;
        let since = get_ok(a, &alice, "/_matrix/client/v3/sync?timeout=0").await["next_batch"]
            .as_str()
            .unwrap()
            .to_owned();
        post_ok(
            b,
            &bob,
            &format!("/_matrix/client/v3/join/{}?via=hs-a.test", enc(&room)),
            json!({}),
        )
        .await;
        both_show_both_joined((a, &alice), (b, &bob), &room).await;

        // Bob's join changes whose devices alice tracks: named by account, not by key.
        let synced = sync_since(a, &alice, &since).await;
        let changed = synced["device_lists"]["changed"].clone();
        assert!(
            changed
                .as_array()
                .is_some_and(|c| c.contains(&json!(bob.user_id))),
            "{kind:?}: bob by name in device_lists.changed: {synced}"
        );
        assert!(
            !synced.to_string().contains(&bob_key_form),
            "{kind:?}: bob's key-form id reached alice's sync: {synced}"
        );
        let mut since = synced["next_batch"].as_str().unwrap().to_owned();

        // Bob's new device keys: B tells A (`m.device_list_update` about `@bob:hs-b.test`), A
        // keeps it because bob's verified key shares a room with alice, and alice hears of it.
        let signing = KeyPair::from_seed(&[9; 32]);
        let device_keys = {
            use base64::Engine as _;
            let b64 = |bytes: &[u8]| base64::engine::general_purpose::STANDARD_NO_PAD.encode(bytes);
            let object = json!({
                "user_id": bob.user_id,
                "device_id": bob.device_id,
                "algorithms": ["m.olm.v1.curve25519-aes-sha2", "m.megolm.v1.aes-sha2"],
                "keys": {
                    format!("curve25519:{}", bob.device_id): b64(&[7; 32]),
                    format!("ed25519:{}", bob.device_id): b64(&signing.public_key()),
                },
            });
            let mut canonical = value_to_object(object).unwrap();
            sign_json(
                &mut canonical,
                &bob.user_id,
                &format!("ed25519:{}", bob.device_id),
                &signing,
            )
            .unwrap();
            serde_json::to_value(canonical).unwrap()
        };
        post_ok(
            b,
            &bob,
            "/_matrix/client/v3/keys/upload",
            json!({"device_keys": device_keys}),
        )
        .await;
        let (alice_ref, bob_id) = (&alice, bob.user_id.as_str());
        eventually("alice to hear of bob's new device by name", || {
            let since_now = since.clone();
            async move {
                let synced = sync_since(a, alice_ref, &since_now).await;
                synced["device_lists"]["changed"]
                    .as_array()
                    .is_some_and(|c| c.contains(&json!(bob_id)))
            }
        })
        .await;
        let queried = post_ok(
            a,
            &alice,
            "/_matrix/client/v3/keys/query",
            json!({"device_keys": {bob.user_id.clone(): []}}),
        )
        .await;
        assert_eq!(
            queried["device_keys"][bob.user_id.as_str()][bob.device_id.as_str()]["keys"],
            device_keys["keys"],
            "{kind:?}: {queried}"
        );
        // A key this server holds unverified is no account: asking for its devices asks
        // nobody (case 35), and the answer says nothing of it.
        let stranger = {
            use base64::Engine as _;
            let key = KeyPair::from_seed(&[11; 32]).public_key();
            base64::engine::general_purpose::URL_SAFE_NO_PAD.encode(key)
        };
        a.store()
            .record_remote_account_keys(
                "hs-b.test",
                &[(
                    stranger.as_str(),
                    myelin_store::RemoteKeyVerdict::Unverified {
                        outcome: "unknown",
                        next_attempt_ts: i64::MAX,
                    },
                )],
                1,
            )
            .await
            .unwrap();
        let stranger = format!("@{stranger}:hs-b.test");
        let queried = post_ok(
            a,
            &alice,
            "/_matrix/client/v3/keys/query",
            json!({"device_keys": {stranger.clone(): []}}),
        )
        .await;
        assert!(
            queried["device_keys"].get(&stranger).is_none()
                && queried["failures"]
                    .as_object()
                    .is_none_or(serde_json::Map::is_empty),
            "{kind:?}: {queried}"
        );
        since = sync_since(a, &alice, &since).await["next_batch"]
            .as_str()
            .unwrap()
            .to_owned();

        // Bob's presence reaches alice by name, and she may read it as a room mate's.
        let reply = b
            .put(
                &format!("/_matrix/client/v3/presence/{}/status", enc(&bob.user_id)),
                &bob.access_token,
                json!({"presence": "online", "status_msg": "on hs-b"}),
            )
            .await;
        ok(b, reply, "presence").await;
        eventually("alice to see bob's presence by name", || {
            let since_now = since.clone();
            async move {
                let synced = sync_since(a, alice_ref, &since_now).await;
                synced["presence"]["events"]
                    .as_array()
                    .is_some_and(|events| {
                        events.iter().any(|e| {
                            e["sender"] == json!(bob_id) && e["content"]["status_msg"] == "on hs-b"
                        })
                    })
            }
        })
        .await;
        let status = get_ok(
            a,
            &alice,
            &format!("/_matrix/client/v3/presence/{}/status", enc(&bob.user_id)),
        )
        .await;
        assert_eq!(status["status_msg"], "on hs-b", "{kind:?}: {status}");

        for server in servers {
            server.stop().await;
        }
    }
}

/// A trusted private chat in an account-key room (MSC4243.md Q8): invitees are co-creators by
/// key when their keys are known; another server's invitee whose key is not known yet is left
/// out of `additional_creators` (still invited), and the room is created all the same.
#[tokio::test]
async fn trusted_private_chat_makes_creators_of_invitees_with_known_keys_only() {
    for kind in test_backends() {
        let server = TestServer::start(kind).await;
        let alice = server.register("alice").await;
        let bob = server.register("bob").await;
        let bob_key = key_id(&server, &bob);
        let ghost = "@ghost:127.0.0.1:1";
        let created = post_ok(
            &server,
            &alice,
            "/_matrix/client/v3/createRoom",
            json!({"room_version": AK, "preset": "trusted_private_chat", "invite": [bob.user_id, ghost]}),
        )
        .await;
        let room = created["room_id"].as_str().unwrap();
        let store = server.store();
        let nid = store.room(room).await.unwrap().unwrap().room_nid;
        let create = store
            .current_state(nid, Some(&[("m.room.create".to_owned(), String::new())]))
            .await
            .unwrap();
        let create: Value = serde_json::from_str(&create[0].json).unwrap();
        assert_eq!(
            create["content"]["additional_creators"],
            json!([bob_key]),
            "{kind:?}: {create}"
        );
        let invite = get_ok(&server, &bob, "/_matrix/client/v3/sync?timeout=0").await;
        assert!(
            invite["rooms"]["invite"].get(room).is_some(),
            "{kind:?}: {invite}"
        );
        server.stop().await;
    }
}

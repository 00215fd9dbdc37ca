//! Rooms across real Myelin servers over TLS on loopback: users of one server reading profiles
//! and room aliases of another, and joining, talking in and leaving rooms other servers hold
//! (joins through `make_join`/`send_join`, relayed by the resident to the room's other
//! servers). On both backends.

use myelin_testkit::{
    TestServer, TestUser, enc,
    federation::{TestCa, start_federation},
    test_backends,
};
use serde_json::json;

async fn set_displayname(server: &TestServer, user: &TestUser, name: &str) {
    let (status, body) = server
        .put(
            &format!(
                "/_matrix/client/v3/profile/{}/displayname",
                enc(&user.user_id)
            ),
            &user.access_token,
            json!({ "displayname": name }),
        )
        .await;
    assert_eq!(status, 200, "{body}");
}

#[tokio::test]
async fn clients_read_profiles_of_other_servers_users_through_their_server() {
    for kind in test_backends() {
        let ca = TestCa::new();
        let servers = start_federation(
            kind,
            &ca,
            &["hs-a.test", "hs-b.test", "hs-c.test"],
            |_, _| {},
        )
        .await;
        let (a, b, c) = (&servers[0], &servers[1], &servers[2]);
        let alice = a.register("alice").await;
        let bob = b.register("bob").await;
        set_displayname(b, &bob, "Bob B").await;

        let (status, body) = a
            .get(
                &format!("/_matrix/client/v3/profile/{}", enc(&bob.user_id)),
                &alice.access_token,
            )
            .await;
        assert_eq!(status, 200, "{kind:?}: {body}");
        assert_eq!(body["displayname"], "Bob B", "{kind:?}");
        let (status, body) = a
            .get(
                &format!(
                    "/_matrix/client/v3/profile/{}/displayname",
                    enc(&bob.user_id)
                ),
                &alice.access_token,
            )
            .await;
        assert_eq!(
            (status.as_u16(), &body["displayname"]),
            (200, &json!("Bob B")),
            "{kind:?}: {body}"
        );

        // An unknown user of B: B's 404 M_NOT_FOUND, passed on.
        let (status, body) = a
            .get(
                &format!("/_matrix/client/v3/profile/{}", enc("@nobody:hs-b.test")),
                &alice.access_token,
            )
            .await;
        assert_eq!(
            (status.as_u16(), &body["errcode"]),
            (404, &json!("M_NOT_FOUND")),
            "{kind:?}: {body}"
        );

        // A server answers other servers for its own users only: C asking B about A's user
        // gets 404, B does not ask A on C's behalf.
        let carol = c.register("carol").await;
        let (status, _) = c
            .get(
                &format!("/_matrix/client/v3/profile/{}", enc(&alice.user_id)),
                &carol.access_token,
            )
            .await;
        assert_eq!(status, 200, "{kind:?}: C reads A's user from A");
        let relayed = c
            .services()
            .federation
            .send(
                &ruma::OwnedServerName::try_from("hs-b.test").unwrap(),
                ruma::api::federation::query::get_profile_information::v1::Request::new(
                    ruma::UserId::parse(&alice.user_id).unwrap(),
                ),
            )
            .await;
        assert!(
            matches!(
                &relayed,
                Err(myelin_federation::FederationError::Status { status: 404, .. })
            ),
            "{kind:?}: {relayed:?}"
        );

        for server in servers {
            server.stop().await;
        }
    }
}

#[tokio::test]
async fn clients_resolve_other_servers_aliases_and_list_their_directories() {
    for kind in test_backends() {
        let ca = TestCa::new();
        let servers = start_federation(kind, &ca, &["hs-a.test", "hs-b.test"], |_, _| {}).await;
        let (a, b) = (&servers[0], &servers[1]);
        let alice = a.register("alice").await;
        let bob = b.register("bob").await;
        let room_id = a
            .create_room(
                &alice,
                json!({ "preset": "public_chat", "room_alias_name": "lobby", "visibility": "public" }),
            )
            .await;

        let (status, body) = b
            .get(
                &format!(
                    "/_matrix/client/v3/directory/room/{}",
                    enc("#lobby:hs-a.test")
                ),
                &bob.access_token,
            )
            .await;
        assert_eq!(status, 200, "{kind:?}: {body}");
        assert_eq!(body["room_id"], room_id.as_str(), "{kind:?}");
        assert_eq!(body["servers"], json!(["hs-a.test"]), "{kind:?}");

        // A's room directory, listed for bob by B.
        let (status, body) = b
            .get(
                "/_matrix/client/v3/publicRooms?server=hs-a.test",
                &bob.access_token,
            )
            .await;
        assert_eq!(status, 200, "{kind:?}: {body}");
        assert_eq!(
            body["chunk"][0]["room_id"],
            room_id.as_str(),
            "{kind:?}: {body}"
        );
        assert_eq!(
            body["chunk"][0]["canonical_alias"], "#lobby:hs-a.test",
            "{kind:?}: {body}"
        );

        let (status, body) = b
            .get(
                &format!(
                    "/_matrix/client/v3/directory/room/{}",
                    enc("#nothing:hs-a.test")
                ),
                &bob.access_token,
            )
            .await;
        assert_eq!(
            (status.as_u16(), &body["errcode"]),
            (404, &json!("M_NOT_FOUND")),
            "{kind:?}: {body}"
        );

        for server in servers {
            server.stop().await;
        }
    }
}

/// Polls `check` until it holds (20 s at most).
async fn eventually<F, Fut>(what: &str, mut check: F)
where
    F: FnMut() -> Fut,
    Fut: std::future::Future<Output = bool>,
{
    for _ in 0..200 {
        if check().await {
            return;
        }
        tokio::time::sleep(std::time::Duration::from_millis(100)).await;
    }
    panic!("timed out waiting for {what}");
}

/// The bodies of the room's messages as `user` reads them on `server`, oldest first.
async fn bodies(server: &TestServer, user: &TestUser, room_id: &str) -> Vec<String> {
    let (status, body) = server
        .get(
            &format!(
                "/_matrix/client/v3/rooms/{}/messages?dir=b&limit=100",
                enc(room_id)
            ),
            &user.access_token,
        )
        .await;
    if status != 200 {
        return Vec::new();
    }
    let mut out: Vec<String> = body["chunk"]
        .as_array()
        .into_iter()
        .flatten()
        .filter(|e| e["type"] == "m.room.message")
        .filter_map(|e| e["content"]["body"].as_str().map(str::to_owned))
        .collect();
    out.reverse();
    out
}

/// `user_id`'s membership in the room's current state as `user` reads it on `server`.
async fn membership(
    server: &TestServer,
    user: &TestUser,
    room_id: &str,
    user_id: &str,
) -> Option<String> {
    let (status, body) = server
        .get(
            &format!(
                "/_matrix/client/v3/rooms/{}/state/m.room.member/{}",
                enc(room_id),
                enc(user_id)
            ),
            &user.access_token,
        )
        .await;
    (status == 200)
        .then(|| body["membership"].as_str().map(str::to_owned))
        .flatten()
}

async fn say(server: &TestServer, user: &TestUser, room_id: &str, text: &str) {
    let (status, body) = server
        .put(
            &format!(
                "/_matrix/client/v3/rooms/{}/send/m.room.message/{}",
                enc(room_id),
                enc(text)
            ),
            &user.access_token,
            json!({"msgtype": "m.text", "body": text}),
        )
        .await;
    assert_eq!(status, 200, "{body}");
}

#[tokio::test]
async fn users_of_three_servers_join_talk_and_leave_in_rooms_of_versions_10_to_12() {
    for kind in test_backends() {
        let ca = TestCa::new();
        let servers = start_federation(
            kind,
            &ca,
            &["hs-a.test", "hs-b.test", "hs-c.test"],
            |_, _| {},
        )
        .await;
        let (a, b, c) = (&servers[0], &servers[1], &servers[2]);
        let alice = a.register("alice").await;
        let bob = b.register("bob").await;
        let carol = c.register("carol").await;
        for version in ["10", "11", "12"] {
            let alias = format!("#lobby{version}:hs-a.test");
            let room_id = a
                .create_room(
                    &alice,
                    json!({
                        "preset": "public_chat",
                        "room_version": version,
                        "room_alias_name": format!("lobby{version}"),
                    }),
                )
                .await;
            say(a, &alice, &room_id, &format!("before bob {version}")).await;

            // Bob joins through A by alias: B now holds the room's state.
            let (status, body) = b
                .post(
                    &format!("/_matrix/client/v3/join/{}", enc(&alias)),
                    &bob.access_token,
                    json!({}),
                )
                .await;
            assert_eq!(status, 200, "{kind:?} v{version}: {body}");
            assert_eq!(body["room_id"], room_id.as_str());
            assert_eq!(
                membership(b, &bob, &room_id, &alice.user_id)
                    .await
                    .as_deref(),
                Some("join"),
                "{kind:?} v{version}: B knows alice is in the room"
            );
            let (_, joined) = b
                .get("/_matrix/client/v3/joined_rooms", &bob.access_token)
                .await;
            assert!(
                joined["joined_rooms"]
                    .as_array()
                    .unwrap()
                    .contains(&json!(room_id))
            );
            // History from before bob's join comes from A when his client reads back
            // (backfill), and is not news to a sync that started after the join.
            let (_, synced) = b.get("/_matrix/client/v3/sync", &bob.access_token).await;
            let since = synced["next_batch"].as_str().unwrap().to_owned();
            eventually("the history before the join at B", || async {
                bodies(b, &bob, &room_id)
                    .await
                    .contains(&format!("before bob {version}"))
            })
            .await;
            let (_, later) = b
                .get(
                    &format!("/_matrix/client/v3/sync?since={since}&timeout=0"),
                    &bob.access_token,
                )
                .await;
            assert!(
                !later.to_string().contains(&format!("before bob {version}")),
                "{kind:?} v{version}: backfilled history in an incremental sync: {later}"
            );
            eventually("A to see bob joined", || async {
                membership(a, &alice, &room_id, &bob.user_id)
                    .await
                    .as_deref()
                    == Some("join")
            })
            .await;

            // Messages both ways.
            say(b, &bob, &room_id, &format!("from b {version}")).await;
            eventually("bob's message at A", || async {
                bodies(a, &alice, &room_id)
                    .await
                    .contains(&format!("from b {version}"))
            })
            .await;
            say(a, &alice, &room_id, &format!("from a {version}")).await;
            eventually("alice's message at B", || async {
                bodies(b, &bob, &room_id)
                    .await
                    .contains(&format!("from a {version}"))
            })
            .await;

            // Carol joins through B (the room id, with B as the server to ask): A hears of it
            // from B, and A's messages then reach C.
            let (status, body) = c
                .post(
                    &format!("/_matrix/client/v3/join/{}?via=hs-b.test", enc(&room_id)),
                    &carol.access_token,
                    json!({}),
                )
                .await;
            assert_eq!(status, 200, "{kind:?} v{version}: {body}");
            eventually("A to see carol joined", || async {
                membership(a, &alice, &room_id, &carol.user_id)
                    .await
                    .as_deref()
                    == Some("join")
            })
            .await;
            say(a, &alice, &room_id, &format!("to all {version}")).await;
            eventually("alice's message at C", || async {
                bodies(c, &carol, &room_id)
                    .await
                    .contains(&format!("to all {version}"))
            })
            .await;

            // Alice kicks carol; bob leaves: every server sees it.
            let (status, body) = a
                .post(
                    &format!("/_matrix/client/v3/rooms/{}/kick", enc(&room_id)),
                    &alice.access_token,
                    json!({"user_id": carol.user_id}),
                )
                .await;
            assert_eq!(status, 200, "{body}");
            eventually("B to see carol kicked", || async {
                membership(b, &bob, &room_id, &carol.user_id)
                    .await
                    .as_deref()
                    == Some("leave")
            })
            .await;
            let (status, body) = b
                .post(
                    &format!("/_matrix/client/v3/rooms/{}/leave", enc(&room_id)),
                    &bob.access_token,
                    json!({}),
                )
                .await;
            assert_eq!(status, 200, "{body}");
            eventually("A to see bob leave", || async {
                membership(a, &alice, &room_id, &bob.user_id)
                    .await
                    .as_deref()
                    == Some("leave")
            })
            .await;
        }
        for server in servers {
            server.stop().await;
        }
    }
}

#[tokio::test]
async fn a_knock_through_another_server_is_accepted_by_an_invite_and_rescinded_by_a_leave() {
    for kind in test_backends() {
        let ca = TestCa::new();
        let servers = start_federation(kind, &ca, &["hs-a.test", "hs-c.test"], |_, _| {}).await;
        let (a, c) = (&servers[0], &servers[1]);
        let alice = a.register("alice").await;
        let carol = c.register("carol").await;
        let dave = c.register("dave").await;
        let room_id = a
            .create_room(
                &alice,
                json!({"preset": "private_chat", "initial_state": [
                    {"type": "m.room.join_rules", "state_key": "", "content": {"join_rule": "knock"}}
                ]}),
            )
            .await;

        // Carol knocks through A: C shows the knock with the room's stripped state.
        let (status, body) = c
            .post(
                &format!("/_matrix/client/v3/knock/{}?via=hs-a.test", enc(&room_id)),
                &carol.access_token,
                json!({"reason": "let me in"}),
            )
            .await;
        assert_eq!(status, 200, "{kind:?}: {body}");
        let (_, synced) = c.get("/_matrix/client/v3/sync", &carol.access_token).await;
        let knock_state = &synced["rooms"]["knock"][room_id.as_str()]["knock_state"]["events"];
        let types: Vec<&str> = knock_state
            .as_array()
            .unwrap_or_else(|| panic!("{kind:?}: no knock in {synced}"))
            .iter()
            .filter_map(|e| e["type"].as_str())
            .collect();
        assert!(types.contains(&"m.room.create"), "{kind:?}: {types:?}");
        assert!(types.contains(&"m.room.join_rules"), "{kind:?}: {types:?}");
        assert_eq!(
            membership(a, &alice, &room_id, &carol.user_id)
                .await
                .as_deref(),
            Some("knock"),
            "{kind:?}: A holds carol's knock"
        );

        // Alice accepts it with an invite; carol then joins through A.
        let (status, body) = a
            .post(
                &format!("/_matrix/client/v3/rooms/{}/invite", enc(&room_id)),
                &alice.access_token,
                json!({"user_id": carol.user_id}),
            )
            .await;
        assert_eq!(status, 200, "{kind:?}: {body}");
        let (status, body) = c
            .post(
                &format!("/_matrix/client/v3/join/{}?via=hs-a.test", enc(&room_id)),
                &carol.access_token,
                json!({}),
            )
            .await;
        assert_eq!(status, 200, "{kind:?}: {body}");
        eventually("A to see carol joined", || async {
            membership(a, &alice, &room_id, &carol.user_id)
                .await
                .as_deref()
                == Some("join")
        })
        .await;

        // Dave knocks and thinks better of it: his leave reaches A through make_leave.
        let (status, body) = c
            .post(
                &format!("/_matrix/client/v3/knock/{}?via=hs-a.test", enc(&room_id)),
                &dave.access_token,
                json!({}),
            )
            .await;
        // C is in the room now (carol joined): the knock is a local send, fanned out to A.
        assert_eq!(status, 200, "{kind:?}: {body}");
        eventually("A to see dave knock", || async {
            membership(a, &alice, &room_id, &dave.user_id)
                .await
                .as_deref()
                == Some("knock")
        })
        .await;

        // A room C is not in: knocking there and rescinding goes through A both ways.
        let second = a
            .create_room(
                &alice,
                json!({"preset": "private_chat", "initial_state": [
                    {"type": "m.room.join_rules", "state_key": "", "content": {"join_rule": "knock"}}
                ]}),
            )
            .await;
        let (status, body) = c
            .post(
                &format!("/_matrix/client/v3/knock/{}?via=hs-a.test", enc(&second)),
                &dave.access_token,
                json!({}),
            )
            .await;
        assert_eq!(status, 200, "{kind:?}: {body}");
        let (status, body) = c
            .post(
                &format!("/_matrix/client/v3/rooms/{}/leave", enc(&second)),
                &dave.access_token,
                json!({}),
            )
            .await;
        assert_eq!(status, 200, "{kind:?}: {body}");
        assert_eq!(
            membership(a, &alice, &second, &dave.user_id)
                .await
                .as_deref(),
            Some("leave"),
            "{kind:?}: A took dave's rescinding leave"
        );

        for server in servers {
            server.stop().await;
        }
    }
}

/// A real `send_join` answer of A for bob of B: the template from A's `make_join` (asked as B),
/// the join built and signed with B's key, A's answer as raw JSON values. The keys of A as B
/// holds them.
async fn real_join_answer(
    a: &TestServer,
    b: &TestServer,
    bob: &TestUser,
    room_id: &str,
) -> (
    Vec<u8>,
    Vec<serde_json::Value>,
    Vec<serde_json::Value>,
    myelin_room_version::verify::ServerKeys,
) {
    use myelin_room_version::{CanonicalJsonValue, RoomVersion, canonical, pdu::build_pdu};
    use ruma::api::federation::membership::{create_join_event, prepare_join_event};
    let a_name = ruma::OwnedServerName::try_from(a.name()).unwrap();
    let room = ruma::OwnedRoomId::try_from(room_id).unwrap();
    let user = ruma::OwnedUserId::try_from(bob.user_id.as_str()).unwrap();
    let mut request = prepare_join_event::v1::Request::new(room.clone(), user);
    request.ver = vec![ruma::RoomVersionId::V10];
    let template = b
        .services()
        .federation
        .send(&a_name, request)
        .await
        .unwrap();
    let mut partial = canonical::parse_object(template.event.get().as_bytes()).unwrap();
    partial.insert(
        "origin_server_ts".to_owned(),
        CanonicalJsonValue::Integer(myelin_service::now_millis().try_into().unwrap()),
    );
    let version = RoomVersion::get("10").unwrap();
    let join = build_pdu(partial, version, b.services().server_keys.event_signer()).unwrap();
    let json = join.canonical_json();
    let answer = b
        .services()
        .federation
        .send(
            &a_name,
            create_join_event::v2::Request::new(
                room,
                ruma::OwnedEventId::try_from(join.event_id()).unwrap(),
                serde_json::value::RawValue::from_string(json.clone()).unwrap(),
            ),
        )
        .await
        .unwrap()
        .room_state;
    let values = |events: &[Box<serde_json::value::RawValue>]| -> Vec<serde_json::Value> {
        events
            .iter()
            .map(|e| serde_json::from_str(e.get()).unwrap())
            .collect()
    };
    let mut keys = myelin_room_version::verify::ServerKeys::new();
    let a_keys = b
        .services()
        .remote_keys
        .keys_for(&a_name, &[], myelin_service::now_millis())
        .await
        .unwrap();
    keys.insert(a.name().to_owned(), a_keys);
    let own = b
        .services()
        .remote_keys
        .keys_for(&ruma::OwnedServerName::try_from(b.name()).unwrap(), &[], 0)
        .await
        .unwrap();
    keys.insert(b.name().to_owned(), own);
    (
        json.into_bytes(),
        values(&answer.state),
        values(&answer.auth_chain),
        keys,
    )
}

/// Places `state` and `auth_chain` (as given) for the join at B.
async fn place(
    b: &TestServer,
    room_id: &str,
    join: &[u8],
    state: &[serde_json::Value],
    auth_chain: &[serde_json::Value],
    keys: &myelin_room_version::verify::ServerKeys,
) -> Result<(), myelin_service::Error> {
    let state: Vec<Vec<u8>> = state.iter().map(|e| e.to_string().into_bytes()).collect();
    let auth: Vec<Vec<u8>> = auth_chain
        .iter()
        .map(|e| e.to_string().into_bytes())
        .collect();
    let state_refs: Vec<&[u8]> = state.iter().map(Vec::as_slice).collect();
    let auth_refs: Vec<&[u8]> = auth.iter().map(Vec::as_slice).collect();
    b.services()
        .rooms
        .place_remote_join(
            room_id,
            myelin_room_version::RoomVersion::get("10").unwrap(),
            myelin_service::rooms::ResidentJoinAnswer {
                join,
                state: &state_refs,
                auth_chain: &auth_refs,
            },
            keys,
        )
        .await
        .map(|_timings| ())
}

#[tokio::test]
async fn a_forged_or_incomplete_send_join_answer_is_refused_and_leaves_nothing_to_see() {
    for kind in test_backends() {
        let ca = TestCa::new();
        let servers = start_federation(kind, &ca, &["hs-a.test", "hs-b.test"], |_, _| {}).await;
        let (a, b) = (&servers[0], &servers[1]);
        let alice = a.register("alice").await;
        let bob = b.register("bob").await;
        let room_id = a
            .create_room(
                &alice,
                json!({"preset": "public_chat", "room_version": "10"}),
            )
            .await;
        // The power levels change once: the first version is in the auth chain, not the state.
        let (status, body) = a
            .put(
                &format!(
                    "/_matrix/client/v3/rooms/{}/state/m.room.power_levels/",
                    enc(&room_id)
                ),
                &alice.access_token,
                json!({"users": {alice.user_id.clone(): 100}, "state_default": 60}),
            )
            .await;
        assert_eq!(status, 200, "{body}");
        let other_room = a.create_room(&alice, json!({"room_version": "10"})).await;
        let (_, foreign_state) = a
            .get(
                &format!("/_matrix/client/v3/rooms/{}/state", enc(&other_room)),
                &alice.access_token,
            )
            .await;
        let foreign_id = foreign_state
            .as_array()
            .unwrap()
            .iter()
            .find(|e| e["type"] == "m.room.name" || e["type"] == "m.room.join_rules")
            .map(|e| e["event_id"].as_str().unwrap().to_owned())
            .unwrap();

        let (join, state, auth_chain, keys) = real_join_answer(a, b, &bob, &room_id).await;
        let of_type = |events: &[serde_json::Value], kind: &str| {
            events.iter().position(|e| e["type"] == kind).unwrap()
        };
        let shows_nothing = || async {
            let (_, joined) = b
                .get("/_matrix/client/v3/joined_rooms", &bob.access_token)
                .await;
            let room = b.store().room(&room_id).await.unwrap();
            let current = match room {
                Some(room) => b.store().current_state_group(room.room_nid).await.unwrap(),
                None => None,
            };
            joined["joined_rooms"] == json!([]) && current.is_none()
        };

        // First (before any of it is stored here): an auth chain without the first power
        // levels, which the state's older events cite.
        // (PDUs of v10 carry no id: the current power levels are the ones setting 60.)
        let broken: Vec<serde_json::Value> = auth_chain
            .iter()
            .filter(|e| {
                e["type"] != "m.room.power_levels" || e["content"]["state_default"] == json!(60)
            })
            .cloned()
            .collect();
        assert!(
            broken.len() < auth_chain.len(),
            "{kind:?}: the old power levels are in the chain"
        );
        let refused = place(b, &room_id, &join, &state, &broken, &keys).await;
        assert!(refused.is_err(), "{kind:?}: a broken auth chain was taken");
        assert!(shows_nothing().await, "{kind:?}");

        // A state event whose content was changed after it was signed.
        let mut forged = state.clone();
        forged[of_type(&state, "m.room.join_rules")]["content"]["join_rule"] = json!("public ");
        let refused = place(b, &room_id, &join, &forged, &auth_chain, &keys).await;
        assert!(
            matches!(refused, Err(myelin_service::Error::BadGateway(_))),
            "{kind:?}: {refused:?}"
        );
        assert!(
            shows_nothing().await,
            "{kind:?}: a forged state left the room visible"
        );

        // A state that is not the room's: without its create event, or with another room's
        // event.
        let mut no_create = state.clone();
        no_create.remove(of_type(&state, "m.room.create"));
        let refused = place(b, &room_id, &join, &no_create, &auth_chain, &keys).await;
        assert!(
            refused.is_err(),
            "{kind:?}: a state without a create event was taken"
        );
        let foreign: serde_json::Value =
            serde_json::from_str(&a.store().event(&foreign_id).await.unwrap().unwrap().json)
                .unwrap();
        let mut mixed = state.clone();
        mixed.push(foreign);
        let refused = place(b, &room_id, &join, &mixed, &auth_chain, &keys).await;
        assert!(
            refused.is_err(),
            "{kind:?}: a state with another room's event was taken"
        );
        assert!(shows_nothing().await, "{kind:?}");

        // The honest answer is taken: the refusals above were the tampering's.
        place(b, &room_id, &join, &state, &auth_chain, &keys)
            .await
            .unwrap_or_else(|err| panic!("{kind:?}: the honest answer was refused: {err}"));
        let (_, joined) = b
            .get("/_matrix/client/v3/joined_rooms", &bob.access_token)
            .await;
        assert_eq!(joined["joined_rooms"], json!([room_id]), "{kind:?}");

        for server in servers {
            server.stop().await;
        }
    }
}

/// A user banned and unbanned by the resident joins again through it: the join is judged by
/// the state the resident answered, not by the state this server kept from when it was last in
/// the room (where the user is still banned, the unban never having reached it).
#[tokio::test]
async fn a_user_unbanned_on_another_server_joins_the_room_again() {
    for kind in test_backends() {
        let ca = TestCa::new();
        let servers = start_federation(kind, &ca, &["hs-a.test", "hs-b.test"], |_, _| {}).await;
        let (a, b) = (&servers[0], &servers[1]);
        let alice = a.register("alice").await;
        let bob = b.register("bob").await;
        let room_id = a
            .create_room(
                &alice,
                json!({"preset": "public_chat", "room_version": "10"}),
            )
            .await;
        let join_path = format!("/_matrix/client/v3/join/{}?via=hs-a.test", enc(&room_id));
        let (status, body) = b.post(&join_path, &bob.access_token, json!({})).await;
        assert_eq!(status, 200, "{kind:?}: {body}");
        eventually("A to see bob joined", || async {
            membership(a, &alice, &room_id, &bob.user_id)
                .await
                .as_deref()
                == Some("join")
        })
        .await;

        for action in ["ban", "unban"] {
            let (status, body) = a
                .post(
                    &format!("/_matrix/client/v3/rooms/{}/{action}", enc(&room_id)),
                    &alice.access_token,
                    json!({"user_id": bob.user_id}),
                )
                .await;
            assert_eq!(status, 200, "{kind:?} {action}: {body}");
            if action == "ban" {
                eventually("B to see bob banned", || async {
                    membership(b, &bob, &room_id, &bob.user_id).await.as_deref() == Some("ban")
                })
                .await;
            }
        }

        let (status, body) = b.post(&join_path, &bob.access_token, json!({})).await;
        assert_eq!(status, 200, "{kind:?}: the join after the unban: {body}");
        assert_eq!(
            membership(b, &bob, &room_id, &bob.user_id).await.as_deref(),
            Some("join"),
            "{kind:?}: B's current state"
        );
        eventually("A to see bob joined again", || async {
            membership(a, &alice, &room_id, &bob.user_id)
                .await
                .as_deref()
                == Some("join")
        })
        .await;
        say(b, &bob, &room_id, "back again").await;
        eventually("bob's message at A", || async {
            bodies(a, &alice, &room_id)
                .await
                .contains(&"back again".to_owned())
        })
        .await;
        for server in servers {
            server.stop().await;
        }
    }
}

/// The event ids of the room's timeline as `user` reads it on `server` (`/messages` backwards
/// to the start, backfilling on the way), oldest first.
async fn timeline_ids(server: &TestServer, user: &TestUser, room_id: &str) -> Vec<String> {
    let mut ids = Vec::new();
    let mut from: Option<String> = None;
    for _ in 0..10 {
        let mut path = format!(
            "/_matrix/client/v3/rooms/{}/messages?dir=b&limit=100",
            enc(room_id)
        );
        if let Some(from) = &from {
            path.push_str(&format!("&from={}", enc(from)));
        }
        let (status, body) = server.get(&path, &user.access_token).await;
        assert_eq!(status, 200, "{body}");
        let chunk = body["chunk"].as_array().cloned().unwrap_or_default();
        ids.extend(
            chunk
                .iter()
                .filter_map(|e| e["event_id"].as_str().map(str::to_owned)),
        );
        match body["end"].as_str() {
            Some(end) if !chunk.is_empty() => from = Some(end.to_owned()),
            _ => break,
        }
    }
    ids.reverse();
    ids
}

/// A server that joined late reads the room's history back to its create event, the same
/// events in the same order as the room's first server.
#[tokio::test]
async fn history_backfilled_after_a_late_join_reaches_the_create_event() {
    for kind in test_backends() {
        let ca = TestCa::new();
        let servers = start_federation(kind, &ca, &["hs-a.test", "hs-b.test"], |_, _| {}).await;
        let (a, b) = (&servers[0], &servers[1]);
        let alice = a.register("alice").await;
        let bob = b.register("bob").await;
        for version in ["10", "12"] {
            let room_id = a
                .create_room(
                    &alice,
                    json!({"preset": "public_chat", "room_version": version}),
                )
                .await;
            for i in 0..3 {
                say(a, &alice, &room_id, &format!("early {version} {i}")).await;
            }
            let (status, body) = b
                .post(
                    &format!("/_matrix/client/v3/join/{}?via=hs-a.test", enc(&room_id)),
                    &bob.access_token,
                    json!({}),
                )
                .await;
            assert_eq!(status, 200, "{kind:?} v{version}: {body}");
            eventually("A to see bob joined", || async {
                membership(a, &alice, &room_id, &bob.user_id)
                    .await
                    .as_deref()
                    == Some("join")
            })
            .await;
            let at_a = timeline_ids(a, &alice, &room_id).await;
            let at_b = timeline_ids(b, &bob, &room_id).await;
            assert_eq!(at_b, at_a, "{kind:?} v{version}");
        }
        for server in servers {
            server.stop().await;
        }
    }
}

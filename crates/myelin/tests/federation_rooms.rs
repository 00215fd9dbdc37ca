//! Rooms across real Myelin servers over TLS on loopback: users of one server reading profiles
//! and room aliases of another, and joining, talking in and leaving rooms other servers hold
//! (joins through `make_join`/`send_join`, relayed by the resident to the room's other
//! servers). On both backends.

use myelin_testkit::{
    TestServer, TestUser, enc,
    federation::{TestCa, start_federation},
    rooms::{bodies, eventually, join_via, membership, say},
    test_backends,
};
use serde_json::{Value, json};

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

        // The user directory finds other servers' members of shared rooms by the name their
        // member event carries; users sharing no room stay out of it.
        let room_id = a
            .create_room(
                &alice,
                json!({"preset": "public_chat", "room_version": "11"}),
            )
            .await;
        join_via(b, &bob, &room_id, "hs-a.test").await;
        eventually("A to see bob joined", || async {
            membership(a, &alice, &room_id, &bob.user_id)
                .await
                .as_deref()
                == Some("join")
        })
        .await;
        set_displayname(c, &carol, "Carol C").await;
        for (term, expected) in [
            ("bob b", vec![(bob.user_id.as_str(), "Bob B")]),
            ("hs-b.test", vec![(bob.user_id.as_str(), "Bob B")]),
            ("carol", vec![]),
        ] {
            let (status, body) = a
                .post(
                    "/_matrix/client/v3/user_directory/search",
                    &alice.access_token,
                    json!({"search_term": term}),
                )
                .await;
            assert_eq!(status, 200, "{kind:?}: {body}");
            let found: Vec<(&str, &str)> = body["results"]
                .as_array()
                .unwrap()
                .iter()
                .map(|r| {
                    (
                        r["user_id"].as_str().unwrap(),
                        r["display_name"].as_str().unwrap_or_default(),
                    )
                })
                .collect();
            assert_eq!(found, expected, "{kind:?} {term}: {body}");
        }

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

/// `send_join` answers tampered with in each way are refused and leave nothing a client sees;
/// one unsigned event the join does not rest on is left out of the state and the join taken.
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

        // An event the join rests on that nobody signed is left out, and the join with it.
        let mut unsigned = state.clone();
        unsigned[of_type(&state, "m.room.join_rules")]["signatures"] = json!({});
        let refused = place(b, &room_id, &join, &unsigned, &auth_chain, &keys).await;
        assert!(
            refused.is_err(),
            "{kind:?}: a join resting on an unsigned event was taken"
        );
        assert!(shows_nothing().await, "{kind:?}");

        // The honest answer is taken, even with one unsigned event the join does not rest on
        // (left out of the state, as Synapse does): the refusals above were the tampering's.
        let mut one_unsigned = state.clone();
        one_unsigned[of_type(&state, "m.room.history_visibility")]["signatures"] = json!({});
        place(b, &room_id, &join, &one_unsigned, &auth_chain, &keys)
            .await
            .unwrap_or_else(|err| panic!("{kind:?}: the honest answer was refused: {err}"));
        let (_, joined) = b
            .get("/_matrix/client/v3/joined_rooms", &bob.access_token)
            .await;
        assert_eq!(joined["joined_rooms"], json!([room_id]), "{kind:?}");
        let at_b = state_ids(b, &bob, &room_id).await;
        assert!(
            !at_b.contains_key(&("m.room.history_visibility".to_owned(), String::new())),
            "{kind:?}: {at_b:?}"
        );
        assert!(
            at_b.contains_key(&("m.room.join_rules".to_owned(), String::new())),
            "{kind:?}: {at_b:?}"
        );

        for server in servers {
            server.stop().await;
        }
    }
}

/// A user banned and unbanned by the resident joins again through it: the join is judged by
/// the state the resident answered, not by the state this server kept from when it was last in
/// the room (where the user is still banned, the unban never having reached it). Room version 1
/// too, whose state resolution would let the kept ban win over the answered state: a rejoin
/// starts the room's state here afresh from the join.
#[tokio::test]
async fn a_user_unbanned_on_another_server_joins_the_room_again() {
    for (kind, version) in test_backends()
        .into_iter()
        .flat_map(|kind| ["1", "10"].map(|version| (kind, version)))
    {
        let ca = TestCa::new();
        let servers = start_federation(kind, &ca, &["hs-a.test", "hs-b.test"], |_, _| {}).await;
        let (a, b) = (&servers[0], &servers[1]);
        let alice = a.register("alice").await;
        let bob = b.register("bob").await;
        let room_id = a
            .create_room(
                &alice,
                json!({"preset": "public_chat", "room_version": version}),
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
        assert_eq!(
            status, 200,
            "{kind:?} v{version}: the join after the unban: {body}"
        );
        assert_eq!(
            membership(b, &bob, &room_id, &bob.user_id).await.as_deref(),
            Some("join"),
            "{kind:?} v{version}: B's current state"
        );
        // The join is B's only forward extremity: the ban B kept is no fork of the room.
        let room_nid = b.store().room(&room_id).await.unwrap().unwrap().room_nid;
        assert_eq!(
            b.store().forward_extremities(room_nid).await.unwrap().len(),
            1,
            "{kind:?} v{version}: B's forward extremities"
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
        // B's joins went to the room through A's send_join, and A sent them on: B's sender
        // has bob's message to send, his joins are not its to send.
        let store = b.store();
        let head = store.events_stream_position().await.unwrap();
        let ours: Vec<(String, String)> = store
            .local_events_between(b.name(), 0, head, 100)
            .await
            .unwrap()
            .into_iter()
            .filter(|e| e.event.sender == bob.user_id)
            .map(|e| (e.event.event_type, e.event.json))
            .collect();
        assert!(
            ours.iter().all(|(kind, _)| kind != "m.room.member"),
            "{kind:?}: {ours:?}"
        );
        assert!(
            ours.iter().any(|(_, json)| json.contains("back again")),
            "{kind:?}: {ours:?}"
        );
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

/// The room's current state as `user` reads it on `server`: (type, state key) → event id.
async fn state_ids(
    server: &TestServer,
    user: &TestUser,
    room_id: &str,
) -> std::collections::BTreeMap<(String, String), String> {
    let (status, body) = server
        .get(
            &format!("/_matrix/client/v3/rooms/{}/state", enc(room_id)),
            &user.access_token,
        )
        .await;
    if status != 200 {
        return Default::default();
    }
    body.as_array()
        .into_iter()
        .flatten()
        .map(|e| {
            (
                (
                    e["type"].as_str().unwrap_or_default().to_owned(),
                    e["state_key"].as_str().unwrap_or_default().to_owned(),
                ),
                e["event_id"].as_str().unwrap_or_default().to_owned(),
            )
        })
        .collect()
}

/// Waits until `readers` (server and a member there) all read the same current state of the
/// room, and returns it.
async fn converged_state(
    what: &str,
    readers: &[(&TestServer, &TestUser)],
    room_id: &str,
) -> std::collections::BTreeMap<(String, String), String> {
    let mut last = Vec::new();
    for _ in 0..300 {
        last.clear();
        for (server, user) in readers {
            last.push(state_ids(server, user, room_id).await);
        }
        if !last[0].is_empty() && last.iter().all(|state| *state == last[0]) {
            return last.swap_remove(0);
        }
        tokio::time::sleep(std::time::Duration::from_millis(100)).await;
    }
    let differences: Vec<String> = last[0]
        .iter()
        .flat_map(|(key, id)| {
            last.iter()
                .enumerate()
                .filter(move |(_, other)| other.get(key) != Some(id))
                .map(move |(i, other)| format!("{key:?}: {id} vs reader {i}: {:?}", other.get(key)))
        })
        .collect();
    panic!("timed out waiting for {what} to converge; differences: {differences:#?}");
}

/// The membership of `member` in the state `state`.
fn member_event<'a>(
    state: &'a std::collections::BTreeMap<(String, String), String>,
    member: &TestUser,
) -> Option<&'a String> {
    state.get(&("m.room.member".to_owned(), member.user_id.clone()))
}

/// Membership changes made at the same moment on different servers (a ban and the banned
/// user's own change of profile, two topics, a leave and a join on each side) fork the room;
/// once the servers have heard of each other's events, all three hold the same current state,
/// the one state resolution picks.
#[tokio::test]
async fn concurrent_membership_changes_on_two_servers_converge_on_all_three() {
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
        let a2 = a.register("alice2").await;
        let bob = b.register("bob").await;
        let b2 = b.register("bob2").await;
        let carol = c.register("carol").await;
        let c2 = c.register("carol2").await;
        for version in ["10", "12"] {
            let room_id = a
                .create_room(
                    &alice,
                    json!({
                        "preset": "public_chat",
                        "room_version": version,
                        // Room version 12 gives the creator power without an entry.
                        "power_level_content_override": {"users": if version == "12" {
                            json!({ bob.user_id.clone(): 100 })
                        } else {
                            json!({ alice.user_id.clone(): 100, bob.user_id.clone(): 100 })
                        }},
                    }),
                )
                .await;
            for (server, user, via) in [
                (b, &bob, "hs-a.test"),
                (b, &b2, "hs-a.test"),
                (c, &carol, "hs-b.test"),
                (c, &c2, "hs-a.test"),
            ] {
                join_via(server, user, &room_id, via).await;
            }
            // A join made where the room already was reaches only the servers in the room
            // then; a later event that follows it (once A has it) brings it to the others.
            for user in [&bob, &b2, &carol, &c2] {
                eventually("A to see the joins", || async {
                    membership(a, &alice, &room_id, &user.user_id)
                        .await
                        .as_deref()
                        == Some("join")
                })
                .await;
            }
            say(a, &alice, &room_id, &format!("all in {version}")).await;
            let everyone = [(a, &alice), (b, &bob), (c, &carol)];
            let before = converged_state("the room after the joins", &everyone, &room_id).await;
            assert_eq!(before.len(), 9, "{kind:?} v{version}: {before:?}");

            // All at once: A bans carol2 and sets the topic, while carol2 changes her name
            // in the room at C, B sets another topic and bob2 leaves, and alice2 joins at A.
            let topic = |server: &'static str| json!({"topic": format!("topic from {server}")});
            let room = enc(&room_id);
            let ban_path = format!("/_matrix/client/v3/rooms/{room}/ban");
            let topic_path = format!("/_matrix/client/v3/rooms/{room}/state/m.room.topic/");
            let rename_path = format!(
                "/_matrix/client/v3/rooms/{room}/state/m.room.member/{}",
                enc(&c2.user_id)
            );
            let leave_path = format!("/_matrix/client/v3/rooms/{room}/leave");
            let (banned, topic_a, renamed, topic_b, left, ()) = tokio::join!(
                a.post(
                    &ban_path,
                    &alice.access_token,
                    json!({"user_id": c2.user_id})
                ),
                a.put(&topic_path, &alice.access_token, topic("a")),
                c.put(
                    &rename_path,
                    &c2.access_token,
                    json!({"membership": "join", "displayname": "renamed at C"}),
                ),
                b.put(&topic_path, &bob.access_token, topic("b")),
                b.post(&leave_path, &b2.access_token, json!({})),
                join_via(a, &a2, &room_id, "hs-a.test"),
            );
            for (what, (status, body)) in [
                ("ban", banned),
                ("topic at A", topic_a),
                ("topic at B", topic_b),
                ("leave", left),
            ] {
                assert_eq!(status, 200, "{kind:?} v{version} {what}: {body}");
            }
            // The rename races the ban: C may already have heard of it and refuse.
            assert!(
                renamed.0 == 200 || renamed.0 == 403,
                "{kind:?} v{version} rename: {renamed:?}"
            );
            // Each server speaks once more, so every fork has a descendant everywhere.
            say(a, &alice, &room_id, &format!("after {version} a")).await;
            say(b, &bob, &room_id, &format!("after {version} b")).await;
            say(c, &carol, &room_id, &format!("after {version} c")).await;

            let after = converged_state("the room after the races", &everyone, &room_id).await;
            let membership_of = |user: &TestUser| {
                let id = member_event(&after, user).expect("a member event");
                id.clone()
            };
            // Whatever the order, the ban outranks carol2's own change, and the other changes
            // did not conflict.
            for (user, expected) in [
                (&c2, "ban"),
                (&b2, "leave"),
                (&a2, "join"),
                (&carol, "join"),
            ] {
                assert_eq!(
                    membership(a, &alice, &room_id, &user.user_id)
                        .await
                        .as_deref(),
                    Some(expected),
                    "{kind:?} v{version} {} ({})",
                    user.user_id,
                    membership_of(user)
                );
            }
            let (_, topic_now) = c
                .get(
                    &format!("/_matrix/client/v3/rooms/{room}/state/m.room.topic/"),
                    &carol.access_token,
                )
                .await;
            assert!(
                ["topic from a", "topic from b"].contains(&topic_now["topic"].as_str().unwrap()),
                "{topic_now}"
            );
        }
        for server in servers {
            server.stop().await;
        }
    }
}

/// A server that was down while members joined, left and were kicked, and while the room
/// moved on by more events than the senders keep for it, holds the room's state again once it
/// is back (the other servers' retries, then `/get_missing_events` and the state at the gap).
#[tokio::test]
async fn a_server_that_was_down_catches_up_with_the_room() {
    for kind in test_backends() {
        let ca = TestCa::new();
        let mut servers = start_federation(
            kind,
            &ca,
            &["hs-a.test", "hs-b.test", "hs-c.test"],
            |_, config| {
                // Retries come quickly, so the test need not wait long for C to be noticed.
                config.federation.backoff_min_secs = 1;
                config.federation.backoff_max_secs = 2;
            },
        )
        .await;
        let alice = servers[0].register("alice").await;
        let a2 = servers[0].register("alice2").await;
        let bob = servers[1].register("bob").await;
        let b2 = servers[1].register("bob2").await;
        let carol = servers[2].register("carol").await;
        let room_id = servers[0]
            .create_room(
                &alice,
                json!({"preset": "public_chat", "room_version": "12"}),
            )
            .await;
        join_via(&servers[1], &bob, &room_id, "hs-a.test").await;
        join_via(&servers[1], &b2, &room_id, "hs-a.test").await;
        join_via(&servers[2], &carol, &room_id, "hs-a.test").await;
        // Bob2's join (made at B, already in the room) reaches C through an event of A's
        // that follows it.
        for user in [&bob, &b2, &carol] {
            eventually("A to see the joins", || async {
                membership(&servers[0], &alice, &room_id, &user.user_id)
                    .await
                    .as_deref()
                    == Some("join")
            })
            .await;
        }
        say(&servers[0], &alice, &room_id, "all in").await;
        {
            let (a, b, c) = (&servers[0], &servers[1], &servers[2]);
            converged_state(
                "the room before C stops",
                &[(a, &alice), (b, &bob), (c, &carol)],
                &room_id,
            )
            .await;
        }

        servers[2].signal_stop();
        servers[2].wait_stopped().await;
        {
            let (a, b) = (&servers[0], &servers[1]);
            join_via(a, &a2, &room_id, "hs-a.test").await;
            let (status, body) = a
                .post(
                    &format!("/_matrix/client/v3/rooms/{}/kick", enc(&room_id)),
                    &alice.access_token,
                    json!({"user_id": b2.user_id}),
                )
                .await;
            assert_eq!(status, 200, "{kind:?} kick: {body}");
            let (status, body) = b
                .put(
                    &format!(
                        "/_matrix/client/v3/rooms/{}/state/m.room.name/",
                        enc(&room_id)
                    ),
                    &bob.access_token,
                    json!({"name": "named while C was away"}),
                )
                .await;
            // Bob has no power to name the room: the refusal is part of the story (nothing
            // of it reaches anyone).
            assert_eq!(status, 403, "{kind:?} name: {body}");
            let (status, body) = a
                .put(
                    &format!(
                        "/_matrix/client/v3/rooms/{}/state/m.room.name/",
                        enc(&room_id)
                    ),
                    &alice.access_token,
                    json!({"name": "named while C was away"}),
                )
                .await;
            assert_eq!(status, 200, "{kind:?} name: {body}");
            let (status, body) = b
                .post(
                    &format!("/_matrix/client/v3/rooms/{}/leave", enc(&room_id)),
                    &bob.access_token,
                    json!({}),
                )
                .await;
            assert_eq!(status, 200, "{kind:?} leave: {body}");
            // More events than a sender keeps for a destination that was away.
            for i in 0..60 {
                say(a, &alice, &room_id, &format!("while C was away {i}")).await;
            }
        }

        servers[2].restart().await;
        let (a, c) = (&servers[0], &servers[2]);
        let state = converged_state("C catching up", &[(a, &alice), (c, &carol)], &room_id).await;
        for (user, expected) in [(&a2, "join"), (&b2, "leave"), (&bob, "leave")] {
            assert_eq!(
                membership(c, &carol, &room_id, &user.user_id)
                    .await
                    .as_deref(),
                Some(expected),
                "{kind:?}: {} at C ({:?})",
                user.user_id,
                member_event(&state, user)
            );
        }
        assert!(
            state.contains_key(&("m.room.name".to_owned(), String::new())),
            "{kind:?}: {state:?}"
        );
        // Carol, back, is heard everywhere.
        say(c, &carol, &room_id, "carol is back").await;
        eventually("carol's message at A", || async {
            bodies(a, &alice, &room_id)
                .await
                .contains(&"carol is back".to_owned())
        })
        .await;
        for server in servers {
            server.stop().await;
        }
    }
}

/// A room upgraded on one server: the other server's member sees the tombstone, and follows
/// it into the new room (a version 12 room, whose id names no server) by the alias that moved
/// with it or by its id with the upgrading server to ask; the new room then works both ways.
#[tokio::test]
async fn a_room_upgraded_on_one_server_is_followed_from_another() {
    for kind in test_backends() {
        let ca = TestCa::new();
        let servers = start_federation(kind, &ca, &["hs-a.test", "hs-b.test"], |_, _| {}).await;
        let (a, b) = (&servers[0], &servers[1]);
        let alice = a.register("alice").await;
        let bob = b.register("bob").await;
        let bob2 = b.register("bob2").await;
        let old_room = a
            .create_room(
                &alice,
                json!({
                    "preset": "public_chat",
                    "room_version": "10",
                    "room_alias_name": "upgraded",
                    "name": "Upgraded",
                }),
            )
            .await;
        join_via(b, &bob, &old_room, "hs-a.test").await;
        eventually("A to see bob joined", || async {
            membership(a, &alice, &old_room, &bob.user_id)
                .await
                .as_deref()
                == Some("join")
        })
        .await;

        // Bob's push rule for the room follows him into the replacement.
        let (status, body) = b
            .put(
                &format!(
                    "/_matrix/client/v3/pushrules/global/room/{}",
                    enc(&old_room)
                ),
                &bob.access_token,
                json!({"actions": ["dont_notify"]}),
            )
            .await;
        assert_eq!(status, 200, "{kind:?}: {body}");
        let (status, body) = a
            .post(
                &format!("/_matrix/client/v3/rooms/{}/upgrade", enc(&old_room)),
                &alice.access_token,
                json!({"new_version": "12"}),
            )
            .await;
        assert_eq!(status, 200, "{kind:?}: {body}");
        let new_room = body["replacement_room"].as_str().unwrap().to_owned();

        // B hears of the tombstone, which names the new room.
        let tombstone_path = format!(
            "/_matrix/client/v3/rooms/{}/state/m.room.tombstone/",
            enc(&old_room)
        );
        eventually("the tombstone at B", || async {
            let (status, body) = b.get(&tombstone_path, &bob.access_token).await;
            status == 200 && body["replacement_room"] == new_room.as_str()
        })
        .await;

        // Bob follows by id, asking the server that sent the tombstone; bob2 by the alias,
        // which moved to the new room.
        join_via(b, &bob, &new_room, "hs-a.test").await;
        let (status, rule) = b
            .get(
                &format!(
                    "/_matrix/client/v3/pushrules/global/room/{}",
                    enc(&new_room)
                ),
                &bob.access_token,
            )
            .await;
        assert_eq!(
            status, 200,
            "{kind:?}: bob's push rule carried over: {rule}"
        );
        let (status, body) = b
            .post(
                &format!("/_matrix/client/v3/join/{}", enc("#upgraded:hs-a.test")),
                &bob2.access_token,
                json!({}),
            )
            .await;
        assert_eq!(status, 200, "{kind:?}: {body}");
        assert_eq!(body["room_id"], new_room.as_str(), "{kind:?}");

        let (status, create) = b
            .get(
                &format!(
                    "/_matrix/client/v3/rooms/{}/state/m.room.create/",
                    enc(&new_room)
                ),
                &bob.access_token,
            )
            .await;
        assert_eq!(status, 200, "{kind:?}: {create}");
        assert_eq!(create["room_version"], "12", "{kind:?}: {create}");
        assert_eq!(
            create["predecessor"]["room_id"],
            old_room.as_str(),
            "{kind:?}: {create}"
        );
        let (_, name) = b
            .get(
                &format!(
                    "/_matrix/client/v3/rooms/{}/state/m.room.name/",
                    enc(&new_room)
                ),
                &bob.access_token,
            )
            .await;
        assert_eq!(name["name"], "Upgraded", "{kind:?}: the state carried over");

        say(b, &bob, &new_room, "in the new room").await;
        eventually("bob's message in the new room at A", || async {
            bodies(a, &alice, &new_room)
                .await
                .contains(&"in the new room".to_owned())
        })
        .await;
        say(a, &alice, &new_room, "welcome over").await;
        eventually("alice's message in the new room at B", || async {
            bodies(b, &bob2, &new_room)
                .await
                .contains(&"welcome over".to_owned())
        })
        .await;
        for server in servers {
            server.stop().await;
        }
    }
}

/// The servers a client names for a join are the ones asked: a refusal there fails the join
/// (Complement's TestRestrictedRoomsRemoteJoinFailOver expects it), and the room id's server
/// is asked only when the client names none.
#[tokio::test]
async fn a_join_asks_the_servers_the_client_named() {
    for kind in test_backends() {
        let ca = TestCa::new();
        let servers = start_federation(
            kind,
            &ca,
            &["hs-a.test", "hs-b.test", "hs-c.test"],
            |_, _| {},
        )
        .await;
        let (a, c) = (&servers[0], &servers[2]);
        let alice = a.register("alice").await;
        let carol = c.register("carol").await;
        let room_id = a
            .create_room(
                &alice,
                json!({"preset": "public_chat", "room_version": "10"}),
            )
            .await;
        // B is not in the room: its make_join refuses, and A is not asked behind the client.
        let (status, body) = c
            .post(
                &format!("/_matrix/client/v3/join/{}?via=hs-b.test", enc(&room_id)),
                &carol.access_token,
                json!({}),
            )
            .await;
        assert_ne!(status, 200, "{kind:?}: {body}");
        assert_eq!(
            membership(a, &alice, &room_id, &carol.user_id).await,
            None,
            "{kind:?}"
        );
        // With no server named, the room id's server is asked.
        let (status, body) = c
            .post(
                &format!("/_matrix/client/v3/join/{}", enc(&room_id)),
                &carol.access_token,
                json!({}),
            )
            .await;
        assert_eq!(status, 200, "{kind:?}: {body}");
        for server in servers {
            server.stop().await;
        }
    }
}

/// A restricted join this server cannot authorise, though it is in the room (none of its
/// members may invite), goes through a server whose members may, which signs it (MSC3083;
/// Complement's TestRestrictedRoomsRemoteJoinLocalUser).
#[tokio::test]
async fn a_restricted_join_no_local_member_can_authorise_goes_through_a_server_that_can() {
    for kind in test_backends() {
        let ca = TestCa::new();
        let servers = start_federation(kind, &ca, &["hs-a.test", "hs-b.test"], |_, _| {}).await;
        let (a, b) = (&servers[0], &servers[1]);
        let bob = b.register("bob").await;
        let alice = a.register("alice").await;
        let amy = a.register("amy").await;
        let space = b
            .create_room(&bob, json!({"preset": "public_chat", "room_version": "10"}))
            .await;
        let room_id = b
            .create_room(
                &bob,
                json!({
                    "preset": "public_chat",
                    "room_version": "10",
                    "initial_state": [{
                        "type": "m.room.join_rules",
                        "state_key": "",
                        "content": {"join_rule": "restricted", "allow": [
                            {"type": "m.room_membership", "room_id": space, "via": ["hs-b.test"]}
                        ]},
                    }],
                }),
            )
            .await;
        let (status, body) = b
            .post(
                &format!("/_matrix/client/v3/rooms/{}/invite", enc(&room_id)),
                &bob.access_token,
                json!({"user_id": alice.user_id}),
            )
            .await;
        assert_eq!(status, 200, "{kind:?}: {body}");
        join_via(a, &alice, &room_id, "hs-b.test").await;

        // Amy is in no allowed room: A, in the room, refuses her itself.
        let join_path = format!("/_matrix/client/v3/join/{}?via=hs-a.test", enc(&room_id));
        let (status, body) = a.post(&join_path, &amy.access_token, json!({})).await;
        assert_eq!(status, 403, "{kind:?}: {body}");
        // In the space she qualifies, but alice may not invite: B authorises the join.
        join_via(a, &amy, &space, "hs-b.test").await;
        let (status, body) = a.post(&join_path, &amy.access_token, json!({})).await;
        assert_eq!(status, 200, "{kind:?}: {body}");
        eventually("B to see amy joined", || async {
            membership(b, &bob, &room_id, &amy.user_id).await.as_deref() == Some("join")
        })
        .await;
        let (_, member) = b
            .get(
                &format!(
                    "/_matrix/client/v3/rooms/{}/state/m.room.member/{}",
                    enc(&room_id),
                    enc(&amy.user_id)
                ),
                &bob.access_token,
            )
            .await;
        assert_eq!(
            member["join_authorised_via_users_server"],
            bob.user_id.as_str(),
            "{kind:?}: {member}"
        );
        for server in servers {
            server.stop().await;
        }
    }
}

/// A resident that has left a restricted room's allowed room cannot tell whether a user is
/// in it (what it kept of that room is stale) and says so (`M_UNABLE_TO_GRANT_JOIN`); the
/// joining server then fails over to a server the client also named.
#[tokio::test]
async fn a_resident_that_left_the_allowed_room_cannot_grant_a_restricted_join() {
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
        let space = a
            .create_room(
                &alice,
                json!({"preset": "public_chat", "room_version": "10"}),
            )
            .await;
        let room_id = a
            .create_room(
                &alice,
                json!({
                    "preset": "public_chat",
                    "room_version": "10",
                    "power_level_content_override": {"users": {
                        alice.user_id.clone(): 100,
                        bob.user_id.clone(): 100,
                    }},
                    "initial_state": [{
                        "type": "m.room.join_rules",
                        "state_key": "",
                        "content": {"join_rule": "restricted", "allow": [
                            {"type": "m.room_membership", "room_id": space, "via": ["hs-a.test"]}
                        ]},
                    }],
                }),
            )
            .await;
        join_via(b, &bob, &space, "hs-a.test").await;
        join_via(b, &bob, &room_id, "hs-a.test").await;
        join_via(c, &carol, &space, "hs-a.test").await;
        eventually("B to see carol in the space", || async {
            membership(b, &bob, &space, &carol.user_id).await.as_deref() == Some("join")
        })
        .await;
        let (status, body) = b
            .post(
                &format!("/_matrix/client/v3/rooms/{}/leave", enc(&space)),
                &bob.access_token,
                json!({}),
            )
            .await;
        assert_eq!(status, 200, "{kind:?}: {body}");

        let (status, body) = c
            .post(
                &format!("/_matrix/client/v3/join/{}?via=hs-b.test", enc(&room_id)),
                &carol.access_token,
                json!({}),
            )
            .await;
        assert_eq!(
            (status.as_u16(), body["errcode"].as_str()),
            (400, Some("M_UNABLE_TO_GRANT_JOIN")),
            "{kind:?}: {body}"
        );
        let (status, body) = c
            .post(
                &format!(
                    "/_matrix/client/v3/join/{}?via=hs-b.test&via=hs-a.test",
                    enc(&room_id)
                ),
                &carol.access_token,
                json!({}),
            )
            .await;
        assert_eq!(status, 200, "{kind:?}: {body}");
        for server in servers {
            server.stop().await;
        }
    }
}

/// A server first met through a typing notice (the joining server's own join went through
/// the resident, so nothing else of its user's has gone there yet) still gets the read
/// receipt stored right after (Complement's TestACLsForEDUs).
#[tokio::test]
async fn a_receipt_right_after_typing_reaches_a_server_first_met_through_typing() {
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
        let (status, sent) = a
            .put(
                &format!(
                    "/_matrix/client/v3/rooms/{}/send/m.room.message/t1",
                    enc(&room_id)
                ),
                &alice.access_token,
                json!({"msgtype": "m.text", "body": "read me"}),
            )
            .await;
        assert_eq!(status, 200, "{sent}");
        let event_id = sent["event_id"].as_str().unwrap().to_owned();
        join_via(b, &bob, &room_id, "hs-a.test").await;
        eventually("the message at B", || async {
            bodies(b, &bob, &room_id)
                .await
                .contains(&"read me".to_owned())
        })
        .await;

        let (status, body) = b
            .put(
                &format!(
                    "/_matrix/client/v3/rooms/{}/typing/{}",
                    enc(&room_id),
                    enc(&bob.user_id)
                ),
                &bob.access_token,
                json!({"typing": true, "timeout": 10000}),
            )
            .await;
        assert_eq!(status, 200, "{body}");
        let (status, body) = b
            .post(
                &format!("/_matrix/client/v3/rooms/{}/read_markers", enc(&room_id)),
                &bob.access_token,
                json!({"m.read": event_id}),
            )
            .await;
        assert_eq!(status, 200, "{body}");

        eventually("bob's receipt at A", || async {
            let (_, synced) = a
                .get("/_matrix/client/v3/sync?timeout=0", &alice.access_token)
                .await;
            synced["rooms"]["join"][&room_id]["ephemeral"]["events"]
                .as_array()
                .is_some_and(|events| {
                    events.iter().any(|e| {
                        e["type"] == "m.receipt"
                            && e["content"][&event_id]["m.read"][&bob.user_id].is_object()
                    })
                })
        })
        .await;
        for server in servers {
            server.stop().await;
        }
    }
}

/// A page of `/messages` larger than one backfill answer (100 events) is filled by several
/// (Complement's TestMessagesOverFederation asks for 200 of 300).
#[tokio::test]
async fn a_large_page_of_history_is_filled_by_several_backfills() {
    for kind in test_backends() {
        let ca = TestCa::new();
        let servers = start_federation(kind, &ca, &["hs-a.test", "hs-b.test"], |_, _| {}).await;
        let (a, b) = (&servers[0], &servers[1]);
        let alice = a.register("alice").await;
        let bob = b.register("bob").await;
        let room_id = a
            .create_room(
                &alice,
                json!({"preset": "public_chat", "room_version": "12"}),
            )
            .await;
        for i in 0..250 {
            say(a, &alice, &room_id, &format!("old {i}")).await;
        }
        join_via(b, &bob, &room_id, "hs-a.test").await;
        let (status, page) = b
            .get(
                &format!(
                    "/_matrix/client/v3/rooms/{}/messages?dir=b&limit=200",
                    enc(&room_id)
                ),
                &bob.access_token,
            )
            .await;
        assert_eq!(status, 200, "{kind:?}: {page}");
        let chunk = page["chunk"].as_array().unwrap();
        assert_eq!(chunk.len(), 200, "{kind:?}: a full page");
        assert!(page["end"].is_string(), "{kind:?}: more to read");
        // The rest, to the create event, with the next page.
        let at_b = timeline_ids(b, &bob, &room_id).await;
        let at_a = timeline_ids(a, &alice, &room_id).await;
        assert_eq!(at_b, at_a, "{kind:?}");
        for server in servers {
            server.stop().await;
        }
    }
}

/// A local user's presence change reaches the users of other servers sharing a room with them
/// (Complement's TestRemotePresence).
#[tokio::test]
async fn presence_changes_reach_members_of_shared_rooms_on_other_servers() {
    for kind in test_backends() {
        let ca = TestCa::new();
        let servers = start_federation(kind, &ca, &["hs-a.test", "hs-b.test"], |_, _| {}).await;
        let (a, b) = (&servers[0], &servers[1]);
        let alice = a.register("alice").await;
        let bob = b.register("bob").await;
        let room_id = a
            .create_room(
                &alice,
                json!({"preset": "public_chat", "room_version": "11"}),
            )
            .await;
        join_via(b, &bob, &room_id, "hs-a.test").await;
        for (state, status) in [("online", Some("across servers")), ("unavailable", None)] {
            let mut body = json!({"presence": state});
            if let Some(status) = status {
                body["status_msg"] = json!(status);
            }
            let (code, reply) = a
                .put(
                    &format!("/_matrix/client/v3/presence/{}/status", enc(&alice.user_id)),
                    &alice.access_token,
                    body,
                )
                .await;
            assert_eq!(code, 200, "{reply}");
            eventually("alice's presence at B", || async {
                let (_, presence) = b
                    .get(
                        &format!("/_matrix/client/v3/presence/{}/status", enc(&alice.user_id)),
                        &bob.access_token,
                    )
                    .await;
                presence["presence"] == state
                    && status.is_none_or(|status| presence["status_msg"] == status)
            })
            .await;
        }
        for server in servers {
            server.stop().await;
        }
    }
}

/// The first sync after a join through another server carries the room's state (the state
/// the resident answered, before the join), as after any join.
#[tokio::test]
async fn the_first_sync_after_a_remote_join_carries_the_rooms_state() {
    for kind in test_backends() {
        let ca = TestCa::new();
        let servers = start_federation(kind, &ca, &["hs-a.test", "hs-b.test"], |_, _| {}).await;
        let (a, b) = (&servers[0], &servers[1]);
        let alice = a.register("alice").await;
        let bob = b.register("bob").await;
        let room_id = a
            .create_room(
                &alice,
                json!({"preset": "public_chat", "room_version": "12", "name": "Named"}),
            )
            .await;
        let (_, synced) = b
            .get("/_matrix/client/v3/sync?timeout=0", &bob.access_token)
            .await;
        let since = synced["next_batch"].as_str().unwrap().to_owned();
        join_via(b, &bob, &room_id, "hs-a.test").await;
        for path in [
            format!("/_matrix/client/v3/sync?since={since}&timeout=0"),
            "/_matrix/client/v3/sync?timeout=0".to_owned(),
        ] {
            let (status, synced) = b.get(&path, &bob.access_token).await;
            assert_eq!(status, 200, "{synced}");
            let room = &synced["rooms"]["join"][&room_id];
            let mut seen: Vec<(String, String)> = Vec::new();
            for section in [&room["state"]["events"], &room["timeline"]["events"]] {
                for event in section.as_array().into_iter().flatten() {
                    if let Some(key) = event["state_key"].as_str() {
                        seen.push((event["type"].as_str().unwrap().to_owned(), key.to_owned()));
                    }
                }
            }
            for wanted in [
                ("m.room.create", ""),
                ("m.room.name", ""),
                ("m.room.power_levels", ""),
                ("m.room.join_rules", ""),
                ("m.room.member", alice.user_id.as_str()),
                ("m.room.member", bob.user_id.as_str()),
            ] {
                assert!(
                    seen.contains(&(wanted.0.to_owned(), wanted.1.to_owned())),
                    "{kind:?} {path}: {wanted:?} missing from {room}"
                );
            }
        }
        for server in servers {
            server.stop().await;
        }
    }
}

/// `actor` on `server` posts a membership action (`invite`, `kick`, `ban`, `unban`) on `target`.
async fn moderate(
    server: &TestServer,
    actor: &TestUser,
    room_id: &str,
    action: &str,
    target: &TestUser,
) {
    let (status, body) = server
        .post(
            &format!("/_matrix/client/v3/rooms/{}/{action}", enc(room_id)),
            &actor.access_token,
            json!({"user_id": target.user_id, "reason": action}),
        )
        .await;
    assert_eq!(
        status, 200,
        "{} {action} {}: {body}",
        actor.user_id, target.user_id
    );
}

/// Waits until every server's user reads a message `text` in the room.
async fn all_read(servers: &[&TestServer], users: &[&TestUser], room_id: &str, text: &str) {
    for (server, reader) in servers.iter().zip(users) {
        eventually(&format!("{} to read {text:?}", server.name()), || async {
            bodies(server, reader, room_id)
                .await
                .contains(&text.to_owned())
        })
        .await;
    }
}

/// Whether `user`'s sync on `server` holds an invite to `room_id` (an invitee's server that is
/// not in the room has no room state to read).
async fn holds_invite(server: &TestServer, user: &TestUser, room_id: &str) -> bool {
    let (_, synced) = server
        .get("/_matrix/client/v3/sync", &user.access_token)
        .await;
    synced["rooms"]["invite"].get(room_id).is_some()
}

/// Waits until every server's view of `target`'s membership (read by that server's user) is
/// `expected`; a server whose user is `target` reads its own membership (an invite: from its
/// sync).
async fn all_see(
    servers: &[&TestServer],
    users: &[&TestUser],
    room_id: &str,
    target: &TestUser,
    expected: &str,
) {
    for (server, reader) in servers.iter().zip(users) {
        eventually(
            &format!("{} to see {} as {expected}", server.name(), target.user_id),
            || async {
                if expected == "invite" && reader.user_id == target.user_id {
                    return holds_invite(server, reader, room_id).await;
                }
                membership(server, reader, room_id, &target.user_id)
                    .await
                    .as_deref()
                    == Some(expected)
            },
        )
        .await;
    }
}

/// Every membership flow with three servers, in both directions: the room on X, a moderator on
/// Y, a user on Z who knocks (through X), is let in by Y's invite (joining through Y), is
/// kicked and banned by Y, refused while banned, unbanned by X, invited and rejects it (Z not
/// in the room: through X), invited again and joins; each step seen by all three servers, and
/// the three end on the same state. Then the same with the servers' roles reversed.
#[tokio::test]
async fn moderation_knocks_and_rejections_across_three_servers_in_both_directions() {
    for kind in test_backends() {
        let ca = TestCa::new();
        let servers = start_federation(
            kind,
            &ca,
            &["hs-a.test", "hs-b.test", "hs-c.test"],
            |_, _| {},
        )
        .await;
        let users = [
            servers[0].register("alice").await,
            servers[1].register("bob").await,
            servers[2].register("carol").await,
        ];
        for order in [[0, 1, 2], [2, 1, 0]] {
            let [x, y, z] = order.map(|i| &servers[i]);
            let [ux, uy, uz] = order.map(|i| &users[i]);
            let all = [x, y, z];
            let readers = [ux, uy, uz];
            let room_id = x
                .create_room(
                    ux,
                    json!({
                        "preset": "private_chat",
                        "initial_state": [{"type": "m.room.join_rules", "state_key": "",
                                           "content": {"join_rule": "knock"}}],
                        // Room version 12: the creator's power is its creatorship.
                        "power_level_content_override": {"users": {uy.user_id.clone(): 100}},
                    }),
                )
                .await;
            moderate(x, ux, &room_id, "invite", uy).await;
            join_via(y, uy, &room_id, x.name()).await;
            all_see(&all[..2], &readers[..2], &room_id, uy, "join").await;

            // Z knocks through X; Y's moderator lets Z in; Z joins through Y.
            let (status, body) = z
                .post(
                    &format!(
                        "/_matrix/client/v3/knock/{}?via={}",
                        enc(&room_id),
                        x.name()
                    ),
                    &uz.access_token,
                    json!({"reason": "let me in"}),
                )
                .await;
            assert_eq!(status, 200, "{kind:?} {order:?} knock: {body}");
            all_see(&all[..2], &readers[..2], &room_id, uz, "knock").await;
            moderate(y, uy, &room_id, "invite", uz).await;
            all_see(&all, &readers, &room_id, uz, "invite").await;
            join_via(z, uz, &room_id, y.name()).await;
            all_see(&all, &readers, &room_id, uz, "join").await;
            say(z, uz, &room_id, "hello from z").await;
            all_read(&all, &readers, &room_id, "hello from z").await;

            // Y's moderator kicks, then bans Z; Z's join is refused while banned.
            moderate(y, uy, &room_id, "kick", uz).await;
            all_see(&all, &readers, &room_id, uz, "leave").await;
            // Z, out of the room since the kick, hears of the ban only when it next asks.
            moderate(y, uy, &room_id, "ban", uz).await;
            all_see(&all[..2], &readers[..2], &room_id, uz, "ban").await;
            let (status, body) = z
                .post(
                    &format!("/_matrix/client/v3/join/{}?via={}", enc(&room_id), x.name()),
                    &uz.access_token,
                    json!({}),
                )
                .await;
            assert_eq!(status, 403, "{kind:?} {order:?} join while banned: {body}");

            // X unbans Z (Z, out of the room, need not hear of it) and invites; Z rejects the
            // invite through X, is invited again and joins.
            moderate(x, ux, &room_id, "unban", uz).await;
            all_see(&all[..2], &readers[..2], &room_id, uz, "leave").await;
            moderate(x, ux, &room_id, "invite", uz).await;
            all_see(&all, &readers, &room_id, uz, "invite").await;
            let (status, body) = z
                .post(
                    &format!("/_matrix/client/v3/rooms/{}/leave", enc(&room_id)),
                    &uz.access_token,
                    json!({}),
                )
                .await;
            assert_eq!(status, 200, "{kind:?} {order:?} rejection: {body}");
            all_see(&all[..2], &readers[..2], &room_id, uz, "leave").await;
            moderate(x, ux, &room_id, "invite", uz).await;
            all_see(&all, &readers, &room_id, uz, "invite").await;
            join_via(z, uz, &room_id, x.name()).await;
            all_see(&all, &readers, &room_id, uz, "join").await;
            say(z, uz, &room_id, "back from z").await;
            all_read(&all, &readers, &room_id, "back from z").await;
            let pairs: Vec<(&TestServer, &TestUser)> =
                all.iter().copied().zip(readers.iter().copied()).collect();
            converged_state(&format!("{kind:?} {order:?}"), &pairs, &room_id).await;
        }
        for server in servers {
            server.stop().await;
        }
    }
}

/// The reads across servers, between every ordered pair of three servers: each server's user
/// reads the others' users' profiles, resolves their aliases and lists their room directories;
/// in a room all three share, each user's typing and read receipts reach the other two, and the
/// user directory finds the other servers' members.
#[tokio::test]
async fn profiles_aliases_directories_and_edus_work_between_every_pair_of_three_servers() {
    for kind in test_backends() {
        let ca = TestCa::new();
        let servers = start_federation(
            kind,
            &ca,
            &["hs-a.test", "hs-b.test", "hs-c.test"],
            |_, _| {},
        )
        .await;
        let mut users = Vec::new();
        let mut rooms = Vec::new();
        for (i, server) in servers.iter().enumerate() {
            let user = server.register(&format!("user{i}")).await;
            set_displayname(server, &user, &format!("User of {}", server.name())).await;
            let room = server
                .create_room(
                    &user,
                    json!({"preset": "public_chat", "visibility": "public",
                           "room_alias_name": format!("lobby{i}")}),
                )
                .await;
            users.push(user);
            rooms.push(room);
        }
        for (x, (reader_server, reader)) in servers.iter().zip(&users).enumerate() {
            for (y, (server, user)) in servers.iter().zip(&users).enumerate() {
                if x == y {
                    continue;
                }
                let what = format!("{kind:?} {} reads {}", reader_server.name(), server.name());
                let (status, body) = reader_server
                    .get(
                        &format!("/_matrix/client/v3/profile/{}", enc(&user.user_id)),
                        &reader.access_token,
                    )
                    .await;
                assert_eq!(status, 200, "{what}: {body}");
                assert_eq!(
                    body["displayname"],
                    json!(format!("User of {}", server.name())),
                    "{what}"
                );
                let alias = format!("#lobby{y}:{}", server.name());
                let (status, body) = reader_server
                    .get(
                        &format!("/_matrix/client/v3/directory/room/{}", enc(&alias)),
                        &reader.access_token,
                    )
                    .await;
                assert_eq!(status, 200, "{what}: {body}");
                assert_eq!(body["room_id"], json!(rooms[y]), "{what}");
                let (status, body) = reader_server
                    .get(
                        &format!("/_matrix/client/v3/publicRooms?server={}", server.name()),
                        &reader.access_token,
                    )
                    .await;
                assert_eq!(status, 200, "{what}: {body}");
                assert!(
                    body["chunk"]
                        .as_array()
                        .is_some_and(|rooms_listed| rooms_listed
                            .iter()
                            .any(|r| r["canonical_alias"] == json!(alias))),
                    "{what}: {body}"
                );
            }
        }

        // One room all three share (A's), joined through its alias.
        let shared = &rooms[0];
        for (server, user) in servers.iter().zip(&users).skip(1) {
            let (status, body) = server
                .post(
                    &format!("/_matrix/client/v3/join/{}", enc("#lobby0:hs-a.test")),
                    &user.access_token,
                    json!({}),
                )
                .await;
            assert_eq!(status, 200, "{kind:?}: {body}");
        }
        for (server, user) in servers.iter().zip(&users) {
            for other in &users {
                eventually(
                    &format!("{} to see {} joined", server.name(), other.user_id),
                    || async {
                        membership(server, user, shared, &other.user_id)
                            .await
                            .as_deref()
                            == Some("join")
                    },
                )
                .await;
            }
        }
        for (i, (server, user)) in servers.iter().zip(&users).enumerate() {
            say(server, user, shared, &format!("line {i}")).await;
        }
        for (server, user) in servers.iter().zip(&users) {
            let reply = server
                .put(
                    &format!(
                        "/_matrix/client/v3/rooms/{}/typing/{}",
                        enc(shared),
                        enc(&user.user_id)
                    ),
                    &user.access_token,
                    json!({"typing": true, "timeout": 30000}),
                )
                .await;
            assert_eq!(reply.0, 200, "{kind:?}: {}", reply.1);
            let last = timeline_ids(server, user, shared).await;
            let reply = server
                .post(
                    &format!(
                        "/_matrix/client/v3/rooms/{}/receipt/m.read/{}",
                        enc(shared),
                        enc(last.last().unwrap())
                    ),
                    &user.access_token,
                    json!({}),
                )
                .await;
            assert_eq!(reply.0, 200, "{kind:?}: {}", reply.1);
        }
        for (server, user) in servers.iter().zip(&users) {
            eventually(
                &format!(
                    "{} to show everyone typing and their receipts",
                    server.name()
                ),
                || async {
                    let (_, synced) = server
                        .get("/_matrix/client/v3/sync", &user.access_token)
                        .await;
                    let events = synced["rooms"]["join"][shared.as_str()]["ephemeral"]["events"]
                        .as_array()
                        .cloned()
                        .unwrap_or_default();
                    let typing: Vec<&Value> = events
                        .iter()
                        .filter(|e| e["type"] == "m.typing")
                        .flat_map(|e| e["content"]["user_ids"].as_array().into_iter().flatten())
                        .collect();
                    let receipts = events
                        .iter()
                        .filter(|e| e["type"] == "m.receipt")
                        .map(|e| e["content"].to_string())
                        .collect::<String>();
                    users.iter().all(|u| {
                        typing.contains(&&json!(u.user_id)) && receipts.contains(&u.user_id)
                    })
                },
            )
            .await;
            // The user directory finds the other servers' members of the shared room.
            let (status, body) = server
                .post(
                    "/_matrix/client/v3/user_directory/search",
                    &user.access_token,
                    json!({"search_term": "User of", "limit": 10}),
                )
                .await;
            assert_eq!(status, 200, "{kind:?}: {body}");
            let found: Vec<&str> = body["results"]
                .as_array()
                .into_iter()
                .flatten()
                .filter_map(|r| r["user_id"].as_str())
                .collect();
            for other in &users {
                if other.user_id != user.user_id {
                    assert!(
                        found.contains(&other.user_id.as_str()),
                        "{kind:?} {}: {body}",
                        server.name()
                    );
                }
            }
        }
        for server in servers {
            server.stop().await;
        }
    }
}

//! Spaces across real Myelin servers over TLS on loopback: the federation
//! `GET /_matrix/federation/v1/hierarchy/{roomId}` in both roles. A client's `/hierarchy` of a
//! space on A shows the rooms and sub-spaces B holds (with B's names, topics and member
//! counts), leaves out what B says A may not see and what no server answers about, and a
//! server answers other servers only about rooms they may peek or join. On both backends.

use myelin_federation::FederationError;
use myelin_testkit::{
    TestServer, TestUser, enc,
    federation::{TestCa, free_port, start_federation},
    rooms::join_via,
    test_backends,
};
use reqwest::StatusCode;
use ruma::{OwnedRoomId, OwnedServerName, api::federation::space::get_hierarchy};
use serde_json::{Value, json};

async fn create(server: &TestServer, user: &TestUser, body: Value) -> String {
    server.create_room(user, body).await
}

async fn link(server: &TestServer, user: &TestUser, parent: &str, child: &str, content: Value) {
    let (status, body) = server
        .put(
            &format!(
                "/_matrix/client/v3/rooms/{}/state/m.space.child/{}",
                enc(parent),
                enc(child)
            ),
            &user.access_token,
            content,
        )
        .await;
    assert_eq!(status, StatusCode::OK, "{body}");
}

async fn hierarchy(server: &TestServer, user: &TestUser, root: &str, query: &str) -> Value {
    let (status, body) = server
        .get(
            &format!("/_matrix/client/v1/rooms/{}/hierarchy{query}", enc(root)),
            &user.access_token,
        )
        .await;
    assert_eq!(status, StatusCode::OK, "{body}");
    body
}

fn room_ids(body: &Value) -> Vec<String> {
    body["rooms"]
        .as_array()
        .unwrap_or_else(|| panic!("no rooms: {body}"))
        .iter()
        .map(|r| r["room_id"].as_str().unwrap().to_owned())
        .collect()
}

fn chunk<'a>(body: &'a Value, room_id: &str) -> &'a Value {
    body["rooms"]
        .as_array()
        .unwrap()
        .iter()
        .find(|r| r["room_id"] == room_id)
        .unwrap_or_else(|| panic!("{room_id} not in {body}"))
}

/// `server` asks `of`'s federation `/hierarchy` about `room_id`.
async fn ask(
    server: &TestServer,
    of: &str,
    room_id: &str,
    suggested_only: bool,
) -> Result<get_hierarchy::v1::Response, FederationError> {
    let mut request = get_hierarchy::v1::Request::new(OwnedRoomId::try_from(room_id).unwrap());
    request.suggested_only = suggested_only;
    server
        .services()
        .federation
        .send(&OwnedServerName::try_from(of).unwrap(), request)
        .await
}

#[tokio::test]
async fn a_space_shows_rooms_and_sub_spaces_of_another_server_as_far_as_they_may_be_seen() {
    for kind in test_backends() {
        let ca = TestCa::new();
        // A server A's links name that nothing answers at.
        let down_port = free_port();
        let servers = start_federation(kind, &ca, &["hs-a.test", "hs-b.test"], |i, config| {
            if i == 0 {
                config
                    .federation
                    .destination_overrides
                    .insert("hs-down.test".to_owned(), format!("127.0.0.1:{down_port}"));
            }
        })
        .await;
        let (a, b) = (&servers[0], &servers[1]);
        let alice = a.register("alice").await;
        let dave = a.register("dave").await;
        let bob = b.register("bob").await;
        let charlie = b.register("charlie").await;

        // On A: the space, a public room and an invite-only one.
        let space = create(
            a,
            &alice,
            json!({"preset": "public_chat", "name": "Space A",
                   "creation_content": {"type": "m.space"}}),
        )
        .await;
        let local = create(a, &alice, json!({"preset": "public_chat", "name": "Local"})).await;
        let private_a = create(
            a,
            &alice,
            json!({"preset": "private_chat", "name": "Hidden A"}),
        )
        .await;
        // On B: a public room with two members, a public sub-space with a room of its own and
        // an invite-only room, and an invite-only room.
        let room_b = create(
            b,
            &bob,
            json!({"preset": "public_chat", "name": "Room B", "topic": "about B",
                   "room_alias_name": "roomb"}),
        )
        .await;
        join_via(b, &charlie, &room_b, "hs-b.test").await;
        let sub_b = create(
            b,
            &bob,
            json!({"preset": "public_chat", "name": "Sub B",
                   "creation_content": {"type": "m.space"}}),
        )
        .await;
        let deep_b = create(
            b,
            &bob,
            json!({"preset": "public_chat", "name": "Deep B", "topic": "below"}),
        )
        .await;
        let private_b = create(
            b,
            &bob,
            json!({"preset": "private_chat", "name": "Hidden B"}),
        )
        .await;
        link(b, &bob, &sub_b, &deep_b, json!({"via": ["hs-b.test"]})).await;
        link(b, &bob, &sub_b, &private_b, json!({"via": ["hs-b.test"]})).await;

        let via_b = json!({"via": ["hs-b.test"]});
        link(a, &alice, &space, &local, json!({"via": ["hs-a.test"]})).await;
        link(a, &alice, &space, &private_a, json!({"via": ["hs-a.test"]})).await;
        link(
            a,
            &alice,
            &space,
            &room_b,
            json!({"via": ["hs-b.test"], "suggested": true, "order": "1"}),
        )
        .await;
        link(
            a,
            &alice,
            &space,
            &sub_b,
            json!({"via": ["hs-b.test"], "order": "2"}),
        )
        .await;
        link(a, &alice, &space, &private_b, via_b.clone()).await;
        link(
            a,
            &alice,
            &space,
            "!gone:hs-down.test",
            json!({"via": ["hs-down.test"]}),
        )
        .await;

        // Alice's walk: her own rooms on A (the private one too: she is in it), B's rooms with
        // B's summaries, the sub-space walked into; not B's private room (B says A may not
        // see it) nor the room only an unreachable server would know.
        let body = hierarchy(a, &alice, &space, "").await;
        let ids = room_ids(&body);
        for room in [&space, &local, &private_a, &room_b, &sub_b, &deep_b] {
            assert!(ids.contains(room), "{kind:?}: {room} missing: {body}");
        }
        assert!(!ids.contains(&private_b), "{kind:?}: {body}");
        assert!(!ids.contains(&"!gone:hs-down.test".to_owned()), "{kind:?}");
        assert_eq!(ids.len(), 6, "{kind:?}: {body}");
        let remote = chunk(&body, &room_b);
        assert_eq!(remote["name"], "Room B", "{kind:?}: {remote}");
        assert_eq!(remote["topic"], "about B");
        assert_eq!(remote["num_joined_members"], 2);
        assert_eq!(remote["join_rule"], "public");
        assert_eq!(remote["children_state"], json!([]));
        let sub = chunk(&body, &sub_b);
        assert_eq!(sub["room_type"], "m.space", "{kind:?}: {sub}");
        let sub_links: Vec<&str> = sub["children_state"]
            .as_array()
            .unwrap()
            .iter()
            .map(|l| l["state_key"].as_str().unwrap())
            .collect();
        assert!(
            sub_links.contains(&deep_b.as_str()) && sub_links.contains(&private_b.as_str()),
            "{kind:?}: {sub}"
        );
        assert_eq!(chunk(&body, &deep_b)["topic"], "below");
        // Depth first: the sub-space's room right after it.
        let at = |id: &String| ids.iter().position(|x| x == id).unwrap();
        assert_eq!(at(&deep_b), at(&sub_b) + 1, "{kind:?}: {ids:?}");

        // Dave, not in A's private room, does not see it.
        let body = hierarchy(a, &dave, &space, "").await;
        assert!(!room_ids(&body).contains(&private_a), "{kind:?}: {body}");
        assert!(room_ids(&body).contains(&deep_b), "{kind:?}: {body}");

        // suggested_only: the root and the suggested link only.
        let body = hierarchy(a, &alice, &space, "?suggested_only=true").await;
        assert_eq!(room_ids(&body), [space.clone(), room_b.clone()], "{kind:?}");

        // B as the resident: the sub-space, its public room, its private room by id only.
        let answer = ask(a, "hs-b.test", &sub_b, false).await.unwrap();
        assert_eq!(answer.room.summary.room_id, sub_b.as_str());
        assert_eq!(answer.room.children_state.len(), 2);
        let children: Vec<&str> = answer.children.iter().map(|c| c.room_id.as_str()).collect();
        assert_eq!(children, [deep_b.as_str()], "{kind:?}");
        assert_eq!(answer.children[0].name.as_deref(), Some("Deep B"));
        assert_eq!(answer.inaccessible_children, [private_b.as_str()]);
        let refused = ask(a, "hs-b.test", &private_b, false).await;
        assert!(
            matches!(refused, Err(FederationError::Status { status: 404, .. })),
            "{kind:?}: {refused:?}"
        );

        // A as the resident, asked by B: its private room is not disclosed.
        let answer = ask(b, "hs-a.test", &space, false).await.unwrap();
        let children: Vec<&str> = answer.children.iter().map(|c| c.room_id.as_str()).collect();
        assert_eq!(children, [local.as_str()], "{kind:?}: {answer:?}");
        assert_eq!(answer.inaccessible_children, [private_a.as_str()]);
        assert_eq!(answer.room.summary.name.as_deref(), Some("Space A"));
        for room in [&private_a, "!unknown:hs-a.test"] {
            let refused = ask(b, "hs-a.test", room, false).await;
            assert!(
                matches!(refused, Err(FederationError::Status { status: 404, .. })),
                "{kind:?}: {room}: {refused:?}"
            );
        }
        // A room whose server ACL denies B is not for B, public as it is.
        let (status, body) = a
            .put(
                &format!(
                    "/_matrix/client/v3/rooms/{}/state/m.room.server_acl/",
                    enc(&local)
                ),
                &alice.access_token,
                json!({"allow": ["*"], "deny": ["hs-b.test"]}),
            )
            .await;
        assert_eq!(status, StatusCode::OK, "{body}");
        let answer = ask(b, "hs-a.test", &space, false).await.unwrap();
        assert!(answer.children.is_empty(), "{kind:?}: {answer:?}");
        assert_eq!(
            answer.inaccessible_children,
            [local.as_str(), private_a.as_str()],
            "{kind:?}"
        );
        // suggested_only as the resident: only suggested links and their rooms.
        let answer = ask(b, "hs-a.test", &space, true).await.unwrap();
        assert_eq!(answer.room.children_state.len(), 1, "{kind:?}");
        assert!(answer.children.is_empty() && answer.inaccessible_children.is_empty());

        // The room summary of B's rooms at A: asked of the client's `via` or the alias's
        // server; B's private room is not found, and anonymous readers never make A ask.
        for target in [
            format!("{}?via=hs-b.test", enc(&room_b)),
            enc("#roomb:hs-b.test"),
        ] {
            let (status, body) = a
                .get(
                    &format!("/_matrix/client/v1/room_summary/{target}"),
                    &dave.access_token,
                )
                .await;
            assert_eq!(status, StatusCode::OK, "{kind:?}: {target}: {body}");
            assert_eq!(body["room_id"], room_b.as_str());
            assert_eq!(body["name"], "Room B");
            assert_eq!(body["num_joined_members"], 2);
            assert_eq!(body["membership"], "leave");
        }
        let (status, body) = a
            .get(
                &format!(
                    "/_matrix/client/v1/room_summary/{}?via=hs-b.test",
                    enc(&private_b)
                ),
                &dave.access_token,
            )
            .await;
        assert_eq!(
            (status, &body["errcode"]),
            (StatusCode::NOT_FOUND, &json!("M_NOT_FOUND")),
            "{kind:?}: {body}"
        );
        let (status, _) = a
            .call(
                reqwest::Method::GET,
                &format!(
                    "/_matrix/client/v1/room_summary/{}?via=hs-b.test",
                    enc(&room_b)
                ),
                None,
                None,
            )
            .await;
        assert_eq!(status, StatusCode::NOT_FOUND, "{kind:?}");

        for server in servers {
            server.stop().await;
        }
    }
}

#[tokio::test]
async fn a_restricted_room_of_another_server_shows_once_that_server_knows_the_user_may_join() {
    for kind in test_backends() {
        let ca = TestCa::new();
        let servers = start_federation(kind, &ca, &["hs-a.test", "hs-b.test"], |_, _| {}).await;
        let (a, b) = (&servers[0], &servers[1]);
        let alice = a.register("alice").await;
        let dave = a.register("dave").await;
        let bob = b.register("bob").await;
        let space = create(
            a,
            &alice,
            json!({"preset": "public_chat", "name": "Space",
                   "creation_content": {"type": "m.space"}}),
        )
        .await;
        let restricted = create(
            b,
            &bob,
            json!({"preset": "public_chat", "name": "Members only", "room_version": "10",
                   "initial_state": [{"type": "m.room.join_rules", "state_key": "",
                       "content": {"join_rule": "restricted", "allow": [
                           {"type": "m.room_membership", "room_id": space,
                            "via": ["hs-a.test"]}]}}]}),
        )
        .await;
        link(
            a,
            &alice,
            &space,
            &restricted,
            json!({"via": ["hs-b.test"]}),
        )
        .await;

        // B is not in the space: it cannot tell that A's users may join, and says 404.
        let body = hierarchy(a, &alice, &space, "").await;
        assert_eq!(room_ids(&body), [space.as_str()], "{kind:?}");

        // Bob joins the space: B now sees alice's server in it. Alice (in the space) sees
        // the room; dave (not in it) does not.
        join_via(b, &bob, &space, "hs-a.test").await;
        let body = hierarchy(a, &alice, &space, "").await;
        assert_eq!(
            room_ids(&body),
            [space.clone(), restricted.clone()],
            "{kind:?}"
        );
        let chunk = chunk(&body, &restricted);
        assert_eq!(chunk["join_rule"], "restricted");
        assert_eq!(chunk["allowed_room_ids"], json!([space]));
        let body = hierarchy(a, &dave, &space, "").await;
        assert_eq!(room_ids(&body), [space.as_str()], "{kind:?}");

        for server in servers {
            server.stop().await;
        }
    }
}

#[tokio::test]
async fn one_walk_asks_other_servers_a_bounded_number_of_times() {
    for kind in test_backends() {
        let ca = TestCa::new();
        let servers = start_federation(kind, &ca, &["hs-a.test", "hs-b.test"], |_, _| {}).await;
        let (a, b) = (&servers[0], &servers[1]);
        let alice = a.register("alice").await;
        let bob = b.register("bob").await;
        let space = create(
            a,
            &alice,
            json!({"preset": "public_chat", "creation_content": {"type": "m.space"}}),
        )
        .await;
        let room_b = create(b, &bob, json!({"preset": "public_chat", "name": "Room B"})).await;
        // Sixteen rooms B does not know (each a request answered 404), ordered before B's
        // room: a walk makes at most sixteen requests, so B's room is not asked about.
        for i in 0..16 {
            let unknown = format!("!unknown{i:02}:hs-b.test");
            link(
                a,
                &alice,
                &space,
                &unknown,
                json!({"via": ["hs-b.test"], "order": format!("a{i:02}")}),
            )
            .await;
        }
        link(
            a,
            &alice,
            &space,
            &room_b,
            json!({"via": ["hs-b.test"], "order": "z"}),
        )
        .await;
        let body = hierarchy(a, &alice, &space, "").await;
        assert_eq!(room_ids(&body), [space.as_str()], "{kind:?}: {body}");

        // With one unknown room fewer, the budget reaches B's room.
        let (status, body) = a
            .put(
                &format!(
                    "/_matrix/client/v3/rooms/{}/state/m.space.child/{}",
                    enc(&space),
                    enc("!unknown15:hs-b.test")
                ),
                &alice.access_token,
                json!({}),
            )
            .await;
        assert_eq!(status, StatusCode::OK, "{body}");
        let body = hierarchy(a, &alice, &space, "").await;
        assert_eq!(
            room_ids(&body),
            [space.as_str(), room_b.as_str()],
            "{kind:?}: {body}"
        );

        for server in servers {
            server.stop().await;
        }
    }
}

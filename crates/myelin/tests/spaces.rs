//! The space hierarchy (`/hierarchy`) on both databases: the depth-first walk with room
//! summaries and links, `max_depth`, `suggested_only`, pagination, removed links, join rules
//! deciding which rooms a user may learn about, and the errors.

use myelin_testkit::{TestServer, TestUser, enc, test_backends};
use reqwest::StatusCode;
use serde_json::{Value, json};

async fn space(server: &TestServer, user: &TestUser, name: &str, preset: &str) -> String {
    server
        .create_room(
            user,
            json!({"preset": preset, "name": name, "creation_content": {"type": "m.space"}}),
        )
        .await
}

async fn room(server: &TestServer, user: &TestUser, name: &str, preset: &str) -> String {
    server
        .create_room(user, json!({"preset": preset, "name": name}))
        .await
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

async fn hierarchy(
    server: &TestServer,
    user: &TestUser,
    root: &str,
    query: &str,
) -> (StatusCode, Value) {
    server
        .get(
            &format!("/_matrix/client/v1/rooms/{}/hierarchy{query}", enc(root)),
            &user.access_token,
        )
        .await
}

fn room_ids(body: &Value) -> Vec<String> {
    body["rooms"]
        .as_array()
        .unwrap_or_else(|| panic!("no rooms: {body}"))
        .iter()
        .map(|r| r["room_id"].as_str().unwrap().to_owned())
        .collect()
}

fn links_of(body: &Value, room: &str) -> Vec<String> {
    body["rooms"]
        .as_array()
        .unwrap()
        .iter()
        .find(|r| r["room_id"] == room)
        .map(|r| {
            r["children_state"]
                .as_array()
                .unwrap()
                .iter()
                .map(|c| c["state_key"].as_str().unwrap().to_owned())
                .collect()
        })
        .unwrap_or_default()
}

#[tokio::test]
async fn the_hierarchy_walks_spaces_depth_first() {
    for kind in test_backends() {
        let server = TestServer::start(kind).await;
        let alice = server.register("alice").await;
        let bob = server.register("bob").await;
        let via = json!({"via": ["localhost"]});
        let root = space(&server, &alice, "Root", "public_chat").await;
        let r1 = room(&server, &alice, "R1", "public_chat").await;
        let ss1 = space(&server, &alice, "SS1", "public_chat").await;
        let r2 = room(&server, &alice, "R2", "public_chat").await;
        let ss2 = space(&server, &alice, "SS2", "public_chat").await;
        let r3 = room(&server, &alice, "R3", "public_chat").await;
        // Bob's public room, which alice is not in, and a room behind a non-space.
        let r4 = room(&server, &bob, "R4", "public_chat").await;
        let r5 = room(&server, &bob, "R5", "public_chat").await;
        link(
            &server,
            &alice,
            &root,
            &r1,
            json!({"via": ["localhost"], "suggested": true}),
        )
        .await;
        link(&server, &alice, &root, &ss1, via.clone()).await;
        link(
            &server,
            &alice,
            &root,
            &r2,
            json!({"via": ["localhost"], "suggested": true}),
        )
        .await;
        link(&server, &alice, &r2, &r5, via.clone()).await;
        link(&server, &alice, &ss1, &ss2, via.clone()).await;
        link(&server, &alice, &ss2, &r3, via.clone()).await;
        link(&server, &alice, &ss2, &r4, via.clone()).await;

        let (status, body) = hierarchy(&server, &alice, &root, "").await;
        assert_eq!(status, StatusCode::OK, "{body}");
        assert_eq!(
            room_ids(&body),
            vec![
                root.clone(),
                r1.clone(),
                ss1.clone(),
                ss2.clone(),
                r3.clone(),
                r4.clone(),
                r2.clone()
            ],
            "depth first, children in link order; r5 hangs off a room that is no space"
        );
        assert_eq!(
            links_of(&body, &root),
            vec![r1.clone(), ss1.clone(), r2.clone()]
        );
        assert_eq!(
            links_of(&body, &r2),
            Vec::<String>::new(),
            "only spaces show links"
        );
        let root_chunk = &body["rooms"][0];
        assert_eq!(root_chunk["name"], "Root");
        assert_eq!(root_chunk["room_type"], "m.space");
        assert_eq!(root_chunk["num_joined_members"], 1);
        // `public` is the summary's default join rule, which the serialiser may leave out.
        assert!(
            root_chunk.get("join_rule").is_none_or(|r| r == "public"),
            "{root_chunk}"
        );
        assert_eq!(
            body["rooms"][1]["join_rule"].as_str().unwrap_or("public"),
            "public"
        );
        assert_eq!(root_chunk["children_state"][0]["type"], "m.space.child");
        assert!(root_chunk["children_state"][0]["origin_server_ts"].is_i64());

        let (_, shallow) = hierarchy(&server, &alice, &root, "?max_depth=1").await;
        assert_eq!(
            room_ids(&shallow),
            vec![root.clone(), r1.clone(), ss1.clone(), r2.clone()]
        );
        assert_eq!(
            links_of(&shallow, &ss1),
            vec![ss2.clone()],
            "links are shown past the depth"
        );

        let (_, suggested) = hierarchy(&server, &alice, &root, "?suggested_only=true").await;
        assert_eq!(
            room_ids(&suggested),
            vec![root.clone(), r1.clone(), r2.clone()]
        );

        let (_, first) = hierarchy(&server, &alice, &root, "?limit=4").await;
        assert_eq!(
            room_ids(&first),
            vec![root.clone(), r1.clone(), ss1.clone(), ss2.clone()]
        );
        let next = first["next_batch"].as_str().unwrap();
        let (_, second) = hierarchy(
            &server,
            &alice,
            &root,
            &format!("?limit=4&from={}", enc(next)),
        )
        .await;
        assert_eq!(room_ids(&second), vec![r3.clone(), r4.clone(), r2.clone()]);
        assert!(second.get("next_batch").is_none(), "{second}");
        // A token is only good with the parameters it was issued for, and garbage is refused.
        for query in [
            format!("?limit=4&max_depth=1&from={}", enc(next)),
            "?from=nonsense".to_owned(),
        ] {
            let (status, body) = hierarchy(&server, &alice, &root, &query).await;
            assert_eq!(
                (status, body["errcode"].as_str()),
                (StatusCode::BAD_REQUEST, Some("M_INVALID_PARAM")),
                "{query}"
            );
        }

        // An emptied link is a removed one.
        link(&server, &alice, &root, &ss1, json!({})).await;
        let (_, body) = hierarchy(&server, &alice, &root, "").await;
        assert_eq!(room_ids(&body), vec![root.clone(), r1, r2]);
    }
}

#[tokio::test]
async fn the_hierarchy_shows_only_rooms_the_user_may_learn_about() {
    for kind in test_backends() {
        let server = TestServer::start(kind).await;
        let alice = server.register("alice").await;
        let bob = server.register("bob").await;
        let via = json!({"via": ["localhost"]});
        let root = space(&server, &alice, "Root", "public_chat").await;
        let r1 = room(&server, &alice, "R1", "private_chat").await;
        let ss1 = space(&server, &alice, "SS1", "private_chat").await;
        let r2 = room(&server, &alice, "R2", "public_chat").await;
        let r3 = room(&server, &alice, "R3", "private_chat").await;
        link(&server, &alice, &root, &r1, via.clone()).await;
        link(&server, &alice, &root, &ss1, via.clone()).await;
        link(&server, &alice, &ss1, &r2, via.clone()).await;
        link(&server, &alice, &ss1, &r3, via.clone()).await;
        // A private space nobody invited bob to is refused at the root.
        let (status, body) = hierarchy(&server, &bob, &ss1, "").await;
        assert_eq!(
            (status, body["errcode"].as_str()),
            (StatusCode::FORBIDDEN, Some("M_FORBIDDEN"))
        );
        let (status, body) = hierarchy(&server, &bob, "!unknown:localhost", "").await;
        assert_eq!(
            (status, body["errcode"].as_str()),
            (StatusCode::FORBIDDEN, Some("M_FORBIDDEN"))
        );

        // The public root is readable, its private children are not shown, but its links are.
        let (status, body) = hierarchy(&server, &bob, &root, "").await;
        assert_eq!(status, StatusCode::OK, "{body}");
        assert_eq!(room_ids(&body), vec![root.clone()]);
        assert_eq!(links_of(&body, &root), vec![r1.clone(), ss1.clone()]);

        let invite = |room: String| {
            let (server, token, bob_id) =
                (&server, alice.access_token.clone(), bob.user_id.clone());
            async move {
                let (status, body) = server
                    .post(
                        &format!("/_matrix/client/v3/rooms/{}/invite", enc(&room)),
                        &token,
                        json!({"user_id": bob_id}),
                    )
                    .await;
                assert_eq!(status, StatusCode::OK, "{body}");
            }
        };
        invite(r1.clone()).await;
        invite(r3.clone()).await;
        let (_, body) = hierarchy(&server, &bob, &root, "").await;
        assert_eq!(
            room_ids(&body),
            vec![root.clone(), r1.clone()],
            "ss1 still hides what is under it"
        );
        invite(ss1.clone()).await;
        let (_, body) = hierarchy(&server, &bob, &root, "").await;
        assert_eq!(room_ids(&body), vec![root, r1, ss1, r2, r3]);
    }
}

#[tokio::test]
async fn room_summary_for_who_may_learn_about_the_room() {
    for kind in test_backends() {
        let server = TestServer::start(kind).await;
        let alice = server.register("alice").await;
        let bob = server.register("bob").await;
        let space = space(&server, &alice, "space", "public_chat").await;
        let restricted = server
            .create_room(
                &alice,
                json!({"preset": "public_chat", "room_version": "8", "name": "gated",
                       "initial_state": [{"type": "m.room.join_rules", "state_key": "",
                         "content": {"join_rule": "restricted",
                                     "allow": [{"type": "m.room_membership", "room_id": space}]}}]}),
            )
            .await;
        let private = server
            .create_room(
                &alice,
                json!({"preset": "private_chat", "room_alias_name": "hidden"}),
            )
            .await;
        let public = server
            .create_room(
                &alice,
                json!({"preset": "public_chat", "room_alias_name": "open", "topic": "hi"}),
            )
            .await;
        let summary = |user: Option<&TestUser>, room: &str| {
            let path = format!("/_matrix/client/v1/room_summary/{}", enc(room));
            let token = user.map(|u| u.access_token.clone());
            let server = &server;
            async move {
                match token {
                    Some(token) => server.get(&path, &token).await,
                    None => {
                        let reply = server
                            .http
                            .get(server.client_url(&path))
                            .send()
                            .await
                            .unwrap();
                        let status = reply.status();
                        (status, reply.json::<Value>().await.unwrap())
                    }
                }
            }
        };

        let (status, body) = summary(Some(&alice), &restricted).await;
        assert_eq!(status, StatusCode::OK, "{kind:?}: {body}");
        assert_eq!(body["room_id"], restricted.as_str());
        assert_eq!(body["join_rule"], "restricted");
        assert_eq!(body["allowed_room_ids"], json!([space]));
        assert_eq!(body["room_version"], "8");
        assert_eq!(body["name"], "gated");
        assert_eq!(body["membership"], "join");
        assert_eq!(body["num_joined_members"], 1);

        let (status, body) = summary(Some(&alice), &private).await;
        assert_eq!(status, StatusCode::OK, "{body}");
        assert!(body.get("allowed_room_ids").is_none(), "{body}");
        // Bob may not learn about the private room: the same 404 as an unknown room.
        let (status, body) = summary(Some(&bob), &private).await;
        assert_eq!(
            (status, body["errcode"].as_str()),
            (StatusCode::NOT_FOUND, Some("M_NOT_FOUND"))
        );
        let (status, body) = summary(Some(&bob), "!unknown:localhost").await;
        assert_eq!(
            (status, body["errcode"].as_str()),
            (StatusCode::NOT_FOUND, Some("M_NOT_FOUND"))
        );
        // Bob is in no allowed room of the restricted one... until he joins the space.
        let (status, _) = summary(Some(&bob), &restricted).await;
        assert_eq!(status, StatusCode::NOT_FOUND);
        let (status, _) = server
            .post(
                &format!("/_matrix/client/v3/join/{}", enc(&space)),
                &bob.access_token,
                json!({}),
            )
            .await;
        assert_eq!(status, StatusCode::OK);
        let (status, body) = summary(Some(&bob), &restricted).await;
        assert_eq!(status, StatusCode::OK, "{body}");
        assert_eq!(body["membership"], "leave");

        // By alias; anonymously for a public room (no membership), never for a private one.
        let domain = alice.user_id.split_once(':').unwrap().1;
        let (status, body) = summary(Some(&bob), &format!("#open:{domain}")).await;
        assert_eq!(status, StatusCode::OK, "{body}");
        assert_eq!(body["room_id"], public.as_str());
        assert_eq!(body["topic"], "hi");
        let (status, body) = summary(None, &public).await;
        assert_eq!(status, StatusCode::OK, "{body}");
        assert!(body.get("membership").is_none(), "{body}");
        let (status, _) = summary(None, &format!("#hidden:{domain}")).await;
        assert_eq!(status, StatusCode::NOT_FOUND);
        server.stop().await;
    }
}

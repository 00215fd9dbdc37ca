//! Room aliases and the room directory over the client API, on both databases: creating,
//! resolving and deleting aliases and who may, a room's aliases, `createRoom`'s
//! `room_alias_name`, joining and knocking by alias, directory visibility, and `/publicRooms`
//! with its fields, search and pagination, each refusal with the spec's errcode.

use hmac::{Hmac, Mac};
use myelin_testkit::{SHARED_SECRET, TestServer, TestUser, enc, test_backends};
use reqwest::{Method, StatusCode};
use serde_json::{Value, json};

async fn create(server: &TestServer, user: &TestUser, body: Value) -> String {
    server.create_room(user, body).await
}

fn alias_path(alias: &str) -> String {
    format!("/_matrix/client/v3/directory/room/{}", enc(alias))
}

async fn put_alias(
    server: &TestServer,
    user: &TestUser,
    alias: &str,
    room: &str,
) -> (StatusCode, Value) {
    server
        .put(
            &alias_path(alias),
            &user.access_token,
            json!({"room_id": room}),
        )
        .await
}

async fn get_alias(server: &TestServer, alias: &str) -> (StatusCode, Value) {
    server
        .call(Method::GET, &alias_path(alias), None, None)
        .await
}

async fn delete_alias(server: &TestServer, user: &TestUser, alias: &str) -> (StatusCode, Value) {
    server
        .call(
            Method::DELETE,
            &alias_path(alias),
            Some(&user.access_token),
            None,
        )
        .await
}

async fn room_aliases(server: &TestServer, user: &TestUser, room: &str) -> (StatusCode, Value) {
    server
        .get(
            &format!("/_matrix/client/v3/rooms/{}/aliases", enc(room)),
            &user.access_token,
        )
        .await
}

async fn join(server: &TestServer, user: &TestUser, room_or_alias: &str) -> (StatusCode, Value) {
    server
        .post(
            &format!("/_matrix/client/v3/join/{}", enc(room_or_alias)),
            &user.access_token,
            json!({}),
        )
        .await
}

async fn state(
    server: &TestServer,
    user: &TestUser,
    room: &str,
    kind: &str,
) -> (StatusCode, Value) {
    server
        .get(
            &format!("/_matrix/client/v3/rooms/{}/state/{kind}/", enc(room)),
            &user.access_token,
        )
        .await
}

async fn put_state(server: &TestServer, user: &TestUser, room: &str, kind: &str, content: Value) {
    let (status, body) = server
        .put(
            &format!("/_matrix/client/v3/rooms/{}/state/{kind}/", enc(room)),
            &user.access_token,
            content,
        )
        .await;
    assert_eq!(status, 200, "{body}");
}

fn error(reply: (StatusCode, Value)) -> (StatusCode, Value) {
    (reply.0, reply.1["errcode"].clone())
}

/// Registers a server admin through shared-secret registration.
async fn register_admin(server: &TestServer, localpart: &str) -> TestUser {
    let (_, body) = server
        .call(Method::GET, "/_synapse/admin/v1/register", None, None)
        .await;
    let nonce = body["nonce"].as_str().unwrap().to_owned();
    let password = "admin-password";
    let mut mac = Hmac::<sha1::Sha1>::new_from_slice(SHARED_SECRET.as_bytes()).unwrap();
    mac.update(format!("{nonce}\0{localpart}\0{password}\0admin").as_bytes());
    let (status, body) = server
        .call(
            Method::POST,
            "/_synapse/admin/v1/register",
            None,
            Some(json!({
                "nonce": nonce, "username": localpart, "password": password, "admin": true,
                "mac": hex::encode(mac.finalize().into_bytes()),
            })),
        )
        .await;
    assert_eq!(status, 200, "{body}");
    TestUser {
        user_id: body["user_id"].as_str().unwrap().to_owned(),
        device_id: body["device_id"].as_str().unwrap().to_owned(),
        access_token: body["access_token"].as_str().unwrap().to_owned(),
        password: password.to_owned(),
    }
}

#[tokio::test]
async fn aliases_are_created_resolved_listed_and_deleted() {
    for kind in test_backends() {
        let server = TestServer::start(kind).await;
        let alice = server.register("alice").await;
        let bob = server.register("bob").await;
        let room = create(&server, &alice, json!({"preset": "public_chat"})).await;

        assert_eq!(
            put_alias(&server, &alice, "#lobby:localhost", &room)
                .await
                .0,
            200
        );
        let (status, body) = get_alias(&server, "#lobby:localhost").await;
        assert_eq!(status, 200, "{body}");
        assert_eq!(body, json!({"room_id": room, "servers": ["localhost"]}));

        // Refusals: taken, another server's, an unknown room, a room the user is not in, and a
        // string that is no alias.
        assert_eq!(
            error(put_alias(&server, &alice, "#lobby:localhost", &room).await),
            (StatusCode::CONFLICT, json!("M_UNKNOWN"))
        );
        assert_eq!(
            error(put_alias(&server, &alice, "#lobby:elsewhere.example", &room).await),
            (StatusCode::BAD_REQUEST, json!("M_INVALID_PARAM"))
        );
        assert_eq!(
            error(put_alias(&server, &alice, "#ghost:localhost", "!nosuchroom:localhost").await),
            (StatusCode::NOT_FOUND, json!("M_NOT_FOUND"))
        );
        assert_eq!(
            error(put_alias(&server, &bob, "#bobs:localhost", &room).await),
            (StatusCode::FORBIDDEN, json!("M_FORBIDDEN"))
        );
        assert_eq!(
            error(put_alias(&server, &alice, "no-hash:localhost", &room).await),
            (StatusCode::BAD_REQUEST, json!("M_INVALID_PARAM"))
        );
        assert_eq!(get_alias(&server, "#bobs:localhost").await.0, 404);

        // Aliases may hold any Unicode.
        let unicode = "#老虎Â£я🤨👉ඞ:localhost";
        assert_eq!(put_alias(&server, &alice, unicode, &room).await.0, 200);
        assert_eq!(get_alias(&server, unicode).await.1["room_id"], room);
        assert_eq!(delete_alias(&server, &alice, unicode).await.0, 200);

        // An unknown alias here; one of a server that cannot be reached (502, as Synapse).
        assert_eq!(
            error(get_alias(&server, "#nothing:localhost").await),
            (StatusCode::NOT_FOUND, json!("M_NOT_FOUND"))
        );
        assert_eq!(
            error(get_alias(&server, "#lobby:elsewhere.example").await),
            (StatusCode::BAD_GATEWAY, json!("M_UNKNOWN"))
        );

        // A room's aliases: for members; the room is not world readable.
        assert_eq!(
            put_alias(&server, &alice, "#hall:localhost", &room).await.0,
            200
        );
        let (status, body) = room_aliases(&server, &alice, &room).await;
        assert_eq!(status, 200, "{body}");
        assert_eq!(
            body["aliases"],
            json!(["#hall:localhost", "#lobby:localhost"])
        );
        assert_eq!(
            error(room_aliases(&server, &bob, &room).await),
            (StatusCode::FORBIDDEN, json!("M_FORBIDDEN"))
        );
        assert_eq!(
            error(room_aliases(&server, &bob, "!nosuchroom:localhost").await),
            (StatusCode::FORBIDDEN, json!("M_FORBIDDEN"))
        );
        put_state(
            &server,
            &alice,
            &room,
            "m.room.history_visibility",
            json!({"history_visibility": "world_readable"}),
        )
        .await;
        assert_eq!(room_aliases(&server, &bob, &room).await.0, 200);

        // Deleting: bob, once joined, may create and delete his own alias but not alice's;
        // alice, who may set the canonical alias, may delete bob's.
        assert_eq!(
            error(delete_alias(&server, &bob, "#lobby:localhost").await),
            (StatusCode::FORBIDDEN, json!("M_FORBIDDEN"))
        );
        assert_eq!(join(&server, &bob, &room).await.0, 200);
        assert_eq!(
            put_alias(&server, &bob, "#bobs:localhost", &room).await.0,
            200
        );
        assert_eq!(
            put_alias(&server, &bob, "#bobs2:localhost", &room).await.0,
            200
        );
        assert_eq!(
            error(delete_alias(&server, &bob, "#lobby:localhost").await),
            (StatusCode::FORBIDDEN, json!("M_FORBIDDEN"))
        );
        assert_eq!(delete_alias(&server, &bob, "#bobs:localhost").await.0, 200);
        assert_eq!(get_alias(&server, "#bobs:localhost").await.0, 404);
        assert_eq!(
            delete_alias(&server, &alice, "#bobs2:localhost").await.0,
            200
        );
        assert_eq!(
            error(delete_alias(&server, &alice, "#bobs2:localhost").await),
            (StatusCode::NOT_FOUND, json!("M_NOT_FOUND"))
        );
        // A server admin may delete any alias, in rooms they are not in.
        let admin = register_admin(&server, "root").await;
        assert_eq!(
            delete_alias(&server, &admin, "#hall:localhost").await.0,
            200
        );
        let (_, body) = room_aliases(&server, &alice, &room).await;
        assert_eq!(body["aliases"], json!(["#lobby:localhost"]));
        // A freed alias can be taken again.
        assert_eq!(
            put_alias(&server, &bob, "#bobs:localhost", &room).await.0,
            200
        );

        // A body without a room id, or no JSON at all.
        let (status, body) = server
            .put(
                &alias_path("#nobody:localhost"),
                &alice.access_token,
                json!({"room": room}),
            )
            .await;
        assert_eq!(
            (status, body["errcode"].clone()),
            (StatusCode::BAD_REQUEST, json!("M_BAD_JSON"))
        );
        let response = server
            .http
            .put(server.client_url(&alias_path("#nobody:localhost")))
            .bearer_auth(&alice.access_token)
            .body("{not json")
            .send()
            .await
            .unwrap();
        assert_eq!(response.status(), StatusCode::BAD_REQUEST);
        let body: Value = response.json().await.unwrap();
        assert_eq!(body["errcode"], "M_NOT_JSON");

        // Without a token: creating and deleting need one.
        let (status, body) = server
            .call(
                Method::PUT,
                &alias_path("#anon:localhost"),
                None,
                Some(json!({"room_id": room})),
            )
            .await;
        assert_eq!(
            (status, body["errcode"].clone()),
            (StatusCode::UNAUTHORIZED, json!("M_MISSING_TOKEN"))
        );
        server.stop().await;
    }
}

#[tokio::test]
async fn deleting_an_alias_takes_it_out_of_the_canonical_alias() {
    for kind in test_backends() {
        let server = TestServer::start(kind).await;
        let alice = server.register("alice").await;
        let bob = server.register("bob").await;
        let room = create(
            &server,
            &alice,
            json!({"preset": "public_chat", "room_alias_name": "main"}),
        )
        .await;
        assert_eq!(join(&server, &bob, &room).await.0, 200);
        assert_eq!(
            put_alias(&server, &alice, "#alt:localhost", &room).await.0,
            200
        );
        assert_eq!(
            put_alias(&server, &bob, "#bobalt:localhost", &room).await.0,
            200
        );
        put_state(
            &server,
            &alice,
            &room,
            "m.room.canonical_alias",
            json!({"alias": "#main:localhost", "alt_aliases": ["#alt:localhost", "#bobalt:localhost"]}),
        )
        .await;

        // Bob may delete his alias but not send the canonical alias: it stays listed there.
        assert_eq!(
            delete_alias(&server, &bob, "#bobalt:localhost").await.0,
            200
        );
        assert_eq!(get_alias(&server, "#bobalt:localhost").await.0, 404);
        assert_eq!(
            state(&server, &alice, &room, "m.room.canonical_alias")
                .await
                .1,
            json!({"alias": "#main:localhost", "alt_aliases": ["#alt:localhost", "#bobalt:localhost"]})
        );
        // Alice's deletions take the alias out.
        assert_eq!(delete_alias(&server, &alice, "#alt:localhost").await.0, 200);
        assert_eq!(
            state(&server, &alice, &room, "m.room.canonical_alias")
                .await
                .1,
            json!({"alias": "#main:localhost", "alt_aliases": ["#bobalt:localhost"]})
        );
        assert_eq!(
            delete_alias(&server, &alice, "#main:localhost").await.0,
            200
        );
        assert_eq!(
            state(&server, &alice, &room, "m.room.canonical_alias")
                .await
                .1,
            json!({"alt_aliases": ["#bobalt:localhost"]})
        );

        let solo = create(&server, &alice, json!({"room_alias_name": "solo"})).await;
        assert_eq!(
            delete_alias(&server, &alice, "#solo:localhost").await.0,
            200
        );
        assert_eq!(
            state(&server, &alice, &solo, "m.room.canonical_alias")
                .await
                .1,
            json!({})
        );
        server.stop().await;
    }
}

#[tokio::test]
async fn create_room_with_alias_name() {
    for kind in test_backends() {
        let server = TestServer::start(kind).await;
        let alice = server.register("alice").await;
        let room = create(
            &server,
            &alice,
            json!({"preset": "public_chat", "room_alias_name": "town-square"}),
        )
        .await;
        assert_eq!(
            get_alias(&server, "#town-square:localhost").await.1["room_id"],
            room
        );
        let (status, content) = state(&server, &alice, &room, "m.room.canonical_alias").await;
        assert_eq!(status, 200, "{content}");
        assert_eq!(content, json!({"alias": "#town-square:localhost"}));

        // The spec's order: the canonical alias right after the power levels.
        let (status, page) = server
            .get(
                &format!(
                    "/_matrix/client/v3/rooms/{}/messages?dir=f&limit=20",
                    enc(&room)
                ),
                &alice.access_token,
            )
            .await;
        assert_eq!(status, 200, "{page}");
        let types: Vec<&str> = page["chunk"]
            .as_array()
            .unwrap()
            .iter()
            .map(|e| e["type"].as_str().unwrap())
            .collect();
        assert_eq!(
            &types[..5],
            [
                "m.room.create",
                "m.room.member",
                "m.room.power_levels",
                "m.room.canonical_alias",
                "m.room.join_rules"
            ],
            "{types:?}"
        );

        // A taken alias fails before any room is created.
        let (_, before) = server
            .get("/_matrix/client/v3/joined_rooms", &alice.access_token)
            .await;
        let (status, body) = server
            .post(
                "/_matrix/client/v3/createRoom",
                &alice.access_token,
                json!({"room_alias_name": "town-square"}),
            )
            .await;
        assert_eq!(
            (status, body["errcode"].clone()),
            (StatusCode::BAD_REQUEST, json!("M_ROOM_IN_USE"))
        );
        let (_, after) = server
            .get("/_matrix/client/v3/joined_rooms", &alice.access_token)
            .await;
        assert_eq!(before, after);

        // A name that makes no alias.
        let too_long = "a".repeat(256);
        for bad in ["has:colon", "", "has space", "#hash", &too_long] {
            let (status, body) = server
                .post(
                    "/_matrix/client/v3/createRoom",
                    &alice.access_token,
                    json!({"room_alias_name": bad}),
                )
                .await;
            assert_eq!(
                (status, body["errcode"].clone()),
                (StatusCode::BAD_REQUEST, json!("M_INVALID_PARAM")),
                "{bad:?}"
            );
        }
        let (_, after_bad) = server
            .get("/_matrix/client/v3/joined_rooms", &alice.access_token)
            .await;
        assert_eq!(before, after_bad);
        server.stop().await;
    }
}

#[tokio::test]
async fn join_and_knock_by_alias() {
    for kind in test_backends() {
        let server = TestServer::start(kind).await;
        let alice = server.register("alice").await;
        let bob = server.register("bob").await;
        let room = create(
            &server,
            &alice,
            json!({"preset": "public_chat", "room_alias_name": "open"}),
        )
        .await;
        let (status, body) = join(&server, &bob, "#open:localhost").await;
        assert_eq!(status, 200, "{body}");
        assert_eq!(body["room_id"], room);
        let (_, joined) = server
            .get("/_matrix/client/v3/joined_rooms", &bob.access_token)
            .await;
        assert_eq!(joined["joined_rooms"], json!([room]));

        assert_eq!(
            error(join(&server, &bob, "#nowhere:localhost").await),
            (StatusCode::NOT_FOUND, json!("M_NOT_FOUND"))
        );
        // The alias's server cannot be reached to resolve it.
        assert_eq!(
            error(join(&server, &bob, "#open:elsewhere.example").await),
            (StatusCode::BAD_GATEWAY, json!("M_UNKNOWN"))
        );

        let knock_room = create(
            &server,
            &alice,
            json!({
                "preset": "private_chat",
                "room_alias_name": "knockers",
                "initial_state": [{"type": "m.room.join_rules", "state_key": "", "content": {"join_rule": "knock"}}],
            }),
        )
        .await;
        let (status, body) = server
            .post(
                &format!("/_matrix/client/v3/knock/{}", enc("#knockers:localhost")),
                &bob.access_token,
                json!({"reason": "let me in"}),
            )
            .await;
        assert_eq!(status, 200, "{body}");
        assert_eq!(body["room_id"], knock_room);
        let (_, member) = server
            .get(
                &format!(
                    "/_matrix/client/v3/rooms/{}/state/m.room.member/{}",
                    enc(&knock_room),
                    enc(&bob.user_id)
                ),
                &alice.access_token,
            )
            .await;
        assert_eq!(member["membership"], "knock");
        let (status, body) = server
            .post(
                &format!("/_matrix/client/v3/knock/{}", enc("#nowhere:localhost")),
                &bob.access_token,
                json!({}),
            )
            .await;
        assert_eq!(
            (status, body["errcode"].clone()),
            (StatusCode::NOT_FOUND, json!("M_NOT_FOUND"))
        );
        server.stop().await;
    }
}

fn list_path(room: &str) -> String {
    format!("/_matrix/client/v3/directory/list/room/{}", enc(room))
}

async fn visibility(server: &TestServer, room: &str) -> (StatusCode, Value) {
    server.call(Method::GET, &list_path(room), None, None).await
}

async fn set_visibility(
    server: &TestServer,
    user: &TestUser,
    room: &str,
    visibility: &str,
) -> (StatusCode, Value) {
    server
        .put(
            &list_path(room),
            &user.access_token,
            json!({"visibility": visibility}),
        )
        .await
}

#[tokio::test]
async fn directory_visibility() {
    for kind in test_backends() {
        let server = TestServer::start(kind).await;
        let alice = server.register("alice").await;
        let bob = server.register("bob").await;
        let private = create(&server, &alice, json!({"preset": "public_chat"})).await;
        let public = create(&server, &alice, json!({"visibility": "public"})).await;

        assert_eq!(
            visibility(&server, &private).await,
            (StatusCode::OK, json!({"visibility": "private"}))
        );
        assert_eq!(
            visibility(&server, &public).await,
            (StatusCode::OK, json!({"visibility": "public"}))
        );
        assert_eq!(
            error(visibility(&server, "!nosuchroom:localhost").await),
            (StatusCode::NOT_FOUND, json!("M_NOT_FOUND"))
        );

        // Not joined, then joined without the power to set the canonical alias: refused.
        assert_eq!(
            error(set_visibility(&server, &bob, &private, "public").await),
            (StatusCode::FORBIDDEN, json!("M_FORBIDDEN"))
        );
        assert_eq!(join(&server, &bob, &private).await.0, 200);
        assert_eq!(
            error(set_visibility(&server, &bob, &private, "public").await),
            (StatusCode::FORBIDDEN, json!("M_FORBIDDEN"))
        );
        assert_eq!(
            visibility(&server, &private).await.1["visibility"],
            "private"
        );

        assert_eq!(
            set_visibility(&server, &alice, &private, "public").await.0,
            200
        );
        assert_eq!(
            visibility(&server, &private).await.1["visibility"],
            "public"
        );
        assert_eq!(
            set_visibility(&server, &alice, &public, "private").await.0,
            200
        );
        assert_eq!(
            visibility(&server, &public).await.1["visibility"],
            "private"
        );

        // A server admin may, without being in the room.
        let admin = register_admin(&server, "root").await;
        assert_eq!(
            set_visibility(&server, &admin, &public, "public").await.0,
            200
        );
        assert_eq!(visibility(&server, &public).await.1["visibility"], "public");

        assert_eq!(
            error(set_visibility(&server, &alice, "!nosuchroom:localhost", "public").await),
            (StatusCode::NOT_FOUND, json!("M_NOT_FOUND"))
        );
        assert_eq!(
            error(set_visibility(&server, &alice, &public, "sideways").await),
            (StatusCode::BAD_REQUEST, json!("M_INVALID_PARAM"))
        );
        server.stop().await;
    }
}

async fn public_rooms_get(server: &TestServer, query: &str) -> (StatusCode, Value) {
    server
        .call(
            Method::GET,
            &format!("/_matrix/client/v3/publicRooms{query}"),
            None,
            None,
        )
        .await
}

fn room_ids(page: &Value) -> Vec<String> {
    page["chunk"]
        .as_array()
        .unwrap()
        .iter()
        .map(|r| r["room_id"].as_str().unwrap().to_owned())
        .collect()
}

#[tokio::test]
async fn public_rooms_lists_searches_and_pages() {
    for kind in test_backends() {
        let server = TestServer::start(kind).await;
        let alice = server.register("alice").await;
        let mut others = Vec::new();
        for name in ["bob", "carol", "dave"] {
            others.push(server.register(name).await);
        }

        // Five published rooms with 1 to 4 members, and one unpublished room.
        let big = create(
            &server,
            &alice,
            json!({"visibility": "public", "preset": "public_chat", "name": "Big Hall",
                   "topic": "Everyone meets here", "room_alias_name": "hall"}),
        )
        .await;
        let medium = create(
            &server,
            &alice,
            json!({"visibility": "public", "preset": "public_chat", "name": "Gardening"}),
        )
        .await;
        let small_a = create(
            &server,
            &alice,
            json!({"visibility": "public", "preset": "public_chat", "topic": "about CATS"}),
        )
        .await;
        let small_b = create(
            &server,
            &alice,
            json!({"visibility": "public", "preset": "public_chat"}),
        )
        .await;
        let space = create(
            &server,
            &alice,
            json!({"visibility": "public", "preset": "private_chat", "creation_content": {"type": "m.space"}}),
        )
        .await;
        let hidden = create(
            &server,
            &alice,
            json!({"preset": "public_chat", "name": "Big secret"}),
        )
        .await;
        for user in &others {
            assert_eq!(join(&server, user, &big).await.0, 200);
        }
        for user in &others[..2] {
            assert_eq!(join(&server, user, &medium).await.0, 200);
        }
        assert_eq!(join(&server, &others[0], &small_a).await.0, 200);
        assert_eq!(join(&server, &others[0], &small_b).await.0, 200);
        put_state(
            &server,
            &alice,
            &big,
            "m.room.avatar",
            json!({"url": "mxc://localhost/abc"}),
        )
        .await;
        put_state(
            &server,
            &alice,
            &big,
            "m.room.history_visibility",
            json!({"history_visibility": "world_readable"}),
        )
        .await;

        let (status, page) = public_rooms_get(&server, "").await;
        assert_eq!(status, 200, "{page}");
        let mut smalls = [small_a.clone(), small_b.clone()];
        smalls.sort();
        assert_eq!(
            room_ids(&page),
            [
                big.clone(),
                medium.clone(),
                smalls[0].clone(),
                smalls[1].clone(),
                space.clone()
            ],
            "most members first, then by room id; unpublished rooms left out"
        );
        assert!(!room_ids(&page).contains(&hidden));
        assert_eq!(page["total_room_count_estimate"], 5);
        assert!(
            page.get("next_batch").is_none() && page.get("prev_batch").is_none(),
            "{page}"
        );
        let entry = &page["chunk"][0];
        assert_eq!(entry["name"], "Big Hall");
        assert_eq!(entry["topic"], "Everyone meets here");
        assert_eq!(entry["canonical_alias"], "#hall:localhost");
        assert_eq!(entry["num_joined_members"], 4);
        assert_eq!(entry["world_readable"], true);
        assert_eq!(entry["guest_can_join"], false);
        assert_eq!(entry["avatar_url"], "mxc://localhost/abc");
        // `join_rule` is there even when it is the spec's default.
        assert_eq!(entry["join_rule"], "public");
        assert!(entry.get("room_type").is_none(), "{entry}");
        let space_entry = &page["chunk"][4];
        assert_eq!(space_entry["room_type"], "m.space");
        assert_eq!(space_entry["join_rule"], "invite");
        assert_eq!(space_entry["guest_can_join"], true);
        assert_eq!(space_entry["num_joined_members"], 1);
        assert_eq!(space_entry["world_readable"], false);

        // Pages of two forward through everything exactly once, then back.
        let mut seen = Vec::new();
        let mut query = "?limit=2".to_owned();
        let mut tokens = Vec::new();
        loop {
            let (status, page) = public_rooms_get(&server, &query).await;
            assert_eq!(status, 200, "{page}");
            assert_eq!(page["total_room_count_estimate"], 5);
            seen.extend(room_ids(&page));
            tokens.push(page.clone());
            match page["next_batch"].as_str() {
                Some(next) => query = format!("?limit=2&since={next}"),
                None => break,
            }
        }
        assert_eq!(seen, room_ids(&public_rooms_get(&server, "").await.1));
        assert_eq!(tokens.len(), 3);
        assert!(tokens[0].get("prev_batch").is_none());
        let prev = tokens[2]["prev_batch"].as_str().unwrap();
        let (_, back) = public_rooms_get(&server, &format!("?limit=2&since={prev}")).await;
        assert_eq!(room_ids(&back), room_ids(&tokens[1]));
        let prev = back["prev_batch"].as_str().unwrap();
        let (_, back) = public_rooms_get(&server, &format!("?limit=2&since={prev}")).await;
        assert_eq!(room_ids(&back), room_ids(&tokens[0]));
        assert!(back.get("prev_batch").is_none(), "{back}");

        // A room that grows moves up, and a token still means "after this room".
        let next = tokens[0]["next_batch"].as_str().unwrap().to_owned();
        let (status, body) = server
            .post(
                &format!("/_matrix/client/v3/rooms/{}/invite", enc(&space)),
                &alice.access_token,
                json!({"user_id": others[2].user_id}),
            )
            .await;
        assert_eq!(status, 200, "{body}");
        assert_eq!(join(&server, &others[2], &space).await.0, 200);
        let (_, page) = public_rooms_get(&server, &format!("?limit=10&since={next}")).await;
        let mut twos = vec![small_a.clone(), small_b.clone(), space.clone()];
        twos.sort();
        assert_eq!(room_ids(&page), twos);

        // POST: search by name, topic and canonical alias, case-insensitively; also paged.
        let search = |term: &str| json!({"filter": {"generic_search_term": term}});
        for (term, expected) in [
            ("big", vec![big.clone()]),
            ("cats", vec![small_a.clone()]),
            ("#HALL", vec![big.clone()]),
            ("garden", vec![medium.clone()]),
            ("nothing like this", vec![]),
        ] {
            let (status, page) = server
                .post(
                    "/_matrix/client/v3/publicRooms",
                    &alice.access_token,
                    search(term),
                )
                .await;
            assert_eq!(status, 200, "{page}");
            assert_eq!(room_ids(&page), expected, "{term}");
            assert_eq!(page["total_room_count_estimate"], expected.len());
        }
        let (_, page) = server
            .post(
                "/_matrix/client/v3/publicRooms",
                &alice.access_token,
                json!({"limit": 1, "filter": {"generic_search_term": "e"}}),
            )
            .await;
        assert_eq!(room_ids(&page), vec![big.clone()]);
        let (_, page) = server
            .post(
                "/_matrix/client/v3/publicRooms",
                &alice.access_token,
                json!({"limit": 1, "since": page["next_batch"], "filter": {"generic_search_term": "e"}}),
            )
            .await;
        assert_eq!(room_ids(&page), vec![medium.clone()]);
        let (_, page) = server
            .post(
                "/_matrix/client/v3/publicRooms",
                &alice.access_token,
                json!({"filter": {"room_types": ["m.space"]}}),
            )
            .await;
        assert_eq!(room_ids(&page), vec![space.clone()]);
        let (_, page) = server
            .post(
                "/_matrix/client/v3/publicRooms",
                &alice.access_token,
                json!({"third_party_instance_id": "irc"}),
            )
            .await;
        assert_eq!(page["chunk"], json!([]));

        // Withdrawn from the directory: gone from the list.
        assert_eq!(
            set_visibility(&server, &alice, &medium, "private").await.0,
            200
        );
        let (_, page) = public_rooms_get(&server, "").await;
        assert!(!room_ids(&page).contains(&medium));
        assert_eq!(page["total_room_count_estimate"], 4);

        // This server by name is fine; one that cannot be reached is a 502; tokens must be
        // ours; POST needs a token.
        assert_eq!(public_rooms_get(&server, "?server=localhost").await.0, 200);
        assert_eq!(
            error(public_rooms_get(&server, "?server=elsewhere.example").await),
            (StatusCode::BAD_GATEWAY, json!("M_UNKNOWN"))
        );
        assert_eq!(
            error(public_rooms_get(&server, "?since=bogus").await),
            (StatusCode::BAD_REQUEST, json!("M_INVALID_PARAM"))
        );
        let (status, body) = server
            .call(
                Method::PUT,
                "/_matrix/client/v3/publicRooms",
                Some(&alice.access_token),
                Some(json!({})),
            )
            .await;
        assert_eq!(
            (status, body["errcode"].clone()),
            (StatusCode::METHOD_NOT_ALLOWED, json!("M_UNRECOGNIZED"))
        );
        let (status, body) = server
            .call(
                Method::POST,
                "/_matrix/client/v3/publicRooms",
                None,
                Some(json!({})),
            )
            .await;
        assert_eq!(
            (status, body["errcode"].clone()),
            (StatusCode::UNAUTHORIZED, json!("M_MISSING_TOKEN"))
        );
        server.stop().await;
    }
}

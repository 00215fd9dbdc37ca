//! Invite filtering (MSC4155, `org.matrix.msc4155.invite_permission_config`), on both
//! databases: the invitee's rules refuse blocked invites (403 `M_INVITE_BLOCKED`, nothing
//! stored) and take ignored ones without showing them, for invites from a local user
//! (`/invite`, `PUT /state/m.room.member`, `createRoom`'s invite list) and from another server
//! (two real Myelin servers: inbound `/invite`, whose refusal reaches the inviter's client with
//! its errcode); user rules beat server rules both ways.

use myelin_testkit::{
    TestServer, TestUser, enc,
    federation::{TestCa, start_federation},
    test_backends,
};
use reqwest::StatusCode;
use serde_json::{Value, json};

const CONFIG: &str = "org.matrix.msc4155.invite_permission_config";

async fn set_config(server: &TestServer, user: &TestUser, config: Value) {
    let (status, body) = server
        .put(
            &format!(
                "/_matrix/client/v3/user/{}/account_data/{CONFIG}",
                enc(&user.user_id)
            ),
            &user.access_token,
            config,
        )
        .await;
    assert_eq!(status, StatusCode::OK, "{body}");
}

async fn invite(
    server: &TestServer,
    inviter: &TestUser,
    room: &str,
    invitee: &str,
) -> (StatusCode, Value) {
    server
        .post(
            &format!("/_matrix/client/v3/rooms/{}/invite", enc(room)),
            &inviter.access_token,
            json!({"user_id": invitee}),
        )
        .await
}

/// The rooms `user`'s initial `/sync` shows them invited to.
async fn shown_invites(server: &TestServer, user: &TestUser) -> Vec<String> {
    let (status, sync) = server
        .get("/_matrix/client/v3/sync?timeout=0", &user.access_token)
        .await;
    assert_eq!(status, StatusCode::OK, "{sync}");
    sync["rooms"]["invite"]
        .as_object()
        .map(|rooms| rooms.keys().cloned().collect())
        .unwrap_or_default()
}

/// `user`'s membership of `room` as `reader` (in the room) sees it.
async fn membership(
    server: &TestServer,
    reader: &TestUser,
    room: &str,
    user: &str,
) -> Option<String> {
    let (status, body) = server
        .get(
            &format!(
                "/_matrix/client/v3/rooms/{}/state/m.room.member/{}",
                enc(room),
                enc(user)
            ),
            &reader.access_token,
        )
        .await;
    (status == StatusCode::OK).then(|| body["membership"].as_str().unwrap_or_default().to_owned())
}

#[tokio::test]
async fn local_invites_follow_the_invitees_rules() {
    for kind in test_backends() {
        let server = TestServer::start(kind).await;
        let alice = server.register("alice").await;
        let bob = server.register("bob").await;
        let carol = server.register("carol").await;
        let private = json!({"preset": "private_chat"});

        // The server says it enforces the rules.
        let (_, caps) = server
            .get("/_matrix/client/v3/capabilities", &alice.access_token)
            .await;
        assert_eq!(
            caps["capabilities"]["org.matrix.msc4155.invite_permission_config_enforced"]["enabled"],
            true,
            "{kind:?}: {caps}"
        );

        // Blocked by user: 403 M_INVITE_BLOCKED, no invite stored or shown; carol is not
        // blocked.
        set_config(&server, &alice, json!({"blocked_users": [bob.user_id]})).await;
        let room = server.create_room(&bob, private.clone()).await;
        let (status, body) = invite(&server, &bob, &room, &alice.user_id).await;
        assert_eq!(status, StatusCode::FORBIDDEN, "{kind:?}: {body}");
        assert_eq!(body["errcode"], "M_INVITE_BLOCKED", "{kind:?}: {body}");
        assert_eq!(
            membership(&server, &bob, &room, &alice.user_id).await,
            None,
            "{kind:?}"
        );
        // The same through PUT /state/m.room.member.
        let (status, body) = server
            .put(
                &format!(
                    "/_matrix/client/v3/rooms/{}/state/m.room.member/{}",
                    enc(&room),
                    enc(&alice.user_id)
                ),
                &bob.access_token,
                json!({"membership": "invite"}),
            )
            .await;
        assert_eq!(status, StatusCode::FORBIDDEN, "{kind:?}: {body}");
        // And createRoom's invite list: refused before any room exists.
        let (_, before) = server
            .get("/_matrix/client/v3/joined_rooms", &bob.access_token)
            .await;
        let (status, body) = server
            .post(
                "/_matrix/client/v3/createRoom",
                &bob.access_token,
                json!({"invite": [alice.user_id]}),
            )
            .await;
        assert_eq!(status, StatusCode::FORBIDDEN, "{kind:?}: {body}");
        let (_, after) = server
            .get("/_matrix/client/v3/joined_rooms", &bob.access_token)
            .await;
        assert_eq!(before, after, "{kind:?}: no room was created");
        let from_carol = server.create_room(&carol, private.clone()).await;
        let (status, body) = invite(&server, &carol, &from_carol, &alice.user_id).await;
        assert_eq!(status, StatusCode::OK, "{kind:?}: {body}");
        assert_eq!(
            shown_invites(&server, &alice).await,
            vec![from_carol.clone()],
            "{kind:?}"
        );

        // Blocked by server (a glob): everyone of this server, carol too.
        let other = server.register("alice2").await;
        let host = server.name().split(':').next().unwrap().to_owned();
        let glob = format!("{}*", &host[..2]);
        set_config(&server, &other, json!({"blocked_servers": [glob]})).await;
        let (status, body) = invite(&server, &carol, &from_carol, &other.user_id).await;
        assert_eq!(status, StatusCode::FORBIDDEN, "{kind:?}: {body}");
        assert_eq!(
            shown_invites(&server, &other).await,
            Vec::<String>::new(),
            "{kind:?}"
        );

        // An allowed user beats the blocked server; the others stay blocked.
        set_config(
            &server,
            &other,
            json!({"allowed_users": [bob.user_id], "blocked_servers": [host]}),
        )
        .await;
        let (status, body) = invite(&server, &carol, &from_carol, &other.user_id).await;
        assert_eq!(status, StatusCode::FORBIDDEN, "{kind:?}: {body}");
        let from_bob = server.create_room(&bob, private.clone()).await;
        let (status, body) = invite(&server, &bob, &from_bob, &other.user_id).await;
        assert_eq!(status, StatusCode::OK, "{kind:?}: {body}");
        assert_eq!(
            shown_invites(&server, &other).await,
            vec![from_bob.clone()],
            "{kind:?}"
        );
        // And a blocked user of an allowed server stays blocked.
        let fourth = server.register("alice4").await;
        set_config(
            &server,
            &fourth,
            json!({"blocked_users": [carol.user_id], "allowed_servers": [host]}),
        )
        .await;
        let (status, body) = invite(&server, &carol, &from_carol, &fourth.user_id).await;
        assert_eq!(status, StatusCode::FORBIDDEN, "{kind:?}: {body}");
        let (status, body) = invite(&server, &bob, &from_bob, &fourth.user_id).await;
        assert_eq!(status, StatusCode::OK, "{kind:?}: {body}");

        // Ignored: the invite is taken (the room has it) but not shown to the invitee.
        let third = server.register("alice3").await;
        set_config(&server, &third, json!({"ignored_users": [bob.user_id]})).await;
        let (status, body) = invite(&server, &bob, &from_bob, &third.user_id).await;
        assert_eq!(status, StatusCode::OK, "{kind:?}: {body}");
        assert_eq!(
            membership(&server, &bob, &from_bob, &third.user_id)
                .await
                .as_deref(),
            Some("invite"),
            "{kind:?}"
        );
        assert_eq!(
            shown_invites(&server, &third).await,
            Vec::<String>::new(),
            "{kind:?}"
        );
        // Lifting the rule shows it at once (the cached account data follows the write).
        set_config(&server, &third, json!({})).await;
        assert_eq!(
            shown_invites(&server, &third).await,
            vec![from_bob.clone()],
            "{kind:?}"
        );
        server.stop().await;
    }
}

#[tokio::test]
async fn invites_from_another_server_follow_the_invitees_rules() {
    for kind in test_backends() {
        let ca = TestCa::new();
        let servers = start_federation(kind, &ca, &["hs1.test", "hs2.test"], |_, _| {}).await;
        let (hs1, hs2) = (&servers[0], &servers[1]);
        let alice = hs1.register("alice").await;
        let bob = hs2.register("bob").await;
        let evil_bob = hs2.register("evil_bob").await;
        let private = json!({"preset": "private_chat"});

        // Blocked by user: hs1 refuses the inbound /invite, hs2 gives bob 403, and hs1 stores
        // nothing of the room.
        set_config(hs1, &alice, json!({"blocked_users": [bob.user_id]})).await;
        let room = hs2.create_room(&bob, private.clone()).await;
        let (status, body) = invite(hs2, &bob, &room, &alice.user_id).await;
        assert_eq!(status, StatusCode::FORBIDDEN, "{kind:?}: {body}");
        assert_eq!(body["errcode"], "M_INVITE_BLOCKED", "{kind:?}: {body}");
        assert!(hs1.store().room(&room).await.unwrap().is_none(), "{kind:?}");
        assert_eq!(
            membership(hs2, &bob, &room, &alice.user_id).await,
            None,
            "{kind:?}"
        );
        assert_eq!(
            shown_invites(hs1, &alice).await,
            Vec::<String>::new(),
            "{kind:?}"
        );

        // Blocked by server glob: evil_bob too; an allowed user of it (bob) gets through.
        set_config(
            hs1,
            &alice,
            json!({"allowed_users": [bob.user_id], "blocked_servers": ["hs2.*"]}),
        )
        .await;
        let evil_room = hs2.create_room(&evil_bob, private.clone()).await;
        let (status, body) = invite(hs2, &evil_bob, &evil_room, &alice.user_id).await;
        assert_eq!(status, StatusCode::FORBIDDEN, "{kind:?}: {body}");
        assert!(
            hs1.store().room(&evil_room).await.unwrap().is_none(),
            "{kind:?}"
        );
        let (status, body) = invite(hs2, &bob, &room, &alice.user_id).await;
        assert_eq!(status, StatusCode::OK, "{kind:?}: {body}");
        assert_eq!(
            shown_invites(hs1, &alice).await,
            vec![room.clone()],
            "{kind:?}"
        );

        // A blocked user of an allowed server: refused.
        let other = hs1.register("alice2").await;
        set_config(
            hs1,
            &other,
            json!({"blocked_users": [evil_bob.user_id], "allowed_servers": ["hs2.test"]}),
        )
        .await;
        let (status, body) = invite(hs2, &evil_bob, &evil_room, &other.user_id).await;
        assert_eq!(status, StatusCode::FORBIDDEN, "{kind:?}: {body}");
        assert!(
            hs1.store().room(&evil_room).await.unwrap().is_none(),
            "{kind:?}"
        );

        // Ignored server: taken (hs1 stores it, hs2 appends it) but not shown.
        set_config(hs1, &other, json!({"ignored_servers": ["hs2.test"]})).await;
        let (status, body) = invite(hs2, &evil_bob, &evil_room, &other.user_id).await;
        assert_eq!(status, StatusCode::OK, "{kind:?}: {body}");
        assert!(
            hs1.store().room(&evil_room).await.unwrap().is_some(),
            "{kind:?}"
        );
        assert_eq!(
            membership(hs2, &evil_bob, &evil_room, &other.user_id)
                .await
                .as_deref(),
            Some("invite"),
            "{kind:?}"
        );
        assert_eq!(
            shown_invites(hs1, &other).await,
            Vec::<String>::new(),
            "{kind:?}"
        );
        // Positive control: without the rule the same invite shows.
        set_config(hs1, &other, json!({})).await;
        assert_eq!(
            shown_invites(hs1, &other).await,
            vec![evil_room.clone()],
            "{kind:?}"
        );

        for server in servers {
            server.stop().await;
        }
    }
}

//! Every stable room version, 1 to 12, created and used by local users on both databases:
//! createRoom, joins, leaves, invites, messages, state, redactions (own-event and power rules),
//! `/event`, `/messages`, `/sync`; knocking from version 7 and restricted joins from version 8
//! (refused before); and the stored PDUs checked with the room-version crate: the event id in the
//! PDU and `[id, {sha256}]` references in rooms 1 and 2, hash-derived ids from 3, content hashes
//! everywhere.

use myelin_room_version::{
    canonical::{content_hash, event_id, parse_object, reference_hash_base64},
    version::RoomVersion,
};
use myelin_testkit::{TestServer, TestUser, enc, test_backends};
use reqwest::StatusCode;
use serde_json::{Value, json};

const VERSIONS: [&str; 12] = [
    "1", "2", "3", "4", "5", "6", "7", "8", "9", "10", "11", "12",
];

fn number(version: &str) -> u32 {
    version.parse().unwrap()
}

async fn send_text(server: &TestServer, user: &TestUser, room: &str, body: &str) -> String {
    static TXN: std::sync::atomic::AtomicU64 = std::sync::atomic::AtomicU64::new(0);
    let txn = TXN.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
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

async fn state(server: &TestServer, user: &TestUser, room: &str, kind: &str, key: &str) -> Value {
    let (status, body) = server
        .get(
            &format!(
                "/_matrix/client/v3/rooms/{}/state/{kind}/{}",
                enc(room),
                enc(key)
            ),
            &user.access_token,
        )
        .await;
    assert_eq!(status, StatusCode::OK, "{kind}: {body}");
    body
}

/// The stored PDU of `id`, checked against the room version's rules for ids, references and
/// content hashes. Returns it.
async fn check_stored_pdu(server: &TestServer, version: &str, id: &str, domain: &str) -> Value {
    let store = &server.server.as_ref().expect("running").services.store;
    let row = store.event(id).await.unwrap().expect("stored");
    let room_version = RoomVersion::get(version).unwrap();
    let object = parse_object(row.json.as_bytes()).unwrap();
    let pdu: Value = serde_json::from_str(&row.json).unwrap();
    assert_eq!(
        pdu["hashes"]["sha256"],
        content_hash(&object),
        "v{version} {id}: content hash"
    );
    assert_eq!(event_id(&object, room_version).unwrap(), id, "v{version}");
    for key in ["prev_events", "auth_events"] {
        let references = pdu[key].as_array().unwrap();
        assert!(!references.is_empty(), "v{version} {id}: {key}");
        for reference in references {
            if number(version) <= 2 {
                // `[event_id, {"sha256": reference hash}]`, the hash that of the stored event.
                let cited = reference[0].as_str().expect("a pair");
                let cited_row = store.event(cited).await.unwrap().expect("cited is stored");
                let cited_object = parse_object(cited_row.json.as_bytes()).unwrap();
                assert_eq!(
                    reference[1]["sha256"],
                    reference_hash_base64(&cited_object, room_version).unwrap(),
                    "v{version} {id}: {key} hash of {cited}"
                );
            } else {
                assert!(reference.is_string(), "v{version} {id}: {key} {reference}");
            }
        }
    }
    if number(version) <= 2 {
        assert_eq!(pdu["event_id"], id, "v{version}: the id is in the PDU");
        assert!(id.ends_with(&format!(":{domain}")), "v{version}: {id}");
    } else {
        assert!(
            pdu.get("event_id").is_none(),
            "v{version}: no id in the PDU"
        );
        assert!(!id.contains(':'), "v{version}: {id}");
    }
    pdu
}

#[tokio::test]
async fn every_stable_version_is_created_and_used_locally() {
    for kind in test_backends() {
        let server = TestServer::start(kind).await;
        let alice = server.register("alice").await;
        let bob = server.register("bob").await;
        let domain = alice.user_id.split_once(':').unwrap().1.to_owned();
        for version in VERSIONS {
            let room = server
                .create_room(
                    &alice,
                    json!({"room_version": version, "preset": "public_chat", "name": "r"}),
                )
                .await;
            let create = state(&server, &alice, &room, "m.room.create", "").await;
            assert_eq!(create["room_version"], version, "{kind:?}");
            if number(version) <= 10 {
                assert_eq!(create["creator"], alice.user_id, "v{version}");
            } else {
                assert!(create.get("creator").is_none(), "v{version}: {create}");
            }

            let (status, body) = membership(&server, &bob, &room, "join", json!({})).await;
            assert_eq!(status, StatusCode::OK, "v{version}: {body}");
            let hello = send_text(&server, &alice, &room, "hello").await;
            let from_bob = send_text(&server, &bob, &room, "from bob").await;
            let (status, body) = server
                .put(
                    &format!(
                        "/_matrix/client/v3/rooms/{}/state/m.room.topic/",
                        enc(&room)
                    ),
                    &alice.access_token,
                    json!({"topic": format!("version {version}")}),
                )
                .await;
            assert_eq!(status, StatusCode::OK, "v{version}: {body}");
            let topic = body["event_id"].as_str().unwrap().to_owned();
            for id in [&hello, &from_bob, &topic] {
                check_stored_pdu(&server, version, id, &domain).await;
            }

            // Redactions: bob may not redact alice's event, alice may redact bob's.
            let redact = |user: &TestUser, target: &str, txn: &str| {
                let path = format!(
                    "/_matrix/client/v3/rooms/{}/redact/{}/{txn}",
                    enc(&room),
                    enc(target)
                );
                let token = user.access_token.clone();
                let server = &server;
                async move { server.put(&path, &token, json!({"reason": "r"})).await }
            };
            let (status, body) = redact(&bob, &hello, "t1").await;
            assert_eq!(status, StatusCode::FORBIDDEN, "v{version}: {body}");
            let (status, body) = redact(&alice, &from_bob, "t2").await;
            assert_eq!(status, StatusCode::OK, "v{version}: {body}");
            let redaction = body["event_id"].as_str().unwrap().to_owned();
            let stored_redaction = check_stored_pdu(&server, version, &redaction, &domain).await;
            if number(version) <= 10 {
                assert_eq!(stored_redaction["redacts"], from_bob.as_str(), "v{version}");
            } else {
                assert_eq!(stored_redaction["content"]["redacts"], from_bob.as_str());
            }
            let (status, event) = server
                .get(
                    &format!(
                        "/_matrix/client/v3/rooms/{}/event/{}",
                        enc(&room),
                        enc(&from_bob)
                    ),
                    &bob.access_token,
                )
                .await;
            assert_eq!(status, StatusCode::OK, "v{version}: {event}");
            assert_eq!(event["content"], json!({}), "v{version}");
            assert_eq!(
                event["unsigned"]["redacted_because"]["event_id"],
                redaction.as_str()
            );

            // Leave, invite, join again.
            let (status, body) = membership(&server, &bob, &room, "leave", json!({})).await;
            assert_eq!(status, StatusCode::OK, "v{version}: {body}");
            let (status, body) = membership(
                &server,
                &alice,
                &room,
                "invite",
                json!({"user_id": bob.user_id}),
            )
            .await;
            assert_eq!(status, StatusCode::OK, "v{version}: {body}");
            let (status, body) = membership(&server, &bob, &room, "join", json!({})).await;
            assert_eq!(status, StatusCode::OK, "v{version}: {body}");

            // /messages, newest first.
            let (status, page) = server
                .get(
                    &format!(
                        "/_matrix/client/v3/rooms/{}/messages?dir=b&limit=50",
                        enc(&room)
                    ),
                    &bob.access_token,
                )
                .await;
            assert_eq!(status, StatusCode::OK, "v{version}: {page}");
            let ids: Vec<&str> = page["chunk"]
                .as_array()
                .unwrap()
                .iter()
                .map(|e| e["event_id"].as_str().unwrap())
                .collect();
            let position = |id: &str| ids.iter().position(|x| *x == id).unwrap();
            assert!(
                position(&redaction) < position(&topic),
                "v{version}: {ids:?}"
            );
            assert!(position(&topic) < position(&from_bob));
            assert!(position(&from_bob) < position(&hello));
            assert_eq!(
                ids.last().copied(),
                Some(room_create_id(&page)),
                "v{version}"
            );
        }

        // Bob's sync holds every room, each with its version's create event.
        let (status, sync) = server
            .get("/_matrix/client/v3/sync", &bob.access_token)
            .await;
        assert_eq!(status, StatusCode::OK);
        assert_eq!(
            sync["rooms"]["join"].as_object().unwrap().len(),
            VERSIONS.len(),
            "{kind:?}"
        );
        server.stop().await;
    }
}

/// The id of the create event, the oldest of a `/messages` page that reached the start.
fn room_create_id(page: &Value) -> &str {
    page["chunk"]
        .as_array()
        .unwrap()
        .iter()
        .find(|e| e["type"] == "m.room.create")
        .and_then(|e| e["event_id"].as_str())
        .expect("the page reaches the create event")
}

#[tokio::test]
async fn knocking_from_version_7_and_restricted_joins_from_version_8() {
    for kind in test_backends() {
        let server = TestServer::start(kind).await;
        let alice = server.register("alice").await;
        let bob = server.register("bob").await;
        let carol = server.register("carol").await;
        let space = server
            .create_room(&alice, json!({"preset": "public_chat"}))
            .await;
        let (status, _) = membership(&server, &bob, &space, "join", json!({})).await;
        assert_eq!(status, StatusCode::OK);
        for version in VERSIONS {
            let knockable = server
                .create_room(
                    &alice,
                    json!({"room_version": version, "initial_state": [{"type": "m.room.join_rules",
                        "state_key": "", "content": {"join_rule": "knock"}}]}),
                )
                .await;
            let (status, body) = server
                .post(
                    &format!("/_matrix/client/v3/knock/{}", enc(&knockable)),
                    &bob.access_token,
                    json!({"reason": "let me in"}),
                )
                .await;
            if number(version) >= 7 {
                assert_eq!(status, StatusCode::OK, "v{version}: {body}");
                let member =
                    state(&server, &alice, &knockable, "m.room.member", &bob.user_id).await;
                assert_eq!(member["membership"], "knock", "v{version}");
            } else {
                assert_eq!(status, StatusCode::FORBIDDEN, "v{version}: {body}");
                assert_eq!(body["errcode"], "M_FORBIDDEN", "v{version}");
            }

            let restricted = server
                .create_room(
                    &alice,
                    json!({"room_version": version, "initial_state": [{"type": "m.room.join_rules",
                        "state_key": "", "content": {"join_rule": "restricted",
                        "allow": [{"type": "m.room_membership", "room_id": space}]}}]}),
                )
                .await;
            let (status, body) = membership(&server, &bob, &restricted, "join", json!({})).await;
            if number(version) >= 8 {
                assert_eq!(status, StatusCode::OK, "v{version}: {body}");
                let member = state(&server, &bob, &restricted, "m.room.member", &bob.user_id).await;
                assert_eq!(
                    member["join_authorised_via_users_server"], alice.user_id,
                    "v{version}"
                );
            } else {
                assert_eq!(status, StatusCode::FORBIDDEN, "v{version}: {body}");
            }
            // Carol is in no allowed room: refused in every version.
            let (status, body) = membership(&server, &carol, &restricted, "join", json!({})).await;
            assert_eq!(status, StatusCode::FORBIDDEN, "v{version}: {body}");
        }
        server.stop().await;
    }
}

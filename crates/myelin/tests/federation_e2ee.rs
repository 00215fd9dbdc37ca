//! End-to-end keys across two real Myelin servers, on both databases: a user of one server
//! queries and claims the keys of a user of the other (one-time keys claimed once), sees their
//! new and deleted devices and cross-signing key changes announced in sync and shown by a fresh
//! query; a server that does not answer is named in `failures` within the client's timeout;
//! the serving endpoints answer only about local users and only to authenticated servers; and
//! an `m.device_list_update` that does not follow on from the cached list has it fetched again.

use std::time::{Duration, Instant};

use myelin_room_version::{KeyPair, canonical::value_to_object, signing::sign_json};
use myelin_testkit::{
    TestServer, TestUser, enc,
    federation::{TestCa, free_port, start_federation},
    rooms::{eventually, join_via},
    test_backends,
};
use ruma::{
    MilliSecondsSinceUnixEpoch, OwnedServerName, OwnedTransactionId, OwnedUserId,
    api::federation::{
        device::get_devices, keys::get_keys, transactions::send_transaction_message,
    },
    serde::Raw,
};
use serde_json::{Value, json};

const B64: base64::engine::GeneralPurpose = base64::engine::general_purpose::STANDARD_NO_PAD;

fn b64(bytes: &[u8]) -> String {
    use base64::Engine as _;
    B64.encode(bytes)
}

fn key_pair(seed: u8) -> KeyPair {
    KeyPair::from_seed(&[seed; 32])
}

/// `object` signed by `user` under `key_id` with `key`.
fn signed(object: Value, user: &str, key_id: &str, key: &KeyPair) -> Value {
    let mut canonical = value_to_object(object).unwrap();
    sign_json(&mut canonical, user, key_id, key).unwrap();
    serde_json::to_value(canonical).unwrap()
}

/// Device keys of `user`'s device with `key` as its ed25519 key, self-signed.
fn device_keys(user: &TestUser, key: &KeyPair) -> Value {
    let object = json!({
        "user_id": user.user_id,
        "device_id": user.device_id,
        "algorithms": ["m.olm.v1.curve25519-aes-sha2", "m.megolm.v1.aes-sha2"],
        "keys": {
            format!("curve25519:{}", user.device_id): b64(&[7; 32]),
            format!("ed25519:{}", user.device_id): b64(&key.public_key()),
        },
    });
    signed(
        object,
        &user.user_id,
        &format!("ed25519:{}", user.device_id),
        key,
    )
}

fn cross_signing_key(user: &TestUser, usage: &str, key: &KeyPair) -> Value {
    let public = b64(&key.public_key());
    json!({
        "user_id": user.user_id,
        "usage": [usage],
        "keys": {format!("ed25519:{public}"): public},
    })
}

/// A user's master, self-signing and user-signing keys, the latter two signed by the master.
fn cross_signing_keys(user: &TestUser, master: &KeyPair, ssk: &KeyPair, usk: &KeyPair) -> Value {
    let mid = format!("ed25519:{}", b64(&master.public_key()));
    json!({
        "master_key": cross_signing_key(user, "master", master),
        "self_signing_key": signed(cross_signing_key(user, "self_signing", ssk), &user.user_id, &mid, master),
        "user_signing_key": signed(cross_signing_key(user, "user_signing", usk), &user.user_id, &mid, master),
    })
}

async fn upload(server: &TestServer, user: &TestUser, body: Value) {
    let (status, body) = server
        .post("/_matrix/client/v3/keys/upload", &user.access_token, body)
        .await;
    assert_eq!(status, 200, "{body}");
}

/// Uploads cross-signing keys, with the user's password when the server asks for it.
async fn upload_cross_signing(server: &TestServer, user: &TestUser, keys: Value) {
    let path = "/_matrix/client/v3/keys/device_signing/upload";
    let (status, body) = server.post(path, &user.access_token, keys.clone()).await;
    if status == 200 {
        return;
    }
    assert_eq!(status, 401, "{body}");
    let mut keys = keys;
    keys["auth"] = json!({
        "type": "m.login.password",
        "identifier": {"type": "m.id.user", "user": user.user_id},
        "password": user.password,
        "session": body["session"],
    });
    let (status, body) = server.post(path, &user.access_token, keys).await;
    assert_eq!(status, 200, "{body}");
}

async fn query_with(server: &TestServer, user: &TestUser, body: Value) -> Value {
    let (status, body) = server
        .post("/_matrix/client/v3/keys/query", &user.access_token, body)
        .await;
    assert_eq!(status, 200, "{body}");
    body
}

async fn query(server: &TestServer, user: &TestUser, target: &str) -> Value {
    query_with(server, user, json!({"device_keys": {target: []}})).await
}

async fn claim(server: &TestServer, user: &TestUser, target: &TestUser) -> Value {
    let (status, body) = server
        .post(
            "/_matrix/client/v3/keys/claim",
            &user.access_token,
            json!({"one_time_keys": {target.user_id.clone(): {target.device_id.clone(): "signed_curve25519"}}}),
        )
        .await;
    assert_eq!(status, 200, "{body}");
    body
}

async fn sync(server: &TestServer, user: &TestUser, since: &str) -> Value {
    let (status, body) = server
        .get(
            &format!("/_matrix/client/v3/sync?since={}", enc(since)),
            &user.access_token,
        )
        .await;
    assert_eq!(status, 200, "{body}");
    body
}

async fn sync_token(server: &TestServer, user: &TestUser) -> String {
    let (status, body) = server
        .get("/_matrix/client/v3/sync", &user.access_token)
        .await;
    assert_eq!(status, 200, "{body}");
    body["next_batch"].as_str().unwrap().to_owned()
}

/// Syncs from `since` until `device_lists.changed` names `user_id`; returns the next token.
async fn until_changed(server: &TestServer, user: &TestUser, since: &str, user_id: &str) -> String {
    let mut since = since.to_owned();
    for _ in 0..200 {
        let body = sync(server, user, &since).await;
        let changed = body["device_lists"]["changed"]
            .as_array()
            .is_some_and(|c| c.contains(&json!(user_id)));
        since = body["next_batch"].as_str().unwrap().to_owned();
        if changed {
            return since;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    panic!("{user_id} never showed in device_lists.changed");
}

async fn login(server: &TestServer, user: &TestUser) -> TestUser {
    let (status, body) = server
        .call(
            reqwest::Method::POST,
            "/_matrix/client/v3/login",
            None,
            Some(json!({"type": "m.login.password", "identifier": {"type": "m.id.user", "user": user.user_id}, "password": user.password})),
        )
        .await;
    assert_eq!(status, 200, "{body}");
    TestUser {
        user_id: user.user_id.clone(),
        device_id: body["device_id"].as_str().unwrap().to_owned(),
        access_token: body["access_token"].as_str().unwrap().to_owned(),
        password: user.password.clone(),
    }
}

/// The ids of the devices a `/keys/query` answer shows for `user_id`.
fn devices_of(body: &Value, user_id: &str) -> Vec<String> {
    body["device_keys"][user_id]
        .as_object()
        .map(|d| d.keys().cloned().collect())
        .unwrap_or_default()
}

/// Alice on A and Bob on B, in one room (Bob joined through A).
async fn shared_room(a: &TestServer, alice: &TestUser, b: &TestServer, bob: &TestUser) -> String {
    let room_id = a.create_room(alice, json!({"preset": "public_chat"})).await;
    join_via(b, bob, &room_id, a.name()).await;
    room_id
}

#[tokio::test]
async fn keys_of_another_servers_users_are_queried_claimed_and_kept_current() {
    for kind in test_backends() {
        let ca = TestCa::new();
        let servers = start_federation(kind, &ca, &["hs-a.test", "hs-b.test"], |_, _| {}).await;
        let (a, b) = (&servers[0], &servers[1]);
        let alice = a.register("alice").await;
        let bob = b.register("bob").await;
        upload(
            b,
            &bob,
            json!({
                "device_keys": device_keys(&bob, &key_pair(1)),
                "one_time_keys": {"signed_curve25519:AAAA": {"key": b64(&[1; 32])}},
                "fallback_keys": {"signed_curve25519:FFFF": {"key": b64(&[2; 32]), "fallback": true}},
            }),
        )
        .await;
        upload_cross_signing(
            b,
            &bob,
            cross_signing_keys(&bob, &key_pair(10), &key_pair(11), &key_pair(12)),
        )
        .await;

        // No room shared yet: asked of B with /user/keys/query.
        let body = query(a, &alice, &bob.user_id).await;
        assert_eq!(
            devices_of(&body, &bob.user_id),
            vec![bob.device_id.clone()],
            "{kind:?}: {body}"
        );
        assert_eq!(
            body["device_keys"][&bob.user_id][&bob.device_id],
            device_keys(&bob, &key_pair(1)),
            "{kind:?}: {body}"
        );
        assert_eq!(
            body["master_keys"][&bob.user_id]["keys"],
            cross_signing_key(&bob, "master", &key_pair(10))["keys"],
            "{kind:?}: {body}"
        );
        assert!(
            body["self_signing_keys"][&bob.user_id].is_object(),
            "{kind:?}: {body}"
        );
        assert!(
            body["user_signing_keys"].get(&bob.user_id).is_none(),
            "{kind:?}: another user's user-signing key is never shown: {body}"
        );
        assert!(
            body["failures"].as_object().is_none_or(|f| f.is_empty()),
            "{body}"
        );
        assert!(
            a.store()
                .remote_list_state(&bob.user_id)
                .await
                .unwrap()
                .is_none(),
            "{kind:?}: nothing is cached for a user no room is shared with"
        );

        // Alice signs Bob's master key with her user-signing key: kept on A, shown to her.
        upload_cross_signing(
            a,
            &alice,
            cross_signing_keys(&alice, &key_pair(13), &key_pair(14), &key_pair(15)),
        )
        .await;
        let usk_id = format!("ed25519:{}", b64(&key_pair(15).public_key()));
        let bob_master = body["master_keys"][&bob.user_id].clone();
        let bob_master_id = format!("ed25519:{}", b64(&key_pair(10).public_key()));
        let signed_master = signed(bob_master, &alice.user_id, &usk_id, &key_pair(15));
        let (status, reply) = a
            .post(
                "/_matrix/client/v3/keys/signatures/upload",
                &alice.access_token,
                json!({bob.user_id.clone(): {b64(&key_pair(10).public_key()): signed_master}}),
            )
            .await;
        assert_eq!(status, 200, "{reply}");
        assert!(
            reply["failures"].as_object().is_none_or(|f| f.is_empty()),
            "{kind:?}: {reply}"
        );
        let body = query(a, &alice, &bob.user_id).await;
        assert!(
            body["master_keys"][&bob.user_id]["signatures"][&alice.user_id][&usk_id].is_string(),
            "{kind:?}: {body}"
        );
        assert!(
            body["master_keys"][&bob.user_id]["keys"][&bob_master_id].is_string(),
            "{body}"
        );
        // A forged one is refused.
        let forged = signed(
            body["master_keys"][&bob.user_id].clone(),
            &alice.user_id,
            &usk_id,
            &key_pair(16),
        );
        let (status, reply) = a
            .post(
                "/_matrix/client/v3/keys/signatures/upload",
                &alice.access_token,
                json!({bob.user_id.clone(): {b64(&key_pair(10).public_key()): forged}}),
            )
            .await;
        assert_eq!(status, 200, "{reply}");
        assert_eq!(
            reply["failures"][&bob.user_id][b64(&key_pair(10).public_key())]["errcode"],
            "M_INVALID_SIGNATURE",
            "{kind:?}: {reply}"
        );

        // One-time keys are claimed once; then the fallback key.
        let first = claim(a, &alice, &bob).await;
        let first = &first["one_time_keys"][&bob.user_id][&bob.device_id];
        assert!(
            first["signed_curve25519:AAAA"].is_object(),
            "{kind:?}: {first}"
        );
        let second = claim(a, &alice, &bob).await;
        let second = &second["one_time_keys"][&bob.user_id][&bob.device_id];
        assert!(
            second["signed_curve25519:FFFF"].is_object(),
            "{kind:?}: {second}"
        );

        // Bob joining Alice's room tells A of his devices.
        let room_id = shared_room(a, &alice, b, &bob).await;
        eventually("B's device-list update on Bob's join", || async {
            a.store()
                .remote_list_state(&bob.user_id)
                .await
                .unwrap()
                .is_some()
        })
        .await;

        // Sharing a room: the list is fetched (/user/devices) and cached.
        let body = query(a, &alice, &bob.user_id).await;
        assert_eq!(
            devices_of(&body, &bob.user_id),
            vec![bob.device_id.clone()],
            "{kind:?}: {body}"
        );
        let state = a
            .store()
            .remote_list_state(&bob.user_id)
            .await
            .unwrap()
            .unwrap();
        assert!(state.fresh(), "{kind:?}: {state:?}");
        let since = sync_token(a, &alice).await;

        // A new device of Bob's: announced to Alice, and applied to the cached list.
        let phone = login(b, &bob).await;
        upload(
            b,
            &phone,
            json!({"device_keys": device_keys(&phone, &key_pair(2))}),
        )
        .await;
        let since = until_changed(a, &alice, &since, &bob.user_id).await;
        let mut expected = vec![bob.device_id.clone(), phone.device_id.clone()];
        expected.sort();
        eventually("the new device in the cache", || async {
            let cached: Vec<String> = a
                .store()
                .remote_cached_devices(&[&bob.user_id])
                .await
                .unwrap()
                .into_iter()
                .map(|d| d.device_id)
                .collect();
            cached == expected
        })
        .await;
        let state = a
            .store()
            .remote_list_state(&bob.user_id)
            .await
            .unwrap()
            .unwrap();
        assert!(state.fresh(), "{kind:?}: the update followed on: {state:?}");
        let body = query(a, &alice, &bob.user_id).await;
        let mut shown = devices_of(&body, &bob.user_id);
        shown.sort();
        assert_eq!(shown, expected, "{kind:?}: {body}");
        assert_eq!(
            body["device_keys"][&bob.user_id][&phone.device_id],
            device_keys(&phone, &key_pair(2)),
            "{kind:?}: {body}"
        );

        // Renamed: the name shows.
        let (status, _) = b
            .put(
                &format!("/_matrix/client/v3/devices/{}", enc(&phone.device_id)),
                &phone.access_token,
                json!({"display_name": "Bob's phone"}),
            )
            .await;
        assert_eq!(status, 200);
        let since = until_changed(a, &alice, &since, &bob.user_id).await;
        let body = query(a, &alice, &bob.user_id).await;
        assert_eq!(
            body["device_keys"][&bob.user_id][&phone.device_id]["unsigned"]["device_display_name"],
            "Bob's phone",
            "{kind:?}: {body}"
        );

        // Logged out for good: gone from Alice's view.
        let (status, _) = b
            .post("/_matrix/client/v3/logout", &phone.access_token, json!({}))
            .await;
        assert_eq!(status, 200);
        let since = until_changed(a, &alice, &since, &bob.user_id).await;
        eventually("the deleted device gone", || async {
            devices_of(&query(a, &alice, &bob.user_id).await, &bob.user_id)
                == vec![bob.device_id.clone()]
        })
        .await;

        // New cross-signing keys: announced and shown.
        upload_cross_signing(
            b,
            &bob,
            cross_signing_keys(&bob, &key_pair(20), &key_pair(21), &key_pair(22)),
        )
        .await;
        until_changed(a, &alice, &since, &bob.user_id).await;
        let body = query(a, &alice, &bob.user_id).await;
        assert_eq!(
            body["master_keys"][&bob.user_id]["keys"],
            cross_signing_key(&bob, "master", &key_pair(20))["keys"],
            "{kind:?}: {body}"
        );
        assert_eq!(
            body["self_signing_keys"][&bob.user_id]["keys"],
            cross_signing_key(&bob, "self_signing", &key_pair(21))["keys"],
            "{kind:?}: {body}"
        );

        // Bob leaves: no room is shared, the cache is dropped, and B is asked instead.
        let (status, _) = b
            .post(
                &format!("/_matrix/client/v3/rooms/{}/leave", enc(&room_id)),
                &bob.access_token,
                json!({}),
            )
            .await;
        assert_eq!(status, 200);
        eventually("Bob's leave on A", || async {
            !a.store()
                .shares_room_with_server(&bob.user_id, "hs-a.test")
                .await
                .unwrap()
        })
        .await;
        let body = query(a, &alice, &bob.user_id).await;
        assert_eq!(
            devices_of(&body, &bob.user_id),
            vec![bob.device_id.clone()],
            "{kind:?}: {body}"
        );
        assert!(
            a.store()
                .remote_cached_devices(&[&bob.user_id])
                .await
                .unwrap()
                .is_empty(),
            "{kind:?}: dropped"
        );
        let state = a
            .store()
            .remote_list_state(&bob.user_id)
            .await
            .unwrap()
            .unwrap();
        assert_eq!(state.cached_at, None, "{kind:?}");
        for server in servers {
            server.stop().await;
        }
    }
}

#[tokio::test]
async fn a_server_that_does_not_answer_is_named_in_failures_within_the_timeout() {
    for kind in test_backends() {
        // A peer that takes connections and never answers.
        let port = free_port();
        let silent = tokio::net::TcpListener::bind(("127.0.0.1", port))
            .await
            .unwrap();
        let held = tokio::spawn(async move {
            let mut open = Vec::new();
            while let Ok((socket, _)) = silent.accept().await {
                open.push(socket);
            }
        });
        let ca = TestCa::new();
        let servers = start_federation(kind, &ca, &["hs-a.test"], |_, config| {
            config
                .federation
                .destination_overrides
                .insert("silent.test".to_owned(), format!("127.0.0.1:{port}"));
        })
        .await;
        let a = &servers[0];
        let alice = a.register("alice").await;
        let started = Instant::now();
        let body = query_with(
            a,
            &alice,
            json!({"device_keys": {"@bob:silent.test": [], alice.user_id.clone(): []}, "timeout": 1000}),
        )
        .await;
        assert!(
            started.elapsed() < Duration::from_secs(8),
            "{kind:?}: took {:?}",
            started.elapsed()
        );
        assert!(
            body["failures"]["silent.test"].is_object(),
            "{kind:?}: {body}"
        );
        assert!(
            body["device_keys"][&alice.user_id].is_object(),
            "{kind:?}: {body}"
        );

        let started = Instant::now();
        let (status, body) = a
            .post(
                "/_matrix/client/v3/keys/claim",
                &alice.access_token,
                json!({"one_time_keys": {"@bob:silent.test": {"D": "signed_curve25519"}}, "timeout": 1000}),
            )
            .await;
        assert_eq!(status, 200, "{body}");
        assert!(started.elapsed() < Duration::from_secs(8), "{kind:?}");
        assert!(
            body["failures"]["silent.test"].is_object(),
            "{kind:?}: {body}"
        );
        held.abort();
        for server in servers {
            server.stop().await;
        }
    }
}

#[tokio::test]
async fn serving_endpoints_answer_only_about_local_users_and_only_to_servers() {
    for kind in test_backends() {
        let ca = TestCa::new();
        let servers = start_federation(kind, &ca, &["hs-a.test", "hs-b.test"], |_, _| {}).await;
        let (a, b) = (&servers[0], &servers[1]);
        let alice = a.register("alice").await;
        upload(
            a,
            &alice,
            json!({"device_keys": device_keys(&alice, &key_pair(3))}),
        )
        .await;
        upload_cross_signing(
            a,
            &alice,
            cross_signing_keys(&alice, &key_pair(30), &key_pair(31), &key_pair(32)),
        )
        .await;

        // Without X-Matrix: 401.
        let client = ca.client(&[("hs-a.test", a.addrs().1)]);
        for (method, path, body) in [
            (
                reqwest::Method::GET,
                format!(
                    "/_matrix/federation/v1/user/devices/{}",
                    enc(&alice.user_id)
                ),
                None,
            ),
            (
                reqwest::Method::POST,
                "/_matrix/federation/v1/user/keys/query".to_owned(),
                Some(json!({"device_keys": {alice.user_id.clone(): []}})),
            ),
            (
                reqwest::Method::POST,
                "/_matrix/federation/v1/user/keys/claim".to_owned(),
                Some(
                    json!({"one_time_keys": {alice.user_id.clone(): {alice.device_id.clone(): "signed_curve25519"}}}),
                ),
            ),
        ] {
            let mut request = client.request(method, a.federation_url(&path));
            if let Some(body) = body {
                request = request.json(&body);
            }
            let response = request.send().await.unwrap();
            assert_eq!(response.status(), 401, "{kind:?}: {path}");
        }

        // B asks A, signed.
        let outbound = &b.services().federation;
        let hs_a: OwnedServerName = "hs-a.test".try_into().unwrap();
        let alice_id: OwnedUserId = alice.user_id.as_str().try_into().unwrap();
        let devices = outbound
            .send(&hs_a, get_devices::v1::Request::new(alice_id.clone()))
            .await
            .unwrap();
        assert_eq!(devices.devices.len(), 1, "{kind:?}");
        assert_eq!(devices.devices[0].device_id.as_str(), alice.device_id);
        assert!(u64::from(devices.stream_id) > 0, "{kind:?}");
        assert!(devices.master_key.is_some() && devices.self_signing_key.is_some());

        // A user of another server: 404; one who does not exist: an empty answer.
        let elsewhere: OwnedUserId = "@carol:hs-b.test".try_into().unwrap();
        let err = outbound
            .send(&hs_a, get_devices::v1::Request::new(elsewhere.clone()))
            .await
            .unwrap_err();
        assert!(err.to_string().contains("404"), "{kind:?}: {err}");
        let nobody: OwnedUserId = "@nobody:hs-a.test".try_into().unwrap();
        let empty = outbound
            .send(&hs_a, get_devices::v1::Request::new(nobody.clone()))
            .await
            .unwrap();
        assert!(
            empty.devices.is_empty() && empty.master_key.is_none(),
            "{kind:?}"
        );
        assert_eq!(u64::from(empty.stream_id), 0);

        let keys = outbound
            .send(
                &hs_a,
                get_keys::v1::Request::new(
                    [
                        (alice_id.clone(), vec![]),
                        (elsewhere.clone(), vec![]),
                        (nobody.clone(), vec![]),
                    ]
                    .into(),
                ),
            )
            .await
            .unwrap();
        assert_eq!(keys.device_keys[&alice_id].len(), 1, "{kind:?}");
        assert!(!keys.device_keys.contains_key(&elsewhere), "{kind:?}");
        assert!(keys.device_keys.get(&nobody).is_none_or(|d| d.is_empty()));
        assert!(keys.master_keys.contains_key(&alice_id));
        assert!(keys.self_signing_keys.contains_key(&alice_id));
        for server in servers {
            server.stop().await;
        }
    }
}

#[tokio::test]
async fn a_device_list_update_that_does_not_follow_on_has_the_list_fetched_again() {
    for kind in test_backends() {
        let ca = TestCa::new();
        let servers = start_federation(kind, &ca, &["hs-a.test", "hs-b.test"], |_, _| {}).await;
        let (a, b) = (&servers[0], &servers[1]);
        let alice = a.register("alice").await;
        let bob = b.register("bob").await;
        upload(
            b,
            &bob,
            json!({"device_keys": device_keys(&bob, &key_pair(4))}),
        )
        .await;
        shared_room(a, &alice, b, &bob).await;
        query(a, &alice, &bob.user_id).await;
        let before = a
            .store()
            .remote_list_state(&bob.user_id)
            .await
            .unwrap()
            .unwrap();
        assert!(before.fresh(), "{kind:?}: {before:?}");

        // B's transaction with an update whose prev_id A never saw, of a device B does not have.
        let ghost = TestUser {
            device_id: "GHOST".to_owned(),
            ..bob.clone()
        };
        let edu = json!({
            "edu_type": "m.device_list_update",
            "content": {
                "user_id": bob.user_id,
                "device_id": "GHOST",
                "stream_id": 1_000_000,
                "prev_id": [999_999],
                "deleted": false,
                "keys": device_keys(&ghost, &key_pair(5)),
            },
        });
        let hs_a: OwnedServerName = "hs-a.test".try_into().unwrap();
        let mut request = send_transaction_message::v1::Request::new(
            OwnedTransactionId::from("gap-1"),
            "hs-b.test".try_into().unwrap(),
            MilliSecondsSinceUnixEpoch::now(),
        );
        request.edus = vec![Raw::from_json(
            serde_json::value::to_raw_value(&edu).unwrap(),
        )];
        b.services().federation.send(&hs_a, request).await.unwrap();

        // A fetched Bob's list again: fresh at the new stream id, without the ghost device.
        eventually("the list fetched again", || async {
            let state = a
                .store()
                .remote_list_state(&bob.user_id)
                .await
                .unwrap()
                .unwrap();
            state.fresh() && state.stream_id == 1_000_000
        })
        .await;
        let cached: Vec<String> = a
            .store()
            .remote_cached_devices(&[&bob.user_id])
            .await
            .unwrap()
            .into_iter()
            .map(|d| d.device_id)
            .collect();
        assert_eq!(cached, vec![bob.device_id.clone()], "{kind:?}");
        let body = query(a, &alice, &bob.user_id).await;
        assert_eq!(
            devices_of(&body, &bob.user_id),
            vec![bob.device_id.clone()],
            "{kind:?}: {body}"
        );
        for server in servers {
            server.stop().await;
        }
    }
}

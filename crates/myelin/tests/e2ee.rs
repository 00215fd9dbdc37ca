//! End-to-end encryption keys over HTTP, on both databases: device keys (upload, identical
//! re-upload, refused replacement, owner checks), one-time and fallback keys (conflicts, claims
//! consumed once even when concurrent, fallback when none is left), device lists in `/sync` and
//! `/keys/changes`, key deletion with devices, cross-signing (first upload without UIA,
//! replacement with it, bad signatures, signatures upload) and key backup.

use std::collections::HashSet;

use myelin_room_version::{KeyPair, canonical::value_to_object, signing::sign_json};
use myelin_testkit::{TestServer, TestUser, enc, test_backends};
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
fn signed(mut object: Value, user: &str, key_id: &str, key: &KeyPair) -> Value {
    let signatures = object.get("signatures").cloned();
    if let Some(o) = object.as_object_mut() {
        o.remove("signatures");
    }
    let mut canonical = value_to_object(object).unwrap();
    if let Some(signatures) = signatures {
        canonical.insert(
            "signatures".to_owned(),
            serde_json::from_value(signatures).unwrap(),
        );
    }
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

fn key_id_of(key: &KeyPair) -> String {
    format!("ed25519:{}", b64(&key.public_key()))
}

/// A user's master, self-signing and user-signing keys, the latter two signed by the master.
fn cross_signing_keys(user: &TestUser, master: &KeyPair, ssk: &KeyPair, usk: &KeyPair) -> Value {
    let mid = key_id_of(master);
    json!({
        "master_key": cross_signing_key(user, "master", master),
        "self_signing_key": signed(cross_signing_key(user, "self_signing", ssk), &user.user_id, &mid, master),
        "user_signing_key": signed(cross_signing_key(user, "user_signing", usk), &user.user_id, &mid, master),
    })
}

async fn upload(server: &TestServer, user: &TestUser, body: Value) -> (u16, Value) {
    let (status, body) = server
        .post("/_matrix/client/v3/keys/upload", &user.access_token, body)
        .await;
    (status.as_u16(), body)
}

async fn query(server: &TestServer, user: &TestUser, users: &[&str]) -> Value {
    let wanted: serde_json::Map<String, Value> =
        users.iter().map(|u| ((*u).to_owned(), json!([]))).collect();
    let (status, body) = server
        .post(
            "/_matrix/client/v3/keys/query",
            &user.access_token,
            json!({"device_keys": wanted}),
        )
        .await;
    assert_eq!(status, 200, "{body}");
    body
}

async fn claim(server: &TestServer, user: &TestUser, target: &TestUser) -> Option<(String, Value)> {
    let (status, body) = server
        .post(
            "/_matrix/client/v3/keys/claim",
            &user.access_token,
            json!({"one_time_keys": {target.user_id.clone(): {target.device_id.clone(): "signed_curve25519"}}}),
        )
        .await;
    assert_eq!(status, 200, "{body}");
    let keys = body["one_time_keys"][&target.user_id][&target.device_id].as_object()?;
    keys.iter().next().map(|(k, v)| (k.clone(), v.clone()))
}

async fn sync(server: &TestServer, user: &TestUser, since: Option<&str>) -> Value {
    let path = match since {
        Some(since) => format!("/_matrix/client/v3/sync?since={}", enc(since)),
        None => "/_matrix/client/v3/sync".to_owned(),
    };
    let (status, body) = server.get(&path, &user.access_token).await;
    assert_eq!(status, 200, "{body}");
    body
}

/// `device_lists.changed` or `.left` of a sync (left out when empty).
fn listed(body: &Value, which: &str) -> Value {
    match &body["device_lists"][which] {
        Value::Null => json!([]),
        list => list.clone(),
    }
}

fn next_batch(body: &Value) -> String {
    body["next_batch"].as_str().unwrap().to_owned()
}

fn otk(n: u8) -> Value {
    json!({"key": b64(&[n; 32])})
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

#[tokio::test]
async fn device_keys_upload_query_and_replacement() {
    for kind in test_backends() {
        let server = TestServer::start(kind).await;
        let alice = server.register("alice").await;
        let bob = server.register("bob").await;
        let keys = device_keys(&alice, &key_pair(1));

        let (status, body) = upload(&server, &alice, json!({"device_keys": keys})).await;
        assert_eq!(status, 200, "{kind:?}: {body}");
        assert_eq!(body["one_time_key_counts"]["signed_curve25519"], 0);
        // The same keys again: accepted.
        let (status, body) = upload(&server, &alice, json!({"device_keys": keys})).await;
        assert_eq!(status, 200, "{kind:?}: {body}");
        // Different keys for a device nobody has cross-signed: they replace the stored ones
        // (refused once it is cross-signed: see cross_signing_keys_and_signatures).
        let other = device_keys(&alice, &key_pair(2));
        let (status, body) = upload(&server, &alice, json!({"device_keys": other})).await;
        assert_eq!(status, 200, "{kind:?}: {body}");
        let body = query(&server, &bob, &[&alice.user_id]).await;
        let got = &body["device_keys"][&alice.user_id][&alice.device_id];
        assert_eq!(got["keys"], other["keys"], "{kind:?}: {body}");
        assert_eq!(
            got["signatures"], other["signatures"],
            "the old signatures went"
        );
        let (status, body) = upload(&server, &alice, json!({"device_keys": keys})).await;
        assert_eq!(status, 200, "{kind:?}: {body}");
        // Keys that name another user or device: refused.
        let mut wrong_user = keys.clone();
        wrong_user["user_id"] = json!(bob.user_id);
        let (status, body) = upload(&server, &alice, json!({"device_keys": wrong_user})).await;
        assert_eq!(
            (status, body["errcode"].clone()),
            (400, json!("M_INVALID_PARAM"))
        );
        let mut wrong_device = keys.clone();
        wrong_device["device_id"] = json!("NOTMINE");
        let (status, body) = upload(&server, &alice, json!({"device_keys": wrong_device})).await;
        assert_eq!(
            (status, body["errcode"].clone()),
            (400, json!("M_INVALID_PARAM"))
        );
        let (status, body) = upload(
            &server,
            &alice,
            json!({"device_keys": {"user_id": alice.user_id, "device_id": alice.device_id}}),
        )
        .await;
        assert_eq!(
            (status, body["errcode"].clone()),
            (400, json!("M_BAD_JSON"))
        );

        let body = query(&server, &bob, &[&alice.user_id, "@carol:remote.example"]).await;
        let got = &body["device_keys"][&alice.user_id][&alice.device_id];
        assert_eq!(got["keys"], keys["keys"], "{kind:?}: {body}");
        assert_eq!(got["signatures"], keys["signatures"]);
        assert!(body["failures"]["remote.example"].is_object(), "{body}");
        // Only the devices asked for.
        let (_, body) = server
            .post(
                "/_matrix/client/v3/keys/query",
                &bob.access_token,
                json!({"device_keys": {alice.user_id.clone(): ["OTHER"]}}),
            )
            .await;
        assert_eq!(body["device_keys"][&alice.user_id], json!({}), "{body}");
        server.stop().await;
    }
}

#[tokio::test]
async fn one_time_keys_claimed_once_then_fallback() {
    for kind in test_backends() {
        let server = TestServer::start(kind).await;
        let alice = server.register("alice").await;
        let bob = server.register("bob").await;
        let (status, body) = upload(
            &server,
            &alice,
            json!({
                "one_time_keys": {"signed_curve25519:A": otk(1), "signed_curve25519:B": otk(2)},
                "fallback_keys": {"signed_curve25519:F": {"key": b64(&[9; 32]), "fallback": true}},
            }),
        )
        .await;
        assert_eq!(status, 200, "{body}");
        assert_eq!(body["one_time_key_counts"]["signed_curve25519"], 2);

        // A conflicting key refuses the whole upload: the new key C is not stored either.
        let (status, body) = upload(
            &server,
            &alice,
            json!({"one_time_keys": {"signed_curve25519:C": otk(3), "signed_curve25519:A": otk(4)}}),
        )
        .await;
        assert_eq!(
            (status, body["errcode"].clone()),
            (400, json!("M_INVALID_PARAM")),
            "{kind:?}: {body}"
        );
        // The same key again: accepted, nothing added.
        let (status, body) = upload(
            &server,
            &alice,
            json!({"one_time_keys": {"signed_curve25519:A": otk(1)}}),
        )
        .await;
        assert_eq!(status, 200, "{body}");
        assert_eq!(
            body["one_time_key_counts"]["signed_curve25519"], 2,
            "{kind:?}"
        );

        let body = sync(&server, &alice, None).await;
        assert_eq!(
            body["device_one_time_keys_count"]["signed_curve25519"], 2,
            "{body}"
        );
        assert_eq!(
            body["device_unused_fallback_key_types"],
            json!(["signed_curve25519"])
        );

        // Two claims, two different keys; then the fallback key, again and again.
        let first = claim(&server, &bob, &alice).await.expect("a key");
        let second = claim(&server, &bob, &alice).await.expect("a key");
        assert_ne!(
            first.0, second.0,
            "{kind:?}: a one-time key was handed out twice"
        );
        let mut ids = [first.0.as_str(), second.0.as_str()];
        ids.sort_unstable();
        assert_eq!(ids, ["signed_curve25519:A", "signed_curve25519:B"]);
        assert_eq!(
            first.1,
            if first.0.ends_with('A') {
                otk(1)
            } else {
                otk(2)
            }
        );
        let third = claim(&server, &bob, &alice)
            .await
            .expect("the fallback key");
        assert_eq!(third.0, "signed_curve25519:F", "{kind:?}");
        assert_eq!(third.1["fallback"], true);
        let fourth = claim(&server, &bob, &alice)
            .await
            .expect("the fallback key again");
        assert_eq!(fourth.0, "signed_curve25519:F");

        let body = sync(&server, &alice, None).await;
        assert_eq!(
            body["device_one_time_keys_count"]["signed_curve25519"], 0,
            "{body}"
        );
        assert_eq!(
            body["device_unused_fallback_key_types"],
            json!([]),
            "{kind:?}: the fallback key is used"
        );
        // A new fallback key is unused again.
        let (status, _) = upload(
            &server,
            &alice,
            json!({"fallback_keys": {"signed_curve25519:G": {"key": b64(&[8; 32]), "fallback": true}}}),
        )
        .await;
        assert_eq!(status, 200);
        let body = sync(&server, &alice, None).await;
        assert_eq!(
            body["device_unused_fallback_key_types"],
            json!(["signed_curve25519"])
        );

        // Other algorithms are stored opaque and claimed by their own name.
        let (status, _) = upload(
            &server,
            &alice,
            json!({"one_time_keys": {"org.example.alg:Z": "opaque-string-key"}}),
        )
        .await;
        assert_eq!(status, 200);
        let (_, body) = server
            .post(
                "/_matrix/client/v3/keys/claim",
                &bob.access_token,
                json!({"one_time_keys": {alice.user_id.clone(): {alice.device_id.clone(): "org.example.alg"}, "@x:remote.example": {"D": "signed_curve25519"}}}),
            )
            .await;
        assert_eq!(
            body["one_time_keys"][&alice.user_id][&alice.device_id]["org.example.alg:Z"],
            "opaque-string-key",
            "{body}"
        );
        assert!(body["failures"]["remote.example"].is_object(), "{body}");
        server.stop().await;
    }
}

#[tokio::test]
async fn concurrent_claims_never_share_a_key() {
    for kind in test_backends() {
        let server = TestServer::start(kind).await;
        let alice = server.register("alice").await;
        let bob = server.register("bob").await;
        let keys: serde_json::Map<String, Value> = (0..20u8)
            .map(|i| (format!("signed_curve25519:K{i:02}"), otk(i)))
            .collect();
        let (status, _) = upload(
            &server,
            &alice,
            json!({"one_time_keys": keys, "fallback_keys": {"signed_curve25519:F": {"key": "f", "fallback": true}}}),
        )
        .await;
        assert_eq!(status, 200);
        let claims = (0..30).map(|_| claim(&server, &bob, &alice));
        let results = futures::future::join_all(claims).await;
        let ids: Vec<String> = results.into_iter().map(|r| r.expect("a key").0).collect();
        let one_time: Vec<&String> = ids.iter().filter(|id| !id.ends_with(":F")).collect();
        let distinct: HashSet<&String> = one_time.iter().copied().collect();
        assert_eq!(
            distinct.len(),
            one_time.len(),
            "{kind:?}: a key was claimed twice: {ids:?}"
        );
        assert_eq!(
            one_time.len(),
            20,
            "{kind:?}: every one-time key handed out once: {ids:?}"
        );
        server.stop().await;
    }
}

#[tokio::test]
async fn device_lists_follow_shared_rooms() {
    for kind in test_backends() {
        let server = TestServer::start(kind).await;
        let alice = server.register("alice").await;
        let bob = server.register("bob").await;
        let carol = server.register("carol").await;
        let room = server
            .create_room(&alice, json!({"preset": "public_chat"}))
            .await;
        let since = next_batch(&sync(&server, &bob, None).await);

        // Bob joins: alice now shares a room with him, so her devices are news; and his own
        // devices are announced again for the room's servers, so he is listed too (as
        // Complement's TestDeviceListsUpdateOverFederation expects).
        let (status, _) = server
            .post(
                &format!("/_matrix/client/v3/rooms/{}/join", enc(&room)),
                &bob.access_token,
                json!({}),
            )
            .await;
        assert_eq!(status, 200);
        let body = sync(&server, &bob, Some(&since)).await;
        assert_eq!(
            listed(&body, "changed"),
            json!([alice.user_id, bob.user_id]),
            "{kind:?}: {body}"
        );
        let since = next_batch(&body);

        // Alice uploads device keys; carol (no shared room) too: only alice is news to bob.
        let (status, _) = upload(
            &server,
            &alice,
            json!({"device_keys": device_keys(&alice, &key_pair(1))}),
        )
        .await;
        assert_eq!(status, 200);
        let (status, _) = upload(
            &server,
            &carol,
            json!({"device_keys": device_keys(&carol, &key_pair(3))}),
        )
        .await;
        assert_eq!(status, 200);
        let body = sync(&server, &bob, Some(&since)).await;
        assert_eq!(
            listed(&body, "changed"),
            json!([alice.user_id]),
            "{kind:?}: {body}"
        );
        assert_eq!(listed(&body, "left"), json!([]));
        let (status, changes) = server
            .get(
                &format!(
                    "/_matrix/client/v3/keys/changes?from={}&to={}",
                    enc(&since),
                    enc(&next_batch(&body))
                ),
                &bob.access_token,
            )
            .await;
        assert_eq!(status, 200, "{changes}");
        assert_eq!(changes["changed"], json!([alice.user_id]), "{kind:?}");
        let since = next_batch(&body);

        // A new key upload wakes a waiting sync.
        let waiting = {
            let server = &server;
            let bob = &bob;
            let since = since.clone();
            async move {
                let (status, body) = server
                    .get(
                        &format!(
                            "/_matrix/client/v3/sync?since={}&timeout=10000",
                            enc(&since)
                        ),
                        &bob.access_token,
                    )
                    .await;
                assert_eq!(status, 200);
                body
            }
        };
        let second = login(&server, &alice).await;
        let (body, _) = tokio::join!(waiting, async {
            tokio::time::sleep(std::time::Duration::from_millis(200)).await;
            upload(
                &server,
                &second,
                json!({"device_keys": device_keys(&second, &key_pair(4))}),
            )
            .await
        });
        assert_eq!(
            listed(&body, "changed"),
            json!([alice.user_id]),
            "{kind:?}: {body}"
        );
        let since = next_batch(&body);

        // Alice leaves the only shared room: she is in `left`.
        let (status, _) = server
            .post(
                &format!("/_matrix/client/v3/rooms/{}/leave", enc(&room)),
                &alice.access_token,
                json!({}),
            )
            .await;
        assert_eq!(status, 200);
        let body = sync(&server, &bob, Some(&since)).await;
        assert_eq!(
            listed(&body, "left"),
            json!([alice.user_id]),
            "{kind:?}: {body}"
        );
        assert_eq!(listed(&body, "changed"), json!([]));
        server.stop().await;
    }
}

#[tokio::test]
async fn deleting_a_device_deletes_its_keys_and_announces_it() {
    for kind in test_backends() {
        let server = TestServer::start(kind).await;
        let alice = server.register("alice").await;
        let bob = server.register("bob").await;
        let room = server
            .create_room(&alice, json!({"preset": "public_chat"}))
            .await;
        server
            .post(
                &format!("/_matrix/client/v3/rooms/{}/join", enc(&room)),
                &bob.access_token,
                json!({}),
            )
            .await;
        let second = login(&server, &alice).await;
        let (status, _) = upload(
            &server,
            &second,
            json!({"device_keys": device_keys(&second, &key_pair(5)), "one_time_keys": {"signed_curve25519:A": otk(1)}}),
        )
        .await;
        assert_eq!(status, 200);
        let since = next_batch(&sync(&server, &bob, None).await);

        // Renaming a device is a change too: the name shows in /keys/query.
        let (status, _) = server
            .put(
                &format!("/_matrix/client/v3/devices/{}", enc(&second.device_id)),
                &second.access_token,
                json!({"display_name": "Laptop"}),
            )
            .await;
        assert_eq!(status, 200);
        let body = sync(&server, &bob, Some(&since)).await;
        assert_eq!(
            listed(&body, "changed"),
            json!([alice.user_id]),
            "{kind:?}: {body}"
        );
        let since = next_batch(&body);
        let keys = query(&server, &bob, &[&alice.user_id]).await;
        assert_eq!(
            keys["device_keys"][&alice.user_id][&second.device_id]["unsigned"]["device_display_name"],
            "Laptop",
            "{keys}"
        );

        // A message waiting for the second device goes with it.
        let (status, _) = server
            .put(
                "/_matrix/client/v3/sendToDevice/m.test/waiting",
                &bob.access_token,
                json!({"messages": {alice.user_id.clone(): {second.device_id.clone(): {"n": 1}}}}),
            )
            .await;
        assert_eq!(status, 200);

        // Logging the second device out deletes it and its keys.
        let (status, _) = server
            .post("/_matrix/client/v3/logout", &second.access_token, json!({}))
            .await;
        assert_eq!(status, 200);
        // A new device under the same id does not receive the old device's message.
        let (status, body) = server
            .call(
                reqwest::Method::POST,
                "/_matrix/client/v3/login",
                None,
                Some(json!({"type": "m.login.password", "identifier": {"type": "m.id.user", "user": alice.user_id}, "password": alice.password, "device_id": second.device_id})),
            )
            .await;
        assert_eq!(status, 200, "{body}");
        let again = TestUser {
            user_id: alice.user_id.clone(),
            device_id: second.device_id.clone(),
            access_token: body["access_token"].as_str().unwrap().to_owned(),
            password: alice.password.clone(),
        };
        let fresh = sync(&server, &again, None).await;
        assert_eq!(
            fresh["to_device"]["events"].as_array().map_or(0, Vec::len),
            0,
            "{kind:?}: {fresh}"
        );
        let (status, _) = server
            .post("/_matrix/client/v3/logout", &again.access_token, json!({}))
            .await;
        assert_eq!(status, 200);
        let body = sync(&server, &bob, Some(&since)).await;
        assert_eq!(
            listed(&body, "changed"),
            json!([alice.user_id]),
            "{kind:?}: {body}"
        );
        let since = next_batch(&body);
        let keys = query(&server, &bob, &[&alice.user_id]).await;
        assert_eq!(
            keys["device_keys"][&alice.user_id],
            json!({}),
            "{kind:?}: {keys}"
        );
        assert!(claim(&server, &bob, &second).await.is_none(), "{kind:?}");

        // Deactivating the account announces it too.
        let (status, challenge) = server
            .post(
                "/_matrix/client/v3/account/deactivate",
                &alice.access_token,
                json!({}),
            )
            .await;
        assert_eq!(status, 401);
        let session = challenge["session"].as_str().unwrap();
        let (status, body) = server
            .post(
                "/_matrix/client/v3/account/deactivate",
                &alice.access_token,
                json!({"auth": {"type": "m.login.password", "identifier": {"type": "m.id.user", "user": alice.user_id}, "password": alice.password, "session": session}}),
            )
            .await;
        assert_eq!(status, 200, "{body}");
        let body = sync(&server, &bob, Some(&since)).await;
        assert!(
            listed(&body, "changed") == json!([alice.user_id])
                || listed(&body, "left") == json!([alice.user_id]),
            "{kind:?}: {body}"
        );
        server.stop().await;
    }
}

#[tokio::test]
async fn cross_signing_keys_and_signatures() {
    for kind in test_backends() {
        let server = TestServer::start(kind).await;
        let alice = server.register("alice").await;
        let bob = server.register("bob").await;
        let carol = server.register("carol").await;
        let device_key = key_pair(10);
        let (master, ssk, usk) = (key_pair(11), key_pair(12), key_pair(13));
        upload(
            &server,
            &alice,
            json!({"device_keys": device_keys(&alice, &device_key)}),
        )
        .await;

        // The first upload needs no UIA; an identical one neither.
        let keys = cross_signing_keys(&alice, &master, &ssk, &usk);
        let path = "/_matrix/client/v3/keys/device_signing/upload";
        let (status, body) = server.post(path, &alice.access_token, keys.clone()).await;
        assert_eq!(status, 200, "{kind:?}: {body}");
        let (status, body) = server.post(path, &alice.access_token, keys.clone()).await;
        assert_eq!(status, 200, "{kind:?}: {body}");
        // Replacing them does.
        let replacement = cross_signing_keys(&alice, &key_pair(21), &key_pair(22), &key_pair(23));
        let (status, body) = server.post(path, &alice.access_token, replacement).await;
        assert_eq!(status, 401, "{kind:?}: {body}");
        assert!(body["flows"].is_array());

        // A self-signing key the master key did not sign.
        let mut bad = cross_signing_keys(&bob, &key_pair(31), &key_pair(32), &key_pair(33));
        bad["self_signing_key"] = signed(
            cross_signing_key(&bob, "self_signing", &key_pair(32)),
            &bob.user_id,
            &key_id_of(&key_pair(31)),
            &key_pair(99),
        );
        let (status, body) = server.post(path, &bob.access_token, bad).await;
        assert_eq!(
            (status.as_u16(), body["errcode"].clone()),
            (400, json!("M_INVALID_SIGNATURE")),
            "{kind:?}: {body}"
        );
        let (bob_master, bob_ssk, bob_usk) = (key_pair(41), key_pair(42), key_pair(43));
        let (status, _) = server
            .post(
                path,
                &bob.access_token,
                cross_signing_keys(&bob, &bob_master, &bob_ssk, &bob_usk),
            )
            .await;
        assert_eq!(status, 200);

        // Others see master and self-signing keys; only the owner their user-signing key.
        let seen = query(&server, &bob, &[&alice.user_id]).await;
        assert_eq!(
            seen["master_keys"][&alice.user_id]["keys"], keys["master_key"]["keys"],
            "{seen}"
        );
        assert_eq!(
            seen["self_signing_keys"][&alice.user_id]["keys"],
            keys["self_signing_key"]["keys"]
        );
        assert!(
            seen["user_signing_keys"].get(&alice.user_id).is_none(),
            "{seen}"
        );
        let own = query(&server, &alice, &[&alice.user_id]).await;
        assert_eq!(
            own["user_signing_keys"][&alice.user_id]["keys"],
            keys["user_signing_key"]["keys"]
        );

        // Alice's self-signing key signs her device; a bad signature fails that key only.
        let stored = own["device_keys"][&alice.user_id][&alice.device_id].clone();
        let mut stored = stored;
        stored.as_object_mut().unwrap().remove("unsigned");
        let good = signed(stored.clone(), &alice.user_id, &key_id_of(&ssk), &ssk);
        let forged = signed(
            cross_signing_key(&alice, "master", &master),
            &alice.user_id,
            &format!("ed25519:{}", alice.device_id),
            &key_pair(98),
        );
        let master_id = b64(&master.public_key());
        let (status, body) = server
            .post(
                "/_matrix/client/v3/keys/signatures/upload",
                &alice.access_token,
                json!({alice.user_id.clone(): {alice.device_id.clone(): good, master_id.clone(): forged}}),
            )
            .await;
        assert_eq!(status, 200, "{body}");
        assert_eq!(
            body["failures"][&alice.user_id][&master_id]["errcode"], "M_INVALID_SIGNATURE",
            "{kind:?}: {body}"
        );
        assert!(
            body["failures"][&alice.user_id]
                .get(&alice.device_id)
                .is_none(),
            "{body}"
        );
        let seen = query(&server, &bob, &[&alice.user_id]).await;
        let signatures =
            &seen["device_keys"][&alice.user_id][&alice.device_id]["signatures"][&alice.user_id];
        assert!(
            signatures.get(key_id_of(&ssk)).is_some(),
            "{kind:?}: {seen}"
        );
        // Cross-signed, the device's keys can no longer be replaced; the stored ones stay.
        let (status, body) = upload(
            &server,
            &alice,
            json!({"device_keys": device_keys(&alice, &key_pair(14))}),
        )
        .await;
        assert_eq!(
            (status, body["errcode"].clone()),
            (400, json!("M_INVALID_PARAM")),
            "{kind:?}: {body}"
        );
        let again = query(&server, &bob, &[&alice.user_id]).await;
        assert_eq!(
            again["device_keys"][&alice.user_id][&alice.device_id],
            seen["device_keys"][&alice.user_id][&alice.device_id]
        );
        assert!(
            seen["master_keys"][&alice.user_id]["signatures"][&alice.user_id]
                .get(format!("ed25519:{}", alice.device_id))
                .is_none()
        );
        // The device signs the master key properly.
        let by_device = signed(
            cross_signing_key(&alice, "master", &master),
            &alice.user_id,
            &format!("ed25519:{}", alice.device_id),
            &device_key,
        );
        let (_, body) = server
            .post(
                "/_matrix/client/v3/keys/signatures/upload",
                &alice.access_token,
                json!({alice.user_id.clone(): {master_id.clone(): by_device}}),
            )
            .await;
        assert!(
            body.get("failures")
                .is_none_or(|f| f.as_object().is_some_and(|f| f.is_empty())),
            "{body}"
        );

        // Alice's user-signing key signs bob's master key: alice sees it, carol does not.
        let bob_master_id = b64(&bob_master.public_key());
        let on_bob = signed(
            cross_signing_key(&bob, "master", &bob_master),
            &alice.user_id,
            &key_id_of(&usk),
            &usk,
        );
        let (status, body) = server
            .post(
                "/_matrix/client/v3/keys/signatures/upload",
                &alice.access_token,
                json!({bob.user_id.clone(): {bob_master_id.clone(): on_bob}}),
            )
            .await;
        assert_eq!(status, 200, "{body}");
        assert!(
            body.get("failures")
                .is_none_or(|f| f.as_object().is_some_and(|f| f.is_empty())),
            "{kind:?}: {body}"
        );
        let by_alice = query(&server, &alice, &[&bob.user_id]).await;
        assert!(
            by_alice["master_keys"][&bob.user_id]["signatures"][&alice.user_id]
                .get(key_id_of(&usk))
                .is_some(),
            "{kind:?}: {by_alice}"
        );
        let by_carol = query(&server, &carol, &[&bob.user_id]).await;
        assert!(
            by_carol["master_keys"][&bob.user_id]["signatures"]
                .get(&alice.user_id)
                .is_none(),
            "{by_carol}"
        );
        server.stop().await;
    }
}

#[tokio::test]
async fn key_backup_versions_and_replacement_rules() {
    for kind in test_backends() {
        let server = TestServer::start(kind).await;
        let alice = server.register("alice").await;
        let token = &alice.access_token;
        let algorithm = json!({"algorithm": "m.megolm_backup.v1.curve25519-aes-sha2", "auth_data": {"public_key": "abc"}});
        let (status, body) = server
            .get("/_matrix/client/v3/room_keys/version", token)
            .await;
        assert_eq!(
            (status.as_u16(), body["errcode"].clone()),
            (404, json!("M_NOT_FOUND"))
        );
        let (status, body) = server
            .post(
                "/_matrix/client/v3/room_keys/version",
                token,
                algorithm.clone(),
            )
            .await;
        assert_eq!(status, 200, "{body}");
        assert_eq!(body["version"], "1");
        let (_, info) = server
            .get("/_matrix/client/v3/room_keys/version", token)
            .await;
        assert_eq!(info["version"], "1");
        assert_eq!(info["count"], 0);
        assert_eq!(info["auth_data"], algorithm["auth_data"]);
        let etag0 = info["etag"].clone();

        let room = "!room:localhost";
        let key = |fmi: u64, fc: u64, verified: bool, marker: &str| json!({"first_message_index": fmi, "forwarded_count": fc, "is_verified": verified, "session_data": {"ciphertext": marker}});
        let session_path = |version: &str, session: &str| {
            format!(
                "/_matrix/client/v3/room_keys/keys/{}/{session}?version={version}",
                enc(room)
            )
        };
        let (status, body) = server
            .put(&session_path("1", "s1"), token, key(5, 1, false, "first"))
            .await;
        assert_eq!(status, 200, "{kind:?}: {body}");
        assert_eq!(body["count"], 1);
        let etag1 = body["etag"].clone();
        assert_ne!(etag1, etag0, "the etag changes with the keys");
        // A worse key (later first index) changes nothing, etag included.
        let (_, body) = server
            .put(&session_path("1", "s1"), token, key(6, 0, false, "worse"))
            .await;
        assert_eq!(body["etag"], etag1, "{kind:?}");
        let (_, got) = server.get(&session_path("1", "s1"), token).await;
        assert_eq!(
            got["session_data"]["ciphertext"], "first",
            "{kind:?}: {got}"
        );
        // Same index, fewer forwards: better.
        let (_, body) = server
            .put(
                &session_path("1", "s1"),
                token,
                key(5, 0, false, "fewer-forwards"),
            )
            .await;
        assert_ne!(body["etag"], etag1);
        let (_, got) = server.get(&session_path("1", "s1"), token).await;
        assert_eq!(got["session_data"]["ciphertext"], "fewer-forwards");
        // Verified beats a lower index.
        server
            .put(
                &session_path("1", "s1"),
                token,
                key(50, 3, true, "verified"),
            )
            .await;
        server
            .put(
                &session_path("1", "s1"),
                token,
                key(0, 0, false, "unverified"),
            )
            .await;
        let (_, got) = server.get(&session_path("1", "s1"), token).await;
        assert_eq!(got["session_data"]["ciphertext"], "verified", "{kind:?}");

        // The per-room and the all-rooms forms.
        let (status, body) = server
            .put(
                &format!("/_matrix/client/v3/room_keys/keys/{}?version=1", enc(room)),
                token,
                json!({"sessions": {"s2": key(0, 0, false, "two")}}),
            )
            .await;
        assert_eq!(
            (status.as_u16(), body["count"].clone()),
            (200, json!(2)),
            "{body}"
        );
        let (status, body) = server
            .put(
                "/_matrix/client/v3/room_keys/keys?version=1",
                token,
                json!({"rooms": {"!other:localhost": {"sessions": {"s3": key(0, 0, false, "three")}}}}),
            )
            .await;
        assert_eq!(
            (status.as_u16(), body["count"].clone()),
            (200, json!(3)),
            "{body}"
        );
        let (_, all) = server
            .get("/_matrix/client/v3/room_keys/keys?version=1", token)
            .await;
        assert_eq!(
            all["rooms"][room]["sessions"].as_object().unwrap().len(),
            2,
            "{all}"
        );
        assert_eq!(
            all["rooms"]["!other:localhost"]["sessions"]["s3"]["session_data"]["ciphertext"],
            "three"
        );
        let (_, one_room) = server
            .get(
                &format!("/_matrix/client/v3/room_keys/keys/{}?version=1", enc(room)),
                token,
            )
            .await;
        assert_eq!(
            one_room["sessions"].as_object().unwrap().len(),
            2,
            "{one_room}"
        );
        let (status, body) = server.get(&session_path("1", "missing"), token).await;
        assert_eq!(
            (status.as_u16(), body["errcode"].clone()),
            (404, json!("M_NOT_FOUND"))
        );

        // Bad key data: nothing written.
        let (status, body) = server
            .put(
                &session_path("1", "s4"),
                token,
                json!({"first_message_index": 0, "forwarded_count": 0, "session_data": {}}),
            )
            .await;
        assert_eq!(
            (status.as_u16(), body["errcode"].clone()),
            (400, json!("M_BAD_JSON")),
            "{body}"
        );

        // A new version becomes current: keys for the old one are refused, naming the new one.
        let (_, body) = server
            .post(
                "/_matrix/client/v3/room_keys/version",
                token,
                algorithm.clone(),
            )
            .await;
        assert_eq!(body["version"], "2");
        let (status, body) = server
            .put(&session_path("1", "s5"), token, key(0, 0, false, "late"))
            .await;
        assert_eq!(status, 403, "{kind:?}: {body}");
        assert_eq!(body["errcode"], "M_WRONG_ROOM_KEYS_VERSION");
        assert_eq!(body["current_version"], "2");
        let (status, body) = server
            .put(&session_path("99", "s5"), token, key(0, 0, false, "x"))
            .await;
        assert_eq!(
            (status.as_u16(), body["errcode"].clone()),
            (404, json!("M_NOT_FOUND"))
        );
        // The old version still reads.
        let (_, info) = server
            .get("/_matrix/client/v3/room_keys/version/1", token)
            .await;
        assert_eq!(info["count"], 3, "{info}");

        // Updating: new auth_data yes, a new algorithm or another version in the body no.
        let mut updated = algorithm.clone();
        updated["auth_data"] = json!({"public_key": "def"});
        let (status, body) = server
            .put(
                "/_matrix/client/v3/room_keys/version/2",
                token,
                updated.clone(),
            )
            .await;
        assert_eq!(status, 200, "{body}");
        let (_, info) = server
            .get("/_matrix/client/v3/room_keys/version/2", token)
            .await;
        assert_eq!(info["auth_data"]["public_key"], "def");
        let mut other_algorithm = updated.clone();
        other_algorithm["algorithm"] = json!("m.other");
        let (status, body) = server
            .put(
                "/_matrix/client/v3/room_keys/version/2",
                token,
                other_algorithm,
            )
            .await;
        assert_eq!(
            (status.as_u16(), body["errcode"].clone()),
            (400, json!("M_INVALID_PARAM"))
        );
        let mut wrong_version = updated.clone();
        wrong_version["version"] = json!("1");
        let (status, body) = server
            .put(
                "/_matrix/client/v3/room_keys/version/2",
                token,
                wrong_version,
            )
            .await;
        assert_eq!(
            (status.as_u16(), body["errcode"].clone()),
            (400, json!("M_INVALID_PARAM"))
        );

        // Deleting keys and versions; numbers are never reused.
        let (status, body) = server
            .call(
                reqwest::Method::DELETE,
                &session_path("1", "s1"),
                Some(token),
                None,
            )
            .await;
        assert_eq!(
            (status.as_u16(), body["count"].clone()),
            (200, json!(2)),
            "{body}"
        );
        let (status, _) = server
            .call(
                reqwest::Method::DELETE,
                "/_matrix/client/v3/room_keys/version/2",
                Some(token),
                None,
            )
            .await;
        assert_eq!(status, 200);
        let (_, info) = server
            .get("/_matrix/client/v3/room_keys/version", token)
            .await;
        assert_eq!(
            info["version"], "1",
            "{kind:?}: the newest live version is current"
        );
        let (status, _) = server
            .get("/_matrix/client/v3/room_keys/version/2", token)
            .await;
        assert_eq!(status, 404);
        let (_, body) = server
            .post(
                "/_matrix/client/v3/room_keys/version",
                token,
                algorithm.clone(),
            )
            .await;
        assert_eq!(body["version"], "3", "{kind:?}");
        // Another user sees none of it.
        let bob = server.register("bob").await;
        let (status, _) = server
            .get("/_matrix/client/v3/room_keys/version/1", &bob.access_token)
            .await;
        assert_eq!(status, 404);
        server.stop().await;
    }
}

#[tokio::test]
async fn key_bounds() {
    for kind in test_backends() {
        let server = TestServer::start(kind).await;
        let alice = server.register("alice").await;
        // Too many keys in one device's keys.
        let mut keys = device_keys(&alice, &key_pair(1));
        for i in 0..70 {
            keys["keys"][format!("curve25519:extra{i}")] = json!("k");
        }
        let (status, body) = upload(&server, &alice, json!({"device_keys": keys})).await;
        assert_eq!(
            (status, body["errcode"].clone()),
            (400, json!("M_INVALID_PARAM")),
            "{kind:?}: {body}"
        );
        // Too many one-time keys in one upload.
        let batch = |from: usize, n: usize| -> serde_json::Map<String, Value> {
            (from..from + n)
                .map(|i| {
                    (
                        format!("signed_curve25519:K{i:05}"),
                        json!({"key": format!("k{i}")}),
                    )
                })
                .collect()
        };
        let (status, body) = upload(&server, &alice, json!({"one_time_keys": batch(0, 201)})).await;
        assert_eq!(
            (status, body["errcode"].clone()),
            (400, json!("M_INVALID_PARAM")),
            "{body}"
        );
        // Too many held by one device: the upload that would pass the bound writes nothing.
        for round in 0..5 {
            let (status, body) = upload(
                &server,
                &alice,
                json!({"one_time_keys": batch(round * 200, 200)}),
            )
            .await;
            assert_eq!(status, 200, "{body}");
        }
        let (status, body) =
            upload(&server, &alice, json!({"one_time_keys": batch(1000, 1)})).await;
        assert_eq!(
            (status, body["errcode"].clone()),
            (400, json!("M_INVALID_PARAM")),
            "{kind:?}: {body}"
        );
        let body = sync(&server, &alice, None).await;
        assert_eq!(
            body["device_one_time_keys_count"]["signed_curve25519"], 1000,
            "{kind:?}"
        );
        server.stop().await;
    }
}

#[tokio::test]
async fn to_device_payload_is_bounded() {
    for kind in test_backends() {
        let server = TestServer::start(kind).await;
        let alice = server.register("alice").await;
        let bob = server.register("bob").await;
        let send = |txn: &'static str, content: Value| {
            let server = &server;
            let alice = &alice;
            let bob = &bob;
            async move {
                server
                    .put(
                        &format!("/_matrix/client/v3/sendToDevice/m.room.encrypted/{txn}"),
                        &alice.access_token,
                        json!({"messages": {bob.user_id.clone(): {bob.device_id.clone(): content}}}),
                    )
                    .await
            }
        };
        let (status, body) = send("big", json!({"ciphertext": "x".repeat(70_000)})).await;
        assert_eq!(
            (status.as_u16(), body["errcode"].clone()),
            (413, json!("M_TOO_LARGE")),
            "{kind:?}: {body}"
        );
        let (status, body) = send("small", json!({"ciphertext": "x".repeat(1_000)})).await;
        assert_eq!(status, 200, "{body}");
        let body = sync(&server, &bob, None).await;
        let events = body["to_device"]["events"].as_array().unwrap();
        assert_eq!(
            events.len(),
            1,
            "{kind:?}: only the small message was queued: {body}"
        );
        server.stop().await;
    }
}

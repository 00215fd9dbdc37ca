//! Dehydrated devices (MSC3814, `/_matrix/client/unstable/org.matrix.msc3814.v1/dehydrated_device`)
//! over HTTP, on both databases: put, get and delete; a new one replacing (and deleting) the old
//! one with its keys and messages; its keys in other users' `/keys/query` and `/keys/claim` and in
//! `/user/devices` as uploaded; its to-device messages read in pages by `next_batch` (and kept, as the MSC asks);
//! the 403s and 404s; no login onto it; bad uploads leaving nothing written; puts rate-limited.

use myelin_testkit::{TestServer, TestUser, enc, test_backends};
use serde_json::{Value, json};

const DEHYDRATED: &str = "/_matrix/client/unstable/org.matrix.msc3814.v1/dehydrated_device";

fn events_path(device_id: &str) -> String {
    format!("{DEHYDRATED}/{}/events", enc(device_id))
}

/// Keys of `user`'s dehydrated device `device_id`, marked as such (signatures are not checked
/// on device keys, so any string does).
fn device_keys(user: &TestUser, device_id: &str) -> Value {
    json!({
        "user_id": user.user_id,
        "device_id": device_id,
        "dehydrated": true,
        "algorithms": ["m.olm.v1.curve25519-aes-sha2", "m.megolm.v1.aes-sha2"],
        "keys": {
            format!("curve25519:{device_id}"): device_id,
            format!("ed25519:{device_id}"): format!("ed-{device_id}"),
        },
        "signatures": {user.user_id.clone(): {format!("ed25519:{device_id}"): "sig"}},
    })
}

fn device_data(pickle: &str) -> Value {
    json!({"algorithm": "org.matrix.msc3814.v2", "device_pickle": pickle, "nonce": "bm9uY2U"})
}

/// A `PUT /dehydrated_device` body for `device_id` with one one-time key and a fallback key.
fn put_body(user: &TestUser, device_id: &str, pickle: &str) -> Value {
    json!({
        "device_id": device_id,
        "initial_device_display_name": "Dehydrated device",
        "device_data": device_data(pickle),
        "device_keys": device_keys(user, device_id),
        "one_time_keys": {format!("signed_curve25519:otk-{device_id}"): {"key": format!("otk-{device_id}")}},
        "fallback_keys": {format!("signed_curve25519:fb-{device_id}"): {"key": format!("fb-{device_id}"), "fallback": true}},
    })
}

async fn put(server: &TestServer, user: &TestUser, body: Value) -> (u16, Value) {
    let (status, body) = server.put(DEHYDRATED, &user.access_token, body).await;
    (status.as_u16(), body)
}

async fn get(server: &TestServer, user: &TestUser) -> (u16, Value) {
    let (status, body) = server.get(DEHYDRATED, &user.access_token).await;
    (status.as_u16(), body)
}

async fn delete(server: &TestServer, user: &TestUser) -> (u16, Value) {
    let (status, body) = server
        .call(
            reqwest::Method::DELETE,
            DEHYDRATED,
            Some(&user.access_token),
            None,
        )
        .await;
    (status.as_u16(), body)
}

async fn events(
    server: &TestServer,
    user: &TestUser,
    device_id: &str,
    next_batch: Option<&str>,
) -> (u16, Value) {
    let body = match next_batch {
        Some(token) => json!({"next_batch": token}),
        None => json!({}),
    };
    let (status, body) = server
        .post(&events_path(device_id), &user.access_token, body)
        .await;
    (status.as_u16(), body)
}

/// The device ids `/keys/query` shows `target` to have, as `asker` sees them.
async fn queried_devices(server: &TestServer, asker: &TestUser, target: &TestUser) -> Value {
    let (status, body) = server
        .post(
            "/_matrix/client/v3/keys/query",
            &asker.access_token,
            json!({"device_keys": {target.user_id.clone(): []}}),
        )
        .await;
    assert_eq!(status, 200, "{body}");
    body["device_keys"][&target.user_id].clone()
}

async fn claim(server: &TestServer, asker: &TestUser, target: &TestUser, device: &str) -> Value {
    let (status, body) = server
        .post(
            "/_matrix/client/v3/keys/claim",
            &asker.access_token,
            json!({"one_time_keys": {target.user_id.clone(): {device: "signed_curve25519"}}}),
        )
        .await;
    assert_eq!(status, 200, "{body}");
    body["one_time_keys"][&target.user_id][device].clone()
}

async fn device_ids(server: &TestServer, user: &TestUser) -> Vec<String> {
    let (status, body) = server
        .get("/_matrix/client/v3/devices", &user.access_token)
        .await;
    assert_eq!(status, 200, "{body}");
    let mut ids: Vec<String> = body["devices"]
        .as_array()
        .unwrap()
        .iter()
        .map(|d| d["device_id"].as_str().unwrap().to_owned())
        .collect();
    ids.sort();
    ids
}

/// `sender` sends one to-device message to `user`'s `device` (or `*`).
async fn send_to_device(
    server: &TestServer,
    sender: &TestUser,
    user: &TestUser,
    device: &str,
    txn: &str,
    n: usize,
) {
    let (status, body) = server
        .put(
            &format!("/_matrix/client/v3/sendToDevice/m.room.encrypted/{txn}"),
            &sender.access_token,
            json!({"messages": {user.user_id.clone(): {device: {"ciphertext": format!("message {n}")}}}}),
        )
        .await;
    assert_eq!(status, 200, "{body}");
}

fn ciphertexts(body: &Value) -> Vec<String> {
    body["events"]
        .as_array()
        .unwrap_or_else(|| panic!("no events: {body}"))
        .iter()
        .map(|e| e["content"]["ciphertext"].as_str().unwrap().to_owned())
        .collect()
}

#[tokio::test]
async fn put_get_delete_round_trip() {
    for kind in test_backends() {
        let server = TestServer::start(kind).await;
        let alice = server.register("alice").await;
        let bob = server.register("bob").await;

        // Offered, and M_NOT_FOUND (not M_UNRECOGNIZED) while there is none: how clients tell.
        let (_, versions) = server
            .call(reqwest::Method::GET, "/_matrix/client/versions", None, None)
            .await;
        assert_eq!(
            versions["unstable_features"]["org.matrix.msc3814"], true,
            "{versions}"
        );
        let (status, body) = get(&server, &alice).await;
        assert_eq!(
            (status, body["errcode"].clone()),
            (404, json!("M_NOT_FOUND")),
            "{kind:?}: {body}"
        );
        let (status, body) = delete(&server, &alice).await;
        assert_eq!(
            (status, body["errcode"].clone()),
            (404, json!("M_NOT_FOUND")),
            "{kind:?}: {body}"
        );

        let (status, body) = put(&server, &alice, put_body(&alice, "DEHYD+1/x", "pickle-1")).await;
        assert_eq!(status, 200, "{kind:?}: {body}");
        assert_eq!(body["device_id"], "DEHYD+1/x");
        let (status, body) = get(&server, &alice).await;
        assert_eq!(status, 200, "{kind:?}: {body}");
        assert_eq!(
            body,
            json!({"device_id": "DEHYD+1/x", "device_data": device_data("pickle-1")})
        );
        // Only its owner has one.
        assert_eq!(get(&server, &bob).await.0, 404, "{kind:?}");

        // A device of the account, listed with the others.
        let mut expected = vec![alice.device_id.clone(), "DEHYD+1/x".to_owned()];
        expected.sort();
        assert_eq!(device_ids(&server, &alice).await, expected, "{kind:?}");

        // Other users see its keys as uploaded (`dehydrated: true` included) and claim its keys.
        let devices = queried_devices(&server, &bob, &alice).await;
        let keys = &devices["DEHYD+1/x"];
        assert_eq!(keys["dehydrated"], true, "{kind:?}: {devices}");
        assert_eq!(
            keys["keys"],
            device_keys(&alice, "DEHYD+1/x")["keys"],
            "{kind:?}"
        );
        assert_eq!(
            keys["unsigned"]["device_display_name"], "Dehydrated device",
            "{kind:?}: {devices}"
        );
        assert_eq!(
            claim(&server, &bob, &alice, "DEHYD+1/x").await,
            json!({"signed_curve25519:otk-DEHYD+1/x": {"key": "otk-DEHYD+1/x"}}),
            "{kind:?}"
        );
        // Other servers get it in `/user/devices` like any device.
        let alice_id = ruma::UserId::parse(alice.user_id.as_str()).unwrap();
        let federated = server
            .services()
            .e2ee
            .federation_user_devices(&alice_id)
            .await
            .unwrap();
        let dehydrated = federated
            .devices
            .iter()
            .find(|(id, _, _)| id == "DEHYD+1/x")
            .unwrap_or_else(|| panic!("{kind:?}: {:?}", federated.devices));
        assert_eq!(dehydrated.1["dehydrated"], true, "{kind:?}");
        // The one-time key is gone: the fallback key next.
        assert_eq!(
            claim(&server, &bob, &alice, "DEHYD+1/x").await,
            json!({"signed_curve25519:fb-DEHYD+1/x": {"key": "fb-DEHYD+1/x", "fallback": true}}),
            "{kind:?}"
        );

        let (status, body) = delete(&server, &alice).await;
        assert_eq!(status, 200, "{kind:?}: {body}");
        assert_eq!(body, json!({"device_id": "DEHYD+1/x"}));
        assert_eq!(get(&server, &alice).await.0, 404, "{kind:?}");
        assert_eq!(delete(&server, &alice).await.0, 404, "{kind:?}");
        assert_eq!(
            device_ids(&server, &alice).await,
            vec![alice.device_id.clone()]
        );
        assert!(
            queried_devices(&server, &bob, &alice)
                .await
                .get("DEHYD+1/x")
                .is_none(),
            "{kind:?}: its keys went with it"
        );
        server.stop().await;
    }
}

#[tokio::test]
async fn a_new_dehydrated_device_replaces_the_old_one_and_its_keys() {
    for kind in test_backends() {
        let server = TestServer::start(kind).await;
        let alice = server.register("alice").await;
        let bob = server.register("bob").await;
        let room = server
            .create_room(&alice, json!({"preset": "public_chat"}))
            .await;
        let (status, _) = server
            .post(
                &format!("/_matrix/client/v3/rooms/{}/join", enc(&room)),
                &bob.access_token,
                json!({}),
            )
            .await;
        assert_eq!(status, 200);

        assert_eq!(
            put(&server, &alice, put_body(&alice, "OLD", "pickle-old"))
                .await
                .0,
            200
        );
        send_to_device(&server, &bob, &alice, "OLD", "to-old", 1).await;
        let (_, sync) = server
            .get("/_matrix/client/v3/sync", &bob.access_token)
            .await;
        let since = sync["next_batch"].as_str().unwrap().to_owned();

        let (status, body) = put(&server, &alice, put_body(&alice, "NEW", "pickle-new")).await;
        assert_eq!(status, 200, "{kind:?}: {body}");
        let (_, body) = get(&server, &alice).await;
        assert_eq!(
            body,
            json!({"device_id": "NEW", "device_data": device_data("pickle-new")})
        );

        // The old device is gone, with its keys and its messages.
        let mut expected = vec![alice.device_id.clone(), "NEW".to_owned()];
        expected.sort();
        assert_eq!(device_ids(&server, &alice).await, expected, "{kind:?}");
        let devices = queried_devices(&server, &bob, &alice).await;
        assert!(devices.get("OLD").is_none(), "{kind:?}: {devices}");
        assert!(devices.get("NEW").is_some(), "{kind:?}: {devices}");
        assert_eq!(
            claim(&server, &bob, &alice, "OLD").await,
            Value::Null,
            "{kind:?}"
        );
        let left = server
            .store()
            .to_device_since(&alice.user_id, "OLD", 0, 10)
            .await
            .unwrap();
        assert!(left.is_empty(), "{kind:?}: {left:?}");
        // The old id is no longer the dehydrated device.
        let (status, body) = events(&server, &alice, "OLD", None).await;
        assert_eq!(
            (status, body["errcode"].clone()),
            (403, json!("M_FORBIDDEN")),
            "{kind:?}: {body}"
        );

        // Bob is told Alice's devices changed.
        let (status, body) = server
            .get(
                &format!("/_matrix/client/v3/sync?since={}", enc(&since)),
                &bob.access_token,
            )
            .await;
        assert_eq!(status, 200);
        assert_eq!(
            body["device_lists"]["changed"],
            json!([alice.user_id]),
            "{kind:?}: {body}"
        );
        server.stop().await;
    }
}

#[tokio::test]
async fn to_device_messages_are_read_in_pages() {
    for kind in test_backends() {
        let server = TestServer::start(kind).await;
        let alice = server.register("alice").await;
        let bob = server.register("bob").await;
        assert_eq!(
            put(&server, &alice, put_body(&alice, "DEHYD", "pickle"))
                .await
                .0,
            200
        );
        // 101 messages: one more than a page. The last goes to every device of Alice's.
        for n in 0..100 {
            send_to_device(&server, &bob, &alice, "DEHYD", &format!("t{n}"), n).await;
        }
        send_to_device(&server, &bob, &alice, "*", "all", 100).await;

        let (status, first) = events(&server, &alice, "DEHYD", None).await;
        assert_eq!(status, 200, "{kind:?}: {first}");
        let expected: Vec<String> = (0..100).map(|n| format!("message {n}")).collect();
        assert_eq!(ciphertexts(&first), expected, "{kind:?}");
        assert_eq!(first["events"][0]["sender"], bob.user_id.as_str());
        assert_eq!(first["events"][0]["type"], "m.room.encrypted");
        let token = first["next_batch"].as_str().unwrap().to_owned();

        let (status, second) = events(&server, &alice, "DEHYD", Some(&token)).await;
        assert_eq!(status, 200, "{kind:?}: {second}");
        assert_eq!(ciphertexts(&second), vec!["message 100".to_owned()]);
        let token = second["next_batch"].as_str().unwrap().to_owned();
        // Past the last message: empty, with a token all the same.
        let (status, end) = events(&server, &alice, "DEHYD", Some(&token)).await;
        assert_eq!(status, 200, "{kind:?}: {end}");
        assert_eq!(end["events"], json!([]), "{kind:?}: {end}");
        assert_eq!(end["next_batch"], token.as_str(), "{kind:?}: {end}");

        // Reading on did not delete the earlier pages (MSC3814): a rehydration cut short can
        // start over.
        let (_, again) = events(&server, &alice, "DEHYD", None).await;
        assert_eq!(ciphertexts(&again), expected, "{kind:?}");

        // Not the dehydrated device, another user's, or none at all: 403.
        for (user, device) in [(&alice, alice.device_id.as_str()), (&bob, "DEHYD")] {
            let (status, body) = events(&server, user, device, None).await;
            assert_eq!(
                (status, body["errcode"].clone()),
                (403, json!("M_FORBIDDEN")),
                "{kind:?}: {body}"
            );
        }
        for bad in ["not-a-token", "+1", "01", "-1", "9223372036854775808"] {
            let (status, body) = events(&server, &alice, "DEHYD", Some(bad)).await;
            assert_eq!(
                (status, body["errcode"].clone()),
                (400, json!("M_INVALID_PARAM")),
                "{kind:?}: {bad}: {body}"
            );
        }

        // Deleting the device deletes its messages.
        assert_eq!(delete(&server, &alice).await.0, 200);
        let left = server
            .store()
            .to_device_since(&alice.user_id, "DEHYD", 0, 10)
            .await
            .unwrap();
        assert!(left.is_empty(), "{kind:?}: {left:?}");
        let (status, _) = events(&server, &alice, "DEHYD", None).await;
        assert_eq!(status, 403, "{kind:?}");
        server.stop().await;
    }
}

#[tokio::test]
async fn no_one_logs_in_to_a_dehydrated_device() {
    for kind in test_backends() {
        let server = TestServer::start(kind).await;
        let alice = server.register("alice").await;
        assert_eq!(
            put(&server, &alice, put_body(&alice, "DEHYD", "pickle"))
                .await
                .0,
            200
        );
        let (status, body) = server
            .call(
                reqwest::Method::POST,
                "/_matrix/client/v3/login",
                None,
                Some(json!({
                    "type": "m.login.password",
                    "identifier": {"type": "m.id.user", "user": alice.user_id},
                    "password": alice.password,
                    "device_id": "DEHYD",
                    "initial_device_display_name": "taken over",
                })),
            )
            .await;
        assert_eq!(
            (status.as_u16(), body["errcode"].clone()),
            (403, json!("M_FORBIDDEN")),
            "{kind:?}: {body}"
        );
        assert!(body.get("access_token").is_none(), "{kind:?}: {body}");
        // Nothing was written: the device keeps its name and stays the dehydrated device.
        let (_, device) = server
            .get("/_matrix/client/v3/devices/DEHYD", &alice.access_token)
            .await;
        assert_eq!(
            device["display_name"], "Dehydrated device",
            "{kind:?}: {device}"
        );
        assert_eq!(get(&server, &alice).await.1["device_id"], "DEHYD");

        // The other way round: a device someone is logged in to cannot become the dehydrated
        // device (its keys and session stay as they are).
        let mut body = put_body(&alice, &alice.device_id, "pickle");
        body["device_keys"] = device_keys(&alice, &alice.device_id);
        let (status, reply) = put(&server, &alice, body).await;
        assert_eq!(
            (status, reply["errcode"].clone()),
            (400, json!("M_INVALID_PARAM")),
            "{kind:?}: {reply}"
        );
        assert_eq!(get(&server, &alice).await.1["device_id"], "DEHYD");
        let (status, _) = server
            .get("/_matrix/client/v3/account/whoami", &alice.access_token)
            .await;
        assert_eq!(status, 200, "{kind:?}");
        server.stop().await;
    }
}

#[tokio::test]
async fn bad_uploads_write_nothing() {
    for kind in test_backends() {
        let server = TestServer::start(kind).await;
        let alice = server.register("alice").await;
        let bob = server.register("bob").await;
        assert_eq!(
            put(&server, &alice, put_body(&alice, "KEEP", "pickle"))
                .await
                .0,
            200
        );

        let mut no_algorithm = put_body(&alice, "BAD", "pickle");
        no_algorithm["device_data"] = json!({"device_pickle": "p"});
        let mut other_user = put_body(&alice, "BAD", "pickle");
        other_user["device_keys"]["user_id"] = json!(bob.user_id);
        let mut other_device = put_body(&alice, "BAD", "pickle");
        other_device["device_keys"]["device_id"] = json!("ELSE");
        // More keys than one `/keys/upload` takes: the same rule here.
        let mut too_many_keys = put_body(&alice, "BAD", "pickle");
        too_many_keys["one_time_keys"] = (0..201)
            .map(|n| {
                (
                    format!("signed_curve25519:k{n}"),
                    json!({"key": format!("k{n}")}),
                )
            })
            .collect::<serde_json::Map<_, _>>()
            .into();
        let huge = put_body(&alice, "BAD", &"p".repeat(70_000));
        let mut no_keys = put_body(&alice, "BAD", "pickle");
        no_keys.as_object_mut().unwrap().remove("device_keys");
        for (body, status, errcode) in [
            (no_algorithm, 400, "M_BAD_JSON"),
            (other_user, 400, "M_INVALID_PARAM"),
            (other_device, 400, "M_INVALID_PARAM"),
            (too_many_keys, 400, "M_INVALID_PARAM"),
            (huge, 413, "M_TOO_LARGE"),
            (no_keys, 400, "M_BAD_JSON"),
        ] {
            let (got, reply) = put(&server, &alice, body).await;
            assert_eq!(
                (got, reply["errcode"].as_str()),
                (status, Some(errcode)),
                "{kind:?}: {reply}"
            );
        }
        // The dehydrated device is still the one before, and BAD was never created.
        assert_eq!(get(&server, &alice).await.1["device_id"], "KEEP");
        let mut expected = vec![alice.device_id.clone(), "KEEP".to_owned()];
        expected.sort();
        assert_eq!(device_ids(&server, &alice).await, expected, "{kind:?}");
        assert!(
            queried_devices(&server, &bob, &alice)
                .await
                .get("KEEP")
                .is_some(),
            "{kind:?}"
        );
        server.stop().await;
    }
}

#[tokio::test]
async fn puts_are_rate_limited_per_user() {
    for kind in test_backends() {
        let server = TestServer::start_with(kind, |config| {
            config.rate_limits.enabled = true;
            config.rate_limits.per_user = myelin_service::config::Bucket {
                per_second: 0.01,
                burst: 3,
            };
        })
        .await;
        let alice = server.register("alice").await;
        let mut statuses = Vec::new();
        for n in 0..5 {
            let device_id = format!("DEHYD{n}");
            let (status, _) = put(&server, &alice, put_body(&alice, &device_id, "pickle")).await;
            statuses.push(status);
        }
        assert_eq!(statuses[..3], [200, 200, 200], "{kind:?}: {statuses:?}");
        assert_eq!(statuses[3..], [429, 429], "{kind:?}: {statuses:?}");
        // The last one that went through is the dehydrated device.
        assert_eq!(get(&server, &alice).await.1["device_id"], "DEHYD2");
        server.stop().await;
    }
}

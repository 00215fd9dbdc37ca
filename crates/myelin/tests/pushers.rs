//! Pushers through HTTP on both databases: setting, listing, replacing, appending and deleting
//! them with the spec's validation, and delivery of notifications to a push gateway (a fake one
//! on loopback that records what it receives), including `event_id_only` and rejected pushkeys.

use std::{
    net::SocketAddr,
    sync::{Arc, Mutex},
    time::Duration,
};

use axum::{Json, Router, extract::State, routing::post};
use myelin_testkit::{TestServer, TestUser, enc, test_backends};
use serde_json::{Value, json};

const NOTIFY: &str = "/_matrix/push/v1/notify";

/// A fake push gateway: records every notify body, answers the first `failures` requests with
/// a 500, and rejects the pushkeys it is told to.
#[derive(Clone, Default)]
struct Gateway {
    received: Arc<Mutex<Vec<Value>>>,
    reject: Arc<Mutex<Vec<String>>>,
    failures: Arc<Mutex<usize>>,
}

impl Gateway {
    async fn start() -> (Self, SocketAddr) {
        let gateway = Gateway::default();
        let app = Router::new()
            .route(NOTIFY, post(notify))
            .with_state(gateway.clone());
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        tokio::spawn(async move {
            axum::serve(listener, app).await.unwrap();
        });
        (gateway, addr)
    }

    /// Waits up to five seconds for a notification with `event_id` sent to `pushkey`.
    async fn wait_for(&self, event_id: &str, pushkey: &str) -> Value {
        for _ in 0..100 {
            let found = self
                .received
                .lock()
                .unwrap()
                .iter()
                .find(|body| {
                    body["notification"]["event_id"] == event_id
                        && body["notification"]["devices"][0]["pushkey"] == pushkey
                })
                .cloned();
            if let Some(body) = found {
                return body;
            }
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
        panic!(
            "no notification for {event_id} to {pushkey}; received: {:?}",
            self.received.lock().unwrap()
        );
    }
}

async fn notify(
    State(gateway): State<Gateway>,
    Json(body): Json<Value>,
) -> Result<Json<Value>, axum::http::StatusCode> {
    {
        let mut failures = gateway.failures.lock().unwrap();
        if *failures > 0 {
            *failures -= 1;
            return Err(axum::http::StatusCode::INTERNAL_SERVER_ERROR);
        }
    }
    gateway.received.lock().unwrap().push(body);
    let rejected = gateway.reject.lock().unwrap().clone();
    Ok(Json(json!({ "rejected": rejected })))
}

fn http_pusher(pushkey: &str, url: &str) -> Value {
    json!({
        "kind": "http",
        "app_id": "org.example.app",
        "pushkey": pushkey,
        "app_display_name": "Example",
        "device_display_name": "Phone",
        "lang": "en",
        "data": {"url": url},
    })
}

async fn set_pusher(server: &TestServer, user: &TestUser, body: Value) -> (u16, Value) {
    let (status, reply) = server
        .post("/_matrix/client/v3/pushers/set", &user.access_token, body)
        .await;
    (status.as_u16(), reply)
}

async fn pushers(server: &TestServer, user: &TestUser) -> Vec<Value> {
    let (status, body) = server
        .get("/_matrix/client/v3/pushers", &user.access_token)
        .await;
    assert_eq!(status, 200, "{body}");
    body["pushers"].as_array().unwrap().clone()
}

async fn shared_room(server: &TestServer, alice: &TestUser, bob: &TestUser) -> String {
    let room = server
        .create_room(alice, json!({"preset": "public_chat"}))
        .await;
    let (status, body) = server
        .post(
            &format!("/_matrix/client/v3/rooms/{}/join", enc(&room)),
            &bob.access_token,
            json!({}),
        )
        .await;
    assert_eq!(status, 200, "{body}");
    room
}

async fn send_text(server: &TestServer, user: &TestUser, room: &str, body: &str) -> String {
    let (status, reply) = server
        .put(
            &format!(
                "/_matrix/client/v3/rooms/{}/send/m.room.message/{}",
                enc(room),
                enc(body)
            ),
            &user.access_token,
            json!({"msgtype": "m.text", "body": body}),
        )
        .await;
    assert_eq!(status, 200, "{reply}");
    reply["event_id"].as_str().unwrap().to_owned()
}

/// A server allowed to post to the fake gateway on loopback, with Alice and Bob in a room.
struct Scene {
    gateway: Gateway,
    /// The gateway's notify URL.
    url: String,
    server: TestServer,
    alice: TestUser,
    bob: TestUser,
    room: String,
}

impl Scene {
    async fn start(kind: myelin_store::DatabaseKind) -> Self {
        let (gateway, addr) = Gateway::start().await;
        let server =
            TestServer::start_with(kind, |config| config.push.allow_private_gateways = true).await;
        let alice = server.register("alice").await;
        let bob = server.register("bob").await;
        let room = shared_room(&server, &alice, &bob).await;
        Scene {
            gateway,
            url: format!("http://{addr}{NOTIFY}"),
            server,
            alice,
            bob,
            room,
        }
    }
}

#[tokio::test]
async fn set_list_replace_append_and_delete() {
    let url = "https://push.example.org/_matrix/push/v1/notify";
    for kind in test_backends() {
        let server = TestServer::start(kind).await;
        let alice = server.register("alice").await;
        let bob = server.register("bob").await;
        assert!(pushers(&server, &alice).await.is_empty());

        let mut pusher = http_pusher("key-1", url);
        pusher["data"]["format"] = json!("event_id_only");
        pusher["profile_tag"] = json!("tag");
        let (status, body) = set_pusher(&server, &alice, pusher).await;
        assert_eq!(status, 200, "{kind:?}: {body}");
        let listed = pushers(&server, &alice).await;
        assert_eq!(listed.len(), 1, "{kind:?}");
        assert_eq!(listed[0]["kind"], "http");
        assert_eq!(listed[0]["app_id"], "org.example.app");
        assert_eq!(listed[0]["pushkey"], "key-1");
        assert_eq!(listed[0]["app_display_name"], "Example");
        assert_eq!(listed[0]["device_display_name"], "Phone");
        assert_eq!(listed[0]["profile_tag"], "tag");
        assert_eq!(listed[0]["lang"], "en");
        assert_eq!(
            listed[0]["data"],
            json!({"url": url, "format": "event_id_only"})
        );

        // The same (app_id, pushkey) again replaces it.
        let mut renamed = http_pusher("key-1", url);
        renamed["device_display_name"] = json!("Tablet");
        assert_eq!(set_pusher(&server, &alice, renamed).await.0, 200);
        let listed = pushers(&server, &alice).await;
        assert_eq!(listed.len(), 1, "{kind:?}");
        assert_eq!(listed[0]["device_display_name"], "Tablet");
        assert_eq!(listed[0]["data"], json!({"url": url}));

        // Another key is a second pusher.
        assert_eq!(
            set_pusher(&server, &alice, http_pusher("key-2", url))
                .await
                .0,
            200
        );
        assert_eq!(pushers(&server, &alice).await.len(), 2);

        // Bob appends key-1: both have it. Without append, it leaves Alice.
        let mut appended = http_pusher("key-1", url);
        appended["append"] = json!(true);
        assert_eq!(set_pusher(&server, &bob, appended).await.0, 200);
        assert_eq!(pushers(&server, &alice).await.len(), 2, "{kind:?}");
        assert_eq!(pushers(&server, &bob).await.len(), 1);
        assert_eq!(
            set_pusher(&server, &bob, http_pusher("key-1", url)).await.0,
            200
        );
        let listed = pushers(&server, &alice).await;
        assert_eq!(listed.len(), 1, "{kind:?}: key-1 left alice");
        assert_eq!(listed[0]["pushkey"], "key-2");
        assert_eq!(pushers(&server, &bob).await.len(), 1);

        // kind: null deletes; deleting one that is not there is a no-op.
        let delete = json!({"app_id": "org.example.app", "pushkey": "key-2", "kind": null});
        assert_eq!(set_pusher(&server, &alice, delete.clone()).await.0, 200);
        assert!(pushers(&server, &alice).await.is_empty(), "{kind:?}");
        assert_eq!(set_pusher(&server, &alice, delete).await.0, 200);
        assert_eq!(pushers(&server, &bob).await.len(), 1);

        // Logging out (deleting the device) deletes the device's pushers.
        let (status, body) = server
            .post("/_matrix/client/v3/logout", &bob.access_token, json!({}))
            .await;
        assert_eq!(status, 200, "{body}");
        let (status, login) = server
            .call(
                reqwest::Method::POST,
                "/_matrix/client/v3/login",
                None,
                Some(json!({"type": "m.login.password",
                    "identifier": {"type": "m.id.user", "user": "bob"},
                    "password": bob.password})),
            )
            .await;
        assert_eq!(status, 200, "{login}");
        let (status, listed) = server
            .get(
                "/_matrix/client/v3/pushers",
                login["access_token"].as_str().unwrap(),
            )
            .await;
        assert_eq!(status, 200, "{listed}");
        assert_eq!(
            listed["pushers"],
            json!([]),
            "{kind:?}: the device's pushers went with it"
        );
        server.stop().await;
    }
}

#[tokio::test]
async fn invalid_pushers_are_refused_without_writing() {
    for kind in test_backends() {
        let server = TestServer::start(kind).await;
        let alice = server.register("alice").await;
        let cases = [
            (
                http_pusher("k", "/_matrix/push/v1/notify"),
                "M_INVALID_PARAM",
            ),
            (
                http_pusher("k", "https://push.example.org/notify"),
                "M_INVALID_PARAM",
            ),
            (
                http_pusher("k", "ftp://push.example.org/_matrix/push/v1/notify"),
                "M_INVALID_PARAM",
            ),
            (
                {
                    let mut p = http_pusher("k", "");
                    p["kind"] = json!("email");
                    p["data"] = json!({});
                    p
                },
                "M_INVALID_PARAM",
            ),
            (
                {
                    let mut p = http_pusher("k", "");
                    p["kind"] = json!("carrier-pigeon");
                    p["data"] = json!({});
                    p
                },
                "M_INVALID_PARAM",
            ),
            (
                http_pusher(
                    &"k".repeat(513),
                    "https://push.example.org/_matrix/push/v1/notify",
                ),
                "M_INVALID_PARAM",
            ),
            // A missing required field is malformed JSON for the endpoint.
            (
                {
                    let mut p = http_pusher("k", "");
                    p["data"] = json!({});
                    p
                },
                "M_BAD_JSON",
            ),
        ];
        for (body, errcode) in cases {
            let (status, reply) = set_pusher(&server, &alice, body.clone()).await;
            assert_eq!(status, 400, "{kind:?}: {body} -> {reply}");
            assert_eq!(reply["errcode"], errcode, "{kind:?}: {body} -> {reply}");
        }
        assert!(pushers(&server, &alice).await.is_empty(), "{kind:?}");
        server.stop().await;
    }
}

#[tokio::test]
async fn notifications_reach_the_push_gateway() {
    for kind in test_backends() {
        let Scene {
            gateway,
            url,
            server,
            alice,
            bob,
            room,
        } = Scene::start(kind).await;
        let (status, body) = server
            .put(
                &format!(
                    "/_matrix/client/v3/profile/{}/displayname",
                    enc(&bob.user_id)
                ),
                &bob.access_token,
                json!({"displayname": "Bob B"}),
            )
            .await;
        assert_eq!(status, 200, "{body}");

        let mut full = http_pusher("full-key", &url);
        full["data"]["extra"] = json!("kept");
        assert_eq!(set_pusher(&server, &alice, full).await.0, 200);
        let mut ids_only = http_pusher("ids-key", &url);
        ids_only["data"]["format"] = json!("event_id_only");
        ids_only["append"] = json!(true);
        assert_eq!(set_pusher(&server, &alice, ids_only).await.0, 200);

        let first = send_text(&server, &bob, &room, "hello").await;
        let body = gateway.wait_for(&first, "full-key").await;
        let n = &body["notification"];
        assert_eq!(n["room_id"], room.as_str(), "{kind:?}: {body}");
        assert_eq!(n["type"], "m.room.message");
        assert_eq!(n["sender"], bob.user_id.as_str());
        assert_eq!(n["sender_display_name"], "Bob B", "{body}");
        assert_eq!(n["content"]["body"], "hello");
        assert_eq!(n["counts"]["unread"], 1, "{kind:?}: {body}");
        // A two-member room: the one-to-one rule rings (sound), so the priority is high.
        assert_eq!(n["prio"], "high", "{body}");
        let device = &n["devices"][0];
        assert_eq!(device["app_id"], "org.example.app");
        assert_eq!(device["data"], json!({"extra": "kept"}), "url is left out");
        assert_eq!(device["tweaks"]["sound"], "default", "{body}");
        assert!(device["pushkey_ts"].as_i64().unwrap() > 1_000_000_000);

        let body = gateway.wait_for(&first, "ids-key").await;
        let n = &body["notification"];
        assert_eq!(n["room_id"], room.as_str());
        assert_eq!(n["counts"]["unread"], 1);
        assert!(n.get("content").is_none(), "{kind:?}: {body}");
        assert!(n.get("sender").is_none(), "{body}");
        assert_eq!(n["devices"][0]["data"], json!({"format": "event_id_only"}));

        // The count is the total of unread notifications.
        let second = send_text(&server, &bob, &room, "again").await;
        let body = gateway.wait_for(&second, "full-key").await;
        assert_eq!(
            body["notification"]["counts"]["unread"], 2,
            "{kind:?}: {body}"
        );

        // Alice's own messages do not notify her.
        let own = send_text(&server, &alice, &room, "mine").await;
        let third = send_text(&server, &bob, &room, "third").await;
        let body = gateway.wait_for(&third, "full-key").await;
        // Sending a message moved Alice's read position past the earlier ones.
        assert_eq!(
            body["notification"]["counts"]["unread"], 1,
            "{kind:?}: {body}"
        );
        assert!(
            !gateway
                .received
                .lock()
                .unwrap()
                .iter()
                .any(|b| b["notification"]["event_id"] == own.as_str()),
            "{kind:?}: no notification for the user's own event"
        );
        server.stop().await;
    }
}

#[tokio::test]
async fn rejected_pushkeys_are_deleted() {
    for kind in test_backends() {
        let Scene {
            gateway,
            url,
            server,
            alice,
            bob,
            room,
        } = Scene::start(kind).await;
        gateway.reject.lock().unwrap().push("dead-key".to_owned());
        assert_eq!(
            set_pusher(&server, &alice, http_pusher("dead-key", &url))
                .await
                .0,
            200
        );
        let mut live = http_pusher("live-key", &url);
        live["append"] = json!(true);
        assert_eq!(set_pusher(&server, &alice, live).await.0, 200);
        assert_eq!(pushers(&server, &alice).await.len(), 2);

        let event = send_text(&server, &bob, &room, "hello").await;
        gateway.wait_for(&event, "dead-key").await;
        gateway.wait_for(&event, "live-key").await;
        let mut remaining = pushers(&server, &alice).await;
        for _ in 0..100 {
            if remaining.len() == 1 {
                break;
            }
            tokio::time::sleep(Duration::from_millis(50)).await;
            remaining = pushers(&server, &alice).await;
        }
        assert_eq!(remaining.len(), 1, "{kind:?}: {remaining:?}");
        assert_eq!(remaining[0]["pushkey"], "live-key");
        server.stop().await;
    }
}

#[tokio::test]
async fn a_failing_gateway_is_retried() {
    for kind in test_backends() {
        let Scene {
            gateway,
            url,
            server,
            alice,
            bob,
            room,
        } = Scene::start(kind).await;
        *gateway.failures.lock().unwrap() = 1;
        assert_eq!(
            set_pusher(&server, &alice, http_pusher("key", &url))
                .await
                .0,
            200
        );
        let event = send_text(&server, &bob, &room, "hello").await;
        // The first try got a 500; the retry (after a second) is recorded.
        gateway.wait_for(&event, "key").await;
        assert_eq!(*gateway.failures.lock().unwrap(), 0, "{kind:?}");
        assert_eq!(gateway.received.lock().unwrap().len(), 1, "{kind:?}");
        assert_eq!(
            pushers(&server, &alice).await.len(),
            1,
            "a 500 deletes nothing"
        );
        server.stop().await;
    }
}

/// By default a gateway on a private address (here loopback) is never posted to: gateway URLs
/// are users' choices. The pusher itself stays (the address may be fixed by the operator).
#[tokio::test]
async fn private_gateways_get_nothing_by_default() {
    for kind in test_backends() {
        let server = TestServer::start(kind).await;
        let (gateway, addr) = Gateway::start().await;
        let alice = server.register("alice").await;
        let bob = server.register("bob").await;
        let room = shared_room(&server, &alice, &bob).await;
        let (status, body) = set_pusher(
            &server,
            &bob,
            http_pusher("private", &format!("http://{addr}{NOTIFY}")),
        )
        .await;
        assert_eq!(status, 200, "{body}");

        send_text(&server, &alice, &room, "hello").await;
        // Delivery to a permitted gateway takes milliseconds (see the tests above).
        tokio::time::sleep(Duration::from_millis(1500)).await;
        assert!(
            gateway.received.lock().unwrap().is_empty(),
            "{kind:?}: nothing reached the loopback gateway"
        );
        assert_eq!(pushers(&server, &bob).await.len(), 1, "{kind:?}");
        server.stop().await;
    }
}

/// A gateway that accepts notify requests and never answers them, counting those it holds.
async fn hanging_gateway() -> (Arc<Mutex<usize>>, String) {
    let pending = Arc::new(Mutex::new(0usize));
    let app = Router::new()
        .route(
            NOTIFY,
            post(|State(pending): State<Arc<Mutex<usize>>>| async move {
                *pending.lock().unwrap() += 1;
                tokio::time::sleep(Duration::from_secs(3600)).await;
                Json(json!({}))
            }),
        )
        .with_state(pending.clone());
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    tokio::spawn(async move {
        axum::serve(listener, app).await.unwrap();
    });
    (pending, format!("http://{addr}{NOTIFY}"))
}

/// Bob's gateways (as many as he may have) never answer: they hold at most his share of the
/// delivery slots, and Carol's notification is delivered while they hang.
#[tokio::test]
async fn one_users_slow_gateways_do_not_starve_everyone_elses() {
    for kind in test_backends() {
        let scene = Scene::start(kind).await;
        let (pending, hanging_url) = hanging_gateway().await;
        for i in 0..myelin_service::limits::MAX_PUSHERS_PER_USER {
            let (status, body) = set_pusher(
                &scene.server,
                &scene.bob,
                http_pusher(&format!("bob-{i}"), &hanging_url),
            )
            .await;
            assert_eq!(status, 200, "{body}");
        }
        send_text(&scene.server, &scene.alice, &scene.room, "for bob").await;
        for _ in 0..100 {
            if *pending.lock().unwrap() >= myelin_service::pushers::MAX_IN_FLIGHT_PER_USER {
                break;
            }
            tokio::time::sleep(Duration::from_millis(50)).await;
        }

        let carol = scene.server.register("carol").await;
        let room = shared_room(&scene.server, &scene.alice, &carol).await;
        let (status, body) =
            set_pusher(&scene.server, &carol, http_pusher("carol", &scene.url)).await;
        assert_eq!(status, 200, "{body}");
        let event = send_text(&scene.server, &scene.alice, &room, "for carol").await;
        scene.gateway.wait_for(&event, "carol").await;
        assert_eq!(
            *pending.lock().unwrap(),
            myelin_service::pushers::MAX_IN_FLIGHT_PER_USER,
            "{kind:?}: bob's requests in flight are his share, no more"
        );
        scene.server.stop().await;
    }
}

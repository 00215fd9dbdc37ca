//! The federation sender against a fake peer: a tiny HTTPS server on loopback (certificate from
//! the test CA) that records the transactions it is sent and can be switched to fail. Its user
//! `@bob:peer.test` joins a room of the Myelin server through `Rooms::receive_pdus`, signed by
//! the peer's key. On both backends: delivery exactly once in transactions of at most 50 PDUs,
//! the backoff (one request per window, persisted across a restart, revived by an inbound
//! request), catch-up after a long outage, to-device messages, `/metrics`, and a private
//! destination refused once per window.

use std::{
    net::SocketAddr,
    sync::{
        Arc, Mutex,
        atomic::{AtomicBool, Ordering},
    },
    time::{Duration, Instant},
};

use axum::{
    Json, Router,
    extract::{Path, State},
    http::{HeaderMap, StatusCode},
    routing::put,
};
use myelin_room_version::{
    CanonicalJsonObject, CanonicalJsonValue, KeyPair, PublicKey, RoomVersion,
    pdu::{EventSigner, build_pdu},
    verify::{ServerKey, ServerKeys},
};
use myelin_service::{now_millis, rooms::Received};
use myelin_store::{DatabaseKind, RemoteServerKey};
use myelin_testkit::{TestServer, TestUser, enc, federation::TestCa, test_backends};
use ruma::ServerName;
use serde_json::{Value, json};

const PEER: &str = "peer.test";
const PEER_KEY_ID: &str = "ed25519:p";
const BOB: &str = "@bob:peer.test";
/// How long a test waits for something that should happen.
const PATIENCE: Duration = Duration::from_secs(30);

/// One `PUT /send/{txnId}` the peer was sent.
#[derive(Debug, Clone)]
struct Seen {
    txn_id: String,
    accepted: bool,
    at: Instant,
    /// Wall clock (ms), to compare with the server's persisted times.
    at_ms: i64,
    authorization: String,
    body: Value,
}

#[derive(Debug, Default)]
struct PeerLog {
    failing: AtomicBool,
    seen: Mutex<Vec<Seen>>,
}

/// The fake peer.
struct Peer {
    key: KeyPair,
    addr: SocketAddr,
    log: Arc<PeerLog>,
    task: tokio::task::JoinHandle<()>,
}

async fn receive_transaction(
    State(log): State<Arc<PeerLog>>,
    Path(txn_id): Path<String>,
    headers: HeaderMap,
    body: String,
) -> (StatusCode, Json<Value>) {
    let failing = log.failing.load(Ordering::SeqCst);
    log.seen.lock().unwrap().push(Seen {
        txn_id,
        accepted: !failing,
        at: Instant::now(),
        at_ms: now_millis(),
        authorization: headers
            .get("authorization")
            .and_then(|v| v.to_str().ok())
            .unwrap_or_default()
            .to_owned(),
        body: serde_json::from_str(&body).unwrap_or(Value::Null),
    });
    if failing {
        (
            StatusCode::INTERNAL_SERVER_ERROR,
            Json(json!({"errcode": "M_UNKNOWN", "error": "switched to fail"})),
        )
    } else {
        (StatusCode::OK, Json(json!({ "pdus": {} })))
    }
}

impl Peer {
    async fn start(ca: &TestCa) -> Peer {
        let (cert, key) = ca.issue(PEER);
        let tls = myelin::tls::server_config(&cert, &key).unwrap();
        let tcp = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = tcp.local_addr().unwrap();
        let listener = myelin::tls::TlsListener::new(tcp, tls).unwrap();
        let log = Arc::new(PeerLog::default());
        let app = Router::new()
            .route(
                "/_matrix/federation/v1/send/{txn_id}",
                put(receive_transaction),
            )
            .with_state(log.clone());
        let task = tokio::spawn(async move {
            let _ = axum::serve(listener, app).await;
        });
        Peer {
            key: KeyPair::from_seed(&[9; 32]),
            addr,
            log,
            task,
        }
    }

    fn set_failing(&self, failing: bool) {
        self.log.failing.store(failing, Ordering::SeqCst);
    }

    fn seen(&self) -> Vec<Seen> {
        self.log.seen.lock().unwrap().clone()
    }

    fn accepted(&self) -> Vec<Seen> {
        self.seen().into_iter().filter(|s| s.accepted).collect()
    }

    /// The PDUs of accepted transactions, in order.
    fn pdus(&self) -> Vec<Value> {
        self.accepted()
            .iter()
            .flat_map(|s| s.body["pdus"].as_array().cloned().unwrap_or_default())
            .collect()
    }

    /// The message bodies (and, for member events, `member:<membership>`) of accepted PDUs.
    fn bodies(&self) -> Vec<String> {
        self.pdus()
            .iter()
            .map(|pdu| match pdu["content"]["body"].as_str() {
                Some(body) => body.to_owned(),
                None => format!(
                    "{}:{}",
                    pdu["type"].as_str().unwrap_or_default(),
                    pdu["content"]["membership"].as_str().unwrap_or_default()
                ),
            })
            .collect()
    }

    fn edus(&self) -> Vec<Value> {
        self.accepted()
            .iter()
            .flat_map(|s| s.body["edus"].as_array().cloned().unwrap_or_default())
            .collect()
    }

    fn keys(&self) -> ServerKeys {
        let mut keys = ServerKeys::new();
        keys.entry(PEER.to_owned()).or_default().insert(
            PEER_KEY_ID.to_owned(),
            ServerKey {
                key: PublicKey::from_bytes(&self.key.public_key()).unwrap(),
                valid_until_ts: u64::MAX,
            },
        );
        keys
    }
}

impl Drop for Peer {
    fn drop(&mut self) {
        self.task.abort();
    }
}

fn peer_name() -> &'static ServerName {
    <&ServerName>::try_from(PEER).unwrap()
}

/// A Myelin server `hs.test` that trusts the test CA and reaches the peer on loopback, with
/// one-second backoff windows, after `customise`.
async fn start_myelin(
    kind: DatabaseKind,
    ca: &TestCa,
    peer: &Peer,
    customise: impl FnOnce(&mut myelin_service::Config),
) -> TestServer {
    TestServer::start_with(kind, |config| {
        config.server_name = "hs.test".try_into().unwrap();
        config.federation.trusted_ca_files = vec![ca.cert_path()];
        config.federation.allow_private_addresses = true;
        config
            .federation
            .destination_overrides
            .insert(PEER.to_owned(), peer.addr.to_string());
        config.federation.backoff_min_secs = 1;
        customise(config);
    })
    .await
}

/// Alice's public room (version 10) that bob of the peer joined, as the peer's receiver would
/// hand his join in.
async fn room_with_bob(server: &TestServer, peer: &Peer) -> (TestUser, String) {
    let alice = server.register("alice").await;
    let room_id = server
        .create_room(
            &alice,
            json!({ "room_version": "10", "preset": "public_chat" }),
        )
        .await;
    let store = server.store();
    let room = store.room(&room_id).await.unwrap().unwrap();
    let state = |kind: &str| {
        let key = (kind.to_owned(), String::new());
        async move {
            store
                .current_state(room.room_nid, Some(&[key]))
                .await
                .unwrap()
                .pop()
                .unwrap()
                .event_id
        }
    };
    let auth = [
        state("m.room.create").await,
        state("m.room.join_rules").await,
        state("m.room.power_levels").await,
    ];
    let head = store
        .send_context(room.room_nid, &[], None)
        .await
        .unwrap()
        .head;
    let s = |v: &str| CanonicalJsonValue::String(v.to_owned());
    let mut partial = CanonicalJsonObject::new();
    partial.insert("type".to_owned(), s("m.room.member"));
    partial.insert("room_id".to_owned(), s(&room_id));
    partial.insert("sender".to_owned(), s(BOB));
    partial.insert("state_key".to_owned(), s(BOB));
    partial.insert(
        "content".to_owned(),
        CanonicalJsonValue::try_from(json!({"membership": "join"})).unwrap(),
    );
    partial.insert(
        "prev_events".to_owned(),
        CanonicalJsonValue::Array(head.prev_event_ids.iter().map(|id| s(id)).collect()),
    );
    partial.insert(
        "auth_events".to_owned(),
        CanonicalJsonValue::Array(auth.iter().map(|id| s(id)).collect()),
    );
    partial.insert(
        "depth".to_owned(),
        CanonicalJsonValue::Integer((head.max_depth + 1).try_into().unwrap()),
    );
    partial.insert(
        "origin_server_ts".to_owned(),
        CanonicalJsonValue::Integer(now_millis().try_into().unwrap()),
    );
    let join = build_pdu(
        partial,
        RoomVersion::get("10").unwrap(),
        EventSigner::Server {
            server_name: PEER,
            key_id: PEER_KEY_ID,
            key: &peer.key,
        },
    )
    .unwrap();
    let json = join.canonical_json();
    let outcome = server
        .services()
        .rooms
        .receive_pdus(&room_id, &[json.as_bytes()], &peer.keys())
        .await
        .unwrap();
    assert_eq!(outcome[0].outcome, Received::Accepted, "bob joins");
    (alice, room_id)
}

/// Sends a text message; returns its event id.
async fn say(server: &TestServer, user: &TestUser, room_id: &str, body: &str) -> String {
    let (status, reply) = server
        .put(
            &format!(
                "/_matrix/client/v3/rooms/{}/send/m.room.message/{}",
                enc(room_id),
                enc(body)
            ),
            &user.access_token,
            json!({ "msgtype": "m.text", "body": body }),
        )
        .await;
    assert_eq!(status, 200, "{reply}");
    reply["event_id"].as_str().unwrap().to_owned()
}

/// Waits until `done` holds, or fails the test with `what`.
async fn eventually(what: &str, mut done: impl FnMut() -> bool) {
    let deadline = Instant::now() + PATIENCE;
    while !done() {
        assert!(Instant::now() < deadline, "timed out waiting for {what}");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

/// Waits until the sender owes the peer no event.
async fn wait_for_empty_queue(server: &TestServer) {
    let deadline = Instant::now() + PATIENCE;
    loop {
        let statuses = server
            .services()
            .federation_sender
            .statuses()
            .await
            .unwrap();
        let status = statuses.iter().find(|s| s.destination == PEER).unwrap();
        if status.queued_events == 0 {
            return;
        }
        assert!(Instant::now() < deadline, "the queue empties: {status:?}");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

fn messages(range: std::ops::Range<usize>) -> Vec<String> {
    range.map(|i| format!("m{i}")).collect()
}

/// The value of `metric{destination="peer.test"}` in the server's `/metrics`.
async fn peer_metric(server: &TestServer, metric: &str) -> Option<i64> {
    let text = server
        .http
        .get(server.client_url("/metrics"))
        .send()
        .await
        .unwrap()
        .text()
        .await
        .unwrap();
    let prefix = format!("{metric}{{destination=\"{PEER}\"}} ");
    text.lines()
        .find_map(|line| line.strip_prefix(&prefix))
        .map(|value| value.trim().parse().unwrap())
}

/// The peer signs a request to the Myelin server (a profile query), as a server that came
/// back would; the server must know the peer's key (seeded here: the peer serves no keys).
async fn peer_calls(server: &TestServer, peer: &Peer, alice: &TestUser) {
    server
        .store()
        .store_remote_server_keys(&[RemoteServerKey {
            server_name: PEER.to_owned(),
            key_id: PEER_KEY_ID.to_owned(),
            public_key: peer.key.public_key().to_vec(),
            valid_until_ts: now_millis() + 86_400_000,
            is_old: false,
            cache_until_ts: now_millis() + 86_400_000,
            fetched_ts: now_millis(),
            key_object: "{}".to_owned(),
        }])
        .await
        .unwrap();
    let path = format!(
        "/_matrix/federation/v1/query/profile?user_id={}",
        enc(&alice.user_id)
    );
    let object =
        myelin_federation::xmatrix::request_object("GET", &path, PEER, server.name(), b"").unwrap();
    let header = myelin_federation::xmatrix::authorization_header(
        &object,
        PEER,
        server.name(),
        PEER_KEY_ID,
        &peer.key,
    )
    .unwrap();
    let response = server
        .federation_client()
        .get(server.federation_url(&path))
        .header("Authorization", header)
        .send()
        .await
        .unwrap();
    assert_eq!(response.status(), 200, "{}", response.text().await.unwrap());
}

#[tokio::test]
async fn events_reach_the_peer_once_in_transactions_of_at_most_50() {
    for kind in test_backends() {
        let ca = TestCa::new();
        let peer = Peer::start(&ca).await;
        let server = start_myelin(kind, &ca, &peer, |_| {}).await;
        let (alice, room_id) = room_with_bob(&server, &peer).await;

        // 120 messages queued while the sender is stopped go out as 50 + 50 + 20.
        let sender = &server.services().federation_sender;
        sender.stop().await;
        for body in messages(0..120) {
            say(&server, &alice, &room_id, &body).await;
        }
        sender.start();
        eventually("120 messages", || peer.pdus().len() >= 120).await;
        let sizes: Vec<usize> = peer
            .accepted()
            .iter()
            .map(|s| s.body["pdus"].as_array().map_or(0, Vec::len))
            .collect();
        assert_eq!(sizes, [50, 50, 20], "{kind:?}");
        // Only alice's events after bob joined: not the room's creation, not bob's own join.
        assert_eq!(peer.bodies(), messages(0..120), "{kind:?}");
        let seen = peer.seen();
        let mut ids: Vec<&str> = seen.iter().map(|s| s.txn_id.as_str()).collect();
        ids.dedup();
        assert_eq!(ids.len(), 3, "{kind:?}: distinct transaction ids");
        for s in &seen {
            assert_eq!(s.body["origin"], "hs.test");
            assert!(
                s.authorization.contains("origin=hs.test"),
                "{}",
                s.authorization
            );
        }

        // Live sends go out as they come; a kick reaches the kicked user's server, and what
        // follows it does not.
        say(&server, &alice, &room_id, "live").await;
        let (status, reply) = server
            .post(
                &format!("/_matrix/client/v3/rooms/{}/kick", enc(&room_id)),
                &alice.access_token,
                json!({ "user_id": BOB }),
            )
            .await;
        assert_eq!(status, 200, "{reply}");
        eventually("the kick", || {
            peer.bodies().last().map(String::as_str) == Some("m.room.member:leave")
        })
        .await;
        let after = say(&server, &alice, &room_id, "after the kick").await;
        let after = server.store().event(&after).await.unwrap().unwrap();
        eventually("the fan-out to pass the last event", || {
            sender.fanned_out() >= after.stream_ordering
        })
        .await;
        wait_for_empty_queue(&server).await;
        let mut expected = messages(0..120);
        expected.push("live".to_owned());
        expected.push("m.room.member:leave".to_owned());
        assert_eq!(peer.bodies(), expected, "{kind:?}: each event once");
        server.stop().await;
    }
}

#[tokio::test]
async fn a_failing_peer_gets_one_request_per_window_then_everything_once() {
    for kind in test_backends() {
        let ca = TestCa::new();
        let peer = Peer::start(&ca).await;
        let server = start_myelin(kind, &ca, &peer, |_| {}).await;
        let (alice, room_id) = room_with_bob(&server, &peer).await;
        peer.set_failing(true);
        say(&server, &alice, &room_id, "m0").await;
        eventually("a first attempt", || !peer.seen().is_empty()).await;
        for body in messages(1..20) {
            say(&server, &alice, &room_id, &body).await;
        }
        // Windows of 1 s, 2 s, 4 s...: let a few pass, sending all the while.
        for i in 20..26 {
            tokio::time::sleep(Duration::from_millis(600)).await;
            say(&server, &alice, &room_id, &format!("m{i}")).await;
        }
        let attempts = peer.seen();
        assert!(
            (2..=4).contains(&attempts.len()),
            "{kind:?}: {} attempts in ~3.6 s",
            attempts.len()
        );
        for (n, pair) in attempts.windows(2).enumerate() {
            let window = Duration::from_secs(1 << n);
            assert!(
                pair[1].at - pair[0].at >= window - Duration::from_millis(100),
                "{kind:?}: attempt {} came {:?} after the one before (window {window:?})",
                n + 1,
                pair[1].at - pair[0].at
            );
            assert_eq!(
                pair[1].txn_id, pair[0].txn_id,
                "{kind:?}: a retry is the same transaction"
            );
            assert_eq!(pair[1].body, pair[0].body);
        }

        // Operators see the destination behind and backing off.
        let deadline = Instant::now() + PATIENCE;
        while peer_metric(&server, "myelin_federation_destination_queued_events").await != Some(26)
        {
            assert!(Instant::now() < deadline, "{kind:?}: 26 events queued");
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
        let failures = peer_metric(&server, "myelin_federation_destination_failures")
            .await
            .unwrap();
        assert!(failures >= 2, "{kind:?}: {failures} failures");
        let retry_at = peer_metric(&server, "myelin_federation_destination_retry_at_seconds")
            .await
            .unwrap();
        assert!(
            (now_millis() / 1000 - 1..=now_millis() / 1000 + 10).contains(&retry_at),
            "{kind:?}: retry at {retry_at}"
        );

        // The peer comes back and calls: its backoff is gone at once, and everything it
        // missed arrives, once.
        peer.set_failing(false);
        peer_calls(&server, &peer, &alice).await;
        assert_eq!(
            server.services().federation.backoff().failures(peer_name()),
            0,
            "{kind:?}: an inbound request revives the destination"
        );
        eventually("the missed events", || peer.pdus().len() >= 26).await;
        assert_eq!(peer.bodies(), messages(0..26), "{kind:?}");
        assert_eq!(
            peer.accepted()[0].txn_id,
            attempts[0].txn_id,
            "{kind:?}: the failed transaction is the one that got through"
        );
        let deadline = Instant::now() + PATIENCE;
        while peer_metric(&server, "myelin_federation_destination_queued_events").await != Some(0) {
            assert!(Instant::now() < deadline, "{kind:?}: the queue empties");
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
        let last_success = peer_metric(
            &server,
            "myelin_federation_destination_last_success_seconds",
        )
        .await
        .unwrap();
        assert!(
            (last_success - now_millis() / 1000).abs() < 60,
            "{kind:?}: last success {last_success}"
        );
        assert_eq!(
            peer_metric(&server, "myelin_federation_destination_failures").await,
            Some(0)
        );
        server.stop().await;
    }
}

#[tokio::test]
async fn queued_events_and_the_backoff_survive_a_restart() {
    for kind in test_backends() {
        let ca = TestCa::new();
        let peer = Peer::start(&ca).await;
        let mut server = start_myelin(kind, &ca, &peer, |config| {
            // Longer than a restart takes.
            config.federation.backoff_min_secs = 5;
        })
        .await;
        let (alice, room_id) = room_with_bob(&server, &peer).await;
        peer.set_failing(true);
        for body in messages(0..3) {
            say(&server, &alice, &room_id, &body).await;
        }
        eventually("a first attempt", || !peer.seen().is_empty()).await;
        // The to-device outbox is persisted too.
        let (status, reply) = server
            .put(
                "/_matrix/client/v3/sendToDevice/m.test/t1",
                &alice.access_token,
                json!({ "messages": { BOB: { "BOBDEVICE": { "hello": "world" } } } }),
            )
            .await;
        assert_eq!(status, 200, "{reply}");
        let backoff = server.services().federation.backoff().clone();
        eventually("the failure counted", || {
            backoff.retry_at(peer_name()).is_some()
        })
        .await;
        let retry_at = backoff.retry_at(peer_name()).unwrap();
        peer.set_failing(false);

        server.restart().await;
        assert_eq!(
            server.services().federation.backoff().retry_at(peer_name()),
            Some(retry_at),
            "{kind:?}: the backoff is read back"
        );
        eventually("the queued events", || {
            peer.pdus().len() >= 3 && !peer.edus().is_empty()
        })
        .await;
        let seen = peer.seen();
        assert_eq!(
            seen.iter().filter(|s| !s.accepted).count(),
            1,
            "{kind:?}: one failed attempt"
        );
        let first_after = seen.iter().find(|s| s.accepted).unwrap();
        assert!(
            first_after.at_ms >= retry_at - 5,
            "{kind:?}: the restarted server waited for the persisted retry time ({} < {retry_at})",
            first_after.at_ms
        );
        assert_eq!(peer.bodies(), messages(0..3), "{kind:?}");
        let edus = peer.edus();
        assert_eq!(edus.len(), 1, "{kind:?}: {edus:?}");
        assert_eq!(edus[0]["edu_type"], "m.direct_to_device");
        assert_eq!(edus[0]["content"]["sender"], alice.user_id.as_str());
        assert_eq!(edus[0]["content"]["type"], "m.test");
        assert_eq!(
            edus[0]["content"]["messages"][BOB]["BOBDEVICE"],
            json!({ "hello": "world" })
        );
        assert!(edus[0]["content"]["message_id"].is_string());
        server.stop().await;
    }
}

#[tokio::test]
async fn after_a_long_outage_only_the_latest_events_of_a_room_are_sent() {
    for kind in test_backends() {
        let ca = TestCa::new();
        let peer = Peer::start(&ca).await;
        let server = start_myelin(kind, &ca, &peer, |config| {
            // Long windows: the peer only hears again once it calls.
            config.federation.backoff_min_secs = 600;
        })
        .await;
        let (alice, room_id) = room_with_bob(&server, &peer).await;
        peer.set_failing(true);
        say(&server, &alice, &room_id, "m0").await;
        eventually("a first attempt", || !peer.seen().is_empty()).await;
        let mut last = String::new();
        for body in messages(1..71) {
            last = say(&server, &alice, &room_id, &body).await;
        }
        // The catch-up keeps the latest 10 of what the fan-out has recorded for the peer: all
        // 70 must be recorded before it comes back (a loaded machine lags here).
        let last = server.store().event(&last).await.unwrap().unwrap();
        let sender = server.services().federation_sender.clone();
        eventually("the fan-out to pass the last message", || {
            sender.fanned_out() >= last.stream_ordering
        })
        .await;
        peer.set_failing(false);
        peer_calls(&server, &peer, &alice).await;
        eventually("the catch-up", || peer.pdus().len() >= 11).await;
        // Give it a moment to send anything more it (wrongly) would.
        tokio::time::sleep(Duration::from_millis(500)).await;
        let mut expected = vec!["m0".to_owned()];
        expected.extend(messages(61..71));
        assert_eq!(
            peer.bodies(),
            expected,
            "{kind:?}: the transaction in flight, then the room's latest 10 of 70"
        );
        wait_for_empty_queue(&server).await;
        server.stop().await;
    }
}

#[tokio::test]
async fn to_device_messages_reach_remote_users_once() {
    for kind in test_backends() {
        let ca = TestCa::new();
        let peer = Peer::start(&ca).await;
        let server = start_myelin(kind, &ca, &peer, |_| {}).await;
        let alice = server.register("alice").await;
        let body = json!({ "messages": {
            BOB: { "*": { "n": 1 } },
            alice.user_id.as_str(): { "NOSUCHDEVICE": { "n": 2 } },
        } });
        for _ in 0..2 {
            // The same transaction twice: queued once.
            let (status, reply) = server
                .put(
                    "/_matrix/client/v3/sendToDevice/m.test/t1",
                    &alice.access_token,
                    body.clone(),
                )
                .await;
            assert_eq!(status, 200, "{reply}");
        }
        // Too large for a remote user too: refused, nothing queued.
        let (status, _) = server
            .put(
                "/_matrix/client/v3/sendToDevice/m.test/t2",
                &alice.access_token,
                json!({ "messages": { BOB: { "DEV": {
                    "x": "y".repeat(myelin_service::limits::MAX_TO_DEVICE_CONTENT_BYTES)
                } } } }),
            )
            .await;
        assert_eq!(status, 413, "{kind:?}");
        eventually("the to-device EDU", || !peer.edus().is_empty()).await;
        tokio::time::sleep(Duration::from_millis(300)).await;
        let edus = peer.edus();
        assert_eq!(edus.len(), 1, "{kind:?}: {edus:?}");
        assert_eq!(
            edus[0]["content"]["messages"],
            json!({ BOB: { "*": { "n": 1 } } })
        );
        assert!(peer.pdus().is_empty());
        server.stop().await;
    }
}

#[tokio::test]
async fn a_private_destination_is_refused_once_per_window() {
    for kind in test_backends() {
        let ca = TestCa::new();
        let peer = Peer::start(&ca).await;
        // The default address policy: the peer's loopback address is refused.
        let server = start_myelin(kind, &ca, &peer, |config| {
            config.federation.allow_private_addresses = false;
        })
        .await;
        let (alice, room_id) = room_with_bob(&server, &peer).await;
        let started = Instant::now();
        for i in 0..12 {
            say(&server, &alice, &room_id, &format!("m{i}")).await;
            tokio::time::sleep(Duration::from_millis(300)).await;
        }
        let elapsed = started.elapsed().as_secs_f64();
        let backoff = server.services().federation.backoff().clone();
        let failures = backoff.failures(peer_name());
        // Windows of 1, 2, 4... s: at most one attempt per window, however many events.
        let most = 1 + (elapsed + 1.0).log2().floor() as u32;
        assert!(
            (1..=most).contains(&failures),
            "{kind:?}: {failures} attempts in {elapsed:.1} s (at most {most})"
        );
        assert!(peer.seen().is_empty(), "{kind:?}: nothing reached the peer");
        // Other kinds of request wait for the same window: a key fetch makes no request
        // (checked well inside a window).
        let deadline = Instant::now() + PATIENCE;
        while backoff.retry_at(peer_name()).unwrap() < now_millis() + 500 {
            assert!(Instant::now() < deadline, "a window long enough to look");
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
        let failures = backoff.failures(peer_name());
        let keys = &server.services().remote_keys;
        let before = keys.requests_sent();
        let fetched = keys.keys_for(peer_name(), &[], now_millis()).await.unwrap();
        assert!(fetched.is_empty());
        assert_eq!(
            keys.requests_sent(),
            before,
            "{kind:?}: held back by the backoff"
        );
        assert_eq!(backoff.failures(peer_name()), failures);
        server.stop().await;
    }
}

/// The peer tells the server, in a signed transaction, that bob is typing in `room_id`.
async fn peer_says_bob_types(server: &TestServer, peer: &Peer, room_id: &str) {
    let path = "/_matrix/federation/v1/send/bob-types";
    let body = json!({
        "origin": PEER,
        "origin_server_ts": now_millis(),
        "pdus": [],
        "edus": [{"edu_type": "m.typing", "content": {"room_id": room_id, "user_id": BOB, "typing": true}}],
    });
    let bytes = serde_json::to_vec(&body).unwrap();
    let object =
        myelin_federation::xmatrix::request_object("PUT", path, PEER, server.name(), &bytes)
            .unwrap();
    let header = myelin_federation::xmatrix::authorization_header(
        &object,
        PEER,
        server.name(),
        PEER_KEY_ID,
        &peer.key,
    )
    .unwrap();
    let response = server
        .federation_client()
        .put(server.federation_url(path))
        .header("Authorization", header)
        .header("Content-Type", "application/json")
        .body(bytes)
        .send()
        .await
        .unwrap();
    assert_eq!(response.status(), 200, "{}", response.text().await.unwrap());
}

#[tokio::test]
async fn receipts_and_typing_of_local_users_reach_the_servers_in_the_room() {
    for kind in test_backends() {
        let ca = TestCa::new();
        let peer = Peer::start(&ca).await;
        let server = start_myelin(kind, &ca, &peer, |_| {}).await;
        let (alice, room_id) = room_with_bob(&server, &peer).await;
        let elsewhere = server
            .create_room(&alice, json!({ "preset": "private_chat" }))
            .await;
        let m0 = say(&server, &alice, &room_id, "m0").await;
        let lonely = say(&server, &alice, &elsewhere, "not shared").await;
        eventually("m0", || peer.pdus().len() == 1).await;

        let receipt = |room: &str, kind: &str, event: &str| {
            format!(
                "/_matrix/client/v3/rooms/{}/receipt/{kind}/{}",
                enc(room),
                enc(event)
            )
        };
        for (room, receipt_type, event) in [
            (&room_id, "m.read.private", &m0),
            (&elsewhere, "m.read", &lonely),
            (&room_id, "m.read", &m0),
        ] {
            let (status, reply) = server
                .post(
                    &receipt(room, receipt_type, event),
                    &alice.access_token,
                    json!({}),
                )
                .await;
            assert_eq!(status, 200, "{reply}");
        }
        // Bob's typing, from his own server, is shown here and never sent back out (the
        // typing EDUs the peer gets are alice's only, checked below).
        peer_calls(&server, &peer, &alice).await;
        peer_says_bob_types(&server, &peer, &room_id).await;
        let typing = format!(
            "/_matrix/client/v3/rooms/{}/typing/{}",
            enc(&room_id),
            enc(&alice.user_id)
        );
        let (status, reply) = server
            .put(
                &typing,
                &alice.access_token,
                json!({ "typing": true, "timeout": 30000 }),
            )
            .await;
        assert_eq!(status, 200, "{reply}");
        eventually("typing", || {
            peer.edus().iter().any(|e| e["edu_type"] == "m.typing")
        })
        .await;
        let (status, reply) = server
            .put(&typing, &alice.access_token, json!({ "typing": false }))
            .await;
        assert_eq!(status, 200, "{reply}");
        eventually("typing stopped and the receipt", || {
            let edus = peer.edus();
            edus.iter()
                .any(|e| e["edu_type"] == "m.typing" && e["content"]["typing"] == false)
                && edus.iter().any(|e| e["edu_type"] == "m.receipt")
        })
        .await;
        let edus = peer.edus();
        let typing: Vec<&Value> = edus
            .iter()
            .filter(|e| e["edu_type"] == "m.typing")
            .map(|e| &e["content"])
            .collect();
        assert_eq!(
            typing,
            [
                &json!({ "room_id": room_id, "user_id": alice.user_id, "typing": true }),
                &json!({ "room_id": room_id, "user_id": alice.user_id, "typing": false }),
            ],
            "{kind:?}"
        );
        // The public receipt of the shared room only.
        let receipts: Vec<&Value> = edus
            .iter()
            .filter(|e| e["edu_type"] == "m.receipt")
            .map(|e| &e["content"])
            .collect();
        assert_eq!(receipts.len(), 1, "{kind:?}: {receipts:?}");
        let content = receipts[0].as_object().unwrap();
        assert_eq!(content.keys().collect::<Vec<_>>(), [&room_id], "{kind:?}");
        let read = &content[&room_id]["m.read"][&alice.user_id];
        assert_eq!(read["event_ids"], json!([m0]), "{kind:?}: {read}");
        assert!(read["data"]["ts"].is_i64());
        assert!(content[&room_id].get("m.read.private").is_none());
        server.stop().await;
    }
}

#[tokio::test]
async fn events_meant_for_nobody_cost_no_write() {
    for kind in test_backends() {
        let ca = TestCa::new();
        let peer = Peer::start(&ca).await;
        let server = start_myelin(kind, &ca, &peer, |_| {}).await;
        let alice = server.register("alice").await;
        let room_id = server.create_room(&alice, json!({})).await;
        let mut last = String::new();
        for body in messages(0..5) {
            last = say(&server, &alice, &room_id, &body).await;
        }
        let last = server.store().event(&last).await.unwrap().unwrap();
        let sender = &server.services().federation_sender;
        eventually("the fan-out to pass the messages", || {
            sender.fanned_out() >= last.stream_ordering
        })
        .await;
        assert!(
            server.store().federation_fanout_position().await.unwrap() < last.stream_ordering,
            "{kind:?}: the position is kept in memory while events are meant for nobody"
        );
        assert!(
            server
                .store()
                .federation_destinations()
                .await
                .unwrap()
                .is_empty()
        );
        server.stop().await;
    }
}

/// `object` signed by `user` under `key_id` with `key`.
fn signed_by(object: Value, user: &str, key_id: &str, key: &KeyPair) -> Value {
    let mut canonical = myelin_room_version::canonical::value_to_object(object).unwrap();
    myelin_room_version::signing::sign_json(&mut canonical, user, key_id, key).unwrap();
    serde_json::to_value(canonical).unwrap()
}

fn cross_signing_key(user: &str, usage: &str, key: &KeyPair) -> (String, Value) {
    use base64::Engine as _;
    let public = base64::engine::general_purpose::STANDARD_NO_PAD.encode(key.public_key());
    let id = format!("ed25519:{public}");
    (
        id.clone(),
        json!({"user_id": user, "usage": [usage], "keys": {id: public}}),
    )
}

#[tokio::test]
async fn device_list_changes_reach_the_servers_sharing_a_room_chained_per_user() {
    for kind in test_backends() {
        let ca = TestCa::new();
        let peer = Peer::start(&ca).await;
        let server = start_myelin(kind, &ca, &peer, |_| {}).await;
        let (alice, _room_id) = room_with_bob(&server, &peer).await;
        let device_keys = |device: &str| {
            json!({
                "user_id": alice.user_id, "device_id": device,
                "algorithms": ["m.megolm.v1.aes-sha2"],
                "keys": {format!("ed25519:{device}"): "AAAA", format!("curve25519:{device}"): "BBBB"},
            })
        };
        let updates = || -> Vec<Value> {
            peer.edus()
                .into_iter()
                .filter(|e| e["edu_type"] == "m.device_list_update")
                .map(|e| e["content"].clone())
                .collect()
        };
        // Keys for a device, a rename, a second device, its logout.
        let (status, _) = server
            .post(
                "/_matrix/client/v3/keys/upload",
                &alice.access_token,
                json!({"device_keys": device_keys(&alice.device_id)}),
            )
            .await;
        assert_eq!(status, 200);
        let (status, _) = server
            .put(
                &format!("/_matrix/client/v3/devices/{}", enc(&alice.device_id)),
                &alice.access_token,
                json!({"display_name": "Laptop"}),
            )
            .await;
        assert_eq!(status, 200);
        let (status, body) = server
            .call(
                reqwest::Method::POST,
                "/_matrix/client/v3/login",
                None,
                Some(json!({"type": "m.login.password", "identifier": {"type": "m.id.user", "user": alice.user_id}, "password": alice.password})),
            )
            .await;
        assert_eq!(status, 200, "{body}");
        let phone_device = body["device_id"].as_str().unwrap().to_owned();
        let phone_token = body["access_token"].as_str().unwrap().to_owned();
        let (status, _) = server
            .post(
                "/_matrix/client/v3/keys/upload",
                &phone_token,
                json!({"device_keys": device_keys(&phone_device)}),
            )
            .await;
        assert_eq!(status, 200);
        let (status, _) = server
            .post("/_matrix/client/v3/logout", &phone_token, json!({}))
            .await;
        assert_eq!(status, 200);
        eventually("four device-list updates", || updates().len() >= 4).await;
        let got = updates();
        assert_eq!(got.len(), 4, "{kind:?}: {got:?}");
        assert_eq!(got[0]["device_id"], alice.device_id.as_str());
        assert_eq!(got[0]["keys"], device_keys(&alice.device_id), "{kind:?}");
        assert_eq!(got[0]["deleted"], false);
        assert_eq!(got[1]["device_display_name"], "Laptop", "{kind:?}: {got:?}");
        assert_eq!(got[2]["device_id"], phone_device.as_str());
        assert_eq!(got[3]["device_id"], phone_device.as_str());
        assert_eq!(got[3]["deleted"], true, "{kind:?}: {got:?}");
        assert!(got[3].get("keys").is_none(), "{kind:?}");
        // Each names the one before as its prev_id; stream ids only grow.
        for pair in got.windows(2) {
            assert!(pair[1]["stream_id"].as_i64() > pair[0]["stream_id"].as_i64());
            assert_eq!(
                pair[1]["prev_id"],
                json!([pair[0]["stream_id"]]),
                "{kind:?}: {got:?}"
            );
        }
        assert!(got.iter().all(|u| u["user_id"] == alice.user_id.as_str()));

        // Cross-signing keys: master and self-signing go out, the user-signing key never.
        let master = KeyPair::from_seed(&[40; 32]);
        let (master_id, master_key) = cross_signing_key(&alice.user_id, "master", &master);
        let (_, ssk) = cross_signing_key(
            &alice.user_id,
            "self_signing",
            &KeyPair::from_seed(&[41; 32]),
        );
        let (_, usk) = cross_signing_key(
            &alice.user_id,
            "user_signing",
            &KeyPair::from_seed(&[42; 32]),
        );
        let (status, body) = server
            .post(
                "/_matrix/client/v3/keys/device_signing/upload",
                &alice.access_token,
                json!({
                    "master_key": master_key,
                    "self_signing_key": signed_by(ssk, &alice.user_id, &master_id, &master),
                    "user_signing_key": signed_by(usk, &alice.user_id, &master_id, &master),
                }),
            )
            .await;
        assert_eq!(status, 200, "{body}");
        let signing = || -> Vec<Value> {
            peer.edus()
                .into_iter()
                .filter(|e| e["edu_type"] == "m.signing_key_update")
                .map(|e| e["content"].clone())
                .collect()
        };
        eventually("the signing key update", || !signing().is_empty()).await;
        let update = &signing()[0];
        assert_eq!(update["user_id"], alice.user_id.as_str());
        assert_eq!(update["master_key"], master_key, "{kind:?}: {update}");
        assert!(update["self_signing_key"].is_object(), "{kind:?}: {update}");
        assert!(
            update.get("user_signing_key").is_none(),
            "{kind:?}: {update}"
        );

        // The stream id /user/devices answers is the last update's.
        let devices = server
            .services()
            .e2ee
            .federation_user_devices(&ruma::UserId::parse(alice.user_id.as_str()).unwrap())
            .await
            .unwrap();
        assert_eq!(
            Some(devices.stream_id),
            got[3]["stream_id"].as_i64(),
            "{kind:?}"
        );
        server.stop().await;
    }
}

/// A state change of this server's (a topic, a local user's join) leaves the room's other
/// servers as they were, so the fan-out takes them from the state before it without reading the
/// room's whole state (`servers_at`): each such event still reaches the peer while bob is in the
/// room, and none does once he was kicked.
#[tokio::test]
async fn local_state_changes_reach_the_servers_in_the_room_at_them() {
    for kind in test_backends() {
        let ca = TestCa::new();
        let peer = Peer::start(&ca).await;
        let server = start_myelin(kind, &ca, &peer, |_| {}).await;
        let (alice, room_id) = room_with_bob(&server, &peer).await;
        let topic = |text: &'static str| {
            let (server, alice, room_id) = (&server, &alice, &room_id);
            async move {
                let (status, reply) = server
                    .put(
                        &format!(
                            "/_matrix/client/v3/rooms/{}/state/m.room.topic/",
                            enc(room_id)
                        ),
                        &alice.access_token,
                        json!({ "topic": text }),
                    )
                    .await;
                assert_eq!(status, 200, "{reply}");
            }
        };
        topic("with bob").await;
        let charlie = server.register("charlie").await;
        let (status, reply) = server
            .post(
                &format!("/_matrix/client/v3/join/{}", enc(&room_id)),
                &charlie.access_token,
                json!({}),
            )
            .await;
        assert_eq!(status, 200, "{reply}");
        let (status, reply) = server
            .post(
                &format!("/_matrix/client/v3/rooms/{}/kick", enc(&room_id)),
                &alice.access_token,
                json!({ "user_id": BOB }),
            )
            .await;
        assert_eq!(status, 200, "{reply}");
        topic("without bob").await;
        let last = say(&server, &alice, &room_id, "after the kick").await;
        let last = server.store().event(&last).await.unwrap().unwrap();
        let sender = &server.services().federation_sender;
        eventually("the fan-out to pass the last event", || {
            sender.fanned_out() >= last.stream_ordering
        })
        .await;
        wait_for_empty_queue(&server).await;
        assert_eq!(
            peer.bodies(),
            ["m.room.topic:", "m.room.member:join", "m.room.member:leave"],
            "{kind:?}"
        );
        assert_eq!(peer.pdus()[0]["content"]["topic"], "with bob", "{kind:?}");
        server.stop().await;
    }
}

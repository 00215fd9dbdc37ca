//! The federation receiver over HTTP (`PUT /_matrix/federation/v1/send/{txnId}`), on both
//! databases. A simulated peer (`peer.test`: its own signing key and key document, and answers
//! to `/get_missing_events`, `/state_ids`, `/event` and `/event_auth` from the events it holds,
//! or greedy, huge or held answers on demand, and to `/backfill` with what a test sets) sends signed transactions to a Myelin server
//! (`hs.test`) whose room has a local user (alice) and the peer's bob, who joined through the
//! receive pipeline.

use std::{
    collections::HashMap,
    net::SocketAddr,
    sync::{
        Arc, Mutex,
        atomic::{AtomicUsize, Ordering},
    },
    time::Duration,
};

use axum::{
    Json, Router,
    extract::{Path, Query, State},
    http::StatusCode,
    response::{IntoResponse, Response},
    routing::{get, post},
};
use base64::Engine;
use myelin_federation::{FederationClient, FederationClientConfig, FederationError};
use myelin_room_version::{
    CanonicalJsonObject, CanonicalJsonValue, KeyPair, Pdu, PublicKey, RoomVersion,
    pdu::{EventSigner, build_pdu},
    signing::sign_json,
    verify::{ServerKey, ServerKeys},
};
use myelin_service::federation_receiver::MISSING_EVENTS_LIMIT;
use myelin_store::EventStatus;
use myelin_testkit::{
    TestServer, TestUser, enc,
    federation::{TestCa, start_federation},
    test_backends,
};
use ruma::{
    MilliSecondsSinceUnixEpoch,
    api::federation::transactions::{edu::Edu, send_transaction_message},
    serde::Raw,
};
use serde_json::{Value, json, value::RawValue};

const HS: &str = "hs.test";
const PEER: &str = "peer.test";
const PEER_KEY_ID: &str = "ed25519:p1";
const BOB: &str = "@bob:peer.test";
const CHARLIE: &str = "@charlie:peer.test";

/// How the peer answers `/get_missing_events`.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
enum MissingMode {
    /// Up to `limit` events, walking back from `latest_events` to `earliest_events`.
    #[default]
    Honest,
    /// Every event it holds on the way, whatever the limit.
    Greedy,
    /// Honest, in a body of several MiB.
    Huge,
    /// Honest, but only once `release` is notified (after announcing the request).
    Held,
}

/// A `/state_ids` answer: the state before an event and its auth chain, as event ids.
type StateIds = (Vec<String>, Vec<String>);

/// What the simulated peer holds and how it answers.
#[derive(Default)]
struct PeerState {
    /// Every event the peer can serve, by id (its own and the room's shared history).
    events: Mutex<HashMap<String, Value>>,
    missing_mode: Mutex<MissingMode>,
    /// The bodies of the `/get_missing_events` requests it had.
    missing_requests: Mutex<Vec<Value>>,
    /// `/state_ids` answers by event id.
    state_ids: Mutex<HashMap<String, StateIds>>,
    /// `/event_auth` answers by event id.
    auth_chains: Mutex<HashMap<String, Vec<String>>>,
    event_requests: AtomicUsize,
    state_requests: AtomicUsize,
    auth_requests: AtomicUsize,
    /// Transactions the server offered the peer (it refuses them all).
    transactions_refused: AtomicUsize,
    held_arrived: tokio::sync::Notify,
    release: tokio::sync::Notify,
    /// What the peer answers to `/backfill`, whatever is asked.
    backfill_answer: Mutex<Vec<Value>>,
    /// The query strings of the `/backfill` requests it had.
    backfill_requests: Mutex<Vec<String>>,
}

struct Peer {
    key: KeyPair,
    state: Arc<PeerState>,
    /// Signs requests as `peer.test` (transactions to `hs.test`).
    client: FederationClient,
}

impl Peer {
    /// Starts the peer's TLS listener (a certificate of `ca` for `peer.test`). The client is
    /// pointed at `hs.test` by [`Peer::aim`] once that server's address is known.
    async fn start(ca: &TestCa) -> (Arc<PeerState>, SocketAddr) {
        let state = Arc::new(PeerState::default());
        let key = peer_key();
        let (cert, private) = ca.issue(PEER);
        let tls = myelin::tls::server_config(&cert, &private).unwrap();
        let tcp = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = tcp.local_addr().unwrap();
        let listener = myelin::tls::TlsListener::new(tcp, tls).unwrap();
        let app = Router::new()
            .route("/_matrix/key/v2/server", get(key_document))
            .route(
                "/_matrix/federation/v1/get_missing_events/{room_id}",
                post(missing_events),
            )
            .route("/_matrix/federation/v1/state_ids/{room_id}", get(state_ids))
            .route("/_matrix/federation/v1/event/{event_id}", get(event))
            .route(
                "/_matrix/federation/v1/send/{txn_id}",
                axum::routing::put(refuse_transaction),
            )
            .route(
                "/_matrix/federation/v1/event_auth/{room_id}/{event_id}",
                get(event_auth),
            )
            .route("/_matrix/federation/v1/backfill/{room_id}", get(backfill))
            .with_state((state.clone(), Arc::new(key)));
        tokio::spawn(async move {
            let _ = axum::serve(listener, app.into_make_service()).await;
        });
        (state, addr)
    }

    fn aim(ca: &TestCa, state: Arc<PeerState>, hs: &TestServer) -> Peer {
        let mut overrides = std::collections::BTreeMap::new();
        overrides.insert(HS.to_owned(), hs.addrs().1.to_string());
        let client = FederationClient::new(
            FederationClientConfig {
                server_name: PEER.try_into().unwrap(),
                key_id: PEER_KEY_ID.to_owned(),
                trusted_ca_files: vec![ca.cert_path()],
                verify_certificates: true,
                destination_overrides: overrides,
                allow_private_addresses: true,
                timeout: Duration::from_secs(60),
                max_response_size: 1024 * 1024,
            },
            peer_key(),
        )
        .unwrap();
        Peer {
            key: peer_key(),
            state,
            client,
        }
    }

    /// The peer's keys, as a caller that fetched them hands them to the pipeline.
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

    /// Makes the peer able to serve `pdu`.
    fn hold(&self, pdu: &Pdu) {
        self.state
            .events
            .lock()
            .unwrap()
            .insert(pdu.event_id().to_owned(), json_of(pdu));
    }

    /// Sends a transaction; the answer's `pdus` map (event id → error, if any).
    async fn send(
        &self,
        txn_id: &str,
        pdus: Vec<Value>,
        edus: Vec<Value>,
    ) -> Result<HashMap<String, Option<String>>, FederationError> {
        let mut request = send_transaction_message::v1::Request::new(
            txn_id.into(),
            PEER.try_into().unwrap(),
            MilliSecondsSinceUnixEpoch::now(),
        );
        request.pdus = pdus.iter().map(raw).collect();
        request.edus = edus
            .iter()
            .map(|edu| Raw::<Edu>::from_json(raw(edu)))
            .collect();
        let answer = self
            .client
            .send(ruma::server_name!("hs.test"), request)
            .await?;
        Ok(answer
            .pdus
            .into_iter()
            .map(|(id, result)| (id.to_string(), result.err()))
            .collect())
    }
}

fn peer_key() -> KeyPair {
    KeyPair::from_seed(&[11; 32])
}

fn raw(value: &Value) -> Box<RawValue> {
    RawValue::from_string(value.to_string()).unwrap()
}

fn json_of(pdu: &Pdu) -> Value {
    serde_json::from_str(&pdu.canonical_json()).unwrap()
}

type PeerApp = (Arc<PeerState>, Arc<KeyPair>);

async fn key_document(State((_, key)): State<PeerApp>) -> Json<Value> {
    let public = base64::engine::general_purpose::STANDARD_NO_PAD.encode(key.public_key());
    let unsigned = json!({
        "server_name": PEER,
        "verify_keys": { PEER_KEY_ID: { "key": public } },
        "old_verify_keys": {},
        "valid_until_ts": myelin_service::now_millis() + 24 * 60 * 60 * 1000,
    });
    let CanonicalJsonValue::Object(mut object) = CanonicalJsonValue::try_from(unsigned).unwrap()
    else {
        unreachable!()
    };
    sign_json(&mut object, PEER, PEER_KEY_ID, &key).unwrap();
    Json(serde_json::to_value(&object).unwrap())
}

async fn missing_events(
    State((peer, _)): State<PeerApp>,
    Path(_room_id): Path<String>,
    Json(body): Json<Value>,
) -> Response {
    peer.missing_requests.lock().unwrap().push(body.clone());
    let mode = *peer.missing_mode.lock().unwrap();
    if mode == MissingMode::Held {
        peer.held_arrived.notify_one();
        peer.release.notified().await;
    }
    let ids = |field: &str| -> Vec<String> {
        body[field]
            .as_array()
            .map(|a| {
                a.iter()
                    .filter_map(|v| v.as_str().map(str::to_owned))
                    .collect()
            })
            .unwrap_or_default()
    };
    let limit = if mode == MissingMode::Greedy {
        usize::MAX
    } else {
        body["limit"].as_u64().unwrap_or(10) as usize
    };
    let events = peer.events.lock().unwrap().clone();
    // Walk back from the latest events' prev events, stopping at the earliest ones.
    let found = myelin_testkit::peer_graph::walk_back(
        &events,
        &ids("latest_events"),
        &ids("earliest_events"),
        limit,
    );
    if mode == MissingMode::Huge {
        // The right events, in a body of several MiB.
        let padding = "x".repeat(3 * 1024 * 1024);
        return Json(json!({ "events": found, "padding": padding })).into_response();
    }
    Json(json!({ "events": found })).into_response()
}

async fn state_ids(
    State((peer, _)): State<PeerApp>,
    Path(_room_id): Path<String>,
    Query(query): Query<HashMap<String, String>>,
) -> Response {
    peer.state_requests.fetch_add(1, Ordering::SeqCst);
    let answer = query
        .get("event_id")
        .and_then(|id| peer.state_ids.lock().unwrap().get(id).cloned());
    match answer {
        Some((pdu_ids, auth_chain_ids)) => {
            Json(json!({"pdu_ids": pdu_ids, "auth_chain_ids": auth_chain_ids})).into_response()
        }
        None => not_found(),
    }
}

async fn backfill(State((peer, _)): State<PeerApp>, uri: axum::http::Uri) -> Response {
    peer.backfill_requests
        .lock()
        .unwrap()
        .push(uri.query().unwrap_or_default().to_owned());
    let pdus = peer.backfill_answer.lock().unwrap().clone();
    Json(json!({
        "origin": PEER,
        "origin_server_ts": myelin_service::now_millis(),
        "pdus": pdus,
    }))
    .into_response()
}

async fn event(State((peer, _)): State<PeerApp>, Path(event_id): Path<String>) -> Response {
    peer.event_requests.fetch_add(1, Ordering::SeqCst);
    let event = peer.events.lock().unwrap().get(&event_id).cloned();
    match event {
        Some(event) => Json(json!({
            "origin": PEER,
            "origin_server_ts": myelin_service::now_millis(),
            "pdus": [event],
        }))
        .into_response(),
        None => not_found(),
    }
}

async fn event_auth(
    State((peer, _)): State<PeerApp>,
    Path((_room_id, event_id)): Path<(String, String)>,
) -> Response {
    peer.auth_requests.fetch_add(1, Ordering::SeqCst);
    let chain = peer.auth_chains.lock().unwrap().get(&event_id).cloned();
    let events = peer.events.lock().unwrap().clone();
    match chain {
        Some(ids) => {
            let chain: Vec<Value> = ids
                .iter()
                .filter_map(|id| events.get(id).cloned())
                .collect();
            Json(json!({ "auth_chain": chain })).into_response()
        }
        None => not_found(),
    }
}

/// The peer refuses every transaction the server offers it (a 403 answer: it is up).
async fn refuse_transaction(State((peer, _)): State<PeerApp>) -> Response {
    peer.transactions_refused.fetch_add(1, Ordering::SeqCst);
    (
        axum::http::StatusCode::FORBIDDEN,
        Json(json!({"errcode": "M_FORBIDDEN", "error": "not taking transactions"})),
    )
        .into_response()
}

fn not_found() -> Response {
    (
        StatusCode::NOT_FOUND,
        Json(json!({"errcode": "M_NOT_FOUND", "error": "not here"})),
    )
        .into_response()
}

/// `hs.test` with a version 10 public room that alice created and bob (of the peer) joined,
/// and the peer able to serve the room's events so far.
struct World {
    server: TestServer,
    peer: Peer,
    alice: TestUser,
    room_id: String,
    version: &'static RoomVersion,
    create: String,
    join_rules: String,
    power: String,
    bob_join: String,
    _ca: TestCa,
}

impl World {
    async fn build(kind: myelin_store::DatabaseKind) -> World {
        let ca = TestCa::new();
        let (peer_state, peer_addr) = Peer::start(&ca).await;
        let mut servers = start_federation(kind, &ca, &[HS], |_, config| {
            config
                .federation
                .destination_overrides
                .insert(PEER.to_owned(), peer_addr.to_string());
        })
        .await;
        let server = servers.remove(0);
        let peer = Peer::aim(&ca, peer_state, &server);
        let alice = server.register("alice").await;
        let room_id = server
            .create_room(
                &alice,
                json!({"preset": "public_chat", "room_version": "10"}),
            )
            .await;
        let store = server.store();
        let room = store.room(&room_id).await.unwrap().unwrap();
        let state_id = |kind: &str| {
            let store = store.clone();
            let kind = kind.to_owned();
            async move {
                store
                    .current_state(room.room_nid, Some(&[(kind, String::new())]))
                    .await
                    .unwrap()
                    .pop()
                    .unwrap()
                    .event_id
            }
        };
        let create = state_id("m.room.create").await;
        let join_rules = state_id("m.room.join_rules").await;
        let power = state_id("m.room.power_levels").await;
        let mut world = World {
            version: RoomVersion::get("10").unwrap(),
            server,
            peer,
            alice,
            room_id,
            create,
            join_rules,
            power,
            bob_join: String::new(),
            _ca: ca,
        };
        let (prev, depth) = world.head().await;
        let join = world.event(
            BOB,
            "m.room.member",
            Some(BOB),
            json!({"membership": "join"}),
            &prev,
            &[
                &world.create.clone(),
                &world.join_rules.clone(),
                &world.power.clone(),
            ],
            depth,
        );
        let outcome = world
            .server
            .services()
            .rooms
            .receive_pdus(
                &world.room_id,
                &[join.canonical_json().as_bytes()],
                &world.peer.keys(),
            )
            .await
            .unwrap();
        assert_eq!(
            outcome[0].outcome,
            myelin_service::rooms::Received::Accepted
        );
        world.bob_join = join.event_id().to_owned();
        world.share_history().await;
        world
    }

    /// Lets the peer serve every event of the room stored here (the history both share).
    async fn share_history(&self) {
        let store = self.server.store();
        let room = store.room(&self.room_id).await.unwrap().unwrap();
        let rows = store.current_state(room.room_nid, None).await.unwrap();
        let mut events = self.peer.state.events.lock().unwrap();
        for row in rows {
            events.insert(
                row.event_id.clone(),
                serde_json::from_str(&row.json).unwrap(),
            );
        }
    }

    /// The room's forward extremities here and the depth for an event on top of them.
    async fn head(&self) -> (Vec<String>, i64) {
        let store = self.server.store();
        let room = store.room(&self.room_id).await.unwrap().unwrap();
        let head = store
            .send_context(room.room_nid, &[], None)
            .await
            .unwrap()
            .head;
        (head.prev_event_ids, head.max_depth + 1)
    }

    /// An event of a peer user, signed by the peer.
    #[allow(clippy::too_many_arguments)]
    fn event(
        &self,
        sender: &str,
        kind: &str,
        state_key: Option<&str>,
        content: Value,
        prev: &[String],
        auth: &[&String],
        depth: i64,
    ) -> Pdu {
        self.event_signed_by(
            &self.peer.key,
            sender,
            kind,
            state_key,
            content,
            prev,
            auth,
            depth,
        )
    }

    #[allow(clippy::too_many_arguments)]
    fn event_signed_by(
        &self,
        key: &KeyPair,
        sender: &str,
        kind: &str,
        state_key: Option<&str>,
        content: Value,
        prev: &[String],
        auth: &[&String],
        depth: i64,
    ) -> Pdu {
        self.event_in_room(
            &self.room_id,
            key,
            sender,
            kind,
            state_key,
            content,
            prev,
            auth,
            depth,
        )
    }

    /// An event signed with `key`, naming `room_id` (this world's room or another).
    #[allow(clippy::too_many_arguments)]
    fn event_in_room(
        &self,
        room_id: &str,
        key: &KeyPair,
        sender: &str,
        kind: &str,
        state_key: Option<&str>,
        content: Value,
        prev: &[String],
        auth: &[&String],
        depth: i64,
    ) -> Pdu {
        let mut partial = CanonicalJsonObject::new();
        let s = |v: &str| CanonicalJsonValue::String(v.to_owned());
        partial.insert("type".to_owned(), s(kind));
        partial.insert("room_id".to_owned(), s(room_id));
        partial.insert("sender".to_owned(), s(sender));
        if let Some(key) = state_key {
            partial.insert("state_key".to_owned(), s(key));
        }
        partial.insert(
            "content".to_owned(),
            CanonicalJsonValue::try_from(content).unwrap(),
        );
        partial.insert(
            "prev_events".to_owned(),
            CanonicalJsonValue::Array(prev.iter().map(|id| s(id)).collect()),
        );
        partial.insert(
            "auth_events".to_owned(),
            CanonicalJsonValue::Array(auth.iter().map(|id| s(id)).collect()),
        );
        partial.insert(
            "depth".to_owned(),
            CanonicalJsonValue::Integer(depth.try_into().unwrap()),
        );
        partial.insert(
            "origin_server_ts".to_owned(),
            CanonicalJsonValue::Integer(myelin_service::now_millis().try_into().unwrap()),
        );
        build_pdu(
            partial,
            self.version,
            EventSigner::Server {
                server_name: PEER,
                key_id: PEER_KEY_ID,
                key,
            },
        )
        .unwrap()
    }

    /// A message of bob's on top of `prev`.
    fn bob_says(&self, body: &str, prev: &[String], depth: i64) -> Pdu {
        let member = self.bob_join.clone();
        self.event(
            BOB,
            "m.room.message",
            None,
            json!({"msgtype": "m.text", "body": body}),
            prev,
            &[&self.create.clone(), &self.power.clone(), &member],
            depth,
        )
    }

    /// A deep gap: sixteen messages of bob's of which the peer sends only the last (in a
    /// transaction `txn`); `/get_missing_events` brings the ten before it, and the state at the
    /// fifth comes from `/state_ids` (the current state here), so the first four stay missing
    /// and the fifth is known as an outlier (a backward extremity).
    async fn deep_gap(&self, txn: &str) -> Vec<Pdu> {
        let chain = self.bob_chain("s", 16).await;
        let store = self.server.store();
        let room = store.room(&self.room_id).await.unwrap().unwrap();
        let state: Vec<String> = store
            .current_state(room.room_nid, None)
            .await
            .unwrap()
            .into_iter()
            .map(|row| row.event_id)
            .collect();
        self.peer
            .state
            .state_ids
            .lock()
            .unwrap()
            .insert(chain[4].event_id().to_owned(), (state.clone(), state));
        let answer = self
            .peer
            .send(txn, vec![json_of(&chain[15])], vec![])
            .await
            .unwrap();
        assert!(ok(&answer, &chain[15]), "{answer:?}");
        chain
    }

    /// A chain of `n` messages of bob's on top of the room's head, held by the peer.
    async fn bob_chain(&self, prefix: &str, n: usize) -> Vec<Pdu> {
        let (mut prev, mut depth) = self.head().await;
        let mut chain = Vec::new();
        for i in 1..=n {
            let event = self.bob_says(&format!("{prefix}{i}"), &prev, depth);
            self.peer.hold(&event);
            prev = vec![event.event_id().to_owned()];
            depth += 1;
            chain.push(event);
        }
        chain
    }

    async fn status(&self, event_id: &str) -> Option<EventStatus> {
        self.server
            .store()
            .event(event_id)
            .await
            .unwrap()
            .map(|row| row.status)
    }

    /// The bodies of the room's messages as alice's `/messages` shows them, oldest first.
    async fn message_bodies(&self) -> Vec<String> {
        let (status, body) = self
            .server
            .get(
                &format!(
                    "/_matrix/client/v3/rooms/{}/messages?dir=b&limit=100",
                    enc(&self.room_id)
                ),
                &self.alice.access_token,
            )
            .await;
        assert_eq!(status, 200, "{body}");
        let mut bodies: Vec<String> = body["chunk"]
            .as_array()
            .unwrap()
            .iter()
            .filter(|e| e["type"] == "m.room.message")
            .filter_map(|e| e["content"]["body"].as_str().map(str::to_owned))
            .collect();
        bodies.reverse();
        bodies
    }

    async fn sync(&self, since: Option<&str>) -> Value {
        let path = match since {
            Some(since) => format!("/_matrix/client/v3/sync?since={since}&timeout=0"),
            None => "/_matrix/client/v3/sync?timeout=0".to_owned(),
        };
        let (status, body) = self.server.get(&path, &self.alice.access_token).await;
        assert_eq!(status, 200, "{body}");
        body
    }

    /// Alice sends a message (client transaction `txn`); its event id.
    async fn alice_says(&self, txn: &str, body: &str) -> String {
        let (status, sent) = self
            .server
            .put(
                &format!(
                    "/_matrix/client/v3/rooms/{}/send/m.room.message/{txn}",
                    enc(&self.room_id)
                ),
                &self.alice.access_token,
                json!({"msgtype": "m.text", "body": body}),
            )
            .await;
        assert_eq!(status, 200, "{sent}");
        sent["event_id"].as_str().unwrap().to_owned()
    }

    async fn stop(self) {
        self.server.stop().await;
    }
}

fn ok(answer: &HashMap<String, Option<String>>, event: &Pdu) -> bool {
    matches!(answer.get(event.event_id()), Some(None))
}

fn error_of<'a>(answer: &'a HashMap<String, Option<String>>, event: &Pdu) -> &'a str {
    match answer.get(event.event_id()) {
        Some(Some(error)) => error,
        other => panic!("expected an error for {}: {other:?}", event.event_id()),
    }
}

#[tokio::test]
async fn messages_are_accepted_once_and_retransmissions_get_the_same_answer() {
    for kind in test_backends() {
        let world = World::build(kind).await;
        let (prev, depth) = world.head().await;
        let first = world.bob_says("hello", &prev, depth);
        let second = world.bob_says("again", &[first.event_id().to_owned()], depth + 1);
        let answer = world
            .peer
            .send("txn-1", vec![json_of(&first), json_of(&second)], vec![])
            .await
            .unwrap();
        assert!(
            ok(&answer, &first) && ok(&answer, &second),
            "{kind:?}: {answer:?}"
        );
        assert_eq!(world.message_bodies().await, vec!["hello", "again"]);

        // The same transaction id again, even with other content: the stored answer, nothing
        // processed (the third message is not stored).
        let third = world.bob_says("sneaky", &[second.event_id().to_owned()], depth + 2);
        let again = world
            .peer
            .send("txn-1", vec![json_of(&third)], vec![])
            .await
            .unwrap();
        assert_eq!(again, answer, "{kind:?}: the first answer, as it was");
        assert_eq!(world.status(third.event_id()).await, None, "{kind:?}");
        assert_eq!(world.message_bodies().await, vec!["hello", "again"]);

        // Another transaction id is processed.
        let answer = world
            .peer
            .send("txn-2", vec![json_of(&third)], vec![])
            .await
            .unwrap();
        assert!(ok(&answer, &third), "{kind:?}: {answer:?}");
        assert_eq!(
            world.message_bodies().await,
            vec!["hello", "again", "sneaky"]
        );

        // Alice's sync sees bob's messages.
        let sync = world.sync(None).await;
        let timeline = sync["rooms"]["join"][&world.room_id]["timeline"]["events"]
            .as_array()
            .unwrap();
        assert!(
            timeline
                .iter()
                .any(|e| e["sender"] == BOB && e["content"]["body"] == "sneaky"),
            "{kind:?}: {sync}"
        );
        world.stop().await;
    }
}

#[tokio::test]
async fn transactions_over_the_spec_limits_are_refused_and_large_ones_taken() {
    for kind in test_backends() {
        let world = World::build(kind).await;
        let (prev, depth) = world.head().await;
        let message = world.bob_says("one", &prev, depth);
        let refused =
            |result: Result<HashMap<String, Option<String>>, FederationError>| match result {
                Err(FederationError::Status { status, body }) => {
                    assert_eq!(status, 400, "{body}");
                    assert!(body.contains("M_BAD_JSON"), "{body}");
                }
                other => panic!("{kind:?}: expected a 400, got {other:?}"),
            };
        refused(
            world
                .peer
                .send("too-many-pdus", vec![json_of(&message); 51], vec![])
                .await,
        );
        let typing = json!({"edu_type": "m.typing", "content": {"room_id": world.room_id, "user_id": BOB, "typing": true}});
        refused(
            world
                .peer
                .send("too-many-edus", vec![], vec![typing; 101])
                .await,
        );
        assert_eq!(world.status(message.event_id()).await, None, "{kind:?}");

        // 50 PDUs and 100 EDUs are fine, and so is a transaction above the JSON body cap of
        // other routes (1 MiB): 20 messages of 60 KB.
        let answer = world
            .peer
            .send(
                "at-the-limits",
                vec![json_of(&message); 50],
                vec![json!({"edu_type": "m.unknown", "content": {}}); 100],
            )
            .await
            .unwrap();
        assert!(ok(&answer, &message), "{kind:?}: {answer:?}");
        let mut prev = vec![message.event_id().to_owned()];
        let mut big = Vec::new();
        for i in 0..20 {
            let event = world.bob_says(&"x".repeat(60_000), &prev, depth + 1 + i);
            prev = vec![event.event_id().to_owned()];
            big.push(event);
        }
        let answer = world
            .peer
            .send("big", big.iter().map(json_of).collect(), vec![])
            .await
            .unwrap();
        assert!(big.iter().all(|e| ok(&answer, e)), "{kind:?}: {answer:?}");
        world.stop().await;
    }
}

#[tokio::test]
async fn forged_signatures_are_dropped_bad_hashes_redacted_and_unauthorised_events_rejected() {
    for kind in test_backends() {
        let world = World::build(kind).await;
        let (prev, depth) = world.head().await;
        let member = world.bob_join.clone();
        let auth = [&world.create.clone(), &world.power.clone(), &member];

        // Signed by a key that is not the peer's, under the peer's key id.
        let forged = world.event_signed_by(
            &KeyPair::from_seed(&[99; 32]),
            BOB,
            "m.room.message",
            None,
            json!({"msgtype": "m.text", "body": "forged"}),
            &prev,
            &auth,
            depth,
        );
        // Content changed after signing: the signature (over the redacted form) still holds,
        // the content hash does not.
        let honest = world.bob_says("original", &prev, depth);
        let mut tampered = honest.json().clone();
        tampered.insert(
            "content".to_owned(),
            CanonicalJsonValue::try_from(json!({"msgtype": "m.text", "body": "tampered"})).unwrap(),
        );
        let tampered = serde_json::to_value(&tampered).unwrap();
        // Bob (power 0) may not change the power levels.
        let coup = world.event(
            BOB,
            "m.room.power_levels",
            Some(""),
            json!({"users": {BOB: 100}}),
            &prev,
            &auth,
            depth,
        );
        let answer = world
            .peer
            .send(
                "mixed",
                vec![json_of(&forged), tampered, json_of(&coup)],
                vec![],
            )
            .await
            .unwrap();

        assert!(
            error_of(&answer, &forged).contains("signature"),
            "{kind:?}: {answer:?}"
        );
        assert_eq!(
            world.status(forged.event_id()).await,
            None,
            "{kind:?}: not stored"
        );

        assert!(ok(&answer, &honest), "{kind:?}: {answer:?}");
        let row = world
            .server
            .store()
            .event(honest.event_id())
            .await
            .unwrap()
            .unwrap();
        let stored: Value = serde_json::from_str(&row.json).unwrap();
        assert_eq!(
            stored["content"],
            json!({}),
            "{kind:?}: only the redacted form"
        );

        assert!(
            error_of(&answer, &coup).contains("Rejected"),
            "{kind:?}: {answer:?}"
        );
        assert!(
            matches!(
                world.status(coup.event_id()).await,
                Some(EventStatus::Rejected(_))
            ),
            "{kind:?}"
        );
        let store = world.server.store();
        let room = store.room(&world.room_id).await.unwrap().unwrap();
        let power = store
            .current_state(
                room.room_nid,
                Some(&[("m.room.power_levels".to_owned(), String::new())]),
            )
            .await
            .unwrap();
        assert_eq!(
            power[0].event_id, world.power,
            "{kind:?}: the state is as it was"
        );
        world.stop().await;
    }
}

#[tokio::test]
async fn events_are_refused_from_servers_the_acl_denies_and_for_rooms_this_server_is_not_in() {
    for kind in test_backends() {
        let world = World::build(kind).await;
        let (status, body) = world
            .server
            .put(
                &format!(
                    "/_matrix/client/v3/rooms/{}/state/m.room.server_acl/",
                    enc(&world.room_id)
                ),
                &world.alice.access_token,
                json!({"allow": [HS], "deny": []}),
            )
            .await;
        assert_eq!(status, 200, "{body}");
        let (prev, depth) = world.head().await;
        let message = world.bob_says("let me in", &prev, depth);
        let typing = json!({"edu_type": "m.typing", "content": {"room_id": world.room_id, "user_id": BOB, "typing": true}});
        let answer = world
            .peer
            .send("denied", vec![json_of(&message)], vec![typing])
            .await
            .unwrap();
        assert!(
            error_of(&answer, &message).contains("ACL"),
            "{kind:?}: {answer:?}"
        );
        assert_eq!(world.status(message.event_id()).await, None, "{kind:?}");
        let sync = world.sync(None).await;
        let ephemeral = &sync["rooms"]["join"][&world.room_id]["ephemeral"]["events"];
        assert!(
            !ephemeral.to_string().contains(BOB),
            "{kind:?}: no typing from a denied server: {ephemeral}"
        );

        // A room this server does not know: refused, named.
        let mut elsewhere = message.json().clone();
        elsewhere.insert(
            "room_id".to_owned(),
            CanonicalJsonValue::String("!nowhere:peer.test".to_owned()),
        );
        let elsewhere = build_pdu(
            elsewhere,
            world.version,
            EventSigner::Server {
                server_name: PEER,
                key_id: PEER_KEY_ID,
                key: &world.peer.key,
            },
        )
        .unwrap();
        let answer = world
            .peer
            .send("unknown-room", vec![json_of(&elsewhere)], vec![])
            .await
            .unwrap();
        assert!(
            error_of(&answer, &elsewhere).contains("not in room"),
            "{kind:?}: {answer:?}"
        );

        // A room this server knows but has left: refused too.
        let (status, body) = world
            .server
            .post(
                &format!("/_matrix/client/v3/rooms/{}/leave", enc(&world.room_id)),
                &world.alice.access_token,
                json!({}),
            )
            .await;
        assert_eq!(status, 200, "{body}");
        let (prev, depth) = world.head().await;
        let late = world.bob_says("anyone?", &prev, depth);
        let answer = world
            .peer
            .send("left", vec![json_of(&late)], vec![])
            .await
            .unwrap();
        assert!(
            error_of(&answer, &late).contains("not in room"),
            "{kind:?}: {answer:?}"
        );
        assert_eq!(world.status(late.event_id()).await, None, "{kind:?}");
        world.stop().await;
    }
}

#[tokio::test]
async fn a_gap_is_filled_through_get_missing_events() {
    for kind in test_backends() {
        let world = World::build(kind).await;
        let (head, _) = world.head().await;
        let chain = world.bob_chain("m", 3).await;
        let answer = world
            .peer
            .send("gap", vec![json_of(&chain[2])], vec![])
            .await
            .unwrap();
        assert!(ok(&answer, &chain[2]), "{kind:?}: {answer:?}");
        for event in &chain {
            assert_eq!(
                world.status(event.event_id()).await,
                Some(EventStatus::Normal)
            );
        }
        assert_eq!(world.message_bodies().await, vec!["m1", "m2", "m3"]);
        let requests = world.peer.state.missing_requests.lock().unwrap().clone();
        assert_eq!(requests.len(), 1, "{kind:?}: {requests:?}");
        assert_eq!(requests[0]["latest_events"], json!([chain[2].event_id()]));
        assert_eq!(requests[0]["earliest_events"], json!(head));
        // The spec's default, 10, goes unsaid.
        let limit = requests[0]["limit"].as_u64().unwrap_or(10);
        assert_eq!(limit as usize, MISSING_EVENTS_LIMIT);
        world.stop().await;
    }
}

#[tokio::test]
async fn a_peer_cannot_make_this_server_fetch_or_store_past_the_bounds() {
    for kind in test_backends() {
        let world = World::build(kind).await;
        // Thirty events this server lacks; the transaction brings the thirty-first.
        let chain = world.bob_chain("g", 31).await;
        *world.peer.state.missing_mode.lock().unwrap() = MissingMode::Greedy;
        let answer = world
            .peer
            .send("greedy", vec![json_of(&chain[30])], vec![])
            .await
            .unwrap();
        assert!(
            error_of(&answer, &chain[30]).contains("could not be fetched"),
            "{kind:?}: {answer:?}"
        );
        // It answered with all thirty: none beyond the ten asked for were taken, and the ten
        // (still missing their own history, which /state_ids does not give) are not stored.
        for event in &chain[..20] {
            assert_eq!(world.status(event.event_id()).await, None, "{kind:?}");
        }
        let stored = {
            let mut n = 0;
            for event in &chain {
                if world.status(event.event_id()).await.is_some() {
                    n += 1;
                }
            }
            n
        };
        assert!(stored <= MISSING_EVENTS_LIMIT, "{kind:?}: {stored} stored");
        assert!(world.peer.state.state_requests.load(Ordering::SeqCst) >= 1);

        // A huge answer (the right events, padded) is not read past its cap: nothing of it is
        // taken.
        *world.peer.state.missing_mode.lock().unwrap() = MissingMode::Huge;
        let chain = world.bob_chain("h", 3).await;
        let answer = world
            .peer
            .send("huge", vec![json_of(&chain[2])], vec![])
            .await
            .unwrap();
        assert!(answer.get(chain[2].event_id()).is_some_and(Option::is_some));
        for event in &chain {
            assert_eq!(world.status(event.event_id()).await, None, "{kind:?}");
        }
        world.stop().await;
    }
}

#[tokio::test]
async fn prev_events_out_of_reach_are_placed_on_the_state_the_origin_gives() {
    for kind in test_backends() {
        let world = World::build(kind).await;
        // Fifteen events this server lacks: get_missing_events brings the ten nearest the
        // sixteenth; the state at the fifth comes from /state_ids, the fifth from /event.
        let chain = world.deep_gap("deep-gap").await;
        for event in &chain[..4] {
            assert_eq!(world.status(event.event_id()).await, None, "{kind:?}");
        }
        assert_eq!(
            world.status(chain[4].event_id()).await,
            Some(EventStatus::Outlier),
            "{kind:?}: the fifth is known for its place only"
        );
        for event in &chain[5..] {
            assert_eq!(
                world.status(event.event_id()).await,
                Some(EventStatus::Normal),
                "{kind:?}"
            );
        }
        let bodies = world.message_bodies().await;
        let expected: Vec<String> = (6..=16).map(|i| format!("s{i}")).collect();
        assert_eq!(bodies, expected, "{kind:?}");
        assert_eq!(world.peer.state.event_requests.load(Ordering::SeqCst), 1);
        world.stop().await;
    }
}

/// History before a gap comes from `/backfill` of a server of the room, but only from an
/// answer that keeps to what was asked: one with more events than the limit, or with an
/// event of another room, is not used (nothing of it is stored) and the honest answer is.
#[tokio::test]
async fn backfill_answers_over_the_limit_or_from_another_room_are_ignored() {
    for kind in test_backends() {
        let world = World::build(kind).await;
        // The deep gap of the test above: the first four of bob's sixteen messages are
        // missing here, the fifth is known as an outlier (a backward extremity).
        let chain = world.deep_gap("deep-gap").await;
        let missing: Vec<&Pdu> = chain[..4].iter().collect();
        let history: Vec<Value> = chain[..5].iter().map(json_of).collect();
        let services = world.server.services();

        // Five events for a limit of three.
        *world.peer.state.backfill_answer.lock().unwrap() = history.clone();
        assert_eq!(
            services.backfill(&world.room_id, 3).await.unwrap(),
            0,
            "{kind:?}: an answer over the limit"
        );
        // Within the limit, but one event is of another room.
        let (prev, depth) = world.head().await;
        let elsewhere = world.event_in_room(
            "!elsewhere:peer.test",
            &world.peer.key,
            BOB,
            "m.room.message",
            None,
            json!({"msgtype": "m.text", "body": "elsewhere"}),
            &prev,
            &[&world.create.clone()],
            depth,
        );
        let mut mixed = history.clone();
        mixed.push(json_of(&elsewhere));
        *world.peer.state.backfill_answer.lock().unwrap() = mixed;
        assert_eq!(
            services.backfill(&world.room_id, 10).await.unwrap(),
            0,
            "{kind:?}: an answer with an event of another room"
        );
        for event in &missing {
            assert_eq!(world.status(event.event_id()).await, None, "{kind:?}");
        }
        assert_eq!(world.status(elsewhere.event_id()).await, None, "{kind:?}");
        let requests = world.peer.state.backfill_requests.lock().unwrap().clone();
        assert_eq!(requests.len(), 2, "{kind:?}: {requests:?}");
        assert!(
            requests[0].contains("limit=3")
                && requests[0].contains(&format!("v={}", enc(chain[4].event_id()))),
            "{kind:?}: the request names the backward extremity: {requests:?}"
        );

        // The honest answer is taken: the history is readable, oldest first.
        *world.peer.state.backfill_answer.lock().unwrap() = history;
        assert!(
            services.backfill(&world.room_id, 10).await.unwrap() >= 4,
            "{kind:?}: the honest answer"
        );
        for event in &missing {
            assert_eq!(
                world.status(event.event_id()).await,
                Some(EventStatus::Normal),
                "{kind:?}"
            );
        }
        let bodies = world.message_bodies().await;
        let shown: Vec<String> = bodies.into_iter().filter(|b| b.starts_with('s')).collect();
        assert!(
            shown.starts_with(&["s1", "s2", "s3", "s4"].map(str::to_owned)),
            "{kind:?}: {shown:?}"
        );
        world.stop().await;
    }
}

/// A redaction of an event this server has not got yet (another server's, on its way) may be
/// sent with the redact power level only, and applies when the event arrives (Complement's
/// TestFederationRedactSendsWithoutEvent).
#[tokio::test]
async fn a_redaction_of_an_event_not_yet_here_needs_power_and_applies_on_arrival() {
    for kind in test_backends() {
        let world = World::build(kind).await;
        let (prev, depth) = world.head().await;
        let coming = world.bob_says("on its way", &prev, depth);
        let redact_path = |txn: &str| {
            format!(
                "/_matrix/client/v3/rooms/{}/redact/{}/{txn}",
                enc(&world.room_id),
                enc(coming.event_id())
            )
        };
        // Carol, a member without the power level, may not: whose the event is cannot be told.
        let carol = world.server.register("carol").await;
        let (status, body) = world
            .server
            .post(
                &format!("/_matrix/client/v3/join/{}", enc(&world.room_id)),
                &carol.access_token,
                json!({}),
            )
            .await;
        assert_eq!(status, 200, "{body}");
        let (status, body) = world
            .server
            .put(&redact_path("c1"), &carol.access_token, json!({}))
            .await;
        assert_eq!(status, 403, "{kind:?}: {body}");
        // Alice, the room's creator, may.
        let (status, body) = world
            .server
            .put(
                &redact_path("a1"),
                &world.alice.access_token,
                json!({"reason": "before it came"}),
            )
            .await;
        assert_eq!(status, 200, "{kind:?}: {body}");

        let answer = world
            .peer
            .send("coming", vec![json_of(&coming)], vec![])
            .await
            .unwrap();
        assert!(ok(&answer, &coming), "{kind:?}: {answer:?}");
        let (status, event) = world
            .server
            .get(
                &format!(
                    "/_matrix/client/v3/rooms/{}/event/{}",
                    enc(&world.room_id),
                    enc(coming.event_id())
                ),
                &world.alice.access_token,
            )
            .await;
        assert_eq!(status, 200, "{kind:?}: {event}");
        assert_eq!(
            event["content"],
            json!({}),
            "{kind:?}: arrived redacted: {event}"
        );
        world.stop().await;
    }
}

/// A gap this server did not fill (events placed on the state the origin gave for the
/// earliest it fetched) ends the next sync's timeline batch: what follows the gap, marked
/// `limited`, without the local message from before it (Complement's TestSyncTimelineGap).
#[tokio::test]
async fn a_gap_in_the_room_reaches_clients_as_a_limited_timeline() {
    for kind in test_backends() {
        let world = World::build(kind).await;
        let since = world.sync(None).await["next_batch"]
            .as_str()
            .unwrap()
            .to_owned();
        world.alice_says("before-gap", "before the gap").await;
        world.deep_gap("gap").await;

        let filter = enc(r#"{"room":{"timeline":{"limit":50}}}"#);
        let (status, body) = world
            .server
            .get(
                &format!("/_matrix/client/v3/sync?since={since}&timeout=0&filter={filter}"),
                &world.alice.access_token,
            )
            .await;
        assert_eq!(status, 200, "{body}");
        let timeline = &body["rooms"]["join"][&world.room_id]["timeline"];
        assert_eq!(timeline["limited"], true, "{kind:?}: {timeline}");
        let bodies: Vec<&str> = timeline["events"]
            .as_array()
            .unwrap()
            .iter()
            .filter_map(|e| e["content"]["body"].as_str())
            .collect();
        let expected: Vec<String> = (6..=16).map(|i| format!("s{i}")).collect();
        assert_eq!(bodies, expected, "{kind:?}: {timeline}");
        world.stop().await;
    }
}

/// What a join through a resident does with the resident's `send_join` answer: the join's
/// prev events (the resident's latest, often messages) are neither sent nor stored, only the
/// state after them is given. An event citing such a prev event is placed on that state, not
/// rejected for missing it.
#[tokio::test]
async fn prev_events_not_held_are_placed_on_the_state_given_for_them() {
    for kind in test_backends() {
        let world = World::build(kind).await;
        let chain = world.bob_chain("unseen", 2).await;
        let store = world.server.store();
        let room = store.room(&world.room_id).await.unwrap().unwrap();
        let current = store
            .current_state_group(room.room_nid)
            .await
            .unwrap()
            .unwrap();
        let on_top = world.bob_says("after the unseen", &[chain[1].event_id().to_owned()], 50);
        let prev_states = HashMap::from([(chain[1].event_id().to_owned(), current)]);
        let outcome = world
            .server
            .services()
            .rooms
            .receive_pdus_with_prev_states(
                &world.room_id,
                &[on_top.canonical_json().as_bytes()],
                &world.peer.keys(),
                &prev_states,
            )
            .await
            .unwrap();
        assert_eq!(
            outcome[0].outcome,
            myelin_service::rooms::Received::Accepted,
            "{kind:?}"
        );
        assert_eq!(world.status(chain[1].event_id()).await, None, "{kind:?}");
        assert_eq!(
            world.status(on_top.event_id()).await,
            Some(EventStatus::Normal),
            "{kind:?}"
        );
        assert!(
            world
                .message_bodies()
                .await
                .contains(&"after the unseen".to_owned()),
            "{kind:?}"
        );
        world.stop().await;
    }
}

#[tokio::test]
async fn missing_auth_events_are_fetched_with_event_auth() {
    for kind in test_backends() {
        let world = World::build(kind).await;
        let (head, depth) = world.head().await;
        // Charlie joins, bob speaks, charlie speaks citing his join: only the last comes.
        let join = world.event(
            CHARLIE,
            "m.room.member",
            Some(CHARLIE),
            json!({"membership": "join"}),
            &head,
            &[
                &world.create.clone(),
                &world.join_rules.clone(),
                &world.power.clone(),
            ],
            depth,
        );
        let between = world.bob_says("between", &[join.event_id().to_owned()], depth + 1);
        let join_id = join.event_id().to_owned();
        let spoken = world.event(
            CHARLIE,
            "m.room.message",
            None,
            json!({"msgtype": "m.text", "body": "charlie here"}),
            &[between.event_id().to_owned()],
            &[&world.create.clone(), &world.power.clone(), &join_id],
            depth + 2,
        );
        for event in [&join, &between, &spoken] {
            world.peer.hold(event);
        }
        world.peer.state.auth_chains.lock().unwrap().insert(
            spoken.event_id().to_owned(),
            vec![
                world.create.clone(),
                world.join_rules.clone(),
                world.power.clone(),
                join_id.clone(),
            ],
        );
        let answer = world
            .peer
            .send("auth", vec![json_of(&spoken)], vec![])
            .await
            .unwrap();
        assert!(ok(&answer, &spoken), "{kind:?}: {answer:?}");
        assert_eq!(world.peer.state.auth_requests.load(Ordering::SeqCst), 1);
        for event in [&join, &between, &spoken] {
            assert_eq!(
                world.status(event.event_id()).await,
                Some(EventStatus::Normal),
                "{kind:?}"
            );
        }
        assert_eq!(
            world.message_bodies().await,
            vec!["between", "charlie here"]
        );
        world.stop().await;
    }
}

#[tokio::test]
async fn one_transaction_per_origin_at_a_time_with_a_bounded_queue() {
    for kind in test_backends() {
        let world = Arc::new(World::build(kind).await);
        let chain = world.bob_chain("q", 2).await;
        *world.peer.state.missing_mode.lock().unwrap() = MissingMode::Held;
        // The first transaction waits on the peer's get_missing_events answer.
        let first = {
            let world = world.clone();
            let event = json_of(&chain[1]);
            tokio::spawn(async move { world.peer.send("held", vec![event], vec![]).await })
        };
        world.peer.state.held_arrived.notified().await;
        // Its retransmission and another transaction wait for their turn.
        let retransmission = {
            let world = world.clone();
            let event = json_of(&chain[1]);
            tokio::spawn(async move { world.peer.send("held", vec![event], vec![]).await })
        };
        let (prev, depth) = world.head().await;
        let other = world.bob_says("other", &prev, depth);
        let next = {
            let world = world.clone();
            let event = json_of(&other);
            tokio::spawn(async move { world.peer.send("next", vec![event], vec![]).await })
        };
        let inbound = &world.server.services().inbound;
        for _ in 0..200 {
            if inbound.queued(PEER) == 3 {
                break;
            }
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
        assert_eq!(inbound.queued(PEER), 3, "{kind:?}");
        // A fourth is refused while three are queued.
        match world.peer.send("fourth", vec![], vec![]).await {
            Err(FederationError::Status { status, body }) => {
                assert_eq!(status, 429, "{body}");
                assert!(body.contains("M_LIMIT_EXCEEDED"), "{body}");
            }
            other => panic!("{kind:?}: expected 429, got {other:?}"),
        }
        world.peer.state.release.notify_one();
        let first = first.await.unwrap().unwrap();
        assert!(ok(&first, &chain[1]), "{kind:?}: {first:?}");
        assert_eq!(retransmission.await.unwrap().unwrap(), first, "{kind:?}");
        assert!(ok(&next.await.unwrap().unwrap(), &other), "{kind:?}");
        assert_eq!(
            world.peer.state.missing_requests.lock().unwrap().len(),
            1,
            "{kind:?}: the retransmission was not processed again"
        );
        assert_eq!(inbound.queued(PEER), 0);
        let world = Arc::into_inner(world).expect("the tasks are done");
        world.stop().await;
    }
}

#[tokio::test]
async fn a_destination_refusing_our_transactions_can_still_send_us_its_own() {
    for kind in test_backends() {
        let world = World::build(kind).await;
        // Alice's message is offered to the peer, which is in the room, and refused.
        world.alice_says("r1", "take this").await;
        let deadline = std::time::Instant::now() + std::time::Duration::from_secs(10);
        while world.peer.state.transactions_refused.load(Ordering::SeqCst) == 0 {
            assert!(
                std::time::Instant::now() < deadline,
                "{kind:?}: no transaction offered"
            );
            tokio::time::sleep(std::time::Duration::from_millis(20)).await;
        }
        // The peer is up: its own transaction, whose check needs its key fetched from it, is
        // taken (it was refused with 401 while a refusal counted as the peer being down).
        let (prev, depth) = world.head().await;
        let says = world.bob_says("after the refusal", &prev, depth + 1);
        let answer = world
            .peer
            .send("after-refusal", vec![json_of(&says)], vec![])
            .await;
        let answer = answer.unwrap_or_else(|e| panic!("{kind:?}: {e:?}"));
        assert!(ok(&answer, &says), "{kind:?}: {answer:?}");
        world.stop().await;
    }
}

#[tokio::test]
async fn typing_receipts_presence_to_device_and_device_lists_reach_local_clients() {
    for kind in test_backends() {
        let world = World::build(kind).await;
        let read = world.alice_says("t1", "read me").await;
        let since = world.sync(None).await["next_batch"]
            .as_str()
            .unwrap()
            .to_owned();
        let device = world.alice.device_id.clone();
        // A device announced again because bob joined a room (a Myelin sender's mark) is noted,
        // not news to alice: she heard of the join itself.
        let on_join = json!({"edu_type": "m.device_list_update", "content": {"user_id": BOB, "device_id": "BOBDEV", "stream_id": 6, "prev_id": [], "org.myelin.on_join": true}});
        let answer = world
            .peer
            .send("edus-on-join", vec![], vec![on_join])
            .await
            .unwrap();
        assert!(answer.is_empty(), "{kind:?}: {answer:?}");
        assert_eq!(
            world.server.store().remote_device_list(BOB).await.unwrap(),
            Some((6, true))
        );
        let sync = world.sync(Some(&since)).await;
        assert!(
            sync["device_lists"]["changed"]
                .as_array()
                .is_none_or(|c| !c.contains(&json!(BOB))),
            "{kind:?}: {sync}"
        );
        let edus = vec![
            json!({"edu_type": "m.typing", "content": {"room_id": world.room_id, "user_id": BOB, "typing": true}}),
            // Not the peer's user to speak for: ignored.
            json!({"edu_type": "m.typing", "content": {"room_id": world.room_id, "user_id": world.alice.user_id, "typing": true}}),
            json!({"edu_type": "m.receipt", "content": {world.room_id.clone(): {"m.read": {BOB: {"event_ids": [read], "data": {"ts": 1234}}}}}}),
            json!({"edu_type": "m.presence", "content": {"push": [{"user_id": BOB, "presence": "online", "last_active_ago": 5, "currently_active": true}]}}),
            json!({"edu_type": "m.direct_to_device", "content": {"sender": BOB, "type": "m.test", "message_id": "msg-1", "messages": {world.alice.user_id.clone(): {device.clone(): {"hello": "alice"}}}}}),
            json!({"edu_type": "m.device_list_update", "content": {"user_id": BOB, "device_id": "BOBDEV", "stream_id": 7, "prev_id": []}}),
        ];
        let answer = world.peer.send("edus", vec![], edus).await.unwrap();
        assert!(answer.is_empty(), "{kind:?}: {answer:?}");
        let sync = world.sync(Some(&since)).await;
        let room = &sync["rooms"]["join"][&world.room_id];
        let ephemeral = room["ephemeral"]["events"].as_array().unwrap();
        let typing = ephemeral.iter().find(|e| e["type"] == "m.typing").unwrap();
        assert_eq!(
            typing["content"]["user_ids"],
            json!([BOB]),
            "{kind:?}: {sync}"
        );
        let receipt = ephemeral.iter().find(|e| e["type"] == "m.receipt").unwrap();
        assert_eq!(
            receipt["content"][&read]["m.read"][BOB]["ts"],
            json!(1234),
            "{kind:?}: {sync}"
        );
        let presence = sync["presence"]["events"].as_array().unwrap();
        assert!(
            presence
                .iter()
                .any(|e| e["sender"] == BOB && e["content"]["presence"] == "online"),
            "{kind:?}: {sync}"
        );
        let to_device = sync["to_device"]["events"].as_array().unwrap();
        assert_eq!(to_device.len(), 1, "{kind:?}: {sync}");
        assert_eq!(to_device[0]["sender"], BOB);
        assert_eq!(to_device[0]["type"], "m.test");
        assert_eq!(to_device[0]["content"], json!({"hello": "alice"}));
        assert!(
            sync["device_lists"]["changed"]
                .as_array()
                .unwrap()
                .contains(&json!(BOB)),
            "{kind:?}: {sync}"
        );
        assert_eq!(
            world.server.store().remote_device_list(BOB).await.unwrap(),
            Some((7, true))
        );

        // The same to-device message in another transaction is not delivered twice.
        let since = sync["next_batch"].as_str().unwrap().to_owned();
        let again = json!({"edu_type": "m.direct_to_device", "content": {"sender": BOB, "type": "m.test", "message_id": "msg-1", "messages": {world.alice.user_id.clone(): {device: {"hello": "alice"}}}}});
        world
            .peer
            .send("edus-again", vec![], vec![again])
            .await
            .unwrap();
        let sync = world.sync(Some(&since)).await;
        assert!(
            sync["to_device"]["events"]
                .as_array()
                .is_none_or(Vec::is_empty),
            "{kind:?}: {sync}"
        );
        world.stop().await;
    }
}

/// An account-key event of a peer user, signed by `key` (the sender's account key), on top of
/// the room's head.
#[allow(clippy::too_many_arguments)]
async fn account_key_event(
    server: &TestServer,
    room_id: &str,
    key: &KeyPair,
    domain: &str,
    kind: &str,
    state_key: Option<&str>,
    content: Value,
    auth: &[String],
) -> Pdu {
    let store = server.store();
    let room = store.room(room_id).await.unwrap().unwrap();
    let head = store
        .send_context(room.room_nid, &[], None)
        .await
        .unwrap()
        .head;
    let sender = key.account_key().user_id(domain);
    let s = |v: &str| CanonicalJsonValue::String(v.to_owned());
    let mut partial = CanonicalJsonObject::new();
    partial.insert("type".to_owned(), s(kind));
    partial.insert("room_id".to_owned(), s(room_id));
    partial.insert("sender".to_owned(), s(&sender));
    if let Some(state_key) = state_key {
        partial.insert("state_key".to_owned(), s(state_key));
    }
    partial.insert(
        "content".to_owned(),
        CanonicalJsonValue::try_from(content).unwrap(),
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
        CanonicalJsonValue::Integer(myelin_service::now_millis().try_into().unwrap()),
    );
    let version = RoomVersion::get("org.matrix.12.4243").unwrap();
    build_pdu(partial, version, EventSigner::Account(key)).unwrap()
}

/// A server `hs.test` that reaches the peer, with alice's public account-key room made with
/// `creation_content`: the server, the peer, the room id, and the ids of the room's join rules
/// and power levels (a join's auth events there).
async fn account_key_room_with_peer(
    kind: myelin_store::DatabaseKind,
    ca: &TestCa,
    creation_content: Value,
) -> (TestServer, Peer, String, [String; 2]) {
    let (peer_state, peer_addr) = Peer::start(ca).await;
    let mut servers = start_federation(kind, ca, &[HS], |_, config| {
        config
            .federation
            .destination_overrides
            .insert(PEER.to_owned(), peer_addr.to_string());
    })
    .await;
    let server = servers.remove(0);
    let peer = Peer::aim(ca, peer_state, &server);
    let alice = server.register("alice").await;
    let room_id = server
        .create_room(
            &alice,
            json!({"preset": "public_chat", "room_version": "org.matrix.12.4243",
                   "creation_content": creation_content}),
        )
        .await;
    let store = server.store();
    let room = store.room(&room_id).await.unwrap().unwrap();
    let mut auth = Vec::new();
    for kind in ["m.room.join_rules", "m.room.power_levels"] {
        auth.push(
            store
                .current_state(room.room_nid, Some(&[(kind.to_owned(), String::new())]))
                .await
                .unwrap()
                .pop()
                .unwrap()
                .event_id,
        );
    }
    let auth = [auth[0].clone(), auth[1].clone()];
    (server, peer, room_id, auth)
}

/// In account-key rooms a shared domain proves nothing (MSC4243.md Q9): one unverified member of
/// the peer redacting another unverified member's message of the same claimed domain, without
/// the redact power level, does not redact it.
#[tokio::test]
async fn a_redaction_by_an_unverified_member_of_the_same_domain_needs_the_power_level() {
    for kind in test_backends() {
        let ca = TestCa::new();
        let (server, peer, room_id, [rules, power]) =
            account_key_room_with_peer(kind, &ca, json!({})).await;
        let store = server.store();
        let (x, y) = (KeyPair::from_seed(&[81; 32]), KeyPair::from_seed(&[82; 32]));
        let mut joins = Vec::new();
        for member in [&x, &y] {
            let id = member.account_key().user_id(PEER);
            let join = account_key_event(
                &server,
                &room_id,
                member,
                PEER,
                "m.room.member",
                Some(&id),
                json!({"membership": "join"}),
                &[rules.clone(), power.clone()],
            )
            .await;
            let answer = peer
                .send(&format!("join-{id}"), vec![json_of(&join)], Vec::new())
                .await
                .unwrap();
            assert!(ok(&answer, &join), "{kind:?}: {answer:?}");
            joins.push(join.event_id().to_owned());
        }
        let message = account_key_event(
            &server,
            &room_id,
            &x,
            PEER,
            "m.room.message",
            None,
            json!({"msgtype": "m.text", "body": "mine"}),
            &[power.clone(), joins[0].clone()],
        )
        .await;
        let answer = peer
            .send("message", vec![json_of(&message)], Vec::new())
            .await
            .unwrap();
        assert!(ok(&answer, &message), "{kind:?}: {answer:?}");
        let redaction = account_key_event(
            &server,
            &room_id,
            &y,
            PEER,
            "m.room.redaction",
            None,
            json!({"redacts": message.event_id()}),
            &[power.clone(), joins[1].clone()],
        )
        .await;
        let answer = peer
            .send("redaction", vec![json_of(&redaction)], Vec::new())
            .await
            .unwrap();
        assert!(ok(&answer, &redaction), "{kind:?}: {answer:?}");
        let target = store.event(message.event_id()).await.unwrap().unwrap();
        assert!(
            target.redacted_by.is_none(),
            "{kind:?}: redacted by an unverified member"
        );
        server.stop().await;
    }
}

/// A non-federating account-key room (`m.federate: false`) takes no PDU from a server other
/// than the creator's, whatever domain its users claim (MSC4243.md Q9): the peer sends a join
/// of a member claiming this server's own domain, signed by that member's account key (which
/// auth rule 4 alone, reading the unverified domain, would let in); it is refused and the room's
/// state does not change.
#[tokio::test]
async fn a_non_federating_account_key_room_takes_no_pdu_from_other_origins() {
    for kind in test_backends() {
        let ca = TestCa::new();
        let (server, peer, room_id, auth) =
            account_key_room_with_peer(kind, &ca, json!({"m.federate": false})).await;
        let store = server.store();
        let room = store.room(&room_id).await.unwrap().unwrap();
        let intruder = KeyPair::from_seed(&[77; 32]);
        let member = intruder.account_key().user_id(HS);
        let join = account_key_event(
            &server,
            &room_id,
            &intruder,
            HS,
            "m.room.member",
            Some(&member),
            json!({"membership": "join"}),
            &auth,
        )
        .await;
        let answer = peer
            .send("intrude", vec![json_of(&join)], Vec::new())
            .await
            .unwrap();
        let error = answer
            .get(join.event_id())
            .cloned()
            .flatten()
            .unwrap_or_default();
        assert!(error.contains("denied"), "{kind:?}: {answer:?}");
        assert!(
            store.event(join.event_id()).await.unwrap().is_none(),
            "{kind:?}"
        );
        let members = store
            .current_state(
                room.room_nid,
                Some(&[("m.room.member".to_owned(), member.clone())]),
            )
            .await
            .unwrap();
        assert!(members.is_empty(), "{kind:?}: {members:?}");
        server.stop().await;
    }
}

/// `localpart`, registered on `server` and joined to `room_id`.
async fn joined_local_user(server: &TestServer, room_id: &str, localpart: &str) -> TestUser {
    let user = server.register(localpart).await;
    let (status, body) = server
        .post(
            &format!("/_matrix/client/v3/join/{}", enc(room_id)),
            &user.access_token,
            json!({}),
        )
        .await;
    assert_eq!(status, 200, "{body}");
    user
}

/// An account-key event of the peer's member `key` (as [`account_key_event`]), sent by the
/// peer in its own transaction `txn` and accepted.
#[allow(clippy::too_many_arguments)]
async fn peer_account_key_event(
    server: &TestServer,
    peer: &Peer,
    txn: &str,
    room_id: &str,
    key: &KeyPair,
    kind: &str,
    state_key: Option<&str>,
    content: Value,
    auth: &[String],
) -> Pdu {
    let pdu = account_key_event(server, room_id, key, PEER, kind, state_key, content, auth).await;
    let answer = peer
        .send(txn, vec![json_of(&pdu)], Vec::new())
        .await
        .unwrap();
    assert!(ok(&answer, &pdu), "{answer:?}");
    pdu
}

/// Records that the peer vouched for its key-form user `id` as `account_name` (what a
/// `/query/accounts` answer verifying it records); returns the account-name id clients see.
async fn vouched_for(server: &TestServer, id: &str, account_name: &str) -> String {
    use myelin_room_version::account_key::KeyFormUserId;
    use myelin_store::RemoteKeyVerdict;
    let state = server
        .services()
        .account_keys
        .record_remote(
            &KeyFormUserId::parse(id).unwrap(),
            &RemoteKeyVerdict::Verified { account_name },
        )
        .await
        .unwrap();
    assert_ne!(state, myelin_room_version::KeyVerification::Unverified);
    format!("@{account_name}:{PEER}")
}

/// A member verified late (MSC4243.md §2.6 item 39, §6 cases 30 and 31): a remote key-form
/// member joins and speaks while its domain has not vouched for it, so clients see neither;
/// once verified, a client syncing with `use_state_after` receives its member event (under its
/// account name) in `state_after`, a client without it receives nothing for it, neither gets
/// the old message in the timeline, and `/messages` returns it.
#[tokio::test]
async fn a_late_verified_member_reaches_state_after_only_and_its_history_messages() {
    use myelin_room_version::account_key::KeyFormUserId;
    use myelin_store::RemoteKeyVerdict;
    for kind in test_backends() {
        let ca = TestCa::new();
        let (server, peer, room_id, [rules, power]) =
            account_key_room_with_peer(kind, &ca, json!({})).await;
        let carol = joined_local_user(&server, &room_id, "carol").await;

        let x = KeyPair::from_seed(&[91; 32]);
        let x_id = x.account_key().user_id(PEER);
        let x_user = KeyFormUserId::parse(&x_id).unwrap();
        let keys = &server.services().account_keys;
        // Asked once, not vouched for (whatever the background asking records too).
        keys.record_remote(
            &x_user,
            &RemoteKeyVerdict::Unverified {
                outcome: "missing",
                next_attempt_ts: i64::MAX,
            },
        )
        .await
        .unwrap();
        let join = peer_account_key_event(
            &server,
            &peer,
            "late-join",
            &room_id,
            &x,
            "m.room.member",
            Some(&x_id),
            json!({"membership": "join"}),
            &[rules.clone(), power.clone()],
        )
        .await;
        let message = peer_account_key_event(
            &server,
            &peer,
            "late-message",
            &room_id,
            &x,
            "m.room.message",
            None,
            json!({"msgtype": "m.text", "body": "said while unverified"}),
            &[power.clone(), join.event_id().to_owned()],
        )
        .await;

        // Carol's client is up to date: it has seen nothing of x.
        let (status, body) = server
            .get("/_matrix/client/v3/sync?timeout=0", &carol.access_token)
            .await;
        assert_eq!(status, 200, "{body}");
        assert!(
            !body.to_string().contains("said while unverified"),
            "{kind:?}: {body}"
        );
        // Nor does it count x among the members (alice, carol).
        assert_eq!(
            body["rooms"]["join"][&room_id]["summary"]["m.joined_member_count"], 2,
            "{kind:?}: {body}"
        );
        let since = body["next_batch"].as_str().unwrap().to_owned();

        // x's domain vouches for it on a later ask.
        let name = vouched_for(&server, &x_id, "xavier").await;

        let (status, after) = server
            .get(
                &format!("/_matrix/client/v3/sync?timeout=0&use_state_after=true&since={since}"),
                &carol.access_token,
            )
            .await;
        assert_eq!(status, 200, "{after}");
        let room = &after["rooms"]["join"][&room_id];
        let state_after = room["state_after"]["events"]
            .as_array()
            .cloned()
            .unwrap_or_default();
        let member = state_after
            .iter()
            .find(|e| e["type"] == "m.room.member" && e["state_key"] == name.as_str())
            .unwrap_or_else(|| panic!("{kind:?}: no member event for {name}: {after}"));
        assert_eq!(member["event_id"], join.event_id(), "{member}");
        assert_eq!(member["content"]["membership"], "join");
        assert_eq!(
            room["summary"]["m.joined_member_count"], 3,
            "{kind:?}: x counts now: {after}"
        );
        assert!(
            !after.to_string().contains("said while unverified"),
            "{kind:?}: the old message is not in sync: {after}"
        );

        let (status, plain) = server
            .get(
                &format!("/_matrix/client/v3/sync?timeout=0&since={since}"),
                &carol.access_token,
            )
            .await;
        assert_eq!(status, 200, "{plain}");
        assert!(
            !plain.to_string().contains(join.event_id()),
            "{kind:?}: nothing of x without use_state_after: {plain}"
        );

        let (status, history) = server
            .get(
                &format!(
                    "/_matrix/client/v3/rooms/{}/messages?dir=b&limit=50",
                    enc(&room_id)
                ),
                &carol.access_token,
            )
            .await;
        assert_eq!(status, 200, "{history}");
        let old = history["chunk"]
            .as_array()
            .unwrap()
            .iter()
            .find(|e| e["event_id"] == message.event_id())
            .unwrap_or_else(|| panic!("{kind:?}: the old message is readable: {history}"));
        assert_eq!(old["sender"], name.as_str(), "{old}");
        server.stop().await;
    }
}

/// Push in account-key rooms (MSC4243.md §2.6 items 36–37, Q5): a message from a member its
/// domain has not vouched for notifies nobody (it is hidden from every client), and once the
/// member is verified its messages notify, with the rules reading the event as the reader's
/// client would.
#[tokio::test]
async fn an_unverified_sender_notifies_nobody() {
    for kind in test_backends() {
        let ca = TestCa::new();
        let (server, peer, room_id, [rules, power]) =
            account_key_room_with_peer(kind, &ca, json!({})).await;
        let carol = joined_local_user(&server, &room_id, "carol").await;
        let x = KeyPair::from_seed(&[93; 32]);
        let x_id = x.account_key().user_id(PEER);
        let join = peer_account_key_event(
            &server,
            &peer,
            "push-join",
            &room_id,
            &x,
            "m.room.member",
            Some(&x_id),
            json!({"membership": "join"}),
            &[rules.clone(), power.clone()],
        )
        .await;
        let say = |txn: &'static str, body: &'static str| {
            let auth = [power.clone(), join.event_id().to_owned()];
            let (server, peer, room_id, x) = (&server, &peer, &room_id, &x);
            async move {
                let content = json!({"msgtype": "m.text", "body": body});
                peer_account_key_event(
                    server,
                    peer,
                    txn,
                    room_id,
                    x,
                    "m.room.message",
                    None,
                    content,
                    &auth,
                )
                .await
                .event_id()
                .to_owned()
            }
        };
        let hidden = say("push-1", "hello carol, from nowhere").await;
        vouched_for(&server, &x_id, "xavier").await;
        let shown = say("push-2", "hello again").await;
        let (status, body) = server
            .get("/_matrix/client/v3/notifications", &carol.access_token)
            .await;
        assert_eq!(status, 200, "{body}");
        let ids: Vec<&str> = body["notifications"]
            .as_array()
            .unwrap()
            .iter()
            .filter_map(|n| n["event"]["event_id"].as_str())
            .collect();
        assert!(!ids.contains(&hidden.as_str()), "{kind:?}: {ids:?}");
        assert!(ids.contains(&shown.as_str()), "{kind:?}: {ids:?}");
        server.stop().await;
    }
}

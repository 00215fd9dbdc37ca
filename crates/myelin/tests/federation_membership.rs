//! The resident's side of the membership handshakes over HTTP (`make_join`/`send_join`,
//! `make_leave`/`send_leave`, `make_knock`/`send_knock`), on both databases. Two simulated
//! peers (`peer.test`, whose users join, and `third.test`, already in the room), each with its
//! own signing key and key document and a `/send` that records what it is sent, talk to a Myelin
//! server (`hs.test`) whose user alice owns the rooms.

use std::{
    collections::{BTreeMap, HashSet},
    net::SocketAddr,
    sync::{Arc, Mutex},
    time::{Duration, Instant},
};

use axum::{
    Json, Router,
    extract::State,
    routing::{get, put},
};
use base64::Engine;
use myelin_federation::{FederationClient, FederationClientConfig, FederationError};
use myelin_room_version::{
    CanonicalJsonValue, KeyPair, Pdu, PublicKey, RoomVersion,
    pdu::{EventSigner, build_pdu},
    receipt,
    signing::sign_json,
    verify::{ServerKey, ServerKeys},
};
use myelin_store::DatabaseKind;
use myelin_testkit::{
    TestServer, TestUser, enc,
    federation::{TestCa, start_federation},
    test_backends,
};
use ruma::{
    OwnedEventId, OwnedRoomId, OwnedUserId, RoomVersionId,
    api::federation::membership::{
        create_join_event, create_knock_event, create_leave_event, prepare_join_event,
        prepare_knock_event, prepare_leave_event,
    },
};
use serde_json::{Value, json, value::RawValue};

const HS: &str = "hs.test";
const PEER: &str = "peer.test";
const THIRD: &str = "third.test";
const KEY_ID: &str = "ed25519:p1";
const BOB: &str = "@bob:peer.test";
const DAVE: &str = "@dave:peer.test";
const CAROL: &str = "@carol:third.test";
/// How long a test waits for something that should happen.
const PATIENCE: Duration = Duration::from_secs(30);

/// What a simulated peer serves: its key document, and a `/send` that takes every
/// transaction and keeps its PDUs.
struct PeerShared {
    name: &'static str,
    key: KeyPair,
    pdus: Mutex<Vec<Value>>,
}

/// A simulated peer: its listener and a client that signs requests as it, aimed at `hs.test`.
struct Peer {
    shared: Arc<PeerShared>,
    client: FederationClient,
    task: tokio::task::JoinHandle<()>,
}

impl Drop for Peer {
    fn drop(&mut self) {
        self.task.abort();
    }
}

fn key_of(seed: u8) -> KeyPair {
    KeyPair::from_seed(&[seed; 32])
}

async fn key_document(State(peer): State<Arc<PeerShared>>) -> Json<Value> {
    let public = base64::engine::general_purpose::STANDARD_NO_PAD.encode(peer.key.public_key());
    let unsigned = json!({
        "server_name": peer.name,
        "verify_keys": { KEY_ID: { "key": public } },
        "old_verify_keys": {},
        "valid_until_ts": myelin_service::now_millis() + 24 * 60 * 60 * 1000,
    });
    let CanonicalJsonValue::Object(mut object) = CanonicalJsonValue::try_from(unsigned).unwrap()
    else {
        unreachable!()
    };
    sign_json(&mut object, peer.name, KEY_ID, &peer.key).unwrap();
    Json(serde_json::to_value(&object).unwrap())
}

async fn take_transaction(
    State(peer): State<Arc<PeerShared>>,
    Json(body): Json<Value>,
) -> Json<Value> {
    peer.pdus
        .lock()
        .unwrap()
        .extend(body["pdus"].as_array().cloned().unwrap_or_default());
    Json(json!({ "pdus": {} }))
}

/// Starts a peer's listener (a certificate of `ca` for `name`).
async fn listen(
    ca: &TestCa,
    name: &'static str,
    seed: u8,
) -> (Arc<PeerShared>, SocketAddr, tokio::task::JoinHandle<()>) {
    let shared = Arc::new(PeerShared {
        name,
        key: key_of(seed),
        pdus: Mutex::default(),
    });
    let (cert, private) = ca.issue(name);
    let tls = myelin::tls::server_config(&cert, &private).unwrap();
    let tcp = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = tcp.local_addr().unwrap();
    let listener = myelin::tls::TlsListener::new(tcp, tls).unwrap();
    let app = Router::new()
        .route("/_matrix/key/v2/server", get(key_document))
        .route(
            "/_matrix/federation/v1/send/{txn_id}",
            put(take_transaction),
        )
        .with_state(shared.clone());
    let task = tokio::spawn(async move {
        let _ = axum::serve(listener, app.into_make_service()).await;
    });
    (shared, addr, task)
}

impl Peer {
    fn aim(
        ca: &TestCa,
        listened: (Arc<PeerShared>, SocketAddr, tokio::task::JoinHandle<()>),
        hs: &TestServer,
    ) -> Peer {
        let (shared, _, task) = listened;
        let mut overrides = BTreeMap::new();
        overrides.insert(HS.to_owned(), hs.addrs().1.to_string());
        let client = FederationClient::new(
            FederationClientConfig {
                server_name: shared.name.try_into().unwrap(),
                key_id: KEY_ID.to_owned(),
                trusted_ca_files: vec![ca.cert_path()],
                verify_certificates: true,
                destination_overrides: overrides,
                allow_private_addresses: true,
                timeout: Duration::from_secs(60),
                max_response_size: 4 * 1024 * 1024,
            },
            shared.key.clone(),
        )
        .unwrap();
        Peer {
            shared,
            client,
            task,
        }
    }

    fn keys(&self) -> (String, BTreeMap<String, ServerKey>) {
        let mut keys = BTreeMap::new();
        keys.insert(
            KEY_ID.to_owned(),
            ServerKey {
                key: PublicKey::from_bytes(&self.shared.key.public_key()).unwrap(),
                valid_until_ts: u64::MAX,
            },
        );
        (self.shared.name.to_owned(), keys)
    }

    /// The PDUs `hs.test` sent this peer so far.
    fn received(&self) -> Vec<Value> {
        self.shared.pdus.lock().unwrap().clone()
    }

    /// Signs a template (or any partial event) of a version 10 room as this peer, with `key`
    /// if given.
    fn sign(&self, template: &Value, key: Option<&KeyPair>) -> Pdu {
        self.sign_in("10", template, key)
    }

    /// [`Peer::sign`] for a room of `version`.
    fn sign_in(&self, version: &str, template: &Value, key: Option<&KeyPair>) -> Pdu {
        let CanonicalJsonValue::Object(partial) =
            CanonicalJsonValue::try_from(template.clone()).unwrap()
        else {
            panic!("a template is an object")
        };
        build_pdu(
            partial,
            RoomVersion::get(version).unwrap(),
            EventSigner::Server {
                server_name: self.shared.name,
                key_id: KEY_ID,
                key: key.unwrap_or(&self.shared.key),
            },
        )
        .unwrap()
    }

    async fn make_join(
        &self,
        room_id: &str,
        user: &str,
        ver: &[&str],
    ) -> Result<prepare_join_event::v1::Response, FederationError> {
        let mut request = prepare_join_event::v1::Request::new(room(room_id), user_id(user));
        request.ver = ver
            .iter()
            .map(|v| RoomVersionId::try_from(*v).unwrap())
            .collect();
        self.client.send(hs(), request).await
    }

    async fn send_join(
        &self,
        room_id: &str,
        pdu: &Pdu,
    ) -> Result<create_join_event::v2::Response, FederationError> {
        let request = create_join_event::v2::Request::new(room(room_id), event_id(pdu), raw(pdu));
        self.client.send(hs(), request).await
    }

    async fn make_leave(
        &self,
        room_id: &str,
        user: &str,
    ) -> Result<prepare_leave_event::v1::Response, FederationError> {
        let request = prepare_leave_event::v1::Request::new(room(room_id), user_id(user));
        self.client.send(hs(), request).await
    }

    async fn send_leave(
        &self,
        room_id: &str,
        pdu: &Pdu,
    ) -> Result<create_leave_event::v2::Response, FederationError> {
        let request = create_leave_event::v2::Request::new(room(room_id), event_id(pdu), raw(pdu));
        self.client.send(hs(), request).await
    }

    async fn make_knock(
        &self,
        room_id: &str,
        user: &str,
        ver: &[&str],
    ) -> Result<prepare_knock_event::v1::Response, FederationError> {
        let mut request = prepare_knock_event::v1::Request::new(room(room_id), user_id(user));
        request.ver = ver
            .iter()
            .map(|v| RoomVersionId::try_from(*v).unwrap())
            .collect();
        self.client.send(hs(), request).await
    }

    async fn send_knock(
        &self,
        room_id: &str,
        pdu: &Pdu,
    ) -> Result<create_knock_event::v1::Response, FederationError> {
        let request = create_knock_event::v1::Request::new(room(room_id), event_id(pdu), raw(pdu));
        self.client.send(hs(), request).await
    }

    /// `user` of this peer joins `room_id` through `make_join` and `send_join`.
    async fn join(&self, room_id: &str, user: &str) -> (Pdu, create_join_event::v2::RoomState) {
        let template = self.make_join(room_id, user, &["10"]).await.unwrap();
        let join = self.sign(&json_value(&template.event), None);
        let answer = self.send_join(room_id, &join).await.unwrap();
        (join, answer.room_state)
    }
}

fn hs() -> &'static ruma::ServerName {
    ruma::server_name!("hs.test")
}

fn room(room_id: &str) -> OwnedRoomId {
    room_id.try_into().unwrap()
}

fn user_id(user: &str) -> OwnedUserId {
    user.try_into().unwrap()
}

fn event_id(pdu: &Pdu) -> OwnedEventId {
    pdu.event_id().try_into().unwrap()
}

fn raw(pdu: &Pdu) -> Box<RawValue> {
    RawValue::from_string(pdu.canonical_json()).unwrap()
}

fn json_value(raw: &RawValue) -> Value {
    serde_json::from_str(raw.get()).unwrap()
}

/// The status and errcode of a refused request.
fn refusal<T: std::fmt::Debug>(result: Result<T, FederationError>) -> (u16, Value) {
    match result {
        Err(FederationError::Status { status, body }) => {
            (status, serde_json::from_str(&body).unwrap_or(Value::Null))
        }
        other => panic!("expected a refusal, got {other:?}"),
    }
}

/// `hs.test` (alice) with the two peers.
struct World {
    server: TestServer,
    joiner: Peer,
    third: Peer,
    alice: TestUser,
    _ca: TestCa,
}

impl World {
    async fn build(kind: DatabaseKind) -> World {
        let ca = TestCa::new();
        let joiner = listen(&ca, PEER, 21).await;
        let third = listen(&ca, THIRD, 22).await;
        let (joiner_addr, third_addr) = (joiner.1, third.1);
        let mut servers = start_federation(kind, &ca, &[HS], |_, config| {
            let overrides = &mut config.federation.destination_overrides;
            overrides.insert(PEER.to_owned(), joiner_addr.to_string());
            overrides.insert(THIRD.to_owned(), third_addr.to_string());
        })
        .await;
        let server = servers.remove(0);
        let joiner = Peer::aim(&ca, joiner, &server);
        let third = Peer::aim(&ca, third, &server);
        let alice = server.register("alice").await;
        World {
            server,
            joiner,
            third,
            alice,
            _ca: ca,
        }
    }

    /// A version 10 room of alice's, created with `body`'s options.
    async fn room(&self, mut body: Value) -> String {
        body["room_version"] = json!("10");
        self.server.create_room(&self.alice, body).await
    }

    async fn membership(&self, room_id: &str, user: &str) -> Option<String> {
        let store = self.server.store();
        let room = store.room(room_id).await.unwrap().unwrap();
        store
            .membership(room.room_nid, user)
            .await
            .unwrap()
            .map(|m| m.0)
    }

    /// The ids of the room's current state.
    async fn state_ids(&self, room_id: &str) -> HashSet<String> {
        let store = self.server.store();
        let room = store.room(room_id).await.unwrap().unwrap();
        store
            .current_state(room.room_nid, None)
            .await
            .unwrap()
            .into_iter()
            .map(|row| row.event_id)
            .collect()
    }

    /// The keys of `hs.test` and both peers.
    fn all_keys(&self) -> ServerKeys {
        let mut keys = ServerKeys::new();
        for peer in [&self.joiner, &self.third] {
            let (name, peer_keys) = peer.keys();
            keys.insert(name, peer_keys);
        }
        let own = keys.entry(HS.to_owned()).or_default();
        for (key_id, public, _) in self.server.services().server_keys.published_keys() {
            own.insert(
                key_id,
                ServerKey {
                    key: PublicKey::from_bytes(&public).unwrap(),
                    valid_until_ts: u64::MAX,
                },
            );
        }
        keys
    }

    /// A `PUT` of the federation API signed by the joining peer, as JSON (ruma's answer type
    /// for `send_join` drops `origin`).
    async fn joiner_put(&self, path: &str, body: &Value) -> (u16, Value) {
        let bytes = serde_json::to_vec(body).unwrap();
        let object =
            myelin_federation::xmatrix::request_object("PUT", path, PEER, HS, &bytes).unwrap();
        let header = myelin_federation::xmatrix::authorization_header(
            &object,
            PEER,
            HS,
            KEY_ID,
            &self.joiner.shared.key,
        )
        .unwrap();
        let response = self
            ._ca
            .client(&[(HS, self.server.addrs().1)])
            .put(self.server.federation_url(path))
            .header("authorization", header)
            .header("content-type", "application/json")
            .body(bytes)
            .send()
            .await
            .unwrap();
        let status = response.status().as_u16();
        (status, response.json().await.unwrap_or(Value::Null))
    }

    async fn alice_state(&self, room_id: &str, kind: &str, content: Value) {
        let (status, body) = self
            .server
            .put(
                &format!("/_matrix/client/v3/rooms/{}/state/{kind}/", enc(room_id)),
                &self.alice.access_token,
                content,
            )
            .await;
        assert_eq!(status, 200, "{body}");
    }
}

fn pdu_ids(pdus: &[Box<RawValue>]) -> HashSet<String> {
    pdus.iter()
        .map(|pdu| {
            receipt::check_format(RoomVersion::get("10").unwrap(), pdu.get().as_bytes())
                .unwrap()
                .event_id()
                .to_owned()
        })
        .collect()
}

async fn eventually(what: &str, mut done: impl FnMut() -> bool) {
    let deadline = Instant::now() + PATIENCE;
    while !done() {
        assert!(Instant::now() < deadline, "timed out waiting for {what}");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

#[tokio::test]
async fn a_remote_user_joins_a_public_room_through_the_resident_and_the_room_hears_of_it() {
    for kind in test_backends() {
        let world = World::build(kind).await;
        let room_id = world.room(json!({"preset": "public_chat"})).await;
        // Carol of the third server joins first: she is in the room when bob joins.
        let (carol_join, _) = world.third.join(&room_id, CAROL).await;
        assert_eq!(
            world.membership(&room_id, CAROL).await.as_deref(),
            Some("join")
        );

        let (_, sync) = world
            .server
            .get(
                "/_matrix/client/v3/sync?timeout=0",
                &world.alice.access_token,
            )
            .await;
        let since = sync["next_batch"].as_str().unwrap().to_owned();
        let store = world.server.store();
        let room = store.room(&room_id).await.unwrap().unwrap();
        let head = store
            .send_context(room.room_nid, &[], None)
            .await
            .unwrap()
            .head;
        let state_before = world.state_ids(&room_id).await;

        // The template: on the room's head, citing the join's auth events, unsigned.
        let template = world
            .joiner
            .make_join(&room_id, BOB, &["9", "10"])
            .await
            .unwrap();
        assert_eq!(template.room_version, Some(RoomVersionId::V10));
        let event = json_value(&template.event);
        assert_eq!(event["type"], "m.room.member");
        assert_eq!(event["sender"], BOB);
        assert_eq!(event["state_key"], BOB);
        assert_eq!(event["content"], json!({"membership": "join"}));
        assert_eq!(event["room_id"], room_id);
        assert_eq!(event["prev_events"], json!(head.prev_event_ids));
        assert_eq!(event["depth"], json!(head.max_depth + 1));
        assert!(event.get("hashes").is_none() && event.get("signatures").is_none());
        assert_eq!(event["auth_events"].as_array().unwrap().len(), 3, "{event}");

        let join = world.joiner.sign(&event, None);
        let answer = world
            .joiner
            .send_join(&room_id, &join)
            .await
            .unwrap()
            .room_state;
        // The state before the join, whole, and an auth chain that holds every auth event of
        // it and of the join, all validly signed.
        assert_eq!(pdu_ids(&answer.state), state_before, "{kind:?}");
        assert!(!answer.members_omitted);
        assert!(
            answer.event.is_none(),
            "nothing to co-sign in a public room"
        );
        let chain = pdu_ids(&answer.auth_chain);
        let keys = world.all_keys();
        let version = RoomVersion::get("10").unwrap();
        for raw_pdu in answer.state.iter().chain(&answer.auth_chain) {
            let pdu = receipt::check_format(version, raw_pdu.get().as_bytes()).unwrap();
            receipt::check_signatures(version, &pdu, &keys)
                .unwrap_or_else(|e| panic!("{}: {e}", pdu.event_id()));
            for cited in pdu.auth_events() {
                assert!(
                    chain.contains(cited),
                    "{cited} cited by {} is in the auth chain",
                    pdu.event_id()
                );
            }
        }
        for cited in join.auth_events() {
            assert!(
                chain.contains(cited),
                "the join's auth event {cited} is in the auth chain"
            );
        }
        assert_eq!(
            world.membership(&room_id, BOB).await.as_deref(),
            Some("join")
        );

        // Alice's client sees bob arrive.
        let (status, sync) = world
            .server
            .get(
                &format!("/_matrix/client/v3/sync?timeout=0&since={since}"),
                &world.alice.access_token,
            )
            .await;
        assert_eq!(status, 200);
        let timeline = &sync["rooms"]["join"][&room_id]["timeline"]["events"];
        assert!(
            timeline
                .as_array()
                .unwrap()
                .iter()
                .any(|e| e["event_id"] == join.event_id()),
            "{sync}"
        );

        // A retransmission gets the same answer, and changes nothing.
        let again = world
            .joiner
            .send_join(&room_id, &join)
            .await
            .unwrap()
            .room_state;
        assert_eq!(pdu_ids(&again.state), state_before);
        assert_eq!(pdu_ids(&again.auth_chain), chain);
        let (status, whole) = world
            .joiner_put(
                &format!(
                    "/_matrix/federation/v2/send_join/{}/{}",
                    enc(&room_id),
                    enc(join.event_id())
                ),
                &serde_json::from_str(&join.canonical_json()).unwrap(),
            )
            .await;
        assert_eq!(status, 200, "{whole}");
        assert_eq!(whole["origin"], HS);
        assert_eq!(whole["members_omitted"], false);
        assert_eq!(whole["state"].as_array().unwrap().len(), state_before.len());

        // The third server hears of bob's join from the resident; its own join is not sent
        // back to it.
        eventually("bob's join at the third server", || {
            world
                .third
                .received()
                .iter()
                .any(|pdu| pdu["state_key"] == BOB)
        })
        .await;
        let relayed: Vec<Value> = world.third.received();
        let bob_join = relayed.iter().find(|pdu| pdu["state_key"] == BOB).unwrap();
        assert_eq!(
            bob_join,
            &serde_json::from_str::<Value>(&join.canonical_json()).unwrap()
        );
        assert!(
            !relayed
                .iter()
                .any(|pdu| pdu["state_key"] == carol_join.state_key().unwrap()),
            "carol's own join is not relayed to her server"
        );
    }
}

/// Version 12 rooms cite no create event in `auth_events` (the room id names it), but the
/// template is still judged with it.
#[tokio::test]
async fn a_remote_user_joins_a_version_12_room_through_the_resident() {
    for kind in test_backends() {
        let world = World::build(kind).await;
        let room_id = world
            .server
            .create_room(
                &world.alice,
                json!({"preset": "public_chat", "room_version": "12"}),
            )
            .await;
        let template = world
            .joiner
            .make_join(&room_id, BOB, &["11", "12"])
            .await
            .unwrap();
        assert_eq!(template.room_version, Some(RoomVersionId::V12), "{kind:?}");
        let event = json_value(&template.event);
        let store = world.server.store();
        let room = store.room(&room_id).await.unwrap().unwrap();
        let create = store
            .current_state(
                room.room_nid,
                Some(&[("m.room.create".to_owned(), String::new())]),
            )
            .await
            .unwrap()
            .pop()
            .unwrap()
            .event_id;
        let auth = event["auth_events"].as_array().unwrap();
        assert_eq!(
            auth.len(),
            2,
            "{kind:?}: join rules and power levels: {event}"
        );
        assert!(!auth.contains(&json!(create)), "{kind:?}: {event}");

        let join = world.joiner.sign_in("12", &event, None);
        world.joiner.send_join(&room_id, &join).await.unwrap();
        assert_eq!(
            world.membership(&room_id, BOB).await.as_deref(),
            Some("join"),
            "{kind:?}"
        );
        world.server.stop().await;
    }
}

#[tokio::test]
async fn handshakes_refuse_what_the_rules_refuse() {
    for kind in test_backends() {
        let world = World::build(kind).await;
        let public = world.room(json!({"preset": "public_chat"})).await;

        // A user of another server than the one asking.
        let (status, body) = refusal(world.joiner.make_join(&public, CAROL, &["10"]).await);
        assert_eq!(
            (status, body["errcode"].as_str()),
            (403, Some("M_FORBIDDEN")),
            "{body}"
        );
        let carol_template = world
            .third
            .make_join(&public, CAROL, &["10"])
            .await
            .unwrap();
        let carol_join = world.third.sign(&json_value(&carol_template.event), None);
        let (status, _) = refusal(world.joiner.send_join(&public, &carol_join).await);
        assert_eq!(status, 403);
        assert_eq!(world.membership(&public, CAROL).await, None);

        // A room version the asking server does not speak (no `ver` means only "1").
        let (status, body) = refusal(world.joiner.make_join(&public, BOB, &["1"]).await);
        assert_eq!(status, 400);
        assert_eq!(body["errcode"], "M_INCOMPATIBLE_ROOM_VERSION", "{body}");
        assert_eq!(body["room_version"], "10");

        // A room this server does not know.
        let (status, _) = refusal(
            world
                .joiner
                .make_join("!nowhere:hs.test", BOB, &["10"])
                .await,
        );
        assert_eq!(status, 404);

        // An invite-only room, and a banned user.
        let private = world.room(json!({"preset": "private_chat"})).await;
        let (status, body) = refusal(world.joiner.make_join(&private, BOB, &["10"]).await);
        assert_eq!(
            (status, body["errcode"].as_str()),
            (403, Some("M_FORBIDDEN")),
            "{body}"
        );
        let (status, body) = world
            .server
            .post(
                &format!("/_matrix/client/v3/rooms/{}/ban", enc(&public)),
                &world.alice.access_token,
                json!({"user_id": DAVE}),
            )
            .await;
        assert_eq!(status, 200, "{body}");
        let (status, _) = refusal(world.joiner.make_join(&public, DAVE, &["10"]).await);
        assert_eq!(status, 403);

        // A forged join (signed by a key that is not the peer's): refused, not in the room.
        let template = world.joiner.make_join(&public, BOB, &["10"]).await.unwrap();
        let event = json_value(&template.event);
        let forged = world.joiner.sign(&event, Some(&key_of(99)));
        let (status, _) = refusal(world.joiner.send_join(&public, &forged).await);
        assert_eq!(status, 403);
        // A join whose content is not a join.
        let mut leave = event.clone();
        leave["content"]["membership"] = json!("leave");
        let (status, _) = refusal(
            world
                .joiner
                .send_join(&public, &world.joiner.sign(&leave, None))
                .await,
        );
        assert_eq!(status, 400);
        // An event id the path does not name.
        let join = world.joiner.sign(&event, None);
        let request = create_join_event::v2::Request::new(
            room(&public),
            "$other".try_into().unwrap(),
            raw(&join),
        );
        let (status, _) = refusal(world.joiner.client.send(hs(), request).await);
        assert_eq!(status, 400);
        assert_eq!(world.membership(&public, BOB).await, None);

        // A server the room's ACL denies.
        let acl_room = world.room(json!({"preset": "public_chat"})).await;
        world
            .alice_state(
                &acl_room,
                "m.room.server_acl",
                json!({"allow": ["*"], "deny": [PEER]}),
            )
            .await;
        let (status, body) = refusal(world.joiner.make_join(&acl_room, BOB, &["10"]).await);
        assert_eq!(
            (status, body["errcode"].as_str()),
            (403, Some("M_FORBIDDEN")),
            "{body}"
        );

        // The room closes between the template and the join: the join fails against the
        // current state, and none of it shows.
        world
            .alice_state(&public, "m.room.join_rules", json!({"join_rule": "invite"}))
            .await;
        let (status, body) = refusal(world.joiner.send_join(&public, &join).await);
        assert_eq!(status, 403, "{body}");
        assert_eq!(world.membership(&public, BOB).await, None);
        assert!(!world.state_ids(&public).await.contains(join.event_id()));
    }
}

#[tokio::test]
async fn a_restricted_join_is_authorised_and_signed_here_only_when_the_allow_rules_hold() {
    for kind in test_backends() {
        let world = World::build(kind).await;
        let space = world.room(json!({"preset": "public_chat"})).await;
        // Bob is in the allowed room through a join this server received.
        world.joiner.join(&space, BOB).await;
        let restricted = world
            .room(json!({
                "preset": "private_chat",
                "initial_state": [{
                    "type": "m.room.join_rules",
                    "state_key": "",
                    "content": {
                        "join_rule": "restricted",
                        "allow": [{"type": "m.room_membership", "room_id": space}],
                    },
                }],
            }))
            .await;

        let template = world
            .joiner
            .make_join(&restricted, BOB, &["10"])
            .await
            .unwrap();
        let event = json_value(&template.event);
        assert_eq!(
            event["content"]["join_authorised_via_users_server"], world.alice.user_id,
            "{event}"
        );
        let join = world.joiner.sign(&event, None);
        let answer = world
            .joiner
            .send_join(&restricted, &join)
            .await
            .unwrap()
            .room_state;
        let signed = json_value(answer.event.as_deref().expect("the join as signed here"));
        assert!(signed["signatures"][HS].is_object(), "{signed}");
        assert!(signed["signatures"][PEER].is_object(), "{signed}");
        assert_eq!(
            world.membership(&restricted, BOB).await.as_deref(),
            Some("join")
        );

        // Dave is in no allowed room: refused, whether he asks or names an authoriser himself.
        let (status, body) = refusal(world.joiner.make_join(&restricted, DAVE, &["10"]).await);
        assert_eq!(
            (status, body["errcode"].as_str()),
            (403, Some("M_FORBIDDEN")),
            "{body}"
        );
        let mut daves = event.clone();
        daves["sender"] = json!(DAVE);
        daves["state_key"] = json!(DAVE);
        let (status, _) = refusal(
            world
                .joiner
                .send_join(&restricted, &world.joiner.sign(&daves, None))
                .await,
        );
        assert_eq!(status, 403);
        assert_eq!(world.membership(&restricted, DAVE).await, None);

        // Allowed by a room this server is not in: it cannot tell.
        let elsewhere = world
            .room(json!({
                "preset": "private_chat",
                "initial_state": [{
                    "type": "m.room.join_rules",
                    "state_key": "",
                    "content": {
                        "join_rule": "restricted",
                        "allow": [{"type": "m.room_membership", "room_id": "!away:other.test"}],
                    },
                }],
            }))
            .await;
        let (status, body) = refusal(world.joiner.make_join(&elsewhere, BOB, &["10"]).await);
        assert_eq!(status, 400);
        assert_eq!(body["errcode"], "M_UNABLE_TO_GRANT_JOIN", "{body}");

        // No room is allowed at all (a knock_restricted room with an empty allow list): no
        // server could grant it, so it is refused outright (Complement's knocking tests).
        let nothing_allowed = world
            .room(json!({
                "preset": "private_chat",
                "initial_state": [{
                    "type": "m.room.join_rules",
                    "state_key": "",
                    "content": {"join_rule": "knock_restricted", "allow": []},
                }],
            }))
            .await;
        let (status, body) = refusal(world.joiner.make_join(&nothing_allowed, BOB, &["10"]).await);
        assert_eq!(
            (status, &body["errcode"]),
            (403, &json!("M_FORBIDDEN")),
            "{body}"
        );

        // Allowed, but nobody here may invite: this server cannot authorise it.
        let nobody_invites = world
            .room(json!({
                "preset": "private_chat",
                "power_level_content_override": {"invite": 101},
                "initial_state": [{
                    "type": "m.room.join_rules",
                    "state_key": "",
                    "content": {
                        "join_rule": "restricted",
                        "allow": [{"type": "m.room_membership", "room_id": space}],
                    },
                }],
            }))
            .await;
        let (status, body) = refusal(world.joiner.make_join(&nobody_invites, BOB, &["10"]).await);
        assert_eq!(status, 400);
        assert_eq!(body["errcode"], "M_UNABLE_TO_AUTHORISE_JOIN", "{body}");
    }
}

#[tokio::test]
async fn remote_users_leave_and_knock_through_the_resident() {
    for kind in test_backends() {
        let world = World::build(kind).await;
        let public = world.room(json!({"preset": "public_chat"})).await;
        world.joiner.join(&public, BOB).await;

        let template = world.joiner.make_leave(&public, BOB).await.unwrap();
        assert_eq!(template.room_version, Some(RoomVersionId::V10));
        let event = json_value(&template.event);
        assert_eq!(event["content"], json!({"membership": "leave"}));
        let leave = world.joiner.sign(&event, None);
        world.joiner.send_leave(&public, &leave).await.unwrap();
        assert_eq!(
            world.membership(&public, BOB).await.as_deref(),
            Some("leave")
        );
        // A join sent to the leave endpoint is refused.
        let join_template = world.joiner.make_join(&public, BOB, &["10"]).await.unwrap();
        let join = world.joiner.sign(&json_value(&join_template.event), None);
        let (status, body) = refusal(world.joiner.send_leave(&public, &join).await);
        assert_eq!(
            (status, &body["errcode"]),
            (400, &json!("M_BAD_JSON")),
            "{body}"
        );

        // Knocking: only where the join rule allows it.
        let (status, _) = refusal(world.joiner.make_knock(&public, DAVE, &["10"]).await);
        assert_eq!(status, 403);
        let knockable = world
            .room(json!({
                "preset": "private_chat",
                "initial_state": [{
                    "type": "m.room.join_rules",
                    "state_key": "",
                    "content": {"join_rule": "knock"},
                }],
            }))
            .await;
        let (status, body) = refusal(world.joiner.make_knock(&knockable, DAVE, &["6"]).await);
        assert_eq!(
            (status, body["errcode"].as_str()),
            (400, Some("M_INCOMPATIBLE_ROOM_VERSION"))
        );
        let template = world
            .joiner
            .make_knock(&knockable, DAVE, &["10"])
            .await
            .unwrap();
        assert_eq!(template.room_version, RoomVersionId::V10);
        let event = json_value(&template.event);
        assert_eq!(event["content"], json!({"membership": "knock"}));
        let knock = world.joiner.sign(&event, None);
        let answer = world.joiner.send_knock(&knockable, &knock).await.unwrap();
        let state: Vec<Value> = answer
            .knock_room_state
            .iter()
            .map(|s| serde_json::to_value(s).unwrap())
            .collect();
        assert!(
            state
                .iter()
                .any(|e| e["type"] == "m.room.join_rules" && e["content"]["join_rule"] == "knock"),
            "{state:?}"
        );
        assert!(
            state.iter().any(|e| e["type"] == "m.room.create"),
            "{state:?}"
        );
        assert_eq!(
            world.membership(&knockable, DAVE).await.as_deref(),
            Some("knock")
        );
    }
}

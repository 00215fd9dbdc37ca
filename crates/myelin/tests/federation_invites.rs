//! Invites across servers, on both databases. A simulated peer (`peer.test`: its own signing key
//! and key document, `/invite`, `/make_leave` and `/send_leave` answered as the test says) and a
//! Myelin server (`hs.test`): the peer invites a local user to a room only it is in (inbound
//! `/invite`, the invite in `/sync`, rejection through the peer or out of band), and a local
//! user invites the peer's bob (outbound `/invite`, the invite appended only with the peer's
//! signature). Then two real Myelin servers: an invite from one reaches the other's `/sync`.

use std::{
    net::SocketAddr,
    sync::{Arc, Mutex},
    time::Duration,
};

use axum::{
    Json, Router,
    extract::{Path, State},
    http::StatusCode,
    response::{IntoResponse, Response},
    routing::{get, put},
};
use base64::Engine;
use myelin_federation::{FederationClient, FederationClientConfig, FederationError};
use myelin_room_version::{
    CanonicalJsonObject, CanonicalJsonValue, KeyPair, Pdu, RoomVersion,
    pdu::{EventSigner, add_signature, build_pdu},
    signing::sign_json,
};
use myelin_testkit::{
    TestServer, TestUser, enc,
    federation::{TestCa, start_federation},
    test_backends,
};
use ruma::api::federation::membership::{RawStrippedState, create_invite};
use serde_json::{Value, json, value::RawValue};

const HS: &str = "hs.test";
const PEER: &str = "peer.test";
const PEER_KEY_ID: &str = "ed25519:p1";
const CAROL: &str = "@carol:peer.test";
const BOB: &str = "@bob:peer.test";
const PEER_ROOM: &str = "!elsewhere:peer.test";

/// How the peer answers what the server asks of it.
#[derive(Default)]
struct PeerState {
    /// `/invite` bodies the peer had.
    invites: Mutex<Vec<Value>>,
    /// The peer refuses invites (403).
    refuse_invites: Mutex<bool>,
    /// The peer answers invites with the event as it came, without its signature.
    unsigned_invites: Mutex<bool>,
    /// The peer holds its answer to an invite until `release` (after announcing it).
    hold_invites: Mutex<bool>,
    held: tokio::sync::Notify,
    release: tokio::sync::Notify,
    /// `make_leave` answers 503 (as if down).
    leave_down: Mutex<bool>,
    /// The template `make_leave` answers with.
    leave_template: Mutex<Option<Value>>,
    /// The leave events `send_leave` had.
    leaves: Mutex<Vec<Value>>,
    /// The PDUs of the transactions the server sent the peer.
    pdus: Mutex<Vec<Value>>,
}

type PeerApp = (Arc<PeerState>, Arc<KeyPair>);

fn peer_key() -> KeyPair {
    KeyPair::from_seed(&[23; 32])
}

fn signer(key: &KeyPair) -> EventSigner<'_> {
    EventSigner::Server {
        server_name: PEER,
        key_id: PEER_KEY_ID,
        key,
    }
}

async fn start_peer(ca: &TestCa) -> (Arc<PeerState>, SocketAddr) {
    let state = Arc::new(PeerState::default());
    let (cert, private) = ca.issue(PEER);
    let tls = myelin::tls::server_config(&cert, &private).unwrap();
    let tcp = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = tcp.local_addr().unwrap();
    let listener = myelin::tls::TlsListener::new(tcp, tls).unwrap();
    let app = Router::new()
        .route("/_matrix/key/v2/server", get(key_document))
        .route(
            "/_matrix/federation/v2/invite/{room_id}/{event_id}",
            put(invite),
        )
        .route(
            "/_matrix/federation/v1/make_leave/{room_id}/{user_id}",
            get(make_leave),
        )
        .route(
            "/_matrix/federation/v2/send_leave/{room_id}/{event_id}",
            put(send_leave),
        )
        .route("/_matrix/federation/v1/send/{txn_id}", put(transaction))
        .with_state((state.clone(), Arc::new(peer_key())));
    tokio::spawn(async move {
        let _ = axum::serve(listener, app.into_make_service()).await;
    });
    (state, addr)
}

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

/// The peer signs the invite (or refuses it).
async fn invite(State((peer, key)): State<PeerApp>, Json(body): Json<Value>) -> Response {
    peer.invites.lock().unwrap().push(body.clone());
    if *peer.refuse_invites.lock().unwrap() {
        return (
            StatusCode::FORBIDDEN,
            Json(json!({"errcode": "M_FORBIDDEN", "error": "bob takes no invites"})),
        )
            .into_response();
    }
    let hold = *peer.hold_invites.lock().unwrap();
    if hold {
        peer.held.notify_one();
        peer.release.notified().await;
    }
    if *peer.unsigned_invites.lock().unwrap() {
        return Json(json!({"event": body["event"]})).into_response();
    }
    let version = RoomVersion::get(body["room_version"].as_str().unwrap()).unwrap();
    let mut pdu = Pdu::from_federation(body["event"].to_string().as_bytes(), version).unwrap();
    add_signature(&mut pdu, version, signer(&key)).unwrap();
    Json(json!({"event": json_of(&pdu)})).into_response()
}

async fn make_leave(
    State((peer, _)): State<PeerApp>,
    Path((_room_id, _user_id)): Path<(String, String)>,
) -> Response {
    if *peer.leave_down.lock().unwrap() {
        return (
            StatusCode::SERVICE_UNAVAILABLE,
            Json(json!({"errcode": "M_UNKNOWN", "error": "down"})),
        )
            .into_response();
    }
    let template = peer.leave_template.lock().unwrap().clone().unwrap();
    Json(json!({"room_version": "10", "event": template})).into_response()
}

async fn send_leave(State((peer, _)): State<PeerApp>, Json(body): Json<Value>) -> Response {
    peer.leaves.lock().unwrap().push(body);
    Json(json!({})).into_response()
}

async fn transaction(State((peer, _)): State<PeerApp>, Json(body): Json<Value>) -> Response {
    if let Some(pdus) = body["pdus"].as_array() {
        peer.pdus.lock().unwrap().extend(pdus.iter().cloned());
    }
    Json(json!({"pdus": {}})).into_response()
}

/// Waits (a bounded while) until the peer has had a transaction PDU that `matches`.
async fn peer_receives(peer: &PeerState, what: &str, matches: impl Fn(&Value) -> bool) {
    for _ in 0..200 {
        if peer.pdus.lock().unwrap().iter().any(&matches) {
            return;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    panic!("the peer never received {what}");
}

fn json_of(pdu: &Pdu) -> Value {
    serde_json::from_str(&pdu.canonical_json()).unwrap()
}

fn raw(value: &Value) -> Box<RawValue> {
    RawValue::from_string(value.to_string()).unwrap()
}

/// An event's fields before hashing and signing; without `room_id` when `room_id` is `None`
/// (a create event of rooms whose id is its hash).
#[allow(clippy::too_many_arguments)]
fn event_fields(
    room_id: Option<&str>,
    sender: &str,
    kind: &str,
    state_key: Option<&str>,
    content: Value,
    prev: &[&str],
    auth: &[&str],
    depth: i64,
) -> CanonicalJsonObject {
    let s = |v: &str| CanonicalJsonValue::String(v.to_owned());
    let mut partial = CanonicalJsonObject::new();
    partial.insert("type".to_owned(), s(kind));
    if let Some(room_id) = room_id {
        partial.insert("room_id".to_owned(), s(room_id));
    }
    partial.insert("sender".to_owned(), s(sender));
    if let Some(state_key) = state_key {
        partial.insert("state_key".to_owned(), s(state_key));
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
    partial
}

/// A v10 event of the peer's room, signed by `key` as the peer.
#[allow(clippy::too_many_arguments)]
fn peer_event(
    key: &KeyPair,
    room_id: &str,
    sender: &str,
    kind: &str,
    state_key: Option<&str>,
    content: Value,
    prev: &[&str],
    auth: &[&str],
    depth: i64,
) -> Pdu {
    let partial = event_fields(
        Some(room_id),
        sender,
        kind,
        state_key,
        content,
        prev,
        auth,
        depth,
    );
    // Signed as the sender's server (with `key`, whoever holds it).
    let server = sender.split_once(':').unwrap().1;
    let signer = EventSigner::Server {
        server_name: server,
        key_id: PEER_KEY_ID,
        key,
    };
    build_pdu(partial, RoomVersion::get("10").unwrap(), signer).unwrap()
}

/// The peer's room (`!elsewhere:peer.test`, version 10): carol created it, joined, named it.
struct PeerRoom {
    create: Pdu,
    join: Pdu,
    name: Pdu,
}

impl PeerRoom {
    fn new(key: &KeyPair, room_id: &str) -> PeerRoom {
        let create = peer_event(
            key,
            room_id,
            CAROL,
            "m.room.create",
            Some(""),
            json!({"creator": CAROL, "room_version": "10"}),
            &[],
            &[],
            1,
        );
        let join = peer_event(
            key,
            room_id,
            CAROL,
            "m.room.member",
            Some(CAROL),
            json!({"membership": "join"}),
            &[create.event_id()],
            &[create.event_id()],
            2,
        );
        let name = peer_event(
            key,
            room_id,
            CAROL,
            "m.room.name",
            Some(""),
            json!({"name": "Elsewhere"}),
            &[join.event_id()],
            &[create.event_id(), join.event_id()],
            3,
        );
        PeerRoom { create, join, name }
    }

    /// Carol's invite of `target`, signed by `key`, sent by `sender`.
    fn invite(&self, key: &KeyPair, sender: &str, target: &str) -> Pdu {
        peer_event(
            key,
            self.create.room_id().unwrap(),
            sender,
            "m.room.member",
            Some(target),
            json!({"membership": "invite"}),
            &[self.name.event_id()],
            &[self.create.event_id(), self.join.event_id()],
            4,
        )
    }
}

struct World {
    server: TestServer,
    peer: Arc<PeerState>,
    client: FederationClient,
    alice: TestUser,
    key: KeyPair,
    _ca: TestCa,
}

impl World {
    async fn build(kind: myelin_store::DatabaseKind) -> World {
        let ca = TestCa::new();
        let (peer, peer_addr) = start_peer(&ca).await;
        let mut servers = start_federation(kind, &ca, &[HS], |_, config| {
            config
                .federation
                .destination_overrides
                .insert(PEER.to_owned(), peer_addr.to_string());
        })
        .await;
        let server = servers.remove(0);
        let mut overrides = std::collections::BTreeMap::new();
        overrides.insert(HS.to_owned(), server.addrs().1.to_string());
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
        let alice = server.register("alice").await;
        World {
            server,
            peer,
            client,
            alice,
            key: peer_key(),
            _ca: ca,
        }
    }

    /// The peer's `/invite` of `event` with `state` as `invite_room_state`.
    async fn send_invite(
        &self,
        version: &str,
        event: &Pdu,
        state: &[Value],
    ) -> Result<Value, FederationError> {
        let request = create_invite::v2::Request::new(
            event.room_id().unwrap().try_into().unwrap(),
            event.event_id().try_into().unwrap(),
            version.try_into().unwrap(),
            raw(&json_of(event)),
            state
                .iter()
                .map(|s| serde_json::from_str::<RawStrippedState>(&s.to_string()).unwrap())
                .collect(),
        );
        let answer = self
            .client
            .send(ruma::server_name!("hs.test"), request)
            .await?;
        Ok(serde_json::from_str(answer.event.get()).unwrap())
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

    async fn stop(self) {
        self.server.stop().await;
    }
}

fn status_of(err: FederationError) -> (u16, Value) {
    match err {
        FederationError::Status { status, body } => {
            (status, serde_json::from_str(&body).unwrap_or(Value::Null))
        }
        other => panic!("expected an error answer, got {other}"),
    }
}

#[tokio::test]
async fn a_peers_invite_is_signed_stored_and_shown_in_sync() {
    for kind in test_backends() {
        let world = World::build(kind).await;
        let room = PeerRoom::new(&world.key, PEER_ROOM);
        let invite = room.invite(&world.key, CAROL, "@alice:hs.test");
        let before = world.sync(None).await;
        let since = before["next_batch"].as_str().unwrap().to_owned();

        let signed = world
            .send_invite("10", &invite, &[json_of(&room.create), json_of(&room.name)])
            .await
            .unwrap();
        // Our signature added, the peer's kept, nothing else changed.
        assert!(signed["signatures"][HS].is_object(), "{kind:?}: {signed}");
        assert!(signed["signatures"][PEER].is_object(), "{kind:?}: {signed}");
        let mut unsigned_ours = signed.clone();
        unsigned_ours["signatures"]
            .as_object_mut()
            .unwrap()
            .remove(HS);
        assert_eq!(unsigned_ours, json_of(&invite), "{kind:?}");

        // The room is known, but this server is not in it.
        let store = world.server.store();
        let stored_room = store.room(PEER_ROOM).await.unwrap().unwrap();
        assert!(
            !store
                .server_in_room(stored_room.room_nid, HS)
                .await
                .unwrap(),
            "{kind:?}"
        );
        assert!(
            !world
                .server
                .services()
                .rooms
                .holds_state(&stored_room)
                .await
                .unwrap(),
            "{kind:?}"
        );

        // Both an incremental and an initial sync show it, with the stripped state.
        for sync in [world.sync(Some(&since)).await, world.sync(None).await] {
            let events = sync["rooms"]["invite"][PEER_ROOM]["invite_state"]["events"]
                .as_array()
                .unwrap_or_else(|| panic!("{kind:?}: no invite in {sync}"))
                .clone();
            let create = events
                .iter()
                .find(|e| e["type"] == "m.room.create")
                .unwrap();
            assert_eq!(create["event_id"], room.create.event_id(), "{kind:?}");
            assert!(create["origin_server_ts"].is_i64(), "{kind:?}: {create}");
            assert!(
                events
                    .iter()
                    .any(|e| e["type"] == "m.room.name" && e["content"]["name"] == "Elsewhere"),
                "{kind:?}: {events:?}"
            );
            assert!(
                events.iter().any(|e| e["type"] == "m.room.member"
                    && e["state_key"] == "@alice:hs.test"
                    && e["sender"] == CAROL),
                "{kind:?}: {events:?}"
            );
        }

        // The same invite again (a retry) is answered the same, and changes nothing.
        let again = world
            .send_invite("10", &invite, &[json_of(&room.create)])
            .await
            .unwrap();
        assert_eq!(again, signed, "{kind:?}");

        // A join goes through the inviting server, which (this simulated one) serves no
        // make_join: its 404 is passed on.
        let (status, body) = world
            .server
            .post(
                &format!("/_matrix/client/v3/join/{}", enc(PEER_ROOM)),
                &world.alice.access_token,
                json!({}),
            )
            .await;
        assert_eq!(status, 404, "{kind:?}: {body}");
        world.stop().await;
    }
}

#[tokio::test]
async fn bad_invites_are_refused_and_leave_nothing_stored() {
    for kind in test_backends() {
        let world = World::build(kind).await;
        let room = PeerRoom::new(&world.key, PEER_ROOM);
        let state = [json_of(&room.create)];
        let store = world.server.store();

        // Signed with a key that is not the peer's.
        let forger = KeyPair::from_seed(&[99; 32]);
        let forged = room.invite(&forger, CAROL, "@alice:hs.test");
        let (status, body) = status_of(world.send_invite("10", &forged, &state).await.unwrap_err());
        assert_eq!(status, 403, "{kind:?}: {body}");
        assert_eq!(body["errcode"], "M_FORBIDDEN", "{kind:?}");

        // From a user of another server than the one asking.
        let elsewhere = room.invite(&world.key, "@mallory:other.test", "@alice:hs.test");
        let (status, body) = status_of(
            world
                .send_invite("10", &elsewhere, &state)
                .await
                .unwrap_err(),
        );
        assert_eq!(status, 403, "{kind:?}: {body}");

        // A room version this server does not know.
        let invite = room.invite(&world.key, CAROL, "@alice:hs.test");
        let (status, body) = status_of(world.send_invite("99", &invite, &state).await.unwrap_err());
        assert_eq!(status, 400, "{kind:?}: {body}");
        assert_eq!(body["errcode"], "M_INCOMPATIBLE_ROOM_VERSION", "{kind:?}");
        assert_eq!(body["room_version"], "99", "{kind:?}");

        // The create event of another room, and no create event at all.
        let other = PeerRoom::new(&world.key, "!other:peer.test");
        for state in [vec![json_of(&other.create)], vec![json_of(&room.name)]] {
            let (status, body) =
                status_of(world.send_invite("10", &invite, &state).await.unwrap_err());
            assert_eq!(status, 400, "{kind:?}: {body}");
            assert_eq!(body["errcode"], "M_MISSING_PARAM", "{kind:?}");
        }
        // A create event whose signature does not verify.
        let forged_create = PeerRoom::new(&forger, PEER_ROOM).create;
        let (status, body) = status_of(
            world
                .send_invite("10", &invite, &[json_of(&forged_create)])
                .await
                .unwrap_err(),
        );
        assert_eq!(status, 400, "{kind:?}: {body}");
        assert_eq!(body["errcode"], "M_MISSING_PARAM", "{kind:?}");

        // More stripped state than an invite needs.
        let too_much = vec![json_of(&room.create); 51];
        let (status, body) = status_of(
            world
                .send_invite("10", &invite, &too_much)
                .await
                .unwrap_err(),
        );
        assert_eq!(status, 400, "{kind:?}: {body}");
        assert_eq!(body["errcode"], "M_BAD_JSON", "{kind:?}");
        // Events signed by more servers than checking them may ask keys of.
        let mut many = vec![json_of(&room.create)];
        for i in 0..6 {
            many.push(json_of(&peer_event(
                &world.key,
                PEER_ROOM,
                &format!("@x:s{i}.test"),
                "m.room.topic",
                Some(""),
                json!({"topic": "t"}),
                &[room.join.event_id()],
                &[room.create.event_id()],
                3,
            )));
        }
        let (status, body) = status_of(world.send_invite("10", &invite, &many).await.unwrap_err());
        assert_eq!(status, 400, "{kind:?}: {body}");
        assert_eq!(body["errcode"], "M_MISSING_PARAM", "{kind:?}");

        // A user this server does not have.
        let nobody = room.invite(&world.key, CAROL, "@nobody:hs.test");
        let (status, _) = status_of(world.send_invite("10", &nobody, &state).await.unwrap_err());
        assert_eq!(status, 404, "{kind:?}");

        // A user who deactivated their account.
        let gone = world.server.register("gone").await;
        let (status, body) = world
            .server
            .post(
                "/_matrix/client/v3/account/deactivate",
                &gone.access_token,
                json!({"auth": {"type": "m.login.password",
                       "identifier": {"type": "m.id.user", "user": "gone"},
                       "password": gone.password}}),
            )
            .await;
        assert_eq!(status, 200, "{body}");
        let deactivated = room.invite(&world.key, CAROL, &gone.user_id);
        let (status, _) = status_of(
            world
                .send_invite("10", &deactivated, &state)
                .await
                .unwrap_err(),
        );
        assert_eq!(status, 403, "{kind:?}");

        assert!(store.room(PEER_ROOM).await.unwrap().is_none(), "{kind:?}");
        for event in [&forged, &elsewhere, &invite, &nobody, &deactivated] {
            assert!(
                store.event(event.event_id()).await.unwrap().is_none(),
                "{kind:?}"
            );
        }
        let sync = world.sync(None).await;
        assert!(
            sync["rooms"]["invite"].get(PEER_ROOM).is_none(),
            "{kind:?}: {sync}"
        );
        world.stop().await;
    }
}

/// The peer invites alice; the event ids of the room's create and carol's join.
async fn invited(world: &World) -> (PeerRoom, Pdu) {
    let room = PeerRoom::new(&world.key, PEER_ROOM);
    let invite = room.invite(&world.key, CAROL, "@alice:hs.test");
    world
        .send_invite("10", &invite, &[json_of(&room.create)])
        .await
        .unwrap();
    (room, invite)
}

async fn reject(world: &World) {
    let (status, body) = world
        .server
        .post(
            &format!("/_matrix/client/v3/rooms/{}/leave", enc(PEER_ROOM)),
            &world.alice.access_token,
            json!({"reason": "no thanks"}),
        )
        .await;
    assert_eq!(status, 200, "{body}");
}

#[tokio::test]
async fn rejecting_an_invite_goes_through_the_inviting_server() {
    for kind in test_backends() {
        let world = World::build(kind).await;
        let (room, invite) = invited(&world).await;
        *world.peer.leave_template.lock().unwrap() = Some(json!({
            "type": "m.room.member",
            "room_id": PEER_ROOM,
            "sender": "@alice:hs.test",
            "state_key": "@alice:hs.test",
            "content": {"membership": "leave"},
            "prev_events": [invite.event_id()],
            "auth_events": [room.create.event_id(), room.join.event_id(), invite.event_id()],
            "depth": 5,
            "origin_server_ts": 1,
        }));
        let since = world.sync(None).await["next_batch"]
            .as_str()
            .unwrap()
            .to_owned();
        reject(&world).await;

        let leaves = world.peer.leaves.lock().unwrap().clone();
        assert_eq!(leaves.len(), 1, "{kind:?}");
        let leave = &leaves[0];
        assert_eq!(leave["content"]["membership"], "leave", "{kind:?}");
        assert_eq!(leave["content"]["reason"], "no thanks", "{kind:?}");
        assert_eq!(leave["prev_events"], json!([invite.event_id()]), "{kind:?}");
        assert!(leave["signatures"][HS].is_object(), "{kind:?}: {leave}");

        let sync = world.sync(Some(&since)).await;
        assert!(
            sync["rooms"]["invite"].get(PEER_ROOM).is_none(),
            "{kind:?}: {sync}"
        );
        let timeline = &sync["rooms"]["leave"][PEER_ROOM]["timeline"]["events"];
        assert_eq!(
            timeline[0]["content"]["membership"], "leave",
            "{kind:?}: {sync}"
        );
        let initial = world.sync(None).await;
        assert!(
            initial["rooms"]["invite"].get(PEER_ROOM).is_none(),
            "{kind:?}: {initial}"
        );
        world.stop().await;
    }
}

#[tokio::test]
async fn an_invite_is_rejected_out_of_band_when_no_server_takes_the_leave() {
    for kind in test_backends() {
        let world = World::build(kind).await;
        let (_room, _invite) = invited(&world).await;
        *world.peer.leave_down.lock().unwrap() = true;
        let since = world.sync(None).await["next_batch"]
            .as_str()
            .unwrap()
            .to_owned();
        reject(&world).await;
        assert!(world.peer.leaves.lock().unwrap().is_empty(), "{kind:?}");
        let sync = world.sync(Some(&since)).await;
        assert!(
            sync["rooms"]["invite"].get(PEER_ROOM).is_none(),
            "{kind:?}: {sync}"
        );
        assert_eq!(
            sync["rooms"]["leave"][PEER_ROOM]["timeline"]["events"][0]["content"]["membership"],
            "leave",
            "{kind:?}: {sync}"
        );
        let store = world.server.store();
        let room = store.room(PEER_ROOM).await.unwrap().unwrap();
        assert_eq!(
            store
                .membership(room.room_nid, "@alice:hs.test")
                .await
                .unwrap()
                .unwrap()
                .0,
            "leave",
            "{kind:?}"
        );
        // Later syncs do not show it again.
        let next = sync["next_batch"].as_str().unwrap();
        let later = world.sync(Some(next)).await;
        assert!(later["rooms"]["leave"].get(PEER_ROOM).is_none(), "{kind:?}");
        world.stop().await;
    }
}

#[tokio::test]
async fn inviting_a_peer_user_needs_the_peers_signature() {
    for kind in test_backends() {
        let world = World::build(kind).await;
        let room_id = world
            .server
            .create_room(
                &world.alice,
                json!({"preset": "private_chat", "room_version": "10", "name": "Here"}),
            )
            .await;
        let (status, body) = world
            .server
            .post(
                &format!("/_matrix/client/v3/rooms/{}/invite", enc(&room_id)),
                &world.alice.access_token,
                json!({"user_id": BOB}),
            )
            .await;
        assert_eq!(status, 200, "{kind:?}: {body}");

        let invites = world.peer.invites.lock().unwrap().clone();
        assert_eq!(invites.len(), 1, "{kind:?}");
        let sent = &invites[0];
        assert_eq!(sent["room_version"], "10", "{kind:?}");
        assert_eq!(sent["event"]["state_key"], BOB, "{kind:?}");
        let state = sent["invite_room_state"].as_array().unwrap();
        let create = state
            .iter()
            .find(|e| e["type"] == "m.room.create")
            .unwrap_or_else(|| panic!("{kind:?}: no create event in {state:?}"));
        // The full PDU (MSC4311), not a stripped event.
        for key in [
            "auth_events",
            "prev_events",
            "hashes",
            "signatures",
            "origin_server_ts",
        ] {
            assert!(
                create.get(key).is_some(),
                "{kind:?}: {key} missing in {create}"
            );
        }
        assert!(
            state
                .iter()
                .any(|e| e["type"] == "m.room.name" && e["content"]["name"] == "Here"),
            "{kind:?}"
        );

        // The room's state has bob invited, with the peer's signature.
        let store = world.server.store();
        let room = store.room(&room_id).await.unwrap().unwrap();
        let member = store
            .current_state(
                room.room_nid,
                Some(&[("m.room.member".to_owned(), BOB.to_owned())]),
            )
            .await
            .unwrap()
            .pop()
            .unwrap_or_else(|| panic!("{kind:?}: bob is not in the room's state"));
        let json: Value = serde_json::from_str(&member.json).unwrap();
        assert_eq!(json["content"]["membership"], "invite", "{kind:?}");
        assert!(json["signatures"][PEER].is_object(), "{kind:?}: {json}");
        assert!(json["signatures"][HS].is_object(), "{kind:?}: {json}");

        // Rescinding it (a kick) is a local event the federation sender owes the peer.
        let (status, body) = world
            .server
            .post(
                &format!("/_matrix/client/v3/rooms/{}/kick", enc(&room_id)),
                &world.alice.access_token,
                json!({"user_id": BOB}),
            )
            .await;
        assert_eq!(status, 200, "{kind:?}: {body}");
        // The invite, then its rescinding, reach bob's server (not in the room) in transactions.
        for membership in ["invite", "leave"] {
            peer_receives(&world.peer, membership, |pdu| {
                pdu["type"] == "m.room.member"
                    && pdu["state_key"] == BOB
                    && pdu["content"]["membership"] == membership
            })
            .await;
        }
        world.stop().await;
    }
}

#[tokio::test]
async fn an_invite_the_peer_refuses_is_the_clients_error_and_not_stored() {
    for kind in test_backends() {
        let world = World::build(kind).await;
        *world.peer.refuse_invites.lock().unwrap() = true;
        let room_id = world
            .server
            .create_room(
                &world.alice,
                json!({"preset": "private_chat", "room_version": "10"}),
            )
            .await;
        let (status, body) = world
            .server
            .post(
                &format!("/_matrix/client/v3/rooms/{}/invite", enc(&room_id)),
                &world.alice.access_token,
                json!({"user_id": BOB}),
            )
            .await;
        assert_eq!(status, 403, "{kind:?}: {body}");
        assert_eq!(body["errcode"], "M_FORBIDDEN", "{kind:?}");
        let store = world.server.store();
        let room = store.room(&room_id).await.unwrap().unwrap();
        assert!(
            store
                .membership(room.room_nid, BOB)
                .await
                .unwrap()
                .is_none(),
            "{kind:?}"
        );
        // An answer without the peer's signature is no invite either.
        *world.peer.refuse_invites.lock().unwrap() = false;
        *world.peer.unsigned_invites.lock().unwrap() = true;
        let (status, body) = world
            .server
            .post(
                &format!("/_matrix/client/v3/rooms/{}/invite", enc(&room_id)),
                &world.alice.access_token,
                json!({"user_id": BOB}),
            )
            .await;
        assert_eq!(status, 502, "{kind:?}: {body}");
        assert!(
            store
                .membership(room.room_nid, BOB)
                .await
                .unwrap()
                .is_none(),
            "{kind:?}"
        );
        *world.peer.unsigned_invites.lock().unwrap() = false;
        *world.peer.refuse_invites.lock().unwrap() = true;

        // createRoom's invite list goes through the same door: the room is made, without bob.
        let (status, body) = world
            .server
            .post(
                "/_matrix/client/v3/createRoom",
                &world.alice.access_token,
                json!({"invite": [BOB], "room_version": "10"}),
            )
            .await;
        assert_eq!(status, 200, "{kind:?}: {body}");
        let created = store
            .room(body["room_id"].as_str().unwrap())
            .await
            .unwrap()
            .unwrap();
        assert!(
            store
                .membership(created.room_nid, BOB)
                .await
                .unwrap()
                .is_none(),
            "{kind:?}"
        );
        assert_eq!(world.peer.invites.lock().unwrap().len(), 3, "{kind:?}");
        world.stop().await;
    }
}

#[tokio::test]
async fn an_invite_from_one_myelin_reaches_the_others_sync() {
    for kind in test_backends() {
        let ca = TestCa::new();
        let servers = start_federation(kind, &ca, &["hs1.test", "hs2.test"], |_, _| {}).await;
        let alice = servers[0].register("alice").await;
        let bob = servers[1].register("bob").await;
        let room_id = servers[0]
            .create_room(&alice, json!({"preset": "private_chat", "name": "Across"}))
            .await;
        let (status, body) = servers[0]
            .post(
                &format!("/_matrix/client/v3/rooms/{}/invite", enc(&room_id)),
                &alice.access_token,
                json!({"user_id": "@bob:hs2.test"}),
            )
            .await;
        assert_eq!(status, 200, "{kind:?}: {body}");
        let (status, sync) = servers[1]
            .get("/_matrix/client/v3/sync?timeout=0", &bob.access_token)
            .await;
        assert_eq!(status, 200, "{kind:?}: {sync}");
        let events = sync["rooms"]["invite"][&room_id]["invite_state"]["events"]
            .as_array()
            .unwrap_or_else(|| panic!("{kind:?}: no invite in {sync}"));
        assert!(
            events
                .iter()
                .any(|e| e["type"] == "m.room.name" && e["content"]["name"] == "Across"),
            "{kind:?}: {events:?}"
        );
        assert!(
            events
                .iter()
                .any(|e| e["type"] == "m.room.create" && e["event_id"].is_string()),
            "{kind:?}: {events:?}"
        );
        // Bob declines: through hs1's make_leave/send_leave, or out of band where hs1 does not
        // serve them; either way the invite is gone from bob's syncs.
        let (status, body) = servers[1]
            .post(
                &format!("/_matrix/client/v3/rooms/{}/leave", enc(&room_id)),
                &bob.access_token,
                json!({}),
            )
            .await;
        assert_eq!(status, 200, "{kind:?}: {body}");
        let (_, sync) = servers[1]
            .get("/_matrix/client/v3/sync?timeout=0", &bob.access_token)
            .await;
        assert!(
            sync["rooms"]["invite"].get(&room_id).is_none(),
            "{kind:?}: {sync}"
        );
        for server in servers {
            server.stop().await;
        }
    }
}

/// An invite rescinded by its inviter (a kick of the invitee) reaches the invitee's server,
/// which is not in the room, and the invitee's clients see the room left; the same leave from
/// another member of the room is not the inviter's to give and is not taken (Complement's
/// TestFederationRoomsInvite rescind cases).
#[tokio::test]
async fn only_the_inviter_rescinds_an_invite_across_servers() {
    for kind in test_backends() {
        let ca = TestCa::new();
        let servers = start_federation(kind, &ca, &["hs1.test", "hs2.test"], |_, _| {}).await;
        let alice = servers[0].register("alice").await;
        let alice2 = servers[0].register("alice2").await;
        let bob = servers[1].register("bob").await;
        let invited_by = |inviter: &myelin_testkit::TestUser, room_id: String| {
            let server = &servers[0];
            let token = inviter.access_token.clone();
            async move {
                let (status, body) = server
                    .post(
                        &format!("/_matrix/client/v3/rooms/{}/invite", enc(&room_id)),
                        &token,
                        json!({"user_id": "@bob:hs2.test"}),
                    )
                    .await;
                assert_eq!(status, 200, "{body}");
            }
        };
        let kick = |room_id: String| {
            let server = &servers[0];
            let token = alice.access_token.clone();
            async move {
                let (status, body) = server
                    .post(
                        &format!("/_matrix/client/v3/rooms/{}/kick", enc(&room_id)),
                        &token,
                        json!({"user_id": "@bob:hs2.test", "reason": "changed my mind"}),
                    )
                    .await;
                assert_eq!(status, 200, "{body}");
            }
        };
        let bob_sees = |room_id: String| {
            let server = &servers[1];
            let token = bob.access_token.clone();
            async move {
                let filter = enc(r#"{"room":{"include_leave":true}}"#);
                let (_, sync) = server
                    .get(
                        &format!("/_matrix/client/v3/sync?timeout=0&filter={filter}"),
                        &token,
                    )
                    .await;
                if sync["rooms"]["leave"].get(&room_id).is_some() {
                    "leave"
                } else if sync["rooms"]["invite"].get(&room_id).is_some() {
                    "invite"
                } else {
                    "nothing"
                }
            }
        };

        // Alice invites bob and rescinds it.
        let room_id = servers[0]
            .create_room(&alice, json!({"preset": "private_chat"}))
            .await;
        invited_by(&alice, room_id.clone()).await;
        assert_eq!(bob_sees(room_id.clone()).await, "invite", "{kind:?}");
        kick(room_id.clone()).await;
        let mut seen = "";
        for _ in 0..100 {
            seen = bob_sees(room_id.clone()).await;
            if seen == "leave" {
                break;
            }
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
        assert_eq!(seen, "leave", "{kind:?}: the rescission reached bob");

        // Invited again: that leave, older than the new invite, reaching hs2 late (as an
        // unban's leave can, after the invite that followed it) rescinds nothing.
        let store = servers[0].store();
        let room_row = store.room(&room_id).await.unwrap().unwrap();
        let old_leave = store
            .current_state(
                room_row.room_nid,
                Some(&[("m.room.member".to_owned(), "@bob:hs2.test".to_owned())]),
            )
            .await
            .unwrap()
            .pop()
            .unwrap()
            .json;
        invited_by(&alice, room_id.clone()).await;
        assert_eq!(bob_sees(room_id.clone()).await, "invite", "{kind:?}");
        let at_hs2 = servers[1].store().room(&room_id).await.unwrap().unwrap();
        let taken = servers[1]
            .services()
            .rooms
            .receive_rescinded_invite(
                ruma::server_name!("hs1.test"),
                &at_hs2,
                old_leave.as_bytes(),
            )
            .await
            .unwrap();
        assert!(!taken, "{kind:?}: an older leave taken as a rescission");
        assert_eq!(bob_sees(room_id.clone()).await, "invite", "{kind:?}");

        // Alice2 invites bob, alice kicks him: not the inviter, bob keeps the invite.
        let room_id = servers[0]
            .create_room(
                &alice,
                json!({"preset": "trusted_private_chat", "invite": [alice2.user_id]}),
            )
            .await;
        let (status, body) = servers[0]
            .post(
                &format!("/_matrix/client/v3/join/{}", enc(&room_id)),
                &alice2.access_token,
                json!({}),
            )
            .await;
        assert_eq!(status, 200, "{body}");
        invited_by(&alice2, room_id.clone()).await;
        assert_eq!(bob_sees(room_id.clone()).await, "invite", "{kind:?}");
        // A room both are in, whose next message travels to hs2 after the kick (one
        // transaction at a time per destination): once bob has it, hs2 has judged the kick.
        let probe = servers[0]
            .create_room(&alice, json!({"preset": "public_chat"}))
            .await;
        let (status, body) = servers[1]
            .post(
                &format!("/_matrix/client/v3/join/{}?via=hs1.test", enc(&probe)),
                &bob.access_token,
                json!({}),
            )
            .await;
        assert_eq!(status, 200, "{body}");
        kick(room_id.clone()).await;
        let (status, body) = servers[0]
            .put(
                &format!(
                    "/_matrix/client/v3/rooms/{}/send/m.room.message/p1",
                    enc(&probe)
                ),
                &alice.access_token,
                json!({"msgtype": "m.text", "body": "after the kick"}),
            )
            .await;
        assert_eq!(status, 200, "{body}");
        let mut arrived = false;
        for _ in 0..100 {
            let (_, page) = servers[1]
                .get(
                    &format!("/_matrix/client/v3/rooms/{}/messages?dir=b", enc(&probe)),
                    &bob.access_token,
                )
                .await;
            if page.to_string().contains("after the kick") {
                arrived = true;
                break;
            }
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
        assert!(arrived, "{kind:?}: the probe message reached hs2");
        assert_eq!(
            bob_sees(room_id.clone()).await,
            "invite",
            "{kind:?}: a leave from another member than the inviter"
        );
        for server in servers {
            server.stop().await;
        }
    }
}

#[tokio::test]
async fn an_invite_from_an_ignored_user_is_taken_but_not_shown() {
    for kind in test_backends() {
        let world = World::build(kind).await;
        let (status, body) = world
            .server
            .put(
                &format!(
                    "/_matrix/client/v3/user/{}/account_data/m.ignored_user_list",
                    enc(&world.alice.user_id)
                ),
                &world.alice.access_token,
                json!({"ignored_users": {CAROL: {}}}),
            )
            .await;
        assert_eq!(status, 200, "{body}");
        let (_room, invite) = invited(&world).await;
        let store = world.server.store();
        assert!(
            store.event(invite.event_id()).await.unwrap().is_some(),
            "{kind:?}: the invite is stored"
        );
        let sync = world.sync(None).await;
        assert!(
            sync["rooms"]["invite"].get(PEER_ROOM).is_none(),
            "{kind:?}: {sync}"
        );
        world.stop().await;
    }
}

#[tokio::test]
async fn an_invite_into_a_room_this_server_is_in_takes_the_receive_path() {
    for kind in test_backends() {
        let world = World::build(kind).await;
        let dave = world.server.register("dave").await;
        let room_id = world
            .server
            .create_room(
                &world.alice,
                json!({
                    "preset": "public_chat",
                    "room_version": "10",
                    "name": "Shared",
                    "power_level_content_override": {"invite": 0},
                }),
            )
            .await;
        let store = world.server.store();
        let room = store.room(&room_id).await.unwrap().unwrap();
        let state_id = |kind: &str| {
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
        let head = store
            .send_context(room.room_nid, &[], None)
            .await
            .unwrap()
            .head;
        let prev: Vec<&str> = head.prev_event_ids.iter().map(String::as_str).collect();
        // Bob of the peer joins (through the receive pipeline), then invites dave.
        let join = peer_event(
            &world.key,
            &room_id,
            BOB,
            "m.room.member",
            Some(BOB),
            json!({"membership": "join"}),
            &prev,
            &[&create, &join_rules, &power],
            head.max_depth + 1,
        );
        let mut keys = myelin_room_version::verify::ServerKeys::new();
        keys.entry(PEER.to_owned()).or_default().insert(
            PEER_KEY_ID.to_owned(),
            myelin_room_version::verify::ServerKey {
                key: myelin_room_version::PublicKey::from_bytes(&world.key.public_key()).unwrap(),
                valid_until_ts: u64::MAX,
            },
        );
        world
            .server
            .services()
            .rooms
            .receive_pdus(&room_id, &[join.canonical_json().as_bytes()], &keys)
            .await
            .unwrap();
        let invite = peer_event(
            &world.key,
            &room_id,
            BOB,
            "m.room.member",
            Some(&dave.user_id),
            json!({"membership": "invite"}),
            &[join.event_id()],
            &[&create, &power, join.event_id()],
            head.max_depth + 2,
        );
        let create_pdu = store.event(&create).await.unwrap().unwrap();
        let create_json: Value = serde_json::from_str(&create_pdu.json).unwrap();
        let signed = world
            .send_invite("10", &invite, &[create_json])
            .await
            .unwrap();
        assert!(signed["signatures"][HS].is_object(), "{kind:?}");

        // A normal event of the room, in its state, with both signatures.
        let row = store.event(invite.event_id()).await.unwrap().unwrap();
        assert_eq!(row.status, myelin_store::EventStatus::Normal, "{kind:?}");
        let member = store
            .current_state(
                room.room_nid,
                Some(&[("m.room.member".to_owned(), dave.user_id.clone())]),
            )
            .await
            .unwrap()
            .pop()
            .unwrap();
        assert_eq!(member.event_id, invite.event_id(), "{kind:?}");
        // Dave's sync shows it with the room's own stripped state.
        let (status, sync) = world
            .server
            .get("/_matrix/client/v3/sync?timeout=0", &dave.access_token)
            .await;
        assert_eq!(status, 200, "{sync}");
        let events = sync["rooms"]["invite"][&room_id]["invite_state"]["events"]
            .as_array()
            .unwrap_or_else(|| panic!("{kind:?}: no invite in {sync}"));
        assert!(
            events
                .iter()
                .any(|e| e["type"] == "m.room.name" && e["content"]["name"] == "Shared"),
            "{kind:?}: {events:?}"
        );
        // The same invite again (as the peer's transaction would bring it) changes nothing.
        let again = world
            .send_invite("10", &invite, &[json_of(&room_event(&create_pdu.json))])
            .await
            .unwrap();
        assert_eq!(again, signed, "{kind:?}");
        world.stop().await;
    }
}

fn room_event(json: &str) -> Pdu {
    Pdu::from_federation(json.as_bytes(), RoomVersion::get("10").unwrap()).unwrap()
}

/// Alice's invite of bob while the peer holds its answer, with `meanwhile` done in between.
async fn invite_while_held<F: std::future::Future<Output = ()>>(
    world: &World,
    room_id: &str,
    meanwhile: F,
) -> (u16, Value) {
    *world.peer.hold_invites.lock().unwrap() = true;
    let path = format!("/_matrix/client/v3/rooms/{}/invite", enc(room_id));
    let invite = world
        .server
        .post(&path, &world.alice.access_token, json!({"user_id": BOB}));
    let between = async {
        world.peer.held.notified().await;
        meanwhile.await;
        world.peer.release.notify_one();
    };
    let ((status, body), ()) = tokio::join!(invite, between);
    (status.as_u16(), body)
}

#[tokio::test]
async fn an_invite_is_checked_again_against_the_room_as_it_is_when_signed() {
    for kind in test_backends() {
        let world = World::build(kind).await;
        let room_id = world
            .server
            .create_room(
                &world.alice,
                json!({"preset": "private_chat", "room_version": "10"}),
            )
            .await;
        let store = world.server.store();
        let room = store.room(&room_id).await.unwrap().unwrap();

        // The room moves on while the peer signs: the invite is appended on the state it was
        // built on, beside alice's message, and both stand.
        let (status, body) = invite_while_held(&world, &room_id, async {
            let (status, body) = world
                .server
                .put(
                    &format!(
                        "/_matrix/client/v3/rooms/{}/send/m.room.message/t1",
                        enc(&room_id)
                    ),
                    &world.alice.access_token,
                    json!({"msgtype": "m.text", "body": "meanwhile"}),
                )
                .await;
            assert_eq!(status, 200, "{body}");
        })
        .await;
        assert_eq!(status, 200, "{kind:?}: {body}");
        assert_eq!(
            store
                .membership(room.room_nid, BOB)
                .await
                .unwrap()
                .unwrap()
                .0,
            "invite",
            "{kind:?}"
        );
        assert_eq!(
            store
                .forward_extremities(room.room_nid)
                .await
                .unwrap()
                .len(),
            2,
            "{kind:?}: the invite and the message are both ends of the room"
        );
        // The next local event joins the two ends again.
        let (status, body) = world
            .server
            .put(
                &format!(
                    "/_matrix/client/v3/rooms/{}/send/m.room.message/t2",
                    enc(&room_id)
                ),
                &world.alice.access_token,
                json!({"msgtype": "m.text", "body": "after"}),
            )
            .await;
        assert_eq!(status, 200, "{kind:?}: {body}");
        assert_eq!(
            store
                .forward_extremities(room.room_nid)
                .await
                .unwrap()
                .len(),
            1,
            "{kind:?}"
        );

        // Alice leaves while the peer signs a second invite (of charlie): by then she may not
        // invite anyone, and the signed invite is refused, not stored.
        let charlie = "@charlie:peer.test";
        *world.peer.hold_invites.lock().unwrap() = true;
        let path = format!("/_matrix/client/v3/rooms/{}/invite", enc(&room_id));
        let invite = world.server.post(
            &path,
            &world.alice.access_token,
            json!({"user_id": charlie}),
        );
        let between = async {
            world.peer.held.notified().await;
            let (status, body) = world
                .server
                .post(
                    &format!("/_matrix/client/v3/rooms/{}/leave", enc(&room_id)),
                    &world.alice.access_token,
                    json!({}),
                )
                .await;
            assert_eq!(status, 200, "{body}");
            world.peer.release.notify_one();
        };
        let ((status, body), ()) = tokio::join!(invite, between);
        assert_eq!(status, 403, "{kind:?}: {body}");
        assert!(
            store
                .membership(room.room_nid, charlie)
                .await
                .unwrap()
                .is_none(),
            "{kind:?}"
        );
        world.stop().await;
    }
}

#[tokio::test]
async fn a_room_everyone_here_left_takes_an_invite_from_outside() {
    for kind in test_backends() {
        let world = World::build(kind).await;
        let room_id = world
            .server
            .create_room(
                &world.alice,
                json!({"preset": "public_chat", "room_version": "10", "name": "Old"}),
            )
            .await;
        let (status, body) = world
            .server
            .post(
                &format!("/_matrix/client/v3/rooms/{}/leave", enc(&room_id)),
                &world.alice.access_token,
                json!({}),
            )
            .await;
        assert_eq!(status, 200, "{body}");
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
            .unwrap();
        let create = room_event(&create.json);
        // Carol of the peer (in the room by now, as far as this server cannot know) invites
        // alice back: stored from outside, with the stripped state carol sent.
        let invite = peer_event(
            &world.key,
            &room_id,
            CAROL,
            "m.room.member",
            Some("@alice:hs.test"),
            json!({"membership": "invite"}),
            &[create.event_id()],
            &[create.event_id()],
            10,
        );
        let topic = json!({"type": "m.room.topic", "state_key": "", "sender": CAROL,
                           "content": {"topic": "from carol"}});
        world
            .send_invite("10", &invite, &[json_of(&create), topic])
            .await
            .unwrap();
        assert_eq!(
            store
                .event(invite.event_id())
                .await
                .unwrap()
                .unwrap()
                .status,
            myelin_store::EventStatus::Outlier,
            "{kind:?}"
        );
        let sync = world.sync(None).await;
        let events = sync["rooms"]["invite"][&room_id]["invite_state"]["events"]
            .as_array()
            .unwrap_or_else(|| panic!("{kind:?}: no invite in {sync}"));
        assert!(
            events
                .iter()
                .any(|e| e["type"] == "m.room.topic" && e["content"]["topic"] == "from carol"),
            "{kind:?}: {events:?}"
        );
        // Declining it goes to the peer (down here: out of band).
        *world.peer.leave_down.lock().unwrap() = true;
        let (status, body) = world
            .server
            .post(
                &format!("/_matrix/client/v3/rooms/{}/leave", enc(&room_id)),
                &world.alice.access_token,
                json!({}),
            )
            .await;
        assert_eq!(status, 200, "{kind:?}: {body}");
        assert_eq!(
            store
                .membership(room.room_nid, "@alice:hs.test")
                .await
                .unwrap()
                .unwrap()
                .0,
            "leave",
            "{kind:?}"
        );
        world.stop().await;
    }
}

/// An event of an account-key room (`org.matrix.12.4243`) signed by `key`, its sender's account
/// key; without `room_id` for the create event (the room id is its hash).
#[allow(clippy::too_many_arguments)]
fn account_key_room_event(
    key: &KeyPair,
    room_id: Option<&str>,
    sender: &str,
    kind: &str,
    state_key: Option<&str>,
    content: Value,
    prev: &[&str],
    depth: i64,
) -> Pdu {
    let partial = event_fields(room_id, sender, kind, state_key, content, prev, &[], depth);
    let version = RoomVersion::get("org.matrix.12.4243").unwrap();
    build_pdu(partial, version, EventSigner::Account(key)).unwrap()
}

/// An invite into a non-federating account-key room this server is not in (MSC4243.md Q9) is
/// judged by the create event it carries, as every PDU of a room this server is in is: from a
/// server other than the creator's, refused and nothing stored; the same invite from the
/// creator's server is taken.
#[tokio::test]
async fn an_invite_into_a_non_federating_account_key_room_comes_only_from_the_creators_server() {
    for kind in test_backends() {
        let world = World::build(kind).await;
        let creator = KeyPair::from_seed(&[61; 32]);
        let inviter = KeyPair::from_seed(&[62; 32]);
        for (creator_domain, refused) in [("third.test", true), (PEER, false)] {
            let creator_id = creator.account_key().user_id(creator_domain);
            let create = account_key_room_event(
                &creator,
                None,
                &creator_id,
                "m.room.create",
                Some(""),
                json!({"room_version": "org.matrix.12.4243", "m.federate": false}),
                &[],
                1,
            );
            let room_id = create.room_id_or_own().to_owned();
            let invite = account_key_room_event(
                &inviter,
                Some(&room_id),
                &inviter.account_key().user_id(PEER),
                "m.room.member",
                Some("@alice:hs.test"),
                json!({"membership": "invite"}),
                &[create.event_id()],
                2,
            );
            let answer = world
                .send_invite("org.matrix.12.4243", &invite, &[json_of(&create)])
                .await;
            let body = world.sync(None).await;
            let shown = body["rooms"]["invite"].get(&room_id).is_some();
            if refused {
                let (status, body) = status_of(answer.unwrap_err());
                assert_eq!(status, 403, "{kind:?}: {body}");
                assert!(
                    body["error"]
                        .as_str()
                        .unwrap_or_default()
                        .contains("does not federate"),
                    "{kind:?}: {body}"
                );
                assert!(!shown, "{kind:?}: the refused invite is not shown");
            } else {
                assert!(answer.is_ok(), "{kind:?}: {answer:?}");
                assert!(shown, "{kind:?}: the invite is shown");
            }
        }
        world.stop().await;
    }
}

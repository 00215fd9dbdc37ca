//! A deliberately misbehaving federation peer for tests of account-key rooms (MSC4243): a real
//! TLS endpoint on loopback with its own server key (its certificate from a [`TestCa`], its key
//! document served at `/_matrix/key/v2/server`), that takes part in rooms as a *stooge server*
//! and lies as a test tells it to.
//!
//! What it can do:
//! - mint account keys and join them to a room through `make_join`/`send_join` like an honest
//!   server ([`Rogue::join`]), or ask `make_join`/`send_join` for users of *other* domains
//!   ([`Rogue::make_join`], [`Rogue::send_join`]);
//! - build events signed by any account key it holds, claiming any domain, on the head of a
//!   running server's view of a room ([`Rogue::build_on`]), and send them in its own
//!   transactions ([`Rogue::send`]);
//! - answer `/query/accounts` per key as told ([`Answer`]): honestly, with a name signed by
//!   another key or not signed at all, `M_UNKNOWN`, leaving the key out, a forged or genuine
//!   `M_ERASED`, and add unrequested entries (forged erasures of other domains' keys) to every
//!   answer and to its erasure log; or fail every query ([`Rogue::fail_queries`]);
//! - take the transactions other servers send it, checking each PDU's account-key signature
//!   as a third server would ([`Rogue::received`]);
//! - read other servers' rooms over federation with signed requests (`/event`, `/state_ids`,
//!   `/state`).
//!
//! It serves `/event` and `/get_missing_events` from the events it sent or received, so a
//! server missing one of its events can fetch it. It checks no X-Matrix signature on what it is
//! sent: it is a test device, not a server.

use std::{
    collections::{BTreeMap, HashMap},
    net::SocketAddr,
    sync::{
        Arc, Mutex,
        atomic::{AtomicBool, Ordering},
    },
    time::Duration,
};

use axum::{
    Json, Router,
    extract::{Path, State},
    http::{HeaderMap, StatusCode},
    response::{IntoResponse, Response},
    routing::{get, post, put},
};
use base64::Engine;
use myelin_federation::{FederationClient, FederationClientConfig, FederationError};
use myelin_room_version::{
    CanonicalJsonValue, KeyPair, Pdu, RoomVersion,
    canonical::to_canonical_string,
    pdu::{EventSigner, build_pdu},
    query_accounts::{signed_account_answer, signed_erasure},
    signing::sign_json,
};
use ruma::{
    MilliSecondsSinceUnixEpoch, OwnedEventId, OwnedRoomId, OwnedServerName, OwnedUserId,
    RoomVersionId,
    api::federation::{
        event::{get_event, get_room_state, get_room_state_ids},
        membership::{create_join_event, prepare_join_event},
        transactions::send_transaction_message,
    },
};
use serde_json::{Map, Value, json, value::RawValue};

use crate::{TestServer, federation::TestCa};

/// The account-key room version.
pub const ACCOUNT_KEY_VERSION: &str = "org.matrix.12.4243";
/// The id of the rogue's server key.
pub const ROGUE_KEY_ID: &str = "ed25519:rogue";

/// How the rogue answers `/query/accounts` for one key.
#[derive(Clone, Debug)]
pub enum Answer {
    /// `{account_name, domain, signatures}` signed by `signer` (honest when `signer` is the key
    /// asked about and `domain` the rogue's own).
    Name {
        account_name: String,
        domain: String,
        signer: KeyPair,
    },
    /// `{account_name, domain}` with no `signatures` at all.
    Unsigned {
        account_name: String,
        domain: String,
    },
    /// `{errcode: "M_UNKNOWN"}`.
    Unknown,
    /// `{errcode: "M_ERASED", domain, signatures}` signed by `signer` (genuine only when the
    /// signer is the key and the domain the one the key is held under).
    Erased { domain: String, signer: KeyPair },
    /// Left out of the answer.
    Omit,
}

impl Answer {
    fn render(&self) -> Option<Value> {
        let object = match self {
            Answer::Name {
                account_name,
                domain,
                signer,
            } => signed_account_answer(signer, account_name, domain),
            Answer::Unsigned {
                account_name,
                domain,
            } => return Some(json!({"account_name": account_name, "domain": domain})),
            Answer::Unknown => return Some(json!({"errcode": "M_UNKNOWN"})),
            Answer::Erased { domain, signer } => signed_erasure(signer, domain),
            Answer::Omit => return None,
        };
        Some(serde_json::from_str(&to_canonical_string(&object)).expect("canonical JSON"))
    }
}

/// A PDU another server sent the rogue in a transaction, as a third server receives it.
#[derive(Clone, Debug)]
pub struct Received {
    /// The X-Matrix origin of the transaction.
    pub origin: String,
    pub event_id: String,
    pub json: Value,
    /// Whether it parses as an account-key PDU and its sender's account-key signature (and an
    /// authoriser's, on a restricted join) verifies with the key alone, no key fetched; the
    /// error otherwise.
    pub verified: Result<(), String>,
}

#[derive(Default)]
struct RogueState {
    name: String,
    /// `/query/accounts` answers by bare key; keys not listed get `M_UNKNOWN`.
    answers: Mutex<HashMap<String, Answer>>,
    /// Unrequested entries put into every `/query/accounts` answer.
    extra: Mutex<Vec<(String, Answer)>>,
    /// The erasure log served when a request carries `erasure` (all at position 7).
    erasure_log: Mutex<Vec<(String, Answer)>>,
    fail_queries: AtomicBool,
    /// The `/query/accounts` requests it had: (origin, body).
    queries: Mutex<Vec<(String, Value)>>,
    received: Mutex<Vec<Received>>,
    /// Every event it can serve, by id.
    events: Mutex<HashMap<String, Value>>,
}

/// The misbehaving peer. Stops when dropped.
pub struct Rogue {
    name: String,
    addr: SocketAddr,
    ca_path: std::path::PathBuf,
    server_key: KeyPair,
    state: Arc<RogueState>,
    client: Option<FederationClient>,
    task: tokio::task::JoinHandle<()>,
}

impl std::fmt::Debug for Rogue {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Rogue")
            .field("name", &self.name)
            .field("addr", &self.addr)
            .finish()
    }
}

impl Drop for Rogue {
    fn drop(&mut self) {
        self.task.abort();
    }
}

type App = Arc<(Arc<RogueState>, KeyPair)>;

impl Rogue {
    /// Starts the rogue `name` on loopback, with a certificate of `ca` for its name. Point the
    /// servers at it with `federation.destination_overrides` (`name` → [`Rogue::addr`]), then
    /// call [`Rogue::reach`] so it can send to them.
    pub async fn start(ca: &TestCa, name: &str) -> Rogue {
        crate::install_crypto_provider();
        let mut seed = [0u8; 32];
        for (i, byte) in name.bytes().enumerate() {
            seed[i % 32] ^= byte;
        }
        seed[31] ^= 0x5a;
        let server_key = KeyPair::from_seed(&seed);
        let (cert, key) = ca.issue(name);
        let tls = myelin::tls::server_config(&cert, &key).expect("rogue TLS config");
        let tcp = tokio::net::TcpListener::bind("127.0.0.1:0")
            .await
            .expect("rogue listener");
        let addr = tcp.local_addr().expect("rogue address");
        let listener = myelin::tls::TlsListener::new(tcp, tls).expect("rogue TLS listener");
        let state = Arc::new(RogueState {
            name: name.to_owned(),
            ..RogueState::default()
        });
        let app: App = Arc::new((state.clone(), server_key.clone()));
        let router = Router::new()
            .route("/_matrix/key/v2/server", get(key_document))
            .route("/_matrix/federation/v1/send/{txn_id}", put(transaction))
            .route(
                "/_matrix/federation/unstable/org.matrix.msc4243/query/accounts",
                post(query_accounts),
            )
            .route("/_matrix/federation/v1/event/{event_id}", get(event))
            .route(
                "/_matrix/federation/v1/get_missing_events/{room_id}",
                post(missing_events),
            )
            .with_state(app);
        let task = tokio::spawn(async move {
            let _ = axum::serve(listener, router.into_make_service()).await;
        });
        Rogue {
            name: name.to_owned(),
            addr,
            ca_path: ca.cert_path(),
            server_key,
            state,
            client: None,
            task,
        }
    }

    /// Its server name.
    pub fn name(&self) -> &str {
        &self.name
    }

    /// Its federation listener.
    pub fn addr(&self) -> SocketAddr {
        self.addr
    }

    /// Lets the rogue send to `servers` (signed as itself, trusting the CA).
    pub fn reach(&mut self, servers: &[TestServer]) {
        let overrides: BTreeMap<String, String> = servers
            .iter()
            .map(|s| (s.name().to_owned(), s.addrs().1.to_string()))
            .collect();
        self.client = Some(
            FederationClient::new(
                FederationClientConfig {
                    server_name: self.name.as_str().try_into().expect("server name"),
                    key_id: ROGUE_KEY_ID.to_owned(),
                    trusted_ca_files: vec![self.ca_path.clone()],
                    verify_certificates: true,
                    destination_overrides: overrides,
                    allow_private_addresses: true,
                    timeout: Duration::from_secs(30),
                    max_response_size: 16 * 1024 * 1024,
                },
                self.server_key.clone(),
            )
            .expect("rogue federation client"),
        );
    }

    fn client(&self) -> &FederationClient {
        self.client.as_ref().expect("Rogue::reach first")
    }

    /// A new account key of the rogue, made from `label` (the same label, the same key), that
    /// it answers for honestly as `@<label>:<its name>` until told otherwise.
    pub fn mint(&self, label: &str) -> KeyPair {
        let mut seed = [0x33u8; 32];
        for (i, byte) in label.bytes().enumerate() {
            seed[i % 32] = seed[i % 32].wrapping_mul(31).wrapping_add(byte);
        }
        let key = KeyPair::from_seed(&seed);
        self.adopt(&key, label);
        key
    }

    /// Answers honestly-looking for `key` (which may be another server's user's, leaked to the
    /// rogue) as `@<account_name>:<its name>`, signed by the key.
    pub fn adopt(&self, key: &KeyPair, account_name: &str) {
        self.answer(
            key,
            Answer::Name {
                account_name: account_name.to_owned(),
                domain: self.name.clone(),
                signer: key.clone(),
            },
        );
    }

    /// How `/query/accounts` answers for `key` from now on.
    pub fn answer(&self, key: &KeyPair, answer: Answer) {
        self.answer_for(key.account_key().as_str(), answer);
    }

    /// How `/query/accounts` answers for the bare key `key` from now on.
    pub fn answer_for(&self, key: &str, answer: Answer) {
        self.state
            .answers
            .lock()
            .unwrap()
            .insert(key.to_owned(), answer);
    }

    /// Puts `answer` for the bare key `key`, unrequested, into every `/query/accounts` answer.
    pub fn add_unrequested(&self, key: &str, answer: Answer) {
        self.state
            .extra
            .lock()
            .unwrap()
            .push((key.to_owned(), answer));
    }

    /// Lists `answer` for the bare key `key` in its erasure log.
    pub fn add_to_erasure_log(&self, key: &str, answer: Answer) {
        self.state
            .erasure_log
            .lock()
            .unwrap()
            .push((key.to_owned(), answer));
    }

    /// Answers every `/query/accounts` with 500 (`true`) or as told per key (`false`).
    pub fn fail_queries(&self, fail: bool) {
        self.state.fail_queries.store(fail, Ordering::SeqCst);
    }

    /// The `/query/accounts` requests it had so far: (origin, body).
    pub fn queries(&self) -> Vec<(String, Value)> {
        self.state.queries.lock().unwrap().clone()
    }

    /// Whether `origin` asked it about the bare key `key`.
    pub fn was_asked(&self, origin: &str, key: &str) -> bool {
        self.queries().iter().any(|(o, body)| {
            o == origin
                && body["account_keys"]
                    .as_array()
                    .is_some_and(|keys| keys.iter().any(|k| k == key))
        })
    }

    /// The PDUs it was sent so far.
    pub fn received(&self) -> Vec<Received> {
        self.state.received.lock().unwrap().clone()
    }

    /// Makes the rogue able to serve `pdu` (`/event`, `/get_missing_events`).
    pub fn hold(&self, pdu: &Pdu) {
        self.state
            .events
            .lock()
            .unwrap()
            .insert(pdu.event_id().to_owned(), pdu_json(pdu));
    }

    /// `GET /make_join` for `user_id` at `destination`, offering the account-key version: the
    /// template event.
    pub async fn make_join(
        &self,
        destination: &str,
        room_id: &str,
        user_id: &str,
    ) -> Result<Value, FederationError> {
        let mut request = prepare_join_event::v1::Request::new(
            OwnedRoomId::try_from(room_id).expect("room id"),
            OwnedUserId::try_from(user_id).expect("user id"),
        );
        request.ver = vec![RoomVersionId::try_from(ACCOUNT_KEY_VERSION).expect("version")];
        let answer = self.client().send(&server(destination), request).await?;
        Ok(serde_json::from_str(answer.event.get()).expect("template JSON"))
    }

    /// `PUT /v2/send_join` of `pdu` at `destination`: the state and auth chain it answered
    /// (also held by the rogue from then on).
    pub async fn send_join(
        &self,
        destination: &str,
        pdu: &Pdu,
    ) -> Result<create_join_event::v2::RoomState, FederationError> {
        self.hold(pdu);
        let request = create_join_event::v2::Request::new(
            OwnedRoomId::try_from(pdu.room_id().expect("room id")).expect("room id"),
            OwnedEventId::try_from(pdu.event_id()).expect("event id"),
            raw(&pdu_json(pdu)),
        );
        let answer = self.client().send(&server(destination), request).await?;
        let mut events = self.state.events.lock().unwrap();
        for raw_event in answer
            .room_state
            .state
            .iter()
            .chain(&answer.room_state.auth_chain)
        {
            if let Ok(pdu) = parse(raw_event.get()) {
                events.insert(pdu.event_id().to_owned(), pdu_json(&pdu));
            }
        }
        Ok(answer.room_state)
    }

    /// Joins `@<key>:<domain>` to `room_id` through `destination` (`make_join`, signed by `key`,
    /// `send_join`): the join event.
    pub async fn join(
        &self,
        destination: &str,
        room_id: &str,
        key: &KeyPair,
        domain: &str,
    ) -> Result<Pdu, FederationError> {
        let template = self
            .make_join(destination, room_id, &key.account_key().user_id(domain))
            .await?;
        let pdu = sign_template(template, key);
        self.send_join(destination, &pdu).await?;
        Ok(pdu)
    }

    /// An event of `@<key>:<domain>` signed by `key`, on the head of `view`'s copy of the room,
    /// citing the auth events `view`'s current state gives it.
    #[allow(clippy::too_many_arguments)]
    pub async fn build_on(
        &self,
        view: &TestServer,
        room_id: &str,
        key: &KeyPair,
        domain: &str,
        event_type: &str,
        state_key: Option<&str>,
        content: Value,
    ) -> Pdu {
        let version = RoomVersion::get(ACCOUNT_KEY_VERSION).expect("version");
        let store = view.store();
        let room = store
            .room(room_id)
            .await
            .unwrap()
            .expect("room on the view");
        let head = store
            .send_context(room.room_nid, &[], None)
            .await
            .unwrap()
            .head;
        let sender = key.account_key().user_id(domain);
        let content_raw = raw(&content);
        let auth_types = myelin_room_version::auth::auth_types_for_event(
            version,
            event_type,
            &sender,
            state_key,
            &content_raw,
        )
        .expect("auth types");
        let auth_events: Vec<String> = store
            .current_state(room.room_nid, Some(&auth_types))
            .await
            .unwrap()
            .into_iter()
            .map(|row| row.event_id)
            .collect();
        let mut partial = json!({
            "type": event_type,
            "room_id": room_id,
            "sender": sender,
            "content": content,
            "prev_events": head.prev_event_ids,
            "auth_events": auth_events,
            "depth": head.max_depth + 1,
            "origin_server_ts": now_ms(),
        });
        if let Some(state_key) = state_key {
            partial["state_key"] = json!(state_key);
        }
        let CanonicalJsonValue::Object(partial) =
            CanonicalJsonValue::try_from(partial).expect("canonical")
        else {
            unreachable!()
        };
        build_pdu(partial, version, EventSigner::Account(key)).expect("event builds")
    }

    /// Sends `pdus` to `destination` in the rogue's transaction `txn_id` (and holds them): the
    /// answer's `pdus` (event id → error, if any).
    pub async fn send(
        &self,
        destination: &str,
        txn_id: &str,
        pdus: &[&Pdu],
    ) -> Result<HashMap<String, Option<String>>, FederationError> {
        let mut request = send_transaction_message::v1::Request::new(
            txn_id.into(),
            self.name.as_str().try_into().expect("server name"),
            MilliSecondsSinceUnixEpoch::now(),
        );
        for pdu in pdus {
            self.hold(pdu);
        }
        request.pdus = pdus.iter().map(|pdu| raw(&pdu_json(pdu))).collect();
        let answer = self.client().send(&server(destination), request).await?;
        Ok(answer
            .pdus
            .into_iter()
            .map(|(id, result)| (id.to_string(), result.err()))
            .collect())
    }

    /// `GET /event/{eventId}` at `destination`, signed: the PDU as that server stores it.
    pub async fn get_event(
        &self,
        destination: &str,
        event_id: &str,
    ) -> Result<Value, FederationError> {
        let request = get_event::v1::Request::new(OwnedEventId::try_from(event_id).expect("id"));
        let answer = self.client().send(&server(destination), request).await?;
        Ok(serde_json::from_str(answer.pdu.get()).expect("PDU JSON"))
    }

    /// `GET /state_ids/{roomId}?event_id=`: the state at `event_id` and its auth chain, as ids.
    pub async fn state_ids(
        &self,
        destination: &str,
        room_id: &str,
        event_id: &str,
    ) -> Result<(Vec<String>, Vec<String>), FederationError> {
        let request = get_room_state_ids::v1::Request::new(
            OwnedEventId::try_from(event_id).expect("id"),
            OwnedRoomId::try_from(room_id).expect("room id"),
        );
        let answer = self.client().send(&server(destination), request).await?;
        Ok((
            answer.pdu_ids.iter().map(ToString::to_string).collect(),
            answer
                .auth_chain_ids
                .iter()
                .map(ToString::to_string)
                .collect(),
        ))
    }

    /// `GET /state/{roomId}?event_id=`: the state events at `event_id`.
    pub async fn state(
        &self,
        destination: &str,
        room_id: &str,
        event_id: &str,
    ) -> Result<Vec<Value>, FederationError> {
        let request = get_room_state::v1::Request::new(
            OwnedEventId::try_from(event_id).expect("id"),
            OwnedRoomId::try_from(room_id).expect("room id"),
        );
        let answer = self.client().send(&server(destination), request).await?;
        Ok(answer
            .pdus
            .iter()
            .map(|pdu| serde_json::from_str(pdu.get()).expect("PDU JSON"))
            .collect())
    }
}

/// A `make_join`/`make_leave` template filled in and signed by `key` (its sender's account key).
pub fn sign_template(template: Value, key: &KeyPair) -> Pdu {
    let mut template = template;
    template["origin_server_ts"] = json!(now_ms());
    let CanonicalJsonValue::Object(partial) =
        CanonicalJsonValue::try_from(template).expect("canonical template")
    else {
        panic!("a template is an object")
    };
    build_pdu(
        partial,
        RoomVersion::get(ACCOUNT_KEY_VERSION).expect("version"),
        EventSigner::Account(key),
    )
    .expect("template signs")
}

fn server(name: &str) -> OwnedServerName {
    name.try_into().expect("server name")
}

fn now_ms() -> u64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .expect("clock")
        .as_millis() as u64
}

fn raw(value: &Value) -> Box<RawValue> {
    RawValue::from_string(value.to_string()).expect("raw JSON")
}

/// A PDU as JSON (what goes on the wire).
pub fn pdu_json(pdu: &Pdu) -> Value {
    serde_json::from_str(&pdu.canonical_json()).expect("PDU JSON")
}

fn parse(json: &str) -> Result<Pdu, String> {
    let version = RoomVersion::get(ACCOUNT_KEY_VERSION).expect("version");
    Pdu::from_federation(json.as_bytes(), version).map_err(|e| e.to_string())
}

/// The X-Matrix origin of a request (unchecked).
fn origin_of(headers: &HeaderMap) -> String {
    headers
        .get(axum::http::header::AUTHORIZATION)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.split("origin=").nth(1))
        .map(|rest| {
            rest.trim_start_matches('"')
                .split(['"', ','])
                .next()
                .unwrap_or_default()
                .to_owned()
        })
        .unwrap_or_default()
}

async fn key_document(State(app): State<App>) -> Json<Value> {
    let (state, key) = &*app;
    let public = base64::engine::general_purpose::STANDARD_NO_PAD.encode(key.public_key());
    let unsigned = json!({
        "server_name": state.name,
        "verify_keys": { ROGUE_KEY_ID: { "key": public } },
        "old_verify_keys": {},
        "valid_until_ts": now_ms() + 24 * 60 * 60 * 1000,
    });
    let CanonicalJsonValue::Object(mut object) =
        CanonicalJsonValue::try_from(unsigned).expect("canonical")
    else {
        unreachable!()
    };
    sign_json(&mut object, &state.name, ROGUE_KEY_ID, key).expect("key document signs");
    Json(serde_json::to_value(&object).expect("JSON"))
}

async fn transaction(
    State(app): State<App>,
    headers: HeaderMap,
    Path(_txn_id): Path<String>,
    Json(body): Json<Value>,
) -> Json<Value> {
    let (state, _) = &*app;
    let origin = origin_of(&headers);
    let version = RoomVersion::get(ACCOUNT_KEY_VERSION).expect("version");
    let mut answers = Map::new();
    for json in body["pdus"].as_array().into_iter().flatten() {
        let text = json.to_string();
        let (event_id, verified) = match parse(&text) {
            Ok(pdu) => {
                let verified =
                    myelin_room_version::verify::verify_pdu(&pdu, version, &Default::default())
                        .map(|_| ())
                        .map_err(|e| e.to_string());
                state
                    .events
                    .lock()
                    .unwrap()
                    .insert(pdu.event_id().to_owned(), pdu_json(&pdu));
                (pdu.event_id().to_owned(), verified)
            }
            Err(e) => (String::new(), Err(e)),
        };
        if !event_id.is_empty() {
            answers.insert(event_id.clone(), json!({}));
        }
        state.received.lock().unwrap().push(Received {
            origin: origin.clone(),
            event_id,
            json: json.clone(),
            verified,
        });
    }
    Json(json!({ "pdus": answers }))
}

async fn query_accounts(
    State(app): State<App>,
    headers: HeaderMap,
    Json(body): Json<Value>,
) -> Response {
    let (state, _) = &*app;
    state
        .queries
        .lock()
        .unwrap()
        .push((origin_of(&headers), body.clone()));
    if state.fail_queries.load(Ordering::SeqCst) {
        return (
            StatusCode::INTERNAL_SERVER_ERROR,
            Json(json!({"errcode": "M_UNKNOWN", "error": "down"})),
        )
            .into_response();
    }
    let mut out = Map::new();
    let answers = state.answers.lock().unwrap().clone();
    for key in body["account_keys"]
        .as_array()
        .into_iter()
        .flatten()
        .filter_map(Value::as_str)
    {
        let answer = answers.get(key).cloned().unwrap_or(Answer::Unknown);
        if let Some(rendered) = answer.render() {
            out.insert(key.to_owned(), rendered);
        }
    }
    for (key, answer) in state.extra.lock().unwrap().iter() {
        if let Some(rendered) = answer.render() {
            out.insert(key.clone(), rendered);
        }
    }
    let mut reply = json!({});
    if body.get("erasure").is_some() {
        let after = body["erasure"]["id"].as_i64().unwrap_or(0);
        if after < 7 {
            for (key, answer) in state.erasure_log.lock().unwrap().iter() {
                if let Some(rendered) = answer.render() {
                    out.insert(key.clone(), rendered);
                }
            }
        }
        reply["erasure"] = json!({"id": 7, "has_more": false});
    }
    reply["account_keys"] = Value::Object(out);
    Json(reply).into_response()
}

async fn event(State(app): State<App>, Path(event_id): Path<String>) -> Response {
    let (state, _) = &*app;
    match state.events.lock().unwrap().get(&event_id) {
        Some(pdu) => Json(json!({
            "origin": state.name,
            "origin_server_ts": now_ms(),
            "pdus": [pdu],
        }))
        .into_response(),
        None => (
            StatusCode::NOT_FOUND,
            Json(json!({"errcode": "M_NOT_FOUND", "error": "not held"})),
        )
            .into_response(),
    }
}

/// Walks back from `latest_events` to `earliest_events` through the events it holds.
async fn missing_events(
    State(app): State<App>,
    Path(_room_id): Path<String>,
    Json(body): Json<Value>,
) -> Json<Value> {
    let (state, _) = &*app;
    let ids = |field: &str| -> Vec<String> {
        body[field]
            .as_array()
            .into_iter()
            .flatten()
            .filter_map(|v| v.as_str().map(str::to_owned))
            .collect()
    };
    let limit = body["limit"].as_u64().unwrap_or(10) as usize;
    let events = state.events.lock().unwrap().clone();
    let found = crate::peer_graph::walk_back(
        &events,
        &ids("latest_events"),
        &ids("earliest_events"),
        limit,
    );
    Json(json!({ "events": found }))
}

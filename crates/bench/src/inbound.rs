//! Inbound federation (issue 15): PDUs per second a server accepts from another server, with
//! every check, in transactions of 50 PDUs into one room.
//!
//! The other server is a fake peer run by this process: its own server name
//! (`localhost:<--peer-port>`), an ed25519 signing key, and a TLS listener (`--peer-cert`,
//! `--peer-key`, from a private CA the server under test trusts) serving its key document and
//! what a server may ask of a room's member (`/event`, `/state_ids`, `/state`, `/event_auth`,
//! `/get_missing_events`, `/query/profile`, `/version`; `/send` taken and ignored). Per run:
//!
//! 1. a local user of the server under test creates a public room through the client API;
//! 2. the peer's user joins it through the membership handshake (`make_join`, then the template
//!    signed by the peer through `/v2/send_join`, X-Matrix signed requests);
//! 3. the peer builds and signs `--warmup-txns` + `--txns` transactions of `--pdus-per-txn`
//!    `m.room.message` PDUs (content hash, signature, `auth_events` = create (before room
//!    version 12), power levels, its join; `prev_events` a line from its join, depth rising),
//!    all before the clock starts, so that the peer's own work is not measured;
//! 4. it sends the warm-up transactions, one at a time, each until its last PDU is visible to
//!    the local user;
//! 5. timed: the other transactions, one in flight at a time, each answer's per-PDU map checked
//!    (a PDU refused fails the run), and with `--pace visible` (the default) the next one sent
//!    only once the last PDU of this one is visible to the local user (polling
//!    `GET /rooms/{room}/event/{id}`), with `--pace answered` as soon as it is answered; the
//!    clock stops when the last PDU is visible;
//! 6. untimed: the local user pages back through `/messages` and every PDU sent must be there.
//!
//! Why the pacing: Synapse answers `/send` once each PDU's signatures and hashes are checked and
//! the PDU is staged; the auth checks and persistence run after, in the background
//! (`_process_incoming_pdus_in_room_inner` of `federation/federation_server.py`), and once 100
//! PDUs of a room wait there it drops all but the newest. A sender that goes on when answered
//! outruns it and PDUs are lost (the run fails step 6). Myelin answers once the PDUs are checked
//! and stored, so both paces are the same to it but for one poll per transaction.
//!
//! Two rates per run: PDUs over the time from the first timed transaction sent until the last
//! was answered, and until its last PDU was visible to the local user ("accepted with every
//! check": the rate compared across servers).

use myelin_testkit::peer_graph::walk_back;
use std::collections::{BTreeMap, HashMap, HashSet};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use anyhow::{Context, Result, bail, ensure};
use axum::{
    Json, Router,
    extract::{MatchedPath, Path as UrlPath, Query, Request, State},
    http::StatusCode,
    middleware::Next,
    response::{IntoResponse, Response},
    routing::{get, post, put},
};
use base64::{Engine, engine::general_purpose::STANDARD_NO_PAD};
use clap::ValueEnum;
use myelin_federation::{FederationClient, FederationClientConfig};
use myelin_room_version::{
    CanonicalJsonObject, CanonicalJsonValue, EventSigner, KeyPair, Pdu, RoomVersion,
    pdu::build_pdu, signing::sign_json, version::RoomIdFormat,
};
use ruma::{
    MilliSecondsSinceUnixEpoch, OwnedServerName, RoomVersionId,
    api::federation::{
        membership::{create_join_event, prepare_join_event},
        transactions::send_transaction_message,
    },
};
use serde_json::{Value, json, value::RawValue};
use tokio::net::TcpListener;

use myelin::tls::{TlsListener, server_config};

use crate::client::User;
use crate::stats::{percentile, round3, summarize};
use crate::{Args, Ctx};

/// When the peer sends its next transaction.
#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
pub enum Pace {
    /// Once the last PDU of the one before is visible to the local user. Synapse answers after
    /// staging a transaction's PDUs and processes them after; once 100 PDUs of a room wait in
    /// its staging area it drops all but the newest (`prune_staged_events_in_room` of
    /// `storage/databases/main/event_federation.py`), so a sender that does not wait loses PDUs.
    Visible,
    /// Once the one before is answered (as a real sender does).
    Answered,
}

/// The key id of the peer's signing key.
const KEY_ID: &str = "ed25519:bench";
/// The most PDUs a transaction may carry (the spec's limit).
const MAX_PDUS_PER_TXN: usize = 50;
/// How long the last PDU may take to become visible after its transaction was answered.
const VISIBLE_WITHIN: Duration = Duration::from_secs(300);

/// A room's state as event ids, and the auth chain of that state.
type StateIds = (Vec<String>, Vec<String>);

/// What the peer holds and serves, and the requests it had.
struct PeerState {
    name: String,
    key: KeyPair,
    /// Every event it can serve, by id: its own and the state and auth chain of its rooms.
    events: Mutex<HashMap<String, Value>>,
    /// Per room: the state after its join (event ids) and the auth chain of that state.
    rooms: Mutex<HashMap<String, StateIds>>,
    /// Requests by method and route, for the report (what the server under test asked).
    requests: Mutex<BTreeMap<String, u64>>,
}

/// The fake peer: its state (shared with its HTTP handlers) and a client that signs its
/// requests to the server under test.
pub struct Peer {
    state: Arc<PeerState>,
    client: FederationClient,
    target: OwnedServerName,
    user_id: String,
}

/// A room the peer joined.
struct Joined {
    room_id: String,
    version: &'static RoomVersion,
    join: Pdu,
    /// `auth_events` of the peer's messages: create (before version 12), power levels, join.
    auth: Vec<String>,
}

impl Peer {
    /// Starts the peer's TLS listener on `127.0.0.1:port` and its client aimed at `target`
    /// (reached at `target_addr` when given, else by discovery).
    pub async fn start(args: &Args) -> Result<Peer> {
        let port = args.peer_port.context("inbound needs --peer-port")?;
        let cert = args
            .peer_cert
            .as_deref()
            .context("inbound needs --peer-cert")?;
        let key_file = args
            .peer_key
            .as_deref()
            .context("inbound needs --peer-key")?;
        let ca = args.ca.clone().context("inbound needs --ca")?;
        let target = args
            .target_name
            .clone()
            .context("inbound needs --target-name")?;
        let name = format!("localhost:{port}");
        let key = KeyPair::from_seed(&seed_for(&name));
        let state = Arc::new(PeerState {
            name: name.clone(),
            key: key.clone(),
            events: Mutex::default(),
            rooms: Mutex::default(),
            requests: Mutex::default(),
        });
        let tcp = TcpListener::bind(("127.0.0.1", port))
            .await
            .with_context(|| format!("binding the peer's port {port}"))?;
        // The server's own TLS listener (myelin::tls), so the peer speaks TLS as Myelin does.
        let listener = TlsListener::new(tcp, server_config(cert, key_file)?)?;
        let app = router(state.clone());
        tokio::spawn(async move {
            let _ = axum::serve(listener, app.into_make_service()).await;
        });
        let mut overrides = BTreeMap::new();
        if let Some(addr) = &args.target_addr {
            overrides.insert(target.clone(), addr.clone());
        }
        let client = FederationClient::new(
            FederationClientConfig {
                server_name: name.clone().try_into().context("peer server name")?,
                key_id: KEY_ID.to_owned(),
                trusted_ca_files: vec![ca],
                verify_certificates: true,
                destination_overrides: overrides,
                allow_private_addresses: true,
                timeout: Duration::from_secs(600),
                max_response_size: 256 * 1024 * 1024,
            },
            key,
        )
        .map_err(|e| anyhow::anyhow!("peer federation client: {e}"))?;
        Ok(Peer {
            user_id: format!("@inbound_peer:{name}"),
            target: target.try_into().context("--target-name")?,
            state,
            client,
        })
    }

    /// Joins `room_id` through `make_join` and `/v2/send_join`.
    async fn join(&self, room_id: &str, version: &'static RoomVersion) -> Result<Joined> {
        let mut make = prepare_join_event::v1::Request::new(
            room_id.try_into().context("room id")?,
            self.user_id.as_str().try_into().context("peer user id")?,
        );
        make.ver = vec![RoomVersionId::try_from(version.id()).context("room version id")?];
        let template = self
            .client
            .send(&self.target, make)
            .await
            .map_err(|e| anyhow::anyhow!("make_join: {e}"))?;
        if let Some(v) = &template.room_version {
            ensure!(
                v.as_str() == version.id(),
                "make_join answered room version {v}, expected {}",
                version.id()
            );
        }
        let template: Value =
            serde_json::from_str(template.event.get()).context("make_join event")?;
        let CanonicalJsonValue::Object(mut partial) =
            CanonicalJsonValue::try_from(template).context("make_join event")?
        else {
            bail!("make_join's event is not an object");
        };
        partial.insert("origin_server_ts".to_owned(), now_ms());
        let join = build_pdu(partial, version, self.signer()).context("building the join")?;
        let send = create_join_event::v2::Request::new(
            room_id.try_into().context("room id")?,
            join.event_id().try_into().context("join event id")?,
            raw(&join.canonical_json())?,
        );
        let answer = self
            .client
            .send(&self.target, send)
            .await
            .map_err(|e| anyhow::anyhow!("send_join: {e}"))?
            .room_state;
        let parse = |raws: &[Box<RawValue>]| -> Result<Vec<Pdu>> {
            raws.iter()
                .map(|r| {
                    Pdu::from_federation(r.get().as_bytes(), version)
                        .context("an event of send_join's answer")
                })
                .collect()
        };
        let state = parse(&answer.state)?;
        let chain = parse(&answer.auth_chain)?;
        let find = |kind: &str| {
            state
                .iter()
                .find(|p| p.event_type() == kind && p.state_key() == Some(""))
                .map(|p| p.event_id().to_owned())
                .with_context(|| format!("no {kind} in send_join's state"))
        };
        let create = find("m.room.create")?;
        let power = find("m.room.power_levels")?;
        let mut auth = Vec::new();
        if version.room_id_format() != RoomIdFormat::CreateEventHash {
            auth.push(create);
        }
        auth.extend([power, join.event_id().to_owned()]);
        // What the peer can serve of the room: the state after its join and its auth chain.
        let mut state_ids: Vec<String> = state
            .iter()
            .filter(|p| {
                !(p.event_type() == "m.room.member" && p.state_key() == Some(&self.user_id))
            })
            .map(|p| p.event_id().to_owned())
            .collect();
        state_ids.push(join.event_id().to_owned());
        let chain_ids = chain.iter().map(|p| p.event_id().to_owned()).collect();
        {
            let mut events = self.state.events.lock().unwrap();
            for pdu in state.iter().chain(&chain).chain([&join]) {
                events.insert(pdu.event_id().to_owned(), json_of(pdu)?);
            }
        }
        self.state
            .rooms
            .lock()
            .unwrap()
            .insert(room_id.to_owned(), (state_ids, chain_ids));
        Ok(Joined {
            room_id: room_id.to_owned(),
            version,
            join,
            auth,
        })
    }

    fn signer(&self) -> EventSigner<'_> {
        EventSigner::Server {
            server_name: &self.state.name,
            key_id: KEY_ID,
            key: &self.state.key,
        }
    }

    /// `n` messages of the peer's user in a line on top of its join, held for serving.
    fn messages(&self, joined: &Joined, n: usize, tag: &str) -> Result<Vec<Pdu>> {
        let out = build_messages(self.signer(), &self.user_id, joined, n, tag)?;
        let mut events = self.state.events.lock().unwrap();
        for pdu in &out {
            events.insert(pdu.event_id().to_owned(), json_of(pdu)?);
        }
        Ok(out)
    }

    /// Sends one transaction and checks that every PDU of it was accepted.
    async fn send(&self, txn_id: &str, pdus: &[Pdu]) -> Result<()> {
        let mut request = send_transaction_message::v1::Request::new(
            txn_id.into(),
            self.state.name.as_str().try_into().context("origin")?,
            MilliSecondsSinceUnixEpoch::now(),
        );
        request.pdus = pdus
            .iter()
            .map(|p| raw(&p.canonical_json()))
            .collect::<Result<_>>()?;
        let answer = self
            .client
            .send(&self.target, request)
            .await
            .map_err(|e| anyhow::anyhow!("transaction {txn_id}: {e}"))?;
        for pdu in pdus {
            match answer
                .pdus
                .iter()
                .find(|(id, _)| id.as_str() == pdu.event_id())
            {
                Some((_, Ok(()))) => {}
                Some((id, Err(e))) => bail!("transaction {txn_id}: {id} refused: {e}"),
                None => bail!(
                    "transaction {txn_id}: no result for {} ({} results)",
                    pdu.event_id(),
                    answer.pdus.len()
                ),
            }
        }
        Ok(())
    }

    fn requests(&self) -> Value {
        json!(*self.state.requests.lock().unwrap())
    }
}

/// The inbound scenario: `--runs` runs, each in a fresh room (see the module's comment).
pub async fn inbound(ctx: &Ctx, args: &Args) -> Result<Value> {
    ensure!(
        (1..=MAX_PDUS_PER_TXN).contains(&args.pdus_per_txn),
        "--pdus-per-txn must be 1 to {MAX_PDUS_PER_TXN}"
    );
    ensure!(args.txns > 0, "--txns must be at least 1");
    let version = RoomVersion::get(&args.room_version)
        .map_err(|e| anyhow::anyhow!("--room-version {}: {e:?}", args.room_version))?;
    let peer = Peer::start(args).await?;
    let local = ctx.user("i").await?;
    let mut runs = Vec::with_capacity(args.runs);
    for run in 0..args.runs {
        if ctx.timed_out() {
            break;
        }
        runs.push(
            one_run(ctx, args, &peer, &local, version, run)
                .await
                .with_context(|| format!("run {run}"))?,
        );
    }
    let median = |field: &str| {
        let mut values: Vec<f64> = runs.iter().filter_map(|r| r[field].as_f64()).collect();
        values.sort_by(f64::total_cmp);
        percentile(&values, 50.0).map(round3)
    };
    Ok(json!({
        "peer": peer.state.name,
        "target": peer.target.as_str(),
        "room_version": version.id(),
        "pdus_per_txn": args.pdus_per_txn,
        "pace": args.pace.to_possible_value().map(|v| v.get_name().to_owned()),
        "txns": args.txns,
        "warmup_txns": args.warmup_txns,
        "runs": runs.len(),
        "pdus_per_second_visible_median": median("pdus_per_second_visible"),
        "pdus_per_second_answered_median": median("pdus_per_second_answered"),
        "per_run": runs,
        "peer_requests": peer.requests(),
    }))
}

async fn one_run(
    ctx: &Ctx,
    args: &Args,
    peer: &Peer,
    local: &User,
    version: &'static RoomVersion,
    run: usize,
) -> Result<Value> {
    let room = ctx
        .server
        .create_room_version(local, "bench inbound", Some(version.id()))
        .await?;
    let t = Instant::now();
    let joined = peer.join(&room, version).await?;
    let join_s = t.elapsed().as_secs_f64();

    let per = args.pdus_per_txn;
    let t = Instant::now();
    let pdus = peer.messages(
        &joined,
        (args.warmup_txns + args.txns) * per,
        &format!("{}r{run}", ctx.prefix),
    )?;
    let build_s = t.elapsed().as_secs_f64();
    let (warmup, timed) = pdus.split_at(args.warmup_txns * per);
    let txn_id = |i: usize| format!("{}r{run}t{i}", ctx.prefix);

    for (i, chunk) in warmup.chunks(per).enumerate() {
        peer.send(&txn_id(i), chunk).await?;
        if let Some(last) = chunk.last() {
            wait_visible(ctx, local, &room, last.event_id()).await?;
        }
    }

    let mut latency = Vec::with_capacity(args.txns);
    let mut polls = 0;
    let start = Instant::now();
    for (i, chunk) in timed.chunks(per).enumerate() {
        let t = Instant::now();
        peer.send(&txn_id(args.warmup_txns + i), chunk).await?;
        if args.pace == Pace::Visible
            && let Some(last) = chunk.last()
        {
            polls += wait_visible(ctx, local, &room, last.event_id()).await?;
        }
        latency.push(t.elapsed());
    }
    let answered = start.elapsed().as_secs_f64();
    let last = timed.last().context("no timed PDU")?;
    polls += wait_visible(ctx, local, &room, last.event_id()).await?;
    let visible = start.elapsed().as_secs_f64();

    let wanted: HashSet<&str> = pdus.iter().map(Pdu::event_id).collect();
    let (found, pages) = timeline_ids(ctx, local, &room, &wanted).await?;
    let missing = wanted.iter().filter(|id| !found.contains(**id)).count();
    if missing > 0 {
        bail!(
            "{missing} of {} PDUs are not in the local user's /messages of {room} ({pages} pages)",
            wanted.len()
        );
    }
    let n = timed.len() as f64;
    Ok(json!({
        "run": run,
        "room_id": room,
        "join_s": round3(join_s),
        "build_s": round3(build_s),
        "pdus": timed.len(),
        "txn_latency": summarize(&latency),
        "answered_s": round3(answered),
        "visible_s": round3(visible),
        "visibility_polls": polls,
        "pdus_per_second_answered": round3(n / answered),
        "pdus_per_second_visible": round3(n / visible),
        "verified_in_messages": wanted.len(),
        "messages_pages": pages,
    }))
}

/// Polls `GET /rooms/{room}/event/{id}` as `user` until it answers 200; the polls made. The
/// first poll goes at once, then after pauses growing from 2 ms by a quarter each up to 100
/// ms: each poll costs the server a request (a few ms of Synapse's one Python thread), so a
/// server that takes seconds is asked some dozens of times, not hundreds, for an overshoot
/// of at most a quarter of the wait so far and never more than 100 ms.
async fn wait_visible(ctx: &Ctx, user: &User, room: &str, event_id: &str) -> Result<usize> {
    let give_up = Instant::now() + VISIBLE_WITHIN;
    let mut pause = Duration::from_millis(2);
    let mut polls = 0;
    loop {
        polls += 1;
        if ctx.server.event_visible(user, room, event_id).await? {
            return Ok(polls);
        }
        if Instant::now() >= give_up {
            bail!("{event_id} not visible in {room} after {VISIBLE_WITHIN:?}");
        }
        tokio::time::sleep(pause).await;
        pause = (pause * 5 / 4).min(Duration::from_millis(100));
    }
}

/// Pages back through `/messages` of `room` until every id of `wanted` was seen or the history
/// ends; the ids seen and the pages read.
async fn timeline_ids(
    ctx: &Ctx,
    user: &User,
    room: &str,
    wanted: &HashSet<&str>,
) -> Result<(HashSet<String>, usize)> {
    let mut found = HashSet::new();
    let mut from: Option<String> = None;
    let mut pages = 0;
    loop {
        let page = ctx
            .server
            .messages(user, room, from.as_deref(), 100)
            .await?;
        pages += 1;
        let chunk = page["chunk"].as_array().map(Vec::as_slice).unwrap_or(&[]);
        for event in chunk {
            if let Some(id) = event["event_id"].as_str() {
                found.insert(id.to_owned());
            }
        }
        let done = wanted.iter().all(|id| found.contains(*id));
        match page["end"].as_str() {
            Some(end) if !done && !chunk.is_empty() && pages < 1000 => from = Some(end.to_owned()),
            _ => return Ok((found, pages)),
        }
    }
}

/// `n` `m.room.message` PDUs of `user_id` signed by `signer`: a line on top of the joined
/// room's join (each citing the one before, depth rising by one), `auth_events` as `joined`
/// says.
fn build_messages(
    signer: EventSigner<'_>,
    user_id: &str,
    joined: &Joined,
    n: usize,
    tag: &str,
) -> Result<Vec<Pdu>> {
    let mut prev = joined.join.event_id().to_owned();
    let mut depth = joined.join.depth();
    let mut out = Vec::with_capacity(n);
    let s = |v: &str| CanonicalJsonValue::String(v.to_owned());
    let list = |ids: &[String]| CanonicalJsonValue::Array(ids.iter().map(|id| s(id)).collect());
    for i in 0..n {
        depth += 1;
        let mut partial = CanonicalJsonObject::new();
        partial.insert("type".to_owned(), s("m.room.message"));
        partial.insert("room_id".to_owned(), s(&joined.room_id));
        partial.insert("sender".to_owned(), s(user_id));
        let content = json!({"msgtype": "m.text", "body": format!("inbound {tag} message {i}")});
        partial.insert(
            "content".to_owned(),
            CanonicalJsonValue::try_from(content).context("content")?,
        );
        partial.insert("prev_events".to_owned(), list(std::slice::from_ref(&prev)));
        partial.insert("auth_events".to_owned(), list(&joined.auth));
        partial.insert(
            "depth".to_owned(),
            CanonicalJsonValue::Integer(depth.try_into().context("depth")?),
        );
        partial.insert("origin_server_ts".to_owned(), now_ms());
        let pdu = build_pdu(partial, joined.version, signer).context("a message")?;
        prev = pdu.event_id().to_owned();
        out.push(pdu);
    }
    Ok(out)
}

fn unix_ms() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .unwrap_or_default()
        .as_millis()
        .try_into()
        .unwrap_or(u64::MAX)
}

fn now_ms() -> CanonicalJsonValue {
    let ms = SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .unwrap_or_default()
        .as_millis();
    CanonicalJsonValue::Integer(
        i64::try_from(ms)
            .ok()
            .and_then(|ms| ms.try_into().ok())
            .unwrap_or_default(),
    )
}

fn raw(json: &str) -> Result<Box<RawValue>> {
    RawValue::from_string(json.to_owned()).context("raw JSON")
}

fn json_of(pdu: &Pdu) -> Result<Value> {
    serde_json::from_str(&pdu.canonical_json()).context("PDU JSON")
}

/// A fixed signing key per peer name: a restarted peer on the same port has the same key, so
/// that no server's cached copy of its key is ever wrong. (Nothing here is secret.)
fn seed_for(name: &str) -> [u8; 32] {
    let mut seed = [0u8; 32];
    let mut h: u64 = 0xcbf2_9ce4_8422_2325;
    for (i, slot) in seed.iter_mut().enumerate() {
        for b in name.bytes().chain([i as u8]) {
            h ^= u64::from(b);
            h = h.wrapping_mul(0x100_0000_01b3);
        }
        *slot = (h >> 24) as u8;
    }
    seed
}

// ---- The peer's HTTP side ----

type PeerApp = Arc<PeerState>;

fn router(state: PeerApp) -> Router {
    Router::new()
        .route("/_matrix/key/v2/server", get(key_document))
        .route("/_matrix/key/v2/server/{key_id}", get(key_document))
        .route("/_matrix/federation/v1/version", get(version))
        .route(
            "/_matrix/federation/v1/send/{txn_id}",
            put(take_transaction),
        )
        .route("/_matrix/federation/v1/event/{event_id}", get(event))
        .route("/_matrix/federation/v1/state_ids/{room_id}", get(state_ids))
        .route("/_matrix/federation/v1/state/{room_id}", get(full_state))
        .route(
            "/_matrix/federation/v1/event_auth/{room_id}/{event_id}",
            get(event_auth),
        )
        .route(
            "/_matrix/federation/v1/get_missing_events/{room_id}",
            post(missing_events),
        )
        .route("/_matrix/federation/v1/query/profile", get(profile))
        .route_layer(axum::middleware::from_fn_with_state(state.clone(), count))
        .fallback(unrecognized)
        .with_state(state)
}

fn note(peer: &PeerState, what: String) {
    *peer.requests.lock().unwrap().entry(what).or_default() += 1;
}

async fn count(State(peer): State<PeerApp>, request: Request, next: Next) -> Response {
    let route = request.extensions().get::<MatchedPath>().map_or_else(
        || request.uri().path().to_owned(),
        |p| p.as_str().to_owned(),
    );
    note(&peer, format!("{} {route}", request.method()));
    next.run(request).await
}

async fn unrecognized(State(peer): State<PeerApp>, request: Request) -> Response {
    note(
        &peer,
        format!(
            "{} {} (unrecognized)",
            request.method(),
            request.uri().path()
        ),
    );
    error(
        StatusCode::NOT_FOUND,
        "M_UNRECOGNIZED",
        "not served by the bench peer",
    )
}

fn error(status: StatusCode, errcode: &str, message: &str) -> Response {
    (status, Json(json!({"errcode": errcode, "error": message}))).into_response()
}

async fn key_document(State(peer): State<PeerApp>) -> Response {
    let unsigned = json!({
        "server_name": peer.name,
        "verify_keys": { KEY_ID: { "key": STANDARD_NO_PAD.encode(peer.key.public_key()) } },
        "old_verify_keys": {},
        "valid_until_ts": unix_ms() + 24 * 60 * 60 * 1000,
    });
    let Ok(CanonicalJsonValue::Object(mut object)) = CanonicalJsonValue::try_from(unsigned) else {
        return error(
            StatusCode::INTERNAL_SERVER_ERROR,
            "M_UNKNOWN",
            "key document",
        );
    };
    if sign_json(&mut object, &peer.name, KEY_ID, &peer.key).is_err() {
        return error(StatusCode::INTERNAL_SERVER_ERROR, "M_UNKNOWN", "signing");
    }
    Json(object).into_response()
}

async fn version() -> Json<Value> {
    Json(
        json!({"server": {"name": "myelin-bench inbound peer", "version": env!("CARGO_PKG_VERSION")}}),
    )
}

/// Whatever the server under test sends the peer is taken (and not looked at).
async fn take_transaction(Json(body): Json<Value>) -> Json<Value> {
    let _ = body;
    Json(json!({"pdus": {}}))
}

async fn event(State(peer): State<PeerApp>, UrlPath(event_id): UrlPath<String>) -> Response {
    let found = peer.events.lock().unwrap().get(&event_id).cloned();
    match found {
        Some(pdu) => Json(json!({
            "origin": peer.name,
            "origin_server_ts": unix_ms(),
            "pdus": [pdu],
        }))
        .into_response(),
        None => error(StatusCode::NOT_FOUND, "M_NOT_FOUND", "no such event"),
    }
}

/// The state after the peer's join, for any event of the room the peer holds: the peer's
/// messages change no state.
fn room_state_for(
    peer: &PeerState,
    room_id: &str,
    query: &HashMap<String, String>,
) -> Option<StateIds> {
    let event_id = query.get("event_id")?;
    if !peer.events.lock().unwrap().contains_key(event_id) {
        return None;
    }
    peer.rooms.lock().unwrap().get(room_id).cloned()
}

async fn state_ids(
    State(peer): State<PeerApp>,
    UrlPath(room_id): UrlPath<String>,
    Query(query): Query<HashMap<String, String>>,
) -> Response {
    match room_state_for(&peer, &room_id, &query) {
        Some((pdu_ids, auth_chain_ids)) => {
            Json(json!({"pdu_ids": pdu_ids, "auth_chain_ids": auth_chain_ids})).into_response()
        }
        None => error(
            StatusCode::NOT_FOUND,
            "M_NOT_FOUND",
            "unknown room or event",
        ),
    }
}

async fn full_state(
    State(peer): State<PeerApp>,
    UrlPath(room_id): UrlPath<String>,
    Query(query): Query<HashMap<String, String>>,
) -> Response {
    match room_state_for(&peer, &room_id, &query) {
        Some((pdu_ids, auth_chain_ids)) => {
            let events = peer.events.lock().unwrap();
            let full = |ids: &[String]| -> Vec<Value> {
                ids.iter()
                    .filter_map(|id| events.get(id).cloned())
                    .collect()
            };
            Json(json!({"pdus": full(&pdu_ids), "auth_chain": full(&auth_chain_ids)}))
                .into_response()
        }
        None => error(
            StatusCode::NOT_FOUND,
            "M_NOT_FOUND",
            "unknown room or event",
        ),
    }
}

/// The auth chain of the room's state as the peer joined it: a superset of any of its
/// events' auth chains.
async fn event_auth(
    State(peer): State<PeerApp>,
    UrlPath((room_id, _event_id)): UrlPath<(String, String)>,
) -> Response {
    let Some((state_ids, chain_ids)) = peer.rooms.lock().unwrap().get(&room_id).cloned() else {
        return error(StatusCode::NOT_FOUND, "M_NOT_FOUND", "unknown room");
    };
    let events = peer.events.lock().unwrap();
    let chain: Vec<Value> = chain_ids
        .iter()
        .chain(&state_ids)
        .collect::<HashSet<_>>()
        .into_iter()
        .filter_map(|id| events.get(id).cloned())
        .collect();
    Json(json!({"auth_chain": chain})).into_response()
}

/// `/get_missing_events`: see [`myelin_testkit::peer_graph::walk_back`].
async fn missing_events(
    State(peer): State<PeerApp>,
    UrlPath(_room_id): UrlPath<String>,
    Json(body): Json<Value>,
) -> Response {
    let ids = |field: &str| -> Vec<String> {
        body[field]
            .as_array()
            .into_iter()
            .flatten()
            .filter_map(|v| v.as_str().map(str::to_owned))
            .collect()
    };
    let limit = body["limit"].as_u64().unwrap_or(10).min(100) as usize;
    let events = peer.events.lock().unwrap();
    let found = walk_back(
        &events,
        &ids("latest_events"),
        &ids("earliest_events"),
        limit,
    );
    Json(json!({"events": found})).into_response()
}

async fn profile(
    State(peer): State<PeerApp>,
    Query(query): Query<HashMap<String, String>>,
) -> Response {
    let user = query.get("user_id").map(String::as_str).unwrap_or_default();
    if user != format!("@inbound_peer:{}", peer.name) {
        return error(StatusCode::NOT_FOUND, "M_NOT_FOUND", "no such user");
    }
    Json(json!({"displayname": "inbound bench peer"})).into_response()
}

#[cfg(test)]
mod tests {
    use myelin_room_version::PublicKey;
    use myelin_room_version::verify::{ServerKey, ServerKeys, Verified, verify_pdu};

    use super::*;

    const NAME: &str = "localhost:1234";
    const USER: &str = "@inbound_peer:localhost:1234";

    fn signer(key: &KeyPair) -> EventSigner<'_> {
        EventSigner::Server {
            server_name: NAME,
            key_id: KEY_ID,
            key,
        }
    }

    /// A room of version 10 the peer "joined": a join citing made-up create, power levels and
    /// join rules events.
    fn joined(key: &KeyPair) -> Joined {
        let version = RoomVersion::get("10").unwrap();
        let template = json!({
            "type": "m.room.member",
            "room_id": "!room:hs",
            "sender": USER,
            "state_key": USER,
            "content": {"membership": "join"},
            "prev_events": ["$head"],
            "auth_events": ["$create", "$power", "$rules"],
            "depth": 7,
            "origin_server_ts": 1,
        });
        let CanonicalJsonValue::Object(partial) = CanonicalJsonValue::try_from(template).unwrap()
        else {
            unreachable!()
        };
        let join = build_pdu(partial, version, signer(key)).unwrap();
        Joined {
            room_id: "!room:hs".to_owned(),
            version,
            auth: vec![
                "$create".to_owned(),
                "$power".to_owned(),
                join.event_id().to_owned(),
            ],
            join,
        }
    }

    #[test]
    fn messages_form_a_signed_line_on_the_join() {
        let key = KeyPair::from_seed(&seed_for(NAME));
        let joined = joined(&key);
        let pdus = build_messages(signer(&key), USER, &joined, 3, "t").unwrap();
        let mut keys = ServerKeys::new();
        keys.entry(NAME.to_owned()).or_default().insert(
            KEY_ID.to_owned(),
            ServerKey {
                key: PublicKey::from_bytes(&key.public_key()).unwrap(),
                valid_until_ts: u64::MAX,
            },
        );
        let mut prev = joined.join.event_id().to_owned();
        for (i, pdu) in pdus.iter().enumerate() {
            assert_eq!(
                verify_pdu(pdu, joined.version, &keys).unwrap(),
                Verified::All
            );
            assert_eq!(pdu.prev_events().collect::<Vec<_>>(), [prev.as_str()]);
            assert_eq!(pdu.auth_events().collect::<Vec<_>>(), joined.auth);
            assert_eq!(pdu.depth(), 8 + i as u64);
            assert_eq!(pdu.sender(), USER);
            assert_eq!(pdu.event_type(), "m.room.message");
            prev = pdu.event_id().to_owned();
        }
    }

    #[test]
    fn missing_events_walk_back_to_earliest_within_limit() {
        let key = KeyPair::from_seed(&seed_for(NAME));
        let joined = joined(&key);
        let pdus = build_messages(signer(&key), USER, &joined, 6, "t").unwrap();
        let events: HashMap<String, Value> = pdus
            .iter()
            .map(|p| (p.event_id().to_owned(), json_of(p).unwrap()))
            .collect();
        let id = |i: usize| pdus[i].event_id().to_owned();
        let depths = |found: Vec<Value>| -> Vec<i64> {
            found.iter().map(|e| e["depth"].as_i64().unwrap()).collect()
        };
        // Between the first (known) and the last (new): the four in the middle, oldest first.
        let found = walk_back(&events, &[id(5)], &[id(0)], 10);
        assert_eq!(depths(found), [9, 10, 11, 12]);
        // The limit keeps the ones nearest the latest.
        let found = walk_back(&events, &[id(5)], &[id(0)], 2);
        assert_eq!(depths(found), [11, 12]);
    }

    #[test]
    fn the_seed_depends_on_the_name() {
        assert_eq!(seed_for("localhost:1"), seed_for("localhost:1"));
        assert_ne!(seed_for("localhost:1"), seed_for("localhost:2"));
    }
}

//! Fetching what a transaction's events cite and this server lacks, and the keys that sign
//! them, within bounds no peer can push past:
//!
//! - per transaction, at most [`MAX_FETCHED_EVENTS`] events fetched (whatever the answers
//!   hold: longer answers are cut) and [`MAX_FETCH_TIME`] spent fetching ([`FetchBudget`]);
//! - per request, a timeout ([`REQUEST_TIMEOUT`], and never past the transaction's deadline)
//!   and a cap on the answer's size, read as it arrives (`Outbound::send_limited`, which also keeps to the destination's backoff):
//!   one event's worth for `/event`, `limit` events' worth for `/get_missing_events`;
//! - `/get_missing_events` asks for [`MISSING_EVENTS_LIMIT`] events and keeps no more than
//!   that of a longer answer; `/state_ids` answers naming more than [`MAX_STATE_IDS`] events
//!   are not used;
//! - `/event` fetches run [`FETCH_CONCURRENCY`] at a time, from the origin first, then from up
//!   to [`OTHER_SERVERS`] other servers in the room.

use std::{
    collections::{BTreeMap, BTreeSet, HashSet},
    sync::Arc,
    time::Duration,
};

use crate::federation::Outbound;
use myelin_room_version::{
    RoomVersion, receipt,
    verify::{ServerKeys, required_server_keys},
};
use myelin_store::RoomRow;
use ruma::{
    OwnedEventId, OwnedRoomId, OwnedServerName, ServerName, UInt,
    api::{
        OutgoingRequest,
        federation::{
            authorization::get_event_authorization,
            event::{get_event, get_missing_events, get_room_state_ids},
        },
        path_builder::SinglePath,
    },
};
use tokio::time::Instant;

use crate::{Result, Services};

/// The largest PDU the spec allows (bytes of its JSON).
pub const MAX_PDU_BYTES: usize = 65_536;
/// The events `/get_missing_events` asks for at once (as Synapse does).
pub const MISSING_EVENTS_LIMIT: usize = 10;
/// The most events one transaction may make this server fetch.
pub const MAX_FETCHED_EVENTS: usize = 500;
/// The longest one transaction may make this server spend fetching.
pub const MAX_FETCH_TIME: Duration = Duration::from_secs(60);
/// The longest one request to another server may take.
pub const REQUEST_TIMEOUT: Duration = Duration::from_secs(20);
/// The longest the keys of a transaction's own events may take to fetch.
pub const KEY_FETCH_TIME: Duration = Duration::from_secs(30);
/// `/state_ids` answers naming more events than this (state and auth chain) are not used.
pub const MAX_STATE_IDS: usize = 50_000;
/// The largest `/state_ids` answer read (ids are under 100 bytes each).
const STATE_IDS_BODY_BYTES: usize = 8 * 1024 * 1024;
/// The largest `/event_auth` answer read.
const AUTH_CHAIN_BODY_BYTES: usize = 8 * 1024 * 1024;
/// Room for what wraps the events in an answer (field names, `origin`, brackets).
const ENVELOPE_BYTES: usize = 4 * 1024;
/// `/event` requests in flight at once.
pub const FETCH_CONCURRENCY: usize = 5;
/// Servers asked besides the origin when it cannot answer.
pub const OTHER_SERVERS: usize = 3;

/// What one transaction may still make this server fetch.
#[derive(Debug)]
pub(super) struct FetchBudget {
    events_left: usize,
    deadline: Instant,
}

impl FetchBudget {
    pub(super) fn new() -> Self {
        FetchBudget {
            events_left: MAX_FETCHED_EVENTS,
            deadline: Instant::now() + MAX_FETCH_TIME,
        }
    }

    pub(super) fn events_left(&self) -> usize {
        self.events_left
    }

    pub(super) fn exhausted(&self) -> bool {
        self.events_left == 0 || Instant::now() >= self.deadline
    }

    /// Charges up to `wanted` events; returns how many may be fetched.
    fn take(&mut self, wanted: usize) -> usize {
        let granted = wanted.min(self.events_left);
        self.events_left -= granted;
        granted
    }

    /// When a request started now must have its answer.
    fn request_deadline(&self) -> Instant {
        self.deadline.min(Instant::now() + REQUEST_TIMEOUT)
    }
}

/// The size cap of a `/get_missing_events` answer of `limit` events.
fn missing_events_body_limit(limit: usize) -> usize {
    limit * (MAX_PDU_BYTES + 1) + ENVELOPE_BYTES
}

impl Services {
    /// Adds to `keys` the keys `keys` lacks of the servers whose signatures `events` need
    /// (from the cache, else fetched), giving up on those not had by `until`.
    pub(crate) async fn add_signing_keys(
        &self,
        version: &RoomVersion,
        events: &[&[u8]],
        keys: &mut ServerKeys,
        until: Instant,
    ) -> Result<()> {
        // Per server: the key ids wanted, and the oldest event they must be valid for.
        let mut wanted: BTreeMap<String, (BTreeSet<String>, u64)> = BTreeMap::new();
        for bytes in events {
            let Ok(pdu) = receipt::check_format(version, bytes) else {
                continue;
            };
            for (server, key_id) in required_server_keys(&pdu, version) {
                if keys
                    .get(&server)
                    .is_some_and(|known| known.contains_key(&key_id))
                {
                    continue;
                }
                let entry = wanted.entry(server).or_insert((BTreeSet::new(), u64::MAX));
                entry.0.insert(key_id);
                entry.1 = entry.1.min(pdu.origin_server_ts());
            }
        }
        for (server, (key_ids, oldest)) in wanted {
            let Ok(name) = OwnedServerName::try_from(server.as_str()) else {
                continue;
            };
            let left = until.saturating_duration_since(Instant::now());
            if left.is_zero() {
                tracing::info!(%server, "no time left to fetch the keys of a server that signed events");
                continue;
            }
            let key_ids: Vec<String> = key_ids.into_iter().collect();
            let valid_at = i64::try_from(oldest).unwrap_or(i64::MAX);
            match tokio::time::timeout(left, self.remote_keys.keys_for(&name, &key_ids, valid_at))
                .await
            {
                Ok(found) => keys.entry(server).or_default().extend(found?),
                Err(_) => tracing::info!(%server, "timed out fetching server keys"),
            }
        }
        Ok(())
    }

    /// The servers to ask about room `room`: the origin, then up to [`OTHER_SERVERS`] others
    /// with users joined to it.
    pub(super) async fn servers_to_ask(
        &self,
        origin: &ServerName,
        room: &RoomRow,
    ) -> Result<Vec<OwnedServerName>> {
        let mut servers = vec![origin.to_owned()];
        let mut others: BTreeSet<OwnedServerName> = BTreeSet::new();
        for user in self.store.joined_user_ids(room.room_nid).await? {
            if let Ok(user) = ruma::UserId::parse(user.as_str()) {
                let server = user.server_name();
                if server != origin && server != self.config.server_name {
                    others.insert(server.to_owned());
                }
            }
        }
        servers.extend(others.into_iter().take(OTHER_SERVERS));
        Ok(servers)
    }

    /// `POST /get_missing_events` to the origin: up to [`MISSING_EVENTS_LIMIT`] events between
    /// the room's forward extremities here and `latest` (events waiting for them), oldest
    /// first. Of a longer answer, those nearest `latest` (the deepest) are kept.
    pub(super) async fn fetch_missing_events(
        &self,
        origin: &ServerName,
        room: &RoomRow,
        latest: &[String],
        budget: &mut FetchBudget,
    ) -> Result<Vec<Vec<u8>>> {
        let limit = MISSING_EVENTS_LIMIT.min(budget.events_left);
        let Ok(room_id) = OwnedRoomId::try_from(room.room_id.as_str()) else {
            return Ok(Vec::new());
        };
        if limit == 0 || budget.exhausted() {
            return Ok(Vec::new());
        }
        let earliest: Vec<OwnedEventId> = self
            .store
            .extremities_with_state(room.room_nid)
            .await?
            .into_iter()
            .filter_map(|(_, id, _, _)| OwnedEventId::try_from(id).ok())
            .collect();
        let latest: Vec<OwnedEventId> = latest
            .iter()
            .filter_map(|id| OwnedEventId::try_from(id.as_str()).ok())
            .collect();
        let mut request = get_missing_events::v1::Request::new(room_id, earliest, latest);
        request.limit = UInt::try_from(limit).unwrap_or(UInt::MIN);
        let Some(answer) = ask(
            &self.federation,
            origin,
            request,
            missing_events_body_limit(limit),
            budget.request_deadline(),
            "missing events",
        )
        .await
        else {
            return Ok(Vec::new());
        };
        let mut events: Vec<(u64, Vec<u8>)> = answer
            .events
            .into_iter()
            .filter(|event| event.get().len() <= MAX_PDU_BYTES)
            .map(|event| (depth_of(event.get()), event.get().as_bytes().to_vec()))
            .collect();
        if events.len() > limit {
            tracing::info!(%origin, room_id = %room.room_id, got = events.len(), limit, "a server answered get_missing_events with more events than asked; keeping the deepest");
        }
        events.sort_by_key(|(depth, _)| std::cmp::Reverse(*depth));
        events.truncate(limit);
        events.reverse();
        budget.take(events.len());
        Ok(events.into_iter().map(|(_, bytes)| bytes).collect())
    }

    /// The state after `prev_id` of room `room` as the origin (or another server of the room)
    /// knows it: `/state_ids` at it, the events of that state and its auth chain this server
    /// lacks fetched with `/event` and stored as outliers (with `prev_id` itself), then
    /// written as a state group (see `Rooms::remote_state_after`). `None` when it cannot be
    /// had within the bounds.
    pub(super) async fn fetch_state_after(
        &self,
        origin: &ServerName,
        room: &RoomRow,
        version: &'static RoomVersion,
        prev_id: &str,
        keys: &mut ServerKeys,
        budget: &mut FetchBudget,
    ) -> Result<Option<i64>> {
        let (Ok(room_id), Ok(event_id)) = (
            OwnedRoomId::try_from(room.room_id.as_str()),
            OwnedEventId::try_from(prev_id),
        ) else {
            return Ok(None);
        };
        if budget.exhausted() {
            return Ok(None);
        }
        let servers = self.servers_to_ask(origin, room).await?;
        let mut answer = None;
        for server in &servers {
            answer = ask(
                &self.federation,
                server,
                get_room_state_ids::v1::Request::new(event_id.clone(), room_id.clone()),
                STATE_IDS_BODY_BYTES,
                budget.request_deadline(),
                "state ids",
            )
            .await;
            if answer.is_some() {
                break;
            }
        }
        let Some(answer) = answer else {
            return Ok(None);
        };
        if answer.pdu_ids.len() + answer.auth_chain_ids.len() > MAX_STATE_IDS {
            tracing::info!(%origin, room_id = %room.room_id, "a state_ids answer names too many events; not used");
            return Ok(None);
        }
        let state: Vec<String> = answer.pdu_ids.iter().map(ToString::to_string).collect();
        let mut wanted: Vec<String> = vec![prev_id.to_owned()];
        let mut seen: HashSet<String> = wanted.iter().cloned().collect();
        for id in answer.pdu_ids.iter().chain(&answer.auth_chain_ids) {
            if seen.insert(id.to_string()) {
                wanted.push(id.to_string());
            }
        }
        let refs: Vec<&str> = wanted.iter().map(String::as_str).collect();
        let stored: HashSet<String> = self
            .store
            .events_by_ids(&refs)
            .await?
            .into_iter()
            .filter(|row| row.room_nid == room.room_nid)
            .map(|row| row.event_id)
            .collect();
        let unknown: Vec<String> = wanted
            .into_iter()
            .filter(|id| !stored.contains(id))
            .collect();
        if unknown.len() > budget.events_left {
            tracing::info!(%origin, room_id = %room.room_id, unknown = unknown.len(), "the state at a prev event lacks more events than this transaction may fetch");
            return Ok(None);
        }
        if !unknown.is_empty() {
            let fetched = self.fetch_events(&servers, version, &unknown, budget).await;
            let refs: Vec<&[u8]> = fetched.iter().map(Vec::as_slice).collect();
            self.add_signing_keys(version, &refs, keys, budget.deadline)
                .await?;
            self.rooms
                .receive_outliers(&room.room_id, &refs, keys)
                .await?;
        }
        self.rooms
            .remote_state_after(&room.room_id, prev_id, &state)
            .await
    }

    /// `GET /event_auth` for `event_id` (an event waiting for auth events this server lacks):
    /// its auth chain, stored as outliers (at most what the budget allows). Whether anything
    /// came.
    pub(super) async fn fetch_auth_chain(
        &self,
        origin: &ServerName,
        room: &RoomRow,
        version: &'static RoomVersion,
        event_id: &str,
        keys: &mut ServerKeys,
        budget: &mut FetchBudget,
    ) -> Result<bool> {
        let (Ok(room_id), Ok(event_id)) = (
            OwnedRoomId::try_from(room.room_id.as_str()),
            OwnedEventId::try_from(event_id),
        ) else {
            return Ok(false);
        };
        if budget.exhausted() {
            return Ok(false);
        }
        let Some(answer) = ask(
            &self.federation,
            origin,
            get_event_authorization::v1::Request::new(room_id, event_id),
            AUTH_CHAIN_BODY_BYTES,
            budget.request_deadline(),
            "event auth",
        )
        .await
        else {
            return Ok(false);
        };
        let mut events: Vec<Vec<u8>> = answer
            .auth_chain
            .into_iter()
            .filter(|event| event.get().len() <= MAX_PDU_BYTES)
            .map(|event| event.get().as_bytes().to_vec())
            .collect();
        let granted = budget.take(events.len());
        events.truncate(granted);
        if events.is_empty() {
            return Ok(false);
        }
        let refs: Vec<&[u8]> = events.iter().map(Vec::as_slice).collect();
        self.add_signing_keys(version, &refs, keys, budget.deadline)
            .await?;
        self.rooms
            .receive_outliers(&room.room_id, &refs, keys)
            .await?;
        Ok(true)
    }

    /// `GET /event/{eventId}` for each of `ids` (as many as the budget allows),
    /// [`FETCH_CONCURRENCY`] at a time, each from the first of `servers` that answers with
    /// that very event. The events had.
    async fn fetch_events(
        &self,
        servers: &[OwnedServerName],
        version: &'static RoomVersion,
        ids: &[String],
        budget: &mut FetchBudget,
    ) -> Vec<Vec<u8>> {
        let granted = budget.take(ids.len());
        let deadline = budget.deadline;
        let servers: Arc<[OwnedServerName]> = servers.into();
        let mut queue = ids[..granted].iter();
        let mut running = tokio::task::JoinSet::new();
        let mut fetched = Vec::new();
        loop {
            while running.len() < FETCH_CONCURRENCY {
                let Some(id) = queue.next() else { break };
                running.spawn(fetch_event(
                    self.federation.clone(),
                    servers.clone(),
                    version,
                    id.clone(),
                    deadline,
                ));
            }
            match running.join_next().await {
                Some(Ok(Some(event))) => fetched.push(event),
                Some(_) => {}
                None => break,
            }
        }
        fetched
    }
}

/// One event by id from the first of `servers` that answers with it (the event id computed
/// from what came must be the one asked for).
async fn fetch_event(
    client: Arc<Outbound>,
    servers: Arc<[OwnedServerName]>,
    version: &'static RoomVersion,
    id: String,
    deadline: Instant,
) -> Option<Vec<u8>> {
    let event_id = OwnedEventId::try_from(id.as_str()).ok()?;
    for server in servers.iter() {
        let request_deadline = deadline.min(Instant::now() + REQUEST_TIMEOUT);
        let Some(answer) = ask(
            &client,
            server,
            get_event::v1::Request::new(event_id.clone()),
            MAX_PDU_BYTES + ENVELOPE_BYTES,
            request_deadline,
            "an event",
        )
        .await
        else {
            continue;
        };
        let bytes = answer.pdu.get().as_bytes();
        match receipt::check_format(version, bytes) {
            Ok(pdu) if pdu.event_id() == id => return Some(bytes.to_vec()),
            _ => {
                tracing::info!(%server, event_id = %id, "a server answered /event with another or an invalid event")
            }
        }
    }
    None
}

/// Sends `request` to `server`, reading at most `limit` bytes of the answer, by `deadline`.
/// `None` (logged) when it fails.
async fn ask<R>(
    client: &Outbound,
    server: &ServerName,
    request: R,
    limit: usize,
    deadline: Instant,
    what: &str,
) -> Option<R::IncomingResponse>
where
    R: OutgoingRequest<PathBuilder = SinglePath>,
{
    let left = deadline.saturating_duration_since(Instant::now());
    if left.is_zero() {
        return None;
    }
    match tokio::time::timeout(left, client.send_limited(server, request, limit)).await {
        Ok(Ok(answer)) => Some(answer),
        Ok(Err(err)) => {
            tracing::info!(%server, %err, "could not fetch {what}");
            None
        }
        Err(_) => {
            tracing::info!(%server, "timed out fetching {what}");
            None
        }
    }
}

/// An event's `depth` as it claims it (0 if it does not parse).
fn depth_of(json: &str) -> u64 {
    #[derive(serde::Deserialize)]
    struct Depth {
        #[serde(default)]
        depth: serde_json::Value,
    }
    serde_json::from_str::<Depth>(json)
        .ok()
        .and_then(|d| d.depth.as_u64())
        .unwrap_or(0)
}

//! The transaction sender: delivers this server's events and EDUs to the other servers in their
//! rooms, as `PUT /_matrix/federation/v1/send/{txnId}`.
//!
//! Driven by the events stream, not by an in-memory queue. A *fan-out* pass, woken by the
//! notifier after every persisted event, reads the local events past its persisted position,
//! works out each one's destinations (the servers with joined members in the room at the event,
//! and for an invite, kick or ban the target's server) and records, in one transaction with the
//! position, which rooms each destination is owed events in and up to where (events meant for
//! nobody move the position in memory, written every few seconds). Each destination
//! then has one worker task and a persisted position (the stream ordering up to which it has
//! been served): the worker reads the local events of its rooms past that position, at most 50
//! per transaction, sends one transaction at a time, and moves the position with a conditional
//! update once the destination accepted it. Nothing is lost across restarts; a second process
//! over the same database is noticed, not overwritten.
//!
//! - Only events of this server's users with normal status are sent (never rejected,
//!   soft-failed or outlier events, nor other servers' events), and the membership events of
//!   other servers' users this server relays as the resident (accepted through `send_join`,
//!   `send_leave`, `send_knock`; never back to the server they came from).
//! - A failed transaction is retried as it was, under the same transaction id, once the
//!   destination's backoff allows (ids come from a persisted counter, so they are never
//!   reused). A destination that answers 4xx to a transaction gets it again after a pause of its
//!   worker's (the events stay); the shared backoff is for destinations that do not answer.
//! - After an outage, a room more than [`CATCH_UP_ROOM_LIMIT`] events behind gets only its
//!   latest [`CATCH_UP_KEEP`]; the destination fetches the rest with `/get_missing_events`, as
//!   it would anyway for a gap.
//! - EDUs, at most 100 per transaction: local users' public read receipts (from the receipts
//!   stream, with a persisted position per destination, to the servers in the room now), typing
//!   notifications (in memory, best effort, dropped for destinations that are backing off), and
//!   to-device messages for remote users (persisted in the outbox until delivered), and local
//!   users' presence changes (in memory, best effort, to the servers sharing a room with them).
//!   Local users' device-list and cross-signing key changes go through the same outbox
//!   ([`device_lists`]).

mod device_lists;

pub use device_lists::ON_JOIN;

use std::{
    collections::{BTreeMap, BTreeSet, HashMap},
    sync::{Arc, Mutex},
    time::Duration,
};

use myelin_federation::FederationError;
use myelin_store::{EventRow, FanoutEntry, GroupMembers, OutgoingEvent, OutgoingReceipt, Store};
use ruma::{
    MilliSecondsSinceUnixEpoch, OwnedServerName, OwnedTransactionId, ServerName, UInt,
    api::federation::transactions::send_transaction_message, serde::Raw,
};
use serde_json::{Value, json, value::RawValue};
use tokio::{
    sync::{Notify, broadcast, watch},
    task::JoinHandle,
};

use super::outbound::Outbound;
use crate::{Error, Result, notifier::Notifier, now_millis};

/// The most PDUs in one transaction (the spec's limit).
pub const MAX_PDUS: usize = 50;
/// The most EDUs in one transaction (the spec's limit).
pub const MAX_EDUS: usize = 100;
/// After an outage, a room with more pending events than this for a destination gets only
/// its latest [`CATCH_UP_KEEP`]: more than one full transaction behind, the destination is
/// better served by the newest events and a gap it fills on demand.
pub const CATCH_UP_ROOM_LIMIT: i64 = 50;
/// How many of a room's latest events a destination gets after an outage: a gap this size is
/// what one `/get_missing_events` of a receiving server closes (Synapse asks for 10).
pub const CATCH_UP_KEEP: i64 = 10;
/// Local events read per fan-out step.
const FANOUT_BATCH: i64 = 500;
/// Receipts read per transaction (they travel as one EDU per thread).
const RECEIPTS_PER_TXN: i64 = 50;
/// Typing notifications kept per destination between transactions.
const MAX_TYPING_QUEUED: usize = 200;
/// Users' presence kept per destination between transactions.
const MAX_PRESENCE_QUEUED: usize = 1000;
/// Users in the one `m.presence` EDU of a transaction.
const PRESENCE_PER_TXN: usize = 100;
/// Typing EDUs per transaction.
const TYPING_PER_TXN: usize = 20;
/// Joined servers cached by state snapshot (snapshots are immutable).
const SERVERS_CACHE_CAPACITY: usize = 4096;
/// The longest the fan-out goes without writing its position while events are meant for
/// nobody.
const FANOUT_PERSIST_EVERY: Duration = Duration::from_secs(10);
/// The fan-out also looks now and then without being woken: events written by another process.
const FANOUT_POLL: Duration = Duration::from_secs(30);
/// After a wake, the fan-out waits this long before it scans: events come in bursts, and one
/// scan then covers all of a burst's instead of costing each appended event its own reads. A
/// transaction leaves at most this much later.
const FANOUT_COALESCE: Duration = Duration::from_millis(10);
/// A destination that answers but refuses a transaction gets it again after this, doubling
/// with each refusal in a row up to [`REFUSED_PAUSE_MAX`].
const REFUSED_PAUSE: Duration = Duration::from_secs(10);
const REFUSED_PAUSE_MAX: Duration = Duration::from_secs(3600);
/// How long a worker waits after a database error before trying again.
const ERROR_PAUSE: Duration = Duration::from_secs(5);
/// How long shutdown waits for the sender's tasks.
const STOP_GRACE: Duration = Duration::from_secs(5);

/// What the ephemeral area tells the sender about EDUs to go out.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum EduNotice {
    /// A local user started or stopped typing.
    Typing {
        room_id: String,
        user_id: String,
        typing: bool,
    },
    /// A local user's public read receipt was stored at `position` of the receipts stream.
    Receipt { room_id: String, position: i64 },
    /// A local user's presence changed: `presence` is the `m.presence` EDU's entry for them
    /// (`user_id`, `presence`, `status_msg`, `last_active_ago`, `currently_active`).
    Presence { user_id: String, presence: Value },
    /// EDUs were put in the outbox for these destinations.
    Outbox { destinations: Vec<OwnedServerName> },
}

/// The channel [`EduNotice`]s travel on: a notice sent while no sender runs is dropped (what it
/// announces is persisted, except typing, which is best effort anyway).
#[derive(Debug, Clone)]
pub struct EduFeed(broadcast::Sender<EduNotice>);

impl Default for EduFeed {
    fn default() -> Self {
        EduFeed(broadcast::channel(1024).0)
    }
}

impl EduFeed {
    pub fn publish(&self, notice: EduNotice) {
        let _ = self.0.send(notice);
    }

    fn subscribe(&self) -> broadcast::Receiver<EduNotice> {
        self.0.subscribe()
    }
}

/// A destination's delivery as operators see it (`/metrics`).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct DestinationStatus {
    pub destination: String,
    /// Local events not yet delivered (an upper bound, see `myelin_store::QueueDepth`).
    pub queued_events: i64,
    /// Persisted EDUs (to-device messages) not yet delivered.
    pub queued_edus: i64,
    /// Consecutive failures (0: up).
    pub failures: u32,
    /// While backing off: when the next attempt may go (ms).
    pub retry_at_ms: Option<i64>,
    /// When it last accepted a transaction (ms).
    pub last_success_ms: Option<i64>,
}

/// One destination's worker: woken when there may be something for it.
#[derive(Debug)]
struct Worker {
    wake: Notify,
    /// `(room id, user id) → typing`, latest wins.
    typing: Mutex<BTreeMap<(String, String), bool>>,
    /// `user id → presence entry`, latest wins (best effort, like typing).
    presence: Mutex<BTreeMap<String, Value>>,
    /// The receipt position of the destination's row as the worker last read it (`i64::MAX`
    /// before it has): a receipt stored at or below it would be skipped, so its notice moves
    /// the row back.
    receipts_from: std::sync::atomic::AtomicI64,
}

impl Default for Worker {
    fn default() -> Self {
        Worker {
            wake: Notify::new(),
            typing: Mutex::default(),
            presence: Mutex::default(),
            receipts_from: std::sync::atomic::AtomicI64::new(i64::MAX),
        }
    }
}

/// A transaction built and not yet accepted: retried as it is.
#[derive(Debug, Clone)]
struct Transaction {
    /// `None` when there is nothing to send, only positions to move (past events not meant for
    /// the destination, unreadable outbox rows): no transaction number is spent on it.
    id: Option<OwnedTransactionId>,
    origin_server_ts: MilliSecondsSinceUnixEpoch,
    pdus: Vec<Box<RawValue>>,
    edus: Vec<Raw<ruma::api::federation::transactions::edu::Edu>>,
    /// The positions it was built from and moves to.
    event_from: i64,
    event_to: i64,
    receipt_from: i64,
    receipt_to: i64,
    outbox_ids: Vec<i64>,
}

/// What a worker's step did.
#[derive(Debug, PartialEq, Eq)]
enum Step {
    /// Delivered a transaction, or moved past events not meant for the destination: look again.
    Progressed,
    /// Nothing to send.
    Idle,
    /// The destination failed (or is backing off): wait for its backoff.
    Failed,
}

/// A worker's memory between steps.
#[derive(Debug, Default)]
struct WorkerState {
    in_flight: Option<Transaction>,
    /// Transactions in a row the destination answered but refused (4xx), and until when the
    /// worker waits before offering the one in flight again. The destination is up, so this
    /// is the worker's own pause: the shared backoff, which every request to the destination
    /// consults (fetching its keys to check its own requests among them), stays clear.
    refusals: u32,
    refused_until: Option<i64>,
    /// Set by a failure: the next transaction built looks for rooms too far behind.
    catching_up: bool,
    /// Per room: events before this stream ordering are skipped (after an outage).
    cutoffs: HashMap<i64, i64>,
}

/// How far the fan-out has read, ahead of the persisted position when the events since were
/// meant for nobody.
#[derive(Debug)]
struct FanoutCursor {
    /// The persisted position as last read or written (`None`: read it).
    persisted: Option<i64>,
    scanned: i64,
    written: std::time::Instant,
}

/// The sender, shared by the services; [`Sender::start`] spawns its tasks.
#[derive(Debug)]
pub struct Sender {
    store: Store,
    server_name: OwnedServerName,
    outbound: Arc<Outbound>,
    notifier: Notifier,
    feed: EduFeed,
    /// The other servers with joined members, by state group (see `servers_at`).
    servers: Mutex<HashMap<i64, Arc<BTreeSet<OwnedServerName>>>>,
    workers: Mutex<HashMap<OwnedServerName, Arc<Worker>>>,
    /// The events stream position up to which the fan-out has found every local event's
    /// destinations (in memory: ahead of the persisted one while events are meant for nobody).
    fanned_out: std::sync::atomic::AtomicI64,
    /// The device-list stream position up to which the device-list pass has put every local
    /// change in the outbox (in memory: a wake with no new change costs one read).
    device_lists_done: std::sync::atomic::AtomicI64,
    /// Set while running: the stop signal the tasks watch.
    stop: Mutex<Option<watch::Sender<bool>>>,
    tasks: Mutex<Vec<JoinHandle<()>>>,
}

/// The server of a user id (`@local:server`), key-form ids included.
fn server_of(user_id: &str) -> Option<OwnedServerName> {
    let (_, server) = user_id.split_once(':')?;
    OwnedServerName::try_from(server).ok()
}

fn lock<T>(mutex: &Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    mutex.lock().unwrap_or_else(|e| e.into_inner())
}

fn edu(
    edu_type: &str,
    content: Value,
) -> Result<Raw<ruma::api::federation::transactions::edu::Edu>> {
    let json = json!({ "edu_type": edu_type, "content": content }).to_string();
    let raw = RawValue::from_string(json).map_err(|e| Error::Internal(e.to_string()))?;
    Ok(Raw::from_json(raw))
}

impl Sender {
    pub fn new(
        store: Store,
        server_name: OwnedServerName,
        outbound: Arc<Outbound>,
        notifier: Notifier,
        feed: EduFeed,
    ) -> Self {
        Sender {
            store,
            server_name,
            outbound,
            notifier,
            feed,
            servers: Mutex::default(),
            workers: Mutex::default(),
            fanned_out: std::sync::atomic::AtomicI64::new(0),
            device_lists_done: std::sync::atomic::AtomicI64::new(i64::MIN),
            stop: Mutex::default(),
            tasks: Mutex::default(),
        }
    }

    /// Spawns the fan-out task (which spawns a worker per destination). Idempotent.
    pub fn start(self: &Arc<Self>) {
        let mut stop = lock(&self.stop);
        if stop.is_some() {
            return;
        }
        let (tx, rx) = watch::channel(false);
        *stop = Some(tx);
        drop(stop);
        // Subscribed before the first look, so nothing announced meanwhile is missed.
        let events = self.notifier.subscribe();
        let edus = self.feed.subscribe();
        let revived = self.outbound.backoff().subscribe_revived();
        let this = self.clone();
        let task = tokio::spawn(async move { this.run_fanout(events, edus, revived, rx).await });
        lock(&self.tasks).push(task);
    }

    /// Stops every task and waits for them (a transaction in flight is abandoned: its events
    /// are still pending and go again after the restart).
    pub async fn stop(&self) {
        let Some(stop) = lock(&self.stop).take() else {
            return;
        };
        let _ = stop.send(true);
        let tasks: Vec<JoinHandle<()>> = std::mem::take(&mut *lock(&self.tasks));
        let aborts: Vec<_> = tasks.iter().map(JoinHandle::abort_handle).collect();
        if tokio::time::timeout(STOP_GRACE, futures_join_all(tasks))
            .await
            .is_err()
        {
            tracing::warn!(
                "federation sender: tasks still running after the grace period; aborting them"
            );
            for abort in aborts {
                abort.abort();
            }
        }
        lock(&self.workers).clear();
    }

    fn stop_receiver(&self) -> Option<watch::Receiver<bool>> {
        lock(&self.stop).as_ref().map(watch::Sender::subscribe)
    }

    /// The worker of `destination`, spawned if new (while running).
    fn worker(self: &Arc<Self>, destination: &ServerName) -> Option<Arc<Worker>> {
        if destination == self.server_name {
            return None;
        }
        let stop = self.stop_receiver()?;
        let mut workers = lock(&self.workers);
        if let Some(worker) = workers.get(destination) {
            return Some(worker.clone());
        }
        let worker = Arc::new(Worker::default());
        workers.insert(destination.to_owned(), worker.clone());
        drop(workers);
        let this = self.clone();
        let (w, d) = (worker.clone(), destination.to_owned());
        let task = tokio::spawn(async move { this.run_worker(d, w, stop).await });
        lock(&self.tasks).push(task);
        Some(worker)
    }

    fn wake(self: &Arc<Self>, destination: &ServerName) {
        if let Some(worker) = self.worker(destination) {
            worker.wake.notify_one();
        }
    }

    // ----- destinations of events -----

    /// The other servers (never this one) with joined members in the state of `group` (a
    /// snapshot of `room_nid`). A delta group that changed no other server's member has its
    /// parent's, and a whole group without other servers' members has none: most state events
    /// (this server's users' joins and profiles, names, power levels) cost one small read of
    /// what the group itself holds, not a read of its whole state. `known`: what
    /// [`Store::group_members_changed`] already said of some groups (the fan-out reads it for
    /// all the groups of a batch at once).
    async fn servers_at(
        &self,
        room_nid: i64,
        group: i64,
        known: &HashMap<i64, GroupMembers>,
    ) -> Result<Arc<BTreeSet<OwnedServerName>>> {
        // The groups walked, every one with the servers found at the walk's end.
        let mut walked = Vec::new();
        let mut next = group;
        let servers = loop {
            if let Some(hit) = lock(&self.servers).get(&next) {
                break hit.clone();
            }
            walked.push(next);
            let own = match known.get(&next) {
                Some(own) => Some(own.clone()),
                None => self
                    .store
                    .group_members_changed(&[next])
                    .await?
                    .remove(&next),
            };
            let others = own.as_ref().is_some_and(|own| {
                own.members
                    .iter()
                    .any(|(key, _)| server_of(key).is_some_and(|server| server != self.server_name))
            });
            match own {
                Some(GroupMembers {
                    parent: Some(parent),
                    ..
                }) if !others => next = parent,
                Some(GroupMembers { parent: None, .. }) if !others => break Arc::default(),
                _ => break Arc::new(self.read_servers_at(room_nid, next).await?),
            }
        };
        let mut cache = lock(&self.servers);
        for group in walked {
            if cache.len() >= SERVERS_CACHE_CAPACITY {
                cache.clear();
            }
            cache.insert(group, servers.clone());
        }
        Ok(servers)
    }

    /// The other servers with joined members in the state of `group`, from its whole state.
    async fn read_servers_at(
        &self,
        room_nid: i64,
        group: i64,
    ) -> Result<BTreeSet<OwnedServerName>> {
        let state = self.store.state_ids_at_group(group).await?;
        // The current memberships give most entries' membership without reading events.
        let current: HashMap<i64, String> = self
            .store
            .room_membership_events(room_nid)
            .await?
            .into_iter()
            .collect();
        let mut servers = BTreeSet::new();
        let mut unknown = Vec::new();
        for ((event_type, state_key), nid) in state.iter() {
            if event_type != "m.room.member" {
                continue;
            }
            match current.get(&nid) {
                Some(membership) if membership == "join" => {
                    servers.extend(server_of(state_key));
                }
                Some(_) => {}
                None => unknown.push(nid),
            }
        }
        for row in self.store.events_by_nids(&unknown).await? {
            let joined = serde_json::from_str::<Value>(&row.json)
                .is_ok_and(|json| json["content"]["membership"] == "join");
            if joined && let Some(key) = &row.state_key {
                servers.extend(server_of(key));
            }
        }
        servers.remove(&self.server_name);
        Ok(servers)
    }

    /// The other servers in a room now (its current state).
    async fn servers_now(&self, room_nid: i64) -> Result<Arc<BTreeSet<OwnedServerName>>> {
        match self.store.current_state_group(room_nid).await? {
            Some(group) => self.servers_at(room_nid, group, &HashMap::new()).await,
            None => Ok(Arc::default()),
        }
    }

    /// Whether this server sends an event the store offered: a local user's (the store's
    /// sender pattern is a `LIKE`, which SQLite compares without case: checked exactly here),
    /// or one it relays as the resident.
    fn sends(&self, outgoing: &OutgoingEvent) -> bool {
        outgoing.relayed || server_of(&outgoing.event.sender).as_deref() == Some(&*self.server_name)
    }

    /// Where an event of ours goes: the servers with joined members in the room at the event
    /// (the state after it), and for an invite, kick or ban the target's server; never this one,
    /// nor (for an event relayed for another server's user) the server it came from.
    async fn destinations_of(
        &self,
        event: &EventRow,
        known: &HashMap<i64, GroupMembers>,
    ) -> Result<BTreeSet<OwnedServerName>> {
        let Some(group) = event.state_group else {
            return Ok(BTreeSet::new());
        };
        let mut servers = (*self.servers_at(event.room_nid, group, known).await?).clone();
        if event.event_type == "m.room.member"
            && let Some(target) = &event.state_key
        {
            let membership = serde_json::from_str::<Value>(&event.json)
                .ok()
                .and_then(|json| json["content"]["membership"].as_str().map(str::to_owned));
            if matches!(membership.as_deref(), Some("invite" | "leave" | "ban")) {
                servers.extend(server_of(target));
            }
        }
        servers.remove(&self.server_name);
        if let Some(origin) = server_of(&event.sender) {
            servers.remove(&origin);
        }
        Ok(servers)
    }

    // ----- fan-out -----

    async fn run_fanout(
        self: Arc<Self>,
        mut events: watch::Receiver<u64>,
        mut edus: broadcast::Receiver<EduNotice>,
        mut revived: broadcast::Receiver<OwnedServerName>,
        mut stop: watch::Receiver<bool>,
    ) {
        let mut cursor = FanoutCursor {
            persisted: None,
            scanned: i64::MIN,
            written: std::time::Instant::now(),
        };
        // Every destination gets one look at start-up: what it was owed before the restart.
        if let Err(err) = self.wake_all().await {
            tracing::warn!(%err, "federation sender: could not list destinations");
        }
        loop {
            // Both streams' heads in one read: a wake costs this and, when the events stream
            // moved, one scan.
            let heads = match self
                .store
                .stream_positions_of(&["events", "device_lists"])
                .await
            {
                Ok(heads) => heads,
                Err(err) => {
                    tracing::warn!(%err, "federation sender: could not read the stream heads; trying again shortly");
                    tokio::select! {
                        _ = tokio::time::sleep(ERROR_PAUSE) => continue,
                        _ = stopped(&mut stop) => return,
                    }
                }
            };
            let (Some(&events_head), Some(&device_lists_head)) =
                (heads.get("events"), heads.get("device_lists"))
            else {
                tracing::error!(
                    "federation sender: a stream position row is missing; nothing is sent until it is back"
                );
                tokio::select! {
                    _ = tokio::time::sleep(ERROR_PAUSE) => continue,
                    _ = stopped(&mut stop) => return,
                }
            };
            if let Err(err) = self.fan_out_device_lists(device_lists_head).await {
                tracing::warn!(%err, "federation sender: device-list fan-out failed; trying again at the next wake");
            }
            if let Err(err) = self.fan_out(&mut cursor, events_head).await {
                tracing::warn!(%err, "federation sender: fan-out failed; trying again shortly");
                tokio::select! {
                    _ = tokio::time::sleep(ERROR_PAUSE) => continue,
                    _ = stopped(&mut stop) => return,
                }
            }
            tokio::select! {
                _ = stopped(&mut stop) => return,
                changed = events.changed() => {
                    if changed.is_err() {
                        return;
                    }
                    tokio::select! {
                        _ = tokio::time::sleep(FANOUT_COALESCE) => {}
                        _ = stopped(&mut stop) => return,
                    }
                }
                notice = edus.recv() => match notice {
                    Ok(notice) => {
                        if let Err(err) = self.handle_notice(notice).await {
                            tracing::warn!(%err, "federation sender: could not route an EDU");
                        }
                    }
                    Err(broadcast::error::RecvError::Lagged(_)) => {
                        if let Err(err) = self.wake_all().await {
                            tracing::warn!(%err, "federation sender: could not list destinations");
                        }
                    }
                    Err(broadcast::error::RecvError::Closed) => return,
                },
                server = revived.recv() => match server {
                    Ok(server) => {
                        if lock(&self.workers).contains_key(&server) {
                            self.wake(&server);
                        }
                    }
                    Err(broadcast::error::RecvError::Lagged(_)) => {
                        let known: Vec<OwnedServerName> = lock(&self.workers).keys().cloned().collect();
                        for server in known {
                            self.wake(&server);
                        }
                    }
                    Err(broadcast::error::RecvError::Closed) => {}
                },
                _ = tokio::time::sleep(FANOUT_POLL) => {}
            }
        }
    }

    /// Wakes a worker for every known destination and every destination with EDUs waiting.
    async fn wake_all(self: &Arc<Self>) -> Result<()> {
        let mut destinations: BTreeSet<String> = self
            .store
            .federation_destinations()
            .await?
            .into_iter()
            .map(|row| row.destination)
            .collect();
        destinations.extend(self.store.federation_outbox_destinations().await?);
        for destination in destinations {
            if let Ok(server) = OwnedServerName::try_from(destination.as_str()) {
                self.wake(&server);
            }
        }
        Ok(())
    }

    /// Finds the destinations of the local events past the fan-out position, records them and
    /// wakes their workers, until the position is at the stream's head.
    ///
    /// Events meant for nobody (every event of a server that federates with no one) cost no
    /// write: the position moves in `cursor` and is written at most every
    /// [`FANOUT_PERSIST_EVERY`] (after a restart those events are only read again).
    async fn fan_out(self: &Arc<Self>, cursor: &mut FanoutCursor, head: i64) -> Result<()> {
        // The head read with the wake; a batch that did not reach it reads it again.
        let mut read_head = Some(head);
        loop {
            let persisted = match cursor.persisted {
                Some(position) => position,
                None => {
                    let position = self.store.federation_fanout_position().await?;
                    cursor.persisted = Some(position);
                    position
                }
            };
            let from = persisted.max(cursor.scanned);
            self.fanned_out
                .fetch_max(from, std::sync::atomic::Ordering::Relaxed);
            let head = match read_head.take() {
                Some(head) => head,
                None => self.store.events_stream_position().await?,
            };
            if head <= from {
                if from > persisted && cursor.written.elapsed() >= FANOUT_PERSIST_EVERY {
                    let moved = self
                        .store
                        .record_federation_fanout(persisted, from, &[], 0)
                        .await?;
                    cursor.persisted = moved.then_some(from);
                    cursor.written = std::time::Instant::now();
                }
                return Ok(());
            }
            let events = self
                .store
                .local_events_between(self.server_name.as_str(), from, head, FANOUT_BATCH)
                .await?;
            let to = match events.last() {
                Some(last) if events.len() as i64 == FANOUT_BATCH => last.event.stream_ordering,
                _ => head,
            };
            // What the batch's groups hold themselves, in one read (see `servers_at`).
            let mut uncached: Vec<i64> = {
                let cache = lock(&self.servers);
                events
                    .iter()
                    .filter(|outgoing| self.sends(outgoing))
                    .filter_map(|outgoing| outgoing.event.state_group)
                    .filter(|group| !cache.contains_key(group))
                    .collect()
            };
            uncached.sort_unstable();
            uncached.dedup();
            let known = if uncached.is_empty() {
                HashMap::new()
            } else {
                self.store.group_members_changed(&uncached).await?
            };
            let mut found: BTreeMap<(OwnedServerName, i64), (i64, i64)> = BTreeMap::new();
            for outgoing in &events {
                if !self.sends(outgoing) {
                    continue;
                }
                let event = &outgoing.event;
                for destination in self.destinations_of(event, &known).await? {
                    let span = found
                        .entry((destination, event.room_nid))
                        .or_insert((event.stream_ordering, event.stream_ordering));
                    span.1 = event.stream_ordering;
                }
            }
            // A batch short of full reached the head it was read against: done (what was
            // appended since has woken the fan-out again).
            let reached_head = to == head;
            if found.is_empty() && cursor.written.elapsed() < FANOUT_PERSIST_EVERY {
                cursor.scanned = to;
                self.fanned_out
                    .fetch_max(to, std::sync::atomic::Ordering::Relaxed);
                if reached_head {
                    return Ok(());
                }
                continue;
            }
            let entries: Vec<FanoutEntry> = found
                .iter()
                .map(|((destination, room_nid), (first, last))| FanoutEntry {
                    destination: destination.to_string(),
                    room_nid: *room_nid,
                    first_ordering: *first,
                    last_ordering: *last,
                })
                .collect();
            let receipts_head = self.store.stream_position("receipts").await?;
            // From the persisted position: the events in between were meant for nobody.
            if !self
                .store
                .record_federation_fanout(persisted, to, &entries, receipts_head)
                .await?
            {
                // Another process moved the position: read it again.
                cursor.scanned = i64::MIN;
                cursor.persisted = None;
                continue;
            }
            cursor.persisted = Some(to);
            cursor.scanned = to;
            self.fanned_out
                .fetch_max(to, std::sync::atomic::Ordering::Relaxed);
            cursor.written = std::time::Instant::now();
            let woken: BTreeSet<&OwnedServerName> = found.keys().map(|(d, _)| d).collect();
            for destination in woken {
                self.wake(destination);
            }
            if reached_head {
                return Ok(());
            }
        }
    }

    async fn handle_notice(self: &Arc<Self>, notice: EduNotice) -> Result<()> {
        match notice {
            EduNotice::Typing {
                room_id,
                user_id,
                typing,
            } => {
                // Other servers' users' typing came from their servers: never relayed.
                if !user_id.ends_with(&format!(":{}", self.server_name)) {
                    return Ok(());
                }
                let Some(room) = self.store.room(&room_id).await? else {
                    return Ok(());
                };
                let backoff = self.outbound.backoff().clone();
                for server in self.servers_now(room.room_nid).await?.iter() {
                    // Best effort: a destination that is down would get it too late anyway.
                    if server == &self.server_name || backoff.retry_at(server).is_some() {
                        continue;
                    }
                    if let Some(worker) = self.worker(server) {
                        {
                            let mut queued = lock(&worker.typing);
                            let key = (room_id.clone(), user_id.clone());
                            if queued.len() < MAX_TYPING_QUEUED || queued.contains_key(&key) {
                                queued.insert(key, typing);
                            }
                        }
                        worker.wake.notify_one();
                    }
                }
            }
            EduNotice::Presence { user_id, presence } => {
                // To every server sharing a room with the user now; best effort, as typing.
                let backoff = self.outbound.backoff().clone();
                let mut servers: BTreeSet<OwnedServerName> = BTreeSet::new();
                for room_id in self.store.rooms_with_membership(&user_id, "join").await? {
                    if let Some(room) = self.store.room(&room_id).await? {
                        servers.extend(self.servers_now(room.room_nid).await?.iter().cloned());
                    }
                }
                for server in servers {
                    if server == self.server_name || backoff.retry_at(&server).is_some() {
                        continue;
                    }
                    if let Some(worker) = self.worker(&server) {
                        {
                            let mut queued = lock(&worker.presence);
                            if queued.len() < MAX_PRESENCE_QUEUED || queued.contains_key(&user_id) {
                                queued.insert(user_id.clone(), presence.clone());
                            }
                        }
                        worker.wake.notify_one();
                    }
                }
            }
            EduNotice::Receipt { room_id, position } => {
                let Some(room) = self.store.room(&room_id).await? else {
                    return Ok(());
                };
                for server in self.servers_now(room.room_nid).await?.iter() {
                    if server == &self.server_name {
                        continue;
                    }
                    // A destination met here first is owed this receipt, and so is one whose
                    // worker has not read its row yet or read it past this receipt (a row
                    // it created when a typing notice spawned it starts at the receipts head,
                    // which may already include this receipt).
                    let read_from = lock(&self.workers).get(server).map(|worker| {
                        worker
                            .receipts_from
                            .load(std::sync::atomic::Ordering::Acquire)
                    });
                    if read_from.is_none_or(|from| from >= position) {
                        self.store
                            .owe_federation_receipts_after(server.as_str(), position - 1)
                            .await?;
                    }
                    self.wake(server);
                }
            }
            EduNotice::Outbox { destinations } => {
                for server in destinations {
                    self.wake(&server);
                }
            }
        }
        Ok(())
    }

    // ----- workers -----

    async fn run_worker(
        self: Arc<Self>,
        destination: OwnedServerName,
        worker: Arc<Worker>,
        mut stop: watch::Receiver<bool>,
    ) {
        let backoff = self.outbound.backoff().clone();
        let mut state = WorkerState {
            // A destination that was failing before the restart catches up.
            catching_up: backoff.failures(&destination) > 0,
            ..WorkerState::default()
        };
        let mut look = true;
        loop {
            if !look {
                tokio::select! {
                    _ = worker.wake.notified() => {}
                    _ = stopped(&mut stop) => return,
                }
            }
            look = false;
            let refused_until = state.refused_until.filter(|at| *at > now_millis());
            if let Some(retry_at) = backoff.retry_at(&destination).max(refused_until) {
                let wait = retry_at - now_millis();
                if wait > 0 {
                    // Woken early by new events (nothing to do yet) or by the destination
                    // coming back (then its backoff is gone).
                    tokio::select! {
                        _ = tokio::time::sleep(Duration::from_millis(wait as u64)) => {}
                        _ = worker.wake.notified() => {}
                        _ = stopped(&mut stop) => return,
                    }
                    look = true;
                    continue;
                }
            }
            let step = tokio::select! {
                step = self.step(&destination, &worker, &mut state) => step,
                _ = stopped(&mut stop) => return,
            };
            match step {
                Ok(Step::Progressed) => look = true,
                Ok(Step::Idle) => {}
                Ok(Step::Failed) => {
                    state.catching_up = true;
                    look = true;
                }
                Err(err) => {
                    tracing::warn!(%destination, %err, "federation sender: could not build or record a transaction");
                    tokio::select! {
                        _ = tokio::time::sleep(ERROR_PAUSE) => look = true,
                        _ = stopped(&mut stop) => return,
                    }
                }
            }
        }
    }

    /// Sends the transaction in flight, building one first if there is none.
    async fn step(
        &self,
        destination: &ServerName,
        worker: &Worker,
        state: &mut WorkerState,
    ) -> Result<Step> {
        if state.in_flight.is_none() {
            match self.build(destination, worker, state).await? {
                Some(transaction) => state.in_flight = Some(transaction),
                None => return Ok(Step::Idle),
            }
        }
        let Some(transaction) = state.in_flight.clone() else {
            return Ok(Step::Idle);
        };
        let Some(txn_id) = transaction.id.clone() else {
            state.in_flight = None;
            self.store
                .record_federation_delivery(
                    destination.as_str(),
                    transaction.event_from,
                    transaction.event_to,
                    transaction.receipt_from,
                    transaction.receipt_to,
                    &transaction.outbox_ids,
                    None,
                )
                .await?;
            return Ok(Step::Progressed);
        };
        let mut request = send_transaction_message::v1::Request::new(
            txn_id.clone(),
            self.server_name.clone(),
            transaction.origin_server_ts,
        );
        request.pdus = transaction.pdus.clone();
        request.edus = transaction.edus.clone();
        let started = now_millis();
        match self.outbound.send(destination, request).await {
            Ok(response) => {
                for (event_id, result) in &response.pdus {
                    if let Err(error) = result {
                        tracing::debug!(%destination, %event_id, error, "destination refused an event");
                    }
                }
                state.in_flight = None;
                let moved = self
                    .store
                    .record_federation_delivery(
                        destination.as_str(),
                        transaction.event_from,
                        transaction.event_to,
                        transaction.receipt_from,
                        transaction.receipt_to,
                        &transaction.outbox_ids,
                        Some(now_millis()),
                    )
                    .await?;
                if !moved {
                    tracing::debug!(%destination, "delivery position moved by someone else");
                }
                state.refusals = 0;
                state.refused_until = None;
                tracing::debug!(
                    %destination,
                    %txn_id,
                    pdus = transaction.pdus.len(),
                    edus = transaction.edus.len(),
                    "transaction delivered"
                );
                Ok(Step::Progressed)
            }
            Err(FederationError::NotRetrying { .. }) => Ok(Step::Failed),
            Err(err) => {
                if !err.is_destination_failure() {
                    // It answered but refused the transaction: keep it, and offer it again
                    // after a pause of this worker's, doubling while refusals go on.
                    state.refusals = state.refusals.saturating_add(1);
                    let pause = REFUSED_PAUSE
                        .saturating_mul(1 << (state.refusals - 1).min(16))
                        .min(REFUSED_PAUSE_MAX);
                    state.refused_until = Some(started + pause.as_millis() as i64);
                    tracing::info!(%destination, %txn_id, %err, refusals = state.refusals, "destination refused a transaction; offering it again later");
                } else {
                    tracing::debug!(%destination, %txn_id, %err, "transaction failed");
                }
                Ok(Step::Failed)
            }
        }
    }

    /// The next transaction for `destination`: its pending events (after an outage, only each
    /// room's latest), receipts, typing and outbox EDUs. `None` when there is nothing at all.
    async fn build(
        &self,
        destination: &ServerName,
        worker: &Worker,
        state: &mut WorkerState,
    ) -> Result<Option<Transaction>> {
        let origin = self.server_name.as_str();
        let row = self
            .store
            .federation_destination(destination.as_str(), None)
            .await?;
        worker
            .receipts_from
            .store(row.receipt_position, std::sync::atomic::Ordering::Release);
        // Read before the events: everything up to it is accounted for in the rooms' rows.
        let fanned_out = self.store.federation_fanout_position().await?;
        if state.catching_up {
            state.catching_up = false;
            state.cutoffs = self
                .store
                .federation_catch_up_cutoffs(
                    destination.as_str(),
                    origin,
                    row.event_position,
                    CATCH_UP_ROOM_LIMIT,
                    CATCH_UP_KEEP,
                )
                .await?
                .into_iter()
                .collect();
            if !state.cutoffs.is_empty() {
                tracing::info!(
                    %destination,
                    rooms = state.cutoffs.len(),
                    keep = CATCH_UP_KEEP,
                    "catching up after an outage: only the latest events of rooms far behind"
                );
            }
        }
        let events = self
            .store
            .federation_pending_events(
                destination.as_str(),
                origin,
                row.event_position,
                MAX_PDUS as i64,
            )
            .await?;
        let event_to = match events.last() {
            Some(last) if events.len() == MAX_PDUS => last.event.stream_ordering,
            last => fanned_out
                .max(row.event_position)
                .max(last.map_or(i64::MIN, |e| e.event.stream_ordering)),
        };
        let mut pdus = Vec::new();
        for outgoing in &events {
            let event = &outgoing.event;
            if state
                .cutoffs
                .get(&event.room_nid)
                .is_some_and(|cutoff| event.stream_ordering < *cutoff)
            {
                continue;
            }
            if !self.sends(outgoing)
                || !self
                    .destinations_of(event, &HashMap::new())
                    .await?
                    .contains(destination)
            {
                continue;
            }
            pdus.push(
                RawValue::from_string(event.json.clone())
                    .map_err(|e| Error::Internal(format!("event {}: {e}", event.event_id)))?,
            );
        }
        state.cutoffs.retain(|_, cutoff| *cutoff > event_to);

        let mut edus = Vec::new();
        // Receipts: one EDU per thread, for the rooms the destination is in now.
        let receipts = self
            .store
            .local_receipts_after(origin, row.receipt_position, RECEIPTS_PER_TXN)
            .await?;
        let receipt_to = receipts
            .last()
            .map_or(row.receipt_position, |r| r.stream_position);
        let mut shared = Vec::new();
        for receipt in receipts {
            if self
                .servers_now(receipt.room_nid)
                .await?
                .contains(destination)
            {
                shared.push(receipt);
            }
        }
        edus.extend(receipt_edus(&shared)?);
        // Typing, best effort.
        let typing: Vec<((String, String), bool)> = {
            let mut queued = lock(&worker.typing);
            let keys: Vec<(String, String)> = queued.keys().take(TYPING_PER_TXN).cloned().collect();
            keys.into_iter()
                .filter_map(|key| queued.remove_entry(&key))
                .collect()
        };
        for ((room_id, user_id), typing) in typing {
            edus.push(edu(
                "m.typing",
                json!({ "room_id": room_id, "user_id": user_id, "typing": typing }),
            )?);
        }
        // Presence, best effort: one EDU with every queued user's latest.
        let presence: Vec<Value> = {
            let mut queued = lock(&worker.presence);
            let users: Vec<String> = queued.keys().take(PRESENCE_PER_TXN).cloned().collect();
            users
                .into_iter()
                .filter_map(|user| queued.remove(&user))
                .collect()
        };
        if !presence.is_empty() {
            edus.push(edu("m.presence", json!({ "push": presence }))?);
        }
        // Persisted EDUs fill the rest.
        let room_left = MAX_EDUS.saturating_sub(edus.len()) as i64;
        let mut outbox_ids = Vec::new();
        for queued in self
            .store
            .federation_outbox(destination.as_str(), room_left)
            .await?
        {
            outbox_ids.push(queued.id);
            match serde_json::from_str::<Value>(&queued.content) {
                Ok(content) => edus.push(edu(&queued.edu_type, content)?),
                Err(err) => {
                    tracing::warn!(%destination, id = queued.id, %err, "dropping an unreadable queued EDU");
                }
            }
        }

        let moves = event_to > row.event_position || receipt_to > row.receipt_position;
        if pdus.is_empty() && edus.is_empty() && !moves && outbox_ids.is_empty() {
            return Ok(None);
        }
        let id = if pdus.is_empty() && edus.is_empty() {
            None
        } else {
            let serial = self
                .store
                .next_federation_txn_serial(destination.as_str())
                .await?;
            Some(OwnedTransactionId::from(serial.to_string()))
        };
        Ok(Some(Transaction {
            id,
            origin_server_ts: MilliSecondsSinceUnixEpoch(
                UInt::try_from(now_millis().max(0)).unwrap_or_default(),
            ),
            pdus,
            edus,
            event_from: row.event_position,
            event_to,
            receipt_from: row.receipt_position,
            receipt_to,
            outbox_ids,
        }))
    }

    // ----- operators -----

    /// The events stream position up to which this process has found every local event's
    /// destinations.
    pub fn fanned_out(&self) -> i64 {
        self.fanned_out.load(std::sync::atomic::Ordering::Relaxed)
    }

    /// Every known destination's delivery: those the sender serves and those backing off.
    pub async fn statuses(&self) -> Result<Vec<DestinationStatus>> {
        let mut out: BTreeMap<String, DestinationStatus> = BTreeMap::new();
        for depth in self
            .store
            .federation_queue_depths(self.server_name.as_str())
            .await?
        {
            out.insert(
                depth.destination.clone(),
                DestinationStatus {
                    destination: depth.destination,
                    queued_events: depth.events,
                    queued_edus: depth.edus,
                    failures: 0,
                    retry_at_ms: None,
                    last_success_ms: depth.last_success_ts,
                },
            );
        }
        for (server, down) in self.outbound.backoff().down_destinations() {
            let status = out
                .entry(server.to_string())
                .or_insert_with(|| DestinationStatus {
                    destination: server.to_string(),
                    queued_events: 0,
                    queued_edus: 0,
                    failures: 0,
                    retry_at_ms: None,
                    last_success_ms: None,
                });
            status.failures = down.failures;
            status.retry_at_ms = Some(down.retry_at_ms);
        }
        Ok(out.into_values().collect())
    }
}

/// `m.receipt` EDUs for these receipts: one per thread id (a user has one receipt per room,
/// type and thread, and an EDU holds one per room, type and user).
fn receipt_edus(
    receipts: &[OutgoingReceipt],
) -> Result<Vec<Raw<ruma::api::federation::transactions::edu::Edu>>> {
    let mut by_thread: BTreeMap<&str, serde_json::Map<String, Value>> = BTreeMap::new();
    for receipt in receipts {
        let content = by_thread.entry(receipt.thread_id.as_str()).or_default();
        let mut data = json!({ "ts": receipt.ts });
        if !receipt.thread_id.is_empty() {
            data["thread_id"] = Value::from(receipt.thread_id.clone());
        }
        content
            .entry(receipt.room_id.clone())
            .or_insert_with(|| json!({}))
            .as_object_mut()
            .map(|room| {
                room.entry(receipt.receipt_type.clone())
                    .or_insert_with(|| json!({}))
                    .as_object_mut()
                    .map(|users| {
                        users.insert(
                            receipt.user_id.clone(),
                            json!({ "event_ids": [receipt.event_id], "data": data }),
                        )
                    })
            });
    }
    by_thread
        .into_values()
        .map(|content| edu("m.receipt", Value::Object(content)))
        .collect()
}

/// Resolves once the sender is asked to stop (its guard, which is not `Send`, dropped).
async fn stopped(stop: &mut watch::Receiver<bool>) {
    let _ = stop.wait_for(|s| *s).await;
}

/// Waits for every task (their panics are logged by the runtime; nothing to return).
async fn futures_join_all(tasks: Vec<JoinHandle<()>>) {
    for task in tasks {
        let _ = task.await;
    }
}

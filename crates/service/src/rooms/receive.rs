//! Events from other servers: the spec's checks on receipt, one named step each, each calling
//! the room version's pure check (`myelin_room_version::receipt`), ending in [`Rooms::append`]:
//!
//! 1. format — else dropped (not stored);
//! 2. signatures — else dropped;
//! 3. content hash — else only the redacted form is kept;
//! 4. authorised by its own `auth_events` — else stored as rejected, with the reason;
//! 5. authorised by the state before it (the resolution of the states after its prev events) —
//!    else stored as rejected;
//! 6. authorised by the room's current state — else stored soft-failed: kept out of timelines,
//!    push and the forward extremities, still served over federation.
//!
//! "Rejected" is a verdict on the event and permanent (the state after it is the state before
//! it). "Missing" is not: an event citing events this server lacks (auth events, prev events, or
//! prev events known only as outliers, whose state is unknown) is not stored and comes back as
//! [`Received::Missing`] with their ids, so that the same event handed in again once they are
//! stored is checked afresh. Fetching them is the network's business (the federation receiver);
//! nothing here does I/O beyond the store. Where the history before a prev event is out of
//! reach, the receiver gives the state after it from another server
//! ([`Rooms::remote_state_after`], [`Rooms::receive_pdus_with_prev_states`]). Within one call,
//! events are taken in depth order and an event waiting for another of the same batch is tried
//! again once that one is in.

use std::collections::{HashMap, HashSet};
use std::time::{Duration, Instant};

use myelin_room_version::{
    KeyFormUserId, KeyVerification, Pdu, RoomVersion,
    auth::auth_types_for_event,
    receipt::{self, Failure, ReceiptLookups},
    redaction::{PowerLevel, redact_level, user_power_level},
    verify::ServerKeys,
};
use myelin_store::{
    CurrentStateChange, Delivery, EventRow, EventStatus, JoinedMember, OutlierEvent, Placement,
    RoomRow,
};

use super::{
    Rooms,
    append::{Appending, Fork, Prepared, StateKey, Unresolvable},
    locks::WriterGuard,
    pdu_of, version_of,
};
use crate::{Error, Result, now_millis};

/// Past this many forward extremities a room's are merged by a dummy event (Synapse's
/// threshold).
const MAX_EXTREMITIES: usize = 10;

/// What became of one event handed to [`Rooms::receive_pdus`].
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Received {
    /// Every check passed: it is part of the room.
    Accepted,
    /// Authorised by the state before it but not by the current state: stored, hidden.
    SoftFailed,
    /// Not authorised (steps 4 or 5): stored with this reason, never part of the state.
    Rejected(String),
    /// Not a valid event or not validly signed (steps 1 and 2): not stored.
    Dropped(String),
    /// It cites events this server lacks (or knows only as outliers): not stored; hand it in
    /// again once they are.
    Missing(Vec<String>),
    /// This server has it already (a retransmission): nothing changes.
    AlreadyStored,
}

/// One event's outcome, by its id when it parsed far enough to have one.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ReceivedEvent {
    pub event_id: Option<String>,
    pub outcome: Received,
}

/// How events are taken in: where they go, the states after prev events another server gave,
/// and who sends accepted ones to the room's servers.
#[derive(Clone, Copy)]
struct Receiving<'a> {
    placement: Placement,
    prev_states: &'a HashMap<String, i64>,
    delivery: Delivery,
    /// Whether live events are judged by the room's current state here (step 6): not a join
    /// through a resident, whose current state here is at most what this server knew when it
    /// was last in the room.
    soft_fail: bool,
}

impl<'a> Receiving<'a> {
    fn live(prev_states: &'a HashMap<String, i64>) -> Self {
        Receiving {
            placement: Placement::Live,
            prev_states,
            delivery: Delivery::BySender,
            soft_fail: true,
        }
    }
}

/// The events and states the checks consult, read from the store.
#[derive(Default)]
struct Lookups {
    events: HashMap<String, Pdu>,
    before: HashMap<StateKey, Pdu>,
    current: HashMap<StateKey, Pdu>,
}

impl ReceiptLookups for Lookups {
    fn event(&self, event_id: &str) -> Option<&Pdu> {
        self.events.get(event_id)
    }

    fn state_before(&self, event_type: &str, state_key: &str) -> Option<&Pdu> {
        self.before
            .get(&(event_type.to_owned(), state_key.to_owned()))
    }

    fn current_state(&self, event_type: &str, state_key: &str) -> Option<&Pdu> {
        self.current
            .get(&(event_type.to_owned(), state_key.to_owned()))
    }
}

impl Rooms {
    /// Runs the checks on receipt over events of room `room_id` that other servers sent, and
    /// appends those that are stored (accepted, soft-failed, rejected). `server_keys` holds the
    /// keys of the servers whose signatures the events need (fetched by the caller). Returns
    /// one outcome per event, in the order given.
    pub async fn receive_pdus(
        &self,
        room_id: &str,
        pdus: &[&[u8]],
        server_keys: &ServerKeys,
    ) -> Result<Vec<ReceivedEvent>> {
        self.receive_placed(room_id, pdus, server_keys, Receiving::live(&HashMap::new()))
            .await
    }

    /// [`Rooms::receive_pdus`] where the states after some prev events are known from another
    /// server rather than from this one: `prev_states` maps a prev event (stored, typically as
    /// an outlier, whose own history this server lacks) to the state group after it (see
    /// [`Rooms::remote_state_after`]). An event citing it takes that state as the state after
    /// it (resolved with the states after its other prev events, as always), as the spec's
    /// "missing prev events" fallback asks; the prev event itself stays where it is.
    pub async fn receive_pdus_with_prev_states(
        &self,
        room_id: &str,
        pdus: &[&[u8]],
        server_keys: &ServerKeys,
        prev_states: &HashMap<String, i64>,
    ) -> Result<Vec<ReceivedEvent>> {
        self.receive_placed(room_id, pdus, server_keys, Receiving::live(prev_states))
            .await
    }

    /// This server's join through a resident (`Rooms::place_remote_join`): the join on the
    /// state the resident answered (`prev_states`, for its prev events), without step 6. A room
    /// this server was in before kept the current state of then (a user banned since
    /// unbanned, say), which is no judge of the join: on append the state after the join
    /// replaces it, and the join becomes the room's only forward extremity
    /// ([`myelin_store::CurrentStateChange::Restart`]).
    pub(crate) async fn receive_join_through_resident(
        &self,
        room_id: &str,
        join: &[u8],
        server_keys: &ServerKeys,
        prev_states: &HashMap<String, i64>,
    ) -> Result<Vec<ReceivedEvent>> {
        self.receive_placed(
            room_id,
            &[join],
            server_keys,
            Receiving {
                soft_fail: false,
                // The resident that accepted the join sends it on.
                delivery: Delivery::ByResident,
                ..Receiving::live(prev_states)
            },
        )
        .await
    }

    /// [`Rooms::receive_pdus_with_prev_states`] with the placement given: live events, or
    /// history fetched backwards ([`Rooms::receive_backfill`]).
    pub(crate) async fn receive_placed_pdus(
        &self,
        room_id: &str,
        pdus: &[&[u8]],
        server_keys: &ServerKeys,
        placement: Placement,
        prev_states: &HashMap<String, i64>,
    ) -> Result<Vec<ReceivedEvent>> {
        let receiving = Receiving {
            placement,
            prev_states,
            delivery: Delivery::BySender,
            soft_fail: true,
        };
        self.receive_placed(room_id, pdus, server_keys, receiving)
            .await
    }

    /// The state after event `event_id` of room `room_id` when another server says the state
    /// before it is `state_before` (event ids, as `/state_ids` answers): those events that are
    /// stored in the room and not rejected, plus the event itself at its key if it is a state
    /// event that was not rejected. Written as a state group of its own; `None` when the event
    /// or part of that state is not stored in the room (the event must be, as an outlier at
    /// least, to be cited; a state missing events would be a wrong one).
    pub async fn remote_state_after(
        &self,
        room_id: &str,
        event_id: &str,
        state_before: &[String],
    ) -> Result<Option<i64>> {
        let room = self.room(room_id).await?;
        let Some(event) = self
            .store
            .event(event_id)
            .await?
            .filter(|row| row.room_nid == room.room_nid)
        else {
            return Ok(None);
        };
        let ids: HashSet<&str> = state_before.iter().map(String::as_str).collect();
        let ids: Vec<&str> = ids.into_iter().collect();
        let rows: Vec<EventRow> = self
            .store
            .events_by_ids(&ids)
            .await?
            .into_iter()
            .filter(|row| row.room_nid == room.room_nid)
            .collect();
        if rows.len() < ids.len() {
            // Part of the state is not here: a state built without it would be wrong.
            return Ok(None);
        }
        let mut entries: HashMap<(String, String), i64> = HashMap::new();
        let usable = |row: &EventRow| !matches!(row.status, EventStatus::Rejected(_));
        for row in rows {
            if let Some(key) = row.state_key.clone().filter(|_| usable(&row)) {
                entries.insert((row.event_type.clone(), key), row.event_nid);
            }
        }
        if let Some(key) = event.state_key.clone().filter(|_| usable(&event)) {
            entries.insert((event.event_type.clone(), key), event.event_nid);
        }
        let entries: Vec<(&str, &str, i64)> = entries
            .iter()
            .map(|((kind, key), nid)| (kind.as_str(), key.as_str(), *nid))
            .collect();
        Ok(Some(
            self.store
                .create_state_group(room.room_nid, None, &entries)
                .await?,
        ))
    }

    /// [`Rooms::receive_pdus`] for history fetched backwards (`/backfill`): the same checks
    /// but the current state's (step 6: old history is judged by the state it was sent in),
    /// and the events go below every live stream position, so sync never sees them as new and
    /// `/messages` finds them by depth. They change neither the current state nor the forward
    /// extremities, and notify nobody.
    pub async fn receive_backfill(
        &self,
        room_id: &str,
        pdus: &[&[u8]],
        server_keys: &ServerKeys,
    ) -> Result<Vec<ReceivedEvent>> {
        let no_prev_states = HashMap::new();
        self.receive_placed(
            room_id,
            pdus,
            server_keys,
            Receiving {
                placement: Placement::Backfilled,
                prev_states: &no_prev_states,
                delivery: Delivery::BySender,
                soft_fail: true,
            },
        )
        .await
    }

    /// [`Rooms::receive_pdus`] for one membership event of another server's user that this
    /// server, as the resident, takes in through `send_join`, `send_leave` or `send_knock` and
    /// then sends on to the room's other servers (`Delivery::Relay`, when it is accepted).
    pub(crate) async fn receive_relayed_pdu(
        &self,
        room_id: &str,
        pdu: &[u8],
        server_keys: &ServerKeys,
    ) -> Result<ReceivedEvent> {
        let no_prev_states = HashMap::new();
        let mut outcomes = self
            .receive_placed(
                room_id,
                &[pdu],
                server_keys,
                Receiving {
                    delivery: Delivery::Relay,
                    ..Receiving::live(&no_prev_states)
                },
            )
            .await?;
        outcomes
            .pop()
            .ok_or_else(|| Error::Internal("one event in, no outcome out".to_owned()))
    }

    async fn receive_placed(
        &self,
        room_id: &str,
        pdus: &[&[u8]],
        server_keys: &ServerKeys,
        receiving: Receiving<'_>,
    ) -> Result<Vec<ReceivedEvent>> {
        let placement = receiving.placement;
        let room = self.room(room_id).await?;
        let version = version_of(&room)?;
        // Step 1 for all, so that the batch can be ordered by depth.
        let (mut outcomes, mut pending) = check_formats(&room, version, pdus);
        pending.sort_by_key(|(_, pdu)| pdu.depth());
        // Passes until no event of the batch gets further: an event waiting for another one
        // of the batch is tried again after it.
        let mut batch = Batch::default();
        loop {
            let mut progressed = false;
            let mut still: Vec<(usize, Pdu)> = Vec::new();
            let waiting: HashSet<String> = pending
                .iter()
                .map(|(_, pdu)| pdu.event_id().to_owned())
                .collect();
            for (index, pdu) in pending {
                let outcome = self
                    .receive_one(
                        &room,
                        version,
                        pdu.clone(),
                        server_keys,
                        receiving,
                        &mut batch,
                    )
                    .await?;
                let retry = matches!(&outcome, Received::Missing(ids) if ids.iter().any(|id| waiting.contains(id)));
                if !retry {
                    progressed = true;
                }
                outcomes[index].outcome = outcome;
                if retry {
                    still.push((index, pdu));
                }
            }
            pending = still;
            if pending.is_empty() || !progressed {
                break;
            }
        }
        // What the batch kept is committed before the answer, and the room's lock let go
        // before the extremities are merged (a local send of its own).
        self.flush(&mut batch).await?;
        drop(batch);
        if placement == Placement::Live {
            self.merge_extremities(&room).await?;
        }
        Ok(outcomes)
    }

    /// Keeps a room's forward extremities from growing without bound: past
    /// [`MAX_EXTREMITIES`], a local member sends an `org.matrix.dummy_event`, which cites them
    /// all (up to the spec's 20 prev events) and leaves itself the room's one end, as Synapse
    /// does. Every local send merges them the same way; this covers rooms where only other
    /// servers talk. Rooms without a local member that may send it keep their extremities.
    async fn merge_extremities(&self, room: &RoomRow) -> Result<()> {
        let extremities = self.store.forward_extremities(room.room_nid).await?;
        if extremities.len() <= MAX_EXTREMITIES {
            return Ok(());
        }
        let members = self
            .store
            .joined_member_events(room.room_nid, super::push::PUSH_RULES_TYPE)
            .await?;
        for member in members {
            let Ok(user) = ruma::UserId::parse(member.user_id.as_str()) else {
                continue;
            };
            if !self.is_local(&user) {
                continue;
            }
            let sent = self
                .send(
                    room,
                    &user,
                    super::events::LocalEvent {
                        event_type: "org.matrix.dummy_event",
                        state_key: None,
                        content: serde_json::json!({}),
                        ruled: super::events::Ruled::Plain,
                        txn: None,
                    },
                )
                .await;
            match sent {
                Ok(event_id) => {
                    tracing::info!(room_id = %room.room_id, %event_id, extremities = extremities.len(), "merged the room's forward extremities with a dummy event");
                    return Ok(());
                }
                Err(Error::Forbidden(reason)) => {
                    tracing::debug!(room_id = %room.room_id, user = %user, %reason, "this member may not merge the extremities");
                }
                Err(other) => return Err(other),
            }
        }
        Ok(())
    }

    /// Stores events of room `room_id` as outliers: events a server needs for their place in
    /// auth chains and room states (the state and auth chain a join or a missing-state fetch
    /// brings), not for the timeline. Steps 1 to 4 only (format, signatures, content hash, and
    /// the auth events they cite, from the batch or the store; an event they do not allow is
    /// stored rejected); no state is computed and nothing reaches clients. All in one
    /// transaction, many rows per statement. An outlier handed to [`Rooms::receive_pdus`]
    /// later, once its prev events are known, is upgraded in place.
    pub async fn receive_outliers(
        &self,
        room_id: &str,
        pdus: &[&[u8]],
        server_keys: &ServerKeys,
    ) -> Result<Vec<ReceivedEvent>> {
        let mut timings = OutlierTimings::default();
        self.receive_outliers_timed(room_id, pdus, server_keys, &mut timings)
            .await
    }

    /// [`Rooms::receive_outliers`], noting how long each step took in `timings`.
    pub(crate) async fn receive_outliers_timed(
        &self,
        room_id: &str,
        pdus: &[&[u8]],
        server_keys: &ServerKeys,
        timings: &mut OutlierTimings,
    ) -> Result<Vec<ReceivedEvent>> {
        let room = self.room(room_id).await?;
        let version = version_of(&room)?;
        let started = Instant::now();
        let (mut outcomes, parsed) = check_formats(&room, version, pdus);
        timings.formats = started.elapsed();
        let started = Instant::now();
        let mut checked: Vec<(usize, Pdu)> = Vec::new();
        let mut completing: Vec<Pdu> = Vec::new();
        for (index, pdu) in parsed {
            match receipt::check_signatures(version, &pdu, server_keys)
                .and_then(|verified| receipt::check_content_hash(version, pdu, verified))
            {
                Ok(event) => {
                    outcomes[index].outcome = Received::Accepted;
                    if !event.redacted && self.names_own_key_member(version, &event.pdu) {
                        completing.push(event.pdu.clone());
                    }
                    checked.push((index, event.pdu));
                }
                Err(dropped) => outcomes[index].outcome = Received::Dropped(dropped.to_string()),
            }
        }
        timings.signatures = started.elapsed();

        // Step 4 against the batch and the store: auth events first (depth order, then passes
        // until nothing more can be decided).
        let started = Instant::now();
        let mut lookups = Lookups::default();
        let create_id = cited_create(version, &room.room_id);
        let cited: Vec<&str> = checked
            .iter()
            .flat_map(|(_, pdu)| pdu.auth_events())
            .chain(create_id.as_deref())
            .collect();
        for row in self.store.events_by_ids(&cited).await? {
            if row.room_nid == room.room_nid {
                let mut pdu = pdu_of(&row, version)?;
                pdu.set_rejected(matches!(row.status, EventStatus::Rejected(_)));
                lookups.events.insert(row.event_id.clone(), pdu);
            }
        }
        checked.sort_by_key(|(_, pdu)| pdu.depth());
        let mut verdicts: Vec<(usize, Pdu, Option<String>)> = Vec::new();
        loop {
            let mut still = Vec::new();
            let before = checked.len();
            for (index, pdu) in checked {
                match receipt::check_against_own_auth_events(version, &pdu, &lookups) {
                    Err(Failure::Missing(missing)) => {
                        outcomes[index].outcome = Received::Missing(missing);
                        still.push((index, pdu));
                    }
                    verdict => {
                        let reason = match verdict {
                            Err(Failure::Denied(reason)) => Some(reason),
                            _ => None,
                        };
                        let mut known = pdu.clone();
                        known.set_rejected(reason.is_some());
                        lookups.events.insert(pdu.event_id().to_owned(), known);
                        outcomes[index].outcome = match &reason {
                            Some(reason) => Received::Rejected(reason.clone()),
                            None => Received::Accepted,
                        };
                        verdicts.push((index, pdu, reason));
                    }
                }
            }
            checked = still;
            if checked.is_empty() || checked.len() == before {
                break;
            }
        }
        timings.auth = started.elapsed();
        let started = Instant::now();
        let owned: Vec<(String, Vec<String>, Vec<String>)> = verdicts
            .iter()
            .map(|(_, pdu, _)| {
                (
                    pdu.canonical_json(),
                    pdu.prev_events().map(str::to_owned).collect(),
                    pdu.auth_events().map(str::to_owned).collect(),
                )
            })
            .collect();
        let outliers: Vec<OutlierEvent<'_>> = verdicts
            .iter()
            .zip(&owned)
            .map(|((_, pdu, reason), (json, prev, auth))| OutlierEvent {
                event_id: pdu.event_id(),
                event_type: pdu.event_type(),
                state_key: pdu.state_key(),
                sender: pdu.sender(),
                depth: i64::try_from(pdu.depth()).unwrap_or(i64::MAX),
                origin_server_ts: i64::try_from(pdu.origin_server_ts()).unwrap_or(i64::MAX),
                json,
                prev_event_ids: prev,
                auth_event_ids: auth,
                rejected: reason.as_deref(),
            })
            .collect();
        if !outliers.is_empty() {
            self.store
                .persist_outliers(room.room_nid, &outliers)
                .await?;
        }
        for pdu in &completing {
            self.complete_own_invite_copy(version, pdu).await?;
        }
        timings.persist = started.elapsed();
        Ok(outcomes)
    }

    /// Steps 2 to 6 for one event, then the append.
    async fn receive_one(
        &self,
        room: &RoomRow,
        version: &RoomVersion,
        pdu: Pdu,
        server_keys: &ServerKeys,
        receiving: Receiving<'_>,
        batch: &mut Batch,
    ) -> Result<Received> {
        let Receiving {
            placement,
            prev_states,
            ..
        } = receiving;
        let verified = match receipt::check_signatures(version, &pdu, server_keys) {
            Ok(verified) => verified,
            Err(dropped) => {
                tracing::info!(event_id = pdu.event_id(), %dropped, "dropped a remote event");
                return Ok(Received::Dropped(dropped.to_string()));
            }
        };
        let checked = match receipt::check_content_hash(version, pdu, verified) {
            Ok(checked) => checked,
            Err(dropped) => return Ok(Received::Dropped(dropped.to_string())),
        };
        if checked.redacted {
            tracing::info!(
                event_id = checked.pdu.event_id(),
                "a remote event's content hash does not match: keeping its redacted form"
            );
        }
        let hash_matched = !checked.redacted;
        let pdu = checked.pdu;

        // From here on this event's place in the room is decided against what is stored (and
        // what the batch keeps): the room's writer lock until it is appended.
        batch.lock(self, &room.room_id).await;
        if batch.kept(pdu.event_id()).is_some() {
            return Ok(Received::AlreadyStored);
        }
        if !Batch::may_keep(&pdu) {
            // It may change the state, or redact a kept event: checked against the store,
            // read afresh.
            self.flush(batch).await?;
            batch.forget();
        }
        let create_id = cited_create(version, &room.room_id);
        let cited: Vec<&str> = pdu
            .auth_events()
            .chain(pdu.prev_events())
            .chain(create_id.as_deref())
            .collect();
        // The event itself (stored already?) and what it cites, in one read.
        let mut rows = self
            .rows_through(batch, cited.iter().copied().chain([pdu.event_id()]))
            .await?;
        if let Some(stored) = rows.remove(pdu.event_id()) {
            if stored.status != EventStatus::Outlier {
                return Ok(Received::AlreadyStored);
            }
            if hash_matched {
                self.complete_own_invite_copy(version, &pdu).await?;
            }
        }
        let mut lookups = Lookups::default();
        let mut prev_rows: Vec<EventRow> = Vec::new();
        let prev_ids: HashSet<&str> = pdu.prev_events().collect();
        for row in rows.into_values() {
            if row.room_nid != room.room_nid {
                continue;
            }
            let mut cited_pdu = pdu_of(&row, version)?;
            cited_pdu.set_rejected(matches!(row.status, EventStatus::Rejected(_)));
            lookups.events.insert(row.event_id.clone(), cited_pdu);
            if prev_ids.contains(row.event_id.as_str()) {
                prev_rows.push(row);
            }
        }
        // Events the batch keeps, not stored yet.
        let mut kept_groups: HashMap<&str, i64> = HashMap::new();
        for id in &cited {
            if let Some((kept, group)) = batch.kept(id) {
                lookups.events.insert((*id).to_owned(), kept.clone());
                kept_groups.insert(id, group);
            }
        }

        // Step 4: its own auth events.
        let rejected_by_auth_events =
            match receipt::check_against_own_auth_events(version, &pdu, &lookups) {
                Ok(()) => None,
                Err(Failure::Missing(missing)) => return Ok(Received::Missing(missing)),
                Err(Failure::Denied(reason)) => Some(reason),
            };

        // The state before it: known once every prev event is stored with its state. An event
        // that cites none starts its room: only the room's own create event has that place, in
        // history fetched backwards (the start of a room this server joined later, held as an
        // outlier of the join's state), on the empty state before a room's first event. Any
        // other is not kept.
        let before = if pdu.prev_events().len() == 0 {
            if placement != Placement::Backfilled || !self.is_room_create(room, &pdu).await? {
                tracing::info!(event_id = pdu.event_id(), room_id = %room.room_id, "dropped a remote event that cites no prev events");
                return Ok(Received::Dropped(
                    "an event of an existing room must cite prev events".to_owned(),
                ));
            }
            self.store
                .create_state_group(room.room_nid, None, &[])
                .await?
        } else {
            // The state after each prev event: its own, or the one another server gave for it.
            let prev_groups: Vec<Option<i64>> = pdu
                .prev_events()
                .map(|id| {
                    prev_rows
                        .iter()
                        .find(|row| row.event_id == id)
                        .and_then(|row| row.state_group)
                        .or_else(|| kept_groups.get(id).copied())
                        .or_else(|| prev_states.get(id).copied())
                })
                .collect();
            let unknown: Vec<String> = pdu
                .prev_events()
                .zip(&prev_groups)
                .filter(|(_, group)| group.is_none())
                .map(|(id, _)| id.to_owned())
                .collect();
            if !unknown.is_empty() {
                if let Some(reason) = rejected_by_auth_events {
                    // The verdict needs no state: store it, stateless, as rejected.
                    return self
                        .append_verdict(
                            room,
                            &pdu,
                            (None, None),
                            EventStatus::Rejected(reason),
                            placement,
                            batch,
                        )
                        .await;
                }
                return Ok(Received::Missing(unknown));
            }
            let prev_groups: Vec<i64> = prev_groups.into_iter().flatten().collect();
            match self.state_before(room, version, &prev_groups).await? {
                Ok(before) => before,
                Err(Unresolvable(reason)) => {
                    tracing::info!(event_id = pdu.event_id(), room_id = %room.room_id, %reason, "dropped a remote event: the state before it cannot be resolved");
                    return Ok(Received::Dropped(format!(
                        "the state before it cannot be resolved: {reason}"
                    )));
                }
            }
        };
        let replaces = match pdu.state_key() {
            Some(key) => self
                .store
                .state_entries_at_groups(&[before], &[(pdu.event_type(), key)])
                .await?
                .remove(&before)
                .and_then(|entries| entries.into_values().next()),
            None => None,
        };
        if let Some(reason) = rejected_by_auth_events {
            return self
                .append_verdict(
                    room,
                    &pdu,
                    (Some(before), replaces),
                    EventStatus::Rejected(reason),
                    placement,
                    batch,
                )
                .await;
        }

        // Step 5: the state before it.
        let auth_keys = auth_keys_of(version, &pdu)?;
        lookups.before = self
            .state_pdus_through(batch, version, before, &auth_keys)
            .await?;
        // The state before it is established above (prev events this server lacks count
        // through the state another server gave for them).
        if let Err(failure) =
            receipt::check_against_established_state_before(version, &pdu, &lookups)
        {
            let reason = match failure {
                Failure::Denied(reason) => reason,
                Failure::Missing(missing) => format!("missing events {missing:?}"),
            };
            return self
                .append_verdict(
                    room,
                    &pdu,
                    (Some(before), replaces),
                    EventStatus::Rejected(reason),
                    placement,
                    batch,
                )
                .await;
        }

        // Step 6: the current state (live events only).
        // A room whose state this server takes from another server (a join through a
        // resident) has no current state before that join: nothing to check against.
        let current = match batch.current_group {
            Some(known) => known,
            None => {
                let read = self.store.current_state_group(room.room_nid).await?;
                batch.current_group = Some(read);
                read
            }
        };
        match current {
            // An event on the room's head (the common case: a sender's next message) has the
            // current state before it: the same events, not read twice.
            Some(current) if current == before => lookups.current = lookups.before.clone(),
            Some(current) => {
                lookups.current = self
                    .state_pdus_through(batch, version, current, &auth_keys)
                    .await?;
            }
            None => {}
        }
        if placement == Placement::Live
            && receiving.soft_fail
            && current.is_some()
            && receipt::check_against_current_state(version, &pdu, &lookups).is_err()
        {
            tracing::info!(event_id = pdu.event_id(), room_id = %room.room_id, "soft-failed a remote event: the current state does not allow it");
            return self
                .append_verdict(
                    room,
                    &pdu,
                    (Some(before), replaces),
                    EventStatus::SoftFailed,
                    placement,
                    batch,
                )
                .await;
        }

        // A redaction is applied with it when its target is known and may be redacted by its
        // sender: the same server's event, or a sender with the redact power level; when the
        // target is not known yet, it waits for it.
        let redaction = match pdu.redacts() {
            Some(target) if pdu.event_type() == "m.room.redaction" => {
                self.remote_redaction(room, version, &pdu, target, &lookups)
                    .await?
            }
            _ => RemoteRedaction::Nothing,
        };
        let (stored, redacted_by) = self.stored_form(room, version, &pdu).await?;
        self.append_received(
            batch,
            Appending {
                room,
                pdu: &stored,
                status: EventStatus::Normal,
                placement,
                state_before: Some(before),
                replaces,
                current_state: None,
                txn: None,
                redaction: match &redaction {
                    RemoteRedaction::Applies(target, json) => {
                        Some((target.as_str(), json.as_str()))
                    }
                    _ => None,
                },
                redaction_waits: match (&redaction, pdu.redacts()) {
                    (RemoteRedaction::Waits { by_power }, Some(target)) => {
                        Some((target, *by_power))
                    }
                    _ => None,
                },
                redacted_by: redacted_by.as_deref(),
                now: now_millis(),
                push_inputs: None,
                writing: None,
                just_built: false,
                delivery: receiving.delivery,
            },
        )
        .await?;
        Ok(Received::Accepted)
    }

    /// Whether `pdu` is the create event of `room` (the one its current state holds).
    async fn is_room_create(&self, room: &RoomRow, pdu: &Pdu) -> Result<bool> {
        let create = self
            .store
            .current_state(
                room.room_nid,
                Some(&[("m.room.create".to_owned(), String::new())]),
            )
            .await?;
        Ok(create
            .first()
            .is_some_and(|row| row.event_id == pdu.event_id()))
    }

    /// Stores an event with a verdict that keeps it out of the room's history (rejected or
    /// soft-failed), with its state before and what it replaces there, and says so.
    async fn append_verdict(
        &self,
        room: &RoomRow,
        pdu: &Pdu,
        (before, replaces): (Option<i64>, Option<i64>),
        status: EventStatus,
        placement: Placement,
        batch: &mut Batch,
    ) -> Result<Received> {
        let outcome = match &status {
            EventStatus::Rejected(reason) => {
                tracing::info!(event_id = pdu.event_id(), room_id = %room.room_id, %reason, "rejected a remote event");
                Received::Rejected(reason.clone())
            }
            _ => Received::SoftFailed,
        };
        let (stored, redacted_by) = self.stored_form(room, version_of(room)?, pdu).await?;
        self.append_received(
            batch,
            Appending {
                room,
                pdu: &stored,
                status,
                placement,
                state_before: before,
                replaces,
                current_state: None,
                txn: None,
                redaction: None,
                redaction_waits: None,
                redacted_by: redacted_by.as_deref(),
                now: now_millis(),
                push_inputs: None,
                writing: None,
                just_built: false,
                delivery: Delivery::BySender,
            },
        )
        .await?;
        Ok(outcome)
    }

    /// The state before an event from the states after its prev events (`prev_groups`): the
    /// state after the one prev event, or the resolution of the states after several (written
    /// as a group of its own when they differ).
    async fn state_before(
        &self,
        room: &RoomRow,
        version: &RoomVersion,
        prev_groups: &[i64],
    ) -> Result<Result<i64, Unresolvable>> {
        let mut groups: Vec<i64> = prev_groups.to_vec();
        groups.sort_unstable();
        groups.dedup();
        match groups.as_slice() {
            [] => Err(Error::Internal(
                "an event without prev events reached state_before".to_owned(),
            )),
            [one] => Ok(Ok(*one)),
            several => {
                let forks: Vec<Fork<'_>> = several
                    .iter()
                    .map(|&group| Fork {
                        group: Some(group),
                        on_top: None,
                    })
                    .collect();
                let resolved = match self.resolve_forks(version, &forks).await? {
                    Ok(resolved) => resolved,
                    Err(unresolvable) => return Ok(Err(unresolvable)),
                };
                // Written as a delta over the newest prev's state when the resolution only
                // changes or adds keys to it (the common case), else in full.
                let base = several[several.len() - 1];
                let base_map = self.store.state_ids_at_group(base).await?;
                let mut entries: Vec<(&str, &str, i64)> = Vec::new();
                let mut same_keys = 0;
                for ((kind, key), id) in &resolved.state {
                    let nid = *resolved.nids.get(id).ok_or_else(|| {
                        Error::Internal(format!("resolved state names {id}, which is not stored"))
                    })?;
                    match base_map.get(kind, key) {
                        Some(at) if at == nid => same_keys += 1,
                        Some(_) => {
                            same_keys += 1;
                            entries.push((kind, key, nid));
                        }
                        None => entries.push((kind, key, nid)),
                    }
                }
                if entries.is_empty() && same_keys == base_map.len() {
                    return Ok(Ok(base));
                }
                if same_keys == base_map.len() {
                    return Ok(Ok(self
                        .store
                        .create_state_group(room.room_nid, Some(base), &entries)
                        .await?));
                }
                // Keys left the state: a full snapshot.
                let mut full: Vec<(&str, &str, i64)> = Vec::with_capacity(resolved.state.len());
                for ((kind, key), id) in &resolved.state {
                    full.push((kind, key, resolved.nids[id]));
                }
                Ok(Ok(self
                    .store
                    .create_state_group(room.room_nid, None, &full)
                    .await?))
            }
        }
    }

    /// The events of group `group` at `keys`, as PDUs (rejected ones flagged).
    async fn state_pdus(
        &self,
        version: &RoomVersion,
        group: i64,
        keys: &[StateKey],
    ) -> Result<HashMap<StateKey, Pdu>> {
        let key_refs: Vec<(&str, &str)> =
            keys.iter().map(|(t, k)| (t.as_str(), k.as_str())).collect();
        let entries = self
            .store
            .state_entries_at_groups(&[group], &key_refs)
            .await?
            .remove(&group)
            .unwrap_or_default();
        let nids: Vec<i64> = entries.values().copied().collect();
        let by_nid: HashMap<i64, EventRow> = self
            .store
            .events_by_nids(&nids)
            .await?
            .into_iter()
            .map(|row| (row.event_nid, row))
            .collect();
        let mut out = HashMap::with_capacity(entries.len());
        for (key, nid) in entries {
            if let Some(row) = by_nid.get(&nid) {
                let mut pdu = pdu_of(row, version)?;
                pdu.set_rejected(matches!(row.status, EventStatus::Rejected(_)));
                out.insert(key, pdu);
            }
        }
        Ok(out)
    }

    /// What an accepted remote redaction does to `target`: applied now (its redacted copy)
    /// when the target is a stored event of this room, not redacted before, and the redaction
    /// comes from its sender's server or from someone with the redact power level; kept waiting
    /// when the target is not stored (or only as an outlier) yet.
    async fn remote_redaction(
        &self,
        room: &RoomRow,
        version: &RoomVersion,
        redaction: &Pdu,
        target: &str,
        lookups: &Lookups,
    ) -> Result<RemoteRedaction> {
        let powerful = match lookups.current_state("m.room.create", "") {
            Some(create) => {
                let power = lookups.current_state("m.room.power_levels", "");
                user_power_level(version, redaction.sender(), create, power)
                    >= PowerLevel::Int(redact_level(version, power))
            }
            None => false,
        };
        let row = match self.store.event(target).await? {
            Some(row) if row.room_nid == room.room_nid && row.state_group.is_some() => row,
            Some(row) if row.room_nid != room.room_nid => return Ok(RemoteRedaction::Nothing),
            _ => return Ok(RemoteRedaction::Waits { by_power: powerful }),
        };
        if row.redacted_by.is_some() {
            return Ok(RemoteRedaction::Nothing);
        }
        let target_pdu = pdu_of(&row, version)?;
        if !self.same_server(version, target_pdu.sender(), redaction.sender()) && !powerful {
            return Ok(RemoteRedaction::Nothing);
        }
        let redacted = target_pdu
            .redacted(version)
            .map_err(|e| Error::Internal(format!("redacting {target}: {e}")))?;
        Ok(RemoteRedaction::Applies(
            target.to_owned(),
            redacted.canonical_json(),
        ))
    }

    /// The form an arriving event is stored in: redacted, with the redaction's id, when a
    /// redaction stored before it may apply to it (see [`Rooms::remote_redaction`]); else as
    /// it came. The checks on receipt have judged the event as it came.
    async fn stored_form(
        &self,
        room: &RoomRow,
        version: &RoomVersion,
        pdu: &Pdu,
    ) -> Result<(Pdu, Option<String>)> {
        let waiting = self
            .store
            .waiting_redactions(room.room_nid, pdu.event_id())
            .await?;
        let Some(redaction) = waiting
            .into_iter()
            .find(|w| w.by_power || self.same_server(version, &w.sender, pdu.sender()))
        else {
            return Ok((pdu.clone(), None));
        };
        let redacted = pdu
            .redacted(version)
            .map_err(|e| Error::Internal(format!("redacting {}: {e}", pdu.event_id())))?;
        tracing::info!(event_id = pdu.event_id(), redaction = %redaction.redaction_event_id, "an event arrived after its redaction: stored redacted");
        Ok((redacted, Some(redaction.redaction_event_id)))
    }
}

/// The received events of one [`Rooms::receive_placed`] call, taken in under one hold of the
/// room's writer lock. An accepted event that only extends the room's head (a message or
/// another event without a state key, citing the room's one forward extremity, on its current
/// state: the bulk of a busy room's transactions) is not written at once but kept here, and
/// the events kept are committed together, in one transaction with one flush to disk
/// ([`Rooms::flush`]): when an event that may not be kept comes (it is checked against the
/// store, and written after them), and at the end of the call, before its outcomes are
/// answered. Until then the kept events stand in for the store where the next events' checks
/// look: as the events they cite (prev and auth), as the room's one forward extremity, and as
/// received already. Kept events change neither the room's state nor its members, so the push
/// rules' inputs read for the first are good for the others.
///
/// Reads the checks make are kept too while nothing but kept events is written (stored events
/// do not change, and kept ones change neither state nor members): the rows of events read by
/// id, the state at a group by the keys read, the current state's group and the push rules'
/// inputs. Before an event that may not be kept is checked, and after one is written, they are
/// forgotten ([`Batch::forget`]).
#[derive(Default)]
struct Batch {
    writing: Option<WriterGuard>,
    /// In order, each citing the one before (the first, the room's forward extremities).
    kept: Vec<Kept>,
    /// Stored events read by id (`None`: not stored).
    rows: HashMap<String, Option<EventRow>>,
    /// The events of a state group at the keys read.
    state: HashMap<(i64, Vec<StateKey>), HashMap<StateKey, Pdu>>,
    /// The room's current state group, once read.
    current_group: Option<Option<i64>>,
    push_inputs: Option<(Vec<JoinedMember>, Vec<EventRow>)>,
}

/// An accepted event the batch keeps: as the checks read it, with the state group after it
/// (the current state, which it does not change), and its rows.
struct Kept {
    pdu: Pdu,
    state_group: i64,
    prepared: Prepared,
}

impl Batch {
    /// Takes the room's writer lock unless the batch holds it already.
    async fn lock(&mut self, rooms: &Rooms, room_id: &str) {
        if self.writing.is_none() {
            self.writing = Some(rooms.locks.writer(room_id).await);
        }
    }

    /// A kept event, with the state group after it.
    fn kept(&self, event_id: &str) -> Option<(&Pdu, i64)> {
        self.kept
            .iter()
            .find(|k| k.pdu.event_id() == event_id)
            .map(|k| (&k.pdu, k.state_group))
    }

    /// Forgets the reads kept (see [`Batch`]).
    fn forget(&mut self) {
        self.rows.clear();
        self.state.clear();
        self.current_group = None;
        self.push_inputs = None;
    }

    /// Whether `pdu` could be kept, by its kind: no state key (it cannot change the state) and
    /// not a redaction (its target may be kept, which it must find stored).
    fn may_keep(pdu: &Pdu) -> bool {
        pdu.state_key().is_none() && pdu.event_type() != "m.room.redaction"
    }
}

impl Rooms {
    /// Appends a received event through `batch`: kept when it only extends the room's head
    /// (see [`Batch`]), else written now, after what the batch keeps.
    async fn append_received(&self, batch: &mut Batch, mut appending: Appending<'_>) -> Result<()> {
        let keepable = Batch::may_keep(appending.pdu)
            && appending.status == EventStatus::Normal
            && appending.placement == Placement::Live
            && appending.redaction.is_none()
            && appending.redaction_waits.is_none()
            && appending.redacted_by.is_none();
        let on_kept = match batch.kept.last() {
            // After kept events the room's one extremity is the last of them, and the current
            // state the state after it.
            Some(last) => {
                keepable
                    && appending
                        .pdu
                        .prev_events()
                        .any(|id| id == last.pdu.event_id())
                    && appending.state_before == Some(last.state_group)
            }
            None => keepable,
        };
        if !on_kept {
            self.flush(batch).await?;
        } else if !batch.kept.is_empty() {
            appending.current_state = Some(CurrentStateChange::Extend);
        }
        if appending.status == EventStatus::Normal && appending.placement == Placement::Live {
            if batch.push_inputs.is_none() {
                batch.push_inputs = Some(self.push_inputs(appending.room).await?);
            }
            if let Some((members, state)) = &batch.push_inputs {
                appending.push_inputs = Some((members.clone(), state.as_slice()));
            }
        }
        let pdu = appending.pdu.clone();
        let state_group = appending.state_before;
        let prepared = self.prepare(appending).await?;
        match state_group {
            Some(state_group) if on_kept && prepared.extends_current_state() => {
                batch.kept.push(Kept {
                    pdu,
                    state_group,
                    prepared,
                });
            }
            _ => {
                self.flush(batch).await?;
                let writing = batch.writing.as_ref().map(WriterGuard::share);
                self.commit(vec![prepared], writing).await?;
                // It may have changed the state or the members.
                batch.forget();
            }
        }
        Ok(())
    }

    /// The stored rows of events `ids`, through the reads `batch` keeps (one read for those
    /// it has not).
    async fn rows_through<'i>(
        &self,
        batch: &mut Batch,
        ids: impl Iterator<Item = &'i str>,
    ) -> Result<HashMap<String, EventRow>> {
        let ids: HashSet<&str> = ids.collect();
        let unread: Vec<&str> = ids
            .iter()
            .copied()
            .filter(|id| !batch.rows.contains_key(*id))
            .collect();
        if !unread.is_empty() {
            let mut found: HashMap<String, EventRow> = self
                .store
                .events_by_ids(&unread)
                .await?
                .into_iter()
                .map(|row| (row.event_id.clone(), row))
                .collect();
            for id in unread {
                batch.rows.insert(id.to_owned(), found.remove(id));
            }
        }
        Ok(ids
            .into_iter()
            .filter_map(|id| {
                batch
                    .rows
                    .get(id)
                    .cloned()
                    .flatten()
                    .map(|row| (id.to_owned(), row))
            })
            .collect())
    }

    /// [`Rooms::state_pdus`] through the reads `batch` keeps.
    async fn state_pdus_through(
        &self,
        batch: &mut Batch,
        version: &RoomVersion,
        group: i64,
        keys: &[StateKey],
    ) -> Result<HashMap<StateKey, Pdu>> {
        let mut sorted = keys.to_vec();
        sorted.sort();
        let key = (group, sorted);
        if let Some(known) = batch.state.get(&key) {
            return Ok(known.clone());
        }
        let read = self.state_pdus(version, group, keys).await?;
        batch.state.insert(key, read.clone());
        Ok(read)
    }

    /// Commits what `batch` keeps, in one transaction, under its hold of the room's lock
    /// (shared with the store until the commit has ended, even if this future is dropped).
    async fn flush(&self, batch: &mut Batch) -> Result<()> {
        if batch.kept.is_empty() {
            return Ok(());
        }
        let kept: Vec<Prepared> = batch.kept.drain(..).map(|k| k.prepared).collect();
        tracing::debug!(events = kept.len(), "committing received events together");
        let writing = batch.writing.as_ref().map(WriterGuard::share);
        self.commit(kept, writing).await
    }
}

/// What an accepted remote redaction does to its target ([`Rooms::remote_redaction`]).
enum RemoteRedaction {
    /// Applied with it: the target and its redacted JSON.
    Applies(String, String),
    /// The target is not stored yet: applied when it arrives, if the same server sent it or
    /// `by_power` (the redaction's sender has the redact power level now).
    Waits {
        by_power: bool,
    },
    Nothing,
}

/// Whether two users' ids name the same server.
/// How long the steps of [`Rooms::receive_outliers`] took, for a caller that reports them.
#[derive(Debug, Default, Clone, Copy)]
pub struct OutlierTimings {
    /// Step 1: parsing and format checks.
    pub formats: Duration,
    /// Steps 2 and 3: signatures and content hashes.
    pub signatures: Duration,
    /// Step 4: each event against its own auth events (with reading those already stored).
    pub auth: Duration,
    /// Writing the outliers.
    pub persist: Duration,
}

fn same_domain(a: &str, b: &str) -> bool {
    let server = |user: &str| user.split_once(':').map(|(_, s)| s.to_owned());
    server(a).is_some() && server(a) == server(b)
}

impl Rooms {
    /// Whether two senders count as one server for the redaction rule that lets a server
    /// redact its own users' events without the redact power level. In account-key rooms a
    /// domain proves nothing by itself (MSC4243.md Q9): only the same key, or two keys both
    /// vouched for by that same domain (verified, or ours), count; elsewhere the user ids'
    /// domains.
    fn same_server(&self, version: &RoomVersion, a: &str, b: &str) -> bool {
        if !version.uses_account_keys() {
            return same_domain(a, b);
        }
        let (Ok(a), Ok(b)) = (KeyFormUserId::parse(a), KeyFormUserId::parse(b)) else {
            return false;
        };
        if a.key == b.key {
            return true;
        }
        let vouched = |user: &KeyFormUserId| {
            matches!(
                self.account_keys.lookup(user),
                KeyVerification::Local { .. } | KeyVerification::Verified { .. }
            )
        };
        a.server_name == b.server_name && vouched(&a) && vouched(&b)
    }
}

/// From v12 (room ids are create-event hashes) no event cites the create event in
/// `auth_events`; the auth rules still read it, by the id the room id names (MSC4291). Without
/// it every received event of such a room (account-key rooms among them) would be rejected.
fn cited_create(version: &RoomVersion, room_id: &str) -> Option<String> {
    (version.room_id_format() == myelin_room_version::version::RoomIdFormat::CreateEventHash)
        .then(|| format!("${}", room_id.trim_start_matches('!')))
}

/// Step 1 for a batch: each event parsed as a PDU of the room's version and checked to be in
/// the room. Returns one outcome per event, in the order given (`Missing` with no ids, a
/// placeholder, for those that parsed), and the parsed events with their indices.
fn check_formats(
    room: &RoomRow,
    version: &RoomVersion,
    pdus: &[&[u8]],
) -> (Vec<ReceivedEvent>, Vec<(usize, Pdu)>) {
    let mut outcomes = Vec::with_capacity(pdus.len());
    let mut parsed = Vec::new();
    for (index, bytes) in pdus.iter().enumerate() {
        match receipt::check_format(version, bytes) {
            Ok(pdu) if pdu.room_id_or_own() != room.room_id => outcomes.push(ReceivedEvent {
                event_id: Some(pdu.event_id().to_owned()),
                outcome: Received::Dropped(format!("the event is not in room {}", room.room_id)),
            }),
            Ok(pdu) => {
                outcomes.push(ReceivedEvent {
                    event_id: Some(pdu.event_id().to_owned()),
                    outcome: Received::Missing(Vec::new()),
                });
                parsed.push((index, pdu));
            }
            Err(dropped) => outcomes.push(ReceivedEvent {
                event_id: None,
                outcome: Received::Dropped(dropped.to_string()),
            }),
        }
    }
    (outcomes, parsed)
}

/// The state keys the auth rules read for `pdu` (plus the create event and power levels, which
/// the redaction rule reads).
fn auth_keys_of(version: &RoomVersion, pdu: &Pdu) -> Result<Vec<StateKey>> {
    let mut keys = auth_types_for_event(
        version,
        pdu.event_type(),
        pdu.sender(),
        pdu.state_key(),
        pdu.content(),
    )
    .map_err(|e| Error::Internal(format!("auth types of {}: {e}", pdu.event_id())))?;
    for key in [("m.room.create", ""), ("m.room.power_levels", "")] {
        let key = (key.0.to_owned(), key.1.to_owned());
        if !keys.contains(&key) {
            keys.push(key);
        }
    }
    Ok(keys)
}

impl Rooms {
    /// Whether `pdu` is a member event of an account-key room whose state key is a key-form
    /// user of this server (no store read): the only events this server may hold in a form not
    /// signed by their sender ([`Self::complete_own_invite_copy`]).
    fn names_own_key_member(&self, version: &RoomVersion, pdu: &Pdu) -> bool {
        version.uses_account_keys()
            && pdu.event_type() == "m.room.member"
            && pdu
                .state_key()
                .and_then(|k| KeyFormUserId::parse(k).ok())
                .is_some_and(|target| target.server_name == self.server_name.as_str())
    }

    /// An invite of one of this server's users in an account-key room is stored here as this
    /// server co-signed it in the invite handshake (MSC4243.md §2.5 item 32: the invitee's key
    /// put in, signed by it), before the inviter signed the final event, so that copy fails its
    /// sender's signature. When the final event arrives (in a `send_join`'s auth chain, a
    /// transaction, a fetch), its signatures complete the stored copy, so that this server never
    /// serves (`/event`, `/state`, auth chains) an event other servers would drop. Only that
    /// case: the stored copy must fail verification and the merged one pass it.
    async fn complete_own_invite_copy(&self, version: &RoomVersion, pdu: &Pdu) -> Result<()> {
        use myelin_room_version::{CanonicalJsonValue, verify::verify_pdu};
        if !self.names_own_key_member(version, pdu) {
            return Ok(());
        }
        let Some(stored) = self.store.event(pdu.event_id()).await? else {
            return Ok(());
        };
        let stored = pdu_of(&stored, version)?;
        if verify_pdu(&stored, version, &ServerKeys::new()).is_ok() {
            return Ok(());
        }
        let mut json = stored.into_json();
        let mut signatures = match json.remove("signatures") {
            Some(CanonicalJsonValue::Object(signatures)) => signatures,
            _ => Default::default(),
        };
        if let Some(CanonicalJsonValue::Object(theirs)) = pdu.json().get("signatures") {
            for (entity, by_entity) in theirs {
                signatures
                    .entry(entity.clone())
                    .or_insert_with(|| by_entity.clone());
            }
        }
        json.insert(
            "signatures".to_owned(),
            CanonicalJsonValue::Object(signatures),
        );
        let merged = myelin_room_version::canonical::to_canonical_string(&json);
        let Ok(merged_pdu) = Pdu::from_federation(merged.as_bytes(), version) else {
            return Ok(());
        };
        if merged_pdu.event_id() != pdu.event_id()
            || verify_pdu(&merged_pdu, version, &ServerKeys::new()).is_err()
        {
            return Ok(());
        }
        self.store
            .complete_event_signatures(pdu.event_id(), &merged)
            .await?;
        tracing::debug!(
            event_id = pdu.event_id(),
            "completed the signatures of a local user's co-signed invite"
        );
        Ok(())
    }
}

//! The PDUs of a transaction: grouped by room (the `room_id` each names), refused each for a
//! room this server does not know or is not in (but for an inviter's rescission of a local
//! user's invite, `Rooms::receive_rescinded_invite`), or whose ACL denies the origin; else handed
//! to the receive pipeline room by room with the keys of the servers that signed them. What
//! they cite and this server lacks is then fetched and they are handed in again, a few rounds
//! at most, each round doing the first of these that applies:
//!
//! 1. events lack auth events: their auth chains (`/event_auth`), stored as outliers;
//! 2. events lack prev events, first time: `/get_missing_events` between this server's
//!    forward extremities and the waiting events, the events it brings handed in with them;
//! 3. events still lack prev events (or know them only as outliers, without state): the state
//!    after each such prev event from `/state_ids` (its missing events fetched), so the events
//!    citing it can be placed on it (`Rooms::receive_pdus_with_prev_states`).

use std::collections::{BTreeSet, HashMap, HashSet};

use myelin_room_version::{RoomVersion, receipt, verify::ServerKeys};
use myelin_store::{Placement, RoomRow};
use ruma::ServerName;
use serde_json::value::RawValue;
use tokio::time::Instant;

use super::{
    PduResults,
    fetch::{FetchBudget, KEY_FETCH_TIME},
};
use crate::{
    Error, Result, Services,
    rooms::{Received, ReceivedEvent},
};

/// Rounds of fetching what a room's events lack and handing them in again.
const MAX_ROUNDS: usize = 4;
/// Prev events whose state is fetched (`/state_ids`) per room of a transaction.
const MAX_STATE_FETCHES: usize = 3;
/// Events whose auth chain is fetched (`/event_auth`) per room of a transaction.
const MAX_AUTH_FETCHES: usize = 3;
/// The room version whose event-id rules name the PDUs of rooms this server does not know
/// (best effort: the answer must name them somehow, and every current version names events
/// by the same reference hash).
const UNKNOWN_ROOM_VERSION: &str = "11";

/// Whether and how this server takes a room's PDUs from the origin.
enum RoomFor {
    /// This server does not know the room.
    Unknown,
    /// This server knows the room but none of its users is joined.
    NotIn(RoomRow),
    /// The room's `m.room.server_acl` denies the origin.
    Denied(RoomRow),
    Open(RoomRow),
}

impl Services {
    /// Receives the PDUs of a transaction; the answer for each PDU that can be named.
    pub(super) async fn receive_transaction_pdus(
        &self,
        origin: &ServerName,
        pdus: &[Box<RawValue>],
        budget: &mut FetchBudget,
    ) -> PduResults {
        let mut results = PduResults::new();
        for (room_id, batch) in group_by_room(pdus) {
            let refuse = |results: &mut PduResults, version: Option<&str>, error: &str| {
                for bytes in &batch {
                    if let Some(id) = event_id_of(version, bytes) {
                        results.insert(id, Some(error.to_owned()));
                    }
                }
            };
            match self.room_for(origin, &room_id).await {
                Err(err) => {
                    tracing::warn!(%origin, %room_id, %err, "could not look up the room of received events");
                    refuse(
                        &mut results,
                        None,
                        "Internal error while processing the event",
                    );
                }
                Ok(RoomFor::Unknown) => {
                    tracing::info!(%origin, %room_id, "dropped events of a room this server does not know");
                    refuse(
                        &mut results,
                        None,
                        &format!("This server is not in room {room_id}"),
                    );
                }
                Ok(RoomFor::NotIn(room)) => {
                    // The one kind of event taken for a room this server is not in: the
                    // inviter rescinding a local user's invite (the rooms area decides).
                    let mut rest = Vec::new();
                    for bytes in &batch {
                        match self
                            .rooms
                            .receive_rescinded_invite(origin, &room, bytes)
                            .await
                        {
                            Ok(true) => {
                                if let Some(id) = event_id_of(Some(&room.room_version), bytes) {
                                    results.insert(id, None);
                                }
                            }
                            Ok(false) => rest.push(*bytes),
                            Err(err) => {
                                tracing::warn!(%origin, %room_id, %err, "could not take a leave for an invitee");
                                rest.push(*bytes);
                            }
                        }
                    }
                    if !rest.is_empty() {
                        tracing::info!(%origin, %room_id, "dropped events of a room this server is not in");
                    }
                    for bytes in rest {
                        if let Some(id) = event_id_of(Some(&room.room_version), bytes) {
                            results
                                .insert(id, Some(format!("This server is not in room {room_id}")));
                        }
                    }
                }
                Ok(RoomFor::Denied(room)) => {
                    tracing::info!(%origin, %room_id, "refused events of a server the room's ACL denies");
                    refuse(
                        &mut results,
                        Some(&room.room_version),
                        &format!("Server {origin} is denied by the server ACL of room {room_id}"),
                    );
                }
                Ok(RoomFor::Open(room)) => {
                    match self
                        .receive_room_pdus(origin, &room, &batch, budget, Placement::Live)
                        .await
                    {
                        Ok(outcomes) => {
                            for outcome in outcomes {
                                if let Some(id) = outcome.event_id {
                                    results.insert(id, answer_for(&outcome.outcome));
                                }
                            }
                        }
                        Err(err) => {
                            tracing::warn!(%origin, %room_id, %err, "failed to process received events");
                            refuse(
                                &mut results,
                                Some(&room.room_version),
                                "Internal error while processing the event",
                            );
                        }
                    }
                }
            }
        }
        results
    }

    async fn room_for(&self, origin: &ServerName, room_id: &str) -> Result<RoomFor> {
        let Some(room) = self.store.room(room_id).await? else {
            return Ok(RoomFor::Unknown);
        };
        if !self
            .store
            .server_in_room(room.room_nid, self.config.server_name.as_str())
            .await?
        {
            return Ok(RoomFor::NotIn(room));
        }
        if !self.rooms.server_allowed(room_id, origin).await? {
            return Ok(RoomFor::Denied(room));
        }
        Ok(RoomFor::Open(room))
    }

    /// One room's PDUs through the pipeline, with the fetching rounds of the module
    /// documentation. One outcome per PDU of `batch`, in order. History fetched backwards
    /// (`Placement::Backfilled`) never asks for the events between it and the room's head
    /// (`/get_missing_events`): events whose prev events are out of reach are placed on the
    /// state after them that `origin` gives.
    pub(crate) async fn receive_room_pdus(
        &self,
        origin: &ServerName,
        room: &RoomRow,
        batch: &[&[u8]],
        budget: &mut FetchBudget,
        placement: Placement,
    ) -> Result<Vec<ReceivedEvent>> {
        let version = RoomVersion::get(&room.room_version).map_err(|_| {
            Error::Internal(format!(
                "room {} has unknown version {}",
                room.room_id, room.room_version
            ))
        })?;
        let mut keys = ServerKeys::new();
        self.add_signing_keys(version, batch, &mut keys, Instant::now() + KEY_FETCH_TIME)
            .await?;
        // Account-key rooms: members and senders this server has not verified yet are asked
        // about meanwhile (their events reach clients once verified).
        self.verify_named_later(version, batch);
        let mut prev_states: HashMap<String, i64> = HashMap::new();
        let mut outcomes = self
            .rooms
            .receive_placed_pdus(&room.room_id, batch, &keys, placement, &prev_states)
            .await?;
        // The transaction's events, then those fetched on their behalf that wait too.
        let mut events: Vec<Vec<u8>> = batch.iter().map(|bytes| bytes.to_vec()).collect();
        let mut asked_missing_events = placement == Placement::Backfilled;
        let mut asked_state: HashSet<String> = HashSet::new();
        let mut asked_auth: HashSet<String> = HashSet::new();
        for _ in 0..MAX_ROUNDS {
            let waiting: Vec<usize> = (0..events.len())
                .filter(|&i| matches!(outcomes[i].outcome, Received::Missing(_)))
                .collect();
            if waiting.is_empty() || budget.exhausted() {
                break;
            }
            let wants = Wants::of(version, &events, &outcomes, &waiting);
            let auth_to_ask: Vec<&String> = wants
                .auth_of
                .iter()
                .filter(|id| !asked_auth.contains(*id))
                .take(MAX_AUTH_FETCHES.saturating_sub(asked_auth.len()))
                .collect();
            let state_to_ask: Vec<&String> = wants
                .prev
                .iter()
                .filter(|id| !asked_state.contains(*id))
                .take(MAX_STATE_FETCHES.saturating_sub(asked_state.len()))
                .collect();
            let mut fetched: Vec<Vec<u8>> = Vec::new();
            let mut progressed = false;
            if !auth_to_ask.is_empty() {
                for event_id in auth_to_ask {
                    asked_auth.insert(event_id.clone());
                    progressed |= self
                        .fetch_auth_chain(origin, room, version, event_id, &mut keys, budget)
                        .await?;
                }
            } else if !wants.prev.is_empty() && !asked_missing_events {
                asked_missing_events = true;
                fetched = self
                    .fetch_missing_events(origin, room, &wants.waiting_ids, budget)
                    .await?;
                progressed = !fetched.is_empty();
            } else if !state_to_ask.is_empty() {
                for prev in state_to_ask {
                    asked_state.insert(prev.clone());
                    if let Some(group) = self
                        .fetch_state_after(origin, room, version, prev, &mut keys, budget)
                        .await?
                    {
                        prev_states.insert(prev.clone(), group);
                        progressed = true;
                    }
                }
            } else {
                // Everything that could be asked was.
                break;
            }
            if !progressed {
                // Nothing new to hand in; the next round asks the next thing.
                continue;
            }
            // Hand in again what waits, with what was fetched for it.
            let mut retry = waiting;
            for event in fetched {
                events.push(event);
                outcomes.push(ReceivedEvent {
                    event_id: None,
                    outcome: Received::Missing(Vec::new()),
                });
                retry.push(events.len() - 1);
            }
            let refs: Vec<&[u8]> = retry.iter().map(|&i| events[i].as_slice()).collect();
            self.add_signing_keys(version, &refs, &mut keys, Instant::now() + KEY_FETCH_TIME)
                .await?;
            let again = self
                .rooms
                .receive_placed_pdus(&room.room_id, &refs, &keys, placement, &prev_states)
                .await?;
            for (index, outcome) in retry.into_iter().zip(again) {
                outcomes[index] = outcome;
            }
        }
        outcomes.truncate(batch.len());
        Ok(outcomes)
    }
}

/// What the waiting events of a room lack, by kind: ids of events whose auth events are
/// missing, and prev events that are missing (or without state), leaving out events of the
/// batch itself that may still be placed (they wait for each other).
struct Wants {
    auth_of: Vec<String>,
    prev: BTreeSet<String>,
    waiting_ids: Vec<String>,
}

impl Wants {
    fn of(
        version: &RoomVersion,
        events: &[Vec<u8>],
        outcomes: &[ReceivedEvent],
        waiting: &[usize],
    ) -> Wants {
        // Events of the batch that may still be placed; one that was dropped (a room's create
        // event in a backfill answer: it starts the room, it cannot be appended to it) is
        // not waited for, the state after it is asked for instead.
        let batch_ids: HashSet<&str> = outcomes
            .iter()
            .filter(|o| !matches!(o.outcome, Received::Dropped(_)))
            .filter_map(|o| o.event_id.as_deref())
            .collect();
        let mut wants = Wants {
            auth_of: Vec::new(),
            prev: BTreeSet::new(),
            waiting_ids: Vec::new(),
        };
        for &index in waiting {
            let Received::Missing(missing) = &outcomes[index].outcome else {
                continue;
            };
            let Ok(pdu) = receipt::check_format(version, &events[index]) else {
                continue;
            };
            wants.waiting_ids.push(pdu.event_id().to_owned());
            let mut lacks_auth = false;
            for id in missing {
                if batch_ids.contains(id.as_str()) {
                    continue;
                }
                // A prev event is wanted with the state after it (which brings the event
                // too), even when it is an auth event as well (a room's first events cite the
                // create event both ways).
                if pdu.prev_events().any(|prev| prev == id) {
                    wants.prev.insert(id.clone());
                } else {
                    lacks_auth = true;
                }
            }
            if lacks_auth {
                wants.auth_of.push(pdu.event_id().to_owned());
            }
        }
        wants
    }
}

/// The spec's answer for one PDU: nothing when it was taken (soft-failed ones too: that is
/// this server's business), else why not.
fn answer_for(outcome: &Received) -> Option<String> {
    match outcome {
        Received::Accepted | Received::SoftFailed | Received::AlreadyStored => None,
        Received::Rejected(reason) => Some(format!("Rejected: {reason}")),
        Received::Dropped(reason) => Some(format!("Dropped: {reason}")),
        Received::Missing(ids) => Some(format!(
            "Events it cites could not be fetched: {}",
            ids.join(", ")
        )),
    }
}

/// The PDUs by the room they name, rooms in the order they first appear. PDUs that name none
/// (not JSON objects, or without a string `room_id`) cannot be placed or named: left out.
fn group_by_room(pdus: &[Box<RawValue>]) -> Vec<(String, Vec<&[u8]>)> {
    #[derive(serde::Deserialize)]
    struct RoomOf {
        room_id: Option<serde_json::Value>,
    }
    let mut rooms: Vec<(String, Vec<&[u8]>)> = Vec::new();
    for pdu in pdus {
        let room_id = serde_json::from_str::<RoomOf>(pdu.get())
            .ok()
            .and_then(|r| r.room_id)
            .and_then(|id| id.as_str().map(str::to_owned));
        let Some(room_id) = room_id else {
            tracing::info!("dropped a received PDU that names no room");
            continue;
        };
        match rooms.iter_mut().find(|(id, _)| *id == room_id) {
            Some((_, batch)) => batch.push(pdu.get().as_bytes()),
            None => rooms.push((room_id, vec![pdu.get().as_bytes()])),
        }
    }
    rooms
}

/// The id of a PDU as the room version names it (a room this server does not know: the rules
/// of [`UNKNOWN_ROOM_VERSION`], or the `event_id` the PDU carries in the oldest formats).
fn event_id_of(version: Option<&str>, bytes: &[u8]) -> Option<String> {
    let version = RoomVersion::get(version.unwrap_or(UNKNOWN_ROOM_VERSION)).ok()?;
    if let Ok(pdu) = receipt::check_format(version, bytes) {
        return Some(pdu.event_id().to_owned());
    }
    #[derive(serde::Deserialize)]
    struct IdOf {
        event_id: Option<serde_json::Value>,
    }
    serde_json::from_slice::<IdOf>(bytes)
        .ok()
        .and_then(|p| p.event_id)
        .and_then(|id| id.as_str().map(str::to_owned))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn raw(json: &str) -> Box<RawValue> {
        RawValue::from_string(json.to_owned()).unwrap()
    }

    #[test]
    fn pdus_are_grouped_by_room_in_order_and_unnamed_ones_left_out() {
        let pdus = vec![
            raw(r#"{"room_id": "!b:x", "n": 1}"#),
            raw(r#"{"room_id": "!a:x", "n": 2}"#),
            raw(r#"{"n": 3}"#),
            raw(r#"{"room_id": 7}"#),
            raw(r#"[1]"#),
            raw(r#"{"room_id": "!b:x", "n": 4}"#),
        ];
        let grouped = group_by_room(&pdus);
        let summary: Vec<(&str, usize)> = grouped
            .iter()
            .map(|(room, batch)| (room.as_str(), batch.len()))
            .collect();
        assert_eq!(summary, vec![("!b:x", 2), ("!a:x", 1)]);
    }

    #[test]
    fn answers_name_what_went_wrong_and_nothing_else() {
        assert_eq!(answer_for(&Received::Accepted), None);
        assert_eq!(answer_for(&Received::SoftFailed), None);
        assert_eq!(answer_for(&Received::AlreadyStored), None);
        assert!(answer_for(&Received::Rejected("no".into())).is_some_and(|e| e.contains("no")));
        assert!(
            answer_for(&Received::Missing(vec!["$x".into()])).is_some_and(|e| e.contains("$x"))
        );
    }
}

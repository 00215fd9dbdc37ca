//! The one way into a room's history: [`Rooms::append`]. Every event, local or remote, ends
//! here, under the room's writer lock, with its verdict from the checks it went through (normal,
//! soft-failed, rejected, outlier) and the state before it. `append` decides what the event does
//! to the room's current state, which is always the resolution of the states after the room's
//! forward extremities:
//!
//! - an event that leaves itself as the only extremity, built on the current state (every local
//!   send), extends the current state with itself: no resolution;
//! - an event that leaves other extremities beside it (a fork, typically a remote event built on
//!   an older point) makes the current state the resolution of all the extremities' states, by the
//!   room version's algorithm, written as the set of keys that changed;
//! - soft-failed, rejected and backfilled events and outliers leave the current state alone.
//!
//! It then hands the event to the store's group commit, which keeps the writer lock until the
//! commit has ended (see `locks`), wakes sync and dispatches push.

use std::collections::{HashMap, HashSet};

use myelin_room_version::{Pdu, RoomVersion, state_res::resolve_state};
use myelin_store::{
    CurrentStateChange, Delivery, EventRow, EventStatus, JoinedMember, NewEvent, OwnedNewEvent,
    Placement, RoomRow, StateChange, StateValue, TxnKey,
};

use super::{Rooms, locks::WriterGuard, pdu_of, version_of};
use crate::{Error, Result};

/// State keys as state resolution and the auth rules use them.
pub(super) type StateKey = (String, String);

/// An event on its way into the room, with what the checks decided about it.
pub(super) struct Appending<'a> {
    pub room: &'a RoomRow,
    pub pdu: &'a Pdu,
    pub status: EventStatus,
    pub placement: Placement,
    /// The state before the event (`None` for a room's first event, and for outliers and
    /// events rejected before their state was known).
    pub state_before: Option<i64>,
    /// For a state event: the event at its key in the state before it (`prev_content`).
    pub replaces: Option<i64>,
    /// What the event does to the current state, when the caller already knows (a local send
    /// that cites every extremity extends it); `None` lets `append` decide.
    pub current_state: Option<CurrentStateChange>,
    pub txn: Option<TxnKey<'a>>,
    /// For a redaction applied with it: the redacted event and its redacted JSON.
    pub redaction: Option<(&'a str, &'a str)>,
    /// For a redaction whose target is not stored: the target and whether the redaction's
    /// sender has the redact power level, kept so that the target is redacted when it arrives.
    pub redaction_waits: Option<(&'a str, bool)>,
    /// `pdu` is the redacted form of an event that a redaction stored before it redacts: that
    /// redaction's id.
    pub redacted_by: Option<&'a str>,
    pub now: i64,
    /// The room's members and state for push rules when the caller has read them.
    pub push_inputs: Option<(Vec<JoinedMember>, &'a [EventRow])>,
    /// The room's writer lock, held by the caller since it read what it decided against
    /// (`None` when the caller holds it on, as a batch of received events does).
    pub writing: Option<WriterGuard>,
    /// The event was built here just now (a local event, whose id is new): no stored event can
    /// cite it. Remote events may be cited already by events that arrived before them.
    pub just_built: bool,
    /// Who sends the event to the room's other servers.
    pub delivery: Delivery,
}

/// One side of a fork for state resolution: a stored state, with perhaps a new event on top.
pub(super) struct Fork<'a> {
    pub group: Option<i64>,
    pub on_top: Option<&'a Pdu>,
}

/// State resolution could not settle a set of forks (an event it needs is missing or not a
/// valid event of the room): a fact about those forks, not a fault of this server. Receiving
/// an event whose state before cannot be resolved drops that event alone; an append whose
/// new current state cannot be resolved leaves the current state as it was (and the next
/// append tries again).
#[derive(Debug)]
pub(super) struct Unresolvable(pub String);

/// A resolved room state by key, with the events it names that are stored (by nid).
pub(super) struct Resolved {
    pub state: HashMap<StateKey, String>,
    pub nids: HashMap<String, i64>,
    /// The events read while resolving, by id (for the memberships of changed keys).
    pub events: HashMap<String, Pdu>,
}

/// An event [`Rooms::prepare`] has decided about, ready to be written: its rows, owned, and
/// what the notifications after them need, so that several can wait to be committed together
/// ([`Rooms::commit`]).
pub(super) struct Prepared {
    event: OwnedNewEvent,
    room_id: String,
    /// The content pushers are sent, when a push action notifies.
    push_content: Option<serde_json::Value>,
    /// Whether clients see it (sync is woken for it).
    visible: bool,
}

impl Prepared {
    /// Whether it extends the room's current state (cites every forward extremity, on the
    /// current state).
    pub(super) fn extends_current_state(&self) -> bool {
        self.event.current_state == CurrentStateChange::Extend
    }
}

impl Rooms {
    /// Appends an event (see the module documentation). Returns the event id.
    pub(super) async fn append(&self, mut event: Appending<'_>) -> Result<String> {
        let writing = event.writing.take();
        let prepared = self.prepare(event).await?;
        let event_id = prepared.event.event_id.clone();
        self.commit(vec![prepared], writing).await?;
        Ok(event_id)
    }

    /// What an event does to the room (see the module documentation), decided under the
    /// room's writer lock, and everything its rows need; nothing written yet.
    pub(super) async fn prepare(&self, event: Appending<'_>) -> Result<Prepared> {
        let Appending {
            room,
            pdu,
            status,
            placement,
            state_before,
            replaces,
            current_state,
            txn,
            redaction,
            redaction_waits,
            redacted_by,
            now,
            push_inputs,
            writing: _,
            just_built,
            delivery,
        } = event;
        let visible = status == EventStatus::Normal && placement == Placement::Live;
        let current_state = match current_state {
            Some(decided) => decided,
            None if visible => {
                self.current_state_after(room, pdu, state_before, delivery)
                    .await?
            }
            None => CurrentStateChange::Unchanged,
        };
        let membership = if pdu.event_type() == "m.room.member" {
            membership_of(pdu)
        } else {
            None
        };
        // Only events clients see have relations, search text and push actions.
        let relation = visible
            .then(|| super::relations::relation_of(pdu))
            .flatten();
        let search = visible
            .then(|| super::search::search_text_of(pdu))
            .flatten();
        let push_actions = if visible {
            self.push_actions(room, pdu, push_inputs).await?
        } else {
            Vec::new()
        };
        let push_content = push_actions
            .iter()
            .any(|a| a.notify)
            .then(|| serde_json::from_str(pdu.content().get()).unwrap_or(serde_json::Value::Null));
        let depth = i64::try_from(pdu.depth())
            .map_err(|_| Error::Internal("depth out of range".to_owned()))?;
        Ok(Prepared {
            event: OwnedNewEvent {
                room_nid: room.room_nid,
                event_id: pdu.event_id().to_owned(),
                event_type: pdu.event_type().to_owned(),
                state_key: pdu.state_key().map(str::to_owned),
                sender: pdu.sender().to_owned(),
                depth,
                origin_server_ts: i64::try_from(pdu.origin_server_ts()).unwrap_or(i64::MAX),
                json: pdu.canonical_json(),
                // The edges as the event itself cites them (ids in every event format).
                prev_event_ids: pdu.prev_events().map(str::to_owned).collect(),
                auth_event_ids: pdu.auth_events().map(str::to_owned).collect(),
                state_group_before: state_before,
                replaces,
                status,
                placement,
                current_state,
                just_built,
                membership: match (membership, pdu.state_key()) {
                    (Some(m), Some(target)) => Some((target.to_owned(), m)),
                    _ => None,
                },
                txn: txn.map(|t| {
                    (
                        t.user_id.to_owned(),
                        t.device_id.to_owned(),
                        t.scope.to_owned(),
                        t.txn_id.to_owned(),
                    )
                }),
                redaction: redaction.map(|(target, json)| (target.to_owned(), json.to_owned())),
                redaction_waits: redaction_waits
                    .map(|(target, by_power)| (target.to_owned(), by_power)),
                redacted_by: redacted_by.map(str::to_owned),
                delivery,
                push_actions,
                relation,
                search: search.map(|(key, text)| (key.to_owned(), text)),
                now,
            },
            room_id: room.room_id.clone(),
            push_content,
            visible,
        })
    }

    /// Writes prepared events of one room, in order, in one commit, then wakes sync and
    /// dispatches push. `writing` (the room's writer lock, under which they were prepared) is
    /// held until the commit has ended, even if this future is dropped first.
    pub(super) async fn commit(
        &self,
        events: Vec<Prepared>,
        writing: Option<WriterGuard>,
    ) -> Result<()> {
        let rows: Vec<NewEvent<'_>> = events.iter().map(|e| e.event.borrowed()).collect();
        self.store.persist_events_holding(&rows, writing).await?;
        drop(rows);
        if events.iter().any(|e| e.visible) {
            // Sync waits on new positions; hidden events are none of its business.
            self.notify.notify();
        }
        for Prepared {
            event,
            room_id,
            push_content,
            ..
        } in events
        {
            tracing::debug!(%room_id, event_id = %event.event_id, kind = %event.event_type, status = ?event.status, "appended an event");
            if let Some(content) = push_content {
                self.pushers.dispatch(
                    crate::pushers::PushedEvent {
                        event_id: event.event_id,
                        room_id,
                        room_nid: event.room_nid,
                        event_type: event.event_type,
                        sender: event.sender,
                        content,
                    },
                    &event.push_actions,
                );
            }
        }
        Ok(())
    }

    /// What a normal live event does to the current state: the resolution of the states after
    /// the forward extremities it leaves (see the module documentation). Called under the room's
    /// writer lock.
    async fn current_state_after(
        &self,
        room: &RoomRow,
        pdu: &Pdu,
        state_before: Option<i64>,
        delivery: Delivery,
    ) -> Result<CurrentStateChange> {
        let Some(current) = self.store.current_state_group(room.room_nid).await? else {
            return Ok(match state_before {
                // A join through another server, which gave the state before it: the room's
                // state here starts as the state after it.
                Some(before) => CurrentStateChange::Adopt {
                    entries: self.state_after_entries(room, pdu, before).await?,
                },
                // The room's first event starts its state.
                None => CurrentStateChange::Extend,
            });
        };
        // This server's own join through a resident (it goes through one only when no user
        // of this server is in the room): the room's state here starts again from the state
        // the resident answered, as a first join's does.
        if let (Delivery::ByResident, Some(before)) = (delivery, state_before) {
            return self.restarted_state(room, pdu, before, current).await;
        }
        let cited: HashSet<&str> = pdu.prev_events().collect();
        let mut others: Vec<i64> = Vec::new();
        for (_, id, _, group) in self.store.extremities_with_state(room.room_nid).await? {
            if cited.contains(id.as_str()) {
                continue;
            }
            others.push(group.ok_or_else(|| {
                Error::Internal(format!("forward extremity {id} has no room state"))
            })?);
        }
        if others.is_empty() && state_before == Some(current) {
            return Ok(CurrentStateChange::Extend);
        }
        let version = version_of(room)?;
        let mut forks: Vec<Fork<'_>> = others
            .iter()
            .map(|&group| Fork {
                group: Some(group),
                on_top: None,
            })
            .collect();
        forks.push(Fork {
            group: state_before,
            on_top: Some(pdu),
        });
        let resolved = match self.resolve_forks(version, &forks).await? {
            Ok(resolved) => resolved,
            Err(Unresolvable(reason)) => {
                tracing::warn!(room_id = %room.room_id, event_id = pdu.event_id(), %reason, "the room's forks cannot be resolved: its current state stays as it was");
                return Ok(CurrentStateChange::Unchanged);
            }
        };
        let changes = self.changes_from(version, current, &resolved, pdu).await?;
        Ok(if changes.is_empty() {
            // The resolution is the current state as it is.
            CurrentStateChange::Unchanged
        } else {
            CurrentStateChange::Resolved {
                expected: current,
                changes,
            }
        })
    }

    /// The state after `pdu` on top of state group `before` as the current state of a room
    /// whose current state here is group `current`, which it replaces
    /// ([`CurrentStateChange::Restart`]): the keys where the two differ.
    async fn restarted_state(
        &self,
        room: &RoomRow,
        pdu: &Pdu,
        before: i64,
        current: i64,
    ) -> Result<CurrentStateChange> {
        let after = self.state_after_entries(room, pdu, before).await?;
        let now = self.store.state_ids_at_group(current).await?;
        let mut keys_after: HashSet<(&str, &str)> = HashSet::with_capacity(after.len());
        let mut changes: Vec<StateChange> = Vec::new();
        for entry in &after {
            keys_after.insert((&entry.event_type, &entry.state_key));
            let unchanged = matches!(entry.value, StateValue::Event(nid)
                if now.get(&entry.event_type, &entry.state_key) == Some(nid));
            if !unchanged {
                changes.push(entry.clone());
            }
        }
        for ((kind, key), _) in now.iter() {
            if !keys_after.contains(&(kind.as_str(), key.as_str())) {
                changes.push(StateChange {
                    event_type: kind.clone(),
                    state_key: key.clone(),
                    value: StateValue::Absent,
                    membership: None,
                });
            }
        }
        Ok(CurrentStateChange::Restart {
            expected: current,
            changes,
        })
    }

    /// The whole state after `pdu` on top of state group `before`, as store entries (the
    /// event itself as [`StateValue::Appended`] when it is a state event), with the
    /// memberships of member keys.
    async fn state_after_entries(
        &self,
        room: &RoomRow,
        pdu: &Pdu,
        before: i64,
    ) -> Result<Vec<StateChange>> {
        let version = version_of(room)?;
        let state = self.store.state_ids_at_group(before).await?;
        let member_nids: Vec<i64> = state
            .iter()
            .filter(|((kind, _), _)| kind == "m.room.member")
            .map(|(_, nid)| nid)
            .collect();
        let mut memberships: HashMap<i64, Option<String>> = HashMap::new();
        for row in self.store.events_by_nids(&member_nids).await? {
            memberships.insert(row.event_nid, membership_of(&pdu_of(&row, version)?));
        }
        let own_key = pdu.state_key().map(|key| (pdu.event_type(), key));
        let mut entries: Vec<StateChange> = state
            .iter()
            .filter(|((kind, key), _)| own_key != Some((kind.as_str(), key.as_str())))
            .map(|((kind, key), nid)| StateChange {
                event_type: kind.clone(),
                state_key: key.clone(),
                value: StateValue::Event(nid),
                membership: memberships.get(&nid).cloned().flatten(),
            })
            .collect();
        if let Some((kind, key)) = own_key {
            entries.push(StateChange {
                event_type: kind.to_owned(),
                state_key: key.to_owned(),
                value: StateValue::Appended,
                membership: (kind == "m.room.member")
                    .then(|| membership_of(pdu))
                    .flatten(),
            });
        }
        Ok(entries)
    }

    /// The keys where `resolved` differs from the state of group `current`, as store changes.
    /// The appended event itself (not stored yet) is [`StateValue::Appended`].
    async fn changes_from(
        &self,
        version: &RoomVersion,
        current: i64,
        resolved: &Resolved,
        appended: &Pdu,
    ) -> Result<Vec<StateChange>> {
        let now = self.store.state_ids_at_group(current).await?;
        let mut changes = Vec::new();
        let mut member_ids: Vec<&str> = Vec::new();
        for ((kind, key), id) in &resolved.state {
            let value = if id == appended.event_id() {
                StateValue::Appended
            } else {
                let nid = *resolved.nids.get(id).ok_or_else(|| {
                    Error::Internal(format!("resolved state names {id}, which is not stored"))
                })?;
                if now.get(kind, key) == Some(nid) {
                    continue;
                }
                StateValue::Event(nid)
            };
            if kind == "m.room.member" && !resolved.events.contains_key(id) {
                member_ids.push(id);
            }
            changes.push(StateChange {
                event_type: kind.clone(),
                state_key: key.clone(),
                value,
                membership: None,
            });
        }
        for ((kind, key), _) in now.iter() {
            if !resolved.state.contains_key(&(kind.clone(), key.clone())) {
                changes.push(StateChange {
                    event_type: kind.clone(),
                    state_key: key.clone(),
                    value: StateValue::Absent,
                    membership: None,
                });
            }
        }
        // The memberships of changed member keys, from their events.
        let mut extra: HashMap<String, Pdu> = HashMap::new();
        for row in self.store.events_by_ids(&member_ids).await? {
            extra.insert(row.event_id.clone(), pdu_of(&row, version)?);
        }
        for change in &mut changes {
            if change.event_type != "m.room.member" || change.value == StateValue::Absent {
                continue;
            }
            let id = &resolved.state[&(change.event_type.clone(), change.state_key.clone())];
            let event = if id == appended.event_id() {
                Some(appended)
            } else {
                resolved.events.get(id).or_else(|| extra.get(id))
            };
            change.membership = event.and_then(membership_of);
        }
        changes.sort_by(|a, b| (&a.event_type, &a.state_key).cmp(&(&b.event_type, &b.state_key)));
        Ok(changes)
    }

    /// The resolution of the states of `forks` by the room version's algorithm, reading what it
    /// needs from the store: each fork's state, the auth chain of each (one statement each, over
    /// the auth-edge index), and the events of the conflicted keys, of those chains and of the
    /// unconflicted state the auth rules look at.
    pub(super) async fn resolve_forks(
        &self,
        version: &RoomVersion,
        forks: &[Fork<'_>],
    ) -> Result<Result<Resolved, Unresolvable>> {
        // Each fork's state by key, in event ids.
        let mut nid_maps = Vec::with_capacity(forks.len());
        let mut all_nids: Vec<i64> = Vec::new();
        for fork in forks {
            let map = match fork.group {
                Some(group) => Some(self.store.state_ids_at_group(group).await?),
                None => None,
            };
            if let Some(map) = &map {
                all_nids.extend(map.event_nids());
            }
            nid_maps.push(map);
        }
        all_nids.sort_unstable();
        all_nids.dedup();
        let ids_by_nid = self.store.event_ids_by_nids(&all_nids).await?;
        let mut nids: HashMap<String, i64> =
            ids_by_nid.iter().map(|(n, id)| (id.clone(), *n)).collect();
        let mut state_maps: Vec<HashMap<StateKey, String>> = Vec::with_capacity(forks.len());
        for (fork, map) in forks.iter().zip(&nid_maps) {
            let mut state: HashMap<StateKey, String> = HashMap::new();
            if let Some(map) = map {
                for ((kind, key), nid) in map.iter() {
                    if let Some(id) = ids_by_nid.get(&nid) {
                        state.insert((kind.clone(), key.clone()), id.clone());
                    }
                }
            }
            if let Some(top) = fork.on_top
                && let Some(key) = top.state_key()
            {
                state.insert(
                    (top.event_type().to_owned(), key.to_owned()),
                    top.event_id().to_owned(),
                );
            }
            state_maps.push(state);
        }
        let mut events: HashMap<String, Pdu> = HashMap::new();
        if state_maps.windows(2).all(|w| w[0] == w[1]) {
            let state = state_maps.pop().unwrap_or_default();
            return Ok(Ok(Resolved {
                state,
                nids,
                events,
            }));
        }

        // Each fork's auth chain: the stored chain of its state, and for a new event on top,
        // its auth events and their chains.
        let mut chains: Vec<HashSet<String>> = Vec::with_capacity(forks.len());
        for fork in forks {
            let mut extra: Vec<i64> = Vec::new();
            let mut chain: HashSet<String> = HashSet::new();
            if let Some(top) = fork.on_top {
                let auth_ids: Vec<&str> = top.auth_events().collect();
                for row in self.store.events_by_ids(&auth_ids).await? {
                    extra.push(row.event_nid);
                    nids.insert(row.event_id.clone(), row.event_nid);
                    chain.insert(row.event_id.clone());
                    events.insert(row.event_id.clone(), pdu_of(&row, version)?);
                }
            }
            for (nid, id) in self.store.auth_chain(fork.group, &extra).await? {
                nids.insert(id.clone(), nid);
                chain.insert(id);
            }
            chains.push(chain);
        }

        // The events state resolution reads: the conflicted ones, every auth chain's, and the
        // unconflicted state the auth rules consult (create, power levels, join rules, and the
        // members who sent any of those).
        let mut wanted: HashSet<String> = HashSet::new();
        let keys: HashSet<&StateKey> = state_maps.iter().flat_map(|m| m.keys()).collect();
        for key in &keys {
            let values: HashSet<Option<&String>> = state_maps.iter().map(|m| m.get(*key)).collect();
            let conflicted = values.len() > 1;
            let auth_relevant = matches!(
                key.0.as_str(),
                "m.room.create"
                    | "m.room.power_levels"
                    | "m.room.join_rules"
                    | "m.room.third_party_invite"
            );
            if conflicted || auth_relevant {
                wanted.extend(values.into_iter().flatten().cloned());
            }
        }
        for chain in &chains {
            wanted.extend(chain.iter().cloned());
        }
        for fork in forks {
            if let Some(top) = fork.on_top {
                events.insert(top.event_id().to_owned(), top.clone());
            }
        }
        self.load_events(version, &wanted, &mut events).await?;
        let senders: HashSet<String> = events.values().map(|p| p.sender().to_owned()).collect();
        let mut members: HashSet<String> = HashSet::new();
        for map in &state_maps {
            for sender in &senders {
                if let Some(id) = map.get(&("m.room.member".to_owned(), sender.clone())) {
                    members.insert(id.clone());
                }
            }
        }
        self.load_events(version, &members, &mut events).await?;

        let resolved = match resolve_state(version, &state_maps, &chains, |id| events.get(id), None)
        {
            Ok(resolved) => resolved,
            Err(e) => return Ok(Err(Unresolvable(e.to_string()))),
        };
        Ok(Ok(Resolved {
            state: resolved,
            nids,
            events,
        }))
    }

    /// Reads the stored events of `ids` that `events` lacks into it.
    async fn load_events(
        &self,
        version: &RoomVersion,
        ids: &HashSet<String>,
        events: &mut HashMap<String, Pdu>,
    ) -> Result<()> {
        let missing: Vec<&str> = ids
            .iter()
            .filter(|id| !events.contains_key(*id))
            .map(String::as_str)
            .collect();
        for row in self.store.events_by_ids(&missing).await? {
            let mut pdu = pdu_of(&row, version)?;
            pdu.set_rejected(matches!(row.status, EventStatus::Rejected(_)));
            events.insert(row.event_id.clone(), pdu);
        }
        Ok(())
    }
}

/// `content.membership` of a member event.
pub(super) fn membership_of(pdu: &Pdu) -> Option<String> {
    pdu.content_object()
        .and_then(|c| c.get("membership"))
        .and_then(|m| match m {
            myelin_room_version::CanonicalJsonValue::String(s) => Some(s.clone()),
            _ => None,
        })
}

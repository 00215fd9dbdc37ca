//! State resolution v1 (room version 1), as the network runs it.
//!
//! The spec's description (rooms/v1 "State resolution") leaves details open that decide real
//! outcomes: which states count as conflicting when a key is missing from some of them, what
//! the auth checks run against, and the order within each pass. Rooms of version 1 live on
//! Synapse's answers, so this follows what Synapse's v1 resolver does (the fixtures in
//! `tests/fixtures/synapse_state_res_v1.json` are its output):
//!
//! - A key is conflicted only when two states give it *different* ids; a key that some states
//!   lack takes the value of the states that have it.
//! - Conflicted events that cannot be fetched are ignored; a key left with one event takes it,
//!   a key left with none is dropped.
//! - The events the checks run against start as the unconflicted state's entries for the auth
//!   types of the conflicted events (nothing else of the unconflicted state is consulted, not
//!   even a key whose conflict vanished because only one of its events could be fetched).
//! - Passes: the power levels, then every join-rules key, then every member key, each by the
//!   "auth events" procedure below; the results of a pass join the check state after the whole
//!   pass; then every other key by the "normal events" procedure.
//! - Order: by depth, ties by SHA-1 of the event id. Auth events: from the lowest depth (ties:
//!   greatest SHA-1) upward, each event checked against the state so far plus the previous
//!   winner; the first one refused ends the pass for that key, keeping the previous winner.
//!   Normal events: from the greatest depth (ties: least SHA-1) down, the first one allowed wins;
//!   if none is, the last tried.

use std::collections::{BTreeMap, HashMap, HashSet};

use sha1::{Digest, Sha1};

use super::{StateMap, StateResError, fail};
use crate::auth::{StateKey, auth_types_for_event, check_against_state};
use crate::pdu::Pdu;
use crate::version::RoomVersion;

type Key = (String, String);

pub(super) fn resolve<'a>(
    version: &RoomVersion,
    state_maps: &[StateMap],
    fetch_event: impl Fn(&str) -> Option<&'a Pdu>,
) -> Result<StateMap, StateResError> {
    let Some((first, rest)) = state_maps.split_first() else {
        return Ok(StateMap::new());
    };
    if rest.is_empty() {
        return Ok(first.clone());
    }
    let (mut unconflicted, conflicted_ids) = separate(first, rest);

    // The conflicted events we have, all from one room.
    let mut room: Option<String> = None;
    let mut fetched: Vec<(Key, Vec<&'a Pdu>)> = Vec::with_capacity(conflicted_ids.len());
    for (key, ids) in conflicted_ids {
        let events: Vec<&Pdu> = ids.iter().filter_map(|id| fetch_event(id)).collect();
        for e in &events {
            let r = e.room_id_or_own();
            match &room {
                None => room = Some(r),
                Some(known) if *known != r => {
                    return Err(fail(format!(
                        "event {} is in room {r}, not {known}",
                        e.event_id()
                    )));
                }
                Some(_) => {}
            }
        }
        fetched.push((key, events));
    }

    // What the checks run against: the unconflicted entries (as separated, before the keys
    // whose conflict vanished for want of events are added) for the auth types of every
    // conflicted event we have.
    let mut check_state: HashMap<Key, &Pdu> = HashMap::new();
    for e in fetched.iter().flat_map(|(_, events)| events) {
        for key in auth_keys(version, e) {
            if !check_state.contains_key(&key)
                && let Some(id) = unconflicted.get(&key)
                && let Some(event) = fetch_event(id)
            {
                check_state.insert(key, event);
            }
        }
    }

    let mut conflicted: BTreeMap<Key, Vec<&'a Pdu>> = BTreeMap::new();
    for (key, events) in fetched {
        match events.as_slice() {
            [] => {}
            [only] => {
                unconflicted.insert(key, only.event_id().to_owned());
            }
            _ => {
                conflicted.insert(key, events);
            }
        }
    }

    let mut resolved: BTreeMap<Key, &Pdu> = BTreeMap::new();
    let passes: [&dyn Fn(&Key) -> bool; 3] = [
        &|k| k.0 == "m.room.power_levels" && k.1.is_empty(),
        &|k| k.0 == "m.room.join_rules",
        &|k| k.0 == "m.room.member",
    ];
    for in_pass in passes {
        let mut this_pass = Vec::new();
        for (key, events) in conflicted.iter().filter(|(k, _)| in_pass(k)) {
            if !resolved.contains_key(key) {
                this_pass.push((
                    key.clone(),
                    resolve_auth_events(version, events, &check_state),
                ));
            }
        }
        for (key, event) in this_pass {
            check_state.insert(key.clone(), event);
            resolved.insert(key, event);
        }
    }
    for (key, events) in &conflicted {
        if !resolved.contains_key(key) {
            let winner = resolve_normal_events(version, events, &check_state);
            resolved.insert(key.clone(), winner);
        }
    }

    for (key, event) in resolved {
        unconflicted.insert(key, event.event_id().to_owned());
    }
    Ok(unconflicted)
}

/// Split the states into the unconflicted map and the conflicted keys with their ids. The first
/// state seeds the map; a later state's value for a key the map lacks is taken unless the key is
/// already conflicted (then it joins the conflict); a differing value makes the key conflicted.
fn separate(first: &StateMap, rest: &[StateMap]) -> (StateMap, HashMap<Key, HashSet<String>>) {
    let mut unconflicted = first.clone();
    let mut conflicted: HashMap<Key, HashSet<String>> = HashMap::new();
    for state in rest {
        for (key, id) in state {
            match unconflicted.get(key) {
                None => match conflicted.get_mut(key) {
                    Some(ids) => {
                        ids.insert(id.clone());
                    }
                    None => {
                        unconflicted.insert(key.clone(), id.clone());
                    }
                },
                Some(known) if known != id => {
                    let known = known.clone();
                    unconflicted.remove(key);
                    conflicted.insert(key.clone(), HashSet::from([known, id.clone()]));
                }
                Some(_) => {}
            }
        }
    }
    (unconflicted, conflicted)
}

fn auth_keys(version: &RoomVersion, event: &Pdu) -> Vec<StateKey> {
    auth_types_for_event(
        version,
        event.event_type(),
        event.sender(),
        event.state_key(),
        event.content(),
    )
    .unwrap_or_default()
}

/// Greatest depth first, ties broken by the least SHA-1 of the event id.
fn ordered<'a>(events: &[&'a Pdu]) -> Vec<&'a Pdu> {
    let mut keyed: Vec<(u64, [u8; 20], &Pdu)> = events
        .iter()
        .map(|e| (e.depth(), Sha1::digest(e.event_id().as_bytes()).into(), *e))
        .collect();
    keyed.sort_by(|a, b| b.0.cmp(&a.0).then_with(|| a.1.cmp(&b.1)));
    keyed.into_iter().map(|(_, _, e)| e).collect()
}

fn allowed(version: &RoomVersion, event: &Pdu, state: &HashMap<Key, &Pdu>) -> bool {
    check_against_state(version, event, |t, k| {
        state.get(&(t.to_owned(), k.to_owned())).copied()
    })
    .is_ok()
}

fn resolve_auth_events<'a>(
    version: &RoomVersion,
    events: &[&'a Pdu],
    check_state: &HashMap<Key, &'a Pdu>,
) -> &'a Pdu {
    let mut order = ordered(events);
    order.reverse();
    let keys: HashSet<StateKey> = events.iter().flat_map(|e| auth_keys(version, e)).collect();
    let mut state: HashMap<Key, &Pdu> = check_state
        .iter()
        .filter(|(k, _)| keys.contains(*k))
        .map(|(k, e)| (k.clone(), *e))
        .collect();
    let Some((&first, rest)) = order.split_first() else {
        return events[0];
    };
    let mut winner = first;
    for event in rest {
        let key = (
            winner.event_type().to_owned(),
            winner.state_key().unwrap_or_default().to_owned(),
        );
        state.insert(key, winner);
        if !allowed(version, event, &state) {
            return winner;
        }
        winner = event;
    }
    winner
}

fn resolve_normal_events<'a>(
    version: &RoomVersion,
    events: &[&'a Pdu],
    check_state: &HashMap<Key, &'a Pdu>,
) -> &'a Pdu {
    let order = ordered(events);
    let last = order.last().copied();
    order
        .into_iter()
        .find(|e| allowed(version, e, check_state))
        .or(last)
        .unwrap_or(events[0])
}

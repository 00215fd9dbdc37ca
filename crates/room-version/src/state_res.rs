//! State resolution v2 (rooms 10, 11) and v2.1 (MSC4297: rooms 12 and account-key rooms) behind
//! one function that takes the room version.
//!
//! The algorithm is ruma's; this module owns the interface, so a faster implementation can
//! replace it without touching callers. Inputs are in memory: the forks' state maps, their auth
//! chains, an event lookup, and optionally the conflicted state subgraph (computed here from the
//! in-memory events when the caller has no index for it).
//!
//! Account-key rooms need nothing extra: state resolution compares full key-form user ids
//! (MSC4243.md §4 Q1), and the key-form checks are state-independent, so events that fail them
//! were rejected before reaching state resolution (and rejected events are ignored).

use std::collections::{HashMap, HashSet};

use ruma::OwnedEventId;
use ruma::events::StateEventType;
use ruma::state_res::utils::event_id_set::EventIdSet;

use crate::auth::StateKey;
use crate::pdu::Pdu;
use crate::version::{RoomVersion, StateResAlgorithm};

/// A room state: `(type, state_key)` → event id.
pub type StateMap = HashMap<StateKey, String>;

/// State resolution failed: an event it needed was missing or malformed.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("state resolution failed: {0}")]
pub struct StateResError(pub String);

/// Resolve the state of a room from several forks.
///
/// - `state_maps`: the state of each fork.
/// - `auth_chains`: for each fork, the full auth chain of its state events.
/// - `fetch_event`: every event the algorithm may need (state events, their auth chains); events
///   it cannot find are left out of the conflicted set, as the spec's "events we cannot verify".
/// - `conflicted_subgraph`: for v2.1, the events on auth paths between conflicted events, if the
///   caller has it from an index; `None` computes it from `fetch_event`. Ignored by v2.
pub fn resolve_state<'a>(
    version: &RoomVersion,
    state_maps: &[StateMap],
    auth_chains: &[HashSet<String>],
    fetch_event: impl Fn(&str) -> Option<&'a Pdu>,
    conflicted_subgraph: Option<&HashSet<String>>,
) -> Result<StateMap, StateResError> {
    let rules = version.rules();
    let state_res_rules = match version.state_res() {
        StateResAlgorithm::V2 | StateResAlgorithm::V2_1 => rules
            .state_res
            .v2_rules()
            .ok_or_else(|| StateResError("room version has no v2 state resolution".into()))?,
    };
    let to_id = |s: &str| {
        OwnedEventId::try_from(s).map_err(|e| StateResError(format!("bad event id {s}: {e}")))
    };
    let mut ruma_maps = Vec::with_capacity(state_maps.len());
    for map in state_maps {
        let mut out = ruma::state_res::StateMap::with_capacity(map.len());
        for ((t, k), id) in map {
            out.insert((StateEventType::from(t.as_str()), k.clone()), to_id(id)?);
        }
        ruma_maps.push(out);
    }
    let mut ruma_chains = Vec::with_capacity(auth_chains.len());
    for chain in auth_chains {
        let mut set = EventIdSet::with_capacity(chain.len());
        for id in chain {
            set.insert(to_id(id)?);
        }
        ruma_chains.push(set);
    }
    let resolved = ruma::state_res::resolve(
        &rules.authorization,
        state_res_rules,
        &ruma_maps,
        ruma_chains,
        |id: &ruma::EventId| fetch_event(id.as_str()),
        |conflicted: &ruma::state_res::StateMap<Vec<OwnedEventId>>| {
            let mut set = EventIdSet::new();
            match conflicted_subgraph {
                Some(given) => {
                    for id in given {
                        set.insert(OwnedEventId::try_from(id.as_str()).ok()?);
                    }
                }
                None => {
                    // Only the interior is needed: ruma unions it with the conflicted set.
                    let events: Vec<&Pdu> = conflicted
                        .values()
                        .flatten()
                        .filter_map(|id| fetch_event(id.as_str()))
                        .collect();
                    for pdu in subgraph_interior(&events, &fetch_event) {
                        set.insert(pdu.owned_event_id().clone());
                    }
                }
            }
            Some(set)
        },
    )
    .map_err(|e| StateResError(e.to_string()))?;
    Ok(resolved
        .into_iter()
        .map(|((t, k), id)| ((t.to_string(), k), id.to_string()))
        .collect())
}

/// The conflicted state subgraph (MSC4297): every event on an `auth_events` path from one
/// conflicted event to another, together with the conflicted events themselves (which the full
/// conflicted set contains anyway). Conflicted events that `fetch_event` cannot find are left
/// out, as state resolution ignores them.
pub fn conflicted_state_subgraph<'a, 'b>(
    conflicted: impl IntoIterator<Item = &'b str>,
    fetch_event: impl Fn(&str) -> Option<&'a Pdu>,
) -> HashSet<String> {
    let conflicted: Vec<&'a Pdu> = conflicted.into_iter().filter_map(&fetch_event).collect();
    let mut out: HashSet<String> = subgraph_interior(&conflicted, &fetch_event)
        .into_iter()
        .map(|p| p.event_id().to_owned())
        .collect();
    // Endpoints: conflicted events with a path to another conflicted event, or reached from one.
    out.extend(conflicted.iter().map(|p| p.event_id().to_owned()));
    out
}

/// The events on auth paths between conflicted events, as found by walking from `conflicted`:
/// every event reachable from a conflicted event (forward along `auth_events`) that itself
/// reaches a conflicted event in one or more steps. May include conflicted events; callers
/// union it with the conflicted set anyway.
///
/// Events get dense indices on first sight, so each edge costs one hash lookup and the backward
/// pass runs on plain vectors; all walks are iterative, so deep auth chains cannot overflow the
/// stack.
fn subgraph_interior<'a>(
    conflicted: &[&'a Pdu],
    fetch_event: &impl Fn(&str) -> Option<&'a Pdu>,
) -> Vec<&'a Pdu> {
    let mut index: HashMap<&'a str, u32> = HashMap::with_capacity(conflicted.len() * 2);
    let mut nodes: Vec<&'a Pdu> = Vec::with_capacity(conflicted.len() * 2);
    // Edges as (from, to) index pairs: `from` cites `to` in its auth_events.
    let mut edges: Vec<(u32, u32)> = Vec::new();
    let mut stack: Vec<u32> = Vec::new();
    for pdu in conflicted {
        if let std::collections::hash_map::Entry::Vacant(e) = index.entry(pdu.event_id()) {
            e.insert(nodes.len() as u32);
            stack.push(nodes.len() as u32);
            nodes.push(pdu);
        }
    }
    let conflicted_count = nodes.len();
    while let Some(i) = stack.pop() {
        let pdu = nodes[i as usize];
        for auth in pdu.auth_events() {
            let j = match index.get(auth) {
                Some(j) => *j,
                None => {
                    let Some(next) = fetch_event(auth) else {
                        continue;
                    };
                    let j = nodes.len() as u32;
                    index.insert(next.event_id(), j);
                    nodes.push(next);
                    stack.push(j);
                    j
                }
            };
            edges.push((i, j));
        }
    }
    // Reverse adjacency in compressed form: for each event, who cites it.
    let n = nodes.len();
    let mut start = vec![0u32; n + 1];
    for &(_, to) in &edges {
        start[to as usize + 1] += 1;
    }
    for k in 0..n {
        start[k + 1] += start[k];
    }
    let mut fill = start.clone();
    let mut citers = vec![0u32; edges.len()];
    for &(from, to) in &edges {
        citers[fill[to as usize] as usize] = from;
        fill[to as usize] += 1;
    }
    // Backward from the conflicted events: whoever cites an event that reaches (or is) a
    // conflicted event reaches one too.
    let mut reaches = vec![false; n];
    let mut queue: Vec<u32> = (0..conflicted_count as u32).collect();
    while let Some(k) = queue.pop() {
        let range = start[k as usize] as usize..start[k as usize + 1] as usize;
        for &from in &citers[range] {
            if !reaches[from as usize] {
                reaches[from as usize] = true;
                queue.push(from);
            }
        }
    }
    nodes
        .into_iter()
        .zip(reaches)
        .filter_map(|(pdu, r)| r.then_some(pdu))
        .collect()
}

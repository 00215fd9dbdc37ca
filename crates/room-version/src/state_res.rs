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
            let subgraph = match conflicted_subgraph {
                Some(given) => given.clone(),
                None => {
                    let ids = conflicted.values().flatten().map(|id| id.as_str());
                    conflicted_state_subgraph(ids, &fetch_event)
                }
            };
            let mut set = EventIdSet::with_capacity(subgraph.len());
            for id in subgraph {
                set.insert(OwnedEventId::try_from(id).ok()?);
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
/// conflicted event to another, endpoints included.
///
/// Computed as (events reachable from a conflicted event) ∩ (events that reach a conflicted
/// event), with iterative walks so deep auth chains cannot overflow the stack. Ids are borrowed
/// from the events themselves to avoid allocating per visited edge; conflicted events that
/// `fetch_event` cannot find are left out, as state resolution ignores them anyway.
pub fn conflicted_state_subgraph<'a, 'b>(
    conflicted: impl IntoIterator<Item = &'b str>,
    fetch_event: impl Fn(&str) -> Option<&'a Pdu>,
) -> HashSet<String> {
    let conflicted: Vec<&'a Pdu> = conflicted.into_iter().filter_map(&fetch_event).collect();
    let is_conflicted: HashSet<&'a str> = conflicted.iter().map(|p| p.event_id()).collect();
    // Forward walk: every event reachable from the conflicted set through auth_events.
    let mut reachable: HashMap<&'a str, &'a Pdu> = HashMap::new();
    let mut stack: Vec<&'a Pdu> = conflicted.clone();
    while let Some(pdu) = stack.pop() {
        if reachable.insert(pdu.event_id(), pdu).is_some() {
            continue;
        }
        for auth in pdu.auth_events() {
            if !reachable.contains_key(auth)
                && let Some(next) = fetch_event(auth)
            {
                stack.push(next);
            }
        }
    }
    // Which of those reach a conflicted event in one or more steps: post-order over the
    // reachable subgraph (auth events of reachable events are reachable), memoised.
    let mut reaches: HashMap<&'a str, bool> = HashMap::with_capacity(reachable.len());
    let mut work: Vec<(&'a str, bool)> = Vec::new();
    for start in &conflicted {
        work.push((start.event_id(), false));
        while let Some((id, expanded)) = work.pop() {
            let Some(pdu) = reachable.get(id) else {
                continue;
            };
            if expanded {
                let value = pdu
                    .auth_events()
                    .any(|a| is_conflicted.contains(a) || reaches.get(a).copied().unwrap_or(false));
                reaches.insert(id, value);
            } else if !reaches.contains_key(id) {
                // Provisionally false, which also cuts cycles (a valid DAG has none).
                reaches.insert(id, false);
                work.push((id, true));
                for a in pdu.auth_events() {
                    if !reaches.contains_key(a)
                        && let Some((key, _)) = reachable.get_key_value(a)
                    {
                        work.push((key, false));
                    }
                }
            }
        }
    }
    reachable
        .into_keys()
        .filter(|id| is_conflicted.contains(id) || reaches.get(id).copied().unwrap_or(false))
        .map(str::to_owned)
        .collect()
}

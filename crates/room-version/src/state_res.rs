//! State resolution v1 (room 1, in the `v1` module), v2 (rooms 2 to 11) and v2.1 (MSC4297: rooms
//! 12 and account-key rooms) behind one function that takes the room version.
//!
//! The algorithm is the spec's ("State resolution" in room version 2, with the two changes of
//! MSC4297 for v2.1: the conflicted state subgraph joins the full conflicted set, and the first
//! round of iterative auth checks starts from an empty state). This module implements it on
//! dense integer indices: every event the algorithm touches is fetched once and numbered, auth
//! edges become index lists, `(type, state_key)` pairs are interned, and room states are vectors
//! indexed by interned key. Each event of the full conflicted set is read in one pass (auth
//! list, timestamp, power-event status), since at 10,000 conflicted keys the events no longer
//! fit in cache and the cost is mostly memory reads.
//!
//! The authorisation rules are ruma's `check_state_dependent_auth_rules` (as in
//! `auth::check_against_state`), called with the auth events gathered from those indices, with
//! two shortcuts whose outcome is ruma's by construction and checked against ruma in the tests:
//! the auth-events selection of events whose content needs no parsing beyond `membership`
//! (`simple_auth_types`), and the verdict on plain joins by the joining user
//! (`fast_join_check`), both reading `membership` from the content's canonical text.
//! Where the spec leaves behaviour open (missing events, malformed content), this follows ruma's
//! `state_res::resolve`, kept as a test-only reference that a differential proptest compares
//! against on random rooms.
//!
//! Inputs are in memory: the forks' state maps, their auth chains, an event lookup, and
//! optionally the conflicted state subgraph (computed here from the in-memory events when the
//! caller has no index for it).
//!
//! Account-key rooms need nothing extra: state resolution compares full key-form user ids
//! (MSC4243.md §4 Q1), and the key-form checks are state-independent, so events that fail them
//! were rejected before reaching state resolution (and rejected events are ignored).

use std::borrow::Cow;
use std::cmp::{Ordering, Reverse};
use std::collections::hash_map::Entry;
use std::collections::{BinaryHeap, HashSet};

use foldhash::{HashMap, HashMapExt};
use ruma::events::room::power_levels::UserPowerLevel;
use ruma::events::{StateEventType, TimelineEventType};
use ruma::room::JoinRuleKind;
use ruma::room_version_rules::AuthorizationRules;
use ruma::state_res::events::{
    RoomCreateEvent, RoomJoinRulesEvent, RoomPowerLevelsEvent, RoomPowerLevelsIntField,
};
use ruma::{OwnedUserId, UserId};

use crate::auth::StateKey;
use crate::pdu::Pdu;
use crate::version::{RoomVersion, StateResAlgorithm};

/// A room state: `(type, state_key)` → event id.
pub type StateMap = std::collections::HashMap<StateKey, String>;

/// State resolution failed: an event it needed was missing or malformed.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("state resolution failed: {0}")]
pub struct StateResError(pub String);

fn fail(reason: impl Into<String>) -> StateResError {
    StateResError(reason.into())
}

/// Resolve the state of a room from several forks, with the version's algorithm: v1 for room 1
/// (see the `v1` module: Synapse's behaviour; only `state_maps` and `fetch_event` are read), v2
/// for rooms 2 to 11, v2.1 for 12 and later.
///
/// - `state_maps`: the state of each fork.
/// - `auth_chains`: for each fork, the full auth chain of its state events (v2.1 also reads
///   them to skip walking the conflicted subgraph when no conflicted event is in any of them).
/// - `fetch_event`: every event the algorithm may need (state events, their auth chains); events
///   it cannot find are left out of the conflicted set, as the spec's "events we cannot verify".
/// - `conflicted_subgraph`: for v2.1, the events on auth paths between conflicted events, if the
///   caller has it from an index; `None` computes it from `fetch_event`. Ignored by v2.
///
/// All events must be from the same room, and `fetch_event` must answer with the event of the
/// id asked for.
///
/// Fails when an event the algorithm must read is missing (a mainline power levels event, an
/// auth event on a mainline walk), when a conflicted event is not a state event, or when a
/// power levels or create event needed for the power ordering has malformed content.
pub fn resolve_state<'a>(
    version: &RoomVersion,
    state_maps: &[StateMap],
    auth_chains: &[HashSet<String>],
    fetch_event: impl Fn(&str) -> Option<&'a Pdu>,
    conflicted_subgraph: Option<&HashSet<String>>,
) -> Result<StateMap, StateResError> {
    if version.state_res() == StateResAlgorithm::V1 {
        return v1::resolve(version, state_maps, fetch_event);
    }
    let rules = version.rules();
    let state_res_rules = rules
        .state_res
        .v2_rules()
        .ok_or_else(|| fail("room version has no v2 state resolution"))?;
    let auth_rules = &rules.authorization;

    // The unconflicted state map and the conflicted state set.
    let (unconflicted, conflicted) = split_conflicted(state_maps);
    if conflicted.is_empty() {
        return Ok(unconflicted
            .into_iter()
            .map(|((t, k), id)| ((t.to_owned(), k.to_owned()), id.to_owned()))
            .collect());
    }

    // The conflicted events, their auth events and a few more.
    let mut graph = Graph::new(&fetch_event, conflicted.len() * 2 + 64);

    // The full conflicted set: conflicted state set ∪ auth difference (∪ conflicted state
    // subgraph for v2.1), less the events we cannot fetch.
    let mut full: Vec<u32> = Vec::with_capacity(conflicted.len());
    for id in &conflicted {
        graph.add_to_full(&mut full, id);
    }
    for id in auth_difference(auth_chains) {
        graph.add_to_full(&mut full, id);
    }
    if state_res_rules.consider_conflicted_state_subgraph {
        match conflicted_subgraph {
            Some(given) => {
                for id in given {
                    graph.add_to_full(&mut full, id);
                }
            }
            // A path from conflicted event X to conflicted event Y puts Y in the auth chain of
            // X's fork, so when no conflicted event is in any fork's auth chain there is no
            // such path and nothing to walk.
            None if conflicted
                .iter()
                .any(|id| auth_chains.iter().any(|chain| chain.contains(*id))) =>
            {
                let starts: Vec<u32> = conflicted
                    .iter()
                    .filter_map(|id| graph.intern(id))
                    .collect();
                for i in subgraph_interior(&mut graph, &starts) {
                    if !graph.nodes[i as usize].in_full {
                        graph.nodes[i as usize].in_full = true;
                        full.push(i);
                    }
                }
            }
            None => {}
        }
    }

    // 1. The power events of the full conflicted set and their auth ancestors in it, in reverse
    //    topological power ordering.
    // The same pass resolves each event's auth events (needed by the mainline walk and the
    // auth checks), while the event is in cache.
    let mut power_events: Vec<u32> = Vec::new();
    for &i in &full {
        graph.auth(i);
        let pdu = graph.pdu(i);
        let node = &mut graph.nodes[i as usize];
        node.ts = pdu.origin_server_ts();
        node.own_member =
            *pdu.kind() == TimelineEventType::RoomMember && pdu.state_key() == Some(pdu.sender());
        if is_power_event(pdu) {
            power_events.push(i);
        }
    }
    let sorted_power = sort_power_events(&mut graph, &power_events, auth_rules)?;

    // 2. Iterative auth checks on them, from the unconflicted state map (v2) or nothing (v2.1).
    let mut state = State::default();
    if !state_res_rules.begin_iterative_auth_checks_with_empty_state_map {
        for (&(t, k), id) in &unconflicted {
            let key = state.keys.intern(t, k);
            let value = graph.intern(id).unwrap_or(MISSING);
            state.set(key, value);
        }
    }
    iterative_auth_checks(&mut graph, auth_rules, &sorted_power, &mut state)?;

    // 3. The remaining events in mainline order of the partially resolved power levels.
    let mut in_power_sort = vec![false; graph.nodes.len()];
    for &i in &sorted_power {
        in_power_sort[i as usize] = true;
    }
    let remaining: Vec<u32> = full
        .iter()
        .copied()
        .filter(|&i| !in_power_sort.get(i as usize).copied().unwrap_or(false))
        .collect();
    let power_levels = state
        .keys
        .get("m.room.power_levels", "")
        .map_or(ABSENT, |k| state.get(k));
    let sorted_remaining = mainline_sort(&mut graph, &remaining, power_levels)?;

    // 4. Iterative auth checks on them, from the partially resolved state.
    iterative_auth_checks(&mut graph, auth_rules, &sorted_remaining, &mut state)?;

    // 5. The unconflicted state map wins.
    let mut resolved = StateMap::with_capacity(state.values.len() + unconflicted.len());
    for (key, &value) in state.values.iter().enumerate() {
        if value == ABSENT || value == MISSING {
            continue;
        }
        let (t, k) = state.keys.list[key];
        resolved.insert((t.to_owned(), k.to_owned()), graph.id(value).to_owned());
    }
    for ((t, k), id) in unconflicted {
        resolved.insert((t.to_owned(), k.to_owned()), id.to_owned());
    }
    Ok(resolved)
}

/// Split the forks into the unconflicted state map (keys present in every fork with the same
/// event) and the conflicted state set (every event of the other keys; an id may be listed more
/// than once).
#[allow(clippy::type_complexity)]
fn split_conflicted(state_maps: &[StateMap]) -> (HashMap<(&str, &str), &str>, Vec<&str>) {
    let forks = state_maps.len();
    // Per key: the first event seen, in how many forks, and whether another event was seen.
    let mut seen: HashMap<(&str, &str), (&str, usize, bool)> =
        HashMap::with_capacity(state_maps.first().map_or(0, |m| m.len()));
    let mut conflicted = Vec::new();
    for map in state_maps {
        for ((t, k), id) in map {
            match seen.entry((t.as_str(), k.as_str())) {
                Entry::Vacant(e) => {
                    e.insert((id.as_str(), 1, false));
                }
                Entry::Occupied(mut e) => {
                    let (first, count, is_conflicted) = e.get_mut();
                    if *first == id.as_str() {
                        *count += 1;
                    } else {
                        if !*is_conflicted {
                            *is_conflicted = true;
                            conflicted.push(*first);
                        }
                        conflicted.push(id.as_str());
                    }
                }
            }
        }
    }
    let mut unconflicted = HashMap::with_capacity(seen.len());
    for (key, (first, count, is_conflicted)) in seen {
        if is_conflicted {
            continue;
        }
        if count == forks {
            unconflicted.insert(key, first);
        } else {
            conflicted.push(first);
        }
    }
    (unconflicted, conflicted)
}

/// The auth difference: every event that is in some fork's auth chain but not in all of them.
fn auth_difference(auth_chains: &[HashSet<String>]) -> impl Iterator<Item = &str> {
    auth_chains.iter().enumerate().flat_map(move |(i, chain)| {
        chain
            .iter()
            .filter(move |id| {
                auth_chains
                    .iter()
                    .enumerate()
                    .any(|(j, other)| j != i && !other.contains(*id))
            })
            .map(String::as_str)
    })
}

/// The conflicted state subgraph (MSC4297): every event on an `auth_events` path from one
/// conflicted event to another, together with the conflicted events themselves (which the full
/// conflicted set contains anyway). Conflicted events that `fetch_event` cannot find are left
/// out, as state resolution ignores them.
pub fn conflicted_state_subgraph<'a, 'b>(
    conflicted: impl IntoIterator<Item = &'b str>,
    fetch_event: impl Fn(&str) -> Option<&'a Pdu>,
) -> HashSet<String> {
    let conflicted = conflicted.into_iter();
    let mut graph = Graph::new(&fetch_event, conflicted.size_hint().0 * 2 + 64);
    let starts: Vec<u32> = conflicted.filter_map(|id| graph.intern(id)).collect();
    let mut out: HashSet<String> = subgraph_interior(&mut graph, &starts)
        .into_iter()
        .map(|i| graph.id(i).to_owned())
        .collect();
    // Endpoints: conflicted events with a path to another conflicted event, or reached from one.
    out.extend(starts.iter().map(|&i| graph.id(i).to_owned()));
    out
}

/// A node index standing for "no event" in a state vector.
const ABSENT: u32 = u32::MAX;
/// A node index standing for an event id that `fetch_event` does not know (only possible for
/// unconflicted state in v2, which step 5 restores anyway).
const MISSING: u32 = u32::MAX - 1;

/// In [`Graph::flat`], an auth event that cannot be fetched.
const NO_EVENT: u32 = u32::MAX;

/// One event the algorithm has touched.
struct Node<'a, 'k> {
    pdu: &'a Pdu,
    /// Its event id (the id it was asked for by; the same bytes as the event's own).
    id: &'k str,
    /// Where its `auth_events` (as node indices, in order) start in [`Graph::flat`];
    /// `u32::MAX` until first used.
    auth_start: u32,
    in_full: bool,
    /// For events of the full conflicted set: `origin_server_ts`, and whether it is a member
    /// event about its own sender (read in one pass with the auth list).
    ts: u64,
    own_member: bool,
}

/// Events by dense index, fetched once each.
struct Graph<'a, 'k, 'f, F: Fn(&str) -> Option<&'a Pdu>> {
    fetch: &'f F,
    index: HashMap<&'k str, u32>,
    /// Ids asked for that `fetch` does not know, so they are asked for once.
    unknown: HashSet<&'k str, foldhash::fast::RandomState>,
    nodes: Vec<Node<'a, 'k>>,
    /// Every resolved `auth_events` list, back to back ([`NO_EVENT`] for unknown events).
    flat: Vec<u32>,
    /// The create event named by the room id (v12 rules), once looked up. All events are from
    /// one room (a precondition of [`resolve_state`]), so it is looked up once.
    room_create: Option<Option<u32>>,
}

impl<'a: 'k, 'k, 'f, F: Fn(&str) -> Option<&'a Pdu>> Graph<'a, 'k, 'f, F> {
    /// A graph expecting about `capacity` events.
    fn new(fetch: &'f F, capacity: usize) -> Self {
        Self {
            fetch,
            index: HashMap::with_capacity(capacity),
            unknown: HashSet::default(),
            nodes: Vec::with_capacity(capacity),
            flat: Vec::with_capacity(capacity * 3),
            room_create: None,
        }
    }

    /// The index of the event with this id, fetching it on first sight; `None` if `fetch` does
    /// not know it. One hash lookup; the id's own bytes are the key, so the event itself is
    /// not touched.
    fn intern(&mut self, id: &'k str) -> Option<u32> {
        match self.index.entry(id) {
            Entry::Occupied(e) => Some(*e.get()),
            Entry::Vacant(e) => {
                if self.unknown.contains(id) {
                    return None;
                }
                match (self.fetch)(id) {
                    Some(pdu) => {
                        let i = self.nodes.len() as u32;
                        self.nodes.push(Node {
                            pdu,
                            id,
                            auth_start: u32::MAX,
                            in_full: false,
                            ts: 0,
                            own_member: false,
                        });
                        e.insert(i);
                        Some(i)
                    }
                    None => {
                        self.unknown.insert(id);
                        None
                    }
                }
            }
        }
    }

    /// [`Graph::intern`] for an id that does not live long enough to be a key: the event's own
    /// id becomes the key.
    fn intern_temporary(&mut self, id: &str) -> Option<u32> {
        if let Some(&i) = self.index.get(id) {
            return Some(i);
        }
        let pdu = (self.fetch)(id)?;
        if pdu.event_id() != id {
            return None;
        }
        self.intern(pdu.event_id())
    }

    /// Add the event with this id to the full conflicted set, if it can be fetched.
    fn add_to_full(&mut self, full: &mut Vec<u32>, id: &'k str) {
        if let Some(i) = self.intern(id)
            && !self.nodes[i as usize].in_full
        {
            self.nodes[i as usize].in_full = true;
            full.push(i);
        }
    }

    fn pdu(&self, i: u32) -> &'a Pdu {
        self.nodes[i as usize].pdu
    }

    fn id(&self, i: u32) -> &'k str {
        self.nodes[i as usize].id
    }

    /// Where the `auth_events` of node `i` are in [`Graph::flat`], resolving them on first use.
    fn auth(&mut self, i: u32) -> std::ops::Range<usize> {
        let pdu = self.pdu(i);
        let len = pdu.auth_events().len();
        let start = match self.nodes[i as usize].auth_start {
            u32::MAX => {
                // Interning does not touch `flat`, so the list stays contiguous.
                let start = self.flat.len();
                for id in pdu.auth_events() {
                    let j = self.intern(id).unwrap_or(NO_EVENT);
                    self.flat.push(j);
                }
                self.nodes[i as usize].auth_start = start as u32;
                start
            }
            start => start as usize,
        };
        start..start + len
    }

    /// The resolved `auth_events` of node `i` (call [`Graph::auth`] first).
    fn auth_of(&self, range: std::ops::Range<usize>) -> impl Iterator<Item = u32> + '_ {
        self.flat[range].iter().copied().filter(|&a| a != NO_EVENT)
    }

    /// The create event named by the room id (v12-format rooms), if it can be fetched.
    fn create_from_room_id(&mut self, i: u32) -> Option<u32> {
        let room_id = self.pdu(i).room_id()?;
        if let Some(create) = self.room_create {
            return create;
        }
        let create = room_id
            .strip_prefix('!')
            .and_then(|hash| self.intern_temporary(&format!("${hash}")));
        self.room_create = Some(create);
        create
    }
}

/// The events on auth paths between the `starts` events: every event reachable from one of
/// them (forward along `auth_events`) that itself reaches one of them in one or more steps. May
/// include start events; callers union it with the conflicted set anyway.
///
/// The backward pass runs on plain vectors; all walks are iterative, so deep auth chains cannot
/// overflow the stack.
fn subgraph_interior<'a: 'k, 'k, F: Fn(&str) -> Option<&'a Pdu>>(
    graph: &mut Graph<'a, 'k, '_, F>,
    starts: &[u32],
) -> Vec<u32> {
    // Forward: everything reachable from the starts, with the edges between them.
    let mut reached: Vec<bool> = vec![false; graph.nodes.len()];
    let mut order: Vec<u32> = Vec::with_capacity(starts.len() * 2);
    let mut edges: Vec<(u32, u32)> = Vec::with_capacity(starts.len() * 3);
    let mut stack: Vec<u32> = Vec::new();
    let reach = |reached: &mut Vec<bool>, j: u32| {
        if reached.len() <= j as usize {
            reached.resize(j as usize + 1, false);
        }
        !std::mem::replace(&mut reached[j as usize], true)
    };
    for &s in starts {
        if reach(&mut reached, s) {
            order.push(s);
            stack.push(s);
        }
    }
    while let Some(i) = stack.pop() {
        let range = graph.auth(i);
        for j in graph.auth_of(range) {
            if reach(&mut reached, j) {
                order.push(j);
                stack.push(j);
            }
            edges.push((i, j));
        }
    }
    // Local numbering of the reached events for the backward pass.
    let n = graph.nodes.len();
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
    // Backward from the starts: whoever cites an event that reaches (or is) a start reaches one.
    let mut reaches = vec![false; n];
    let mut queue: Vec<u32> = starts.to_vec();
    while let Some(k) = queue.pop() {
        let range = start[k as usize] as usize..start[k as usize + 1] as usize;
        for &from in &citers[range] {
            if !reaches[from as usize] {
                reaches[from as usize] = true;
                queue.push(from);
            }
        }
    }
    order.into_iter().filter(|&i| reaches[i as usize]).collect()
}

/// Whether the event has an empty state key and this type. Compares the parsed type (no string
/// comparison: the event's own strings may be far away in memory).
fn is_type_with_empty_key(pdu: &Pdu, event_type: &TimelineEventType) -> bool {
    pdu.kind() == event_type && pdu.state_key() == Some("")
}

/// The event's type, as a static string for the types the auth rules look up (so the event's
/// own string, likely far away in memory, is not read).
fn type_name(pdu: &Pdu) -> &str {
    match pdu.kind() {
        TimelineEventType::RoomMember => "m.room.member",
        TimelineEventType::RoomPowerLevels => "m.room.power_levels",
        TimelineEventType::RoomJoinRules => "m.room.join_rules",
        TimelineEventType::RoomCreate => "m.room.create",
        TimelineEventType::RoomThirdPartyInvite => "m.room.third_party_invite",
        _ => pdu.event_type(),
    }
}

/// The `membership` of a member event's content, if it is a string.
fn membership(pdu: &Pdu) -> Option<&str> {
    if let Some(scanned) = scan_member_content(pdu.content().get()) {
        return scanned.membership;
    }
    match pdu.content_object()?.get("membership")? {
        ruma::CanonicalJsonValue::String(s) => Some(s),
        _ => None,
    }
}

/// What [`scan_member_content`] read from a member event's content.
#[derive(Debug, PartialEq, Eq)]
struct MemberContent<'c> {
    /// `membership`, absent or a string.
    membership: Option<&'c str>,
    /// Whether `third_party_invite` or `join_authorised_via_users_server` is present.
    special: bool,
}

/// Read the top-level fields state resolution needs from a member event's content, straight
/// from its canonical JSON text (one contiguous buffer, where the parsed object is a tree of
/// separate allocations). `None` whenever the text is not in the plain form this reads (a key
/// or the `membership` value with escapes, a non-string `membership`, anything unexpected):
/// callers then read the parsed object.
fn scan_member_content(text: &str) -> Option<MemberContent<'_>> {
    let b = text.as_bytes();
    let mut out = MemberContent {
        membership: None,
        special: false,
    };
    if b.first() != Some(&b'{') {
        return None;
    }
    let mut pos = 1;
    if b.get(pos) == Some(&b'}') {
        return (pos + 1 == b.len()).then_some(out);
    }
    loop {
        let key = plain_string(text, &mut pos)?;
        if b.get(pos) != Some(&b':') {
            return None;
        }
        pos += 1;
        match key {
            "membership" => out.membership = Some(plain_string(text, &mut pos)?),
            "third_party_invite" | "join_authorised_via_users_server" => {
                out.special = true;
                skip_value(b, &mut pos)?;
            }
            _ => skip_value(b, &mut pos)?,
        }
        match b.get(pos)? {
            b',' => pos += 1,
            b'}' => {
                pos += 1;
                break;
            }
            _ => return None,
        }
    }
    (pos == b.len()).then_some(out)
}

/// A JSON string without escapes at `pos` (moved past it); `None` otherwise.
fn plain_string<'c>(text: &'c str, pos: &mut usize) -> Option<&'c str> {
    let b = text.as_bytes();
    if b.get(*pos) != Some(&b'"') {
        return None;
    }
    let start = *pos + 1;
    let len = b
        .get(start..)?
        .iter()
        .position(|&c| c == b'"' || c == b'\\')?;
    if b[start + len] != b'"' {
        return None;
    }
    *pos = start + len + 1;
    text.get(start..start + len)
}

/// Move `pos` past the JSON string starting there (escapes allowed).
fn skip_string(b: &[u8], pos: &mut usize) -> Option<()> {
    *pos += 1;
    loop {
        match *b.get(*pos)? {
            b'\\' => *pos += 2,
            b'"' => {
                *pos += 1;
                return Some(());
            }
            _ => *pos += 1,
        }
    }
}

/// Move `pos` past the JSON value starting there. The text is canonical JSON written by this
/// crate, so brackets balance; UTF-8 continuation bytes never equal the ASCII bytes looked at.
fn skip_value(b: &[u8], pos: &mut usize) -> Option<()> {
    match *b.get(*pos)? {
        b'"' => skip_string(b, pos),
        b'{' | b'[' => {
            let mut depth = 0usize;
            loop {
                match *b.get(*pos)? {
                    b'"' => skip_string(b, pos)?,
                    b'{' | b'[' => {
                        depth += 1;
                        *pos += 1;
                    }
                    b'}' | b']' => {
                        depth = depth.checked_sub(1)?;
                        *pos += 1;
                        if depth == 0 {
                            return Some(());
                        }
                    }
                    _ => *pos += 1,
                }
            }
        }
        _ => {
            let start = *pos;
            while !matches!(b.get(*pos), None | Some(b',' | b'}' | b']')) {
                *pos += 1;
            }
            (*pos > start).then_some(())
        }
    }
}

/// A power event: power levels, join rules (and, as every implementation does, the create
/// event) with an empty state key, or a member event with membership `leave` or `ban` whose
/// sender is not its target (a kick or a ban).
fn is_power_event(pdu: &Pdu) -> bool {
    match pdu.kind() {
        TimelineEventType::RoomPowerLevels
        | TimelineEventType::RoomJoinRules
        | TimelineEventType::RoomCreate => pdu.state_key() == Some(""),
        TimelineEventType::RoomMember => {
            // The cheaper test first: most member events are the sender's own.
            Some(pdu.sender()) != pdu.state_key()
                && matches!(membership(pdu), Some("leave" | "ban"))
        }
        _ => false,
    }
}

/// The power level of an event's sender according to the power levels event in its own
/// `auth_events` (creators are read once, from the first create event found).
fn sender_power_level<'a: 'k, 'k, F: Fn(&str) -> Option<&'a Pdu>>(
    graph: &mut Graph<'a, 'k, '_, F>,
    i: u32,
    rules: &AuthorizationRules,
    creators: &mut Option<HashSet<OwnedUserId>>,
) -> Result<UserPowerLevel, StateResError> {
    let v12 = rules.room_create_event_id_as_room_id;
    let mut create: Option<u32> = None;
    if v12 && creators.is_none() {
        create = graph.create_from_room_id(i);
    }
    let mut power_levels: Option<u32> = None;
    let range = graph.auth(i);
    for a in graph.auth_of(range) {
        let pdu = graph.pdu(a);
        if is_type_with_empty_key(pdu, &TimelineEventType::RoomPowerLevels) {
            power_levels = Some(a);
        } else if !v12
            && creators.is_none()
            && is_type_with_empty_key(pdu, &TimelineEventType::RoomCreate)
        {
            create = Some(a);
        }
        if power_levels.is_some() && (v12 || creators.is_some() || create.is_some()) {
            break;
        }
    }
    if creators.is_none()
        && let Some(c) = create
    {
        let found = RoomCreateEvent::new(graph.pdu(c))
            .creators(rules)
            .map_err(|e| fail(format!("malformed create event: {e}")))?;
        *creators = Some(found);
    }
    let power_levels = power_levels.map(|p| RoomPowerLevelsEvent::new(graph.pdu(p)));
    let malformed = |e: String| fail(format!("malformed power levels event: {e}"));
    let sender = graph.pdu(i).typed_sender();
    match creators {
        Some(creators) => user_power_level(power_levels.as_ref(), sender, creators, rules),
        None => match &power_levels {
            Some(pl) => pl
                .get_as_int_or_default(RoomPowerLevelsIntField::UsersDefault, rules)
                .map(UserPowerLevel::from)
                .map_err(malformed),
            None => Ok(UserPowerLevel::from(
                RoomPowerLevelsIntField::UsersDefault.default_value(),
            )),
        },
    }
}

/// A user's power level: infinite for creators where the version privileges them, else from the
/// power levels event, else 100 for creators and 0 for everyone else.
fn user_power_level(
    power_levels: Option<&RoomPowerLevelsEvent<&Pdu>>,
    user: &UserId,
    creators: &HashSet<OwnedUserId>,
    rules: &AuthorizationRules,
) -> Result<UserPowerLevel, StateResError> {
    if rules.explicitly_privilege_room_creators && creators.contains(user) {
        return Ok(UserPowerLevel::Infinite);
    }
    match power_levels {
        Some(pl) => pl
            .user_power_level(user, rules)
            .map(UserPowerLevel::from)
            .map_err(|e| fail(format!("malformed power levels event: {e}"))),
        None if creators.contains(user) => Ok(UserPowerLevel::from(ruma::Int::from(100u8))),
        None => Ok(UserPowerLevel::from(
            RoomPowerLevelsIntField::UsersDefault.default_value(),
        )),
    }
}

/// Reverse topological power ordering of the power events and their auth ancestors in the full
/// conflicted set: Kahn's algorithm on the auth DAG, oldest first, choosing among the ready
/// events the one whose sender has the greatest power, then the smallest `origin_server_ts`,
/// then the smallest event id.
fn sort_power_events<'a: 'k, 'k, F: Fn(&str) -> Option<&'a Pdu>>(
    graph: &mut Graph<'a, 'k, '_, F>,
    power_events: &[u32],
    rules: &AuthorizationRules,
) -> Result<Vec<u32>, StateResError> {
    if power_events.is_empty() {
        return Ok(Vec::new());
    }
    // The subgraph: power events and everything reachable from them inside the full set.
    let mut local: HashMap<u32, u32> = HashMap::with_capacity(power_events.len() * 2);
    let mut members: Vec<u32> = Vec::new();
    let mut out_edges: Vec<Vec<u32>> = Vec::new();
    let mut stack: Vec<u32> = Vec::new();
    for &p in power_events {
        if let Entry::Vacant(e) = local.entry(p) {
            e.insert(members.len() as u32);
            members.push(p);
            out_edges.push(Vec::new());
            stack.push(p);
        }
    }
    while let Some(i) = stack.pop() {
        let from = local[&i];
        let mut targets: Vec<u32> = Vec::new();
        let range = graph.auth(i);
        for a in graph.auth_of(range) {
            if !graph.nodes[a as usize].in_full {
                continue;
            }
            let to = match local.entry(a) {
                Entry::Occupied(e) => *e.get(),
                Entry::Vacant(e) => {
                    let to = members.len() as u32;
                    e.insert(to);
                    members.push(a);
                    out_edges.push(Vec::new());
                    stack.push(a);
                    to
                }
            };
            targets.push(to);
        }
        targets.sort_unstable();
        targets.dedup();
        out_edges[from as usize] = targets;
    }

    // Sort keys, then Kahn's algorithm from the events citing nothing in the subgraph.
    let mut creators = None;
    let mut keys: Vec<(UserPowerLevel, u64)> = Vec::with_capacity(members.len());
    for &i in &members {
        let power = sender_power_level(graph, i, rules, &mut creators)?;
        keys.push((power, graph.pdu(i).origin_server_ts()));
    }
    let mut citers: Vec<Vec<u32>> = vec![Vec::new(); members.len()];
    let mut pending: Vec<usize> = Vec::with_capacity(members.len());
    for (from, targets) in out_edges.iter().enumerate() {
        pending.push(targets.len());
        for &to in targets {
            citers[to as usize].push(from as u32);
        }
    }
    #[derive(PartialEq, Eq)]
    struct Ready<'k> {
        power: UserPowerLevel,
        ts: u64,
        id: &'k str,
        local: u32,
    }
    impl Ord for Ready<'_> {
        fn cmp(&self, other: &Self) -> Ordering {
            other
                .power
                .cmp(&self.power)
                .then(self.ts.cmp(&other.ts))
                .then(self.id.cmp(other.id))
        }
    }
    impl PartialOrd for Ready<'_> {
        fn partial_cmp(&self, other: &Self) -> Option<Ordering> {
            Some(self.cmp(other))
        }
    }
    let ready = |l: u32| Ready {
        power: keys[l as usize].0,
        ts: keys[l as usize].1,
        id: graph.id(members[l as usize]),
        local: l,
    };
    let mut heap = BinaryHeap::new();
    for (l, &count) in pending.iter().enumerate() {
        if count == 0 {
            heap.push(Reverse(ready(l as u32)));
        }
    }
    let mut sorted = Vec::with_capacity(members.len());
    while let Some(Reverse(next)) = heap.pop() {
        sorted.push(members[next.local as usize]);
        for &citer in &citers[next.local as usize] {
            pending[citer as usize] -= 1;
            if pending[citer as usize] == 0 {
                heap.push(Reverse(ready(citer)));
            }
        }
    }
    Ok(sorted)
}

/// Interned `(type, state_key)` pairs.
#[derive(Default)]
struct Keys<'a> {
    map: HashMap<(&'a str, &'a str), u32>,
    list: Vec<(&'a str, &'a str)>,
}

impl<'a> Keys<'a> {
    fn intern(&mut self, t: &'a str, k: &'a str) -> u32 {
        match self.map.entry((t, k)) {
            Entry::Occupied(e) => *e.get(),
            Entry::Vacant(e) => {
                let id = self.list.len() as u32;
                e.insert(id);
                self.list.push((t, k));
                id
            }
        }
    }

    fn get(&self, t: &str, k: &str) -> Option<u32> {
        self.map.get(&(t, k)).copied()
    }
}

/// A room state during resolution: interned key → node index (or [`ABSENT`] / [`MISSING`]).
#[derive(Default)]
struct State<'a> {
    keys: Keys<'a>,
    values: Vec<u32>,
}

impl State<'_> {
    fn get(&self, key: u32) -> u32 {
        self.values.get(key as usize).copied().unwrap_or(ABSENT)
    }

    fn set(&mut self, key: u32, value: u32) {
        let key = key as usize;
        if self.values.len() <= key {
            self.values.resize(key + 1, ABSENT);
        }
        self.values[key] = value;
    }
}

/// The iterative auth checks: apply each event in order to `state` if the authorisation rules
/// allow it against the state, completed by the event's own (non-rejected) `auth_events` for
/// the keys the state lacks.
fn iterative_auth_checks<'a: 'k, 'k, F: Fn(&str) -> Option<&'a Pdu>>(
    graph: &mut Graph<'a, 'k, '_, F>,
    rules: &AuthorizationRules,
    events: &[u32],
    state: &mut State<'k>,
) -> Result<(), StateResError> {
    // The auth events of the event being checked: few, so a vector searched from the end.
    let mut auth_events: Vec<((&'k str, &'k str), &'a Pdu)> = Vec::with_capacity(8);
    let mut caches = AuthCaches::default();
    for &i in events {
        let pdu = graph.pdu(i);
        // A member event about its sender: the sender's string is the state key, and only one
        // of the two (far apart in memory) needs reading.
        let state_key = if graph.nodes[i as usize].own_member {
            pdu.sender()
        } else {
            pdu.state_key().ok_or_else(|| {
                fail(format!(
                    "conflicted event {} has no state key",
                    pdu.event_id()
                ))
            })?
        };
        auth_events.clear();
        let create = if rules.room_create_event_id_as_room_id
            && *pdu.kind() != TimelineEventType::RoomCreate
        {
            graph.create_from_room_id(i)
        } else {
            None
        };
        let range = graph.auth(i);
        for a in graph.auth_of(range) {
            let auth_pdu = graph.pdu(a);
            if auth_pdu.rejected() {
                continue;
            }
            let key = auth_pdu.state_key().ok_or_else(|| {
                fail(format!(
                    "auth event {} has no state key",
                    auth_pdu.event_id()
                ))
            })?;
            auth_events.push(((type_name(auth_pdu), key), auth_pdu));
        }
        if let Some(create) = create {
            auth_events.push((("m.room.create", ""), graph.pdu(create)));
        }
        // The state's events for the keys the auth-events selection names.
        let add_from_state = |t: &str, k: &str, auth_events: &mut Vec<_>| {
            let Some(key) = state.keys.get(t, k) else {
                return;
            };
            let value = state.get(key);
            if value == ABSENT || value == MISSING {
                return;
            }
            let auth_pdu = graph.pdu(value);
            if !auth_pdu.rejected() {
                auth_events.push((state.keys.list[key as usize], auth_pdu));
            }
        };
        match simple_auth_types(pdu, state_key, rules) {
            Some((keys, len)) => {
                for (t, k) in &keys[..len] {
                    add_from_state(t, k, &mut auth_events);
                }
            }
            None => {
                let Ok(auth_types) = ruma::state_res::auth_types_for_event(
                    pdu.kind(),
                    pdu.typed_sender(),
                    Some(state_key),
                    pdu.content(),
                    rules,
                ) else {
                    continue;
                };
                for (t, k) in &auth_types {
                    add_from_state(&type_str(t), k, &mut auth_events);
                }
            }
        }
        let find = |t: &str, k: &str| {
            auth_events
                .iter()
                .rev()
                .find(|((et, ek), _)| *et == t && *ek == k)
                .map(|(_, p)| *p)
        };
        let ruma_check = || {
            let lookup = |t: &StateEventType, k: &str| find(&type_str(t), k);
            ruma::state_res::check_state_dependent_auth_rules(rules, pdu, lookup).is_ok()
        };
        let allowed = match fast_join_check(pdu, state_key, rules, &find, &mut caches) {
            Some(allowed) => {
                // Every unit test (the fixtures, the differential proptests) also asks ruma.
                #[cfg(test)]
                assert_eq!(allowed, ruma_check(), "fast join check of {}", graph.id(i));
                allowed
            }
            None => ruma_check(),
        };
        if allowed {
            let key = state.keys.intern(type_name(pdu), state_key);
            state.set(key, i);
        }
    }
    Ok(())
}

/// What the authorisation rules read from create and join rules events, parsed once per event.
#[derive(Default)]
struct AuthCaches {
    /// Per create event (by address): whether `m.federate` is absent or true and the creators
    /// parse.
    create: HashMap<usize, bool>,
    /// Per join rules event (by address): its join rule, if it parses.
    join_rules: HashMap<usize, Option<JoinRuleKind>>,
}

/// The authorisation rules for the most common member event, a join by the joining user
/// (including profile changes), from parsed caches: `Some(allowed)` with exactly ruma's
/// verdict, or `None` when the event is not of that plain kind and ruma must decide.
///
/// Plain means: `membership` is `join`, sender = state key, no `third_party_invite` or
/// `join_authorised_via_users_server`, the event does not have the create event as its only
/// prev event, the create event federates and its creators parse, the target's current
/// membership and the join rule parse, and the join rule is not a restricted one for a user
/// who is neither joined nor invited. For those the rules (v7+) reduce to: a banned user may
/// not join; invite (and knock) rooms admit joined or invited users; restricted rooms admit
/// joined or invited users; public rooms admit everyone; nothing else is allowed.
fn fast_join_check<'p>(
    pdu: &Pdu,
    state_key: &str,
    rules: &AuthorizationRules,
    find: &impl Fn(&str, &str) -> Option<&'p Pdu>,
    caches: &mut AuthCaches,
) -> Option<bool> {
    if *pdu.kind() != TimelineEventType::RoomMember || pdu.sender() != state_key {
        return None;
    }
    let content = scan_member_content(pdu.content().get())?;
    if content.special || content.membership != Some("join") {
        return None;
    }
    let create = find("m.room.create", "")?;
    let mut prev = pdu.prev_events();
    if prev.len() == 1 && prev.next() == Some(create.event_id()) {
        return None;
    }
    let create_ok = *caches
        .create
        .entry(create as *const Pdu as usize)
        .or_insert_with(|| {
            let event = RoomCreateEvent::new(create);
            matches!(event.federate(), Ok(true)) && event.creators(rules).is_ok()
        });
    if !create_ok {
        return None;
    }
    let current = match find("m.room.member", state_key) {
        None => "leave",
        Some(member) => scan_member_content(member.content().get())?.membership?,
    };
    if current == "ban" {
        return Some(false);
    }
    let join_rules = find("m.room.join_rules", "")?;
    let join_rule = caches
        .join_rules
        .entry(join_rules as *const Pdu as usize)
        .or_insert_with(|| RoomJoinRulesEvent::new(join_rules).join_rule().ok())
        .clone()?;
    let joined_or_invited = matches!(current, "join" | "invite");
    if (join_rule == JoinRuleKind::Invite || rules.knocking && join_rule == JoinRuleKind::Knock)
        && joined_or_invited
    {
        return Some(true);
    }
    if rules.restricted_join_rule && join_rule == JoinRuleKind::Restricted
        || rules.knock_restricted_join_rule && join_rule == JoinRuleKind::KnockRestricted
    {
        // Others need `join_authorised_via_users_server`: ruma decides.
        return joined_or_invited.then_some(true);
    }
    Some(join_rule == JoinRuleKind::Public)
}

/// The auth-events selection (server-server API "Auth events selection") without allocating,
/// for the cases whose outcome needs no parsing beyond `membership`: every event but member
/// events with `third_party_invite` or `join_authorised_via_users_server`, or without a string
/// `membership`. `None` for those: ruma's `auth_types_for_event` decides (and may refuse the
/// content). Returns up to five `(type, state_key)` pairs and how many there are.
#[allow(clippy::type_complexity)]
fn simple_auth_types<'p>(
    pdu: &'p Pdu,
    state_key: &'p str,
    rules: &AuthorizationRules,
) -> Option<([(&'static str, &'p str); 5], usize)> {
    let mut keys = [("", ""); 5];
    let mut len = 0;
    let mut push = |t: &'static str, k: &'p str| {
        keys[len] = (t, k);
        len += 1;
    };
    match pdu.kind() {
        TimelineEventType::RoomCreate => {}
        TimelineEventType::RoomMember => {
            let membership = match scan_member_content(pdu.content().get()) {
                Some(scanned) if scanned.special => return None,
                Some(scanned) => scanned.membership?,
                None => {
                    let content = pdu.content_object()?;
                    if content.contains_key("third_party_invite")
                        || content.contains_key("join_authorised_via_users_server")
                    {
                        return None;
                    }
                    let ruma::CanonicalJsonValue::String(membership) = content.get("membership")?
                    else {
                        return None;
                    };
                    membership.as_str()
                }
            };
            push("m.room.power_levels", "");
            push("m.room.member", pdu.sender());
            if !rules.room_create_event_id_as_room_id {
                push("m.room.create", "");
            }
            if state_key != pdu.sender() {
                push("m.room.member", state_key);
            }
            if matches!(membership, "join" | "invite" | "knock") {
                push("m.room.join_rules", "");
            }
        }
        _ => {
            push("m.room.power_levels", "");
            push("m.room.member", pdu.sender());
            if !rules.room_create_event_id_as_room_id {
                push("m.room.create", "");
            }
        }
    }
    Some((keys, len))
}

/// The text of a state event type, without allocating for the types the auth rules ask for.
fn type_str(t: &StateEventType) -> Cow<'static, str> {
    match t {
        StateEventType::RoomCreate => Cow::Borrowed("m.room.create"),
        StateEventType::RoomPowerLevels => Cow::Borrowed("m.room.power_levels"),
        StateEventType::RoomMember => Cow::Borrowed("m.room.member"),
        StateEventType::RoomJoinRules => Cow::Borrowed("m.room.join_rules"),
        StateEventType::RoomThirdPartyInvite => Cow::Borrowed("m.room.third_party_invite"),
        other => Cow::Owned(other.to_string()),
    }
}

/// Mainline ordering of `events` (events of the full conflicted set, whose timestamps are
/// cached) based on the power levels event `power_levels`: by mainline
/// position (events whose power levels ancestry meets the mainline further back first, events
/// that never meet it before all), then `origin_server_ts`, then event id. Events whose power
/// levels ancestry cannot be walked (a missing auth event) are left out.
fn mainline_sort<'a: 'k, 'k, F: Fn(&str) -> Option<&'a Pdu>>(
    graph: &mut Graph<'a, 'k, '_, F>,
    events: &[u32],
    power_levels: u32,
) -> Result<Vec<u32>, StateResError> {
    if events.is_empty() {
        return Ok(Vec::new());
    }
    /// Position not yet known / walk failed / on the walk in progress (a cycle, which hashes
    /// rule out, ends the walk as "no mainline ancestor").
    const UNKNOWN: u32 = u32::MAX;
    const FAILED: u32 = u32::MAX - 1;
    const ON_PATH: u32 = u32::MAX - 2;
    // rank[node]: 1 for the deepest mainline event ... n for the current power levels, 0 for
    // "no mainline ancestor".
    let mut rank: Vec<u32> = vec![UNKNOWN; graph.nodes.len()];
    let set_rank = |rank: &mut Vec<u32>, i: u32, r: u32| {
        if rank.len() <= i as usize {
            rank.resize(i as usize + 1, UNKNOWN);
        }
        rank[i as usize] = r;
    };
    // The mainline: the power levels event and its power levels ancestors.
    let mut mainline: Vec<u32> = Vec::new();
    let mut next = match power_levels {
        ABSENT => None,
        MISSING => return Err(fail("the resolved power levels event is missing")),
        p => Some(p),
    };
    while let Some(p) = next {
        if rank.get(p as usize) == Some(&ON_PATH) {
            break;
        }
        set_rank(&mut rank, p, ON_PATH);
        mainline.push(p);
        next = None;
        let range = graph.auth(p);
        for &a in &graph.flat[range] {
            let a = Some(a).filter(|&a| a != NO_EVENT).ok_or_else(|| {
                fail(format!(
                    "auth event of mainline event {} is missing",
                    graph.id(p)
                ))
            })?;
            if is_type_with_empty_key(graph.pdu(a), &TimelineEventType::RoomPowerLevels) {
                next = Some(a);
                break;
            }
        }
    }
    for (depth, &p) in mainline.iter().rev().enumerate() {
        set_rank(&mut rank, p, depth as u32 + 1);
    }

    let mut keyed: Vec<(u32, u64, u32)> = Vec::with_capacity(events.len());
    let mut path: Vec<u32> = Vec::new();
    for &e in events {
        // Walk the power levels ancestry until a node with a known position.
        path.clear();
        let mut current = e;
        let result = loop {
            match rank.get(current as usize).copied().unwrap_or(UNKNOWN) {
                UNKNOWN => {}
                ON_PATH => break 0,
                known => break known,
            }
            set_rank(&mut rank, current, ON_PATH);
            path.push(current);
            let mut parent = None;
            let mut failed = false;
            let range = graph.auth(current);
            for &a in &graph.flat[range] {
                let Some(a) = Some(a).filter(|&a| a != NO_EVENT) else {
                    failed = true;
                    break;
                };
                if is_type_with_empty_key(graph.pdu(a), &TimelineEventType::RoomPowerLevels) {
                    parent = Some(a);
                    break;
                }
            }
            match (failed, parent) {
                (true, _) => break FAILED,
                (false, Some(p)) => current = p,
                (false, None) => break 0,
            }
        };
        for &p in &path {
            set_rank(&mut rank, p, result);
        }
        if result != FAILED {
            keyed.push((result, graph.nodes[e as usize].ts, e));
        }
    }
    keyed.sort_unstable_by(|a, b| {
        a.0.cmp(&b.0)
            .then(a.1.cmp(&b.1))
            .then_with(|| graph.id(a.2).cmp(graph.id(b.2)))
    });
    Ok(keyed.into_iter().map(|(_, _, e)| e).collect())
}

#[cfg(test)]
mod reference;
mod v1;

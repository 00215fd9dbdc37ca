//! The requesting side of the federation `/hierarchy`: what the client's walk learns about
//! rooms this server is not in, from the servers their links name. One answer serves a room
//! (its summary and links) and its children that are not spaces (their summaries), so a remote
//! space costs one request, not one per room. Bounded per client request ([`RemoteWalk`]: at
//! most [`MAX_REQUESTS`] requests made, a destination backing off costing none, each within
//! [`REQUEST_TIMEOUT`], none started after [`WALK_BUDGET`]); answers are kept [`CACHE_TTL`]
//! ([`AnswerCache`], in memory), so the pages of one walk do not ask again. Failures
//! (unreachable, backing off, 404) are not kept.

use std::{
    collections::{HashMap, HashSet},
    sync::{Arc, Mutex},
    time::{Duration, Instant},
};

use myelin_federation::FederationError;
use ruma::{
    OwnedRoomId, OwnedServerName,
    api::federation::space::get_hierarchy,
    room::{JoinRuleSummary, RoomSummary},
};
use serde_json::{Value, json};

use super::{Rooms, hierarchy::valid_links};

/// How long one request may take.
const REQUEST_TIMEOUT: Duration = Duration::from_secs(10);
/// How many requests one client request may make.
const MAX_REQUESTS: usize = 16;
/// After how long a walk starts no more requests (it answers with what it has).
const WALK_BUDGET: Duration = Duration::from_secs(30);
/// The largest answer read (a space of some thousand children).
const ANSWER_BYTES: usize = 4 * 1024 * 1024;
/// How long an answer is used again.
const CACHE_TTL: Duration = Duration::from_secs(60);
/// How many answers are kept at most.
const CACHE_ENTRIES: usize = 1024;

/// Another server's answer about a room, as the walk uses it (client-format JSON).
#[derive(Debug)]
pub(super) struct RemoteSpace {
    /// The server that answered.
    server: OwnedServerName,
    /// The room's summary, without `children_state`.
    pub(super) summary: Value,
    /// Its valid links in the spec's order (none unless it is a space).
    pub(super) links: Vec<(String, Value)>,
    /// Summaries of linked rooms the answering server says this one may see.
    children: Vec<(String, Value)>,
    /// Linked rooms it says this server may not see.
    inaccessible: Vec<String>,
}

/// An answer's key: the room and `suggested_only`.
type AnswerKey = (String, bool);

/// Recent answers, with when they came.
#[derive(Debug, Default)]
pub(super) struct AnswerCache {
    entries: Mutex<HashMap<AnswerKey, (Instant, Arc<RemoteSpace>)>>,
}

impl AnswerCache {
    fn get(&self, room_id: &str, suggested_only: bool) -> Option<Arc<RemoteSpace>> {
        let entries = self.entries.lock().unwrap_or_else(|e| e.into_inner());
        entries
            .get(&(room_id.to_owned(), suggested_only))
            .filter(|(at, _)| at.elapsed() < CACHE_TTL)
            .map(|(_, answer)| answer.clone())
    }

    fn put(&self, room_id: &str, suggested_only: bool, answer: Arc<RemoteSpace>) {
        let mut entries = self.entries.lock().unwrap_or_else(|e| e.into_inner());
        if entries.len() >= CACHE_ENTRIES {
            entries.retain(|_, (at, _)| at.elapsed() < CACHE_TTL);
        }
        if entries.len() >= CACHE_ENTRIES {
            // All fresh: drop the oldest.
            if let Some(oldest) = entries
                .iter()
                .min_by_key(|(_, (at, _))| *at)
                .map(|(key, _)| key.clone())
            {
                entries.remove(&oldest);
            }
        }
        entries.insert(
            (room_id.to_owned(), suggested_only),
            (Instant::now(), answer),
        );
    }
}

/// What one client walk has learnt from other servers, and what it may still ask.
#[derive(Debug)]
pub(super) struct RemoteWalk {
    requests_left: usize,
    deadline: Instant,
    /// Summaries of rooms answers listed as children, with the server that answered.
    learned: HashMap<String, (Value, OwnedServerName)>,
    /// Rooms an answer said this server may not see (not asked again, as the spec says).
    inaccessible: HashSet<String>,
}

impl RemoteWalk {
    pub(super) fn new() -> Self {
        RemoteWalk {
            requests_left: MAX_REQUESTS,
            deadline: Instant::now() + WALK_BUDGET,
            learned: HashMap::new(),
            inaccessible: HashSet::new(),
        }
    }

    pub(super) fn said_inaccessible(&self, room_id: &str) -> bool {
        self.inaccessible.contains(room_id)
    }

    /// The summary an earlier answer gave of `room_id`, and who gave it.
    pub(super) fn learned(&self, room_id: &str) -> Option<(Value, OwnedServerName)> {
        self.learned.get(room_id).cloned()
    }

    fn learn(&mut self, answer: &RemoteSpace) {
        for (id, summary) in &answer.children {
            self.learned
                .entry(id.clone())
                .or_insert_with(|| (summary.clone(), answer.server.clone()));
        }
        self.inaccessible
            .extend(answer.inaccessible.iter().cloned());
    }
}

impl Rooms {
    /// `room_id` as one of `via` (in turn, never this server) answers its federation
    /// `/hierarchy`, or as an answer of the last minute had it; `None` when none answers
    /// within the walk's bounds (a 404 included: the room is unknown there or not for us).
    pub(super) async fn remote_space(
        &self,
        walk: &mut RemoteWalk,
        room_id: &str,
        via: &[String],
        suggested_only: bool,
    ) -> Option<Arc<RemoteSpace>> {
        if let Some(answer) = self.hierarchy_answers.get(room_id, suggested_only) {
            walk.learn(&answer);
            return Some(answer);
        }
        let outbound = &self.federation.as_ref()?.outbound;
        let room = OwnedRoomId::try_from(room_id).ok()?;
        let mut asked = HashSet::new();
        for server in via {
            let Ok(server) = OwnedServerName::try_from(server.as_str()) else {
                continue;
            };
            if server == self.server_name || !asked.insert(server.clone()) {
                continue;
            }
            let left = walk.deadline.saturating_duration_since(Instant::now());
            if walk.requests_left == 0 || left.is_zero() {
                return None;
            }
            walk.requests_left -= 1;
            let mut request = get_hierarchy::v1::Request::new(room.clone());
            request.suggested_only = suggested_only;
            let answered = tokio::time::timeout(
                REQUEST_TIMEOUT.min(left),
                outbound.send_limited(&server, request, ANSWER_BYTES),
            )
            .await;
            let answer = match answered {
                Ok(Ok(answer)) => answer,
                Ok(Err(err)) => {
                    if matches!(err, FederationError::NotRetrying { .. }) {
                        // Refused here, before any request: it costs the walk nothing.
                        walk.requests_left += 1;
                    }
                    tracing::debug!(%room_id, %server, %err, "hierarchy not answered");
                    continue;
                }
                Err(_) => {
                    tracing::debug!(%room_id, %server, "hierarchy timed out");
                    continue;
                }
            };
            let Some(answer) = read_answer(server.clone(), room_id, answer, suggested_only) else {
                tracing::debug!(%room_id, %server, "hierarchy answer about another room");
                continue;
            };
            let answer = Arc::new(answer);
            self.hierarchy_answers
                .put(room_id, suggested_only, answer.clone());
            walk.learn(&answer);
            return Some(answer);
        }
        None
    }
}

/// The walk's view of `server`'s answer about `room_id`: `None` if it is about another room.
/// Children and inaccessible rooms count only when the room links them (an answer tells about
/// its own room's children, not about any room).
fn read_answer(
    server: OwnedServerName,
    room_id: &str,
    answer: get_hierarchy::v1::Response,
    suggested_only: bool,
) -> Option<RemoteSpace> {
    if answer.room.summary.room_id != room_id {
        return None;
    }
    let summary = summary_json(&answer.room.summary)?;
    let links = if summary["room_type"] == "m.space" {
        let links = answer
            .room
            .children_state
            .iter()
            .filter_map(|raw| serde_json::from_str::<Value>(raw.json().get()).ok())
            .collect();
        valid_links(links, suggested_only)
    } else {
        Vec::new()
    };
    let linked = |id: &str| links.iter().any(|(child, _)| child == id);
    let children = answer
        .children
        .iter()
        .filter(|child| linked(child.room_id.as_str()))
        .filter_map(|child| Some((child.room_id.to_string(), summary_json(child)?)))
        .collect();
    let inaccessible = answer
        .inaccessible_children
        .iter()
        .map(|id| id.to_string())
        .filter(|id| linked(id))
        .collect();
    Some(RemoteSpace {
        server,
        summary,
        links,
        children,
        inaccessible,
    })
}

/// A federation room summary in the client format: every field as ruma read it, with the join
/// rule always written (ruma leaves `public` out and cannot write one it does not know) and a
/// restricted room's `allowed_room_ids`.
fn summary_json(summary: &RoomSummary) -> Option<Value> {
    let mut plain = summary.clone();
    plain.join_rule = JoinRuleSummary::Public;
    let mut json = serde_json::to_value(&plain).ok()?;
    json["join_rule"] = json!(summary.join_rule.as_str());
    if let JoinRuleSummary::Restricted(rule) | JoinRuleSummary::KnockRestricted(rule) =
        &summary.join_rule
    {
        json["allowed_room_ids"] = json!(rule.allowed_room_ids);
    }
    Some(json)
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A response as ruma reads one off the wire.
    fn answer(value: Value) -> get_hierarchy::v1::Response {
        let mut answer = get_hierarchy::v1::Response::new(
            serde_json::from_value(value["room"].clone()).unwrap(),
        );
        answer.children = serde_json::from_value(value["children"].clone()).unwrap();
        answer.inaccessible_children =
            serde_json::from_value(value["inaccessible_children"].clone()).unwrap();
        answer
    }

    fn link(child: &str, ts: i64) -> Value {
        json!({"type": "m.space.child", "state_key": child, "sender": "@a:b.test",
               "origin_server_ts": ts, "content": {"via": ["b.test"]}})
    }

    fn summary(id: &str, join_rule: Value) -> Value {
        let mut summary = json!({"room_id": id, "num_joined_members": 3,
                                  "world_readable": false, "guest_can_join": false});
        for (k, v) in join_rule.as_object().unwrap() {
            summary[k] = v.clone();
        }
        summary
    }

    #[test]
    fn an_answer_keeps_only_what_its_room_links_and_writes_every_join_rule() {
        let mut room = summary("!space:b.test", json!({"join_rule": "public"}));
        room["room_type"] = json!("m.space");
        room["name"] = json!("Space");
        room["children_state"] = json!([link("!late:b.test", 9), link("!early:b.test", 1)]);
        let answer = answer(json!({
            "room": room,
            "children": [
                summary("!early:b.test", json!({"join_rule": "restricted",
                                                 "allowed_room_ids": ["!x:a.test"]})),
                summary("!unlinked:b.test", json!({})),
            ],
            "inaccessible_children": ["!late:b.test", "!other:b.test"],
        }));
        let server = OwnedServerName::try_from("b.test").unwrap();
        let read = read_answer(server.clone(), "!space:b.test", answer, false).unwrap();
        assert_eq!(read.summary["join_rule"], "public");
        assert_eq!(read.summary["name"], "Space");
        assert_eq!(read.summary["num_joined_members"], 3);
        let links: Vec<&str> = read.links.iter().map(|(id, _)| id.as_str()).collect();
        assert_eq!(links, ["!early:b.test", "!late:b.test"]);
        assert_eq!(read.children.len(), 1, "{:?}", read.children);
        assert_eq!(read.children[0].1["join_rule"], "restricted");
        assert_eq!(read.children[0].1["allowed_room_ids"], json!(["!x:a.test"]));
        assert_eq!(read.inaccessible, ["!late:b.test"]);

        let other = answer_about_other_room();
        assert!(read_answer(server, "!space:b.test", other, false).is_none());
    }

    fn answer_about_other_room() -> get_hierarchy::v1::Response {
        let mut room = summary("!else:b.test", json!({"join_rule": "invite"}));
        room["children_state"] = json!([]);
        answer(json!({"room": room, "children": [], "inaccessible_children": []}))
    }

    #[test]
    fn a_room_that_is_not_a_space_has_no_links_and_suggested_only_filters() {
        let mut room = summary("!r:b.test", json!({"join_rule": "knock"}));
        room["children_state"] = json!([link("!c:b.test", 1)]);
        let server = OwnedServerName::try_from("b.test").unwrap();
        let read = read_answer(
            server.clone(),
            "!r:b.test",
            answer(json!({"room": room, "children": [], "inaccessible_children": []})),
            false,
        )
        .unwrap();
        assert!(read.links.is_empty());
        assert_eq!(read.summary["join_rule"], "knock");

        let mut space = summary("!s:b.test", json!({}));
        space["room_type"] = json!("m.space");
        let mut suggested = link("!yes:b.test", 2);
        suggested["content"]["suggested"] = json!(true);
        space["children_state"] = json!([link("!no:b.test", 1), suggested]);
        let read = read_answer(
            server,
            "!s:b.test",
            answer(json!({"room": space, "children": [], "inaccessible_children": []})),
            true,
        )
        .unwrap();
        let links: Vec<&str> = read.links.iter().map(|(id, _)| id.as_str()).collect();
        assert_eq!(links, ["!yes:b.test"]);
        // No `join_rule` in the answer: public, as the public rooms chunk has it.
        assert_eq!(read.summary["join_rule"], "public");
    }
}

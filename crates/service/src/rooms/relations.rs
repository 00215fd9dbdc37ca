//! Relations between events (`content.m.relates_to`): what an event relates to when it is
//! persisted, `/relations` and `/threads`, and the aggregations bundled into events'
//! `unsigned.m.relations` (threads, references and the latest edit) on the client surfaces that
//! hand out single events or pages of them.

use std::collections::{HashMap, HashSet};

use myelin_room_version::{CanonicalJsonValue, Pdu};
use myelin_store::{EventRow, RelationsQuery, RoomRow};
use ruma::UserId;
use serde_json::{Value, json};

use super::{
    Direction, Rooms,
    read::{HistoryToken, in_timeline, stream_token},
};
use crate::{Error, Result};

/// How deep a recursive `/relations` follows relations of relations (as Synapse does).
const MAX_RECURSION_DEPTH: u8 = 3;
/// How many events one level of a recursive `/relations` may add as parents.
const MAX_RECURSION_PARENTS: i64 = 256;
/// How many references are bundled under `m.reference`.
const MAX_BUNDLED_REFERENCES: i64 = 100;
/// The relation types whose aggregations are bundled (the spec's three).
const BUNDLED_REL_TYPES: [&str; 3] = ["m.thread", "m.reference", "m.replace"];

/// Which events of several timelines some event relates to by a bundled type, read for all of
/// them at once ([`Rooms::related_parents`]): a timeline with none of them has nothing to
/// bundle, and [`Rooms::bundle_aggregations`] (a read or more per timeline) is skipped.
pub(crate) struct RelatedParents(HashSet<String>);

impl RelatedParents {
    /// Whether any of the client events `events` may have something bundled.
    pub(crate) fn any_in(&self, events: &[Value]) -> bool {
        events
            .iter()
            .any(|e| e["event_id"].as_str().is_some_and(|id| self.0.contains(id)))
    }
}

/// What a non-state PDU relates to: `(parent event id, rel_type)` from `content.m.relates_to`,
/// when both are strings. State events are not indexed (the spec gives them no aggregation).
pub(crate) fn relation_of(pdu: &Pdu) -> Option<(String, String)> {
    if pdu.state_key().is_some() {
        return None;
    }
    let CanonicalJsonValue::Object(relates_to) = pdu.content_object()?.get("m.relates_to")? else {
        return None;
    };
    match (relates_to.get("event_id"), relates_to.get("rel_type")) {
        (Some(CanonicalJsonValue::String(parent)), Some(CanonicalJsonValue::String(rel_type))) => {
            Some((parent.clone(), rel_type.clone()))
        }
        _ => None,
    }
}

/// `GET /rooms/{roomId}/relations/{eventId}[/{relType}[/{eventType}]]`.
#[derive(Debug, Clone, Copy)]
pub struct RelationsRequest<'a> {
    pub rel_type: Option<&'a str>,
    pub event_type: Option<&'a str>,
    pub from: Option<&'a str>,
    pub to: Option<&'a str>,
    pub dir: Direction,
    pub limit: Option<usize>,
    pub recurse: bool,
    pub device: Option<&'a str>,
}

/// A page of `/relations`.
#[derive(Debug, Clone)]
pub struct RelationsPage {
    pub chunk: Vec<Value>,
    pub next_batch: Option<String>,
    pub prev_batch: Option<String>,
    /// With `recurse`: how many levels were followed.
    pub recursion_depth: Option<u8>,
}

/// `/threads`: every thread of the room, or those the reader took part in.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ThreadsInclude {
    All,
    Participated,
}

impl Rooms {
    /// The room, if `user` is or was in it (`M_FORBIDDEN` otherwise, also for an unknown room:
    /// no existence is leaked), and the event `event_id` in it if the user may see it
    /// (`M_NOT_FOUND` otherwise).
    async fn visible_event_in_room(
        &self,
        user: &UserId,
        room_id: &str,
        event_id: &str,
    ) -> Result<(RoomRow, EventRow)> {
        let room = self
            .store
            .room(room_id)
            .await?
            .ok_or_else(|| Error::Forbidden("You are not in this room".to_owned()))?;
        if self
            .store
            .membership(room.room_nid, user.as_str())
            .await?
            .is_none()
        {
            return Err(Error::Forbidden("You are not in this room".to_owned()));
        }
        let not_found = || Error::NotFound("Event not found".to_owned());
        let row = self
            .store
            .event(event_id)
            .await?
            .filter(|row| row.room_nid == room.room_nid && in_timeline(row))
            .ok_or_else(not_found)?;
        if self.sight_of(&row, user).await?.is_none() {
            return Err(not_found());
        }
        Ok((room, row))
    }

    /// `/relations`: the events relating to `event_id` that the user may see, a page at a time
    /// in stream order. Its tokens are stream tokens; it also takes `/sync`'s, and `/messages`'
    /// topological ones as the stream position of the event they name.
    pub async fn relations(
        &self,
        user: &UserId,
        room_id: &str,
        event_id: &str,
        request: &RelationsRequest<'_>,
    ) -> Result<RelationsPage> {
        let (room, _) = self.visible_event_in_room(user, room_id, event_id).await?;
        let limit = request.limit.unwrap_or(50).clamp(1, 1000) as i64;
        let stream_of = |t: &str| HistoryToken::parse(t).map(HistoryToken::stream_position);
        let from = request.from.map(stream_of).transpose()?;
        let to = request.to.map(stream_of).transpose()?;
        let backwards = request.dir == Direction::Backward;
        let (after, before) = if backwards {
            (to.unwrap_or(i64::MIN), from.unwrap_or(i64::MAX))
        } else {
            (from.unwrap_or(i64::MIN), to.unwrap_or(i64::MAX))
        };

        // With `recurse`, the parents are the event and its relations down to one level above
        // the deepest followed; `depth` is how deep the deepest relation found is.
        let mut parents = vec![event_id.to_owned()];
        let mut depth = 0;
        if request.recurse {
            let mut level = parents.clone();
            while depth < MAX_RECURSION_DEPTH {
                level = self
                    .store
                    .relating_event_ids(room.room_nid, &level, MAX_RECURSION_PARENTS)
                    .await?;
                level.retain(|id| !parents.contains(id));
                if level.is_empty() {
                    break;
                }
                depth += 1;
                if depth < MAX_RECURSION_DEPTH {
                    parents.extend(level.iter().cloned());
                }
            }
        }
        // Relations of relations are found through the parents collected above, filtered by
        // type only at the end (the spec's filters apply to the events returned).
        let rows = self
            .store
            .relating_events(&RelationsQuery {
                room_nid: room.room_nid,
                parents: &parents,
                rel_type: request.rel_type,
                event_type: request.event_type,
                after,
                before,
                backwards,
                limit,
            })
            .await?;
        let next_batch = (rows.len() as i64 == limit)
            .then(|| rows.last().map(|r| stream_token(r.stream_ordering)))
            .flatten();
        let visible = self.visible_rows(&rows, user).await?;
        let mut chunk = Vec::with_capacity(rows.len());
        for (row, sight) in rows.iter().zip(visible) {
            if let Some(sight) = sight
                && let Some(event) = self.seen_event(&room, row, user, request.device, &sight)
            {
                chunk.push(event);
            }
        }
        self.bundle_aggregations(&room, user, &mut chunk).await?;
        Ok(RelationsPage {
            chunk,
            next_batch,
            prev_batch: request.from.map(str::to_owned),
            recursion_depth: request.recurse.then_some(depth),
        })
    }

    /// `/threads`: the room's thread roots the user may see, the most recently active first,
    /// each with its thread aggregation bundled. Returns the roots and the next page's token.
    pub async fn threads(
        &self,
        user: &UserId,
        room_id: &str,
        include: ThreadsInclude,
        from: Option<&str>,
        limit: Option<usize>,
    ) -> Result<(Vec<Value>, Option<String>)> {
        let room = self
            .store
            .room(room_id)
            .await?
            .ok_or_else(|| Error::Forbidden("You are not in this room".to_owned()))?;
        if self
            .store
            .membership(room.room_nid, user.as_str())
            .await?
            .is_none()
        {
            return Err(Error::Forbidden("You are not in this room".to_owned()));
        }
        let before = from
            .map(|t| HistoryToken::parse(t).map(HistoryToken::stream_position))
            .transpose()?
            .unwrap_or(i64::MAX);
        let limit = limit.unwrap_or(50).clamp(1, 1000) as i64;
        let participant = (include == ThreadsInclude::Participated).then_some(user.as_str());
        let roots = self
            .store
            .thread_roots(room.room_nid, participant, before, limit)
            .await?;
        let next_batch = (roots.len() as i64 == limit)
            .then(|| roots.last().map(|r| stream_token(r.latest_stream_ordering)))
            .flatten();
        let mut rows = Vec::with_capacity(roots.len());
        for root in &roots {
            if let Some(row) = self.store.event(&root.root_event_id).await?
                && row.room_nid == room.room_nid
                && in_timeline(&row)
            {
                rows.push(row);
            }
        }
        let visible = self.visible_rows(&rows, user).await?;
        let mut chunk = Vec::with_capacity(rows.len());
        for (row, sight) in rows.iter().zip(visible) {
            if let Some(sight) = sight
                && let Some(event) = self.seen_event(&room, row, user, None, &sight)
            {
                chunk.push(event);
            }
        }
        self.bundle_aggregations(&room, user, &mut chunk).await?;
        Ok((chunk, next_batch))
    }

    /// The non-state events among `rows` (of any rooms) that some event relates to by a bundled
    /// type, in one read; none when there are no such rows.
    pub(crate) async fn related_parents<'a>(
        &self,
        rows: impl IntoIterator<Item = &'a EventRow>,
    ) -> Result<RelatedParents> {
        let ids: Vec<String> = rows
            .into_iter()
            .filter(|row| row.state_key.is_none())
            .map(|row| row.event_id.clone())
            .collect();
        if ids.is_empty() {
            return Ok(RelatedParents(HashSet::new()));
        }
        Ok(RelatedParents(
            self.store.related_parents(&ids, &BUNDLED_REL_TYPES).await?,
        ))
    }

    /// Adds `unsigned.m.relations` to client events of `room` as `reader` sees them: for a
    /// thread root its reply count, latest reply and whether the reader took part; for an event
    /// with references their ids; for an edited event the latest valid edit (same sender, same
    /// type; never on a redacted original or on an edit itself).
    pub(crate) async fn bundle_aggregations(
        &self,
        room: &RoomRow,
        reader: &UserId,
        events: &mut [Value],
    ) -> Result<()> {
        let ids: Vec<String> = events
            .iter()
            .filter(|e| e.get("state_key").is_none())
            .filter_map(|e| e["event_id"].as_str().map(str::to_owned))
            .collect();
        if ids.is_empty() {
            return Ok(());
        }
        let counts = self
            .store
            .relation_counts(room.room_nid, &ids, &BUNDLED_REL_TYPES, reader.as_str())
            .await?;
        if counts.is_empty() {
            return Ok(());
        }
        let mut bundles: HashMap<String, serde_json::Map<String, Value>> = HashMap::new();

        // Threads: the latest reply, if the reader may see it.
        let threads: Vec<_> = counts.iter().filter(|c| c.rel_type == "m.thread").collect();
        if !threads.is_empty() {
            let nids: Vec<i64> = threads.iter().map(|c| c.latest_event_nid).collect();
            let latest = self.store.events_by_nids(&nids).await?;
            let visible = self.visible_rows(&latest, reader).await?;
            let latest: HashMap<i64, Value> = latest
                .iter()
                .zip(visible)
                .filter_map(|(row, sight)| {
                    let event = self.seen_event(room, row, reader, None, sight.as_ref()?)?;
                    Some((row.event_nid, event))
                })
                .collect();
            for count in threads {
                let Some(latest_event) = latest.get(&count.latest_event_nid) else {
                    continue;
                };
                let root_sender = events
                    .iter()
                    .find(|e| e["event_id"] == count.parent_event_id.as_str())
                    .and_then(|e| e["sender"].as_str());
                bundles
                    .entry(count.parent_event_id.clone())
                    .or_default()
                    .insert(
                        "m.thread".to_owned(),
                        json!({
                            "latest_event": latest_event,
                            "count": count.count,
                            "current_user_participated":
                                count.reader_sent || root_sender == Some(reader.as_str()),
                        }),
                    );
            }
        }

        // References: their event ids.
        let referenced: Vec<String> = counts
            .iter()
            .filter(|c| c.rel_type == "m.reference")
            .map(|c| c.parent_event_id.clone())
            .collect();
        if !referenced.is_empty() {
            let mut chunks: HashMap<String, Vec<Value>> = HashMap::new();
            for (parent, id) in self
                .store
                .relation_ids_of_type(
                    room.room_nid,
                    &referenced,
                    "m.reference",
                    MAX_BUNDLED_REFERENCES,
                )
                .await?
            {
                chunks
                    .entry(parent)
                    .or_default()
                    .push(json!({"event_id": id}));
            }
            for (parent, chunk) in chunks {
                bundles
                    .entry(parent)
                    .or_default()
                    .insert("m.reference".to_owned(), json!({"chunk": chunk}));
            }
        }

        // Edits: the latest valid replacement, not on redacted originals nor on edits.
        let editable: Vec<String> = counts
            .iter()
            .filter(|c| c.rel_type == "m.replace")
            .filter(|c| {
                events.iter().any(|e| {
                    e["event_id"] == c.parent_event_id.as_str()
                        && e["unsigned"].get("redacted_because").is_none()
                        && e["content"]["m.relates_to"]["rel_type"] != "m.replace"
                })
            })
            .map(|c| c.parent_event_id.clone())
            .collect();
        if !editable.is_empty() {
            let edits = self
                .store
                .same_sender_relations(room.room_nid, &editable, "m.replace")
                .await?;
            // The latest by origin_server_ts, ties broken by event id (the spec's order).
            let mut latest: HashMap<String, (i64, String, &EventRow)> = HashMap::new();
            for (parent, row) in &edits {
                let ts = serde_json::from_str::<Value>(&row.json)
                    .ok()
                    .and_then(|j| j["origin_server_ts"].as_i64())
                    .unwrap_or(0);
                let key = (ts, row.event_id.clone());
                match latest.get(parent) {
                    Some((t, id, _)) if (*t, id.clone()) >= key => {}
                    _ => {
                        latest.insert(parent.clone(), (key.0, key.1, row));
                    }
                }
            }
            for (parent, (_, _, row)) in latest {
                if let Some(edit) = self.client_event(room, row, reader)
                    && edit["content"].get("m.new_content").is_some()
                {
                    bundles
                        .entry(parent)
                        .or_default()
                        .insert("m.replace".to_owned(), edit);
                }
            }
        }

        for event in events.iter_mut() {
            let Some(bundle) = event["event_id"].as_str().and_then(|id| bundles.remove(id)) else {
                continue;
            };
            if let Some(unsigned) = event
                .as_object_mut()
                .map(|e| e.entry("unsigned").or_insert_with(|| json!({})))
                .and_then(Value::as_object_mut)
            {
                unsigned.insert("m.relations".to_owned(), Value::Object(bundle));
            }
        }
        Ok(())
    }
}

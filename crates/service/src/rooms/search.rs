//! Server-side search (`POST /search`, room events): which text of an event is indexed when it
//! is persisted ([`search_text_of`]), and the search itself over the rooms the user is or was
//! in, ordered by rank or recency, paginated, with event context, groupings and history
//! visibility enforced on every event handed out.
//!
//! The index only narrows; what a user may see is decided here, event by event, by the same
//! visibility check every other client surface reads through (which also hides ignored users'
//! events). A page is filled by reading further matches while hidden ones are skipped, so the
//! pagination token counts positions in the index, not in the visible results.

use std::collections::{BTreeMap, HashMap, HashSet};

use myelin_room_version::{CanonicalJsonValue, Pdu};
use myelin_store::{EventRow, RoomRow, SearchHit, SearchOrder, SearchQuery};
use ruma::UserId;
use serde_json::{Value, json};

use super::{
    EventFilter, Rooms,
    read::{HistoryToken, parse_position, stream_token},
};
use crate::{Error, Result};

/// The fields that are indexed, as the spec names them (`keys`).
pub const SEARCH_KEYS: [&str; 3] = ["content.body", "content.name", "content.topic"];
/// Results per page when the filter gives no limit, and the most a filter may ask for.
const DEFAULT_LIMIT: usize = 10;
const MAX_LIMIT: usize = 100;
/// The most context events on either side of a result.
const MAX_CONTEXT: usize = 50;
/// The most words of a search term that are searched for (all must match).
const MAX_WORDS: usize = 32;
/// How many batches of matches one page reads past hidden ones before it stops (and hands out
/// a token to go on from there).
const MAX_BATCHES: usize = 10;

/// The searchable text of a PDU: `(key, text)`. A message's `content.body` (any non-state
/// event), a room's `content.name` and `content.topic` (their state events); nothing for other
/// events or empty text.
pub(crate) fn search_text_of(pdu: &Pdu) -> Option<(&'static str, String)> {
    let (key, field) = match (pdu.event_type(), pdu.state_key()) {
        ("m.room.name", Some("")) => ("content.name", "name"),
        ("m.room.topic", Some("")) => ("content.topic", "topic"),
        ("m.room.name" | "m.room.topic", None) | (_, Some(_)) => return None,
        (_, None) => ("content.body", "body"),
    };
    match pdu.content_object()?.get(field)? {
        CanonicalJsonValue::String(text) if !text.is_empty() => Some((key, text.clone())),
        _ => None,
    }
}

/// The words of a search term: runs of letters and digits, lower-cased, at most [`MAX_WORDS`].
/// Everything else separates them, so no operator of either backend's query language gets
/// through.
pub fn search_words(term: &str) -> Vec<String> {
    let mut words: Vec<String> = Vec::new();
    for word in term
        .split(|c: char| !c.is_alphanumeric())
        .filter(|w| !w.is_empty())
    {
        let word = word.to_lowercase();
        if !words.contains(&word) {
            words.push(word);
        }
        if words.len() == MAX_WORDS {
            break;
        }
    }
    words
}

/// A room-events search as the client asked for it.
#[derive(Debug, Clone, Default)]
pub struct SearchRequest<'a> {
    pub search_term: &'a str,
    /// The fields to search (all of [`SEARCH_KEYS`] when absent).
    pub keys: Option<Vec<String>>,
    /// `rank` (the default) or `recent`.
    pub order_by: Option<&'a str>,
    /// The filter's `rooms` and `not_rooms`.
    pub rooms: Option<Vec<String>>,
    pub not_rooms: Vec<String>,
    /// The filter's event fields.
    pub filter: EventFilter,
    pub limit: Option<usize>,
    /// Context around each result: `(before_limit, after_limit, include_profile)`.
    pub context: Option<(usize, usize, bool)>,
    pub include_state: bool,
    /// `room_id` and/or `sender`.
    pub group_by: Vec<String>,
    pub next_batch: Option<&'a str>,
    pub device: Option<&'a str>,
}

/// What `/search` answers for room events.
#[derive(Debug, Clone)]
pub struct SearchResults {
    /// An approximate count of all matches in the rooms searched (before visibility).
    pub count: i64,
    /// Each result: `{rank, result, context?}`.
    pub results: Vec<Value>,
    pub highlights: Vec<String>,
    pub next_batch: Option<String>,
    /// `{grouping key: {value: {results, order}}}` (empty when no grouping was asked for).
    pub groups: serde_json::Map<String, Value>,
    /// `include_state`: the state of each room with results, as the user may see it.
    pub state: serde_json::Map<String, Value>,
}

/// Where a page of matches starts.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Cursor {
    /// Before this stream position (`recent`).
    Before(i64),
    /// After this many ranked matches (`rank`).
    Offset(i64),
}

impl Cursor {
    pub(crate) fn parse(token: &str, order: SearchOrder) -> Result<Self> {
        let bad = || Error::InvalidParam(format!("Invalid next_batch token {token:?}"));
        let (kind, value) = token.split_once('_').ok_or_else(bad)?;
        match (kind, order) {
            // Exactly `recent_s<position>`, or `recent_t0_-<position>` below 0 (backfilled
            // history), as `token` prints them (not a sync token inside).
            ("recent", SearchOrder::Recent) => match value.strip_prefix('s') {
                Some(digits) => parse_position(digits).map(Cursor::Before),
                None => match HistoryToken::parse(value) {
                    Ok(HistoryToken::Topological {
                        topological: 0,
                        stream,
                    }) if stream < 0 => Some(Cursor::Before(stream)),
                    _ => None,
                },
            }
            .ok_or_else(bad),
            // Bounded like every position, so that `offset + 1` cannot overflow.
            ("rank", SearchOrder::Rank) => {
                parse_position(value).map(Cursor::Offset).ok_or_else(bad)
            }
            _ => Err(bad()),
        }
    }

    pub(crate) fn token(self) -> String {
        match self {
            Cursor::Before(position) => format!("recent_{}", stream_token(position)),
            Cursor::Offset(offset) => format!("rank_{offset}"),
        }
    }
}

impl Rooms {
    /// `POST /search` over room events.
    pub async fn search(
        &self,
        user: &UserId,
        request: &SearchRequest<'_>,
    ) -> Result<SearchResults> {
        let order = match request.order_by.unwrap_or("rank") {
            "rank" => SearchOrder::Rank,
            "recent" => SearchOrder::Recent,
            other => return Err(Error::InvalidParam(format!("Unknown order_by {other:?}"))),
        };
        let keys: Vec<&str> = match &request.keys {
            None => SEARCH_KEYS.to_vec(),
            Some(keys) => {
                let mut out = Vec::new();
                for key in keys {
                    let known = SEARCH_KEYS.iter().find(|k| **k == key).ok_or_else(|| {
                        Error::InvalidParam(format!("Unknown search key {key:?}"))
                    })?;
                    out.push(*known);
                }
                out
            }
        };
        for group in &request.group_by {
            if group != "room_id" && group != "sender" {
                return Err(Error::InvalidParam(format!(
                    "Unknown grouping key {group:?}"
                )));
            }
        }
        let mut cursor = match request.next_batch {
            Some(token) => Cursor::parse(token, order)?,
            None => match order {
                SearchOrder::Recent => Cursor::Before(i64::MAX),
                SearchOrder::Rank => Cursor::Offset(0),
            },
        };
        let limit = request.limit.unwrap_or(DEFAULT_LIMIT).clamp(1, MAX_LIMIT);
        let words = search_words(request.search_term);

        // The rooms searched: those the user is or was in (visibility then decides each event),
        // narrowed by the filter.
        let mut rooms: HashMap<i64, RoomRow> = HashMap::new();
        for membership in ["join", "leave", "ban"] {
            for room_id in self
                .store
                .rooms_with_membership(user.as_str(), membership)
                .await?
            {
                if request
                    .rooms
                    .as_ref()
                    .is_some_and(|wanted| !wanted.contains(&room_id))
                    || request.not_rooms.contains(&room_id)
                {
                    continue;
                }
                if let Some(room) = self.store.room(&room_id).await? {
                    rooms.insert(room.room_nid, room);
                }
            }
        }
        let room_nids: Vec<i64> = rooms.keys().copied().collect();
        let query = |cursor: Cursor, batch: i64| SearchQuery {
            room_nids: &room_nids,
            words: &words,
            keys: &keys,
            order,
            before: match cursor {
                Cursor::Before(position) => Some(position),
                Cursor::Offset(_) => None,
            },
            offset: match cursor {
                Cursor::Offset(offset) => offset,
                Cursor::Before(_) => 0,
            },
            limit: batch,
        };
        let count = self.store.search_count(&query(cursor, 0)).await?;

        // Fill the page, reading past matches the user may not see.
        let batch = (limit * 2) as i64;
        let mut page: Vec<(SearchHit, EventRow, Value)> = Vec::new();
        'fill: for _ in 0..MAX_BATCHES {
            let hits = self.store.search_events(&query(cursor, batch)).await?;
            let nids: Vec<i64> = hits.iter().map(|h| h.event_nid).collect();
            let mut by_nid: HashMap<i64, EventRow> = self
                .store
                .events_by_nids(&nids)
                .await?
                .into_iter()
                .map(|row| (row.event_nid, row))
                .collect();
            let rows: Vec<EventRow> = hits
                .iter()
                .filter_map(|h| by_nid.remove(&h.event_nid))
                .collect();
            let visible = self.visible_rows(&rows, user).await?;
            let mut rows = rows.into_iter().zip(visible).peekable();
            for hit in &hits {
                cursor = match cursor {
                    Cursor::Before(_) => Cursor::Before(hit.stream_ordering),
                    Cursor::Offset(offset) => Cursor::Offset(offset + 1),
                };
                // Rows come in hit order; a hit whose event vanished has no row.
                let Some((row, sight)) = rows.next_if(|(row, _)| row.event_nid == hit.event_nid)
                else {
                    continue;
                };
                let Some(room) = rooms.get(&row.room_nid) else {
                    continue;
                };
                if let Some(sight) = sight
                    && let Some(event) = self.seen_event(room, &row, user, request.device, &sight)
                    && request.filter.wants(&event)
                {
                    page.push((*hit, row, event));
                    if page.len() == limit {
                        break 'fill;
                    }
                }
            }
            if hits.len() < batch as usize {
                break;
            }
        }
        // A full page may have more after it; a short one read every match.
        let next_batch = (page.len() == limit).then(|| cursor.token());

        let mut results = Vec::with_capacity(page.len());
        let mut groups: BTreeMap<&str, BTreeMap<String, Vec<String>>> = BTreeMap::new();
        let mut result_rooms: Vec<i64> = Vec::new();
        for (hit, row, event) in &page {
            let Some(room) = rooms.get(&row.room_nid) else {
                continue;
            };
            let mut result = json!({"rank": hit.rank, "result": event});
            if let Some((before, after, profile)) = request.context {
                result["context"] = self
                    .search_context(room, row, user, request.device, (before, after, profile))
                    .await?;
            }
            results.push(result);
            for group in &request.group_by {
                let value = if group == "room_id" {
                    room.room_id.clone()
                } else {
                    row.sender.clone()
                };
                groups
                    .entry(group.as_str())
                    .or_default()
                    .entry(value)
                    .or_default()
                    .push(row.event_id.clone());
            }
            if !result_rooms.contains(&row.room_nid) {
                result_rooms.push(row.room_nid);
            }
        }
        let groups = groups
            .into_iter()
            .map(|(key, values)| {
                // `order`: where each group's first result is in this page.
                let mut firsts: Vec<(usize, String, Vec<String>)> = values
                    .into_iter()
                    .map(|(value, ids)| {
                        let first = page
                            .iter()
                            .position(|(_, row, _)| Some(&row.event_id) == ids.first())
                            .unwrap_or(usize::MAX);
                        (first, value, ids)
                    })
                    .collect();
                firsts.sort();
                let map: serde_json::Map<String, Value> = firsts
                    .into_iter()
                    .enumerate()
                    .map(|(order, (_, value, ids))| {
                        (value, json!({"results": ids, "order": order + 1}))
                    })
                    .collect();
                (key.to_owned(), Value::Object(map))
            })
            .collect();
        let mut state = serde_json::Map::new();
        if request.include_state {
            for nid in result_rooms {
                if let Some(room) = rooms.get(&nid) {
                    let events = self.state(user, &room.room_id).await?;
                    state.insert(room.room_id.clone(), Value::Array(events));
                }
            }
        }
        Ok(SearchResults {
            count,
            results,
            highlights: words,
            next_batch,
            groups,
            state,
        })
    }

    /// The `context` of one result: visible events before it (newest first) and after it
    /// (oldest first), with pagination tokens, and optionally the senders' profiles as of the
    /// result.
    async fn search_context(
        &self,
        room: &RoomRow,
        row: &EventRow,
        user: &UserId,
        device: Option<&str>,
        (before, after, include_profile): (usize, usize, bool),
    ) -> Result<Value> {
        let (before_rows, after_rows) = self
            .history_around(
                room,
                row,
                before.min(MAX_CONTEXT) as i64,
                after.min(MAX_CONTEXT) as i64,
            )
            .await?;
        let start = HistoryToken::of(before_rows.last().unwrap_or(row)).encode();
        let end = HistoryToken::of(after_rows.last().unwrap_or(row)).encode();
        let mut senders: HashSet<String> = HashSet::from([row.sender.clone()]);
        let mut sides = Vec::with_capacity(2);
        for rows in [&before_rows, &after_rows] {
            let visible = self.visible_rows(rows, user).await?;
            let mut events = Vec::new();
            for (r, sight) in rows.iter().zip(visible) {
                if let Some(sight) = sight
                    && let Some(event) = self.seen_event(room, r, user, device, &sight)
                {
                    senders.insert(r.sender.clone());
                    events.push(event);
                }
            }
            sides.push(Value::Array(events));
        }
        let mut context = json!({
            "start": start,
            "end": end,
            "events_before": sides[0],
            "events_after": sides[1],
        });
        if include_profile {
            context["profile_info"] = self.profiles_at(row.state_after()?, &senders).await?;
        }
        Ok(context)
    }

    /// The display names and avatars of `users` in a state snapshot (their member events).
    async fn profiles_at(&self, state_group: i64, users: &HashSet<String>) -> Result<Value> {
        let keys: Vec<(&str, &str)> = users
            .iter()
            .map(|u| ("m.room.member", u.as_str()))
            .collect();
        let entries = self
            .store
            .state_entries_at_groups(&[state_group], &keys)
            .await?;
        let nids: Vec<i64> = entries
            .get(&state_group)
            .map(|e| e.values().copied().collect())
            .unwrap_or_default();
        let mut profiles = serde_json::Map::new();
        for member in self.store.events_by_nids(&nids).await? {
            let Some(user_id) = member.state_key.clone() else {
                continue;
            };
            let content = serde_json::from_str::<Value>(&member.json)
                .map(|mut json| json["content"].take())
                .unwrap_or(Value::Null);
            let mut profile = serde_json::Map::new();
            for field in ["displayname", "avatar_url"] {
                if let Some(value) = content.get(field).filter(|v| v.is_string()) {
                    profile.insert(field.to_owned(), value.clone());
                }
            }
            profiles.insert(user_id, Value::Object(profile));
        }
        Ok(Value::Object(profiles))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn search_words_split_on_anything_but_letters_and_digits() {
        assert_eq!(
            search_words("Hello, wörld! a&b | \"NEAR\" hello 4"),
            vec!["hello", "wörld", "a", "b", "near", "4"]
        );
        assert!(search_words("  *&|  ").is_empty());
        assert_eq!(search_words(&"w ".repeat(100)).len(), 1);
    }

    #[test]
    fn cursor_tokens_round_trip_and_belong_to_their_order() {
        for backfilled in [-1, -42] {
            let recent = Cursor::Before(backfilled);
            assert_eq!(recent.token(), format!("recent_t0_{backfilled}"));
            assert_eq!(
                Cursor::parse(&recent.token(), SearchOrder::Recent).unwrap(),
                recent
            );
        }
        assert!(Cursor::parse("recent_t0_5", SearchOrder::Recent).is_err());
        assert!(Cursor::parse("recent_t1_-5", SearchOrder::Recent).is_err());
        let recent = Cursor::Before(42);
        assert_eq!(
            Cursor::parse(&recent.token(), SearchOrder::Recent).unwrap(),
            recent
        );
        let rank = Cursor::Offset(10);
        assert_eq!(
            Cursor::parse(&rank.token(), SearchOrder::Rank).unwrap(),
            rank
        );
        assert!(Cursor::parse(&rank.token(), SearchOrder::Recent).is_err());
        assert!(Cursor::parse("rank_-1", SearchOrder::Rank).is_err());
        assert!(Cursor::parse("nonsense", SearchOrder::Rank).is_err());
    }
}

//! What clients read: room state, single events, members, joined rooms and timeline pages, each
//! with history visibility enforced, and every event turned into its client form by one function.

use std::collections::HashMap;

use myelin_room_version::{
    RoomVersion,
    projection::{project_for_client, visible_user_id},
};
use myelin_store::{EventRow, EventStatus, HistoryPosition, HistoryWalk, RoomRow};
use ruma::UserId;
use serde_json::{Value, json};

use super::{Rooms, version_of, visibility::Sight};
use crate::{Error, Result, now_millis};

/// Which way a timeline page goes.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Direction {
    Backward,
    Forward,
}

/// A page of `/messages`.
#[derive(Debug, Clone)]
pub struct MessagesPage {
    pub chunk: Vec<Value>,
    pub start: String,
    pub end: Option<String>,
    /// With lazy-loaded members: the member events of the chunk's senders.
    pub state: Vec<Value>,
    /// Where a further page would start (the token of the last event read), also when the
    /// history stored here ended (`end` is then `None`): backfill may yet bring more.
    pub resume: Option<String>,
}

/// The event fields of a filter (`RoomEventFilter`): which types and senders to include.
/// Types may end in `*` to match a prefix.
#[derive(Debug, Clone, Default)]
pub struct EventFilter {
    pub types: Option<Vec<String>>,
    pub not_types: Vec<String>,
    pub senders: Option<Vec<String>>,
    pub not_senders: Vec<String>,
    /// `contains_url`: `Some(true)` keeps only events whose content has a `url`, `Some(false)`
    /// only those without one.
    pub contains_url: Option<bool>,
}

impl EventFilter {
    /// Whether a client-format event passes the filter.
    pub fn wants(&self, event: &Value) -> bool {
        let kind = event["type"].as_str().unwrap_or_default();
        let sender = event["sender"].as_str().unwrap_or_default();
        let matches = |pattern: &String, value: &str| match pattern.strip_suffix('*') {
            Some(prefix) => value.starts_with(prefix),
            None => pattern == value,
        };
        self.types
            .as_ref()
            .is_none_or(|t| t.iter().any(|p| matches(p, kind)))
            && !self.not_types.iter().any(|p| matches(p, kind))
            && self
                .senders
                .as_ref()
                .is_none_or(|s| s.iter().any(|x| x == sender))
            && !self.not_senders.iter().any(|x| x == sender)
            && self
                .contains_url
                .is_none_or(|wanted| event["content"]["url"].is_string() == wanted)
    }
}

/// What page of the timeline a client asks for.
#[derive(Debug, Clone, Copy)]
pub struct PageRequest<'a> {
    pub from: Option<&'a str>,
    pub to: Option<&'a str>,
    pub dir: Direction,
    pub limit: usize,
    /// The filter's event fields.
    pub filter: &'a EventFilter,
    /// The reader's device, for `unsigned.transaction_id` on its own sends.
    pub device: Option<&'a str>,
    /// The filter's `lazy_load_members`: the page's `state` carries the member events of the
    /// chunk's senders.
    pub lazy_load_members: bool,
}

/// `/context`: an event with what came before and after it, and the state at it.
#[derive(Debug, Clone)]
pub struct EventContext {
    pub event: Value,
    pub before: Vec<Value>,
    pub after: Vec<Value>,
    pub start: String,
    pub end: String,
    pub state: Vec<Value>,
}

/// `/members` filters.
#[derive(Debug, Clone, Default)]
pub struct MembersFilter {
    /// A pagination token: the members as of that point instead of now.
    pub at: Option<String>,
    pub membership: Option<String>,
    pub not_membership: Option<String>,
}

/// The largest stream position a token may name. Positions count events, so no real token
/// comes near it; the bound keeps `position + 1` and friends far from overflow, whatever a
/// client sends.
pub(crate) const MAX_TOKEN_POSITION: i64 = (1 << 53) - 1;

/// A pagination token: a position in the events stream. A sync token (`s<events>_<...>`) is a
/// valid pagination token too: its events position. Anything else, and any position out of
/// range, is `M_INVALID_PARAM`.
pub(crate) fn parse_token(token: &str) -> Result<i64> {
    let invalid = || Error::InvalidParam(format!("Invalid pagination token {token:?}"));
    let rest = token.strip_prefix('s').ok_or_else(invalid)?;
    if rest.contains('_') {
        // A whole sync token, or nothing: `s5_garbage` is not a token this server issued.
        return crate::sync::SyncToken::parse(token)
            .map(|t| t.events)
            .map_err(|_| invalid());
    }
    parse_position(rest).ok_or_else(invalid)
}

/// One number of a token this server issued: ASCII digits only (`str::parse` would also take a
/// sign), no leading zero, within `0..=MAX_TOKEN_POSITION`, so that no arithmetic on it can
/// overflow. Every token parser goes through here, so that what parses is exactly what the
/// server prints.
pub(crate) fn parse_position(digits: &str) -> Option<i64> {
    if digits.is_empty()
        || !digits.bytes().all(|b| b.is_ascii_digit())
        || (digits.len() > 1 && digits.starts_with('0'))
    {
        return None;
    }
    digits
        .parse::<i64>()
        .ok()
        .filter(|n| *n <= MAX_TOKEN_POSITION)
}

pub(crate) fn token(position: i64) -> String {
    format!("s{position}")
}

/// A `/messages` token: a place in the room's history.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum HistoryToken {
    /// `s<N>`: a stream position (issued by `/sync` as `prev_batch`, and by `/messages` before
    /// it walked the topological order).
    Stream(i64),
    /// A whole sync token (`next_batch`), which names its events position.
    Sync(i64),
    /// `t<topological ordering>_<stream ordering>`: an event's place in the topological order,
    /// which `/messages` and `/context` issue. The stream ordering is negative for backfilled
    /// history (`t3_-7`).
    Topological { topological: i64, stream: i64 },
}

impl HistoryToken {
    /// Parses a token this server issued, any kind; anything else is `M_INVALID_PARAM`.
    pub(crate) fn parse(token: &str) -> Result<Self> {
        let invalid = || Error::InvalidParam(format!("Invalid pagination token {token:?}"));
        if let Some(rest) = token.strip_prefix('t') {
            let (topological, stream) = rest.split_once('_').ok_or_else(invalid)?;
            let topological = parse_position(topological).ok_or_else(invalid)?;
            // A negative stream ordering is `-` and a positive number: no `-0`, so that
            // what parses prints back the same.
            let stream = match stream.strip_prefix('-') {
                Some(digits) => parse_position(digits).filter(|n| *n > 0).map(|n| -n),
                None => parse_position(stream),
            }
            .ok_or_else(invalid)?;
            return Ok(HistoryToken::Topological {
                topological,
                stream,
            });
        }
        let position = parse_token(token)?;
        Ok(if token.contains('_') {
            HistoryToken::Sync(position)
        } else {
            HistoryToken::Stream(position)
        })
    }

    /// The token of an event's place in the topological order.
    pub(crate) fn of(row: &EventRow) -> Self {
        HistoryToken::Topological {
            topological: row.topological_ordering,
            stream: row.stream_ordering,
        }
    }

    /// As a bound of a walk in `dir`. A stream token means "before (or after) the event at that
    /// stream position", compared by stream ordering while the walk itself goes in topological
    /// order: `s<N>` is `N` either way. A sync token has delivered every event up to and
    /// including its events position `E`, so a walk forwards starts after `E` and a walk
    /// backwards starts with `E` itself (bound `E + 1`): paging back from a sync token taken
    /// after a leave gives the leave first.
    pub(crate) fn towards(self, dir: Direction) -> HistoryPosition {
        match self {
            HistoryToken::Stream(position) => HistoryPosition::Stream(position),
            HistoryToken::Sync(position) => HistoryPosition::Stream(match dir {
                Direction::Backward => position + 1,
                Direction::Forward => position,
            }),
            HistoryToken::Topological {
                topological,
                stream,
            } => HistoryPosition::Topological {
                topological,
                stream,
            },
        }
    }

    /// The stream position the token names, for the reads that walk the stream rather than
    /// the topological order (`/relations`, `/threads`, `/members?at=`): an event's own
    /// stream ordering for a topological token.
    pub(crate) fn stream_position(self) -> i64 {
        match self {
            HistoryToken::Stream(position) | HistoryToken::Sync(position) => position,
            HistoryToken::Topological { stream, .. } => stream,
        }
    }

    pub(crate) fn encode(self) -> String {
        match self {
            HistoryToken::Stream(position) => token(position),
            HistoryToken::Sync(position) => token(position),
            HistoryToken::Topological {
                topological,
                stream,
            } => format!("t{topological}_{stream}"),
        }
    }
}

/// A token naming a stream position for the reads that page in stream order (`/relations`,
/// `/threads`): `s<N>`, or for backfilled history, whose stream positions are below 0, the
/// topological form `t0_<N>` (`s` takes no sign), which those reads take as its stream part.
pub(crate) fn stream_token(position: i64) -> String {
    if position >= 0 {
        token(position)
    } else {
        HistoryToken::Topological {
            topological: 0,
            stream: position,
        }
        .encode()
    }
}

/// The token of a walk bound (what a page's `start` prints).
fn position_token(position: HistoryPosition) -> String {
    match position {
        HistoryPosition::Stream(position) => token(position),
        HistoryPosition::Topological {
            topological,
            stream,
        } => HistoryToken::Topological {
            topological,
            stream,
        }
        .encode(),
    }
}

/// Whether a stored event is part of the room's history as clients see it: rejected events,
/// outliers and soft-failed events never reach a client (the store's history reads leave them
/// out; this guards the reads by event id).
pub(crate) fn in_timeline(row: &EventRow) -> bool {
    row.status == EventStatus::Normal
}

/// Where in the room's history a user may read state from.
enum Vantage {
    /// Joined: the current state.
    Current,
    /// Left or banned after being joined: the state as of that departure (its state group
    /// and stream position).
    At { group: i64, stream: i64 },
}

/// What a reader who may not read a room hears, whether the room exists or not.
fn not_in_room() -> Error {
    Error::Forbidden("You are not in this room".to_owned())
}

/// What a reader hears of an event they may not see, whether it (or its room) exists or not.
fn event_not_found() -> Error {
    Error::NotFound("Event not found".to_owned())
}

impl Rooms {
    /// A room for a reader: an unknown room gets the answer a room they are not in gets, so
    /// reads do not tell who is not in a room whether it exists.
    async fn room_for_reader(&self, room_id: &str) -> Result<RoomRow> {
        self.store.room(room_id).await?.ok_or_else(not_in_room)
    }

    /// A room whose history a user may walk (`/messages`, `/timestamp_to_event`): anyone who
    /// is or was in it and has not forgotten it; history visibility then filters each event.
    /// An unknown room looks like one the user is not in: no existence is leaked.
    async fn room_for_history(&self, room_id: &str, user: &UserId) -> Result<RoomRow> {
        let room = self.room_for_reader(room_id).await?;
        if self
            .store
            .membership_for_reads(room.room_nid, user.as_str())
            .await?
            .is_none_or(|(_, _, _, forgotten)| forgotten)
        {
            return Err(not_in_room());
        }
        Ok(room)
    }

    /// Whether the user forgot the room (it is then no longer theirs to read).
    async fn forgotten(&self, room: &RoomRow, user: &UserId) -> Result<bool> {
        Ok(self
            .store
            .membership_for_reads(room.room_nid, user.as_str())
            .await?
            .is_some_and(|(_, _, _, forgotten)| forgotten))
    }

    /// The state a user may see: current if joined, as of their departure if they left or were
    /// removed after being joined. Nothing for a user who never joined (invited, knocking, or
    /// banned without joining), or who forgot the room.
    async fn vantage(&self, room: &RoomRow, user: &UserId) -> Result<Vantage> {
        match self
            .store
            .membership_for_reads(room.room_nid, user.as_str())
            .await?
        {
            Some((membership, _, _, false)) if membership == "join" => Ok(Vantage::Current),
            Some((membership, event_nid, _, false))
                if membership == "leave" || membership == "ban" =>
            {
                let departure = match self.store.last_departure_from_join(event_nid).await? {
                    Some(nid) => self.store.event_by_nid(nid).await?,
                    None => None,
                };
                match departure {
                    Some(row) => Ok(Vantage::At {
                        group: row.state_after()?,
                        stream: row.stream_ordering,
                    }),
                    None => Err(not_in_room()),
                }
            }
            _ => Err(not_in_room()),
        }
    }

    async fn state_for(&self, room: &RoomRow, user: &UserId) -> Result<Vec<EventRow>> {
        match self.vantage(room, user).await? {
            Vantage::Current => Ok(self.store.current_state(room.room_nid, None).await?),
            Vantage::At { group, .. } => Ok(self.store.state_at_group(group).await?),
        }
    }

    /// `GET /rooms/{roomId}/state`.
    pub async fn state(&self, user: &UserId, room_id: &str) -> Result<Vec<Value>> {
        let room = self.room_for_reader(room_id).await?;
        let rows = self.state_for(&room, user).await?;
        Ok(rows
            .iter()
            .filter_map(|row| self.client_event(&room, row, user))
            .collect())
    }

    /// `GET /rooms/{roomId}/state/{type}/{stateKey}`: the event's content.
    pub async fn state_event(
        &self,
        user: &UserId,
        room_id: &str,
        event_type: &str,
        state_key: &str,
    ) -> Result<Value> {
        let room = self.room_for_reader(room_id).await?;
        let rows = self.state_for(&room, user).await?;
        let exact = rows
            .iter()
            .find(|row| row.event_type == event_type && row.state_key.as_deref() == Some(state_key))
            .and_then(|row| self.client_event(&room, row, user));
        // Account-key rooms: a client names users by account name (MSC4243.md Q3), so a state
        // key is also found by what clients see of it; of several keys shown under one name the
        // most recent event wins.
        let by_name = || {
            if !version_of(&room).is_ok_and(|v| v.uses_account_keys())
                || !state_key.starts_with('@')
            {
                return None;
            }
            rows.iter()
                .filter(|row| row.event_type == event_type)
                .filter_map(|row| Some((row.stream_ordering, self.client_event(&room, row, user)?)))
                .filter(|(_, event)| event["state_key"] == state_key)
                .max_by_key(|(stream, _)| *stream)
                .map(|(_, event)| event)
        };
        exact.or_else(by_name).ok_or_else(|| {
            Error::NotFound(format!(
                "No {event_type} state with key {state_key:?} in this room"
            ))
        })
    }

    /// `GET /rooms/{roomId}/event/{eventId}`.
    pub async fn event(
        &self,
        user: &UserId,
        device: Option<&str>,
        room_id: &str,
        event_id: &str,
    ) -> Result<Value> {
        let not_found = event_not_found;
        let room = self.store.room(room_id).await?.ok_or_else(not_found)?;
        if self.forgotten(&room, user).await? {
            return Err(not_found());
        }
        let row = self
            .store
            .event(event_id)
            .await?
            .filter(|row| row.room_nid == room.room_nid && in_timeline(row))
            .ok_or_else(not_found)?;
        let Some(sight) = self.sight_of(&row, user).await? else {
            return Err(not_found());
        };
        let mut event = [self
            .seen_event(&room, &row, user, device, &sight)
            .ok_or_else(not_found)?];
        self.bundle_aggregations(&room, user, &mut event).await?;
        let [event] = event;
        Ok(event)
    }

    /// `GET /rooms/{roomId}/members`.
    pub async fn members(
        &self,
        user: &UserId,
        room_id: &str,
        filter: &MembersFilter,
    ) -> Result<Vec<Value>> {
        let room = self.room_for_reader(room_id).await?;
        let vantage = self.vantage(&room, user).await?;
        let rows = match (&filter.at, vantage) {
            (None, Vantage::Current) => self.store.current_state(room.room_nid, None).await?,
            (None, Vantage::At { group, .. }) => self.store.state_at_group(group).await?,
            (Some(at), vantage) => {
                // Never past what the user may see: their departure, if they left.
                let departure = match vantage {
                    Vantage::At { stream, .. } => Some(stream),
                    Vantage::Current => None,
                };
                // The members after the last event at or before the token (the state between
                // the events `/messages` reads backwards from it and those after it): in
                // stream order for a stream token, through the event a sync token names (it
                // delivered that event) and before the one `s<N>` names; in topological order
                // for a token `/messages` issued.
                let before = match HistoryToken::parse(at)?.towards(Direction::Backward) {
                    HistoryPosition::Topological {
                        topological,
                        stream,
                    } => {
                        self.store
                            .room_history(&HistoryWalk {
                                room_nid: room.room_nid,
                                from: Some(HistoryPosition::Topological {
                                    topological,
                                    stream,
                                }),
                                to: None,
                                backwards: true,
                                max_stream: departure,
                                limit: 1,
                            })
                            .await?
                    }
                    HistoryPosition::Stream(mut position) => {
                        if let Some(stream) = departure {
                            position = position.min(stream.saturating_add(1));
                        }
                        self.store
                            .room_events(room.room_nid, 0, position, true, 1)
                            .await?
                    }
                };
                match before.first() {
                    // The members at a point are as visible as the event there: a member
                    // who joined later does not see who was in a room whose history is
                    // hidden from them.
                    Some(last) => {
                        if self.sight_of(last, user).await?.is_none() {
                            return Err(Error::Forbidden(
                                "You may not see this room's history at that point".to_owned(),
                            ));
                        }
                        self.store.state_at_group(last.state_after()?).await?
                    }
                    None => Vec::new(),
                }
            }
        };
        Ok(rows
            .iter()
            .filter(|row| row.event_type == "m.room.member")
            .filter_map(|row| self.client_event(&room, row, user))
            .filter(|event| {
                let membership = event["content"]["membership"].as_str().unwrap_or_default();
                filter.membership.as_deref().is_none_or(|m| m == membership)
                    && filter.not_membership.as_deref() != Some(membership)
            })
            .collect())
    }

    /// `GET /rooms/{roomId}/joined_members`: `(user_id, display name, avatar url)`.
    pub async fn joined_members(
        &self,
        user: &UserId,
        room_id: &str,
    ) -> Result<Vec<(String, Option<String>, Option<String>)>> {
        let room = self.room_for_reader(room_id).await?;
        if !matches!(self.vantage(&room, user).await?, Vantage::Current) {
            return Err(Error::Forbidden(
                "You are not joined to this room".to_owned(),
            ));
        }
        let rows = self.store.current_state(room.room_nid, None).await?;
        Ok(rows
            .iter()
            .filter(|row| row.event_type == "m.room.member")
            .filter_map(|row| {
                // Through the projection like every event a client reads: account-key rooms
                // list members by account name and leave out those it hides.
                let json = self.client_event(&room, row, user)?;
                let content = &json["content"];
                (content["membership"] == "join").then(|| {
                    (
                        json["state_key"].as_str().unwrap_or_default().to_owned(),
                        content["displayname"].as_str().map(str::to_owned),
                        content["avatar_url"].as_str().map(str::to_owned),
                    )
                })
            })
            .collect())
    }

    /// `POST /user_directory/search`: users sharing a room with the searcher or in published
    /// rooms. Returns the matches and whether there were more than `limit`.
    pub async fn search_users(
        &self,
        searcher: &UserId,
        term: &str,
        limit: usize,
    ) -> Result<(Vec<(String, Option<String>, Option<String>)>, bool)> {
        let limit = limit.clamp(1, 1000);
        let mut rows = self
            .store
            .search_users(searcher.as_str(), term, limit as i64)
            .await?;
        let limited = rows.len() > limit;
        rows.truncate(limit);
        Ok((rows, limited))
    }

    /// `GET /notifications`: the user's notifying events, newest first, before `from`.
    /// Returns the notifications and the token for the next page.
    pub async fn notifications(
        &self,
        user: &UserId,
        from: Option<&str>,
        limit: usize,
        only_highlight: bool,
    ) -> Result<(Vec<Value>, Option<String>)> {
        let before = match from {
            Some(token) => parse_token(token)?,
            None => self.store.events_stream_position().await? + 1,
        };
        let limit = limit.clamp(1, 1000);
        let rows = self
            .store
            .notifications(user.as_str(), before, limit as i64, only_highlight)
            .await?;
        let next = (rows.len() == limit)
            .then(|| token(rows.last().map_or(before, |r| r.event.stream_ordering)));
        let mut read_positions: HashMap<i64, i64> = HashMap::new();
        let mut out = Vec::new();
        for row in rows {
            let Some(room) = self.store.room(&row.room_id).await? else {
                continue;
            };
            let read_up_to = match read_positions.get(&room.room_nid) {
                Some(position) => *position,
                None => {
                    let position = self
                        .store
                        .read_position(room.room_nid, user.as_str())
                        .await?;
                    read_positions.insert(room.room_nid, position);
                    position
                }
            };
            let Some(event) = self.client_event(&room, &row.event, user) else {
                continue;
            };
            out.push(json!({
                "actions": serde_json::from_str::<Value>(&row.actions).unwrap_or(Value::Array(Vec::new())),
                "event": event,
                "read": row.event.stream_ordering <= read_up_to,
                "room_id": row.room_id,
                "ts": row.ts,
            }));
        }
        Ok((out, next))
    }

    /// `GET /joined_rooms`.
    pub async fn joined_rooms(&self, user: &UserId) -> Result<Vec<String>> {
        Ok(self
            .store
            .rooms_with_membership(user.as_str(), "join")
            .await?)
    }

    /// `GET /rooms/{roomId}/messages`: a page of the timeline the user may see.
    pub async fn messages(
        &self,
        user: &UserId,
        room_id: &str,
        page: &PageRequest<'_>,
    ) -> Result<MessagesPage> {
        let PageRequest {
            from,
            to,
            dir,
            limit,
            filter,
            device,
            lazy_load_members,
        } = *page;
        let room = self.room_for_history(room_id, user).await?;
        let limit = limit.clamp(1, 1000);
        // Pages walk the topological order; the tokens they hand out are topological, and the
        // stream tokens clients already hold (sync's `prev_batch`) still start a walk.
        let from = from
            .map(|t| HistoryToken::parse(t).map(|t| t.towards(dir)))
            .transpose()?;
        let to = to
            .map(|t| HistoryToken::parse(t).map(|t| t.towards(dir)))
            .transpose()?;
        let start = match from {
            Some(position) => position_token(position),
            None => match dir {
                // The live end: a later page forwards from here gets what comes after now.
                Direction::Backward => token(self.store.events_stream_position().await? + 1),
                // Before the room's first event (depths start at 1), backfilled history
                // included.
                Direction::Forward => HistoryToken::Topological {
                    topological: 0,
                    stream: 0,
                }
                .encode(),
            },
        };
        let rows = self
            .store
            .room_history(&HistoryWalk {
                room_nid: room.room_nid,
                from,
                to,
                backwards: dir == Direction::Backward,
                max_stream: None,
                limit: limit as i64,
            })
            .await?;
        let resume = rows.last().map(|r| HistoryToken::of(r).encode());
        let end = (rows.len() == limit).then(|| resume.clone()).flatten();
        let visible = self.visible_rows(&rows, user).await?;
        let mut chunk = Vec::new();
        let mut first_row = None;
        for (row, sight) in rows.iter().zip(visible) {
            if let Some(sight) = sight
                && let Some(event) = self.seen_event(&room, row, user, device, &sight)
                && filter.wants(&event)
            {
                first_row.get_or_insert(row);
                chunk.push(event);
            }
        }
        let state = match first_row {
            Some(first) if lazy_load_members => {
                let senders: Vec<&str> = chunk
                    .iter()
                    .filter_map(|event| event["sender"].as_str())
                    .collect();
                self.members_at(&room, first, &senders, user).await?
            }
            _ => Vec::new(),
        };
        self.bundle_aggregations(&room, user, &mut chunk).await?;
        Ok(MessagesPage {
            chunk,
            start,
            end,
            state,
            resume,
        })
    }

    /// The member events of `users` in the state at `at` (after it), in client form: what a
    /// lazy-loading client needs to render a page that starts at `at`.
    async fn members_at(
        &self,
        room: &RoomRow,
        at: &EventRow,
        users: &[&str],
        reader: &UserId,
    ) -> Result<Vec<Value>> {
        let mut users = users.to_vec();
        users.sort_unstable();
        users.dedup();
        let keys: Vec<(&str, &str)> = users.iter().map(|u| ("m.room.member", *u)).collect();
        let group = at.state_after()?;
        let mut nids: Vec<i64> = self
            .store
            .state_entries_at_groups(&[group], &keys)
            .await?
            .remove(&group)
            .map(|entries| entries.into_values().collect())
            .unwrap_or_default();
        nids.sort_unstable();
        let mut rows = self.store.events_by_nids(&nids).await?;
        rows.sort_unstable_by_key(|row| row.stream_ordering);
        Ok(rows
            .iter()
            .filter_map(|row| self.client_event(room, row, reader))
            .collect())
    }

    /// `GET /rooms/{roomId}/timestamp_to_event`: the event closest to `ts` in direction `dir`
    /// (at or after it going forwards, at or before it going backwards) among those the user
    /// may see, as `(event id, origin_server_ts)`. Events sent in the same millisecond are
    /// taken in the order the room saw them. `M_NOT_FOUND` when there is none.
    pub async fn event_by_timestamp(
        &self,
        user: &UserId,
        room_id: &str,
        ts: i64,
        dir: Direction,
    ) -> Result<(String, i64)> {
        /// Candidates read per query; invisible ones are skipped and the walk goes on.
        const BATCH: i64 = 100;
        let room = self.room_for_history(room_id, user).await?;
        let backwards = dir == Direction::Backward;
        // Just outside `ts` in the walk's direction, so that events at `ts` itself count (backfilled
        // ones too: their stream orderings are below 0).
        let mut cursor = (ts, if backwards { i64::MAX } else { i64::MIN });
        loop {
            let rows = self
                .store
                .room_events_by_time(room.room_nid, cursor.0, cursor.1, backwards, BATCH)
                .await?;
            let visible = self.visible_rows(&rows, user).await?;
            for (row, sight) in rows.iter().zip(visible) {
                if let Some(sight) = sight
                    && let Some(event) = self.seen_event(&room, row, user, None, &sight)
                {
                    let event_id = event["event_id"].as_str().unwrap_or(&row.event_id);
                    let sent = event["origin_server_ts"].as_i64().unwrap_or_default();
                    return Ok((event_id.to_owned(), sent));
                }
            }
            match rows.last() {
                Some(last) if rows.len() as i64 == BATCH => {
                    let sent = serde_json::from_str::<Value>(&last.json)
                        .ok()
                        .and_then(|json| json["origin_server_ts"].as_i64())
                        .ok_or_else(|| {
                            Error::Internal(format!("event {} has no timestamp", last.event_id))
                        })?;
                    cursor = (sent, last.stream_ordering);
                }
                _ => {
                    return Err(Error::NotFound(
                        "No event found in that direction from that time".to_owned(),
                    ));
                }
            }
        }
    }

    /// `GET /rooms/{roomId}/context/{eventId}`: up to `limit` visible events around the event,
    /// split evenly before and after it.
    pub async fn context(
        &self,
        user: &UserId,
        device: Option<&str>,
        room_id: &str,
        event_id: &str,
        limit: usize,
    ) -> Result<EventContext> {
        let not_found = event_not_found;
        let room = self.store.room(room_id).await?.ok_or_else(not_found)?;
        if self.forgotten(&room, user).await? {
            return Err(not_found());
        }
        let row = self
            .store
            .event(event_id)
            .await?
            .filter(|row| row.room_nid == room.room_nid && in_timeline(row))
            .ok_or_else(not_found)?;
        let Some(sight) = self.sight_of(&row, user).await? else {
            return Err(not_found());
        };
        let mut event = [self
            .seen_event(&room, &row, user, device, &sight)
            .ok_or_else(not_found)?];
        self.bundle_aggregations(&room, user, &mut event).await?;
        let [event] = event;
        let limit = limit.min(100);
        let before_limit = (limit / 2) as i64;
        let after_limit = (limit - limit / 2) as i64;
        let (before_rows, after_rows) = self
            .history_around(&room, &row, before_limit, after_limit)
            .await?;
        let start = HistoryToken::of(before_rows.last().unwrap_or(&row)).encode();
        let end = HistoryToken::of(after_rows.last().unwrap_or(&row)).encode();
        let mut before = Vec::new();
        let visible = self.visible_rows(&before_rows, user).await?;
        for (r, sight) in before_rows.iter().zip(visible) {
            if let Some(sight) = sight
                && let Some(e) = self.seen_event(&room, r, user, device, &sight)
            {
                before.push(e);
            }
        }
        let mut after = Vec::new();
        let visible = self.visible_rows(&after_rows, user).await?;
        for (r, sight) in after_rows.iter().zip(visible) {
            if let Some(sight) = sight
                && let Some(e) = self.seen_event(&room, r, user, device, &sight)
            {
                after.push(e);
            }
        }
        self.bundle_aggregations(&room, user, &mut before).await?;
        self.bundle_aggregations(&room, user, &mut after).await?;
        let state = self
            .store
            .state_at_group(row.state_after()?)
            .await?
            .iter()
            .filter_map(|r| self.client_event_for_device(&room, r, user, device))
            .collect();
        Ok(EventContext {
            event,
            before,
            after,
            start,
            end,
            state,
        })
    }

    /// Up to `before` events just before `row` (nearest first) and `after` just after it
    /// (nearest first), in the topological order `/messages` walks: the sides of `/context`
    /// and of search results' context.
    pub(crate) async fn history_around(
        &self,
        room: &RoomRow,
        row: &EventRow,
        before: i64,
        after: i64,
    ) -> Result<(Vec<EventRow>, Vec<EventRow>)> {
        let walk = |backwards: bool, limit: i64| HistoryWalk {
            room_nid: room.room_nid,
            from: Some(HistoryPosition::of(row)),
            to: None,
            backwards,
            max_stream: None,
            limit,
        };
        let (backwards, forwards) = (walk(true, before), walk(false, after));
        Ok(tokio::try_join!(
            self.store.room_history(&backwards),
            self.store.room_history(&forwards),
        )?)
    }

    /// A stored event in the client-server format, through the room version's client
    /// projection (which filters and rewrites in account-key rooms).
    pub fn client_event(&self, room: &RoomRow, row: &EventRow, reader: &UserId) -> Option<Value> {
        self.client_event_for_device(room, row, reader, None)
    }

    /// [`Rooms::client_event`] for a reader on a known device: the device that sent the event
    /// also gets its `unsigned.transaction_id` (clients match it to their local echo).
    pub fn client_event_for_device(
        &self,
        room: &RoomRow,
        row: &EventRow,
        reader: &UserId,
        device: Option<&str>,
    ) -> Option<Value> {
        self.project(room, row, reader, device, None)
    }

    /// An event history visibility let the reader see, in client form: as
    /// [`Rooms::client_event_for_device`], with the reader's membership at the event as
    /// `unsigned.membership`. Every surface that serves events from a room's history (sync
    /// timelines, `/messages`, `/context`, `/event`, `/relations`, `/threads`, search,
    /// bundled aggregations) goes through here.
    pub(crate) fn seen_event(
        &self,
        room: &RoomRow,
        row: &EventRow,
        reader: &UserId,
        device: Option<&str>,
        sight: &Sight,
    ) -> Option<Value> {
        self.project(room, row, reader, device, Some(sight))
    }

    fn project(
        &self,
        room: &RoomRow,
        row: &EventRow,
        reader: &UserId,
        device: Option<&str>,
        sight: Option<&Sight>,
    ) -> Option<Value> {
        let version = version_of(room).ok()?;
        let typed = super::pdu_of(row, version).ok()?;
        let mut unsigned = json!({});
        let sent = i64::try_from(typed.origin_server_ts()).unwrap_or(i64::MAX);
        unsigned["age"] = json!(now_millis().saturating_sub(sent).max(0));
        if let (Some((txn_device, txn_id)), Some(device)) = (&row.txn, device)
            && txn_device == device
            && typed.sender() == reader.as_str()
        {
            unsigned["transaction_id"] = json!(txn_id);
        }
        if let Some(prev) = row
            .prev_json
            .as_deref()
            .and_then(|j| serde_json::from_str::<Value>(j).ok())
        {
            unsigned["prev_content"] = prev["content"].clone();
            unsigned["prev_sender"] = prev["sender"].clone();
        }
        if let Some(redaction) = row
            .redacted_because_json
            .as_deref()
            .and_then(|j| serde_json::from_str::<Value>(j).ok())
        {
            let mut because = json!({
                "event_id": row.redacted_by,
                "room_id": room.room_id,
                "sender": redaction["sender"],
                "type": "m.room.redaction",
                "content": redaction["content"],
                "origin_server_ts": redaction["origin_server_ts"],
            });
            if let Some(redacts) = redaction
                .get("redacts")
                .or_else(|| redaction["content"].get("redacts"))
            {
                because["redacts"] = redacts.clone();
            }
            unsigned["redacted_because"] = because;
        }
        if let Some(sight) = sight {
            unsigned["membership"] = json!(sight.membership());
        }
        let Value::Object(unsigned) = unsigned else {
            return None;
        };
        let mut event = typed.client_event(unsigned);
        // Clients read `redacts` at the top level in every room version.
        if let Some(redacts) = typed.redacts() {
            event["redacts"] = json!(redacts);
        }
        self.project_value(version, event, Some(reader))
    }

    /// Stripped state for invites and knocks: what a client shows before joining (sync's
    /// `invite_state`/`knock_state`, and the `knock_room_state` a resident answers `send_knock`
    /// with). The room's naming and joining state plus the membership event `member_nid` (for
    /// a room this server is not in, the stripped state stored with the invite). The
    /// create event is given whole, in the client format (spec v1.16, MSC4311: clients check
    /// the room id and creators against it); the others are stripped to type, state key,
    /// content and sender.
    pub(crate) async fn stripped_state(
        &self,
        room: &RoomRow,
        member_nid: i64,
        reader: &UserId,
    ) -> Result<Vec<Value>> {
        let member = self.store.event_by_nid(member_nid).await?;
        if member
            .as_ref()
            .is_some_and(|row| row.status == EventStatus::Outlier)
        {
            // A room this server is not in (an invite from another server): no state here,
            // only what the inviting server sent with the invite, stored with it.
            let shown = self
                .store
                .invite_room_state(room.room_nid, reader.as_str(), member_nid)
                .await?;
            let shown = shown
                .and_then(|json| serde_json::from_str::<Vec<Value>>(&json).ok())
                .unwrap_or_default();
            // Through the projection like every event a client reads (account-key rooms:
            // names for verified keys, the reader's own member event always).
            let version = version_of(room)?;
            return Ok(shown
                .into_iter()
                .filter_map(|event| self.project_value(version, event, Some(reader)))
                .collect());
        }
        let state = self.store.current_state(room.room_nid, None).await?;
        Ok(state
            .iter()
            .filter(|row| super::invites::STRIPPED_STATE_TYPES.contains(&row.event_type.as_str()))
            .chain(member.as_ref())
            .filter_map(|row| {
                if row.event_type == "m.room.create" && row.state_key.as_deref() == Some("") {
                    return self.client_event(room, row, reader);
                }
                self.stripped_event(room, &row.json, Some(reader), false)
            })
            .collect())
    }

    /// A state event in the stripped form invites, knocks and the space hierarchy show (`type`,
    /// `state_key`, `content`, `sender`, and `origin_server_ts` with `with_ts`), from its stored
    /// JSON, through the room version's client projection like every event a client reads.
    /// `reader` is `None` for an anonymous reader.
    pub(crate) fn stripped_event(
        &self,
        room: &RoomRow,
        pdu_json: &str,
        reader: Option<&UserId>,
        with_ts: bool,
    ) -> Option<Value> {
        let version = version_of(room).ok()?;
        let pdu = serde_json::from_str::<Value>(pdu_json).ok()?;
        let mut stripped = json!({"type": pdu["type"], "state_key": pdu["state_key"],
                                  "content": pdu["content"], "sender": pdu["sender"]});
        if with_ts {
            stripped["origin_server_ts"] = pdu["origin_server_ts"].clone();
        }
        self.project_value(version, stripped, reader)
    }

    /// The room version's client projection of one client-format (or stripped) event for
    /// `reader` (`None`: anonymous), with this server's key states as the lookup. In
    /// account-key rooms the reader is named by its key-form id, as the room's state names it.
    pub(super) fn project_value(
        &self,
        version: &RoomVersion,
        event: Value,
        reader: Option<&UserId>,
    ) -> Option<Value> {
        let reader_id = match reader {
            Some(reader) if version.uses_account_keys() => self
                .key_form_of(reader)
                .unwrap_or_else(|| reader.to_string()),
            Some(reader) => reader.to_string(),
            None => String::new(),
        };
        project_for_client(version, event, &reader_id, |id| {
            self.account_keys.lookup(id)
        })
    }

    /// A member's id as clients see it outside events (a summary's heroes): in account-key
    /// rooms a verified key by its account name and a hidden one not at all (see
    /// `projection::visible_user_id`); elsewhere the id itself.
    pub(crate) fn client_user_id(&self, room: &RoomRow, id: &str) -> Option<String> {
        match version_of(room) {
            Ok(version) if version.uses_account_keys() => {
                visible_user_id(id, |key| self.account_keys.lookup(key))
            }
            _ => Some(id.to_owned()),
        }
    }
}

//! What other servers read of a room (server-server API): one event (`/event`), the state
//! before an event with its auth chain (`/state`, `/state_ids`), an event's auth chain
//! (`/event_auth`), and the history before given events (`/get_missing_events`, `/backfill`).
//! The rules every one of these reads answers by live here, once:
//!
//! - The room must be known, and so must the event a read is about (404 `M_NOT_FOUND`). An
//!   event this server rejected is never served; a soft-failed one is (the spec's note on soft
//!   failure).
//! - The room's server ACL must let the asking server in (403 `M_FORBIDDEN`,
//!   [`Rooms::server_allowed`]).
//! - The asking server must be in the room: one of its users joined in the room's current
//!   state or, for a read about one event, in the state at that event (403). A server that is
//!   not may still read events whose history visibility lets anyone see them (`/event`,
//!   `/backfill` and `/get_missing_events` of `world_readable` history), and nothing else.
//! - Each event served must be one the asking server may see by the room's history
//!   visibility at it. One it may not is served redacted to a server in the room, so that the
//!   graph it fetched stays whole and its signatures checkable (what Synapse does), and is
//!   withheld from a server that is not.
//!
//! History visibility for a server is the client-server API's rule with "the user" read as
//! "any user of that server": at `world_readable` anyone sees; at `shared`, a server in the
//! room (now, or at the event); at `invited`, a server with a user invited or joined at the
//! event; at `joined`, a server with a user joined at the event. As the spec says for users,
//! an `m.room.history_visibility` event counts the more open of the settings before and after
//! it, and a server always sees its own users' membership events. The state "at" an event is
//! the state after it, as for clients (`visibility`).
//!
//! Events go out as stored (the PDU with its signatures; the redacted form once redacted)
//! without the `unsigned` fields this server keeps for its own clients.

use std::collections::{HashMap, HashSet};

use myelin_room_version::{CanonicalJsonObject, CanonicalJsonValue, RoomVersion, canonical};
use myelin_store::{EventRow, EventStatus, RoomRow};
use ruma::ServerName;
use serde_json::{Value, value::RawValue};

use super::{Rooms, pdu_of, version_of};
use crate::{Error, Result};

/// The most events one `/get_missing_events` answers with, whatever it asks (as Synapse).
pub const MISSING_EVENTS_MAX: u64 = 20;
/// The most events one `/backfill` answers with, whatever it asks.
pub const BACKFILL_MAX: u64 = 100;

/// The most events one `/get_missing_events` walk visits (the events it returns, and the
/// rejected ones it passes through): what bounds its work.
const MISSING_EVENTS_VISITS: usize = 200;

/// Membership keys per read of older states (two parameters each).
const MEMBERS_PER_READ: usize = 200;

/// `unsigned` fields this server adds for its own clients: never part of a PDU it serves.
const CLIENT_UNSIGNED: &[&str] = &[
    "age",
    "m.relations",
    "membership",
    "prev_content",
    "prev_sender",
    "redacted_because",
    "sender_account",
    "transaction_id",
];

/// The state before an event as `/state` serves it.
#[derive(Debug)]
pub struct ServedState {
    /// The state events.
    pub pdus: Vec<Box<RawValue>>,
    /// Their auth chain.
    pub auth_chain: Vec<Box<RawValue>>,
}

/// The state before an event as `/state_ids` serves it.
#[derive(Debug)]
pub struct ServedStateIds {
    pub pdu_ids: Vec<String>,
    pub auth_chain_ids: Vec<String>,
}

/// What `/get_missing_events` asks.
#[derive(Debug, Clone, Default)]
pub struct MissingEventsQuery {
    /// Events the asker has: neither returned nor walked past.
    pub earliest_events: Vec<String>,
    /// Events whose prev events the asker lacks: the walk starts from them (they are not
    /// returned themselves).
    pub latest_events: Vec<String>,
    /// At most this many (capped at [`MISSING_EVENTS_MAX`]).
    pub limit: u64,
    /// Events shallower than this are neither returned nor walked past.
    pub min_depth: u64,
}

/// History visibility settings, most open first.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
enum HistoryVisibility {
    WorldReadable,
    Shared,
    Invited,
    Joined,
}

impl HistoryVisibility {
    /// The setting an event's content gives; missing or not understood is `shared` (spec).
    fn of(content: &Value) -> Self {
        match content["history_visibility"].as_str() {
            Some("world_readable") => Self::WorldReadable,
            Some("invited") => Self::Invited,
            Some("joined") => Self::Joined,
            _ => Self::Shared,
        }
    }
}

/// The asking server, as a room sees it.
#[derive(Debug)]
struct Asker<'a> {
    server: &'a ServerName,
    /// Its users' memberships in the room's current state: `(user id, membership)`.
    members: Vec<(String, String)>,
}

impl Asker<'_> {
    /// Whether one of its users is joined now.
    fn joined_now(&self) -> bool {
        self.members.iter().any(|(_, m)| m == "join")
    }

    fn is_own_user(&self, user_id: &str) -> bool {
        user_id
            .split_once(':')
            .is_some_and(|(_, server)| server == self.server.as_str())
    }
}

/// Part of the room's history (what walks back through it pass): neither an outlier nor
/// rejected.
fn in_history(row: &EventRow) -> bool {
    matches!(row.status, EventStatus::Normal | EventStatus::SoftFailed)
}

fn event_not_found() -> Error {
    Error::NotFound("Event not found".to_owned())
}

fn not_in_room() -> Error {
    Error::Forbidden("Your server is not in this room".to_owned())
}

impl Rooms {
    /// `GET /_matrix/federation/v1/event/{eventId}`: the event as `origin` may have it.
    pub async fn event_for_server(
        &self,
        origin: &ServerName,
        event_id: &str,
    ) -> Result<Box<RawValue>> {
        let row = self
            .store
            .event(event_id)
            .await?
            .filter(|row| !matches!(row.status, EventStatus::Rejected(_)))
            .ok_or_else(event_not_found)?;
        let room = self
            .store
            .room_by_nid(row.room_nid)
            .await?
            .ok_or_else(event_not_found)?;
        let asker = self.asker(&room, origin).await?;
        let version = version_of(&room)?;
        let sights = self
            .server_sights(&asker, std::slice::from_ref(&row))
            .await?;
        serve(&asker, version, vec![row], &sights)?
            .pop()
            .ok_or_else(not_in_room)
    }

    /// `GET /_matrix/federation/v1/state/{roomId}?event_id=`: the state before the event
    /// ("prior to considering any state changes induced by the requested event") and its auth
    /// chain.
    pub async fn state_for_server(
        &self,
        origin: &ServerName,
        room_id: &str,
        event_id: &str,
    ) -> Result<ServedState> {
        let (room, row) = self.door_at_event(origin, room_id, event_id).await?;
        self.state_before_served(&room, &row).await
    }

    /// The state before event `row` of `room` with its auth chain, as stored: what `/state`
    /// answers past its doors, and what the resident answers `send_join` with.
    pub(super) async fn state_before_served(
        &self,
        room: &RoomRow,
        row: &EventRow,
    ) -> Result<ServedState> {
        let version = version_of(room)?;
        let Some(before) = self.state_before_for_server(row).await? else {
            // A room's first event: nothing before it.
            return Ok(ServedState {
                pdus: Vec::new(),
                auth_chain: Vec::new(),
            });
        };
        let state = self.store.state_at_group(before).await?;
        let chain: Vec<i64> = self
            .store
            .auth_chain(Some(before), &[])
            .await?
            .into_iter()
            .map(|(nid, _)| nid)
            .collect();
        let chain = self.store.events_by_nids(&chain).await?;
        Ok(ServedState {
            pdus: as_stored(version, state)?,
            auth_chain: as_stored(version, chain)?,
        })
    }

    /// `GET /_matrix/federation/v1/state_ids/{roomId}?event_id=`: [`Rooms::state_for_server`]
    /// as event ids.
    pub async fn state_ids_for_server(
        &self,
        origin: &ServerName,
        room_id: &str,
        event_id: &str,
    ) -> Result<ServedStateIds> {
        let (_, row) = self.door_at_event(origin, room_id, event_id).await?;
        let Some(before) = self.state_before_for_server(&row).await? else {
            return Ok(ServedStateIds {
                pdu_ids: Vec::new(),
                auth_chain_ids: Vec::new(),
            });
        };
        let nids: Vec<i64> = self
            .store
            .state_ids_at_group(before)
            .await?
            .event_nids()
            .collect();
        let mut pdu_ids: Vec<String> = self
            .store
            .event_ids_by_nids(&nids)
            .await?
            .into_values()
            .collect();
        pdu_ids.sort_unstable();
        let mut auth_chain_ids: Vec<String> = self
            .store
            .auth_chain(Some(before), &[])
            .await?
            .into_iter()
            .map(|(_, id)| id)
            .collect();
        auth_chain_ids.sort_unstable();
        Ok(ServedStateIds {
            pdu_ids,
            auth_chain_ids,
        })
    }

    /// `GET /_matrix/federation/v1/event_auth/{roomId}/{eventId}`: every event the event's
    /// `auth_events` reach, recursively (one statement over the auth edges,
    /// `Store::auth_chain`), oldest first.
    pub async fn auth_chain_for_server(
        &self,
        origin: &ServerName,
        room_id: &str,
        event_id: &str,
    ) -> Result<Vec<Box<RawValue>>> {
        let (room, row) = self.door_at_event(origin, room_id, event_id).await?;
        let version = version_of(&room)?;
        let chain: Vec<i64> = self
            .store
            .auth_chain(None, &[row.event_nid])
            .await?
            .into_iter()
            .map(|(nid, _)| nid)
            .collect();
        let chain = self.store.events_by_nids(&chain).await?;
        as_stored(version, chain)
    }

    /// `POST /_matrix/federation/v1/get_missing_events/{roomId}`: a breadth-first walk back
    /// through `prev_events` from `latest_events`, skipping `earliest_events` and events
    /// shallower than `min_depth` (and not walking past them), through the room's events (never
    /// outliers; rejected ones passed through but not returned), until `limit` (at most
    /// [`MISSING_EVENTS_MAX`]) or [`MISSING_EVENTS_VISITS`] visits: each step of the walk is
    /// one read and visits at least one event or ends it. Oldest first.
    pub async fn missing_events_for_server(
        &self,
        origin: &ServerName,
        room_id: &str,
        query: &MissingEventsQuery,
    ) -> Result<Vec<Box<RawValue>>> {
        let room = self.room(room_id).await?;
        let asker = self.asker(&room, origin).await?;
        let version = version_of(&room)?;
        let latest = self
            .events_of_room(&room, &query.latest_events, |row| {
                !matches!(row.status, EventStatus::Rejected(_))
            })
            .await?;
        self.require_sight_of_starts(&asker, &latest).await?;
        let limit = usize::try_from(query.limit.min(MISSING_EVENTS_MAX)).unwrap_or(0);
        let min_depth = i64::try_from(query.min_depth).unwrap_or(i64::MAX);
        let mut seen: HashSet<String> = query
            .earliest_events
            .iter()
            .cloned()
            .chain(latest.iter().map(|row| row.event_id.clone()))
            .collect();
        let mut front: Vec<i64> = latest.iter().map(|row| row.event_nid).collect();
        let mut found: Vec<EventRow> = Vec::new();
        let mut visits = 0;
        while !front.is_empty() && found.len() < limit && visits < MISSING_EVENTS_VISITS {
            let mut step = self.store.prev_events(&front).await?;
            // Nearest (deepest) first, so that a step cut short by the limit keeps those.
            step.sort_by_key(|row| std::cmp::Reverse((row.depth, row.stream_ordering)));
            front = Vec::new();
            for row in step {
                if found.len() == limit || visits == MISSING_EVENTS_VISITS {
                    break;
                }
                if row.room_nid != room.room_nid
                    || row.status == EventStatus::Outlier
                    || row.depth < min_depth
                    || !seen.insert(row.event_id.clone())
                {
                    continue;
                }
                visits += 1;
                front.push(row.event_nid);
                if in_history(&row) {
                    found.push(row);
                }
            }
        }
        found.sort_by_key(|row| (row.depth, row.stream_ordering));
        let sights = self.server_sights(&asker, &found).await?;
        serve(&asker, version, found, &sights)
    }

    /// `GET /_matrix/federation/v1/backfill/{roomId}?v=&limit=`: the events `from` (those of
    /// the room's history) and the events before them through `prev_events`, the `limit` (at
    /// most [`BACKFILL_MAX`]) deepest, deepest first.
    ///
    /// The walk is one statement (`Store::history_before`), bounded by depth: the deepest
    /// starting event, of depth `d`, has an ancestor at each depth below it (an event is one
    /// deeper than its deepest prev event), so the `limit` deepest events all have depths
    /// above `d - limit`, and nothing shallower needs visiting.
    pub async fn backfill_for_server(
        &self,
        origin: &ServerName,
        room_id: &str,
        from: &[String],
        limit: u64,
    ) -> Result<Vec<Box<RawValue>>> {
        let room = self.room(room_id).await?;
        let asker = self.asker(&room, origin).await?;
        let version = version_of(&room)?;
        let starts = self.events_of_room(&room, from, in_history).await?;
        self.require_sight_of_starts(&asker, &starts).await?;
        let limit = i64::try_from(limit.min(BACKFILL_MAX)).unwrap_or(0);
        let Some(deepest) = starts.iter().map(|row| row.depth).max() else {
            return Ok(Vec::new());
        };
        let nids: Vec<i64> = starts.iter().map(|row| row.event_nid).collect();
        let floor = deepest.saturating_sub(limit.saturating_sub(1));
        let rows = self
            .store
            .history_before(room.room_nid, &nids, floor, limit)
            .await?;
        let sights = self.server_sights(&asker, &rows).await?;
        serve(&asker, version, rows, &sights)
    }

    /// The server as room `room` sees it, once its ACL lets it in (else 403).
    async fn asker<'a>(&self, room: &RoomRow, server: &'a ServerName) -> Result<Asker<'a>> {
        if !self.server_allowed(&room.room_id, server).await? {
            return Err(Error::Forbidden(
                "Your server is denied by the room's server ACL".to_owned(),
            ));
        }
        let members = self
            .store
            .server_memberships(room.room_nid, server.as_str())
            .await?;
        Ok(Asker { server, members })
    }

    /// The doors of a read about one event (`/state`, `/state_ids`, `/event_auth`): the room
    /// known, its ACL, the asking server in the room now or at the event, and the event in the
    /// room (a server not in the room learns nothing of which events exist).
    async fn door_at_event(
        &self,
        origin: &ServerName,
        room_id: &str,
        event_id: &str,
    ) -> Result<(RoomRow, EventRow)> {
        let room = self.room(room_id).await?;
        let asker = self.asker(&room, origin).await?;
        let row = self.store.event(event_id).await?.filter(|row| {
            row.room_nid == room.room_nid && !matches!(row.status, EventStatus::Rejected(_))
        });
        if asker.joined_now() {
            return Ok((room, row.ok_or_else(event_not_found)?));
        }
        let Some(row) = row else {
            return Err(not_in_room());
        };
        let Some(group) = row.state_group else {
            return Err(not_in_room());
        };
        let then = self.asker_memberships_at(&asker, &[group]).await?;
        if !then
            .get(&group)
            .is_some_and(|memberships| memberships.iter().any(|m| m == "join"))
        {
            return Err(not_in_room());
        }
        Ok((room, row))
    }

    /// The state before an event of the room's history (`None`: the room's first event); an
    /// outlier has no place in the room's state to serve (404).
    async fn state_before_for_server(&self, row: &EventRow) -> Result<Option<i64>> {
        if !in_history(row) {
            return Err(Error::NotFound(format!(
                "This server has no state at event {}",
                row.event_id
            )));
        }
        Ok(self.store.state_group_before(row.event_nid).await?)
    }

    /// The stored events of room `room` among `ids` that pass `keep`, each once.
    async fn events_of_room(
        &self,
        room: &RoomRow,
        ids: &[String],
        keep: impl Fn(&EventRow) -> bool,
    ) -> Result<Vec<EventRow>> {
        let mut ids: Vec<&str> = ids.iter().map(String::as_str).collect();
        ids.sort_unstable();
        ids.dedup();
        Ok(self
            .store
            .events_by_ids(&ids)
            .await?
            .into_iter()
            .filter(|row| row.room_nid == room.room_nid && keep(row))
            .collect())
    }

    /// A walk through history for a server not in the room starts only from events it may
    /// see (`world_readable` ones): else 403, as for any read of a room it is not in.
    async fn require_sight_of_starts(&self, asker: &Asker<'_>, starts: &[EventRow]) -> Result<()> {
        if asker.joined_now() {
            return Ok(());
        }
        let sights = self.server_sights(asker, starts).await?;
        if starts.is_empty() || sights.contains(&false) {
            return Err(not_in_room());
        }
        Ok(())
    }

    /// Which of `rows` (events of one room) the asking server may see by history visibility
    /// (the rule in the module docs): two reads for the settings at the rows, and for the rows
    /// whose setting depends on membership, two more for the asker's users' memberships there.
    async fn server_sights(&self, asker: &Asker<'_>, rows: &[EventRow]) -> Result<Vec<bool>> {
        let mut groups: Vec<i64> = rows.iter().filter_map(|row| row.state_group).collect();
        groups.sort_unstable();
        groups.dedup();
        let settings = self.history_visibility_at(&groups).await?;
        let effective: Vec<Option<HistoryVisibility>> = rows
            .iter()
            .map(|row| {
                let group = row.state_group?;
                let after = settings
                    .get(&group)
                    .copied()
                    .unwrap_or(HistoryVisibility::Shared);
                if row.event_type != "m.room.history_visibility" {
                    return Some(after);
                }
                // The setting it replaced (none: the default).
                let before = row
                    .prev_json
                    .as_deref()
                    .and_then(|json| serde_json::from_str::<Value>(json).ok())
                    .map_or(HistoryVisibility::Shared, |prev| {
                        HistoryVisibility::of(&prev["content"])
                    });
                Some(after.min(before))
            })
            .collect();
        let needs_members = |setting: HistoryVisibility| match setting {
            HistoryVisibility::WorldReadable => false,
            HistoryVisibility::Shared => !asker.joined_now(),
            HistoryVisibility::Invited | HistoryVisibility::Joined => true,
        };
        let mut member_groups: Vec<i64> = rows
            .iter()
            .zip(&effective)
            .filter(|(_, setting)| setting.is_some_and(needs_members))
            .filter_map(|(row, _)| row.state_group)
            .collect();
        member_groups.sort_unstable();
        member_groups.dedup();
        let memberships = self.asker_memberships_at(asker, &member_groups).await?;
        let had = |row: &EventRow, wanted: &[&str]| {
            row.state_group
                .and_then(|group| memberships.get(&group))
                .is_some_and(|ms| ms.iter().any(|m| wanted.contains(&m.as_str())))
        };
        Ok(rows
            .iter()
            .zip(effective)
            .map(|(row, setting)| {
                let own_membership = row.event_type == "m.room.member"
                    && row
                        .state_key
                        .as_deref()
                        .is_some_and(|key| asker.is_own_user(key));
                if own_membership {
                    return true;
                }
                match setting {
                    // An outlier has no state to judge by: a server in the room has it in auth
                    // chains anyway, one that is not gets nothing.
                    None => asker.joined_now(),
                    Some(HistoryVisibility::WorldReadable) => true,
                    Some(HistoryVisibility::Shared) => asker.joined_now() || had(row, &["join"]),
                    Some(HistoryVisibility::Invited) => had(row, &["join", "invite"]),
                    Some(HistoryVisibility::Joined) => had(row, &["join"]),
                }
            })
            .collect())
    }

    /// The history visibility setting in the state of each group (missing: `shared`).
    async fn history_visibility_at(
        &self,
        groups: &[i64],
    ) -> Result<HashMap<i64, HistoryVisibility>> {
        if groups.is_empty() {
            return Ok(HashMap::new());
        }
        let at = self
            .store
            .state_entries_at_groups(groups, &[("m.room.history_visibility", "")])
            .await?;
        let settings = self.contents(at.values().flat_map(|e| e.values())).await?;
        Ok(at
            .into_iter()
            .filter_map(|(group, entries)| {
                let nid = entries.values().next()?;
                Some((group, HistoryVisibility::of(settings.get(nid)?)))
            })
            .collect())
    }

    /// The memberships of the asker's users in the state of each group, by group (groups
    /// where it has none are left out). Its users are those with a membership in the current
    /// state: a membership key, once in a room's state, stays in every later state.
    async fn asker_memberships_at(
        &self,
        asker: &Asker<'_>,
        groups: &[i64],
    ) -> Result<HashMap<i64, Vec<String>>> {
        let mut at: HashMap<i64, Vec<i64>> = HashMap::new();
        if groups.is_empty() {
            return Ok(HashMap::new());
        }
        for users in asker.members.chunks(MEMBERS_PER_READ) {
            let keys: Vec<(&str, &str)> = users
                .iter()
                .map(|(user, _)| ("m.room.member", user.as_str()))
                .collect();
            for (group, entries) in self.store.state_entries_at_groups(groups, &keys).await? {
                at.entry(group).or_default().extend(entries.into_values());
            }
        }
        let contents = self.contents(at.values().flatten()).await?;
        Ok(at
            .into_iter()
            .map(|(group, nids)| {
                let memberships = nids
                    .iter()
                    .filter_map(|nid| contents.get(nid)?["membership"].as_str())
                    .map(str::to_owned)
                    .collect();
                (group, memberships)
            })
            .collect())
    }

    /// The `content` of each stored event among `nids`, by nid.
    async fn contents(&self, nids: impl Iterator<Item = &i64>) -> Result<HashMap<i64, Value>> {
        let mut nids: Vec<i64> = nids.copied().collect();
        nids.sort_unstable();
        nids.dedup();
        if nids.is_empty() {
            return Ok(HashMap::new());
        }
        Ok(self
            .store
            .events_by_nids(&nids)
            .await?
            .into_iter()
            .map(|row| {
                let content = serde_json::from_str::<Value>(&row.json)
                    .map(|mut json| json["content"].take())
                    .unwrap_or(Value::Null);
                (row.event_nid, content)
            })
            .collect())
    }
}

/// `rows` as the asking server gets them, given what it may see (`sights`, in order): as
/// stored, redacted (a server in the room), or left out (one that is not).
fn serve(
    asker: &Asker<'_>,
    version: &RoomVersion,
    rows: Vec<EventRow>,
    sights: &[bool],
) -> Result<Vec<Box<RawValue>>> {
    let redact_unseen = asker.joined_now();
    rows.iter()
        .zip(sights)
        .filter(|(_, sees)| **sees || redact_unseen)
        .map(|(row, sees)| federation_pdu(row, version, !sees))
        .collect()
}

/// Every row as stored, oldest first (in the order the room stored them).
fn as_stored(version: &RoomVersion, mut rows: Vec<EventRow>) -> Result<Vec<Box<RawValue>>> {
    rows.sort_by_key(|row| (row.depth, row.stream_ordering));
    rows.iter()
        .map(|row| federation_pdu(row, version, false))
        .collect()
}

/// A stored event as a PDU for another server: the stored JSON, redacted if `redact`, without
/// [`CLIENT_UNSIGNED`] fields.
fn federation_pdu(row: &EventRow, version: &RoomVersion, redact: bool) -> Result<Box<RawValue>> {
    let mut pdu = pdu_of(row, version)?;
    if redact {
        pdu = pdu.redacted(version).map_err(|e| {
            Error::Internal(format!("redacting stored event {}: {e}", row.event_id))
        })?;
    }
    let mut json = pdu.into_json();
    strip_client_unsigned(&mut json);
    RawValue::from_string(canonical::to_canonical_string(&json))
        .map_err(|e| Error::Internal(format!("stored event {}: {e}", row.event_id)))
}

/// Removes [`CLIENT_UNSIGNED`] fields, and `unsigned` itself once empty.
fn strip_client_unsigned(json: &mut CanonicalJsonObject) {
    let Some(CanonicalJsonValue::Object(unsigned)) = json.get_mut("unsigned") else {
        return;
    };
    for field in CLIENT_UNSIGNED {
        unsigned.remove(*field);
    }
    if unsigned.is_empty() {
        json.remove("unsigned");
    }
}

#[cfg(test)]
mod tests {
    use serde_json::json;

    use super::*;

    #[test]
    fn unknown_or_missing_settings_read_as_shared() {
        assert_eq!(HistoryVisibility::of(&json!({})), HistoryVisibility::Shared);
        assert_eq!(
            HistoryVisibility::of(&json!({"history_visibility": "everyone"})),
            HistoryVisibility::Shared
        );
        assert_eq!(
            HistoryVisibility::of(&json!({"history_visibility": "joined"})),
            HistoryVisibility::Joined
        );
        assert!(HistoryVisibility::WorldReadable < HistoryVisibility::Joined);
    }

    #[test]
    fn client_fields_leave_unsigned_and_the_rest_stays() {
        let mut json = canonical::value_to_object(json!({
            "type": "m.room.message",
            "unsigned": {"transaction_id": "t1", "age": 5, "custom": true},
        }))
        .unwrap();
        strip_client_unsigned(&mut json);
        assert_eq!(
            canonical::to_canonical_string(&json),
            r#"{"type":"m.room.message","unsigned":{"custom":true}}"#
        );
        let mut json = canonical::value_to_object(json!({
            "type": "m.room.message",
            "unsigned": {"transaction_id": "t1"},
        }))
        .unwrap();
        strip_client_unsigned(&mut json);
        assert_eq!(
            canonical::to_canonical_string(&json),
            r#"{"type":"m.room.message"}"#
        );
    }
}

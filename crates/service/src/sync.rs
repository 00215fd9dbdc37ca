//! `/sync` (v2): what changed for a user since a token, room by room, built from the stream
//! positions of events and account data; initial syncs, incremental syncs, long-polling on the
//! rooms notifier, timeline limits with `limited`/`prev_batch`, `state` or `state_after`, lazy
//! loaded members, invites, knocks and left rooms.
//!
//! Typing, receipts, presence and to-device messages come from [`crate::ephemeral`];
//! notification counts from the push actions stored with each event.

use std::{collections::HashSet, time::Duration};

use myelin_store::{EventRow, MembershipRow, RoomRow};
use ruma::UserId;
use serde_json::{Map, Value, json};

use crate::{
    Error, Result, Services,
    accounts::AuthedUser,
    rooms::{EventFilter, read::token as events_token},
};

/// A position in every stream sync follows.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct SyncToken {
    pub events: i64,
    pub account_data: i64,
    pub receipts: i64,
    pub to_device: i64,
    pub presence: i64,
    /// Typing lives in memory: its serial restarts with the process.
    pub typing: i64,
}

impl SyncToken {
    /// `s<events>_<account data>_<receipts>_<to-device>_<presence>_<typing>`.
    pub fn encode(&self) -> String {
        format!(
            "s{}_{}_{}_{}_{}_{}",
            self.events,
            self.account_data,
            self.receipts,
            self.to_device,
            self.presence,
            self.typing
        )
    }

    /// Parses a token this server issued. Anything else is `M_INVALID_PARAM`, never a silent
    /// restart from the beginning.
    pub fn parse(token: &str) -> Result<Self> {
        let bad = || Error::InvalidParam(format!("Invalid since token {token:?}"));
        let rest = token.strip_prefix('s').ok_or_else(bad)?;
        let parts: Vec<i64> = rest
            .split('_')
            .map(|p| p.parse::<i64>().ok().filter(|n| *n >= 0))
            .collect::<Option<_>>()
            .ok_or_else(bad)?;
        let [events, account_data, receipts, to_device, presence, typing] = parts[..] else {
            return Err(bad());
        };
        Ok(SyncToken {
            events,
            account_data,
            receipts,
            to_device,
            presence,
            typing,
        })
    }
}

/// The parts of a filter sync honours.
#[derive(Debug, Clone)]
pub struct SyncFilter {
    pub timeline_limit: usize,
    /// The timeline's event filter.
    pub timeline: EventFilter,
    pub rooms: Option<Vec<String>>,
    pub not_rooms: Vec<String>,
    pub include_leave: bool,
    pub lazy_load_members: bool,
}

impl Default for SyncFilter {
    fn default() -> Self {
        SyncFilter {
            timeline_limit: 10,
            timeline: EventFilter::default(),
            rooms: None,
            not_rooms: Vec::new(),
            include_leave: false,
            lazy_load_members: false,
        }
    }
}

impl SyncFilter {
    fn wants_room(&self, room_id: &str) -> bool {
        self.rooms
            .as_ref()
            .is_none_or(|r| r.iter().any(|x| x == room_id))
            && !self.not_rooms.iter().any(|x| x == room_id)
    }

    fn wants_event(&self, event: &Value) -> bool {
        self.timeline.wants(event)
    }
}

/// A sync request.
#[derive(Debug, Clone, Default)]
pub struct SyncRequest {
    pub since: Option<String>,
    /// `set_presence`: `online` (the default), `unavailable`, or `offline` (leave it alone).
    pub set_presence: Option<String>,
    pub full_state: bool,
    pub timeout: Duration,
    pub use_state_after: bool,
    pub filter: SyncFilter,
}

/// The longest a client may make a sync wait.
const MAX_TIMEOUT: Duration = Duration::from_secs(120);

impl Services {
    /// Answers a `/sync`. Waits up to the timeout when an incremental sync has nothing to say.
    pub async fn sync(&self, device: &AuthedUser, request: &SyncRequest) -> Result<Value> {
        let user = device.user_id.as_ref();
        let mut since = request.since.as_deref().map(SyncToken::parse).transpose()?;
        match request.set_presence.as_deref().unwrap_or("online") {
            "offline" => {}
            state => self.ephemeral.presence_on_sync(user, state).await?,
        }
        let deadline = tokio::time::Instant::now() + request.timeout.min(MAX_TIMEOUT);
        let mut changes = self.rooms.notify.subscribe();
        loop {
            // Mark the notifier seen before reading, so a write in between wakes the wait below.
            changes.borrow_and_update();
            let now = SyncToken {
                events: self.store.events_stream_position().await?,
                account_data: self.user_data.account_data_position().await?,
                receipts: self.store.stream_position("receipts").await?,
                to_device: self.store.stream_position("to_device").await?,
                presence: self.store.stream_position("presence").await?,
                typing: self.ephemeral.typing_position(),
            };
            if let Some(since) = since.as_mut()
                && since.typing > now.typing
            {
                // The process restarted: typing restarted with it.
                since.typing = 0;
            }
            if let Some(since) = since
                && (since.events > now.events
                    || since.account_data > now.account_data
                    || since.receipts > now.receipts
                    || since.to_device > now.to_device
                    || since.presence > now.presence)
            {
                return Err(Error::InvalidParam(
                    "The since token is from the future: it was not issued by this server's current database".to_owned(),
                ));
            }
            let (body, empty) = self.sync_once(device, request, since, now).await?;
            let waiting = since.is_some() && empty && !request.full_state;
            if !waiting || tokio::time::Instant::now() >= deadline {
                return Ok(body);
            }
            // Woken by any persisted event or account data write; re-checked from the top.
            if tokio::time::timeout_at(deadline, changes.changed())
                .await
                .is_err()
            {
                return Ok(body);
            }
        }
    }

    async fn sync_once(
        &self,
        device: &AuthedUser,
        request: &SyncRequest,
        since: Option<SyncToken>,
        mut now: SyncToken,
    ) -> Result<(Value, bool)> {
        let user: &UserId = device.user_id.as_ref();
        let filter = &request.filter;
        let account_data = self
            .user_data
            .account_data_since(user, since.map_or(0, |s| s.account_data))
            .await?;
        let mut room_account_data: std::collections::HashMap<String, Vec<Value>> =
            Default::default();
        let mut global = Vec::new();
        for row in account_data {
            // The default push rules come at position 0 for initial syncs only.
            if since.is_some_and(|s| row.stream_position <= s.account_data) {
                continue;
            }
            let content: Value = serde_json::from_str(&row.content).unwrap_or(Value::Null);
            let event = json!({"type": row.data_type, "content": content});
            match row.room_id {
                Some(room_id) => room_account_data.entry(room_id).or_default().push(event),
                None => global.push(event),
            }
        }

        let mut join = Map::new();
        let mut invite = Map::new();
        let mut leave = Map::new();
        let mut knock = Map::new();
        for membership in self.store.user_memberships(user.as_str()).await? {
            let room_id = membership.room.room_id.clone();
            if !filter.wants_room(&room_id) || membership.forgotten {
                continue;
            }
            let changed_since = since.is_none_or(|s| membership.stream_ordering > s.events);
            let room_data = room_account_data.remove(&room_id).unwrap_or_default();
            match membership.membership.as_str() {
                "join" => {
                    if let Some(room) = self
                        .joined_room(device, request, since, now, &membership, room_data)
                        .await?
                    {
                        join.insert(room_id, room);
                    }
                }
                "invite" if changed_since || request.full_state => {
                    invite.insert(room_id, json!({"invite_state": {"events": self.stripped_state(&membership).await?}}));
                }
                "knock" if changed_since || request.full_state => {
                    knock.insert(
                        room_id,
                        json!({"knock_state": {"events": self.stripped_state(&membership).await?}}),
                    );
                }
                "leave" | "ban" if (since.is_some() && changed_since) || filter.include_leave => {
                    if let Some(room) = self
                        .left_room(device, request, since, &membership, room_data)
                        .await?
                    {
                        leave.insert(room_id, room);
                    }
                }
                _ => {}
            }
        }
        let (to_device, to_device_next) = self
            .ephemeral
            .to_device_for(device, since.map_or(0, |s| s.to_device), now.to_device)
            .await?;
        now.to_device = to_device_next;
        let presence = self
            .ephemeral
            .presence_events(user, since.map_or(0, |s| s.presence))
            .await?;
        let empty = join.is_empty()
            && invite.is_empty()
            && leave.is_empty()
            && knock.is_empty()
            && global.is_empty()
            && to_device.is_empty()
            && presence.is_empty();
        let body = json!({
            "next_batch": now.encode(),
            "rooms": {"join": join, "invite": invite, "leave": leave, "knock": knock},
            "account_data": {"events": global},
            "presence": {"events": presence},
            "to_device": {"events": to_device},
            "device_lists": {"changed": [], "left": []},
            "device_one_time_keys_count": {},
        });
        Ok((body, empty))
    }

    /// A joined room's section, or `None` when nothing changed in it since the token.
    async fn joined_room(
        &self,
        device: &AuthedUser,
        request: &SyncRequest,
        since: Option<SyncToken>,
        now: SyncToken,
        membership: &MembershipRow,
        account_data: Vec<Value>,
    ) -> Result<Option<Value>> {
        let user: &UserId = device.user_id.as_ref();
        let device_id = device.device_id.as_str();
        let room = &membership.room;
        // A room joined since the token is new to the client: it gets the whole picture.
        let fresh =
            request.full_state || since.is_none_or(|s| membership.stream_ordering > s.events);
        let from = if fresh {
            0
        } else {
            since.map_or(0, |s| s.events)
        };
        let limit = request.filter.timeline_limit.clamp(1, 1000);
        let mut rows = self
            .store
            .room_events(room.room_nid, from, now.events + 1, true, limit as i64 + 1)
            .await?;
        let limited = rows.len() > limit;
        rows.truncate(limit);
        rows.reverse();
        let mut ephemeral = Vec::new();
        if let Some(typing) = self
            .ephemeral
            .typing_event(&room.room_id, since.map(|s| s.typing))
        {
            ephemeral.push(typing);
        }
        if let Some(receipts) = self
            .ephemeral
            .receipt_event(room.room_nid, since.map_or(0, |s| s.receipts), user)
            .await?
        {
            ephemeral.push(receipts);
        }
        if !fresh && rows.is_empty() && account_data.is_empty() && ephemeral.is_empty() {
            return Ok(None);
        }
        let timeline = self
            .client_events(room, &rows, user, device_id, &request.filter)
            .await?;
        let prev_batch = events_token(rows.first().map_or(now.events + 1, |r| r.stream_ordering));

        let state_rows: Vec<EventRow> = if request.use_state_after {
            let current = self.store.current_state(room.room_nid, None).await?;
            if fresh {
                current
            } else {
                current
                    .into_iter()
                    .filter(|r| r.stream_ordering > from)
                    .collect()
            }
        } else if fresh || limited {
            let before = self.state_before(room, rows.first()).await?;
            if fresh {
                before
            } else {
                before
                    .into_iter()
                    .filter(|r| r.stream_ordering > from)
                    .collect()
            }
        } else {
            Vec::new()
        };
        let senders: HashSet<&str> = timeline
            .iter()
            .filter_map(|e| e["sender"].as_str())
            .collect();
        let state: Vec<Value> = state_rows
            .iter()
            .filter(|row| {
                !request.filter.lazy_load_members
                    || row.event_type != "m.room.member"
                    || row
                        .state_key
                        .as_deref()
                        .is_some_and(|k| k == user.as_str() || senders.contains(k))
            })
            .filter_map(|row| self.rooms.client_event(room, row, user))
            .collect();

        let unread = self
            .store
            .unread_counts(room.room_nid, user.as_str())
            .await?;
        let mut section = json!({
            "timeline": {"events": timeline, "limited": limited, "prev_batch": prev_batch},
            "account_data": {"events": account_data},
            "ephemeral": {"events": ephemeral},
            "unread_notifications": {"notification_count": unread.0, "highlight_count": unread.1},
            "summary": self.summary(room, user).await?,
        });
        section[if request.use_state_after {
            "state_after"
        } else {
            "state"
        }] = json!({"events": state});
        Ok(Some(section))
    }

    /// A left (or banned) room's section: the timeline up to the leave.
    async fn left_room(
        &self,
        device: &AuthedUser,
        request: &SyncRequest,
        since: Option<SyncToken>,
        membership: &MembershipRow,
        account_data: Vec<Value>,
    ) -> Result<Option<Value>> {
        let user: &UserId = device.user_id.as_ref();
        let device_id = device.device_id.as_str();
        let room = &membership.room;
        let from = since.map_or(0, |s| s.events);
        let limit = request.filter.timeline_limit.clamp(1, 1000);
        let mut rows = self
            .store
            .room_events(
                room.room_nid,
                from,
                membership.stream_ordering + 1,
                true,
                limit as i64 + 1,
            )
            .await?;
        let limited = rows.len() > limit;
        rows.truncate(limit);
        rows.reverse();
        let timeline = self
            .client_events(room, &rows, user, device_id, &request.filter)
            .await?;
        let prev_batch = events_token(
            rows.first()
                .map_or(membership.stream_ordering + 1, |r| r.stream_ordering),
        );
        let state = if since.is_none() || limited {
            self.state_before(room, rows.first())
                .await?
                .iter()
                .filter(|row| row.stream_ordering > from)
                .filter_map(|row| self.rooms.client_event(room, row, user))
                .collect()
        } else {
            Vec::new()
        };
        Ok(Some(json!({
            "timeline": {"events": timeline, "limited": limited, "prev_batch": prev_batch},
            "state": {"events": state},
            "account_data": {"events": account_data},
        })))
    }

    /// The visible, filtered client form of timeline rows.
    async fn client_events(
        &self,
        room: &RoomRow,
        rows: &[EventRow],
        user: &UserId,
        device: &str,
        filter: &SyncFilter,
    ) -> Result<Vec<Value>> {
        let mut out = Vec::new();
        let visible = self.rooms.visible_rows(room, rows, user).await?;
        for (row, visible) in rows.iter().zip(visible) {
            if !visible {
                continue;
            }
            if let Some(mut event) =
                self.rooms
                    .client_event_for_device(room, row, user, Some(device))
            {
                if !filter.wants_event(&event) {
                    continue;
                }
                // Sync's timeline events carry no room id (the room is the map key).
                if let Some(object) = event.as_object_mut() {
                    object.remove("room_id");
                }
                out.push(event);
            }
        }
        Ok(out)
    }

    /// The room state just before `first` (the whole current state if there is no timeline).
    async fn state_before(
        &self,
        room: &RoomRow,
        first: Option<&EventRow>,
    ) -> Result<Vec<EventRow>> {
        let Some(first) = first else {
            return Ok(self.store.current_state(room.room_nid, None).await?);
        };
        let previous = self
            .store
            .room_events(room.room_nid, 0, first.stream_ordering, true, 1)
            .await?;
        match previous.first() {
            Some(previous) => Ok(self.store.state_at_group(previous.state_group).await?),
            None => Ok(Vec::new()),
        }
    }

    /// Stripped state for invites and knocks: what a client shows before joining.
    async fn stripped_state(&self, membership: &MembershipRow) -> Result<Vec<Value>> {
        const SHOWN: &[&str] = &[
            "m.room.create",
            "m.room.join_rules",
            "m.room.name",
            "m.room.avatar",
            "m.room.canonical_alias",
            "m.room.encryption",
            "m.room.topic",
        ];
        let state = self
            .store
            .current_state(membership.room.room_nid, None)
            .await?;
        let member = self.store.event_by_nid(membership.event_nid).await?;
        Ok(state
            .iter()
            .filter(|row| SHOWN.contains(&row.event_type.as_str()))
            .chain(member.as_ref())
            .filter_map(|row| serde_json::from_str::<Value>(&row.json).ok())
            .map(|pdu| {
                json!({"type": pdu["type"], "state_key": pdu["state_key"], "content": pdu["content"], "sender": pdu["sender"]})
            })
            .collect())
    }

    /// `summary`: member counts, and heroes when the room has no name or alias.
    async fn summary(&self, room: &RoomRow, user: &UserId) -> Result<Value> {
        let state = self.store.current_state(room.room_nid, None).await?;
        let mut joined = Vec::new();
        let mut invited = Vec::new();
        let mut named = false;
        for row in &state {
            match row.event_type.as_str() {
                "m.room.name" | "m.room.canonical_alias" => named = true,
                "m.room.member" => {
                    let membership = serde_json::from_str::<Value>(&row.json)
                        .ok()
                        .and_then(|j| j["content"]["membership"].as_str().map(str::to_owned));
                    let who = row.state_key.clone().unwrap_or_default();
                    match membership.as_deref() {
                        Some("join") => joined.push(who),
                        Some("invite") => invited.push(who),
                        _ => {}
                    }
                }
                _ => {}
            }
        }
        let mut summary = json!({
            "m.joined_member_count": joined.len(),
            "m.invited_member_count": invited.len(),
        });
        if !named {
            let heroes: Vec<&String> = joined
                .iter()
                .chain(invited.iter())
                .filter(|u| *u != user.as_str())
                .take(5)
                .collect();
            summary["m.heroes"] = json!(heroes);
        }
        Ok(summary)
    }
}

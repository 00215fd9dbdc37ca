//! `/sync` (v2): what changed for a user since a token, room by room, built from the stream
//! positions of events and account data; initial syncs, incremental syncs, long-polling on the
//! rooms notifier, timeline limits with `limited`/`prev_batch` (also at a gap in a room's
//! history before another server's events), `state` or `state_after`, lazy loaded members,
//! invites, knocks and left rooms.
//!
//! Typing, receipts, presence and to-device messages come from [`crate::ephemeral`];
//! notification counts from the push actions stored with each event. Timeline events carry
//! their bundled aggregations (`unsigned.m.relations`) as on every other surface.

use std::{
    collections::{HashMap, HashSet},
    time::Duration,
};

use myelin_store::{
    EventRow, EventStatus, MembershipRow, RoomRow, StateDeltaWindow, TimelineWindow,
};
use ruma::UserId;
use serde_json::{Map, Value, json};

use crate::{
    Error, Result, Services,
    accounts::AuthedUser,
    rooms::{
        EventFilter, InviteFilter, InviteVerdict, read::token as events_token, visibility::Sight,
    },
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
    pub device_lists: i64,
}

impl SyncToken {
    /// `s<events>_<account data>_<receipts>_<to-device>_<presence>_<typing>_<device lists>`.
    pub fn encode(&self) -> String {
        format!(
            "s{}_{}_{}_{}_{}_{}_{}",
            self.events,
            self.account_data,
            self.receipts,
            self.to_device,
            self.presence,
            self.typing,
            self.device_lists
        )
    }

    /// Parses a token this server issued. Anything else is `M_INVALID_PARAM`, never a silent
    /// restart from the beginning.
    pub fn parse(token: &str) -> Result<Self> {
        let bad = || Error::InvalidParam(format!("Invalid since token {token:?}"));
        let rest = token.strip_prefix('s').ok_or_else(bad)?;
        // Digits only (`str::parse` would take a sign), within the range every stream stays
        // in, so that no arithmetic on a position can overflow; at most one part more than a
        // token has, so a long string is refused without being split up.
        let parts: Vec<i64> = rest
            .splitn(7, '_')
            .map(crate::rooms::read::parse_position)
            .collect::<Option<_>>()
            .ok_or_else(bad)?;
        // Tokens issued before device lists had a stream lack the last part: from the start.
        let (events, account_data, receipts, to_device, presence, typing, device_lists) =
            match parts[..] {
                [a, b, c, d, e, f] => (a, b, c, d, e, f, 0),
                [a, b, c, d, e, f, g] => (a, b, c, d, e, f, g),
                _ => return Err(bad()),
            };
        Ok(SyncToken {
            events,
            account_data,
            receipts,
            to_device,
            presence,
            typing,
            device_lists,
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
    /// The timeline filter's `unread_thread_notifications`: count each thread apart
    /// (`unread_thread_notifications`) and the main timeline alone in `unread_notifications`.
    pub unread_thread_notifications: bool,
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
            unread_thread_notifications: false,
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

    /// How many timeline events a room gets: the filter's `limit`, which may be 0 (clients ask
    /// for that to get state without history), at most 1000.
    fn timeline_limit(&self) -> usize {
        self.timeline_limit.min(1000)
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

/// A joined room a sync looks at, decided from the membership row and memory alone.
struct JoinedPlan {
    membership: MembershipRow,
    /// New to the client (joined since the token, or `full_state`): the whole picture.
    fresh: bool,
    /// The events stream position the timeline starts after.
    from: i64,
    typing: Option<Value>,
    account_data: Vec<Value>,
    new_events: bool,
    new_receipts: bool,
}

/// A joined room with its timeline read.
struct JoinedRoom {
    plan: JoinedPlan,
    /// Oldest first, at most the timeline limit.
    rows: Vec<EventRow>,
    limited: bool,
    ephemeral: Vec<Value>,
    /// In an incremental sync, the state events now at the keys whose current state changed
    /// since the token (see [`Store::state_changed_in`](myelin_store::Store::state_changed_in)).
    changed_state: Vec<EventRow>,
}

/// A timeline's `prev_batch`, `s<N>`: the place just before its first event, from which
/// `/messages` pages back to the events before the timeline and at which `/members?at=` lists
/// the members the timeline starts with. `end` is the place the timeline reaches (after its
/// last event), which an empty timeline gets.
///
/// A timeline that begins with the room's create event has nothing before it: paging back
/// from there finds nothing and no one is a member there. It gets `end` instead, as Synapse
/// gives an initial sync's timeline that holds the room's whole history: `/members?at=` then
/// lists the members as of this sync (what clients and Complement's
/// `TestGetRoomMembersAtPoint` ask of it), and `/messages` from it pages back through the
/// timeline once more to the create event, where the room's history ends.
fn timeline_prev_batch(rows: &[EventRow], end: i64) -> String {
    match rows.first() {
        Some(first) if !is_create_event(first) => events_token(first.stream_ordering),
        _ => events_token(end),
    }
}

fn is_create_event(row: &EventRow) -> bool {
    row.event_type == "m.room.create" && row.state_key.as_deref() == Some("")
}

/// Adds to a room's `state` (or `state_after`) rows the state events now at the keys that
/// changed since the token without a state event for that key in the timeline: a fork's
/// resolution can put an older event (or one never in this timeline) into the current state.
/// The `state` section comes before the timeline, so keys the timeline sets are left to it;
/// `state_after` comes after, so every changed key is in it (`covered` is then empty). A
/// changed key's event replaces whatever the rows held for it.
fn merge_changed_state(rows: &mut Vec<EventRow>, changed: &[EventRow], covered: &[EventRow]) {
    let key = |r: &EventRow| (r.event_type.clone(), r.state_key.clone());
    let covered: HashSet<(String, Option<String>)> = covered
        .iter()
        .filter(|r| r.state_key.is_some())
        .map(key)
        .collect();
    for row in changed {
        if covered.contains(&key(row)) {
            continue;
        }
        match rows.iter_mut().find(|r| key(r) == key(row)) {
            Some(existing) => *existing = row.clone(),
            None => rows.push(row.clone()),
        }
    }
}

/// A room's `unread_notifications` and, when the client counts threads apart,
/// `unread_thread_notifications`, from its unread counts by thread (`main` or a root's id).
fn unread_sections(
    by_thread: HashMap<String, (i64, i64)>,
    threads_apart: bool,
) -> (Value, Option<Value>) {
    let counts = |(notify, highlight): (i64, i64)| json!({"notification_count": notify, "highlight_count": highlight});
    if !threads_apart {
        let total = by_thread
            .values()
            .fold((0, 0), |(n, h), (notify, highlight)| {
                (n + notify, h + highlight)
            });
        return (counts(total), None);
    }
    let main = by_thread.get("main").copied().unwrap_or((0, 0));
    let threads: Map<String, Value> = by_thread
        .into_iter()
        .filter(|(thread, (notify, highlight))| thread != "main" && (*notify > 0 || *highlight > 0))
        .map(|(thread, count)| (thread, counts(count)))
        .collect();
    (counts(main), Some(Value::Object(threads)))
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
            let snapshot = self.store.sync_snapshot(user.as_str()).await?;
            let [
                events,
                account_data,
                receipts,
                to_device,
                presence,
                device_lists,
            ] = snapshot.positions;
            let now = SyncToken {
                events,
                account_data,
                receipts,
                to_device,
                presence,
                typing: self.ephemeral.typing_position(),
                device_lists,
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
                    || since.presence > now.presence
                    || since.device_lists > now.device_lists)
            {
                return Err(Error::InvalidParam(
                    "The since token is from the future: it was not issued by this server's current database".to_owned(),
                ));
            }
            let (body, empty) = self
                .sync_once(device, request, since, now, snapshot.memberships)
                .await?;
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
        memberships: Vec<MembershipRow>,
    ) -> Result<(Value, bool)> {
        let user: &UserId = device.user_id.as_ref();
        let filter = &request.filter;
        let account_data = match since {
            // Nobody wrote account data since the token.
            Some(s) if s.account_data >= now.account_data => Vec::new(),
            _ => {
                self.user_data
                    .account_data_since(user, since.map_or(0, |s| s.account_data))
                    .await?
            }
        };
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

        // Whether anyone's membership in the user's rooms (or the user's own) may have changed
        // since the token, from the snapshot alone: only then are memberships read for
        // device lists.
        let memberships_moved = since.is_some_and(|s| {
            memberships
                .iter()
                .any(|m| m.room_latest_event > s.events || m.stream_ordering > s.events)
        });
        let mut join = Map::new();
        let mut invite = Map::new();
        // The user's invite rules, read at the first invite.
        let mut invite_filter: Option<InviteFilter> = None;
        let mut leave = Map::new();
        let mut knock = Map::new();
        let mut joined = Vec::new();
        for membership in memberships {
            let room_id = membership.room.room_id.clone();
            let changed_since = since.is_none_or(|s| membership.stream_ordering > s.events);
            // A forgotten room is gone from the user's syncs, but for the departure itself in
            // an incremental sync from before it: the user's other devices must learn the room
            // was left, however soon it was forgotten (the spec's wording omits this; Synapse
            // and Complement agree on it).
            let departure_since_token = since.is_some() && changed_since;
            if !filter.wants_room(&room_id) || (membership.forgotten && !departure_since_token) {
                continue;
            }
            let room_data = room_account_data.remove(&room_id).unwrap_or_default();
            match membership.membership.as_str() {
                "join" => {
                    if let Some(plan) = self.joined_plan(request, since, membership, room_data) {
                        joined.push(plan);
                    }
                }
                "invite" if changed_since || request.full_state => {
                    let events = self
                        .rooms
                        .stripped_state(&membership.room, membership.event_nid, user)
                        .await?;
                    // Only an invite the user's invite rules allow is shown (an ignored
                    // inviter's; or a blocked one's, taken before the rules said so, is not).
                    let inviter = events
                        .iter()
                        .find(|e| e["type"] == "m.room.member" && e["state_key"] == user.as_str())
                        .and_then(|e| e["sender"].as_str())
                        .and_then(|sender| UserId::parse(sender).ok());
                    if let Some(inviter) = inviter {
                        let filter = match &invite_filter {
                            Some(filter) => filter,
                            None => invite_filter.insert(self.rooms.invite_filter(user).await?),
                        };
                        if filter.verdict(&inviter) != InviteVerdict::Allow {
                            continue;
                        }
                    }
                    invite.insert(room_id, json!({"invite_state": {"events": events}}));
                }
                "knock" if changed_since || request.full_state => {
                    knock.insert(
                        room_id,
                        json!({"knock_state": {"events": self.rooms.stripped_state(&membership.room, membership.event_nid, user).await?}}),
                    );
                }
                // Departures since the token; with `include_leave`, every left room in a
                // sync that starts over (initial or `full_state`), not again in each
                // incremental sync after the one that told of the departure.
                "leave" | "ban"
                    if (since.is_some() && changed_since)
                        || (filter.include_leave && (since.is_none() || request.full_state)) =>
                {
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
        // The rooms, to-device and presence are independent reads: at once.
        let presence_since = since.map_or(0, |s| s.presence);
        let (joined, (to_device, to_device_next), presence, (changed, left), otk_counts) = tokio::try_join!(
            self.joined_rooms(device, request, since, now, joined),
            self.ephemeral
                .to_device_for(device, since.map_or(0, |s| s.to_device), now.to_device),
            async {
                // Room mates met since the token (only possible if events were written).
                let new_mates_since = since.filter(|s| s.events < now.events).map(|s| s.events);
                match since {
                    // Nothing was written to the presence stream since the token, and nobody
                    // new can share a room.
                    Some(s) if s.presence >= now.presence && new_mates_since.is_none() => {
                        Ok(Vec::new())
                    }
                    _ => {
                        self.ephemeral
                            .presence_events(user, presence_since, new_mates_since)
                            .await
                    }
                }
            },
            async {
                match since {
                    None => Ok((Vec::new(), Vec::new())),
                    Some(s) => {
                        self.e2ee
                            .device_list_delta(
                                user,
                                s.events,
                                s.device_lists,
                                now.device_lists,
                                memberships_moved,
                            )
                            .await
                    }
                }
            },
            self.e2ee.one_time_key_counts(device),
        )?;
        let (one_time_key_counts, unused_fallback_key_types) = otk_counts;
        for (room_id, section) in joined {
            join.insert(room_id, section);
        }
        now.to_device = to_device_next;
        let empty = join.is_empty()
            && invite.is_empty()
            && leave.is_empty()
            && knock.is_empty()
            && global.is_empty()
            && to_device.is_empty()
            && presence.is_empty()
            && changed.is_empty()
            && left.is_empty();
        let body = json!({
            "next_batch": now.encode(),
            "rooms": {"join": join, "invite": invite, "leave": leave, "knock": knock},
            "account_data": {"events": global},
            "presence": {"events": presence},
            "to_device": {"events": to_device},
            "device_lists": {"changed": changed, "left": left},
            "device_one_time_keys_count": one_time_key_counts,
            "device_unused_fallback_key_types": unused_fallback_key_types,
        });
        Ok((body, empty))
    }

    /// What a sync must look at in a joined room, or `None` when nothing changed in it since
    /// the token (decided without any query).
    fn joined_plan(
        &self,
        request: &SyncRequest,
        since: Option<SyncToken>,
        membership: MembershipRow,
        account_data: Vec<Value>,
    ) -> Option<JoinedPlan> {
        // A room joined since the token is new to the client: it gets the whole picture.
        let fresh =
            request.full_state || since.is_none_or(|s| membership.stream_ordering > s.events);
        let from = if fresh {
            0
        } else {
            since.map_or(0, |s| s.events)
        };
        let typing = self
            .ephemeral
            .typing_event(&membership.room.room_id, since.map(|s| s.typing));
        let new_events = fresh || membership.room_latest_event > from;
        let new_receipts = membership.room_latest_receipt > since.map_or(0, |s| s.receipts);
        if !new_events && !new_receipts && typing.is_none() && account_data.is_empty() {
            return None;
        }
        Some(JoinedPlan {
            membership,
            fresh,
            from,
            typing,
            account_data,
            new_events,
            new_receipts,
        })
    }

    /// The sections of the joined rooms that changed, built with a few batched reads for all
    /// of them (timelines, receipts, visibility, state, unread counts, summaries).
    async fn joined_rooms(
        &self,
        device: &AuthedUser,
        request: &SyncRequest,
        since: Option<SyncToken>,
        now: SyncToken,
        plans: Vec<JoinedPlan>,
    ) -> Result<Vec<(String, Value)>> {
        if plans.is_empty() {
            return Ok(Vec::new());
        }
        let user: &UserId = device.user_id.as_ref();
        let limit = request.filter.timeline_limit();
        let windows: Vec<TimelineWindow> = plans
            .iter()
            .filter(|p| p.new_events)
            .map(|p| TimelineWindow {
                room_nid: p.membership.room.room_nid,
                after: p.from,
                before: now.events + 1,
                limit: limit as i64 + 1,
            })
            .collect();
        let receipt_rooms: Vec<i64> = plans
            .iter()
            .filter(|p| p.new_receipts)
            .map(|p| p.membership.room.room_nid)
            .collect();
        let plan_rooms: Vec<i64> = plans.iter().map(|p| p.membership.room.room_nid).collect();
        // Changes of current state since the token in the rooms the client already has.
        let delta_windows: Vec<StateDeltaWindow> = match since {
            Some(s) => plans
                .iter()
                .filter(|p| p.new_events && !p.fresh)
                .map(|p| StateDeltaWindow {
                    room_nid: p.membership.room.room_nid,
                    after: s.events,
                    upto: now.events,
                })
                .collect(),
            None => Vec::new(),
        };
        // Independent reads, on separate connections at once: each is a round trip (and on
        // PostgreSQL a plan) that a woken long-poll waits for.
        let (mut timelines, mut receipts, mut unread, mut changed_states) = tokio::try_join!(
            self.store.room_timelines(&windows),
            self.store
                .receipts_in_rooms(&receipt_rooms, since.map_or(0, |s| s.receipts)),
            self.store
                .unread_counts_by_thread(user.as_str(), &plan_rooms),
            // Late-verified members' state (MSC4243 §2.6 item 39) only for `state_after`.
            self.store
                .state_changed_in(&delta_windows, request.use_state_after),
        )?;

        // Each room's timeline rows, oldest first, and whether older ones were left out.
        let mut rooms: Vec<JoinedRoom> = Vec::with_capacity(plans.len());
        for plan in plans {
            let mut rows = timelines
                .remove(&plan.membership.room.room_nid)
                .unwrap_or_default();
            let limited = rows.len() > limit;
            rows.truncate(limit);
            rows.reverse();
            let mut ephemeral = Vec::new();
            ephemeral.extend(plan.typing.clone());
            ephemeral.extend(crate::ephemeral::receipt_event(
                receipts
                    .remove(&plan.membership.room.room_nid)
                    .unwrap_or_default(),
                user,
            ));
            let changed_state = changed_states
                .remove(&plan.membership.room.room_nid)
                .unwrap_or_default();
            if !plan.fresh
                && rows.is_empty()
                && plan.account_data.is_empty()
                && ephemeral.is_empty()
                && changed_state.is_empty()
            {
                continue;
            }
            rooms.push(JoinedRoom {
                plan,
                rows,
                limited,
                ephemeral,
                changed_state,
            });
        }

        // A gap in a timeline (events of another server this one never fetched, before an
        // event placed on the state that server gave) ends the batch there: the client gets
        // what follows the newest gap, marked `limited`, and reaches back with `prev_batch`.
        // Only other servers' events can follow a gap, so a sync of local traffic asks nothing.
        let remote_rows: Vec<i64> = rooms
            .iter()
            .flat_map(|r| r.rows.iter())
            .filter(|row| {
                !UserId::parse(row.sender.as_str()).is_ok_and(|u| self.rooms.is_local(&u))
            })
            .map(|row| row.event_nid)
            .collect();
        if !remote_rows.is_empty() {
            let gaps = self.store.events_after_gaps(&remote_rows).await?;
            if !gaps.is_empty() {
                for room in &mut rooms {
                    if let Some(newest_gap) = room
                        .rows
                        .iter()
                        .rposition(|row| gaps.contains(&row.event_nid))
                    {
                        room.rows.drain(..newest_gap);
                        room.limited = true;
                    }
                }
            }
        }

        // History visibility of every timeline row at once; the reader is joined to all these
        // rooms now.
        let all_rows: Vec<&EventRow> = rooms.iter().flat_map(|r| r.rows.iter()).collect();
        let joined_now: HashMap<i64, bool> = rooms
            .iter()
            .map(|r| (r.plan.membership.room.room_nid, true))
            .collect();
        // The summary only changes with state; clients keep the last one they were given. The
        // rooms known to need one before their state sections are built (new to the client, or
        // with state in their timeline: all of them in an initial sync) have theirs read while
        // the sections are built; a room whose state section alone turns out to have changed
        // has its read after.
        let needs_summary =
            |r: &JoinedRoom| r.plan.fresh || r.rows.iter().any(|e| e.state_key.is_some());
        let early_summaries: Vec<i64> = rooms
            .iter()
            .filter(|r| needs_summary(r))
            .map(|r| r.plan.membership.room.room_nid)
            .collect();
        let account_key_rooms = |nids: &[i64]| -> Vec<i64> {
            rooms
                .iter()
                .map(|r| &r.plan.membership.room)
                .filter(|room| nids.contains(&room.room_nid))
                .filter(|room| crate::rooms::version_of(room).is_ok_and(|v| v.uses_account_keys()))
                .map(|room| room.room_nid)
                .collect()
        };
        let early_account_key_rooms = account_key_rooms(&early_summaries);
        // Which timeline events have aggregations to bundle, for all the rooms in one read
        // (most timelines have none, and skip their own reads below).
        let ((visible, states), mut summaries, related) = tokio::try_join!(
            async {
                let visible = self.rooms.visibility(user, &all_rows, &joined_now).await?;
                let states = self.state_sections(request, user, &rooms).await?;
                Ok::<_, Error>((visible, states))
            },
            async {
                Ok::<_, Error>(
                    self.store
                        .room_summaries(user.as_str(), &early_summaries, &early_account_key_rooms)
                        .await?,
                )
            },
            self.rooms.related_parents(all_rows.iter().copied()),
        )?;
        let mut visible = visible.into_iter();
        let late_summaries: Vec<i64> = rooms
            .iter()
            .zip(&states)
            .filter(|(r, state)| !needs_summary(r) && !state.is_empty())
            .map(|(r, _)| r.plan.membership.room.room_nid)
            .collect();
        if !late_summaries.is_empty() {
            summaries.extend(
                self.store
                    .room_summaries(
                        user.as_str(),
                        &late_summaries,
                        &account_key_rooms(&late_summaries),
                    )
                    .await?,
            );
        }

        let mut out = Vec::with_capacity(rooms.len());
        for (joined, state) in rooms.into_iter().zip(states) {
            let room = &joined.plan.membership.room;
            let row_visibility: Vec<Option<Sight>> =
                visible.by_ref().take(joined.rows.len()).collect();
            let mut timeline = self.client_events(
                room,
                &joined.rows,
                &row_visibility,
                user,
                device,
                &request.filter,
            );
            if related.any_in(&timeline) {
                self.rooms
                    .bundle_aggregations(room, user, &mut timeline)
                    .await?;
            }
            let prev_batch = timeline_prev_batch(&joined.rows, now.events + 1);
            let senders: HashSet<&str> = timeline
                .iter()
                .filter_map(|e| e["sender"].as_str())
                .collect();
            // A member event that a resolution put back (older than the token, so never a
            // change the client saw) is kept even when lazy loading would leave it out: it
            // is the only word the client gets of that membership change.
            let restored: HashSet<i64> = joined
                .changed_state
                .iter()
                .filter(|row| row.stream_ordering <= joined.plan.from)
                .map(|row| row.event_nid)
                .collect();
            // Compared as the client sees them (the timeline's senders are projected, and in
            // account-key rooms a state key is shown by account name).
            let state: Vec<Value> = state
                .iter()
                .filter_map(|row| Some((row, self.rooms.client_event(room, row, user)?)))
                .filter(|(row, event)| {
                    !request.filter.lazy_load_members
                        || row.event_type != "m.room.member"
                        || restored.contains(&row.event_nid)
                        || event["state_key"]
                            .as_str()
                            .is_some_and(|k| k == user.as_str() || senders.contains(k))
                })
                .map(|(_, event)| event)
                .collect();
            let (counts, thread_counts) = unread_sections(
                unread.remove(&room.room_nid).unwrap_or_default(),
                request.filter.unread_thread_notifications,
            );
            let summary = match summaries.remove(&room.room_nid) {
                Some(counts) => {
                    let mut summary = json!({
                        "m.joined_member_count": counts.joined,
                        "m.invited_member_count": counts.invited,
                    });
                    if !counts.named {
                        let heroes: Vec<String> = counts
                            .heroes
                            .iter()
                            .filter_map(|hero| self.rooms.client_user_id(room, hero))
                            .collect();
                        summary["m.heroes"] = json!(heroes);
                    }
                    summary
                }
                None => json!({}),
            };
            let mut section = json!({
                "timeline": {"events": timeline, "limited": joined.limited, "prev_batch": prev_batch},
                "account_data": {"events": joined.plan.account_data},
                "ephemeral": {"events": joined.ephemeral},
                "unread_notifications": counts,
                "summary": summary,
            });
            if let Some(threads) = thread_counts {
                section["unread_thread_notifications"] = threads;
            }
            section[if request.use_state_after {
                "state_after"
            } else {
                "state"
            }] = json!({"events": state});
            out.push((room.room_id.clone(), section));
        }
        Ok(out)
    }

    /// The `state` (or `state_after`) rows of each room, in the order of `rooms`: for a room
    /// new to the client, everything up to its timeline; for a limited timeline, what changed
    /// since the token up to it; and in an incremental sync the keys whose current state
    /// changed since the token that the timeline does not set (see [`merge_changed_state`]).
    /// Lazy loading keeps only members who matter.
    async fn state_sections(
        &self,
        request: &SyncRequest,
        user: &UserId,
        rooms: &[JoinedRoom],
    ) -> Result<Vec<Vec<EventRow>>> {
        enum Source {
            Nothing,
            Current,
            Group(i64),
        }
        let mut sources = Vec::with_capacity(rooms.len());
        let mut before_positions = Vec::new();
        for joined in rooms {
            let wanted = request.use_state_after || joined.plan.fresh || joined.limited;
            let source = match joined.rows.first() {
                _ if !wanted => Source::Nothing,
                _ if request.use_state_after => Source::Current,
                None => Source::Current,
                // Nothing precedes a room's create event.
                Some(first) if first.event_type == "m.room.create" => Source::Nothing,
                Some(first) => {
                    before_positions
                        .push((joined.plan.membership.room.room_nid, first.stream_ordering));
                    Source::Group(0)
                }
            };
            sources.push(source);
        }
        let groups_before = self.store.state_groups_before(&before_positions).await?;
        let current_rooms: Vec<i64> = rooms
            .iter()
            .zip(&sources)
            .filter(|(_, s)| matches!(s, Source::Current))
            .map(|(r, _)| r.plan.membership.room.room_nid)
            .collect();
        let mut current = self.store.current_states(&current_rooms).await?;

        // Snapshots before the timelines: the keys from the (cached) snapshot, then one read of
        // the events for all rooms.
        let mut wanted_nids = Vec::new();
        for (joined, source) in rooms.iter().zip(sources.iter_mut()) {
            if let Source::Group(group) = source {
                let room_nid = joined.plan.membership.room.room_nid;
                match groups_before.get(&room_nid).copied().flatten() {
                    Some(found) => {
                        *group = found;
                        let ids = self.store.state_ids_at_group(found).await?;
                        let senders: HashSet<&str> =
                            joined.rows.iter().map(|r| r.sender.as_str()).collect();
                        // Stored ids: in account-key rooms the reader's is its key-form id.
                        let own_key_form = self.rooms.key_form_of(user);
                        for ((event_type, state_key), nid) in ids.iter() {
                            let lazy_skip = request.filter.lazy_load_members
                                && event_type == "m.room.member"
                                && state_key != user.as_str()
                                && Some(state_key) != own_key_form.as_ref()
                                && !senders.contains(state_key.as_str());
                            if !lazy_skip {
                                wanted_nids.push(nid);
                            }
                        }
                    }
                    None => *source = Source::Nothing,
                }
            }
        }
        let mut by_room: HashMap<i64, Vec<EventRow>> = HashMap::new();
        for row in self.store.events_by_nids(&wanted_nids).await? {
            by_room.entry(row.room_nid).or_default().push(row);
        }

        let mut out = Vec::with_capacity(rooms.len());
        for (joined, source) in rooms.iter().zip(sources) {
            let room_nid = joined.plan.membership.room.room_nid;
            let mut rows = match source {
                Source::Nothing => Vec::new(),
                Source::Current => current.remove(&room_nid).unwrap_or_default(),
                Source::Group(_) => by_room.remove(&room_nid).unwrap_or_default(),
            };
            if !joined.plan.fresh {
                rows.retain(|r| r.stream_ordering > joined.plan.from);
                let covered: &[EventRow] = if request.use_state_after {
                    &[]
                } else {
                    &joined.rows
                };
                merge_changed_state(&mut rows, &joined.changed_state, covered);
            }
            // A stable order for clients and tests: as the events happened.
            rows.sort_unstable_by_key(|r| r.stream_ordering);
            out.push(rows);
        }
        Ok(out)
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
        let room = &membership.room;
        if let Some(departure) = self.store.event_by_nid(membership.event_nid).await?
            && departure.status == EventStatus::Outlier
        {
            // The rejection of an invite to a room this server is not in: no history or state
            // here, the departure alone.
            let mut event = self.rooms.client_event(room, &departure, user);
            if let Some(object) = event.as_mut().and_then(Value::as_object_mut) {
                object.remove("room_id");
            }
            return Ok(Some(json!({
                "timeline": {
                    "events": event.into_iter().collect::<Vec<_>>(),
                    "limited": false,
                    "prev_batch": events_token(membership.stream_ordering),
                },
                "state": {"events": []},
                "account_data": {"events": account_data},
            })));
        }
        let from = since.map_or(0, |s| s.events);
        let limit = request.filter.timeline_limit();
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
        let visible = self.rooms.visible_rows(&rows, user).await?;
        let mut timeline = self.client_events(room, &rows, &visible, user, device, &request.filter);
        self.rooms
            .bundle_aggregations(room, user, &mut timeline)
            .await?;
        let prev_batch = timeline_prev_batch(&rows, membership.stream_ordering + 1);
        let state = if since.is_none() || limited {
            let mut state = match rows.first() {
                Some(first) => self.state_before(room, Some(first)).await?,
                // No timeline (a limit of 0): the state as of the departure, which includes it.
                None => {
                    let group = self
                        .store
                        .event_by_nid_state_group(membership.event_nid)
                        .await?;
                    self.store.state_at_group(group).await?
                }
            };
            state.retain(|row| row.stream_ordering > from);
            state
        } else {
            Vec::new()
        };
        let mut state = state;
        if let Some(since) = since {
            // Changes of state up to the departure that the timeline does not show (the
            // departure itself may come from a fork's resolution, with no event here).
            let changed = self
                .store
                .state_changed_in(
                    &[StateDeltaWindow {
                        room_nid: room.room_nid,
                        after: since.events,
                        upto: membership.stream_ordering,
                    }],
                    false,
                )
                .await?
                .remove(&room.room_nid)
                .unwrap_or_default();
            merge_changed_state(&mut state, &changed, &rows);
        }
        state.sort_unstable_by_key(|r| r.stream_ordering);
        let state: Vec<Value> = state
            .iter()
            .filter_map(|row| self.rooms.client_event(room, row, user))
            .collect();
        Ok(Some(json!({
            "timeline": {"events": timeline, "limited": limited, "prev_batch": prev_batch},
            "state": {"events": state},
            "account_data": {"events": account_data},
        })))
    }

    /// The visible, filtered client form of timeline rows.
    fn client_events(
        &self,
        room: &RoomRow,
        rows: &[EventRow],
        visible: &[Option<Sight>],
        user: &UserId,
        device: &AuthedUser,
        filter: &SyncFilter,
    ) -> Vec<Value> {
        let mut out = Vec::new();
        for (row, sight) in rows.iter().zip(visible) {
            let Some(sight) = sight else {
                continue;
            };
            if let Some(mut event) =
                self.rooms
                    .seen_event(room, row, user, Some(device.device_id.as_str()), sight)
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
        out
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
            Some(previous) => Ok(self.store.state_at_group(previous.state_after()?).await?),
            None => Ok(Vec::new()),
        }
    }
}

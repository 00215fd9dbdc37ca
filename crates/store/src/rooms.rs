//! Rooms and their events: persisting an event with everything it changes in one transaction
//! (the event, its state snapshot, the current state, memberships, forward extremities, the
//! stream position and the client's transaction id), and the reads that sending and the client
//! API need.

use sqlx::Row;

use crate::event_write::{Arg, EventWrite, PUSH_ACTIONS_IN_WRITE, Position};
use crate::graph::{CurrentStateChange, EventStatus, Placement, StateValue};
use crate::store::BeginWrite;
use crate::{Backend, DatabaseKind, Store, StoreError, with_pool};

/// A state snapshot becomes a full copy after this many deltas, so loading one never walks far.
pub const MAX_STATE_CHAIN: i64 = 32;

/// Push action rows per `INSERT` (4 parameters each, well under both backends' limits).
const PUSH_ACTIONS_PER_STATEMENT: usize = 1_000;

/// A room as stored.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RoomRow {
    pub room_nid: i64,
    pub room_id: String,
    pub room_version: String,
    pub creator: String,
    pub is_public: bool,
}

/// An event as stored.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct EventRow {
    pub event_nid: i64,
    pub event_id: String,
    pub room_nid: i64,
    pub stream_ordering: i64,
    /// Where the event sits in the room's history as `/messages` walks it (its depth), with
    /// the stream ordering breaking ties.
    pub topological_ordering: i64,
    pub depth: i64,
    pub event_type: String,
    pub state_key: Option<String>,
    pub sender: String,
    pub json: String,
    pub redacted_by: Option<String>,
    /// The state after the event (for a rejected event, the state before it); `None` for an
    /// outlier, which has no place in the room's state (see [`EventRow::state_after`]).
    pub state_group: Option<i64>,
    /// Whether the event is part of the room's history and state.
    pub status: EventStatus,
    /// For a state event: the JSON of the state event it replaced (clients' `prev_content`).
    pub prev_json: Option<String>,
    /// For a redacted event: the JSON of the redaction (clients' `redacted_because`).
    pub redacted_because_json: Option<String>,
    /// For a client send: the sending device and its transaction id.
    pub txn: Option<(String, String)>,
}

impl EventRow {
    /// The state after the event, for an event that has a place in the room's state: client
    /// reads never hand out outliers, so one here is a bug, reported rather than guessed around.
    pub fn state_after(&self) -> Result<i64, StoreError> {
        self.state_group
            .ok_or_else(|| StoreError::Outlier(self.event_id.clone()))
    }
}

/// One of a user's room memberships, with where it happened in the events stream.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct MembershipRow {
    pub room: RoomRow,
    pub membership: String,
    pub event_nid: i64,
    pub stream_ordering: i64,
    pub forgotten: bool,
    /// The stream position of the room's newest event or change of its current state (a fork's
    /// resolution can change the state without a state event in the timeline): where a sync
    /// must look. Events hidden from clients count too, so it may name a position with nothing
    /// to show; never one before something to show.
    pub room_latest_event: i64,
    /// The stream position of the room's newest receipt (0 when it has none).
    pub room_latest_receipt: i64,
}

/// Where a sync starts ([`Store::sync_snapshot`]).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SyncSnapshot {
    /// `(events, account data, receipts, to-device, presence, device lists)`.
    pub positions: [i64; 6],
    /// The user's memberships, by room id.
    pub memberships: Vec<MembershipRow>,
}

/// A room's forward extremities, newest first, and their greatest depth, with the room's
/// current state group: what a new local event builds on.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RoomHead {
    pub prev_event_ids: Vec<String>,
    pub max_depth: i64,
    /// The room's current state: the resolution of the states after its forward extremities,
    /// and so the state before a local event that cites them all.
    pub current_state_group: Option<i64>,
}

/// What a local send reads before it builds its event ([`Store::send_context`]).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SendContext {
    /// The current state events for the keys asked for (those the room has), without the
    /// joined fields (`prev_json`, `redacted_because_json`, `txn`: a send needs none).
    pub state: Vec<EventRow>,
    pub head: RoomHead,
    /// The event the client's transaction already produced, if this is a retry.
    pub txn_event_id: Option<String>,
}

/// An event to persist.
#[derive(Debug, Clone, Default)]
pub struct NewEvent<'a> {
    pub room_nid: i64,
    pub event_id: &'a str,
    pub event_type: &'a str,
    pub state_key: Option<&'a str>,
    pub sender: &'a str,
    pub depth: i64,
    pub origin_server_ts: i64,
    pub json: &'a str,
    /// The events it cites in `prev_events`, by id (whatever the event format), stored as
    /// edges; those that are forward extremities stop being so.
    pub prev_event_ids: &'a [String],
    /// The events it cites in `auth_events`, by id, stored as edges.
    pub auth_event_ids: &'a [String],
    /// The state before this event (`None` for a room's first event and for an outlier).
    pub state_group_before: Option<i64>,
    /// For a state event: the event it replaces in the state before it (clients'
    /// `prev_content`).
    pub replaces: Option<i64>,
    /// Whether the event joins the room's history and state; a stored outlier of the same id
    /// is upgraded in place by a non-outlier append.
    pub status: EventStatus,
    pub placement: Placement,
    /// What the append does to the room's current state.
    pub current_state: CurrentStateChange,
    /// The event's id was just made by this server (a local event): no stored event can cite
    /// it yet, so the store skips looking for citers.
    pub just_built: bool,
    /// For `m.room.member`: the target and its membership.
    pub membership: Option<(&'a str, &'a str)>,
    /// The transaction of a client send.
    pub txn: Option<TxnKey<'a>>,
    /// For a redaction: the redacted event and its redacted JSON, written in the same
    /// transaction as the redaction (an event that was redacted before keeps its first
    /// redaction).
    pub redaction: Option<(&'a str, &'a str)>,
    /// For a redaction whose target is not stored: the target's id and whether the redaction's
    /// sender had the redact power level when it was accepted, kept until the target arrives
    /// ([`Store::waiting_redactions`]).
    pub redaction_waits: Option<(&'a str, bool)>,
    /// The event arrives after a redaction of it that applies: `json` is its redacted form, and
    /// this the redaction's id. The redactions that waited for it are done with.
    pub redacted_by: Option<&'a str>,
    /// Who sends the event to the room's other servers (for the federation sender).
    pub delivery: Delivery,
    /// What the event asks of local members' push rules.
    pub push_actions: &'a [PushAction],
    /// `content.m.relates_to` of a non-state event: `(parent event id, rel_type)`, indexed for
    /// `/relations`, `/threads` and bundled aggregations.
    pub relation: Option<(&'a str, &'a str)>,
    /// The event's searchable text: `(key, text)`, the key naming the content field it came
    /// from (`content.body`, `content.name`, `content.topic`), indexed for `/search`.
    pub search: Option<(&'a str, &'a str)>,
    pub now: i64,
}

/// A [`NewEvent`] that owns its fields: to wait in a queue, or to be decided now and written
/// later with others.
#[derive(Debug)]
pub struct OwnedNewEvent {
    pub room_nid: i64,
    pub event_id: String,
    pub event_type: String,
    pub state_key: Option<String>,
    pub sender: String,
    pub depth: i64,
    pub origin_server_ts: i64,
    pub json: String,
    pub prev_event_ids: Vec<String>,
    pub auth_event_ids: Vec<String>,
    pub state_group_before: Option<i64>,
    pub replaces: Option<i64>,
    pub status: EventStatus,
    pub placement: Placement,
    pub current_state: CurrentStateChange,
    pub just_built: bool,
    pub membership: Option<(String, String)>,
    /// `(user_id, device_id, scope, txn_id)`.
    pub txn: Option<(String, String, String, String)>,
    pub redaction: Option<(String, String)>,
    pub redaction_waits: Option<(String, bool)>,
    pub redacted_by: Option<String>,
    pub delivery: crate::rooms::Delivery,
    pub push_actions: Vec<PushAction>,
    pub relation: Option<(String, String)>,
    pub search: Option<(String, String)>,
    pub now: i64,
}

impl OwnedNewEvent {
    /// The owned copy of `event`.
    pub fn of(event: &NewEvent<'_>) -> Self {
        OwnedNewEvent {
            room_nid: event.room_nid,
            event_id: event.event_id.to_owned(),
            event_type: event.event_type.to_owned(),
            state_key: event.state_key.map(str::to_owned),
            sender: event.sender.to_owned(),
            depth: event.depth,
            origin_server_ts: event.origin_server_ts,
            json: event.json.to_owned(),
            prev_event_ids: event.prev_event_ids.to_vec(),
            auth_event_ids: event.auth_event_ids.to_vec(),
            state_group_before: event.state_group_before,
            replaces: event.replaces,
            status: event.status.clone(),
            placement: event.placement,
            current_state: event.current_state.clone(),
            just_built: event.just_built,
            membership: event
                .membership
                .map(|(target, membership)| (target.to_owned(), membership.to_owned())),
            txn: event.txn.map(|txn| {
                (
                    txn.user_id.to_owned(),
                    txn.device_id.to_owned(),
                    txn.scope.to_owned(),
                    txn.txn_id.to_owned(),
                )
            }),
            redaction: event
                .redaction
                .map(|(redacted, json)| (redacted.to_owned(), json.to_owned())),
            redaction_waits: event
                .redaction_waits
                .map(|(target, by_power)| (target.to_owned(), by_power)),
            redacted_by: event.redacted_by.map(str::to_owned),
            delivery: event.delivery,
            push_actions: event.push_actions.to_vec(),
            relation: event
                .relation
                .map(|(parent, rel_type)| (parent.to_owned(), rel_type.to_owned())),
            search: event
                .search
                .map(|(key, text)| (key.to_owned(), text.to_owned())),
            now: event.now,
        }
    }

    /// The event, borrowed.
    pub fn borrowed(&self) -> NewEvent<'_> {
        NewEvent {
            room_nid: self.room_nid,
            event_id: &self.event_id,
            event_type: &self.event_type,
            state_key: self.state_key.as_deref(),
            sender: &self.sender,
            depth: self.depth,
            origin_server_ts: self.origin_server_ts,
            json: &self.json,
            prev_event_ids: &self.prev_event_ids,
            auth_event_ids: &self.auth_event_ids,
            state_group_before: self.state_group_before,
            replaces: self.replaces,
            status: self.status.clone(),
            placement: self.placement,
            current_state: self.current_state.clone(),
            just_built: self.just_built,
            membership: self
                .membership
                .as_ref()
                .map(|(target, membership)| (target.as_str(), membership.as_str())),
            txn: self
                .txn
                .as_ref()
                .map(|(user_id, device_id, scope, txn_id)| TxnKey {
                    user_id,
                    device_id,
                    scope,
                    txn_id,
                }),
            redaction: self
                .redaction
                .as_ref()
                .map(|(redacted, json)| (redacted.as_str(), json.as_str())),
            redaction_waits: self
                .redaction_waits
                .as_ref()
                .map(|(target, by_power)| (target.as_str(), *by_power)),
            redacted_by: self.redacted_by.as_deref(),
            delivery: self.delivery,
            push_actions: &self.push_actions,
            relation: self
                .relation
                .as_ref()
                .map(|(parent, rel_type)| (parent.as_str(), rel_type.as_str())),
            search: self
                .search
                .as_ref()
                .map(|(key, text)| (key.as_str(), text.as_str())),
            now: self.now,
        }
    }
}

/// What identifies a client's transaction: the spec's retransmission is the same user and
/// device, the same txn id and the same HTTP path (`scope`: the path without its version prefix
/// and txn id, e.g. `/rooms/!r/send/m.room.message`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct TxnKey<'a> {
    pub user_id: &'a str,
    pub device_id: &'a str,
    pub scope: &'a str,
    pub txn_id: &'a str,
}

/// A joined member as push rule evaluation reads it ([`Store::joined_member_events`]).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct JoinedMember {
    pub user_id: String,
    /// The JSON of their membership event.
    pub member_json: String,
    /// The stream position of the account data asked for (0 when they have none).
    pub data_position: i64,
}

/// One member's push rule outcome for an event.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PushAction {
    pub user_id: String,
    pub notify: bool,
    pub highlight: bool,
    /// The actions as JSON text.
    pub actions: String,
}

/// A notification as `/notifications` lists it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct NotificationRow {
    pub event: EventRow,
    pub room_id: String,
    pub actions: String,
    pub ts: i64,
    pub highlight: bool,
}

/// The counts and names behind a room's sync `summary` ([`Store::room_summaries`]): joined and
/// invited member counts, whether the room has a name or canonical alias, and (only when it has
/// neither) up to five other members as heroes, joined before invited, oldest first.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RoomSummaryRow {
    pub joined: i64,
    pub invited: i64,
    /// The room has an `m.room.name` or `m.room.canonical_alias` event.
    pub named: bool,
    /// Other joined, then invited, members; empty when the room is named.
    pub heroes: Vec<String>,
}

/// Where a persisted event landed.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Persisted {
    pub event_nid: i64,
    pub stream_ordering: i64,
    /// The state after the event (`None` for an outlier).
    pub state_group: Option<i64>,
    /// The room's current state group after the append.
    pub current_state_group: Option<i64>,
}

/// The condition on `events e` that keeps a read to the room's history as clients see it:
/// rejected events, outliers and soft-failed events never reach a client's timeline, pages,
/// search, relations or notifications. Every read that hands events out as history or counts
/// them uses it; reads of state (`current_state`, state groups) do not, since a soft-failed
/// state event that wins state resolution is part of the state clients see.
pub(crate) const IN_TIMELINE: &str = "e.status = 'normal'";

/// A place in a room's history, as a bound of a walk through it ([`Store::room_history`]).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum HistoryPosition {
    /// A position in the events stream (what stream tokens, such as sync's `prev_batch`,
    /// name): the bound compares stream orderings only, and the walk still goes in
    /// topological order.
    Stream(i64),
    /// A place in the topological order, `(topological ordering, stream ordering)`: the
    /// ordering of history that `/messages` and `/context` walk, in which backfilled events
    /// (stream orderings below 0) sit among live ones by depth.
    Topological { topological: i64, stream: i64 },
}

impl HistoryPosition {
    /// Where an event sits in the topological order.
    pub fn of(event: &EventRow) -> Self {
        HistoryPosition::Topological {
            topological: event.topological_ordering,
            stream: event.stream_ordering,
        }
    }

    /// The condition `e {cmp} self` (`cmp` one of `<`, `<=`, `>`, `>=`), its parameters
    /// numbered from `$first`, with the values to bind.
    fn condition(self, cmp: &str, first: usize) -> (String, Vec<i64>) {
        match self {
            HistoryPosition::Stream(stream) => {
                (format!("e.stream_ordering {cmp} ${first}"), vec![stream])
            }
            HistoryPosition::Topological {
                topological,
                stream,
            } => {
                let strict = &cmp[..1];
                (
                    format!(
                        "(e.topological_ordering {strict} ${first} OR \
                         (e.topological_ordering = ${first} AND e.stream_ordering {cmp} ${}))",
                        first + 1
                    ),
                    vec![topological, stream],
                )
            }
        }
    }
}

/// A walk through a room's history in topological order ([`Store::room_history`]).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct HistoryWalk {
    pub room_nid: i64,
    /// Exclusive: the walk starts just after (forwards) or before (backwards) it; `None`
    /// starts at the room's first (forwards) or newest (backwards) event.
    pub from: Option<HistoryPosition>,
    /// Inclusive: the walk stops at it.
    pub to: Option<HistoryPosition>,
    pub backwards: bool,
    /// Only events at or before this stream position (a reader who left sees nothing after).
    pub max_stream: Option<i64>,
    pub limit: i64,
}

/// The SQL function giving the greatest of its arguments: `GREATEST` on PostgreSQL, the
/// many-argument `MAX` on SQLite (which gives NULL if any argument is NULL: give it none).
/// An expression of it plans faster than a `MAX` over a `UNION ALL` (see `sync_reads`).
pub(crate) fn greatest_sql(kind: DatabaseKind) -> &'static str {
    match kind {
        DatabaseKind::Postgres => "GREATEST",
        DatabaseKind::Sqlite => "MAX",
    }
}

/// A user's read position in a room as an SQL expression over the given room and user
/// expressions: the later of their own newest timeline event and the event of their newest
/// unthreaded read receipt (0 when neither exists). Both sides are index lookups
/// (`events_room_sender`, newest first to the first in the timeline; the receipts key).
pub(crate) fn read_position_sql(kind: DatabaseKind, room: &str, user: &str) -> String {
    format!(
        "{}(COALESCE((SELECT e.stream_ordering FROM events e WHERE e.room_nid = {room} AND e.sender = {user} \
         AND {IN_TIMELINE} ORDER BY e.stream_ordering DESC LIMIT 1), 0), \
         COALESCE((SELECT MAX(e.stream_ordering) FROM receipts r JOIN events e ON e.event_id = r.event_id \
         WHERE r.room_nid = {room} AND r.user_id = {user} AND r.thread_id = '' \
         AND r.receipt_type IN ('m.read', 'm.read.private')), 0))",
        greatest_sql(kind)
    )
}

/// The columns of the events table itself that every read of events selects.
macro_rules! own_event_columns {
    () => {
        "e.event_nid, e.event_id, e.room_nid, e.stream_ordering, e.topological_ordering, e.depth, \
         e.event_type, e.state_key, e.sender, e.json, e.redacted_by, e.state_group, \
         e.status, e.rejection_reason"
    };
}

/// The event columns with the joined ones all `NULL`: for reads that need only the events
/// themselves, and plan faster without the joins. Decodes with [`event_from_row!`].
macro_rules! bare_event_columns {
    () => {
        concat!(
            own_event_columns!(),
            ", NULL AS prev_json, NULL AS redacted_because_json, NULL AS txn_device, NULL AS txn_id"
        )
    };
}

/// [`bare_event_columns!`] for other modules' reads of whole events (decoded by
/// [`event_from_row!`]).
pub(crate) const BARE_EVENT_COLUMNS: &str = bare_event_columns!();

/// The joined columns of [`EVENT_SELECT`], over the events table as `e` and its joins
/// ([`EVENT_JOINS`]).
macro_rules! joined_event_columns {
    () => {
        concat!(
            own_event_columns!(),
            ", p.json AS prev_json, r.json AS redacted_because_json, \
             t.device_id AS txn_device, t.txn_id AS txn_id"
        )
    };
}

/// What [`EVENT_SELECT`] joins to each event `e`: the replaced state event, the redaction and
/// the sender's transaction.
macro_rules! event_joins {
    () => {
        " LEFT JOIN events p ON p.event_nid = e.prev_state_nid \
         LEFT JOIN events r ON r.event_id = e.redacted_by \
         LEFT JOIN event_txn_ids t ON t.event_id = e.event_id AND t.user_id = e.sender"
    };
}

/// Every read of events selects the same columns, with the replaced state event and the
/// redaction joined in, so clients' `prev_content` and `redacted_because` need no extra query.
pub(crate) const EVENT_SELECT: &str = concat!(
    "SELECT ",
    joined_event_columns!(),
    " FROM events e",
    event_joins!()
);

/// [`EVENT_SELECT`] in two parts, for reads whose `FROM` starts elsewhere: the columns, and the
/// joins to add after `events e`.
pub(crate) const EVENT_COLUMNS: &str = joined_event_columns!();
pub(crate) const EVENT_JOINS: &str = event_joins!();

macro_rules! event_from_row {
    ($row:expr) => {{
        let row = $row;
        EventRow {
            event_nid: row.try_get("event_nid")?,
            event_id: row.try_get("event_id")?,
            room_nid: row.try_get("room_nid")?,
            stream_ordering: row.try_get("stream_ordering")?,
            topological_ordering: row.try_get("topological_ordering")?,
            depth: row.try_get("depth")?,
            event_type: row.try_get("event_type")?,
            state_key: row.try_get("state_key")?,
            sender: row.try_get("sender")?,
            json: row.try_get("json")?,
            redacted_by: row.try_get("redacted_by")?,
            state_group: row.try_get("state_group")?,
            status: $crate::graph::EventStatus::from_columns(
                row.try_get::<&str, _>("status")?,
                row.try_get("rejection_reason")?,
            )?,
            prev_json: row.try_get("prev_json")?,
            redacted_because_json: row.try_get("redacted_because_json")?,
            txn: match (
                row.try_get::<Option<String>, _>("txn_device")?,
                row.try_get::<Option<String>, _>("txn_id")?,
            ) {
                (Some(device), Some(txn)) => Some((device, txn)),
                _ => None,
            },
        }
    }};
}
pub(crate) use event_from_row;

/// `count` `(type, state key)` conditions on `current_state c`, bound from `$2` on in pairs.
fn state_key_clauses(count: usize) -> String {
    let clauses: Vec<String> = (0..count)
        .map(|i| {
            format!(
                "(c.event_type = ${} AND c.state_key = ${})",
                2 * i + 2,
                2 * i + 3
            )
        })
        .collect();
    clauses.join(" OR ")
}

/// A new state group for room `$room` over `$parent` (`None`: empty): a delta holding nothing
/// yet while the chain is short, else (or when `$full`) a full copy of the parent's state in one
/// statement, so that reading a group never walks more than [`MAX_STATE_CHAIN`] groups.
/// Evaluates to the group. (A macro: the transaction's type differs per backend.)
macro_rules! new_state_group {
    ($tx:ident, $room:expr, $parent:expr) => {
        new_state_group!($tx, $room, $parent, false)
    };
    ($tx:ident, $room:expr, $parent:expr, $full:expr) => {{
        let parent: Option<i64> = $parent;
        let parent_len: Option<i64> =
            match parent {
                Some(parent) => sqlx::query_scalar(
                    "SELECT CAST(chain_length AS BIGINT) FROM state_groups WHERE state_group = $1",
                )
                .bind(parent)
                .fetch_optional(&mut *$tx)
                .await?,
                None => None,
            };
        let (delta_parent, chain_length) = match parent_len {
            Some(len) if len < MAX_STATE_CHAIN && !$full => (parent, len + 1),
            _ => (None, 0),
        };
        let group: i64 = sqlx::query_scalar(
            "INSERT INTO state_groups (room_nid, parent_group, chain_length) VALUES ($1, $2, $3) \
             RETURNING state_group",
        )
        .bind($room)
        .bind(delta_parent)
        .bind(chain_length as i32)
        .fetch_one(&mut *$tx)
        .await?;
        if delta_parent.is_none()
            && let Some(parent) = parent
        {
            sqlx::query(COPY_STATE_SQL)
                .bind(group)
                .bind(parent)
                .execute(&mut *$tx)
                .await?;
        }
        group
    }};
}

/// Copies the state of group `$2` (resolved through its delta chain, nearest group winning)
/// into the empty group `$1`, in one statement.
pub(crate) const COPY_STATE_SQL: &str = "WITH RECURSIVE chain (state_group, depth) AS ( \
         SELECT CAST($2 AS BIGINT), 0 \
         UNION ALL \
         SELECT g.parent_group, c.depth + 1 FROM state_groups g \
         JOIN chain c ON g.state_group = c.state_group WHERE g.parent_group IS NOT NULL) \
     INSERT INTO state_group_entries (state_group, event_type, state_key, event_nid) \
     SELECT $1, x.event_type, x.state_key, x.event_nid FROM ( \
         SELECT s.event_type, s.state_key, s.event_nid, ROW_NUMBER() OVER ( \
             PARTITION BY s.event_type, s.state_key ORDER BY c.depth) AS nearest \
         FROM chain c JOIN state_group_entries s ON s.state_group = c.state_group) AS x \
     WHERE x.nearest = 1";

/// Applies one change of a room's current state at stream position `$stream`: the flattened
/// `current_state` row, the delta that incremental sync reads, and for a member event the
/// membership row. `$nid` is `None` when the key leaves the state.
macro_rules! apply_state_change {
    ($tx:ident, $room:expr, $stream:expr, $event_type:expr, $state_key:expr, $nid:expr, $membership:expr) => {{
        let (event_type, state_key, nid): (&str, &str, Option<i64>) = ($event_type, $state_key, $nid);
        let membership: Option<&str> = $membership;
        match nid {
            Some(nid) => sqlx::query(
                "INSERT INTO current_state (room_nid, event_type, state_key, event_nid) VALUES ($1, $2, $3, $4) \
                 ON CONFLICT (room_nid, event_type, state_key) DO UPDATE SET event_nid = excluded.event_nid",
            )
            .bind($room)
            .bind(event_type)
            .bind(state_key)
            .bind(nid)
            .execute(&mut *$tx)
            .await?,
            None => sqlx::query(
                "DELETE FROM current_state WHERE room_nid = $1 AND event_type = $2 AND state_key = $3",
            )
            .bind($room)
            .bind(event_type)
            .bind(state_key)
            .execute(&mut *$tx)
            .await?,
        };
        sqlx::query(
            "INSERT INTO current_state_deltas (stream_ordering, room_nid, event_type, state_key, event_nid) \
             VALUES ($1, $2, $3, $4, $5) \
             ON CONFLICT (room_nid, stream_ordering, event_type, state_key) DO UPDATE SET event_nid = excluded.event_nid",
        )
        .bind($stream)
        .bind($room)
        .bind(event_type)
        .bind(state_key)
        .bind(nid)
        .execute(&mut *$tx)
        .await?;
        if event_type == "m.room.member" {
            match (nid, membership) {
                (Some(nid), Some(membership)) => sqlx::query(
                    // A local account's key-form id (account-key rooms) is indexed under its
                    // account-name id, so every read that finds a user's rooms and
                    // memberships by their user id finds these too (MSC4243.md Q3).
                    "INSERT INTO room_memberships (room_nid, user_id, membership, event_nid, stream_ordering, forgotten) \
                     VALUES ($1, COALESCE((SELECT '@' || k.account_name || ':' || k.domain FROM account_keys k \
                     WHERE k.user_id = $2 AND k.state = 'local'), $2), $3, $4, $5, FALSE) \
                     ON CONFLICT (room_nid, user_id) DO UPDATE SET membership = excluded.membership, \
                     event_nid = excluded.event_nid, stream_ordering = excluded.stream_ordering, forgotten = FALSE",
                )
                .bind($room)
                .bind(state_key)
                .bind(membership)
                .bind(nid)
                .bind($stream)
                .execute(&mut *$tx)
                .await?,
                _ => sqlx::query("DELETE FROM room_memberships WHERE room_nid = $1 AND user_id = \
                     COALESCE((SELECT '@' || k.account_name || ':' || k.domain FROM account_keys k \
                     WHERE k.user_id = $2 AND k.state = 'local'), $2)")
                    .bind($room)
                    .bind(state_key)
                    .execute(&mut *$tx)
                    .await?,
            };
        }
    }};
}

/// The refusal of an append whose room's current state moved after the caller read it.
fn current_state_moved(event_id: &str) -> StoreError {
    StoreError::Conflict(format!(
        "the room's current state changed while event {event_id} was being appended"
    ))
}

/// An append refused by its own statement: the event id is stored already, or the room's
/// current state is no longer the one the event was decided against.
fn refused(event_id: &str) -> StoreError {
    StoreError::Conflict(format!(
        "event {event_id} is stored already, or the room's current state changed while it was being appended"
    ))
}

/// Runs an [`EventWrite`] on `$executor`: the event's `Some((event_nid, stream_ordering))`, or
/// `None` when the append was refused.
macro_rules! run_write {
    ($write:expr, $executor:expr) => {{
        let write = &$write;
        let mut query = sqlx::query_as::<_, (i64, i64)>(sqlx::AssertSqlSafe(write.sql()));
        for arg in write.args() {
            query = match arg {
                Arg::Int(v) => query.bind(*v),
                Arg::OptInt(v) => query.bind(*v),
                Arg::Text(v) => query.bind(*v),
                Arg::OptText(v) => query.bind(*v),
                Arg::Bool(v) => query.bind(*v),
            };
        }
        // Every row, not the first only: SQLite stops a query at the row asked for, and the
        // parts are its later statements.
        query.fetch_all($executor).await?.first().copied()
    }};
}

/// The append that PostgreSQL makes in one statement, with no transaction around it: a lone
/// live event that changes no state and brings nothing that writes rows of other events (a
/// message, the commonest write there is). The statement takes its stream position too
/// ([`Position::TakenHere`]), so it is one round trip where a transaction is four (`BEGIN`,
/// the position, the rows, `COMMIT`), and the position's row lock, which orders the events
/// stream's writers, is held for the statement only. A statement is atomic and durable on its
/// own. What it gives up: a refused append has used its position, a gap in the stream, which
/// readers never assume away (positions are compared, never counted).
fn one_statement_append<'e, 'a>(
    kind: DatabaseKind,
    events: &'e [NewEvent<'a>],
) -> Option<&'e NewEvent<'a>> {
    let [event] = events else { return None };
    let fits = kind == DatabaseKind::Postgres
        && event.placement == Placement::Live
        && event.state_key.is_none()
        && event.state_group_before.is_some()
        && match event.current_state {
            CurrentStateChange::Extend => event.status == EventStatus::Normal,
            CurrentStateChange::Unchanged => {
                matches!(event.status, EventStatus::Normal | EventStatus::SoftFailed)
            }
            _ => false,
        }
        && event.push_actions.len() <= PUSH_ACTIONS_IN_WRITE
        && event.redaction.is_none()
        && event.redaction_waits.is_none()
        && event.redacted_by.is_none();
    fits.then_some(event)
}

/// A room's head from its forward extremities as `(event id, depth, stream ordering, state
/// group)`: newest (deepest, then latest) first.
fn head_of(mut extremities: Vec<(String, i64, i64)>, current_state_group: Option<i64>) -> RoomHead {
    extremities.sort_by_key(|e| std::cmp::Reverse((e.1, e.2)));
    RoomHead {
        max_depth: extremities.iter().map(|r| r.1).max().unwrap_or(0),
        current_state_group,
        prev_event_ids: extremities.into_iter().map(|r| r.0).collect(),
    }
}

/// A room row (`$1` id, `$2` version, `$3` creator, `$4` time, `$5` public); the room nid.
const ROOM_INSERT: &str = "INSERT INTO rooms (room_id, room_version, creator, created_ts, is_public) \
     VALUES ($1, $2, $3, $4, $5) RETURNING room_nid";

impl Store {
    /// Creates a room row. The room id must be new.
    pub async fn create_room(
        &self,
        room_id: &str,
        room_version: &str,
        creator: &str,
        is_public: bool,
        now: i64,
    ) -> Result<i64, StoreError> {
        let nid = with_pool!(self, pool => {
            sqlx::query_scalar::<_, i64>(ROOM_INSERT)
            .bind(room_id)
            .bind(room_version)
            .bind(creator)
            .bind(now)
            .bind(is_public)
            .fetch_one(pool)
            .await
        })?;
        Ok(nid)
    }

    /// Creates a room row and journals the operation that builds the room, in one transaction
    /// (a room row is never left without the journal entry that finishes it). The room id must
    /// be new (else [`StoreError::Conflict`], nothing written). `alias` (a local alias the room
    /// is created with) points at the room from the same transaction; taken already, nothing
    /// is written and the answer is `None`. Returns the room nid and the operation id.
    #[allow(clippy::too_many_arguments)]
    pub async fn create_room_with_operation(
        &self,
        room_id: &str,
        room_version: &str,
        creator: &str,
        is_public: bool,
        now: i64,
        alias: Option<&str>,
        operation: &crate::NewOperation<'_>,
    ) -> Result<Option<(i64, i64)>, StoreError> {
        let ids = with_pool!(self, pool => {
            let mut tx = pool.begin_write(&self.write_gate).await?;
            let nid = sqlx::query_scalar::<_, i64>(ROOM_INSERT)
            .bind(room_id)
            .bind(room_version)
            .bind(creator)
            .bind(now)
            .bind(is_public)
            .fetch_one(&mut *tx)
            .await?;
            let alias_taken = match alias {
                Some(alias) => sqlx::query_scalar::<_, String>(crate::aliases::ALIAS_INSERT)
                .bind(alias)
                .bind(nid)
                .bind(creator)
                .bind(now)
                .fetch_optional(&mut *tx)
                .await?
                .is_none(),
                None => false,
            };
            if alias_taken {
                // Dropped uncommitted: the room row goes too.
                None
            } else {
                let operation_id = crate::operations::begin_operation!(tx, operation);
                tx.commit().await?;
                Some((nid, operation_id))
            }
        });
        Ok(ids)
    }

    /// The ids of the rooms `creator` created on this server (their room rows, built or not),
    /// oldest first: what an admin looks at, and what tests count.
    pub async fn rooms_created_by(&self, creator: &str) -> Result<Vec<String>, StoreError> {
        let ids = with_pool!(self, pool => {
            sqlx::query_scalar::<_, String>(
                "SELECT room_id FROM rooms WHERE creator = $1 ORDER BY room_nid",
            )
            .bind(creator)
            .fetch_all(pool)
            .await?
        });
        Ok(ids)
    }

    /// A room by its id. Cached (rooms are never deleted; [`Store::set_room_public`], the one
    /// change to a room row, invalidates).
    pub async fn room(&self, room_id: &str) -> Result<Option<RoomRow>, StoreError> {
        let started = match self.rooms.get(room_id) {
            Ok(room) => return Ok(Some(room)),
            Err(started) => started,
        };
        let row = with_pool!(self, pool => {
            match sqlx::query(
                "SELECT room_nid, room_id, room_version, creator, is_public FROM rooms WHERE room_id = $1",
            )
            .bind(room_id)
            .fetch_optional(pool)
            .await?
            {
                Some(row) => Some(RoomRow {
                    room_nid: row.try_get("room_nid")?,
                    room_id: row.try_get("room_id")?,
                    room_version: row.try_get("room_version")?,
                    creator: row.try_get("creator")?,
                    is_public: row.try_get("is_public")?,
                }),
                None => None,
            }
        });
        if let Some(room) = &row {
            self.rooms.fill(started, room_id.to_owned(), room.clone());
        }
        Ok(row)
    }

    /// A room by its nid (what an event row names): for the few reads that start from an event
    /// rather than a room (a peer's `/event`). Its id, then the room through [`Store::room`]
    /// and its cache.
    pub async fn room_by_nid(&self, room_nid: i64) -> Result<Option<RoomRow>, StoreError> {
        let room_id = with_pool!(self, pool => {
            sqlx::query_scalar::<_, String>("SELECT room_id FROM rooms WHERE room_nid = $1")
                .bind(room_nid)
                .fetch_optional(pool)
                .await?
        });
        match room_id {
            Some(room_id) => self.room(&room_id).await,
            None => Ok(None),
        }
    }

    /// Everything a local send reads before building its event, in one statement (each
    /// statement is a round trip, and sends are what users wait on): the current state events
    /// for `keys`, the room's head, and, for a client send, the event its transaction id
    /// already produced.
    pub async fn send_context(
        &self,
        room_nid: i64,
        keys: &[(String, String)],
        txn: Option<TxnKey<'_>>,
    ) -> Result<SendContext, StoreError> {
        // Three arms of one query, told apart by `part`; parameters are numbered as they come.
        // Bare columns: PostgreSQL plans the three arms with the usual joins in milliseconds,
        // longer than it takes to run them.
        // The extremities' arm carries the room's current state group.
        let mut sql = format!(
            "SELECT 1 AS part, {}, (SELECT s.state_group FROM room_current_state s WHERE s.room_nid = $1) \
             AS current_group FROM events e JOIN forward_extremities f ON f.event_nid = e.event_nid \
             WHERE f.room_nid = $1",
            bare_event_columns!(),
        );
        if !keys.is_empty() {
            sql.push_str(&format!(
                " UNION ALL SELECT 0 AS part, {}, NULL AS current_group FROM events e JOIN current_state c ON c.event_nid = e.event_nid \
                 WHERE c.room_nid = $1 AND ({})",
                bare_event_columns!(),
                state_key_clauses(keys.len())
            ));
        }
        if txn.is_some() {
            let n = 2 * keys.len() + 2;
            sql.push_str(&format!(
                " UNION ALL SELECT 2 AS part, {}, NULL AS current_group FROM events e JOIN event_txn_ids x ON x.event_id = e.event_id \
                 WHERE x.user_id = ${} AND x.device_id = ${} AND x.scope = ${} AND x.txn_id = ${}",
                bare_event_columns!(),
                n,
                n + 1,
                n + 2,
                n + 3
            ));
        }
        let mut context = SendContext {
            state: Vec::new(),
            head: head_of(Vec::new(), None),
            txn_event_id: None,
        };
        let mut extremities = Vec::new();
        let mut current_group = None;
        with_pool!(self, pool => {
            let mut query = sqlx::query(sqlx::AssertSqlSafe(sql.clone())).bind(room_nid);
            for (event_type, state_key) in keys {
                query = query.bind(event_type).bind(state_key);
            }
            if let Some(txn) = txn {
                query = query.bind(txn.user_id).bind(txn.device_id).bind(txn.scope).bind(txn.txn_id);
            }
            for row in query.fetch_all(pool).await? {
                let part: i32 = row.try_get("part")?;
                let event = event_from_row!(&row);
                match part {
                    0 => context.state.push(event),
                    1 => {
                        current_group = row.try_get::<Option<i64>, _>("current_group")?;
                        extremities.push((event.event_id, event.depth, event.stream_ordering));
                    }
                    _ => context.txn_event_id = Some(event.event_id),
                }
            }
        });
        context.head = head_of(extremities, current_group);
        Ok(context)
    }

    /// The event a client transaction produced, if it was sent before.
    pub async fn txn_event_id(&self, txn: TxnKey<'_>) -> Result<Option<String>, StoreError> {
        let event_id = with_pool!(self, pool => {
            sqlx::query_scalar::<_, String>(
                "SELECT event_id FROM event_txn_ids WHERE user_id = $1 AND device_id = $2 AND scope = $3 AND txn_id = $4",
            )
            .bind(txn.user_id)
            .bind(txn.device_id)
            .bind(txn.scope)
            .bind(txn.txn_id)
            .fetch_optional(pool)
            .await
        })?;
        Ok(event_id)
    }

    /// Persists an event and everything it changes, durably, before it returns. Events that
    /// arrive while another commit is running are committed together, in arrival order, in one
    /// transaction (see `group_commit`).
    pub async fn persist_event(&self, event: &NewEvent<'_>) -> Result<Persisted, StoreError> {
        self.persist_event_holding(event, ()).await
    }

    /// [`Store::persist_event`], keeping `hold` (the room's writer lock) until the event's
    /// commit has ended. Cancel-safe: if this future is dropped, the event is either committed
    /// with `hold` still held until then, or (not yet taken into a batch) never committed.
    pub async fn persist_event_holding<H: Send + 'static>(
        &self,
        event: &NewEvent<'_>,
        hold: H,
    ) -> Result<Persisted, StoreError> {
        let mut persisted = self
            .group_commit
            .persist(self, std::slice::from_ref(event), Box::new(hold))
            .await?;
        persisted
            .pop()
            .ok_or_else(|| StoreError::Conflict("one event committed, none answered".to_owned()))
    }

    /// [`Store::persist_event_holding`] for several events of one room, each free to cite
    /// those before it: committed in order, all in one transaction (one flush to disk), or
    /// none of them. Where each landed, in order.
    pub async fn persist_events_holding<H: Send + 'static>(
        &self,
        events: &[NewEvent<'_>],
        hold: H,
    ) -> Result<Vec<Persisted>, StoreError> {
        if events.is_empty() {
            return Ok(Vec::new());
        }
        self.group_commit
            .persist(self, events, Box::new(hold))
            .await
    }

    /// Persists events in one transaction, in order: each event with its edges, its place in
    /// the room's state (the state before and after it), the room's current state as the
    /// event changes it, the forward extremities, and what a client send brings along
    /// (transaction id, push actions, relation, search text, the redacted copy). Live events
    /// take consecutive stream positions; backfilled events and outliers take positions counting
    /// down from 0, below every live event.
    ///
    /// Fails, writing nothing, when the room's current state is not the one the caller decided
    /// against (another writer moved it: see [`CurrentStateChange`]), or when an event id is
    /// stored already (other than as an outlier that this append upgrades).
    ///
    /// On PostgreSQL a lone message is one statement with no transaction around it (see
    /// [`one_statement_append`]).
    pub(crate) async fn persist_events(
        &self,
        events: &[NewEvent<'_>],
    ) -> Result<Vec<Persisted>, StoreError> {
        if let Some(event) = one_statement_append(self.kind(), events) {
            // What the loop below does for such an event, with the position taken in the
            // statement: no new group (the state after is the state before), the current state
            // kept (an extension that changes no state sets nothing), an extremity if normal.
            let group = event.state_group_before;
            let extend = event.current_state == CurrentStateChange::Extend;
            let expected_current = if extend { group } else { None };
            let write = EventWrite::new(
                self.kind(),
                event,
                Position::TakenHere,
                group,
                group,
                expected_current,
                event.status == EventStatus::Normal,
                event.push_actions,
            );
            let written = with_pool!(self, pool => run_write!(write, pool));
            let Some((event_nid, stream_ordering)) = written else {
                return Err(refused(event.event_id));
            };
            return Ok(vec![Persisted {
                event_nid,
                stream_ordering,
                state_group: group,
                current_state_group: if extend { group } else { None },
            }]);
        }
        let counted = |live: bool| {
            i64::try_from(
                events
                    .iter()
                    .filter(|e| {
                        live == (e.placement == Placement::Live && e.status != EventStatus::Outlier)
                    })
                    .count(),
            )
            .unwrap_or(i64::MAX)
        };
        let (live_count, below_count) = (counted(true), counted(false));
        // The search index is the one backend-specific table (see `search`).
        let search_delete_sql = match self.kind() {
            DatabaseKind::Postgres => {
                "DELETE FROM event_search WHERE event_nid = \
                 (SELECT event_nid FROM events WHERE event_id = $1 AND room_nid = $2)"
            }
            DatabaseKind::Sqlite => {
                "DELETE FROM event_search WHERE rowid = \
                 (SELECT event_nid FROM events WHERE event_id = $1 AND room_nid = $2)"
            }
        };
        let persisted = with_pool!(self, pool => {
            let mut tx = pool.begin_write(&self.write_gate).await?;
            let mut next_live = if live_count > 0 {
                let last = crate::store::take_event_positions!(tx, live_count);
                last - live_count + 1
            } else {
                0
            };
            let mut next_below = if below_count > 0 {
                let last: i64 = sqlx::query_scalar(
                    "UPDATE stream_positions SET position = position - $1 WHERE stream = 'backfill' RETURNING position",
                )
                .bind(below_count)
                .fetch_one(&mut *tx)
                .await?;
                last + below_count - 1
            } else {
                0
            };
            let mut out = Vec::with_capacity(events.len());
            for event in events {
                let outlier = event.status == EventStatus::Outlier;
                let live = event.placement == Placement::Live && !outlier;
                let stream_ordering = if live {
                    next_live += 1;
                    next_live - 1
                } else {
                    next_below -= 1;
                    next_below + 1
                };

                // The state before and after the event. An outlier has neither; a rejected event
                // changes nothing; a state event starts a delta group over the state before (a
                // full copy once the chain is long), filled in below once the event has a nid.
                // Events without state: outliers, and events rejected before their state was
                // known (their verdict needed none).
                let stateless = outlier || (matches!(event.status, EventStatus::Rejected(_)) && event.state_group_before.is_none());
                let before = if outlier { None } else { event.state_group_before };
                if !stateless && before.is_none() && event.current_state != CurrentStateChange::Extend {
                    return Err(StoreError::Conflict(format!(
                        "event {} has no state before it and does not start its room", event.event_id
                    )));
                }
                let new_group = match (event.state_key, &event.status) {
                    (Some(_), EventStatus::Normal | EventStatus::SoftFailed) => {
                        Some(new_state_group!(tx, event.room_nid, before))
                    }
                    _ => None,
                };
                let after = if stateless {
                    None
                } else {
                    match (new_group, before) {
                        (Some(group), _) => Some(group),
                        (None, Some(group)) => Some(group),
                        (None, None) => return Err(StoreError::Conflict("a room's first event must be a state event".to_owned())),
                    }
                };

                // An event that extends the current state without changing it (a message) checks
                // in this same statement that the current state is still the one it was decided
                // against: the compare of the compare-and-set below, at no extra round trip.
                let expected_current = match (&event.current_state, event.state_key) {
                    (CurrentStateChange::Extend, None) => before,
                    _ => None,
                };
                // A live event that is part of the history replaces the extremities it cites, and
                // becomes one unless a stored event already cites it (it arrived after its child).
                // Soft-failed and rejected events, outliers and backfilled history are never one.
                // A restart of the room's state starts them again from this event alone.
                let extremity = live && event.status == EventStatus::Normal;
                if extremity && matches!(event.current_state, CurrentStateChange::Restart { .. }) {
                    sqlx::query("DELETE FROM forward_extremities WHERE room_nid = $1")
                        .bind(event.room_nid)
                        .execute(&mut *tx)
                        .await?;
                }
                // The event, or the outlier of the same id upgraded in place (it now has state,
                // a stream position and a status of its own), with the rows of its own, in one
                // round trip (see `event_write`).
                let push_now = if event.push_actions.len() <= PUSH_ACTIONS_IN_WRITE { event.push_actions } else { &[][..] };
                let push_later = &event.push_actions[push_now.len()..];
                let write = EventWrite::new(self.kind(), event, Position::Given(stream_ordering), after, before, expected_current, extremity, push_now);
                let Some((event_nid, _)) = run_write!(write, &mut *tx) else {
                    return Err(refused(event.event_id));
                };

                if let (Some(group), Some(state_key)) = (new_group, event.state_key) {
                    sqlx::query(
                        "INSERT INTO state_group_entries (state_group, event_type, state_key, event_nid) VALUES ($1, $2, $3, $4) \
                         ON CONFLICT (state_group, event_type, state_key) DO UPDATE SET event_nid = excluded.event_nid",
                    )
                    .bind(group)
                    .bind(event.event_type)
                    .bind(state_key)
                    .bind(event_nid)
                    .execute(&mut *tx)
                    .await?;
                }

                // The room's current state, compare-and-set on its group: the caller decided
                // against the group it read, and nobody may have moved it since.
                let current_state_group = match &event.current_state {
                    CurrentStateChange::Unchanged => None,
                    CurrentStateChange::Extend if outlier || !matches!(event.status, EventStatus::Normal) => {
                        return Err(StoreError::Conflict(format!(
                            "event {} cannot extend the current state: it is not a normal event", event.event_id
                        )));
                    }
                    // An event that changes no state leaves the group as it is: nothing to set.
                    CurrentStateChange::Extend if event.state_key.is_none() => after,
                    CurrentStateChange::Extend => {
                        let moved = match before {
                            Some(before) => sqlx::query(
                                "UPDATE room_current_state SET state_group = $3 WHERE room_nid = $1 AND state_group = $2",
                            )
                            .bind(event.room_nid)
                            .bind(before)
                            .bind(after)
                            .execute(&mut *tx)
                            .await?
                            .rows_affected(),
                            None => sqlx::query(
                                "INSERT INTO room_current_state (room_nid, state_group) VALUES ($1, $2) ON CONFLICT DO NOTHING",
                            )
                            .bind(event.room_nid)
                            .bind(after)
                            .execute(&mut *tx)
                            .await?
                            .rows_affected(),
                        };
                        if moved != 1 {
                            return Err(current_state_moved(event.event_id));
                        }
                        if let Some(state_key) = event.state_key {
                            apply_state_change!(tx, event.room_nid, stream_ordering, event.event_type, state_key,
                                Some(event_nid), event.membership.map(|(_, m)| m));
                        }
                        after
                    }
                    CurrentStateChange::Adopt { .. } | CurrentStateChange::Restart { .. }
                        if outlier || !matches!(event.status, EventStatus::Normal) =>
                    {
                        return Err(StoreError::Conflict(format!(
                            "event {} cannot start the current state: it is not a normal event", event.event_id
                        )));
                    }
                    CurrentStateChange::Adopt { entries: changes }
                    | CurrentStateChange::Restart { changes, .. } => {
                        // The state after the event becomes the current state: a room without
                        // one adopts it (a second process that got there first makes this one
                        // fail and write nothing); a restart replaces the group it read
                        // (compare-and-set, as a resolution does).
                        let taken = match &event.current_state {
                            CurrentStateChange::Restart { expected, .. } => sqlx::query(
                                "UPDATE room_current_state SET state_group = $3 WHERE room_nid = $1 AND state_group = $2",
                            )
                            .bind(event.room_nid)
                            .bind(*expected)
                            .bind(after)
                            .execute(&mut *tx)
                            .await?
                            .rows_affected(),
                            _ => sqlx::query(
                                "INSERT INTO room_current_state (room_nid, state_group) VALUES ($1, $2) ON CONFLICT DO NOTHING",
                            )
                            .bind(event.room_nid)
                            .bind(after)
                            .execute(&mut *tx)
                            .await?
                            .rows_affected(),
                        };
                        if taken != 1 {
                            return Err(current_state_moved(event.event_id));
                        }
                        for change in changes {
                            let nid = match change.value {
                                StateValue::Event(nid) => Some(nid),
                                StateValue::Appended => Some(event_nid),
                                StateValue::Absent => None,
                            };
                            apply_state_change!(tx, event.room_nid, stream_ordering, &change.event_type,
                                &change.state_key, nid, change.membership.as_deref());
                        }
                        after
                    }
                    CurrentStateChange::Resolved { expected, changes } => {
                        let removes = changes.iter().any(|c| c.value == StateValue::Absent);
                        let nid_of = |value: StateValue| match value {
                            StateValue::Event(nid) => Some(nid),
                            StateValue::Appended => Some(event_nid),
                            StateValue::Absent => None,
                        };
                        let group = new_state_group!(tx, event.room_nid, Some(*expected), removes);
                        for change in changes {
                            match nid_of(change.value) {
                                Some(nid) => sqlx::query(
                                    "INSERT INTO state_group_entries (state_group, event_type, state_key, event_nid) VALUES ($1, $2, $3, $4) \
                                     ON CONFLICT (state_group, event_type, state_key) DO UPDATE SET event_nid = excluded.event_nid",
                                )
                                .bind(group)
                                .bind(&change.event_type)
                                .bind(&change.state_key)
                                .bind(nid)
                                .execute(&mut *tx)
                                .await?,
                                None => sqlx::query(
                                    "DELETE FROM state_group_entries WHERE state_group = $1 AND event_type = $2 AND state_key = $3",
                                )
                                .bind(group)
                                .bind(&change.event_type)
                                .bind(&change.state_key)
                                .execute(&mut *tx)
                                .await?,
                            };
                        }
                        let moved = sqlx::query(
                            "UPDATE room_current_state SET state_group = $3 WHERE room_nid = $1 AND state_group = $2",
                        )
                        .bind(event.room_nid)
                        .bind(*expected)
                        .bind(group)
                        .execute(&mut *tx)
                        .await?
                        .rows_affected();
                        if moved != 1 {
                            return Err(current_state_moved(event.event_id));
                        }
                        for change in changes {
                            apply_state_change!(tx, event.room_nid, stream_ordering, &change.event_type,
                                &change.state_key, nid_of(change.value), change.membership.as_deref());
                        }
                        Some(group)
                    }
                };

                // Many rows per statement; the event's columns are bound once per statement.
                for chunk in push_later.chunks(PUSH_ACTIONS_PER_STATEMENT) {
                    let rows: Vec<String> = (0..chunk.len())
                        .map(|i| format!("($1, $2, $3, $4, ${}, ${}, ${}, ${})", 4 * i + 5, 4 * i + 6, 4 * i + 7, 4 * i + 8))
                        .collect();
                    let sql = format!(
                        "INSERT INTO event_push_actions (event_nid, room_nid, stream_ordering, ts, user_id, notify, highlight, actions) \
                         VALUES {}",
                        rows.join(", ")
                    );
                    let mut query = sqlx::query(sqlx::AssertSqlSafe(sql))
                        .bind(event_nid)
                        .bind(event.room_nid)
                        .bind(stream_ordering)
                        .bind(event.now);
                    for action in chunk {
                        query = query
                            .bind(&action.user_id)
                            .bind(action.notify)
                            .bind(action.highlight)
                            .bind(&action.actions);
                    }
                    query.execute(&mut *tx).await?;
                }
                if let Some((target, by_power)) = event.redaction_waits {
                    sqlx::query(
                        "INSERT INTO pending_redactions (room_nid, target_event_id, redaction_nid, by_power) \
                         VALUES ($1, $2, $3, $4) ON CONFLICT DO NOTHING",
                    )
                    .bind(event.room_nid)
                    .bind(target)
                    .bind(event_nid)
                    .bind(by_power)
                    .execute(&mut *tx)
                    .await?;
                }
                if let Some(redaction) = event.redacted_by {
                    sqlx::query("UPDATE events SET redacted_by = $2 WHERE event_nid = $1")
                        .bind(event_nid)
                        .bind(redaction)
                        .execute(&mut *tx)
                        .await?;
                    sqlx::query("DELETE FROM pending_redactions WHERE target_event_id = $1 AND room_nid = $2")
                        .bind(event.event_id)
                        .bind(event.room_nid)
                        .execute(&mut *tx)
                        .await?;
                }
                if let Some((redacted, redacted_json)) = event.redaction {
                    // With the redaction, never after it: a crash between the two would leave
                    // a redaction that clients apply and an original that reads still serve.
                    sqlx::query(
                        "UPDATE events SET json = $2, redacted_by = $3 WHERE event_id = $1 AND room_nid = $4 AND redacted_by IS NULL",
                    )
                    .bind(redacted)
                    .bind(redacted_json)
                    .bind(event.event_id)
                    .bind(event.room_nid)
                    .execute(&mut *tx)
                    .await?;
                    // Redaction strips `m.relates_to`: the event no longer relates to anything.
                    sqlx::query(
                        "DELETE FROM event_relations WHERE event_nid = (SELECT event_nid FROM events WHERE event_id = $1 AND room_nid = $2)",
                    )
                    .bind(redacted)
                    .bind(event.room_nid)
                    .execute(&mut *tx)
                    .await?;
                    // Redaction strips the searched fields: the event is no longer found.
                    sqlx::query(sqlx::AssertSqlSafe(search_delete_sql))
                        .bind(redacted)
                        .bind(event.room_nid)
                        .execute(&mut *tx)
                        .await?;
                }
                out.push(Persisted { event_nid, stream_ordering, state_group: after, current_state_group });
            }
            tx.commit().await?;
            out
        });
        Ok(persisted)
    }

    /// The current state events of a room for the given `(type, state_key)` pairs (all of the
    /// room's current state when `keys` is `None`).
    pub async fn current_state(
        &self,
        room_nid: i64,
        keys: Option<&[(String, String)]>,
    ) -> Result<Vec<EventRow>, StoreError> {
        let mut sql = format!(
            "{EVENT_SELECT} JOIN current_state c ON c.event_nid = e.event_nid WHERE c.room_nid = $1"
        );
        if let Some(keys) = keys {
            if keys.is_empty() {
                return Ok(Vec::new());
            }
            sql.push_str(&format!(" AND ({})", state_key_clauses(keys.len())));
        }
        let rows = with_pool!(self, pool => {
            let mut query = sqlx::query(sqlx::AssertSqlSafe(sql.clone())).bind(room_nid);
            for (event_type, state_key) in keys.unwrap_or_default() {
                query = query.bind(event_type).bind(state_key);
            }
            let mut out = Vec::new();
            for row in query.fetch_all(pool).await? {
                out.push(event_from_row!(&row));
            }
            out
        });
        Ok(rows)
    }

    /// The whole room state of a snapshot, following its delta chain.
    pub async fn state_at_group(&self, state_group: i64) -> Result<Vec<EventRow>, StoreError> {
        let ids = self.state_ids_at_group(state_group).await?;
        let nids: Vec<i64> = ids.event_nids().collect();
        self.events_by_nids(&nids).await
    }

    /// The events with these nids (those that exist), in no particular order.
    pub async fn events_by_nids(&self, nids: &[i64]) -> Result<Vec<EventRow>, StoreError> {
        self.events_in("e.event_nid", nids).await
    }

    /// Stored events by id (any status), in no particular order; ids not stored are left out.
    pub async fn events_by_ids(&self, ids: &[&str]) -> Result<Vec<EventRow>, StoreError> {
        self.events_in("e.event_id", ids).await
    }

    /// The events whose `column` is one of `values`, in bounded `IN` lists (both backends take
    /// far more, and plans stay cached for the common sizes).
    async fn events_in<T>(&self, column: &str, values: &[T]) -> Result<Vec<EventRow>, StoreError>
    where
        T: Copy
            + Send
            + Sync
            + for<'q> sqlx::Encode<'q, sqlx::Postgres>
            + sqlx::Type<sqlx::Postgres>
            + for<'q> sqlx::Encode<'q, sqlx::Sqlite>
            + sqlx::Type<sqlx::Sqlite>,
    {
        const CHUNK: usize = 256;
        let mut out = Vec::with_capacity(values.len());
        for chunk in values.chunks(CHUNK) {
            let placeholders: Vec<String> = (1..=chunk.len()).map(|i| format!("${i}")).collect();
            let sql = format!(
                "{EVENT_SELECT} WHERE {column} IN ({})",
                placeholders.join(", ")
            );
            with_pool!(self, pool => {
                let mut query = sqlx::query(sqlx::AssertSqlSafe(sql.clone()));
                for value in chunk {
                    query = query.bind(*value);
                }
                for row in query.fetch_all(pool).await? {
                    out.push(event_from_row!(&row));
                }
            });
        }
        Ok(out)
    }

    /// One event by nid.
    pub async fn event_by_nid(&self, event_nid: i64) -> Result<Option<EventRow>, StoreError> {
        let row = with_pool!(self, pool => {
            match sqlx::query(sqlx::AssertSqlSafe(format!("{EVENT_SELECT} WHERE e.event_nid = $1")))
                .bind(event_nid)
                .fetch_optional(pool)
                .await?
            {
                Some(row) => Some(event_from_row!(&row)),
                None => None,
            }
        });
        Ok(row)
    }

    /// One event by id.
    pub async fn event(&self, event_id: &str) -> Result<Option<EventRow>, StoreError> {
        let row = with_pool!(self, pool => {
            match sqlx::query(sqlx::AssertSqlSafe(format!("{EVENT_SELECT} WHERE e.event_id = $1")))
                .bind(event_id)
                .fetch_optional(pool)
                .await?
            {
                Some(row) => Some(event_from_row!(&row)),
                None => None,
            }
        });
        Ok(row)
    }

    /// Events of a room strictly between two stream positions, in the requested direction,
    /// at most `limit`.
    pub async fn room_events(
        &self,
        room_nid: i64,
        after: i64,
        before: i64,
        backwards: bool,
        limit: i64,
    ) -> Result<Vec<EventRow>, StoreError> {
        let order = if backwards { "DESC" } else { "ASC" };
        let rows = with_pool!(self, pool => {
            let mut out = Vec::new();
            for row in sqlx::query(sqlx::AssertSqlSafe(format!(
                "{EVENT_SELECT} WHERE e.room_nid = $1 AND e.stream_ordering > $2 \
                 AND e.stream_ordering < $3 AND {IN_TIMELINE} ORDER BY e.stream_ordering {order} LIMIT $4"
            )))
            .bind(room_nid)
            .bind(after)
            .bind(before)
            .bind(limit)
            .fetch_all(pool)
            .await?
            {
                out.push(event_from_row!(&row));
            }
            out
        });
        Ok(rows)
    }

    /// The room's history as clients page through it (`/messages`, `/context`): its events in
    /// topological order `(topological ordering, stream ordering)` from `walk.from` towards
    /// `walk.to`, at most `walk.limit`, only those in the timeline (see [`IN_TIMELINE`]).
    pub async fn room_history(&self, walk: &HistoryWalk) -> Result<Vec<EventRow>, StoreError> {
        let (from_cmp, to_cmp, order) = if walk.backwards {
            ("<", ">=", "DESC")
        } else {
            (">", "<=", "ASC")
        };
        let mut conditions = Vec::new();
        let mut binds = vec![walk.room_nid];
        for (position, cmp) in [(walk.from, from_cmp), (walk.to, to_cmp)] {
            if let Some(position) = position {
                let (condition, values) = position.condition(cmp, binds.len() + 1);
                conditions.push(format!(" AND {condition}"));
                binds.extend(values);
            }
        }
        if let Some(max_stream) = walk.max_stream {
            conditions.push(format!(" AND e.stream_ordering <= ${}", binds.len() + 1));
            binds.push(max_stream);
        }
        binds.push(walk.limit);
        let sql = format!(
            "{EVENT_SELECT} WHERE e.room_nid = $1{} AND {IN_TIMELINE} \
             ORDER BY e.topological_ordering {order}, e.stream_ordering {order} LIMIT ${}",
            conditions.concat(),
            binds.len()
        );
        let rows = with_pool!(self, pool => {
            let mut query = sqlx::query(sqlx::AssertSqlSafe(sql.clone()));
            for value in &binds {
                query = query.bind(*value);
            }
            let mut out = Vec::new();
            for row in query.fetch_all(pool).await? {
                out.push(event_from_row!(&row));
            }
            out
        });
        Ok(rows)
    }

    /// Events of a room ordered by `(origin_server_ts, stream_ordering)`, starting from the
    /// position `(ts, stream)` exclusive, forwards (later first) or backwards (earlier first),
    /// at most `limit`: the pages `/timestamp_to_event` walks. The stream ordering breaks ties
    /// between events sent in the same millisecond, in the order the room saw them.
    pub async fn room_events_by_time(
        &self,
        room_nid: i64,
        ts: i64,
        stream: i64,
        backwards: bool,
        limit: i64,
    ) -> Result<Vec<EventRow>, StoreError> {
        let (cmp, order) = if backwards {
            ("<", "DESC")
        } else {
            (">", "ASC")
        };
        let rows = with_pool!(self, pool => {
            let mut out = Vec::new();
            for row in sqlx::query(sqlx::AssertSqlSafe(format!(
                "{EVENT_SELECT} WHERE e.room_nid = $1 AND (e.origin_server_ts {cmp} $2 \
                 OR (e.origin_server_ts = $2 AND e.stream_ordering {cmp} $3)) AND {IN_TIMELINE} \
                 ORDER BY e.origin_server_ts {order}, e.stream_ordering {order} LIMIT $4"
            )))
            .bind(room_nid)
            .bind(ts)
            .bind(stream)
            .bind(limit)
            .fetch_all(pool)
            .await?
            {
                out.push(event_from_row!(&row));
            }
            out
        });
        Ok(rows)
    }

    /// A user's membership in a room, with the event and stream position that set it.
    pub async fn membership(
        &self,
        room_nid: i64,
        user_id: &str,
    ) -> Result<Option<(String, i64, i64)>, StoreError> {
        let row = with_pool!(self, pool => {
            sqlx::query_as::<_, (String, i64, i64)>(
                "SELECT membership, event_nid, stream_ordering FROM room_memberships WHERE room_nid = $1 AND user_id = $2",
            )
            .bind(room_nid)
            .bind(user_id)
            .fetch_optional(pool)
            .await
        })?;
        Ok(row)
    }

    /// A user's membership of a room for reads: `(membership, event nid, stream ordering,
    /// forgotten)`.
    pub async fn membership_for_reads(
        &self,
        room_nid: i64,
        user_id: &str,
    ) -> Result<Option<(String, i64, i64, bool)>, StoreError> {
        let row = with_pool!(self, pool => {
            sqlx::query_as::<_, (String, i64, i64, bool)>(
                "SELECT membership, event_nid, stream_ordering, forgotten FROM room_memberships WHERE room_nid = $1 AND user_id = $2",
            )
            .bind(room_nid)
            .bind(user_id)
            .fetch_optional(pool)
            .await
        })?;
        Ok(row)
    }

    /// For a user who is no longer joined: the event by which they last left `join` (a leave,
    /// kick or ban of a joined member), walking back their membership events from `event_nid`
    /// (their current one); `None` if they were never joined. Reads after departure show the
    /// room as of that event, and a user banned or invited without ever joining sees nothing.
    pub async fn last_departure_from_join(
        &self,
        event_nid: i64,
    ) -> Result<Option<i64>, StoreError> {
        // Each user's chain is as long as their membership changes in the room; the bound only
        // guards against a corrupt cycle.
        const MAX_STEPS: usize = 10_000;
        let membership = |json: &str| {
            serde_json::from_str::<serde_json::Value>(json)
                .ok()
                .and_then(|v| v["content"]["membership"].as_str().map(str::to_owned))
        };
        let mut current = Some(event_nid);
        for _ in 0..MAX_STEPS {
            let Some(nid) = current else { break };
            let row = with_pool!(self, pool => {
                sqlx::query_as::<_, (String, Option<i64>, Option<String>)>(
                    "SELECT e.json, e.prev_state_nid, p.json FROM events e LEFT JOIN events p ON p.event_nid = e.prev_state_nid \
                     WHERE e.event_nid = $1",
                )
                .bind(nid)
                .fetch_optional(pool)
                .await
            })?;
            let Some((json, prev_nid, prev_json)) = row else {
                break;
            };
            let now = membership(&json);
            let before = prev_json.as_deref().and_then(membership);
            if matches!(now.as_deref(), Some("leave" | "ban")) && before.as_deref() == Some("join")
            {
                return Ok(Some(nid));
            }
            current = prev_nid;
        }
        Ok(None)
    }

    /// What a sync starts from, in one statement (so one snapshot): every stream position it
    /// follows, `(events, account data, receipts, to-device, presence)`, and each of the user's
    /// room memberships with its room's newest event and receipt positions, by room id.
    pub async fn sync_snapshot(&self, user_id: &str) -> Result<SyncSnapshot, StoreError> {
        let mut positions = [None; 6];
        let mut memberships = Vec::new();
        // A room's latest position is its newest event or its newest change of current state
        // (a resolution, a redelivery: they need no event), whichever is later: where a sync
        // must look. Events hidden from clients count too (a look that finds nothing to show
        // costs one read; one that is skipped loses events), and each of the two is then the
        // last entry of an index, with the simplest plan (a sync of a connection that has not
        // prepared this statement yet plans it, on its critical path).
        let greatest = greatest_sql(self.kind());
        let sql = format!(
            // The typed arm first: PostgreSQL gives a column of only NULLs the type text,
            // which then would not match the membership arm's types.
            "SELECT 'membership' AS kind, CAST(0 AS BIGINT) AS position, r.room_nid, r.room_id, r.room_version, \
             r.creator, r.is_public, m.membership, m.event_nid, m.stream_ordering, m.forgotten, \
             {greatest}((SELECT COALESCE(MAX(e.stream_ordering), 0) FROM events e WHERE e.room_nid = m.room_nid), \
             (SELECT COALESCE(MAX(d.stream_ordering), 0) FROM current_state_deltas d WHERE d.room_nid = m.room_nid)) \
             AS latest_event, \
             (SELECT COALESCE(MAX(c.stream_position), 0) FROM receipts c WHERE c.room_nid = m.room_nid) AS latest_receipt \
             FROM room_memberships m JOIN rooms r ON r.room_nid = m.room_nid \
             WHERE m.user_id = $1 \
             UNION ALL SELECT stream, position, NULL, NULL, NULL, NULL, NULL, NULL, NULL, NULL, NULL, NULL, NULL \
             FROM stream_positions \
             UNION ALL SELECT 'account_data', position, NULL, NULL, NULL, NULL, NULL, NULL, NULL, NULL, \
             NULL, NULL, NULL FROM account_data_stream"
        );
        with_pool!(self, pool => {
            for row in sqlx::query(sqlx::AssertSqlSafe(sql.clone()))
            .bind(user_id)
            .fetch_all(pool)
            .await?
            {
                let kind: String = row.try_get("kind")?;
                let slot = match kind.as_str() {
                    "events" => 0,
                    "account_data" => 1,
                    "receipts" => 2,
                    "to_device" => 3,
                    "presence" => 4,
                    "device_lists" => 5,
                    "membership" => {
                        memberships.push(MembershipRow {
                            room: RoomRow {
                                room_nid: row.try_get("room_nid")?,
                                room_id: row.try_get("room_id")?,
                                room_version: row.try_get("room_version")?,
                                creator: row.try_get("creator")?,
                                is_public: row.try_get("is_public")?,
                            },
                            membership: row.try_get("membership")?,
                            event_nid: row.try_get("event_nid")?,
                            stream_ordering: row.try_get("stream_ordering")?,
                            forgotten: row.try_get("forgotten")?,
                            room_latest_event: row.try_get("latest_event")?,
                            room_latest_receipt: row.try_get("latest_receipt")?,
                        });
                        continue;
                    }
                    _ => continue,
                };
                positions[slot] = Some(row.try_get::<i64, _>("position")?);
            }
        });
        let [Some(a), Some(b), Some(c), Some(d), Some(e), Some(f)] = positions else {
            return Err(StoreError::Conflict(
                "a stream position row is missing".to_owned(),
            ));
        };
        memberships.sort_by(|x, y| x.room.room_id.cmp(&y.room.room_id));
        Ok(SyncSnapshot {
            positions: [a, b, c, d, e, f],
            memberships,
        })
    }

    /// The joined members of a room with the JSON of their membership events (push rule
    /// evaluation needs their display names) and the stream position of their global account
    /// data of `data_type` (their push rules, which callers cache by that position).
    pub async fn joined_member_events(
        &self,
        room_nid: i64,
        data_type: &str,
    ) -> Result<Vec<JoinedMember>, StoreError> {
        let rows = with_pool!(self, pool => {
            let mut out = Vec::new();
            for row in sqlx::query(
                "SELECT m.user_id, e.json, a.stream_position FROM room_memberships m \
                 JOIN events e ON e.event_nid = m.event_nid \
                 LEFT JOIN account_data a ON a.user_id = m.user_id AND a.room_id = '' AND a.data_type = $2 \
                 WHERE m.room_nid = $1 AND m.membership = 'join'",
            )
            .bind(room_nid)
            .bind(data_type)
            .fetch_all(pool)
            .await?
            {
                out.push(JoinedMember {
                    user_id: row.try_get("user_id")?,
                    member_json: row.try_get("json")?,
                    data_position: row.try_get::<Option<i64>, _>("stream_position")?.unwrap_or(0),
                });
            }
            out
        });
        Ok(rows)
    }

    /// The rooms where a user has the given membership.
    pub async fn rooms_with_membership(
        &self,
        user_id: &str,
        membership: &str,
    ) -> Result<Vec<String>, StoreError> {
        let rows = with_pool!(self, pool => {
            sqlx::query_scalar::<_, String>(
                "SELECT r.room_id FROM room_memberships m JOIN rooms r ON r.room_nid = m.room_nid \
                 WHERE m.user_id = $1 AND m.membership = $2 ORDER BY r.room_id",
            )
            .bind(user_id)
            .bind(membership)
            .fetch_all(pool)
            .await
        })?;
        Ok(rows)
    }

    /// The latest stream position of the events stream.
    pub async fn events_stream_position(&self) -> Result<i64, StoreError> {
        self.stream_position("events").await
    }

    /// The state group (state after) of an event, by nid.
    pub async fn event_by_nid_state_group(&self, event_nid: i64) -> Result<i64, StoreError> {
        let group = with_pool!(self, pool => {
            sqlx::query_scalar::<_, i64>("SELECT state_group FROM events WHERE event_nid = $1")
                .bind(event_nid)
                .fetch_one(pool)
                .await
        })?;
        Ok(group)
    }

    /// The user directory: joined members of rooms the searcher is joined to or that are
    /// published in the room directory, whose user id or display name contains `term`
    /// (case-insensitive). A user's name and avatar are their profile's here (local users),
    /// else those of one of their member events (other servers' users, whose profiles this
    /// server learns only from the rooms it shares with them). At most `limit` + 1 rows, so
    /// the caller can tell `limited`.
    pub async fn search_users(
        &self,
        searcher: &str,
        term: &str,
        limit: i64,
    ) -> Result<Vec<(String, Option<String>, Option<String>)>, StoreError> {
        // LIKE wildcards in the term are literal.
        let pattern = format!(
            "%{}%",
            term.to_lowercase()
                .replace('\\', "\\\\")
                .replace('%', "\\%")
                .replace('_', "\\_")
        );
        // The one place the store reads inside event JSON: the dialects spell it differently.
        let member_field = |field: &str| match &self.backend {
            Backend::Postgres(_) => format!("(e.json::jsonb -> 'content' ->> '{field}')"),
            Backend::Sqlite(_) => format!("json_extract(e.json, '$.content.{field}')"),
        };
        let name = format!("COALESCE(p.displayname, {})", member_field("displayname"));
        let avatar = format!("COALESCE(p.avatar_url, {})", member_field("avatar_url"));
        let sql = format!(
            "SELECT m.user_id, MIN({name}), MIN({avatar}) FROM room_memberships m \
             JOIN events e ON e.event_nid = m.event_nid \
             LEFT JOIN profiles p ON p.user_id = m.user_id \
             WHERE m.membership = 'join' \
             AND (m.room_nid IN (SELECT s.room_nid FROM room_memberships s WHERE s.user_id = $1 AND s.membership = 'join') \
                  OR m.room_nid IN (SELECT r.room_nid FROM rooms r WHERE r.is_public)) \
             AND (LOWER(m.user_id) LIKE $2 ESCAPE '\\' OR LOWER(COALESCE({name}, '')) LIKE $2 ESCAPE '\\') \
             GROUP BY m.user_id ORDER BY m.user_id LIMIT $3"
        );
        let rows = with_pool!(self, pool => {
            sqlx::query_as::<_, (String, Option<String>, Option<String>)>(sqlx::AssertSqlSafe(sql.clone()))
            .bind(searcher)
            .bind(&pattern)
            .bind(limit + 1)
            .fetch_all(pool)
            .await
        })?;
        Ok(rows)
    }

    /// How far a user has read in a room: the newest of their unthreaded read receipts
    /// and their own latest event, as a stream position (0 when neither exists).
    pub async fn read_position(&self, room_nid: i64, user_id: &str) -> Result<i64, StoreError> {
        let sql = format!("SELECT {}", read_position_sql(self.kind(), "$1", "$2"));
        let position = with_pool!(self, pool => {
            sqlx::query_scalar::<_, i64>(sqlx::AssertSqlSafe(sql.clone()))
                .bind(room_nid)
                .bind(user_id)
                .fetch_one(pool)
                .await
        })?;
        Ok(position)
    }

    /// A user's unread `(notifications, highlights)` in a room: notifying events after their
    /// [`Store::read_position`].
    pub async fn unread_counts(
        &self,
        room_nid: i64,
        user_id: &str,
    ) -> Result<(i64, i64), StoreError> {
        let counts = self.unread_counts_in_rooms(user_id, &[room_nid]).await?;
        Ok(counts.get(&room_nid).copied().unwrap_or((0, 0)))
    }

    /// A user's notifications, newest first, before stream position `before`.
    pub async fn notifications(
        &self,
        user_id: &str,
        before: i64,
        limit: i64,
        only_highlight: bool,
    ) -> Result<Vec<NotificationRow>, StoreError> {
        let highlight = if only_highlight {
            " AND a.highlight"
        } else {
            ""
        };
        let rows = with_pool!(self, pool => {
            let mut out = Vec::new();
            for row in sqlx::query(sqlx::AssertSqlSafe(format!(
                "{EVENT_SELECT} JOIN event_push_actions a ON a.event_nid = e.event_nid \
                 WHERE a.user_id = $1 AND a.notify AND a.stream_ordering < $2{highlight} AND {IN_TIMELINE} \
                 ORDER BY a.stream_ordering DESC LIMIT $3"
            )))
            .bind(user_id)
            .bind(before)
            .bind(limit)
            .fetch_all(pool)
            .await?
            {
                let event = event_from_row!(&row);
                let extra = sqlx::query_as::<_, (String, i64, bool, String)>(
                    "SELECT a.actions, a.ts, a.highlight, r.room_id FROM event_push_actions a \
                     JOIN rooms r ON r.room_nid = a.room_nid WHERE a.event_nid = $1 AND a.user_id = $2",
                )
                .bind(event.event_nid)
                .bind(user_id)
                .fetch_one(pool)
                .await?;
                out.push(NotificationRow { event, actions: extra.0, ts: extra.1, highlight: extra.2, room_id: extra.3 });
            }
            out
        });
        Ok(rows)
    }

    /// Marks a room forgotten for a user who has left it.
    pub async fn forget_room(&self, room_nid: i64, user_id: &str) -> Result<(), StoreError> {
        with_pool!(self, pool => {
            sqlx::query("UPDATE room_memberships SET forgotten = TRUE WHERE room_nid = $1 AND user_id = $2")
                .bind(room_nid)
                .bind(user_id)
                .execute(pool)
                .await
                .map(|_| ())
        })?;
        Ok(())
    }
}

/// Who sends an event to the other servers of its room; what the federation sender's one
/// "ours to send" test reads (`federation::ours_to_send`).
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub enum Delivery {
    /// The event's own server: a local user's event goes out through this server's sender,
    /// another server's is that server's to send.
    #[default]
    BySender,
    /// Another server's user's membership event this server, as the resident, accepted through
    /// `send_join`, `send_leave` or `send_knock` and sends on (that server is not in the room
    /// yet and cannot reach its other servers itself).
    Relay,
    /// A local user's event a resident server accepted and sends on to the room's servers (a
    /// join through `send_join`): sending it again would only repeat it, and a peer reading
    /// the first event it gets from this server would read the join, not what comes after.
    ByResident,
}

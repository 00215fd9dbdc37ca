//! The event graph as stored: each event's edges (`prev_events` and `auth_events` as rows,
//! written by `rooms::persist_events` in the transaction that persists the event), its status,
//! each room's forward extremities and current state group, and the auth chains walked over
//! the auth edges. Reads, and the bulk write of a state snapshot; persisting an event is
//! `rooms::persist_events`.

use std::collections::HashMap;

use sqlx::Row;

use crate::rooms::{EVENT_SELECT, EventRow, event_from_row};
use crate::{Store, StoreError, with_pool};

/// Ids per `IN (...)` list: far below both backends' parameter limits, and plans stay cached
/// for the common sizes.
const IDS_PER_STATEMENT: usize = 256;

/// State entries per `INSERT` of a snapshot (4 parameters each: 2,000 parameters, below
/// SQLite's and PostgreSQL's limits).
const ENTRIES_PER_STATEMENT: usize = 500;

/// Rows of a state group resolved through its delta chain, nearest group winning: the
/// `state_chain` and `state_now` common table expressions, the group bound as `$1`.
macro_rules! resolved_state_cte {
    () => {
        "state_chain (state_group, depth) AS ( \
             SELECT CAST($1 AS BIGINT), 0 \
             UNION ALL \
             SELECT g.parent_group, c.depth + 1 FROM state_groups g \
             JOIN state_chain c ON g.state_group = c.state_group WHERE g.parent_group IS NOT NULL), \
         state_now (event_nid) AS ( \
             SELECT x.event_nid FROM ( \
                 SELECT s.event_nid, ROW_NUMBER() OVER ( \
                     PARTITION BY s.event_type, s.state_key ORDER BY c.depth) AS nearest \
                 FROM state_chain c JOIN state_group_entries s ON s.state_group = c.state_group) AS x \
             WHERE x.nearest = 1)"
    };
}

/// Which list of an event an edge comes from.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub enum EdgeKind {
    /// `prev_events`: the events it follows in the room's history.
    Prev,
    /// `auth_events`: the events that authorise it.
    Auth,
}

impl EdgeKind {
    fn from_column(kind: i64) -> Result<Self, StoreError> {
        match kind {
            0 => Ok(EdgeKind::Prev),
            1 => Ok(EdgeKind::Auth),
            other => Err(StoreError::Database(sqlx::Error::Decode(
                format!("unknown edge kind {other}").into(),
            ))),
        }
    }
}

/// A stored redaction waiting for its target ([`Store::waiting_redactions`]).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct WaitingRedaction {
    pub redaction_event_id: String,
    pub sender: String,
    /// The redaction's sender had the redact power level when it was accepted.
    pub by_power: bool,
}

/// One edge: an event cites another.
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct EventEdge {
    pub kind: EdgeKind,
    pub cited_event_id: String,
    /// The cited event's nid, once it is stored.
    pub cited_event_nid: Option<i64>,
}

/// What became of an event: whether it is part of the room's history and state.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub enum EventStatus {
    #[default]
    Normal,
    /// Stored for an auth chain only: no place in the timeline or the state.
    Outlier,
    /// Failed authorisation, for the reason given; the state after it is the state before it.
    Rejected(String),
    /// Authorised by its own state but not by the room's current state: stored, served over
    /// federation, kept out of timelines and forward extremities.
    SoftFailed,
}

impl EventStatus {
    /// The `status` column's value.
    pub(crate) fn column(&self) -> &'static str {
        match self {
            EventStatus::Normal => "normal",
            EventStatus::Outlier => "outlier",
            EventStatus::Rejected(_) => "rejected",
            EventStatus::SoftFailed => "soft_failed",
        }
    }

    /// The `rejection_reason` column's value.
    pub(crate) fn reason(&self) -> Option<&str> {
        match self {
            EventStatus::Rejected(reason) => Some(reason),
            _ => None,
        }
    }

    pub(crate) fn from_columns(status: &str, reason: Option<String>) -> Result<Self, sqlx::Error> {
        match status {
            "normal" => Ok(EventStatus::Normal),
            "outlier" => Ok(EventStatus::Outlier),
            "rejected" => Ok(EventStatus::Rejected(reason.unwrap_or_default())),
            "soft_failed" => Ok(EventStatus::SoftFailed),
            other => Err(sqlx::Error::Decode(
                format!("unknown event status {other}").into(),
            )),
        }
    }
}

/// Where an appended event goes in the room's history.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum Placement {
    /// At the live end: a stream position after every event so far, seen by sync.
    #[default]
    Live,
    /// Older history fetched backwards: a stream position below every live event (counting
    /// down from 0), so that sync never sees it as new; `/messages` finds it by depth.
    Backfilled,
}

/// One key of the current state that an append changes.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct StateChange {
    pub event_type: String,
    pub state_key: String,
    /// What is at the key now.
    pub value: StateValue,
    /// For `m.room.member`: the membership of that event (`None` when the key leaves).
    pub membership: Option<String>,
}

/// What a key of the current state holds after a change.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum StateValue {
    /// A stored event.
    Event(i64),
    /// The event being appended (which has no nid until it is written).
    Appended,
    /// Nothing: the key leaves the state.
    Absent,
}

/// What an append does to the room's current state (the resolution of the states after its
/// forward extremities, kept as a state group in `room_current_state` and flattened in
/// `current_state`). Decided by the caller, which holds the room's writer lock; the store
/// checks, with compare-and-set on the group, that nobody moved the state meanwhile.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub enum CurrentStateChange {
    /// The event's state before is the current state and it is the room's only forward
    /// extremity afterwards: the current state becomes the state after it. (A room's first
    /// event starts the current state.)
    #[default]
    Extend,
    /// The current state stays as it is (an outlier, a rejected, soft-failed or backfilled
    /// event, or a fork whose resolution changes nothing).
    Unchanged,
    /// The forks' states resolve to the current state `expected` with `changes` applied.
    Resolved {
        expected: i64,
        changes: Vec<StateChange>,
    },
    /// The room has no current state here yet (this server joins it through another server,
    /// which gave the state before the join): its current state becomes the state after the
    /// event, `entries` being all of it (the event itself as [`StateValue::Appended`] when it
    /// is a state event).
    Adopt { entries: Vec<StateChange> },
    /// This server joins again, through another server, a room it had left: its current state
    /// becomes the state after the event whatever it kept from before (`changes` being where
    /// that differs from group `expected`, compare-and-set as for `Resolved`), and the room's
    /// other forward extremities are dropped. What it kept is history it stopped following (a
    /// ban since lifted, say); resolving it against the join's state could let it win.
    Restart {
        expected: i64,
        changes: Vec<StateChange>,
    },
}

impl Store {
    /// The redactions of room `room_nid` stored before their target `target_event_id` arrived
    /// (normal redactions only: a rejected or soft-failed one redacts nothing).
    pub async fn waiting_redactions(
        &self,
        room_nid: i64,
        target_event_id: &str,
    ) -> Result<Vec<WaitingRedaction>, StoreError> {
        let rows = with_pool!(self, pool => {
            sqlx::query_as::<_, (String, String, bool)>(
                "SELECT e.event_id, e.sender, w.by_power FROM pending_redactions w \
                 JOIN events e ON e.event_nid = w.redaction_nid \
                 WHERE w.target_event_id = $1 AND w.room_nid = $2 AND e.status = 'normal' \
                 ORDER BY e.stream_ordering",
            )
            .bind(target_event_id)
            .bind(room_nid)
            .fetch_all(pool)
            .await?
        });
        Ok(rows
            .into_iter()
            .map(|(redaction_event_id, sender, by_power)| WaitingRedaction {
                redaction_event_id,
                sender,
                by_power,
            })
            .collect())
    }

    /// The edges of an event, prev edges first, each kind in cited id order (byte order).
    pub async fn event_edges(&self, event_nid: i64) -> Result<Vec<EventEdge>, StoreError> {
        let edges = with_pool!(self, pool => {
            let mut out = Vec::new();
            for row in sqlx::query(
                "SELECT CAST(kind AS BIGINT) AS kind, cited_event_id, cited_event_nid FROM event_edges \
                 WHERE event_nid = $1",
            )
            .bind(event_nid)
            .fetch_all(pool)
            .await?
            {
                out.push(EventEdge {
                    kind: EdgeKind::from_column(row.try_get("kind")?)?,
                    cited_event_id: row.try_get("cited_event_id")?,
                    cited_event_nid: row.try_get("cited_event_nid")?,
                });
            }
            out
        });
        let mut edges = edges;
        edges.sort();
        Ok(edges)
    }

    /// The room's backward extremities, oldest first, at most `limit`: prev events that
    /// events of its history cite and whose own history this server lacks (not stored, or
    /// stored only as outliers, like the prev events of a join through another server). Where
    /// `/backfill` starts.
    pub async fn backward_extremities(
        &self,
        room_nid: i64,
        limit: i64,
    ) -> Result<Vec<String>, StoreError> {
        let rows = with_pool!(self, pool => {
            sqlx::query_as::<_, (String, i64)>(
                "SELECT g.cited_event_id, MIN(e.depth) AS depth FROM event_edges g \
                 JOIN events e ON e.event_nid = g.event_nid \
                 LEFT JOIN events c ON c.event_nid = g.cited_event_nid \
                 WHERE e.room_nid = $1 AND g.kind = 0 AND e.status <> 'outlier' \
                 AND (g.cited_event_nid IS NULL OR c.status = 'outlier') \
                 GROUP BY g.cited_event_id ORDER BY depth, g.cited_event_id LIMIT $2",
            )
            .bind(room_nid)
            .bind(limit)
            .fetch_all(pool)
            .await?
        });
        Ok(rows.into_iter().map(|(id, _)| id).collect())
    }

    /// Of the events `event_nids`, those that cite a prev event this server does not hold in
    /// its graph (not stored, or only as an outlier): the timeline has a gap right before
    /// each of them (history another server has and this one did not fetch).
    pub async fn events_after_gaps(
        &self,
        event_nids: &[i64],
    ) -> Result<std::collections::HashSet<i64>, StoreError> {
        const CHUNK: usize = 256;
        let mut out = std::collections::HashSet::new();
        for chunk in event_nids.chunks(CHUNK) {
            let placeholders: Vec<String> = (1..=chunk.len()).map(|i| format!("${i}")).collect();
            let sql = format!(
                "SELECT DISTINCT g.event_nid FROM event_edges g \
                 LEFT JOIN events c ON c.event_nid = g.cited_event_nid \
                 WHERE g.event_nid IN ({}) AND g.kind = 0 \
                 AND (g.cited_event_nid IS NULL OR c.status = 'outlier')",
                placeholders.join(", ")
            );
            with_pool!(self, pool => {
                let mut query = sqlx::query_scalar::<_, i64>(sqlx::AssertSqlSafe(sql.clone()));
                for nid in chunk {
                    query = query.bind(*nid);
                }
                out.extend(query.fetch_all(pool).await?);
            });
        }
        Ok(out)
    }

    /// A room's forward extremities: the nids of its events that no stored event cites as a
    /// prev event, in nid order.
    pub async fn forward_extremities(&self, room_nid: i64) -> Result<Vec<i64>, StoreError> {
        let nids = with_pool!(self, pool => {
            sqlx::query_scalar::<_, i64>(
                "SELECT event_nid FROM forward_extremities WHERE room_nid = $1 ORDER BY event_nid",
            )
            .bind(room_nid)
            .fetch_all(pool)
            .await?
        });
        Ok(nids)
    }

    /// An event's status, `None` if it is not stored.
    pub async fn event_status(&self, event_nid: i64) -> Result<Option<EventStatus>, StoreError> {
        let row = with_pool!(self, pool => {
            match sqlx::query("SELECT status, rejection_reason FROM events WHERE event_nid = $1")
                .bind(event_nid)
                .fetch_optional(pool)
                .await?
            {
                Some(row) => Some((
                    row.try_get::<String, _>("status")?,
                    row.try_get::<Option<String>, _>("rejection_reason")?,
                )),
                None => None,
            }
        });
        Ok(row
            .map(|(status, reason)| EventStatus::from_columns(&status, reason))
            .transpose()?)
    }
}

impl Store {
    /// The auth chain of every event in the state of `group` and of the events `extra`: every
    /// event reachable from them through `auth_events` edges (the starting events only when
    /// reachable from another), as `(nid, event id)`. One recursive statement over the key of
    /// `event_edges` (event, kind, cited event; it carries the cited nid), so state resolution's
    /// auth difference and `/event_auth` never walk the graph one round trip per event. Edges to events not stored are not followed.
    pub async fn auth_chain(
        &self,
        group: Option<i64>,
        extra: &[i64],
    ) -> Result<Vec<(i64, String)>, StoreError> {
        // Extra starts are bound after the group; a few at most (an event's auth events).
        let extra_starts: String = (0..extra.len())
            .map(|i| format!(" UNION SELECT CAST(${} AS BIGINT)", i + 2))
            .collect();
        let sql = format!(
            "WITH RECURSIVE {}, \
             starts (event_nid) AS (SELECT event_nid FROM state_now{extra_starts}), \
             chain (event_nid) AS ( \
                 SELECT g.cited_event_nid FROM event_edges g JOIN starts s ON g.event_nid = s.event_nid \
                 WHERE g.kind = 1 AND g.cited_event_nid IS NOT NULL \
                 UNION \
                 SELECT g.cited_event_nid FROM event_edges g JOIN chain c ON g.event_nid = c.event_nid \
                 WHERE g.kind = 1 AND g.cited_event_nid IS NOT NULL) \
             SELECT c.event_nid, e.event_id FROM chain c JOIN events e ON e.event_nid = c.event_nid",
            resolved_state_cte!()
        );
        let rows = with_pool!(self, pool => {
            let mut query = sqlx::query(sqlx::AssertSqlSafe(sql.clone())).bind(group);
            for nid in extra {
                query = query.bind(*nid);
            }
            let mut out = Vec::new();
            for row in query.fetch_all(pool).await? {
                out.push((row.try_get::<i64, _>(0)?, row.try_get::<String, _>(1)?));
            }
            out
        });
        Ok(rows)
    }

    /// The ids of stored events by nid; nids not stored are left out.
    pub async fn event_ids_by_nids(
        &self,
        nids: &[i64],
    ) -> Result<HashMap<i64, String>, StoreError> {
        let mut out = HashMap::with_capacity(nids.len());
        for chunk in nids.chunks(IDS_PER_STATEMENT) {
            let placeholders: Vec<String> = (1..=chunk.len()).map(|i| format!("${i}")).collect();
            let sql = format!(
                "SELECT event_nid, event_id FROM events WHERE event_nid IN ({})",
                placeholders.join(", ")
            );
            with_pool!(self, pool => {
                let mut query = sqlx::query(sqlx::AssertSqlSafe(sql.clone()));
                for nid in chunk {
                    query = query.bind(*nid);
                }
                for row in query.fetch_all(pool).await? {
                    out.insert(row.try_get::<i64, _>(0)?, row.try_get::<String, _>(1)?);
                }
            });
        }
        Ok(out)
    }

    /// A room's current state group (`None` before its first event).
    pub async fn current_state_group(&self, room_nid: i64) -> Result<Option<i64>, StoreError> {
        let group = with_pool!(self, pool => {
            sqlx::query_scalar::<_, i64>("SELECT state_group FROM room_current_state WHERE room_nid = $1")
                .bind(room_nid)
                .fetch_optional(pool)
                .await?
        });
        Ok(group)
    }

    /// A room's forward extremities with the state after each: `(event nid, event id, depth,
    /// state group)`, deepest first. Extremities are normal events, which have state; the
    /// group is `None` only if the data says otherwise.
    pub async fn extremities_with_state(
        &self,
        room_nid: i64,
    ) -> Result<Vec<(i64, String, i64, Option<i64>)>, StoreError> {
        let rows = with_pool!(self, pool => {
            let mut out = Vec::new();
            for row in sqlx::query(
                "SELECT e.event_nid, e.event_id, e.depth, e.state_group FROM forward_extremities f \
                 JOIN events e ON e.event_nid = f.event_nid WHERE f.room_nid = $1 \
                 ORDER BY e.depth DESC, e.stream_ordering DESC",
            )
            .bind(room_nid)
            .fetch_all(pool)
            .await?
            {
                out.push((row.try_get(0)?, row.try_get(1)?, row.try_get(2)?, row.try_get(3)?));
            }
            out
        });
        Ok(rows)
    }

    /// Writes a state snapshot as a new group of `room_nid` in one transaction, many entries per
    /// statement. With no `parent`, `entries` are the whole state (what a remote join does with
    /// the room state it is sent: tens of thousands of members, where one statement per entry
    /// would take seconds). With a `parent`, `entries` are what differs from it (a merge of forks)
    /// and the group is a delta over it while the parent's chain is short, else a full copy of
    /// the parent's state with `entries` applied. The events must be stored (as outliers,
    /// typically). Returns the group.
    pub async fn create_state_group(
        &self,
        room_nid: i64,
        parent: Option<i64>,
        entries: &[(&str, &str, i64)],
    ) -> Result<i64, StoreError> {
        let group = with_pool!(self, pool => {
            let mut tx = crate::store::BeginWrite::begin_write(pool, &self.write_gate).await?;
            let parent_len: Option<i64> = match parent {
                Some(parent) => sqlx::query_scalar(
                    "SELECT CAST(chain_length AS BIGINT) FROM state_groups WHERE state_group = $1",
                )
                .bind(parent)
                .fetch_optional(&mut *tx)
                .await?,
                None => None,
            };
            let (delta_parent, chain_length) = match parent_len {
                Some(len) if len < crate::rooms::MAX_STATE_CHAIN => (parent, len + 1),
                _ => (None, 0),
            };
            let group: i64 = sqlx::query_scalar(
                "INSERT INTO state_groups (room_nid, parent_group, chain_length) VALUES ($1, $2, $3) \
                 RETURNING state_group",
            )
            .bind(room_nid)
            .bind(delta_parent)
            .bind(chain_length as i32)
            .fetch_one(&mut *tx)
            .await?;
            if delta_parent.is_none()
                && let Some(parent) = parent
            {
                sqlx::query(crate::rooms::COPY_STATE_SQL)
                    .bind(group)
                    .bind(parent)
                    .execute(&mut *tx)
                    .await?;
            }
            for chunk in entries.chunks(ENTRIES_PER_STATEMENT) {
                let rows: Vec<String> = (0..chunk.len())
                    .map(|i| format!("($1, ${}, ${}, ${})", 3 * i + 2, 3 * i + 3, 3 * i + 4))
                    .collect();
                let sql = format!(
                    "INSERT INTO state_group_entries (state_group, event_type, state_key, event_nid) VALUES {} \
                     ON CONFLICT (state_group, event_type, state_key) DO UPDATE SET event_nid = excluded.event_nid",
                    rows.join(", ")
                );
                let mut query = sqlx::query(sqlx::AssertSqlSafe(sql)).bind(group);
                for (event_type, state_key, nid) in chunk {
                    query = query.bind(*event_type).bind(*state_key).bind(*nid);
                }
                query.execute(&mut *tx).await?;
            }
            tx.commit().await?;
            group
        });
        Ok(group)
    }
}

/// An event stored as an outlier: for its place in auth chains and states only (see
/// [`Store::persist_outliers`]).
#[derive(Debug, Clone, Default)]
pub struct OutlierEvent<'a> {
    pub event_id: &'a str,
    pub event_type: &'a str,
    pub state_key: Option<&'a str>,
    pub sender: &'a str,
    pub depth: i64,
    pub origin_server_ts: i64,
    pub json: &'a str,
    pub prev_event_ids: &'a [String],
    pub auth_event_ids: &'a [String],
    /// Rejected by its auth events, for this reason (it stays an outlier, flagged).
    pub rejected: Option<&'a str>,
}

/// Outlier rows per `INSERT` (11 parameters each).
const OUTLIERS_PER_STATEMENT: usize = 400;
/// Edge rows per `INSERT` of outliers' edges (3 parameters each).
const OUTLIER_EDGES_PER_STATEMENT: usize = 600;

impl Store {
    /// Stores events as outliers of room `room_nid` in one transaction, many rows per
    /// statement: the state and auth chain a remote join brings (tens of thousands of events).
    /// Outliers take stream positions below every live event, have no state and are never part
    /// of a timeline; events already stored are left as they are. Returns the nids of all the
    /// given events (stored now or before), by id.
    pub async fn persist_outliers(
        &self,
        room_nid: i64,
        events: &[OutlierEvent<'_>],
    ) -> Result<HashMap<String, i64>, StoreError> {
        let count = i64::try_from(events.len()).unwrap_or(i64::MAX);
        let nids = with_pool!(self, pool => {
            let mut tx = crate::store::BeginWrite::begin_write(pool, &self.write_gate).await?;
            let lowest: i64 = sqlx::query_scalar(
                "UPDATE stream_positions SET position = position - $1 WHERE stream = 'backfill' RETURNING position",
            )
            .bind(count)
            .fetch_one(&mut *tx)
            .await?;
            // Positions lowest + count - 1 down to lowest, in the order given. The nids of the
            // new rows come back with them; those stored before are looked up after.
            let mut nids: HashMap<String, i64> = HashMap::with_capacity(events.len());
            for (chunk_index, chunk) in events.chunks(OUTLIERS_PER_STATEMENT).enumerate() {
                let rows: Vec<String> = (0..chunk.len())
                    .map(|i| {
                        let n = 11 * i;
                        format!(
                            "(${}, $1, ${}, ${}, ${}, ${}, ${}, ${}, ${}, NULL, NULL, ${}, ${}, ${}, ${})",
                            n + 2, n + 3, n + 4, n + 5, n + 6, n + 7, n + 8, n + 9, n + 10, n + 11, n + 12, n + 4
                        )
                    })
                    .collect();
                let sql = format!(
                    "INSERT INTO events (event_id, room_nid, stream_ordering, depth, event_type, state_key, sender, \
                     origin_server_ts, json, state_group, state_group_before, status, rejection_reason, \
                     prev_state_nid, topological_ordering) VALUES {} ON CONFLICT (event_id) DO NOTHING \
                     RETURNING event_id, event_nid",
                    rows.join(", ")
                );
                let mut query = sqlx::query(sqlx::AssertSqlSafe(sql)).bind(room_nid);
                for (i, event) in chunk.iter().enumerate() {
                    let position = lowest + count - 1 - (chunk_index * OUTLIERS_PER_STATEMENT + i) as i64;
                    query = query
                        .bind(event.event_id)
                        .bind(position)
                        .bind(event.depth)
                        .bind(event.event_type)
                        .bind(event.state_key)
                        .bind(event.sender)
                        .bind(event.origin_server_ts)
                        .bind(event.json)
                        .bind(if event.rejected.is_some() { "rejected" } else { "outlier" })
                        .bind(event.rejected)
                        .bind(None::<i64>);
                }
                for row in query.fetch_all(&mut *tx).await? {
                    nids.insert(row.try_get::<String, _>(0)?, row.try_get::<i64, _>(1)?);
                }
            }
            // Events stored before (given again, or cited from outside the batch): by id.
            let mut unknown: Vec<&str> = events
                .iter()
                .map(|e| e.event_id)
                .chain(events.iter().flat_map(|e| e.prev_event_ids.iter().chain(e.auth_event_ids.iter()).map(String::as_str)))
                .filter(|id| !nids.contains_key(*id))
                .collect();
            unknown.sort_unstable();
            unknown.dedup();
            for chunk in unknown.chunks(IDS_PER_STATEMENT) {
                let placeholders: Vec<String> = (1..=chunk.len()).map(|i| format!("${i}")).collect();
                let sql = format!(
                    "SELECT event_id, event_nid FROM events WHERE event_id IN ({})",
                    placeholders.join(", ")
                );
                let mut query = sqlx::query(sqlx::AssertSqlSafe(sql));
                for id in chunk {
                    query = query.bind(*id);
                }
                for row in query.fetch_all(&mut *tx).await? {
                    nids.insert(row.try_get::<String, _>(0)?, row.try_get::<i64, _>(1)?);
                }
            }
            // The edges of the events written now (an event stored before keeps its own).
            let edges: Vec<(i64, u8, &str, Option<i64>)> = events
                .iter()
                .filter_map(|e| nids.get(e.event_id).map(|nid| (e, *nid)))
                .flat_map(|(e, nid)| {
                    let nids = &nids;
                    e.prev_event_ids
                        .iter()
                        .map(move |id| (nid, 0u8, id.as_str(), nids.get(id.as_str()).copied()))
                        .chain(e.auth_event_ids.iter().map(move |id| (nid, 1u8, id.as_str(), nids.get(id.as_str()).copied())))
                })
                .collect();
            for chunk in edges.chunks(OUTLIER_EDGES_PER_STATEMENT) {
                let rows: Vec<String> = chunk
                    .iter()
                    .enumerate()
                    .map(|(i, (_, kind, _, _))| format!("(${}, {kind}, ${}, ${})", 3 * i + 1, 3 * i + 2, 3 * i + 3))
                    .collect();
                let sql = format!(
                    "INSERT INTO event_edges (event_nid, kind, cited_event_id, cited_event_nid) VALUES {} \
                     ON CONFLICT DO NOTHING",
                    rows.join(", ")
                );
                let mut query = sqlx::query(sqlx::AssertSqlSafe(sql));
                for (nid, _, cited, cited_nid) in chunk {
                    query = query.bind(*nid).bind(*cited).bind(*cited_nid);
                }
                query.execute(&mut *tx).await?;
            }
            // Events stored before that cite these learn their nids.
            for chunk in events.chunks(IDS_PER_STATEMENT) {
                let placeholders: Vec<String> = (1..=chunk.len()).map(|i| format!("${i}")).collect();
                let sql = format!(
                    "UPDATE event_edges SET cited_event_nid = \
                     (SELECT e.event_nid FROM events e WHERE e.event_id = event_edges.cited_event_id) \
                     WHERE cited_event_nid IS NULL AND cited_event_id IN ({})",
                    placeholders.join(", ")
                );
                let mut query = sqlx::query(sqlx::AssertSqlSafe(sql));
                for event in chunk {
                    query = query.bind(event.event_id);
                }
                query.execute(&mut *tx).await?;
            }
            tx.commit().await?;
            events
                .iter()
                .filter_map(|e| nids.get(e.event_id).map(|nid| (e.event_id.to_owned(), *nid)))
                .collect::<HashMap<String, i64>>()
        });
        Ok(nids)
    }
}

/// The most events one walk of [`Store::history_before`] returns, whatever the caller asks.
const HISTORY_WALK_MAX: i64 = 1_000;

impl Store {
    /// The state before an event: the state group of the state at its prev events. `None` for
    /// a room's first event (the empty state), for an outlier (no place in the room's state)
    /// and for an event not stored.
    pub async fn state_group_before(&self, event_nid: i64) -> Result<Option<i64>, StoreError> {
        let group = with_pool!(self, pool => {
            sqlx::query_scalar::<_, Option<i64>>(
                "SELECT state_group_before FROM events WHERE event_nid = $1",
            )
            .bind(event_nid)
            .fetch_optional(pool)
            .await?
            .flatten()
        });
        Ok(group)
    }

    /// The stored events that the events `nids` cite in `prev_events`, each once, any room and
    /// any status (the caller decides which to follow): one step of a walk back through a
    /// room's history, over the edges' primary key.
    pub async fn prev_events(&self, nids: &[i64]) -> Result<Vec<EventRow>, StoreError> {
        let mut out: Vec<EventRow> = Vec::new();
        for chunk in nids.chunks(IDS_PER_STATEMENT) {
            let sql = format!(
                "{} WHERE e.event_nid IN (SELECT g.cited_event_nid FROM event_edges g \
                 WHERE g.kind = 0 AND g.cited_event_nid IS NOT NULL AND g.event_nid IN ({}))",
                EVENT_SELECT,
                placeholders(chunk.len())
            );
            with_pool!(self, pool => {
                let mut query = sqlx::query(sqlx::AssertSqlSafe(sql.clone()));
                for nid in chunk {
                    query = query.bind(*nid);
                }
                for row in query.fetch_all(pool).await? {
                    out.push(event_from_row!(&row));
                }
            });
        }
        // Chunks may cite the same event.
        out.sort_by_key(|row| row.event_nid);
        out.dedup_by_key(|row| row.event_nid);
        Ok(out)
    }

    /// Room `room_nid`'s history up to and including the events `seeds`: the seeds and every
    /// event reached from them back through `prev_events` edges, deepest first (then latest
    /// stored), at most `limit` (and never more than [`HISTORY_WALK_MAX`]), only those that
    /// are part of the history (normal or soft-failed). The walk passes through the room's
    /// events of depth `min_depth` or more, which bounds it, rejected ones included (an event
    /// may cite one and still be accepted, and what is behind it is history too) but never
    /// outliers: one recursive statement, each event visited once. Each step reads the edges
    /// of the events just reached (the key of `event_edges`) and looks each cited event up by
    /// its key, a subquery rather than a join so that a planner without statistics on a young
    /// database cannot turn the step into a scan of the room's events per event.
    pub async fn history_before(
        &self,
        room_nid: i64,
        seeds: &[i64],
        min_depth: i64,
        limit: i64,
    ) -> Result<Vec<EventRow>, StoreError> {
        if seeds.is_empty() || limit <= 0 {
            return Ok(Vec::new());
        }
        // The seeds are few (a backfill request names its starting events); bound after the
        // room, the depth and the limit.
        let seeds = &seeds[..seeds.len().min(IDS_PER_STATEMENT)];
        let seed_list: Vec<String> = (0..seeds.len()).map(|i| format!("${}", i + 4)).collect();
        let sql = format!(
            "WITH RECURSIVE walk (event_nid) AS ( \
                 SELECT e.event_nid FROM events e WHERE e.room_nid = $1 AND e.event_nid IN ({}) \
                 UNION \
                 SELECT g.cited_event_nid FROM walk w \
                 JOIN event_edges g ON g.event_nid = w.event_nid AND g.kind = 0 \
                 WHERE (SELECT c.depth FROM events c WHERE c.event_nid = g.cited_event_nid \
                     AND c.room_nid = $1 AND c.status <> 'outlier') >= $2) \
             {} JOIN walk w ON w.event_nid = e.event_nid WHERE e.status IN ('normal', 'soft_failed') \
             ORDER BY e.depth DESC, e.stream_ordering DESC LIMIT $3",
            seed_list.join(", "),
            EVENT_SELECT
        );
        let rows = with_pool!(self, pool => {
            let mut query = sqlx::query(sqlx::AssertSqlSafe(sql.clone()))
                .bind(room_nid)
                .bind(min_depth)
                .bind(limit.min(HISTORY_WALK_MAX));
            for nid in seeds {
                query = query.bind(*nid);
            }
            let mut out = Vec::new();
            for row in query.fetch_all(pool).await? {
                out.push(event_from_row!(&row));
            }
            out
        });
        Ok(rows)
    }

    /// The memberships, in room `room_nid`'s current state, of the users of server `server`
    /// (their user ids end in `:server`): `(user id, membership)`. What other servers' requests
    /// are checked against: whether the asking server is in the room, and which of its users'
    /// memberships to look up in older states (a membership key, once in a room's state, stays).
    pub async fn server_memberships(
        &self,
        room_nid: i64,
        server: &str,
    ) -> Result<Vec<(String, String)>, StoreError> {
        let rows = with_pool!(self, pool => {
            sqlx::query_as::<_, (String, String)>(
                "SELECT user_id, membership FROM room_memberships WHERE room_nid = $1 \
                 AND substr(user_id, length(user_id) - length($2)) = ':' || $2 ORDER BY user_id",
            )
            .bind(room_nid)
            .bind(server)
            .fetch_all(pool)
            .await?
        });
        Ok(rows)
    }
}

/// `$1, $2, ... $n`.
fn placeholders(n: usize) -> String {
    (1..=n)
        .map(|i| format!("${i}"))
        .collect::<Vec<_>>()
        .join(", ")
}

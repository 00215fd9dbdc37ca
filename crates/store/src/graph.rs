//! The event graph as stored: each event's edges (`prev_events` and `auth_events` as rows,
//! written by `rooms::persist_events` in the transaction that persists the event), its status,
//! and each room's forward extremities. Reads only; writing is part of persisting an event.

use sqlx::Row;

use crate::{Store, StoreError, with_pool};

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
    /// The event now at the key; `None` when the key leaves the state.
    pub event_nid: Option<i64>,
    /// For `m.room.member`: the membership of that event (`None` when the key leaves).
    pub membership: Option<String>,
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
}

impl Store {
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

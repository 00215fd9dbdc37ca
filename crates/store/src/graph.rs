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
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum EventStatus {
    Normal,
    /// Stored for an auth chain only: no place in the timeline or the state.
    Outlier,
    /// Failed authorisation, for the reason given; the state after it is the state before it.
    Rejected(String),
    /// Authorised by its own state but not by the room's current state: stored, served over
    /// federation, kept out of timelines and forward extremities.
    SoftFailed,
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
        row.map(|(status, reason)| match status.as_str() {
            "normal" => Ok(EventStatus::Normal),
            "outlier" => Ok(EventStatus::Outlier),
            "rejected" => Ok(EventStatus::Rejected(reason.unwrap_or_default())),
            "soft_failed" => Ok(EventStatus::SoftFailed),
            other => Err(StoreError::Database(sqlx::Error::Decode(
                format!("unknown event status {other}").into(),
            ))),
        })
        .transpose()
    }
}

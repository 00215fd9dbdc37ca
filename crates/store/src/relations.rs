//! Relations between events: the reads behind `/relations`, `/threads` and the aggregations
//! bundled into events' `unsigned.m.relations`. Rows of `event_relations` are written by
//! `persist_events` (from [`crate::NewEvent::relation`]) and deleted when their event is redacted.

use std::collections::HashSet;

use sqlx::Row;

use crate::{
    EventRow, Store, StoreError,
    rooms::{EVENT_SELECT, IN_TIMELINE, event_from_row},
    with_pool,
};

/// Which relating events `/relations` asks for.
#[derive(Debug, Clone, Copy)]
pub struct RelationsQuery<'a> {
    pub room_nid: i64,
    /// The events related to (one, or several with `recurse`).
    pub parents: &'a [String],
    pub rel_type: Option<&'a str>,
    pub event_type: Option<&'a str>,
    /// Stream positions strictly between which to look.
    pub after: i64,
    pub before: i64,
    pub backwards: bool,
    pub limit: i64,
}

/// What relates to one event, per relation type, as one reader sees the counts.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RelationCount {
    pub parent_event_id: String,
    pub rel_type: String,
    pub count: i64,
    /// The newest relating event of this type (stream order).
    pub latest_event_nid: i64,
    /// Whether the reader sent one of them.
    pub reader_sent: bool,
}

/// A thread root of a room, with the stream position of its newest reply.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ThreadRoot {
    pub root_event_id: String,
    pub latest_stream_ordering: i64,
}

/// Bounded lists of placeholders, as in `events_by_nids`.
const CHUNK: usize = 256;

fn placeholders(from: usize, count: usize) -> String {
    (from..from + count)
        .map(|i| format!("${i}"))
        .collect::<Vec<_>>()
        .join(", ")
}

impl Store {
    /// The events relating to `parents`, in stream order, at most `limit`.
    pub async fn relating_events(
        &self,
        query: &RelationsQuery<'_>,
    ) -> Result<Vec<EventRow>, StoreError> {
        if query.parents.is_empty() {
            return Ok(Vec::new());
        }
        let parents = &query.parents[..query.parents.len().min(CHUNK)];
        let order = if query.backwards { "DESC" } else { "ASC" };
        let sql = format!(
            "{EVENT_SELECT} JOIN event_relations rel ON rel.event_nid = e.event_nid \
             WHERE rel.room_nid = $1 AND rel.stream_ordering > $2 AND rel.stream_ordering < $3 \
             AND ($4 IS NULL OR rel.rel_type = $4) AND ($5 IS NULL OR rel.event_type = $5) \
             AND rel.parent_event_id IN ({}) AND {IN_TIMELINE} \
             ORDER BY rel.stream_ordering {order} LIMIT $6",
            placeholders(7, parents.len())
        );
        let rows = with_pool!(self, pool => {
            let mut q = sqlx::query(sqlx::AssertSqlSafe(sql))
                .bind(query.room_nid)
                .bind(query.after)
                .bind(query.before)
                .bind(query.rel_type)
                .bind(query.event_type)
                .bind(query.limit);
            for parent in parents {
                q = q.bind(parent);
            }
            let mut out = Vec::new();
            for row in q.fetch_all(pool).await? {
                out.push(event_from_row!(&row));
            }
            out
        });
        Ok(rows)
    }

    /// The ids of the events relating to `parents` (any type), at most `limit`: the next level
    /// of a recursive `/relations`.
    pub async fn relating_event_ids(
        &self,
        room_nid: i64,
        parents: &[String],
        limit: i64,
    ) -> Result<Vec<String>, StoreError> {
        if parents.is_empty() {
            return Ok(Vec::new());
        }
        let parents = &parents[..parents.len().min(CHUNK)];
        let sql = format!(
            "SELECT e.event_id FROM event_relations rel JOIN events e ON e.event_nid = rel.event_nid \
             WHERE rel.room_nid = $1 AND rel.parent_event_id IN ({}) AND {IN_TIMELINE} \
             ORDER BY rel.stream_ordering LIMIT $2",
            placeholders(3, parents.len())
        );
        let ids = with_pool!(self, pool => {
            let mut q = sqlx::query_scalar::<_, String>(sqlx::AssertSqlSafe(sql))
                .bind(room_nid)
                .bind(limit);
            for parent in parents {
                q = q.bind(parent);
            }
            q.fetch_all(pool).await?
        });
        Ok(ids)
    }

    /// Which of `parents` (of any rooms) some stored event relates to by one of `rel_types`:
    /// a cheap look at many events at once, to pass over those with nothing to bundle. It
    /// counts every relating event, including ones a reader may not see.
    pub async fn related_parents(
        &self,
        parents: &[String],
        rel_types: &[&str],
    ) -> Result<HashSet<String>, StoreError> {
        let mut out = HashSet::new();
        if rel_types.is_empty() {
            return Ok(out);
        }
        for chunk in parents.chunks(CHUNK) {
            let sql = format!(
                "SELECT DISTINCT parent_event_id FROM event_relations \
                 WHERE parent_event_id IN ({}) AND rel_type IN ({})",
                placeholders(1, chunk.len()),
                placeholders(1 + chunk.len(), rel_types.len())
            );
            with_pool!(self, pool => {
                let mut q = sqlx::query_scalar::<_, String>(sqlx::AssertSqlSafe(sql));
                for parent in chunk {
                    q = q.bind(parent);
                }
                for rel_type in rel_types {
                    q = q.bind(*rel_type);
                }
                out.extend(q.fetch_all(pool).await?);
            });
        }
        Ok(out)
    }

    /// Per parent and relation type: how many events relate, the newest of them, and whether
    /// `reader` sent one. Only `rel_types` are counted.
    pub async fn relation_counts(
        &self,
        room_nid: i64,
        parents: &[String],
        rel_types: &[&str],
        reader: &str,
    ) -> Result<Vec<RelationCount>, StoreError> {
        let mut out = Vec::new();
        if rel_types.is_empty() {
            return Ok(out);
        }
        for chunk in parents.chunks(CHUNK) {
            let types_from = 3 + chunk.len();
            let sql = format!(
                "SELECT rel.parent_event_id, rel.rel_type, COUNT(*) AS count, \
                 MAX(rel.stream_ordering) AS latest, \
                 SUM(CASE WHEN rel.sender = $2 THEN 1 ELSE 0 END) AS mine \
                 FROM event_relations rel JOIN events e ON e.event_nid = rel.event_nid \
                 WHERE rel.room_nid = $1 AND rel.parent_event_id IN ({}) AND rel.rel_type IN ({}) \
                 AND {IN_TIMELINE} \
                 GROUP BY rel.parent_event_id, rel.rel_type",
                placeholders(3, chunk.len()),
                placeholders(types_from, rel_types.len())
            );
            let rows: Vec<(String, String, i64, i64, i64)> = with_pool!(self, pool => {
                let mut q = sqlx::query(sqlx::AssertSqlSafe(sql))
                    .bind(room_nid)
                    .bind(reader);
                for parent in chunk {
                    q = q.bind(parent);
                }
                for rel_type in rel_types {
                    q = q.bind(*rel_type);
                }
                let mut rows = Vec::new();
                for row in q.fetch_all(pool).await? {
                    rows.push((
                        row.try_get("parent_event_id")?,
                        row.try_get("rel_type")?,
                        row.try_get("count")?,
                        row.try_get("latest")?,
                        row.try_get("mine")?,
                    ));
                }
                rows
            });
            if rows.is_empty() {
                continue;
            }
            // The newest relating events, by their stream positions (unique).
            let positions: Vec<i64> = rows.iter().map(|r| r.3).collect();
            let sql = format!(
                "SELECT event_nid, stream_ordering FROM events WHERE stream_ordering IN ({})",
                placeholders(1, positions.len())
            );
            let nids: Vec<(i64, i64)> = with_pool!(self, pool => {
                let mut q = sqlx::query_as::<_, (i64, i64)>(sqlx::AssertSqlSafe(sql));
                for position in &positions {
                    q = q.bind(*position);
                }
                q.fetch_all(pool).await?
            });
            for (parent_event_id, rel_type, count, latest, mine) in rows {
                let Some((latest_event_nid, _)) = nids.iter().find(|(_, p)| *p == latest) else {
                    continue;
                };
                out.push(RelationCount {
                    parent_event_id,
                    rel_type,
                    count,
                    latest_event_nid: *latest_event_nid,
                    reader_sent: mine > 0,
                });
            }
        }
        Ok(out)
    }

    /// The events of type `rel_type` relating to `parents` that were sent by the parent's own
    /// sender with the parent's own type (the only valid edits), oldest first. Used for
    /// `m.replace`, whose latest valid edit is bundled.
    pub async fn same_sender_relations(
        &self,
        room_nid: i64,
        parents: &[String],
        rel_type: &str,
    ) -> Result<Vec<(String, EventRow)>, StoreError> {
        let mut out = Vec::new();
        for chunk in parents.chunks(CHUNK) {
            // The parent's id beside the usual event columns.
            let columns = EVENT_SELECT
                .strip_prefix("SELECT ")
                .expect("EVENT_SELECT starts with SELECT");
            let sql = format!(
                "SELECT rel.parent_event_id AS rel_parent, {columns} \
                 JOIN event_relations rel ON rel.event_nid = e.event_nid \
                 JOIN events parent ON parent.event_id = rel.parent_event_id \
                 WHERE rel.room_nid = $1 AND rel.rel_type = $2 AND rel.parent_event_id IN ({}) \
                 AND parent.room_nid = rel.room_nid AND parent.sender = rel.sender \
                 AND parent.event_type = rel.event_type AND parent.state_key IS NULL AND {IN_TIMELINE} \
                 ORDER BY rel.stream_ordering",
                placeholders(3, chunk.len())
            );
            with_pool!(self, pool => {
                let mut q = sqlx::query(sqlx::AssertSqlSafe(sql))
                    .bind(room_nid)
                    .bind(rel_type);
                for parent in chunk {
                    q = q.bind(parent);
                }
                for row in q.fetch_all(pool).await? {
                    let parent: String = row.try_get("rel_parent")?;
                    out.push((parent, event_from_row!(&row)));
                }
            });
        }
        Ok(out)
    }

    /// The ids of the events relating to `parents` with `rel_type`, oldest first, at most
    /// `limit` per call (for `m.reference` chunks).
    pub async fn relation_ids_of_type(
        &self,
        room_nid: i64,
        parents: &[String],
        rel_type: &str,
        limit: i64,
    ) -> Result<Vec<(String, String)>, StoreError> {
        let mut out = Vec::new();
        for chunk in parents.chunks(CHUNK) {
            let sql = format!(
                "SELECT rel.parent_event_id, e.event_id FROM event_relations rel \
                 JOIN events e ON e.event_nid = rel.event_nid \
                 WHERE rel.room_nid = $1 AND rel.rel_type = $2 AND rel.parent_event_id IN ({}) \
                 AND {IN_TIMELINE} ORDER BY rel.stream_ordering LIMIT $3",
                placeholders(4, chunk.len())
            );
            let rows = with_pool!(self, pool => {
                let mut q = sqlx::query_as::<_, (String, String)>(sqlx::AssertSqlSafe(sql))
                    .bind(room_nid)
                    .bind(rel_type)
                    .bind(limit);
                for parent in chunk {
                    q = q.bind(parent);
                }
                q.fetch_all(pool).await?
            });
            out.extend(rows);
        }
        Ok(out)
    }

    /// The thread roots of a room whose newest reply is before `before`, newest first. With
    /// `participant`, only threads that user started or replied to.
    pub async fn thread_roots(
        &self,
        room_nid: i64,
        participant: Option<&str>,
        before: i64,
        limit: i64,
    ) -> Result<Vec<ThreadRoot>, StoreError> {
        let rows = with_pool!(self, pool => {
            sqlx::query_as::<_, (String, i64)>(sqlx::AssertSqlSafe(format!(
                "SELECT rel.parent_event_id, MAX(rel.stream_ordering) AS latest \
                 FROM event_relations rel JOIN events e ON e.event_nid = rel.event_nid \
                 WHERE rel.room_nid = $1 AND rel.rel_type = 'm.thread' AND {IN_TIMELINE} \
                 AND EXISTS (SELECT 1 FROM events shown WHERE shown.event_id = rel.parent_event_id \
                    AND shown.status = 'normal') \
                 GROUP BY rel.parent_event_id \
                 HAVING MAX(rel.stream_ordering) < $2 AND ($3 IS NULL \
                    OR SUM(CASE WHEN rel.sender = $3 THEN 1 ELSE 0 END) > 0 \
                    OR EXISTS (SELECT 1 FROM events root WHERE root.event_id = rel.parent_event_id AND root.sender = $3)) \
                 ORDER BY latest DESC LIMIT $4"
            )))
            .bind(room_nid)
            .bind(before)
            .bind(participant)
            .bind(limit)
            .fetch_all(pool)
            .await?
        });
        Ok(rows
            .into_iter()
            .map(|(root_event_id, latest_stream_ordering)| ThreadRoot {
                root_event_id,
                latest_stream_ordering,
            })
            .collect())
    }
}

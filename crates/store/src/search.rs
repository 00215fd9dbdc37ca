//! Full-text search over room events (`POST /search`): PostgreSQL's text search (a `tsvector`
//! per event behind a GIN index) and SQLite's FTS5, behind one API. Rows of `event_search` are
//! written by `persist_events` (from [`crate::NewEvent::search`]) and deleted when their event is
//! redacted; this module only reads them.
//!
//! The two backends index and rank differently (PostgreSQL's `ts_rank`, SQLite's `bm25`), so
//! the statements are backend-specific; both stem English words and require every word of the
//! query to match.

use crate::{Backend, Store, StoreError};

/// Matches only events in the room's timeline (see `rooms::IN_TIMELINE`): the search index
/// may hold an event that is not (soft-failed, rejected), and search never shows those. The
/// event is `event_search`'s key (`event_nid` on PostgreSQL, `rowid` on SQLite).
fn in_timeline(event_nid: &str) -> String {
    format!(
        "EXISTS (SELECT 1 FROM events e WHERE e.event_nid = {event_nid} AND {})",
        crate::rooms::IN_TIMELINE
    )
}

/// How matches are ordered.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum SearchOrder {
    /// Newest first.
    Recent,
    /// Best match first, then newest first.
    Rank,
}

/// A search over the index.
#[derive(Debug, Clone, Copy)]
pub struct SearchQuery<'a> {
    /// The rooms to look in.
    pub room_nids: &'a [i64],
    /// The words that must all match (already split, without operators).
    pub words: &'a [String],
    /// Which fields to look in (`content.body`, `content.name`, `content.topic`).
    pub keys: &'a [&'a str],
    pub order: SearchOrder,
    /// [`SearchOrder::Recent`]: only matches strictly before this stream position.
    pub before: Option<i64>,
    /// [`SearchOrder::Rank`]: how many matches of the ranked list to skip.
    pub offset: i64,
    pub limit: i64,
}

/// One match: which event, where it is in the stream, and its rank (higher is better; only
/// comparable within one backend).
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct SearchHit {
    pub event_nid: i64,
    pub stream_ordering: i64,
    pub rank: f64,
}

/// The words as a PostgreSQL text-search input: `plainto_tsquery` stems each word and requires
/// them all, and ignores any operator characters.
fn postgres_terms(words: &[String]) -> String {
    words.join(" ")
}

/// The words as an FTS5 query: each word a quoted string (quotes doubled), so nothing in them is
/// read as FTS5 syntax; juxtaposed strings must all match.
fn fts5_terms(words: &[String]) -> String {
    words
        .iter()
        .map(|word| format!("\"{}\"", word.replace('"', "\"\"")))
        .collect::<Vec<_>>()
        .join(" ")
}

/// A list of integers or strings as the JSON array SQLite's `json_each` reads (one parameter
/// however long the list is).
fn json_list<T: serde::Serialize>(items: &[T]) -> Result<String, StoreError> {
    serde_json::to_string(items).map_err(|e| StoreError::Conflict(e.to_string()))
}

impl Store {
    /// The matches of `query`, in its order, at most `query.limit`.
    pub async fn search_events(
        &self,
        query: &SearchQuery<'_>,
    ) -> Result<Vec<SearchHit>, StoreError> {
        if query.room_nids.is_empty() || query.words.is_empty() || query.keys.is_empty() {
            return Ok(Vec::new());
        }
        let keys: Vec<&str> = query.keys.to_vec();
        let before = query.before.unwrap_or(i64::MAX);
        let hits = match &self.backend {
            Backend::Postgres(pool) => {
                let order = match query.order {
                    SearchOrder::Recent => "s.stream_ordering DESC",
                    SearchOrder::Rank => "rank DESC, s.stream_ordering DESC",
                };
                // The rank is computed only for `rank` order: it reads each match's vector.
                let rank = match query.order {
                    SearchOrder::Recent => "CAST(0 AS DOUBLE PRECISION)",
                    SearchOrder::Rank => "CAST(ts_rank(s.vector, q.query) AS DOUBLE PRECISION)",
                };
                let shown = in_timeline("s.event_nid");
                let sql = format!(
                    "SELECT s.event_nid, s.stream_ordering, {rank} AS rank \
                     FROM event_search s, (SELECT plainto_tsquery('english', $1) AS query) q \
                     WHERE s.vector @@ q.query AND s.room_nid = ANY($2) AND s.key = ANY($3) \
                     AND s.stream_ordering < $4 AND {shown} \
                     ORDER BY {order} LIMIT $5 OFFSET $6"
                );
                sqlx::query_as::<_, (i64, i64, f64)>(sqlx::AssertSqlSafe(sql))
                    .bind(postgres_terms(query.words))
                    .bind(query.room_nids)
                    .bind(&keys)
                    .bind(before)
                    .bind(query.limit)
                    .bind(query.offset)
                    .fetch_all(pool)
                    .await?
            }
            Backend::Sqlite(pool) => {
                // `bm25` is lower for better matches.
                let (rank, order) = match query.order {
                    SearchOrder::Recent => ("0.0", "stream_ordering DESC"),
                    SearchOrder::Rank => (
                        "-bm25(event_search)",
                        "bm25(event_search), stream_ordering DESC",
                    ),
                };
                let shown = in_timeline("event_search.rowid");
                let sql = format!(
                    "SELECT rowid AS event_nid, CAST(stream_ordering AS INTEGER) AS stream_ordering, \
                     CAST({rank} AS REAL) AS rank FROM event_search \
                     WHERE event_search MATCH $1 \
                     AND room_nid IN (SELECT value FROM json_each($2)) \
                     AND key IN (SELECT value FROM json_each($3)) \
                     AND stream_ordering < $4 AND {shown} \
                     ORDER BY {order} LIMIT $5 OFFSET $6"
                );
                sqlx::query_as::<_, (i64, i64, f64)>(sqlx::AssertSqlSafe(sql))
                    .bind(fts5_terms(query.words))
                    .bind(json_list(query.room_nids)?)
                    .bind(json_list(&keys)?)
                    .bind(before)
                    .bind(query.limit)
                    .bind(query.offset)
                    .fetch_all(pool)
                    .await?
            }
        };
        Ok(hits
            .into_iter()
            .map(|(event_nid, stream_ordering, rank)| SearchHit {
                event_nid,
                stream_ordering,
                rank,
            })
            .collect())
    }

    /// How many events match `query`'s rooms, words and keys (its order, position and limit
    /// are ignored): the `count` a search answers with.
    pub async fn search_count(&self, query: &SearchQuery<'_>) -> Result<i64, StoreError> {
        if query.room_nids.is_empty() || query.words.is_empty() || query.keys.is_empty() {
            return Ok(0);
        }
        let keys: Vec<&str> = query.keys.to_vec();
        let count = match &self.backend {
            Backend::Postgres(pool) => {
                sqlx::query_scalar::<_, i64>(sqlx::AssertSqlSafe(format!(
                    "SELECT COUNT(*) FROM event_search s \
                     WHERE s.vector @@ plainto_tsquery('english', $1) \
                     AND s.room_nid = ANY($2) AND s.key = ANY($3) AND {}",
                    in_timeline("s.event_nid")
                )))
                .bind(postgres_terms(query.words))
                .bind(query.room_nids)
                .bind(&keys)
                .fetch_one(pool)
                .await?
            }
            Backend::Sqlite(pool) => {
                sqlx::query_scalar::<_, i64>(sqlx::AssertSqlSafe(format!(
                    "SELECT COUNT(*) FROM event_search WHERE event_search MATCH $1 \
                     AND room_nid IN (SELECT value FROM json_each($2)) \
                     AND key IN (SELECT value FROM json_each($3)) AND {}",
                    in_timeline("event_search.rowid")
                )))
                .bind(fts5_terms(query.words))
                .bind(json_list(query.room_nids)?)
                .bind(json_list(&keys)?)
                .fetch_one(pool)
                .await?
            }
        };
        Ok(count)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn fts5_terms_quote_every_word_so_nothing_is_syntax() {
        let words = vec!["hello".to_owned(), "say \"NEAR".to_owned(), "a*".to_owned()];
        assert_eq!(fts5_terms(&words), r#""hello" "say ""NEAR" "a*""#);
    }
}

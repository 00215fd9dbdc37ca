//! Batched reads for `/sync`: each read answers for many rooms in one statement, so a sync of a
//! user in hundreds of rooms costs a handful of round trips instead of several per room.
//!
//! The statements stay portable: `IN` lists of numbered placeholders, and per-room windows as
//! small ordered, limited subqueries (each one an index range scan), which both backends run
//! without window functions over whole rooms. The timelines, which every sync reads, take their
//! windows as one parameter (PostgreSQL arrays, a JSON array on SQLite), so that one constant
//! statement is prepared once per connection. The other windowed reads are `UNION ALL`s of one
//! subquery per room, not kept in the connections' prepared-statement caches: their text
//! changes with the number of rooms, and on SQLite each cached variant is a large compiled
//! program held by every pooled connection.

use std::collections::HashMap;

use sqlx::Row;

use crate::{
    Backend, EventRow, Store, StoreError,
    ephemeral::ReceiptRow,
    rooms::{
        EVENT_COLUMNS, EVENT_JOINS, EVENT_SELECT, IN_TIMELINE, RoomSummaryRow, event_from_row,
        read_position_sql,
    },
    with_pool,
};

/// Rooms per statement: keeps statements small enough to plan quickly.
const ROOMS_PER_STATEMENT: usize = 64;

/// One room's slice of the events stream: at most `limit` events with `after < stream
/// ordering < before`, newest first.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct TimelineWindow {
    pub room_nid: i64,
    pub after: i64,
    pub before: i64,
    pub limit: i64,
}

/// One room's changes of current state to read: those at stream positions in `(after, upto]`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct StateDeltaWindow {
    pub room_nid: i64,
    pub after: i64,
    pub upto: i64,
}

/// A list of rows of integers as the JSON array SQLite's reads take in place of PostgreSQL's
/// `UNNEST` arrays (`json_each($1)`, each row's values at `'$[0]'`, `'$[1]'`, ...).
fn json_rows<const N: usize>(rows: impl IntoIterator<Item = [i64; N]>) -> String {
    let rows: Vec<String> = rows
        .into_iter()
        .map(|row| format!("[{}]", row.map(|value| value.to_string()).join(",")))
        .collect();
    format!("[{}]", rows.join(","))
}

/// `$first, $first+1, ...` for `n` binds.
fn placeholders(first: usize, n: usize) -> String {
    (first..first + n)
        .map(|i| format!("${i}"))
        .collect::<Vec<_>>()
        .join(", ")
}

impl Store {
    /// The newest events of each window, newest first, keyed by room.
    ///
    /// Both backends run one constant statement for any number of rooms (the windows are named
    /// `win`, since the event columns already use `e`, `p`, `r`, `t`). On PostgreSQL, a lateral
    /// join over the windows passed as arrays: planning a `UNION ALL` of one joined subquery
    /// per room took about 13 ms for 20 rooms there. On SQLite, windows from a JSON array: the
    /// `UNION ALL` form was compiled at every call (the statement took 2.6-4.4 ms of a 20-room
    /// initial sync, compiling and running).
    pub async fn room_timelines(
        &self,
        windows: &[TimelineWindow],
    ) -> Result<HashMap<i64, Vec<EventRow>>, StoreError> {
        let mut out: HashMap<i64, Vec<EventRow>> = HashMap::new();
        match &self.backend {
            Backend::Postgres(pool) => {
                let column =
                    |f: fn(&TimelineWindow) -> i64| -> Vec<i64> { windows.iter().map(f).collect() };
                let rows = sqlx::query(sqlx::AssertSqlSafe(format!(
                    "SELECT w.* FROM UNNEST($1::BIGINT[], $2::BIGINT[], $3::BIGINT[], $4::BIGINT[]) \
                     AS win (room_nid, after_position, before_position, row_limit) \
                     CROSS JOIN LATERAL ({EVENT_SELECT} WHERE e.room_nid = win.room_nid \
                     AND e.stream_ordering > win.after_position AND e.stream_ordering < win.before_position \
                     AND {IN_TIMELINE} ORDER BY e.stream_ordering DESC LIMIT win.row_limit) AS w"
                )))
                .bind(column(|w| w.room_nid))
                .bind(column(|w| w.after))
                .bind(column(|w| w.before))
                .bind(column(|w| w.limit))
                .fetch_all(pool)
                .await?;
                for row in rows {
                    let event = event_from_row!(&row);
                    out.entry(event.room_nid).or_default().push(event);
                }
            }
            Backend::Sqlite(pool) => {
                // One constant statement, prepared once per connection, as on PostgreSQL: the
                // windows as a JSON array of `[room, after, before]` (a `UNION ALL` of one
                // subquery per room was compiled afresh at every sync). SQLite takes no
                // correlated `LIMIT`: one statement per limit (a sync asks one for every room).
                let mut limits: Vec<i64> = windows.iter().map(|w| w.limit).collect();
                limits.sort_unstable();
                limits.dedup();
                for limit in limits {
                    let json = json_rows(
                        windows
                            .iter()
                            .filter(|w| w.limit == limit)
                            .map(|w| [w.room_nid, w.after, w.before]),
                    );
                    let rows = sqlx::query(sqlx::AssertSqlSafe(format!(
                        "SELECT {EVENT_COLUMNS} FROM json_each($1) AS win CROSS JOIN events e{EVENT_JOINS} \
                         WHERE e.event_nid IN (SELECT e.event_nid FROM events e \
                         WHERE e.room_nid = json_extract(win.value, '$[0]') \
                         AND e.stream_ordering > json_extract(win.value, '$[1]') \
                         AND e.stream_ordering < json_extract(win.value, '$[2]') \
                         AND {IN_TIMELINE} ORDER BY e.stream_ordering DESC LIMIT $2)"
                    )))
                    .bind(json)
                    .bind(limit)
                    .fetch_all(pool)
                    .await?;
                    for row in rows {
                        let event = event_from_row!(&row);
                        out.entry(event.room_nid).or_default().push(event);
                    }
                }
            }
        }
        for rows in out.values_mut() {
            rows.sort_unstable_by_key(|r| std::cmp::Reverse(r.stream_ordering));
        }
        Ok(out)
    }

    /// Receipts written after `since` in each of the rooms, oldest first, keyed by room.
    pub async fn receipts_in_rooms(
        &self,
        room_nids: &[i64],
        since: i64,
    ) -> Result<HashMap<i64, Vec<ReceiptRow>>, StoreError> {
        let mut out: HashMap<i64, Vec<ReceiptRow>> = HashMap::new();
        for chunk in room_nids.chunks(ROOMS_PER_STATEMENT) {
            let sql = format!(
                "SELECT room_nid, user_id, receipt_type, thread_id, event_id, ts, stream_position \
                 FROM receipts WHERE stream_position > $1 AND room_nid IN ({}) ORDER BY stream_position",
                placeholders(2, chunk.len())
            );
            with_pool!(self, pool => {
                let mut query = sqlx::query(sqlx::AssertSqlSafe(sql.clone())).bind(since);
                for nid in chunk {
                    query = query.bind(*nid);
                }
                for row in query.fetch_all(pool).await? {
                    let room_nid: i64 = row.try_get("room_nid")?;
                    out.entry(room_nid).or_default().push(ReceiptRow {
                        user_id: row.try_get("user_id")?,
                        receipt_type: row.try_get("receipt_type")?,
                        thread_id: row.try_get("thread_id")?,
                        event_id: row.try_get("event_id")?,
                        ts: row.try_get("ts")?,
                        stream_position: row.try_get("stream_position")?,
                    });
                }
            });
        }
        Ok(out)
    }

    /// For each state group, the event nids of the given `(type, state_key)` pairs in its
    /// state (following the delta chains; nearer groups win). Only the asked-for keys are read,
    /// whatever the size of the rooms.
    pub async fn state_entries_at_groups(
        &self,
        groups: &[i64],
        keys: &[(&str, &str)],
    ) -> Result<HashMap<i64, HashMap<(String, String), i64>>, StoreError> {
        let mut out: HashMap<i64, HashMap<(String, String), i64>> = HashMap::new();
        if keys.is_empty() {
            return Ok(out);
        }
        for chunk in groups.chunks(ROOMS_PER_STATEMENT) {
            let key_first = chunk.len() + 1;
            let key_clauses: Vec<String> = (0..keys.len())
                .map(|i| {
                    format!(
                        "(s.event_type = ${} AND s.state_key = ${})",
                        key_first + 2 * i,
                        key_first + 2 * i + 1
                    )
                })
                .collect();
            let sql = format!(
                "WITH RECURSIVE chain (root, state_group, depth) AS ( \
                     SELECT state_group, state_group, 0 FROM state_groups WHERE state_group IN ({}) \
                     UNION ALL \
                     SELECT c.root, g.parent_group, c.depth + 1 FROM state_groups g \
                     JOIN chain c ON g.state_group = c.state_group \
                     WHERE g.parent_group IS NOT NULL) \
                 SELECT c.root, s.event_type, s.state_key, s.event_nid FROM chain c \
                 JOIN state_group_entries s ON s.state_group = c.state_group \
                 WHERE {} ORDER BY c.root, c.depth",
                placeholders(1, chunk.len()),
                key_clauses.join(" OR ")
            );
            with_pool!(self, pool => {
                let mut query = sqlx::query(sqlx::AssertSqlSafe(sql.clone()));
                for group in chunk {
                    query = query.bind(*group);
                }
                for (event_type, state_key) in keys {
                    query = query.bind(*event_type).bind(*state_key);
                }
                for row in query.fetch_all(pool).await? {
                    let root: i64 = row.try_get(0)?;
                    let key: (String, String) = (row.try_get(1)?, row.try_get(2)?);
                    // Nearest group first: the first row for a key wins.
                    out.entry(root).or_default().entry(key).or_insert(row.try_get(3)?);
                }
            });
        }
        for group in groups {
            out.entry(*group).or_default();
        }
        Ok(out)
    }

    /// For each `(room, stream ordering)` (the first event of a sync timeline), the state
    /// before that event, keyed by room: its own `state_group_before` when it has one (the
    /// state at its prev events: also where they are not stored here, as for a join through
    /// another server, whose state came with the join), else the state group of the room's
    /// newest timeline event before it (`None` when there is neither).
    pub async fn state_groups_before(
        &self,
        positions: &[(i64, i64)],
    ) -> Result<HashMap<i64, Option<i64>>, StoreError> {
        let mut out: HashMap<i64, Option<i64>> =
            positions.iter().map(|(room, _)| (*room, None)).collect();
        if positions.is_empty() {
            return Ok(out);
        }
        // One constant statement over the list of positions, prepared once per connection (a
        // `UNION ALL` of one subquery per room was planned afresh at every sync: 3.7 ms of
        // PostgreSQL's planning for 20 rooms, more than the reads themselves).
        let state_group_of = |room: &str, position: &str| {
            format!(
                "COALESCE((SELECT f.state_group_before FROM events f \
                 WHERE f.room_nid = {room} AND f.stream_ordering = {position}), \
                 (SELECT e.state_group FROM events e WHERE e.room_nid = {room} \
                 AND e.stream_ordering < {position} AND {IN_TIMELINE} \
                 ORDER BY e.stream_ordering DESC LIMIT 1))"
            )
        };
        let rows: Vec<(i64, Option<i64>)> = match &self.backend {
            Backend::Postgres(pool) => {
                let (rooms, orderings): (Vec<i64>, Vec<i64>) = positions.iter().copied().unzip();
                sqlx::query_as(sqlx::AssertSqlSafe(format!(
                    "SELECT w.room_nid, {} AS state_group \
                     FROM UNNEST($1::BIGINT[], $2::BIGINT[]) AS w (room_nid, position)",
                    state_group_of("w.room_nid", "w.position")
                )))
                .bind(rooms)
                .bind(orderings)
                .fetch_all(pool)
                .await?
            }
            Backend::Sqlite(pool) => {
                // The positions as JSON rows `[room, position]`.
                let json = json_rows(positions.iter().map(|(room, position)| [*room, *position]));
                sqlx::query_as(sqlx::AssertSqlSafe(format!(
                    "SELECT CAST(json_extract(w.value, '$[0]') AS INTEGER) AS room_nid, {} AS state_group \
                     FROM json_each($1) AS w",
                    state_group_of("json_extract(w.value, '$[0]')", "json_extract(w.value, '$[1]')")
                )))
                .bind(json)
                .fetch_all(pool)
                .await?
            }
        };
        out.extend(rows);
        Ok(out)
    }

    /// The state events that each window's changes of current state (`current_state_deltas`)
    /// left at the keys they changed, as of the window's end, keyed by room: how an incremental
    /// sync learns of state that changed without a state event in the timeline (a fork's
    /// resolution putting an older event back). Keys that left the state have no event and are
    /// not listed. Not filtered by status: this is state, and a soft-failed state event that
    /// wins resolution is part of it. Redeliveries (current state marked to be delivered again,
    /// see `redeliver_state_of!`) count only when `redeliveries`.
    pub async fn state_changed_in(
        &self,
        windows: &[StateDeltaWindow],
        redeliveries: bool,
    ) -> Result<HashMap<i64, Vec<EventRow>>, StoreError> {
        if windows.is_empty() {
            return Ok(HashMap::new());
        }
        // One constant statement over the list of windows, prepared once per connection (one
        // `OR` clause per room made a new statement, planned afresh, at every sync).
        let redelivery = if redeliveries {
            ""
        } else {
            " AND d.redelivery = FALSE"
        };
        let rows: Vec<(i64, i64, String, String, Option<i64>)> = match &self.backend {
            Backend::Postgres(pool) => {
                let column = |f: fn(&StateDeltaWindow) -> i64| -> Vec<i64> {
                    windows.iter().map(f).collect()
                };
                sqlx::query_as(sqlx::AssertSqlSafe(format!(
                    "SELECT d.room_nid, d.stream_ordering, d.event_type, d.state_key, d.event_nid \
                     FROM UNNEST($1::BIGINT[], $2::BIGINT[], $3::BIGINT[]) AS w (room_nid, after, upto) \
                     JOIN current_state_deltas d ON d.room_nid = w.room_nid \
                     AND d.stream_ordering > w.after AND d.stream_ordering <= w.upto{redelivery}"
                )))
                .bind(column(|w| w.room_nid))
                .bind(column(|w| w.after))
                .bind(column(|w| w.upto))
                .fetch_all(pool)
                .await?
            }
            Backend::Sqlite(pool) => {
                // The windows as JSON rows `[room, after, upto]`.
                let json = json_rows(windows.iter().map(|w| [w.room_nid, w.after, w.upto]));
                sqlx::query_as(sqlx::AssertSqlSafe(format!(
                    "SELECT d.room_nid, d.stream_ordering, d.event_type, d.state_key, d.event_nid \
                     FROM json_each($1) AS w JOIN current_state_deltas d \
                     ON d.room_nid = json_extract(w.value, '$[0]') \
                     AND d.stream_ordering > json_extract(w.value, '$[1]') \
                     AND d.stream_ordering <= json_extract(w.value, '$[2]'){redelivery}"
                )))
                .bind(json)
                .fetch_all(pool)
                .await?
            }
        };
        // Per room and key, the event of the latest change in the window.
        let mut latest: HashMap<(i64, String, String), (i64, Option<i64>)> = HashMap::new();
        for (room, stream, event_type, state_key, nid) in rows {
            let entry = latest
                .entry((room, event_type, state_key))
                .or_insert((stream, nid));
            if stream >= entry.0 {
                *entry = (stream, nid);
            }
        }
        let nids: Vec<i64> = latest.values().filter_map(|(_, nid)| *nid).collect();
        let mut out: HashMap<i64, Vec<EventRow>> = HashMap::new();
        for row in self.events_by_nids(&nids).await? {
            out.entry(row.room_nid).or_default().push(row);
        }
        Ok(out)
    }

    /// The whole current state of each room, keyed by room.
    pub async fn current_states(
        &self,
        room_nids: &[i64],
    ) -> Result<HashMap<i64, Vec<EventRow>>, StoreError> {
        let mut out: HashMap<i64, Vec<EventRow>> =
            room_nids.iter().map(|room| (*room, Vec::new())).collect();
        for chunk in room_nids.chunks(ROOMS_PER_STATEMENT) {
            let sql = format!(
                "{EVENT_SELECT} JOIN current_state c ON c.event_nid = e.event_nid WHERE c.room_nid IN ({})",
                placeholders(1, chunk.len())
            );
            with_pool!(self, pool => {
                let mut query = sqlx::query(sqlx::AssertSqlSafe(sql.clone()));
                for nid in chunk {
                    query = query.bind(*nid);
                }
                for row in query.fetch_all(pool).await? {
                    let event = event_from_row!(&row);
                    out.entry(event.room_nid).or_default().push(event);
                }
            });
        }
        Ok(out)
    }

    /// A user's unread `(notifications, highlights)` in each room (see
    /// [`Store::unread_counts`]), keyed by room; rooms without any are `(0, 0)`. The sum of
    /// [`Store::unread_counts_by_thread`] over each room's threads.
    pub async fn unread_counts_in_rooms(
        &self,
        user_id: &str,
        room_nids: &[i64],
    ) -> Result<HashMap<i64, (i64, i64)>, StoreError> {
        let mut out: HashMap<i64, (i64, i64)> =
            room_nids.iter().map(|room| (*room, (0, 0))).collect();
        for (room, threads) in self.unread_counts_by_thread(user_id, room_nids).await? {
            let total = out.entry(room).or_default();
            for (notify, highlight) in threads.values() {
                total.0 += notify;
                total.1 += highlight;
            }
        }
        Ok(out)
    }

    /// A user's unread `(notifications, highlights)` in each room, by thread: `main` for the
    /// main timeline, else the thread root's event id (threads are `m.thread` relations).
    /// A notifying event is unread when it comes after the user's read position in the room
    /// (their unthreaded receipt or their own latest event) and after their receipt in its
    /// thread, if any. Only rooms and threads with unread events are present.
    pub async fn unread_counts_by_thread(
        &self,
        user_id: &str,
        room_nids: &[i64],
    ) -> Result<HashMap<i64, HashMap<String, (i64, i64)>>, StoreError> {
        let mut out: HashMap<i64, HashMap<String, (i64, i64)>> = HashMap::new();
        let read_position = read_position_sql(self.kind(), "a.room_nid", "$1");
        for chunk in room_nids.chunks(ROOMS_PER_STATEMENT) {
            // One level, each condition an expression of index lookups: on PostgreSQL, a
            // connection that has not run it yet plans it on the sync's critical path (1.0 ms
            // for 20 rooms nested as a subquery with the read position as a `UNION ALL`,
            // 0.6 ms as it is).
            let sql = format!(
                "SELECT a.room_nid, COALESCE(t.parent_event_id, 'main') AS thread, \
                        SUM(CASE WHEN a.notify THEN 1 ELSE 0 END), \
                        SUM(CASE WHEN a.highlight THEN 1 ELSE 0 END) \
                 FROM event_push_actions a JOIN events e ON e.event_nid = a.event_nid AND {IN_TIMELINE} \
                 LEFT JOIN event_relations t ON t.event_nid = a.event_nid AND t.rel_type = 'm.thread' \
                 WHERE a.user_id = $1 AND a.room_nid IN ({}) \
                 AND a.stream_ordering > {read_position} \
                 AND a.stream_ordering > COALESCE(( \
                     SELECT MAX(e.stream_ordering) FROM receipts r JOIN events e ON e.event_id = r.event_id \
                     WHERE r.room_nid = a.room_nid AND r.user_id = $1 \
                     AND r.thread_id = COALESCE(t.parent_event_id, 'main') \
                     AND r.receipt_type IN ('m.read', 'm.read.private')), 0) \
                 GROUP BY a.room_nid, COALESCE(t.parent_event_id, 'main')",
                placeholders(2, chunk.len())
            );
            with_pool!(self, pool => {
                let mut query = sqlx::query_as::<_, (i64, String, i64, i64)>(sqlx::AssertSqlSafe(sql.clone()))
                    .bind(user_id);
                for nid in chunk {
                    query = query.bind(*nid);
                }
                for (room, thread, notify, highlight) in query.fetch_all(pool).await? {
                    out.entry(room).or_default().insert(thread, (notify, highlight));
                }
            });
        }
        Ok(out)
    }

    /// The [`RoomSummaryRow`] of each room, keyed by room. In `account_key_rooms` (a subset of
    /// `room_nids`) members count only when clients see them (MSC4243 §2.6): this server's own
    /// users and keys verified for their domain, not unverified or erased keys.
    pub async fn room_summaries(
        &self,
        user_id: &str,
        room_nids: &[i64],
        account_key_rooms: &[i64],
    ) -> Result<HashMap<i64, RoomSummaryRow>, StoreError> {
        let mut out: HashMap<i64, RoomSummaryRow> = room_nids
            .iter()
            .map(|room| {
                (
                    *room,
                    RoomSummaryRow {
                        joined: 0,
                        invited: 0,
                        named: false,
                        heroes: Vec::new(),
                    },
                )
            })
            .collect();
        for chunk in room_nids.chunks(ROOMS_PER_STATEMENT) {
            let list = placeholders(1, chunk.len());
            // The member counts and whether each room is named, in one round trip: a named
            // room is one row `(room, 'named', 0)`.
            let sql = format!(
                "SELECT room_nid, membership, COUNT(*) FROM room_memberships \
                 WHERE room_nid IN ({list}) AND membership IN ('join', 'invite') GROUP BY room_nid, membership \
                 UNION ALL SELECT DISTINCT room_nid, 'named', 0 FROM current_state WHERE room_nid IN ({list}) \
                 AND event_type IN ('m.room.name', 'm.room.canonical_alias') AND state_key = ''"
            );
            with_pool!(self, pool => {
                let mut query = sqlx::query_as::<_, (i64, String, i64)>(sqlx::AssertSqlSafe(sql.clone()));
                for nid in chunk {
                    query = query.bind(*nid);
                }
                for (room, kind, count) in query.fetch_all(pool).await? {
                    if let Some(summary) = out.get_mut(&room) {
                        match kind.as_str() {
                            "join" => summary.joined = count,
                            "invite" => summary.invited = count,
                            _ => summary.named = true,
                        }
                    }
                }
            });
        }
        for chunk in account_key_rooms.chunks(ROOMS_PER_STATEMENT) {
            let list = placeholders(1, chunk.len());
            // Local members are indexed by account name (they are in `users`); other members
            // by key-form id, visible once their key is verified.
            let sql = format!(
                "SELECT m.room_nid, m.membership, COUNT(*) FROM room_memberships m \
                 WHERE m.room_nid IN ({list}) AND m.membership IN ('join', 'invite') \
                 AND (EXISTS (SELECT 1 FROM users u WHERE u.user_id = m.user_id) \
                 OR EXISTS (SELECT 1 FROM account_keys k WHERE k.user_id = m.user_id \
                 AND k.state IN ('local', 'verified'))) \
                 GROUP BY m.room_nid, m.membership"
            );
            with_pool!(self, pool => {
                let mut query = sqlx::query_as::<_, (i64, String, i64)>(sqlx::AssertSqlSafe(sql.clone()));
                for nid in chunk {
                    query = query.bind(*nid);
                }
                for nid in chunk {
                    if let Some(summary) = out.get_mut(nid) {
                        summary.joined = 0;
                        summary.invited = 0;
                    }
                }
                for (room, membership, count) in query.fetch_all(pool).await? {
                    if let Some(summary) = out.get_mut(&room) {
                        match membership.as_str() {
                            "join" => summary.joined = count,
                            _ => summary.invited = count,
                        }
                    }
                }
            });
        }
        // Heroes only for unnamed rooms (typically direct chats, so small), five each.
        let unnamed: Vec<i64> = room_nids
            .iter()
            .copied()
            .filter(|room| out.get(room).is_some_and(|s| !s.named))
            .collect();
        for chunk in unnamed.chunks(ROOMS_PER_STATEMENT) {
            let parts: Vec<String> = (0..chunk.len())
                .map(|i| {
                    format!(
                        "SELECT * FROM (SELECT room_nid, user_id FROM room_memberships \
                         WHERE room_nid = ${} AND user_id <> $1 AND membership IN ('join', 'invite') \
                         ORDER BY CASE membership WHEN 'join' THEN 0 ELSE 1 END, stream_ordering LIMIT 5) AS h{i}",
                        i + 2
                    )
                })
                .collect();
            let sql = parts.join(" UNION ALL ");
            with_pool!(self, pool => {
                let mut query = sqlx::query_as::<_, (i64, String)>(sqlx::AssertSqlSafe(sql.clone()))
                    .persistent(false)
                    .bind(user_id);
                for nid in chunk {
                    query = query.bind(*nid);
                }
                for (room, user) in query.fetch_all(pool).await? {
                    if let Some(summary) = out.get_mut(&room) {
                        summary.heroes.push(user);
                    }
                }
            });
        }
        Ok(out)
    }
}

#[cfg(test)]
mod tests {
    use super::json_rows;

    #[test]
    fn json_rows_are_a_json_array_of_arrays() {
        assert_eq!(
            json_rows([[1, 2, 3], [-4, 0, i64::MAX]]),
            format!("[[1,2,3],[-4,0,{}]]", i64::MAX)
        );
        assert_eq!(json_rows(Vec::<[i64; 2]>::new()), "[]");
    }
}

//! The federation sender's state and the per-destination backoff: how far the sender has looked
//! through the events stream (the fan-out position), each destination's delivery positions in
//! the events and receipts streams and its transaction counter, the rooms each destination is
//! owed events in, persisted EDUs (to-device messages for remote users), and destinations that
//! are backing off.
//!
//! Nothing here is queued per event: a destination's pending events are this server's events of
//! its rooms past its position, read from the events table: those of local users and those it
//! relays as the resident (`federation_relayed_events`), by one predicate (`ours_to_send`). Position moves are conditional updates
//! (`WHERE position = the one read`), so a second process over the same database is noticed
//! rather than overwritten.

use sqlx::Row;

use crate::rooms::{EventRow, event_from_row};
use crate::store::BeginWrite;
use crate::{Store, StoreError, with_pool};

/// A destination as the sender keeps it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct DestinationRow {
    pub destination: String,
    /// Every event meant for it at or below this stream ordering is delivered (or skipped).
    pub event_position: i64,
    /// The same in the receipts stream.
    pub receipt_position: i64,
    /// The last transaction number used.
    pub txn_serial: i64,
    pub last_success_ts: Option<i64>,
}

/// What the fan-out found for one destination in one room: the first and last of the events
/// meant for it there.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct FanoutEntry {
    pub destination: String,
    pub room_nid: i64,
    pub first_ordering: i64,
    pub last_ordering: i64,
}

/// A persisted EDU waiting for its destination.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct OutboxEdu {
    pub id: i64,
    pub edu_type: String,
    /// JSON.
    pub content: String,
}

/// A local user's public read receipt, with its room's id.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct OutgoingReceipt {
    pub room_nid: i64,
    pub room_id: String,
    pub user_id: String,
    pub receipt_type: String,
    /// `""` for an unthreaded receipt.
    pub thread_id: String,
    pub event_id: String,
    pub ts: i64,
    pub stream_position: i64,
}

/// A destination whose requests have been failing.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct BackoffRow {
    pub destination: String,
    pub failures: i64,
    pub retry_at_ts: i64,
    pub down_since_ts: i64,
    pub last_error: String,
}

/// A destination's queue as operators see it ([`Store::federation_queue_depths`]).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct QueueDepth {
    pub destination: String,
    /// Local events of its rooms past its position (an upper bound of what it is owed: events
    /// of a room from before it joined are counted until the sender has stepped over them).
    pub events: i64,
    /// Persisted EDUs waiting for it.
    pub edus: i64,
    pub last_success_ts: Option<i64>,
}

macro_rules! destination_from_row {
    ($row:expr) => {{
        let row = $row;
        DestinationRow {
            destination: row.try_get("destination")?,
            event_position: row.try_get("event_position")?,
            receipt_position: row.try_get("receipt_position")?,
            txn_serial: row.try_get("txn_serial")?,
            last_success_ts: row.try_get("last_success_ts")?,
        }
    }};
}

/// `sender LIKE` pattern for the users of `server`.
fn users_of(server: &str) -> String {
    format!(
        "%:{}",
        server
            .replace('\\', "\\\\")
            .replace('%', "\\%")
            .replace('_', "\\_")
    )
}

/// The one test of whether event `e` is this server's to send (see [`crate::rooms::Delivery`]):
/// a normal event of a local user (sender matching the pattern in parameter `$n`) that no
/// resident delivers for it (`federation_delivered_events`), or one this server relays as the
/// resident (`federation_relayed_events`). Every "our events" query uses it.
fn ours_to_send(n: u8) -> String {
    format!(
        "e.status = 'normal' AND ((e.sender LIKE ${n} ESCAPE '\\' \
         AND NOT EXISTS (SELECT 1 FROM federation_delivered_events d WHERE d.event_nid = e.event_nid)) \
         OR EXISTS (SELECT 1 FROM federation_relayed_events r WHERE r.event_nid = e.event_nid))"
    )
}

/// Whether the event read is a relayed one (see [`OutgoingEvent::relayed`]).
const RELAYED_COLUMN: &str =
    "EXISTS (SELECT 1 FROM federation_relayed_events r WHERE r.event_nid = e.event_nid) AS relayed";

/// Our events (see [`ours_to_send`]) of a destination's rooms past `$2`, each room read no
/// further than the latest event meant for the destination there. `$1` destination, `$2`
/// position, `$3` the sender pattern.
fn pending_events_from() -> String {
    format!(
        "FROM federation_destination_rooms dr \
         JOIN events e ON e.room_nid = dr.room_nid \
         WHERE dr.destination = $1 AND dr.stream_ordering > $2 \
         AND e.stream_ordering > $2 AND e.stream_ordering <= dr.stream_ordering AND {}",
        ours_to_send(3)
    )
}

/// An event the federation sender may send: a local user's, or one relayed for another
/// server's user (which the sender's own check of the sender's server must let through).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct OutgoingEvent {
    pub event: EventRow,
    pub relayed: bool,
}

impl Store {
    /// How far the fan-out has looked through the events stream.
    pub async fn federation_fanout_position(&self) -> Result<i64, StoreError> {
        let position = with_pool!(self, pool => {
            sqlx::query_scalar::<_, i64>("SELECT position FROM federation_fanout WHERE id = 0")
                .fetch_one(pool)
                .await
        })?;
        Ok(position)
    }

    /// Our events to send (local users' and relayed ones) with stream orderings in `(after, up_to]`, oldest first,
    /// at most `limit`: what the fan-out reads.
    pub async fn local_events_between(
        &self,
        origin: &str,
        after: i64,
        up_to: i64,
        limit: i64,
    ) -> Result<Vec<OutgoingEvent>, StoreError> {
        let sql = format!(
            "SELECT {}, {RELAYED_COLUMN} FROM events e \
             WHERE e.stream_ordering > $1 AND e.stream_ordering <= $2 AND {} \
             ORDER BY e.stream_ordering LIMIT $4",
            crate::rooms::BARE_EVENT_COLUMNS,
            ours_to_send(3)
        );
        let rows = with_pool!(self, pool => {
            let mut out = Vec::new();
            for row in sqlx::query(sqlx::AssertSqlSafe(sql.clone()))
                .bind(after)
                .bind(up_to)
                .bind(users_of(origin))
                .bind(limit)
                .fetch_all(pool)
                .await?
            {
                out.push(OutgoingEvent {
                    event: event_from_row!(&row),
                    relayed: row.try_get("relayed")?,
                });
            }
            out
        });
        Ok(rows)
    }

    /// Records what the fan-out found in `(from, to]` and moves its position there, in one
    /// transaction: each destination is created (its positions just before its first event
    /// and at `receipts_head`) or, when it had nothing pending, moved up to just before its
    /// first new event (an idle destination's position may be far behind); each room's latest
    /// event for each destination is kept. Returns false, writing nothing, if the position is
    /// no longer `from` (another process moved it).
    pub async fn record_federation_fanout(
        &self,
        from: i64,
        to: i64,
        entries: &[FanoutEntry],
        receipts_head: i64,
    ) -> Result<bool, StoreError> {
        let mut firsts: std::collections::BTreeMap<&str, i64> = Default::default();
        for entry in entries {
            let first = firsts.entry(&entry.destination).or_insert(i64::MAX);
            *first = (*first).min(entry.first_ordering);
        }
        let moved = with_pool!(self, pool => {
            let mut tx = pool.begin_write(&self.write_gate).await?;
            let moved = sqlx::query("UPDATE federation_fanout SET position = $2 WHERE id = 0 AND position = $1")
                .bind(from)
                .bind(to)
                .execute(&mut *tx)
                .await?
                .rows_affected();
            if moved == 1 {
                for (destination, first) in &firsts {
                    sqlx::query(
                        "INSERT INTO federation_destinations (destination, event_position, receipt_position) \
                         VALUES ($1, $2, $3) \
                         ON CONFLICT (destination) DO UPDATE SET event_position = excluded.event_position \
                         WHERE federation_destinations.event_position < excluded.event_position \
                         AND NOT EXISTS (SELECT 1 FROM federation_destination_rooms dr \
                             WHERE dr.destination = federation_destinations.destination \
                             AND dr.stream_ordering > federation_destinations.event_position)",
                    )
                    .bind(*destination)
                    .bind(*first - 1)
                    .bind(receipts_head)
                    .execute(&mut *tx)
                    .await?;
                }
                for entry in entries {
                    sqlx::query(
                        "INSERT INTO federation_destination_rooms (destination, room_nid, stream_ordering) \
                         VALUES ($1, $2, $3) \
                         ON CONFLICT (destination, room_nid) DO UPDATE SET stream_ordering = excluded.stream_ordering \
                         WHERE federation_destination_rooms.stream_ordering < excluded.stream_ordering",
                    )
                    .bind(&entry.destination)
                    .bind(entry.room_nid)
                    .bind(entry.last_ordering)
                    .execute(&mut *tx)
                    .await?;
                }
                tx.commit().await?;
            }
            moved == 1
        });
        Ok(moved)
    }

    /// Every destination the sender knows.
    pub async fn federation_destinations(&self) -> Result<Vec<DestinationRow>, StoreError> {
        let rows = with_pool!(self, pool => {
            let mut out = Vec::new();
            for row in sqlx::query(
                "SELECT destination, event_position, receipt_position, txn_serial, last_success_ts \
                 FROM federation_destinations ORDER BY destination",
            )
            .fetch_all(pool)
            .await?
            {
                out.push(destination_from_row!(&row));
            }
            out
        });
        Ok(rows)
    }

    /// One destination, created if it is new: owed no event before the fan-out position, and
    /// no receipt before `receipts_after` (default: the receipts stream's head). A destination
    /// is first met through an event (the fan-out creates it), a receipt or a to-device message.
    pub async fn federation_destination(
        &self,
        destination: &str,
        receipts_after: Option<i64>,
    ) -> Result<DestinationRow, StoreError> {
        const SELECT: &str = "SELECT destination, event_position, receipt_position, txn_serial, \
             last_success_ts FROM federation_destinations WHERE destination = $1";
        let row = with_pool!(self, pool => {
            // Read first: a worker asks on every transaction, and a write on SQLite would queue
            // behind every event being persisted.
            match sqlx::query(SELECT).bind(destination).fetch_optional(pool).await? {
                Some(row) => destination_from_row!(&row),
                None => {
                    let mut tx = pool.begin_write(&self.write_gate).await?;
                    sqlx::query(
                        "INSERT INTO federation_destinations (destination, event_position, receipt_position) \
                         SELECT $1, f.position, COALESCE($2, s.position) FROM federation_fanout f, stream_positions s \
                         WHERE f.id = 0 AND s.stream = 'receipts' \
                         ON CONFLICT (destination) DO NOTHING",
                    )
                    .bind(destination)
                    .bind(receipts_after)
                    .execute(&mut *tx)
                    .await?;
                    let row = sqlx::query(SELECT).bind(destination).fetch_one(&mut *tx).await?;
                    let row = destination_from_row!(&row);
                    tx.commit().await?;
                    row
                }
            }
        });
        Ok(row)
    }

    /// `destination` is owed the receipts past `after` (a receipt just stored at `after + 1`):
    /// created so if new, else its receipt position moved back to `after` if it is already
    /// past it (a row made for the destination in the meantime started at the receipts head,
    /// which may include that receipt). At worst a receipt already delivered goes again.
    pub async fn owe_federation_receipts_after(
        &self,
        destination: &str,
        after: i64,
    ) -> Result<(), StoreError> {
        with_pool!(self, pool => {
            let mut tx = pool.begin_write(&self.write_gate).await?;
            sqlx::query(
                "INSERT INTO federation_destinations (destination, event_position, receipt_position) \
                 SELECT $1, f.position, $2 FROM federation_fanout f WHERE f.id = 0 \
                 ON CONFLICT (destination) DO UPDATE SET receipt_position = excluded.receipt_position \
                 WHERE federation_destinations.receipt_position > excluded.receipt_position",
            )
            .bind(destination)
            .bind(after)
            .execute(&mut *tx)
            .await?;
            tx.commit().await?;
        });
        Ok(())
    }

    /// Our events to send (of `origin`'s users, and relayed ones) a destination may be owed past `after`, oldest
    /// first, at most `limit`. The caller still checks each event's destinations.
    pub async fn federation_pending_events(
        &self,
        destination: &str,
        origin: &str,
        after: i64,
        limit: i64,
    ) -> Result<Vec<OutgoingEvent>, StoreError> {
        let sql = format!(
            "SELECT {}, {RELAYED_COLUMN} {} ORDER BY e.stream_ordering LIMIT $4",
            crate::rooms::BARE_EVENT_COLUMNS,
            pending_events_from()
        );
        let rows = with_pool!(self, pool => {
            let mut out = Vec::new();
            for row in sqlx::query(sqlx::AssertSqlSafe(sql.clone()))
                .bind(destination)
                .bind(after)
                .bind(users_of(origin))
                .bind(limit)
                .fetch_all(pool)
                .await?
            {
                out.push(OutgoingEvent {
                    event: event_from_row!(&row),
                    relayed: row.try_get("relayed")?,
                });
            }
            out
        });
        Ok(rows)
    }

    /// For each room with more than `limit` pending events for a destination past `after`, the
    /// stream ordering of its `keep`-th latest one: after an outage, the events before it are
    /// left for the destination to fetch.
    pub async fn federation_catch_up_cutoffs(
        &self,
        destination: &str,
        origin: &str,
        after: i64,
        limit: i64,
        keep: i64,
    ) -> Result<Vec<(i64, i64)>, StoreError> {
        let counts_sql = format!(
            "SELECT e.room_nid, COUNT(*) AS pending {} \
             GROUP BY e.room_nid HAVING COUNT(*) > $4",
            pending_events_from()
        );
        let cutoff_sql = format!(
            "SELECT e.stream_ordering {} AND e.room_nid = $4 \
             ORDER BY e.stream_ordering DESC LIMIT 1 OFFSET $5",
            pending_events_from()
        );
        let cutoffs = with_pool!(self, pool => {
            let rooms: Vec<(i64, i64)> = sqlx::query_as(sqlx::AssertSqlSafe(counts_sql.clone()))
                .bind(destination)
                .bind(after)
                .bind(users_of(origin))
                .bind(limit)
                .fetch_all(pool)
                .await?;
            let mut out = Vec::new();
            for (room_nid, _) in rooms {
                let cutoff: Option<i64> = sqlx::query_scalar(sqlx::AssertSqlSafe(cutoff_sql.clone()))
                    .bind(destination)
                    .bind(after)
                    .bind(users_of(origin))
                    .bind(room_nid)
                    .bind(keep - 1)
                    .fetch_optional(pool)
                    .await?;
                if let Some(cutoff) = cutoff {
                    out.push((room_nid, cutoff));
                }
            }
            out
        });
        Ok(cutoffs)
    }

    /// The next transaction number of a destination (never handed out twice).
    pub async fn next_federation_txn_serial(&self, destination: &str) -> Result<i64, StoreError> {
        let serial = with_pool!(self, pool => {
            let mut tx = pool.begin_write(&self.write_gate).await?;
            let serial = sqlx::query_scalar::<_, i64>(
                "UPDATE federation_destinations SET txn_serial = txn_serial + 1 \
                 WHERE destination = $1 RETURNING txn_serial",
            )
            .bind(destination)
            .fetch_one(&mut *tx)
            .await?;
            tx.commit().await?;
            serial
        });
        Ok(serial)
    }

    /// Public read receipts (`m.read`) of `origin`'s users past `after` in the receipts stream,
    /// oldest first, at most `limit`.
    pub async fn local_receipts_after(
        &self,
        origin: &str,
        after: i64,
        limit: i64,
    ) -> Result<Vec<OutgoingReceipt>, StoreError> {
        let rows = with_pool!(self, pool => {
            let mut out = Vec::new();
            for row in sqlx::query(
                "SELECT r.room_nid, m.room_id, r.user_id, r.receipt_type, r.thread_id, r.event_id, \
                 r.ts, r.stream_position FROM receipts r JOIN rooms m ON m.room_nid = r.room_nid \
                 WHERE r.stream_position > $1 AND r.receipt_type = 'm.read' \
                 AND r.user_id LIKE $2 ESCAPE '\\' ORDER BY r.stream_position LIMIT $3",
            )
            .bind(after)
            .bind(users_of(origin))
            .bind(limit)
            .fetch_all(pool)
            .await?
            {
                out.push(OutgoingReceipt {
                    room_nid: row.try_get("room_nid")?,
                    room_id: row.try_get("room_id")?,
                    user_id: row.try_get("user_id")?,
                    receipt_type: row.try_get("receipt_type")?,
                    thread_id: row.try_get("thread_id")?,
                    event_id: row.try_get("event_id")?,
                    ts: row.try_get("ts")?,
                    stream_position: row.try_get("stream_position")?,
                });
            }
            out
        });
        Ok(rows)
    }

    /// A destination's persisted EDUs, oldest first, at most `limit`.
    pub async fn federation_outbox(
        &self,
        destination: &str,
        limit: i64,
    ) -> Result<Vec<OutboxEdu>, StoreError> {
        let rows = with_pool!(self, pool => {
            let mut out = Vec::new();
            for row in sqlx::query(
                "SELECT id, edu_type, content FROM federation_edu_outbox WHERE destination = $1 \
                 ORDER BY id LIMIT $2",
            )
            .bind(destination)
            .bind(limit)
            .fetch_all(pool)
            .await?
            {
                out.push(OutboxEdu {
                    id: row.try_get("id")?,
                    edu_type: row.try_get("edu_type")?,
                    content: row.try_get("content")?,
                });
            }
            out
        });
        Ok(rows)
    }

    /// The destinations with persisted EDUs waiting.
    pub async fn federation_outbox_destinations(&self) -> Result<Vec<String>, StoreError> {
        let rows = with_pool!(self, pool => {
            sqlx::query_scalar::<_, String>(
                "SELECT DISTINCT destination FROM federation_edu_outbox ORDER BY destination",
            )
            .fetch_all(pool)
            .await
        })?;
        Ok(rows)
    }

    /// Records a transaction the destination accepted, in one transaction: its persisted EDUs
    /// are gone, its last success is `now`, and its positions move from `(event_from,
    /// receipt_from)` to `(event_to, receipt_to)`. Returns false, moving no position, if they
    /// are no longer the ones the transaction was built from (another process moved them).
    #[allow(clippy::too_many_arguments)]
    pub async fn record_federation_delivery(
        &self,
        destination: &str,
        event_from: i64,
        event_to: i64,
        receipt_from: i64,
        receipt_to: i64,
        outbox_ids: &[i64],
        now: Option<i64>,
    ) -> Result<bool, StoreError> {
        let moved = with_pool!(self, pool => {
            let mut tx = pool.begin_write(&self.write_gate).await?;
            for id in outbox_ids {
                sqlx::query("DELETE FROM federation_edu_outbox WHERE id = $1")
                    .bind(*id)
                    .execute(&mut *tx)
                    .await?;
            }
            if let Some(now) = now {
                sqlx::query("UPDATE federation_destinations SET last_success_ts = $2 WHERE destination = $1")
                    .bind(destination)
                    .bind(now)
                    .execute(&mut *tx)
                    .await?;
            }
            let moved = sqlx::query(
                "UPDATE federation_destinations SET event_position = $3, receipt_position = $5 \
                 WHERE destination = $1 AND event_position = $2 AND receipt_position = $4",
            )
            .bind(destination)
            .bind(event_from)
            .bind(event_to)
            .bind(receipt_from)
            .bind(receipt_to)
            .execute(&mut *tx)
            .await?
            .rows_affected();
            tx.commit().await?;
            moved == 1
        });
        Ok(moved)
    }

    /// Every destination's queue (see [`QueueDepth`]), in one statement.
    pub async fn federation_queue_depths(
        &self,
        origin: &str,
    ) -> Result<Vec<QueueDepth>, StoreError> {
        let sql = format!(
            "SELECT d.destination, d.last_success_ts, \
             (SELECT COUNT(*) FROM federation_destination_rooms dr JOIN events e ON e.room_nid = dr.room_nid \
              WHERE dr.destination = d.destination AND dr.stream_ordering > d.event_position \
              AND e.stream_ordering > d.event_position AND e.stream_ordering <= dr.stream_ordering \
              AND {}) AS events, \
             (SELECT COUNT(*) FROM federation_edu_outbox o WHERE o.destination = d.destination) AS edus \
             FROM federation_destinations d ORDER BY d.destination",
            ours_to_send(1)
        );
        let rows = with_pool!(self, pool => {
            let mut out = Vec::new();
            for row in sqlx::query(sqlx::AssertSqlSafe(sql.clone()))
            .bind(users_of(origin))
            .fetch_all(pool)
            .await?
            {
                out.push(QueueDepth {
                    destination: row.try_get("destination")?,
                    events: row.try_get("events")?,
                    edus: row.try_get("edus")?,
                    last_success_ts: row.try_get("last_success_ts")?,
                });
            }
            out
        });
        Ok(rows)
    }

    /// Every destination that is backing off.
    pub async fn federation_backoffs(&self) -> Result<Vec<BackoffRow>, StoreError> {
        let rows = with_pool!(self, pool => {
            let mut out = Vec::new();
            for row in sqlx::query(
                "SELECT destination, failures, retry_at_ts, down_since_ts, last_error \
                 FROM federation_backoff ORDER BY destination",
            )
            .fetch_all(pool)
            .await?
            {
                out.push(BackoffRow {
                    destination: row.try_get("destination")?,
                    failures: row.try_get::<i64, _>("failures")?,
                    retry_at_ts: row.try_get("retry_at_ts")?,
                    down_since_ts: row.try_get("down_since_ts")?,
                    last_error: row.try_get("last_error")?,
                });
            }
            out
        });
        Ok(rows)
    }

    /// Writes a destination's backoff.
    pub async fn set_federation_backoff(&self, row: &BackoffRow) -> Result<(), StoreError> {
        with_pool!(self, pool => {
            let mut tx = pool.begin_write(&self.write_gate).await?;
            sqlx::query(
                "INSERT INTO federation_backoff (destination, failures, retry_at_ts, down_since_ts, last_error) \
                 VALUES ($1, $2, $3, $4, $5) \
                 ON CONFLICT (destination) DO UPDATE SET failures = excluded.failures, \
                 retry_at_ts = excluded.retry_at_ts, down_since_ts = excluded.down_since_ts, \
                 last_error = excluded.last_error",
            )
            .bind(&row.destination)
            .bind(row.failures)
            .bind(row.retry_at_ts)
            .bind(row.down_since_ts)
            .bind(&row.last_error)
            .execute(&mut *tx)
            .await?;
            tx.commit().await?;
        });
        Ok(())
    }

    /// Forgets a destination's backoff: it answered.
    pub async fn clear_federation_backoff(&self, destination: &str) -> Result<(), StoreError> {
        with_pool!(self, pool => {
            let mut tx = pool.begin_write(&self.write_gate).await?;
            sqlx::query("DELETE FROM federation_backoff WHERE destination = $1")
                .bind(destination)
                .execute(&mut *tx)
                .await?;
            tx.commit().await?;
        });
        Ok(())
    }

    /// `(membership event nid, membership)` of each member of a room as its current state has
    /// them: the membership of most entries of a recent state snapshot, without reading events.
    pub async fn room_membership_events(
        &self,
        room_nid: i64,
    ) -> Result<Vec<(i64, String)>, StoreError> {
        let rows = with_pool!(self, pool => {
            sqlx::query_as::<_, (i64, String)>(
                "SELECT event_nid, membership FROM room_memberships WHERE room_nid = $1",
            )
            .bind(room_nid)
            .fetch_all(pool)
            .await
        })?;
        Ok(rows)
    }
}

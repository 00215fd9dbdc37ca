//! Receipts, to-device messages and presence: small rows that /sync delivers by stream position.

use std::collections::HashMap;

use sqlx::Row;

use crate::store::BeginWrite;
use crate::{Store, StoreError, with_pool};

/// A stored receipt.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ReceiptRow {
    pub user_id: String,
    pub receipt_type: String,
    pub thread_id: String,
    pub event_id: String,
    pub ts: i64,
    pub stream_position: i64,
}

/// A to-device message waiting for its device.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ToDeviceRow {
    pub stream_position: i64,
    pub sender: String,
    pub event_type: String,
    pub content: String,
}

/// A user's presence.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PresenceRow {
    pub user_id: String,
    pub state: String,
    pub status_msg: Option<String>,
    pub last_active_ts: i64,
    pub stream_position: i64,
}

/// The next position of `stream`, taken inside the caller's transaction.
macro_rules! next_position {
    ($tx:expr, $stream:expr) => {
        sqlx::query_scalar::<_, i64>(
            "UPDATE stream_positions SET position = position + 1 WHERE stream = $1 RETURNING position",
        )
        .bind($stream)
        .fetch_one(&mut *$tx)
        .await?
    };
}

impl Store {
    /// The current positions of some of the streams in `stream_positions`, in one read, by
    /// stream (a stream that has no row is absent).
    pub async fn stream_positions_of(
        &self,
        streams: &[&str],
    ) -> Result<HashMap<String, i64>, StoreError> {
        let placeholders: Vec<String> = (1..=streams.len()).map(|i| format!("${i}")).collect();
        let sql = format!(
            "SELECT stream, position FROM stream_positions WHERE stream IN ({})",
            placeholders.join(", ")
        );
        let rows = with_pool!(self, pool => {
            let mut query = sqlx::query_as::<_, (String, i64)>(sqlx::AssertSqlSafe(sql.clone()));
            for stream in streams {
                query = query.bind(*stream);
            }
            query.fetch_all(pool).await
        })?;
        Ok(rows.into_iter().collect())
    }

    /// The current position of one of the streams in `stream_positions`.
    pub async fn stream_position(&self, stream: &str) -> Result<i64, StoreError> {
        self.stream_positions_of(&[stream])
            .await?
            .remove(stream)
            .ok_or(StoreError::Database(sqlx::Error::RowNotFound))
    }

    /// Sets a user's receipt of one type (and thread) in a room. Returns its stream position.
    pub async fn set_receipt(
        &self,
        room_nid: i64,
        user_id: &str,
        receipt_type: &str,
        thread_id: &str,
        event_id: &str,
        ts: i64,
    ) -> Result<i64, StoreError> {
        let position = with_pool!(self, pool => {
            let mut tx = pool.begin_write(&self.write_gate).await?;
            let position = next_position!(tx, "receipts");
            sqlx::query(
                "INSERT INTO receipts (room_nid, user_id, receipt_type, thread_id, event_id, ts, stream_position) \
                 VALUES ($1, $2, $3, $4, $5, $6, $7) \
                 ON CONFLICT (room_nid, user_id, receipt_type, thread_id) DO UPDATE SET \
                 event_id = excluded.event_id, ts = excluded.ts, stream_position = excluded.stream_position",
            )
            .bind(room_nid)
            .bind(user_id)
            .bind(receipt_type)
            .bind(thread_id)
            .bind(event_id)
            .bind(ts)
            .bind(position)
            .execute(&mut *tx)
            .await?;
            tx.commit().await?;
            position
        });
        Ok(position)
    }

    /// Queues to-device messages `(user, device, content)` from `sender`, once per
    /// `(sender, sender_device, event_type, txn_id)` (the spec's path is
    /// `/sendToDevice/{eventType}/{txnId}`). Returns false if the transaction was already sent.
    pub async fn queue_to_device(
        &self,
        sender: &str,
        sender_device: &str,
        txn_id: &str,
        event_type: &str,
        messages: &[(String, String, String)],
        now: i64,
    ) -> Result<bool, StoreError> {
        self.queue_to_device_everywhere(
            sender,
            sender_device,
            txn_id,
            event_type,
            messages,
            &[],
            now,
        )
        .await
    }

    /// [`Store::queue_to_device`] with, in the same transaction (so a retried request queues
    /// nothing twice), `m.direct_to_device` EDU contents for remote users' servers as
    /// `(destination, content JSON)`, put in the federation outbox.
    #[allow(clippy::too_many_arguments)]
    pub async fn queue_to_device_everywhere(
        &self,
        sender: &str,
        sender_device: &str,
        txn_id: &str,
        event_type: &str,
        messages: &[(String, String, String)],
        remote: &[(String, String)],
        now: i64,
    ) -> Result<bool, StoreError> {
        let fresh = with_pool!(self, pool => {
            let mut tx = pool.begin_write(&self.write_gate).await?;
            let inserted = sqlx::query(
                "INSERT INTO to_device_txns (sender, device_id, event_type, txn_id, created_ts) VALUES ($1, $2, $3, $4, $5) \
                 ON CONFLICT (sender, device_id, event_type, txn_id) DO NOTHING",
            )
            .bind(sender)
            .bind(sender_device)
            .bind(event_type)
            .bind(txn_id)
            .bind(now)
            .execute(&mut *tx)
            .await?
            .rows_affected();
            if inserted == 0 {
                false
            } else {
                for (user_id, device_id, content) in messages {
                    let position = next_position!(tx, "to_device");
                    sqlx::query(
                        "INSERT INTO to_device_messages (stream_position, user_id, device_id, sender, event_type, content) \
                         VALUES ($1, $2, $3, $4, $5, $6)",
                    )
                    .bind(position)
                    .bind(user_id)
                    .bind(device_id)
                    .bind(sender)
                    .bind(event_type)
                    .bind(content)
                    .execute(&mut *tx)
                    .await?;
                }
                for (destination, content) in remote {
                    sqlx::query(
                        "INSERT INTO federation_edu_outbox (destination, edu_type, content, created_ts) \
                         VALUES ($1, 'm.direct_to_device', $2, $3)",
                    )
                    .bind(destination)
                    .bind(content)
                    .bind(now)
                    .execute(&mut *tx)
                    .await?;
                }
                tx.commit().await?;
                true
            }
        });
        Ok(fresh)
    }

    /// A device's messages after `since`, oldest first, at most `limit`.
    pub async fn to_device_since(
        &self,
        user_id: &str,
        device_id: &str,
        since: i64,
        limit: i64,
    ) -> Result<Vec<ToDeviceRow>, StoreError> {
        let rows = with_pool!(self, pool => {
            let mut out = Vec::new();
            for row in sqlx::query(
                "SELECT stream_position, sender, event_type, content FROM to_device_messages \
                 WHERE user_id = $1 AND device_id = $2 AND stream_position > $3 ORDER BY stream_position LIMIT $4",
            )
            .bind(user_id)
            .bind(device_id)
            .bind(since)
            .bind(limit)
            .fetch_all(pool)
            .await?
            {
                out.push(ToDeviceRow {
                    stream_position: row.try_get("stream_position")?,
                    sender: row.try_get("sender")?,
                    event_type: row.try_get("event_type")?,
                    content: row.try_get("content")?,
                });
            }
            out
        });
        Ok(rows)
    }

    /// Deletes a device's messages up to `up_to`: the device acknowledged them by syncing with a
    /// token past them.
    pub async fn delete_to_device(
        &self,
        user_id: &str,
        device_id: &str,
        up_to: i64,
    ) -> Result<u64, StoreError> {
        let deleted = with_pool!(self, pool => {
            sqlx::query("DELETE FROM to_device_messages WHERE user_id = $1 AND device_id = $2 AND stream_position <= $3")
                .bind(user_id)
                .bind(device_id)
                .bind(up_to)
                .execute(pool)
                .await
                .map(|r| r.rows_affected())
        })?;
        Ok(deleted)
    }

    /// Sets a user's presence; returns its stream position.
    pub async fn set_presence(
        &self,
        user_id: &str,
        state: &str,
        status_msg: Option<&str>,
        now: i64,
    ) -> Result<i64, StoreError> {
        let position = with_pool!(self, pool => {
            let mut tx = pool.begin_write(&self.write_gate).await?;
            let position = next_position!(tx, "presence");
            sqlx::query(
                "INSERT INTO presence (user_id, state, status_msg, last_active_ts, stream_position) VALUES ($1, $2, $3, $4, $5) \
                 ON CONFLICT (user_id) DO UPDATE SET state = excluded.state, status_msg = excluded.status_msg, \
                 last_active_ts = excluded.last_active_ts, stream_position = excluded.stream_position",
            )
            .bind(user_id)
            .bind(state)
            .bind(status_msg)
            .bind(now)
            .bind(position)
            .execute(&mut *tx)
            .await?;
            tx.commit().await?;
            position
        });
        Ok(position)
    }

    /// One user's presence.
    pub async fn presence(&self, user_id: &str) -> Result<Option<PresenceRow>, StoreError> {
        Ok(self
            .presence_of(&[user_id.to_owned()], 0)
            .await?
            .into_iter()
            .next())
    }

    /// The presence of `users` changed after `since`.
    pub async fn presence_of(
        &self,
        users: &[String],
        since: i64,
    ) -> Result<Vec<PresenceRow>, StoreError> {
        if users.is_empty() {
            return Ok(Vec::new());
        }
        let placeholders: Vec<String> = (0..users.len()).map(|i| format!("${}", i + 2)).collect();
        let sql = format!(
            "SELECT user_id, state, status_msg, last_active_ts, stream_position FROM presence \
             WHERE stream_position > $1 AND user_id IN ({}) ORDER BY stream_position",
            placeholders.join(", ")
        );
        let rows = with_pool!(self, pool => {
            let mut query = sqlx::query(sqlx::AssertSqlSafe(sql.clone())).bind(since);
            for user in users {
                query = query.bind(user);
            }
            let mut out = Vec::new();
            for row in query.fetch_all(pool).await? {
                out.push(PresenceRow {
                    user_id: row.try_get("user_id")?,
                    state: row.try_get("state")?,
                    status_msg: row.try_get("status_msg")?,
                    last_active_ts: row.try_get("last_active_ts")?,
                    stream_position: row.try_get("stream_position")?,
                });
            }
            out
        });
        Ok(rows)
    }

    /// The users who became room mates of `user_id` after events stream position `since`:
    /// they joined a room the user is in, or the user joined a room they are in. By account, as
    /// [`Self::room_mates`].
    pub async fn room_mates_since(
        &self,
        user_id: &str,
        since: i64,
    ) -> Result<Vec<String>, StoreError> {
        let rows = with_pool!(self, pool => {
            sqlx::query_scalar::<_, String>(concat!(
                "SELECT DISTINCT ",
                crate::account_keys::account_of_member!("m.user_id"),
                " FROM room_memberships m \
                 JOIN room_memberships s ON s.room_nid = m.room_nid AND s.user_id = $1 AND s.membership = 'join' \
                 WHERE m.membership = 'join' AND m.user_id <> $1 \
                 AND (m.stream_ordering > $2 OR s.stream_ordering > $2) AND ",
                crate::account_keys::member_names_an_account!("m.user_id"),
            ))
            .bind(user_id)
            .bind(since)
            .fetch_all(pool)
            .await
        })?;
        Ok(rows)
    }

    /// Users who share a joined room with `user_id` (including them), by account: remote
    /// members of account-key rooms under the name their key is verified for, unverified and
    /// erased keys left out (MSC4243.md §2.7; presence is about accounts).
    pub async fn room_mates(&self, user_id: &str) -> Result<Vec<String>, StoreError> {
        let rows = with_pool!(self, pool => {
            sqlx::query_scalar::<_, String>(concat!(
                "SELECT DISTINCT ",
                crate::account_keys::account_of_member!("m.user_id"),
                " FROM room_memberships m WHERE m.membership = 'join' AND m.room_nid IN \
                 (SELECT s.room_nid FROM room_memberships s WHERE s.user_id = $1 AND s.membership = 'join') AND ",
                crate::account_keys::member_names_an_account!("m.user_id"),
            ))
            .bind(user_id)
            .fetch_all(pool)
            .await
        })?;
        Ok(rows)
    }
}

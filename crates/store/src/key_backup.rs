//! Server-side key backup (`/room_keys`): each user's backup versions (numbered per user, never
//! reused) and the room keys stored in them, with the `etag` that changes whenever a version's
//! keys do. The key data is opaque JSON text; which of two keys for a session is kept is the
//! service's rule, applied inside the write through the function it passes.

use sqlx::Row;

use crate::store::BeginWrite;
use crate::{Store, StoreError, with_pool};

/// A backup version.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct BackupVersionRow {
    pub version: i64,
    /// The `{algorithm, auth_data}` object, JSON text.
    pub algorithm_json: String,
    pub etag: i64,
    /// Keys stored in it.
    pub count: i64,
}

/// A room key in a backup.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RoomKeyRow {
    pub room_id: String,
    pub session_id: String,
    pub first_message_index: i64,
    pub forwarded_count: i64,
    pub is_verified: bool,
    /// The whole `KeyBackupData` object, JSON text.
    pub key_json: String,
}

/// Why keys could not be put in a backup version.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum PutKeysRefused {
    /// The version is not the user's current one; the current one, if any.
    NotCurrent(Option<i64>),
}

impl Store {
    /// Creates a backup version, numbered one past the user's highest (deleted ones included).
    pub async fn create_backup_version(
        &self,
        user_id: &str,
        algorithm_json: &str,
    ) -> Result<i64, StoreError> {
        let version = with_pool!(self, pool => {
            let mut tx = pool.begin_write(&self.write_gate).await?;
            let version: i64 = sqlx::query_scalar(
                "SELECT COALESCE(MAX(version), 0) + 1 FROM e2e_room_keys_versions WHERE user_id = $1",
            )
            .bind(user_id)
            .fetch_one(&mut *tx)
            .await?;
            sqlx::query(
                "INSERT INTO e2e_room_keys_versions (user_id, version, algorithm_json) VALUES ($1, $2, $3)",
            )
            .bind(user_id)
            .bind(version)
            .bind(algorithm_json)
            .execute(&mut *tx)
            .await?;
            tx.commit().await?;
            version
        });
        Ok(version)
    }

    /// A live backup version of the user, or the current (newest live) one when `version` is
    /// `None`.
    pub async fn backup_version(
        &self,
        user_id: &str,
        version: Option<i64>,
    ) -> Result<Option<BackupVersionRow>, StoreError> {
        let row = with_pool!(self, pool => {
            let row = sqlx::query(
                "SELECT v.version, v.algorithm_json, v.etag, \
                 (SELECT COUNT(*) FROM e2e_room_keys k WHERE k.user_id = v.user_id AND k.version = v.version) AS n \
                 FROM e2e_room_keys_versions v WHERE v.user_id = $1 AND NOT v.deleted \
                 AND ($2 IS NULL OR v.version = $2) ORDER BY v.version DESC LIMIT 1",
            )
            .bind(user_id)
            .bind(version)
            .fetch_optional(pool)
            .await?;
            match row {
                Some(row) => Some(BackupVersionRow {
                    version: row.try_get(0)?,
                    algorithm_json: row.try_get(1)?,
                    etag: row.try_get(2)?,
                    count: row.try_get(3)?,
                }),
                None => None,
            }
        });
        Ok(row)
    }

    /// Replaces a live version's `{algorithm, auth_data}`; whether it exists.
    pub async fn update_backup_version(
        &self,
        user_id: &str,
        version: i64,
        algorithm_json: &str,
    ) -> Result<bool, StoreError> {
        let n = with_pool!(self, pool => {
            sqlx::query(
                "UPDATE e2e_room_keys_versions SET algorithm_json = $3 \
                 WHERE user_id = $1 AND version = $2 AND NOT deleted",
            )
            .bind(user_id)
            .bind(version)
            .bind(algorithm_json)
            .execute(pool)
            .await?
            .rows_affected()
        });
        Ok(n > 0)
    }

    /// Deletes a live version and its keys (the number stays taken); whether it existed.
    pub async fn delete_backup_version(
        &self,
        user_id: &str,
        version: i64,
    ) -> Result<bool, StoreError> {
        let deleted = with_pool!(self, pool => {
            let mut tx = pool.begin_write(&self.write_gate).await?;
            let n = sqlx::query(
                "UPDATE e2e_room_keys_versions SET deleted = TRUE WHERE user_id = $1 AND version = $2 AND NOT deleted",
            )
            .bind(user_id)
            .bind(version)
            .execute(&mut *tx)
            .await?
            .rows_affected();
            sqlx::query("DELETE FROM e2e_room_keys WHERE user_id = $1 AND version = $2")
                .bind(user_id)
                .bind(version)
                .execute(&mut *tx)
                .await?;
            tx.commit().await?;
            n > 0
        });
        Ok(deleted)
    }

    /// Puts keys in `version`, which must be the user's current version. For a session that
    /// already has a key, `replaces(new, old)` decides. Bumps the etag if anything changed.
    /// Returns the version's `(etag, count)` after the write.
    pub async fn put_room_keys(
        &self,
        user_id: &str,
        version: i64,
        keys: &[RoomKeyRow],
        replaces: fn(&RoomKeyRow, &RoomKeyRow) -> bool,
    ) -> Result<Result<(i64, i64), PutKeysRefused>, StoreError> {
        let outcome = with_pool!(self, pool => {
            let mut tx = pool.begin_write(&self.write_gate).await?;
            let current: Option<i64> = sqlx::query_scalar(
                "SELECT MAX(version) FROM e2e_room_keys_versions WHERE user_id = $1 AND NOT deleted",
            )
            .bind(user_id)
            .fetch_one(&mut *tx)
            .await?;
            if current != Some(version) {
                Err(PutKeysRefused::NotCurrent(current))
            } else {
                let mut changed = false;
                for key in keys {
                    let old = sqlx::query(
                        "SELECT first_message_index, forwarded_count, is_verified, key_json FROM e2e_room_keys \
                         WHERE user_id = $1 AND version = $2 AND room_id = $3 AND session_id = $4",
                    )
                    .bind(user_id)
                    .bind(version)
                    .bind(&key.room_id)
                    .bind(&key.session_id)
                    .fetch_optional(&mut *tx)
                    .await?;
                    let write = match old {
                        None => true,
                        Some(old) => {
                            let old = RoomKeyRow {
                                room_id: key.room_id.clone(),
                                session_id: key.session_id.clone(),
                                first_message_index: old.try_get(0)?,
                                forwarded_count: old.try_get(1)?,
                                is_verified: old.try_get(2)?,
                                key_json: old.try_get(3)?,
                            };
                            replaces(key, &old)
                        }
                    };
                    if write {
                        changed = true;
                        sqlx::query(
                            "INSERT INTO e2e_room_keys (user_id, version, room_id, session_id, \
                             first_message_index, forwarded_count, is_verified, key_json) \
                             VALUES ($1, $2, $3, $4, $5, $6, $7, $8) \
                             ON CONFLICT (user_id, version, room_id, session_id) DO UPDATE SET \
                             first_message_index = excluded.first_message_index, \
                             forwarded_count = excluded.forwarded_count, \
                             is_verified = excluded.is_verified, key_json = excluded.key_json",
                        )
                        .bind(user_id)
                        .bind(version)
                        .bind(&key.room_id)
                        .bind(&key.session_id)
                        .bind(key.first_message_index)
                        .bind(key.forwarded_count)
                        .bind(key.is_verified)
                        .bind(&key.key_json)
                        .execute(&mut *tx)
                        .await?;
                    }
                }
                if changed {
                    sqlx::query(
                        "UPDATE e2e_room_keys_versions SET etag = etag + 1 WHERE user_id = $1 AND version = $2",
                    )
                    .bind(user_id)
                    .bind(version)
                    .execute(&mut *tx)
                    .await?;
                }
                let etag_count: (i64, i64) = sqlx::query_as(
                    "SELECT v.etag, (SELECT COUNT(*) FROM e2e_room_keys k WHERE k.user_id = v.user_id AND k.version = v.version) \
                     FROM e2e_room_keys_versions v WHERE v.user_id = $1 AND v.version = $2",
                )
                .bind(user_id)
                .bind(version)
                .fetch_one(&mut *tx)
                .await?;
                tx.commit().await?;
                Ok(etag_count)
            }
        });
        Ok(outcome)
    }

    /// The keys of a version, all or of one room or of one session.
    pub async fn room_keys(
        &self,
        user_id: &str,
        version: i64,
        room_id: Option<&str>,
        session_id: Option<&str>,
    ) -> Result<Vec<RoomKeyRow>, StoreError> {
        let rows = with_pool!(self, pool => {
            let mut out = Vec::new();
            for row in sqlx::query(
                "SELECT room_id, session_id, first_message_index, forwarded_count, is_verified, key_json \
                 FROM e2e_room_keys WHERE user_id = $1 AND version = $2 \
                 AND ($3 IS NULL OR room_id = $3) AND ($4 IS NULL OR session_id = $4) \
                 ORDER BY room_id, session_id",
            )
            .bind(user_id)
            .bind(version)
            .bind(room_id)
            .bind(session_id)
            .fetch_all(pool)
            .await?
            {
                out.push(RoomKeyRow {
                    room_id: row.try_get(0)?,
                    session_id: row.try_get(1)?,
                    first_message_index: row.try_get(2)?,
                    forwarded_count: row.try_get(3)?,
                    is_verified: row.try_get(4)?,
                    key_json: row.try_get(5)?,
                });
            }
            out
        });
        Ok(rows)
    }

    /// Deletes keys of a live version (all, of a room, or of a session) and bumps its etag if
    /// any went. Returns `(etag, count)`, or `None` if there is no such live version.
    pub async fn delete_room_keys(
        &self,
        user_id: &str,
        version: i64,
        room_id: Option<&str>,
        session_id: Option<&str>,
    ) -> Result<Option<(i64, i64)>, StoreError> {
        let out = with_pool!(self, pool => {
            let mut tx = pool.begin_write(&self.write_gate).await?;
            let live: Option<i64> = sqlx::query_scalar(
                "SELECT version FROM e2e_room_keys_versions WHERE user_id = $1 AND version = $2 AND NOT deleted",
            )
            .bind(user_id)
            .bind(version)
            .fetch_optional(&mut *tx)
            .await?;
            if live.is_none() {
                None
            } else {
                let n = sqlx::query(
                    "DELETE FROM e2e_room_keys WHERE user_id = $1 AND version = $2 \
                     AND ($3 IS NULL OR room_id = $3) AND ($4 IS NULL OR session_id = $4)",
                )
                .bind(user_id)
                .bind(version)
                .bind(room_id)
                .bind(session_id)
                .execute(&mut *tx)
                .await?
                .rows_affected();
                if n > 0 {
                    sqlx::query(
                        "UPDATE e2e_room_keys_versions SET etag = etag + 1 WHERE user_id = $1 AND version = $2",
                    )
                    .bind(user_id)
                    .bind(version)
                    .execute(&mut *tx)
                    .await?;
                }
                let etag_count: (i64, i64) = sqlx::query_as(
                    "SELECT v.etag, (SELECT COUNT(*) FROM e2e_room_keys k WHERE k.user_id = v.user_id AND k.version = v.version) \
                     FROM e2e_room_keys_versions v WHERE v.user_id = $1 AND v.version = $2",
                )
                .bind(user_id)
                .bind(version)
                .fetch_one(&mut *tx)
                .await?;
                tx.commit().await?;
                Some(etag_count)
            }
        });
        Ok(out)
    }
}

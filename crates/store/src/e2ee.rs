//! End-to-end encryption keys as stored: device keys, one-time and fallback keys, cross-signing
//! keys and the signatures on them, and the device-list stream (who changed devices or keys, at
//! which position). Keys are JSON text exactly as the service hands them over; deciding whether
//! an upload is acceptable is the service's job, which it does inside the write through the
//! functions it passes (so that the check and the write see the same rows).
//!
//! Everything is keyed by user id as an opaque string.

use std::collections::HashMap;

use sqlx::Row;

use crate::store::BeginWrite;
use crate::{Backend, Store, StoreError, with_pool};

/// Users per `IN` list.
const USERS_PER_STATEMENT: usize = 256;

/// The next position of the device-list stream, taken inside the caller's transaction, with
/// the row that announces `$user`'s change: of the whole user (only this server's clients hear
/// of it), of one device (`device: $device`, told to other servers as `m.device_list_update`)
/// or of the user's cross-signing keys (`cross_signing`, told as `m.signing_key_update`);
/// `device_on_join: $device` announces an unchanged device again after the user joined a room.
macro_rules! announce_device_list_change {
    ($tx:expr, $user:expr) => {
        $crate::e2ee::announce_device_list_change!(@row $tx, $user, None::<&str>, "user")
    };
    ($tx:expr, $user:expr, device: $device:expr) => {
        $crate::e2ee::announce_device_list_change!(@row $tx, $user, Some($device), "device")
    };
    ($tx:expr, $user:expr, device_on_join: $device:expr) => {
        $crate::e2ee::announce_device_list_change!(@row $tx, $user, Some($device), "device_on_join")
    };
    ($tx:expr, $user:expr, cross_signing) => {
        $crate::e2ee::announce_device_list_change!(@row $tx, $user, None::<&str>, "cross_signing")
    };
    (@row $tx:expr, $user:expr, $device:expr, $kind:expr) => {{
        let position = sqlx::query_scalar::<_, i64>(
            "UPDATE stream_positions SET position = position + 1 WHERE stream = 'device_lists' RETURNING position",
        )
        .fetch_one(&mut *$tx)
        .await?;
        sqlx::query(
            "INSERT INTO device_list_changes (stream_position, user_id, device_id, kind) VALUES ($1, $2, $3, $4)",
        )
        .bind(position)
        .bind($user)
        .bind($device)
        .bind($kind)
        .execute(&mut *$tx)
        .await?;
        position
    }};
}
pub(crate) use announce_device_list_change;

/// What follows a device's deletion inside the caller's transaction `$tx` (its row deleted;
/// its keys went with it by cascade): its pending to-device messages are deleted (no device
/// will ever fetch them; a new device with the same id must not receive them), and the
/// device-list change is announced. Every path that deletes a device goes through it.
macro_rules! device_deleted {
    ($tx:expr, $user:expr, $device:expr) => {{
        let (user, device): (&str, &str) = ($user, $device);
        sqlx::query("DELETE FROM to_device_messages WHERE user_id = $1 AND device_id = $2")
            .bind(user)
            .bind(device)
            .execute(&mut *$tx)
            .await?;
        $crate::e2ee::announce_device_list_change!($tx, user, device: device);
    }};
}
pub(crate) use device_deleted;

/// Writes a `/keys/upload` inside the caller's transaction `$tx` (see [`Store::upload_keys`]):
/// `Ok(the device-list position when the device keys changed)`, or `Err(UploadRefused)` after
/// which the caller must roll back (it may have written part of the upload). Shared by
/// `/keys/upload` and the keys a dehydrated device is uploaded with, so both take the same rules.
macro_rules! write_keys_upload {
    ($tx:expr, $upload:expr) => {{
        let mut announced = None;
        let mut refused = None;
        if let Some(decide) = $upload.device_keys {
            let stored: Option<String> = sqlx::query_scalar(
                "SELECT key_json FROM e2e_device_keys WHERE user_id = $1 AND device_id = $2",
            )
            .bind($upload.user_id)
            .bind($upload.device_id)
            .fetch_optional(&mut *$tx)
            .await?;
            match decide(stored.as_deref()) {
                $crate::e2ee::DeviceKeysDecision::Keep => {}
                $crate::e2ee::DeviceKeysDecision::Refuse(why) => refused = Some($crate::e2ee::UploadRefused::DeviceKeys(why)),
                $crate::e2ee::DeviceKeysDecision::Store(json) => {
                    sqlx::query(
                        "INSERT INTO e2e_device_keys (user_id, device_id, key_json) VALUES ($1, $2, $3) \
                         ON CONFLICT (user_id, device_id) DO UPDATE SET key_json = excluded.key_json",
                    )
                    .bind($upload.user_id)
                    .bind($upload.device_id)
                    .bind(&json)
                    .execute(&mut *$tx)
                    .await?;
                    announced = Some($crate::e2ee::announce_device_list_change!($tx, $upload.user_id, device: $upload.device_id));
                }
            }
        }
        if refused.is_none() && !$upload.one_time_keys.is_empty() {
            let mut added = 0i64;
            for key in $upload.one_time_keys {
                let stored: Option<String> = sqlx::query_scalar(
                    "SELECT key_json FROM e2e_one_time_keys WHERE user_id = $1 AND device_id = $2 AND key_id = $3",
                )
                .bind($upload.user_id)
                .bind($upload.device_id)
                .bind(&key.key_id)
                .fetch_optional(&mut *$tx)
                .await?;
                match stored {
                    Some(stored) if ($upload.same_key)(&stored, &key.key_json) => {}
                    Some(_) => {
                        refused = Some($crate::e2ee::UploadRefused::OneTimeKeyConflict(key.key_id.clone()));
                        break;
                    }
                    None => {
                        sqlx::query(
                            "INSERT INTO e2e_one_time_keys (user_id, device_id, algorithm, key_id, key_json, uploaded_ts) \
                             VALUES ($1, $2, $3, $4, $5, $6)",
                        )
                        .bind($upload.user_id)
                        .bind($upload.device_id)
                        .bind(&key.algorithm)
                        .bind(&key.key_id)
                        .bind(&key.key_json)
                        .bind($upload.now)
                        .execute(&mut *$tx)
                        .await?;
                        added += 1;
                    }
                }
            }
            if refused.is_none() && added > 0 {
                let held: i64 = sqlx::query_scalar(
                    "SELECT COUNT(*) FROM e2e_one_time_keys WHERE user_id = $1 AND device_id = $2",
                )
                .bind($upload.user_id)
                .bind($upload.device_id)
                .fetch_one(&mut *$tx)
                .await?;
                if held > $upload.max_one_time_keys {
                    refused = Some($crate::e2ee::UploadRefused::TooManyOneTimeKeys);
                }
            }
        }
        if refused.is_none() {
            for key in $upload.fallback_keys {
                let stored: Option<(String, String)> = sqlx::query_as(
                    "SELECT key_id, key_json FROM e2e_fallback_keys \
                     WHERE user_id = $1 AND device_id = $2 AND algorithm = $3",
                )
                .bind($upload.user_id)
                .bind($upload.device_id)
                .bind(&key.algorithm)
                .fetch_optional(&mut *$tx)
                .await?;
                let same = stored.as_ref().is_some_and(|(id, json)| {
                    *id == key.key_id && ($upload.same_key)(json, &key.key_json)
                });
                if !same {
                    sqlx::query(
                        "INSERT INTO e2e_fallback_keys (user_id, device_id, algorithm, key_id, key_json, used) \
                         VALUES ($1, $2, $3, $4, $5, FALSE) \
                         ON CONFLICT (user_id, device_id, algorithm) DO UPDATE SET \
                         key_id = excluded.key_id, key_json = excluded.key_json, used = FALSE",
                    )
                    .bind($upload.user_id)
                    .bind($upload.device_id)
                    .bind(&key.algorithm)
                    .bind(&key.key_id)
                    .bind(&key.key_json)
                    .execute(&mut *$tx)
                    .await?;
                }
            }
        }
        match refused {
            Some(refused) => Err(refused),
            None => Ok(announced),
        }
    }};
}
pub(crate) use write_keys_upload;

/// A one-time or fallback key to store: `key_id` is the whole `<algorithm>:<id>`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct NewKey {
    pub algorithm: String,
    pub key_id: String,
    pub key_json: String,
}

/// What the service decides about a device-key upload, given the stored keys (if any).
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum DeviceKeysDecision {
    /// Store this JSON (new keys, or the stored ones with more signatures); announce the change.
    Store(String),
    /// Nothing to change (an identical re-upload).
    Keep,
    /// Refused: nothing of the upload is written.
    Refuse(String),
}

/// The service's decision about uploaded device keys, given the stored ones (if any).
pub type DecideDeviceKeys<'a> = &'a (dyn Fn(Option<&str>) -> DeviceKeysDecision + Sync);

/// A `/keys/upload` as the store runs it.
pub struct KeysUpload<'a> {
    pub user_id: &'a str,
    pub device_id: &'a str,
    /// Decides about the device keys given the stored ones; `None`: no device keys uploaded.
    pub device_keys: Option<DecideDeviceKeys<'a>>,
    pub one_time_keys: &'a [NewKey],
    pub fallback_keys: &'a [NewKey],
    /// Whether a stored key and an uploaded one with the same id are the same key.
    pub same_key: fn(&str, &str) -> bool,
    /// The most one-time keys a device may hold.
    pub max_one_time_keys: i64,
    /// When the upload is stored (ms): one-time keys are claimed oldest upload first (MSC4225).
    pub now: i64,
}

/// Why an upload was refused (nothing was written).
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum UploadRefused {
    DeviceKeys(String),
    /// A one-time key with this id exists with different content.
    OneTimeKeyConflict(String),
    /// The device would hold more one-time keys than allowed.
    TooManyOneTimeKeys,
}

/// A claimed key.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ClaimedKey {
    pub user_id: String,
    pub device_id: String,
    pub key_id: String,
    pub key_json: String,
}

/// A device's keys for `/keys/query`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct DeviceKeysRow {
    pub user_id: String,
    pub device_id: String,
    pub key_json: String,
    pub display_name: Option<String>,
}

/// A signature by a user's user-signing key on another user's key.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct CrossSignatureRow {
    pub signer_user_id: String,
    pub signer_key_id: String,
    pub target_user_id: String,
    pub target_key_id: String,
    pub signature: String,
}

/// A membership change a device-list computation looks at (see
/// [`Store::device_list_membership_changes`]).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct MembershipChange {
    pub user_id: String,
    pub membership: String,
}

/// `$first, $first+1, …`: `n` numbered placeholders for an `IN (…)` list.
pub(crate) fn placeholders(first: usize, n: usize) -> String {
    (first..first + n)
        .map(|i| format!("${i}"))
        .collect::<Vec<_>>()
        .join(", ")
}

impl Store {
    /// Runs a `/keys/upload` in one transaction: the device keys as the service decides, the
    /// one-time keys (an existing id must be the same key), the fallback keys (replacing the
    /// device's key of the same algorithm unless it is the same key, which keeps its `used`
    /// mark). On refusal nothing is written. Returns the device-list position when the device
    /// keys changed.
    pub async fn upload_keys(
        &self,
        upload: &KeysUpload<'_>,
    ) -> Result<Result<Option<i64>, UploadRefused>, StoreError> {
        let outcome = with_pool!(self, pool => {
            let mut tx = pool.begin_write(&self.write_gate).await?;
            match write_keys_upload!(tx, upload) {
                // Dropping the transaction rolls it back.
                Err(refused) => Err(refused),
                Ok(announced) => {
                    tx.commit().await?;
                    Ok(announced)
                }
            }
        });
        Ok(outcome)
    }

    /// The number of unclaimed one-time keys of a device, per algorithm, and the algorithms of
    /// its unused fallback keys: one statement (every sync asks).
    pub async fn one_time_key_counts(
        &self,
        user_id: &str,
        device_id: &str,
    ) -> Result<(Vec<(String, i64)>, Vec<String>), StoreError> {
        let rows: Vec<(String, String, i64)> = with_pool!(self, pool => {
            sqlx::query_as(
                "SELECT 'otk' AS kind, algorithm, COUNT(*) AS n FROM e2e_one_time_keys \
                 WHERE user_id = $1 AND device_id = $2 GROUP BY algorithm \
                 UNION ALL SELECT 'fallback', algorithm, CAST(0 AS BIGINT) FROM e2e_fallback_keys \
                 WHERE user_id = $1 AND device_id = $2 AND NOT used",
            )
            .bind(user_id)
            .bind(device_id)
            .fetch_all(pool)
            .await?
        });
        let mut counts = Vec::new();
        let mut fallbacks = Vec::new();
        for (kind, algorithm, n) in rows {
            if kind == "otk" {
                counts.push((algorithm, n));
            } else {
                fallbacks.push(algorithm);
            }
        }
        counts.sort();
        fallbacks.sort();
        Ok((counts, fallbacks))
    }

    /// Claims one key per `(user, device, algorithm)`, in one transaction: a one-time key,
    /// deleted as it is handed out so that no two claims get the same one, or else the device's
    /// fallback key of that algorithm, marked used. Devices with neither are left out.
    pub async fn claim_keys(
        &self,
        wanted: &[(String, String, String)],
    ) -> Result<Vec<ClaimedKey>, StoreError> {
        // PostgreSQL: a concurrent claim skips the row another one holds instead of waiting for
        // it and then finding it gone. SQLite runs one writer at a time.
        let lock = match &self.backend {
            Backend::Postgres(_) => " FOR UPDATE SKIP LOCKED",
            Backend::Sqlite(_) => "",
        };
        let claim_sql = format!(
            "DELETE FROM e2e_one_time_keys WHERE user_id = $1 AND device_id = $2 AND key_id = \
             (SELECT key_id FROM e2e_one_time_keys WHERE user_id = $1 AND device_id = $2 AND algorithm = $3 \
              ORDER BY uploaded_ts, key_id LIMIT 1{lock}) RETURNING key_id, key_json"
        );
        let claimed = with_pool!(self, pool => {
            let mut tx = pool.begin_write(&self.write_gate).await?;
            let mut out = Vec::new();
            for (user_id, device_id, algorithm) in wanted {
                let row: Option<(String, String)> = sqlx::query_as(sqlx::AssertSqlSafe(claim_sql.clone()))
                    .bind(user_id)
                    .bind(device_id)
                    .bind(algorithm)
                    .fetch_optional(&mut *tx)
                    .await?;
                let row = match row {
                    Some(row) => Some(row),
                    None => {
                        sqlx::query_as(
                            "UPDATE e2e_fallback_keys SET used = TRUE \
                             WHERE user_id = $1 AND device_id = $2 AND algorithm = $3 \
                             RETURNING key_id, key_json",
                        )
                        .bind(user_id)
                        .bind(device_id)
                        .bind(algorithm)
                        .fetch_optional(&mut *tx)
                        .await?
                    }
                };
                if let Some((key_id, key_json)) = row {
                    out.push(ClaimedKey {
                        user_id: user_id.clone(),
                        device_id: device_id.clone(),
                        key_id,
                        key_json,
                    });
                }
            }
            tx.commit().await?;
            out
        });
        Ok(claimed)
    }

    /// The device keys of every device of `user_ids` that uploaded some, with display names.
    pub async fn device_keys_of(
        &self,
        user_ids: &[&str],
    ) -> Result<Vec<DeviceKeysRow>, StoreError> {
        let mut out = Vec::new();
        for chunk in user_ids.chunks(USERS_PER_STATEMENT) {
            let sql = format!(
                "SELECT k.user_id, k.device_id, k.key_json, d.display_name FROM e2e_device_keys k \
                 JOIN devices d ON d.user_id = k.user_id AND d.device_id = k.device_id \
                 WHERE k.user_id IN ({}) ORDER BY k.user_id, k.device_id",
                placeholders(1, chunk.len())
            );
            with_pool!(self, pool => {
                let mut query = sqlx::query(sqlx::AssertSqlSafe(sql.clone()));
                for user in chunk {
                    query = query.bind(*user);
                }
                for row in query.fetch_all(pool).await? {
                    out.push(DeviceKeysRow {
                        user_id: row.try_get(0)?,
                        device_id: row.try_get(1)?,
                        key_json: row.try_get(2)?,
                        display_name: row.try_get(3)?,
                    });
                }
            });
        }
        Ok(out)
    }

    /// Replaces the stored device keys of one device (signatures merged in by the service);
    /// whether the device had keys. Announces the owner's device-list change.
    pub async fn set_device_keys_json(
        &self,
        user_id: &str,
        device_id: &str,
        key_json: &str,
    ) -> Result<bool, StoreError> {
        let updated = with_pool!(self, pool => {
            let mut tx = pool.begin_write(&self.write_gate).await?;
            let n = sqlx::query("UPDATE e2e_device_keys SET key_json = $3 WHERE user_id = $1 AND device_id = $2")
                .bind(user_id)
                .bind(device_id)
                .bind(key_json)
                .execute(&mut *tx)
                .await?
                .rows_affected();
            if n > 0 {
                announce_device_list_change!(tx, user_id, device: device_id);
                tx.commit().await?;
            }
            n > 0
        });
        Ok(updated)
    }

    /// The cross-signing keys of `user_ids`: `(user, key type, JSON)`.
    pub async fn cross_signing_keys_of(
        &self,
        user_ids: &[&str],
    ) -> Result<Vec<(String, String, String)>, StoreError> {
        let mut out = Vec::new();
        for chunk in user_ids.chunks(USERS_PER_STATEMENT) {
            let sql = format!(
                "SELECT user_id, key_type, key_json FROM e2e_cross_signing_keys WHERE user_id IN ({})",
                placeholders(1, chunk.len())
            );
            with_pool!(self, pool => {
                let mut query = sqlx::query_as::<_, (String, String, String)>(sqlx::AssertSqlSafe(sql.clone()));
                for user in chunk {
                    query = query.bind(*user);
                }
                out.extend(query.fetch_all(pool).await?);
            });
        }
        Ok(out)
    }

    /// Stores cross-signing keys `(key type, JSON)` of a user in one transaction and announces
    /// the change. Signatures other users made on an old master key stay stored but name its
    /// key id, so they are no longer shown with the new one.
    pub async fn set_cross_signing_keys(
        &self,
        user_id: &str,
        keys: &[(&str, String)],
    ) -> Result<i64, StoreError> {
        let position = with_pool!(self, pool => {
            let mut tx = pool.begin_write(&self.write_gate).await?;
            for (key_type, json) in keys {
                sqlx::query(
                    "INSERT INTO e2e_cross_signing_keys (user_id, key_type, key_json) VALUES ($1, $2, $3) \
                     ON CONFLICT (user_id, key_type) DO UPDATE SET key_json = excluded.key_json",
                )
                .bind(user_id)
                .bind(*key_type)
                .bind(json)
                .execute(&mut *tx)
                .await?;
            }
            let position = announce_device_list_change!(tx, user_id, cross_signing);
            tx.commit().await?;
            position
        });
        Ok(position)
    }

    /// Stores signatures one user's user-signing key made on other users' master keys, and
    /// announces the signer's change (only the signer sees them).
    pub async fn add_cross_signatures(
        &self,
        signatures: &[CrossSignatureRow],
    ) -> Result<(), StoreError> {
        let Some(first) = signatures.first() else {
            return Ok(());
        };
        with_pool!(self, pool => {
            let mut tx = pool.begin_write(&self.write_gate).await?;
            for sig in signatures {
                sqlx::query(
                    "INSERT INTO e2e_cross_signing_signatures \
                     (signer_user_id, signer_key_id, target_user_id, target_key_id, signature) \
                     VALUES ($1, $2, $3, $4, $5) \
                     ON CONFLICT (signer_user_id, target_user_id, target_key_id, signer_key_id) \
                     DO UPDATE SET signature = excluded.signature",
                )
                .bind(&sig.signer_user_id)
                .bind(&sig.signer_key_id)
                .bind(&sig.target_user_id)
                .bind(&sig.target_key_id)
                .bind(&sig.signature)
                .execute(&mut *tx)
                .await?;
            }
            announce_device_list_change!(tx, first.signer_user_id.as_str());
            tx.commit().await?;
        });
        Ok(())
    }

    /// The signatures `signer` made on the keys of `target_users`.
    pub async fn cross_signatures_by(
        &self,
        signer: &str,
        target_users: &[&str],
    ) -> Result<Vec<CrossSignatureRow>, StoreError> {
        let mut out = Vec::new();
        for chunk in target_users.chunks(USERS_PER_STATEMENT) {
            let sql = format!(
                "SELECT signer_user_id, signer_key_id, target_user_id, target_key_id, signature \
                 FROM e2e_cross_signing_signatures WHERE signer_user_id = $1 AND target_user_id IN ({})",
                placeholders(2, chunk.len())
            );
            with_pool!(self, pool => {
                let mut query = sqlx::query(sqlx::AssertSqlSafe(sql.clone())).bind(signer);
                for user in chunk {
                    query = query.bind(*user);
                }
                for row in query.fetch_all(pool).await? {
                    out.push(CrossSignatureRow {
                        signer_user_id: row.try_get(0)?,
                        signer_key_id: row.try_get(1)?,
                        target_user_id: row.try_get(2)?,
                        target_key_id: row.try_get(3)?,
                        signature: row.try_get(4)?,
                    });
                }
            });
        }
        Ok(out)
    }

    /// Records that a user's device list changed (a device was created without keys yet, or
    /// renamed); returns the position.
    pub async fn announce_device_list_change(&self, user_id: &str) -> Result<i64, StoreError> {
        let position = with_pool!(self, pool => {
            let mut tx = pool.begin_write(&self.write_gate).await?;
            let position = announce_device_list_change!(tx, user_id);
            tx.commit().await?;
            position
        });
        Ok(position)
    }

    /// Announces each of a user's devices as changed (a `device` row each, in one
    /// transaction): after they joined a room, for the servers that do not know their devices
    /// yet. Returns how many.
    pub async fn announce_devices(&self, user_id: &str) -> Result<usize, StoreError> {
        let count = with_pool!(self, pool => {
            let mut tx = pool.begin_write(&self.write_gate).await?;
            let devices: Vec<String> = sqlx::query_scalar(
                "SELECT device_id FROM devices WHERE user_id = $1 ORDER BY device_id",
            )
            .bind(user_id)
            .fetch_all(&mut *tx)
            .await?;
            for device_id in &devices {
                announce_device_list_change!(tx, user_id, device_on_join: device_id.as_str());
            }
            tx.commit().await?;
            devices.len()
        });
        Ok(count)
    }

    /// The users whose device lists changed after `from` up to and including `to`.
    pub async fn device_list_changes(&self, from: i64, to: i64) -> Result<Vec<String>, StoreError> {
        let users = with_pool!(self, pool => {
            sqlx::query_scalar::<_, String>(
                "SELECT DISTINCT user_id FROM device_list_changes \
                 WHERE stream_position > $1 AND stream_position <= $2",
            )
            .bind(from)
            .bind(to)
            .fetch_all(pool)
            .await?
        });
        Ok(users)
    }

    /// Membership changes after events position `since` that may change whose device lists
    /// `user_id` tracks: in rooms `user_id` is joined to, the members whose membership changed
    /// since; in rooms `user_id` joined or left since, every member. Their current membership.
    /// Members are named by account: a remote key of an account-key room by the name it is
    /// verified for, unverified and erased keys left out (MSC4243.md §2.7: device lists are
    /// about accounts, and no device list is asked for an unverified key).
    pub async fn device_list_membership_changes(
        &self,
        user_id: &str,
        since: i64,
    ) -> Result<Vec<MembershipChange>, StoreError> {
        let rows: Vec<(String, String)> = with_pool!(self, pool => {
            sqlx::query_as(concat!(
                "SELECT ",
                crate::account_keys::account_of_member!("m.user_id"),
                ", m.membership FROM room_memberships mine \
                 JOIN room_memberships m ON m.room_nid = mine.room_nid \
                 WHERE mine.user_id = $1 AND (mine.membership = 'join' OR mine.stream_ordering > $2) \
                 AND (m.stream_ordering > $2 OR mine.stream_ordering > $2) AND m.user_id <> $1 AND ",
                crate::account_keys::member_names_an_account!("m.user_id"),
            ))
            .bind(user_id)
            .bind(since)
            .fetch_all(pool)
            .await?
        });
        Ok(rows
            .into_iter()
            .map(|(user_id, membership)| MembershipChange {
                user_id,
                membership,
            })
            .collect())
    }

    /// Which of `users` (account ids) share a joined room with `user_id` (a user always shares
    /// with themselves), counting the verified keys of remote accounts in account-key rooms.
    pub async fn sharing_a_room(
        &self,
        user_id: &str,
        users: &[&str],
    ) -> Result<HashMap<String, bool>, StoreError> {
        let mut out: HashMap<String, bool> =
            users.iter().map(|u| ((*u).to_owned(), false)).collect();
        out.insert(user_id.to_owned(), true);
        // Remote accounts are members of account-key rooms under their verified keys.
        let member_ids = self.member_ids_of(users).await?;
        let account_of: HashMap<&str, &str> = member_ids
            .iter()
            .map(|(member, account)| (member.as_str(), account.as_str()))
            .collect();
        let members: Vec<&str> = account_of.keys().copied().collect();
        for chunk in members.chunks(USERS_PER_STATEMENT) {
            let sql = format!(
                "SELECT DISTINCT m.user_id FROM room_memberships m \
                 JOIN room_memberships mine ON mine.room_nid = m.room_nid \
                 WHERE mine.user_id = $1 AND mine.membership = 'join' AND m.membership = 'join' \
                 AND m.user_id IN ({})",
                placeholders(2, chunk.len())
            );
            with_pool!(self, pool => {
                let mut query = sqlx::query_scalar::<_, String>(sqlx::AssertSqlSafe(sql.clone())).bind(user_id);
                for user in chunk {
                    query = query.bind(*user);
                }
                for member in query.fetch_all(pool).await? {
                    if let Some(account) = account_of.get(member.as_str()) {
                        out.insert((*account).to_owned(), true);
                    }
                }
            });
        }
        Ok(out)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::{
        NewSession, StoreOptions,
        test_support::{TestDatabase, create_test_user, test_backends},
    };

    async fn device(store: &Store, localpart: &str, device_id: &str) -> String {
        let user_id = create_test_user(store, localpart).await;
        store
            .create_session(&NewSession {
                user_id: &user_id,
                device_id,
                display_name: Some("Phone"),
                access_token_hash: localpart.as_bytes(),
                expires_ts: None,
                refresh_token_hash: None,
                now: 0,
            })
            .await
            .unwrap()
            .unwrap();
        user_id
    }

    fn key(id: &str, json: &str) -> NewKey {
        NewKey {
            algorithm: id.split_once(':').unwrap().0.to_owned(),
            key_id: id.to_owned(),
            key_json: json.to_owned(),
        }
    }

    fn same(a: &str, b: &str) -> bool {
        a == b
    }

    #[tokio::test]
    async fn uploads_all_or_nothing_claims_once_and_deletion_cascades() {
        for kind in test_backends() {
            let db = TestDatabase::create(kind).await;
            let store = Store::open(&db.url, &StoreOptions::default())
                .await
                .unwrap();
            let alice = device(&store, "alice", "DEV").await;
            let start = store.stream_position("device_lists").await.unwrap();
            let store_keys = |_: Option<&str>| DeviceKeysDecision::Store("{\"k\":1}".to_owned());
            let otks = [key("alg:A", "\"a\""), key("alg:B", "\"b\"")];
            let fallback = [key("alg:F", "\"f\"")];
            let upload = KeysUpload {
                user_id: &alice,
                device_id: "DEV",
                device_keys: Some(&store_keys),
                one_time_keys: &otks,
                fallback_keys: &fallback,
                same_key: same,
                max_one_time_keys: 10,
                now: 100,
            };
            let announced = store.upload_keys(&upload).await.unwrap().unwrap();
            assert_eq!(announced, Some(start + 1), "{kind:?}");

            // A conflicting key: nothing of this upload is written, device keys included.
            let refuse_nothing =
                |_: Option<&str>| DeviceKeysDecision::Store("{\"k\":2}".to_owned());
            let conflicting = [key("alg:C", "\"c\""), key("alg:A", "\"other\"")];
            let refused = store
                .upload_keys(&KeysUpload {
                    device_keys: Some(&refuse_nothing),
                    one_time_keys: &conflicting,
                    fallback_keys: &[],
                    ..upload
                })
                .await
                .unwrap();
            assert_eq!(
                refused,
                Err(UploadRefused::OneTimeKeyConflict("alg:A".to_owned()))
            );
            let (counts, fallbacks) = store.one_time_key_counts(&alice, "DEV").await.unwrap();
            assert_eq!(counts, vec![("alg".to_owned(), 2)], "{kind:?}");
            assert_eq!(fallbacks, vec!["alg".to_owned()]);
            let keys = store.device_keys_of(&[&alice]).await.unwrap();
            assert_eq!(keys[0].key_json, "{\"k\":1}", "{kind:?}");
            assert_eq!(keys[0].display_name.as_deref(), Some("Phone"));
            assert_eq!(
                store.stream_position("device_lists").await.unwrap(),
                start + 1,
                "{kind:?}: a refused upload announces nothing"
            );

            // More keys than the device may hold: refused.
            let many: Vec<NewKey> = (0..9).map(|i| key(&format!("alg:M{i}"), "\"m\"")).collect();
            let refused = store
                .upload_keys(&KeysUpload {
                    device_keys: None,
                    one_time_keys: &many,
                    fallback_keys: &[],
                    ..upload
                })
                .await
                .unwrap();
            assert_eq!(refused, Err(UploadRefused::TooManyOneTimeKeys));

            // Each one-time key once, then the fallback key, marked used.
            let wanted = vec![(alice.clone(), "DEV".to_owned(), "alg".to_owned())];
            let mut got = Vec::new();
            for _ in 0..4 {
                got.extend(store.claim_keys(&wanted).await.unwrap());
            }
            let ids: Vec<&str> = got.iter().map(|k| k.key_id.as_str()).collect();
            assert_eq!(ids, ["alg:A", "alg:B", "alg:F", "alg:F"], "{kind:?}");
            let (counts, fallbacks) = store.one_time_key_counts(&alice, "DEV").await.unwrap();
            assert!(counts.is_empty() && fallbacks.is_empty(), "{kind:?}");
            let other = vec![(alice.clone(), "DEV".to_owned(), "other".to_owned())];
            assert!(store.claim_keys(&other).await.unwrap().is_empty());

            // Claimed in the order they were uploaded, not in key id order (MSC4225).
            for (id, now) in [("alg:Y", 200), ("alg:X", 300)] {
                store
                    .upload_keys(&KeysUpload {
                        device_keys: None,
                        one_time_keys: &[key(id, "\"o\"")],
                        fallback_keys: &[],
                        now,
                        ..upload
                    })
                    .await
                    .unwrap()
                    .unwrap();
            }
            let mut order = Vec::new();
            for _ in 0..2 {
                order.extend(
                    store
                        .claim_keys(&wanted)
                        .await
                        .unwrap()
                        .into_iter()
                        .map(|k| k.key_id),
                );
            }
            assert_eq!(order, ["alg:Y", "alg:X"], "{kind:?}");

            // Deleting the device deletes its keys and announces the change.
            store
                .upload_keys(&KeysUpload {
                    device_keys: None,
                    one_time_keys: &[key("alg:Z", "\"z\"")],
                    fallback_keys: &fallback,
                    ..upload
                })
                .await
                .unwrap()
                .unwrap();
            assert!(store.delete_device(&alice, "DEV").await.unwrap());
            let now = store.stream_position("device_lists").await.unwrap();
            assert_eq!(now, start + 2, "{kind:?}");
            assert_eq!(
                store.device_list_changes(start + 1, now).await.unwrap(),
                vec![alice.clone()]
            );
            assert!(store.device_keys_of(&[&alice]).await.unwrap().is_empty());
            assert!(
                store.claim_keys(&wanted).await.unwrap().is_empty(),
                "{kind:?}"
            );
            store.close().await;
        }
    }
}

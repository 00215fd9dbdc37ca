//! Local accounts, devices, access tokens and refresh tokens. Token columns hold SHA-256 hashes;
//! the service layer hashes before calling in, so no usable token reaches this crate.

use sqlx::Row;

use crate::dehydrated::SessionRefused;
use crate::store::BeginWrite;
use crate::{Store, StoreError, with_pool};

/// A local account.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct UserRow {
    pub user_id: String,
    pub localpart: String,
    pub password_hash: Option<String>,
    pub is_admin: bool,
    pub created_ts: i64,
    pub deactivated_ts: Option<i64>,
}

/// A device of a local account.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct DeviceRow {
    pub user_id: String,
    pub device_id: String,
    pub display_name: Option<String>,
    pub created_ts: i64,
    pub last_seen_ts: Option<i64>,
}

/// What an access token stands for.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct AccessTokenRow {
    pub user_id: String,
    pub device_id: String,
    pub expires_ts: Option<i64>,
    pub is_admin: bool,
    pub deactivated: bool,
}

/// A new session to store: the device (created or renamed) and its first tokens.
#[derive(Debug, Clone)]
pub struct NewSession<'a> {
    pub user_id: &'a str,
    pub device_id: &'a str,
    /// Only applied when the device is new or a name is given.
    pub display_name: Option<&'a str>,
    pub access_token_hash: &'a [u8],
    pub expires_ts: Option<i64>,
    pub refresh_token_hash: Option<&'a [u8]>,
    pub now: i64,
}

fn user_from_row<R: Row>(row: &R) -> Result<UserRow, sqlx::Error>
where
    for<'r> &'r str: sqlx::ColumnIndex<R>,
    for<'r> String: sqlx::Decode<'r, R::Database> + sqlx::Type<R::Database>,
    for<'r> Option<String>: sqlx::Decode<'r, R::Database> + sqlx::Type<R::Database>,
    for<'r> bool: sqlx::Decode<'r, R::Database> + sqlx::Type<R::Database>,
    for<'r> i64: sqlx::Decode<'r, R::Database> + sqlx::Type<R::Database>,
    for<'r> Option<i64>: sqlx::Decode<'r, R::Database> + sqlx::Type<R::Database>,
{
    Ok(UserRow {
        user_id: row.try_get("user_id")?,
        localpart: row.try_get("localpart")?,
        password_hash: row.try_get("password_hash")?,
        is_admin: row.try_get("is_admin")?,
        created_ts: row.try_get("created_ts")?,
        deactivated_ts: row.try_get("deactivated_ts")?,
    })
}

fn device_from_row<R: Row>(row: &R) -> Result<DeviceRow, sqlx::Error>
where
    for<'r> &'r str: sqlx::ColumnIndex<R>,
    for<'r> String: sqlx::Decode<'r, R::Database> + sqlx::Type<R::Database>,
    for<'r> Option<String>: sqlx::Decode<'r, R::Database> + sqlx::Type<R::Database>,
    for<'r> i64: sqlx::Decode<'r, R::Database> + sqlx::Type<R::Database>,
    for<'r> Option<i64>: sqlx::Decode<'r, R::Database> + sqlx::Type<R::Database>,
{
    Ok(DeviceRow {
        user_id: row.try_get("user_id")?,
        device_id: row.try_get("device_id")?,
        display_name: row.try_get("display_name")?,
        created_ts: row.try_get("created_ts")?,
        last_seen_ts: row.try_get("last_seen_ts")?,
    })
}

const USER_COLUMNS: &str =
    "user_id, localpart, password_hash, is_admin, created_ts, deactivated_ts";

impl Store {
    /// Creates an account. An existing localpart is a [`StoreError::Conflict`].
    pub async fn create_user(&self, user: &UserRow) -> Result<(), StoreError> {
        with_pool!(self, pool => {
            sqlx::query(
                "INSERT INTO users \
                 (user_id, localpart, password_hash, is_admin, created_ts, deactivated_ts) \
                 VALUES ($1, $2, $3, $4, $5, $6)",
            )
            .bind(&user.user_id)
            .bind(&user.localpart)
            .bind(&user.password_hash)
            .bind(user.is_admin)
            .bind(user.created_ts)
            .bind(user.deactivated_ts)
            .execute(pool)
            .await
            .map(|_| ())
        })?;
        Ok(())
    }

    /// The account with this localpart, deactivated or not.
    pub async fn user_by_localpart(&self, localpart: &str) -> Result<Option<UserRow>, StoreError> {
        let row = with_pool!(self, pool => {
            match sqlx::query(sqlx::AssertSqlSafe(format!(
                "SELECT {USER_COLUMNS} FROM users WHERE localpart = $1"
            )))
            .bind(localpart)
            .fetch_optional(pool)
            .await?
            {
                Some(row) => Some(user_from_row(&row)?),
                None => None,
            }
        });
        Ok(row)
    }

    /// Replaces an account's password hash.
    pub async fn set_password_hash(&self, user_id: &str, hash: &str) -> Result<(), StoreError> {
        with_pool!(self, pool => {
            sqlx::query("UPDATE users SET password_hash = $2 WHERE user_id = $1")
                .bind(user_id)
                .bind(hash)
                .execute(pool)
                .await
                .map(|_| ())
        })?;
        Ok(())
    }

    /// Stores a new session in one transaction: creates the device (or renames it when a name is
    /// given), drops tokens the device held before, and stores the new tokens. The user's
    /// dehydrated device is refused (no one logs in to it), with nothing written.
    pub async fn create_session(
        &self,
        session: &NewSession<'_>,
    ) -> Result<Result<(), SessionRefused>, StoreError> {
        let result = with_pool!(self, pool => {
            let mut tx = pool.begin_write(&self.write_gate).await?;
            sqlx::query(
                "INSERT INTO devices (user_id, device_id, display_name, created_ts) \
                 VALUES ($1, $2, $3, $4) \
                 ON CONFLICT (user_id, device_id) DO UPDATE \
                 SET display_name = COALESCE(excluded.display_name, devices.display_name)",
            )
            .bind(session.user_id)
            .bind(session.device_id)
            .bind(session.display_name)
            .bind(session.now)
            .execute(&mut *tx)
            .await?;
            // Asked after the device row is written (and so locked): a dehydrated device put
            // concurrently is either committed and seen here, or finds this device and is refused.
            let dehydrated: Option<String> = sqlx::query_scalar(
                "SELECT device_id FROM dehydrated_devices WHERE user_id = $1 AND device_id = $2",
            )
            .bind(session.user_id)
            .bind(session.device_id)
            .fetch_optional(&mut *tx)
            .await?;
            if dehydrated.is_some() {
                // Dropping the transaction rolls it back.
                Ok::<_, sqlx::Error>(Err(SessionRefused::DehydratedDevice))
            } else {
                sqlx::query("DELETE FROM access_tokens WHERE user_id = $1 AND device_id = $2")
                    .bind(session.user_id)
                    .bind(session.device_id)
                    .execute(&mut *tx)
                    .await?;
                sqlx::query("DELETE FROM refresh_tokens WHERE user_id = $1 AND device_id = $2")
                    .bind(session.user_id)
                    .bind(session.device_id)
                    .execute(&mut *tx)
                    .await?;
                insert_tokens!(tx, session.user_id, session.device_id, session.access_token_hash,
                    session.expires_ts, session.refresh_token_hash, session.now);
                tx.commit().await?;
                Ok(Ok(()))
            }
        });
        // Once the write is over (a failed one changed nothing; see `cache`).
        self.account_changed();
        Ok(result?)
    }

    /// What an access token (by hash) stands for, with its account's state. Cached: every
    /// method here that deletes tokens or deactivates an account invalidates the cache.
    pub async fn access_token(
        &self,
        token_hash: &[u8],
    ) -> Result<Option<AccessTokenRow>, StoreError> {
        let started = match self.tokens.get(token_hash) {
            Ok(row) => return Ok(Some(row)),
            Err(started) => started,
        };
        let row = with_pool!(self, pool => {
            match sqlx::query(
                "SELECT t.user_id, t.device_id, t.expires_ts, u.is_admin, u.deactivated_ts \
                 FROM access_tokens t JOIN users u ON u.user_id = t.user_id \
                 WHERE t.token_hash = $1",
            )
            .bind(token_hash)
            .fetch_optional(pool)
            .await?
            {
                Some(row) => Some(AccessTokenRow {
                    user_id: row.try_get("user_id")?,
                    device_id: row.try_get("device_id")?,
                    expires_ts: row.try_get("expires_ts")?,
                    is_admin: row.try_get("is_admin")?,
                    deactivated: row.try_get::<Option<i64>, _>("deactivated_ts")?.is_some(),
                }),
                None => None,
            }
        });
        if let Some(row) = &row {
            self.tokens.fill(started, token_hash.to_vec(), row.clone());
        }
        Ok(row)
    }

    /// Exchanges a refresh token (by hash) for new tokens on the same device, in one
    /// transaction. The old refresh token and the device's old access tokens stop working.
    /// Returns the `(user_id, device_id)` it belonged to, or `None` if it is unknown or used.
    pub async fn rotate_refresh_token(
        &self,
        old_hash: &[u8],
        access_token_hash: &[u8],
        expires_ts: Option<i64>,
        refresh_token_hash: &[u8],
        now: i64,
    ) -> Result<Option<(String, String)>, StoreError> {
        let result = with_pool!(self, pool => {
            let mut tx = pool.begin_write(&self.write_gate).await?;
            let owner: Option<(String, String)> = sqlx::query_as(
                "DELETE FROM refresh_tokens WHERE token_hash = $1 RETURNING user_id, device_id",
            )
            .bind(old_hash)
            .fetch_optional(&mut *tx)
            .await?;
            if let Some((user_id, device_id)) = &owner {
                sqlx::query("DELETE FROM access_tokens WHERE user_id = $1 AND device_id = $2")
                    .bind(user_id)
                    .bind(device_id)
                    .execute(&mut *tx)
                    .await?;
                insert_tokens!(tx, user_id.as_str(), device_id.as_str(), access_token_hash,
                    expires_ts, Some(refresh_token_hash), now);
            }
            tx.commit().await?;
            Ok::<_, sqlx::Error>(owner)
        });
        // Once the write is over (a failed one changed nothing; see `cache`).
        self.account_changed();
        let owner = result?;
        Ok(owner)
    }

    /// Deletes one access token (logout).
    pub async fn delete_access_token(&self, token_hash: &[u8]) -> Result<(), StoreError> {
        let result = with_pool!(self, pool => {
            sqlx::query("DELETE FROM access_tokens WHERE token_hash = $1")
                .bind(token_hash)
                .execute(pool)
                .await
                .map(|_| ())
        });
        // Once the write is over (a failed one changed nothing; see `cache`).
        self.account_changed();
        result?;
        Ok(())
    }

    /// Deletes a device with its tokens and end-to-end keys, and announces the device-list
    /// change, in one transaction. Returns whether it existed.
    pub async fn delete_device(&self, user_id: &str, device_id: &str) -> Result<bool, StoreError> {
        let result: Result<bool, sqlx::Error> = with_pool!(self, pool => {
            async {
                let mut tx = pool.begin_write(&self.write_gate).await?;
                let deleted = sqlx::query("DELETE FROM devices WHERE user_id = $1 AND device_id = $2")
                    .bind(user_id)
                    .bind(device_id)
                    .execute(&mut *tx)
                    .await?
                    .rows_affected()
                    > 0;
                if deleted {
                    crate::e2ee::device_deleted!(tx, user_id, device_id);
                }
                tx.commit().await?;
                Ok(deleted)
            }
            .await
        });
        // Once the write is over (a failed one changed nothing; see `cache`).
        self.account_changed();
        let deleted = result?;
        Ok(deleted)
    }

    /// Deletes every device and token of an account (`/logout/all`), except `keep_device` if
    /// given (password change with `logout_devices`).
    pub async fn delete_all_devices(
        &self,
        user_id: &str,
        keep_device: Option<&str>,
    ) -> Result<(), StoreError> {
        let result: Result<(), sqlx::Error> = with_pool!(self, pool => {
            async {
                let mut tx = pool.begin_write(&self.write_gate).await?;
                let deleted: Vec<String> = sqlx::query_scalar(
                    "DELETE FROM devices WHERE user_id = $1 AND device_id IS DISTINCT FROM $2 RETURNING device_id",
                )
                .bind(user_id)
                .bind(keep_device)
                .fetch_all(&mut *tx)
                .await?;
                // Their keys went with them (cascade): each is a change of the user's device
                // list, for other servers too.
                for device_id in &deleted {
                    crate::e2ee::device_deleted!(tx, user_id, device_id.as_str());
                }
                tx.commit().await
            }
            .await
        });
        // Once the write is over (a failed one changed nothing; see `cache`).
        self.account_changed();
        result?;
        Ok(())
    }

    /// Deletes every token of an account but keeps its devices (`/logout/all`).
    pub async fn delete_all_tokens(&self, user_id: &str) -> Result<(), StoreError> {
        let result = with_pool!(self, pool => {
            let mut tx = pool.begin_write(&self.write_gate).await?;
            sqlx::query("DELETE FROM access_tokens WHERE user_id = $1")
                .bind(user_id)
                .execute(&mut *tx)
                .await?;
            sqlx::query("DELETE FROM refresh_tokens WHERE user_id = $1")
                .bind(user_id)
                .execute(&mut *tx)
                .await?;
            tx.commit().await
        });
        // Once the write is over (a failed one changed nothing; see `cache`).
        self.account_changed();
        result?;
        Ok(())
    }

    /// Marks an account deactivated and removes its password, devices and tokens, in one
    /// transaction, with `operation` (what is left of the deactivation) journaled in it; returns
    /// its id.
    pub async fn deactivate_user(
        &self,
        user_id: &str,
        now: i64,
        operation: Option<&crate::NewOperation<'_>>,
    ) -> Result<Option<i64>, StoreError> {
        let result = with_pool!(self, pool => {
            let mut tx = pool.begin_write(&self.write_gate).await?;
            sqlx::query("UPDATE users SET deactivated_ts = $2, password_hash = NULL WHERE user_id = $1")
                .bind(user_id)
                .bind(now)
                .execute(&mut *tx)
                .await?;
            let deleted: Vec<String> =
                sqlx::query_scalar("DELETE FROM devices WHERE user_id = $1 RETURNING device_id")
                    .bind(user_id)
                    .fetch_all(&mut *tx)
                    .await?;
            for device_id in &deleted {
                crate::e2ee::device_deleted!(tx, user_id, device_id.as_str());
            }
            // Cross-signing keys go too; the devices' keys went with them (cascade).
            sqlx::query("DELETE FROM e2e_cross_signing_keys WHERE user_id = $1")
                .bind(user_id)
                .execute(&mut *tx)
                .await?;
            crate::e2ee::announce_device_list_change!(tx, user_id, cross_signing);
            // What is left of the deactivation (leaving rooms, erasure) is journaled with it.
            let operation_id = match operation {
                Some(operation) => Some(crate::operations::begin_operation!(tx, operation)),
                None => None,
            };
            tx.commit().await.map(|()| operation_id)
        });
        // Once the write is over (a failed one changed nothing; see `cache`).
        self.account_changed();
        Ok(result?)
    }

    /// An account's devices, oldest first.
    pub async fn devices(&self, user_id: &str) -> Result<Vec<DeviceRow>, StoreError> {
        let rows = with_pool!(self, pool => {
            sqlx::query(
                "SELECT user_id, device_id, display_name, created_ts, last_seen_ts \
                 FROM devices WHERE user_id = $1 ORDER BY created_ts, device_id",
            )
            .bind(user_id)
            .fetch_all(pool)
            .await?
            .iter()
            .map(device_from_row)
            .collect::<Result<Vec<_>, _>>()?
        });
        Ok(rows)
    }

    /// One device of an account.
    pub async fn device(
        &self,
        user_id: &str,
        device_id: &str,
    ) -> Result<Option<DeviceRow>, StoreError> {
        let row = with_pool!(self, pool => {
            match sqlx::query(
                "SELECT user_id, device_id, display_name, created_ts, last_seen_ts \
                 FROM devices WHERE user_id = $1 AND device_id = $2",
            )
            .bind(user_id)
            .bind(device_id)
            .fetch_optional(pool)
            .await?
            {
                Some(row) => Some(device_from_row(&row)?),
                None => None,
            }
        });
        Ok(row)
    }

    /// Renames a device. Returns whether it exists.
    pub async fn set_device_display_name(
        &self,
        user_id: &str,
        device_id: &str,
        display_name: Option<&str>,
    ) -> Result<bool, StoreError> {
        // Other users see the name in `/keys/query`: a rename is a device-list change.
        let updated = with_pool!(self, pool => {
            let mut tx = pool.begin_write(&self.write_gate).await?;
            let updated = sqlx::query("UPDATE devices SET display_name = $3 WHERE user_id = $1 AND device_id = $2")
                .bind(user_id)
                .bind(device_id)
                .bind(display_name)
                .execute(&mut *tx)
                .await?
                .rows_affected()
                > 0;
            if updated {
                crate::e2ee::announce_device_list_change!(tx, user_id, device: device_id);
                tx.commit().await?;
            }
            updated
        });
        Ok(updated)
    }
}

/// Inserts an access token and optionally a refresh token inside a transaction.
macro_rules! insert_tokens {
    ($tx:ident, $user:expr, $device:expr, $access:expr, $expires:expr, $refresh:expr, $now:expr) => {
        sqlx::query(
            "INSERT INTO access_tokens (token_hash, user_id, device_id, created_ts, expires_ts) \
             VALUES ($1, $2, $3, $4, $5)",
        )
        .bind($access)
        .bind($user)
        .bind($device)
        .bind($now)
        .bind($expires)
        .execute(&mut *$tx)
        .await?;
        if let Some(refresh) = $refresh {
            sqlx::query(
                "INSERT INTO refresh_tokens (token_hash, user_id, device_id, created_ts) \
                 VALUES ($1, $2, $3, $4)",
            )
            .bind(refresh)
            .bind($user)
            .bind($device)
            .bind($now)
            .execute(&mut *$tx)
            .await?;
        }
    };
}
use insert_tokens;

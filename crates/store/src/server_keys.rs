//! The server's own ed25519 signing keys. The store keeps bytes; sealing the private half is the
//! service layer's job, so no plaintext private key ever reaches this crate.

use sqlx::Row;

use crate::{Store, StoreError, with_pool};

/// One signing key as stored.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct StoredSigningKey {
    /// The key id without the algorithm, e.g. `a_Xy12` in `ed25519:a_Xy12`.
    pub key_id: String,
    /// The 32-byte ed25519 public key.
    pub public_key: Vec<u8>,
    /// The private key, sealed by the service layer.
    pub private_key_enc: Vec<u8>,
    /// When the key was created, in milliseconds since the Unix epoch.
    pub created_ts: i64,
    /// When the key was retired, if it was.
    pub expired_ts: Option<i64>,
}

impl Store {
    /// Every signing key, newest first.
    pub async fn signing_keys(&self) -> Result<Vec<StoredSigningKey>, StoreError> {
        let rows = with_pool!(self, pool => {
            sqlx::query(
                "SELECT key_id, public_key, private_key_enc, created_ts, expired_ts \
                 FROM server_signing_keys ORDER BY created_ts DESC, key_id",
            )
            .fetch_all(pool)
            .await?
            .into_iter()
            .map(|row| {
                Ok(StoredSigningKey {
                    key_id: row.try_get("key_id")?,
                    public_key: row.try_get("public_key")?,
                    private_key_enc: row.try_get("private_key_enc")?,
                    created_ts: row.try_get("created_ts")?,
                    expired_ts: row.try_get("expired_ts")?,
                })
            })
            .collect::<Result<Vec<_>, sqlx::Error>>()
        })?;
        Ok(rows)
    }

    /// Stores a new signing key. A key id that already exists is a [`StoreError::Conflict`].
    pub async fn insert_signing_key(&self, key: &StoredSigningKey) -> Result<(), StoreError> {
        with_pool!(self, pool => {
            sqlx::query(
                "INSERT INTO server_signing_keys \
                 (key_id, public_key, private_key_enc, created_ts, expired_ts) \
                 VALUES ($1, $2, $3, $4, $5)",
            )
            .bind(&key.key_id)
            .bind(&key.public_key)
            .bind(&key.private_key_enc)
            .bind(key.created_ts)
            .bind(key.expired_ts)
            .execute(pool)
            .await
            .map(|_| ())
        })?;
        Ok(())
    }
}

/// Another server's public key, as cached.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RemoteServerKey {
    pub server_name: String,
    /// `ed25519:<version>`.
    pub key_id: String,
    pub public_key: Vec<u8>,
    /// Until when signatures by the key count, in milliseconds.
    pub valid_until_ts: i64,
    /// Whether the key came from `old_verify_keys`.
    pub is_old: bool,
    /// When the cached copy must be fetched again, in milliseconds.
    pub cache_until_ts: i64,
    pub fetched_ts: i64,
    /// The signed key object the key came in (JSON).
    pub key_object: String,
}

impl Store {
    /// The cached keys of `server` (fresh or not; the caller compares `cache_until_ts`).
    pub async fn remote_server_keys(
        &self,
        server: &str,
    ) -> Result<Vec<RemoteServerKey>, StoreError> {
        let rows = with_pool!(self, pool => {
            sqlx::query(
                "SELECT server_name, key_id, public_key, valid_until_ts, is_old, cache_until_ts, \
                 fetched_ts, key_object FROM remote_server_keys WHERE server_name = $1 \
                 ORDER BY key_id",
            )
            .bind(server)
            .fetch_all(pool)
            .await?
            .into_iter()
            .map(|row| {
                Ok(RemoteServerKey {
                    server_name: row.try_get("server_name")?,
                    key_id: row.try_get("key_id")?,
                    public_key: row.try_get("public_key")?,
                    valid_until_ts: row.try_get("valid_until_ts")?,
                    is_old: row.try_get("is_old")?,
                    cache_until_ts: row.try_get("cache_until_ts")?,
                    fetched_ts: row.try_get("fetched_ts")?,
                    key_object: row.try_get("key_object")?,
                })
            })
            .collect::<Result<Vec<_>, sqlx::Error>>()
        })?;
        Ok(rows)
    }

    /// Stores fetched keys, replacing cached copies of the same (server, key id), in one
    /// transaction.
    pub async fn store_remote_server_keys(
        &self,
        keys: &[RemoteServerKey],
    ) -> Result<(), StoreError> {
        with_pool!(self, pool => {
            async {
                let mut tx = pool.begin().await?;
                for key in keys {
                    sqlx::query(
                        "INSERT INTO remote_server_keys (server_name, key_id, public_key, \
                         valid_until_ts, is_old, cache_until_ts, fetched_ts, key_object) \
                         VALUES ($1, $2, $3, $4, $5, $6, $7, $8) \
                         ON CONFLICT (server_name, key_id) DO UPDATE SET \
                         public_key = excluded.public_key, valid_until_ts = excluded.valid_until_ts, \
                         is_old = excluded.is_old, cache_until_ts = excluded.cache_until_ts, \
                         fetched_ts = excluded.fetched_ts, key_object = excluded.key_object",
                    )
                    .bind(&key.server_name)
                    .bind(&key.key_id)
                    .bind(&key.public_key)
                    .bind(key.valid_until_ts)
                    .bind(key.is_old)
                    .bind(key.cache_until_ts)
                    .bind(key.fetched_ts)
                    .bind(&key.key_object)
                    .execute(&mut *tx)
                    .await?;
                }
                tx.commit().await
            }
            .await
        })?;
        Ok(())
    }
}

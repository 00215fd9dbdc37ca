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

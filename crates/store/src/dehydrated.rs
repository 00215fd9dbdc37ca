//! Dehydrated devices (MSC3814) as stored: at most one per user, an ordinary `devices` row (so
//! its keys, its to-device messages, `/keys/query`, `/user/devices` and the device-list stream
//! treat it as any device) plus a `dehydrated_devices` row holding the opaque `device_data` the
//! client rehydrates it from. What marks it is that row; no session is ever created on it
//! ([`Store::create_session`] refuses it), so it has no access token.

use crate::e2ee::{KeysUpload, UploadRefused, write_keys_upload};
use crate::store::BeginWrite;
use crate::{Store, StoreError, with_pool};

/// A dehydrated device to store: its keys (whose `user_id` and `device_id` name the device),
/// its display name and its opaque data.
pub struct DehydratedDeviceUpload<'a> {
    pub keys: KeysUpload<'a>,
    pub display_name: Option<&'a str>,
    /// The client's `device_data` object, as JSON text.
    pub device_data: &'a str,
}

/// Why a dehydrated device was refused (nothing was written).
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum DehydratedRefused {
    /// The id is one of the user's ordinary devices.
    DeviceIdTaken,
    /// Its keys were refused, as `/keys/upload` would refuse them.
    Keys(UploadRefused),
}

/// Why a session was not created (nothing was written).
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum SessionRefused {
    /// The device is the user's dehydrated device: no one logs in to it.
    DehydratedDevice,
}

/// Deletes `$user`'s dehydrated device inside the caller's transaction `$tx`: the device (its
/// keys and the `dehydrated_devices` row go with it, by cascade) and its pending to-device
/// messages (no other device will ever fetch them), and announces the device-list change as
/// for any deleted device. Evaluates to the deleted device's id, if there was one.
macro_rules! delete_dehydrated_in {
    ($tx:expr, $user:expr) => {{
        let old: Option<String> =
            sqlx::query_scalar("SELECT device_id FROM dehydrated_devices WHERE user_id = $1")
                .bind($user)
                .fetch_optional(&mut *$tx)
                .await?;
        if let Some(old) = &old {
            sqlx::query("DELETE FROM devices WHERE user_id = $1 AND device_id = $2")
                .bind($user)
                .bind(old)
                .execute(&mut *$tx)
                .await?;
            $crate::e2ee::device_deleted!($tx, $user, old.as_str());
        }
        old
    }};
}

impl Store {
    /// Makes a new device the user's dehydrated device, in one transaction: the previous one
    /// (if any) is deleted as [`Store::delete_dehydrated_device`] does, then the device is
    /// created with its data and its keys are written exactly as `/keys/upload` writes them.
    /// An id that is one of the user's ordinary devices, or keys the upload rules refuse, leave
    /// nothing written. Returns the id of the device it replaced.
    pub async fn put_dehydrated_device(
        &self,
        upload: &DehydratedDeviceUpload<'_>,
    ) -> Result<Result<Option<String>, DehydratedRefused>, StoreError> {
        let user_id = upload.keys.user_id;
        let device_id = upload.keys.device_id;
        let outcome = with_pool!(self, pool => {
            let mut tx = pool.begin_write(&self.write_gate).await?;
            let replaced = delete_dehydrated_in!(tx, user_id);
            // DO NOTHING: an ordinary device with this id stays as it is, and is refused.
            let created = sqlx::query(
                "INSERT INTO devices (user_id, device_id, display_name, created_ts) \
                 VALUES ($1, $2, $3, $4) ON CONFLICT (user_id, device_id) DO NOTHING",
            )
            .bind(user_id)
            .bind(device_id)
            .bind(upload.display_name)
            .bind(upload.keys.now)
            .execute(&mut *tx)
            .await?
            .rows_affected()
                > 0;
            if !created {
                // Dropping the transaction rolls it back.
                Err(DehydratedRefused::DeviceIdTaken)
            } else {
                sqlx::query(
                    "INSERT INTO dehydrated_devices (user_id, device_id, device_data) VALUES ($1, $2, $3)",
                )
                .bind(user_id)
                .bind(device_id)
                .bind(upload.device_data)
                .execute(&mut *tx)
                .await?;
                match write_keys_upload!(tx, &upload.keys) {
                    Err(refused) => Err(DehydratedRefused::Keys(refused)),
                    Ok(announced) => {
                        // A new device is a device-list change even before it has keys.
                        if announced.is_none() {
                            crate::e2ee::announce_device_list_change!(tx, user_id, device: device_id);
                        }
                        tx.commit().await?;
                        Ok(replaced)
                    }
                }
            }
        });
        Ok(outcome)
    }

    /// The user's dehydrated device: `(device_id, device_data JSON text)`.
    pub async fn dehydrated_device(
        &self,
        user_id: &str,
    ) -> Result<Option<(String, String)>, StoreError> {
        let row = with_pool!(self, pool => {
            sqlx::query_as(
                "SELECT device_id, device_data FROM dehydrated_devices WHERE user_id = $1",
            )
            .bind(user_id)
            .fetch_optional(pool)
            .await?
        });
        Ok(row)
    }

    /// Deletes the user's dehydrated device with its keys and pending to-device messages, and
    /// announces the device-list change, in one transaction. Returns its id, if it had one.
    pub async fn delete_dehydrated_device(
        &self,
        user_id: &str,
    ) -> Result<Option<String>, StoreError> {
        let deleted = with_pool!(self, pool => {
            let mut tx = pool.begin_write(&self.write_gate).await?;
            let deleted = delete_dehydrated_in!(tx, user_id);
            tx.commit().await?;
            deleted
        });
        Ok(deleted)
    }
}

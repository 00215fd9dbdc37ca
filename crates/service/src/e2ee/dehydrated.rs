//! Dehydrated devices (MSC3814, unstable prefix `org.matrix.msc3814.v1`): a device a client
//! uploads with its keys and an encrypted copy of its secrets (`device_data`, opaque here), so
//! that other users' clients encrypt room keys to it while the user has no device logged in; a
//! later login fetches it, decrypts the data, and reads the to-device messages it was sent.
//!
//! A user has at most one; putting a new one deletes the old one with its keys and messages. It
//! is an ordinary device everywhere else: listed in `/keys/query`, `/user/devices` and
//! `/devices` (the MSC lets `/devices` and `/delete_devices` delete it, and Synapse lists it;
//! clients tell it by `dehydrated: true` in its keys, which are kept as uploaded), sent
//! to-device messages (`*` included) and announced in device lists. No one logs in to it, so it
//! never has an access token. Its keys go through the very rules of `/keys/upload`
//! ([`super::CheckedUpload`]).
//!
//! Its messages are read in pages (`POST /dehydrated_device/{device_id}/events`), the
//! `next_batch` token being a to-device stream position. As the MSC asks, reading a page does
//! not delete the earlier ones (unlike `/sync`): a rehydration that fails half way can be
//! started again by another device. The messages go when the device does.

use myelin_store::{DehydratedDeviceUpload, DehydratedRefused};
use ruma::UserId;
use serde_json::Value;

use super::{CheckedUpload, E2ee, upload_refusal};
use crate::{Error, Result};

/// To-device messages per page of a dehydrated device's `/events`.
pub const DEHYDRATED_EVENTS_BATCH: i64 = 100;

/// A `PUT /dehydrated_device` body.
#[derive(Debug, Clone)]
pub struct DehydratedDevicePut {
    pub device_id: String,
    pub initial_device_display_name: Option<String>,
    /// Opaque to the server; must be an object with a string `algorithm`, as the MSC says.
    pub device_data: Value,
    /// Required by the MSC: a dehydrated device without keys could receive nothing.
    pub device_keys: Value,
    pub one_time_keys: Vec<(String, Value)>,
    pub fallback_keys: Vec<(String, Value)>,
}

/// One page of a dehydrated device's to-device messages.
#[derive(Debug, Clone, PartialEq)]
pub struct DehydratedEvents {
    pub events: Vec<Value>,
    /// Where the next page starts; a page after the last message is empty and gives the same
    /// token back.
    pub next_batch: String,
}

impl E2ee {
    /// `PUT /dehydrated_device`: makes the device `user`'s dehydrated device, replacing (and
    /// deleting) the previous one, its keys stored as `/keys/upload` would store them, all in
    /// one write. Returns its id.
    pub async fn put_dehydrated_device(
        &self,
        user: &UserId,
        put: DehydratedDevicePut,
    ) -> Result<String> {
        let DehydratedDevicePut {
            device_id,
            initial_device_display_name,
            device_data,
            device_keys,
            one_time_keys,
            fallback_keys,
        } = put;
        // The same bound as a device id chosen at login.
        if device_id.is_empty() || device_id.len() > 255 {
            return Err(Error::InvalidParam("Invalid device ID".to_owned()));
        }
        if !device_data
            .get("algorithm")
            .is_some_and(|algorithm| algorithm.is_string())
        {
            return Err(Error::BadJson(
                "device_data must be an object with an algorithm".to_owned(),
            ));
        }
        let device_data = device_data.to_string();
        crate::limits::at_most(
            "The dehydrated device's device_data (bytes)",
            device_data.len(),
            crate::limits::MAX_DEHYDRATED_DEVICE_DATA_BYTES,
        )?;
        let checked = CheckedUpload::check(
            user.as_str(),
            &device_id,
            Some(device_keys),
            one_time_keys,
            fallback_keys,
        )?;
        let decide = |stored: Option<&str>| checked.decide(stored);
        let upload = DehydratedDeviceUpload {
            keys: checked.store_upload(&decide),
            display_name: initial_device_display_name.as_deref(),
            device_data: &device_data,
        };
        match self.store.put_dehydrated_device(&upload).await? {
            Ok(replaced) => {
                if let Some(replaced) = replaced {
                    tracing::debug!(%user, %replaced, "dehydrated device replaced");
                }
                self.notify.notify();
                Ok(device_id)
            }
            Err(DehydratedRefused::DeviceIdTaken) => Err(Error::InvalidParam(format!(
                "{device_id} is one of your devices; a dehydrated device needs a new ID"
            ))),
            Err(DehydratedRefused::Keys(refused)) => Err(upload_refusal(refused)),
        }
    }

    /// `GET /dehydrated_device`: `(device_id, device_data)`; 404 when there is none.
    pub async fn dehydrated_device(&self, user: &UserId) -> Result<(String, Value)> {
        let (device_id, data) = self
            .store
            .dehydrated_device(user.as_str())
            .await?
            .ok_or_else(no_dehydrated_device)?;
        let data = serde_json::from_str(&data)
            .map_err(|e| Error::Internal(format!("stored device_data: {e}")))?;
        Ok((device_id, data))
    }

    /// `DELETE /dehydrated_device`: deletes it with its keys and messages (a device-list
    /// change); 404 when there is none. Returns its id.
    pub async fn delete_dehydrated_device(&self, user: &UserId) -> Result<String> {
        let deleted = self
            .store
            .delete_dehydrated_device(user.as_str())
            .await?
            .ok_or_else(no_dehydrated_device)?;
        self.notify.notify();
        Ok(deleted)
    }

    /// `POST /dehydrated_device/{device_id}/events`: the page of the dehydrated device's
    /// to-device messages after `next_batch` (from the first without it). A `device_id` that is
    /// not the user's dehydrated device is 403 `M_FORBIDDEN`, as the MSC says.
    pub async fn dehydrated_device_events(
        &self,
        user: &UserId,
        device_id: &str,
        next_batch: Option<&str>,
    ) -> Result<DehydratedEvents> {
        let current = self.store.dehydrated_device(user.as_str()).await?;
        if current.as_ref().is_none_or(|(id, _)| id != device_id) {
            return Err(Error::Forbidden(
                "That is not your dehydrated device".to_owned(),
            ));
        }
        let since = match next_batch {
            None => 0,
            // Read back only in the form it was printed in, as every token of this server.
            Some(token) => crate::rooms::read::parse_position(token)
                .ok_or_else(|| Error::InvalidParam(format!("Invalid next_batch {token:?}")))?,
        };
        let rows = self
            .store
            .to_device_since(user.as_str(), device_id, since, DEHYDRATED_EVENTS_BATCH)
            .await?;
        let next = rows.last().map_or(since, |row| row.stream_position);
        Ok(DehydratedEvents {
            events: rows
                .into_iter()
                .map(crate::ephemeral::to_device_event)
                .collect(),
            next_batch: next.to_string(),
        })
    }
}

fn no_dehydrated_device() -> Error {
    Error::NotFound("No dehydrated device".to_owned())
}

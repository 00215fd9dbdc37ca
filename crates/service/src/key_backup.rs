//! Server-side key backup (`/room_keys/version`, `/room_keys/keys`): backup versions and the
//! encrypted room keys in them. Keys go only into the current version
//! (`M_WRONG_ROOM_KEYS_VERSION` otherwise, naming the current one), and a session's stored key
//! is replaced only by a better one, by the spec's rule ([`replaces`]). The `etag` changes
//! whenever a version's keys do, so a client can tell whether another device backed up keys.

use std::collections::BTreeMap;

use myelin_store::{
    Store,
    key_backup::{PutKeysRefused, RoomKeyRow},
};
use ruma::UserId;
use serde_json::Value;

use crate::{Error, Result};

/// A backup version as the API returns it.
#[derive(Debug, Clone)]
pub struct BackupVersion {
    pub version: String,
    /// The `{algorithm, auth_data}` object.
    pub algorithm: Value,
    pub etag: String,
    pub count: u64,
}

/// Room keys per room, per session.
pub type RoomKeys = BTreeMap<String, BTreeMap<String, Value>>;

/// Whether `new` should replace `old` for the same session: a verified key beats an unverified
/// one; then the lower `first_message_index` (it decrypts more); then the lower
/// `forwarded_count` (fewer hands). An equal key changes nothing.
pub fn replaces(new: &RoomKeyRow, old: &RoomKeyRow) -> bool {
    if new.is_verified != old.is_verified {
        return new.is_verified;
    }
    if new.first_message_index != old.first_message_index {
        return new.first_message_index < old.first_message_index;
    }
    new.forwarded_count < old.forwarded_count
}

/// The key backup area.
#[derive(Debug)]
pub struct KeyBackup {
    store: Store,
}

/// Versions are this server's numbers; anything else names no version.
fn parse_version(version: &str) -> Result<i64> {
    version
        .parse::<i64>()
        .ok()
        .filter(|v| *v > 0 && v.to_string() == version)
        .ok_or_else(|| Error::NotFound(format!("Unknown backup version {version}")))
}

fn check_algorithm(algorithm: &Value) -> Result<()> {
    let ok = algorithm.get("algorithm").is_some_and(Value::is_string)
        && algorithm.get("auth_data").is_some_and(Value::is_object);
    if ok {
        Ok(())
    } else {
        Err(Error::BadJson(
            "A backup version needs algorithm (a string) and auth_data (an object)".to_owned(),
        ))
    }
}

/// The stored form of a uploaded key: its ordering fields checked and copied out.
fn room_key_row(room_id: &str, session_id: &str, data: Value) -> Result<RoomKeyRow> {
    let bad = || {
        Error::BadJson(format!(
            "The key for session {session_id} needs first_message_index and forwarded_count \
             (non-negative integers), is_verified (a boolean) and session_data (an object)"
        ))
    };
    let first_message_index = data
        .get("first_message_index")
        .and_then(Value::as_i64)
        .filter(|n| *n >= 0)
        .ok_or_else(bad)?;
    let forwarded_count = data
        .get("forwarded_count")
        .and_then(Value::as_i64)
        .filter(|n| *n >= 0)
        .ok_or_else(bad)?;
    let is_verified = data
        .get("is_verified")
        .and_then(Value::as_bool)
        .ok_or_else(bad)?;
    if !data.get("session_data").is_some_and(Value::is_object) {
        return Err(bad());
    }
    Ok(RoomKeyRow {
        room_id: room_id.to_owned(),
        session_id: session_id.to_owned(),
        first_message_index,
        forwarded_count,
        is_verified,
        key_json: data.to_string(),
    })
}

impl KeyBackup {
    pub fn new(store: Store) -> Self {
        KeyBackup { store }
    }

    /// `POST /room_keys/version`: a new version, which becomes the current one.
    pub async fn create_version(&self, user: &UserId, algorithm: &Value) -> Result<String> {
        check_algorithm(algorithm)?;
        let version = self
            .store
            .create_backup_version(user.as_str(), &algorithm.to_string())
            .await?;
        Ok(version.to_string())
    }

    /// `GET /room_keys/version[/{version}]`: a live version, or the current one.
    pub async fn version(&self, user: &UserId, version: Option<&str>) -> Result<BackupVersion> {
        let number = version.map(parse_version).transpose()?;
        let row = self
            .store
            .backup_version(user.as_str(), number)
            .await?
            .ok_or_else(|| Error::NotFound("No backup version found".to_owned()))?;
        Ok(BackupVersion {
            version: row.version.to_string(),
            algorithm: serde_json::from_str(&row.algorithm_json).unwrap_or(Value::Null),
            etag: row.etag.to_string(),
            count: u64::try_from(row.count).unwrap_or(0),
        })
    }

    /// `PUT /room_keys/version/{version}`: new `auth_data` for a version; its algorithm cannot
    /// change, and a `version` in the body must be the one in the path.
    pub async fn update_version(&self, user: &UserId, version: &str, body: &Value) -> Result<()> {
        check_algorithm(body)?;
        if let Some(in_body) = body.get("version")
            && in_body.as_str() != Some(version)
        {
            return Err(Error::InvalidParam(
                "The version in the body does not match the one in the path".to_owned(),
            ));
        }
        let current = self.version(user, Some(version)).await?;
        if current.algorithm.get("algorithm") != body.get("algorithm") {
            return Err(Error::InvalidParam(
                "A backup version's algorithm cannot change".to_owned(),
            ));
        }
        let mut stored = body.clone();
        if let Some(object) = stored.as_object_mut() {
            object.remove("version");
        }
        let number = parse_version(version)?;
        if !self
            .store
            .update_backup_version(user.as_str(), number, &stored.to_string())
            .await?
        {
            return Err(Error::NotFound(format!("Unknown backup version {version}")));
        }
        Ok(())
    }

    /// `DELETE /room_keys/version/{version}`: the version and its keys.
    pub async fn delete_version(&self, user: &UserId, version: &str) -> Result<()> {
        let number = parse_version(version)?;
        if self
            .store
            .delete_backup_version(user.as_str(), number)
            .await?
        {
            Ok(())
        } else {
            Err(Error::NotFound(format!("Unknown backup version {version}")))
        }
    }

    /// `PUT /room_keys/keys[/{roomId}[/{sessionId}]]`: keys into the current version. Returns
    /// the version's `(etag, count)`.
    pub async fn put_keys(
        &self,
        user: &UserId,
        version: &str,
        keys: Vec<(String, String, Value)>,
    ) -> Result<(String, u64)> {
        let number = parse_version(version)?;
        let rows = keys
            .into_iter()
            .map(|(room, session, data)| room_key_row(&room, &session, data))
            .collect::<Result<Vec<_>>>()?;
        if self
            .store
            .backup_version(user.as_str(), Some(number))
            .await?
            .is_none()
        {
            return Err(Error::NotFound(format!("Unknown backup version {version}")));
        }
        match self
            .store
            .put_room_keys(user.as_str(), number, &rows, replaces)
            .await?
        {
            Ok((etag, count)) => Ok((etag.to_string(), u64::try_from(count).unwrap_or(0))),
            Err(PutKeysRefused::NotCurrent(current)) => Err(Error::WrongRoomKeysVersion {
                current_version: current.map(|v| v.to_string()),
            }),
        }
    }

    /// `GET /room_keys/keys[/{roomId}[/{sessionId}]]`.
    pub async fn keys(
        &self,
        user: &UserId,
        version: &str,
        room_id: Option<&str>,
        session_id: Option<&str>,
    ) -> Result<RoomKeys> {
        let number = parse_version(version)?;
        if self
            .store
            .backup_version(user.as_str(), Some(number))
            .await?
            .is_none()
        {
            return Err(Error::NotFound(format!("Unknown backup version {version}")));
        }
        let mut out: RoomKeys = BTreeMap::new();
        for row in self
            .store
            .room_keys(user.as_str(), number, room_id, session_id)
            .await?
        {
            let data = serde_json::from_str(&row.key_json).unwrap_or(Value::Null);
            out.entry(row.room_id)
                .or_default()
                .insert(row.session_id, data);
        }
        Ok(out)
    }

    /// `DELETE /room_keys/keys[/{roomId}[/{sessionId}]]`. Returns `(etag, count)`.
    pub async fn delete_keys(
        &self,
        user: &UserId,
        version: &str,
        room_id: Option<&str>,
        session_id: Option<&str>,
    ) -> Result<(String, u64)> {
        let number = parse_version(version)?;
        match self
            .store
            .delete_room_keys(user.as_str(), number, room_id, session_id)
            .await?
        {
            Some((etag, count)) => Ok((etag.to_string(), u64::try_from(count).unwrap_or(0))),
            None => Err(Error::NotFound(format!("Unknown backup version {version}"))),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn key(is_verified: bool, first_message_index: i64, forwarded_count: i64) -> RoomKeyRow {
        RoomKeyRow {
            room_id: "!r:x".to_owned(),
            session_id: "s".to_owned(),
            first_message_index,
            forwarded_count,
            is_verified,
            key_json: "{}".to_owned(),
        }
    }

    #[test]
    fn replacement_rule() {
        // Verified beats unverified, whatever the indices.
        assert!(replaces(&key(true, 9, 9), &key(false, 0, 0)));
        assert!(!replaces(&key(false, 0, 0), &key(true, 9, 9)));
        // Then the lower first message index.
        assert!(replaces(&key(false, 1, 9), &key(false, 2, 0)));
        assert!(!replaces(&key(false, 3, 0), &key(false, 2, 9)));
        // Then the lower forwarded count.
        assert!(replaces(&key(true, 2, 0), &key(true, 2, 1)));
        assert!(!replaces(&key(true, 2, 1), &key(true, 2, 0)));
        // The same key changes nothing.
        assert!(!replaces(&key(true, 2, 1), &key(true, 2, 1)));
    }

    #[test]
    fn versions_are_canonical_numbers() {
        assert_eq!(parse_version("3").unwrap(), 3);
        for bad in ["0", "-1", "03", "x", ""] {
            assert!(
                matches!(parse_version(bad), Err(Error::NotFound(_))),
                "{bad}"
            );
        }
    }
}

//! `/room_keys/*`: key backup versions and the room keys in them.

use std::collections::BTreeMap;

use axum::Router;
use ruma::{
    OwnedRoomId, UInt,
    api::client::backup::{
        RoomKeyBackup, add_backup_keys, add_backup_keys_for_room, add_backup_keys_for_session,
        create_backup_version, delete_backup_keys, delete_backup_keys_for_room,
        delete_backup_keys_for_session, delete_backup_version, get_backup_info, get_backup_keys,
        get_backup_keys_for_room, get_backup_keys_for_session, get_latest_backup_info,
        update_backup_version,
    },
    serde::Raw,
};
use serde_json::Value;

use myelin_service::{Error as ServiceError, key_backup::BackupVersion};

use crate::{AppState, MatrixError, Ruma, ruma_bridge::RumaRouterExt};

pub(crate) fn routes() -> Router<AppState> {
    Router::new()
        .ruma(create_version)
        .ruma(latest_version)
        .ruma(get_version)
        .ruma(update_version)
        .ruma(delete_version)
        .ruma(put_all)
        .ruma(put_room)
        .ruma(put_session)
        .ruma(get_all)
        .ruma(get_room)
        .ruma(get_session)
        .ruma(delete_all)
        .ruma(delete_room)
        .ruma(delete_session)
}

fn json_of<T>(raw: &Raw<T>) -> Result<Value, MatrixError> {
    serde_json::from_str(raw.json().get())
        .map_err(|e| MatrixError::from(ServiceError::BadJson(format!("Bad JSON: {e}"))))
}

fn raw_of<T>(value: &Value) -> Result<Raw<T>, MatrixError> {
    serde_json::value::to_raw_value(value)
        .map(Raw::from_json)
        .map_err(|e| MatrixError::internal(format!("serialising backup data: {e}")))
}

fn count(n: u64) -> UInt {
    UInt::try_from(n).unwrap_or(UInt::MAX)
}

fn sessions_of(
    sessions: BTreeMap<String, Value>,
) -> Result<BTreeMap<String, Raw<ruma::api::client::backup::KeyBackupData>>, MatrixError> {
    sessions
        .into_iter()
        .map(|(id, data)| Ok((id, raw_of(&data)?)))
        .collect()
}

async fn create_version(
    state: AppState,
    request: Ruma<create_backup_version::v3::Request>,
) -> Result<create_backup_version::v3::Response, MatrixError> {
    let algorithm = json_of(&request.body.algorithm)?;
    let version = state
        .services
        .key_backup
        .create_version(&request.identity.user_id, &algorithm)
        .await?;
    Ok(create_backup_version::v3::Response::new(version))
}

fn info(version: BackupVersion) -> Result<get_backup_info::v3::Response, MatrixError> {
    Ok(get_backup_info::v3::Response::new(
        raw_of(&version.algorithm)?,
        count(version.count),
        version.etag,
        version.version,
    ))
}

async fn latest_version(
    state: AppState,
    request: Ruma<get_latest_backup_info::v3::Request>,
) -> Result<get_latest_backup_info::v3::Response, MatrixError> {
    let version = state
        .services
        .key_backup
        .version(&request.identity.user_id, None)
        .await?;
    Ok(get_latest_backup_info::v3::Response::new(
        raw_of(&version.algorithm)?,
        count(version.count),
        version.etag,
        version.version,
    ))
}

async fn get_version(
    state: AppState,
    request: Ruma<get_backup_info::v3::Request>,
) -> Result<get_backup_info::v3::Response, MatrixError> {
    let version = state
        .services
        .key_backup
        .version(&request.identity.user_id, Some(&request.body.version))
        .await?;
    info(version)
}

async fn update_version(
    state: AppState,
    request: Ruma<update_backup_version::v3::Request>,
) -> Result<update_backup_version::v3::Response, MatrixError> {
    let body = json_of(&request.body.algorithm)?;
    state
        .services
        .key_backup
        .update_version(&request.identity.user_id, &request.body.version, &body)
        .await?;
    Ok(update_backup_version::v3::Response::new())
}

async fn delete_version(
    state: AppState,
    request: Ruma<delete_backup_version::v3::Request>,
) -> Result<delete_backup_version::v3::Response, MatrixError> {
    state
        .services
        .key_backup
        .delete_version(&request.identity.user_id, &request.body.version)
        .await?;
    Ok(delete_backup_version::v3::Response::new())
}

async fn put_all(
    state: AppState,
    request: Ruma<add_backup_keys::v3::Request>,
) -> Result<add_backup_keys::v3::Response, MatrixError> {
    let mut keys = Vec::new();
    for (room, backup) in &request.body.rooms {
        for (session, data) in &backup.sessions {
            keys.push((room.to_string(), session.clone(), json_of(data)?));
        }
    }
    let (etag, n) = state
        .services
        .key_backup
        .put_keys(&request.identity.user_id, &request.body.version, keys)
        .await?;
    Ok(add_backup_keys::v3::Response::new(etag, count(n)))
}

async fn put_room(
    state: AppState,
    request: Ruma<add_backup_keys_for_room::v3::Request>,
) -> Result<add_backup_keys_for_room::v3::Response, MatrixError> {
    let room = request.body.room_id.to_string();
    let mut keys = Vec::new();
    for (session, data) in &request.body.sessions {
        keys.push((room.clone(), session.clone(), json_of(data)?));
    }
    let (etag, n) = state
        .services
        .key_backup
        .put_keys(&request.identity.user_id, &request.body.version, keys)
        .await?;
    Ok(add_backup_keys_for_room::v3::Response::new(etag, count(n)))
}

async fn put_session(
    state: AppState,
    request: Ruma<add_backup_keys_for_session::v3::Request>,
) -> Result<add_backup_keys_for_session::v3::Response, MatrixError> {
    let body = request.body;
    let keys = vec![(
        body.room_id.to_string(),
        body.session_id.clone(),
        json_of(&body.session_data)?,
    )];
    let (etag, n) = state
        .services
        .key_backup
        .put_keys(&request.identity.user_id, &body.version, keys)
        .await?;
    Ok(add_backup_keys_for_session::v3::Response::new(
        etag,
        count(n),
    ))
}

async fn get_all(
    state: AppState,
    request: Ruma<get_backup_keys::v3::Request>,
) -> Result<get_backup_keys::v3::Response, MatrixError> {
    let keys = state
        .services
        .key_backup
        .keys(&request.identity.user_id, &request.body.version, None, None)
        .await?;
    let mut rooms = BTreeMap::new();
    for (room, sessions) in keys {
        let room = OwnedRoomId::try_from(room)
            .map_err(|e| MatrixError::internal(format!("stored room id: {e}")))?;
        rooms.insert(room, RoomKeyBackup::new(sessions_of(sessions)?));
    }
    Ok(get_backup_keys::v3::Response::new(rooms))
}

async fn get_room(
    state: AppState,
    request: Ruma<get_backup_keys_for_room::v3::Request>,
) -> Result<get_backup_keys_for_room::v3::Response, MatrixError> {
    let body = request.body;
    let mut keys = state
        .services
        .key_backup
        .keys(
            &request.identity.user_id,
            &body.version,
            Some(body.room_id.as_str()),
            None,
        )
        .await?;
    let sessions = keys.remove(body.room_id.as_str()).unwrap_or_default();
    Ok(get_backup_keys_for_room::v3::Response::new(sessions_of(
        sessions,
    )?))
}

async fn get_session(
    state: AppState,
    request: Ruma<get_backup_keys_for_session::v3::Request>,
) -> Result<get_backup_keys_for_session::v3::Response, MatrixError> {
    let body = request.body;
    let mut keys = state
        .services
        .key_backup
        .keys(
            &request.identity.user_id,
            &body.version,
            Some(body.room_id.as_str()),
            Some(&body.session_id),
        )
        .await?;
    let data = keys
        .remove(body.room_id.as_str())
        .and_then(|mut sessions| sessions.remove(&body.session_id))
        .ok_or_else(|| MatrixError::not_found("No backed-up key for this session"))?;
    Ok(get_backup_keys_for_session::v3::Response::new(raw_of(
        &data,
    )?))
}

async fn delete_all(
    state: AppState,
    request: Ruma<delete_backup_keys::v3::Request>,
) -> Result<delete_backup_keys::v3::Response, MatrixError> {
    let (etag, n) = state
        .services
        .key_backup
        .delete_keys(&request.identity.user_id, &request.body.version, None, None)
        .await?;
    Ok(delete_backup_keys::v3::Response::new(etag, count(n)))
}

async fn delete_room(
    state: AppState,
    request: Ruma<delete_backup_keys_for_room::v3::Request>,
) -> Result<delete_backup_keys_for_room::v3::Response, MatrixError> {
    let body = request.body;
    let (etag, n) = state
        .services
        .key_backup
        .delete_keys(
            &request.identity.user_id,
            &body.version,
            Some(body.room_id.as_str()),
            None,
        )
        .await?;
    Ok(delete_backup_keys_for_room::v3::Response::new(
        etag,
        count(n),
    ))
}

async fn delete_session(
    state: AppState,
    request: Ruma<delete_backup_keys_for_session::v3::Request>,
) -> Result<delete_backup_keys_for_session::v3::Response, MatrixError> {
    let body = request.body;
    let (etag, n) = state
        .services
        .key_backup
        .delete_keys(
            &request.identity.user_id,
            &body.version,
            Some(body.room_id.as_str()),
            Some(&body.session_id),
        )
        .await?;
    Ok(delete_backup_keys_for_session::v3::Response::new(
        etag,
        count(n),
    ))
}

//! `/keys/*`: uploading, querying and claiming end-to-end keys, key changes, cross-signing
//! keys (with UIA to replace them) and signatures. Keys cross this layer as JSON values; the
//! service checks them.

use std::collections::BTreeMap;

use axum::Router;
use ruma::{
    OneTimeKeyAlgorithm, OwnedDeviceId, OwnedOneTimeKeyId, OwnedUserId, UInt,
    api::client::keys::{
        claim_keys, get_key_changes, get_keys, upload_keys, upload_signatures, upload_signing_keys,
    },
    encryption::OneTimeKey,
    serde::Raw,
};
use serde_json::Value;

use myelin_service::{Error as ServiceError, e2ee::CrossSigningUpload, sync::SyncToken};

use crate::{AppState, MatrixError, Ruma, ruma_bridge::RumaRouterExt};

use super::uia::submission;

pub(crate) fn routes() -> Router<AppState> {
    Router::new()
        .ruma(upload)
        .ruma(query)
        .ruma(claim)
        .ruma(changes)
        .ruma(upload_cross_signing)
        .ruma(upload_signatures_handler)
}

/// The JSON of a raw value from a request.
pub(crate) fn json_of<T>(raw: &Raw<T>) -> Result<Value, MatrixError> {
    serde_json::from_str(raw.json().get())
        .map_err(|e| MatrixError::from(ServiceError::BadJson(format!("Bad JSON: {e}"))))
}

/// A JSON value as a raw value for a response.
pub(crate) fn raw_of<T>(value: &Value) -> Result<Raw<T>, MatrixError> {
    serde_json::value::to_raw_value(value)
        .map(Raw::from_json)
        .map_err(|e| MatrixError::internal(format!("serialising keys: {e}")))
}

/// A claim as the service takes it (user → device → algorithm, as strings), from the
/// `one_time_keys` of a client's or another server's `/keys/claim`.
pub(crate) fn claim_wanted(
    claims: &BTreeMap<OwnedUserId, BTreeMap<OwnedDeviceId, OneTimeKeyAlgorithm>>,
) -> BTreeMap<String, BTreeMap<String, String>> {
    claims
        .iter()
        .map(|(user, devices)| {
            (
                user.to_string(),
                devices
                    .iter()
                    .map(|(device, algorithm)| (device.to_string(), algorithm.to_string()))
                    .collect(),
            )
        })
        .collect()
}

/// Claimed one-time keys in ruma's form: user → device → key id → key.
pub(crate) type ClaimedKeys =
    BTreeMap<OwnedUserId, BTreeMap<OwnedDeviceId, BTreeMap<OwnedOneTimeKeyId, Raw<OneTimeKey>>>>;

/// The claimed keys (user → device → key id → key) in ruma's form, for either answer.
pub(crate) fn claimed_keys(
    claimed: BTreeMap<String, BTreeMap<String, BTreeMap<String, Value>>>,
) -> Result<ClaimedKeys, MatrixError> {
    let mut one_time_keys = BTreeMap::new();
    for (user, devices) in claimed {
        let user = OwnedUserId::try_from(user)
            .map_err(|e| MatrixError::internal(format!("stored user id: {e}")))?;
        let mut per_device = BTreeMap::new();
        for (device, keys) in devices {
            let mut per_key = BTreeMap::new();
            for (key_id, key) in keys {
                let key_id = key_id
                    .try_into()
                    .map_err(|e| MatrixError::internal(format!("stored key id: {e}")))?;
                per_key.insert(key_id, raw_of(&key)?);
            }
            per_device.insert(OwnedDeviceId::from(device), per_key);
        }
        one_time_keys.insert(user, per_device);
    }
    Ok(one_time_keys)
}

/// How long to wait for other servers: the client's `timeout` (the spec's default when it
/// names none), within bounds.
fn remote_timeout(asked: Option<std::time::Duration>) -> std::time::Duration {
    asked
        .unwrap_or(myelin_service::e2ee::DEFAULT_REMOTE_TIMEOUT)
        .min(myelin_service::e2ee::MAX_REMOTE_TIMEOUT)
}

fn counts_of(counts: BTreeMap<String, i64>) -> BTreeMap<OneTimeKeyAlgorithm, UInt> {
    counts
        .into_iter()
        .map(|(algorithm, n)| {
            (
                OneTimeKeyAlgorithm::from(algorithm.as_str()),
                UInt::try_from(n).unwrap_or_default(),
            )
        })
        .collect()
}

async fn upload(
    state: AppState,
    request: Ruma<upload_keys::v3::Request>,
) -> Result<upload_keys::v3::Response, MatrixError> {
    let body = request.body;
    let device_keys = body.device_keys.as_ref().map(json_of).transpose()?;
    let mut one_time_keys = Vec::with_capacity(body.one_time_keys.len());
    for (id, key) in &body.one_time_keys {
        one_time_keys.push((id.to_string(), json_of(key)?));
    }
    let mut fallback_keys = Vec::with_capacity(body.fallback_keys.len());
    for (id, key) in &body.fallback_keys {
        fallback_keys.push((id.to_string(), json_of(key)?));
    }
    let counts = state
        .services
        .e2ee
        .upload_keys(&request.identity, device_keys, one_time_keys, fallback_keys)
        .await?;
    Ok(upload_keys::v3::Response::new(counts_of(counts)))
}

async fn query(
    state: AppState,
    request: Ruma<get_keys::v3::Request>,
) -> Result<get_keys::v3::Response, MatrixError> {
    let wanted: BTreeMap<String, Vec<String>> = request
        .body
        .device_keys
        .iter()
        .map(|(user, devices)| {
            (
                user.to_string(),
                devices.iter().map(ToString::to_string).collect(),
            )
        })
        .collect();
    let result = state
        .services
        .e2ee
        .query_keys(
            &request.identity.user_id,
            &wanted,
            remote_timeout(request.body.timeout),
        )
        .await?;
    let mut response = get_keys::v3::Response::new();
    response.failures = result.failures;
    let user_of = |user: String| -> Result<OwnedUserId, MatrixError> {
        OwnedUserId::try_from(user)
            .map_err(|e| MatrixError::internal(format!("stored user id: {e}")))
    };
    for (user, devices) in result.device_keys {
        let mut out = BTreeMap::new();
        for (device, keys) in devices {
            out.insert(OwnedDeviceId::from(device), raw_of(&keys)?);
        }
        response.device_keys.insert(user_of(user)?, out);
    }
    for (user, key) in result.master_keys {
        response.master_keys.insert(user_of(user)?, raw_of(&key)?);
    }
    for (user, key) in result.self_signing_keys {
        response
            .self_signing_keys
            .insert(user_of(user)?, raw_of(&key)?);
    }
    for (user, key) in result.user_signing_keys {
        response
            .user_signing_keys
            .insert(user_of(user)?, raw_of(&key)?);
    }
    Ok(response)
}

async fn claim(
    state: AppState,
    request: Ruma<claim_keys::v3::Request>,
) -> Result<claim_keys::v3::Response, MatrixError> {
    let wanted = claim_wanted(&request.body.one_time_keys);
    let result = state
        .services
        .e2ee
        .claim_keys(&wanted, remote_timeout(request.body.timeout))
        .await?;
    let one_time_keys = claimed_keys(result.one_time_keys)?;
    let mut response = claim_keys::v3::Response::new(one_time_keys);
    response.failures = result.failures;
    Ok(response)
}

async fn changes(
    state: AppState,
    request: Ruma<get_key_changes::v3::Request>,
) -> Result<get_key_changes::v3::Response, MatrixError> {
    let from = SyncToken::parse(&request.body.from)?;
    let to = SyncToken::parse(&request.body.to)?;
    let (changed, left) = state
        .services
        .e2ee
        .device_list_delta(
            &request.identity.user_id,
            from.events,
            from.device_lists,
            to.device_lists,
            to.events > from.events,
        )
        .await?;
    let ids = |users: Vec<String>| -> Vec<OwnedUserId> {
        users
            .into_iter()
            .filter_map(|u| OwnedUserId::try_from(u).ok())
            .collect()
    };
    Ok(get_key_changes::v3::Response::new(ids(changed), ids(left)))
}

async fn upload_cross_signing(
    state: AppState,
    request: Ruma<upload_signing_keys::v3::Request>,
) -> Result<upload_signing_keys::v3::Response, MatrixError> {
    let user = request.identity;
    let body = request.body;
    let upload = CrossSigningUpload {
        master_key: body.master_key.as_ref().map(json_of).transpose()?,
        self_signing_key: body.self_signing_key.as_ref().map(json_of).transpose()?,
        user_signing_key: body.user_signing_key.as_ref().map(json_of).transpose()?,
    };
    let e2ee = &state.services.e2ee;
    if e2ee
        .cross_signing_upload_needs_uia(&user.user_id, &upload)
        .await?
    {
        let (session, auth) = submission(body.auth.as_ref());
        state
            .services
            .accounts
            .password_uia(
                "device_signing_upload",
                &user,
                session.as_deref(),
                auth,
                request.client_address,
            )
            .await?;
    }
    e2ee.upload_cross_signing_keys(&user.user_id, &upload)
        .await?;
    Ok(upload_signing_keys::v3::Response::new())
}

async fn upload_signatures_handler(
    state: AppState,
    request: Ruma<upload_signatures::v3::Request>,
) -> Result<upload_signatures::v3::Response, MatrixError> {
    // The signed objects, user → key id → object, read back from ruma's opaque map.
    let signed: BTreeMap<String, BTreeMap<String, Value>> = request
        .body
        .signed_keys
        .iter()
        .map(|(user, keys)| {
            let keys = serde_json::to_value(keys)
                .ok()
                .and_then(|v| serde_json::from_value(v).ok())
                .unwrap_or_default();
            (user.to_string(), keys)
        })
        .collect();
    let failures = state
        .services
        .e2ee
        .upload_signatures(&request.identity.user_id, signed)
        .await?;
    let mut response = upload_signatures::v3::Response::new();
    for (user, keys) in failures {
        let Ok(user) = OwnedUserId::try_from(user) else {
            continue;
        };
        let mut per_key = BTreeMap::new();
        for (key_id, failure) in keys {
            // ruma's failure type has no constructor; it deserialises from the spec's shape.
            let failure = serde_json::from_value(failure)
                .map_err(|e| MatrixError::internal(format!("building a failure: {e}")))?;
            per_key.insert(key_id, failure);
        }
        response.failures.insert(user, per_key);
    }
    Ok(response)
}

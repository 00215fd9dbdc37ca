//! What other servers ask about local users' end-to-end keys (X-Matrix authenticated):
//! `GET /_matrix/federation/v1/user/devices/{userId}`, `POST /user/keys/query` and
//! `POST /user/keys/claim`. The rules (local users only, never user-signing keys, one-time keys
//! claimed once) are the service's (`e2ee::remote`).

use std::collections::BTreeMap;

use axum::Router;
use ruma::{
    OwnedDeviceId, OwnedUserId, UInt,
    api::federation::{
        device::get_devices,
        keys::{claim_keys, get_keys},
    },
};

use crate::{
    AppState, MatrixError, Ruma,
    client::keys::{claim_wanted, claimed_keys, raw_of},
    ruma_bridge::RumaRouterExt,
};

pub(crate) fn routes() -> Router<AppState> {
    Router::new().ruma(devices).ruma(query).ruma(claim)
}

fn user_id(user: String) -> Result<OwnedUserId, MatrixError> {
    OwnedUserId::try_from(user).map_err(|e| MatrixError::internal(format!("stored user id: {e}")))
}

async fn devices(
    state: AppState,
    request: Ruma<get_devices::v1::Request>,
) -> Result<get_devices::v1::Response, MatrixError> {
    let user = request.body.user_id;
    let answer = state.services.e2ee.federation_user_devices(&user).await?;
    let stream_id = UInt::try_from(answer.stream_id.max(0)).unwrap_or_default();
    let mut response = get_devices::v1::Response::new(user, stream_id);
    for (device_id, keys, name) in answer.devices {
        let mut device = get_devices::v1::UserDevice::new(device_id.into(), raw_of(&keys)?);
        device.device_display_name = name;
        response.devices.push(device);
    }
    response.master_key = answer.master_key.as_ref().map(raw_of).transpose()?;
    response.self_signing_key = answer.self_signing_key.as_ref().map(raw_of).transpose()?;
    Ok(response)
}

async fn query(
    state: AppState,
    request: Ruma<get_keys::v1::Request>,
) -> Result<get_keys::v1::Response, MatrixError> {
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
    let result = state.services.e2ee.federation_query_keys(&wanted).await?;
    let mut response = get_keys::v1::Response::default();
    for (user, devices) in result.device_keys {
        let mut out = BTreeMap::new();
        for (device, keys) in devices {
            out.insert(OwnedDeviceId::from(device), raw_of(&keys)?);
        }
        response.device_keys.insert(user_id(user)?, out);
    }
    for (user, key) in result.master_keys {
        response.master_keys.insert(user_id(user)?, raw_of(&key)?);
    }
    for (user, key) in result.self_signing_keys {
        response
            .self_signing_keys
            .insert(user_id(user)?, raw_of(&key)?);
    }
    Ok(response)
}

async fn claim(
    state: AppState,
    request: Ruma<claim_keys::v1::Request>,
) -> Result<claim_keys::v1::Response, MatrixError> {
    let wanted = claim_wanted(&request.body.one_time_keys);
    let result = state.services.e2ee.federation_claim_keys(&wanted).await?;
    let one_time_keys = claimed_keys(result.one_time_keys)?;
    Ok(claim_keys::v1::Response::new(one_time_keys))
}

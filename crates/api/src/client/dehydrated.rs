//! `/dehydrated_device` (MSC3814, at `/_matrix/client/unstable/org.matrix.msc3814.v1/`): put,
//! get and delete the user's dehydrated device, and read the to-device messages it was sent. The
//! service (`e2ee::dehydrated`) owns the rules.

use axum::Router;
use ruma::{
    OwnedDeviceId,
    api::client::dehydrated_device::{
        delete_dehydrated_device, get_dehydrated_device, get_events, put_dehydrated_device,
    },
};

use myelin_service::{e2ee::DehydratedDevicePut, rate_limit::RateKey};

use super::keys::{json_of, raw_of};
use crate::{AppState, MatrixError, Ruma, ruma_bridge::RumaRouterExt};

pub(crate) fn routes() -> Router<AppState> {
    Router::new().ruma(put).ruma(get).ruma(delete).ruma(events)
}

async fn put(
    state: AppState,
    request: Ruma<put_dehydrated_device::unstable::Request>,
) -> Result<put_dehydrated_device::unstable::Response, MatrixError> {
    // Not marked rate-limited by the MSC, but each put is a new device (and the old one
    // deleted): a device-list change for every user and server sharing a room with the user.
    state
        .services
        .rate_limiter
        .check(RateKey::User(request.identity.user_id.to_string()))?;
    let body = request.body;
    let mut one_time_keys = Vec::with_capacity(body.one_time_keys.len());
    for (id, key) in &body.one_time_keys {
        one_time_keys.push((id.to_string(), json_of(key)?));
    }
    let mut fallback_keys = Vec::with_capacity(body.fallback_keys.len());
    for (id, key) in &body.fallback_keys {
        fallback_keys.push((id.to_string(), json_of(key)?));
    }
    let put = DehydratedDevicePut {
        device_id: body.device_id.to_string(),
        initial_device_display_name: body.initial_device_display_name,
        device_data: json_of(&body.device_data)?,
        device_keys: json_of(&body.device_keys)?,
        one_time_keys,
        fallback_keys,
    };
    let device_id = state
        .services
        .e2ee
        .put_dehydrated_device(&request.identity.user_id, put)
        .await?;
    Ok(put_dehydrated_device::unstable::Response::new(
        OwnedDeviceId::from(device_id),
    ))
}

async fn get(
    state: AppState,
    request: Ruma<get_dehydrated_device::unstable::Request>,
) -> Result<get_dehydrated_device::unstable::Response, MatrixError> {
    let (device_id, device_data) = state
        .services
        .e2ee
        .dehydrated_device(&request.identity.user_id)
        .await?;
    Ok(get_dehydrated_device::unstable::Response::new(
        OwnedDeviceId::from(device_id),
        raw_of(&device_data)?,
    ))
}

async fn delete(
    state: AppState,
    request: Ruma<delete_dehydrated_device::unstable::Request>,
) -> Result<delete_dehydrated_device::unstable::Response, MatrixError> {
    let device_id = state
        .services
        .e2ee
        .delete_dehydrated_device(&request.identity.user_id)
        .await?;
    Ok(delete_dehydrated_device::unstable::Response::new(
        OwnedDeviceId::from(device_id),
    ))
}

async fn events(
    state: AppState,
    request: Ruma<get_events::unstable::Request>,
) -> Result<get_events::unstable::Response, MatrixError> {
    let body = request.body;
    let page = state
        .services
        .e2ee
        .dehydrated_device_events(
            &request.identity.user_id,
            body.device_id.as_str(),
            body.next_batch.as_deref(),
        )
        .await?;
    let mut events = Vec::with_capacity(page.events.len());
    for event in &page.events {
        events.push(raw_of(event)?);
    }
    let mut response = get_events::unstable::Response::new(events);
    response.next_batch = Some(page.next_batch);
    Ok(response)
}

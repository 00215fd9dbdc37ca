//! `/devices`: list, get, rename, delete (with UIA), delete several (with UIA).

use axum::Router;
use myelin_store::DeviceRow;
use ruma::{
    MilliSecondsSinceUnixEpoch, UInt,
    api::client::device::{
        self, delete_device, delete_devices, get_device, get_devices, update_device,
    },
};

use crate::{AppState, MatrixError, Ruma, ruma_bridge::RumaRouterExt};

use super::uia::submission;

pub(crate) fn routes() -> Router<AppState> {
    Router::new()
        .ruma(list)
        .ruma(get)
        .ruma(rename)
        .ruma(delete_one)
        .ruma(delete_many)
}

fn to_device(row: DeviceRow) -> device::Device {
    let mut device = device::Device::new(row.device_id.into());
    device.display_name = row.display_name;
    device.last_seen_ts = row
        .last_seen_ts
        .and_then(|ts| UInt::try_from(ts).ok())
        .map(MilliSecondsSinceUnixEpoch);
    device
}

async fn list(
    state: AppState,
    request: Ruma<get_devices::v3::Request>,
) -> Result<get_devices::v3::Response, MatrixError> {
    let devices = state.services.accounts.devices(&request.identity).await?;
    Ok(get_devices::v3::Response::new(
        devices.into_iter().map(to_device).collect(),
    ))
}

async fn get(
    state: AppState,
    request: Ruma<get_device::v3::Request>,
) -> Result<get_device::v3::Response, MatrixError> {
    let row = state
        .services
        .accounts
        .device(&request.identity, request.body.device_id.as_str())
        .await?;
    Ok(get_device::v3::Response::new(to_device(row)))
}

async fn rename(
    state: AppState,
    request: Ruma<update_device::v3::Request>,
) -> Result<update_device::v3::Response, MatrixError> {
    let body = request.body;
    state
        .services
        .accounts
        .rename_device(
            &request.identity,
            body.device_id.as_str(),
            body.display_name.as_deref(),
        )
        .await?;
    Ok(update_device::v3::Response::new())
}

async fn delete_one(
    state: AppState,
    request: Ruma<delete_device::v3::Request>,
) -> Result<delete_device::v3::Response, MatrixError> {
    let user = request.identity;
    let body = request.body;
    let accounts = &state.services.accounts;
    // A device that does not exist is a 404 before any authentication is asked for.
    accounts.device(&user, body.device_id.as_str()).await?;
    let (session, auth) = submission(body.auth.as_ref());
    accounts
        .password_uia(
            &format!("delete_device:{}", body.device_id),
            &user,
            session.as_deref(),
            auth,
            request.client_address,
        )
        .await?;
    accounts
        .delete_devices(&user, &[body.device_id.to_string()])
        .await?;
    Ok(delete_device::v3::Response::new())
}

async fn delete_many(
    state: AppState,
    request: Ruma<delete_devices::v3::Request>,
) -> Result<delete_devices::v3::Response, MatrixError> {
    let user = request.identity;
    let body = request.body;
    let mut ids: Vec<String> = body.devices.iter().map(|d| d.to_string()).collect();
    ids.sort();
    let accounts = &state.services.accounts;
    let (session, auth) = submission(body.auth.as_ref());
    accounts
        .password_uia(
            &format!("delete_devices:{}", ids.join(",")),
            &user,
            session.as_deref(),
            auth,
            request.client_address,
        )
        .await?;
    accounts.delete_devices(&user, &ids).await?;
    Ok(delete_devices::v3::Response::new())
}

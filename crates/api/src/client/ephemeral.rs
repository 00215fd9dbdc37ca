//! Typing, receipts, read markers, to-device messages and presence over the client API.

use std::time::Duration;

use axum::Router;
use ruma::api::client::{
    presence::{get_presence, set_presence},
    read_marker::set_read_marker,
    receipt::create_receipt,
    to_device::send_event_to_device,
    typing::create_typing_event,
};
use serde_json::{Map, Value};

use crate::{AppState, MatrixError, Ruma, ruma_bridge::RumaRouterExt};

pub(crate) fn routes() -> Router<AppState> {
    Router::new()
        .ruma(typing)
        .ruma(receipt)
        .ruma(read_markers)
        .ruma(to_device)
        .ruma(presence_get)
        .ruma(presence_set)
        .ruma(notifications)
}

async fn typing(
    state: AppState,
    request: Ruma<create_typing_event::v3::Request>,
) -> Result<create_typing_event::v3::Response, MatrixError> {
    let body = request.body;
    let (typing, timeout) = match body.state {
        create_typing_event::v3::Typing::Yes(info) => (true, info.timeout),
        _ => (false, Duration::ZERO),
    };
    state
        .services
        .ephemeral
        .set_typing(
            &request.identity,
            &body.user_id,
            body.room_id.as_str(),
            typing,
            timeout,
        )
        .await?;
    Ok(create_typing_event::v3::Response::new())
}

async fn receipt(
    state: AppState,
    request: Ruma<create_receipt::v3::Request>,
) -> Result<create_receipt::v3::Response, MatrixError> {
    let body = request.body;
    let services = &state.services;
    services
        .ephemeral
        .set_receipt(
            &request.identity,
            &services.user_data,
            body.room_id.as_str(),
            body.receipt_type.as_ref(),
            body.event_id.as_str(),
            body.thread.as_str(),
        )
        .await?;
    Ok(create_receipt::v3::Response::new())
}

async fn read_markers(
    state: AppState,
    request: Ruma<set_read_marker::v3::Request>,
) -> Result<set_read_marker::v3::Response, MatrixError> {
    let body = request.body;
    let services = &state.services;
    let room_id = body.room_id.as_str();
    for (kind, event_id) in [
        ("m.fully_read", &body.fully_read),
        ("m.read", &body.read_receipt),
        ("m.read.private", &body.private_read_receipt),
    ] {
        if let Some(event_id) = event_id {
            services
                .ephemeral
                .set_receipt(
                    &request.identity,
                    &services.user_data,
                    room_id,
                    kind,
                    event_id.as_str(),
                    None,
                )
                .await?;
        }
    }
    Ok(set_read_marker::v3::Response::new())
}

async fn to_device(
    state: AppState,
    request: Ruma<send_event_to_device::v3::Request>,
) -> Result<send_event_to_device::v3::Response, MatrixError> {
    let body = request.body;
    // Re-read as plain JSON: the service takes user → device → content maps.
    let messages: Map<String, Value> = match serde_json::to_value(&body.messages) {
        Ok(Value::Object(map)) => map,
        _ => Map::new(),
    };
    state
        .services
        .ephemeral
        .send_to_device(
            &request.identity,
            &state.services.config.server_name,
            &body.event_type.to_string(),
            body.txn_id.as_str(),
            &messages,
        )
        .await?;
    Ok(send_event_to_device::v3::Response::new())
}

async fn presence_get(
    state: AppState,
    request: Ruma<get_presence::v3::Request>,
) -> Result<get_presence::v3::Response, MatrixError> {
    let presence = state
        .services
        .ephemeral
        .presence(&request.identity.user_id, &request.body.user_id)
        .await?;
    let mut response =
        get_presence::v3::Response::new(presence["presence"].as_str().unwrap_or("offline").into());
    response.status_msg = presence["status_msg"].as_str().map(str::to_owned);
    response.currently_active = presence["currently_active"].as_bool();
    response.last_active_ago = presence["last_active_ago"]
        .as_u64()
        .map(Duration::from_millis);
    Ok(response)
}

async fn presence_set(
    state: AppState,
    request: Ruma<set_presence::v3::Request>,
) -> Result<set_presence::v3::Response, MatrixError> {
    let body = request.body;
    state
        .services
        .ephemeral
        .set_presence(
            &request.identity,
            &body.user_id,
            body.presence.as_ref(),
            body.status_msg.as_deref(),
        )
        .await?;
    Ok(set_presence::v3::Response::new())
}

async fn notifications(
    state: AppState,
    request: Ruma<ruma::api::client::push::get_notifications::v3::Request>,
) -> Result<ruma::api::client::push::get_notifications::v3::Response, MatrixError> {
    use ruma::api::client::push::get_notifications::v3;
    let body = request.body;
    let limit = body
        .limit
        .map_or(50, |l| usize::try_from(u64::from(l)).unwrap_or(usize::MAX));
    let only_highlight = body.only.as_deref() == Some("highlight");
    let (items, next) = state
        .services
        .rooms
        .notifications(
            &request.identity.user_id,
            body.from.as_deref(),
            limit,
            only_highlight,
        )
        .await?;
    let notifications: Vec<v3::Notification> = items
        .into_iter()
        .map(|item| {
            serde_json::from_value(item)
                .map_err(|e| MatrixError::internal(format!("notification: {e}")))
        })
        .collect::<Result<_, _>>()?;
    let mut response = v3::Response::new(notifications);
    response.next_token = next;
    Ok(response)
}

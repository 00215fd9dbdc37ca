//! Account data, global (`/user/{userId}/account_data/{type}`) and per room
//! (`/user/{userId}/rooms/{roomId}/account_data/{type}`), and room tags
//! (`/user/{userId}/rooms/{roomId}/tags`), which are the room's `m.tag` account data.

use axum::Router;
use ruma::{
    api::client::{
        config::{
            get_global_account_data, get_room_account_data, set_global_account_data,
            set_room_account_data,
        },
        tag::{create_tag, delete_tag, get_tags},
    },
    serde::Raw,
};

use crate::{AppState, MatrixError, Ruma, ruma_bridge::RumaRouterExt};

pub(crate) fn routes() -> Router<AppState> {
    Router::new()
        .ruma(get_global)
        .ruma(set_global)
        .ruma(get_room)
        .ruma(set_room)
        .ruma(tags)
        .ruma(set_tag)
        .ruma(remove_tag)
}

async fn get_global(
    state: AppState,
    request: Ruma<get_global_account_data::v3::Request>,
) -> Result<get_global_account_data::v3::Response, MatrixError> {
    let body = request.body;
    let content = state
        .services
        .user_data
        .account_data(
            &request.identity,
            &body.user_id,
            None,
            &body.event_type.to_string(),
        )
        .await?;
    Ok(get_global_account_data::v3::Response::new(Raw::from_json(
        content,
    )))
}

async fn set_global(
    state: AppState,
    request: Ruma<set_global_account_data::v3::Request>,
) -> Result<set_global_account_data::v3::Response, MatrixError> {
    let body = request.body;
    state
        .services
        .user_data
        .set_account_data(
            &request.identity,
            &body.user_id,
            None,
            &body.event_type.to_string(),
            body.data.json(),
        )
        .await?;
    Ok(set_global_account_data::v3::Response::new())
}

async fn get_room(
    state: AppState,
    request: Ruma<get_room_account_data::v3::Request>,
) -> Result<get_room_account_data::v3::Response, MatrixError> {
    let body = request.body;
    let content = state
        .services
        .user_data
        .account_data(
            &request.identity,
            &body.user_id,
            Some(&body.room_id),
            &body.event_type.to_string(),
        )
        .await?;
    Ok(get_room_account_data::v3::Response::new(Raw::from_json(
        content,
    )))
}

async fn set_room(
    state: AppState,
    request: Ruma<set_room_account_data::v3::Request>,
) -> Result<set_room_account_data::v3::Response, MatrixError> {
    let body = request.body;
    state
        .services
        .user_data
        .set_account_data(
            &request.identity,
            &body.user_id,
            Some(&body.room_id),
            &body.event_type.to_string(),
            body.data.json(),
        )
        .await?;
    Ok(set_room_account_data::v3::Response::new())
}

async fn tags(
    state: AppState,
    request: Ruma<get_tags::v3::Request>,
) -> Result<get_tags::v3::Response, MatrixError> {
    let body = request.body;
    let tags = state
        .services
        .user_data
        .tags(&request.identity, &body.user_id, &body.room_id)
        .await?;
    Ok(get_tags::v3::Response::new(tags))
}

async fn set_tag(
    state: AppState,
    request: Ruma<create_tag::v3::Request>,
) -> Result<create_tag::v3::Response, MatrixError> {
    let body = request.body;
    state
        .services
        .user_data
        .set_tag(
            &request.identity,
            &body.user_id,
            &body.room_id,
            &body.tag,
            body.tag_info,
        )
        .await?;
    Ok(create_tag::v3::Response::new())
}

async fn remove_tag(
    state: AppState,
    request: Ruma<delete_tag::v3::Request>,
) -> Result<delete_tag::v3::Response, MatrixError> {
    let body = request.body;
    state
        .services
        .user_data
        .delete_tag(&request.identity, &body.user_id, &body.room_id, &body.tag)
        .await?;
    Ok(delete_tag::v3::Response::new())
}

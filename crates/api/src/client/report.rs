//! Reporting over the client API: `POST /rooms/{roomId}/report/{eventId}`,
//! `POST /rooms/{roomId}/report` and `POST /users/{userId}/report`.

use axum::Router;
use ruma::api::client::{
    reporting::report_user,
    room::{report_content, report_room},
};

use crate::{AppState, MatrixError, Ruma, ruma_bridge::RumaRouterExt};

pub(crate) fn routes() -> Router<AppState> {
    Router::new()
        .ruma(report_event)
        .ruma(report_a_room)
        .ruma(report_a_user)
}

async fn report_event(
    state: AppState,
    request: Ruma<report_content::v3::Request>,
) -> Result<report_content::v3::Response, MatrixError> {
    let body = request.body;
    state
        .services
        .rooms
        .report_event(
            &request.identity.user_id,
            body.room_id.as_str(),
            body.event_id.as_str(),
            body.reason.as_deref(),
        )
        .await?;
    Ok(report_content::v3::Response::new())
}

async fn report_a_room(
    state: AppState,
    request: Ruma<report_room::v3::Request>,
) -> Result<report_room::v3::Response, MatrixError> {
    let body = request.body;
    state
        .services
        .rooms
        .report_room(
            &request.identity.user_id,
            body.room_id.as_str(),
            &body.reason,
        )
        .await?;
    Ok(report_room::v3::Response::new())
}

async fn report_a_user(
    state: AppState,
    request: Ruma<report_user::v3::Request>,
) -> Result<report_user::v3::Response, MatrixError> {
    let body = request.body;
    state
        .services
        .accounts
        .report_user(&request.identity.user_id, &body.user_id, &body.reason)
        .await?;
    Ok(report_user::v3::Response::new())
}

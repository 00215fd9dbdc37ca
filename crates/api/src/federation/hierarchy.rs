//! `GET /_matrix/federation/v1/hierarchy/{roomId}`: a room this server is in and its children,
//! as the asking server (the verified X-Matrix origin) may see them. The rules are the
//! service's (`rooms::hierarchy`).

use axum::{
    Json, Router,
    response::{IntoResponse, Response},
};
use ruma::api::federation::space::get_hierarchy;

use crate::{AppState, MatrixError, Ruma, ruma_bridge::RumaRouterExt};

pub(crate) fn routes() -> Router<AppState> {
    // Written as JSON: the summaries are the service's, and ruma's types would drop the
    // children's `children_state` and fail on a join rule they do not know.
    Router::new().ruma_raw::<get_hierarchy::v1::Request, _, _, _>(hierarchy)
}

async fn hierarchy(
    state: AppState,
    request: Ruma<get_hierarchy::v1::Request>,
) -> Result<Response, MatrixError> {
    let answer = state
        .services
        .rooms
        .hierarchy_for_server(
            &request.identity.0,
            request.body.room_id.as_str(),
            request.body.suggested_only,
        )
        .await?;
    Ok(Json(answer).into_response())
}

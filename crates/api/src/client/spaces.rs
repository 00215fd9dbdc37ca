//! Spaces and room summaries over the client API: `GET /rooms/{roomId}/hierarchy` and
//! `GET /room_summary/{roomIdOrAlias}`.

use axum::{Json, Router, extract::State, routing::get};
use myelin_service::rooms::HierarchyRequest;
use ruma::api::{
    Metadata,
    client::{
        room::get_summary,
        space::{SpaceHierarchyRoomsChunk, get_hierarchy},
    },
    path_builder::PathBuilder,
};
use serde_json::Value;

use crate::{AppState, MatrixError, Ruma, ruma_bridge::RumaRouterExt};

pub(crate) fn routes() -> Router<AppState> {
    let mut router = Router::new().ruma(hierarchy);
    // Written as JSON: ruma's `RoomSummary` is built field by field, and the summary is the
    // hierarchy's, already JSON.
    for path in get_summary::v1::Request::PATH_BUILDER.all_paths() {
        router = router.route(path, get(room_summary));
    }
    router
}

async fn room_summary(
    State(state): State<AppState>,
    request: Ruma<get_summary::v1::Request>,
) -> Result<Json<Value>, MatrixError> {
    let user = request.identity.as_ref().map(|user| user.user_id.as_ref());
    let summary = state
        .services
        .rooms
        .room_summary(user, request.body.room_id_or_alias.as_str())
        .await?;
    Ok(Json(summary))
}

async fn hierarchy(
    state: AppState,
    request: Ruma<get_hierarchy::v1::Request>,
) -> Result<get_hierarchy::v1::Response, MatrixError> {
    let body = request.body;
    let to_usize =
        |n: Option<ruma::UInt>| n.map(|n| usize::try_from(u64::from(n)).unwrap_or(usize::MAX));
    let page = state
        .services
        .rooms
        .hierarchy(
            &request.identity.user_id,
            body.room_id.as_str(),
            &HierarchyRequest {
                from: body.from.as_deref(),
                limit: to_usize(body.limit),
                max_depth: to_usize(body.max_depth),
                suggested_only: body.suggested_only,
            },
        )
        .await?;
    let mut response = get_hierarchy::v1::Response::new();
    response.next_batch = page.next_batch;
    response.rooms = page
        .rooms
        .into_iter()
        .map(serde_json::from_value::<SpaceHierarchyRoomsChunk>)
        .collect::<Result<_, _>>()
        .map_err(|e| MatrixError::internal(format!("hierarchy chunk: {e}")))?;
    Ok(response)
}

//! Spaces over the client API: `GET /rooms/{roomId}/hierarchy`.

use axum::Router;
use myelin_service::rooms::HierarchyRequest;
use ruma::api::client::space::{SpaceHierarchyRoomsChunk, get_hierarchy};

use crate::{AppState, MatrixError, Ruma, ruma_bridge::RumaRouterExt};

pub(crate) fn routes() -> Router<AppState> {
    Router::new().ruma(hierarchy)
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

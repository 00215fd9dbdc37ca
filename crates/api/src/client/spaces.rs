//! Spaces and room summaries over the client API: `GET /rooms/{roomId}/hierarchy` and
//! `GET /room_summary/{roomIdOrAlias}`.

use axum::{
    Json, Router,
    extract::State,
    response::{IntoResponse, Response},
    routing::get,
};
use myelin_service::rooms::HierarchyRequest;
use ruma::api::{
    Metadata,
    client::{room::get_summary, space::get_hierarchy},
    path_builder::PathBuilder,
};
use serde_json::{Value, json};

use crate::{AppState, MatrixError, Ruma, ruma_bridge::RumaRouterExt};

pub(crate) fn routes() -> Router<AppState> {
    // Written as JSON: the summaries are the service's, already JSON, and ruma's `RoomSummary`
    // cannot write a join rule it does not know (one another server's room may have).
    let mut router = Router::new().ruma_raw::<get_hierarchy::v1::Request, _, _, _>(hierarchy);
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
    let via: Vec<String> = request.body.via.iter().map(ToString::to_string).collect();
    let summary = state
        .services
        .room_summary(user, request.body.room_id_or_alias.as_str(), &via)
        .await?;
    Ok(Json(summary))
}

async fn hierarchy(
    state: AppState,
    request: Ruma<get_hierarchy::v1::Request>,
) -> Result<Response, MatrixError> {
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
    let mut response = json!({ "rooms": page.rooms });
    if let Some(next_batch) = page.next_batch {
        response["next_batch"] = json!(next_batch);
    }
    Ok(Json(response).into_response())
}

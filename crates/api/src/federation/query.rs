//! What other servers ask that needs no room: `GET /_matrix/federation/v1/query/profile` (local
//! users' profiles), `/query/directory` (this server's room aliases) and
//! `/_matrix/federation/v1/publicRooms` (GET and POST, the same room directory clients read).

use axum::{
    Json, Router,
    extract::State,
    routing::{get, post},
};
use ruma::api::{
    Metadata,
    federation::{
        directory::{get_public_rooms, get_public_rooms_filtered},
        query::{get_profile_information, get_room_information},
    },
    path_builder::PathBuilder,
};
use serde_json::Value;

use myelin_service::directory::PublicRoomsQuery;

use crate::{
    AppState, MatrixError, Ruma,
    client::{page_limit, public_rooms_json},
    ruma_bridge::RumaRouterExt,
};

pub(crate) fn routes() -> Router<AppState> {
    let mut router = Router::new().ruma(profile).ruma(room_information);
    // Served like the client's `/publicRooms` (see `client::directory`): the bridge parses and
    // authenticates, the page is written as JSON that keeps every `join_rule`.
    for path in get_public_rooms::v1::Request::PATH_BUILDER.all_paths() {
        router = router.route(path, get(public_rooms));
    }
    for path in get_public_rooms_filtered::v1::Request::PATH_BUILDER.all_paths() {
        router = router.route(path, post(public_rooms_filtered));
    }
    router
}

async fn profile(
    state: AppState,
    request: Ruma<get_profile_information::v1::Request>,
) -> Result<get_profile_information::v1::Response, MatrixError> {
    let body = request.body;
    let row = state.services.profiles.local_profile(&body.user_id).await?;
    let wanted = |name: &str| body.field.as_ref().is_none_or(|f| f.as_str() == name);
    let mut response = get_profile_information::v1::Response::new();
    if let Some(name) = row.displayname.filter(|_| wanted("displayname")) {
        response
            .data
            .set("displayname".to_owned(), Value::from(name));
    }
    if let Some(url) = row.avatar_url.filter(|_| wanted("avatar_url")) {
        response.data.set("avatar_url".to_owned(), Value::from(url));
    }
    Ok(response)
}

/// `GET /_matrix/federation/v1/query/directory`: the room one of this server's aliases names.
async fn room_information(
    state: AppState,
    request: Ruma<get_room_information::v1::Request>,
) -> Result<get_room_information::v1::Response, MatrixError> {
    let (room_id, servers) = state
        .services
        .directory
        .resolve(&request.body.room_alias)
        .await?;
    let room_id = ruma::OwnedRoomId::try_from(room_id.as_str())
        .map_err(|e| MatrixError::internal(format!("bad room id {room_id}: {e}")))?;
    Ok(get_room_information::v1::Response::new(room_id, servers))
}

/// `GET /_matrix/federation/v1/publicRooms`: this server's directory (a peer asks on behalf of
/// its users; it is never relayed further).
async fn public_rooms(
    State(state): State<AppState>,
    request: Ruma<get_public_rooms::v1::Request>,
) -> Result<Json<Value>, MatrixError> {
    let body = request.body;
    let page = state
        .services
        .directory
        .public_rooms(PublicRoomsQuery {
            limit: body.limit.map(page_limit),
            since: body.since,
            third_party: matches!(
                body.room_network,
                ruma::directory::RoomNetwork::ThirdParty(_)
            ),
            ..PublicRoomsQuery::default()
        })
        .await?;
    public_rooms_json(page)
}

/// `POST /_matrix/federation/v1/publicRooms`.
async fn public_rooms_filtered(
    State(state): State<AppState>,
    request: Ruma<get_public_rooms_filtered::v1::Request>,
) -> Result<Json<Value>, MatrixError> {
    let body = request.body;
    let page = state
        .services
        .directory
        .public_rooms(PublicRoomsQuery {
            limit: body.limit.map(page_limit),
            since: body.since,
            search_term: body.filter.generic_search_term,
            room_types: body.filter.room_types,
            third_party: matches!(
                body.room_network,
                ruma::directory::RoomNetwork::ThirdParty(_)
            ),
            ..PublicRoomsQuery::default()
        })
        .await?;
    public_rooms_json(page)
}

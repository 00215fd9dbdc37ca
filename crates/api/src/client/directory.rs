//! Room aliases and the room directory over the client API: create, resolve and delete aliases,
//! a room's aliases, a room's directory visibility, and `/publicRooms`. Each handler translates
//! and calls `myelin_service::directory`.

use axum::{
    Json, Router,
    extract::State,
    routing::{get, post},
};
use myelin_service::directory::{PublicRoomsPage, PublicRoomsQuery};
use ruma::{
    RoomAliasId, RoomId, UInt,
    api::{
        Metadata,
        client::{
            alias::{create_alias, delete_alias, get_alias},
            directory::{
                get_public_rooms, get_public_rooms_filtered, get_room_visibility,
                set_room_visibility,
            },
            room::{Visibility, aliases},
        },
        path_builder::PathBuilder,
    },
    directory::RoomNetwork,
};
use serde_json::{Value, json};

use crate::{AppState, MatrixError, Ruma, ruma_bridge::RumaRouterExt};

pub(crate) fn routes() -> Router<AppState> {
    Router::new()
        .ruma(create)
        .ruma(resolve)
        .ruma(delete)
        .ruma(room_aliases)
        .ruma(visibility)
        .ruma(set_visibility)
        .merge(public_rooms_routes())
}

/// `/publicRooms` is served outside the ruma bridge's response path (see [`page_json`]), with
/// the bridge's parsing and authentication, under every path ruma lists for it.
fn public_rooms_routes() -> Router<AppState> {
    let mut router = Router::new();
    for path in get_public_rooms::v3::Request::PATH_BUILDER.all_paths() {
        router = router.route(path, get(public_rooms));
    }
    for path in get_public_rooms_filtered::v3::Request::PATH_BUILDER.all_paths() {
        router = router.route(path, post(public_rooms_filtered));
    }
    router
}

async fn create(
    state: AppState,
    request: Ruma<create_alias::v3::Request>,
) -> Result<create_alias::v3::Response, MatrixError> {
    let body = request.body;
    state
        .services
        .directory
        .create_alias(&request.identity, &body.room_alias, &body.room_id)
        .await?;
    Ok(create_alias::v3::Response::new())
}

async fn resolve(
    state: AppState,
    request: Ruma<get_alias::v3::Request>,
) -> Result<get_alias::v3::Response, MatrixError> {
    let (room_id, servers) = state
        .services
        .resolve_alias(&request.body.room_alias)
        .await?;
    Ok(get_alias::v3::Response::new(room_id_of(&room_id)?, servers))
}

async fn delete(
    state: AppState,
    request: Ruma<delete_alias::v3::Request>,
) -> Result<delete_alias::v3::Response, MatrixError> {
    state
        .services
        .directory
        .delete_alias(
            &state.services.rooms,
            &request.identity,
            &request.body.room_alias,
        )
        .await?;
    Ok(delete_alias::v3::Response::new())
}

async fn room_aliases(
    state: AppState,
    request: Ruma<aliases::v3::Request>,
) -> Result<aliases::v3::Response, MatrixError> {
    let aliases = state
        .services
        .directory
        .room_aliases(&request.identity.user_id, &request.body.room_id)
        .await?
        .into_iter()
        // Stored aliases were valid when created; one that no longer parses is left out.
        .filter_map(|alias| RoomAliasId::parse(alias).ok())
        .collect();
    Ok(aliases::v3::Response::new(aliases))
}

async fn visibility(
    state: AppState,
    request: Ruma<get_room_visibility::v3::Request>,
) -> Result<get_room_visibility::v3::Response, MatrixError> {
    let public = state
        .services
        .directory
        .is_published(&request.body.room_id)
        .await?;
    Ok(get_room_visibility::v3::Response::new(if public {
        Visibility::Public
    } else {
        Visibility::Private
    }))
}

async fn set_visibility(
    state: AppState,
    request: Ruma<set_room_visibility::v3::Request>,
) -> Result<set_room_visibility::v3::Response, MatrixError> {
    let body = request.body;
    let public = match body.visibility {
        Visibility::Public => true,
        Visibility::Private => false,
        ref other => {
            return Err(myelin_service::Error::InvalidParam(format!(
                "Unknown visibility {:?}",
                other.as_str()
            ))
            .into());
        }
    };
    state
        .services
        .directory
        .set_published(&request.identity, &body.room_id, public)
        .await?;
    Ok(set_room_visibility::v3::Response::new())
}

/// `GET /publicRooms`.
async fn public_rooms(
    State(state): State<AppState>,
    request: Ruma<get_public_rooms::v3::Request>,
) -> Result<Json<Value>, MatrixError> {
    let body = request.body;
    let page = state
        .services
        .public_rooms(PublicRoomsQuery {
            server: body.server,
            limit: body.limit.map(limit_of),
            since: body.since,
            ..PublicRoomsQuery::default()
        })
        .await?;
    page_json(page)
}

/// `POST /publicRooms`.
async fn public_rooms_filtered(
    State(state): State<AppState>,
    request: Ruma<get_public_rooms_filtered::v3::Request>,
) -> Result<Json<Value>, MatrixError> {
    let body = request.body;
    let page = state
        .services
        .public_rooms(PublicRoomsQuery {
            server: body.server,
            limit: body.limit.map(limit_of),
            since: body.since,
            search_term: body.filter.generic_search_term,
            room_types: body.filter.room_types,
            third_party: matches!(body.room_network, RoomNetwork::ThirdParty(_)),
        })
        .await?;
    page_json(page)
}

/// A page size from the request (`UInt`), saturating.
pub(crate) fn limit_of(limit: UInt) -> usize {
    usize::try_from(u64::from(limit)).unwrap_or(usize::MAX)
}

/// The page as the spec's JSON. Written out here rather than by ruma's response type because ruma
/// leaves out `join_rule` when it is `public` (the spec's default), and clients and Complement
/// expect it on every entry.
pub(crate) fn page_json(page: PublicRoomsPage) -> Result<Json<Value>, MatrixError> {
    let mut chunk = Vec::with_capacity(page.chunk.len());
    for room in page.chunk {
        let join_rule = room.join_rule.as_str().to_owned();
        let mut entry =
            serde_json::to_value(&room).map_err(|e| MatrixError::internal(e.to_string()))?;
        entry["join_rule"] = Value::String(join_rule);
        chunk.push(entry);
    }
    let mut body = json!({
        "chunk": chunk,
        "total_room_count_estimate": page.total_room_count_estimate,
    });
    if let Some(next) = page.next_batch {
        body["next_batch"] = Value::String(next);
    }
    if let Some(prev) = page.prev_batch {
        body["prev_batch"] = Value::String(prev);
    }
    Ok(Json(body))
}

fn room_id_of(room_id: &str) -> Result<ruma::OwnedRoomId, MatrixError> {
    RoomId::parse(room_id).map_err(|e| MatrixError::internal(format!("bad room id {room_id}: {e}")))
}

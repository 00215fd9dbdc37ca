//! What other servers read of a room's events: `GET /_matrix/federation/v1/event/{eventId}`,
//! `/state/{roomId}`, `/state_ids/{roomId}`, `/event_auth/{roomId}/{eventId}`,
//! `/backfill/{roomId}` and `POST /get_missing_events/{roomId}`. The rules (room, server ACL,
//! membership, history visibility) are the service's (`rooms::federation_reads`); the asking
//! server is the request's verified X-Matrix origin.

use axum::Router;
use ruma::{
    MilliSecondsSinceUnixEpoch, OwnedEventId,
    api::federation::{
        authorization::get_event_authorization,
        backfill::get_backfill,
        event::{get_event, get_missing_events, get_room_state, get_room_state_ids},
    },
};

use myelin_service::rooms::MissingEventsQuery;

use crate::{AppState, MatrixError, Ruma, ruma_bridge::RumaRouterExt};

pub(crate) fn routes() -> Router<AppState> {
    Router::new()
        .ruma(event)
        .ruma(state)
        .ruma(state_ids)
        .ruma(event_auth)
        .ruma(missing_events)
        .ruma(backfill)
}

async fn event(
    state: AppState,
    request: Ruma<get_event::v1::Request>,
) -> Result<get_event::v1::Response, MatrixError> {
    let pdu = state
        .services
        .rooms
        .event_for_server(&request.identity.0, request.body.event_id.as_str())
        .await?;
    Ok(get_event::v1::Response::new(
        state.services.config.server_name.clone(),
        MilliSecondsSinceUnixEpoch::now(),
        pdu,
    ))
}

async fn state(
    state: AppState,
    request: Ruma<get_room_state::v1::Request>,
) -> Result<get_room_state::v1::Response, MatrixError> {
    let body = request.body;
    let served = state
        .services
        .rooms
        .state_for_server(
            &request.identity.0,
            body.room_id.as_str(),
            body.event_id.as_str(),
        )
        .await?;
    Ok(get_room_state::v1::Response::new(
        served.auth_chain,
        served.pdus,
    ))
}

async fn state_ids(
    state: AppState,
    request: Ruma<get_room_state_ids::v1::Request>,
) -> Result<get_room_state_ids::v1::Response, MatrixError> {
    let body = request.body;
    let served = state
        .services
        .rooms
        .state_ids_for_server(
            &request.identity.0,
            body.room_id.as_str(),
            body.event_id.as_str(),
        )
        .await?;
    Ok(get_room_state_ids::v1::Response::new(
        event_ids(served.auth_chain_ids)?,
        event_ids(served.pdu_ids)?,
    ))
}

async fn event_auth(
    state: AppState,
    request: Ruma<get_event_authorization::v1::Request>,
) -> Result<get_event_authorization::v1::Response, MatrixError> {
    let body = request.body;
    let chain = state
        .services
        .rooms
        .auth_chain_for_server(
            &request.identity.0,
            body.room_id.as_str(),
            body.event_id.as_str(),
        )
        .await?;
    Ok(get_event_authorization::v1::Response::new(chain))
}

async fn missing_events(
    state: AppState,
    request: Ruma<get_missing_events::v1::Request>,
) -> Result<get_missing_events::v1::Response, MatrixError> {
    let body = request.body;
    let query = MissingEventsQuery {
        earliest_events: body
            .earliest_events
            .iter()
            .map(ToString::to_string)
            .collect(),
        latest_events: body.latest_events.iter().map(ToString::to_string).collect(),
        limit: body.limit.into(),
        min_depth: body.min_depth.into(),
    };
    let events = state
        .services
        .rooms
        .missing_events_for_server(&request.identity.0, body.room_id.as_str(), &query)
        .await?;
    Ok(get_missing_events::v1::Response::new(events))
}

async fn backfill(
    state: AppState,
    request: Ruma<get_backfill::v1::Request>,
) -> Result<get_backfill::v1::Response, MatrixError> {
    let body = request.body;
    let from: Vec<String> = body.v.iter().map(ToString::to_string).collect();
    let pdus = state
        .services
        .rooms
        .backfill_for_server(
            &request.identity.0,
            body.room_id.as_str(),
            &from,
            body.limit.into(),
        )
        .await?;
    Ok(get_backfill::v1::Response::new(
        state.services.config.server_name.clone(),
        MilliSecondsSinceUnixEpoch::now(),
        pdus,
    ))
}

/// Stored event ids as ruma's type (they were checked when stored).
fn event_ids(ids: Vec<String>) -> Result<Vec<OwnedEventId>, MatrixError> {
    ids.into_iter()
        .map(|id| {
            OwnedEventId::try_from(id.as_str())
                .map_err(|e| MatrixError::internal(format!("stored event id {id}: {e}")))
        })
        .collect()
}

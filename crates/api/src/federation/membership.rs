//! The resident's side of other servers' membership handshakes:
//! `GET /_matrix/federation/v1/make_join/{roomId}/{userId}`, `PUT /v2/send_join/{roomId}/{eventId}`,
//! `GET /v1/make_leave/...`, `PUT /v2/send_leave/...`, `GET /v1/make_knock/...` and
//! `PUT /v1/send_knock/...`. The rules are the service's (`rooms::federation_membership`); the
//! asking server is the request's verified X-Matrix origin. The v1 `send_join`/`send_leave`
//! (removed from the spec by MSC4376) are not served.

use axum::{
    Router,
    response::{IntoResponse, Response},
};
use ruma::{
    RoomVersionId,
    api::federation::membership::{
        create_join_event, create_knock_event, create_leave_event, prepare_join_event,
        prepare_knock_event, prepare_leave_event,
    },
};
use serde_json::{Value, json, value::RawValue};

use myelin_service::rooms::{Handshake, MembershipTemplate, SentMembership};

use crate::{AppState, MatrixError, Ruma, ruma_bridge::RumaRouterExt};

pub(crate) fn routes() -> Router<AppState> {
    Router::new()
        .ruma(make_join)
        .ruma_raw::<create_join_event::v2::Request, _, _, _>(send_join)
        .ruma(make_leave)
        .ruma(send_leave)
        .ruma(make_knock)
        .ruma_raw::<create_knock_event::v1::Request, _, _, _>(send_knock)
}

fn versions(ver: &[RoomVersionId]) -> Vec<String> {
    ver.iter().map(ToString::to_string).collect()
}

fn template_parts(
    template: MembershipTemplate,
) -> Result<(RoomVersionId, Box<RawValue>), MatrixError> {
    let version = RoomVersionId::try_from(template.room_version.as_str())
        .map_err(|e| MatrixError::internal(format!("a stored room version: {e}")))?;
    Ok((version, template.event))
}

async fn make_join(
    state: AppState,
    request: Ruma<prepare_join_event::v1::Request>,
) -> Result<prepare_join_event::v1::Response, MatrixError> {
    let body = request.body;
    let template = state
        .services
        .rooms
        .make_membership(
            &request.identity.0,
            body.room_id.as_str(),
            &body.user_id,
            Handshake::Join,
            Some(&versions(&body.ver)),
        )
        .await?;
    let (version, event) = template_parts(template)?;
    let mut response = prepare_join_event::v1::Response::new(event);
    response.room_version = Some(version);
    Ok(response)
}

async fn send_join(
    state: AppState,
    request: Ruma<create_join_event::v2::Request>,
) -> Result<Response, MatrixError> {
    let body = request.body;
    let sent = state
        .services
        .send_membership(
            &request.identity.0,
            body.room_id.as_str(),
            body.event_id.as_str(),
            Handshake::Join,
            body.pdu.get().as_bytes(),
        )
        .await?;
    let SentMembership::Joined(answer) = sent else {
        return Err(MatrixError::internal("a join was not answered as one"));
    };
    // Built here rather than with ruma's `RoomState`, which has no `origin`.
    let mut json = json!({
        "origin": state.services.config.server_name.as_str(),
        "members_omitted": false,
        "state": answer.state,
        "auth_chain": answer.auth_chain,
    });
    if let Some(event) = answer.event {
        json["event"] = serde_json::to_value(event)
            .map_err(|e| MatrixError::internal(format!("a signed join: {e}")))?;
    }
    Ok(axum::Json(json).into_response())
}

async fn make_leave(
    state: AppState,
    request: Ruma<prepare_leave_event::v1::Request>,
) -> Result<prepare_leave_event::v1::Response, MatrixError> {
    let body = request.body;
    let template = state
        .services
        .rooms
        .make_membership(
            &request.identity.0,
            body.room_id.as_str(),
            &body.user_id,
            Handshake::Leave,
            None,
        )
        .await?;
    let (version, event) = template_parts(template)?;
    Ok(prepare_leave_event::v1::Response::new(Some(version), event))
}

async fn send_leave(
    state: AppState,
    request: Ruma<create_leave_event::v2::Request>,
) -> Result<create_leave_event::v2::Response, MatrixError> {
    let body = request.body;
    state
        .services
        .send_membership(
            &request.identity.0,
            body.room_id.as_str(),
            body.event_id.as_str(),
            Handshake::Leave,
            body.pdu.get().as_bytes(),
        )
        .await?;
    Ok(create_leave_event::v2::Response::new())
}

async fn make_knock(
    state: AppState,
    request: Ruma<prepare_knock_event::v1::Request>,
) -> Result<prepare_knock_event::v1::Response, MatrixError> {
    let body = request.body;
    let template = state
        .services
        .rooms
        .make_membership(
            &request.identity.0,
            body.room_id.as_str(),
            &body.user_id,
            Handshake::Knock,
            Some(&versions(&body.ver)),
        )
        .await?;
    let (version, event) = template_parts(template)?;
    Ok(prepare_knock_event::v1::Response::new(version, event))
}

async fn send_knock(
    state: AppState,
    request: Ruma<create_knock_event::v1::Request>,
) -> Result<Response, MatrixError> {
    let body = request.body;
    let sent = state
        .services
        .send_membership(
            &request.identity.0,
            body.room_id.as_str(),
            body.event_id.as_str(),
            Handshake::Knock,
            body.pdu.get().as_bytes(),
        )
        .await?;
    let SentMembership::Knocked(knock_room_state) = sent else {
        return Err(MatrixError::internal("a knock was not answered as one"));
    };
    Ok(axum::Json(json!({ "knock_room_state": Value::Array(knock_room_state) })).into_response())
}

//! Invites other servers send this one: `PUT
//! /_matrix/federation/v2/invite/{roomId}/{eventId}` (an invite of a local user). The checks and
//! the storing are the service's (`rooms::invites`); the inviting server is the request's
//! verified X-Matrix origin.

use axum::Router;
use ruma::api::federation::membership::{RawStrippedState, create_invite};

use myelin_service::rooms::InboundInvite;

use crate::{AppState, MatrixError, Ruma, ruma_bridge::RumaRouterExt};

pub(crate) fn routes() -> Router<AppState> {
    Router::new().ruma(invite)
}

async fn invite(
    state: AppState,
    request: Ruma<create_invite::v2::Request>,
) -> Result<create_invite::v2::Response, MatrixError> {
    let body = request.body;
    let event = state
        .services
        .rooms
        .receive_invite(
            &request.identity.0,
            InboundInvite {
                room_id: body.room_id.to_string(),
                event_id: body.event_id.to_string(),
                room_version: body.room_version.to_string(),
                event: body.event,
                invite_room_state: body
                    .invite_room_state
                    .into_iter()
                    .map(|event| match event {
                        RawStrippedState::Pdu(pdu) => pdu,
                        #[allow(deprecated)]
                        RawStrippedState::Stripped(stripped) => stripped.into_json(),
                        // A form ruma adds later: its JSON as it came.
                        #[allow(unreachable_patterns)]
                        other => serde_json::value::to_raw_value(&other)
                            .unwrap_or_else(|_| Box::<serde_json::value::RawValue>::default()),
                    })
                    .collect(),
            },
        )
        .await?;
    Ok(create_invite::v2::Response::new(event))
}

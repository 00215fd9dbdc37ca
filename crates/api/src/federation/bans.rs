//! `PUT /_matrix/federation/unstable/org.matrix.msc4243/ban/{roomId}/{eventId}` (MSC4243.md
//! §2.5 items 34–35): another server's pre-emptive ban of a local user in an account-key room,
//! answered with the user's key put in. The checks are the service's (`rooms::bans`); the
//! requesting server is the verified X-Matrix origin, and each one is held to
//! `rate_limits.federated_bans` before anything is looked at. Served only while
//! `experimental.msc4243` is on.

use axum::Router;
use myelin_service::{federation::msc4243::ban, rate_limit::RateKey, rooms::InboundBan};

use crate::{AppState, MatrixError, Ruma, ruma_bridge::RumaRouterExt};

pub(crate) fn routes() -> Router<AppState> {
    Router::new().ruma(receive_ban)
}

async fn receive_ban(
    state: AppState,
    request: Ruma<ban::Request>,
) -> Result<ban::Response, MatrixError> {
    if !state.services.account_keys.enabled() {
        return Err(MatrixError::unrecognized());
    }
    let origin = &request.identity.0;
    // Every attempt counts, refused ones too: a refusal also says whether an account exists.
    state
        .services
        .rate_limiter
        .check(RateKey::FederatedBan(origin.to_string()))?;
    let body = request.body;
    let event = state
        .services
        .rooms
        .receive_ban(
            origin,
            InboundBan {
                room_id: body.room_id.to_string(),
                event_id: body.event_id.to_string(),
                room_version: body.room_version.to_string(),
                event: body.event,
            },
        )
        .await?;
    Ok(ban::Response::new(event))
}

//! `/.well-known/matrix/{client,server}`: what the operator configured, or 404.

use axum::Router;
use ruma::api::{client, federation};

use crate::{AppState, MatrixError, Ruma, ruma_bridge::RumaRouterExt};

pub(crate) fn routes() -> Router<AppState> {
    Router::new()
        .ruma(client_well_known)
        .ruma(server_well_known)
}

async fn client_well_known(
    state: AppState,
    _: Ruma<client::discovery::discover_homeserver::Request>,
) -> Result<client::discovery::discover_homeserver::Response, MatrixError> {
    let base_url = state
        .services
        .config
        .well_known
        .client
        .clone()
        .ok_or_else(|| MatrixError::not_found("No client well-known is configured"))?;
    Ok(client::discovery::discover_homeserver::Response::new(
        client::discovery::discover_homeserver::HomeserverInfo::new(base_url),
    ))
}

async fn server_well_known(
    state: AppState,
    _: Ruma<federation::discovery::discover_homeserver::Request>,
) -> Result<federation::discovery::discover_homeserver::Response, MatrixError> {
    let server = state
        .services
        .config
        .well_known
        .server
        .clone()
        .ok_or_else(|| MatrixError::not_found("No server well-known is configured"))?;
    Ok(federation::discovery::discover_homeserver::Response::new(
        server,
    ))
}

//! `GET /_matrix/federation/v1/version` and `GET /_matrix/key/v2/server`.

use axum::Router;
use ruma::api::federation::discovery::{get_server_keys, get_server_version};

use crate::{AppState, MatrixError, Ruma, ruma_bridge::RumaRouterExt};

pub(crate) fn routes() -> Router<AppState> {
    Router::new().ruma(server_version).ruma(server_keys)
}

async fn server_version(
    _: AppState,
    _: Ruma<get_server_version::v1::Request>,
) -> Result<get_server_version::v1::Response, MatrixError> {
    let mut server = get_server_version::v1::Server::new();
    server.name = Some(myelin_service::SERVER_SOFTWARE.to_owned());
    server.version = Some(myelin_service::SERVER_VERSION.to_owned());
    let mut response = get_server_version::v1::Response::new();
    response.server = Some(server);
    Ok(response)
}

async fn server_keys(
    state: AppState,
    _: Ruma<get_server_keys::v2::Request>,
) -> Result<get_server_keys::v2::Response, MatrixError> {
    Ok(get_server_keys::v2::Response::new(
        state.services.server_keys.server_key_object(),
    ))
}

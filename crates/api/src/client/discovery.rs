//! `GET /_matrix/client/versions`.

use std::collections::BTreeMap;

use axum::Router;
use ruma::api::client::discovery::get_supported_versions;

use crate::{AppState, MatrixError, Ruma, ruma_bridge::RumaRouterExt};

/// The spec versions whose endpoints this server serves. A version is added here only once its
/// endpoints have landed, so clients never assume what is not there.
pub(crate) const SUPPORTED_SPEC_VERSIONS: &[&str] = &[];

pub(crate) fn routes() -> Router<AppState> {
    Router::new().ruma(versions)
}

async fn versions(
    _: AppState,
    _: Ruma<get_supported_versions::Request>,
) -> Result<get_supported_versions::Response, MatrixError> {
    let mut response = get_supported_versions::Response::new(
        SUPPORTED_SPEC_VERSIONS
            .iter()
            .map(|v| (*v).to_owned())
            .collect(),
    );
    response.unstable_features = BTreeMap::new();
    Ok(response)
}

//! `GET /_matrix/client/versions`.

use std::collections::BTreeMap;

use axum::Router;
use ruma::api::client::discovery::get_supported_versions;

use crate::{AppState, MatrixError, Ruma, ruma_bridge::RumaRouterExt};

/// The spec versions whose endpoint layout and room features this server follows: the `v3`
/// paths, knocking and restricted rooms (v1.2), threaded receipts (v1.4), `state_after` and the
/// rest of what the README's status table lists. Clients need at least one: matrix-sdk refuses
/// every `/v3` call against an empty list. Whole areas that are still missing (end-to-end
/// encryption keys, media) answer `M_UNRECOGNIZED`, which clients treat as "not offered"; the
/// README says which.
pub(crate) const SUPPORTED_SPEC_VERSIONS: &[&str] = &[
    "v1.1", "v1.2", "v1.3", "v1.4", "v1.5", "v1.6", "v1.7", "v1.8", "v1.9", "v1.10", "v1.11",
    "v1.12",
];

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
    // Dehydrated devices (`client/dehydrated.rs`), as Synapse names them.
    response.unstable_features = BTreeMap::from([("org.matrix.msc3814".to_owned(), true)]);
    Ok(response)
}

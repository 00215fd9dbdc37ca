//! The notary key API: `GET /_matrix/key/v2/query/{serverName}` and `POST /_matrix/key/v2/query`,
//! which hand out other servers' key objects (and this server's own) signed by this server too.

use axum::Router;
use ruma::api::federation::discovery::{get_remote_server_keys, get_remote_server_keys_batch};

use crate::{AppState, MatrixError, Ruma, ruma_bridge::RumaRouterExt};

pub(crate) fn routes() -> Router<AppState> {
    Router::new().ruma(query_one).ruma(query_batch)
}

fn millis(ts: ruma::MilliSecondsSinceUnixEpoch) -> i64 {
    i64::try_from(u64::from(ts.0)).unwrap_or(i64::MAX)
}

async fn query_one(
    state: AppState,
    request: Ruma<get_remote_server_keys::v2::Request>,
) -> Result<get_remote_server_keys::v2::Response, MatrixError> {
    let body = request.body;
    let keys = state
        .services
        .remote_keys
        .notarised(
            &body.server_name,
            &[],
            Some(millis(body.minimum_valid_until_ts)),
        )
        .await?;
    Ok(get_remote_server_keys::v2::Response::new(
        keys.into_iter().map(|raw| raw.cast_unchecked()).collect(),
    ))
}

/// Servers are answered one after the other; a server whose keys cannot be had adds nothing.
async fn query_batch(
    state: AppState,
    request: Ruma<get_remote_server_keys_batch::v2::Request>,
) -> Result<get_remote_server_keys_batch::v2::Response, MatrixError> {
    let mut out = Vec::new();
    for (server, criteria) in request.body.server_keys {
        let key_ids: Vec<String> = criteria.keys().map(ToString::to_string).collect();
        // The most demanding criterion of the keys asked for.
        let min_valid = criteria
            .values()
            .filter_map(|c| c.minimum_valid_until_ts)
            .map(millis)
            .max();
        let keys = state
            .services
            .remote_keys
            .notarised(&server, &key_ids, min_valid)
            .await?;
        out.extend(keys.into_iter().map(|raw| raw.cast_unchecked()));
    }
    Ok(get_remote_server_keys_batch::v2::Response::new(out))
}

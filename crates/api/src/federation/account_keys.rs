//! `POST /_matrix/federation/unstable/org.matrix.msc4243/query/accounts` (MSC4243.md §2.3,
//! §2.4): this server's signed answers for its users' account keys and its erasure log. The
//! rules are the service's (`AccountKeys::query_accounts`); served only while
//! `experimental.msc4243` is on.

use axum::Router;
use myelin_service::{account_keys::QueryAccounts, federation::msc4243::query_accounts};

use crate::{AppState, MatrixError, Ruma, ruma_bridge::RumaRouterExt};

pub(crate) fn routes() -> Router<AppState> {
    Router::new().ruma(accounts)
}

async fn accounts(
    state: AppState,
    request: Ruma<query_accounts::Request>,
) -> Result<query_accounts::Response, MatrixError> {
    let keys = &state.services.account_keys;
    if !keys.enabled() {
        return Err(MatrixError::unrecognized());
    }
    let body = request.body;
    let answer = keys
        .query_accounts(&QueryAccounts {
            account_keys: body.account_keys,
            erasure: body.erasure.map(|cursor| (cursor.id, cursor.limit)),
        })
        .await?;
    match answer {
        serde_json::Value::Object(body) => Ok(query_accounts::Response::new(body)),
        _ => Err(MatrixError::internal("the answer is not a JSON object")),
    }
}

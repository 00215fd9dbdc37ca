//! `GET /voip/turnServer`. No TURN server can be configured yet, so the answer is an empty
//! object, as Synapse gives when it has none (the spec's schema only covers a configured server;
//! clients treat a response without `uris` as "no TURN").

use axum::{Json, Router, extract::State, routing::get};
use ruma::api::{Metadata, client::voip::get_turn_server_info, path_builder::PathBuilder};
use serde_json::{Value, json};

use crate::{AppState, MatrixError, Ruma};

pub(crate) fn routes() -> Router<AppState> {
    let mut router = Router::new();
    for path in get_turn_server_info::v3::Request::PATH_BUILDER.all_paths() {
        router = router.route(path, get(turn_server));
    }
    router
}

async fn turn_server(
    State(_state): State<AppState>,
    _request: Ruma<get_turn_server_info::v3::Request>,
) -> Result<Json<Value>, MatrixError> {
    Ok(Json(json!({})))
}

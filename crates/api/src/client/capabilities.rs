//! `GET /capabilities`. Written as JSON rather than through ruma's type, which leaves out
//! capabilities that have their default value; clients and tests read them explicitly.

use axum::{Json, Router, extract::State, routing::get};
use ruma::api::{Metadata, client::discovery::get_capabilities, path_builder::PathBuilder};
use serde_json::{Value, json};

use crate::{AppState, MatrixError, Ruma};

pub(crate) fn routes() -> Router<AppState> {
    let mut router = Router::new();
    for path in get_capabilities::v3::Request::PATH_BUILDER.all_paths() {
        router = router.route(path, get(capabilities));
    }
    router
}

async fn capabilities(
    State(state): State<AppState>,
    _request: Ruma<get_capabilities::v3::Request>,
) -> Result<Json<Value>, MatrixError> {
    let (default, versions) = myelin_service::user_data::room_versions(
        state.services.rooms.default_room_version(),
        state.services.config.experimental.msc4243,
    );
    let available: serde_json::Map<String, Value> = versions
        .into_iter()
        .map(|(id, stable)| {
            let stability = if stable { "stable" } else { "unstable" };
            (id.to_owned(), Value::from(stability))
        })
        .collect();
    Ok(Json(json!({
        "capabilities": {
            "m.room_versions": { "default": default, "available": available },
            "m.change_password": { "enabled": true },
            "m.set_displayname": { "enabled": true },
            "m.set_avatar_url": { "enabled": true },
            "m.3pid_changes": { "enabled": false },
            "m.get_login_token": { "enabled": false },
            // MSC4155: this server enforces users' invite filters (`rooms::invite_filter`).
            "org.matrix.msc4155.invite_permission_config_enforced": { "enabled": true },
        }
    })))
}

//! Synapse-compatible admin endpoints that operator tools and Complement use. Today:
//! shared-secret registration (`/_synapse/admin/v1/register`).

use axum::{Json, Router, extract::State, routing::get};
use serde::Deserialize;
use serde_json::{Value, json};

use crate::{AppState, MatrixError};

pub(crate) fn routes() -> Router<AppState> {
    Router::new().route("/_synapse/admin/v1/register", get(nonce).post(register))
}

async fn nonce(State(state): State<AppState>) -> Result<Json<Value>, MatrixError> {
    let nonce = state.services.accounts.new_registration_nonce()?;
    Ok(Json(json!({ "nonce": nonce })))
}

#[derive(Debug, Deserialize)]
struct RegisterBody {
    nonce: String,
    username: String,
    password: String,
    #[serde(default)]
    admin: bool,
    mac: String,
}

async fn register(
    State(state): State<AppState>,
    body: axum::body::Bytes,
) -> Result<Json<Value>, MatrixError> {
    let body: RegisterBody = crate::json_body(&body)?;
    let accounts = &state.services.accounts;
    let registered = accounts
        .register_with_shared_secret(
            &body.nonce,
            &body.username,
            &body.password,
            body.admin,
            &body.mac,
        )
        .await?;
    let session = registered
        .session
        .ok_or_else(|| MatrixError::internal("registration did not log in"))?;
    Ok(Json(json!({
        "user_id": registered.user_id,
        "access_token": session.access_token,
        "device_id": session.device_id,
        "home_server": state.services.config.server_name,
    })))
}

//! `/profile/{userId}`, `/profile/{userId}/displayname`, `/profile/{userId}/avatar_url` for
//! local users, and for users of other servers through their server (`/query/profile`).

use axum::Router;
use ruma::{
    OwnedMxcUri,
    api::client::profile::{
        get_avatar_url, get_display_name, get_profile, set_avatar_url, set_display_name,
    },
};
use serde_json::Value;

use crate::{AppState, MatrixError, Ruma, ruma_bridge::RumaRouterExt};

pub(crate) fn routes() -> Router<AppState> {
    Router::new()
        .ruma(profile)
        .ruma(displayname)
        .ruma(set_displayname)
        .ruma(avatar_url)
        .ruma(set_avatar)
}

async fn profile(
    state: AppState,
    request: Ruma<get_profile::v3::Request>,
) -> Result<get_profile::v3::Response, MatrixError> {
    let row = state
        .services
        .profiles
        .profile(&request.body.user_id)
        .await?;
    let mut response = get_profile::v3::Response::new();
    if let Some(name) = row.displayname {
        response
            .data
            .set("displayname".to_owned(), Value::from(name));
    }
    if let Some(url) = row.avatar_url {
        response.data.set("avatar_url".to_owned(), Value::from(url));
    }
    Ok(response)
}

#[allow(deprecated)] // the field-specific endpoints are still what most clients call
async fn displayname(
    state: AppState,
    request: Ruma<get_display_name::v3::Request>,
) -> Result<get_display_name::v3::Response, MatrixError> {
    let row = state
        .services
        .profiles
        .profile(&request.body.user_id)
        .await?;
    Ok(get_display_name::v3::Response::new(row.displayname))
}

#[allow(deprecated)]
async fn avatar_url(
    state: AppState,
    request: Ruma<get_avatar_url::v3::Request>,
) -> Result<get_avatar_url::v3::Response, MatrixError> {
    let row = state
        .services
        .profiles
        .profile(&request.body.user_id)
        .await?;
    Ok(get_avatar_url::v3::Response::new(
        row.avatar_url.map(OwnedMxcUri::from),
    ))
}

// After each change a new `m.room.member` event, carrying the new profile, goes into every room
// the user has joined (journaled: finished after a crash).
async fn set_displayname(
    state: AppState,
    request: Ruma<set_display_name::v3::Request>,
) -> Result<set_display_name::v3::Response, MatrixError> {
    let body = request.body;
    state
        .services
        .set_displayname(
            &request.identity,
            &body.user_id,
            body.displayname.as_deref(),
        )
        .await?;
    Ok(set_display_name::v3::Response::new())
}

async fn set_avatar(
    state: AppState,
    request: Ruma<set_avatar_url::v3::Request>,
) -> Result<set_avatar_url::v3::Response, MatrixError> {
    let body = request.body;
    state
        .services
        .set_avatar_url(
            &request.identity,
            &body.user_id,
            body.avatar_url.as_ref().map(|url| url.as_str()),
        )
        .await?;
    Ok(set_avatar_url::v3::Response::new())
}

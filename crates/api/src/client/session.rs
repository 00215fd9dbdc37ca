//! Login flows, password login, logout, logout everywhere, token refresh.

use axum::Router;
use ruma::api::client::{
    session::{get_login_types, login, logout, logout_all, refresh_token},
    uiaa::UserIdentifier,
};

use crate::{AppState, MatrixError, Ruma, ruma_bridge::RumaRouterExt};

pub(crate) fn routes() -> Router<AppState> {
    Router::new()
        .ruma(login_types)
        .ruma(login)
        .ruma(logout)
        .ruma(logout_all)
        .ruma(refresh)
}

async fn login_types(
    _: AppState,
    _: Ruma<get_login_types::v3::Request>,
) -> Result<get_login_types::v3::Response, MatrixError> {
    Ok(get_login_types::v3::Response::new(vec![
        get_login_types::v3::LoginType::Password(Default::default()),
    ]))
}

async fn login(
    state: AppState,
    request: Ruma<login::v3::Request>,
) -> Result<login::v3::Response, MatrixError> {
    let body = request.body;
    let login::v3::LoginInfo::Password(password) = &body.login_info else {
        return Err(MatrixError::new(
            http::StatusCode::BAD_REQUEST,
            ruma::api::error::ErrorKind::Unknown,
            "Unsupported login type",
        ));
    };
    // `identifier` (m.id.user) or the deprecated top-level `user`, which older clients still send.
    #[allow(deprecated)]
    let user = match (&password.identifier, &password.user) {
        (Some(UserIdentifier::Matrix(id)), _) => id.user.clone(),
        (None, Some(user)) => user.clone(),
        _ => {
            return Err(MatrixError::new(
                http::StatusCode::BAD_REQUEST,
                ruma::api::error::ErrorKind::Unknown,
                "Only m.id.user identifiers are supported",
            ));
        }
    };
    let session = state
        .services
        .accounts
        .login_with_password(
            &user,
            &password.password,
            body.device_id.as_ref().map(|d| d.as_str()),
            body.initial_device_display_name.as_deref(),
            body.refresh_token,
        )
        .await?;
    let mut response =
        login::v3::Response::new(session.user_id, session.access_token, session.device_id);
    response.refresh_token = session.refresh_token;
    response.expires_in = session.expires_in;
    // Deprecated, but older clients still read it.
    #[allow(deprecated)]
    {
        response.home_server = Some(state.services.config.server_name.clone());
    }
    Ok(response)
}

async fn logout(
    state: AppState,
    request: Ruma<logout::v3::Request>,
) -> Result<logout::v3::Response, MatrixError> {
    state.services.accounts.logout(&request.identity).await?;
    Ok(logout::v3::Response::new())
}

async fn logout_all(
    state: AppState,
    request: Ruma<logout_all::v3::Request>,
) -> Result<logout_all::v3::Response, MatrixError> {
    state
        .services
        .accounts
        .logout_all(&request.identity)
        .await?;
    Ok(logout_all::v3::Response::new())
}

async fn refresh(
    state: AppState,
    request: Ruma<refresh_token::v3::Request>,
) -> Result<refresh_token::v3::Response, MatrixError> {
    let session = state
        .services
        .accounts
        .refresh(&request.body.refresh_token)
        .await?;
    let mut response = refresh_token::v3::Response::new(session.access_token);
    response.refresh_token = session.refresh_token;
    response.expires_in_ms = session.expires_in;
    Ok(response)
}

//! Registration, username availability, whoami, password change, deactivation and the (empty)
//! third-party identifier list.

use axum::Router;
use myelin_service::accounts::RegistrationRequest;
use ruma::api::client::account::{
    ThirdPartyIdRemovalStatus, change_password, check_registration_token_validity, deactivate,
    get_3pids, get_username_availability, register, whoami,
};

use crate::{AppState, MatrixError, Ruma, ruma_bridge::RumaRouterExt};

use super::uia::submission;

pub(crate) fn routes() -> Router<AppState> {
    Router::new()
        .ruma(register)
        .ruma(username_available)
        .ruma(registration_token_validity)
        .ruma(whoami)
        .ruma(change_password)
        .ruma(deactivate)
        .ruma(threepids)
}

async fn register(
    state: AppState,
    request: Ruma<register::v3::Request>,
) -> Result<register::v3::Response, MatrixError> {
    let body = request.body;
    if body.kind == register::RegistrationKind::Guest {
        return Err(MatrixError::from(myelin_service::Error::Forbidden(
            "Guest access is not supported".to_owned(),
        )));
    }
    let (session, auth) = submission(body.auth.as_ref());
    let registered = state
        .services
        .accounts
        .register_with_uia(
            RegistrationRequest {
                username: body.username,
                password: body.password,
                device_id: body.device_id.map(|d| d.to_string()),
                initial_device_display_name: body.initial_device_display_name,
                inhibit_login: body.inhibit_login,
                refresh_token: body.refresh_token,
                admin: false,
            },
            session.as_deref(),
            auth,
            request.client_address,
        )
        .await?;
    let mut response = register::v3::Response::new(registered.user_id);
    if let Some(session) = registered.session {
        response.access_token = Some(session.access_token);
        response.device_id = Some(session.device_id);
        response.refresh_token = session.refresh_token;
        response.expires_in = session.expires_in;
    }
    Ok(response)
}

async fn username_available(
    state: AppState,
    request: Ruma<get_username_availability::v3::Request>,
) -> Result<get_username_availability::v3::Response, MatrixError> {
    state
        .services
        .accounts
        .username_available(&request.body.username)
        .await?;
    Ok(get_username_availability::v3::Response::new(true))
}

async fn registration_token_validity(
    state: AppState,
    request: Ruma<check_registration_token_validity::v1::Request>,
) -> Result<check_registration_token_validity::v1::Response, MatrixError> {
    let valid = state
        .services
        .accounts
        .registration_token_valid(&request.body.token);
    Ok(check_registration_token_validity::v1::Response::new(valid))
}

async fn whoami(
    _: AppState,
    request: Ruma<whoami::v3::Request>,
) -> Result<whoami::v3::Response, MatrixError> {
    let user = request.identity;
    let mut response = whoami::v3::Response::new(user.user_id, false);
    response.device_id = Some(user.device_id);
    Ok(response)
}

async fn change_password(
    state: AppState,
    request: Ruma<change_password::v3::Request>,
) -> Result<change_password::v3::Response, MatrixError> {
    // Optional in the spec for email-based resets, which Myelin does not offer.
    let user = request
        .identity
        .ok_or(myelin_service::Error::MissingToken)?;
    let body = request.body;
    let (session, auth) = submission(body.auth.as_ref());
    let accounts = &state.services.accounts;
    accounts
        .password_uia(
            "change_password",
            &user,
            session.as_deref(),
            auth,
            request.client_address,
        )
        .await?;
    accounts
        .change_password(&user, &body.new_password, body.logout_devices)
        .await?;
    Ok(change_password::v3::Response::new())
}

async fn deactivate(
    state: AppState,
    request: Ruma<deactivate::v3::Request>,
) -> Result<deactivate::v3::Response, MatrixError> {
    let user = request
        .identity
        .ok_or(myelin_service::Error::MissingToken)?;
    let (session, auth) = submission(request.body.auth.as_ref());
    let accounts = &state.services.accounts;
    accounts
        .password_uia(
            "deactivate",
            &user,
            session.as_deref(),
            auth,
            request.client_address,
        )
        .await?;
    // Logins end first, so nothing can rejoin while the rooms are being left.
    state
        .services
        .deactivate_account(&user, request.body.erase)
        .await?;
    Ok(deactivate::v3::Response::new(
        ThirdPartyIdRemovalStatus::NoSupport,
    ))
}

/// Myelin keeps no third-party identifiers; the list is always empty.
async fn threepids(
    _: AppState,
    _: Ruma<get_3pids::v3::Request>,
) -> Result<get_3pids::v3::Response, MatrixError> {
    Ok(get_3pids::v3::Response::new(Vec::new()))
}

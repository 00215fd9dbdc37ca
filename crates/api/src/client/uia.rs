//! Turning a ruma `auth` dict into what the service layer's UIA checks.

use myelin_service::accounts::AuthSubmission;
use ruma::api::client::uiaa::{AuthData, UserIdentifier};

/// The submitted stage and the session it continues.
pub(crate) fn submission(auth: Option<&AuthData>) -> (Option<String>, Option<AuthSubmission>) {
    let Some(auth) = auth else {
        return (None, None);
    };
    let session = auth.session().map(str::to_owned);
    let submission = match auth {
        AuthData::Dummy(_) => AuthSubmission::Dummy,
        AuthData::Password(password) => AuthSubmission::Password {
            user: match &password.identifier {
                UserIdentifier::Matrix(id) => Some(id.user.clone()),
                _ => None,
            },
            password: password.password.clone(),
        },
        AuthData::RegistrationToken(token) => {
            AuthSubmission::RegistrationToken(token.token.clone())
        }
        // A bare `{"session": ...}` dict asks for the current state of the flow.
        AuthData::FallbackAcknowledgement(_) => return (session, None),
        other => {
            AuthSubmission::Other(other.auth_type().map(|t| t.to_string()).unwrap_or_default())
        }
    };
    (session, Some(submission))
}

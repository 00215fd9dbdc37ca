//! What both flows (src/main.rs and src/bin/e2ee.rs) do the same way: registering a user.

use anyhow::{Context, Result, anyhow, ensure};
use matrix_sdk::Client;
use matrix_sdk::ruma::api::client::account::register::v3::Request as RegisterRequest;
use matrix_sdk::ruma::api::client::uiaa::{AuthData, Dummy};

/// Registers `localpart` with `m.login.dummy`, following the user-interactive authentication
/// flow if the server asks for a session first. The registering client is thrown away (no
/// login): each flow logs in with the password afterwards.
pub async fn register(url: &str, localpart: &str, password: &str) -> Result<()> {
    let client = Client::builder().homeserver_url(url).build().await.context("building the registering client")?;
    let request = |session: Option<String>| {
        let mut request = RegisterRequest::new();
        request.username = Some(localpart.to_owned());
        request.password = Some(password.to_owned());
        request.inhibit_login = true;
        let mut dummy = Dummy::new();
        dummy.session = session;
        request.auth = Some(AuthData::Dummy(dummy));
        request
    };
    match client.matrix_auth().register(request(None)).await {
        Ok(_) => Ok(()),
        Err(error) => {
            let Some(info) = error.as_uiaa_response() else {
                return Err(anyhow!(error)).with_context(|| format!("POST /register for {localpart}"));
            };
            let session = info.session.clone();
            ensure!(session.is_some(), "POST /register for {localpart}: a 401 without a session: {info:?}");
            client
                .matrix_auth()
                .register(request(session))
                .await
                .with_context(|| format!("POST /register for {localpart} with the UIA session"))?;
            Ok(())
        }
    }
}

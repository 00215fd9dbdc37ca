//! Local accounts and their sessions: registration (open, token-gated, shared-secret, CLI),
//! password login, access and refresh tokens, devices, password change and deactivation.

use std::{
    collections::HashMap,
    sync::Mutex,
    time::{Duration, Instant},
};

use hmac::{Hmac, Mac};
use myelin_store::{
    AccessTokenRow, DeviceRow, NewOperation, NewSession, SessionRefused, Store, UserRow,
};
use ruma::{OwnedServerName, UserId};

use crate::{
    Error, Result,
    config::{PasswordConfig, RegistrationConfig, SessionConfig},
    now_millis, passwords, tokens,
    uia::{Credential, PasswordFailures, Stage, UiaSessions},
};

/// Shared-secret registration nonces are single-use and expire after this long.
const NONCE_LIFETIME: Duration = Duration::from_secs(60);
/// At most this many live nonces: anyone may ask for one, so the map is bounded (the oldest is
/// dropped for a new one; an operator whose nonce went asks again).
pub const MAX_LIVE_NONCES: usize = 1_000;
const DEVICE_ID_ALPHABET: &[u8] = b"ABCDEFGHIJKLMNOPQRSTUVWXYZ";
const LOCALPART_ALPHABET: &[u8] = b"abcdefghijklmnopqrstuvwxyz0123456789";

/// Who an access token authenticates.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct AuthedUser {
    pub user_id: ruma::OwnedUserId,
    pub device_id: ruma::OwnedDeviceId,
    pub is_admin: bool,
    /// The token's hash, so logout can delete exactly it.
    pub token_hash: Vec<u8>,
}

/// A logged-in session handed to the client.
#[derive(Debug, Clone)]
pub struct Session {
    pub user_id: ruma::OwnedUserId,
    pub device_id: ruma::OwnedDeviceId,
    pub access_token: String,
    pub refresh_token: Option<String>,
    pub expires_in: Option<Duration>,
}

/// What a registration produced: the user, and a session unless login was inhibited.
#[derive(Debug, Clone)]
pub struct Registered {
    pub user_id: ruma::OwnedUserId,
    pub session: Option<Session>,
}

/// A registration request, as the client API or an operator tool makes it.
#[derive(Debug, Clone, Default)]
pub struct RegistrationRequest {
    pub username: Option<String>,
    pub password: Option<String>,
    pub device_id: Option<String>,
    pub initial_device_display_name: Option<String>,
    pub inhibit_login: bool,
    pub refresh_token: bool,
    pub admin: bool,
}

/// What the client put in a UIA `auth` dict, before checking.
#[derive(Debug, Clone)]
pub enum AuthSubmission {
    Dummy,
    Password {
        user: Option<String>,
        password: String,
    },
    RegistrationToken(String),
    Other(String),
}

/// The accounts area.
#[derive(Debug)]
pub struct Accounts {
    store: Store,
    account_keys: std::sync::Arc<crate::account_keys::AccountKeys>,
    server_name: OwnedServerName,
    registration: RegistrationConfig,
    passwords: PasswordConfig,
    sessions: SessionConfig,
    uia: UiaSessions,
    /// Wrong passwords given in UIA, per user (see [`PasswordFailures`]).
    password_failures: PasswordFailures,
    nonces: Mutex<HashMap<String, Instant>>,
    /// A hash of a password nobody knows, at the configured cost: checked when the user does
    /// not exist, so a login for a missing user takes as long as one with a wrong password.
    dummy_hash: tokio::sync::OnceCell<String>,
    /// Wakes syncs when devices go: their device-list change is news to room mates.
    notify: crate::notifier::Notifier,
}

impl Accounts {
    pub fn new(
        store: Store,
        server_name: OwnedServerName,
        registration: RegistrationConfig,
        passwords: PasswordConfig,
        sessions: SessionConfig,
        notify: crate::notifier::Notifier,
        account_keys: std::sync::Arc<crate::account_keys::AccountKeys>,
    ) -> Self {
        Accounts {
            account_keys,
            notify,
            store,
            server_name,
            registration,
            passwords,
            sessions,
            uia: UiaSessions::default(),
            password_failures: PasswordFailures::default(),
            nonces: Mutex::new(HashMap::new()),
            dummy_hash: tokio::sync::OnceCell::new(),
        }
    }

    fn user_id(&self, localpart: &str) -> Result<ruma::OwnedUserId> {
        UserId::parse(format!("@{localpart}:{}", self.server_name))
            .map_err(|e| Error::InvalidUsername(format!("Invalid user ID: {e}")))
    }

    /// Checks a requested localpart against the spec's grammar and Myelin's reserved names.
    pub fn validate_localpart(&self, localpart: &str) -> Result<()> {
        if localpart.is_empty() {
            return Err(Error::InvalidUsername("User ID cannot be empty".to_owned()));
        }
        if !localpart.bytes().all(
            |b| matches!(b, b'a'..=b'z' | b'0'..=b'9' | b'.' | b'_' | b'=' | b'-' | b'/' | b'+'),
        ) {
            return Err(Error::InvalidUsername(
                "User ID can only contain characters a-z, 0-9, or '=_-./+'".to_owned(),
            ));
        }
        // Localparts of this length from the key alphabet would read as account keys in
        // account-key rooms (MSC4243): reserved.
        if myelin_room_version::account_key::looks_like_account_key(localpart) {
            return Err(Error::InvalidUsername(
                "User ID has the shape of an account key, which is reserved".to_owned(),
            ));
        }
        if format!("@{localpart}:{}", self.server_name).len() > 255 {
            return Err(Error::InvalidUsername(
                "User ID is longer than 255 bytes".to_owned(),
            ));
        }
        Ok(())
    }

    /// `GET /register/available`.
    pub async fn username_available(&self, localpart: &str) -> Result<()> {
        self.validate_localpart(localpart)?;
        match self.store.user_by_localpart(localpart).await? {
            Some(_) => Err(Error::UserInUse),
            None => Ok(()),
        }
    }

    /// The flows `/register` offers.
    pub fn registration_flows(&self) -> Vec<Vec<Stage>> {
        if self.registration.tokens.is_empty() {
            vec![vec![Stage::Dummy]]
        } else {
            vec![vec![Stage::RegistrationToken]]
        }
    }

    /// Whether a registration token is one the operator configured.
    pub fn registration_token_valid(&self, token: &str) -> bool {
        // In constant time: the SHA-256 of each side compared without an early exit, and every
        // configured token looked at, so the time taken says nothing about how much of a
        // guess was right (or its length).
        use sha2::{Digest, Sha256};
        let given = Sha256::digest(token.as_bytes());
        let mut found = 0u8;
        for configured in &self.registration.tokens {
            let expected = Sha256::digest(configured.as_bytes());
            let diff = given
                .iter()
                .zip(expected.iter())
                .fold(0u8, |acc, (a, b)| acc | (a ^ b));
            found |= u8::from(std::hint::black_box(diff) == 0);
        }
        found == 1
    }

    /// `POST /register` from a client: open registration with UIA.
    pub async fn register_with_uia(
        &self,
        request: RegistrationRequest,
        session: Option<&str>,
        auth: Option<AuthSubmission>,
        address: std::net::IpAddr,
    ) -> Result<Registered> {
        if !self.registration.enabled {
            return Err(Error::Forbidden(
                "Registration has been disabled".to_owned(),
            ));
        }
        // User IDs are case-insensitive on input: `Alice` registers `@alice`, as elsewhere.
        let request = RegistrationRequest {
            username: request.username.map(|u| u.to_lowercase()),
            ..request
        };
        // Name problems come before UIA, so a client does not complete a flow in vain.
        if let Some(username) = &request.username {
            self.username_available(username).await?;
        }
        let credential = auth.map(|auth| match auth {
            AuthSubmission::Dummy => Credential::Completed(Stage::Dummy),
            AuthSubmission::RegistrationToken(token) if self.registration_token_valid(&token) => {
                Credential::Completed(Stage::RegistrationToken)
            }
            AuthSubmission::RegistrationToken(_) => Credential::Failed {
                stage: Stage::RegistrationToken,
                message: "Invalid registration token".to_owned(),
            },
            AuthSubmission::Password { .. } => {
                Credential::Unsupported(Stage::Password.as_str().to_owned())
            }
            AuthSubmission::Other(kind) => Credential::Unsupported(kind),
        });
        self.uia.check(
            "register",
            &self.registration_flows(),
            session,
            credential,
            address,
        )?;
        self.register(RegistrationRequest {
            admin: false,
            ..request
        })
        .await
    }

    /// Creates an account with no UIA: the CLI, the shared-secret endpoint, and
    /// [`Accounts::register_with_uia`] once its flow is complete.
    pub async fn register(&self, request: RegistrationRequest) -> Result<Registered> {
        let localpart = match request.username {
            Some(username) => {
                self.validate_localpart(&username)?;
                username
            }
            None => format!("u{}", tokens::random_from(LOCALPART_ALPHABET, 11)),
        };
        let user_id = self.user_id(&localpart)?;
        let password_hash = match &request.password {
            Some(password) => Some(passwords::hash(&self.passwords, password).await?),
            None => None,
        };
        let row = UserRow {
            user_id: user_id.to_string(),
            localpart,
            password_hash,
            is_admin: request.admin,
            created_ts: now_millis(),
            deactivated_ts: None,
        };
        self.store
            .create_user(&row)
            .await
            .map_err(|err| match err {
                myelin_store::StoreError::Conflict(_) => Error::UserInUse,
                other => other.into(),
            })?;
        self.store
            .create_profile(&row.user_id, &row.localpart)
            .await?;
        // The account key is made with the account (MSC4243.md §2.1 item 5); if this fails the
        // account still works and gets its key on first use in an account-key room.
        if let Err(err) = self.account_keys.local_user_id(&row.localpart).await {
            tracing::warn!(%user_id, %err, "could not create the account key at registration");
        }
        tracing::info!(%user_id, admin = request.admin, "registered a user");
        let session = if request.inhibit_login {
            None
        } else {
            Some(
                self.create_session(
                    &user_id,
                    request.device_id.as_deref(),
                    request.initial_device_display_name.as_deref(),
                    request.refresh_token,
                )
                .await?,
            )
        };
        Ok(Registered { user_id, session })
    }

    async fn create_session(
        &self,
        user_id: &UserId,
        device_id: Option<&str>,
        display_name: Option<&str>,
        refreshable: bool,
    ) -> Result<Session> {
        let device_id = match device_id {
            Some(id) if !id.is_empty() && id.len() <= 255 => id.to_owned(),
            Some(_) => return Err(Error::InvalidParam("Invalid device ID".to_owned())),
            None => tokens::random_from(DEVICE_ID_ALPHABET, 10),
        };
        let access_token = tokens::generate("myl");
        let refresh_token = refreshable.then(|| tokens::generate("mylr"));
        let now = now_millis();
        let lifetime = Duration::from_secs(self.sessions.refreshable_access_token_lifetime_secs);
        let expires_ts =
            refreshable.then(|| now + i64::try_from(lifetime.as_millis()).unwrap_or(i64::MAX));
        let access_hash = tokens::hash(&access_token);
        let refresh_hash = refresh_token.as_deref().map(tokens::hash);
        let created = self
            .store
            .create_session(&NewSession {
                user_id: user_id.as_str(),
                device_id: &device_id,
                display_name,
                access_token_hash: &access_hash,
                expires_ts,
                refresh_token_hash: refresh_hash.as_deref(),
                now,
            })
            .await?;
        if let Err(SessionRefused::DehydratedDevice) = created {
            // MSC3814: a dehydrated device is rehydrated by a client's own device, never
            // logged in to.
            return Err(Error::Forbidden(format!(
                "{device_id} is a dehydrated device; log in with another device ID"
            )));
        }
        Ok(Session {
            user_id: user_id.to_owned(),
            device_id: device_id.into(),
            access_token,
            refresh_token,
            expires_in: refreshable.then_some(lifetime),
        })
    }

    /// Resolves a login identifier (localpart or full user ID) to a local localpart.
    fn local_localpart(&self, user: &str) -> Result<String> {
        if user.starts_with('@') {
            let user_id = UserId::parse(user)
                .map_err(|_| Error::Forbidden("Invalid username or password".to_owned()))?;
            if user_id.server_name() != self.server_name {
                return Err(Error::Forbidden("Invalid username or password".to_owned()));
            }
            Ok(user_id.localpart().to_ascii_lowercase())
        } else {
            Ok(user.to_ascii_lowercase())
        }
    }

    /// Checks a password for a local user; returns the account if it matches.
    async fn check_password(&self, user: &str, password: &str) -> Result<UserRow> {
        let localpart = self.local_localpart(user)?;
        let account = self.store.user_by_localpart(&localpart).await?;
        let hash = account.as_ref().and_then(|a| a.password_hash.clone());
        let checked_hash = match &hash {
            Some(hash) => hash.clone(),
            None => self
                .dummy_hash
                .get_or_try_init(|| async {
                    passwords::hash(&self.passwords, &tokens::generate("dummy")).await
                })
                .await?
                .clone(),
        };
        let matches = passwords::verify(&checked_hash, password).await;
        match account {
            Some(account) if account.deactivated_ts.is_some() => Err(Error::UserDeactivated(
                "This account has been deactivated".to_owned(),
            )),
            Some(account) if matches && hash.is_some() => Ok(account),
            _ => Err(Error::Forbidden("Invalid username or password".to_owned())),
        }
    }

    /// `POST /login` with `m.login.password`.
    pub async fn login_with_password(
        &self,
        user: &str,
        password: &str,
        device_id: Option<&str>,
        initial_device_display_name: Option<&str>,
        refresh_token: bool,
    ) -> Result<Session> {
        let account = self.check_password(user, password).await?;
        let user_id = self.user_id(&account.localpart)?;
        self.create_session(
            &user_id,
            device_id,
            initial_device_display_name,
            refresh_token,
        )
        .await
    }

    /// Checks an access token. Expired tokens are a soft logout (the client may refresh).
    pub async fn authenticate(&self, token: &str) -> Result<AuthedUser> {
        let token_hash = tokens::hash(token);
        let Some(row) = self.store.access_token(&token_hash).await? else {
            return Err(Error::UnknownToken { soft_logout: false });
        };
        let AccessTokenRow {
            user_id,
            device_id,
            expires_ts,
            is_admin,
            deactivated,
        } = row;
        if deactivated {
            return Err(Error::UnknownToken { soft_logout: false });
        }
        if expires_ts.is_some_and(|expires| expires <= now_millis()) {
            return Err(Error::UnknownToken { soft_logout: true });
        }
        Ok(AuthedUser {
            user_id: UserId::parse(user_id).map_err(|e| Error::Internal(e.to_string()))?,
            device_id: device_id.into(),
            is_admin,
            token_hash,
        })
    }

    /// `POST /refresh`: rotates the refresh token and issues a new access token.
    pub async fn refresh(&self, refresh_token: &str) -> Result<Session> {
        let access_token = tokens::generate("myl");
        let new_refresh = tokens::generate("mylr");
        let now = now_millis();
        let lifetime = Duration::from_secs(self.sessions.refreshable_access_token_lifetime_secs);
        let expires_ts = now + i64::try_from(lifetime.as_millis()).unwrap_or(i64::MAX);
        let owner = self
            .store
            .rotate_refresh_token(
                &tokens::hash(refresh_token),
                &tokens::hash(&access_token),
                Some(expires_ts),
                &tokens::hash(&new_refresh),
                now,
            )
            .await?;
        let Some((user_id, device_id)) = owner else {
            return Err(Error::UnknownToken { soft_logout: false });
        };
        Ok(Session {
            user_id: UserId::parse(user_id).map_err(|e| Error::Internal(e.to_string()))?,
            device_id: device_id.into(),
            access_token,
            refresh_token: Some(new_refresh),
            expires_in: Some(lifetime),
        })
    }

    /// `POST /logout`: ends this session and deletes its device.
    pub async fn logout(&self, user: &AuthedUser) -> Result<()> {
        self.store
            .delete_device(user.user_id.as_str(), user.device_id.as_str())
            .await?;
        self.notify.notify();
        Ok(())
    }

    /// `POST /logout/all`: ends every session of the user and deletes all its devices.
    pub async fn logout_all(&self, user: &AuthedUser) -> Result<()> {
        self.store
            .delete_all_devices(user.user_id.as_str(), None)
            .await?;
        self.notify.notify();
        Ok(())
    }

    /// `POST /users/{userId}/report`: a local user who exists, or any remote user (whom this
    /// server cannot check); `M_NOT_FOUND` for an unknown local user.
    pub async fn report_user(&self, reporter: &UserId, user: &UserId, reason: &str) -> Result<()> {
        crate::rooms::check_report_reason(Some(reason))?;
        if user.server_name() == self.server_name
            && self
                .store
                .user_by_localpart(user.localpart())
                .await?
                .is_none()
        {
            return Err(Error::NotFound("User not found".to_owned()));
        }
        self.store
            .add_report(&myelin_store::NewReport {
                reporter: reporter.as_str(),
                room_id: None,
                event_id: None,
                user_id: Some(user.as_str()),
                reason: Some(reason),
                received_ts: now_millis(),
            })
            .await?;
        tracing::info!(%reporter, reported = %user, "user reported");
        Ok(())
    }

    /// One round of password UIA for a sensitive operation by `user`, from a client at
    /// `address`. Past [`crate::uia::MAX_PASSWORD_FAILURES`] wrong passwords within a minute a
    /// password is not even checked: 429 `M_LIMIT_EXCEEDED`.
    pub async fn password_uia(
        &self,
        operation: &str,
        user: &AuthedUser,
        session: Option<&str>,
        auth: Option<AuthSubmission>,
        address: std::net::IpAddr,
    ) -> Result<()> {
        let credential = match auth {
            None => None,
            Some(AuthSubmission::Password {
                user: claimed,
                password,
            }) => {
                // The password must be the authenticated user's, whatever identifier was sent.
                let claimed_is_self = claimed.as_deref().is_none_or(|claimed| {
                    self.local_localpart(claimed)
                        .is_ok_and(|lp| lp == user.user_id.localpart())
                });
                if !claimed_is_self {
                    // Someone else's credentials, right or wrong, never authorise this user's
                    // operation: a plain 403, as the spec's device-deletion rule and
                    // Complement's "requires UI auth user to match device owner" have it.
                    return Err(Error::Forbidden(
                        "The authenticated user must be the one performing the operation"
                            .to_owned(),
                    ));
                }
                self.password_failures.check(user.user_id.as_str())?;
                let ok = self
                    .check_password(user.user_id.as_str(), &password)
                    .await
                    .is_ok();
                if ok {
                    self.password_failures.clear(user.user_id.as_str());
                } else {
                    self.password_failures.record(user.user_id.as_str());
                }
                // A wrong password is a failed stage: the spec's 401 challenge with
                // `errcode: M_FORBIDDEN`, the flows and the session, which stays open for
                // another try (Complement's device-deletion and deactivation tests).
                Some(if ok {
                    Credential::Completed(Stage::Password)
                } else {
                    Credential::Failed {
                        stage: Stage::Password,
                        message: "Invalid password".to_owned(),
                    }
                })
            }
            Some(AuthSubmission::Dummy) => {
                Some(Credential::Unsupported(Stage::Dummy.as_str().to_owned()))
            }
            Some(AuthSubmission::RegistrationToken(_)) => Some(Credential::Unsupported(
                Stage::RegistrationToken.as_str().to_owned(),
            )),
            Some(AuthSubmission::Other(kind)) => Some(Credential::Unsupported(kind)),
        };
        let operation = format!("{operation}:{}:{}", user.user_id, user.device_id);
        self.uia.check(
            &operation,
            &[vec![Stage::Password]],
            session,
            credential,
            address,
        )
    }

    /// `POST /account/password` after UIA. With `logout_devices`, every other device is deleted.
    pub async fn change_password(
        &self,
        user: &AuthedUser,
        new_password: &str,
        logout_devices: bool,
    ) -> Result<()> {
        let hash = passwords::hash(&self.passwords, new_password).await?;
        self.store
            .set_password_hash(user.user_id.as_str(), &hash)
            .await?;
        if logout_devices {
            self.store
                .delete_all_devices(user.user_id.as_str(), Some(user.device_id.as_str()))
                .await?;
            self.notify.notify();
        }
        Ok(())
    }

    /// `POST /account/deactivate` after UIA: no more logins, every session ended, with `rest`
    /// (leaving the user's rooms and, for `erase: true`, [`Accounts::erase_account_key`])
    /// journaled in the same transaction (`Services::deactivate_account` runs it). Returns its id.
    pub async fn deactivate(&self, user: &AuthedUser, rest: &NewOperation<'_>) -> Result<i64> {
        let id = self
            .store
            .deactivate_user(user.user_id.as_str(), now_millis(), Some(rest))
            .await?
            .ok_or_else(|| Error::Internal("the deactivation was not journaled".to_owned()))?;
        self.notify.notify();
        tracing::info!(user_id = %user.user_id, "deactivated a user");
        Ok(id)
    }

    /// The erasure half of `/account/deactivate` with `erase: true` (MSC4243.md §2.4): the
    /// signed `M_ERASED` attestation, the private key and the name destroyed, the erasure log.
    /// Erasing an erased key does nothing.
    pub async fn erase_account_key(&self, user: &UserId) -> Result<()> {
        self.account_keys.erase(user.localpart()).await?;
        self.notify.notify();
        Ok(())
    }

    pub async fn devices(&self, user: &AuthedUser) -> Result<Vec<DeviceRow>> {
        Ok(self.store.devices(user.user_id.as_str()).await?)
    }

    pub async fn device(&self, user: &AuthedUser, device_id: &str) -> Result<DeviceRow> {
        self.store
            .device(user.user_id.as_str(), device_id)
            .await?
            .ok_or_else(|| Error::NotFound("Device not found".to_owned()))
    }

    pub async fn rename_device(
        &self,
        user: &AuthedUser,
        device_id: &str,
        name: Option<&str>,
    ) -> Result<()> {
        if self
            .store
            .set_device_display_name(user.user_id.as_str(), device_id, name)
            .await?
        {
            self.notify.notify();
            Ok(())
        } else {
            Err(Error::NotFound("Device not found".to_owned()))
        }
    }

    /// Deletes devices (after UIA); unknown ids are ignored, as the spec allows.
    pub async fn delete_devices(&self, user: &AuthedUser, device_ids: &[String]) -> Result<()> {
        for device_id in device_ids {
            self.store
                .delete_device(user.user_id.as_str(), device_id)
                .await?;
        }
        self.notify.notify();
        Ok(())
    }

    /// A fresh single-use nonce for shared-secret registration.
    pub fn new_registration_nonce(&self) -> Result<String> {
        if self.registration.shared_secret.is_none() {
            return Err(Error::NotFound(
                "Shared-secret registration is not enabled".to_owned(),
            ));
        }
        let nonce = tokens::random_from(b"0123456789abcdef", 32);
        let mut nonces = self.nonces.lock().unwrap_or_else(|p| p.into_inner());
        nonces.retain(|_, created| created.elapsed() < NONCE_LIFETIME);
        if nonces.len() >= MAX_LIVE_NONCES
            && let Some(oldest) = nonces
                .iter()
                .min_by_key(|(_, created)| **created)
                .map(|(nonce, _)| nonce.clone())
        {
            nonces.remove(&oldest);
        }
        nonces.insert(nonce.clone(), Instant::now());
        Ok(nonce)
    }

    /// How many shared-secret nonces are live (bounded by [`MAX_LIVE_NONCES`]).
    pub fn live_registration_nonces(&self) -> usize {
        let nonces = self.nonces.lock().unwrap_or_else(|p| p.into_inner());
        nonces.len()
    }

    /// Synapse-compatible shared-secret registration: `mac` is the hex HMAC-SHA1 of
    /// `nonce\0username\0password\0admin|notadmin` keyed by the shared secret.
    pub async fn register_with_shared_secret(
        &self,
        nonce: &str,
        username: &str,
        password: &str,
        admin: bool,
        mac_hex: &str,
    ) -> Result<Registered> {
        let Some(secret) = &self.registration.shared_secret else {
            return Err(Error::NotFound(
                "Shared-secret registration is not enabled".to_owned(),
            ));
        };
        let fresh = {
            let mut nonces = self.nonces.lock().unwrap_or_else(|p| p.into_inner());
            nonces
                .remove(nonce)
                .is_some_and(|created| created.elapsed() < NONCE_LIFETIME)
        };
        if !fresh {
            return Err(Error::UnrecognisedNonce("unrecognised nonce".to_owned()));
        }
        let mut mac = Hmac::<sha1::Sha1>::new_from_slice(secret.as_bytes())
            .map_err(|e| Error::Internal(e.to_string()))?;
        mac.update(nonce.as_bytes());
        mac.update(b"\0");
        mac.update(username.as_bytes());
        mac.update(b"\0");
        mac.update(password.as_bytes());
        mac.update(b"\0");
        mac.update(if admin { b"admin" } else { b"notadmin" });
        let given =
            hex::decode(mac_hex).map_err(|_| Error::Forbidden("HMAC incorrect".to_owned()))?;
        mac.verify_slice(&given)
            .map_err(|_| Error::Forbidden("HMAC incorrect".to_owned()))?;
        self.register(RegistrationRequest {
            username: Some(username.to_ascii_lowercase()),
            password: Some(password.to_owned()),
            admin,
            ..RegistrationRequest::default()
        })
        .await
    }
}

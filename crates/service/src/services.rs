//! [`Services`]: the homeserver's areas, assembled once at start-up and shared by every request.

use std::sync::Arc;

use myelin_store::{Store, StoreOptions};

use crate::{
    Config,
    accounts::Accounts,
    secrets::{Sealer, SecretsError},
    server_keys::{ServerKeyError, ServerKeys},
};

/// Why the server could not start. Each variant says which resource failed.
#[derive(Debug, thiserror::Error)]
pub enum StartError {
    #[error("cannot create the data directory {path}: {source}")]
    DataDir {
        path: std::path::PathBuf,
        source: std::io::Error,
    },
    #[error(transparent)]
    Secrets(#[from] SecretsError),
    #[error("cannot open the database: {0}")]
    Store(#[from] myelin_store::StoreError),
    #[error("cannot load the server signing key: {0}")]
    ServerKey(#[from] ServerKeyError),
    #[error("cannot open the media directory {path}: {source}")]
    Media {
        path: std::path::PathBuf,
        source: std::io::Error,
    },
    #[error("cannot build the URL preview client: {0}")]
    UrlPreview(String),
    #[error("cannot build the push gateway client: {0}")]
    PushGateway(#[from] myelin_federation::push_gateway::PushGatewayError),
    #[error("cannot build the federation client: {0}")]
    Federation(#[from] myelin_federation::FederationError),
    #[error("bad configuration: {0}")]
    Config(String),
}

/// Everything the homeserver does, shared by every request handler.
#[derive(Debug)]
pub struct Services {
    pub config: Config,
    pub store: Store,
    pub server_keys: Arc<ServerKeys>,
    /// Signed requests to other servers, through the per-destination backoff.
    pub federation: Arc<crate::federation::Outbound>,
    /// Delivers local events and EDUs to other servers (started by [`Services::start_background`]).
    pub federation_sender: Arc<crate::federation::Sender>,
    /// Other servers' keys, the notary, inbound X-Matrix checks.
    pub remote_keys: Arc<crate::remote_keys::RemoteKeys>,
    /// Inbound transactions: one at a time per origin, old answers pruned.
    pub inbound: crate::federation_receiver::InboundTransactions,
    pub account_keys: Arc<crate::account_keys::AccountKeys>,
    /// Asks other servers who their account keys are (`/query/accounts`).
    pub account_verifier: Arc<crate::account_verification::AccountVerifier>,
    pub accounts: Accounts,
    pub rooms: crate::rooms::Rooms,
    pub ephemeral: crate::ephemeral::Ephemeral,
    pub directory: crate::directory::Directory,
    pub rate_limiter: crate::rate_limit::RateLimiter,
    pub user_data: Arc<crate::user_data::UserData>,
    pub profiles: crate::profiles::Profiles,
    pub pushers: Arc<crate::pushers::Pushers>,
    pub e2ee: crate::e2ee::E2ee,
    pub key_backup: crate::key_backup::KeyBackup,
    pub media: Arc<crate::media::Media>,
    /// `None` unless `media.url_preview.enabled`.
    pub url_previews: Option<crate::url_preview::UrlPreviews>,
    /// This process's claims on operations that take several transactions (`operations`).
    pub(crate) journal: Arc<crate::operations::Journal>,
}

impl Services {
    /// Creates the data directory if needed, opens the database (applying migrations), and
    /// loads or creates the signing key.
    pub async fn start(config: Config) -> Result<Arc<Self>, StartError> {
        std::fs::create_dir_all(&config.data_dir).map_err(|source| StartError::DataDir {
            path: config.data_dir.clone(),
            source,
        })?;
        let sealer = Sealer::load_or_create(&config.data_dir)?;
        let store = Store::open(
            &config.database_url(),
            &StoreOptions {
                max_connections: config.database.max_connections,
            },
        )
        .await?;
        tracing::info!(database = ?store.kind(), "database ready");
        let server_keys =
            ServerKeys::load_or_create(&store, &sealer, config.server_name.clone()).await?;
        tracing::info!(server_name = %config.server_name, key_id = %server_keys.key_id(), "signing key loaded");
        let notifier = crate::notifier::Notifier::default();
        let journal = crate::operations::Journal::new(store.clone(), &config.instance_name);
        let account_keys = Arc::new(
            crate::account_keys::AccountKeys::load(
                store.clone(),
                sealer.clone(),
                config.server_name.clone(),
                config.experimental.msc4243,
                notifier.clone(),
            )
            .await?,
        );
        let accounts = Accounts::new(
            store.clone(),
            config.server_name.clone(),
            config.registration.clone(),
            config.passwords.clone(),
            config.sessions.clone(),
            notifier.clone(),
            account_keys.clone(),
        );
        let server_keys = Arc::new(server_keys);
        let (key_id, key_pair) = server_keys.request_signing_key();
        let client = Arc::new(myelin_federation::FederationClient::new(
            myelin_federation::FederationClientConfig {
                server_name: config.server_name.clone(),
                key_id,
                trusted_ca_files: config.federation.trusted_ca_files.clone(),
                verify_certificates: config.federation.verify_certificates,
                destination_overrides: config.federation.destination_overrides.clone(),
                allow_private_addresses: config.federation.allow_private_addresses,
                timeout: std::time::Duration::from_secs(config.federation.request_timeout_secs),
                // Room state and backfill answers are the largest a peer sends.
                max_response_size: 64 * 1024 * 1024,
            },
            key_pair,
        )?);
        let backoff = Arc::new(
            crate::federation::Backoff::load(
                store.clone(),
                crate::federation::BackoffPolicy {
                    min: std::time::Duration::from_secs(config.federation.backoff_min_secs),
                    max: std::time::Duration::from_secs(config.federation.backoff_max_secs),
                },
            )
            .await?,
        );
        let federation = Arc::new(crate::federation::Outbound::new(client, backoff));
        let account_verifier = Arc::new(crate::account_verification::AccountVerifier::new(
            account_keys.clone(),
            federation.clone(),
            store.clone(),
            std::time::Duration::from_secs(config.federation.backoff_min_secs),
        ));
        let edu_feed = crate::federation::EduFeed::default();
        let federation_sender = Arc::new(crate::federation::Sender::new(
            store.clone(),
            config.server_name.clone(),
            federation.clone(),
            notifier.clone(),
            edu_feed.clone(),
        ));
        let remote_keys = Arc::new(crate::remote_keys::RemoteKeys::new(
            store.clone(),
            federation.clone(),
            server_keys.clone(),
            config.server_name.clone(),
            config.federation.trusted_key_servers.clone(),
        ));
        let pushers = Arc::new(crate::pushers::Pushers::new(
            store.clone(),
            config.push.allow_private_gateways,
        )?);
        let user_data = Arc::new(crate::user_data::UserData::new(
            store.clone(),
            notifier.clone(),
        ));
        let rooms = crate::rooms::Rooms::new(
            store.clone(),
            config.server_name.clone(),
            crate::rooms::RoomKeys {
                server: server_keys.clone(),
                accounts: account_keys.clone(),
            },
            notifier.clone(),
            pushers.clone(),
            user_data.clone(),
            journal.clone(),
            // `Config::validate` has checked the name; a bad one here is a caller's bug.
            myelin_room_version::version::RoomVersion::get(&config.rooms.default_room_version)
                .map_err(|e| StartError::Config(format!("rooms.default_room_version: {e}")))?,
        )
        .with_federation(crate::rooms::RoomFederation {
            outbound: federation.clone(),
            remote_keys: remote_keys.clone(),
            account_verifier: account_verifier.clone(),
        });
        let rate_limiter = crate::rate_limit::RateLimiter::new(config.rate_limits.clone());
        let ephemeral = crate::ephemeral::Ephemeral::new(store.clone(), notifier.clone())
            .with_federation(config.server_name.clone(), edu_feed);
        let url_previews = if config.media.url_preview.enabled {
            Some(
                crate::url_preview::UrlPreviews::new(&config.media.url_preview)
                    .map_err(|err| StartError::UrlPreview(err.to_string()))?,
            )
        } else {
            None
        };
        let media_dir = config.media_directory();
        let media = crate::media::Media::open(
            store.clone(),
            config.server_name.clone(),
            config.media.clone(),
            media_dir.clone(),
        )
        .map_err(|source| StartError::Media {
            path: media_dir,
            source,
        })?
        .with_federation(federation.clone());
        Ok(Arc::new(Services {
            account_keys,
            account_verifier,
            rooms,
            ephemeral,
            directory: crate::directory::Directory::new(store.clone(), config.server_name.clone()),
            rate_limiter,
            user_data,
            profiles: crate::profiles::Profiles::new(
                store.clone(),
                config.server_name.clone(),
                federation.clone(),
            ),
            pushers,
            e2ee: crate::e2ee::E2ee::new(
                store.clone(),
                config.server_name.clone(),
                notifier.clone(),
            )
            .with_federation(federation.clone()),
            key_backup: crate::key_backup::KeyBackup::new(store.clone()),
            media: Arc::new(media),
            url_previews,
            config,
            store,
            server_keys,
            federation,
            federation_sender,
            remote_keys,
            inbound: Default::default(),
            accounts,
            journal,
        }))
    }

    /// Starts the background work a serving server does: the federation sender, and resuming
    /// the operations a crash left unfinished (`operations`).
    pub fn start_background(self: &Arc<Self>) {
        self.federation_sender.start();
        self.start_operations();
        if self.account_keys.enabled() {
            self.account_verifier.start();
        }
    }

    /// Stops the background work, then closes the database once in-flight work is done.
    pub async fn shutdown(&self) {
        self.stop_operations().await;
        self.account_verifier.stop();
        self.federation_sender.stop().await;
        self.store.close().await;
    }
}

//! The configuration: every key an operator can set, with its default. Loading it (TOML file plus
//! `MYELIN_*` environment variables) is the binary's job; this module only says what the keys are
//! and checks what serde cannot.

use std::{net::SocketAddr, path::PathBuf};

use ruma::OwnedServerName;
use serde::{Deserialize, Serialize};

/// The whole configuration. Unknown keys are errors, so a typo never passes silently.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct Config {
    /// The server name that ends every user ID and room alias on this server.
    pub server_name: OwnedServerName,
    /// This process's name among the processes that serve `server_name` from one database:
    /// stable across restarts, different for each process running at the same time (never two
    /// processes with one name at once). It owns the leases on journaled operations (room
    /// creation, profile fan-out, deactivation), so that after a crash the restarted process
    /// takes over its own unfinished operations at once, while another live process's wait
    /// for their lease to run out. Letters, digits, `.`, `_` and `-`, at most 64.
    pub instance_name: String,
    /// Where Myelin keeps its files: the SQLite database, the sealing key, TLS material.
    pub data_dir: PathBuf,
    pub database: DatabaseConfig,
    pub listen: ListenConfig,
    pub tls: TlsConfig,
    pub well_known: WellKnownConfig,
    pub http: HttpConfig,
    pub log: LogConfig,
    pub registration: RegistrationConfig,
    pub passwords: PasswordConfig,
    pub sessions: SessionConfig,
    pub rate_limits: RateLimitConfig,
    pub push: PushConfig,
    pub media: MediaConfig,
    pub rooms: RoomsConfig,
    pub federation: FederationConfig,
    pub experimental: ExperimentalConfig,
}

/// Features that follow unaccepted proposals, off unless an operator turns them on.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct ExperimentalConfig {
    /// Account-key rooms (MSC4243, room version `org.matrix.12.4243`): advertised as unstable
    /// in `m.room_versions` and creatable only when on. Off by default until the proposal is
    /// accepted (docs/account-keys.md). Rooms of the version the server is already in are
    /// served either way.
    pub msc4243: bool,
}

impl Default for Config {
    fn default() -> Self {
        Config {
            server_name: "localhost"
                .try_into()
                .expect("`localhost` is a valid server name"),
            instance_name: "main".to_owned(),
            data_dir: PathBuf::from("./data"),
            database: DatabaseConfig::default(),
            listen: ListenConfig::default(),
            tls: TlsConfig::default(),
            well_known: WellKnownConfig::default(),
            http: HttpConfig::default(),
            log: LogConfig::default(),
            registration: RegistrationConfig::default(),
            passwords: PasswordConfig::default(),
            sessions: SessionConfig::default(),
            rate_limits: RateLimitConfig::default(),
            push: PushConfig::default(),
            media: MediaConfig::default(),
            rooms: RoomsConfig::default(),
            federation: FederationConfig::default(),
            experimental: ExperimentalConfig::default(),
        }
    }
}

/// Talking to other servers.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct FederationConfig {
    /// PEM files of certificate authorities trusted for outbound federation TLS, beside the
    /// system roots.
    pub trusted_ca_files: Vec<PathBuf>,
    /// Check other servers' certificates. Turn off only on a test network.
    pub verify_certificates: bool,
    /// Server name (`name` or `name:port`) → `ip:port` (or `ip`, keeping the name's port or
    /// 8448): connect there without well-known, SRV or DNS. The certificate must still be for
    /// the server name.
    pub destination_overrides: std::collections::BTreeMap<String, String>,
    /// Let other servers be private addresses (loopback, RFC 1918, link-local, unique local...).
    /// Off: a server name resolving to one is refused when connecting, whatever DNS says later.
    pub allow_private_addresses: bool,
    /// Notary servers asked for a server's keys when the server itself does not answer. Their
    /// own keys are fetched from them directly.
    pub trusted_key_servers: Vec<OwnedServerName>,
    /// How long a request to another server may take, in seconds.
    pub request_timeout_secs: u64,
    /// After a destination's first failure, how long no request goes to it, in seconds; each
    /// further failure doubles the wait, up to `backoff_max_secs`. A destination that answers
    /// or sends a request of its own is retried at once.
    pub backoff_min_secs: u64,
    /// The longest a failing destination is left alone, in seconds.
    pub backoff_max_secs: u64,
}

impl Default for FederationConfig {
    fn default() -> Self {
        FederationConfig {
            trusted_ca_files: Vec::new(),
            verify_certificates: true,
            destination_overrides: std::collections::BTreeMap::new(),
            allow_private_addresses: false,
            trusted_key_servers: Vec::new(),
            request_timeout_secs: 30,
            backoff_min_secs: 10,
            backoff_max_secs: 24 * 60 * 60,
        }
    }
}

/// Room settings.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct RoomsConfig {
    /// The version of rooms created without one (`createRoom` without `room_version`), and the
    /// default `m.room_versions` advertises. A stable version this server can create; the
    /// spec's recommendation (12) unless set. A bare number is taken as its digits: from the
    /// environment, `MYELIN_ROOMS__DEFAULT_ROOM_VERSION=10` arrives as an integer.
    #[serde(deserialize_with = "string_or_number")]
    pub default_room_version: String,
}

/// A string, or an unsigned integer read as its decimal digits (room versions look numeric).
fn string_or_number<'de, D: serde::Deserializer<'de>>(deserializer: D) -> Result<String, D::Error> {
    #[derive(Deserialize)]
    #[serde(untagged)]
    enum Either {
        Text(String),
        Number(u64),
    }
    Ok(match Either::deserialize(deserializer)? {
        Either::Text(text) => text,
        Either::Number(number) => number.to_string(),
    })
}

impl Default for RoomsConfig {
    fn default() -> Self {
        RoomsConfig {
            default_room_version: myelin_room_version::version::RoomVersion::default_for_new_rooms(
            )
            .id()
            .to_owned(),
        }
    }
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct DatabaseConfig {
    /// `postgres://...` for PostgreSQL, `sqlite://PATH` for SQLite. Unset: `myelin.db` in
    /// `data_dir`.
    pub url: Option<String>,
    pub max_connections: u32,
}

impl Default for DatabaseConfig {
    fn default() -> Self {
        DatabaseConfig {
            url: None,
            max_connections: 16,
        }
    }
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct ListenConfig {
    /// Plain HTTP: the client API, well-known, health and metrics.
    pub client: SocketAddr,
    /// TLS: the federation and key APIs.
    pub federation: SocketAddr,
    /// Plain HTTP for `GET /metrics` alone, so that a scraper can reach it on a private address
    /// while the client API is public. Set: the client listener no longer serves `/metrics`.
    pub metrics: Option<SocketAddr>,
    /// The client listener serves the federation and key APIs too (still X-Matrix
    /// authenticated), for a reverse proxy that terminates TLS for both on the port it
    /// forwards to (Synapse's one-listener layout). The federation listener stays up.
    pub federation_on_client: bool,
}

impl Default for ListenConfig {
    fn default() -> Self {
        ListenConfig {
            client: SocketAddr::from(([127, 0, 0, 1], 8008)),
            federation: SocketAddr::from(([127, 0, 0, 1], 8448)),
            metrics: None,
            federation_on_client: false,
        }
    }
}

#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct TlsConfig {
    /// PEM certificate chain for the federation listener. Unset (with `private_key` unset): a
    /// self-signed certificate for `server_name` is generated into `data_dir` and reused.
    pub certificate: Option<PathBuf>,
    /// PEM private key matching `certificate`.
    pub private_key: Option<PathBuf>,
}

#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct WellKnownConfig {
    /// The base URL `/.well-known/matrix/client` points clients at. Unset: 404.
    pub client: Option<String>,
    /// The `host[:port]` `/.well-known/matrix/server` delegates federation to. Unset: 404.
    pub server: Option<OwnedServerName>,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct HttpConfig {
    /// The largest request body read whole on any route, in bytes (uploads are streamed and
    /// capped by `media.max_upload_size` instead); larger ones get 413 `M_TOO_LARGE`.
    pub max_request_size: usize,
    /// The largest body of every other route (JSON requests), in bytes: read before anything
    /// else is known about a request, so kept small.
    pub max_json_request_size: usize,
    /// Reverse proxies (addresses, or networks as `addr/len`) whose `X-Forwarded-For` and
    /// `Forwarded` headers are believed: requests from them are counted against the client
    /// address they name. Empty: the connection's peer is the client.
    pub trusted_proxies: Vec<String>,
    /// How long a request body may take to arrive, in seconds (then 408): a client that
    /// trickles its body must not hold a connection and a buffer for ever.
    pub body_read_timeout_secs: u64,
    /// Whether `GET /metrics` (request counts and latencies by route: operators may not want
    /// them public) is served at all: on `listen.metrics` when that is set, else on the client
    /// listener.
    pub serve_metrics: bool,
    /// Requests handled at once on each listener (long-polling syncs included); past it a
    /// request is refused at once with 429 `M_LIMIT_EXCEEDED` rather than queued.
    pub max_concurrent_requests: usize,
    /// How long in-flight requests may take to finish after a shutdown signal, in seconds.
    pub shutdown_grace_period_secs: u64,
}

impl Default for HttpConfig {
    fn default() -> Self {
        HttpConfig {
            max_request_size: 50 * 1024 * 1024,
            // Enough for a to-device send to a couple of thousand devices, the largest JSON
            // body clients send in practice.
            max_json_request_size: 1024 * 1024,
            trusted_proxies: Vec::new(),
            body_read_timeout_secs: 30,
            serve_metrics: true,
            max_concurrent_requests: 4096,
            shutdown_grace_period_secs: 30,
        }
    }
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct LogConfig {
    /// A `tracing` filter, e.g. `info` or `myelin_api=debug,info`. `RUST_LOG` overrides it.
    pub filter: String,
    /// `text` or `json`.
    pub format: LogFormat,
}

impl Default for LogConfig {
    fn default() -> Self {
        LogConfig {
            filter: "info".to_owned(),
            format: LogFormat::Text,
        }
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum LogFormat {
    Text,
    Json,
}

#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct RegistrationConfig {
    /// Open registration through `/register`. Off: 403 `M_FORBIDDEN` (shared-secret and CLI
    /// registration still work).
    pub enabled: bool,
    /// When non-empty, registering needs one of these tokens (`m.login.registration_token`).
    pub tokens: Vec<String>,
    /// The shared secret for `/_synapse/admin/v1/register`. Unset: that endpoint is off.
    pub shared_secret: Option<String>,
}

/// argon2id cost. The defaults are OWASP's minimum recommendation; tests turn them down.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct PasswordConfig {
    pub memory_kib: u32,
    pub iterations: u32,
    pub parallelism: u32,
}

impl Default for PasswordConfig {
    fn default() -> Self {
        PasswordConfig {
            memory_kib: 19 * 1024,
            iterations: 2,
            parallelism: 1,
        }
    }
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct SessionConfig {
    /// Lifetime of access tokens issued to clients that asked for a refresh token, in seconds.
    /// Clients that did not ask get tokens that never expire.
    pub refreshable_access_token_lifetime_secs: u64,
}

impl Default for SessionConfig {
    fn default() -> Self {
        SessionConfig {
            refreshable_access_token_lifetime_secs: 300,
        }
    }
}

/// Push notifications to push gateways.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct PushConfig {
    /// Let push gateways be private addresses (loopback, RFC 1918, link-local, unique local...).
    /// Off by default: a gateway URL is chosen by a user, and must not make the server post to
    /// itself or into its own network. Turn on for a gateway on the same host or network.
    pub allow_private_gateways: bool,
}

/// The media repository: uploads, downloads and thumbnails.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct MediaConfig {
    /// Where media content and thumbnails are kept. Unset: `media` in `data_dir`.
    pub directory: Option<PathBuf>,
    /// The largest upload accepted, in bytes; larger ones get 413 `M_TOO_LARGE`. Uploads are
    /// streamed to disk, so this may exceed `http.max_request_size`.
    pub max_upload_size: u64,
    /// The largest media of another server this server fetches and caches for its users, in
    /// bytes; larger ones get 502 `M_TOO_LARGE` and nothing is kept. Unset: `max_upload_size`.
    pub max_remote_size: Option<u64>,
    /// The most bytes one user may have uploaded in all; past it, uploads get 403
    /// `M_FORBIDDEN`. Unset: no quota.
    pub max_bytes_per_user: Option<u64>,
    /// Serve the unauthenticated `/_matrix/media/{v3,r0}/download`, `/thumbnail` and `/config`
    /// endpoints, which the spec deprecated (v1.11) in favour of the authenticated
    /// `/_matrix/client/v1/media/...` ones. Off: they answer 404 `M_UNRECOGNIZED`.
    pub legacy_endpoints: bool,
    /// How many asynchronous uploads (`/create`) one user may have reserved and not yet
    /// uploaded; more get 429 `M_LIMIT_EXCEEDED`.
    pub max_pending_uploads: u32,
    /// How long a media id reserved by `/create` waits for its upload, in seconds.
    pub pending_upload_expiry_secs: u64,
    /// The largest image (width × height, in pixels) a thumbnail is made of. Decoding is
    /// bounded by it, so a small file that claims a huge image (a decompression bomb) is
    /// refused before it can take the memory.
    pub max_thumbnail_source_pixels: u64,
    /// Make the thumbnails clients ask for most (32×32 and 96×96 cropped, 320×240, 640×480
    /// and 800×600 scaled) right after an image is uploaded, in the background, instead of on
    /// the first request.
    pub thumbnails_at_upload: bool,
    pub url_preview: UrlPreviewConfig,
}

/// URL previews (`/preview_url`): the server fetches pages users link to.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct UrlPreviewConfig {
    /// Off by default: previews make the server fetch any URL a user names.
    pub enabled: bool,
    /// Let previews fetch private addresses (loopback, RFC 1918, link-local...). Off: only
    /// publicly routable ones, as for push gateways.
    pub allow_private_addresses: bool,
    /// The most of a page read, in bytes.
    pub max_page_size: usize,
    /// How long a preview is reused before the page is fetched again, in seconds.
    pub cache_secs: u64,
    /// Host names previews reach at these addresses instead of asking DNS (split-horizon set-ups,
    /// test harnesses). An address that is not publicly routable is refused at start-up unless
    /// `allow_private_addresses` is on, so an override cannot open the door DNS checks close.
    pub host_overrides: std::collections::BTreeMap<String, std::net::IpAddr>,
}

impl Default for UrlPreviewConfig {
    fn default() -> Self {
        UrlPreviewConfig {
            enabled: false,
            allow_private_addresses: false,
            max_page_size: 1024 * 1024,
            cache_secs: 60 * 60,
            host_overrides: std::collections::BTreeMap::new(),
        }
    }
}

impl Default for MediaConfig {
    fn default() -> Self {
        MediaConfig {
            directory: None,
            max_upload_size: 50 * 1024 * 1024,
            max_remote_size: None,
            max_bytes_per_user: None,
            legacy_endpoints: false,
            max_pending_uploads: 5,
            pending_upload_expiry_secs: 24 * 60 * 60,
            // 32 Mi pixels: a 4000×3000 photo with room to spare, ~128 MiB decoded as RGBA.
            max_thumbnail_source_pixels: 32 * 1024 * 1024,
            thumbnails_at_upload: true,
            url_preview: UrlPreviewConfig::default(),
        }
    }
}

/// Limits on the endpoints the spec marks as rate-limited.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct RateLimitConfig {
    /// Off: no request is ever limited (test deployments).
    pub enabled: bool,
    /// Requests by one logged-in user.
    pub per_user: Bucket,
    /// Requests without a login (login, registration) from one client address.
    pub per_address: Bucket,
    /// Pre-emptive bans other servers ask this one to co-sign (MSC4243's `/ban`), per
    /// requesting server: unsolicited bans should be rare, and each answer tells whether an
    /// account exists and its key (MSC4243.md §2.5 item 35), so the limit is tight.
    pub federated_bans: Bucket,
}

impl Default for RateLimitConfig {
    fn default() -> Self {
        RateLimitConfig {
            enabled: true,
            per_user: Bucket {
                per_second: 10.0,
                burst: 50,
            },
            per_address: Bucket {
                per_second: 1.0,
                burst: 10,
            },
            // Three a minute, five at once.
            federated_bans: Bucket {
                per_second: 0.05,
                burst: 5,
            },
        }
    }
}

/// A token bucket: `burst` requests at once, refilled at `per_second`.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Bucket {
    pub per_second: f64,
    pub burst: u32,
}

/// A configuration value that parsed but makes no sense.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("key `{key}`: {problem}")]
pub struct ConfigProblem {
    pub key: &'static str,
    pub problem: String,
}

impl Config {
    /// The database URL in effect: the configured one, or the SQLite file in `data_dir`.
    pub fn database_url(&self) -> String {
        match &self.database.url {
            Some(url) => url.clone(),
            None => myelin_store::Store::sqlite_url(&self.data_dir.join("myelin.db")),
        }
    }

    /// The directory media content is kept in.
    pub fn media_directory(&self) -> PathBuf {
        self.media
            .directory
            .clone()
            .unwrap_or_else(|| self.data_dir.join("media"))
    }

    /// Checks what the types alone cannot. Touches nothing on disk.
    pub fn validate(&self) -> Result<(), ConfigProblem> {
        if self.instance_name.is_empty()
            || self.instance_name.len() > 64
            || !self
                .instance_name
                .bytes()
                .all(|b| b.is_ascii_alphanumeric() || matches!(b, b'.' | b'_' | b'-'))
        {
            return Err(ConfigProblem {
                key: "instance_name",
                problem: format!(
                    "`{}` must be 1 to 64 letters, digits, `.`, `_` or `-`",
                    self.instance_name
                ),
            });
        }
        if let Some(url) = &self.database.url {
            myelin_store::DatabaseKind::of_url(url).map_err(|_| ConfigProblem {
                key: "database.url",
                problem: "must start with postgres://, postgresql:// or sqlite:".to_owned(),
            })?;
        }
        if self.database.max_connections == 0 {
            return Err(ConfigProblem {
                key: "database.max_connections",
                problem: "must be at least 1".to_owned(),
            });
        }
        if self.tls.certificate.is_some() != self.tls.private_key.is_some() {
            return Err(ConfigProblem {
                key: if self.tls.certificate.is_some() {
                    "tls.private_key"
                } else {
                    "tls.certificate"
                },
                problem: "tls.certificate and tls.private_key must be set together".to_owned(),
            });
        }
        if let Some(client) = &self.well_known.client
            && !(client.starts_with("https://") || client.starts_with("http://"))
        {
            return Err(ConfigProblem {
                key: "well_known.client",
                problem: format!("`{client}` is not an http(s) URL"),
            });
        }
        if self.passwords.iterations == 0
            || self.passwords.parallelism == 0
            || self.passwords.memory_kib < 8 * self.passwords.parallelism
        {
            return Err(ConfigProblem {
                key: "passwords",
                problem: "argon2 needs iterations >= 1, parallelism >= 1 and memory_kib >= 8 * parallelism".to_owned(),
            });
        }
        if self.registration.shared_secret.as_deref() == Some("") {
            return Err(ConfigProblem {
                key: "registration.shared_secret",
                problem: "must not be empty (leave it unset to turn the endpoint off)".to_owned(),
            });
        }
        for (key, bucket) in [
            ("rate_limits.per_user", &self.rate_limits.per_user),
            ("rate_limits.per_address", &self.rate_limits.per_address),
            (
                "rate_limits.federated_bans",
                &self.rate_limits.federated_bans,
            ),
        ] {
            if !(bucket.per_second > 0.0 && bucket.per_second.is_finite()) || bucket.burst == 0 {
                return Err(ConfigProblem {
                    key,
                    problem: "per_second must be positive and burst at least 1".to_owned(),
                });
            }
        }
        if self.http.max_concurrent_requests == 0 {
            return Err(ConfigProblem {
                key: "http.max_concurrent_requests",
                problem: "must be at least 1".to_owned(),
            });
        }
        if self.http.body_read_timeout_secs == 0 {
            return Err(ConfigProblem {
                key: "http.body_read_timeout_secs",
                problem: "must be at least 1".to_owned(),
            });
        }
        for proxy in &self.http.trusted_proxies {
            if crate::client_address::IpNet::parse(proxy).is_none() {
                return Err(ConfigProblem {
                    key: "http.trusted_proxies",
                    problem: format!("{proxy:?} is not an address or an addr/len network"),
                });
            }
        }
        for (key, size) in [
            ("http.max_request_size", self.http.max_request_size),
            (
                "http.max_json_request_size",
                self.http.max_json_request_size,
            ),
        ] {
            if size < 1024 {
                return Err(ConfigProblem {
                    key,
                    problem: "must be at least 1024 bytes".to_owned(),
                });
            }
        }
        match myelin_room_version::version::RoomVersion::get(&self.rooms.default_room_version) {
            Ok(version)
                if version.stability() == myelin_room_version::version::Stability::Stable
                    && !version.uses_account_keys() => {}
            _ => {
                return Err(ConfigProblem {
                    key: "rooms.default_room_version",
                    problem: format!(
                        "{:?} is not a stable room version this server can create",
                        self.rooms.default_room_version
                    ),
                });
            }
        }
        if self.media.max_upload_size == 0 {
            return Err(ConfigProblem {
                key: "media.max_upload_size",
                problem: "must be at least 1 byte".to_owned(),
            });
        }
        if self.media.max_remote_size == Some(0) {
            return Err(ConfigProblem {
                key: "media.max_remote_size",
                problem: "must be at least 1 byte (unset: media.max_upload_size)".to_owned(),
            });
        }
        if self.media.pending_upload_expiry_secs == 0 {
            return Err(ConfigProblem {
                key: "media.pending_upload_expiry_secs",
                problem: "must be at least 1 second".to_owned(),
            });
        }
        if self.media.max_thumbnail_source_pixels == 0 {
            return Err(ConfigProblem {
                key: "media.max_thumbnail_source_pixels",
                problem: "must be at least 1".to_owned(),
            });
        }
        for (name, target) in &self.federation.destination_overrides {
            let target_ok = target.parse::<SocketAddr>().is_ok()
                || target
                    .trim_start_matches('[')
                    .trim_end_matches(']')
                    .parse::<std::net::IpAddr>()
                    .is_ok();
            if ruma::ServerName::parse(name).is_err() || !target_ok {
                return Err(ConfigProblem {
                    key: "federation.destination_overrides",
                    problem: format!(
                        "{name:?} = {target:?}: needs a server name and an ip or ip:port"
                    ),
                });
            }
        }
        if self.federation.request_timeout_secs == 0 {
            return Err(ConfigProblem {
                key: "federation.request_timeout_secs",
                problem: "must be at least 1".to_owned(),
            });
        }
        if self.federation.backoff_min_secs == 0 {
            return Err(ConfigProblem {
                key: "federation.backoff_min_secs",
                problem: "must be at least 1".to_owned(),
            });
        }
        if self.federation.backoff_max_secs < self.federation.backoff_min_secs {
            return Err(ConfigProblem {
                key: "federation.backoff_max_secs",
                problem: "must be at least federation.backoff_min_secs".to_owned(),
            });
        }
        Ok(())
    }
}

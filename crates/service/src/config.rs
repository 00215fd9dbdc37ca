//! The configuration: every key an operator can set, with its default. Loading it (TOML file plus
//! `MYELIN_*` environment variables) is the binary's job; this module only says what the keys are
//! and checks what serde cannot.

use std::{net::SocketAddr, path::PathBuf};

use ruma::OwnedServerName;
use serde::Deserialize;

/// The whole configuration. Unknown keys are errors, so a typo never passes silently.
#[derive(Debug, Clone, PartialEq, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct Config {
    /// The server name that ends every user ID and room alias on this server.
    pub server_name: OwnedServerName,
    /// Where Myelin keeps its files: the SQLite database, the sealing key, TLS material.
    pub data_dir: PathBuf,
    pub database: DatabaseConfig,
    pub listen: ListenConfig,
    pub tls: TlsConfig,
    pub well_known: WellKnownConfig,
    pub http: HttpConfig,
    pub log: LogConfig,
}

impl Default for Config {
    fn default() -> Self {
        Config {
            server_name: "localhost"
                .try_into()
                .expect("`localhost` is a valid server name"),
            data_dir: PathBuf::from("./data"),
            database: DatabaseConfig::default(),
            listen: ListenConfig::default(),
            tls: TlsConfig::default(),
            well_known: WellKnownConfig::default(),
            http: HttpConfig::default(),
            log: LogConfig::default(),
        }
    }
}

#[derive(Debug, Clone, PartialEq, Deserialize)]
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

#[derive(Debug, Clone, PartialEq, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct ListenConfig {
    /// Plain HTTP: the client API, well-known, health and metrics.
    pub client: SocketAddr,
    /// TLS: the federation and key APIs.
    pub federation: SocketAddr,
}

impl Default for ListenConfig {
    fn default() -> Self {
        ListenConfig {
            client: SocketAddr::from(([127, 0, 0, 1], 8008)),
            federation: SocketAddr::from(([127, 0, 0, 1], 8448)),
        }
    }
}

#[derive(Debug, Clone, Default, PartialEq, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct TlsConfig {
    /// PEM certificate chain for the federation listener. Unset (with `private_key` unset): a
    /// self-signed certificate for `server_name` is generated into `data_dir` and reused.
    pub certificate: Option<PathBuf>,
    /// PEM private key matching `certificate`.
    pub private_key: Option<PathBuf>,
}

#[derive(Debug, Clone, Default, PartialEq, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct WellKnownConfig {
    /// The base URL `/.well-known/matrix/client` points clients at. Unset: 404.
    pub client: Option<String>,
    /// The `host[:port]` `/.well-known/matrix/server` delegates federation to. Unset: 404.
    pub server: Option<OwnedServerName>,
}

#[derive(Debug, Clone, PartialEq, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct HttpConfig {
    /// The largest request body accepted, in bytes; larger ones get 413 `M_TOO_LARGE`.
    pub max_request_size: usize,
    /// How long in-flight requests may take to finish after a shutdown signal, in seconds.
    pub shutdown_grace_period_secs: u64,
}

impl Default for HttpConfig {
    fn default() -> Self {
        HttpConfig {
            max_request_size: 50 * 1024 * 1024,
            shutdown_grace_period_secs: 30,
        }
    }
}

#[derive(Debug, Clone, PartialEq, Deserialize)]
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

#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum LogFormat {
    Text,
    Json,
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

    /// Checks what the types alone cannot. Touches nothing on disk.
    pub fn validate(&self) -> Result<(), ConfigProblem> {
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
        if self.http.max_request_size < 1024 {
            return Err(ConfigProblem {
                key: "http.max_request_size",
                problem: "must be at least 1024 bytes".to_owned(),
            });
        }
        Ok(())
    }
}

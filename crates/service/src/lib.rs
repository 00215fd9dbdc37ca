//! What the homeserver does: accounts, rooms, timeline, sync, inbound PDUs, account keys.
//!
//! Each area is a module with a small struct holding what it needs; [`Services`] ties them
//! together and is what the HTTP layer is handed. No area keeps global state.
//!
//! Areas so far: [`accounts`] (registration, login, tokens, devices), [`uia`]
//! (user-interactive authentication), [`config`] (the configuration every layer reads), [`secrets`] (the data
//! directory's sealing key, for private keys at rest), [`server_keys`] (the server's signing key
//! and its published, signed key object), [`remote_keys`] (other servers' keys, the notary, and
//! X-Matrix checks of inbound requests), [`federation`] (the outbound door with its
//! per-destination backoff, and the transaction sender), [`federation_receiver`] (transactions
//! other servers push: their PDUs, with what they lack fetched, and their EDUs), [`directory`]
//! (room aliases and the room directory),
//! [`user_data`] (filters, account data, room tags, push rules, room versions for capabilities),
//! [`profiles`] (local users' display names and avatars), [`pushers`] (pushers and delivery to
//! push gateways), [`e2ee`] (device, one-time, fallback and cross-signing keys; device lists),
//! [`key_backup`] (server-side room key backup), [`media`] (the media repository: uploads,
//! downloads, thumbnails), [`url_preview`] (link previews), [`operations`] (room creation, profile
//! fan-out and deactivation journaled, and finished after a crash).

pub mod account_keys;
pub mod account_verification;
pub mod accounts;
pub mod backfill;
pub mod client_address;
pub mod config;
pub mod directory;
pub mod e2ee;
pub mod ephemeral;
mod error;
pub mod federation;
pub mod federation_receiver;
pub mod key_backup;
pub mod limits;
pub mod media;
pub mod notifier;
pub mod operations;
/// The failpoint registry of the test-only crash points (`operations::crash_point!`).
#[cfg(feature = "failpoints")]
pub use fail;
pub mod passwords;
pub mod profiles;
pub mod pushers;
pub mod rate_limit;
pub mod remote_directory;
pub mod remote_keys;
pub mod remote_membership;
mod room_summary;
pub mod rooms;
pub mod secrets;
pub mod server_keys;
mod services;
pub mod sync;
#[cfg(test)]
mod token_fuzz;
pub mod tokens;
pub mod uia;
pub mod url_preview;
pub mod user_data;

pub use config::Config;
pub use error::{Error, Result};
pub use services::{Services, StartError};

/// The name this server reports in `/_matrix/federation/v1/version`.
pub const SERVER_SOFTWARE: &str = "Myelin";
/// This build's version.
pub const SERVER_VERSION: &str = env!("CARGO_PKG_VERSION");

/// Milliseconds since the Unix epoch, the unit every stored time uses.
pub fn now_millis() -> i64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| i64::try_from(d.as_millis()).unwrap_or(i64::MAX))
        .unwrap_or(0)
}

//! The rules of each room version, as pure functions: no I/O, no async, no database, no clock
//! (callers pass times in). The bottom floor of Myelin: everything above it asks this crate what
//! an event means; this crate knows nothing but events.
//!
//! It owns the room version table (every stable version 1 to 12 and `org.matrix.12.4243`, their
//! differences as data), the PDU model and its format checks (event formats 1, 2/3 and v12),
//! canonical JSON, content and reference hashes, event ids and v12 room ids, redaction per
//! version, signing and signature checks (server keys and MSC4243 account keys), the strict
//! account-key grammar, the authorisation rules and auth-events selection, state resolution v1,
//! v2 and v2.1, the client projection of account-key rooms, the account-key invite handshake and
//! the rule for serving redactions. ruma supplies the primitives and the authorisation rules;
//! state resolution is this crate's own (on dense indices, validated against ruma's); the API
//! here is ours, so callers never touch ruma's state-res types.
//!
//! Public API, by task:
//!
//! - Versions: [`version::RoomVersion::get`] (unknown ids → [`version::UnsupportedRoomVersion`],
//!   `errcode()` = `M_UNSUPPORTED_ROOM_VERSION`), [`version::RoomVersion::default_for_new_rooms`],
//!   [`version::RoomVersion::all`].
//! - Local sends: [`auth::select_auth_events`] (or [`auth::auth_types_for_event`]) for
//!   `auth_events`, then [`pdu::build_pdu`]`(partial, version, EventSigner)` which adds the
//!   content hash, signs with the key the version demands ([`pdu::EventSigner::Server`] or
//!   [`pdu::EventSigner::Account`]), checks the format and computes the event id; then
//!   [`auth::check_against_state`]. Co-signing (restricted-join authoriser, invites):
//!   [`pdu::add_signature`].
//! - Receiving PDUs, in the spec's order: [`pdu::Pdu::from_federation`] (format; drop on error)
//!   → [`verify::required_server_keys`] (what to fetch; empty in account-key rooms) →
//!   [`verify::verify_pdu`] (`Err` → drop, `Ok(SignaturesOnly)` → keep [`pdu::Pdu::redacted`],
//!   `Ok(All)` → keep) → [`auth::check_against_auth_events`] (reject) →
//!   [`auth::check_against_state`] with the state before (reject) and the current state
//!   (soft-fail).
//! - Account-key invites (invite v2): [`invite::rekey_invite`] (invitee's server) and
//!   [`invite::accept_rekeyed_invite`] (inviter's server).
//! - State: [`state_res::resolve_state`]`(version, forks, auth_chains, fetch_event, subgraph)`,
//!   [`auth::auth_chain`], [`state_res::conflicted_state_subgraph`].
//! - Serving redactions: [`redaction::redaction_applies`] (power, or same domain; in account-key
//!   rooms same key or both vouched for on that domain), [`redaction::user_power_level`].
//! - JSON and hashes: [`canonical::parse_object`], [`canonical::to_canonical_string`],
//!   [`canonical::content_hash`], [`canonical::reference_hash`], [`canonical::event_id`],
//!   [`canonical::room_id_for_create_event`], [`canonical::redact`].
//! - Signing arbitrary JSON: [`signing::sign_json`], [`signing::verify_json`],
//!   [`signing::sign_json_with_account_key`], [`signing::verify_json_with_account_key`] and the
//!   batch [`signing::verify_json_with_account_keys`] (`/query/accounts` answers; ed25519 batch
//!   equations on every core, [`signing::verify_json_with_account_keys_threads`] to cap the
//!   threads), keys as
//!   [`signing::KeyPair`] / [`signing::PublicKey`].
//! - Account keys: [`account_key::AccountKey::parse`] (strict grammar),
//!   [`account_key::KeyFormUserId::parse`], [`account_key::looks_like_account_key`]; weak
//!   (small-order) keys and non-canonical point encodings are refused, and account-key
//!   signatures are checked strictly.
//! - `/query/accounts`: [`query_accounts::signed_account_answer`] and
//!   [`query_accounts::signed_erasure`] (serving), [`query_accounts::classify_answer`] (asking).
//! - Clients: [`pdu::Pdu::client_event`] (Client-Server format), then
//!   [`projection::project_for_client`]`(version, event, reader, lookup)` → the event as
//!   that client sees it, or `None`.

pub mod account_key;
pub mod auth;
pub mod canonical;
pub mod invite;
pub mod pdu;
pub mod projection;
pub mod query_accounts;
pub mod receipt;
pub mod redaction;
pub mod signing;
pub mod state_res;
pub mod verify;
pub mod version;

pub use account_key::{AccountKey, AccountKeyError, KeyFormUserId};
pub use auth::AuthError;
pub use pdu::{EventSigner, Pdu, PduError};
pub use projection::KeyVerification;
pub use signing::{KeyPair, PublicKey, SignatureError};
pub use verify::Verified;
pub use version::{RoomVersion, UnsupportedRoomVersion};

/// Canonical JSON values, re-exported so callers need no direct ruma dependency.
pub use ruma::{CanonicalJsonObject, CanonicalJsonValue};

//! Checking hashes and signatures on received PDUs (server-server API "Validating hashes and
//! signatures on received events"), per room version.
//!
//! Server-key rooms: the caller fetches server keys, so [`required_server_keys`] says which
//! (server, key id) pairs a PDU needs and [`verify_pdu`] takes them as a map. Account-key rooms
//! (MSC4243): the key is the sender's localpart, so nothing is fetched and there is no validity
//! period.
//!
//! Outcomes differ by failure: bad or missing signatures → drop the event; a content hash
//! mismatch with good signatures → keep the redacted form.

use std::collections::{BTreeMap, BTreeSet};

use ruma::CanonicalJsonObject;

use crate::account_key::{KeyFormUserId, split_user_id};
use crate::canonical::{self, get_object, get_str};
use crate::pdu::Pdu;
use crate::signing::{
    ACCOUNT_KEY_ID, PublicKey, SignatureError, find_signature_for, signing_bytes,
    verify_account_signature_over, verify_signature_over,
};
use crate::version::{RoomVersion, SigningScheme};

/// A server's public key and until when it may be used (`valid_until_ts`, or `expired_ts` for an
/// old key), in milliseconds since the epoch.
#[derive(Clone, Debug)]
pub struct ServerKey {
    pub key: PublicKey,
    pub valid_until_ts: u64,
}

/// Server public keys the caller has fetched: server name → key id → key.
pub type ServerKeys = BTreeMap<String, BTreeMap<String, ServerKey>>;

/// What a successful check found.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Verified {
    /// Signatures and content hash are good: keep the event as is.
    All,
    /// Signatures are good but the content hash does not match: keep only the redacted form.
    SignaturesOnly,
}

/// The servers whose signatures a PDU needs (server-key rooms): the sender's server, except for
/// invites made from a third-party invite; in rooms 1 and 2 the server named in the `event_id`;
/// from room 8 the server of `join_authorised_via_users_server`. Empty for account-key rooms.
/// The caller fetches every key id those servers signed with: see [`required_server_keys`].
pub fn required_servers(pdu: &Pdu, version: &RoomVersion) -> BTreeSet<String> {
    let mut servers = BTreeSet::new();
    if version.signing() == SigningScheme::AccountKey {
        return servers;
    }
    if !is_third_party_invite(pdu)
        && let Some((_, domain)) = split_user_id(pdu.sender())
    {
        servers.insert(domain.to_owned());
    }
    if version.event_ids_in_pdu()
        && let Some((_, domain)) = pdu.event_id().split_once(':')
    {
        servers.insert(domain.to_owned());
    }
    if version.auth_rules().restricted_joins
        && let Some(authoriser) = authorising_user(pdu.json())
        && let Some((_, domain)) = split_user_id(authoriser)
    {
        servers.insert(domain.to_owned());
    }
    servers
}

/// The (server, key id) pairs the caller must fetch before [`verify_pdu`]: for each required
/// server, the ed25519 key ids it signed the PDU with.
pub fn required_server_keys(pdu: &Pdu, version: &RoomVersion) -> BTreeSet<(String, String)> {
    let signatures = get_object(pdu.json(), "signatures");
    let mut out = BTreeSet::new();
    for server in required_servers(pdu, version) {
        if let Some(per_server) = signatures.and_then(|s| get_object(s, &server)) {
            for key_id in per_server.keys().filter(|k| k.starts_with("ed25519:")) {
                out.insert((server.clone(), key_id.clone()));
            }
        }
    }
    out
}

fn is_third_party_invite(pdu: &Pdu) -> bool {
    pdu.event_type() == "m.room.member"
        && pdu.content_object().is_some_and(|c| {
            get_str(c, "membership") == Some("invite") && c.contains_key("third_party_invite")
        })
}

/// `content.join_authorised_via_users_server` of a member event, if present.
fn authorising_user(json: &CanonicalJsonObject) -> Option<&str> {
    if get_str(json, "type") != Some("m.room.member") {
        return None;
    }
    get_object(json, "content").and_then(|c| get_str(c, "join_authorised_via_users_server"))
}

/// Check a received PDU's signatures and content hash.
///
/// `server_keys` is used only in server-key rooms; pass an empty map for account-key rooms.
/// From room 5, server keys must be valid at the event's `origin_server_ts`; before, any key the
/// caller supplies counts however old. Account keys have no validity period.
pub fn verify_pdu(
    pdu: &Pdu,
    version: &RoomVersion,
    server_keys: &ServerKeys,
) -> Result<Verified, SignatureError> {
    // Signatures cover the redacted form, so a redacted copy of a good event still verifies.
    let redacted = canonical::redact(pdu.json(), version)?;
    let message = signing_bytes(&redacted);
    match version.signing() {
        SigningScheme::AccountKey => {
            let sender = KeyFormUserId::parse(pdu.sender())
                .map_err(|e| SignatureError::BadAccountKey(e.to_string()))?;
            check_account_signature(pdu.json(), &message, &sender)?;
            // MSC4243: restricted joins carry a signature by the authoriser's *account key*.
            if let Some(authoriser) = authorising_user(pdu.json()) {
                let authoriser = KeyFormUserId::parse(authoriser)
                    .map_err(|e| SignatureError::BadAccountKey(e.to_string()))?;
                check_account_signature(pdu.json(), &message, &authoriser)?;
            }
        }
        SigningScheme::ServerKey => {
            for server in required_servers(pdu, version) {
                check_server_signature(pdu, version, &message, &server, server_keys)?;
            }
        }
    }
    let expected = get_object(pdu.json(), "hashes").and_then(|h| get_str(h, "sha256"));
    let actual = canonical::content_hash(pdu.json());
    Ok(if expected.is_some_and(|e| hash_matches(e, &actual)) {
        Verified::All
    } else {
        Verified::SignaturesOnly
    })
}

/// Compare a received hash (which may carry `=` padding) with our unpadded one.
/// Check that `server` signed the PDU with a key in `server_keys` (every ed25519 signature of
/// it we have a key for verifies, and at least one does): for a signature the room version does
/// not require of the event, such as the invitee's server's on an invite, which the inviting
/// server checks before it sends the invite on.
pub fn verify_server_signature(
    pdu: &Pdu,
    version: &RoomVersion,
    server: &str,
    server_keys: &ServerKeys,
) -> Result<(), SignatureError> {
    let redacted = canonical::redact(pdu.json(), version)?;
    check_server_signature(pdu, version, &signing_bytes(&redacted), server, server_keys)
}

fn hash_matches(received: &str, ours: &str) -> bool {
    received.trim_end_matches('=') == ours
}

fn check_account_signature(
    json: &CanonicalJsonObject,
    message: &str,
    user: &KeyFormUserId,
) -> Result<(), SignatureError> {
    let entity = user.key.as_str();
    // Only `ed25519:1` counts; a signature under any other key id is not the account key's.
    let signature = find_signature_for(json, entity, ACCOUNT_KEY_ID)?;
    verify_account_signature_over(message, signature, &user.key)
}

fn check_server_signature(
    pdu: &Pdu,
    version: &RoomVersion,
    message: &str,
    server: &str,
    server_keys: &ServerKeys,
) -> Result<(), SignatureError> {
    let signatures =
        get_object(pdu.json(), "signatures").ok_or(SignatureError::BadSignaturesField)?;
    let per_server = match signatures.get(server) {
        Some(ruma::CanonicalJsonValue::Object(o)) => o,
        Some(_) => return Err(SignatureError::BadSignaturesField),
        None => {
            return Err(SignatureError::Missing {
                entity: server.to_owned(),
                key_id: "ed25519:*".to_owned(),
            });
        }
    };
    // The spec: at least one signature by a key we understand and know must verify; every
    // ed25519 signature we have a key for must verify.
    let mut verified_any = false;
    let mut first_error = None;
    for key_id in per_server.keys().filter(|k| k.starts_with("ed25519:")) {
        let Some(key) = server_keys.get(server).and_then(|k| k.get(key_id)) else {
            first_error.get_or_insert(SignatureError::KeyNotSupplied {
                entity: server.to_owned(),
                key_id: key_id.clone(),
            });
            continue;
        };
        if version.enforce_key_validity() && pdu.origin_server_ts() > key.valid_until_ts {
            first_error.get_or_insert(SignatureError::KeyExpired {
                entity: server.to_owned(),
                key_id: key_id.clone(),
            });
            continue;
        }
        let signature = find_signature_for(pdu.json(), server, key_id)?;
        verify_signature_over(message, signature, server, key_id, &key.key)?;
        verified_any = true;
    }
    if verified_any {
        Ok(())
    } else {
        Err(first_error.unwrap_or(SignatureError::Missing {
            entity: server.to_owned(),
            key_id: "ed25519:*".to_owned(),
        }))
    }
}

//! The account-key invite handshake (MSC4243.md §2.5 items 32–33, §4 Q7), as pure functions.
//!
//! The inviter cannot know the invitee's key, so it sends the invite with the account-name
//! `state_key`; the invitee's server swaps in the key-form id, recomputes the content hash and
//! signs with the invitee's account key; the inviter checks that nothing else changed and then
//! adds the sender's signature. Because the hash changed, the event id changes too: the
//! `eventId` path parameter is advisory.

use ruma::{CanonicalJsonObject, CanonicalJsonValue};

use crate::account_key::{KeyFormUserId, split_user_id};
use crate::canonical::{self, get_object, get_str};
use crate::pdu::{EventSigner, Pdu, PduError, add_signature};
use crate::signing::{KeyPair, SignatureError};
use crate::verify::{Verified, verify_pdu};
use crate::version::RoomVersion;

/// Why a returned invite is refused by the inviter.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum InviteError {
    #[error("not an m.room.member {0}")]
    WrongMembership(&'static str),
    #[error("the returned event changed {0}, not only state_key, hashes and signatures")]
    Changed(String),
    #[error("the new state_key is not a key-form id on the invitee's domain: {0}")]
    BadStateKey(String),
    #[error("the invitee's signature or hash does not check: {0}")]
    BadSignature(String),
    #[error(transparent)]
    Pdu(#[from] PduError),
}

/// The two handshakes that name a user by account name and have the user's server put in the
/// key: an invite (§2.5 items 32–33), and a pre-emptive ban of a user whose key the room does
/// not know (item 34, `/ban`). They differ in whether the target's signature is required: an
/// invitee's key must sign; a ban's target server MAY co-sign (Q7), and its signature is
/// checked when it is there.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Rekeying {
    Invite,
    Ban,
}

impl Rekeying {
    fn membership(self) -> &'static str {
        match self {
            Rekeying::Invite => "invite",
            Rekeying::Ban => "ban",
        }
    }
}

fn check_membership(json: &CanonicalJsonObject, kind: Rekeying) -> Result<(), InviteError> {
    let membership = get_object(json, "content").and_then(|c| get_str(c, "membership"));
    if get_str(json, "type") != Some("m.room.member") || membership != Some(kind.membership()) {
        return Err(InviteError::WrongMembership(kind.membership()));
    }
    Ok(())
}

/// Invitee's side: put the invitee's key-form id in `state_key`, recompute `hashes`, drop the
/// now-stale signatures and sign with the invitee's account key.
pub fn rekey_invite(
    sent: &CanonicalJsonObject,
    version: &RoomVersion,
    invitee: &KeyPair,
    invitee_server: &str,
) -> Result<Pdu, InviteError> {
    rekey_membership(sent, version, invitee, invitee_server, Rekeying::Invite)
}

/// The target's server's side of either handshake: the `kind` of membership event, its
/// `state_key` made the target's key-form id, `hashes` recomputed, the stale signatures dropped,
/// signed with the target's account key.
pub fn rekey_membership(
    sent: &CanonicalJsonObject,
    version: &RoomVersion,
    invitee: &KeyPair,
    invitee_server: &str,
    kind: Rekeying,
) -> Result<Pdu, InviteError> {
    check_membership(sent, kind)?;
    let mut json = sent.clone();
    json.remove("signatures");
    json.remove("hashes");
    json.remove("unsigned");
    json.insert(
        "state_key".to_owned(),
        CanonicalJsonValue::String(invitee.account_key().user_id(invitee_server)),
    );
    let mut hashes = CanonicalJsonObject::new();
    hashes.insert(
        "sha256".to_owned(),
        CanonicalJsonValue::String(canonical::content_hash(&json)),
    );
    json.insert("hashes".to_owned(), CanonicalJsonValue::Object(hashes));
    json.insert(
        "signatures".to_owned(),
        CanonicalJsonValue::Object(CanonicalJsonObject::new()),
    );
    let mut pdu = Pdu::from_canonical(json, version)?;
    add_signature(&mut pdu, version, EventSigner::Account(invitee))?;
    Ok(pdu)
}

/// Inviter's side: check that `returned` is `sent` with only `state_key`, `hashes` and
/// `signatures` changed, that the new state key is a key-form id on the domain of the
/// account-name id we invited, and that its key signed the event with a correct hash. On
/// success, add the sender's signature with `inviter` and return the final event.
pub fn accept_rekeyed_invite(
    sent: &CanonicalJsonObject,
    returned: &Pdu,
    version: &RoomVersion,
    inviter: &KeyPair,
) -> Result<Pdu, InviteError> {
    accept_rekeyed(sent, returned, version, inviter, Rekeying::Invite)
}

/// The sender's side of either handshake (see [`accept_rekeyed_invite`]); for a ban the
/// target's signature is checked only when the target's server gave one.
pub fn accept_rekeyed(
    sent: &CanonicalJsonObject,
    returned: &Pdu,
    version: &RoomVersion,
    inviter: &KeyPair,
    kind: Rekeying,
) -> Result<Pdu, InviteError> {
    check_membership(sent, kind)?;
    let ignored = ["state_key", "hashes", "signatures", "unsigned"];
    let strip = |o: &CanonicalJsonObject| {
        let mut o = o.clone();
        for k in ignored {
            o.remove(k);
        }
        o
    };
    let (a, b) = (strip(sent), strip(returned.json()));
    if a != b {
        let changed = a
            .keys()
            .chain(b.keys())
            .find(|k| a.get(*k) != b.get(*k))
            .cloned()
            .unwrap_or_default();
        return Err(InviteError::Changed(changed));
    }
    let invited_domain = get_str(sent, "state_key")
        .and_then(split_user_id)
        .map(|(_, d)| d.to_owned())
        .ok_or_else(|| InviteError::BadStateKey("the sent invite has no user id".into()))?;
    let new_key = returned.state_key().unwrap_or_default();
    let parsed =
        KeyFormUserId::parse(new_key).map_err(|e| InviteError::BadStateKey(e.to_string()))?;
    if parsed.server_name != invited_domain {
        return Err(InviteError::BadStateKey(format!(
            "{new_key} is not on {invited_domain}"
        )));
    }
    // The target's signature, over the redacted form, by the key in the new state key:
    // required of an invitee, checked when present on a ban.
    let signed_by_target = get_object(returned.json(), "signatures")
        .is_some_and(|signatures| signatures.contains_key(parsed.key.as_str()));
    if kind == Rekeying::Invite || signed_by_target {
        let redacted = canonical::redact(returned.json(), version).map_err(PduError::from)?;
        crate::signing::verify_json_with_account_key(&redacted, &parsed.key)
            .map_err(|e: SignatureError| InviteError::BadSignature(e.to_string()))?;
    }
    let mut signed = returned.clone();
    add_signature(&mut signed, version, EventSigner::Account(inviter))?;
    match verify_pdu(&signed, version, &Default::default()) {
        Ok(Verified::All) => Ok(signed),
        Ok(Verified::SignaturesOnly) => {
            Err(InviteError::BadSignature("content hash mismatch".into()))
        }
        Err(e) => Err(InviteError::BadSignature(e.to_string())),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn v() -> &'static RoomVersion {
        RoomVersion::get("org.matrix.12.4243").unwrap()
    }

    fn sent_invite(inviter: &KeyPair) -> CanonicalJsonObject {
        canonical::parse_object(
            serde_json::json!({"type": "m.room.member", "state_key": "@bob:b.example",
                "sender": inviter.account_key().user_id("a.example"),
                "room_id": "!AAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAA",
                "content": {"membership": "invite"}, "origin_server_ts": 5, "depth": 3,
                "prev_events": ["$p"], "auth_events": ["$a"], "hashes": {"sha256": "x"},
                "signatures": {}})
            .to_string()
            .as_bytes(),
        )
        .unwrap()
    }

    /// §6 case 26 (the pure part): the invitee rekeys, the inviter checks and co-signs, and a
    /// third server accepts the result.
    #[test]
    fn invite_handshake_round_trip() {
        let inviter = KeyPair::from_seed(&[1; 32]);
        let bob = KeyPair::from_seed(&[2; 32]);
        let sent = sent_invite(&inviter);
        let returned = rekey_invite(&sent, v(), &bob, "b.example").unwrap();
        assert_eq!(
            returned.state_key(),
            Some(bob.account_key().user_id("b.example").as_str())
        );
        let final_event = accept_rekeyed_invite(&sent, &returned, v(), &inviter).unwrap();
        assert_eq!(
            verify_pdu(&final_event, v(), &Default::default()),
            Ok(Verified::All)
        );
        assert_eq!(final_event.event_id(), returned.event_id());
    }

    #[test]
    fn inviter_refuses_tampered_or_foreign_answers() {
        let inviter = KeyPair::from_seed(&[1; 32]);
        let bob = KeyPair::from_seed(&[2; 32]);
        let sent = sent_invite(&inviter);
        // Another domain.
        let foreign = rekey_invite(&sent, v(), &bob, "evil.example").unwrap();
        assert!(matches!(
            accept_rekeyed_invite(&sent, &foreign, v(), &inviter),
            Err(InviteError::BadStateKey(_))
        ));
        // Content changed.
        let mut changed = sent.clone();
        changed.insert(
            "content".into(),
            CanonicalJsonValue::Object(
                canonical::parse_object(br#"{"membership":"invite","reason":"x"}"#).unwrap(),
            ),
        );
        let tampered = rekey_invite(&changed, v(), &bob, "b.example").unwrap();
        assert_eq!(
            accept_rekeyed_invite(&sent, &tampered, v(), &inviter).unwrap_err(),
            InviteError::Changed("content".into())
        );
        // Signed by a key other than the one in the state key.
        let mut json = rekey_invite(&sent, v(), &bob, "b.example")
            .unwrap()
            .into_json();
        json.insert(
            "signatures".into(),
            CanonicalJsonValue::Object(CanonicalJsonObject::new()),
        );
        let mut unsigned = Pdu::from_canonical(json, v()).unwrap();
        add_signature(
            &mut unsigned,
            v(),
            EventSigner::Account(&KeyPair::from_seed(&[3; 32])),
        )
        .unwrap();
        assert!(matches!(
            accept_rekeyed_invite(&sent, &unsigned, v(), &inviter),
            Err(InviteError::BadSignature(_))
        ));
        // Not an invite.
        let mut join = sent.clone();
        join.insert(
            "content".into(),
            CanonicalJsonValue::Object(
                canonical::parse_object(br#"{"membership":"join"}"#).unwrap(),
            ),
        );
        assert_eq!(
            rekey_invite(&join, v(), &bob, "b.example").unwrap_err(),
            InviteError::WrongMembership("invite")
        );
    }

    /// The ban handshake (§2.5 item 34, Q7): the target's server puts in the key; its
    /// signature is checked when given and not required.
    #[test]
    fn ban_handshake_takes_the_targets_signature_as_optional() {
        let banner = KeyPair::from_seed(&[1; 32]);
        let target = KeyPair::from_seed(&[2; 32]);
        let mut sent = sent_invite(&banner);
        sent.insert(
            "content".into(),
            CanonicalJsonValue::Object(
                canonical::parse_object(br#"{"membership":"ban"}"#).unwrap(),
            ),
        );
        let returned = rekey_membership(&sent, v(), &target, "b.example", Rekeying::Ban).unwrap();
        let signed = accept_rekeyed(&sent, &returned, v(), &banner, Rekeying::Ban).unwrap();
        assert_eq!(
            verify_pdu(&signed, v(), &Default::default()),
            Ok(Verified::All)
        );
        // Without the target's signature: taken.
        let mut json = returned.clone().into_json();
        json.insert(
            "signatures".into(),
            CanonicalJsonValue::Object(CanonicalJsonObject::new()),
        );
        let unsigned = Pdu::from_canonical(json, v()).unwrap();
        accept_rekeyed(&sent, &unsigned, v(), &banner, Rekeying::Ban).unwrap();
        // With a signature under the target's key that does not verify: refused.
        let mut json = returned.into_json();
        let mut bad = CanonicalJsonObject::new();
        bad.insert(
            "ed25519:1".into(),
            CanonicalJsonValue::String("AAAA".into()),
        );
        let mut signatures = CanonicalJsonObject::new();
        signatures.insert(
            target.account_key().as_str().to_owned(),
            CanonicalJsonValue::Object(bad),
        );
        json.insert("signatures".into(), CanonicalJsonValue::Object(signatures));
        let forged = Pdu::from_canonical(json, v()).unwrap();
        assert!(matches!(
            accept_rekeyed(&sent, &forged, v(), &banner, Rekeying::Ban),
            Err(InviteError::BadSignature(_))
        ));
        // An invite is not a ban.
        assert_eq!(
            rekey_membership(
                &sent_invite(&banner),
                v(),
                &target,
                "b.example",
                Rekeying::Ban
            )
            .unwrap_err(),
            InviteError::WrongMembership("ban")
        );
    }
}

//! Pre-emptive bans across servers in account-key rooms (MSC4243.md §2.5 items 34–35, §4 Q7):
//! `PUT /_matrix/federation/unstable/org.matrix.msc4243/ban/{roomId}/{eventId}`, both roles.
//!
//! A moderator here may ban another server's user whose key the room does not know (never a
//! member, not verified under that name). The ban is built with the target's account-name id as
//! its state key, signed by the moderator's account key and sent to the target's server
//! ([`Rooms::ban_remote`]), which puts in the user's key-form id, recomputes the hash and signs
//! with the user's account key ([`Rooms::receive_ban`]); the moderator's server checks that
//! nothing else changed (the target's signature is checked when given, not required: Q7),
//! signs, runs the auth rules on the final event and appends it. The key is then asked about
//! through `/query/accounts` before clients see the name. The handshake's pure steps are
//! `room_version::invite`'s, shared with invites. A ban of a user whose key is known (a member)
//! never comes here: it is an ordinary local send.
//!
//! The target's server stores nothing: the final ban reaches it, if it is in the room, in the
//! banning server's transaction. Its answer tells whether an account exists and gives its key,
//! the one way besides an invite to learn a key from a name (§2.5 item 35), so `/ban` is
//! rate-limited hard per requesting server (`rate_limits.federated_bans`, at the API), and a
//! moderator here must hold the ban level before this server asks anyone.

use myelin_room_version::{
    Pdu, RoomVersion,
    invite::{Rekeying, accept_rekeyed, rekey_membership},
    redaction::{PowerLevel, user_power_level},
    verify::{Verified, verify_pdu},
};
use myelin_store::RoomRow;
use ruma::{OwnedEventId, OwnedRoomId, RoomVersionId, ServerName, UserId};
use serde_json::{Map, Value, value::RawValue};

use super::{Rooms, events::state_by_key, version_of};
use crate::{Error, Result, federation::msc4243::ban};

/// A ban another server sent for one of our users (`PUT .../org.matrix.msc4243/ban/...`).
#[derive(Debug)]
pub struct InboundBan {
    pub room_id: String,
    pub event_id: String,
    pub room_version: String,
    pub event: Box<RawValue>,
}

impl Rooms {
    /// The target's server's side of `/ban` from `origin` (see the module documentation): a
    /// ban of an existing, active local account named by account name, sent by a user of
    /// `origin` and signed by their account key, in an account-key room. Answers the ban with
    /// the account's key-form id and the account key's signature; stores nothing.
    pub async fn receive_ban(&self, origin: &ServerName, ban: InboundBan) -> Result<Box<RawValue>> {
        let version =
            RoomVersion::get(&ban.room_version).map_err(|_| Error::IncompatibleRoomVersion {
                room_version: ban.room_version.clone(),
            })?;
        if !version.uses_account_keys() {
            return Err(Error::InvalidParam(format!(
                "/ban is for account-key rooms; room version {} is not one",
                version.id()
            )));
        }
        let pdu = Pdu::from_federation(ban.event.get().as_bytes(), version)
            .map_err(|e| Error::BadJson(format!("The ban is not a valid event: {e}")))?;
        if pdu.event_id() != ban.event_id {
            return Err(Error::BadJson(format!(
                "The event's id is {}, not the {} of the path",
                pdu.event_id(),
                ban.event_id
            )));
        }
        if pdu.room_id() != Some(ban.room_id.as_str()) {
            return Err(Error::BadJson(
                "The event is not for the room of the path".to_owned(),
            ));
        }
        if pdu.event_type() != "m.room.member"
            || super::append::membership_of(&pdu).as_deref() != Some("ban")
        {
            return Err(Error::BadJson(
                "The event is not an m.room.member ban".to_owned(),
            ));
        }
        let sender = UserId::parse(pdu.sender())
            .map_err(|_| Error::BadJson("The ban's sender is not a user".to_owned()))?;
        if sender.server_name() != origin {
            return Err(Error::Forbidden(format!(
                "{origin} cannot send a ban from {sender}"
            )));
        }
        let target = pdu
            .state_key()
            .and_then(|key| UserId::parse(key).ok())
            .ok_or_else(|| Error::BadJson("The ban's state key is not a user".to_owned()))?;
        if !self.is_local(&target) {
            return Err(Error::BadJson(format!(
                "{target} is not a user of this server"
            )));
        }
        match self.store.user_by_localpart(target.localpart()).await? {
            None => return Err(Error::NotFound(format!("No user {target} here"))),
            Some(user) if user.deactivated_ts.is_some() => {
                return Err(Error::Forbidden(format!("{target} is deactivated")));
            }
            Some(_) => {}
        }
        if !self.server_allowed(&ban.room_id, origin).await? {
            return Err(Error::Forbidden(format!(
                "Server {origin} is denied by the room's server ACL"
            )));
        }
        // Account-key rooms need no server keys: the sender's key is its id.
        if !matches!(
            verify_pdu(&pdu, version, &Default::default()),
            Ok(Verified::All)
        ) {
            return Err(Error::Forbidden(
                "The ban is not validly signed by its sender's account key".to_owned(),
            ));
        }
        let pair = self.account_keys.signing_key(target.localpart()).await?;
        let rekeyed = rekey_membership(
            pdu.json(),
            version,
            &pair,
            self.server_name.as_str(),
            Rekeying::Ban,
        )
        .map_err(|e| Error::BadJson(format!("The ban cannot be taken: {e}")))?;
        drop(pair);
        tracing::info!(room_id = %ban.room_id, %target, banner = %sender, "gave a pre-emptive ban its key");
        RawValue::from_string(rekeyed.canonical_json())
            .map_err(|e| Error::Internal(format!("serialising the rekeyed ban: {e}")))
    }

    /// A local moderator's ban of `target`, another server's user whose key `room` (an
    /// account-key room) does not know, through that server's `/ban` (see the module
    /// documentation). `content` has passed `change_membership`'s rules. Any failure leaves
    /// nothing stored: a refusal by the target's server is the client's error (403 stays 403,
    /// a 4xx keeps its status and errcode), an unreachable or unusable one is 502.
    pub(super) async fn ban_remote(
        &self,
        room: &RoomRow,
        sender: &UserId,
        target: &UserId,
        content: Map<String, Value>,
    ) -> Result<String> {
        let version = version_of(room)?;
        self.ensure_may_ban_unknown(room, version, sender).await?;
        let built = self
            .build_account_key_member(room, sender, target.as_str(), Value::Object(content))
            .await?;
        let federation = self.federation()?;
        let request = ban::Request::new(
            OwnedRoomId::try_from(room.room_id.as_str())
                .map_err(|e| Error::Internal(format!("stored room id: {e}")))?,
            OwnedEventId::try_from(built.pdu.event_id())
                .map_err(|e| Error::Internal(format!("built event id: {e}")))?,
            RoomVersionId::try_from(version.id())
                .map_err(|e| Error::Internal(format!("room version id: {e}")))?,
            RawValue::from_string(built.pdu.canonical_json())
                .map_err(|e| Error::Internal(format!("serialising the ban: {e}")))?,
        );
        let server = target.server_name();
        let answer = federation
            .outbound
            .send(server, request)
            .await
            .map_err(|err| {
                tracing::info!(room_id = %room.room_id, %target, %err, "the target's server did not take the ban");
                ban_refusal(server, err)
            })?;
        let bad =
            |why: String| Error::BadGateway(format!("{server} returned an unusable ban: {why}"));
        let returned = Pdu::from_federation(answer.event.get().as_bytes(), version)
            .map_err(|e| bad(format!("not a valid event: {e}")))?;
        let banner = self.account_keys.signing_key(sender.localpart()).await?;
        let signed = accept_rekeyed(built.pdu.json(), &returned, version, &banner, Rekeying::Ban)
            .map_err(|e| bad(e.to_string()))?;
        drop(banner);
        let target_key = signed.state_key().unwrap_or_default().to_owned();
        let built = self.with_final_pdu(room, built, signed).await?;
        let event_id = self.append_built(room, built).await?;
        // The key the target's server gave is a hint until its domain confirms it through
        // `/query/accounts` (Q7); clients see the name only then.
        let verifier = federation.account_verifier.clone();
        tokio::spawn(async move {
            if let Err(err) = verifier.verify(&[target_key]).await {
                tracing::warn!(%err, "asking about a banned user's account key failed");
            }
        });
        Ok(event_id)
    }

    /// Whether `sender` may ban a user the room does not know, checked before another server
    /// is asked (the auth rules run on the final event only, once the key is in): joined, at
    /// the ban level, and above the level such a user has (`users_default`). Without it any
    /// member could make this server ask other servers about their accounts.
    async fn ensure_may_ban_unknown(
        &self,
        room: &RoomRow,
        version: &RoomVersion,
        sender: &UserId,
    ) -> Result<()> {
        let sender_id = self.room_user_id(version, sender).await?;
        let keys = [
            ("m.room.create".to_owned(), String::new()),
            ("m.room.power_levels".to_owned(), String::new()),
            ("m.room.member".to_owned(), sender_id.clone()),
        ];
        let rows = self.store.current_state(room.room_nid, Some(&keys)).await?;
        let state = state_by_key(version, &rows)?;
        let get = |kind: &str, key: &str| state.get(&(kind.to_owned(), key.to_owned()));
        let joined = get("m.room.member", &sender_id)
            .is_some_and(|member| super::append::membership_of(member).as_deref() == Some("join"));
        if !joined {
            return Err(Error::Forbidden("You are not in this room".to_owned()));
        }
        let create = get("m.room.create", "")
            .ok_or_else(|| Error::Internal("the room has no create event".to_owned()))?;
        let power = get("m.room.power_levels", "");
        let level_of = |field: &str, default: i64| {
            power
                .and_then(Pdu::content_object)
                .and_then(|content| content.get(field))
                .and_then(|value| match value {
                    myelin_room_version::CanonicalJsonValue::Integer(i) => Some(i64::from(*i)),
                    _ => None,
                })
                .unwrap_or(default)
        };
        let own = user_power_level(version, &sender_id, create, power);
        if own < PowerLevel::Int(level_of("ban", 50))
            || own <= PowerLevel::Int(level_of("users_default", 0))
        {
            return Err(Error::Forbidden(
                "You do not have the power to ban users in this room".to_owned(),
            ));
        }
        Ok(())
    }
}

/// The target's server's refusal of a ban as the client's error: a 403 stays a 403 with the
/// peer's message, a server that does not serve `/ban` (`M_UNRECOGNIZED`, or a bare 404/405)
/// is 502 like an unreachable one, and any other 4xx keeps its status and errcode (404 for an
/// unknown user, 429 when it limits us).
fn ban_refusal(server: &ServerName, err: myelin_federation::FederationError) -> Error {
    let myelin_federation::FederationError::Status { status, body } = &err else {
        return Error::BadGateway(format!("Could not ban through {server}: {err}"));
    };
    let parsed: Option<Map<String, Value>> = serde_json::from_str(body).ok();
    let errcode = parsed
        .as_ref()
        .and_then(|b| b.get("errcode"))
        .and_then(Value::as_str);
    match (*status, errcode) {
        (403, _) => Error::Forbidden(format!(
            "{server} refused the ban: {}",
            parsed
                .as_ref()
                .and_then(|b| b.get("error"))
                .and_then(Value::as_str)
                .unwrap_or("forbidden")
        )),
        (_, Some("M_UNRECOGNIZED")) | (404 | 405, None) => Error::BadGateway(format!(
            "{server} does not take pre-emptive bans of its users (MSC4243 /ban)"
        )),
        _ => crate::remote_membership::remote_error(server, err),
    }
}

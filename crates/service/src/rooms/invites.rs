//! Invites across servers, both ways, and the rejection of an invite to a room this server is
//! not in.
//!
//! - Inbound (`PUT /_matrix/federation/v2/invite/{roomId}/{eventId}`, [`Rooms::receive_invite`]):
//!   an invite of a local user, sent by a user of the requesting server, validly signed, with
//!   the room's create event in `invite_room_state` (MSC4311, spec v1.16: a full PDU of the room,
//!   or the stripped form older servers send). We add our signature and answer with it. If this
//!   server is in the room the event goes through the normal receive path (the inviting server
//!   sends it in a transaction too, which then finds it stored); if not, the room has no state
//!   here, and the invite is stored outside it (`Store::persist_outside_membership`): the room
//!   row, the event as an outlier, the user's membership, and the stripped state that `/sync`
//!   shows the invitee.
//! - Outbound ([`Rooms::invite_remote`], from `change_membership`): the invite is built as any
//!   local event but not appended; the invitee's server signs it through `/invite`, and only the
//!   event it returns (ours, with its valid signature added) is appended. Any failure leaves
//!   nothing stored and is the client's error.
//! - Rejection ([`Rooms::reject_outside_invite`]): `make_leave`/`send_leave` through the inviting
//!   server (then the servers named in the invite's stripped state); if none takes it, the leave
//!   is made out of band, here only, as the spec allows: the invite is gone from the user's
//!   syncs either way.
//! - Rescission ([`Rooms::receive_rescinded_invite`], from the transaction receiver): the
//!   inviter's leave for the invitee (a kick), sent to the invitee's server as the target's, is
//!   taken for a room this server is not in only from the inviter, through their server, validly
//!   signed, citing the invite among its auth events (so not an older leave arriving late), and
//!   stored outside the room like a rejection.
//!
//! Account-key rooms (MSC4243.md §2.5, Q7) have an invite handshake of their own
//! (`room_version::invite`): the inviter sends the invite with the invitee's account-name id as
//! its state key; the invitee's server puts in the invitee's key-form id, recomputes the hash,
//! signs with the invitee's account key and returns it; the inviter checks that nothing else
//! changed and that the new key signed, signs it and appends it (its id is a new one: the path's
//! `eventId` is advisory). The invitee's key is then asked about through `/query/accounts`
//! before clients see its name (Q7).

use std::{
    collections::{BTreeMap, BTreeSet},
    sync::Arc,
};

use myelin_room_version::{
    CanonicalJsonObject, CanonicalJsonValue, Pdu, RoomVersion,
    invite::{accept_rekeyed_invite, rekey_invite},
    pdu::{add_signature, build_pdu},
    verify::{ServerKeys, required_server_keys, verify_pdu, verify_server_signature},
};
use myelin_store::{OutlierEvent, OutsideMembership, RoomRow};
use ruma::{
    OwnedEventId, OwnedRoomId, OwnedServerName, OwnedUserId, RoomVersionId, ServerName, UserId,
    api::federation::membership::{
        RawStrippedState, create_invite, create_leave_event, prepare_leave_event,
    },
};
use serde_json::{Map, Value, json, value::RawValue};

use super::{
    Rooms,
    events::{LocalEvent, Sent, pdu_error},
    pdu_of, version_of,
};
use crate::{Error, Result, now_millis};

/// The state events shown to an invitee before they join (the spec's stripped state), and sent
/// to the invitee's server with an invite.
pub(super) const STRIPPED_STATE_TYPES: &[&str] = &[
    "m.room.create",
    "m.room.join_rules",
    "m.room.name",
    "m.room.avatar",
    "m.room.canonical_alias",
    "m.room.encryption",
    "m.room.topic",
];

/// The most events an inbound `invite_room_state` may hold (the spec lists seven kinds), and the
/// most servers whose keys checking them may fetch: a peer cannot make one invite cost this
/// server a key fetch from each of a thousand servers.
const MAX_INVITE_ROOM_STATE: usize = 50;
const MAX_INVITE_ROOM_STATE_SERVERS: usize = 5;

/// What `Rooms` needs to speak to other servers about memberships.
#[derive(Debug, Clone)]
pub struct RoomFederation {
    pub outbound: Arc<crate::federation::Outbound>,
    pub remote_keys: Arc<crate::remote_keys::RemoteKeys>,
    /// Asks other servers about account keys an invite handshake brings (MSC4243.md Q7).
    pub account_verifier: Arc<crate::account_verification::AccountVerifier>,
}

/// An invite another server sent (`PUT /_matrix/federation/v2/invite/{roomId}/{eventId}`).
#[derive(Debug)]
pub struct InboundInvite {
    pub room_id: String,
    pub event_id: String,
    pub room_version: String,
    pub event: Box<RawValue>,
    pub invite_room_state: Vec<Box<RawValue>>,
}

impl Rooms {
    /// Lets rooms speak to other servers: invites across servers and their rejection.
    pub fn with_federation(mut self, federation: RoomFederation) -> Self {
        self.federation = Some(federation);
        self
    }

    pub(super) fn federation(&self) -> Result<&RoomFederation> {
        self.federation
            .as_ref()
            .ok_or_else(|| Error::Internal("rooms were started without federation".to_owned()))
    }

    /// Whether this server holds the room's state (it created the room or joined it), which a
    /// local event is built on. A room row that exists only because a remote server invited a
    /// local user (or for the rejection of such an invite) has none. (Whether a local user is
    /// in the room now, which decides whether a join goes through another server, is
    /// [`Rooms::is_resident`].)
    pub async fn holds_state(&self, room: &RoomRow) -> Result<bool> {
        Ok(self
            .store
            .current_state_group(room.room_nid)
            .await?
            .is_some())
    }

    /// Whether `user`'s membership of `room` is an invite or a knock made outside the room (its
    /// event an outlier: stored by [`Rooms::receive_invite`] or a knock through another server
    /// while this server was not in it), which a leave rejects or rescinds through another
    /// server ([`Rooms::reject_outside_invite`]).
    pub(super) async fn member_from_outside(&self, room: &RoomRow, user: &UserId) -> Result<bool> {
        let Some((membership, event_nid, _)) =
            self.store.membership(room.room_nid, user.as_str()).await?
        else {
            return Ok(false);
        };
        Ok(matches!(membership.as_str(), "invite" | "knock")
            && self.store.event_status(event_nid).await?
                == Some(myelin_store::EventStatus::Outlier))
    }

    /// A leave for a local user whose invite to `room` (a room this server is not in) is held
    /// outside it, arriving in a transaction from `origin`: the inviter rescinding the invite
    /// (a kick of an invitee). Taken only from the user who sent the invite, through their
    /// server, validly signed; then stored outside the room like a rejection, and the invitee's
    /// clients see the room left. Returns whether it was taken (`false`: not such a leave,
    /// and the caller refuses it as for any room this server is not in).
    pub async fn receive_rescinded_invite(
        &self,
        origin: &ServerName,
        room: &RoomRow,
        bytes: &[u8],
    ) -> Result<bool> {
        let version = version_of(room)?;
        let Ok(pdu) = Pdu::from_federation(bytes, version) else {
            return Ok(false);
        };
        let Some(invitee) = pdu.state_key().and_then(|key| UserId::parse(key).ok()) else {
            return Ok(false);
        };
        if pdu.event_type() != "m.room.member"
            || super::append::membership_of(&pdu).as_deref() != Some("leave")
            || pdu.room_id() != Some(room.room_id.as_str())
            || !self.is_local(&invitee)
        {
            return Ok(false);
        }
        // The invitee's membership must be an invite held outside the room (its event an
        // outlier), sent by this leave's sender.
        let Some((membership, invite_nid, _)) = self
            .store
            .membership(room.room_nid, invitee.as_str())
            .await?
        else {
            return Ok(false);
        };
        let Some(invite) = self.store.event_by_nid(invite_nid).await? else {
            return Ok(false);
        };
        if membership != "invite" || invite.status != myelin_store::EventStatus::Outlier {
            return Ok(false);
        }
        let inviter_server = UserId::parse(invite.sender.as_str())
            .map(|sender| sender.server_name() == origin)
            .unwrap_or(false);
        if invite.sender != pdu.sender() || !inviter_server {
            tracing::info!(room_id = %room.room_id, %origin, sender = pdu.sender(), %invitee, "ignored a leave for an invitee not sent by the inviter");
            return Ok(false);
        }
        // It must rescind this invite: a kick of the invitee cites their membership, the
        // invite, among its auth events. An older leave (an unban that reached this server
        // after the invite that followed it) does not, and is no rescission.
        if !pdu.auth_events().any(|id| id == invite.event_id) {
            tracing::info!(room_id = %room.room_id, %origin, %invitee, "ignored a leave for an invitee that does not follow the invite");
            return Ok(false);
        }
        let keys = self.signing_keys(version, std::iter::once(&pdu)).await?;
        if !matches!(
            verify_pdu(&pdu, version, &keys),
            Ok(myelin_room_version::verify::Verified::All)
        ) {
            return Ok(false);
        }
        self.persist_outside(
            &room.room_id,
            version,
            &room.creator,
            &pdu,
            invitee.as_str(),
            "leave",
            None,
        )
        .await?;
        tracing::info!(room_id = %room.room_id, %invitee, "the inviter rescinded an invite");
        Ok(true)
    }

    /// `PUT /_matrix/federation/v2/invite/{roomId}/{eventId}` from `origin` (see the module
    /// documentation). Returns the invite event with this server's signature added.
    pub async fn receive_invite(
        &self,
        origin: &ServerName,
        invite: InboundInvite,
    ) -> Result<Box<RawValue>> {
        let version =
            RoomVersion::get(&invite.room_version).map_err(|_| Error::IncompatibleRoomVersion {
                room_version: invite.room_version.clone(),
            })?;
        let pdu = Pdu::from_federation(invite.event.get().as_bytes(), version)
            .map_err(|e| Error::BadJson(format!("The invite is not a valid event: {e}")))?;
        if pdu.event_id() != invite.event_id {
            return Err(Error::BadJson(format!(
                "The event's id is {}, not the {} of the path",
                pdu.event_id(),
                invite.event_id
            )));
        }
        if pdu.room_id() != Some(invite.room_id.as_str()) {
            return Err(Error::BadJson(
                "The event is not for the room of the path".to_owned(),
            ));
        }
        let membership = super::append::membership_of(&pdu);
        if pdu.event_type() != "m.room.member" || membership.as_deref() != Some("invite") {
            return Err(Error::BadJson(
                "The event is not an m.room.member invite".to_owned(),
            ));
        }
        let invitee = pdu
            .state_key()
            .and_then(|key| UserId::parse(key).ok())
            .ok_or_else(|| Error::BadJson("The invite's state key is not a user".to_owned()))?;
        if !self.is_local(&invitee) {
            return Err(Error::BadJson(format!(
                "{invitee} is not a user of this server"
            )));
        }
        let sender = UserId::parse(pdu.sender())
            .map_err(|_| Error::BadJson("The invite's sender is not a user".to_owned()))?;
        if sender.server_name() != origin {
            return Err(Error::Forbidden(format!(
                "{origin} cannot send an invite from {sender}"
            )));
        }
        if pdu
            .content_object()
            .is_some_and(|c| c.contains_key("third_party_invite"))
        {
            return Err(Error::Forbidden(
                "Third-party invites are not supported".to_owned(),
            ));
        }
        match self.store.user_by_localpart(invitee.localpart()).await? {
            None => return Err(Error::NotFound(format!("No user {invitee} here"))),
            Some(user) if user.deactivated_ts.is_some() => {
                return Err(Error::Forbidden(format!("{invitee} is deactivated")));
            }
            Some(_) => {}
        }
        // The invitee's invite rules (MSC4155): a blocked invite is refused before anything
        // is checked further or stored; an ignored one is taken, and `/sync` hides it.
        self.refuse_blocked_invite(&invitee, &sender).await?;
        let known = self.store.room(&invite.room_id).await?;
        if let Some(room) = &known
            && room.room_version != version.id()
        {
            return Err(Error::BadJson(format!(
                "Room {} has version {}, not {}",
                room.room_id,
                room.room_version,
                version.id()
            )));
        }
        let keys = self.signing_keys(version, std::iter::once(&pdu)).await?;
        if !matches!(
            verify_pdu(&pdu, version, &keys),
            Ok(myelin_room_version::verify::Verified::All)
        ) {
            return Err(Error::Forbidden(
                "The invite is not validly signed by the inviting server".to_owned(),
            ));
        }
        // In the room: someone here is joined (a room whose state is here but whose local
        // members all left is not followed any more, and takes the invite from outside too).
        let in_room = match &known {
            Some(room) => {
                self.store
                    .server_in_room(room.room_nid, self.server_name.as_str())
                    .await?
            }
            None => false,
        };
        if in_room && !self.server_allowed(&invite.room_id, origin).await? {
            return Err(Error::Forbidden(format!(
                "Server {origin} is denied by the room's server ACL"
            )));
        }
        let shown = self
            .checked_stripped_state(version, &invite.room_id, &invite.invite_room_state)
            .await?;
        // Not in the room: the create event it carries (checked above) says who may talk to it.
        if !in_room
            && let Some(create) = shown
                .iter()
                .find(|e| e["type"] == "m.room.create" && e["state_key"] == "")
            && !super::acl::create_admits(version, create, origin)
        {
            return Err(Error::Forbidden(format!(
                "Server {origin} may not invite into this room: it does not federate"
            )));
        }

        let signed = if version.uses_account_keys() {
            // The invite names the invitee by account name; their key-form id goes in, the
            // hash is recomputed and the invitee's account key signs (MSC4243.md §2.5). The
            // inviter signs what we return and sends the room that final event.
            let pair = self.account_keys.signing_key(invitee.localpart()).await?;
            rekey_invite(pdu.json(), version, &pair, self.server_name.as_str())
                .map_err(|e| Error::BadJson(format!("The invite cannot be taken: {e}")))?
        } else {
            let mut signed = pdu;
            add_signature(&mut signed, version, self.keys.event_signer()).map_err(pdu_error)?;
            signed
        };
        if version.uses_account_keys() {
            // The inviter's name is shown once their domain vouches for their key.
            let verifier = self.federation()?.account_verifier.clone();
            let inviter = sender.to_string();
            tokio::spawn(async move {
                if let Err(err) = verifier.verify(&[inviter]).await {
                    tracing::warn!(%err, "asking about an inviter's account key failed");
                }
            });
        }
        let json = signed.canonical_json();
        match known {
            // Account-key rooms: the event returned lacks the inviter's signature, so it is not
            // an event of the room yet; the inviting server's transaction brings the final one.
            Some(_) if in_room && version.uses_account_keys() => {}
            Some(room) if in_room => {
                // The normal path; the inviting server's transaction will find it stored.
                let outcome = self
                    .receive_pdus(&room.room_id, &[json.as_bytes()], &keys)
                    .await?;
                match outcome.first().map(|o| &o.outcome) {
                    Some(super::Received::Rejected(reason)) => {
                        return Err(Error::Forbidden(format!(
                            "The invite is not allowed in this room: {reason}"
                        )));
                    }
                    Some(super::Received::Dropped(reason)) => {
                        return Err(Error::Forbidden(format!("The invite is refused: {reason}")));
                    }
                    // Accepted, soft-failed or stored before; one citing events this server
                    // lacks comes again in the inviting server's transaction, which fetches them.
                    _ => {}
                }
            }
            _ => {
                let mut shown = shown;
                // The invite itself, as for local invites: clients find the inviter there.
                shown.push(stripped(&signed));
                let shown = serde_json::to_string(&shown)
                    .map_err(|e| Error::Internal(format!("serialising stripped state: {e}")))?;
                let creator =
                    invite_creator(&invite.invite_room_state).unwrap_or_else(|| sender.to_string());
                self.persist_outside(
                    &invite.room_id,
                    version,
                    &creator,
                    &signed,
                    invitee.as_str(),
                    "invite",
                    Some(&shown),
                )
                .await?;
                tracing::info!(room_id = %invite.room_id, %invitee, inviter = %sender, "stored an invite to a room this server is not in");
            }
        }
        RawValue::from_string(json)
            .map_err(|e| Error::Internal(format!("serialising the signed invite: {e}")))
    }

    /// The stripped state another server sends with a membership (`invite_room_state` of an
    /// inbound invite, `knock_room_state` of a knock's answer), checked as MSC4311 (spec
    /// v1.16) asks: it must hold the room's create event; events in the PDU format must be
    /// valid events of this room, validly signed (a create event of rooms whose id is its hash
    /// defines the room itself). The stripped format of older servers is taken as it is.
    /// Anything else is `400 M_MISSING_PARAM`. Returns what the user's clients are shown: the
    /// create event whole in the client format, the others stripped.
    pub(crate) async fn checked_stripped_state(
        &self,
        version: &RoomVersion,
        room_id: &str,
        events: &[Box<RawValue>],
    ) -> Result<Vec<Value>> {
        let refuse = |why: String| Error::MissingParam(format!("stripped room state: {why}"));
        if events.len() > MAX_INVITE_ROOM_STATE {
            return Err(Error::BadJson(format!(
                "invite_room_state may hold at most {MAX_INVITE_ROOM_STATE} events"
            )));
        }
        let mut shown = Vec::new();
        let mut pdus = Vec::new();
        let mut has_create = false;
        for raw in events {
            let value: Value =
                serde_json::from_str(raw.get()).map_err(|e| refuse(format!("not JSON: {e}")))?;
            let is_create =
                value["type"] == "m.room.create" && value["state_key"].as_str() == Some("");
            has_create |= is_create;
            if matches!(
                serde_json::from_str::<RawStrippedState>(raw.get()),
                Ok(RawStrippedState::Pdu(_))
            ) {
                let pdu = Pdu::from_federation(raw.get().as_bytes(), version)
                    .map_err(|e| refuse(format!("not a valid event: {e}")))?;
                if pdu.room_id_or_own() != room_id {
                    return Err(refuse(format!(
                        "{} is an event of another room",
                        pdu.event_id()
                    )));
                }
                if is_create {
                    shown.push(pdu.client_event(Map::new()));
                } else {
                    shown.push(stripped(&pdu));
                }
                pdus.push(pdu);
            } else {
                let (Some(kind), Some(key), Some(sender), Some(content)) = (
                    value["type"].as_str(),
                    value["state_key"].as_str(),
                    value["sender"].as_str(),
                    value["content"].as_object(),
                ) else {
                    return Err(refuse(
                        "an event without type, state key, sender or content".to_owned(),
                    ));
                };
                shown.push(
                    json!({"type": kind, "state_key": key, "sender": sender, "content": content}),
                );
            }
        }
        if !has_create {
            return Err(refuse(
                "the room's m.room.create event is missing".to_owned(),
            ));
        }
        let servers: BTreeSet<String> = pdus
            .iter()
            .flat_map(|pdu| {
                required_server_keys(pdu, version)
                    .into_iter()
                    .map(|(s, _)| s)
            })
            .collect();
        if servers.len() > MAX_INVITE_ROOM_STATE_SERVERS {
            return Err(refuse(format!(
                "events signed by more than {MAX_INVITE_ROOM_STATE_SERVERS} servers"
            )));
        }
        if !pdus.is_empty() {
            let keys = self.signing_keys(version, pdus.iter()).await?;
            for pdu in &pdus {
                verify_pdu(pdu, version, &keys).map_err(|e| {
                    refuse(format!("{} is not validly signed: {e}", pdu.event_id()))
                })?;
            }
        }
        Ok(shown)
    }

    /// The keys of the servers whose signatures `pdus` need, fetched as needed (keys that
    /// cannot be had are missing: the check that needs them fails).
    async fn signing_keys<'a>(
        &self,
        version: &RoomVersion,
        pdus: impl Iterator<Item = &'a Pdu>,
    ) -> Result<ServerKeys> {
        let mut wanted: BTreeMap<String, (BTreeSet<String>, u64)> = BTreeMap::new();
        for pdu in pdus {
            for (server, key_id) in required_server_keys(pdu, version) {
                let entry = wanted.entry(server).or_insert((BTreeSet::new(), u64::MAX));
                entry.0.insert(key_id);
                entry.1 = entry.1.min(pdu.origin_server_ts());
            }
        }
        self.server_keys(wanted).await
    }

    async fn server_keys(
        &self,
        wanted: BTreeMap<String, (BTreeSet<String>, u64)>,
    ) -> Result<ServerKeys> {
        let federation = self.federation()?;
        let mut keys = ServerKeys::new();
        for (server, (key_ids, oldest)) in wanted {
            let Ok(name) = OwnedServerName::try_from(server.as_str()) else {
                continue;
            };
            let key_ids: Vec<String> = key_ids.into_iter().collect();
            let found = federation
                .remote_keys
                .keys_for(&name, &key_ids, i64::try_from(oldest).unwrap_or(i64::MAX))
                .await?;
            keys.entry(server).or_default().extend(found);
        }
        Ok(keys)
    }

    /// Stores a local user's membership event in a room this server is not in.
    #[allow(clippy::too_many_arguments)]
    pub(crate) async fn persist_outside(
        &self,
        room_id: &str,
        version: &RoomVersion,
        creator: &str,
        pdu: &Pdu,
        user: &str,
        membership: &str,
        invite_room_state: Option<&str>,
    ) -> Result<()> {
        let json = pdu.canonical_json();
        let prev: Vec<String> = pdu.prev_events().map(str::to_owned).collect();
        let auth: Vec<String> = pdu.auth_events().map(str::to_owned).collect();
        self.store
            .persist_outside_membership(&OutsideMembership {
                room_id,
                room_version: version.id(),
                creator,
                event: OutlierEvent {
                    event_id: pdu.event_id(),
                    event_type: pdu.event_type(),
                    state_key: pdu.state_key(),
                    sender: pdu.sender(),
                    depth: i64::try_from(pdu.depth()).unwrap_or(i64::MAX),
                    origin_server_ts: i64::try_from(pdu.origin_server_ts()).unwrap_or(i64::MAX),
                    json: &json,
                    prev_event_ids: &prev,
                    auth_event_ids: &auth,
                    rejected: None,
                },
                user_id: user,
                membership,
                invite_room_state,
                now: now_millis(),
            })
            .await?;
        self.notify.notify();
        Ok(())
    }

    /// An invite by a local user of a user of another server (see the module documentation).
    /// `content` has passed `change_membership`'s rules.
    pub(super) async fn invite_remote(
        &self,
        room: &RoomRow,
        sender: &UserId,
        target: &UserId,
        event: LocalEvent<'_>,
    ) -> Result<String> {
        let version = version_of(room)?;
        let built = if version.uses_account_keys() {
            self.build_account_key_member(room, sender, target.as_str(), event.content)
                .await?
        } else {
            match self.build_unappended(room, sender, event).await? {
                Sent::Built(built) => built,
                Sent::Existing(event_id) | Sent::Appended(event_id) => return Ok(event_id),
            }
        };
        let federation = self.federation()?;
        let invite_room_state = self.invite_room_state_for_federation(room).await?;
        let request = create_invite::v2::Request::new(
            OwnedRoomId::try_from(room.room_id.as_str())
                .map_err(|e| Error::Internal(format!("stored room id: {e}")))?,
            OwnedEventId::try_from(built.pdu.event_id())
                .map_err(|e| Error::Internal(format!("built event id: {e}")))?,
            RoomVersionId::try_from(version.id())
                .map_err(|e| Error::Internal(format!("room version id: {e}")))?,
            raw_json(built.pdu.canonical_json())?,
            invite_room_state,
        );
        let answer = federation
            .outbound
            .send(target.server_name(), request)
            .await
            .map_err(|err| {
                tracing::info!(room_id = %room.room_id, %target, %err, "the invitee's server did not take the invite");
                match err {
                    // The invitee's invite rules (MSC4155) keep their own errcode for the
                    // client; any other refusal is a plain 403.
                    myelin_federation::FederationError::Status { status: 403, body }
                        if super::invite_filter::is_invite_blocked(&body) =>
                    {
                        Error::InviteBlocked(format!(
                            "{target} does not take invites from {sender}: {}",
                            error_message(&body)
                        ))
                    }
                    myelin_federation::FederationError::Status { status: 403, body } => {
                        Error::Forbidden(format!(
                            "{} refused the invite: {}",
                            target.server_name(),
                            error_message(&body)
                        ))
                    }
                    other => Error::BadGateway(format!(
                        "Could not invite {target} through {}: {other}",
                        target.server_name()
                    )),
                }
            })?;
        if version.uses_account_keys() {
            let bad = |why: String| {
                Error::BadGateway(format!(
                    "{} returned an unusable invite: {why}",
                    target.server_name()
                ))
            };
            let returned = Pdu::from_federation(answer.event.get().as_bytes(), version)
                .map_err(|e| bad(format!("not a valid event: {e}")))?;
            let inviter = self.account_keys.signing_key(sender.localpart()).await?;
            let signed = accept_rekeyed_invite(built.pdu.json(), &returned, version, &inviter)
                .map_err(|e| bad(e.to_string()))?;
            drop(inviter);
            let invitee_key = signed.state_key().unwrap_or_default().to_owned();
            let built = self.with_final_pdu(room, built, signed).await?;
            let event_id = self.append_built(room, built).await?;
            // The key the invitee's server gave is a hint until its domain confirms it through
            // `/query/accounts` (Q7); clients see the name only then.
            let verifier = federation.account_verifier.clone();
            tokio::spawn(async move {
                if let Err(err) = verifier.verify(&[invitee_key]).await {
                    tracing::warn!(%err, "asking about an invitee's account key failed");
                }
            });
            return Ok(event_id);
        }
        let returned = self
            .checked_returned_invite(version, &built.pdu, target.server_name(), &answer.event)
            .await?;
        let mut built = built;
        built.pdu = returned;
        self.append_built(room, built).await
    }

    /// The invite the invitee's server returned: our event, unchanged but for its signatures,
    /// with a valid signature of that server added.
    async fn checked_returned_invite(
        &self,
        version: &RoomVersion,
        sent: &Pdu,
        invitee_server: &ServerName,
        returned: &RawValue,
    ) -> Result<Pdu> {
        let bad = |why: String| {
            Error::BadGateway(format!(
                "{invitee_server} returned an unusable invite: {why}"
            ))
        };
        let pdu = Pdu::from_federation(returned.get().as_bytes(), version)
            .map_err(|e| bad(format!("not a valid event: {e}")))?;
        let without_signatures = |pdu: &Pdu| {
            let mut json = pdu.json().clone();
            json.remove("signatures");
            json.remove("unsigned");
            json
        };
        if pdu.event_id() != sent.event_id() || without_signatures(&pdu) != without_signatures(sent)
        {
            return Err(bad("it is not the event sent".to_owned()));
        }
        let signatures = pdu
            .json()
            .get("signatures")
            .and_then(|s| match s {
                CanonicalJsonValue::Object(o) => o.get(invitee_server.as_str()),
                _ => None,
            })
            .and_then(|s| match s {
                CanonicalJsonValue::Object(o) => Some(o.keys().cloned().collect::<BTreeSet<_>>()),
                _ => None,
            })
            .unwrap_or_default();
        let mut wanted = BTreeMap::new();
        wanted.insert(
            invitee_server.to_string(),
            (
                signatures
                    .into_iter()
                    .filter(|k| k.starts_with("ed25519:"))
                    .collect(),
                pdu.origin_server_ts(),
            ),
        );
        let keys = self.server_keys(wanted).await?;
        verify_server_signature(&pdu, version, invitee_server.as_str(), &keys)
            .map_err(|e| bad(format!("its signature does not verify: {e}")))?;
        // Our own signature must still be the one we made.
        let mut ours = keys;
        ours.extend(self.signing_keys(version, std::iter::once(sent)).await?);
        verify_pdu(&pdu, version, &ours).map_err(|e| bad(format!("our signature: {e}")))?;
        Ok(pdu)
    }

    /// The room's stripped state as sent to an invitee's server: the events of
    /// [`STRIPPED_STATE_TYPES`] the room has, as full PDUs (spec v1.16, MSC4311).
    async fn invite_room_state_for_federation(
        &self,
        room: &RoomRow,
    ) -> Result<Vec<RawStrippedState>> {
        let keys: Vec<(String, String)> = STRIPPED_STATE_TYPES
            .iter()
            .map(|kind| ((*kind).to_owned(), String::new()))
            .collect();
        let state = self.store.current_state(room.room_nid, Some(&keys)).await?;
        state
            .iter()
            .map(|row| Ok(RawStrippedState::Pdu(raw_json(row.json.clone())?)))
            .collect()
    }

    /// The invitee rejects an invite to a room this server is not in (see the module
    /// documentation): through the inviting server, or failing that out of band. The caller
    /// has checked that the user's membership is such an invite
    /// ([`Rooms::member_from_outside`]).
    pub(super) async fn reject_outside_invite(
        &self,
        room: &RoomRow,
        user: &UserId,
        reason: Option<&str>,
    ) -> Result<String> {
        let version = version_of(room)?;
        let (_, event_nid, _) = self
            .store
            .membership(room.room_nid, user.as_str())
            .await?
            .ok_or_else(|| Error::Forbidden("You are not in this room".to_owned()))?;
        let invite = self
            .store
            .event_by_nid(event_nid)
            .await?
            .ok_or_else(|| Error::Internal("the invite event is not stored".to_owned()))?;
        let invite = pdu_of(&invite, version)?;
        for server in self
            .servers_for_leave(room, user, &invite, event_nid)
            .await?
        {
            match self
                .leave_through(room, version, user, &server, reason)
                .await
            {
                Ok(leave) => {
                    self.persist_outside(
                        &room.room_id,
                        version,
                        &room.creator,
                        &leave,
                        user.as_str(),
                        "leave",
                        None,
                    )
                    .await?;
                    return Ok(leave.event_id().to_owned());
                }
                Err(err) => {
                    tracing::info!(room_id = %room.room_id, %user, %server, %err, "could not reject the invite through this server");
                }
            }
        }
        // Nobody took it: out of band, as the spec allows. Only this server knows of it.
        let leave = self.out_of_band_leave(room, version, user, &invite, reason)?;
        self.persist_outside(
            &room.room_id,
            version,
            &room.creator,
            &leave,
            user.as_str(),
            "leave",
            None,
        )
        .await?;
        tracing::info!(room_id = %room.room_id, %user, "rejected an invite out of band");
        Ok(leave.event_id().to_owned())
    }

    /// Whom to ask for a rejection: the inviting server, then the servers of the senders of the
    /// invite's stripped state (the creator's first), never this one.
    async fn servers_for_leave(
        &self,
        room: &RoomRow,
        user: &UserId,
        invite: &Pdu,
        invite_nid: i64,
    ) -> Result<Vec<OwnedServerName>> {
        let mut servers: Vec<OwnedServerName> = Vec::new();
        let mut add = |user_id: &str| {
            if let Ok(user_id) = OwnedUserId::try_from(user_id)
                && user_id.server_name() != self.server_name
                && !servers.iter().any(|s| s == user_id.server_name())
            {
                servers.push(user_id.server_name().to_owned());
            }
        };
        add(invite.sender());
        if let Some(shown) = self
            .store
            .invite_room_state(room.room_nid, user.as_str(), invite_nid)
            .await?
            && let Ok(Value::Array(events)) = serde_json::from_str::<Value>(&shown)
        {
            for event in events.iter().filter(|e| e["type"] == "m.room.create") {
                if let Some(sender) = event["sender"].as_str() {
                    add(sender);
                }
            }
            for event in &events {
                if let Some(sender) = event["sender"].as_str() {
                    add(sender);
                }
            }
        }
        Ok(servers)
    }

    /// `make_leave` and `send_leave` through `server`: the leave event as that server accepted
    /// it.
    async fn leave_through(
        &self,
        room: &RoomRow,
        version: &RoomVersion,
        user: &UserId,
        server: &ServerName,
        reason: Option<&str>,
    ) -> Result<Pdu> {
        let federation = self.federation()?;
        let room_id = OwnedRoomId::try_from(room.room_id.as_str())
            .map_err(|e| Error::Internal(format!("stored room id: {e}")))?;
        // The room's version is known here: in account-key rooms the user is named by key.
        let member = OwnedUserId::try_from(self.room_user_id(version, user).await?)
            .map_err(|e| Error::Internal(format!("a member's user id: {e}")))?;
        let template = federation
            .outbound
            .send(
                server,
                prepare_leave_event::v1::Request::new(room_id.clone(), member),
            )
            .await
            .map_err(|e| Error::BadGateway(format!("make_leave: {e}")))?;
        let template_version = template.room_version.as_ref().map_or("1", |v| v.as_str());
        if template_version != version.id() {
            return Err(Error::BadGateway(format!(
                "make_leave names room version {template_version}, not {}",
                version.id()
            )));
        }
        let mut content = CanonicalJsonObject::new();
        if let Some(reason) = reason {
            content.insert(
                "reason".to_owned(),
                CanonicalJsonValue::String(reason.to_owned()),
            );
        }
        let leave = self
            .member_event_from_template(
                server,
                &room.room_id,
                version,
                user,
                template.event.get().as_bytes(),
                "leave",
                content,
            )
            .await?;
        let event_id = OwnedEventId::try_from(leave.event_id())
            .map_err(|e| Error::Internal(format!("built event id: {e}")))?;
        federation
            .outbound
            .send(
                server,
                create_leave_event::v2::Request::new(
                    room_id,
                    event_id,
                    raw_json(leave.canonical_json())?,
                ),
            )
            .await
            .map_err(|e| Error::BadGateway(format!("send_leave: {e}")))?;
        Ok(leave)
    }

    /// A leave no other server has: after the invite, citing it, signed by this server.
    fn out_of_band_leave(
        &self,
        room: &RoomRow,
        version: &RoomVersion,
        user: &UserId,
        invite: &Pdu,
        reason: Option<&str>,
    ) -> Result<Pdu> {
        let mut content = json!({"membership": "leave"});
        if let Some(reason) = reason {
            content["reason"] = json!(reason);
        }
        let reference = invite.reference(version).map_err(pdu_error)?;
        let mut partial = CanonicalJsonObject::new();
        let s = |v: &str| CanonicalJsonValue::String(v.to_owned());
        partial.insert("type".to_owned(), s("m.room.member"));
        partial.insert("room_id".to_owned(), s(&room.room_id));
        partial.insert("sender".to_owned(), s(user.as_str()));
        partial.insert("state_key".to_owned(), s(user.as_str()));
        partial.insert(
            "content".to_owned(),
            CanonicalJsonValue::Object(super::to_canonical_object(content)?),
        );
        partial.insert(
            "prev_events".to_owned(),
            CanonicalJsonValue::Array(vec![reference.clone()]),
        );
        partial.insert(
            "auth_events".to_owned(),
            CanonicalJsonValue::Array(vec![reference]),
        );
        partial.insert(
            "depth".to_owned(),
            CanonicalJsonValue::Integer(super::int(
                i64::try_from(invite.depth()).unwrap_or(0).saturating_add(1),
            )?),
        );
        partial.insert(
            "origin_server_ts".to_owned(),
            CanonicalJsonValue::Integer(super::int(now_millis())?),
        );
        self.assign_event_id(&mut partial, version);
        build_pdu(partial, version, self.keys.event_signer()).map_err(pdu_error)
    }
}

/// An event in the stripped form clients are shown (type, state key, content, sender).
fn stripped(pdu: &Pdu) -> Value {
    let content: Value = serde_json::from_str(pdu.content().get()).unwrap_or_else(|_| json!({}));
    json!({
        "type": pdu.event_type(),
        "state_key": pdu.state_key().unwrap_or_default(),
        "content": content,
        "sender": pdu.sender(),
    })
}

/// The sender of the create event of an invite's stripped state (for the room row).
fn invite_creator(events: &[Box<RawValue>]) -> Option<String> {
    events.iter().find_map(|raw| {
        let value: Value = serde_json::from_str(raw.get()).ok()?;
        (value["type"] == "m.room.create")
            .then(|| value["sender"].as_str().map(str::to_owned))
            .flatten()
    })
}

fn raw_json(json: String) -> Result<Box<RawValue>> {
    RawValue::from_string(json).map_err(|e| Error::Internal(format!("raw JSON: {e}")))
}

/// The `error` of a Matrix error body, or the body itself.
fn error_message(body: &str) -> String {
    serde_json::from_str::<Value>(body)
        .ok()
        .and_then(|v| v["error"].as_str().map(str::to_owned))
        .unwrap_or_else(|| body.chars().take(200).collect())
}

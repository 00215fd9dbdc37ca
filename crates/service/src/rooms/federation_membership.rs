//! The resident's side of the federation membership handshakes: another server's user joins,
//! leaves or knocks on a room this server is in by asking this server for a template
//! (`make_join`, `make_leave`, `make_knock`), signing it, and sending the signed event back
//! (`send_join`, `send_leave`, `send_knock`).
//!
//! Every handshake passes the same doors first ([`Rooms::resident_door`]): the user must be one
//! of the asking server's (403), the room known to this server with a local user joined (404),
//! and its server ACL must let the asking server in (403). Then:
//!
//! - A template is built as a local event is ([`Rooms::event_skeleton`]: `prev_events` the
//!   forward extremities, `auth_events` by the spec's selection, `depth`), without hashes or
//!   signatures, and must pass the room version's auth rules against the current state
//!   (`myelin_room_version::auth`), so that a banned user or a closed room is refused here and
//!   not after the joining server's work. `make_join` and `make_knock` need the room's version
//!   among those the asking server supports (`ver`; without it, only `"1"`). A restricted join
//!   names a local authoriser (`join_authorised_via_users_server`) when the `allow` conditions
//!   hold by this server's state ([`Rooms::restricted_join`], the rule local joins use too).
//! - A sent event must be the membership the endpoint is for, of a user of the asking server
//!   about themselves, in this room, with the id the path names (else 400 `M_BAD_JSON`, or 403
//!   for a user of another server); a restricted join naming one
//!   of this server's users is checked again (that user may still authorise it) and signed by
//!   this server. It then goes through the checks on receipt like any remote event
//!   ([`Rooms::receive_relayed_pdu`]) and must be accepted: soft-failed, rejected or dropped is
//!   403 with the reason, and nothing of it reaches the room's state. Accepted, it is relayed
//!   to the room's other servers (the federation sender), since the joining server is not in
//!   the room yet. An event already accepted gets the same answer again (a retransmission).
//!
//! `send_join` always answers with the full state (`omit_members` is not honoured; the spec
//! allows it).

use std::collections::HashMap;

use myelin_room_version::{
    CanonicalJsonValue, Pdu, RoomVersion,
    auth::{auth_types_for_event, check_against_auth_events},
    pdu::add_signature,
    receipt,
};
use myelin_store::{EventRow, EventStatus, RoomRow};
use ruma::{ServerName, UserId};
use serde_json::{Value, value::RawValue};

use super::{
    Rooms,
    events::{EventFields, auth_error, auth_references, pdu_error, state_by_key},
    membership::RestrictedJoin,
    pdu_of, to_canonical_object, version_of,
};
use crate::{
    Error, Result, Services, federation_receiver::KEY_FETCH_TIME, now_millis, rooms::Received,
};

/// Which handshake: the membership its event carries.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Handshake {
    Join,
    Leave,
    Knock,
}

impl Handshake {
    fn membership(self) -> &'static str {
        match self {
            Handshake::Join => "join",
            Handshake::Leave => "leave",
            Handshake::Knock => "knock",
        }
    }
}

/// A `make_*` answer: the room's version and the event template.
#[derive(Debug)]
pub struct MembershipTemplate {
    pub room_version: String,
    pub event: Box<RawValue>,
}

/// A `send_join` answer.
#[derive(Debug)]
pub struct JoinAnswer {
    /// The state before the join, as PDUs.
    pub state: Vec<Box<RawValue>>,
    /// The auth chain of that state (which holds the join's own auth events).
    pub auth_chain: Vec<Box<RawValue>>,
    /// The join as this server signed it, when it added its signature (a restricted join).
    pub event: Option<Box<RawValue>>,
}

/// What a `send_*` accepted event is answered with.
#[derive(Debug)]
pub enum SentMembership {
    Joined(JoinAnswer),
    Left,
    /// `knock_room_state`: the stripped state clients are shown for a knock.
    Knocked(Vec<Value>),
}

/// A sent event past its checks, ready for the checks on receipt.
struct Prepared {
    room: RoomRow,
    pdu: Pdu,
    /// This server added its signature (a restricted join it authorised).
    signed: bool,
    /// It is stored and accepted already: a retransmission.
    accepted: bool,
}

impl Rooms {
    /// The doors of every handshake (see the module docs). Returns the room.
    async fn resident_door(
        &self,
        origin: &ServerName,
        room_id: &str,
        user_id: &str,
    ) -> Result<RoomRow> {
        let user_server = user_id.split_once(':').map(|(_, server)| server);
        if user_server != Some(origin.as_str()) {
            return Err(Error::Forbidden(format!(
                "{user_id} is not a user of {origin}"
            )));
        }
        let not_here = || Error::NotFound(format!("This server is not in room {room_id}"));
        let room = self.store.room(room_id).await?.ok_or_else(not_here)?;
        if !self
            .store
            .server_in_room(room.room_nid, self.server_name.as_str())
            .await?
        {
            return Err(not_here());
        }
        if !self.server_allowed(room_id, origin).await? {
            return Err(Error::Forbidden(
                "Your server is denied by the room's server ACL".to_owned(),
            ));
        }
        Ok(room)
    }

    /// `GET /make_join`, `/make_leave`, `/make_knock`: the template of `user`'s membership
    /// event in `room_id` for `origin` to sign. `versions`: the room versions the asking server
    /// supports (`None` for `make_leave`, which does not ask).
    pub async fn make_membership(
        &self,
        origin: &ServerName,
        room_id: &str,
        user: &UserId,
        handshake: Handshake,
        versions: Option<&[String]>,
    ) -> Result<MembershipTemplate> {
        let room = self.resident_door(origin, room_id, user.as_str()).await?;
        let version = version_of(&room)?;
        if let Some(versions) = versions
            && !versions.iter().any(|v| v == &room.room_version)
        {
            return Err(Error::IncompatibleRoomVersion {
                room_version: room.room_version.clone(),
            });
        }
        let mut content = serde_json::Map::new();
        content.insert("membership".to_owned(), handshake.membership().into());
        if handshake == Handshake::Join {
            match self.restricted_join(&room, user.as_str(), user).await? {
                RestrictedJoin::NotNeeded => {}
                RestrictedJoin::Allowed { authorisers } => {
                    let authoriser = authorisers.into_iter().next().ok_or_else(|| {
                        Error::UnableToAuthoriseJoin(
                            "No joined user on this server can authorise the join".to_owned(),
                        )
                    })?;
                    content.insert(
                        "join_authorised_via_users_server".to_owned(),
                        authoriser.into(),
                    );
                }
                RestrictedJoin::NotAllowed { can_tell: true } => {
                    return Err(Error::Forbidden(format!(
                        "{user} is in none of the rooms the join rules allow"
                    )));
                }
                RestrictedJoin::NotAllowed { can_tell: false } => {
                    return Err(Error::UnableToGrantJoin(
                        "This server is in none of the rooms the join rules allow; try another server"
                            .to_owned(),
                    ));
                }
            }
        }
        let template = self
            .membership_template(&room, version, user, Value::Object(content))
            .await?;
        Ok(MembershipTemplate {
            room_version: room.room_version,
            event: RawValue::from_string(template)
                .map_err(|e| Error::Internal(format!("a template is not JSON: {e}")))?,
        })
    }

    /// The template of a membership event of `user` about themselves, with `content`, checked
    /// against the room's current state by the room version's auth rules. Canonical JSON.
    async fn membership_template(
        &self,
        room: &RoomRow,
        version: &RoomVersion,
        user: &UserId,
        content: Value,
    ) -> Result<String> {
        let content_raw = serde_json::value::to_raw_value(&content)
            .map_err(|e| Error::Internal(format!("template content: {e}")))?;
        let auth_types = auth_types_for_event(
            version,
            "m.room.member",
            user.as_str(),
            Some(user.as_str()),
            &content_raw,
        )
        .map_err(auth_error)?;
        // The create event too: rooms from v12 cite it through their id, not `auth_events`,
        // and the auth rules read it either way.
        let mut keys = auth_types.clone();
        let create = ("m.room.create".to_owned(), String::new());
        if !keys.contains(&create) {
            keys.push(create);
        }
        let context = self.store.send_context(room.room_nid, &keys, None).await?;
        let by_key = state_by_key(version, &context.state)?;
        let auth_refs = auth_references(version, &auth_types, &by_key)?;
        let partial = self
            .event_skeleton(
                version,
                room,
                EventFields {
                    event_type: "m.room.member",
                    sender: user.as_str(),
                    state_key: Some(user.as_str()),
                    content: to_canonical_object(content)?,
                },
                auth_refs,
                &context.head,
                now_millis(),
            )
            .await?;
        let template = myelin_room_version::canonical::to_canonical_string(&partial);
        // The auth rules judge the template as the event it will become (its id and
        // signatures are the joining server's, and no rule reads them).
        let mut judged = partial;
        judged.insert(
            "event_id".to_owned(),
            CanonicalJsonValue::String(format!("$template:{}", self.server_name)),
        );
        let pdu = Pdu::from_stored(&format!("$template:{}", self.server_name), judged, version)
            .map_err(pdu_error)?;
        let by_id: HashMap<&str, &Pdu> = by_key.values().map(|pdu| (pdu.event_id(), pdu)).collect();
        check_against_auth_events(version, &pdu, |id| by_id.get(id).copied())
            .map_err(auth_error)?;
        Ok(template)
    }

    /// The checks of a `send_*` event before the checks on receipt (see the module docs), and
    /// this server's signature on a restricted join it authorises.
    async fn prepare_sent_membership(
        &self,
        origin: &ServerName,
        room_id: &str,
        event_id: &str,
        handshake: Handshake,
        body: &[u8],
    ) -> Result<Prepared> {
        let peek: Value = serde_json::from_slice(body)
            .map_err(|e| Error::NotJson(format!("The event is not JSON: {e}")))?;
        let sender = peek["sender"].as_str().unwrap_or_default();
        let room = self.resident_door(origin, room_id, sender).await?;
        let version = version_of(&room)?;
        let mut pdu = receipt::check_format(version, body)
            .map_err(|e| Error::BadJson(format!("Not a valid event: {e}")))?;
        if pdu.event_id() != event_id {
            return Err(Error::BadJson(format!(
                "The event's id is {}, not {event_id}",
                pdu.event_id()
            )));
        }
        if pdu.room_id_or_own() != room.room_id {
            return Err(Error::BadJson(format!(
                "The event is not in room {}",
                room.room_id
            )));
        }
        let membership = pdu
            .content_object()
            .and_then(|content| content.get("membership"))
            .and_then(|m| match m {
                CanonicalJsonValue::String(m) => Some(m.as_str()),
                _ => None,
            });
        if pdu.event_type() != "m.room.member"
            || pdu.state_key() != Some(pdu.sender())
            || membership != Some(handshake.membership())
        {
            // Not the membership event the endpoint takes: an invalid request (400, as the
            // spec's "the request is invalid" and Complement's validation tests want), before
            // any question of permission.
            return Err(Error::BadJson(format!(
                "This endpoint takes a {} of the sender themselves",
                handshake.membership()
            )));
        }
        if let Some(stored) = self.store.event(event_id).await? {
            match stored.status {
                EventStatus::Normal if stored.room_nid == room.room_nid => {
                    let pdu = pdu_of(&stored, version)?;
                    let signed =
                        handshake == Handshake::Join && self.authoriser_named(&pdu).is_some();
                    return Ok(Prepared {
                        room,
                        pdu,
                        signed,
                        accepted: true,
                    });
                }
                EventStatus::Rejected(reason) => {
                    return Err(Error::Forbidden(format!(
                        "The event was rejected: {reason}"
                    )));
                }
                EventStatus::SoftFailed => {
                    return Err(Error::Forbidden(
                        "The room's current state does not allow the event".to_owned(),
                    ));
                }
                _ => {}
            }
        }
        let mut signed = false;
        if handshake == Handshake::Join
            && let Some(authoriser) = self.authoriser_named(&pdu)
        {
            let user = UserId::parse(pdu.sender())
                .map_err(|e| Error::BadJson(format!("bad sender: {e}")))?;
            let allowed = match self.restricted_join(&room, pdu.sender(), &user).await? {
                RestrictedJoin::Allowed { authorisers } => authorisers.contains(&authoriser),
                _ => false,
            };
            if !allowed {
                return Err(Error::Forbidden(format!(
                    "{authoriser} cannot authorise this join"
                )));
            }
            if version.uses_account_keys() {
                return Err(Error::Forbidden(
                    "Restricted joins through this server are not supported in account-key rooms"
                        .to_owned(),
                ));
            }
            add_signature(&mut pdu, version, self.keys.event_signer()).map_err(pdu_error)?;
            signed = true;
        }
        Ok(Prepared {
            room,
            pdu,
            signed,
            accepted: false,
        })
    }

    /// The local user a join names in `join_authorised_via_users_server`, if any.
    fn authoriser_named(&self, pdu: &Pdu) -> Option<String> {
        let named = match pdu
            .content_object()?
            .get("join_authorised_via_users_server")?
        {
            CanonicalJsonValue::String(named) => named.clone(),
            _ => return None,
        };
        let user = UserId::parse(&named).ok()?;
        self.is_local(&user).then_some(named)
    }

    /// The answer to an accepted `send_*` event (stored as `row`).
    async fn answer_sent_membership(
        &self,
        prepared: &Prepared,
        row: &EventRow,
        handshake: Handshake,
    ) -> Result<SentMembership> {
        match handshake {
            Handshake::Join => {
                let served = self.state_before_served(&prepared.room, row).await?;
                let event = if prepared.signed {
                    Some(
                        RawValue::from_string(prepared.pdu.canonical_json())
                            .map_err(|e| Error::Internal(format!("a signed join: {e}")))?,
                    )
                } else {
                    None
                };
                Ok(SentMembership::Joined(JoinAnswer {
                    state: served.pdus,
                    auth_chain: served.auth_chain,
                    event,
                }))
            }
            Handshake::Leave => Ok(SentMembership::Left),
            Handshake::Knock => {
                let user = UserId::parse(prepared.pdu.sender())
                    .map_err(|e| Error::Internal(format!("a stored knock's sender: {e}")))?;
                Ok(SentMembership::Knocked(
                    self.stripped_state(&prepared.room, row.event_nid, &user)
                        .await?,
                ))
            }
        }
    }
}

impl Services {
    /// `PUT /send_join`, `/send_leave`, `/send_knock`: takes another server's membership event
    /// into the room as the resident (see the module docs).
    pub async fn send_membership(
        &self,
        origin: &ServerName,
        room_id: &str,
        event_id: &str,
        handshake: Handshake,
        body: &[u8],
    ) -> Result<SentMembership> {
        let prepared = self
            .rooms
            .prepare_sent_membership(origin, room_id, event_id, handshake, body)
            .await?;
        if !prepared.accepted {
            let json = prepared.pdu.canonical_json();
            let bytes = [json.as_bytes()];
            let version = version_of(&prepared.room)?;
            let mut keys = myelin_room_version::verify::ServerKeys::new();
            self.add_signing_keys(
                version,
                &bytes,
                &mut keys,
                tokio::time::Instant::now() + KEY_FETCH_TIME,
            )
            .await?;
            let received = self
                .rooms
                .receive_relayed_pdu(&prepared.room.room_id, json.as_bytes(), &keys)
                .await?;
            self.verify_named_later(version, &bytes);
            match received.outcome {
                Received::Accepted | Received::AlreadyStored => {}
                Received::SoftFailed => {
                    return Err(Error::Forbidden(
                        "The room's current state does not allow the event".to_owned(),
                    ));
                }
                Received::Rejected(reason) | Received::Dropped(reason) => {
                    return Err(Error::Forbidden(format!("The event was refused: {reason}")));
                }
                Received::Missing(ids) => {
                    return Err(Error::Forbidden(format!(
                        "The event cites events this server does not have: {ids:?}"
                    )));
                }
            }
        }
        let row = self
            .store
            .event(event_id)
            .await?
            .filter(|row| row.status == EventStatus::Normal)
            .ok_or_else(|| {
                Error::Forbidden("The event was not accepted into the room".to_owned())
            })?;
        self.rooms
            .answer_sent_membership(&prepared, &row, handshake)
            .await
    }
}
